"""Signed mail judged at once (issue 14's speed target for signed mail): ``judge_at_once``
verifies every DKIM signature with the key records from the DNS cache
(``dkimverify.verify_at_once``, ``CachingResolver.cached_txt``) and gives ``judge``'s verdict,
field by field: pass, fail (a header or the body changed), not aligned, several signatures,
keys missing, revoked or for another algorithm, cached or not; anything it cannot judge at once
(a key not cached or expired, a lookup that failed, ARC fields, the dev stack's own keys, a
message verified in a thread, a DNS budget too small) takes the long way."""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks import dkimverify
from mailhub.checks.dns import Lookup
from mailhub.checks.inbound import Policy, Verdict, judge, judge_with
from mailhub.checks.keys import KeyFile
from mailhub.checks.resolver import CachingResolver
from tests.support.checkdns import MemoryResolver
from tests.support.dkimkeys import ed25519_key, message, rsa_key, sign

_, RSA_RECORD = rsa_key()
_, ED_RECORD = ed25519_key()


def zone(ttl: float = 300.0) -> MemoryResolver:
    return MemoryResolver(
        txt={
            "pass.test": [b"v=spf1 ip4:192.0.2.0/24 -all"],
            "_dmarc.pass.test": [b"v=DMARC1; p=reject"],
            "_dmarc.other.test": [b"v=DMARC1; p=quarantine"],
            "other.test": [b"v=spf1 -all"],
            "sel._domainkey.pass.test": [RSA_RECORD],
            "ed._domainkey.pass.test": [ED_RECORD],
            "sel._domainkey.other.test": [RSA_RECORD],
            "revoked._domainkey.pass.test": [b"v=DKIM1; k=rsa; p="],
            "wrongkind._domainkey.pass.test": [ED_RECORD],
            "junk._domainkey.pass.test": [b"v=DKIM1; k=rsa; p=not*base64"],
            # missing._domainkey.pass.test: NXDOMAIN
        },
        ttl=ttl,
    )


def base(from_: bytes = b"Alice <alice@pass.test>", body: bytes = b"Hello.\r\n") -> bytes:
    return message(from_, body)


def rsa(msg: bytes, domain: bytes = b"pass.test", selector: bytes = b"sel") -> bytes:
    return sign(msg, domain=domain, selector=selector)


def ed(msg: bytes) -> bytes:
    return sign(msg, domain=b"pass.test", selector=b"ed", algorithm=b"ed25519-sha256")


def changed_header(signed: bytes) -> bytes:
    return signed.replace(b"Subject: lunch", b"Subject: dinner")


def changed_body(signed: bytes) -> bytes:
    return signed.replace(b"Hello.", b"Hello!")


def messages() -> dict[str, bytes]:
    """Signed messages in every state the judgement tells apart."""
    plain = base()
    other_from = base(b"Bob <bob@other.test>")
    good = rsa(plain)
    return {
        "rsa pass": good,
        "ed25519 pass": ed(plain),
        "rsa + ed25519 pass": ed(good),
        "header changed": changed_header(good),
        "body changed": changed_body(good),
        "both changed, two signatures": changed_body(ed(good)),
        "one of two fails": ed(changed_header(good)),  # the RSA signature (below) fails
        "not aligned": rsa(other_from),
        "aligned with the second only": rsa(ed(other_from), b"other.test"),
        "key missing": rsa(plain, selector=b"missing"),
        "key revoked": rsa(plain, selector=b"revoked"),
        "key of another kind": rsa(plain, selector=b"wrongkind"),
        "key unreadable": rsa(plain, selector=b"junk"),
        "malformed signature": b"DKIM-Signature: v=1; a=rsa-sha256; d=pass.test\r\n" + plain,
        "unknown algorithm": b"DKIM-Signature: v=1; a=rsa-sha1; b=x; bh=x; d=pass.test; "
        b"h=from; s=sel\r\n" + plain,
        "mentioned, not signed": b"X-Note: dkim-signature none\r\n" + plain,
        "same key twice": rsa(good),
        "bad From": rsa(base(b"a@pass.test, b@pass.test")),
    }


ENVELOPES = [
    ("192.0.2.1", "alice@pass.test", None),  # SPF pass
    ("198.51.100.9", "alice@pass.test", None),  # SPF fail (-all): refused unless DMARC passes
    ("198.51.100.9", "", None),  # <>: the HELO's SPF
    ("192.0.2.1", "alice@pass.test", "alice"),  # authenticated
]

POLICIES = [Policy(), Policy(dev=True), Policy(dev=True, dev_sending_ip="192.0.2.9")]


def envelope(client: str, sender: str, user: str | None) -> Any:
    from mailhub.envelope import Envelope, Recipient

    return Envelope(
        "Q1",
        sender,
        [Recipient("bob@b.test", "bob@b.test")],
        helo="mx.pass.test",
        client_address=client,
        server_name="mx.b.test",
        authenticated_as=user,
    )


class Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)  # dkimpy signs with today's t=: no clock checks bite
        self.dns = zone()

    def bound(self, policy: Policy, **kwargs: Any) -> Any:
        self.resolver = CachingResolver(self.dns, self.clock)
        return judge_with(
            self.resolver, authserv_id="mx.b.test", policy=policy, clock=self.clock, **kwargs
        )

    def verdict(self, judged: Any) -> Verdict:
        if isinstance(judged, Verdict):
            return judged
        verdict: Verdict = self.successResultOf(defer.Deferred.fromCoroutine(judged))
        return verdict

    def long_way(self, policy: Policy, msg: bytes, env: Any) -> Verdict:
        """``judge`` itself, with the real checks and a fresh DNS cache."""
        resolver = CachingResolver(self.dns, self.clock)
        verdict: Verdict = self.successResultOf(
            defer.Deferred.fromCoroutine(
                judge(resolver, msg, env, authserv_id="mx.b.test", policy=policy, clock=self.clock)
            )
        )
        return verdict


class SameVerdictTests(Base):
    def test_same_verdict_as_the_long_way(self) -> None:
        """Each signed message judged by a fresh server twice (the second time at once, from
        its caches) and by ``judge``: equal verdicts, field by field."""
        at_once = 0
        seen: set[tuple[str, ...]] = set()
        cases = list(itertools.product(POLICIES, ENVELOPES, messages().items()))
        for policy, env_args, (name, msg) in cases:
            env = envelope(*env_args)
            want = self.long_way(policy, msg, env)
            bound = self.bound(policy)
            self.assertEqual(self.verdict(bound(msg, env)), want, (name, policy, env_args))
            second = bound(msg, env)
            if isinstance(second, Verdict):
                at_once += 1
                seen.add(tuple(r.result for r in second.results.results if r.method == "dkim"))
                seen.add((second.action,))
            self.assertEqual(self.verdict(second), want, (name, policy, env_args))
        # Every message whose SPF result the cache keeps came back at once.
        self.assertGreater(at_once, len(cases) * 0.6)
        # The cases compared include passes, fails and the key problems, and refusals.
        for results in [("pass",), ("fail",), ("pass", "pass"), ("pass", "fail"), ("permerror",)]:
            self.assertIn(results, seen)
        self.assertIn(("reject",), seen)
        self.assertIn(("accept",), seen)
        self.assertIn(("junk",), seen)

    def test_each_message_is_verified(self) -> None:
        """Nothing of one message's verification is taken for the next: a good copy passes,
        the same signature over a changed header or body fails, at once each time."""
        bound = self.bound(Policy())
        env = envelope(*ENVELOPES[0])
        good = rsa(base())
        self.verdict(bound(good, env))  # the keys, SPF and DMARC into the caches
        for msg, want in [
            (good, "pass"),
            (changed_header(good), "fail"),
            (good, "pass"),
            (changed_body(good), "fail"),
        ]:
            judged = bound(msg, env)
            self.assertIsInstance(judged, Verdict)
            [dkim] = [r for r in judged.results.results if r.method == "dkim"]
            self.assertEqual(dkim.result, want)


class LongWayTests(Base):
    def assertLongWay(self, bound: Any, msg: bytes, env: Any) -> Verdict:
        judged = bound(msg, env)
        self.assertNotIsInstance(judged, Verdict)
        return self.verdict(judged)

    def test_key_not_cached_yet(self) -> None:
        """SPF and DMARC cached by an unsigned message, the key not yet: the long way, which
        fetches it; then at once."""
        bound = self.bound(Policy())
        env = envelope(*ENVELOPES[0])
        self.verdict(bound(base(), env))
        self.assertIsInstance(bound(base(), env), Verdict)
        signed = rsa(base())
        self.assertLongWay(bound, signed, env)
        self.assertIsInstance(bound(signed, env), Verdict)

    def test_one_of_two_keys_not_cached(self) -> None:
        bound = self.bound(Policy())
        env = envelope(*ENVELOPES[0])
        self.verdict(bound(rsa(base()), env))
        self.assertLongWay(bound, ed(rsa(base())), env)

    def test_expired_key_asked_again(self) -> None:
        self.dns = zone(ttl=60)
        bound = self.bound(Policy())
        env = envelope(*ENVELOPES[0])
        signed = rsa(base())
        self.verdict(bound(signed, env))
        self.assertIsInstance(bound(signed, env), Verdict)
        self.clock.advance(61)
        self.dns.set_txt("sel._domainkey.pass.test", b"v=DKIM1; k=rsa; p=")  # revoked since
        again = self.assertLongWay(bound, signed, env)
        [dkim] = [r for r in again.results.results if r.method == "dkim"]
        self.assertEqual(dkim.result, "permerror")
        self.assertIn("revoked", dkim.reason)

    def test_failed_key_lookup_not_kept(self) -> None:
        self.dns.tempfail.add("sel._domainkey.pass.test")
        bound = self.bound(Policy())
        env = envelope(*ENVELOPES[0])
        signed = rsa(base())
        first = self.verdict(bound(signed, env))
        self.assertEqual(
            [r.result for r in first.results.results if r.method == "dkim"], ["temperror"]
        )
        self.assertLongWay(bound, signed, env)
        self.dns.tempfail.clear()
        self.assertLongWay(bound, signed, env)
        self.assertIsInstance(bound(signed, env), Verdict)

    def test_sealed_mail(self) -> None:
        bound = self.bound(Policy())
        env = envelope(*ENVELOPES[0])
        sealed = b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=x.test; s=s; b=\r\n" + rsa(base())
        first = self.verdict(bound(sealed, env))
        self.assertEqual(self.assertLongWay(bound, sealed, env), first)

    def test_dev_stack_with_own_keys(self) -> None:
        """The dev stack's note on its own keys (``as_receiver``) is judge's: the long way."""

        def own_keys(domain: str) -> list[KeyFile]:
            return []

        bound = self.bound(Policy(dev=True), own_keys=own_keys)
        env = envelope(*ENVELOPES[0])
        signed = rsa(base())
        first = self.verdict(bound(signed, env))
        self.assertEqual(self.assertLongWay(bound, signed, env), first)
        # Unsigned mail is still judged at once there.
        self.verdict(bound(base(), env))
        self.assertIsInstance(bound(base(), env), Verdict)

    def test_verified_in_a_thread(self) -> None:
        """Messages over ``INLINE_LIMIT`` are verified in the thread pool: the long way."""
        self.patch(dkimverify, "INLINE_LIMIT", 100)
        msg = rsa(base())
        self.assertIsNone(dkimverify.verify_at_once(msg, lambda name: Lookup(), budget=50))

    def test_budget_smaller_than_the_keys(self) -> None:
        """With fewer lookups allowed than keys wanted, judge says which were not checked
        (neutral): the long way, also once everything is cached."""
        bound = self.bound(Policy(dns_budget=1))
        env = envelope(*ENVELOPES[3])  # authenticated: no SPF lookups
        self.verdict(bound(base(), env))  # DMARC cached (one lookup)
        self.assertIsInstance(bound(base(), env), Verdict)
        signed = ed(rsa(base()))
        first = self.verdict(bound(signed, env))
        self.assertEqual(
            [r.result for r in first.results.results if r.method == "dkim"], ["pass", "neutral"]
        )
        self.assertEqual(self.assertLongWay(bound, signed, env), first)
        cached = self.resolver.cached_txt
        self.assertIsNone(dkimverify.verify_at_once(signed, cached, budget=1))
        # With room for both keys (fetched now), at once.
        self.successResultOf(
            defer.Deferred.fromCoroutine(dkimverify.verify_dkim(self.resolver, signed))
        )
        both = dkimverify.verify_at_once(signed, cached, budget=2)
        assert both is not None
        self.assertEqual([r.result for r in both], ["pass", "pass"])


class VerifyAtOnceTests(SynchronousTestCase):
    def test_same_results_as_verify_dkim(self) -> None:
        clock = Clock()
        dns = zone()
        resolver = CachingResolver(dns, clock)
        for name, msg in messages().items():
            want = self.successResultOf(
                defer.Deferred.fromCoroutine(dkimverify.verify_dkim(resolver, msg, now=1e9 * 1.7))
            )
            got = dkimverify.verify_at_once(msg, resolver.cached_txt, budget=50, now=1e9 * 1.7)
            self.assertEqual(got, want, name)

    def test_nothing_cached(self) -> None:
        asked: list[str] = []

        def cached(name: str) -> None:
            asked.append(name)
            return None

        self.assertIsNone(dkimverify.verify_at_once(rsa(base()), cached, budget=50))
        self.assertEqual(asked, ["sel._domainkey.pass.test"])
        # Unsigned, or a header that cannot be read: the results need no key.
        self.assertEqual(dkimverify.verify_at_once(base(), cached, budget=50), [])
        [unreadable] = dkimverify.verify_at_once(
            b" folded first\r\nDKIM-Signature: x\r\n\r\n", cached, budget=50
        ) or [None]
        assert unreadable is not None
        self.assertEqual(unreadable.result, "permerror")


class CachedTXTTests(SynchronousTestCase):
    def test_from_the_cache_only(self) -> None:
        clock = Clock()
        dns = MemoryResolver(txt={"a.test": [b"one"]}, ttl=60)
        resolver = CachingResolver(dns, clock)
        self.assertIsNone(resolver.cached_txt("a.test"))
        self.assertEqual(dns.queries, [])  # a miss asks nothing
        self.successResultOf(defer.Deferred.fromCoroutine(resolver.txt("a.test")))
        hits = resolver.hits
        self.assertEqual(resolver.cached_txt("A.test."), Lookup((b"one",)))
        self.assertEqual(resolver.hits, hits + 1)
        clock.advance(61)
        self.assertIsNone(resolver.cached_txt("a.test"))
        # A name that cannot be asked is NXDOMAIN, as txt() says.
        self.assertEqual(resolver.cached_txt("a..test"), Lookup(nxdomain=True))
        self.assertEqual(
            resolver.cached_txt("a..test"),
            self.successResultOf(defer.Deferred.fromCoroutine(resolver.txt("a..test"))),
        )


class DMARCReadingKeptTests(SynchronousTestCase):
    """``dmarc.evaluate_cached`` keeps its result by what it reads of the DKIM results (result,
    domain, a temperror's reason): the same reading gives the same object, any difference in
    it a result of its own."""

    def setUp(self) -> None:
        from mailhub.checks import dmarc, spf

        self.dmarc = dmarc
        clock = Clock()
        resolver = CachingResolver(
            MemoryResolver(txt={"_dmarc.a.test": [b"v=DMARC1; p=reject"]}), clock
        )
        self.cache = dmarc.DMARCCache(resolver, clock)
        self.successResultOf(
            defer.Deferred.fromCoroutine(
                dmarc.discover_record(resolver, "a.test", "a.test", cache=self.cache)
            )
        )
        self.spf = spf.SPFResult("fail", "b.test", "not allowed")

    def sig(self, result: str, domain: str = "a.test", reason: str = "r", b: str = "x") -> Any:
        return dkimverify.SignatureResult(result, domain, "sel", "rsa-sha256", 2048, reason, b)

    def evaluate(self, *sigs: Any) -> Any:
        return self.dmarc.evaluate_cached(self.cache, "a.test", self.spf, sigs)

    def test_same_reading_same_result(self) -> None:
        first = self.evaluate(self.sig("pass", b="one"))
        self.assertEqual(first.result, "pass")
        # another message, another b= and reason: DMARC reads the same
        self.assertIs(self.evaluate(self.sig("pass", reason="other", b="two")), first)

    def test_what_it_reads_tells_results_apart(self) -> None:
        passed = self.evaluate(self.sig("pass"))
        failed = self.evaluate(self.sig("fail"))
        elsewhere = self.evaluate(self.sig("pass", domain="c.test"))
        self.assertEqual([r.result for r in (passed, failed, elsewhere)], ["pass", "fail", "fail"])
        self.assertIn("c.test", elsewhere.reason)
        self.assertEqual(self.evaluate(self.sig("fail"), self.sig("pass")).result, "pass")
        late = self.evaluate(self.sig("temperror", reason="timeout one"))
        later = self.evaluate(self.sig("temperror", reason="timeout two"))
        self.assertEqual((late.result, later.result), ("temperror", "temperror"))
        self.assertIn("timeout one", late.reason)
        self.assertIn("timeout two", later.reason)
