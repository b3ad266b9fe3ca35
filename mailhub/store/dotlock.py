"""A link()-based dotlock that works on NFS and CephFS (several mailhub nodes, one tree).

``O_EXCL`` is not reliable over NFSv2/v3 and ``flock``/``fcntl`` locks are not reliably shared
between clients, so we use the classic NFS-safe recipe (open(2) "O_EXCL" notes, liblockfile):

1. create a file with a name unique to this host, process and attempt, holding the owner
   record (below);
2. ``link()`` it to ``<name>.lock`` - so the lock file appears with its content complete;
3. the lock is ours if link() succeeded, or - because an NFS reply can be lost after the server
   did the work - if the unique file's ``st_nlink`` is now 2;
4. otherwise judge the holder (below), break the lock if it is dead, and try again.

The owner record is one readable line::

    host=mx1 pid=4242 start=81236 boot=6f0e...-... pidns=4026531836 nonce=9b1c...

A contender that finds the lock taken judges it at once, without waiting for an age:

* same host, same boot id (``/proc/sys/kernel/random/boot_id``) and same PID namespace: the
  holder is dead when its pid no longer exists, or now names another process (its start time
  differs: the pid was reused) - a ``kill -9`` leaves a lock that is broken on the next try;
* same host, another boot id: the machine rebooted since, the holder is dead;
* another host (or PID namespace, or content that cannot be read): the age rule - stale once
  its mtime is older than ``stale_after`` (60 s by default). Holders keep the lock for
  milliseconds; one holding it longer calls ``touch()`` now and then.

Breaking is race-free between contenders: the judged lock is renamed aside to a unique name and
kept only if it is still the very file (mtime and content, which holds a nonce) that was judged;
otherwise - a fresh lock taken meanwhile - it is linked back.

Waiting: ``acquire()`` on the reactor thread never sleeps. It tries once (breaking a dead
holder's lock) and raises ``LockBusy`` when a live holder has it, for the caller to try again
from a reactor timer (``mailhub.store.lockwait``). In any other thread it sleeps between tries
(a few milliseconds at first) and gives up with ``LockTimeout`` after ``timeout``.

Fairness: a process that polls is starved by one that takes the lock again the moment it lets
it go (a stream of STOREs, each handing it on): the lock is free for microseconds between two
polls 50 ms apart. So a waiter that has waited past ``ANNOUNCE_AFTER`` announces itself in
``<lock>.want`` (an owner record, rewritten at each poll; removed when it gets the lock or
gives up, if still its own), and ``acquire()`` does not take the lock while a fresh marker of
a live waiter exists (a holder's next hold yields: ``LockBusy`` on the reactor, a wait
elsewhere) - one stat() when nobody waits. A marker is ignored when its pid is dead (this
machine) or it was not rewritten for ``WANT_FRESH`` seconds (a crash; another host's, whose
clock may differ); ``leftovers`` removes old ones. A waiter that has announced itself takes
the lock whatever markers say, so two waiters never yield to each other.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType

from twisted.logger import Logger
from twisted.python import threadable

from mailhub.store.errors import LockBusy, LockTimeout

log = Logger()
_attempts = itertools.count(1)

STALE_AFTER = 60.0  # the age rule: a lock of another host untouched this long is stale
ANNOUNCE_AFTER = 0.05  # a waiter announces itself (``<lock>.want``) after waiting this long
WANT_FRESH = 3.0  # a marker not rewritten for this long is ignored (its waiter polls every 50 ms)


def on_reactor_thread() -> bool:
    """Whether the caller runs on the reactor thread (which must never wait for a lock)."""
    return threadable.isInIOThread()


@dataclass(frozen=True)
class Machine:
    """Where a process runs, as far as telling whether a pid is ours to check goes."""

    host: str
    boot_id: str  # "" when unknown (not Linux): then only the age rule applies
    pidns: str  # the PID namespace (containers on one kernel share the boot id)


@cache
def this_machine() -> Machine:
    return Machine(socket.gethostname(), _read_first_line("/proc/sys/kernel/random/boot_id"),
                   _pid_namespace())  # fmt: skip


def _read_first_line(path: str) -> str:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def process_start(pid: int) -> str:
    """The start time of ``pid`` (clock ticks since boot, /proc/<pid>/stat field 22); "" if
    there is no such process or no /proc. With the pid, it names one process for a boot."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    # The command name (field 2) is in parentheses and may hold spaces and ")".
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else ""


def pid_alive(pid: int, start: str) -> bool:
    """Whether process ``pid`` (on this machine, in our PID namespace) still exists and is the
    one that started at ``start`` ("" = unknown: any process with that pid counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as e:
        if e.errno == errno.ESRCH:
            return False
        # EPERM: it exists (another user's process).
    if start:
        now = process_start(pid)
        if now and now != start:
            return False  # the pid was reused by another process
    return True


@dataclass(frozen=True)
class Owner:
    """Who holds a lock, as its file says."""

    host: str
    pid: int
    start: str = ""
    boot_id: str = ""
    pidns: str = ""

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def owner_record(machine: Machine, pid: int, start: str) -> bytes:
    # The nonce tells our lock from a later one: inode numbers are reused at once on ext4.
    return (
        f"host={machine.host} pid={pid} start={start or '-'} boot={machine.boot_id or '-'} "
        f"pidns={machine.pidns or '-'} nonce={secrets.token_hex(8)}\n"
    ).encode()


def parse_owner(content: bytes) -> Owner | None:
    """The owner a lock file names; None if it cannot be read (then only its age counts).
    Also reads the older ``<host> <pid> <nonce>`` line (no boot id: only the pid check)."""
    try:
        words = content.decode("ascii").split()
    except UnicodeDecodeError:
        return None
    if len(words) >= 2 and "=" not in words[0]:
        try:
            return Owner(words[0], int(words[1]))
        except ValueError:
            return None
    fields = dict(w.partition("=")[::2] for w in words)
    try:
        pid = int(fields["pid"])
        host = fields["host"]
    except (KeyError, ValueError):
        return None
    if not host:
        return None

    def opt(key: str) -> str:
        value = fields.get(key, "-")
        return "" if value == "-" else value

    return Owner(host, pid, opt("start"), opt("boot"), opt("pidns"))


@dataclass(frozen=True)
class Verdict:
    stale: bool
    why: str


def judge(
    content: bytes | None,
    mtime: float,
    now: float,
    stale_after: float,
    machine: Machine,
    alive: Callable[[int, str], bool] = pid_alive,
) -> Verdict:
    """Whether a lock with this content and mtime was left by a dead holder (see above)."""
    owner = parse_owner(content) if content is not None else None
    if owner is not None and owner.host == machine.host and owner.boot_id and machine.boot_id:
        if owner.boot_id != machine.boot_id:
            return Verdict(True, f"{owner.describe()} predates a reboot")
        if owner.pidns == machine.pidns:
            if alive(owner.pid, owner.start):
                return Verdict(False, f"held by {owner.describe()}")
            return Verdict(True, f"{owner.describe()} is dead")
    elif owner is not None and owner.host == machine.host and not owner.boot_id:
        # An older lock file without a boot id: a dead pid is still dead.
        if not alive(owner.pid, ""):
            return Verdict(True, f"{owner.describe()} is dead")
    age = now - mtime
    who = owner.describe() if owner is not None else "unreadable owner"
    if age > stale_after:
        return Verdict(True, f"{who}, untouched for {age:.0f}s")
    return Verdict(False, f"held by {who}")


class DotLock:
    """An exclusive lock represented by the file ``path`` (conventionally ``<name>.lock``).

    Use as a context manager. Not re-entrant. See the module docstring for when it waits.
    """

    def __init__(
        self,
        path: Path,
        *,
        timeout: float = 10.0,
        stale_after: float = STALE_AFTER,
        hostname: str | None = None,
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        min_delay: float = 0.001,
        max_delay: float = 0.05,
        machine: Machine | None = None,
        pid: int | None = None,
        alive: Callable[[int, str], bool] = pid_alive,
        in_reactor: Callable[[], bool] | None = None,
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.stale_after = stale_after
        self._hostname = (hostname or socket.gethostname()).replace("/", "_")
        self._now = now
        self._sleep = sleep
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._machine = machine or this_machine()
        self._pid = pid
        self._alive = alive
        self._in_reactor = in_reactor or (lambda: on_reactor_thread())
        self._token: bytes | None = None  # content of the lock file we hold
        self.want_path = self.path.with_name(self.path.name + ".want")
        self.holder = ""  # why the last failed try failed (for LockBusy and logs)

    @property
    def held(self) -> bool:
        return self._token is not None

    def _unique_path(self) -> Path:
        return self.path.with_name(
            f"{self.path.name}.{self._hostname}.{os.getpid()}."
            f"{threading.get_ident()}.{next(_attempts)}"
        )

    def _try_once(self) -> bool:
        unique = self._unique_path()
        pid = os.getpid() if self._pid is None else self._pid  # at each try: fork changes it
        token = owner_record(self._machine, pid, _own_start(pid) if pid == os.getpid() else "")
        fd = os.open(unique, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, token)
        finally:
            os.close(fd)
        try:
            try:
                os.link(unique, self.path)
            except FileExistsError:
                return False
            except OSError:
                # The NFS case: the reply may be lost although the link was made.
                if os.stat(unique).st_nlink != 2:
                    return False
            self._token = token
            return True
        finally:
            os.unlink(unique)

    @staticmethod
    def _identity(path: Path) -> tuple[float, bytes] | None:
        try:
            st = os.stat(path)
            with open(path, "rb") as f:
                return st.st_mtime, f.read(512)
        except FileNotFoundError:
            return None

    def _break_if_stale(self) -> bool:
        """Break the lock if its holder is dead; True if it is gone now (broken by us or
        released meanwhile), so trying again may succeed."""
        seen = self._identity(self.path)
        if seen is None:
            return True
        verdict = judge(seen[1], seen[0], self._now(), self.stale_after, self._machine,
                        self._alive)  # fmt: skip
        self.holder = verdict.why
        if not verdict.stale:
            return False
        return break_lock(self.path, seen, verdict.why, self._unique_path())

    def try_acquire(self) -> bool:
        """One non-blocking try, breaking a dead holder's lock on the way; never sleeps."""
        if self._token is not None:
            raise RuntimeError(f"{self.path} is already held by this DotLock")
        if self._try_once():
            return True
        return self._break_if_stale() and self._try_once()

    def waiter(self) -> str:
        """Who announced that they wait for the lock (see the module docstring); "" if
        nobody did, or the marker is stale. One stat() when there is no marker."""
        if _reactor_waits and self.want_path in _reactor_waits:
            return ""  # this process's reactor announced itself: it takes it, as waiters do
        try:
            st = os.stat(self.want_path)
        except FileNotFoundError:
            return ""
        now = self._now()
        if abs(now - st.st_mtime) > WANT_FRESH:
            return ""
        try:
            with open(self.want_path, "rb") as f:
                content = f.read(512)
        except FileNotFoundError:
            return ""
        # (a waiter's pid on this machine: dead or not; elsewhere the age rule with WANT_FRESH)
        if judge(content, st.st_mtime, now, WANT_FRESH, self._machine, self._alive).stale:
            return ""
        owner = parse_owner(content)
        return owner.describe() if owner is not None else "another process"

    def acquire(self) -> None:
        """Take the lock. On the reactor thread: one try, LockBusy if a live holder has it
        or a waiter announced itself. Elsewhere: wait, and raise LockTimeout after
        ``timeout`` seconds."""
        waiter = self.waiter()
        if not waiter and self.try_acquire():
            return
        if self._in_reactor():
            if waiter:
                why = f"{self.path} is wanted ({waiter} waits for it)"
                raise LockBusy(why, self.path, want=self.want_path)
            raise LockBusy(f"{self.path} is busy ({self.holder})", self.path, want=self.want_path)
        now = self._now()
        deadline, announce_at = now + self.timeout, now + ANNOUNCE_AFTER
        delay = self._min_delay
        announced: bytes | None = None
        try:
            while True:
                now = self._now()
                if now >= deadline:
                    raise LockTimeout(
                        f"could not lock {self.path} within {self.timeout:g}s ({self.holder})"
                    )
                if now >= announce_at:
                    pid = os.getpid() if self._pid is None else self._pid
                    announced = announce(self.want_path, announced, self._machine, pid)
                self._sleep(delay)
                delay = min(delay * 2, self._max_delay)
                if self.try_acquire():
                    return
        finally:
            if announced is not None:
                withdraw(self.want_path, announced)

    def touch(self) -> None:
        """Refresh the lock's mtime during a long hold, so nobody judges it stale."""
        os.utime(self.path)

    def release(self) -> None:
        """Drop the lock, unless somebody broke it meanwhile (then only log)."""
        token, self._token = self._token, None
        if token is None:
            return
        current = self._identity(self.path)
        if current is None:
            log.warn("lock {path} vanished while held", path=str(self.path))
            return
        if current[1] != token:
            log.warn("lock {path} was taken over while held", path=str(self.path))
            return
        os.unlink(self.path)

    def __enter__(self) -> DotLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


_starts: dict[int, str] = {}
# The markers for which this process's reactor announced waits (lockwait.BusyWait), with how
# many: they are waiters that announced themselves, and take the lock whatever markers say
# (two waiters yielding to each other's marker would never take it).
_reactor_waits: dict[Path, int] = {}


def announce(
    want: Path, record: bytes | None, machine: Machine | None = None, pid: int | None = None
) -> bytes:
    """Write (again: its mtime says it is fresh) a waiter's marker ``want`` (``<lock>.want``);
    returns its content, ``record`` or a new owner record."""
    if record is None:
        pid = os.getpid() if pid is None else pid
        start = _own_start(pid) if pid == os.getpid() else ""
        record = owner_record(machine or this_machine(), pid, start)
    fd = os.open(want, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, record)
    finally:
        os.close(fd)
    return record


def announce_on_reactor(want: Path, record: bytes | None) -> bytes:
    """``announce()`` for a wait on the reactor (``lockwait.BusyWait``): until it is
    withdrawn, this process's acquisitions of the lock yield to no marker."""
    if record is None:
        _reactor_waits[want] = _reactor_waits.get(want, 0) + 1
    return announce(want, record)


def withdraw_on_reactor(want: Path, record: bytes) -> None:
    left = _reactor_waits.pop(want, 0) - 1
    if left > 0:
        _reactor_waits[want] = left
    withdraw(want, record)


def withdraw(want: Path, record: bytes) -> None:
    """Remove a waiter's marker, unless another waiter wrote its own over it (it waits)."""
    try:
        with open(want, "rb") as f:
            if f.read(512) != record:
                return
        os.unlink(want)
    except FileNotFoundError:
        pass


def _own_start(pid: int) -> str:
    # Keyed by pid, not cached once: a forked worker must record its own start time, or its
    # live lock would look like one of a dead process whose pid was reused.
    start = _starts.get(pid)
    if start is None:
        start = _starts[pid] = process_start(pid)
    return start


def break_lock(path: Path, seen: tuple[float, bytes], why: str, aside: Path) -> bool:
    """Remove the lock ``path`` if it is still the file ``seen`` (mtime, content) that was
    judged stale; True if the lock is gone afterwards. Race-free between breakers: the lock is
    renamed to the unique name ``aside`` first, and put back if it turns out to be a fresh one
    (another breaker was faster and somebody locked again)."""
    aside = aside.with_name(aside.name + ".stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # somebody else broke it first (or its holder released it)
    if DotLock._identity(aside) == seen:
        log.warn("broke stale lock {path}: {why}", path=str(path), why=why)
        os.unlink(aside)
        return True
    # We raced another breaker and took a fresh lock aside: put it back if we can.
    try:
        os.link(aside, path)
    except OSError:
        log.error("lock {path} was broken twice in a race", path=str(path))
    os.unlink(aside)
    return False
