"""Several whole mailhub instances on 127.0.0.1 over one local DNS server (tests/support/
localdns.py), for the tests of mail between servers (relay by MX, the inbound checks).

A test case subclasses ``Instances``, names its zone in ``ZONE`` (copied for each test), starts
its instances with ``start(config)`` (each a ``mailhub.testing.MailhubTestServer``) and gives
their configs ``checks()`` / ``nameservers`` so that they ask only the local DNS server.
"""

from __future__ import annotations

import copy
import email
import email.message
import email.policy
import smtplib
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from mailhub.config import ChecksConfig, Config
from mailhub.service import MailhubService
from mailhub.testing import MailhubTestServer
from tests.support.localdns import LocalDNS

LOOPBACK = "tcp:0:interface=127.0.0.1"


class Instances(TestCase):
    ZONE: ClassVar[dict[str, dict[str, list[Any]]]] = {}

    def setUp(self) -> None:
        self.dns = LocalDNS(copy.deepcopy(self.ZONE))
        self.dns.start()
        self.addCleanup(self.dns.stop)
        self.hubs: dict[MailhubService, MailhubTestServer] = {}

    # -- the zone --------------------------------------------------------------------------------

    def publish(self, name: str, kind: str, *values: Any) -> None:
        self.dns.authority.zone.setdefault(name, {})[kind] = list(values)

    @property
    def nameservers(self) -> tuple[tuple[str, int], ...]:
        assert self.dns.port is not None
        return (("127.0.0.1", self.dns.port.getHost().port),)

    def checks(self, **kw: Any) -> ChecksConfig:
        """The inbound checks, asking only the local DNS."""
        return ChecksConfig(nameservers=self.nameservers, **kw)

    # -- the instances ---------------------------------------------------------------------------

    def start(self, config: Config) -> MailhubService:
        """Start one instance through the test harness (mailhub.testing); its hub in hubs."""
        hub = MailhubTestServer(Path(self.mktemp()), config=config)
        hub.start()
        self.addCleanup(hub.stop)
        assert hub.service is not None
        self.hubs[hub.service] = hub
        return hub.service

    def port(self, service: MailhubService, kind: str) -> int:
        return service.listening_ports(kind)[0].getHost().port

    def client_context(self, service: MailhubService) -> ssl.SSLContext:
        """A client context that verifies ``service``'s (self-signed dev) certificate."""
        [cert] = service.tls.certificates
        return ssl.create_default_context(cafile=str(cert.path))

    # -- mail ------------------------------------------------------------------------------------

    def submit(
        self,
        a: MailhubService,
        rcpts: list[str],
        *,
        sender: str = "alice@a.test",
        subject: str = "hop",
        body: str = "across two servers\n",
    ) -> Any:
        """alice@a.test submits on ``a`` over STARTTLS (certificate verified) with AUTH PLAIN;
        ``sender`` is the From field. Fires with smtplib's refused recipients."""
        context = self.client_context(a)
        port = self.port(a, "submission")

        def send() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
                client.starttls(context=context)
                client.login("alice@a.test", "any password works in the dev stack")
                msg = email.message.EmailMessage()
                msg["From"], msg["To"], msg["Subject"] = sender, ", ".join(rcpts), subject
                msg.set_content(body)
                return client.send_message(msg, from_addr="alice@a.test", to_addrs=rcpts)

        return deferToThread(send)

    def delivered(self, service: MailhubService, address: str) -> Any:
        """Fires when a message for ``address`` is in ``service``'s store (its change feed)."""
        return self.hubs[service].wait_for_message(to=address, timeout=20)

    def stored(self, service: MailhubService, address: str, folder: str = "") -> list[bytes]:
        """The messages in a mailbox's folder (INBOX by default) that no client has seen."""
        local, domain = address.split("@")
        box = service.config.mail_dir / domain / local
        new = (box / f".{folder}" if folder else box) / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []

    def inbox(self, service: MailhubService, address: str) -> list[email.message.EmailMessage]:
        return [
            email.message_from_bytes(raw, policy=email.policy.default)
            for raw in self.stored(service, address)
        ]

    async def until(self, check: Callable[[], Any], what: str, seconds: float = 30) -> None:
        """Wait for ``check()`` (a state on disk that no event announces)."""
        for _ in range(int(seconds / 0.05)):
            if check():
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"timed out waiting for {what}")
