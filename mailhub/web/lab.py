"""The deliverability lab's API: checks on one caught message (issue 15).

- ``GET /api/v1/messages/{id}/checks``: HTML compatibility (``compat``), the bulk-sender
  checklist (``checklist``), the links (``links``, unchecked) and one-time codes (``codes``);
- ``GET /api/v1/messages/{id}/links`` (``?check=1`` checks them), ``POST .../links/check``;
- ``GET /api/v1/messages/{id}/codes``.

A message is parsed and analysed on the reactor thread when small, in the reactor's thread
pool when larger than THREAD_AT (10,000 links or a megabyte of CSS must not hold every other
request up); every analysis is bounded by its module's limits, which the answer states.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import threads
from twisted.web.iweb import IRequest

from mailhub.checks.explain import explain_message
from mailhub.web import checklist, codes, compat, links, parse
from mailhub.web.access import Viewer
from mailhub.web.feed import Entry

if TYPE_CHECKING:
    from mailhub.web.api import Api

# Raw message size from which the analysis runs in a thread: below it, ~20 ms at most on the
# reactor (measured under load 5-6 on 2 cores: 4 KB 7 ms, 30 KB 38 ms, 64 KB ~50 ms).
THREAD_AT = 16 * 1024
MAX_CHECK_RUNS = 4  # link checks running at once (each at most links.MAX_CHECK URLs); more: 503

T = TypeVar("T")


def _error(status: int, message: str) -> Exception:
    from mailhub.web.api import ApiError  # (api.py routes here: imported when first needed)

    return ApiError(status, message)


def _parts(raw: bytes) -> tuple[Any, parse.Detail]:
    msg = parse.load(raw)
    return msg, parse.detail(msg)


def analyse(raw: bytes, authserv_id: str | None, what: frozenset[str]) -> dict[str, Any]:
    """The parts of the lab's answer named in ``what`` (compatibility, checklist, links,
    codes) for one message. Plain computation: runs in a thread for large messages."""
    msg, d = _parts(raw)
    out: dict[str, Any] = {}
    if "compatibility" in what:
        out["compatibility"] = compat.report(d.html) if d.html else None
    if "checklist" in what:
        auth = explain_message(msg.raw_items(), authserv_id)
        out["checklist"] = checklist.checklist(msg, auth, d.text, d.html)
    if "links" in what:
        out["links"] = links.extract(d.text, d.html).json()
    if "codes" in what:
        out["codes"] = codes.codes_json(codes.find_codes(d.summary.subject, d.text, d.html))
    return out


class Lab:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.allow_private = False  # [web] link_check_private (site.make_site sets it)
        self.resolve: links.Resolve | None = None  # tests: a resolver of their own
        self.check_runs = 0

    def configure(self, *, link_check_private: bool) -> None:
        self.allow_private = link_check_private

    async def _off_thread(self, size: int, work: Callable[[], T]) -> T:
        if size < THREAD_AT:
            return work()
        return await threads.deferToThread(work)

    async def _analyse(self, entry: Entry, what: frozenset[str]) -> dict[str, Any]:
        raw = self.api._raw(entry)
        authserv_id = self.api.authserv_id
        return await self._off_thread(len(raw), lambda: analyse(raw, authserv_id, what))

    # --- handlers --------------------------------------------------------------------------

    async def checks(self, request: IRequest, viewer: Viewer, entry: Entry) -> Any:
        what = frozenset(("compatibility", "checklist", "links", "codes"))
        out = await self._analyse(entry, what)
        base = f"/api/v1/messages/{entry.id}"
        out.update(id=entry.id, links_check_url=f"{base}/links/check", html_url=f"{base}/html")
        return out

    async def codes(self, request: IRequest, viewer: Viewer, entry: Entry) -> Any:
        out = await self._analyse(entry, frozenset(("codes",)))
        return {"id": entry.id, **out["codes"]}

    async def links(self, request: IRequest, viewer: Viewer, entry: Entry) -> Any:
        check = self.api._query(request, "check") in ("1", "true", "yes")
        return await self._links(entry, check)

    async def links_check(self, request: IRequest, viewer: Viewer, entry: Entry) -> Any:
        return await self._links(entry, True)

    async def _links(self, entry: Entry, check: bool) -> dict[str, Any]:
        found = (await self._analyse(entry, frozenset(("links",))))["links"]
        out: dict[str, Any] = {"id": entry.id, **found}
        if not check:
            return out
        if self.check_runs >= MAX_CHECK_RUNS:
            raise _error(503, "too many link checks running, try again")
        from twisted.internet import reactor

        checker = links.LinkChecker(reactor, allow_private=self.allow_private, resolve=self.resolve)
        self.check_runs += 1
        try:
            report = await checker.check_all([link["url"] for link in found["links"]])
        finally:
            self.check_runs -= 1
        by_url = {r["url"]: r for r in report["checked"]}
        for link in out["links"]:
            link["check"] = by_url.get(link["url"])
        out["check"] = {k: v for k, v in report.items() if k != "checked"}
        out["check"]["checked"] = len(report["checked"])
        return out
