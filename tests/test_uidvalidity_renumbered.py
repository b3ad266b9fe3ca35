"""A folder whose UID list is lost (deleted, corrupt) while sessions have it selected: the next
look numbers its messages anew under a new UIDVALIDITY. A UID is valid only with its
UIDVALIDITY (RFC 3501 2.3.1.1): a session still speaking the old numbering must never have
its UIDs resolved by the new one - it would read (and the client cache under the old
UIDVALIDITY) or change another message. It gets BYE instead; a POP3 session, which names
messages by their files (UIDL), finds them again by name.

Every test: m0, m1, m2 got UIDs 1, 2, 3; UID 1 was expunged, so the sessions know m1 as UID 2
and m2 as UID 3. Numbered anew (arrival order), m1 is UID 1, m2 UID 2, a newcomer UID 3.
"""

from __future__ import annotations

import os
from pathlib import Path

from mailhub.pop3.maildrop import open_maildrop
from mailhub.store import names, uidlist
from tests.support.imap import USER, IMAPTestCase, message
from tests.test_store_uidwriter import SessionsCase

BYE = "* BYE Mailbox UIDVALIDITY changed; please reselect"


class Renumbering:
    """The messages, the lost list and looking at files (mixed into both cases below)."""

    store: object
    root: Path

    def lose_the_list(self) -> None:
        """The list file deleted, and a message delivered by another program (a look reads
        the list only when the directories changed)."""
        os.unlink(self.root / uidlist.FILENAME)
        base = names.unique_name("mail.example.org")
        (self.root / "tmp" / base).write_bytes(message("newcomer"))
        os.rename(self.root / "tmp" / base, self.root / "new" / base)

    def files_of(self, subject: str, folder: Path | None = None) -> list[str]:
        """The names of the files (new/ and cur/) holding the message ``subject``."""
        found = []
        for sub in ("new", "cur"):
            d = (folder or self.root) / sub
            for fn in os.listdir(d):
                if f"Subject: {subject}\r\n".encode() in (d / fn).read_bytes():
                    found.append(fn)
        return found


class InlineLooks(Renumbering, IMAPTestCase):
    """No store worker: a look gives the UIDs itself (the list written inline)."""

    def setUp(self) -> None:
        super().setUp()
        self.root = self.store.root / "example.org" / "alice"
        folder = self.folder()
        for n in range(3):
            folder.append(message(f"m{n}"))
        folder.expunge([1])
        self.a = self.login()
        self.b = self.login()

    def renumbered_by_b(self) -> None:
        self.lose_the_list()
        self.b.send("b1 NOOP\r\n")
        self.assertEqual(self.b.lines(), [BYE])  # (its own look found the new UIDVALIDITY)
        self.assertEqual([m.uid for m in self.folder().sync().messages], [1, 2, 3])

    def test_uid_fetch_of_an_old_uid_never_reads_the_message_numbered_so_now(self) -> None:
        self.renumbered_by_b()
        self.a.send("a1 UID FETCH 2 (BODY.PEEK[])\r\n")
        told = self.a.lines()
        self.assertNotIn("Subject: m2", told)  # the new UID 2
        self.assertEqual(told, [BYE])
        self.assertTrue(self.a.closed)

    def test_fetch_by_sequence_number_neither(self) -> None:
        self.renumbered_by_b()
        self.a.send("a1 FETCH 1:2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
        told = self.a.lines()
        self.assertNotIn("Subject: newcomer", told)
        self.assertEqual(told, [BYE])

    def test_search_matches_no_other_message(self) -> None:
        self.renumbered_by_b()
        self.a.send("a1 SEARCH SUBJECT m2\r\n")  # (m2 is the new UID 2, A's number 1)
        self.assertEqual(self.a.lines(), [BYE])

    def test_uid_store_of_an_old_uid_changes_no_other_message(self) -> None:
        self.renumbered_by_b()
        [before] = self.files_of("m2")
        self.a.send("a1 UID STORE 2 +FLAGS (\\Flagged)\r\n")
        self.assertEqual(self.a.lines(), [BYE])
        self.assertEqual(self.files_of("m2"), [before])

    def test_copy_copies_no_other_message(self) -> None:
        self.renumbered_by_b()
        self.a.send("a1 COPY 1 Trash\r\n")
        self.assertEqual(self.a.lines(), [BYE])
        self.assertEqual(self.files_of("m2", self.root / ".Trash"), [])

    def test_close_expunges_no_other_message(self) -> None:
        # A's \Deleted on m1 (UID 2), then the renumbering: m2 is UID 2 now. CLOSE
        # expunges silently, without a look first (RFC 3501 6.4.2).
        self.a.command("UID STORE 2 +FLAGS.SILENT (\\Deleted)")
        self.b.command("NOOP")
        self.renumbered_by_b()
        self.a.send("a1 CLOSE\r\n")
        self.assertEqual(self.a.lines(), [BYE])
        self.assertEqual(len(self.files_of("m1")), 1)
        self.assertEqual(len(self.files_of("m2")), 1)

    def test_a_sessions_own_store_that_renumbers_changes_no_other_message(self) -> None:
        # The STORE's own look finds the list lost: its UIDs are of the list before.
        self.lose_the_list()
        [before] = self.files_of("m2")
        self.a.send("a1 UID STORE 2 +FLAGS (\\Flagged)\r\n")
        self.assertEqual(self.a.lines(), [BYE])
        self.assertEqual(self.files_of("m2"), [before])
        self.assertEqual(self.files_of("m1")[0].partition(":2,")[2], "")

    def test_a_read_whose_own_look_renumbers_is_refused(self) -> None:
        # Another session's expunge left no state: the read's look numbers anew.
        self.folder().expunge([3])  # (m2: kept for the sessions that know it)
        self.lose_the_list()
        self.a.send("a1 FETCH 1 (BODY.PEEK[])\r\n")  # (UID 2)
        told = self.a.lines()
        self.assertNotIn("Subject: newcomer", told)  # the new UID 2
        self.assertEqual(told, [BYE])

    def test_a_search_pass_begun_before_the_renumbering_resolves_nothing_after(self) -> None:
        folder = self.folder()
        with folder.cache_pass("headers", lambda f: f.read(), bytes, bytes) as p:
            self.assertIn(b"Subject: m1", p.get(2))
            self.renumbered_by_b()
            from mailhub.store.errors import UidValidityChanged

            self.assertRaises(UidValidityChanged, p.get, 2)

    def test_a_copy_whose_own_look_renumbers_is_refused(self) -> None:
        folder, trash = self.folder(), self.folder("Trash")
        self.lose_the_list()
        from mailhub.store.errors import UidValidityChanged

        self.assertRaises(UidValidityChanged, folder.link_copies, [2], trash)
        self.assertEqual(self.files_of("m2", self.root / ".Trash"), [])

    def test_pop3_finds_its_messages_again_by_name(self) -> None:
        # RFC 1939: the maildrop's numbers stay; RETR 1 is m1 still, DELE 1 removes m1.
        drop = open_maildrop(self.store, USER)
        try:
            self.renumbered_by_b()
            first = drop.get("1")
            self.assertIn(b"Subject: m1\r\n", drop.read(first))
            with drop.open(drop.get("2")) as f:
                self.assertIn(b"Subject: m2\r\n", f.read())
            drop.delete(first)
            result = drop.commit()
        finally:
            drop.close()
        self.assertEqual((result.deleted, result.failed), (1, False))
        self.assertEqual(self.files_of("m1"), [])
        self.assertEqual(len(self.files_of("m2")), 1)


class WorkerLooks(Renumbering, SessionsCase):
    """With the store's worker: the renumbering look leaves its write to it."""

    def setUp(self) -> None:
        super().setUp()
        self.root = self.store.root / "example.org" / "alice"
        self.fill(3)
        self.folder().expunge([1])
        self.a = self.selected()
        self.b = self.selected()

    def test_uid_fetch_while_the_new_list_is_written(self) -> None:
        # A's look before the UID FETCH is answered from the list on disk (the old one):
        # B's look built the new state and its write is in flight.
        self.lose_the_list()
        self.b.send("b1 NOOP\r\n")  # (it waits for the write)
        self.a.send("a1 UID FETCH 2:3 (BODY.PEEK[])\r\n")
        told = self.a.lines()
        self.assertNotIn("Subject: m2", told)
        self.assertNotIn("Subject: newcomer", told)
        self.assertEqual(told, [BYE])
        for _ in range(3):
            self.worker.release()
            self.clock.advance(0.1)
        self.b.send("b2 NOOP\r\n")
        self.assertIn(BYE, self.b.lines())

    def test_uid_store_after_the_renumbering(self) -> None:
        self.lose_the_list()
        self.b.send("b1 NOOP\r\n")
        for _ in range(3):
            self.worker.release()
            self.clock.advance(0.1)
        [before] = self.files_of("m2")
        self.a.send("a1 UID STORE 2 +FLAGS (\\Flagged)\r\n")
        for _ in range(3):
            self.worker.release()
            self.clock.advance(0.1)
        self.assertEqual(self.a.lines(), [BYE])
        self.assertEqual(self.files_of("m2"), [before])
