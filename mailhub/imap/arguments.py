"""Per-command argument grammar on top of the generic items of ``parser.py``.

Every function takes the items after the command name and returns plain data, or raises
``ParseError`` (answered with a tagged BAD). Nothing here touches the store or the session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Literal

from mailhub.imap.dates import MONTHS
from mailhub.imap.parser import Atom, Item, ParseError, SpooledLiteral
from mailhub.imap.sequence import SequenceSet
from mailhub.store.errors import InvalidName
from mailhub.store.names import decode_mutf7, encode_mutf7

# --- basic items ---------------------------------------------------------------------------


def astring(item: Item, what: str = "argument") -> bytes:
    """RFC 3501 astring: an atom, a quoted string or a literal."""
    if isinstance(item, Atom):
        return item.encode("utf-8", "surrogateescape")
    if isinstance(item, bytes):
        return item
    raise ParseError(f"{what} must be a string")


def mailbox(item: Item) -> str:
    """A mailbox name from the wire: modified UTF-7 decoded (RFC 3501 5.1.3); INBOX in any case
    is INBOX. Raw UTF-8 is accepted as well (clients that never encode).

    Any astring is valid syntax, so a name that is not valid modified UTF-7 (``a&b``) or not
    UTF-8 is no mailbox there can be: ``InvalidName``, answered NO [CANNOT], never BAD (as
    Dovecot answers it)."""
    raw = astring(item, "mailbox name")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidName("not UTF-8") from None
    if text.upper() == "INBOX":
        return "INBOX"
    if text.isascii():
        try:
            decoded = decode_mutf7(text)
        except ValueError:
            raise InvalidName("not valid modified UTF-7") from None
        # RFC 3501 5.1.3: one spelling per name. Printable ASCII stands for itself (never in
        # base64: "&AGE-" for "a"), no null shifts between runs ("&AOk-&AOk-"), no stray base64
        # bits, every "&" run ends with "-". The canonical encoding must give back what was sent.
        if encode_mutf7(decoded) != text:
            raise InvalidName("not in canonical modified UTF-7")
        return decoded
    return text


def atom(item: Item, what: str = "argument") -> Atom:
    if not isinstance(item, Atom):
        raise ParseError(f"{what} must be an atom")
    return item


def number(item: Item, what: str = "number", *, nonzero: bool = False, bits: int = 32) -> int:
    if not isinstance(item, Atom) or not item.isdigit() or not item.isascii():
        raise ParseError(f"{what} must be a number")
    value = int(item)
    if value >= 2**bits or (nonzero and value == 0):
        raise ParseError(f"{what} out of range")
    return value


def sequence_set(item: Item) -> SequenceSet:
    if not isinstance(item, Atom):
        raise ParseError("bad sequence set")
    try:
        return SequenceSet.parse(item)
    except ValueError as e:
        raise ParseError(str(e)) from None


def expect_count(items: list[Item], low: int, high: int | None = None) -> None:
    high = low if high is None else high
    if not low <= len(items) <= high:
        raise ParseError("wrong number of arguments")


# --- flags ---------------------------------------------------------------------------------

SYSTEM_FLAGS = {"\\SEEN": "\\Seen", "\\ANSWERED": "\\Answered", "\\FLAGGED": "\\Flagged",
                "\\DELETED": "\\Deleted", "\\DRAFT": "\\Draft"}  # fmt: skip
# RFC 3501 atom-specials (without "]", which flags may not contain either)
_FLAG_KEYWORD = re.compile(r"[^(){ %*\"\\\]\x00-\x1f\x7f-\U0010ffff]+")


def flag_list(items: list[Item] | Item) -> list[str]:
    """A flag list: ``(\\Seen $Junk)`` or a single flag; system flags in their canonical case.
    ``\\Recent`` cannot be stored (RFC 3501 2.3.2), other ``\\`` names are unknown: BAD."""
    if not isinstance(items, list):
        items = [items]
    flags: list[str] = []
    for item in items:
        if not isinstance(item, Atom):
            raise ParseError("flags must be atoms")
        if item.startswith("\\"):
            canonical = SYSTEM_FLAGS.get(item.upper())
            if canonical is None:
                raise ParseError(f"unknown system flag {item}")
            flags.append(canonical)
        elif _FLAG_KEYWORD.fullmatch(item):
            flags.append(str(item))
        else:
            raise ParseError(f"invalid keyword {item}")
    return flags


# --- FETCH ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BodySection:
    """BODY[<section>]<partial>: ``part`` (1.2 -> (1, 2)), ``text`` (HEADER, HEADER.FIELDS,
    HEADER.FIELDS.NOT, TEXT, MIME or ""), ``fields`` as sent, ``partial`` (origin, count)."""

    part: tuple[int, ...] = ()
    text: str = ""
    fields: tuple[str, ...] = ()
    partial: tuple[int, int] | None = None
    peek: bool = False

    def response_name(self) -> bytes:
        """How the response names it (RFC 3501 7.4.2): ``BODY[1.HEADER.FIELDS (A B)]<0>``."""
        spec = ".".join(str(p) for p in self.part)
        if self.text:
            spec = f"{spec}.{self.text}" if spec else self.text
        if self.fields:
            spec += " (" + " ".join(self.fields) + ")"
        name = f"BODY[{spec}]"
        if self.partial is not None:
            name += f"<{self.partial[0]}>"
        return name.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class FetchRequest:
    """What a FETCH asks for. ``sections``: BODY[...]/RFC822* items in order."""

    uid: bool = False
    flags: bool = False
    internaldate: bool = False
    size: bool = False
    envelope: bool = False
    body: bool = False  # BODY (non-extensible BODYSTRUCTURE)
    bodystructure: bool = False
    modseq: bool = False
    rfc822: tuple[str, ...] = ()  # "RFC822", "RFC822.HEADER", "RFC822.TEXT" in order
    sections: tuple[BodySection, ...] = ()
    changedsince: int | None = None
    vanished: bool = False

    @property
    def sets_seen(self) -> bool:
        # RFC 3501 6.4.5: BODY[...] and RFC822/RFC822.TEXT set \Seen; PEEK and HEADER do not.
        return any(not s.peek for s in self.sections) or any(
            r in ("RFC822", "RFC822.TEXT") for r in self.rfc822
        )

    @property
    def needs_structure(self) -> bool:
        return bool(self.envelope or self.body or self.bodystructure or self.sections
                    or self.rfc822)  # fmt: skip


_SIMPLE = {
    "UID": "uid", "FLAGS": "flags", "INTERNALDATE": "internaldate", "RFC822.SIZE": "size",
    "ENVELOPE": "envelope", "BODY": "body", "BODYSTRUCTURE": "bodystructure", "MODSEQ": "modseq",
}  # fmt: skip
_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_BODY_ATT = re.compile(
    r"(BODY(?:\.PEEK)?)\[([^\]]*)\](?:<([0-9]{1,10})\.([0-9]{1,10})>)?\Z", re.IGNORECASE
)
_SECTION = re.compile(
    r"((?:[1-9][0-9]{0,8})(?:\.[1-9][0-9]{0,8})*)?\.?"
    r"(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME)?(?: \((.*)\))?\Z",
    re.IGNORECASE,
)
_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 ftext


def body_section(name: str) -> BodySection:
    m = _BODY_ATT.match(name)
    if m is None:
        raise ParseError(f"bad fetch attribute {name}")
    peek = m.group(1).upper() == "BODY.PEEK"
    spec = m.group(2)
    sm = _SECTION.match(spec)
    if sm is None or (spec and spec.endswith(".")):
        raise ParseError(f"bad section [{spec}]")
    part_text, text, fields_text = sm.group(1), (sm.group(2) or "").upper(), sm.group(3)
    part = tuple(int(p) for p in part_text.split(".")) if part_text else ()
    if part_text and text and not spec[len(part_text) :].startswith("."):
        raise ParseError(f"bad section [{spec}]")
    if not part_text and spec and not text:
        raise ParseError(f"bad section [{spec}]")
    if text == "MIME" and not part:
        raise ParseError("MIME needs a part number")  # RFC 3501 6.4.5
    fields: tuple[str, ...] = ()
    if text.startswith("HEADER.FIELDS"):
        if fields_text is None:
            raise ParseError(f"{text} needs a list of header names")
        fields = tuple(f.strip('"') for f in fields_text.split())
        if not fields or not all(_HEADER_NAME.fullmatch(f) for f in fields):
            raise ParseError("bad header field list")
    elif fields_text is not None:
        raise ParseError(f"bad section [{spec}]")
    partial = None
    if m.group(3) is not None:
        count = int(m.group(4))
        if count == 0:
            raise ParseError("partial count must be positive")
        partial = (int(m.group(3)), count)
    return BodySection(part, text, fields, partial, peek)


def fetch_request(items: list[Item], *, uid: bool, qresync: bool = False) -> FetchRequest:
    """``FETCH`` arguments after the sequence set: one attribute, a macro, or a list; then
    optionally ``(CHANGEDSINCE n)`` (RFC 7162 3.1.4)."""
    if not items:
        raise ParseError("FETCH needs attributes")
    atts = items[0]
    modifiers = items[1:]
    names: list[str]
    if isinstance(atts, Atom):
        macro = _MACROS.get(atts.upper())
        names = list(macro) if macro is not None else [atts]
    elif isinstance(atts, list) and atts:
        names = []
        for a in atts:
            if not isinstance(a, Atom):
                raise ParseError("bad fetch attribute")
            if a.upper() in _MACROS:
                raise ParseError("macros cannot be used in a list")  # RFC 3501 6.4.5
            names.append(a)
    else:
        raise ParseError("bad fetch attributes")
    values: dict[str, bool] = {"uid": uid}  # FetchRequest's flags
    rfc822: list[str] = []
    sections: list[BodySection] = []
    for name in names:
        upper = name.upper()
        simple = _SIMPLE.get(upper)
        if simple is not None:
            values[simple] = True
        elif upper in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):
            rfc822.append(upper)
        elif upper.startswith(("BODY[", "BODY.PEEK[")):
            sections.append(body_section(name))
        else:
            raise ParseError(f"unknown fetch attribute {name}")
    if len(modifiers) > 1 or (modifiers and not isinstance(modifiers[0], list)):
        raise ParseError("bad FETCH modifiers")
    changedsince = None
    vanished = False
    if modifiers:
        mods = modifiers[0]
        assert isinstance(mods, list)  # checked above
        i = 0
        while i < len(mods):
            name = atom(mods[i], "FETCH modifier").upper()
            if name == "CHANGEDSINCE" and i + 1 < len(mods):
                changedsince = number(mods[i + 1], "mod-sequence", bits=63)
                i += 2
            elif name == "VANISHED":
                vanished = True
                i += 1
            else:
                raise ParseError(f"unknown FETCH modifier {name}")
        # RFC 7162 3.2.6: only in UID FETCH, with CHANGEDSINCE, once QRESYNC is enabled.
        if vanished and not qresync:
            raise ParseError("VANISHED needs QRESYNC (ENABLE QRESYNC first)")
        if vanished and not (uid and changedsince is not None):
            raise ParseError("VANISHED needs UID FETCH and CHANGEDSINCE")
    if changedsince is not None or values.get("modseq"):
        # RFC 7162 3.1.4.1: CHANGEDSINCE implies MODSEQ in the response.
        values["modseq"] = True
    return FetchRequest(
        rfc822=tuple(rfc822),
        sections=tuple(sections),
        changedsince=changedsince,
        vanished=vanished,
        **values,
    )


# --- STORE ---------------------------------------------------------------------------------


StoreMode = Literal["set", "add", "remove"]
_STORE_MODES: dict[str, StoreMode] = {"": "set", "+": "add", "-": "remove"}


@dataclass(frozen=True)
class StoreRequest:
    mode: StoreMode
    silent: bool
    flags: tuple[str, ...]
    unchanged_since: int | None = None


def store_request(items: list[Item]) -> StoreRequest:
    """``[(UNCHANGEDSINCE n)] (+|-)FLAGS[.SILENT] flags`` (RFC 3501 6.4.6, RFC 7162 3.1.3)."""
    unchanged_since = None
    if items and isinstance(items[0], list):
        mods = items[0]
        if len(mods) != 2 or not isinstance(mods[0], Atom) or mods[0].upper() != "UNCHANGEDSINCE":
            raise ParseError("bad STORE modifier")
        unchanged_since = number(mods[1], "mod-sequence", bits=63)
        items = items[1:]
    if len(items) < 2:
        raise ParseError("STORE needs an item and flags")
    name = atom(items[0], "STORE item").upper()
    m = re.fullmatch(r"([+-]?)FLAGS(\.SILENT)?", name)
    if m is None:
        raise ParseError(f"bad STORE item {name}")
    mode = _STORE_MODES[m.group(1)]
    rest = items[1:]
    flag_items: list[Item] = rest[0] if len(rest) == 1 and isinstance(rest[0], list) else rest
    return StoreRequest(mode, bool(m.group(2)), tuple(flag_list(flag_items)), unchanged_since)


# --- APPEND --------------------------------------------------------------------------------

_DATE_TIME = re.compile(
    r" ?([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})\Z"
)


def date_time(raw: bytes) -> float:
    """RFC 3501 date-time ``"17-Jul-1996 02:44:25 -0700"`` -> POSIX timestamp."""
    m = _DATE_TIME.match(raw.decode("ascii", "replace"))
    if m is None:
        raise ParseError("bad date-time")
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    month = MONTHS.get(mon.upper())
    if month is None:
        raise ParseError("bad month in date-time")
    offset = timedelta(hours=int(zh), minutes=int(zm)) * (-1 if sign == "-" else 1)
    try:
        dt = datetime(int(year), month, int(day), int(hh), int(mm), int(ss),
                      tzinfo=timezone(offset))  # fmt: skip
    except ValueError:
        raise ParseError("bad date-time") from None
    return dt.timestamp()


@dataclass
class AppendRequest:
    mailbox: str
    flags: list[str] = field(default_factory=list)
    internaldate: float | None = None
    message: bytes | SpooledLiteral = b""


def append_request(items: list[Item]) -> AppendRequest:
    """``mailbox [flag-list] [date-time] literal`` (RFC 3501 6.3.11)."""
    if len(items) < 2:
        raise ParseError("APPEND needs a mailbox and a message")
    name = mailbox(items[0])
    rest = items[1:]
    message = rest.pop()
    if not isinstance(message, bytes | SpooledLiteral):
        raise ParseError("the message must be a literal")
    request = AppendRequest(name, message=message)
    if rest and isinstance(rest[0], list):
        request.flags = flag_list(rest.pop(0))
    if rest and isinstance(date := rest[0], bytes):
        rest.pop(0)
        request.internaldate = date_time(date)
    if rest:
        raise ParseError("bad APPEND arguments")
    return request


# --- LIST ----------------------------------------------------------------------------------


def list_pattern_matcher(reference: str, pattern: str) -> re.Pattern[str]:
    """RFC 3501 6.3.8: ``*`` matches anything, ``%`` anything but the delimiter ``.``.
    The reference is simply prefixed (names here are never relative to anything else)."""
    full = reference + pattern
    regex = []
    for ch in full:
        if ch == "*":
            regex.append(".*")
        elif ch == "%":
            regex.append("[^.]*")
        else:
            regex.append(re.escape(ch))
    return re.compile("".join(regex) + r"\Z", re.DOTALL)


# --- SELECT/EXAMINE parameters (RFC 7162 3.1.8, 3.2.5) ------------------------------------------


@dataclass(frozen=True)
class QresyncParams:
    """``QRESYNC (uidvalidity modseq [known-uids [(seq-match)]])``: what the client knew."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None


def select_params(item: Item) -> tuple[bool, QresyncParams | None]:
    """The parenthesised SELECT/EXAMINE parameters: (CONDSTORE asked, QRESYNC parameters)."""
    if not isinstance(item, list) or not item:
        raise ParseError("bad SELECT parameters")
    condstore = False
    qresync = None
    i = 0
    while i < len(item):
        name = atom(item[i], "SELECT parameter").upper()
        if name == "CONDSTORE":
            condstore = True
            i += 1
        elif name == "QRESYNC" and i + 1 < len(item) and isinstance(item[i + 1], list):
            args = item[i + 1]
            if not 2 <= len(args) <= 4:
                raise ParseError("QRESYNC takes (uidvalidity modseq [known-uids [seq-match]])")
            known = sequence_set(args[2]) if len(args) >= 3 else None
            if len(args) == 4 and (not isinstance(args[3], list) or len(args[3]) != 2):
                raise ParseError("QRESYNC seq-match is (sequence-set uid-set)")
            if len(args) == 4:  # a hint to save VANISHED output; checked, not needed here
                sequence_set(args[3][0])
                sequence_set(args[3][1])
            qresync = QresyncParams(
                number(args[0], "UIDVALIDITY"), number(args[1], "mod-sequence", bits=63), known
            )
            i += 2
        else:
            raise ParseError(f"unknown SELECT parameter {name[:40]}")
    return condstore, qresync
