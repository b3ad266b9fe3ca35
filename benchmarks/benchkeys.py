"""The DKIM keys the benchmarks sign with: one RSA-2048 and one Ed25519, made afresh each run,
in the forms dkimpy's ``dkim.sign`` takes and as their DNS records (RFC 6376 3.6.1, RFC 8463)."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailhub.checks.keys import ED25519_SHA256, RSA_SHA256, dns_record


@dataclass(frozen=True)
class BenchKeys:
    rsa_pem: bytes  # PKCS#8 PEM
    rsa_record: str
    ed_seed: bytes  # the 32-octet seed, base64-encoded
    ed_record: str


def make_keys() -> BenchKeys:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ed = nacl.signing.SigningKey.generate()
    return BenchKeys(
        rsa_pem=pem,
        rsa_record=dns_record(RSA_SHA256, spki),
        ed_seed=base64.b64encode(bytes(ed)),
        ed_record=dns_record(ED25519_SHA256, bytes(ed.verify_key)),
    )
