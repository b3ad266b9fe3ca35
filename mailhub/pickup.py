"""The pickup directory: messages ``mailhub sendmail`` left while the server was down.

Postfix's maildrop in small: the command writes each message durably into
``<data_dir>/pickup/new/`` (temp file, fsync, rename, fsync of the directory); the server
collects them at start, when inotify reports a new one, and on a timer (file systems without
inotify), and hands each to the outgoing queue, which routes it like any other mail (local
recipients through the recipient policy, others to the relay).

One file per message, so that one rename commits it: a first line ``mailhub-pickup 1``, a JSON
line with the envelope (``from``, ``to``, ``uid``, ``time``), then the message with CRLF line
endings.

Delivery is at least once. A collector first claims a file by renaming it into ``cur/`` with its
pid in the name (of several processes sharing a data directory, one wins the rename), then
removes it only after the queue has it on disk (fsync'd). A crash between those two steps
leaves the claimed file behind and the next collector delivers it again: a duplicate, which is
better than a loss. A file claimed by a process that no longer runs is claimed again.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailhub.envelope import Envelope, Recipient
from mailhub.interfaces import DeliveryError, IMessageSink
from mailhub.queueid import QueueIdGenerator
from mailhub.safeio import (
    atomic_write,
    fsync_dir,
    makedirs_durable,
    remove_if_exists,
    unique_name,
    unlink_quietly,
    write_all,
)

log = Logger()

MAGIC = b"mailhub-pickup 1\n"
# Where a running server says which address its SMTP listener is bound to (port 0 in tests):
# ``mailhub sendmail`` reads it to find the server.
SERVER_FILE = "server.json"
# Seconds between looks at new/ when inotify says nothing (NFS, not Linux, a missed event).
DEFAULT_INTERVAL = 5.0
# Stream a picked-up message into the queue in pieces this big.
CHUNK = 256 * 1024
# The envelope line may not be longer than this (a million recipients is not a message).
MAX_ENVELOPE = 4 * 1024 * 1024


class PickupError(Exception):
    """A pickup file that cannot be read as one (moved aside to ``bad/``)."""


@dataclass(frozen=True)
class PickupEnvelope:
    sender: str  # "" for the null sender <>
    recipients: tuple[str, ...]
    uid: int = -1  # who wrote it (the Received: line says "from userid N")
    time: float = 0.0

    def to_line(self) -> bytes:
        doc = {"from": self.sender, "to": list(self.recipients), "uid": self.uid, "time": self.time}
        return json.dumps(doc, ensure_ascii=False).encode("utf-8") + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> PickupEnvelope:
        try:
            doc = json.loads(line)
            sender, recipients = doc["from"], doc["to"]
            if not isinstance(sender, str) or not isinstance(recipients, list):
                raise TypeError("from must be a string and to a list")
            if not recipients or not all(isinstance(r, str) and r for r in recipients):
                raise TypeError("no recipients, or one is not a string")
            uid, when = int(doc.get("uid", -1)), float(doc.get("time", 0))
            return cls(sender, tuple(recipients), uid, when)
        except (ValueError, TypeError, KeyError) as e:
            raise PickupError(f"bad envelope line: {e}") from None


def pickup_dir(data_dir: Path) -> Path:
    return data_dir / "pickup"


def crlf(data: bytes) -> bytes:
    """Every line ending as CRLF (what the queue's sinks take): LF and lone CR alike."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def drop(data_dir: Path, envelope: PickupEnvelope, message: bytes) -> Path:
    """Write one message into the pickup directory, durably (it is on disk when this returns).
    ``message`` should have CRLF line endings already (``crlf``)."""
    root = pickup_dir(data_dir)
    tmp, new = root / "tmp", root / "new"
    makedirs_durable(tmp)
    makedirs_durable(new)
    name = unique_name(socket.gethostname())
    path = tmp / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            write_all(fd, MAGIC + envelope.to_line())
            write_all(fd, message)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(path, new / name)
    except BaseException:
        unlink_quietly(path)
        raise
    fsync_dir(new)
    return new / name


def read_header(f: Any) -> PickupEnvelope:
    """Read the magic and envelope lines of an open pickup file (left at the message)."""
    if f.readline(len(MAGIC) + 1) != MAGIC:
        raise PickupError("not a pickup file (no mailhub-pickup line)")
    line = f.readline(MAX_ENVELOPE)
    if not line.endswith(b"\n"):
        raise PickupError("the envelope line is cut short or too long")
    return PickupEnvelope.from_line(line)


def write_server_address(data_dir: Path, host: str, port: int) -> None:
    """Record the SMTP listener a running server is bound to (for ``mailhub sendmail``)."""
    root = pickup_dir(data_dir)
    makedirs_durable(root)
    doc = {"smtp": [host, port], "pid": os.getpid()}
    atomic_write(root / SERVER_FILE, json.dumps(doc).encode())


def read_server_address(data_dir: Path) -> tuple[str, int] | None:
    try:
        doc = json.loads((pickup_dir(data_dir) / SERVER_FILE).read_bytes())
        host, port = doc["smtp"]
        return str(host), int(port)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _claimer(name: str) -> int | None:
    """The pid in a claimed file's name (``<name>,P<pid>``)."""
    _, sep, pid = name.rpartition(",P")
    return int(pid) if sep and pid.isdigit() else None


class PickupCollector(Service):
    """Hands the pickup directory's messages to ``sink`` (the outgoing queue's), one at a time.

    Collects at start, when inotify reports a new file, and every ``interval`` seconds.
    """

    def __init__(
        self,
        data_dir: Path,
        sink: IMessageSink,
        clock: IReactorTime,
        hostname: str,
        *,
        interval: float = DEFAULT_INTERVAL,
        use_inotify: bool = True,
    ) -> None:
        self.data_dir = data_dir
        self.root = pickup_dir(data_dir)
        self._sink, self._clock, self._hostname = sink, clock, hostname
        self._interval, self._use_inotify = interval, use_inotify
        self._ids = QueueIdGenerator(clock)
        self._loop: task.LoopingCall | None = None
        self._notifier: Any = None
        self._running: defer.Deferred[None] | None = None
        self._again = False
        self._in_flight: set[str] = set()
        self.collected = 0  # messages handed to the queue (tests, logs)
        self.server_address: tuple[str, int] | None = None

    # -- life ------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        for d in ("tmp", "new", "cur"):
            makedirs_durable(self.root / d)
        self._watch()
        self._loop = task.LoopingCall(self.collect)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)  # now: what was left while we were down

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None
        if self.server_address is not None:
            remove_if_exists(self.root / SERVER_FILE)
        # Let the message being handed over finish: its claim is removed only after the queue
        # has it (else it stays claimed and the next start delivers it).
        running = self._running
        return defer.succeed(None) if running is None else running

    def listener_bound(self, host: str, port: int) -> None:
        """The SMTP listener's address, recorded for ``mailhub sendmail`` (first one wins)."""
        if self.server_address is None:
            self.server_address = (host, port)
            try:
                write_server_address(self.data_dir, host, port)
            except OSError as e:
                log.warn("pickup: cannot record the SMTP address for sendmail: {e}", e=e)

    def _watch(self) -> None:
        if not self._use_inotify:
            return
        try:
            from twisted.internet import inotify
            from twisted.python.filepath import FilePath

            notifier = inotify.INotify(reactor=self._clock)
            notifier.startReading()
            notifier.watch(
                FilePath(str(self.root / "new")),
                mask=inotify.IN_MOVED_TO | inotify.IN_CLOSE_WRITE,
                callbacks=[lambda *_: self.collect()],
            )
            self._notifier = notifier
        except Exception as e:  # not Linux, or no watches left: the timer alone
            log.info("pickup: no inotify ({why}): looking every {n} s", why=e, n=self._interval)

    # -- collecting ------------------------------------------------------------------------

    def collect(self) -> defer.Deferred[None]:
        """Hand over everything in new/ (and orphaned claims); fires when done. A call while a
        collection runs makes it look again after."""
        if self._running is not None:
            self._again = True
            return self._running
        d = self._running = defer.ensureDeferred(self._collect_all())

        def done(result: object) -> None:
            self._running = None
            if isinstance(result, Failure):
                log.failure("pickup: collecting", result)
            if self._again and self.running:
                self._again = False
                self.collect()

        d.addBoth(done)
        return d

    def _candidates(self) -> Iterator[Path]:
        new, cur = self.root / "new", self.root / "cur"
        for directory, claimed in ((cur, True), (new, False)):
            try:
                names = sorted(os.listdir(directory))
            except FileNotFoundError:
                continue
            for name in names:
                if name in self._in_flight:
                    continue
                if claimed:
                    pid = _claimer(name)
                    if pid is not None and pid != os.getpid() and _pid_alive(pid):
                        continue  # another live process is handing it over
                yield directory / name

    async def _collect_all(self) -> None:
        while True:
            self._again = False
            for path in list(self._candidates()):
                if not self.running:
                    return
                claimed = self._claim(path)
                if claimed is not None:
                    await self._hand_over(claimed)
            if not self._again:
                return

    def _claim(self, path: Path) -> Path | None:
        base = path.name if path.parent.name == "new" else path.name.rpartition(",P")[0]
        target = self.root / "cur" / f"{base or path.name},P{os.getpid()}"
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None  # another collector took it
        return target

    async def _hand_over(self, path: Path) -> None:
        self._in_flight.add(path.name)
        try:
            await self._deliver(path)
        except PickupError as e:
            self._set_aside(path, str(e))
            return
        except DeliveryError as e:
            if e.permanent:
                self._set_aside(path, str(e))
            else:  # the queue cannot take it now (disk full?): the timer tries again
                log.warn("pickup: {name}: not taken now ({e}); trying later", name=path.name, e=e)
            return
        finally:
            self._in_flight.discard(path.name)
        # The queue has it on disk: only now the pickup copy goes. (A crash just before this
        # line delivers it again on the next start: a duplicate, never a loss.)
        remove_if_exists(path)
        fsync_dir(path.parent)
        self.collected += 1

    async def _deliver(self, path: Path) -> None:
        try:
            f = path.open("rb")
        except FileNotFoundError:
            return
        with f:
            envelope = read_header(f)
            qid = self._ids()
            env = Envelope(
                queue_id=qid,
                mail_from=envelope.sender,
                recipients=[Recipient(r, r) for r in dict.fromkeys(envelope.recipients)],
                protocol="local",
                server_name=self._hostname,
                body_type="8BITMIME",
                # RFC 6531: a non-ASCII address needs SMTPUTF8 from the next hop too.
                smtputf8=not all(a.isascii() for a in (envelope.sender, *envelope.recipients)),
            )
            message = self._sink.open(env)
            try:
                message.write(self._received(envelope, qid))
                while chunk := f.read(CHUNK):
                    message.write(chunk)
                    if (wait := message.ready()) is not None:
                        await wait
            except BaseException:
                message.abort()
                raise
        queue_id = await message.commit()
        log.info(
            "pickup: {name} from <{sender}> for {n} recipient(s) queued as {qid}",
            name=path.name,
            sender=envelope.sender,
            n=len(envelope.recipients),
            qid=queue_id,
        )

    def _received(self, envelope: PickupEnvelope, qid: str) -> bytes:
        # Postfix's pickup says the same: who dropped it, here, when (RFC 5321 4.4).
        when = formatdate(envelope.time or self._clock.seconds(), localtime=False)
        who = f", from userid {envelope.uid}" if envelope.uid >= 0 else ""
        return (
            f"Received: by {self._hostname} (mailhub sendmail{who})\r\n\tid {qid}; {when}\r\n"
        ).encode("ascii", "replace")

    def _set_aside(self, path: Path, why: str) -> None:
        bad = self.root / "bad"
        log.error("pickup: {name} set aside in {bad}: {why}", name=path.name, bad=str(bad), why=why)
        try:
            makedirs_durable(bad)
            os.rename(path, bad / path.name)
            fsync_dir(bad)
            fsync_dir(path.parent)
        except OSError as e:
            log.error("pickup: cannot set {name} aside: {e}", name=path.name, e=e)
