"""The store's change feed (mailhub.store.changes): what it tells, to whom, and when."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.internet import defer, task, threads
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from mailhub.store import MailStore
from mailhub.store import changes as changes_module
from mailhub.store.changes import (
    EXPUNGED,
    FLAGS,
    FOLDER_CREATED,
    FOLDER_DELETED,
    NEW,
    NOTICE_DELAY,
    StoreChange,
    StoreChanges,
)
from tests.support.tools import skip_or_fail

A, B = "a@example.com", "b@example.com"


def kinds(changes: list[StoreChange]) -> list[tuple[str, str, str]]:
    return [(c.kind, c.mailbox, c.folder) for c in changes]


class Told(SynchronousTestCase):
    """With an injected clock and no inotify: the timed scan, subscriptions, touched()."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.store = MailStore(Path(self.mktemp()), "localhost")
        self.changes = StoreChanges(self.store, self.clock, scan_interval=30.0, use_inotify=False)
        self.everything: list[StoreChange] = []
        self.not_everything = self.changes.subscribe(self.everything.extend)

    def deliver(self, address: str = A, folder: str = "INBOX") -> int:
        box = self.store.mailbox(address, create=True)
        return box.folder(folder).append(b"Subject: x\r\n\r\nhi\r\n")

    def told(self) -> list[tuple[str, str, str]]:
        out = kinds(self.everything)
        self.everything.clear()
        return out

    def test_every_kind_of_change(self) -> None:
        uid = self.deliver()
        self.changes.scan()
        self.assertIn((FOLDER_CREATED, A, "INBOX"), self.told())
        inbox = self.store.mailbox(A).folder()
        inbox.add_flags(uid, {"F"})
        self.changes.scan()
        [flags] = self.everything
        self.assertEqual((flags.kind, flags.message and flags.message.flags), (FLAGS, {"F"}))
        self.everything.clear()
        self.deliver()
        inbox.delete(uid)
        self.assertEqual(self.told(), [])  # not looked at yet: nothing told
        self.changes.scan()
        self.assertEqual(sorted(self.told()), [(EXPUNGED, A, "INBOX"), (NEW, A, "INBOX")])
        box = self.store.mailbox(A)
        box.create_folder("Projects")
        self.changes.scan()
        self.assertEqual(self.told(), [(FOLDER_CREATED, A, "Projects")])
        box.folder("Projects").append(b"Subject: p\r\n\r\n")
        box.rename_folder("Projects", "Done")
        self.changes.scan()
        self.assertEqual(
            sorted(self.told()),
            [(FOLDER_CREATED, A, "Done"), (FOLDER_DELETED, A, "Projects"), (NEW, A, "Done")],
        )
        box.delete_folder("Done")
        self.changes.scan()
        self.assertEqual(sorted(self.told()), [(EXPUNGED, A, "Done"), (FOLDER_DELETED, A, "Done")])
        self.assertEqual(self.changes.scan(), [])  # nothing changed: nothing told

    def test_a_folder_subscription_hears_only_its_folder(self) -> None:
        self.deliver(A)
        self.deliver(B)
        self.changes.scan()
        inbox_of_b: list[StoreChange] = []
        unsubscribe = self.changes.subscribe(inbox_of_b.extend, B)
        self.deliver(A)
        self.deliver(B)
        self.store.mailbox(B).create_folder("Other").append(b"Subject: o\r\n\r\n")
        self.changes.scan()
        self.assertEqual(kinds(inbox_of_b), [(NEW, B, "INBOX")])
        unsubscribe()
        self.deliver(B)
        self.changes.scan()
        self.assertEqual(len(inbox_of_b), 1)

    def test_with_only_folder_listeners_only_their_mailboxes_are_looked_at(self) -> None:
        self.not_everything()
        self.deliver(A)
        self.deliver(B)
        inbox_of_a: list[StoreChange] = []
        self.changes.subscribe(inbox_of_a.extend, A)
        self.changes.scan()
        self.assertEqual([k for k in kinds(inbox_of_a) if k[0] == NEW], [(NEW, A, "INBOX")])
        self.assertEqual({address for address, _ in self.changes._watched}, {A})
        self.changes.touched(B)  # nobody listens to B: not even a look
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Somebody listens to everything (the web feed): the next look is at the whole store.
        self.changes.subscribe(self.everything.extend)
        self.changes.catch_up()
        self.assertIn((NEW, B, "INBOX"), self.told())

    def test_the_timed_scan_of_idle_folders_is_spread_over_reactor_turns(self) -> None:
        self.patch(changes_module, "SCAN_BATCH", 2)
        self.not_everything()
        told: list[StoreChange] = []
        users = [f"u{n}@example.com" for n in range(5)]
        for user in users:
            self.store.mailbox(user, create=True)
            self.changes.subscribe(told.extend, user)
        self.changes.startService()  # a first timed pass, then one every 30 s
        self.addCleanup(self.changes.stopService)
        while self.clock.getDelayedCalls() and self.changes._spread is not None:
            self.clock.advance(0)
        looked: list[str] = []
        for user in users:
            folder = self.changes.folder(user, "INBOX")
            sync = folder.sync
            folder.sync = lambda sync=sync, user=user, **kw: looked.append(user) or sync(**kw)  # type: ignore[method-assign]
        for user in users:
            self.deliver(user)
        told.clear()
        self.changes._scan_logged()  # the timer's tick: two folders in this turn ...
        self.assertEqual((len(looked), len(told)), (2, 2))
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)  # (... the rest, the timer)
        self.changes._scan_logged()  # a tick while a pass goes on: skipped
        self.assertEqual(len(looked), 2)
        self.clock.advance(0)  # ... the rest on the next turns (task.Clock runs them all)
        self.assertEqual(sorted(looked), sorted(users))
        self.assertEqual(sorted(c.mailbox for c in told if c.kind == NEW), sorted(users))

    def test_while_inotify_is_trusted_each_tick_looks_at_a_share_of_the_folders(self) -> None:
        self.patch(changes_module, "SCAN_BATCH", 2)
        self.not_everything()
        users = [f"u{n}@example.com" for n in range(25)]
        for user in users:
            self.store.mailbox(user, create=True)
            self.changes.subscribe(lambda changes: None, user)
        self.changes.trusted_rounds = 5
        self.changes.startService()  # the first look: every folder
        self.addCleanup(self.changes.stopService)
        self.clock.advance(0)
        looked: list[str] = []
        for user in users:
            folder = self.changes.folder(user, "INBOX")
            sync = folder.sync
            folder.sync = lambda sync=sync, user=user, **kw: looked.append(user) or sync(**kw)  # type: ignore[method-assign]

        class Trusted:  # inotify running, nothing lost: its watches are this host's news
            def watch(self, *args: object, **kwargs: object) -> None:
                pass

            def loseConnection(self) -> None:
                pass

        self.changes._notifier = Trusted()
        for _ in range(5):
            self.changes._scan_logged()
            self.clock.advance(0)
            self.assertEqual(len(looked) % 5, 0)
        self.assertEqual(sorted(looked), sorted(users))  # each once in five ticks
        self.changes._notifier = None  # without inotify: every folder each tick
        looked.clear()
        self.changes._scan_logged()
        self.clock.advance(0)
        self.assertEqual(sorted(looked), sorted(users))

    def test_with_only_folder_listeners_the_timed_scan_looks_only_at_their_folders(self) -> None:
        self.not_everything()
        self.store.mailbox(A, create=True)  # with Archive (every mailbox has it)
        inbox: list[StoreChange] = []
        self.changes.subscribe(inbox.extend, A)
        self.changes.scan()  # the first look: the mailbox, for the folder idled in
        # Not the other folders: no inotify watches and no Folder kept for them
        self.assertEqual(list(self.changes._watched), [(A, "INBOX")])
        looked: list[str] = []
        for name in ("INBOX", "Archive"):
            folder = self.changes.folder(A, name)
            sync = folder.sync
            folder.sync = lambda sync=sync, name=name, **kw: looked.append(name) or sync(**kw)  # type: ignore[method-assign]
        self.deliver(A)
        self.changes.scan()
        self.assertEqual((looked, kinds(inbox)[-1:]), (["INBOX"], [(NEW, A, "INBOX")]))
        archive: list[StoreChange] = []
        self.changes.subscribe(archive.extend, A, "Archive")  # somebody idles there too now
        self.deliver(A, "Archive")
        self.changes.scan()  # Archive is new to the feed: its mailbox is looked at once
        self.assertEqual(kinds(archive), [(FOLDER_CREATED, A, "Archive"), (NEW, A, "Archive")])
        looked.clear()
        self.deliver(A, "Archive")
        self.changes.scan()
        self.assertEqual(sorted(looked), ["Archive", "INBOX"])
        self.assertEqual(kinds(archive)[-1], (NEW, A, "Archive"))

    def test_a_folder_nobody_idled_in_is_looked_at_as_soon_as_somebody_does(self) -> None:
        self.not_everything()
        self.store.mailbox(A, create=True)
        self.changes.subscribe(lambda changes: None, A)
        self.changes.startService()
        self.addCleanup(self.changes.stopService)
        self.clock.advance(0)
        self.deliver(A, "Archive")  # not watched: nobody idles there
        archive: list[StoreChange] = []
        self.changes.subscribe(archive.extend, A, "Archive")
        self.clock.advance(0)  # the next turn, not the timed scan 30 s away
        self.assertEqual(kinds(archive), [(FOLDER_CREATED, A, "Archive"), (NEW, A, "Archive")])

    def test_the_timed_scan_runs_on_the_injected_clock_and_only_while_somebody_listens(
        self,
    ) -> None:
        self.changes.startService()
        self.addCleanup(self.changes.stopService)
        self.assertEqual(self.changes.scans, 1)  # at start
        self.deliver()
        self.clock.advance(29.0)
        self.assertEqual(self.told(), [])
        self.clock.advance(1.0)
        self.assertIn((NEW, A, "INBOX"), self.told())
        self.assertEqual(self.changes.scans, 2)
        self.not_everything()  # nobody listens any more
        self.clock.advance(30.0)
        self.assertEqual(self.changes.scans, 2)

    def test_touched_tells_folder_listeners_on_the_next_turn_without_a_whole_scan(
        self,
    ) -> None:
        self.not_everything()
        self.store.mailbox(B, create=True)
        inbox_of_b: list[StoreChange] = []
        self.changes.subscribe(inbox_of_b.extend, B)
        self.changes.startService()
        self.addCleanup(self.changes.stopService)
        self.clock.advance(0)  # the first look since somebody listens
        scans = self.changes.scans
        inbox_of_b.clear()
        self.deliver(B)
        self.changes.touched(B)
        self.assertEqual(inbox_of_b, [])  # not inside the delivery's own call chain
        self.clock.advance(0)
        self.assertEqual(kinds(inbox_of_b), [(NEW, B, "INBOX")])
        self.assertEqual(self.changes.scans, scans)
        # A flood of deliveries: at most one look per NOTICE_DELAY, each seeing all before it.
        inbox_of_b.clear()
        self.deliver(B)
        self.changes.touched(B)
        self.clock.advance(NOTICE_DELAY / 2)
        self.deliver(B)
        self.changes.touched(B)
        self.assertEqual(inbox_of_b, [])
        self.clock.advance(NOTICE_DELAY / 2)
        self.assertEqual(kinds(inbox_of_b), [(NEW, B, "INBOX")] * 2)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # only the timed scan

    def test_touched_does_nothing_for_store_wide_listeners(self) -> None:
        self.changes.startService()  # self.everything listens to the whole store
        self.addCleanup(self.changes.stopService)
        self.deliver(B)
        self.changes.touched(B)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # only the timed scan

    def test_a_failing_listener_does_not_stop_the_others(self) -> None:
        def broken(changes: list[StoreChange]) -> None:
            raise RuntimeError("listener bug")

        self.not_everything()
        self.changes.subscribe(broken)
        self.changes.subscribe(self.everything.extend)
        self.deliver()
        self.changes.scan()
        self.assertIn((NEW, A, "INBOX"), self.told())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def next_turn(self) -> None:
        """One reactor turn: the calls due now, not those they schedule (Clock.advance(0) would
        run those too; the reactor runs them on its next turn, after I/O)."""
        due = [c for c in self.clock.getDelayedCalls() if c.getTime() <= self.clock.seconds()]
        for call in due:
            self.clock.calls.remove(call)
            call.func(*call.args, **call.kw)

    def test_a_big_fan_out_is_spread_over_reactor_turns(self) -> None:
        from mailhub.store import changes as module

        self.patch(module, "FANOUT_BATCH", 3)
        self.deliver(A)
        self.deliver(B)
        self.changes.scan()
        woken: list[int] = []
        unsubscribe = []
        for n in range(8):
            unsubscribe.append(self.changes.subscribe(lambda c, n=n: woken.append(n), A))
        of_b: list[StoreChange] = []
        self.changes.subscribe(of_b.extend, B)
        self.deliver(A)
        self.changes.scan()
        self.assertEqual(kinds(self.everything)[-1], (NEW, A, "INBOX"))  # store-wide: at once
        self.assertEqual(woken, [0, 1, 2])  # the first batch in the same call
        unsubscribe[4]()  # gone before its turn: not told
        self.next_turn()
        self.assertEqual(woken, [0, 1, 2, 3, 5])
        self.next_turn()
        self.assertEqual(woken, [0, 1, 2, 3, 5, 6, 7])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(of_b, [])  # another mailbox's listener is not called at all
        self.assertEqual(self.changes.listener_count(), 1 + 7 + 1)


# Written by another process: what a separate SMTP delivery or another mailhub worker does.
_DELIVER = """
import os, sys
new, name = sys.argv[1], sys.argv[2]
tmp = os.path.join(os.path.dirname(new), "tmp", name)
with open(tmp, "wb") as f:
    f.write(b"Subject: from elsewhere\\r\\n\\r\\nhi\\r\\n")
os.link(tmp, os.path.join(new, name))
os.unlink(tmp)
"""


class Inotify(TestCase):
    """With real inotify, a file another process or thread puts into new/ is told without any
    timed scan (the scan interval is an hour) and without anybody calling catch_up."""

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.store = MailStore(Path(self.mktemp()), "localhost")
        self.store.mailbox(A, create=True).folder().sync()
        self.changes = StoreChanges(self.store, reactor, scan_interval=3600.0)  # type: ignore[arg-type]
        self.changes.startService()
        self.addCleanup(self.changes.stopService)
        if self.changes._notifier is None:
            skip_or_fail("no inotify here: the feed falls back to timed scans")
        self.new = self.store.root / "example.com" / "a" / "new"

    def next_new(self, address: str = A, folder: str = "INBOX") -> defer.Deferred[StoreChange]:
        d: defer.Deferred[StoreChange] = defer.Deferred()

        def told(changes: list[StoreChange]) -> None:
            for c in changes:
                if c.kind == NEW and not d.called:
                    unsubscribe()
                    d.callback(c)

        unsubscribe = self.changes.subscribe(told, address, folder)
        return d

    async def test_a_delivery_by_another_process_is_told(self) -> None:
        await self.changes_settled()
        scans = self.changes.scans
        told = self.next_new()
        name = "1800000000.M1P99999Q1.elsewhere,S=36"
        subprocess.run([sys.executable, "-c", _DELIVER, str(self.new), name], check=True)
        change = await told
        self.assertEqual((change.mailbox, change.message and change.message.key), (A, name))
        self.assertEqual(self.changes.scans, scans)

    async def test_a_delivery_by_another_thread_is_told(self) -> None:
        await self.changes_settled()
        told = self.next_new()
        inbox = self.store.mailbox(A).folder()
        await threads.deferToThread(
            (self.new / "1800000000.M2P1Q1.thread,S=9").write_bytes, b"x: y\r\n\r\n"
        )
        change = await told
        self.assertEqual(change.folder, "INBOX")
        self.assertEqual(inbox.sync().count, 1)

    async def test_a_new_mailbox_and_folder_are_told(self) -> None:
        await self.changes_settled()
        told = self.next_new(B, "Lists")
        box = await threads.deferToThread(self.store.mailbox, B, True)
        await threads.deferToThread(
            lambda: box.create_folder("Lists").append(b"Subject: l\r\n\r\n")
        )
        change = await told
        self.assertEqual((change.mailbox, change.folder), (B, "Lists"))

    async def test_a_keyword_only_change_by_another_thread_is_told(self) -> None:
        # A keyword STORE renames nothing: it touches cur/'s mtime (IN_ATTRIB), not its entries.
        uid = self.store.mailbox(A).folder().append(b"Subject: k\r\n\r\nhi\r\n")
        await self.changes_settled()
        scans = self.changes.scans
        d: defer.Deferred[StoreChange] = defer.Deferred()

        def told(changes: list[StoreChange]) -> None:
            for c in changes:
                if c.kind == FLAGS and c.message and c.message.keywords and not d.called:
                    d.callback(c)

        self.addCleanup(self.changes.subscribe(told, A, "INBOX"))
        other = MailStore(self.store.root, "localhost").mailbox(A).folder()  # as another process
        await threads.deferToThread(other.store_flags, [uid], "add", keywords=["billing"])
        change = await d
        self.assertEqual(change.message and change.message.keywords, {"billing"})
        self.assertEqual(self.changes.scans, scans)  # inotify, not a timed scan

    def test_an_overflowed_queue_makes_the_next_look_a_whole_scan(self) -> None:
        # Events were lost (the reactor did not read for long): Twisted's INotify drops the
        # overflow event itself (watch descriptor -1), so the feed looks for it in the reads.
        try:
            limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
        except (OSError, ValueError):
            limit = 1 << 30
        if limit > 100_000:
            raise SkipTest(f"max_queued_events is {limit}: too many events to queue")
        self.addCleanup(self.changes.subscribe(lambda changes: None, A))
        self.changes.catch_up()  # looked at, and watched from now on
        self.assertFalse(self.changes._dirty_all)
        a, b = self.new / "a", self.new / "b"
        a.write_bytes(b"x")
        for _ in range(limit // 2 + 10):  # two events a rename, none read: the queue overflows
            os.rename(a, b)
            a, b = b, a
        self.changes._read_events()
        self.assertTrue(self.changes._dirty_all)

    def test_a_folder_nobody_here_listens_to_any_more_is_not_looked_at(self) -> None:
        # Its IDLE session ended; another worker goes on delivering into it: inotify still
        # reports each delivery, but nobody in this process wants to hear of it, so no look
        # (listing new/ and cur/, assigning UIDs: the other worker's deliveries cost this
        # process nothing).
        unsubscribe = self.changes.subscribe(lambda changes: None, A)
        self.changes.catch_up()  # looked at, and watched from now on
        folder = self.changes._watched[(A, "INBOX")].folder
        looks: list[object] = []
        sync = folder.sync
        self.patch(folder, "sync", lambda *a, **kw: looks.append(a) or sync(*a, **kw))

        def deliver(n: int) -> None:  # as another process does (synchronously: the event is
            name = f"1800000000.M{n}P99999Q1.elsewhere,S=36"  # queued when link() returns)
            subprocess.run([sys.executable, "-c", _DELIVER, str(self.new), name], check=True)

        deliver(1)
        self.changes.catch_up()
        self.assertEqual(len(looks), 1)  # listened to: looked at
        unsubscribe()
        deliver(2)
        deliver(3)
        self.assertEqual(self.changes.catch_up(), [])
        self.assertEqual(len(looks), 1)
        # Somebody listens again: the folder is looked at again, the new mail told.
        told: list[StoreChange] = []
        self.changes.subscribe(told.extend, A)
        deliver(4)
        self.changes.catch_up()
        self.assertEqual(len(looks), 2)
        self.assertEqual(kinds(told), [(NEW, A, "INBOX")] * 3)

    def changes_settled(self) -> defer.Deferred[None]:
        """The first look (on subscribing: the tree is watched from then on) has run."""
        self.changes.subscribe(lambda changes: None)
        self.changes.catch_up()
        return defer.succeed(None)
