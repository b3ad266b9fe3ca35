"""Durable delivery into Maildir INBOXes with group commit.

Per message, following https://cr.yp.to/proto/maildir.html:

1. ``open()`` (reactor thread): pick the unique name ``tmp/<unique>`` in the first target
   mailbox (created on first delivery) and start the body with ``Return-Path:`` (RFC 5321 4.4:
   the final delivery agent records the reverse-path).
2. ``write()`` (reactor thread): append to an in-memory buffer; every ``flush_size`` bytes it
   goes to the tmp file (created then) with os.write() in a pool thread, one flush at a time
   per message (``mailhub.spooled``), so small SMTP chunks cost no syscall and big messages
   no disk work on the reactor.
3. ``commit()``: one hop into the ``GroupCommitter``'s thread pool, which creates the mailboxes
   seen for the first time, writes the rest and makes the data durable (a small message's
   tmp file is created there with O_DSYNC: one synchronous write instead of write+fsync; a
   flushed one is fsync'd), link()s it as ``new/<unique>,S=<size>`` into each other target
   mailbox and rename()s it into the first one's new/ (link+unlink in one system call). The
   message then joins the next *group* fsync of the new/ directories; its Deferred fires with
   the queue id only after that: every copy is on disk and visible. Each system call in the
   pool releases the GIL and waits to win it back from the reactor thread (up to the 5 ms
   switch interval), so the job makes as few as it can: 4 for a small message.

Group commit: link() and rename() are durable only once their directory is fsync'd. Instead of
one directory fsync per message, messages that finish their file phase while a directory-fsync
batch is in flight join the next batch, and each distinct directory is fsync'd once per batch.
The first pool thread to find no batch running leads: it fsyncs the batch's directories and
loops while more messages have joined; the other threads never wait for it, they go back to
file work. The leader hands each finished batch to the reactor with one callFromThread, so the
reactor wakes once per batch, not once per message. File fsyncs run in parallel in the pool,
which lets the file system merge journal commits.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhub.envelope import Envelope
from mailhub.interfaces import DeliveryError, IIncomingMessage, IMessageSink
from mailhub.safeio import unlink_quietly, write_all, write_new_file
from mailhub.spooled import TMP_FLAGS, SpooledMessage, io_error
from mailhub.store import names
from mailhub.store.errors import InvalidName
from mailhub.store.maildir import STALE_TMP_AGE
from mailhub.store.store import MailStore

log = Logger()
T = TypeVar("T")


class _Commit:
    """One message's commit: built on the reactor thread, worked on by one pool thread, then
    handed back to the reactor (with its batch) to fire ``d``."""

    __slots__ = ("d", "error", "fd", "linked", "name", "new_dirs", "prepare", "tail", "tmp")

    def __init__(
        self,
        fd: int | None,
        tmp: str,
        tail: bytearray,
        name: str,
        new_dirs: list[str],
        prepare: Callable[[], None] | None,
    ) -> None:
        self.fd = fd
        self.tmp = tmp
        self.tail = tail
        self.name = name
        self.new_dirs = new_dirs
        self.prepare = prepare  # creates mailboxes seen for the first time (pool thread)
        self.linked: list[str] = []
        self.error: BaseException | Failure | None = None
        self.d: defer.Deferred[None] | None = None


class _Batch:
    __slots__ = ("dirs", "jobs")

    def __init__(self) -> None:
        self.dirs: set[str] = set()
        self.jobs: list[_Commit] = []


_STOP = object()


class GroupCommitter(Service):
    """Worker threads for fsync work plus batched directory fsyncs. Add it to the MultiService
    before the listeners, so it is started before and stopped after them.

    ``submit(job)`` (used by ``MaildirMessage.commit``) runs one message's file work in a
    worker and returns a Deferred that fires once the message's new/ directories have been
    fsync'd by a batch (see the module docstring). ``run(f, *args)`` runs ``f`` in a worker and
    returns a Deferred. ``run_holding(f, *args)`` does the same in a lane of its own for work
    done while this process holds a folder's lock (the UID-list writes of a command): a job
    in the main lane may be waiting for that very lock (uidwriter.write_list blocks on it), and
    with every main thread so waiting, the holder's next write queued behind them would stall
    until lock_timeout.
    """

    def __init__(
        self,
        reactor: IReactorFromThreads | None = None,
        threads: int = 16,
        holding_threads: int = 2,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = cast(IReactorFromThreads, default_reactor)  # the installed reactor
        self._reactor = reactor
        self._nthreads = threads
        self._nholding = holding_threads
        self._threads: list[tuple[threading.Thread, queue.SimpleQueue[Any]]] = []
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._holding_queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._collecting = _Batch()
        self._leading = False
        self._inflight = 0
        self._drained: defer.Deferred[None] | None = None
        # Counters for tests and metrics (written under the lock).
        self.batches = 0
        self.dir_fsyncs = 0

    def startService(self) -> None:
        super().startService()
        lanes = [
            (self._queue, self._nthreads, "fsync"),
            (self._holding_queue, self._nholding, "held"),
        ]
        for q, count, name in lanes:
            for i in range(count):
                t = threading.Thread(
                    target=self._worker, args=(q,), name=f"mailhub-store-{name}-{i}"
                )
                t.start()
                self._threads.append((t, q))

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
            threads, self._threads = self._threads, []
            for _t, q in threads:
                q.put(_STOP)
            for t, _q in threads:
                t.join()

        return d.addCallback(stop)

    def _worker(self, lane: queue.SimpleQueue[Any]) -> None:
        get = lane.get
        while True:
            item = get()
            if item is _STOP:
                return
            if isinstance(item, _Commit):
                self._work(item)
            else:
                f, args, d = item
                try:
                    result = f(*args)
                except BaseException:
                    self._reactor.callFromThread(self._finish_run, d, Failure())
                else:
                    self._reactor.callFromThread(self._finish_run, d, result)

    def run(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Run ``f(*args)`` in a worker (reactor thread only)."""
        if not self.running:
            return defer.fail(DeliveryError("message store is not running"))
        return self._put(self._queue, f, args)

    def run_holding(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Run ``f(*args)``, which must never wait for a lock, in the lane for work done while
        holding a folder's lock (reactor thread only). Also while stopping: the lock holder's
        command must end with its change on disk (it is answered after it), so its write is
        taken while commits drain, and done here on the reactor once the threads are gone
        (only fsyncs and a rename, no lock to wait for)."""
        if self.running or self._drained is not None:
            return self._put(self._holding_queue, f, args)
        return defer.maybeDeferred(f, *args)

    def _put(
        self, lane: queue.SimpleQueue[Any], f: Callable[..., T], args: Any
    ) -> defer.Deferred[T]:
        self._inflight += 1
        d: defer.Deferred[T] = defer.Deferred()
        lane.put((f, args, d))
        return d

    def _finish_run(self, d: defer.Deferred[Any], result: object) -> None:
        self._inflight -= 1
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
        self._check_drained()

    def submit(self, job: _Commit) -> defer.Deferred[None]:
        """Commit one message (reactor thread only); fires when it is durable everywhere."""
        if not self.running:
            return defer.fail(DeliveryError("message store is not running"))
        self._inflight += 1
        d: defer.Deferred[None] = defer.Deferred()
        job.d = d
        self._queue.put(job)
        return d

    def _work(self, job: _Commit) -> None:
        """Worker thread: the file phase, then join the next directory batch (never waits)."""
        try:
            _write_and_link(job)
        except DeliveryError as e:
            job.error = e
        except BaseException:
            job.error = Failure()
        if job.error is not None:
            self._reactor.callFromThread(self._deliver, [job])
            return
        with self._lock:
            batch = self._collecting
            batch.jobs.append(job)
            batch.dirs.update(job.new_dirs)
            if self._leading:
                return  # the leader takes it with its next batch
            self._leading = True
        self._lead()

    def _lead(self) -> None:
        """fsync the directories of everything collected, hand the batch to the reactor, and
        go on while more has been collected meanwhile."""
        while True:
            with self._lock:
                batch = self._collecting
                if not batch.jobs:
                    self._leading = False
                    return
                self._collecting = _Batch()
            try:
                failures = self._fsync_all(batch.dirs)
                if failures:
                    for job in batch.jobs:
                        for new_dir in job.new_dirs:
                            if new_dir in failures:
                                for path in job.linked:  # a failed delivery leaves nothing in new/
                                    unlink_quietly(path)
                                job.error = io_error(
                                    "could not store the message", failures[new_dir]
                                )
                                break
                with self._lock:
                    self.batches += 1
                    self.dir_fsyncs += len(batch.dirs)
            finally:
                # One wake-up of the reactor for the whole batch.
                self._reactor.callFromThread(self._deliver, batch.jobs)

    def _deliver(self, jobs: list[_Commit]) -> None:
        """Reactor thread: fire the Deferreds of finished commits."""
        self._inflight -= len(jobs)
        for job in jobs:
            d, job.d = job.d, None
            error, job.error = job.error, None
            if d is None:
                continue
            if error is None:
                d.callback(None)
            else:
                d.errback(error)
        self._check_drained()

    def _check_drained(self) -> None:
        if not self._inflight and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

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
            except Exception as e:  # never leave a batch without an answer
                failures[d] = OSError(errno.EIO, f"directory fsync failed: {e!r}")
        return failures


def _copy_across(src: str, new_dir: str, name: str) -> str:
    """link() fails across file systems (EXDEV): write a copy via that mailbox's tmp/."""
    tmp = f"{os.path.dirname(new_dir)}/tmp/{name}"
    dest = f"{new_dir}/{name}"
    with open(src, "rb") as f:
        data = f.read()
    try:
        write_new_file(tmp, data)
        os.link(tmp, dest)
    finally:
        unlink_quietly(tmp)
    return dest


def _link(tmp: str, new_dir: str, name: str) -> str:
    """``tmp`` linked as ``new_dir/name`` (one inode for every copy); across file systems
    (EXDEV: mailboxes on different mounts) a copy. Returns the new path."""
    try:
        os.link(tmp, f"{new_dir}/{name}")
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        return _copy_across(tmp, new_dir, name)
    return f"{new_dir}/{name}"


# A message small enough to reach commit unflushed is written with one synchronous write:
# O_DSYNC makes write() return only once the data and the inode fields needed to read it back
# (size, blocks) are on disk, what fsync() gave in a second system call (POSIX "synchronized
# I/O data integrity completion"; each system call is a GIL round trip in the pool).
SYNC_TMP_FLAGS = TMP_FLAGS | os.O_DSYNC


def _create_tmp(path: str) -> int:
    return os.open(path, SYNC_TMP_FLAGS, 0o600)


def _write_and_link(job: _Commit) -> None:
    """The worker-thread half of commit(): create new mailboxes, write, fsync, link into every
    new/. The directory fsyncs follow in a batch (GroupCommitter._lead)."""
    tmp = job.tmp
    linked = job.linked
    try:
        if job.prepare is not None:
            job.prepare()
        fd = job.fd
        job.fd = None
        # The data is on disk before any name in new/ points at it (maildir.html).
        synced = fd is None and bool(job.tail)
        if fd is None:
            fd = _create_tmp(tmp)  # O_DSYNC: the write below is the fsync
        try:
            if job.tail:
                write_all(fd, job.tail)
            if not synced:
                os.fsync(fd)
        finally:
            os.close(fd)
        name = job.name
        first, *others = job.new_dirs
        for new_dir in others:
            linked.append(_link(tmp, new_dir, name))
        # The first mailbox's own tmp/ -> new/: rename() is link()+unlink() in one system call
        # (what Dovecot does). It would replace an existing name, but the base name is unique
        # (host, pid, counter: safeio.unique_name) and ",S=<size>" is ours, so none exists.
        # tmp/ and new/ are siblings in one Maildir, so on one file system (no EXDEV copy).
        dest = f"{first}/{name}"
        os.rename(tmp, dest)
        linked.append(dest)
    except OSError as e:
        for path in linked:  # a failed delivery leaves nothing in new/
            unlink_quietly(path)
        unlink_quietly(tmp)
        raise io_error("could not store the message", e) from e
    except BaseException:
        for path in linked:
            unlink_quietly(path)
        unlink_quietly(tmp)
        raise


def _mailbox_creator(
    store: MailStore, addresses: list[str], folder: str | None = None
) -> Callable[[], None]:
    def create() -> None:
        try:
            for address in addresses:
                store.delivery_dirs(address, folder)
        except OSError as e:
            raise io_error("could not create the mailbox", e) from e

    return create


@implementer(IIncomingMessage)
class MaildirMessage(SpooledMessage):
    """One message on its way into the Maildir store (see the module docstring).

    The tmp file is created lazily in a pool thread: at the first flush for a big message,
    otherwise at commit. Creating it on the reactor thread cost 0.6-0.8 ms per message under
    fsync load (ext4: the tmp/ directory lock and journal handle are contended by the pool's
    unlinks and fsyncs), most of the reactor's budget at 1000 msg/s. Mailboxes that receive
    their first message are created the same way (their creation fsyncs directories).
    """

    def __init__(
        self,
        envelope: Envelope,
        sink: MaildirSink,
        tmp: str,
        base: str,
        new_dirs: list[str],
        header: bytes,
        prepare: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(envelope, tmp, sink.flush_size, header, sink.committer.run)
        self._sink = sink
        self._base = base
        self._new_dirs = new_dirs
        self._prepare = prepare

    def _create_tmp(self) -> int:
        if self._prepare is not None:  # new mailboxes first: tmp/ must exist
            prepare, self._prepare = self._prepare, None
            prepare()
        return super()._create_tmp()

    def commit(self) -> defer.Deferred[str]:
        committer = self._sink.committer
        refused = self._cannot_commit(bool(committer.running), "message store")
        if refused is not None:
            return refused
        d = self.when_flushed(self._submit)
        if self._sink.delivered is not None:
            d.addCallback(self._sink.tell, self.envelope.mailboxes, self.envelope.folder)
        return d.addCallbacks(self._committed, self._failed)

    def _submit(self) -> defer.Deferred[None]:
        fd, tail = self.take()
        name = f"{self._base},S={self._size}"  # names.with_size
        job = _Commit(fd, self._tmp, tail, name, self._new_dirs, self._prepare)
        self._prepare = None  # the flush in the worker may have run it already
        return self._sink.committer.submit(job)

    def _on_failure(self) -> None:
        self._sink.forget(self.envelope)


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
        # Told each mailbox (and folder) a message reached (StoreChanges.touched): listeners
        # in this process learn of it without waiting for inotify.
        self.delivered: Callable[..., None] | None = None

    def tell(self, result: T, mailboxes: list[str], folder: str | None = None) -> T:
        if self.delivered is not None:
            for mailbox in mailboxes:
                try:
                    if folder is None:
                        self.delivered(mailbox)
                    else:
                        self.delivered(mailbox, folder)
                except Exception:
                    log.failure("telling of a delivery failed")
        return result

    def open(self, envelope: Envelope) -> MaildirMessage:
        """``envelope.folder`` (when set: Junk, for a message the checks quarantined) is the
        folder every copy goes to, made on first delivery as INBOX is."""
        mailboxes = envelope.mailboxes
        folder = envelope.folder
        if not mailboxes:
            raise DeliveryError("no recipients", permanent=True)
        mail_from = envelope.mail_from
        if "\r" in mail_from or "\n" in mail_from or "\0" in mail_from:
            raise DeliveryError("reverse-path cannot be written as a header", permanent=True)
        store = self.store
        known = store.known_delivery_dirs
        new_dirs: list[str] = []
        missing: list[str] | None = None
        tmp_dir = None
        try:
            for mb in mailboxes:
                dirs = known(mb, folder)
                if dirs is None:
                    # First delivery (or after a failure): created by the worker at commit.
                    dirs = store.delivery_paths(mb, folder)
                    if missing is None:
                        missing = []
                    missing.append(mb)
                if tmp_dir is None:
                    tmp_dir = dirs[0]
                new_dirs.append(dirs[1])
        except InvalidName as e:
            raise DeliveryError(f"bad mailbox name: {e}", permanent=True) from e
        base = names.unique_name(store.hostname, store.settings.now)
        header = f"Return-Path: <{mail_from}>\r\n".encode()
        return MaildirMessage(
            envelope,
            self,
            f"{tmp_dir}/{base}",
            base,
            new_dirs,
            header,
            None if missing is None else _mailbox_creator(store, missing, folder),
        )

    def forget(self, envelope: Envelope) -> None:
        """After a failure, re-check the mailboxes next time (one may have been removed)."""
        for mb in envelope.mailboxes:
            self.store.forget_delivery_dirs(mb, envelope.folder)


class StaleTmpCleaner(TimerService):
    """Removes stale tmp/ files (maildir.html: 36 hours), stale dotlocks and temporary
    leftovers of killed processes, at start and every ``interval`` seconds, in a thread,
    because it walks the whole tree."""

    def __init__(
        self, store: MailStore, interval: float = 3600.0, max_age: float = STALE_TMP_AGE
    ) -> None:
        super().__init__(interval, self._clean)
        self._store = store
        self._max_age = max_age

    def _clean(self) -> defer.Deferred[int]:
        d = threads.deferToThread(self._clean_blocking)
        d.addErrback(lambda f: log.failure("cleaning stale tmp files failed", f))
        return d

    def _clean_blocking(self) -> int:
        # Stale dotlocks first: a kill -9 leaves them, and until they are broken the folder's
        # UIDs cannot be assigned (mailhub.store.leftovers).
        return self._store.clean_stale_tmp(self._max_age, leftovers=True)
