"""The JSON API under /api/v1 (its description: ``openapi.py``, served at /api/v1/openapi.json).

Every answer is JSON (raw sources, parts and the event stream apart); errors are
``{"error": "...", "status": N}`` with a status that fits: 400 bad query or body, 401/403 login,
404 unknown id or path, 405 method, 408 wait timed out, 413 body too large, 415 not JSON,
502 release refused by the other server, 503 not ready. List and wait answers carry the feed's
``cursor`` (also in the ``X-Mailhub-Cursor`` header).
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from time import perf_counter
from typing import Any, cast
from urllib.parse import quote

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from mailhub import __version__
from mailhub.checks.explain import explain_message
from mailhub.interfaces import Outcome
from mailhub.store import Folder, LockTimeout, MailboxNotFound, MessageGone, StoreError
from mailhub.store.lockwait import retry_busy
from mailhub.store.names import FLAGGED, SEEN
from mailhub.web import parse, search
from mailhub.web import tags as tagging
from mailhub.web.access import Viewer
from mailhub.web.feed import Change, Entry, MailFeed
from mailhub.web.ids import parse_id
from mailhub.web.lab import Lab
from mailhub.web.openapi import openapi
from mailhub.web.release import ReleaseError, release
from mailhub.web.sanitise import count_remote, data_url, document, sanitise
from mailhub.web.spam import SpamScores
from mailhub.web.spam import handle as spam_handle
from mailhub.web.webhooks import Webhooks

log = Logger()

MAX_BODY = 64 * 1024  # JSON request bodies; larger: 413
MAX_LIMIT = 1000  # messages per page
DEFAULT_LIMIT = 50
DEFAULT_WAIT = 30.0
KEEPALIVE = 15.0  # seconds between SSE comments, so proxies keep the stream open
MAX_STREAMS = 200  # simultaneous event streams and waits; more: 503


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def _flag(adding: bool, letter: str, folder: Folder, uid: int) -> frozenset[str]:
    return folder.add_flags(uid, {letter}) if adding else folder.remove_flags(uid, {letter})


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@dataclass(frozen=True, slots=True)
class _Fields:
    """A summary's text as search compares it (lower case), made once per message."""

    sender: str
    to: str  # To addresses; the mailbox is added by the candidate
    cc: str
    subject: str
    has_attachment: bool


def _fields(summary: parse.Summary) -> _Fields:
    s = summary.sender
    return _Fields(
        sender=f"{s.name} <{s.address}>".lower() if s else "",
        to=" ".join(f"{a.name} <{a.address}>" for a in summary.to).lower(),
        cc=" ".join(f"{a.name} <{a.address}>" for a in summary.cc).lower(),
        subject=summary.subject.lower(),
        has_attachment=any(not a.inline for a in summary.attachments),
    )


def _request(request: IRequest) -> Request:
    """The request as what Site makes (IRequest lacks ``notifyFinish``, which it has)."""
    return cast(Request, request)


class _Candidate:
    """An entry seen through the search module's eyes; parses the message only when asked."""

    __slots__ = ("_entry", "_feed", "_tagger", "folder", "mailbox", "received")

    def __init__(self, feed: MailFeed, entry: Entry, tagger: tagging.Tagger) -> None:
        self._feed, self._entry, self._tagger = feed, entry, tagger
        self.mailbox = entry.ref.mailbox
        self.folder = entry.ref.folder
        self.received = float(entry.received)

    @property
    def _fields(self) -> _Fields:
        entry = self._entry
        if entry.search is None:
            entry.search = _fields(self._feed.summary(entry))
        return entry.search

    @property
    def seen(self) -> bool:
        return SEEN in self._entry.flags

    @property
    def flagged(self) -> bool:
        return FLAGGED in self._entry.flags

    @property
    def sender(self) -> str:
        return self._fields.sender

    @property
    def to(self) -> str:
        return f"{self._fields.to} {self.mailbox}"

    @property
    def cc(self) -> str:
        return self._fields.cc

    @property
    def subject(self) -> str:
        return self._fields.subject

    @property
    def has_attachment(self) -> bool:
        return self._fields.has_attachment

    def body(self) -> str:
        return self._feed.search_text(self._entry)

    @property
    def tags(self) -> frozenset[str]:
        return self._tagger.tags(self._feed, self._entry, self)


# Search terms that need a message's summary (the others: mailbox, folder, flags, dates).
_SUMMARY_KEYS = frozenset(("", "from", "to", "cc", "subject", "has", "tag"))
# A search works through the entries in slices of this many, giving the reactor a turn between
# slices that took longer than YIELD_AFTER seconds (cold summaries: parsing).
SLICE = 256
YIELD_AFTER = 0.02
# Summaries or search texts filled in by one cache pass (cold: ~0.1-0.2 ms each).
FILL_CHUNK = 128


class Api:
    """The handlers; ``site.Root`` routes requests here after the login check."""

    def __init__(
        self,
        feed: MailFeed,
        clock: IReactorTime,
        *,
        hostname: str,
        max_wait: float,
        faults: Any = None,
        ready: Callable[[], str | None] = lambda: None,
        authserv_id: str | None = None,
        spam: SpamScores | None = None,
    ) -> None:
        self.feed, self.clock, self.hostname, self.max_wait = feed, clock, hostname, max_wait
        # Whose Authentication-Results field a message's "authentication" shows: our own
        # checks' (RFC 8601 5: only those can be believed); default the server's hostname.
        self.authserv_id = authserv_id or hostname
        self.faults = faults
        self.retention: Any = None  # mailhub.retention.Retention (dev stack), set by make_site
        self.ready = ready
        self.sandboxes: Any = None  # /sandboxes: mailhub.web.sandboxes.SandboxApi, if enabled
        # rspamd's scores (mailhub.web.spam); without [checks] rspamd it says "not configured"
        self.spam = spam if spam is not None else SpamScores(None, max_message_size=0)
        # Open long polls and event streams -> how to end each at shutdown.
        self.streams: dict[IRequest, Callable[[], None]] = {}
        self.lab = Lab(self)  # checks, links and codes of a message (issue 15)
        # Issue 15: tag rules and webhooks (mailhub.web.tags, .webhooks), set by make_site.
        self.tagger = tagging.Tagger()
        self.webhooks: Webhooks | None = None

    # --- dispatch --------------------------------------------------------------------------

    async def handle(self, request: IRequest, viewer: Viewer, path: list[str]) -> Any:
        """Returns a JSON-able object (200 unless the handler set another code), or None when
        the handler wrote the response itself."""
        method = request.method.decode("ascii", "replace")
        if method == "HEAD":
            method = "GET"
        n = len(path)
        routes: dict[str, Callable[..., Awaitable[Any]]]
        args: tuple[Any, ...] = ()
        if n == 1 and path[0] in ("health", "livez"):
            routes = {"GET": self.health}
        elif n == 1 and path[0] in ("ready", "readyz"):
            routes = {"GET": self.readiness}
        elif n == 1 and path[0] == "openapi.json":
            routes = {"GET": self.description}
        elif n == 1 and path[0] == "info":
            routes = {"GET": self.info}
        elif n == 1 and path[0] == "mailboxes":
            routes = {"GET": self.mailboxes}
        elif n == 1 and path[0] == "messages":
            routes = {"GET": self.list, "DELETE": self.delete_many}
        elif n == 1 and path[0] == "wait":
            routes = {"GET": self.wait}
        elif n == 1 and path[0] == "events":
            routes = {"GET": self.events}
        elif n == 1 and path[0] == "webhooks":
            routes = {"GET": self.webhook_log}
        elif n in (1, 2) and path[0] == "faults":
            args = tuple(path[1:])
            routes = (
                {"GET": self.fault, "DELETE": self.fault_delete}
                if args
                else {"GET": self.fault_list, "POST": self.fault_add, "DELETE": self.fault_clear}
            )
        elif n >= 2 and path[0] == "messages":
            entry = self._entry(path[1], viewer)
            args = (entry,)
            tail = path[2:]
            if not tail:
                routes = {"GET": self.get, "PATCH": self.patch, "DELETE": self.delete}
            elif tail == ["raw"]:
                routes = {"GET": self.raw}
            elif tail == ["html"]:
                routes = {"GET": self.html}
            elif tail == ["release"]:
                routes = {"POST": self.release}
            elif tail == ["checks"]:
                routes = {"GET": self.lab.checks}
            elif tail == ["links"]:
                routes = {"GET": self.lab.links}
            elif tail == ["links", "check"]:
                routes = {"POST": self.lab.links_check}
            elif tail == ["codes"]:
                routes = {"GET": self.lab.codes}
            elif tail == ["spam"]:
                routes = {"GET": partial(spam_handle, self.spam, self._raw)}
            elif len(tail) == 2 and tail[0] == "parts":
                args = (entry, tail[1])
                routes = {"GET": self.part}
            else:
                raise ApiError(404, "no such resource")
        elif path[0] == "sandboxes" and self.sandboxes is not None:
            return await self.sandboxes.handle(request, viewer, path[1:])
        else:
            raise ApiError(404, "no such resource (see /api/v1/openapi.json)")
        handler = routes.get(method)
        if handler is None:
            request.setHeader(
                "Allow", ", ".join(sorted(routes) + (["HEAD"] if "GET" in routes else []))
            )
            raise ApiError(405, f"{method} is not allowed here")
        return await handler(request, viewer, *args)

    # --- helpers ---------------------------------------------------------------------------

    def _entry(self, message_id: str, viewer: Viewer) -> Entry:
        ref = parse_id(message_id)
        entry = self.feed.entries.get(message_id) if ref is not None else None
        if entry is None and ref is not None and viewer.may_see(ref.mailbox):
            self.feed.catch_up()  # delivered a moment ago, before the feed noticed
            entry = self.feed.entries.get(message_id)
        if entry is None or not viewer.may_see(entry.ref.mailbox):
            raise ApiError(404, "no message with that id")
        return entry

    def _raw(self, entry: Entry) -> bytes:
        try:
            return self.feed.raw(entry)
        except (MessageGone, StoreError, FileNotFoundError):
            self.feed.catch_up()
            raise ApiError(404, "the message was deleted") from None

    def summary_json(self, entry: Entry) -> dict[str, Any]:
        summary = self.feed.summary(entry)
        out = {
            "id": entry.id,
            "seq": entry.seq,
            "mailbox": entry.ref.mailbox,
            "folder": entry.ref.folder,
            "size": entry.size,
            "received": _iso(entry.received),
            "seen": SEEN in entry.flags,
            "flagged": FLAGGED in entry.flags,
        }
        out.update(summary.json())
        out["date"] = _iso(summary.date)
        out["has_attachments"] = any(not a.inline for a in summary.attachments)
        # The list's badge: the top-most field's results when it is ours (the detail's
        # "authentication" says the rest), else null.
        auth = summary.auth
        ours = len(auth) == 4 and auth[0].lower() == self.authserv_id.lower()
        out["auth"] = dict(zip(("spf", "dkim", "dmarc"), auth[1:], strict=True)) if ours else None
        sources = self.tagger.sources(self.feed, entry, _Candidate(self.feed, entry, self.tagger))
        out["tags"], out["tag_sources"] = list(sources), sources
        return out

    @staticmethod
    def _query(request: IRequest, name: str, default: str | None = None) -> str | None:
        values = request.args.get(name.encode())
        if not values:
            return default
        try:
            return values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, f"query parameter {name} is not UTF-8") from None

    def _int(self, request: IRequest, name: str, default: int, low: int, high: int) -> int:
        text = self._query(request, name)
        if text is None:
            return default
        if not text.isdigit() or not low <= int(text) <= high:
            raise ApiError(400, f"{name} must be a whole number from {low} to {high}")
        return int(text)

    def _terms(self, request: IRequest, extra: tuple[str, ...] = ()) -> tuple[search.Term, ...]:
        parts = [self._query(request, "q") or ""]
        for key in ("mailbox", "folder", "tag", *extra):
            value = self._query(request, key)
            if value:
                parts.append(f"{key}:{json.dumps(value)}")
        try:
            return search.parse(" ".join(parts))
        except search.QueryError as e:
            raise ApiError(400, str(e)) from None

    def _matching(
        self, entries: Iterable[Entry], terms: tuple[search.Term, ...], viewer: Viewer
    ) -> list[Entry]:
        found = []
        for entry in entries:
            if not viewer.may_see(entry.ref.mailbox):
                continue
            try:
                if search.matches(terms, _Candidate(self.feed, entry, self.tagger)):
                    found.append(entry)
            except (MessageGone, StoreError, FileNotFoundError):
                continue  # deleted while we looked
        return found

    async def _search(
        self, entries: list[Entry], terms: tuple[search.Term, ...], viewer: Viewer
    ) -> list[Entry]:
        """``_matching`` in slices, the reactor getting a turn whenever a stretch of work took
        longer than YIELD_AFTER. What the terms need and no entry has yet (a first search over
        many messages) is filled in first, folder by folder (see ``_fill``)."""
        if not terms:
            return [e for e in entries if viewer.may_see(e.ref.mailbox)]
        visible = [e for e in entries if viewer.may_see(e.ref.mailbox)]
        if any(t.key in _SUMMARY_KEYS for t in terms):
            await self._fill(visible, "summary", self.feed.summarise)
        if any(t.key == "" for t in terms):
            await self._fill(visible, "text", self.feed.search_texts)
        if any(t.key == "tag" for t in terms):
            await self._fill(visible, "recipient", partial(tagging.fill_recipients, self.feed))
        found: list[Entry] = []
        began = perf_counter()
        for i in range(0, len(visible), SLICE):
            found += self._matching(visible[i : i + SLICE], terms, viewer)
            if perf_counter() - began > YIELD_AFTER:
                await deferLater(self.clock, 0, lambda: None)
                began = perf_counter()
        return found

    async def _fill(
        self, entries: list[Entry], attr: str, fill: Callable[[Iterable[Entry]], None]
    ) -> None:
        """``fill`` the entries that lack ``attr``, grouped by folder and in chunks of at most
        FILL_CHUNK: one cache pass (one check of the cache file, one append) per chunk, where
        slices in arrival order would take one per folder per slice."""
        by_folder: dict[tuple[str, str], list[Entry]] = {}
        for entry in entries:
            if getattr(entry, attr) is None:
                by_folder.setdefault((entry.ref.mailbox, entry.ref.folder), []).append(entry)
        began = perf_counter()
        for group in by_folder.values():
            for i in range(0, len(group), FILL_CHUNK):
                fill(group[i : i + FILL_CHUNK])
                if perf_counter() - began > YIELD_AFTER:
                    await deferLater(self.clock, 0, lambda: None)
                    began = perf_counter()

    def _listing(
        self, terms: tuple[search.Term, ...], viewer: Viewer
    ) -> tuple[str | None, tuple[search.Term, ...]]:
        """The one mailbox (None: all) a list is confined to, by the viewer or by an exact
        ``mailbox:`` term, and the terms left to match."""
        mailbox = None if viewer.admin else (viewer.address or "")
        rest = []
        for term in terms:
            exact = term.key == "mailbox" and not term.negated and "@" in term.value
            if exact and mailbox in (None, term.value):
                mailbox = term.value
            else:
                rest.append(term)
        return mailbox, tuple(rest)

    def _body(self, request: IRequest) -> dict[str, Any]:
        data = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(data) > MAX_BODY:
            raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
        if not data.strip():
            return {}
        content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ApiError(415, "send the request body as application/json")
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"request body is not JSON: {e}") from None
        except RecursionError:
            # json recurses per nesting level: a body of 64 KiB of "[" is valid-looking input.
            raise ApiError(400, "request body is not JSON: nested too deeply") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    def _cursor(self, request: IRequest) -> str:
        cursor = self.feed.cursor
        request.setHeader("X-Mailhub-Cursor", cursor)
        return cursor

    # --- health ----------------------------------------------------------------------------

    async def health(self, request: IRequest, viewer: Viewer) -> Any:
        return {"status": "ok", "version": __version__}

    async def readiness(self, request: IRequest, viewer: Viewer) -> Any:
        problem = self.ready()
        if problem is None and not self.feed.running:
            problem = "the mail feed is not running"
        if problem is not None:
            raise ApiError(503, problem)
        return {"status": "ready", "messages": len(self.feed.entries)}

    async def description(self, request: IRequest, viewer: Viewer) -> Any:
        return openapi()

    async def info(self, request: IRequest, viewer: Viewer) -> Any:
        return {
            "version": __version__,
            "hostname": self.hostname,
            "user": viewer.address,
            "admin": viewer.admin,
            "faults": self.faults is not None and viewer.admin,
            "cursor": self._cursor(request),
            # The dev stack's pruning: limits and how many of the oldest went (None: off).
            "retention": None if self.retention is None else self.retention.info().to_json(),
        }

    # --- messages --------------------------------------------------------------------------

    async def mailboxes(self, request: IRequest, viewer: Viewer) -> Any:
        self.feed.catch_up()
        boxes: dict[str, dict[str, Any]] = {}
        for address in self.feed.store.mailboxes():
            if viewer.may_see(address):
                boxes[address] = {"address": address, "total": 0, "unread": 0, "folders": {}}
        for address, name, total, unread in sorted(self.feed.folders()):
            box = boxes.get(address)
            if box is None or not total:
                continue
            box["folders"][name] = {"total": total, "unread": unread}
            box["total"] += total
            box["unread"] += unread
        return {"mailboxes": list(boxes.values()), "cursor": self._cursor(request)}

    async def list(self, request: IRequest, viewer: Viewer) -> Any:
        terms = self._terms(request)
        start = self._int(request, "start", 0, 0, 10**9)
        limit = self._int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        self.feed.catch_up()
        cursor = self._cursor(request)
        mailbox, rest = self._listing(terms, viewer)
        if not rest:  # the whole list or one mailbox's: counts kept, the page a slice
            total, unread = self.feed.count(mailbox), self.feed.unread(mailbox)
            page = self.feed.page(start, limit, mailbox)
        else:
            found = await self._search(list(self.feed.newest_first(mailbox)), rest, viewer)
            total, unread = len(found), sum(1 for e in found if SEEN not in e.flags)
            page = found[start : start + limit]
        self.feed.summarise(page)
        tagging.fill_recipients(self.feed, page)  # plus tags: one cache pass per folder
        messages = []
        for entry in page:
            try:
                messages.append(self.summary_json(entry))
            except (MessageGone, StoreError, FileNotFoundError):
                continue  # deleted since the page was cut
        return {
            "total": total,
            "unread": unread,
            "start": start,
            "count": len(messages),
            "cursor": cursor,
            "messages": messages,
        }

    async def get(self, request: IRequest, viewer: Viewer, entry: Entry) -> Any:
        msg = parse.load(self._raw(entry))
        d = parse.detail(msg)
        base = f"/api/v1/messages/{entry.id}"
        out = self.summary_json(entry)
        out.update(
            {
                "headers": [[k, v] for k, v in d.headers],
                "text": d.text,
                "html": sanitise(d.html, self._inline_images(msg)) if d.html else "",
                "html_url": f"{base}/html" if d.html else None,
                "remote_content": count_remote(d.html) if d.html else 0,
                "raw_url": f"{base}/raw",
                "attachments": [
                    {
                        "part": a.part,
                        "filename": a.filename,
                        "content_type": a.content_type,
                        "size": a.size,
                        "content_id": a.content_id,
                        "inline": a.inline,
                        "url": f"{base}/parts/{a.part}",
                    }
                    for a in d.summary.attachments
                ],
                "envelope": {
                    "mail_from": d.trace.mail_from,
                    "recipient": d.trace.recipient or entry.ref.mailbox,
                    "helo": d.trace.helo,
                    "client_address": d.trace.client_address,
                    "client_name": d.trace.client_name,
                    "server": d.trace.server,
                    "protocol": d.trace.protocol,
                    "queue_id": d.trace.queue_id,
                    "tls": d.trace.tls,
                    "tls_cipher": d.trace.tls_cipher,
                    "authenticated": d.trace.authenticated,
                    "smtputf8": d.trace.smtputf8,
                    "received": d.trace.received,
                },
                "defects": d.defects,
                # Only here, not in lists and events: a list stays light (openapi.py).
                "authentication": explain_message(msg.raw_items(), self.authserv_id).json(),
            }
        )
        return out

    @staticmethod
    def _inline_images(msg: Any) -> Callable[[str], str | None]:
        by_cid = {}
        for part in msg.walk():
            cid = (part.get("Content-ID") or "").strip().strip("<>")
            if cid and part.get_content_maintype() == "image":
                by_cid[cid] = part

        def inline(cid: str) -> str | None:
            part = by_cid.get(cid)
            return data_url(part.get_content_type(), parse.part_bytes(part)) if part else None

        return inline

    async def html(self, request: IRequest, viewer: Viewer, entry: Entry) -> None:
        msg = parse.load(self._raw(entry))
        d = parse.detail(msg)
        remote = self._query(request, "remote") in ("1", "true", "yes")
        body = sanitise(d.html, self._inline_images(msg)) if d.html else ""
        page = document(body, remote).encode("utf-8")
        from mailhub.web.sanitise import content_security_policy

        request.setHeader("Content-Type", "text/html; charset=utf-8")
        request.setHeader("Content-Security-Policy", content_security_policy(remote))
        request.setHeader("X-Frame-Options", "SAMEORIGIN")
        self._send(request, page)

    async def raw(self, request: IRequest, viewer: Viewer, entry: Entry) -> None:
        data = self._raw(entry)
        if self._query(request, "download") in ("1", "true", "yes"):
            request.setHeader("Content-Type", "message/rfc822")
            request.setHeader("Content-Disposition", _disposition(f"{entry.ref.key}.eml"))
        else:
            request.setHeader("Content-Type", "text/plain; charset=utf-8")
        self._send(request, data)

    async def part(self, request: IRequest, viewer: Viewer, entry: Entry, part: str) -> None:
        msg = parse.load(self._raw(entry))
        found = parse.find_part(msg, part)
        if found is None:
            raise ApiError(404, f"no part {part} in that message")
        name = parse.filename(found)
        content_type = parse.content_type(found)
        # Always a download: an attachment's HTML or SVG must not run in the page's origin.
        request.setHeader("Content-Type", "application/octet-stream")
        request.setHeader("X-Mailhub-Content-Type", content_type)
        request.setHeader("Content-Disposition", _disposition(name or f"part-{part}"))
        self._send(request, parse.part_bytes(found))

    @staticmethod
    def _send(request: IRequest, data: bytes) -> None:
        request.setHeader("Content-Length", str(len(data)))
        if request.method != b"HEAD":
            request.write(data)
        request.finish()

    async def patch(self, request: IRequest, viewer: Viewer, entry: Entry) -> Any:
        body = self._body(request)
        if "tags" in body:  # issue 15: manual tags (mailhub.web.tags)
            await self._patch_tags(entry, body.pop("tags"))
            if not body:
                self.feed.catch_up()
                return self.summary_json(entry)
        unknown = set(body) - {"seen", "flagged"}
        if unknown or not body:
            raise ApiError(400, 'send {"seen": true|false} and/or {"flagged": true|false}')
        for key, letter in (("seen", SEEN), ("flagged", FLAGGED)):
            if key not in body:
                continue
            if not isinstance(body[key], bool):
                raise ApiError(400, f"{key} must be true or false")
            # The UID found at each try: the folder may be numbered anew during a wait.
            change = partial(self.feed.act_one, entry, partial(_flag, body[key], letter))
            try:
                # A busy folder lock is waited for on reactor timers (mailhub.store.lockwait).
                timeout = self.feed.store.settings.lock_timeout
                await retry_busy(self.clock, timeout, change)
            except MessageGone:
                self.feed.catch_up()
                raise ApiError(404, "the message was deleted") from None
            except LockTimeout:
                raise ApiError(503, "the mailbox is busy, try again") from None
        self.feed.catch_up()  # publishes the change to the page and other viewers
        return self.summary_json(entry)

    async def _patch_tags(self, entry: Entry, change: Any) -> None:
        try:
            add, remove = tagging.parse_change(change)
            derived = self.tagger.sources(
                self.feed, entry, _Candidate(self.feed, entry, self.tagger)
            )
            await tagging.change(self.feed, self.clock, entry, add, remove, derived)
        except tagging.TagError as e:
            if e.status == 404:
                self.feed.catch_up()
            raise ApiError(e.status, str(e)) from None

    async def webhook_log(self, request: IRequest, viewer: Viewer) -> Any:
        if not viewer.admin:
            raise ApiError(403, "only admins may see webhooks")
        return {"webhooks": self.webhooks.describe() if self.webhooks is not None else []}

    async def delete(self, request: IRequest, viewer: Viewer, entry: Entry) -> Any:
        try:
            self.feed.act_one(entry, Folder.delete)
        except MessageGone:
            pass  # gone already: the wanted state
        self.feed.catch_up()
        return {"deleted": [entry.id]}

    async def delete_many(self, request: IRequest, viewer: Viewer) -> Any:
        body = self._body(request)
        self.feed.catch_up()
        if "ids" in body:
            ids = body["ids"]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ApiError(400, "ids must be a list of message ids")
            entries = [self._entry(i, viewer) for i in ids]
        else:
            entries = await self._search(
                list(self.feed.entries.values()), self._terms(request), viewer
            )
        by_folder: dict[Any, list[Entry]] = {}
        for entry in entries:
            by_folder.setdefault((entry.ref.mailbox, entry.ref.folder), []).append(entry)
        deleted = []
        for group in by_folder.values():
            try:
                gone = set(self.feed.act(group, Folder.expunge))
            except (MailboxNotFound, StoreError):
                continue
            deleted += [e.id for e in group if e.uid and e.uid in gone]  # (act's numbering)
        self.feed.catch_up()
        return {"deleted": deleted, "cursor": self._cursor(request)}

    async def release(self, request: IRequest, viewer: Viewer, entry: Entry) -> Any:
        if not viewer.admin:
            raise ApiError(403, "only admins may release mail")
        body = self._body(request)
        host, port = body.get("host"), body.get("port", 25)
        if not isinstance(host, str) or not host.strip() or len(host) > 255:
            raise ApiError(400, 'release needs {"host": "smtp.example.com", "port": 25}')
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ApiError(400, "port must be a number from 1 to 65535")
        raw = self._raw(entry)
        facts = parse.trace(parse.load(raw))
        recipients = body.get("to", [facts.recipient or entry.ref.mailbox])
        if isinstance(recipients, str):
            recipients = [recipients]
        if not recipients or not all(
            isinstance(r, str) and "@" in r and r.isprintable() and "<" not in r and ">" not in r
            for r in recipients
        ):
            raise ApiError(400, "to must be a list of addresses")
        mail_from = body.get("from", facts.mail_from or "")
        if not isinstance(mail_from, str) or not mail_from.isprintable() or "<" in mail_from:
            raise ApiError(400, "from must be an address (or empty for <>)")
        try:
            results = await release(
                raw,
                host=host.strip(),
                port=port,
                mail_from=mail_from,
                recipients=recipients,
                hostname=self.hostname,
                queue_id=f"release-{entry.ref.key[:40]}",
                reactor=self.clock,
            )
        except ReleaseError as e:
            raise ApiError(502, str(e)) from None
        answers = [
            {
                "recipient": r.recipient,
                "outcome": r.outcome.value,
                "status": r.status,
                "diagnostic": r.diagnostic,
                "remote": r.remote_mta,
            }
            for r in results
        ]
        delivered = all(r.outcome is Outcome.DELIVERED for r in results)
        log.info(
            "released {id} to {host}:{port} for {rcpts}: {ok}",
            id=entry.id,
            host=host,
            port=port,
            rcpts=recipients,
            ok="delivered" if delivered else "refused",
        )
        if not delivered:
            raise ApiError(502, "the server did not accept every recipient", results=answers)
        return {"delivered": True, "results": answers}

    # --- waiting and live events -----------------------------------------------------------

    async def wait(self, request: IRequest, viewer: Viewer) -> Any:
        terms = self._terms(request, extra=("to", "from", "subject"))
        try:
            since = self.feed.parse_cursor(self._query(request, "since"))
        except search.QueryError as e:
            raise ApiError(400, str(e)) from None
        text = self._query(request, "timeout", str(DEFAULT_WAIT)) or ""
        try:
            timeout = float(text)
        except ValueError:
            timeout = -1.0
        if not 0 <= timeout <= self.max_wait:
            raise ApiError(400, f"timeout must be a number of seconds from 0 to {self.max_wait:g}")
        self.feed.catch_up()  # everything on disk now is numbered: nothing before this is missed
        while True:
            # A search of many messages gives the reactor turns: look again at what the feed
            # numbered meanwhile, until a pass saw it all. From there to the subscription in
            # _wait_for nothing else runs, so no message falls between.
            upto = self.feed.seq
            found = await self._search(self.feed.after(since), terms, viewer)
            found = [e for e in found if e.seq <= upto]
            if found or self.feed.seq == upto:
                break
            since = upto
        if found:
            cursor = f"{self.feed.epoch}-{upto}"  # what this answer covers, no further
            request.setHeader("X-Mailhub-Cursor", cursor)
        else:
            if timeout > 0:
                if len(self.streams) >= MAX_STREAMS:
                    raise ApiError(503, "too many waiting clients")
                found = await self._wait_for(request, terms, viewer, timeout)
            cursor = self._cursor(request)
        if not found:
            raise ApiError(408, f"no matching message within {timeout:g} s", cursor=cursor)
        return {"cursor": cursor, "messages": [self.summary_json(e) for e in found]}

    async def _wait_for(
        self, request: IRequest, terms: tuple[search.Term, ...], viewer: Viewer, timeout: float
    ) -> builtins.list[Entry]:  # builtins: the class's own ``list`` endpoint shadows it
        done: Deferred[list[Entry]] = Deferred()

        def changed(changes: list[Change]) -> None:
            new = [c.entry for c in changes if c.kind == "new"]
            try:
                found = self._matching(new, terms, viewer)
            except Exception:
                # A message we cannot look at may be the one awaited: fail the wait now (a
                # 500, logged), never let it time out as if nothing had come (issue 12).
                if not done.called:
                    done.errback()
                return
            if found and not done.called:
                done.callback(found)

        def give_up(_: object = None) -> None:
            if not done.called:
                done.callback([])

        unsubscribe = self.feed.subscribe(changed)
        timer = self.clock.callLater(timeout, give_up)
        _request(request).notifyFinish().addErrback(give_up)  # the client went away
        self.streams[request] = give_up  # shutdown: answer now
        try:
            return await done
        finally:
            self.streams.pop(request, None)
            unsubscribe()
            if timer.active():
                timer.cancel()

    async def events(self, request: IRequest, viewer: Viewer) -> None:
        """Server-Sent Events: ``new`` (a message summary), ``flags`` (id, seen, flagged),
        ``deleted`` (id); each event's id is the cursor after it. A reconnecting browser sends
        ``Last-Event-ID`` and gets the messages it missed."""
        if len(self.streams) >= MAX_STREAMS:
            raise ApiError(503, "too many event streams")
        request.setHeader("Content-Type", "text/event-stream; charset=utf-8")
        request.setHeader("Cache-Control", "no-store")
        request.setHeader("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
        self.feed.catch_up()
        missed: list[Entry] = []
        last = request.getHeader("last-event-id")
        if last:
            try:
                missed = self.feed.after(self.feed.parse_cursor(last))
            except search.QueryError:
                missed = []
        request.write(b"retry: 2000\n\n")
        request.write(_event("hello", {"cursor": self.feed.cursor}, self.feed.cursor))
        for entry in missed:
            if not viewer.may_see(entry.ref.mailbox):
                continue
            event = self._change_event("new", entry, f"{self.feed.epoch}-{entry.seq}")
            if event:
                request.write(event)

        def changed(changes: list[Change]) -> None:
            for c in changes:
                if not viewer.may_see(c.entry.ref.mailbox):
                    continue
                event = self._change_event(c.kind, c.entry, self.feed.cursor)
                if event:  # (an empty write could end a chunked body)
                    request.write(event)

        unsubscribe = self.feed.subscribe(changed)
        keepalive = LoopingCall(request.write, b": keepalive\n\n")
        keepalive.clock = self.clock
        keepalive.start(KEEPALIVE, now=False)
        self.streams[request] = request.finish

        def closed(_: object) -> None:
            self.streams.pop(request, None)
            unsubscribe()
            if keepalive.running:
                keepalive.stop()

        _request(request).notifyFinish().addBoth(closed)
        return None

    def _change_event(self, kind: str, entry: Entry, event_id: str) -> bytes:
        """One SSE event of a change; nothing for a message gone meanwhile (its ``deleted``
        follows). Any other failure is loud, as ``wait``'s 500 is (issue 12): logged, and a
        ``failed`` event names the message, then the stream goes on. Not ``event: error``:
        EventSource hands that to the same listeners as a lost connection. Not a closed
        stream: the reconnect's Last-Event-ID would bring the same message back, in a loop."""
        try:
            if kind == "new":
                data = self.summary_json(entry)
            else:
                data = {
                    "id": entry.id,
                    "mailbox": entry.ref.mailbox,
                    "seen": SEEN in entry.flags,
                    "flagged": FLAGGED in entry.flags,
                }
        except (MessageGone, StoreError, FileNotFoundError):
            return b""
        except Exception:
            log.failure("web event {kind} of {id} failed", kind=kind, id=entry.id)
            data = {
                "id": entry.id,
                "mailbox": entry.ref.mailbox,
                "event": kind,
                "error": "internal error (logged on the server)",
                "status": 500,
            }
            kind = "failed"
        return _event(kind, data, event_id)

    def close_streams(self) -> None:
        """At shutdown: end every event stream and long poll."""
        for end in list(self.streams.values()):
            try:
                end()
            except Exception:  # already gone
                pass
        self.streams.clear()

    # --- fault rules (mailhub.faults) ------------------------------------------------------

    def _faults(self, viewer: Viewer) -> Any:
        if self.faults is None:
            raise ApiError(404, "fault injection is not available in this server")
        if not viewer.admin:
            raise ApiError(403, "only admins may change fault rules")
        return self.faults

    async def fault_list(self, request: IRequest, viewer: Viewer) -> Any:
        return {"rules": self._faults(viewer).list()}

    async def fault(self, request: IRequest, viewer: Viewer, rule_id: str) -> Any:
        rule = self._faults(viewer).get(rule_id)
        if rule is None:
            raise ApiError(404, "no fault rule with that id")
        return rule

    async def fault_add(self, request: IRequest, viewer: Viewer) -> Any:
        faults = self._faults(viewer)
        body = self._body(request)
        from mailhub.faults.rules import FaultError

        try:
            rule_id = faults.add(body)
        except FaultError as e:
            raise ApiError(400, str(e), key=getattr(e, "key", None)) from None
        request.setResponseCode(201)
        request.setHeader("Location", f"/api/v1/faults/{quote(rule_id)}")
        return faults.get(rule_id)

    async def fault_delete(self, request: IRequest, viewer: Viewer, rule_id: str) -> Any:
        if not self._faults(viewer).remove(rule_id):
            raise ApiError(404, "no fault rule with that id")
        return {"deleted": [rule_id]}

    async def fault_clear(self, request: IRequest, viewer: Viewer) -> Any:
        return {"deleted": self._faults(viewer).clear()}


def _event(kind: str, data: Any, event_id: str) -> bytes:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def _disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback and the real name in RFC 8187 encoding."""
    safe = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in filename
    )
    return f"attachment; filename=\"{safe}\"; filename*=UTF-8''{quote(filename, safe='')}"


def error_body(status: int, message: str, **extra: Any) -> bytes:
    body = {"error": message, "status": status}
    body.update({k: v for k, v in extra.items() if v is not None})
    return json.dumps(body).encode()


def unexpected(failure: Failure) -> ApiError:
    if failure.check(CancelledError):
        return ApiError(499, "client went away")
    log.failure("web API request failed", failure)
    return ApiError(500, "internal error (logged on the server)")
