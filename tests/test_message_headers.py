"""Header field syntax (mailhub.message.headers): address lists. Their ENVELOPE rendering
and the MIME parameters as BODYSTRUCTURE shows them are tested in test_imap_mime."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailhub.message import headers as mh


class Addresses(SynchronousTestCase):
    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=60) | st.text(alphabet='<>@,;:."()[]\\ ab=?', max_size=40))
    def test_any_value_parses(self, value: bytes | str) -> None:
        if isinstance(value, str):
            value = value.encode()
        for name, adl, mailbox, host in mh.parse_address_list(value):
            self.assertTrue(all(x is None or isinstance(x, bytes) for x in (name, adl)))
            # a group marker or a mailbox with both parts (placeholders when missing)
            if host is None:
                self.assertTrue(mailbox is None or isinstance(mailbox, bytes))
            else:
                self.assertTrue(mailbox)

    def test_simple_and_full_parsers_agree(self) -> None:
        for value in (
            b"a@b.c",
            b"Alice Smith <alice@example.com>, bob@example.org",
            b"John Q. Public <jqp@example.com>",
            b"  Spaced   Name\t <s@x.y> ,, z@w",
            b"=?utf-8?q?J=C3=B6rg?= <j@x.de>",
        ):
            self.assertEqual(
                mh.parse_address_list(value), mh.parse_address_list(b"(comment) " + value)
            )
