"""A private rspamd (Debian package ``rspamd``) for tests: its own directory, 127.0.0.1, no Redis,
and a DNS that is the test's own (tests/support/localdns.py), so it never asks the world.

    dns = LocalDNS({})
    dns.start()
    rspamd = await Rspamd.started(test, dns.address)   # stopped by the test's cleanup
    rspamd.url                                          # "http://127.0.0.1:<port>"

How it is set up (rspamd 3.4 as Debian bookworm ships it):

- The Debian tree (/etc/rspamd, ``$CONFDIR``) supplies the rules; ``rspamd.conf`` here replaces
  only the top file: one ``normal`` worker (``/checkv2``) on a port of ours, no controller, no
  proxy, no fuzzy storage, console logging (the readiness line comes from it). ``--var`` points
  ``LOCAL_CONFDIR``, ``DBDIR``, ``RUNDIR`` and ``LOGDIR`` into the directory.
- rspamd cannot take port 0: a port is picked by binding a socket, closed, and handed over. If
  another process takes it first, rspamd exits at bind; we pick another and start again.
- No network: ``dns { nameserver }`` is the test's DNS server, so every name rspamd looks up
  (SPF, DKIM, DMARC, the HELO, maps.rspamd.com for its HTTP maps) reaches it and gets NXDOMAIN
  unless the test's zone has it. ``fuzzy_check`` is left out of ``filters``: its servers
  (fuzzy*.rspamd.com) are resolved with the system resolver when the config is read. The DNS
  blocklists (``rbl``, which ``emails`` and ``surbl`` are turned into) and ``asn`` are turned off:
  their answers would be NXDOMAIN anyway and each message would cost dozens of lookups.
- No Redis: greylist, ratelimit, replies, history_redis, url_redirector, neural and reputation
  turn themselves off ("no servers are specified"); the Bayes classifier logs that it cannot
  init its Redis backend and the scan goes on without BAYES_* symbols.
- Start-up time: the public suffix list (9,600 TLDs) is compiled into a Hyperscan database at
  every start (30 s and more on a loaded machine); ``url_tld`` points at a short list instead
  (the TLDs test messages use). Started so, rspamd answers /ping in about 2 s.
- Run as root (CI), rspamd refuses to run its workers as root: ``-u _rspamd -g _rspamd`` (the
  package's user) and the directory is handed to that user, as the workers write there.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import tempfile
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet import defer, error, protocol, reactor
from twisted.internet.defer import Deferred
from twisted.web.client import HTTPConnectionPool

from tests.support.tools import tool

RSPAMD = "rspamd"
USER = "_rspamd"
# Seconds to wait for the normal worker to answer /ping after it said it started.
START_TIMEOUT = 120.0
ATTEMPTS = 5  # ports tried when another process takes ours first
KILL_AFTER = 30.0

# TLDs that URL detection knows (a test message's links); the public suffix list's format.
TLDS = "com\nnet\norg\nio\ntest\nexample\ninvalid\nlocalhost\nco.uk\n"

CONFIG = """\
.include "$CONFDIR/common.conf"

options {{
    pidfile = "$RUNDIR/rspamd.pid";
    filters = "chartable,dkim,regexp";
    cache_file = "$DBDIR/symbols.cache";
    check_all_filters = false;
    dns {{
        nameserver = ["{dns_host}:{dns_port}"];
        timeout = 1s;
        retransmits = 1;
        sockets = 4;
    }}
    tempdir = "$DBDIR";
    url_tld = "$LOCAL_CONFDIR/tlds.dat";
    hs_cache_dir = "$DBDIR/";
    explicit_modules = ["settings"];
    allow_raw_input = true;
    local_addrs = [];
    task_timeout = 8s;
}}

logging {{
    type = "console";
    level = "info";
    color = false;
}}

worker "normal" {{
    bind_socket = "127.0.0.1:{port}";
    count = 1;
    mime = true;
}}
"""

# Lua modules off (local.d/<module>.conf, merged into the Debian defaults).
OFF = ("rbl", "asn", "emails", "surbl")


def missing() -> str | None:
    why = tool(RSPAMD)
    if why is None and os.geteuid() == 0:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            return f"running as root, rspamd needs its user {USER} (the rspamd package makes it)"
    return why


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Output(protocol.ProcessProtocol):
    """Keeps rspamd's console log; fires ``started`` when the normal worker says it runs and
    ``ended`` when the main process exits."""

    def __init__(self) -> None:
        self.started: Deferred[None] = Deferred()
        self.ended: Deferred[Any] = Deferred()
        self.log = bytearray()

    def _line(self, data: bytes) -> None:
        self.log += data
        if len(self.log) > 1_000_000:
            del self.log[:500_000]
        if not self.started.called and b"starting normal process" in self.log:
            self.started.callback(None)

    def outReceived(self, data: bytes) -> None:
        self._line(data)

    def errReceived(self, data: bytes) -> None:
        self._line(data)

    def processEnded(self, reason: Any) -> None:
        if not self.started.called:
            self.started.errback(RuntimeError("rspamd exited before its worker started"))
        self.ended.callback(reason.value)

    def tail(self, n: int = 4000) -> str:
        return bytes(self.log[-n:]).decode("utf-8", "replace")


class Rspamd:
    def __init__(self, nameserver: tuple[str, int], ports: Callable[[], int] = free_port) -> None:
        self.nameserver = nameserver
        self.ports = ports  # a test may hand out a taken port first
        self.directory = tempfile.mkdtemp(prefix="mailhub-rspamd-")
        self.port = 0
        self.output: _Output | None = None
        self._output_kept: _Output | None = None
        self.process: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _configure(self) -> None:
        d = self.directory
        os.chmod(d, 0o755)
        for sub in ("local.d", "db", "run"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        host, dns_port = self.nameserver
        with open(os.path.join(d, "rspamd.conf"), "w") as f:
            f.write(CONFIG.format(dns_host=host, dns_port=dns_port, port=self.port))
        with open(os.path.join(d, "tlds.dat"), "w") as f:
            f.write(TLDS)
        for module in OFF:
            with open(os.path.join(d, "local.d", f"{module}.conf"), "w") as f:
                f.write("enabled = false;\n")
        if os.geteuid() == 0:
            entry = pwd.getpwnam(USER)
            for root, dirs, files in os.walk(d):
                for name in (root, *(os.path.join(root, n) for n in dirs + files)):
                    os.chown(name, entry.pw_uid, entry.pw_gid)

    def _spawn(self) -> _Output:
        d = self.directory
        argv = [RSPAMD, "-f", "-c", os.path.join(d, "rspamd.conf")]
        if os.geteuid() == 0:
            argv += ["-u", USER, "-g", USER]
        for var, value in (
            ("LOCAL_CONFDIR", d),
            ("DBDIR", os.path.join(d, "db")),
            ("RUNDIR", os.path.join(d, "run")),
            ("LOGDIR", d),
        ):
            argv += ["--var", f"{var}={value}"]
        output = _Output()
        path = shutil.which(RSPAMD)
        assert path is not None
        self.process = reactor.spawnProcess(  # type: ignore[attr-defined]
            output, path, argv, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        )
        self.output = output
        return output

    async def start(self) -> None:
        for _ in range(ATTEMPTS):
            self.port = self.ports()
            self._configure()
            output = self._spawn()
            try:
                await output.started
            except RuntimeError:
                if b"cannot bind" in output.log or b"Address already in use" in output.log:
                    continue  # another process took the port in between: another port
                raise RuntimeError(f"rspamd did not start:\n{output.tail()}") from None
            await self._ping(output)
            return
        raise RuntimeError(f"rspamd found no free port in {ATTEMPTS} tries")

    async def _ping(self, output: _Output) -> None:
        """The worker answers /ping once it has loaded its rules (a request made earlier waits
        in the listen backlog of the socket the main process bound)."""
        pool = HTTPConnectionPool(reactor, persistent=False)
        request = treq.get(self.url + "/ping", pool=pool, timeout=START_TIMEOUT)
        ended = output.ended

        def exited(reason: Any) -> None:
            if not request.called:
                request.cancel()
            return reason

        ended.addBoth(exited)
        try:
            response = await request
            body = await treq.content(response)
        except (defer.CancelledError, error.ConnectError) as e:
            raise RuntimeError(f"rspamd did not answer /ping ({e}):\n{output.tail()}") from None
        if b"pong" not in body:
            raise RuntimeError(f"rspamd answered /ping with {body[:200]!r}")

    def stop(self) -> Deferred[Any]:
        """SIGTERM to the main process, which stops its workers; SIGKILL if it has not ended
        after KILL_AFTER seconds (a safety net, not a wait: the end is the process's exit)."""
        output, self.output = self.output, None
        if output is None or output.ended.called:
            shutil.rmtree(self.directory, ignore_errors=True)
            return defer.succeed(None)
        done: Deferred[Any] = Deferred()

        def kill() -> None:
            try:
                self.process.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass

        killer = reactor.callLater(KILL_AFTER, kill)  # type: ignore[attr-defined]

        def ended(_: Any) -> None:
            if killer.active():
                killer.cancel()
            shutil.rmtree(self.directory, ignore_errors=True)
            done.callback(None)

        output.ended.addBoth(ended)
        try:
            self.process.signalProcess("TERM")
        except error.ProcessExitedAlready:
            pass
        self._output_kept = output
        return done

    def log(self) -> str:
        """What rspamd has logged (also after stop())."""
        output = self.output or self._output_kept
        return output.tail(100_000) if output is not None else ""

    @classmethod
    async def started(cls, test: Any, nameserver: tuple[str, int], **kwargs: Any) -> Rspamd:
        instance = cls(nameserver, **kwargs)
        test.addCleanup(instance.stop)
        await instance.start()
        return instance
