"""``twistd mailhub --config FILE --workers N``: N worker processes behind one supervisor.

The supervisor (the twistd process itself) binds every configured listener, then starts N
workers, each a ``twistd mailhub --worker K/N`` child that serves the sockets it inherits
(``reactor.spawnProcess(childFDs=...)``, adopted with ``AdoptedStreamServerEndpoint``), like
Postfix's master and Dovecot's master. The supervisor never accepts a connection itself. It

* restarts a worker that dies (0.5 s later, doubling to 30 s while it keeps dying young),
* forwards SIGHUP (certificates re-read) and stops every worker on SIGTERM/SIGINT (SIGKILL for
  one that has not stopped after STOP_TIMEOUT), so it leaves no orphan; a worker whose
  supervisor is gone (even by ``kill -9``) sees its stdin end and stops itself,
* logs what the workers log, each line tagged ``w<K>``: when the supervisor logs to its stdout
  (``-n``, systemd's journal) the workers write their lines there themselves; when it logs to a
  file (``--logfile``, which it rotates), they send it their lines formatted and it appends
  what it reads to that file in one write; otherwise (syslog, a ``--logger``) they send JSON
  events that it logs (WorkerLog).

How a listening port is shared. Each TCP listener gets one socket per worker, all bound to the
same address with SO_REUSEPORT (Linux): the kernel spreads new connections evenly over them. The
supervisor holds them all, so the backlog of a worker that died waits for its replacement
instead of being reset. Elsewhere (no SO_REUSEPORT, or a non-TCP endpoint such as unix:) one
socket is bound and every worker accepts from it; whichever is idle takes the next connection.

What runs once in the whole set (worker 1, "the primary"), everything else in every worker:

* the outgoing queue's runner (the spool lock allows one; the others only enqueue and tell it,
  see mailhub.queue.queue), and with it the queue's control requests and stale-file cleaning;
* the pickup collector (``mailhub sendmail``'s directory) and the dev stack's retention;
* the store's hourly clean-up of stale tmp/ files and lock leftovers (StaleTmpCleaner);
* the web listener: its API changes state that lives in one process (fault rules, sandboxes).
  The development stack (sandboxes, run-time fault rules) is therefore refused: one process.

The store itself is safe for several processes (dotlocks, atomic renames); each worker's change
feed notices the others' deliveries through inotify, so IMAP IDLE in one worker sees mail that
another took. Per-process state that is *not* shared: the authentication throttle (a client
guessing passwords gets its allowance once per worker), the connection limits ([limits]
max_connections, max_connections_per_ip: each worker counts its own) and the checks' DNS cache.
"""

from __future__ import annotations

import fcntl
import io
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, cast

from twisted.application.service import Service
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import IDelayedCall, IStreamServerEndpoint
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    eventAsJSON,
    eventFromJSON,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhub.proxyproto import inner_description

log = Logger()

# The first restart's delay; it doubles (up to RESTART_MAX) while a worker dies within YOUNG.
RESTART_DELAY = 0.5
RESTART_MAX = 30.0
YOUNG = 10.0
# How long a stopping worker may take before it is killed (its commits in flight finish first).
STOP_TIMEOUT = 30.0
# Listeners only worker 1 serves (see the module doc).
PRIMARY_ONLY = frozenset({"web"})


@dataclass(frozen=True)
class WorkerRole:
    """What one worker is told by its supervisor: its number (1..count) and the inherited
    listening sockets, per listener kind in the config's order."""

    number: int
    count: int
    fds: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def primary(self) -> bool:
        """Worker 1 runs the singletons (the module doc lists them)."""
        return self.number == 1

    def endpoints(self, reactor: Any, key: str) -> list[IStreamServerEndpoint]:
        """The adopted listening sockets of one listener kind (none: not served here)."""
        return [
            AdoptedStreamServerEndpoint(reactor, fd, _family(fd)) for fd in self.fds.get(key, ())
        ]

    def fds_argument(self) -> str:
        """``smtp=3,4;imap=5``: the ``--listen-fds`` option of the child's command line."""
        return ";".join(f"{k}={','.join(map(str, v))}" for k, v in self.fds.items())

    @staticmethod
    def parse(worker: str, fds: str) -> WorkerRole:
        """From ``--worker K/N`` and ``--listen-fds``; ValueError when malformed."""
        number, _, count = worker.partition("/")
        role = WorkerRole(int(number), int(count), {})
        if not 1 <= role.number <= role.count:
            raise ValueError(f"worker {worker!r}: want K/N with 1 <= K <= N")
        for part in filter(None, fds.split(";")):
            key, _, numbers = part.partition("=")
            role.fds[key] = tuple(int(n) for n in numbers.split(",") if n)
        return role


def _family(fd: int) -> int:
    # The socket module reads the family of an fd it is given; detach() leaves the fd open.
    probe = socket.socket(fileno=fd)
    try:
        return int(probe.family)
    finally:
        probe.detach()


# --- the listening sockets --------------------------------------------------------------------


def reuseport_available() -> bool:
    """SO_REUSEPORT with the kernel's even spreading of connections: Linux 3.9 and later."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


class ListenError(Exception):
    """A listener could not be bound (the message names it)."""


@dataclass
class BoundListener:
    """One configured listener, bound by the supervisor: one socket per worker (reuseport),
    or one socket all workers share."""

    key: str
    description: str
    sockets: list[socket.socket]

    def fd_for(self, number: int) -> int:
        return self.sockets[(number - 1) % len(self.sockets)].fileno()

    def address(self) -> tuple[str, int] | str:
        name = self.sockets[0].getsockname()
        return (name[0], name[1]) if isinstance(name, tuple) else str(name)

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def bind_listener(
    reactor: Any, key: str, description: str, backlog: int, count: int, reuseport: bool
) -> BoundListener:
    """Bind ``description`` (a Twisted endpoint string) for ``count`` workers."""
    endpoint = serverFromString(reactor, description)
    if isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint)):
        family = socket.AF_INET6 if isinstance(endpoint, TCP6ServerEndpoint) else socket.AF_INET
        # Twisted keeps the parsed address in these attributes (stable since endpoints exist).
        host = endpoint._interface or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        port, backlog = endpoint._port, endpoint._backlog or backlog
        sockets: list[socket.socket] = []
        try:
            if reuseport and port:
                # SO_REUSEPORT would join another process's sockets on this port (a mailhub
                # still running, of the same user) without a word: a plain bind says "in use".
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind((host, port))
            for _ in range(count if reuseport else 1):
                s = socket.socket(family, socket.SOCK_STREAM)
                sockets.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuseport:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind((host, port))
                port = s.getsockname()[1]  # port 0: the others join the one the first got
                s.listen(backlog)
                s.setblocking(False)
        except OSError as e:
            for s in sockets:
                s.close()
            raise ListenError(f"[listeners] {key}: cannot listen on {description!r}: {e}") from e
        return BoundListener(key, description, sockets)
    # Other endpoints (unix:, ...): Twisted binds; the supervisor's reactor never reads it.
    result: list[Any] = []
    d = endpoint.listen(protocol.Factory.forProtocol(protocol.Protocol))
    d.addBoth(result.append)
    if not result or isinstance(result[0], Failure):
        reason = result[0].value if result else "not bound at once"
        raise ListenError(f"[listeners] {key}: cannot listen on {description!r}: {reason}")
    port = result[0]
    port.stopReading()
    return BoundListener(key, description, [socket.socket(fileno=os.dup(port.fileno()))])


# --- the workers' log -------------------------------------------------------------------------


# How a worker logs, from its environment (set by the supervisor for each worker).
LOG_ENV, NUMBER_ENV = "MAILHUB_WORKER_LOG", "MAILHUB_WORKER"
DIRECT, TEXT, RELAY = "direct", "text", "relay"
# TEXT: each record a worker sends (a formatted event, or a JSON control event) ends with this
# byte (ASCII's record separator): the supervisor writes only whole events, so the lines of
# two workers' tracebacks never interleave, and drops the separators with one replace().
# An event's text never holds one (text from a client, quoted in an exception's message): it is
# written as RECORD_END_SHOWN, so nobody can end a record early or forge a control record.
# (JSON, as RELAY sends it, escapes it itself: \u001e.)
RECORD_END = "\x1e"
RECORD_END_SHOWN = "\\x1e"
# TEXT: after each read the supervisor leaves a worker's pipe for this long, so the lines
# gather in the kernel's pipe buffer and one wake-up, read and write serve many: a read per
# line cost 0.05 ms of its CPU per message. Nothing is lost if either side dies meanwhile.
TEXT_PACE = 0.05
# ... and the pipe holds this much meanwhile (Linux; the default 64 KiB is ~400 lines, a
# worker logging more than 8,000 lines a second would wait for the supervisor).
PIPE_SIZE = 1 << 20


class _Records(io.TextIOBase):
    """The file a worker's text observer writes in TEXT mode: each event one record."""

    def __init__(self, control: IO[str]) -> None:
        super().__init__()
        self._control = control

    def write(self, text: str) -> int:
        if RECORD_END in text:
            text = text.replace(RECORD_END, RECORD_END_SHOWN)
        return self._control.write(text + RECORD_END)

    def flush(self) -> None:
        self._control.flush()


@implementer(ILogObserver)
class WorkerLog:
    """A worker's log observer (``twistd --logger=mailhub.workers.worker_observer``).

    ``direct`` (the supervisor logs to its stdout, as under systemd or ``-n``): the worker
    writes its own text lines, tagged ``w<K>``, to its stderr, which is the supervisor's stdout;
    only the "started" event goes to the supervisor, as JSON on the worker's stdout. Relaying
    every line cost the supervisor 0.15 ms of CPU per message (benchmarks/README.md, Workers).
    ``text`` (the supervisor logs to a file it rotates, ``--logfile``): the worker formats its
    lines as in ``direct`` and sends them, each event a record (RECORD_END), on its stdout;
    the supervisor appends what it reads to its file, many lines in one write, parsing none
    (the "started" event goes as a JSON record too).
    ``relay`` (any other log: syslog, a ``--logger``): every event goes to the supervisor as
    JSON, which logs it.
    """

    def __init__(self, number: int, mode: str, control: IO[str], text: IO[str]) -> None:
        self.number, self.mode = number, mode
        self._control = control
        self._text = textFileLogObserver(cast(IO[str], _Records(control)) if mode == TEXT else text)

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            if self.mode == TEXT:
                if event.get("mailhub_ready"):
                    self._control.write(eventAsJSON(event) + "\n" + RECORD_END)
                self._text(tagged(event, self.number))  # writes and flushes
                return
            if self.mode == RELAY or event.get("mailhub_ready"):
                self._control.write(eventAsJSON(event) + "\n")
                self._control.flush()
            if self.mode == DIRECT:
                self._text(tagged(event, self.number))
        except (OSError, ValueError):
            pass  # the supervisor is gone: the worker is stopping (stdin watch)


def tagged(event: dict[str, Any], number: int) -> dict[str, Any]:
    """``event`` with the worker's number in the system field the text log shows."""
    level = event.get("log_level")
    name = level.name if isinstance(level, type(LogLevel.info)) else "info"
    return {
        **event,
        "log_system": f"w{number} {event.get('log_namespace', '-')}#{name}",
        "mailhub_worker": number,
    }


def worker_observer() -> ILogObserver:
    """The observer twistd installs in a worker (see WorkerLog)."""
    number = int(os.environ.get(NUMBER_ENV, "0"))
    return WorkerLog(number, os.environ.get(LOG_ENV, RELAY), sys.stdout, sys.stderr)


def watch_parent(stop: Callable[[], None]) -> None:
    """Stop (``stop`` is called in the reactor thread) once stdin ends: the supervisor holds
    its other end, so that happens when the supervisor exits, even by kill -9."""
    from twisted.internet import reactor

    def wait() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        reactor.callFromThread(stop)  # type: ignore[attr-defined]

    threading.Thread(target=wait, name="mailhub-parent-watch", daemon=True).start()


def twistd_log_file() -> Any | None:
    """The file twistd's ``--logfile`` observer writes (a ``twisted.python.logfile.LogFile``,
    which rotates itself), or None (stdout, syslog, a ``--logger`` of its own).

    Twisted has no public way to ask, so this looks at the global publisher's observers; if
    that ever changes it finds nothing and the workers relay JSON events (RELAY) as before."""
    from twisted.python.logfile import BaseLogFile

    for observer in getattr(globalLogPublisher, "_observers", ()):
        out = getattr(observer, "_outFile", None)
        if isinstance(observer, FileLogObserver) and isinstance(out, BaseLogFile):
            return out
    return None


class WorkerProtocol(protocol.ProcessProtocol):
    """The supervisor's side of one worker: its log lines re-emitted (or, ``write_text``,
    appended to the log file as they come), its end reported."""

    def __init__(
        self,
        number: int,
        ended: Callable[[int, Failure], None],
        direct: bool = False,
        write_text: Callable[[bytes], object] | None = None,
        clock: Any = None,
    ) -> None:
        self.number = number
        self.clock = clock  # paces the reads in TEXT mode (TEXT_PACE); None: no pause
        # the worker writes its own log lines (WorkerLog: direct, or text through write_text)
        self.direct = direct or write_text is not None
        self.write_text = write_text
        self._ended = ended
        self._out = b""
        self._err = b""
        self.ready = False
        self._resume: IDelayedCall | None = None

    def outReceived(self, data: bytes) -> None:
        self._out += data
        if self.write_text is not None:
            self._records()
            if self.clock is not None and self._resume is None and self.transport is not None:
                cast(Any, self.transport).pauseProducing()  # (a Process is an IProducer)
                self._resume = self.clock.callLater(TEXT_PACE, self._read_again)
            return
        *lines, self._out = self._out.split(b"\n")
        for line in lines:
            self._event(line)

    def _read_again(self) -> None:
        self._resume = None
        if self.transport is not None:
            cast(Any, self.transport).resumeProducing()

    def _records(self, end: bool = False) -> None:
        """TEXT: append the whole records read so far to the log file in one write; the
        JSON control records among them (only "started": looked for until it came) are
        handled, not written."""
        assert self.write_text is not None
        if end:
            whole, self._out = self._out, b""
        else:
            whole, sep, self._out = self._out.rpartition(RECORD_END.encode())
            if not sep:
                return  # (rpartition left it all in self._out)
        if not self.ready and b"{" in whole:
            text = []
            for record in whole.split(RECORD_END.encode()):
                if record.startswith(b"{"):
                    self._event(record.rstrip(b"\n"))
                else:
                    text.append(record)
            whole = b"".join(text)
        else:
            whole = whole.replace(RECORD_END.encode(), b"")
        if whole:
            try:
                self.write_text(whole)
            except (OSError, ValueError) as e:  # a full disk: say so, keep the worker
                log.error("w{number}: cannot write the log: {e}", number=self.number, e=e)

    def errReceived(self, data: bytes) -> None:
        # What a worker prints before its log starts (a traceback at import time).
        self._err += data
        *lines, self._err = self._err.split(b"\n")
        for line in lines:
            log.warn(
                "w{number} stderr: {line}", number=self.number, line=line.decode("utf-8", "replace")
            )

    def _event(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        try:
            event = eventFromJSON(text)
        except ValueError:
            log.info("w{number}: {line}", number=self.number, line=text)
            return
        if event.get("mailhub_ready") and not self.ready:
            self.ready = True
            log.info("worker {number} ready (pid {pid})", number=self.number, pid=self.pid)
            if self.direct:
                return  # the worker wrote its own line
        globalLogPublisher(tagged(event, self.number))

    @property
    def pid(self) -> int | None:
        return cast("int | None", getattr(self.transport, "pid", None))

    def processEnded(self, reason: Failure) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        if self._out:  # a last line without its newline
            if self.write_text is not None:
                self._records(end=True)
            else:
                self._event(self._out)
        self._ended(self.number, reason)


class Supervisor(Service):
    """Binds the listeners and keeps ``count`` workers running (see the module doc)."""

    name = "workers"

    def __init__(
        self,
        reactor: Any,
        listeners: Sequence[tuple[str, str]],
        count: int,
        child_args: Callable[[WorkerRole], list[str]],
        *,
        backlog: int = 511,
        reuseport: bool | None = None,
        executable: str = sys.executable,
        env: dict[str, str] | None = None,
        direct_log: bool = False,
        log_file: Any | None = None,
    ) -> None:
        self.reactor = reactor
        self.listeners = list(listeners)  # (kind, endpoint string) in the config's order
        self.count = count
        self.child_args = child_args
        self.backlog = backlog
        self.reuseport = reuseport_available() if reuseport is None else reuseport
        self.executable = executable
        self.env = dict(os.environ if env is None else env)
        # True: this process logs to its stdout, and the workers write their lines there too.
        self.direct_log = direct_log
        # The log file the workers' formatted lines are appended to (TEXT); None: found at
        # start (twistd_log_file), else their events are relayed (RELAY).
        self.log_file = log_file
        self.bound: list[BoundListener] = []
        self.workers: dict[int, WorkerProtocol] = {}
        self._started: dict[int, float] = {}
        self._delay: dict[int, float] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._stopped: defer.Deferred[None] | None = None
        self._previous_hup: Any = None

    # --- start ---------------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Bound before privileges are dropped (twistd --uid): port 25 needs root, workers not.
        super().privilegedStartService()
        try:
            for key, description in self.listeners:
                # A PROXY listener's socket is its inner endpoint's; each worker reads the header.
                inner = inner_description(description) or description
                listener = bind_listener(
                    self.reactor, key, inner, self.backlog, self.count, self.reuseport
                )
                self.bound.append(listener)
                host = listener.address()
                log.info(
                    "{key} listening on {where} ({description}; {how})",
                    key=key,
                    where=f"{host[0]}:{host[1]}" if isinstance(host, tuple) else host,
                    description=description,
                    how=f"{len(listener.sockets)} SO_REUSEPORT socket(s)"
                    if len(listener.sockets) > 1 or self.reuseport
                    else "one socket shared by the workers",
                )
        except ListenError as e:
            for listener in self.bound:
                listener.close()
            raise SystemExit(f"mailhub: {e}") from None

    def startService(self) -> None:
        if not self.bound:
            self.privilegedStartService()
        super().startService()
        if self.log_file is None and not self.direct_log:
            self.log_file = twistd_log_file()  # twistd's logging has begun by now
        for number in range(1, self.count + 1):
            self._spawn(number)
        # SIGHUP (certificates re-read) goes to every worker; SIGTERM/SIGINT stop the reactor
        # (twistd), which stops this service and so the workers.
        self._previous_hup = signal.signal(signal.SIGHUP, self._sighup)
        log.info(
            "supervising {count} worker(s); listening sockets {how}; their log lines {lines}",
            count=self.count,
            how="per worker (SO_REUSEPORT)" if self.reuseport else "shared",
            lines="written by them"
            if self.direct_log
            else "appended by this process"
            if self.log_file is not None
            else "relayed as events",
        )

    def role(self, number: int) -> WorkerRole:
        fds: dict[str, list[int]] = {}
        for listener in self.bound:
            if listener.key in PRIMARY_ONLY and number != 1:
                continue
            fds.setdefault(listener.key, []).append(listener.fd_for(number))
        return WorkerRole(number, self.count, {k: tuple(v) for k, v in fds.items()})

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        role = self.role(number)
        # The child's fds: 0 its stdin (the parent watch), 1 read here (JSON events), 2 read
        # here or (direct log) this process's stdout, the sockets at the same numbers as here
        # (the --listen-fds option names them).
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: 1 if self.direct_log else "r"}
        for fds in role.fds.values():
            for fd in fds:
                child_fds[fd] = fd
        log_file = None if self.direct_log else self.log_file
        worker = WorkerProtocol(
            number,
            self._ended,
            direct=self.direct_log,
            write_text=None if log_file is None else log_file.write,
            clock=self.reactor,
        )
        args = [self.executable, *self.child_args(role)]
        env = dict(self.env)
        mode = DIRECT if self.direct_log else RELAY if log_file is None else TEXT
        env[NUMBER_ENV], env[LOG_ENV] = str(number), mode
        process = self.reactor.spawnProcess(
            worker, self.executable, args, env=env, childFDs=child_fds
        )
        if mode == TEXT:
            enlarge_pipe(getattr(process, "pipes", {}).get(1))
        self.workers[number] = worker
        self._started[number] = self.reactor.seconds()
        log.info("worker {number} started (pid {pid})", number=number, pid=worker.pid)

    # --- a worker's end ----------------------------------------------------------------------

    def _ended(self, number: int, reason: Failure) -> None:
        self.workers.pop(number, None)
        how = _how_ended(reason)
        if not self.running:
            log.info("worker {number} stopped ({how})", number=number, how=how)
            if not self.workers and self._stopped is not None:
                d, self._stopped = self._stopped, None
                d.callback(None)
            return
        lived = self.reactor.seconds() - self._started.get(number, 0.0)
        # Soon after a crash; later and later while it keeps dying young (a broken config).
        delay = RESTART_DELAY
        if lived < YOUNG:
            delay = min(self._delay.get(number, RESTART_DELAY / 2) * 2, RESTART_MAX)
        self._delay[number] = delay
        log.error(
            "worker {number} died ({how}) after {lived:.1f} s; restarting it in {delay:.1f} s",
            number=number,
            how=how,
            lived=lived,
            delay=delay,
        )
        self._restarts[number] = self.reactor.callLater(delay, self._spawn, number)

    # --- signals and stop ---------------------------------------------------------------------

    def _sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._forward_hup)

    def _forward_hup(self) -> None:
        self.signal_all("HUP")
        log.info("SIGHUP forwarded to {n} worker(s)", n=len(self.workers))

    def signal_all(self, name: str) -> None:
        for worker in list(self.workers.values()):
            try:
                worker.transport.signalProcess(name)  # type: ignore[union-attr]
            except (error.ProcessExitedAlready, OSError):
                pass

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        for listener in self.bound:
            listener.close()  # the workers hold their own copies until they exit
        self.bound = []
        if not self.workers:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._stopped = d
        log.info("stopping {n} worker(s)", n=len(self.workers))
        self.signal_all("TERM")
        kill = self.reactor.callLater(STOP_TIMEOUT, self._kill_remaining)

        def done(result: None) -> None:
            if kill.active():
                kill.cancel()

        d.addCallback(done)
        return d

    def _kill_remaining(self) -> None:
        for number in list(self.workers):
            log.error(
                "worker {number} did not stop within {t:.0f} s: killed",
                number=number,
                t=STOP_TIMEOUT,
            )
        self.signal_all("KILL")


def enlarge_pipe(reader: Any) -> int | None:
    """Make the pipe ``reader`` (a Twisted ProcessReader) reads hold PIPE_SIZE (less if the
    system's limit is lower); its new size, or None (not Linux, no pipe)."""
    if reader is None or not hasattr(fcntl, "F_SETPIPE_SZ"):
        return None
    fd = reader.fileno()
    for size in (PIPE_SIZE, PIPE_SIZE // 4):  # (an unprivileged process: /proc's max)
        try:
            return int(fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size))
        except OSError:
            continue
    return None


def _how_ended(reason: Failure) -> str:
    value = reason.value
    signal_number = getattr(value, "signal", None)
    if signal_number:
        try:
            return f"signal {signal.Signals(signal_number).name}"
        except ValueError:
            return f"signal {signal_number}"
    return f"exit status {getattr(value, 'exitCode', '?')}"


def twistd_args(options: dict[str, Any]) -> Callable[[WorkerRole], list[str]]:
    """The command line of a worker: ``twistd -n mailhub`` with the supervisor's options."""

    def args(role: WorkerRole) -> list[str]:
        out = [
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "--nodaemon",
            "--pidfile=",
            "--logger=mailhub.workers.worker_observer",
            "mailhub",
            "--config",
            os.path.abspath(options["config"]),
            "--worker",
            f"{role.number}/{role.count}",
            "--listen-fds",
            role.fds_argument(),
        ]
        if options.get("data"):
            out += ["--data", os.path.abspath(options["data"])]
        return out

    return args
