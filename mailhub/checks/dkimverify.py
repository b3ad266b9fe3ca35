"""DKIM verification of every signature on a message (RFC 6376 6, RFC 8463, RFC 8301).

The work is split in two so that dkimpy never does DNS itself and the reactor is never blocked:

1. Here, asynchronously: every ``DKIM-Signature`` field is parsed and checked (required tags,
   algorithm, ``h=`` containing From, expiry...), and the key records of the signatures worth
   checking are fetched through the ``CheckResolver``, all in parallel, within the message's
   ``DNSBudget``. The key records are judged here too (revoked, too weak, too big, wrong type),
   so each problem gets a reason in words.
2. Then the cryptography: ``dkimfast`` (our own hash and check: only the fields named in
   ``h=`` canonicalised, one SHA-256, the key object made once per key record; RSA by OpenSSL,
   Ed25519 by libsodium) for the signatures and key records in the forms dkimpy reads as we do
   (``dkimfast.usable``: almost all mail), else dkimpy's verification steps (``opensslverify``)
   with a ``dnsfunc`` that only returns the records already fetched. Both share the message's
   parse and its body hashes (one per canonicalisation and ``l=``). This is CPU: on a 4 KiB
   message about 0.1 ms for an RSA-2048 signature and 0.15 ms for Ed25519 in a tight loop
   (benchmarks/README.md); a 10 MiB body takes about 0.4 s. A message up to ``INLINE_LIMIT``
   octets is checked inline by ``verify_dkim`` and a larger one in the reactor's thread pool,
   where the reactor keeps running between GIL slices. Mail judged from the caches
   (``verify_at_once``, most signed mail) hands its cryptography to the server's
   ``cryptothread`` in one job: the public-key checks release the GIL, and on the reactor
   each release is a wait for the store's threads to give it back (see that module).

Results follow RFC 8601 2.7.1: ``pass``, ``fail`` (the cryptography said no), ``permerror`` (a
signature or key record that cannot be used, RFC 6376 6.1 PERMFAIL), ``temperror`` (the key
could not be fetched now), ``policy`` (valid syntax but refused by rule: rsa-sha1 and RSA keys
under 1024 bits, RFC 8301), ``neutral`` (not checked: over the per-message caps).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dkim  # dkimpy ships no type information (pyproject.toml: ignore_missing_imports)
from dkim.crypto import UnparsableKeyError, parse_public_key  # type: ignore[import-untyped]
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailhub.addresses import AddressError, normalise_domain
from mailhub.checks import dkimfast, eager, opensslverify
from mailhub.checks.dns import CheckResolver, DNSBudget, DNSBudgetExceeded, DNSTempError, Lookup
from mailhub.checks.resolver import budgeted
from mailhub.checks.results import MethodResult

log = Logger()

MAX_SIGNATURES = 5  # well-formed signatures checked per message; the rest: "not checked"
MAX_SIGNED_FIELDS = 200  # entries in h=; real signers list a few dozen (oversigning included)
MIN_RSA_BITS = 1024  # RFC 8301 3.2: smaller keys MUST NOT be considered valid
MAX_RSA_BITS = 8192  # beyond RFC 8301 3.2's 4096 that verifiers must handle: refused as absurd
MAX_RSA_EXPONENT_BITS = 64  # real keys use 65537; a huge exponent only makes work
MAX_KEY_OCTETS = 2048  # the decoded p= of an 8192-bit key is about 1,060 octets
INLINE_LIMIT = 64 * 1024  # messages up to this size are verified without a thread hop
FUTURE_SLOP = 36000  # seconds; as dkimpy, a t= this far ahead of our clock is refused

ALGORITHMS = {"rsa-sha256": "rsa", "ed25519-sha256": "ed25519"}  # a= -> the key type k= needs
REQUIRED_TAGS = ("v", "a", "b", "bh", "d", "h", "s")  # RFC 6376 3.5
_REQUIRED = frozenset(REQUIRED_TAGS)

_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+$")  # RFC 5322 3.6.8 ftext
_SELECTOR = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9_-]+)*$")
_WSP = re.compile(rb"\s+")
_TAG_NAME = re.compile(rb"^[A-Za-z][A-Za-z0-9_]*$")  # RFC 6376 3.2 tag-name
_LENGTH = re.compile(rb"\d{1,76}")  # l=
_SECONDS = re.compile(rb"\d{1,12}")  # t=, x=


# Tag names read before (valid ones only): the same dozen come in every signature and record.
_TAG_NAMES: dict[bytes, str] = {}


class TagListError(ValueError):
    """A tag=value list (RFC 6376 3.2) that does not parse."""


def parse_tags(value: bytes) -> dict[str, bytes]:
    """RFC 6376 3.2 tag-list, unfolded; names case-sensitive, values with surrounding FWS
    removed. Raises ``TagListError`` for a tag without ``=``, a bad name or a duplicate (the
    signature or record is then unusable: RFC 6376 3.2 "MUST be rejected")."""
    tags: dict[str, bytes] = {}
    specs = value.replace(b"\r\n", b"").replace(b"\n", b"").split(b";")
    if specs and not specs[-1].strip():
        specs.pop()  # a trailing ";" is allowed
    for spec in specs:
        name, eq, tag_value = spec.partition(b"=")
        name = name.strip()
        if not eq:
            raise TagListError(f"'{_show(spec.strip())}' is not tag=value")
        key = _TAG_NAMES.get(name)
        if key is None:
            if not _TAG_NAME.match(name):
                raise TagListError(f"'{_show(name)}' is not a tag name")
            key = name.decode("ascii")
            if len(_TAG_NAMES) < 256:  # the few names signers use; any other is read each time
                _TAG_NAMES[name] = key
        if key in tags:
            raise TagListError(f"tag {key}= appears twice")
        tags[key] = tag_value.strip()
    return tags


@dataclass(frozen=True)
class SignatureResult:
    """What one DKIM-Signature came to (RFC 8601 2.7.1), with the reason in words."""

    result: str  # pass, fail, neutral, temperror, permerror, policy
    domain: str  # d= (the SDID), "" if unreadable
    selector: str  # s=
    algorithm: str  # a=
    key_bits: int | None  # the public key's size, when the key record was read
    reason: str
    header_b: str = ""  # the first 8 characters of b= (RFC 6008), to tell signatures apart
    identity: str = ""  # i= (the AUID) when given

    def method_result(self) -> MethodResult:
        props = [
            ("header.d", self.domain),
            ("header.i", self.identity),
            ("header.s", self.selector),
            ("header.a", self.algorithm),
            ("header.b", self.header_b),
        ]
        return MethodResult("dkim", self.result, self.reason, tuple((k, v) for k, v in props if v))


@dataclass
class _Signature:
    """One DKIM-Signature field as read here, before the cryptography."""

    index: int  # its place among the message's DKIM-Signature fields (dkimpy's idx)
    tags: dict[str, bytes]
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    header_b: str = ""
    identity: str = ""
    key_bits: int | None = None
    record: bytes | None = None  # the key record chosen (its tags joined again, for dkimpy)
    key_tags: dict[str, bytes] | None = None  # that record's tags
    decoded: dict[str, bytes] = field(default_factory=dict)  # b= and bh=, once checked
    verdict: tuple[str, str] | None = None  # (result, reason) once decided
    # What dkimpy raised that it should not have: logged by the reactor thread afterwards
    # (the cryptography may run in another thread, where Twisted's logging is not safe).
    unexpected: Exception | None = None
    # Where the key is (RFC 6376 3.6.2.1): set once d= and s= are final (a plain attribute:
    # functools.cached_property takes a lock at its first use, ~1 us a message).
    key_name: str = ""

    def decide(self, result: str, reason: str) -> None:
        if self.verdict is None:
            self.verdict = (result, reason)

    def result(self) -> SignatureResult:
        result, reason = self.verdict or ("permerror", "not judged (internal error)")
        return SignatureResult(
            result,
            self.domain,
            self.selector,
            self.algorithm,
            self.key_bits,
            reason,
            self.header_b,
            self.identity,
        )


async def verify_dkim(
    resolver: CheckResolver,
    message: bytes,
    *,
    budget: DNSBudget | None = None,
    max_signatures: int = MAX_SIGNATURES,
    now: float | None = None,
) -> list[SignatureResult]:
    """Every DKIM-Signature of ``message``, top first: one ``SignatureResult`` each (an empty
    list for an unsigned message). Never raises for anything in the message or the DNS."""
    read = _read_all(message, time.time() if now is None else now, max_signatures)
    if isinstance(read, list):
        return read
    signatures, wanted = read
    answers = await fetch_keys(resolver, wanted, budget)
    ready = _judge_keys(signatures, answers)
    if ready:
        if len(message) <= INLINE_LIMIT:
            _crypto(message, ready)
        else:
            await threads.deferToThread(_crypto, message, ready)
        _log_unexpected(ready)
    return [s.result() for s in signatures]


CachedTXT = Callable[[str], Lookup[bytes] | None]  # a name's TXT answer if cached, else None
# Runs a job elsewhere (``CryptoThread.run``): a Deferred of its result, or None to run it here.
Offload = Callable[[Callable[[], None]], "defer.Deferred[None] | None"]


def verify_at_once(
    message: bytes,
    cached: CachedTXT,
    *,
    budget: int,
    max_signatures: int = MAX_SIGNATURES,
    now: float | None = None,
    offload: Offload | None = None,
    then: Callable[[list[SignatureResult]], object] | None = None,
) -> list[SignatureResult] | eager.Pending | None:
    """``verify_dkim``'s results without a coroutine, when every key record it would fetch is
    in the cache (``cached(name)``: ``CachingResolver.cached_txt``) and the message is
    checked inline (up to ``INLINE_LIMIT``); None otherwise (ask ``verify_dkim``). The same
    steps, in the same order, on the same answers: the same results. ``budget``: the lookups
    the message may still spend; more keys than that (``verify_dkim`` would give some
    ``neutral``) is None too. Every signature is verified: nothing is kept across messages
    but the key records (by their TTLs) and what is read of them.

    ``offload``: the cryptography (the message's body and header hashes and every public-key
    check, one job) is handed to it (``cryptothread``: off the reactor), and the results come
    as ``eager.Pending``; a job that fails makes each signature it had ``temperror``. ``then``:
    what that Pending's Deferred fires with is ``then(results)`` (one callback fewer for the
    caller's next step than adding it after)."""
    if len(message) > INLINE_LIMIT:
        return None
    # Called for mail whose header names DKIM-Signature (judge_at_once looked): parsed without
    # a second look, and handed to the cryptography as it is (not through opensslverify's
    # cache by the message's octets: hashing 4 KiB of them as a key costs more than the look
    # up saves, and no ARC check shares it here).
    parsed: opensslverify.ParsedMessage | None
    try:
        parsed = opensslverify.parse_uncached(message)
    except Exception:  # dkimpy's parser raises MessageFormatError, or IndexError (a fold first)
        parsed = None
    fields = None
    if parsed is not None:  # (the lowered names are the cryptography's h= lookups too)
        lowered = parsed.lowered_names()
        headers = parsed.headers
        fields = [headers[i][1] for i, n in enumerate(lowered) if n == b"dkim-signature"]
    read = _read_fields(fields, time.time() if now is None else now, max_signatures)
    if isinstance(read, list):
        return read
    signatures, wanted = read
    if len(wanted) > budget:
        return None
    answers: dict[str, Lookup[bytes] | Exception] = {}
    for name in wanted:
        answer = cached(name)
        if answer is None:
            return None
        answers[name] = answer
    ready = _judge_keys(signatures, answers)
    if ready:
        job = functools.partial(_crypto, message, ready, parsed)
        running = None if offload is None else offload(job)
        if running is not None:
            if then is not None:
                got = running.addCallbacks(
                    _results_then,
                    _crypto_failed_then,
                    callbackArgs=(signatures, then),
                    errbackArgs=(signatures, then),
                )
            else:
                got = running.addCallbacks(
                    _results, _crypto_failed, callbackArgs=(signatures,), errbackArgs=(signatures,)
                )
            return eager.Pending(got)
        job()
        _log_unexpected(ready)
    return [s.result() for s in signatures]


def _results(_: None, signatures: list[_Signature]) -> list[SignatureResult]:
    _log_unexpected(signatures)
    return [s.result() for s in signatures]


def _results_then(
    _: None, signatures: list[_Signature], then: Callable[[list[SignatureResult]], object]
) -> object:
    return then(_results(None, signatures))


def _crypto_failed_then(
    failure: Failure, signatures: list[_Signature], then: Callable[[list[SignatureResult]], object]
) -> object:
    return then(_crypto_failed(failure, signatures))


def _log_unexpected(signatures: list[_Signature]) -> None:
    """Reactor thread: what dkimpy raised unexpectedly in the cryptography (``_judge_crypto``)."""
    for sig in signatures:
        if sig.unexpected is not None:
            log.warn(
                "dkimpy failed on signature {index}: {error!r}",
                index=sig.index,
                error=sig.unexpected,
            )


def _crypto_failed(failure: Failure, signatures: list[_Signature]) -> list[SignatureResult]:
    """The cryptography's job failed (a bug, never the message: ``_judge_crypto`` turns
    everything it raises into a result): temperror for each signature it left undecided, as
    for a check that could not finish (RFC 8601 2.7.1)."""
    log.failure("DKIM cryptography failed", failure)
    _log_unexpected(signatures)
    for sig in signatures:
        sig.decide("temperror", "the signature could not be checked now (internal error)")
    return [s.result() for s in signatures]


def _read_all(
    message: bytes, now: float, max_signatures: int, look: bool = True
) -> list[SignatureResult] | tuple[list[_Signature], list[str]]:
    """The signatures read and checked (RFC 6376 6.1.1) and the key records they need, or the
    results at once (no signature, or a header that cannot be read). ``look``: as
    ``_signature_fields``."""
    return _read_fields(_signature_fields(message, look), now, max_signatures)


def _read_fields(
    fields: list[bytes] | None, now: float, max_signatures: int
) -> list[SignatureResult] | tuple[list[_Signature], list[str]]:
    """``_read_all`` for the DKIM-Signature values ``fields`` (None: the header could not be
    read)."""
    if fields is None:
        return [
            SignatureResult(
                "permerror", "", "", "", None, "the message's header cannot be parsed for DKIM"
            )
        ]
    if not fields:
        return []  # unsigned: no keys to fetch
    signatures = [_read_signature(i, value, now) for i, value in enumerate(fields)]
    # The cap counts the signatures that would cost DNS and cryptography, so that a few
    # malformed ones on top cannot push a real one out of reach.
    usable = [s for s in signatures if s.verdict is None]
    for extra in usable[max_signatures:]:
        extra.decide(
            "neutral",
            f"not checked: only {max_signatures} well-formed DKIM signatures of a message "
            "are checked",
        )
    wanted = sorted({s.key_name for s in signatures if s.verdict is None})
    return signatures, wanted


def _judge_keys(
    signatures: list[_Signature], answers: Mapping[str, Lookup[bytes] | Exception]
) -> list[_Signature]:
    """Each undecided signature's key record judged; those left for the cryptography."""
    for sig in signatures:
        if sig.verdict is None:
            _judge_key(sig, answers[sig.key_name])
    return [s for s in signatures if s.verdict is None]


# -- reading the signature fields -----------------------------------------------------------


def _signature_fields(message: bytes, look: bool = True) -> list[bytes] | None:
    """The raw values of the DKIM-Signature fields, in dkimpy's order (top first), read with
    dkimpy's own header parser so that its ``idx`` and ours name the same field. ``look``
    False: the caller has seen the name in the header section already, so the message is
    parsed without looking for it first (the look only spares unsigned mail a parse)."""
    if not look and len(message) <= opensslverify.CACHED_MESSAGE:
        headers = message_fields(message, b"")  # (the head is only read for big messages)
    else:
        head = message[: _header_end(message)]
        if b"dkim-signature" not in head.lower():
            return []  # no field of that name: unsigned, without parsing (most inbound mail)
        headers = message_fields(message, head)
    if headers is None:  # unreadable but seems signed: a permerror
        return None
    return _dkim_fields(headers)


def _dkim_fields(headers: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    return [value for name, value in headers if name.lower() == b"dkim-signature"]


def message_fields(message: bytes, head: bytes) -> Sequence[tuple[bytes, bytes]] | None:
    """The header fields of ``message`` (whose header section is ``head``) as dkimpy reads
    them, or None if it cannot. A small message is parsed whole, once for DKIM and ARC and
    their cryptography (``opensslverify.parse``); a big one only its header section here, on
    the reactor, and whole in the thread that checks it."""
    if len(message) > opensslverify.CACHED_MESSAGE:
        return header_fields(head)
    try:
        return opensslverify.parse(message).headers
    except Exception:  # dkimpy raises MessageFormatError, or IndexError on a leading fold
        return None


def header_fields(head: bytes) -> tuple[tuple[bytes, bytes], ...] | None:
    """The fields of a header section (``head``, without its empty line) as dkimpy's parser
    reads them, or None if it cannot. DKIM and ARC both read the same message's fields: small
    header sections are parsed once (cached by their bytes)."""
    if len(head) > _CACHED_HEAD:
        return _parse_head(head)
    return _parse_head_cached(head)


_CACHED_HEAD = 64 * 1024  # octets; bigger header sections are parsed each time, not kept


def _parse_head(head: bytes) -> tuple[tuple[bytes, bytes], ...] | None:
    try:
        headers, _ = dkim.rfc822_parse(head + b"\r\n")
    except Exception:  # dkimpy raises MessageFormatError, or IndexError on a leading fold
        return None
    return tuple((bytes(name), bytes(value)) for name, value in headers)


_parse_head_cached = functools.lru_cache(maxsize=32)(_parse_head)


def _header_end(message: bytes) -> int:
    crlf = message.find(b"\r\n\r\n")
    # A bare LF LF matters only before the first CRLF CRLF: not searched for in the body.
    lf = message.find(b"\n\n", 0, len(message) if crlf < 0 else crlf + 1)
    ends = [i for i in (crlf, lf) if i >= 0]
    return min(ends) if ends else len(message)


def _read_signature(index: int, value: bytes, now: float) -> _Signature:
    """The syntax checks of RFC 6376 6.1.1, each refusal with its reason."""
    try:
        tags = parse_tags(value)
    except TagListError as e:
        sig = _Signature(index, {})
        sig.decide("permerror", f"the signature's tag list is malformed: {e}")
        return sig
    sig = _Signature(index, tags)
    get = tags.get
    sig.domain = get("d", b"").decode("utf-8", "replace").lower()
    sig.selector = get("s", b"").decode("utf-8", "replace").lower()
    sig.algorithm = get("a", b"").decode("utf-8", "replace").lower()
    sig.identity = get("i", b"").decode("utf-8", "replace")
    b_value = b"".join(get("b", b"").split())  # (_no_space)
    sig.header_b = b_value[:8].decode("utf-8", "replace")
    if not _REQUIRED.issubset(tags):
        names = ", ".join(f"{t}=" for t in REQUIRED_TAGS if t not in tags)
        sig.decide("permerror", f"required tag {names} missing (RFC 6376 3.5)")
        return sig
    if tags["v"] != b"1":
        sig.decide("permerror", f"unknown signature version v={_show(tags['v'])} (RFC 6376 3.5)")
        return sig
    domain = _domain(tags["d"])
    if isinstance(domain, ValueError):
        sig.decide("permerror", f"d= is not a domain name: {domain}")
        return sig
    sig.domain = domain
    sig.key_name = f"{sig.selector}._domainkey.{domain}"
    if not _SELECTOR.match(sig.selector) or len(sig.key_name) > 253:
        sig.decide("permerror", f"s={_show(tags['s'])} is not a valid selector (RFC 6376 3.1)")
        return sig
    if sig.algorithm == "rsa-sha1":
        sig.decide("policy", "rsa-sha1 signatures are not accepted (RFC 8301 3.1)")
        return sig
    if sig.algorithm not in ALGORITHMS:
        sig.decide("permerror", f"unknown signing algorithm a={_show(tags['a'])}")
        return sig
    problem = (
        _check_base64(sig, "b", b_value)
        or _check_base64(sig, "bh", _no_space(tags["bh"]))
        or _check_signed_fields(tags["h"])
        or _check_canonicalization(tags.get("c"))
        or _check_identity(sig)
        or _check_query(tags.get("q"))
        or _check_length(tags.get("l"))
        or _check_times(tags, now)
    )
    if problem:
        sig.decide(*problem)
    return sig


def _check_base64(sig: _Signature, name: str, value: bytes) -> tuple[str, str] | None:
    """``value``: the tag's value without white space."""
    try:
        # base64.b64decode(value, validate=True) without its Python layer
        sig.decoded[name] = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        return "permerror", f"{name}= is not valid base64"
    if not value:
        return "permerror", f"{name}= is empty"
    return None


@functools.lru_cache(maxsize=1024)
def _check_signed_fields(h: bytes) -> tuple[str, str] | None:
    """h= refused, or None (cached by the value: a signer's list rarely changes)."""
    names = [_no_space(n).lower() for n in h.split(b":")]
    if len(names) > MAX_SIGNED_FIELDS:
        return (
            "permerror",
            f"h= lists {len(names)} header fields; more than {MAX_SIGNED_FIELDS} are refused "
            "(a cap on the work per message)",
        )
    if any(not _FIELD_NAME.match(n) for n in names):
        return "permerror", "h= holds something that is not a header field name"
    if b"from" not in names:
        return "permerror", "h= does not include From, which MUST be signed (RFC 6376 5.4)"
    return None


@functools.lru_cache(maxsize=64)  # by the value: a handful of spellings come in all mail
def _check_canonicalization(c: bytes | None) -> tuple[str, str] | None:
    if c is None:
        return None
    parts = c.lower().split(b"/")
    if len(parts) > 2 or any(p not in (b"simple", b"relaxed") for p in parts):
        return "permerror", f"unknown canonicalization c={_show(c)} (RFC 6376 3.4)"
    return None


def _check_identity(sig: _Signature) -> tuple[str, str] | None:
    if not sig.identity:
        return None
    _, at, host = sig.identity.rpartition("@")
    host = host.lower()
    if not at or (host != sig.domain and not host.endswith("." + sig.domain)):
        return (
            "permerror",
            f"i={sig.identity} is not in the signing domain d={sig.domain} (RFC 6376 3.5)",
        )
    return None


def _check_query(q: bytes | None) -> tuple[str, str] | None:
    if q is not None and q.strip().lower() != b"dns/txt":
        return "permerror", f"unknown key query method q={_show(q)} (RFC 6376 3.5)"
    return None


def _check_length(length: bytes | None) -> tuple[str, str] | None:
    if length is not None and not _LENGTH.fullmatch(length):
        return "permerror", "l= is not a decimal number (RFC 6376 3.5)"
    return None


def _check_times(tags: dict[str, bytes], now: float) -> tuple[str, str] | None:
    if "t" not in tags and "x" not in tags:
        return None
    signed = expires = None
    for name in ("t", "x"):
        if name in tags and not _SECONDS.fullmatch(tags[name]):
            return "permerror", f"{name}= is not a time in seconds (RFC 6376 3.5)"
    if "t" in tags:
        signed = int(tags["t"])
        if signed > now + FUTURE_SLOP:
            return "permerror", f"the signature claims to be made in the future ({_when(signed)})"
    if "x" in tags:
        expires = int(tags["x"])
        if signed is not None and expires < signed:
            return "permerror", "x= is earlier than t= (RFC 6376 3.5)"
        if expires < now:
            return "permerror", f"signature expired at {_when(expires)}"
    return None


# -- fetching and judging the key records -----------------------------------------------------


async def fetch_keys(
    resolver: CheckResolver, names: Sequence[str], budget: DNSBudget | None, what: str = "DKIM"
) -> dict[str, Lookup[bytes] | Exception]:
    """Each name's TXT answer (or the exception it gave), all asked at once (DKIM's and ARC's
    key records), each spending the message's ``budget``."""
    resolver = budgeted(resolver, budget)

    async def one(name: str) -> Lookup[bytes] | Exception:
        try:
            return await resolver.txt(name)
        except (DNSTempError, DNSBudgetExceeded) as e:
            return e
        except Exception as e:  # a resolver bug must not become a traceback in the session
            log.failure("{what} key lookup for {name} failed", what=what, name=name)
            return DNSTempError(f"lookup failed: {e.__class__.__name__}")

    if len(names) == 1:  # most signed mail: one key, no Deferred needed
        return {names[0]: await one(names[0])}
    waiting = [defer.Deferred.fromCoroutine(one(n)) for n in names]  # all asked at once
    answers: list[Lookup[bytes] | Exception] = []
    if all(d.called for d in waiting):  # all from the cache: no DeferredList needed
        for d in waiting:
            d.addCallback(answers.append)  # one() never fails
    else:
        answers = await defer.gatherResults(waiting)
    return dict(zip(names, answers, strict=True))


def _judge_key(sig: _Signature, answer: Lookup[bytes] | Exception) -> None:
    """RFC 6376 6.1.2: the key record, judged before any cryptography."""
    where = sig.key_name
    if isinstance(answer, DNSBudgetExceeded):
        sig.decide("neutral", f"not checked: {answer}")
        return
    if isinstance(answer, Exception):
        sig.decide("temperror", f"the key at {where} could not be fetched now ({answer})")
        return
    if answer.nxdomain:
        sig.decide("permerror", f"key record not found (NXDOMAIN at {where})")
        return
    if not answer.records:
        sig.decide("permerror", f"key record not found (no TXT record at {where})")
        return
    chosen = _key_record(answer.records)
    if isinstance(chosen, str):
        sig.decide("permerror", f"the key record at {where} is malformed: {chosen}")
        return
    outside = ""  # i='s domain when it is not exactly d= (for a key with t=s)
    if sig.identity:
        host = sig.identity.rpartition("@")[2].lower()
        outside = host if host != sig.domain else ""
    problem, sig.key_bits = _check_key(chosen, sig.algorithm, where, sig.domain, outside)
    if problem:
        sig.decide(*problem)
        return
    sig.record = chosen.text
    sig.key_tags = chosen.tags


@dataclass(frozen=True, eq=False)
class KeyRecord:
    """The key record chosen from a TXT answer: its tags, and the record written again from
    them for dkimpy. One object per answer while cached (compared by identity)."""

    tags: dict[str, bytes]  # shared: never changed
    text: bytes


@functools.lru_cache(maxsize=256)
def _key_record(records: tuple[bytes, ...]) -> KeyRecord | str:
    """The key record to use among a TXT answer's ``records``, or why there is none. Read
    once per answer (cached by its records' octets)."""
    keys: list[dict[str, bytes]] = []
    problems: list[str] = []
    for raw in records:
        try:
            tags = parse_tags(raw)
        except TagListError as e:
            problems.append(str(e))
            continue
        if "p" in tags:
            keys.append(tags)
    if not keys:
        return problems[0] if problems else "it has no p= tag"
    # RFC 6376 6.1.2 step 3: of several key records the verifier may choose one: the first.
    key = keys[0]
    return KeyRecord(key, b"; ".join(k.encode("ascii") + b"=" + v for k, v in key.items()))


@functools.lru_cache(maxsize=1024)
def _check_key(
    record: KeyRecord, algorithm: str, where: str, domain: str, outside: str
) -> tuple[tuple[str, str] | None, int | None]:
    """RFC 6376 6.1.2 and RFC 8301 for a signature of ``algorithm`` by ``domain`` (whose i=
    is in the subdomain ``outside``, if not ""), with the key at ``where``: the problem, if
    any, and the key's size in bits when it was read. Worked out once per key and kind of
    signature (cached)."""
    key = record.tags
    if "v" in key and key["v"] != b"DKIM1":
        return ("permerror", f"the key record at {where} has v={_show(key['v'])}, not DKIM1"), None
    hashes = _colon_list(key.get("h"))
    if hashes and b"sha256" not in hashes:
        why = f"the key at {where} does not allow sha256 (h= of the key record)"
        return ("permerror", why), None
    services = _colon_list(key.get("s"))
    if services and b"*" not in services and b"email" not in services:
        return ("permerror", f"the key at {where} is not for email (s= of the key record)"), None
    key_type = key.get("k", b"rsa").lower()
    wanted = ALGORITHMS[algorithm]
    if key_type not in (b"rsa", b"ed25519"):
        why = f"the key at {where} has an unknown key type k={_show(key_type)}"
        return ("permerror", why), None
    if key_type.decode() != wanted:
        why = f"the key at {where} is k={key_type.decode()} but the signature is a={algorithm}"
        return ("permerror", why), None
    flags = _colon_list(key.get("t"))
    if b"s" in flags and outside:
        why = f"the key at {where} has t=s, so i= must be in exactly d={domain}"
        return ("permerror", why), None
    revoked, data = _key_data(key["p"])
    if revoked:
        return ("permerror", f"the key at {where} is revoked (empty p=, RFC 6376 3.6.1)"), None
    if data is None:
        return ("permerror", f"the key at {where} is not valid base64"), None
    if len(data) > MAX_KEY_OCTETS:
        why = f"the key at {where} is absurdly large ({len(data)} octets)"
        return ("permerror", why), None
    if key_type == b"ed25519":
        if len(data) != 32:
            return ("permerror", f"the Ed25519 key at {where} is not 32 octets (RFC 8463 4)"), None
        return None, 256
    return _check_rsa(where, data)


def _check_rsa(where: str, data: bytes) -> tuple[tuple[str, str] | None, int | None]:
    public = rsa_numbers(data)
    if isinstance(public, str):
        return ("permerror", f"the RSA key at {where} cannot be read ({public})"), None
    modulus, exponent, usable = public
    bits = modulus.bit_length()
    if bits > MAX_RSA_BITS:
        return (
            "permerror",
            f"RSA key of {bits} bits is absurdly large (over {MAX_RSA_BITS})",
        ), bits
    if exponent.bit_length() > MAX_RSA_EXPONENT_BITS or exponent < 3:
        return ("permerror", f"the RSA key at {where} has an unusable public exponent"), bits
    if bits < MIN_RSA_BITS:
        why = f"RSA key of {bits} bits is too weak (RFC 8301 3.2 requires {MIN_RSA_BITS}+)"
        return ("policy", why), bits
    if not usable:
        why = f"the RSA key at {where} is not a usable RSA key (even n or e, e >= n)"
        return ("permerror", why), bits
    return None, bits


@functools.lru_cache(maxsize=256)
def _key_data(p: bytes) -> tuple[bool, bytes | None]:
    """Whether a key record's p= is empty (white space ignored: a revoked key), and its
    octets (None if it is not base64)."""
    p = _no_space(p)
    try:
        return not p, base64.b64decode(p, validate=True)
    except (binascii.Error, ValueError):
        return False, None


@functools.lru_cache(maxsize=256)
def rsa_numbers(data: bytes) -> tuple[int, int, bool] | str:
    """(modulus, exponent, whether OpenSSL takes them) of a DER RSA public key as dkimpy
    reads it, parsed once per key (cached by its octets), or the name of the error."""
    try:
        public = parse_public_key(data)
        modulus, exponent = int(public["modulus"]), int(public["publicExponent"])
    except (UnparsableKeyError, KeyError, TypeError, ValueError, IndexError) as e:
        return e.__class__.__name__
    return modulus, exponent, opensslverify.rsa_usable(modulus, exponent)


# -- the cryptography (dkimpy's steps, OpenSSL's RSA), inline or in a thread ---------------------


def _crypto(
    message: bytes,
    signatures: list[_Signature],
    parsed: opensslverify.ParsedMessage | None = None,
) -> None:
    """Each signature's cryptography, with the key records fetched above: ours (``dkimfast``)
    for the signatures and keys it takes, else dkimpy's steps (``opensslverify``: OpenSSL's
    RSA); both share the message's parse (``parsed``, if the caller has it) and body hashes."""
    if parsed is None:
        try:
            parsed = opensslverify.parse(message)
        except Exception as e:
            for sig in signatures:
                sig.decide("permerror", f"the message cannot be parsed for DKIM ({e})")
            return
    sig_fields = [(n, v) for n, v in parsed.headers if n.lower() == b"dkim-signature"]
    verifier: opensslverify.Verifier | None = None
    for sig in signatures:
        record = sig.record
        if record is None:  # never: only signatures with a record reach here
            sig.decide("permerror", "not judged (no key record)")
            continue
        if FAST and sig.key_tags is not None and dkimfast.usable(sig.tags, sig.key_tags):
            sig_field = sig_fields[sig.index]
            b, bh = sig.decoded["b"], sig.decoded["bh"]
            check = functools.partial(dkimfast.verify, parsed, sig_field, sig.tags, record, b, bh)
        else:
            if verifier is None:
                verifier = opensslverify.Verifier(parsed, minkey=MIN_RSA_BITS)
            check = functools.partial(verifier.verify, idx=sig.index, dnsfunc=_answer(record))
        _judge_crypto(sig, check)


def _answer(record: bytes) -> Callable[..., bytes]:
    """dkimpy's ``dnsfunc``: the key record fetched already, whatever the name."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        return record

    return dnsfunc


FAST = True  # dkimfast for the signatures it takes (tests turn it off to compare with dkimpy)


def _judge_crypto(sig: _Signature, check: Callable[[], bool]) -> None:
    try:
        ok = check()
    except dkim.ValidationError as e:
        sig.decide(*_validation_reason(sig, str(e)))
        return
    except dkim.DKIMException as e:
        sig.decide("permerror", f"the signature cannot be checked: {e}")
        return
    except Exception as e:  # dkimpy on input it did not expect: a result, not a traceback
        sig.unexpected = e  # logged by the caller, on the reactor thread
        sig.decide("permerror", f"the signature cannot be checked ({e.__class__.__name__})")
        return
    if ok:
        sig.decide("pass", _pass_reason(sig))
    else:
        sig.decide(
            "fail",
            "signature did not verify: a signed header field changed after signing "
            "(or b= was not made with this key)",
        )


def _validation_reason(sig: _Signature, text: str) -> tuple[str, str]:
    if text.startswith("body hash mismatch"):
        why = "the body changed after signing"
        if "l" in sig.tags:
            why += " (within the l= length signed)"
        return "fail", f"body hash did not verify: {why}"
    return "permerror", f"the signature is not valid: {text}"


def _pass_reason(sig: _Signature) -> str:
    kind = "Ed25519" if sig.algorithm.startswith("ed25519") else f"RSA-{sig.key_bits}"
    reason = f"signature verified with the {kind} key at {sig.key_name}"
    if "l" in sig.tags:
        reason += "; only part of the body is signed (l=), the rest may have been added"
    return reason


# -- small helpers ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _domain(value: bytes) -> str | ValueError:
    """d= as a domain name (lower case, A-labels), or why it is not one (kept, not raised:
    cached by the value, as the same signers come back)."""
    try:
        return _read_domain(value)
    except (ValueError, UnicodeError) as e:
        return ValueError(str(e))


def _read_domain(value: bytes) -> str:
    text = value.decode("utf-8", "strict").strip().rstrip(".")
    if not text or not re.fullmatch(r"[^\s()<>\[\]:;@\\,\"]+", text):
        raise ValueError(f"'{_show(value)}'")
    try:
        domain = normalise_domain(text)
    except AddressError as e:
        raise ValueError(str(e)) from None
    if "." not in domain:
        raise ValueError(f"'{domain}' has a single label")
    return domain


def _colon_list(value: bytes | None) -> list[bytes]:
    if value is None:
        return []
    return [p for p in (_WSP.sub(b"", x).lower() for x in value.split(b":")) if p]


def _no_space(value: bytes) -> bytes:
    """``value`` without any white space (\\s: SP, HTAB, CR, LF, VT, FF), as ``\\s+`` removed."""
    return b"".join(value.split())


def _show(value: bytes, limit: int = 40) -> str:
    """A value from the message, cut short for a reason."""
    text = value.decode("utf-8", "replace").replace("\r", " ").replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


def _when(seconds: int) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{seconds} seconds after 1970"


__all__ = ["SignatureResult", "TagListError", "parse_tags", "verify_at_once", "verify_dkim"]
