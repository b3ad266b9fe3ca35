"""Durable delivery (MaildirSink) and the group committer, driven through the real reactor."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from mailhub import spooled
from mailhub.envelope import Envelope, Recipient
from mailhub.interfaces import DeliveryError, IIncomingMessage, IMessageSink
from mailhub.store import delivery
from mailhub.store.delivery import GroupCommitter, MaildirSink, StaleTmpCleaner
from mailhub.store.store import MailStore

BODY = b"Subject: hello\r\n\r\n" + b"x" * 4000 + b"\r\n"
NAME = re.compile(rf"^(\d+)\.M\d+P{os.getpid()}Q\d+\.mx\.test,S=(\d+)$")


def envelope(*mailboxes: str, mail_from: str = "sender@example.org", qid: str = "Q1") -> Envelope:
    return Envelope(
        queue_id=qid,
        mail_from=mail_from,
        recipients=[Recipient(m.upper(), m) for m in mailboxes],
    )


def is_dir_fd(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


def patch_file_sync(case: TestCase, before: Callable[[int, bytes], None]) -> None:
    """Call ``before(fd, head)`` just before each point where a message file's data is made
    durable: an os.fsync() of a file, or a write to a file opened O_DSYNC (small messages:
    one synchronous write, no fsync). ``head``: the file's first bytes. It may raise."""
    real_fsync, real_write_all = os.fsync, delivery.write_all

    def fsync(fd: int) -> None:
        if not is_dir_fd(fd):
            before(fd, Path(os.readlink(f"/proc/self/fd/{fd}")).read_bytes()[:200])
        real_fsync(fd)

    def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DSYNC:
            before(fd, bytes(data[:200]))
        real_write_all(fd, data)

    case.patch(os, "fsync", fsync)
    case.patch(delivery, "write_all", write_all)


def hold_first_batch(case: TestCase, committer: GroupCommitter, n: int) -> None:
    """Hold the first batch's directory fsyncs until ``n`` messages have finished their file
    phase: they all meet in the batches after it, whatever the machine's speed. (Instead of
    a slow disk made by sleeping in fsync, which only makes meeting likely.)"""
    done = 0
    changed = threading.Condition()
    write_and_link = delivery._write_and_link

    def counted(job: object) -> None:
        nonlocal done
        try:
            write_and_link(job)
        finally:
            with changed:
                done += 1
                changed.notify_all()

    fsync_all = committer._fsync_all
    first = [True]

    def held(dirs: object) -> object:
        with changed:
            if first[0]:
                first[0] = False
                changed.wait_for(lambda: done >= n, timeout=30)
        return fsync_all(dirs)

    case.patch(delivery, "_write_and_link", counted)
    case.patch(committer, "_fsync_all", held)


class SinkTestCase(TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.store = MailStore(self.root, "mx.test")
        self.committer = GroupCommitter(threads=8)
        self.committer.startService()
        self.addCleanup(self.committer.stopService)
        self.sink = MaildirSink(self.store, self.committer, flush_size=1024)

    def box(self, address: str) -> Path:
        local, domain = address.split("@")
        return self.root / domain / local

    def create(self, *addresses: str) -> None:
        """Create mailboxes up front (creation fsyncs too, which some tests patch)."""
        for address in addresses:
            self.store.mailbox(address, create=True)

    def files(self, address: str, sub: str) -> list[str]:
        try:
            return sorted(os.listdir(self.box(address) / sub))
        except FileNotFoundError:
            return []

    def send(self, env: Envelope, body: bytes = BODY, chunk: int = 100) -> defer.Deferred[str]:
        msg = self.sink.open(env)
        for i in range(0, len(body), chunk):
            msg.write(body[i : i + chunk])
        return msg.commit()


class DeliveryTests(SinkTestCase):
    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(IMessageSink, self.sink))
        msg = self.sink.open(envelope("a@example.com"))
        self.assertTrue(verifyObject(IIncomingMessage, msg))
        msg.abort()

    @defer.inlineCallbacks
    def test_commit_delivers_with_return_path(self):
        qid = yield self.send(envelope("a@example.com", qid="ABC123"))
        self.assertEqual(qid, "ABC123")
        [name] = self.files("a@example.com", "new")
        m = NAME.match(name)
        self.assertIsNotNone(m)
        data = (self.box("a@example.com") / "new" / name).read_bytes()
        self.assertEqual(data, b"Return-Path: <sender@example.org>\r\n" + BODY)
        self.assertEqual(int(m.group(2)), len(data))  # ,S= is the size on disk
        self.assertLess(abs(int(m.group(1)) - time.time()), 5)
        self.assertEqual(self.files("a@example.com", "tmp"), [])
        # Readers see it, with the size from the name.
        [info] = self.store.mailbox("a@example.com").folder().sync().messages
        self.assertEqual(info.size, len(data))

    @defer.inlineCallbacks
    def test_null_reverse_path(self):
        yield self.send(envelope("a@example.com", mail_from=""))
        [name] = self.files("a@example.com", "new")
        data = (self.box("a@example.com") / "new" / name).read_bytes()
        self.assertTrue(data.startswith(b"Return-Path: <>\r\n"))

    @defer.inlineCallbacks
    def test_one_copy_per_distinct_mailbox(self):
        env = envelope("a@example.com", "b@example.com", "a@example.com", "c@other.example")
        yield self.send(env)
        inodes = set()
        for address in ("a@example.com", "b@example.com", "c@other.example"):
            [name] = self.files(address, "new")
            inodes.add(os.stat(self.box(address) / "new" / name).st_ino)
        self.assertEqual(len(inodes), 1)  # hard links: one inode, one copy per mailbox

    @defer.inlineCallbacks
    def test_a_mailbox_on_another_file_system_gets_a_copy(self):
        """link() across file systems fails (EXDEV): that mailbox gets its own copy, written
        through its own tmp/; the first mailbox's file is renamed as usual."""
        self.create("a@example.com", "b@example.com")
        real_link = os.link
        root_a = str(self.box("a@example.com"))

        def link(src: str, dst: str) -> None:
            if src.startswith(root_a + "/") != dst.startswith(root_a + "/"):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            real_link(src, dst)

        self.patch(os, "link", link)
        yield self.send(envelope("a@example.com", "b@example.com"))
        paths = []
        for address in ("a@example.com", "b@example.com"):
            [name] = self.files(address, "new")
            paths.append(self.box(address) / "new" / name)
            self.assertEqual(self.files(address, "tmp"), [])
        a, b = paths
        self.assertEqual(a.read_bytes(), b.read_bytes())
        self.assertNotEqual(os.stat(a).st_ino, os.stat(b).st_ino)  # a copy, not a link
        self.assertEqual(os.stat(a).st_nlink, 1)

    def test_nothing_visible_before_durable(self):
        self.create("a@example.com", "b@example.com")
        """The file is fsync'd before it appears in new/, new/ is fsync'd after the link, and
        commit() fires only after both (maildir.html's order)."""
        events: list[tuple[str, list[str]]] = []
        real_fsync = os.fsync
        inbox_new = self.box("a@example.com") / "new"

        def dir_fsync(fd: int) -> None:
            if is_dir_fd(fd):
                events.append(("dir", sorted(os.listdir(inbox_new))))
            real_fsync(fd)

        self.patch(os, "fsync", dir_fsync)
        patch_file_sync(self, lambda fd, head: events.append(("file", os.listdir(inbox_new))))
        d = self.send(envelope("a@example.com"))

        def check(_: str) -> None:
            self.assertEqual([kind for kind, _ in events], ["file", "dir"])
            self.assertEqual(events[0][1], [])  # file fsync: nothing in new/ yet
            self.assertEqual(len(events[1][1]), 1)  # dir fsync: after the link
            self.assertEqual(len(self.files("a@example.com", "new")), 1)

        return d.addCallback(check)

    @defer.inlineCallbacks
    def test_commit_waits_for_fsync(self):
        self.create("a@example.com", "b@example.com")
        gate, reached = threading.Event(), threading.Event()

        def slow_sync(fd: int, head: bytes) -> None:
            reached.set()
            gate.wait(10)

        patch_file_sync(self, slow_sync)
        d = self.send(envelope("a@example.com"))
        # Waited for in a thread: the flushes before the commit report to this reactor.
        self.assertTrue((yield threads.deferToThread(reached.wait, 10)))
        self.assertNoResult(d)
        self.assertEqual(self.files("a@example.com", "new"), [])
        gate.set()
        yield d
        self.assertEqual(len(self.files("a@example.com", "new")), 1)

    def test_failing_file_fsync(self):
        self.create("a@example.com", "b@example.com")

        def broken(fd: int, head: bytes) -> None:
            raise OSError(errno.EIO, "I/O error")

        patch_file_sync(self, broken)
        d = self.send(envelope("a@example.com", "b@example.com"))

        def check(err: DeliveryError) -> None:
            self.assertFalse(err.permanent)
            for address in ("a@example.com", "b@example.com"):
                self.assertEqual(self.files(address, "new"), [])
                self.assertEqual(self.files(address, "tmp"), [])

        return self.assertFailure(d, DeliveryError).addCallback(check)

    def test_failing_dir_fsync_unlinks_copies(self):
        self.create("a@example.com", "b@example.com")
        real_fsync = os.fsync

        def broken_dirs(fd: int) -> None:
            if is_dir_fd(fd):
                raise OSError(errno.EIO, "I/O error")
            real_fsync(fd)

        self.patch(os, "fsync", broken_dirs)
        d = self.send(envelope("a@example.com", "b@example.com"))

        def check(err: DeliveryError) -> None:
            for address in ("a@example.com", "b@example.com"):
                self.assertEqual(self.files(address, "new"), [])
                self.assertEqual(self.files(address, "tmp"), [])

        return self.assertFailure(d, DeliveryError).addCallback(check)

    @defer.inlineCallbacks
    def test_abort(self):
        msg = self.sink.open(envelope("a@example.com"))
        msg.write(b"x" * 5000)  # beyond flush_size: flushed to the tmp file in a worker
        msg.write(b"y" * 5000)  # waits for that flush
        yield msg.ready()  # the first flush is done: the tmp file exists, the second runs
        self.assertEqual(len(self.files("a@example.com", "tmp")), 1)
        msg.abort()
        msg.abort()  # idempotent
        yield self.committer.stopService()  # every job done, the discarding one too
        self.assertEqual(self.files("a@example.com", "tmp"), [])
        self.assertEqual(self.files("a@example.com", "new"), [])
        self.assertRaises(DeliveryError, msg.write, b"more")
        yield self.assertFailure(msg.commit(), DeliveryError)

    @defer.inlineCallbacks
    def test_abort_between_flushes(self):
        msg = self.sink.open(envelope("a@example.com"))
        msg.write(b"x" * 5000)
        yield self.committer.stopService()  # the flush is done, no other runs
        self.committer.startService()
        self.assertEqual(len(self.files("a@example.com", "tmp")), 1)
        msg.abort()
        yield self.committer.stopService()
        self.assertEqual(self.files("a@example.com", "tmp"), [])

    @defer.inlineCallbacks
    def test_flushes_run_off_the_reactor_thread_in_order(self):
        writers: list[threading.Thread] = []
        real_write = spooled.write_all

        def recording(fd: int, data: bytearray) -> None:
            writers.append(threading.current_thread())
            real_write(fd, data)

        self.patch(spooled, "write_all", recording)
        msg = self.sink.open(envelope("a@example.com"))
        parts = [bytes([65 + i]) * 1500 + b"\r\n" for i in range(8)]
        for part in parts:
            msg.write(part)
            wait = msg.ready()
            if wait is not None:  # a full buffer waits for the running flush: so do we
                yield wait
        yield msg.commit()
        self.assertGreaterEqual(len(writers), 2)
        self.assertNotIn(threading.current_thread(), writers)
        [name] = self.files("a@example.com", "new")
        data = (self.box("a@example.com") / "new" / name).read_bytes()
        self.assertEqual(data, b"Return-Path: <sender@example.org>\r\n" + b"".join(parts))

    @defer.inlineCallbacks
    def test_ready_holds_the_writer_while_a_full_buffer_waits(self):
        gate = threading.Event()
        real_write = spooled.write_all

        def slow(fd: int, data: bytearray) -> None:
            gate.wait(10)
            real_write(fd, data)

        self.patch(spooled, "write_all", slow)
        msg = self.sink.open(envelope("a@example.com"))
        msg.write(b"x" * 2000)  # the first flush, held in the worker
        self.assertIsNone(msg.ready())  # nothing waits for it yet
        msg.write(b"y" * 2000)  # a full buffer behind it
        wait = msg.ready()
        self.assertIsNotNone(wait)
        self.assertNoResult(wait)
        gate.set()
        yield wait
        d = msg.commit()
        yield d
        [name] = self.files("a@example.com", "new")
        data = (self.box("a@example.com") / "new" / name).read_bytes()
        self.assertEqual(data, b"Return-Path: <sender@example.org>\r\n" + b"x" * 2000 + b"y" * 2000)

    @defer.inlineCallbacks
    def test_commit_takes_the_waiting_buffer_after_the_running_flush(self):
        gate, started = threading.Event(), threading.Event()
        real_write = spooled.write_all

        def slow(fd: int, data: bytearray) -> None:
            started.set()
            gate.wait(10)
            real_write(fd, data)

        self.patch(spooled, "write_all", slow)
        msg = self.sink.open(envelope("a@example.com"))
        msg.write(b"x" * 2000)
        msg.write(b"y" * 2000)  # waiting for the first flush
        msg.write(b"z" * 10)
        self.assertTrue((yield threads.deferToThread(started.wait, 10)))
        d = msg.commit()
        self.assertRaises(DeliveryError, msg.write, b"late")
        self.assertNoResult(d)
        gate.set()
        yield d
        [name] = self.files("a@example.com", "new")
        data = (self.box("a@example.com") / "new" / name).read_bytes()
        self.assertEqual(
            data,
            b"Return-Path: <sender@example.org>\r\n" + b"x" * 2000 + b"y" * 2000 + b"z" * 10,
        )

    @defer.inlineCallbacks
    def test_commit_withdraws_a_flush_no_worker_has_started(self):
        """Every worker busy: the commit takes the queued flush's buffer, one job does all."""
        committer = GroupCommitter(threads=1)
        committer.startService()
        self.addCleanup(committer.stopService)
        sink = MaildirSink(self.store, committer, flush_size=1024)
        flushes: list[bytearray] = []
        real_write = spooled.write_all

        def recording(fd: int, data: bytearray) -> None:
            flushes.append(data)
            real_write(fd, data)

        self.patch(spooled, "write_all", recording)
        gate = threading.Event()
        busy = committer.run(gate.wait, 10)  # the only worker
        msg = sink.open(envelope("a@example.com"))
        msg.write(b"x" * 2000)  # a flush, queued behind the busy worker
        msg.write(b"y" * 10)
        d = msg.commit()
        gate.set()
        yield busy
        yield d
        self.assertEqual(flushes, [])  # the flush never wrote: the commit's job did
        [name] = self.files("a@example.com", "new")
        data = (self.box("a@example.com") / "new" / name).read_bytes()
        self.assertEqual(data, b"Return-Path: <sender@example.org>\r\n" + b"x" * 2000 + b"y" * 10)
        self.assertEqual(self.files("a@example.com", "tmp"), [])

    def test_abort_small_message(self):
        msg = self.sink.open(envelope("a@example.com"))
        msg.write(b"tiny")
        msg.abort()
        self.assertEqual(self.files("a@example.com", "tmp"), [])
        self.assertEqual(self.files("a@example.com", "new"), [])

    @defer.inlineCallbacks
    def test_write_error(self):
        """A flush fails in the worker: the next write says so, and nothing stays."""
        msg = self.sink.open(envelope("a@example.com"))

        def full(fd: int, data: bytearray) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(spooled, "write_all", full)
        msg.write(b"x" * 5000)  # the flush runs (and fails) in the worker
        msg.write(b"y" * 5000)
        yield msg.ready()  # fires when the flush ended
        e = self.assertRaises(DeliveryError, msg.write, b"x")
        self.assertFalse(e.permanent)
        self.assertIn("No space left", str(e))
        f = yield self.assertFailure(msg.commit(), DeliveryError)
        self.assertIs(f, e)
        yield self.committer.stopService()
        self.assertEqual(self.files("a@example.com", "tmp"), [])

    @defer.inlineCallbacks
    def test_write_error_found_at_commit(self):
        msg = self.sink.open(envelope("a@example.com"))
        gate, started = threading.Event(), threading.Event()

        def full(fd: int, data: bytearray) -> None:
            started.set()
            gate.wait(10)
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(spooled, "write_all", full)
        msg.write(b"x" * 5000)
        self.assertTrue((yield threads.deferToThread(started.wait, 10)))
        d = msg.commit()  # while the flush runs
        gate.set()
        e = yield self.assertFailure(d, DeliveryError)
        self.assertIn("No space left", str(e))
        yield self.committer.stopService()
        self.assertEqual(self.files("a@example.com", "tmp"), [])
        self.assertEqual(self.files("a@example.com", "new"), [])

    @defer.inlineCallbacks
    def test_file_too_big_is_permanent(self):
        msg = self.sink.open(envelope("a@example.com"))

        def too_big(fd: int, data: bytearray) -> None:
            raise OSError(errno.EFBIG, "File too large")

        self.patch(spooled, "write_all", too_big)
        msg.write(b"x" * 5000)
        msg.write(b"y" * 5000)
        yield msg.ready()  # the flush has failed
        e = yield self.assertFailure(msg.commit(), DeliveryError)
        self.assertTrue(e.permanent)

    def test_bad_mailbox_name_is_permanent(self):
        e = self.assertRaises(DeliveryError, self.sink.open, envelope("../x@example.com"))
        self.assertTrue(e.permanent)
        e = self.assertRaises(DeliveryError, self.sink.open, envelope())
        self.assertTrue(e.permanent)
        e = self.assertRaises(
            DeliveryError, self.sink.open, envelope("a@example.com", mail_from="a\r\nX: y")
        )
        self.assertTrue(e.permanent)
        self.assertFalse(self.root.exists() and any(self.root.rglob("x")))

    @defer.inlineCallbacks
    def test_mailbox_removed_under_cache(self):
        yield self.send(envelope("a@example.com"))
        shutil.rmtree(self.box("a@example.com"))
        # The first attempt fails (mailbox gone), the sink forgets its cache, the next works.
        yield self.assertFailure(self.send(envelope("a@example.com"), b"small"), DeliveryError)
        yield self.send(envelope("a@example.com"))
        self.assertEqual(len(self.files("a@example.com", "new")), 1)

    @defer.inlineCallbacks
    def test_concurrent_commits_share_directory_fsyncs(self):
        n = 20
        hold_first_batch(self, self.committer, n)
        results = yield defer.gatherResults(
            [self.send(envelope("a@example.com", qid=f"q{i}")) for i in range(n)]
        )
        self.assertEqual(sorted(results), sorted(f"q{i}" for i in range(n)))
        self.assertEqual(len(self.files("a@example.com", "new")), n)
        # Without batching there would be one directory fsync per message.
        self.assertLessEqual(self.committer.dir_fsyncs, n // 2)
        self.assertEqual(self.committer.dir_fsyncs, self.committer.batches)

    @defer.inlineCallbacks
    def test_batch_reports_to_the_reactor_once(self):
        """Results come back with one callFromThread per directory batch, not per message."""
        self.create("a@example.com")
        calls: list[object] = []
        real_call = reactor.callFromThread

        def counting(f, *args, **kwargs):
            if f == self.committer._deliver:  # not the flushes' (one per big message)
                calls.append(f)
            return real_call(f, *args, **kwargs)

        self.patch(self.committer, "_reactor", _CallFromThreadProxy(counting))
        n = 20
        hold_first_batch(self, self.committer, n)
        results = yield defer.gatherResults(
            [self.send(envelope("a@example.com", qid=f"q{i}")) for i in range(n)]
        )
        self.assertEqual(sorted(results), sorted(f"q{i}" for i in range(n)))
        self.assertEqual(len(calls), self.committer.batches)
        self.assertLess(len(calls), n)

    @defer.inlineCallbacks
    def test_failing_file_fsync_fails_only_that_message(self):
        """One message's fsync fails while others in the same batch succeed."""
        self.create("a@example.com")

        def broken_for_bad(fd: int, head: bytes) -> None:
            if b"<bad@example.org>" in head:
                raise OSError(errno.EIO, "I/O error")

        patch_file_sync(self, broken_for_bad)
        senders = ["good@example.org"] * 5 + ["bad@example.org"] + ["good@example.org"] * 5
        hold_first_batch(self, self.committer, len(senders))  # the commits overlap
        ds = [
            self.send(envelope("a@example.com", mail_from=m, qid=f"q{i}"))
            for i, m in enumerate(senders)
        ]
        results = yield defer.DeferredList(ds, consumeErrors=True)
        outcomes = [ok for ok, _ in results]
        self.assertEqual(outcomes, [m == "good@example.org" for m in senders])
        [(_, failure)] = [r for r in results if not r[0]]
        self.assertIsInstance(failure.value, DeliveryError)
        new = self.files("a@example.com", "new")
        self.assertEqual(len(new), 10)
        for name in new:
            data = (self.box("a@example.com") / "new" / name).read_bytes()
            self.assertNotIn(b"bad@example.org", data)
        self.assertEqual(self.files("a@example.com", "tmp"), [])

    @defer.inlineCallbacks
    def test_failing_dir_fsync_fails_only_messages_for_that_directory(self):
        """A batch with a failed directory fsync fails the messages linked into it (and takes
        their other copies out of new/ too); the rest of the batch is delivered."""
        self.create("a@example.com", "b@example.com")
        bad_inode = os.stat(self.box("b@example.com") / "new").st_ino
        real_fsync = os.fsync

        def broken_b(fd: int) -> None:
            if is_dir_fd(fd):
                if os.fstat(fd).st_ino == bad_inode:
                    raise OSError(errno.EIO, "I/O error")
            real_fsync(fd)

        self.patch(os, "fsync", broken_b)
        hold_first_batch(self, self.committer, 12)  # the next batch collects several messages
        targets = [("a@example.com",), ("a@example.com", "b@example.com"), ("b@example.com",)]
        ds = [
            self.send(envelope(*targets[i % 3], mail_from=f"s{i}@example.org", qid=f"q{i}"))
            for i in range(12)
        ]
        results = yield defer.DeferredList(ds, consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [i % 3 == 0 for i in range(12)])
        for ok, value in results:
            if not ok:
                self.assertIsInstance(value.value, DeliveryError)
        self.assertEqual(len(self.files("a@example.com", "new")), 4)
        for name in self.files("a@example.com", "new"):
            data = (self.box("a@example.com") / "new" / name).read_bytes()
            sender = int(data.split(b"<s", 1)[1].split(b"@", 1)[0])
            self.assertEqual(sender % 3, 0)
        self.assertEqual(self.files("b@example.com", "new"), [])
        self.assertEqual(self.files("a@example.com", "tmp"), [])
        self.assertEqual(self.files("b@example.com", "tmp"), [])

    @defer.inlineCallbacks
    def test_new_mailbox_is_created_at_commit(self):
        """A small message to a new mailbox touches no disk on the reactor before commit()."""
        msg = self.sink.open(envelope("new@example.com"))
        msg.write(b"small")
        self.assertFalse(self.box("new@example.com").exists())
        yield msg.commit()
        self.assertEqual(len(self.files("new@example.com", "new")), 1)
        self.assertTrue(self.store.has_mailbox("new@example.com"))

    @defer.inlineCallbacks
    def test_mailbox_creation_failure(self):
        (self.root / "example.com").mkdir(parents=True)
        (self.root / "example.com" / "x").write_bytes(b"a file where the mailbox should be")
        d = self.send(envelope("x@example.com"), b"small")  # not flushed: created at commit
        e = yield self.assertFailure(d, DeliveryError)
        self.assertFalse(e.permanent)
        self.assertIn("could not create the mailbox", str(e))

    @defer.inlineCallbacks
    def test_small_message_is_one_synchronous_write(self):
        """A message that reaches commit unflushed: created O_DSYNC, written once (that write
        is its fsync), renamed into new/ with mode 0600 and no other name left behind."""
        self.create("a@example.com")
        self.sink.flush_size = 1 << 20
        writes: list[int] = []
        file_fsyncs: list[int] = []
        real_fsync, real_write_all = os.fsync, delivery.write_all

        def fsync(fd: int) -> None:
            if not is_dir_fd(fd):
                file_fsyncs.append(fd)
            real_fsync(fd)

        def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
            writes.append(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DSYNC)
            real_write_all(fd, data)

        self.patch(os, "fsync", fsync)
        self.patch(delivery, "write_all", write_all)
        yield self.send(envelope("a@example.com"))
        self.assertEqual(writes, [os.O_DSYNC])
        self.assertEqual(file_fsyncs, [])
        [name] = self.files("a@example.com", "new")
        st = os.stat(self.box("a@example.com") / "new" / name)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(st.st_nlink, 1)  # renamed: no tmp/ name left linked
        self.assertEqual(self.files("a@example.com", "tmp"), [])

    @defer.inlineCallbacks
    def test_flushed_message_is_fsynced_before_it_is_linked(self):
        """A message flushed before commit has a plain tmp file: it is fsync'd, and only then
        named in new/ (in every mailbox)."""
        self.create("a@example.com", "b@example.com")
        listings: list[list[str]] = []
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if not is_dir_fd(fd):
                listings.append(
                    self.files("a@example.com", "new") + self.files("b@example.com", "new")
                )
            real_fsync(fd)

        self.patch(os, "fsync", fsync)
        msg = self.sink.open(envelope("a@example.com", "b@example.com"))
        msg.write(b"x" * 5000)  # beyond flush_size: flushed to the tmp file in a worker
        msg.write(b"y" * 5000)  # waits for that flush
        yield msg.ready()  # the first flush is done: the tmp file exists
        self.assertEqual(len(self.files("a@example.com", "tmp")), 1)
        yield msg.commit()
        self.assertEqual(listings, [[]])
        inodes = set()
        for address in ("a@example.com", "b@example.com"):
            [name] = self.files(address, "new")
            st = os.stat(self.box(address) / "new" / name)
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
            inodes.add(st.st_ino)
            self.assertEqual(self.files(address, "tmp"), [])
        self.assertEqual(len(inodes), 1)

    @defer.inlineCallbacks
    def test_many_small_writes_large_message(self):
        body = b"".join(b"line %06d\r\n" % i for i in range(20000))  # ~260 KB
        yield self.send(envelope("a@example.com"), body, chunk=7)
        [name] = self.files("a@example.com", "new")
        data = (self.box("a@example.com") / "new" / name).read_bytes()
        self.assertEqual(data, b"Return-Path: <sender@example.org>\r\n" + body)


class _CallFromThreadProxy:
    def __init__(self, call_from_thread) -> None:
        self.callFromThread = call_from_thread


class CommitterServiceTests(SinkTestCase):
    def test_not_running(self):
        committer = GroupCommitter(threads=2)
        sink = MaildirSink(self.store, committer, flush_size=10)
        msg = sink.open(envelope("a@example.com"))
        msg.write(b"more than ten bytes: the tmp file exists")
        d = self.assertFailure(msg.commit(), DeliveryError)
        return d.addCallback(lambda _: self.assertEqual(self.files("a@example.com", "tmp"), []))

    @defer.inlineCallbacks
    def test_stop_waits_for_commits_in_flight(self):
        gate, reached = threading.Event(), threading.Event()

        def slow_sync(fd: int, head: bytes) -> None:
            reached.set()
            gate.wait(10)

        patch_file_sync(self, slow_sync)
        committed = self.send(envelope("a@example.com"))
        self.assertTrue((yield threads.deferToThread(reached.wait, 10)))
        stopped = self.committer.stopService()
        self.assertNoResult(stopped)
        gate.set()
        yield defer.gatherResults([committed, stopped])

    def test_work_under_a_held_lock_never_queues_behind_jobs_waiting_for_it(self):
        # Every main-lane thread busy with a job waiting for a folder lock we hold (as
        # uidwriter.write_list waits): the holder's write (run_holding) must still run, or
        # both would wait until lock_timeout.
        committer = GroupCommitter(threads=1)
        committer.startService()
        self.addCleanup(committer.stopService)
        released = threading.Event()
        waited = committer.run(released.wait, 30)  # the one main thread, "waiting for the lock"
        held = committer.run_holding(released.set)  # the holder's write, then "the release"
        both = defer.gatherResults([held, waited])
        return both.addCallback(lambda results: self.assertEqual(results, [None, True]))

    def test_work_under_a_held_lock_is_done_while_stopping_and_after(self):
        # The lock holder's command is answered after its write: the write is taken while
        # commits in flight drain, and done in place once the threads are gone.
        committer = GroupCommitter(threads=1)
        committer.startService()
        gate = threading.Event()
        in_flight = committer.run(gate.wait, 30)
        stopped = committer.stopService()
        self.assertFalse(committer.running)
        self.assertFailure(committer.run(lambda: None), DeliveryError)  # new work: refused
        done = []
        draining = committer.run_holding(done.append, "while stopping")
        gate.set()

        def after(_: object) -> defer.Deferred[None]:
            self.assertEqual(done, ["while stopping"])
            return committer.run_holding(done.append, "after")

        d = defer.gatherResults([in_flight, draining, stopped]).addCallback(after)
        return d.addCallback(lambda _: self.assertEqual(done, ["while stopping", "after"]))

    def test_stale_tmp_cleaner_runs_at_start(self):
        self.store.mailbox("a@example.com", create=True)
        stale = self.box("a@example.com") / "tmp" / "stale"
        stale.write_bytes(b"x")
        store = MailStore(self.root, "mx.test", now=lambda: time.time() + 40 * 3600)
        cleaner = StaleTmpCleaner(store, interval=3600)
        runs: list[defer.Deferred[int]] = []
        clean, args, kwargs = cleaner.call
        cleaner.call = (lambda: runs.append(clean(*args, **kwargs)) or runs[-1], (), {})
        cleaner.startService()
        self.addCleanup(cleaner.stopService)
        self.assertEqual(len(runs), 1)  # at start, without waiting for the interval
        # The first run's own Deferred: the clean-up is done when it fires.
        return runs[0].addCallback(lambda _: self.assertFalse(stale.exists()))


class FolderDeliveryTests(SinkTestCase):
    """``Envelope.folder``: the checks' quarantine puts every local copy into that folder."""

    def folder_envelope(self, *mailboxes: str, folder: str = "Junk") -> Envelope:
        env = envelope(*mailboxes)
        env.folder = folder
        return env

    @defer.inlineCallbacks
    def test_into_an_existing_junk_folder(self):
        self.create("a@example.com")  # a mailbox made at login has its special folders
        yield self.send(self.folder_envelope("a@example.com"))
        self.assertEqual(self.files("a@example.com", "new"), [])
        [name] = os.listdir(self.box("a@example.com") / ".Junk" / "new")
        data = (self.box("a@example.com") / ".Junk" / "new" / name).read_bytes()
        self.assertEqual(data, b"Return-Path: <sender@example.org>\r\n" + BODY)
        # IMAP sees it in Junk, INBOX stays empty.
        mailbox = self.store.mailbox("a@example.com")
        self.assertEqual(len(mailbox.folder("Junk").sync().messages), 1)
        self.assertEqual(len(mailbox.folder().sync().messages), 0)

    @defer.inlineCallbacks
    def test_first_delivery_makes_mailbox_and_special_folders(self):
        # Neither mailbox exists: both are made with their special-use folders, subscribed.
        yield self.send(self.folder_envelope("a@example.com", "b@other.example"), chunk=7)
        for address in ("a@example.com", "b@other.example"):
            mailbox = self.store.mailbox(address)
            self.assertEqual(len(mailbox.folder("Junk").sync().messages), 1)
            self.assertIn("Junk", mailbox.subscriptions())
            self.assertIn("Sent", mailbox.list_folders())
            self.assertEqual(self.files(address, "new"), [])

    @defer.inlineCallbacks
    def test_junk_folder_made_when_missing(self):
        self.store.delivery_dirs("a@example.com")  # INBOX only, as a first delivery makes it
        self.assertFalse(self.store.mailbox("a@example.com").has_folder("Junk"))
        yield self.send(self.folder_envelope("a@example.com"), body=BODY * 300)  # flushed early
        self.assertEqual(len(self.store.mailbox("a@example.com").folder("Junk").sync().messages), 1)

    @defer.inlineCallbacks
    def test_inbox_and_junk_are_told_apart(self):
        touched: list[tuple] = []
        self.sink.delivered = lambda *a: touched.append(a)
        yield self.send(envelope("a@example.com"))
        yield self.send(self.folder_envelope("a@example.com"))
        yield self.send(envelope("a@example.com"))
        self.assertEqual(
            touched, [("a@example.com",), ("a@example.com", "Junk"), ("a@example.com",)]
        )
        mailbox = self.store.mailbox("a@example.com")
        self.assertEqual(len(mailbox.folder().sync().messages), 2)
        self.assertEqual(len(mailbox.folder("Junk").sync().messages), 1)
