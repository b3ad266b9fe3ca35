"""SPF through the real DNS path: ``check_smtp`` over ``TwistedResolver`` (and its cache) asking
the authoritative server of tests/support/localdns.py on 127.0.0.1. Records split into odd
character-strings, a record too big for UDP, CNAMEs, a server that fails or never answers."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from mailhub.checks.resolver import CachingResolver, TwistedResolver
from mailhub.checks.spf import SPFVerdict, check_host, check_smtp
from tests.support.localdns import LocalDNS

BIG = "v=spf1 " + " ".join(f"ip4:198.51.{i}.0/24" for i in range(60)) + " ip4:192.0.2.77 -all"

ZONE: dict[str, dict[str, Any]] = {
    # MAIL FROM domain: its own MX, a mail provider by include, ~all; in odd character-strings
    "example.test": {
        "TXT": [("v=spf1 m", "x incl", "ude:_spf.mailer.test", "", " ~al", "l")],
        "MX": [(10, "mx.example.test")],
    },
    "mx.example.test": {"A": ["192.0.2.10"], "AAAA": ["2001:db8::10"]},
    "_spf.mailer.test": {"TXT": ["v=spf1 ip4:203.0.113.0/24 ip6:2001:db8:5::/48 -all"]},
    # HELO name: a (with a PTR for ptr:)
    "mail.sender.test": {"TXT": ["v=spf1 a ptr:sender.test -all"], "A": ["192.0.2.10"]},
    ipaddress.ip_address("203.0.113.5").reverse_pointer: {"PTR": ["out5.sender.test"]},
    "out5.sender.test": {"A": ["203.0.113.5"]},
    # a record bigger than a UDP answer may be (asked again over TCP)
    "big.test": {"TXT": [BIG]},
    # the SPF record reached through a CNAME, a loop, failures, exp
    "alias.test": {"CNAME": ["_spf.mailer.test"]},
    "loop.test": {"TXT": ["v=spf1 include:loop2.test -all"]},
    "loop2.test": {"TXT": ["v=spf1 redirect=loop.test"]},
    "broken.test": {},
    "slow.test": {},
    "uses-broken.test": {"TXT": ["v=spf1 a:broken.test -all"]},
    "strict.test": {"TXT": ["v=spf1 -all exp=why.strict.test"]},
    "why.strict.test": {"TXT": [("%{i} is not one of ", "our servers (%{d})")]},
    "nullmx.test": {"TXT": ["v=spf1 mx -all"], "MX": [(0, ".")]},
    # the SPF suite's macro-mania-in-domain: %% %_ %- make a name with spaces, asked as it is
    "e1a.example.test": {"TXT": ["v=spf1 a:macro%%percent%_%_space%-url-space.example.test -all"]},
    "macro%percent  space%20url-space.example.test": {"A": ["1.2.3.4"]},
}


class SPFOverLocalDNS(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.dns = LocalDNS(ZONE)
        self.dns.start()
        self.addCleanup(self.dns.stop)
        self.dns.authority.servfail.add("broken.test")
        self.dns.authority.silent.add("slow.test")
        self.resolver = TwistedResolver([self.dns.address], timeout=2.0)

    async def smtp(self, ip: str, mail_from: str, helo: str, resolver: Any = None) -> SPFVerdict:
        return await check_smtp(
            self.resolver if resolver is None else resolver, ip, mail_from, helo
        )

    async def test_pass_by_mx_include_and_helo(self) -> None:
        v = await self.smtp("192.0.2.10", "alice@example.test", "mail.sender.test")
        self.assertEqual((v.mailfrom.result, v.helo.result), ("pass", "pass"))
        self.assertIn("mx matches", v.mailfrom.explanation)
        v = await self.smtp("2001:db8:5::25", "alice@example.test", "mail.sender.test")
        self.assertEqual(v.mailfrom.result, "pass")
        self.assertIn(
            "include:_spf.mailer.test (ip6:2001:db8:5::/48 in _spf.mailer.test)",
            v.mailfrom.explanation,
        )
        self.assertEqual(v.helo.result, "fail")

    async def test_macro_made_name_with_spaces(self) -> None:
        v = await self.smtp("1.2.3.4", "test@e1a.example.test", "mail.sender.test")
        self.assertEqual(v.mailfrom.result, "pass")
        self.assertIn(
            ("macro%percent  space%20url-space.example.test", "A"), self.dns.authority.queries
        )

    async def test_softfail_and_ptr(self) -> None:
        v = await self.smtp("203.0.113.5", "bob@example.test", "mail.sender.test")
        self.assertEqual(v.mailfrom.result, "pass")  # 203.0.113.0/24 of the provider
        self.assertEqual(v.helo.result, "pass")  # ptr:sender.test, validated
        v = await self.smtp("198.51.100.1", "bob@example.test", "mail.sender.test")
        self.assertEqual(v.mailfrom.result, "softfail")
        self.assertEqual(v.method_result().result, "softfail")

    async def test_null_sender(self) -> None:
        v = await self.smtp("192.0.2.10", "", "mail.sender.test")
        self.assertEqual(v.sender, "postmaster@mail.sender.test")
        self.assertEqual(v.mailfrom.result, "pass")

    async def test_record_over_udp_size_comes_by_tcp(self) -> None:
        self.assertGreater(len(BIG), 512)
        r = await check_host(self.resolver, "192.0.2.77", "big.test", "x@big.test")
        self.assertEqual(r.result, "pass")
        self.assertEqual(self.dns.tcp_queries, [("big.test", "TXT")])

    async def test_cname_to_the_record(self) -> None:
        r = await check_host(self.resolver, "203.0.113.9", "alias.test", "x@alias.test")
        self.assertEqual(r.result, "pass")

    async def test_loop(self) -> None:
        r = await check_host(self.resolver, "192.0.2.1", "loop.test", "x@loop.test")
        self.assertEqual(r.result, "permerror")
        self.assertIn("loops (loop.test > loop2.test > loop.test)", r.explanation)

    async def test_servfail_and_silence_are_temperror(self) -> None:
        r = await check_host(self.resolver, "192.0.2.1", "uses-broken.test", "x@uses-broken.test")
        self.assertEqual(r.result, "temperror")
        self.assertIn("A broken.test failed", r.explanation)
        quick = TwistedResolver([self.dns.address], timeout=0.3)
        r = await check_host(quick, "192.0.2.1", "slow.test", "x@slow.test")
        self.assertEqual(r.result, "temperror")
        self.assertIn("TXT slow.test failed", r.explanation)

    async def test_exp_in_odd_strings(self) -> None:
        r = await check_host(self.resolver, "192.0.2.1", "strict.test", "x@strict.test")
        self.assertEqual(r.result, "fail")
        self.assertEqual(
            r.authority_explanation, "192.0.2.1 is not one of our servers (strict.test)"
        )

    async def test_null_mx(self) -> None:
        r = await check_host(self.resolver, "192.0.2.1", "nullmx.test", "x@nullmx.test")
        self.assertEqual(r.result, "fail")

    async def test_cached_second_check_asks_nothing(self) -> None:
        cache = CachingResolver(self.resolver, reactor)  # type: ignore[arg-type]
        first = await self.smtp("192.0.2.10", "alice@example.test", "mail.sender.test", cache)
        self.assertEqual((first.mailfrom.result, first.helo.result), ("pass", "pass"))
        asked = len(self.dns.queries)
        self.assertGreater(asked, 0)
        second = await self.smtp("192.0.2.10", "alice@example.test", "mail.sender.test", cache)
        self.assertEqual(second, first)
        self.assertEqual(self.dns.queries[asked:], [], self.dns.queries)
