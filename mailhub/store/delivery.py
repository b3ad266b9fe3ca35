"""Durable delivery into Maildir INBOXes with group commit.

Per message, following https://cr.yp.to/proto/maildir.html:

1. ``open()`` (reactor thread): pick the unique name ``tmp/<unique>`` in the first target
   mailbox (created on first delivery) and start the body with ``Return-Path:`` (RFC 5321 4.4:
   the final delivery agent records the reverse-path).
2. ``write()`` (reactor thread): append to an in-memory buffer; every ``flush_size`` bytes it
   goes to the tmp file (created then) with os.write(), so small SMTP chunks cost no syscall.
3. ``commit()``: one hop into the ``GroupCommitter``'s thread pool, which creates the tmp file
   if the message was small, writes the rest, fsyncs the file, link()s it as
   ``new/<unique>,S=<size>`` into each distinct target mailbox, unlinks the tmp name and then
   waits for the *group* fsync of the new/ directories. The Deferred fires with the queue id
   only then: every copy is on disk and visible.

Group commit: link() and rename() are durable only once their directory is fsync'd. Instead of
one directory fsync per message, commits that finish their file fsync while a directory-fsync
batch is in flight join the next batch, and each distinct directory is fsync'd once per batch
(leader/follower inside the pool threads: the first waiter does the fsyncs for everyone). File
fsyncs run in parallel in the pool, which lets the file system merge journal commits.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailhub.envelope import Envelope
from mailhub.interfaces import DeliveryError, IIncomingMessage, IMessageSink
from mailhub.store import names
from mailhub.store.errors import InvalidName
from mailhub.store.maildir import STALE_TMP_AGE
from mailhub.store.store import MailStore

log = Logger()
T = TypeVar("T")

# errno values that will not get better by trying again later (answered with 5xx).
_PERMANENT_ERRNOS = frozenset({errno.EFBIG})


def _delivery_error(what: str, e: OSError) -> DeliveryError:
    return DeliveryError(f"{what}: {e.strerror or e}", permanent=e.errno in _PERMANENT_ERRNOS)


class _Batch:
    __slots__ = ("dirs", "done", "failures")

    def __init__(self) -> None:
        self.dirs: set[str] = set()
        self.done = False
        self.failures: dict[str, OSError] = {}


class GroupCommitter(Service):
    """A thread pool for fsync work plus batched directory fsyncs. Add it to the MultiService
    before the listeners, so it is started before and stopped after them.

    ``run(f, *args)`` runs ``f`` in the pool and returns a Deferred. Inside ``f``,
    ``sync_dirs(dirs)`` blocks until every directory has been fsync'd by a batch that started
    after the call, sharing that work with every other concurrent caller.
    """

    def __init__(self, reactor: IReactorFromThreads | None = None, threads: int = 16) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor  # type: ignore[assignment]
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=threads, name="mailhub-store-fsync")
        self._cond = threading.Condition()
        self._collecting = _Batch()
        self._leading = False
        self._inflight = 0
        self._drained: defer.Deferred[None] | None = None
        # Counters for tests and metrics (written under the condition's lock).
        self.batches = 0
        self.dir_fsyncs = 0

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> defer.Deferred[None]:
        """Wait for commits in flight, then stop the threads."""
        if not self.running:
            return defer.succeed(None)
        super().stopService()
        d: defer.Deferred[None]
        if self._inflight:
            self._drained = d = defer.Deferred()
        else:
            d = defer.succeed(None)

        def stop(_: object) -> None:
            self._pool.stop()

        return d.addCallback(stop)

    def run(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Run ``f(*args)`` in the pool (reactor thread only)."""
        if not self.running:
            return defer.fail(DeliveryError("message store is not running"))
        self._inflight += 1
        d = threads.deferToThreadPool(self._reactor, self._pool, f, *args)  # type: ignore[arg-type]

        def done(result: T | Failure) -> T | Failure:
            self._inflight -= 1
            if not self._inflight and self._drained is not None:
                drained, self._drained = self._drained, None
                drained.callback(None)
            return result

        return d.addBoth(done)

    def sync_dirs(self, dirs: Iterable[str]) -> None:
        """fsync each of ``dirs`` (pool threads only); raises the OSError of a failed one."""
        mine = set(dirs)
        with self._cond:
            batch = self._collecting
            batch.dirs |= mine
            while not batch.done:
                if self._leading:
                    self._cond.wait()
                    continue
                # Lead: take everything collected so far; later arrivals form the next batch.
                self._leading = True
                current, self._collecting = self._collecting, _Batch()
                self._cond.release()
                try:
                    failures = self._fsync_all(current.dirs)
                finally:
                    self._cond.acquire()
                current.failures = failures
                current.done = True
                self._leading = False
                self.batches += 1
                self.dir_fsyncs += len(current.dirs)
                self._cond.notify_all()
        for d in mine:
            if d in batch.failures:
                raise batch.failures[d]

    @staticmethod
    def _fsync_all(dirs: Iterable[str]) -> dict[str, OSError]:
        failures: dict[str, OSError] = {}
        for d in dirs:
            try:
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                failures[d] = e
            except Exception as e:  # never leave the followers waiting on a dead leader
                failures[d] = OSError(errno.EIO, f"directory fsync failed: {e!r}")
        return failures


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _copy_across(src: str, new_dir: str, name: str) -> str:
    """link() fails across file systems (EXDEV): write a copy via that mailbox's tmp/."""
    tmp = f"{os.path.dirname(new_dir)}/tmp/{name}"
    dest = f"{new_dir}/{name}"
    with open(src, "rb") as f:
        data = f.read()
    fd = _create_tmp(tmp)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, dest)
    finally:
        _unlink_quietly(tmp)
    return dest


def _create_tmp(path: str) -> int:
    # O_EXCL: the unique name must really be new (maildir.html: "if the file exists, wait").
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    finally:
        view.release()


def _finish_in_thread(
    committer: GroupCommitter,
    fd: int | None,
    tmp: str,
    tail: bytearray,
    name: str,
    new_dirs: list[str],
) -> None:
    """The pool-thread half of commit(): write, fsync, link into every new/, group-fsync."""
    linked: list[str] = []
    try:
        if fd is None:
            fd = _create_tmp(tmp)
        try:
            _write_all(fd, tail)
            os.fsync(fd)  # the data, before any name in new/ points at it (maildir.html)
        finally:
            os.close(fd)
        for new_dir in new_dirs:
            dest = f"{new_dir}/{name}"
            try:
                # link(), not rename(): never overwrites, and one inode serves every copy.
                os.link(tmp, dest)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                dest = _copy_across(tmp, new_dir, name)
            linked.append(dest)
        os.unlink(tmp)
        committer.sync_dirs(new_dirs)
    except OSError as e:
        for path in linked:  # a failed delivery leaves nothing in new/
            _unlink_quietly(path)
        _unlink_quietly(tmp)
        raise _delivery_error("could not store the message", e) from e


@implementer(IIncomingMessage)
class MaildirMessage:
    """One message on its way into the Maildir store (see the module docstring).

    The tmp file is created lazily: at the first flush for a big message, otherwise in the
    pool thread at commit. Creating it on the reactor thread cost 0.6-0.8 ms per message under
    fsync load (ext4: the tmp/ directory lock and journal handle are contended by the pool's
    unlinks and fsyncs), most of the reactor's budget at 1000 msg/s.
    """

    def __init__(
        self,
        envelope: Envelope,
        sink: MaildirSink,
        tmp: str,
        base: str,
        new_dirs: list[str],
        header: bytes,
    ) -> None:
        self.envelope = envelope
        self._sink = sink
        self._fd: int | None = None
        self._tmp = tmp
        self._base = base
        self._new_dirs = new_dirs
        self._buf = bytearray(header)
        self._size = len(header)
        self._state = "open"  # open -> committing -> committed | failed | aborted

    def write(self, data: bytes) -> None:
        if self._state != "open":
            raise DeliveryError(f"message is {self._state}, cannot write")
        self._buf += data
        self._size += len(data)
        if len(self._buf) >= self._sink.flush_size:
            self._flush()

    def _flush(self) -> None:
        try:
            if self._fd is None:
                self._fd = _create_tmp(self._tmp)
            _write_all(self._fd, self._buf)
        except OSError as e:
            self._cleanup("failed")
            self._sink.forget(self.envelope)
            raise _delivery_error("could not write the message", e) from e
        self._buf.clear()

    def commit(self) -> defer.Deferred[str]:
        if self._state != "open":
            return defer.fail(DeliveryError(f"message is {self._state}, cannot commit"))
        committer = self._sink.committer
        if not committer.running:
            self._cleanup("failed")
            return defer.fail(DeliveryError("message store is not running"))
        self._state = "committing"
        name = names.with_size(self._base, self._size)
        d = committer.run(
            _finish_in_thread, committer, self._fd, self._tmp, self._buf, name, self._new_dirs
        )
        self._fd = None  # the pool thread owns (and closes) it now
        self._buf = bytearray()

        def ok(_: None) -> str:
            self._state = "committed"
            return self.envelope.queue_id

        def failed(f: Failure) -> Failure:
            self._state = "failed"
            self._sink.forget(self.envelope)
            if not f.check(DeliveryError):
                log.failure("delivery of {qid} failed", f, qid=self.envelope.queue_id)
                return Failure(DeliveryError(f"could not store the message: {f.value}"))
            return f

        return d.addCallbacks(ok, failed)

    def abort(self) -> None:
        """Drop the message. After commit() was called it is too late: the commit finishes."""
        if self._state == "open":
            self._cleanup("aborted")

    def _cleanup(self, state: str) -> None:
        self._state = state
        self._buf = bytearray()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass
            _unlink_quietly(self._tmp)


@implementer(IMessageSink)
class MaildirSink:
    """``IMessageSink`` that delivers each accepted message to the INBOX of every distinct
    ``envelope.mailboxes`` entry, creating mailboxes on first delivery.

    ``flush_size``: bytes buffered in memory before they go to the tmp file (per message).
    """

    def __init__(
        self, store: MailStore, committer: GroupCommitter, flush_size: int = 256 * 1024
    ) -> None:
        self.store = store
        self.committer = committer
        self.flush_size = flush_size

    def open(self, envelope: Envelope) -> MaildirMessage:
        mailboxes = envelope.mailboxes
        if not mailboxes:
            raise DeliveryError("no recipients", permanent=True)
        if any(c in envelope.mail_from for c in "\r\n\0"):
            raise DeliveryError("reverse-path cannot be written as a header", permanent=True)
        try:
            dirs = [self.store.delivery_dirs(mb) for mb in mailboxes]
        except InvalidName as e:
            raise DeliveryError(f"bad mailbox name: {e}", permanent=True) from e
        except OSError as e:
            raise _delivery_error("could not create the mailbox", e) from e
        base = names.unique_name(self.store.hostname, self.store.settings.now)
        header = f"Return-Path: <{envelope.mail_from}>\r\n".encode()
        return MaildirMessage(
            envelope, self, f"{dirs[0][0]}/{base}", base, [new for _, new in dirs], header
        )

    def forget(self, envelope: Envelope) -> None:
        """After a failure, re-check the mailboxes next time (one may have been removed)."""
        for mb in envelope.mailboxes:
            self.store.forget_delivery_dirs(mb)


class StaleTmpCleaner(TimerService):
    """Removes stale tmp/ files (maildir.html: 36 hours) at start and every ``interval``
    seconds, in a thread, because it walks the whole tree."""

    def __init__(
        self, store: MailStore, interval: float = 3600.0, max_age: float = STALE_TMP_AGE
    ) -> None:
        super().__init__(interval, self._clean)
        self._store = store
        self._max_age = max_age

    def _clean(self) -> defer.Deferred[int]:
        d = threads.deferToThread(self._store.clean_stale_tmp, self._max_age)
        d.addErrback(lambda f: log.failure("cleaning stale tmp files failed", f))
        return d
