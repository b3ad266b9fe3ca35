"""The persistent per-folder UID list, ``mailhub-uidlist`` (Dovecot keeps ``dovecot-uidlist``).

IMAP needs UIDs that stay the same across sessions and restarts (RFC 3501 2.3.1.1), and a
UIDVALIDITY that changes only when they could not be kept. Maildir has no UIDs, so each folder
keeps a list from the message *base name* (the file name before ``:2,``, which survives flag
changes and the new/ -> cur/ move) to its UID, plus the size and internal date so FETCH needs no
stat().

Format (text, one record a line, base name last because it may contain spaces)::

    mailhub-uidlist 1 <uidvalidity> <uidnext>
    <uid> <size> <internaldate> <base>

The file is always replaced atomically (temp -> fsync -> rename -> fsync dir) by a holder of the
folder's dotlock (see ``maildir.Folder``); readers without the lock see the old or the new list.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mailhub.store.errors import CorruptUidList
from mailhub.store.safeio import atomic_write

FILENAME = "mailhub-uidlist"
LOCKNAME = FILENAME + ".lock"
MAGIC = b"mailhub-uidlist"
VERSION = b"1"
MAX_UID = 2**32 - 1  # RFC 3501: UIDs and UIDVALIDITY are non-zero 32-bit numbers


@dataclass(slots=True)
class UidRecord:
    uid: int
    size: int
    internaldate: int  # seconds since the epoch (IMAP INTERNALDATE has second precision)


@dataclass
class UidList:
    uidvalidity: int
    uidnext: int = 1
    records: dict[str, UidRecord] = field(default_factory=dict)  # base name -> record

    def assign(self, base: str, size: int, internaldate: int) -> UidRecord:
        """Give ``base`` the next UID (RFC 3501: strictly ascending, never reused)."""
        if self.uidnext > MAX_UID:
            raise CorruptUidList("UID space exhausted; UIDVALIDITY must change")
        rec = UidRecord(self.uidnext, size, internaldate)
        self.records[base] = rec
        self.uidnext += 1
        return rec


def load(path: Path) -> UidList | None:
    """Read the list; None if there is none, CorruptUidList if it cannot be trusted."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return parse(data)


def parse(data: bytes) -> UidList:
    lines = data.split(b"\n")
    header = lines[0].split(b" ")
    if len(header) != 4 or header[0] != MAGIC or header[1] != VERSION:
        raise CorruptUidList("bad header")
    if lines[-1] != b"":
        raise CorruptUidList("truncated (no final newline)")
    try:
        uidvalidity, uidnext = int(header[2]), int(header[3])
        records: dict[str, UidRecord] = {}
        last_uid = 0
        for line in lines[1:-1]:
            uid_s, size_s, date_s, base = line.split(b" ", 3)
            uid = int(uid_s)
            # Records are written in UID order; anything else means damage.
            if uid <= last_uid or not base:
                raise CorruptUidList(f"bad record for uid {uid}")
            last_uid = uid
            records[os.fsdecode(base)] = UidRecord(uid, int(size_s), int(date_s))
    except ValueError as e:
        raise CorruptUidList(f"bad record: {e}") from None
    if not (0 < uidvalidity <= MAX_UID) or uidnext <= last_uid:
        raise CorruptUidList("bad UIDVALIDITY or UIDNEXT")
    return UidList(uidvalidity, uidnext, records)


def serialise(lst: UidList) -> bytes:
    out = [b"%s %s %d %d\n" % (MAGIC, VERSION, lst.uidvalidity, lst.uidnext)]
    recs = sorted(lst.records.items(), key=lambda kv: kv[1].uid)
    out.extend(
        b"%d %d %d %s\n" % (r.uid, r.size, r.internaldate, os.fsencode(base)) for base, r in recs
    )
    return b"".join(out)


def save(path: Path, lst: UidList, hostname: str = "localhost") -> None:
    atomic_write(path, serialise(lst), hostname)
