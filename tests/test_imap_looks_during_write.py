"""A session's look while another session's change is being written by the store's worker
(``uidwriter.Flush``) is answered at once from what is on disk (``FolderCore.durable``, the
state of the last list written), not made to wait for the write: nothing of the change in
flight is told before it is on disk, and no session is ever told less than it was already
told or answered (RFC 3501 6.4.6 and 7.4.1: a STORE's answer, an EXPUNGE's) - when the state
on disk is older than that, the look waits for the write as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailhub.imap.view import View
from mailhub.store import uidlist
from mailhub.store.errors import LockBusy
from tests.support.imap import message
from tests.test_store_uidwriter import OffThreadCase, SessionsCase


class LooksDuringAWrite(SessionsCase):
    def setUp(self) -> None:
        super().setUp()
        self.fill(4)
        self.a, self.b, self.c, self.d = (self.selected() for _ in range(4))

    def write(self) -> None:
        """The worker's write in flight ends (and the next one, if any, starts)."""
        self.assertEqual(len(self.worker.queued), 1)
        self.worker.release()
        self.clock.advance(0)

    def test_noop_during_a_write_is_answered_without_the_change(self) -> None:
        self.a.send("a1 STORE 2 +FLAGS (\\Flagged)\r\n")
        self.b.send("b1 NOOP\r\n")
        self.assertEqual(self.a.lines(), [])  # not on disk yet
        self.assertEqual(self.b.lines(), ["b1 OK NOOP completed"])  # at once, without it
        self.write()
        self.assertEqual(self.a.lines()[-1], "a1 OK STORE completed")
        self.b.send("b2 NOOP\r\n")
        self.assertEqual(
            self.b.lines(), ["* 2 FETCH (UID 2 FLAGS (\\Flagged))", "b2 OK NOOP completed"]
        )

    def test_a_store_answered_is_never_taken_back(self) -> None:
        # RFC 3501 6.4.6, imap_stress's store-result rule: several changes join one write;
        # each session, answered once it is on disk, looks during the write after it.
        self.a.send("a1 STORE 1 +FLAGS (\\Seen)\r\n")  # the write in flight
        self.b.send("b1 STORE 3 +FLAGS (\\Answered)\r\n")  # these two join the next write
        self.c.send("c1 STORE 2 +FLAGS (\\Draft)\r\n")
        self.write()
        self.assertEqual(self.a.lines()[-1], "a1 OK STORE completed")
        self.assertEqual(self.b.lines() + self.c.lines(), [])
        self.a.send("a2 NOOP\r\n")  # its own change on disk, the others' not yet
        self.assertEqual(self.a.lines(), ["a2 OK NOOP completed"])
        self.d.send("d1 STORE 4 +FLAGS (\\Flagged)\r\n")  # joins the write after b's and c's
        self.write()
        # d's write in flight: b and c are told their own changes and each other's, not d's
        self.assertEqual(
            self.b.lines(),
            ["* 3 FETCH (FLAGS (\\Answered))", "* 1 FETCH (UID 1 FLAGS (\\Seen))",
             "* 2 FETCH (UID 2 FLAGS (\\Draft))", "b1 OK STORE completed"],
        )  # fmt: skip
        self.assertEqual(
            self.c.lines(),
            ["* 2 FETCH (FLAGS (\\Draft))", "* 1 FETCH (UID 1 FLAGS (\\Seen))",
             "* 3 FETCH (UID 3 FLAGS (\\Answered))", "c1 OK STORE completed"],
        )  # fmt: skip
        for client, tag in ((self.b, "b2"), (self.c, "c2")):
            client.send(f"{tag} NOOP\r\n")
            self.assertEqual(client.lines(), [f"{tag} OK NOOP completed"])
        self.write()
        self.assertEqual(self.d.lines()[-1], "d1 OK STORE completed")
        self.b.send("b3 NOOP\r\n")
        self.assertEqual(
            self.b.lines(), ["* 4 FETCH (UID 4 FLAGS (\\Flagged))", "b3 OK NOOP completed"]
        )

    def test_a_store_that_changed_nothing_waits_for_the_change_it_shows(self) -> None:
        # b's STORE finds \Seen already set by a's change in flight and answers with it:
        # its look may not answer from the list on disk, which lacks \Seen (it would take
        # the flag back); it waits for a's write.
        self.a.send("a1 STORE 1 +FLAGS (\\Seen)\r\n")
        self.b.send("b1 STORE 1 +FLAGS (\\Seen)\r\n")
        self.b.send("b2 NOOP\r\n")
        told = self.b.lines()
        self.assertNotIn("* 1 FETCH (FLAGS ())", told)
        self.assertNotIn("b2 OK NOOP completed", told)
        self.write()
        told += self.b.lines()
        self.assertEqual(told[-1], "b2 OK NOOP completed")
        self.assertEqual([t for t in told if "FETCH" in t], ["* 1 FETCH (FLAGS (\\Seen))"])

    def test_a_store_that_finds_its_flags_set_in_flight_answers_once_on_disk(self) -> None:
        # b's STORE finds \Seen already set by a's change, whose write is still in flight:
        # its answer (the FETCH with \Seen, the tagged OK) tells that change, so it comes
        # only once a's write is on disk - a crash before it would take the flag back.
        self.a.send("a1 STORE 1 +FLAGS (\\Seen)\r\n")
        self.b.send("b1 STORE 1 +FLAGS (\\Seen)\r\n")
        self.assertEqual(self.b.lines(), [])
        self.write()
        self.assertEqual(self.a.lines()[-1], "a1 OK STORE completed")
        self.assertEqual(self.b.lines(), ["* 1 FETCH (FLAGS (\\Seen))", "b1 OK STORE completed"])

    def test_a_store_that_finds_its_flags_set_by_a_failed_write_runs_again(self) -> None:
        # a's write fails: the \Seen b's STORE found is not on disk, b may not tell it -
        # nor fail for a's error: it runs again (reading the list from the file) and answers
        # once the \Seen it tells is on disk (adopted from the file's name by then).
        from twisted.python.failure import Failure

        self.a.send("a1 STORE 1 +FLAGS (\\Seen)\r\n")
        self.b.send("b1 STORE 1 +FLAGS (\\Seen)\r\n")
        _, _, d = self.worker.queued.pop()
        d.errback(Failure(OSError(28, "No space left")))
        self.clock.advance(0)
        self.clock.advance(0.01)
        self.assertEqual(self.b.lines(), [])
        self.assertNotIn("S", self.flags_on_disk(1))
        while self.worker.queued:
            self.worker.release()
            self.clock.advance(0.01)
        self.assertIn("S", self.flags_on_disk(1))
        self.assertEqual(self.a.lines()[-1], "a1 NO [SERVERBUG] Internal server error")
        self.assertEqual(self.b.lines(), ["* 1 FETCH (FLAGS (\\Seen))", "b1 OK STORE completed"])
        self.flushLoggedErrors(OSError)

    def flags_on_disk(self, uid: int) -> str:
        lst = uidlist.load(Path(self.store.root / "example.org/alice" / uidlist.FILENAME))
        assert lst is not None
        (rec,) = (r for r in lst.records.values() if r.uid == uid)
        return "".join(sorted(rec.flags or ""))

    def test_an_expunge_is_told_once_on_disk(self) -> None:
        self.a.send("a1 STORE 1 +FLAGS.SILENT (\\Deleted)\r\n")
        self.write()
        self.a.lines()
        self.a.send("a2 EXPUNGE\r\n")
        self.b.send("b1 NOOP\r\n")
        self.assertEqual(
            self.b.lines(), ["* 1 FETCH (UID 1 FLAGS (\\Deleted))", "b1 OK NOOP completed"]
        )
        self.b.send("b2 FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
        lines = self.b.lines()
        self.assertIn("Subject: m0", lines)  # still there as far as b knows (RFC 2180 4.1)
        self.assertEqual(lines[-1], "b2 OK FETCH completed")
        self.c.send("c1 STORE 2 +FLAGS (\\Seen)\r\n")  # joins the next write
        self.write()
        # c's write in flight: the expunge is on disk (its state: the one before without
        # message 1), c's change is not
        self.assertEqual(self.a.lines(), ["* 1 EXPUNGE", "a2 OK EXPUNGE completed"])
        self.b.send("b3 NOOP\r\n")
        self.assertEqual(self.b.lines(), ["* 1 EXPUNGE", "b3 OK NOOP completed"])
        self.write()
        self.assertEqual(self.c.lines()[-1], "c1 OK STORE completed")
        self.b.send("b4 NOOP\r\n")
        self.assertEqual(
            self.b.lines(), ["* 1 FETCH (UID 2 FLAGS (\\Seen))", "b4 OK NOOP completed"]
        )

    def test_a_session_is_not_told_an_older_state_than_it_saw(self) -> None:
        self.a.send("a1 STORE 1 +FLAGS (\\Seen)\r\n")
        self.write()
        self.b.send("b1 NOOP\r\n")
        self.assertEqual(
            self.b.lines(), ["* 1 FETCH (UID 1 FLAGS (\\Seen))", "b1 OK NOOP completed"]
        )
        self.c.send("c1 STORE 1 -FLAGS (\\Seen)\r\n")
        self.b.send("b2 NOOP\r\n")  # during c's write: \Seen is still what is on disk
        self.assertEqual(self.b.lines(), ["b2 OK NOOP completed"])
        self.write()
        self.b.send("b3 NOOP\r\n")
        self.assertEqual(self.b.lines(), ["* 1 FETCH (UID 1 FLAGS ())", "b3 OK NOOP completed"])

    def test_an_expunge_of_what_another_session_expunged_meanwhile_is_told(self) -> None:
        # RFC 3501 6.4.3, RFC 6851 3.3 (imap_stress's move-expunges): b's expunge is in
        # flight, a copy of the file kept for a, which still counts it; a's own EXPUNGE
        # of it must tell it, once b's is on disk - not answer from the list that has it.
        self.a.send("a1 STORE 1 +FLAGS.SILENT (\\Deleted)\r\n")
        self.write()
        self.a.lines()
        self.b.send("b1 EXPUNGE\r\n")
        self.a.send("a2 EXPUNGE\r\n")
        self.assertEqual(self.a.lines(), [])
        self.write()
        self.assertEqual(self.b.lines()[-2:], ["* 1 EXPUNGE", "b1 OK EXPUNGE completed"])
        self.assertEqual(self.a.lines(), ["* 1 EXPUNGE", "a2 OK EXPUNGE completed"])

    def test_a_store_that_finds_a_message_gone_tells_its_expunge(self) -> None:
        # imap_stress's store-result: a's STORE finds message 1 gone (b's expunge in
        # flight, a copy kept for a): no answer from the list that still has it - the
        # look after it waits for b's write and tells the expunge (UID STORE may).
        self.a.send("a1 STORE 1 +FLAGS.SILENT (\\Deleted)\r\n")
        self.write()
        self.a.lines()
        self.b.send("b1 EXPUNGE\r\n")
        self.a.send("a2 UID STORE 1 +FLAGS (\\Seen)\r\n")
        self.assertEqual(self.a.lines(), [])
        self.write()
        self.assertEqual(self.a.lines(), ["* 1 EXPUNGE", "a2 OK STORE completed"])

    def test_an_append_expunged_by_another_session_meanwhile_still_has_its_uid(self) -> None:
        # RFC 4315 APPENDUID: the message got its UID, and another session expunged it
        # before the APPEND read that UID.
        folder = self.folder()
        placement = folder.prepare_spooled(folder.spool(), 0)
        placement.place()
        uid = folder.sync().messages[-1].uid
        folder.expunge([uid])
        self.assertEqual(folder.adopt(placement), uid)

    def test_a_look_during_the_write_of_new_uids_is_told_the_list_before_them(self) -> None:
        literal = message("new")
        self.a.send(f"a1 APPEND INBOX {{{len(literal)}+}}\r\n".encode() + literal + b"\r\n")
        self.clock.advance(0)
        self.b.send("b1 NOOP\r\n")  # the new message's UID is being written: not told yet
        self.assertEqual(self.b.lines(), ["b1 OK NOOP completed"])
        self.write()
        self.assertTrue(self.a.lines()[-1].startswith("a1 OK [APPENDUID "))
        self.b.send("b2 NOOP\r\n")
        self.assertEqual(self.b.lines(), ["* 5 EXISTS", "* 0 RECENT", "b2 OK NOOP completed"])


class AHalfMadeView(OffThreadCase):
    def test_is_no_reader_of_its_folder(self) -> None:
        # A View whose first look meets a busy lock is left half made (the command runs
        # again later); another session's expunge meanwhile asks the folder's readers
        # what they know: it must not find this one (it has no ``infos`` yet).
        folder = self.folder()
        folder.append(message("m"))

        def busy(**kw: Any) -> Any:
            raise LockBusy("busy", "here")

        self.patch(folder, "sync_taking_recent", busy)
        try:
            View(folder, readonly=False)
        except LockBusy as e:
            held = e  # (the command's retry holds it while it waits: its traceback too)
        else:
            self.fail("no LockBusy")
        self.assertEqual(folder.expunge([1]), [1])
        self.assertIsNotNone(held.__traceback__)
