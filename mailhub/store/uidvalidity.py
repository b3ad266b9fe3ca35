"""The highest UIDVALIDITY handed out in one user's Maildir, ``<root>/mailhub-uidvalidity``.

RFC 3501 2.3.1.1: when a mailbox's UIDs cannot be kept - it was deleted and created again, or
renamed away and a new one took its name - its UIDVALIDITY MUST be greater than before, or a
client that cached UID 1 shows the wrong message. A value taken from the clock cannot promise
that (DELETE, CREATE and APPEND fit in one second), so every new folder's UID list takes its
UIDVALIDITY from here: one more than the highest ever handed out for this user (or the clock's
seconds, if greater), kept in one small file in the Maildir root (Dovecot keeps
``dovecot-uidvalidity`` for the same reason).

The file is replaced atomically and fsync'd (``safeio.atomic_write``) under its own dotlock,
so processes and nodes sharing the tree never hand out the same value. The lock is held for
one read and one small write. It is only taken when a folder gets its first UID list (while
that folder's lock is held: always in this order, so two never wait on each other).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from twisted.logger import Logger

from mailhub.safeio import atomic_write
from mailhub.store import names, uidlist
from mailhub.store.dotlock import DotLock

log = Logger()

FILENAME = "mailhub-uidvalidity"
LOCKNAME = FILENAME + ".lock"


def reserve(
    root: Path,
    *,
    floor: int = 0,
    now: Callable[[], float],
    lock: Callable[[Path], DotLock],
    hostname: str,
    root_synced_later: bool = False,
) -> int:
    """A new UIDVALIDITY for a folder of the Maildir at ``root``: greater than any this
    returned before for ``root`` and than ``floor``; at least the clock's seconds. Durable
    before it returns. ``lock(path)`` makes the dotlock (the store's timeouts).

    ``root_synced_later``: the caller fsyncs ``root`` itself before the value can reach a
    client (INBOX: its UID list, in ``root``, is written next with a directory fsync, which
    makes this file's rename durable too). Only the file's data is fsync'd here: a crash
    before that fsync loses a value nobody was told (the old file, or none, is found)."""
    path = root / FILENAME
    with lock(root / LOCKNAME):
        highest = _load(path)
        if highest is None:
            # First use (or the file was lost): the folders already there know what was
            # handed out before, by this code or by the clock alone.
            highest = _highest_in_lists(root)
        value = max(highest + 1, int(now()), floor + 1)
        if value > uidlist.MAX_UID:
            # (Only if the clock passed 2106 or a value was forced that high: start over.)
            log.warn("UIDVALIDITY space of {root} exhausted; wrapping", root=str(root))
            value = 1
        atomic_write(path, b"%d\n" % value, hostname, sync_dir=not root_synced_later)
    return value


def _load(path: Path) -> int | None:
    try:
        with open(path, "rb") as f:
            text = f.read(64)
    except FileNotFoundError:
        return None
    try:
        value = int(text)
    except ValueError:
        log.warn("{path} is corrupt; rebuilding it from the folders", path=str(path))
        return None
    return value if 0 < value <= uidlist.MAX_UID else None


def _highest_in_lists(root: Path) -> int:
    """The greatest UIDVALIDITY in the UID lists of INBOX and the folders under ``root``."""
    highest = 0
    dirs = [root]
    try:
        with os.scandir(root) as it:
            dirs += [Path(de.path) for de in it if names.folder_from_dirname(de.name) is not None]
    except FileNotFoundError:
        return 0
    for d in dirs:
        try:
            with open(d / uidlist.FILENAME, "rb") as f:
                header = f.readline().split(b" ")
        except (FileNotFoundError, NotADirectoryError):
            continue
        if len(header) >= 3 and header[0] == uidlist.MAGIC and header[2].isdigit():
            highest = max(highest, int(header[2]))
    return highest
