"""Enqueue: the queue as an ``IMessageSink`` (open -> write* -> commit | abort).

The SMTP receiver writes through it exactly as into the Maildir sink; the queue also enqueues
its own bounces through it. ``commit()`` fires with the queue id only when the body and its
JSON record are fsync'd and renamed into place and the directory is fsync'd (see
mailhub.queue.spool): after that, a crash cannot lose the message, so "250" may be said.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mailhub.envelope import Envelope
from mailhub.interfaces import DeliveryError, IIncomingMessage, IMessageSink
from mailhub.queue.record import QUEUE_ID, QueueRecord, RecipientState
from mailhub.queue.spool import InlineIO, Spool, ThreadedIO
from mailhub.queueid import QueueIdGenerator
from mailhub.spooled import SpooledMessage

log = Logger()
T = TypeVar("T")


@implementer(IIncomingMessage)
class QueueMessage(SpooledMessage):
    """One message on its way into the spool (``mailhub.spooled``: in memory until commit when
    small, to the tmp file every ``flush_size`` bytes when big)."""

    what = "queue"

    def __init__(self, envelope: Envelope, sink: QueueSink, record: QueueRecord) -> None:
        super().__init__(
            envelope,
            str(sink.spool.tmp_path(record.id, "msg")),
            sink.flush_size,
            worker=sink.flush_worker,
        )
        self._sink = sink
        self._record = record

    @property
    def queue_id(self) -> str:
        return self._record.id

    def commit(self) -> defer.Deferred[str]:
        sink = self._sink
        refused = self._cannot_commit(sink.running(), "the queue")
        if refused is not None:
            return refused
        d = self.when_flushed(self._submit)
        return d.addCallbacks(self._committed, self._failed)

    def _submit(self) -> defer.Deferred[int]:
        fd, tail = self.take()
        sink = self._sink
        return sink.io.run(sink.spool.commit_new, self._record, Path(self._tmp), fd, tail)

    def _committed(self, size: int) -> str:
        self._state = "committed"
        self._sink.committed(self._record, size)
        return self._record.id


@implementer(IMessageSink)
class QueueSink:
    """``IMessageSink`` that puts each accepted message into the durable queue.

    Made by ``Queue`` (``queue.sink``); it uses the queue's clock, disk workers and spool, and
    tells the queue about each committed message so its first attempt starts at once.
    """

    def __init__(
        self,
        spool: Spool,
        io: ThreadedIO | InlineIO,
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

    def flush_worker(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Where a big message's flushes run: the disk threads, while they run."""
        if not self.running():
            return defer.fail(DeliveryError("the queue is not running"))
        return self.io.run(f, *args)

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
        if not QUEUE_ID.match(qid) or self.spool.record_exists(qid):
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
