"""IMAP-facing store operations in one process: mod-sequences (RFC 7162), keywords, batched
STORE with UNCHANGEDSINCE, \\Recent hand-over, streaming APPEND, COPY of many, UID list v2."""

from __future__ import annotations

import dataclasses
import io
import os
import time
from pathlib import Path

from mailhub.store import names, sync, uidlist
from mailhub.store.errors import CorruptUidList, InvalidName, MessageGone
from mailhub.store.maildir import Folder
from tests.support.store import StoreTestCase


class ModseqTestCase(StoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.deliver(3)
        self.inbox = self.box.folder()
        self.state = self.inbox.sync()

    def other_process_folder(self, name: str = "INBOX") -> Folder:
        """The same folder as another process sees it (its own MailStore, its own caches)."""
        return self.new_store().mailbox("alice@example.com").folder(name)

    def file_of(self, uid: int) -> Path:
        key = self.inbox.sync().by_uid[uid].key
        for sub in ("cur", "new"):
            for fn in os.listdir(self.inbox_path / sub):
                if fn.split(":")[0] == key:
                    return self.inbox_path / sub / fn
        raise AssertionError(f"no file for UID {uid}")


class StoreFlagsTests(ModseqTestCase):
    def test_new_mail_gets_a_modseq_and_raises_highestmodseq(self) -> None:
        # RFC 7162 3.1.1: new messages are a change; the three were assigned in one go.
        self.assertEqual({m.modseq for m in self.state.messages}, {self.state.highestmodseq})
        before = self.state.highestmodseq
        uid = self.inbox.append(b"Subject: later\r\n\r\n")
        state = self.inbox.sync()
        self.assertGreater(state.highestmodseq, before)
        self.assertEqual(state.by_uid[uid].modseq, state.highestmodseq)

    def test_add_remove_set_flags_and_keywords(self) -> None:
        out = self.inbox.store_flags([1, 2], "add", flags="S", keywords=["$Forwarded"])
        self.assertEqual(out.changed, frozenset({1, 2}))
        self.assertEqual(out.infos[1].flags, frozenset("S"))
        self.assertEqual(out.infos[1].keywords, frozenset({"$Forwarded"}))
        self.assertEqual((out.modified, out.gone), ((), ()))
        self.assertTrue(self.file_of(1).name.endswith(":2,S"))
        out = self.inbox.store_flags([1], "remove", keywords=["$Forwarded"])
        self.assertEqual(out.infos[1].keywords, frozenset())
        self.assertEqual(out.infos[1].flags, frozenset("S"))  # flags untouched by remove
        out = self.inbox.store_flags([2], "set", flags="F", keywords=["Junk"])
        self.assertEqual((out.infos[2].flags, out.infos[2].keywords), (frozenset("F"), {"Junk"}))
        # What sync() reports agrees, in this and in another process.
        for folder in (self.inbox, self.other_process_folder()):
            m = folder.sync().by_uid[2]
            self.assertEqual((m.flags, m.keywords), (frozenset("F"), frozenset({"Junk"})))

    def test_one_modseq_per_call_and_only_for_real_changes(self) -> None:
        self.inbox.store_flags([1], "add", flags="S")
        before = self.inbox.sync()
        out = self.inbox.store_flags([1, 2, 3], "add", flags="S")
        # RFC 7162 3.2: one STORE = one new mod-sequence, shared by what it changed; UID 1
        # already had \Seen, so it is neither changed nor given a new value.
        self.assertEqual(out.changed, frozenset({2, 3}))
        self.assertEqual(out.infos[2].modseq, before.highestmodseq + 1)
        self.assertEqual(out.infos[3].modseq, before.highestmodseq + 1)
        self.assertEqual(out.infos[1].modseq, before.by_uid[1].modseq)
        self.assertEqual(self.inbox.sync().highestmodseq, before.highestmodseq + 1)
        noop = self.inbox.store_flags([1, 2, 3], "add", flags="S")
        self.assertEqual(noop.changed, frozenset())
        self.assertEqual(self.inbox.sync().highestmodseq, before.highestmodseq + 1)

    def test_a_store_of_many_finds_what_another_program_moved_meanwhile(self) -> None:
        # One STORE over many messages, as STORE 1:* runs: the usual ones renamed in one
        # loop (new/ -> cur/ too); one that mutt renamed after our look found again, its
        # flag kept and the change given the STORE's mod-sequence; one removed meanwhile
        # gone; one whose name spells its flags out of ASCII order left as it is.
        self.deliver(3, start=1_700_000_100)
        self.inbox.sync()
        self.inbox.take_recent([2, 3, 4, 5, 6])  # UID 1 stays in new/
        cur = self.inbox_path / "cur"
        key = {m.uid: m.key for m in self.inbox.sync().messages}
        os.rename(cur / f"{key[5]}:2,", cur / f"{key[5]}:2,SF")
        os.rename(cur / f"{key[6]}:2,", cur / f"{key[6]}:2,S")
        self.inbox._core.changed_by_us()  # (within the same second: look again)
        before = self.inbox.sync()
        real = os.rename
        meanwhile: list[int] = []

        def rename(src: str, dst: str, **fds: int) -> None:
            if not meanwhile:  # after our look, before our first rename
                meanwhile.append(1)
                real(cur / f"{key[3]}:2,", cur / f"{key[3]}:2,F")
                os.unlink(cur / f"{key[4]}:2,")
            real(src, dst, **fds)

        self.patch(os, "rename", rename)
        out = self.inbox.store_flags(range(1, 7), "add", flags="S")
        self.patch(os, "rename", real)
        self.assertEqual((out.changed, out.gone), (frozenset({1, 2, 3}), (4,)))
        flags = {uid: "".join(sorted(info.flags)) for uid, info in out.infos.items()}
        self.assertEqual(flags, {1: "S", 2: "S", 3: "FS", 5: "FS", 6: "S"})
        self.assertEqual({out.infos[u].modseq for u in (1, 2, 3)}, {before.highestmodseq + 1})
        self.assertIs(out.infos[5], before.by_uid[5])
        self.assertIs(out.infos[6], before.by_uid[6])
        self.assertEqual(
            sorted(os.listdir(cur)),
            sorted([f"{key[1]}:2,S", f"{key[2]}:2,S", f"{key[3]}:2,FS", f"{key[5]}:2,SF",
                    f"{key[6]}:2,S"]),
        )  # fmt: skip
        self.assertEqual(os.listdir(self.inbox_path / "new"), [])
        for folder in (self.inbox, self.other_process_folder()):
            state = folder.sync()
            self.assertEqual({m.uid: "".join(sorted(m.flags)) for m in state.messages}, flags)
            self.assertEqual(state.by_uid[3].modseq, before.highestmodseq + 1)

    def test_one_index_write_and_one_rename_per_changed_message(self) -> None:
        saves: list[int] = []
        renames: list[str] = []
        real_save, real_rename = uidlist.save, os.rename
        self.patch(uidlist, "save", lambda *a, **k: (saves.append(1), real_save(*a, **k)))
        self.patch(
            os, "rename", lambda a, b, **fds: (renames.append(str(b)), real_rename(a, b, **fds))
        )
        self.inbox.store_flags([1, 2, 3], "add", flags="F", keywords=["x"])
        self.assertEqual(len(saves), 1)
        self.assertEqual(len([r for r in renames if ":2," in r]), 3)
        renames.clear()
        self.inbox.store_flags([1, 2, 3], "add", keywords=["y"])  # keywords only: no rename
        self.assertEqual([r for r in renames if ":2," in r], [])
        self.assertEqual(len(saves), 2)

    def test_unchanged_since(self) -> None:
        first = self.inbox.store_flags([1], "add", flags="F")
        mark = first.infos[1].modseq
        out = self.inbox.store_flags([1, 2], "add", flags="S", unchanged_since=mark - 1)
        # RFC 7162 3.2: UID 1 changed after the client's value: refused, reported, untouched.
        self.assertEqual(out.modified, (1,))
        self.assertEqual(out.changed, frozenset({2}))
        self.assertEqual(out.infos[1].flags, frozenset("F"))
        out = self.inbox.store_flags([1], "add", flags="S", unchanged_since=mark)
        self.assertEqual((out.modified, out.changed), ((), frozenset({1})))
        # A mod-sequence is never 0, so UNCHANGEDSINCE 0 refuses everything.
        out = self.inbox.store_flags([1, 2, 3], "remove", flags="S", unchanged_since=0)
        self.assertEqual(out.modified, (1, 2, 3))
        self.assertEqual(out.changed, frozenset())

    def test_gone_uids(self) -> None:
        self.inbox.expunge([2])
        out = self.inbox.store_flags([1, 2, 42], "add", flags="S")
        self.assertEqual(out.gone, (2, 42))
        self.assertEqual(set(out.infos), {1})
        # Removed by another program since our last sync: gone, nothing renamed into view.
        self.file_of(3).unlink()
        out = self.inbox.store_flags([3], "add", flags="S")
        self.assertEqual(out.gone, (3,))
        self.assertNotIn(3, self.inbox.sync().by_uid)

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, self.inbox.store_flags, [1], "toggle", flags="S")
        self.assertRaises(InvalidName, self.inbox.store_flags, [1], "add", flags=["Seen"])
        for bad in ["two words", "\\Seen", "a]", "", "x" * 101, "ü"]:
            with self.subTest(bad):
                self.assertRaises(InvalidName, self.inbox.store_flags, [1], "add", keywords=[bad])

    def test_keyword_change_seen_by_another_process_in_two_stats(self) -> None:
        other = self.other_process_folder()
        other.sync()
        self.inbox.store_flags([1], "add", keywords=["$Label1"])
        # The index-only change touched cur/, so the other side's cheap sync() notices.
        m = other.sync().by_uid[1]
        self.assertEqual(m.keywords, frozenset({"$Label1"}))
        self.assertEqual(m.modseq, self.inbox.sync().highestmodseq)


class StoreFollowTests(ModseqTestCase):
    """After our STORE the folder keeps a state that follows its own renames and index write:
    the next sync() reads the directories again (their mtimes changed) but rebuilds nothing
    unless what it reads differs, so changes by others, even in the same second, still show."""

    def setUp(self) -> None:
        super().setUp()
        self.inbox.take_recent([1, 2, 3])
        self.inbox.sync()
        self.rebuilds: list[int] = []
        real = sync.Syncer.reconcile

        def reconcile(syncer: sync.Syncer, *args: object) -> None:
            if syncer.core is self.inbox._core:
                self.rebuilds.append(1)
            real(syncer, *args)

        self.patch(sync.Syncer, "reconcile", reconcile)

    def assert_as_rebuilt(self, state: object) -> None:
        self.assertEqual(self.other_process_folder().sync(), state)

    def test_own_renames_need_no_rebuild(self) -> None:
        out = self.inbox.store_flags([1, 3], "add", flags="S")
        state = self.inbox.sync()
        self.assertEqual(self.rebuilds, [])
        self.assertEqual(state.highestmodseq, out.infos[1].modseq)
        self.assertIs(state.by_uid[1], out.infos[1])  # the objects the caller was given
        self.assertEqual([m.flags for m in state.messages], [{"S"}, set(), {"S"}])
        self.assert_as_rebuilt(state)
        # Keywords only (index written, cur/ touched): the same.
        self.inbox.store_flags([2], "add", keywords=["$Done"])
        self.assertEqual(self.inbox.sync().by_uid[2].keywords, {"$Done"})
        self.assertEqual(self.rebuilds, [])
        self.assert_as_rebuilt(self.inbox.sync())

    def test_a_rename_by_another_in_the_same_second_is_seen(self) -> None:
        self.clock.t = time.time()  # the directories' mtimes are within the dirty window
        self.inbox.store_flags([1], "add", flags="S")
        cur = self.inbox_path / "cur"
        mtime = os.stat(cur).st_mtime_ns
        path = self.file_of(3)
        os.rename(path, path.with_name(path.name.split(":")[0] + ":2,F"))  # mutt, same tick
        os.utime(cur, ns=(mtime, mtime))  # a coarse clock: cur/ looks unchanged
        state = self.inbox.sync()
        self.assertEqual(self.rebuilds, [1])
        self.assertEqual(state.by_uid[3].flags, frozenset("F"))
        self.assertEqual(state.by_uid[3].modseq, state.highestmodseq)
        self.assert_as_rebuilt(state)

    def test_a_rename_by_another_after_our_next_sync_in_the_same_second_is_seen(self) -> None:
        self.clock.t = time.time()
        self.inbox.store_flags([1], "add", flags="S")
        self.inbox.sync()  # reads cur/ again, finds what it expects, keeps the state
        self.assertEqual(self.rebuilds, [])
        cur = self.inbox_path / "cur"
        mtime = os.stat(cur).st_mtime_ns
        path = self.file_of(2)
        os.rename(path, path.with_name(path.name.split(":")[0] + ":2,T"))
        os.utime(cur, ns=(mtime, mtime))
        self.assertEqual(self.inbox.sync().by_uid[2].flags, frozenset("T"))
        self.assertEqual(self.rebuilds, [1])

    def test_an_unchanged_listing_in_the_same_second_is_not_parsed_again(self) -> None:
        # Every command syncs (twice) while the mtimes are too young to trust: a listing equal
        # to the last one is the same files, without parsing every name again.
        self.clock.t = time.time()
        self.inbox.store_flags([1], "add", flags="S")
        self.inbox.sync()  # after our renames: the listing is parsed (the scans were edited)
        parsed: list[int] = []
        real = names.files_by_base
        self.patch(names, "files_by_base", lambda listing: (parsed.append(1), real(listing))[1])
        state = self.inbox.sync()
        self.assertIs(self.inbox.sync(), state)
        self.assertEqual((parsed, self.rebuilds), ([], []))
        # A rename by another process changes the listing: parsed again, and seen.
        cur = self.inbox_path / "cur"
        mtime = os.stat(cur).st_mtime_ns
        path = self.file_of(2)
        os.rename(path, path.with_name(path.name.split(":")[0] + ":2,F"))
        os.utime(cur, ns=(mtime, mtime))
        self.assertEqual(self.inbox.sync().by_uid[2].flags, frozenset("F"))
        self.assertEqual(parsed, [1])  # cur/ only: new/ is listed again, the same
        self.assertEqual(self.rebuilds, [1])

    def test_an_index_change_by_another_is_seen(self) -> None:
        other = self.other_process_folder()
        other.sync()
        self.inbox.store_flags([1], "add", flags="S")
        other.store_flags([2], "add", keywords=["Junk"])  # index only; touches cur/
        state = self.inbox.sync()
        self.assertEqual(self.rebuilds, [1])
        self.assertEqual(state.by_uid[2].keywords, {"Junk"})
        self.assertEqual(state.by_uid[1].flags, {"S"})

    def test_nothing_to_do_costs_no_write_and_keeps_every_info(self) -> None:
        self.inbox.store_flags([1, 2, 3], "add", flags="S", keywords=["a"])
        before = self.inbox.sync()
        saves: list[int] = []
        real_save = uidlist.save
        self.patch(uidlist, "save", lambda *a, **k: (saves.append(1), real_save(*a, **k)))
        for mode, flags, kws in (("add", "S", ["a"]), ("remove", "F", ["b"]),
                                 ("set", "S", ["a"]), ("add", "", [])):  # fmt: skip
            out = self.inbox.store_flags([1, 2, 3], mode, flags=flags, keywords=kws)  # type: ignore[arg-type]
            self.assertEqual(out.changed, frozenset(), mode)
            self.assertEqual([out.infos[u] for u in (1, 2, 3)], list(before.messages))
            for uid in (1, 2, 3):
                self.assertIs(out.infos[uid], before.by_uid[uid])
        self.assertEqual(saves, [])
        self.assertIs(self.inbox.sync(), before)

    def test_nothing_to_do_still_adopts_a_rename_by_another(self) -> None:
        self.inbox.store_flags([1, 2], "add", flags="S")
        before = self.inbox.sync().highestmodseq
        path = self.file_of(2)
        key, _, _ = path.name.partition(":")
        os.rename(path, path.with_name(key + ":2,FS"))  # mutt
        # Our scan saw the new name, the list still has the old flags (as after a rescan
        # of a file that moved under a reader): no skipping that one.
        self.inbox._core.entries[key] = ("cur", key + ":2,FS")
        out = self.inbox.store_flags([1, 2], "add", flags="S")
        self.assertEqual(out.changed, frozenset())
        self.assertEqual(out.infos[2].flags, frozenset("FS"))
        self.assertGreater(out.infos[2].modseq, before)

    def test_unchanged_since_is_checked_before_skipping(self) -> None:
        first = self.inbox.store_flags([1], "add", flags="S")
        out = self.inbox.store_flags(
            [1], "add", flags="S", unchanged_since=first.infos[1].modseq - 1
        )
        self.assertEqual(out.modified, (1,))


class ReadMessageTests(ModseqTestCase):
    def test_whole_file_whatever_fstat_said(self) -> None:
        data = b"Subject: x\r\n\r\n" + b"y" * 200_000
        uid = self.inbox.append(data)
        self.assertEqual(self.inbox.read_message(uid), data)
        real_fstat = os.fstat
        for wrong in (-150_000, -1, +1, +50_000):  # grew, shrank, or a short read meanwhile

            def fstat(fd: int, wrong: int = wrong) -> os.stat_result:
                st = list(real_fstat(fd))
                st[6] += wrong  # st_size
                return os.stat_result(st)

            self.patch(os, "fstat", fstat)
            self.assertEqual(self.inbox.read_message(uid), data, wrong)
        self.patch(os, "fstat", real_fstat)
        empty = self.inbox.append(b"")
        self.assertEqual(self.inbox.read_message(empty), b"")

    def test_moved_by_another_reader_then_gone(self) -> None:
        path = self.file_of(2)
        os.rename(path, self.inbox_path / "cur" / (path.name.split(":")[0] + ":2,S"))
        self.assertEqual(self.inbox.read_message(2), b"Subject: x\r\n\r\nbody\r\n")
        self.file_of(2).unlink()
        self.assertRaises(MessageGone, self.inbox.read_message, 2)


class ExternalChangeTests(ModseqTestCase):
    def test_rename_by_another_program_gets_a_new_modseq(self) -> None:
        self.inbox.take_recent([1, 2, 3])
        before = self.inbox.sync()
        path = self.file_of(2)
        os.rename(path, path.with_name(path.name.split(":")[0] + ":2,FS"))  # as mutt does
        self.inbox._core.changed_by_us()  # same second as our scan: no need to wait for mtime
        after = self.inbox.sync()
        self.assertEqual(after.by_uid[2].flags, frozenset("FS"))
        self.assertEqual(after.highestmodseq, before.highestmodseq + 1)
        self.assertEqual(after.by_uid[2].modseq, after.highestmodseq)
        self.assertEqual(after.by_uid[1].modseq, before.by_uid[1].modseq)
        # Recorded: another process (and a restart) agree, without a further change.
        self.assertEqual(self.other_process_folder().sync().by_uid[2].modseq, after.highestmodseq)

    def test_removal_by_another_program_raises_highestmodseq(self) -> None:
        before = self.inbox.sync().highestmodseq
        self.file_of(3).unlink()
        self.inbox._core.changed_by_us()
        state = self.inbox.sync()
        self.assertNotIn(3, state.by_uid)
        self.assertGreater(state.highestmodseq, before)

    def test_our_expunge_raises_highestmodseq(self) -> None:
        before = self.inbox.sync().highestmodseq
        self.assertEqual(self.inbox.expunge([1, 3]), [1, 3])
        self.assertEqual(self.inbox.sync().highestmodseq, before + 1)
        self.assertEqual(self.other_process_folder().sync().highestmodseq, before + 1)

    def test_legacy_flag_methods_bump_modseq_and_keep_keywords(self) -> None:
        # POP3 RETR marking \Seen, SMTP-side tools: the old API goes through the same books.
        self.inbox.store_flags([1], "add", keywords=["Junk"])
        before = self.inbox.sync().highestmodseq
        self.assertEqual(self.inbox.add_flags(1, "S"), frozenset("S"))
        m = self.inbox.sync().by_uid[1]
        self.assertEqual((m.modseq, m.keywords), (before + 1, frozenset({"Junk"})))
        self.assertEqual(self.inbox.set_flags(1, "F"), frozenset("F"))
        self.assertEqual(self.inbox.remove_flags(1, "F"), frozenset())
        m = self.inbox.sync().by_uid[1]
        self.assertEqual((m.modseq, m.keywords), (before + 3, frozenset({"Junk"})))
        self.inbox.expunge([2])
        self.assertRaises(MessageGone, self.inbox.set_flags, 2, "S")

    def test_take_is_not_a_change(self) -> None:
        before = self.inbox.sync()
        self.inbox.take(1)
        after = self.inbox.sync()
        self.assertFalse(after.by_uid[1].recent)
        self.assertEqual(after.highestmodseq, before.highestmodseq)


class TakeRecentTests(ModseqTestCase):
    def test_recent_goes_to_exactly_one_taker(self) -> None:
        other = self.other_process_folder()
        other.sync()
        self.assertEqual(self.inbox.take_recent([1, 3]), [1, 3])
        self.assertEqual(other.take_recent([1, 2, 3]), [2])  # its view was stale: skipped
        self.assertEqual(self.inbox.take_recent([1, 2, 3]), [])
        self.assertEqual(os.listdir(self.inbox_path / "new"), [])
        state = self.inbox.sync()
        self.assertFalse(any(m.recent for m in state.messages))
        self.assertTrue(all(self.file_of(u).name.endswith(":2,") for u in (1, 2, 3)))

    def test_unknown_and_expunged_uids_are_skipped(self) -> None:
        self.inbox.expunge([2])
        self.assertEqual(self.inbox.take_recent([2, 9, 1]), [1])


class ShortReads(io.RawIOBase):
    """A source that hands out at most 1,000 bytes per read, like a socket-backed spool."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = min(len(b), 1000, len(self._data))
        b[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


class ReadOnly:
    """A file-like object with read() only."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)


class AppendFromTests(StoreTestCase):
    DATA = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 20_000

    def test_streams_durably_with_flags_keywords_and_date(self) -> None:
        sent = self.box.folder("Sent")
        synced: list[int] = []
        real_fsync = os.fsync
        self.patch(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
        uid = sent.append_from(
            ShortReads(self.DATA), flags="S", keywords=["$MDNSent"], internaldate=1_000_000_000
        )
        self.assertGreaterEqual(len(synced), 2)  # the file, then its directory
        m = sent.sync().by_uid[uid]
        self.assertEqual((m.flags, m.keywords), (frozenset("S"), frozenset({"$MDNSent"})))
        # Recent whatever its flags (RFC 3501 2.3.2): in new/ until a reader takes it.
        self.assertEqual((m.size, m.internaldate, m.recent), (len(self.DATA), 1_000_000_000, True))
        self.assertEqual(sent.read_message(uid), self.DATA)
        [fn] = os.listdir(self.inbox_path / ".Sent" / "new")
        self.assertTrue(fn.endswith(f",S={len(self.DATA)}:2,S"))
        self.assertEqual(os.stat(self.inbox_path / ".Sent" / "new" / fn).st_mtime, 1_000_000_000)
        self.assertEqual(os.listdir(self.inbox_path / ".Sent" / "tmp"), [])
        # Keywords are in the index: another process sees them.
        other = self.new_store().mailbox("alice@example.com").folder("Sent")
        self.assertEqual(other.sync().by_uid[uid].keywords, frozenset({"$MDNSent"}))

    def test_without_flags_it_is_recent_and_read_only_sources_work(self) -> None:
        drafts = self.box.folder("Drafts")
        uid = drafts.append_from(ReadOnly(b"x" * 70_000))
        m = drafts.sync().by_uid[uid]
        self.assertTrue(m.recent)
        self.assertEqual(drafts.read_message(uid), b"x" * 70_000)

    def test_keywords_when_another_process_assigns_the_uid_first(self) -> None:
        other = self.new_store().mailbox("alice@example.com").folder()
        inbox = self.box.folder()
        real_link = os.link

        def link_then_other_syncs(src: str, dst: str) -> None:
            real_link(src, dst)
            if "/new/" in str(dst):
                other._core.changed_by_us()
                other.sync()  # gives the UID without knowing our keywords

        self.patch(os, "link", link_then_other_syncs)
        uid = inbox.append_from(io.BytesIO(b"x"), keywords=["Junk"])
        self.assertEqual(other.sync().by_uid[uid].keywords, frozenset({"Junk"}))

    def test_source_errors_leave_nothing_behind(self) -> None:
        class Broken(io.RawIOBase):
            def readable(self) -> bool:
                return True

            def readinto(self, b: bytearray) -> int:  # type: ignore[override]
                raise OSError("spool file unreadable")

        inbox = self.box.folder()
        self.assertRaises(OSError, inbox.append_from, Broken())
        self.assertEqual(os.listdir(self.inbox_path / "tmp"), [])
        self.assertEqual(inbox.sync().count, 0)


class CopyManyTests(ModseqTestCase):
    def test_copies_in_uid_order_keeping_flags_keywords_and_dates(self) -> None:
        self.inbox.store_flags([3], "add", flags="F", keywords=["$Forwarded"])
        archive = self.box.folder("Archive")
        pairs = self.inbox.copy_many([3, 1, 3, 77], archive)
        self.assertEqual(pairs, [(1, 1), (3, 2)])
        src, dst = self.inbox.sync(), archive.sync()
        for old, new in pairs:
            a, b = src.by_uid[old], dst.by_uid[new]
            self.assertEqual((b.flags, b.keywords), (a.flags, a.keywords))
            self.assertEqual((b.internaldate, b.size), (a.internaldate, a.size))
            self.assertEqual(archive.read_message(new), self.inbox.read_message(old))
        # Hard links: one inode, two names.
        linked = [fn for fn in os.listdir(self.inbox_path / ".Archive" / "new") if ":2,F" in fn]
        self.assertEqual(os.stat(self.inbox_path / ".Archive" / "new" / linked[0]).st_nlink, 2)
        # Recent in the destination, flags or not (RFC 3501 2.3.2, 6.4.7).
        self.assertEqual([dst.by_uid[new].recent for _, new in pairs], [True, True])

    def test_copies_of_one_second_keep_their_order_past_a_counter_digit(self) -> None:
        # Copies carry their originals' internal date (whole seconds) in their names; the
        # name's counter is not zero-padded ("Q10" sorts before "Q9" as text), so copies of
        # messages from one second must differ in their names' time to keep the UID order.
        import itertools

        from mailhub import safeio

        src = self.box.create_folder("Src")
        for n in range(3):
            src.append(f"Subject: {n}\r\n\r\n".encode(), internaldate=1_700_000_000)
        self.patch(safeio, "_counter", itertools.count(9))  # Q9, Q10, Q11
        archive = self.box.folder("Archive")
        pairs = src.copy_many([1, 2, 3], archive)
        self.assertEqual(pairs, [(1, 1), (2, 2), (3, 3)])
        dst = archive.sync()
        self.assertEqual({dst.by_uid[u].internaldate for u in (1, 2, 3)}, {1_700_000_000})
        self.assertEqual([archive.read_message(u) for u in (1, 2, 3)],
                         [src.read_message(u) for u in (1, 2, 3)])  # fmt: skip

    def test_copy_to_keeps_working(self) -> None:
        self.inbox.store_flags([2], "add", keywords=["Junk"])
        junk = self.box.folder("Junk")
        uid = self.inbox.copy_to(2, junk)
        self.assertEqual(junk.sync().by_uid[uid].keywords, frozenset({"Junk"}))
        self.inbox.expunge([1])
        self.assertRaises(MessageGone, self.inbox.copy_to, 1, junk)

    def test_across_file_systems_falls_back_to_a_copy(self) -> None:
        import errno

        self.inbox.store_flags([1], "add", flags="S", keywords=["k"])
        real_link = os.link

        def no_cross_links(src: str, dst: str) -> None:
            if "/.Trash/" in str(dst) and "/.Trash/" not in str(src):  # message links only
                raise OSError(errno.EXDEV, "cross-device link")
            real_link(src, dst)

        self.patch(os, "link", no_cross_links)
        trash = self.box.folder("Trash")
        pairs = self.inbox.copy_many([1, 2], trash)
        self.assertEqual([p[0] for p in pairs], [1, 2])
        m = trash.sync().by_uid[pairs[0][1]]
        self.assertEqual((m.flags, m.keywords), (frozenset("S"), frozenset({"k"})))
        self.assertEqual(trash.read_message(pairs[1][1]), self.inbox.read_message(2))


class UidListFormatTests(StoreTestCase):
    V1 = (
        b"mailhub-uidlist 1 1700000000 4\n"
        b"1 22 1700000000 1700000000.M0P1Q0.h,S=22\n"
        b"3 22 1700000002 1700000002.M0P1Q2.h,S=22\n"
    )

    def test_version_2_round_trip(self) -> None:
        lst = uidlist.UidList(7, 5, highestmodseq=9)
        lst.records["a b"] = uidlist.UidRecord(1, 10, 100, 3, frozenset("SF"), frozenset({"x"}))
        lst.records["c"] = uidlist.UidRecord(4, 20, 200, 9, frozenset(), frozenset({"x", "$y"}))
        data = uidlist.serialise(lst)
        self.assertEqual(
            data,
            b"mailhub-uidlist 2 7 5 9\nK x $y\n1 10 100 3 FS 0 a b\n4 20 200 9 - 1,0 c\n",
        )
        self.assertEqual(uidlist.parse(data), lst)

    def test_records_out_of_uid_order_are_written_in_uid_order(self) -> None:
        lst = uidlist.UidList(7, 9, highestmodseq=2)
        lst.records["late"] = uidlist.UidRecord(8, 1, 100, 2, frozenset("S"))
        lst.records["early"] = uidlist.UidRecord(2, 1, 100, 1, frozenset())
        self.assertEqual(
            uidlist.serialise(lst),
            b"mailhub-uidlist 2 7 9 2\nK\n2 1 100 1 - - early\n8 1 100 2 S - late\n",
        )

    def test_assign_columns(self) -> None:
        lst = uidlist.UidList(7, 5)
        kw = frozenset({"$x"})
        lst.assign_columns(["a", "b"], [10, 20], [100, 200], [frozenset("S"), frozenset()],
                           [frozenset(), kw], 3)  # fmt: skip
        self.assertEqual(lst.uidnext, 7)
        self.assertEqual(lst.records, {
            "a": uidlist.UidRecord(5, 10, 100, 3, frozenset("S"), frozenset()),
            "b": uidlist.UidRecord(6, 20, 200, 3, frozenset(), kw)})  # fmt: skip
        full = uidlist.UidList(7, uidlist.MAX_UID)
        with self.assertRaises(CorruptUidList):  # all or none
            full.assign_columns(["a", "b"], [1, 1], [1, 1], [frozenset()] * 2, [frozenset()] * 2, 1)
        self.assertEqual((full.records, full.uidnext), ({}, uidlist.MAX_UID))

    def test_records_rendered_from_columns_are_what_serialise_writes(self) -> None:
        # A first scan writes the lines it rendered from its columns; any later write (and
        # another process's) must find the same bytes.
        bases = ["1.M1.h,S=10", "2.M1.h,S=20 x", "3.M1.h,S=30", "4.M\udcff.h,S=1"]
        flags = [frozenset("S"), frozenset(), frozenset("FSa"), frozenset("S")]
        lst = uidlist.UidList(7, 3, highestmodseq=4)
        lst.assign_columns(bases, [10, 20, 30, 1], [1, 2, 3, 4], flags, [frozenset()] * 4, 5)
        lst.highestmodseq = 5
        text = uidlist.render_records(range(3, 7), [10, 20, 30, 1], [1, 2, 3, 4], 5, flags, bases)
        self.assertEqual(len(text), 4)
        self.assertEqual(uidlist.serialise(lst, text), uidlist.serialise(lst))
        self.assertIn(b"\n5 30 3 5 FSa - 3.M1.h,S=30\n", uidlist.serialise(lst, text))
        self.assertEqual(uidlist.parse(uidlist.serialise(lst, text)), lst)
        # Later writes render each record's first fields once: still the same bytes.
        first = uidlist.serialise(lst)
        lst.records[bases[1]].flags = frozenset("T")
        lst.records[bases[1]].modseq = 6
        lst.highestmodseq = 6
        self.assertEqual(uidlist.serialise(lst), first.replace(
            b" 7 7 5\n", b" 7 7 6\n").replace(b"4 20 2 5 - -", b"4 20 2 6 T -"))  # fmt: skip

    def test_lines_kept_from_the_last_write_follow_every_change(self) -> None:
        # serialise keeps each record's line for the next write (a STORE on 10,000 changes
        # few); whatever changed since - in place or by a new record - is rendered again:
        # the bytes are those of a list that never had any kept.
        def fresh(lst: uidlist.UidList) -> bytes:
            records = {b: dataclasses.replace(r) for b, r in lst.records.items()}
            copy = uidlist.UidList(lst.uidvalidity, lst.uidnext, records, lst.highestmodseq)
            self.assertTrue(all(r.line is None for r in records.values()))
            return uidlist.serialise(copy)

        bases = [f"{n}.M1.h,S={n}" for n in range(1, 7)]
        flags = [frozenset("S"), frozenset(), frozenset("FS"), frozenset("S"), frozenset(),
                 frozenset()]  # fmt: skip
        lst = uidlist.UidList(7, 1, highestmodseq=1)
        lst.assign_columns(bases, range(1, 7), range(1, 7), flags, [frozenset()] * 6, 1)
        text = uidlist.render_records(range(1, 7), list(range(1, 7)), list(range(1, 7)), 1,
                                      flags, bases)  # fmt: skip
        self.assertEqual(uidlist.serialise(lst, text), fresh(lst))
        self.assertEqual(uidlist.serialise(lst), fresh(lst))
        self.assertTrue(all(r.line is not None for r in lst.records.values()))  # kept
        recs = lst.records
        lst.highestmodseq = 3
        recs[bases[0]].flags, recs[bases[0]].modseq = frozenset("ST"), 2  # a STORE
        recs[bases[1]].flags = frozenset("R")  # same mod-sequence (a version 1 record adopted)
        recs[bases[2]].keywords, recs[bases[2]].modseq = frozenset({"$x"}), 3
        recs[bases[3]] = dataclasses.replace(recs[bases[3]], flags=frozenset("D"), modseq=3)
        recs[bases[4]].flags = frozenset()  # an equal set, another object: rendered again
        changed = uidlist.serialise(lst)
        self.assertEqual(changed, fresh(lst))
        self.assertIn(b"\n1 1 1 2 ST - 1.M1.h,S=1\n", changed)
        self.assertIn(b"\n2 2 2 1 R - 2.M1.h,S=2\n", changed)
        self.assertIn(b"\n3 3 3 3 FS 0 3.M1.h,S=3\n", changed)
        self.assertIn(b"\n4 4 4 3 D - 4.M1.h,S=4\n", changed)
        self.assertEqual(uidlist.parse(changed), lst)
        # a keyword that comes first in the table renumbers the others' indexes
        recs[bases[0]].keywords, recs[bases[0]].modseq = frozenset({"$a"}), 3
        self.assertEqual(uidlist.serialise(lst), fresh(lst))
        self.assertEqual(uidlist.parse(uidlist.serialise(lst)), lst)

    def test_a_first_lists_columns_stand_for_its_records_until_it_changes(self) -> None:
        # The state of a folder's first list is built from the columns its records were
        # made from (sync.Syncer._build_from_columns): only while they are exactly those.
        bases = [f"{n}.M1.h,S={n}" for n in range(1, 5)]
        flags = [frozenset("S"), frozenset(), frozenset("FS"), frozenset()]

        def first() -> tuple[uidlist.UidList, list[str]]:
            lst = uidlist.UidList(7, 3, highestmodseq=1)
            modseq = lst.next_modseq()
            lst.assign_columns(bases, [1, 2, 3, 4], [5, 6, 7, 8], flags, [frozenset()] * 4,
                               modseq)  # fmt: skip
            lst.columns = uidlist.FirstColumns(3, bases, [1, 2, 3, 4], [5, 6, 7, 8], flags, 2)
            return lst, uidlist.render_records(range(3, 7), [1, 2, 3, 4], [5, 6, 7, 8], 2,
                                               flags, bases)  # fmt: skip

        lst, text = first()
        self.assertIs(lst.first_columns(), lst.columns)
        # The lines kept by the write of a first list (one C loop) are those of any write.
        data = uidlist.serialise(lst, text)
        self.assertEqual(data, uidlist.serialise(dataclasses.replace(lst, records={
            b: dataclasses.replace(r) for b, r in lst.records.items()})))  # fmt: skip
        for r, line in zip(lst.records.values(), text, strict=True):
            self.assertEqual(r.line, (2, r.flags, r.keywords, line))
            self.assertIs(r.line[1], r.flags)  # (kept lines are matched by identity)
        lst.records[bases[1]].flags, lst.records[bases[1]].modseq = frozenset("S"), 3
        lst.next_modseq()  # a STORE
        self.assertIsNone(lst.first_columns())
        self.assertIsNone(lst.columns)
        self.assertIn(b"\n4 2 6 3 S - 2.M1.h,S=2\n", uidlist.serialise(lst))  # (not kept)
        lst, text = first()
        lst.assign(bases[0] + "x", 1, 1, 2)  # new mail (an APPEND under the lock)
        self.assertIsNone(lst.first_columns())
        lst, text = first()
        del lst.records[bases[0]]  # (an expunge takes a mod-sequence too)
        self.assertIsNone(lst.first_columns())
        lst, text = first()
        lst.version = 1
        self.assertIsNone(lst.first_columns())

    def test_damage_is_detected(self) -> None:
        good = b"mailhub-uidlist 2 7 5 9\nK x\n1 10 100 3 S 0 a\n"
        for bad in [
            good.replace(b" 3 S", b" 10 S"),  # modseq above HIGHESTMODSEQ
            good.replace(b" S 0 ", b" S 1 "),  # keyword index out of range
            good.replace(b" S ", b" 1 "),  # not flag letters
            good.replace(b"K x\n", b""),  # keyword table missing
            good.replace(b" 9\n", b" 0\n"),
            good[:-1],
        ]:
            with self.subTest(bad):
                self.assertRaises(CorruptUidList, uidlist.parse, bad)

    def test_version_1_is_read_and_upgraded(self) -> None:
        for i in (0, 2):
            base = names.with_size(f"{1700000000 + i}.M0P1Q{i}.h", 22)
            (self.inbox_path / "cur" / (base + ":2,S")).write_bytes(b"x" * 22)
        (self.inbox_path / uidlist.FILENAME).write_bytes(self.V1)
        state = self.box.folder().sync()
        self.assertEqual([m.uid for m in state.messages], [1, 3])
        self.assertEqual(state.uidvalidity, 1700000000)
        # Flags adopted from the names without a change: everything is mod-sequence 1.
        self.assertEqual(state.highestmodseq, 1)
        self.assertEqual({m.modseq for m in state.messages}, {1})
        self.assertEqual({m.flags for m in state.messages}, {frozenset("S")})
        written = (self.inbox_path / uidlist.FILENAME).read_bytes()
        self.assertTrue(written.startswith(b"mailhub-uidlist 2 1700000000 4 1\n"))
        self.assertIn(b"\n3 22 1700000002 1 S - 1700000002.M0P1Q2.h,S=22\n", written)
