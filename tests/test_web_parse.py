"""Message ids and parsing for the web API (mailhub.web.ids, mailhub.web.parse)."""

from __future__ import annotations

import base64
import email.policy
import io
import json
import random
from dataclasses import asdict, replace
from email.message import EmailMessage

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailhub.envelope import Envelope, Recipient
from mailhub.received import received_header
from mailhub.web import parse, scan
from mailhub.web.ids import MessageRef, parse_id
from tests import headerbytes


class Ids(SynchronousTestCase):
    def test_round_trip_and_url_safety(self) -> None:
        ref = MessageRef("j.ü+x@example.com", "Archive.2026", "1795.M1P2Q3.host,S=120")
        text = ref.id
        self.assertRegex(text, r"^[A-Za-z0-9_-]+$")
        self.assertEqual(parse_id(text), ref)

    def test_anything_else_is_no_id(self) -> None:
        good = MessageRef("a@b.c", "INBOX", "k").id
        for text in ("", "!!", "a" * 2000, good + "==", good[:-1], "YQ", "YQpYCg"):
            self.assertIsNone(parse_id(text), text)


def envelope(**changes: object) -> Envelope:
    e = Envelope(
        queue_id="Q1ABC",
        mail_from="app@example.net",
        recipients=[Recipient("bob@example.com", "bob@example.com")],
        helo="client.example",
        client_address="192.0.2.7",
        client_name="client.example",
        server_name="mx.example.com",
        protocol="ESMTPSA",
        tls="TLSv1.3 TLS_AES_256_GCM_SHA384",
        received_at=1_800_000_000,
    )
    for k, v in changes.items():
        setattr(e, k, v)
    return e


def stored(e: Envelope, body: bytes = b"Subject: x\r\n\r\nhi\r\n") -> EmailMessage:
    raw = f"Return-Path: <{e.mail_from}>\r\n".encode() + received_header(e) + body
    return parse.load(raw)


class Trace(SynchronousTestCase):
    """The envelope facts come back out of the headers mailhub.received writes."""

    def test_tls_and_auth(self) -> None:
        t = parse.trace(stored(envelope()))
        self.assertEqual(t.mail_from, "app@example.net")
        self.assertEqual(
            (t.helo, t.client_address, t.client_name),
            ("client.example", "192.0.2.7", "client.example"),
        )
        self.assertEqual((t.server, t.protocol, t.queue_id), ("mx.example.com", "ESMTPSA", "Q1ABC"))
        self.assertTrue(t.tls)
        self.assertTrue(t.authenticated)
        self.assertEqual(t.tls_cipher, "TLSv1.3 TLS_AES_256_GCM_SHA384")
        self.assertEqual(t.recipient, "bob@example.com")
        self.assertIn("2027", t.received)

    def test_plain_several_recipients_ipv6(self) -> None:
        e = envelope(
            protocol="ESMTP",
            tls=None,
            client_address="2001:db8::1",
            client_name="",
            mail_from="",
            recipients=[
                Recipient("a@x.example", "a@x.example"),
                Recipient("b@x.example", "b@x.example"),
            ],
        )
        t = parse.trace(stored(e))
        self.assertEqual(t.mail_from, "")  # the null reverse-path <>
        self.assertEqual((t.client_address, t.client_name), ("2001:db8::1", ""))
        self.assertFalse(t.tls)
        self.assertFalse(t.authenticated)
        self.assertEqual(t.recipient, "")  # not written for several recipients (Bcc privacy)
        self.assertEqual(t.queue_id, "Q1ABC")

    def test_helo_session_is_not_tls(self) -> None:
        # Was: the plain "SMTP" keyword (HELO) read as TLS, its own S taken for the suffix.
        t = parse.trace(stored(envelope(protocol="SMTP", tls=None)))
        self.assertEqual((t.protocol, t.tls, t.authenticated), ("SMTP", False, False))

    def test_authenticated_sender_header(self) -> None:
        # Was: with [smtp] received_auth_header the page showed no facts at all.
        e = envelope(authenticated_as="app@example.net")
        raw = b"Return-Path: <x@y>\r\n" + received_header(e, authenticated_sender=True) + b"\r\n"
        t = parse.trace(parse.load(raw))
        self.assertEqual((t.queue_id, t.authenticated, t.helo), ("Q1ABC", True, "client.example"))

    def test_utf8_recipient(self) -> None:
        e = envelope(protocol="UTF8SMTPSA", recipients=[Recipient("jörg@bücher.example", "x")])
        t = parse.trace(stored(e))
        self.assertEqual((t.recipient, t.smtputf8, t.tls), ("jörg@bücher.example", True, True))

    def test_foreign_received_header_gives_no_facts(self) -> None:
        msg = parse.load(b"Received: from a by b with SMTP; today\r\nSubject: x\r\n\r\n")
        self.assertEqual(parse.trace(msg), parse.Trace(mail_from=None))


class Parts(SynchronousTestCase):
    def test_summary_bodies_and_attachments(self) -> None:
        msg = EmailMessage()
        msg["From"] = "=?utf-8?q?J=C3=BCrgen?= <j@example.de>"
        msg["To"] = "a@example.com, B <b@example.com>"
        msg["Subject"] = "=?utf-8?q?Gr=C3=BC=C3=9Fe?="
        msg["Date"] = "Tue, 24 Nov 2026 01:00:00 +0000"
        msg.set_content("plain text\n")
        msg.add_alternative('<p>html <img src="cid:logo"></p>', subtype="html")
        msg.get_payload()[1].add_related(b"PNG", "image", "png", cid="<logo>")
        msg.add_attachment(b"1,2\n", maintype="text", subtype="csv", filename="data.csv")
        parsed = parse.load(msg.as_bytes())
        s = parse.summarise(parsed)
        self.assertEqual(s.sender, parse.Address("Jürgen", "j@example.de"))
        self.assertEqual([a.address for a in s.to], ["a@example.com", "b@example.com"])
        self.assertEqual(s.subject, "Grüße")
        self.assertEqual(s.date, 1795482000.0)
        self.assertEqual(s.snippet, "plain text")
        kinds = [(a.content_type, a.filename, a.inline, a.content_id) for a in s.attachments]
        self.assertEqual(
            kinds, [("image/png", "", True, "logo"), ("text/csv", "data.csv", False, "")]
        )
        d = parse.detail(parsed)
        self.assertEqual(d.text, "plain text\n")
        self.assertIn("cid:logo", d.html)
        csv = parse.find_part(parsed, s.attachments[1].part)
        self.assertEqual(parse.part_bytes(csv), b"1,2\n")
        self.assertIsNone(parse.find_part(parsed, "0"))  # the multipart itself: no bytes
        self.assertIsNone(parse.find_part(parsed, "99"))

    def test_broken_message_still_summarised(self) -> None:
        raw = (
            b"From: <<<broken\r\nSubject: =?x-unknown?q?abc?=\r\nContent-Type: text/plain; "
            b"charset=x-unknown\r\nDate: not a date\r\n\r\nbody \xff\r\n"
        )
        s = parse.summarise(parse.load(raw))
        self.assertIsNone(s.date)
        self.assertIn("body", s.snippet)
        self.assertTrue(s.subject)


# -- summaries by a scan (mailhub.web.scan) ---------------------------------------------------


def _alternative_html_only() -> bytes:
    lines = b"lorem ipsum dolor sit amet =\r\n" * 300  # soft line breaks: one long line
    return (
        b"From: x@example.com\r\nSubject: alt\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="AA"\r\n\r\n--AA\r\n'
        b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
        b'\r\n\r\n<div class=3D"x">Gr=C3=BC=C3=9Fe ' + lines + b"</div>\r\n--AA--\r\n"
    )


def _mixed() -> bytes:
    msg = EmailMessage()
    msg["From"] = "=?utf-8?q?J=C3=BCrgen?= <j@example.de>"
    msg["To"] = "a@example.com, B <b@example.com>"
    msg["Subject"] = "=?utf-8?q?Gr=C3=BC=C3=9Fe?="
    msg["Date"] = "Tue, 24 Nov 2026 01:00:00 +0000"
    msg.set_content("plain text\n")
    msg.add_alternative('<p>html <img src="cid:logo"></p>', subtype="html")
    msg.get_payload()[1].add_related(b"PNG", "image", "png", cid="<logo>")
    msg.add_attachment(b"1,2\n", maintype="text", subtype="csv", filename="data.csv")
    return msg.as_bytes()


_B64_TEXT = base64.encodebytes(("Grüße aus Köln. " * 800).encode()).replace(b"\n", b"\r\n")

# Messages the scan reads itself: its summary must be the full parse's.
SCANNED = {
    "multipart with related and attachment": _mixed(),
    "no subject, bare LF-less body": b"From: a@example.com\r\nTo: b@example.com\r\n\r\nhello",
    "encoded words, quoted comma, odd message id": (
        b"From: =?iso-8859-1?q?Andr=E9?= Pirard <PIRARD@vm1.ulg.ac.be>\r\n"
        b"To: =?US-ASCII?Q?Keith_Moore?= <moore@cs.utk.edu>\r\n"
        b'Cc: =?ISO-8859-1?Q?Olle_J=E4rnefors?= <o@kth.se>, "Quoted, Name" <q@x.org>\r\n'
        b"Subject: =?ISO-8859-1?B?SWYgeW91IGNhbiByZWFkIHRoaXMgeW8=?=\r\n"
        b" =?ISO-8859-2?B?dSB1bmRlcnN0YW5kIHRoZSBleGFtcGxlLg==?=\r\n"
        b"Message-ID: <weird id@x>\r\n\r\nbody\r\n"
    ),
    "multipart/alternative with only HTML": _alternative_html_only(),
    "single-part HTML with a style block": (
        b"From: x@example.com\r\nContent-Type: text/html\r\n\r\n<html><head><style>p{}</style>"
        b"</head><body><p>Hello <b>there</b> " + b"word " * 200 + b"</p></body></html>"
    ),
    "RFC 2231 and RFC 2047 attachment names, inline image": (
        b"From: x@example.com\r\nSubject: att\r\nContent-Type: multipart/mixed; boundary=b\r\n"
        b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n"
        b"Content-Type: application/pdf; name*=utf-8''R%C3%A9sum%C3%A9.pdf\r\n"
        b"Content-Disposition: attachment;\r\n filename*0*=utf-8''R%C3%A9sum;"
        b" filename*1*=%C3%A9.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n"
        b"--b\r\nContent-Type: image/png\r\nContent-ID: <img1@x>\r\n\r\nPNG\r\n--b\r\n"
        b'Content-Type: text/plain; name="=?utf-8?q?n=C3=B6tes.txt?="\r\n'
        b"Content-Disposition: attachment\r\n\r\nnotes\r\n--b--\r\n"
    ),
    "broken MIME: closing boundary missing": (
        b"From: x@example.com\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\npreamble\r\n"
        b"--zz\r\nContent-Type: text/plain\r\n\r\nfirst part never closed\r\n"
    ),
    "broken header values, unknown charset, 8-bit body": (
        b"From: <<<broken\r\nSubject: =?x-unknown?q?abc?=\r\nContent-Type: text/plain; "
        b"charset=x-unknown\r\nDate: not a date\r\n\r\nbody \xff\r\n"
    ),
    "long base64 text": (
        b"From: a@example.com\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + _B64_TEXT
    ),
    "long UTF-8 text, a character cut by the first read": (
        "From: a@example.com\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + "é中" * 3000
    ).encode(),
    "long quoted-printable text": (
        b"From: a@x.org\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + b"=E2=82=AC price list, soft=\r\nbreaks=20and more  \r\n"
        * 500
    ),
    "HTML whose tags straddle the first read": (
        b"From: a@x.org\r\nContent-Type: text/html\r\n\r\n"
        + b"<p>a</p>" * 600
        + b"<div title='x>y'>text here</div>" * 300
    ),
    "latin-1 8bit": (
        "From: a@example.com\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\ndéjà vu\r\n"
    ).encode("latin-1"),
    "forwarded message with its own attachment": (
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n"
        b"Content-Type: text/plain\r\n\r\nsee below\r\n--o\r\nContent-Type: message/rfc822\r\n"
        b"\r\nFrom: b@example.com\r\nSubject: inner\r\nContent-Type: multipart/mixed; boundary=i"
        b"\r\n\r\n--i\r\nContent-Type: text/plain\r\n\r\ninner text\r\n--i\r\n"
        b"Content-Type: application/zip\r\nContent-Disposition: attachment; filename=a.zip\r\n"
        b"\r\nPK\r\n--i--\r\n--o--\r\n"
    ),
    "only an attachment": (
        b"From: a@example.com\r\nContent-Type: application/pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n"
    ),
    "text that is an attachment": (
        b"From: a@x.org\r\nContent-Type: text/plain\r\n"
        b"Content-Disposition: attachment; filename=a.txt\r\n\r\nattached text\r\n"
    ),
    "repeated fields: the first counts": (
        b"From: a@example.com\r\nFrom: b@example.com\r\nSubject: one\r\nSubject: two\r\n"
        b"To: c@x.org\r\nTo: d@x.org\r\n\r\nx\r\n"
    ),
    "comments, groups, folding with a tab": (
        b'From: "Doe, John" <john@x.org> (comment)\r\nTo: undisclosed-recipients:;\r\n'
        b"Cc: group: a@b.c, d@e.f;\r\nSubject: folded\r\n   subject\twith tab\r\n"
        b"Message-ID: <a@b>  \r\nDate: Tue, 24 Nov 2026 01:00:00 +0100\r\n\r\nx\r\n"
    ),
    "8-bit header": "From: Jürgen <j@x.de>\r\nSubject: Grüße\r\nTo: b@x.de\r\n\r\nx\r\n".encode(),
    "bare LF": (
        b"From: a@example.com\nSubject: lf\nContent-Type: multipart/alternative; boundary=x\n\n"
        b"--x\nContent-Type: text/plain\n\nplain lf\n--x\nContent-Type: text/html\n\n<p>h</p>\n"
        b"--x--\n"
    ),
    "digest": (
        b"From: a@x\r\nContent-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n"
        b"From: b@x\r\nSubject: one\r\n\r\nfirst\r\n--d--\r\n"
    ),
    "header only": b"From: a@example.com\r\nSubject: nobody",
    "no header at all": b"\r\nbody first\r\n\r\nsecond paragraph\r\n",
    "a lone CR in the header": b"Subject: one\rTo: a@b.c\r\n\r\nbody\r\n",
    "long header, multipart": (
        b"Received: from somewhere\r\n\tby somewhere else\r\n"
        * 400
        + b"Subject: deep\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n"
        b"text after a long header\r\n--b--\r\n"
    ),
    "empty file": b"",
}

# Messages the two parsers may see differently: the scan leaves them to the full parse.
ODD = {
    "multipart without a boundary": (
        b"From: x@example.com\r\nContent-Type: multipart/mixed\r\n\r\n--zz\r\n"
        b"Content-Type: text/plain\r\n\r\ntext\r\n--zz--\r\n"
    ),
    "multipart whose boundary never comes": (
        b"From: x@example.com\r\nContent-Type: multipart/mixed; boundary=nope\r\n\r\n--zz\r\n"
        b"Content-Type: text/plain\r\n\r\ntext\r\n--zz--\r\n"
    ),
    "a line that is no header field": (
        b"From: a@example.com\r\nSubject: s\r\nthis line is no field\r\nTo: b@x\r\n\r\nbody\r\n"
    ),
    "delivery status": (
        b"From: MAILER-DAEMON@x\r\nSubject: bounce\r\nContent-Type: multipart/report; "
        b"report-type=delivery-status; boundary=r\r\n\r\n--r\r\nContent-Type: text/plain\r\n\r\n"
        b"failed\r\n--r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x"
        b"\r\n\r\nFinal-Recipient: rfc822; a@b\r\nAction: failed\r\n--r--\r\n"
    ),
    "multipart/related naming its start": (
        b'From: a@x\r\nContent-Type: multipart/related; boundary=q; start="<b@x>"\r\n\r\n--q\r\n'
        b"Content-Type: image/png\r\nContent-ID: <a@x>\r\n\r\nPNG\r\n--q\r\n"
        b"Content-Type: text/html\r\nContent-ID: <b@x>\r\n\r\n<p>hi</p>\r\n--q--\r\n"
    ),
}


def _shown(s: parse.Summary) -> tuple[object, ...]:
    """Everything of a summary but attachment sizes (which the scan does not count)."""
    return (s.json(), [replace(a, size=None) for a in s.attachments])


class Scanned(SynchronousTestCase):
    def test_scan_gives_the_full_parse_summary(self) -> None:
        for name, raw in SCANNED.items():
            full = parse.summarise(parse.load(raw))
            scanned = scan.summarise_scanned(io.BytesIO(raw))  # raises Odd if it gave up
            self.assertEqual(_shown(scanned), _shown(full), name)

    def test_odd_messages_take_the_full_parse(self) -> None:
        for name, raw in ODD.items():
            with self.assertRaises(scan.Odd, msg=name):
                scan.summarise_scanned(io.BytesIO(raw))
            full = parse.summarise(parse.load(raw))
            self.assertEqual(scan.summarise_file(io.BytesIO(raw)), full, name)

    def test_the_shown_values(self) -> None:
        s = scan.summarise_file(io.BytesIO(SCANNED["multipart with related and attachment"]))
        self.assertEqual(s.sender, parse.Address("Jürgen", "j@example.de"))
        self.assertEqual((s.subject, s.snippet), ("Grüße", "plain text"))
        self.assertEqual(
            [(a.content_type, a.filename, a.inline, a.size) for a in s.attachments],
            [("image/png", "", True, None), ("text/csv", "data.csv", False, None)],
        )
        s = scan.summarise_file(io.BytesIO(SCANNED["multipart/alternative with only HTML"]))
        self.assertTrue(s.snippet.startswith("Grüße lorem ipsum dolor sit amet lorem"), s)
        self.assertEqual(len(s.snippet), parse.SNIPPET_LENGTH)
        raw = SCANNED["RFC 2231 and RFC 2047 attachment names, inline image"]
        names = [a.filename for a in scan.summarise_file(io.BytesIO(raw)).attachments]
        self.assertEqual(names, ["Résumé.pdf", "", "nötes.txt"])

    def test_only_the_start_of_a_long_body_is_decoded(self) -> None:
        # Junk far into a base64 body: a whole-body decode would have to forgive it (the
        # scan gives up on junk it decodes); the snippet is from the first read alone.
        raw = SCANNED["long base64 text"].replace(_B64_TEXT[-40:], b"!!junk!!" * 5)
        s = scan.summarise_scanned(io.BytesIO(raw))
        self.assertEqual(s.snippet, " ".join(("Grüße aus Köln. " * 20).split())[:200])

    def test_plain_values_are_read_as_the_policy_reads_them(self) -> None:
        # The scan recognises the plainest address lists itself: the same display names and
        # addresses as email.policy.default, over many generated values.
        rng = random.Random(7)
        pieces = ["a", "Bob", "x.y", "user5", "example.com", " ", "  ", "'", "=", "?", "+"]
        pieces += [".", "..", "-", "_", "~", "#", "Jo Ann", "O'Neil", "!", "{", "|", "(", '"']

        def word() -> str:
            return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 3)))

        def mailbox() -> str:
            return rng.choice(
                [
                    f"{word()}@{word()}",
                    f"{word()} <{word()}@{word()}>",
                    f'"{word()} {word()}" <{word()}@{word()}>',
                    f"<{word()}@{word()}>",
                ]
            )

        recognised = 0
        for _ in range(30_000):
            value = ", ".join(mailbox() for _ in range(rng.randint(1, 3)))
            fast = scan.plain_addresses(value)
            if fast is None:
                continue
            recognised += 1
            header = email.policy.default.header_factory("To", value)
            policy = tuple(parse.Address(a.display_name, a.addr_spec) for a in header.addresses)
            self.assertEqual(fast, policy, value)
        self.assertGreater(recognised, 1000)
        for value in ("Order 5 shipped", "  a  b ", "x (y) <z>", "<bench.5@example.net>"):
            summary = scan.summarise_file(io.BytesIO(f"Subject: {value}\r\n\r\n".encode()))
            self.assertEqual(
                summary.subject, str(email.policy.default.header_factory("Subject", value)).strip()
            )
            raw = f"Message-ID: {value}\r\n\r\n".encode()
            self.assertEqual(
                scan.summarise_file(io.BytesIO(raw)).message_id,
                parse.summarise(parse.load(raw)).message_id,
            )


class SearchText(SynchronousTestCase):
    def test_body_text_in_lower_case_one_space_between_words(self) -> None:
        for name, raw in {**SCANNED, **ODD}.items():
            expected = " ".join(parse.body_text(parse.load(raw)).split()).lower()
            self.assertEqual(scan.search_text_file(io.BytesIO(raw)), expected, name)

    def test_bounded(self) -> None:
        raw = b"Subject: big\r\n\r\n" + b"Word " * scan.SEARCH_TEXT + b"needle\r\n"
        text = scan.search_text_file(io.BytesIO(raw))
        self.assertEqual(len(text), scan.SEARCH_TEXT)
        self.assertTrue(text.startswith("word word"))
        self.assertNotIn("needle", text)


# -- header bytes that are not ASCII (issue 12: one rule, mailhub.message.header_text) ---------


def _strict_json(value: object) -> bytes:
    """What the API sends: JSON as UTF-8; a lone surrogate anywhere raises."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def _summaries(raw: bytes) -> list[parse.Summary]:
    return [parse.summarise(parse.load(raw)), scan.summarise_file(io.BytesIO(raw))]


class HeaderBytes(SynchronousTestCase):
    def test_raw_utf8_display_name(self) -> None:
        # The message: RFC 6532 raw UTF-8 in a display name (sent with SMTPUTF8).
        raw = "From: Jürgen <a@example.com>\r\nTo: name8@example.com\r\nSubject: plain\r\n\r\nx\r\n"
        for s in _summaries(raw.encode()):
            self.assertEqual(s.sender, parse.Address("Jürgen", "a@example.com"))
            self.assertEqual(parse.Summary.decode(s.encode()), s)  # the folder cache's record
        detail = parse.detail(parse.load(raw.encode()))
        self.assertIn(("From", "Jürgen <a@example.com>"), detail.headers)

    def test_chinese_display_name_and_subject(self) -> None:
        raw = "From: 发件人 <s@example.cn>\r\nSubject: 你好 世界\r\n\r\nx\r\n".encode()
        for s in _summaries(raw):
            self.assertEqual(
                (s.sender.name if s.sender else None, s.subject), ("发件人", "你好 世界")
            )

    def test_8bit_latin1_and_broken_encoded_words(self) -> None:
        # Octets that are not UTF-8 become U+FFFD (one per ill-formed stretch), never a
        # surrogate escape; an encoded UTF-8 surrogate is no UTF-8 either (RFC 3629 3).
        raw = (
            b"From: J\xfcrgen M\xfcller <j@example.de>\r\n"
            b"Subject: =?utf-8?q?Gr=FC=DFe?= \x93quoted\x94 caf\xc3\xa9\r\n"
            b"To: =?utf-8?q?=ED=A0=80?= <t@example.de>\r\nX-Odd: \xed\xa0\x80 \0\r\n\r\nx\r\n"
        )
        for s in _summaries(raw):
            self.assertEqual(s.sender, parse.Address("J\ufffdrgen M\ufffdller", "j@example.de"))
            self.assertEqual(s.subject, "Gr\ufffd\ufffde \ufffdquoted\ufffd café")
            self.assertEqual(s.to, (parse.Address("\ufffd" * 3, "t@example.de"),))
            _strict_json(s.json())
            s.encode()
        detail = parse.detail(parse.load(raw))
        _strict_json(detail.headers)
        self.assertIn(("X-Odd", "\ufffd\ufffd\ufffd \0"), detail.headers)

    def test_fields_the_email_package_raises_on(self) -> None:
        # A word that decodes to a lone surrogate (UTF-7) and comments nested 2,000 deep
        # (a 10 KB field): the email package raises on both, even in the parse of a
        # Content-Type; the message still parses, its fields shown as plain text.
        deep = b"(" * 2000 + b")" * 2000
        for field in (b"Content-Type: text/plain; name=" + deep, b"Subject: =?utf-7?q?+2AA-?="):
            raw = field + b"\r\nFrom: a@x " + deep + b"\r\n\r\nbody\r\n"
            detail = parse.detail(parse.load(raw))
            _strict_json([detail.headers, detail.text, detail.summary.json()])
            self.assertEqual(detail.text, "body\r\n")
        self.assertEqual(detail.summary.subject, "\ufffd")

    def test_the_top_most_authentication_results_in_brief(self) -> None:
        raw = (
            b"Authentication-Results: hub.example; spf=pass;\r\n dkim=fail; dkim=pass;"
            b' dmarc=fail reason="x"\r\nAuthentication-Results: other.example; spf=fail\r\n'
            b"Subject: s\r\n\r\nbody\r\n"
        )
        scanned = scan.summarise_scanned(io.BytesIO(raw))  # the scan itself, not its fallback
        for summary in (parse.summarise(parse.load(raw)), scanned):
            self.assertEqual(summary.auth, ("hub.example", "pass", "pass", "fail"))
            self.assertEqual(parse.Summary.decode(summary.encode()), summary)
        for summary in _summaries(b"Subject: s\r\n\r\nbody\r\n"):
            self.assertEqual(summary.auth, ())
        # a record written before the checks existed has none (and none of ours could be)
        old = b'[null,[],[],"s",null,"",[],"body"]'
        self.assertEqual(parse.Summary.decode(old).auth, ())

    def test_summary_cached_by_an_older_version_is_repaired_on_read(self) -> None:
        # A record holding surrogate escapes (JSON \\udcxx): read back as the rule's text.
        old = b'[["J\\udcc3\\udcbcrgen","a@x"],[],[],"\\ud800s",null,"",[],"x"]'
        s = parse.Summary.decode(old)
        self.assertEqual((s.sender, s.subject), (parse.Address("Jürgen", "a@x"), "\ufffds"))
        s.encode()


_addresses = st.sampled_from([b"a@example.com", b"b.c@example.org"])


class HeaderBytesProperties(SynchronousTestCase):
    """Arbitrary header bytes (tests/headerbytes.py): every summary and detail is text
    without a surrogate (JSON as UTF-8 never fails), and the scan still gives the full
    parse's summary wherever it does not hand the message over."""

    @settings(max_examples=100, deadline=None)
    @given(_addresses.flatmap(lambda a: headerbytes.header_block(a, b"t@example.net", b"tok")))
    def test_any_header_bytes(self, head: bytes) -> None:
        raw = head + b"body\r\n"
        full = parse.summarise(parse.load(raw))
        _strict_json(full.json())
        self.assertEqual(parse.Summary.decode(full.encode()), full)
        self.assertTrue(full.subject.endswith("tok"), full.subject)
        detail = parse.detail(parse.load(raw))
        _strict_json([detail.headers, detail.text, asdict(detail.trace)])
        try:
            scanned = scan.summarise_scanned(io.BytesIO(raw))
        except scan.Odd:
            return
        self.assertEqual(_shown(scanned), _shown(full))
