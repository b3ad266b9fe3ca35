"""The queue runner: resumes the spool, schedules attempts, hands them to couriers, bounces.

Per message the runner keeps a small ``_Msg`` in memory (id, next due time, a few flags); the
JSON record is loaded when the message is due and dropped again once the round is settled, so
10,000 waiting messages cost about a megabyte, not their records or bodies.

A *round* for a message: load its record; if it is older than the lifetime its pending
recipients fail (expired); otherwise its due recipients are grouped by ``route(address)`` =
``(courier key, destination)`` and each group becomes one job (one ``ICourier.deliver`` call:
the relay carries all recipients for one host over one connection). Jobs wait for a slot
(``per_destination`` and ``max_in_flight`` limits). After each job its results are applied and
the record is saved (chasquid: state after every attempt, so a crash repeats at most one
attempt). When the last job is done the round is *settled*: a DSN for newly failed recipients
(never for a message from ``<>``), a delay notice if due, then the message is removed (all
recipients final) or scheduled for its next due time.

Operator requests (``mailhub queue retry|delete``) arrive as files in ``control/`` (see
mailhub.queue.admin), polled every ``control_interval`` seconds.

Several worker processes (mailhub.workers) share one spool, but only one of them schedules and
delivers (the spool lock says who): the others run a Queue with ``runner=False``, which only
enqueues (its sink) and tells the runner of each new message by an ``arrived`` request in
``control/``. The runner also indexes, every ``clean_interval``, any message it does not know (a
worker killed between its commit and that request).
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailhub.envelope import Envelope, Recipient
from mailhub.interfaces import AttemptResult, ICourier, Outcome
from mailhub.queue import dsn
from mailhub.queue.record import (
    DELIVERED,
    FAILED,
    QUEUE_ID,
    CorruptRecord,
    QueueRecord,
    RecipientState,
)
from mailhub.queue.schedule import RetrySchedule
from mailhub.queue.sink import QueueSink
from mailhub.queue.spool import STALE_AGE, InlineIO, Spool, ThreadedIO

log = Logger()

# route(recipient address) -> (courier key, destination), e.g. ("local", "") or
# ("remote", "example.org"). The queue groups by the pair and calls couriers[key].deliver().
Router = Callable[[str], tuple[str, str]]


@dataclass(frozen=True)
class QueueItem:
    """What a courier gets: one queued message and the recipients to attempt now (all for
    one destination)."""

    queue_id: str
    mail_from: str  # "" for a bounce
    recipients: tuple[str, ...]
    size: int
    body_type: str
    smtputf8: bool
    envelope_id: str | None
    destination: str
    body_path: Path

    def open_body(self) -> IO[bytes]:
        """The body as the receiver wrote it (Received: + message, CRLF line ends)."""
        return open(self.body_path, "rb")


class _Msg:
    """The in-memory index entry of one queued message (kept small: see the module doc)."""

    __slots__ = ("busy", "deleted", "due", "force", "jobs", "lock", "qid", "record", "size")

    def __init__(self, qid: str, size: int) -> None:
        self.qid = qid
        self.size = size
        self.due: float | None = None  # in the heap with this time; None while busy
        self.record: QueueRecord | None = None  # loaded only while busy (or just committed)
        self.busy = False  # a round is running
        self.jobs = 0  # courier calls in flight or waiting
        self.force = False  # operator asked for a retry now
        self.deleted = False  # operator deleted it during a round
        self.lock: defer.DeferredLock | None = None  # serialises saves of the record


@dataclass
class _Job:
    msg: _Msg
    key: tuple[str, str]  # (courier key, destination)
    recipients: tuple[str, ...]


class Queue(Service):
    """The durable outgoing queue as a twistd service (add it before the listeners).

    ``couriers`` maps courier keys to ``ICourier`` providers (``add_courier`` adds more before
    start); ``route`` decides each recipient's courier and destination; ``sink`` is the
    ``IMessageSink`` the SMTP receiver writes to.
    """

    name = "queue"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        route: Router,
        couriers: Mapping[str, Any] | None = None,
        hostname: str = "localhost",
        clock: IReactorTime | None = None,
        schedule: RetrySchedule | None = None,
        io: ThreadedIO | InlineIO | None = None,
        per_destination: int = 4,
        max_in_flight: int = 64,
        attempt_timeout: float = 30 * 60.0,
        control_interval: float = 2.0,
        clean_interval: float = 3600.0,
        sign_notice: Callable[[bytes], defer.Deferred[bytes]] | None = None,
        runner: bool = True,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)  # the installed reactor
        self.clock = clock
        self.hostname = hostname
        self.spool = Spool(directory, hostname)
        self.schedule = schedule or RetrySchedule()
        self.io = io if io is not None else ThreadedIO()
        self.route = route
        self.couriers: dict[str, Any] = {}
        for key, courier in (couriers or {}).items():
            self.add_courier(key, courier)
        self.per_destination = per_destination
        self.max_in_flight = max_in_flight
        self.attempt_timeout = attempt_timeout
        self.control_interval = control_interval
        self.clean_interval = clean_interval
        # DSNs are mail we write: signed (DKIM) like submitted mail when keys exist. It gives
        # the header fields to put on top of a notice (b"": unsigned).
        self.sign_notice = sign_notice
        # False: this process only enqueues; the runner (another worker) delivers.
        self.runner = runner
        self.sink = QueueSink(
            self.spool,
            self.io,
            clock,
            self._committed if runner else self._tell_runner,
            lambda: bool(self.running),
        )
        self._index: dict[str, _Msg] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._timer: IDelayedCall | None = None
        self._waiting: dict[tuple[str, str], deque[_Job]] = {}
        self._active: Counter[tuple[str, str]] = Counter()
        self._in_flight = 0
        self._pumping = False
        self._pump_again = False
        self._pending: set[defer.Deferred[Any]] = set()  # saves, removals, DSNs in flight
        self._loops: list[task.LoopingCall] = []

    # --- service -----------------------------------------------------------------------------

    def add_courier(self, key: str, courier: Any) -> None:
        if not ICourier.providedBy(courier):
            raise TypeError(f"courier {key!r} does not provide ICourier")
        self.couriers[key] = courier

    def startService(self) -> None:
        self.spool.create()
        if not self.runner:
            self.io.start()
            super().startService()
            return
        self.spool.lock()  # QueueLocked stops start-up: two runners would deliver twice
        try:
            self.io.start()
            self.spool.clean(now=self.clock.seconds)
            self._load()
        except BaseException:
            self.io.stop()
            self.spool.unlock()
            raise
        super().startService()
        control = task.LoopingCall(self.poll_control)
        control.clock = self.clock
        clean = task.LoopingCall(self._clean)
        clean.clock = self.clock
        self._loops = [control, clean]
        control.start(self.control_interval, now=True)
        clean.start(self.clean_interval, now=False)
        self._arm()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if not self.runner:
            self.io.stop()
            return defer.succeed(None)
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        # Attempts still in flight are not waited for: their results are dropped and the
        # attempt is repeated after the restart (a duplicate at worst). Disk work is, and
        # couriers that keep connections open (the relay's idle sessions) close them.
        pending = list(self._pending)
        for courier in self.couriers.values():
            close = getattr(courier, "close", None)
            if close is not None:
                pending.append(defer.maybeDeferred(close))

        def stop(_: object) -> None:
            self.io.stop()
            self.spool.unlock()

        d = defer.DeferredList(pending, consumeErrors=True) if pending else defer.succeed(None)
        return d.addCallback(stop)

    def _load(self) -> None:
        """Index every message in the spool (their records are read once, then dropped)."""
        count = 0
        now = self.clock.seconds()
        for qid in sorted(self.spool.ids()):  # ids sort by arrival
            try:
                record = self.spool.load(qid)
            except FileNotFoundError:
                continue
            except (CorruptRecord, OSError) as e:
                self._move_aside(qid, e)
                continue
            msg = _Msg(qid, self.spool.body_size(qid))
            self._index[qid] = msg
            due = record.next_due()
            self._push(msg, now if due is None else due)
            count += 1
        log.info("queue: {count} message(s) resumed from {path}", count=count, path=self.spool.path)

    def _move_aside(self, qid: str, error: BaseException) -> None:
        try:
            where = self.spool.move_aside(qid)
        except OSError as e:
            log.error(
                "queue: {qid} is damaged ({error}) and could not be moved aside: {e}",
                qid=qid,
                error=error,
                e=e,
            )
            return
        log.error(
            "queue: {qid} is damaged ({error}); moved to {where}", qid=qid, error=error, where=where
        )

    def _clean(self) -> None:
        d = self._track(self.io.run(self.spool.clean, STALE_AGE, self.clock.seconds))
        d.addErrback(lambda f: log.failure("queue: cleaning stale files failed", f))
        self._index_unknown()

    def _index_unknown(self) -> None:
        """Messages in the spool that the index lacks: another worker's whose ``arrived``
        request was never written (that worker was killed right after its commit)."""
        for qid in self.spool.ids():
            if qid not in self._index:
                self.arrived(qid)

    def _tell_runner(self, record: QueueRecord, size: int) -> None:
        """Not the runner: ask the one that is to schedule this new message (see the module
        doc). A lost request (this process killed now) is found by the runner's hourly look."""
        # Named like mailhub.queue.admin's requests; renamed into place so the runner never
        # reads half of one. Not fsync'd: the message itself is, and the hourly look covers
        # a request a power cut loses.
        name = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
        tmp = self.spool.control / f"{name}.tmp"
        tmp.write_bytes(json.dumps({"action": "arrived", "id": record.id}).encode())
        os.rename(tmp, self.spool.control / f"{name}.json")

    def arrived(self, qid: str) -> bool:
        """Index a message another worker enqueued and try it at once. False if unknown."""
        if qid in self._index or not QUEUE_ID.match(qid):
            return qid in self._index
        try:
            self.spool.load(qid)  # a record that cannot be read is moved aside by _start
        except FileNotFoundError:
            return False
        except (CorruptRecord, OSError) as e:
            self._move_aside(qid, e)
            return False
        msg = _Msg(qid, self.spool.body_size(qid))
        self._index[qid] = msg
        self._push(msg, self.clock.seconds())
        self._arm()
        return True

    # --- what callers can look at --------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, qid: object) -> bool:
        return qid in self._index

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def in_flight_for(self, courier: str, destination: str) -> int:
        return self._active[(courier, destination)]

    # --- the schedule ------------------------------------------------------------------------

    def _committed(self, record: QueueRecord, size: int) -> None:
        """The sink made a new message durable: try it at once."""
        msg = _Msg(record.id, size)
        msg.record = record  # what was just written: _start need not read it back
        self._index[record.id] = msg
        self._push(msg, self.clock.seconds())
        self._arm()

    def _push(self, msg: _Msg, due: float) -> None:
        msg.due = due
        heapq.heappush(self._heap, (due, next(self._seq), msg.qid))

    def _arm(self) -> None:
        """One timer for the earliest due message (entries that changed are skipped lazily)."""
        heap = self._heap
        while heap:
            due, _, qid = heap[0]
            msg = self._index.get(qid)
            if msg is not None and msg.due == due and not msg.busy:
                break
            heapq.heappop(heap)
        if not heap or not self.running:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            return
        when = heap[0][0]
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= when:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._wake)

    def _wake(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, qid = heapq.heappop(heap)
            msg = self._index.get(qid)
            if msg is None or msg.busy or msg.due != due:
                continue  # stale heap entry
            self._start(msg)
        self._pump()
        self._arm()

    def _start(self, msg: _Msg) -> None:
        """Begin a round for a due message."""
        msg.due = None
        msg.busy = True
        try:
            record = msg.record if msg.record is not None else self.spool.load(msg.qid)
        except FileNotFoundError:
            log.warn("queue: {qid} vanished from the spool", qid=msg.qid)
            self._index.pop(msg.qid, None)
            return
        except (CorruptRecord, OSError) as e:
            self._index.pop(msg.qid, None)
            self._move_aside(msg.qid, e)
            return
        msg.record = record
        now = self.clock.seconds()
        if record.pending and now >= record.created + self.schedule.lifetime:
            for r in record.pending:
                r.status = FAILED
                r.next_attempt = None
                if not r.status_code.startswith("5"):
                    r.status_code = dsn.EXPIRED_STATUS
                if not r.diagnostic:
                    r.diagnostic = "delivery time expired"
                log.info(
                    "queue: {qid} to <{rcpt}>: expired after {attempts} attempt(s); "
                    "last: {diagnostic}",
                    qid=msg.qid,
                    rcpt=r.address,
                    attempts=r.attempts,
                    diagnostic=r.diagnostic,
                )
            self._track(self._save(msg)).addBoth(lambda _: self._settle(msg))
            return
        force, msg.force = msg.force, False
        due = [r.address for r in record.pending if force or (r.next_attempt or 0.0) <= now]
        groups: dict[tuple[str, str], list[str]] = {}
        for address in due:
            try:
                key = self.route(address)
                key = (str(key[0]), str(key[1]))
            except Exception:
                log.failure("queue: routing <{rcpt}> failed", rcpt=address)
                key = ("", "")  # no such courier: a temporary failure below
            groups.setdefault(key, []).append(address)
        if not groups:
            self._settle(msg)
            return
        msg.jobs = len(groups)
        for key, rcpts in groups.items():
            self._waiting.setdefault(key, deque()).append(_Job(msg, key, tuple(rcpts)))

    # --- jobs and couriers ---------------------------------------------------------------------

    def _pump(self) -> None:
        """Start waiting jobs while the global and per-destination limits allow. A courier
        may answer synchronously, which calls back into _pump: the outer call loops instead."""
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            self._pump_again = True
            while self._pump_again:
                self._pump_again = False
                for key in list(self._waiting):
                    if self._in_flight >= self.max_in_flight:
                        return
                    jobs = self._waiting.get(key)
                    while jobs and self._in_flight < self.max_in_flight:
                        if self._active[key] >= self.per_destination:
                            break
                        self._run(jobs.popleft())
                    if not jobs and self._waiting.get(key) is jobs:
                        del self._waiting[key]
        finally:
            self._pumping = False

    def _run(self, job: _Job) -> None:
        self._in_flight += 1
        self._active[job.key] += 1
        msg = job.msg
        record = msg.record
        assert record is not None
        courier_key, destination = job.key
        item = QueueItem(
            queue_id=record.id,
            mail_from=record.mail_from,
            recipients=job.recipients,
            size=msg.size,
            body_type=record.body_type,
            smtputf8=record.smtputf8,
            envelope_id=record.envelope_id,
            destination=destination,
            body_path=self.spool.body_path(record.id),
        )
        courier = self.couriers.get(courier_key)
        if courier is None:
            d: defer.Deferred[Any] = defer.succeed(
                [
                    AttemptResult(r, Outcome.TEMPORARY, f"no courier for route {job.key!r}")
                    for r in job.recipients
                ]
            )
        else:
            d = defer.maybeDeferred(courier.deliver, item)
            d.addTimeout(self.attempt_timeout, self.clock)
        d.addErrback(self._courier_failed, job)
        d.addCallback(self._results, job)
        d.addErrback(
            lambda f: log.failure("queue: handling results of {qid} failed", f, qid=msg.qid)
        )

    def _courier_failed(self, f: Failure, job: _Job) -> list[AttemptResult]:
        # ICourier.deliver must not fail; if it does (or times out), everything it was given
        # failed temporarily (maddy: not said permanent = temporary).
        if f.check(defer.TimeoutError, defer.CancelledError):
            why = f"courier gave no answer within {self.attempt_timeout:g}s"
        else:
            log.failure("queue: courier {key} failed on {qid}", f, key=job.key[0], qid=job.msg.qid)
            why = f"internal error: {f.getErrorMessage()}"
        return [AttemptResult(r, Outcome.TEMPORARY, why, "4.3.0") for r in job.recipients]

    def _results(self, results: Iterable[AttemptResult], job: _Job) -> None:
        self._in_flight -= 1
        self._active[job.key] -= 1
        if not self._active[job.key]:
            del self._active[job.key]
        msg = job.msg
        msg.jobs -= 1
        if not self.running:
            return  # stopping: the attempt is repeated after the restart
        record = msg.record
        assert record is not None
        now = self.clock.seconds()
        by_rcpt = {r.recipient: r for r in results if isinstance(r, AttemptResult)}
        for address in job.recipients:
            result = by_rcpt.get(address) or AttemptResult(
                address, Outcome.TEMPORARY, "courier returned no result for this recipient"
            )
            state = record.recipient(address)
            if state is None or state.final:
                continue
            self._apply(record, state, result, now, job.key)
        if msg.jobs == 0 and _nothing_left(record) and not msg.deleted:
            # Every recipient delivered: the removal in _settle is this record's last change,
            # and saving it first would only add a write and two fsyncs. Equally safe: a crash
            # before the removal is on disk repeats the attempt either way (the removal is
            # not fsync'd, Spool.remove) -- a duplicate at worst, never a loss.
            d = self._after_saves(msg)
        else:
            d = self._track(self._save(msg))
        if msg.jobs == 0:
            d.addBoth(lambda _: self._settle(msg))
        self._pump()

    def _after_saves(self, msg: _Msg) -> defer.Deferred[None]:
        """Fires once the saves of ``msg`` already started have finished (a removal must not
        race an earlier job's save: that would leave a record without its body)."""
        if msg.lock is None:
            return defer.succeed(None)
        return msg.lock.run(defer.succeed, None)

    def _apply(
        self,
        record: QueueRecord,
        state: RecipientState,
        result: AttemptResult,
        now: float,
        key: tuple[str, str],
    ) -> None:
        state.attempts += 1
        state.last_attempt = now
        state.diagnostic = result.diagnostic
        state.status_code = result.status
        state.remote_mta = result.remote_mta
        delay: float | None = None
        if result.outcome is Outcome.DELIVERED:
            state.status = DELIVERED
            state.next_attempt = None
        elif result.outcome is Outcome.PERMANENT:
            state.status = FAILED
            state.next_attempt = None
        else:
            delay = self.schedule.delay(state.attempts)
            # Never wait past the lifetime: expiry is noticed on time.
            state.next_attempt = min(now + delay, record.created + self.schedule.lifetime)
            delay = state.next_attempt - now
        log.info(
            "queue: {qid} to <{rcpt}> via {courier} {destination}: {outcome}"
            " (attempt {attempts}) {diagnostic}{retry}",
            qid=record.id,
            rcpt=state.address,
            courier=key[0],
            destination=key[1],
            outcome=result.outcome.value,
            attempts=state.attempts,
            diagnostic=result.diagnostic,
            retry="" if delay is None else f"; next attempt in {delay:.0f}s",
            next_attempt=state.next_attempt,
        )

    # --- saving, settling, removing ----------------------------------------------------------

    def _track(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        self._pending.add(d)

        def done(result: object) -> object:
            self._pending.discard(d)
            return result

        return d.addBoth(done)

    def _save(self, msg: _Msg) -> defer.Deferred[None]:
        """Save the record; saves of one message run one at a time, each writing the state as
        it is when it starts (so an older state never overwrites a newer one)."""
        if msg.lock is None:
            msg.lock = defer.DeferredLock()

        def save() -> defer.Deferred[None]:
            record = msg.record
            if record is None or msg.deleted:
                return defer.succeed(None)
            return self.io.run(self.spool.save_raw, record.id, record.to_json())

        d = msg.lock.run(save)

        def failed(f: Failure) -> None:
            log.failure("queue: saving the state of {qid} failed", f, qid=msg.qid)

        return d.addErrback(failed)

    @defer.inlineCallbacks
    def _settle(self, msg: _Msg) -> Any:
        """The round is over: DSNs, then remove or reschedule."""
        record = msg.record
        assert record is not None
        try:
            if msg.deleted:
                yield self._remove(msg, "deleted by the operator")
                return
            now = self.clock.seconds()
            changed = False
            failed = [r for r in record.recipients if r.status == FAILED and not r.dsn_sent]
            if failed:
                if record.is_bounce:
                    # RFC 3464 2 / RFC 5321 6.1: never a bounce for a bounce.
                    log.warn(
                        "queue: {qid} (a bounce, from <>) failed for {rcpts}: dropped",
                        qid=msg.qid,
                        rcpts=", ".join(r.address for r in failed),
                    )
                else:
                    bounce = yield self._enqueue_dsn(record, failed, delayed=False)
                    log.info(
                        "queue: {qid} bounced to <{sender}> as {bounce} for {rcpts}",
                        qid=msg.qid,
                        sender=record.mail_from,
                        bounce=bounce,
                        rcpts=", ".join(r.address for r in failed),
                    )
                for r in failed:
                    r.dsn_sent = True
                changed = True
            notice = self.schedule.delay_notice
            if (
                notice
                and record.pending
                and not record.delay_notice_sent
                and now >= record.created + notice
            ):
                if not record.is_bounce:
                    bounce = yield self._enqueue_dsn(
                        record,
                        record.pending,
                        delayed=True,
                        expires=record.created + self.schedule.lifetime,
                    )
                    log.info(
                        "queue: {qid} delay notice to <{sender}> as {bounce}",
                        qid=msg.qid,
                        sender=record.mail_from,
                        bounce=bounce,
                    )
                record.delay_notice_sent = True
                changed = True
            if record.done:
                yield self._remove(msg, "done")
                return
            if changed:
                yield self._save(msg)
            due = record.next_due()
            if notice and not record.delay_notice_sent:
                due = min(due if due is not None else now, record.created + notice)
            self._reschedule(msg, now if due is None else due)
        except Exception:
            log.failure("queue: settling {qid} failed; trying again later", qid=msg.qid)
            self._reschedule(msg, self.clock.seconds() + self.schedule.base_delay(1))

    def _reschedule(self, msg: _Msg, due: float) -> None:
        msg.busy = False
        msg.record = None
        msg.lock = None
        if msg.qid not in self._index or not self.running:
            return
        if msg.force:
            msg.force = False
            due = self.clock.seconds()
        self._push(msg, due)
        self._arm()

    def _remove(self, msg: _Msg, why: str) -> defer.Deferred[None]:
        self._index.pop(msg.qid, None)
        msg.record = None
        msg.busy = False
        d = self._track(self.io.run(self.spool.remove, msg.qid))

        def removed(_: object) -> None:
            log.info("queue: {qid} removed ({why})", qid=msg.qid, why=why)

        return d.addCallback(removed)

    def _enqueue_dsn(
        self,
        record: QueueRecord,
        recipients: list[RecipientState],
        *,
        delayed: bool,
        expires: float | None = None,
    ) -> defer.Deferred[str]:
        """Build a DSN for ``recipients`` and queue it durably (from <>, to the sender)."""

        def build(head: bytes) -> defer.Deferred[bytes]:
            body = dsn.build_dsn(
                record,
                recipients,
                dsn.original_headers(head),
                self.hostname,
                self.clock.seconds(),
                delayed=delayed,
                expires=expires,
            )
            if self.sign_notice is None:
                return defer.succeed(body)
            return self.sign_notice(body).addCallback(lambda fields: fields + body)

        def enqueue(body: bytes) -> defer.Deferred[str]:
            sender = record.mail_from
            envelope = Envelope(
                queue_id=self.sink.new_id(),
                mail_from="",  # the null reverse-path (RFC 5321 4.5.5)
                recipients=[Recipient(sender, sender)],
                server_name=self.hostname,
                protocol="local",
                body_type="7BIT" if body.isascii() else "8BITMIME",
                smtputf8=not sender.isascii(),
                received_at=self.clock.seconds(),
            )
            message = self.sink.open(envelope)
            message.write(body)
            return message.commit()

        d = self.io.run(self.spool.read_headers, record.id)
        return d.addCallback(build).addCallback(enqueue)

    # --- operator requests ---------------------------------------------------------------------

    def retry(self, qid: str | None = None) -> int:
        """Try ``qid`` (or every message) now, ignoring its schedule. Returns how many."""
        targets = list(self._index.values()) if qid is None else [self._index.get(qid)]
        count = 0
        now = self.clock.seconds()
        for msg in targets:
            if msg is None:
                continue
            count += 1
            msg.force = True
            if not msg.busy:
                self._push(msg, now)
        self._arm()
        log.info("queue: retry requested for {what}", what=qid or f"all ({count})")
        return count

    def delete(self, qid: str) -> bool:
        """Remove ``qid`` without delivering or bouncing it. False if there is no such message."""
        msg = self._index.get(qid)
        if msg is None:
            return False
        if msg.busy:
            msg.deleted = True  # removed when its round ends
        else:
            self._remove(msg, "deleted by the operator")
        return True

    def poll_control(self) -> None:
        """Apply operator requests left in ``control/`` (mailhub.queue.admin writes them)."""
        try:
            names = sorted(n for n in os.listdir(self.spool.control) if n.endswith(".json"))
        except FileNotFoundError:
            return
        for name in names:
            path = self.spool.control / name
            try:
                request = json.loads(path.read_bytes())
                action = request["action"]
                qid = request.get("id")
                if action == "retry":
                    self.retry(qid)
                elif action == "arrived" and isinstance(qid, str):
                    if not self.arrived(qid):
                        log.warn("queue: {qid} arrived but is not in the spool", qid=qid)
                elif action == "delete" and isinstance(qid, str):
                    if not self.delete(qid):
                        log.warn("queue: delete requested for unknown {qid}", qid=qid)
                else:
                    raise ValueError(f"unknown request {request!r}")
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                log.error("queue: bad control request {name}: {e}", name=name, e=e)
            try:
                os.unlink(path)  # the operator's command waits for this (admin.request)
            except FileNotFoundError:
                pass


def _nothing_left(record: QueueRecord) -> bool:
    """Every recipient final and nobody to report to: all delivered, or failures whose DSN
    is already queued."""
    return all(r.status == DELIVERED or (r.final and r.dsn_sent) for r in record.recipients)
