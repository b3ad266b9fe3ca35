"""Message ids and parsing for the web API (mailhub.web.ids, mailhub.web.parse)."""

from __future__ import annotations

from email.message import EmailMessage

from twisted.trial.unittest import SynchronousTestCase

from mailhub.envelope import Envelope, Recipient
from mailhub.smtp.trace import received_header
from mailhub.web import parse
from mailhub.web.ids import MessageRef, parse_id


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
    """The envelope facts come back out of the headers mailhub.smtp.trace writes."""

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
