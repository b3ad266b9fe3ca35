"""The change feed behind list, wait and live events (mailhub.web.feed)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailhub.store import MailStore, dotlock, uidlist
from mailhub.store.dotlock import DotLock
from mailhub.web import parse, scan
from mailhub.web.feed import SEARCH_TEXT_CACHE, Change, Entry, MailFeed
from mailhub.web.search import QueryError
from tests.support.tools import skip_or_fail


class Feed(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.store = MailStore(Path(self.mktemp()), "localhost", now=lambda: 1_800_000_000.0)
        self.feed = MailFeed(self.store, self.clock, poll_interval=1.0, use_inotify=False)
        self.changes: list[Change] = []
        self.feed.subscribe(self.changes.extend)

    def deliver(self, address: str, subject: str, when: float = 1_800_000_000.0) -> int:
        folder = self.store.mailbox(address, create=True).folder()
        return folder.append(f"Subject: {subject}\r\n\r\nhi\r\n".encode(), internaldate=when)

    def kinds(self) -> list[tuple[str, str]]:
        out = [(c.kind, c.entry.ref.mailbox) for c in self.changes]
        self.changes.clear()
        return out

    def test_existing_mail_is_numbered_in_arrival_order(self) -> None:
        self.deliver("b@example.com", "later", when=1_800_000_100)
        self.deliver("a@example.com", "earlier", when=1_800_000_000)
        self.feed.scan()
        entries = list(self.feed.entries.values())
        self.assertEqual(
            [(e.seq, e.ref.mailbox) for e in entries], [(1, "a@example.com"), (2, "b@example.com")]
        )
        self.assertEqual(self.feed.cursor, f"{self.feed.epoch}-2")

    def test_cursor_marks_what_was_seen(self) -> None:
        self.deliver("a@example.com", "one")
        self.feed.scan()
        cursor = self.feed.parse_cursor(self.feed.cursor)
        self.deliver("a@example.com", "two")
        self.deliver("c@example.com", "three")
        self.assertEqual(self.feed.after(cursor), [])  # not scanned yet
        self.feed.scan()
        self.assertEqual([e.seq for e in self.feed.after(cursor)], [2, 3])
        self.assertEqual(self.feed.after(3), [])
        self.assertEqual([e.seq for e in self.feed.after(0)], [1, 2, 3])

    def test_poll_notices_mail_from_elsewhere(self) -> None:
        self.feed.startService()
        self.addCleanup(self.feed.stopService)
        self.assertEqual(self.kinds(), [])
        self.deliver("a@example.com", "one")
        self.clock.advance(1.0)
        self.assertEqual(self.kinds(), [("new", "a@example.com")])
        self.clock.advance(1.0)
        self.assertEqual(self.kinds(), [])  # nothing changed: nothing published

    def test_flags_and_deletes_are_changes(self) -> None:
        uid = self.deliver("a@example.com", "one")
        self.feed.scan()
        self.kinds()
        folder = self.store.mailbox("a@example.com").folder()
        folder.add_flags(uid, {"S"})
        self.feed.scan()
        [change] = self.changes
        self.assertEqual((change.kind, change.entry.seen), ("flags", True))
        self.changes.clear()
        folder.delete(uid)
        self.feed.scan()
        self.assertEqual(self.kinds(), [("deleted", "a@example.com")])
        self.assertEqual(self.feed.entries, {})

    def test_sequence_numbers_are_never_reused(self) -> None:
        uid = self.deliver("a@example.com", "one")
        self.feed.scan()
        self.store.mailbox("a@example.com").folder().delete(uid)
        self.feed.scan()
        self.deliver("a@example.com", "two")
        self.feed.scan()
        [entry] = self.feed.entries.values()
        self.assertEqual(entry.seq, 2)

    def test_mail_of_one_second_is_numbered_by_the_names_microseconds(self) -> None:
        # Maildir names do not zero-pad the microseconds: "M99999" came before "M100000",
        # though it sorts after it as text.
        inbox = self.store.mailbox("a@example.com", create=True).folder()
        inbox.sync()
        new = self.store.root / "example.com" / "a" / "new"
        if not new.is_dir():
            new = next(p for p in self.store.root.rglob("new") if p.is_dir())
        for usecs, subject in ((99999, "first"), (100000, "second"), (100001, "third")):
            name = f"1800000000.M{usecs}P42Q1.host,S=20"
            (new / name).write_bytes(f"Subject: {subject}\r\n\r\nx\r\n".encode())
        self.feed.scan()
        entries = self.feed.page(0, 10)  # newest first
        self.assertEqual(
            [self.feed.summary(e).subject for e in entries], ["third", "second", "first"]
        )

    def test_summaries_are_parsed_once(self) -> None:
        self.deliver("a@example.com", "Hello")
        self.feed.scan()
        [entry] = self.feed.entries.values()
        self.assertEqual(self.feed.summary(entry).subject, "Hello")
        self.assertIs(self.feed.summary(entry), self.feed.summary(entry))

    def test_bad_cursors(self) -> None:
        self.assertEqual(self.feed.parse_cursor(None), 0)
        self.assertEqual(self.feed.parse_cursor("0"), 0)
        for text in ("x", "abc-", f"{self.feed.epoch}-x", "deadbeef-1"):
            with self.assertRaises(QueryError, msg=text):
                self.feed.parse_cursor(text)
        # A cursor ahead of the feed (impossible unless forged) means "now".
        self.assertEqual(self.feed.parse_cursor(f"{self.feed.epoch}-99"), 0)


class Listing(SynchronousTestCase):
    """Pages and counts come from the feed's own lists, kept as changes arrive."""

    def setUp(self) -> None:
        self.store = MailStore(Path(self.mktemp()), "localhost", now=lambda: 1_800_000_000.0)
        self.feed = MailFeed(self.store, task.Clock(), use_inotify=False)

    def deliver(self, address: str, subject: str) -> int:
        folder = self.store.mailbox(address, create=True).folder()
        return folder.append(
            f"Subject: {subject}\r\n\r\nhi\r\n".encode(), internaldate=1_800_000_000
        )

    def subjects(self, entries: list[Entry]) -> list[str]:
        return [self.feed.summary(e).subject for e in entries]

    def test_pages_counts_and_unread_follow_changes(self) -> None:
        uids = []
        for n in range(3):
            uids.append(self.deliver("a@example.com", f"a{n}"))
            self.feed.scan()  # one at a time: the same arrival second, an order all the same
        self.deliver("b@example.com", "b0")
        self.feed.scan()
        self.assertEqual(self.subjects(self.feed.page(0, 2)), ["b0", "a2"])
        self.assertEqual(self.subjects(self.feed.page(2, 2)), ["a1", "a0"])
        self.assertEqual(self.feed.page(4, 2), [])
        self.assertEqual(self.subjects(self.feed.page(1, 5, "a@example.com")), ["a1", "a0"])
        self.assertEqual((self.feed.count(), self.feed.unread()), (4, 4))
        self.assertEqual(self.feed.count("nobody@example.com"), 0)
        folder = self.store.mailbox("a@example.com").folder()
        folder.add_flags(uids[0], {"S"})
        folder.delete(uids[1])
        self.feed.scan()
        self.assertEqual(self.subjects(self.feed.page(0, 9)), ["b0", "a2", "a0"])
        self.assertEqual(
            (self.feed.count("a@example.com"), self.feed.unread("a@example.com")), (2, 1)
        )
        self.assertEqual((self.feed.count(), self.feed.unread()), (3, 2))
        self.assertEqual(
            sorted(f for f in self.feed.folders() if f[1] == "INBOX"),
            [("a@example.com", "INBOX", 2, 1), ("b@example.com", "INBOX", 1, 1)],
        )
        self.assertEqual(sum(f[2] for f in self.feed.folders()), 3)

    def test_summaries_are_kept_in_the_folder_cache_across_runs(self) -> None:
        self.deliver("a@example.com", "Parsed once")
        self.feed.scan()
        self.feed.summarise(self.feed.page(0, 10))
        # Another run (or process): a new store over the same directory. Parsing is broken
        # there, so the summary can only come from the cache file.
        again = MailFeed(MailStore(self.store.root, "localhost"), task.Clock(), use_inotify=False)
        again.scan()
        self.patch(scan, "summarise_scanned", lambda fp: self.fail("scanned again"))
        self.patch(parse, "load", lambda raw: self.fail("parsed again"))
        [entry] = again.page(0, 10)
        self.assertEqual(again.summary(entry).subject, "Parsed once")

    def test_search_text_is_kept_in_the_folder_cache_across_runs(self) -> None:
        folder = self.store.mailbox("a@example.com", create=True).folder()
        folder.append(b"Subject: s\r\n\r\nTracking  Number\r\nZX9\r\n", internaldate=1_800_000_000)
        self.feed.scan()
        self.feed.search_texts(self.feed.page(0, 10))
        [entry] = self.feed.page(0, 10)
        self.assertEqual(entry.text, "tracking number zx9")
        again = MailFeed(MailStore(self.store.root, "localhost"), task.Clock(), use_inotify=False)
        again.scan()
        self.patch(scan, "search_text_scanned", lambda fp: self.fail("scanned again"))
        self.patch(parse, "load", lambda raw: self.fail("parsed again"))
        [entry] = again.page(0, 10)
        self.assertEqual(again.search_text(entry), "tracking number zx9")

    def test_search_text_with_surrogates_from_an_older_version_is_computed_again(self) -> None:
        # Older versions kept search texts with "surrogatepass": such a record is not UTF-8,
        # so it is taken as missing and computed again, by the header rule (issue 12).
        folder = self.store.mailbox("a@example.com", create=True).folder()
        raw = "Subject: s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nCafé\r\n".encode()
        uid = folder.append(raw, internaldate=1_800_000_000)
        folder.cached(
            uid,
            SEARCH_TEXT_CACHE,
            lambda fp: "caf\udcc3\udca9",
            lambda text: text.encode("utf-8", "surrogatepass"),
            lambda data: data.decode("utf-8", "surrogatepass"),
        )
        again = MailFeed(MailStore(self.store.root, "localhost"), task.Clock(), use_inotify=False)
        again.scan()
        [entry] = again.page(0, 10)
        self.assertEqual(again.search_text(entry), "café")


class Inotify(TestCase):
    """With inotify, ``catch_up`` reads the kernel's queued events at once and syncs only the
    folders they name: everything done before the call is seen, without a whole scan."""

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.store = MailStore(Path(self.mktemp()), "localhost")
        self.store.root.mkdir(parents=True)
        self.feed = MailFeed(self.store, reactor, poll_interval=3600)  # type: ignore[arg-type]
        self.feed.startService()
        self.addCleanup(self.feed.stopService)
        if self.feed.changes._notifier is None:
            skip_or_fail("no inotify here: the feed falls back to timed scans")

    def test_changes_made_just_before_catch_up_are_seen_without_a_whole_scan(self) -> None:
        scans = self.feed.scans
        # No reactor turn between any change and the catch_up after it.
        box = self.store.mailbox("new@example.com", create=True)  # a mailbox never seen
        uid = box.folder().append(b"Subject: one\r\n\r\nx\r\n")
        self.assertEqual([c.kind for c in self.feed.catch_up()], ["new"])
        box.folder().add_flags(uid, {"S"})
        self.assertEqual([c.kind for c in self.feed.catch_up()], ["flags"])
        box.create_folder("Projects").append(b"Subject: two\r\n\r\nx\r\n")
        [change] = self.feed.catch_up()
        self.assertEqual((change.kind, change.entry.ref.folder), ("new", "Projects"))
        box.folder().delete(uid)
        self.assertEqual([c.kind for c in self.feed.catch_up()], ["deleted"])
        self.assertEqual(self.feed.catch_up(), [])  # nothing changed: nothing to do
        self.assertEqual(self.feed.scans, scans)
        self.assertEqual(self.feed.count(), 1)

    def test_without_inotify_catch_up_is_a_whole_scan(self) -> None:
        notifier, self.feed.changes._notifier = self.feed.changes._notifier, None
        notifier.loseConnection()
        scans = self.feed.scans
        self.store.mailbox("x@example.com", create=True).folder().append(b"Subject: s\r\n\r\n")
        self.assertEqual([c.kind for c in self.feed.catch_up()], ["new"])
        self.assertEqual(self.feed.scans, scans + 1)


class FeedBusyLock(SynchronousTestCase):
    """A folder whose UID lock a live holder has: the feed keeps what it knows and looks again
    soon, on the clock (it neither waits on the reactor nor reports the messages deleted)."""

    def test_busy_folder_is_looked_at_again(self) -> None:
        self.patch(dotlock, "on_reactor_thread", lambda: True)
        clock = task.Clock()
        store = MailStore(Path(self.mktemp()), "localhost")
        feed = MailFeed(store, clock, poll_interval=60.0, use_inotify=False)
        changes: list[Change] = []
        feed.subscribe(changes.extend)
        folder = store.mailbox("a@example.com", create=True).folder()
        folder.append(b"Subject: one\r\n\r\nhi\r\n")
        feed.scan()
        self.assertEqual([c.kind for c in changes], ["new"])
        changes.clear()
        # A delivery (no lock) whose UID needs the lock, which another process holds.
        root = store.root / "example.com" / "a"
        (root / "new" / "1765000000.M1P1Q1.other,S=20").write_bytes(b"Subject: two\r\n\r\nhi\r\n")
        holder = DotLock(root / uidlist.LOCKNAME, in_reactor=lambda: True)
        holder.acquire()
        self.addCleanup(holder.release)
        self.assertEqual(feed.scan(), [])  # busy: nothing new yet, nothing deleted
        self.assertEqual(len(feed.entries), 1)
        holder.release()
        clock.advance(1)  # the look again
        self.assertEqual([c.kind for c in changes], ["new"])
        self.assertEqual(len(feed.entries), 2)
