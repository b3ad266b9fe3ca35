"""IMAP APPEND's literal goes straight into the target folder's tmp/ as it arrives, and is
delivered by a link from there (written once, as SMTP DATA is); the fsync and link run through
the factory's ``run`` (a worker thread in the service), not on the reactor thread."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred

from mailhub.store import dotlock, uidlist
from mailhub.store.dotlock import DotLock
from tests.support.imap import IMAPTestCase, message

BIG = 1024 * 1024  # over the framer's spool threshold (256 KiB)


def big_message(size: int = BIG) -> bytes:
    head = message("big")
    line = b"0123456789abcdef" * 4 + b"\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return (head + body)[:size]


class HeldRunner:
    """The factory's ``run``: keeps each call until the test runs it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

    def __call__(self, f: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((d, f, args))
        return d

    def run_all(self) -> None:
        calls, self.calls = self.calls, []
        for d, f, args in calls:
            maybeDeferred(f, *args).chainDeferred(d)


class LiteralIntoTheFolder(IMAPTestCase):
    def files(self, folder: str, sub: str) -> list[Path]:
        path = self.store.mailbox("alice@example.org", create=True).folder(folder)._path / sub
        return sorted(path.iterdir())

    def test_written_into_tmp_as_it_arrives_then_linked(self) -> None:
        data = big_message()
        client = self.login(select=None)
        client.run(f"""
            C: a1 APPEND Drafts (\\Seen) {{{len(data)}}}
            S: + Ready for literal data
        """)
        half = len(data) // 2
        client.send(data[:half])
        [spool] = self.files("Drafts", "tmp")  # the literal's own file, not a system temp file
        self.assertEqual(spool.stat().st_size, half)  # written as it came, nothing held back
        inode = spool.stat().st_ino
        client.send(data[half:] + b"\r\n")
        [line] = client.lines()
        self.assertTrue(line.startswith("a1 OK [APPENDUID "), line)
        self.assertEqual(self.files("Drafts", "tmp"), [])
        [delivered] = self.files("Drafts", "new")  # new/ even with \Seen: it is \Recent
        self.assertEqual(delivered.stat().st_ino, inode)  # a link: the octets were written once
        self.assertEqual(self.folder("Drafts").read_message(1), data)
        self.assertEqual(self.folder("Drafts").sync().messages[0].flags, {"S"})

    def test_mailbox_name_as_a_literal(self) -> None:
        data = big_message()
        client = self.login(select=None)
        client.command('CREATE "big one"')
        client.send(b"a1 APPEND {7+}\r\nbig one {%d+}\r\n" % len(data) + data[:1000])
        self.assertEqual(len(self.files("big one", "tmp")), 1)
        client.send(data[1000:] + b"\r\n")
        self.assertTrue(client.lines()[0].startswith("a1 OK [APPENDUID "))
        self.assertEqual(self.folder("big one").read_message(1), data)

    def test_lost_connection_mid_literal_leaves_nothing(self) -> None:
        data = big_message()
        client = self.login(select=None)
        client.send(b"a1 APPEND INBOX {%d+}\r\n" % len(data) + data[:500_000])
        self.assertEqual(len(self.files("INBOX", "tmp")), 1)
        client.protocol.connectionLost(None)
        self.assertEqual(self.files("INBOX", "tmp"), [])
        self.assertEqual(self.folder().sync().count, 0)

    def test_missing_folder_is_trycreate_and_leaves_nothing(self) -> None:
        data = big_message()
        client = self.login(select=None)
        client.send(b"a1 APPEND Nope {%d+}\r\n" % len(data) + data + b"\r\n")
        self.assertEqual(client.lines(), ["a1 NO [TRYCREATE] Mailbox does not exist"])
        self.assertEqual(self.files("INBOX", "tmp"), [])

    def test_folder_created_while_the_literal_arrives(self) -> None:
        # It was not there when the literal began (so it went to a temporary file): copied once.
        data = big_message()
        client = self.login(select=None)
        client.send(b"a1 APPEND Later {%d+}\r\n" % len(data) + data[:1000])
        self.login(select=None).command("CREATE Later")
        client.send(data[1000:] + b"\r\n")
        self.assertTrue(client.lines()[0].startswith("a1 OK [APPENDUID "))
        self.assertEqual(self.folder("Later").read_message(1), data)
        self.assertEqual(self.files("Later", "tmp"), [])

    def test_appendlimit_still_holds(self) -> None:
        self.with_limits(max_message_size=BIG - 1)
        client = self.login(select=None)
        client.send(b"a1 APPEND INBOX {%d+}\r\n" % BIG + big_message() + b"\r\na2 NOOP\r\n")
        self.assertEqual(
            client.lines(),
            [f"a1 NO [TOOBIG] Message larger than {BIG - 1} octets", "a2 OK NOOP completed"],
        )
        self.assertEqual(self.files("INBOX", "tmp"), [])


CHUNK = 64 * 1024  # what one read from the socket brings


def chunks(total: int) -> Iterator[bytes]:
    """A ``total``-octet message in CHUNK pieces, made as they are asked for: the test never
    holds it whole either."""
    head = message("huge")
    yield head
    line = b"0123456789abcdef" * 4 + b"\r\n"
    block = line * (CHUNK // len(line))
    left = total - len(head)
    while left:
        piece = block[: min(left, len(block))]
        yield piece
        left -= len(piece)


class BoundedMemory(IMAPTestCase):
    """However big the literal, the session holds at most about one read's worth of it in
    memory: each piece goes to the spool file before the next arrives (issue 16: RSS flat while
    a 100 MiB message is APPENDed; benchmarks/memory_flat.py measures the real process)."""

    SIZE = 32 * 1024 * 1024  # 512 pieces: a literal held in memory would show 500 times over

    def feed(self, client_line: bytes, *, sync: bool) -> None:
        client = self.login(select=None)
        framer = client.protocol._framer
        assert framer is not None
        client.send(client_line)
        if sync:
            self.assertEqual(client.lines(), ["+ Ready for literal data"])
        digest = hashlib.sha256()
        fed = 0
        tracing = tracemalloc.is_tracing()
        if not tracing:
            tracemalloc.start()
            self.addCleanup(tracemalloc.stop)
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        spool: Path | None = None
        for piece in chunks(self.SIZE):
            client.send(piece)
            fed += len(piece)
            digest.update(piece)
            # Nothing held back: the framer's buffer is empty and the file has every octet.
            self.assertEqual(framer.buffered, 0)
            if spool is None:
                [spool] = self.files("INBOX", "tmp")
            self.assertEqual(spool.stat().st_size, fed)
        _, peak = tracemalloc.get_traced_memory()
        # A piece in the buffer, one in the test's hands, and bookkeeping; never the literal.
        self.assertLess(peak - base, 4 * CHUNK + 256 * 1024)
        client.send(b"\r\n")
        [line] = client.lines()
        self.assertTrue(line.startswith("a1 OK [APPENDUID "), line)
        [info] = self.folder().sync().messages
        self.assertEqual(info.size, self.SIZE)
        with self.folder().open_message(info.uid) as f:
            stored = hashlib.sha256()
            while block := f.read(1024 * 1024):
                stored.update(block)
        self.assertEqual(stored.hexdigest(), digest.hexdigest())

    def files(self, folder: str, sub: str) -> list[Path]:
        path = self.store.mailbox("alice@example.org", create=True).folder(folder)._path / sub
        return sorted(path.iterdir())

    def setUp(self) -> None:
        super().setUp()
        self.with_limits(max_message_size=self.SIZE)

    def test_synchronising_literal(self) -> None:
        self.feed(b"a1 APPEND INBOX {%d}\r\n" % self.SIZE, sync=True)

    def test_non_synchronising_literal(self) -> None:
        # RFC 7888 LITERAL+: the octets follow at once, with no "+" from the server.
        self.feed(b"a1 APPEND INBOX {%d+}\r\n" % self.SIZE, sync=False)


class DiskWorkOffTheReactor(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.runner = HeldRunner()
        self.factory = self.make_factory(run=self.runner)

    def test_fsync_and_link_go_through_run(self) -> None:
        for n, data in enumerate((message("small"), big_message())):
            client = self.login(select=None)
            client.send(b"a1 APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\na2 NOOP\r\n")
            self.assertEqual(client.lines(), [])  # waiting for the worker, NOOP behind it
            self.assertEqual(len(self.runner.calls), 1)
            self.assertEqual(self.folder().sync().count, n)  # not linked yet
            self.runner.run_all()
            lines = client.lines()
            self.assertTrue(lines[0].startswith("a1 OK [APPENDUID "), lines)
            self.assertEqual(lines[1], "a2 OK NOOP completed")
        folder = self.folder()
        self.assertEqual([folder.read_message(uid) for uid in (1, 2)], [message("small"), data])

    def test_connection_lost_while_the_worker_runs(self) -> None:
        data = big_message()
        client = self.login(select=None)
        client.send(b"a1 APPEND INBOX (\\Flagged $Work) {%d+}\r\n" % len(data) + data + b"\r\n")
        client.protocol.connectionLost(None)
        self.runner.run_all()  # the worker still owns the file: the delivery completes
        [info] = self.folder().sync().messages  # found by the next sync (no session adopted it)
        self.assertEqual(self.folder().read_message(1), data)
        self.assertEqual((info.flags, info.keywords), ({"F"}, {"$Work"}))
        self.assertEqual(os.listdir(self.folder()._path / "tmp"), [])

    def test_lock_taken_while_the_worker_runs_is_waited_for(self) -> None:
        # Another process takes the folder lock between the placing and the UID: APPEND
        # waits for it on the clock and still answers APPENDUID (RFC 4315 3), never without.
        self.patch(dotlock, "on_reactor_thread", lambda: True)
        client = self.login(select=None)
        client.send(b"a1 APPEND INBOX {5+}\r\nhello\r\n")
        holder = DotLock(self.folder()._path / uidlist.LOCKNAME, in_reactor=lambda: True)
        holder.acquire()
        self.addCleanup(holder.release)
        self.runner.run_all()
        self.clock.advance(1)
        self.assertEqual(client.lines(), [])  # waiting for the lock, not answered without UID
        holder.release()
        self.clock.advance(0.1)
        [line] = client.lines()
        self.assertTrue(line.startswith("a1 OK [APPENDUID "), line)
        self.assertEqual(self.folder().read_message(1), b"hello")

    def test_worker_failure_is_a_clean_no(self) -> None:
        client = self.login(select=None)
        client.send(b"a1 APPEND INBOX ($Work) {5+}\r\nhello\r\n")
        [(d, _f, (_source,))] = self.runner.calls
        self.runner.calls.clear()
        d.errback(OSError(28, "No space left on device"))
        [line] = client.lines()
        self.assertEqual(line, "a1 NO [SERVERBUG] Internal server error")
        self.assertEqual(os.listdir(self.folder()._path / "tmp"), [])
        self.assertEqual(self.folder().sync().count, 0)
        self.flushLoggedErrors(OSError)
