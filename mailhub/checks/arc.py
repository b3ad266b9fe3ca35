"""ARC (RFC 8617): verifying the chain a message arrives with, and sealing what we forward.

``verify_arc`` reads the ARC sets (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results
with the same ``i=``), checks their structure here (RFC 8617 5.2 steps 1-3: instances 1..N, each
complete, at most 50, the newest seal not already ``cv=fail``), fetches every key the seals and
signatures name through the ``CheckResolver`` at once, and then lets dkimpy validate the chain
with a ``dnsfunc`` that only reads those answers (``opensslverify.ARCVerifier``: dkimpy's chain
logic with OpenSSL's RSA, the message's parse and body hashes shared with DKIM verification).
ARC results are ``none``, ``pass`` or ``fail`` (RFC 8601 2.7.8 via RFC 8617 7.2); a key that
could not be fetched now gives ``fail`` marked ``temporary`` so that the caller may prefer to
try again later.

``arc_seal`` adds our ARC set when we forward a message to another domain (RFC 8617 5.1): our
Authentication-Results (with the ``arc=`` result of ``verify_arc``, which becomes the new
seal's ``cv=``) is put on top of the message, any older one of ours removed (it would be forged
or stale), and dkimpy signs. RSA-SHA256 only: RFC 8617 4.1.3 (a=, as DKIM, but only rsa-sha256
is defined for ARC).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

import dkim  # dkimpy ships no type information (pyproject.toml: ignore_missing_imports)
from twisted.internet import threads
from twisted.logger import Logger

from mailhub.checks import opensslsign, opensslverify
from mailhub.checks.dkimverify import (
    INLINE_LIMIT,
    MAX_KEY_OCTETS,
    MAX_RSA_BITS,
    MAX_RSA_EXPONENT_BITS,
    TagListError,
    fetch_keys,
    message_fields,
    parse_tags,
    rsa_numbers,
)
from mailhub.checks.dns import CheckResolver, DNSBudget, DNSBudgetExceeded, Lookup
from mailhub.checks.keys import RSA_SHA256, SigningKey
from mailhub.checks.results import AuthenticationResults, MethodResult

log = Logger()

MAX_INSTANCES = 50  # RFC 8617 4.2.1: i= is 1 to 50
ARC_FIELDS = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")
_INSTANCE = re.compile(rb"^\s*i\s*=\s*([0-9]+)\s*(?:;|$)")
_WSP = re.compile(rb"\s+")


class ARCSealError(ValueError):
    """The message cannot be sealed (no key of the right kind, too many sets, ...)."""


@dataclass(frozen=True)
class ARCSet:
    """One instance of the chain, as dkimpy validated it."""

    instance: int
    seal_domain: str  # ARC-Seal d=
    signature_domain: str  # ARC-Message-Signature d=
    cv: str  # the seal's cv=: none, pass, fail
    seal_valid: bool
    signature_valid: bool


@dataclass(frozen=True)
class ARCResult:
    result: str  # none, pass, fail
    instances: int  # how many ARC sets the message carries
    reason: str
    chain: tuple[ARCSet, ...] = ()  # newest first, when the chain was validated
    temporary: bool = False  # fail only because a key could not be fetched now

    def method_result(self) -> MethodResult:
        return MethodResult("arc", self.result, self.reason)


async def verify_arc(
    resolver: CheckResolver, message: bytes, *, budget: DNSBudget | None = None
) -> ARCResult:
    """RFC 8617 5.2: the chain's validation status. Never raises for the message or DNS."""
    if b"arc-" not in message[: _header_end(message)].lower():
        # No ARC field (most mail): no need to parse the header with dkimpy.
        return ARCResult("none", 0, "the message carries no ARC sets")
    headers = _headers(message)
    if headers is None:
        return ARCResult("fail", 0, "the message's header cannot be parsed for ARC")
    sets: dict[int, dict[bytes, dict[str, bytes]]] = {}
    for name, value in headers:
        kind = name.lower()
        if kind not in ARC_FIELDS:
            continue
        problem = _add_to_set(sets, kind, value)
        if problem:
            return ARCResult("fail", len(sets), problem)
    if not sets:
        return ARCResult("none", 0, "the message carries no ARC sets")
    newest = max(sets)
    problem = _structure(sets)
    if problem:
        return ARCResult("fail", newest, problem)

    names = sorted(
        {
            _key_name(tags)
            for by_kind in sets.values()
            for kind, tags in by_kind.items()
            if kind != b"arc-authentication-results"
        }
    )
    if any(not n for n in names):
        return ARCResult("fail", newest, "an ARC-Seal or ARC-Message-Signature has no valid d=/s=")
    answers = await fetch_keys(resolver, names, budget, "ARC")
    records: dict[str, bytes] = {}
    for n in names:
        answer = answers[n]
        if isinstance(answer, DNSBudgetExceeded):
            return ARCResult("fail", newest, f"not checked: {answer}", temporary=True)
        if isinstance(answer, Exception):
            reason = f"the key at {n} could not be fetched now ({answer})"
            return ARCResult("fail", newest, reason, temporary=True)
        records[n] = _usable_record(answer)
    if len(message) <= INLINE_LIMIT:
        return _validate(message, records, newest)
    result: ARCResult = await threads.deferToThread(_validate, message, records, newest)
    return result


def _headers(message: bytes) -> list[tuple[bytes, bytes]] | None:
    head = message[: _header_end(message)]
    if b"arc-" not in head.lower():
        return []  # no ARC field at all (most mail): nothing to parse
    headers = message_fields(message, head)  # parsed once for DKIM and ARC
    return None if headers is None else list(headers)


def _add_to_set(sets: dict[int, dict[bytes, dict[str, bytes]]], kind: bytes, value: bytes) -> str:
    label = _label(kind)
    m = _INSTANCE.match(value.replace(b"\r\n", b"").replace(b"\n", b""))
    if kind == b"arc-authentication-results":
        if m is None:
            return f"an {label} does not start with i= (RFC 8617 4.1.1)"
        tags: dict[str, bytes] = {"i": m.group(1)}
    else:
        try:
            tags = parse_tags(value)
        except TagListError as e:
            return f"an {label} is malformed: {e}"
        if not re.fullmatch(rb"[0-9]{1,3}", tags.get("i", b"")):
            return f"an {label} has no valid i= (RFC 8617 4.2.1)"
    instance = int(tags["i"])
    if not 1 <= instance <= MAX_INSTANCES:
        return f"an {label} has i={instance}; ARC allows 1 to {MAX_INSTANCES} (RFC 8617 4.2.1)"
    by_kind = sets.setdefault(instance, {})
    if kind in by_kind:
        return f"ARC set i={instance} has two {label} fields (RFC 8617 5.2 step 3)"
    by_kind[kind] = tags
    return ""


def _structure(sets: dict[int, dict[bytes, dict[str, bytes]]]) -> str:
    """RFC 8617 5.2 steps 2-3: sets 1..N, each complete; the newest seal not already failed."""
    newest = max(sets)
    for i in range(1, newest + 1):
        if i not in sets:
            return f"ARC set i={i} is missing: the chain has a gap (RFC 8617 5.2 step 3)"
        absent = [_label(k) for k in ARC_FIELDS if k not in sets[i]]
        if absent:
            return f"ARC set i={i} is incomplete: no {', '.join(absent)} (RFC 8617 5.2 step 3)"
    cv = sets[newest][b"arc-seal"].get("cv", b"").lower()
    if cv == b"fail":
        return f"the chain was already broken when sealed at i={newest} (cv=fail)"
    return ""


def _key_name(tags: dict[str, bytes]) -> str:
    d = tags.get("d", b"").strip().lower().rstrip(b".")
    s = tags.get("s", b"").strip().lower()
    if not re.fullmatch(rb"[a-z0-9_.-]{1,63}", s) or not re.fullmatch(rb"[a-z0-9.-]{1,200}", d):
        return ""
    return f"{s.decode()}._domainkey.{d.decode()}"


def _usable_record(answer: Lookup[bytes]) -> bytes:
    """The first key record dkimpy may be given: an absurd RSA key (too big, huge exponent) is
    dropped here, as in DKIM verification, so that it costs no work (b"" = no key: fails)."""
    for raw in answer.records:
        try:
            tags = parse_tags(raw)
        except TagListError:
            continue
        if "p" not in tags:
            continue
        try:
            data = base64.b64decode(_WSP.sub(b"", tags["p"]), validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(data) > MAX_KEY_OCTETS:
            continue
        if tags.get("k", b"rsa").strip().lower() == b"rsa" and data:
            public = rsa_numbers(data)  # parsed once per key (cached)
            if isinstance(public, str):
                continue
            modulus, exponent, _ = public
            if modulus.bit_length() > MAX_RSA_BITS:
                continue
            if exponent.bit_length() > MAX_RSA_EXPONENT_BITS:
                continue
        return b"; ".join(k.encode("ascii") + b"=" + v for k, v in tags.items())
    return b""


def _validate(message: bytes, records: dict[str, bytes], newest: int) -> ARCResult:
    """dkimpy's chain validation (RFC 8617 5.2 steps 4-7), keys read from ``records``."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        key = name.decode("ascii", "replace").lower().rstrip(".")
        return records.get(key, b"")

    try:
        # dkimpy's chain logic with OpenSSL's RSA, the parse and body hashes shared with DKIM
        verifier = opensslverify.ARCVerifier(opensslverify.parse(_spaced(message)), minkey=1024)
        cv, data, reason = verifier.verify(dnsfunc=dnsfunc)
    except dkim.DKIMException as e:
        return ARCResult("fail", newest, f"the ARC chain cannot be validated: {e}")
    except Exception as e:
        # dkimpy tripping over input it did not expect: a result, and a log line without a
        # traceback, since the message, not mailhub, is odd.
        log.warn("dkimpy could not validate an ARC chain: {error!r}", error=e)
        reason = f"the ARC chain cannot be validated (dkimpy: {e.__class__.__name__})"
        return ARCResult("fail", newest, reason)
    chain = tuple(_arc_set(d) for d in data)
    if cv == dkim.CV_Pass:
        sealers = ", ".join(f"i={s.instance} by {s.seal_domain}" for s in reversed(chain))
        return ARCResult("pass", newest, f"ARC chain of {newest} sets validated: {sealers}", chain)
    if cv == dkim.CV_None:
        return ARCResult("none", 0, "the message carries no ARC sets")
    return ARCResult("fail", newest, _fail_reason(str(reason), chain), chain)


_AMS_NAME = re.compile(rb"(?im)^(ARC-Message-Signature)[ \t]*:[ \t]*(?=i[ \t]*=)")


def _spaced(message: bytes) -> bytes:
    """dkimpy 1.1.8 finds an ARC-Message-Signature only if its value starts with " i="
    (IndexError for ``ARC-Message-Signature:i=1``, legal syntax). Relaxed header
    canonicalization, which ARC uses, deletes the white space around the colon (RFC 6376
    3.4.2), so writing one space there changes nothing that is signed."""
    end = _header_end(message)
    return _AMS_NAME.sub(rb"\1: ", message[:end]) + message[end:]


def _header_end(message: bytes) -> int:
    crlf = message.find(b"\r\n\r\n")
    # A bare LF LF matters only before the first CRLF CRLF: not searched for in the body.
    lf = message.find(b"\n\n", 0, len(message) if crlf < 0 else crlf + 1)
    ends = [i for i in (crlf, lf) if i >= 0]
    return min(ends) if ends else len(message)


def _arc_set(data: dict[str, Any]) -> ARCSet:
    def text(key: str) -> str:
        value = data.get(key, b"")
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    return ARCSet(
        int(data.get("instance", 0)),
        text("as-domain"),
        text("ams-domain"),
        text("cv").lower(),
        bool(data.get("as-valid", False)),
        bool(data.get("ams-valid", False)),
    )


def _fail_reason(reason: str, chain: tuple[ARCSet, ...]) -> str:
    if reason == "Most recent ARC-Message-Signature did not validate" and chain:
        newest = chain[0]
        return (
            f"the newest ARC-Message-Signature (i={newest.instance}, {newest.signature_domain}) "
            "did not validate: the message changed after it was sealed"
        )
    m = re.fullmatch(r"ARC-Seal\[(\d+)\] did not validate", reason)
    if m:
        i = int(m.group(1))
        by = next((s.seal_domain for s in chain if s.instance == i), "?")
        return f"the ARC-Seal i={i} by {by} did not validate: the chain was altered or forged"
    return f"the ARC chain failed: {reason}"


def _label(kind: bytes) -> str:
    return {
        b"arc-seal": "ARC-Seal",
        b"arc-message-signature": "ARC-Message-Signature",
        b"arc-authentication-results": "ARC-Authentication-Results",
    }[kind]


# -- sealing --------------------------------------------------------------------------------


def arc_seal(
    message: bytes,
    key: SigningKey,
    authserv_id: str,
    results: AuthenticationResults,
    *,
    timestamp: int | None = None,
) -> bytes:
    """The three header fields of our ARC set (ARC-Seal, ARC-Message-Signature,
    ARC-Authentication-Results, in that order), to put on top of ``message`` when forwarding.

    ``results`` are our findings for this message; when it already has an ARC chain they must
    include the ``arc`` result of ``verify_arc`` (it becomes ``cv=``). CPU: two RSA signatures
    (OpenSSL's, ``opensslsign``) and the canonicalisation, about 1.3 ms for a 4 KiB message and
    more with its size, so a caller on the reactor runs this in a thread."""
    if key.algorithm != RSA_SHA256:
        raise ARCSealError(f"ARC seals only with rsa-sha256 (RFC 8617 4.1.3), not {key.algorithm}")
    has_chain = any(n.lower() == b"arc-seal" for n, _ in (_headers(message) or []))
    arc_results = [r for r in results.results if r.method == "arc"]
    if has_chain and not arc_results:
        raise ARCSealError("the message has an ARC chain: results must carry verify_arc's arc=")
    body = _without_our_results(message, authserv_id)
    ours = AuthenticationResults(authserv_id, results.results)
    lines = _sign(ours.header() + body, key, authserv_id, timestamp)
    if not lines:
        # authres (which dkimpy uses to read our header back) refused it: try without reasons
        plain = tuple(_without_reason(r) for r in results.results)
        lines = _sign(
            AuthenticationResults(authserv_id, plain).header() + body, key, authserv_id, timestamp
        )
    if not lines:
        raise ARCSealError("dkimpy made no ARC set (it could not read our Authentication-Results)")
    return b"".join(bytes(line) for line in lines)


def _sign(message: bytes, key: SigningKey, authserv_id: str, timestamp: int | None) -> list[bytes]:
    try:
        # dkimpy's ARC set with OpenSSL's RSA (opensslsign: byte-identical, about 10x faster)
        lines: list[bytes] = opensslsign.arc_sign(
            message,
            key.selector.encode("ascii"),
            key.domain.encode("ascii"),
            key.private_key,
            authserv_id.encode("ascii"),
            timestamp=timestamp,
        )
    except dkim.DKIMException as e:
        raise ARCSealError(f"the message cannot be sealed: {e}") from None
    return lines


def _without_reason(result: MethodResult) -> MethodResult:
    return MethodResult(result.method, result.result, "", result.properties)


def _without_our_results(message: bytes, authserv_id: str) -> bytes:
    """``message`` without any Authentication-Results field of ``authserv_id`` (RFC 8601 5:
    ours in a message arriving here is forged, or is the one we are replacing)."""
    ends = [i + 2 for i in (message.find(b"\r\n\r\n"), message.find(b"\n\n")) if i >= 0]
    end = min(ends) if ends else len(message)
    header, body = message[:end], message[end:]
    fields: list[list[bytes]] = []  # each field's lines, continuations included
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept: list[bytes] = []
    for lines in fields:
        name, colon, value = b"".join(lines).partition(b":")
        ours = (
            colon
            and name.strip().lower() == b"authentication-results"
            and _authserv_id(value) == authserv_id.lower()
        )
        if not ours:
            kept.extend(lines)
    return b"".join(kept) + body


def _authserv_id(value: bytes) -> str:
    """The authserv-id: the first token of the value, before ";" or white space, comments
    skipped (RFC 8601 2.2)."""
    text = re.sub(rb"\([^()]*\)", b" ", value).strip()
    token = re.split(rb"[;\s]", text, maxsplit=1)[0] if text else b""
    return token.decode("utf-8", "replace").lower()
