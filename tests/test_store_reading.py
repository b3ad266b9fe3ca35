"""Folder.read_message with the index's size (POP3 RETR passes it to spare an fstat): the
whole file whatever the size says, a file renamed by another reader found again, a message
gone is MessageGone, and a message expunged but kept for a reader still read from tmp/."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailhub.store import MailStore, MessageGone

DATA = b"Subject: sized\r\n\r\n" + b"body line\r\n" * 50


class _Session:
    def __init__(self, uids: list[int]) -> None:
        self.uids = set(uids)

    def knows(self, uid: int) -> bool:
        return uid in self.uids


class ReadWithSize(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = MailStore(Path(self.mktemp()), "mx.example.com")
        self.folder = self.store.mailbox("a@example.com", create=True).folder()
        self.uid = self.folder.append(DATA)
        self.path = Path(self.folder._files.core.dir)  # (the test looks at the files)

    def test_any_size_reads_the_whole_file(self) -> None:
        n = len(DATA)
        for size in (None, 0, 1, n - 1, n, n + 1, 10 * n, 2**40):
            self.assertEqual(self.folder.read_message(self.uid, size), DATA, size)

    def test_file_grown_or_shrunk_since_the_index(self) -> None:
        (name,) = os.listdir(self.path / "cur") or os.listdir(self.path / "new")
        sub = "cur" if os.listdir(self.path / "cur") else "new"
        for data in (DATA + b"more\r\n" * 3000, b"", b"x"):
            (self.path / sub / name).write_bytes(data)
            self.assertEqual(self.folder.read_message(self.uid, len(DATA)), data)

    def test_renamed_by_another_reader(self) -> None:
        self.folder.sync()
        other = MailStore(self.store.root, "mx.example.com").mailbox("a@example.com").folder()
        other.add_flags(self.uid, {"S", "F"})  # renames the file (new/ -> cur/, :2,FS)
        self.assertEqual(self.folder.read_message(self.uid, len(DATA)), DATA)

    def test_gone(self) -> None:
        self.folder.sync()
        for sub in ("new", "cur"):
            for name in os.listdir(self.path / sub):
                os.unlink(self.path / sub / name)
        self.assertRaises(MessageGone, self.folder.read_message, self.uid, len(DATA))
        self.assertRaises(MessageGone, self.folder.read_message, 12345, 10)

    def test_expunged_but_kept_for_a_reader(self) -> None:
        reader = _Session([self.uid])
        self.folder.add_reader(reader)
        self.folder.expunge([self.uid])
        self.assertEqual(self.folder.read_message(self.uid, len(DATA)), DATA)
