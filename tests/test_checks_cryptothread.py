"""The DKIM cryptography of mail judged from the caches, off the reactor
(``checks.cryptothread.CryptoThread``, ``dkimverify.verify_at_once(offload=...)``): the same
verdicts as inline, field by field; a job that fails gives ``temperror``, never a traceback or a
hang; the thread hands back the results of the jobs queued meanwhile in one call; a stopped
thread means inline. Also: the hashes of small data are taken in pieces that keep the GIL."""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks import dkimverify, opensslverify
from mailhub.checks.cryptothread import CryptoThread
from mailhub.checks.inbound import Policy, Verdict
from mailhub.checks.sink import CheckingSink
from tests.support.smtp import MemorySink
from tests.test_checks_signedfast import ENVELOPES, POLICIES, Base, base, envelope, messages, rsa


class ThreadReactor:
    """``callFromThread`` as the reactor's: calls queued from the thread, run by the test."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.lock = threading.Lock()
        self.called = threading.Event()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        with self.lock:
            self.calls.append((f, args))
        self.called.set()

    def run_calls(self) -> int:
        """Waits (10 s at most: a guard, not a timing) for a call, then runs all queued."""
        if not self.called.wait(10):
            raise AssertionError("the thread gave nothing back")
        with self.lock:
            calls, self.calls = self.calls, []
            self.called.clear()
        for f, args in calls:
            f(*args)
        return len(calls)


class Offload:
    """``verify_at_once``'s ``offload`` for tests: runs the job at once (``inline``) or gives
    a Deferred the test fires (``later``), counting the jobs."""

    def __init__(self, failing: BaseException | None = None, later: bool = False) -> None:
        self.failing = failing
        self.later = later
        self.jobs: list[Callable[[], None]] = []
        self.waiting: list[defer.Deferred[None]] = []

    def __call__(self, job: Callable[[], None]) -> defer.Deferred[None]:
        self.jobs.append(job)
        if self.failing is not None:
            return defer.fail(self.failing)
        if self.later:
            d: defer.Deferred[None] = defer.Deferred()
            self.waiting.append(d)
            return d
        job()
        return defer.succeed(None)

    def finish(self) -> None:
        for job, d in zip(self.jobs, self.waiting, strict=True):
            job()
            d.callback(None)


def dkim_results(verdict: Verdict) -> list[tuple[str, str]]:
    return [(r.result, r.reason) for r in verdict.results.results if r.method == "dkim"]


class Judged(Base):
    def verdict(self, judged: Any) -> Verdict:
        """A Verdict, a coroutine (the long way) or a Deferred (the offload's way)."""
        if isinstance(judged, defer.Deferred):
            verdict: Verdict = self.successResultOf(judged)
            return verdict
        return super().verdict(judged)


class SameVerdictTests(Judged):
    def test_through_the_offload_as_inline(self) -> None:
        """Every signed message, envelope and policy: judged from the caches with the
        cryptography handed to an offload, the verdict (a Deferred) equals the inline one,
        field by field; each signed message went through the offload, once."""
        cases = list(itertools.product(POLICIES, ENVELOPES, messages().items()))
        handed = 0
        for policy, env_args, (name, msg) in cases:
            env = envelope(*env_args)
            inline = self.bound(policy)
            want = self.verdict(inline(msg, env))  # the caches filled
            again = inline(msg, env)
            offload = Offload(later=True)
            bound = self.bound(policy, offload=offload)
            self.verdict(bound(msg, env))  # this server's caches filled (the long way)
            offload.jobs.clear(), offload.waiting.clear()
            judged = bound(msg, env)
            if isinstance(again, Verdict) and offload.jobs:
                # judged from the caches with crypto to do: waits for the offload
                self.assertIsInstance(judged, defer.Deferred, name)
                self.assertNoResult(judged)
                offload.finish()
                handed += 1
            self.assertEqual(self.verdict(judged), want, (name, policy, env_args))
            self.assertLessEqual(len(offload.jobs), 1, name)  # one job per message
        self.assertGreater(handed, len(cases) * 0.5)

    def test_through_the_thread_as_inline(self) -> None:
        """The real thread: the same results as inline for every message."""
        reactor = ThreadReactor()
        crypto = CryptoThread(reactor)  # type: ignore[arg-type]
        crypto.startService()
        self.addCleanup(crypto.stopService)
        env = envelope(*ENVELOPES[0])
        for name, msg in messages().items():
            inline = self.bound(Policy())
            want = self.verdict(inline(msg, env))
            bound = self.bound(Policy(), offload=crypto.run)
            self.verdict(bound(msg, env))
            judged = bound(msg, env)
            if isinstance(judged, defer.Deferred):
                reactor.run_calls()
            self.assertEqual(self.verdict(judged), want, name)
        self.assertGreater(crypto.jobs_done, 10)


class FailureTests(Judged):
    def test_failed_job_is_temperror(self) -> None:
        """The offload fails (a bug in the worker): each signature is temperror, the verdict
        comes (no traceback for the session), and the failure is logged."""
        offload = Offload(failing=RuntimeError("worker broke"))
        bound = self.bound(Policy(), offload=offload)
        env = envelope(*ENVELOPES[0])
        signed = rsa(base())
        self.verdict(bound(signed, env))  # caches filled (the long way: inline crypto)
        verdict = self.verdict(bound(signed, env))
        self.assertEqual(len(offload.jobs), 1)
        self.assertEqual(
            dkim_results(verdict),
            [("temperror", "the signature could not be checked now (internal error)")],
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_bug_after_the_offload_goes_the_long_way(self) -> None:
        """A bug in what follows the cryptography (DMARC from its cache, here): logged, and the
        long way judges the message, as for a bug in the at-once path itself."""
        from mailhub.checks import dmarc

        offload = Offload()
        bound = self.bound(Policy(), offload=offload)
        env = envelope(*ENVELOPES[0])
        signed = rsa(base())
        first = self.verdict(bound(signed, env))

        def broken(*args: Any) -> None:
            raise KeyError("dmarc bug")

        self.patch(dmarc, "evaluate_cached", broken)
        judged = bound(signed, env)
        self.assertEqual(len(offload.jobs), 1)
        self.assertIsInstance(judged, defer.Deferred)
        self.assertEqual(self.verdict(judged), first)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_job_raising_in_the_thread_is_temperror(self) -> None:
        reactor = ThreadReactor()
        crypto = CryptoThread(reactor)  # type: ignore[arg-type]
        crypto.startService()
        self.addCleanup(crypto.stopService)

        def broken(*args: Any) -> None:
            raise ValueError("crypto bug")

        signed = rsa(base())
        bound = self.bound(Policy(), offload=crypto.run)
        env = envelope(*ENVELOPES[0])
        self.verdict(bound(signed, env))  # caches filled (the long way: inline crypto)
        self.patch(dkimverify, "_crypto", broken)
        judged = bound(signed, env)
        self.assertIsInstance(judged, defer.Deferred)
        reactor.run_calls()
        self.assertEqual(
            dkim_results(self.verdict(judged)),
            [("temperror", "the signature could not be checked now (internal error)")],
        )
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_unexpected_error_logged_by_the_reactor_thread(self) -> None:
        """Something the cryptography raises unexpectedly is the signature's permerror, as
        inline; its warning is logged by the reactor's thread (here the test's), never by
        the crypto thread, where Twisted's logging is not safe."""
        from twisted.logger import globalLogPublisher

        from mailhub.checks import dkimfast

        reactor = ThreadReactor()
        crypto = CryptoThread(reactor)  # type: ignore[arg-type]
        crypto.startService()
        self.addCleanup(crypto.stopService)
        bound = self.bound(Policy(), offload=crypto.run)
        env = envelope(*ENVELOPES[0])
        signed = rsa(base())
        self.verdict(bound(signed, env))  # caches filled

        def broken(*args: Any) -> bool:
            raise ValueError("odd input")

        self.patch(dkimfast, "verify", broken)
        logged: list[tuple[str, int]] = []

        def observe(event: dict[str, Any]) -> None:
            if "dkimpy failed" in event.get("log_format", ""):
                logged.append((repr(event["error"]), threading.get_ident()))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        judged = bound(signed, env)
        self.assertIsInstance(judged, defer.Deferred)
        self.assertEqual(logged, [])
        reactor.run_calls()
        self.assertEqual(
            dkim_results(self.verdict(judged)),
            [("permerror", "the signature cannot be checked (ValueError)")],
        )
        self.assertEqual(logged, [("ValueError('odd input')", threading.get_ident())])

    def test_stopped_thread_means_inline(self) -> None:
        """Before start and after stop, ``run`` gives None: verified inline, at once."""
        reactor = ThreadReactor()
        crypto = CryptoThread(reactor)  # type: ignore[arg-type]
        self.assertIsNone(crypto.run(lambda: None))
        crypto.startService()
        crypto.stopService()
        self.assertIsNone(crypto.run(lambda: None))
        bound = self.bound(Policy(), offload=crypto.run)
        env = envelope(*ENVELOPES[0])
        signed = rsa(base())
        first = self.verdict(bound(signed, env))
        second = bound(signed, env)
        self.assertIsInstance(second, Verdict)
        self.assertEqual(second, first)
        self.assertEqual(dkim_results(second)[0][0], "pass")


class CryptoThreadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = ThreadReactor()
        self.crypto = CryptoThread(self.reactor)  # type: ignore[arg-type]
        self.crypto.startService()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.crypto.running:
            self.crypto.stopService()

    def test_result_and_failure(self) -> None:
        good = self.crypto.run(lambda: 42)
        bad = self.crypto.run(lambda: 1 // 0)
        assert good is not None and bad is not None
        while not (good.called and bad.called):
            self.reactor.run_calls()
        self.assertEqual(self.successResultOf(good), 42)
        self.failureResultOf(bad, ZeroDivisionError)

    def test_jobs_queued_meanwhile_come_back_together(self) -> None:
        go = threading.Event()
        started = threading.Event()

        def first() -> str:
            started.set()
            go.wait(10)
            return "first"

        ds = [self.crypto.run(first)]
        self.assertTrue(started.wait(10))
        ds += [self.crypto.run(lambda i=i: i) for i in range(3)]  # queued while it works
        go.set()
        self.assertEqual(self.reactor.run_calls(), 1)  # one callFromThread for all four
        self.assertEqual([self.successResultOf(d) for d in ds if d], ["first", 0, 1, 2])
        self.assertEqual((self.crypto.batches, self.crypto.jobs_done), (1, 4))

    def test_stop_finishes_the_queued_jobs(self) -> None:
        go = threading.Event()
        ds = [self.crypto.run(lambda: go.wait(10)), self.crypto.run(lambda: "second")]
        go.set()
        self.crypto.stopService()  # joins the thread: both jobs done
        self.assertEqual(self.crypto.jobs_done, 2)
        while not all(d is not None and d.called for d in ds):
            self.reactor.run_calls()
        self.assertEqual(self.successResultOf(ds[1]), "second")  # type: ignore[arg-type]


class SinkTests(SynchronousTestCase):
    def test_a_deferred_verdict(self) -> None:
        """The checking sink takes a judge's Deferred (the thread's path) as a verdict to wait
        for: the message goes in once it fires, with our results on top."""
        from tests.test_checks_sink import CONTENT, OURS, RECEIVED, RESULTS
        from tests.test_checks_sink import envelope as sink_envelope

        waiting: defer.Deferred[Verdict] = defer.Deferred()
        inner = MemorySink()
        sink = CheckingSink(
            inner, judge=lambda m, e: waiting, authserv_id="mx.b.test", is_local_domain=bool
        )
        message = sink.open(sink_envelope())
        message.write(RECEIVED + CONTENT)
        committed = message.commit()
        self.assertNoResult(committed)
        self.assertEqual(inner.delivered, [])
        waiting.callback(Verdict(RESULTS, "accept"))
        self.assertEqual(self.successResultOf(committed), "Q1")
        [stored] = inner.delivered
        self.assertEqual(stored.data, OURS + RECEIVED + CONTENT)


class HashInPiecesTests(SynchronousTestCase):
    def test_same_digest(self) -> None:
        for size in (0, 1, 2046, 2047, 2048, 4095, 4096, 4097, 64 * 1024, 64 * 1024 + 1):
            data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            h = hashlib.sha256()
            opensslverify.update(h, data)
            self.assertEqual(h.digest(), hashlib.sha256(data).digest(), size)

    def test_small_data_in_pieces_that_keep_the_gil(self) -> None:
        """hashlib releases the GIL for 2,048 octets or more in one update: up to
        ``HOLD_GIL_UP_TO`` no update is that big; beyond it, one update (in a thread)."""
        sizes: list[int] = []

        class Recorder:
            def update(self, data: Any) -> None:
                sizes.append(len(data))

        opensslverify.update(Recorder(), b"x" * 4228)
        self.assertEqual(sum(sizes), 4228)
        self.assertLess(max(sizes), 2048)
        sizes.clear()
        opensslverify.update(Recorder(), b"x" * (opensslverify.HOLD_GIL_UP_TO + 1))
        self.assertEqual(len(sizes), 1)

    def test_message_body_hashed_in_pieces(self) -> None:
        """The body hash of a signed 4 KiB message takes no update of 2,048 octets or more."""
        sizes: list[int] = []

        class Recorder:
            def __init__(self) -> None:
                self.h = hashlib.sha256()

            def update(self, data: Any) -> None:
                sizes.append(len(data))
                self.h.update(data)

            def digest(self) -> bytes:
                return self.h.digest()

        from dkim.canonicalization import Relaxed

        msg = rsa(base(body=b"line of the body\r\n" * 250))
        parsed = opensslverify._parse(msg)
        digest = parsed.body_hash(Relaxed, None, Recorder)
        self.assertEqual(digest, parsed.body_hash(Relaxed, None, hashlib.sha256))
        self.assertGreater(sum(sizes), 4000)
        self.assertLess(max(sizes), 2048)
