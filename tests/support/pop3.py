"""A POP3 protocol over a StringTransport and a real store, driven line by line."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mailhub.auth import make_portal
from mailhub.config import Limits
from mailhub.pop3.factory import POP3ServerFactory
from mailhub.pop3.protocol import POP3ServerProtocol
from mailhub.store import MailStore
from mailhub.throttle import AuthThrottle

USER = b"alice@example.com"


PASSWORD = b"secret"


MSG1 = b"Subject: one\r\n\r\nHello.\r\n"  # 24 octets


MSG2 = b"Subject: two\r\nFrom: bob@example.net\r\n\r\nline 1\r\n.starts with a dot\r\nline 3\r\n"


class TLSStringTransport(StringTransport):
    """Records startTLS, and from then on says it is TLS (as the real transport does)."""

    tls_started_with: object = None

    def startTLS(self, context_factory: object) -> None:
        self.tls_started_with = context_factory
        from zope.interface import alsoProvides

        alsoProvides(self, ISSLTransport)


@implementer(ISSLTransport)
class ImplicitTLSTransport(StringTransport):
    """A transport that is TLS from the first byte (pop3s)."""


class POP3Case(SynchronousTestCase):
    plaintext_allowed = True
    tls_context: object | None = None

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MailStore(Path(self.mktemp()), "mx.example.com")
        self.folder = self.store.mailbox(USER.decode(), create=True).folder()
        self.uids = [self.folder.append(MSG1), self.folder.append(MSG2)]
        self.checker = InMemoryUsernamePasswordDatabaseDontUse()
        self.checker.addUser(USER, PASSWORD)
        self.throttle = AuthThrottle(self.clock, max_failures=3, base_delay=1.0, max_delay=4.0)
        self.limits = Limits(max_errors=50)
        self.factory = self.make_factory()
        self.proto, self.transport = self.connect()

    def make_factory(self, **changes: object) -> POP3ServerFactory:
        options: dict[str, object] = dict(
            hostname="mx.example.com",
            limits=self.limits,
            store=self.store,
            portal=make_portal(self.checker),
            clock=self.clock,
            tls_context_factory=self.tls_context,
            throttle=self.throttle,
            plaintext_login_allowed=lambda host: self.plaintext_allowed,
        )
        options.update(changes)
        return POP3ServerFactory(**options)  # type: ignore[arg-type]

    def connect(
        self, transport: StringTransport | None = None, factory: POP3ServerFactory | None = None
    ) -> tuple[POP3ServerProtocol, StringTransport]:
        factory = factory or self.factory
        addr = IPv4Address("TCP", "192.0.2.7", 40000)
        proto = factory.buildProtocol(addr)
        if transport is None:
            transport = TLSStringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        return proto, transport

    def send(self, data: bytes, proto: POP3ServerProtocol | None = None) -> bytes:
        proto = proto or self.proto
        transport = proto.transport
        transport.clear()
        proto.dataReceived(data)
        return transport.value()

    def dialog(self, script: str, proto: POP3ServerProtocol | None = None) -> None:
        """Run ``C:``/``S:`` lines; the server's output after each C: line must be exactly the
        S: lines that follow it. ``<SP>`` at the end of a line is a trailing space."""
        steps: list[tuple[str, list[str]]] = []
        for line in textwrap.dedent(script).strip("\n").splitlines():
            line = line.replace("<SP>", " ")
            if line.startswith("C: "):
                steps.append((line[3:], []))
            elif line.startswith("S: "):
                steps[-1][1].append(line[3:])
            elif line == "S:":
                steps[-1][1].append("")
            else:
                raise ValueError(f"bad dialog line {line!r}")
        for command, expected in steps:
            got = self.send(command.encode() + b"\r\n", proto)
            want = "".join(f"{s}\r\n" for s in expected).encode()
            self.assertEqual(got, want, f"after C: {command}")

    def login(self, proto: POP3ServerProtocol | None = None) -> None:
        self.send(b"USER alice@example.com\r\n", proto)
        reply = self.send(b"PASS secret\r\n", proto)
        self.assertTrue(reply.startswith(b"+OK Logged in"), reply)

    def files(self) -> list[str]:
        root = self.store.root / "example.com" / "alice"
        return sorted(os.listdir(root / "new") + os.listdir(root / "cur"))
