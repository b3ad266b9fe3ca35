"""DKIM and ARC signing with dkimpy's fields and canonicalisation but OpenSSL's RSA.

dkimpy computes RSA signatures with its own Python arithmetic (``dkim.crypto``: a ``pow`` per
prime), about 9 ms per RSA-2048 signature on the development machine, so an ARC set (two
signatures) costs 15 ms. ``cryptography`` (OpenSSL) makes the same PKCS#1 v1.5 signature
(RFC 8017 8.2; deterministic, so byte for byte the same) in well under a millisecond.

``DKIMSigner`` and ``ARCSigner`` are dkimpy's ``DKIM`` and ``ARC`` with one method replaced:
``gen_header``, which hashes the signed header fields and signs the hash. Ours does the same
steps with dkimpy's own helpers (``fold``, ``hash_headers``, the b= stripping expression) and
signs the digest with OpenSSL; everything else (which fields, tags, folding, the body hash,
the ARC instance logic) stays dkimpy's. Ed25519 and anything else go to dkimpy unchanged.
tests/test_checks_opensslsign.py checks the output is byte-identical to dkimpy's for the same
``t=`` (DKIM and ARC), so a dkimpy release that changes ``gen_header`` is caught there.
"""

from __future__ import annotations

import base64
import functools
from typing import Any

import dkim  # dkimpy ships no type information (pyproject.toml: ignore_missing_imports)
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

_RSA_SHA256 = b"rsa-sha256"


@functools.lru_cache(maxsize=64)
def _rsa_key(pem: bytes) -> rsa.RSAPrivateKey | None:
    """The PEM key as an OpenSSL key (loaded and checked once), None if it is no RSA key
    OpenSSL reads (dkimpy then signs and reports the problem as before)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        return None
    return key if isinstance(key, rsa.RSAPrivateKey) else None


class _OpenSSLRSA:
    """The ``gen_header`` of dkimpy's ``DomainSigner`` (dkimpy 1.1), RSA signed by OpenSSL."""

    _openssl_key: rsa.RSAPrivateKey | None = None
    signature_algorithm: bytes
    hasher: Any
    debug_content: bool
    headers: list[tuple[bytes, bytes]]
    signed_headers: Any

    def _use_key(self, privkey: bytes) -> None:
        self._openssl_key = _rsa_key(bytes(privkey))

    def gen_header(
        self,
        fields: list[tuple[bytes, bytes]],
        include_headers: list[bytes],
        canon_policy: Any,
        header_name: bytes,
        pk: Any,
        standardize: bool = False,
    ) -> bytes:
        key = self._openssl_key
        if key is None or self.signature_algorithm != _RSA_SHA256:
            return super().gen_header(  # type: ignore[misc]
                fields, include_headers, canon_policy, header_name, pk, standardize
            )
        if standardize:
            lower = [(x, y.lower().replace(b" ", b"")) for (x, y) in fields if x != b"bh"]
            reg = [(x, y.replace(b" ", b"")) for (x, y) in fields if x == b"bh"]
            fields = sorted(lower + reg, key=lambda x: x[0])
        # The field with an empty b= is what is hashed (RFC 6376 3.7).
        header_value = b"; ".join(b"=".join(x) for x in fields)
        if not standardize:
            header_value = dkim.fold(header_value, namelen=len(header_name), linesep=b"\r\n")
        header_value = dkim.RE_BTAG.sub(b"\\1", header_value)
        header = (header_name, b" " + header_value)
        h = dkim.HashThrough(self.hasher(), self.debug_content)
        sig = dict(fields)
        headers = canon_policy.canonicalize_headers(self.headers)
        self.signed_headers = dkim.hash_headers(
            h, canon_policy, headers, include_headers, header, sig
        )
        signature = key.sign(h.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        idx = next(i for i in range(len(fields)) if fields[i][0] == b"b")
        fields[idx] = (b"b", base64.b64encode(signature))
        header_value = b"; ".join(b"=".join(x) for x in fields) + b"\r\n"
        if not standardize:
            header_value = dkim.fold(header_value, namelen=len(header_name), linesep=b"\r\n")
        return header_value


class DKIMSigner(_OpenSSLRSA, dkim.DKIM):
    """``dkim.DKIM`` whose RSA signatures are made by OpenSSL (see the module docstring)."""

    def sign(self, selector: bytes, domain: bytes, privkey: bytes, **kwargs: Any) -> bytes:
        self._use_key(privkey)
        try:
            signed: bytes = super().sign(selector, domain, privkey, **kwargs)
            return signed
        finally:
            self._openssl_key = None


class ARCSigner(_OpenSSLRSA, dkim.ARC):
    """``dkim.ARC`` whose RSA signatures are made by OpenSSL (see the module docstring)."""

    def sign(
        self, selector: bytes, domain: bytes, privkey: bytes, *args: Any, **kwargs: Any
    ) -> Any:
        self._use_key(privkey)
        try:
            return super().sign(selector, domain, privkey, *args, **kwargs)
        finally:
            self._openssl_key = None


def arc_sign(
    message: bytes,
    selector: bytes,
    domain: bytes,
    privkey: bytes,
    srv_id: bytes,
    *,
    timestamp: int | None = None,
    linesep: bytes = b"\r\n",
) -> list[bytes]:
    """``dkim.arc_sign`` (rsa-sha256, dkimpy's default header set) with OpenSSL's RSA."""
    signer = ARCSigner(message, signature_algorithm=_RSA_SHA256, linesep=linesep)
    lines: list[bytes] = signer.sign(
        selector,
        domain,
        privkey,
        srv_id,
        include_headers=signer.default_sign_headers(),
        timestamp=timestamp,
    )
    return lines
