"""DKIM verification (mailhub.checks.dkimverify): RFC 8463's example, dkimpy-signed mail, and
every way a signature or key record can be wrong giving a result with a reason, never a
traceback. The DNS is an in-memory CheckResolver."""

from __future__ import annotations

import base64
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailhub.checks import dkimverify
from mailhub.checks.dkimverify import SignatureResult, parse_tags, verify_dkim
from mailhub.checks.dns import DNSBudget
from tests.support.checkdns import MemoryResolver
from tests.support.dkimkeys import (
    RFC8463_MESSAGE,
    RFC8463_RECORDS,
    ed25519_key,
    message,
    rsa_key,
    rsa_public_record,
    sign,
)

T = TypeVar("T")

KEY = "sel._domainkey.example.com"


def run(case: SynchronousTestCase, coro: Coroutine[Any, Any, T]) -> T:
    """The in-memory resolver answers at once, so the check completes synchronously."""
    return case.successResultOf(defer.Deferred.fromCoroutine(coro))


def signed_rsa(msg: bytes | None = None, **kwargs: Any) -> tuple[bytes, MemoryResolver]:
    dns = MemoryResolver(txt={KEY: [rsa_key()[1]]})
    return sign(msg or message(), **kwargs), dns


def with_signature(value: bytes, msg: bytes | None = None) -> bytes:
    return b"DKIM-Signature: " + value + b"\r\n" + (msg or message())


GOOD_TAGS = (
    b"v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=sel; h=from:to:subject;"
    b" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=; b=AAAAAAAAAAAA"
)


class RFC8463Example(SynchronousTestCase):
    """RFC 8463 Appendix A: one message signed with Ed25519 and with RSA; both verify."""

    def setUp(self) -> None:
        self.dns = MemoryResolver(txt={k: [v] for k, v in RFC8463_RECORDS.items()})

    def test_both_signatures_pass(self) -> None:
        results = run(self, verify_dkim(self.dns, RFC8463_MESSAGE))
        self.assertEqual([r.result for r in results], ["pass", "pass"])
        ed, rsa = results
        self.assertEqual(
            (ed.domain, ed.selector, ed.algorithm, ed.key_bits, ed.header_b),
            ("football.example.com", "brisbane", "ed25519-sha256", 256, "/gCrinpc"),
        )
        self.assertEqual(
            (rsa.domain, rsa.selector, rsa.algorithm, rsa.key_bits, rsa.header_b),
            ("football.example.com", "test", "rsa-sha256", 1024, "F45dVWDf"),
        )
        self.assertIn("Ed25519 key at brisbane._domainkey.football.example.com", ed.reason)

    def test_keys_answered_later(self) -> None:
        """The two keys' answers come after the check started (not from a cache): each
        signature still gets its own key (the lookups wait together)."""
        self.dns.hold = True
        waiting = defer.Deferred.fromCoroutine(verify_dkim(self.dns, RFC8463_MESSAGE))
        self.assertNoResult(waiting)
        self.dns.release()
        results = self.successResultOf(waiting)
        self.assertEqual([(r.result, r.key_bits) for r in results], [("pass", 256), ("pass", 1024)])

    def test_bare_lf_line_ends(self) -> None:
        # A message kept with LF line ends (as some stores do) verifies as its CRLF form.
        results = run(self, verify_dkim(self.dns, RFC8463_MESSAGE.replace(b"\r\n", b"\n")))
        self.assertEqual([r.result for r in results], ["pass", "pass"])

    def test_keys_are_fetched_first_and_once_each(self) -> None:
        run(self, verify_dkim(self.dns, RFC8463_MESSAGE))
        self.assertEqual(
            sorted(self.dns.queries),
            [
                ("TXT", "brisbane._domainkey.football.example.com"),
                ("TXT", "test._domainkey.football.example.com"),
            ],
        )

    def test_changed_body_fails_both_with_the_body_hash_reason(self) -> None:
        changed = RFC8463_MESSAGE.replace(b"hungry", b"thirsty")
        results = run(self, verify_dkim(self.dns, changed))
        self.assertEqual([r.result for r in results], ["fail", "fail"])
        for r in results:
            self.assertEqual(r.reason, "body hash did not verify: the body changed after signing")

    def test_changed_header_fails(self) -> None:
        changed = RFC8463_MESSAGE.replace(b"Is dinner ready?", b"Is lunch ready?")
        results = run(self, verify_dkim(self.dns, changed))
        self.assertEqual([r.result for r in results], ["fail", "fail"])
        self.assertTrue(results[0].reason.startswith("signature did not verify"))

    def test_a_second_from_breaks_the_signature(self) -> None:
        # From is signed twice in h= (oversigned): one added From is caught.
        changed = RFC8463_MESSAGE.replace(
            b"To: Suzie", b"From: Mallory <m@football.example.com>\r\nTo: Suzie"
        )
        results = run(self, verify_dkim(self.dns, changed))
        self.assertEqual([r.result for r in results], ["fail", "fail"])

    def test_method_result(self) -> None:
        ed = run(self, verify_dkim(self.dns, RFC8463_MESSAGE))[0]
        mr = ed.method_result()
        self.assertEqual((mr.method, mr.result), ("dkim", "pass"))
        self.assertEqual(mr.property("header.d"), "football.example.com")
        self.assertEqual(mr.property("header.s"), "brisbane")
        self.assertEqual(mr.property("header.a"), "ed25519-sha256")
        self.assertEqual(mr.property("header.b"), "/gCrinpc")
        self.assertEqual(mr.property("header.i"), "@football.example.com")


class SignThenVerify(SynchronousTestCase):
    def test_rsa_2048(self) -> None:
        msg, dns = signed_rsa()
        [r] = run(self, verify_dkim(dns, msg))
        self.assertEqual((r.result, r.key_bits, r.algorithm), ("pass", 2048, "rsa-sha256"))

    def test_ed25519(self) -> None:
        dns = MemoryResolver(txt={KEY: [ed25519_key()[1]]})
        msg = sign(message(), algorithm=b"ed25519-sha256")
        [r] = run(self, verify_dkim(dns, msg))
        self.assertEqual((r.result, r.key_bits, r.algorithm), ("pass", 256, "ed25519-sha256"))

    def test_dual_signed_with_one_key_missing(self) -> None:
        dns = MemoryResolver(txt={"ed._domainkey.example.com": [ed25519_key()[1]]})
        msg = sign(message(), selector=b"rsa")
        msg = sign(msg, selector=b"ed", algorithm=b"ed25519-sha256")
        results = run(self, verify_dkim(dns, msg))
        self.assertEqual(
            [(r.selector, r.result) for r in results], [("ed", "pass"), ("rsa", "permerror")]
        )

    def test_simple_canonicalization_notices_a_rewrapped_header(self) -> None:
        msg, dns = signed_rsa(canonicalize=(b"simple", b"simple"))
        [r] = run(self, verify_dkim(dns, msg.replace(b"Subject: lunch", b"Subject:  lunch")))
        self.assertEqual(r.result, "fail")
        [r] = run(self, verify_dkim(dns, msg))
        self.assertEqual(r.result, "pass")

    def test_relaxed_canonicalization_tolerates_whitespace(self) -> None:
        msg, dns = signed_rsa(canonicalize=(b"relaxed", b"relaxed"))
        changed = msg.replace(b"Subject: lunch", b"Subject:   lunch").replace(b"Hello.", b"Hello. ")
        [r] = run(self, verify_dkim(dns, changed))
        self.assertEqual(r.result, "pass")

    def test_body_changed(self) -> None:
        msg, dns = signed_rsa()
        [r] = run(self, verify_dkim(dns, msg.replace(b"Hello.", b"Hullo.")))
        self.assertEqual(
            (r.result, r.reason),
            ("fail", "body hash did not verify: the body changed after signing"),
        )

    def test_partial_body_signature_says_so(self) -> None:
        msg, dns = signed_rsa(length=True)
        [r] = run(self, verify_dkim(dns, msg + b"appended by a list\r\n"))
        self.assertEqual(r.result, "pass")
        self.assertIn("only part of the body is signed (l=)", r.reason)

    def test_key_split_with_whitespace_in_p(self) -> None:
        # A TXT record split into strings in odd places, joined with spaces by some tools:
        # FWS inside p= is allowed (RFC 6376 3.6.1 "base64string").
        record = rsa_key()[1]
        odd = record[:40] + b" \t " + record[40:90] + b"\r\n " + record[90:]
        msg, _ = signed_rsa()
        [r] = run(self, verify_dkim(MemoryResolver(txt={KEY: [odd]}), msg))
        self.assertEqual(r.result, "pass")

    def test_first_usable_of_several_records(self) -> None:
        msg, _ = signed_rsa()
        dns = MemoryResolver(txt={KEY: [b"some=; garbage", b"v=spf1 -all", rsa_key()[1]]})
        [r] = run(self, verify_dkim(dns, msg))
        self.assertEqual(r.result, "pass")

    def test_unsigned_message(self) -> None:
        self.assertEqual(run(self, verify_dkim(MemoryResolver(), message())), [])

    def test_signed_with_another_key(self) -> None:
        msg, _ = signed_rsa()
        dns = MemoryResolver(txt={KEY: [rsa_key(1024)[1]]})
        [r] = run(self, verify_dkim(dns, msg))
        self.assertEqual(r.result, "fail")
        self.assertIn("or b= was not made with this key", r.reason)


class KeyRecords(SynchronousTestCase):
    def verify(self, record: bytes | None, **kwargs: Any) -> SignatureResult:
        msg, dns = signed_rsa(**kwargs)
        del dns.zone[KEY]
        if record is not None:
            dns.add_txt(KEY, record)
        [r] = run(self, verify_dkim(dns, msg))
        return r

    def test_missing_key_is_permerror(self) -> None:
        r = self.verify(None)
        self.assertEqual(
            (r.result, r.reason),
            ("permerror", f"key record not found (NXDOMAIN at {KEY})"),
        )

    def test_name_without_txt_is_permerror(self) -> None:
        msg, dns = signed_rsa()
        dns.set_txt(KEY)
        [r] = run(self, verify_dkim(dns, msg))
        self.assertEqual(
            (r.result, r.reason), ("permerror", f"key record not found (no TXT record at {KEY})")
        )

    def test_dns_temporary_failure_is_temperror(self) -> None:
        msg, dns = signed_rsa()
        dns.tempfail.add(KEY)
        [r] = run(self, verify_dkim(dns, msg))
        self.assertEqual(r.result, "temperror")
        self.assertIn(f"the key at {KEY} could not be fetched now", r.reason)

    def test_revoked_key(self) -> None:
        r = self.verify(b"v=DKIM1; k=rsa; p=")
        self.assertEqual(r.result, "permerror")
        self.assertIn("revoked (empty p=", r.reason)

    def test_weak_rsa_key_is_policy(self) -> None:
        weak = rsa_public_record((1 << 511) + 12345 * 2 + 1)
        r = self.verify(weak)
        self.assertEqual(
            (r.result, r.reason, r.key_bits),
            ("policy", "RSA key of 512 bits is too weak (RFC 8301 3.2 requires 1024+)", 512),
        )

    def test_absurd_rsa_key_is_permerror(self) -> None:
        huge = rsa_public_record((1 << 8999) + 1)
        r = self.verify(huge)
        self.assertEqual(r.result, "permerror")
        self.assertEqual(r.reason, "RSA key of 9000 bits is absurdly large (over 8192)")

    def test_huge_public_exponent_is_refused(self) -> None:
        r = self.verify(rsa_public_record((1 << 2047) + 1, exponent=(1 << 200) + 1))
        self.assertEqual(r.result, "permerror")
        self.assertIn("unusable public exponent", r.reason)

    def test_wrong_key_type(self) -> None:
        r = self.verify(ed25519_key()[1])
        self.assertEqual(r.result, "permerror")
        self.assertIn("is k=ed25519 but the signature is a=rsa-sha256", r.reason)

    def test_unknown_key_type(self) -> None:
        r = self.verify(b"v=DKIM1; k=dsa; p=AAAA")
        self.assertEqual(r.result, "permerror")
        self.assertIn("unknown key type k=dsa", r.reason)

    def test_wrong_version(self) -> None:
        r = self.verify(rsa_key()[1].replace(b"DKIM1", b"DKIM2"))
        self.assertEqual(r.result, "permerror")

    def test_key_not_for_email(self) -> None:
        r = self.verify(rsa_key()[1] + b"; s=tlsrpt")
        self.assertEqual(r.result, "permerror")
        self.assertIn("not for email", r.reason)

    def test_key_for_other_hashes(self) -> None:
        r = self.verify(rsa_key()[1] + b"; h=sha1")
        self.assertEqual(r.result, "permerror")
        self.assertIn("does not allow sha256", r.reason)

    def test_strict_identity_flag(self) -> None:
        r = self.verify(rsa_key()[1] + b"; t=s", identity=b"alice@mail.example.com")
        self.assertEqual(r.result, "permerror")
        self.assertIn("t=s", r.reason)
        self.assertEqual(self.verify(rsa_key()[1] + b"; t=s:y").result, "pass")

    def test_key_record_malformed(self) -> None:
        r = self.verify(b"v=DKIM1; k=rsa; p=abc; p=def")
        self.assertEqual(r.result, "permerror")
        self.assertIn("malformed", r.reason)

    def test_key_not_base64(self) -> None:
        self.assertEqual(self.verify(b"v=DKIM1; p=!!!!").result, "permerror")

    def test_key_garbage_der(self) -> None:
        r = self.verify(b"v=DKIM1; p=" + base64.b64encode(b"\x30\x03\x02\x01\x05"))
        self.assertEqual(r.result, "permerror")
        self.assertIn("cannot be read", r.reason)

    def test_ed25519_key_of_wrong_length(self) -> None:
        dns = MemoryResolver(txt={KEY: [b"v=DKIM1; k=ed25519; p=" + base64.b64encode(b"x" * 31)]})
        msg = sign(message(), algorithm=b"ed25519-sha256")
        [r] = run(self, verify_dkim(dns, msg))
        self.assertEqual(r.result, "permerror")
        self.assertIn("not 32 octets", r.reason)


class MalformedSignatures(SynchronousTestCase):
    def one(self, value: bytes, now: float | None = None) -> SignatureResult:
        dns = MemoryResolver(txt={KEY: [rsa_key()[1]]})
        [r] = run(self, verify_dkim(dns, with_signature(value), now=now))
        return r

    def test_the_good_tags_reach_the_cryptography(self) -> None:
        # The baseline of this class: a well-formed signature fails only at the body hash.
        r = self.one(GOOD_TAGS)
        self.assertEqual(r.result, "fail")

    def test_duplicate_tag(self) -> None:
        r = self.one(GOOD_TAGS + b"; d=example.org")
        self.assertEqual(
            (r.result, r.reason),
            ("permerror", "the signature's tag list is malformed: tag d= appears twice"),
        )

    def test_tag_without_value(self) -> None:
        self.assertEqual(self.one(GOOD_TAGS + b"; oops").result, "permerror")

    def test_missing_required_tags(self) -> None:
        r = self.one(b"v=1; a=rsa-sha256; d=example.com; s=sel; h=from")
        self.assertEqual(
            (r.result, r.reason), ("permerror", "required tag b=, bh= missing (RFC 6376 3.5)")
        )

    def test_unknown_version(self) -> None:
        self.assertEqual(self.one(GOOD_TAGS.replace(b"v=1", b"v=2")).result, "permerror")

    def test_unknown_algorithm(self) -> None:
        r = self.one(GOOD_TAGS.replace(b"rsa-sha256", b"rsa-sha512"))
        self.assertEqual(
            (r.result, r.reason), ("permerror", "unknown signing algorithm a=rsa-sha512")
        )

    def test_rsa_sha1_is_policy(self) -> None:
        r = self.one(GOOD_TAGS.replace(b"rsa-sha256", b"rsa-sha1"))
        self.assertEqual(
            (r.result, r.reason), ("policy", "rsa-sha1 signatures are not accepted (RFC 8301 3.1)")
        )

    def test_rsa_sha1_signed_by_dkimpy_is_policy(self) -> None:
        msg, dns = signed_rsa(algorithm=b"rsa-sha1")
        [r] = run(self, verify_dkim(dns, msg))
        self.assertEqual(r.result, "policy")
        self.assertEqual(dns.queries, [])  # refused before any DNS work

    def test_from_not_signed(self) -> None:
        r = self.one(GOOD_TAGS.replace(b"h=from:to:subject", b"h=to:subject"))
        self.assertEqual(r.result, "permerror")
        self.assertIn("h= does not include From", r.reason)

    def test_huge_h_list(self) -> None:
        many = b":".join(b"x-f%d" % i for i in range(5000))
        r = self.one(GOOD_TAGS.replace(b"h=from:to:subject", b"h=from:" + many))
        self.assertEqual(r.result, "permerror")
        self.assertIn("h= lists 5001 header fields; more than 200 are refused", r.reason)

    def test_identity_outside_domain(self) -> None:
        r = self.one(GOOD_TAGS + b"; i=a@example.org")
        self.assertEqual(r.result, "permerror")
        self.assertIn("is not in the signing domain", r.reason)

    def test_bad_domain(self) -> None:
        self.assertEqual(
            self.one(GOOD_TAGS.replace(b"d=example.com", b"d=exa mple")).result, "permerror"
        )
        self.assertEqual(
            self.one(GOOD_TAGS.replace(b"d=example.com", b"d=[1.2.3.4]")).result, "permerror"
        )

    def test_bad_selector(self) -> None:
        self.assertEqual(self.one(GOOD_TAGS.replace(b"s=sel", b"s=a/b")).result, "permerror")

    def test_bad_base64(self) -> None:
        r = self.one(GOOD_TAGS.replace(b"b=AAAAAAAAAAAA", b"b=AAA*"))
        self.assertEqual((r.result, r.reason), ("permerror", "b= is not valid base64"))

    def test_bad_canonicalization(self) -> None:
        self.assertEqual(
            self.one(GOOD_TAGS.replace(b"relaxed/relaxed", b"loose")).result, "permerror"
        )

    def test_expired(self) -> None:
        r = self.one(GOOD_TAGS + b"; t=1700000000; x=1700003600", now=1800000000)
        self.assertEqual(
            (r.result, r.reason), ("permerror", "signature expired at 2023-11-14 23:13:20 UTC")
        )

    def test_made_in_the_future(self) -> None:
        r = self.one(GOOD_TAGS + b"; t=1900000000", now=1800000000)
        self.assertEqual(r.result, "permerror")
        self.assertIn("in the future", r.reason)

    def test_signature_not_expired_is_checked(self) -> None:
        now = int(time.time())
        msg, dns = signed_rsa()
        # dkimpy cannot sign with x=: the tag is added, so the b= no longer verifies, but the
        # expiry check lets it through to the cryptography.
        late = msg.replace(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; x=%d;" % (now + 3600), 1)
        [r] = run(self, verify_dkim(dns, late))
        self.assertEqual(r.result, "fail")

    def test_header_with_a_leading_continuation(self) -> None:
        msg = b" folded first line\r\n" + with_signature(GOOD_TAGS)
        [r] = run(self, verify_dkim(MemoryResolver(), msg))
        self.assertEqual(r.result, "permerror")

    def test_unreadable_unsigned_header_is_unsigned(self) -> None:
        msg = b" folded first line\r\n" + message()
        self.assertEqual(run(self, verify_dkim(MemoryResolver(), msg)), [])

    def test_parse_tags(self) -> None:
        self.assertEqual(
            parse_tags(b" v = 1 ;\r\n\ta=rsa-sha256;b=AB\r\n CD ;"),
            {"v": b"1", "a": b"rsa-sha256", "b": b"AB CD"},
        )


class Caps(SynchronousTestCase):
    def test_fifty_signatures_only_five_checked(self) -> None:
        dns = MemoryResolver()
        msg = message()
        for i in range(50):
            dns.add_txt(f"s{i}._domainkey.example.com", ed25519_key()[1])
            msg = sign(msg, selector=b"s%d" % i, algorithm=b"ed25519-sha256")
        results = run(self, verify_dkim(dns, msg))
        self.assertEqual(len(results), 50)
        self.assertEqual([r.result for r in results[:5]], ["pass"] * 5)
        self.assertEqual({r.result for r in results[5:]}, {"neutral"})
        self.assertEqual(
            results[5].reason,
            "not checked: only 5 well-formed DKIM signatures of a message are checked",
        )
        self.assertEqual(len(dns.queries), 5)

    def test_malformed_signatures_do_not_push_a_good_one_out(self) -> None:
        msg, dns = signed_rsa()
        for i in range(10):
            msg = b"DKIM-Signature: v=1; junk %d\r\n" % i + msg
        results = run(self, verify_dkim(dns, msg))
        self.assertEqual([r.result for r in results], ["permerror"] * 10 + ["pass"])

    def test_budget_spent(self) -> None:
        dns = MemoryResolver()
        msg = message()
        for i in range(3):
            dns.add_txt(f"s{i}._domainkey.example.com", ed25519_key()[1])
            msg = sign(msg, selector=b"s%d" % i, algorithm=b"ed25519-sha256")
        results = run(self, verify_dkim(dns, msg, budget=DNSBudget(limit=2)))
        self.assertEqual(sorted(r.result for r in results), ["neutral", "pass", "pass"])
        self.assertEqual(len(dns.queries), 2)


_tag_names = st.sampled_from(
    ["v", "a", "b", "bh", "c", "d", "h", "i", "l", "q", "s", "t", "x", "z"]
)
_tag_values = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b";", b"")),
    st.sampled_from(
        [
            b"1",
            b"rsa-sha256",
            b"ed25519-sha256",
            b"example.com",
            b"sel",
            b"from:to",
            b"relaxed/simple",
            b"AAAA",
            b"99999999999999999999",
            b"-1",
            b"",
            b"\xff\xfe",
            b"dns/txt",
        ]
    ),
)


class NeverATraceback(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(_tag_names, _tag_values), max_size=12), st.booleans())
    def test_random_tags(self, tags: list[tuple[str, bytes]], fold: bool) -> None:
        sep = b";\r\n\t" if fold else b"; "
        value = sep.join(name.encode() + b"=" + v for name, v in tags)
        dns = MemoryResolver(txt={KEY: [rsa_key()[1]], "example.com": [b"junk"]})
        msg = with_signature(value)
        results = run(self, verify_dkim(dns, msg))
        for r in results:
            self.assertIn(r.result, {"pass", "fail", "neutral", "temperror", "permerror", "policy"})
            self.assertTrue(r.reason)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300))
    def test_random_key_records(self, record: bytes) -> None:
        msg, _ = signed_rsa()
        dns = MemoryResolver(txt={KEY: [record]})
        [r] = run(self, verify_dkim(dns, msg))
        self.assertIn(r.result, {"fail", "permerror", "policy"})


class LargeMessage(TestCase):
    """Over INLINE_LIMIT the cryptography runs in the reactor's thread pool."""

    async def test_large_message_verified_in_a_thread(self) -> None:
        body = b"".join(b"line %d of a long message\r\n" % i for i in range(8000))
        self.assertGreater(len(body), dkimverify.INLINE_LIMIT)
        msg, dns = signed_rsa(message(body=body))
        ran_in: list[bool] = []
        crypto = dkimverify._crypto

        def spy(*args: Any) -> None:
            import threading

            ran_in.append(threading.current_thread() is threading.main_thread())
            crypto(*args)

        self.patch(dkimverify, "_crypto", spy)
        [r] = await verify_dkim(dns, msg)
        self.assertEqual(r.result, "pass")
        self.assertEqual(ran_in, [False])
        [r] = await verify_dkim(dns, msg.replace(b"line 7000", b"line 7001"))
        self.assertEqual(r.result, "fail")
