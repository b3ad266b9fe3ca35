"""The whole receive path over a real socket: SMTP client -> receiver -> group commit -> Maildir.

``SmtplibDelivery`` uses ``mailhub.testing`` (the fixture other projects use) directly; the swaks
tests go through ``ServiceTestCase``, which runs on it too.
"""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from typing import Any

from twisted.internet import defer, threads, utils
from twisted.trial.unittest import TestCase

from mailhub.testing import MailhubTestServer
from tests.support.service import ServiceTestCase, simple_message
from tests.support.tools import requires, tool


def text(msg) -> str:
    """The body with LF line ends: the store keeps messages with CRLF, as received on the wire."""
    return msg.get_content().replace("\r\n", "\n")


class SmtplibDelivery(TestCase):
    async def start(self, **changes: Any) -> MailhubTestServer:
        """The whole server on a free port; ``changes`` replace Config fields."""
        self.hub = await MailhubTestServer.started(self, services=("smtp",), **changes)
        return self.hub

    def smtp(self) -> smtplib.SMTP:
        return self.hub.smtp_client()

    def in_thread(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThread(f, *args)

    def delivered(self, address: str) -> list[EmailMessage]:
        return [m.message for m in self.hub.messages(address)]

    async def test_message_lands_in_maildir_with_trace_headers(self) -> None:
        await self.start()

        def send() -> dict:
            with self.smtp() as client:
                return client.send_message(simple_message(), to_addrs=["alice@example.com"])

        refused = await self.in_thread(send)
        self.assertEqual(refused, {})
        [msg] = self.delivered("alice@example.com")
        self.assertEqual(msg["Subject"], "Hello")
        self.assertEqual(text(msg), "It works.\n")
        self.assertEqual(msg["Return-Path"], "<app@example.net>")
        received = msg["Received"]
        self.assertIn("from ", received)
        self.assertIn("[127.0.0.1]", received)
        self.assertIn("for <alice@example.com>", received)
        # Return-Path is first: it is added at delivery, above the trace header (RFC 5321 4.4).
        self.assertEqual(list(msg.keys())[:2], ["Return-Path", "Received"])

    async def test_each_mailbox_gets_one_copy(self) -> None:
        await self.start()
        rcpts = ["bob@example.com", "bob+news@example.com", "Carol@Example.COM", "bob@example.com"]

        def send() -> dict:
            with self.smtp() as client:
                return client.send_message(simple_message(to="list@example.com"), to_addrs=rcpts)

        self.assertEqual(await self.in_thread(send), {})
        self.assertEqual(len(self.delivered("bob@example.com")), 1)
        self.assertEqual(len(self.delivered("carol@example.com")), 1)
        # Bcc-like lists are not leaked: with several recipients there is no "for" clause.
        self.assertNotIn("for <", self.delivered("carol@example.com")[0]["Received"])

    async def test_large_message_arrives_intact(self) -> None:
        await self.start()
        body = "".join(f"line {i:07d} " + "x" * 60 + "\n" for i in range(80_000))  # ~6 MB

        def send() -> None:
            with self.smtp() as client:
                client.send_message(simple_message(to="big@example.com", body=body))

        await self.in_thread(send)
        [msg] = self.delivered("big@example.com")
        self.assertEqual(text(msg), body)

    async def test_dot_lines_survive_transparency(self) -> None:
        await self.start()
        body = ".\n..\n.leading dot\nend\n"

        def send() -> None:
            with self.smtp() as client:
                client.send_message(simple_message(to="dots@example.com", body=body))

        await self.in_thread(send)
        [msg] = self.delivered("dots@example.com")
        self.assertEqual(text(msg), body)

    async def test_smtputf8_address(self) -> None:
        await self.start()
        raw = (
            "From: app@example.net\r\nTo: jörg@bücher.example\r\nSubject: grüße\r\n\r\nhallo\r\n"
        ).encode()

        def send() -> dict:
            with self.smtp() as client:
                client.ehlo()
                self.assertTrue(client.has_extn("smtputf8"))
                return client.sendmail(
                    "app@example.net", ["jörg@bücher.example"], raw, mail_options=["SMTPUTF8"]
                )

        self.assertEqual(await self.in_thread(send), {})
        [msg] = self.delivered("jörg@xn--bcher-kva.example")
        self.assertEqual(msg["Subject"], "grüße")

    async def test_message_too_big_is_refused_and_not_stored(self) -> None:
        from mailhub.config import Limits

        await self.start(limits=Limits(max_message_size=10_000))

        def send() -> tuple[int, bytes]:
            with self.smtp() as client:
                client.ehlo()
                self.assertEqual(client.esmtp_features["size"], "10000")
                try:
                    client.send_message(simple_message(to="x@example.com", body="y" * 20_000))
                except smtplib.SMTPDataError as e:
                    return e.smtp_code, e.smtp_error
                except smtplib.SMTPSenderRefused as e:
                    return e.smtp_code, e.smtp_error
                return 250, b""

        code, text = await self.in_thread(send)
        self.assertEqual(code, 552)
        self.assertTrue(text.startswith(b"5.3.4"), text)
        self.assertEqual(self.delivered("x@example.com"), [])

    async def test_unknown_user_in_closed_domain(self) -> None:
        from mailhub.config import DomainsConfig

        await self.start(domains=DomainsConfig(local=("example.com",)))

        def send() -> tuple[int, bytes]:
            with self.smtp() as client:
                client.ehlo()
                client.mail("app@example.net")
                unknown = client.rcpt("nobody@example.com")
                relay = client.rcpt("someone@elsewhere.example")
                return unknown, relay

        unknown, relay = await self.in_thread(send)
        self.assertEqual(unknown[0], 550)
        self.assertTrue(unknown[1].startswith(b"5.1.1"))
        self.assertEqual(relay[0], 554)
        self.assertTrue(relay[1].startswith(b"5.7.1"))


@requires(tool("swaks"))
class SwaksDelivery(ServiceTestCase):
    async def swaks(self, *args: str) -> tuple[str, int]:
        out, err, code = await utils.getProcessOutputAndValue(
            "swaks",
            ("--server", f"127.0.0.1:{self.smtp_port}", "--timeout", "10", *args),
        )
        return out.decode() + err.decode(), code

    async def test_swaks_default_message(self) -> None:
        self.start()
        out, code = await self.swaks("--from", "ci@example.net", "--to", "dave@example.com")
        self.assertEqual(code, 0, out)
        self.assertIn("250 2.0.0", out)
        [msg] = self.delivered("dave@example.com")
        self.assertIn("test", msg["Subject"])

    async def test_swaks_pipelining(self) -> None:
        self.start()
        out, code = await self.swaks(
            "--pipeline", "--from", "ci@example.net", "--to", "erin@example.com,frank@example.com"
        )
        self.assertEqual(code, 0, out)
        self.assertIn("PIPELINING", out)
        self.assertEqual(len(self.delivered("erin@example.com")), 1)
        self.assertEqual(len(self.delivered("frank@example.com")), 1)

    async def test_swaks_sees_relay_refused(self) -> None:
        from mailhub.config import DomainsConfig

        self.start(domains=DomainsConfig(local=("example.com",)))
        out, code = await self.swaks("--from", "ci@example.net", "--to", "x@elsewhere.example")
        self.assertNotEqual(code, 0)
        self.assertIn("554 5.7.1", out)
