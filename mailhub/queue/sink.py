"""Enqueue: the queue as an ``IMessageSink`` (open -> write* -> commit | abort).

The SMTP receiver writes through it exactly as into the Maildir sink; the queue also enqueues
its own bounces through it. ``commit()`` fires with the queue id only when the body and its
JSON record are fsync'd and renamed into place and the directory is fsync'd (see
mailhub.queue.spool): after that, a crash cannot lose the message, so "250" may be said.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhub.envelope import Envelope
from mailhub.interfaces import DeliveryError, IIncomingMessage, IMessageSink
from mailhub.queue.record import QUEUE_ID, QueueRecord, RecipientState
from mailhub.queue.spool import Spool
from mailhub.smtp.queueid import QueueIdGenerator
from mailhub.store.safeio import write_all

log = Logger()

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


@implementer(IIncomingMessage)
class QueueMessage:
    """One message on its way into the spool. Small messages stay in memory until commit (one
    hop to a worker then); big ones go to the tmp file every ``flush_size`` bytes."""

    def __init__(self, envelope: Envelope, sink: QueueSink, record: QueueRecord) -> None:
        self.envelope = envelope
        self._sink = sink
        self._record = record
        self._tmp: Path = sink.spool.tmp_path(record.id, "msg")
        self._fd: int | None = None
        self._buf = bytearray()
        self._state = "open"  # open -> committing -> committed | failed | aborted

    @property
    def queue_id(self) -> str:
        return self._record.id

    def write(self, data: bytes) -> None:
        if self._state != "open":
            raise DeliveryError(f"message is {self._state}, cannot write")
        self._buf += data
        if len(self._buf) >= self._sink.flush_size:
            try:
                if self._fd is None:
                    self._fd = os.open(self._tmp, _FLAGS, 0o600)
                write_all(self._fd, self._buf)
            except OSError as e:
                self._cleanup("failed")
                raise DeliveryError(f"could not queue the message: {e.strerror or e}") from e
            self._buf.clear()

    def commit(self) -> defer.Deferred[str]:
        if self._state != "open":
            return defer.fail(DeliveryError(f"message is {self._state}, cannot commit"))
        sink = self._sink
        if not sink.running():
            self._cleanup("failed")
            return defer.fail(DeliveryError("the queue is not running"))
        self._state = "committing"
        fd, self._fd = self._fd, None  # the worker owns (and closes) it now
        tail, self._buf = self._buf, bytearray()
        record = self._record
        d = sink.io.run(sink.spool.commit_new, record, self._tmp, fd, tail)
        return d.addCallbacks(self._committed, self._failed)

    def _committed(self, size: int) -> str:
        self._state = "committed"
        self._sink.committed(self._record, size)
        return self._record.id

    def _failed(self, f: Failure) -> Failure:
        self._state = "failed"
        if f.check(OSError):
            e = f.value
            return Failure(DeliveryError(f"could not queue the message: {e.strerror or e}"))
        if not f.check(DeliveryError):
            log.failure("queueing {qid} failed", f, qid=self._record.id)
            return Failure(DeliveryError(f"could not queue the message: {f.value}"))
        return f

    def abort(self) -> None:
        """Drop the message (nothing stays on disk). After commit() it is too late."""
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
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass


@implementer(IMessageSink)
class QueueSink:
    """``IMessageSink`` that puts each accepted message into the durable queue.

    Made by ``Queue`` (``queue.sink``); it uses the queue's clock, disk workers and spool, and
    tells the queue about each committed message so its first attempt starts at once.
    """

    def __init__(
        self,
        spool: Spool,
        io,  # ThreadedIO | InlineIO
        clock: IReactorTime,
        on_commit: Callable[[QueueRecord, int], None],
        running: Callable[[], bool],
        flush_size: int = 256 * 1024,
    ) -> None:
        self.spool = spool
        self.io = io
        self.clock = clock
        self.flush_size = flush_size
        self._on_commit = on_commit
        self.running = running
        self._ids = QueueIdGenerator(clock)

    def new_id(self) -> str:
        qid = self._ids()
        while self.spool.exists(qid):
            qid = self._ids()
        return qid

    def open(self, envelope: Envelope) -> QueueMessage:
        mailboxes = envelope.mailboxes
        if not mailboxes:
            raise DeliveryError("no recipients", permanent=True)
        if not self.running():
            raise DeliveryError("the queue is not running")
        # The receiver's id names the message in its "250 queued as" reply and the Received:
        # header: keep it when it is a safe, unused file name (it is time-ordered and random).
        qid = envelope.queue_id
        if not QUEUE_ID.match(qid) or self.spool.exists(qid):
            qid = self.new_id()
        originals: dict[str, str] = {}
        for r in envelope.recipients:
            originals.setdefault(r.mailbox, r.address)
        now = self.clock.seconds()
        record = QueueRecord(
            id=qid,
            mail_from=envelope.mail_from,
            created=now,
            recipients=[
                RecipientState(address=m, original=originals[m], next_attempt=now)
                for m in mailboxes
            ],
            envelope_id=getattr(envelope, "envelope_id", None),
            body_type=envelope.body_type,
            smtputf8=envelope.smtputf8,
            client=envelope.client_address,
        )
        return QueueMessage(envelope, self, record)

    def committed(self, record: QueueRecord, size: int) -> None:
        log.info(
            "queue: {qid} queued from <{sender}> for {n} recipient(s), {size} bytes",
            qid=record.id,
            sender=record.mail_from,
            n=len(record.recipients),
            size=size,
        )
        self._on_commit(record, size)
