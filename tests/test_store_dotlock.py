"""The link()-based dotlock: mutual exclusion across processes, NFS quirks, stale locks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mailhub.store.dotlock import (
    DotLock,
    Machine,
    Owner,
    break_lock,
    parse_owner,
    process_start,
    this_machine,
)
from mailhub.store.errors import LockBusy, LockTimeout
from mailhub.store.lockwait import retry_busy

REPO = str(Path(__file__).resolve().parent.parent)

# Each process increments a counter file N times under the lock with a read-sleep-write cycle
# that loses updates without mutual exclusion.
INCREMENTER = """
import sys, time
from pathlib import Path
from mailhub.store.dotlock import DotLock
counter = Path(sys.argv[1])
lock = DotLock(counter.with_name("counter.lock"), timeout=30)
for _ in range(int(sys.argv[2])):
    with lock:
        n = int(counter.read_text())
        time.sleep(0.001)
        counter.write_text(str(n + 1))
"""


class DotLockTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "x.lock"

    def test_acquire_release(self) -> None:
        lock = DotLock(self.path)
        with lock:
            self.assertTrue(self.path.exists())
            self.assertTrue(lock.held)
        self.assertFalse(self.path.exists())
        # Only the lock file is left while held, no unique temp files afterwards.
        self.assertEqual(list(self.dir.iterdir()), [])

    def test_held_lock_times_out(self) -> None:
        with DotLock(self.path):
            other = DotLock(self.path, timeout=0.1, stale_after=60, in_reactor=lambda: False)
            start = time.monotonic()
            self.assertRaises(LockTimeout, other.acquire)
            self.assertLess(time.monotonic() - start, 2.0)
        self.assertFalse(self.path.exists())

    def test_stale_lock_is_broken(self) -> None:
        self.path.write_text("dead-host 999999\n")
        old = time.time() - 120
        os.utime(self.path, (old, old))
        lock = DotLock(self.path, timeout=1, stale_after=60)
        lock.acquire()
        self.assertTrue(lock.held)
        self.assertNotIn("dead-host", self.path.read_text())
        lock.release()
        self.assertFalse(self.path.exists())

    def test_stale_uses_injected_clock(self) -> None:
        self.path.write_text("x")
        clock = [time.time()]
        lock = DotLock(
            self.path,
            timeout=120,
            stale_after=60,
            now=lambda: clock[0],
            sleep=lambda s: clock.__setitem__(0, clock[0] + 10),
            in_reactor=lambda: False,  # a worker thread: it may wait
        )
        # Not stale now; the fake sleep advances the clock until it is, within the timeout.
        lock.acquire()
        self.assertTrue(lock.held)
        self.assertGreater(clock[0] - os.stat(self.path).st_mtime, 50)

    def test_lost_nfs_reply(self) -> None:
        # link() succeeds on the server but the client sees an error: st_nlink == 2 says ours.
        real_link = os.link

        def link(src: str, dst: str) -> None:
            real_link(src, dst)
            raise OSError(5, "simulated lost NFS reply")

        self.patch(os, "link", link)
        lock = DotLock(self.path, timeout=0.2, in_reactor=lambda: False)
        lock.acquire()
        self.assertTrue(lock.held)
        lock.release()
        self.assertFalse(self.path.exists())

    def test_release_does_not_remove_someone_elses_lock(self) -> None:
        lock = DotLock(self.path)
        lock.acquire()
        os.unlink(self.path)
        self.path.write_text("usurper")  # another node broke and took it
        lock.release()
        self.assertEqual(self.path.read_text(), "usurper")

    def test_contention_between_processes(self) -> None:
        counter = self.dir / "counter"
        counter.write_text("0")
        env = dict(os.environ, PYTHONPATH=REPO)
        procs = [
            subprocess.Popen([sys.executable, "-c", INCREMENTER, str(counter), "40"], env=env)
            for _ in range(3)
        ]
        for p in procs:
            self.assertEqual(p.wait(timeout=60), 0)
        self.assertEqual(counter.read_text(), "120")


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped): nobody has it now."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _never_sleep(seconds: float) -> None:
    raise AssertionError(f"slept {seconds}s")


HERE = Machine("mx1", "boot-a", "4026531836")


class OwnerTests(SynchronousTestCase):
    """Who holds a lock is judged at once: the pid on this machine, the age elsewhere."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "mailhub-uidlist.lock"
        self.clock = [1_000_000.0]
        self.live: set[int] = set()

    def write(self, content: str, age: float = 0.0) -> None:
        self.path.write_text(content)
        when = self.clock[0] - age
        os.utime(self.path, (when, when))

    def lock(self, **kwargs: object) -> DotLock:
        args: dict = dict(
            timeout=10,
            stale_after=60,
            now=lambda: self.clock[0],
            sleep=_never_sleep,
            machine=HERE,
            alive=lambda pid, start: pid in self.live,
            in_reactor=lambda: True,  # the reactor thread: never waits
        )
        args.update(kwargs)
        return DotLock(self.path, **args)  # type: ignore[arg-type]

    def test_record_names_pid_host_and_boot_id(self) -> None:
        lock = DotLock(self.path)
        with lock:
            owner = parse_owner(self.path.read_bytes())
        me = this_machine()
        self.assertEqual(owner, Owner(me.host, os.getpid(), process_start(os.getpid()),
                                      me.boot_id, me.pidns))  # fmt: skip
        self.assertTrue(me.boot_id)  # Linux: /proc/sys/kernel/random/boot_id

    def test_dead_holder_on_this_machine_is_broken_at_once(self) -> None:
        self.write("host=mx1 pid=4242 start=99 boot=boot-a pidns=4026531836 nonce=1\n")
        lock = self.lock()
        lock.acquire()  # the lock is fresh (age 0): only the dead pid says it is stale
        self.assertTrue(lock.held)
        self.assertIn(f"pid={os.getpid()}", self.path.read_text())

    def test_live_holder_on_this_machine_is_never_broken(self) -> None:
        self.live.add(4242)
        self.write("host=mx1 pid=4242 start=99 boot=boot-a pidns=4026531836 nonce=1\n", age=3600)
        busy = self.assertRaises(LockBusy, self.lock().acquire)
        self.assertIn("pid 4242 on mx1", str(busy))
        self.assertIn("pid=4242", self.path.read_text())

    def test_reactor_thread_gets_busy_at_once_instead_of_sleeping(self) -> None:
        self.live.add(4242)
        self.write("host=mx1 pid=4242 start=99 boot=boot-a pidns=4026531836 nonce=1\n")
        lock = self.lock(timeout=3600)
        self.assertRaises(LockBusy, lock.acquire)  # _never_sleep was not called
        self.assertFalse(lock.held)
        self.assertFalse(lock.try_acquire())
        self.live.clear()
        self.assertTrue(lock.try_acquire())

    def test_holder_from_before_a_reboot_is_broken(self) -> None:
        self.live.add(4242)  # some process has that pid now: not the holder
        self.write("host=mx1 pid=4242 start=99 boot=boot-old pidns=4026531836 nonce=1\n")
        lock = self.lock()
        lock.acquire()
        self.assertTrue(lock.held)

    def test_another_host_waits_for_the_age_rule(self) -> None:
        self.write("host=mx2 pid=4242 start=99 boot=boot-b pidns=4026531836 nonce=1\n", age=59)
        self.assertRaises(LockBusy, self.lock().acquire)
        self.clock[0] += 2  # 61 s old now
        lock = self.lock()
        lock.acquire()
        self.assertTrue(lock.held)

    def test_another_pid_namespace_waits_for_the_age_rule(self) -> None:
        # A container on the same kernel: its pid means nothing here.
        self.write("host=mx1 pid=4242 start=99 boot=boot-a pidns=4026532000 nonce=1\n", age=30)
        self.assertRaises(LockBusy, self.lock().acquire)
        self.clock[0] += 31
        self.lock().acquire()

    def test_garbage_waits_for_the_age_rule(self) -> None:
        self.write("\x00\xff garbage", age=30)
        self.assertRaises(LockBusy, self.lock().acquire)
        self.clock[0] += 31
        self.lock().acquire()

    def test_older_record_without_boot_id_uses_the_pid(self) -> None:
        self.write("mx1 4242 0123456789abcdef\n")
        self.lock().acquire()

    def test_worker_thread_waits_with_the_injected_clock(self) -> None:
        self.live.add(4242)
        self.write("host=mx2 pid=4242 start=99 boot=boot-b pidns=1 nonce=1\n", age=50)
        slept: list[float] = []

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            self.clock[0] += 1

        lock = self.lock(in_reactor=lambda: False, sleep=sleep, timeout=30)
        lock.acquire()  # another host: stale after 60 s, so after ~10 fake seconds
        self.assertTrue(lock.held)
        self.assertEqual(len(slept), 11)

    def test_two_breakers_never_remove_a_fresh_lock(self) -> None:
        self.write("host=mx1 pid=4242 start=99 boot=boot-a pidns=4026531836 nonce=1\n")
        seen = DotLock._identity(self.path)
        assert seen is not None
        # Another contender breaks the dead lock first and takes it...
        winner = self.lock()
        winner.acquire()
        # ...then the slow one acts on what it judged: it must leave the winner's lock alone.
        self.assertFalse(break_lock(self.path, seen, "slow", self.dir / "slow"))
        self.assertEqual(DotLock._identity(self.path)[1], winner._token)  # type: ignore[index]
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), [self.path.name])
        winner.release()
        self.assertFalse(self.path.exists())

    def test_killed_holder_process(self) -> None:
        # A real process that died holding the lock (its record, its pid now free).
        me = this_machine()
        self.write(f"host={me.host} pid={_dead_pid()} start=1 boot={me.boot_id} "
                   f"pidns={me.pidns} nonce=1\n")  # fmt: skip
        lock = DotLock(self.path, timeout=0, in_reactor=lambda: True, sleep=_never_sleep)
        lock.acquire()
        self.assertTrue(lock.held)
        lock.release()

    def test_forked_process_records_its_own_start_time(self) -> None:
        # A worker forked from a process that already locked: its record must name itself,
        # or its live lock would look like a dead holder's whose pid was reused.
        DotLock(self.path).acquire()
        self.path.unlink()
        lock = DotLock(self.path)  # made before the fork, used after
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child
            try:
                lock.acquire()
                os.write(write, self.path.read_bytes())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as f:
            record = f.read()
        start = process_start(child)  # a zombie until reaped: its /proc entry is still there
        os.waitpid(child, 0)
        owner = parse_owner(record)
        assert owner is not None
        self.assertEqual((owner.pid, owner.start), (child, start))
        self.assertNotEqual(owner.start, process_start(os.getpid()))


# Waits for the lock with the real blocking loop (a worker's thread, a CLI command, a second
# mailhub process) and says whether it got it: "got" or "timeout".
WAITER = """
import sys
from pathlib import Path
from mailhub.store.dotlock import DotLock
from mailhub.store.errors import LockTimeout
lock = DotLock(Path(sys.argv[1]), timeout=float(sys.argv[2]), in_reactor=lambda: False)
print("waiting", flush=True)
try:
    lock.acquire()
except LockTimeout:
    print("timeout", flush=True)
else:
    print("got", flush=True)
    lock.release()
"""


class WaiterInAnotherProcessTests(SynchronousTestCase):
    """A process polling for a lock that this process re-takes at once, again and again (a
    stream of STOREs handing it on), announces that it waits (``<lock>.want``): holders
    that would take the lock anew let it have it first."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "mailhub-uidlist.lock"
        self.want = self.dir / "mailhub-uidlist.lock.want"

    def test_is_not_starved_by_a_stream_of_holds(self) -> None:
        env = dict(os.environ, PYTHONPATH=REPO)
        holder = DotLock(self.path, in_reactor=lambda: True)  # the reactor: never waits
        holder.acquire()
        waiter = subprocess.Popen(
            [sys.executable, "-c", WAITER, str(self.path), "5"],
            env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.addCleanup(waiter.wait, 60)
        assert waiter.stdout is not None
        self.assertEqual(waiter.stdout.readline(), "waiting\n")
        holds = yielded = 0
        deadline = time.monotonic() + 60  # (a bound for a broken test, not a measure)
        while waiter.poll() is None and time.monotonic() < deadline:
            # A hold as long as a flush's (fsync), handed on to the next one at once.
            time.sleep(0.02)
            holder.release()
            holds += 1
            try:
                holder.acquire()
            except LockBusy:
                yielded += 1
                while waiter.poll() is None:
                    time.sleep(0.002)  # (retry_busy's back-off)
                    try:
                        holder.acquire()
                        break
                    except LockBusy:
                        continue
        if holder.held:
            holder.release()
        self.assertEqual(waiter.stdout.read(), "got\n", (holds, yielded))
        self.assertGreater(yielded, 0)
        self.assertFalse(self.want.exists())  # the waiter took its marker away

    def test_stale_markers_slow_nobody(self) -> None:
        me = this_machine()
        dead = (f"host={me.host} pid={_dead_pid()} start=1 boot={me.boot_id} "
                f"pidns={me.pidns} nonce=1\n")  # fmt: skip
        self.want.write_text(dead)  # a waiter killed while it waited
        DotLock(self.path, in_reactor=lambda: True, sleep=_never_sleep).acquire()
        self.path.unlink()
        self.want.write_text("host=mx2 pid=4242 start=99 boot=boot-b pidns=1 nonce=1\n")
        old = time.time() - 60  # another host's waiter that stopped refreshing it long ago
        os.utime(self.want, (old, old))
        DotLock(self.path, in_reactor=lambda: True, sleep=_never_sleep).acquire()

    def test_a_fresh_marker_makes_the_reactor_yield(self) -> None:
        self.want.write_text("host=mx2 pid=4242 start=99 boot=boot-b pidns=1 nonce=1\n")
        lock = DotLock(self.path, in_reactor=lambda: True, sleep=_never_sleep)
        busy = self.assertRaises(LockBusy, lock.acquire)
        self.assertIn("waits", str(busy))
        self.assertFalse(self.path.exists())  # it did not take the free lock

    def test_a_waiter_announces_itself_and_cleans_up(self) -> None:
        clock = [1_000_000.0]
        seen: list[bool] = []

        def sleep(seconds: float) -> None:
            seen.append(self.want.exists())
            clock[0] += seconds

        self.path.write_text("host=mx2 pid=4242 start=99 boot=boot-b pidns=1 nonce=1\n")
        lock = DotLock(self.path, timeout=1, now=lambda: clock[0], sleep=sleep,
                       in_reactor=lambda: False)  # fmt: skip
        self.assertRaises(LockTimeout, lock.acquire)
        self.assertEqual(seen[0], False)  # not at once: most waits are short
        self.assertTrue(seen[-1])
        self.assertFalse(self.want.exists())  # given up: no marker left
        self.path.unlink()
        lock.acquire()
        lock.release()
        self.assertEqual(list(self.dir.iterdir()), [])


# Another process's reactor (a second mailhub worker's STOREs): takes the lock again as soon as
# it let it go, backing off only on LockBusy, until the file argv[2] exists; says how often
# it yielded.
STREAM = """
import sys, time
from pathlib import Path
from mailhub.store.dotlock import DotLock
from mailhub.store.errors import LockBusy
lock, stop = DotLock(Path(sys.argv[1]), in_reactor=lambda: True), Path(sys.argv[2])
busy = 0
deadline = time.monotonic() + 60
while not stop.exists() and time.monotonic() < deadline:
    try:
        lock.acquire()
    except LockBusy:
        busy += 1
        time.sleep(0.002)
        continue
    print("holding", flush=True)
    time.sleep(0.02)
    lock.release()
print(busy, flush=True)
"""


class ReactorWaitTests(SynchronousTestCase):
    """A command waiting on reactor timers (``lockwait.retry_busy``) for a lock another
    process hands on from hold to hold announces itself as the blocking wait does."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "mailhub-uidlist.lock"
        self.want = self.dir / "mailhub-uidlist.lock.want"

    def test_is_not_starved_by_another_process(self) -> None:
        stop = self.dir / "stop"
        stream = subprocess.Popen(
            [sys.executable, "-c", STREAM, str(self.path), str(stop)],
            env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.addCleanup(stream.wait, 60)
        self.addCleanup(stop.touch)
        assert stream.stdout is not None
        self.assertEqual(stream.stdout.readline(), "holding\n")
        clock = Clock()
        lock = DotLock(self.path, in_reactor=lambda: True, sleep=_never_sleep)
        results: list[object] = []
        ensureDeferred(retry_busy(clock, 5, lock.acquire)).addBoth(results.append)
        while not results:  # the reactor's timers, run as time goes by (5 s at most)
            time.sleep(0.005)
            clock.advance(0.005)
        stop.touch()
        self.assertFalse(isinstance(results[0], Failure), (results[0], clock.seconds()))
        self.assertTrue(lock.held)
        self.assertFalse(self.want.exists())  # withdrawn
        lock.release()
        lines = stream.stdout.read().split()
        self.assertGreater(int(lines[-1]), 0)  # it yielded to us

    def test_an_announced_reactor_wait_yields_to_no_marker(self) -> None:
        held = DotLock(self.path)
        held.acquire()
        clock = Clock()
        lock = DotLock(self.path, in_reactor=lambda: True, sleep=_never_sleep)
        results: list[object] = []
        ensureDeferred(retry_busy(clock, 5, lock.acquire)).addBoth(results.append)
        clock.advance(1)
        clock.advance(1)
        self.assertTrue(self.want.exists())  # announced, for other processes
        # Another waiter (a reactor's of another process) announced itself over it: two
        # announced waiters take the free lock, they do not yield to each other.
        self.want.write_text("host=mx2 pid=4242 start=99 boot=boot-b pidns=1 nonce=1\n")
        held.release()
        clock.advance(1)
        self.assertEqual(results, [None])  # not yielding to itself nor the other
        self.assertTrue(self.want.exists())  # the other's: it still waits
        lock.release()
        self.assertRaises(LockBusy, lock.acquire)  # the wait is over: it yields again
