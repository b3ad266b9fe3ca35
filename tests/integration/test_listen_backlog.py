"""Every listener's listen(2) backlog is ``[limits] listen_backlog`` (issue 12, 5d): with
Twisted's default of 50, half of a burst of 1,000 connections waited 15 s for a greeting."""

from __future__ import annotations

import dataclasses

from twisted.trial.unittest import SynchronousTestCase

from mailhub.config import DEV_PORTS, Limits, ListenersConfig
from mailhub.service import FACTORIES, with_backlog
from tests.support.service import LOOPBACK_ANY_PORT, ServiceTestCase


class ListenBacklog(ServiceTestCase):
    def backlogs(self) -> dict[str, int]:
        return {key: self.service.listening_ports(key)[0].backlog for key in FACTORIES}

    def test_every_listener_gets_the_default(self) -> None:
        self.assertEqual(set(FACTORIES), set(DEV_PORTS))  # the eight kinds, web included
        self.start(listeners=ListenersConfig(**{k: (LOOPBACK_ANY_PORT,) for k in FACTORIES}))
        self.assertEqual(Limits().listen_backlog, 1024)
        self.assertEqual(self.backlogs(), dict.fromkeys(FACTORIES, 1024))

    def test_configured_backlog_and_one_named_in_the_endpoint(self) -> None:
        listeners = ListenersConfig(
            **{k: (LOOPBACK_ANY_PORT,) for k in FACTORIES},
        )
        listeners = dataclasses.replace(listeners, imap=(f"{LOOPBACK_ANY_PORT}:backlog=7",))
        self.start(listeners=listeners, limits=Limits(listen_backlog=300))
        expected = dict.fromkeys(FACTORIES, 300) | {"imap": 7}
        self.assertEqual(self.backlogs(), expected)


class WithBacklog(SynchronousTestCase):
    def test_only_endpoint_types_that_take_one(self) -> None:
        self.assertEqual(with_backlog("tcp:25", 9), "tcp:25:backlog=9")
        self.assertEqual(
            with_backlog("TCP6:25:interface=\\:\\:", 9), "TCP6:25:interface=\\:\\::backlog=9"
        )
        self.assertEqual(with_backlog("unix:/run/m.sock", 9), "unix:/run/m.sock:backlog=9")
        self.assertEqual(with_backlog("tcp:25:backlog=3", 9), "tcp:25:backlog=3")
        # systemd hands over a socket that is already listening: nothing to add.
        self.assertEqual(
            with_backlog("systemd:domain=INET:index=0", 9), "systemd:domain=INET:index=0"
        )
