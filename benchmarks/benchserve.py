"""The benchmarks' mailhub: the dev stack with only the listeners a benchmark names, each on
127.0.0.1, started in this process as ``twistd -n mailhub`` starts it.

    config = dev_stack(data_dir, smtp=2525, imap=2143, keep_all=True)
    start(config)
    reactor.run()

The DNS checks are off (a benchmark must not ask the world's DNS; inbound_checks.py sets up
its own). ``keep_all``: the dev stack's retention (its newest 5,000 messages) off, or it would
prune a benchmark's mailbox while it is read. ``limits``: fields of ``LimitsConfig`` to change.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mailhub.config import ChecksConfig, Config, DevConfig, ListenersConfig, dev_config


def dev_stack(
    data_dir: str | Path,
    *,
    keep_all: bool = False,
    limits: dict[str, Any] | None = None,
    **ports: int,
) -> Config:
    """The dev configuration with a listener ``tcp:PORT:interface=127.0.0.1`` for each of
    ``ports`` (smtp=, imap=, imaps=, pop3=, web=, ...) and no other."""
    base = dev_config(Path(data_dir))
    listeners = ListenersConfig(
        **{name: (f"tcp:{port}:interface=127.0.0.1",) for name, port in ports.items()}
    )
    return dataclasses.replace(
        base,
        checks=ChecksConfig(enabled=False),
        listeners=listeners,
        retention=DevConfig(max_messages=0, max_age=None) if keep_all else base.retention,
        limits=dataclasses.replace(base.limits, **(limits or {})),
    )


def start(config: Config) -> None:
    """Build and start the services, stopped when the reactor shuts down; the start-up heap
    frozen afterwards as twistd's mailhub does (mailhub.tap.HeapFreeze), or each full
    collection walks it again. The caller runs the reactor."""
    from twisted.internet import reactor

    from mailhub.service import build
    from mailhub.tap import freeze_startup_heap

    service = build(config)
    service.privilegedStartService()
    service.startService()
    freeze_startup_heap()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)  # type: ignore[attr-defined]
