"""The connection counter every listener uses for [limits] max_connections(_per_ip)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailhub.connlimit import ConnectionCounter


class ConnectionCounterTests(SynchronousTestCase):
    def test_per_address_limit(self) -> None:
        c = ConnectionCounter(max_total=10, max_per_address=2)
        self.assertEqual([c.admit("192.0.2.1") for _ in range(3)], [True, True, False])
        self.assertTrue(c.admit("192.0.2.2"))  # another address has its own allowance
        self.assertEqual((c.total, c.by_address), (3, {"192.0.2.1": 2, "192.0.2.2": 1}))

    def test_total_limit(self) -> None:
        c = ConnectionCounter(max_total=2, max_per_address=5)
        self.assertEqual([c.admit(f"192.0.2.{i}") for i in range(3)], [True, True, False])
        self.assertEqual(c.total, 2)

    def test_release_frees_a_place_and_forgets_idle_addresses(self) -> None:
        c = ConnectionCounter(max_total=1, max_per_address=1)
        self.assertTrue(c.admit("192.0.2.1"))
        self.assertFalse(c.admit("192.0.2.2"))
        c.release("192.0.2.1")
        self.assertEqual((c.total, c.by_address), (0, {}))
        self.assertTrue(c.admit("192.0.2.2"))
