"""Dovecot reads mailhub's Maildir++ tree without conversion (folders, flags, sizes, bodies).

Uses ``doveadm`` directly on the files (no Dovecot server). Dovecot refuses to access mail as
root, so the tree is handed to the ``mail`` system user: this needs root, as CI runs.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailhub.store.store import MailStore
from tests.support.dovecot import doveadm_for
from tests.support.tools import doveadm, requires


@requires(doveadm())
class DoveadmReadsTheStore(SynchronousTestCase):
    def test_folders_flags_sizes_and_bodies(self) -> None:
        # Short and traversable by 'mail': trial's own temp dir is 0700 and too deep for the
        # unix socket paths doveadm makes under base_dir.
        base = Path(tempfile.mkdtemp(prefix="mh-dovecot-"))
        self.addCleanup(shutil.rmtree, base, True)
        base.chmod(0o755)
        store = MailStore(base / "mail", hostname="node1.example")
        mailbox = store.mailbox("alice@example.com", create=True)
        inbox = mailbox.folder()
        first = inbox.append(b"Subject: first\r\nFrom: a@example.net\r\n\r\nbody one\r\n")
        inbox.append(b"Subject: second\r\n\r\nbody two\r\n", flags="S")
        inbox.set_flags(first, frozenset("FR"))
        mailbox.folder("Sent").append(b"Subject: sent\r\n\r\nx\r\n")

        doveadm = doveadm_for(self, base)

        self.assertEqual(
            sorted(doveadm("mailbox", "list").split()),
            ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"],  # every new mailbox's
        )
        out = doveadm(
            "-f", "tab", "fetch", "hdr.subject flags size.physical", "mailbox", "INBOX", "all"
        )
        rows = {line.split("\t")[0]: line.split("\t")[1:] for line in out.splitlines()[1:]}
        self.assertEqual(set(rows), {"first", "second"})
        self.assertIn("\\Flagged", rows["first"][0])
        self.assertIn("\\Answered", rows["first"][0])
        self.assertIn("\\Seen", rows["second"][0])
        self.assertEqual(
            int(rows["first"][1]), len(b"Subject: first\r\nFrom: a@example.net\r\n\r\nbody one\r\n")
        )
        body = doveadm("fetch", "body", "mailbox", "Sent", "all")
        self.assertIn("x", body)
