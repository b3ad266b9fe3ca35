"""SPF (``mailhub.checks.spf``): results in words, the SMTP identities, the limits, bad input.

The RFC 7208 suite itself runs in tests/test_spf_suite.py; these tests cover what it does not:
the explanations a developer reads, ``check_smtp`` and its ``Authentication-Results`` resinfo,
the per-message DNS budget, and records built to hurt (1000 mechanisms, absurd macros, loops,
huge or non-ASCII TXT). All with an in-memory resolver; tests/test_spf_localdns.py asks a real
DNS server on 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks.dns import DNSBudget
from mailhub.checks.resolver import budgeted
from mailhub.checks.spf import SPFResult, SPFVerdict, check_host, check_smtp
from tests.support.checkdns import MemoryResolver

# Pieces the property test builds record text from: record grammar, macros, and what breaks it.
RECORD_PIECES = [
    *"v=spf1 aAmxptrinclude:exists/redirect.%{}slodipvhcrt0123456789-+~?_,",
    *["ip4:", "ip6:", "all", " ", "\t", "é", "::", "%{", "//", "exp=", "redirect="],
]
RESULTS = {"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"}


def spf(text: str | bytes) -> dict[str, list[Any]]:
    return {"TXT": [text.encode() if isinstance(text, str) else text]}


class SPFTestCase(SynchronousTestCase):
    def check(
        self, dns: Any, ip: str, domain: str = "example.com", sender: str = "", **kw: Any
    ) -> SPFResult:
        coroutine = check_host(dns, ip, domain, sender or f"alice@{domain}", **kw)
        result: SPFResult = self.successResultOf(defer.Deferred.fromCoroutine(coroutine))
        return result

    def smtp(self, dns: Any, ip: str, mail_from: str, helo: str, **kw: Any) -> SPFVerdict:
        coroutine = check_smtp(dns, ip, mail_from, helo, **kw)
        verdict: SPFVerdict = self.successResultOf(defer.Deferred.fromCoroutine(coroutine))
        return verdict


class Explanations(SPFTestCase):
    """Each result says why in words a developer understands."""

    def test_fail_by_all(self) -> None:
        dns = MemoryResolver({"example.com": spf("v=spf1 ip4:192.0.2.1 -all")})
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(r.result, "fail")
        self.assertEqual(
            r.explanation,
            "192.0.2.9 is not allowed by example.com's SPF record, which ends in -all",
        )
        self.assertEqual(r.mechanism, "-all")
        self.assertEqual(r.domain, "example.com")

    def test_softfail_by_all(self) -> None:
        dns = MemoryResolver({"example.com": spf("v=spf1 ~all")})
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(r.result, "softfail")
        self.assertIn("which ends in ~all (softfail", r.explanation)

    def test_no_record_and_no_domain(self) -> None:
        dns = MemoryResolver({"example.com": {"TXT": [b"google-site-verification=abc"]}})
        r = self.check(dns, "192.0.2.9")
        self.assertEqual((r.result, r.explanation), ("none", "example.com has no SPF record"))
        r = self.check(dns, "192.0.2.9", "nowhere.example")
        self.assertEqual(r.result, "none")
        self.assertEqual(r.explanation, "nowhere.example does not exist (NXDOMAIN)")

    def test_pass_through_include_names_the_matching_mechanism(self) -> None:
        dns = MemoryResolver(
            {
                "example.com": spf("v=spf1 include:_spf.mailer.example -all"),
                "_spf.mailer.example": spf("v=spf1 ip4:192.0.2.0/24 -all"),
            }
        )
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(r.result, "pass")
        self.assertEqual(
            r.explanation,
            "192.0.2.9 is allowed by example.com's SPF record: include:_spf.mailer.example "
            "(ip4:192.0.2.0/24 in _spf.mailer.example) matches",
        )
        self.assertEqual(r.lookups, 1)

    def test_include_loop(self) -> None:
        dns = MemoryResolver(
            {
                "example.com": spf("v=spf1 include:_spf.mailer.example -all"),
                "_spf.mailer.example": spf("v=spf1 include:_spf.mailer.example"),
            }
        )
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(r.result, "permerror")
        self.assertEqual(
            r.explanation,
            "include:_spf.mailer.example loops "
            "(example.com > _spf.mailer.example > _spf.mailer.example)",
        )

    def test_redirect_loop_through_two_domains(self) -> None:
        dns = MemoryResolver(
            {
                "example.com": spf("v=spf1 redirect=example.net"),
                "example.net": spf("v=spf1 redirect=example.com"),
            }
        )
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(r.result, "permerror")
        self.assertIn(
            "redirect=example.com loops (example.com > example.net > example.com)", r.explanation
        )

    def test_more_than_ten_lookups(self) -> None:
        zone = {f"h{i}.example.com": {"A": ["198.51.100.1"]} for i in range(12)}
        terms = " ".join(f"a:h{i}.example.com" for i in range(12))
        zone["example.com"] = spf(f"v=spf1 {terms} -all")
        dns = MemoryResolver(zone)
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(r.result, "permerror")
        self.assertTrue(r.explanation.startswith("more than 10 DNS lookups (RFC 7208 4.6.4)"))
        self.assertIn("a:h10.example.com", r.explanation)
        self.assertEqual(len([q for q in dns.queries if q[0] == "A"]), 10)  # the 11th not asked

    def test_void_lookups(self) -> None:
        dns = MemoryResolver(
            {"example.com": spf("v=spf1 a:x.example a:y.example a:z.example -all")}
        )
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(r.result, "permerror")
        self.assertIn("more than 2 DNS lookups found nothing", r.explanation)
        self.assertEqual(r.void_lookups, 3)

    def test_syntax_error_names_the_term_and_the_record(self) -> None:
        dns = MemoryResolver(
            {
                "example.com": spf("v=spf1 include:_spf.mailer.example -all"),
                "_spf.mailer.example": spf("v=spf1 a:192.0.2.1 -all"),
            }
        )
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(r.result, "permerror")
        self.assertEqual(
            r.explanation,
            "_spf.mailer.example's SPF record (include:_spf.mailer.example from example.com) has "
            "a syntax error: a:192.0.2.1: an IP address is not a domain; write ip4:192.0.2.1",
        )

    def test_several_records(self) -> None:
        dns = MemoryResolver({"example.com": {"TXT": [b"v=spf1 -all", b"v=spf1 +all"]}})
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(r.result, "permerror")
        self.assertEqual(r.explanation, "example.com has 2 SPF records; RFC 7208 4.5 allows one")

    def test_include_of_no_record(self) -> None:
        dns = MemoryResolver({"example.com": spf("v=spf1 include:gone.example -all")})
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(r.result, "permerror")
        self.assertIn(
            "include:gone.example in example.com's SPF record: gone.example does", r.explanation
        )

    def test_temperror_names_the_lookup(self) -> None:
        dns = MemoryResolver({"example.com": spf("v=spf1 include:slow.example -all")})
        dns.tempfail.add("slow.example")
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(r.result, "temperror")
        self.assertEqual(
            r.explanation,
            "the DNS lookup of TXT slow.example failed (timeout asking TXT slow.example)",
        )

    def test_exp_text_for_fail(self) -> None:
        dns = MemoryResolver(
            {
                "example.com": spf("v=spf1 mx -all exp=why.%{d}"),
                "why.example.com": {"TXT": [b"%{i} may not send for %{d}; see %{r}/spf"]},
            }
        )
        r = self.check(dns, "192.0.2.9", receiver="mx.receiver.example")
        self.assertEqual(r.result, "fail")
        self.assertEqual(
            r.authority_explanation,
            "192.0.2.9 may not send for example.com; see mx.receiver.example/spf",
        )
        self.assertTrue(
            r.explanation.endswith(f'example.com explains: "{r.authority_explanation}"')
        )
        self.assertEqual((r.lookups, r.void_lookups), (1, 1))  # mx (void); exp= is not counted

    def test_exp_text_is_printable_and_short(self) -> None:
        dns = MemoryResolver(
            {
                "example.com": spf("v=spf1 -all exp=why.example.com"),
                "why.example.com": {"TXT": [b"%{l} " + b"x" * 1000]},
            }
        )
        r = self.check(dns, "192.0.2.9", sender="a\tb\x07c@example.com")
        self.assertEqual(r.authority_explanation, "a b c " + "x" * 294)

    def test_exp_is_not_fetched_unless_fail(self) -> None:
        dns = MemoryResolver({"example.com": spf("v=spf1 ~all exp=why.example.com")})
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(r.result, "softfail")
        self.assertEqual(dns.queries, [("TXT", "example.com")])

    def test_neutral_by_default(self) -> None:
        dns = MemoryResolver({"example.com": spf("v=spf1 ip4:198.51.100.0/24")})
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(r.result, "neutral")
        self.assertIn("no mechanism in example.com's SPF record matches 192.0.2.9", r.explanation)

    def test_redirect_is_named(self) -> None:
        dns = MemoryResolver(
            {
                "example.com": spf("v=spf1 redirect=_spf.example.net"),
                "_spf.example.net": spf("v=spf1 -all"),
            }
        )
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(
            r.explanation,
            "192.0.2.9 is not allowed by example.com's SPF record (through redirect to "
            "_spf.example.net), which ends in -all",
        )


class Mechanisms(SPFTestCase):
    """What the suite covers lightly: IPv6 macros, %{p}, mx limits, ptr errors, U-labels."""

    def test_ipv4_mapped_client_is_ipv4(self) -> None:
        dns = MemoryResolver({"example.com": spf("v=spf1 ip4:192.0.2.0/24 ip6:::/0 -all")})
        r = self.check(dns, "::ffff:192.0.2.9")
        self.assertEqual(r.result, "pass")
        self.assertIn("ip4:192.0.2.0/24", r.explanation)

    def test_ipv6_nibbles_and_v_macro(self) -> None:
        name = (
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.allow.example.com"
        )
        dns = MemoryResolver(
            {
                "example.com": spf("v=spf1 exists:%{ir}.%{v}.allow.%{d} -all"),
                name: {"A": ["127.0.0.2"]},
            }
        )
        self.assertEqual(self.check(dns, "2001:db8::1").result, "pass")
        self.assertEqual(self.check(dns, "2001:db8::2").result, "fail")

    def test_mx_with_more_than_ten_hosts_is_permerror(self) -> None:
        zone: dict[str, dict[str, list[Any]]] = {
            "example.com": {
                "TXT": [b"v=spf1 mx -all"],
                "MX": [(i, f"mx{i}.example.com") for i in range(11)],
            }
        }
        r = self.check(MemoryResolver(zone), "192.0.2.9")
        self.assertEqual(r.result, "permerror")
        self.assertIn(
            "example.com has 11 MX hosts; the mx mechanism may look up at most 10", r.explanation
        )

    def test_null_mx_matches_nothing(self) -> None:
        dns = MemoryResolver({"example.com": {"TXT": [b"v=spf1 mx -all"], "MX": [(0, "")]}})
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(r.result, "fail")
        self.assertEqual(r.void_lookups, 0)

    def test_ptr_lookup_error_is_no_match(self) -> None:
        """RFC 7208 5.5: a DNS error on the PTR lookup makes ptr fail to match (not temperror)."""
        dns = MemoryResolver({"example.com": spf("v=spf1 ptr ~all")})
        dns.tempfail.add("9.2.0.192.in-addr.arpa")
        self.assertEqual(self.check(dns, "192.0.2.9").result, "softfail")

    def test_p_macro_prefers_a_name_under_the_domain(self) -> None:
        dns = MemoryResolver(
            {
                "example.com": spf("v=spf1 -all exp=why.example.com"),
                "why.example.com": {"TXT": [b"from %{p}"]},
                "9.2.0.192.in-addr.arpa": {
                    "PTR": ["other.example.net", "mx.example.com", "bad.example.com"]
                },
                "other.example.net": {"A": ["192.0.2.9"]},
                "mx.example.com": {"A": ["192.0.2.9"]},
                "bad.example.com": {"A": ["192.0.2.10"]},
            }
        )
        self.assertEqual(self.check(dns, "192.0.2.9").authority_explanation, "from mx.example.com")

    def test_u_label_domain_is_asked_as_a_label(self) -> None:
        dns = MemoryResolver({"xn--bcher-kva.example": spf("v=spf1 ip4:192.0.2.9 -all")})
        r = self.check(dns, "192.0.2.9", "bücher.example", "a@bücher.example")
        self.assertEqual(r.result, "pass")
        self.assertEqual(dns.queries[0], ("TXT", "xn--bcher-kva.example"))
        # %{o}, the sender's domain, too
        dns = MemoryResolver(
            {
                "example.com": spf("v=spf1 exists:%{o}.allowed.example.com -all"),
                "xn--bcher-kva.example.allowed.example.com": {"A": ["127.0.0.2"]},
            }
        )
        self.assertEqual(self.check(dns, "192.0.2.9", sender="a@bücher.example").result, "pass")

    def test_time_macro_in_explanation(self) -> None:
        dns = MemoryResolver(
            {
                "example.com": spf("v=spf1 -all exp=e.example.com"),
                "e.example.com": {"TXT": [b"at %{t}"]},
            }
        )
        self.assertEqual(
            self.check(dns, "192.0.2.9", now=1234567890.5).authority_explanation, "at 1234567890"
        )

    def test_not_an_address(self) -> None:
        r = self.check(MemoryResolver(), "unix-socket")
        self.assertEqual(r.result, "none")


class SMTPIdentities(SPFTestCase):
    """check_smtp: HELO and MAIL FROM (RFC 7208 2.3, 2.4) and the A-R resinfo (RFC 8601)."""

    def zone(self) -> MemoryResolver:
        return MemoryResolver(
            {
                "example.com": spf("v=spf1 ip4:192.0.2.0/24 -all"),
                "mail.example.net": spf("v=spf1 a -all") | {"A": ["192.0.2.9"]},
            }
        )

    def test_mail_from_and_helo(self) -> None:
        v = self.smtp(self.zone(), "192.0.2.9", "alice@example.com", "mail.example.net")
        self.assertEqual((v.mailfrom.result, v.mailfrom.domain), ("pass", "example.com"))
        self.assertEqual((v.helo.result, v.helo.domain), ("pass", "mail.example.net"))
        m = v.method_result()
        self.assertEqual((m.method, m.result, m.reason), ("spf", "pass", v.mailfrom.explanation))
        self.assertEqual(
            m.properties,
            (("smtp.mailfrom", "alice@example.com"), ("smtp.helo", "mail.example.net")),
        )

    def test_null_sender_is_postmaster_at_helo(self) -> None:
        dns = self.zone()
        v = self.smtp(dns, "192.0.2.9", "", "mail.example.net")
        self.assertIs(v.mailfrom, v.helo)  # one evaluation, not two
        self.assertEqual(v.mailfrom.result, "pass")
        self.assertEqual(v.sender, "postmaster@mail.example.net")
        self.assertEqual(dns.queries.count(("TXT", "mail.example.net")), 1)
        self.assertEqual(v.method_result().property("smtp.mailfrom"), "postmaster@mail.example.net")

    def test_helo_address_literal_is_none_but_mail_from_is_checked(self) -> None:
        v = self.smtp(self.zone(), "198.51.100.7", "<alice@example.com>", "[198.51.100.7]")
        self.assertEqual(v.helo.result, "none")
        self.assertEqual(v.mailfrom.result, "fail")
        self.assertEqual(v.method_result().result, "fail")


class Limits(SPFTestCase):
    def test_budget_exhausted_is_permerror(self) -> None:
        zone = {f"h{i}.example.com": {"A": ["198.51.100.1"]} for i in range(5)}
        zone["example.com"] = spf("v=spf1 " + " ".join(f"a:h{i}.example.com" for i in range(5)))
        budget = DNSBudget(limit=3)
        r = self.check(MemoryResolver(zone), "192.0.2.9", budget=budget)
        self.assertEqual(r.result, "permerror")
        self.assertIn("more than 3 DNS lookups for one message", r.explanation)
        self.assertEqual(budget.used, 4)

    def test_budget_is_shared_by_both_identities(self) -> None:
        budget = DNSBudget(limit=50)
        dns = MemoryResolver(
            {"example.com": spf("v=spf1 a -all"), "mail.example.net": spf("v=spf1 a -all")}
        )
        self.smtp(dns, "192.0.2.9", "alice@example.com", "mail.example.net", budget=budget)
        self.assertEqual(budget.used, len(dns.queries))
        self.assertEqual(budget.used, 4)
        # handed a resolver that already spends this budget, and the budget: counted once
        used = budget.used
        self.check(budgeted(dns, budget), "192.0.2.9", budget=budget)
        self.assertEqual(budget.used, used + 2)

    def test_waits_on_dns_without_blocking_and_a_timeout_cancels(self) -> None:
        """Nothing blocks: with a resolver that never answers, check_host is a pending
        Deferred; the caller's addTimeout (RFC 7208 4.6.4's elapsed-time limit) ends it."""

        clock = task.Clock()
        silent = MemoryResolver()
        silent.silent = True
        d = defer.Deferred.fromCoroutine(
            check_host(silent, "192.0.2.9", "example.com", "a@example.com")
        )
        d.addTimeout(20, clock)
        self.assertNoResult(d)
        self.assertEqual(silent.queries, [("TXT", "example.com")])
        clock.advance(20)
        self.failureResultOf(d, defer.TimeoutError)
        # check_smtp asks HELO and MAIL FROM at once; a timeout ends both
        silent.queries.clear()
        both = defer.Deferred.fromCoroutine(
            check_smtp(silent, "192.0.2.9", "a@example.com", "mail.example.net")
        )
        both.addTimeout(20, clock)
        self.assertEqual(
            sorted(silent.queries), [("TXT", "example.com"), ("TXT", "mail.example.net")]
        )
        clock.advance(20)
        self.failureResultOf(both, defer.TimeoutError)


class BadInput(SPFTestCase):
    """Records built to hurt get a result, quickly, never an exception."""

    def test_thousand_ip4_mechanisms(self) -> None:
        terms = " ".join(f"ip4:10.{i // 256}.{i % 256}.0/24" for i in range(1000))
        dns = MemoryResolver({"example.com": spf(f"v=spf1 {terms} ip4:192.0.2.9 -all")})
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(r.result, "pass")
        self.assertEqual(r.lookups, 0)
        self.assertEqual(len(dns.queries), 1)

    def test_thousand_dns_mechanisms_stop_at_the_eleventh(self) -> None:
        dns = MemoryResolver(
            {"example.com": spf("v=spf1 " + "a " * 1000 + "-all") | {"A": ["198.51.100.1"]}}
        )
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(r.result, "permerror")
        self.assertEqual(r.lookups, 11)
        self.assertEqual(len(dns.queries), 11)  # the record and 10 A

    def test_absurd_macros(self) -> None:
        for record, result in [
            ("v=spf1 exists:%{d99999999999999999999999999r}.x.example -all", "fail"),
            ("v=spf1 exists:%{l0}.x.example -all", "permerror"),  # 0 parts (7.3)
            ("v=spf1 exists:%{s -all", "permerror"),
            ("v=spf1 exists:%{z}.x.example -all", "permerror"),
            ("v=spf1 exists:%{c}.x.example -all", "permerror"),  # c only in exp (7.2)
            ("v=spf1 exists:" + "%{s}" * 5000 + " -all", "fail"),  # megabytes: not asked
            ("v=spf1 exists:" + "%{l1r+-.,/_=}" * 100 + ".x.example -all", "fail"),
            ("v=spf1 exists:%%%%%_%-.x.example -all", "fail"),
            ("v=spf1 exists:" + "a." * 200 + "%{d}" + " -all", "fail"),  # cut to 253 (7.3)
        ]:
            dns = MemoryResolver({"example.com": spf(record)})
            r = self.check(dns, "192.0.2.9", sender="x-y+z@example.com")
            self.assertEqual(r.result, result, (record[:60], r))
            for _, name in dns.queries:
                self.assertLessEqual(len(name), 253)

    def test_huge_txt(self) -> None:
        """A 60 KB record (TXT can be 64 KB): thousands of unknown modifiers, then the end."""
        record = "v=spf1 " + " ".join(f"x{i}=%{{d}}.{'y' * 20}" for i in range(2500)) + " -all"
        self.assertGreater(len(record), 60_000)
        r = self.check(MemoryResolver({"example.com": spf(record)}), "192.0.2.9")
        self.assertEqual(r.result, "fail")

    def test_non_ascii(self) -> None:
        dns = MemoryResolver({"example.com": spf("v=spf1 a:bücher.example -all")})
        r = self.check(dns, "192.0.2.9")
        self.assertEqual(r.result, "permerror")
        self.assertIn("non-ASCII", r.explanation)
        dns = MemoryResolver({"example.com": spf(b"v=spf1 \xff\xfe -all")})
        self.assertEqual(self.check(dns, "192.0.2.9").result, "permerror")
        # a non-ASCII local-part expands to a name that cannot be asked: no match, no query
        dns = MemoryResolver({"example.com": spf("v=spf1 exists:%{l}.x.example -all")})
        r = self.check(dns, "192.0.2.9", sender="jörg@example.com")
        self.assertEqual(r.result, "fail")
        self.assertEqual(dns.queries, [("TXT", "example.com")])

    def test_record_in_odd_character_strings(self) -> None:
        """TXT strings are joined without spaces (RFC 7208 3.3): split in the middle of a term,
        of 'v=spf1' itself, or into empty strings, the record is the same."""
        whole = b"v=spf1 ip4:192.0.2.0/24 -all"
        for cuts in [(3,), (6,), (7,), (14, 15, 16), (0, 0, 28)]:
            strings, last = [], 0
            for cut in cuts:
                strings.append(whole[last:cut])
                last = cut
            strings.append(whole[last:])
            joined = b"".join(strings)  # what CheckResolver.txt gives (dns.py)
            r = self.check(MemoryResolver({"example.com": {"TXT": [joined]}}), "192.0.2.9")
            self.assertEqual(r.result, "pass", strings)

    def test_control_characters_and_tabs(self) -> None:
        for record in [
            b"v=spf1 a\t-all",
            b"v=spf1 ip4:192.0.2.9\r\n-all",
            b"v=spf1 a:x.example\x00",
        ]:
            r = self.check(MemoryResolver({"example.com": spf(record)}), "192.0.2.9")
            self.assertEqual(r.result, "permerror", record)

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.sampled_from(RECORD_PIECES),
            max_size=60,
        )
        .map("".join)
        .map(str.encode)
        | st.binary(max_size=120),
        st.sampled_from(["192.0.2.9", "2001:db8::9", "::ffff:192.0.2.9"]),
        st.text(max_size=30),
        st.sampled_from(["h.example", "", "[192.0.2.9]", "h"]) | st.text(max_size=20),
    )
    def test_never_raises(self, tail: bytes, ip: str, local: str, helo: str) -> None:
        """Whatever the record says (and whoever the sender is), the answer is a result."""
        record = {
            "TXT": [b"v=spf1 " + tail],
            "A": ["192.0.2.9"],
            "AAAA": ["2001:db8::9"],
            "MX": [(10, "example.com")],
        }
        zone = {"example.com": record, "h.example": record}
        v = self.smtp(MemoryResolver(zone), ip, f"{local}@example.com", helo)
        for r in (v.mailfrom, v.helo):
            self.assertIn(r.result, RESULTS)
            self.assertTrue(r.explanation)
            self.assertNotIn("internal error", r.explanation)
