"""service.build: where the inbound checks sit (port 25; every SMTP listener in the dev stack;
nowhere when [checks] enabled is off). Building asks no DNS; nothing is sent here."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from mailhub.checks.signing import SigningSink
from mailhub.checks.sink import CheckingSink
from mailhub.config import (
    ChecksConfig,
    Config,
    DomainsConfig,
    ListenersConfig,
    TLSConfig,
    dev_config,
)
from mailhub.service import ListenerService, build
from mailhub.smtp.submission import SubmissionSink
from tests.support.tls import CertificateAuthority

LOOPBACK = "tcp:0:interface=127.0.0.1"


def walk(sink: Any) -> list[Any]:
    """The sink and the decorators under it, from the receiver inwards."""
    out = []
    while sink is not None:
        out.append(sink)
        sink = getattr(sink, "inner", None) or getattr(sink, "_inner", None)
    return out


def chain(sink: Any) -> list[type]:
    return [type(s) for s in walk(sink)]


class Placement(TestCase):
    def sinks(self, config: Config) -> dict[str, list[type]]:
        service = build(config)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        return {
            key: chain(service.listening_ports(key)[0].factory.sink)
            for key in ("smtp", "submission")
            if service.listening_ports(key)
        }

    def production(self, **checks: Any) -> Config:
        directory = Path(self.mktemp()).absolute()
        ca = CertificateAuthority()
        cert, key = ca.issue(["localhost"]).write(directory, "mail")

        return Config(
            source="<checks placement>",
            hostname="mx.example.test",
            data_dir=directory / "data",
            dev=False,
            domains=DomainsConfig(local=("example.test",)),
            listeners=ListenersConfig(smtp=(LOOPBACK,), submission=(LOOPBACK,)),
            tls=TLSConfig(certificate=cert, key=key),
            checks=ChecksConfig(**checks),
        )

    def test_production_judges_port_25_only(self) -> None:
        sinks = self.sinks(self.production())
        self.assertIn(CheckingSink, sinks["smtp"])
        self.assertNotIn(CheckingSink, sinks["submission"])
        self.assertEqual(sinks["submission"][:2], [SubmissionSink, SigningSink])

    def test_dev_stack_judges_every_smtp_listener_after_signing(self) -> None:
        config = dataclasses.replace(
            dev_config(Path(self.mktemp()).absolute()),
            listeners=ListenersConfig(smtp=(LOOPBACK,), submission=(LOOPBACK,)),
        )
        sinks = self.sinks(config)
        self.assertEqual(sinks["submission"][:3], [SubmissionSink, SigningSink, CheckingSink])
        self.assertEqual(sinks["smtp"][:2], [SigningSink, CheckingSink])

    def test_off(self) -> None:
        sinks = self.sinks(self.production(enabled=False))
        self.assertNotIn(CheckingSink, sinks["smtp"])

    def test_authserv_id(self) -> None:
        for checks, expected in (({"authserv_id": "auth.example.test"}, "auth.example.test"),
                                 ({}, "mx.example.test")):  # fmt: skip
            service = build(self.production(**checks))
            [listener] = [s for s in service if isinstance(s, ListenerService) and s.key == "smtp"]
            [checking] = [s for s in walk(listener.factory.sink) if isinstance(s, CheckingSink)]
            self.assertEqual(checking.authserv_id, expected)

    def test_log_accepted(self) -> None:
        for checks, expected in (({"log_accepted": True}, True), ({}, False)):
            service = build(self.production(**checks))
            [listener] = [s for s in service if isinstance(s, ListenerService) and s.key == "smtp"]
            [checking] = [s for s in walk(listener.factory.sink) if isinstance(s, CheckingSink)]
            self.assertEqual(checking.log_accepted, expected)
