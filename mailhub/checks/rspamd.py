"""A spam score from rspamd (``[checks] rspamd = "http://127.0.0.1:11333"``): its ``/checkv2``.

The raw message is POSTed to rspamd's normal worker with the SMTP facts as request headers (its
protocol, https://rspamd.com/doc/developers/protocol.html): ``IP`` (the client's address),
``Helo``, ``From`` (MAIL FROM), ``Rcpt`` (one header per recipient), ``Queue-Id`` and ``User``
(the login of an authenticated session; rspamd then skips the checks meant for strangers).
Without them rspamd would guess from the Received fields.

The answer (JSON) gives the score, the score the action needs (``required_score``), the action
(``no action``, ``greylist``, ``add header``, ``rewrite subject``, ``soft reject``, ``reject``)
and the symbols that fired, each with its score, description and options.

Asking is bounded: one ``timeout`` for the whole exchange (connect, send, answer), an answer of
at most ``MAX_ANSWER`` bytes, at most ``max_message`` bytes sent. Anything else than a good
answer is an ``RspamdError`` in words (refused, timed out, HTTP 500, not JSON, too big), never a
traceback.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import implementer

MAX_ANSWER = 1024 * 1024  # bytes: rspamd's answer for a message is a few kB
# Actions at which rspamd's verdict is "spam" (the others: none, greylist, soft reject).
SPAM_ACTIONS = frozenset(("reject", "add header", "rewrite subject"))
# rspamd's actions (its protocol); another word is passed on as it is.
ACTIONS = ("no action", "greylist", "add header", "rewrite subject", "soft reject", "reject")


class RspamdError(Exception):
    """rspamd gave no usable answer; ``str()`` says why in words. ``timeout``: it was slow."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass(frozen=True)
class ScanFacts:
    """The SMTP facts rspamd is told (request headers); empty: not told."""

    ip: str = ""
    helo: str = ""
    mail_from: str | None = None  # None: unknown; "": the null reverse-path <>
    recipients: tuple[str, ...] = ()
    queue_id: str = ""
    user: str = ""  # the AUTH login; "" for a stranger

    def headers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        if self.ip:
            out["IP"] = [self.ip]
        if self.helo:
            out["Helo"] = [self.helo]
        if self.mail_from is not None:
            out["From"] = [f"<{self.mail_from}>" if not self.mail_from else self.mail_from]
        if self.recipients:
            out["Rcpt"] = list(self.recipients)
        if self.queue_id:
            out["Queue-Id"] = [self.queue_id]
        if self.user:
            out["User"] = [self.user]
        # Header values are the client's words: no CR/LF may reach the request (Twisted
        # refuses them, but say so here rather than fail inside the agent).
        return {k: [_one_line(v) for v in vs] for k, vs in out.items()}

    def json(self) -> dict[str, Any]:
        return {
            "ip": self.ip or None,
            "helo": self.helo or None,
            "from": self.mail_from,
            "rcpt": list(self.recipients),
            "queue_id": self.queue_id or None,
            "user": self.user or None,
        }


def _one_line(value: str) -> str:
    return " ".join(value.split())


@dataclass(frozen=True)
class Symbol:
    name: str
    score: float
    description: str = ""
    options: tuple[str, ...] = ()

    def json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "score": self.score,
            "description": self.description,
            "options": list(self.options),
        }


@dataclass(frozen=True)
class SpamReport:
    """rspamd's verdict on one message."""

    score: float
    required_score: float
    action: str
    symbols: tuple[Symbol, ...] = ()
    skipped: bool = False  # rspamd stopped early (a pre-filter decided: GTUBE, settings)
    messages: Mapping[str, str] = field(default_factory=dict)
    time: float | None = None  # seconds rspamd took

    @property
    def is_spam(self) -> bool:
        return self.action in SPAM_ACTIONS

    def json(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "required_score": self.required_score,
            "action": self.action,
            "is_spam": self.is_spam,
            "skipped": self.skipped,
            "symbols": [s.json() for s in self.symbols],
            "messages": dict(self.messages),
            "time": self.time,
        }


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RspamdError(f"rspamd's answer has no usable {what} ({value!r:.40})")
    return float(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_answer(body: bytes) -> SpamReport:
    """The report in a ``/checkv2`` answer; RspamdError when it is not one."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RspamdError(f"rspamd's answer is not JSON: {body[:80]!r}") from None
    if not isinstance(data, dict):
        raise RspamdError("rspamd's answer is not a JSON object")
    if "error" in data and "score" not in data:
        raise RspamdError(f"rspamd refused the message: {_text(data['error'])[:200]}")
    symbols_in = data.get("symbols", {})
    if not isinstance(symbols_in, dict):
        raise RspamdError("rspamd's answer has symbols that are not an object")
    symbols = []
    for name, s in symbols_in.items():
        if not isinstance(s, dict):
            continue
        options = s.get("options", [])
        symbols.append(
            Symbol(
                name=_text(s.get("name")) or str(name),
                score=_number(s.get("score", 0.0), f"score for {name}"),
                description=_text(s.get("description")),
                options=tuple(str(o) for o in options) if isinstance(options, list) else (),
            )
        )
    # The ones that weigh most first (either way), then by name: the page reads top down.
    symbols.sort(key=lambda s: (-abs(s.score), s.name))
    messages = data.get("messages", {})
    took = data.get("time_real")
    return SpamReport(
        score=_number(data.get("score"), "score"),
        required_score=_number(data.get("required_score"), "required_score"),
        action=_text(data.get("action")) or "no action",
        symbols=tuple(symbols),
        skipped=bool(data.get("is_skipped", False)),
        messages={str(k): _text(v) for k, v in messages.items()}
        if isinstance(messages, dict)
        else {},
        time=float(took) if isinstance(took, int | float) and not isinstance(took, bool) else None,
    )


@implementer(IBodyProducer)
class _Bytes:
    """The whole message at once (it is in memory already; the transport buffers it)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


_DONE = Failure(error.ConnectionDone())


class _Capped(Protocol):
    """Reads a response body of at most ``limit`` bytes into ``done``."""

    def __init__(self, limit: int, done: Deferred[bytes]) -> None:
        self.limit, self.done = limit, done
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.done.errback(RspamdError(f"rspamd's answer is larger than {self.limit} bytes"))
            assert self.transport is not None
            self.transport.stopProducing()  # type: ignore[attr-defined]
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(RspamdError(f"rspamd's answer was cut short: {reason.value}"))


def _read(response: IResponse, limit: int) -> Deferred[bytes]:
    protocol: _Capped

    def cancel(d: Deferred[bytes]) -> None:
        if protocol.transport is not None:
            protocol.transport.stopProducing()  # type: ignore[attr-defined]

    done: Deferred[bytes] = Deferred(cancel)
    protocol = _Capped(limit, done)
    response.deliverBody(protocol)
    if response.length is not UNKNOWN_LENGTH and response.length > limit:
        done.addErrback(lambda _: None)
        done.cancel()  # not worth reading: say so without waiting for it
        return defer.fail(RspamdError(f"rspamd's answer is larger than {limit} bytes"))
    return done


class RspamdClient:
    """Asks one rspamd (``url``: its normal worker, e.g. ``http://127.0.0.1:11333``)."""

    def __init__(
        self,
        url: str,
        reactor: Any,
        *,
        timeout: float = 10.0,
        clock: IReactorTime | None = None,
        max_answer: int = MAX_ANSWER,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.max_answer = max_answer
        # A connection per request: no idle connection outlives a question (the page asks
        # rarely; rspamd closes idle keep-alive connections anyway).
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, connectTimeout=timeout, pool=pool)

    def check(self, message: bytes, facts: ScanFacts) -> Deferred[SpamReport]:
        """rspamd's report on ``message``; fails with RspamdError only."""
        d = defer.ensureDeferred(self._check(message, facts))
        # Cancelled at the deadline, the agent may fail with its own words for it (a request
        # "never received" a response): whatever came of the cancel, it was the timeout.
        d.addTimeout(self.timeout, self.clock, onTimeoutCancel=self._timed_out)
        d.addErrback(self._explain)
        return d

    def _timed_out(self, result: Any, timeout: float) -> Failure:
        return Failure(
            RspamdError(f"rspamd at {self.url} did not answer within {timeout:g} s", timeout=True)
        )

    async def _check(self, message: bytes, facts: ScanFacts) -> SpamReport:
        headers = Headers({"Content-Type": ["message/rfc822"], **facts.headers()})
        response: IResponse = await self.agent.request(
            b"POST", f"{self.url}/checkv2".encode(), headers, _Bytes(message)
        )
        body = await _read(response, self.max_answer)
        if response.code != 200:
            why = ""
            try:
                parsed = json.loads(body)
                if isinstance(parsed, dict):
                    why = _text(parsed.get("error"))
            except (ValueError, UnicodeDecodeError, RecursionError):
                why = body[:120].decode("utf-8", "replace")
            raise RspamdError(
                f"rspamd answered HTTP {response.code}" + (f": {why.strip()}" if why else "")
            )
        return parse_answer(body)

    def _explain(self, failure: Failure) -> Failure:
        if failure.check(RspamdError):
            return failure
        where = f"rspamd at {self.url}"
        if failure.check(error.TimeoutError):  # the connect timeout
            raise RspamdError(
                f"{where} did not answer within {self.timeout:g} s", timeout=True
            ) from None
        if failure.check(error.ConnectionRefusedError):
            raise RspamdError(f"{where} refused the connection (is it running?)") from None
        if failure.check(error.DNSLookupError):
            raise RspamdError(f"{where}: its host name does not resolve") from None
        if failure.check(error.ConnectError):
            raise RspamdError(f"{where} could not be reached: {failure.value}") from None
        # ResponseFailed, ResponseNeverReceived and the like: the connection broke.
        reasons = getattr(failure.value, "reasons", None)
        detail = reasons[0].getErrorMessage() if reasons else failure.getErrorMessage()
        raise RspamdError(f"{where} broke off the exchange: {detail}") from None
