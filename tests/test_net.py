"""mailhub.net: network helpers shared by the SMTP policy and the web page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailhub.net import close_now, is_loopback, write_now


class LoopbackTests(SynchronousTestCase):
    def test_is_loopback(self) -> None:
        for address in ("127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"):
            self.assertTrue(is_loopback(address), address)
        for address in ("192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1", "", "/tmp/sock"):
            self.assertFalse(is_loopback(address), address)


class _Sink(Protocol):
    """The client end: collects what the server sends until it closes."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self.data = b""
        self.done = done

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(self.data)


class _Server(Protocol):
    """Runs ``action(transport)`` once connected; ``lost`` fires with the exception its
    connectionLost was given."""

    def __init__(self, action: Callable[[Any], None]) -> None:
        self.action = action
        self.lost: Deferred[BaseException] = Deferred()

    def connectionMade(self) -> None:
        self.action(self.transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(reason.value)


class _Exchange(TestCase):
    def exchange(self, action: Callable[[Any], None]) -> Deferred[bytes]:
        """Listen on 127.0.0.1 (port 0), connect, run ``action`` on the server's transport;
        fires with every octet the client received."""
        self.servers: list[_Server] = []

        def build() -> _Server:
            self.servers.append(_Server(action))
            return self.servers[-1]

        factory = Factory.forProtocol(build)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        done: Deferred[bytes] = Deferred()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        connectProtocol(endpoint, _Sink(done))
        return done


class WriteNowTests(_Exchange):
    """write_now: one send() for a reply on an idle TCP transport, else transport.write."""

    async def test_sent_at_once(self) -> None:
        seen: dict[str, object] = {}

        def action(transport: Any) -> None:
            self.assertIs(type(transport), tcp.Server)
            write_now(transport, b"220 ready\r\n")
            # Sent by the call itself: nothing queued, the reactor not asked to watch for writing.
            seen["queued"] = transport._tempDataLen + len(transport.dataBuffer)
            seen["watched"] = transport in reactor.getWriters()  # type: ignore[attr-defined]
            write_now(transport, b"221 bye\r\n")
            transport.loseConnection()

        received = await self.exchange(action)
        self.assertEqual(received, b"220 ready\r\n221 bye\r\n")
        self.assertEqual(seen, {"queued": 0, "watched": False})

    async def test_after_queued_data_keeps_the_order(self) -> None:
        big = bytes(range(256)) * 40_000  # ~10 MB: more than the socket takes at once

        def action(transport: Any) -> None:
            transport.write(big)  # queued by Twisted, not sent yet
            write_now(transport, b"250 after\r\n")  # must not overtake it
            self.assertTrue(transport._tempDataLen > 0)
            transport.loseConnection()

        received = await self.exchange(action)
        self.assertEqual(len(received), len(big) + len(b"250 after\r\n"))
        self.assertTrue(received.endswith(b"250 after\r\n"))
        self.assertEqual(received[: len(big)], big)

    def test_other_transports_use_write(self) -> None:
        transport = StringTransport()
        write_now(transport, b"250 ok\r\n")
        self.assertEqual(transport.value(), b"250 ok\r\n")


class CloseNowTests(_Exchange):
    """close_now: a plain TCP connection with nothing left to write closes at once, without
    waiting for writability (no epoll watch for writing); otherwise it is loseConnection."""

    async def test_closes_without_watching_for_writing(self) -> None:
        seen: dict[str, object] = {}

        def action(transport: Any) -> None:
            write_now(transport, b"221 bye\r\n")
            close_now(transport)
            seen["reading"] = transport in reactor.getReaders()  # type: ignore[attr-defined]
            seen["watched"] = transport in reactor.getWriters()  # type: ignore[attr-defined]
            seen["open"] = transport.connected
            seen["told"] = self.servers[0].lost.called  # connectionLost ran inside the call
            close_now(transport)  # a second close is harmless
            transport.loseConnection()

        received = await self.exchange(action)
        reason = await self.servers[0].lost
        self.assertEqual(received, b"221 bye\r\n")
        self.assertEqual(seen, {"reading": False, "watched": False, "open": 0, "told": True})
        self.assertIsInstance(reason, ConnectionDone)  # orderly (FIN), not aborted

    async def test_with_queued_data_it_waits_for_the_data(self) -> None:
        big = bytes(range(256)) * 40_000  # ~10 MB: more than the socket takes at once

        def action(transport: Any) -> None:
            transport.write(big)
            write_now(transport, b"221 bye\r\n")
            close_now(transport)
            self.assertTrue(transport in reactor.getWriters())  # type: ignore[attr-defined]

        received = await self.exchange(action)
        self.assertEqual(len(received), len(big) + len(b"221 bye\r\n"))
        self.assertTrue(received.endswith(b"221 bye\r\n"))

    def test_other_transports_lose_connection(self) -> None:
        transport = StringTransport()
        close_now(transport)
        self.assertTrue(transport.disconnecting)
