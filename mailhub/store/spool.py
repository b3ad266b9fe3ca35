"""What lives in a folder's tmp/: messages being written (``SpoolFile``) and placed durably
into new/ (``Placement``: fsync, link, fsync the directory - maildir.html), the links kept to
expunged messages for readers not told yet (``KEPT_PREFIX``), and the cleaning of stale files.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from twisted.logger import Logger

from mailhub.safeio import fsync_dir, unlink_quietly, write_all
from mailhub.store import dotlock, names

log = Logger()

STALE_TMP_AGE = 36 * 3600  # maildir.html: tmp/ files untouched for 36 hours may be removed
# tmp/<KEPT_PREFIX><pid>.<n>.<host>: a link to an expunged message, kept while a session that
# was not told of the expunge may still read it (Folder.add_reader).
KEPT_PREFIX = "mailhub-kept."
_KEPT_NAME = re.compile(re.escape(KEPT_PREFIX) + r"(\d+)\.\d+\.(.+)\Z")
_kept_counter = itertools.count(1)
_CHUNK = 64 * 1024


def kept_name(hostname: str) -> str:
    """A new name in tmp/ for a kept link, unique to this host and process."""
    host = names.escape_host(hostname)
    return f"{KEPT_PREFIX}{os.getpid()}.{next(_kept_counter)}.{host}"


def _orphan(name: str, host: str) -> bool:
    """A kept link (``KEPT_PREFIX``) made on this host by a process that is gone."""
    m = _KEPT_NAME.match(name)
    if m is None or m.group(2) != host:
        return False
    pid = int(m.group(1))
    return pid != os.getpid() and not dotlock.pid_alive(pid, "")


def clean_stale_tmp(
    maildir: Path,
    now: Callable[[], float] = time.time,
    max_age: float = STALE_TMP_AGE,
    hostname: str | None = None,
) -> int:
    """Remove files in ``maildir/tmp`` older than ``max_age`` (maildir.html: 36 hours).

    "Older" means atime, mtime and ctime are all older: a delivery in progress keeps writing
    (mtime), so it is never removed. With ``hostname``, also the links to expunged messages
    that a process of this host kept (``Folder.expunge``) and that died without removing them
    (a crash). Returns the number of files removed.
    """
    removed = 0
    limit = now() - max_age
    host = None if hostname is None else names.escape_host(hostname)
    try:
        it = os.scandir(maildir / "tmp")
    except FileNotFoundError:
        return 0
    with it:
        for de in it:
            try:
                if not de.is_file(follow_symlinks=False):
                    continue
                if host is not None and de.name.startswith(KEPT_PREFIX) and _orphan(de.name, host):
                    os.unlink(de.path)
                    removed += 1
                    continue
                st = de.stat(follow_symlinks=False)
                if max(st.st_atime, st.st_mtime, st.st_ctime) < limit:
                    os.unlink(de.path)
                    removed += 1
            except FileNotFoundError:
                continue
    if removed:
        log.info("removed {n} stale tmp files in {dir}", n=removed, dir=str(maildir))
    return removed


def _private(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC, 0o600)


class SpoolFile(io.FileIO):
    """A message being written into a folder's tmp/ (``Folder.spool``). Closing it removes it.
    Once it has a placement (``Folder.prepare_spooled``) only the placement closes it: a close
    from the protocol (a lost connection) is then ignored, as a worker may be using the file."""

    def __init__(self, path: str) -> None:
        # "x": O_EXCL, a temporary name must really be new (maildir.html).
        super().__init__(path, "x+b", opener=_private)
        self.path = path
        self.handed_over = False

    def write(self, data: Any) -> int:
        # FileIO.write may be short; a spooled message is written whole or fails.
        write_all(self.fileno(), data)
        return len(data)

    def copy_from(self, src: BinaryIO) -> int:
        """Write ``src`` (from where it is to its end) after what is here; octets copied."""
        size = 0
        buf = bytearray(_CHUNK)
        with memoryview(buf) as view:
            while True:
                n = src.readinto(view) if hasattr(src, "readinto") else None
                if n is None:  # a file object without readinto()
                    chunk = src.read(_CHUNK)
                    n = len(chunk)
                    view[:n] = chunk
                if not n:
                    return size
                write_all(self.fileno(), view[:n])
                size += n

    def close(self) -> None:
        if self.handed_over or self.closed:
            return
        self.discard()

    def discard(self) -> None:
        """Close and remove the tmp name, whoever owns the file."""
        # Placed or not, the tmp name goes: a placed message lives under its link in new/ or cur/.
        try:
            super().close()
        finally:
            unlink_quietly(self.path)


@dataclass
class Placement:
    """A spooled message with its final name: ``place`` makes it durable and visible."""

    spool: SpoolFile
    base: str
    target: str  # new/<base> or cur/<base>:2,<flags>
    when: float  # the internal date

    def place(self, source: BinaryIO | None = None) -> None:
        """Copy ``source`` (if given) into the file, fsync it, date it, link it into new/ or
        cur/, drop the tmp name, fsync the directory. Only file system calls: safe in a worker
        thread. The file is closed (and its tmp name gone) whatever happens."""
        spool = self.spool
        try:
            if source is not None:
                with source:
                    spool.copy_from(source)
            os.fsync(spool.fileno())
            os.utime(spool.path, (self.when, self.when))
            os.link(spool.path, self.target)  # link, not rename: never overwrite (maildir.html)
        finally:
            spool.discard()
        fsync_dir(os.path.dirname(self.target))
