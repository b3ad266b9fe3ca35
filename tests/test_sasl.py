"""SASL PLAIN (RFC 4616) and LOGIN parsing, and SMTP AUTH's base64 framing (RFC 4954 4)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailhub import sasl
from mailhub.sasl import Login, Plain, SASLCredentials, SASLError


class Framing(SynchronousTestCase):
    def test_decode(self) -> None:
        self.assertEqual(sasl.decode_response(b"="), b"")
        self.assertEqual(sasl.decode_response(b""), b"")
        self.assertEqual(sasl.decode_response(b"AGEAYg=="), b"\0a\0b")
        for bad in (b"AGEAYg", b"a b", b"!!", b"AGEA=Yg==", "é".encode()):
            self.assertRaises(SASLError, sasl.decode_response, bad)

    def test_encode(self) -> None:
        self.assertEqual(sasl.encode_challenge(b""), "")
        self.assertEqual(sasl.encode_challenge(b"Username:"), "VXNlcm5hbWU6")

    def test_mechanism_lookup(self) -> None:
        self.assertIsInstance(sasl.mechanism("plain"), Plain)
        self.assertIsInstance(sasl.mechanism("LOGIN"), Login)
        self.assertIsNone(sasl.mechanism("CRAM-MD5"))
        self.assertIsNot(sasl.mechanism("PLAIN"), sasl.mechanism("PLAIN"))


class PlainTests(SynchronousTestCase):
    def test_message(self) -> None:
        creds = Plain().step(b"\0alice@example.org\0pw")
        self.assertEqual(creds, SASLCredentials(b"alice@example.org", b"pw"))
        self.assertTrue(creds.acts_as_itself())

    def test_empty_challenge_first(self) -> None:
        m = Plain()
        self.assertEqual(m.step(None), b"")
        self.assertEqual(m.step(b"z\0a\0b").authzid, b"z")

    def test_authzid(self) -> None:
        self.assertTrue(Plain().step(b"A@x.org\0a@x.org\0pw").acts_as_itself())
        self.assertFalse(Plain().step(b"b@x.org\0a@x.org\0pw").acts_as_itself())

    def test_malformed(self) -> None:
        for bad in (
            b"",
            b"a\0b",
            b"\0\0pw",
            b"\0a\0",
            b"\0a\0b\0c",
            b"\0\xff\0pw",
            b"\0a\0" + b"p" * 256,
        ):
            self.assertRaises(SASLError, Plain().step, bad)

    def test_password_not_in_repr(self) -> None:
        creds = Plain().step(b"\0alice@example.org\0Secret-Two")
        self.assertNotIn("Secret-Two", repr(creds))


class LoginTests(SynchronousTestCase):
    def test_exchange(self) -> None:
        m = Login()
        self.assertEqual(m.step(None), b"Username:")
        self.assertEqual(m.step(b"alice"), b"Password:")
        self.assertEqual(m.step(b"pw"), SASLCredentials(b"alice", b"pw"))

    def test_initial_user_name(self) -> None:
        m = Login()
        self.assertEqual(m.step(b"alice"), b"Password:")
        self.assertEqual(m.step(b"pw").authcid, b"alice")

    def test_empty_fields(self) -> None:
        self.assertRaises(SASLError, Login().step, b"")
        m = Login()
        m.step(b"alice")
        self.assertRaises(SASLError, m.step, b"")
