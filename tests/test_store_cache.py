"""The per-folder cache of derived data (``Folder.cached``, mailhub/store/cache.py)."""

from __future__ import annotations

import os
from typing import BinaryIO

from mailhub.store import cache
from mailhub.store.errors import MessageGone
from mailhub.store.maildir import Folder
from tests.test_store_maildir import StoreTestCase


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


class CacheTests(StoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.inbox = self.box.folder()
        self.uids = [self.inbox.append(b"l\r\n" * (i + 1)) for i in range(5)]
        self.path = self.inbox_path / cache.FILENAME

    def restarted(self) -> Folder:
        return self.new_store().mailbox("alice@example.com").folder()

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
        self.inbox._changed_by_us()
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
