"""RemoteCourier end to end on 127.0.0.1: DNS from a local twisted.names server, delivery to
mailhub's own SMTP receiver (or a deliberately broken peer), TLS with a test CA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zope.interface.verify import verifyObject

from mailhub.config import Limits
from mailhub.interfaces import ICourier, Outcome
from mailhub.relay import Smarthost, TLSPolicy
from mailhub.relay.tlsclient import load_ca_pem
from tests.support.relay import (
    CourierTestCase,
    Item,
    ReceiverPeer,
    ScriptedPeer,
    accept_data,
    default_script,
)
from tests.support.smtp import body_of
from tests.support.tls import CertificateAuthority


class DeliveryTests(CourierTestCase):
    async def test_provides_icourier(self) -> None:
        self.assertTrue(verifyObject(ICourier, self.courier(25)))

    async def test_mx_lookup_to_our_receiver(self) -> None:
        peer = ReceiverPeer(self)
        results = await self.courier(peer.port).deliver(Item())
        self.assertEqual([r.outcome for r in results], [Outcome.DELIVERED])
        self.assertEqual(results[0].remote_mta, "mx.b.test [127.0.0.1]")
        self.assertEqual(results[0].status, "2.0.0")
        [message] = peer.messages()
        self.assertEqual(body_of(message), Item().body)
        self.assertEqual(message.envelope.mail_from, "sender@a.test")
        self.assertIn(("b.test", "MX"), self.dns.queries)

    async def test_per_recipient_results(self) -> None:
        peer = ReceiverPeer(self, mailboxes={"alice@b.test", "carol@b.test"})
        item = Item(recipients=["alice@b.test", "bob@b.test", "carol@b.test"])
        results = await self.courier(peer.port).deliver(item)
        by = {r.recipient: r for r in results}
        self.assertEqual(by["alice@b.test"].outcome, Outcome.DELIVERED)
        self.assertEqual(by["carol@b.test"].outcome, Outcome.DELIVERED)
        self.assertEqual(by["bob@b.test"].outcome, Outcome.PERMANENT)
        self.assertEqual(by["bob@b.test"].status, "5.1.1")
        self.assertTrue(by["bob@b.test"].diagnostic.startswith("smtp; 550 5.1.1 "))
        [message] = peer.messages()  # one connection, one copy for both accepted
        self.assertEqual(
            [r.mailbox for r in message.envelope.recipients], ["alice@b.test", "carol@b.test"]
        )

    async def test_null_sender_and_dot_stuffing_round_trip(self) -> None:
        peer = ReceiverPeer(self)
        body = b"Subject: dots\r\n\r\n.\r\n..two\r\n.leading\r\nmiddle.\r\n. \r\nend\r\n"
        results = await self.courier(peer.port).deliver(Item(mail_from="", body=body))
        self.assertEqual(results[0].outcome, Outcome.DELIVERED)
        [message] = peer.messages()
        self.assertEqual(body_of(message), body)
        self.assertEqual(message.envelope.mail_from, "")

    async def test_large_body_streamed_in_chunks(self) -> None:
        peer = ReceiverPeer(self)
        line = b"." + b"x" * 97 + b"\r\n"  # every line needs stuffing, across chunk borders
        body = b"Subject: big\r\n\r\n" + line * 20000  # ~2 MB
        results = await self.courier(peer.port).deliver(Item(body=body))
        self.assertEqual(results[0].outcome, Outcome.DELIVERED)
        self.assertEqual(body_of(peer.messages()[0]), body)

    async def test_size_too_big_is_permanent_without_data(self) -> None:
        peer = ReceiverPeer(self, limits=Limits(max_message_size=1000))
        results = await self.courier(peer.port).deliver(Item(body=b"x" * 2000 + b"\r\n"))
        self.assertEqual(results[0].outcome, Outcome.PERMANENT)
        self.assertEqual(results[0].status, "5.3.4")
        self.assertEqual(peer.sink.opened, [])

    async def test_8bit_body(self) -> None:
        peer = ReceiverPeer(self)
        body = "Subject: é\r\n\r\nnaïve\r\n".encode()
        results = await self.courier(peer.port).deliver(Item(body=body, body_type="8BITMIME"))
        self.assertEqual(results[0].outcome, Outcome.DELIVERED)
        self.assertEqual(peer.messages()[0].envelope.body_type, "8BITMIME")

    async def test_smtputf8_address(self) -> None:
        peer = ReceiverPeer(self, mailboxes={"jörg@b.test"})
        item = Item(recipients=["jörg@b.test"], smtputf8=True)
        results = await self.courier(peer.port).deliver(item)
        self.assertEqual(results[0].outcome, Outcome.DELIVERED, results)
        self.assertTrue(peer.messages()[0].envelope.smtputf8)

    async def test_static_route_overrides_dns(self) -> None:
        peer = ReceiverPeer(self)
        self.dns.authority.zone["b.test"] = {"MX": [(10, "nowhere.b.test")]}  # would fail
        courier = self.courier(1, routes={"B.test": ("127.0.0.1", peer.port)})
        results = await courier.deliver(Item())
        self.assertEqual(results[0].outcome, Outcome.DELIVERED)
        self.assertEqual(results[0].remote_mta, "[127.0.0.1]")
        self.assertEqual(self.dns.queries, [])

    async def test_route_by_name_uses_a_records(self) -> None:
        peer = ReceiverPeer(self)
        courier = self.courier(1, routes={"b.test": ("smtp.relay.test", peer.port)})
        results = await courier.deliver(Item())
        self.assertEqual(results[0].outcome, Outcome.DELIVERED)
        self.assertIn(("smtp.relay.test", "A"), self.dns.queries)
        self.assertNotIn(("b.test", "MX"), self.dns.queries)

    async def test_nxdomain_is_permanent(self) -> None:
        results = await self.courier(25).deliver(Item(recipients=["x@nx.test", "y@nx.test"]))
        self.assertEqual([r.outcome for r in results], [Outcome.PERMANENT] * 2)
        self.assertEqual(results[0].status, "5.1.2")

    async def test_null_mx_is_permanent(self) -> None:
        self.dns.authority.zone["null.test"] = {"MX": [(0, ".")]}
        results = await self.courier(25).deliver(Item(recipients=["x@null.test"]))
        self.assertEqual((results[0].outcome, results[0].status), (Outcome.PERMANENT, "5.1.10"))

    async def test_nobody_listening_is_temporary(self) -> None:
        peer = ScriptedPeer(self)
        port = peer.port
        await peer.stop()
        results = await self.courier(port).deliver(Item())
        self.assertEqual(results[0].outcome, Outcome.TEMPORARY)
        self.assertTrue(results[0].status.startswith("4."))
        self.assertIn("cannot connect", results[0].diagnostic)

    async def test_next_mx_after_a_dead_one(self) -> None:
        peer = ReceiverPeer(self)
        self.dns.authority.zone.update(
            {
                "b.test": {"MX": [(5, "dead.b.test"), (10, "mx.b.test")]},
                "dead.b.test": {"A": ["127.0.0.2"]},  # nobody listens there on this port
            }
        )
        results = await self.courier(peer.port).deliver(Item())
        self.assertEqual(results[0].outcome, Outcome.DELIVERED)
        self.assertEqual(results[0].remote_mta, "mx.b.test [127.0.0.1]")

    async def test_dropped_mid_data_is_temporary(self) -> None:
        def drop(data: bytes, conn: Any) -> None:
            conn.transport.abortConnection()

        peer = ScriptedPeer(self, on_data=drop)
        results = await self.courier(peer.port).deliver(Item(body=b"x\r\n" * 50000))
        self.assertEqual(results[0].outcome, Outcome.TEMPORARY)
        self.assertEqual(results[0].status, "4.4.2")
        self.assertIn("lost", results[0].diagnostic)

    async def test_4xx_for_one_recipient_stops_the_round(self) -> None:
        def script(line: str, conn: Any) -> bytes | None:
            if line.startswith("RCPT TO:<busy@"):
                return b"452 4.2.2 mailbox full\r\n"
            if line.startswith("RCPT TO:<gone@"):
                return b"550 5.1.1 no such user\r\n"
            if line == ".":
                return b"250 2.0.0 queued\r\n"
            return default_script(line, conn)

        peer = ScriptedPeer(self, script, accept_data)
        self.dns.authority.zone.update(
            {
                "b.test": {"MX": [(5, "mx.b.test"), (10, "mx2.b.test")]},
                "mx2.b.test": {"A": ["127.0.0.1"]},
            }
        )
        item = Item(recipients=["ok@b.test", "busy@b.test", "gone@b.test"])
        results = await self.courier(peer.port).deliver(item)
        self.assertEqual(
            [(r.outcome, r.status) for r in results],
            [
                (Outcome.DELIVERED, "2.0.0"),
                (Outcome.TEMPORARY, "4.2.2"),
                (Outcome.PERMANENT, "5.1.1"),
            ],
        )
        self.assertEqual(results[1].diagnostic, "smtp; 452 4.2.2 mailbox full")
        self.assertEqual(len(peer.connections), 1)  # mx2 not tried in this round

    async def test_pipelining_used(self) -> None:
        peer = ScriptedPeer(self, on_data=lambda data, conn: None)
        sent: list[list[bytes]] = []
        from mailhub.relay import client

        original = client.SMTPClientProtocol.connectionMade

        def spy(protocol: Any) -> None:
            sent.append(protocol.sent)
            original(protocol)

        self.patch(client.SMTPClientProtocol, "connectionMade", spy)

        peer.on_data = accept_data
        await self.courier(peer.port).deliver(Item(recipients=["a@b.test", "c@b.test"]))
        [writes] = sent
        self.assertIn(
            b"MAIL FROM:<sender@a.test>\r\nRCPT TO:<a@b.test>\r\nRCPT TO:<c@b.test>\r\nDATA\r\n",
            writes,
        )
        self.assertIn(b"RCPT TO:<c@b.test>", peer.connections[0].received)

    async def test_mail_from_refused_applies_to_everyone(self) -> None:
        def script(line: str, conn: Any) -> bytes | None:
            if line.startswith("MAIL"):
                return b"451 4.7.1 greylisted, try later\r\n"
            if line.startswith(("RCPT", "DATA")):
                return b"503 5.5.1 need MAIL\r\n"
            return default_script(line, conn)

        peer = ScriptedPeer(self, script)
        results = await self.courier(peer.port).deliver(Item(recipients=["a@b.test", "c@b.test"]))
        self.assertEqual([r.status for r in results], ["4.7.1", "4.7.1"])
        self.assertEqual({r.outcome for r in results}, {Outcome.TEMPORARY})

    async def test_5xx_greeting_is_temporary_for_the_round(self) -> None:
        peer = ScriptedPeer(self, greeting=b"554 5.3.2 no service here\r\n")
        results = await self.courier(peer.port).deliver(Item())
        self.assertEqual(results[0].outcome, Outcome.TEMPORARY)
        self.assertEqual(results[0].status, "4.3.2")


class TLSTests(CourierTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ca = CertificateAuthority()
        self.ca_certs = load_ca_pem(self.ca.root_pem())
        self.dir = Path(self.mktemp())

    def cert(self, *names: str) -> tuple[Path, Path]:
        return self.ca.issue(list(names)).write(self.dir, names[0])

    def tls_events(self) -> list[str]:
        return [e["tls"] for e in self.logged if "tls" in e and "recipient" in e]

    async def test_verify_with_test_ca(self) -> None:
        peer = ReceiverPeer(self, tls=self.cert("mx.b.test"))
        courier = self.courier(
            peer.port, tls_policy={"b.test": "verify"}, ca_certificates=self.ca_certs
        )
        results = await courier.deliver(Item())
        self.assertEqual(results[0].outcome, Outcome.DELIVERED)
        self.assertEqual(peer.messages()[0].envelope.protocol, "ESMTPS")
        [tls] = self.tls_events()
        self.assertTrue(tls.startswith("TLSv1."), tls)
        self.assertTrue(tls.endswith(" verified"), tls)

    async def test_verify_wrong_name_is_temporary(self) -> None:
        peer = ReceiverPeer(self, tls=self.cert("other.example"))
        courier = self.courier(peer.port, default_tls="verify", ca_certificates=self.ca_certs)
        results = await courier.deliver(Item())
        self.assertEqual(results[0].outcome, Outcome.TEMPORARY)
        self.assertIn("TLS", results[0].diagnostic)
        self.assertEqual(peer.sink.opened, [])

    async def test_verify_needs_starttls(self) -> None:
        peer = ReceiverPeer(self)  # no TLS offered
        results = await self.courier(peer.port, default_tls=TLSPolicy.VERIFY).deliver(Item())
        self.assertEqual((results[0].outcome, results[0].status), (Outcome.TEMPORARY, "4.7.4"))
        self.assertEqual(peer.sink.opened, [])

    async def test_opportunistic_untrusted_certificate_still_delivers(self) -> None:
        other_ca = CertificateAuthority("untrusted")
        pair = other_ca.issue(["mx.b.test"]).write(self.dir, "untrusted")
        peer = ReceiverPeer(self, tls=pair)
        courier = self.courier(peer.port, ca_certificates=self.ca_certs)
        results = await courier.deliver(Item())
        self.assertEqual(results[0].outcome, Outcome.DELIVERED)
        [tls] = self.tls_events()
        self.assertIn(" unverified (", tls)

    async def test_one_context_shared_and_results_kept_per_connection(self) -> None:
        from mailhub.relay import tlsclient

        untrusted = CertificateAuthority("untrusted").issue(["mx.b.test"]).write(self.dir, "u2")
        bad = ReceiverPeer(self, tls=untrusted)
        good = ReceiverPeer(self, tls=self.cert("mx.b.test"))
        await self.courier(bad.port, ca_certificates=self.ca_certs).deliver(Item())
        await self.courier(good.port, ca_certificates=self.ca_certs).deliver(Item())
        first, second = self.tls_events()
        self.assertIn(" unverified (", first)
        self.assertTrue(second.endswith(" verified"), second)  # no bleed from the first
        a = tlsclient.OpportunisticTLS("mx.b.test", self.ca_certs)
        b = tlsclient.OpportunisticTLS("other.example", self.ca_certs)
        # The context (and its parsed trust store) is built once per trust setting.
        self.assertIs(
            a.clientConnectionForTLS(None).get_context(),
            b.clientConnectionForTLS(None).get_context(),
        )

    async def test_opportunistic_verified(self) -> None:
        peer = ReceiverPeer(self, tls=self.cert("mx.b.test"))
        results = await self.courier(peer.port, ca_certificates=self.ca_certs).deliver(Item())
        self.assertEqual(results[0].outcome, Outcome.DELIVERED)
        self.assertTrue(self.tls_events()[0].endswith(" verified"))

    async def test_opportunistic_handshake_failure_falls_back_to_plain(self) -> None:
        def script(line: str, conn: Any) -> bytes | None:
            if line == "STARTTLS":
                conn.transport.write(b"220 go ahead\r\n")
                conn.transport.write(b"this is not a TLS server hello\r\n" * 10)
                return None
            if line.startswith("EHLO"):
                return b"250-fake.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n"
            return default_script(line, conn)

        peer = ScriptedPeer(self, script, accept_data)
        results = await self.courier(peer.port).deliver(Item())
        self.assertEqual(results[0].outcome, Outcome.DELIVERED)
        self.assertEqual(len(peer.connections), 2)
        self.assertNotIn(b"STARTTLS", peer.connections[1].received)
        self.assertIn("retrying without TLS", self.log_text())
        self.assertEqual(self.tls_events(), ["none"])

    async def test_policy_none_never_starttls(self) -> None:
        peer = ReceiverPeer(self, tls=self.cert("mx.b.test"))
        courier = self.courier(peer.port, tls_policy={"b.test": TLSPolicy.NONE})
        results = await courier.deliver(Item())
        self.assertEqual(results[0].outcome, Outcome.DELIVERED)
        self.assertEqual(peer.messages()[0].envelope.tls, None)

    async def test_smarthost_auth_over_starttls(self) -> None:
        peer = ReceiverPeer(self, tls=self.cert("smtp.relay.test"), auth=True)
        smarthost = Smarthost("smtp.relay.test", peer.port, username="me@b.test", password="secret")
        courier = self.courier(25, smarthost=smarthost, ca_certificates=self.ca_certs)
        results = await courier.deliver(Item())
        self.assertEqual(results[0].outcome, Outcome.DELIVERED, results)
        self.assertEqual(results[0].remote_mta, "smtp.relay.test [127.0.0.1]")
        envelope = peer.messages()[0].envelope
        self.assertEqual(envelope.authenticated_as, "me@b.test")
        self.assertEqual(envelope.protocol, "ESMTPSA")
        self.assertNotIn(("b.test", "MX"), self.dns.queries)
        self.assertNotIn("secret", self.log_text())

    async def test_smarthost_implicit_tls(self) -> None:
        peer = ReceiverPeer(self, tls=self.cert("smtp.relay.test"), auth=True, implicit_tls=True)
        smarthost = Smarthost("smtp.relay.test", peer.port, "me@b.test", "secret", "implicit")
        courier = self.courier(25, smarthost=smarthost, ca_certificates=self.ca_certs)
        results = await courier.deliver(Item())
        self.assertEqual(results[0].outcome, Outcome.DELIVERED, results)
        self.assertEqual(peer.messages()[0].envelope.authenticated_as, "me@b.test")
        self.assertTrue(self.tls_events()[0].endswith(" verified"))

    async def test_smarthost_without_tls_gets_no_password(self) -> None:
        peer = ReceiverPeer(self, auth=True)  # offers no STARTTLS
        smarthost = Smarthost("127.0.0.1", peer.port, username="me@b.test", password="secret")
        results = await self.courier(25, smarthost=smarthost).deliver(Item())
        self.assertEqual(results[0].outcome, Outcome.TEMPORARY)
        self.assertEqual(peer.sink.opened, [])


class RobustnessTests(CourierTestCase):
    async def test_unreadable_body_is_temporary(self) -> None:
        peer = ReceiverPeer(self)

        class Broken(Item):
            def open_body(self):  # type: ignore[override]
                raise OSError("gone")

        results = await self.courier(peer.port).deliver(Broken())
        self.assertEqual(results[0].outcome, Outcome.TEMPORARY)
        self.assertIn("cannot read the queued message", results[0].diagnostic)
        self.assertEqual(peer.messages(), [])

    async def test_unexpected_error_is_temporary_not_a_failure(self) -> None:
        courier = self.courier(25)

        def boom(domain: str) -> Any:
            raise RuntimeError("bug")

        courier.resolver.mail_hosts = boom  # type: ignore[method-assign]
        results = await courier.deliver(Item())
        self.assertEqual([(r.outcome, r.status) for r in results], [(Outcome.TEMPORARY, "4.3.0")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ConfigTests(CourierTestCase):
    async def test_from_config(self) -> None:
        from mailhub.config import RelayConfig
        from mailhub.config import Smarthost as SmarthostConfig
        from mailhub.relay.courier import courier_from_config

        peer = ReceiverPeer(self)
        secret = Path(self.mktemp())
        secret.write_text("pw\n")
        port = self.dns.port.getHost().port  # type: ignore[union-attr]
        relay = RelayConfig(
            routes=(("c.test", "127.0.0.1", peer.port),),
            tls="none",
            tls_policy=(("d.test", "verify"),),
            nameservers=(("127.0.0.1", port),),
            port=peer.port,
            smarthost=None,
        )
        courier = courier_from_config(relay, "a.test")
        self.addCleanup(courier.close)
        self.assertEqual(courier.routes, {"c.test": ("127.0.0.1", peer.port)})
        self.assertEqual(courier.default_tls, TLSPolicy.NONE)
        self.assertEqual(courier.tls_policy, {"d.test": TLSPolicy.VERIFY})
        # [relay] reuse_* reach the connection pool
        self.assertEqual(
            (courier.pool.idle_timeout, courier.pool.max_messages, courier.pool.max_age),
            (RelayConfig.reuse_idle_time, RelayConfig.reuse_max_messages, 300.0),
        )
        no_reuse = courier_from_config(
            RelayConfig(reuse_idle_time=0, reuse_max_messages=7, reuse_max_age=9), "a.test"
        )
        self.addCleanup(no_reuse.close)
        self.assertEqual((no_reuse.pool.max_messages, no_reuse.pool.max_age), (1, 9))
        tuned = courier_from_config(
            RelayConfig(reuse_idle_time=2, reuse_max_messages=7, reuse_max_age=9), "a.test"
        )
        self.addCleanup(tuned.close)
        self.assertEqual((tuned.pool.idle_timeout, tuned.pool.max_messages), (2, 7))
        results = await courier.deliver(Item())  # b.test via the configured name server
        self.assertEqual(results[0].outcome, Outcome.DELIVERED)
        with_smarthost = courier_from_config(
            RelayConfig(
                smarthost=SmarthostConfig("smtp.relay.test", 465, "implicit", "me", secret)
            ),
            "a.test",
        )
        self.assertEqual(
            with_smarthost.smarthost, Smarthost("smtp.relay.test", 465, "me", "pw", "implicit")
        )
        self.assertNotIn("pw", repr(with_smarthost.smarthost))
