"""mailhub.checks.records: the records a domain needs, and the checks of what DNS has (an
in-memory resolver: no sockets)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks.records import (
    ADVICE,
    OK,
    PROBLEM,
    TEMPORARY,
    check_domain,
    check_mx,
    check_ptr,
    records_for,
    spf_record,
)
from tests.support.checkdns import MemoryResolver


class Records(SynchronousTestCase):
    def test_spf_record(self) -> None:
        self.assertEqual(spf_record(()), "v=spf1 mx -all")
        self.assertEqual(
            spf_record(("203.0.113.5", "2001:DB8::5")),
            "v=spf1 ip4:203.0.113.5 ip6:2001:db8::5 -all",
        )

    def test_smarthost_and_hostname_as_the_domain(self) -> None:
        records, notes = records_for(
            "example.com", hostname="example.com", smarthost="smtp.provider.example:587"
        )
        spf = [r for r in records if r.type == "TXT" and r.name == "example.com"]
        self.assertEqual(len(spf), 1)  # no second SPF record for the HELO name: it is the domain
        self.assertIn("smarthost smtp.provider.example:587", spf[0].why)
        self.assertTrue(any("include:" in n for n in notes))
        self.assertTrue(any("mailhub dkim keygen example.com" in n for n in notes))

    def test_txt_zone_line_is_quoted_strings(self) -> None:
        records, _ = records_for("example.com", hostname="mx.example.com")
        dmarc = next(r for r in records if r.name == "_dmarc.example.com")
        self.assertEqual(
            dmarc.zone_line(),
            '_dmarc.example.com. IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@example.com"',
        )


class Checks(SynchronousTestCase):
    def result(self, coroutine: Any) -> Any:
        return self.successResultOf(defer.Deferred.fromCoroutine(coroutine))

    def test_mx_by_address(self) -> None:
        zone = MemoryResolver(
            {
                "example.com": {"MX": [(10, "mail.example.com.")]},
                "mail.example.com": {"A": ["192.0.2.10"]},
            }
        )
        found = self.result(check_mx(zone, "example.com", "mx.example.com", ["192.0.2.10"]))
        self.assertEqual(found.status, OK)
        self.assertIn("mail.example.com is this server", found.detail)
        found = self.result(check_mx(zone, "example.com", "mx.example.com", ["192.0.2.99"]))
        self.assertEqual(found.status, PROBLEM)

    def test_ptr_must_resolve_back(self) -> None:
        zone = MemoryResolver(
            {
                "10.2.0.192.in-addr.arpa": {"PTR": ["mx.example.com."]},
                "mx.example.com": {"A": ["192.0.2.11"]},
            }
        )
        [found] = self.result(check_ptr(zone, "mx.example.com", ["192.0.2.10"]))
        self.assertEqual(found.status, PROBLEM)
        self.assertEqual(
            found.detail, "192.0.2.10 is mx.example.com, but mx.example.com is not 192.0.2.10"
        )
        zone.tempfail.add("10.2.0.192.in-addr.arpa")
        [found] = self.result(check_ptr(zone, "mx.example.com", ["192.0.2.10"]))
        self.assertEqual(found.status, TEMPORARY)

    def test_unknown_hostname_and_smarthost(self) -> None:
        zone = MemoryResolver(
            {
                "example.com": {"MX": [(10, "mx.example.com")], "TXT": [b"v=spf1 mx -all"]},
                "_dmarc.example.com": {"TXT": [b"v=DMARC1; p=reject"]},
            }
        )
        found = self.result(
            check_domain(zone, "example.com", hostname="mx.example.com", smarthost="relay:587")
        )
        by_what = {(f.what, f.status) for f in found}
        self.assertIn(("A/AAAA", PROBLEM), by_what)  # nobody can reach mx.example.com
        self.assertIn(("MX", OK), by_what)
        self.assertIn(("SPF", ADVICE), by_what)  # the smarthost's provider: not ours to check
        self.assertIn(("DMARC", OK), by_what)
        self.assertNotIn(("DMARC", ADVICE), by_what)  # p=reject: nothing to advise
        self.assertFalse([f for f in found if f.what == "PTR"])

    def test_dmarc_of_the_organizational_domain_applies(self) -> None:
        zone = MemoryResolver(
            {
                "mail.example.com": {"MX": [(10, "mx.example.com")]},
                "mx.example.com": {"A": ["192.0.2.10"], "TXT": [b"v=spf1 a -all"]},
                "_dmarc.example.com": {"TXT": [b"v=DMARC1; p=reject; sp=quarantine"]},
            }
        )
        found = self.result(check_domain(zone, "mail.example.com", hostname="mx.example.com"))
        dmarc = [f for f in found if f.what == "DMARC"]
        self.assertEqual(
            [(f.status, f.detail) for f in dmarc],
            [(OK, "_dmarc.example.com: p=quarantine applies to mail.example.com")],
        )
        spf = [f for f in found if f.what == "SPF"]
        self.assertEqual([f.status for f in spf], [PROBLEM])  # mail.example.com has no SPF
        self.assertIn("none", spf[0].detail)
