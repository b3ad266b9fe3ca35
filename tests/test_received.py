"""The Received header (RFC 5321 4.4, RFC 3848)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailhub.envelope import Envelope, Recipient
from mailhub.received import address_literal, protocol_keyword, received_header


def envelope(**kw) -> Envelope:
    base = {
        "queue_id": "AAAAAAAAAAAAAAAA",
        "mail_from": "a@example.net",
        "recipients": [Recipient("User@example.org", "user@example.org")],
        "helo": "client.example.net",
        "client_address": "192.0.2.7",
        "server_name": "mx.example.org",
        "protocol": "ESMTP",
        "received_at": 0.0,
    }
    base.update(kw)
    return Envelope(**base)


class ReceivedHeaderTests(SynchronousTestCase):
    def test_single_recipient(self) -> None:
        self.assertEqual(
            received_header(envelope(client_name="mail.example.net")),
            b"Received: from client.example.net (mail.example.net [192.0.2.7])\r\n"
            b"\tby mx.example.org (mailhub) with ESMTP id AAAAAAAAAAAAAAAA\r\n"
            b"\tfor <User@example.org>; Thu, 01 Jan 1970 00:00:00 +0000\r\n",
        )

    def test_several_recipients_are_not_named(self) -> None:
        # Naming them would leak Bcc recipients into every copy.
        header = received_header(
            envelope(
                recipients=[Recipient("a@example.org", "a@example.org"), Recipient("b@x", "b@x")],
                protocol="ESMTPSA",
                tls="TLSv1.3 with cipher TLS_AES_256_GCM_SHA384",
            )
        )
        self.assertEqual(
            header,
            b"Received: from client.example.net (unknown [192.0.2.7])\r\n"
            b"\tby mx.example.org (mailhub) with ESMTPSA id AAAAAAAAAAAAAAAA\r\n"
            b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384);\r\n"
            b"\tThu, 01 Jan 1970 00:00:00 +0000\r\n",
        )
        self.assertNotIn(b"for", header)

    def test_helo_cannot_inject_header_syntax(self) -> None:
        header = received_header(envelope(helo="evil(comment);\\x"))
        self.assertTrue(header.startswith(b"Received: from evilcommentx (unknown [192.0.2.7])\r\n"))
        header = received_header(envelope(helo="bücher.example"))
        self.assertTrue(header.startswith(b"Received: from xn--bcher-kva.example "))
        header = received_header(envelope(helo="()"))
        self.assertTrue(header.startswith(b"Received: from unknown "))

    def test_every_line_is_short_and_folded(self) -> None:
        for line in received_header(envelope()).split(b"\r\n")[1:-1]:
            self.assertTrue(line.startswith(b"\t"))
            self.assertLess(len(line), 78)

    def test_address_literal(self) -> None:
        self.assertEqual(address_literal("2001:DB8::0:1"), "[IPv6:2001:db8::1]")
        self.assertEqual(address_literal("192.0.2.1"), "[192.0.2.1]")
        self.assertEqual(address_literal(""), "[unknown]")

    def test_protocol_keywords(self) -> None:
        table = {
            (False, False, False, False): "SMTP",
            (True, False, False, False): "ESMTP",
            (True, True, False, False): "ESMTPS",
            (True, False, True, False): "ESMTPA",
            (True, True, True, False): "ESMTPSA",
            (True, False, False, True): "UTF8SMTP",
            (True, True, True, True): "UTF8SMTPSA",
        }
        for (esmtp, tls, auth, utf8), keyword in table.items():
            self.assertEqual(
                protocol_keyword(esmtp=esmtp, tls=tls, authenticated=auth, smtputf8=utf8), keyword
            )
