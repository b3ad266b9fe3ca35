"""checks.opensslverify: DKIM and ARC verification with OpenSSL's RSA and the work shared per
message gives what dkimpy's own ``verify`` gives (a differential test over generated, signed and
then mutated messages), never calls dkimpy's Python RSA, hashes each body once per
canonicalisation and reads each key record once."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from unittest import mock

import dkim
import dkim.crypto
from dkim.canonicalization import Relaxed
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks import arc, dkimverify, opensslsign, opensslverify
from mailhub.checks.keys import RSA_SHA256, SigningKey
from mailhub.checks.results import AuthenticationResults, MethodResult
from tests.support.checkdns import MemoryResolver
from tests.support.dkimkeys import ed25519_key, message, rsa_key

T = TypeVar("T")

KEY_NAME = b"sel._domainkey.example.com."


def run(case: SynchronousTestCase, coro: Coroutine[Any, Any, T]) -> T:
    return case.successResultOf(defer.Deferred.fromCoroutine(coro))


def dnsfunc_for(record: bytes) -> Callable[..., bytes]:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        return record if name.lower() == KEY_NAME else b""

    return dnsfunc


def outcome(verify: Callable[[], Any]) -> tuple[str, str]:
    """A verify call's result, or the exception it raised, as comparable text."""
    try:
        return "result", repr(verify())
    except Exception as e:
        return e.__class__.__name__, str(e)


def dkimpy_dkim(msg: bytes, record: bytes, idx: int = 0) -> tuple[str, str]:
    return outcome(lambda: dkim.DKIM(msg, minkey=1024).verify(idx=idx, dnsfunc=dnsfunc_for(record)))


def ours_dkim(msg: bytes, record: bytes, idx: int = 0) -> tuple[str, str]:
    def verify() -> Any:
        verifier = opensslverify.Verifier(opensslverify.parse(msg), minkey=1024)
        return verifier.verify(idx=idx, dnsfunc=dnsfunc_for(record))

    return outcome(verify)


# -- generated messages ---------------------------------------------------------------------

_TEXT = st.text(alphabet=st.sampled_from("abcXYZ019 .,;:<>@=\t-"), min_size=0, max_size=30).map(
    lambda s: s.encode("ascii")
)
_NAMES = st.sampled_from([b"To", b"Subject", b"Cc", b"X-Thing", b"Reply-To", b"Date", b"subject"])


@st.composite
def header_fields(draw: st.DrawFn) -> list[bytes]:
    fields = [b"From: " + draw(_TEXT) + b" <a@example.com>\r\n"]
    for _ in range(draw(st.integers(0, 5))):
        value = draw(_TEXT)
        if draw(st.booleans()):
            value += b"\r\n" + draw(st.sampled_from([b" ", b"\t", b"  "])) + draw(_TEXT)
        fields.append(draw(_NAMES) + draw(st.sampled_from([b":", b": ", b":\t"])) + value + b"\r\n")
    order = draw(st.permutations(range(len(fields))))
    return [fields[i] for i in order]


_BODY_LINE = st.text(alphabet=st.sampled_from("ab \t.xyZ"), max_size=40).map(
    lambda s: s.encode("ascii")
)
_BODIES = st.lists(_BODY_LINE, max_size=12).map(lambda lines: b"".join(x + b"\r\n" for x in lines))

_CANON = st.sampled_from(
    [
        (b"relaxed", b"relaxed"),
        (b"simple", b"simple"),
        (b"relaxed", b"simple"),
        (b"simple", b"relaxed"),
    ]
)


SKIPPED = (b"x-thing", b"dkim-signature", b"arc-seal")


def _sign(
    msg: bytes, algorithm: bytes, canon: tuple[bytes, bytes], length: bool, extra_from: bool
) -> bytes:
    if algorithm == b"ed25519-sha256":
        signer = dkim.DKIM(msg)
        key = ed25519_key()[0]
    else:
        signer = opensslsign.DKIMSigner(msg)  # byte-identical to dkimpy's (test_opensslsign)
        key = rsa_key()[0]
    # every field but X-Thing is signed (so X-Thing may change freely)
    include = [x.lower() for x, _ in signer.headers if x.lower() not in SKIPPED]
    if extra_from:
        include.append(b"from")
    header = signer.sign(
        b"sel",
        b"example.com",
        key,
        signature_algorithm=algorithm,
        canonicalize=canon,
        include_headers=include,
        length=length,
    )
    return bytes(header) + msg


def _replace_tag(msg: bytes, tag: bytes, value: bytes) -> bytes:
    """The first DKIM-Signature's ``tag=`` value replaced (or added before b=)."""
    head, sep, rest = msg.partition(b"\r\n\r\n")
    pattern = re.compile(rb"([;\s]" + tag + rb"=)[^;]*", re.S)
    end = re.search(rb"\r?\n(?![ \t])", head)  # the end of the first field (the signature)
    first_sig_end = end.start() if end else len(head)
    sig, others = head[:first_sig_end], head[first_sig_end:]
    if pattern.search(sig):
        sig = pattern.sub(lambda m: m.group(1) + value, sig, count=1)
    else:
        sig = sig.replace(b" b=", b" " + tag + b"=" + value + b"; b=", 1)
    return sig + others + sep + rest


MUTATIONS: list[Callable[[bytes, Any], bytes]] = [
    lambda m, d: m,
    lambda m, d: m + d.draw(_BODY_LINE) + b"\r\n",  # appended to the body
    lambda m, d: m + b"\r\n\r\n",  # empty lines at the end
    lambda m, d: m.replace(b"\r\n\r\n", b"\r\n\r\n \t", 1),  # white space at the body's start
    lambda m, d: m[:-3] + b" \t" + m[-3:] if len(m) > 3 else m,
    lambda m, d: m.replace(b"a", b"A", 1),
    lambda m, d: m.replace(b"From:", b"From:  ", 1),  # white space in a signed header
    lambda m, d: m.replace(b"From:", b"FROM:", 1),  # the case of a field name
    lambda m, d: m.replace(b"\r\n\r\n", b"\r\nFrom: evil@example.org\r\n\r\n", 1),
    lambda m, d: b"From: evil@example.org\r\n" + m,  # a second From on top
    lambda m, d: m.replace(b"\r\n\r\n", b"\r\nX-Added: 1\r\n\r\n", 1),
    lambda m, d: m.replace(b"Subject:", b"Subject: re:", 1),
    lambda m, d: m.replace(b"\r\n ", b"\r\n  ", 1),  # refolded
    lambda m, d: m.replace(b"\r\n", b"\n"),  # line endings
    lambda m, d: _replace_tag(m, b"c", d.draw(st.sampled_from([b"simple", b"relaxed", b"x/y"]))),
    lambda m, d: _replace_tag(m, b"l", d.draw(st.sampled_from([b"0", b"5", b"100", b"x"]))),
    lambda m, d: _replace_tag(m, b"h", b"from:to:subject"),
    lambda m, d: _replace_tag(m, b"a", b"rsa-sha256"),
    lambda m, d: _replace_tag(m, b"a", b"ed25519-sha256"),
    lambda m, d: _replace_tag(m, b"a", b"rsa-sha1"),
    lambda m, d: _replace_tag(m, b"bh", b"2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8="),
    lambda m, d: _replace_tag(m, b"b", b"AAAA"),
    lambda m, d: _replace_tag(
        m, b"b", base64.b64encode(d.draw(st.binary(min_size=64, max_size=64)))
    ),
    lambda m, d: _replace_tag(m, b"s", b"other"),
    lambda m, d: _flip_b(m, d.draw(st.integers(0, 500))),
]


def _flip_b(msg: bytes, at: int) -> bytes:
    start = msg.find(b" b=") + 3
    end = msg.find(b"\r\n", msg.find(b"b=", start - 3) + 3)
    chars = bytearray(msg)
    where = start + at % max(1, end - start)
    if chr(chars[where]).isalnum():
        chars[where] = ord("B") if chars[where] != ord("B") else ord("C")
    return bytes(chars)


class _Simplest:
    """Stands in for hypothesis' data: each draw gives the strategy's simplest value."""

    found: dict[str, Any] = {}

    def draw(self, strategy: st.SearchStrategy[T]) -> T:
        key = repr(strategy)
        if key not in self.found:
            self.found[key] = find(strategy, lambda _: True)
        value: T = self.found[key]
        return value


class DifferentialDKIM(SynchronousTestCase):
    """For every generated message, ours and dkimpy's verify agree: pass, fail or the same
    exception with the same words (dkimverify turns those into its results)."""

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        fields=header_fields(),
        body=_BODIES,
        algorithm=st.sampled_from([b"rsa-sha256", b"ed25519-sha256"]),
        canon=_CANON,
        length=st.booleans(),
        extra_from=st.booleans(),
        mutations=st.lists(st.integers(0, len(MUTATIONS) - 1), max_size=3),
        data=st.data(),
    )
    def test_same_as_dkimpy(
        self,
        fields: list[bytes],
        body: bytes,
        algorithm: bytes,
        canon: tuple[bytes, bytes],
        length: bool,
        extra_from: bool,
        mutations: list[int],
        data: st.DataObject,
    ) -> None:
        msg = b"".join(fields) + b"\r\n" + body
        try:
            signed = _sign(msg, algorithm, canon, length, extra_from)
        except dkim.DKIMException:
            return  # dkimpy would not sign it (e.g. no From it accepts): nothing to compare
        for m in mutations:
            signed = MUTATIONS[m](signed, data)
        record = (ed25519_key() if algorithm == b"ed25519-sha256" else rsa_key())[1]
        theirs = dkimpy_dkim(signed, record)
        ours = ours_dkim(signed, record)
        self.assertEqual(ours, theirs, (mutations, signed))
        if not mutations:
            self.assertEqual(ours, ("result", "True"))

    def test_every_mutation_alone(self) -> None:
        """Each mutation on its own, for both algorithms and every c=, with and without l=
        (the generated cases above combine them at random)."""
        results = set()
        fixed = _Simplest()  # draws for the mutations that take one
        for algorithm in (b"rsa-sha256", b"ed25519-sha256"):
            record = (ed25519_key() if algorithm == b"ed25519-sha256" else rsa_key())[1]
            for canon in (
                (b"relaxed", b"relaxed"),
                (b"simple", b"simple"),
                (b"simple", b"relaxed"),
            ):
                for length in (False, True):
                    msg = message(extra=b"Cc: c@example.net,\r\n\td@example.net\r\n")
                    signed = _sign(msg, algorithm, canon, length, False)
                    for i, mutate in enumerate(MUTATIONS):
                        changed = mutate(signed, fixed)
                        ours = ours_dkim(changed, record)
                        self.assertEqual(ours, dkimpy_dkim(changed, record), (i, changed))
                        results.add(ours[0] + ours[1][:5])
        self.assertLessEqual({"resultTrue", "resultFalse", "ValidationErrorbody "}, results)

    def test_both_signatures_of_a_dual_signed_message(self) -> None:
        msg = message(body=b"Two  signatures\r\n\r\n")
        signed = _sign(msg, b"ed25519-sha256", (b"relaxed", b"relaxed"), False, False)
        signed = _sign(signed, b"rsa-sha256", (b"relaxed", b"relaxed"), False, False)
        for idx, record in ((0, rsa_key()[1]), (1, ed25519_key()[1])):
            self.assertEqual(ours_dkim(signed, record, idx), ("result", "True"))
            self.assertEqual(dkimpy_dkim(signed, record, idx), ("result", "True"))

    def test_rfc8463_example(self) -> None:
        from tests.support.dkimkeys import RFC8463_MESSAGE, RFC8463_RECORDS

        for idx, name in enumerate(["brisbane", "test"]):
            record = RFC8463_RECORDS[f"{name}._domainkey.football.example.com"]

            def dnsfunc(n: bytes, timeout: float = 5, record: bytes = record) -> bytes:
                return record

            def verify(idx: int = idx, dnsfunc: Callable[..., bytes] = dnsfunc) -> Any:
                parsed = opensslverify.parse(RFC8463_MESSAGE)
                # RFC 8463's RSA key has 1024 bits; dkimpy's default minimum
                return opensslverify.Verifier(parsed).verify(idx=idx, dnsfunc=dnsfunc)

            self.assertEqual(outcome(verify), ("result", "True"))

    def test_non_canonical_rsa_signature_length(self) -> None:
        """The one deliberate difference: b= with a zero octet in front of a valid signature.
        RFC 8017 8.2.2 step 1 says the signature must be as long as the modulus; OpenSSL (and
        OpenDKIM) refuse it, dkimpy's integer arithmetic accepts it."""
        signed = _sign(message(), b"rsa-sha256", (b"relaxed", b"relaxed"), False, False)
        b = re.search(rb" b=([A-Za-z0-9+/=\s]+?)\r\n(?! )", signed)
        assert b is not None
        raw = base64.b64decode(re.sub(rb"\s+", b"", b.group(1)))
        longer = _replace_tag(signed, b"b", base64.b64encode(b"\x00" + raw))
        record = rsa_key()[1]
        self.assertEqual(dkimpy_dkim(longer, record), ("result", "True"))
        self.assertEqual(ours_dkim(longer, record), ("result", "False"))
        self.assertEqual(ours_dkim(signed, record), ("result", "True"))


# -- ARC --------------------------------------------------------------------------------------

FIRST = SigningKey("forwarder.example", "arc", RSA_SHA256, rsa_key()[0])
SECOND = SigningKey("list.example.org", "seal", RSA_SHA256, rsa_key()[0])


def _arc_dns() -> MemoryResolver:
    return MemoryResolver(
        txt={
            "arc._domainkey.forwarder.example": [rsa_key()[1]],
            "seal._domainkey.list.example.org": [rsa_key()[1]],
            "sel._domainkey.example.com": [rsa_key()[1]],
        }
    )


def _arc_dnsfunc(name: bytes, timeout: float = 5) -> bytes:
    known = {b"arc._domainkey.forwarder.example.", b"seal._domainkey.list.example.org."}
    return rsa_key()[1] if name.lower() in known else b""


def _arc_outcome(verify: Callable[[], Any]) -> tuple[str, str]:
    def summary() -> Any:
        cv, data, reason = verify()
        valid = [(d.get("instance"), d.get("as-valid"), d.get("ams-valid")) for d in data]
        return cv, valid, reason

    return outcome(summary)


class DifferentialARC(SynchronousTestCase):
    def setUp(self) -> None:
        dns = _arc_dns()
        self.chains: list[bytes] = []
        msg = _sign(message(), b"rsa-sha256", (b"relaxed", b"relaxed"), False, False)
        for key, authserv in ((FIRST, "mx.forwarder.example"), (SECOND, "mx.list.example.org")):
            found = run(self, arc.verify_arc(dns, msg))
            ar = AuthenticationResults(
                authserv, (MethodResult("spf", "pass", ""), found.method_result())
            )
            msg = arc.arc_seal(msg, key, authserv, ar) + msg
            self.chains.append(msg)

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        which=st.integers(0, 1),
        mutations=st.lists(st.integers(0, len(MUTATIONS) - 1), max_size=3),
        data=st.data(),
    )
    def test_same_as_dkimpy(self, which: int, mutations: list[int], data: st.DataObject) -> None:
        msg = self.chains[which]
        for m in mutations:
            msg = MUTATIONS[m](msg, data)
        theirs = _arc_outcome(lambda: dkim.ARC(msg, minkey=1024).verify(dnsfunc=_arc_dnsfunc))

        def ours() -> Any:
            verifier = opensslverify.ARCVerifier(opensslverify.parse(msg), minkey=1024)
            return verifier.verify(dnsfunc=_arc_dnsfunc)

        self.assertEqual(_arc_outcome(ours), theirs, mutations)
        if not mutations:
            self.assertEqual(theirs[1].split(",")[0], "(b'pass'")


# -- no Python RSA, work shared -----------------------------------------------------------------


def _no_python_rsa() -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("dkimpy's Python RSA called on the verification path")

    patches = [
        mock.patch.object(dkim, "RSASSA_PKCS1_v1_5_verify", refuse),
        mock.patch.object(dkim.crypto, "RSASSA_PKCS1_v1_5_verify", refuse),
        mock.patch.object(dkim.crypto, "rsa_encrypt", refuse),
        mock.patch.object(dkim.crypto, "EMSA_PKCS1_v1_5_encode", refuse),
    ]
    return patches


class NoPythonRSA(SynchronousTestCase):
    def setUp(self) -> None:
        self.dns = _arc_dns()
        signed = _sign(message(), b"rsa-sha256", (b"relaxed", b"relaxed"), False, False)
        found = run(self, arc.verify_arc(self.dns, signed))
        ar = AuthenticationResults("mx.forwarder.example", (found.method_result(),))
        self.sealed = arc.arc_seal(signed, FIRST, "mx.forwarder.example", ar) + signed
        for patch in _no_python_rsa():
            patch.start()
            self.addCleanup(patch.stop)

    def test_patches_bite(self) -> None:
        """dkimpy's own verify goes through the patched functions (so the patches matter)."""
        self.assertEqual(dkimpy_dkim(self.sealed, rsa_key()[1], 0)[0], "AssertionError")

    def test_dkim(self) -> None:
        results = run(self, dkimverify.verify_dkim(self.dns, self.sealed))
        self.assertEqual([r.result for r in results], ["pass"])

    def test_arc(self) -> None:
        found = run(self, arc.verify_arc(self.dns, self.sealed))
        self.assertEqual((found.result, found.instances), ("pass", 1), found.reason)

    def test_a_changed_message_still_fails_without_python_rsa(self) -> None:
        changed = self.sealed.replace(b"Subject: lunch", b"Subject: dinner")
        results = run(self, dkimverify.verify_dkim(self.dns, changed))
        self.assertEqual([r.result for r in results], ["fail"])
        self.assertEqual(run(self, arc.verify_arc(self.dns, changed)).result, "fail")


class SharedWork(SynchronousTestCase):
    def test_body_canonicalised_and_hashed_once_for_two_signatures(self) -> None:
        msg = message(body=b"one  body\r\n")
        signed = _sign(msg, b"ed25519-sha256", (b"relaxed", b"relaxed"), False, False)
        signed = _sign(signed, b"rsa-sha256", (b"relaxed", b"relaxed"), False, False)
        parsed = opensslverify.parse(signed)
        original = Relaxed.canonicalize_body
        # "one  body" has two spaces in a row: dkimpy's relaxed canonicalisation runs
        with mock.patch.object(Relaxed, "canonicalize_body", side_effect=original) as canon:
            verifier = opensslverify.Verifier(parsed)
            ok = [
                verifier.verify(idx=0, dnsfunc=dnsfunc_for(rsa_key()[1])),
                verifier.verify(idx=1, dnsfunc=dnsfunc_for(ed25519_key()[1])),
            ]
        self.assertEqual(ok, [True, True])
        self.assertEqual(canon.call_count, 1)
        self.assertEqual(len(parsed._body_hashes), 1)

    def test_l_and_c_get_their_own_hash(self) -> None:
        msg = message(body=b"one  body\r\nmore\r\n")
        signed = _sign(msg, b"rsa-sha256", (b"relaxed", b"relaxed"), True, False)
        signed = _sign(signed, b"rsa-sha256", (b"relaxed", b"simple"), False, False)
        signed = _sign(signed, b"rsa-sha256", (b"relaxed", b"relaxed"), False, False)
        parsed = opensslverify.parse(signed)
        verifier = opensslverify.Verifier(parsed)
        ok = [verifier.verify(idx=i, dnsfunc=dnsfunc_for(rsa_key()[1])) for i in range(3)]
        self.assertEqual(ok, [True, True, True])
        self.assertEqual(len(parsed._body_hashes), 3)

    def test_dkim_and_arc_share_the_parse_and_body_hash(self) -> None:
        dns = _arc_dns()
        signed = _sign(
            message(body=b"x\r\n"), b"rsa-sha256", (b"relaxed", b"relaxed"), False, False
        )
        found = run(self, arc.verify_arc(dns, signed))
        ar = AuthenticationResults("mx.forwarder.example", (found.method_result(),))
        sealed = arc.arc_seal(signed, FIRST, "mx.forwarder.example", ar) + signed
        opensslverify._parse_cached.cache_clear()
        canonical = opensslverify._canonical_body
        with mock.patch.object(opensslverify, "_canonical_body", side_effect=canonical) as canon:
            self.assertEqual(
                [r.result for r in run(self, dkimverify.verify_dkim(dns, sealed))], ["pass"]
            )
            self.assertEqual(run(self, arc.verify_arc(dns, sealed)).result, "pass")
            self.assertEqual(canon.call_count, 1)
        self.assertEqual(opensslverify._parse_cached.cache_info().misses, 1)

    def test_key_record_read_once(self) -> None:
        opensslverify._read_record.cache_clear()
        dkimverify.rsa_numbers.cache_clear()
        dkimverify._key_record.cache_clear()
        dkimverify._check_key.cache_clear()
        dns = MemoryResolver(txt={"sel._domainkey.example.com": [rsa_key()[1]]})
        with (
            mock.patch.object(dkim, "evaluate_pk", wraps=dkim.evaluate_pk) as evaluate,
            mock.patch.object(
                dkimverify, "parse_public_key", wraps=dkimverify.parse_public_key
            ) as asn1,
        ):
            for body in (b"first\r\n", b"second\r\n", b"third\r\n"):
                signed = _sign(
                    message(body=body), b"rsa-sha256", (b"relaxed", b"relaxed"), False, False
                )
                results = run(self, dkimverify.verify_dkim(dns, signed))
                self.assertEqual([r.result for r in results], ["pass"])
        self.assertEqual(evaluate.call_count, 1)
        self.assertEqual(asn1.call_count, 1)

    def test_key_errors_are_raised_each_time(self) -> None:
        for _ in range(2):
            with self.assertRaises(dkim.KeyFormatError):
                opensslverify.public_key(b"v=DKIM1; k=rsa; p=AAAA")

    def test_big_message_is_not_kept(self) -> None:
        opensslverify._parse_cached.cache_clear()
        big = message(body=b"x" * (opensslverify.CACHED_MESSAGE + 10))
        self.assertEqual(opensslverify.parse(big).body[:3], b"xxx")
        self.assertEqual(opensslverify._parse_cached.cache_info().currsize, 0)


_PIECES = st.sampled_from(
    [
        *(b"From: a", b"To:b", b" folded", b"\tmore", b"X: y  z ", b"From x", b"", b"body \t x"),
        # names rfc822_parse reads only up to the first ":", or not at all
        *(b"\r", b":x", b"::y", b"A:", b"N a: v", b"\x7fX: y", b"X:: y", b"no colon", b"From a:b"),
    ]
)
_ENDS = st.sampled_from([b"\r\n", b"\n", b"\r\r\n", b""])


class ParseLikeDkimpy(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(st.lists(st.tuples(_PIECES, _ENDS), max_size=12))
    def test_same_headers_and_body(self, lines: list[tuple[bytes, bytes]]) -> None:
        """opensslverify.parse (header section parsed alone, the body kept when its line
        ends are CRLF already) reads any message as dkim.rfc822_parse does."""
        msg = b"".join(a + b for a, b in lines)
        theirs = outcome(lambda: [(bytes(n), bytes(v)) for n, v in dkim.rfc822_parse(msg)[0]])
        ours = outcome(lambda: opensslverify._parse(msg).headers)
        self.assertEqual(ours, theirs)
        if theirs[0] == "result":
            self.assertEqual(opensslverify._parse(msg).body, dkim.rfc822_parse(msg)[1])

    @settings(max_examples=400, deadline=None)
    @given(st.lists(_PIECES, max_size=12))
    def test_crlf_only_as_dkimpy(self, lines: list[bytes]) -> None:
        """The same with CRLF line ends only (most mail: the header section's fields are then
        split at once, ``_crlf_fields``, where rfc822_parse would neither raise nor skip)."""
        msg = b"".join(line + b"\r\n" for line in lines) + b"\r\nbody\r\n"
        theirs = outcome(lambda: [(bytes(n), bytes(v)) for n, v in dkim.rfc822_parse(msg)[0]])
        self.assertEqual(outcome(lambda: opensslverify._parse(msg).headers), theirs)

    @settings(max_examples=400, deadline=None)
    @given(st.lists(st.sampled_from([b"a", b" ", b"\t", b"  ", b"\r\n", b"x y"]), max_size=30))
    def test_relaxed_body_as_dkimpy(self, pieces: list[bytes]) -> None:
        body = b"".join(pieces)
        ours = opensslverify._canonical_body(Relaxed, body)
        self.assertEqual(ours, Relaxed.canonicalize_body(body))

    @settings(max_examples=1000, deadline=None)
    @given(
        st.lists(
            st.sampled_from(
                [b"b", b"=", b" ", b"\t", b"\r\n", b"\n", b"\r", b";", b"aZ9", b"+/", b"h", b":"]
            ),
            max_size=40,
        )
    )
    def test_b_value_emptied_as_dkimpy(self, pieces: list[bytes]) -> None:
        """opensslverify's b= expression removes what dkimpy's RE_BTAG removes, and leaves
        RE_BTAG nothing to change."""
        value = b"".join(pieces)
        theirs = dkim.RE_BTAG.sub(b"\\1", value)
        ours = opensslverify._B_VALUE.sub(b"\\1", value)
        self.assertEqual(ours, theirs)
        self.assertEqual(dkim.RE_BTAG.sub(b"\\1", ours), theirs)
