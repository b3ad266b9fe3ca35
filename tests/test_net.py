"""mailhub.net: network helpers shared by the SMTP policy and the web page."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailhub.net import is_loopback


class LoopbackTests(SynchronousTestCase):
    def test_is_loopback(self) -> None:
        for address in ("127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"):
            self.assertTrue(is_loopback(address), address)
        for address in ("192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1", "", "/tmp/sock"):
            self.assertFalse(is_loopback(address), address)
