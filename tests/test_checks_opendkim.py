"""Cross-check with an independent implementation: Debian's OpenDKIM signs, mailhub's
verify_dkim judges (the keys served by the in-memory CheckResolver). OpenDKIM's test mode
(``opendkim -t``) is driven through tests/support/opendkim.py."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks.dkimverify import SignatureResult, verify_dkim
from tests.support import opendkim
from tests.support.checkdns import MemoryResolver
from tests.support.dkimkeys import message, rsa_key
from tests.support.dkimkeys import sign as dkimpy_sign
from tests.support.tools import requires

RSA_NAME = "odk._domainkey.example.com"
ED_NAME = "oded._domainkey.example.com"


def _ed25519_key() -> tuple[bytes, bytes]:
    """(PEM private key as OpenDKIM reads it, DNS record)."""
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pem, b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)


@requires(opendkim.missing())
class OpenDKIMSigns(SynchronousTestCase):
    def setUp(self) -> None:
        self.work = self.mktemp()
        self.ed_pem, ed_record = _ed25519_key()
        self.dns = MemoryResolver(txt={RSA_NAME: [rsa_key()[1]], ED_NAME: [ed_record]})

    def signed(self, msg: bytes, **kw: str) -> bytes:
        if kw.get("algorithm") == "ed25519-sha256":
            return opendkim.sign(
                self.work, msg, domain="example.com", selector="oded", key_pem=self.ed_pem, **kw
            )
        return opendkim.sign(
            self.work, msg, domain="example.com", selector="odk", key_pem=rsa_key()[0], **kw
        )

    def verify(self, msg: bytes) -> SignatureResult:
        [result] = self.successResultOf(defer.Deferred.fromCoroutine(verify_dkim(self.dns, msg)))
        return result

    def test_rsa_sha256_relaxed_passes(self) -> None:
        r = self.verify(self.signed(message()))
        self.assertEqual((r.result, r.algorithm, r.key_bits), ("pass", "rsa-sha256", 2048))

    def test_rsa_sha256_simple_passes_and_catches_a_refold(self) -> None:
        msg = self.signed(message(), canonicalization="simple/simple")
        self.assertEqual(self.verify(msg).result, "pass")
        self.assertEqual(
            self.verify(msg.replace(b"Subject: lunch", b"Subject:  lunch")).result, "fail"
        )

    def test_ed25519_passes(self) -> None:
        r = self.verify(self.signed(message(), algorithm="ed25519-sha256"))
        self.assertEqual((r.result, r.algorithm, r.key_bits), ("pass", "ed25519-sha256", 256))

    def test_body_changed_fails(self) -> None:
        msg = self.signed(message(body=b"Hello.\r\n\r\nSee you at noon.\r\n"))
        r = self.verify(msg.replace(b"noon", b"nine"))
        self.assertEqual(
            (r.result, r.reason),
            ("fail", "body hash did not verify: the body changed after signing"),
        )

    def test_header_changed_fails(self) -> None:
        msg = self.signed(message())
        r = self.verify(msg.replace(b"Subject: lunch", b"Subject: dinner"))
        self.assertEqual(r.result, "fail")
        self.assertTrue(r.reason.startswith("signature did not verify"))

    def test_rsa_sha1_is_refused_by_rfc_8301(self) -> None:
        r = self.verify(self.signed(message(), algorithm="rsa-sha1"))
        self.assertEqual(r.result, "policy")

    def test_a_long_message(self) -> None:
        body = b"".join(
            b"line %d, with  two spaces and a tab\t\r\n" % i for i in range(1200)
        )  # under INLINE_LIMIT
        self.assertEqual(self.verify(self.signed(message(body=body))).result, "pass")


@requires(opendkim.missing())
class OpenDKIMVerifies(SynchronousTestCase):
    """The other direction's harness (OpenDKIM judging a dkimpy signature), checked here so
    that tests/support/opendkim.verify is known to tell pass from fail."""

    def test_pass_and_fail(self) -> None:
        keys = {"sel._domainkey.example.com": rsa_key()[1]}
        msg = dkimpy_sign(message())
        work = self.mktemp()
        self.assertIn("dkim=pass", opendkim.verify(work, msg, keys))
        self.assertIn("dkim=fail", opendkim.verify(work, msg.replace(b"Hello", b"Hullo"), keys))
