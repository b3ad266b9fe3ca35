"""The ESMTP client's dialogue, without sockets: a StringTransport, a Clock, scripted replies."""

from __future__ import annotations

import io

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mailhub.interfaces import Outcome
from mailhub.relay.client import (
    DotStuffer,
    Message,
    Reply,
    SessionOptions,
    SessionResult,
    SMTPClientProtocol,
    Timeouts,
)
from mailhub.relay.tlsclient import TLSPolicy

BODY = b"Subject: x\r\n\r\nhello\r\n"
EHLO = "250-mx.b.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n"


class Session:
    def __init__(self, *, body: bytes = BODY, recipients=("a@b.test",), **kw) -> None:
        fields = {"mail_from": "s@a.test", "body_type": "7BIT", "smtputf8": False} | kw
        self.message = Message(
            recipients=tuple(recipients),
            open_body=lambda: io.BytesIO(body),
            size=len(body),
            **fields,
        )
        self.clock = Clock()
        self.transport = StringTransport()
        self.protocol = SMTPClientProtocol(
            SessionOptions("a.test", tls=TLSPolicy.NONE, timeouts=Timeouts()),
            remote="mx.b.test [192.0.2.1]",
            clock=self.clock,
        )
        self.protocol.makeConnection(self.transport)
        self.results: list[SessionResult] = []
        # What the courier does with a new session: open, one transaction, QUIT.
        Deferred.fromCoroutine(self.one_message()).addCallback(self.results.append)

    async def one_message(self) -> SessionResult:
        failed = await self.protocol.ready
        if failed is not None:
            return failed
        result = await self.protocol.deliver(self.message)
        await self.protocol.quit()
        return result

    def server(self, text: str) -> None:
        self.protocol.dataReceived(text.encode())

    def client(self) -> bytes:
        """What the client wrote since the last call; drives the body producer to the end."""
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        out = self.transport.value()
        self.transport.clear()
        return out

    def close(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))

    @property
    def result(self) -> SessionResult:
        assert self.results, "session not finished"
        return self.results[0]

    def outcomes(self) -> list[tuple[Outcome, str]]:
        assert self.result.results is not None, self.result
        return [(r.outcome, r.status) for r in self.result.results]


class DialogueTests(SynchronousTestCase):
    def greet(self, s: Session, ehlo: str = EHLO) -> None:
        s.server("220 mx.b.test ESMTP\r\n")
        self.assertEqual(s.client(), b"EHLO a.test\r\n")
        s.server(ehlo)

    def test_pipelined_transaction_and_quit(self) -> None:
        s = Session(recipients=("a@b.test", "b@b.test"))
        self.greet(s)
        self.assertEqual(
            s.client(),
            b"MAIL FROM:<s@a.test> SIZE=21\r\nRCPT TO:<a@b.test>\r\nRCPT TO:<b@b.test>\r\nDATA\r\n",
        )
        s.server("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 <b@b.test>: no\r\n354 go\r\n")
        self.assertEqual(s.client(), BODY + b".\r\n")
        s.server("250 2.0.0 Ok: queued as X\r\n")
        self.assertEqual(s.client(), b"QUIT\r\n")
        s.server("221 2.0.0 bye\r\n")
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(s.results, [])  # fires once the connection is closed
        s.close()
        self.assertEqual(s.outcomes(), [(Outcome.DELIVERED, "2.0.0"), (Outcome.PERMANENT, "5.1.1")])
        self.assertEqual(s.result.results[0].diagnostic, "")
        self.assertEqual(s.result.results[1].diagnostic, "smtp; 550 5.1.1 <b@b.test>: no")
        self.assertEqual(s.result.results[1].remote_mta, "mx.b.test [192.0.2.1]")

    def test_without_pipelining_one_command_at_a_time(self) -> None:
        s = Session(recipients=("a@b.test", "b@b.test"))
        self.greet(s, "250 mx.b.test\r\n")
        self.assertEqual(s.client(), b"MAIL FROM:<s@a.test>\r\n")
        s.server("250 ok\r\n")
        self.assertEqual(s.client(), b"RCPT TO:<a@b.test>\r\n")
        s.server("451 4.3.0 later\r\n")
        self.assertEqual(s.client(), b"RCPT TO:<b@b.test>\r\n")
        s.server("250 ok\r\n")
        self.assertEqual(s.client(), b"DATA\r\n")
        s.server("354 go\r\n")
        s.client()
        s.server("250 ok\r\n221 bye\r\n")
        s.close()
        self.assertEqual(s.outcomes(), [(Outcome.TEMPORARY, "4.3.0"), (Outcome.DELIVERED, "2.0.0")])

    def test_no_recipient_accepted_sends_no_data(self) -> None:
        s = Session()
        self.greet(s, "250 mx.b.test\r\n")
        s.client()
        s.server("250 ok\r\n")
        s.client()
        s.server("550 5.1.1 no\r\n")
        self.assertEqual(s.client(), b"QUIT\r\n")
        s.close()
        self.assertEqual(s.outcomes(), [(Outcome.PERMANENT, "5.1.1")])

    def test_helo_fallback(self) -> None:
        s = Session()
        s.server("220 old.example\r\n")
        s.client()
        s.server("500 what?\r\n")
        self.assertEqual(s.client(), b"HELO a.test\r\n")
        s.server("250 old.example\r\n")
        self.assertEqual(s.client(), b"MAIL FROM:<s@a.test>\r\n")

    def test_multiline_reply_and_extensions(self) -> None:
        s = Session()
        s.server("220-mx.b.test\r\n220 welcome\r\n")
        s.client()
        s.server("250-mx.b.test\r\n250-size 0\r\n250-8bitmime\r\n250 SMTPUTF8\r\n")
        self.assertEqual(s.protocol.extensions, {"SIZE": "0", "8BITMIME": "", "SMTPUTF8": ""})
        self.assertEqual(s.client(), b"MAIL FROM:<s@a.test> SIZE=21\r\n")  # SIZE 0: no limit

    def test_size_over_limit_is_permanent_before_mail(self) -> None:
        s = Session(body=b"x" * 1001)
        self.greet(s)
        self.assertEqual(s.client(), b"QUIT\r\n")
        s.close()
        self.assertEqual(s.outcomes(), [(Outcome.PERMANENT, "5.3.4")])

    def test_8bit_needs_8bitmime(self) -> None:
        s = Session(body_type="8BITMIME")
        self.greet(s, "250-mx.b.test\r\n250 PIPELINING\r\n")
        self.assertEqual(s.client(), b"QUIT\r\n")
        s.close()
        self.assertEqual(s.outcomes(), [(Outcome.PERMANENT, "5.6.3")])

    def test_8bit_announced(self) -> None:
        s = Session(body_type="8BITMIME")
        self.greet(s)
        self.assertTrue(s.client().startswith(b"MAIL FROM:<s@a.test> SIZE=21 BODY=8BITMIME\r\n"))

    def test_utf8_recipient_needs_smtputf8(self) -> None:
        s = Session(recipients=("jörg@b.test", "a@b.test"), smtputf8=True)
        self.greet(s)
        out = s.client()
        self.assertNotIn("jörg".encode(), out)
        self.assertIn(b"RCPT TO:<a@b.test>", out)
        s.server("250 ok\r\n250 ok\r\n354 go\r\n")
        s.client()
        s.server("250 ok\r\n")
        s.close()
        self.assertEqual(s.outcomes(), [(Outcome.PERMANENT, "5.6.7"), (Outcome.DELIVERED, "2.0.0")])

    def test_utf8_sender_needs_smtputf8(self) -> None:
        s = Session(mail_from="jörg@a.test", smtputf8=True)
        self.greet(s)
        s.close()
        self.assertEqual(s.outcomes(), [(Outcome.PERMANENT, "5.6.7")])

    def test_smtputf8_used_when_offered(self) -> None:
        s = Session(recipients=("jörg@b.test",), smtputf8=True)
        self.greet(s, "250-mx.b.test\r\n250 SMTPUTF8\r\n")
        self.assertEqual(s.client(), b"MAIL FROM:<s@a.test> SMTPUTF8\r\n")
        s.server("250 ok\r\n")
        self.assertEqual(s.client(), "RCPT TO:<jörg@b.test>\r\n".encode())

    def test_binarymime_uses_bdat(self) -> None:
        body = b"\x00\x01binary\r\n.\r\n"
        s = Session(body=body, body_type="BINARYMIME")
        self.greet(s, "250-mx.b.test\r\n250-CHUNKING\r\n250 BINARYMIME\r\n")
        self.assertEqual(s.client(), b"MAIL FROM:<s@a.test> BODY=BINARYMIME\r\n")
        s.server("250 ok\r\n")
        s.client()
        s.server("250 ok\r\n")
        self.assertEqual(s.client(), b"BDAT 13 LAST\r\n" + body)  # sent as is, no stuffing
        s.server("250 2.0.0 ok\r\n")
        s.close()
        self.assertEqual(s.outcomes(), [(Outcome.DELIVERED, "2.0.0")])

    def test_data_refused(self) -> None:
        s = Session()
        self.greet(s)
        s.client()
        s.server("250 ok\r\n250 ok\r\n452 4.3.1 disk full\r\n")
        s.close()
        self.assertEqual(s.outcomes(), [(Outcome.TEMPORARY, "4.3.1")])

    def test_final_reply_permanent(self) -> None:
        s = Session()
        self.greet(s)
        s.client()
        s.server("250 ok\r\n250 ok\r\n354 go\r\n")
        s.client()
        s.server("554 5.7.1 spam\r\n")
        s.close()
        self.assertEqual(s.outcomes(), [(Outcome.PERMANENT, "5.7.1")])

    def test_greeting_421_gives_no_answer(self) -> None:
        s = Session()
        s.server("421 4.3.2 busy\r\n")
        self.assertEqual(s.client(), b"QUIT\r\n")
        s.close()
        self.assertIsNone(s.result.results)
        self.assertEqual(s.result.status, "4.3.2")

    def test_malformed_reply_aborts(self) -> None:
        s = Session()
        s.server("hello there\r\n")
        self.assertTrue(s.transport.disconnecting)
        s.close()
        self.assertIsNone(s.result.results)
        self.assertIn("malformed reply", s.result.diagnostic)

    def test_reply_without_enhanced_code(self) -> None:
        self.assertEqual(Reply(550, ("no such user",)).status, "5.0.0")
        self.assertEqual(Reply(550, ("4.1.1 mixed",)).status, "5.0.0")
        self.assertEqual(Reply(250, ("2.1.5 ok",)).status, "2.1.5")


class BareSession(Session):
    """A session driven by hand, transaction by transaction, as the courier does."""

    async def one_message(self) -> SessionResult:
        return SessionResult(None)  # nothing automatic

    def open(self) -> None:
        opened: list[SessionResult | None] = []
        self.protocol.ready.addCallback(opened.append)
        self.server("220 mx.b.test ESMTP\r\n")
        assert self.client() == b"EHLO a.test\r\n"
        self.server(EHLO)
        assert opened == [None], opened

    def deliver(self, into: list[SessionResult]) -> None:
        Deferred.fromCoroutine(self.protocol.deliver(self.message)).addCallback(into.append)


class SessionTests(SynchronousTestCase):
    """One session, several transactions: what the courier's idle sessions rely on."""

    def test_reset_and_deliver_again(self) -> None:
        s = BareSession()
        s.open()
        first: list[SessionResult] = []
        s.deliver(first)
        self.assertEqual(
            s.client(), b"MAIL FROM:<s@a.test> SIZE=21\r\nRCPT TO:<a@b.test>\r\nDATA\r\n"
        )
        s.server("250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(s.client(), BODY + b".\r\n")
        s.server("250 2.0.0 queued as 1\r\n")
        self.assertEqual(s.client(), b"")  # no QUIT: the session stays open
        self.assertEqual([r.outcome for r in first[0].results], [Outcome.DELIVERED])
        self.assertTrue(s.protocol.usable)

        second: list[SessionResult] = []
        Deferred.fromCoroutine(s.protocol.deliver(s.message, reset=True)).addCallback(second.append)
        # RFC 5321 4.1.1.5 RSET, in the same pipelined group (RFC 2920 3.1)
        self.assertEqual(
            s.client(),
            b"RSET\r\nMAIL FROM:<s@a.test> SIZE=21\r\nRCPT TO:<a@b.test>\r\nDATA\r\n",
        )
        s.server("250 2.0.0 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n")
        self.assertEqual(second, [])
        s.server("554 5.5.1 no valid recipients\r\n")
        self.assertEqual(second[0].transaction, 2)
        self.assertEqual([r.status for r in second[0].results], ["5.1.1"])
        self.assertTrue(s.protocol.usable)  # a refused transaction leaves the session in step

    def test_rset_refused_in_data_mode_aborts(self) -> None:
        s = BareSession()
        s.open()
        results: list[SessionResult] = []
        Deferred.fromCoroutine(s.protocol.deliver(s.message, reset=True)).addCallback(
            results.append
        )
        s.client()
        s.server("500 5.5.1 what?\r\n250 ok\r\n250 ok\r\n354 go ahead\r\n")
        self.assertEqual(s.client(), b"")  # no body, no "."
        self.assertTrue(s.transport.disconnecting)
        self.assertTrue(results[0].untouched)
        self.assertIsNone(results[0].results)
        self.assertEqual(results[0].status, "4.5.1")

    def test_lost_before_mail_is_answered_is_untouched(self) -> None:
        s = BareSession()
        s.open()
        results: list[SessionResult] = []
        s.deliver(results)
        s.close()
        self.assertTrue(results[0].untouched)
        self.assertFalse(s.protocol.usable)

    def test_lost_after_mail_is_answered_is_not_untouched(self) -> None:
        s = BareSession()
        s.open()
        results: list[SessionResult] = []
        s.deliver(results)
        s.server("250 ok\r\n")
        s.close()
        self.assertEqual([r.status for r in results[0].results], ["4.4.2"])
        self.assertFalse(results[0].untouched)

    def test_reply_421_ends_reuse(self) -> None:
        s = BareSession()
        s.open()
        results: list[SessionResult] = []
        s.deliver(results)
        s.server("421 4.3.2 shutting down\r\n")
        self.assertFalse(s.protocol.usable)

    def test_data_while_idle_closes(self) -> None:
        s = BareSession()
        s.open()
        s.protocol.idle = True
        s.server("421 4.4.2 idle timeout\r\n")
        self.assertTrue(s.transport.disconnecting)
        self.assertFalse(s.protocol.usable)


class TimeoutTests(SynchronousTestCase):
    def test_greeting_timeout(self) -> None:
        s = Session()
        s.clock.advance(299)
        self.assertFalse(s.transport.disconnecting)
        s.clock.advance(1)  # RFC 5321 4.5.3.2.1: 5 minutes
        self.assertTrue(s.transport.disconnecting)
        s.close()
        self.assertIsNone(s.result.results)
        self.assertIn("greeting within 300 seconds", s.result.diagnostic)

    def test_rcpt_timeout_is_temporary(self) -> None:
        s = Session()
        DialogueTests.greet(self, s)  # type: ignore[arg-type]
        s.client()
        s.server("250 ok\r\n")
        s.clock.advance(300)
        self.assertTrue(s.transport.disconnecting)
        s.close()
        self.assertEqual(s.outcomes(), [(Outcome.TEMPORARY, "4.4.2")])
        self.assertIn("RCPT", s.result.results[0].diagnostic)

    def test_final_reply_waits_ten_minutes(self) -> None:
        s = Session()
        DialogueTests.greet(self, s)  # type: ignore[arg-type]
        s.client()
        s.server("250 ok\r\n250 ok\r\n354 go\r\n")
        s.client()
        s.clock.advance(599)
        self.assertFalse(s.transport.disconnecting)
        s.clock.advance(1)
        self.assertTrue(s.transport.disconnecting)
        s.close()
        self.assertEqual(s.outcomes(), [(Outcome.TEMPORARY, "4.4.2")])

    def test_data_block_timeout(self) -> None:
        s = Session(body=b"x" * 100_000 + b"\r\n")
        DialogueTests.greet(self, s, "250 mx.b.test\r\n")  # type: ignore[arg-type]
        s.client()
        s.server("250 ok\r\n")
        s.client()
        s.server("250 ok\r\n")
        s.client()
        s.server("354 go\r\n")
        # The peer reads nothing: the producer is never resumed after its first chunk.
        self.assertIsNotNone(s.transport.producer)
        s.clock.advance(180)  # RFC 5321 4.5.3.2.5: 3 minutes per block
        self.assertTrue(s.transport.disconnecting)
        s.close()
        self.assertEqual(s.outcomes(), [(Outcome.TEMPORARY, "4.4.2")])
        self.assertIn("no data for 180 seconds", s.result.results[0].diagnostic)

    def test_lost_mid_data(self) -> None:
        s = Session()
        DialogueTests.greet(self, s)  # type: ignore[arg-type]
        s.client()
        s.server("250 ok\r\n250 ok\r\n354 go\r\n")
        s.close()
        self.assertEqual(s.outcomes(), [(Outcome.TEMPORARY, "4.4.2")])
        self.assertEqual(s.clock.getDelayedCalls(), [])


class DotStufferTests(SynchronousTestCase):
    def stuff(self, *chunks: bytes) -> bytes:
        d = DotStuffer()
        return b"".join(d(c) for c in chunks) + d.end()

    def test_rules(self) -> None:
        self.assertEqual(self.stuff(b""), b".\r\n")
        self.assertEqual(self.stuff(b".\r\n"), b"..\r\n.\r\n")
        self.assertEqual(self.stuff(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n")
        self.assertEqual(self.stuff(b"no final crlf"), b"no final crlf\r\n.\r\n")
        self.assertEqual(self.stuff(b"a.b\r\n"), b"a.b\r\n.\r\n")

    def test_chunk_borders(self) -> None:
        body = b"x\r\n.one\r\n..two\r\n.\r\nend\r\n"
        whole = self.stuff(body)
        for cut in range(len(body) + 1):
            self.assertEqual(self.stuff(body[:cut], body[cut:]), whole, cut)
        bytewise = [body[i : i + 1] for i in range(len(body))]
        self.assertEqual(self.stuff(*bytewise), whole)
