"""A real service with a web listener and a small HTTP client for the web API tests."""

from __future__ import annotations

import json
from email.message import EmailMessage
from typing import Any

import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from mailhub.testing import MailhubTestServer


def rich_message(to: str = "alice@example.com", subject: str = "Invoice 42") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Shop <shop@example.net>"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Your invoice is attached.\n")
    msg.add_alternative(
        '<p onclick="steal()">Your <b>invoice</b><img src="https://tracker.example/p.gif">'
        "<script>alert(1)</script></p>",
        subtype="html",
    )
    msg.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="inv.pdf")
    return msg


class Response:
    def __init__(self, code: int, headers: Any, body: bytes) -> None:
        self.code, self.headers, self.body = code, headers, body

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class WebTestCase(TestCase):
    services: tuple[str, ...] = ("smtp", "web")

    async def start(self, **changes: Any) -> MailhubTestServer:
        self.hub = await MailhubTestServer.started(self, services=self.services, **changes)
        self.base = f"http://127.0.0.1:{self.hub.ports['web']}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        return self.hub

    @property
    def site(self) -> Any:
        assert self.hub.service is not None
        return self.hub.service.listening_ports("web")[0].factory

    def without_inotify(self) -> None:
        feed = self.site.feed.changes
        notifier, feed._notifier = feed._notifier, None
        feed._use_inotify = False
        if notifier is not None:
            notifier.loseConnection()

    async def call(self, method: str, path: str, **kwargs: Any) -> Response:
        response = await treq.request(method, self.base + path, pool=self.pool, **kwargs)
        body = await treq.content(response)
        return Response(response.code, response.headers, body)

    async def get(self, path: str, **kwargs: Any) -> Any:
        response = await self.call("GET", path, **kwargs)
        self.assertEqual(response.code, 200, response.body)
        return response.json

    async def send(self, to: str = "alice@example.com", **kwargs: Any) -> None:
        await self.hub.send(to, **kwargs)

    async def only_id(self, query: str = "") -> str:
        page = await self.get("/api/v1/messages" + query)
        self.assertEqual(page["total"], 1)
        return page["messages"][0]["id"]
