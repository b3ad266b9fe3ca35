"""The POP3 session lock (RFC 1939 3, RFC 2449 [IN-USE]) between sessions and processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailhub.pop3.lock import MailboxBusy, SessionLock

# Another process taking the lock and holding it until its stdin closes (or it is killed).
HOLDER = """
import sys
from mailhub.pop3.lock import SessionLock
lock = SessionLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
"""


class SessionLockTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "mailhub-pop3.lock"

    def test_second_lock_in_the_same_process_is_refused_until_released(self) -> None:
        first, second = SessionLock(self.path), SessionLock(self.path)
        first.acquire()
        self.assertRaises(MailboxBusy, second.acquire)
        self.assertFalse(second.held)
        first.release()
        second.acquire()
        self.assertTrue(second.held)
        second.release()
        self.assertTrue(self.path.exists())  # never unlinked (see the module docstring)

    def holder(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(self.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        self.assertEqual(proc.stdout.readline(), "locked\n")
        return proc

    def test_lock_held_by_another_process(self) -> None:
        proc = self.holder()
        self.assertRaises(MailboxBusy, SessionLock(self.path).acquire)
        proc.stdin.close()
        proc.wait(10)
        lock = SessionLock(self.path)
        lock.acquire()
        lock.release()

    def test_crashed_holder_leaves_no_stale_lock(self) -> None:
        proc = self.holder()
        proc.kill()  # SIGKILL: no clean-up code runs
        proc.wait(10)
        lock = SessionLock(self.path)
        lock.acquire()  # at once, no stale timeout to wait out
        self.assertTrue(lock.held)
        lock.release()
