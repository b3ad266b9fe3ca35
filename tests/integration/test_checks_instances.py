"""Mail authentication between mailhub instances (issue 14), all on 127.0.0.1 with one local
DNS server (tests/support/localdns.py) answering the test zones' TXT records.

A (a.test, the dev stack's behaviour) signs what alice submits with its DKIM keys (made as
``mailhub dkim keygen`` makes them, published in the zone) and relays it by MX to B (b.test, a
production config: it refuses and quarantines); B judges it: SPF on 127.0.0.1, DKIM, DMARC and
ARC, and writes its ``Authentication-Results: mx.b.test``. C (c.test) receives what B forwards
through an alias, ARC-sealed by B.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import email
import email.message
import email.policy
import imaplib
import smtplib
from pathlib import Path
from typing import Any

import argon2
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.protocols import portforward

from mailhub.checks.signing import sign
from mailhub.config import (
    CheckPolicy,
    Config,
    DomainsConfig,
    ListenersConfig,
    QueueConfig,
    RelayConfig,
    SMTPConfig,
    TLSConfig,
    dev_config,
)
from mailhub.service import MailhubService
from mailhub.users import UserDB
from tests.support.dkim import make_keys, records
from tests.support.instances import LOOPBACK, Instances
from tests.support.tls import CertificateAuthority, client_context

FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
SPF_LOCAL = "v=spf1 ip4:127.0.0.1 -all"


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def results_of(msg: email.message.EmailMessage, authserv_id: str) -> list[str]:
    """The values of the Authentication-Results fields of ``authserv_id``, unfolded."""
    out = []
    for value in msg.get_all("Authentication-Results") or []:
        text = " ".join(str(value).split())
        if text.split(";")[0].strip().lower() == authserv_id:
            out.append(text)
    return out


class Mangler(portforward.ProxyServer):
    """A relay step that changes the body: every "$" becomes "#" (one octet, so it cannot
    straddle two reads); everything else passes as it is."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data.replace(b"$", b"#"))


class Authentication(Instances):
    timeout = 90
    ZONE = {
        "a.test": {"TXT": [SPF_LOCAL]},
        "_dmarc.a.test": {"TXT": ["v=DMARC1; p=none"]},
        "b.test": {"MX": [(10, "mx.b.test")], "TXT": [SPF_LOCAL]},
        "mx.b.test": {"A": ["127.0.0.1"]},
        "c.test": {"MX": [(10, "mx.c.test")]},
        "mx.c.test": {"A": ["127.0.0.1"]},
    }

    # -- the zone --------------------------------------------------------------------------------

    def dmarc(self, policy: str) -> None:
        self.publish("_dmarc.a.test", "TXT", f"v=DMARC1; p={policy}")

    # -- the instances ---------------------------------------------------------------------------

    def instance_a(self, mx_port: int, *, keys: bool = True, relay_tls: str = "opportunistic"):
        """A: alice submits here; its DKIM keys (RSA and Ed25519) are published in the zone."""
        data = Path(self.mktemp()).absolute()
        if keys:
            for name, value in records(make_keys(data / "dkim", "a.test")).items():
                self.publish(name, "TXT", value)
        config = dataclasses.replace(
            dev_config(data, hostname="mx.a.test"),
            domains=DomainsConfig(local=("a.test",), catch_all=("a.test",)),
            listeners=ListenersConfig(smtp=(LOOPBACK,), submission=(LOOPBACK,)),
            relay=RelayConfig(nameservers=self.nameservers, port=mx_port, tls=relay_tls),
            queue=QueueConfig(retry_schedule=(0.5,), delay_notice=0),
            checks=self.checks(),
        )
        return self.start(config)

    def instance_b(
        self,
        *,
        dev: bool = False,
        policy: CheckPolicy | None = None,
        aliases: str = "",
        forward_port: int = 25,
        readers: bool = False,
        keys: bool = False,
        **checks: Any,
    ) -> MailhubService:
        """B: a production server for b.test (refuses, quarantines) unless ``dev``; with
        ``readers`` bob can read his mail over IMAPS; with ``keys`` b.test has a DKIM key (which
        seals what B forwards); ``aliases`` is its aliases file."""
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        data = directory / "data"
        if keys:
            for name, value in records(make_keys(data / "dkim", "b.test")).items():
                self.publish(name, "TXT", value)
        listeners: dict[str, tuple[str, ...]] = {"smtp": (LOOPBACK,)}
        more: dict[str, Any] = {}
        if readers:
            ca = CertificateAuthority()
            self.b_context = client_context(ca.write_root(directory))
            cert, key = ca.issue(["localhost"]).write(directory, "mail")
            users = UserDB(directory / "users", hasher=FAST)
            users.add("bob@b.test", "bob's password")
            listeners["imaps"] = (LOOPBACK,)
            more = {"tls": TLSConfig(certificate=cert, key=key), "users_file": directory / "users"}
        if aliases:
            (directory / "aliases").write_text(aliases)
            more["aliases_file"] = directory / "aliases"
        config = Config(
            source="<b.test>",
            hostname="mx.b.test",
            data_dir=data,
            dev=dev,
            domains=DomainsConfig(local=("b.test",), catch_all=("b.test",)),
            listeners=ListenersConfig(**listeners),
            smtp=SMTPConfig(),
            relay=RelayConfig(nameservers=self.nameservers, port=forward_port, tls="none"),
            queue=QueueConfig(retry_schedule=(0.5,), delay_notice=0),
            checks=self.checks(policy=policy or CheckPolicy(), **checks),
            **more,
        )
        return self.start(config)

    def instance_c(self) -> MailhubService:
        config = dataclasses.replace(
            dev_config(Path(self.mktemp()).absolute(), hostname="mx.c.test"),
            domains=DomainsConfig(local=("c.test",), catch_all=("c.test",)),
            listeners=ListenersConfig(smtp=(LOOPBACK,)),
            checks=self.checks(),
        )
        return self.start(config)

    def mangling_relay(self, to_port: int) -> int:
        """A TCP relay step to 127.0.0.1:``to_port`` that changes the body in transit."""
        factory = portforward.ProxyFactory("127.0.0.1", to_port)
        factory.protocol = Mangler
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(listening.stopListening)
        port: int = listening.getHost().port
        return port

    # -- mail ------------------------------------------------------------------------------------

    def send_direct(self, service: MailhubService, message: bytes, to: str = "bob@b.test") -> Any:
        """A message straight to ``service``'s port 25 from 127.0.0.1, as mx.a.test."""
        port = self.port(service, "smtp")

        def send() -> Any:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="mx.a.test", timeout=30) as c:
                try:
                    return c.sendmail("alice@a.test", [to], message)
                except smtplib.SMTPDataError as e:
                    return (e.smtp_code, e.smtp_error.decode())

        return deferToThread(send)

    def signed(self, key_dir: Path, body: bytes = b"Hello B.\r\n") -> bytes:
        """A message from alice@a.test signed with a.test's keys (published in the zone)."""
        key_files = make_keys(key_dir, "a.test")
        for name, value in records(key_files).items():
            self.publish(name, "TXT", value)
        message = (
            b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: direct\r\n"
            b"Date: Mon, 01 Jan 2024 12:00:00 +0000\r\nMessage-ID: <d1@a.test>\r\n\r\n" + body
        )
        return sign(message, [k.key for k in key_files]) + message

    # -- the tests -------------------------------------------------------------------------------

    async def test_a_signs_b_verifies_pass(self) -> None:
        b = self.instance_b()
        a = self.instance_a(self.port(b, "smtp"))
        self.assertEqual(await self.submit(a, ["bob@b.test"]), {})
        await self.until(lambda: self.stored(b, "bob@b.test"), "the message at B")
        [raw] = self.stored(b, "bob@b.test")
        msg = parse(raw)
        [ours] = results_of(msg, "mx.b.test")
        for word in ("spf=pass", "smtp.mailfrom=alice@a.test", "dmarc=pass", "header.from=a.test"):
            self.assertIn(word, ours)
        # Both of A's signatures (RSA and Ed25519) verify.
        self.assertEqual(ours.count("dkim=pass"), 2, ours)
        self.assertIn("header.a=rsa-sha256", ours)
        self.assertIn("header.a=ed25519-sha256", ours)
        # Our results sit on top, above B's Received line (below the delivery's Return-Path).
        names = [line.split(b":")[0] for line in raw.split(b"\r\n") if line[:1] not in b" \t"]
        self.assertEqual(names[:3], [b"Return-Path", b"Authentication-Results", b"Received"])

    async def test_body_changed_in_transit_fails_dkim(self) -> None:
        b = self.instance_b()
        relay = self.mangling_relay(self.port(b, "smtp"))
        a = self.instance_a(relay, relay_tls="none")  # in clear, so the relay step can change it
        self.assertEqual(await self.submit(a, ["bob@b.test"], body="costs 5$\n"), {})
        await self.until(lambda: self.stored(b, "bob@b.test"), "the message at B")
        msg = parse(self.stored(b, "bob@b.test")[0])
        self.assertIn("costs 5#", msg.get_content())
        [ours] = results_of(msg, "mx.b.test")
        self.assertEqual(ours.count("dkim=fail"), 2, ours)
        self.assertIn("body", ours)  # the reason: the body hash does not match
        # SPF still passes for a.test, aligned: DMARC passes on SPF alone.
        self.assertIn("spf=pass", ours)
        self.assertIn("dmarc=pass", ours)

    async def test_from_not_aligned_is_dmarc_fail(self) -> None:
        self.publish("_dmarc.other.test", "TXT", "v=DMARC1; p=none")
        b = self.instance_b()
        a = self.instance_a(self.port(b, "smtp"))
        self.assertEqual(await self.submit(a, ["bob@b.test"], sender="alice@other.test"), {})
        await self.until(lambda: self.stored(b, "bob@b.test"), "the message at B")
        [ours] = results_of(parse(self.stored(b, "bob@b.test")[0]), "mx.b.test")
        self.assertIn("spf=pass", ours)  # for a.test, the envelope's domain
        self.assertIn("dmarc=fail", ours)
        self.assertIn("header.from=other.test", ours)
        self.assertIn("a.test", ours.split("dmarc=fail", 1)[1])  # the reason names both domains

    async def test_p_reject_is_550_at_b_and_a_bounces(self) -> None:
        # a.test neither signs nor lists the host: DMARC fails, and its policy is reject.
        self.publish("a.test", "TXT", "v=spf1 ~all")
        self.dmarc("reject")
        b = self.instance_b()
        a = self.instance_a(self.port(b, "smtp"), keys=False)
        self.assertEqual(await self.submit(a, ["bob@b.test"]), {})
        await self.until(lambda: self.stored(a, "alice@a.test"), "the bounce at A")
        bounce = parse(self.stored(a, "alice@a.test")[0])
        self.assertEqual(bounce.get_content_type(), "multipart/report")
        text = bounce.as_string()
        self.assertIn("bob@b.test", text)
        self.assertIn("5.7.1", text)
        self.assertIn("DMARC", text)
        self.assertEqual(self.stored(b, "bob@b.test"), [])

    async def test_p_quarantine_goes_to_junk_read_over_imap(self) -> None:
        self.publish("a.test", "TXT", "v=spf1 ~all")
        self.dmarc("quarantine")
        b = self.instance_b(readers=True)
        a = self.instance_a(self.port(b, "smtp"), keys=False)
        self.assertEqual(await self.submit(a, ["bob@b.test"], body="suspicious\n"), {})
        await self.until(lambda: self.stored(b, "bob@b.test", "Junk"), "the message in Junk")
        port, context = self.port(b, "imaps"), self.b_context

        def read() -> tuple[bytes, int, list[bytes]]:
            with imaplib.IMAP4_SSL("localhost", port, ssl_context=context, timeout=10) as imap:
                imap.login("bob@b.test", "bob's password")
                folders = imap.list()[1]
                status, data = imap.select("INBOX", readonly=True)
                inbox = int(data[0])
                imap.select("Junk", readonly=True)
                status, fetched = imap.uid("FETCH", "1:*", "(BODY.PEEK[])")
                assert status == "OK", fetched
                return fetched[0][1], inbox, folders

        raw, inbox, folders = await deferToThread(read)
        self.assertEqual(inbox, 0)
        self.assertTrue(any(b"\\Junk" in f and b"Junk" in f for f in folders), folders)
        msg = parse(raw)
        self.assertIn("suspicious", msg.get_content())
        [ours] = results_of(msg, "mx.b.test")
        self.assertIn("dmarc=fail", ours)
        self.assertIn("policy.dmarc=quarantine", ours)

    async def test_forwarded_through_an_alias_with_arc(self) -> None:
        c = self.instance_c()
        b = self.instance_b(
            aliases="list@b.test: carol@c.test, bob@b.test\n",
            forward_port=self.port(c, "smtp"),
            keys=True,
        )
        a = self.instance_a(self.port(b, "smtp"))
        self.assertEqual(await self.submit(a, ["list@b.test"]), {})
        await self.until(lambda: self.stored(c, "carol@c.test"), "the copy at C")
        await self.until(lambda: self.stored(b, "bob@b.test"), "the copy at B")
        at_c = parse(self.stored(c, "carol@c.test")[0])
        [c_results] = results_of(at_c, "mx.c.test")
        self.assertIn("arc=pass", c_results)
        self.assertIn("dkim=pass", c_results)  # A's signatures survive the forwarding
        self.assertIn("dmarc=pass", c_results)
        # The chain: B's seal (i=1, d=b.test) over B's own results, which C keeps below its own.
        seal = " ".join(str(at_c["ARC-Seal"]).split())
        self.assertIn("i=1", seal)
        self.assertIn("d=b.test", seal)
        self.assertIn("cv=none", seal)
        aar = " ".join(str(at_c["ARC-Authentication-Results"]).split())
        self.assertTrue(aar.startswith("i=1; mx.b.test;"), aar)
        self.assertIn("dkim=pass", aar)
        self.assertEqual(len(results_of(at_c, "mx.b.test")), 1)
        # B's local copy is not sealed.
        at_b = parse(self.stored(b, "bob@b.test")[0])
        self.assertIsNone(at_b["ARC-Seal"])
        self.assertEqual(len(results_of(at_b, "mx.b.test")), 1)

    async def test_forged_results_with_our_authserv_id_are_removed(self) -> None:
        b = self.instance_b()
        forged = (
            b"Authentication-Results: mx.b.test; dkim=pass header.d=bank.test\r\n"
            b"Authentication-Results: mx.elsewhere.test; spf=pass\r\n"
            b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: forged\r\n\r\nhi\r\n"
        )
        self.assertEqual(await self.send_direct(b, forged), {})
        [raw] = self.stored(b, "bob@b.test")
        msg = parse(raw)
        [ours] = results_of(msg, "mx.b.test")
        self.assertNotIn("bank.test", raw.decode())
        self.assertIn("spf=pass", ours)
        self.assertEqual(results_of(msg, "mx.elsewhere.test"), ["mx.elsewhere.test; spf=pass"])

    async def test_silent_dns_is_451_only_where_the_policy_would_refuse(self) -> None:
        self.dns.authority.silent |= {"a.test", "_dmarc.a.test"}
        message = b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: later\r\n\r\nhi\r\n"
        strict = self.instance_b(dns_timeout=0.5)
        code, text = await self.send_direct(strict, message)
        self.assertEqual(code, 451)
        self.assertTrue(text.startswith("4.7."), text)
        self.assertEqual(self.stored(strict, "bob@b.test"), [])
        lenient = self.instance_b(
            dns_timeout=0.5, policy=CheckPolicy(dmarc_reject="none", spf_fail="mark")
        )
        self.assertEqual(await self.send_direct(lenient, message), {})
        [ours] = results_of(parse(self.stored(lenient, "bob@b.test")[0]), "mx.b.test")
        self.assertIn("spf=temperror", ours)
        self.assertIn("dmarc=temperror", ours)

    async def test_dev_stack_never_refuses_and_records(self) -> None:
        self.publish("a.test", "TXT", "v=spf1 -all")
        self.dmarc("reject")
        # A dev stack judges SPF for where production mail leaves from, not for 127.0.0.1.
        b = self.instance_b(dev=True, dev_sending_ip="192.0.2.10")
        message = b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: dev\r\n\r\nhi\r\n"
        self.assertEqual(await self.send_direct(b, message), {})
        [ours] = results_of(parse(self.stored(b, "bob@b.test")[0]), "mx.b.test")
        self.assertIn("spf=fail", ours)
        self.assertIn("judged for 192.0.2.10", ours)
        self.assertIn("dmarc=fail", ours)
        self.assertIn("would refuse it (550", ours)

    async def test_a_big_message_is_spooled_and_judged(self) -> None:
        # 3 MiB: held in a temporary file (over 1 MiB), read back and verified in a thread.
        b = self.instance_b()
        body = b"".join(b"line %07d of a big message\r\n" % i for i in range(100_000))
        message = self.signed(Path(self.mktemp()), body)
        self.assertEqual(await self.send_direct(b, message), {})
        [raw] = self.stored(b, "bob@b.test")
        [ours] = results_of(parse(raw), "mx.b.test")
        self.assertEqual(ours.count("dkim=pass"), 2, ours)
        self.assertTrue(raw.endswith(message.split(b"\r\n\r\n", 1)[1]))

    async def test_twenty_concurrent_sessions_lose_nothing(self) -> None:
        b = self.instance_b()
        message = self.signed(Path(self.mktemp()))
        port = self.port(b, "smtp")
        sessions, per_session = 20, 3

        def session(n: int) -> int:
            sent = 0
            with smtplib.SMTP("127.0.0.1", port, local_hostname="mx.a.test", timeout=60) as c:
                for i in range(per_session):
                    to = f"user{n}.{i}@b.test"
                    c.sendmail("alice@a.test", [to], message)  # the header is signed as it is
                    sent += 1
            return sent

        def all_sessions() -> list[int]:
            with concurrent.futures.ThreadPoolExecutor(sessions) as pool:
                return list(pool.map(session, range(sessions)))

        self.assertEqual(await deferToThread(all_sessions), [per_session] * sessions)
        for n in range(sessions):
            for i in range(per_session):
                [raw] = self.stored(b, f"user{n}.{i}@b.test")
                [ours] = results_of(parse(raw), "mx.b.test")
                self.assertIn("dkim=pass", ours)
                self.assertIn("dmarc=pass", ours)
