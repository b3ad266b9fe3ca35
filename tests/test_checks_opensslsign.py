"""checks.opensslsign: dkimpy's DKIM and ARC signing with OpenSSL's RSA gives byte for byte what
dkimpy alone gives (PKCS#1 v1.5 signatures are deterministic), and dkimpy verifies it."""

from __future__ import annotations

import base64
from unittest import mock

import dkim
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks import arc, opensslsign, signing
from mailhub.checks.keys import ED25519_SHA256, RSA_SHA256, SigningKey
from mailhub.checks.results import AuthenticationResults, MethodResult

T = 1_765_000_000  # a fixed t= so both sides sign the same header


def rsa_pem(bits: int = 2048) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


PEM = rsa_pem()
MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: the same  bytes,\r\n\tfolded\r\n"
    b"Date: Mon, 07 Dec 2026 00:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"\r\n" + b"A line of the body with  two spaces\r\n" * 40 + b"\r\n\r\n"
)


def fixed_time() -> mock._patch[mock.MagicMock]:
    return mock.patch.object(dkim.time, "time", return_value=float(T))


def dkim_txt(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki)


class DKIMTests(SynchronousTestCase):
    def test_byte_identical_to_dkimpy(self) -> None:
        for canon in ((b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple")):
            options = {"canonicalize": canon, "include_headers": [b"from", b"subject", b"from"]}
            with fixed_time():
                ours = opensslsign.DKIMSigner(MESSAGE).sign(b"sel", b"example.com", PEM, **options)
                theirs = dkim.DKIM(MESSAGE).sign(b"sel", b"example.com", PEM, **options)
            self.assertEqual(ours, theirs, canon)
            self.assertIn(b"t=%d" % T, ours)

    def test_sign_is_dkimpys_output(self) -> None:
        """mailhub's sign() (recommended fields, From oversigned) equals dkimpy's."""
        key = SigningKey("example.com", "sel", RSA_SHA256, PEM)
        with fixed_time():
            ours = signing.sign(MESSAGE, [key])
            signer = dkim.DKIM(MESSAGE, linesep=b"\r\n")
            theirs = signer.sign(
                b"sel",
                b"example.com",
                PEM,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=signing.signed_fields(signer.headers),
            )
        self.assertEqual(ours, theirs)

    def test_dkimpy_verifies_it(self) -> None:
        key = SigningKey("example.com", "sel", RSA_SHA256, PEM)
        signed = signing.sign(MESSAGE, [key]) + MESSAGE
        record = dkim_txt(PEM)

        def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
            self.assertEqual(name, b"sel._domainkey.example.com.")
            return record

        self.assertTrue(dkim.verify(signed, dnsfunc=dnsfunc))
        self.assertFalse(dkim.verify(signed.replace(b"two spaces", b"2 spaces"), dnsfunc=dnsfunc))

    def test_ed25519_and_dual_signing_unchanged(self) -> None:
        seed = base64.b64encode(bytes(nacl.signing.SigningKey.generate()))
        keys = [
            SigningKey("example.com", "rsa", RSA_SHA256, PEM),
            SigningKey("example.com", "ed", ED25519_SHA256, seed),
        ]
        with fixed_time():
            ours = signing.sign(MESSAGE, keys)
            signer = dkim.DKIM(MESSAGE, linesep=b"\r\n")
            fields = signing.signed_fields(signer.headers)
            theirs = b"".join(
                signer.sign(
                    k.selector.encode(),
                    b"example.com",
                    k.private_key,
                    signature_algorithm=k.algorithm.encode(),
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=fields,
                )
                for k in keys
            )
        self.assertEqual(ours, theirs)

    def test_key_not_for_openssl_goes_to_dkimpy(self) -> None:
        """A key OpenSSL does not take as RSA: dkimpy decides, as before (an error here)."""
        ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for pem in (b"not a key", ec_pem):
            self.assertIsNone(opensslsign._rsa_key(pem))
            with self.assertRaises(signing.SigningError):
                signing.sign(MESSAGE, [SigningKey("example.com", "sel", RSA_SHA256, pem)])

    def test_dkimpys_rsa_not_used(self) -> None:
        python_rsa = mock.patch.object(dkim, "RSASSA_PKCS1_v1_5_sign", side_effect=AssertionError)
        key = SigningKey("example.com", "sel", RSA_SHA256, PEM)
        with python_rsa as called:
            signing.sign(MESSAGE, [key])
            arc.arc_seal(MESSAGE, key, "mx.example.com", AuthenticationResults("mx.example.com"))
        self.assertEqual(called.call_count, 0)

    def test_key_loaded_once(self) -> None:
        self.assertIs(opensslsign._rsa_key(PEM), opensslsign._rsa_key(PEM))

    def test_signer_forgets_the_key(self) -> None:
        signer = opensslsign.DKIMSigner(MESSAGE)
        signer.sign(b"sel", b"example.com", PEM)
        self.assertIsNone(signer._openssl_key)


class ARCTests(SynchronousTestCase):
    def test_seal_byte_identical_to_dkimpy(self) -> None:
        results = AuthenticationResults(
            "mx.forwarder.example",
            (MethodResult("spf", "pass", "", (("smtp.mailfrom", "alice@example.com"),)),),
        )
        key = SigningKey("forwarder.example", "arc", RSA_SHA256, PEM)
        ours = arc.arc_seal(MESSAGE, key, "mx.forwarder.example", results, timestamp=T)
        body = results.header() + MESSAGE
        theirs = b"".join(
            dkim.arc_sign(
                body, b"arc", b"forwarder.example", PEM, b"mx.forwarder.example", timestamp=T
            )
        )
        self.assertEqual(ours, theirs)
        self.assertIn(b"ARC-Seal: i=1;", ours)
