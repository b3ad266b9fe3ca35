"""ConnectionWatch (tests/support/connections.py) fires on the last connectionLost."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from tests.support.connections import ConnectionWatch


class _Greeter(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"hello\r\n")


class _Client(Protocol):
    def __init__(self) -> None:
        self.greeted: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.greeted.called:
            self.greeted.callback(None)


class Watch(TestCase):
    async def test_idle_fires_when_the_last_server_connection_is_lost(self) -> None:
        port = reactor.listenTCP(0, Factory.forProtocol(_Greeter), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        watch = ConnectionWatch([port])
        self.assertTrue(watch.idle().called)  # nothing open yet
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        clients = [await connectProtocol(endpoint, _Client()) for _ in range(2)]
        for c in clients:
            await c.greeted  # so the server has accepted it
        self.assertEqual(watch.open, 2)
        idle = watch.idle()
        self.assertFalse(idle.called)
        clients[0].transport.loseConnection()
        clients[1].transport.loseConnection()
        await idle
        self.assertEqual(watch.open, 0)
