"""The CPU cuts of h/dkimcpu (issue 14) against their reference paths: mail judged at once
(``dkimverify.verify_at_once``, which now parses the message itself and hands that parse to the
cryptography's job, inline or offloaded) gives ``verify_dkim``'s results and reasons on tricky
messages, and the line-end searches (``opensslverify.only_crlf``, ``no_bare_cr``) say what the
counts they replace said."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks import dkimverify, dmarc, eager, opensslverify
from mailhub.checks.inbound import ACCEPT, REJECT, Refusal, Verdict
from mailhub.checks.resolver import CachingResolver
from mailhub.checks.results import AuthenticationResults, MethodResult
from mailhub.checks.sink import CheckingSink
from mailhub.envelope import Envelope, Recipient
from mailhub.interfaces import MessageRejected
from tests.support.checkdns import MemoryResolver
from tests.support.dkimkeys import ed25519_key, rsa_key, sign
from tests.support.smtp import MemorySink

_, RSA_RECORD = rsa_key()
_, ED_RECORD = ed25519_key()
NOW = time.time()  # dkimpy signs with the current t=


def head(extra: bytes = b"") -> bytes:
    return (
        b"From: Alice <alice@pass.test>\r\n"
        b"To: bob@example.net,\r\n\t carol@example.net\r\n"  # folded
        b"Subject:   lunch \t at  noon\r\n"  # white space runs: relaxed vs simple
        b"Date: Mon, 01 Jan 2024 12:00:00 +0000\r\n" + extra
    )


BODY = b"Hello  there. \r\n\tindented\r\n\r\n\r\n"


def rsa(msg: bytes, **kwargs: Any) -> bytes:
    return sign(msg, domain=b"pass.test", selector=b"sel", **kwargs)


def ed(msg: bytes, **kwargs: Any) -> bytes:
    return sign(msg, domain=b"pass.test", selector=b"ed", algorithm=b"ed25519-sha256", **kwargs)


def tricky() -> dict[str, bytes]:
    plain = head() + b"\r\n" + BODY
    with_dup = head(b"Subject: again\r\nX-Dup: 1\r\nX-Dup: 2\r\n") + b"\r\n" + BODY
    relaxed = rsa(plain, canonicalize=(b"relaxed", b"relaxed"))
    simple = rsa(plain, canonicalize=(b"simple", b"simple"))
    h_missing = rsa(plain, include_headers=[b"from", b"subject", b"reply-to", b"cc"])
    oversigned = rsa(plain, include_headers=[b"from", b"from", b"to", b"subject", b"subject"])
    dup_signed = rsa(with_dup, include_headers=[b"from", b"subject", b"x-dup", b"x-dup", b"x-dup"])
    return {
        "relaxed/relaxed": relaxed,
        "simple/simple": simple,
        "relaxed, a fold added": relaxed.replace(b"Subject:", b"Subject:\r\n "),
        "simple, a fold added": simple.replace(b"Subject:", b"Subject:\r\n "),
        "relaxed, WSP changed": relaxed.replace(b"lunch \t at", b"lunch at"),
        "relaxed body, WSP changed": relaxed.replace(b"Hello  there. ", b"Hello there."),
        "relaxed body, a word changed": relaxed.replace(b"Hello  there", b"Hello  where"),
        "simple body, empty lines dropped": simple[: -len(b"\r\n\r\n")],
        "h= names missing fields": h_missing,
        "h= names missing fields, one added": h_missing.replace(
            b"\r\n\r\n", b"\r\nCc: eve@example.net\r\n\r\n", 1
        ),
        "oversigned From, another From added": oversigned.replace(
            b"From: Alice", b"From: Mallory <m@pass.test>\r\nFrom: Alice", 1
        ),
        "oversigned, a Subject added below": oversigned.replace(
            b"\r\n\r\n", b"\r\nSubject: more\r\n\r\n", 1
        ),
        "duplicate fields signed": dup_signed,
        "duplicate fields, the last changed": dup_signed.replace(b"X-Dup: 2", b"X-Dup: 3"),
        "two signatures, one bad": ed(relaxed).replace(b"b=", b"b=AAAA", 1),
        "b= not base64": relaxed.replace(b"b=", b"b=*", 1),
        "bh= wrong": relaxed.replace(b"bh=", b"bh=AAAA", 1),
        "bare LF in the body": relaxed.replace(b"indented\r\n", b"indented\n"),
        "bare CR in a field": relaxed.replace(b"noon\r\n", b"noon\r \r\n"),
        "VT in a field": relaxed.replace(b"lunch", b"lu\x0bnch"),
        "LF-only line ends": relaxed.replace(b"\r\n", b"\n"),
        "header that cannot be read": b" folded first\r\n" + relaxed,
        "dkimpy's odd forms (upper-case c=)": relaxed.replace(b"c=relaxed/relaxed", b"c=RELAXED"),
    }


def sync_offload(jobs: list[Callable[[], None]]) -> Any:
    def run(job: Callable[[], None]) -> defer.Deferred[None]:
        jobs.append(job)
        job()
        return defer.succeed(None)

    return run


class AtOnceSameAsLongWay(SynchronousTestCase):
    def setUp(self) -> None:
        self.resolver = CachingResolver(
            MemoryResolver(
                txt={
                    "sel._domainkey.pass.test": [RSA_RECORD],
                    "ed._domainkey.pass.test": [ED_RECORD],
                }
            ),
            Clock(),
        )

    def long_way(self, msg: bytes) -> list[dkimverify.SignatureResult]:
        return self.successResultOf(
            defer.Deferred.fromCoroutine(dkimverify.verify_dkim(self.resolver, msg, now=NOW))
        )

    def at_once(self, msg: bytes, offload: Any = None) -> list[dkimverify.SignatureResult]:
        got = dkimverify.verify_at_once(
            msg, self.resolver.cached_txt, budget=50, now=NOW, offload=offload
        )
        if isinstance(got, eager.Pending):
            got = self.successResultOf(got.deferred)
        assert got is not None
        return got

    def test_same_results_and_reasons(self) -> None:
        """Each tricky message: the same result, reason and properties at once (crypto inline
        or handed to a job) as the long way; and dkimpy's own path (``FAST`` off) agrees on
        what passes."""
        seen = set()
        for name, msg in tricky().items():
            want = self.long_way(msg)
            jobs: list[Callable[[], None]] = []
            self.assertEqual(self.at_once(msg), want, name)
            self.assertEqual(self.at_once(msg, sync_offload(jobs)), want, name)
            self.assertEqual(
                [r.method_result().written for r in self.at_once(msg)],
                [r.method_result().written for r in want],
                name,
            )
            self.patch(dkimverify, "FAST", False)
            self.assertEqual([r.result for r in self.long_way(msg)], [r.result for r in want], name)
            self.patch(dkimverify, "FAST", True)
            seen.update(r.result for r in want)
        # the cases cover passes, failures and unusable signatures
        self.assertTrue({"pass", "fail", "permerror"} <= seen, seen)

    def test_expected_outcomes(self) -> None:
        """Spot checks that the cases test what their names say."""
        cases = tricky()
        results = {name: [r.result for r in self.long_way(msg)] for name, msg in cases.items()}
        self.assertEqual(results["relaxed/relaxed"], ["pass"])
        self.assertEqual(results["simple/simple"], ["pass"])
        self.assertEqual(results["relaxed, a fold added"], ["pass"])
        self.assertEqual(results["simple, a fold added"], ["fail"])
        self.assertEqual(results["relaxed, WSP changed"], ["pass"])
        self.assertEqual(results["relaxed body, WSP changed"], ["pass"])
        self.assertEqual(results["relaxed body, a word changed"], ["fail"])
        self.assertEqual(results["h= names missing fields"], ["pass"])
        self.assertEqual(results["h= names missing fields, one added"], ["fail"])
        self.assertEqual(results["oversigned From, another From added"], ["fail"])
        self.assertEqual(results["oversigned, a Subject added below"], ["fail"])
        self.assertEqual(results["duplicate fields signed"], ["pass"])
        self.assertEqual(results["duplicate fields, the last changed"], ["fail"])
        self.assertEqual(results["two signatures, one bad"], ["permerror", "pass"])  # b= length
        self.assertEqual(results["VT in a field"], ["fail"])
        self.assertEqual(results["bh= wrong"], ["fail"])
        self.assertEqual(results["b= not base64"], ["permerror"])
        self.assertEqual(results["header that cannot be read"], ["permerror"])

    def test_the_job_gets_the_parse(self) -> None:
        """The offloaded job verifies with the parse made on the reactor: opensslverify's
        cache by the message's octets is not used (nor filled) for mail judged at once."""
        msg = tricky()["relaxed/relaxed"]
        self.long_way(msg)  # the key into the cache
        opensslverify._parse_cached.cache_clear()
        jobs: list[Callable[[], None]] = []
        self.assertEqual([r.result for r in self.at_once(msg, sync_offload(jobs))], ["pass"])
        self.assertEqual(len(jobs), 1)
        info = opensslverify._parse_cached.cache_info()
        self.assertEqual((info.hits, info.misses), (0, 0))


def counted_only_crlf(data: bytes) -> bool:
    return data.count(b"\n") == data.count(b"\r\n")


def counted_no_bare_cr(data: bytes) -> bool:
    return data.count(b"\r") == data.count(b"\r\n")


class LineEndSearches(SynchronousTestCase):
    def test_same_as_the_counts(self) -> None:
        """Every string of up to 5 octets over CR, LF, "a", and random longer ones."""
        alphabet = [b"\r", b"\n", b"a"]
        samples = [b""]
        for n in range(1, 6):
            samples.extend(b"".join(p) for p in itertools.product(alphabet, repeat=n))
        rng = random.Random(14)
        for _ in range(2000):
            samples.append(bytes(rng.choice(b"\r\na ") for _ in range(rng.randrange(6, 80))))
        for data in samples:
            self.assertEqual(opensslverify.only_crlf(data), counted_only_crlf(data), data)
            self.assertEqual(opensslverify.no_bare_cr(data), counted_no_bare_cr(data), data)

    def test_from_fields_refuses_bare_line_ends(self) -> None:
        """dmarc's From search works only on CRLF-only header sections (else split_fields)."""
        good = b"From: a@pass.test\r\nTo: b@x.test\r\n"
        self.assertEqual(dmarc._from_fields(good), [b" a@pass.test\r\n"])
        for bad in (b"From: a@pass.test\nTo: b@x.test\r\n", b"From: a@pass.test\r\rTo: b\r\n"):
            self.assertIsNone(dmarc._from_fields(bad))


class ResultsWrittenOnce(SynchronousTestCase):
    def test_written_once_per_object(self) -> None:
        """``written`` and the header are made at their first use and kept on the object."""
        r = MethodResult("dkim", "pass", "fine", (("header.d", "pass.test"),))
        self.assertNotIn("written", vars(r))
        first = r.written
        self.assertIs(r.written, first)
        self.assertIs(vars(r)["written"], first)
        results = AuthenticationResults("mx.b.test", (r,))
        self.assertIs(results.header(), results.header())
        self.assertEqual(
            results.header(),
            b"Authentication-Results: mx.b.test;\r\n"
            b'\tdkim=pass reason="fine" header.d=pass.test\r\n',
        )


class VerdictWaitedFor(SynchronousTestCase):
    """The sink's one callback for a verdict that has to be waited for (the DKIM job in its
    thread): judged, then refused or passed on, as for a verdict given at once."""

    def send(self, verdict: Any) -> tuple[Any, MemorySink, defer.Deferred[Any]]:
        inner = MemorySink()
        later: defer.Deferred[Any] = defer.Deferred()
        events: list[dict[str, Any]] = []
        sink = CheckingSink(
            inner,
            judge=lambda message, env: later,
            authserv_id="mx.b.test",
            log=Logger(observer=events.append),
        )
        message = sink.open(Envelope("Q1", "alice@a.test", [Recipient("bob@b.test", "bob@b.test")]))
        message.write(b"From: alice@a.test\r\n\r\nbody\r\n")
        committed = message.commit()
        self.assertNoResult(committed)
        self.assertEqual(inner.delivered, [])  # nothing stored before the verdict
        if isinstance(verdict, Exception):
            later.errback(verdict)
        else:
            later.callback(verdict)
        return committed, inner, later

    def test_refused_before_anything_is_stored(self) -> None:
        """p=reject through the waited-for path: 550 at the end of DATA, nothing stored."""
        reply = Refusal(550, "5.7.1", "DMARC p=reject")
        committed, inner, _ = self.send(Verdict(AuthenticationResults("mx.b.test"), REJECT, reply))
        failure = self.failureResultOf(committed, MessageRejected)
        self.assertEqual(failure.value.code, 550)
        self.assertEqual(inner.delivered, [])

    def test_accepted_with_our_results_on_top(self) -> None:
        results = AuthenticationResults("mx.b.test", (MethodResult("dkim", "pass"),))
        committed, inner, _ = self.send(Verdict(results, ACCEPT))
        self.assertEqual(self.successResultOf(committed), "Q1")
        [stored] = inner.delivered
        self.assertEqual(stored.data, results.header() + b"From: alice@a.test\r\n\r\nbody\r\n")

    def test_a_failed_judgement_loses_no_mail(self) -> None:
        committed, inner, _ = self.send(RuntimeError("bug in a check"))
        self.assertEqual(self.successResultOf(committed), "Q1")
        [stored] = inner.delivered
        self.assertIn(b"not checked: internal error", stored.data)
        self.flushLoggedErrors(RuntimeError)
