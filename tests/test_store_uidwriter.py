"""UID-list writes in a worker thread (mailhub.store.uidwriter): the reactor's looks - the
change feed, IDLE, SELECT - never fsync the list nor take the folder's lock; new mail is told
only once its UID is on disk; one write serves every look made while it runs.

The "reactor thread" here is the test's thread; the store's worker is a real thread whose
result comes back through the test's clock (as the GroupCommitter's callFromThread does).
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from mailhub.imap import message_commands
from mailhub.safeio import fsync_dir, write_new_file
from mailhub.store import core as store_core
from mailhub.store import dotlock, names, uidlist, uidwriter
from mailhub.store.changes import StoreChanges
from mailhub.store.dotlock import DotLock
from mailhub.store.errors import LockBusy
from mailhub.store.placement import Placer
from mailhub.store.scan import create_maildir
from tests.support.imap import USER, IMAPTestCase, message


class ThreadWorker:
    """``Offload.run``: the jobs wait until ``release()`` runs each in a thread of its own
    and fires its Deferred back on the test's thread (the reactor), as callFromThread does."""

    def __init__(self) -> None:
        self.jobs = 0
        self.queued: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.jobs += 1
        d: Deferred[Any] = Deferred()
        self.queued.append((f, args, d))
        return d

    def release(self) -> None:
        queued, self.queued = self.queued, []
        for f, args, d in queued:
            box: list[Any] = []

            def work(
                f: Callable[..., Any] = f, args: tuple[Any, ...] = args, box: list[Any] = box
            ) -> None:
                try:
                    box.append(f(*args))
                except BaseException:
                    box.append(Failure())

            t = threading.Thread(target=work)
            t.start()
            t.join()
            if isinstance(box[0], Failure):
                d.errback(box[0])
            else:
                d.callback(box[0])


class OffThreadCase(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.store.mailbox(USER, create=True)  # its making is LOGIN's business, not this
        self.worker = ThreadWorker()
        self.store.settings.offload.run = self.worker
        self.changes = StoreChanges(self.store, self.clock, scan_interval=300.0, use_inotify=False)
        self.factory = self.make_factory(changes=self.changes)
        self.changes.startService()
        self.addCleanup(self.changes.stopService)
        # What the reactor thread did: fsyncs, UID-list writes, dotlocks taken.
        self.on_reactor: list[str] = []
        self.off_reactor: list[str] = []
        main = threading.main_thread()

        def note(what: str) -> None:
            mine = threading.current_thread() is main
            (self.on_reactor if mine else self.off_reactor).append(what)

        real_fsync, real_save, real_acquire = os.fsync, uidlist.save, DotLock.acquire

        def fsync(fd: int) -> None:
            note("fsync")
            real_fsync(fd)

        def save(*args: Any, **kw: Any) -> None:
            note("uidlist.save")
            real_save(*args, **kw)

        def acquire(lock: DotLock) -> Any:
            note("dotlock")
            return real_acquire(lock)

        self.patch(os, "fsync", fsync)
        self.patch(uidlist, "save", save)
        self.patch(DotLock, "acquire", acquire)

    def arrive(self, subject: str, folder: str = "", sized: bool = False) -> None:
        """A delivery by another thread or process: a durable file in new/, no UID.
        ``sized``: its name says its size (",S=", as SMTP delivery names them)."""
        root = self.store.root / "example.org" / "alice"
        path = root / folder if folder else root
        base = names.unique_name("mail.example.org")
        if sized:
            base = names.with_size(base, len(message(subject)))

        def deliver() -> None:
            write_new_file(path / "tmp" / base, message(subject))
            os.link(path / "tmp" / base, path / "new" / base)
            os.unlink(path / "tmp" / base)
            fsync_dir(path / "new")

        t = threading.Thread(target=deliver)
        t.start()
        t.join()

    def list_uids(self) -> list[int]:
        lst = uidlist.load(Path(self.store.root / "example.org/alice" / uidlist.FILENAME))
        assert lst is not None
        return sorted(r.uid for r in lst.records.values())


class TheReactorNeverWritesTheList(OffThreadCase):
    def test_delivery_idle_push_and_select(self) -> None:
        client = self.connect()
        client.command(f"LOGIN {USER} secret")
        client.send("s1 SELECT INBOX\r\n")
        self.assertEqual(client.lines(), [])  # waits for the empty folder's first list
        self.worker.release()
        client.run("""
            S: ...
            S: * 0 EXISTS
            S: ...
            S: s1 OK [READ-WRITE] SELECT completed
            C: i1 IDLE
            S: + idling
        """)
        self.clock.advance(0)  # the feed's first look
        self.arrive("one")
        self.changes.touched(USER)
        self.clock.advance(0)  # the feed looks: a job for the worker, nothing told yet
        self.assertEqual(client.lines(), [])
        self.assertEqual(self.list_uids(), [])
        self.worker.release()
        self.clock.advance(0)  # the worker is done: the feed looks again and tells
        client.run("""
            S: * 1 EXISTS
            S: * 1 RECENT
            C: DONE
            S: i1 OK IDLE terminated
        """)
        self.assertEqual(self.list_uids(), [1])  # on disk before it was told
        other = self.connect()
        other.command(f"LOGIN {USER} secret")
        self.arrive("two")
        other.send("s2 SELECT INBOX\r\n")
        self.assertEqual(other.lines(), [])  # waits for the worker
        self.worker.release()
        other.run("""
            S: ...
            S: * 2 EXISTS
            S: * 1 RECENT
            S: ...
            S: * OK [UIDNEXT 3] Predicted next UID
            S: ...
            S: s2 OK [READ-WRITE] SELECT completed
        """)
        self.assertEqual(self.list_uids(), [1, 2])
        self.assertEqual(self.on_reactor, [])
        self.assertIn("uidlist.save", self.off_reactor)
        self.assertIn("dotlock", self.off_reactor)

    def test_looks_while_a_write_runs_share_it(self) -> None:
        folder = self.folder()
        folder.sync()  # a list to start from
        del self.on_reactor[:]
        listeners = [self.store.mailbox(USER).folder("INBOX") for _ in range(3)]
        self.assertTrue(all(f is folder for f in listeners))
        for n in range(3):
            self.arrive(f"m{n}")
        before = self.worker.jobs
        for _ in range(5):  # five looks (sessions, the feed) before the worker is back
            self.assertEqual(folder.sync(assign=False).count, 0)
        self.assertEqual(self.worker.jobs - before, 1)
        written = folder.written()
        assert written is not None
        self.worker.release()
        self.assertTrue(written.called)
        self.assertEqual([m.uid for m in folder.sync(assign=False).messages], [1, 2, 3])
        self.assertEqual(self.worker.jobs - before, 1)
        self.assertEqual(self.on_reactor, [])

    def test_a_look_that_assigns_still_sees_mail_the_worker_has_not_done(self) -> None:
        # Commands other than IDLE/SELECT still sync as ever (inline): they must not be told
        # the state a reactor-side look left waiting for the worker.
        folder = self.folder()
        folder.sync()
        self.arrive("late")
        self.assertEqual(folder.sync(assign=False).count, 0)
        self.assertEqual(folder.sync().count, 1)

    def test_catch_up_for_the_web_api_still_sees_mail_delivered_before_it(self) -> None:
        # The web API's catch_up() promises every message whose 250 came before it: it
        # assigns inline; the feed's own looks for IDLE sessions leave it to the worker.
        self.folder().sync()
        told: list[Any] = []
        self.changes.subscribe(told.extend, USER)  # (an IDLE session's subscription)
        self.clock.advance(0)
        self.arrive("one")
        self.changes.notice_soon(0)  # inotify's look
        self.clock.advance(0)
        self.assertEqual([c.kind for c in told if c.kind == "new"], [])
        self.changes.catch_up()
        self.assertEqual([c.message.uid for c in told if c.kind == "new"], [1])

    def test_with_a_store_wide_listener_the_feed_assigns_as_ever(self) -> None:
        # The web feed's listeners are told of a delivery as soon as the feed looks, as the
        # web API's lists and waits expect.
        self.folder().sync()
        told: list[Any] = []
        self.changes.subscribe(told.extend)
        self.clock.advance(0)
        self.arrive("one")
        self.changes.notice_soon(0)
        self.clock.advance(0)
        self.assertEqual([c.message.uid for c in told if c.kind == "new"], [1])
        self.assertEqual(self.worker.queued, [])

    def test_uids_agree_with_another_process_writing_inline(self) -> None:
        from mailhub.store import MailStore

        other = MailStore(self.store.root, hostname="mail.example.org").mailbox(USER)
        theirs = other.folder("INBOX")
        mine = self.folder()
        mine.sync()
        self.arrive("a")
        self.assertEqual(mine.sync(assign=False).count, 0)
        self.arrive("b")
        self.assertEqual(len(theirs.sync().messages), 2)  # the other process, first
        self.worker.release()  # (finds both done)
        self.arrive("c")
        mine.sync(assign=False)
        self.worker.release()
        got = [(m.uid, m.key) for m in mine.sync(assign=False).messages]
        self.assertEqual(got, [(m.uid, m.key) for m in theirs.sync().messages])
        self.assertEqual([uid for uid, _ in got], [1, 2, 3])
        self.assertEqual(self.list_uids(), [1, 2, 3])

    def test_mail_waiting_when_idle_starts_is_told_after_the_worker(self) -> None:
        client = self.connect()
        client.command(f"LOGIN {USER} secret")
        client.send("s1 SELECT INBOX\r\n")
        self.worker.release()
        client.lines()
        self.arrive("before idle")
        client.run("""
            C: i1 IDLE
            S: + idling
        """)
        self.clock.advance(0)  # the feed's first look
        self.assertEqual(client.lines(), [])
        self.worker.release()
        self.clock.advance(0)
        client.run("""
            S: * 1 EXISTS
            S: * 1 RECENT
        """)
        self.assertEqual(self.on_reactor, [])


class AFirstSelectLooksOnce(OffThreadCase):
    """The worker writes the list from the scans SELECT handed it: back on the reactor they
    are neither parsed nor compared with the list again (a first SELECT of 10,000 did both
    twice more); mail arriving during the write still makes them disagree."""

    def setUp(self) -> None:
        super().setUp()
        from mailhub.store import sync

        self.parsed: list[int] = []
        self.compared = 0
        real_parse, real_compare = names.files_by_base, sync.differences
        main = threading.main_thread()

        def parse(listing: list[str]) -> dict[str, str]:
            if threading.current_thread() is main:
                self.parsed.append(len(listing))
            return real_parse(listing)

        def compare(*args: Any) -> Any:
            if threading.current_thread() is main:
                self.compared += 1
            return real_compare(*args)

        self.patch(names, "files_by_base", parse)
        self.patch(sync, "differences", compare)

    def test_first_select(self) -> None:
        for n in range(3):
            self.arrive(f"m{n}")
        client = self.connect()
        client.command(f"LOGIN {USER} secret")
        client.send("s1 SELECT INBOX\r\n")
        self.assertEqual(client.lines(), [])
        self.worker.release()
        client.run("""
            S: ...
            S: * 3 EXISTS
            S: * 3 RECENT
            S: ...
            S: * OK [UIDNEXT 4] Predicted next UID
            S: ...
            S: s1 OK [READ-WRITE] SELECT completed
        """)
        self.assertEqual(self.worker.jobs, 1)
        self.assertEqual(self.parsed, [3, 0])  # new/, cur/: once each
        self.assertEqual(self.compared, 0)
        self.assertEqual(self.list_uids(), [1, 2, 3])
        self.assertEqual(self.on_reactor, [])

    def test_the_state_is_built_from_the_first_lists_columns(self) -> None:
        # Names that say their time and size (as delivery names them): the worker makes the
        # list from columns, and the state is built from those (sync._build_from_columns),
        # equal to one built from the records of that list read back from the file.
        from mailhub.store import MailStore, sync

        built: list[bool] = []
        real = sync.Syncer._build_from_columns

        def from_columns(*args: Any) -> bool:
            built.append(real(*args))
            return built[-1]

        self.patch(sync.Syncer, "_build_from_columns", from_columns)
        root = self.store.root / "example.org" / "alice"
        for n in range(6):
            self.arrive(f"m{n}", sized=True)
        # Three read elsewhere (in cur/, with flags) before the first SELECT.
        for base, info in zip(sorted(os.listdir(root / "new"))[::2], ["S", "", "FS"], strict=True):
            os.rename(root / "new" / base, root / "cur" / f"{base}:2,{info}")
        client = self.connect()
        client.command(f"LOGIN {USER} secret")
        client.send("s1 SELECT INBOX\r\n")
        self.worker.release()
        client.run("""
            S: ...
            S: * 6 EXISTS
            S: * 3 RECENT
            S: ...
            S: s1 OK [READ-WRITE] SELECT completed
        """)
        self.assertEqual(built, [True])
        state = self.store.mailbox(USER).folder().current_state()
        assert state is not None
        again = MailStore(self.store.root, hostname="mail.example.org")
        self.assertEqual(again.mailbox(USER).folder().sync(), state)
        self.assertEqual(
            sorted("".join(sorted(m.flags)) for m in state.messages), ["", "", "", "", "FS", "S"]
        )
        self.assertEqual(self.list_uids(), [1, 2, 3, 4, 5, 6])
        self.assertEqual(self.on_reactor, [])

    def test_mail_arriving_during_the_write(self) -> None:
        self.arrive("early")
        client = self.connect()
        client.command(f"LOGIN {USER} secret")
        client.send("s1 SELECT INBOX\r\n")
        self.arrive("late")  # not in the listing the worker was given
        self.worker.release()
        self.assertEqual(client.lines(), [])  # a second write for it
        self.assertEqual(self.worker.jobs, 2)
        self.worker.release()
        client.run("""
            S: ...
            S: * 2 EXISTS
            S: * 2 RECENT
            S: ...
            S: * OK [UIDNEXT 3] Predicted next UID
            S: ...
            S: s1 OK [READ-WRITE] SELECT completed
        """)
        self.assertEqual(self.list_uids(), [1, 2])
        self.assertEqual(self.on_reactor, [])


def in_a_thread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """A factory's ``run``: ``f`` in a thread of its own, its result at once."""
    worker = ThreadWorker()
    d = worker(f, *args)
    worker.release()
    return d


class TheWorkersWritePausesTheCollector(OffThreadCase):
    """The worker assigns and writes with the cyclic collector off (a first list of 10,000
    makes 20,000 records and lines' tuples: two dozen young collections otherwise), only
    once it holds the lock, and leaves it on."""

    def test_paused_while_the_list_is_made(self) -> None:
        from mailhub.store.uidindex import UidIndex

        seen: list[bool] = []
        real = UidIndex.update_locked

        def update_locked(index: UidIndex, *args: Any) -> Any:
            if threading.current_thread() is not threading.main_thread():
                seen.append(gc.isenabled())
            return real(index, *args)

        self.patch(UidIndex, "update_locked", update_locked)
        self.arrive("m0")
        client = self.connect()
        client.command(f"LOGIN {USER} secret")
        client.send("s1 SELECT INBOX\r\n")
        self.assertTrue(gc.isenabled())
        self.worker.release()
        client.run("""
            S: ...
            S: * 1 EXISTS
            S: ...
            S: s1 OK [READ-WRITE] SELECT completed
        """)
        self.assertEqual(seen, [False])
        self.assertTrue(gc.isenabled())


class FirstLoginMakesFoldersInAWorker(OffThreadCase):
    def test_folders_of_a_mailbox_made_by_delivery(self) -> None:
        # Delivery made INBOX alone (it must stay light); LOGIN adds the special-use folders.
        bob = "bob@example.org"
        path = self.store.root / "example.org" / "bob"
        self.on_reactor.clear()
        self.factory = self.make_factory(changes=self.changes, run=in_a_thread)
        path.parent.mkdir(exist_ok=True)
        in_a_thread(lambda: create_maildir(path, folder=False))
        client = self.connect()
        client.command(f"LOGIN {bob} secret")
        self.assertEqual(self.store.mailbox(bob).missing_special_folders(), [])
        self.assertIn("Sent", self.store.mailbox(bob).subscriptions())
        self.assertEqual(self.on_reactor, [])
        self.assertIn("fsync", self.off_reactor)
        again = self.connect()  # a second login finds everything made: no worker
        self.factory.run = lambda *a: self.fail("no work for a worker")  # type: ignore[assignment]
        again.command(f"LOGIN {bob} secret")


class AWorkerThatRefuses(OffThreadCase):
    def test_select_is_not_left_waiting(self) -> None:
        # The GroupCommitter refuses at once while it is stopped (shutdown): SELECT answers.
        from twisted.internet.defer import fail

        self.store.settings.offload.run = lambda f, *a: fail(RuntimeError("stopped"))
        client = self.connect()
        client.command(f"LOGIN {USER} secret")
        client.send("s1 SELECT INBOX\r\n")
        for _ in range(120):  # tried again on the clock, as for a busy lock, then given up
            self.clock.advance(0.1)
        self.assertEqual(client.lines(), ["s1 NO [UNAVAILABLE] Mailbox is busy, try again later"])
        self.flushLoggedErrors(RuntimeError)


class ExpungedMeanwhile(OffThreadCase):
    def test_a_message_expunged_by_another_process_gets_no_uid(self) -> None:
        # The worker's listing is the reactor's, taken before the lock: another process may
        # give a new message its UID and expunge it meanwhile. The worker must not give
        # the file that is gone a second UID (a message told that was never there).
        from mailhub.store import MailStore

        other = MailStore(self.store.root, hostname="mail.example.org").mailbox(USER)
        theirs = other.folder("INBOX")
        mine = self.folder()
        mine.sync()
        self.arrive("a", sized=True)
        self.assertEqual(mine.sync(assign=False).count, 0)  # a job, listing "a"
        [gone] = [m.uid for m in theirs.sync().messages]
        theirs.expunge([gone])  # (a flag first would do: \\Deleted is only a letter)
        self.assertEqual(theirs.sync().count, 0)
        self.worker.release()
        self.assertEqual(self.list_uids(), [])
        self.assertEqual([m.uid for m in mine.sync(assign=False).messages], [])
        self.assertEqual(theirs.sync().uidnext, 2)


class SessionsCase(OffThreadCase):
    """IMAP sessions on INBOX with ``count`` messages, the store's writes in ``self.worker``;
    the test's thread is the reactor's (trial's reactor does not mark it as such)."""

    def setUp(self) -> None:
        super().setUp()
        main = threading.main_thread()
        self.patch(store_core, "on_reactor_thread", lambda: threading.current_thread() is main)

    def fill(self, count: int) -> None:
        folder = self.folder()
        for n in range(count):
            folder.append(message(f"m{n}"))

    def selected(self) -> Any:
        client = self.connect()
        client.command(f"LOGIN {USER} secret")
        client.send("s SELECT INBOX\r\n")
        self.worker.release()
        self.clock.advance(0)
        self.assertEqual(client.lines()[-1], "s OK [READ-WRITE] SELECT completed")
        return client


class CommandsWriteInTheWorker(SessionsCase):
    """STORE, EXPUNGE, APPEND, COPY and MOVE change the folder on the reactor under its lock,
    and hand the list's write (and the directories' fsyncs) to the worker with the lock
    (``uidwriter.Flush``): no fsync on the reactor, the answer only once it is on disk, and
    no other session told of the change before that."""

    def setUp(self) -> None:
        super().setUp()
        self.fill(3)
        self.a = self.selected()
        self.b = self.selected()
        del self.on_reactor[:], self.off_reactor[:]

    def on_disk(self) -> dict[int, tuple[str, int]]:
        """UID -> (flag letters, mod-sequence) in the list file."""
        lst = uidlist.load(Path(self.store.root / "example.org/alice" / uidlist.FILENAME))
        assert lst is not None
        return {r.uid: ("".join(sorted(r.flags or "")), r.modseq) for r in lst.records.values()}

    def test_store_is_answered_and_told_after_the_write(self) -> None:
        before = self.on_disk()
        self.a.send("a1 STORE 2 +FLAGS (\\Flagged)\r\n")
        self.b.send("b1 NOOP\r\n")
        self.assertEqual(self.a.lines(), [])  # not on disk yet: nothing said
        # nor to another session (answered from the list on disk: test_imap_looks_during_write)
        self.assertEqual(self.b.lines(), ["b1 OK NOOP completed"])
        self.assertEqual(self.on_disk(), before)
        self.assertEqual(self.worker.jobs and len(self.worker.queued), 1)
        self.worker.release()
        self.clock.advance(0)
        self.assertEqual(self.on_disk()[2][0], "F")
        self.assertEqual(
            self.a.lines(), ["* 2 FETCH (FLAGS (\\Flagged \\Recent))", "a1 OK STORE completed"]
        )
        self.b.send("b2 NOOP\r\n")
        self.assertEqual(
            self.b.lines(), ["* 2 FETCH (UID 2 FLAGS (\\Flagged))", "b2 OK NOOP completed"]
        )
        self.assertNotIn("fsync", self.on_reactor)
        self.assertIn("fsync", self.off_reactor)

    def test_changes_while_a_write_runs_are_written_together_after_it(self) -> None:
        c = self.selected()
        jobs = self.worker.jobs
        self.a.send("a1 STORE 1 +FLAGS (\\Seen)\r\n")
        self.b.send("b1 STORE 3 +FLAGS (\\Answered)\r\n")
        c.send("c1 STORE 2 +FLAGS (\\Draft)\r\n")
        # b and c changed the folder under our lock, still held by a's write: they join
        # the next write, started once a's is done
        self.assertEqual(len(self.worker.queued), 1)
        self.worker.release()
        self.clock.advance(0)
        self.assertEqual(len(self.worker.queued), 1)
        self.assertEqual(self.b.lines() + c.lines(), [])  # not on disk yet
        self.assertEqual(self.on_disk()[1][0], "S")
        self.assertEqual((self.on_disk()[2][0], self.on_disk()[3][0]), ("", ""))
        self.worker.release()
        self.clock.advance(0)
        self.assertEqual(self.worker.jobs - jobs, 2)  # three STOREs, two writes
        disk = self.on_disk()
        self.assertEqual((disk[1][0], disk[2][0], disk[3][0]), ("S", "D", "R"))
        self.assertGreater(disk[3][1], disk[1][1])  # one mod-sequence each, in order
        self.assertGreater(disk[2][1], disk[3][1])
        self.assertEqual(self.a.lines()[-1], "a1 OK STORE completed")
        self.assertEqual(self.b.lines()[-1], "b1 OK STORE completed")
        self.assertEqual(c.lines()[-1], "c1 OK STORE completed")
        self.assertNotIn("fsync", self.on_reactor)
        # the lock is released when no write follows
        self.assertFalse((self.store.root / "example.org/alice" / uidlist.LOCKNAME).exists())

    def test_expunge(self) -> None:
        self.a.send("a1 STORE 1 +FLAGS.SILENT (\\Deleted)\r\n")
        self.worker.release()
        self.clock.advance(0)
        self.a.lines()
        del self.on_reactor[:]
        self.a.send("a2 EXPUNGE\r\n")
        self.assertEqual(self.a.lines(), [])
        self.assertEqual(sorted(self.on_disk()), [1, 2, 3])
        self.worker.release()
        self.clock.advance(0)
        self.assertEqual(self.a.lines(), ["* 1 EXPUNGE", "a2 OK EXPUNGE completed"])
        self.assertEqual(sorted(self.on_disk()), [2, 3])
        self.assertNotIn("fsync", self.on_reactor)

    def test_append_and_copy_name_uids_that_are_on_disk(self) -> None:
        literal = message("new")
        self.a.send(f"a1 APPEND INBOX {{{len(literal)}+}}\r\n".encode() + literal + b"\r\n")
        self.clock.advance(0)
        self.assertEqual(self.a.lines(), [])
        self.worker.release()
        self.clock.advance(0)
        self.assertIn(4, self.on_disk())
        self.assertTrue(self.a.lines()[-1].startswith("a1 OK [APPENDUID "))
        self.a.command("CREATE Other")
        self.folder("Other").sync()  # (its first, empty list)
        del self.on_reactor[:]
        self.a.send("a3 COPY 1 Other\r\n")
        for _ in range(3):  # (the new folder's first list, then the copy's UID)
            self.clock.advance(0)
            self.worker.release()
        self.clock.advance(0)
        self.assertTrue(self.a.lines()[-1].startswith("a3 OK [COPYUID "))
        other = uidlist.load(Path(self.store.root / "example.org/alice/.Other" / uidlist.FILENAME))
        assert other is not None
        self.assertEqual([r.uid for r in other.records.values()], [1])
        self.assertNotIn("fsync", self.on_reactor)  # (the links' directory: the worker's)

    def test_append_and_copy_name_their_uids_in_one_look(self) -> None:
        # The look that names the new UIDs starts the write the command waits for anyway: it
        # is not run again once that write ends (it used to meet that write, Flushing).
        calls: list[list[str]] = []
        real = Placer.uids_of

        def uids_of(placer: Placer, bases: Any, **kw: Any) -> dict[str, int]:
            calls.append(list(bases))
            return real(placer, bases, **kw)

        self.patch(Placer, "uids_of", uids_of)
        literal = message("new")
        self.a.send(f"a1 APPEND INBOX {{{len(literal)}+}}\r\n".encode() + literal + b"\r\n")
        self.clock.advance(0)
        self.assertEqual(self.a.lines(), [])  # (after the write only)
        self.worker.release()
        self.clock.advance(0)
        self.assertTrue(self.a.lines()[-1].startswith("a1 OK [APPENDUID "))
        self.assertEqual(len(calls), 1)
        self.a.command("CREATE Other")
        self.folder("Other").sync()  # (its first, empty list)
        del calls[:]
        self.a.send("a3 COPY 1:2 Other\r\n")
        self.clock.advance(0)
        self.assertEqual(self.a.lines(), [])
        self.worker.release()
        self.clock.advance(0)
        validity = uidlist.load(
            Path(self.store.root / "example.org/alice/.Other" / uidlist.FILENAME)
        )
        assert validity is not None
        self.assertEqual(
            self.a.lines(), [f"a3 OK [COPYUID {validity.uidvalidity} 1:2 1:2] COPY completed"]
        )
        self.assertEqual(len(calls), 1)

    def disk_events(self) -> list[tuple[str, str]]:
        """(what, path) of the worker's directory fsyncs and list writes, in order."""
        events: list[tuple[str, str]] = []
        real_fsync_dir, real_write = uidwriter.fsync_dir, uidwriter.atomic_write

        def fsync_dir(path: Any) -> None:
            events.append(("fsync_dir", str(path)))
            real_fsync_dir(path)

        def atomic_write(path: Any, *args: Any) -> None:
            events.append(("write", str(path)))
            real_write(path, *args)

        real_save = uidlist.save

        def save(path: Any, *args: Any, **kw: Any) -> None:
            events.append(("write", str(path)))  # (a look's list write: the worker's job)
            real_save(path, *args, **kw)

        self.patch(uidwriter, "fsync_dir", fsync_dir)
        self.patch(message_commands, "fsync_dir", fsync_dir)
        self.patch(uidlist, "save", save)
        self.patch(uidwriter, "atomic_write", atomic_write)
        return events

    def copy_to_other(self, command: str) -> tuple[list[tuple[str, str]], list[str]]:
        """``command`` (COPY or MOVE of messages 1:2 to Other) run with the worker released
        one job at a time: the worker's disk events, and the answer's lines. Checks that
        nothing is answered, and no UID of a copy is on disk, before the copies' directory
        was fsync'd by the worker."""
        self.a.command("CREATE Other")
        self.folder("Other").sync()  # (its first, empty list)
        events = self.disk_events()
        other_dir = str(self.store.root / "example.org/alice/.Other")
        other_list = Path(other_dir) / uidlist.FILENAME
        del self.on_reactor[:], self.off_reactor[:]
        self.jobs_before = self.worker.jobs
        self.a.send(f"a1 {command}\r\n")
        answer: list[str] = []
        for _ in range(10):
            self.clock.advance(0)
            answer += self.a.lines()
            if answer and answer[-1].startswith("a1 "):
                break
            if ("fsync_dir", f"{other_dir}/new") not in events:
                # not durable yet: nothing told, no UID given
                self.assertEqual(answer, [])
                lst = uidlist.load(other_list)
                self.assertEqual(lst.records if lst is not None else {}, {})
            self.worker.release()
        self.assertNotIn("fsync", self.on_reactor)
        self.assertIn("fsync", self.off_reactor)
        return events, answer

    def test_copy_links_are_fsyncd_by_the_worker_before_their_uids(self) -> None:
        events, answer = self.copy_to_other("COPY 1:2 Other")
        self.assertTrue(answer[-1].startswith("a1 OK [COPYUID "), answer)
        # one write: the links' directory fsync'd, then the list naming them
        self.assertEqual(self.worker.jobs - self.jobs_before, 1)
        other_dir = str(self.store.root / "example.org/alice/.Other")
        synced = events.index(("fsync_dir", f"{other_dir}/new"))
        written = events.index(("write", f"{other_dir}/{uidlist.FILENAME}"))
        self.assertLess(synced, written)  # the links durable before the list naming them
        other = uidlist.load(Path(other_dir) / uidlist.FILENAME)
        assert other is not None
        self.assertEqual(sorted(r.uid for r in other.records.values()), [1, 2])
        self.assertEqual(len(os.listdir(f"{other_dir}/new")), 2)

    def test_move_links_are_fsyncd_by_the_worker_before_their_uids(self) -> None:
        events, answer = self.copy_to_other("MOVE 1:2 Other")
        self.assertEqual(answer[-1], "a1 OK MOVE completed")
        self.assertTrue(answer[0].startswith("* OK [COPYUID "), answer)
        self.assertIn("* 1 EXPUNGE", answer)
        other_dir = str(self.store.root / "example.org/alice/.Other")
        synced = events.index(("fsync_dir", f"{other_dir}/new"))
        written = events.index(("write", f"{other_dir}/{uidlist.FILENAME}"))
        self.assertLess(synced, written)
        # the source's list forgets the originals only after the copies are durable
        inbox = str(self.store.root / "example.org/alice")
        self.assertLess(synced, events.index(("write", f"{inbox}/{uidlist.FILENAME}")))
        self.assertEqual(sorted(self.on_disk()), [3])

    def other_locked_after_links(self) -> tuple[Any, str, list[DotLock]]:
        """Folder Other (made and looked at), its directory, and the locks that another
        process takes on it right after each COPY's links (released at the test's end, if not
        before). A busy lock is LockBusy at once on the reactor, which is the test's thread."""
        self.a.command("CREATE Other")
        other = self.folder("Other")
        other.sync()
        other_dir = str(self.store.root / "example.org/alice/.Other")
        real = Placer.link_copies
        holders: list[DotLock] = []

        def link_copies(placer: Placer, *args: Any) -> Any:
            links = real(placer, *args)
            holder = DotLock(Path(other_dir) / uidlist.LOCKNAME, in_reactor=lambda: True)
            holder.acquire()
            self.addCleanup(holder.release)  # (a second release does nothing)
            holders.append(holder)
            return links

        self.patch(Placer, "link_copies", link_copies)
        main = threading.main_thread()
        self.patch(dotlock, "on_reactor_thread", lambda: threading.current_thread() is main)
        return other, other_dir, holders

    def test_copy_whose_target_stays_locked_is_ok_once_its_links_are_durable(self) -> None:
        # Another process takes the target's lock right after the links: past lock_timeout
        # the COPY is answered OK without COPYUID (the copies are there) - but only after
        # the worker has fsync'd their directory (nobody else did).
        _, other_dir, _ = self.other_locked_after_links()
        self.factory.run = self.worker  # (the IMAP server's disk work: the store's worker)
        self.worker.release()
        self.clock.advance(0)
        events = self.disk_events()
        del self.on_reactor[:], self.off_reactor[:]
        self.a.send("a1 COPY 1 Other\r\n")
        for _ in range(120):
            self.clock.advance(0.1)
        self.assertEqual(self.a.lines(), [])  # not durable yet: not told
        self.assertEqual(len(self.worker.queued), 1)
        self.worker.release()
        self.clock.advance(0)
        self.assertEqual(self.a.lines(), ["a1 OK COPY completed"])
        self.assertIn(("fsync_dir", f"{other_dir}/new"), events)
        self.assertNotIn("fsync", self.on_reactor)

    def test_a_look_while_a_copy_waits_for_the_lock_fsyncs_its_links_first(self) -> None:
        # Another process holds the target's lock right after the links; meanwhile a look
        # at it (the change feed's, an IDLE's) leaves the new files' UIDs to the worker's
        # job: that job fsyncs the links' directory before its list names them.
        other, other_dir, holders = self.other_locked_after_links()
        self.worker.release()
        self.clock.advance(0)
        events = self.disk_events()
        self.a.send("a1 COPY 1 Other\r\n")
        self.clock.advance(0)
        self.assertEqual(len(holders), 1)
        try:
            other.sync(assign=False)
        except LockBusy:
            pass  # (UidsPending: the worker is at it)
        self.assertIsNotNone(other.written())  # the job is queued
        holders[0].release()
        self.worker.release()
        list_path = f"{other_dir}/{uidlist.FILENAME}"
        self.assertIn(("write", list_path), events)
        self.assertLess(
            events.index(("fsync_dir", f"{other_dir}/new")), events.index(("write", list_path))
        )
        for _ in range(30):
            self.clock.advance(0.1)
            self.worker.release()
        self.assertTrue(self.a.lines()[-1].startswith("a1 OK [COPYUID "))

    def test_a_failed_write_of_copies_leaves_their_directory_to_fsync(self) -> None:

        self.a.command("CREATE Other")
        other = self.folder("Other")
        other.sync()
        other_dir = str(self.store.root / "example.org/alice/.Other")
        self.a.send("a1 COPY 1 Other\r\n")
        for _ in range(3):
            self.clock.advance(0)
            for _, _, d in self.worker.queued:
                d.errback(Failure(OSError(28, "No space left")))
            self.worker.queued.clear()
        self.assertEqual(self.a.lines()[-1], "a1 NO [SERVERBUG] Internal server error")
        self.flushLoggedErrors(OSError)
        # not known durable: whatever next gives them UIDs under our lock fsyncs it first
        self.assertEqual(other.unsynced_links(), [f"{other_dir}/new"])
        events = self.disk_events()
        self.a.send("a2 COPY 2 Other\r\n")
        for _ in range(4):
            self.clock.advance(0)
            self.worker.release()
        self.clock.advance(0)
        self.assertTrue(self.a.lines()[-1].startswith("a2 OK [COPYUID "))
        self.assertLess(
            events.index(("fsync_dir", f"{other_dir}/new")),
            events.index(("write", f"{other_dir}/{uidlist.FILENAME}")),
        )
        self.assertEqual(other.unsynced_links(), [])
        gc.collect()  # (a failed write's Deferred nobody got is logged when collected)
        self.assertEqual(self.flushLoggedErrors(OSError), [])

    def test_a_copy_abandoned_during_its_write_leaves_no_directory_to_fsync(self) -> None:
        # The client goes away while COPY waits for the worker's write (the links' fsync,
        # then their UIDs): once that write has ended well, later writes of the target
        # fsync the directory no more.
        self.a.command("CREATE Other")
        other = self.folder("Other")
        other.sync()
        other_new = str(self.store.root / "example.org/alice/.Other/new")
        self.a.send("a1 COPY 1 Other\r\n")
        self.clock.advance(0)
        self.assertEqual(other.unsynced_links(), [other_new])
        self.assertEqual(len(self.worker.queued), 1)
        self.a.protocol.connectionLost(Failure(ConnectionDone()))
        self.worker.release()
        self.clock.advance(0)
        self.assertEqual(other.unsynced_links(), [])
        events = self.disk_events()
        self.arrive("later", folder=".Other")
        other.sync(assign=False)  # (a look: the new message's UID by the worker's job)
        self.worker.release()
        self.assertIn(("write", f"{other_new[:-4]}/{uidlist.FILENAME}"), events)
        self.assertNotIn(("fsync_dir", other_new), events)

    def test_a_copy_abandoned_while_the_lock_is_busy_leaves_no_directory_to_fsync(self) -> None:
        # Another process holds the target's lock right after the links and the client goes
        # away meanwhile: the next write of the target fsyncs the links' directory (nobody
        # else will) and then forgets it.
        other, other_dir, holders = self.other_locked_after_links()
        other_new = f"{other_dir}/new"
        self.a.send("a1 COPY 1 Other\r\n")
        self.clock.advance(0.1)
        self.assertEqual(len(holders), 1)
        self.a.protocol.connectionLost(Failure(ConnectionDone()))
        holders[0].release()
        events = self.disk_events()
        other.sync(assign=False)  # (a look: the copy's UID by the worker's job)
        self.worker.release()
        self.assertIn(("fsync_dir", other_new), events)  # (before its list names the copy)
        self.assertEqual(other.unsynced_links(), [])

    def test_a_copy_whose_target_stays_locked_forgets_the_links_it_fsyncd(self) -> None:
        # The COPY given up on the lock fsyncs its links' directory itself: the next write
        # of the target need not fsync it again.
        self.other_locked_after_links()
        self.factory.run = self.worker
        self.worker.release()
        self.clock.advance(0)
        self.a.send("a1 COPY 1 Other\r\n")
        for _ in range(120):
            self.clock.advance(0.1)
        self.worker.release()
        self.clock.advance(0)
        self.assertEqual(self.a.lines(), ["a1 OK COPY completed"])
        self.assertEqual(self.folder("Other").unsynced_links(), [])

    def test_a_copy_is_not_failed_by_an_abandoned_copys_failed_write(self) -> None:
        # a goes away while its COPY waits for the target's write, which then fails: b's
        # COPY to it is b's own (its write fsyncs the directory both linked into).
        self.a.command("CREATE Other")
        other = self.folder("Other")
        other.sync()
        other_dir = str(self.store.root / "example.org/alice/.Other")
        self.a.send("a1 COPY 1 Other\r\n")
        self.clock.advance(0)
        self.assertEqual(len(self.worker.queued), 1)
        self.a.protocol.connectionLost(Failure(ConnectionDone()))
        _, _, d = self.worker.queued.pop()
        d.errback(Failure(OSError(28, "No space left")))
        self.clock.advance(0)
        self.flushLoggedErrors(OSError)
        events = self.disk_events()
        self.b.send("b1 COPY 2 Other\r\n")
        for _ in range(4):
            self.clock.advance(0)
            self.worker.release()
        self.clock.advance(0)
        self.assertTrue(self.b.lines()[-1].startswith("b1 OK [COPYUID "))
        self.assertLess(
            events.index(("fsync_dir", f"{other_dir}/new")),
            events.index(("write", f"{other_dir}/{uidlist.FILENAME}")),
        )
        self.assertEqual(other.unsynced_links(), [])

    def test_a_failed_write_fails_the_command_and_frees_the_lock(self) -> None:
        from twisted.internet.defer import fail, maybeDeferred

        failed: list[object] = []

        def run(f: Callable[..., Any], *a: Any) -> Deferred[Any]:
            # The STORE's write fails; the look after it records the rename it finds on
            # disk (a change of its own, with its mod-sequence) and writes that.
            if not failed:
                failed.append(f)
                return fail(OSError(28, "No space left"))
            return maybeDeferred(f, *a)

        self.store.settings.offload.run = run
        self.a.send("a1 STORE 2 +FLAGS (\\Flagged)\r\n")
        self.clock.advance(0)
        # (the rename is on disk: the look after the command tells it)
        self.assertEqual(self.a.lines()[-1], "a1 NO [SERVERBUG] Internal server error")
        self.flushLoggedErrors(OSError)
        self.assertEqual(self.on_disk()[2][0], "F")
        self.store.settings.offload.run = None
        self.a.send("a2 STORE 3 +FLAGS (\\Flagged)\r\n")  # the lock is free again
        self.clock.advance(0)
        self.assertEqual(self.a.lines()[-1], "a2 OK STORE completed")
        self.assertEqual(self.on_disk()[3][0], "F")

    def rename_by_another_program(self, uid: int, letters: str) -> None:
        """Message ``uid``'s file renamed with new flags (mutt): a look records the change
        (a new mod-sequence), writing the list under the lock."""
        base = self.folder()._core.uid_base[uid]
        cur = self.store.root / "example.org/alice/cur"
        [fn] = [n for n in os.listdir(cur) if n.startswith(base + ":")]
        os.rename(cur / fn, cur / f"{base}:2,{letters}")

    def test_a_looks_failed_write_is_no_unhandled_error(self) -> None:
        # The look after b's NOOP writes the list (the rename); nobody waits for that
        # write's own Deferred (the look meets Flushing, or the write failed at once):
        # its failure is logged as a warning (uidwriter._flushed), never left unhandled.
        self.rename_by_another_program(1, "F")
        self.b.send("b1 NOOP\r\n")
        self.assertEqual(len(self.worker.queued), 1)
        _, _, d = self.worker.queued.pop()
        d.errback(Failure(OSError(28, "No space left")))  # (the quiet waiters try again)
        self.worker.release()
        self.clock.advance(0)
        self.assertEqual(self.b.lines()[-1], "b1 OK NOOP completed")
        self.assertEqual(self.on_disk()[1][0], "F")
        gc.collect()  # (an unhandled error in a Deferred is logged when it is collected)
        self.assertEqual(self.flushLoggedErrors(OSError), [])

    def refuse(self) -> None:
        """The worker refuses every write at once (the GroupCommitter stopping)."""
        from twisted.internet.defer import fail

        self.store.settings.offload.run = lambda f, *a: fail(OSError(28, "No space left"))

    def raising(self) -> None:
        """The worker raises instead of returning a Deferred (a runner's own bug)."""

        def run(f: Callable[..., Any], *a: Any) -> Deferred[Any]:
            raise RuntimeError("runner broken")

        self.store.settings.offload.run = run

    def test_a_runner_that_raises_fails_the_command_and_frees_the_lock(self) -> None:
        # Neither core.flush nor the folder's lock left behind: the command fails (NO),
        # and the next one, with a worker again, goes through.
        self.raising()
        self.a.send("a1 STORE 2 +FLAGS (\\Flagged)\r\n")
        for _ in range(120):  # (its look after it: tried again, then given up)
            self.clock.advance(0.1)
        self.assertEqual(self.a.lines()[-1], "a1 NO [SERVERBUG] Internal server error")
        self.flushLoggedErrors(RuntimeError)
        core = self.folder()._core
        self.assertIsNone(core.flush)
        self.assertFalse((self.store.root / "example.org/alice" / uidlist.LOCKNAME).exists())
        self.store.settings.offload.run = self.worker
        self.b.send("b1 STORE 3 +FLAGS (\\Flagged)\r\n")
        self.clock.advance(0)
        while self.worker.queued:
            self.worker.release()
            self.clock.advance(0)
        self.assertEqual(self.b.lines()[-1], "b1 OK STORE completed")
        self.assertEqual(self.on_disk()[3][0], "F")

    def test_a_runner_that_raises_leaves_no_job_behind(self) -> None:
        # A look's job (uidwriter.start) whose runner raises: nothing of it told, and the
        # next look, with a worker again, starts another.
        self.arrive("new")
        self.raising()
        self.b.send("b1 IDLE\r\n")
        self.clock.advance(0)
        self.flushLoggedErrors(RuntimeError)
        self.assertIsNone(self.folder()._core.job)
        self.store.settings.offload.run = self.worker
        self.b.send("DONE\r\n")
        for _ in range(3):
            self.clock.advance(0.01)
            self.worker.release()
        self.clock.advance(0)
        self.assertIn("* 4 EXISTS", self.b.lines())

    def test_a_looks_write_refused_at_once_tells_nothing_of_it(self) -> None:
        # The look after b's NOOP records the rename (a new mod-sequence) and hands the
        # list's write to the worker, which refuses it at once: nothing of that list is
        # told (it is not on disk); the look is tried again on the clock, as for a busy
        # lock, and answers once its write is done.
        before = self.on_disk()
        self.rename_by_another_program(2, "F")
        self.refuse()
        self.b.send("b1 NOOP\r\n")
        self.clock.advance(0)
        self.assertEqual(self.b.lines(), [])
        self.assertEqual(self.on_disk(), before)
        self.store.settings.offload.run = self.worker
        self.clock.advance(0.01)  # the retry reads the list again and writes it
        self.assertEqual(self.b.lines(), [])
        self.worker.release()
        self.clock.advance(0)
        self.assertEqual(self.on_disk()[2][0], "F")
        self.assertEqual(
            self.b.lines(), ["* 2 FETCH (UID 2 FLAGS (\\Flagged))", "b1 OK NOOP completed"]
        )
        gc.collect()  # (a failure left in a Deferred is logged when it is collected)
        self.assertEqual(self.flushLoggedErrors(OSError), [])

    def test_reads_after_a_refused_write_use_the_list_on_disk(self) -> None:
        # A look whose write was refused gave the new message a UID in memory only: reads
        # by UID of the messages b was told find their own files (the list on disk's).
        self.arrive("new")
        self.refuse()
        self.a.send("a1 NOOP\r\n")
        self.clock.advance(0)
        self.b.send("b1 FETCH 1:3 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
        for _ in range(120):
            self.clock.advance(0.1)
        told = self.b.lines()
        self.assertEqual([t for t in told if t.startswith("Subject")],
                         ["Subject: m0", "Subject: m1", "Subject: m2"])  # fmt: skip
        self.assertNotIn("* 4 EXISTS", told)
        self.assertNotIn("uidlist.save", self.on_reactor)
        self.flushLoggedErrors(OSError)

    def test_reads_after_a_refused_write_of_a_new_uidvalidity_are_not_its(self) -> None:
        # The list is lost: a's look numbers the messages anew (a new UIDVALIDITY) and its
        # write is refused. b, told UIDs 1 and 3 (2 expunged) of the old list, reads
        # UID 3: not the message the list not written numbers 3 (the new one).
        self.a.send("a1 STORE 2 +FLAGS.SILENT (\\Deleted)\r\n")
        self.worker.release()
        self.clock.advance(0)
        self.a.send("a2 EXPUNGE\r\n")
        self.worker.release()
        self.clock.advance(0)
        self.b.send("b1 NOOP\r\n")
        self.clock.advance(0)
        self.assertEqual(self.b.lines(), ["* 2 EXPUNGE", "b1 OK NOOP completed"])
        self.a.lines()
        os.unlink(self.store.root / "example.org/alice" / uidlist.FILENAME)
        self.arrive("new")
        self.refuse()
        self.a.send("a3 NOOP\r\n")
        self.clock.advance(0)
        self.b.send("b2 FETCH 2 (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
        for _ in range(120):
            self.clock.advance(0.1)
        told = self.b.lines()
        self.assertNotIn("Subject: new", told)
        self.assertIn("Subject: m2", told)
        self.assertNotIn("uidlist.save", self.on_reactor)
        self.flushLoggedErrors(OSError)

    def test_a_look_whose_writes_are_refused_gives_up_as_for_a_busy_lock(self) -> None:
        # (NOOP then answers with nothing: its changes are told after a later command)
        before = self.on_disk()
        self.rename_by_another_program(2, "F")
        self.refuse()
        self.b.send("b1 NOOP\r\n")
        for _ in range(120):
            self.clock.advance(0.1)
        self.assertEqual(self.b.lines(), ["b1 OK NOOP completed"])
        self.assertEqual(self.on_disk(), before)

    def test_new_mail_whose_write_is_refused_gets_no_uid_told(self) -> None:
        # RFC 3501 2.3.1.1: a UID told is that message's for good; the list naming it was
        # never written, so another process may give that UID to another message.
        self.arrive("new")
        self.refuse()
        self.b.send("b1 NOOP\r\n")
        self.clock.advance(0)
        self.assertEqual(self.b.lines(), [])
        self.assertEqual(sorted(self.on_disk()), [1, 2, 3])
        # Meanwhile another process gives the message its UID, and another one after it.
        from mailhub.store import MailStore

        other = MailStore(self.store.root, hostname="mail.example.org").mailbox(USER)
        self.arrive("newer")
        self.assertEqual([m.uid for m in other.folder("INBOX").sync().messages], [1, 2, 3, 4, 5])
        self.store.settings.offload.run = self.worker
        self.clock.advance(0.01)
        self.worker.release()
        self.clock.advance(0)
        self.assertEqual(self.b.lines(), ["* 5 EXISTS", "* 2 RECENT", "b1 OK NOOP completed"])
        self.b.send("b2 UID FETCH 4:* (UID)\r\n")
        self.clock.advance(0)
        self.assertEqual(self.b.lines()[:2], ["* 4 FETCH (UID 4)", "* 5 FETCH (UID 5)"])

    def test_a_looks_write_failing_later_tells_nothing_of_it(self) -> None:
        # The write fails in the worker (the look waits for it: Flushing): the retry
        # reads the list from the file again, never answering from the list not written.
        before = self.on_disk()
        self.rename_by_another_program(2, "F")
        self.b.send("b1 NOOP\r\n")
        self.assertEqual(len(self.worker.queued), 1)
        _, _, d = self.worker.queued.pop()
        self.refuse()  # (and every write after it)
        d.errback(Failure(OSError(28, "No space left")))
        for _ in range(120):
            self.clock.advance(0.1)
        self.assertEqual(self.b.lines(), ["b1 OK NOOP completed"])
        self.assertEqual(self.on_disk(), before)

    def test_fetch_that_sets_seen_and_close(self) -> None:
        self.a.send("a1 FETCH 1 (BODY[HEADER.FIELDS (SUBJECT)])\r\n")
        self.assertEqual(self.a.lines(), [])  # \Seen is not on disk yet
        self.worker.release()
        self.clock.advance(0)
        self.assertEqual(self.on_disk()[1][0], "S")
        self.assertEqual(self.a.lines()[-1], "a1 OK FETCH completed")
        self.a.send("a2 STORE 2 +FLAGS.SILENT (\\Deleted)\r\n")
        self.worker.release()
        self.clock.advance(0)
        self.a.lines()
        self.a.send("a3 CLOSE\r\n")
        self.assertEqual(self.a.lines(), [])
        self.worker.release()
        self.clock.advance(0)
        self.assertEqual(self.a.lines(), ["a3 OK CLOSE completed"])
        self.assertEqual(sorted(self.on_disk()), [1, 3])
        self.assertNotIn("fsync", self.on_reactor)


class AJobWaitingForTheLock(SessionsCase):
    """A look's job (write_list) waits for the folder's lock in a worker, polling with
    back-off (DotLock.acquire), while sessions' STOREs keep the lock busy with their writes."""

    def test_is_not_starved_by_a_stream_of_stores(self) -> None:
        self.fill(4)
        a, b = self.selected(), self.selected()
        inbox = self.folder()
        core = inbox._core
        clients = {"a": a, "b": b}
        answered = dict.fromkeys(clients, True)
        sent = dict.fromkeys(clients, 0)
        real_dotlock = store_core.FolderCore.dotlock

        def stream() -> None:
            """Each session sends its next STORE once the last one is answered."""
            for name, client in clients.items():
                if any(line.startswith(f"{name}{sent[name]} ") for line in client.lines()):
                    answered[name] = True
                if answered[name]:
                    sent[name] += 1
                    answered[name] = False
                    sign = "+-"[sent[name] % 2]
                    client.send(f"{name}{sent[name]} STORE 1 {sign}FLAGS (\\Flagged)\r\n")

        polls: list[float] = []

        def sleep(delay: float) -> None:
            # (the job's wait between two tries: the reactor runs on - the writes in flight
            # end, the sessions' next STOREs come - for that long)
            polls.append(delay)
            self.worker.release()
            stream()
            self.clock.advance(delay)

        def dotlock(c: Any, path: Path) -> DotLock:
            if c is core:
                return real_dotlock(c, path)
            s = c.settings  # the job's own FolderCore: its lock waits on the test's clock
            return DotLock(
                path, timeout=s.lock_timeout, hostname=s.hostname, now=self.clock.seconds,
                sleep=sleep, in_reactor=lambda: False,
            )  # fmt: skip

        self.patch(store_core.FolderCore, "dotlock", dotlock)
        self.arrive("new")
        inbox.sync(assign=False)  # the change feed's look: the new message's UID by a job
        [(f, args, d)] = self.worker.queued
        self.assertIs(f, uidwriter.write_list)
        del self.worker.queued[:]
        stream()  # STOREs come before the job's thread gets to run (they took the lock)
        started = self.clock.seconds()
        try:
            result = f(*args)  # the job, waiting for the lock as a worker's thread does
        except Exception:
            result = Failure()
        waited = self.clock.seconds() - started
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
        self.flushLoggedErrors()
        # (before: LockTimeout after 10 s, 205 tries, while 412 STOREs were answered)
        self.assertFalse(isinstance(result, Failure), (len(polls), waited, sum(sent.values())))
        self.assertLess(waited, 0.5)
        for _ in range(3):  # the STOREs, waiting for the job, go on after it
            self.clock.advance(0)
            self.worker.release()
            stream()
        self.assertGreater(sum(sent.values()), 4)
        self.assertEqual(self.list_uids(), [1, 2, 3, 4, 5])  # the job's: the new message's
