"""The link()-based dotlock: mutual exclusion across processes, NFS quirks, stale locks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailhub.store.dotlock import DotLock
from mailhub.store.errors import LockTimeout

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
            other = DotLock(self.path, timeout=0.1, stale_after=60)
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
        lock = DotLock(self.path, timeout=0.2)
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
