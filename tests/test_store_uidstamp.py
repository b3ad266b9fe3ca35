"""Another process's write of the UID list that leaves the file's stamp (inode, mtime_ns,
size) as it was - two writes within one tick of a coarse file clock, of equal size, the
inode reused by the rename - is still seen under the folder lock, before we write the list
back (uidindex.UidIndex.reload). The collision is made deterministic by setting the stamp we
hold to the file's stamp after the other process's write."""

from __future__ import annotations

import os

from mailhub.store import uidlist
from mailhub.store.core import FolderCore
from mailhub.store.maildir import Folder
from tests.support.store import ADDRESS, StoreTestCase


def core_of(folder: Folder) -> FolderCore:
    return folder._core


def same_stamp(core: FolderCore) -> None:
    """The file changed, but its stamp looks like the one we read (the collision)."""
    core.list_stamp = core.list_file_stamp()
    assert core.list_stamp is not None


class RenameByAnotherProgramTests(StoreTestCase):
    def test_is_written_to_the_list_with_a_modseq(self) -> None:
        # A rename alone (no message new or gone) is a change to record on disk too: other
        # processes and our next start must see its mod-sequence (RFC 7162 3.1).
        first, _ = self.deliver(2)
        folder = self.box.folder()
        before = folder.sync().highestmodseq
        os.rename(self.inbox_path / "new" / first, self.inbox_path / "cur" / f"{first}:2,F")
        state = folder.sync()
        lst = uidlist.load(core_of(folder).list_path())
        assert lst is not None
        self.assertEqual(lst.records[first].flags, frozenset({"F"}))
        self.assertEqual(lst.records[first].modseq, before + 1)
        self.assertEqual(lst.highestmodseq, state.highestmodseq)
        self.assertEqual(self.new_store().mailbox(ADDRESS).folder().sync(), state)
