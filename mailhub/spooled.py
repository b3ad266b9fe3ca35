"""A message being written to a temporary file for a sink (the Maildir store, the queue).

Small messages stay in memory until commit, so the sink's worker thread creates, writes and
fsyncs the file in one hop; big ones go to the file every ``flush_size`` bytes as they arrive, so
no message sits whole in memory. A subclass says how the file is made durable (``commit``) and
may hook file creation and failure.

With a ``worker`` (the sink's disk threads) those flushes run there, not on the reactor thread
(creating the file and writing 256 KiB cost the reactor ~1 ms per big message): one flush at a
time per message, so its writes stay in order; a full buffer waits for the running flush, and
``ready()`` tells the writer to stop until it is done, so memory stays bounded (the SMTP receiver
stops reading). ``commit`` waits for the running flush before handing over the file; a flush
no worker has started yet is withdrawn and its buffer goes with the commit's job (one hop).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailhub.envelope import Envelope
from mailhub.interfaces import DeliveryError
from mailhub.safeio import write_all

log = Logger()
T = TypeVar("T")

# Runs ``f(*args)`` in one of the sink's disk threads: a Deferred of its result.
Worker = Callable[..., defer.Deferred[Any]]

# Guards _Flush.state between the worker that starts a flush and a commit that withdraws it.
_claim = threading.Lock()


class _Flush:
    """One flush handed to the worker: ``queued`` -> ``running`` (the worker took it) or
    ``withdrawn`` (a commit took its buffer back first, so that one job does both)."""

    __slots__ = ("buf", "state")

    def __init__(self, buf: bytearray) -> None:
        self.buf = buf
        self.state = "queued"


# O_EXCL: a temporary name must really be new (maildir.html: "if the file exists, wait").
TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

# Errors that will not go away by trying again (the client is told 5xx, not 4xx).
PERMANENT_ERRNOS = frozenset({errno.EFBIG})


def io_error(what: str, e: OSError) -> DeliveryError:
    return DeliveryError(f"{what}: {e.strerror or e}", permanent=e.errno in PERMANENT_ERRNOS)


class SpooledMessage:
    """``write`` buffers and flushes; ``commit`` (the subclass) hands ``take()``'s file and tail
    to a worker, after ``when_flushed``; ``abort`` and failures leave nothing on disk."""

    what = "store"  # in error texts: "could not store the message"

    def __init__(
        self,
        envelope: Envelope,
        tmp: str,
        flush_size: int,
        header: bytes = b"",
        worker: Worker | None = None,
    ) -> None:
        self.envelope = envelope
        self._tmp = tmp
        self._flush_size = flush_size
        self._worker = worker  # None: flushes run here (the caller's thread)
        self._fd: int | None = None  # the worker's while a flush runs
        self._buf = bytearray(header)
        self._size = len(header)
        self._state = "open"  # open -> committing -> committed | failed | aborted
        self._flushing: _Flush | None = None  # the flush handed to the worker
        self._queued: bytearray | None = None  # a full buffer waiting for that flush
        self._waiting: list[defer.Deferred[None]] = []  # ready()'s, fired when none is queued
        self._then: Callable[[], None] | None = None  # when_flushed's, once no flush runs
        self._error: DeliveryError | None = None  # why a flush in the worker failed

    def write(self, data: bytes) -> None:
        if self._state != "open":
            if self._error is not None:
                raise self._error
            raise DeliveryError(f"message is {self._state}, cannot write")
        self._buf += data
        self._size += len(data)
        if len(self._buf) >= self._flush_size:
            if self._worker is None:
                self._flush()
            else:
                self._flush_in_worker()

    def ready(self) -> defer.Deferred[None] | None:
        """Flow control (``IIncomingMessage.ready``): None while more may be written; else a
        Deferred that fires once the full buffer waiting for the running flush has started."""
        if self._queued is None:
            return None
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        return d

    def _flush(self) -> None:
        try:
            if self._fd is None:
                self._fd = self._create_tmp()
            write_all(self._fd, self._buf)
        except OSError as e:
            self._fail_now()
            raise io_error(f"could not {self.what} the message", e) from e
        except DeliveryError:
            self._fail_now()
            raise
        self._buf.clear()

    def _flush_in_worker(self) -> None:
        buf, self._buf = self._buf, bytearray()
        if self._flushing is not None:
            # In order: after the running flush (the writer was told to wait by ready()).
            if self._queued is None:
                self._queued = buf
            else:
                self._queued += buf
            return
        self._start_flush(buf)

    def _start_flush(self, buf: bytearray) -> None:
        assert self._worker is not None
        self._flushing = job = _Flush(buf)
        d = self._worker(self._write_out, job)
        d.addCallbacks(self._flushed, self._flush_failed, callbackArgs=(job,), errbackArgs=(job,))

    def _write_out(self, job: _Flush) -> None:
        """Worker thread: the only one touching ``_fd`` while ``_flushing`` (unless withdrawn)."""
        with _claim:
            if job.state == "withdrawn":
                return
            job.state = "running"
        if self._fd is None:
            self._fd = self._create_tmp()
        write_all(self._fd, job.buf)

    def _flushed(self, _: object, job: _Flush) -> None:
        if job is not self._flushing:
            return  # withdrawn: the commit took its buffer
        self._flushing = None
        if self._state in ("failed", "aborted"):
            self._discard_file()
        elif self._queued is not None:
            buf, self._queued = self._queued, None
            self._start_flush(buf)
        self._wake()
        if self._flushing is None:
            self._go_on()

    def _flush_failed(self, f: Failure, job: _Flush) -> None:
        if job is not self._flushing:
            return
        self._flushing = None
        self._queued = None
        e = f.value
        if isinstance(e, DeliveryError):
            self._error = e
        elif isinstance(e, OSError):
            self._error = io_error(f"could not {self.what} the message", e)
        else:
            log.failure("flushing {qid} failed", f, qid=self.envelope.queue_id)
            self._error = DeliveryError(f"could not {self.what} the message: {e}")
        if self._state == "open":
            self._fail_now()
        else:
            self._discard_file()
        self._wake()
        self._go_on()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def _go_on(self) -> None:
        then, self._then = self._then, None
        if then is not None:
            then()

    def when_flushed(self, commit: Callable[[], defer.Deferred[T]]) -> defer.Deferred[T]:
        """``commit()`` (which calls ``take()``) once no flush runs: at once, or after the
        flushes in the worker; their failure instead if one failed. Nothing may be written
        from now on."""
        job = self._flushing
        if job is None:
            return commit()
        self._state = "committing"
        if self._queued is not None:  # write() took it: it is the message's, not yet on disk
            self._buf[:0] = self._queued
            self._queued = None
        with _claim:
            withdrawn = job.state == "queued"
            if withdrawn:
                job.state = "withdrawn"
        if withdrawn:
            # No worker has started it (they are busy): its buffer goes with the commit's
            # job, one hop instead of two.
            self._buf[:0] = job.buf
            self._flushing = None
            self._wake()
            return commit()
        d: defer.Deferred[T] = defer.Deferred()

        def go_on() -> None:
            if self._error is not None:
                d.errback(self._error)
            else:
                commit().chainDeferred(d)

        self._then = go_on
        return d

    def _create_tmp(self) -> int:
        """Create the temporary file (only big messages get here; in the worker if there is
        one, else on the caller's thread)."""
        return os.open(self._tmp, TMP_FLAGS, 0o600)

    def _cannot_commit(self, running: bool, service: str) -> defer.Deferred[str] | None:
        """The Deferred to return instead of committing, or None to go on."""
        if self._error is not None:
            return defer.fail(self._error)
        if self._state != "open":
            return defer.fail(DeliveryError(f"message is {self._state}, cannot commit"))
        if not running:
            self._fail_now()
            return defer.fail(DeliveryError(f"{service} is not running"))
        return None

    def take(self) -> tuple[int | None, bytearray]:
        """Hand the open file (or None) and the unwritten tail to the worker that commits."""
        self._state = "committing"
        fd, self._fd = self._fd, None  # the worker owns (and closes) it now
        tail, self._buf = self._buf, bytearray()
        return fd, tail

    def _committed(self, result: Any) -> str:  # Any: each subclass's commit gives its own
        self._state = "committed"
        return self.envelope.queue_id

    def _failed(self, f: Failure) -> Failure:
        self._state = "failed"
        self._on_failure()
        if f.check(DeliveryError):
            return f
        if isinstance(f.value, OSError):  # f.check(OSError), in a form the type checker reads
            return Failure(io_error(f"could not {self.what} the message", f.value))
        log.failure("{what} of {qid} failed", f, what=self.what, qid=self.envelope.queue_id)
        return Failure(DeliveryError(f"could not {self.what} the message: {f.value}"))

    def _on_failure(self) -> None:
        """Called once when the message fails (before or during commit)."""

    def _fail_now(self) -> None:
        self._cleanup("failed")
        self._on_failure()

    def abort(self) -> None:
        """Drop the message. After commit() was called it is too late: the commit finishes."""
        if self._state == "open":
            self._cleanup("aborted")

    def _cleanup(self, state: str) -> None:
        self._state = state
        self._buf = bytearray()
        self._queued = None
        if self._flushing is None:  # else the flush's end discards the file
            self._discard_file()

    def _discard_file(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self._worker is None:
            _close_and_unlink(fd, self._tmp)
            return
        tmp = self._tmp
        # In the worker (unlink() takes the directory's lock); here if it runs no more.
        self._worker(_close_and_unlink, fd, tmp).addErrback(lambda _: _close_and_unlink(fd, tmp))


def _close_and_unlink(fd: int, path: str) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)
