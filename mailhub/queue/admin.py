"""The operator's view of the queue (``mailhub queue list|show|retry|delete``).

Reading (list, show) reads the spool's JSON files directly: each is replaced atomically by the
server, so a reader sees an old or a new state, never a torn one.

Changing (retry, delete) must not race with the running server, which owns the spool. The
rule is the server's lock (``queue/lock``, flock()ed by the Queue service while it runs):

* lock taken by a server: the command writes a request file ``control/<unique>.json``
  (``{"action": "retry"|"delete", "id": ...}``, atomically: tmp name, then rename) and waits
  until the server has applied and removed it (the server polls every ``control_interval``,
  2 s by default). The server does the change itself, so an attempt in flight is never
  confused: a message deleted during an attempt is removed when the attempt ends.
* lock free (no server): the command takes the lock itself and edits the spool directly. A
  server starting meanwhile waits a few seconds for the lock (Spool.lock).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailhub.queue.record import QUEUE_ID, CorruptRecord, QueueRecord
from mailhub.queue.spool import QueueLocked, Spool
from mailhub.safeio import atomic_write

ACTIONS = ("retry", "delete")


class NoSuchMessage(LookupError):
    pass


@dataclass(frozen=True)
class RecipientInfo:
    address: str
    status: str
    attempts: int
    next_attempt: float | None
    last_attempt: float | None
    diagnostic: str


@dataclass(frozen=True)
class MessageInfo:
    id: str
    sender: str  # "" for a bounce (<>)
    created: float
    size: int
    recipients: tuple[RecipientInfo, ...]
    delay_notice_sent: bool

    @classmethod
    def of(cls, record: QueueRecord, size: int) -> MessageInfo:
        return cls(
            id=record.id,
            sender=record.mail_from,
            created=record.created,
            size=size,
            recipients=tuple(
                RecipientInfo(
                    r.address, r.status, r.attempts, r.next_attempt, r.last_attempt, r.diagnostic
                )
                for r in record.recipients
            ),
            delay_notice_sent=record.delay_notice_sent,
        )


def list_messages(directory: str | os.PathLike[str]) -> list[MessageInfo]:
    """Every queued message, oldest first (damaged records are skipped; the server moves them
    to corrupt/ and logs it)."""
    spool = Spool(directory)
    if not spool.path.is_dir():
        return []
    out = []
    for qid in spool.ids():
        try:
            record = QueueRecord.from_json(spool.json_path(qid).read_bytes(), expected_id=qid)
        except (OSError, CorruptRecord):
            continue  # removed meanwhile, or damaged
        out.append(MessageInfo.of(record, spool.body_size(qid)))
    out.sort(key=lambda m: (m.created, m.id))
    return out


def show(directory: str | os.PathLike[str], qid: str) -> MessageInfo:
    spool = Spool(directory)
    if not QUEUE_ID.match(qid):
        raise NoSuchMessage(qid)
    try:
        record = QueueRecord.from_json(spool.json_path(qid).read_bytes(), expected_id=qid)
    except FileNotFoundError:
        raise NoSuchMessage(qid) from None
    return MessageInfo.of(record, spool.body_size(qid))


def request(
    directory: str | os.PathLike[str],
    action: str,
    qid: str | None = None,
    *,
    wait: float = 10.0,
    now: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Retry (``qid`` None: all) or delete a message, safely beside a running server.

    Returns what happened, for the operator. Raises NoSuchMessage for an unknown id.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    if action == "delete" and qid is None:
        raise ValueError("delete needs a queue id")
    spool = Spool(directory)
    if qid is not None and (not QUEUE_ID.match(qid) or not spool.json_path(qid).exists()):
        raise NoSuchMessage(qid or "")
    if not spool.path.is_dir():
        return "the queue is empty"
    try:
        spool.lock(timeout=0)
    except QueueLocked:
        return _ask_server(spool, action, qid, wait, now, sleep)
    try:
        return _apply_offline(spool, action, qid, now())
    finally:
        spool.unlock()


def _ask_server(
    spool: Spool,
    action: str,
    qid: str | None,
    wait: float,
    now: Callable[[], float],
    sleep: Callable[[float], None],
) -> str:
    import json

    spool.control.mkdir(exist_ok=True)
    # Names sort by time, so requests are applied in the order they were made.
    path = spool.control / f"{time.time_ns():020d}-{secrets.token_hex(4)}.json"
    atomic_write(path, json.dumps({"action": action, "id": qid}).encode())
    deadline = now() + wait
    while path.exists():
        if now() >= deadline:
            return "requested; the running server will apply it within seconds"
        sleep(0.05)
    return "done by the running server"


def _apply_offline(spool: Spool, action: str, qid: str | None, now: float) -> str:
    if action == "delete":
        assert qid is not None
        spool.remove(qid)
        return f"{qid} deleted (no server running)"
    count = 0
    for target in [qid] if qid is not None else list(spool.ids()):
        try:
            record = spool.load(target)
        except (OSError, CorruptRecord):
            continue
        for r in record.pending:
            r.next_attempt = now
        spool.save(record)
        count += 1
    return f"{count} message(s) due now; they are tried when the server starts"


def describe(info: MessageInfo, now: float) -> list[str]:
    """Lines for ``mailhub queue show``."""
    lines = [
        f"id        {info.id}",
        f"from      <{info.sender}>",
        f"queued    {_when(info.created)} ({_age(now - info.created)} ago)",
        f"size      {info.size} bytes",
    ]
    if info.delay_notice_sent:
        lines.append("notice    delay notice sent")
    for r in info.recipients:
        state = r.status
        if r.status == "pending" and r.next_attempt is not None:
            wait = r.next_attempt - now
            state += f", next attempt {'now' if wait <= 0 else 'in ' + _age(wait)}"
        lines.append(f"to        <{r.address}>: {state}, {r.attempts} attempt(s)")
        if r.diagnostic:
            lines.append(f"          {r.diagnostic}")
    return lines


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def age(seconds: float) -> str:
    return _age(seconds)


def queue_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "queue"
