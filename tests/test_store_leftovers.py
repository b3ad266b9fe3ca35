"""Start-up clean-up: stale dotlocks and the temporary files of killed processes go; live
locks, fresh files and everything else stay (mailhub.store.leftovers)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailhub.store import subscriptions, uidlist, uidvalidity
from mailhub.store.delivery import StaleTmpCleaner
from mailhub.store.dotlock import this_machine
from mailhub.store.store import MailStore


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class LeftoversTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.store = MailStore(self.root, "test.host")
        box = self.store.mailbox("carol@example.com", create=True)
        self.inbox = self.root / "example.com" / "carol"
        box.create_folder("Work")
        box.folder().sync()  # writes mailhub-uidlist
        self.work = self.inbox / ".Work"
        self.old = time.time() - 3600
        me = this_machine()
        self.dead = f"host={me.host} pid={_dead_pid()} start=1 boot={me.boot_id} pidns={me.pidns}"
        self.live = f"host={me.host} pid={os.getpid()} start=- boot={me.boot_id} pidns={me.pidns}"

    def put(self, path: Path, content: str, *, old: bool = True) -> Path:
        path.write_text(content)
        if old:
            os.utime(path, (self.old, self.old))
        return path

    def test_stale_locks_and_old_temporary_files_are_removed(self) -> None:
        i = self.inbox
        # A killed writer: its lock (fresh: only the dead pid tells) and its half-written list.
        self.put(i / uidlist.LOCKNAME, self.dead + " nonce=1\n", old=False)
        self.put(i / f"{uidlist.FILENAME}.1765000000.M1P9Q1.test.host.tmp", "x" * 347_000)
        self.put(i / f"{subscriptions.FILENAME}.1765000000.M2P9Q1.test.host.tmp", "INBOX\n")
        self.put(i / f"{uidlist.LOCKNAME}.test.host.9.140.1", self.dead)  # an attempt's file
        self.put(i / "mailhub-cache.9.140.new", "cache")
        # The per-user UIDVALIDITY counter's lock and half-written replacement, killed alike.
        self.put(i / uidvalidity.LOCKNAME, self.dead + " nonce=4\n", old=False)
        self.put(i / f"{uidvalidity.FILENAME}.1765000000.M4P9Q1.test.host.tmp", "7")
        (i / "mailhub-deleting.1765000000.M3P9Q1.test.host" / "cur").mkdir(parents=True)
        os.utime(i / "mailhub-deleting.1765000000.M3P9Q1.test.host", (self.old, self.old))
        # Another host's lock, untouched for an hour: the age rule.
        self.put(self.work / subscriptions.LOCKNAME, "host=elsewhere pid=1 boot=b nonce=2\n")
        # Kept: a fresh temporary file (a writer on another node), and mail.
        fresh = self.put(self.work / f"{uidlist.FILENAME}.1765000001.M1P7Q1.other.tmp", "x",
                         old=False)  # fmt: skip
        kept = sorted(p.name for p in (i / "cur").iterdir())

        removed = StaleTmpCleaner(self.store)._clean_blocking()

        self.assertEqual(removed, 9)
        self.assertEqual(sorted(p.name for p in i.iterdir() if p.name.startswith("mailhub")),
                         [uidlist.FILENAME, uidvalidity.FILENAME])  # fmt: skip
        self.assertEqual(sorted(p.name for p in i.iterdir() if p.name.startswith("subscr")),
                         [subscriptions.FILENAME])  # fmt: skip
        self.assertFalse((self.work / subscriptions.LOCKNAME).exists())
        self.assertTrue(fresh.exists())
        self.assertEqual(sorted(p.name for p in (i / "cur").iterdir()), kept)

    def test_live_lock_and_what_it_protects_stay(self) -> None:
        lock = self.put(self.inbox / uidlist.LOCKNAME, self.live + " nonce=1\n")
        tmp = self.put(self.inbox / f"{uidlist.FILENAME}.1765000000.M1P9Q1.test.host.tmp", "x")
        self.assertEqual(self.store.clean_leftovers(), 0)
        self.assertTrue(lock.exists())
        self.assertTrue(tmp.exists())  # written under that lock, maybe right now
        # The folder works once the holder is gone (here: the lock released).
        lock.unlink()
        self.assertEqual(self.store.clean_leftovers(), 1)
        self.assertFalse(tmp.exists())
