"""QA: the web API against a hostile or clumsy HTTP client, over real sockets.

Bad ids, traversal attempts, garbled queries and bodies, wrong methods and absurd waits all get
a 4xx answer in JSON; the server logs no traceback (trial fails a test that logs one).
"""

from __future__ import annotations

import json
import select
import socket
import time
from typing import Any

from twisted.internet import reactor, task

from tests.support.qa import TIMEOUT, QATestCase


def http(port: int, method: str, target: str, body: bytes = b"", **headers: str) -> Any:
    """One request on its own connection: ``(status, parsed JSON body or raw bytes)``."""
    head = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    head += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PATCH", "PUT"):
        head.append(f"Content-Length: {len(body)}")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    status = int(status_line.split(b" ")[1])
    _, _, payload = rest.partition(b"\r\n\r\n")
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload


class WebQATestCase(QATestCase):
    def call(self, method: str, target: str, body: bytes = b"", **headers: str) -> Any:
        return self.in_thread(http, self.port("web"), method, target, body, **headers)

    async def message_id(self) -> str:
        await self.deliver()
        for _ in range(100):
            _, listing = await self.call("GET", "/api/v1/messages")
            if listing["messages"]:
                return listing["messages"][0]["id"]
            await task.deferLater(reactor, 0.01, lambda: None)
        raise AssertionError("the delivered message never showed up")

    def assertJSONError(self, answer: Any, status: int) -> None:
        code, body = answer
        self.assertEqual(code, status, body)
        self.assertIsInstance(body, dict, body)
        self.assertEqual(body["status"], status)
        self.assertTrue(body["error"])


class Bodies(WebQATestCase):
    async def test_deeply_nested_json_body_is_400(self) -> None:
        # 64 KiB of "[" is under the body limit, and json.loads recurses once per level.
        message = await self.message_id()
        body = b"[" * 30000 + b"]" * 30000
        answer = await self.call(
            "PATCH", f"/api/v1/messages/{message}", body, Content_Type="application/json"
        )
        self.assertJSONError(answer, 400)
        self.assertIn("nested too deeply", answer[1]["error"])

    async def test_garbled_bodies_are_400_or_415(self) -> None:
        message = await self.message_id()
        target = f"/api/v1/messages/{message}"
        json_type = {"Content_Type": "application/json"}
        self.assertJSONError(await self.call("PATCH", target, b"{bad json", **json_type), 400)
        self.assertJSONError(await self.call("PATCH", target, b"\xff\xfe", **json_type), 400)
        self.assertJSONError(await self.call("PATCH", target, b"[]", **json_type), 400)
        self.assertJSONError(await self.call("PATCH", target, b'{"seen": "yes"}', **json_type), 400)
        self.assertJSONError(
            await self.call("PATCH", target, b'{"seen": ' + b"9" * 5000 + b"}", **json_type), 400
        )
        self.assertJSONError(
            await self.call("PATCH", target, b'{"seen": true}', Content_Type="text/plain"), 415
        )
        self.assertJSONError(await self.call("PATCH", target, b"a" * 80000, **json_type), 413)
        # None of that changed the message.
        status, got = await self.call("GET", target)
        self.assertEqual((status, got["seen"]), (200, False))


class Paths(WebQATestCase):
    async def test_bad_ids_and_traversal_are_404(self) -> None:
        message = await self.message_id()
        for target in [
            "/api/v1/messages/xyz",
            "/api/v1/messages/..%2F..%2Fetc%2Fpasswd",
            "/api/v1/messages/%2e%2e",
            "/api/v1/messages/%00",
            f"/api/v1/messages/{message}/parts/..%2f..%2f",
            f"/api/v1/messages/{message}/parts/999",
            f"/api/v1/messages/{message}/raw/x",
            "/api/v1/faults/..%2F",
            "/api/v1/%00",
        ]:
            self.assertJSONError(await self.call("GET", target), 404)

    async def test_wrong_methods_are_405_with_allow(self) -> None:
        for method in ("PUT", "POST", "TRACE", "BREW"):
            self.assertJSONError(await self.call(method, "/api/v1/messages"), 405)
        self.assertJSONError(await self.call("DELETE", "/api/v1/health"), 405)


class Queries(WebQATestCase):
    async def test_garbled_query_parameters_are_400(self) -> None:
        await self.message_id()
        for query in [
            "limit=0",
            "limit=-1",
            "limit=99999999999999999999999999",
            "limit=%ff",
            "q=%ff",
            "q=from:",
            "q=before:garbage",
            "q=%22unterminated",
            "q=" + "(" * 5000,
            "start=-1",
        ]:
            self.assertJSONError(await self.call("GET", f"/api/v1/messages?{query}"), 400)

    async def test_absurd_wait_timeouts_and_cursors_are_400(self) -> None:
        for query in [
            "timeout=abc",
            "timeout=-1",
            "timeout=1e309",
            "timeout=nan",
            "timeout=inf",
            "timeout=99999999999999999999999",
            "since=zzz&timeout=0",
            "since=deadbeef-1&timeout=0",
            "since=-&timeout=0",
        ]:
            self.assertJSONError(await self.call("GET", f"/api/v1/wait?{query}"), 400)
        self.assertJSONError(await self.call("GET", "/api/v1/wait?to=nobody@x&timeout=0"), 408)


class ConcurrentWaits(WebQATestCase):
    async def test_too_many_waits_get_503_and_slots_come_back(self) -> None:
        port = self.port("web")

        def flood() -> tuple[int, int]:
            socks = []
            request = b"GET /api/v1/wait?to=nobody@x&timeout=60 HTTP/1.1\r\nHost: localhost\r\n\r\n"
            for _ in range(230):
                s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
                s.sendall(request)
                socks.append(s)
            # The refusals come as the server gets to them: wait for them (not for a fixed
            # time, which a busy machine outlasts), then give any extra one a moment to show.
            refused = 0
            waiting = set(socks)
            deadline = time.monotonic() + TIMEOUT
            extra_until = None
            while waiting:
                now = time.monotonic()
                if refused >= len(socks) - 200 and extra_until is None:
                    extra_until = now + 0.2
                limit = extra_until if extra_until is not None else deadline
                if now >= limit:
                    break
                readable, _, _ = select.select(list(waiting), [], [], limit - now)
                for s in readable:
                    waiting.discard(s)
                    refused += s.recv(100).startswith(b"HTTP/1.1 503")
            for s in socks:
                s.close()
            return refused, len(socks)

        refused, total = await self.in_thread(flood)
        self.assertEqual(refused, total - 200)  # MAX_STREAMS answered, the rest refused
        # The dropped waits give their slots back as the server sees the connections close.
        deadline = reactor.seconds() + TIMEOUT
        while (answer := await self.call("GET", "/api/v1/wait?to=nobody@x&timeout=0.1"))[0] == 503:
            self.assertLess(reactor.seconds(), deadline, "the slots never came back")
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertJSONError(answer, 408)
