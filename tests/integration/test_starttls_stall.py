"""A client that asks for TLS (SMTP and IMAP STARTTLS, POP3 STLS), reads the go-ahead and then
never sends its ClientHello, or stops half-way through it, must not hold its connection (and its
place in the connection count, mailhub.connlimit) for ever. Real sockets against the running
service; the timeouts are short and the waits are on the server closing the socket, never on the
wall clock."""

from __future__ import annotations

import socket
import ssl
from typing import Any

from twisted.internet import defer

from mailhub.config import Limits, ListenersConfig
from tests.support.connections import closed_by_server
from tests.support.relay import until
from tests.support.service import LOOPBACK_ANY_PORT, ServiceTestCase

TIMEOUT = 30  # a socket that stays open this long was never closed by the server
LISTENERS = ListenersConfig(
    smtp=(LOOPBACK_ANY_PORT,),
    submission=(LOOPBACK_ANY_PORT,),
    imap=(LOOPBACK_ANY_PORT,),
    pop3=(LOOPBACK_ANY_PORT,),
)
SHORT = Limits(idle_timeout=0.5, imap_idle_timeout=0.5, pop3_idle_timeout=0.5)
# Long idle timeouts, so only the stress timeout can close the sessions in time.
UNDER_STRESS = Limits(max_connections=10, stress_idle_timeout=0.5)

# What each listener needs said before it switches to TLS, and the go-ahead's first bytes.
DIALOGUES: dict[str, tuple[list[bytes], bytes]] = {
    "smtp": ([b"EHLO client.example\r\n", b"STARTTLS\r\n"], b"220 "),
    "submission": ([b"EHLO client.example\r\n", b"STARTTLS\r\n"], b"220 "),
    "imap": ([b"a1 STARTTLS\r\n"], b"a1 OK"),
    "pop3": ([b"STLS\r\n"], b"+OK"),
}


def client_hello() -> bytes:
    """A real TLS ClientHello (what a client sends first after the go-ahead)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class StalledHandshake(ServiceTestCase):
    def stall(self, listener: str, then: bytes = b"") -> socket.socket:
        """Connect, ask for TLS, read the go-ahead, send ``then`` and nothing more."""
        sock = socket.create_connection(("127.0.0.1", self.port(listener)), TIMEOUT)
        reader = sock.makefile("rb")
        reader.readline()  # the greeting
        commands, go_ahead = DIALOGUES[listener]
        for command in commands:
            sock.sendall(command)
            while True:
                line = reader.readline()
                assert line, f"{listener}: closed during {command!r}"
                if line[:3] != b"250" or line[3:4] == b" ":  # the last line of a reply
                    break
        assert line.startswith(go_ahead), (listener, line)
        reader.close()  # the socket stays open (makefile holds only a reference)
        sock.sendall(then)
        return sock

    def counter(self, listener: str) -> Any:
        return self.service.listening_ports(listener)[0].factory.connection_count

    async def closed(self, sockets: dict[str, socket.socket]) -> dict[str, bool]:
        """Which of ``sockets`` the server closed (all waited on at once)."""
        results = await defer.gatherResults(
            [self.in_thread(closed_by_server, sock) for sock in sockets.values()]
        )
        return dict(zip(sockets, results, strict=True))

    async def assert_stalls_are_closed(self, then: bytes) -> None:
        sockets = {
            listener: await self.in_thread(self.stall, listener, then) for listener in DIALOGUES
        }
        self.assertEqual(await self.closed(sockets), dict.fromkeys(DIALOGUES, True))
        for listener in DIALOGUES:  # and each has given its place back
            count = self.counter(listener)
            await until(lambda count=count: count.total == 0, limit=TIMEOUT)

    async def test_no_client_hello_after_the_go_ahead(self) -> None:
        self.start(listeners=LISTENERS, limits=SHORT)
        await self.assert_stalls_are_closed(b"")

    async def test_half_a_client_hello(self) -> None:
        self.start(listeners=LISTENERS, limits=SHORT)
        hello = client_hello()
        await self.assert_stalls_are_closed(hello[: len(hello) // 2])

    async def test_under_stress_the_stress_timeout_applies(self) -> None:
        """Eight stalled sessions of ten places: stress, so the 0.5 s stress timeout closes them
        (the idle timeouts, 300 s and more, would hold them past TIMEOUT)."""
        self.start(listeners=LISTENERS, limits=UNDER_STRESS)
        sockets = {}
        for listener in ("submission", "imap", "pop3"):
            for n in range(8):
                sockets[f"{listener} {n}"] = await self.in_thread(self.stall, listener)
        self.assertEqual(await self.closed(sockets), dict.fromkeys(sockets, True))
        for listener in ("submission", "imap", "pop3"):
            count = self.counter(listener)
            await until(lambda count=count: count.total == 0, limit=TIMEOUT)
