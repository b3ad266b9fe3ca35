"""RFC 5321 / RFC 6531 path and parameter parsing."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailhub.addresses import (
    AddressError,
    Mailbox,
    ParameterError,
    UsageError,
    normalise_domain,
    parse_mail_from,
    parse_parameters,
    parse_rcpt_to,
    quote_local_part,
    xtext_decode,
    xtext_encode,
)


class PathTests(SynchronousTestCase):
    def test_plain(self) -> None:
        self.assertEqual(
            parse_mail_from("FROM:<User.Name+tag@Example.COM>"),
            (Mailbox("User.Name+tag", "example.com", "User.Name+tag@Example.COM"), {}),
        )

    def test_keyword_case_and_space_after_colon(self) -> None:
        mailbox, _ = parse_mail_from("from: <a@b.example>")
        self.assertEqual(str(mailbox), "a@b.example")

    def test_null_reverse_path(self) -> None:
        self.assertEqual(parse_mail_from("FROM:<>"), (None, {}))
        self.assertEqual(parse_mail_from("FROM:<> BODY=8BITMIME"), (None, {"BODY": "8BITMIME"}))
        self.assertRaises(AddressError, parse_mail_from, "FROM:<>x")
        self.assertRaises(AddressError, parse_rcpt_to, "TO:<>")

    def test_quoted_local_part(self) -> None:
        mailbox, _ = parse_rcpt_to(r'TO:<"john \"jd\" doe"@example.org>')
        self.assertEqual(mailbox.local, 'john "jd" doe')
        self.assertEqual(str(mailbox), r'"john \"jd\" doe"@example.org')
        mailbox, _ = parse_rcpt_to('TO:<"a>b@c"@example.org>')
        self.assertEqual(mailbox.local, "a>b@c")
        # A quoted local part that is a valid dot-string is canonically unquoted.
        mailbox, _ = parse_rcpt_to('TO:<"plain"@example.org>')
        self.assertEqual(str(mailbox), "plain@example.org")

    def test_quote_local_part(self) -> None:
        self.assertEqual(quote_local_part("a.b"), "a.b")
        self.assertEqual(quote_local_part("a..b"), '"a..b"')
        self.assertEqual(quote_local_part('x"y\\'), '"x\\"y\\\\"')

    def test_source_route_is_accepted_and_ignored(self) -> None:
        # RFC 5321 4.1.2 and Appendix C.
        mailbox, params = parse_mail_from(
            "FROM:<@relay1.example,@relay2.example:u@d.example> SIZE=5"
        )
        self.assertEqual(
            (str(mailbox), mailbox.written, params), ("u@d.example", "u@d.example", {"SIZE": "5"})
        )

    def test_address_literals(self) -> None:
        mailbox, _ = parse_rcpt_to("TO:<u@[192.0.2.1]>")
        self.assertEqual(mailbox.domain, "[192.0.2.1]")
        self.assertTrue(mailbox.is_literal)
        mailbox, _ = parse_rcpt_to("TO:<u@[ipv6:2001:DB8:0::1]>")
        self.assertEqual(mailbox.domain, "[IPv6:2001:db8::1]")
        for bad in ("[300.1.1.1]", "[1.2.3]", "[IPv6:zz::1]", "[x-tag:foo]", "[]"):
            self.assertRaises(AddressError, parse_rcpt_to, f"TO:<u@{bad}>")

    def test_utf8_addresses(self) -> None:
        # RFC 6531: UTF-8 local parts and U-label domains; domains become A-labels.
        mailbox, _ = parse_rcpt_to("TO:<Δοκιμή@Παράδειγμα.δοκιμή>")
        self.assertEqual(mailbox.local, "Δοκιμή")
        self.assertEqual(mailbox.domain, "xn--hxajbheg2az3al.xn--jxalpdlp")
        self.assertTrue(mailbox.needs_smtputf8)
        mailbox, _ = parse_rcpt_to("TO:<jörg@bücher.example>")
        self.assertEqual(mailbox.domain, "xn--bcher-kva.example")
        mailbox, _ = parse_rcpt_to("TO:<a@XN--BCHER-KVA.example>")
        self.assertEqual(mailbox.domain, "xn--bcher-kva.example")
        self.assertFalse(mailbox.needs_smtputf8)

    def test_postmaster(self) -> None:
        # RFC 5321 4.1.1.3: "<Postmaster>" without a domain, any case.
        mailbox, _ = parse_rcpt_to("TO:<pOstMaster>")
        self.assertEqual((mailbox.local, mailbox.domain), ("postmaster", ""))
        self.assertRaises(AddressError, parse_mail_from, "FROM:<postmaster>")

    def test_garbage(self) -> None:
        for arg in (
            "FROM:a@b.example",
            "FROM:<a@b.example",
            "FROM:<a@b.example>junk",
            "FROM:<a>",
            "FROM:<@b.example>",
            "FROM:<a@>",
            "FROM:<a..b@c.example>",
            "FROM:<.a@c.example>",
            "FROM:<a.@c.example>",
            "FROM:<a b@c.example>",
            "FROM:<a@-c.example>",
            "FROM:<a@c-.example>",
            "FROM:<a@c..example>",
            "FROM:<a@c.example.>",
            "FROM:<a@c_d.example>",
            'FROM:<"unterminated@c.example>',
            "FROM:<a@xn--zz.example>",
            "FROM:<@x:>",
            "FROM:<<a@b.example>>",
            "FROM:<a@b.example>>",
            "FROM:<a\x00@b.example>",
        ):
            self.assertRaises(AddressError, parse_mail_from, arg)
        for arg in ("", "FROM", "TO:<a@b.example>", "FROM<a@b.example>"):
            self.assertRaises(UsageError, parse_mail_from, arg)
        self.assertRaises(UsageError, parse_rcpt_to, "FROM:<a@b.example>")

    def test_length_limits(self) -> None:
        # RFC 5321 4.5.3.1.3: 256 octets for the path, brackets included.
        local = "a" * 64
        domain = ".".join(["b" * 59] * 3) + ".example"  # 254 octets with the brackets
        parse_rcpt_to(f"TO:<{local}@{domain}>")
        self.assertRaises(AddressError, parse_rcpt_to, f"TO:<{'a' * 100}.{local}@{domain}>")
        self.assertRaises(AddressError, normalise_domain, "c" * 64 + ".example")


class ParameterTests(SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual(
            parse_parameters(" size=10  BODY=8BITMIME SMTPUTF8"),
            {"SIZE": "10", "BODY": "8BITMIME", "SMTPUTF8": None},
        )

    def test_errors(self) -> None:
        for text in (" =x", " -A=1", " A=", " A=b=c", " A=\x01", " K\u00e9Y=1"):
            self.assertRaises(ParameterError, parse_parameters, text)
        with self.assertRaises(ParameterError) as cm:
            parse_parameters(" A=1 a=2")
        self.assertTrue(cm.exception.duplicate)

    def test_utf8_values_allowed(self) -> None:
        # RFC 6531 3.3 extends esmtp-value with UTF-8.
        self.assertEqual(parse_parameters(" X=é"), {"X": "é"})

    def test_xtext(self) -> None:
        self.assertEqual(xtext_decode("a+2Bb+3Dc"), "a+b=c")
        self.assertEqual(xtext_encode("a+b=c é"), "a+2Bb+3Dc+20+C3+A9")
        self.assertEqual(xtext_decode(xtext_encode("user+x@é.example")), "user+x@é.example")
        for bad in ("a+2", "a+zz", "a=b", "a b"):
            self.assertRaises(ParameterError, xtext_decode, bad)
