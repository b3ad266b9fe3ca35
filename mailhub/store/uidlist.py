"""The persistent per-folder index, ``mailhub-uidlist`` (Dovecot keeps ``dovecot-uidlist``).

IMAP needs UIDs that stay the same across sessions and restarts (RFC 3501 2.3.1.1), and a
UIDVALIDITY that changes only when they could not be kept. Maildir has no UIDs, so each folder
keeps a list from the message *base name* (the file name before ``:2,``, which survives flag
changes and the new/ -> cur/ move) to its UID, plus the size and internal date so FETCH needs no
stat(). Version 2 adds what CONDSTORE (RFC 7162) and IMAP keywords need: the folder's highest
mod-sequence, and per message its mod-sequence, its keywords (Maildir file names cannot carry
them portably) and the flags it had when its mod-sequence was last set, so a rename by another
program (mutt, Dovecot) shows up as a difference on the next scan and gets a new mod-sequence.

Format version 2 (text, one record a line, base name last because it may contain spaces)::

    mailhub-uidlist 2 <uidvalidity> <uidnext> <highestmodseq>
    K <keyword> <keyword> ...
    <uid> <size> <internaldate> <modseq> <flags> <keywords> <base>

``<flags>`` are the Maildir letters in ASCII order, ``<keywords>`` comma-separated indexes
into the ``K`` line; ``-`` for none. Keywords are IMAP atoms, so they never contain a space.

Version 1 (still read; the next write upgrades it) had ``<uid> <size> <internaldate> <base>``
records. Its messages read as mod-sequence 1 with no keywords and unknown flags (adopted from
the file names without a new mod-sequence).

The file is always replaced atomically (temp -> fsync -> rename -> fsync dir) by a holder of the
folder's dotlock (see ``maildir.Folder``); readers without the lock see the old or the new list.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from pathlib import Path

from mailhub.safeio import atomic_write
from mailhub.store.errors import CorruptUidList

FILENAME = "mailhub-uidlist"
LOCKNAME = FILENAME + ".lock"
MAGIC = b"mailhub-uidlist"
VERSION = b"2"
MAX_UID = 2**32 - 1  # RFC 3501: UIDs and UIDVALIDITY are non-zero 32-bit numbers
MAX_MODSEQ = 2**63 - 1  # RFC 7162 3.1: mod-sequences are unsigned 63-bit numbers

_NONE: frozenset[str] = frozenset()


@dataclass(slots=True)
class UidRecord:
    """One message of the list. ``uid``, ``size`` and ``internaldate`` never change once a
    record exists (a message is immutable; a new UID means a new record): ``serialise`` keeps
    their text in ``head`` and renders only the rest of the line again on later writes."""

    uid: int
    size: int
    internaldate: int  # seconds since the epoch (IMAP INTERNALDATE has second precision)
    modseq: int = 1
    flags: frozenset[str] | None = None  # letters as of ``modseq``; None: unknown (version 1)
    keywords: frozenset[str] = _NONE
    head: str | None = field(default=None, compare=False, repr=False)  # "uid size date"
    # (modseq, flags, keywords, line): the line ``serialise`` last wrote for it, and what it
    # was made from (a change takes a new mod-sequence, flags and keyword sets are replaced,
    # not changed: compared by identity). Not copied by ``dataclasses.replace``
    # (init=False). A STORE on 10,000 changes few: the others' lines are written as they are.
    line: tuple[int, frozenset[str], frozenset[str], str] | None = field(
        default=None, init=False, compare=False, repr=False
    )


@dataclass(frozen=True, slots=True)
class FirstColumns:
    """The records of a list made by one ``assign_columns`` on an empty list (a folder's
    first scan), as the columns they were made from, in UID order (``first`` onwards), all
    with mod-sequence ``modseq`` and no keywords: the state is built from them
    (``first_columns``) without reading 10,000 records back."""

    first: int
    bases: list[str]
    sizes: list[int]
    internaldates: list[int]
    flags: list[frozenset[str]]
    modseq: int


@dataclass
class UidList:
    uidvalidity: int
    uidnext: int = 1
    records: dict[str, UidRecord] = field(default_factory=dict)  # base name -> record
    highestmodseq: int = 1
    # The format of the file this list was read from (1: adopted flags are still to write);
    # part of the header the folder lock's check compares (``header_line``).
    version: int = field(default=2, compare=False)
    # What ``records`` were made from, while they are exactly that (``first_columns``).
    columns: FirstColumns | None = field(default=None, compare=False, repr=False)

    def assign(self, base: str, size: int, internaldate: int, modseq: int = 1) -> UidRecord:
        """Give ``base`` the next UID (RFC 3501: strictly ascending, never reused)."""
        if self.uidnext > MAX_UID:
            raise CorruptUidList("UID space exhausted; UIDVALIDITY must change")
        rec = UidRecord(self.uidnext, size, internaldate, modseq)
        self.records[base] = rec
        self.uidnext += 1
        return rec

    def assign_columns(
        self,
        bases: list[str],
        sizes: Iterable[int],
        internaldates: Iterable[int],
        flags: Iterable[frozenset[str]],
        keywords: Iterable[frozenset[str]],
        modseq: int,
    ) -> None:
        """Give each of ``bases`` the next UID, in list order, with the size, internal date,
        flags and keywords at the same place in the other columns, all with mod-sequence
        ``modseq``; all or none (the UID space is checked first). Columns, not records: a
        first scan of a big folder assigns thousands, and this makes them in one C loop."""
        uid = self.uidnext
        end = uid + len(bases)
        if end - 1 > MAX_UID:
            raise CorruptUidList("UID space exhausted; UIDVALIDITY must change")
        uids = range(uid, end)
        made = map(UidRecord, uids, sizes, internaldates, repeat(modseq), flags, keywords)
        self.records.update(zip(bases, made, strict=True))
        self.uidnext = end
        self.columns = None

    def first_columns(self) -> FirstColumns | None:
        """The columns ``records`` were made from (``FirstColumns``) if they still are
        exactly these records: every change to a list moves UIDNEXT (new records) or takes
        a mod-sequence (flags, keywords, expunges: RFC 7162 3.1), and drops none without."""
        cols = self.columns
        if cols is None:
            return None
        n = len(cols.bases)
        if (
            self.uidnext != cols.first + n
            or self.highestmodseq != cols.modseq
            or len(self.records) != n
            or self.version != 2
        ):
            self.columns = None
            return None
        return cols

    def next_modseq(self) -> int:
        """Reserve the mod-sequence of one change (one lock hold = one change, as one STORE
        command must get one value: RFC 7162 3.2)."""
        self.highestmodseq += 1
        return self.highestmodseq


def load(path: Path) -> UidList | None:
    """Read the list; None if there is none, CorruptUidList if it cannot be trusted."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return parse(data)


# Few distinct flag and keyword fields occur in a folder: parse each spelling once.
_flag_fields: dict[bytes, frozenset[str]] = {b"-": _NONE}


def _flags_field(raw: bytes) -> frozenset[str]:
    flags = _flag_fields.get(raw)
    if flags is None:
        text = raw.decode("ascii")
        if not (text.isascii() and text.isalpha()):
            raise ValueError(f"bad flags {raw!r}")
        flags = frozenset(text)
        if len(_flag_fields) > 4096:
            _flag_fields.clear()
            _flag_fields[b"-"] = _NONE
        _flag_fields[raw] = flags
    return flags


def parse(data: bytes) -> UidList:
    lines = data.split(b"\n")
    header = lines[0].split(b" ")
    if len(header) < 2 or header[0] != MAGIC:
        raise CorruptUidList("bad header")
    if lines[-1] != b"":
        raise CorruptUidList("truncated (no final newline)")
    if header[1] == b"1" and len(header) == 4:
        return _parse_v1(header, lines)
    if header[1] != VERSION or len(header) != 5 or len(lines) < 3 or lines[1][:1] != b"K":
        raise CorruptUidList("bad header")
    try:
        uidvalidity, uidnext, highest = int(header[2]), int(header[3]), int(header[4])
        table = [w.decode("ascii") for w in lines[1].split(b" ")[1:]]
        kw_fields: dict[bytes, frozenset[str]] = {b"-": _NONE}
        flags_field = _flags_field
        records: dict[str, UidRecord] = {}
        last_uid = 0
        for line in lines[2:-1]:
            uid_s, size_s, date_s, mod_s, flags_s, kw_s, base = line.split(b" ", 6)
            uid = int(uid_s)
            # Records are written in UID order; anything else means damage.
            if uid <= last_uid or not base:
                raise CorruptUidList(f"bad record for uid {uid}")
            last_uid = uid
            kws = kw_fields.get(kw_s)
            if kws is None:
                kws = kw_fields[kw_s] = frozenset(table[int(i)] for i in kw_s.split(b","))
            modseq = int(mod_s)
            if not 0 < modseq <= highest:
                raise CorruptUidList(f"bad mod-sequence for uid {uid}")
            records[os.fsdecode(base)] = UidRecord(
                uid, int(size_s), int(date_s), modseq, flags_field(flags_s), kws
            )
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise CorruptUidList(f"bad record: {e}") from None
    if not (0 < uidvalidity <= MAX_UID) or uidnext <= last_uid or not 0 < highest <= MAX_MODSEQ:
        raise CorruptUidList("bad UIDVALIDITY, UIDNEXT or HIGHESTMODSEQ")
    return UidList(uidvalidity, uidnext, records, highest)


def _parse_v1(header: list[bytes], lines: list[bytes]) -> UidList:
    try:
        uidvalidity, uidnext = int(header[2]), int(header[3])
        records: dict[str, UidRecord] = {}
        last_uid = 0
        for line in lines[1:-1]:
            uid_s, size_s, date_s, base = line.split(b" ", 3)
            uid = int(uid_s)
            if uid <= last_uid or not base:
                raise CorruptUidList(f"bad record for uid {uid}")
            last_uid = uid
            records[os.fsdecode(base)] = UidRecord(uid, int(size_s), int(date_s))
    except ValueError as e:
        raise CorruptUidList(f"bad record: {e}") from None
    if not (0 < uidvalidity <= MAX_UID) or uidnext <= last_uid:
        raise CorruptUidList("bad UIDVALIDITY or UIDNEXT")
    return UidList(uidvalidity, uidnext, records, 1, version=1)


def render_records(
    uids: range,
    sizes: list[int],
    internaldates: list[int],
    modseq: int,
    flags: list[frozenset[str]],
    bases: list[str],
) -> list[str]:
    """The record lines ``serialise`` writes for records without keywords given as columns
    (``UidList.assign_columns`` of a list that had none): a folder's first scan renders them
    from its columns, several times faster than from 10,000 record objects."""
    fields = {f: "".join(sorted(f)) or "-" for f in set(flags)}
    return [
        f"{uid} {size} {date} {modseq} {flag_field} - {base}\n"
        for uid, size, date, flag_field, base in zip(
            uids, sizes, internaldates, map(fields.__getitem__, flags), bases, strict=True
        )
    ]


def serialise(lst: UidList, records: list[str] | None = None) -> bytes:
    """Version 2. Records whose flags are still unknown (read from version 1 and not seen by a
    scan since) are written with ``-`` and the caller must have filled them in first.
    ``records``: the record lines, when the caller has them already (``render_records`` of
    exactly ``lst.records``, none with keywords)."""
    if records is not None:
        cols = lst.first_columns()
        if cols is not None and len(records) == len(cols.bases):
            # A first list: every record has known flags, no keywords and the columns'
            # mod-sequence; their lines cached for the next write in one C loop.
            kept = lst.records.values()
            made = zip(repeat(cols.modseq), cols.flags, map(_keywords_of, kept), records)
            deque(map(setattr, kept, repeat("line"), made), 0)
        elif len(records) == len(lst.records):
            # (exactly this list's lines, in order, none with keywords: the next write's)
            for r, line in zip(lst.records.values(), records, strict=True):
                if r.flags is not None and not r.keywords:
                    r.line = (r.modseq, r.flags, r.keywords, line)
        return os.fsencode("".join([_header(lst, ()), *records]))
    recs = lst.records
    uids = list(map(_uid_of, recs.values()))
    if uids != sorted(uids):  # (one C pass over a sorted list; int.__lt__ calls cost 5x)
        # Kept in UID order by parse() and assign_columns(); never trust it.
        recs = dict(sorted(recs.items(), key=lambda kv: kv[1].uid))
    # The flag and keyword fields are spelled once per distinct set (a folder has few), then
    # looked up; the keyword table in first appearance order: the same list, the same bytes.
    index: dict[str, int] = {}
    kw_fields: dict[frozenset[str], str] = {_NONE: "-"}
    for kws in dict.fromkeys(map(_keywords_of, recs.values())):
        if kws not in kw_fields:
            ids = []
            for k in sorted(kws):
                i = index.get(k)
                if i is None:
                    i = index[k] = len(index)
                ids.append(str(i))
            kw_fields[kws] = ",".join(ids)
    flag_fields: dict[frozenset[str] | None, str] = {_NONE: "-", None: "-"}
    head = _header(lst, index)
    # The line written last time for each record that did not change since (most of a big
    # folder's: a write changes few); else one f-string, its first three fields rendered once
    # in the record's life. One encode for all: the base names as os.fsencode() gives them.

    def render(base: str, r: UidRecord) -> str:
        flags, kws = r.flags, r.keywords
        field_ = flag_fields.get(flags)
        if field_ is None:
            field_ = flag_fields[flags] = "".join(sorted(flags))  # type: ignore[arg-type]
        line = f"{r.head or _head(r)} {r.modseq} {field_} {kw_fields[kws]} {base}\n"
        if not kws and flags is not None:  # (keywords' indexes depend on the table)
            r.line = (r.modseq, flags, kws, line)
        return line

    lines = [
        c[3]
        if (c := r.line) is not None and c[0] == r.modseq and c[1] is r.flags and c[2] is r.keywords
        else render(base, r)
        for base, r in recs.items()
    ]
    lines.insert(0, head)
    return os.fsencode("".join(lines))  # (one big copy less than header + encoded records)


HEADER_MAX = 128  # > len("mailhub-uidlist 2 <10 digits> <10 digits> <19 digits>\n")


def header_line(lst: UidList) -> bytes:
    """The first line of the file ``lst`` was read from or written as (no newline)."""
    if lst.version == 1:
        return b"%s 1 %d %d" % (MAGIC, lst.uidvalidity, lst.uidnext)
    return b"%s %s %d %d %d" % (MAGIC, VERSION, lst.uidvalidity, lst.uidnext, lst.highestmodseq)


def read_header(path: str) -> bytes | None:
    """The file's first line (no newline) from one small pread; None if the file is missing
    or its first line is not within ``HEADER_MAX`` bytes (not a list this process wrote)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        head = os.pread(fd, HEADER_MAX, 0)
    finally:
        os.close(fd)
    line, newline, _ = head.partition(b"\n")
    return line if newline else None


def _header(lst: UidList, keywords: Iterable[str]) -> str:
    """The first two lines (keywords are ASCII atoms)."""
    magic, version = MAGIC.decode(), VERSION.decode()
    return (
        f"{magic} {version} {lst.uidvalidity} {lst.uidnext} {lst.highestmodseq}\n"
        + " ".join(["K", *keywords])
        + "\n"
    )


def _head(rec: UidRecord) -> str:
    text = rec.head = f"{rec.uid} {rec.size} {rec.internaldate}"
    return text


_uid_of = attrgetter("uid")
_keywords_of = attrgetter("keywords")


def save(
    path: Path, lst: UidList, hostname: str = "localhost", records: list[str] | None = None
) -> None:
    atomic_write(path, serialise(lst, records), hostname)
