"""A folder's first UID list: the UIDVALIDITY counter and the list are on disk, names
included, before the value can reach a client - with one fsync of the Maildir root for INBOX,
whose list lives beside the counter (a first SELECT of a big INBOX waits for every fsync)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mailhub import safeio
from mailhub.store import uidlist, uidvalidity
from tests.support.store import StoreTestCase, drop


class FirstListFsyncs(StoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.events: list[tuple[str, str]] = []
        real_rename, real_fsync_dir = os.rename, safeio.fsync_dir

        def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            real_rename(src, dst, *args, **kwargs)
            self.events.append(("rename", os.fspath(dst)))

        def fsync_dir(path: Any) -> None:
            real_fsync_dir(path)
            self.events.append(("fsync_dir", os.fspath(path)))

        self.patch(os, "rename", rename)
        self.patch(safeio, "fsync_dir", fsync_dir)

    def index(self, event: tuple[str, str]) -> int:
        self.assertIn(event, self.events)
        return self.events.index(event)

    def test_inbox_fsyncs_its_root_once_after_both_names(self) -> None:
        drop(self.inbox_path, "1700000001.M0P1Q1.h,S=22")
        root = str(self.inbox_path)
        validity = self.box.folder().sync().uidvalidity
        counter = str(self.inbox_path / uidvalidity.FILENAME)
        listed = str(self.inbox_path / uidlist.FILENAME)
        self.assertEqual(self.events.count(("fsync_dir", root)), 1, self.events)
        synced = self.index(("fsync_dir", root))
        # Both renames before the one directory fsync, which makes both names durable.
        self.assertLess(self.index(("rename", counter)), synced)
        self.assertLess(self.index(("rename", listed)), synced)
        self.assertEqual(int(Path(counter).read_bytes()), validity)

    def test_a_folder_still_fsyncs_the_root_for_the_counter(self) -> None:
        # Its list is in its own directory: that fsync does not cover the counter's name.
        folder = self.box.create_folder("Lists")
        self.events.clear()
        folder.append(b"Subject: a\r\n\r\n1\r\n")
        validity = folder.sync().uidvalidity
        root = str(self.inbox_path)
        counter = str(self.inbox_path / uidvalidity.FILENAME)
        listed = self.inbox_path / ".Lists" / uidlist.FILENAME
        root_synced = self.index(("fsync_dir", root))
        self.assertLess(self.index(("rename", counter)), root_synced)
        # ... before the list that tells the value is written.
        self.assertLess(root_synced, self.index(("rename", str(listed))))
        self.assertLess(
            self.index(("rename", str(listed))), self.index(("fsync_dir", str(listed.parent)))
        )
        self.assertEqual(int(Path(counter).read_bytes()), validity)
