"""IMAP SEARCH (RFC 3501 6.4.4, RFC 7162 3.1.5 MODSEQ): compiling criteria, matching messages.

``compile_criteria`` turns the parsed arguments into a tree of small matcher functions once;
``Criteria.matches`` runs them per message. Flag, size, date and set keys use only what the
protocol layer knows; header keys use the cached MessageHeader (the top header and the ENVELOPE
fields, read once without the body: no MIME parse); BODY and TEXT use the MessageStructure and
read the file, decoding text parts (search_text). Text matching is a case-insensitive substring
match on decoded text."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import BinaryIO, Protocol

from mailhub.imap import search_text
from mailhub.imap.mime import MessageHeader, MessageStructure
from mailhub.imap.mime_header import decode_words, split_fields
from mailhub.imap.parser import Atom
from mailhub.imap.sequence import SequenceSet

SUPPORTED_CHARSETS = ("US-ASCII", "UTF-8")


# How deep NOT/OR/parenthesised search keys may nest (real clients use a handful of levels).
MAX_KEY_DEPTH = 100


class SearchError(ValueError):
    """Bad search criteria: the command gets a tagged BAD with str(error)."""


class BadCharset(SearchError):
    """Unsupported CHARSET: NO [BADCHARSET (US-ASCII UTF-8)] (RFC 3501 6.4.4, 7.1)."""

    def __init__(self, charset: str) -> None:
        super().__init__(f"unsupported charset {charset!r}")
        self.charset = charset


class SearchMessage(Protocol):
    """What SEARCH needs of a message; the protocol layer provides it."""

    seq: int
    uid: int
    largest_seq: int  # what "*" means in a sequence set
    largest_uid: int  # what "*" means in a UID set
    flags: frozenset[str]  # IMAP names: "\\Seen", "\\Deleted", ..., keywords as stored
    recent: bool
    internaldate: int
    size: int
    modseq: int

    def headers(self) -> MessageHeader: ...

    def structure(self) -> MessageStructure: ...

    def open(self) -> BinaryIO: ...


class _Eval:
    """Per-message evaluation state: the body scan is done once for all BODY/TEXT keys."""

    __slots__ = ("body_found", "criteria", "m", "text_found")

    def __init__(self, criteria: Criteria, m: SearchMessage) -> None:
        self.criteria = criteria
        self.m = m
        self.body_found: set[str] | None = None
        self.text_found: set[str] | None = None

    def body_has(self, needle: str, with_header: bool) -> bool:
        if with_header:
            if self.text_found is None:
                self.text_found = self._scan(self.criteria._text_needles, True)
            return needle in self.text_found
        if self.body_found is None:
            self.body_found = self._scan(self.criteria._body_needles, False)
        return needle in self.body_found

    def _scan(self, needles: set[str], with_header: bool) -> set[str]:
        s = self.m.structure()
        fp = self.m.open()
        try:
            texts = search_text.message_texts(s, fp, with_header=with_header)
            return search_text.find_all(texts, needles)
        finally:
            fp.close()


_Matcher = Callable[[SearchMessage, _Eval], bool]


@dataclass(eq=False)
class Criteria:
    """Compiled search criteria (an AND of the top-level keys)."""

    needs_headers: bool = False  # header keys: the MessageHeader is needed (cached, cheap)
    needs_structure: bool = False  # BODY/TEXT: the MessageStructure is needed (cached)
    needs_body: bool = False  # BODY/TEXT: the file is read
    uses_modseq: bool = False  # RFC 7162 3.1.5: the SEARCH response carries (MODSEQ n)
    _match: _Matcher = field(default=lambda m, e: True, repr=False)
    _body_needles: set[str] = field(default_factory=set, repr=False)
    _text_needles: set[str] = field(default_factory=set, repr=False)

    def matches(self, m: SearchMessage) -> bool:
        return self._match(m, _Eval(self, m))


# -- compiling -------------------------------------------------------------------------------

_MONTHS = {
    m: i
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}
_SEARCH_DATE = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
_SEQUENCE = re.compile(r"[0-9*:,]+")
_NUMBER = re.compile(r"[0-9]+")

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
# ENVELOPE field index (mime.ENVELOPE_FIELDS) of the header keys
_ENVELOPE_KEYS = {"SUBJECT": 1, "FROM": 2, "TO": 5, "CC": 6, "BCC": 7}


class _Compiler:
    def __init__(self, args: list, charset: str | None) -> None:
        self.args = args
        self.pos = 0
        self.charset = charset
        self.c = Criteria()
        self.depth = 0  # search keys being compiled around the current one

    # token access
    def more(self) -> bool:
        return self.pos < len(self.args)

    def take(self, what: str, key: str) -> object:
        if self.pos >= len(self.args):
            raise SearchError(f"{key} needs {what}")
        item = self.args[self.pos]
        self.pos += 1
        return item

    def string(self, key: str) -> str:
        item = self.take("a string", key)
        if isinstance(item, Atom | str):
            raw = str(item).encode("utf-8", "surrogateescape")
        elif isinstance(item, bytes):
            raw = item
        else:
            raise SearchError(f"{key} needs a string, not a list")
        if self.charset == "US-ASCII" and not raw.isascii():
            # RFC 3501 6.4.4: the strings are in the given charset; 8-bit is not US-ASCII
            raise SearchError(f"{key}: 8-bit string with CHARSET US-ASCII")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SearchError(f"{key}: string is not valid UTF-8") from None

    def atom(self, what: str, key: str) -> str:
        item = self.take(what, key)
        if isinstance(item, bytes):
            item = item.decode("utf-8", "replace")
        if not isinstance(item, str):
            raise SearchError(f"{key} needs {what}, not a list")
        return str(item)

    def number(self, key: str) -> int:
        text = self.atom("a number", key)
        if not _NUMBER.fullmatch(text):
            raise SearchError(f"{key} needs a number, not {text!r}")
        return int(text)

    def date(self, key: str) -> date:
        text = self.atom("a date (d-Mon-yyyy)", key)
        m = _SEARCH_DATE.fullmatch(text)
        month = _MONTHS.get(m.group(2).upper()) if m else None
        if m is None or month is None:
            raise SearchError(f"{key} needs a date like 1-Feb-1994, not {text!r}")
        try:
            return date(int(m.group(3)), month, int(m.group(1)))
        except ValueError:
            raise SearchError(f"{key}: no such date {text!r}") from None

    def sequence(self, text: str, key: str) -> SequenceSet:
        try:
            return SequenceSet.parse(text)
        except ValueError as e:
            raise SearchError(f"{key}: bad sequence set {text!r}: {e}") from None

    # the grammar
    def all(self) -> _Matcher:
        if not self.more():
            raise SearchError("SEARCH needs at least one search key")
        keys = []
        while self.more():
            keys.append(self.key())
        return _and(keys)

    def key(self, context: str = "SEARCH") -> _Matcher:
        # NOT, OR and parentheses nest: compiling and matching recurse once per level, so the
        # depth is bounded well below Python's stack (a deeper key is refused with BAD).
        if self.depth >= MAX_KEY_DEPTH:
            raise SearchError(f"search keys nested deeper than {MAX_KEY_DEPTH} levels")
        self.depth += 1
        try:
            return self._key(context)
        finally:
            self.depth -= 1

    def _key(self, context: str) -> _Matcher:
        item = self.take("a search key", context)
        if isinstance(item, list):
            sub = _Compiler(item, self.charset)
            sub.c = self.c
            sub.depth = self.depth
            if not item:
                raise SearchError("empty parenthesised search key list")
            return sub.all()
        if isinstance(item, bytes):
            raise SearchError(f"expected a search key, got the string {item!r}")
        word = str(item)
        if _SEQUENCE.fullmatch(word):
            seqset = self.sequence(word, "sequence set")
            return lambda m, e: seqset.contains(m.seq, m.largest_seq)
        name = word.upper()
        method = getattr(self, "k_" + name.replace(".", "_"), None)
        if name in _FLAG_KEYS:
            flag, present = _FLAG_KEYS[name]
            return _flag(flag, present)
        if method is None:
            raise SearchError(f"unknown search key {word!r}")
        return method(name)

    # keys without arguments
    def k_ALL(self, key: str) -> _Matcher:
        return lambda m, e: True

    def k_NEW(self, key: str) -> _Matcher:
        return lambda m, e: m.recent and "\\Seen" not in m.flags

    def k_OLD(self, key: str) -> _Matcher:
        return lambda m, e: not m.recent

    def k_RECENT(self, key: str) -> _Matcher:
        return lambda m, e: m.recent

    # logic
    def k_NOT(self, key: str) -> _Matcher:
        inner = self.key(key)
        return lambda m, e: not inner(m, e)

    def k_OR(self, key: str) -> _Matcher:
        a = self.key(key)
        b = self.key(key)
        return lambda m, e: a(m, e) or b(m, e)

    # flags
    def k_KEYWORD(self, key: str) -> _Matcher:
        return _keyword(self.atom("a flag keyword", key), True)

    def k_UNKEYWORD(self, key: str) -> _Matcher:
        return _keyword(self.atom("a flag keyword", key), False)

    # sizes, sets, modseq
    def k_LARGER(self, key: str) -> _Matcher:
        n = self.number(key)
        return lambda m, e: m.size > n

    def k_SMALLER(self, key: str) -> _Matcher:
        n = self.number(key)
        return lambda m, e: m.size < n

    def k_UID(self, key: str) -> _Matcher:
        uids = self.sequence(self.atom("a UID set", key), key)
        return lambda m, e: uids.contains(m.uid, m.largest_uid)

    def k_MODSEQ(self, key: str) -> _Matcher:
        # RFC 7162 3.1.5: MODSEQ [<entry-name> <entry-type-req>] <mod-sequence-valzer>;
        # the optional entry (flag metadata) is accepted and ignored: one modseq per message
        if self.more() and isinstance(self.args[self.pos], bytes):
            self.pos += 1
            kind = self.atom("an entry type (priv, shared or all)", key).lower()
            if kind not in ("priv", "shared", "all"):
                raise SearchError(f"MODSEQ entry type must be priv, shared or all, not {kind!r}")
        n = self.number(key)
        self.c.uses_modseq = True
        return lambda m, e: m.modseq >= n

    # internal date (RFC 3501: disregarding time and timezone: the server's calendar date)
    def k_BEFORE(self, key: str) -> _Matcher:
        d = self.date(key)
        return lambda m, e: _local_date(m.internaldate) < d

    def k_ON(self, key: str) -> _Matcher:
        d = self.date(key)
        return lambda m, e: _local_date(m.internaldate) == d

    def k_SINCE(self, key: str) -> _Matcher:
        d = self.date(key)
        return lambda m, e: _local_date(m.internaldate) >= d

    # Date: header
    def k_SENTBEFORE(self, key: str) -> _Matcher:
        d = self.date(key)
        self.c.needs_headers = True
        return lambda m, e: _sent_date(m) < d

    def k_SENTON(self, key: str) -> _Matcher:
        d = self.date(key)
        self.c.needs_headers = True
        return lambda m, e: _sent_date(m) == d

    def k_SENTSINCE(self, key: str) -> _Matcher:
        d = self.date(key)
        self.c.needs_headers = True
        return lambda m, e: _sent_date(m) >= d

    # headers
    def _envelope_key(self, key: str) -> _Matcher:
        needle = self.string(key).casefold()
        index = _ENVELOPE_KEYS[key]
        self.c.needs_headers = True

        def match(m: SearchMessage, e: _Eval) -> bool:
            h = m.headers()
            memo = h.memo
            text = memo.get(index, _MISSING)
            if text is _MISSING:
                text = memo[index] = _decoded(h.envelope_field(index))
            return text is not None and needle in text

        return match

    k_SUBJECT = k_FROM = k_TO = k_CC = k_BCC = _envelope_key

    def k_HEADER(self, key: str) -> _Matcher:
        name = self.string(key).strip().lower()
        needle = self.string(key).casefold()
        if not name:
            raise SearchError("HEADER needs a field name")
        self.c.needs_headers = True

        def match(m: SearchMessage, e: _Eval) -> bool:
            values = _header_values(m.headers()).get(name)
            if values is None:
                return False
            # RFC 3501 6.4.4: an empty string matches every message that has the field
            return any(needle in v for v in values)

        return match

    # text
    def k_BODY(self, key: str) -> _Matcher:
        needle = self.string(key).casefold()
        self.c.needs_body = self.c.needs_structure = True
        self.c._body_needles.add(needle)
        return lambda m, e: e.body_has(needle, False)

    def k_TEXT(self, key: str) -> _Matcher:
        needle = self.string(key).casefold()
        self.c.needs_body = self.c.needs_structure = True
        self.c._text_needles.add(needle)
        return lambda m, e: e.body_has(needle, True)


_MISSING = object()


def _decoded(raw: bytes | None) -> str | None:
    """A header value as casefolded text; the common pure-ASCII value skips RFC 2047."""
    if raw is None:
        return None
    if b"=?" in raw or not raw.isascii():
        return decode_words(raw).casefold()
    return raw.decode("ascii").casefold()


def _and(keys: list[_Matcher]) -> _Matcher:
    if len(keys) == 1:
        return keys[0]
    keys_t = tuple(keys)
    return lambda m, e: all(k(m, e) for k in keys_t)


def _flag(flag: str, present: bool) -> _Matcher:
    if present:
        return lambda m, e: flag in m.flags
    return lambda m, e: flag not in m.flags


def _keyword(word: str, present: bool) -> _Matcher:
    # keywords compare case-insensitively (RFC 3501 2.3.2 flags are atoms; Dovecot, Cyrus)
    low = word.lower()

    def has(m: SearchMessage) -> bool:
        if word in m.flags:
            return True
        return any(f.lower() == low for f in m.flags)

    if present:
        return lambda m, e: has(m)
    return lambda m, e: not has(m)


def _local_date(ts: float) -> date:
    return datetime.fromtimestamp(ts).date()


_RFC5322_DATE = re.compile(rb"(?:^|[\s,])(\d{1,2})\s+([A-Za-z]{3})[A-Za-z]*\.?\s+(\d{2,4})\b")
_MONTHS_B = {k.encode(): v for k, v in _MONTHS.items()}


def parse_sent_date(value: bytes | None) -> date | None:
    """The calendar date of a Date: header (RFC 5322 3.3; obsolete 2-digit years per 4.3),
    ignoring time and zone (RFC 3501 6.4.4 SENT*); None when there is none to read."""
    if not value:
        return None
    m = _RFC5322_DATE.search(value)
    if m is None:
        return None
    month = _MONTHS_B.get(m.group(2).upper())
    if month is None:
        return None
    year = int(m.group(3))
    if len(m.group(3)) == 2:
        year += 2000 if year < 50 else 1900
    elif len(m.group(3)) == 3:
        year += 1900
    try:
        return date(year, month, int(m.group(1)))
    except ValueError:
        return None


_NO_DATE = date(1970, 1, 1)


def _sent_date(m: SearchMessage) -> date:
    """The Date: header's date; without a readable one 1-Jan-1970, the date Dovecot uses (so
    SENTBEFORE finds such messages and SENTSINCE does not)."""
    s = m.headers()
    d = s.memo.get("sent")
    if d is None:
        d = s.memo["sent"] = parse_sent_date(s.envelope_field(0)) or _NO_DATE
    return d


def _header_values(s: MessageHeader) -> dict[str, list[str]]:
    """The top-level header fields, lower-cased name -> decoded, casefolded values (memoised
    on the header)."""
    fields = s.memo.get("fields")
    if fields is None:
        fields = {}
        for name, value in split_fields(s.header):
            key = name.decode("ascii", "replace").lower()
            fields.setdefault(key, []).append(decode_words(value).casefold())
        s.memo["fields"] = fields
    return fields


def compile_criteria(args: list, charset: str | None) -> Criteria:
    """Compile the items after ``SEARCH [CHARSET x]`` (RFC 3501 6.4.4). Raises BadCharset for a
    charset other than US-ASCII or UTF-8, SearchError for anything else wrong."""
    if charset is not None:
        charset = charset.upper()
        if charset == "UTF8":
            charset = "UTF-8"
        if charset not in SUPPORTED_CHARSETS:
            raise BadCharset(charset)
    comp = _Compiler(list(args), charset)
    comp.c._match = comp.all()
    return comp.c
