"""checks.sink.CheckingSink: holds, judges at commit, replaces forged Authentication-Results,
refuses, quarantines and ARC-seals forwarded copies (with a fake judge; the real checks are in
the integration tests)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailhub.checks.inbound import ACCEPT, JUNK, REJECT, TEMPFAIL, Refusal, Verdict
from mailhub.checks.keys import RSA_SHA256, SigningKey
from mailhub.checks.results import AuthenticationResults, MethodResult
from mailhub.checks.sink import CheckingSink, authserv_id_of, remove_results
from mailhub.envelope import Envelope, Recipient
from mailhub.interfaces import DeliveryError, IIncomingMessage, IMessageSink, MessageRejected
from tests.support.smtp import MemorySink

RECEIVED = (
    b"Received: from mx.a.test (mx.a.test [192.0.2.1])\r\n"
    b"\tby mx.b.test (mailhub) with ESMTP id Q1; Thu, 01 Jan 1970 00:00:00 +0000\r\n"
)
RESULTS = AuthenticationResults(
    "mx.b.test", (MethodResult("spf", "pass"), MethodResult("dkim", "pass"))
)
OURS = RESULTS.header()
KEY = SigningKey("b.test", "sel", RSA_SHA256, b"-----BEGIN PRIVATE KEY-----...")


def inline(f: Any, /, *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


def envelope(*rcpts: tuple[str, str] | str, authenticated: str | None = None) -> Envelope:
    recipients = [Recipient(*r) if isinstance(r, tuple) else Recipient(r, r) for r in rcpts]
    return Envelope(
        queue_id="Q1",
        mail_from="alice@a.test",
        recipients=recipients or [Recipient("bob@b.test", "bob@b.test")],
        authenticated_as=authenticated,
    )


class Harness:
    def __init__(self, verdict: Verdict | Exception | None = None, **kw: Any) -> None:
        self.verdict = verdict if verdict is not None else Verdict(RESULTS, ACCEPT)
        self.judged: list[tuple[bytes, Envelope]] = []
        self.sealed: list[tuple[bytes, SigningKey, str, AuthenticationResults]] = []
        self.events: list[dict] = []
        self.inner = MemorySink()
        kw.setdefault("run", inline)
        kw.setdefault("is_local_domain", lambda d: d == "b.test")
        self.sink = CheckingSink(
            self.inner,
            judge=self.judge,
            authserv_id="mx.b.test",
            log=Logger(observer=self.events.append),
            **kw,
        )

    async def judge(self, message: bytes, env: Envelope) -> Verdict:
        self.judged.append((message, env))
        if isinstance(self.verdict, Exception):
            raise self.verdict
        return self.verdict

    def seal(self, message: bytes, key: SigningKey, authserv_id: str, r: Any) -> bytes:
        self.sealed.append((message, key, authserv_id, r))
        return b"ARC-Seal: i=1; fake\r\nARC-Message-Signature: i=1; fake\r\n"

    def send(self, content: bytes, env: Envelope | None = None, chunk: int = 50) -> Deferred:
        message = self.sink.open(env or envelope())
        message.write(RECEIVED)
        for i in range(0, len(content), chunk):
            message.write(content[i : i + chunk])
        return message.commit()

    def logged(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(formatEvent(e) for e in self.events)


CONTENT = b"From: alice@a.test\r\nSubject: hi\r\n\r\nbody\r\n"


class RemoveResultsTests(SynchronousTestCase):
    def test_authserv_id_forms(self) -> None:
        cases = {
            b" mx.b.test; spf=pass": "mx.b.test",
            b" MX.B.Test ; none": "mx.b.test",
            b" (a comment (nested)) mx.b.test 1; none": "mx.b.test",
            b'\r\n\t"mx.b.test"; spf=pass': "mx.b.test",
            b"mx.b.test(comment);none": "mx.b.test",
            b" ": "",
            b" (unterminated": "",
        }
        for value, expected in cases.items():
            self.assertEqual(authserv_id_of(value), expected, value)

    def test_only_ours_go_with_their_continuation_lines(self) -> None:
        head = (
            b"Received: x\r\n"
            b"Authentication-Results: mx.b.test;\r\n\tspf=pass smtp.mailfrom=forged\r\n"
            b"authentication-results : (c) MX.B.TEST; dkim=pass\r\n"
            b"Authentication-Results: mx.b.test.evil; spf=pass\r\n"
            b"Authentication-Results: mx.a.test; spf=pass\r\n"
            b"X-Authentication-Results: mx.b.test; spf=pass\r\n"
            b"Subject: hi\r\n\r\n"
        )
        kept, removed = remove_results(head, "mx.b.test")
        self.assertEqual(removed, 2)
        self.assertEqual(
            kept,
            b"Received: x\r\n"
            b"Authentication-Results: mx.b.test.evil; spf=pass\r\n"
            b"Authentication-Results: mx.a.test; spf=pass\r\n"
            b"X-Authentication-Results: mx.b.test; spf=pass\r\n"
            b"Subject: hi\r\n\r\n",
        )


class CheckingSinkTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        h = Harness()
        self.assertTrue(verifyObject(IMessageSink, h.sink))
        message = h.sink.open(envelope())
        self.assertTrue(verifyObject(IIncomingMessage, message))
        message.abort()
        self.assertEqual(h.inner.opened, [])

    def test_accepted_gets_our_results_on_top(self) -> None:
        h = Harness()
        self.assertEqual(self.successResultOf(h.send(CONTENT)), "Q1")
        [(judged, _env)] = h.judged
        self.assertEqual(judged, RECEIVED + CONTENT)  # judged as received
        [stored] = h.inner.delivered
        self.assertEqual(stored.data, OURS + RECEIVED + CONTENT)
        self.assertIsNone(stored.envelope.folder)
        self.assertEqual(h.logged(), "")  # a plain accept is not logged by default

    def test_accepted_logged_when_asked(self) -> None:
        h = Harness(log_accepted=True)
        self.successResultOf(h.send(CONTENT))
        self.assertIn("spf=pass dkim=pass -> accept", h.logged())
        [event] = [e for e in h.events if "-> accept" in formatEvent(e)]
        self.assertEqual(event["log_level"], LogLevel.info)  # shown by twistd's default log

    def test_forged_results_removed_everywhere_in_the_header_only(self) -> None:
        forged = (
            b"Authentication-Results: mx.b.test; dmarc=pass header.from=bank.test\r\n"
            b"From: alice@a.test\r\n"
            b"Authentication-Results: mx.a.test; spf=pass\r\n"
            b"Authentication-Results: mx.b.test;\r\n\tdkim=pass\r\n"
            b"Subject: hi\r\n\r\n"
            b"Authentication-Results: mx.b.test; in the body stays\r\n"
        )
        h = Harness()
        self.successResultOf(h.send(forged))
        [stored] = h.inner.delivered
        self.assertEqual(
            stored.data,
            OURS
            + RECEIVED
            + b"From: alice@a.test\r\n"
            + b"Authentication-Results: mx.a.test; spf=pass\r\n"
            + b"Subject: hi\r\n\r\n"
            + b"Authentication-Results: mx.b.test; in the body stays\r\n",
        )
        self.assertIn("removed 2 Authentication-Results", h.logged())

    def test_reject_stores_nothing(self) -> None:
        refusal = Refusal(550, "5.7.1", "DMARC says no")
        h = Harness(Verdict(RESULTS, REJECT, reply=refusal, would=REJECT))
        f = self.failureResultOf(h.send(CONTENT), MessageRejected)
        self.assertEqual(
            (f.value.code, f.value.enhanced, f.value.text), (550, "5.7.1", "DMARC says no")
        )
        self.assertTrue(f.value.permanent)
        self.assertEqual(h.inner.opened, [])

    def test_tempfail(self) -> None:
        refusal = Refusal(451, "4.7.1", "try again later")
        h = Harness(Verdict(RESULTS, TEMPFAIL, reply=refusal, would=TEMPFAIL))
        f = self.failureResultOf(h.send(CONTENT), MessageRejected)
        self.assertEqual(f.value.code, 451)
        self.assertFalse(f.value.permanent)
        self.assertEqual(h.inner.opened, [])

    def test_junk_for_some_recipients_only(self) -> None:
        verdict = Verdict(RESULTS, JUNK, junk=frozenset({"x@b.test"}), would=JUNK)
        h = Harness(verdict)
        env = envelope("x@b.test", "y@b.test", ("z+tag@b.test", "x@b.test"))
        self.successResultOf(h.send(CONTENT, env))
        copies = {m.envelope.folder: m for m in h.inner.delivered}
        self.assertEqual(set(copies), {"Junk", None})
        self.assertEqual(copies["Junk"].envelope.mailboxes, ["x@b.test"])
        self.assertEqual(copies[None].envelope.mailboxes, ["y@b.test"])
        for m in copies.values():
            self.assertEqual(m.data, OURS + RECEIVED + CONTENT)
        self.assertIsNone(env.folder)  # the receiver's envelope is untouched

    def test_forwarded_copy_is_sealed_local_copy_not(self) -> None:
        h = Harness()
        h.sink.arc_key = {"b.test": KEY}.get
        h.sink.seal = h.seal
        env = envelope(("list@b.test", "carol@c.test"), "bob@b.test")
        self.successResultOf(h.send(CONTENT, env))
        copies = {m.envelope.mailboxes[0]: m for m in h.inner.delivered}
        self.assertEqual(copies["bob@b.test"].data, OURS + RECEIVED + CONTENT)
        arc = b"ARC-Seal: i=1; fake\r\nARC-Message-Signature: i=1; fake\r\n"
        self.assertEqual(copies["carol@c.test"].data, arc + OURS + RECEIVED + CONTENT)
        [(sealed, key, authserv_id, results)] = h.sealed
        self.assertEqual(sealed, OURS + RECEIVED + CONTENT)  # what the copy carries below it
        self.assertEqual((key, authserv_id, results), (KEY, "mx.b.test", RESULTS))

    def test_forwarded_without_key_goes_unsealed_and_says_so(self) -> None:
        h = Harness()
        h.sink.arc_key = lambda domain: None
        h.sink.seal = h.seal
        self.successResultOf(h.send(CONTENT, envelope(("list@b.test", "carol@c.test"))))
        [copy] = h.inner.delivered
        self.assertEqual(copy.data, OURS + RECEIVED + CONTENT)
        self.assertEqual(h.sealed, [])
        self.assertIn("without an ARC seal: no DKIM key for b.test", h.logged())

    def test_mail_routed_on_unaliased_is_not_sealed(self) -> None:
        # A dev stack's [relay] routes send a domain on for any client: no alias of ours.
        h = Harness()
        h.sink.arc_key = {"b.test": KEY, "c.test": KEY}.get
        h.sink.seal = h.seal
        self.successResultOf(h.send(CONTENT, envelope("carol@c.test")))
        self.assertEqual(h.sealed, [])

    def test_authenticated_relay_is_not_sealed(self) -> None:
        h = Harness()
        h.sink.arc_key = {"b.test": KEY}.get
        h.sink.seal = h.seal
        env = envelope("carol@c.test", authenticated="alice@b.test")
        self.successResultOf(h.send(CONTENT, env))
        self.assertEqual(h.sealed, [])

    def test_spooled_to_a_file_beyond_spool_size(self) -> None:
        h = Harness(spool_size=100, spool_dir=self.mktemp())
        import os

        os.mkdir(h.sink.spool_dir)
        body = b"".join(b"line %d\r\n" % i for i in range(2000))
        content = b"Authentication-Results: mx.b.test; forged\r\n" + CONTENT + body
        self.successResultOf(h.send(content, chunk=333))
        [(judged, _)] = h.judged
        self.assertEqual(judged, RECEIVED + content)
        [stored] = h.inner.delivered
        self.assertEqual(stored.data, OURS + RECEIVED + CONTENT + body)
        self.assertEqual(os.listdir(h.sink.spool_dir), [])  # an unnamed file: nothing left

    def test_too_big_to_check_streams_unjudged(self) -> None:
        h = Harness(spool_size=100, max_check_size=1000)
        body = b"x" * 78 + b"\r\n"
        content = b"Authentication-Results: mx.b.test; forged\r\n" + CONTENT + body * 100
        self.successResultOf(h.send(content, chunk=1000))
        self.assertEqual(h.judged, [])
        [stored] = h.inner.delivered
        top, rest = stored.data.split(RECEIVED, 1)
        self.assertIn(b"mx.b.test;", top)
        self.assertIn(b"not checked: ", top)
        self.assertIn(b"max_message_size", top)
        self.assertEqual(rest, CONTENT + body * 100)

    def test_a_broken_judge_loses_no_mail(self) -> None:
        h = Harness(RuntimeError("bug in a check"))
        self.successResultOf(h.send(CONTENT))
        [stored] = h.inner.delivered
        self.assertTrue(stored.data.startswith(b"Authentication-Results: mx.b.test;"))
        self.assertIn(b"internal error", stored.data)
        [failure] = [e["log_failure"] for e in h.events if "log_failure" in e]
        self.assertTrue(failure.check(RuntimeError))

    def test_inner_open_failure_is_the_reply(self) -> None:
        h = Harness()
        h.inner.fail_open = DeliveryError("disk full")
        self.failureResultOf(h.send(CONTENT), DeliveryError)

    def test_one_copy_failing_aborts_the_others(self) -> None:
        verdict = Verdict(RESULTS, JUNK, junk=frozenset({"x@b.test"}), would=JUNK)
        h = Harness(verdict)
        h.inner.fail_write = DeliveryError("disk full")
        self.failureResultOf(h.send(CONTENT, envelope("x@b.test", "y@b.test")), DeliveryError)
        self.assertEqual([m.state for m in h.inner.opened], ["aborted"])

    def test_abort_then_commit(self) -> None:
        h = Harness(spool_size=10)
        message = h.sink.open(envelope())
        message.write(RECEIVED)
        message.abort()
        message.abort()
        self.failureResultOf(message.commit(), DeliveryError)
        self.assertRaises(DeliveryError, message.write, b"more")
        self.assertEqual(h.judged, [])
