"""IMAP SEARCH (RFC 3501 6.4.4, RFC 7162 3.1.5 MODSEQ): compiling criteria, finding messages.

``compile_criteria`` turns the parsed arguments into a tree of small filters once;
``Criteria.search`` runs them over the mailbox's messages, each filter taking the messages still
in question and returning those it matches (AND narrows the list key by key, so a costly key
only looks at what the cheaper keys before it let through; OR asks its second key only about
what its first did not match; NOT is the complement). Per message work is a few dict look-ups
in a tight loop. Flag, size, date and set keys use only what the protocol layer knows; header
keys use the cached MessageHeader (the top header and the ENVELOPE fields, read once without
the body: no MIME parse); BODY and TEXT use the MessageStructure and read the file, decoding
text parts (search_text) once per message for all of the keys. Text matching is a
case-insensitive substring match on decoded text."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import BinaryIO, Protocol

from mailhub.imap import search_text
from mailhub.imap.dates import MONTHS, MONTHS_B, full_year
from mailhub.imap.parser import Atom
from mailhub.imap.sequence import SequenceSet
from mailhub.message.headers import address_search_text, decode_words, split_fields
from mailhub.message.mime import MessageHeader, MessageStructure

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


class SearchMailbox(Protocol):
    """What SEARCH needs of the selected mailbox; the protocol layer provides it. Messages are
    named by UID. ``headers``/``structure``/``open`` return None for a message that turns out
    to be gone (expunged by another process) and add its UID to ``gone``: it is left out."""

    largest_seq: int  # what "*" means in a sequence set
    largest_uid: int  # what "*" means in a UID set
    gone: set[int]

    def seq(self, uid: int) -> int: ...

    def flags(self, uid: int) -> frozenset[str]: ...  # "\\Seen", ..., keywords as stored

    def recent(self, uid: int) -> bool: ...

    def internaldate(self, uid: int) -> int: ...

    def size(self, uid: int) -> int: ...

    def modseq(self, uid: int) -> int: ...

    def headers(self, uid: int) -> MessageHeader | None: ...

    def structure(self, uid: int) -> MessageStructure | None: ...

    def open(self, uid: int) -> BinaryIO | None: ...


class SearchMessage(Protocol):
    """One message on its own (``Criteria.matches``)."""

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


class _OneMessage:
    """A SearchMessage as a SearchMailbox of one."""

    def __init__(self, m: SearchMessage) -> None:
        self.m = m
        self.largest_seq = m.largest_seq
        self.largest_uid = m.largest_uid
        self.gone: set[int] = set()

    def seq(self, uid: int) -> int:
        return self.m.seq

    def flags(self, uid: int) -> frozenset[str]:
        return self.m.flags

    def recent(self, uid: int) -> bool:
        return self.m.recent

    def internaldate(self, uid: int) -> int:
        return self.m.internaldate

    def size(self, uid: int) -> int:
        return self.m.size

    def modseq(self, uid: int) -> int:
        return self.m.modseq

    def headers(self, uid: int) -> MessageHeader:
        return self.m.headers()

    def structure(self, uid: int) -> MessageStructure:
        return self.m.structure()

    def open(self, uid: int) -> BinaryIO:
        return self.m.open()


class _Run:
    """One search over a mailbox: the body scans are done once per message for all
    BODY/TEXT keys (the needles found are remembered per UID)."""

    __slots__ = ("body_found", "box", "criteria", "text_found")

    def __init__(self, criteria: Criteria, box: SearchMailbox) -> None:
        self.criteria = criteria
        self.box = box
        self.body_found: dict[int, set[str] | None] = {}
        self.text_found: dict[int, set[str] | None] = {}

    def body_has(self, uid: int, needle: str, with_header: bool) -> bool:
        found_by_uid = self.text_found if with_header else self.body_found
        found = found_by_uid.get(uid, _MISSING)
        if found is _MISSING:
            c = self.criteria
            needles = c._text_needles if with_header else c._body_needles
            found = found_by_uid[uid] = self._scan(uid, needles, with_header)
        # ignore: the memo holds str or None, which _MISSING's sentinel hides from the checker
        return found is not None and needle in found  # type: ignore[operator]

    def _scan(self, uid: int, needles: set[str], with_header: bool) -> set[str] | None:
        s = self.box.structure(uid)
        fp = self.box.open(uid) if s is not None else None
        if s is None or fp is None:
            return None
        try:
            texts = search_text.message_texts(s, fp, with_header=with_header)
            return search_text.find_all(texts, needles)
        finally:
            fp.close()


# A compiled key: the UIDs (in mailbox order) among those given that match it.
_Filter = Callable[[_Run, list[int]], list[int]]


@dataclass(eq=False)
class Criteria:
    """Compiled search criteria (an AND of the top-level keys)."""

    needs_headers: bool = False  # header keys: the MessageHeader is needed (cached, cheap)
    needs_structure: bool = False  # BODY/TEXT: the MessageStructure is needed (cached)
    needs_body: bool = False  # BODY/TEXT: the file is read
    uses_modseq: bool = False  # RFC 7162 3.1.5: the SEARCH response carries (MODSEQ n)
    _filter: _Filter = field(default=lambda run, uids: uids, repr=False)
    _body_needles: set[str] = field(default_factory=set, repr=False)
    _text_needles: set[str] = field(default_factory=set, repr=False)

    def search(self, box: SearchMailbox, uids: list[int]) -> list[int]:
        """The UIDs among ``uids`` (in mailbox order) that match, in that order. Every key
        is decided per message, so searching consecutive pieces of ``uids`` and joining the
        answers gives the same answer (SEARCH works in slices, search_command.py)."""
        found = self._filter(_Run(self, box), uids)
        if box.gone:
            found = [u for u in found if u not in box.gone]
        return found

    def matches(self, m: SearchMessage) -> bool:
        return bool(self.search(_OneMessage(m), [m.uid]))


# -- compiling -------------------------------------------------------------------------------

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
        month = MONTHS.get(m.group(2).upper()) if m else None
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
    def all(self) -> _Filter:
        if not self.more():
            raise SearchError("SEARCH needs at least one search key")
        keys = []
        while self.more():
            keys.append(self.key())
        return _and(keys)

    def key(self, context: str = "SEARCH") -> _Filter:
        # NOT, OR and parentheses nest: compiling and matching recurse once per level, so the
        # depth is bounded well below Python's stack (a deeper key is refused with BAD).
        if self.depth >= MAX_KEY_DEPTH:
            raise SearchError(f"search keys nested deeper than {MAX_KEY_DEPTH} levels")
        self.depth += 1
        try:
            return self._key(context)
        finally:
            self.depth -= 1

    def _key(self, context: str) -> _Filter:
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
            return _each(lambda box, u: seqset.contains(box.seq(u), box.largest_seq))
        name = word.upper()
        method = getattr(self, "k_" + name.replace(".", "_"), None)
        if name in _FLAG_KEYS:
            flag, present = _FLAG_KEYS[name]
            return _flag(flag, present)
        if method is None:
            raise SearchError(f"unknown search key {word!r}")
        return method(name)

    # keys without arguments
    def k_ALL(self, key: str) -> _Filter:
        return lambda run, uids: uids

    def k_NEW(self, key: str) -> _Filter:
        return _each(lambda box, u: box.recent(u) and "\\Seen" not in box.flags(u))

    def k_OLD(self, key: str) -> _Filter:
        return _each(lambda box, u: not box.recent(u))

    def k_RECENT(self, key: str) -> _Filter:
        return _each(lambda box, u: box.recent(u))

    # logic
    def k_NOT(self, key: str) -> _Filter:
        inner = self.key(key)

        def complement(run: _Run, uids: list[int]) -> list[int]:
            hits = set(inner(run, uids))
            return [u for u in uids if u not in hits]

        return complement

    def k_OR(self, key: str) -> _Filter:
        a = self.key(key)
        b = self.key(key)

        def either(run: _Run, uids: list[int]) -> list[int]:
            hits = set(a(run, uids))
            if len(hits) == len(uids):
                return uids
            hits.update(b(run, [u for u in uids if u not in hits]))  # b only where a failed
            return [u for u in uids if u in hits]

        return either

    # flags
    def k_KEYWORD(self, key: str) -> _Filter:
        return _keyword(self.atom("a flag keyword", key), True)

    def k_UNKEYWORD(self, key: str) -> _Filter:
        return _keyword(self.atom("a flag keyword", key), False)

    # sizes, sets, modseq
    def k_LARGER(self, key: str) -> _Filter:
        n = self.number(key)
        return _each(lambda box, u: box.size(u) > n)

    def k_SMALLER(self, key: str) -> _Filter:
        n = self.number(key)
        return _each(lambda box, u: box.size(u) < n)

    def k_UID(self, key: str) -> _Filter:
        uids = self.sequence(self.atom("a UID set", key), key)
        return _each(lambda box, u: uids.contains(u, box.largest_uid))

    def k_MODSEQ(self, key: str) -> _Filter:
        # RFC 7162 3.1.5: MODSEQ [<entry-name> <entry-type-req>] <mod-sequence-valzer>;
        # the optional entry (flag metadata) is accepted and ignored: one modseq per message
        if self.more() and isinstance(self.args[self.pos], bytes):
            self.pos += 1
            kind = self.atom("an entry type (priv, shared or all)", key).lower()
            if kind not in ("priv", "shared", "all"):
                raise SearchError(f"MODSEQ entry type must be priv, shared or all, not {kind!r}")
        n = self.number(key)
        self.c.uses_modseq = True
        return _each(lambda box, u: box.modseq(u) >= n)

    # internal date (RFC 3501: disregarding time and timezone: the server's calendar date)
    def k_BEFORE(self, key: str) -> _Filter:
        d = self.date(key)
        return _each(lambda box, u: _local_date(box.internaldate(u)) < d)

    def k_ON(self, key: str) -> _Filter:
        d = self.date(key)
        return _each(lambda box, u: _local_date(box.internaldate(u)) == d)

    def k_SINCE(self, key: str) -> _Filter:
        d = self.date(key)
        return _each(lambda box, u: _local_date(box.internaldate(u)) >= d)

    # Date: header
    def k_SENTBEFORE(self, key: str) -> _Filter:
        d = self.date(key)
        self.c.needs_headers = True
        return _each_header(lambda h: _sent_date(h) < d)

    def k_SENTON(self, key: str) -> _Filter:
        d = self.date(key)
        self.c.needs_headers = True
        return _each_header(lambda h: _sent_date(h) == d)

    def k_SENTSINCE(self, key: str) -> _Filter:
        d = self.date(key)
        self.c.needs_headers = True
        return _each_header(lambda h: _sent_date(h) >= d)

    # headers
    def _envelope_key(self, key: str) -> _Filter:
        needle = self.string(key).casefold()
        index = _ENVELOPE_KEYS[key]
        self.c.needs_headers = True
        # SUBJECT is the decoded field; FROM/TO/CC/BCC the parsed addresses, written again
        decoded = _decoded if key == "SUBJECT" else _addresses

        def envelope_field_has(run: _Run, uids: list[int]) -> list[int]:
            # the common SUBJECT/FROM search: one tight loop, the decoded value memoised
            headers = run.box.headers
            found = []
            for u in uids:
                h = headers(u)
                if h is None:
                    continue
                memo = h.memo
                text = memo.get(index, _MISSING)
                if text is _MISSING:
                    text = memo[index] = decoded(h.envelope_field(index))
                if text is not None and needle in text:
                    found.append(u)
            return found

        return envelope_field_has

    k_SUBJECT = k_FROM = k_TO = k_CC = k_BCC = _envelope_key

    def k_HEADER(self, key: str) -> _Filter:
        name = self.string(key).strip().lower()
        needle = self.string(key).casefold()
        if not name:
            raise SearchError("HEADER needs a field name")
        self.c.needs_headers = True

        def match(h: MessageHeader) -> bool:
            values = _header_values(h).get(name)
            if values is None:
                return False
            # RFC 3501 6.4.4: an empty string matches every message that has the field
            return any(needle in v for v in values)

        return _each_header(match)

    # text
    def k_BODY(self, key: str) -> _Filter:
        needle = self.string(key).casefold()
        self.c.needs_body = self.c.needs_structure = True
        self.c._body_needles.add(needle)
        return lambda run, uids: [u for u in uids if run.body_has(u, needle, False)]

    def k_TEXT(self, key: str) -> _Filter:
        needle = self.string(key).casefold()
        self.c.needs_body = self.c.needs_structure = True
        self.c._text_needles.add(needle)
        return lambda run, uids: [u for u in uids if run.body_has(u, needle, True)]


_MISSING = object()


def _decoded(raw: bytes | None) -> str | None:
    """A header value as casefolded text; the common pure-ASCII value skips RFC 2047."""
    if raw is None:
        return None
    if b"=?" in raw or not raw.isascii():
        return decode_words(raw).casefold()
    return raw.decode("ascii").casefold()


def _addresses(raw: bytes | None) -> str | None:
    """An address field as casefolded text, as ENVELOPE parses it (CFWS inside addresses gone,
    groups, routes; mailhub.message.headers.address_search_text)."""
    text = address_search_text(raw)
    return None if text is None else text.casefold()


def _and(keys: list[_Filter]) -> _Filter:
    if len(keys) == 1:
        return keys[0]
    keys_t = tuple(keys)

    def every(run: _Run, uids: list[int]) -> list[int]:
        for k in keys_t:  # each key looks only at what the keys before it let through
            if not uids:
                break
            uids = k(run, uids)
        return uids

    return every


def _each(test: Callable[[SearchMailbox, int], bool]) -> _Filter:
    """A filter from a test of one message against what the mailbox knows of it."""

    def each(run: _Run, uids: list[int]) -> list[int]:
        box = run.box
        return [u for u in uids if test(box, u)]

    return each


def _each_header(test: Callable[[MessageHeader], bool]) -> _Filter:
    """A filter from a test of a message's top-level header (gone messages match nothing)."""

    def each(run: _Run, uids: list[int]) -> list[int]:
        headers = run.box.headers
        found = []
        for u in uids:
            h = headers(u)
            if h is not None and test(h):
                found.append(u)
        return found

    return each


def _flag(flag: str, present: bool) -> _Filter:
    if present:
        return lambda run, uids: [u for u in uids if flag in run.box.flags(u)]
    return lambda run, uids: [u for u in uids if flag not in run.box.flags(u)]


def _keyword(word: str, present: bool) -> _Filter:
    # keywords compare case-insensitively (RFC 3501 2.3.2 flags are atoms; Dovecot, Cyrus)
    low = word.lower()

    def has(box: SearchMailbox, u: int) -> bool:
        flags = box.flags(u)
        if word in flags:
            return True
        return any(f.lower() == low for f in flags)

    if present:
        return _each(has)
    return _each(lambda box, u: not has(box, u))


def _local_date(ts: float) -> date:
    return datetime.fromtimestamp(ts).date()


_RFC5322_DATE = re.compile(rb"(?:^|[\s,])(\d{1,2})\s+([A-Za-z]{3})[A-Za-z]*\.?\s+(\d{2,4})\b")


def parse_sent_date(value: bytes | None) -> date | None:
    """The calendar date of a Date: header (RFC 5322 3.3; obsolete 2-digit years per 4.3),
    ignoring time and zone (RFC 3501 6.4.4 SENT*); None when there is none to read."""
    if not value:
        return None
    m = _RFC5322_DATE.search(value)
    if m is None:
        return None
    month = MONTHS_B.get(m.group(2).upper())
    if month is None:
        return None
    try:
        return date(full_year(m.group(3)), month, int(m.group(1)))
    except ValueError:
        return None


_NO_DATE = date(1970, 1, 1)


def _sent_date(s: MessageHeader) -> date:
    """The Date: header's date; without a readable one 1-Jan-1970, the date Dovecot uses (so
    SENTBEFORE finds such messages and SENTSINCE does not)."""
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
    comp.c._filter = comp.all()
    return comp.c
