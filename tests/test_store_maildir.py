"""Mailboxes, folders, flags and UIDs of the Maildir store (single process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mailhub.store import maildir, names, uidlist
from mailhub.store.core import Files, tick
from mailhub.store.errors import (
    FolderError,
    FolderExists,
    FolderNotFound,
    InvalidName,
    MailboxNotFound,
    MessageGone,
)
from mailhub.store.store import MailStore
from tests.support.store import ADDRESS, SPECIAL, StoreTestCase, drop


class LayoutTests(StoreTestCase):
    def test_mailbox_layout(self) -> None:
        for sub in ("tmp", "new", "cur"):
            self.assertTrue((self.inbox_path / sub).is_dir())
        self.assertTrue(self.store.has_mailbox(ADDRESS))
        self.assertFalse(self.store.has_mailbox("bob@example.com"))
        self.assertEqual(self.store.mailboxes(), [ADDRESS])
        self.assertEqual(self.box.folder("inbox").name, "INBOX")

    def test_missing_mailbox(self) -> None:
        self.assertRaises(MailboxNotFound, self.store.mailbox, "bob@example.com")
        self.assertFalse((self.root / "example.com" / "bob").exists())

    def test_utf8_localpart(self) -> None:
        self.store.mailbox("jörg@example.com", create=True)
        self.assertTrue((self.root / "example.com" / "jörg" / "cur").is_dir())
        self.assertIn("jörg@example.com", self.store.mailboxes())

    def test_escape_attempts_create_nothing(self) -> None:
        outside = set(Path(self.root).parent.iterdir())
        for address in [
            "../../evil@example.com",
            "x@../..",
            "..@example.com",
            "a/b@c.org",
            "/etc/passwd@x.org",
            "a@/tmp",
            ".x@example.com",
            "a\0@b.org",
        ]:
            with self.subTest(address):
                self.assertRaises(InvalidName, self.store.mailbox, address, create=True)
                self.assertRaises(InvalidName, self.store.has_mailbox, address)
        self.assertEqual(set(Path(self.root).parent.iterdir()), outside)
        self.assertEqual(sorted(os.listdir(self.root)), ["example.com"])
        for name in ["../../x", "a/b", "..", "INBOX.x", ".hidden", "a\x00"]:
            with self.subTest(name):
                self.assertRaises(InvalidName, self.box.create_folder, name)
                self.assertRaises(InvalidName, self.box.folder, name)


class FolderTests(StoreTestCase):
    def test_create_maildir_plus_plus(self) -> None:
        self.box.create_folder("Lists")
        self.box.create_folder("A")
        self.box.create_folder("A.B")
        self.box.create_folder("Entwürfe")
        for d in (".Lists", ".A", ".A.B", ".Entw&APw-rfe", ".Sent"):
            with self.subTest(d):
                path = self.inbox_path / d
                for sub in ("tmp", "new", "cur"):
                    self.assertTrue((path / sub).is_dir())
                marker = path / "maildirfolder"
                self.assertTrue(marker.is_file())
                self.assertEqual(marker.stat().st_size, 0)
        self.assertEqual(
            self.box.list_folders(), ["INBOX", *sorted(["A", "A.B", "Entwürfe", "Lists", *SPECIAL])]
        )
        self.assertRaises(FolderExists, self.box.create_folder, "Lists")
        self.assertRaises(FolderExists, self.box.create_folder, "Sent")
        self.assertRaises(FolderExists, self.box.create_folder, "inbox")

    def test_rename_moves_children_and_uids(self) -> None:
        a = self.box.create_folder("A")
        self.box.create_folder("A.B")
        uid = a.append(b"hello\r\n")
        validity = a.sync().uidvalidity
        self.box.rename_folder("A", "C")
        self.assertEqual(self.box.list_folders(), ["INBOX", *sorted(["C", "C.B", *SPECIAL])])
        self.assertTrue((self.inbox_path / ".C.B" / "maildirfolder").exists())
        self.assertFalse((self.inbox_path / ".A").exists())
        c = self.box.folder("C")
        self.assertEqual(c.read_message(uid), b"hello\r\n")
        self.assertEqual(c.sync().uidvalidity, validity)
        self.assertRaises(FolderNotFound, self.box.folder, "A")

    def test_rename_refusals(self) -> None:
        self.box.create_folder("A")
        self.box.create_folder("B")
        self.assertRaises(FolderError, self.box.rename_folder, "INBOX", "X")
        self.assertRaises(FolderError, self.box.rename_folder, "A", "INBOX")
        self.assertRaises(FolderError, self.box.rename_folder, "A", "A.sub")
        self.assertRaises(FolderExists, self.box.rename_folder, "A", "B")
        self.assertRaises(FolderNotFound, self.box.rename_folder, "Nope", "X")
        self.assertEqual(self.box.list_folders(), ["INBOX", *sorted(["A", "B", *SPECIAL])])

    def test_delete(self) -> None:
        self.box.create_folder("A")
        self.box.create_folder("A.B")
        self.box.folder("A").append(b"x")
        self.box.delete_folder("A")
        # RFC 3501 6.3.4: inferiors are not removed.
        self.assertEqual(self.box.list_folders(), ["INBOX", *sorted(["A.B", *SPECIAL])])
        self.assertEqual(
            sorted(p.name for p in self.inbox_path.iterdir() if p.name[0] == "."),
            sorted([".A.B", *("." + n for n in SPECIAL)]),
        )
        self.assertFalse(
            any(p.name.startswith("mailhub-deleting") for p in self.inbox_path.iterdir())
        )
        self.assertRaises(FolderError, self.box.delete_folder, "INBOX")
        self.assertRaises(FolderNotFound, self.box.delete_folder, "A")

    def test_deleted_folder_object(self) -> None:
        f = self.box.create_folder("Gone")
        self.box.delete_folder("Gone")
        self.assertRaises(FolderNotFound, f.sync)


class UidTests(StoreTestCase):
    def test_uids_ascend_in_arrival_order(self) -> None:
        # Delivered out of name order: UIDs follow the names' timestamps, not readdir order.
        b2 = drop(self.inbox_path, "1700000002.M0P1Q1.h,S=22")
        b1 = drop(self.inbox_path, "1700000001.M0P1Q2.h,S=22")
        b3 = drop(self.inbox_path, "1700000001.M5P1Q3.h,S=22")
        state = self.box.folder().sync()
        self.assertEqual([m.key for m in state.messages], [b1, b3, b2])
        self.assertEqual([m.uid for m in state.messages], [1, 2, 3])
        self.assertEqual(state.uidnext, 4)
        self.assertTrue(all(m.recent for m in state.messages))
        self.assertEqual(state.messages[0].internaldate, 1700000001)
        self.assertTrue((self.inbox_path / "mailhub-uidlist").is_file())
        self.assertFalse((self.inbox_path / "dovecot-uidlist").exists())

    def test_uids_stable_across_take_flags_and_restart(self) -> None:
        keys = self.deliver(3)
        inbox = self.box.folder()
        before = {m.key: m.uid for m in inbox.sync().messages}
        validity = inbox.sync().uidvalidity
        inbox.take(before[keys[0]])
        inbox.set_flags(before[keys[1]], {"S", "F"})
        drop(self.inbox_path, "1700000100.M0P1Q9.h,S=22")
        after = {m.key: m.uid for m in inbox.sync().messages}
        self.assertEqual({k: after[k] for k in keys}, before)
        self.assertEqual(after["1700000100.M0P1Q9.h,S=22"], 4)
        # A fresh store (another process, or after a restart) reads the same list.
        fresh = self.new_store().mailbox(ADDRESS).folder()
        state = fresh.sync()
        self.assertEqual({m.key: m.uid for m in state.messages}, after)
        self.assertEqual(state.uidvalidity, validity)

    def test_vanished_messages_free_no_uids(self) -> None:
        keys = self.deliver(3)
        inbox = self.box.folder()
        inbox.sync()
        (self.inbox_path / "new" / keys[2]).unlink()  # removed by another program
        state = inbox.sync()
        self.assertEqual([m.uid for m in state.messages], [1, 2])
        self.assertEqual(state.uidnext, 4)
        drop(self.inbox_path, "1700000200.M0P1Q1.h,S=22")
        self.assertEqual([m.uid for m in inbox.sync().messages], [1, 2, 4])
        # The list on disk forgot it too.
        lst = uidlist.load(self.inbox_path / "mailhub-uidlist")
        assert lst is not None
        self.assertNotIn(keys[2], lst.records)

    def test_uidvalidity_regenerated_when_list_lost(self) -> None:
        self.deliver(2)
        inbox = self.box.folder()
        first = inbox.sync().uidvalidity
        (self.inbox_path / "mailhub-uidlist").unlink()
        fresh = self.new_store().mailbox(ADDRESS).folder()
        self.clock.t += 5
        state = fresh.sync()
        self.assertNotEqual(state.uidvalidity, first)
        self.assertEqual([m.uid for m in state.messages], [1, 2])

    def test_uidvalidity_changes_even_in_the_same_second(self) -> None:
        self.deliver(1)
        inbox = self.box.folder()
        first = inbox.sync().uidvalidity
        (self.inbox_path / "mailhub-uidlist").write_bytes(b"garbage\n")
        drop(self.inbox_path, "1700000300.M0P1Q1.h,S=22")  # make the next sync look again
        second = inbox.sync().uidvalidity
        self.assertGreater(second, first)
        (self.inbox_path / "mailhub-uidlist").unlink()
        drop(self.inbox_path, "1700000301.M0P1Q1.h,S=22")
        state = inbox.sync()
        self.assertGreater(state.uidvalidity, second)
        self.assertEqual([m.uid for m in state.messages], [1, 2, 3])

    def test_folder_made_again_gets_a_greater_uidvalidity_in_another_process(self) -> None:
        # RFC 3501 2.3.1.1; two MailStores on one tree are two processes' views, and the
        # clock does not move: only the per-user counter can tell the folders apart.
        other = self.new_store().mailbox(ADDRESS)
        self.box.create_folder("Lists").append(b"Subject: a\r\n\r\n1\r\n")
        first = self.box.folder("Lists").sync().uidvalidity
        other.delete_folder("Lists")
        other.create_folder("Lists").append(b"Subject: b\r\n\r\n2\r\n")
        second = self.box.folder("Lists").sync()
        self.assertEqual([m.uid for m in second.messages], [1])
        self.assertGreater(second.uidvalidity, first)
        other.rename_folder("Lists", "Old")
        self.box.create_folder("Lists").append(b"Subject: c\r\n\r\n3\r\n")
        self.assertEqual(other.folder("Old").sync().uidvalidity, second.uidvalidity)
        self.assertGreater(other.folder("Lists").sync().uidvalidity, second.uidvalidity)
        counter = (self.inbox_path / "mailhub-uidvalidity").read_bytes()
        self.assertEqual(int(counter), other.folder("Lists").sync().uidvalidity)

    def test_uidvalidity_counter_starts_above_the_folders_it_finds(self) -> None:
        # A tree from before the counter (or one whose counter file was lost).
        inbox = self.box.folder()
        self.deliver(1)
        taken = inbox.sync().uidvalidity
        lst = uidlist.load(self.inbox_path / "mailhub-uidlist")
        assert lst is not None
        lst.uidvalidity = taken + 1000
        uidlist.save(self.inbox_path / "mailhub-uidlist", lst)
        (self.inbox_path / "mailhub-uidvalidity").unlink(missing_ok=True)
        self.box.create_folder("Fresh")
        self.assertEqual(self.box.folder("Fresh").sync().uidvalidity, taken + 1001)

    def test_corrupt_list_rebuilt(self) -> None:
        self.deliver(2)
        first = self.box.folder().sync().uidvalidity
        (self.inbox_path / "mailhub-uidlist").write_bytes(b"mailhub-uidlist 1 5 3\n2 1 1 x\n1")
        self.clock.t += 5
        state = self.new_store().mailbox(ADDRESS).folder().sync()
        self.assertNotEqual(state.uidvalidity, first)
        self.assertEqual(len(state.messages), 2)

    def test_size_and_date_without_stat(self) -> None:
        # ",S=" and the name's time are trusted: the file's real size/mtime are not consulted.
        drop(self.inbox_path, "1600000000.M1P1Q1.h,S=999", b"short")
        # A foreign name without them is stat()ed once.
        drop(self.inbox_path, "foreign-name", b"12345")
        when = 1650000000
        os.utime(self.inbox_path / "new" / "foreign-name", (when, when))
        msgs = {m.key: m for m in self.box.folder().sync().messages}
        self.assertEqual(msgs["1600000000.M1P1Q1.h,S=999"].size, 999)
        self.assertEqual(msgs["1600000000.M1P1Q1.h,S=999"].internaldate, 1600000000)
        self.assertEqual(msgs["foreign-name"].size, 5)
        self.assertEqual(msgs["foreign-name"].internaldate, when)

    def test_sync_is_two_stats_when_nothing_changed(self) -> None:
        self.deliver(3)
        inbox = self.box.folder()
        state = inbox.sync()

        def no_listdir(path: object) -> None:
            raise AssertionError("sync() rescanned although nothing changed")

        self.patch(os, "listdir", no_listdir)
        self.assertIs(inbox.sync(), state)
        self.assertIs(inbox.sync(), state)

    def test_recent_change_is_rescanned(self) -> None:
        # A directory modified within the dirty window is not trusted (coarse mtimes).
        self.clock.t = time.time()
        inbox = self.box.folder()
        inbox.sync()
        scans = []
        real = os.listdir
        self.patch(os, "listdir", lambda p: scans.append(p) or real(p))
        inbox.sync()
        self.assertTrue(scans)

    def test_folders_share_one_object(self) -> None:
        self.assertIs(self.box.folder(), self.store.mailbox(ADDRESS).folder("INBOX"))


class FirstScanTests(StoreTestCase):
    """The first scan of a folder never indexed, and take_recent() updating the state."""

    def test_uids_in_arrival_order_with_and_without_name_fields(self) -> None:
        # Names with time and size, one without size (stat), one without time (mtime).
        (self.inbox_path / "cur" / "1700000005.M2P1Q1.h,S=22:2,S").write_bytes(b"x\r\n")
        drop(self.inbox_path, "1700000005.M1P1Q2.h,S=22")
        drop(self.inbox_path, "1700000001.M9P1Q3.h")
        odd = drop(self.inbox_path, "oddname,S=22")
        os.utime(self.inbox_path / "new" / odd, (1700000003, 1700000003))
        (self.inbox_path / "cur" / ":2,S").write_bytes(b"x\r\n")  # empty base: no message
        state = self.box.folder().sync()
        self.assertEqual(
            [m.key for m in state.messages],
            ["1700000001.M9P1Q3.h", "oddname,S=22", "1700000005.M1P1Q2.h,S=22",
             "1700000005.M2P1Q1.h,S=22"],
        )  # fmt: skip
        self.assertEqual([m.uid for m in state.messages], [1, 2, 3, 4])
        self.assertEqual([m.internaldate for m in state.messages][:2], [1700000001, 1700000003])

    def test_take_recent_state_equals_a_rebuild(self) -> None:
        self.deliver(5)
        inbox = self.box.folder()
        state = inbox.sync()
        self.assertEqual(inbox.take_recent([2, 4]), [2, 4])
        after = inbox.sync()
        self.assertIsNot(after, state)
        self.assertEqual([m.recent for m in after.messages], [True, False, True, False, True])
        fresh = self.new_store().mailbox(ADDRESS).folder().sync()
        self.assertEqual(after.messages, fresh.messages)
        self.assertEqual(inbox.read_message(4), b"Subject: x\r\n\r\nbody\r\n")
        taken = sorted(f"{m.key}:2," for m in after.messages if m.uid in (2, 4))
        self.assertEqual(sorted(os.listdir(self.inbox_path / "cur")), taken)


class ColdSelectTests(StoreTestCase):
    """The first sync of a big folder never indexed, as a cold IMAP SELECT does it (columns
    built in bulk): what it writes is what any later reader gets."""

    def fill(self) -> list[tuple[str, str]]:
        """A mixed folder: seen and unseen in cur/, new in new/, names sharing a second with
        microseconds of different lengths, a keyword-free flag mix; (subdir, file name)."""
        files = []
        for i in range(60):
            sec = 1_700_000_000 + i // 4  # four names a second
            base = f"{sec}.M{(7 - i % 4) * 10 ** (i % 3)}P9Q{i}.h,S={100 + i}"
            flags = "S" if i % 3 else "FS"
            sub, fn = ("new", base) if i % 10 == 9 else ("cur", f"{base}:2,{flags}")
            (self.inbox_path / sub / fn).write_bytes(b"x" * (100 + i))
            files.append((sub, fn))
        return files

    def uids_elsewhere(self) -> list[list[object]]:
        """(uid, key, flags, size, date, recent) as a separate process reads them."""
        script = (
            "import json, sys\n"
            "from pathlib import Path\n"
            "from mailhub.store.store import MailStore\n"
            "f = MailStore(Path(sys.argv[1]), 'other.host').mailbox(sys.argv[2]).folder()\n"
            "print(json.dumps([[m.uid, m.key, ''.join(sorted(m.flags)), m.size,"
            " m.internaldate, m.recent] for m in f.sync().messages]))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, str(self.root), ADDRESS],
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    @staticmethod
    def rows(state: maildir.FolderState) -> list[list[object]]:
        return [[m.uid, m.key, "".join(sorted(m.flags)), m.size, m.internaldate, m.recent]
                for m in state.messages]  # fmt: skip

    def test_index_is_read_back_unchanged_by_another_process(self) -> None:
        self.fill()
        inbox = self.box.folder()
        state = inbox.sync()
        taken = inbox.take_recent(m.uid for m in state.messages if m.recent)
        self.assertEqual(len(taken), 6)
        after = inbox.current_state()
        assert after is not None
        listed = self.inbox_path / "mailhub-uidlist"
        written = listed.read_bytes()
        self.assertEqual(self.uids_elsewhere(), self.rows(after))
        self.assertEqual(listed.read_bytes(), written)  # it had nothing to add or change
        # Arrival order: by the name's time (seconds, then microseconds), then the name.
        order = sorted(m.key for m in state.messages)
        order.sort(key=lambda b: (*names.time_from_base(b), b))  # type: ignore[misc]
        self.assertEqual([m.key for m in state.messages], order)
        self.assertEqual([m.uid for m in state.messages], list(range(1, 61)))

    def test_bulk_state_equals_one_rebuilt_message_by_message(self) -> None:
        self.fill()
        inbox = self.box.folder()
        state = inbox.sync()
        # Another program flags one message: the next sync rebuilds, reusing what it can.
        m = state.messages[5]
        sub, fn = inbox._core.entries[m.key]
        target = names.format_filename(m.key, m.flags | {"T"})
        os.rename(self.inbox_path / sub / fn, self.inbox_path / "cur" / target)
        inbox._core.changed_by_us()  # (the clock says the directories are old: look anyway)
        rebuilt = inbox.sync()
        self.assertEqual(rebuilt.messages[5].flags, m.flags | {"T"})
        self.assertGreater(rebuilt.messages[5].modseq, m.modseq)
        self.assertEqual(rebuilt.messages[:5] + rebuilt.messages[6:],
                         state.messages[:5] + state.messages[6:])  # fmt: skip
        # A fresh store (bulk path again) agrees with the incremental one.
        self.assertEqual(self.new_store().mailbox(ADDRESS).folder().sync(), rebuilt)

    def test_crash_between_index_write_and_renames_keeps_every_uid(self) -> None:
        # SELECT writes the index (fsync) before it renames new/ -> cur/, and answers after
        # both: a crash part-way through the renames leaves messages in either directory
        # under the same base name, which is what the UIDs are keyed by.
        self.fill()
        state = self.box.folder().sync()
        recent = [m for m in state.messages if m.recent]
        for m in recent[:3]:  # what take_recent had done when the process died
            os.rename(self.inbox_path / "new" / m.key, self.inbox_path / "cur" / f"{m.key}:2,")
        rows = self.rows(state)
        for row in rows:
            if row[1] in {m.key for m in recent[:3]}:
                row[5] = False
        self.assertEqual(self.uids_elsewhere(), rows)
        again = self.new_store().mailbox(ADDRESS).folder()
        self.assertEqual(again.take_recent(m.uid for m in recent), [m.uid for m in recent[3:]])

    def test_select_moves_before_building_and_equals_sync_then_take(self) -> None:
        # sync_taking_recent (SELECT) renames between the index write and the state build;
        # what it returns is what sync() + take_recent() give, and what others read.
        files = self.fill()
        inbox = self.box.folder()
        renames: list[str] = []
        real = os.rename

        def rename(a: str, b: str, **dir_fds: int) -> None:
            if dir_fds:  # new/ -> cur/, names relative to the directories
                renames.append(b)
            real(a, b, **dir_fds)

        self.patch(os, "rename", rename)
        state, taken = inbox.sync_taking_recent()
        self.assertEqual(len(taken), 6)
        self.assertEqual(taken, sorted(taken))
        self.assertFalse(os.listdir(self.inbox_path / "new"))
        self.assertEqual(len(renames), 6, "one rename a message, nothing more")
        self.assertFalse(any(m.recent for m in state.messages))
        self.assertIs(inbox.current_state(), state)
        self.assertIs(inbox.sync(), state)  # its own renames: the listing it expects
        self.assertEqual(self.uids_elsewhere(), self.rows(state))
        # The same as the two steps on a copy never indexed.
        other_root = Path(self.mktemp())
        other_box = other_root / "example.com" / "alice"
        for sub in ("tmp", "new", "cur"):
            (other_box / sub).mkdir(parents=True)
        for sub, fn in files:
            (other_box / sub / fn).write_bytes(b"x")
        other = MailStore(other_root, "test.host", now=self.clock).mailbox(ADDRESS).folder()
        before = other.sync()
        self.assertEqual(other.take_recent(m.uid for m in before.messages if m.recent), taken)
        after = other.current_state()
        assert after is not None
        self.assertEqual([(m.uid, m.key, m.flags, m.recent) for m in after.messages],
                         [(m.uid, m.key, m.flags, m.recent) for m in state.messages])  # fmt: skip
        # Nothing left to take: a second SELECT takes nothing.
        self.assertEqual(inbox.sync_taking_recent(), (state, []))

    def test_select_skips_what_another_reader_took_meanwhile(self) -> None:
        # Another process renames two of new/ between our readdir and our rename: they are
        # \Recent to it, not to us (RFC 3501 2.3.2), and the next sync finds them in cur/.
        self.fill()
        recent = sorted(fn for fn in os.listdir(self.inbox_path / "new"))
        stolen = set(recent[:2])
        real = os.rename

        def rename(src: str, dst: str, **dir_fds: int) -> None:
            base = os.path.basename(src)
            if base in stolen:
                stolen.discard(base)
                other = self.inbox_path / "cur" / f"{base}:2,S"  # the other reader
                real(self.inbox_path / "new" / base, other)
            real(src, dst, **dir_fds)

        self.patch(os, "rename", rename)
        inbox = self.box.folder()
        state, taken = inbox.sync_taking_recent()
        by_key = {m.key: m for m in state.messages}
        self.assertEqual(sorted(taken), sorted(by_key[fn].uid for fn in recent[2:]))
        self.assertEqual([by_key[fn].recent for fn in recent[:2]], [True, True])  # as listed
        self.patch(os, "rename", real)
        later = inbox.sync()
        self.assertIsNot(later, state)
        moved = [later.by_uid[by_key[fn].uid] for fn in recent[:2]]
        self.assertEqual([(m.recent, m.flags) for m in moved], [(False, {"S"})] * 2)
        self.assertEqual(self.uids_elsewhere(), self.rows(later))

    def test_select_failing_half_way_leaves_a_folder_the_next_sync_reads_right(self) -> None:
        self.fill()
        inbox = self.box.folder()
        real = os.rename
        calls = []

        def rename(src: str, dst: str, **dir_fds: int) -> None:
            if dir_fds:  # new/ -> cur/
                calls.append(src)
                if len(calls) == 4:
                    raise PermissionError(13, "denied", src)
            real(src, dst, **dir_fds)

        self.patch(os, "rename", rename)
        self.assertRaises(PermissionError, inbox.sync_taking_recent)
        self.assertIsNone(inbox.current_state())
        self.patch(os, "rename", real)
        state = inbox.sync()
        self.assertEqual([m.recent for m in state.messages].count(True), 3)  # 3 were moved
        self.assertEqual(self.uids_elsewhere(), self.rows(state))
        self.assertEqual(len(inbox.sync_taking_recent()[1]), 3)

    def test_a_message_listed_in_new_and_cur_is_one_message_in_cur(self) -> None:
        # Another reader moved it between our readdir of new/ and that of cur/.
        base = "1700000000.M1P1Q1.h,S=3"
        (self.inbox_path / "cur" / f"{base}:2,S").write_bytes(b"x\r\n")
        files = Files.of_listings({base: base}, {base: f"{base}:2,S"})
        self.assertEqual(list(files), [base])
        self.assertEqual(files.get(base), ("cur", f"{base}:2,S"))
        state = self.box.folder().sync()
        self.assertEqual([(m.key, m.recent, m.flags) for m in state.messages],
                         [(base, False, frozenset("S"))])  # fmt: skip


class FlagTests(StoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.key = self.deliver(1)[0]
        self.inbox = self.box.folder()
        self.uid = self.inbox.sync().messages[0].uid

    def on_disk(self) -> list[str]:
        return sorted(os.listdir(self.inbox_path / "cur")) + sorted(
            os.listdir(self.inbox_path / "new")
        )

    def test_take_moves_new_to_cur(self) -> None:
        self.inbox.take(self.uid)
        self.assertEqual(self.on_disk(), [self.key + ":2,"])
        msg = self.inbox.sync().messages[0]
        self.assertFalse(msg.recent)
        self.assertEqual(msg.flags, frozenset())

    def test_flags_in_ascii_order(self) -> None:
        self.inbox.set_flags(self.uid, {"S", "R", "F"})
        self.assertEqual(self.on_disk(), [self.key + ":2,FRS"])
        self.assertEqual(self.inbox.sync().messages[0].flags, frozenset("FRS"))

    def test_add_remove_keep_unknown_letters(self) -> None:
        cur = self.inbox_path / "cur"
        os.rename(self.inbox_path / "new" / self.key, cur / (self.key + ":2,Sbz"))
        self.inbox.add_flags(self.uid, {"T"})
        self.assertEqual(self.on_disk(), [self.key + ":2,STbz"])
        self.inbox.remove_flags(self.uid, {"S"})
        self.assertEqual(self.on_disk(), [self.key + ":2,Tbz"])
        self.assertEqual(self.inbox.sync().messages[0].flags, frozenset("Tbz"))

    def test_survives_concurrent_rename(self) -> None:
        # Another reader changed the flags after our sync: we find it and keep its flags.
        self.inbox.sync()
        os.rename(self.inbox_path / "new" / self.key, self.inbox_path / "cur" / (self.key + ":2,D"))
        self.assertEqual(self.inbox.add_flags(self.uid, {"S"}), frozenset("DS"))
        with self.inbox.open_message(self.uid) as f:
            self.assertTrue(f.read().startswith(b"Subject"))

    def test_message_gone(self) -> None:
        self.inbox.sync()
        (self.inbox_path / "new" / self.key).unlink()
        self.assertRaises(MessageGone, self.inbox.read_message, self.uid)
        self.assertRaises(MessageGone, self.inbox.set_flags, self.uid, {"S"})
        self.assertRaises(MessageGone, self.inbox.read_message, 12345)

    def test_open_file_survives_expunge(self) -> None:
        f = self.inbox.open_message(self.uid)
        self.addCleanup(f.close)
        self.inbox.expunge([self.uid])
        self.assertTrue(f.read().startswith(b"Subject"))

    def test_bad_flags(self) -> None:
        self.assertRaises(InvalidName, self.inbox.set_flags, self.uid, {"Seen"})
        self.assertEqual(self.on_disk(), [self.key])


class LookedSinceTests(StoreTestCase):
    """``Folder.looked_since(mark)``: the state, only if a sync() begun after tick ``mark``
    made or confirmed it and nothing of ours since left it unknown (IMAP answers a command
    from it instead of listing new/ and cur/ again)."""

    def setUp(self) -> None:
        super().setUp()
        self.deliver(3)
        self.inbox = self.box.folder()
        self.inbox.sync()

    def test_only_a_look_begun_after_the_mark(self) -> None:
        mark = tick()
        self.assertIsNone(self.inbox.looked_since(mark), "the last look was before the mark")
        state = self.inbox.sync()  # nothing changed: it confirms the state
        self.assertIs(self.inbox.looked_since(mark), state)
        self.assertIsNone(self.inbox.looked_since(tick()))

    def test_a_change_by_another_program_before_the_mark_needs_a_look(self) -> None:
        self.deliver(1, start=1_700_000_100)  # after our last look, before the command
        mark = tick()
        self.assertIsNone(self.inbox.looked_since(mark))
        self.assertEqual(self.inbox.sync().count, 4)
        self.assertEqual(self.inbox.looked_since(mark).count, 4)  # type: ignore[union-attr]

    def test_our_own_store_is_in_it(self) -> None:
        mark = tick()
        self.inbox.store_flags([1], "add", ["F"])  # looks, then renames and follows its state
        state = self.inbox.looked_since(mark)
        assert state is not None
        self.assertEqual(state.by_uid[1].flags, frozenset("F"))

    def test_not_after_our_own_expunge(self) -> None:
        mark = tick()
        self.inbox.store_flags([2], "add", ["T"])
        self.inbox.expunge([2])  # the state no longer matches: the next answer must look
        self.assertIsNone(self.inbox.looked_since(mark))
        state = self.inbox.sync()
        self.assertEqual(sorted(state.by_uid), [1, 3])
        self.assertIs(self.inbox.looked_since(mark), state)

    def test_not_after_a_change_of_ours_that_left_the_state_behind(self) -> None:
        mark = tick()
        self.inbox.sync()
        self.inbox._core.changed_by_us()  # as a rename of ours the state did not follow
        self.assertIsNone(self.inbox.looked_since(mark))


class MessageOpsTests(StoreTestCase):
    def test_expunge_and_delete(self) -> None:
        self.deliver(3)
        inbox = self.box.folder()
        inbox.sync()
        self.assertEqual(inbox.expunge([1, 3, 99]), [1, 3])
        self.assertEqual([m.uid for m in inbox.sync().messages], [2])
        self.assertEqual(len(os.listdir(self.inbox_path / "new")), 1)
        inbox.delete(2)
        self.assertRaises(MessageGone, inbox.delete, 2)
        self.assertEqual(inbox.count(), 0)
        self.assertEqual(inbox.sync().uidnext, 4)

    def test_count_and_size(self) -> None:
        self.deliver(3)
        inbox = self.box.folder()
        self.assertEqual(inbox.count(), 3)
        self.assertEqual(inbox.total_size(), 66)

    def test_append(self) -> None:
        self.deliver(2)
        sent = self.box.folder("Sent")
        data = b"From: a@b\r\n\r\nhi\r\n"
        uid = sent.append(data, flags={"S"}, internaldate=1234567890)
        self.assertEqual(uid, 1)
        msg = sent.sync().by_uid[uid]
        self.assertEqual(
            (msg.flags, msg.size, msg.internaldate), (frozenset("S"), len(data), 1234567890)
        )
        self.assertEqual(sent.read_message(uid), data)
        # In new/ with its flags: new to the folder, recent whatever its flags (RFC 3501
        # 2.3.2), until a reader takes it to cur/.
        files = os.listdir(self.inbox_path / ".Sent" / "new")
        self.assertEqual(len(files), 1)
        self.assertTrue(files[0].endswith(f",S={len(data)}:2,S"))
        self.assertTrue(msg.recent)
        self.assertEqual(os.listdir(self.inbox_path / ".Sent" / "tmp"), [])
        self.assertEqual(sent.take_recent([uid]), [uid])
        self.assertEqual(sent.sync().by_uid[uid].flags, frozenset("S"))
        self.assertEqual(os.listdir(self.inbox_path / ".Sent" / "cur"), files)
        # No flags: a new message (in new/, recent).
        uid2 = sent.append(b"x")
        self.assertEqual(uid2, 2)
        self.assertTrue(sent.sync().by_uid[uid2].recent)

    def test_copy_to(self) -> None:
        self.deliver(1)
        inbox = self.box.folder()
        inbox.set_flags(1, {"F"})
        archive = self.box.folder("Archive")
        archive.append(b"older")
        new_uid = inbox.copy_to(1, archive)
        self.assertEqual(new_uid, 2)
        copied = archive.sync().by_uid[new_uid]
        original = inbox.sync().by_uid[1]
        self.assertEqual(copied.flags, frozenset("F"))
        self.assertEqual(copied.internaldate, original.internaldate)
        self.assertEqual(archive.read_message(new_uid), inbox.read_message(1))
        self.assertNotEqual(copied.key, original.key)
        # Changing the copy's flags leaves the original alone (separate names, one inode).
        archive.set_flags(new_uid, set())
        self.assertEqual(inbox.sync().by_uid[1].flags, frozenset("F"))


class StaleTmpTests(StoreTestCase):
    def test_clean_stale_tmp(self) -> None:
        # ctime cannot be set, so move the injected clock 40 hours past the real time instead.
        self.clock.t = time.time() + 40 * 3600
        stale = [self.inbox_path / "tmp" / "stale1", self.inbox_path / ".Sent" / "tmp" / "stale2"]
        for p in stale:
            p.write_bytes(b"x")
        fresh = self.inbox_path / "tmp" / "in-progress"
        fresh.write_bytes(b"x")
        written = self.clock.t - 35 * 3600  # still being written 35 hours "ago"
        os.utime(fresh, (written, written))
        removed = self.store.clean_tmp()
        self.assertEqual(removed, 2)
        self.assertFalse(any(p.exists() for p in stale))
        self.assertTrue(fresh.exists())
        self.assertTrue((self.inbox_path / "tmp").is_dir())

    def test_nothing_stale(self) -> None:
        (self.inbox_path / "tmp" / "new-delivery").write_bytes(b"x")
        self.clock.t = time.time()
        self.assertEqual(self.store.clean_stale_tmp(), 0)
        self.assertTrue((self.inbox_path / "tmp" / "new-delivery").exists())


class Session:
    """A ``maildir.Reader``: knows the UIDs it was last told of."""

    def __init__(self, uids: list[int]) -> None:
        self.uids = set(uids)

    def knows(self, uid: int) -> bool:
        return uid in self.uids


class KeptForReadersTests(StoreTestCase):
    """RFC 2180 4.1.1/4.1.2: a session not yet told of an expunge may still read the message;
    the store keeps its file (a link in tmp/) only while such a session needs it."""

    def setUp(self) -> None:
        super().setUp()
        self.deliver(3)
        self.inbox = self.box.folder()
        self.data = {m.uid: self.inbox.read_message(m.uid) for m in self.inbox.sync().messages}
        self.tmp = self.inbox_path / "tmp"

    def test_reader_not_told_still_reads_until_it_forgets(self) -> None:
        told, untold = Session([1, 2, 3]), Session([1, 2, 3])
        self.inbox.add_reader(told)
        self.inbox.add_reader(untold)
        self.assertEqual(self.inbox.expunge([2], by=told), [2])
        self.assertEqual([m.uid for m in self.inbox.sync().messages], [1, 3])
        self.assertEqual(self.inbox.read_message(2), self.data[2])
        with self.inbox.open_message(2) as f:
            self.assertEqual(f.read(), self.data[2])
        self.assertEqual(len(os.listdir(self.tmp)), 1)
        self.inbox.forget(untold, [2])  # told now
        self.assertEqual(os.listdir(self.tmp), [])
        self.assertRaises(MessageGone, self.inbox.read_message, 2)

    def test_kept_until_every_reader_leaves(self) -> None:
        a, b = Session([1, 2, 3]), Session([1, 2, 3])
        self.inbox.add_reader(a)
        self.inbox.add_reader(b)
        self.inbox.expunge([1, 3])  # by POP3 or the web: neither session was told
        self.assertEqual(len(os.listdir(self.tmp)), 2)
        self.inbox.forget(a)
        self.assertEqual(self.inbox.read_message(3), self.data[3])
        self.inbox.forget(b)
        self.assertEqual(os.listdir(self.tmp), [])

    def test_nothing_is_kept_when_no_other_reader_knows_the_message(self) -> None:
        me, late = Session([1, 2, 3]), Session([1])
        self.inbox.add_reader(me)
        self.inbox.add_reader(late)
        real_link = os.link
        links: list[str] = []
        self.patch(os, "link", lambda src, dst, **kw: (links.append(dst), real_link(src, dst)))
        self.inbox.expunge([2, 3], by=me)
        kept = [p for p in map(str, links) if p.startswith(str(self.tmp))]
        self.assertEqual((kept, os.listdir(self.tmp)), ([], []))
        self.assertRaises(MessageGone, self.inbox.read_message, 2)

    def test_links_of_a_dead_process_are_removed_at_start(self) -> None:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, check=True)  # fmt: skip
        pid = int(dead.stdout)
        host = names.escape_host(self.store.hostname)
        orphan = self.tmp / f"{maildir.KEPT_PREFIX}{pid}.7.{host}"
        mine = self.tmp / f"{maildir.KEPT_PREFIX}{os.getpid()}.8.{host}"
        elsewhere = self.tmp / f"{maildir.KEPT_PREFIX}{pid}.9.other.host"
        for p in (orphan, mine, elsewhere):
            p.write_bytes(b"x")
        self.clock.t = time.time()  # (none of them is 36 hours old)
        self.assertEqual(self.store.clean_stale_tmp(), 1)
        self.assertEqual(sorted(os.listdir(self.tmp)), sorted([mine.name, elsewhere.name]))


class AppendWhileListingRaces(StoreTestCase):
    """A listing taken while another reader renames the file (new/ -> cur/) may miss it
    (POSIX leaves readdir() during a rename unspecified): the message just appended is looked
    for again, not reported gone."""

    def test_a_listing_that_misses_the_new_file_is_taken_again(self) -> None:
        sent = self.box.folder("Sent")
        sent.sync()
        real_listdir = os.listdir
        hidden: list[str] = []

        def listdir_missing_once(path: str) -> list[str]:
            found = real_listdir(path)
            if not hidden and str(path).endswith("/new") and found:
                hidden.append(found[0])  # what a concurrent rename can do to one listing
                return found[1:]
            return found

        self.patch(os, "listdir", listdir_missing_once)
        uid = sent.append(b"From: a@b\r\n\r\nhi\r\n")
        self.assertEqual(len(hidden), 1)  # the first listing did miss it
        self.assertEqual(uid, 1)
        self.assertIn(uid, sent.sync().by_uid)
