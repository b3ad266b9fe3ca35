"""Webhooks (issue 15): each new message POSTed as JSON to every ``[[web.webhook]]`` that wants
it, signed, retried with exponential backoff, one bounded queue per hook.

What counts as new: every message the web feed numbers after the webhooks started (the feed
is the store's change feed, mailhub.store.changes): SMTP deliveries (directly or from the
queue), IMAP APPEND, and IMAP COPY/MOVE (which make a new message in the target folder; a
hook with ``folder = "INBOX"`` sees delivered mail only). Mail already in the store when the
server started is not sent.

Each hook delivers in order, one request at a time: a message is retried until it is
delivered (any 2xx), ``max_attempts`` were made, or the next attempt would come later than
``max_age`` after the message arrived; then the next message goes. While a hook is failing, new
messages wait in its queue, at most ``queue_size`` of them; beyond that a new message is
dropped: counted, logged and shown in the hook's log. An attempt that takes longer than
``timeout`` is cancelled (its connection closed) and counts as failed, so a receiver that hangs
costs one request at a time and never the server's attention. Messages still queued at
shutdown are logged by count (the queue lives in memory).

The request (the verification recipe is in the README)::

    POST <url>
    Content-Type: application/json
    X-Mailhub-Event: message.new
    X-Mailhub-Delivery: <id, the same for every attempt of one message to one hook>
    X-Mailhub-Attempt: <1, 2, ...>
    X-Mailhub-Timestamp: <seconds since the epoch, of this attempt>
    X-Mailhub-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>

    {"event": "message.new", "delivery": "...", "message": {<the API's list item>, "links":
     {"self": "/api/v1/messages/<id>", "raw": ".../raw", "html": ".../html"}}}

The timestamp is signed with the body so that a captured request cannot be replayed later:
the receiver refuses timestamps older than a few minutes (as Stripe's and Slack's schemes do).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from mailhub import __version__
from mailhub.config import WebhookConfig
from mailhub.store import MessageGone, StoreError
from mailhub.web.feed import Change, Entry, MailFeed

log = Logger()

EVENT = "message.new"
LOG_SIZE = 50  # attempts kept per hook for GET /api/v1/webhooks
MAX_ANSWER = 64 * 1024  # octets of a receiver's answer read; the rest is not waited for


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Mailhub-Signature value: HMAC-SHA256 over ``<timestamp>.<body>``."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, signature: str, body: bytes, now: float) -> bool:
    """What a receiver checks (the README's recipe, in Python): the signature, in constant
    time, and a timestamp within five minutes of ``now``."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > 300:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


# -- sending ----------------------------------------------------------------------------------


class Poster(Protocol):
    """One HTTP POST; fires with the status code (the answer read, up to MAX_ANSWER)."""

    def post(self, url: str, headers: dict[str, str], body: bytes) -> Deferred[int]: ...

    def close(self) -> Deferred[None]: ...  # close the connections kept open


@implementer(IBodyProducer)
class _Body:
    def __init__(self, data: bytes) -> None:
        self.data, self.length = data, len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Drain(TwistedProtocol):
    """Reads an answer's body, keeping nothing; stops listening past MAX_ANSWER octets."""

    def __init__(self, done: Deferred[None]) -> None:
        self.done, self.got = done, 0

    def dataReceived(self, data: bytes) -> None:
        self.got += len(data)
        if self.got > MAX_ANSWER and self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]  # the body's transport

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]  # noqa: B008
        if not self.done.called:
            self.done.callback(None)


class AgentPoster:
    """POSTs with twisted.web's Agent over a persistent connection pool."""

    def __init__(self, reactor: Any) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 2
        self.pool.retryAutomatically = False  # a retry is ours to decide (and to count)
        self.agent = Agent(reactor, pool=self.pool)

    def post(self, url: str, headers: dict[str, str], body: bytes) -> Deferred[int]:
        return Deferred.fromCoroutine(self._post(url, headers, body))

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> int:
        h = Headers({k.encode(): [v.encode()] for k, v in headers.items()})
        response: IResponse = await self.agent.request(b"POST", url.encode(), h, _Body(body))
        done: Deferred[None] = Deferred()
        response.deliverBody(_Drain(done))
        await done
        return int(response.code)

    def close(self) -> Deferred[None]:
        return self.pool.closeCachedConnections()


# -- one hook ---------------------------------------------------------------------------------


@dataclass
class _Item:
    message: str  # the message id
    delivery: str
    body: bytes
    came: float  # when the hook was given it (clock seconds)
    attempts: int = 0


@dataclass(frozen=True)
class Attempt:
    """One line of a hook's delivery log."""

    time: str  # ISO 8601, UTC
    message: str
    delivery: str
    attempt: int
    status: int | None  # the HTTP status; None: no answer (error says why)
    latency_ms: float | None
    error: str | None
    outcome: str  # delivered | retrying | gave up | dropped


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# Sandboxes (mailhub.sandboxes, issue 15) are mailboxes <id>@sandbox.invalid (RFC 6761 6.4).
SANDBOX_DOMAIN = "sandbox.invalid"


def sandbox_of(summary: dict[str, Any]) -> str | None:
    """The id of the sandbox a message was caught in: the summary's ``sandbox`` if it names
    one, else its mailbox's local part in the sandbox domain; None outside sandboxes."""
    named = summary.get("sandbox")
    if isinstance(named, str) and named:
        return named
    local, _, domain = str(summary.get("mailbox", "")).rpartition("@")
    return local if domain == SANDBOX_DOMAIN and local else None


def shown_url(url: str) -> str:
    """The URL without a password (a receiver's user:password@ stays out of the API)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Hook:
    """One ``[[web.webhook]]``: its queue, the attempt in flight, its counters and log."""

    def __init__(self, config: WebhookConfig, poster: Poster, clock: IReactorTime) -> None:
        self.config, self.poster, self.clock = config, poster, clock
        self.queue: deque[_Item] = deque()
        self.current: _Item | None = None
        self.request: Deferred[int] | None = None
        self.timer: IDelayedCall | None = None
        self.log: deque[Attempt] = deque(maxlen=LOG_SIZE)
        self.delivered = self.failed_attempts = self.gave_up = self.dropped = 0
        self.stopped = False

    def wants(self, summary: dict[str, Any]) -> bool:
        c = self.config
        if c.sandbox:
            box = sandbox_of(summary)
            if box is None or c.sandbox not in ("*", box):
                return False
        return (
            (not c.mailbox or summary.get("mailbox") == c.mailbox)
            and (not c.folder or summary.get("folder") == c.folder)
            and (not c.tag or c.tag in summary.get("tags", ()))
        )

    def offer(self, item: _Item) -> None:
        if self.stopped:
            return
        if len(self.queue) >= self.config.queue_size:
            self.dropped += 1
            error = f"queue full ({len(self.queue)} waiting): message dropped"
            self._record(item, None, None, error, "dropped")
            log.warn(
                "webhook {url}: {problem}: {message_id}",
                url=shown_url(self.config.url),
                problem=error,
                message_id=item.message,
            )
            return
        self.queue.append(item)
        self._next()

    def _next(self) -> None:
        if self.current is None and self.queue and not self.stopped:
            self.current = self.queue.popleft()
            self._attempt()

    def _attempt(self) -> None:
        self.timer = None
        item = self.current
        if item is None or self.stopped:
            return
        item.attempts += 1
        stamp = int(self.clock.seconds())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"mailhub/{__version__}",
            "X-Mailhub-Event": EVENT,
            "X-Mailhub-Delivery": item.delivery,
            "X-Mailhub-Attempt": str(item.attempts),
            "X-Mailhub-Timestamp": str(stamp),
        }
        if self.config.secret:
            headers["X-Mailhub-Signature"] = sign(self.config.secret, stamp, item.body)
        began = time.perf_counter()  # latency is a measurement, not a timer: the real clock
        d = self.poster.post(self.config.url, headers, item.body)
        self.request = d
        late: list[bool] = []

        def too_late() -> None:  # cancelling closes the connection (twisted.web's Agent)
            late.append(True)
            d.cancel()

        timer = self.clock.callLater(self.config.timeout, too_late)

        def answered(status: int) -> None:
            if timer.active():
                timer.cancel()
            self._answered(item, status, None, began)

        def failed(f: Failure) -> None:
            if timer.active():
                timer.cancel()
            if late:
                error = f"no answer within {self.config.timeout:g} s"
            elif self.stopped:
                error = "cancelled at shutdown"
            else:
                error = f"{type(f.value).__name__}: {f.getErrorMessage()}"[:300]
            self._answered(item, None, error, began)

        d.addCallbacks(answered, failed)

    def _answered(self, item: _Item, status: int | None, error: str | None, began: float) -> None:
        self.request = None
        latency = round((time.perf_counter() - began) * 1000, 1)
        if status is not None and 200 <= status < 300:
            self.delivered += 1
            self._record(item, status, latency, None, "delivered")
            self._done()
            return
        self.failed_attempts += 1
        if status is not None:
            error = f"answered {status}"
        if self.stopped:
            self._record(item, status, latency, error, "stopped")
            return
        c = self.config
        # Exponential backoff: retry_base, twice that, ... at most retry_max apart.
        delay = min(c.retry_base * 2 ** (item.attempts - 1), c.retry_max)
        if item.attempts >= c.max_attempts or self.clock.seconds() + delay - item.came > c.max_age:
            self.gave_up += 1
            self._record(item, status, latency, error, "gave up")
            log.error(
                "webhook {url}: gave up on {message_id} after {n} attempts: {problem}",
                url=shown_url(c.url),
                message_id=item.message,
                n=item.attempts,
                problem=error,
            )
            self._done()
            return
        self._record(item, status, latency, error, "retrying")
        self.timer = self.clock.callLater(delay, self._attempt)

    def _done(self) -> None:
        self.current = None
        self._next()

    def _record(
        self,
        item: _Item,
        status: int | None,
        latency: float | None,
        error: str | None,
        outcome: str,
    ) -> None:
        self.log.append(
            Attempt(
                _iso(self.clock.seconds()),
                item.message,
                item.delivery,
                item.attempts,
                status,
                latency,
                error,
                outcome,
            )
        )

    def stop(self) -> None:
        self.stopped = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.request is not None:
            self.request.cancel()
        waiting = len(self.queue) + (self.current is not None)
        if waiting:
            log.warn(
                "webhook {url}: {n} messages not delivered at shutdown",
                url=shown_url(self.config.url),
                n=waiting,
            )

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "url": shown_url(c.url),
            "signed": bool(c.secret),
            "filters": {
                k: v
                for k, v in (
                    ("mailbox", c.mailbox),
                    ("sandbox", c.sandbox),
                    ("tag", c.tag),
                    ("folder", c.folder),
                )
                if v
            },
            "queued": len(self.queue),
            "in_flight": self.current.message if self.current is not None else None,
            "delivered": self.delivered,
            "failed_attempts": self.failed_attempts,
            "gave_up": self.gave_up,
            "dropped": self.dropped,
            "attempts": [asdict(a) for a in reversed(self.log)],  # newest first
        }


# -- every hook, fed by the web feed ------------------------------------------------------------


class Webhooks:
    """The server's hooks. ``render`` makes a message's summary (the API's list item)."""

    def __init__(
        self,
        feed: MailFeed,
        clock: IReactorTime,
        configs: Sequence[WebhookConfig],
        render: Callable[[Entry], dict[str, Any]],
        poster: Poster,
    ) -> None:
        self.feed, self.clock, self.render, self.poster = feed, clock, render, poster
        self.hooks = [Hook(c, poster, clock) for c in configs]
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        """From now on: every message the feed numbers from here (mail already there: not)."""
        if self._unsubscribe is None and self.hooks:
            self.feed.catch_up()
            self._unsubscribe = self.feed.subscribe(self._changed)

    def stop(self) -> Deferred[None]:
        """Stop sending; fires when the connections kept for reuse are closed."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for hook in self.hooks:
            hook.stop()
        return self.poster.close()

    def _changed(self, changes: list[Change]) -> None:
        for c in changes:
            if c.kind == "new":
                self._new(c.entry)

    def _new(self, entry: Entry) -> None:
        try:
            summary = self.render(entry)
        except (MessageGone, StoreError, FileNotFoundError):
            return  # deleted before it was noticed: its "deleted" follows
        except Exception:
            log.failure("webhooks: the summary of {id} failed; not sent", id=entry.id)
            return
        base = f"/api/v1/messages/{entry.id}"
        summary["links"] = {"self": base, "raw": f"{base}/raw", "html": f"{base}/html"}
        now = self.clock.seconds()
        for hook in self.hooks:
            if hook.wants(summary):
                delivery = uuid.uuid4().hex
                payload = {"event": EVENT, "delivery": delivery, "message": summary}
                body = json.dumps(payload, separators=(",", ":")).encode()
                hook.offer(_Item(entry.id, delivery, body, now))

    def describe(self) -> list[dict[str, Any]]:
        return [h.describe() for h in self.hooks]
