"""Submission checks the header From/Sender with MAIL FROM's rule (restrict_sender, RFC 6409 4.3),
and can name the AUTH login in Received: (Postfix's smtpd_sasl_authenticated_header)."""

from __future__ import annotations

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailhub.config import DomainsConfig, SMTPConfig
from mailhub.envelope import Envelope, Recipient
from mailhub.interfaces import MessageRejected
from mailhub.received import received_header
from mailhub.smtp.policy import Role, SubmissionPolicy
from mailhub.smtp.submission import (
    MAX_ORIGINATOR_OCTETS,
    SubmissionSink,
    originator_mailboxes,
)
from tests.support.smtp import LOCAL, Dialog
from tests.support.smtp_auth import USER, AuthHarness, plain, starttls
from tests.support.submission import RECEIVED, MemorySink

OWN = f"alice@{LOCAL}"  # USER of the auth tests
FORGED = f"553 5.7.1 Error: From header address <ceo@{LOCAL}> not owned by the authenticated user"
POLICY = SubmissionPolicy(
    DomainsConfig(local=(LOCAL,)),
    lambda m: True,
    aliases_of={OWN: [f"sales@{LOCAL}"]}.get,
)


def addresses(value: bytes) -> list[str]:
    return [str(m) for m in originator_mailboxes(value)]


class OriginatorParsingTests(SynchronousTestCase):
    def test_the_forms_mail_programs_write(self) -> None:
        cases = {
            b"alice@example.org": ["alice@example.org"],
            b" Alice Example <alice@example.org>": ["alice@example.org"],
            b' "Example, Alice" <alice@example.org>': ["alice@example.org"],
            b" alice@example.org (Alice Example)": ["alice@example.org"],
            b" (who) Alice <alice@example.org> (comment)": ["alice@example.org"],
            b" =?utf-8?q?Al=C3=AFce?= <alice@example.org>": ["alice@example.org"],
            " Alïce <alice@example.org>".encode(): ["alice@example.org"],
            " Bücher <bücher@bücher.example>".encode(): ["bücher@xn--bcher-kva.example"],
            b" Alice\r\n <alice@example.org>\r\n": ["alice@example.org"],  # folded
            b" Friends: alice@example.org, Bob <bob@example.org>;": [
                "alice@example.org",
                "bob@example.org",
            ],
            b" <@relay.example:alice@example.org>": ["alice@example.org"],  # obs-route
            b' "a b"@example.org': ['"a b"@example.org'],
        }
        for value, expected in cases.items():
            self.assertEqual(addresses(value), expected, value)

    def test_ambiguous_or_empty_values_are_refused(self) -> None:
        # Each could be shown by some mail program as an address this parser did not check.
        for value in (
            b" alice@example.org <ceo@example.org>",
            b" <alice@example.org>ceo@example.org",
            b" Alice <alice@example.org> x <ceo@example.org>",
            b" alice@example.org ceo@example.org",
            b" alice@example.org;ceo@example.org",
            b" Alice <alice@example.org",
            b" alice",
            b" alice@example.org\x00",
            b" Undisclosed:;",
            b"",
            b"  ",
            b" alice@[192.0.2.1",
        ):
            self.assertRaises(ValueError, originator_mailboxes, value)


def envelope(mail_from: str = OWN, user: str | None = OWN) -> Envelope:
    return Envelope(
        queue_id="QID",
        mail_from=mail_from,
        recipients=[Recipient("bob@example.net", "bob@example.net")],
        authenticated_as=user,
    )


def sink_for(inner: MemorySink, restrict: bool = True) -> SubmissionSink:
    clock = Clock()
    clock.advance(1773489600)
    return SubmissionSink(
        inner,
        hostname="mx.example.org",
        clock=clock,
        id_source=lambda env: "ID",
        may_send_as=POLICY.may_send_as if restrict else None,
        run=inline,
    )


def inline(f, *args) -> Deferred:
    return maybeDeferred(f, *args)


class HeaderFromTests(SynchronousTestCase):
    def submit(self, header: bytes, **kw) -> tuple[bytes, str]:
        """Write RECEIVED + header + a body; the inner message's data and state."""
        inner = MemorySink()
        m = sink_for(inner, kw.pop("restrict", True)).open(envelope(**kw))
        m.write(RECEIVED)
        m.write(header + b"\r\nbody\r\n")
        self.successResultOf(m.commit())
        [out] = inner.messages
        return out.data, out.state

    def rejected(self, header: bytes, **kw) -> MessageRejected:
        inner = MemorySink()
        m = sink_for(inner).open(envelope(**kw))
        m.write(RECEIVED)
        m.write(header + b"\r\nbody\r\n")
        e = self.failureResultOf(m.commit(), MessageRejected).value
        self.assertEqual(inner.messages[0].state, "aborted")  # nothing stored
        return e

    def test_forged_from_is_553_naming_the_address(self) -> None:
        e = self.rejected(b"From: The CEO <ceo@example.org>\r\nSubject: pay\r\n")
        self.assertEqual((e.code, e.enhanced), (553, "5.7.1"))
        self.assertTrue(e.permanent)
        self.assertEqual(
            e.text,
            "Error: From header address <ceo@example.org> not owned by the authenticated user",
        )

    def test_own_addresses_pass_in_every_form(self) -> None:
        for value in (
            b"alice@example.org",
            b"Alice Example <Alice@Example.ORG>",
            b"alice+lists@example.org (Alice)",
            b'"Example, Alice" <sales@example.org>',  # an alias of hers
            b"=?utf-8?b?QWzDr2Nl?= <alice@example.org>",
            "Alïce Ëxample <alice@example.org>".encode(),
            b"Alice\r\n <alice@example.org>",
        ):
            header = b"From: " + value + b"\r\nSubject: hi\r\n"
            data, state = self.submit(header)
            self.assertEqual(state, "committed", value)
            self.assertIn(header, data)

    def test_every_author_and_the_sender_are_checked(self) -> None:
        e = self.rejected(
            b"From: alice@example.org, ceo@example.org\r\nSender: alice@example.org\r\n"
        )
        self.assertIn("<ceo@example.org>", e.text)
        e = self.rejected(b"From: alice@example.org\r\nSender: ceo@example.org\r\n")
        self.assertIn("Sender header address <ceo@example.org>", e.text)
        e = self.rejected(b"From: alice@example.org\r\nFrom: ceo@example.org\r\n")  # two fields
        self.assertIn("<ceo@example.org>", e.text)
        e = self.rejected(b"From: Board: alice@example.org, ceo@example.org;\r\n")  # a group
        self.assertIn("<ceo@example.org>", e.text)

    def test_a_folded_forgery_across_writes(self) -> None:
        message = RECEIVED + b"Subject: x\r\nFrom: Alice\r\n  <ceo@example.org>\r\n\r\nbody\r\n"
        for i in range(len(RECEIVED), len(message)):
            inner = MemorySink()
            m = sink_for(inner).open(envelope())
            m.write(message[:i])
            m.write(message[i:])
            self.failureResultOf(m.commit(), MessageRejected)

    def test_unreadable_from_is_refused(self) -> None:
        e = self.rejected(b"From: alice@example.org <ceo@example.org>\r\n")
        self.assertEqual((e.code, e.enhanced), (553, "5.7.1"))
        self.assertTrue(e.text.startswith("Error: cannot check the From header: "), e.text)
        e = self.rejected(b"From: Undisclosed:;\r\n")
        self.assertIn("no address", e.text)

    def test_a_huge_from_is_refused_without_being_held(self) -> None:
        inner = MemorySink()
        m = sink_for(inner).open(envelope())
        m.write(RECEIVED + b"From: alice@example.org")
        for _ in range(100):
            m.write(b",\r\n alice@example.org" * 100)
        held = sum(len(p) for _, pieces in m._originators for p in pieces)
        self.assertLessEqual(held, MAX_ORIGINATOR_OCTETS)
        m.write(b"\r\n\r\nbody\r\n")
        e = self.failureResultOf(m.commit(), MessageRejected).value
        self.assertIn("too long", e.text)
        self.assertEqual(inner.messages[0].state, "aborted")

    def test_header_only_message_fails_at_commit(self) -> None:
        inner = MemorySink()
        m = sink_for(inner).open(envelope())
        m.write(RECEIVED + b"From: ceo@example.org")
        f = self.failureResultOf(m.commit(), MessageRejected)
        self.assertEqual(f.value.code, 553)
        self.assertEqual(inner.messages[0].state, "aborted")

    def test_missing_from_gets_the_mail_from_address(self) -> None:
        # RFC 6409 8.1: the MSA may fix the header; MAIL FROM passed the same rule.
        data, state = self.submit(b"Subject: hi\r\n", mail_from=f"alice+x@{LOCAL}")
        self.assertEqual(state, "committed")
        self.assertIn(b"\r\nFrom: alice+x@example.org\r\nDate: ", data)

    def test_several_authors_all_hers(self) -> None:
        header = b"From: alice@example.org, Sales <sales@example.org>\r\n"
        data, state = self.submit(header)
        self.assertEqual(state, "committed")
        self.assertIn(header, data)

    def test_bcc_and_other_fields_unaffected(self) -> None:
        data, _ = self.submit(b"From: alice@example.org\r\nBcc: ceo@example.org\r\n")
        self.assertNotIn(b"Bcc", data)

    def test_without_restrict_sender_nothing_is_checked_or_added(self) -> None:
        data, state = self.submit(b"From: ceo@example.org\r\n", restrict=False)
        self.assertEqual(state, "committed")
        data, _ = self.submit(b"Subject: x\r\n", restrict=False)
        self.assertNotIn(b"From:", data)

    def test_resent_fields_and_lookalikes_are_not_originators(self) -> None:
        for header in (b"Resent-From: ceo@example.org\r\n", b"From-X: ceo@example.org\r\n"):
            _, state = self.submit(b"From: alice@example.org\r\n" + header)
            self.assertEqual(state, "committed", header)


# --- the receiver's answer, in dialogs -----------------------------------------------------


class DialogTests(SynchronousTestCase):
    def harness(self, **kw) -> AuthHarness:
        h = AuthHarness(self, role=Role.SUBMISSION, **kw)
        h.harness.factory.sink = SubmissionSink(
            h.harness.sink,
            hostname="mx.example.org",
            clock=h.clock,
            may_send_as=h.harness.policy.may_send_as,
            run=inline,
        )
        return h

    def logged_in(self, h: AuthHarness) -> Dialog:
        d = h.connect()
        starttls(d)
        d.run(f"C: AUTH PLAIN {plain()}\nS: 235 2.7.0 Authentication successful")
        d.run(f"C: MAIL FROM:<{USER}>\nS: 250 2.1.0 Ok\nC: RCPT TO:<bob@{LOCAL}>\nS: 250 2.1.5 Ok")
        return d

    def test_data_with_a_forged_from(self) -> None:
        h = self.harness()
        d = self.logged_in(h)
        d.run("C: DATA\nS: 354 End data with <CR><LF>.<CR><LF>")
        d.send(f"From: The CEO <ceo@{LOCAL}>\r\nSubject: urgent\r\n\r\nPay now.\r\n.\r\n".encode())
        d.run(f"""
            S: {FORGED}
            C: NOOP
            S: 250 2.0.0 Ok
        """)
        self.assertEqual(h.harness.sink.delivered, [])
        self.assertEqual([m.state for m in h.harness.sink.opened], ["aborted"])
        [event] = h.harness.message_events()
        self.assertEqual(event["code"], 553)

    def test_data_with_her_own_from(self) -> None:
        h = self.harness()
        d = self.logged_in(h)
        d.run("C: DATA\nS: 354 End data with <CR><LF>.<CR><LF>")
        d.send(f'From: "Alice (work)" <Alice@{LOCAL}> (comment)\r\n\r\nHello.\r\n.\r\n'.encode())
        d.run("S: 250 2.0.0 Ok: queued as ...")
        self.assertEqual(len(h.harness.sink.delivered), 1)

    def test_bdat_forged_from_in_the_last_chunk(self) -> None:
        h = self.harness()
        d = self.logged_in(h)
        body = f"From: ceo@{LOCAL}\r\n\r\nPay now.\r\n".encode()
        d.send(b"BDAT %d LAST\r\n" % len(body) + body)
        self.assertEqual(
            d.replies(),
            [FORGED],
        )
        self.assertEqual(h.harness.sink.delivered, [])
        d.run(f"C: MAIL FROM:<{USER}>\nS: 250 2.1.0 Ok")  # the transaction is over

    def test_bdat_header_ending_in_an_early_chunk(self) -> None:
        # The header is checked when the message is complete: the LAST chunk gets the 553.
        h = self.harness()
        d = self.logged_in(h)
        first = b"Subject: x\r\nFrom: Alice\r\n <ceo@example.org>\r\n\r\nPay"
        d.send(b"BDAT %d\r\n" % len(first) + first + b"BDAT 7 LAST\r\n now.\r\n")
        self.assertEqual(d.replies(), [f"250 2.0.0 Ok: {len(first)} octets received", FORGED])
        self.assertEqual(h.harness.sink.delivered, [])
        self.assertEqual([m.state for m in h.harness.sink.opened], ["aborted"])

    def test_bdat_own_from(self) -> None:
        h = self.harness()
        d = self.logged_in(h)
        first = b"From: Alice <al"
        rest = f"ice@{LOCAL}>\r\n\r\nHello.\r\n".encode()
        d.send(b"BDAT %d\r\n" % len(first) + first + b"BDAT %d LAST\r\n" % len(rest) + rest)
        replies = d.replies()
        self.assertTrue(replies[-1].startswith("250 2.0.0 Ok: queued as "), replies)
        self.assertEqual(len(h.harness.sink.delivered), 1)


class ReceivedAuthHeaderTests(SynchronousTestCase):
    def received(self, **config) -> bytes:
        h = AuthHarness(self, role=Role.SUBMISSION, smtp_config=SMTPConfig(**config))
        d = h.connect()
        starttls(d)
        d.run(f"C: AUTH PLAIN {plain()}\nS: 235 2.7.0 Authentication successful")
        d.run(f"C: MAIL FROM:<{USER}>\nS: 250 2.1.0 Ok\nC: RCPT TO:<bob@{LOCAL}>\nS: 250 2.1.5 Ok")
        d.run("C: DATA\nS: 354 ...")
        d.send(f"From: {USER}\r\n\r\nhi\r\n.\r\n".encode())
        d.run("S: 250 2.0.0 Ok: queued ...")
        [message] = h.harness.sink.delivered
        return message.data[: message.data.index(b"; ")]

    def test_off_by_default(self) -> None:
        self.assertNotIn(b"Authenticated", self.received())

    def test_postfix_wording_when_on(self) -> None:
        header = self.received(received_auth_header=True)
        self.assertEqual(header.split(b"\r\n")[1], f"\t(Authenticated sender: {USER})".encode())

    def test_the_login_cannot_break_the_comment(self) -> None:
        env = envelope(user="a(b)\\c d@example.org")
        header = received_header(env, authenticated_sender=True)
        self.assertIn(b"\r\n\t(Authenticated sender: abcd@example.org)\r\n", header)
        self.assertNotIn(b"Authenticated", received_header(env))


class RefusalTextTests(SynchronousTestCase):
    def test_the_reason_is_short_and_printable(self) -> None:
        with self.assertRaises(ValueError) as caught:
            originator_mailboxes(b" alice@example.org " + b"\x01x" * 5000 + b" <ceo@example.org>")
        reason = str(caught.exception)
        self.assertLessEqual(len(reason), 80)
        self.assertTrue(reason.isprintable(), reason)


class ParsingOffTheReactor(SynchronousTestCase):
    def test_the_parse_goes_through_run(self) -> None:
        # The stdlib address parser needs tens of milliseconds for odd kilobytes: a worker's job.
        calls: list[tuple[Deferred, object, tuple]] = []

        def held(f, *args) -> Deferred:
            d: Deferred = Deferred()
            calls.append((d, f, args))
            return d

        inner = MemorySink()
        sink = SubmissionSink(
            inner,
            hostname="mx.example.org",
            clock=Clock(),
            may_send_as=POLICY.may_send_as,
            run=held,
        )
        m = sink.open(envelope())
        m.write(RECEIVED + b"From: The CEO <ceo@example.org>\r\n\r\nbody\r\n")
        result = m.commit()
        self.assertNoResult(result)
        self.assertEqual(inner.messages[0].state, "open")
        [(d, f, args)] = calls
        maybeDeferred(f, *args).chainDeferred(d)
        self.assertEqual(self.failureResultOf(result, MessageRejected).value.code, 553)
        self.assertEqual(inner.messages[0].state, "aborted")
