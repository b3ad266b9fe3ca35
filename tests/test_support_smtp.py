"""The SMTP test doubles of tests/support/smtp.py are honest implementations of the seams."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailhub.config import DomainsConfig
from mailhub.envelope import Envelope
from mailhub.interfaces import IIncomingMessage, IMessageSink
from mailhub.smtp.policy import ISMTPPolicy, RecipientPolicy
from tests.support.smtp import MemorySink, SlowPolicy


class SupportTests(SynchronousTestCase):
    """The test doubles are honest implementations of the seams."""

    def test_sink_provides_interfaces(self) -> None:
        sink = MemorySink()
        self.assertTrue(verifyObject(IMessageSink, sink))
        message = sink.open(Envelope(queue_id="Q", mail_from=""))
        self.assertTrue(verifyObject(IIncomingMessage, message))

    def test_message_lifecycle_enforced(self) -> None:
        sink = MemorySink()
        message = sink.open(Envelope(queue_id="Q", mail_from=""))
        message.write(b"x")
        self.assertEqual(self.successResultOf(message.commit()), "Q")
        self.assertEqual(sink.delivered, [message])
        self.assertRaises(AssertionError, message.write, b"y")
        self.assertRaises(AssertionError, message.abort)

    def test_held_commit(self) -> None:
        sink = MemorySink()
        sink.hold_commits = True
        d = sink.open(Envelope(queue_id="Q", mail_from="")).commit()
        self.assertNoResult(d)
        sink.release()
        self.assertEqual(self.successResultOf(d), "Q")

    def test_slow_policy_provides_interface(self) -> None:
        policy = SlowPolicy(RecipientPolicy(DomainsConfig(), lambda a: False))
        self.assertTrue(verifyObject(ISMTPPolicy, policy))
