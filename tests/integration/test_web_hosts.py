"""DNS rebinding (issue 12, 5e): a page on ``evil.test`` whose name is re-pointed at 127.0.0.1
talks to the web listener with ``Host: evil.test`` (and a matching ``Origin``). Over real
sockets, every path answers such a request 421 without reading or changing anything, while
the names a user really types keep working."""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet import threads

from mailhub.config import WebConfig
from mailhub.testing import MailhubTestServer
from tests.support.web import WebTestCase


def exchange(port: int, head: list[str], body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.x request on its own connection: (status, headers, body)."""
    lines = [*head, "Connection: close"]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, payload


class Rebinding(WebTestCase):
    def request(
        self, method: str, path: str, host: str | None, body: Any = None, **headers: str
    ) -> Any:
        head = [f"{method} {path} HTTP/1.1"]
        if host is not None:
            head.append(f"Host: {host}")
        head += [f"{k}: {v}" for k, v in headers.items()]
        data = json.dumps(body).encode() if body is not None else b""
        return threads.deferToThread(exchange, self.hub.ports["web"], head, data)

    async def test_a_foreign_host_reads_and_changes_nothing(self) -> None:
        await self.start()
        target = await MailhubTestServer.started(self, services=("smtp",))
        await self.send(subject="Password reset link")
        message_id = await self.only_id()
        port = self.hub.ports["web"]
        evil = f"evil.test:{port}"
        origin = {"Origin": f"http://{evil}"}
        release = {"host": "127.0.0.1", "port": target.smtp_port, "to": ["x@example.org"]}
        rule = {"stage": "rcpt", "action": "reply", "code": 550}
        for method, path, body, headers in [
            ("GET", "/", None, {}),
            ("GET", "/api/v1/messages", None, {}),
            ("GET", f"/api/v1/messages/{message_id}/raw", None, {}),
            ("GET", "/api/v1/events", None, {}),
            ("GET", "/api/v1/wait?timeout=0", None, {}),
            ("POST", "/api/v1/faults", rule, origin),
            ("POST", f"/api/v1/messages/{message_id}/release", release, origin),
            ("DELETE", f"/api/v1/messages/{message_id}", None, origin),
        ]:
            status, head, payload = await self.request(method, path, evil, body, **headers)
            self.assertEqual(status, 421, (method, path, payload))
            self.assertEqual(head["content-type"], "application/json; charset=utf-8")
            error = json.loads(payload)
            self.assertEqual(error["status"], 421)
            self.assertIn("allowed_hosts", error["error"])
            self.assertNotIn(b"Password reset", payload)
        self.assertEqual((await self.get("/api/v1/faults"))["rules"], [])
        self.assertEqual(target.messages(), [])
        self.assertEqual(await self.only_id(), message_id)  # not deleted

    async def test_names_a_user_types_are_answered(self) -> None:
        await self.start(
            hostname="mail.example.test", web=WebConfig(login=False, allowed_hosts=("mail",))
        )
        port = self.hub.ports["web"]
        for host in [
            f"localhost:{port}",
            "localhost",
            f"LocalHost.:{port}",
            f"app.localhost:{port}",
            f"127.0.0.1:{port}",
            f"127.1.2.3:{port}",
            f"[::1]:{port}",
            f"mail.example.test:{port}",
            f"mail:{port}",
        ]:
            status, _, payload = await self.request("GET", "/api/v1/messages", host)
            self.assertEqual(status, 200, (host, payload))
        for host in [
            f"evil.test:{port}",
            f"localhost.evil.test:{port}",
            f"mail.example.test.evil.test:{port}",
            f"10.0.0.1:{port}",
            f"127.0.0.1:{port}@evil.test",
            "::1",
        ]:
            status, _, payload = await self.request("GET", "/api/v1/messages", host)
            self.assertEqual(status, 421, (host, payload))

    async def test_host_header_is_required_once(self) -> None:
        await self.start()
        port = self.hub.ports["web"]
        status, _, _ = await self.request("GET", "/api/v1/messages", None)
        self.assertEqual(status, 400)
        status, _, _ = await self.request(
            "GET", "/api/v1/messages", "localhost", Host=f"evil.test:{port}"
        )
        self.assertEqual(status, 400)
        # HTTP/1.0 has no Host header to check; no browser sends such a request.
        answer = await threads.deferToThread(exchange, port, ["GET /api/v1/health HTTP/1.0"])
        self.assertEqual(answer[0], 200)

    async def test_cross_site_request_with_our_host_is_still_refused(self) -> None:
        await self.start()
        await self.send()
        message_id = await self.only_id()
        port = self.hub.ports["web"]
        status, _, _ = await self.request(
            "DELETE",
            f"/api/v1/messages/{message_id}",
            f"localhost:{port}",
            Origin=f"http://evil.test:{port}",
        )
        self.assertEqual(status, 403)
        status, _, _ = await self.request(
            "DELETE",
            f"/api/v1/messages/{message_id}",
            f"localhost:{port}",
            Origin=f"http://localhost:{port}",
        )
        self.assertEqual(status, 200)
