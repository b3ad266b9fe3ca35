"""Authentication failure throttling: delays, disconnects, expiry, keys and bounded memory;
attempts reserved before the check, per-(address, user) forgiveness and the per-user delay."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from mailhub.throttle import AuthThrottle, address_key, user_key


def throttle(**kw) -> tuple[AuthThrottle, Clock]:
    clock = Clock()
    clock.advance(1_000_000)
    return AuthThrottle(clock, **kw), clock


class DelayTests(SynchronousTestCase):
    def test_delay_doubles_up_to_the_cap(self) -> None:
        t, _ = throttle()
        delays = [t.failure("192.0.2.1") for _ in range(7)]
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0])

    def test_parameters(self) -> None:
        t, _ = throttle(base_delay=0.5, max_delay=3.0)
        self.assertEqual([t.failure("a") for _ in range(4)], [0.5, 1.0, 2.0, 3.0])

    def test_many_failures_do_not_overflow(self) -> None:
        t, _ = throttle(max_entries=10)
        for _ in range(5000):
            delay = t.failure("192.0.2.1")
        self.assertEqual(delay, 15.0)
        self.assertEqual(t.failures("192.0.2.1"), 5000)

    def test_bad_parameters(self) -> None:
        clock = Clock()
        for kw in (
            {"max_failures": 0},
            {"window": 0},
            {"max_entries": 0},
            {"base_delay": -1},
            {"ipv6_prefix": 129},
        ):
            self.assertRaises(ValueError, AuthThrottle, clock, **kw)


class DisconnectTests(SynchronousTestCase):
    def test_disconnect_at_max_failures(self) -> None:
        t, _ = throttle(max_failures=3)
        answers = []
        for _ in range(4):
            t.failure("192.0.2.1")
            answers.append(t.refused("192.0.2.1"))
        self.assertEqual(answers, [False, False, True, True])
        self.assertFalse(t.refused("192.0.2.2"))

    def test_window_expiry_after_the_last_failure(self) -> None:
        t, clock = throttle(max_failures=2, window=900)
        t.failure("192.0.2.1")
        clock.advance(600)
        t.failure("192.0.2.1")
        self.assertTrue(t.refused("192.0.2.1"))
        clock.advance(899)  # 899 s after the last failure: still refused
        self.assertTrue(t.refused("192.0.2.1"))
        clock.advance(1)
        self.assertFalse(t.refused("192.0.2.1"))
        self.assertEqual(t.failures("192.0.2.1"), 0)
        self.assertEqual(t.failure("192.0.2.1"), 1.0)  # a fresh count

    def test_logs_once_when_the_limit_is_reached(self) -> None:
        events: list[dict] = []
        t, _ = throttle(max_failures=2, log=Logger(namespace="t", observer=events.append))
        for _ in range(4):
            t.failure("192.0.2.1")
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["key"], "192.0.2.1")
        self.assertEqual(events[0]["failures"], 2)


class KeyTests(SynchronousTestCase):
    def test_ipv4_mapped_is_ipv4(self) -> None:
        self.assertEqual(address_key("::ffff:192.0.2.1"), "192.0.2.1")
        self.assertEqual(address_key("::FFFF:c000:0201"), "192.0.2.1")
        self.assertEqual(address_key("192.0.2.1"), "192.0.2.1")

    def test_ipv6_by_prefix(self) -> None:
        self.assertEqual(address_key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64")
        self.assertEqual(address_key("2001:DB8:1:2::9"), "2001:db8:1:2::/64")
        self.assertEqual(address_key("2001:db8:1:2:3:4:5:6", 48), "2001:db8:1::/48")
        self.assertEqual(address_key("2001:db8::1", 128), "2001:db8::1/128")
        self.assertEqual(address_key("fe80::1%eth0"), "fe80::/64")

    def test_other_addresses_are_their_own_key(self) -> None:
        self.assertEqual(address_key("/run/mailhub.sock"), "/run/mailhub.sock")
        self.assertEqual(address_key(""), "")

    def test_one_ipv6_network_shares_a_count(self) -> None:
        t, _ = throttle(max_failures=2)
        t.failure("2001:db8::1")
        t.failure("2001:db8::ffff:2")
        self.assertTrue(t.refused("2001:db8::3"))
        self.assertFalse(t.refused("2001:db8:0:1::1"))

    def test_mapped_and_plain_share_a_count(self) -> None:
        t, _ = throttle(max_failures=2)
        t.failure("::ffff:192.0.2.1")
        t.failure("192.0.2.1")
        self.assertTrue(t.refused("::ffff:192.0.2.1"))
        self.assertTrue(t.refused("192.0.2.1"))


class MemoryTests(SynchronousTestCase):
    def test_expired_entries_are_pruned(self) -> None:
        t, clock = throttle(window=60)
        for i in range(100):
            t.failure(f"10.0.0.{i}")
        self.assertEqual(len(t), 100)
        clock.advance(30)
        t.failure("10.0.1.1")
        clock.advance(30)
        self.assertEqual(len(t), 1)  # the first hundred expired, the last one has 30 s left
        clock.advance(30)
        self.assertEqual(len(t), 0)

    def test_pruning_happens_on_failure_too(self) -> None:
        t, clock = throttle(window=60)
        for i in range(100):
            t.failure(f"10.0.0.{i}")
        clock.advance(60)
        t.failure("10.0.1.1")
        self.assertEqual(len(t._addresses.entries), 1)

    def test_table_is_capped_evicting_the_oldest(self) -> None:
        events: list[dict] = []
        t, clock = throttle(max_entries=3, log=Logger(namespace="t", observer=events.append))
        for i in range(3):
            t.failure(f"10.0.0.{i}")
            clock.advance(1)
        t.failure("10.0.0.0")  # a new failure makes it the youngest
        clock.advance(1)
        t.failure("10.0.0.9")
        self.assertEqual(len(t), 3)
        self.assertEqual(t.failures("10.0.0.1"), 0)  # the oldest went
        self.assertEqual(t.failures("10.0.0.0"), 2)
        self.assertEqual(t.failures("10.0.0.9"), 1)
        for i in range(20, 40):
            t.failure(f"10.0.0.{i}")
        self.assertEqual(len(t), 3)
        self.assertEqual(len([e for e in events if "full" in e["log_format"]]), 1)

    def test_a_flood_stays_bounded(self) -> None:
        t, _ = throttle(max_entries=1000)
        for i in range(20_000):
            t.failure(f"2001:db8:{i:x}::1")
        self.assertEqual(len(t), 1000)


class ReservedAttempts(SynchronousTestCase):
    """Issue 12 5b(1): an attempt counts from before its password is checked."""

    def test_parallel_attempts_beyond_the_limit_wait_then_are_refused(self) -> None:
        t, _ = throttle(max_failures=5)
        attempts = [t.begin("192.0.2.1", "bob") for _ in range(150)]
        reserved = [a for a in attempts if a is not None]
        self.assertEqual(len(reserved), 5)  # at most the limit get checked
        self.assertEqual(t.in_flight("192.0.2.1"), 5)
        self.assertFalse(t.refused("192.0.2.1"))  # nothing failed yet: the others wait
        woken = []
        for _ in range(145):
            t.released("192.0.2.1").addCallback(woken.append)
        self.assertEqual(t.waiting("192.0.2.1"), 145)
        reserved[0].failed()
        self.assertEqual(len(woken), 145)  # all ask again...
        self.assertIsNone(t.begin("192.0.2.1", "bob"))  # ...and the 4 in flight still fill it
        for a in reserved[1:]:
            a.failed()
        self.assertEqual((t.in_flight("192.0.2.1"), t.failures("192.0.2.1")), (0, 5))
        self.assertTrue(t.refused("192.0.2.1"))
        self.assertIsNone(t.begin("192.0.2.1", "bob"))
        self.assertEqual(t.refusals, 1)
        self.assertIsNotNone(t.begin("192.0.2.2", "bob"))  # another address has its own

    def test_parallel_right_logins_only_wait_their_turn(self) -> None:
        """A client opening many connections, or an office behind one NAT address."""
        t, _ = throttle(max_failures=5)
        users = [f"user{i}" for i in range(20)]
        done = []

        def log_in(user: str) -> None:
            attempt = t.begin("192.0.2.1", user)
            if attempt is None:
                self.assertFalse(t.refused("192.0.2.1"))
                t.released("192.0.2.1").addCallback(lambda _: log_in(user))
                return
            pending.append((attempt, user))

        pending: list = []
        for user in users:
            log_in(user)
        while pending:
            attempt, user = pending.pop(0)
            attempt.succeeded()
            done.append(user)
        self.assertEqual(sorted(done), sorted(users))
        self.assertEqual((t.waiting("192.0.2.1"), t.in_flight("192.0.2.1")), (0, 0))

    def test_a_cancelled_wait_is_forgotten(self) -> None:
        t, _ = throttle(max_failures=1)
        attempt = t.begin("192.0.2.1", "bob")
        assert attempt is not None
        d = t.released("192.0.2.1")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(t.waiting("192.0.2.1"), 0)
        self.assertEqual(t._waiters, {})  # nothing left behind
        attempt.abandoned()

    def test_abandoned_attempts_count_nothing(self) -> None:
        t, _ = throttle(max_failures=2)
        for _ in range(10):
            attempt = t.begin("192.0.2.1", "bob")
            assert attempt is not None
            attempt.abandoned()
        self.assertEqual((t.failures("192.0.2.1"), t.in_flight("192.0.2.1")), (0, 0))
        self.assertEqual(t.user_failures("bob"), 0)

    def test_an_attempt_resolves_once(self) -> None:
        t, _ = throttle()
        attempt = t.begin("192.0.2.1", "bob")
        assert attempt is not None
        self.assertEqual(attempt.failed(), 1.0)
        self.assertEqual(attempt.failed(), 0.0)
        attempt.succeeded()
        attempt.abandoned()
        self.assertEqual((t.failures("192.0.2.1"), t.in_flight("192.0.2.1")), (1, 0))


def fail(t: AuthThrottle, address: str, user: str) -> float:
    attempt = t.begin(address, user)
    assert attempt is not None
    return attempt.failed()


def succeed(t: AuthThrottle, address: str, user: str) -> None:
    attempt = t.begin(address, user)
    assert attempt is not None
    attempt.succeeded()


class SuccessForgivesOnlyItsOwn(SynchronousTestCase):
    """Issue 12 5b(2): a login with the attacker's own account must not clear the count."""

    def test_another_users_success_leaves_the_address_count(self) -> None:
        t, _ = throttle(max_failures=5, user_free_failures=100)
        for _ in range(4):
            fail(t, "192.0.2.1", "bob@example.com")
        succeed(t, "192.0.2.1", "mallory@example.com")
        self.assertEqual(t.failures("192.0.2.1"), 4)
        fail(t, "192.0.2.1", "bob@example.com")
        self.assertTrue(t.refused("192.0.2.1"))
        self.assertIsNone(t.begin("192.0.2.1", "bob@example.com"))
        self.assertIsNone(t.begin("192.0.2.1", "mallory@example.com"))

    def test_the_same_users_success_forgives_their_own_typing(self) -> None:
        t, _ = throttle(max_failures=5)
        fail(t, "192.0.2.1", "bob@example.com")
        fail(t, "192.0.2.1", "carol@example.com")
        fail(t, "192.0.2.1", "Bob@Example.com")  # the same user, case-folded
        fail(t, "198.51.100.1", "bob@example.com")
        self.assertEqual(t.pair_failures("192.0.2.1", "bob@example.com"), 2)
        succeed(t, "192.0.2.1", "BOB@example.com")
        self.assertEqual(t.failures("192.0.2.1"), 1)  # carol's stays
        self.assertEqual(t.pair_failures("192.0.2.1", "bob@example.com"), 0)
        # The guess from elsewhere still counts, for its address and for bob.
        self.assertEqual(t.failures("198.51.100.1"), 1)
        self.assertEqual(t.user_failures("bob@example.com"), 1)

    def test_forgiving_after_expiry(self) -> None:
        t, clock = throttle(window=60)
        fail(t, "192.0.2.1", "bob")
        clock.advance(60)
        succeed(t, "192.0.2.1", "bob")
        self.assertEqual((t.failures("192.0.2.1"), t.user_failures("bob")), (0, 0))


class PerUserDelay(SynchronousTestCase):
    """Issue 12 5b(3): one guess each from many addresses is slowed down per user name."""

    def test_delay_grows_with_the_users_failures_from_anywhere(self) -> None:
        t, _ = throttle(user_free_failures=3, user_base_delay=1.0, user_max_delay=8.0)
        delays = []
        for i in range(8):
            attempt = t.begin(f"10.0.0.{i}", "bob")
            assert attempt is not None
            delays.append(attempt.delay)
            attempt.failed()
        self.assertEqual(delays, [0.0, 0.0, 0.0, 1.0, 2.0, 4.0, 8.0, 8.0])
        other = t.begin("10.0.0.99", "alice")  # other users are not slowed
        assert other is not None
        self.assertEqual(other.delay, 0.0)

    def test_parallel_logins_of_one_user_are_not_delayed(self) -> None:
        """Only failures count for the delay: a client's parallel connections log in at once."""
        t, _ = throttle(user_free_failures=1)
        attempts = [t.begin(f"10.0.0.{i}", "bob") for i in range(5)]
        self.assertEqual([a.delay for a in attempts if a is not None], [0.0] * 5)

    def test_not_a_lockout(self) -> None:
        """However many failures, the real user's check waits at most user_max_delay, and
        their success from their own address forgives only their own failures."""
        t, _ = throttle(user_free_failures=3, user_max_delay=15.0)
        for i in range(1000):
            fail(t, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "bob")
        attempt = t.begin("192.0.2.1", "bob")
        assert attempt is not None
        self.assertEqual(attempt.delay, 15.0)
        attempt.succeeded()
        self.assertEqual(t.user_failures("bob"), 1000)

    def test_window(self) -> None:
        t, clock = throttle(user_free_failures=1, window=60)
        fail(t, "10.0.0.1", "bob")
        clock.advance(59)
        attempt = t.begin("10.0.0.2", "bob")
        assert attempt is not None
        self.assertEqual(attempt.delay, 1.0)
        attempt.abandoned()
        clock.advance(1)
        attempt = t.begin("10.0.0.2", "bob")
        assert attempt is not None
        self.assertEqual(attempt.delay, 0.0)

    def test_user_keys(self) -> None:
        self.assertEqual(user_key(b" Bob@Example.COM "), "bob@example.com")
        self.assertEqual(user_key(b"\xff"), "\ufffd")
        self.assertEqual(len(user_key("x" * 10_000)), 320)

    def test_user_tables_are_capped(self) -> None:
        t, _ = throttle(max_entries=100, max_failures=10**6)
        for i in range(5000):
            fail(t, "10.0.0.1", f"user{i}")
        self.assertEqual(len(t._users.entries), 100)
        self.assertEqual(len(t._pairs.entries), 100)


class SuspectShare(SynchronousTestCase):
    """Issue 12 5b(3): guesses may hold only part of the checks, so a real login finds room."""

    def test_what_is_suspect(self) -> None:
        t, _ = throttle(user_free_failures=3)
        clean = [t.begin("192.0.2.1", "alice") for _ in range(3)]
        self.assertEqual([a.suspect for a in clean if a is not None], [False] * 3)
        many = t.begin("192.0.2.1", "alice")  # a 4th at once for one user name
        assert many is not None
        self.assertTrue(many.suspect)
        for a in [*clean, many]:
            assert a is not None
            a.succeeded()
        fail(t, "198.51.100.1", "bob")
        from_elsewhere = t.begin("192.0.2.9", "bob")  # the user name has failures
        same_address = t.begin("198.51.100.1", "carol")  # the address has failures
        other = t.begin("192.0.2.9", "carol")
        self.assertEqual(
            [a.suspect for a in (from_elsewhere, same_address, other) if a is not None],
            [True, True, False],
        )

    def test_suspect_checks_are_capped_clean_ones_are_not(self) -> None:
        t, _ = throttle(max_suspect_checks=2)
        fail(t, "198.51.100.1", "bob")
        guesses = [t.begin(f"10.0.0.{i}", "bob") for i in range(3)]
        allowed = [a.may_check() for a in guesses if a is not None]
        self.assertEqual(allowed, [True, True, False])
        self.assertEqual((t.suspect_checks, t.busy_refusals), (2, 1))
        clean = t.begin("192.0.2.1", "alice")
        assert clean is not None
        self.assertTrue(clean.may_check())
        assert guesses[0] is not None and guesses[2] is not None
        guesses[0].failed()
        guesses[2].abandoned()
        self.assertEqual(t.suspect_checks, 1)
        again = t.begin("10.0.0.9", "bob")
        assert again is not None
        self.assertTrue(again.may_check())
        self.assertTrue(again.may_check())  # asking twice takes one place
        self.assertEqual(t.suspect_checks, 2)
