"""A big IMAP APPEND does not grow the server: its literal is streamed to the folder's tmp/.

The server runs as a real ``twistd`` process, so its memory is measured honestly from
``/proc/<pid>/status`` (VmHWM, the peak resident set size) around the APPENDs. The client sends
the message from a generator over a plain socket (imaplib would want it whole in memory here),
and reads it back with FETCH into a hash, so the test process holds no copy either.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.twistd import start_twistd

MiB = 1024 * 1024
# Growth of the server's peak RSS allowed for a whole APPEND (issue 12 5g: flat within 10 MiB).
ALLOWED_GROWTH = 10 * MiB


def chunks(size: int, seed: int) -> Iterator[bytes]:
    """A message of ``size`` octets, made as it is sent: a header, then numbered lines."""
    head = f"From: big@example.test\r\nSubject: big {seed}\r\n\r\n".encode()
    yield head
    left = size - len(head)
    n = 0
    while left > 0:
        block = b"".join(b"%08d %06d abcdefghijklmnopqrstuvwxyz0123456789\r\n" % (n + i, seed)
                         for i in range(1024))  # fmt: skip
        n += 1024
        block = block[:left]
        left -= len(block)
        yield block


def digest(size: int, seed: int) -> str:
    h = hashlib.sha256()
    for block in chunks(size, seed):
        h.update(block)
    return h.hexdigest()


class IMAPClient:
    """Just enough IMAP over a blocking socket to stream a literal each way."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.file = self.sock.makefile("rb")
        self.file.readline()  # greeting
        self.tag = 0

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def command(self, text: bytes) -> list[bytes]:
        self.tag += 1
        tag = b"c%d" % self.tag
        self.sock.sendall(tag + b" " + text + b"\r\n")
        return self.until(tag)

    def until(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def append(self, mailbox: bytes, size: int, seed: int) -> bytes:
        self.tag += 1
        tag = b"c%d" % self.tag
        self.sock.sendall(b"%s APPEND %s {%d}\r\n" % (tag, mailbox, size))
        line = self.file.readline()
        if not line.startswith(b"+"):
            raise AssertionError(line)
        for block in chunks(size, seed):
            self.sock.sendall(block)
        self.sock.sendall(b"\r\n")
        return self.until(tag)[-1]

    def fetch_digest(self, uid: int) -> tuple[int, str]:
        """(size, sha256) of BODY[] of ``uid``, read in pieces."""
        self.tag += 1
        tag = b"c%d" % self.tag
        self.sock.sendall(b"%s UID FETCH %d BODY.PEEK[]\r\n" % (tag, uid))
        line = self.file.readline()
        m = re.search(rb"\{(\d+)\}\r\n\Z", line)
        if m is None:
            raise AssertionError(line)
        size = left = int(m.group(1))
        h = hashlib.sha256()
        while left:
            block = self.file.read(min(left, MiB))
            if not block:
                raise ConnectionError("short literal")
            h.update(block)
            left -= len(block)
        self.until(tag)
        return size, h.hexdigest()


def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert m is not None, status
    return int(m.group(1)) * 1024


class BigAppend(SynchronousTestCase):
    def setUp(self) -> None:
        tmp = Path(self.mktemp()).absolute()
        tmp.mkdir(parents=True)
        config = tmp / "mailhub.toml"
        config.write_text(f"""
[server]
hostname = "mx.example.test"
data_dir = "{tmp / "data"}"
dev = true

[domains]
local = ["example.test"]
catch_all = ["example.test"]

[checks]
enabled = false  # tests never ask the DNS of the world

[listeners]
smtp = ["tcp:0:interface=127.0.0.1"]
imap = ["tcp:0:interface=127.0.0.1"]
# the dev defaults listen on fixed ports: off, so parallel runs on one machine never clash
submission = []
smtps = []
imaps = []
pop3 = []
pop3s = []
web = []

[limits]
max_message_size = "200M"
""")
        self.proc, _smtp, log = start_twistd(self, tmp, config)
        # The listeners start together; the IMAP line may come just after SMTP's.
        found = log.wait_for(r"imap listening on 127\.0\.0\.1:(\d+)")
        self.assertIsNotNone(found, log.read_text())
        self.port = int(found.group(1))

    def client(self) -> IMAPClient:
        c = IMAPClient(self.port)
        self.addCleanup(c.close)
        self.assertTrue(c.command(b"LOGIN alice@example.test x")[-1].startswith(b"c1 OK"))
        return c

    def test_one_64_mib_append_then_four_at_once(self) -> None:
        first = self.client()
        others = [self.client() for _ in range(4)]
        before = peak_rss(self.proc.pid)

        reply = first.append(b"INBOX", 64 * MiB, seed=0)
        self.assertRegex(reply, rb"^c2 OK \[APPENDUID \d+ 1\] APPEND completed")
        one = peak_rss(self.proc.pid)

        replies: list[bytes] = []

        def send(client: IMAPClient, seed: int) -> None:
            replies.append(client.append(b"INBOX", 32 * MiB, seed=seed))

        threads = [threading.Thread(target=send, args=(c, i + 1)) for i, c in enumerate(others)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        four = peak_rss(self.proc.pid)

        self.assertEqual(len(replies), 4)
        for r in replies:
            self.assertRegex(r, rb"^c2 OK \[APPENDUID \d+ [2-5]\] APPEND completed")
        self.assertLess(one - before, ALLOWED_GROWTH, f"{before=} {one=}")
        self.assertLess(four - before, ALLOWED_GROWTH, f"{before=} {four=}")

        # Byte-identical when read back (after the measurement: FETCH is not under test here).
        # Which of the four got which UID is up to the scheduler: compare the sets.
        self.assertTrue(first.command(b"EXAMINE INBOX")[-1].startswith(b"c3 OK"))
        got = {first.fetch_digest(uid) for uid in range(1, 6)}
        want = {(64 * MiB, digest(64 * MiB, 0))}
        want |= {(32 * MiB, digest(32 * MiB, seed)) for seed in range(1, 5)}
        self.assertEqual(got, want)
