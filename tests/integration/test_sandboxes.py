"""Sandboxes (issue 15): isolated inboxes over real HTTP, SMTP (smtplib with AUTH), IMAP
(imaplib) and POP3 (poplib) on 127.0.0.1, in a whole in-process mailhub."""

from __future__ import annotations

import base64
import imaplib
import json
import poplib
import smtplib
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import treq
from twisted.internet import defer, threads

from mailhub.config import SandboxesConfig, SMTPConfig, WebConfig
from mailhub.sandboxes import SANDBOX_DOMAIN
from mailhub.testing import MailhubTestServer, SandboxClient
from tests.integration.test_web_api import _Collector
from tests.support.web import WebTestCase

JSON = {"Content-Type": ["application/json"]}


class SandboxTestCase(WebTestCase):
    services = ("smtp", "submission", "imap", "pop3", "web")

    async def create(self, name: str = "") -> dict[str, Any]:
        body = json.dumps({"name": name} if name else {}).encode()
        response = await self.call("POST", "/api/v1/sandboxes", data=body, headers=JSON)
        self.assertEqual(response.code, 201, response.body)
        box: dict[str, Any] = response.json
        self.assertEqual(response.header("Location"), f"/api/v1/sandboxes/{box['id']}")
        return box

    def send_as(self, box: dict[str, Any], to: Any, **kwargs: Any) -> defer.Deferred[Any]:
        return self.hub.send(to, login=(box["username"], box["password"]), **kwargs)

    def client(self, box: dict[str, Any]) -> SandboxClient:
        return SandboxClient(self.base, box, box["password"])

    async def subjects(self, box: dict[str, Any], query: str = "") -> list[str]:
        page = await self.get(f"/api/v1/sandboxes/{box['id']}/messages{query}")
        return sorted(m["subject"] for m in page["messages"])


class Sandboxes(SandboxTestCase):
    async def test_create_answers_credentials_and_listeners(self) -> None:
        await self.start()
        box = await self.create("signup tests")
        self.assertEqual(box["name"], "signup tests")
        self.assertEqual(box["username"], f"{box['id']}@{SANDBOX_DOMAIN}")
        self.assertGreaterEqual(len(box["password"]), 20)
        self.assertEqual(box["messages"], 0)
        self.assertIsNone(box["expires"])
        self.assertEqual(box["listeners"]["smtp"]["port"], self.hub.smtp_port)
        self.assertEqual(box["listeners"]["imap"]["port"], self.hub.ports["imap"])
        # Later answers never show the password again (only its hash is kept).
        again = await self.get(f"/api/v1/sandboxes/{box['id']}")
        self.assertNotIn("password", again)
        listed = await self.get("/api/v1/sandboxes")
        self.assertEqual([b["id"] for b in listed["sandboxes"]], [box["id"]])
        assert self.hub.service is not None
        stored = (self.hub.config.data_dir / "sandboxes.json").read_text()
        self.assertNotIn(box["password"], stored)
        # The answer has the shape the description promises, and every path is described.
        spec = await self.get("/api/v1/openapi.json")
        self.assertEqual(set(box), set(spec["components"]["schemas"]["Sandbox"]["properties"]))
        self.assertIn("201", spec["paths"]["/api/v1/sandboxes"]["post"]["responses"])
        for tail in ("", "/messages", "/messages/{id}", "/wait", "/events", "/faults"):
            self.assertIn(f"/api/v1/sandboxes/{{sandbox}}{tail}", spec["paths"])

    async def test_every_recipient_is_caught_in_the_sandbox(self) -> None:
        await self.start()
        box = await self.create()
        refused = await self.send_as(
            box, ["alice@example.com", "bob@example.org", "someone@elsewhere.test"], subject="Hi"
        )
        self.assertEqual(refused, {})
        self.assertEqual(await self.subjects(box), ["Hi"])  # one copy for the sandbox
        page = await self.get(f"/api/v1/sandboxes/{box['id']}/messages")
        self.assertEqual(page["total"], 1)
        message = page["messages"][0]
        self.assertEqual(message["mailbox"], box["username"])
        # Nothing reached the recipients' own mailboxes.
        for address in ("alice@example.com", "bob@example.org", "someone@elsewhere.test"):
            other = await self.get(f"/api/v1/messages?mailbox={address}")
            self.assertEqual(other["total"], 0, address)
        # The message reads through the scoped path and the global one alike.
        detail = await self.get(f"/api/v1/sandboxes/{box['id']}/messages/{message['id']}")
        self.assertEqual(detail["subject"], "Hi")
        raw = await self.call("GET", f"/api/v1/sandboxes/{box['id']}/messages/{message['id']}/raw")
        self.assertIn(b"Subject: Hi", raw.body)

    async def test_the_envelope_recipients_are_kept(self) -> None:
        await self.start()
        box = await self.create()
        message = EmailMessage()
        message["From"] = "app@example.com"
        message["To"] = "visible@example.com"
        message["Subject"] = "with a Bcc"
        message.set_content("hello\n")
        await self.send_as(box, ["visible@example.com", "Hidden+Tag@Example.org"], message=message)
        await self.hub.send("plain@example.com", subject="not a sandbox's")
        page = await self.get(f"/api/v1/sandboxes/{box['id']}/messages")
        detail = await self.get(f"/api/v1/messages/{page['messages'][0]['id']}")
        fields = [v for k, v in detail["headers"] if k.lower() == "x-original-to"]
        self.assertEqual(fields, ["visible@example.com", "Hidden+Tag@Example.org"])
        found = await self.hub.wait_for_message(
            to="hidden+tag@example.org", sandbox=self.client(box)
        )
        self.assertEqual(found.subject, "with a Bcc")
        plain = await self.get("/api/v1/messages?mailbox=plain@example.com")
        detail = await self.get(f"/api/v1/messages/{plain['messages'][0]['id']}")
        self.assertNotIn("x-original-to", [k.lower() for k, _v in detail["headers"]])

    async def test_submission_port_too(self) -> None:
        await self.start()
        box = await self.create()
        await self.send_as(box, "x@example.com", subject="via 587", port="submission")
        self.assertEqual(await self.subjects(box), ["via 587"])

    async def test_a_sandbox_sends_as_anyone_where_senders_are_restricted(self) -> None:
        # Production's rule (RFC 6409 4.3: MAIL FROM and header From must be the user's own)
        # does not bind a sandbox: it stands in for whatever the application sends as.
        await self.start(smtp=SMTPConfig(restrict_sender=True, auth_without_tls_on_loopback=True))
        box = await self.create()
        await self.send_as(
            box,
            "x@example.com",
            subject="as the app",
            sender="noreply@app.example",
            port="submission",
        )
        self.assertEqual(await self.subjects(box), ["as the app"])
        with self.assertRaises(smtplib.SMTPSenderRefused):  # an ordinary user still may not
            await self.hub.send(
                "x@example.com", sender="noreply@app.example", port="submission",
                login=("dev@example.com", "x"),
            )  # fmt: skip

    async def test_mail_for_the_sandbox_domain_needs_its_login(self) -> None:
        await self.start()
        box = await self.create()
        with self.assertRaises(smtplib.SMTPRecipientsRefused) as caught:
            await self.hub.send(box["username"], subject="sneaking in")
        code, _text = caught.exception.recipients[box["username"]]
        self.assertEqual(code, 550)
        self.assertEqual(await self.subjects(box), [])

    async def test_wrong_password_is_refused(self) -> None:
        await self.start()
        box = await self.create()
        with self.assertRaises(smtplib.SMTPAuthenticationError):
            await self.hub.send("a@example.com", login=(box["username"], "not-the-password"))
        # Other dev logins still work as before (any name and password).
        await self.hub.send("a@example.com", subject="dev login", login=("dev@example.com", "x"))
        page = await self.get("/api/v1/messages?mailbox=a@example.com")
        self.assertEqual([m["subject"] for m in page["messages"]], ["dev login"])

    async def test_imap_and_pop3_see_only_the_sandbox(self) -> None:
        await self.start()
        box, other = await self.create(), await self.create()
        await self.send_as(box, "alice@example.com", subject="mine")
        await self.send_as(other, "alice@example.com", subject="theirs")
        await self.hub.send("alice@example.com", subject="plain")
        user, password = box["username"], box["password"]
        port, pop_port = self.hub.ports["imap"], self.hub.ports["pop3"]

        def imap_subjects() -> list[bytes]:
            with imaplib.IMAP4("127.0.0.1", port, timeout=10) as imap:
                imap.login(user, password)
                imap.select("INBOX")
                _, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                return [item[1].strip() for item in data if isinstance(item, tuple)]

        def pop_count() -> int:
            client = poplib.POP3("127.0.0.1", pop_port, timeout=10)
            try:
                client.user(user)
                client.pass_(password)
                return int(client.stat()[0])
            finally:
                client.quit()

        def imap_wrong_password() -> None:
            with imaplib.IMAP4("127.0.0.1", port, timeout=10) as imap:
                imap.login(user, "guess")

        self.assertEqual(await threads.deferToThread(imap_subjects), [b"Subject: mine"])
        self.assertEqual(await threads.deferToThread(pop_count), 1)
        # The dev stack's any-login does not open a sandbox.
        with self.assertRaises(imaplib.IMAP4.error):
            await threads.deferToThread(imap_wrong_password)

    async def test_delete_removes_it_and_its_mail(self) -> None:
        await self.start()
        box = await self.create()
        await self.send_as(box, "alice@example.com", subject="gone soon")
        self.assertEqual(await self.subjects(box), ["gone soon"])
        path = self.hub.config.mail_dir / SANDBOX_DOMAIN / box["id"]
        self.assertTrue(path.is_dir())
        response = await self.call("DELETE", f"/api/v1/sandboxes/{box['id']}")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json, {"deleted": box["id"], "messages": 1})
        self.assertFalse(path.exists())
        self.assertEqual(list(path.parent.iterdir()), [])  # no trash left behind
        missing = await self.call("GET", f"/api/v1/sandboxes/{box['id']}/messages")
        self.assertEqual(missing.code, 404)
        everything = await self.get("/api/v1/messages")
        self.assertEqual(everything["total"], 0)
        with self.assertRaises(smtplib.SMTPAuthenticationError):
            await self.send_as(box, "alice@example.com")
        again = await self.call("DELETE", f"/api/v1/sandboxes/{box['id']}")
        self.assertEqual(again.code, 404)

    async def test_empty_a_sandbox(self) -> None:
        await self.start()
        box, other = await self.create(), await self.create()
        await self.send_as(box, "a@example.com", subject="one")
        await self.send_as(other, "a@example.com", subject="two")
        response = await self.call("DELETE", f"/api/v1/sandboxes/{box['id']}/messages")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(len(response.json["deleted"]), 1)
        self.assertEqual(await self.subjects(box), [])
        self.assertEqual(await self.subjects(other), ["two"])

    async def test_bad_ids_methods_and_bodies(self) -> None:
        await self.start()
        for path in ("/api/v1/sandboxes/nope", "/api/v1/sandboxes/0123456789abcdef/messages"):
            response = await self.call("GET", path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(response.json["error"], "no sandbox with that id")
        box = await self.create()
        cases = [
            ("PUT", "/api/v1/sandboxes", b"{}", 405),
            ("POST", "/api/v1/sandboxes", b'{"colour": "red"}', 400),
            ("POST", "/api/v1/sandboxes", b'{"name": 5}', 400),
            ("POST", "/api/v1/sandboxes", b'{"name": "two\\nlines"}', 400),
            ("POST", "/api/v1/sandboxes", b"[1]", 400),
            ("POST", "/api/v1/sandboxes", b'{"ttl": 0}', 400),
            ("POST", "/api/v1/sandboxes", b'{"ttl": "1h"}', 400),
            ("PATCH", f"/api/v1/sandboxes/{box['id']}", b"{}", 405),
            ("GET", f"/api/v1/sandboxes/{box['id']}/nothing", b"", 404),
        ]
        for method, path, body, status in cases:
            response = await self.call(method, path, data=body, headers=JSON)
            self.assertEqual(response.code, status, (method, path, body, response.body))
            self.assertEqual(response.json["status"], status)
        not_json = await self.call(
            "POST", "/api/v1/sandboxes", data=b"name=x", headers={"Content-Type": ["text/plain"]}
        )
        self.assertEqual(not_json.code, 415)

    async def test_the_limit(self) -> None:
        await self.start(sandboxes=SandboxesConfig(enabled=True, max=2))
        first = await self.create()
        await self.create()
        response = await self.call("POST", "/api/v1/sandboxes", data=b"{}", headers=JSON)
        self.assertEqual(response.code, 409)
        self.assertIn("delete some first", response.json["error"])
        await self.call("DELETE", f"/api/v1/sandboxes/{first['id']}")
        await self.create()  # room again

    async def test_off(self) -> None:
        await self.start(sandboxes=SandboxesConfig(enabled=False))
        response = await self.call("POST", "/api/v1/sandboxes", data=b"{}", headers=JSON)
        self.assertEqual(response.code, 404)


class Isolation(SandboxTestCase):
    """Two sandboxes used at once by parallel clients see neither each other's mail nor faults."""

    async def test_parallel_clients_see_only_their_own_mail(self) -> None:
        await self.start()
        a, b = await self.create("a"), await self.create("b")
        sends = []
        for n in range(6):
            for box in (a, b):
                sends.append(self.send_as(box, f"user{n}@example.com", subject=f"{box['name']}{n}"))
        await defer.gatherResults(sends, consumeErrors=True)
        self.assertEqual(await self.subjects(a), [f"a{n}" for n in range(6)])
        self.assertEqual(await self.subjects(b), [f"b{n}" for n in range(6)])
        # Search within one sandbox finds nothing of the other.
        found = await self.get(f"/api/v1/sandboxes/{a['id']}/messages?q=subject:b1")
        self.assertEqual(found["total"], 0)
        # A message id of one sandbox is not reachable through the other.
        one = (await self.get(f"/api/v1/sandboxes/{b['id']}/messages?limit=1"))["messages"][0]
        response = await self.call("GET", f"/api/v1/sandboxes/{a['id']}/messages/{one['id']}")
        self.assertEqual(response.code, 404)

    async def test_wait_is_scoped(self) -> None:
        await self.start()
        a, b = await self.create(), await self.create()
        cursor = (await self.get(f"/api/v1/sandboxes/{a['id']}/messages"))["cursor"]
        waiting = defer.Deferred.fromCoroutine(
            self.get(f"/api/v1/sandboxes/{a['id']}/wait?since={cursor}&timeout=20")
        )
        await self.send_as(b, "same@example.com", subject="for b")
        await self.send_as(a, "same@example.com", subject="for a")
        answer = await waiting
        self.assertEqual([m["subject"] for m in answer["messages"]], ["for a"])
        nothing = await self.call(
            "GET", f"/api/v1/sandboxes/{b['id']}/wait?subject=for+a&timeout=0"
        )
        self.assertEqual(nothing.code, 408)

    async def test_events_are_scoped(self) -> None:
        await self.start()
        a, b = await self.create(), await self.create()
        response = await treq.get(
            f"{self.base}/api/v1/sandboxes/{a['id']}/events", pool=self.pool, unbuffered=True
        )
        stream = _Collector()
        response.deliverBody(stream)
        await stream.until(b"event: hello")
        await self.send_as(b, "x@example.com", subject="b's")
        await self.hub.send("x@example.com", subject="nobody's")
        await self.send_as(a, "x@example.com", subject="a's")
        await stream.until(b"event: new")
        stream.transport.stopProducing()
        self.assertEqual(stream.event("new")["subject"], "a's")
        self.assertNotIn(b"b's", stream.data)
        self.assertNotIn(b"nobody's", stream.data)

    async def test_fault_rules_are_scoped(self) -> None:
        await self.start()
        a, b = await self.create(), await self.create()
        rule = {"stage": "rcpt", "action": "reply", "code": 550, "text": "no such user here"}
        response = await self.call(
            "POST", f"/api/v1/sandboxes/{a['id']}/faults", data=json.dumps(rule).encode(),
            headers=JSON,
        )  # fmt: skip
        self.assertEqual(response.code, 201, response.body)
        rule_id = response.json["id"]
        self.assertEqual(response.json["login"], a["username"])
        results = await defer.DeferredList(
            [self.send_as(a, "x@example.com"), self.send_as(b, "x@example.com", subject="ok")],
            consumeErrors=True,
        )
        (a_ok, a_result), (b_ok, b_result) = results
        self.assertFalse(a_ok)
        self.assertIsInstance(a_result.value, smtplib.SMTPRecipientsRefused)
        self.assertTrue(b_ok, b_result)
        self.assertEqual(await self.subjects(b), ["ok"])
        # Plain sessions do not meet it either.
        await self.hub.send("x@example.com", subject="plain")
        self.assertEqual(
            [r["id"] for r in (await self.get(f"/api/v1/sandboxes/{a['id']}/faults"))["rules"]],
            [rule_id],
        )
        self.assertEqual((await self.get(f"/api/v1/sandboxes/{b['id']}/faults"))["rules"], [])
        other = await self.call("GET", f"/api/v1/sandboxes/{b['id']}/faults/{rule_id}")
        self.assertEqual(other.code, 404)
        # A rule may not name another login, nor a stage before AUTH.
        for bad in (
            {**rule, "login": b["username"]},
            {"stage": "connect", "action": "disconnect"},
        ):
            refused = await self.call(
                "POST", f"/api/v1/sandboxes/{a['id']}/faults", data=json.dumps(bad).encode(),
                headers=JSON,
            )  # fmt: skip
            self.assertEqual(refused.code, 400, bad)
            self.assertEqual(refused.json["key"], "login")
        # Deleting the sandbox takes its rules with it.
        await self.call("DELETE", f"/api/v1/sandboxes/{a['id']}")
        self.assertEqual((await self.get("/api/v1/faults"))["rules"], [])


class Persistence(SandboxTestCase):
    async def test_sandboxes_survive_a_restart(self) -> None:
        directory = Path(self.mktemp())
        hub = MailhubTestServer(directory, services=self.services)
        hub.start()
        self.hub = hub
        self.base = f"http://127.0.0.1:{hub.ports['web']}"
        from twisted.internet import reactor
        from twisted.web.client import HTTPConnectionPool

        self.pool = HTTPConnectionPool(reactor, persistent=False)
        box = await self.create("kept")
        await self.send_as(box, "alice@example.com", subject="before the restart")
        await hub.stop()

        hub = MailhubTestServer(directory, services=self.services)
        hub.start()
        self.addCleanup(hub.stop)
        self.hub = hub
        self.base = f"http://127.0.0.1:{hub.ports['web']}"
        listed = await self.get("/api/v1/sandboxes")
        self.assertEqual([(b["id"], b["name"]) for b in listed["sandboxes"]], [(box["id"], "kept")])
        self.assertEqual(await self.subjects(box), ["before the restart"])
        await self.send_as(box, "alice@example.com", subject="after")  # the password still works
        self.assertEqual(await self.subjects(box), ["after", "before the restart"])


class WithLogin(SandboxTestCase):
    """With the page's login on, a sandbox's own credentials (HTTP Basic) reach that sandbox
    and nothing else."""

    async def test_a_sandbox_login_sees_its_own_mail_only(self) -> None:
        await self.start(web=WebConfig(login=True, admins=("admin@example.com",)))
        admin = {"Authorization": [_basic("admin@example.com", "any")], **JSON}
        made = []
        for _ in range(2):
            response = await self.call("POST", "/api/v1/sandboxes", data=b"{}", headers=admin)
            self.assertEqual(response.code, 201, response.body)
            made.append(response.json)
        a, b = made
        await self.send_as(a, "x@example.com", subject="a's")
        await self.send_as(b, "x@example.com", subject="b's")
        mine = {"Authorization": [_basic(a["username"], a["password"])]}
        page = await self.call("GET", f"/api/v1/sandboxes/{a['id']}/messages", headers=mine)
        self.assertEqual([m["subject"] for m in page.json["messages"]], ["a's"])
        everything = await self.call("GET", "/api/v1/messages", headers=mine)
        self.assertEqual([m["subject"] for m in everything.json["messages"]], ["a's"])
        for method, path in (
            ("GET", f"/api/v1/sandboxes/{b['id']}/messages"),
            ("DELETE", f"/api/v1/sandboxes/{b['id']}"),
        ):
            response = await self.call(method, path, headers=mine)
            self.assertEqual(response.code, 404, path)
        for method in ("GET", "POST"):
            response = await self.call(
                method, "/api/v1/sandboxes", data=b"{}", headers={**mine, **JSON}
            )
            self.assertEqual(response.code, 403, method)
        wrong = {"Authorization": [_basic(a["username"], "guess")]}
        response = await self.call("GET", f"/api/v1/sandboxes/{a['id']}/messages", headers=wrong)
        self.assertEqual(response.code, 401)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
