"""Tags over HTTP (mailhub.web.tags): from plus-addresses, rules and by hand; ?tag= and tag:
in search; a manual tag is an IMAP keyword that a real IMAP client (imapclient) sees, and a
keyword an IMAP client sets is a tag on the page."""

from __future__ import annotations

import json
from email.message import EmailMessage
from typing import Any

import imapclient
from twisted.internet import threads

from mailhub.config import TagRuleConfig, WebConfig
from mailhub.errors import ConfigError
from mailhub.testing import MailhubTestServer
from tests.support.web import WebTestCase

RULES = (
    TagRuleConfig(match="subject:invoice", tag="billing"),
    TagRuleConfig(match="tag:vip from:boss", tag="urgent"),  # rules see manual/address tags
)


class Tags(WebTestCase):
    services = ("smtp", "web", "imap")

    async def start_tagged(self) -> None:
        await self.start(web=WebConfig(login=False, tags=RULES))

    async def patch(self, message_id: str, tags: Any) -> Any:
        return await self.call(
            "PATCH",
            f"/api/v1/messages/{message_id}",
            data=json.dumps({"tags": tags}).encode(),
            headers={"Content-Type": "application/json"},
        )

    async def subjects(self, query: str) -> list[str]:
        page = await self.get("/api/v1/messages?" + query)
        return sorted(m["subject"] for m in page["messages"])

    async def test_plus_address_rule_and_manual_tags(self) -> None:
        await self.start_tagged()
        await self.send("alice+invoice@example.com", subject="Invoice 7")
        await self.send("alice@example.com", subject="Hello")
        # A Bcc to a plus address: only our Received field's "for" names it.
        bcc = EmailMessage()
        bcc["From"], bcc["To"], bcc["Subject"] = "x@example.net", "list@example.org", "Hidden"
        bcc.set_content("hi\n")
        await self.hub.send("alice+secret@example.com", message=bcc)
        page = await self.get("/api/v1/messages?mailbox=alice@example.com")
        by_subject = {m["subject"]: m for m in page["messages"]}
        self.assertEqual(by_subject["Invoice 7"]["tags"], ["billing", "invoice"])
        self.assertEqual(
            by_subject["Invoice 7"]["tag_sources"], {"billing": ["rule"], "invoice": ["address"]}
        )
        self.assertEqual(by_subject["Hidden"]["tags"], ["secret"])
        self.assertEqual(by_subject["Hello"]["tags"], [])

        hello = by_subject["Hello"]["id"]
        answer = await self.patch(hello, {"add": ["VIP", "later"]})
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(answer.json["tags"], ["later", "vip"])  # kept in lower case
        self.assertEqual(answer.json["tag_sources"]["vip"], ["manual"])
        answer = await self.patch(hello, {"remove": ["later"]})
        self.assertEqual(answer.json["tags"], ["vip"])
        one = await self.get(f"/api/v1/messages/{hello}")
        self.assertEqual(one["tags"], ["vip"])  # the message view too

        self.assertEqual(await self.subjects("tag=billing"), ["Invoice 7"])
        self.assertEqual(await self.subjects("q=tag:invoice"), ["Invoice 7"])
        self.assertEqual(await self.subjects("q=tag:vip"), ["Hello"])
        self.assertEqual(await self.subjects("q=-tag:billing -tag:vip"), ["Hidden"])
        self.assertEqual(await self.subjects("q=tag:bill"), [])  # exact, not a substring

    async def test_bad_changes_are_refused_in_words(self) -> None:
        await self.start_tagged()
        await self.send("alice+invoice@example.com", subject="Invoice 7")
        message_id = await self.only_id()
        for body, code, words in [
            ({"add": ["no spaces"]}, 400, "is not a tag"),
            ({"add": ["$label1"]}, 400, "is not a tag"),
            ({"add": "x" * 65}, 400, "is not a tag"),
            ({"rename": ["x"]}, 400, '{"tags": {"add"'),
            ([], 400, '{"tags": {"add"'),
            ({"remove": ["invoice"]}, 409, "address"),
            ({"remove": ["billing"]}, 409, "rule"),
        ]:
            answer = await self.patch(message_id, body)
            self.assertEqual(answer.code, code, (body, answer.body))
            self.assertIn(words, answer.json["error"])
        # Removing a tag the message does not have: nothing to do, no error.
        answer = await self.patch(message_id, {"remove": ["never"]})
        self.assertEqual(answer.code, 200)

    async def test_manual_tag_is_an_imap_keyword_and_back(self) -> None:
        await self.start_tagged()
        await self.send("alice@example.com", subject="Hello")
        message_id = await self.only_id()
        answer = await self.patch(message_id, {"add": ["billing-q3"]})
        self.assertEqual(answer.code, 200, answer.body)

        def with_imap() -> tuple[Any, ...]:
            client = imapclient.IMAPClient("127.0.0.1", port=self.hub.ports["imap"], ssl=False)
            try:
                client.login("alice@example.com", "pw")
                client.select_folder("INBOX")
                [uid] = client.search(["ALL"])
                flags = client.get_flags([uid])[uid]
                client.add_flags([uid], [b"Thunderbird-Tag", b"$Forwarded"])
                return tuple(flags)
            finally:
                client.logout()

        flags = await threads.deferToThread(with_imap)
        self.assertIn(b"billing-q3", flags)
        # The keyword a client set is a tag (a $-keyword is not): a list catches up with the
        # store (inotify: cur/'s mtime, touched by a keyword-only STORE).
        self.assertEqual(await self.subjects("q=tag:thunderbird-tag"), ["Hello"])
        one = await self.get(f"/api/v1/messages/{message_id}")
        self.assertEqual(one["tags"], ["billing-q3", "thunderbird-tag"])
        answer = await self.patch(message_id, {"remove": ["thunderbird-tag"]})
        self.assertEqual(answer.json["tags"], ["billing-q3"])

    async def test_a_bad_rule_is_a_config_error(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            await MailhubTestServer.started(
                self,
                services=("web",),
                web=WebConfig(login=False, tags=(TagRuleConfig("before:someday", "x"),)),
            )
        self.assertIn("[[web.tag]] #1", str(caught.exception))
        self.assertIn("not a date", str(caught.exception))
