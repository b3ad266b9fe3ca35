"""One guarded login (mailhub.login) and the bounded hashing queue (mailhub.auth.HashingPool),
with an injected clock: reserve before the check, the per-user delay, counting, cancellation,
and the temporary error every protocol gives when the queue is full (issue 12 5b)."""

from __future__ import annotations

from base64 import b64encode

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from mailhub.auth import HashingPool, HashQueueFull, make_portal
from mailhub.login import Outcome, guarded_login
from mailhub.throttle import AuthThrottle
from mailhub.web.access import Access, LoginBusy, LoginRefused, LoginRequired


@implementer(ICredentialsChecker)
class CountingChecker:
    """alice/right logs in; every check is counted. ``hold``: checks wait for ``release``."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.checks: list[bytes] = []
        self.hold = False
        self.waiting: list[tuple[Deferred, object]] = []
        self.busy = False

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred:
        if self.busy:
            return fail(HashQueueFull())
        self.checks.append(credentials.username)
        ok = credentials.username == b"alice" and credentials.password == b"right"
        result = "alice@example.org" if ok else None
        if self.hold:
            d: Deferred = Deferred()
            self.waiting.append((d, result))
            return d.addCallback(self._result)
        return succeed(result).addCallback(self._result)

    @staticmethod
    def _result(address: object) -> object:
        if address is None:
            raise UnauthorizedLogin()
        return address

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d, result in waiting:
            d.callback(result)


class GuardedLoginCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.checker = CountingChecker()
        self.portal = make_portal(self.checker)
        self.throttle = AuthThrottle(self.clock, max_failures=5, user_free_failures=3)

    def login(self, user: bytes = b"alice", password: bytes = b"wrong", address: str = "192.0.2.1",
              **kw: object) -> Deferred:  # fmt: skip
        return guarded_login(self.portal, self.throttle, self.clock, address, user, password, **kw)


class Outcomes(GuardedLoginCase):
    def test_success(self) -> None:
        result = self.successResultOf(self.login(password=b"right"))
        self.assertIs(result.outcome, Outcome.OK)
        self.assertEqual(result.avatar.address, "alice@example.org")
        self.assertEqual(self.throttle.in_flight("192.0.2.1"), 0)

    def test_failure_is_answered_after_the_delay(self) -> None:
        d = self.login()
        self.assertEqual(self.checker.checks, [b"alice"])
        self.assertNoResult(d)
        self.clock.advance(1)
        result = self.successResultOf(d)
        self.assertEqual((result.outcome, result.disconnect), (Outcome.FAILED, False))
        self.assertEqual(self.throttle.failures("192.0.2.1"), 1)

    def test_the_last_allowed_failure_says_disconnect_then_refused_without_a_check(self) -> None:
        results = []
        for _ in range(5):
            d = self.login(user=b"bob")
            self.clock.advance(60)  # the per-user delay (from the 4th on)
            self.clock.advance(60)  # the reply's
            results.append(self.successResultOf(d))
        self.assertEqual([r.disconnect for r in results], [False] * 4 + [True])
        self.assertIs(self.successResultOf(self.login(password=b"right")).outcome, Outcome.REFUSED)
        self.assertEqual(len(self.checker.checks), 5)

    def test_refuse_counts_without_a_check(self) -> None:
        d = self.login(password=b"right", refuse=True)
        self.clock.advance(1)
        self.assertIs(self.successResultOf(d).outcome, Outcome.FAILED)
        self.assertEqual(self.checker.checks, [])
        self.assertEqual(self.throttle.failures("192.0.2.1"), 1)

    def test_without_a_throttle(self) -> None:
        d = guarded_login(self.portal, None, self.clock, "192.0.2.1", b"alice", b"wrong")
        self.assertIs(self.successResultOf(d).outcome, Outcome.FAILED)
        d = guarded_login(self.portal, None, self.clock, "192.0.2.1", b"alice", b"right")
        self.assertIs(self.successResultOf(d).outcome, Outcome.OK)


class Parallel(GuardedLoginCase):
    def test_parallel_guesses_check_at_most_the_limit(self) -> None:
        """Issue 12 5b(1): 150 simultaneous guesses had 100 passwords checked (limit 5)."""
        self.checker.hold = True  # every check is still running when the next guess arrives
        results = [self.login(user=b"bob", password=b"guess%d" % i) for i in range(150)]
        self.clock.advance(60)
        self.assertEqual(len(self.checker.checks), 5)
        self.assertEqual(self.throttle.waiting("192.0.2.1"), 145)  # nothing hashed for them
        self.checker.release()
        self.clock.advance(60)
        outcomes = [self.successResultOf(d).outcome for d in results]
        self.assertEqual(outcomes, [Outcome.FAILED] * 5 + [Outcome.REFUSED] * 145)
        self.assertEqual(len(self.checker.checks), 5)
        self.assertEqual(self.throttle.failures("192.0.2.1"), 5)

    def test_parallel_right_logins_from_one_address_all_get_in(self) -> None:
        """Eight connections of one client (or an office behind NAT) logging in at once."""
        self.checker.hold = True
        results = [self.login(password=b"right") for _ in range(8)]
        self.assertEqual(len(self.checker.checks), 5)
        self.checker.release()  # the first five succeed: the others go on
        self.assertEqual(len(self.checker.checks), 8)
        self.checker.release()
        self.assertEqual([self.successResultOf(d).outcome for d in results], [Outcome.OK] * 8)

    def test_spread_guesses_for_one_user_are_delayed(self) -> None:
        """Issue 12 5b(3): one guess each from many addresses waits a per-user delay."""
        for i in range(3):  # the free failures
            self.login(user=b"alice", address=f"10.0.0.{i}")
        self.clock.advance(60)
        self.checker.hold = True
        results = [self.login(user=b"alice", address=f"10.0.1.{i}") for i in range(20)]
        self.assertEqual(len(self.checker.checks), 3)  # waiting 1 s first
        self.clock.advance(1)
        self.assertEqual(len(self.checker.checks), 23)
        self.checker.release()
        self.clock.advance(60)
        self.assertEqual([self.successResultOf(d).outcome for d in results],
                         [Outcome.FAILED] * 20)  # fmt: skip
        d = self.login(user=b"alice", address="10.0.2.1")  # 23 failures: the longest delay
        self.clock.advance(14)
        self.assertEqual(len(self.checker.checks), 23)
        self.clock.advance(1)
        self.assertEqual(len(self.checker.checks), 24)
        self.checker.release()
        # The real alice still gets in: after the delay, not locked out.
        self.checker.hold = False
        d = self.login(password=b"right", address="198.51.100.1")
        self.assertNoResult(d)
        self.clock.advance(15)
        self.assertIs(self.successResultOf(d).outcome, Outcome.OK)


class Cancellation(GuardedLoginCase):
    def test_cancel_during_the_per_user_delay_checks_and_counts_nothing(self) -> None:
        for i in range(3):
            self.login(address=f"10.0.0.{i}")
        self.clock.advance(60)
        d = self.login(address="10.0.0.9")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the per-user delay
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.checker.checks), 3)
        self.assertEqual((self.throttle.in_flight("10.0.0.9"), self.throttle.failures("10.0.0.9")),
                         (0, 0))  # fmt: skip

    def test_cancel_during_the_check_still_counts_the_failure(self) -> None:
        self.checker.hold = True
        d = self.login()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.throttle.in_flight("192.0.2.1"), 1)  # still being checked
        self.checker.release()
        self.assertEqual(self.throttle.failures("192.0.2.1"), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # nobody to answer

    def test_cancel_while_waiting_for_room(self) -> None:
        self.checker.hold = True
        for _ in range(5):
            self.login()
        d = self.login()
        self.assertEqual(self.throttle.waiting("192.0.2.1"), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.throttle.waiting("192.0.2.1"), 0)
        self.checker.release()
        self.assertEqual(len(self.checker.checks), 5)

    def test_cancel_during_the_check_logs_a_success_out(self) -> None:
        logouts = []
        self.portal.realm.factories[next(iter(self.portal.realm.factories))] = (
            lambda user: type("A", (), {"address": user.address,
                                        "logout": lambda self: logouts.append(1)})()
        )  # fmt: skip
        self.checker.hold = True
        d = self.login(password=b"right")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.checker.release()
        self.assertEqual(logouts, [1])
        self.assertEqual(self.throttle.in_flight("192.0.2.1"), 0)

    def test_cancel_during_the_reply_delay(self) -> None:
        d = self.login()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.throttle.failures("192.0.2.1"), 1)


class Busy(GuardedLoginCase):
    def test_hash_queue_full_is_unavailable_and_counts_nothing(self) -> None:
        self.checker.busy = True
        for _ in range(10):
            result = self.successResultOf(self.login())
            self.assertIs(result.outcome, Outcome.UNAVAILABLE)
        t = self.throttle
        self.assertEqual((t.failures("192.0.2.1"), t.in_flight("192.0.2.1")), (0, 0))
        self.assertEqual(self.throttle.user_failures("alice"), 0)


class FakeReactor:
    """deferToThreadPool needs only callFromThread; no thread ever runs here."""

    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


class BoundedHashQueue(SynchronousTestCase):
    def test_refuses_beyond_max_pending_before_hashing(self) -> None:
        pool = HashingPool(FakeReactor(), threads=2, max_pending=3)  # type: ignore[arg-type]
        pool.pool = ThreadPool(0, 1)  # never started: work stays queued, as behind slow hashes
        calls = []
        ds = [pool.run(calls.append, i) for i in range(5)]
        self.assertEqual([d.called for d in ds], [False, False, False, True, True])
        for d in ds[3:]:
            self.failureResultOf(d, HashQueueFull)
        self.assertEqual((pool.pending, pool.refused, calls), (3, 2, []))

    def test_the_count_goes_down_as_checks_finish(self) -> None:
        pool = HashingPool(FakeReactor(), threads=1, max_pending=1)  # type: ignore[arg-type]
        pool.pool.start()
        d = pool.run(lambda: 7)
        pool.pool.stop()  # joins the worker: the call has finished (no waiting on a clock)
        self.assertEqual(self.successResultOf(d), 7)
        self.assertEqual(pool.pending, 0)

    def test_bad_parameters(self) -> None:
        self.assertRaises(ValueError, HashingPool, FakeReactor(), max_pending=0)


class WebBasicLogin(GuardedLoginCase):
    """The web page's Basic login goes through the same guard."""

    def access(self, checker: object | None = None) -> Access:
        portal = make_portal(checker) if checker is not None else self.portal
        return Access(login=True, admins=(), portal=portal, throttle=self.throttle,
                      clock=self.clock)  # fmt: skip

    def request(self, user: str, password: str) -> DummyRequest:
        request = DummyRequest([b""])
        request.client = IPv4Address("TCP", "127.0.0.1", 40000)
        request.isSecure = lambda: False  # type: ignore[attr-defined]  # loopback: allowed
        token = b64encode(f"{user}:{password}".encode()).decode()
        request.requestHeaders.setRawHeaders(b"authorization", [f"Basic {token}"])
        return request

    def test_busy_is_login_busy(self) -> None:
        self.checker.busy = True
        d = self.access().viewer(self.request("alice", "right"))
        self.failureResultOf(d, LoginBusy)

    def test_a_success_of_another_user_does_not_clear_the_count(self) -> None:
        access = self.access()
        for i in range(4):
            d = access.viewer(self.request("bob", f"guess{i}"))
            self.clock.advance(60)
            self.clock.advance(60)
            self.failureResultOf(d, LoginRequired)
        self.successResultOf(access.viewer(self.request("alice", "right")))
        d = access.viewer(self.request("bob", "guess5"))
        self.clock.advance(60)
        self.clock.advance(60)
        self.failureResultOf(d, LoginRequired)
        self.assertRaises(LoginRefused, access.viewer, self.request("bob", "guess6"))
        self.assertEqual(self.checker.checks.count(b"bob"), 5)


class SuspectShare(GuardedLoginCase):
    def test_guesses_fill_only_their_share_and_a_real_login_gets_in(self) -> None:
        """Issue 12 5b(3): a real login waited 10.2 s behind a flood of guesses."""
        self.throttle.max_suspect_checks = 2
        self.login(user=b"bob", address="198.51.100.1")  # bob now has a failure
        self.clock.advance(60)
        self.checker.hold = True
        guesses = [self.login(user=b"bob", address=f"10.0.0.{i}") for i in range(6)]
        busy = [self.successResultOf(d).outcome for d in guesses if d.called]
        self.assertEqual(busy, [Outcome.UNAVAILABLE] * 4)  # nothing hashed for them
        self.assertEqual(self.checker.checks.count(b"bob"), 1 + 2)
        real = self.login(password=b"right", address="192.0.2.50")
        self.assertEqual(self.checker.checks[-1], b"alice")  # checked at once, beside the guesses
        self.checker.release()
        self.assertIs(self.successResultOf(real).outcome, Outcome.OK)
        self.assertEqual(self.throttle.suspect_checks, 0)
