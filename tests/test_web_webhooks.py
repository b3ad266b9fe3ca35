"""Webhooks (mailhub.web.webhooks): real HTTP to a twisted.web receiver on 127.0.0.1, the
retry and timeout timers on a task.Clock, messages from a real store through the web feed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, succeed
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailhub.config import WebhookConfig
from mailhub.store import MailStore
from mailhub.web.feed import Entry, MailFeed
from mailhub.web.webhooks import AgentPoster, Hook, Webhooks, _Item, shown_url, sign, verify
from tests.support.webhooks import Receiver


def render(entry: Entry) -> dict[str, Any]:
    """A stand-in for the API's summary (tests/integration/test_web_webhooks.py has the real)."""
    return {"id": entry.id, "mailbox": entry.ref.mailbox, "folder": entry.ref.folder, "tags": []}


class _Hooks(TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.store = MailStore(Path(self.mktemp()), "localhost", now=lambda: 1_800_000_000.0)
        self.feed = MailFeed(self.store, self.clock, use_inotify=False)
        self.receiver = Receiver()
        self.url = self.receiver.listen()
        self.addCleanup(self.receiver.port.stopListening)  # type: ignore[union-attr]
        self.poster = AgentPoster(reactor)
        self.addCleanup(self.poster.close)
        self.logged: list[str] = []

        def observe(event: LogEvent) -> None:
            if event.get("log_namespace") == "mailhub.web.webhooks":
                self.logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def hooks(self, *configs: WebhookConfig) -> Webhooks:
        hooks = Webhooks(self.feed, self.clock, configs, render, self.poster)
        hooks.start()
        self.addCleanup(hooks.stop)
        return hooks

    def config(self, **kwargs: Any) -> WebhookConfig:
        return WebhookConfig(url=self.url, secret="s3cret", **kwargs)

    def deliver(self, n: int = 1, address: str = "alice@example.com") -> list[str]:
        folder = self.store.mailbox(address, create=True).folder()
        for i in range(n):
            folder.append(f"Subject: number {i}\r\n\r\nhi\r\n".encode())
        changes = self.feed.catch_up()
        return [c.entry.id for c in changes if c.kind == "new"]


class Delivery(_Hooks):
    async def test_signed_json_post(self) -> None:
        hooks = self.hooks(self.config())
        [message] = self.deliver()
        [got] = await self.receiver.requests(1)
        self.assertEqual(got.json["event"], "message.new")
        self.assertEqual(got.json["message"]["id"], message)
        self.assertEqual(got.json["message"]["links"]["raw"], f"/api/v1/messages/{message}/raw")
        self.assertEqual(got.headers["content-type"], "application/json")
        self.assertEqual(got.headers["x-mailhub-delivery"], got.json["delivery"])
        self.assertEqual(got.headers["x-mailhub-timestamp"], "1800000000")
        signature = got.headers["x-mailhub-signature"]
        self.assertTrue(verify("s3cret", "1800000000", signature, got.body, now=1_800_000_100))
        # A different secret, body or timestamp does not verify; nor a stale timestamp.
        self.assertFalse(verify("other", "1800000000", signature, got.body, 1_800_000_000))
        self.assertFalse(verify("s3cret", "1800000000", signature, got.body + b" ", 1_800_000_000))
        self.assertFalse(verify("s3cret", "1800000001", signature, got.body, 1_800_000_000))
        self.assertFalse(verify("s3cret", "1800000000", signature, got.body, 1_800_000_301))
        await self._settled(hooks, delivered=1)
        [attempt] = hooks.describe()[0]["attempts"]
        self.assertEqual((attempt["status"], attempt["outcome"]), (200, "delivered"))
        self.assertIsNotNone(attempt["latency_ms"])

    async def _settled(self, hooks: Webhooks, index: int = 0, **counts: int) -> None:
        """Until the hook's counters say so (the answer is read after the receiver wrote)."""
        while any(hooks.describe()[index][k] != v for k, v in counts.items()):
            await task.deferLater(reactor, 0.01, lambda: None)

    async def test_500_then_200_retried_with_backoff(self) -> None:
        self.receiver.answers.extend([500, 503, 200])
        hooks = self.hooks(self.config(retry_base=2.0))
        [message] = self.deliver()
        await self.receiver.requests(1)
        await self._settled(hooks, failed_attempts=1)
        self.clock.advance(1.9)
        self.assertEqual(len(self.receiver.got), 1)  # not before retry_base
        self.clock.advance(0.1)
        await self.receiver.requests(2)
        await self._settled(hooks, failed_attempts=2)
        self.clock.advance(3.9)  # the second retry comes twice as late
        self.assertEqual(len(self.receiver.got), 2)
        self.clock.advance(0.1)
        got = await self.receiver.requests(3)
        await self._settled(hooks, delivered=1)
        self.assertEqual({g.headers["x-mailhub-delivery"] for g in got}, {got[0].json["delivery"]})
        self.assertEqual([g.headers["x-mailhub-attempt"] for g in got], ["1", "2", "3"])
        # Each attempt is signed with its own time (the body is the same).
        stamps = [int(g.headers["x-mailhub-timestamp"]) for g in got]
        self.assertEqual(stamps, [1_800_000_000, 1_800_000_002, 1_800_000_006])
        for g in got:
            self.assertEqual(
                g.headers["x-mailhub-signature"],
                sign("s3cret", int(g.headers["x-mailhub-timestamp"]), g.body),
            )
        log = hooks.describe()[0]["attempts"]  # newest first
        self.assertEqual(
            [(a["status"], a["outcome"], a["attempt"]) for a in log],
            [(200, "delivered", 3), (503, "retrying", 2), (500, "retrying", 1)],
        )
        self.assertEqual(log[1]["error"], "answered 503")
        self.assertEqual({a["message"] for a in log}, {message})

    async def test_hanging_receiver_is_timed_out_and_the_queue_goes_on(self) -> None:
        self.receiver.answers.append("hang")
        hooks = self.hooks(self.config(timeout=5.0, retry_base=1.0))
        first, second = self.deliver(2)
        [hung] = await self.receiver.requests(1)
        self.assertEqual(hooks.describe()[0]["queued"], 1)  # one at a time: in order
        self.clock.advance(5.0)
        await hung.lost  # the attempt was cancelled: its connection closed
        await self._settled(hooks, failed_attempts=1)
        attempt = hooks.describe()[0]["attempts"][0]
        self.assertEqual(attempt["error"], "no answer within 5 s")
        self.assertIsNone(attempt["status"])
        self.clock.advance(1.0)
        got = await self.receiver.requests(3)
        self.assertEqual([g.message_id for g in got], [first, first, second])
        await self._settled(hooks, delivered=2, queued=0)

    async def test_a_huge_answer_is_not_read_to_its_end(self) -> None:
        self.receiver.answers.append("big")
        hooks = self.hooks(self.config())
        self.deliver(2)
        await self.receiver.requests(2)  # the next one went: the first answer did not hold it
        await self._settled(hooks, delivered=2)

    async def test_gives_up_after_max_attempts_then_the_next_message(self) -> None:
        self.receiver.answers.extend([500, 500])
        hooks = self.hooks(self.config(max_attempts=2, retry_base=1.0))
        first, second = self.deliver(2)
        await self.receiver.requests(1)
        await self._settled(hooks, failed_attempts=1)
        self.clock.advance(1.0)
        got = await self.receiver.requests(3)
        self.assertEqual([g.message_id for g in got], [first, first, second])
        await self._settled(hooks, gave_up=1, delivered=1)
        self.assertTrue(any("gave up on" in line and first in line for line in self.logged))

    async def test_gives_up_past_max_age(self) -> None:
        self.receiver.default = 500
        hooks = self.hooks(self.config(max_age=10.0, retry_base=4.0, max_attempts=100))
        self.deliver()
        await self.receiver.requests(1)
        await self._settled(hooks, failed_attempts=1)
        self.clock.advance(4.0)  # attempt 2 at +4: the next would be at +12 > max_age
        await self.receiver.requests(2)
        await self._settled(hooks, gave_up=1)
        self.clock.advance(100)
        self.assertEqual(len(self.receiver.got), 2)

    async def test_bounded_queue_drops_are_counted_and_logged(self) -> None:
        self.receiver.default = "hang"
        hooks = self.hooks(self.config(queue_size=3, timeout=60))
        ids = self.deliver(6)
        await self.receiver.requests(1)
        described = hooks.describe()[0]
        self.assertEqual(described["in_flight"], ids[0])
        self.assertEqual((described["queued"], described["dropped"]), (3, 2))
        dropped = [a for a in described["attempts"] if a["outcome"] == "dropped"]
        self.assertEqual({a["message"] for a in dropped}, set(ids[4:]))
        self.assertEqual(sum("queue full" in line for line in self.logged), 2)
        self.assertTrue(any(ids[5] in line for line in self.logged))

    async def test_burst_of_100_in_order_per_hook(self) -> None:
        second = Receiver()
        url2 = second.listen()
        self.addCleanup(second.port.stopListening)  # type: ignore[union-attr]
        second.answers.extend([500] * 3)  # a slow start: the queue holds the rest, in order
        hooks = self.hooks(self.config(), WebhookConfig(url=url2, retry_base=0.5))
        ids = self.deliver(100)
        self.assertEqual(len(ids), 100)
        one = await self.receiver.requests(100)
        self.assertEqual([g.message_id for g in one], ids)
        for failed in (1, 2, 3):
            await self._settled(hooks, 1, failed_attempts=failed)
            self.clock.advance(2.0)  # the retry (0.5, 1, 2 s)
        two = await second.requests(103)
        self.assertEqual([g.message_id for g in two[3:]], ids)
        self.assertNotIn("x-mailhub-signature", two[0].headers)  # no secret: unsigned
        await self._settled(hooks, 0, delivered=100, queued=0)
        await self._settled(hooks, 1, delivered=100, queued=0)

    async def test_mail_there_before_the_start_is_not_sent(self) -> None:
        self.deliver(2)
        self.feed.startService()
        self.addCleanup(self.feed.stopService)
        hooks = self.hooks(self.config())
        [new] = self.deliver(1)
        [got] = await self.receiver.requests(1)
        self.assertEqual(got.message_id, new)
        await self._settled(hooks, delivered=1)
        self.assertEqual(len(self.receiver.got), 1)


class _FakePoster:
    def __init__(self) -> None:
        self.posted: list[bytes] = []

    def post(self, url: str, headers: dict[str, str], body: bytes) -> Deferred[int]:
        self.posted.append(body)
        return succeed(200)

    def close(self) -> Deferred[None]:
        return succeed(None)


class Filters(SynchronousTestCase):
    def hook(self, **kwargs: Any) -> tuple[Hook, _FakePoster]:
        poster = _FakePoster()
        return Hook(WebhookConfig(url="http://x/", **kwargs), poster, task.Clock()), poster

    def test_filters_must_all_hold(self) -> None:
        summary = {
            "mailbox": "bob@example.com",
            "folder": "INBOX",
            "tags": ["billing"],
            "sandbox": "sb1",
        }
        for kwargs, wanted in [
            ({}, True),
            ({"mailbox": "bob@example.com"}, True),
            ({"mailbox": "alice@example.com"}, False),
            ({"folder": "INBOX", "tag": "billing"}, True),
            ({"folder": "Sent"}, False),
            ({"tag": "urgent"}, False),
            ({"sandbox": "sb1"}, True),
            ({"sandbox": "sb2"}, False),
        ]:
            self.assertEqual(self.hook(**kwargs)[0].wants(summary), wanted, kwargs)
        # A message without a sandbox never matches a sandbox filter.
        self.assertFalse(self.hook(sandbox="sb1")[0].wants({"mailbox": "bob@example.com"}))
        self.assertFalse(self.hook(sandbox="*")[0].wants({"mailbox": "bob@example.com"}))
        # A sandbox is the mailbox <id>@sandbox.invalid (mailhub.sandboxes); "*": any sandbox.
        boxed = {"mailbox": "k3x9@sandbox.invalid", "folder": "INBOX"}
        self.assertTrue(self.hook(sandbox="k3x9")[0].wants(boxed))
        self.assertTrue(self.hook(sandbox="*")[0].wants(boxed))
        self.assertFalse(self.hook(sandbox="other")[0].wants(boxed))

    def test_posts_the_body_as_given(self) -> None:
        hook, poster = self.hook()
        hook.offer(_Item("m1", "d1", b'{"a":1}', 0.0))
        self.assertEqual(poster.posted, [b'{"a":1}'])
        self.assertEqual(hook.describe()["delivered"], 1)

    def test_passwords_stay_out_of_the_api(self) -> None:
        self.assertEqual(
            shown_url("https://user:pw@hooks.example:8443/x?y=1"),
            "https://user:***@hooks.example:8443/x?y=1",
        )
        hook, _ = self.hook()
        self.assertNotIn("secret", json.dumps(hook.describe()))
