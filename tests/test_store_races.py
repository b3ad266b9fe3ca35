"""Folders deleted or renamed by another session or process while an operation runs on them:
the store answers FolderNotFound (IMAP: NO [NONEXISTENT]), never a raw OSError."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mailhub.store import dotlock, subscriptions, uidlist
from mailhub.store import store as store_module
from mailhub.store.dotlock import DotLock
from mailhub.store.errors import FolderNotFound
from mailhub.store.placement import Placer
from mailhub.store.store import MailStore
from tests.support.imap import USER, IMAPTestCase, message
from tests.support.store import SPECIAL, StoreTestCase, drop


class DeleteRaceTests(StoreTestCase):
    def gone_after_check(self, name: str, remove: Callable[[], None]) -> None:
        """The next existence check of the store says yes, then ``remove()`` runs: another
        session deleting or renaming the folder between the check and the store's rename."""
        real = store_module.is_maildir
        fired = []

        def check(path):  # type: ignore[no-untyped-def]
            found = real(path)
            if not fired and path.name == f".{name}":
                fired.append(path)
                remove()
            return found

        self.patch(store_module, "is_maildir", check)

    def test_delete_racing_a_delete(self) -> None:
        self.box.create_folder("A")
        other = self.new_store().mailbox("alice@example.com")
        self.gone_after_check("A", lambda: other.delete_folder("A"))
        self.assertRaises(FolderNotFound, self.box.delete_folder, "A")
        self.assertEqual(self.box.list_folders(), ["INBOX", *SPECIAL])

    def test_rename_racing_a_delete(self) -> None:
        self.box.create_folder("A")
        self.box.subscribe("A")
        other = self.new_store().mailbox("alice@example.com")
        self.gone_after_check("A", lambda: other.delete_folder("A"))
        self.assertRaises(FolderNotFound, self.box.rename_folder, "A", "B")
        self.assertEqual(self.box.list_folders(), ["INBOX", *SPECIAL])
        self.assertIn("A", self.box.subscriptions())  # nothing changed

    def test_create_racing_a_delete(self) -> None:
        # Seen with real processes: the other's DELETE renames the half-made directory away
        # before the maildirfolder marker is written. Its DELETE came first: make it again.
        other = self.new_store().mailbox("alice@example.com")
        real = store_module.create_maildir
        calls = []

        def create(path, *, folder):  # type: ignore[no-untyped-def]
            calls.append(path)
            real(path, folder=folder)
            if len(calls) == 1:
                other.delete_folder("A")
                raise FileNotFoundError(2, "No such file or directory", str(path))

        self.patch(store_module, "create_maildir", create)
        self.box.create_folder("A").sync()
        self.assertEqual(len(calls), 2)
        self.assertIn("A", self.box.list_folders())


class DeletedDuringFirstSyncTests(StoreTestCase):
    """The first sync of a folder writes its UID list under the folder lock: a folder deleted
    meanwhile (before the lock, or while it is held) is FolderNotFound."""

    def delete_at_load(self, nth: int) -> None:
        self.box.create_folder("A")
        drop(self.inbox_path / ".A", "1700000000.M1P1Q1.h,S=22")
        other = self.new_store().mailbox("alice@example.com")
        real = uidlist.load
        loads = []

        def load(path):  # type: ignore[no-untyped-def]
            loads.append(path)
            if len(loads) == nth:
                other.delete_folder("A")
            return real(path)

        folder = self.box.folder("A")
        self.patch(uidlist, "load", load)
        self.assertRaises(FolderNotFound, folder.sync)
        self.assertEqual(len(loads), nth)
        self.assertFalse((self.inbox_path / ".A").exists())

    def test_deleted_before_the_lock(self) -> None:
        self.delete_at_load(1)

    def test_deleted_under_the_lock(self) -> None:
        # The second load is update_locked's, under the lock: then the list write fails.
        self.delete_at_load(2)


class IMAPBusyLockTests(IMAPTestCase):
    """Locks another process holds at the worst moment of RENAME, COPY and MOVE: the command
    waits on the clock (never the reactor) and answers OK, or NO with nothing changed."""

    def setUp(self) -> None:
        super().setUp()
        self.patch(dotlock, "on_reactor_thread", lambda: True)
        self.root = self.store.root / "example.org" / "alice"

    def hold(self, path: Path) -> DotLock:
        holder = DotLock(path, in_reactor=lambda: True)
        holder.acquire()
        self.addCleanup(holder.release)
        return holder

    def test_rename_waits_for_the_subscriptions_lock(self) -> None:
        client = self.login(select=None)
        client.command("CREATE Lists")
        client.command("CREATE Lists.python")
        client.command("SUBSCRIBE Lists.python")
        holder = self.hold(self.root / subscriptions.LOCKNAME)
        client.send("a1 RENAME Lists Old\r\n")
        self.assertEqual(client.take(), b"")
        self.assertTrue((self.root / ".Lists").is_dir())  # nothing renamed before the lock
        holder.release()
        self.clock.advance(0.1)
        self.assertEqual(client.lines(), ["a1 OK RENAME completed"])
        box = self.store.mailbox(USER)
        self.assertIn("Old.python", box.list_folders())
        self.assertNotIn("Lists", box.list_folders())
        self.assertIn("Old.python", box.subscriptions())

    def busy_after_linking(self, target: str) -> list[DotLock]:
        """Another process takes ``target``'s folder lock right after the copies are linked,
        before their UIDs are known."""
        real = Placer.uids_of
        holders: list[DotLock] = []
        lock = self.root / f".{target}" / uidlist.LOCKNAME

        def uids_of(placer: Placer, bases, **kw):  # type: ignore[no-untyped-def]
            if not holders and placer.core.path == lock.parent:
                holders.append(self.hold(lock))
            return real(placer, bases, **kw)

        self.patch(Placer, "uids_of", uids_of)
        return holders

    def test_copy_waits_for_the_target_lock(self) -> None:
        self.deliver(message("one"))
        self.deliver(message("two"))
        client = self.login()
        client.command("STORE 1 +FLAGS ($Important)")
        validity = self.folder("Trash").sync().uidvalidity
        holders = self.busy_after_linking("Trash")
        client.send("a1 COPY 1:2 Trash\r\n")
        self.assertEqual(client.take(), b"")
        self.assertEqual(len(holders), 1)
        self.clock.advance(1)
        self.assertEqual(client.take(), b"")
        holders[0].release()
        self.clock.advance(0.1)
        self.assertEqual(client.lines()[-1], f"a1 OK [COPYUID {validity} 1:2 1:2] COPY completed")
        trash = self.folder("Trash").sync()
        self.assertEqual([m.uid for m in trash.messages], [1, 2])
        self.assertEqual([sorted(m.keywords) for m in trash.messages], [["$Important"], []])

    def test_move_waits_for_the_target_lock(self) -> None:
        self.deliver(message("one"))
        self.deliver(message("two"))
        client = self.login()
        validity = self.folder("Archive").sync().uidvalidity
        holders = self.busy_after_linking("Archive")
        client.send("a1 MOVE 2 Archive\r\n")
        self.assertEqual(client.take(), b"")
        holders[0].release()
        self.clock.advance(0.1)
        self.assertEqual(
            client.lines(),
            [f"* OK [COPYUID {validity} 2 1] Moved", "* 2 EXPUNGE", "a1 OK MOVE completed"],
        )
        self.assertEqual(len(self.folder("Archive").sync().messages), 1)
        self.assertEqual(len(self.folder("INBOX").sync().messages), 1)

    def test_copy_still_busy_is_ok_without_copyuid(self) -> None:
        self.deliver()
        client = self.login()
        self.busy_after_linking("Trash")
        client.send("a1 COPY 1 Trash\r\n")
        for _ in range(110):
            self.clock.advance(0.1)
        # Stored durably, only its UID is unknown: not NO with the copy already there.
        self.assertEqual(client.lines(), ["a1 OK COPY completed"])
        self.assertEqual(sum(1 for _ in (self.root / ".Trash" / "new").iterdir()), 1)

    def test_copy_keeps_keywords_when_another_process_named_the_copies(self) -> None:
        # Another process gives the copies their UIDs first (it knows nothing of keywords),
        # then holds the lock: the keywords, set by us afterwards, wait for it too.
        self.deliver()
        client = self.login()
        client.command("STORE 1 +FLAGS ($Important)")
        real = Placer.uids_of
        holders: list[DotLock] = []
        lock = self.root / ".Trash" / uidlist.LOCKNAME

        def uids_of(placer: Placer, bases, **kw):  # type: ignore[no-untyped-def]
            if not holders and placer.core.path == lock.parent:
                other = MailStore(self.store.root, hostname="other.example.org")
                other.mailbox(USER).folder("Trash").sync()
                holders.append(self.hold(lock))
            return real(placer, bases, **kw)

        self.patch(Placer, "uids_of", uids_of)
        client.send("a1 COPY 1 Trash\r\n")
        self.assertEqual(client.take(), b"")
        holders[0].release()
        self.clock.advance(0.1)
        self.assertTrue(client.lines()[-1].startswith("a1 OK [COPYUID "))
        trash = MailStore(self.store.root, hostname="x").mailbox(USER).folder("Trash").sync()
        self.assertEqual([sorted(m.keywords) for m in trash.messages], [["$Important"]])

    def test_delete_racing_another_delete_is_nonexistent(self) -> None:
        client = self.login(select=None)
        client.command("CREATE Old")
        other = self.login(select=None)
        real = store_module.is_maildir
        fired: list[Path] = []

        def check(path: Path) -> bool:
            found = real(path)
            if not fired and path.name == ".Old":
                fired.append(path)
                other.command("DELETE Old")  # the other session's DELETE gets in between
            return found

        self.patch(store_module, "is_maildir", check)
        client.send("a1 DELETE Old\r\n")
        self.assertEqual(client.lines(), ["a1 NO [NONEXISTENT] Mailbox does not exist"])
        self.assertEqual(fired, [self.root / ".Old"])
