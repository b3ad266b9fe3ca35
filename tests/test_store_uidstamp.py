"""Another process's write of the UID list that leaves the file's stamp (inode, mtime_ns,
size) as it was - two writes within one tick of a coarse file clock, of equal size, the
inode reused by the rename - is still seen under the folder lock, before we write the list
back (uidindex.UidIndex.reload). The collision is made deterministic by setting the stamp we
hold to the file's stamp after the other process's write."""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.internet.defer import Deferred, maybeDeferred

from mailhub.store import names, uidlist, uidwriter
from mailhub.store.core import FolderCore
from mailhub.store.maildir import Folder
from mailhub.store.uidlist import UidList
from tests.support.store import ADDRESS, StoreTestCase, drop


def core_of(folder: Folder) -> FolderCore:
    return folder._core


def same_stamp(core: FolderCore) -> None:
    """The file changed, but its stamp looks like the one we read (the collision)."""
    core.list_stamp = core.list_file_stamp()
    assert core.list_stamp is not None


class StampCollisionTests(StoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.first, self.second = self.deliver(2)
        self.ours = self.box.folder()
        self.ours.sync()  # UIDs 1 and 2; our copy of the list and its stamp
        self.theirs = self.new_store().mailbox(ADDRESS).folder()

    def on_disk(self) -> UidList:
        lst = uidlist.load(core_of(self.ours).list_path())
        assert lst is not None
        return lst

    def arrive(self, time: int, q: int) -> str:
        return drop(self.inbox_path, names.with_size(f"{time}.M0P2Q{q}.h", 22))

    def test_uids_another_process_gave_are_kept(self) -> None:
        late = self.arrive(1_700_000_100, 0)
        self.theirs.sync()  # gives it UID 3 (its clients may have seen it)
        early = self.arrive(1_700_000_050, 1)  # earlier by its name than the one with UID 3
        same_stamp(core_of(self.ours))
        state = self.ours.sync()
        # A stale list written back would give the early one UID 3, the other UID 4.
        self.assertEqual(self.on_disk().records[late].uid, 3)
        self.assertEqual(self.on_disk().records[early].uid, 4)
        self.assertEqual({m.uid for m in state.messages}, {1, 2, 3, 4})
        self.assertEqual(
            {m.uid: m.key for m in self.theirs.sync().messages},
            {m.uid: m.key for m in state.messages},
        )

    def test_keyword_another_process_stored_is_kept(self) -> None:
        self.theirs.store_flags([1], "add", keywords=["$Label"])
        same_stamp(core_of(self.ours))
        self.ours.store_flags([2], "add", flags=["S"])  # our write under the lock
        records = self.on_disk().records
        self.assertEqual(records[self.first].keywords, frozenset({"$Label"}))
        self.assertEqual(records[self.second].flags, frozenset({"S"}))
        # Two changes, two mod-sequences (RFC 7162 3.2), not one value for both.
        self.assertLess(records[self.first].modseq, records[self.second].modseq)

    def test_a_look_that_lists_the_same_files_sees_a_keyword_stored_meanwhile(self) -> None:
        # Within the dirty window a look lists new/ and cur/ again; finding the same files,
        # it keeps the state if the list is unchanged - checked by its first line too, not
        # by a stamp alone (Scanner.refresh).
        core = core_of(self.ours)
        for scan in core.scans.values():
            scan.trusted = False  # (their mtimes are young)
        self.theirs.store_flags([1], "add", keywords=["$Label"])
        same_stamp(core)
        state = self.ours.sync()
        self.assertEqual(state.by_uid[1].keywords, frozenset({"$Label"}))

    def test_worker_write_checks_too(self) -> None:
        # uidwriter.write_list starts from the reactor's copy if the file's stamp is still
        # the one that copy was read with.
        core = core_of(self.ours)
        held = core.list
        assert held is not None
        stale = UidList(held.uidvalidity, held.uidnext, dict(held.records), held.highestmodseq)
        late = self.arrive(1_700_000_100, 0)
        self.theirs.sync()
        early = self.arrive(1_700_000_050, 1)
        written = uidwriter.write_list(
            core.path, core.name, core.settings, stale.uidvalidity, dict(stale.records), {},
            stale, core.list_file_stamp(),
        )  # fmt: skip
        self.assertEqual(written.lst.records[late].uid, 3)
        self.assertEqual(self.on_disk().records[late].uid, 3)
        self.assertEqual(self.on_disk().records[early].uid, 4)


class VersionOneAdoptionTests(StoreTestCase):
    """The one write that takes no mod-sequence: another process adopts the flags of a
    version 1 list (same UIDVALIDITY and UIDNEXT, HIGHESTMODSEQ 1 after it). A rename by
    another program after that is a change (RFC 7162 3.1), not adopted again."""

    def setUp(self) -> None:
        super().setUp()
        self.first, self.second = self.deliver(2)
        self.v1 = b"mailhub-uidlist 1 1234 3\n1 22 1700000000 %s\n2 22 1700000001 %s\n" % (
            self.first.encode(),
            self.second.encode(),
        )
        self.ours = self.box.folder()
        self.path = core_of(self.ours).list_path()
        self.path.write_bytes(self.v1)

    def adopt_then_rename(self) -> None:
        self.new_store().mailbox(ADDRESS).folder().sync()  # adopts: version 2, modseq 1
        self.assertEqual(self.path.read_bytes().split(b"\n")[0], b"mailhub-uidlist 2 1234 3 1")
        new, cur = self.inbox_path / "new", self.inbox_path / "cur"
        if (new / self.first).exists():
            os.rename(new / self.first, cur / f"{self.first}:2,S")
        else:
            os.rename(cur / f"{self.first}:2,", cur / f"{self.first}:2,S")

    def check(self) -> None:
        lst = uidlist.load(self.path)
        assert lst is not None
        self.assertEqual(lst.records[self.first].flags, frozenset({"S"}))
        self.assertEqual(lst.records[self.first].modseq, 2)
        self.assertEqual(lst.highestmodseq, 2)

    def test_flags_changed_after_another_process_adopted_them_get_a_modseq(self) -> None:
        self.adopt_then_rename()
        core = core_of(self.ours)
        core.list = uidlist.parse(self.v1)  # we read the version 1 list before
        same_stamp(core)
        self.ours.sync()
        self.check()

    def test_so_in_the_worker(self) -> None:
        # uidwriter.start hands the worker a copy of our list (the version 1 one, read by
        # the look); the other process writes before the worker takes the lock.
        core = core_of(self.ours)
        core.list = uidlist.parse(self.v1)
        core.list_stamp = core.list_file_stamp()

        def run(f: Callable[..., object], *args: object) -> Deferred[object]:
            self.adopt_then_rename()
            given = list(args)
            given[7] = core.list_file_stamp()  # (write_list's ``stamp``: the collision)
            return maybeDeferred(f, *given)

        self.store.settings.offload.run = run
        self.ours.sync(assign=False)
        # (the worker's listing predates the rename: the next look records it)
        self.store.settings.offload.run = None
        self.ours.sync()
        self.check()


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
