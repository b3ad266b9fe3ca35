"""What the service logs when it starts: one clear line per listener."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailhub.config import ListenersConfig, dev_config
from mailhub.service import FACTORIES, build

LOOPBACK = "tcp:0:interface=127.0.0.1"


class StartupLog(TestCase):
    async def test_one_line_per_listener(self) -> None:
        # Twisted's own "<Factory> starting on <port>" line of tcp.Port is unconditional
        # (no noisy flag): ours is the one with the kind, the address and the endpoint.
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        config = dataclasses.replace(
            dev_config(Path(self.mktemp()).absolute()),
            listeners=ListenersConfig(smtp=(LOOPBACK,), smtps=(LOOPBACK,), imap=(LOOPBACK,)),
        )
        service = build(config)
        service.privilegedStartService()
        service.startService()
        ports = {k: service.listening_ports(k)[0].getHost().port for k in ("smtp", "smtps", "imap")}
        await service.stopService()
        texts = [formatEvent(e) for e in events]

        # Twisted's factory start and stop lines name an object address and say nothing useful.
        self.assertEqual([t for t in texts if "factory <" in t.lower()], [])
        # ... and names the SMTP listeners by what they are, not by the fault-rule wrapper.
        self.assertEqual([t for t in texts if "Faulty" in t], [])
        self.assertIn(f"SMTPServerFactory starting on {ports['smtp']}", texts)
        for kind, port in ports.items():
            ours = [t for t in texts if t.startswith(f"{kind} listening on ")]
            self.assertEqual(ours, [f"{kind} listening on 127.0.0.1:{port} ({LOOPBACK})"])


class Listeners(SynchronousTestCase):
    def test_every_listener_kind_is_served(self) -> None:
        # A kind in the config that no factory serves would be a listener silently not started.
        self.assertEqual(set(FACTORIES), set(ListenersConfig.__dataclass_fields__))
