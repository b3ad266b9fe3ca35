"""The durable queue: enqueue, schedule, couriers, DSNs, operator requests (task.Clock)."""

from __future__ import annotations

import email
import email.policy
import json
import os
import random
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailhub.envelope import Envelope, Recipient
from mailhub.interfaces import (
    AttemptResult,
    DeliveryError,
    ICourier,
    IIncomingMessage,
    IMessageSink,
    Outcome,
)
from mailhub.queue import admin
from mailhub.queue.queue import Queue, QueueItem
from mailhub.queue.record import DELIVERED, PENDING, QueueRecord, RecipientState
from mailhub.queue.schedule import DEFAULT_DELAYS, RetrySchedule
from mailhub.queue.spool import InlineIO, QueueLocked, Spool

START = 1_700_000_000.0
BODY = b"Received: from client\r\nFrom: a@src.test\r\nSubject: hi\r\n\r\nhello\r\n"


@implementer(ICourier)
class FakeCourier:
    """An honest ICourier double: per recipient ``deliver`` | ``temporary`` | ``permanent`` |
    ``raise`` | ``never`` | ``hold`` (fired by the test through ``held``)."""

    def __init__(self, default: str = "deliver", **per_recipient: str) -> None:
        self.default = default
        self.behaviour: dict[str, str] = {}
        self.calls: list[QueueItem] = []
        self.bodies: list[bytes] = []
        self.held: list[tuple[defer.Deferred[list[AttemptResult]], QueueItem]] = []

    def set(self, recipient: str, behaviour: str) -> None:
        self.behaviour[recipient] = behaviour

    def deliver(self, item: QueueItem) -> defer.Deferred[list[AttemptResult]]:
        self.calls.append(item)
        with item.open_body() as f:
            self.bodies.append(f.read())
        modes = {self.behaviour.get(r, self.default) for r in item.recipients}
        if "raise" in modes:
            raise RuntimeError("courier exploded")
        if "never" in modes:
            return defer.Deferred()
        if "hold" in modes:
            d: defer.Deferred[list[AttemptResult]] = defer.Deferred()
            self.held.append((d, item))
            return d
        return defer.succeed([self.result(r) for r in item.recipients])

    def result(self, rcpt: str, mode: str | None = None) -> AttemptResult:
        mode = mode or self.behaviour.get(rcpt, self.default)
        if mode == "permanent":
            return AttemptResult(
                rcpt, Outcome.PERMANENT, "smtp; 550 5.1.1 no such user", "5.1.1", "mx.dst.test"
            )
        if mode == "temporary":
            return AttemptResult(
                rcpt, Outcome.TEMPORARY, "smtp; 451 4.7.1 greylisted", "4.7.1", "mx.dst.test"
            )
        return AttemptResult(rcpt, Outcome.DELIVERED, "", "2.0.0", "mx.dst.test")

    def release(self, mode: str = "deliver") -> None:
        d, item = self.held.pop(0)
        d.callback([self.result(r, mode) for r in item.recipients])

    def recipients_called(self) -> list[tuple[str, ...]]:
        return [c.recipients for c in self.calls]


def route(address: str) -> tuple[str, str]:
    domain = address.rpartition("@")[2]
    if domain in ("src.test", "local.test"):
        return ("local", "")
    return ("remote", domain)


class QueueTestBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.clock = task.Clock()
        self.clock.advance(START)
        self.remote = FakeCourier()
        self.local = FakeCourier()
        self.queue: Queue | None = None

    def make_queue(self, start: bool = True, **kwargs: Any) -> Queue:
        kwargs.setdefault("schedule", RetrySchedule(jitter=0, delay_notice=0, rng=random.Random(1)))
        kwargs.setdefault("io", InlineIO())
        q = Queue(
            self.dir,
            route=route,
            couriers={"local": self.local, "remote": self.remote},
            hostname="mx.src.test",
            clock=self.clock,
            **kwargs,
        )
        if start:
            q.startService()
            self.addCleanup(self.stop, q)
        self.queue = q
        return q

    def stop(self, q: Queue) -> None:
        if q.running:
            self.successResultOf(q.stopService())

    def enqueue(
        self, *rcpts: str, mail_from: str = "a@src.test", body: bytes = BODY, q: Queue | None = None
    ) -> str:
        q = q if q is not None else self.queue  # an empty Queue is falsy (__len__)
        assert q is not None
        env = Envelope(
            queue_id=q.sink.new_id(),
            mail_from=mail_from,
            recipients=[Recipient(r.upper() if "+" in r else r, r) for r in rcpts],
        )
        message = q.sink.open(env)
        message.write(body)
        return self.successResultOf(message.commit())

    def files(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir() if p.is_file() and p.name != "lock")

    def record(self, qid: str) -> QueueRecord:
        return QueueRecord.from_json((self.dir / f"{qid}.json").read_bytes())

    def bounces(self) -> list[email.message.EmailMessage]:
        """DSNs the queue sent (delivered through the local courier, from <>)."""
        return [
            email.message_from_bytes(body, policy=email.policy.default)  # type: ignore[misc]
            for item, body in zip(self.local.calls, self.local.bodies, strict=True)
            if item.mail_from == ""
        ]


class Enqueue(QueueTestBase):
    def test_interfaces(self) -> None:
        q = self.make_queue()
        self.assertTrue(verifyObject(IMessageSink, q.sink))
        env = Envelope(queue_id="Q1", mail_from="a@src.test", recipients=[Recipient("b@x", "b@x")])
        message = q.sink.open(env)
        self.assertTrue(verifyObject(IIncomingMessage, message))
        message.abort()
        self.assertTrue(verifyObject(ICourier, self.remote))

    def test_nothing_visible_before_commit_and_record_contents(self) -> None:
        class ManualIO(InlineIO):
            def __init__(self) -> None:
                self.calls: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

            def run(self, f: Any, *args: Any) -> defer.Deferred[Any]:
                d: defer.Deferred[Any] = defer.Deferred()
                self.calls.append((f, args, d))
                return d

            def flush(self) -> None:
                while self.calls:
                    f, args, d = self.calls.pop(0)
                    d.callback(f(*args))

        io = ManualIO()
        q = Queue(self.dir, route=route, couriers={"local": self.local}, clock=self.clock, io=io)
        q.startService()
        self.addCleanup(lambda: (io.flush(), self.stop(q)))
        env = Envelope(
            queue_id="QID1",
            mail_from="a@src.test",
            recipients=[Recipient("B+x@Remote.test", "b@remote.test")],
            body_type="8BITMIME",
            client_address="192.0.2.9",
        )
        message = q.sink.open(env)
        message.write(BODY)
        d = message.commit()
        self.assertNoResult(d)
        self.assertEqual(self.files(), [])
        io.flush()
        self.assertEqual(self.successResultOf(d), "QID1")
        self.assertEqual(self.files(), ["QID1.json", "QID1.msg"])
        self.assertEqual((self.dir / "QID1.msg").read_bytes(), BODY)
        data = json.loads((self.dir / "QID1.json").read_bytes())
        self.assertEqual(data["id"], "QID1")
        self.assertEqual(data["mail_from"], "a@src.test")
        self.assertEqual(data["body_type"], "8BITMIME")
        self.assertEqual(data["created"], START)
        self.assertFalse(data["is_bounce"])
        [rcpt] = data["recipients"]
        self.assertEqual(
            (rcpt["address"], rcpt["original"], rcpt["status"], rcpt["attempts"]),
            ("b@remote.test", "B+x@Remote.test", PENDING, 0),
        )

    def test_receiver_id_kept_unless_in_use_or_unsafe(self) -> None:
        q = self.make_queue()
        self.remote.default = "temporary"  # keep the messages in the spool

        def commit(qid: str) -> str:
            env = Envelope(
                queue_id=qid, mail_from="a@src.test", recipients=[Recipient("b@x", "b@x")]
            )
            message = q.sink.open(env)
            message.write(BODY)
            return self.successResultOf(message.commit())

        self.assertEqual(commit("QID7"), "QID7")
        again = commit("QID7")  # in use: a record of that name exists
        self.assertNotEqual(again, "QID7")
        self.assertEqual((self.dir / "QID7.msg").read_bytes(), BODY)
        self.assertNotIn("/", commit("../evil"))
        self.assertEqual(len(q), 3)

    def test_abort_leaves_nothing(self) -> None:
        q = self.make_queue()
        q.sink.flush_size = 16  # the body goes to a tmp file at once
        env = Envelope(queue_id="QA", mail_from="a@src.test", recipients=[Recipient("b@x", "b@x")])
        message = q.sink.open(env)
        message.write(BODY)
        self.assertEqual(len([n for n in self.files() if n.endswith(".tmp")]), 1)
        message.abort()
        message.abort()
        self.assertEqual(self.files(), [])
        self.assertIsInstance(self.failureResultOf(message.commit()).value, DeliveryError)

    def test_big_body_streams_exactly(self) -> None:
        q = self.make_queue()
        q.sink.flush_size = 1000
        self.remote.default = "temporary"
        body = b"Subject: big\r\n\r\n" + b"".join(b"%05d\r\n" % i for i in range(5000))
        qid = self.enqueue("b@x.test", body=body)
        self.clock.advance(0)
        self.assertTrue((self.dir / f"{qid}.msg").read_bytes() == body)
        self.assertTrue(self.remote.bodies == [body])
        self.assertEqual(self.remote.calls[0].size, len(body))

    def test_not_running_refuses_with_temporary_error(self) -> None:
        q = self.make_queue(start=False)
        env = Envelope(queue_id="Q", mail_from="a@src.test", recipients=[Recipient("b@x", "b@x")])
        e = self.assertRaises(DeliveryError, q.sink.open, env)
        self.assertFalse(e.permanent)


class Delivery(QueueTestBase):
    def test_delivered_at_once_then_removed(self) -> None:
        q = self.make_queue()
        with capturedLogs() as events:
            qid = self.enqueue("b@x.test", "c@x.test", "d@local.test")
            self.clock.advance(0)
        self.assertEqual(
            sorted(self.remote.recipients_called() + self.local.recipients_called()),
            [("b@x.test", "c@x.test"), ("d@local.test",)],
        )
        self.assertEqual(self.files(), [])
        self.assertEqual(len(q), 0)
        self.assertEqual(self.remote.calls[0].queue_id, qid)
        self.assertEqual(self.remote.calls[0].destination, "x.test")
        text = [e.get("log_format", "") for e in events]
        self.assertTrue(any("queued from" in t for t in text))
        self.assertTrue(any("removed" in t for t in text))
        attempts = [e for e in events if e.get("outcome") == "delivered"]
        self.assertEqual(len(attempts), 3)

    def test_grouping_by_destination(self) -> None:
        self.make_queue()
        self.enqueue("a1@x.test", "b@y.test", "a2@x.test", "l@local.test")
        self.clock.advance(0)
        self.assertEqual(
            sorted(self.remote.recipients_called()), [("a1@x.test", "a2@x.test"), ("b@y.test",)]
        )
        self.assertEqual(self.local.recipients_called(), [("l@local.test",)])

    def test_temporary_failure_is_retried_on_schedule(self) -> None:
        self.make_queue()
        self.remote.default = "temporary"
        qid = self.enqueue("b@x.test")
        self.clock.advance(0)
        rec = self.record(qid).recipients[0]
        self.assertEqual((rec.status, rec.attempts), (PENDING, 1))
        self.assertEqual(rec.next_attempt, START + 60)
        self.assertEqual(rec.diagnostic, "smtp; 451 4.7.1 greylisted")
        self.clock.advance(59)
        self.assertEqual(len(self.remote.calls), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.remote.calls), 2)
        self.assertEqual(self.record(qid).recipients[0].next_attempt, START + 60 + 300)
        self.remote.default = "deliver"
        self.clock.advance(300)
        self.assertEqual(len(self.remote.calls), 3)
        self.assertEqual(self.files(), [])

    def test_raising_and_silent_couriers_are_temporary(self) -> None:
        self.make_queue(attempt_timeout=30)
        self.remote.set("r@x.test", "raise")
        self.remote.set("n@y.test", "never")
        qid = self.enqueue("r@x.test", "n@y.test")
        self.clock.advance(0)
        self.flushLoggedErrors(RuntimeError)
        rec = self.record(qid)
        self.assertEqual(rec.recipient("r@x.test").attempts, 1)
        self.assertIn("courier exploded", rec.recipient("r@x.test").diagnostic)
        self.assertEqual(rec.recipient("n@y.test").attempts, 0)
        self.clock.advance(30)
        rec = self.record(qid)
        self.assertEqual(rec.recipient("n@y.test").attempts, 1)
        self.assertIn("no answer", rec.recipient("n@y.test").diagnostic)
        self.assertEqual(self.queue.in_flight, 0)

    def test_missing_result_and_unknown_courier_are_temporary(self) -> None:
        q = self.make_queue()
        q.route = lambda a: ("nowhere", "x")
        qid = self.enqueue("b@x.test")
        self.clock.advance(0)
        rec = self.record(qid).recipients[0]
        self.assertEqual((rec.status, rec.attempts), (PENDING, 1))
        self.assertIn("no courier", rec.diagnostic)

    def test_concurrency_limits(self) -> None:
        q = self.make_queue(per_destination=2, max_in_flight=3)
        self.remote.default = "hold"
        for _ in range(4):
            self.enqueue("b@x.test")
        self.enqueue("c@y.test")
        self.enqueue("d@z.test")
        self.clock.advance(0)
        self.assertEqual(q.in_flight, 3)
        self.assertEqual(q.in_flight_for("remote", "x.test"), 2)
        self.remote.release()  # one x.test done: the next x.test may go (global 3 again)
        self.assertEqual(q.in_flight, 3)
        self.assertLessEqual(q.in_flight_for("remote", "x.test"), 2)
        while self.remote.held:
            self.assertLessEqual(q.in_flight, 3)
            self.assertLessEqual(q.in_flight_for("remote", "x.test"), 2)
            self.remote.release()
        self.assertEqual(len(self.remote.calls), 6)
        self.assertEqual(self.files(), [])


class Restart(QueueTestBase):
    def test_restart_resumes(self) -> None:
        q1 = self.make_queue()
        self.remote.default = "temporary"
        qid = self.enqueue("b@x.test", "c@y.test")
        self.clock.advance(0)
        self.stop(q1)
        self.remote.default = "deliver"
        q2 = self.make_queue()
        self.assertIn(qid, q2)
        self.clock.advance(59)
        self.assertEqual(len(self.remote.calls), 2)
        self.clock.advance(1)
        self.assertEqual(len(self.remote.calls), 4)
        self.assertEqual(self.files(), [])

    def test_resume_retries_only_what_is_pending(self) -> None:
        """As after a crash between two attempts: one recipient already delivered on disk."""
        spool = Spool(self.dir)
        spool.create()
        record = QueueRecord(
            id="CRASHED1",
            mail_from="a@src.test",
            created=START - 100,
            recipients=[
                RecipientState("done@x.test", status=DELIVERED, attempts=1),
                RecipientState("todo@x.test", attempts=1, next_attempt=START - 5),
            ],
        )
        (self.dir / "CRASHED1.msg").write_bytes(BODY)
        spool.save(record)
        self.make_queue()
        self.clock.advance(0)
        self.assertEqual(self.remote.recipients_called(), [("todo@x.test",)])
        self.assertEqual(self.remote.bodies, [BODY])
        self.assertEqual(self.files(), [])

    def test_finished_but_not_removed_is_removed_on_start(self) -> None:
        spool = Spool(self.dir)
        spool.create()
        (self.dir / "DONE1.msg").write_bytes(BODY)
        spool.save(
            QueueRecord("DONE1", "a@src.test", START, [RecipientState("b@x", status=DELIVERED)])
        )
        self.make_queue()
        self.clock.advance(0)
        self.assertEqual(self.files(), [])
        self.assertEqual(self.remote.calls, [])

    def test_corrupt_json_is_moved_aside_with_a_log_line(self) -> None:
        Spool(self.dir).create()
        (self.dir / "BAD1.json").write_bytes(b"{not json")
        (self.dir / "BAD1.msg").write_bytes(BODY)
        (self.dir / "NOBODY1.json").write_bytes(
            QueueRecord("NOBODY1", "a@x", START, [RecipientState("b@x")]).to_json()
        )
        with capturedLogs() as events:
            q = self.make_queue()
        self.assertEqual(len(q), 0)
        self.assertEqual(self.files(), [])
        self.assertEqual(
            sorted(os.listdir(self.dir / "corrupt")), ["BAD1.json", "BAD1.msg", "NOBODY1.json"]
        )
        damaged = [e for e in events if "damaged" in e.get("log_format", "")]
        self.assertEqual(sorted(e["qid"] for e in damaged), ["BAD1", "NOBODY1"])

    def test_stale_tmp_and_orphans_are_cleaned_fresh_ones_kept(self) -> None:
        Spool(self.dir).create()
        old = self.clock.seconds() - 3600
        for name in ("ORPHAN.msg", "X.json.1.tmp", "FRESH.msg.2.tmp"):
            (self.dir / name).write_bytes(b"x")
        for name in ("ORPHAN.msg", "X.json.1.tmp"):
            os.utime(self.dir / name, (old, old))
        self.make_queue()
        self.assertEqual(self.files(), ["FRESH.msg.2.tmp"])

    def test_a_second_queue_on_the_same_directory_is_refused(self) -> None:
        self.make_queue()
        other = Spool(self.dir)
        self.assertRaises(QueueLocked, other.lock, 0)


class Schedule(SynchronousTestCase):
    def test_default_schedule_and_cap(self) -> None:
        s = RetrySchedule(jitter=0)
        self.assertEqual(
            [s.delay(n) for n in range(1, 10)],
            [60, 300, 900, 1800, 3600, 7200, 14400, 14400, 14400],
        )
        self.assertEqual(s.lifetime, 5 * 86400)

    def test_jitter_stays_in_bounds_and_varies(self) -> None:
        s = RetrySchedule(jitter=0.2, rng=random.Random(42))
        for n in range(1, 12):
            base = DEFAULT_DELAYS[min(n, len(DEFAULT_DELAYS)) - 1]
            seen = {s.delay(n) for _ in range(50)}
            self.assertTrue(all(0.8 * base <= d <= 1.2 * base for d in seen))
            self.assertGreater(len(seen), 1)

    def test_exponential(self) -> None:
        s = RetrySchedule.exponential(base=60, factor=3, cap=3600, jitter=0)
        self.assertEqual(s.delays, (60, 180, 540, 1620, 3600))
        self.assertRaises(ValueError, RetrySchedule, delays=())
        self.assertRaises(ValueError, RetrySchedule, jitter=1.5)


class Bounces(QueueTestBase):
    def test_partial_failure_bounces_only_the_failed_recipient(self) -> None:
        self.make_queue()
        self.remote.set("bad@x.test", "permanent")
        qid = self.enqueue("good@x.test", "bad@x.test")
        self.clock.advance(0)  # attempt, bounce queued, original removed
        self.clock.advance(0)  # the bounce's own attempt (local courier)
        self.assertNotIn(qid, self.queue)
        [dsn] = self.bounces()
        self.assertEqual(self.local.calls[0].recipients, ("a@src.test",))
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        self.assertEqual(dsn.get_param("report-type"), "delivery-status")
        self.assertEqual(dsn["From"].addresses[0].addr_spec, "MAILER-DAEMON@mx.src.test")
        self.assertEqual(dsn["To"], "a@src.test")
        self.assertEqual(dsn["Auto-Submitted"], "auto-replied")
        human, status, headers = dsn.get_payload()
        self.assertEqual(human.get_content_type(), "text/plain")
        self.assertIn("bad@x.test", human.get_content())
        self.assertEqual(status.get_content_type(), "message/delivery-status")
        per_message, *per_rcpt = status.get_payload()
        self.assertEqual(per_message["Reporting-MTA"], "dns; mx.src.test")
        self.assertIn("Arrival-Date", per_message)
        self.assertEqual(len(per_rcpt), 1)
        [r] = per_rcpt
        self.assertEqual(r["Final-Recipient"], "rfc822; bad@x.test")
        self.assertEqual(r["Action"], "failed")
        self.assertEqual(r["Status"], "5.1.1")
        self.assertEqual(r["Diagnostic-Code"], "smtp; 550 5.1.1 no such user")
        self.assertEqual(r["Remote-MTA"], "dns; mx.dst.test")
        self.assertIn("Last-Attempt-Date", r)
        self.assertEqual(headers.get_content_type(), "text/rfc822-headers")
        self.assertIn("Subject: hi", headers.get_payload())
        self.assertIn("Received: from client", headers.get_payload())
        self.assertNotIn("hello", headers.get_payload())  # headers only, not the body
        self.assertEqual(self.files(), [])

    def test_expiry_fails_pending_recipients_with_a_bounce(self) -> None:
        self.make_queue(schedule=RetrySchedule(jitter=0, lifetime=3600, delay_notice=0))
        self.remote.default = "temporary"
        qid = self.enqueue("slow@x.test")
        self.clock.pump([60] * 70)
        self.assertNotIn(qid, self.queue)
        [dsn] = self.bounces()
        r = dsn.get_payload()[1].get_payload()[1]
        self.assertEqual(r["Action"], "failed")
        self.assertEqual(r["Status"], "5.4.7")
        self.assertEqual(r["Diagnostic-Code"], "smtp; 451 4.7.1 greylisted")
        # Attempts at 0, 1, 6, 21, 51 minutes, then expiry exactly at 60.
        self.assertEqual(len(self.remote.calls), 5)
        self.assertEqual(self.files(), [])

    def test_delay_notice_sent_once(self) -> None:
        self.make_queue(schedule=RetrySchedule(jitter=0, delay_notice=600, lifetime=86400))
        self.remote.default = "temporary"
        qid = self.enqueue("slow@x.test")
        self.clock.pump([60] * 9)
        self.assertEqual(self.bounces(), [])
        self.clock.pump([60] * 180)
        [notice] = self.bounces()
        self.assertEqual(notice["Subject"], "Delayed Mail (still being retried)")
        r = notice.get_payload()[1].get_payload()[1]
        self.assertEqual(r["Action"], "delayed")
        self.assertEqual(r["Status"], "4.7.1")
        self.assertIn("Will-Retry-Until", r)
        self.assertTrue(self.record(qid).delay_notice_sent)
        self.assertIn(qid, self.queue)

    def test_delay_notice_comes_on_time_between_attempts(self) -> None:
        self.make_queue(schedule=RetrySchedule(jitter=0, delay_notice=600, lifetime=86400))
        self.remote.default = "temporary"
        self.enqueue("slow@x.test")
        self.clock.advance(0)
        self.clock.advance(60)
        self.clock.advance(300)  # attempt 3 is due at 21 minutes
        self.clock.advance(240)  # 600 s: the notice is due now
        self.assertEqual(len(self.bounces()), 1)

    def test_no_bounce_for_a_bounce(self) -> None:
        self.make_queue()
        self.remote.default = "permanent"
        with capturedLogs() as events:
            qid = self.enqueue("b@x.test", mail_from="")
            self.clock.advance(0)
        self.assertTrue(self.record_gone(qid))
        self.assertEqual(self.local.calls, [])
        self.assertTrue(any("never a bounce" in str(e) or "dropped" in str(e) for e in events))

    def record_gone(self, qid: str) -> bool:
        return not (self.dir / f"{qid}.json").exists()


class Operator(QueueTestBase):
    def test_list_and_show(self) -> None:
        self.make_queue()
        self.remote.default = "temporary"
        qid = self.enqueue("b@x.test")
        self.clock.advance(0)
        [info] = admin.list_messages(self.dir)
        self.assertEqual((info.id, info.sender, info.size), (qid, "a@src.test", len(BODY)))
        [r] = info.recipients
        self.assertEqual((r.address, r.status, r.attempts), ("b@x.test", PENDING, 1))
        self.assertEqual(admin.show(self.dir, qid), info)
        text = "\n".join(admin.describe(info, START + 10))
        self.assertIn("next attempt in 50s", text)
        self.assertIn("greylisted", text)
        self.assertRaises(admin.NoSuchMessage, admin.show, self.dir, "NOPE")

    def test_retry_and_delete_through_the_running_server(self) -> None:
        self.make_queue()
        self.remote.default = "temporary"
        qid = self.enqueue("b@x.test")
        other = self.enqueue("c@x.test")
        self.clock.advance(0)
        self.assertEqual(len(self.remote.calls), 2)

        def sleep(_: float) -> None:
            self.clock.advance(2)  # the server's control poll runs meanwhile

        result = admin.request(self.dir, "retry", qid, now=self.clock.seconds, sleep=sleep)
        self.assertEqual(result, "done by the running server")
        self.assertEqual(self.remote.recipients_called()[-1], ("b@x.test",))
        self.assertEqual(len(self.remote.calls), 3)

        result = admin.request(self.dir, "delete", other, now=self.clock.seconds, sleep=sleep)
        self.assertEqual(result, "done by the running server")
        self.assertNotIn(other, self.queue)
        self.assertFalse((self.dir / f"{other}.msg").exists())

        admin.request(self.dir, "retry", None, now=self.clock.seconds, sleep=sleep)
        self.assertEqual(len(self.remote.calls), 4)
        self.assertEqual(os.listdir(self.dir / "control"), [])
        self.assertRaises(admin.NoSuchMessage, admin.request, self.dir, "delete", "NOPE")

    def test_delete_during_an_attempt_removes_it_after(self) -> None:
        q = self.make_queue()
        self.remote.default = "hold"
        qid = self.enqueue("b@x.test")
        self.clock.advance(0)
        self.assertTrue(q.delete(qid))
        self.assertTrue((self.dir / f"{qid}.json").exists())
        self.remote.release("permanent")
        self.assertNotIn(qid, q)
        self.assertEqual(self.files(), [])
        self.assertEqual(self.bounces(), [])  # deleted, not bounced

    def test_offline_requests_edit_the_spool(self) -> None:
        q = self.make_queue()
        self.remote.default = "temporary"
        qid = self.enqueue("b@x.test")
        gone = self.enqueue("c@x.test")
        self.clock.advance(0)
        self.stop(q)
        self.assertIn("deleted", admin.request(self.dir, "delete", gone))
        self.assertFalse((self.dir / f"{gone}.json").exists())
        admin.request(self.dir, "retry", now=lambda: START + 1)
        self.assertEqual(self.record(qid).recipients[0].next_attempt, START + 1)

    def test_bad_control_file_is_logged_and_removed(self) -> None:
        q = self.make_queue()
        (self.dir / "control" / "1.json").write_bytes(b'{"action": "explode"}')
        with capturedLogs() as events:
            q.poll_control()
        self.assertEqual(os.listdir(self.dir / "control"), [])
        self.assertTrue(any("bad control request" in e.get("log_format", "") for e in events))


class Jitter(QueueTestBase):
    def test_queue_applies_jitter(self) -> None:
        self.make_queue(schedule=RetrySchedule(jitter=0.2, delay_notice=0))
        self.remote.default = "temporary"
        qid = self.enqueue("b@x.test")
        self.clock.advance(0)
        nxt = self.record(qid).recipients[0].next_attempt
        assert nxt is not None
        self.assertTrue(START + 48 <= nxt <= START + 72, nxt)


class Memory(QueueTestBase):
    def test_idle_messages_keep_no_record_in_memory(self) -> None:
        q = self.make_queue()
        self.remote.default = "temporary"
        for i in range(300):
            self.enqueue(f"r{i}@x{i % 7}.test")
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(len(q), 300)
        self.assertEqual(len(self.remote.calls), 300)
        self.assertTrue(all(m.record is None and not m.busy for m in q._index.values()))


class HeldIO:
    """Disk work that runs only when the test says so, in the order it chooses."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, tuple[Any, ...], defer.Deferred[Any]]] = []

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.calls.append((f.__name__, f, args, d))
        return d

    def names(self) -> list[str]:
        return [name for name, *_ in self.calls]

    def finish(self, name: str) -> None:
        index = self.names().index(name)
        _, f, args, d = self.calls.pop(index)
        d.callback(f(*args))


class DiskWork(QueueTestBase):
    """Disk work the queue saves itself, without giving up any durability."""

    def count_saves(self, q: Queue) -> list[str]:
        saved: list[str] = []
        save = q.spool.save_raw

        def counting(qid: str, data: bytes) -> None:
            saved.append(qid)
            save(qid, data)

        q.spool.save_raw = counting  # type: ignore[method-assign]
        return saved

    def test_delivered_message_is_removed_without_rewriting_its_record(self) -> None:
        q = self.make_queue()
        saved = self.count_saves(q)
        self.enqueue("b@x.test")
        self.clock.advance(0)
        self.assertEqual(self.files(), [])
        self.assertEqual(saved, [])  # the removal is the last change: no write before it

    def test_new_message_is_not_read_back_for_its_first_attempt(self) -> None:
        q = self.make_queue()
        loads: list[str] = []
        load = q.spool.load
        q.spool.load = lambda qid: loads.append(qid) or load(qid)  # type: ignore[method-assign]
        self.remote.default = "temporary"
        qid = self.enqueue("b@x.test")
        self.clock.advance(0)
        self.assertEqual(len(self.remote.calls), 1)
        self.assertEqual(loads, [])  # the committed record itself was used
        self.assertIsNone(q._index[qid].record)  # and dropped after the round
        self.clock.advance(3600)  # the retry reads it from disk
        self.assertEqual(len(self.remote.calls), 2)
        self.assertEqual(loads, [qid])

    def test_state_still_saved_when_something_is_left(self) -> None:
        q = self.make_queue()
        saved = self.count_saves(q)
        self.remote.set("c@x.test", "temporary")
        qid = self.enqueue("b@x.test", "c@x.test")
        self.clock.advance(0)
        self.assertEqual(saved, [qid])
        states = {r.address: r.status for r in self.record(qid).recipients}
        self.assertEqual(states, {"b@x.test": DELIVERED, "c@x.test": PENDING})

    def test_removal_waits_for_an_earlier_jobs_save(self) -> None:
        io = HeldIO()
        self.make_queue(io=io)
        self.remote.set("a@x.test", "hold")
        self.enqueue_held(io, "a@x.test", "b@y.test")
        self.clock.advance(0)  # y.test delivered at once: its state is being saved
        self.assertEqual(io.names(), ["save_raw"])
        self.remote.release()  # x.test delivered too: nothing left, but that save runs still
        self.assertEqual(io.names(), ["save_raw"])  # no removal racing it
        io.finish("save_raw")
        self.assertEqual(io.names(), ["remove"])
        io.finish("remove")
        self.assertEqual(self.files(), [])

    def enqueue_held(self, io: HeldIO, *rcpts: str) -> None:
        q = self.queue
        assert q is not None
        env = Envelope(
            queue_id=q.sink.new_id(),
            mail_from="a@src.test",
            recipients=[Recipient(r, r) for r in rcpts],
        )
        message = q.sink.open(env)
        message.write(BODY)
        d = message.commit()
        io.finish("commit_new")
        self.successResultOf(d)


class SeveralWorkers(QueueTestBase):
    """mailhub.workers: one worker runs the queue, the others only enqueue into its spool."""

    def other_worker(self) -> Queue:
        other = Queue(self.dir, route=route, clock=self.clock, io=InlineIO(), runner=False)
        other.startService()  # no lock: the runner holds it
        self.addCleanup(self.stop, other)
        return other

    def test_mail_another_worker_enqueues_is_delivered_by_the_runner(self) -> None:
        runner = self.make_queue()
        other = self.other_worker()
        qid = self.enqueue("b@x.test", q=other)
        self.assertNotIn(qid, runner)  # not yet told
        self.assertEqual(len(os.listdir(self.dir / "control")), 1)  # the "arrived" request
        self.clock.advance(runner.control_interval)
        self.assertEqual(self.remote.recipients_called(), [("b@x.test",)])
        self.assertEqual(self.remote.bodies, [BODY])
        self.assertEqual(os.listdir(self.dir / "control"), [])
        self.assertEqual(self.files(), [])  # delivered and removed by the runner
        self.assertEqual(len(other), 0)  # the other keeps no index

    def test_a_lost_arrived_request_is_found_by_the_hourly_look(self) -> None:
        runner = self.make_queue()
        other = self.other_worker()
        qid = self.enqueue("b@x.test", q=other)
        for name in os.listdir(self.dir / "control"):  # that worker was killed before writing it
            os.unlink(self.dir / "control" / name)
        self.clock.advance(runner.control_interval)
        self.assertEqual(self.remote.calls, [])
        self.clock.advance(runner.clean_interval)
        self.assertEqual([c.queue_id for c in self.remote.calls], [qid])

    def test_an_arrived_request_for_a_known_or_gone_message_changes_nothing(self) -> None:
        runner = self.make_queue()
        self.remote.default = "temporary"
        qid = self.enqueue("b@x.test")
        self.clock.advance(0)
        self.assertTrue(runner.arrived(qid))
        self.assertFalse(runner.arrived("0123456789ABCDEF"))
        self.clock.advance(0)
        self.assertEqual(len(self.remote.calls), 1)  # not tried again before its time
