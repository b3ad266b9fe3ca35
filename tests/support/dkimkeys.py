"""Keys and signed messages for the DKIM, DMARC and ARC tests.

Keys are made once per test run (an RSA-2048 key takes a moment) and signed with dkimpy, the
library mailhub uses; the independent cross-check is OpenDKIM (tests/test_checks_opendkim.py).

The RFC 8463 Appendix A example (keys, DNS records and the message signed with both Ed25519 and
RSA) is transcribed from RFC 8463, "A New Cryptographic Signature Method for DomainKeys
Identified Mail (DKIM)", J. Levine, September 2018. Copyright (c) 2018 IETF Trust and the
persons identified as the document authors. All rights reserved. Code components extracted
from IETF documents are available under the Simplified BSD License (IETF Trust Legal Provisions,
section 4.e).
"""

from __future__ import annotations

import base64
import functools

import dkim
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# RFC 8463 A.2: the DNS records of the two keys.
RFC8463_RECORDS = {
    "brisbane._domainkey.football.example.com": (
        b"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
    ),
    "test._domainkey.football.example.com": (
        b"v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWR"
        b"iGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutAC"
        b"DfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3"
        b"Ip3G+2kryOTIKT+l/K4w3QIDAQAB"
    ),
}

# RFC 8463 A.3: the signed message.
RFC8463_MESSAGE = b"\r\n".join(
    [
        b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;",
        b" d=football.example.com; i=@football.example.com;",
        b" q=dns/txt; s=brisbane; t=1528637909; h=from : to :",
        b" subject : date : message-id : from : subject : date;",
        b" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;",
        b" b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus",
        b" Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==",
        b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;",
        b" d=football.example.com; i=@football.example.com;",
        b" q=dns/txt; s=test; t=1528637909; h=from : to : subject :",
        b" date : message-id : from : subject : date;",
        b" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;",
        b" b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3",
        b" DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz",
        b" dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=",
        b"From: Joe SixPack <joe@football.example.com>",
        b"To: Suzie Q <suzie@shopping.example.net>",
        b"Subject: Is dinner ready?",
        b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)",
        b"Message-ID: <20030712040037.46341.5F8J@football.example.com>",
        b"",
        b"Hi.",
        b"",
        b"We lost the game.  Are you hungry yet?",
        b"",
        b"Joe.",
        b"",
    ]
)


def message(
    from_: bytes = b"Alice <alice@example.com>",
    body: bytes = b"Hello.\r\n",
    extra: bytes = b"",
) -> bytes:
    return (
        b"From: " + from_ + b"\r\n"
        b"To: bob@example.net\r\n"
        b"Subject: lunch\r\n"
        b"Date: Mon, 01 Jan 2024 12:00:00 +0000\r\n"
        b"Message-ID: <m1@example.com>\r\n" + extra + b"\r\n" + body
    )


@functools.cache
def rsa_key(bits: int = 2048) -> tuple[bytes, bytes]:
    """(private key PEM, the DNS record) of an RSA key made once per run."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


@functools.cache
def ed25519_key() -> tuple[bytes, bytes]:
    """(private seed in base64 as dkimpy takes it, the DNS record)."""
    key = nacl.signing.SigningKey.generate()
    public = base64.b64encode(bytes(key.verify_key))
    return base64.b64encode(bytes(key)), b"v=DKIM1; k=ed25519; p=" + public


def rsa_public_record(modulus: int, exponent: int = 65537) -> bytes:
    """A key record for an RSA public key of any size (no private key needed: the checks of
    its size come before any cryptography)."""
    der = (
        rsa.RSAPublicNumbers(exponent, modulus)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def sign(
    msg: bytes,
    domain: bytes = b"example.com",
    selector: bytes = b"sel",
    algorithm: bytes = b"rsa-sha256",
    **kwargs: object,
) -> bytes:
    """``msg`` with a dkimpy signature on top."""
    key = ed25519_key()[0] if algorithm == b"ed25519-sha256" else rsa_key()[0]
    header = dkim.sign(msg, selector, domain, key, signature_algorithm=algorithm, **kwargs)
    return bytes(header) + msg
