"""Peers for relay tests, all on 127.0.0.1 with OS-chosen ports.

- ``ReceiverPeer``: mailhub's own SMTP receiver (``SMTPServerFactory``) with an in-memory sink:
  the real server code path, with STARTTLS and AUTH when asked.
- ``ScriptedPeer``: a tiny hand-written server that misbehaves on purpose (drops the connection
  in DATA, breaks the TLS handshake, answers 4xx...); it keeps each connection's command lines.
- ``Item``: a queue item as the courier sees it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, globalLogPublisher
from twisted.trial.unittest import TestCase

from mailhub.auth import DevChecker, make_portal
from mailhub.config import DomainsConfig, Limits, SMTPConfig
from mailhub.relay import MXResolver, RemoteCourier
from mailhub.smtp.factory import SMTPServerFactory
from mailhub.smtp.policy import RecipientPolicy, Role
from mailhub.tls import ServerTLS, tls_server_factory
from tests.support.connections import TIMEOUT as CLOSE_TIMEOUT
from tests.support.connections import ConnectionWatch
from tests.support.localdns import LocalDNS
from tests.support.smtp import MemorySink


@dataclass
class Item:
    queue_id: str = "Q1"
    mail_from: str = "sender@a.test"
    recipients: list[str] = field(default_factory=lambda: ["alice@b.test"])
    body: bytes = b"Subject: hi\r\n\r\nHello.\r\n"
    body_type: str = "7BIT"
    smtputf8: bool = False
    envelope_id: str | None = None
    opened: int = 0

    @property
    def size(self) -> int:
        return len(self.body)

    def open_body(self) -> io.BytesIO:
        self.opened += 1
        return io.BytesIO(self.body)


def inline(f: Any, /, *args: Any) -> Deferred[Any]:
    from twisted.internet.defer import maybeDeferred

    return maybeDeferred(f, *args)


class ReceiverPeer:
    """Our own receiver for ``domain`` with mailboxes; ``tls`` is a (cert, key) pair of files."""

    def __init__(
        self,
        case: Any,
        *,
        domain: str = "b.test",
        mailboxes: set[str] | None = None,
        tls: tuple[Path, Path] | None = None,
        auth: bool = False,
        limits: Limits | None = None,
        hostname: str = "mx.b.test",
        implicit_tls: bool = False,
    ) -> None:
        self.sink = MemorySink()
        self.events: list[dict] = []
        self.mailboxes = mailboxes if mailboxes is not None else {f"alice@{domain}"}
        domains = DomainsConfig(local=(domain,))
        policy = RecipientPolicy(domains, self.mailboxes.__contains__)
        self.factory = SMTPServerFactory(
            hostname=hostname,
            limits=limits or Limits(),
            smtp_config=SMTPConfig(),
            policy=policy,
            sink=self.sink,
            clock=reactor,  # type: ignore[arg-type]
            tls_context_factory=ServerTLS([tls]) if tls else None,
            role=Role.MTA,
            portal=make_portal(DevChecker(run=inline)) if auth else None,
            log=Logger(namespace="test.peer", observer=self.events.append),
        )
        self.opened = 0  # connections accepted: one per session the client opened
        build = self.factory.buildProtocol

        def counting(addr: Any) -> Any:
            self.opened += 1
            return build(addr)

        self.factory.buildProtocol = counting  # type: ignore[method-assign]
        listen: Any = self.factory
        if implicit_tls:  # TLS from the first byte, as on 465 (RFC 8314)
            listen = tls_server_factory(self.factory.tls_context_factory, self.factory)
        self.listening = reactor.listenTCP(0, listen, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.port = self.listening.getHost().port
        self.watch = ConnectionWatch([self.listening])
        case.addCleanup(self.stop)

    async def _stop(self) -> None:
        if self.listening.connected:
            await self.listening.stopListening()
        # The server side closes a moment after the client's QUIT.
        await self.watch.idle()

    def stop(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    def messages(self) -> list[Any]:
        return self.sink.delivered

    async def wait_closed(self) -> None:
        """Until every connection to this peer has ended (a QUIT from an idle session ...)."""
        await self.watch.idle()


def _waiter(waiting: list[Deferred[None]], done: bool) -> Deferred[None]:
    if done:
        return succeed(None)
    d: Deferred[None] = Deferred()
    waiting.append(d)
    return d.addTimeout(CLOSE_TIMEOUT, reactor)  # type: ignore[arg-type]


async def until(condition: Callable[[], bool], limit: float = 5.0) -> None:
    """Let the reactor run until ``condition()`` holds (fails the test after ``limit`` s)."""
    for _ in range(int(limit / 0.01)):
        if condition():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"condition not met within {limit} seconds")


class _Scripted(Protocol):
    """Answers commands with ``script(line, peer) -> bytes | None``; in DATA mode calls
    ``on_data(data, peer)``."""

    def __init__(self, owner: ScriptedPeer) -> None:
        self.owner = owner
        self.buffer = b""
        self.in_data = False
        self.received: list[bytes] = []
        self.data = b""  # message data received so far (see ``accept_data``)
        self.closed = False
        self._lost: list[Deferred[None]] = []
        self._awaited: list[tuple[str, Deferred[None]]] = []

    def connectionMade(self) -> None:
        self.owner.connections.append(self)
        self.transport.write(self.owner.greeting)

    def dataReceived(self, data: bytes) -> None:
        if self.in_data:
            self.owner.on_data(data, self)
            return
        self.buffer += data
        while b"\r\n" in self.buffer and not self.in_data:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            self.received.append(line)
            self._heard(line.decode())
            answer = self.owner.script(line.decode(), self)
            if answer:
                self.transport.write(answer)
        if self.in_data and self.buffer:
            rest, self.buffer = self.buffer, b""
            self.owner.on_data(rest, self)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        waiting, self._lost = self._lost, []
        for d in waiting:
            d.callback(None)
        self.owner.connection_lost()

    def when_closed(self) -> Deferred[None]:
        """Fires when this connection has closed (at once if it has)."""
        return _waiter(self._lost, self.closed)

    def when_received(self, line: str) -> Deferred[None]:
        """Fires when the client has sent the command ``line`` (at once if it has)."""
        if line.encode() in self.received:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._awaited.append((line, d))
        return d.addTimeout(CLOSE_TIMEOUT, reactor)  # type: ignore[arg-type]

    def _heard(self, line: str) -> None:
        done = [d for wanted, d in self._awaited if wanted == line]
        self._awaited = [(w, d) for w, d in self._awaited if w != line]
        for d in done:
            d.callback(None)


def default_script(line: str, peer: _Scripted) -> bytes | None:
    verb = line.split(" ", 1)[0].upper()
    if verb == "EHLO":
        return b"250-fake.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
    if verb in ("MAIL", "RCPT", "RSET", "NOOP"):
        return b"250 2.0.0 ok\r\n"
    if verb == "DATA":
        peer.in_data = True
        return b"354 go on\r\n"
    if verb == "QUIT":
        peer.transport.write(b"221 2.0.0 bye\r\n")
        peer.transport.loseConnection()
        return None
    return b"502 5.5.1 no\r\n"


def accept_data(data: bytes, conn: _Scripted) -> None:
    """An ``on_data`` that takes the message and answers 250 at the end-of-data line."""
    conn.data += data
    if conn.data.endswith(b"\r\n.\r\n"):
        conn.in_data = False
        conn.transport.write(b"250 2.0.0 queued\r\n")


class ScriptedPeer:
    def __init__(
        self,
        case: Any,
        script: Callable[[str, _Scripted], bytes | None] = default_script,
        on_data: Callable[[bytes, _Scripted], None] | None = None,
        greeting: bytes = b"220 fake.test ESMTP\r\n",
    ) -> None:
        self.script = script
        self.on_data = on_data or (lambda data, peer: None)
        self.greeting = greeting
        self.connections: list[_Scripted] = []
        self.closed = 0
        self._closed_waits: list[tuple[int, Deferred[None]]] = []
        factory = Factory.forProtocol(lambda: _Scripted(self))
        self.listening = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.port = self.listening.getHost().port
        case.addCleanup(self.stop)

    async def _stop(self) -> None:
        if self.listening.connected:
            await self.listening.stopListening()
        for c in self.connections:
            c.transport.loseConnection()
        await self.when_closed(len(self.connections))

    def connection_lost(self) -> None:
        self.closed += 1
        done = [d for n, d in self._closed_waits if self.closed >= n]
        self._closed_waits = [(n, d) for n, d in self._closed_waits if self.closed < n]
        for d in done:
            d.callback(None)

    def when_closed(self, count: int) -> Deferred[None]:
        """Fires once ``count`` connections to this peer have closed."""
        if self.closed >= count:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed_waits.append((count, d))
        return d.addTimeout(CLOSE_TIMEOUT, reactor)  # type: ignore[arg-type]

    def stop(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())


ZONE = {
    "b.test": {"MX": [(10, "mx.b.test")]},
    "mx.b.test": {"A": ["127.0.0.1"]},
    "smtp.relay.test": {"A": ["127.0.0.1"]},
}


class CourierTestCase(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.dns = LocalDNS(ZONE)
        self.dns.start()
        self.addCleanup(self.dns.stop)
        self.logged: list[dict] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def courier(self, port: int, **kw: Any) -> RemoteCourier:
        courier = RemoteCourier(MXResolver(self.dns.resolver()), hostname="a.test", port=port, **kw)
        self.addCleanup(courier.close)  # QUIT its idle sessions before the peers stop
        return courier

    def log_text(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(formatEvent(e) for e in self.logged)
