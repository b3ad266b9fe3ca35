"""The SMTP receiver's commands, sequencing, limits, pipelining and error handling."""

from __future__ import annotations

import re

from twisted.internet.defer import fail
from twisted.trial.unittest import SynchronousTestCase

from mailhub.config import DomainsConfig, Limits, SMTPConfig
from mailhub.interfaces import DeliveryError
from mailhub.smtp import protocol as protocol_module
from mailhub.smtp.protocol import MAX_PENDING_INPUT
from mailhub.tls import HANDSHAKE_GRACE
from tests.support.smtp import LOCAL, Harness, SlowPolicy, TLSStringTransport, body_of, limits

EHLO_REPLY = """
    S: 250-mx.example.org
    S: 250-PIPELINING
    S: 250-SIZE 36700160
    S: 250-8BITMIME
    S: 250-SMTPUTF8
    S: 250-ENHANCEDSTATUSCODES
    S: 250-CHUNKING
    S: 250-BINARYMIME
    S: 250 HELP
"""


class GreetingTests(SynchronousTestCase):
    def test_banner_and_ehlo_keywords(self) -> None:
        d = Harness().connect()
        d.run("S: 220 mx.example.org mailhub ESMTP\nC: EHLO client.example.net" + EHLO_REPLY)

    def test_size_keyword_follows_limit(self) -> None:
        d = Harness(limits=limits(max_message_size=12345)).connect()
        d.replies()
        d.send(b"EHLO c\r\n")
        self.assertIn("250-SIZE 12345", d.replies())

    def test_helo(self) -> None:
        d = Harness().connect()
        d.run("""
            S: 220 mx.example.org mailhub ESMTP
            C: HELO client.example.net
            S: 250 mx.example.org
        """)
        self.assertFalse(d.protocol.session.esmtp)

    def test_helo_ehlo_need_argument_and_carry_no_enhanced_code(self) -> None:
        # RFC 2034: no enhanced status codes in replies to HELO/EHLO.
        d = Harness().connect()
        d.run("""
            S: 220 mx.example.org mailhub ESMTP
            C: EHLO
            S: 501 Syntax: EHLO hostname
            C: HELO
            S: 501 Syntax: HELO hostname
        """)

    def test_verbs_are_case_insensitive(self) -> None:
        h = Harness()
        d = h.connect()
        d.run(
            """
            S: 220 mx.example.org mailhub ESMTP
            C: eHlO client.example.net
            S: 250-mx.example.org...
        """
            + "\n".join("S: ..." for _ in range(8))
            + f"""
            C: mail from:<a@example.net>
            S: 250 2.1.0 Ok
            C: Rcpt To:<user@{LOCAL}>
            S: 250 2.1.5 Ok
            C: noop
            S: 250 2.0.0 Ok
        """
        )


class SimpleCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.d = self.h.connect()
        self.d.greet()

    def test_noop_rset_vrfy(self) -> None:
        self.d.run("""
            C: NOOP
            S: 250 2.0.0 Ok
            C: NOOP anything at all
            S: 250 2.0.0 Ok
            C: VRFY user
            S: 252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery
            C: VRFY
            S: 501 5.5.4 Syntax: VRFY address
            C: RSET
            S: 250 2.0.0 Ok
            C: RSET now
            S: 501 5.5.4 Syntax: RSET
        """)

    def test_expn_disabled_by_default(self) -> None:
        self.d.run("""
            C: EXPN staff
            S: 502 5.5.1 Error: EXPN is disabled
        """)

    def test_expn_enabled(self) -> None:
        d = Harness(smtp_config=SMTPConfig(expn=True)).connect()
        d.greet()
        d.run("""
            C: EXPN staff
            S: 550 5.1.1 Error: not a mailing list
        """)

    def test_help_is_multiline_214_with_codes_on_every_line(self) -> None:
        self.d.send(b"HELP\r\n")
        lines = self.d.replies()
        self.assertGreater(len(lines), 1)
        for line in lines[:-1]:
            self.assertTrue(line.startswith("214-2.0.0 "), line)
        self.assertTrue(lines[-1].startswith("214 2.0.0 "))
        self.assertIn("BDAT", " ".join(lines))

    def test_unknown_and_unimplemented(self) -> None:
        self.d.run("""
            C: FROB
            S: 500 5.5.1 Error: command not recognized
            C: TURN
            S: 502 5.5.1 Error: command not implemented
            C: AUTH PLAIN
            S: 502 5.5.1 Error: command not implemented
            C: STARTTLS
            S: 502 5.5.1 Error: command not implemented
            C: NOOP
            S: 250 2.0.0 Ok
        """)

    def test_quit(self) -> None:
        self.d.run("""
            C: QUIT
            S: 221 2.0.0 Bye
        """)
        self.assertTrue(self.d.closed)

    def test_pipelined_input_after_quit_is_ignored(self) -> None:
        self.d.send(b"QUIT\r\nNOOP\r\n")
        self.assertEqual(self.d.replies(), ["221 2.0.0 Bye"])

    def test_http_request_closes(self) -> None:
        self.d.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        self.assertEqual(self.d.replies(), ["421 4.7.0 Error: this is an SMTP server, goodbye"])
        self.assertTrue(self.d.closed)

    def test_invalid_utf8_argument(self) -> None:
        self.d.send(b"MAIL FROM:<\xff@example.net>\r\n")
        self.assertEqual(self.d.replies(), ["500 5.5.2 Error: command is not valid UTF-8"])


class SequenceTests(SynchronousTestCase):
    def test_mail_needs_helo(self) -> None:
        d = Harness().connect()
        d.run("""
            S: 220 mx.example.org mailhub ESMTP
            C: MAIL FROM:<a@example.net>
            S: 503 5.5.1 Error: send HELO/EHLO first
        """)

    def test_out_of_order(self) -> None:
        d = Harness().connect()
        d.greet()
        d.run(f"""
            C: RCPT TO:<user@{LOCAL}>
            S: 503 5.5.1 Error: need MAIL command
            C: DATA
            S: 503 5.5.1 Error: need MAIL command
            C: MAIL FROM:<a@example.net>
            S: 250 2.1.0 Ok
            C: MAIL FROM:<a@example.net>
            S: 503 5.5.1 Error: nested MAIL command
            C: DATA
            S: 554 5.5.1 Error: no valid recipients
            C: RCPT TO:<nobody@{LOCAL}>
            S: 550 5.1.1 Error: mailbox unavailable: user unknown
            C: DATA
            S: 554 5.5.1 Error: no valid recipients
            C: DATA extra
            S: 501 5.5.4 Syntax: DATA
        """)

    def test_ehlo_and_rset_reset_the_transaction(self) -> None:
        d = Harness().connect()
        d.greet()
        d.transaction()
        d.send(b"RSET\r\nDATA\r\n")
        self.assertEqual(d.replies(), ["250 2.0.0 Ok", "503 5.5.1 Error: need MAIL command"])
        d.transaction()
        d.send(b"EHLO again.example\r\n")
        d.replies()
        d.send(b"DATA\r\n")
        self.assertEqual(d.replies(), ["503 5.5.1 Error: need MAIL command"])


class ParameterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(limits=limits(max_message_size=1000))
        self.d = self.h.connect()
        self.d.greet()

    def _mail(self, arg: str) -> str:
        self.d.send(f"RSET\r\nMAIL FROM:{arg}\r\n".encode())
        lines = self.d.replies()
        self.assertEqual(lines[0], "250 2.0.0 Ok")
        return lines[1]

    def test_mail_parameters(self) -> None:
        self.assertEqual(self._mail("<a@example.net> SIZE=1000"), "250 2.1.0 Ok")
        self.assertEqual(
            self._mail("<a@example.net> SIZE=1001"),
            "552 5.3.4 Error: message size exceeds fixed maximum message size",
        )
        self.assertEqual(
            self._mail("<a@example.net> SIZE=" + "9" * 900),
            "552 5.3.4 Error: message size exceeds fixed maximum message size",
        )
        self.assertEqual(
            self._mail("<a@example.net> SIZE=x1"), "501 5.5.4 Error: bad parameter value"
        )
        self.assertEqual(self._mail("<a@example.net> SIZE"), "501 5.5.4 Error: bad parameter value")
        self.assertEqual(self._mail("<a@example.net> BODY=8bitmime"), "250 2.1.0 Ok")
        self.assertEqual(self._mail("<a@example.net> BODY=7BIT"), "250 2.1.0 Ok")
        self.assertEqual(self._mail("<a@example.net> BODY=BINARYMIME"), "250 2.1.0 Ok")
        self.assertEqual(
            self._mail("<a@example.net> BODY=9BIT"), "501 5.5.4 Error: bad parameter value"
        )
        self.assertEqual(
            self._mail("<a@example.net> FOO=bar"), "555 5.5.4 Error: unsupported parameter FOO"
        )
        self.assertEqual(
            self._mail("<a@example.net> AUTH=<>"), "555 5.5.4 Error: unsupported parameter AUTH"
        )
        self.assertEqual(
            self._mail("<a@example.net> SMTPUTF8=yes"),
            "555 5.5.4 Error: unsupported parameter SMTPUTF8",
        )
        self.assertEqual(
            self._mail("<a@example.net> SIZE=1 size=2"), "501 5.5.4 Error: duplicate parameter"
        )
        self.assertTrue(self._mail("<a@example.net> =x").startswith("501 5.5.4 "))

    def test_body_type_and_size_reach_the_envelope(self) -> None:
        self.d.send(b"MAIL FROM:<a@example.net> BODY=8BITMIME SIZE=20\r\n")
        self.d.send(f"RCPT TO:<user@{LOCAL}>\r\nDATA\r\n".encode())
        self.d.send(b"caf\xc3\xa9\r\n.\r\n")
        self.assertEqual(self.d.replies()[-1][:24], "250 2.0.0 Ok: queued as ")
        envelope = self.h.sink.delivered[0].envelope
        self.assertEqual((envelope.body_type, envelope.declared_size), ("8BITMIME", 20))

    def test_rcpt_parameters_are_unsupported(self) -> None:
        self.d.send(
            f"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@{LOCAL}> NOTIFY=NEVER\r\n".encode()
        )
        self.assertEqual(self.d.replies()[1], "555 5.5.4 Error: unsupported parameter NOTIFY")

    def test_smtputf8(self) -> None:
        self.d.run("""
            C: MAIL FROM:<jörg@bücher.example>
            S: 553 5.6.7 Error: non-ASCII address requires SMTPUTF8 (RFC 6531)
            C: MAIL FROM:<a@example.net>
            S: 250 2.1.0 Ok
            C: RCPT TO:<jörg@catchall.example>
            S: 553 5.6.7 Error: non-ASCII address requires SMTPUTF8 (RFC 6531)
            C: RSET
            S: 250 2.0.0 Ok
            C: MAIL FROM:<jörg@bücher.example> SMTPUTF8
            S: 250 2.1.0 Ok
            C: RCPT TO:<Jörg+x@catchall.example>
            S: 250 2.1.5 Ok
            C: DATA
            S: 354 End data with <CR><LF>.<CR><LF>
            C: Subject: grüße
            C: .
            S: 250 2.0.0 Ok: queued as ...
        """)
        envelope = self.h.sink.delivered[0].envelope
        self.assertTrue(envelope.smtputf8)
        self.assertEqual(envelope.mail_from, "jörg@bücher.example")
        self.assertEqual(envelope.protocol, "UTF8SMTP")
        self.assertEqual(
            [(r.address, r.mailbox) for r in envelope.recipients],
            [("Jörg+x@catchall.example", "jörg@catchall.example")],
        )

    def test_bad_addresses(self) -> None:
        self.d.run(f"""
            C: MAIL FROM:a@example.net
            S: 501 5.1.7 Error: bad sender address syntax: invalid address syntax
            C: MAIL TO:<a@example.net>
            S: 501 5.5.4 Syntax: MAIL FROM:<address>
            C: MAIL FROM:<a@example.net>
            S: 250 2.1.0 Ok
            C: RCPT TO:<>
            S: 501 5.1.3 Error: bad recipient address syntax: invalid address syntax
            C: RCPT TO:<user@{LOCAL}
            S: 501 5.1.3 Error: bad recipient address syntax: invalid address syntax
            C: RCPT <user@{LOCAL}>
            S: 501 5.5.4 Syntax: RCPT TO:<address>
        """)

    def test_null_sender_and_space_after_colon(self) -> None:
        self.d.run(f"""
            C: MAIL FROM: <>
            S: 250 2.1.0 Ok
            C: RCPT TO: <user@{LOCAL}>
            S: 250 2.1.5 Ok
        """)


class RecipientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(limits=limits(max_recipients=3))
        self.d = self.h.connect()
        self.d.greet()
        self.d.send(b"MAIL FROM:<a@example.net>\r\n")
        self.d.replies()

    def test_decisions(self) -> None:
        self.d.run(f"""
            C: RCPT TO:<someone@elsewhere.example>
            S: 554 5.7.1 Error: relay access denied
            C: RCPT TO:<someone@[192.0.2.1]>
            S: 554 5.7.1 Error: relay access denied
            C: RCPT TO:<nobody@{LOCAL}>
            S: 550 5.1.1 Error: mailbox unavailable: user unknown
            C: RCPT TO:<"../../etc/passwd"@{LOCAL}>
            S: 553 5.1.3 Error: local part not allowed here
            C: RCPT TO:<User+Lists@EXAMPLE.ORG>
            S: 250 2.1.5 Ok
            C: RCPT TO:<Postmaster>
            S: 250 2.1.5 Ok
            C: RCPT TO:<anything@catchall.example>
            S: 250 2.1.5 Ok
            C: RCPT TO:<postmaster@{LOCAL}>
            S: 452 4.5.3 Error: too many recipients
            C: DATA
            S: 354 End data with <CR><LF>.<CR><LF>
            C: .
            S: 250 2.0.0 Ok: queued as ...
        """)
        envelope = self.h.sink.delivered[0].envelope
        self.assertEqual(
            [(r.address, r.mailbox) for r in envelope.recipients],
            [
                ("User+Lists@EXAMPLE.ORG", f"user@{LOCAL}"),
                ("Postmaster", f"postmaster@{LOCAL}"),
                ("anything@catchall.example", "anything@catchall.example"),
            ],
        )

    def test_rejected_recipient_is_logged(self) -> None:
        self.d.send(b"RCPT TO:<x@elsewhere.example>\r\n")
        self.d.replies()
        [event] = [e for e in self.h.events if e.get("event") == "rcpt_rejected"]
        self.assertEqual(
            (event["rcpt"], event["code"], event["enhanced"]), ("x@elsewhere.example", 554, "5.7.1")
        )
        self.assertEqual(event["client"], "192.0.2.7")


class LineLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(limits=limits(max_line_length=100))
        self.d = self.h.connect()
        self.d.greet()

    def test_command_line_limit_includes_crlf(self) -> None:
        ok = b"NOOP " + b"x" * (100 - 7) + b"\r\n"
        self.assertEqual(len(ok), 100)
        self.d.send(ok)
        self.assertEqual(self.d.replies(), ["250 2.0.0 Ok"])
        self.d.send(b"NOOP " + b"x" * (100 - 6) + b"\r\nNOOP\r\n")
        self.assertEqual(
            self.d.replies(),
            ["500 5.5.2 Error: line too long (RFC 5321 4.5.3.1.6)", "250 2.0.0 Ok"],
        )

    def test_endless_line_is_not_buffered(self) -> None:
        for _ in range(1000):
            self.d.send(b"y" * 1000)
            self.assertLessEqual(len(self.d.protocol._buf), 1100)
        self.assertEqual(self.d.replies(), [])
        self.d.send(b"tail\r\nNOOP\r\n")
        self.assertEqual(
            self.d.replies(),
            ["500 5.5.2 Error: line too long (RFC 5321 4.5.3.1.6)", "250 2.0.0 Ok"],
        )
        self.assertFalse(self.d.closed)

    def test_bare_line_endings_in_commands(self) -> None:
        self.d.send(b"NOOP\nNOOP\rX\r\nNOOP\r\n")
        self.assertEqual(
            self.d.replies(),
            [
                "500 5.5.2 Error: bare CR or LF in command (RFC 5321 2.3.8)",
                "500 5.5.2 Error: bare CR or LF in command (RFC 5321 2.3.8)",
                "250 2.0.0 Ok",
            ],
        )


class PipeliningTests(SynchronousTestCase):
    """RFC 2920: replies in command order even when checks and commits are asynchronous."""

    def setUp(self) -> None:
        self.h = Harness()
        self.slow = SlowPolicy(self.h.policy)
        self.h.factory.policy = self.slow
        self.d = self.h.connect()
        self.d.greet()

    def test_slow_policy_keeps_order(self) -> None:
        # twisted#8126: ESMTP answered the RCPT (503) before the MAIL it depended on.
        self.d.send(
            b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@example.org>\r\n"
            b"RCPT TO:<x@elsewhere.example>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n"
        )
        expected = [
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "554 5.7.1 Error: relay access denied",
            "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>",
        ]
        got: list[str] = []
        for _ in range(4):
            self.assertEqual(self.d.replies(), [])  # nothing is answered out of turn
            self.assertEqual(self.slow.release(), 1)  # one command at a time
            got += self.d.replies()
        self.assertEqual(got, expected)

    def test_slow_commit(self) -> None:
        self.h.factory.policy = self.h.policy
        self.h.sink.hold_commits = True
        self.d.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n")
        self.assertEqual(len(self.d.replies()), 3)
        self.d.send(b"Subject: 1\r\n\r\nbody\r\n.\r\nMAIL FROM:<b@example.net>\r\nNOOP\r\n")
        self.assertEqual(self.d.replies(), [])  # no 250 before the commit fires
        self.assertEqual(self.h.sink.delivered, [])
        self.h.sink.release()
        lines = self.d.replies()
        qid = self.h.sink.delivered[0].envelope.queue_id
        self.assertEqual(lines, [f"250 2.0.0 Ok: queued as {qid}", "250 2.1.0 Ok", "250 2.0.0 Ok"])

    def test_backpressure_while_waiting(self) -> None:
        self.d.send(b"MAIL FROM:<a@example.net>\r\n")
        self.assertEqual(self.d.transport.producerState, "producing")
        filler = b"NOOP\r\n" * 1000
        for _ in range(MAX_PENDING_INPUT // len(filler) + 1):
            self.d.send(filler)
        self.assertGreater(len(self.d.protocol._buf), MAX_PENDING_INPUT)
        self.assertEqual(self.d.transport.producerState, "paused")
        self.slow.release()
        self.assertEqual(self.d.transport.producerState, "producing")
        lines = self.d.replies()
        self.assertEqual(lines[0], "250 2.1.0 Ok")
        self.assertEqual(set(lines[1:]), {"250 2.0.0 Ok"})


class SinkFlowControlTests(SynchronousTestCase):
    """A sink behind with its disk writes (``ready()``): no more message data is taken until it
    catches up, and the client is paused past MAX_PENDING_INPUT, so memory stays bounded."""

    def setUp(self) -> None:
        self.h = Harness()
        self.d = self.h.connect()
        self.d.greet()
        self.d.send(b"EHLO client.example.net\r\nMAIL FROM:<a@example.net>\r\n")
        self.d.send(b"RCPT TO:<user@example.org>\r\n")
        self.d.replies()

    def test_data_waits_for_the_sink(self) -> None:
        self.d.send(b"DATA\r\n")
        self.assertEqual(self.d.replies(), ["354 End data with <CR><LF>.<CR><LF>"])
        self.h.sink.hold_ready = True
        self.d.send(b"Subject: 1\r\n\r\nfirst\r\n")
        [message] = self.h.sink.opened
        self.assertIn(b"first\r\n", message.data)
        self.assertEqual(len(self.h.sink.ready_waits), 1)
        filler = b"x" * 998 + b"\r\n"
        for _ in range(MAX_PENDING_INPUT // len(filler) + 1):
            self.d.send(filler)
        self.assertNotIn(b"x" * 998, message.data)  # held in the input buffer
        self.assertEqual(self.d.transport.producerState, "paused")
        self.d.send(b".\r\n")
        self.assertEqual(self.d.replies(), [])
        self.h.sink.catch_up()
        self.assertEqual(self.d.transport.producerState, "producing")
        [reply] = self.d.replies()
        self.assertTrue(reply.startswith("250 2.0.0 Ok: queued as "), reply)
        body = message.data.split(b"\r\n\r\n", 2)[-1]
        n = MAX_PENDING_INPUT // len(filler) + 1
        self.assertEqual(body, b"first\r\n" + filler * n)

    def test_bdat_waits_for_the_sink(self) -> None:
        self.h.sink.hold_ready = True
        self.d.send(b"BDAT 8\r\nline 1\r\n")
        self.assertEqual(self.d.replies(), ["250 2.0.0 Ok: 8 octets received"])
        self.assertEqual(len(self.h.sink.ready_waits), 1)
        [message] = self.h.sink.opened
        self.d.send(b"BDAT 8 LAST\r\nline 2\r\n")
        self.assertNotIn(b"line 2", message.data)
        self.assertEqual(self.d.replies(), [])
        self.h.sink.catch_up()
        [reply] = self.d.replies()
        self.assertTrue(reply.startswith("250 2.0.0 Ok: queued as "), reply)
        self.assertTrue(message.data.endswith(b"line 1\r\nline 2\r\n"), message.data)


class ReplyWriteTests(SynchronousTestCase):
    """A reply goes out at once (mailhub.net.write_now) only when no further command is
    buffered; the replies to pipelined commands are queued and leave together."""

    def setUp(self) -> None:
        self.direct: list[bytes] = []

        def write_now(transport: object, data: bytes) -> None:
            self.direct.append(data)
            transport.write(data)  # type: ignore[attr-defined]

        self.patch(protocol_module, "write_now", write_now)
        self.h = Harness()
        self.d = self.h.connect()
        self.d.greet()

    def test_greeting_and_lone_commands_at_once(self) -> None:
        self.d.send(b"EHLO client.example\r\n")
        self.assertTrue(self.direct[0].startswith(b"220 "))
        self.assertTrue(self.direct[1].startswith(b"250-mx.example.org"))

    def test_pipelined_replies_queued_together(self) -> None:
        self.d.send(b"EHLO client.example\r\n")
        self.d.replies()
        before = len(self.direct)
        self.d.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n")
        # MAIL's and RCPT's replies were held (more was buffered) and leave with DATA's, the
        # last, in one write: one segment, no reactor turn to flush a queue.
        self.assertEqual(
            self.direct[before:],
            [b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"],
        )

    def test_held_replies_go_before_waiting(self) -> None:
        # A reply that comes later (a policy lookup) must not keep the earlier ones back.
        self.h.factory.policy = slow = SlowPolicy(self.h.policy)
        self.d.send(b"NOOP\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<user@example.org>\r\n")
        self.assertEqual(self.d.replies(), ["250 2.0.0 Ok"])
        slow.release()
        self.assertEqual(self.d.replies(), ["250 2.1.0 Ok"])  # RCPT's lookup now pending
        slow.release()
        self.assertEqual(self.d.replies(), ["250 2.1.5 Ok"])

    def test_held_replies_go_before_a_partial_line(self) -> None:
        self.d.send(b"NOOP\r\nNOOP\r\nRSET")
        self.assertEqual(self.d.replies(), ["250 2.0.0 Ok", "250 2.0.0 Ok"])
        self.d.send(b"\r\n")
        self.assertEqual(self.d.replies(), ["250 2.0.0 Ok"])

    def test_held_replies_go_before_closing(self) -> None:
        # QUIT with more pipelined after it, and a 421 for too many errors: what was answered
        # before is written, then the last reply, then the connection closes.
        self.d.send(b"NOOP\r\nQUIT\r\nNOOP\r\n")
        self.assertEqual(self.d.replies(), ["250 2.0.0 Ok", "221 2.0.0 Bye"])
        self.assertTrue(self.d.closed)
        h = Harness(limits=limits(max_errors=2))
        d = h.connect()
        d.greet()
        d.send(b"NOOP\r\nX\r\nY\r\nNOOP\r\n")
        self.assertEqual(
            d.replies(),
            [
                "250 2.0.0 Ok",
                "500 5.5.1 Error: command not recognized",
                "500 5.5.1 Error: command not recognized",
                "421 4.7.0 Error: too many errors",
            ],
        )
        self.assertTrue(d.closed)


class TimeoutTests(SynchronousTestCase):
    def test_idle_timeout(self) -> None:
        h = Harness(limits=limits(idle_timeout=60.0))
        d = h.connect()
        d.greet()
        h.clock.advance(59)
        d.send(b"NOOP\r\n")
        h.clock.advance(59)
        self.assertFalse(d.closed)
        self.assertEqual(d.replies(), ["250 2.0.0 Ok"])
        h.clock.advance(1)
        self.assertEqual(d.replies(), ["421 4.4.2 Error: timeout exceeded"])
        self.assertTrue(d.closed)

    def test_timeout_mid_data_aborts(self) -> None:
        h = Harness(limits=limits(idle_timeout=60.0))
        d = h.connect()
        d.greet()
        d.transaction()
        d.send(b"DATA\r\nSubject: x\r\n")
        h.clock.advance(60)
        self.assertEqual(d.replies()[-1], "421 4.4.2 Error: timeout exceeded")
        self.assertEqual(h.sink.opened[0].state, "aborted")
        self.assertEqual(h.message_events()[0]["outcome"], "aborted")

    def test_no_timeout_while_we_are_busy(self) -> None:
        h = Harness(limits=limits(idle_timeout=60.0))
        h.sink.hold_commits = True
        d = h.connect()
        d.greet()
        d.transaction()
        d.send(b"DATA\r\nhi\r\n.\r\n")
        h.clock.advance(600)
        self.assertFalse(d.closed)
        h.sink.release()
        self.assertTrue(d.replies()[-1].startswith("250 2.0.0 Ok: queued as "))
        h.clock.advance(60)
        self.assertTrue(d.closed)


class ErrorTests(SynchronousTestCase):
    def test_too_many_errors(self) -> None:
        h = Harness(limits=limits(max_errors=3))
        d = h.connect()
        d.greet()
        d.send(b"X\r\nNOOP\r\nY\r\nZ\r\nNOOP\r\n")
        self.assertEqual(
            d.replies(),
            [
                "500 5.5.1 Error: command not recognized",
                "250 2.0.0 Ok",
                "500 5.5.1 Error: command not recognized",
                "500 5.5.1 Error: command not recognized",
                "421 4.7.0 Error: too many errors",
            ],
        )
        self.assertTrue(d.closed)

    def test_unexpected_exception_answers_451_and_session_survives(self) -> None:
        h = Harness()

        def broken(address: str) -> bool:
            raise RuntimeError("users database exploded")

        h.policy._mailbox_exists = broken
        d = h.connect()
        d.greet()
        d.run(f"""
            C: MAIL FROM:<a@example.net>
            S: 250 2.1.0 Ok
            C: RCPT TO:<user@{LOCAL}>
            S: 451 4.3.0 Error: internal server error, try again later
            C: RCPT TO:<x@catchall.example>
            S: 250 2.1.5 Ok
        """)
        [failure] = h.failures()
        self.assertIsInstance(failure["log_failure"].value, RuntimeError)

    def test_failed_deferred_from_policy(self) -> None:
        h = Harness()
        d = h.connect()
        d.greet()
        h.factory.policy = SlowPolicy(h.policy)
        h.factory.policy.check_sender = lambda session, sender: fail(ValueError("boom"))
        d.run("""
            C: MAIL FROM:<a@example.net>
            S: 451 4.3.0 Error: internal server error, try again later
            C: NOOP
            S: 250 2.0.0 Ok
        """)
        self.assertEqual(len(h.failures()), 1)

    def test_every_reply_after_greeting_has_an_enhanced_code(self) -> None:
        # RFC 2034: all but the greeting, HELO/EHLO replies and intermediate 354 carry one.
        h = Harness()
        d = h.connect()
        d.greet()
        d.send(
            b"NOOP\r\nFOO\r\nVRFY x\r\nEXPN x\r\nMAIL FROM:<a@example.net>\r\n"
            b"RCPT TO:<x@elsewhere.example>\r\nRCPT TO:<user@example.org>\r\nRSET\r\nHELP\r\n"
            b"MAIL FROM:<a@example.net> X=1\r\nMAIL FROM:<>\r\nRCPT TO:<user@example.org>\r\n"
            b"DATA\r\nx\r\n.\r\nQUIT\r\n"
        )
        lines = d.replies()
        self.assertEqual(len(lines), 17)
        for line in lines:
            if line.startswith("354 "):
                continue
            self.assertRegex(line, r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3} ")


class DeliveryFailureTests(SynchronousTestCase):
    def _deliver(self, h: Harness) -> list[str]:
        d = h.connect()
        d.greet()
        d.transaction()
        d.send(b"DATA\r\nSubject: x\r\n\r\nhello\r\n.\r\nNOOP\r\n")
        return d.replies()

    def test_open_fails(self) -> None:
        h = Harness()
        h.sink.fail_open = DeliveryError("disk full")
        self.assertEqual(
            self._deliver(h)[0], "451 4.3.0 Error: queue file write error, try again later"
        )
        h.sink.fail_open = DeliveryError("no such mailbox", permanent=True)
        self.assertEqual(self._deliver(h)[0], "554 5.3.0 Error: message could not be stored")
        self.assertEqual([e["code"] for e in h.message_events()], [451, 554])

    def test_commit_fails(self) -> None:
        h = Harness()
        h.sink.fail_commit = DeliveryError("fsync failed")
        self.assertEqual(
            self._deliver(h),
            [
                "354 End data with <CR><LF>.<CR><LF>",
                "451 4.3.0 Error: queue file write error, try again later",
                "250 2.0.0 Ok",
            ],
        )
        h.sink.fail_commit = DeliveryError("quota", permanent=True)
        self.assertEqual(self._deliver(h)[1], "554 5.3.0 Error: message could not be stored")
        self.assertEqual(h.sink.delivered, [])

    def test_commit_raises_unexpected(self) -> None:
        h = Harness()
        h.sink.fail_commit = OSError("EIO")
        self.assertEqual(
            self._deliver(h)[1], "451 4.3.0 Error: internal server error, try again later"
        )
        self.assertEqual(len(h.failures()), 1)

    def test_write_fails(self) -> None:
        h = Harness()
        d = h.connect()
        d.greet()
        d.transaction()
        d.send(b"DATA\r\n")
        h.sink.fail_write = DeliveryError("disk full")
        d.send(b"Subject: x\r\n\r\nhello\r\n.\r\n")
        self.assertEqual(
            d.replies()[-1], "451 4.3.0 Error: queue file write error, try again later"
        )
        self.assertEqual(h.sink.opened[0].state, "aborted")

    def test_connection_lost_mid_data_aborts(self) -> None:
        h = Harness()
        d = h.connect()
        d.greet()
        d.transaction()
        d.send(b"DATA\r\nSubject: x\r\n\r\npart")
        d.protocol.connectionLost(None)
        self.assertEqual(h.sink.opened[0].state, "aborted")
        self.assertEqual(h.sink.delivered, [])
        [event] = h.message_events()
        self.assertEqual(event["outcome"], "aborted")


class LogTests(SynchronousTestCase):
    def test_one_line_per_message_with_fields(self) -> None:
        h = Harness(limits=limits(max_message_size=50))
        d = h.connect(peer="198.51.100.4")
        d.greet()
        d.transaction("<a@example.net>", f"<user+x@{LOCAL}>", "<b@catchall.example>")
        d.send(b"DATA\r\nSubject: x\r\n\r\nhello\r\n.\r\n")
        self.assertEqual(d.replies()[-1][:3], "250")
        d.transaction()
        d.send(b"DATA\r\n" + b"x" * 60 + b"\r\n.\r\n")
        lines = d.replies()
        self.assertEqual(lines[-1][:3], "552")
        accepted, rejected = h.message_events()
        qid = h.sink.delivered[0].envelope.queue_id
        self.assertEqual(
            {
                k: accepted[k]
                for k in (
                    "outcome",
                    "queue_id",
                    "client",
                    "mail_from",
                    "recipients",
                    "size",
                    "code",
                )
            },
            {
                "outcome": "accepted",
                "queue_id": qid,
                "client": "198.51.100.4",
                "mail_from": "a@example.net",
                "recipients": [f"user+x@{LOCAL}", "b@catchall.example"],
                "size": len(b"Subject: x\r\n\r\nhello\r\n"),
                "code": 250,
            },
        )
        self.assertEqual(
            (rejected["outcome"], rejected["code"], rejected["enhanced"]),
            ("rejected", 552, "5.3.4"),
        )
        self.assertNotEqual(rejected["queue_id"], qid)
        self.assertEqual(h.failures(), [])


class StartTLSTests(SynchronousTestCase):
    CONTEXT = object()

    def test_not_offered_without_context(self) -> None:
        d = Harness().connect()
        d.replies()
        d.send(b"EHLO c\r\n")
        self.assertNotIn("250-STARTTLS", d.replies())

    def test_starttls_discards_plaintext_and_resets_session(self) -> None:
        h = Harness(tls_context_factory=self.CONTEXT)
        d = h.connect(tls=True)
        d.replies()
        d.send(b"EHLO c\r\n")
        self.assertIn("250-STARTTLS", d.replies())
        d.send(b"MAIL FROM:<a@example.net>\r\n")
        d.replies()
        # CVE-2011-0411: commands pipelined after STARTTLS in plain text must be dropped.
        d.send(b"STARTTLS\r\nRCPT TO:<user@example.org>\r\n")
        self.assertEqual(d.replies(), ["220 2.0.0 Ready to start TLS"])
        self.assertIs(d.transport.tls_started_with, self.CONTEXT)
        d.run(
            """
            C: MAIL FROM:<a@example.net>
            S: 503 5.5.1 Error: send HELO/EHLO first
            C: EHLO c
        """
            + EHLO_REPLY.replace("250 HELP", "250 HELP")
            + """
            C: STARTTLS
            S: 503 5.5.1 Error: TLS already active
            C: MAIL FROM:<a@example.net>
            S: 250 2.1.0 Ok
            C: RCPT TO:<user@example.org>
            S: 250 2.1.5 Ok
            C: DATA
            S: 354 End data with <CR><LF>.<CR><LF>
            C: .
            S: 250 2.0.0 Ok: queued as ...
        """
        )
        envelope = h.sink.delivered[0].envelope
        self.assertEqual(envelope.protocol, "ESMTPS")
        self.assertEqual(envelope.tls, "TLS")
        self.assertIn(b"(using TLS)", h.sink.delivered[0].data)

    def test_replies_before_starttls_go_in_plain_text(self) -> None:
        # EHLO and STARTTLS pipelined: EHLO's reply was held for the group; it must be written
        # before the 220 and before the switch to TLS (after it, it would be sent encrypted).
        at_switch: list[bytes] = []

        class Recording(TLSStringTransport):
            def startTLS(self, context_factory: object) -> None:
                at_switch.append(self.value())
                super().startTLS(context_factory)

        h = Harness(tls_context_factory=self.CONTEXT)
        d = h.connect(tls=True)
        d.transport = Recording(
            hostAddress=d.transport.getHost(), peerAddress=d.transport.getPeer()
        )
        d.protocol = h.factory.buildProtocol(d.transport.getPeer())
        d.protocol.makeConnection(d.transport)
        d.send(b"EHLO c\r\nSTARTTLS\r\n")
        [written] = at_switch
        self.assertTrue(written.startswith(b"220 mx.example.org"))
        self.assertIn(b"250 HELP\r\n", written)
        self.assertTrue(written.endswith(b"250 HELP\r\n220 2.0.0 Ready to start TLS\r\n"))
        self.assertEqual(d.transport.value(), written)  # nothing after the switch

    def _stalled_after_starttls(self):
        h = Harness(tls_context_factory=self.CONTEXT)
        d = h.connect(tls=True)
        d.send(b"EHLO c\r\nSTARTTLS\r\n")
        self.assertEqual(d.replies()[-1], "220 2.0.0 Ready to start TLS")
        # The idle timer bounds the handshake too: no handshake bytes reach the session.
        h.clock.advance(Limits().idle_timeout)
        self.assertTrue(d.closed)
        return h, d

    def test_a_handshake_never_finished_after_starttls_is_cut_off(self) -> None:
        """Twisted's TLS layer holds the 421 (and so the connection and its place) until the
        handshake is done: a client that never finishes it is aborted HANDSHAKE_GRACE later."""
        h, d = self._stalled_after_starttls()
        h.clock.advance(HANDSHAKE_GRACE - 0.5)
        self.assertFalse(d.transport.disconnected)  # still time to finish and read the 421
        h.clock.advance(0.5)
        self.assertTrue(d.transport.disconnected)  # StringTransport: aborted

    def test_after_the_handshake_the_close_is_not_cut_short(self) -> None:
        h = Harness(tls_context_factory=self.CONTEXT)
        d = h.connect(tls=True)
        d.send(b"EHLO c\r\nSTARTTLS\r\n")
        d.replies()
        d.protocol.handshakeCompleted()  # IHandshakeListener, as Twisted's TLS layer calls it
        h.clock.advance(Limits().idle_timeout)
        self.assertTrue(d.closed)
        h.clock.advance(HANDSHAKE_GRACE)
        self.assertFalse(d.transport.disconnected)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_starttls_needs_ehlo(self) -> None:
        d = Harness(tls_context_factory=self.CONTEXT).connect(tls=True)
        d.replies()
        d.send(b"STARTTLS\r\n")
        self.assertEqual(d.replies(), ["503 5.5.1 Error: send HELO/EHLO first"])
        self.assertIsNone(d.transport.tls_started_with)


class ReceivedHeaderTests(SynchronousTestCase):
    def test_header_written_first(self) -> None:
        h = Harness()
        d = h.connect(peer="203.0.113.9")
        d.greet()
        d.transaction("<a@example.net>", f"<User@{LOCAL}>")
        d.send(b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")
        message = h.sink.delivered[0]
        qid = message.envelope.queue_id
        self.assertEqual(
            message.data,
            (
                "Received: from client.example.net (unknown [203.0.113.9])\r\n"
                f"\tby mx.example.org (mailhub) with ESMTP id {qid}\r\n"
                f"\tfor <User@{LOCAL}>; Fri, 15 Jan 2027 08:00:00 +0000\r\n"
                "Subject: hi\r\n\r\nbody\r\n"
            ).encode(),
        )
        self.assertEqual(body_of(message), b"Subject: hi\r\n\r\nbody\r\n")
        self.assertTrue(re.fullmatch(r"[A-Z2-7]{16}", qid))

    def test_dev_accept_any(self) -> None:
        h = Harness(domains=DomainsConfig(accept_any=True), mailboxes=set())
        d = h.connect()
        d.greet()
        d.run("""
            C: MAIL FROM:<a@example.net>
            S: 250 2.1.0 Ok
            C: RCPT TO:<Anyone@Anywhere.Example>
            S: 250 2.1.5 Ok
            C: RCPT TO:<Postmaster>
            S: 250 2.1.5 Ok
        """)
        self.assertEqual(
            [r.mailbox for r in d.protocol._txn.recipients],
            ["anyone@anywhere.example", "postmaster@localhost"],
        )
