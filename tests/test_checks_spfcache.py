"""checks.spf.SPFCache: an SPF result is given again only while every DNS answer it was made of
is within its TTL, and never when it depends on the message (local-part, time) or on a failure."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks.inbound import Policy, Verdict, judge_with
from mailhub.checks.resolver import CachingResolver
from mailhub.checks.spf import SPFCache, SPFResult, check_host, check_smtp
from mailhub.envelope import Envelope, Recipient
from tests.support.checkdns import MemoryResolver


def zone(*txt: tuple[str, bytes, float]) -> MemoryResolver:
    """Names with one TXT record each, and its TTL."""
    dns = MemoryResolver()
    for name, record, ttl in txt:
        dns.answer(name, "TXT", record, ttl=ttl)
    return dns


class SPFCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.records = zone(
            ("a.test", b"v=spf1 ip4:192.0.2.1 include:b.test -all", 300),
            ("b.test", b"v=spf1 ip4:192.0.2.2 -all", 60),
        )
        self.resolver = CachingResolver(self.records, self.clock)
        self.cache = SPFCache(self.resolver, self.clock)

    def check(self, ip: str = "192.0.2.1", sender: str = "alice@a.test", **kw: Any) -> SPFResult:
        domain = kw.pop("domain", sender.rpartition("@")[2])
        d = defer.Deferred.fromCoroutine(
            check_host(self.resolver, ip, domain, sender, cache=self.cache, **kw)
        )
        return self.successResultOf(d)

    def test_reused_within_the_ttls(self) -> None:
        first = self.check()
        asked = len(self.records.queries)
        hits = self.resolver.hits
        self.clock.advance(59)
        again = self.check(sender="bob@a.test")  # another local-part: same result
        self.assertEqual(again, first)
        self.assertEqual(first.result, "pass")
        self.assertEqual(self.cache.hits, 1)
        self.assertEqual((len(self.records.queries), self.resolver.hits), (asked, hits))

    def test_not_reused_after_the_shortest_ttl(self) -> None:
        """The included b.test's 60 s, not a.test's 300 s, bound the result."""
        self.assertEqual(self.check("192.0.2.2").result, "pass")
        self.records.answer("b.test", "TXT", b"v=spf1 -all", ttl=60)
        self.clock.advance(59)
        self.assertEqual(self.check("192.0.2.2").result, "pass")  # still within both TTLs
        self.clock.advance(2)
        self.assertEqual(self.check("192.0.2.2").result, "fail")  # b.test asked again
        self.assertEqual(self.cache.hits, 1)

    def test_key_has_address_domain_and_helo(self) -> None:
        self.assertEqual(self.check("192.0.2.1").result, "pass")
        self.assertEqual(self.check("192.0.2.9").result, "fail")
        self.assertEqual(self.check("192.0.2.1", helo="other.test").result, "pass")
        self.assertEqual(self.cache.hits, 0)
        self.assertEqual(len(self.cache), 3)

    def test_local_part_macro_not_cached(self) -> None:
        self.records.answer("l.test", "TXT", b"v=spf1 exists:%{l}.ok.l.test -all")
        self.records.answer("alice.ok.l.test", "A", "127.0.0.2")
        self.records.answer("bob.ok.l.test", "A", nxdomain=True)
        self.assertEqual(self.check(sender="alice@l.test").result, "pass")
        self.assertEqual(self.check(sender="bob@l.test").result, "fail")
        self.assertEqual(len(self.cache), 0)

    def test_temperror_not_cached(self) -> None:
        self.records.tempfail.add(("a.test", "TXT"))
        self.assertEqual(self.check().result, "temperror")
        self.records.answer("a.test", "TXT", b"v=spf1 ip4:192.0.2.1 -all")
        self.assertEqual(self.check().result, "pass")

    def test_answer_with_zero_ttl_not_cached(self) -> None:
        self.records.answer("z.test", "TXT", b"v=spf1 ip4:192.0.2.1 -all", ttl=0)
        self.assertEqual(self.check(sender="a@z.test").result, "pass")
        self.assertEqual(len(self.cache), 0)

    def test_no_record_cached_as_none(self) -> None:
        self.records.answer("n.test", "TXT", nxdomain=True, ttl=120)
        self.assertEqual(self.check(sender="a@n.test").result, "none")
        self.assertEqual(self.check(sender="a@n.test").result, "none")
        self.assertEqual(self.cache.hits, 1)
        self.clock.advance(121)
        self.records.answer("n.test", "TXT", b"v=spf1 -all")
        self.assertEqual(self.check(sender="a@n.test").result, "fail")

    def test_check_smtp_uses_it_for_both_identities(self) -> None:
        self.records.answer("mx.a.test", "TXT", b"v=spf1 a -all")
        self.records.answer("mx.a.test", "A", "192.0.2.1")

        def smtp() -> Any:
            d = defer.Deferred.fromCoroutine(
                check_smtp(
                    self.resolver, "192.0.2.1", "alice@a.test", "mx.a.test", cache=self.cache
                )
            )
            return self.successResultOf(d)

        first, second = smtp(), smtp()
        self.assertEqual((second.mailfrom.result, second.helo.result), ("pass", "pass"))
        self.assertEqual(second, first)
        self.assertEqual(self.cache.hits, 2)


class JudgeWithTests(SynchronousTestCase):
    def test_real_checks_keep_spf_results(self) -> None:
        """A server's second message from the same client asks nothing: the SPF results and
        the DMARC record discovered are kept, and the verdict comes at once (no coroutine)."""
        clock = Clock()
        records = MemoryResolver(
            txt={
                "a.test": [b"v=spf1 ip4:192.0.2.1 -all"],
                "mx.a.test": [b"v=spf1 ip4:192.0.2.1 -all"],
                "_dmarc.a.test": [b"v=DMARC1; p=reject"],
            }
        )
        resolver = CachingResolver(records, clock)
        bound = judge_with(resolver, authserv_id="mx.b.test", policy=Policy(), clock=clock)
        envelope = Envelope(
            "Q1",
            "alice@a.test",
            [Recipient("bob@b.test", "bob@b.test")],
            helo="mx.a.test",
            client_address="192.0.2.1",
        )
        message = b"From: alice@a.test\r\nSubject: hi\r\n\r\nbody\r\n"
        lookups = []
        verdicts = []
        for _ in range(3):
            before = resolver.hits + resolver.misses
            judged = bound(message, envelope)
            if not isinstance(judged, Verdict):
                judged = self.successResultOf(defer.Deferred.fromCoroutine(judged))
            verdicts.append(judged)
            lookups.append(resolver.hits + resolver.misses - before)
        self.assertEqual(lookups, [3, 0, 0])
        self.assertIsInstance(bound(message, envelope), Verdict)
        self.assertEqual(verdicts[2].results, verdicts[0].results)
        self.assertEqual(
            [(r.method, r.result) for r in verdicts[2].results.results],
            [("spf", "pass"), ("dkim", "none"), ("arc", "none"), ("dmarc", "pass")],
        )


class FailedLookupTests(SynchronousTestCase):
    def test_tolerated_failure_not_cached(self) -> None:
        """RFC 7208 5.5: a PTR lookup that fails is no match, so the record says fail; that
        fail is not kept, though every answer that was read is in the DNS cache."""
        clock = Clock()
        records = MemoryResolver(txt={"p.test": [b"v=spf1 ptr -all"]})
        records.tempfail.add("1.2.0.192.in-addr.arpa")
        resolver = CachingResolver(records, clock)
        cache = SPFCache(resolver, clock)

        def check() -> SPFResult:
            d = defer.Deferred.fromCoroutine(
                check_host(resolver, "192.0.2.1", "p.test", "a@p.test", cache=cache)
            )
            return self.successResultOf(d)

        self.assertEqual(check().result, "fail")
        self.assertEqual(len(cache), 0)
        records.tempfail.clear()
        records.answer("1.2.0.192.in-addr.arpa", "PTR", "mx.p.test")
        records.answer("mx.p.test", "A", "192.0.2.1")
        self.assertEqual(check().result, "pass")
        self.assertEqual(len(cache), 1)
