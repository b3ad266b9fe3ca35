"""The queue directory on disk (chasquid's queue layout, with JSON instead of protobuf).

Layout under the queue directory (``DATA/queue``)::

    <id>.msg             the body, exactly the bytes the receiver wrote (Received: + message)
    <id>.json            envelope + per-recipient state (mailhub.queue.record), the truth
    *.tmp                files being written; stale ones (dead process) are removed
    control/*.json       operator requests (retry, delete) for the running server
    corrupt/             records that did not parse, kept for a human to look at
    lock                 flock()ed by the running Queue service for its lifetime

Durability (why each step): a new message's body is written and fsync'd, then its JSON is
written to a tmp name and fsync'd, both are renamed to their final names and the directory is
fsync'd (a rename is durable only once its directory is). Only then does enqueue report
success, so "250" is never said for a message a crash could lose. State updates after an
attempt replace ``<id>.json`` the same way (tmp, fsync, rename, fsync dir). A ``<id>.json``
is only ever renamed into place after its ``<id>.msg`` exists, so on start every JSON has a
body; a body without JSON is a commit that never finished (its client got no 250) and is
removed once it is older than ``STALE_AGE``.

Directory fsyncs are batched (``DirSyncer``): all messages live in one directory, so threads
that finished their renames while another thread's directory fsync was running share the next
one instead of paying one each.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from mailhub.queue.record import QUEUE_ID, CorruptRecord, QueueRecord
from mailhub.safeio import fsync_dir, remove_if_exists, unique_name, write_all

log = Logger()
T = TypeVar("T")

STALE_AGE = 15 * 60.0  # seconds before an orphaned body or tmp file is surely abandoned
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class QueueLocked(Exception):
    """Another process (a running mailhub) holds the queue lock."""


class DirSyncer:
    """Group commit for one directory's fsync, called from worker threads.

    ``sync()`` returns once an fsync of the directory that *started after the call* has
    finished, so every rename the caller made before calling is durable. Callers arriving while
    an fsync runs wait for the next one, which one of them leads for all; the number of fsyncs
    is at most about one per arrival wave, not one per message.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._requested = 0
        self._done = 0
        self._running = False
        self.fsyncs = 0  # for tests and metrics

    def sync(self) -> None:
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while self._done < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                target = self._requested
                self._cond.release()
                ok = False
                try:
                    fsync_dir(self.path)
                    ok = True
                finally:
                    self._cond.acquire()
                    self._running = False
                    if ok:
                        self._done = max(self._done, target)
                        self.fsyncs += 1
                    # On failure the leader raises; a waiter retries as the next leader.
                    self._cond.notify_all()


class ThreadedIO:
    """Disk work off the reactor thread: a small pool of its own (fsync blocks for ms)."""

    def __init__(self, reactor: IReactorFromThreads | None = None, threads: int = 4) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = cast(IReactorFromThreads, default_reactor)  # the installed reactor
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=threads, name="mailhub-queue-io")

    def start(self) -> None:
        self._pool.start()

    def stop(self) -> None:
        if self._pool.joined:  # stopping a stopped service is not an error
            return
        self._pool.stop()  # joins: work in flight finishes first

    def run(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return threads.deferToThreadPool(self._reactor, self._pool, f, *args)


class InlineIO:
    """Runs disk work at once on the calling thread: for tests with task.Clock, and tools."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return defer.maybeDeferred(f, *args)


class Spool:
    """File-level operations on the queue directory. Blocking: call from a worker thread
    (``io.run``) on the server, directly from tools and tests."""

    def __init__(self, directory: str | os.PathLike[str], hostname: str = "localhost") -> None:
        self.path = Path(directory)
        self._path_text = str(self.path)
        self.control = self.path / "control"
        self.corrupt = self.path / "corrupt"
        self.hostname = hostname
        self.dirsync = DirSyncer(self.path)
        self._lock_fd: int | None = None

    # --- names ---------------------------------------------------------------------------

    def body_path(self, qid: str) -> Path:
        return self.path / f"{qid}.msg"

    def json_path(self, qid: str) -> Path:
        return self.path / f"{qid}.json"

    def tmp_path(self, qid: str, what: str) -> Path:
        return self.path / f"{qid}.{what}.{unique_name(self.hostname)}.tmp"

    def exists(self, qid: str) -> bool:
        return self.json_path(qid).exists() or self.body_path(qid).exists()

    def record_exists(self, qid: str) -> bool:
        """Whether a message (its record) has this id: one stat, no Path objects (it is asked
        for every incoming message, on the reactor thread). A body without a record is an
        orphan that ``clean`` removes; a new message may replace it."""
        return os.path.exists(f"{self._path_text}/{qid}.json")

    # --- setup and the lock ----------------------------------------------------------------

    def create(self) -> None:
        from mailhub.safeio import makedirs_durable

        for d in (self.path, self.control, self.corrupt):
            makedirs_durable(d)

    def lock(self, timeout: float = 5.0) -> None:
        """Take the server lock, waiting up to ``timeout`` seconds (an operator command may
        hold it for a moment while no server runs); QueueLocked if another process keeps it."""
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise QueueLocked(f"{self.path} is in use by another mailhub process") from None
                time.sleep(0.05)
        self._lock_fd = fd

    def unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing drops the flock

    # --- writing ---------------------------------------------------------------------------

    def commit_new(
        self, record: QueueRecord, body_tmp: Path, fd: int | None, tail: bytes | bytearray
    ) -> int:
        """Worker thread: finish a new message's body, write its record, make both durable.
        Returns the body size. On failure removes everything it made and raises OSError."""
        body = self.body_path(record.id)
        json_tmp = self.tmp_path(record.id, "json")
        made: list[Path] = []
        try:
            if fd is None:
                fd = os.open(body_tmp, _FLAGS, 0o600)
            try:
                if tail:
                    write_all(fd, tail)
                os.fsync(fd)  # the data before any name points at it
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            self._write_synced(json_tmp, record.to_json())
            # Body first: a JSON never names a missing body (see the module docstring).
            os.rename(body_tmp, body)
            made.append(body)
            os.rename(json_tmp, self.json_path(record.id))
            made.append(self.json_path(record.id))
            self.dirsync.sync()
            return size
        except BaseException:
            for p in (body_tmp, json_tmp, *made):
                remove_if_exists(p)
            raise

    def save(self, record: QueueRecord) -> None:
        """Replace ``<id>.json`` atomically and durably."""
        self.save_raw(record.id, record.to_json())

    def save_raw(self, qid: str, data: bytes) -> None:
        """Worker thread: replace ``<id>.json`` with ``data`` (temp, fsync, rename, fsync dir)."""
        tmp = self.tmp_path(qid, "json")
        try:
            self._write_synced(tmp, data)
            os.rename(tmp, self.json_path(qid))
        except BaseException:
            remove_if_exists(tmp)
            raise
        self.dirsync.sync()

    @staticmethod
    def _write_synced(path: Path, data: bytes) -> None:
        fd = os.open(path, _FLAGS, 0o600)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def remove(self, qid: str) -> None:
        """Delete a message: JSON first, so a crash in between leaves an orphaned body (cleaned
        later), never a record without its body. No directory fsync: a removal undone by a
        crash only means one more attempt (a duplicate at worst, never a loss)."""
        remove_if_exists(self.json_path(qid))
        remove_if_exists(self.body_path(qid))

    def move_aside(self, qid: str) -> Path:
        """Put a damaged record (and its body) into corrupt/ for a human to look at."""
        self.corrupt.mkdir(exist_ok=True)
        dest = self.corrupt / f"{qid}.json"
        for src, dst in (
            (self.json_path(qid), dest),
            (self.body_path(qid), self.corrupt / f"{qid}.msg"),
        ):
            try:
                os.rename(src, dst)
            except FileNotFoundError:
                pass
        return dest

    # --- reading ---------------------------------------------------------------------------

    def load(self, qid: str) -> QueueRecord:
        """Read one record. FileNotFoundError if gone, CorruptRecord if damaged (or bodiless)."""
        raw = self.json_path(qid).read_bytes()
        record = QueueRecord.from_json(raw, expected_id=qid)
        if not self.body_path(qid).exists():
            raise CorruptRecord("the body file is missing")
        return record

    def read_headers(self, qid: str, limit: int = 64 * 1024) -> bytes:
        """The first ``limit`` bytes of the body (enough for its header, for DSNs)."""
        with open(self.body_path(qid), "rb") as f:
            return f.read(limit)

    def body_size(self, qid: str) -> int:
        try:
            return self.body_path(qid).stat().st_size
        except FileNotFoundError:
            return 0

    def ids(self) -> Iterator[str]:
        """Queue ids of every ``<id>.json`` in the directory (unsorted)."""
        with os.scandir(self.path) as it:
            for entry in it:
                name = entry.name
                if name.endswith(".json") and QUEUE_ID.match(name[:-5]):
                    yield name[:-5]

    def clean(self, max_age: float = STALE_AGE, now: Callable[[], float] = time.time) -> int:
        """Remove abandoned tmp files and bodies without JSON older than ``max_age`` (a commit
        that died before its JSON was renamed: its client never got "250"). Returns the count."""
        limit = now() - max_age
        removed = 0
        with os.scandir(self.path) as it:
            entries = list(it)
        names = {e.name for e in entries}
        for entry in entries:
            name = entry.name
            orphan = name.endswith(".msg") and f"{name[:-4]}.json" not in names
            if not (name.endswith(".tmp") or orphan):
                continue
            try:
                if entry.stat().st_mtime > limit:
                    continue
                os.unlink(entry.path)
                removed += 1
                log.info("queue: removed stale file {name}", name=name)
            except FileNotFoundError:
                pass
        return removed
