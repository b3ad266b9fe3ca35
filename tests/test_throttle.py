"""Authentication failure throttling: delays, disconnects, expiry, keys and bounded memory."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from mailhub.throttle import AuthThrottle, address_key


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
            answers.append(t.should_disconnect("192.0.2.1"))
        self.assertEqual(answers, [False, False, True, True])
        self.assertFalse(t.should_disconnect("192.0.2.2"))

    def test_success_clears(self) -> None:
        t, _ = throttle(max_failures=2)
        t.failure("192.0.2.1")
        t.failure("192.0.2.1")
        t.success("192.0.2.1")
        self.assertFalse(t.should_disconnect("192.0.2.1"))
        self.assertEqual(t.failure("192.0.2.1"), 1.0)
        t.success("198.51.100.1")  # unknown: nothing to do

    def test_window_expiry_after_the_last_failure(self) -> None:
        t, clock = throttle(max_failures=2, window=900)
        t.failure("192.0.2.1")
        clock.advance(600)
        t.failure("192.0.2.1")
        self.assertTrue(t.should_disconnect("192.0.2.1"))
        clock.advance(899)  # 899 s after the last failure: still refused
        self.assertTrue(t.should_disconnect("192.0.2.1"))
        clock.advance(1)
        self.assertFalse(t.should_disconnect("192.0.2.1"))
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


class DelayReplyTests(SynchronousTestCase):
    def test_fires_after_the_delay(self) -> None:
        t, clock = throttle(max_failures=2)
        d = t.delay_reply("192.0.2.1")
        self.assertNoResult(d)
        clock.advance(0.999)
        self.assertNoResult(d)
        clock.advance(0.001)
        self.assertIs(self.successResultOf(d), False)
        d = t.delay_reply("192.0.2.1")
        clock.advance(1.999)
        self.assertNoResult(d)
        clock.advance(0.001)
        self.assertIs(self.successResultOf(d), True)

    def test_cancel_stops_the_timer(self) -> None:
        t, clock = throttle()
        d = t.delay_reply("192.0.2.1")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(t.failures("192.0.2.1"), 1)  # the failure still counts


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
        self.assertTrue(t.should_disconnect("2001:db8::3"))
        self.assertFalse(t.should_disconnect("2001:db8:0:1::1"))

    def test_mapped_and_plain_share_a_count(self) -> None:
        t, _ = throttle(max_failures=2)
        t.failure("::ffff:192.0.2.1")
        t.failure("192.0.2.1")
        self.assertTrue(t.should_disconnect("::ffff:192.0.2.1"))
        t.success("192.0.2.1")
        self.assertFalse(t.should_disconnect("::ffff:192.0.2.1"))


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
        self.assertEqual(len(t._entries), 1)

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
