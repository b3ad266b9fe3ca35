"""A message being written to a temporary file for a sink (the Maildir store, the queue).

Small messages stay in memory until commit, so the sink's worker thread creates, writes and
fsyncs the file in one hop; big ones go to the file every ``flush_size`` bytes as they arrive, so
no message sits whole in memory. A subclass says how the file is made durable (``commit``) and
may hook file creation and failure.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailhub.envelope import Envelope
from mailhub.interfaces import DeliveryError
from mailhub.safeio import write_all

log = Logger()

# O_EXCL: a temporary name must really be new (maildir.html: "if the file exists, wait").
TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

# Errors that will not go away by trying again (the client is told 5xx, not 4xx).
PERMANENT_ERRNOS = frozenset({errno.EFBIG})


def io_error(what: str, e: OSError) -> DeliveryError:
    return DeliveryError(f"{what}: {e.strerror or e}", permanent=e.errno in PERMANENT_ERRNOS)


class SpooledMessage:
    """``write`` buffers and flushes; ``commit`` (the subclass) hands ``take()``'s file and tail
    to a worker; ``abort`` and failures leave nothing on disk."""

    what = "store"  # in error texts: "could not store the message"

    def __init__(self, envelope: Envelope, tmp: str, flush_size: int, header: bytes = b"") -> None:
        self.envelope = envelope
        self._tmp = tmp
        self._flush_size = flush_size
        self._fd: int | None = None
        self._buf = bytearray(header)
        self._size = len(header)
        self._state = "open"  # open -> committing -> committed | failed | aborted

    def write(self, data: bytes) -> None:
        if self._state != "open":
            raise DeliveryError(f"message is {self._state}, cannot write")
        self._buf += data
        self._size += len(data)
        if len(self._buf) >= self._flush_size:
            self._flush()

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

    def _create_tmp(self) -> int:
        """Create the temporary file (on the reactor thread: only big messages get here)."""
        return os.open(self._tmp, TMP_FLAGS, 0o600)

    def _cannot_commit(self, running: bool, service: str) -> defer.Deferred[str] | None:
        """The Deferred to return instead of committing, or None to go on."""
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
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
