"""The web API after a folder's UID list is lost and its messages are numbered anew (a new
UIDVALIDITY, RFC 3501 2.3.1.1): the feed's entries hold UIDs of the old numbering, in which
m1 was UID 2 - and UID 2 is m2 now. The API names messages by their Maildir base name (the
id), so each request reads, tags and deletes the message its id names, found again by that
name, and no other (tests/test_uidvalidity_renumbered.py: IMAP and POP3).

m0, m1, m2 got UIDs 1, 2, 3; UID 1 was expunged. Numbered anew (arrival order), m1 is UID 1,
m2 UID 2, a newcomer UID 3.
"""

from __future__ import annotations

import json
import os
from typing import Any

from mailhub.store import names, uidlist
from mailhub.store.maildir import Folder
from tests.support.web import WebTestCase

ALICE = "alice@example.com"
JSON = {"Content-Type": ["application/json"]}


def message(subject: str) -> bytes:
    return f"Subject: {subject}\r\nMessage-ID: <{subject}@example.com>\r\n\r\nhi\r\n".encode()


class Renumbered(WebTestCase):
    async def setUp(self) -> None:
        await self.start()
        self.without_inotify()
        assert self.hub.service is not None
        self.store = self.hub.service.store
        self.inbox = self.store.mailbox(ALICE, create=True).folder()
        for n in range(3):
            self.inbox.append(message(f"m{n}"))
        self.inbox.expunge([1])
        page = await self.get("/api/v1/messages")  # the feed knows m1 as UID 2, m2 as 3
        self.ids = {m["subject"]: m["id"] for m in page["messages"]}
        self.root = self.store.root / "example.com" / "alice"
        self.lose_the_list()
        if not self._testMethodName.startswith("test_own_look_"):
            self.renumber()

    def lose_the_list(self) -> None:
        """The list lost, and a message delivered by another program."""
        os.unlink(self.root / uidlist.FILENAME)
        base = names.unique_name("mail.example.org")
        (self.root / "tmp" / base).write_bytes(message("newcomer"))
        os.rename(self.root / "tmp" / base, self.root / "new" / base)

    def renumber(self) -> None:
        """A look - not the web feed's - numbers the folder anew."""
        folder: Folder = self.site.feed.folder(self.site.feed.entries[self.ids["m1"]].ref)
        self.assertEqual([m.uid for m in folder.sync().messages], [1, 2, 3])
        # (the feed has not looked since: its entry still says UID 2)
        self.assertEqual(self.site.feed.entries[self.ids["m1"]].uid, 2)

    def files(self) -> dict[str, str]:
        """Subject -> the name of the file holding it (new/ or cur/)."""
        found = {}
        for sub in ("new", "cur"):
            for fn in os.listdir(self.root / sub):
                data = (self.root / sub / fn).read_bytes()
                found[data.split(b"\r\n")[0].decode().removeprefix("Subject: ")] = fn
        return found

    async def patch(self, subject: str, body: dict[str, Any]) -> Any:
        got = await self.call(
            "PATCH",
            f"/api/v1/messages/{self.ids[subject]}",
            data=json.dumps(body).encode(),
            headers=JSON,
        )
        self.assertEqual(got.code, 200, got.body)
        return got.json

    async def test_raw_is_the_message_the_id_names(self) -> None:
        got = await self.call("GET", f"/api/v1/messages/{self.ids['m1']}/raw")
        self.assertEqual(got.code, 200, got.body)
        self.assertIn(b"Message-ID: <m1@example.com>", got.body)

    async def test_a_tag_goes_on_that_message_only(self) -> None:
        before = self.files()
        got = await self.patch("m1", {"tags": {"add": ["urgent"]}})
        self.assertIn("urgent", got["tags"])
        after = self.files()
        self.assertEqual(after["m2"], before["m2"])
        self.assertEqual(after["newcomer"], before["newcomer"])
        folder = self.store.mailbox(ALICE).folder()
        keywords = {m.uid: m.keywords for m in folder.sync().messages}
        self.assertEqual(keywords, {1: frozenset({"urgent"}), 2: frozenset(), 3: frozenset()})

    async def test_seen_goes_on_that_message_only(self) -> None:
        await self.patch("m1", {"seen": True})
        flags = {s: fn.partition(":2,")[2] for s, fn in self.files().items()}
        self.assertEqual(flags, {"m1": "S", "m2": "", "newcomer": ""})

    async def test_delete_removes_that_message_only(self) -> None:
        got = await self.call("DELETE", f"/api/v1/messages/{self.ids['m1']}")
        self.assertEqual(got.code, 200, got.body)
        self.assertEqual(sorted(self.files()), ["m2", "newcomer"])

    async def test_delete_many_removes_those_messages_only(self) -> None:
        body = json.dumps({"ids": [self.ids["m1"]]}).encode()
        got = await self.call("DELETE", "/api/v1/messages", data=body, headers=JSON)
        self.assertEqual(got.code, 200, got.body)
        self.assertEqual(got.json["deleted"], [self.ids["m1"]])
        self.assertEqual(sorted(self.files()), ["m2", "newcomer"])

    async def test_own_look_that_renumbers_tags_the_message_the_id_names(self) -> None:
        # The keyword change's own look numbers anew: refused by the store (its UID is of the
        # list before), made again with the UID found by name.
        await self.patch("m1", {"tags": {"add": ["urgent"]}})
        folder = self.store.mailbox(ALICE).folder()
        keywords = {m.uid: m.keywords for m in folder.sync().messages}
        self.assertEqual(keywords, {1: frozenset({"urgent"}), 2: frozenset(), 3: frozenset()})
