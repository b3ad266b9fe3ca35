"""The queue with real threads and fsync, and a `kill -9` in the middle of enqueueing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from mailhub.envelope import Envelope, Recipient
from mailhub.interfaces import AttemptResult, ICourier, Outcome
from mailhub.queue.queue import Queue
from mailhub.queue.spool import Spool, ThreadedIO

BODY = b"Received: from client\r\nSubject: durable\r\n\r\n" + b"x" * 2000 + b"\r\n"


@implementer(ICourier)
class HoldingCourier:
    """Answers only when told, so that no state save runs while the test counts fsyncs."""

    def __init__(self) -> None:
        self.held: list[tuple[defer.Deferred[list[AttemptResult]], tuple[str, ...]]] = []
        self.answer = False

    def deliver(self, item):
        if self.answer:
            return defer.succeed([AttemptResult(r, Outcome.DELIVERED) for r in item.recipients])
        d: defer.Deferred[list[AttemptResult]] = defer.Deferred()
        self.held.append((d, item.recipients))
        return d

    def release_all(self) -> None:
        self.answer = True
        held, self.held = self.held, []
        for d, rcpts in held:
            d.callback([AttemptResult(r, Outcome.DELIVERED) for r in rcpts])


class ThreadedEnqueue(TestCase):
    @defer.inlineCallbacks
    def test_concurrent_commits_share_directory_fsyncs(self):
        directory = Path(self.mktemp())
        courier = HoldingCourier()
        q = Queue(
            directory,
            route=lambda a: ("hold", ""),
            couriers={"hold": courier},
            io=ThreadedIO(reactor, threads=4),
        )
        q.startService()
        self.addCleanup(q.stopService)
        self.addCleanup(courier.release_all)
        messages = []
        for i in range(40):
            env = Envelope(
                queue_id=q.sink.new_id(),
                mail_from="a@x.test",
                recipients=[Recipient(f"r{i}@y.test", f"r{i}@y.test")],
            )
            m = q.sink.open(env)
            m.write(BODY)
            messages.append(m)
        ids = yield defer.gatherResults([m.commit() for m in messages])
        self.assertEqual(len(set(ids)), 40)
        self.assertLessEqual(q.spool.dirsync.fsyncs, 40)  # usually far fewer
        spool = Spool(directory)
        for qid in ids:
            self.assertEqual(spool.load(qid).recipients[0].status, "pending")
            self.assertEqual(spool.body_path(qid).read_bytes(), BODY)


CHILD = textwrap.dedent(
    """
    import sys
    from twisted.internet import reactor
    from mailhub.envelope import Envelope, Recipient
    from mailhub.queue.queue import Queue
    from mailhub.queue.spool import ThreadedIO

    q = Queue(sys.argv[1], route=lambda a: ("none", ""), io=ThreadedIO(reactor, threads=4),
              schedule=None)
    body = b"Received: from client\\r\\nSubject: durable\\r\\n\\r\\n" + b"x" * 2000 + b"\\r\\n"

    def committed(qid):
        sys.stdout.write(qid + "\\n")
        sys.stdout.flush()

    def one(_=None):
        env = Envelope(queue_id=q.sink.new_id(), mail_from="a@x.test",
                       recipients=[Recipient("b@y.test", "b@y.test")])
        m = q.sink.open(env)
        m.write(body)
        d = m.commit()
        d.addCallback(committed)
        d.addCallback(lambda _: reactor.callLater(0, one))

    def start():
        q.startService()
        for _ in range(8):  # eight enqueues in flight at any time
            one()

    reactor.callWhenRunning(start)
    reactor.run()
    """
)


class KillNine(TestCase):
    def test_everything_acknowledged_survives_kill_9(self):
        directory = Path(self.mktemp()).absolute()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory)], stdout=subprocess.PIPE, env=env
        )
        acknowledged = []
        try:
            assert child.stdout is not None
            while len(acknowledged) < 150:
                line = child.stdout.readline()
                if not line:
                    break
                acknowledged.append(line.decode().strip())
        finally:
            child.send_signal(signal.SIGKILL)
            rest = child.communicate()[0]
        acknowledged += [x for x in rest.decode().split("\n") if x.strip()]
        self.assertGreaterEqual(len(acknowledged), 150)
        spool = Spool(directory)
        for qid in acknowledged:
            record = spool.load(qid)  # JSON and body both there and parseable
            self.assertEqual(record.recipients[0].address, "b@y.test")
            self.assertEqual(spool.body_path(qid).read_bytes(), BODY)
        # A fresh queue resumes them all (and the lock died with the process).
        q = Queue(directory, route=lambda a: ("none", ""), io=ThreadedIO(reactor))
        q.startService()
        self.addCleanup(q.stopService)
        for qid in acknowledged:
            self.assertIn(qid, q)
