"""Mailbox-level state for IMAP: special-use folders (RFC 6154) and subscriptions, in
Dovecot's ``subscriptions`` file format."""

from __future__ import annotations

import gc
import weakref

from mailhub.store import names, subscriptions
from mailhub.store.errors import InvalidName
from mailhub.store.store import MailStore
from tests.support.store import ADDRESS, SPECIAL, StoreTestCase


class SpecialUseTests(StoreTestCase):
    def test_a_new_mailbox_has_them_subscribed(self) -> None:
        self.assertEqual(self.box.list_folders(), ["INBOX", *SPECIAL])
        self.assertEqual(self.box.subscriptions(), list(names.SPECIAL_USE))
        self.assertEqual(self.box.special_use("Sent"), "\\Sent")
        self.assertEqual(self.box.special_use("Junk"), "\\Junk")
        self.assertIsNone(self.box.special_use("INBOX"))
        self.assertIsNone(self.box.special_use("sent"))  # folder names are case-sensitive

    def test_ensure_recreates_missing_ones_only(self) -> None:
        self.box.delete_folder("Trash")
        self.box.unsubscribe("Drafts")
        self.assertEqual(self.box.ensure_special_folders(), ["Trash"])
        self.assertEqual(self.box.list_folders(), ["INBOX", *SPECIAL])
        # The user's choice to unsubscribe Drafts stands; the recreated Trash is subscribed.
        self.assertNotIn("Drafts", self.box.subscriptions())
        self.assertIn("Trash", self.box.subscriptions())
        self.assertEqual(self.box.ensure_special_folders(), [])

    def test_mailbox_created_by_delivery_gets_them_at_login(self) -> None:
        self.store.delivery_dirs("bob@example.com")
        bob = self.store.mailbox("bob@example.com")
        self.assertEqual(bob.list_folders(), ["INBOX"])  # delivery stays light
        self.assertEqual(bob.ensure_special_folders(), list(names.SPECIAL_USE))
        self.assertEqual(bob.list_folders(), ["INBOX", *SPECIAL])


class SubscriptionTests(StoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.file = self.inbox_path / subscriptions.FILENAME
        for name in list(names.SPECIAL_USE):
            self.box.unsubscribe(name)

    def test_subscribe_unsubscribe_persist(self) -> None:
        self.assertTrue(self.box.subscribe("Lists.python"))
        self.assertFalse(self.box.subscribe("Lists.python"))
        self.assertTrue(self.box.subscribe("inbox"))  # INBOX is case-insensitive
        self.assertTrue(self.box.subscribe("Nowhere"))  # need not exist (RFC 3501 6.3.6)
        self.assertEqual(self.box.subscriptions(), ["Lists.python", "INBOX", "Nowhere"])
        self.assertTrue(self.box.unsubscribe("Nowhere"))
        self.assertFalse(self.box.unsubscribe("Nowhere"))
        again = self.new_store().mailbox(ADDRESS)
        self.assertEqual(again.subscriptions(), ["Lists.python", "INBOX"])

    def test_names_are_checked(self) -> None:
        for bad in ["../x", "a/b", "", "INBOX.x", "a\tb"]:
            with self.subTest(bad):
                self.assertRaises(InvalidName, self.box.subscribe, bad)
        self.assertEqual(self.box.subscriptions(), [])

    def test_file_is_dovecot_version_2(self) -> None:
        self.box.subscribe("Ärger.Sub")
        self.box.subscribe("Sent")
        # Bytes as Dovecot 2.3 writes them (doveadm mailbox subscribe): header, then the
        # hierarchy in tabs and each component in modified UTF-7, as the directories are.
        self.assertEqual(self.file.read_bytes(), b"V\t2\n\n&AMQ-rger\tSub\nSent\n")

    def test_version_1_files_are_read(self) -> None:
        self.file.write_bytes(b"INBOX\nLists.python\n&AMQ-rger\n")
        self.assertEqual(self.box.subscriptions(), ["INBOX", "Lists.python", "Ärger"])
        self.box.subscribe("New")
        self.assertTrue(self.file.read_bytes().startswith(b"V\t2\n\n"))
        self.assertEqual(self.box.subscriptions(), ["INBOX", "Lists.python", "Ärger", "New"])

    def test_escapes_are_read(self) -> None:
        # Dovecot's tab-escaping (\001 + 1/t/r/n). We never need it when writing: modified
        # UTF-7 leaves no control character in a component.
        data = b"V\t2\n\na\x01tb\tc\x011\n"
        self.assertEqual(subscriptions.parse(data), ["a\tb.c\x01"])

    def test_rename_moves_subscriptions_delete_keeps_them(self) -> None:
        self.box.create_folder("A")
        self.box.create_folder("A.B")
        self.box.create_folder("AB")
        for name in ("A", "A.B", "AB"):
            self.box.subscribe(name)
        self.box.rename_folder("A", "C")
        self.assertEqual(self.box.subscriptions(), ["C", "C.B", "AB"])
        # RFC 3501 6.3.4: DELETE does not touch the subscription list.
        self.box.delete_folder("C")
        self.assertEqual(self.box.subscriptions(), ["C", "C.B", "AB"])


class FolderReuseTests(StoreTestCase):
    """Recently used folders outlive their sessions, so the next login does not re-read the
    UID list; the oldest are let go beyond the limit."""

    def test_folder_is_kept_after_its_users_are_gone(self) -> None:
        self.box.folder().append(b"Subject: a\r\n\r\nx\r\n")
        first = weakref.ref(self.store.mailbox(ADDRESS).folder())
        gc.collect()
        self.assertIsNotNone(first())
        self.assertIs(self.store.mailbox(ADDRESS).folder(), first())

    def test_only_the_most_recent_are_kept(self) -> None:
        store = MailStore(self.root, hostname="test", keep_folders=2)
        box = store.mailbox(ADDRESS)
        folders = [weakref.ref(box.folder(name)) for name in ("INBOX", "Sent", "Drafts")]
        gc.collect()
        self.assertEqual([f() is not None for f in folders], [False, True, True])
