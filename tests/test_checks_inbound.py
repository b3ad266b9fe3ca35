"""checks.inbound: the judgement of one message (the checks run by ``judge``, with fakes here; the
real checks against an in-memory resolver are in test_checks_inbound_real) and the policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks.dns import DNSTempError
from mailhub.checks.inbound import (
    ACCEPT,
    JUNK,
    REJECT,
    TEMPFAIL,
    Checkers,
    DomainPolicy,
    Facts,
    Policy,
    decide,
    is_local_address,
    judge,
)
from mailhub.checks.results import MethodResult
from mailhub.envelope import Envelope, Recipient

MESSAGE = b"From: a@a.test\r\nSubject: hi\r\n\r\nbody\r\n"


@dataclass
class FakeSPF:
    result: str = "pass"
    domain: str = "a.test"

    @property
    def mailfrom(self) -> FakeSPF:
        return self

    def method_result(self) -> MethodResult:
        return MethodResult("spf", self.result, "", (("smtp.mailfrom", f"x@{self.domain}"),))


@dataclass
class FakeSignature:
    result: str = "pass"
    domain: str = "a.test"

    def method_result(self) -> MethodResult:
        return MethodResult("dkim", self.result, "", (("header.d", self.domain),))


@dataclass
class FakeARC:
    result: str = "none"

    def method_result(self) -> MethodResult:
        return MethodResult("arc", self.result)


@dataclass
class FakeDMARC:
    result: str = "pass"
    policy: str = "none"
    from_domain: str = "a.test"
    reason: str = ""
    requested: str = "none"
    record_domain: str = "a.test"

    def method_result(self) -> MethodResult:
        return MethodResult("dmarc", self.result, self.reason, (("header.from", self.from_domain),))


@dataclass
class Fakes:
    """Each check answers what the test says, or waits (a Deferred never fired), or raises."""

    spf: Any = field(default_factory=FakeSPF)
    dkim: Any = field(default_factory=lambda: [FakeSignature()])
    arc: Any = field(default_factory=FakeARC)
    dmarc: Any = field(default_factory=FakeDMARC)
    from_domain: Any = "a.test"
    calls: list[tuple[str, tuple, dict]] = field(default_factory=list)

    async def _answer(self, name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((name, args, kwargs))
        if isinstance(value, BaseException):
            raise value
        if isinstance(value, defer.Deferred):
            return await value
        return value

    def checkers(self) -> Checkers:
        def from_domain(message: bytes) -> str | None:
            if isinstance(self.from_domain, BaseException):
                raise self.from_domain
            return self.from_domain

        return Checkers(
            spf=lambda *a, **k: self._answer("spf", self.spf, *a, **k),
            dkim=lambda *a, **k: self._answer("dkim", self.dkim, *a, **k),
            arc=lambda *a, **k: self._answer("arc", self.arc, *a, **k),
            dmarc=lambda *a, **k: self._answer("dmarc", self.dmarc, *a, **k),
            from_domain=from_domain,
        )


def envelope(*rcpts: str, authenticated: str | None = None) -> Envelope:
    rcpts = rcpts or ("bob@b.test",)
    return Envelope(
        queue_id="Q1",
        mail_from="alice@a.test",
        recipients=[Recipient(r, r) for r in rcpts],
        helo="mx.a.test",
        client_address="192.0.2.1",
        authenticated_as=authenticated,
    )


class JudgeTests(SynchronousTestCase):
    def run_judge(self, fakes: Fakes, env: Envelope | None = None, **kw: Any) -> Any:
        policy = kw.pop("policy", Policy())
        clock = kw.pop("clock", Clock())
        d = defer.Deferred.fromCoroutine(
            judge(
                object(),  # the fakes never ask the resolver
                kw.pop("message", MESSAGE),
                env or envelope(),
                authserv_id="mx.b.test",
                policy=policy,
                clock=clock,
                checkers=fakes.checkers(),
            )
        )
        return d

    def test_all_pass(self) -> None:
        fakes = Fakes()
        verdict = self.successResultOf(self.run_judge(fakes))
        self.assertEqual(verdict.action, ACCEPT)
        self.assertEqual(
            [(r.method, r.result) for r in verdict.results.results],
            [("spf", "pass"), ("dkim", "pass"), ("arc", "none"), ("dmarc", "pass")],
        )
        self.assertEqual(verdict.results.authserv_id, "mx.b.test")
        # SPF got the envelope; DMARC got SPF's MAIL FROM result and the signatures.
        [spf] = [c for c in fakes.calls if c[0] == "spf"]
        self.assertEqual(spf[1][1:], ("192.0.2.1", "alice@a.test", "mx.a.test"))
        [dmarc] = [c for c in fakes.calls if c[0] == "dmarc"]
        self.assertEqual(dmarc[1][1], "a.test")
        self.assertIs(dmarc[1][2], fakes.spf)
        self.assertEqual(list(dmarc[1][3]), fakes.dkim)
        # One budget for all of them.
        budgets = {id(c[2]["budget"]) for c in fakes.calls}
        self.assertEqual(len(budgets), 1)

    def test_dmarc_reject(self) -> None:
        fakes = Fakes(dmarc=FakeDMARC("fail", "reject"), spf=FakeSPF("softfail"))
        verdict = self.successResultOf(self.run_judge(fakes))
        self.assertEqual(verdict.action, REJECT)
        assert verdict.reply is not None
        self.assertEqual((verdict.reply.code, verdict.reply.enhanced), (550, "5.7.1"))
        self.assertIn("a.test", verdict.reply.text)

    def test_dmarc_quarantine_junks(self) -> None:
        fakes = Fakes(dmarc=FakeDMARC("fail", "quarantine"))
        verdict = self.successResultOf(self.run_judge(fakes))
        self.assertEqual(verdict.action, JUNK)
        self.assertEqual(verdict.folder_for("bob@b.test"), "Junk")
        self.assertIsNone(verdict.reply)

    def test_dev_never_rejects_but_records_and_says_what_would_happen(self) -> None:
        fakes = Fakes(dmarc=FakeDMARC("fail", "reject", reason="DKIM not aligned"))
        verdict = self.successResultOf(self.run_judge(fakes, policy=Policy(dev=True)))
        self.assertEqual(verdict.action, ACCEPT)
        self.assertEqual(verdict.would, REJECT)
        self.assertEqual(verdict.folder_for("bob@b.test"), None)
        [dmarc] = [r for r in verdict.results.results if r.method == "dmarc"]
        self.assertEqual(dmarc.result, "fail")
        self.assertIn("DKIM not aligned", dmarc.reason)
        self.assertIn("would refuse it (550 5.7.1)", dmarc.reason)

    def test_dev_note_goes_with_the_result_that_decided(self) -> None:
        fakes = Fakes(spf=FakeSPF("fail"), dmarc=FakeDMARC("none", "none"))
        verdict = self.successResultOf(self.run_judge(fakes, policy=Policy(dev=True)))
        results = {r.method: r for r in verdict.results.results}
        self.assertIn("would refuse it (550 5.7.23)", results["spf"].reason)
        self.assertNotIn("dev stack", results["dmarc"].reason)

    def test_authenticated_skips_spf_and_is_never_refused(self) -> None:
        fakes = Fakes(dmarc=FakeDMARC("fail", "reject"))
        env = envelope(authenticated="alice@a.test")
        verdict = self.successResultOf(self.run_judge(fakes, env))
        self.assertEqual(verdict.action, ACCEPT)
        self.assertEqual(verdict.would, REJECT)
        self.assertNotIn("spf", [c[0] for c in fakes.calls])
        methods = [(r.method, r.result) for r in verdict.results.results]
        self.assertEqual(methods[:2], [("auth", "pass"), ("spf", "none")])
        self.assertEqual(verdict.results.results[0].property("smtp.auth"), "alice@a.test")
        # DMARC was judged with DKIM alone (no SPF result).
        [dmarc] = [c for c in fakes.calls if c[0] == "dmarc"]
        self.assertIsNone(dmarc[1][2])

    def test_deadline_turns_hung_checks_into_temperror(self) -> None:
        # DNS is silent for the SPF and DMARC records: the checks never answer.
        hung_spf: defer.Deferred[Any] = defer.Deferred()
        hung_dmarc: defer.Deferred[Any] = defer.Deferred()
        fakes = Fakes(spf=hung_spf, dmarc=hung_dmarc)
        clock = Clock()
        d = self.run_judge(fakes, policy=Policy(timeout=20), clock=clock)
        self.assertNoResult(d)
        clock.advance(19.9)
        self.assertNoResult(d)
        clock.advance(0.1)  # the deadline: SPF is cancelled, DMARC starts with no time left
        clock.advance(0)
        verdict = self.successResultOf(d)
        results = {r.method: r for r in verdict.results.results}
        self.assertEqual(results["spf"].result, "temperror")
        self.assertIn("20 s", results["spf"].reason)
        self.assertEqual(results["dkim"].result, "pass")
        self.assertEqual(results["dmarc"].result, "temperror")
        # Answers arriving after the deadline are dropped, failures too: nothing is logged.
        hung_spf.callback(FakeSPF("pass"))
        hung_dmarc.errback(DNSTempError("late"))
        self.assertEqual(self.flushLoggedErrors(), [])
        # The default policy would refuse on p=reject, and the policy is unknown: 451.
        self.assertEqual(verdict.action, TEMPFAIL)
        assert verdict.reply is not None
        self.assertEqual(verdict.reply.code, 451)
        self.assertTrue(verdict.reply.enhanced.startswith("4.7."))

    def test_dmarc_temperror_with_a_known_policy(self) -> None:
        # DKIM's key timed out, so DMARC cannot tell; the record is known: p=none vs p=reject.
        for requested, action in (("none", ACCEPT), ("reject", TEMPFAIL)):
            dmarc = FakeDMARC("temperror", "none", requested=requested)
            verdict = self.successResultOf(self.run_judge(Fakes(dmarc=dmarc)))
            self.assertEqual(verdict.action, action, requested)
        # The record itself could not be fetched: it may say reject.
        dmarc = FakeDMARC("temperror", "none", record_domain="")
        self.assertEqual(self.successResultOf(self.run_judge(Fakes(dmarc=dmarc))).action, TEMPFAIL)

    def test_temperror_accepted_where_policy_would_not_reject(self) -> None:
        fakes = Fakes(spf=DNSTempError("SERVFAIL"), dmarc=DNSTempError("timeout"))
        lenient = Policy(default=DomainPolicy(dmarc_reject="none", spf_fail="mark"))
        verdict = self.successResultOf(self.run_judge(fakes, policy=lenient))
        self.assertEqual(verdict.action, ACCEPT)
        results = {r.method: r for r in verdict.results.results}
        self.assertEqual(results["spf"].result, "temperror")
        self.assertIn("SERVFAIL", results["spf"].reason)
        self.assertEqual(results["dmarc"].result, "temperror")

    def test_broken_check_is_permerror_not_traceback(self) -> None:
        fakes = Fakes(dkim=ValueError("bug"), arc=KeyError("bug"))
        verdict = self.successResultOf(self.run_judge(fakes))
        results = {r.method: r for r in verdict.results.results}
        self.assertEqual(results["dkim"].result, "permerror")
        self.assertEqual(results["arc"].result, "none")
        self.assertEqual(verdict.action, ACCEPT)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_several_from_is_dmarc_permerror(self) -> None:
        fakes = Fakes(from_domain=ValueError("several From addresses"))
        verdict = self.successResultOf(self.run_judge(fakes))
        [dmarc] = [r for r in verdict.results.results if r.method == "dmarc"]
        self.assertEqual((dmarc.result, dmarc.reason), ("permerror", "several From addresses"))
        self.assertNotIn("dmarc", [c[0] for c in fakes.calls])

    def test_too_big_is_not_checked(self) -> None:
        fakes = Fakes()
        verdict = self.successResultOf(
            self.run_judge(fakes, policy=Policy(max_message_size=10), message=MESSAGE)
        )
        self.assertEqual(fakes.calls, [])
        self.assertFalse(verdict.checked)
        self.assertEqual(verdict.action, ACCEPT)
        self.assertIn("max_message_size", verdict.results.results[0].reason)


class DecideTests(SynchronousTestCase):
    """The policy table, on plain facts."""

    def action(self, policy: Policy | None = None, env: Envelope | None = None, **facts: Any):
        return decide(Facts(**facts), env or envelope(), policy or Policy(), authenticated=False)

    def test_table(self) -> None:
        cases = [
            # (facts, DomainPolicy, action, code)
            ({"dmarc": "fail", "dmarc_policy": "reject"}, DomainPolicy(), REJECT, 550),
            (
                {"dmarc": "fail", "dmarc_policy": "reject"},
                DomainPolicy(dmarc_reject="quarantine"),
                JUNK,
                None,
            ),
            (
                {"dmarc": "fail", "dmarc_policy": "reject"},
                DomainPolicy(dmarc_reject="none"),
                ACCEPT,
                None,
            ),
            ({"dmarc": "fail", "dmarc_policy": "quarantine"}, DomainPolicy(), JUNK, None),
            (
                {"dmarc": "fail", "dmarc_policy": "quarantine"},
                DomainPolicy(dmarc_quarantine="none"),
                ACCEPT,
                None,
            ),
            ({"dmarc": "fail", "dmarc_policy": "none"}, DomainPolicy(), ACCEPT, None),
            ({"spf": "fail"}, DomainPolicy(), REJECT, 550),
            ({"spf": "fail"}, DomainPolicy(spf_fail="mark"), ACCEPT, None),
            # An aligned DKIM signature vouches for forwarded mail that lost its SPF.
            ({"spf": "fail", "dmarc": "pass"}, DomainPolicy(), ACCEPT, None),
            ({"spf": "softfail"}, DomainPolicy(), ACCEPT, None),
            ({"dmarc": "temperror"}, DomainPolicy(), TEMPFAIL, 451),
            ({"dmarc": "temperror", "dmarc_policy": "none"}, DomainPolicy(), ACCEPT, None),
            ({"dmarc": "temperror"}, DomainPolicy(dmarc_reject="none"), ACCEPT, None),
            ({"spf": "temperror"}, DomainPolicy(), TEMPFAIL, 451),
            ({"spf": "temperror"}, DomainPolicy(spf_fail="mark"), ACCEPT, None),
            ({"spf": "temperror", "dmarc": "pass"}, DomainPolicy(), ACCEPT, None),
            ({"spf": "permerror", "dmarc": "permerror"}, DomainPolicy(), ACCEPT, None),
        ]
        for facts, dp, action, code in cases:
            verdict = self.action(Policy(default=dp), **facts)
            self.assertEqual(verdict.action, action, (facts, dp))
            self.assertEqual(verdict.reply.code if verdict.reply else None, code, (facts, dp))

    def test_spf_reply(self) -> None:
        verdict = self.action(spf="fail", client="192.0.2.1", mail_from="x@a.test")
        assert verdict.reply is not None
        self.assertEqual((verdict.reply.code, verdict.reply.enhanced), (550, "5.7.23"))
        self.assertIn("192.0.2.1", verdict.reply.text)
        self.assertIn("a.test", verdict.reply.text)
        # The domain's exp= text (RFC 7208 6.2), made safe for a reply line.
        verdict = self.action(
            spf="fail", client="192.0.2.1", mail_from="x@a.test", spf_explanation="see\r\nX"
        )
        assert verdict.reply is not None
        self.assertTrue(verdict.reply.text.endswith("a.test says see??X"), verdict.reply.text)

    def test_per_domain_override_and_mixed_recipients(self) -> None:
        policy = Policy(domains={"lenient.test": DomainPolicy(dmarc_reject="none")})
        facts = {"dmarc": "fail", "dmarc_policy": "reject"}
        # Only the strict domain: refused.
        self.assertEqual(self.action(policy, envelope("x@b.test"), **facts).action, REJECT)
        # Only the lenient one: accepted.
        self.assertEqual(self.action(policy, envelope("y@lenient.test"), **facts).action, ACCEPT)
        # Both: one reply for all, so accepted, the strict domain's copy in Junk.
        verdict = self.action(policy, envelope("x@b.test", "y@lenient.test"), **facts)
        self.assertEqual(verdict.action, JUNK)
        self.assertEqual(verdict.junk, frozenset({"x@b.test"}))
        self.assertEqual(verdict.folder_for("x@b.test"), "Junk")
        self.assertIsNone(verdict.folder_for("y@lenient.test"))

    def test_mixed_permanent_and_temporary_refusal_is_temporary(self) -> None:
        policy = Policy(domains={"other.test": DomainPolicy(spf_fail="mark")})
        facts = {"spf": "fail", "dmarc": "temperror"}
        verdict = self.action(policy, envelope("x@b.test", "y@other.test"), **facts)
        # b.test: SPF fail -> reject; other.test: DMARC unknown -> try again. Together: 451.
        self.assertEqual(verdict.action, TEMPFAIL)
        assert verdict.reply is not None
        self.assertEqual(verdict.reply.code, 451)


class DevStackSPF(SynchronousTestCase):
    """The dev stack judges SPF for [checks] dev_sending_ip, not for an app's local address."""

    def run_dev(self, client: str, *, sending_ip: str = "", user: str | None = None) -> Any:
        fakes = Fakes()
        env = envelope(authenticated=user)
        env.client_address = client
        d = defer.Deferred.fromCoroutine(
            judge(
                object(),
                MESSAGE,
                env,
                authserv_id="dev",
                policy=Policy(dev=True, dev_sending_ip=sending_ip),
                clock=Clock(),
                checkers=fakes.checkers(),
            )
        )
        verdict = self.successResultOf(d)
        [spf] = [r for r in verdict.results.results if r.method == "spf"]
        asked = [c[1][1] for c in fakes.calls if c[0] == "spf"]
        return spf, asked

    def test_local_clients(self) -> None:
        for address in ("127.0.0.1", "::1", "10.1.2.3", "172.17.0.2", "192.168.1.9", "fd00::1"):
            self.assertTrue(is_local_address(address), address)
        for address in ("192.0.2.1", "8.8.8.8", "2001:db8::1", "not an address", ""):
            self.assertFalse(is_local_address(address), address)
        self.assertTrue(is_local_address("::ffff:127.0.0.1"))

    def test_local_client_without_dev_sending_ip_is_not_evaluated(self) -> None:
        spf, asked = self.run_dev("172.17.0.2")
        self.assertEqual(asked, [])
        self.assertEqual(spf.result, "none")
        self.assertEqual(
            spf.reason,
            "SPF not meaningful for mail from 172.17.0.2; set [checks] dev_sending_ip (the "
            "address production mail leaves from)",
        )

    def test_local_client_judged_for_dev_sending_ip(self) -> None:
        spf, asked = self.run_dev("127.0.0.1", sending_ip="192.0.2.10")
        self.assertEqual(asked, ["192.0.2.10"])
        self.assertEqual(spf.result, "pass")
        self.assertIn("judged for 192.0.2.10 ([checks] dev_sending_ip", spf.reason)

    def test_a_public_client_is_judged_as_it_is(self) -> None:
        spf, asked = self.run_dev("198.51.100.7", sending_ip="192.0.2.10")
        self.assertEqual(asked, ["198.51.100.7"])
        self.assertEqual(spf.reason, "")

    def test_submission_judged_for_dev_sending_ip_only(self) -> None:
        spf, asked = self.run_dev("198.51.100.7", sending_ip="192.0.2.10", user="a@a.test")
        self.assertEqual(asked, ["192.0.2.10"])
        spf, asked = self.run_dev("198.51.100.7", user="a@a.test")
        self.assertEqual(asked, [])
        self.assertIn("set [checks] dev_sending_ip", spf.reason)

    def test_production_ignores_dev_sending_ip(self) -> None:
        fakes = Fakes()
        env = envelope()
        env.client_address = "127.0.0.1"
        d = defer.Deferred.fromCoroutine(
            judge(
                object(),
                MESSAGE,
                env,
                authserv_id="mx",
                policy=Policy(dev_sending_ip="192.0.2.10"),
                clock=Clock(),
                checkers=fakes.checkers(),
            )
        )
        self.successResultOf(d)
        self.assertEqual([c[1][1] for c in fakes.calls if c[0] == "spf"], ["127.0.0.1"])
