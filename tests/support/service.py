"""The integration tests' base: a real mailhub (``mailhub.testing``) with blocking-client helpers.

The one harness that starts a mailhub for a test is ``mailhub.testing.MailhubTestServer``, the
fixture users get too; ``ServiceTestCase`` adds what these tests share: endpoints of their own,
the dev stack's own certificate unless they bring one, and helpers for blocking clients.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import smtplib
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from mailhub.config import Config, ListenersConfig, TLSConfig
from mailhub.service import MailhubService
from mailhub.testing import LOOPBACK_ANY_PORT, MailhubTestServer

__all__ = ["LOOPBACK_ANY_PORT", "ServiceTestCase", "simple_message"]


class ServiceTestCase(TestCase):
    """Runs the real service (store, group commit, SMTP listener) for the duration of a test."""

    def start(self, *, listeners: ListenersConfig | None = None, **changes: Any) -> MailhubService:
        """Start from the dev defaults with a fresh data dir; ``changes`` replace Config fields.

        ``listeners`` defaults to one SMTP listener on a loopback port chosen by the OS; pass
        your own (with an SMTP one: ``smtp_port`` is read from it) to add IMAP, POP3, ...
        Without ``tls``, the dev stack makes its own certificate (as a real dev stack does).
        """
        if listeners is None:
            listeners = ListenersConfig(smtp=(LOOPBACK_ANY_PORT,))
        changes.setdefault("tls", TLSConfig())
        service = self.start_config(None, listeners=listeners, **changes)
        self.smtp_port = self.hub.smtp_port
        return service

    def start_config(self, config: Config | None, **kwargs: Any) -> MailhubService:
        """Start a whole ``config`` of the test's own (production-style: ``dev=False``, a users
        file, its own CA), or with None the dev stack changed by ``kwargs``."""
        if config is not None and config.checks.enabled and not config.checks.nameservers:
            # Tests never ask the DNS of the world: checks only against a test's own server.
            config = dataclasses.replace(
                config, checks=dataclasses.replace(config.checks, enabled=False)
            )
        self.hub = MailhubTestServer(Path(self.mktemp()), config=config, **kwargs)
        self.hub.start()
        self.addCleanup(self.hub.stop)
        assert self.hub.service is not None
        self.service = self.hub.service
        return self.service

    def port(self, listener: str) -> int:
        """The port the OS chose for the first ``listener`` ("imap", "imaps", ...)."""
        return self.service.listening_ports(listener)[0].getHost().port

    def smtp(self) -> smtplib.SMTP:
        """A blocking smtplib client; use it inside ``in_thread``."""
        client = smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=10)
        return client

    def in_thread(self, f: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Blocking client code runs in a thread so the reactor keeps serving it."""
        return threads.deferToThread(f, *args, **kwargs)

    def delivered(self, address: str) -> list[email.message.EmailMessage]:
        """Messages in the INBOX new/ of ``address``, parsed; read straight from the Maildir."""
        local, domain = address.rsplit("@", 1)
        new = self.service.config.mail_dir / domain / local / "new"
        if not new.is_dir():
            return []
        return [
            email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
            for p in sorted(new.iterdir())
        ]


def simple_message(
    to: str = "alice@example.com", subject: str = "Hello", body: str = "It works.\n"
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.net"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    return msg
