"""twistd glue: ``twistd -n mailhub [--config FILE] [--data DIR] [--interface ADDR]``.

No options: the development stack (loopback only, catch-all, nothing leaves the machine).
``--interface 0.0.0.0`` opens the same stack to other hosts, as a container in docker-compose
needs (like Mailpit's default there).
"""

from __future__ import annotations

import gc
import ipaddress
from typing import Any

from twisted.application.service import IService, Service
from twisted.logger import FileLogObserver, ILogObserver
from twisted.python import usage

from mailhub.config import (
    DEV_INTERFACE,
    DEV_PORTS,
    MODE_DEFAULTS,
    Config,
    ConfigError,
    allowed_host,
    dev_config,
    load,
)
from mailhub.logtext import faster

# The help texts show the dev stack's defaults from the one table config.py keeps.
_DEV_DATA = MODE_DEFAULTS["[server] data_dir"].dev


class Options(usage.Options):
    synopsis = (
        "[--config FILE [--workers N]] [--data DIR] [--interface ADDR] [--allowed-host NAME ...]"
    )
    longdesc = (
        f"Without --config, starts the development stack: SMTP on {DEV_INTERFACE}:"
        f"{DEV_PORTS['smtp']} accepts mail for any address and keeps it in DIR/mail (default "
        f"{_DEV_DATA}). With --config, runs as configured in the TOML file (see "
        "etc/mailhub.toml); dev = true there gives the same defaults."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: development stack)."],
        [
            "data",
            "d",
            None,
            f"Data directory (overrides [server] data_dir; default {_DEV_DATA})",
        ],
        [
            "interface",
            "i",
            None,
            f"Development stack only: the address its listeners bind (default {DEV_INTERFACE}; "
            "0.0.0.0 or :: in a container). Any login works there: never on a shared network.",
        ],
        [
            "workers",
            "w",
            None,
            "With --config: run N worker processes sharing every listening port (SO_REUSEPORT "
            "on Linux) over the same data directory, under this process, which restarts a "
            "worker that dies (see the README).",
            int,
        ],
        # Given by the supervisor to its workers (mailhub.workers), not by people.
        ["worker", None, None, "(internal) this process is worker K of N: K/N"],
        ["listen-fds", None, "", "(internal) inherited listening sockets: kind=fd,fd;..."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["allowed_hosts"] = []

    def opt_allowed_host(self, name: str) -> None:
        """Development stack only: one more Host name for the web page (repeatable)."""
        # Besides localhost and the server's addresses, e.g. the docker-compose service name.
        try:
            self["allowed_hosts"].append(allowed_host(name))
        except ValueError as e:
            raise usage.UsageError(f"--allowed-host: {e}") from None

    def postOptions(self) -> None:
        if self["interface"] is not None and self["config"]:
            raise usage.UsageError(
                "--interface is for the development stack; with --config set [listeners] instead"
            )
        if self["allowed_hosts"] and self["config"]:
            raise usage.UsageError(
                "--allowed-host is for the development stack; with --config set "
                "[web] allowed_hosts instead"
            )
        if self["interface"] is not None and not _is_ip_address(self["interface"]):
            raise usage.UsageError(f"--interface: not an IP address: {self['interface']!r}")
        if self["workers"] is not None:
            if self["workers"] < 1:
                raise usage.UsageError("--workers: at least 1")
            if not self["config"]:
                # The page's sandboxes and run-time fault rules live in one process.
                raise usage.UsageError(
                    "--workers needs --config: the development stack runs as one process"
                )
        self["role"] = None
        if self["worker"] is not None:
            from mailhub.workers import WorkerRole

            try:
                self["role"] = WorkerRole.parse(self["worker"], self["listen-fds"])
            except ValueError as e:
                raise usage.UsageError(f"--worker: {e}") from None


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def makeService(options: Options) -> IService:
    from mailhub.service import build

    try:
        if options["config"]:
            config = load(options["config"], data_dir=options["data"])
        else:
            config = dev_config(
                options["data"],
                interface=options["interface"] or DEV_INTERFACE,
                allowed_hosts=tuple(options["allowed_hosts"]),
            )
    except ConfigError as e:
        # One clear message and a non-zero exit, never a traceback: twistd prints SystemExit.
        raise SystemExit(f"mailhub: configuration error in {e}") from None
    if options["workers"] is not None:
        return _supervisor(config, options)
    service = build(config, worker=options["role"])
    HeapFreeze().setServiceParent(service)  # last child: starts after everything else
    if options["role"] is None:  # a worker logs through mailhub.workers (--logger)
        service.twistd_log_observer = twistd_log_observer(getattr(options, "parent", None))
    return service


def twistd_log_observer(twistd: Any) -> ILogObserver | None:
    """The observer twistd would make from its options (a file it rotates on SIGUSR1, or
    stdout), writing the same lines cheaper (mailhub.logtext); None leaves it to twistd
    (syslog, ``--logger``, or no twistd at all)."""
    if twistd is None or twistd.get("syslog") or twistd.get("logger"):
        return None
    from twisted.scripts._twistd_unix import UnixAppLogger

    observer = UnixAppLogger(twistd)._getLogObserver()
    return faster(observer) if isinstance(observer, FileLogObserver) else None


def _supervisor(config: Config, options: Options) -> IService:
    """``--workers N``: this process binds the listeners and runs N workers (mailhub.workers)."""
    from twisted.internet import reactor

    from mailhub.service import FACTORIES, with_backlog
    from mailhub.workers import Supervisor, twistd_args

    if config.dev:
        raise SystemExit(
            f"mailhub: --workers: {config.source} is a development stack (dev = true), which "
            "runs as one process (its page's sandboxes and fault rules live in it)"
        )
    if config.sandboxes.enabled:
        raise SystemExit(
            f"mailhub: --workers: [sandboxes] enabled in {config.source}: sandboxes live in "
            "one process; turn them off or run without --workers"
        )
    backlog = config.limits.listen_backlog
    listeners = [
        (key, with_backlog(description, backlog))
        for key in FACTORIES
        for description in getattr(config.listeners, key)
    ]
    return Supervisor(
        reactor,
        listeners,
        options["workers"],
        twistd_args(options),
        backlog=backlog,
        direct_log=_logs_to_stdout(getattr(options, "parent", None)),
    )


def _logs_to_stdout(twistd: Any) -> bool:
    """Does twistd log to its stdout (``-n`` without ``--logfile``, or ``--logfile=-``)? Then
    the workers write their lines there themselves (mailhub.workers.WorkerLog)."""
    if twistd is None:
        return False
    get = twistd.get
    if get("syslog") or get("logger"):
        return False
    return bool(get("nodaemon")) and get("logfile") in (None, "", "-")


class HeapFreeze(Service):
    """Freezes the start-up heap once the daemon's services have started."""

    name = "heap-freeze"

    def startService(self) -> None:
        super().startService()
        freeze_startup_heap()


def freeze_startup_heap() -> None:
    """Move what start-up built (modules, Twisted, the configuration) out of the collector's
    reach: those objects live as long as the process, and without this every full collection
    walks them again — measured 35-50 ms pauses after a big folder's first SELECT, ~3 ms with
    it (gc.freeze is meant for exactly this, see the gc module's documentation)."""
    gc.collect()
    gc.freeze()
