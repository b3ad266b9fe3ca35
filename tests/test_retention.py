"""The dev stack's retention (mailhub.retention): the oldest go first, bounded work per turn,
max_age on an injected clock, the count kept across restarts, shown by /api/v1/info; production
never prunes."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from mailhub.config import DevConfig, ListenersConfig, dev_config
from mailhub.retention import PRUNE_DELAY, STATE_FILE, Retention
from mailhub.service import build
from mailhub.store import MailStore, uidlist
from mailhub.store.changes import StoreChanges
from mailhub.store.maildir import Folder
from tests.support.web import WebTestCase


def message(n: int) -> bytes:
    return f"Subject: number {n}\r\n\r\nbody {n}\r\n".encode()


class Pruning(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.store = MailStore(self.dir / "mail", hostname="test")
        self.clock = task.Clock()
        self.clock.advance(100_000)

    def changes(self) -> StoreChanges:
        changes = StoreChanges(self.store, self.clock, scan_interval=1.0, use_inotify=False)
        changes.startService()
        self.addCleanup(changes.stopService)
        return changes

    def retention(self, changes: StoreChanges, **kwargs: object) -> Retention:
        options: dict[str, object] = {"max_messages": 0, "max_age": None} | kwargs
        r = Retention(
            self.store,
            changes,
            self.clock,
            state_file=self.dir / STATE_FILE,
            **options,  # type: ignore[arg-type]
        )
        r.startService()
        self.addCleanup(r.stopService)
        return r

    def add(self, address: str, n: int, folder: str = "INBOX") -> None:
        box = self.store.mailbox(address, create=True)
        if folder != "INBOX" and not box.has_folder(folder):
            box.create_folder(folder)
        box.folder(folder).append(message(n), internaldate=50_000 + n)

    def subjects(self, address: str, folder: str = "INBOX") -> list[str]:
        f = self.store.mailbox(address).folder(folder)
        return [f.read_message(m.uid).split(b"\r\n", 1)[0].decode() for m in f.sync().messages]

    def test_oldest_go_first_across_mailboxes_and_folders(self) -> None:
        for n, (address, folder) in enumerate(
            [("a@x.test", "INBOX"), ("b@x.test", "INBOX"), ("a@x.test", "Junk"),
             ("b@x.test", "INBOX"), ("a@x.test", "INBOX")]
        ):  # fmt: skip
            self.add(address, n, folder)
        r = self.retention(self.changes(), max_messages=2)
        self.clock.advance(0)
        self.assertEqual(r.pruned, 3)
        self.assertEqual(self.subjects("a@x.test"), ["Subject: number 4"])
        self.assertEqual(self.subjects("b@x.test"), ["Subject: number 3"])
        self.assertEqual(self.subjects("a@x.test", "Junk"), [])
        self.assertEqual(r.info().messages, 2)

    def test_of_one_second_the_first_to_arrive_goes_first(self) -> None:
        # Names say the arrival to the microsecond, as numbers: by text "M100000" (the later)
        # sorts before "M99999"; the UIDs, given in arrival order, do not.
        self.store.mailbox("a@x.test", create=True)
        new = self.dir / "mail" / "x.test" / "a" / "new"
        for n, base in enumerate(["50000.M99999P1Q1.test", "50000.M100000P1Q2.test"]):
            (new / base).write_bytes(message(n))
        r = self.retention(self.changes(), max_messages=1)
        self.clock.advance(0)
        self.assertEqual(r.pruned, 1)
        self.assertEqual(self.subjects("a@x.test"), ["Subject: number 1"])

    def test_after_deliveries_with_bounded_work_per_turn(self) -> None:
        changes = self.changes()
        r = self.retention(changes, max_messages=3, batch=2)
        for n in range(10):
            self.add("a@x.test", n)
        changes.scan()  # the feed notices the deliveries (here by a scan: no inotify)
        # The deliveries asked for a pass on the next turn; each pass does at most a batch and
        # asks for another turn while more remain.
        self.assertTrue(r.pass_pending)
        counts = []
        for _ in range(5):
            counts.append(r.prune())  # one reactor turn's pass
            counts.append(int(r.pass_pending))
        self.assertEqual(counts, [2, 1, 2, 1, 2, 1, 1, 0, 0, 0])
        self.assertEqual(r.pruned, 7)
        self.assertEqual(self.subjects("a@x.test"), [f"Subject: number {n}" for n in (7, 8, 9)])

    def test_at_the_limit_deliveries_are_pruned_together(self) -> None:
        changes = self.changes()
        for n in range(3):
            self.add("a@x.test", n)
        r = self.retention(changes, max_messages=3)
        self.clock.advance(0)
        passes: list[list[int]] = []
        real = Folder.expunge

        def expunge(folder: Folder, uids: Iterable[int], **kw: Any) -> list[int]:
            passes.append(list(uids))
            return real(folder, passes[-1], **kw)

        self.patch(Folder, "expunge", expunge)
        for n in range(3, 6):  # one over the limit at each delivery
            self.add("a@x.test", n)
            changes.scan()
            self.clock.advance(0)
        self.assertEqual((r.pruned, passes), (0, []))
        self.clock.advance(PRUNE_DELAY)
        self.assertEqual((r.pruned, len(passes), len(passes[0])), (3, 1, 3))
        self.assertEqual(self.subjects("a@x.test"), [f"Subject: number {n}" for n in (3, 4, 5)])

    def test_max_age_with_an_injected_clock(self) -> None:
        now = int(self.clock.seconds())
        box = self.store.mailbox("a@x.test", create=True).folder()
        box.append(message(1), internaldate=now - 500)
        box.append(message(2), internaldate=now - 50)
        r = self.retention(self.changes(), max_age=100.0)
        self.clock.advance(0)
        self.assertEqual((r.pruned, self.subjects("a@x.test")), (1, ["Subject: number 2"]))
        self.clock.advance(49)  # number 2 is 99 s old
        self.assertEqual(r.pruned, 1)
        self.clock.advance(2)  # now past 100 s: the age timer prunes it
        self.assertEqual((r.pruned, self.subjects("a@x.test")), (2, []))

    def test_the_count_survives_a_restart(self) -> None:
        for n in range(4):
            self.add("a@x.test", n)
        changes = self.changes()
        r = self.retention(changes, max_messages=1)
        self.clock.advance(0)
        r.stopService()
        changes.stopService()
        self.assertEqual(json.loads((self.dir / STATE_FILE).read_text())["pruned"], 3)
        again = self.retention(self.changes(), max_messages=1)  # a new process
        self.clock.advance(0)  # its feed's first look
        self.assertEqual((again.pruned, again.info().messages), (3, 1))

    def test_messages_deleted_otherwise_are_forgotten(self) -> None:
        for n in range(3):
            self.add("a@x.test", n)
        changes = self.changes()
        r = self.retention(changes, max_messages=2)
        self.clock.advance(0)
        self.assertEqual(r.pruned, 1)
        folder = self.store.mailbox("a@x.test").folder()
        folder.expunge([m.uid for m in folder.sync().messages])
        changes.scan()
        self.assertEqual(r.info().messages, 0)
        self.add("a@x.test", 9)
        changes.scan()
        self.clock.advance(0)
        self.assertEqual((r.pruned, self.subjects("a@x.test")), (1, ["Subject: number 9"]))

    def test_after_the_uid_list_is_numbered_anew_the_oldest_goes_not_another(self) -> None:
        # Its index knew number 1 as UID 2; numbered anew (a lost UID list: a new UIDVALIDITY,
        # RFC 3501 2.3.1.1) number 1 is UID 1 and UID 2 is number 2. The pass finds number 1
        # again by its base name.
        changes = self.changes()
        r = self.retention(changes, max_messages=2)
        for n in range(2):
            self.add("a@x.test", n)
        folder = self.store.mailbox("a@x.test").folder()
        folder.expunge([1])
        changes.scan()
        self.clock.advance(0)
        (self.dir / "mail" / "x.test" / "a" / uidlist.FILENAME).unlink()
        self.assertEqual([m.uid for m in folder.sync().messages], [1])
        for n in (2, 3):
            self.add("a@x.test", n)  # UIDs 2 and 3
        changes.scan()
        self.assertEqual(r.prune(), 1)
        self.assertEqual(self.subjects("a@x.test"), ["Subject: number 2", "Subject: number 3"])


class Wiring(SynchronousTestCase):
    def test_production_never_prunes(self) -> None:
        config = dataclasses.replace(
            dev_config(self.mktemp()), dev=False, listeners=ListenersConfig()
        )
        self.assertIsNone(build(config).retention)

    def test_dev_stack_prunes_by_default(self) -> None:
        service = build(dev_config(self.mktemp()))
        assert service.retention is not None
        self.assertEqual((service.retention.max_messages, service.retention.max_age), (5000, None))


class OverHTTP(WebTestCase):
    async def test_info_says_how_many_were_pruned(self) -> None:
        await self.start(retention=DevConfig(max_messages=2))
        for n in range(4):
            await self.send(subject=f"number {n}")
        assert self.hub.service is not None and self.hub.service.retention is not None
        retention = self.hub.service.retention
        await retention.wait_pruned(2)  # on the turn after the feed notices the deliveries
        info = await self.get("/api/v1/info")
        self.assertEqual(info["retention"]["pruned"], 2)
        self.assertEqual(info["retention"]["max_messages"], 2)
        page = await self.get("/api/v1/messages")
        self.assertEqual([m["subject"] for m in page["messages"]], ["number 3", "number 2"])
