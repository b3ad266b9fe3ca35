"""Real IMAP sync clients against mailhub: ``mbsync`` (isync) and ``offlineimap`` (offlineimap3)
each keep a local Maildir in sync with the server's INBOX, both ways, over verified TLS.

The same story for both tools:

1. two messages delivered by SMTP are synced down into the local Maildir;
2. locally, one message is flagged (its file renamed to ``:2,F``), the other deleted, and a
   new message is written into the Maildir; a sync carries all three up: the server (read from
   the store and through imaplib) shows the flag, the expunge and the new message;
3. on the server, the uploaded message is marked \\Seen and another one arrives by SMTP; a sync
   brings both down;
4. a further sync changes nothing on either side.

mbsync connects with STARTTLS on the imap listener, offlineimap with implicit TLS on imaps; both
trust only the test CA (the server certificate is for ``localhost``)."""

from __future__ import annotations

import email
import email.policy
import imaplib
import os
import subprocess
import textwrap
import time
from pathlib import Path

from mailhub.config import ListenersConfig, TLSConfig
from mailhub.store import MessageInfo
from tests.support.service import LOOPBACK_ANY_PORT, ServiceTestCase, simple_message
from tests.support.tls import CertificateAuthority, client_context
from tests.support.tools import requires, tool

USER = "dana@example.com"
LOCAL_SUBJECT = "written in the local Maildir"


class SyncClientTest(ServiceTestCase):
    """Starts mailhub with imap + imaps and gives the test a local Maildir and the tool's files."""

    tool = ""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir(parents=True)
        ca = CertificateAuthority()
        cert, key = ca.issue(["localhost"], ip_addresses=["127.0.0.1"]).write(self.dir, "server")
        self.ca_file = ca.write_root(self.dir)
        listeners = ListenersConfig(
            smtp=(LOOPBACK_ANY_PORT,), imap=(LOOPBACK_ANY_PORT,), imaps=(LOOPBACK_ANY_PORT,)
        )
        self.start(listeners=listeners, tls=TLSConfig(certificate=cert, key=key))
        self.imap_port = self.port("imap")
        self.imaps_port = self.port("imaps")

    # -- the tool ---------------------------------------------------------------------------

    def run_sync(self) -> str:
        """Run the tool once (blocking: call through in_thread); its output."""
        raise NotImplementedError

    def local_inbox(self) -> Path:
        raise NotImplementedError

    def run_tool(self, argv: list[str]) -> str:
        # offlineimap runs on the system Python: keep our interpreter's paths (trial -j sets
        # PYTHONPATH for its workers) out of its way.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["HOME"] = str(self.dir)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise AssertionError(f"{argv[0]} failed ({done.returncode}):\n{output}")
        return output

    # -- both sides -------------------------------------------------------------------------

    def local_messages(self) -> dict[str, tuple[str, str]]:
        """Subject -> (subdir, Maildir info flags) of every message in the local INBOX."""
        out = {}
        for sub in ("new", "cur"):
            for path in (self.local_inbox() / sub).iterdir():
                msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
                flags = path.name.partition(":2,")[2]
                out[str(msg["Subject"])] = (sub, flags)
        return out

    def local_file(self, subject: str) -> Path:
        for sub in ("new", "cur"):
            for path in (self.local_inbox() / sub).iterdir():
                if f"Subject: {subject}".encode() in path.read_bytes():
                    return path
        raise AssertionError(f"no local message {subject!r}")

    def server_messages(self) -> dict[str, MessageInfo]:
        """Subject -> MessageInfo of the server's INBOX, read from the store."""
        folder = self.service.store.mailbox(USER).folder()
        out = {}
        for info in folder.sync().messages:
            raw = folder.read_message(info.uid)
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            out[str(msg["Subject"])] = info
        return out

    def imaplib_view(self) -> list[bytes]:
        """What a third client sees: FETCH (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])."""
        with imaplib.IMAP4_SSL(
            "127.0.0.1", self.imaps_port, ssl_context=client_context(self.ca_file), timeout=10
        ) as client:
            client.login(USER, "any")
            client.select("INBOX", readonly=True)  # EXAMINE: takes no \Recent from the sync tool
            _, data = client.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            client.logout()
        return [
            item[0].split(b"FLAGS ", 1)[1].split(b")", 1)[0] + b") " + item[1].strip()
            for item in data
            if isinstance(item, tuple)
        ]

    def deliver(self, subject: str) -> None:
        with self.smtp() as smtp:
            smtp.send_message(simple_message(to=USER, subject=subject))

    def snapshot(self) -> tuple[dict, dict]:
        local = {p.name for sub in ("new", "cur") for p in (self.local_inbox() / sub).iterdir()}
        state = self.service.store.mailbox(USER).folder().sync()
        server = {(m.uid, m.flags, m.keywords, m.modseq) for m in state.messages}
        return {"files": local}, {"server": server, "highestmodseq": state.highestmodseq}

    # -- the story --------------------------------------------------------------------------

    async def test_two_way_sync(self) -> None:
        # 1. Mail delivered by SMTP appears locally.
        await self.in_thread(self.deliver, "first by smtp")
        await self.in_thread(self.deliver, "second by smtp")
        await self.in_thread(self.run_sync)
        local = self.local_messages()
        self.assertEqual(set(local), {"first by smtp", "second by smtp"})

        # 2. Local changes go up: a flag, a deletion, a new message.
        first = self.local_file("first by smtp")
        first.rename(first.parent.parent / "cur" / (first.name.split(":2,")[0] + ":2,F"))
        self.local_file("second by smtp").unlink()
        new = simple_message(to=USER, subject=LOCAL_SUBJECT).as_bytes().replace(b"\n", b"\r\n")
        name = f"{int(time.time())}.local1.testhost:2,S"
        (self.local_inbox() / "cur" / name).write_bytes(new)
        await self.in_thread(self.run_sync)

        server = self.server_messages()
        self.assertEqual(set(server), {"first by smtp", LOCAL_SUBJECT})
        self.assertIn("F", server["first by smtp"].flags)
        self.assertEqual(server[LOCAL_SUBJECT].flags, {"S"})
        seen_by_imaplib = await self.in_thread(self.imaplib_view)
        self.assertEqual(len(seen_by_imaplib), 2)
        self.assertIn(b"\\Flagged", seen_by_imaplib[0])
        self.assertIn(b"Subject: first by smtp", seen_by_imaplib[0])
        self.assertIn(b"(\\Seen) Subject: " + LOCAL_SUBJECT.encode(), seen_by_imaplib[1])

        # 3. Server changes come down: a flag set by another client and new mail.
        def mark_seen_on_server() -> None:
            with imaplib.IMAP4_SSL(
                "127.0.0.1", self.imaps_port, ssl_context=client_context(self.ca_file)
            ) as client:
                client.login(USER, "any")
                client.select("INBOX")
                _, [found] = client.search(None, "SUBJECT", '"first by smtp"')
                client.store(found.decode(), "+FLAGS", "(\\Seen)")
                client.logout()

        await self.in_thread(mark_seen_on_server)
        await self.in_thread(self.deliver, "third by smtp")
        await self.in_thread(self.run_sync)
        local = self.local_messages()
        self.assertEqual(set(local), {"first by smtp", LOCAL_SUBJECT, "third by smtp"})
        self.assertEqual(local["first by smtp"][1], "FS")
        self.assertEqual(local[LOCAL_SUBJECT][1], "S")

        # 4. Nothing changed: a further sync is a no-op on both sides.
        before = self.snapshot()
        await self.in_thread(self.run_sync)
        self.assertEqual(self.snapshot(), before)


@requires(tool("mbsync"))
class Mbsync(SyncClientTest):
    def setUp(self) -> None:
        super().setUp()
        self.config = self.dir / "mbsyncrc"
        (self.dir / "local").mkdir()
        self.config.write_text(
            textwrap.dedent(f"""\
                IMAPAccount mailhub
                Host localhost
                Port {self.imap_port}
                User {USER}
                Pass any
                SSLType STARTTLS
                SystemCertificates no
                CertificateFile {self.ca_file}

                IMAPStore remote
                Account mailhub

                MaildirStore local
                Path {self.dir}/local/
                Inbox {self.dir}/local/INBOX

                Channel inbox
                Far :remote:
                Near :local:
                Patterns INBOX
                Create Both
                Expunge Both
                SyncState *
                Sync All
            """)
        )

    def local_inbox(self) -> Path:
        return self.dir / "local" / "INBOX"

    def run_sync(self) -> str:
        return self.run_tool(["mbsync", "-c", str(self.config), "-a"])


@requires(tool("offlineimap"))
class OfflineIMAP(SyncClientTest):
    def setUp(self) -> None:
        super().setUp()
        self.config = self.dir / "offlineimaprc"
        (self.dir / "local").mkdir()
        self.config.write_text(
            textwrap.dedent(f"""\
                [general]
                accounts = mailhub
                metadata = {self.dir}/offlineimap-state
                ui = basic

                [Account mailhub]
                localrepository = local
                remoterepository = remote

                [Repository local]
                type = Maildir
                localfolders = {self.dir}/local

                [Repository remote]
                type = IMAP
                remotehost = localhost
                remoteport = {self.imaps_port}
                remoteuser = {USER}
                remotepass = any
                ssl = yes
                sslcacertfile = {self.ca_file}
                folderfilter = lambda folder: folder == "INBOX"
                createfolders = False
            """)
        )

    def local_inbox(self) -> Path:
        return self.dir / "local" / "INBOX"

    def run_sync(self) -> str:
        return self.run_tool(["offlineimap", "-c", str(self.config), "-o", "-u", "basic"])


del SyncClientTest
