"""The IMAP dialog driver of tests/support/imap.py notices wrong replies."""

from __future__ import annotations

from tests.support.imap import IMAPTestCase


class SupportSelfTest(IMAPTestCase):
    """The driver itself must notice a wrong reply."""

    def test_mismatch_is_reported(self) -> None:
        client = self.connect()
        with self.assertRaises(AssertionError):
            client.run("""
                C: a1 NOOP
                S: a1 NO nothing
            """)

    def test_extra_lines_are_reported(self) -> None:
        client = self.connect()
        with self.assertRaises(AssertionError):
            client.run("""
                C: a1 NOOP
                C: a2 NOOP
                S: a1 OK NOOP completed
            """)
