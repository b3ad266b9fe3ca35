"""The factory: connection limits, and one real-socket session with Twisted's SMTP client."""

from __future__ import annotations

from io import BytesIO

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import Logger
from twisted.mail.smtp import ESMTPSenderFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailhub.config import DomainsConfig, Limits, SMTPConfig
from mailhub.smtp.factory import SMTPServerFactory
from mailhub.smtp.policy import RecipientPolicy
from tests.support.smtp import Harness, MemorySink, body_of, limits


class ConnectionLimitTests(SynchronousTestCase):
    def test_total_limit(self) -> None:
        h = Harness(limits=limits(max_connections=2))
        a = h.connect(peer="192.0.2.1")
        b = h.connect(peer="192.0.2.2")
        c = h.connect(peer="192.0.2.3")
        self.assertEqual(c.replies(), ["421 4.7.0 Error: too many connections, try again later"])
        self.assertTrue(c.closed)
        c.protocol.connectionLost(None)
        self.assertEqual(a.replies(), ["220 mx.example.org mailhub ESMTP"])
        a.protocol.connectionLost(None)
        d = h.connect(peer="192.0.2.4")
        self.assertEqual(d.replies(), ["220 mx.example.org mailhub ESMTP"])
        self.assertFalse(b.closed)
        self.assertEqual(h.factory.connections, 2)

    def test_per_ip_limit(self) -> None:
        h = Harness(limits=limits(max_connections_per_ip=2))
        first = [h.connect(peer="192.0.2.1") for _ in range(2)]
        third = h.connect(peer="192.0.2.1")
        self.assertEqual(third.replies()[0][:9], "421 4.7.0")
        other = h.connect(peer="192.0.2.2")
        self.assertEqual(other.replies()[0][:3], "220")
        first[0].protocol.connectionLost(None)
        again = h.connect(peer="192.0.2.1")
        self.assertEqual(again.replies()[0][:3], "220")
        self.assertEqual(h.factory.connections_by_ip, {"192.0.2.1": 2, "192.0.2.2": 1})

    def test_bad_bare_line_ending_setting(self) -> None:
        self.assertRaises(ValueError, Harness, smtp_config=SMTPConfig(bare_line_endings="maybe"))


class RealSocketTests(TestCase):
    """Twisted's own ESMTP client against our server over loopback."""

    @inlineCallbacks
    def test_send_with_twisted_client(self):
        sink = MemorySink()
        factory = SMTPServerFactory(
            hostname="mx.example.org",
            limits=Limits(),
            smtp_config=SMTPConfig(),
            policy=RecipientPolicy(
                DomainsConfig(local=("example.org",)), {"user@example.org"}.__contains__
            ),
            sink=sink,
            clock=reactor,
            log=Logger(observer=lambda event: None),
        )
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        done: Deferred = Deferred()
        # Twisted's client turns LF into CRLF itself (and CRLF into CR CR LF, which we would
        # rightly refuse as a bare CR), and dot-stuffs.
        message = b"Subject: hello\n\n.leading dot\nbody\n"
        client = ESMTPSenderFactory(
            None,
            None,
            "a@example.net",
            ["user+x@example.org"],
            BytesIO(message),
            done,
            requireAuthentication=False,
            requireTransportSecurity=False,
        )
        connector = reactor.connectTCP("127.0.0.1", port.getHost().port, client)
        self.addCleanup(connector.disconnect)
        accepted, _ = yield done
        self.assertEqual(accepted, 1)
        [delivered] = sink.delivered
        self.assertEqual(body_of(delivered), message.replace(b"\n", b"\r\n"))
        self.assertEqual([r.mailbox for r in delivered.envelope.recipients], ["user@example.org"])
