"""The spam score over HTTP with a real rspamd (Debian's ``rspamd``, run privately on 127.0.0.1
by tests/support/rspamd.py, its DNS the test's own): a GTUBE message is spam, a plain one is
scored with described symbols, the SMTP facts reach rspamd, and a stopped rspamd is a clear
502, not a stall. Fakes for the bad answers: tests/test_checks_rspamd.py."""

from __future__ import annotations

import dataclasses
import socket
from email.message import EmailMessage

from twisted.internet import reactor

from mailhub.checks.rspamd import ACTIONS, RspamdClient, ScanFacts
from mailhub.config import ChecksConfig
from tests.support.localdns import LocalDNS
from tests.support.rspamd import Rspamd, free_port, missing
from tests.support.tools import requires
from tests.support.web import WebTestCase

# The GTUBE test string (https://rspamd.com/doc/other/gtube_patterns.html): rspamd rejects it.
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def message(subject: str, body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Shop <shop@example.net>"
    msg["To"] = "buyer@example.com"
    msg["Subject"] = subject
    msg["Message-ID"] = "<1@example.net>"
    msg["Date"] = "Mon, 07 Dec 2026 00:00:00 +0000"
    msg.set_content(body)
    return msg


def checks(url: str) -> ChecksConfig:
    return dataclasses.replace(ChecksConfig(), enabled=False, rspamd=url)


@requires(missing())
class RealRspamd(WebTestCase):
    timeout = 180

    async def test_gtube_spam_plain_scored_facts_sent(self) -> None:
        dns = LocalDNS({})
        dns.start()
        self.addCleanup(dns.stop)
        rspamd = await Rspamd.started(self, dns.address)
        await self.start(checks=checks(rspamd.url))

        await self.hub.send(
            "buyer@example.com",
            message=message("Test", f"Hello.\n\n{GTUBE}\n"),
            sender="shop@example.net",
        )
        gtube = await self.only_id("?q=subject:Test")
        spam = await self.get(f"/api/v1/messages/{gtube}/spam")
        self.assertEqual((spam["configured"], spam["scanned"]), (True, True), spam)
        self.assertEqual(spam["action"], "reject", spam)
        self.assertTrue(spam["is_spam"])
        self.assertGreaterEqual(spam["score"], spam["required_score"])
        self.assertIn("GTUBE", [s["name"] for s in spam["symbols"]])
        self.assertEqual(spam["rspamd"], rspamd.url)
        # The facts of the SMTP session, from our trace fields, as rspamd was told them.
        asked = spam["asked"]
        self.assertEqual(asked["ip"], "127.0.0.1")
        self.assertEqual(asked["from"], "shop@example.net")
        self.assertEqual(asked["rcpt"], ["buyer@example.com"])
        self.assertTrue(asked["queue_id"])
        self.assertIsNone(asked["user"])
        # The answer has the shape the description promises.
        spec = await self.get("/api/v1/openapi.json")
        schema = spec["components"]["schemas"]["SpamScore"]["properties"]
        self.assertEqual(set(spam) - set(schema), set())
        self.assertEqual(set(asked), set(schema["asked"]["properties"]))
        self.assertEqual(set(spam["symbols"][0]), set(schema["symbols"]["items"]["properties"]))
        self.assertIn("/api/v1/messages/{id}/spam", spec["paths"])
        self.assertIn(f"qid: <{asked['queue_id']}>", rspamd.log())  # rspamd logged our id
        self.assertFalse(spam["cached"])
        again = await self.get(f"/api/v1/messages/{gtube}/spam")
        self.assertTrue(again["cached"])
        self.assertEqual(again["score"], spam["score"])

        await self.hub.send(
            "buyer@example.com",
            message=message("FREE MONEY NOW", "Click here to claim your prize.\n"),
            sender="shop@example.net",
        )
        plain = await self.only_id("?q=subject:money")
        spam = await self.get(f"/api/v1/messages/{plain}/spam")
        self.assertEqual(spam["scanned"], True, spam)
        self.assertNotIn("GTUBE", [s["name"] for s in spam["symbols"]])
        self.assertLess(spam["score"], spam["required_score"])
        by_name = {s["name"]: s for s in spam["symbols"]}
        # an all-capitals subject is one of rspamd's own rules, with its words for it
        self.assertIn("SUBJ_ALL_CAPS", by_name, sorted(by_name))
        self.assertGreater(by_name["SUBJ_ALL_CAPS"]["score"], 0)
        self.assertTrue(by_name["SUBJ_ALL_CAPS"]["description"])

    async def test_dns_is_ours(self) -> None:
        """rspamd's DNS is the test's server: an SPF record only it has makes R_SPF_ALLOW, and
        its queries log shows the lookup (a client from 127.0.0.1, as the dev stack's SMTP
        tests send, is local to rspamd, which then skips SPF: so rspamd is asked directly)."""
        dns = LocalDNS({"example.net": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]}})
        dns.start()
        self.addCleanup(dns.stop)
        rspamd = await Rspamd.started(self, dns.address)
        facts = ScanFacts(
            ip="192.0.2.1",
            helo="mail.example.net",
            mail_from="shop@example.net",
            recipients=("buyer@example.com",),
        )
        raw = message("Hello", "Hello.\n").as_bytes()
        report = await RspamdClient(rspamd.url, reactor).check(raw, facts)
        by_name = {s.name: s for s in report.symbols}
        self.assertIn("R_SPF_ALLOW", by_name, sorted(by_name))
        self.assertIn(("example.net", "TXT"), dns.queries)
        self.assertLess(by_name["R_SPF_ALLOW"].score, 0)  # it speaks for the message

    async def test_rspamd_stopped(self) -> None:
        dns = LocalDNS({})
        dns.start()
        self.addCleanup(dns.stop)
        rspamd = await Rspamd.started(self, dns.address)
        await self.start(checks=checks(rspamd.url))
        await self.send(subject="Hello")
        found = await self.only_id()
        await rspamd.stop()
        response = await self.call("GET", f"/api/v1/messages/{found}/spam")
        self.assertEqual(response.code, 502, response.body)
        self.assertEqual(response.json["configured"], True)
        self.assertIn("refused the connection (is it running?)", response.json["error"])

    async def test_port_taken_meanwhile(self) -> None:
        """rspamd cannot bind port 0: the harness picks a free port and hands it over; when
        another process takes it in between, rspamd exits and another port is tried."""
        dns = LocalDNS({})
        dns.start()
        self.addCleanup(dns.stop)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            handed = iter([taken.getsockname()[1], free_port()])
            rspamd = await Rspamd.started(self, dns.address, ports=lambda: next(handed))
            self.assertNotEqual(rspamd.port, taken.getsockname()[1])
        report = await RspamdClient(rspamd.url, reactor).check(
            b"Subject: hi\r\n\r\nhi\r\n", ScanFacts()
        )
        self.assertIn(report.action, ACTIONS)


class NotConfigured(WebTestCase):
    async def test_says_so(self) -> None:
        await self.start()
        await self.send(subject="Hello")
        found = await self.only_id()
        spam = await self.get(f"/api/v1/messages/{found}/spam")
        self.assertEqual(spam["configured"], False)
        self.assertIn("[checks] rspamd", spam["why"])
        missing_one = await self.call("GET", "/api/v1/messages/bm8/spam")
        self.assertEqual(missing_one.code, 404)
        wrong = await self.call("POST", f"/api/v1/messages/{found}/spam")
        self.assertEqual(wrong.code, 405)
