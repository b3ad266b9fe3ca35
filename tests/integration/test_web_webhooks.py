"""Webhooks in a whole server (mailhub.testing): mail sent by SMTP and put by IMAP APPEND is
POSTed to a twisted.web receiver on 127.0.0.1 with the API's list item; the README's Python
verification recipe accepts it; GET /api/v1/webhooks shows the delivery log."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import imapclient
from twisted.internet import task, threads

from mailhub.config import WebConfig, WebhookConfig
from tests.support.web import WebTestCase
from tests.support.webhooks import Receiver

REPO = Path(__file__).resolve().parent.parent.parent


def readme_recipe() -> Any:
    """The Python snippet of the README's webhook section, run: its verify_mailhub."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Webhooks", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)\n```", section, re.DOTALL)
    scope: dict[str, Any] = {}
    exec(code, scope)  # the README's own text, nothing from outside
    return scope["verify_mailhub"]


class Webhooks(WebTestCase):
    services = ("smtp", "web", "imap")

    async def start_with_hooks(self) -> tuple[Receiver, Receiver]:
        every, invoices = Receiver(), Receiver()
        hooks = (
            WebhookConfig(url=every.listen(), secret="s3cret"),
            WebhookConfig(url=invoices.listen(), tag="invoice", mailbox="alice@example.com"),
        )
        for r in (every, invoices):
            self.addCleanup(r.port.stopListening)  # type: ignore[union-attr]
        await self.start(web=WebConfig(login=False, webhooks=hooks))
        return every, invoices

    async def test_smtp_and_imap_mail_is_posted_signed_with_the_list_item(self) -> None:
        every, invoices = await self.start_with_hooks()
        await self.send("alice+invoice@example.com", subject="Invoice 7")
        await self.send("bob+invoice@example.com", subject="Not alice's")
        got = await every.requests(2)
        [invoice] = await invoices.requests(1)
        self.assertEqual(invoice.json["message"]["subject"], "Invoice 7")

        page = await self.get("/api/v1/messages")
        items = {m["id"]: m for m in page["messages"]}
        for g in got:
            message = dict(g.json["message"])
            links = message.pop("links")
            self.assertEqual(message, items[message["id"]])  # the list item's shape and values
            self.assertEqual(links["self"], f"/api/v1/messages/{message['id']}")
            raw = await self.call("GET", links["raw"])
            self.assertEqual(raw.code, 200)
        self.assertEqual([g.json["message"]["subject"] for g in got], ["Invoice 7", "Not alice's"])
        self.assertEqual(got[0].json["message"]["tags"], ["invoice"])

        verify_mailhub = readme_recipe()
        headers = {
            "X-Mailhub-Timestamp": got[0].headers["x-mailhub-timestamp"],
            "X-Mailhub-Signature": got[0].headers["x-mailhub-signature"],
        }
        self.assertTrue(verify_mailhub(b"s3cret", headers, got[0].body))
        self.assertFalse(verify_mailhub(b"s3cret", headers, got[0].body.replace(b"7", b"8")))
        self.assertFalse(verify_mailhub(b"wrong", headers, got[0].body))
        old = dict(headers, **{"X-Mailhub-Timestamp": "1000000000"})
        self.assertFalse(verify_mailhub(b"s3cret", old, got[0].body))

        def append() -> None:
            client = imapclient.IMAPClient("127.0.0.1", port=self.hub.ports["imap"], ssl=False)
            try:
                client.login("carol@example.com", "pw")
                client.append("INBOX", b"From: a@example.net\r\nSubject: Appended\r\n\r\nhi\r\n")
            finally:
                client.logout()

        await threads.deferToThread(append)  # IMAP APPEND counts as new mail too
        third = (await every.requests(3))[2]
        self.assertEqual(third.json["message"]["subject"], "Appended")
        self.assertEqual(third.json["message"]["mailbox"], "carol@example.com")

        while True:  # the receivers' answers are read after they wrote them
            log = await self.get("/api/v1/webhooks")
            if [h["delivered"] for h in log["webhooks"]] == [3, 1]:
                break
            await task.deferLater(self.hub_reactor, 0.02, lambda: None)
        first, second = log["webhooks"]
        self.assertTrue(first["signed"])
        self.assertFalse(second["signed"])
        self.assertEqual(second["filters"], {"mailbox": "alice@example.com", "tag": "invoice"})
        self.assertEqual(
            [(a["outcome"], a["status"]) for a in first["attempts"]], [("delivered", 200)] * 3
        )
        self.assertEqual(first["attempts"][-1]["message"], got[0].json["message"]["id"])
        self.assertNotIn("s3cret", str(log))
        # The answer has the shape the description promises.
        spec = await self.get("/api/v1/openapi.json")
        schema = spec["components"]["schemas"]["Webhook"]["properties"]
        self.assertEqual(set(first), set(schema))
        self.assertEqual(set(first["attempts"][0]), set(schema["attempts"]["items"]["properties"]))
        self.assertIn("get", spec["paths"]["/api/v1/webhooks"])
        summary = spec["components"]["schemas"]["Summary"]["properties"]
        self.assertLessEqual({"tags", "tag_sources"}, set(summary))

    async def test_a_hanging_hook_does_not_hold_up_the_server(self) -> None:
        hanging = Receiver(default="hang")
        hook = WebhookConfig(url=hanging.listen(), timeout=3600, queue_size=2)
        self.addCleanup(hanging.port.stopListening)  # type: ignore[union-attr]
        await self.start(web=WebConfig(login=False, webhooks=(hook,)))
        for n in range(4):
            await self.send(subject=f"number {n}")  # SMTP answers 250 each time
        page = await self.get("/api/v1/messages")
        self.assertEqual(page["total"], 4)
        await hanging.requests(1)
        [log] = (await self.get("/api/v1/webhooks"))["webhooks"]
        first = page["messages"][-1]["id"]
        self.assertEqual((log["in_flight"], log["queued"], log["dropped"]), (first, 2, 1))
        self.assertEqual(len(hanging.got), 1)  # one request at a time

    @property
    def hub_reactor(self) -> Any:
        from twisted.internet import reactor

        return reactor

    async def test_webhook_log_is_for_admins(self) -> None:
        await self.start(web=WebConfig(login=False))
        self.assertEqual(await self.get("/api/v1/webhooks"), {"webhooks": []})
