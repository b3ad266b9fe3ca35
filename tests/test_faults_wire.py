"""Fault rules over real sockets: smtplib and ssl see each configured fault, and mail that no
rule matches is delivered as before. The server is mailhub.testing's."""

from __future__ import annotations

import random
import smtplib
import socket
import ssl

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from mailhub.testing import MailhubTestServer

SMTP_ONLY = ("smtp", "smtps")


class FaultsOverTheWire(TestCase):
    async def hub(self, **kwargs) -> MailhubTestServer:
        return await MailhubTestServer.started(self, services=SMTP_ONLY, **kwargs)

    async def test_each_stage_answers_its_code_and_other_mail_is_delivered(self) -> None:
        hub = await self.hub(
            faults=[
                {"stage": "mail", "action": "reply", "code": 451, "sender": "slow-*@*"},
                {"stage": "rcpt", "action": "reply", "code": 550, "enhanced": "5.1.1",
                 "recipient": "fail-550@*"},
                {"stage": "data", "action": "reply", "code": 552, "enhanced": "5.3.4",
                 "recipient": "fail-data@*", "text": "message too big"},
            ]
        )  # fmt: skip

        e = await self.assertFailure(
            hub.send("ok@example.com", sender="slow-app@example.net"), smtplib.SMTPSenderRefused
        )
        self.assertEqual(
            (e.smtp_code, e.smtp_error), (451, b"4.0.0 Error: fault injected by mailhub")
        )

        e = await self.assertFailure(
            hub.send("fail-550@example.com"), smtplib.SMTPRecipientsRefused
        )
        self.assertEqual(
            e.recipients, {"fail-550@example.com": (550, b"5.1.1 Error: fault injected by mailhub")}
        )
        # One refused recipient of two: smtplib reports it, the other gets the message.
        refused = await hub.send(["fail-550@example.com", "kept@example.com"], subject="half")
        self.assertEqual(list(refused), ["fail-550@example.com"])

        e = await self.assertFailure(hub.send("fail-data@example.com"), smtplib.SMTPDataError)
        self.assertEqual((e.smtp_code, e.smtp_error), (552, b"5.3.4 message too big"))

        await hub.send("ok@example.com", subject="untouched")
        delivered = await hub.wait_for_message(to="ok@example.com")
        self.assertEqual(delivered.subject, "untouched")
        self.assertEqual(
            [m.mailbox for m in hub.messages()], ["kept@example.com", "ok@example.com"]
        )

    async def test_connect_and_ehlo(self) -> None:
        hub = await self.hub()
        hub.faults.add(
            {"stage": "connect", "action": "reply", "code": 554, "text": "No SMTP here", "count": 1}
        )
        e = await self.assertFailure(
            threads.deferToThread(hub.smtp_client), smtplib.SMTPConnectError
        )
        self.assertEqual((e.smtp_code, e.smtp_error), (554, b"No SMTP here"))

        hub.faults.add({"stage": "ehlo", "action": "reply", "code": 421, "text": "try later"})

        def ehlo() -> tuple[int, bytes]:
            client = hub.smtp_client()
            try:
                return client.ehlo()
            finally:
                client.close()

        self.assertEqual(await threads.deferToThread(ehlo), (421, b"try later"))

    async def test_disconnect_at_data_closes_cleanly_and_keeps_nothing(self) -> None:
        hub = await self.hub(faults=[{"stage": "data", "action": "disconnect", "count": 1}])
        await self.assertFailure(hub.send("lost@example.com"), smtplib.SMTPServerDisconnected)
        self.assertEqual(hub.messages(), [])
        self.assertEqual(hub.faults.list()[0]["remaining"], 0)
        # The server is fine, and the next message gets through.
        await hub.send("lost@example.com", subject="second try")
        self.assertEqual((await hub.wait_for_message()).subject, "second try")
        self.assertEqual(len(hub.messages()), 1)

    async def test_disconnect_at_connect_is_an_orderly_close(self) -> None:
        hub = await self.hub(faults=[{"stage": "connect", "action": "disconnect"}])

        def read() -> bytes:
            with socket.create_connection(("127.0.0.1", hub.smtp_port), timeout=10) as s:
                return s.recv(100)  # b"": FIN, not a reset (which would raise)

        self.assertEqual(await threads.deferToThread(read), b"")

    async def test_seeded_probability_is_reproducible(self) -> None:
        hub = await self.hub()

        async def outcomes(seed: int) -> list[bool]:
            rule_id = hub.faults.add(
                {"stage": "data", "action": "reply", "code": 451, "probability": 0.5, "seed": seed}
            )

            def send_all() -> list[bool]:
                results = []
                with hub.smtp_client() as client:
                    for i in range(12):
                        try:
                            client.sendmail(
                                "a@example.net", ["p@example.com"], f"Subject: {i}\r\n\r\nx\r\n"
                            )
                            results.append(False)
                        except smtplib.SMTPDataError as e:
                            self.assertEqual(e.smtp_code, 451)
                            results.append(True)
                return results

            try:
                return await threads.deferToThread(send_all)
            finally:
                hub.faults.remove(rule_id)

        first = await outcomes(7)
        self.assertEqual(await outcomes(7), first)
        rng = random.Random(7)
        self.assertEqual(first, [rng.random() < 0.5 for _ in range(12)])
        self.assertEqual(len(hub.messages()), 2 * first.count(False))

    async def test_no_starttls_offer(self) -> None:
        hub = await self.hub(faults=[{"stage": "starttls", "action": "no_starttls"}])

        def try_tls() -> bool:
            with hub.smtp_client() as client:
                client.ehlo()
                offered = client.has_extn("starttls")
                self.assertRaises(smtplib.SMTPNotSupportedError, client.starttls)
                return offered

        self.assertFalse(await threads.deferToThread(try_tls))
        hub.faults.clear()

        def tls_now() -> str:
            with hub.smtp_client() as client:
                client.starttls(context=hub.client_context())
                return client.sock.version()

        self.assertIn("TLS", await threads.deferToThread(tls_now))


class BadCertificates(TestCase):
    """A verifying client (ssl, trusting the test CA) refuses each bad certificate, for its
    reason; the same client accepts the real one."""

    async def check(self, kind: str, reason: str, port: str) -> None:
        hub = await MailhubTestServer.started(self, services=SMTP_ONLY)

        def connect() -> str:
            if port == "smtps":
                with hub.smtp_client("smtps") as client:
                    return client.sock.version()
            with hub.smtp_client() as client:
                client.ehlo("localhost")
                client._host = "localhost"  # smtplib sends SNI and checks this name
                client.starttls(context=hub.client_context())
                return client.sock.version()

        self.assertIn("TLS", await threads.deferToThread(connect))
        hub.faults.add(
            {"stage": "starttls", "action": "bad_certificate", "certificate": kind, "count": 1}
        )
        e = await self.assertFailure(threads.deferToThread(connect), ssl.SSLCertVerificationError)
        self.assertIn(reason, e.verify_message)
        self.assertIn("TLS", await threads.deferToThread(connect))  # count 1: good again

    def test_expired_starttls(self):
        return self.check("expired", "certificate has expired", "smtp")

    def test_self_signed_starttls(self):
        return self.check("self-signed", "self-signed certificate", "smtp")

    def test_wrong_name_starttls(self):
        return self.check("wrong-name", "Hostname mismatch", "smtp")

    def test_expired_implicit_tls(self):
        return self.check("expired", "certificate has expired", "smtps")

    def test_wrong_name_implicit_tls(self):
        return self.check("wrong-name", "Hostname mismatch", "smtps")
