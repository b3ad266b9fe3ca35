"""A link()-based dotlock that works on NFS and CephFS (several mailhub nodes, one tree).

``O_EXCL`` is not reliable over NFSv2/v3 and ``flock``/``fcntl`` locks are not reliably shared
between clients, so we use the classic NFS-safe recipe (open(2) "O_EXCL" notes, liblockfile):

1. create a file with a name unique to this host, process and attempt;
2. ``link()`` it to ``<name>.lock``;
3. the lock is ours if link() succeeded, or - because an NFS reply can be lost after the server
   did the work - if the unique file's ``st_nlink`` is now 2;
4. otherwise retry with short sleeps, breaking the lock if its mtime is older than
   ``stale_after`` (its holder died), and give up with ``LockTimeout`` after ``timeout``.

Breaking is done by renaming the stale lock aside and checking it is the same file (mtime and
content, which holds a nonce) we judged stale, so two processes breaking the same stale lock
cannot remove a fresh one. Holders keep the lock briefly (milliseconds); ``stale_after`` is
orders of magnitude longer.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from twisted.logger import Logger

from mailhub.store.errors import LockTimeout

log = Logger()
_attempts = itertools.count(1)


class DotLock:
    """An exclusive lock represented by the file ``path`` (conventionally ``<name>.lock``).

    Blocking: ``acquire()`` sleeps between attempts (a few milliseconds at first). Use as a
    context manager. Not re-entrant.
    """

    def __init__(
        self,
        path: Path,
        *,
        timeout: float = 10.0,
        stale_after: float = 60.0,
        hostname: str | None = None,
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        min_delay: float = 0.001,
        max_delay: float = 0.05,
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.stale_after = stale_after
        self._hostname = (hostname or socket.gethostname()).replace("/", "_")
        self._now = now
        self._sleep = sleep
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._token: bytes | None = None  # content of the lock file we hold

    @property
    def held(self) -> bool:
        return self._token is not None

    def _unique_path(self) -> Path:
        return self.path.with_name(
            f"{self.path.name}.{self._hostname}.{os.getpid()}."
            f"{threading.get_ident()}.{next(_attempts)}"
        )

    def _try_once(self) -> bool:
        unique = self._unique_path()
        # Who holds it (for whoever debugs a stuck lock) and a nonce: inode numbers are reused
        # at once on ext4, so the content is what tells our lock from a later one.
        token = f"{self._hostname} {os.getpid()} {secrets.token_hex(8)}\n".encode()
        fd = os.open(unique, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, token)
        finally:
            os.close(fd)
        try:
            try:
                os.link(unique, self.path)
            except FileExistsError:
                return False
            except OSError:
                # The NFS case: the reply may be lost although the link was made.
                if os.stat(unique).st_nlink != 2:
                    return False
            self._token = token
            return True
        finally:
            os.unlink(unique)

    @staticmethod
    def _identity(path: Path) -> tuple[float, bytes] | None:
        try:
            st = os.stat(path)
            with open(path, "rb") as f:
                return st.st_mtime, f.read(256)
        except FileNotFoundError:
            return None

    def _break_if_stale(self) -> None:
        seen = self._identity(self.path)
        if seen is None or self._now() - seen[0] <= self.stale_after:
            return
        unique = self._unique_path()
        aside = unique.with_name(unique.name + ".stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # somebody else broke it first
        if self._identity(aside) == seen:
            log.warn(
                "broke stale lock {path} (age {age:.0f}s)",
                path=str(self.path),
                age=self._now() - seen[0],
            )
            os.unlink(aside)
            return
        # We raced another breaker and took a fresh lock aside: put it back if we can.
        try:
            os.link(aside, self.path)
        except OSError:
            log.error("lock {path} was broken twice in a race", path=str(self.path))
        os.unlink(aside)

    def acquire(self) -> None:
        """Take the lock or raise LockTimeout after ``timeout`` seconds."""
        if self._token is not None:
            raise RuntimeError(f"{self.path} is already held by this DotLock")
        deadline = self._now() + self.timeout
        delay = self._min_delay
        while True:
            if self._try_once():
                return
            self._break_if_stale()
            if self._now() >= deadline:
                raise LockTimeout(f"could not lock {self.path} within {self.timeout:g}s")
            self._sleep(delay)
            delay = min(delay * 2, self._max_delay)

    def touch(self) -> None:
        """Refresh the lock's mtime during a long hold, so nobody judges it stale."""
        os.utime(self.path)

    def release(self) -> None:
        """Drop the lock, unless somebody broke it meanwhile (then only log)."""
        token, self._token = self._token, None
        if token is None:
            return
        current = self._identity(self.path)
        if current is None:
            log.warn("lock {path} vanished while held", path=str(self.path))
            return
        if current[1] != token:
            log.warn("lock {path} was taken over while held", path=str(self.path))
            return
        os.unlink(self.path)

    def __enter__(self) -> DotLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
