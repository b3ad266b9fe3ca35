"""The ``Authentication-Results:`` header read back (RFC 8601 2.2): the grammar's corners,
headers as other servers write them, garbage, and write -> parse round trips.

The header examples from RFC 8601 (Appendix B) and RFC 6008 (section 4) are IETF documents,
Copyright (c) the IETF Trust and the persons identified as the document authors, used under
the IETF Trust's Legal Provisions Relating to IETF Documents (BCP 78)."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks import results
from mailhub.checks.results import (
    AuthenticationResults,
    MethodResult,
    all_results,
    authserv_id_of,
    ours,
    parse,
)
from tests import headerbytes

# RFC 8601 Appendix B.4 ("Service Provided, Several Authentications Done, Single MTA"),
# folded as printed there.
RFC8601_B4 = (
    b"example.com;\r\n"
    b"          auth=pass (cram-md5) smtp.auth=sender@example.net;\r\n"
    b"          spf=pass smtp.mailfrom=example.net"
)
# RFC 6008 4: two signatures by one domain, told apart by header.b; comments, folding.
RFC6008 = (
    b"mail-router.example.net;\r\n"
    b"          dkim=pass (good signature) header.d=newyork.example.com\r\n"
    b"                header.b=oINEO8hg;\r\n"
    b"          dkim=fail (bad signature) header.d=newyork.example.com\r\n"
    b"                header.b=EToRSuvU"
)
# As Gmail writes it (comments instead of reason=, header.i with a bare "@domain").
GMAIL = (
    b"mx.google.com;\r\n"
    b"       dkim=pass header.i=@example.com header.s=20230601 header.b=AbC+/1x;\r\n"
    b"       spf=pass (google.com: domain of bounce@example.com designates 192.0.2.1 as"
    b" permitted sender) smtp.mailfrom=bounce@example.com;\r\n"
    b"       dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=example.com"
)


class Grammar(SynchronousTestCase):
    def test_rfc8601_example_several_methods(self) -> None:
        got = parse(RFC8601_B4)
        self.assertEqual(got.authserv_id, "example.com")
        self.assertEqual(
            got.results,
            (
                MethodResult("auth", "pass", "cram-md5", (("smtp.auth", "sender@example.net"),)),
                MethodResult("spf", "pass", "", (("smtp.mailfrom", "example.net"),)),
            ),
        )

    def test_rfc6008_example_two_signatures_folded(self) -> None:
        got = parse(RFC6008)
        self.assertEqual(
            [(r.method, r.result, r.reason) for r in got.results],
            [
                ("dkim", "pass", "good signature"),
                ("dkim", "fail", "bad signature"),
            ],
        )
        self.assertEqual(got.results[1].property("header.b"), "EToRSuvU")

    def test_gmail_comments_are_the_reason_when_there_is_none(self) -> None:
        got = parse(GMAIL)
        spf = got.results[1]
        self.assertEqual(spf.reason.split(":")[0], "google.com")
        self.assertEqual(spf.property("smtp.mailfrom"), "bounce@example.com")
        self.assertEqual(got.results[0].property("header.i"), "@example.com")
        self.assertEqual(got.results[0].property("header.b"), "AbC+/1x")  # case kept
        self.assertEqual(got.results[2].reason, "p=REJECT sp=REJECT dis=NONE")

    def test_no_result_and_version(self) -> None:
        self.assertEqual(parse(b"example.org 1; none"), AuthenticationResults("example.org"))
        self.assertEqual(
            parse(b" (c) example.org (d) ; none (e)"), AuthenticationResults("example.org")
        )

    def test_cfws_everywhere_method_version_and_case(self) -> None:
        got = parse(
            "Example.COM (x) ; (y) DKIM (z) / 1 (w) = (v) PASS (u) Header (t) . (s) D = "
            '(r) "example.net" (q) REASON = "it \\"verified\\""'
        )
        self.assertEqual(
            got.results,
            (MethodResult("dkim", "pass", 'it "verified"', (("header.d", "example.net"),)),),
        )
        self.assertEqual(got.authserv_id, "Example.COM")

    def test_quoted_strings_folding_and_nested_comments(self) -> None:
        got = parse(
            b'x.example; spf=fail reason="folded\r\n across" (a (nested) comment)'
            b' smtp.mailfrom="john doe"@example.org smtp.helo=h.example'
        )
        (spf,) = got.results
        self.assertEqual(spf.reason, "folded across")
        self.assertEqual(
            spf.properties,
            (("smtp.mailfrom", "john doe@example.org"), ("smtp.helo", "h.example")),
        )

    def test_an_equals_sign_in_a_pvalue(self) -> None:
        # SRS (and VERP) local-parts carry "=": atext allows it (RFC 5322 3.2.3).
        got = parse(b"h; spf=pass smtp.mailfrom=SRS0=HhH=AB=example.com=bob@fwd.example")
        self.assertEqual(
            got.results[0].property("smtp.mailfrom"), "SRS0=HhH=AB=example.com=bob@fwd.example"
        )

    def test_utf8_values(self) -> None:
        raw = 'h.example; dmarc=fail reason="From: bücher.example ≠ x" header.from=bücher.example'
        got = parse(raw.encode())
        self.assertEqual(got.results[0].reason, "From: bücher.example ≠ x")
        self.assertEqual(got.results[0].property("header.from"), "bücher.example")
        # from the email package: octets as surrogate escapes
        escaped = raw.encode().decode("ascii", "surrogateescape")
        self.assertEqual(parse(escaped), got)
        # ill-formed octets: U+FFFD, the rest read
        bad = parse(b"h; spf=pass smtp.mailfrom=a\xff@b.example; dkim=none")
        self.assertEqual(bad.results[0].property("smtp.mailfrom"), "a\ufffd@b.example")
        self.assertEqual(bad.results[1], MethodResult("dkim", "none"))

    def test_garbage_is_skipped_up_to_the_next_resinfo(self) -> None:
        got = parse(b'h; ;; = ; spf pass; "q" ; dkim=pass junk header.d=a; dmarc=none (open')
        self.assertEqual(
            [(r.method, r.result) for r in got.results],
            [("dkim", "pass"), ("dmarc", "none")],
        )
        self.assertEqual(got.results[0].properties, (("header.d", "a"),))  # "junk" dropped
        self.assertEqual(got.results[1].reason, "open")  # an open comment runs to the end
        for value in (b"", b";", b"(", b'"', b"\\", b"h; spf=", b"h; spf=pass smtp.mailfrom="):
            parse(value)  # no exception
        self.assertEqual(parse(b"h; spf=").results, (MethodResult("spf", ""),))

    def test_deep_and_huge_values(self) -> None:
        deep = parse(b"h; spf=pass " + b"(" * 100_000 + b"x" + b")" * 100_000 + b" smtp.helo=y")
        self.assertEqual(deep.results[0].property("smtp.helo"), "y")
        many = parse(b"h" + b"; dkim=pass header.d=example.com" * 10_000)
        self.assertEqual(len(many.results), 10_000)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=300))
    def test_any_bytes_parse_without_an_exception(self, raw: bytes) -> None:
        got = parse(raw)
        self.assertIsInstance(got, AuthenticationResults)
        self.assertNotIn("\udc80", got.authserv_id)  # no surrogate escapes leak

    @settings(max_examples=200, deadline=None)
    @given(headerbytes.text_value(), headerbytes.text_value())
    def test_header_bytes_as_mail_carries_them(self, a: bytes, b: bytes) -> None:
        parse(b"h.example; spf=" + a + b" smtp.mailfrom=" + b + b"; dkim=pass reason=" + a)
        parse(a + b"; " + b)


# RFC 8601 2.2 Keyword: ldh-str (RFC 5321 4.1.2), case-insensitive: written in lower case.
_keyword = st.from_regex(r"[a-z](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
_method_results = st.builds(
    MethodResult,
    method=_keyword,
    result=_keyword,
    reason=_text,
    properties=st.lists(
        st.tuples(st.builds(lambda p, q: f"{p}.{q}", _keyword, _keyword), _text), max_size=5
    ).map(tuple),
)


def _as_written(r: MethodResult) -> MethodResult:
    """What the header keeps of a result: no CR, LF or NUL, a reason of at most 600 chars."""

    def clean(text: str) -> str:
        return text.replace("\r", " ").replace("\n", " ").replace("\0", " ")

    return MethodResult(
        r.method,
        r.result,
        clean(r.reason)[:600],
        tuple((k, clean(v)) for k, v in r.properties),
    )


class RoundTrip(SynchronousTestCase):
    @settings(max_examples=500, deadline=None)
    @given(
        st.lists(_method_results, max_size=4), st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True)
    )
    def test_write_then_parse_gives_the_results_back(
        self, results: list[MethodResult], authserv_id: str
    ) -> None:
        written = AuthenticationResults(authserv_id, tuple(results))
        expected = AuthenticationResults(authserv_id, tuple(map(_as_written, results)))
        self.assertEqual(parse(written.header_value()), expected)
        # and the whole field as the email package hands it over (surrogate escapes)
        self.assertEqual(parse(written.header_value().decode("ascii", "surrogateescape")), expected)

    def test_an_authserv_id_that_is_no_token_is_quoted(self) -> None:
        written = AuthenticationResults("mail hub;x", (MethodResult("spf", "pass"),))
        self.assertEqual(written.header_value(), b'"mail hub;x";\r\n\tspf=pass')
        self.assertEqual(parse(written.header_value()), written)
        self.assertEqual(
            parse(AuthenticationResults("bücher.example").header_value()).authserv_id,
            "bücher.example",
        )


_NEVER = re.compile(r"(?!)")


def _slowly(value: bytes) -> AuthenticationResults:
    """``parse`` without its fast paths for plain resinfos: the general reading alone."""
    fast = results._PLAIN_METHOD, results._PLAIN_PROPERTY
    results._PLAIN_METHOD = results._PLAIN_PROPERTY = _NEVER
    try:
        return parse(value)
    finally:
        results._PLAIN_METHOD, results._PLAIN_PROPERTY = fast


class FastPath(SynchronousTestCase):
    """The plain forms read at once give what the general reading gives."""

    @settings(max_examples=1000, deadline=None)
    @example(b'h; spf=pass smtp.mailfrom="john doe"@example.org smtp.helo=x')
    @example(b"h; dkim=pass header.d=x (c) header.s=y; spf = pass header . d = x")
    @example(b'h; spf=pass k="" reason="a\\"b" r="x\r\n y"; dkim=;x=y\x0bz k=v')
    @example(b"h; a/1=b junk header.d=x reason=1 reason=2 header.i=@d")
    @given(
        st.one_of(
            headerbytes.authentication_results(),
            st.lists(_method_results, max_size=4).map(
                lambda rs: AuthenticationResults("h", tuple(rs)).header_value()
            ),
            st.binary(max_size=80).map(lambda b: b"h; spf=pass " + b),
        )
    )
    def test_same_as_the_general_reading(self, value: bytes) -> None:
        self.assertEqual(parse(value), _slowly(value))


class SameIdAsTheSink(SynchronousTestCase):
    """The page believes the field whose authserv-id is ours; the receiving sink removes every
    such field a message brings (RFC 8601 5) by ``authserv_id_of``, which reads only the id:
    it must read it as the whole parse does, or a forged field the sink kept as not ours would
    be read as ours."""

    def test_fields_made_to_differ(self) -> None:
        for value in (
            b"localhost=x; spf=pass",
            b"localhost\xc2\xa0x; spf=pass",  # U+00A0 is no ASCII space
            b'"local\rhost"; spf=pass',
            b"\x0blocalhost\x0c; spf=pass",
            b"(c (d) \\) localhost; spf=pass",
            b'"local\\"host"; spf=pass',
            b'"localhost\\',  # a quoted-pair cut off by the end
        ):
            self.assertEqual(parse(value).authserv_id.lower(), authserv_id_of(value), value)

    @settings(max_examples=1000, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=40),
            headerbytes.authentication_results(),
            st.builds(
                lambda a, b: a + b,
                st.sampled_from([b"localhost", b'"localhost', b"(x)localhost", b" "]),
                st.binary(max_size=10),
            ),
        )
    )
    def test_any_value(self, value: bytes) -> None:
        # Alike wherever the page's reading is ASCII, as every authserv-id of ours is ([checks]
        # authserv_id is a token, a hostname A-labels). They may differ on octets a quoted-pair
        # splits out of a UTF-8 sequence (the sink decodes after undoing the pair), where the
        # page's reading has U+FFFD: never ours either way.
        escaped = value.decode("ascii", "surrogateescape")  # as the email package hands it
        for page in (parse(value).authserv_id.lower(), parse(escaped).authserv_id.lower()):
            if page.isascii():
                self.assertEqual(page, authserv_id_of(value))


class Ours(SynchronousTestCase):
    headers = [
        ("Received", "from a by b"),
        ("Authentication-Results", "mx.example; spf=fail smtp.mailfrom=x@forged.example"),
        ("authentication-results", b"hub.example; spf=pass smtp.mailfrom=x@good.example"),
        ("Authentication-Results", "HUB.example; spf=neutral"),
        ("Subject", "hub.example; spf=pass"),
    ]

    def test_the_topmost_with_our_authserv_id(self) -> None:
        got = ours(self.headers, "Hub.Example")
        assert got is not None
        self.assertEqual(got.results[0].property("smtp.mailfrom"), "x@good.example")

    def test_without_an_id_the_topmost_of_any(self) -> None:
        got = ours(self.headers, None)
        assert got is not None
        self.assertEqual(got.authserv_id, "mx.example")

    def test_none_when_no_field_is_ours(self) -> None:
        self.assertIsNone(ours(self.headers, "other.example"))
        self.assertIsNone(ours([("Subject", "x")], None))
        self.assertEqual(
            [r.authserv_id for r in all_results(self.headers)],
            ["mx.example", "hub.example", "HUB.example"],
        )
