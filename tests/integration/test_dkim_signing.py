"""Mail submitted to a real mailhub by a logged-in client arrives DKIM-signed (issue 14): both
signatures verify (dkimpy, and Debian's OpenDKIM when installed) against the records that
`mailhub dkim keygen` prints, and they cover the Date and Message-ID the submission fixes added.
Mail on port 25 from a client that did not log in is not signed."""

from __future__ import annotations

import shutil
import smtplib
from pathlib import Path
from typing import Any

from mailhub.config import DKIMConfig, DomainsConfig, ListenersConfig, RelayConfig, TLSConfig
from tests.support.dkim import make_keys, opendkim_verify, records, signature_fields, verify_each
from tests.support.relay import ScriptedPeer, accept_data, default_script
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


def _refuse_bad(line: str, peer: Any) -> bytes | None:
    """The remote server: 550 for bad@b.test at RCPT, 250 for the rest."""
    if line.upper().startswith("RCPT") and "bad@" in line:
        return b"550 5.1.1 no such user\r\n"
    return default_script(line, peer)


class RelayedMailAndBouncesAreSigned(ServiceTestCase):
    """What leaves the server is signed: the relayed copy a remote server receives, and the
    bounce (From: MAILER-DAEMON@mail.example.com, signed by example.com's keys)."""

    async def test_relayed_copy_and_bounce_verify(self) -> None:
        key_dir = Path(self.mktemp()).absolute()
        keys = make_keys(key_dir, "example.com")
        published = records(keys)
        peer = ScriptedPeer(self, _refuse_bad, accept_data)
        self.start(
            listeners=ListenersConfig(smtp=(LOOPBACK_ANY_PORT,), submission=(LOOPBACK_ANY_PORT,)),
            tls=TLSConfig(),
            hostname="mail.example.com",
            domains=DomainsConfig(local=("example.com",), catch_all=("example.com",)),
            relay=RelayConfig(routes=(("b.test", "127.0.0.1", peer.port),)),
            dkim=DKIMConfig(key_dir=key_dir),
        )
        message = MESSAGE.replace(b"To: bob@example.com", b"To: good@b.test, bad@b.test")

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", self.port("submission"), timeout=10) as client:
                client.login("alice@example.com", "any")
                client.sendmail("alice@example.com", ["good@b.test", "bad@b.test"], message)

        await self.in_thread(send)
        bounce = await self.hub.wait_for_message(to="alice@example.com")
        self.assertIn(b"multipart/report", bounce.raw)
        self.assertEqual(verify_each(bounce.raw, published), [("e1", True), ("r1", True)])
        self.assertEqual({t[b"d"] for t in signature_fields(bounce.raw)}, {b"example.com"})
        relayed = peer.connections[0].data.removesuffix(b".\r\n")
        self.assertTrue(relayed.endswith(b"Hello Bob.\r\n"))
        self.assertEqual(verify_each(relayed, published), [("e1", True), ("r1", True)])
