"""What the checks make once (issue 14's speed target): a results object's header bytes; the
header section lowered once for both the DKIM/ARC look and the From search; the
checking sink keeps what it was given even if the caller's buffer changes."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks.dmarc import header_from_domain
from mailhub.checks.inbound import JUNK, Verdict
from mailhub.checks.results import AuthenticationResults, MethodResult
from tests.test_checks_sink import CONTENT, OURS, RECEIVED, RESULTS, Harness, envelope


def results(spf: str = "pass", domain: str = "a.test") -> tuple[MethodResult, ...]:
    return (
        MethodResult("spf", spf, "", (("smtp.mailfrom", f"alice@{domain}"),)),
        MethodResult("dkim", "none", "the message has no DKIM signature"),
        MethodResult("dmarc", "pass", "", (("header.from", domain),)),
    )


class HeaderTests(SynchronousTestCase):
    def test_header_written_once_and_as_header_value_says(self) -> None:
        ar = AuthenticationResults("mx.b.test", results())
        header = ar.header()
        self.assertEqual(header, b"Authentication-Results: " + ar.header_value() + b"\r\n")
        self.assertIs(ar.header(), header)
        # Equal objects still compare (and hash) by their fields only.
        self.assertEqual(ar, AuthenticationResults("mx.b.test", results()))
        self.assertEqual(hash(ar), hash(AuthenticationResults("mx.b.test", results())))


class FromWithLoweredTests(SynchronousTestCase):
    MESSAGE = b"Received: x\r\nFROM : Alice <alice@Mail.Example.COM>\r\nTo: b@c.test\r\n\r\nhi\r\n"

    def head_lowered(self, message: bytes) -> bytes:
        return message[: message.find(b"\r\n\r\n") + 2].lower()

    def test_lowered_given_or_not_same_domain(self) -> None:
        lowered = self.head_lowered(self.MESSAGE)
        self.assertEqual(header_from_domain(self.MESSAGE), "mail.example.com")
        self.assertEqual(header_from_domain(self.MESSAGE, lowered), "mail.example.com")

    def test_lowered_of_another_length_is_not_used(self) -> None:
        # (The header through its last CRLF only: anything else is found again.)
        wrong = self.head_lowered(self.MESSAGE)[:-2]
        self.assertEqual(header_from_domain(self.MESSAGE, wrong), "mail.example.com")
        self.assertEqual(
            header_from_domain(self.MESSAGE, b"from: x@y.test\r\n"), "mail.example.com"
        )

    def test_lowered_is_what_is_searched(self) -> None:
        # The caller's lowered bytes are where From is looked for: given a copy that has no
        # From line (same length), nothing is found, so they are really used.
        lowered = self.head_lowered(self.MESSAGE).replace(b"from :", b"xxxx :")
        self.assertIsNone(header_from_domain(self.MESSAGE, lowered))


class HeldBytesTests(SynchronousTestCase):
    def test_a_buffer_changed_after_write_does_not_change_the_message(self) -> None:
        h = Harness()
        message = h.sink.open(envelope())
        message.write(RECEIVED)
        buffer = bytearray(CONTENT)
        message.write(buffer)  # type: ignore[arg-type]  # a caller handing a reused buffer
        buffer[:] = b"X" * len(buffer)
        self.assertEqual(self.successResultOf(message.commit()), "Q1")
        [stored] = h.inner.delivered
        self.assertEqual(stored.data, OURS + RECEIVED + CONTENT)


class OneCopyTests(SynchronousTestCase):
    def test_junk_for_one_plain_recipient_still_gets_its_own_copy(self) -> None:
        # Every mailbox is its address (no alias): only the Junk decision splits the copies.
        verdict = Verdict(RESULTS, JUNK, junk=frozenset({"x@b.test"}), would=JUNK)
        h = Harness(verdict)
        self.successResultOf(h.send(CONTENT, envelope("x@b.test", "y@b.test")))
        folders = {m.envelope.folder: m.envelope.mailboxes for m in h.inner.delivered}
        self.assertEqual(folders, {"Junk": ["x@b.test"], None: ["y@b.test"]})

    def test_plain_recipients_share_one_copy(self) -> None:
        h = Harness()
        env = envelope("x@b.test", "y@b.test", "z@elsewhere.test")
        self.successResultOf(h.send(CONTENT, env))
        [stored] = h.inner.delivered
        self.assertIs(stored.envelope, env)  # the receiver's own envelope, nothing regrouped
        self.assertEqual(stored.data, OURS + RECEIVED + CONTENT)
