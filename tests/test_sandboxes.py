"""mailhub.sandboxes: the list of sandboxes (its file), their logins, and fault rules by login."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailhub.config import ConfigError, SandboxesConfig, dev_config, load
from mailhub.faults.rules import FaultError, FaultRules, Rule, Stage
from mailhub.sandboxes import (
    SANDBOX_DOMAIN,
    SandboxChecker,
    SandboxError,
    Sandboxes,
    SandboxFileError,
    SandboxSweeper,
)
from mailhub.store.store import MailStore


def now(f: Callable[..., Any], /, *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)  # the disk work at once, for these tests


class Registry(SynchronousTestCase):
    def make(self, data: Path | None = None, limit: int = 10) -> Sandboxes:
        data = data or Path(self.mktemp())
        data.mkdir(exist_ok=True)
        store = MailStore(data / "mail", hostname="test")
        boxes = Sandboxes(data, store, limit=limit, clock=lambda: 1700000000.0, run=now)
        boxes.load()
        return boxes

    def create(self, boxes: Sandboxes, name: str = "") -> tuple[Any, str]:
        result: tuple[Any, str] = self.successResultOf(Deferred.fromCoroutine(boxes.create(name)))
        return result

    def test_a_new_sandbox_has_a_mailbox_and_a_login(self) -> None:
        boxes = self.make()
        box, password = self.create(boxes, "signup")
        self.assertEqual(box.address, f"{box.id}@{SANDBOX_DOMAIN}")
        self.assertTrue(boxes.store.has_mailbox(box.address))
        self.assertEqual(boxes.login(box.address, password), box.address)
        self.assertEqual(boxes.login(box.address.upper(), password), box.address)
        self.assertIsNone(boxes.login(box.address, password + "x"))
        self.assertIsNone(boxes.login(f"nobody@{SANDBOX_DOMAIN}", password))
        self.assertNotIn(password, repr(box))
        self.assertNotIn(box.secret, repr(box))

    def test_the_file_survives_a_restart_without_passwords(self) -> None:
        data = Path(self.mktemp())
        boxes = self.make(data)
        box, password = self.create(boxes, "kept")
        text = (data / "sandboxes.json").read_text()
        self.assertNotIn(password, text)
        self.assertEqual(json.loads(text)["sandboxes"][0]["name"], "kept")
        again = self.make(data)
        self.assertEqual([b.id for b in again], [box.id])
        self.assertEqual(again.login(box.address, password), box.address)

    def test_a_broken_file_is_named(self) -> None:
        data = Path(self.mktemp())
        data.mkdir()
        for content in (b"{", b'{"format": 9, "sandboxes": []}', b'{"format": 1}', b"[]"):
            (data / "sandboxes.json").write_bytes(content)
            with self.assertRaises(SandboxFileError) as caught:
                self.make(data)
            self.assertIn("sandboxes.json", str(caught.exception))
        bad_id = {
            "format": 1,
            "sandboxes": [{"id": "../x", "name": "", "created": 0, "secret": ""}],
        }
        (data / "sandboxes.json").write_text(json.dumps(bad_id))
        self.assertRaises(SandboxFileError, self.make, data)

    def test_the_limit_and_names(self) -> None:
        boxes = self.make(limit=1)
        self.create(boxes)
        failure = self.failureResultOf(Deferred.fromCoroutine(boxes.create("")), SandboxError)
        self.assertEqual(failure.value.status, 409)
        boxes = self.make()
        for bad in ("x" * 201, "two\nlines", 5):
            failure = self.failureResultOf(Deferred.fromCoroutine(boxes.create(bad)), SandboxError)
            self.assertEqual(failure.value.status, 400)
        self.assertEqual(len(boxes), 0)

    def test_delete_removes_the_mail_and_tells(self) -> None:
        data = Path(self.mktemp())
        boxes = self.make(data)
        box, password = self.create(boxes)
        told: list[str] = []
        boxes.on_delete.append(lambda b: told.append(b.id))
        inbox = data / "mail" / SANDBOX_DOMAIN / box.id
        (inbox / "new" / "1.M1P1Q1.test").write_bytes(b"Subject: x\r\n\r\n")
        self.assertTrue(self.successResultOf(Deferred.fromCoroutine(boxes.delete(box.id))))
        self.assertEqual(told, [box.id])
        self.assertFalse(inbox.exists())
        self.assertEqual(list(inbox.parent.iterdir()), [])
        self.assertIsNone(boxes.login(box.address, password))
        self.assertFalse(self.successResultOf(Deferred.fromCoroutine(boxes.delete(box.id))))
        self.assertEqual([b.id for b in self.make(data)], [])

    def test_a_deletion_cut_short_is_finished_at_start(self) -> None:
        data = Path(self.mktemp())
        box, _ = self.create(self.make(data))
        root = data / "mail" / SANDBOX_DOMAIN
        trash = root / ".deleted-0123456789abcdef-00"
        (trash / "new").mkdir(parents=True)
        orphan = root / "00000000deadbeef"  # a delivery in flight wrote after a deletion
        (orphan / "new").mkdir(parents=True)
        self.make(data)
        self.assertFalse(trash.exists())
        self.assertFalse(orphan.exists())
        self.assertTrue((root / box.id).is_dir())  # a sandbox's own mailbox stays


class GroupCommit(SynchronousTestCase):
    def test_changes_during_a_write_share_the_next_one(self) -> None:
        data = Path(self.mktemp())
        data.mkdir()
        writes: list[tuple[bytes, Deferred[None]]] = []

        def run(f: Callable[..., Any], /, *args: Any) -> Deferred[Any]:
            if getattr(f, "__name__", "") != "_write":
                return maybeDeferred(f, *args)
            d: Deferred[None] = Deferred()
            writes.append((args[0], d))
            return d.addCallback(lambda _: f(*args))

        boxes = Sandboxes(data, MailStore(data / "mail", hostname="t"), run=run)
        made = [Deferred.fromCoroutine(boxes.create(f"n{i}")) for i in range(3)]
        self.assertEqual(len(writes), 1)  # the first write runs; the others wait for it
        writes[0][1].callback(None)
        self.assertEqual(len(writes), 2)  # one more write carries both waiting changes
        self.assertEqual(len(json.loads(writes[1][0])["sandboxes"]), 3)
        self.assertNoResult(made[2])
        writes[1][1].callback(None)
        for d in made:
            self.successResultOf(d)
        self.assertEqual(len(writes), 2)
        on_disk = json.loads((data / "sandboxes.json").read_text())["sandboxes"]
        self.assertEqual(sorted(b["name"] for b in on_disk), ["n0", "n1", "n2"])


class Expiry(SynchronousTestCase):
    def test_a_sandbox_with_a_ttl_is_swept_when_its_time_is_up(self) -> None:
        data = Path(self.mktemp())
        data.mkdir()
        clock = Clock()
        clock.advance(1000)
        boxes = Sandboxes(
            data, MailStore(data / "mail", hostname="t"), clock=clock.seconds, run=now
        )
        short, _ = self.successResultOf(Deferred.fromCoroutine(boxes.create("short", ttl=90)))
        kept, _ = self.successResultOf(Deferred.fromCoroutine(boxes.create("kept")))
        self.assertEqual(short.expires, 1090)
        sweeper = SandboxSweeper(boxes, clock, interval=60)
        sweeper.startService()
        self.addCleanup(sweeper.stopService)
        clock.advance(60)
        self.assertEqual({b.id for b in boxes}, {short.id, kept.id})
        clock.advance(60)  # 1120 >= 1090
        self.assertEqual([b.id for b in boxes], [kept.id])
        self.assertFalse((data / "mail" / SANDBOX_DOMAIN / short.id).exists())
        for bad in (0, -1, 31 * 86400, "60", True):
            failure = self.failureResultOf(
                Deferred.fromCoroutine(boxes.create("", ttl=bad)),
                SandboxError,  # type: ignore[arg-type]
            )
            self.assertEqual(failure.value.status, 400)


class Logins(SynchronousTestCase):
    def setUp(self) -> None:
        data = Path(self.mktemp())
        data.mkdir()
        self.boxes = Sandboxes(data, MailStore(data / "mail", hostname="t"), run=now)
        self.box, self.password = self.successResultOf(Deferred.fromCoroutine(self.boxes.create()))

    def test_sandbox_names_are_the_sandboxes_to_decide(self) -> None:
        class AnyLogin:
            def requestAvatarId(self, credentials: Any) -> Deferred[str]:
                return succeed(credentials.username.decode())

        checker = SandboxChecker(self.boxes, AnyLogin())  # type: ignore[arg-type]
        login = self.box.address.encode()
        self.assertEqual(
            self.successResultOf(
                checker.requestAvatarId(UsernamePassword(login, self.password.encode()))
            ),
            self.box.address,
        )
        # The dev stack's any-login would let anyone in: not for a sandbox's name.
        self.failureResultOf(
            checker.requestAvatarId(UsernamePassword(login, b"guess")), UnauthorizedLogin
        )
        self.failureResultOf(
            checker.requestAvatarId(UsernamePassword(f"x@{SANDBOX_DOMAIN}".encode(), b"p")),
            UnauthorizedLogin,
        )
        self.assertEqual(
            self.successResultOf(checker.requestAvatarId(UsernamePassword(b"a@b.test", b"p"))),
            "a@b.test",
        )
        alone = SandboxChecker(self.boxes, None)
        self.failureResultOf(
            alone.requestAvatarId(UsernamePassword(b"a@b.test", b"p")), UnauthorizedLogin
        )


class FaultsByLogin(SynchronousTestCase):
    def test_a_rule_for_one_login_fires_only_for_it(self) -> None:
        rules = FaultRules()
        rules.add({"stage": "rcpt", "action": "reply", "code": 550, "login": "A@sandbox.invalid"})
        self.assertIsNone(rules.decide(Stage.RCPT, recipients=("x@y",)))
        self.assertIsNone(rules.decide(Stage.RCPT, recipients=("x@y",), login="b@sandbox.invalid"))
        self.assertIsNotNone(
            rules.decide(Stage.RCPT, recipients=("x@y",), login="a@sandbox.invalid")
        )
        self.assertEqual(rules.list()[0]["login"], "a@sandbox.invalid")
        rules.add({"stage": "mail", "action": "reply", "code": 451})  # for everyone
        self.assertEqual(rules.remove_login("a@sandbox.invalid"), 1)
        self.assertEqual([r["stage"] for r in rules.list()], ["mail"])

    def test_the_login_is_known_only_from_mail_on(self) -> None:
        for stage in ("connect", "ehlo", "starttls"):
            with self.assertRaises(FaultError) as caught:
                Rule.from_dict({"stage": stage, "action": "disconnect", "login": "a@b"})
            self.assertEqual(caught.exception.key, "login")
        with self.assertRaises(FaultError):
            Rule.from_dict({"stage": "mail", "action": "disconnect", "login": ""})
        with self.assertRaises(FaultError):
            Rule.from_dict({"stage": "mail", "action": "disconnect", "login": 5})


class Section(SynchronousTestCase):
    """[sandboxes]: on in the dev stack, off in production; max."""

    def load_text(self, text: str) -> SandboxesConfig:
        path = Path(self.mktemp())
        path.write_text('[domains]\nlocal = ["a.example"]\n' + text)
        return load(path).sandboxes

    def test_defaults_and_set(self) -> None:
        self.assertEqual(self.load_text(""), SandboxesConfig(enabled=False, max=1000))
        self.assertTrue(dev_config().sandboxes.enabled)
        self.assertTrue(self.load_text("[server]\ndev = true\n").enabled)
        self.assertEqual(
            self.load_text("[sandboxes]\nenabled = true\nmax = 5\n"), SandboxesConfig(True, 5)
        )

    def test_mistakes(self) -> None:
        for text, key in (
            ("[sandboxes]\nmax = 0\n", "[sandboxes] max"),
            ("[sandboxes]\nenabled = 1\n", "[sandboxes] enabled"),
            ("[sandboxes]\nmaximum = 3\n", "[sandboxes] maximum"),
        ):
            with self.assertRaises(ConfigError, msg=text) as caught:
                self.load_text(text)
            self.assertEqual(caught.exception.key, key)
