"""Mail submitted to a real mailhub by a logged-in client arrives DKIM-signed (issue 14): both
signatures verify (dkimpy, and Debian's OpenDKIM when installed) against the records that
`mailhub dkim keygen` prints, and they cover the Date and Message-ID the submission fixes added.
Mail on port 25 from a client that did not log in is not signed."""

from __future__ import annotations

import shutil
import smtplib
from pathlib import Path

from mailhub.config import DKIMConfig, ListenersConfig, TLSConfig
from tests.support.dkim import make_keys, opendkim_verify, records, signature_fields, verify_each
from tests.support.service import LOOPBACK_ANY_PORT, ServiceTestCase

# No Date, no Message-ID: the submission sink adds them before the message is signed.
MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: signed on the way out\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)


class SubmittedMailIsSigned(ServiceTestCase):
    def setUp(self) -> None:
        key_dir = Path(self.mktemp()).absolute()
        self.keys = make_keys(key_dir, "example.com")
        self.published = records(self.keys)
        listeners = ListenersConfig(smtp=(LOOPBACK_ANY_PORT,), submission=(LOOPBACK_ANY_PORT,))
        self.start(listeners=listeners, tls=TLSConfig(), dkim=DKIMConfig(key_dir=key_dir))

    def raw_delivered(self, address: str) -> list[bytes]:
        local, domain = address.split("@")
        new = self.service.config.mail_dir / domain / local / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []

    async def test_submission_with_auth_is_signed_and_verifies(self) -> None:
        def send() -> None:
            # The dev stack: any login works, without TLS on loopback.
            with smtplib.SMTP("127.0.0.1", self.port("submission"), timeout=10) as client:
                client.login("alice@example.com", "any")
                client.sendmail("alice@example.com", ["bob@example.com"], MESSAGE)

        await self.in_thread(send)
        [stored] = self.raw_delivered("bob@example.com")
        # Local delivery puts Return-Path on top; the signatures come right after it.
        self.assertTrue(stored.split(b"\r\n", 1)[1].startswith(b"DKIM-Signature: "), stored)
        self.assertEqual(verify_each(stored, self.published), [("e1", True), ("r1", True)])
        for tags in signature_fields(stored):
            h = tags[b"h"].lower().split(b":")
            self.assertIn(b"date", h)
            self.assertIn(b"message-id", h)
        opendkim = shutil.which("opendkim")
        if opendkim is not None:  # the unit tests require it; here it is a bonus
            said = opendkim_verify(opendkim, stored, self.published, Path(self.mktemp()))
            self.assertIn("header.a=rsa-sha256 header.s=r1", said)
            self.assertRegex(said, r"dkim=pass [^;]*header.a=ed25519-sha256 header.s=e1")

    async def test_a_big_message_is_spooled_signed_and_kept_whole(self) -> None:
        big = MESSAGE + b"".join(b"line %07d of a big message\r\n" % i for i in range(80000))

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", self.port("submission"), timeout=30) as client:
                client.login("alice@example.com", "any")
                client.sendmail("alice@example.com", ["bob@example.com"], big)

        await self.in_thread(send)  # over 1 MiB: held in a temporary file until signed
        [stored] = self.raw_delivered("bob@example.com")
        self.assertTrue(stored.endswith(big[big.index(b"\r\n\r\n") :]))
        self.assertEqual(verify_each(stored, self.published), [("e1", True), ("r1", True)])

    async def test_port_25_without_login_is_not_signed(self) -> None:
        def send() -> None:
            with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=10) as client:
                client.sendmail("alice@example.com", ["bob@example.com"], MESSAGE)

        await self.in_thread(send)
        [stored] = self.raw_delivered("bob@example.com")
        self.assertNotIn(b"DKIM-Signature", stored)
        self.assertTrue(stored.endswith(MESSAGE))
