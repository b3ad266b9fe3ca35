"""ARC (mailhub.checks.arc, RFC 8617): a chain sealed by two forwarders validates, a broken or
malformed one fails with its reason, and our seal carries our results and the right cv=."""

from __future__ import annotations

import re
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailhub.checks.arc import ARCResult, ARCSealError, arc_seal, verify_arc
from mailhub.checks.dkimverify import INLINE_LIMIT
from mailhub.checks.dns import DNSBudget
from mailhub.checks.keys import ED25519_SHA256, RSA_SHA256, SigningKey
from mailhub.checks.results import AuthenticationResults, MethodResult
from tests.support.checkdns import MemoryResolver
from tests.support.dkimkeys import ed25519_key, message, rsa_key, sign

T = TypeVar("T")


def run(case: SynchronousTestCase, coro: Coroutine[Any, Any, T]) -> T:
    return case.successResultOf(defer.Deferred.fromCoroutine(coro))


FIRST = SigningKey("forwarder.example", "arc", RSA_SHA256, rsa_key()[0])
SECOND = SigningKey("list.example.org", "seal", RSA_SHA256, rsa_key()[0])


def resolver() -> MemoryResolver:
    return MemoryResolver(
        txt={
            "arc._domainkey.forwarder.example": [rsa_key()[1]],
            "seal._domainkey.list.example.org": [rsa_key()[1]],
            "sel._domainkey.example.com": [rsa_key()[1]],
        }
    )


def results(authserv_id: str, arc: ARCResult | None) -> AuthenticationResults:
    found = [
        MethodResult("spf", "pass", "sender is allowed", (("smtp.mailfrom", "a@example.com"),)),
        MethodResult(
            "dkim",
            "pass",
            'signature verified with the "RSA-2048" key',
            (("header.d", "example.com"),),
        ),
    ]
    if arc is not None:
        found.append(arc.method_result())
    return AuthenticationResults(authserv_id, tuple(found))


class Chain(SynchronousTestCase):
    def seal(self, msg: bytes, key: SigningKey, authserv_id: str) -> bytes:
        arc = run(self, verify_arc(self.dns, msg))
        return arc_seal(msg, key, authserv_id, results(authserv_id, arc)) + msg

    def setUp(self) -> None:
        self.dns = resolver()
        self.original = sign(message())
        self.once = self.seal(self.original, FIRST, "mx.forwarder.example")
        self.twice = self.seal(self.once, SECOND, "mx.list.example.org")
        self.dns.queries.clear()

    def test_no_arc_is_none(self) -> None:
        r = run(self, verify_arc(self.dns, self.original))
        self.assertEqual((r.result, r.instances), ("none", 0))
        self.assertEqual(self.dns.queries, [])

    def test_unreadable_header_without_arc_is_none(self) -> None:
        r = run(self, verify_arc(self.dns, b" fold first\r\n" + self.original))
        self.assertEqual(r.result, "none")
        r = run(self, verify_arc(self.dns, b" fold first\r\n" + self.once))
        self.assertEqual(r.result, "fail")

    def test_sealed_once_passes(self) -> None:
        r = run(self, verify_arc(self.dns, self.once))
        self.assertEqual((r.result, r.instances), ("pass", 1))
        self.assertEqual(r.reason, "ARC chain of 1 sets validated: i=1 by forwarder.example")
        self.assertIn(b"cv=none", self.once.split(b"ARC-Message-Signature")[0])

    def test_sealed_twice_passes(self) -> None:
        r = run(self, verify_arc(self.dns, self.twice))
        self.assertEqual((r.result, r.instances), ("pass", 2))
        self.assertEqual(
            r.reason,
            "ARC chain of 2 sets validated: i=1 by forwarder.example, i=2 by list.example.org",
        )
        self.assertEqual([s.instance for s in r.chain], [2, 1])
        self.assertTrue(all(s.seal_valid for s in r.chain))
        # the second seal says the chain it found passed
        seal2 = re.search(rb"ARC-Seal: i=2;[^:]*", self.twice)
        assert seal2 is not None
        self.assertIn(b"cv=pass", seal2.group(0))
        self.assertEqual(r.method_result().result, "pass")

    def test_keys_fetched_once_each(self) -> None:
        run(self, verify_arc(self.dns, self.twice))
        self.assertEqual(
            sorted(q for _, q in self.dns.queries),
            ["arc._domainkey.forwarder.example", "seal._domainkey.list.example.org"],
        )

    def test_body_changed_after_sealing_fails(self) -> None:
        r = run(self, verify_arc(self.dns, self.twice.replace(b"Hello.", b"Bye.")))
        self.assertEqual(r.result, "fail")
        self.assertEqual(
            r.reason,
            "the newest ARC-Message-Signature (i=2, list.example.org) did not validate: "
            "the message changed after it was sealed",
        )

    def test_broken_older_seal_fails(self) -> None:
        # Change the first forwarder's recorded results: its seal covers them.
        broken = self.twice.replace(
            b"i=1; mx.forwarder.example;", b"i=1; mx.forwarder.example; x=1;"
        )
        self.assertNotEqual(broken, self.twice)
        r = run(self, verify_arc(self.dns, broken))
        self.assertEqual(r.result, "fail")
        self.assertIn("did not validate: the chain was altered or forged", r.reason)

    def test_missing_key_fails(self) -> None:
        del self.dns.zone["arc._domainkey.forwarder.example"]
        r = run(self, verify_arc(self.dns, self.twice))
        self.assertEqual(r.result, "fail")
        self.assertFalse(r.temporary)

    def test_key_timeout_fails_temporarily(self) -> None:
        self.dns.tempfail.add("seal._domainkey.list.example.org")
        r = run(self, verify_arc(self.dns, self.twice))
        self.assertEqual((r.result, r.temporary), ("fail", True))
        self.assertIn("could not be fetched now", r.reason)

    def test_budget_spent_per_key(self) -> None:
        budget = DNSBudget(limit=2)
        self.assertEqual(run(self, verify_arc(self.dns, self.twice, budget=budget)).result, "pass")
        self.assertEqual(budget.used, 2)  # the two keys, each asked once
        r = run(self, verify_arc(self.dns, self.twice, budget=DNSBudget(limit=1)))
        self.assertEqual((r.result, r.temporary), ("fail", True))
        self.assertIn("not checked: more than 1 DNS lookups for one message", r.reason)

    def test_incomplete_set(self) -> None:
        lines = self.twice.split(b"\r\n")
        start = next(
            i for i, line in enumerate(lines) if line.startswith(b"ARC-Message-Signature: i=2")
        )
        end = start + 1
        while lines[end][:1] in (b" ", b"\t"):
            end += 1
        broken = b"\r\n".join(lines[:start] + lines[end:])
        r = run(self, verify_arc(self.dns, broken))
        self.assertEqual(r.result, "fail")
        self.assertIn("ARC set i=2 is incomplete: no ARC-Message-Signature", r.reason)
        self.assertEqual(self.dns.queries, [])  # judged before any DNS work

    def test_gap(self) -> None:
        broken = re.sub(rb"(ARC-[A-Za-z-]+: )i=2", rb"\1i=3", self.twice)
        r = run(self, verify_arc(self.dns, broken))
        self.assertEqual((r.result, r.reason[:19]), ("fail", "ARC set i=2 is miss"))

    def test_instance_over_fifty(self) -> None:
        broken = re.sub(rb"(ARC-[A-Za-z-]+: )i=2", rb"\1i=51", self.twice)
        r = run(self, verify_arc(self.dns, broken))
        self.assertEqual(r.result, "fail")
        self.assertIn("ARC allows 1 to 50", r.reason)

    def test_newest_seal_with_cv_fail(self) -> None:
        broken = self.twice.replace(b"cv=pass", b"cv=fail")
        r = run(self, verify_arc(self.dns, broken))
        self.assertEqual(r.result, "fail")
        self.assertIn("already broken when sealed at i=2 (cv=fail)", r.reason)

    def test_sealing_after_a_failed_chain_says_cv_fail(self) -> None:
        broken = self.once.replace(b"Hello.", b"Bye.")
        arc = run(self, verify_arc(self.dns, broken))
        self.assertEqual(arc.result, "fail")
        lines = arc_seal(broken, SECOND, "mx.list.example.org", results("mx.list.example.org", arc))
        self.assertIn(b"cv=fail", lines.split(b"ARC-Message-Signature")[0])
        r = run(self, verify_arc(self.dns, lines + broken))
        self.assertEqual(r.result, "fail")

    def test_field_without_space_after_the_colon(self) -> None:
        # Legal syntax that dkimpy 1.1.8 alone cannot read (IndexError inside); relaxed
        # canonicalization ignores that white space, so the chain still validates.
        odd = self.twice.replace(b"ARC-Message-Signature: i=", b"ARC-Message-Signature:i=")
        self.assertEqual(odd.count(b"ARC-Message-Signature:i="), 2)
        r = run(self, verify_arc(self.dns, odd))
        self.assertEqual((r.result, r.instances), ("pass", 2))
        tabbed = self.twice.replace(b"ARC-Message-Signature: i=", b"ARC-Message-Signature:\ti=")
        self.assertEqual(run(self, verify_arc(self.dns, tabbed)).result, "pass")


class Seal(SynchronousTestCase):
    def test_three_fields_in_order_with_our_results(self) -> None:
        msg = sign(message())
        lines = arc_seal(msg, FIRST, "mx.forwarder.example", results("mx.forwarder.example", None))
        names = [
            line.split(b":")[0] for line in lines.split(b"\r\n") if line and line[:1] not in b" \t"
        ]
        self.assertEqual(
            names, [b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"]
        )
        aar = lines[lines.index(b"ARC-Authentication-Results") :]
        self.assertIn(b"i=1; mx.forwarder.example", aar)
        self.assertIn(b"spf=pass", aar)
        self.assertIn(b"header.d=example.com", aar)

    def test_a_forged_result_with_our_id_is_not_sealed(self) -> None:
        forged = (
            b"Authentication-Results: mx.forwarder.example;\r\n"
            b"\tdmarc=pass header.from=example.com\r\n"
        )
        msg = forged + sign(message())
        lines = arc_seal(msg, FIRST, "mx.forwarder.example", results("mx.forwarder.example", None))
        self.assertNotIn(b"dmarc=pass", lines)
        self.assertEqual(run(self, verify_arc(resolver(), lines + msg)).result, "pass")

    def test_someone_elses_results_are_kept_out_of_our_aar(self) -> None:
        other = b"Authentication-Results: mx.other.example; spf=fail\r\n"
        msg = other + sign(message())
        lines = arc_seal(msg, FIRST, "mx.forwarder.example", results("mx.forwarder.example", None))
        self.assertNotIn(b"spf=fail", lines)

    def test_ed25519_key_refused(self) -> None:
        key = SigningKey("forwarder.example", "ed", ED25519_SHA256, ed25519_key()[0])
        with self.assertRaises(ARCSealError):
            arc_seal(message(), key, "mx.forwarder.example", results("mx.forwarder.example", None))

    def test_chain_without_arc_result_refused(self) -> None:
        once = arc_seal(message(), FIRST, "mx.a.example", results("mx.a.example", None)) + message()
        with self.assertRaises(ARCSealError) as caught:
            arc_seal(once, SECOND, "mx.b.example", results("mx.b.example", None))
        self.assertIn("verify_arc", str(caught.exception))

    def test_timestamp(self) -> None:
        lines = arc_seal(
            message(), FIRST, "mx.a.example", results("mx.a.example", None), timestamp=1700000000
        )
        self.assertEqual(lines.count(b"t=1700000000"), 2)


_fields = st.sampled_from([b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"])
_values = st.one_of(
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ")),
    st.sampled_from(
        [
            b"i=1; a=rsa-sha256; cv=none; d=forwarder.example; s=arc; b=AAAA",
            b"i=1; a=rsa-sha256; d=forwarder.example; s=arc; h=from; bh=AAAA; b=AAAA",
            b"i=1; mx.example; spf=pass",
            b"i=2; cv=pass; d=x; s=y; b=",
            b"i=0",
            b"i=99999999999999999999",
        ]
    ),
)


class NeverATraceback(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(_fields, _values), max_size=8))
    def test_random_arc_fields(self, fields: list[tuple[bytes, bytes]]) -> None:
        head = b"".join(name + b": " + value + b"\r\n" for name, value in fields)
        r = run(self, verify_arc(resolver(), head + message()))
        self.assertIn(r.result, {"none", "pass", "fail"})
        self.assertTrue(r.reason)


class LargeMessage(TestCase):
    """Over INLINE_LIMIT the chain is validated in the reactor's thread pool."""

    async def test_large_sealed_message(self) -> None:
        body = b"".join(b"line %d of a long forwarded message\r\n" % i for i in range(6000))
        msg = message(body=body)
        self.assertGreater(len(msg), INLINE_LIMIT)
        sealed = arc_seal(msg, FIRST, "mx.a.example", results("mx.a.example", None)) + msg
        r = await verify_arc(resolver(), sealed)
        self.assertEqual((r.result, r.instances), ("pass", 1))
        r = await verify_arc(resolver(), sealed.replace(b"line 5000", b"line 5001"))
        self.assertEqual(r.result, "fail")
