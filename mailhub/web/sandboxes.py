"""The sandbox endpoints under /api/v1/sandboxes (isolated inboxes for tests: mailhub.sandboxes).

    POST   /sandboxes                  a new sandbox: id, SMTP/IMAP/POP3 user name and password
    GET    /sandboxes                  every sandbox (admins)
    GET    /sandboxes/{id}             one sandbox (no password), its message count
    DELETE /sandboxes/{id}             the sandbox, its mail and its fault rules
    GET    /sandboxes/{id}/messages    as /messages (search, paging), its mail only; DELETE too
    GET    /sandboxes/{id}/messages/{message}[/raw|html|parts/N]
    GET    /sandboxes/{id}/wait        as /wait, its mail only
    GET    /sandboxes/{id}/events      as /events, its mail only
    *      /sandboxes/{id}/faults[/{rule}]   as /faults, rules for its SMTP logins only

The scoped endpoints are the API's own handlers, seen by a viewer who may see the sandbox's
mailbox and nothing else: what /messages, /wait and /events do, these do, on one mailbox.
Admins (everybody, when the page needs no login) may use every sandbox; a login with a
sandbox's own credentials may use that one.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from twisted.web.iweb import IRequest

from mailhub.faults.rules import FaultError
from mailhub.sandboxes import Sandbox, SandboxError, Sandboxes
from mailhub.web.access import Viewer
from mailhub.web.api import Api, ApiError

# What a sandbox's own scope offers: the API's routes of these names, on its mailbox alone.
SCOPED = frozenset({"messages", "wait", "events"})
# Listener kinds whose address a new sandbox's answer names (for the test's client).
LISTENERS = ("smtp", "submission", "smtps", "imap", "imaps", "pop3", "pop3s")


class SandboxApi:
    """The handlers; ``Api.handle`` routes ``/sandboxes...`` here. ``listening(kind)`` gives
    the (host, port) pairs a listener kind is bound to (the service knows them once bound)."""

    def __init__(self, api: Api, sandboxes: Sandboxes, listening: Any = None) -> None:
        self.api, self.sandboxes = api, sandboxes
        self.listening = listening if listening is not None else (lambda kind: [])

    async def handle(self, request: IRequest, viewer: Viewer, path: list[str]) -> Any:
        method = request.method.decode("ascii", "replace")
        if method == "HEAD":
            method = "GET"
        if not path:
            if method == "GET":
                return self._list(viewer)
            if method == "POST":
                return await self._create(request, viewer)
            return self._not_allowed(request, method, ("GET", "POST"))
        box = self._sandbox(path[0], viewer)
        rest = path[1:]
        if not rest:
            if method == "GET":
                return self.describe(box)
            if method == "DELETE":
                return await self._delete(box)
            return self._not_allowed(request, method, ("GET", "DELETE"))
        scoped = Viewer(box.address, admin=False)
        if rest[0] in SCOPED:
            return await self.api.handle(request, scoped, rest)
        if rest[0] == "faults" and len(rest) <= 2:
            return await self._faults(request, method, box, rest[1:])
        raise ApiError(404, "no such resource (see /api/v1/openapi.json)")

    # --- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _not_allowed(request: IRequest, method: str, allowed: tuple[str, ...]) -> Any:
        request.setHeader("Allow", ", ".join(sorted(allowed) + ["HEAD"] * ("GET" in allowed)))
        raise ApiError(405, f"{method} is not allowed here")

    def _sandbox(self, sandbox_id: str, viewer: Viewer) -> Sandbox:
        box = self.sandboxes.get(sandbox_id)
        if box is None or not (viewer.admin or viewer.address == box.address):
            raise ApiError(404, "no sandbox with that id")
        return box

    def describe(self, box: Sandbox, *, caught_up: bool = False) -> dict[str, Any]:
        feed = self.api.feed
        if not caught_up:
            feed.catch_up()  # counts include mail whose 250 came before this request
        base = f"/api/v1/sandboxes/{quote(box.id)}"
        return {
            "id": box.id,
            "name": box.name,
            "created": _iso(box.created),
            "expires": _iso(box.expires) if box.expires is not None else None,
            "username": box.address,
            "mailbox": box.address,
            "messages": feed.count(box.address),
            "unread": feed.unread(box.address),
            "listeners": self._listeners(),
            "urls": {
                "messages": f"{base}/messages",
                "wait": f"{base}/wait",
                "events": f"{base}/events",
                "faults": f"{base}/faults",
            },
        }

    def _listeners(self) -> dict[str, dict[str, Any]]:
        out = {}
        for kind in LISTENERS:
            bound = self.listening(kind)
            if bound:
                host, port = bound[0]
                out[kind] = {"host": host, "port": port}
        return out

    # --- the sandboxes ---------------------------------------------------------------------

    def _list(self, viewer: Viewer) -> Any:
        if not viewer.admin:
            raise ApiError(403, "only admins may list the sandboxes")
        self.api.feed.catch_up()  # once for the whole list
        return {
            "sandboxes": [self.describe(box, caught_up=True) for box in self.sandboxes],
            "max": self.sandboxes.limit,
        }

    async def _create(self, request: IRequest, viewer: Viewer) -> Any:
        if not viewer.admin:
            raise ApiError(403, "only admins may make sandboxes")
        body = self.api._body(request)
        unknown = set(body) - {"name", "ttl"}
        if unknown:
            raise ApiError(400, f"unknown field {sorted(unknown)[0]!r} (known: name, ttl)")
        try:
            box, password = await self.sandboxes.create(body.get("name", ""), body.get("ttl"))
        except SandboxError as e:
            raise ApiError(e.status, e.message) from None
        request.setResponseCode(201)
        request.setHeader("Location", f"/api/v1/sandboxes/{quote(box.id)}")
        # The password is shown this once: only its hash is kept.
        return {**self.describe(box), "password": password}

    async def _delete(self, box: Sandbox) -> Any:
        count = self.api.feed.count(box.address)
        await self.sandboxes.delete(box.id)
        self.api.feed.catch_up()  # its messages leave the page and the other lists now
        return {"deleted": box.id, "messages": count}

    # --- its fault rules -------------------------------------------------------------------

    async def _faults(self, request: IRequest, method: str, box: Sandbox, rest: list[str]) -> Any:
        faults = self.api.faults
        if faults is None:
            raise ApiError(404, "fault injection is not available in this server")
        mine = [r for r in faults.list() if r.get("login") == box.address]
        if rest:
            rule = next((r for r in mine if r["id"] == rest[0]), None)
            if rule is None:
                raise ApiError(404, "no fault rule with that id in this sandbox")
            if method == "GET":
                return rule
            if method == "DELETE":
                faults.remove(rule["id"])
                return {"deleted": [rule["id"]]}
            return self._not_allowed(request, method, ("GET", "DELETE"))
        if method == "GET":
            return {"rules": mine}
        if method == "DELETE":
            faults.remove_login(box.address)
            return {"deleted": len(mine)}
        if method != "POST":
            return self._not_allowed(request, method, ("DELETE", "GET", "POST"))
        body = self.api._body(request)
        if body.get("login", box.address) != box.address:
            raise ApiError(400, "a sandbox's rule is for its own login", key="login")
        try:
            rule_id = faults.add({**body, "login": box.address})
        except FaultError as e:
            raise ApiError(400, str(e), key=getattr(e, "key", None)) from None
        request.setResponseCode(201)
        request.setHeader("Location", f"/api/v1/sandboxes/{quote(box.id)}/faults/{rule_id}")
        return faults.get(rule_id)


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
