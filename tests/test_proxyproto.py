"""``haproxy:`` listeners (mailhub.proxyproto): the wrapped protocol connects only once the PROXY
header is read and sees the client's address from it; a connection without one is closed."""

from __future__ import annotations

import base64
import imaplib
import socket
from pathlib import Path
from typing import Any

import argon2
from twisted.internet import reactor, task, threads
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailhub.config import (
    ChecksConfig,
    Config,
    DomainsConfig,
    ListenersConfig,
    TLSConfig,
    WebConfig,
    load,
)
from mailhub.errors import ConfigError
from mailhub.pickup import read_server_address
from mailhub.proxyproto import HEADER_TIMEOUT, ProxiedFactory, inner_description
from mailhub.service import with_backlog
from mailhub.testing import MailhubTestServer
from mailhub.users import UserDB
from tests.support import proxied
from tests.support.localdns import LocalDNS
from tests.support.proxied import V1_UNKNOWN, v1, v2, v2_local
from tests.support.tls import CertificateAuthority, client_context

FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)

PROXIED = "haproxy:tcp:0:interface=127.0.0.1"


class Recorder(Protocol):
    def __init__(self) -> None:
        self.peer: Any = None
        self.host: Any = None
        self.data = b""
        self.lost = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.peer, self.host = self.transport.getPeer(), self.transport.getHost()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class Wrapper(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.inner = Recorder()
        factory = ProxiedFactory(Factory.forProtocol(lambda: self.inner), self.clock)
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=None)
        self.proto.makeConnection(self.transport)

    def test_the_inner_protocol_waits_for_the_header(self) -> None:
        self.assertIsNone(self.inner.peer)  # not connected: it would see the proxy's address
        header = v1("192.0.2.7", 4711, "198.51.100.1", 25)
        for i in range(len(header)):  # a byte at a time
            self.proto.dataReceived(header[i : i + 1])
        self.proto.dataReceived(b"EHLO x\r\n")
        self.assertEqual((self.inner.peer.host, self.inner.peer.port), ("192.0.2.7", 4711))
        self.assertEqual((self.inner.host.host, self.inner.host.port), ("198.51.100.1", 25))
        self.assertEqual(self.inner.data, b"EHLO x\r\n")

    def test_v2_with_data_behind_it_and_ipv6_in_canonical_form(self) -> None:
        self.proto.dataReceived(v2("2001:db8::7", 1, "2001:db8::1", 993) + b"a1 NOOP\r\n")
        self.assertEqual(self.inner.peer.host, "2001:db8::7")
        self.assertEqual(self.inner.data, b"a1 NOOP\r\n")

    def test_v2_split_inside_the_signature(self) -> None:
        header = v2("192.0.2.8")
        self.proto.dataReceived(header[:5])
        self.proto.dataReceived(header[5:14])
        self.assertIsNone(self.inner.peer)
        self.proto.dataReceived(header[14:])
        self.assertEqual(self.inner.peer.host, "192.0.2.8")

    def test_no_client_address_is_unknown_not_the_proxys(self) -> None:
        # v2 LOCAL (a health check) and v1 UNKNOWN: the proxy's 127.0.0.1 must not be lent
        for header in (v2_local(), V1_UNKNOWN):
            self.setUp()
            self.proto.dataReceived(header)
            self.assertEqual(self.inner.peer.host, "")

    def test_no_header_is_refused(self) -> None:
        self.proto.dataReceived(b"EHLO mail.example.com\r\n")
        self.assertIsNone(self.inner.peer)
        self.assertTrue(self.transport.disconnecting)

    def test_a_broken_header_is_refused(self) -> None:
        self.proto.dataReceived(b"PROXY TCP4 not-an-address\r\n")
        self.assertIsNone(self.inner.peer)
        self.assertTrue(self.transport.disconnecting)

    def test_a_silent_peer_is_cut_off(self) -> None:
        self.clock.advance(HEADER_TIMEOUT - 1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)
        self.proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertFalse(self.inner.lost)  # it never saw the connection

    def test_the_timer_stops_with_the_header(self) -> None:
        self.proto.dataReceived(v1("192.0.2.9"))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class Descriptions(SynchronousTestCase):
    def test_backlog_goes_to_the_inner_endpoint(self) -> None:
        self.assertEqual(
            with_backlog("haproxy:tcp:25:interface=10.0.0.5", 64),
            "haproxy:tcp:25:interface=10.0.0.5:backlog=64",
        )
        self.assertEqual(inner_description("tcp:25"), None)

    def test_config_takes_haproxy_tcp_and_refuses_haproxy_ssl(self) -> None:
        path = self.mktemp()

        def write(listener: str) -> None:
            with open(path, "w") as f:
                f.write(
                    f'[server]\nhostname = "mx.example.test"\ndata_dir = "{self.mktemp()}"\n'
                    f'[domains]\nlocal = ["example.test"]\n[listeners]\nsmtp = ["{listener}"]\n'
                )

        write("haproxy:tcp:2525:interface=127.0.0.1")
        smtp = load(path).listeners.smtp
        self.assertEqual(smtp, ("haproxy:tcp:2525:interface=127.0.0.1",))
        write("haproxy:ssl:465:privateKey=k.pem")
        with self.assertRaises(ConfigError) as caught:
            load(path)
        self.assertIn("haproxy:tcp:", str(caught.exception))


def _all_proxied() -> ListenersConfig:
    kinds = ("smtp", "submission", "smtps", "imap", "imaps", "pop3", "pop3s", "web")
    return ListenersConfig(**{kind: (PROXIED,) for kind in kinds})


class Listeners(TestCase):
    """Every listener kind behind ``haproxy:``: the session counts and logs the header's
    address (the per-address connection limit shows it), never the proxy's 127.0.0.1."""

    async def _hub(self, **changes: Any) -> MailhubTestServer:
        return await MailhubTestServer.started(self, listeners=_all_proxied(), **changes)

    def _counted(self, hub: MailhubTestServer, kind: str) -> dict[str, int]:
        assert hub.service is not None
        factory = hub.service.listening_ports(kind)[0].factory.wrappedFactory  # ProxiedFactory's
        factory = getattr(factory, "wrappedFactory", factory)  # under implicit TLS
        return dict(factory.connection_count.by_address)

    async def test_every_mail_listener_sees_the_headers_address(self) -> None:
        hub = await self._hub()
        context = hub.client_context()

        def greet(kind: str, header: bytes) -> dict[str, int]:
            port = hub.ports[kind]
            if kind in ("smtp", "submission"):
                s = proxied.proxied(proxied.SMTP, header)("127.0.0.1", port, timeout=10)
                s.ehlo()
                s.starttls(context=context)  # STARTTLS through the wrapper
                s.ehlo()
            elif kind == "smtps":
                s = proxied.proxied(proxied.SMTP_SSL, header)(
                    "localhost", port, timeout=10, context=context
                )
                s.ehlo()
            elif kind in ("imap", "imaps"):
                cls = proxied.IMAP4 if kind == "imap" else proxied.IMAP4_SSL
                kwargs = {"ssl_context": context} if kind == "imaps" else {}
                s = proxied.proxied(cls, header)("localhost", port, timeout=10, **kwargs)
                if kind == "imap":
                    s.starttls(context)
                s.noop()
            else:
                cls = proxied.POP3 if kind == "pop3" else proxied.POP3_SSL
                kwargs = {"context": context} if kind == "pop3s" else {}
                s = proxied.proxied(cls, header)("localhost", port, timeout=10, **kwargs)
                if kind == "pop3":
                    s.stls(context)
                s.capa()
            counted = threads.blockingCallFromThread(reactor, self._counted, hub, kind)
            getattr(s, "quit", getattr(s, "logout", None))()
            return counted

        for i, kind in enumerate(("smtp", "submission", "smtps", "imap", "imaps", "pop3", "pop3s")):
            header = (v1 if i % 2 else v2)(f"192.0.2.{10 + i}")
            counted = await threads.deferToThread(greet, kind, header)
            self.assertEqual(counted, {f"192.0.2.{10 + i}": 1}, kind)

    async def test_received_names_the_client_from_the_header(self) -> None:
        hub = await self._hub()
        cursor = hub.cursor()

        def send() -> None:
            cls = proxied.proxied(proxied.SMTP, v2("203.0.113.9"))
            with cls("127.0.0.1", hub.smtp_port, local_hostname="client.example") as s:
                s.sendmail(
                    "app@example.com", ["someone@example.test"], b"Subject: via proxy\r\n\r\nx\r\n"
                )

        await threads.deferToThread(send)
        message = await hub.wait_for_message(to="someone@example.test", since=cursor)
        received = message.message["Received"]
        self.assertIn("from client.example (unknown [203.0.113.9])", received)
        self.assertNotIn("127.0.0.1", received)

    async def test_sendmail_is_not_sent_to_a_proxied_listener(self) -> None:
        # `mailhub sendmail` speaks plain SMTP: the address it is told is a plain listener's
        listeners = ListenersConfig(smtp=(PROXIED, "tcp:0:interface=127.0.0.1"))
        hub = await MailhubTestServer.started(self, listeners=listeners)
        assert hub.service is not None
        plain = hub.service.listening_ports("smtp")[1].getHost().port
        self.assertEqual(read_server_address(hub.config.data_dir), ("127.0.0.1", plain))

    async def test_a_connection_without_header_gets_no_banner(self) -> None:
        hub = await self._hub()

        def talk() -> bytes:
            with socket.create_connection(("127.0.0.1", hub.smtp_port), timeout=10) as sock:
                sock.sendall(b"EHLO client.example\r\n")
                chunks = []
                try:
                    while chunk := sock.recv(4096):
                        chunks.append(chunk)
                except ConnectionResetError:
                    pass  # aborted: not a proxy
                return b"".join(chunks)

        self.assertEqual(await threads.deferToThread(talk), b"")


class SPFBehindProxy(TestCase):
    async def test_spf_judges_the_client_the_header_names(self) -> None:
        dns = LocalDNS({"app.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]}})
        dns.start()
        self.addCleanup(dns.stop)
        assert dns.port is not None
        checks = ChecksConfig(
            nameservers=(("127.0.0.1", dns.port.getHost().port),), authserv_id="mx.test"
        )
        hub = await MailhubTestServer.started(
            self, listeners=ListenersConfig(smtp=(PROXIED,)), checks=checks
        )

        def send(source: str) -> None:
            cls = proxied.proxied(proxied.SMTP, v1(source))
            with cls("127.0.0.1", hub.smtp_port, local_hostname="client.example") as s:
                message = f"Subject: from {source}\r\n\r\nx\r\n".encode()
                s.sendmail("app@app.test", ["someone@example.com"], message)

        for source, result in (("192.0.2.10", "pass"), ("192.0.2.99", "fail")):
            cursor = hub.cursor()
            await threads.deferToThread(send, source)
            message = await hub.wait_for_message(subject=f"from {source}", since=cursor)
            results = " ".join(str(message.message["Authentication-Results"]).split())
            self.assertIn(f"spf={result}", results)
            self.assertIn(source, results)


class ThrottleBehindProxy(TestCase):
    """Production style (a users file, no dev logins): failed IMAPS logins through the proxy
    are counted against the client the header names, not the proxy's 127.0.0.1."""

    async def test_imaps_failures_count_per_real_client(self) -> None:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        ca = CertificateAuthority()
        context = client_context(ca.write_root(directory))
        cert, key = ca.issue(["mail.example.test"]).write(directory, "mail")
        users = UserDB(directory / "users", hasher=FAST)
        users.add("alice@example.test", "alice-secret")
        config = Config(
            source="<proxy throttle test>",
            hostname="mail.example.test",
            data_dir=directory / "data",
            dev=False,
            domains=DomainsConfig(local=("example.test",)),
            listeners=ListenersConfig(imaps=(PROXIED,)),
            tls=TLSConfig(certificate=cert, key=key),
            users_file=directory / "users",
            checks=ChecksConfig(enabled=False),
        )
        hub = MailhubTestServer(directory / "hub", config=config)
        hub.start()
        self.addCleanup(hub.stop)
        assert hub.service is not None and hub.service.throttle is not None
        throttle, port = hub.service.throttle, hub.ports["imaps"]

        def fail_login(source: str) -> None:
            cls = proxied.proxied(proxied.IMAP4_SSL, v1(source), connect_to="127.0.0.1")
            client = cls("mail.example.test", port, ssl_context=context, timeout=10)
            with self.assertRaises(imaplib.IMAP4.error):
                client.login("alice@example.test", "wrong")
            client.logout()

        for _ in range(2):
            await threads.deferToThread(fail_login, "192.0.2.60")
        await threads.deferToThread(fail_login, "192.0.2.61")
        self.assertEqual(throttle.failures("192.0.2.60"), 2)
        self.assertEqual(throttle.failures("192.0.2.61"), 1)
        self.assertEqual(throttle.failures("127.0.0.1"), 0)


class WebBehindProxy(TestCase):
    """HAProxy connects from 127.0.0.1; the web's loopback rule (a password in plain HTTP only
    from loopback) must judge the client the header names."""

    async def test_plain_http_login_only_for_a_loopback_client(self) -> None:
        hub = await MailhubTestServer.started(
            self, listeners=ListenersConfig(web=(PROXIED,)), web=WebConfig(login=True)
        )
        port = hub.ports["web"]
        auth = base64.b64encode(b"dev@example.test:secret").decode()

        def get(header: bytes) -> bytes:
            request = (
                f"GET /api/v1/messages HTTP/1.1\r\nHost: localhost\r\n"
                f"Authorization: Basic {auth}\r\nConnection: close\r\n\r\n"
            ).encode()
            with proxied.connect(port, header + request) as sock:
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            return b"".join(chunks).split(b"\r\n", 1)[0]

        self.assertIn(b" 200 ", await threads.deferToThread(get, v1("127.0.0.1")))
        self.assertIn(b" 403 ", await threads.deferToThread(get, v1("192.0.2.50")))
        self.assertIn(b" 403 ", await threads.deferToThread(get, v2_local()))
