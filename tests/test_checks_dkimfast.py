"""checks.dkimfast: our own DKIM signature check gives what the dkimpy way gives (result and
reason, through ``verify_dkim``), on generated messages signed, mutated and signed again with
odd tag and key-record forms; it is really taken for ordinary mail (dkimpy's DKIM object is not
made), and dkimpy still judges what ``usable`` leaves to it."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import dkim
import dkim.util
import nacl.signing
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks import dkimfast, dkimverify, opensslverify
from mailhub.checks.dkimverify import SignatureResult, verify_dkim
from tests.support.checkdns import MemoryResolver
from tests.support.dkimkeys import (
    RFC8463_MESSAGE,
    RFC8463_RECORDS,
    ed25519_key,
    message,
    rsa_key,
    sign,
)
from tests.test_checks_opensslverify import (
    _BODIES,
    _CANON,
    MUTATIONS,
    _replace_tag,
    _sign,
    _Simplest,
    header_fields,
)

T = TypeVar("T")

KEY = "sel._domainkey.example.com"


def run(case: SynchronousTestCase, coro: Coroutine[Any, Any, T]) -> T:
    return case.successResultOf(defer.Deferred.fromCoroutine(coro))


def both_ways(
    case: SynchronousTestCase, msg: bytes, records: list[bytes]
) -> tuple[list[SignatureResult], list[SignatureResult]]:
    """``verify_dkim``'s results with dkimfast, then with every signature left to dkimpy."""
    dns = MemoryResolver(txt={KEY: records})
    fast = run(case, verify_dkim(dns, msg))
    case.patch(dkimverify, "FAST", False)
    try:
        slow = run(case, verify_dkim(dns, msg))
    finally:
        case.patch(dkimverify, "FAST", True)
    return fast, slow


# -- signing again after a tag was changed (dkimpy's own hashing: what it would accept) --------


def resign(msg: bytes, algorithm: bytes) -> bytes:
    """``msg`` with its first DKIM-Signature's bh= and b= made anew for the tags it now has,
    by dkimpy's canonicalisation and header hashing, so that a changed tag (c=, h=, i=, l=...)
    still gives a signature dkimpy accepts. Unchanged when dkimpy cannot read the tags."""
    try:
        parsed = dkim.DKIM(msg)
        name, value = next((n, v) for n, v in parsed.headers if n.lower() == b"dkim-signature")
        tags = dkim.util.parse_tag_value(value)
        policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
        body = policy.canonicalize_body(parsed.body)
        if b"l" in tags:
            body = body[: int(tags[b"l"])]
    except Exception:
        return msg
    msg = _replace_tag(msg, b"bh", base64.b64encode(hashlib.sha256(body).digest()))
    parsed = dkim.DKIM(msg)
    name, value = next((n, v) for n, v in parsed.headers if n.lower() == b"dkim-signature")
    tags = dkim.util.parse_tag_value(value)
    include = [x.lower() for x in re.split(rb"\s*:\s*", tags[b"h"])]
    if b"from" in include:
        include.append(b"from")
    h = hashlib.sha256()
    headers = policy.canonicalize_headers(parsed.headers)
    dkim.hash_headers(h, policy, headers, include, (name, value), tags)
    if algorithm == b"ed25519-sha256":
        seed = base64.b64decode(ed25519_key()[0])
        signature = nacl.signing.SigningKey(seed).sign(h.digest()).signature
    else:
        key = serialization.load_pem_private_key(rsa_key()[0], None)
        assert isinstance(key, rsa.RSAPrivateKey)
        signature = key.sign(h.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    return _replace_tag(msg, b"b", base64.b64encode(signature))


NOW = int(time.time())

# Tag values in the forms dkimpy reads as we do, and in the odd ones it does not.
TAG_CHANGES: list[tuple[bytes, list[bytes]]] = [
    (b"c", [b"relaxed", b"simple", b"relaxed/relaxed", b"Relaxed/simple", b"relaxed/\r\n simple"]),
    (b"a", [b"RSA-SHA256", b"Ed25519-SHA256"]),
    (b"q", [b"dns/txt", b"DNS/TXT", b"dns/txt\r\n "]),
    (
        b"i",
        [
            b"@example.com",
            b"@Sub.Example.com",
            b"user@EXAMPLE.COM",
            b"@example.com.",
            b"x@other.example",
            b"@\r\n example.com",
            b"example.com",
            b"@xexample.com",
        ],
    ),
    (b"d", [b"Example.COM", b"example.com.", b"example.\r\n com"]),
    (b"t", [str(NOW).encode(), str(NOW + 100000).encode(), b"0", str(NOW + 20000).encode()]),
    (b"x", [str(NOW + 1000).encode(), str(NOW - 100).encode(), str(NOW - 100000).encode()]),
    (b"l", [b"0", b"5", b"1000000"]),
    (
        b"h",
        [
            b"from:to",
            b"From : To",
            b"from:from:subject:subject",
            b"from:\r\n\tto",
            b"from:x-none:x-none",
            b"subject:from:cc:date",
            b"fr\r\n om:to",
        ],
    ),
    (b"v", [b"1", b"2"]),
]

RECORD_CHANGES: list[Callable[[bytes], bytes]] = [
    lambda r: r,
    lambda r: r.replace(b"k=rsa", b"k=RSA").replace(b"k=ed25519", b"k=ED25519"),
    lambda r: r.replace(b"v=DKIM1; ", b""),
    lambda r: r + b"; s=email",
    lambda r: r + b"; s=*",
    lambda r: r + b"; s=email:tlsrpt",
    lambda r: r + b"; s=tlsrpt",
    lambda r: r + b"; t=y",
    lambda r: r + b"; t=s",
    lambda r: r + b"; h=sha1:sha256",
    lambda r: r.replace(b"p=", b"p= ", 1)[:-10] + b" \t " + r[-10:],
]


class SameAsDkimpy(SynchronousTestCase):
    """For every generated message and key record, ``verify_dkim`` gives the same results,
    reasons included, with our check and with dkimpy's (which tests/test_checks_opensslverify.py
    compares with dkimpy's own ``verify``)."""

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        fields=header_fields(),
        body=_BODIES,
        algorithm=st.sampled_from([b"rsa-sha256", b"ed25519-sha256"]),
        canon=_CANON,
        length=st.booleans(),
        extra_from=st.booleans(),
        changes=st.lists(
            st.tuples(st.integers(0, len(TAG_CHANGES) - 1), st.integers(0, 7)), max_size=3
        ),
        again=st.booleans(),
        mutations=st.lists(st.integers(0, len(MUTATIONS) - 1), max_size=2),
        record_change=st.integers(0, len(RECORD_CHANGES) - 1),
        data=st.data(),
    )
    def test_same_results(
        self,
        fields: list[bytes],
        body: bytes,
        algorithm: bytes,
        canon: tuple[bytes, bytes],
        length: bool,
        extra_from: bool,
        changes: list[tuple[int, int]],
        again: bool,
        mutations: list[int],
        record_change: int,
        data: st.DataObject,
    ) -> None:
        msg = b"".join(fields) + b"\r\n" + body
        try:
            signed = _sign(msg, algorithm, canon, length, extra_from)
        except dkim.DKIMException:
            return  # dkimpy would not sign it: nothing to compare
        for tag, which in changes:
            name, values = TAG_CHANGES[tag]
            signed = _replace_tag(signed, name, values[which % len(values)])
        if again:
            signed = resign(signed, algorithm)
        for m in mutations:
            signed = MUTATIONS[m](signed, data)
        record = (ed25519_key() if algorithm == b"ed25519-sha256" else rsa_key())[1]
        fast, slow = both_ways(self, signed, [RECORD_CHANGES[record_change](record)])
        self.assertEqual(fast, slow, signed)
        if not changes and not mutations and record_change == 0:
            self.assertEqual([r.result for r in fast], ["pass"])

    def test_every_change_alone(self) -> None:
        """Each tag value and key record form on its own, signed again, and each change of
        the message after signing, for both algorithms (the generated cases above combine
        them at random); most of them pass."""
        results: dict[str, int] = {}
        fixed = _Simplest()  # draws for the mutations that take one
        for algorithm in (b"rsa-sha256", b"ed25519-sha256"):
            record = (ed25519_key() if algorithm == b"ed25519-sha256" else rsa_key())[1]
            msg = message(extra=b"Cc: c@example.net,\r\n\td@example.net\r\n")
            signed = _sign(msg, algorithm, (b"relaxed", b"relaxed"), False, False)
            cases = [
                resign(_replace_tag(signed, name, value), algorithm)
                for name, values in TAG_CHANGES
                for value in values
            ]
            for case in cases:
                fast, slow = both_ways(self, case, [record])
                self.assertEqual(fast, slow, case)
                results[fast[0].result] = results.get(fast[0].result, 0) + 1
            for change in RECORD_CHANGES:
                fast, slow = both_ways(self, signed, [change(record)])
                self.assertEqual(fast, slow, change(record))
                results[fast[0].result] = results.get(fast[0].result, 0) + 1
            for mutate in MUTATIONS:  # the message changed after signing
                case = mutate(signed, fixed)
                fast, slow = both_ways(self, case, [record])
                self.assertEqual(fast, slow, case)
                results[fast[0].result] = results.get(fast[0].result, 0) + 1
        self.assertGreater(results["pass"], 40)
        self.assertGreater(results["permerror"], 10)
        self.assertGreater(results["fail"], 1)

    def test_rfc8463_example(self) -> None:
        dns = MemoryResolver(txt={k: [v] for k, v in RFC8463_RECORDS.items()})
        with self._no_dkimpy():
            results = run(self, verify_dkim(dns, RFC8463_MESSAGE))
        # RFC 8463's RSA key has 1024 bits: accepted (RFC 8301 3.2 allows 1024 and more)
        self.assertEqual([r.result for r in results], ["pass", "pass"])

    def _no_dkimpy(self) -> Any:
        """dkimpy's DKIM object refused while in force: the check must be ours."""
        case = self

        class Guard:
            def __enter__(self) -> None:
                def refuse(*args: Any, **kwargs: Any) -> Any:
                    raise AssertionError("dkimpy's verifier was used")

                case.patch(opensslverify, "Verifier", refuse)

            def __exit__(self, *exc: object) -> None:
                case.patch(opensslverify, "Verifier", _VERIFIER)

        return Guard()


_VERIFIER = opensslverify.Verifier


class FastPathTaken(SynchronousTestCase):
    def test_ordinary_mail_needs_no_dkimpy_object(self) -> None:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("dkimpy's verifier was used")

        self.patch(opensslverify, "Verifier", refuse)
        for algorithm, record in ((b"rsa-sha256", rsa_key()[1]), (b"ed25519-sha256", None)):
            record = record or ed25519_key()[1]
            signed = _sign(message(), algorithm, (b"relaxed", b"relaxed"), False, False)
            [r] = run(self, verify_dkim(MemoryResolver(txt={KEY: [record]}), signed))
            self.assertEqual(r.result, "pass", r.reason)
            changed = signed.replace(b"Subject: ", b"Subject: Re: ", 1)
            [r] = run(self, verify_dkim(MemoryResolver(txt={KEY: [record]}), changed))
            self.assertEqual(r.result, "fail")

    def test_odd_forms_go_to_dkimpy(self) -> None:
        calls: list[int] = []

        class Counting(_VERIFIER):
            def verify(self, *args: Any, **kwargs: Any) -> Any:
                calls.append(1)
                return super().verify(*args, **kwargs)

        self.patch(opensslverify, "Verifier", Counting)
        signed = _sign(message(), b"rsa-sha256", (b"relaxed", b"relaxed"), False, False)
        odd = resign(_replace_tag(signed, b"c", b"Relaxed/relaxed"), b"rsa-sha256")
        dns = MemoryResolver(txt={KEY: [rsa_key()[1]]})
        [r] = run(self, verify_dkim(dns, odd))
        self.assertEqual(calls, [1])
        # dkimpy's c= is case-sensitive (RFC 6376 3.5 says nothing of case): it refuses it
        self.assertEqual(r.result, "permerror")
        self.assertIn("invalid c= value", r.reason)
        [r] = run(self, verify_dkim(dns, signed))
        self.assertEqual((r.result, calls), ("pass", [1]))

    def test_key_dkimpy_cannot_read_fails_both_ways(self) -> None:
        """A key record dkimverify accepted but dkimpy's reading refuses (none known today)
        makes the signature fail, as dkimpy's verify_sig says, on either path."""

        def unreadable(record: bytes) -> Any:
            raise dkim.KeyFormatError("unreadable")

        self.patch(opensslverify, "public_key", unreadable)
        signed = _sign(message(), b"rsa-sha256", (b"relaxed", b"relaxed"), False, False)
        fast, slow = both_ways(self, signed, [rsa_key()[1]])
        self.assertEqual(fast, slow)
        self.assertEqual([r.result for r in fast], ["fail"])

    def test_usable(self) -> None:
        tags = {"v": b"1", "a": b"rsa-sha256", "d": b"example.com", "s": b"sel", "h": b"from"}
        key = {"p": b"x"}
        self.assertTrue(dkimfast.usable(tags, key))
        for name, value in [
            ("a", b"RSA-SHA256"),
            ("c", b"relaxed/Relaxed"),
            ("q", b"DNS/TXT"),
            ("i", b"@example.com."),
            ("i", b"a@bexample.com"),
            ("t", str(int(time.time()) + 40000).encode()),
            ("x", str(int(time.time()) - 40000).encode()),
        ]:
            self.assertFalse(dkimfast.usable({**tags, name: value}, key), (name, value))
        for name, value in [("k", b"RSA"), ("s", b"email:tlsrpt"), ("s", b"tlsrpt")]:
            self.assertFalse(dkimfast.usable(tags, {**key, name: value}), (name, value))
        for name, value in [("k", b"rsa"), ("s", b"email"), ("s", b"*")]:
            self.assertTrue(dkimfast.usable(tags, {**key, name: value}), (name, value))


class HeaderData(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        fields=header_fields(),
        h=st.lists(
            st.sampled_from(
                [b"from", b"to", b"subject", b"cc", b"x-thing", b"date", b"X-None", b"x-odd"]
            ),
            min_size=1,
            max_size=8,
        ),
        relaxed=st.booleans(),
        odd=st.sampled_from([b"", b"X-Odd: a\x0b b \r\n", b"X-Odd: \ra\r b\x0c\r\n \x0c\r\n"]),
    )
    def test_same_bytes_as_dkimpy(
        self, fields: list[bytes], h: list[bytes], relaxed: bool, odd: bytes
    ) -> None:
        """The data hashed for a signature is dkimpy's ``hash_headers`` input, byte for byte
        (a header with VT, FF or a CR alone takes the general relaxed path)."""
        sig = b"DKIM-Signature: v=1; h=" + b" :\r\n ".join(h) + b";\r\n b=AbC\r\n d/=\r\n"
        msg = sig + b"".join(fields) + odd + b"\r\nbody\r\n"
        parsed = opensslverify._parse(msg)
        field = parsed.headers[0]
        policy = CanonicalizationPolicy.from_c_value(b"relaxed" if relaxed else b"simple")
        seen: list[bytes] = []

        class Recorder:
            def update(self, data: bytes) -> None:
                seen.append(data)

        include = [x.lower() for x in h]
        if b"from" in include:
            include.append(b"from")
        tags = dkim.util.parse_tag_value(field[1])
        headers = policy.canonicalize_headers(parsed.headers)
        dkim.hash_headers(Recorder(), policy, headers, include, field, tags)
        ours = dkimfast.header_data(parsed, field, tags[b"h"], policy.header_algorithm)
        self.assertEqual(ours, b"".join(seen))
        self.assertEqual(parsed.plain_space, not odd)


class PassOnlyWhereDkimpyPasses(SynchronousTestCase):
    """``verify_dkim`` (its checks of the tags and key, then dkimfast) against dkimpy's own
    ``dkim.verify`` on messages changed after signing the ways an attacker would (RFC 6376
    5.4.2 oversigning, 3.4 canonicalisation, 3.5 l=) and odd key records: a "pass" that dkimpy
    does not give would be a forged message let through, a missing one a true one refused."""

    def cases(self) -> list[tuple[str, bytes]]:
        body = b"Hello.\r\nLine two.\r\n"
        out: list[tuple[str, bytes]] = []
        for algorithm in (b"rsa-sha256", b"ed25519-sha256"):
            for canon in (
                (b"simple", b"simple"),
                (b"relaxed", b"relaxed"),
                (b"relaxed", b"simple"),
            ):
                for length in (False, True):
                    s = sign(message(body=body), algorithm=algorithm, canonicalize=canon,
                             include_headers=[b"from", b"subject", b"to", b"x-absent", b"subject"],
                             length=length)  # fmt: skip
                    end = s.index(b"\r\n\r\n") + 2

                    def below(field: bytes, s: bytes = s, end: int = end) -> bytes:
                        return s[:end] + field + s[end:]

                    out += [
                        ("as signed", s),
                        ("Subject added on top (oversigned)", b"Subject: evil\r\n" + s),
                        ("Subject added below", below(b"Subject: evil\r\n")),
                        ("X-Absent added (signed absent)", below(b"X-Absent: evil\r\n")),
                        ("From added on top", b"From: evil@example.org\r\n" + s),
                        ("To added on top (signed once)", b"To: evil@example.org\r\n" + s),
                        ("To added below", below(b"To: evil@example.org\r\n")),
                        ("Cc added (not signed)", below(b"Cc: other@example.org\r\n")),
                        ("case", s.replace(b"Subject:", b"subject:").replace(b"From:", b"FROM:")),
                        ("empty lines added", s + b"\r\n\r\n"),
                        ("no final CRLF", s[:-2]),
                        ("body appended", s + b"more\r\n"),
                        ("body spaces", s.replace(b"Line two.", b"Line  two. ")),
                        ("header spaces", s.replace(b"Subject: lunch", b"Subject:  lunch ")),
                        ("header refolded", s.replace(b"Subject: lunch", b"Subject:\r\n lunch")),
                        ("signature refolded", re.sub(rb"; ", b";\r\n\t", s, count=3)),
                        ("sig case", s.replace(b"DKIM-Signature", b"dkim-signature", 1)),
                        ("h= twice", s.replace(b"h=", b"h=from; h=", 1)),
                        ("b= folded", re.sub(rb"( b=[\w+/]{10})", rb"\1 \r\n ", s, count=1)),
                        ("bh= folded", re.sub(rb"(bh=[\w+/]{10})", rb"\1 \r\n ", s, count=1)),
                        ("colon after space", s.replace(b"Subject:", b"Subject :")),
                    ]  # fmt: skip
        return out

    def test_same_pass_as_dkimpy(self) -> None:
        compared: dict[bool, int] = {True: 0, False: 0}
        for what, msg in self.cases():
            ed = b"a=ed25519-sha256" in msg
            record = (ed25519_key() if ed else rsa_key())[1]
            revoked = record[: record.index(b"p=") + 2]
            for key in [record, record + b"; t=y", record + b"; t=s", record + b"; h=sha256",
                        record + b"; s=email", revoked]:  # fmt: skip
                dns = MemoryResolver(txt={KEY: [key]})
                ours = run(self, verify_dkim(dns, msg))[0].result == "pass"
                try:
                    theirs = dkim.verify(msg, dnsfunc=lambda *a, key=key, **k: key) is True
                except Exception:
                    theirs = False
                self.assertEqual(ours, theirs, (what, key[-24:], msg))
                compared[ours] += 1
        self.assertGreater(compared[True], 100)
        self.assertGreater(compared[False], 100)
