"""The connection counter every listener uses for [limits] max_connections(_per_ip), and its
stress rules (issue 12 5c): short pre-login timeouts, a share kept for logged-in sessions and
eviction of the oldest session that has not logged in."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailhub.connlimit import ConnectionCounter, Slot


class FakeSession:
    def __init__(self, log: list[tuple[str, FakeSession]], name: str = "") -> None:
        self.log, self.name = log, name

    def evict(self) -> None:
        self.log.append(("evict", self))

    def under_stress(self) -> None:
        self.log.append(("stress", self))


class ConnectionCounterTests(SynchronousTestCase):
    def test_per_address_limit(self) -> None:
        c = ConnectionCounter(max_total=10, max_per_address=2)
        self.assertEqual([c.admit("192.0.2.1") is not None for _ in range(3)], [True, True, False])
        self.assertIsNotNone(c.admit("192.0.2.2"))  # another address has its own allowance
        self.assertEqual((c.total, c.by_address), (3, {"192.0.2.1": 2, "192.0.2.2": 1}))

    def test_total_limit(self) -> None:
        c = ConnectionCounter(max_total=2, max_per_address=5)
        self.assertEqual([c.admit(f"192.0.2.{i}") is not None for i in range(3)],
                         [True, True, False])  # fmt: skip
        self.assertEqual(c.total, 2)

    def test_release_frees_a_place_and_forgets_idle_addresses(self) -> None:
        c = ConnectionCounter(max_total=1, max_per_address=1)
        slot = c.admit("192.0.2.1")
        assert slot is not None
        self.assertIsNone(c.admit("192.0.2.2"))
        c.release(slot)
        c.release(slot)  # twice (evicted, then the connection closed): counted once
        self.assertEqual((c.total, c.by_address), (0, {}))
        self.assertIsNotNone(c.admit("192.0.2.2"))


class StressTests(SynchronousTestCase):
    def test_stress_begins_at_the_threshold_and_cuts_pre_login_timers(self) -> None:
        log: list = []
        c = ConnectionCounter(10, 10, stress_threshold=0.8, stress_idle_timeout=10)
        slots = [c.admit(f"192.0.2.{i}", FakeSession(log)) for i in range(7)]
        c.logged_in(slots[0])
        self.assertFalse(c.stressed)
        self.assertEqual(c.idle_timeout(slots[1], 1800), 1800)
        self.assertEqual(log, [])
        eighth = c.admit("192.0.2.8", FakeSession(log))
        self.assertTrue(c.stressed)
        # Every session not logged in (the new one too) had its timer cut, once.
        self.assertEqual([s for what, s in log if what == "stress"],
                         [s.session for s in slots[1:]] + [eighth.session])  # fmt: skip
        self.assertEqual(c.idle_timeout(slots[1], 1800), 10)
        self.assertEqual(c.idle_timeout(slots[1], 5), 5)  # never longer than the normal one
        self.assertEqual(c.idle_timeout(slots[0], 1800), 1800)  # logged in: its own timeout
        c.admit("192.0.2.9", FakeSession(log))
        self.assertEqual(len(log), 7)  # already under stress: nobody is told again

    def test_stress_ends_below_the_threshold_less_a_tenth(self) -> None:
        c = ConnectionCounter(20, 20, stress_threshold=0.5)
        slots = [c.admit(f"192.0.2.{i}") for i in range(10)]
        self.assertTrue(c.stressed)
        c.release(slots.pop())
        self.assertTrue(c.stressed)  # 9: not yet (hysteresis, so it does not flap)
        c.release(slots.pop())
        self.assertTrue(c.stressed)  # 8 = 10 - 20 // 10
        c.release(slots.pop())
        self.assertFalse(c.stressed)
        self.assertEqual(c.idle_timeout(slots[0], 300), 300)


class ShareAndEviction(SynchronousTestCase):
    def test_pre_login_sessions_fill_only_their_share_then_the_oldest_goes(self) -> None:
        log: list = []
        c = ConnectionCounter(10, 10, stress_threshold=0.8, evict=True)
        sessions = [FakeSession(log, f"s{i}") for i in range(9)]
        slots = [c.admit(f"192.0.2.{i}", sessions[i]) for i in range(8)]
        self.assertEqual(c.preauth, 8)
        ninth = c.admit("192.0.2.8", sessions[8])
        self.assertIsNotNone(ninth)
        self.assertEqual([e for e in log if e[0] == "evict"], [("evict", sessions[0])])
        self.assertTrue(slots[0].released)
        self.assertEqual((c.total, c.preauth, c.evictions), (8, 8, 1))
        c.release(slots[0])  # its connection closes later: not counted twice
        self.assertEqual(c.total, 8)

    def test_logged_in_sessions_use_the_kept_share_and_are_never_evicted(self) -> None:
        log: list = []
        c = ConnectionCounter(10, 10, stress_threshold=0.8, evict=True)
        users = []
        for i in range(10):
            slot = c.admit(f"198.51.100.{i}", FakeSession(log))
            assert slot is not None
            c.logged_in(slot)
            users.append(slot)
        self.assertEqual((c.total, c.preauth), (10, 0))
        self.assertIsNone(c.admit("192.0.2.1", FakeSession(log)))  # full of users: refused
        self.assertEqual([e for e in log if e[0] == "evict"], [])
        c.release(users[0])
        pre = c.admit("192.0.2.1", FakeSession(log, "pre"))
        self.assertIsNotNone(pre)
        # Full again: the next newcomer evicts the one not logged in, never a user.
        newcomer = c.admit("192.0.2.2", FakeSession(log))
        self.assertIsNotNone(newcomer)
        self.assertEqual([s.name for what, s in log if what == "evict"], ["pre"])
        self.assertTrue(all(not s.released for s in users[1:]))

    def test_the_per_address_limit_never_evicts(self) -> None:
        log: list = []
        c = ConnectionCounter(10, 2, evict=True)
        c.admit("192.0.2.1", FakeSession(log))
        c.admit("192.0.2.1", FakeSession(log))
        self.assertIsNone(c.admit("192.0.2.1", FakeSession(log)))
        self.assertEqual(log, [])

    def test_without_eviction_the_whole_maximum_is_for_anyone(self) -> None:
        """Port 25: nobody logs in; a session may be a message half received."""
        log: list = []
        c = ConnectionCounter(10, 10, stress_threshold=0.8, evict=False)
        slots = [c.admit(f"192.0.2.{i}", FakeSession(log)) for i in range(10)]
        self.assertTrue(all(isinstance(s, Slot) for s in slots))
        self.assertIsNone(c.admit("192.0.2.99", FakeSession(log)))
        self.assertEqual([e for e in log if e[0] == "evict"], [])
