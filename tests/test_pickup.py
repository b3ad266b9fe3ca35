"""The pickup directory (mailhub.pickup): durable drops, the collector's hand-over to the queue,
at least once across a crash, claims of other processes, bad files set aside."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from mailhub import pickup
from mailhub.envelope import Envelope
from mailhub.interfaces import DeliveryError
from mailhub.pickup import PickupCollector, PickupEnvelope, drop, pickup_dir
from mailhub.safeio import remove_if_exists


class Incoming:
    def __init__(self, sink: FakeSink, envelope: Envelope) -> None:
        self.sink, self.envelope, self.data = sink, envelope, b""

    def write(self, data: bytes) -> None:
        self.data += data

    def ready(self) -> defer.Deferred[None] | None:
        return None

    def commit(self) -> defer.Deferred[str]:
        if self.sink.fail is not None:
            return defer.fail(self.sink.fail)
        self.sink.committed.append(self)
        return defer.succeed(self.envelope.queue_id)

    def abort(self) -> None:
        self.sink.aborted += 1


class FakeSink:
    def __init__(self) -> None:
        self.committed: list[Incoming] = []
        self.aborted = 0
        self.fail: DeliveryError | None = None

    def open(self, envelope: Envelope) -> Incoming:
        return Incoming(self, envelope)


ENVELOPE = PickupEnvelope("app@example.test", ("a@example.test", "b@example.test"), 1000, 0.0)


class Collector(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = Path(self.mktemp())
        self.clock = task.Clock()
        self.sink = FakeSink()

    def collector(self) -> PickupCollector:
        c = PickupCollector(self.data, self.sink, self.clock, "mx.test", use_inotify=False)
        c.startService()
        self.addCleanup(c.stopService)
        return c

    def left(self) -> list[str]:
        root = pickup_dir(self.data)
        return sorted(n for d in ("new", "cur", "tmp") for n in os.listdir(root / d))

    def test_drop_then_collect_at_start(self) -> None:
        path = drop(self.data, ENVELOPE, b"Subject: s\r\n\r\nbody\r\n")
        self.assertEqual(path.parent.name, "new")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        c = self.collector()
        [m] = self.sink.committed
        self.assertEqual(m.envelope.mail_from, "app@example.test")
        self.assertEqual([r.address for r in m.envelope.recipients], list(ENVELOPE.recipients))
        self.assertTrue(m.data.startswith(b"Received: by mx.test (mailhub sendmail, from userid"))
        self.assertTrue(m.data.endswith(b"\r\nSubject: s\r\n\r\nbody\r\n"))
        self.assertEqual((self.left(), c.collected), ([], 1))

    def test_the_timer_finds_later_drops(self) -> None:
        c = self.collector()
        drop(self.data, ENVELOPE, b"x\r\n")
        self.assertEqual(self.sink.committed, [])
        self.clock.advance(pickup.DEFAULT_INTERVAL)
        self.assertEqual((len(self.sink.committed), c.collected), (1, 1))

    def test_a_crash_before_removal_delivers_again(self) -> None:
        drop(self.data, ENVELOPE, b"x\r\n")

        class Crash(Exception):
            """killed between the queue's fsync and the removal"""

        def crash(path: Any) -> None:
            raise Crash()

        self.patch(pickup, "remove_if_exists", crash)
        c = PickupCollector(self.data, self.sink, self.clock, "mx.test", use_inotify=False)
        c.startService()
        c.stopService()
        self.assertEqual(len(self.flushLoggedErrors(Crash)), 1)
        self.assertEqual(len(self.sink.committed), 1)
        self.assertEqual(len(os.listdir(pickup_dir(self.data) / "cur")), 1)  # still claimed
        self.patch(pickup, "remove_if_exists", remove_if_exists)
        # The next start (same pid here, as a restarted process may have) takes it again:
        # a duplicate, never a loss.
        self.collector()
        self.assertEqual(len(self.sink.committed), 2)
        self.assertEqual(self.left(), [])

    def test_a_live_process_claim_is_left_alone(self) -> None:
        path = drop(self.data, ENVELOPE, b"x\r\n")
        cur = pickup_dir(self.data) / "cur"
        cur.mkdir()
        other = os.getppid()  # a process that runs
        os.rename(path, cur / f"{path.name},P{other}")
        self.collector()
        self.assertEqual(self.sink.committed, [])
        os.rename(cur / f"{path.name},P{other}", cur / f"{path.name},P999999999")  # died
        self.clock.advance(pickup.DEFAULT_INTERVAL)
        self.assertEqual(len(self.sink.committed), 1)

    def test_bad_files_are_set_aside(self) -> None:
        new = pickup_dir(self.data) / "new"
        new.mkdir(parents=True)
        (new / "junk").write_bytes(b"\xff\x00 not a pickup file")
        (new / "nobody").write_bytes(pickup.MAGIC + b'{"from": "a@b", "to": []}\n' + b"x")
        (new / "cut").write_bytes(pickup.MAGIC + b'{"from": "a@')
        (new / "empty").write_bytes(b"")
        drop(self.data, ENVELOPE, b"good\r\n")
        self.collector()
        self.assertEqual(len(self.sink.committed), 1)
        bad = sorted(n.split(",P")[0] for n in os.listdir(pickup_dir(self.data) / "bad"))
        self.assertEqual(bad, ["cut", "empty", "junk", "nobody"])
        self.assertEqual(self.left(), [])

    def test_temporary_failure_is_tried_again(self) -> None:
        drop(self.data, ENVELOPE, b"x\r\n")
        self.sink.fail = DeliveryError("disk full")
        self.collector()
        self.assertEqual(len(self.left()), 1)
        self.sink.fail = None
        self.clock.advance(pickup.DEFAULT_INTERVAL)
        self.assertEqual((len(self.sink.committed), self.left()), (1, []))

    def test_permanent_failure_is_set_aside(self) -> None:
        drop(self.data, ENVELOPE, b"x\r\n")
        self.sink.fail = DeliveryError("no", permanent=True)
        self.collector()
        self.assertEqual(len(os.listdir(pickup_dir(self.data) / "bad")), 1)

    def test_server_address_recorded_and_removed(self) -> None:
        c = self.collector()
        c.listener_bound("127.0.0.1", 2525)
        c.listener_bound("127.0.0.1", 2526)  # the first SMTP listener is the one
        self.assertEqual(pickup.read_server_address(self.data), ("127.0.0.1", 2525))
        c.stopService()
        self.assertIsNone(pickup.read_server_address(self.data))
