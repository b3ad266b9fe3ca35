"""A folder lock left by a killed process, or held by a live one, never stalls the server.

Issue 12: ``kill -9`` left ``mailhub-uidlist.lock``; the reactor waited 10 s for it (SMTP
banners froze, IMAP SELECT answered ``NO [SERVERBUG]``). Here real processes hold the lock and
real clients (smtplib, imaplib, a raw IMAP socket) talk to an in-process server.
"""

from __future__ import annotations

import imaplib
import socket
import subprocess
import sys
from pathlib import Path

from twisted.internet import threads
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from mailhub.store.uidlist import LOCKNAME
from mailhub.testing import MailhubTestServer

REPO = str(Path(__file__).resolve().parent.parent)
USER = "bob@example.com"

# Takes the folder's lock the way mailhub does, says so, and holds it until stdin closes.
HOLDER = """
import sys
from pathlib import Path
from mailhub.store.dotlock import DotLock
lock = DotLock(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
lock.release()
"""


class LockHolderCase(TestCase):
    async def start(self) -> None:
        self.hub = await MailhubTestServer.started(self, services=("smtp", "imap"))
        await self.hub.send(USER, subject="first")
        await self.hub.wait_for_message(to=USER, subject="first")  # it has its UID now
        self.lock_path = self.hub.config.mail_dir / "example.com" / "bob" / LOCKNAME
        self.broken: list[str] = []

        def observe(event: dict) -> None:
            if event.get("log_format", "").startswith("broke stale lock"):
                self.broken.append(event["why"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    async def holder(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(self.lock_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={"PYTHONPATH": REPO},
        )
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        line = await threads.deferToThread(proc.stdout.readline)  # type: ignore[union-attr]
        self.assertEqual(line, "locked\n")
        return proc

    def imap(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.hub.ports["imap"], timeout=30)
        client.login(USER, "any")
        return client

    async def test_killed_holder_lock_is_broken_at_once(self) -> None:
        await self.start()
        proc = await self.holder()
        proc.kill()  # SIGKILL: the lock file stays behind
        await threads.deferToThread(proc.wait)
        self.assertTrue(self.lock_path.exists())

        # The next delivery gets its banner and 250; its UID needs the lock.
        refused = await self.hub.send(USER, subject="second")
        self.assertEqual(refused, {})

        def select() -> tuple[str, list]:
            with self.imap() as client:
                status, data = client.select("INBOX")
                client.logout()
            return status, data

        status, data = await threads.deferToThread(select)
        self.assertEqual((status, data), ("OK", [b"2"]))
        # Broken because its pid is dead, not because it grew old.
        self.assertTrue(self.broken)
        self.assertIn(f"pid {proc.pid}", self.broken[0])
        self.assertIn("is dead", self.broken[0])

    async def test_live_holder_does_not_block_the_reactor(self) -> None:
        await self.start()
        proc = await self.holder()
        refused = await self.hub.send(USER, subject="second")  # delivery takes no lock
        self.assertEqual(refused, {})

        # Session A: a SELECT that must give the new message a UID, so waits for the lock.
        a = socket.create_connection(("127.0.0.1", self.hub.ports["imap"]), timeout=30)
        self.addCleanup(a.close)
        reader = a.makefile("rb")

        def until(tag: bytes) -> list[bytes]:
            lines = []
            while True:
                line = reader.readline()
                self.assertTrue(line, "connection closed")
                lines.append(line)
                if line.startswith(tag + b" "):
                    return lines

        await threads.deferToThread(until, b"*")  # the greeting
        a.sendall(b"a1 LOGIN bob@example.com any\r\n")
        self.assertTrue((await threads.deferToThread(until, b"a1"))[-1].startswith(b"a1 OK"))
        a.sendall(b"a2 SELECT INBOX\r\n")

        # Session B, meanwhile: greeting, login, NOOP, and a new SMTP session, all answered.
        def other_session() -> str:
            with self.imap() as client:
                status, _ = client.noop()
                client.logout()
            with self.hub.smtp_client() as smtp:
                smtp.noop()
            return status

        self.assertEqual(await threads.deferToThread(other_session), "OK")
        # ... while A's SELECT is still waiting for the live holder.
        a.setblocking(False)
        self.assertRaises(BlockingIOError, a.recv, 1, socket.MSG_PEEK)
        self.assertTrue(self.lock_path.exists())
        a.setblocking(True)

        proc.stdin.close()  # type: ignore[union-attr]
        await threads.deferToThread(proc.wait)
        lines = await threads.deferToThread(until, b"a2")
        self.assertTrue(lines[-1].startswith(b"a2 OK"), lines)
        self.assertIn(b"* 2 EXISTS\r\n", lines)
        self.assertEqual(self.broken, [])  # a live holder's lock is never broken
        a.sendall(b"a3 LOGOUT\r\n")
        await threads.deferToThread(until, b"a3")
        self.assertEqual(await threads.deferToThread(reader.read), b"")  # closed by the server
