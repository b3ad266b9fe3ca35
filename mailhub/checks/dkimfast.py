"""Our own check of a DKIM signature (RFC 6376 3.4, 3.7, 6.1.3; RFC 8463 3), beside dkimpy's.

By the time a signature gets here, ``dkimverify`` has read it and its key record (tags, algorithm,
``h=`` with From, times, key type and size, each refusal with its reason); what remains is to hash
and check. dkimpy's ``DKIM.verify`` (``opensslverify.Verifier``) does that with its own tag parse
and checks again, every header field canonicalised, and ``hash_headers``: about 0.2 ms of Python
per signature around the cryptography. Here, the same steps once, for the common case:

- only the fields named in ``h=`` canonicalised (RFC 6376 3.4.1/3.4.2, byte for byte as dkimpy),
  the signature field with its ``b=`` emptied last and without its line end (3.7), one
  ``hashlib`` SHA-256 over them all;
- the body hash shared per message (``opensslverify.ParsedMessage.body_hash``: one per body
  canonicalisation and ``l=``, also used by ARC);
- the key object made once per key record (``opensslverify.public_key``, cached by the record's
  text): RSA checked by OpenSSL through ``cryptography``, Ed25519 by PyNaCl (libsodium), as
  ``opensslverify`` and dkimpy do.

``usable`` says whether a signature and key record are in that common case: values that dkimpy
reads exactly as we do (``a=``, ``c=``, ``q=``, ``k=``, the key's ``s=`` in their plain forms,
``i=`` inside ``d=`` as dkimpy tests it, ``t=``/``x=`` within dkimpy's own limits). Anything else
(upper-case ``c=``, a key with ``s=email:tlsrpt``, a ``d=`` with a trailing dot...) goes the dkimpy
way, which stays the reference: tests/test_checks_dkimfast.py compares the two paths' results on
generated, signed and mutated messages, with the same pass, fail and reason.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import time

import dkim  # dkimpy ships no type information (pyproject.toml: ignore_missing_imports)
import nacl.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, utils
from dkim.canonicalization import Relaxed, Simple  # type: ignore[import-untyped]

from mailhub.checks import opensslverify
from mailhub.checks.opensslverify import ParsedMessage

_WSP_RUN = re.compile(rb"[\t ]+")  # RFC 6376 3.4.2: runs of WSP become one SP
_H_SPLIT = re.compile(rb"\s*:\s*")  # dkimpy's split of h=
_ALGORITHMS = (b"rsa-sha256", b"ed25519-sha256")
# c= as dkimpy's CanonicalizationPolicy reads it (case-sensitive; the body's default simple)
_POLICIES = {
    b"simple": (Simple, Simple),
    b"relaxed": (Relaxed, Simple),
    b"simple/simple": (Simple, Simple),
    b"simple/relaxed": (Simple, Relaxed),
    b"relaxed/simple": (Relaxed, Simple),
    b"relaxed/relaxed": (Relaxed, Relaxed),
}
_SLOP = 36000  # dkimpy's leeway (seconds) for t= in the future and x= in the past
_PKCS1 = padding.PKCS1v15()
_SHA256 = utils.Prehashed(hashes.SHA256())
# The same function object as dkimpy's, so that DKIM and ARC share the cached body hashes.
_SHA256_HASHER = dkim.crypto.HASH_ALGORITHMS[b"rsa-sha256"]


class BodyHashMismatch(dkim.ValidationError):
    """RFC 6376 6.1.3 step 2: the body hash is not ``bh=`` (words as dkimpy's)."""


def usable(tags: dict[str, bytes], key: dict[str, bytes]) -> bool:
    """Whether dkimpy would read this signature (``tags``, as ``dkimverify.parse_tags`` gave
    them, already accepted by dkimverify) and key record (``key``, likewise) as we do, so that
    ``verify`` gives its answer."""
    if tags.get("a") not in _ALGORITHMS or tags.get("c", b"simple") not in _POLICIES:
        return False
    if tags.get("q", b"dns/txt") != b"dns/txt":
        return False
    # d= and i= have no white space here (dkimverify refused it), so no folding either
    domain = tags["d"]
    identity = tags.get("i")
    if identity is not None:
        # dkimpy's own test of i= (validate_signature_fields), on the values as written:
        # d=example.com. (a trailing dot) with i=@example.com is refused there
        if len(identity) <= len(domain) or not identity.lower().endswith(domain.lower()):
            return False
        if identity[-len(domain) - 1] not in b"@.":
            return False
    now = int(time.time())  # dkimpy's clock, not the caller's
    if "t" in tags and int(tags["t"]) > now + _SLOP:
        return False
    if "x" in tags and int(tags["x"]) < now - _SLOP:
        return False
    if key.get("k", b"rsa") not in (b"rsa", b"ed25519"):
        return False
    return key.get("s", b"*") in (b"*", b"email")


def verify(
    parsed: ParsedMessage,
    field: tuple[bytes, bytes],
    tags: dict[str, bytes],
    record: bytes,
    signature: bytes,
    body_hash: bytes,
) -> bool:
    """RFC 6376 6.1.3: whether the DKIM-Signature ``field`` (its name and raw value, one of
    ``parsed``'s header fields; ``tags`` its tags, ``signature`` and ``body_hash`` its b= and
    bh= decoded) verifies with the key ``record``. Raises ``BodyHashMismatch`` when the body
    changed; a signature of the wrong length for Ed25519 raises PyNaCl's ValueError, as in
    dkimpy. Only for what ``usable`` accepts."""
    header_algorithm, body_algorithm = _POLICIES[tags.get("c", b"simple")]
    length = int(tags["l"]) if "l" in tags else None
    got = parsed.body_hash(body_algorithm, length, _SHA256_HASHER)
    if got != body_hash:
        raise BodyHashMismatch(
            f"body hash mismatch (got {base64.b64encode(got)!r}, expected {tags['bh']!r})"
        )
    hashed = hashlib.sha256()
    opensslverify.update(hashed, header_data(parsed, field, tags["h"], header_algorithm))
    digest = hashed.digest()
    try:
        key = opensslverify.public_key(record)
    except (dkim.KeyFormatError, binascii.Error):
        return False  # as dkimpy's verify_sig: a key it cannot read makes the signature fail
    if key.ktag == b"ed25519":
        try:
            key.pk.verify(digest, signature)
        except nacl.exceptions.BadSignatureError:
            return False
        return True
    if key.openssl is None:  # never: dkimverify refuses RSA numbers OpenSSL does not take
        raise dkim.KeyFormatError("RSA public key not usable (OpenSSL refuses its numbers)")
    try:
        key.openssl.verify(signature, digest, _PKCS1, _SHA256)
    except InvalidSignature:
        return False
    return True


def header_data(
    parsed: ParsedMessage, field: tuple[bytes, bytes], h: bytes, algorithm: object
) -> bytes:
    """RFC 6376 3.7: the canonicalised header fields named in ``h`` (the last instance first,
    as 5.4.2; a name listed more often than it occurs adds nothing), then the signature field
    with ``b=`` emptied and without its final line end, as dkimpy's ``hash_headers``."""
    names = _signed_names(h)
    headers = parsed.headers
    lowered = parsed.lowered_names()
    chosen: list[tuple[bytes, bytes]] = []
    last: dict[bytes, int] = {}
    for name in names:
        i = last.get(name, len(headers))
        while i > 0:
            i -= 1
            if lowered[i] == name:
                chosen.append(headers[i])
                break
        last[name] = i
    empty_b = opensslverify.empty_b(field[1])
    if algorithm is Relaxed and parsed.plain_space:
        # RFC 6376 3.4.2 when the only white space is SP, HTAB and folding CRLF (followed by
        # WSP): unfolding, one SP per run and none at the ends are the words joined by SP.
        parts = [n.lower() + b":" + b" ".join(v.split()) + b"\r\n" for n, v in chosen]
        parts.append(field[0].lower() + b":" + b" ".join(empty_b.split()))
    elif algorithm is Relaxed:
        parts = [n.lower() + b":" + _relaxed(v) + b"\r\n" for n, v in chosen]
        parts.append(field[0].lower() + b":" + _relaxed(empty_b))
    else:
        parts = [n + b":" + v for n, v in chosen]
        parts.append(field[0] + b":" + empty_b.rstrip())
    return b"".join(parts)


@functools.lru_cache(maxsize=256)  # by h=: a signer's list rarely changes
def _signed_names(h: bytes) -> tuple[bytes, ...]:
    """The field names ``h`` lists, in lower case, in order."""
    names = [n.lower() for n in _H_SPLIT.split(h)]
    if b"from" in names:
        # As dkimpy (its bug 644046): a From field not counted in h= is hashed too, so a
        # second From added on top of a signed message breaks the signature.
        names.append(b"from")
    return tuple(names)


def _relaxed(value: bytes) -> bytes:
    """RFC 6376 3.4.2 for a field value: unfolded, WSP runs as one SP, none at either end
    (dkimpy's steps: line ends removed, [\\t ]+ to SP, then every white space stripped)."""
    return _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip()


__all__ = ["BodyHashMismatch", "header_data", "usable", "verify"]
