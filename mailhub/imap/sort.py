"""SORT (RFC 5256 3, DISPLAYFROM/DISPLAYTO of RFC 5957): sort keys of a message and the order.

The keys come from the cached top-level header (message_cache "headers"): the base subject
(RFC 5256 2.1), the sent date (2.2), the first address of From/To/Cc; what a key costs to
compute is remembered in the header's ``memo`` (kept in memory with the cache entry), so a
second SORT of the same mailbox only compares. THREAD (thread.py) uses the same keys.

Strings compare as Dovecot compares them: decoded (RFC 2047), upper-cased (for ASCII this is
i;ascii-casemap, RFC 5256 3's default; other text is decomposed first, like Dovecot's
i;unicode-casemap titlecase), then by code point.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Protocol

from mailhub.imap.dates import MONTHS_B, full_year
from mailhub.imap.parser import Atom
from mailhub.message.header_text import from_bytes
from mailhub.message.headers import decode_words, parse_address_list
from mailhub.message.mime import MessageHeader

# ENVELOPE field index (mime.ENVELOPE_FIELDS) of the header fields used here
_DATE, _SUBJECT, _FROM, _TO, _CC, _IN_REPLY_TO, _MESSAGE_ID = 0, 1, 2, 5, 6, 8, 9


class _Info(Protocol):
    """What key_column reads of a message besides its header (a MessageInfo, a SortMessage)."""

    @property
    def internaldate(self) -> int: ...
    @property
    def size(self) -> int: ...


class SortError(ValueError):
    """Bad sort criteria: the command gets a tagged BAD with str(error)."""


# -- base subject (RFC 5256 2.1) ---------------------------------------------------------------

_WSP_RUN = re.compile(r"[ \t\r\n]+")
# subj-blob = "[" *BLOBCHAR "]" *WSP; BLOBCHAR is any character but "[" and "]" (the ABNF
# says US-ASCII; Dovecot takes any, and subjects arrive decoded to UTF-8 here)
_BLOB = r"\[[^\[\]]*\] *"
# subj-leader = (*subj-blob subj-refwd) / WSP; subj-refwd = ("re" / ("fw" ["d"])) *WSP
# [subj-blob] ":"
_LEADER = re.compile(rf"(?:{_BLOB})*(?:re|fwd?) *(?:{_BLOB})?:| ", re.IGNORECASE)
_BLOB_PREFIX = re.compile(_BLOB)


# what a subj-leader (3), subj-blob (4) or "[fwd:" (6) starts with; a subj-trailer (2) ends
# with " " or ")"
_MAY_LEAD = frozenset(" [rRfF")


def base_subject(subject: str) -> tuple[str, bool]:
    """The base subject of a (decoded) subject, and whether the extraction found it to be a
    reply or forward: it removed a subj-refwd, a "(fwd)" trailer or a "[fwd: ...]" wrapper
    (RFC 5256 2.1 and its note)."""
    # (1) tabs, continuations and runs of white space become one space
    s = subject
    if "\t" in s or "\n" in s or "\r" in s or "  " in s:
        s = _WSP_RUN.sub(" ", s)
    if s and s[0] not in _MAY_LEAD and s[-1] not in " )":
        return s, False  # nothing below can match: the usual subject, done at once
    reply = False
    while True:
        # (2) trailing subj-trailer ("(fwd)" / WSP), as often as it matches
        while True:
            if s.endswith(" "):
                s = s[:-1]
            elif s[-5:].lower() == "(fwd)":
                s = s[:-5]
                reply = True
            else:
                break
        # (3) leading subj-leader, (4) a leading subj-blob unless nothing would be left,
        # (5) both again until neither matches
        while True:
            m = _LEADER.match(s)
            if m is not None:
                if m.group() != " ":
                    reply = True
                s = s[m.end() :]
                continue
            m = _BLOB_PREFIX.match(s)
            if m is not None and s[m.end() :].strip(" "):
                s = s[m.end() :]
                continue
            break
        # (6) "[fwd:" ... "]" around the rest: remove it and start over at (2)
        if s[:5].lower() == "[fwd:" and s.endswith("]"):
            s = s[5:-1]
            reply = True
            continue
        return s, reply


def collation_key(text: str) -> str:
    """What strings are compared by (see the module's docstring)."""
    if text.isascii():
        return text.upper()
    return unicodedata.normalize("NFD", text).upper()


# -- sent date (RFC 5256 2.2, RFC 5322 3.3 and the obsolete forms of 4.3) ----------------------

_DATE_TIME = re.compile(
    rb"(?:\s*[A-Za-z]+\s*,)?\s*(\d{1,2})\s+([A-Za-z]{3})[A-Za-z]*\.?\s+(\d{2,4})\s+"
    rb"(\d{1,2})\s*:\s*(\d{2})(?:\s*:\s*(\d{2}))?(?:\s+([+-]\d{4}|[A-Za-z]+))?(?![^\s(])"
)  # the zone after white space (RFC 5322 3.3 FWS): "00:01+0000" is no date, as for Dovecot
# RFC 5322 4.3 obs-zone; other alphabetic zones (military ones) count as +0000
_ZONES = {
    b"UT": 0, b"GMT": 0, b"Z": 0, b"EST": -500, b"EDT": -400, b"CST": -600, b"CDT": -500,
    b"MST": -700, b"MDT": -600, b"PST": -800, b"PDT": -700,
}  # fmt: skip


def parse_date_time(value: bytes | None) -> int | None:
    """A Date: header as seconds since the epoch in UTC (the zone applied), or None when it
    cannot be read."""
    if not value:
        return None
    # The usual form, "Mon, 7 Feb 1994 21:52:25 -0800" (RFC 5322 3.3, as nearly every client
    # writes it), read by splitting at white space instead of the regular expression (half
    # the cost of a cold SORT by DATE); anything else, or anything doubtful, takes the full
    # path (the same answer: tests.test_imap_sort.DateFastPath).
    p = value.split()
    if len(p) >= 6:
        name, d, mon, y, hms, zone = p[0], p[1], p[2], p[3], p[4], p[5]
        if (
            name[-1:] == b","
            and name[:-1].isalpha()
            and len(d) <= 2
            and d.isdigit()
            and len(mon) == 3
            and len(y) == 4
            and y.isdigit()
            and len(hms) == 8
            and len(zone) == 5
        ):
            hour, minute, second = _TWO.get(hms[:2]), _TWO.get(hms[3:5]), _TWO.get(hms[6:])
            offset = _ZONE_OF.get(zone)
            days = _DAYS_OF.get((d, mon, y), _MISSING)  # known once the full path saw it
            if (
                hour is not None
                and minute is not None
                and second is not None
                and offset is not None
                and days is not _MISSING
                and hms[2:3] == b":"
                and hms[5:6] == b":"
            ):
                if days is None or hour >= 24 or minute >= 60:
                    return None
                return ((days * 24 + hour) * 60 + minute) * 60 + second - offset  # type: ignore[operator]  # days is an int
    return _parse_date_time(value)


def _parse_date_time(value: bytes) -> int | None:
    """parse_date_time by the regular expression: every form RFC 5322 3.3 and 4.3 allow."""
    m = _DATE_TIME.match(value)  # envelope_field values come unfolded
    if m is None:
        return None
    d, mon, y, hh, mm, ss, zone = m.groups()
    # the days since the epoch of (day, month, year) as written: one date is shared by many
    # messages, and this is most of the cost
    try:
        days = _DAYS_OF[d, mon, y]
    except KeyError:
        days = _days_of(d, mon, y)
        if len(_DAYS_OF) >= 10_000:
            _DAYS_OF.clear()
        _DAYS_OF[d, mon, y] = days
    hour, minute, second = int(hh), int(mm), int(ss or 0)
    if days is None or not (hour < 24 and minute < 60 and second < 61):
        return None
    offset = 0
    if zone is not None:
        if zone[:1] in b"+-":
            hhmm = int(zone[1:])
            offset = (hhmm // 100 * 60 + hhmm % 100) * 60 * (-1 if zone[:1] == b"-" else 1)
        else:
            offset = (_ZONES.get(zone.upper(), 0) // 100) * 3600
    return (days * 24 + hour) * 3600 + minute * 60 + second - offset


_DAYS_OF: dict[tuple[bytes, bytes, bytes], int | None] = {}
# two digits -> their value (00 to 60), and "+HHMM" -> the zone's offset in seconds for the
# usual zones: the fast path of parse_date_time looks them up
_TWO: dict[bytes, int] = {b"%02d" % n: n for n in range(61)}
_ZONE_OF: dict[bytes, int] = {
    b"%c%02d%02d" % (sign, h, m): (1 if sign == ord("+") else -1) * (h * 60 + m) * 60
    for sign in b"+-"
    for h in range(24)
    for m in (0, 15, 30, 45)
}


def _days_of(day: bytes, month_name: bytes, year_digits: bytes) -> int | None:
    """Days from 1970-01-01 to a date as _DATE_TIME reads it (negative before it); None for
    no such date."""
    month = MONTHS_B.get(month_name.upper())
    if month is None:
        return None
    year = full_year(year_digits)
    if not 1 <= int(day) <= _month_days(year, month):
        return None
    return _days(year, month, int(day))


def _month_days(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _days(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to the date (proleptic Gregorian; what calendar.timegm counts, in
    arithmetic: this runs once per message of a cold SORT)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


# -- message IDs (RFC 5322 3.6.4) for THREAD REFERENCES -----------------------------------------

_MSG_ID = re.compile(rb"<\s*([^<>\s@]+@[^<>\s]+?)\s*>")
_COMMENT = re.compile(rb"\((?:[^()\\]|\\.)*\)")


def message_ids(value: bytes | None) -> list[bytes]:
    """The msg-ids of a Message-ID, In-Reply-To or References field (folded or not), in order,
    without the angle brackets; comments and what is not a msg-id (garbage is common here) are
    left out."""
    if not value:
        return []
    if b"(" in value:
        value = _COMMENT.sub(b" ", value)
    return _MSG_ID.findall(value)


def _references_field(block: bytes, low: bytes) -> bytes | None:
    """The raw value of the first References field of a header block (``low``: it in lower
    case; the cached header keeps the block; References is not one of the ENVELOPE fields it
    indexes)."""
    if low.startswith(b"references"):
        start = 10
    else:
        start = low.find(b"\nreferences")
        if start < 0:
            return None
        start += 11
    while True:
        rest = low[start:].lstrip(b" \t")
        if rest.startswith(b":"):
            begin = len(low) - len(rest) + 1
            break
        start = low.find(b"\nreferences", start)  # "References-Foo:" and the like
        if start < 0:
            return None
        start += 11
    end = begin
    while True:
        end = block.find(b"\n", end)
        if end < 0:
            return block[begin:].rstrip(b"\r")
        if block[end + 1 : end + 2] not in (b" ", b"\t"):
            return block[begin:end].rstrip(b"\r")
        end += 1


# -- one message as SORT and THREAD see it -------------------------------------------------------


class SortMessage:
    """A message of the selected mailbox with its cached header; every key is computed once
    per header and kept in ``header.memo`` under its own name. The values kept are ints,
    strings, bytes, booleans and None, which the garbage collector never tracks: inserting
    them leaves the memo dict untracked, so keys kept for a big mailbox add nothing to every
    later full collection (a list per header did: 10,000 more objects to walk; a tuple
    would make the dict tracked until the next full collection)."""

    __slots__ = ("_keys", "header", "internaldate", "seq", "size", "uid")

    def __init__(self, uid: int, seq: int, internaldate: int, size: int, header: MessageHeader):
        self.uid = uid
        self.seq = seq
        self.internaldate = internaldate
        self.size = size
        self.header = header
        self._keys: dict[str, object] = header.memo

    def _key(self, name: str) -> object:
        keys = self._keys
        value = keys.get(name, _MISSING)
        if value is _MISSING:
            value = keys[name] = _COMPUTE[name](self.header)
        return value

    # The memo holds each key's own type (``object`` to the type checker), so these
    # properties' returns are ignored for it (ignore[return-value]).
    @property
    def sent(self) -> int:
        """RFC 5256 2.2: the Date: header in UTC, or the internal date without a valid one."""
        keys = self._keys
        sent = keys.get(_SENT, _MISSING)
        if sent is _MISSING:  # (_COMPUTE[_SENT], called here: once per message of a SORT)
            sent = keys[_SENT] = parse_date_time(self.header.envelope_field(_DATE))
        return self.internaldate if sent is None else sent  # type: ignore[return-value]  # memo

    @property
    def subject(self) -> tuple[str, bool]:
        """The base subject as compared (collation_key) and whether it is a reply/forward."""
        return self.base_subject, self._keys[_REPLY]  # type: ignore[return-value]  # memo, see sent

    @property
    def base_subject(self) -> str:
        """``subject[0]`` (no tuple made)."""
        keys = self._keys
        base = keys.get(_SUBJECT_KEY, _MISSING)
        if base is _MISSING:
            # kept as two plain values: a tuple would make the memo dict tracked by the
            # garbage collector again (until the next full collection)
            base, keys[_REPLY] = _subject_key(self.header)
            keys[_SUBJECT_KEY] = base
        return base  # type: ignore[return-value]  # memo, see sent

    @property
    def message_id(self) -> bytes | None:
        value = self._keys.get(_MESSAGE_ID_KEY, _MISSING)
        return self._key(_MESSAGE_ID_KEY) if value is _MISSING else value  # type: ignore[return-value]  # memo, see sent

    @property
    def references(self) -> tuple[bytes, ...]:
        """RFC 5256 4 REFERENCES (1)(A): the References field's msg-ids, or without any the
        first msg-id of In-Reply-To."""
        # kept as the msg-ids joined by spaces (a msg-id has none, see _MSG_ID): bytes are
        # never tracked by the garbage collector, a tuple would make the memo dict tracked
        value = self._keys.get(_REFERENCES, _MISSING)
        if value is _MISSING:
            value = self._keys[_REFERENCES] = b" ".join(_references(self.header))
        return tuple(value.split()) if value else ()  # type: ignore[attr-defined]  # bytes


# names of the keys in the memo (and in _COMPUTE); SEARCH and FETCH keep theirs there too
_SENT, _SUBJECT_KEY, _MESSAGE_ID_KEY, _REFERENCES = "s:sent", "s:subject", "s:mid", "s:refs"
_REPLY = "s:reply"  # beside _SUBJECT_KEY: whether the subject is a reply or forward
_MISSING = object()


def _subject_key(h: MessageHeader) -> tuple[str, bool]:
    """(collation_key of the base subject, reply or forward) of the Subject field."""
    raw = h.envelope_field(_SUBJECT)
    if not raw:
        return "", False
    if raw.isascii() and b"=?" not in raw:
        # The usual subject: ASCII, no encoded word, and nothing that RFC 5256 2.1 changes
        # (base_subject's first test, with no white space for (1) to change): its own base
        # subject, compared upper-cased (collation_key of ASCII). The same answer as
        # _subject_key_full: tests.test_imap_sort.SubjectFastPath.
        text = raw.decode("ascii")
        if (
            text[0] not in _MAY_LEAD
            and text[-1] not in " )"
            and "  " not in text
            and "\t" not in text
            and "\n" not in text
            and "\r" not in text
        ):
            return text.upper(), False
    return _subject_key_full(raw)


def _subject_key_full(raw: bytes) -> tuple[str, bool]:
    """_subject_key of a non-empty Subject value, step by step."""
    text = decode_words(raw) if b"=?" in raw or not raw.isascii() else raw.decode("ascii")
    base, reply = base_subject(text)
    return collation_key(base), reply


def _first_address(h: MessageHeader, index: int) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(display name, local part, domain) of the first address of a field as ENVELOPE has it:
    a group's name is in the local part (RFC 3501 7.4.2), as Dovecot sorts it too."""
    for name, _adl, mailbox, host in parse_address_list(h.envelope_field(index)):
        return name, mailbox, host
    return None, None, None


def _mailbox_key(index: int) -> Callable[[MessageHeader], str]:
    def key(h: MessageHeader) -> str:
        mailbox = _first_address(h, index)[1]
        return collation_key(from_bytes(mailbox)) if mailbox else ""

    return key


def _display_key(index: int) -> Callable[[MessageHeader], str]:
    def key(h: MessageHeader) -> str:
        name, mailbox, host = _first_address(h, index)
        text = decode_words(name).strip() if name else ""
        if not text and mailbox is not None:
            # RFC 5957 7: without a display name, the addr-spec
            text = from_bytes(mailbox + b"@" + host if host else mailbox)
        return collation_key(text)

    return key


_ADDRESS_KEYS = {
    "FROM": _mailbox_key(_FROM),
    "TO": _mailbox_key(_TO),
    "CC": _mailbox_key(_CC),
    "DISPLAYFROM": _display_key(_FROM),
    "DISPLAYTO": _display_key(_TO),
}


# a References or In-Reply-To field's name at a line's start
_REPLY_FIELD = re.compile(rb"\n(?:references|in-reply-to)")


def _references(h: MessageHeader) -> tuple[bytes, ...]:
    """RFC 5256 4 REFERENCES (1)(A) (SortMessage.references) of a header."""
    low = h.lower_header()  # shared with the field look-ups (one lower() per header)
    if (
        _REPLY_FIELD.search(low) is None
        and not low.startswith((b"references", b"in-reply-to"))
        and h.header_size == len(low)
    ):
        return ()  # neither field in the header, and the whole header is in the block
    return _references_full(h)


def _references_full(h: MessageHeader) -> tuple[bytes, ...]:
    """_references by the fields' values."""
    block = h.header
    low = h.lower_header()  # shared with the field look-ups (one lower() per header)
    if b"references" in low:
        refs = message_ids(_references_field(block, low))
        if refs:
            return tuple(refs)
    if b"in-reply-to" not in low and h.header_size == len(block):
        return ()  # the whole header is in the block, without In-Reply-To: no need to look
    return tuple(message_ids(h.envelope_field(_IN_REPLY_TO))[:1])


def _message_id(h: MessageHeader) -> bytes | None:
    """The first msg-id of Message-ID (message_ids(...)[0], without the list of them all)."""
    value = h.envelope_field(_MESSAGE_ID)
    if not value:
        return None
    # The usual "<local@domain>": what _MSG_ID finds in it is all between the brackets (no
    # regular expression run, which costs more than the rest of the look-up)
    if value[:1] == b"<" and value[-1:] == b">":
        inner = value[1:-1]
        if (
            0 < inner.find(b"@") < len(inner) - 1
            and b"<" not in inner
            and b">" not in inner
            and b"(" not in inner
            and inner.split() == [inner]  # no white space
        ):
            return inner
    if b"(" in value:
        value = _COMMENT.sub(b" ", value)
    m = _MSG_ID.search(value)
    return m.group(1) if m is not None else None


# How SortMessage._key and key_column compute the Message-ID and the address keys (the sent
# date, the subject and the references are computed by SortMessage's properties,
# thread_keys and key_column)
_COMPUTE: dict[str, Callable[[MessageHeader], object]] = {
    _SENT: lambda h: parse_date_time(h.envelope_field(_DATE)),
    _MESSAGE_ID_KEY: _message_id,
    **{"s:" + name: f for name, f in _ADDRESS_KEYS.items()},
}
_ADDRESS_INDEX = {name: "s:" + name for name in _ADDRESS_KEYS}
_SEQ = attrgetter("seq")


# -- SORT criteria and the order -----------------------------------------------------------------


# the criteria of RFC 5256 3 and RFC 5957 (key_column computes each)
_CRITERIA = frozenset(("ARRIVAL", "DATE", "SIZE", "SUBJECT", *_ADDRESS_KEYS))


@dataclass(frozen=True)
class SortKey:
    name: str  # ARRIVAL, CC, DATE, ...
    reverse: bool


def parse_program(item: object) -> list[SortKey]:
    """The parenthesised sort criteria of RFC 5256 3: ``(REVERSE DATE SUBJECT)``."""
    if not isinstance(item, list) or not item:
        raise SortError("SORT needs a parenthesised list of sort criteria")
    program: list[SortKey] = []
    reverse = False
    for word in item:
        if not isinstance(word, Atom):
            raise SortError("sort criteria are atoms")
        name = word.upper()
        if name == "REVERSE" and not reverse:
            reverse = True
            continue
        if name not in _CRITERIA:
            raise SortError(f"unknown sort criterion {str(word)[:40]!r}")
        program.append(SortKey(name, reverse))
        reverse = False
    if reverse:
        raise SortError("REVERSE must be followed by a sort criterion")
    return program


def thread_keys(headers: Iterable[MessageHeader], *, references: bool) -> bool:
    """Compute (once) and keep in each header's memo what THREAD reads of its message: sent
    date and base subject, and for REFERENCES the references; whether some message has
    references (then thread.thread_references reads every Message-ID: message_id_keys). The
    memo gets ints, strings and bytes only, and no object is made per message: the command
    computes these in slices between reactor turns, and makes its SortMessages in one
    synchronous step after."""
    some = False
    for h in headers:
        keys = h.memo
        if _SENT not in keys:
            keys[_SENT] = parse_date_time(h.envelope_field(_DATE))
        if _SUBJECT_KEY not in keys:
            keys[_SUBJECT_KEY], keys[_REPLY] = _subject_key(h)
        if references:
            refs = keys.get(_REFERENCES, _MISSING)
            if refs is _MISSING:  # (see SortMessage.references)
                refs = keys[_REFERENCES] = b" ".join(_references(h))
            if refs:
                some = True
    return some


def message_id_keys(headers: Iterable[MessageHeader]) -> None:
    """Compute (once) and keep in each header's memo its Message-ID (SortMessage.message_id)."""
    for h in headers:
        keys = h.memo
        if _MESSAGE_ID_KEY not in keys:
            keys[_MESSAGE_ID_KEY] = _message_id(h)


def key_column(
    name: str, uids: Sequence[int], headers: Sequence[MessageHeader], infos: Mapping[int, _Info]
) -> list[Any]:
    """The values of sort criterion ``name`` (ARRIVAL, DATE, ...) of the messages ``uids``
    with their cached ``headers``, as compared; ``infos`` has each one's internal date and
    size. One loop per criterion, no object per message: the values are ints and strings,
    which the garbage collector never tracks (10,000 SortMessages per command made young
    collections inside SORT and counted towards the next full one). Each key is kept in its
    header's memo, as SortMessage keeps it."""
    if name == "ARRIVAL":
        return [infos[u].internaldate for u in uids]
    if name == "SIZE":
        return [infos[u].size for u in uids]
    out: list[Any] = []
    append = out.append
    if name == "DATE":
        for u, h in zip(uids, headers, strict=True):
            memo = h.memo
            sent = memo.get(_SENT, _MISSING)
            if sent is _MISSING:
                sent = memo[_SENT] = parse_date_time(h.envelope_field(_DATE))
            append(infos[u].internaldate if sent is None else sent)  # (SortMessage.sent)
    elif name == "SUBJECT":
        for h in headers:
            memo = h.memo
            base = memo.get(_SUBJECT_KEY, _MISSING)
            if base is _MISSING:  # two plain values, as SortMessage.base_subject keeps them
                base, memo[_REPLY] = _subject_key(h)
                memo[_SUBJECT_KEY] = base
            append(base)
    else:
        key = _ADDRESS_INDEX[name]
        compute = _COMPUTE[key]
        for h in headers:
            memo = h.memo
            value = memo.get(key, _MISSING)
            if value is _MISSING:
                value = memo[key] = compute(h)
            append(value)
    return out


def sort_order(columns: Sequence[tuple[list[Any], bool]], count: int) -> list[int]:
    """Positions 0..count-1 (mailbox order) in the order of the criteria's values
    ``columns`` ((values, reverse) each, key_column's, first criterion first); positions
    that compare equal on every criterion stay in mailbox order (RFC 5256 3), REVERSE or
    not. The values are read by index in C (``list.__getitem__``): no call per message."""
    if len(columns) == 1:
        values, reverse = columns[0]
        return sorted(range(count), key=values.__getitem__, reverse=reverse)
    order = list(range(count))
    # stable sorts, last criterion first; reverse=True keeps equal elements' order too
    for values, reverse in reversed(columns):
        order.sort(key=values.__getitem__, reverse=reverse)
    return order


def sort_messages(messages: list[SortMessage], program: list[SortKey]) -> list[SortMessage]:
    """``messages`` (in mailbox order) in the order of ``program``; messages that compare
    equal on every criterion stay in mailbox order (RFC 5256 3), REVERSE or not. (The
    command sorts columns: key_column and sort_order, which this is made of.)"""
    ordered = sorted(messages, key=_SEQ)
    uids = [m.uid for m in ordered]
    headers = [m.header for m in ordered]
    infos = {m.uid: m for m in ordered}
    columns = [(key_column(key.name, uids, headers, infos), key.reverse) for key in program]
    return [ordered[i] for i in sort_order(columns, len(ordered))]
