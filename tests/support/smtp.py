"""Test helpers for the SMTP receiver: an in-memory sink, a slow policy and a dialog driver.

A dialog reads like the RFC's examples::

    d.run('''
        C: MAIL FROM:<a@example.com>
        S: 250 2.1.0 Ok
    ''')

Consecutive ``C:`` lines are sent in one segment (that is pipelining); each ``S:`` line must
match the next reply line exactly, or as a prefix when it ends with ``...``.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from zope.interface import implementer

from mailhub.config import DomainsConfig, Limits, SMTPConfig
from mailhub.envelope import Envelope
from mailhub.interfaces import DeliveryError, IIncomingMessage, IMessageSink
from mailhub.smtp.factory import SMTPServerFactory
from mailhub.smtp.policy import ISMTPPolicy, RecipientPolicy, Role

LOCAL = "example.org"


@implementer(IIncomingMessage)
class MemoryMessage:
    """Keeps the written chunks; enforces open -> write* -> commit | abort."""

    def __init__(self, sink: MemorySink, envelope: Envelope) -> None:
        self.sink = sink
        self.envelope = envelope
        self.chunks: list[bytes] = []
        self.state = "open"  # open | committing | committed | failed | aborted
        self.abort_calls = 0

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def write(self, data: bytes) -> None:
        if self.state != "open":
            raise AssertionError(f"write() on a {self.state} message")
        if not isinstance(data, bytes):
            raise AssertionError("write() takes bytes")
        if self.sink.fail_write is not None:
            raise self.sink.fail_write
        self.chunks.append(data)

    def ready(self) -> Deferred[None] | None:
        if not self.sink.hold_ready:
            return None
        d: Deferred[None] = Deferred()
        self.sink.ready_waits.append(d)
        return d

    def commit(self) -> Deferred:
        if self.state != "open":
            raise AssertionError(f"commit() on a {self.state} message")
        self.state = "committing"
        if self.sink.fail_commit is not None:
            self.state = "failed"
            return fail(self.sink.fail_commit)
        if self.sink.hold_commits:
            d: Deferred = Deferred()
            self.sink.pending.append((self, d))
            return d.addCallback(self._done)
        return succeed(None).addCallback(self._done)

    def _done(self, _: object) -> str:
        self.state = "committed"
        self.sink.delivered.append(self)
        return self.envelope.queue_id

    def abort(self) -> None:
        self.abort_calls += 1
        if self.state == "open":
            self.state = "aborted"
        elif self.state not in ("aborted",):
            raise AssertionError(f"abort() on a {self.state} message")


@implementer(IMessageSink)
class MemorySink:
    """An honest in-memory ``IMessageSink`` that can fail or hold its commits."""

    def __init__(self) -> None:
        self.opened: list[MemoryMessage] = []
        self.delivered: list[MemoryMessage] = []
        self.pending: list[tuple[MemoryMessage, Deferred]] = []
        self.fail_open: DeliveryError | None = None
        self.fail_write: Exception | None = None
        self.fail_commit: Exception | None = None
        self.hold_commits = False
        self.hold_ready = False  # ready() says "wait" (a sink behind with its disk writes)
        self.ready_waits: list[Deferred[None]] = []

    def open(self, envelope: Envelope) -> MemoryMessage:
        if self.fail_open is not None:
            raise self.fail_open
        message = MemoryMessage(self, envelope)
        self.opened.append(message)
        return message

    def catch_up(self) -> None:
        """The sink has caught up: fire every ready() given out, say "go on" from now."""
        self.hold_ready = False
        waits, self.ready_waits = self.ready_waits, []
        for d in waits:
            d.callback(None)

    def release(self) -> None:
        """Fire every held commit."""
        pending, self.pending = self.pending, []
        for _message, d in pending:
            d.callback(None)


@implementer(ISMTPPolicy)
class SlowPolicy:
    """Wraps a policy; every answer waits on a Deferred the test fires with ``release``."""

    def __init__(self, inner: RecipientPolicy) -> None:
        self.inner = inner
        self.pending: list[tuple[Deferred, object]] = []

    def check_auth(self, session):
        return self.inner.check_auth(session)

    def check_sender(self, session, sender):
        d: Deferred = Deferred()
        self.pending.append((d, self.inner.check_sender(session, sender)))
        return d

    def check_recipient(self, session, recipient):
        d: Deferred = Deferred()
        self.pending.append((d, self.inner.check_recipient(session, recipient)))
        return d

    def release(self) -> int:
        pending, self.pending = self.pending, []
        for d, decision in pending:
            d.callback(decision)
        return len(pending)


class TLSStringTransport(StringTransport):
    """A StringTransport that records the context startTLS was called with."""

    tls_started_with: object = None

    def startTLS(self, context_factory: object) -> None:
        self.tls_started_with = context_factory


@implementer(ISSLTransport)
class ImplicitTLSStringTransport(StringTransport):
    """Already TLS from the first byte, as ``mailhub.tls.tls_server_factory`` presents it."""

    def getPeerCertificate(self) -> None:
        return None


class Harness:
    """A factory with an in-memory sink, a Clock and captured log events."""

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        smtp_config: SMTPConfig | None = None,
        domains: DomainsConfig | None = None,
        mailboxes: set[str] | None = None,
        policy: object | None = None,
        tls_context_factory: object | None = None,
        role: Role = Role.MTA,
        portal: object | None = None,
        throttle: object | None = None,
        factory_class: type[SMTPServerFactory] = SMTPServerFactory,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)  # 2027-01-15: dates in headers are recognisable
        self.sink = MemorySink()
        self.events: list[dict] = []
        self.mailboxes = mailboxes if mailboxes is not None else {f"user@{LOCAL}"}
        if domains is None:
            domains = DomainsConfig(
                local=(LOCAL, "catchall.example"), catch_all=("catchall.example",)
            )
        self.policy = policy or RecipientPolicy(domains, self.mailboxes.__contains__)
        self.factory = factory_class(
            hostname="mx.example.org",
            limits=limits or Limits(),
            smtp_config=smtp_config or SMTPConfig(),
            policy=self.policy,
            sink=self.sink,
            clock=self.clock,
            tls_context_factory=tls_context_factory,
            role=role,
            portal=portal,
            throttle=throttle,
            log=Logger(namespace="test.smtp", observer=self.events.append),
        )

    def connect(
        self, peer: str = "192.0.2.7", port: int = 40001, tls: bool = False, implicit: bool = False
    ) -> Dialog:
        """``tls``: STARTTLS can be used; ``implicit``: the connection is TLS from the start."""
        return Dialog(self, peer, port, tls, implicit)

    def message_events(self) -> list[dict]:
        return [e for e in self.events if e.get("event") == "message"]

    def failures(self) -> list[dict]:
        return [e for e in self.events if "log_failure" in e]


class Dialog:
    """One connection driven by ``C:``/``S:`` scripts, without sockets."""

    def __init__(
        self, harness: Harness, peer: str, port: int, tls: bool, implicit: bool = False
    ) -> None:
        self.harness = harness
        transport_class = (
            ImplicitTLSStringTransport
            if implicit
            else (TLSStringTransport if tls else StringTransport)
        )
        self.transport = transport_class(
            hostAddress=IPv4Address("TCP", "192.0.2.1", 25),
            peerAddress=IPv4Address("TCP", peer, port),
        )
        self.protocol = harness.factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)
        self._lines: list[str] = []

    # raw access
    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def _collect(self) -> None:
        out = self.transport.value()
        self.transport.clear()
        if out:
            text = out.decode("utf-8")
            if not text.endswith("\r\n"):
                raise AssertionError(f"reply not terminated by CRLF: {text!r}")
            self._lines.extend(text[:-2].split("\r\n"))

    def replies(self) -> list[str]:
        """All reply lines received and not yet checked."""
        self._collect()
        lines, self._lines = self._lines, []
        return lines

    def reply(self) -> str:
        self._collect()
        if not self._lines:
            raise AssertionError("no reply from the server")
        return self._lines.pop(0)

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def run(self, script: str, *, complete: bool = True) -> None:
        """Play a script; with ``complete`` no reply may be left unchecked at the end."""
        to_send: list[str] = []
        for raw in script.splitlines():
            raw = raw.lstrip()
            if not raw:
                continue
            tag, text = raw[:3], raw[3:]
            if tag == "C: ":
                to_send.append(text)
            elif tag == "S: ":
                if to_send:
                    self.send("".join(f"{t}\r\n" for t in to_send).encode("utf-8"))
                    to_send = []
                self._collect()
                if not self._lines:
                    raise AssertionError(f"expected {text!r}, but the server has not replied")
                got = self._lines.pop(0)
                if text.endswith("..."):
                    if not got.startswith(text[:-3]):
                        raise AssertionError(f"expected {text!r}, got {got!r}")
                elif got != text:
                    raise AssertionError(f"expected {text!r}, got {got!r}")
            else:
                raise ValueError(f"dialog lines start with 'C: ' or 'S: ': {raw!r}")
        if to_send:
            self.send("".join(f"{t}\r\n" for t in to_send).encode("utf-8"))
        self._collect()
        if complete and self._lines:
            raise AssertionError(f"unexpected replies: {self._lines!r}")

    def greet(self) -> None:
        """Read the banner and do EHLO."""
        self.run(
            """
            S: 220 mx.example.org mailhub ESMTP
            C: EHLO client.example.net
            S: 250-mx.example.org...
            """,
            complete=False,
        )
        self.replies()

    def transaction(self, sender: str = "<sender@example.net>", *rcpts: str) -> None:
        """MAIL and RCPT, each answered 250."""
        self.send(f"MAIL FROM:{sender}\r\n".encode())
        assert self.reply().startswith("250 "), "MAIL refused"
        for rcpt in rcpts or (f"<user@{LOCAL}>",):
            self.send(f"RCPT TO:{rcpt}\r\n".encode())
            got = self.reply()
            assert got.startswith("250 "), f"RCPT {rcpt} refused: {got}"


def body_of(message: MemoryMessage) -> bytes:
    """The message as written, minus the Received header the receiver prepends."""
    data = message.data
    assert data.startswith(b"Received: "), data[:40]
    end = data.index(b"\r\n", data.index(b"; ")) + 2
    return data[end:]


def limits(**kw) -> Limits:
    return replace(Limits(), **kw)
