"""The change feed behind list, wait and live events (mailhub.web.feed)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from mailhub.store import MailStore
from mailhub.web.feed import Change, MailFeed
from mailhub.web.search import QueryError


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
