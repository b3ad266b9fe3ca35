"""DMARC (mailhub.checks.dmarc, RFC 7489): From domain, record discovery with the organizational
domain fallback, alignment of SPF and DKIM (relaxed and strict), sp, pct, and the reasons."""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks.dkimverify import SignatureResult, verify_dkim
from mailhub.checks.dmarc import (
    DMARCResult,
    HeaderFromError,
    check_message,
    evaluate_dmarc,
    header_from_domain,
    organizational_domain,
    parse_record,
)
from mailhub.checks.dns import DNSBudget
from tests.support.checkdns import MemoryResolver
from tests.support.dkimkeys import message, rsa_key, sign

T = TypeVar("T")


def run(case: SynchronousTestCase, coro: Coroutine[Any, Any, T]) -> T:
    return case.successResultOf(defer.Deferred.fromCoroutine(coro))


@dataclass(frozen=True)
class SPF:
    result: str
    domain: str


def dkim(domain: str, result: str = "pass") -> SignatureResult:
    return SignatureResult(result, domain, "sel", "rsa-sha256", 2048, "test", "abcdefgh")


class HeaderFrom(SynchronousTestCase):
    def test_one_address(self) -> None:
        self.assertEqual(header_from_domain(message()), "example.com")

    def test_case_and_display_name(self) -> None:
        msg = message(from_=b'"Smith, Ann" <ann@Mail.EXAMPLE.org>')
        self.assertEqual(header_from_domain(msg), "mail.example.org")

    def test_internationalised_domain_becomes_a_labels(self) -> None:
        msg = message(from_="Jörg <j@bücher.example>".encode())
        self.assertEqual(header_from_domain(msg), "xn--bcher-kva.example")

    def test_no_from(self) -> None:
        self.assertIsNone(header_from_domain(b"To: a@b.example\r\n\r\nhi\r\n"))

    def test_from_without_domain(self) -> None:
        self.assertIsNone(header_from_domain(message(from_=b"undisclosed sender")))

    def test_two_from_fields_is_permerror(self) -> None:
        msg = message(extra=b"From: mallory@evil.example\r\n")
        with self.assertRaises(HeaderFromError) as caught:
            header_from_domain(msg)
        self.assertEqual(caught.exception.result, "permerror")
        self.assertIn("2 From fields", caught.exception.reason)

    def test_two_addresses_is_permerror(self) -> None:
        msg = message(from_=b"a@example.com, b@example.org")
        with self.assertRaises(HeaderFromError) as caught:
            header_from_domain(msg)
        self.assertIn("From holds 2 addresses", caught.exception.reason)

    def test_a_from_in_the_body_does_not_count(self) -> None:
        msg = message(body=b"From: someone@else.example\r\n")
        self.assertEqual(header_from_domain(msg), "example.com")

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=120))
    def test_garbage_from_never_raises_anything_else(self, value: bytes) -> None:
        try:
            domain = header_from_domain(b"From: " + value.replace(b"\n", b" ") + b"\r\n\r\nx")
        except HeaderFromError as e:
            self.assertEqual(e.result, "permerror")
        else:
            self.assertTrue(domain is None or domain == domain.lower())


class OrganizationalDomain(SynchronousTestCase):
    def test_examples(self) -> None:
        self.assertEqual(organizational_domain("mail.example.co.uk"), "example.co.uk")
        self.assertEqual(organizational_domain("a.b.example.com"), "example.com")
        self.assertEqual(organizational_domain("example.com"), "example.com")
        self.assertEqual(organizational_domain("Foo.Example.COM."), "example.com")
        self.assertEqual(organizational_domain("co.uk"), "co.uk")
        # unknown TLDs count as public suffixes (the PSL's implicit "*" rule)
        self.assertEqual(organizational_domain("mx.example.test"), "example.test")


class Records(SynchronousTestCase):
    def test_defaults(self) -> None:
        r = parse_record("example.com", b"v=DMARC1; p=reject")
        assert r is not None
        self.assertEqual((r.p, r.sp, r.pct, r.adkim, r.aspf), ("reject", "reject", 100, "r", "r"))

    def test_all_tags(self) -> None:
        r = parse_record("example.com", b"v=DMARC1;p=quarantine;sp=none;pct=20;adkim=s;aspf=s")
        assert r is not None
        self.assertEqual((r.p, r.sp, r.pct, r.adkim, r.aspf), ("quarantine", "none", 20, "s", "s"))

    def test_no_p_but_rua_is_p_none(self) -> None:
        r = parse_record("example.com", b"v=DMARC1; rua=mailto:d@example.com")
        assert r is not None
        self.assertEqual((r.p, r.p_from_rua), ("none", True))

    def test_no_p_no_rua_is_no_record(self) -> None:
        self.assertIsNone(parse_record("example.com", b"v=DMARC1; pct=50"))
        self.assertIsNone(parse_record("example.com", b"v=DMARC1; p=bounce"))

    def test_invalid_optional_values_take_defaults(self) -> None:
        r = parse_record("example.com", b"v=DMARC1; p=reject; pct=250; adkim=x; aspf=; fo=9; p2")
        assert r is not None
        self.assertEqual((r.p, r.pct, r.adkim, r.aspf), ("reject", 100, "r", "r"))


class Evaluate(SynchronousTestCase):
    def setUp(self) -> None:
        self.dns = MemoryResolver(txt={"_dmarc.example.com": [b"v=DMARC1; p=reject"]})

    def evaluate(
        self,
        from_domain: str,
        spf: SPF | None = None,
        sigs: list[SignatureResult] | None = None,
        **kw: Any,
    ) -> DMARCResult:
        return run(self, evaluate_dmarc(self.dns, from_domain, spf, sigs or [], **kw))

    def test_aligned_dkim_passes(self) -> None:
        r = self.evaluate("example.com", SPF("fail", "bounce.other.example"), [dkim("example.com")])
        self.assertEqual((r.result, r.dkim_aligned, r.spf_aligned), ("pass", True, False))
        self.assertEqual(
            r.reason, "DKIM passed for example.com, aligned with From example.com, so DMARC passes"
        )
        self.assertEqual(r.policy, "none")
        self.assertEqual(r.requested, "reject")
        self.assertEqual(r.method_result().property("policy.dmarc"), "reject")

    def test_aligned_spf_passes(self) -> None:
        r = self.evaluate("example.com", SPF("pass", "example.com"))
        self.assertEqual((r.result, r.spf_aligned, r.dkim_aligned), ("pass", True, False))

    def test_relaxed_alignment_accepts_a_subdomain(self) -> None:
        r = self.evaluate(
            "example.com", SPF("pass", "bounces.example.com"), [dkim("mail.example.com")]
        )
        self.assertEqual((r.result, r.spf_aligned, r.dkim_aligned), ("pass", True, True))

    def test_strict_alignment_refuses_a_subdomain(self) -> None:
        self.dns.set_txt("_dmarc.example.com", b"v=DMARC1; p=reject; adkim=s; aspf=s")
        r = self.evaluate(
            "example.com", SPF("pass", "bounces.example.com"), [dkim("mail.example.com")]
        )
        self.assertEqual((r.result, r.policy), ("fail", "reject"))
        self.assertIn(
            "DKIM passed but is not aligned with From: example.com != mail.example.com "
            "(adkim=s: strict)",
            r.reason,
        )
        self.assertIn("(aspf=s: strict)", r.reason)

    def test_unaligned_dkim_fails_with_the_developer_reason(self) -> None:
        r = self.evaluate(
            "example.com", SPF("pass", "mailer.example.net"), [dkim("mailer.example.net")]
        )
        self.assertEqual((r.result, r.policy), ("fail", "reject"))
        self.assertEqual(
            r.reason,
            "DKIM passed but is not aligned with From: example.com != mailer.example.net; "
            "SPF passed but is not aligned with From: example.com != mailer.example.net, "
            "so DMARC fails; _dmarc.example.com asks p=reject",
        )
        self.assertEqual(r.method_result().property("policy.dmarc"), "reject")
        self.assertEqual(r.method_result().property("header.from"), "example.com")

    def test_nothing_passed(self) -> None:
        r = self.evaluate(
            "example.com", SPF("softfail", "example.com"), [dkim("example.com", "fail")]
        )
        self.assertEqual(r.result, "fail")
        self.assertIn("no DKIM signature passed; SPF is softfail for example.com", r.reason)

    def test_spf_not_checked(self) -> None:
        r = self.evaluate("example.com", None, [])
        self.assertIn("SPF was not checked", r.reason)

    def test_org_domain_fallback(self) -> None:
        self.dns = MemoryResolver(txt={"_dmarc.example.co.uk": [b"v=DMARC1; p=quarantine"]})
        r = self.evaluate("mail.example.co.uk", None, [dkim("example.co.uk")])
        self.assertEqual(
            (r.result, r.org_domain, r.record_domain), ("pass", "example.co.uk", "example.co.uk")
        )
        self.assertEqual(
            [q for _, q in self.dns.queries],
            ["_dmarc.mail.example.co.uk", "_dmarc.example.co.uk"],
        )

    def test_sp_applies_to_subdomains_found_through_the_org_domain(self) -> None:
        self.dns = MemoryResolver(
            txt={"_dmarc.example.co.uk": [b"v=DMARC1; p=reject; sp=quarantine"]}
        )
        r = self.evaluate("mail.example.co.uk", None, [])
        self.assertEqual((r.result, r.policy), ("fail", "quarantine"))
        self.assertIn("_dmarc.example.co.uk asks sp=quarantine", r.reason)
        r = self.evaluate("example.co.uk", None, [])
        self.assertEqual(r.policy, "reject")

    def test_a_subdomains_own_record_uses_its_p(self) -> None:
        self.dns = MemoryResolver(
            txt={
                "_dmarc.mail.example.com": [b"v=DMARC1; p=none"],
                "_dmarc.example.com": [b"v=DMARC1; p=reject; sp=reject"],
            }
        )
        r = self.evaluate("mail.example.com")
        self.assertEqual(
            (r.result, r.policy, r.record_domain), ("fail", "none", "mail.example.com")
        )

    def test_pct_sampling(self) -> None:
        self.dns.set_txt("_dmarc.example.com", b"v=DMARC1; p=reject; pct=30")
        picked = self.evaluate("example.com", rng=lambda: 0.29)
        self.assertEqual((picked.policy, picked.sampled_out), ("reject", False))
        self.assertIn("pct=30 picked this message", picked.reason)
        spared = self.evaluate("example.com", rng=lambda: 0.30)
        self.assertEqual(
            (spared.result, spared.policy, spared.sampled_out), ("fail", "quarantine", True)
        )
        self.assertIn("pct=30 did not pick this message: quarantine applies", spared.reason)
        self.dns.set_txt("_dmarc.example.com", b"v=DMARC1; p=quarantine; pct=0")
        self.assertEqual(self.evaluate("example.com", rng=lambda: 0.0).policy, "none")

    def test_no_record_is_none(self) -> None:
        r = self.evaluate("example.org", SPF("pass", "example.org"))
        self.assertEqual((r.result, r.policy), ("none", "none"))
        self.assertEqual(
            r.reason, "no DMARC record at _dmarc.example.org: the domain publishes no policy"
        )
        self.assertIsNone(r.method_result().property("policy.dmarc"))

    def test_other_txt_records_are_discarded(self) -> None:
        self.dns.set_txt("_dmarc.example.com", b"v=spf1 -all", b"p=reject; v=DMARC1")
        self.assertEqual(self.evaluate("example.com").result, "none")

    def test_two_records_is_none(self) -> None:
        self.dns.add_txt("_dmarc.example.com", b"v=DMARC1; p=none")
        r = self.evaluate("example.com")
        self.assertEqual(r.result, "none")
        self.assertIn("2 DMARC records at _dmarc.example.com: none applies", r.reason)

    def test_dns_temporary_failure_is_temperror(self) -> None:
        self.dns.tempfail.add("_dmarc.example.com")
        r = self.evaluate("example.com", None, [dkim("example.com")])
        self.assertEqual((r.result, r.policy), ("temperror", "none"))

    def test_temporary_failure_at_the_org_domain(self) -> None:
        self.dns.tempfail.add("_dmarc.example.com")
        self.assertEqual(self.evaluate("a.example.com").result, "temperror")

    def test_aligned_dkim_temperror_makes_a_fail_temporary(self) -> None:
        r = self.evaluate(
            "example.com", SPF("fail", "example.com"), [dkim("example.com", "temperror")]
        )
        self.assertEqual((r.result, r.policy), ("temperror", "none"))
        self.assertIn("DKIM for example.com could not be checked now", r.reason)

    def test_unaligned_temperror_does_not_help(self) -> None:
        r = self.evaluate("example.com", None, [dkim("other.example", "temperror")])
        self.assertEqual(r.result, "fail")

    def test_budget(self) -> None:
        r = self.evaluate("a.example.com", budget=DNSBudget(limit=1))
        self.assertEqual(r.result, "none")
        self.assertIn("DMARC not checked", r.reason)


class WholeMessage(SynchronousTestCase):
    """verify_dkim then check_message on dkimpy-signed mail."""

    def setUp(self) -> None:
        self.dns = MemoryResolver(
            txt={
                "sel._domainkey.example.com": [rsa_key()[1]],
                "sel._domainkey.mailer.example.net": [rsa_key()[1]],
                "_dmarc.example.com": [b"v=DMARC1; p=reject"],
            }
        )

    def judge(self, msg: bytes) -> DMARCResult:
        sigs = run(self, verify_dkim(self.dns, msg))
        return run(self, check_message(self.dns, msg, None, sigs))

    def test_signed_by_the_from_domain(self) -> None:
        self.assertEqual(self.judge(sign(message())).result, "pass")

    def test_signed_by_a_mailer(self) -> None:
        r = self.judge(sign(message(), domain=b"mailer.example.net"))
        self.assertEqual((r.result, r.policy), ("fail", "reject"))
        self.assertIn("example.com != mailer.example.net", r.reason)

    def test_body_changed(self) -> None:
        msg = sign(message()).replace(b"Hello.", b"Changed.")
        r = self.judge(msg)
        self.assertEqual(r.result, "fail")
        self.assertIn("no DKIM signature passed", r.reason)

    def test_two_from_fields(self) -> None:
        r = self.judge(sign(message(extra=b"From: x@example.com\r\n")))
        self.assertEqual((r.result, r.policy), ("permerror", "none"))

    def test_no_from(self) -> None:
        r = run(self, check_message(self.dns, b"Subject: x\r\n\r\nhi\r\n", None, []))
        self.assertEqual((r.result, r.reason), ("none", "no From domain: DMARC does not apply"))
