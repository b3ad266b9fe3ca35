"""The one rule for header octets -> text (mailhub.message.header_text, issue 12)."""

from __future__ import annotations

import email.policy
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailhub.message.header_text import from_bytes, from_escaped, in_charset
from mailhub.message.headers import decode_words
from tests import headerbytes

_SURROGATES = range(0xD800, 0xE000)


def _clean(test: SynchronousTestCase, text: str) -> None:
    """Text that JSON and UTF-8 take: no surrogate in it."""
    test.assertFalse([c for c in text if ord(c) in _SURROGATES], repr(text))
    json.dumps(text, ensure_ascii=False).encode("utf-8")


class Rule(SynchronousTestCase):
    def test_utf8_is_read_as_utf8(self) -> None:
        # RFC 6532 3.2: raw UTF-8 in header fields.
        self.assertEqual(from_bytes("Jürgen 发件人".encode()), "Jürgen 发件人")
        self.assertEqual(from_bytes(b"plain \0 ascii"), "plain \0 ascii")

    def test_what_is_not_utf8_is_replacement_characters(self) -> None:
        # One U+FFFD per maximal ill-formed subpart (Unicode 3.9), as email and Dovecot show.
        self.assertEqual(from_bytes(b"J\xfcrgen"), "J\ufffdrgen")
        self.assertEqual(from_bytes(b"\xe2\x82 x"), "\ufffd x")
        # An encoded surrogate is no UTF-8 (RFC 3629 3): never a surrogate in the text.
        self.assertEqual(from_bytes(b"\xed\xa0\x80"), "\ufffd" * 3)

    def test_escaped_text_is_read_as_its_octets(self) -> None:
        self.assertEqual(from_escaped("J\udcc3\udcbcrgen"), "Jürgen")
        self.assertEqual(from_escaped("é \udcff"), "é \ufffd")
        self.assertEqual(from_escaped("\ud800x"), "\ufffdx")  # stands for no octet
        self.assertEqual(from_escaped("already text"), "already text")

    def test_declared_charsets(self) -> None:
        self.assertEqual(in_charset(b"Gr\xfc\xdfe", "iso-8859-1"), "Grüße")
        self.assertEqual(in_charset(b"Gr\xfc\xdfe", "utf-8"), "Gr\ufffd\ufffde")
        self.assertEqual(in_charset("Grüße".encode(), "x-unknown"), "Grüße")
        self.assertEqual(in_charset(b"+2AA-", "utf-7"), "\ufffd")  # UTF-7: a lone surrogate
        self.assertEqual(in_charset(b"AAB", "utf-16"), "\u4141\ufffd")  # odd length
        self.assertEqual(in_charset(b"x", "base64"), "x")  # a codec, but no text encoding
        self.assertEqual(in_charset(b"x", "a\0b"), "x")


class Properties(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=60))
    def test_any_octets(self, raw: bytes) -> None:
        text = from_bytes(raw)
        _clean(self, text)
        # Octet runs: text the email package decoded with surrogate escapes comes out the same.
        self.assertEqual(from_escaped(raw.decode("ascii", "surrogateescape")), text)
        self.assertEqual(in_charset(raw, "utf-8"), text)

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=40))
    def test_utf8_round_trip_and_any_str(self, text: str) -> None:
        _clean(self, from_escaped(text))
        if not any(ord(c) in _SURROGATES for c in text):
            self.assertEqual(from_bytes(text.encode()), text)
            self.assertEqual(from_escaped(text), text)

    @settings(max_examples=200, deadline=None)
    @given(headerbytes.text_value(), st.sampled_from(["utf-8", "utf-7", "utf-16", "koi8-r", "x"]))
    def test_header_values(self, raw: bytes, charset: str) -> None:
        _clean(self, decode_words(raw))
        _clean(self, in_charset(raw, charset))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.one_of(headerbytes.utf8, headerbytes.octets), max_size=4))
    def test_same_text_as_the_email_package(self, pieces: list[bytes]) -> None:
        # An unstructured field without encoded words: email's header classes (which the web
        # API uses) and IMAP's decode_words read the octets alike.
        raw = b" ".join(pieces).replace(b"=?", b"")
        value = raw.decode("ascii", "surrogateescape")
        shown = str(email.policy.default.header_factory("Subject", value))
        self.assertEqual(" ".join(shown.split()), " ".join(decode_words(raw).split()))
