"""A recording sink under the submission sink, and the Received header its tests pass in."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from mailhub.envelope import Envelope
from mailhub.interfaces import DeliveryError, IIncomingMessage, IMessageSink

RECEIVED = (
    b"Received: from client.example.net (unknown [192.0.2.7])\r\n"
    b"\tby mx.example.org (mailhub) with ESMTPSA id QID; Thu, 01 Jan 1970 00:00:00 +0000\r\n"
)


class MemoryMessage:
    def __init__(self, envelope: Envelope, fail_writes: bool = False) -> None:
        self.envelope = envelope
        self.writes: list[bytes] = []
        self.state = "open"
        self.fail_writes = fail_writes

    def write(self, data: bytes) -> None:
        assert self.state == "open", self.state
        if self.fail_writes:
            raise DeliveryError("disk full")
        self.writes.append(data)

    def ready(self) -> Deferred[None] | None:
        return None

    def commit(self) -> Deferred:
        assert self.state == "open", self.state
        self.state = "committed"
        return succeed(self.envelope.queue_id)

    def abort(self) -> None:
        self.state = "aborted"

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


MemoryMessage = implementer(IIncomingMessage)(MemoryMessage)


@implementer(IMessageSink)
class MemorySink:
    def __init__(self, fail_writes: bool = False) -> None:
        self.messages: list[MemoryMessage] = []
        self.fail_writes = fail_writes

    def open(self, envelope: Envelope) -> MemoryMessage:
        m = MemoryMessage(envelope, self.fail_writes)
        self.messages.append(m)
        return m
