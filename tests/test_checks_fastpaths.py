"""The inbound checks' shortcuts (issue 14's speed work) give the same answers as the long way:
header-end search, shared header parsing, skipping absent fields, caches of pure functions, the
judge's no-DeferredList path, the lazily formatted log line."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks import arc, dkimverify, dmarc, inbound, opensslverify, resolver, sink, spf
from mailhub.checks.inbound import Checkers, Policy, judge
from mailhub.checks.results import AuthenticationResults, MethodResult
from mailhub.envelope import Envelope, Recipient
from tests.test_checks_inbound import FakeARC, Fakes, FakeSignature, FakeSPF


def old_header_end(message: bytes) -> int:
    """The search as it was: both separators over the whole message."""
    ends = [i for i in (message.find(b"\r\n\r\n"), message.find(b"\n\n")) if i >= 0]
    return min(ends) if ends else len(message)


HEADER_END_CASES = [
    b"",
    b"\r\n",
    b"\r\n\r\n",
    b"\n\n",
    b"A: b\r\n\r\nbody\n\nmore\r\n",  # LF LF only in the body
    b"A: b\n\nbody\r\n\r\nmore",  # bare LF LF ends the header section
    b"A: b\r\nC: d\n\n\r\n\r\n",  # LF LF just before CRLF CRLF
    b"A: b\r\n\n\r\n\r\n",  # CR LF LF: the LF LF starts one octet into the CRLF
    b"A: b\r\nno end at all",
    b"A: b\nno end at all\n",
    b"A: b\r\n\r\n",
    b"\n\nA: b\r\n\r\n",
]


class HeaderEndTests(SynchronousTestCase):
    def test_same_as_searching_everything(self) -> None:
        for message in HEADER_END_CASES:
            want = old_header_end(message)
            self.assertEqual(dkimverify._header_end(message), want, message)
            self.assertEqual(arc._header_end(message), want, message)
            # dmarc's variant points past the separator's first line end
            self.assertEqual(
                dmarc._header_end(message), want + 2 if want < len(message) else want, message
            )


class HeaderFieldTests(SynchronousTestCase):
    def test_signature_field_found_in_any_case(self) -> None:
        message = b"From: a@a.test\r\ndKiM-SiGnAtUrE: v=1; a=rsa-sha256\r\n\r\nbody\r\n"
        self.assertEqual(dkimverify._signature_fields(message), [b" v=1; a=rsa-sha256\r\n"])

    def test_unsigned_message_is_not_parsed(self) -> None:
        dkimverify._parse_head_cached.cache_clear()
        opensslverify._parse_cached.cache_clear()
        message = b"From: a@a.test\r\nSubject: about dkim\r\n\r\nDKIM-Signature: in the body\r\n"
        self.assertEqual(dkimverify._signature_fields(message), [])
        self.assertEqual(dkimverify._parse_head_cached.cache_info().misses, 0)
        self.assertEqual(opensslverify._parse_cached.cache_info().misses, 0)

    def test_unreadable_signed_header_is_still_a_permerror(self) -> None:
        message = b" folded first line\r\nDKIM-Signature: v=1\r\n\r\nbody\r\n"
        self.assertIsNone(dkimverify._signature_fields(message))

    def test_dkim_and_arc_share_one_parse(self) -> None:
        """A small message is parsed whole once (opensslverify.parse), for the DKIM fields,
        the ARC fields and the cryptography of both."""
        opensslverify._parse_cached.cache_clear()
        head = b"ARC-Seal: i=1; a=rsa-sha256\r\nDKIM-Signature: v=1\r\nFrom: a@a.test"
        message = head + b"\r\n\r\nbody\r\n"
        fields = dkimverify._signature_fields(message)
        headers = arc._headers(message)
        self.assertEqual(fields, [b" v=1\r\n"])
        self.assertEqual(
            headers,
            [
                (b"ARC-Seal", b" i=1; a=rsa-sha256\r\n"),
                (b"DKIM-Signature", b" v=1\r\n"),
                (b"From", b" a@a.test\r\n"),
            ],
        )
        info = opensslverify._parse_cached.cache_info()
        self.assertEqual((info.misses, info.hits), (1, 1))

    def test_big_message_fields_from_its_header_section(self) -> None:
        """Over CACHED_MESSAGE octets only the header section is parsed on the reactor."""
        dkimverify._parse_head_cached.cache_clear()
        opensslverify._parse_cached.cache_clear()
        message = b"DKIM-Signature: v=1\r\nFrom: a@a.test\r\n\r\n" + b"x" * 70_000
        self.assertEqual(dkimverify._signature_fields(message), [b" v=1\r\n"])
        self.assertEqual(dkimverify._parse_head_cached.cache_info().misses, 1)
        self.assertEqual(opensslverify._parse_cached.cache_info().currsize, 0)

    def test_big_header_section_is_not_kept(self) -> None:
        dkimverify._parse_head_cached.cache_clear()
        head = b"DKIM-Signature: v=1\r\n" + b"X-Filler: " + b"x" * 70_000
        self.assertEqual(len(dkimverify.header_fields(head) or ()), 2)
        self.assertEqual(dkimverify._parse_head_cached.cache_info().currsize, 0)

    def test_arc_fields_found_in_any_case(self) -> None:
        message = b"aRc-SeAl: i=1\r\nFrom: a@a.test\r\n\r\nbody\r\n"
        self.assertEqual(
            arc._headers(message), [(b"aRc-SeAl", b" i=1\r\n"), (b"From", b" a@a.test\r\n")]
        )
        self.assertEqual(arc._headers(b"From: a@a.test\r\n\r\narc-seal: body\r\n"), [])


class RemoveResultsTests(SynchronousTestCase):
    def test_ours_removed_in_any_case(self) -> None:
        head = (
            b"AUTHENTICATION-RESULTS: MX.b.test; spf=pass\r\n"
            b"From: a@a.test\r\n"
            b"Authentication-Results: other.test; spf=fail\r\n"
        )
        kept, removed = sink.remove_results(head, "mx.b.test")
        self.assertEqual(removed, 1)
        self.assertEqual(
            kept, b"From: a@a.test\r\nAuthentication-Results: other.test; spf=fail\r\n"
        )

    def test_without_the_field_unchanged(self) -> None:
        head = b"From: a@a.test\r\nSubject: authentication results\r\n"
        self.assertEqual(sink.remove_results(head, "mx.b.test"), (head, 0))


class CacheTests(SynchronousTestCase):
    def test_organizational_domain_normalises_before_the_cache(self) -> None:
        self.assertEqual(dmarc.organizational_domain("Mail.Example.CO.UK."), "example.co.uk")
        self.assertEqual(dmarc.organizational_domain("mail.example.co.uk"), "example.co.uk")

    def test_parsed_dmarc_record_keyed_by_domain_and_text(self) -> None:
        one = dmarc.parse_record("a.test", b"v=DMARC1; p=reject")
        self.assertIs(dmarc.parse_record("a.test", b"v=DMARC1; p=reject"), one)
        other = dmarc.parse_record("b.test", b"v=DMARC1; p=reject")
        assert one is not None and other is not None
        self.assertEqual((one.domain, other.domain), ("a.test", "b.test"))
        quarantine = dmarc.parse_record("a.test", b"v=DMARC1; p=quarantine")
        assert quarantine is not None
        self.assertEqual(quarantine.p, "quarantine")

    def test_from_domain_errors_every_time(self) -> None:
        message = b"From: a@a.test, b@b.test\r\n\r\nbody\r\n"
        for _ in range(2):
            with self.assertRaises(dmarc.HeaderFromError):
                dmarc.header_from_domain(message)
        self.assertEqual(dmarc.header_from_domain(b"From: X <x@A.Test>\r\n\r\n"), "a.test")

    def test_query_name_errors_every_time(self) -> None:
        for _ in range(2):
            with self.assertRaises(resolver.InvalidName):
                resolver.query_name("a..b")
        self.assertEqual(resolver.query_name("Bücher.Example."), "xn--bcher-kva.example")

    def test_spf_name_and_address_helpers(self) -> None:
        self.assertEqual(str(spf._client_address("::ffff:192.0.2.1")), "192.0.2.1")
        self.assertIsNone(spf._client_address("not an address"))
        self.assertEqual(spf._initial_domain("Example.COM."), "example.com")
        self.assertIsNone(spf._initial_domain("localhost"))

    def test_real_checkers_made_once(self) -> None:
        self.assertIs(Checkers.real(), Checkers.real())
        self.assertIs(Checkers.real().spf, spf.check_smtp)


def envelope() -> Envelope:
    return Envelope(
        "Q1",
        "alice@a.test",
        [Recipient("bob@b.test", "bob@b.test")],
        helo="mx.a.test",
        client_address="192.0.2.1",
    )


class JudgeOrderTests(SynchronousTestCase):
    """Results keep their places whether the checks answer at once or later."""

    def run_judge(self, fakes: Fakes) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(
            judge(
                object(),
                b"From: a@a.test\r\n\r\nbody\r\n",
                envelope(),
                authserv_id="mx.b.test",
                policy=Policy(),
                clock=Clock(),
                checkers=fakes.checkers(),
            )
        )

    def methods(self, verdict: Any) -> list[tuple[str, str]]:
        return [(r.method, r.result) for r in verdict.results.results]

    def test_all_at_once(self) -> None:
        fakes = Fakes(spf=FakeSPF("softfail"), dkim=[FakeSignature("fail")], arc=FakeARC("pass"))
        verdict = self.successResultOf(self.run_judge(fakes))
        self.assertEqual(
            self.methods(verdict),
            [("spf", "softfail"), ("dkim", "fail"), ("arc", "pass"), ("dmarc", "pass")],
        )

    def test_one_later(self) -> None:
        later: defer.Deferred[Any] = defer.Deferred()
        fakes = Fakes(spf=later, dkim=[FakeSignature("fail")], arc=FakeARC("pass"))
        d = self.run_judge(fakes)
        self.assertNoResult(d)
        later.callback(FakeSPF("softfail"))
        self.assertEqual(
            self.methods(self.successResultOf(d)),
            [("spf", "softfail"), ("dkim", "fail"), ("arc", "pass"), ("dmarc", "pass")],
        )


class LogWordsTests(SynchronousTestCase):
    def test_words_formatted_when_observed(self) -> None:
        events: list[dict[str, Any]] = []
        log = Logger(observer=events.append)
        results = AuthenticationResults(
            "mx.b.test", (MethodResult("spf", "pass"), MethodResult("dkim", "none"))
        )
        log.info("{results} -> {action}", results=sink._Words(results), action="accept")
        self.assertEqual(formatEvent(events[0]), "spf=pass dkim=none -> accept")


class VerdictCopyTests(SynchronousTestCase):
    def test_judge_copies_every_field(self) -> None:
        """judge() builds its Verdict field by field in _conclude (not dataclasses.replace): a
        new field must be added there too."""
        names = [f.name for f in dataclasses.fields(inbound.Verdict)]
        self.assertEqual(
            names, ["results", "action", "reply", "junk", "would", "reason", "arc", "checked"]
        )
        source = inspect.getsource(inbound._conclude)
        for name in names:
            self.assertIn(f"{name}=", source)
