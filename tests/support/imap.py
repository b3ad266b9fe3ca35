"""Test helpers for the IMAP server: a server over a real Maildir store and a dialog driver.

A dialog reads like the RFC's examples::

    client.run('''
        C: a1 SELECT INBOX
        S: * FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft)
        S: ...
        S: a1 OK [READ-WRITE] SELECT completed
    ''')

Consecutive ``C:`` lines are sent in one segment (pipelining); each ``S:`` line must match the
next line the server wrote exactly, or as a prefix when it ends with ``...``; a lone ``S: ...``
skips any number of lines up to the one matching the next ``S:`` line. After the last ``S:`` line
nothing else may have been written.
"""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.defer import maybeDeferred, succeed
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from mailhub.auth import DevChecker, make_portal
from mailhub.config import Limits
from mailhub.imap.factory import IMAPServerFactory
from mailhub.imap.protocol import IMAPServerProtocol
from mailhub.store import MailStore
from mailhub.throttle import AuthThrottle

USER = "alice@example.org"


def message(subject: str = "hello", body: str = "Hi there.\r\n", sender: str = "bob") -> bytes:
    return (
        f"From: {sender}@example.net\r\nTo: alice@example.org\r\nSubject: {subject}\r\n"
        f"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <{subject}@example.net>\r\n"
        f"\r\n{body}"
    ).encode()


class TLSStringTransport(StringTransport):
    """A StringTransport that can "start TLS" (it records the context and says ISSLTransport)."""

    tls_context: object | None = None

    def startTLS(self, context: object) -> None:
        self.tls_context = context
        directlyProvides(self, ISSLTransport)


class FakeTLSContext:
    """Stands for the server's TLS context factory (never used for real crypto here)."""


class IMAPTestCase(SynchronousTestCase):
    """A store in a temporary directory, a factory, and connected clients."""

    limits = Limits()
    plaintext_allowed = True

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MailStore(Path(self.mktemp()), hostname="mail.example.org")
        self.checker = DevChecker(
            default_domain="example.org",
            on_first_login=lambda a: self.store.mailbox(a, create=True),
            run=lambda f, *a: succeed(f(*a)),
        )
        self.throttle = AuthThrottle(self.clock, max_failures=3, max_delay=4.0)
        self.factory = self.make_factory()

    def make_factory(self, **changes: object) -> IMAPServerFactory:
        options: dict = dict(
            hostname="mail.example.org",
            limits=self.limits,
            store=self.store,
            portal=make_portal(self.checker),
            clock=self.clock,
            tls_context_factory=FakeTLSContext(),
            plaintext_login_allowed=lambda host: self.plaintext_allowed,
            throttle=self.throttle,
            log=Logger(namespace="test.imap"),
            run=lambda f, *a: maybeDeferred(f, *a),  # APPEND's disk work, inline
        )
        options.update(changes)
        return IMAPServerFactory(**options)

    def with_limits(self, **changes: object) -> None:
        self.limits = replace(Limits(), **changes)
        self.factory = self.make_factory()

    def connect(self, host: str = "192.0.2.7", *, tls: bool = False) -> Client:
        return Client(self, host, tls=tls)

    def login(self, user: str = USER, *, select: str | None = "INBOX") -> Client:
        client = self.connect()
        client.command(f"LOGIN {user} secret")
        if select is not None:
            client.command(f"SELECT {select}")
        return client

    def folder(self, name: str = "INBOX", user: str = USER):
        return self.store.mailbox(user, create=True).folder(name)

    def deliver(self, data: bytes | None = None, user: str = USER, folder: str = "INBOX") -> int:
        """Put a message in new/ (as SMTP delivery does): it is \\Recent for the next reader."""
        return self.folder(folder, user).append(data if data is not None else message())


class Client:
    """One connection driven by dialogs."""

    _tags = 0

    def __init__(self, case: IMAPTestCase, host: str, *, tls: bool) -> None:
        self.case = case
        self.transport = TLSStringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        if tls:
            directlyProvides(self.transport, ISSLTransport)
        self.protocol: IMAPServerProtocol = case.factory.buildProtocol(
            IPv4Address("TCP", host, 40000)
        )
        self.protocol.makeConnection(self.transport)
        self.greeting = self.take()

    # -- raw ------------------------------------------------------------------------------

    def send(self, data: bytes | str) -> None:
        self.protocol.dataReceived(data.encode() if isinstance(data, str) else data)

    def take(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return out

    def lines(self) -> list[str]:
        return self.take().decode("utf-8", "replace").split("\r\n")[:-1]

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def command(self, text: str) -> list[str]:
        """Send one tagged command; return every line up to and including its tagged reply,
        and fail unless it is OK."""
        Client._tags += 1
        tag = f"t{Client._tags}"
        self.send(f"{tag} {text}\r\n")
        lines = self.lines()
        assert lines and lines[-1].startswith(f"{tag} OK"), lines
        return lines

    # -- dialogs --------------------------------------------------------------------------

    def run(self, script: str) -> None:
        steps = [line.strip() for line in textwrap.dedent(script).strip().splitlines()]
        pending: list[str] = []
        expected: list[str] = []

        def flush() -> None:
            if pending:
                self.send("".join(p + "\r\n" for p in pending))
                pending.clear()

        def check() -> None:
            if not expected:
                return
            got = self.lines()
            self._match(expected, got)
            expected.clear()

        for step in steps:
            if not step:
                continue
            who, _, text = step.partition(": ")
            if step == "S:":
                who, text = "S", ""  # an empty line (the blank line after a header block)
            if who == "C":
                check()
                pending.append(text)
            elif who == "S":
                flush()
                expected.append(text)
            else:
                raise AssertionError(f"bad dialog line {step!r}")
        flush()
        check()

    def _match(self, expected: list[str], got: list[str]) -> None:
        i = 0
        skipping = False
        report = "\n".join(got)
        for want in expected:
            if want == "...":
                skipping = True
                continue
            while True:
                if i >= len(got):
                    raise AssertionError(f"expected {want!r}, server said:\n{report}")
                line = got[i]
                i += 1
                # Trailing spaces are invisible in a dialog ("+ " is written "S: +").
                ok = line.startswith(want[:-3]) if want.endswith("...") else line.rstrip() == want
                if ok:
                    skipping = False
                    break
                if not skipping:
                    raise AssertionError(f"expected {want!r}, got {line!r}; all:\n{report}")
        if i < len(got) and not skipping:
            raise AssertionError(f"unexpected lines {got[i:]!r}; all:\n{report}")
