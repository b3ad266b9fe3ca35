"""The Received header (RFC 5321 4.4, RFC 3848)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import format_datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailhub import received
from mailhub.envelope import Envelope, Recipient
from mailhub.received import (
    ReceivedFacts,
    address_literal,
    parse_received,
    protocol_keyword,
    received_header,
)


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


_label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
hostnames = st.lists(_label, min_size=1, max_size=4).map(".".join)
_atom = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,12}", fullmatch=True)
# What RFC 5321 4.1.2 lets a client write as a local part: a dot-string or a quoted string
# (which may hold spaces, ">" and ";"), and SMTPUTF8's UTF-8 (RFC 6531 3.3).
_local = (
    st.lists(_atom, min_size=1, max_size=3).map(".".join)
    | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'))
    .filter(bool)
    .map(lambda s: f'"{s}"')
    | st.text(st.characters(min_codepoint=0xA0, max_codepoint=0x2FFF), min_size=1, max_size=8)
)
addresses = st.builds(lambda local, domain: f"{local}@{domain}", _local, hostnames)


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    recipients = draw(st.lists(addresses, max_size=3))
    return Envelope(
        queue_id=draw(st.from_regex(r"[A-Z2-7]{16}", fullmatch=True)),
        mail_from=draw(addresses | st.just("")),
        recipients=[Recipient(a, a.lower()) for a in recipients],
        helo=draw(st.text(max_size=30) | hostnames),
        client_address=str(draw(st.ip_addresses())),
        client_name=draw(st.just("") | hostnames),
        server_name=draw(hostnames),
        protocol=draw(
            st.sampled_from(["SMTP", "ESMTP", "ESMTPS", "ESMTPA", "ESMTPSA", "UTF8SMTPSA"])
        ),
        tls=draw(st.none() | st.text(max_size=60)),
        authenticated_as=draw(st.none() | addresses),
        received_at=draw(st.floats(0, 4_000_000_000)),
    )


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


def header_value(header: bytes) -> str:
    """The value of a rendered header, as the web page reads it from the stored message."""
    name, _, value = header.decode("utf-8").partition(":")
    assert name == "Received", name
    return value


def expected_facts(e: Envelope, auth_header: bool = False) -> ReceivedFacts:
    """What the header says about ``e``: its facts as written, after sanitising."""
    address = address_literal(e.client_address)[1:-1].removeprefix("IPv6:")
    tls = re.sub(r"[^\x21-\x7e]|[()\\;]", " ", e.tls).strip() if e.tls else ""
    login = re.sub(r"[()\\\x00-\x20\x7f]", "", e.authenticated_as or "") if auth_header else ""
    return ReceivedFacts(
        helo=received._helo_token(e.helo),
        client_address=address,
        client_name=e.client_name,
        server=e.server_name,
        protocol=e.protocol,
        queue_id=e.queue_id,
        tls_cipher=tls,
        recipient=e.recipients[0].address if len(e.recipients) == 1 else "",
        date=format_datetime(datetime.fromtimestamp(int(e.received_at), UTC)),
        authenticated_sender=login,
    )


class RoundTripTests(SynchronousTestCase):
    """What received_header writes, parse_received reads back: the same facts."""

    def test_examples(self) -> None:
        examples = [
            envelope(),
            envelope(client_name="mail.example.net", protocol="ESMTPSA", tls="TLSv1.3 X"),
            envelope(client_address="2001:DB8::1", recipients=[]),
            envelope(protocol="UTF8SMTPS", recipients=[Recipient("ü@bücher.example", "x")]),
            envelope(helo="evil (x); by y", tls="TLSv1.2 with cipher (weird)"),
            envelope(protocol="ESMTPA", authenticated_as="alice (x)@example.org"),
            envelope(recipients=[Recipient('"a>; b"@example.org', "a@example.org")]),
        ]
        for e in examples:
            for auth_header in (False, True):
                facts = parse_received(
                    header_value(received_header(e, authenticated_sender=auth_header))
                )
                self.assertEqual(facts, expected_facts(e, auth_header))

    def test_authenticated_sender_line_is_read(self) -> None:
        # Was: the (Authenticated sender: ...) comment made the whole header unreadable.
        e = envelope(protocol="ESMTPSA", authenticated_as="alice@example.org")
        facts = parse_received(header_value(received_header(e, authenticated_sender=True)))
        assert facts is not None
        self.assertEqual(
            (facts.authenticated_sender, facts.queue_id), ("alice@example.org", e.queue_id)
        )

    def test_quoted_recipient_with_angle_bracket(self) -> None:
        e = envelope(recipients=[Recipient('"a>b"@example.org', "ab@example.org")])
        facts = parse_received(header_value(received_header(e)))
        assert facts is not None
        self.assertEqual(
            (facts.recipient, facts.date), ('"a>b"@example.org', "Thu, 01 Jan 1970 00:00:00 +0000")
        )

    def test_flags_from_the_protocol_keyword(self) -> None:
        for keyword, flags in {
            "SMTP": (False, False, False),
            "ESMTPS": (True, False, False),
            "ESMTPA": (False, True, False),
            "ESMTPSA": (True, True, False),
            "UTF8SMTPSA": (True, True, True),
        }.items():
            facts = parse_received(header_value(received_header(envelope(protocol=keyword))))
            assert facts is not None
            self.assertEqual((facts.tls, facts.authenticated, facts.smtputf8), flags, keyword)

    def test_another_mta_header_is_not_ours(self) -> None:
        self.assertIsNone(parse_received(" from a by b with SMTP; today"))
        self.assertIsNone(parse_received(""))

    @settings(max_examples=300, deadline=None)
    @given(envelopes(), st.booleans())
    def test_property_rendered_header_parses_back(self, e: Envelope, auth_header: bool) -> None:
        facts = parse_received(header_value(received_header(e, authenticated_sender=auth_header)))
        self.assertEqual(facts, expected_facts(e, auth_header))
