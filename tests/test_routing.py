"""Local copies to the store, remote ones to the queue; the queue's local courier."""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mailhub.config import DomainsConfig, RelayConfig, Smarthost, dev_config
from mailhub.envelope import Envelope, Recipient
from mailhub.interfaces import DeliveryError, ICourier, IMessageSink, Outcome
from mailhub.routing import LOCAL, REMOTE, Router, SplitSink, local_domains, policy_resolver
from mailhub.smtp.policy import RecipientPolicy
from mailhub.store.courier import LocalCourier
from mailhub.store.delivery import GroupCommitter, MaildirSink
from mailhub.store.store import MailStore
from tests.support.smtp import MemorySink

LOCAL_DOMAINS = {"example.com"}


def is_local(domain: str) -> bool:
    return domain in LOCAL_DOMAINS


def envelope(*mailboxes: str) -> Envelope:
    return Envelope(
        queue_id="Q1", mail_from="a@example.net", recipients=[Recipient(m, m) for m in mailboxes]
    )


class Routing(SynchronousTestCase):
    def test_router(self) -> None:
        route = Router(is_local)
        self.assertEqual(route("bob@Example.COM"), (LOCAL, "example.com"))
        self.assertEqual(route("x@elsewhere.example"), (REMOTE, "elsewhere.example"))

    def test_all_local_goes_straight_to_the_store(self) -> None:
        local, remote = MemorySink(), MemorySink()
        sink = SplitSink(local, remote, is_local)
        verifyObject(IMessageSink, sink)
        message = sink.open(envelope("b@example.com", "c@example.com"))
        message.write(b"Subject: x\r\n\r\nbody\r\n")
        self.assertEqual(self.successResultOf(message.commit()), "Q1")
        self.assertEqual(len(local.delivered), 1)
        self.assertEqual(remote.delivered, [])

    def test_mixed_recipients_split_and_both_must_commit(self) -> None:
        local, remote = MemorySink(), MemorySink()
        message = SplitSink(local, remote, is_local).open(
            envelope("b@example.com", "x@elsewhere.example")
        )
        message.write(b"Subject: x\r\n\r\nbody\r\n")
        self.assertEqual(self.successResultOf(message.commit()), "Q1")
        [stored] = local.delivered
        [queued] = remote.delivered
        self.assertEqual([r.mailbox for r in stored.envelope.recipients], ["b@example.com"])
        self.assertEqual([r.mailbox for r in queued.envelope.recipients], ["x@elsewhere.example"])
        self.assertEqual(stored.data, queued.data)

    def test_a_failing_half_fails_the_message(self) -> None:
        local, remote = MemorySink(), MemorySink()
        remote.fail_commit = DeliveryError("queue disk full")
        message = SplitSink(local, remote, is_local).open(
            envelope("b@example.com", "x@elsewhere.example")
        )
        message.write(b"x\r\n")
        failure = self.failureResultOf(message.commit(), DeliveryError)
        self.assertIn("queue disk full", str(failure.value))


class LocalDomains(SynchronousTestCase):
    def test_dev_stack_keeps_everything_but_routed_domains(self) -> None:
        config = dataclasses.replace(
            dev_config("/tmp/unused"), relay=RelayConfig(routes=(("b.test", "127.0.0.1", 2525),))
        )
        is_local = local_domains(config)
        self.assertTrue(is_local("anything.example"))
        self.assertFalse(is_local("b.test"))
        self.assertFalse(is_local("B.TEST"))

    def test_a_smarthost_sends_every_unlisted_domain_on(self) -> None:
        config = dataclasses.replace(
            dev_config("/tmp/unused"),
            domains=DomainsConfig(local=("mine.example",), accept_any=True),
            relay=RelayConfig(smarthost=Smarthost("smtp.example.net")),
        )
        is_local = local_domains(config)
        self.assertTrue(is_local("mine.example"))
        self.assertFalse(is_local("anything.example"))

    def test_production_keeps_listed_domains_only(self) -> None:
        config = dataclasses.replace(
            dev_config("/tmp/unused"), domains=DomainsConfig(local=("a.example",))
        )
        self.assertEqual(
            [local_domains(config)(d) for d in ("a.example", "b.example")], [True, False]
        )

    def test_policy_resolver_applies_plus_addressing_and_unknown_users(self) -> None:
        policy = RecipientPolicy(
            DomainsConfig(local=("example.com",)), lambda m: m == "bob@example.com"
        )
        resolve = policy_resolver(policy)
        self.assertEqual(resolve("Bob+news@example.com"), ["bob@example.com"])
        self.assertEqual(resolve("nobody@example.com")[0], "5.1.1")
        self.assertEqual(resolve("not an address")[0], "5.1.3")


@dataclass
class Item:
    recipients: list[str]
    body: bytes = b"Received: from x\r\nSubject: queued\r\n\r\nhello\r\n"
    queue_id: str = "QID1"
    mail_from: str = ""
    body_type: str = "7BIT"
    smtputf8: bool = False
    extra: dict = field(default_factory=dict)

    def open_body(self) -> io.BytesIO:
        return io.BytesIO(self.body)


class LocalCourierTests(TestCase):
    def setUp(self) -> None:
        self.store = MailStore(Path(self.mktemp()), hostname="test")
        committer = GroupCommitter(threads=2)
        committer.startService()
        self.addCleanup(committer.stopService)
        self.sink = MaildirSink(self.store, committer)

    def resolve(self, address: str) -> list[str] | tuple[str, str]:
        if address.startswith("nobody@"):
            return ("5.1.1", "user unknown")
        if address.startswith("busy@"):
            return ("4.2.1", "try later")
        return [address.lower().replace("+tag", "")]

    async def test_delivers_with_return_path_and_reports_per_recipient(self) -> None:
        courier = LocalCourier(self.sink, self.resolve)
        verifyObject(ICourier, courier)
        item = Item(["Bob+tag@example.com", "nobody@example.com", "busy@example.com"])
        results = {r.recipient: r for r in await courier.deliver(item)}
        self.assertEqual(results["Bob+tag@example.com"].outcome, Outcome.DELIVERED)
        self.assertEqual(results["nobody@example.com"].outcome, Outcome.PERMANENT)
        self.assertEqual(results["nobody@example.com"].status, "5.1.1")
        self.assertEqual(results["busy@example.com"].outcome, Outcome.TEMPORARY)
        inbox = self.store.mailbox("bob@example.com").folder()
        [info] = inbox.sync().messages
        data = inbox.read_message(info.uid)
        # A bounce has the null reverse path: Return-Path: <> (RFC 5321 4.4).
        self.assertTrue(data.startswith(b"Return-Path: <>\r\nReceived: from x\r\n"), data)

    async def test_store_failure_is_temporary(self) -> None:
        def broken(address: str) -> list[str]:
            return ["../escape@example.com"]  # refused by the store: permanent

        results = await LocalCourier(self.sink, broken).deliver(Item(["a@example.com"]))
        self.assertEqual([r.outcome for r in results], [Outcome.PERMANENT])

        def explode(address: str) -> list[str]:
            raise RuntimeError("resolver bug")

        results = await LocalCourier(self.sink, explode).deliver(Item(["a@example.com"]))
        self.assertEqual([r.outcome for r in results], [Outcome.TEMPORARY])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)  # logged, not swallowed
