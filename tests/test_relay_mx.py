"""MX resolution against a local twisted.names DNS server (the real dnspython code path)."""

from __future__ import annotations

import random

from twisted.trial.unittest import TestCase

from mailhub.relay.mx import DNSFailure, MXHost, MXResolver, address_literal
from tests.support.localdns import LocalDNS

ZONE = {
    "a.test": {"MX": [(20, "mx3.a.test"), (10, "mx1.a.test"), (10, "mx2.a.test")]},
    "mx1.a.test": {"A": ["192.0.2.1"], "AAAA": ["2001:db8::1"]},
    "mx2.a.test": {"A": ["192.0.2.2", "192.0.2.22"]},
    "mx3.a.test": {"AAAA": ["2001:db8::3"]},
    "implicit.test": {"A": ["192.0.2.9"], "AAAA": ["2001:db8::9"]},
    "empty.test": {"TXT": []},
    "null.test": {"MX": [(0, ".")]},
    "mixed-null.test": {"MX": [(0, "."), (10, "mx1.a.test")]},
    "dangling.test": {"MX": [(10, "missing.dangling.test")]},
    "many.test": {"MX": [(i, f"mx{i}.many.test") for i in range(8)]},
    **{f"mx{i}.many.test": {"A": [f"192.0.2.{100 + i}"]} for i in range(8)},
}


class MXTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.dns = LocalDNS(ZONE)
        self.dns.start()
        self.addCleanup(self.dns.stop)
        self.mx = MXResolver(self.dns.resolver(lifetime=1.0), rng=random.Random(1))

    async def failure(self, domain: str) -> DNSFailure:
        try:
            await self.mx.mail_hosts(domain)
        except DNSFailure as e:
            return e
        self.fail(f"{domain} resolved")

    async def test_preference_order_and_every_address(self) -> None:
        hosts = await self.mx.mail_hosts("A.test")
        self.assertEqual({h.name for h in hosts[:2]}, {"mx1.a.test", "mx2.a.test"})
        self.assertEqual(hosts[2], MXHost("mx3.a.test", ("2001:db8::3",), 20))
        by = {h.name: h for h in hosts}
        self.assertEqual(by["mx1.a.test"].addresses, ("192.0.2.1", "2001:db8::1"))
        self.assertEqual(by["mx2.a.test"].addresses, ("192.0.2.2", "192.0.2.22"))

    async def test_equal_preferences_in_random_order(self) -> None:
        seen = set()
        for seed in range(12):
            self.mx = MXResolver(self.dns.resolver(), rng=random.Random(seed))
            hosts = await self.mx.mail_hosts("a.test")
            seen.add(tuple(h.name for h in hosts))
            self.assertEqual(hosts[-1].name, "mx3.a.test")  # never before the 10s
        self.assertEqual(
            seen,
            {
                ("mx1.a.test", "mx2.a.test", "mx3.a.test"),
                ("mx2.a.test", "mx1.a.test", "mx3.a.test"),
            },
        )

    async def test_ipv6_first_when_asked(self) -> None:
        self.mx.prefer_ipv6 = True
        hosts = await self.mx.mail_hosts("implicit.test")
        self.assertEqual(hosts[0].addresses, ("2001:db8::9", "192.0.2.9"))

    async def test_implicit_mx(self) -> None:
        hosts = await self.mx.mail_hosts("implicit.test")
        self.assertEqual(hosts, [MXHost("implicit.test", ("192.0.2.9", "2001:db8::9"))])

    async def test_no_mx_and_no_address_is_permanent(self) -> None:
        e = await self.failure("empty.test")
        self.assertEqual((e.permanent, e.status), (True, "5.1.2"))

    async def test_nxdomain_is_permanent_without_implicit_mx(self) -> None:
        e = await self.failure("nx.test")
        self.assertEqual((e.permanent, e.status), (True, "5.1.2"))
        self.assertEqual(self.dns.queries, [("nx.test", "MX")])  # no A/AAAA fallback
        self.assertTrue(e.diagnostic.startswith("X-mailhub; "))

    async def test_null_mx(self) -> None:
        e = await self.failure("null.test")
        self.assertEqual((e.permanent, e.status), (True, "5.1.10"))

    async def test_null_mx_among_others_is_skipped(self) -> None:
        hosts = await self.mx.mail_hosts("mixed-null.test")
        self.assertEqual([h.name for h in hosts], ["mx1.a.test"])

    async def test_mx_host_without_address_is_temporary(self) -> None:
        e = await self.failure("dangling.test")
        self.assertEqual((e.permanent, e.status), (False, "4.4.3"))

    async def test_at_most_five_hosts(self) -> None:
        hosts = await self.mx.mail_hosts("many.test")
        self.assertEqual([h.name for h in hosts], [f"mx{i}.many.test" for i in range(5)])

    async def test_servfail_is_temporary(self) -> None:
        self.dns.authority.servfail.add("broken.test")
        e = await self.failure("broken.test")
        self.assertEqual((e.permanent, e.status), (False, "4.4.3"))
        self.assertIn("SERVFAIL", e.text)

    async def test_timeout_is_temporary(self) -> None:
        self.dns.authority.silent.add("slow.test")
        self.mx = MXResolver(self.dns.resolver(lifetime=0.3))
        e = await self.failure("slow.test")
        self.assertEqual((e.permanent, e.status), (False, "4.4.3"))
        self.assertIn("timed out", e.text)

    async def test_address_literals_skip_dns(self) -> None:
        self.assertEqual(
            await self.mx.mail_hosts("[192.0.2.7]"), [MXHost("[192.0.2.7]", ("192.0.2.7",))]
        )
        hosts = await self.mx.mail_hosts("[IPv6:2001:db8::7]")
        self.assertEqual(hosts[0].addresses, ("2001:db8::7",))
        self.assertEqual(self.dns.queries, [])

    async def test_host_lookup(self) -> None:
        self.assertEqual((await self.mx.host("mx2.a.test")).addresses, ("192.0.2.2", "192.0.2.22"))
        self.assertEqual((await self.mx.host("127.0.0.1")).addresses, ("127.0.0.1",))

    def test_address_literal_syntax(self) -> None:
        self.assertEqual(address_literal("[192.0.2.1]"), "192.0.2.1")
        self.assertEqual(address_literal("[IPv6:::1]"), "::1")
        self.assertIsNone(address_literal("[::1]"))  # IPv6 needs its tag (RFC 5321 4.1.3)
        self.assertIsNone(address_literal("[IPv6:192.0.2.1]"))
        self.assertIsNone(address_literal("example.com"))
