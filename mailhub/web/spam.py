"""``GET /api/v1/messages/{id}/spam``: rspamd's score for a caught message (issue 15).

Asked when a developer looks (the page's Spam tab, or the API), never at delivery: a slow or
stopped rspamd cannot hold up mail. The answer is kept in a small in-memory cache (a stored
message never changes), so looking again costs nothing; ``?refresh=1`` asks again. Two looks
at the same message while rspamd works share one question.

rspamd is told the SMTP facts mailhub wrote in the copy's trace fields (``Return-Path:`` and our
topmost ``Received:``, mailhub.received): the client's address, HELO, MAIL FROM, the recipient
(this copy's mailbox when the field names none), the queue id and, for an authenticated
session, the login (written only with ``[smtp] received_auth_header``; else the MAIL FROM
address stands for it).

Answers: ``{"configured": false, "why": ...}`` without ``[checks] rspamd``; ``{"configured":
true, "scanned": false, "why": ...}`` for a message too big to send; the report otherwise;
rspamd down, slow or talking nonsense: 502 or 504 with ``error`` in words.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from mailhub.checks.rspamd import RspamdClient, RspamdError, ScanFacts, SpamReport
from mailhub.config import Config
from mailhub.received import parse_received
from mailhub.web import parse
from mailhub.web.access import Viewer
from mailhub.web.feed import Entry

CACHE_SIZE = 500  # reports kept (a few kB each)
NOT_CONFIGURED = (
    'no spam score: set [checks] rspamd = "http://127.0.0.1:11333" to the address of an '
    "rspamd normal worker (Debian package rspamd) to see one here"
)


def _head(raw: bytes) -> bytes:
    """The header block only: the facts are there, and the body may be large."""
    ends = [at + len(blank) for blank in (b"\r\n\r\n", b"\n\n") if (at := raw.find(blank)) >= 0]
    return raw[: min(ends)] if ends else raw


def scan_facts(raw: bytes, mailbox: str) -> ScanFacts:
    """What rspamd is told about the session that delivered this copy."""
    msg = parse.load(_head(raw))
    trace = parse.trace(msg)
    user = ""
    if trace.authenticated:
        first = next((v for k, v in msg.raw_items() if k.lower() == "received"), None)
        facts = parse_received(str(first)) if first is not None else None
        user = (facts.authenticated_sender if facts else "") or trace.mail_from or "unknown"
    ip = trace.client_address if trace.client_address not in ("", "unknown") else ""
    return ScanFacts(
        ip=ip,
        helo=trace.helo if trace.helo != "unknown" else "",
        mail_from=trace.mail_from,
        recipients=(trace.recipient or mailbox,),
        queue_id=trace.queue_id,
        user=user,
    )


class _Error(Exception):
    """rspamd's trouble: ``handle`` answers it with ``status`` and the words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SpamScores:
    """The handler and its cache; ``client`` None: not configured."""

    def __init__(
        self,
        client: RspamdClient | None,
        *,
        max_message_size: int,
        cache_size: int = CACHE_SIZE,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.max_message_size = max_message_size
        self.cache_size = cache_size
        self.now = now
        self.cache: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self.asking: dict[str, _Question] = {}

    async def get(self, raw: Callable[[Entry], bytes], entry: Entry, refresh: bool) -> Any:
        """The JSON answer for ``entry`` (``raw`` reads its bytes; raises the API's 404)."""
        if self.client is None:
            return {"configured": False, "why": NOT_CONFIGURED}
        key = entry.id
        if not refresh and key in self.cache:
            self.cache.move_to_end(key)
            report, when = self.cache[key]
            return self._answer(report, when, cached=True)
        if entry.size > self.max_message_size:
            return {
                "configured": True,
                "scanned": False,
                "rspamd": self.client.url,
                "why": f"the message ({entry.size} bytes) is larger than [checks] "
                f"max_message_size ({self.max_message_size} bytes): rspamd was not asked",
            }
        question = self.asking.get(key)
        if question is not None:
            waiting = question.wait()
        else:
            data = raw(entry)
            facts = scan_facts(data, entry.ref.mailbox)
            question = self.asking[key] = _Question(facts)
            waiting = question.wait()  # before asking: a failure may come at once
            self.client.check(data, facts).addBoth(self._asked, key, question)
        try:
            out, when = await waiting
        except RspamdError as e:
            raise _Error(504 if e.timeout else 502, str(e)) from None
        return self._answer(out, when, cached=False)

    def _asked(self, result: Any, key: str, question: _Question) -> None:
        """The question is answered (or failed): cache a report, whoever still waits."""
        if self.asking.get(key) is question:
            del self.asking[key]
        if not isinstance(result, SpamReport):
            question.answer(result)  # the failure, to each who waits
            return
        kept = ({**result.json(), "asked": question.facts.json()}, self.now())
        self.cache[key] = kept
        self.cache.move_to_end(key)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        question.answer(kept)

    def _answer(self, report: dict[str, Any], when: float, *, cached: bool) -> dict[str, Any]:
        assert self.client is not None
        scanned_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
        return {
            "configured": True,
            "scanned": True,
            "rspamd": self.client.url,
            **report,
            "scanned_at": scanned_at,
            "cached": cached,
        }

    def forget(self, message_id: str) -> None:
        self.cache.pop(message_id, None)


class _Question:
    """One question to rspamd, which several viewers may wait on: each gets a Deferred of its
    own, so one who goes away (its request cancelled) does not cancel it for the others; the
    answer is cached even if nobody waits any more."""

    def __init__(self, facts: ScanFacts) -> None:
        self.facts = facts
        self.waiters: list[Deferred[Any]] = []

    def wait(self) -> Deferred[Any]:
        mine: Deferred[Any] = Deferred()
        self.waiters.append(mine)
        return mine

    def answer(self, result: Any) -> None:
        waiters, self.waiters = self.waiters, []
        for mine in waiters:
            if mine.called:
                continue  # that viewer went away
            if isinstance(result, Failure):
                mine.errback(result)
            else:
                mine.callback(result)


async def handle(
    spam: SpamScores,
    raw: Callable[[Entry], bytes],
    request: IRequest,
    viewer: Viewer,
    entry: Entry,
) -> Any:
    """The route's handler: rspamd's trouble is a 502 or 504 with ``error`` in words."""
    refresh = request.args.get(b"refresh", [b""])[-1] in (b"1", b"true", b"yes")
    try:
        return await spam.get(raw, entry, refresh)
    except _Error as e:
        request.setResponseCode(e.status)
        url = spam.client.url if spam.client is not None else None
        return {"error": str(e), "status": e.status, "configured": True, "rspamd": url}


def spam_scores(config: Config, reactor: Any) -> SpamScores:
    """From ``[checks] rspamd`` and ``rspamd_timeout`` (``max_message_size``: the largest sent)."""
    checks = config.checks
    client = None
    if checks.rspamd:
        client = RspamdClient(checks.rspamd, reactor, timeout=checks.rspamd_timeout)
    return SpamScores(client, max_message_size=checks.max_message_size)
