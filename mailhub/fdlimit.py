"""The file-descriptor limit (RLIMIT_NOFILE) against what the listeners may hold open.

Every connection is a descriptor, and ``[limits] max_connections`` counts per listener, so a
server that may hold ``listeners x max_connections`` connections (10,000 IMAP sessions in IDLE:
issue 16) needs at least that many descriptors, plus the store's files, inotify, the logs and
the thread pools (``RESERVE``). The usual soft limit is 1,024, the hard one much higher (systemd:
524,288): at start the soft limit is raised as far as needed, up to the hard one, as any process
may (getrlimit(2)). If even the hard limit is too low, a warning says what to set; past the limit
accept(2) fails with EMFILE and new clients wait in the listen queue until a connection closes.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import dataclass, fields

from twisted.logger import Logger

from mailhub.config import Config, ListenersConfig

log = Logger()

# Descriptors beyond the connections: store files and directories, inotify, listening sockets,
# logs, the DNS resolver's sockets, the queue, thread pools.
RESERVE = 256


@dataclass(frozen=True)
class NofileLimit:
    soft: int  # after any raise
    hard: int
    needed: int

    @property
    def enough(self) -> bool:
        return self.soft >= self.needed


def descriptors_needed(config: Config) -> int:
    """Connections every listener may hold at once, plus RESERVE."""
    endpoints = sum(len(getattr(config.listeners, f.name)) for f in fields(ListenersConfig))
    return endpoints * config.limits.max_connections + RESERVE


def raise_nofile_limit(
    config: Config,
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
) -> NofileLimit:
    """Raise the soft RLIMIT_NOFILE to what the listeners need (at most the hard limit); warn
    if that is not enough."""
    needed = descriptors_needed(config)
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    unlimited = hard == resource.RLIM_INFINITY
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if unlimited else min(needed, hard)
        try:
            setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as e:
            log.warn("cannot raise the file-descriptor limit to {n}: {e}", n=wanted, e=e)
    limit = NofileLimit(soft if soft != resource.RLIM_INFINITY else needed, hard, needed)
    if not limit.enough:
        log.warn(
            "the file-descriptor limit ({soft}, hard {hard}) is below the {needed} that "
            "[limits] max_connections = {most} on every listener may need: beyond it new "
            "connections wait unaccepted. Raise it (systemd LimitNOFILE={needed}, or "
            "ulimit -n) or lower max_connections",
            soft=limit.soft,
            hard=hard,
            needed=needed,
            most=config.limits.max_connections,
        )
    return limit
