"""A webhook receiver on 127.0.0.1 (twisted.web): records each POST and answers as told -
a status code, "hang" (no answer until the connection is closed) or "big" (200 and 4 MiB)."""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    lost: Deferred[None] = field(default_factory=Deferred)  # fires when the client hung up

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def message_id(self) -> str:
        return str(self.json["message"]["id"])


class Receiver(Resource):
    isLeaf = True

    def __init__(self, answers: list[int | str] | None = None, default: int | str = 200) -> None:
        super().__init__()
        self.answers: deque[int | str] = deque(answers or ())
        self.default = default
        self.got: list[Received] = []
        self._waiting: list[tuple[int, Deferred[list[Received]]]] = []
        self.port: IListeningPort | None = None

    def render_POST(self, request: Any) -> Any:
        headers = {
            k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()
        }
        got = Received(headers, request.content.read())
        request.notifyFinish().addErrback(lambda _: got.lost.callback(None))
        self.got.append(got)
        answer = self.answers.popleft() if self.answers else self.default
        reactor.callLater(0, self._wake)
        if answer == "hang":
            return NOT_DONE_YET
        if answer == "big":  # 200 with a body far larger than the sender reads
            request.setResponseCode(200)
            return b"x" * (4 * 1024 * 1024)
        request.setResponseCode(int(answer))
        return b"ok"

    def _wake(self) -> None:
        for n, d in list(self._waiting):
            if len(self.got) >= n:
                self._waiting.remove((n, d))
                d.callback(self.got[:n])

    def requests(self, n: int) -> Deferred[list[Received]]:
        """Fires with the first ``n`` requests once that many came."""
        d: Deferred[list[Received]] = Deferred()
        self._waiting.append((n, d))
        self._wake()
        return d

    def listen(self) -> str:
        site = Site(self)
        site.noisy = False
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        return f"http://127.0.0.1:{self.port.getHost().port}/hook"
