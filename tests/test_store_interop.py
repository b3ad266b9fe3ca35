"""Another Maildir++ implementation (the standard library's) reads what the store writes."""

from __future__ import annotations

import mailbox
import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailhub.store.store import MailStore
from tests.support.dovecot import doveadm_for
from tests.support.tools import doveadm, requires


class StdlibReader(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.store = MailStore(self.root, hostname="node1.example")
        self.mbox = self.store.mailbox("alice@example.com", create=True)
        self.reader = mailbox.Maildir(self.root / "example.com" / "alice", create=False)

    def test_folders_are_maildir_plus_plus(self) -> None:
        self.mbox.create_folder("Lists")
        self.mbox.create_folder("Archive.2026")
        self.assertEqual(
            sorted(self.reader.list_folders()),
            ["Archive", "Archive.2026", "Drafts", "Junk", "Lists", "Sent", "Trash"],
        )
        self.assertEqual(len(self.reader.get_folder("Archive.2026")), 0)

    def test_messages_and_flags_read_back(self) -> None:
        inbox = self.mbox.folder()
        uid = inbox.append(b"Subject: first\r\n\r\nbody one\r\n")
        inbox.append(b"Subject: second\r\n\r\nbody two\r\n", flags="S")
        inbox.set_flags(uid, frozenset("FR"))

        messages = {m["Subject"]: m for m in self.reader}
        self.assertEqual(set(messages), {"first", "second"})
        self.assertEqual(messages["first"].get_flags(), "FR")
        self.assertEqual(messages["second"].get_flags(), "S")
        # Flagged messages live in cur/ with the ":2," info the spec defines.
        self.assertEqual(messages["first"].get_subdir(), "cur")
        # Stored with CRLF as received; readers fold it to their own line ends.
        self.assertEqual(messages["first"].get_payload(), "body one\n")

    def test_new_delivery_is_in_new_until_taken(self) -> None:
        inbox = self.mbox.folder()
        uid = inbox.append(b"Subject: fresh\r\n\r\nx\r\n")
        [message] = list(self.reader)
        self.assertEqual(message.get_subdir(), "new")
        inbox.take(uid)
        [message] = list(self.reader)
        self.assertEqual(message.get_subdir(), "cur")
        self.assertEqual(message["Subject"], "fresh")


@requires(doveadm())
class DovecotSharesSubscriptions(SynchronousTestCase):
    """Dovecot (doveadm on the same files) and mailhub read each other's subscriptions."""

    def test_both_ways(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="mh-dovecot-"))
        self.addCleanup(shutil.rmtree, base, True)
        base.chmod(0o755)
        mailbox = MailStore(base / "mail", hostname="node1.example").mailbox(
            "alice@example.com", create=True
        )
        mailbox.create_folder("Ärger")
        mailbox.subscribe("Ärger")
        mailbox.unsubscribe("Junk")
        inbox = mailbox.folder()
        inbox.store_flags([inbox.append(b"Subject: k\r\n\r\n")], "add", keywords=["Work"])
        doveadm = doveadm_for(self, base)

        self.assertEqual(
            sorted(doveadm("mailbox", "list", "-s").split()),
            ["Archive", "Drafts", "Sent", "Trash", "Ärger"],
        )
        doveadm("mailbox", "subscribe", "Junk")
        doveadm("mailbox", "unsubscribe", "Sent")
        self.assertEqual(
            sorted(mailbox.subscriptions()), ["Archive", "Drafts", "Junk", "Trash", "Ärger"]
        )
        # Our index files are not folders to Dovecot, and the message is readable.
        self.assertNotIn("mailhub", doveadm("mailbox", "list"))
        self.assertIn("k", doveadm("fetch", "hdr.subject", "mailbox", "INBOX", "all"))
