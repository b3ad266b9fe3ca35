"""IDLE (RFC 2177) woken up by the store's change feed (mailhub.store.changes), not a timer.

The clock is a ``task.Clock`` that these tests do not advance unless they say so: whatever an
IDLE client is told arrives because the feed fired. What it is told is still what the session's
View finds (EXISTS, EXPUNGE, FETCH FLAGS by RFC 3501's rules), never computed from the event.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from mailhub.envelope import Envelope, Recipient
from mailhub.imap.protocol import IDLE_BUSY_RETRY
from mailhub.store.changes import StoreChanges
from mailhub.store.delivery import GroupCommitter, MaildirSink
from mailhub.store.errors import LockBusy
from tests.support.imap import USER, IMAPTestCase, message

SCAN_INTERVAL = 300.0  # the slow timed scan (other hosts, NFS)


class IdleFeedCase(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        # No inotify on a task.Clock: the feed fires when the test makes it look.
        self.changes = StoreChanges(
            self.store, self.clock, scan_interval=SCAN_INTERVAL, use_inotify=False
        )
        self.factory = self.make_factory(changes=self.changes)
        self.changes.startService()
        self.addCleanup(self.changes.stopService)

    def idle(self, name: str = "a1"):
        client = self.login()
        client.run(f"""
            C: {name} IDLE
            S: + idling
        """)
        # The feed's first look since nobody listened: from here on it knows the store.
        self.clock.advance(0)
        return client


class IdleWokenByTheFeed(IdleFeedCase):
    def test_new_mail_is_told_when_the_feed_fires_without_the_clock_moving(self) -> None:
        client = self.idle()
        self.deliver(message("while idle"))
        self.assertEqual(client.lines(), [])
        self.changes.catch_up()  # the feed looks (inotify would make it)
        client.run("""
            S: * 1 EXISTS
            S: * 1 RECENT
            C: DONE
            S: a1 OK IDLE terminated
        """)

    def test_idle_does_not_poll_every_second_the_timed_scan_is_slow(self) -> None:
        client = self.idle()
        self.deliver(message("from another host"))
        self.clock.advance(1.0)
        self.clock.advance(SCAN_INTERVAL - 2)
        self.assertEqual(client.lines(), [])
        self.clock.advance(1.0)  # the timed scan: a change the feed could not be told of
        client.run("""
            S: * 1 EXISTS
            S: * 1 RECENT
            C: DONE
            S: a1 OK IDLE terminated
        """)

    def test_idle_sets_no_timer_of_its_own(self) -> None:
        def idle_timers() -> list[object]:
            calls = self.clock.getDelayedCalls()
            return [c for c in calls if "idle" in getattr(c.func, "__name__", "")]

        self.idle()
        client = self.login(select=None)  # IDLE in the authenticated state: nothing to watch
        client.run("""
            C: a1 IDLE
            S: + idling
        """)
        self.assertEqual(idle_timers(), [])

    def test_a_touched_mailbox_is_told_on_the_next_reactor_turn(self) -> None:
        client = self.idle()
        self.deliver(message("local"))
        self.changes.touched(USER)
        self.clock.advance(0)
        client.run("""
            S: * 1 EXISTS
            S: * 1 RECENT
        """)

    def test_expunge_and_flags_by_another_session_while_idle(self) -> None:
        for n in range(2):
            self.deliver(message(f"m{n}"))
        other = self.login()
        client = self.idle("b1")
        other.command("STORE 2 +FLAGS.SILENT (\\Flagged)")
        self.changes.catch_up()
        client.run("""
            S: * 2 FETCH (UID 2 FLAGS (\\Flagged))
        """)
        other.command("STORE 1 +FLAGS.SILENT (\\Deleted)")
        other.command("EXPUNGE")
        self.changes.catch_up()
        client.run("""
            S: * 1 EXPUNGE
            C: DONE
            S: b1 OK IDLE terminated
        """)

    def test_changes_in_other_folders_and_mailboxes_do_not_wake_it(self) -> None:
        client = self.idle()
        woken = []
        client.protocol._idle_report = lambda: woken.append(1)  # type: ignore[method-assign]
        self.deliver(message("archived"), folder="Archive")
        self.deliver(message("not yours"), user="bob@example.org")
        self.changes.catch_up()
        self.assertEqual((woken, client.lines()), ([], []))

    def test_done_and_a_lost_connection_stop_listening(self) -> None:
        listening = self.changes.listener_count()
        client = self.idle()
        self.assertEqual(self.changes.listener_count(), listening + 1)
        client.run("""
            C: DONE
            S: a1 OK IDLE terminated
        """)
        self.assertEqual(self.changes.listener_count(), listening)
        client = self.idle("a2")
        client.protocol.connectionLost(None)
        self.assertEqual(self.changes.listener_count(), listening)
        self.deliver()
        self.changes.catch_up()  # nobody to wake: no error either
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_busy_lock_when_woken_is_tried_again_on_the_clock(self) -> None:
        client = self.idle()
        view = client.protocol.view
        assert view is not None
        sync, busy = view.sync, [LockBusy("held by another session")]

        def sync_once_busy(**kwargs: bool) -> list[bytes]:
            if busy:
                raise busy.pop()
            return sync(**kwargs)

        view.sync = sync_once_busy  # type: ignore[method-assign]
        self.deliver(message("while the lock is held"))
        self.changes.catch_up()
        self.assertEqual(client.lines(), [])
        self.changes.catch_up()  # nothing new for the feed: a look is due anyway
        self.clock.advance(IDLE_BUSY_RETRY)
        client.run("""
            S: * 1 EXISTS
            S: * 1 RECENT
        """)

    def test_a_deleted_folder_ends_the_session(self) -> None:
        self.store.mailbox(USER, create=True).create_folder("Lists")
        client = self.login(select="Lists")
        client.run("""
            C: a1 IDLE
            S: + idling
        """)
        self.clock.advance(0)
        self.store.mailbox(USER).delete_folder("Lists")
        self.changes.catch_up()
        client.run("""
            S: * BYE Selected mailbox no longer exists
        """)


class SmtpDeliveryWakesIdle(IdleFeedCase, TestCase):
    async def test_delivery_by_this_process_is_told_without_inotify_or_a_timer(self) -> None:
        client = self.idle()
        committer = GroupCommitter(threads=2)
        committer.startService()
        self.addCleanup(committer.stopService)
        sink = MaildirSink(self.store, committer)
        sink.delivered = self.changes.touched  # as mailhub.service.build wires it
        incoming = sink.open(
            Envelope(queue_id="Q1", mail_from="bob@example.net", recipients=[Recipient(USER, USER)])
        )
        incoming.write(message("via smtp"))
        await incoming.commit()  # the real delivery path: fsync'd into new/
        self.clock.advance(0)  # the next reactor turn, no more
        client.run("""
            S: * 1 EXISTS
            S: * 1 RECENT
            C: DONE
            S: a1 OK IDLE terminated
        """)


class ManySessionsShareOneLook(IdleFeedCase):
    """A change to a folder that many sessions watch costs one look at the disk (the feed's),
    not one per session: with 10,000 IDLE sessions that is the difference (benchmarks/
    idle_10k.py)."""

    def test_sessions_woken_by_the_feed_do_not_list_the_folder_again(self) -> None:
        import os

        clients = [self.idle(f"i{n}") for n in range(20)]
        local, _, domain = USER.rpartition("@")
        new_dir = str(self.store.root / domain / local / "new")  # the INBOX's new/
        listed: list[str] = []
        listdir = os.listdir

        def counting(path: str = ".") -> list[str]:
            listed.append(os.path.normpath(path))
            return listdir(path)

        self.deliver(message("for everybody"))
        self.patch(os, "listdir", counting)
        self.changes.catch_up()
        told = [c.lines() for c in clients]
        self.assertEqual([lines[0] for lines in told], ["* 1 EXISTS"] * 20)
        # RFC 3501 2.3.2: \Recent goes to exactly one session
        recent = sorted(lines[1] for lines in told)
        self.assertEqual(recent, ["* 0 RECENT"] * 19 + ["* 1 RECENT"])
        self.assertEqual(listed.count(new_dir), 1)  # the feed's look, no session's

    def test_a_change_after_the_feed_looked_wakes_the_sessions_again(self) -> None:
        a, b = self.idle("a1"), self.idle("b1")
        self.deliver(message("one"))
        self.changes.catch_up()
        self.assertEqual([a.lines()[0], b.lines()[0]], ["* 1 EXISTS"] * 2)
        self.deliver(message("two"))
        self.changes.catch_up()
        self.assertEqual([a.lines()[0], b.lines()[0]], ["* 2 EXISTS"] * 2)
