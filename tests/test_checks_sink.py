"""checks.sink.CheckingSink: holds, judges at commit, replaces forged Authentication-Results,
refuses, quarantines and ARC-seals forwarded copies (with a fake judge; the real checks are in
the integration tests)."""

from __future__ import annotations

import tempfile
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


class LaterRun:
    """A ``run`` that records its calls and runs them when the test says (no threads);
    ``inside`` is true while one of them runs (the "worker thread")."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []
        self.inside = False

    def __call__(self, f: Any, /, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((f, args, d))
        return d

    def fire(self) -> None:
        f, args, d = self.calls.pop(0)
        self.inside = True
        try:
            result = f(*args)
        except Exception:
            self.inside = False
            d.errback()
        else:
            self.inside = False
            d.callback(result)

    def fire_all(self) -> None:
        while self.calls:
            self.fire()


REAL_TEMPORARY_FILE = tempfile.TemporaryFile


class SpyFile:
    """A temporary file that records whether each write ran in the worker."""

    def __init__(self, run: LaterRun, fail: OSError | None = None) -> None:
        self.run = run
        self.fail = fail
        self.f = REAL_TEMPORARY_FILE()
        self.writes: list[tuple[bool, bytes]] = []
        self.closed = False

    def write(self, data: bytes) -> int:
        self.writes.append((self.run.inside, bytes(data)))
        if self.fail is not None:
            raise self.fail
        return self.f.write(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)

    def close(self) -> None:
        self.closed = True
        self.f.close()


class SpoolInWorkerTests(SynchronousTestCase):
    """Past spool_size, the temporary file is made and written in ``run`` (never on the
    reactor thread), one write at a time per message, with flow control."""

    def setUp(self) -> None:
        import mailhub.checks.sink as sink_module

        self.run = LaterRun()
        self.files: list[SpyFile] = []
        self.created_outside: list[bool] = []
        self.fail: OSError | None = None

        def temporary_file(*a: Any, **kw: Any) -> SpyFile:
            self.created_outside.append(not self.run.inside)
            f = SpyFile(self.run, self.fail)
            self.files.append(f)
            return f

        self.patch(sink_module.tempfile, "TemporaryFile", temporary_file)
        self.h = Harness(spool_size=100, run=self.run)

    def test_file_made_and_written_in_the_worker_in_order(self) -> None:
        message = self.h.sink.open(envelope())
        message.write(RECEIVED)  # past spool_size: goes to the worker
        self.assertEqual(self.files, [])  # not made on the caller's thread
        self.assertEqual(len(self.run.calls), 1)
        body = [b"line %d\r\n" % i for i in range(100)]
        for line in body:
            message.write(line)
            self.assertLessEqual(len(self.run.calls), 1)  # one write at a time
        self.run.fire()
        [f] = self.files
        message.write(CONTENT)
        self.run.fire_all()
        d = message.commit()
        self.run.fire_all()
        self.assertEqual(self.successResultOf(d), "Q1")
        self.assertEqual(self.created_outside, [False])
        self.assertTrue(all(inside for inside, _ in f.writes))
        self.assertEqual(
            b"".join(data for _, data in f.writes), RECEIVED + b"".join(body) + CONTENT
        )
        [stored] = self.h.inner.delivered
        self.assertEqual(stored.data, OURS + RECEIVED + b"".join(body) + CONTENT)
        self.assertTrue(f.closed)

    def test_ready_while_a_write_runs_with_a_full_buffer(self) -> None:
        message = self.h.sink.open(envelope())
        message.write(RECEIVED)  # the first write is running
        self.assertIsNone(message.ready())
        message.write(b"x" * 60)
        self.assertIsNone(message.ready())  # held, not full yet
        message.write(b"x" * 60)
        wait = message.ready()
        self.assertIsInstance(wait, Deferred)
        assert wait is not None
        self.assertNoResult(wait)
        self.run.fire()  # the first write ends: the held buffer goes to the worker
        self.successResultOf(wait)
        self.assertIsNone(message.ready())
        self.run.fire_all()
        d = message.commit()
        self.run.fire_all()
        self.successResultOf(d)
        [stored] = self.h.inner.delivered
        self.assertEqual(stored.data, OURS + RECEIVED + b"x" * 120)

    def test_a_failed_write_fails_the_next_write_and_commit(self) -> None:
        import errno

        self.fail = OSError(errno.ENOSPC, "No space left on device")
        message = self.h.sink.open(envelope())
        message.write(RECEIVED)  # no error here: the write runs in the worker
        self.run.fire()
        self.assertRaises(DeliveryError, message.write, b"more")
        self.failureResultOf(message.commit(), DeliveryError)
        self.assertEqual(self.h.inner.delivered, [])
        self.assertTrue(self.files[0].closed)

    def test_a_failed_write_fails_a_commit_waiting_for_it(self) -> None:
        import errno

        self.fail = OSError(errno.ENOSPC, "No space left on device")
        message = self.h.sink.open(envelope())
        message.write(RECEIVED)
        d = message.commit()  # waits for the running write
        self.assertNoResult(d)
        self.run.fire_all()
        f = self.failureResultOf(d, DeliveryError)
        self.assertIn("No space left", str(f.value))
        self.assertEqual(self.h.judged, [])
        self.assertTrue(self.files[0].closed)

    def test_abort_during_a_write_closes_the_file_when_it_ends(self) -> None:
        message = self.h.sink.open(envelope())
        message.write(RECEIVED)
        self.run.fire()
        [f] = self.files
        message.write(b"x" * 50)
        message.write(b"y" * 50)
        message.abort()  # while the file is being written: not closed under the worker
        self.assertFalse(f.closed)
        self.run.fire_all()
        self.assertTrue(f.closed)
        self.assertEqual(self.run.calls, [])
        self.failureResultOf(message.commit(), DeliveryError)

    def test_abort_before_the_file_is_made(self) -> None:
        message = self.h.sink.open(envelope())
        message.write(RECEIVED)
        message.abort()
        self.run.fire_all()
        [f] = self.files
        self.assertTrue(f.closed)


class SpoolEndToEndTests(SynchronousTestCase):
    def test_three_mib_end_to_end(self) -> None:
        """Through the real temporary file: the same bytes stored, the same verdict."""
        run = LaterRun()
        h = Harness(run=run)  # spool_size 1 MiB
        body = b"".join(b"line %07d of a big message\r\n" % i for i in range(3 * 1024 * 1024 // 28))
        content = b"Authentication-Results: mx.b.test; forged\r\n" + CONTENT + body
        self.assertGreater(len(content), 3 * 1024 * 1024)
        message = h.sink.open(envelope())
        message.write(RECEIVED)
        waited = 0
        for i in range(0, len(content), 65536):
            message.write(content[i : i + 65536])
            wait = message.ready()
            if wait is not None:  # the receiver stops reading until it fires
                waited += 1
                while not wait.called:
                    run.fire()
        self.assertGreater(waited, 0)
        d = message.commit()
        while run.calls:
            run.fire()
        self.assertEqual(self.successResultOf(d), "Q1")
        [(judged, _)] = h.judged
        self.assertEqual(judged, RECEIVED + content)
        self.assertEqual(h.sink.verdicts, 1)
        [stored] = h.inner.delivered
        self.assertEqual(stored.data, OURS + RECEIVED + CONTENT + body)

    def test_too_big_to_check_but_held_in_memory(self) -> None:
        h = Harness(max_check_size=100)  # spool_size 1 MiB: no file at all
        content = CONTENT + b"x" * 200 + b"\r\n"
        self.successResultOf(h.send(content))
        self.assertEqual(h.judged, [])
        [stored] = h.inner.delivered
        self.assertTrue(stored.data.endswith(RECEIVED + content))
        self.assertIn(b"not checked: ", stored.data)
