"""Fast looks (issue 16 target 4, ``search_all``): a folder changed within the dirty window
is not listed again by most IMAP commands while the store's inotify witness
(``mailhub.store.dirwatch``) saw no change in it since its last listing; NOOP still looks in
full, and any change by another process or straight on the file system is still seen by the
next look, fast or not."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from mailhub.store import MailStore, scan
from mailhub.store import changes as changes_module
from mailhub.store.changes import StoreChanges
from mailhub.store.dirwatch import DirWatch, local_file_system
from mailhub.store.maildir import Folder
from tests.support.imap import USER, Client, IMAPTestCase, message
from tests.support.tools import skip_or_fail
from tests.test_store_uidwriter import OffThreadCase

# Every directory stays "young" (its mtime within the window) for the whole test: the mtime
# never vouches for a listing, only the witness can.
YOUNG = 10_000_000.0


def open_witness(case: SynchronousTestCase) -> DirWatch:
    dirs = DirWatch.open()
    if dirs is None:
        skip_or_fail("inotify is not available")
    assert dirs is not None
    case.addCleanup(dirs.close)
    return dirs


@contextmanager
def in_the_same_tick(folder: Path) -> Iterator[None]:
    """A change to the folder's new/ and cur/ that leaves their stamps (inode, mtime, size) as
    they were: as a change made in the same clock tick as the last look does (a directory's
    mtime has the kernel tick's granularity, seconds on some NFS servers). Only inotify tells."""
    before = {sub: os.stat(folder / sub) for sub in ("new", "cur")}
    yield
    for sub, st in before.items():
        os.utime(folder / sub, ns=(st.st_atime_ns, st.st_mtime_ns))
        after = os.stat(folder / sub)
        assert (after.st_ino, after.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)


def count_listings(case: SynchronousTestCase) -> list[str]:
    """The directories ``os.listdir`` is called on by the store's scans from now on."""
    seen: list[str] = []
    real = os.listdir

    def listdir(path: str) -> list[str]:
        seen.append(os.path.basename(path))
        return real(path)

    case.patch(scan.os, "listdir", listdir)
    return seen


class TheWitness(SynchronousTestCase):
    def setUp(self) -> None:
        self.dirs = open_witness(self)
        self.dir = Path(self.mktemp())
        (self.dir / "cur").mkdir(parents=True)
        self.path = str(self.dir / "cur")
        self.before = self.dirs.generation(self.path, watch=True)
        self.assertIsNotNone(self.before)

    def changed(self) -> bool:
        now = self.dirs.generation(self.path, watch=False)
        changed, self.before = now != self.before, now
        return changed

    def test_every_change_to_the_directory_makes_a_new_generation(self) -> None:
        (self.dir / "cur" / "a").write_bytes(b"x")
        self.assertTrue(self.changed(), "created")
        os.rename(self.dir / "cur" / "a", self.dir / "cur" / "a:2,S")
        self.assertTrue(self.changed(), "renamed (a flag change)")
        os.utime(self.dir / "cur")
        self.assertTrue(self.changed(), "directory touched (a keyword-only change)")
        os.unlink(self.dir / "cur" / "a:2,S")
        self.assertTrue(self.changed(), "removed (an expunge)")
        self.assertFalse(self.changed(), "nothing happened since")

    def test_reading_a_file_changes_nothing(self) -> None:
        (self.dir / "cur" / "a").write_bytes(b"x")
        self.changed()
        (self.dir / "cur" / "a").read_bytes()
        self.assertFalse(self.changed())

    def test_a_change_by_another_process_makes_a_new_generation(self) -> None:
        target = self.dir / "cur" / "b"
        subprocess.run([sys.executable, "-c", f"open({str(target)!r}, 'w').close()"], check=True)
        self.assertTrue(self.changed())

    def test_a_removed_directory_is_vouched_for_no_more(self) -> None:
        os.rmdir(self.dir / "cur")
        self.assertIsNone(self.dirs.generation(self.path, watch=False))

    def test_an_unwatched_directory_is_vouched_for_only_once_watched(self) -> None:
        other = self.dir / "new"
        other.mkdir()
        self.assertIsNone(self.dirs.generation(str(other), watch=False))
        self.assertIsNotNone(self.dirs.generation(str(other), watch=True))

    def test_the_oldest_watch_is_given_up_at_the_limit(self) -> None:
        self.dirs.limit = 1
        other = self.dir / "new"
        other.mkdir()
        self.assertIsNotNone(self.dirs.generation(str(other), watch=True))
        self.assertIsNone(self.dirs.generation(self.path, watch=False))
        self.assertEqual(self.dirs.watched(), 1)

    def test_a_queue_that_overflowed_vouches_for_nothing(self) -> None:
        try:
            limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
        except (OSError, ValueError):
            limit = 1 << 30
        if limit > 100_000:
            raise self.skipTest(f"max_queued_events is {limit}: too many events to queue")
        quiet = self.dir / "new"
        quiet.mkdir()
        before = self.dirs.generation(str(quiet), watch=True)
        self.changed()
        a, b = self.dir / "cur" / "a", self.dir / "cur" / "b"
        a.write_bytes(b"x")
        for _ in range(limit // 2 + 10):  # two events a rename: the queue overflows
            os.rename(a, b)
            a, b = b, a
        self.assertNotEqual(self.dirs.generation(str(quiet), watch=False), before)

    def test_local_file_systems(self) -> None:
        mountinfo = (
            "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
            "40 22 0:35 / /srv/mail rw,relatime shared:5 - nfs4 host:/mail rw,vers=4.2\n"
            "41 22 0:36 / /srv/mail\\040local rw shared:6 - xfs /dev/sdb1 rw\n"
            "42 22 0:37 / /tmp rw shared:7 - tmpfs tmpfs rw\n"
        )
        self.assertTrue(local_file_system("/var/mail/x", mountinfo))
        self.assertFalse(local_file_system("/srv/mail/example.org/alice", mountinfo))
        self.assertFalse(local_file_system("/srv/mail", mountinfo))
        self.assertTrue(local_file_system("/srv/mail local/x", mountinfo))
        self.assertTrue(local_file_system("/tmp/x", mountinfo))
        self.assertFalse(local_file_system("/x", "garbage\n"))


class FastLooks(SynchronousTestCase):
    """``Folder.sync(fast=True)`` with the witness: no listing when nothing changed, and every
    change made since (by anyone on this host) seen."""

    witness = True

    def setUp(self) -> None:
        self.store = MailStore(Path(self.mktemp()), hostname="mail.example.org", dirty_window=YOUNG)
        if self.witness:
            self.store.settings.witness.dirs = open_witness(self)
        self.folder = self.store.mailbox(USER, create=True).folder()
        for n in range(3):
            self.folder.append(message(f"m{n}"))
        self.folder.sync_taking_recent()
        self.folder.sync(fast=True)  # lists again after our own renames, and watches
        self.elsewhere = MailStore(self.store.root, hostname="node2.example.org")

    def other(self) -> Folder:
        folder = self.elsewhere.mailbox(USER).folder()
        folder.sync()
        return folder

    def test_a_fast_look_lists_nothing_when_nothing_changed(self) -> None:
        seen = count_listings(self)
        state = self.folder.sync(fast=True)
        self.assertEqual(seen, [])
        self.assertIs(self.folder.sync(fast=True), state)
        self.assertEqual(seen, [])
        self.folder.sync()
        self.assertEqual(sorted(seen), ["cur", "new"], "a full look lists the young directories")

    def test_a_delivery_by_another_process_is_seen(self) -> None:
        code = (
            "import sys; from pathlib import Path; from mailhub.store import MailStore\n"
            "store = MailStore(Path(sys.argv[1]), hostname='node3.example.org')\n"
            "store.mailbox(sys.argv[2]).folder().append(b'Subject: x\\r\\n\\r\\nbody\\r\\n')\n"
        )
        with in_the_same_tick(self.folder._path):
            subprocess.run([sys.executable, "-c", code, str(self.store.root), USER], check=True)
        self.assertEqual(self.folder.sync(fast=True).count, 4)

    def test_a_file_put_straight_into_new_is_seen(self) -> None:
        with in_the_same_tick(self.folder._path):
            (self.folder._path / "new" / "1700000000.M1P1.elsewhere").write_bytes(message("x"))
        self.assertEqual(self.folder.sync(fast=True).count, 4)

    def test_a_flag_change_elsewhere_is_seen(self) -> None:
        other = self.other()
        with in_the_same_tick(self.folder._path):
            other.store_flags([2], "add", ["F"])
        state = self.folder.sync(fast=True)
        self.assertEqual(state.by_uid[2].flags, frozenset("F"))

    def test_a_keyword_change_elsewhere_is_seen(self) -> None:
        # Only the UID list and cur/'s mtime change: no name does.
        other = self.other()
        with in_the_same_tick(self.folder._path):
            other.store_flags([2], "add", keywords=["$Done"])
        state = self.folder.sync(fast=True)
        self.assertEqual(state.by_uid[2].keywords, frozenset(["$Done"]))

    def test_an_expunge_elsewhere_is_seen(self) -> None:
        other = self.other()
        with in_the_same_tick(self.folder._path):
            other.expunge([1])
        self.assertEqual([m.uid for m in self.folder.sync(fast=True).messages], [2, 3])

    def test_our_own_change_is_looked_at_again(self) -> None:
        self.folder.store_flags([3], "add", ["S"])
        seen = count_listings(self)
        state = self.folder.sync(fast=True)
        self.assertIn("cur", seen, "our renames: cur/ is listed once more")
        self.assertEqual(state.by_uid[3].flags, frozenset("S"))
        del seen[:]
        self.folder.sync(fast=True)
        self.assertEqual(seen, [])


class WithoutAWitness(FastLooks):
    """No witness (no inotify, a file system shared by several hosts): a fast look is a full
    one, and every change is still seen."""

    witness = False

    def test_a_fast_look_lists_nothing_when_nothing_changed(self) -> None:
        seen = count_listings(self)
        self.folder.sync(fast=True)
        self.assertEqual(sorted(seen), ["cur", "new"])

    def test_our_own_change_is_looked_at_again(self) -> None:
        self.folder.store_flags([3], "add", ["S"])
        self.assertEqual(self.folder.sync(fast=True).by_uid[3].flags, frozenset("S"))


class SessionLooks(IMAPTestCase):
    """Through IMAP: SEARCH's look is fast, NOOP's full; both tell another process's change."""

    def setUp(self) -> None:
        super().setUp()
        self.store = MailStore(Path(self.mktemp()), hostname="mail.example.org", dirty_window=YOUNG)
        self.dirs = self.store.settings.witness.dirs = open_witness(self)
        self.factory = self.make_factory()
        for n in range(3):
            self.deliver(message(f"m{n}"))
        self.a = self.login()
        self.a.command("UID SEARCH ALL")  # the look after SELECT's renames: listed, watched
        self.elsewhere = MailStore(self.store.root, hostname="node2.example.org")

    def test_search_lists_nothing_when_nothing_changed_and_noop_looks_in_full(self) -> None:
        seen = count_listings(self)
        self.a.run("""
            C: a1 UID SEARCH ALL
            S: * SEARCH 1 2 3
            S: a1 OK SEARCH completed
        """)
        self.assertEqual(seen, [])
        self.a.run("""
            C: a2 NOOP
            S: a2 OK NOOP completed
        """)
        self.assertEqual(sorted(seen), ["cur", "new"])

    def test_search_tells_another_process_delivery(self) -> None:
        with in_the_same_tick(self.folder()._path):
            self.elsewhere.mailbox(USER).folder().append(message("from node2"))
        self.a.run("""
            C: a1 UID SEARCH ALL
            S: * 4 EXISTS
            S: * 4 RECENT
            S: * SEARCH 1 2 3 4
            S: a1 OK SEARCH completed
        """)

    def test_search_tells_a_file_put_straight_into_new(self) -> None:
        with in_the_same_tick(self.folder()._path):
            (self.folder()._path / "new" / "1700000000.M1P1.elsewhere").write_bytes(message("x"))
        self.a.run("""
            C: a1 SEARCH ALL
            S: * SEARCH 1 2 3
            S: * 4 EXISTS
            S: * 4 RECENT
            S: a1 OK SEARCH completed
        """)

    def test_fetch_tells_another_process_flag_change(self) -> None:
        folder = self.elsewhere.mailbox(USER).folder()
        folder.sync()
        with in_the_same_tick(self.folder()._path):
            folder.store_flags([2], "add", ["F"])
        self.a.run("""
            C: a1 FETCH 1 (UID)
            S: * 1 FETCH (UID 1)
            S: * 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent))
            S: a1 OK FETCH completed
        """)

    def test_noop_tells_another_process_delivery(self) -> None:
        with in_the_same_tick(self.folder()._path):
            self.elsewhere.mailbox(USER).folder().append(message("from node2"))
        self.a.run("""
            C: a1 NOOP
            S: * 4 EXISTS
            S: * 4 RECENT
            S: a1 OK NOOP completed
        """)


class SessionLooksWithoutAWitness(SessionLooks):
    """The same dialogs on a store without a witness (several hosts): SEARCH looks in full."""

    def setUp(self) -> None:
        super().setUp()
        self.store.settings.witness.dirs = None

    def test_search_lists_nothing_when_nothing_changed_and_noop_looks_in_full(self) -> None:
        seen = count_listings(self)
        self.a.command("UID SEARCH ALL")
        self.assertEqual(sorted(seen), ["cur", "new"])


class TheFeedGivesTheWitness(SynchronousTestCase):
    def feed(self, **kwargs: object) -> tuple[MailStore, StoreChanges]:
        store = MailStore(Path(self.mktemp()), hostname="mail.example.org")
        store.mailbox(USER, create=True)
        changes = StoreChanges(store, task.Clock(), **kwargs)  # type: ignore[arg-type]
        changes.startService()
        self.addCleanup(changes.stopService)
        return store, changes

    def test_while_it_runs(self) -> None:
        store, changes = self.feed(witness=True)
        if store.settings.witness.dirs is None:
            skip_or_fail("inotify is not available")
        changes.stopService()
        self.assertIsNone(store.settings.witness.dirs)

    def test_none_on_a_file_system_of_several_hosts(self) -> None:
        self.patch(changes_module, "local_file_system", lambda path: False)
        store, _ = self.feed()
        self.assertIsNone(store.settings.witness.dirs)

    def test_none_without_inotify(self) -> None:
        store, _ = self.feed(use_inotify=False)
        self.assertIsNone(store.settings.witness.dirs)


class AFirstSelectListsOnce(OffThreadCase):
    """A first SELECT with the witness: new/ and cur/ are listed once each on the reactor (the
    full look of its first ``settled()`` round); the round after the worker's write and the
    View's look are fast ones, and still see mail that arrived meanwhile."""

    def setUp(self) -> None:
        super().setUp()
        self.dirs = self.store.settings.witness.dirs = open_witness(self)
        self.seen: list[str] = []
        real = os.listdir
        main = threading.main_thread()

        def listdir(path: str) -> list[str]:
            if threading.current_thread() is main:
                self.seen.append(os.path.basename(path))
            return real(path)

        self.patch(scan.os, "listdir", listdir)

    def select(self) -> Client:
        client = self.connect()
        client.command(f"LOGIN {USER} secret")
        client.send("s1 SELECT INBOX\r\n")
        return client

    def test_first_select(self) -> None:
        for n in range(3):
            self.arrive(f"m{n}")
        client = self.select()
        self.worker.release()
        client.run("""
            S: ...
            S: * 3 EXISTS
            S: * 3 RECENT
            S: ...
            S: s1 OK [READ-WRITE] SELECT completed
        """)
        self.assertEqual(sorted(self.seen), ["cur", "new"])
        self.assertEqual(self.on_reactor, [])

    def test_mail_arriving_during_the_write(self) -> None:
        self.arrive("early")
        client = self.select()
        with in_the_same_tick(self.store.root / "example.org" / "alice"):
            self.arrive("late")  # not in the listing the worker was given
        self.worker.release()
        self.worker.release()  # a second write for it
        client.run("""
            S: ...
            S: * 2 EXISTS
            S: * 2 RECENT
            S: ...
            S: s1 OK [READ-WRITE] SELECT completed
        """)
        self.assertEqual(self.worker.jobs, 2)
