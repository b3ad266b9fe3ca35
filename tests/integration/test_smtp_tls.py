"""STARTTLS on the MTA listener (RFC 3207) with the dev stack's own certificate, verified."""

from __future__ import annotations

import ssl

from twisted.internet import utils

from tests.support.service import ServiceTestCase, simple_message
from tests.support.tools import requires, swaks_tls


class StartTLS(ServiceTestCase):
    def client_context(self) -> ssl.SSLContext:
        """Trusts only the certificate this dev stack made on first start."""
        assert self.service.tls is not None
        [info] = self.service.tls.certificates
        context = ssl.create_default_context(cafile=str(info.path))
        return context

    async def test_starttls_verified_then_delivered_with_tls_in_trace(self) -> None:
        self.start()
        context = self.client_context()

        def send() -> tuple[bool, bool, str]:
            with self.smtp() as client:
                client.ehlo()
                offered = client.has_extn("starttls")
                client.starttls(context=context)  # verifies 127.0.0.1 against the cert's SAN
                client.ehlo()
                offered_again = client.has_extn("starttls")
                client.send_message(simple_message(to="tls@example.com"))
                return offered, offered_again, client.sock.version()

        offered, offered_again, version = await self.in_thread(send)
        self.assertTrue(offered)
        self.assertFalse(offered_again, "STARTTLS must not be offered inside TLS")
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        [msg] = self.delivered("tls@example.com")
        self.assertIn("with ESMTPS", msg["Received"])
        self.assertIn(version, msg["Received"])

    async def test_dev_certificate_is_reused_across_restarts(self) -> None:
        service = self.start()
        first = service.tls.certificates[0].fingerprint
        await service.stopService()
        from mailhub.service import build

        again = build(service.config)
        self.assertEqual(again.tls.certificates[0].fingerprint, first)


@requires(swaks_tls())
class SwaksTLS(ServiceTestCase):
    async def test_swaks_starttls(self) -> None:
        self.start()
        out, err, code = await utils.getProcessOutputAndValue(
            "swaks",
            (
                "--server", f"127.0.0.1:{self.smtp_port}", "--timeout", "10", "--tls",
                "--from", "ci@example.net", "--to", "tls-swaks@example.com",
            ),
        )  # fmt: skip
        output = (out + err).decode()
        self.assertEqual(code, 0, output)
        self.assertIn("TLS started", output)
        [msg] = self.delivered("tls-swaks@example.com")
        self.assertIn("with ESMTPS", msg["Received"])
