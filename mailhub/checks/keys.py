"""DKIM signing keys (RFC 6376 3.6, RFC 8463): which keys sign for which domain.

``SigningKey`` is one selector's private key. Keys live as files (mode 0600) made by
``mailhub dkim keygen``; the store of them is built here too.
"""

from __future__ import annotations

from dataclasses import dataclass

RSA_SHA256 = "rsa-sha256"
ED25519_SHA256 = "ed25519-sha256"


@dataclass(frozen=True)
class SigningKey:
    """One selector's private key for one domain: signs DKIM-Signature and ARC headers."""

    domain: str  # the d= domain (A-labels, lower case)
    selector: str  # the s= selector
    algorithm: str  # RSA_SHA256 or ED25519_SHA256
    private_key: bytes  # PEM (PKCS#8) for RSA; for Ed25519 as dkimpy takes it (base64 seed)
