"""IDLE over a real socket against a running mailhub: new mail is told as the store's change
feed notices it, whoever delivered it. The timed scan is an hour away, so what arrives came
from the server's own delivery (SMTP) or from inotify (another process's delivery)."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from mailhub.config import WebConfig
from mailhub.testing import MailhubTestServer
from tests.support.tools import skip_or_fail

USER = "idle@example.com"

# A delivery by another program on the host: tmp/, then link() into new/ (maildir.html).
_DELIVER = """
import os, sys
maildir, name = sys.argv[1], sys.argv[2]
tmp = os.path.join(maildir, "tmp", name)
with open(tmp, "wb") as f:
    f.write(b"Subject: from another process\\r\\n\\r\\nhi\\r\\n")
os.link(tmp, os.path.join(maildir, "new", name))
os.unlink(tmp)
"""


class IdleClient:
    """A blocking IMAP client in a worker thread: LOGIN, SELECT INBOX, IDLE, read lines."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.file.readline()  # greeting
        self.command(f"a LOGIN {USER} any")
        self.command("b SELECT INBOX")
        self.sock.sendall(b"c IDLE\r\n")
        assert self.file.readline().startswith(b"+ ")

    def command(self, line: str) -> None:
        tag = line.split()[0].encode()
        self.sock.sendall(line.encode() + b"\r\n")
        while not (got := self.file.readline()).startswith(tag + b" "):
            assert got, "connection closed"
        assert got.startswith(tag + b" OK"), got

    def next_line(self) -> bytes:
        return self.file.readline().rstrip(b"\r\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class IdleOverSockets(TestCase):
    async def start(self) -> tuple[MailhubTestServer, IdleClient]:
        hub = await MailhubTestServer.started(
            self,
            services=("smtp", "imap"),
            web=dataclasses.replace(WebConfig(), poll_interval=3600.0),
        )
        assert hub.service is not None and hub.service.changes is not None
        client = await threads.deferToThread(IdleClient, hub.ports["imap"])
        self.addCleanup(client.close)
        return hub, client

    async def test_smtp_delivery_is_told_during_idle(self) -> None:
        hub, client = await self.start()
        await hub.send(USER, subject="over smtp")
        line = await threads.deferToThread(client.next_line)
        self.assertEqual(line, b"* 1 EXISTS")

    async def test_delivery_by_another_process_is_told_through_inotify(self) -> None:
        hub, client = await self.start()
        assert hub.service is not None and hub.service.changes is not None
        if hub.service.changes._notifier is None:
            skip_or_fail("no inotify here: other processes' mail waits for the timed scan")
        maildir = Path(hub.config.mail_dir) / "example.com" / "idle"
        name = f"1800000000.M1P{os.getpid()}Q1.elsewhere"
        await threads.deferToThread(
            subprocess.run, [sys.executable, "-c", _DELIVER, str(maildir), name], check=True
        )
        line = await threads.deferToThread(client.next_line)
        self.assertEqual(line, b"* 1 EXISTS")
