"""checks.inbound.judge with the real checks (SPF, DKIM, DMARC, ARC) against an in-memory
resolver: what the header says and what the policy does, message by message."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mailhub.checks.inbound import (
    ACCEPT,
    REJECT,
    TEMPFAIL,
    DomainPolicy,
    Policy,
    Verdict,
    judge,
)
from mailhub.envelope import Envelope, Recipient
from tests.support.checkdns import MemoryResolver
from tests.support.dkimkeys import message, rsa_key, sign

AUTHSERV = "mx.example.net"


def zone() -> MemoryResolver:
    """example.com: SPF for 192.0.2.0/24 (-all), a DKIM key (selector sel), DMARC p=reject."""
    return MemoryResolver(
        txt={
            "example.com": [b"v=spf1 ip4:192.0.2.0/24 -all"],
            "sel._domainkey.example.com": [rsa_key()[1]],
            "_dmarc.example.com": [b"v=DMARC1; p=reject"],
        }
    )


def envelope(client: str = "192.0.2.1", mail_from: str = "alice@example.com") -> Envelope:
    return Envelope(
        queue_id="Q1",
        mail_from=mail_from,
        recipients=[Recipient("bob@example.net", "bob@example.net")],
        helo="mail.example.com",
        client_address=client,
        server_name=AUTHSERV,
    )


class RealChecks(TestCase):
    async def judged(
        self, dns: MemoryResolver, msg: bytes, env: Envelope | None = None, **kw: Any
    ) -> Verdict:
        verdict: Verdict = await judge(
            dns,
            msg,
            env or envelope(),
            authserv_id=AUTHSERV,
            policy=kw.pop("policy", Policy()),
            clock=kw.pop("clock", Clock()),
        )
        return verdict

    def results(self, verdict: Verdict) -> dict[str, Any]:
        return {r.method: r for r in verdict.results.results}

    async def test_signed_and_aligned_passes(self) -> None:
        verdict = await self.judged(zone(), sign(message()))
        self.assertEqual(verdict.action, ACCEPT)
        header = verdict.results.header().decode()
        self.assertTrue(header.startswith(f"Authentication-Results: {AUTHSERV};"), header)
        for word in (
            "spf=pass",
            "smtp.mailfrom=alice@example.com",
            "dkim=pass",
            "header.d=example.com",
            "dmarc=pass",
            "header.from=example.com",
        ):
            self.assertIn(word, header)

    async def test_body_changed_in_transit_fails_and_p_reject_refuses(self) -> None:
        signed = sign(message())
        changed = signed.replace(b"Hello.", b"Hullo.")
        # From a host SPF does not list either: nothing aligned passes.
        verdict = await self.judged(zone(), changed, envelope(client="198.51.100.7"))
        r = self.results(verdict)
        self.assertEqual(r["dkim"].result, "fail")
        self.assertIn("body", r["dkim"].reason)
        self.assertEqual(r["spf"].result, "fail")
        self.assertEqual(r["dmarc"].result, "fail")
        self.assertEqual(verdict.action, REJECT)
        assert verdict.reply is not None
        self.assertEqual((verdict.reply.code, verdict.reply.enhanced), (550, "5.7.1"))

    async def test_from_not_aligned_is_dmarc_fail_in_words(self) -> None:
        dns = zone()
        dns.add_txt("_dmarc.other.org", b"v=DMARC1; p=none")
        msg = sign(message(from_=b"Carol <carol@other.org>"))
        verdict = await self.judged(dns, msg)
        r = self.results(verdict)
        self.assertEqual(r["dkim"].result, "pass")
        self.assertEqual(r["dmarc"].result, "fail")
        self.assertIn("example.com", r["dmarc"].reason)
        self.assertIn("other.org", r["dmarc"].reason)
        self.assertEqual(verdict.action, ACCEPT)  # p=none: only recorded

    async def test_dns_failures_are_temporary_where_policy_would_refuse(self) -> None:
        unsigned = message()
        dns = zone()
        dns.tempfail |= {"example.com", "_dmarc.example.com"}
        verdict = await self.judged(dns, unsigned)
        r = self.results(verdict)
        self.assertEqual((r["spf"].result, r["dmarc"].result), ("temperror", "temperror"))
        self.assertEqual(verdict.action, TEMPFAIL)
        assert verdict.reply is not None
        self.assertEqual(verdict.reply.code, 451)
        # Where the operator would not refuse anyway, it goes in, marked.
        lenient = Policy(default=DomainPolicy(dmarc_reject="none", spf_fail="mark"))
        verdict = await self.judged(dns, unsigned, policy=lenient)
        self.assertEqual(verdict.action, ACCEPT)
        self.assertEqual(self.results(verdict)["spf"].result, "temperror")

    async def test_dev_stack_records_and_never_refuses(self) -> None:
        changed = sign(message()).replace(b"Hello.", b"Hullo.")
        verdict = await self.judged(
            zone(), changed, envelope(client="198.51.100.7"), policy=Policy(dev=True)
        )
        self.assertEqual((verdict.action, verdict.would), (ACCEPT, REJECT))
        self.assertIn("would refuse it (550 5.7.1)", self.results(verdict)["dmarc"].reason)

    async def test_looping_spf_is_permerror_without_traceback(self) -> None:
        dns = zone()
        dns.set_txt("example.com", b"v=spf1 include:example.com -all")
        verdict = await self.judged(dns, message())
        self.assertEqual(self.results(verdict)["spf"].result, "permerror")
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_one_budget_caps_the_lookups(self) -> None:
        dns = zone()
        verdict = await self.judged(dns, sign(message()), policy=Policy(dns_budget=2))
        # The work stops at the cap: no more lookups than allowed, and a result for each.
        self.assertLessEqual(len(dns.queries), 3)
        self.assertEqual(sorted(self.results(verdict)), ["arc", "dkim", "dmarc", "spf"])

    async def test_a_silent_dns_meets_the_deadline(self) -> None:
        clock = Clock()
        silent = MemoryResolver()
        silent.silent = True
        d = defer.Deferred.fromCoroutine(
            self.judged(silent, sign(message()), clock=clock, policy=Policy(timeout=20))
        )
        self.assertNoResult(d)
        clock.advance(20)
        clock.advance(0)
        verdict = self.successResultOf(d)
        r = self.results(verdict)
        self.assertEqual((r["spf"].result, r["dkim"].result), ("temperror", "temperror"))
        self.assertEqual(verdict.action, TEMPFAIL)
