"""One POP3 session per mailbox at a time, across sessions and processes.

RFC 1939 3 ("the POP3 server then acquires an exclusive-access lock on the maildrop") and
RFC 2449 8.1.2 (``[IN-USE]`` when the lock cannot be had). IMAP sessions and deliveries never take
this lock: they may run beside a POP3 session, which keeps its snapshot.

The lock is ``flock(2)`` on a file in the mailbox directory, not a dotlock: the kernel drops it
when its holder closes the file or dies, so a crashed process leaves no stale lock to time out,
and a long session needs no heartbeat. ``flock`` locks belong to an open file description, so two
sessions of one process conflict exactly as two processes do. On Linux NFS clients ``flock`` is
mapped to POSIX byte-range locks, which the NFS server arbitrates between nodes.

The file is never removed: unlinking a lock file that others may have open is the classic race
(a waiter would lock the unlinked inode while a newcomer locks a new one).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILENAME = "mailhub-pop3.lock"


class MailboxBusy(Exception):
    """Another POP3 session holds the mailbox."""


class SessionLock:
    """An exclusive, non-blocking lock on ``path``. ``acquire`` raises MailboxBusy when taken."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this SessionLock")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MailboxBusy(f"{self.path} is locked") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        # Who holds it, for whoever looks at a busy mailbox (the lock is the flock, not this).
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor of the description drops the flock
