"""The queue's plain data: one message's envelope and per-recipient state, and its JSON form.

The JSON file beside each body (``<id>.json``) is the whole truth about a queued message: what
the receiver accepted and what every attempt since did. It is readable (``mailhub queue show``,
``jq``), versioned, and never pickled: a damaged or hostile file can only fail to parse.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT_VERSION = 1

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
_STATUSES = frozenset({PENDING, DELIVERED, FAILED})

# Queue ids become file names: keep them to a safe alphabet (QueueIdGenerator makes base32).
QUEUE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class CorruptRecord(ValueError):
    """A ``<id>.json`` that does not parse or does not hold what the queue wrote."""


@dataclass
class RecipientState:
    """One recipient of a queued message and what happened to it so far."""

    address: str  # the target mailbox (Recipient.mailbox), what couriers deliver to
    original: str = ""  # as the client wrote it in RCPT (RFC 3464 Original-Recipient)
    status: str = PENDING  # pending | delivered | failed
    attempts: int = 0
    last_attempt: float | None = None
    next_attempt: float | None = None  # None once final
    diagnostic: str = ""  # e.g. "smtp; 550 5.1.1 user unknown" (RFC 3464 2.3.6)
    status_code: str = ""  # RFC 3463 enhanced code of the last result
    remote_mta: str = ""
    dsn_sent: bool = False  # a failure DSN naming this recipient is durably queued

    @property
    def final(self) -> bool:
        return self.status != PENDING


@dataclass
class QueueRecord:
    """One queued message (the body is ``<id>.msg``, never held in memory)."""

    id: str
    mail_from: str  # "" is the null reverse-path: a bounce, which never gets a bounce
    created: float
    recipients: list[RecipientState] = field(default_factory=list)
    envelope_id: str | None = None  # RFC 3461 ENVID, echoed as Original-Envelope-Id
    body_type: str = "7BIT"
    smtputf8: bool = False
    delay_notice_sent: bool = False
    client: str = ""  # where it came from, for `queue show` and logs (not used for delivery)

    @property
    def is_bounce(self) -> bool:
        return self.mail_from == ""

    @property
    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.status == PENDING]

    @property
    def done(self) -> bool:
        return all(r.final for r in self.recipients)

    def next_due(self) -> float | None:
        """The earliest next attempt of a pending recipient (None when none is pending)."""
        times = [r.next_attempt or 0.0 for r in self.recipients if r.status == PENDING]
        return min(times) if times else None

    def recipient(self, address: str) -> RecipientState | None:
        for r in self.recipients:
            if r.address == address:
                return r
        return None

    def to_json(self) -> bytes:
        data: dict[str, Any] = {"version": FORMAT_VERSION, **asdict(self)}
        data["is_bounce"] = self.is_bounce  # for readers; derived from mail_from on load
        return (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes, expected_id: str | None = None) -> QueueRecord:
        """Parse and check a record; anything unexpected raises CorruptRecord."""
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptRecord(f"not JSON: {e}") from None
        if not isinstance(data, dict):
            raise CorruptRecord("not a JSON object")
        if data.get("version") != FORMAT_VERSION:
            raise CorruptRecord(f"unknown format version {data.get('version')!r}")
        try:
            rcpts = [_recipient(r) for r in data["recipients"]]
            record = cls(
                id=_typed(data["id"], str, "id"),
                mail_from=_typed(data["mail_from"], str, "mail_from"),
                created=float(_typed(data["created"], (int, float), "created")),
                recipients=rcpts,
                envelope_id=_optional(data.get("envelope_id"), str, "envelope_id"),
                body_type=_typed(data.get("body_type", "7BIT"), str, "body_type"),
                smtputf8=bool(data.get("smtputf8", False)),
                delay_notice_sent=bool(data.get("delay_notice_sent", False)),
                client=_typed(data.get("client", ""), str, "client"),
            )
        except (KeyError, TypeError) as e:
            raise CorruptRecord(f"missing or bad field: {e}") from None
        if not QUEUE_ID.match(record.id):
            raise CorruptRecord(f"bad queue id {record.id!r}")
        if expected_id is not None and record.id != expected_id:
            raise CorruptRecord(f"holds id {record.id!r}, not {expected_id!r}")
        if not record.recipients:
            raise CorruptRecord("no recipients")
        return record


def _typed(value: Any, types: type | tuple[type, ...], name: str) -> Any:
    if not isinstance(value, types) or isinstance(value, bool):
        raise CorruptRecord(f"field {name!r} has the wrong type")
    return value


def _optional(value: Any, types: type | tuple[type, ...], name: str) -> Any:
    return None if value is None else _typed(value, types, name)


def _recipient(data: Any) -> RecipientState:
    if not isinstance(data, dict):
        raise CorruptRecord("a recipient is not an object")
    status = data.get("status", PENDING)
    if status not in _STATUSES:
        raise CorruptRecord(f"unknown recipient status {status!r}")
    last = _optional(data.get("last_attempt"), (int, float), "last_attempt")
    nxt = _optional(data.get("next_attempt"), (int, float), "next_attempt")
    return RecipientState(
        address=_typed(data["address"], str, "address"),
        original=_typed(data.get("original", ""), str, "original"),
        status=status,
        attempts=int(_typed(data.get("attempts", 0), int, "attempts")),
        last_attempt=None if last is None else float(last),
        next_attempt=None if nxt is None else float(nxt),
        diagnostic=_typed(data.get("diagnostic", ""), str, "diagnostic"),
        status_code=_typed(data.get("status_code", ""), str, "status_code"),
        remote_mta=_typed(data.get("remote_mta", ""), str, "remote_mta"),
        dsn_sent=bool(data.get("dsn_sent", False)),
    )
