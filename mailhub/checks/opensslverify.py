"""DKIM and ARC verification with dkimpy's logic but OpenSSL's RSA and shared work per message.

dkimpy checks an RSA signature with its own Python arithmetic (``int2str`` and ``pow``), hashes
the canonicalised body once per signature (twice for a message signed with RSA and Ed25519 under
the same ``c=``), parses the message in each ``DKIM``/``ARC`` object and each key's ASN.1 per
signature. Here:

- ``Verifier`` and ``ARCVerifier`` are dkimpy's ``DKIM`` and ``ARC`` with two methods replaced:
  ``verify_sig`` (the key is read from a record-text cache instead of being parsed again) and
  ``verify_sig_process`` (the same steps as dkimpy 1.1's, composed of dkimpy's public pieces:
  ``CanonicalizationPolicy``, ``hash_headers``, ``HASH_ALGORITHMS``; the RSA check by OpenSSL,
  Ed25519 by PyNaCl as in dkimpy). Everything else (which field ``idx`` names, the tag checks of
  ``validate_signature_fields``, the ARC instance logic) stays dkimpy's.
- ``parse`` reads a message once (``dkim.rfc822_parse``, as dkimpy) into a ``ParsedMessage``
  that keeps each canonicalised header list and body, and one body hash per (body
  canonicalisation, ``l=``, hash), shared by every DKIM signature and ARC-Message-Signature of
  the message. Small messages are kept in a small LRU keyed by their bytes, so DKIM and ARC
  share one parse.

One deliberate difference from dkimpy: OpenSSL follows RFC 8017 8.2.2 step 1 and refuses an RSA
signature whose length is not the modulus length (dkimpy converts b= to an integer and accepts
one with extra leading zero octets, or missing ones); so does OpenDKIM. RSA public numbers that
OpenSSL refuses (an even modulus or exponent, e >= n) make the key unusable. tests/
test_checks_opensslverify.py compares the results with dkimpy's own ``verify`` on generated
messages and shows that dkimpy's Python RSA is never called.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dkim  # dkimpy ships no type information (pyproject.toml: ignore_missing_imports)
import nacl.exceptions
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.canonicalization import (  # type: ignore[import-untyped]
    CanonicalizationPolicy,
    InvalidCanonicalizationPolicyError,
    Relaxed,
    correct_empty_body,
    strip_trailing_lines,
)
from dkim.crypto import HASH_ALGORITHMS  # type: ignore[import-untyped]

CACHED_MESSAGE = 64 * 1024  # octets; bigger messages are parsed per use, not kept
_WSP = re.compile(rb"\s+")
# dkimpy's RE_BTAG is  ([;\s]b FWS =)(?: FWS [a-zA-Z0-9+/=])* (?:\r?\n\Z)?  with FWS =
# (?:(?:\s*\r?\n)?\s+)? , which matches exactly the runs \s* (possibly empty): so the same
# strings are matched, the same way, by this one without nested optional groups per character
# (its backtracking made RE_BTAG cost ~120 us on a 2048-bit b=). The [;\s] before b is
# looked behind from the b instead of matched: the expression then starts with a literal,
# which re finds by a fast search rather than trying a character class at every position
# (~3x faster), and as no match ends in [;\s] the same matches are found (the character stays
# in place instead of being put back by the replacement). tests/
# test_checks_opensslverify.py compares the two on generated values.
_B_VALUE = re.compile(rb"(b(?<=[;\s]b)\s*=)(?:[\sa-zA-Z0-9+/=]*[a-zA-Z0-9+/=])?(?:\r?\n\Z)?")
_PREHASHED = {"sha256": utils.Prehashed(hashes.SHA256()), "sha1": utils.Prehashed(hashes.SHA1())}
# RFC 8017 9.2 note 1: the DER DigestInfo before the digest (octets); EMSA-PKCS1-v1_5 needs 11
# more octets of padding, so a shorter modulus cannot carry the digest.
_DIGEST_INFO_PREFIX = {"sha256": 19, "sha1": 15}


@dataclass(eq=False)
class ParsedMessage:
    """A message as dkimpy reads it, with the canonicalisation work kept for reuse."""

    headers: list[tuple[bytes, bytes]]
    body: bytes
    _headers: dict[Any, list[tuple[bytes, bytes]]] = field(default_factory=dict)
    _bodies: dict[Any, bytes] = field(default_factory=dict)
    _body_hashes: dict[tuple[Any, int | None, Any], bytes] = field(default_factory=dict)
    _lowered: list[bytes] | None = None
    # No VT, FF or CR outside CRLF in the header section: each value's relaxed form is then
    # its white-space-separated words joined by one SP (dkimfast).
    plain_space: bool = False

    def lowered_names(self) -> list[bytes]:
        """The header field names in lower case, in order (``dkimfast``'s h= lookups)."""
        if self._lowered is None:
            self._lowered = [name.lower() for name, _ in self.headers]
        return self._lowered

    def canonical_headers(self, algorithm: Any) -> list[tuple[bytes, bytes]]:
        """The header fields under ``algorithm`` (dkimpy's Simple or Relaxed class)."""
        canonical = self._headers.get(algorithm)
        if canonical is None:
            canonical = self._headers[algorithm] = algorithm.canonicalize_headers(self.headers)
        return canonical

    def body_hash(self, algorithm: Any, length: int | None, hasher: Callable[[], Any]) -> bytes:
        """RFC 6376 3.7: the hash of the canonicalised body, cut to ``l=`` octets if given."""
        key = (algorithm, length, hasher)
        digest = self._body_hashes.get(key)
        if digest is None:
            body = self._bodies.get(algorithm)
            if body is None:
                body = self._bodies[algorithm] = _canonical_body(algorithm, self.body)
            h = hasher()
            update(h, body if length is None else body[:length])
            digest = self._body_hashes[key] = h.digest()
        return digest


# hashlib releases the GIL to hash 2,048 octets or more in one update (and from then on for
# every update of that object). On the reactor each release is a wait to get the GIL back
# from the store's threads, which under load costs far more than the hash (a 4 KiB body: ~3
# us of CPU, 60-150 us of the reactor's time): so data up to HOLD_GIL_UP_TO octets is hashed
# in pieces under that size, holding the GIL; bigger data (hashed in a thread) in one update.
HASH_PIECE = 2047
HOLD_GIL_UP_TO = 64 * 1024


def update(h: Any, data: bytes) -> None:
    """``h.update(data)``, without releasing the GIL for data up to ``HOLD_GIL_UP_TO``."""
    size = len(data)
    if size < HASH_PIECE or size > HOLD_GIL_UP_TO:
        h.update(data)
        return
    view = memoryview(data)
    for start in range(0, size, HASH_PIECE):
        h.update(view[start : start + HASH_PIECE])


def _canonical_body(algorithm: Any, body: bytes) -> bytes:
    """``algorithm.canonicalize_body(body)``. RFC 6376 3.4.4's relaxed rules only change
    a body with a tab, two spaces in a row or a space before a line end; without any (most
    bodies) its two regular expressions (~90 us for 4 KiB) are skipped and only the empty
    lines at the end are handled, by dkimpy's own functions."""
    if algorithm is Relaxed and b"\t" not in body and b"  " not in body and b" \r\n" not in body:
        return correct_empty_body(strip_trailing_lines(body))
    canonical: bytes = algorithm.canonicalize_body(body)
    return canonical


def parse(message: bytes) -> ParsedMessage:
    """``message`` read once, as ``dkim.DKIM(message)`` reads it. Raises what dkimpy's parser
    raises for a header it cannot read (``dkim.MessageFormatError``, or IndexError)."""
    if len(message) > CACHED_MESSAGE:
        return _parse(message)
    return _parse_cached(message)


def parse_uncached(message: bytes) -> ParsedMessage:
    """``parse`` without its cache: a new ``ParsedMessage`` (for a caller that hands it on)."""
    return _parse(message)


def _parse(message: bytes) -> ParsedMessage:
    head, rest = _split(message)
    headers = header_lines(head)
    # dkimpy's body is the lines after the empty line joined with CRLF: the octets themselves
    # when every LF already follows a CR (almost all mail); else the same split and join.
    if only_crlf(rest):
        body = rest
    else:
        body = b"\r\n".join(_LINE_END.split(rest))
    plain = b"\x0b" not in head and b"\x0c" not in head and no_bare_cr(head)
    return ParsedMessage(headers, bytes(body), plain_space=plain)


# An LF not after a CR; a CR not before an LF. A search for either (a literal first: re looks
# for it as str.find would) takes a third of the time of counting LF and CRLF to compare them
# (bytes.count of a 2-octet needle: ~4 us for a 3 KiB body).
_BARE_LF = re.compile(rb"\n(?<!\r\n)")
_BARE_CR = re.compile(rb"\r(?!\n)")


def only_crlf(data: bytes) -> bool:
    """Whether every LF in ``data`` follows a CR (as many LF as CRLF)."""
    return _BARE_LF.search(data) is None


def no_bare_cr(data: bytes) -> bool:
    """Whether every CR in ``data`` is followed by an LF (as many CR as CRLF)."""
    return _BARE_CR.search(data) is None


_LINE_END = re.compile(rb"\r?\n")  # dkimpy's line separator (rfc822_parse)
_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")  # rfc822_parse's field name


def header_lines(head: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields of ``head`` (header lines with their line ends, up to the empty line)
    exactly as ``dkim.rfc822_parse`` reads them (each value with its folds and a final CRLF;
    a "From " line skipped), and raising as it does: ``dkim.MessageFormatError`` for a line
    that is no field, IndexError for a continuation before any field. The same loop over the
    lines, without its per-line regular expression compile and the body's split and join."""
    if only_crlf(head):
        fields_at_once = _crlf_fields(head)
        if fields_at_once is not None:
            return fields_at_once
        lines = head.split(b"\r\n")  # CRLF line ends only (almost all mail)
    else:
        lines = _LINE_END.split(head)
    fields: list[list[bytes]] = []
    match = _FIELD_NAME.match
    for line in lines:
        if not line:
            break  # the end of the header section (the split's last, empty piece)
        if line[0] in (9, 32):
            fields[-1][1] += line + b"\r\n"
            continue
        m = match(line)
        if m is not None:
            fields.append([m.group(1), line[m.end() :] + b"\r\n"])
        elif not line.startswith(b"From "):
            raise dkim.MessageFormatError(f"Unexpected characters in RFC822 header: {line!r}")
    return [(name, value) for name, value in fields]


_FIELD_START = re.compile(rb"\r\n(?![ \t])")  # a line end not followed by a fold
_NAME_ONLY = re.compile(rb"[\x21-\x39\x3b-\x7e]+")  # rfc822_parse's name, without its ":"


def _crlf_fields(head: bytes) -> list[tuple[bytes, bytes]] | None:
    """``header_lines`` for a header section with CRLF line ends only, ending in CRLF, in one
    split at the line ends not followed by a fold: each field's value is its text after the
    first ":" with its folds, plus CRLF, as rfc822_parse joins it line by line. None (the
    line loop decides) where rfc822_parse would raise or skip a line: a fold first, no ":",
    or a name before the first ":" with anything but printable ASCII (a "From " line that
    it skips has its space there; the colon may be on a folded line)."""
    if not head.endswith(b"\r\n") or head[:1] in (b" ", b"\t"):
        return None
    fields = []
    name_only = _NAME_ONLY.fullmatch
    for text in _FIELD_START.split(head[:-2]):
        name, colon, value = text.partition(b":")
        if not colon or name_only(name) is None:
            return None
        fields.append((name, value + b"\r\n"))
    return fields


def empty_b(value: bytes) -> bytes:
    """A signature field's value with its b= emptied (RFC 6376 3.7), as dkimpy's RE_BTAG does."""
    return _B_VALUE.sub(_tag_only, value)


def _tag_only(match: re.Match[bytes]) -> bytes:
    # a function, not the template b"\\1": re would expand the template in Python each time
    return match.group(1)


_EMPTY_LINE = re.compile(rb"\n\r?\n")


def _split(message: bytes) -> tuple[bytes, bytes]:
    """(the header lines with their line ends, what follows the first empty line), where
    dkimpy's ``rfc822_parse`` sees the empty line (lines split at CRLF or LF)."""
    for start in (b"\r\n", b"\n"):
        if message.startswith(start):
            return b"", message[len(start) :]
    m = _EMPTY_LINE.search(message)
    if m is None:
        return message, b""
    return message[: m.start() + 1], message[m.end() :]


_parse_cached = functools.lru_cache(maxsize=16)(_parse)


@dataclass(frozen=True)
class PublicKey:
    """dkimpy's reading of a key record (``evaluate_pk``) plus the OpenSSL key for RSA."""

    pk: Any  # dkimpy's: a dict of modulus/publicExponent (RSA) or a nacl VerifyKey
    keysize: int | None
    ktag: bytes | None
    seqtlsrpt: bool
    openssl: rsa.RSAPublicKey | None


@functools.lru_cache(maxsize=256)
def _read_record(record: bytes) -> PublicKey | tuple[type[BaseException], tuple[Any, ...]]:
    """The record read by dkimpy, once per record text; an error kept as its class and args
    (raised anew each time, so no traceback grows on a cached exception object)."""
    try:
        pk, keysize, ktag, seqtlsrpt = dkim.evaluate_pk(b"", record)
    except (dkim.KeyFormatError, binascii.Error) as e:
        return type(e), e.args
    openssl = None
    if ktag == b"rsa":
        try:
            numbers = rsa.RSAPublicNumbers(int(pk["publicExponent"]), int(pk["modulus"]))
            openssl = numbers.public_key()
        except (ValueError, UnsupportedAlgorithm, TypeError, KeyError):
            openssl = None
    return PublicKey(pk, keysize, ktag, bool(seqtlsrpt), openssl)


def public_key(record: bytes) -> PublicKey:
    """The key in ``record`` (cached by its text). Raises as dkimpy's ``evaluate_pk``."""
    read = _read_record(bytes(record))
    if isinstance(read, PublicKey):
        return read
    kind, args = read
    raise kind(*args)


def rsa_usable(modulus: int, exponent: int) -> bool:
    """Whether OpenSSL takes these as an RSA public key (dkimverify refuses the key if not)."""
    try:
        rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except (ValueError, UnsupportedAlgorithm):
        return False
    return True


@functools.lru_cache(maxsize=16)
def _policy(c: bytes) -> Any:
    return CanonicalizationPolicy.from_c_value(c)


class _FastVerify:
    """The verification half of dkimpy's ``DomainSigner`` (dkimpy 1.1.8), replaced."""

    # set by dkimpy's DomainSigner
    headers: list[tuple[bytes, bytes]]
    body: bytes
    timeout: float
    tlsrpt: Any
    minkey: int
    pk: Any
    keysize: Any
    ktag: Any
    seqtlsrpt: bool
    signed_headers: Any
    _parsed: ParsedMessage
    _openssl: rsa.RSAPublicKey | None = None

    def _use(self, parsed: ParsedMessage) -> None:
        self._parsed = parsed
        self.headers = parsed.headers
        self.body = parsed.body

    def verify_sig(
        self,
        sig: dict[bytes, bytes],
        include_headers: list[bytes],
        sig_header: tuple[bytes, bytes],
        dnsfunc: Callable[..., bytes],
    ) -> bool:
        # As dkimpy: the key's problems make the signature invalid (False), not an exception.
        name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
        try:
            key = public_key(dnsfunc(name, timeout=self.timeout))
        except (dkim.KeyFormatError, binascii.Error, dkim.DnsTimeoutError):
            return False
        self.pk, self.keysize, self.ktag, self.seqtlsrpt = (
            key.pk,
            key.keysize,
            key.ktag,
            key.seqtlsrpt,
        )
        self._openssl = key.openssl
        return self.verify_sig_process(sig, include_headers, sig_header, dnsfunc)

    def verify_sig_process(
        self,
        sig: dict[bytes, bytes],
        include_headers: list[bytes],
        sig_header: tuple[bytes, bytes],
        dnsfunc: Callable[..., bytes],
    ) -> bool:
        # RFC 8460 4.3 (TLS reports) as dkimpy: a tlsrpt key signs only TLS reports.
        if self.tlsrpt == "strict" and not self.seqtlsrpt:
            raise dkim.ValidationError("Message is tlsrpt and Service Type is not tlsrpt")
        if not self.tlsrpt and self.seqtlsrpt:
            raise dkim.ValidationError("Message is not tlsrpt and Service Type is tlsrpt")
        try:
            policy = _policy(sig.get(b"c", b"simple/simple"))
        except InvalidCanonicalizationPolicyError as e:
            raise dkim.MessageFormatError(f"invalid c= value: {e.args[0]}") from None
        hasher = HASH_ALGORITHMS[sig[b"a"]]
        if b"bh" in sig:  # RFC 6376 6.1.3 step 1-2: the body hash, shared per message
            length = int(sig[b"l"]) if b"l" in sig and not self.tlsrpt else None
            got = self._parsed.body_hash(policy.body_algorithm, length, hasher)
            expected = base64.b64decode(_WSP.sub(b"", sig[b"bh"]))
            if got != expected:
                raise dkim.ValidationError(
                    f"body hash mismatch (got {base64.b64encode(got)!r}, expected {sig[b'bh']!r})"
                )
        # dkimpy (its bug 644046): any extra From field is hashed too, so a second From added
        # on top of a signed message breaks the signature.
        if b"from" in include_headers:
            include_headers.append(b"from")
        h = hasher()
        headers = self._parsed.canonical_headers(policy.header_algorithm)
        # b= emptied first by an equivalent expression that is ~10x faster on a long b=
        # (RFC 6376 3.7); dkimpy's own RE_BTAG then has nothing left to remove.
        sig_header = (sig_header[0], empty_b(sig_header[1]))
        self.signed_headers = dkim.hash_headers(
            h, policy, headers, include_headers, sig_header, sig
        )
        signature = base64.b64decode(_WSP.sub(b"", sig[b"b"]))
        if self.ktag == b"rsa":
            return self._verify_rsa(h, signature)
        if self.ktag == b"ed25519":
            try:
                self.pk.verify(h.digest(), signature)
            except nacl.exceptions.BadSignatureError:
                return False
            return True
        raise dkim.UnknownKeyTypeError(self.ktag)

    def _verify_rsa(self, h: Any, signature: bytes) -> bool:
        key = self._openssl
        if key is None:
            raise dkim.KeyFormatError("RSA public key not usable (OpenSSL refuses its numbers)")
        name = h.name.lower()
        prehashed = _PREHASHED.get(name)
        if prehashed is None:
            raise dkim.KeyFormatError(f"unsupported hash {h.name}")
        # RFC 8017 9.2 step 3: the encoded digest must fit the modulus (dkimpy's
        # DigestTooLargeError, reported as a key problem there too).
        if _DIGEST_INFO_PREFIX[name] + h.digest_size + 11 > (key.key_size + 7) // 8:
            raise dkim.KeyFormatError("digest too large for modulus")
        try:
            key.verify(signature, h.digest(), padding.PKCS1v15(), prehashed)
        except InvalidSignature:
            return False
        if self.keysize < self.minkey:  # RFC 8301 3.2, as dkimpy: checked after the maths
            raise dkim.KeyFormatError(f"public key too small: {self.keysize}")
        return True


class Verifier(_FastVerify, dkim.DKIM):
    """``dkim.DKIM`` over a ``ParsedMessage``, with OpenSSL's RSA (see the module docstring)."""

    def __init__(self, parsed: ParsedMessage, *, minkey: int = 1024) -> None:
        super().__init__(None, minkey=minkey)
        self._use(parsed)


class ARCVerifier(_FastVerify, dkim.ARC):
    """``dkim.ARC`` over a ``ParsedMessage``, with OpenSSL's RSA (see the module docstring)."""

    def __init__(self, parsed: ParsedMessage, *, minkey: int = 1024) -> None:
        super().__init__(None, minkey=minkey)
        self._use(parsed)


__all__ = ["ARCVerifier", "ParsedMessage", "PublicKey", "Verifier", "parse", "public_key"]
