"""The inbound checks' at-once path (issue 14's speed target): ``eager.start`` runs a coroutine
without a Deferred when it does not wait; ``judge_at_once`` judges an unsigned message from the
SPF and DMARC caches with the same results as ``judge``; ``DMARCCache`` keeps a discovery as
long as its answers; the one-From shortcut reads From as ``split_fields`` does; the sink
commits a message judged at once without a coroutine of its own."""

from __future__ import annotations

import itertools
import random
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks import dmarc, eager
from mailhub.checks.inbound import (
    ACCEPT,
    DomainPolicy,
    Policy,
    Verdict,
    judge,
    judge_with,
)
from mailhub.checks.resolver import CachingResolver
from mailhub.checks.results import AuthenticationResults, MethodResult
from mailhub.checks.sink import CheckingSink
from mailhub.envelope import Envelope, Recipient
from mailhub.message.headers import split_fields
from tests.support.checkdns import MemoryResolver
from tests.support.dkimkeys import message, rsa_key, sign
from tests.support.smtp import MemorySink

# --- eager.start ---------------------------------------------------------------------------------


class EagerTests(SynchronousTestCase):
    def test_value_at_once(self) -> None:
        done: defer.Deferred[int] = defer.succeed(41)

        async def at_once() -> int:
            return await done + 1

        self.assertEqual(eager.start(at_once()), 42)

    def test_error_before_waiting_is_raised(self) -> None:
        async def broken() -> int:
            raise ValueError("no")

        self.assertRaises(ValueError, eager.start, broken())

    def test_waiting_gives_a_deferred_of_the_rest(self) -> None:
        first: defer.Deferred[int] = defer.Deferred()
        second: defer.Deferred[int] = defer.Deferred()
        steps: list[int] = []

        async def waits() -> int:
            a = await first
            steps.append(a)
            b = await second
            steps.append(b)
            return a + b

        started = eager.start(waits())
        assert isinstance(started, eager.Pending)
        self.assertNoResult(started.deferred)
        first.callback(1)
        self.assertEqual(steps, [1])
        self.assertNoResult(started.deferred)
        second.callback(2)
        self.assertEqual(self.successResultOf(started.deferred), 3)

    def test_failure_after_waiting_reaches_the_coroutine(self) -> None:
        waited: defer.Deferred[int] = defer.Deferred()

        async def catches() -> str:
            try:
                await waited
            except KeyError as e:
                return f"caught {e.args[0]}"
            return "not caught"

        started = eager.start(catches())
        assert isinstance(started, eager.Pending)
        waited.errback(KeyError("k"))
        self.assertEqual(self.successResultOf(started.deferred), "caught k")

    def test_cancel_reaches_what_it_waits_on(self) -> None:
        cancelled: list[bool] = []
        waited: defer.Deferred[int] = defer.Deferred(lambda d: cancelled.append(True))

        async def waits() -> int:
            return await waited

        started = eager.start(waits())
        assert isinstance(started, eager.Pending)
        started.deferred.cancel()
        self.assertEqual(cancelled, [True])
        self.failureResultOf(started.deferred, defer.CancelledError)

    def test_as_deferred(self) -> None:
        self.assertEqual(self.successResultOf(eager.as_deferred(5)), 5)


# --- judge_at_once: the same verdicts as judge ---------------------------------------------------

_, DKIM_RECORD = rsa_key()


def zone(ttl: float = 300.0) -> MemoryResolver:
    return MemoryResolver(
        txt={
            # pass.test: SPF for 192.0.2.0/24, DMARC p=reject (strict SPF alignment)
            "pass.test": [b"v=spf1 ip4:192.0.2.0/24 -all"],
            "_dmarc.pass.test": [b"v=DMARC1; p=reject; aspf=s"],
            "mx.pass.test": [b"v=spf1 ip4:192.0.2.0/24 -all"],
            # soft.test: softfail for anyone, DMARC p=quarantine (sp=reject for subdomains)
            "soft.test": [b"v=spf1 ~all"],
            "_dmarc.soft.test": [b"v=DMARC1; p=quarantine; sp=reject"],
            # quiet.test: no SPF, no DMARC
            # pct.test: -all and p=reject, pct=0 (never picked: quarantine applies)
            "pct.test": [b"v=spf1 -all exp=why.pct.test"],
            "why.pct.test": [b"%{i} is not ours"],
            "_dmarc.pct.test": [b"v=DMARC1; p=reject; pct=0"],
            # none.test: SPF pass for anyone, DMARC p=none
            "none.test": [b"v=spf1 +all"],
            "_dmarc.none.test": [b"v=DMARC1; p=none"],
            "sel._domainkey.pass.test": [DKIM_RECORD],
        },
        ttl=ttl,
    )


FROMS = [
    b"From: Alice <alice@pass.test>\r\n",
    b"from : alice@PASS.test\r\n",
    b"From: \r\n\t=?utf-8?q?Al?= <a@soft.test>\r\n",
    b"From: b@sub.soft.test\r\n",
    b"From: c@quiet.test\r\n",
    b"From: d@pct.test\r\n",
    b"From: e@none.test\r\n",
    b"",  # no From: DMARC does not apply
    b"From: a@pass.test\r\nFrom: b@pass.test\r\n",  # permerror
    b"From: a@pass.test, b@pass.test\r\n",  # permerror
    b"From: undisclosed:;\r\n",  # a group, no domain
]

SENDERS = ["alice@pass.test", "bob@soft.test", "", "c@quiet.test", "d@pct.test", "e@none.test"]
CLIENTS = ["192.0.2.1", "198.51.100.7", "127.0.0.1"]


def envelopes() -> list[Envelope]:
    out = []
    for sender, client in itertools.product(SENDERS, CLIENTS):
        out.append(
            Envelope(
                "Q1",
                sender,
                [Recipient("bob@b.test", "bob@b.test"), Recipient("x@c.test", "x@c.test")],
                helo="mx.pass.test",
                client_address=client,
                server_name="mx.b.test",
            )
        )
    out.append(
        Envelope(
            "Q2",
            "alice@pass.test",
            [Recipient("bob@b.test", "bob@b.test")],
            helo="mx.pass.test",
            client_address="192.0.2.1",
            authenticated_as="alice",
        )
    )
    return out


POLICIES = [
    Policy(),
    Policy(domains={"c.test": DomainPolicy("quarantine", "none", "mark")}),
    Policy(dev=True),
    Policy(dev=True, dev_sending_ip="192.0.2.9"),
]


def body(from_: bytes) -> bytes:
    return from_ + b"To: bob@b.test\r\nSubject: hi\r\n\r\nHello.\r\n"


class JudgeAtOnceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.dns = zone()

    def bound(self, policy: Policy) -> Any:
        resolver = CachingResolver(self.dns, self.clock)
        return judge_with(resolver, authserv_id="mx.b.test", policy=policy, clock=self.clock)

    def verdict(self, judged: Any) -> Verdict:
        if isinstance(judged, Verdict):
            return judged
        verdict: Verdict = self.successResultOf(defer.Deferred.fromCoroutine(judged))
        return verdict

    def long_way(self, policy: Policy, msg: bytes, env: Envelope) -> Verdict:
        """``judge`` itself, with the real checks and a fresh DNS cache (no SPF or DMARC
        cache)."""
        resolver = CachingResolver(self.dns, self.clock)
        verdict: Verdict = self.successResultOf(
            defer.Deferred.fromCoroutine(
                judge(resolver, msg, env, authserv_id="mx.b.test", policy=policy, clock=self.clock)
            )
        )
        return verdict

    def test_same_verdict_as_the_long_way(self) -> None:
        """Every message judged twice by a fresh server (the second time from its caches, at
        once) and by ``judge`` itself: the verdicts are equal, field by field."""
        at_once = 0
        actions = set()
        cases = list(itertools.product(POLICIES, envelopes(), FROMS))
        for policy, env, from_ in cases:
            msg = b"Received: from x\r\n" + body(from_)
            want = self.long_way(policy, msg, env)
            bound = self.bound(policy)
            self.assertEqual(self.verdict(bound(msg, env)), want, (policy, env, from_))
            second = bound(msg, env)
            if isinstance(second, Verdict):
                at_once += 1
                actions.add((second.action, bool(second.junk)))
            self.assertEqual(self.verdict(second), want, (policy, env, from_))
        # The long way again: SPF results the cache does not keep (from the local client's
        # address in the dev stack, "none" without a lookup).
        self.assertGreater(at_once, len(cases) * 0.8)
        # Refusals, Junk for some recipients and for all, and accepts were compared.
        self.assertLessEqual({("reject", False), ("junk", True), ("accept", False)}, actions)

    def test_sealed_mail_takes_the_long_way(self) -> None:
        """ARC fields: the long way. (Signed mail is judged at once once its keys are
        cached: tests/test_checks_signedfast.py.)"""
        env = envelopes()[0]
        signed = sign(message(b"alice@pass.test"), domain=b"pass.test")
        for msg, at_once in (
            (signed, True),
            (
                b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=x.test; s=s; b=\r\n" + body(FROMS[0]),
                False,
            ),
        ):
            bound = self.bound(Policy())
            first = self.verdict(bound(msg, env))
            second = bound(msg, env)
            self.assertEqual(isinstance(second, Verdict), at_once)
            self.assertEqual(self.verdict(second), first)

    def test_expired_answers_are_asked_again(self) -> None:
        self.dns = zone(ttl=60)
        bound = self.bound(Policy())
        env, msg = envelopes()[0], body(FROMS[0])
        self.verdict(bound(msg, env))
        self.assertIsInstance(bound(msg, env), Verdict)
        self.clock.advance(61)
        self.dns.set_txt("_dmarc.pass.test")  # the policy is gone now
        again = bound(msg, env)
        self.assertNotIsInstance(again, Verdict)
        dmarc_result = [r for r in self.verdict(again).results.results if r.method == "dmarc"]
        self.assertEqual(dmarc_result[0].result, "none")

    def test_temporary_failures_are_not_kept(self) -> None:
        self.dns.tempfail.add("_dmarc.pass.test")
        bound = self.bound(Policy())
        env, msg = envelopes()[0], body(FROMS[0])
        first = self.verdict(bound(msg, env))
        self.assertEqual(first.action, "tempfail")
        again = bound(msg, env)
        self.assertNotIsInstance(again, Verdict)
        self.assertEqual(self.verdict(again).action, "tempfail")
        self.dns.tempfail.clear()
        self.assertEqual(self.verdict(bound(msg, env)).action, ACCEPT)
        self.assertIsInstance(bound(msg, env), Verdict)

    def test_too_big_takes_the_long_way(self) -> None:
        bound = self.bound(Policy(max_message_size=100))
        env, msg = envelopes()[0], body(FROMS[0]) + b"x" * 200 + b"\r\n"
        self.verdict(bound(msg, env))
        second = bound(msg, env)
        self.assertNotIsInstance(second, Verdict)
        self.assertFalse(self.verdict(second).checked)


# --- DMARCCache ----------------------------------------------------------------------------------


class DMARCCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.dns = MemoryResolver(txt={"_dmarc.org.test": [b"v=DMARC1; p=reject"]})
        self.resolver = CachingResolver(self.dns, self.clock)
        self.cache = dmarc.DMARCCache(self.resolver, self.clock)

    def discover(self, domain: str) -> Any:
        d = defer.Deferred.fromCoroutine(
            dmarc.discover_record(
                self.resolver, domain, dmarc.organizational_domain(domain), cache=self.cache
            )
        )
        return self.successResultOf(d)

    def test_kept_until_the_first_answer_expires(self) -> None:
        # sub.org.test has no record: the org's is used; both answers count.
        self.dns.ttls[("_dmarc.sub.org.test", "TXT")] = 30
        record, why = self.discover("sub.org.test")
        assert record is not None
        self.assertEqual((record.domain, record.p, why), ("org.test", "reject", ""))
        asked = len(self.dns.queries)
        self.assertEqual(self.discover("sub.org.test"), (record, ""))
        self.assertEqual(self.cache.get("sub.org.test"), (record, ""))
        self.assertEqual(len(self.dns.queries), asked)  # nothing asked again
        self.clock.advance(31)
        self.assertIsNone(self.cache.get("sub.org.test"))
        self.discover("sub.org.test")
        self.assertGreater(len(self.dns.queries), asked)

    def test_no_record_is_kept_too(self) -> None:
        self.assertEqual(self.discover("nothing.test")[0], None)
        self.assertIsNotNone(self.cache.get("nothing.test"))

    def test_failure_and_zero_ttl_not_kept(self) -> None:
        self.dns.tempfail.add("_dmarc.org.test")
        d = defer.Deferred.fromCoroutine(
            dmarc.discover_record(self.resolver, "org.test", "org.test", cache=self.cache)
        )
        self.failureResultOf(d)
        self.assertEqual(len(self.cache), 0)
        self.dns.tempfail.clear()
        self.dns.ttls[("_dmarc.org.test", "TXT")] = 0
        self.discover("org.test")
        self.assertEqual(len(self.cache), 0)

    def test_bounded(self) -> None:
        self.cache.max_entries = 2
        for name in ("a.test", "b.test", "c.test"):
            self.discover(name)
        self.assertEqual(len(self.cache), 2)
        self.assertIsNone(self.cache.get("a.test"))


# --- From without splitting every field ----------------------------------------------------------


def reference_from(msg: bytes) -> Any:
    """header_from_domain as it was: every field split."""
    end = dmarc._header_end(msg)
    values = [v for name, v in split_fields(msg[:end]) if name.lower() == b"from"]
    if not values:
        return None
    if len(values) > 1:
        return ("permerror", len(values))
    try:
        return dmarc._from_domain(values[0])
    except dmarc.HeaderFromError as e:
        return ("error", e.reason)


def new_from(msg: bytes) -> Any:
    try:
        return dmarc.header_from_domain(msg)
    except dmarc.HeaderFromError as e:
        if "From fields" in e.reason:
            return ("permerror", int(e.reason.split()[3]))
        return ("error", e.reason)


PIECES = [
    b"From: a@one.test",
    b"from : b@two.test",
    b"FROM:\r\n\tc@three.test",
    b"From:\r\n d@four.test (comment)",
    b"From-X: e@five.test",
    b"X-From: f@six.test",
    b" from: continued@seven.test",
    b"\tFrom: g@eight.test",
    b"from nothing",
    b"Subject: from: h@nine.test",
    b"From: i@ten.test, j@ten.test",
    b"From: Group:;",
    b"From: <@route.test:k@eleven.test>",
    b"To: l@twelve.test",
]
ENDS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"]


class OneFromTests(SynchronousTestCase):
    def test_same_as_splitting_every_field(self) -> None:
        rng = random.Random(1407)
        for _ in range(4000):
            lines = [rng.choice(PIECES) for _ in range(rng.randint(0, 5))]
            head = b"".join(line + rng.choice(ENDS) for line in lines)
            lead = rng.choice([b"", b"", b"\r\n", b"\r\n\r\n", b"Received: x\r\n"])
            msg = lead + head + rng.choice([b"\r\n", b"\n", b""]) + b"body\r\nFrom: z@body.test\r\n"
            self.assertEqual(new_from(msg), reference_from(msg), msg)

    def test_shortcut_used_for_plain_crlf_headers(self) -> None:
        head = b"Received: x\r\nFrom: a@one.test\r\nTo: b@two.test\r\n"
        self.assertEqual(dmarc._from_fields(head), [b" a@one.test\r\n"])
        self.assertEqual(len(dmarc._from_fields(head.replace(b"To", b"From")) or ()), 2)
        self.assertIsNone(dmarc._from_fields(b"From: a@one.test\n"))  # bare LF: the long way
        self.assertIsNone(dmarc._from_fields(b"From: a@one.test\rX: y\r\n"))  # bare CR


# --- the sink with a verdict at once or later ----------------------------------------------------

RESULTS = AuthenticationResults("mx.b.test", (MethodResult("spf", "pass"),))
CONTENT = b"From: alice@a.test\r\nSubject: hi\r\n\r\nbody\r\n"


class SinkJudgedAtOnceTests(SynchronousTestCase):
    def make(self, judge: Any) -> tuple[CheckingSink, MemorySink]:
        inner = MemorySink()
        return CheckingSink(inner, judge=judge, authserv_id="mx.b.test"), inner

    def send(self, sink: CheckingSink) -> defer.Deferred[str]:
        env = Envelope("Q1", "alice@a.test", [Recipient("bob@b.test", "bob@b.test")])
        message = sink.open(env)
        message.write(CONTENT)
        return message.commit()

    def test_verdict_given_directly(self) -> None:
        sink, inner = self.make(lambda message, envelope: Verdict(RESULTS, ACCEPT))
        self.assertEqual(self.successResultOf(self.send(sink)), "Q1")
        [stored] = inner.delivered
        self.assertEqual(stored.data, RESULTS.header() + CONTENT)

    def test_verdict_later(self) -> None:
        later: defer.Deferred[Verdict] = defer.Deferred()

        async def judge(message: bytes, envelope: Envelope) -> Verdict:
            return await later

        sink, inner = self.make(judge)
        d = self.send(sink)
        self.assertNoResult(d)
        self.assertEqual(inner.opened, [])  # nothing reaches the store before the verdict
        later.callback(Verdict(RESULTS, ACCEPT))
        self.assertEqual(self.successResultOf(d), "Q1")
        self.assertEqual(inner.delivered[0].data, RESULTS.header() + CONTENT)

    def test_judge_failing_after_waiting_loses_no_mail(self) -> None:
        later: defer.Deferred[Verdict] = defer.Deferred()

        async def judge(message: bytes, envelope: Envelope) -> Verdict:
            await later
            raise RuntimeError("bug")

        sink, inner = self.make(judge)
        d = self.send(sink)
        later.callback(Verdict(RESULTS, ACCEPT))
        self.assertEqual(self.successResultOf(d), "Q1")
        self.assertIn(b"not checked: internal error", inner.delivered[0].data)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_deferred_judge(self) -> None:
        sink, inner = self.make(lambda message, envelope: defer.succeed(Verdict(RESULTS, ACCEPT)))
        self.assertEqual(self.successResultOf(self.send(sink)), "Q1")
        self.assertEqual(len(inner.delivered), 1)
