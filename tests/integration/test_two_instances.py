"""The whole chain on one machine: MUA -> A (submission, AUTH over STARTTLS) -> A's queue -> MX
lookup (a real DNS server on 127.0.0.1, real dnspython code path) -> B's port 25 -> B's Maildir ->
the recipient reading it on B over IMAPS and POP3S.

A serves a.test, B serves b.test. Both are complete mailhub services started from a Config by
the test harness (mailhub.testing), whose change feed tells when a message has arrived.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email
import email.policy
import imaplib
import io
import poplib
import socket
from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread

from mailhub.cli import main
from mailhub.config import (
    Config,
    DomainsConfig,
    ListenersConfig,
    QueueConfig,
    RelayConfig,
    dev_config,
)
from mailhub.service import MailhubService
from tests.support.instances import LOOPBACK, Instances


def run_cli(*argv: str) -> str:
    """The ``mailhub`` admin command in this process, its standard output as text."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(list(argv))
        except SystemExit as e:
            assert e.code == 0, (argv, e.code, out.getvalue())
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoInstances(Instances):
    timeout = 60
    ZONE = {"b.test": {"MX": [(10, "mx.b.test")]}, "mx.b.test": {"A": ["127.0.0.1"]}}

    def instance_b(
        self, *, smtp: str = LOOPBACK, catch_all: bool = True, readers: bool = False
    ) -> Config:
        """B; with ``readers`` also its IMAPS and POP3S listeners (implicit TLS)."""
        more = {"imaps": (LOOPBACK,), "pop3s": (LOOPBACK,)} if readers else {}
        return dataclasses.replace(
            dev_config(Path(self.mktemp()).absolute(), hostname="mx.b.test"),
            domains=DomainsConfig(local=("b.test",), catch_all=("b.test",) if catch_all else ()),
            listeners=ListenersConfig(smtp=(smtp,), **more),
            checks=self.checks(),
        )

    def instance_a(self, b_port: int) -> MailhubService:
        config = dataclasses.replace(
            dev_config(Path(self.mktemp()).absolute(), hostname="mx.a.test"),
            domains=DomainsConfig(local=("a.test",), catch_all=("a.test",)),
            listeners=ListenersConfig(smtp=(LOOPBACK,), submission=(LOOPBACK,)),
            # The MX answer says "mx.b.test -> 127.0.0.1"; B listens on b_port there.
            relay=RelayConfig(nameservers=self.nameservers, port=b_port),
            queue=QueueConfig(retry_schedule=(0.5,), delay_notice=0),
            checks=self.checks(),
        )
        return self.start(config)

    def read_over_imap(self, b: MailhubService, user: str) -> Any:
        """The newest INBOX message of ``user`` on B, by IMAPS (certificate verified)."""
        port, context = self.port(b, "imaps"), self.client_context(b)

        def read() -> bytes:
            with imaplib.IMAP4_SSL("localhost", port, ssl_context=context, timeout=10) as imap:
                imap.login(user, "any password works in the dev stack")
                imap.select("INBOX")
                status, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[])")
                assert status == "OK", (status, data)
                return data[-2][1]

        return deferToThread(read)

    def read_over_pop3(self, b: MailhubService, user: str) -> Any:
        """The newest message of ``user`` on B, by POP3S (certificate verified)."""
        port, context = self.port(b, "pop3s"), self.client_context(b)

        def read() -> bytes:
            pop = poplib.POP3_SSL("localhost", port, context=context, timeout=10)
            try:
                pop.user(user)
                pop.pass_("any password works in the dev stack")
                count, _ = pop.stat()
                # poplib gives the lines without their CRLF (and un-dot-stuffed).
                return b"".join(line + b"\r\n" for line in pop.retr(count)[1])
            finally:
                pop.quit()

        return deferToThread(read)

    async def test_submitted_on_a_relayed_to_b_via_mx(self) -> None:
        b = self.start(self.instance_b(readers=True))
        a = self.instance_a(self.port(b, "smtp"))
        self.assertEqual(await self.submit(a, ["bob@b.test"]), {})
        await self.delivered(b, "bob@b.test")
        [msg] = self.inbox(b, "bob@b.test")
        self.assertEqual(msg["Subject"], "hop")
        self.assertEqual(msg["Return-Path"], "<alice@a.test>")
        received = msg.get_all("Received")
        # B's trace header on top (from A, over TLS), A's below it (from the MUA, authenticated).
        self.assertIn("by mx.b.test", received[0])
        self.assertIn("with ESMTPS", received[0])
        self.assertIn("by mx.a.test", received[1])
        self.assertIn("ESMTPSA", received[1])
        self.assertIn(("b.test", "MX"), self.dns.queries)
        await self.until(
            lambda: not list((a.config.data_dir / "queue").glob("*.json")), "A's queue to empty"
        )
        # Bob reads it on B over IMAP and over POP3: the same bytes as in B's store.
        stored = msg.as_bytes(policy=email.policy.SMTP)
        for read in (self.read_over_imap, self.read_over_pop3):
            fetched = email.message_from_bytes(
                await read(b, "bob@b.test"), policy=email.policy.default
            )
            self.assertEqual(fetched["Subject"], "hop")
            self.assertEqual(fetched.get_all("Received"), received)
            self.assertEqual(fetched.as_bytes(policy=email.policy.SMTP), stored)

    async def test_b_down_then_back(self) -> None:
        b_port = free_port()  # nothing listens there yet
        a = self.instance_a(b_port)
        self.assertEqual(await self.submit(a, ["carol@b.test"]), {})
        queue_dir = a.config.data_dir / "queue"
        await self.until(lambda: list(queue_dir.glob("*.json")), "the message to be queued")

        def attempted() -> bool:
            import json

            records = [json.loads(p.read_text()) for p in queue_dir.glob("*.json")]
            return any(r["attempts"] >= 1 for rec in records for r in rec["recipients"])

        await self.until(attempted, "a failed attempt while B is down")
        self.assertEqual(self.inbox(a, "alice@a.test"), [], "no bounce for a temporary failure")

        # The operator looks at the queue of the running server, as `mailhub queue list` does.
        data = str(a.config.data_dir)
        listing = await deferToThread(run_cli, "queue", "list", "--data", data)
        self.assertIn("<alice@a.test>", listing)
        self.assertIn("<carol@b.test>\tpending", listing)
        self.assertIn("Connection refused", listing)
        b = self.start(self.instance_b(smtp=f"tcp:{b_port}:interface=127.0.0.1"))
        await self.delivered(b, "carol@b.test")
        self.assertEqual(self.inbox(a, "alice@a.test"), [])

    async def test_one_of_two_refused_bounces_only_that_one(self) -> None:
        b = self.start(self.instance_b(catch_all=False))
        b.store.mailbox("dave@b.test", create=True)  # erin does not exist: 550 5.1.1
        a = self.instance_a(self.port(b, "smtp"))
        self.assertEqual(await self.submit(a, ["dave@b.test", "erin@b.test"]), {})
        await self.delivered(b, "dave@b.test")
        await self.delivered(a, "alice@a.test")  # the bounce
        [bounce] = self.inbox(a, "alice@a.test")
        self.assertEqual(bounce["Return-Path"], "<>")
        self.assertEqual(bounce.get_content_type(), "multipart/report")
        self.assertEqual(bounce.get_param("report-type"), "delivery-status")
        text = bounce.as_string()
        self.assertIn("erin@b.test", text)
        self.assertIn("5.1.1", text)
        self.assertNotIn("Final-Recipient: rfc822; dave@b.test", text)
        self.assertEqual(self.inbox(b, "erin@b.test"), [])
