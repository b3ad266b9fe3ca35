"""The per-folder cache of derived data (``Folder.cached``, mailhub/store/cache.py)."""

from __future__ import annotations

import os
import tracemalloc
from typing import BinaryIO

from mailhub.store import cache
from mailhub.store.errors import MessageGone
from mailhub.store.maildir import Folder
from tests.support.store import StoreTestCase, drop


class Counter:
    """compute/encode/decode for a cache entry "lines": the number of lines of a message."""

    def __init__(self) -> None:
        self.computed = 0
        self.decoded = 0

    def compute(self, fp: BinaryIO) -> int:
        self.computed += 1
        return sum(1 for _ in fp)

    @staticmethod
    def encode(n: int) -> bytes:
        return b"%d" % n

    def decode(self, data: bytes) -> int:
        self.decoded += 1
        return int(data)

    def get(self, folder: Folder, uid: int, name: str = "lines") -> int:
        return folder.cached(uid, name, self.compute, self.encode, self.decode)


class CacheCase(StoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.inbox = self.box.folder()
        self.uids = [self.inbox.append(b"l\r\n" * (i + 1)) for i in range(5)]
        self.path = self.inbox_path / cache.FILENAME

    def restarted(self) -> Folder:
        """The folder as another process (or this one after a restart) sees it."""
        return self.new_store().mailbox("alice@example.com").folder()


class CacheTests(CacheCase):
    def test_computed_once_kept_decoded_and_persisted(self) -> None:
        c = Counter()
        self.assertEqual([c.get(self.inbox, u) for u in self.uids], [1, 2, 3, 4, 5])
        self.assertEqual([c.get(self.inbox, u) for u in self.uids], [1, 2, 3, 4, 5])
        self.assertEqual((c.computed, c.decoded), (5, 0))
        # A restart (or another process) reads the file: decodes, never recomputes.
        fresh, other = self.restarted(), Counter()
        self.assertEqual([other.get(fresh, u) for u in self.uids], [1, 2, 3, 4, 5])
        self.assertEqual([other.get(fresh, u) for u in self.uids], [1, 2, 3, 4, 5])
        self.assertEqual((other.computed, other.decoded), (0, 5))

    def test_names_are_separate_entries(self) -> None:
        c = Counter()
        c.get(self.inbox, self.uids[0], "a")
        c.get(self.inbox, self.uids[0], "b")
        self.assertEqual(c.computed, 2)
        self.assertRaises(ValueError, c.get, self.inbox, self.uids[0], "no spaces")
        self.assertRaises(ValueError, c.get, self.inbox, self.uids[0], "")

    def test_entries_appended_by_another_process_are_picked_up(self) -> None:
        c, fresh, other = Counter(), self.restarted(), Counter()
        c.get(self.inbox, self.uids[0])
        other.get(fresh, self.uids[0])  # fresh read the file now
        c.get(self.inbox, self.uids[1])  # appended after
        self.assertEqual(other.get(fresh, self.uids[1]), 2)
        self.assertEqual(other.computed, 0)

    def test_undecodable_entry_is_recomputed(self) -> None:
        Counter().get(self.inbox, self.uids[2])

        def picky(data: bytes) -> int:
            raise ValueError("format from another version")

        fresh = self.restarted()
        value = fresh.cached(self.uids[2], "lines", lambda fp: 42, Counter.encode, picky)
        self.assertEqual(value, 42)
        # The new record comes later in the file and wins for everyone.
        self.assertEqual(Counter().get(self.restarted(), self.uids[2]), 42)

    def test_expunged_message(self) -> None:
        c = Counter()
        c.get(self.inbox, self.uids[0])
        self.inbox.expunge([self.uids[0]])
        self.assertRaises(MessageGone, c.get, self.inbox, self.uids[0])

    def test_damaged_file_never_yields_wrong_data(self) -> None:
        c = Counter()
        for u in self.uids[:3]:
            c.get(self.inbox, u)
        data = bytearray(self.path.read_bytes())
        data[-1:] = b"9"  # last record's value flipped: its CRC no longer matches
        self.path.write_bytes(bytes(data) + b"+garbage that is not a record\n")
        fresh, other = self.restarted(), Counter()
        self.assertEqual([other.get(fresh, u) for u in self.uids[:3]], [1, 2, 3])
        self.assertEqual(other.computed, 1)  # only the damaged one
        # Damage triggers compaction: the file is clean again and complete.
        records, end, damaged = cache.parse_records(self.path.read_bytes(), len(cache.HEADER))
        self.assertFalse(damaged)
        self.assertEqual(end, len(self.path.read_bytes()))
        self.assertEqual(sorted(int(r[2]) for r in records), [1, 2, 3])

    def test_incomplete_record_is_a_write_in_progress(self) -> None:
        c = Counter()
        c.get(self.inbox, self.uids[0])
        key = self.inbox.sync().by_uid[self.uids[1]].key
        rec = cache.record(key, "lines", b"2")
        with open(self.path, "ab") as f:
            f.write(rec[:-1])
        fresh, other = self.restarted(), Counter()
        self.assertEqual(other.get(fresh, self.uids[0]), 1)
        with open(self.path, "ab") as f:
            f.write(rec[-1:])  # the writer finishes
        self.assertEqual(other.get(fresh, self.uids[1]), 2)
        self.assertEqual(other.computed, 0)

    def test_expunged_entries_are_collected(self) -> None:
        self.patch(cache, "COMPACT_MIN_DEAD", 0)
        big = self.inbox.append(b"x\r\n" * 1000)
        c = Counter()
        for u in [*self.uids, big]:
            self.inbox.cached(u, "copy", lambda fp: fp.read(), bytes, bytes)
        size_before = self.path.stat().st_size
        self.inbox.expunge([big])
        # The dead bytes outweigh the live ones: the file was rewritten without them.
        self.assertLess(self.path.stat().st_size, size_before - 3000)
        fresh = self.restarted()
        for u in self.uids:
            got = fresh.cached(u, "copy", lambda fp: b"recomputed", bytes, bytes)
            self.assertEqual(got, self.inbox.read_message(u))
        self.assertEqual(c.computed, 0)

    def test_removal_by_another_program_is_collected_on_sync(self) -> None:
        self.patch(cache, "COMPACT_MIN_DEAD", 0)
        c = Counter()
        for u in self.uids:
            c.get(self.inbox, u)
        state = self.inbox.sync()
        doomed = {state.by_uid[u].key for u in self.uids[:4]}
        for sub in ("new", "cur"):  # as mutt or Dovecot would expunge them
            for fn in os.listdir(self.inbox_path / sub):
                if fn.split(":")[0] in doomed:
                    os.unlink(self.inbox_path / sub / fn)
        self.inbox._core.changed_by_us()
        self.inbox.sync()
        records, _, _ = cache.parse_records(self.path.read_bytes(), len(cache.HEADER))
        self.assertEqual([r[0] for r in records], [self.inbox.sync().by_uid[self.uids[4]].key])

    def test_missing_file_is_recreated(self) -> None:
        c = Counter()
        c.get(self.inbox, self.uids[0])
        self.path.unlink()
        c.get(self.inbox, self.uids[1])
        self.assertTrue(self.path.read_bytes().startswith(cache.HEADER))
        self.assertEqual(Counter().get(self.restarted(), self.uids[1]), 2)


class PassTests(CacheCase):
    """``Folder.cache_pass``: one look at the file per command, one append at its end."""

    def run_pass(self, folder: Folder, c: Counter, uids: list[int] | None = None) -> list[int]:
        with folder.cache_pass("lines", c.compute, c.encode, c.decode) as p:
            return [p.get(u) for u in (self.uids if uids is None else uids)]

    def count_writes(self) -> list[int]:
        """Sizes of the os.write() calls on the cache file from now on."""
        writes: list[int] = []
        real = os.write

        def counting(fd: int, data: bytes) -> int:
            if os.readlink(f"/proc/self/fd/{fd}") == str(self.path.absolute()):
                writes.append(len(data))
            return real(fd, data)

        self.patch(os, "write", counting)
        return writes

    def test_computed_once_and_appended_in_one_write_at_the_end(self) -> None:
        c = Counter()
        writes = self.count_writes()
        with self.inbox.cache_pass("lines", c.compute, c.encode, c.decode) as p:
            self.assertEqual([p.get(u) for u in self.uids], [1, 2, 3, 4, 5])
            self.assertEqual([p.get(u) for u in self.uids], [1, 2, 3, 4, 5])
            self.assertEqual(writes, [])  # nothing written while the pass runs
        self.assertEqual(c.computed, 5)
        self.assertEqual(len(writes), 1)
        # The records are whole and found by another process (and by cached()).
        other = Counter()
        self.assertEqual(self.run_pass(self.restarted(), other), [1, 2, 3, 4, 5])
        self.assertEqual([other.get(self.restarted(), u) for u in self.uids], [1, 2, 3, 4, 5])
        self.assertEqual(other.computed, 0)

    def test_many_records_are_appended_in_bounded_batches(self) -> None:
        self.patch(cache, "FLUSH_SIZE", 100)
        writes = self.count_writes()
        self.run_pass(self.inbox, Counter())
        self.assertGreater(len(writes), 1)
        self.assertLessEqual(max(writes), 100 + 120)  # a batch passes the limit by one record

    def test_sees_what_another_process_appended_before_it(self) -> None:
        c, other = Counter(), Counter()
        self.run_pass(self.inbox, c, self.uids[:1])  # our file position is now past uid 0's
        fresh = self.restarted()
        self.run_pass(fresh, other)  # the other process computes the rest and appends
        self.assertEqual(other.computed, 4)
        self.assertEqual(self.run_pass(self.inbox, c), [1, 2, 3, 4, 5])
        self.assertEqual(c.computed, 1)
        self.assertEqual(c.decoded, 4)

    def test_compaction_by_another_process_is_noticed(self) -> None:
        self.patch(cache, "COMPACT_MIN_DEAD", 0)
        c = Counter()
        self.run_pass(self.inbox, c, self.uids[:2])  # we hold the file open
        ino = self.path.stat().st_ino
        # Another process expunges two messages and compacts: a new file replaces ours.
        other = self.restarted()
        Counter().get(other, self.uids[3])
        other.expunge([self.uids[0], self.uids[3]])
        self.assertNotEqual(self.path.stat().st_ino, ino)
        self.assertEqual(len(self.records()), 1)
        # A third process adds a record to the new file; our next pass must find it there.
        Counter().get(self.restarted(), self.uids[2])
        self.inbox.sync()
        self.assertEqual(self.run_pass(self.inbox, c, self.uids[1:3] + self.uids[4:]), [2, 3, 5])
        self.assertEqual((c.computed, c.decoded), (2 + 1, 1))
        # What we append after the compaction lands in the new file: nobody recomputes.
        late = Counter()
        self.assertEqual(self.run_pass(self.restarted(), late, self.uids[1:3]), [2, 3])
        self.assertEqual(self.run_pass(self.restarted(), late, self.uids[4:]), [5])
        self.assertEqual(late.computed, 0)

    def test_compaction_during_a_pass_loses_none_of_its_records(self) -> None:
        self.patch(cache, "COMPACT_MIN_DEAD", 0)
        c = Counter()
        self.run_pass(self.inbox, c, self.uids[:1])
        with self.inbox.cache_pass("lines", c.compute, c.encode, c.decode) as p:
            self.assertEqual(p.get(self.uids[1]), 2)  # deferred: not written yet
            other = self.restarted()
            Counter().get(other, self.uids[3])
            other.expunge([self.uids[0], self.uids[3]])  # compacted meanwhile
        # Our deferred record was appended to the new file, not to the one we had open.
        self.assertIn(self.inbox.sync().by_uid[self.uids[1]].key, [r[0] for r in self.records()])

    def test_replaced_file_still_linked_elsewhere_is_noticed_by_path(self) -> None:
        # NFS keeps a file that is open but replaced as .nfsXXXX (st_nlink stays 1): a pass
        # compares the path's inode too.
        self.patch(cache, "COMPACT_MIN_DEAD", 0)
        c = Counter()
        self.run_pass(self.inbox, c, self.uids[:1])
        os.link(self.path, self.inbox_path / ".nfs-silly-rename")
        other = self.restarted()
        Counter().get(other, self.uids[3])
        other.expunge([self.uids[0], self.uids[3]])
        Counter().get(self.restarted(), self.uids[2])  # only in the new file
        self.assertEqual(self.run_pass(self.inbox, c, self.uids[2:3]), [3])
        self.assertEqual((c.computed, c.decoded), (1, 1))

    def records(self) -> list[tuple[str, str, bytes, int]]:
        records, _, damaged = cache.parse_records(self.path.read_bytes(), len(cache.HEADER))
        self.assertFalse(damaged)
        return records

    def test_single_lookups_notice_compaction_without_a_pass(self) -> None:
        # cached() re-reads on a miss: the replaced file shows as st_nlink == 0 on our
        # descriptor, and the new one is read by path.
        self.patch(cache, "COMPACT_MIN_DEAD", 0)
        c = Counter()
        c.get(self.inbox, self.uids[1])
        ino = self.path.stat().st_ino
        other = self.restarted()
        Counter().get(other, self.uids[0])
        Counter().get(other, self.uids[3])
        other.expunge([self.uids[0], self.uids[3]])
        self.assertNotEqual(self.path.stat().st_ino, ino)
        Counter().get(self.restarted(), self.uids[2])
        self.assertEqual(c.get(self.inbox, self.uids[2]), 3)
        self.assertEqual((c.computed, c.decoded), (1, 1))

    def test_expunged_and_new_messages(self) -> None:
        c = Counter()
        self.run_pass(self.inbox, c, self.uids[2:])
        # Another program removes messages 1 and 3 and delivers a new one.
        state = self.inbox.sync()
        doomed = {state.by_uid[u].key for u in (self.uids[0], self.uids[2])}
        for sub in ("new", "cur"):
            for fn in os.listdir(self.inbox_path / sub):
                if fn.split(":")[0] in doomed:
                    os.unlink(self.inbox_path / sub / fn)
        drop(self.inbox_path, "1700000099.M1P2Q3.other", b"a\r\nb\r\nc\r\nd\r\ne\r\nf\r\n")
        with self.inbox.cache_pass("lines", c.compute, c.encode, c.decode) as p:
            # Not synced yet: what is known of a message stays true (it was immutable), and
            # one never looked at is found gone when its file is.
            self.assertEqual(p.get(self.uids[2]), 3)
            self.assertRaises(MessageGone, p.get, self.uids[0])
        self.inbox._core.changed_by_us()
        state = self.inbox.sync()
        self.assertNotIn(self.uids[0], state.by_uid)
        self.assertNotIn(self.uids[2], state.by_uid)
        new_uid = state.messages[-1].uid
        self.assertNotIn(new_uid, self.uids)
        with self.inbox.cache_pass("lines", c.compute, c.encode, c.decode) as p:
            self.assertRaises(MessageGone, p.get, self.uids[0])
            self.assertRaises(MessageGone, p.get, self.uids[2])  # synced: gone, cached or not
            self.assertEqual(p.get(new_uid), 6)
            self.assertEqual(p.get(self.uids[4]), 5)

    def test_undecodable_record_is_recomputed_in_a_pass(self) -> None:
        Counter().get(self.inbox, self.uids[2])

        def picky(data: bytes) -> int:
            raise ValueError("format from another version")

        fresh = self.restarted()
        with fresh.cache_pass("lines", lambda fp: 42, Counter.encode, picky) as p:
            self.assertEqual(p.get(self.uids[2]), 42)
        self.assertEqual(Counter().get(self.restarted(), self.uids[2]), 42)

    def test_compute_from_the_path(self) -> None:
        paths: list[str] = []

        def by_path(path: str) -> int:
            paths.append(path)
            with open(path, "rb") as f:
                return sum(1 for _ in f)

        with self.inbox.cache_pass("lines", None, Counter.encode, int, compute_path=by_path) as p:  # type: ignore[arg-type]
            self.assertEqual(p.get(self.uids[3]), 4)
        self.assertEqual(len(paths), 1)
        self.assertTrue(paths[0].startswith(str(self.inbox_path)))
        # cached() too; a file renamed meanwhile by another reader (a flag change) is found
        state = self.inbox.sync()
        key = state.by_uid[self.uids[2]].key
        for sub in ("new", "cur"):
            for fn in os.listdir(self.inbox_path / sub):
                if fn.startswith(key):
                    os.rename(self.inbox_path / sub / fn, self.inbox_path / "cur" / f"{key}:2,S")
        got = self.inbox.cached(
            self.uids[2], "lines", None, Counter.encode, int, compute_path=by_path
        )  # type: ignore[arg-type]
        self.assertEqual(got, 3)
        self.assertEqual(paths[-1], f"{self.inbox_path}/cur/{key}:2,S")

    def test_a_pass_finds_a_file_renamed_after_its_look(self) -> None:
        # The pass reads from the path its one look-up found; a reader that renamed the file
        # since (a flag change in another process) makes it look again, not fail.
        paths: list[str] = []

        def by_path(path: str) -> int:
            paths.append(path)
            with open(path, "rb") as f:
                return sum(1 for _ in f)

        key = self.inbox.sync().by_uid[self.uids[2]].key
        with self.inbox.cache_pass("lines", None, Counter.encode, int, compute_path=by_path) as p:  # type: ignore[arg-type]
            self.assertEqual(p.get(self.uids[0]), 1)
            for sub in ("new", "cur"):
                for fn in os.listdir(self.inbox_path / sub):
                    if fn.startswith(key):
                        os.rename(
                            self.inbox_path / sub / fn, self.inbox_path / "cur" / f"{key}:2,S"
                        )
            self.assertEqual(p.get(self.uids[2]), 3)
        self.assertEqual(paths[-1], f"{self.inbox_path}/cur/{key}:2,S")
        other = Counter()  # its record went to the file under the message's base name
        self.assertEqual(other.get(self.restarted(), self.uids[2]), 3)
        self.assertEqual(other.computed, 0)

    def test_a_pass_accounts_its_own_records_by_their_keys(self) -> None:
        # A pass's records, appended in one write, are accounted as the file holds them
        # (each key the size of its own record: what compaction's dead/live sums rest on).
        c = Counter()
        with self.inbox.cache_pass(
            "lines", c.compute, lambda n: b"%d" % n + b" " * 9 * n, int
        ) as p:
            self.assertEqual([p.get(u) for u in self.uids], [1, 2, 3, 4, 5])
        fc = self.inbox._core.cache_file()
        with open(self.path, "rb") as f:
            records, _, damaged = cache.parse_records(f.read(), len(cache.HEADER))
        self.assertFalse(damaged)
        in_file = {(base, name): size for base, name, _, size in records}
        self.assertEqual(len(set(in_file.values())), 5)  # every size differs
        self.assertEqual(fc._sizes, in_file)
        self.assertEqual(fc._live, sum(in_file.values()))

    def test_record_names_a_base_as_the_file_system_does(self) -> None:
        # A base name that is not valid UTF-8 on disk (os.fsdecode's surrogates) is written
        # back as the same bytes and read as the same str.
        base = os.fsdecode(b"1790000000.M1P2Q3.h\xe9te")
        rec = cache.record(base, "lines", b"42")
        self.assertIn(b" lines 1790000000.M1P2Q3.h\xe9te\n42", rec)
        self.assertEqual(
            cache.parse_records(rec, 0), ([(base, "lines", b"42", len(rec))], len(rec), False)
        )


class BigText:
    """An entry "web-text-1" as the web API keeps it: tens of kilobytes per message."""

    def __init__(self) -> None:
        self.computed = 0

    def compute(self, fp: BinaryIO) -> bytes:
        self.computed += 1
        return fp.read() * 10000

    def get(self, folder: Folder, uid: int) -> bytes:
        return folder.cached(uid, "web-text-1", self.compute, bytes, bytes)


class UnaskedNames(CacheCase):
    """A process keeps the bytes of records only for entry names it asked for (an IMAP
    process never holds the web API's search texts), and finds the others when it asks."""

    def setUp(self) -> None:
        super().setUp()
        self.patch(cache, "COMPACT_MIN_DEAD", 0)
        self.expected = [b"l\r\n" * (i + 1) * 10000 for i in range(5)]

    def imap_process(self) -> Folder:
        """Another process that uses only "lines", after it has read the whole file."""
        folder = self.restarted()
        self.assertEqual(Counter().get(folder, self.uids[0]), 1)
        return folder

    def test_records_of_unasked_names_are_not_held(self) -> None:
        web = BigText()
        for u in self.uids:
            web.get(self.inbox, u)
            Counter().get(self.inbox, u)
        self.assertGreater(self.path.stat().st_size, 400_000)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            imap = self.imap_process()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertLess(held, 50_000)  # what reading the file left behind, 450 KB of it text
        self.assertEqual(imap._core.cache.held_bytes(), {"lines": 4})  # type: ignore[union-attr]
        # Asked for: read from the file, not recomputed; from then on kept as any name.
        later = BigText()
        self.assertEqual(later.get(imap, self.uids[3]), self.expected[3])
        self.assertEqual(later.computed, 0)
        held_now = imap._core.cache.held_bytes()  # type: ignore[union-attr]
        self.assertEqual(
            held_now["web-text-1"], sum(map(len, self.expected)) - len(self.expected[3])
        )
        self.assertEqual([later.get(imap, u) for u in self.uids], self.expected)
        self.assertEqual(later.computed, 0)

    def test_asked_for_after_another_process_compacted_the_file(self) -> None:
        web = BigText()
        for u in self.uids[:4]:
            web.get(self.inbox, u)
        imap = self.imap_process()  # knows where uids 1-4's texts are in the file it has open
        ino = self.path.stat().st_ino
        other = self.restarted()
        Counter().get(other, self.uids[1])
        other.expunge([self.uids[0], self.uids[3]])  # compacted: a new file, other places
        self.assertNotEqual(self.path.stat().st_ino, ino)
        BigText().get(self.restarted(), self.uids[4])  # only in the new file
        later = BigText()
        got = [later.get(imap, u) for u in (self.uids[1], self.uids[2], self.uids[4])]
        self.assertEqual(got, [self.expected[1], self.expected[2], self.expected[4]])
        self.assertEqual(later.computed, 0)
        self.assertEqual(Counter().get(imap, self.uids[1]), 2)

    def test_damaged_unasked_record_is_recomputed(self) -> None:
        web = BigText()
        for u in self.uids[:3]:
            web.get(self.inbox, u)
        data = bytearray(self.path.read_bytes())
        data[-1:] = b"X"  # the last record (uid 3's text) no longer matches its CRC
        self.path.write_bytes(bytes(data))
        imap = self.imap_process()
        later = BigText()
        self.assertEqual([later.get(imap, u) for u in self.uids[:3]], self.expected[:3])
        self.assertEqual(later.computed, 1)  # only the damaged one
        _, end, damaged = cache.parse_records(self.path.read_bytes(), len(cache.HEADER))
        self.assertFalse(damaged)  # compacted
        self.assertEqual(end, len(self.path.read_bytes()))

    def test_record_damaged_after_it_was_read_is_recomputed(self) -> None:
        web = BigText()
        for u in self.uids[:3]:
            web.get(self.inbox, u)
        imap = self.imap_process()  # checked every record's CRC, kept only places
        key = imap.sync().by_uid[self.uids[2]].key  # the last record
        data = self.path.read_bytes()
        at = data.index(b" web-text-1 %s\n" % key.encode()) + 5000
        with open(self.path, "r+b") as f:  # damaged in place (a disk error, say)
            f.seek(at)
            f.write(b"X")
        later = BigText()
        self.assertEqual([later.get(imap, u) for u in self.uids[:3]], self.expected[:3])
        self.assertEqual(later.computed, 1)
