"""Several sessions on one mailbox, and SMTP delivery into it: what each session is told.

RFC 3501 5.2 and 7.4.1: new mail -> EXISTS, expunges -> EXPUNGE (never while answering FETCH,
STORE or SEARCH, whose UID forms are fine), flag changes -> untagged FETCH; sequence numbers
stay right for every session.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from mailhub.envelope import Envelope, Recipient
from mailhub.store import MailStore, scan
from mailhub.store.delivery import GroupCommitter, MaildirSink
from tests.support.imap import USER, IMAPTestCase, message


class TwoSessions(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        for n in range(3):
            self.deliver(message(f"m{n}"))
        self.a = self.login()
        self.b = self.login()

    def test_expunge_by_another_waits_until_allowed(self) -> None:
        self.a.run("""
            C: a1 STORE 2 +FLAGS.SILENT (\\Deleted)
            S: a1 OK STORE completed
            C: a2 EXPUNGE
            S: * 2 EXPUNGE
            S: a2 OK EXPUNGE completed
        """)
        # B still has three messages: not told during FETCH; message 2 is gone, but B may
        # still read it until it is told (RFC 2180 4.1.1, as Dovecot and Cyrus do).
        self.b.run("""
            C: b1 FETCH 1:3 (UID)
            S: * 1 FETCH (UID 1)
            S: * 2 FETCH (UID 2)
            S: * 3 FETCH (UID 3)
            S: b1 OK FETCH completed
            C: b2 FETCH 2 (BODY.PEEK[HEADER.FIELDS (Subject)])
            S: * 2 FETCH (BODY[HEADER.FIELDS (Subject)] {15}
            S: Subject: m1
            S:
            S: )
            S: b2 OK FETCH completed
            C: b3 STORE 3 +FLAGS (\\Flagged)
            S: * 3 FETCH (FLAGS (\\Flagged))
            S: b3 OK STORE completed
            C: b4 NOOP
            S: * 2 EXPUNGE
            S: b4 OK NOOP completed
            C: b5 FETCH 2 (UID FLAGS)
            S: * 2 FETCH (UID 3 FLAGS (\\Flagged))
            S: b5 OK FETCH completed
        """)

    def test_uid_fetch_may_report_the_expunge(self) -> None:
        self.a.command("STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.a.command("EXPUNGE")
        self.b.run("""
            C: b1 UID FETCH 1:* (FLAGS)
            S: * 1 EXPUNGE
            S: * 1 FETCH (UID 2 FLAGS ())
            S: * 2 FETCH (UID 3 FLAGS ())
            S: b1 OK FETCH completed
        """)

    def test_flag_changes_of_another_are_reported(self) -> None:
        self.a.command("STORE 3 +FLAGS (\\Seen $Done)")
        self.b.run("""
            C: b1 NOOP
            S: * FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Done)
            S: * OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Done \\*)]...
            S: * 3 FETCH (UID 3 FLAGS (\\Seen $Done))
            S: b1 OK NOOP completed
            C: b2 NOOP
            S: b2 OK NOOP completed
        """)

    def test_flag_changes_carry_modseq_with_condstore(self) -> None:
        self.b.command("ENABLE CONDSTORE")
        self.a.command("STORE 1 +FLAGS (\\Answered)")
        modseq = self.folder().sync().messages[0].modseq
        self.b.run(f"""
            C: b1 NOOP
            S: * 1 FETCH (UID 1 FLAGS (\\Answered) MODSEQ ({modseq}))
            S: b1 OK NOOP completed
        """)

    def test_new_mail_goes_recent_to_one_session_only(self) -> None:
        self.deliver(message("new"))
        self.a.run("""
            C: a1 NOOP
            S: * 4 EXISTS
            S: * 4 RECENT
            S: a1 OK NOOP completed
            C: a2 FETCH 4 FLAGS
            S: * 4 FETCH (FLAGS (\\Recent))
            S: a2 OK FETCH completed
        """)
        self.b.run("""
            C: b1 NOOP
            S: * 4 EXISTS
            S: * 0 RECENT
            S: b1 OK NOOP completed
            C: b2 FETCH 4 FLAGS
            S: * 4 FETCH (FLAGS ())
            S: b2 OK FETCH completed
        """)

    def test_expunge_and_new_mail_while_idle(self) -> None:
        self.b.run("""
            C: b1 IDLE
            S: + idling
        """)
        self.a.command("STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.a.command("EXPUNGE")
        self.clock.advance(1.0)
        self.b.run("""
            S: * 1 EXPUNGE
        """)
        self.deliver(message("late"))
        self.clock.advance(1.0)
        self.b.run("""
            S: * 3 EXISTS
            S: * 1 RECENT
            C: DONE
            S: b1 OK IDLE terminated
        """)


SYSTEM = "\\Seen \\Answered \\Flagged \\Deleted \\Draft"


def announced(*keywords: str, readonly: bool = False) -> str:
    """The dialog lines of RFC 3501 7.2.6's FLAGS (and PERMANENTFLAGS) with these keywords."""
    flags = " ".join((SYSTEM, *keywords))
    if readonly:
        permanent = "* OK [PERMANENTFLAGS ()] Read-only mailbox"
    else:
        permanent = f"* OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted"
    return f"S: * FLAGS ({flags})\nS: {permanent}"


class KeywordsAnnounced(IMAPTestCase):
    """RFC 3501 7.2.6: a keyword reaches a client in FLAGS before any FETCH carries it, however
    the session learns of it: its own STORE, another session's change told on any command or
    during IDLE, a new message, or the \\Seen a FETCH sets."""

    def setUp(self) -> None:
        super().setUp()
        for n in range(3):
            self.deliver(message(f"m{n}"))
        self.a = self.login()
        self.b = self.login()

    def test_store_of_a_new_keyword_announces_it_first_and_only_once(self) -> None:
        self.b.run(f"""
            C: b1 STORE 1 +FLAGS ($New)
            {announced("$New")}
            S: * 1 FETCH (FLAGS ($New))
            S: b1 OK STORE completed
            C: b2 STORE 2 +FLAGS ($New)
            S: * 2 FETCH (FLAGS ($New))
            S: b2 OK STORE completed
        """)

    def test_change_by_another_session_on_noop_fetch_and_uid_fetch(self) -> None:
        self.a.command("STORE 1 +FLAGS ($One)")
        # FETCH answers from what B was told, then the update: FLAGS before its FETCH.
        self.b.run(f"""
            C: b1 FETCH 1 FLAGS
            S: * 1 FETCH (FLAGS ())
            {announced("$One")}
            S: * 1 FETCH (UID 1 FLAGS ($One))
            S: b1 OK FETCH completed
        """)
        self.a.command("STORE 2 +FLAGS ($Two)")
        self.b.run(f"""
            C: b2 UID FETCH 2 FLAGS
            {announced("$One", "$Two")}
            S: * 2 FETCH (UID 2 FLAGS ($Two))
            S: * 2 FETCH (UID 2 FLAGS ($Two))
            S: b2 OK FETCH completed
        """)
        self.a.command("STORE 3 +FLAGS ($Three $One)")
        self.b.run(f"""
            C: b3 NOOP
            {announced("$One", "$Three", "$Two")}
            S: * 3 FETCH (UID 3 FLAGS ($One $Three))
            S: b3 OK NOOP completed
        """)

    def test_change_by_another_session_during_idle(self) -> None:
        self.b.run("""
            C: b1 IDLE
            S: + idling
        """)
        self.a.command("STORE 2 +FLAGS ($Idle)")
        self.clock.advance(1.0)
        self.b.run(f"""
            {announced("$Idle")}
            S: * 2 FETCH (UID 2 FLAGS ($Idle))
            C: DONE
            S: b1 OK IDLE terminated
        """)

    def test_examine_repeats_the_read_only_permanentflags(self) -> None:
        self.b.command("EXAMINE INBOX")
        self.a.command("STORE 1 +FLAGS ($Seen2)")
        self.b.run(f"""
            C: b1 NOOP
            {announced("$Seen2", readonly=True)}
            S: * 1 FETCH (UID 1 FLAGS ($Seen2))
            S: b1 OK NOOP completed
        """)

    def test_new_message_with_a_keyword(self) -> None:
        self.a.command("APPEND INBOX ($Appended) {6+}\r\nx: y\r\n")
        self.b.run(f"""
            C: b1 NOOP
            {announced("$Appended")}
            S: * 4 EXISTS
            S: * 0 RECENT
            S: b1 OK NOOP completed
            C: b2 FETCH 4 FLAGS
            S: * 4 FETCH (FLAGS ($Appended))
            S: b2 OK FETCH completed
        """)

    def test_fetch_setting_seen_learns_another_sessions_keyword(self) -> None:
        self.a.command("STORE 1 +FLAGS ($Other)")
        self.b.run(f"""
            C: b1 FETCH 1 BODY[HEADER.FIELDS (Subject)]
            {announced("$Other")}
            S: * 1 FETCH (FLAGS (\\Seen $Other) BODY[HEADER.FIELDS (Subject)] {{15}}
            S: Subject: m0
            S:
            S: )
            S: b1 OK FETCH completed
        """)


class DeliveryDuringIdle(IMAPTestCase, TestCase):
    async def test_smtp_delivery_shows_within_a_second(self) -> None:
        client = self.login()
        client.run("""
            C: a1 IDLE
            S: + idling
        """)
        committer = GroupCommitter(threads=2)
        committer.startService()
        self.addCleanup(committer.stopService)
        sink = MaildirSink(self.store, committer)
        incoming = sink.open(
            Envelope(queue_id="Q1", mail_from="bob@example.net", recipients=[Recipient(USER, USER)])
        )
        incoming.write(message("via smtp"))
        await incoming.commit()  # the real delivery path: fsync'd into new/
        self.clock.advance(0.5)
        self.assertEqual(client.lines(), [])
        self.clock.advance(0.5)
        client.run("""
            S: * 1 EXISTS
            S: * 1 RECENT
            C: DONE
            S: a1 OK IDLE terminated
            C: a2 FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])
            S: * 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {21}
            S: Subject: via smtp
            S:
            S: )
            S: a2 OK FETCH completed
        """)


class AnotherProcess(IMAPTestCase):
    """Another mailhub process (its own MailStore on the same directory) changes the mailbox
    within the second after our last look, when directory times cannot be trusted and the
    listing is re-read: what did not change the listing must still be seen."""

    def setUp(self) -> None:
        super().setUp()
        for n in range(3):
            self.deliver(message(f"m{n}"))
        self.a = self.login()
        self.elsewhere = MailStore(self.store.root, hostname="node2.example.org")

    def test_keyword_only_change_is_seen(self) -> None:
        # Only the UID list changes (keywords are not in file names): the listing is the same.
        folder = self.elsewhere.mailbox(USER).folder()
        folder.sync()
        folder.store_flags([2], "add", keywords=["$Done"])
        self.a.run("""
            C: a1 NOOP
            S: * FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Done)
            S: * OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Done \\*)]...
            S: * 2 FETCH (UID 2 FLAGS ($Done \\Recent))
            S: a1 OK NOOP completed
            C: a2 NOOP
            S: a2 OK NOOP completed
        """)

    def test_flag_rename_and_delivery_are_seen(self) -> None:
        folder = self.elsewhere.mailbox(USER).folder()
        folder.sync()
        folder.store_flags([1], "add", ["F"])
        folder.append(message("from node2"))
        self.a.run("""
            C: a1 NOOP
            S: * 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))
            S: * 4 EXISTS
            S: * 4 RECENT
            S: a1 OK NOOP completed
        """)


class AnswersFromALookAfterTheCommand(IMAPTestCase):
    """A command's untagged responses come from a look at the folder begun after the command
    started - its own (STORE, UID commands, APPEND, COPY look first), another session's or
    the feed's - rather than listing new/ and cur/ once more for each answer. A look begun
    before the command is not enough: it may have missed what the client saw done before it
    sent the command."""

    def setUp(self) -> None:
        super().setUp()
        for n in range(3):
            self.deliver(message(f"m{n}"))
        self.a = self.login()
        self.b = self.login()
        self.elsewhere = MailStore(self.store.root, hostname="node2.example.org")

    def listings(self) -> list[str]:
        seen: list[str] = []
        real = os.listdir

        def listdir(path: str) -> list[str]:
            seen.append(os.path.basename(path))
            return real(path)

        self.patch(scan.os, "listdir", listdir)
        return seen

    def test_a_change_made_after_another_sessions_look_is_told(self) -> None:
        self.b.command("NOOP")  # our process looks at the folder
        self.elsewhere.mailbox(USER).folder().append(message("from node2"))
        self.a.run("""
            C: a1 NOOP
            S: * 4 EXISTS
            S: * 4 RECENT
            S: a1 OK NOOP completed
        """)

    def test_store_answers_from_its_own_look(self) -> None:
        seen = self.listings()
        self.a.run("""
            C: a1 STORE 1 +FLAGS (\\Flagged)
            S: * 1 FETCH (FLAGS (\\Flagged \\Recent))
            S: a1 OK STORE completed
        """)
        self.assertEqual(sorted(seen), ["cur", "new"], "one look: STORE's own")
        del seen[:]
        self.b.run("""
            C: b1 NOOP
            S: * 1 FETCH (UID 1 FLAGS (\\Flagged))
            S: b1 OK NOOP completed
        """)
        self.assertEqual(sorted(seen), ["cur", "new"], "B's NOOP looks for itself")


class DeliveryDuringSelect(IMAPTestCase):
    """SELECT takes \\Recent (new/ -> cur/) and then builds the session's view from the state
    the folder kept through its own renames, without reading the directories again. Mail that
    lands between the two is not in the SELECT answer: it must come with the next command, even
    one that may not announce expunges (RFC 3501 7.4.1 allows EXISTS during FETCH)."""

    def setUp(self) -> None:
        super().setUp()
        for n in range(2):
            self.deliver(message(f"m{n}"))
        # (The folder's new/ -> cur/ part: SELECT's sync_taking_recent calls it too.)
        recent = self.folder()._recent
        take_recent = recent.take_recent

        def take_then_deliver(uids):  # type: ignore[no-untyped-def]
            moved = take_recent(uids)
            if not self.delivered:
                self.delivered = True
                self.deliver(message("during select"))
            return moved

        self.delivered = False

        self.patch(recent, "take_recent", take_then_deliver)

    def test_delivery_is_told_on_the_next_fetch(self) -> None:
        client = self.login(select=None)
        client.run("""
            C: a1 SELECT INBOX
            S: ...
            S: * 2 EXISTS
            S: * 2 RECENT
            S: ...
            S: a1 OK [READ-WRITE] SELECT completed
            C: a2 FETCH 1:2 (UID)
            S: * 1 FETCH (UID 1)
            S: * 2 FETCH (UID 2)
            S: * 3 EXISTS
            S: * 3 RECENT
            S: a2 OK FETCH completed
            C: a3 FETCH 3 (UID FLAGS)
            S: * 3 FETCH (UID 3 FLAGS (\\Recent))
            S: a3 OK FETCH completed
        """)
        # All three were taken (moved to cur/) by this session, as another process sees.
        elsewhere = MailStore(self.store.root, hostname="node2.example.org")
        state = elsewhere.mailbox(USER).folder().sync()
        self.assertEqual([(m.uid, m.recent) for m in state.messages], [(1, 0), (2, 0), (3, 0)])


class DeliveryDuringColdSelect(IMAPTestCase):
    """The first SELECT of a folder this process never indexed moves new/ -> cur/ between
    writing the UID list and building the state. Another process's delivery that lands during
    those renames is not in the SELECT answer (it has no UID yet); the next command tells it
    (EXISTS, \\Recent to this session)."""

    def setUp(self) -> None:
        super().setUp()
        self.new = self.folder()._path / "new"
        for n in range(2):
            self.drop(n)
        real = os.rename

        def rename(src, dst, **dir_fds):  # type: ignore[no-untyped-def]
            real(src, dst, **dir_fds)
            if dir_fds and not self.delivered:  # SELECT's first move new/ -> cur/
                self.delivered = True
                self.drop(2)  # another process's delivery

        self.delivered = False
        self.patch(os, "rename", rename)

    def drop(self, n: int) -> None:
        data = message(f"m{n}")
        base = f"{1_700_000_000 + n}.M0P77Q{n}.other.host,S={len(data)}"
        (self.new.parent / "tmp" / base).write_bytes(data)
        os.link(self.new.parent / "tmp" / base, self.new / base)
        os.unlink(self.new.parent / "tmp" / base)

    def test_delivery_is_told_on_the_next_command(self) -> None:
        client = self.login(select=None)
        client.run("""
            C: a1 SELECT INBOX
            S: ...
            S: * 2 EXISTS
            S: * 2 RECENT
            S: ...
            S: a1 OK [READ-WRITE] SELECT completed
            C: a2 NOOP
            S: * 3 EXISTS
            S: * 3 RECENT
            S: a2 OK NOOP completed
            C: a3 FETCH 1:3 (UID FLAGS)
            S: * 1 FETCH (UID 1 FLAGS (\\Recent))
            S: * 2 FETCH (UID 2 FLAGS (\\Recent))
            S: * 3 FETCH (UID 3 FLAGS (\\Recent))
            S: a3 OK FETCH completed
        """)
        self.assertTrue(self.delivered)
        self.assertEqual(os.listdir(self.new), [])
