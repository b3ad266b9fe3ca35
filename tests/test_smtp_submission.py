"""Submission fixes (RFC 6409 8): Date and Message-ID added when missing, Bcc removed."""

from __future__ import annotations

import re
from itertools import combinations, pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailhub.envelope import Envelope, Recipient
from mailhub.interfaces import DeliveryError, IIncomingMessage, IMessageSink
from mailhub.smtp.submission import MAX_UNDECIDED, SubmissionSink, default_id_source
from tests.support.submission import RECEIVED, MemoryMessage, MemorySink

DATE = b"Date: Sat, 14 Mar 2026 12:00:00 +0000\r\n"  # Clock set to 1773489600
MSGID = b"Message-ID: <QID.1@mx.example.org>\r\n"
ADDED = DATE + MSGID


def envelope() -> Envelope:
    return Envelope(
        queue_id="QID",
        mail_from="alice@example.org",
        recipients=[Recipient("bob@example.net", "bob@example.net")],
    )


def counter_ids():
    n = 0

    def source(env: Envelope) -> str:
        nonlocal n
        n += 1
        return f"{env.queue_id}.{n}"

    return source


def make_sink(inner: MemorySink | None = None) -> tuple[SubmissionSink, MemorySink]:
    inner = inner if inner is not None else MemorySink()
    clock = Clock()
    clock.advance(1773489600)
    sink = SubmissionSink(inner, hostname="mx.example.org", clock=clock, id_source=counter_ids())
    return sink, inner


def submit(chunks: list[bytes], received: bytes = RECEIVED) -> bytes:
    """Drive the sink as the receiver does: the trace field first, then content, then commit."""
    sink, inner = make_sink()
    m = sink.open(envelope())
    m.write(received)
    for c in chunks:
        m.write(c)
    m.commit()
    [out] = inner.messages
    assert out.state == "committed"
    return out.data


def split_header(message: bytes) -> tuple[bytes, bytes]:
    """(header section, rest) of a whole message as a reader sees it: up to the first CRLF."""
    i = message.find(b"\r\n\r\n")
    return (message, b"") if i < 0 else (message[: i + 2], message[i + 2 :])


def field_names(header: bytes) -> list[bytes]:
    return [m.group(1).lower() for m in re.finditer(rb"^([^ \t\r\n:]+)[ \t]*:", header, re.M)]


class InterfaceTests(SynchronousTestCase):
    def test_both_interfaces(self) -> None:
        sink, _ = make_sink()
        verifyObject(IMessageSink, sink)
        verifyObject(IIncomingMessage, sink.open(envelope()))
        verifyObject(IMessageSink, MemorySink())
        verifyObject(IIncomingMessage, MemoryMessage(envelope()))

    def test_envelope_is_passed_on(self) -> None:
        sink, inner = make_sink()
        env = envelope()
        m = sink.open(env)
        self.assertIs(m.envelope, env)
        self.assertIs(inner.messages[0].envelope, env)

    def test_open_errors_propagate(self) -> None:
        @implementer(IMessageSink)
        class Full:
            def open(self, envelope):
                raise DeliveryError("disk full")

        sink = SubmissionSink(Full(), hostname="mx.example.org", clock=Clock())
        self.assertRaises(DeliveryError, sink.open, envelope())

    def test_hostname_must_fit_a_message_id(self) -> None:
        for bad in ("", "mx example.org", "mx..example.org", "exämple.org", "a@b"):
            self.assertRaises(ValueError, SubmissionSink, MemorySink(), hostname=bad, clock=Clock())
        SubmissionSink(MemorySink(), hostname="[192.0.2.1]", clock=Clock())

    def test_default_id_source(self) -> None:
        ids = {default_id_source(envelope()) for _ in range(100)}
        self.assertEqual(len(ids), 100)
        for i in ids:
            self.assertRegex(i, r"^QID\.[0-9a-f]{16}$")
        self.assertRegex(default_id_source(Envelope("", "")), r"^[0-9a-f]{16}$")

    def test_default_message_id(self) -> None:
        inner = MemorySink()
        sink = SubmissionSink(inner, hostname="mx.example.org", clock=Clock())
        m = sink.open(envelope())
        m.write(b"Subject: x\r\n\r\nbody\r\n")
        self.assertRegex(
            inner.messages[0].data, rb"\r\nMessage-ID: <QID\.[0-9a-f]{16}@mx\.example\.org>\r\n"
        )


class AddedFieldTests(SynchronousTestCase):
    def test_date_and_message_id_added_at_the_end_of_the_header(self) -> None:
        self.assertEqual(
            submit([b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"]),
            RECEIVED + b"From: a@example.org\r\nSubject: hi\r\n" + ADDED + b"\r\nbody\r\n",
        )

    def test_existing_fields_are_kept_as_they_are(self) -> None:
        header = (
            b"message-id:   <x@client>\r\n"
            b"DATE : Mon, 1 Jan 2001 00:00:00 -0800 (odd)\r\n"
            b"Subject: hi\r\n"
        )
        self.assertEqual(submit([header + b"\r\nbody\r\n"]), RECEIVED + header + b"\r\nbody\r\n")

    def test_only_the_missing_one_is_added(self) -> None:
        self.assertEqual(
            submit([b"Message-Id:<x@y>\r\n\r\nb\r\n"]),
            RECEIVED + b"Message-Id:<x@y>\r\n" + DATE + b"\r\nb\r\n",
        )
        self.assertEqual(
            submit([b"Date\t: today\r\n\r\nb\r\n"]),
            RECEIVED + b"Date\t: today\r\n" + MSGID + b"\r\nb\r\n",
        )

    def test_empty_fields_count_as_present(self) -> None:
        header = b"Date:\r\nMessage-ID:\r\n"
        self.assertEqual(submit([header + b"\r\n"]), RECEIVED + header + b"\r\n")

    def test_lookalike_names_do_not_count(self) -> None:
        header = (
            b"Resent-Message-ID: <r@client>\r\n"
            b"Resent-Date: Mon, 1 Jan 2001 00:00:00 +0000\r\n"
            b"X-Date: no\r\n"
            b"Subject: Date: Message-ID:\r\n"
            b" Date: folded\r\n"
        )
        self.assertEqual(
            submit([header + b"\r\nDate: in the body\r\n"]),
            RECEIVED + header + ADDED + b"\r\nDate: in the body\r\n",
        )

    def test_header_only_message(self) -> None:
        self.assertEqual(
            submit([b"Subject: no body\r\n"]), RECEIVED + b"Subject: no body\r\n" + ADDED
        )

    def test_header_only_with_unterminated_last_line(self) -> None:
        # Only BINARYMIME (BDAT) can deliver that; the line gets its CRLF before our fields.
        self.assertEqual(submit([b"Subject: no body"]), RECEIVED + b"Subject: no body\r\n" + ADDED)

    def test_nothing_after_the_trace_field(self) -> None:
        self.assertEqual(submit([]), RECEIVED + ADDED)

    def test_empty_header_section(self) -> None:
        self.assertEqual(submit([b"\r\nbody\r\n"]), RECEIVED + ADDED + b"\r\nbody\r\n")

    def test_no_header_at_all_gets_a_separator(self) -> None:
        # The first line is no field: the header section ends before it, and the empty line that
        # separates header and body goes in front of it (RFC 5322 2.1). The body is unchanged.
        self.assertEqual(
            submit([b"Hello Bob,\r\nsee you.\r\n"]),
            RECEIVED + ADDED + b"\r\nHello Bob,\r\nsee you.\r\n",
        )
        self.assertEqual(
            submit([b"Subject: x\r\nno colon here\r\n"]),
            RECEIVED + b"Subject: x\r\n" + ADDED + b"\r\nno colon here\r\n",
        )

    def test_unterminated_text_at_the_end_is_body(self) -> None:
        self.assertEqual(
            submit([b"Subject: x\r\nabc"]), RECEIVED + b"Subject: x\r\n" + ADDED + b"\r\nabc"
        )

    def test_utf8_header_bytes_pass_unchanged(self) -> None:
        header = "Subject: Grüße\r\nFrom: Jörg <jörg@bücher.example>\r\n".encode()
        self.assertEqual(
            submit([header + b"\r\n\xff\xfe body\r\n"]),
            RECEIVED + header + ADDED + b"\r\n\xff\xfe body\r\n",
        )

    def test_8bit_first_line_is_body(self) -> None:
        line = "Grüße: not a field name\r\n".encode()
        self.assertEqual(submit([line]), RECEIVED + ADDED + b"\r\n" + line)

    def test_overlong_field_name_is_body(self) -> None:
        line = b"X" * (MAX_UNDECIDED + 5) + b": v\r\n"
        self.assertEqual(submit([line]), RECEIVED + ADDED + b"\r\n" + line)
        # ... even when it arrives a byte at a time.
        self.assertEqual(submit([bytes([c]) for c in line]), RECEIVED + ADDED + b"\r\n" + line)

    def test_lf_only_message(self) -> None:
        # BINARYMIME content is not normalised: a bare LF still ends lines and the header.
        self.assertEqual(
            submit([b"Subject: x\nBcc: b@example.net\n\nbody\n"]),
            RECEIVED + b"Subject: x\n" + ADDED + b"\nbody\n",
        )

    def test_continuation_of_the_trace_field_is_kept(self) -> None:
        # Uniform: the receiver's Received field is a field like any other.
        self.assertEqual(
            submit([b"\tmore trace\r\n\r\nb\r\n"]),
            RECEIVED + b"\tmore trace\r\n" + ADDED + b"\r\nb\r\n",
        )


class BccTests(SynchronousTestCase):
    def test_bcc_removed_with_its_continuation_lines(self) -> None:
        message = (
            b"From: a@example.org\r\n"
            b"Bcc: one@example.net,\r\n"
            b"  two@example.net,\r\n"
            b"\tthree@example.net\r\n"
            b"To: b@example.net\r\n"
            b"\r\n"
            b"body\r\n"
        )
        self.assertEqual(
            submit([message]),
            RECEIVED + b"From: a@example.org\r\nTo: b@example.net\r\n" + ADDED + b"\r\nbody\r\n",
        )

    def test_all_spellings_and_resent_bcc(self) -> None:
        message = (
            b"BCC: a@example.net\r\n"
            b"bcc : b@example.net\r\n"
            b"Bcc\t:c@example.net\r\n"
            b"Bcc:\r\n"
            b"Resent-Bcc: d@example.net\r\n"
            b"Subject: x\r\n"
            b"bCc: e@example.net\r\n"
            b" f@example.net\r\n"
            b"\r\n"
            b"Bcc: in the body stays\r\n"
        )
        self.assertEqual(
            submit([message]),
            RECEIVED + b"Subject: x\r\n" + ADDED + b"\r\nBcc: in the body stays\r\n",
        )

    def test_lookalikes_stay(self) -> None:
        header = b"X-Bcc: a\r\nBccx: b\r\nSubject: Bcc: c\r\n Bcc: d\r\n"
        self.assertEqual(submit([header + b"\r\n"]), RECEIVED + header + ADDED + b"\r\n")

    def test_bcc_as_the_last_line_of_a_header_only_message(self) -> None:
        self.assertEqual(
            submit([b"Subject: x\r\nBcc: b@example.net\r\n"]), RECEIVED + b"Subject: x\r\n" + ADDED
        )
        self.assertEqual(
            submit([b"Subject: x\r\nBcc: b@example.net"]), RECEIVED + b"Subject: x\r\n" + ADDED
        )

    def test_attached_message_untouched(self) -> None:
        body = (
            b"--b\r\nContent-Type: message/rfc822\r\n\r\n"
            b"Bcc: inner@example.net\r\nSubject: inner\r\n\r\nx\r\n--b--\r\n"
        )
        header = b'Content-Type: multipart/mixed; boundary="b"\r\n'
        self.assertEqual(
            submit([header + b"\r\n" + body]), RECEIVED + header + ADDED + b"\r\n" + body
        )


class StreamingTests(SynchronousTestCase):
    def test_header_lines_go_on_as_they_arrive(self) -> None:
        sink, inner = make_sink()
        m = sink.open(envelope())
        m.write(RECEIVED)
        self.assertEqual(inner.messages[0].data, RECEIVED)
        m.write(b"Subject: x\r\nBcc: hidden@example.net\r\n")
        self.assertEqual(inner.messages[0].data, RECEIVED + b"Subject: x\r\n")
        m.write(b" more@example.net\r\nTo: b")
        # "To: b" is known to be a field: it goes on before its line ends.
        self.assertEqual(inner.messages[0].data, RECEIVED + b"Subject: x\r\nTo: b")
        m.write(b"@example.net\r\n")
        m.write(b"\r\n")
        self.assertEqual(
            inner.messages[0].data,
            RECEIVED + b"Subject: x\r\nTo: b@example.net\r\n" + ADDED + b"\r\n",
        )

    def test_body_writes_are_passed_through_as_they_are(self) -> None:
        sink, inner = make_sink()
        m = sink.open(envelope())
        m.write(RECEIVED + b"Subject: x\r\n\r\n")
        n = len(inner.messages[0].writes)
        chunks = [b"line one\r\n", b"Bcc: x\r\n", b"\r\n" * 1000]
        for c in chunks:
            m.write(c)
        body_writes = inner.messages[0].writes[n:]
        self.assertEqual(len(body_writes), len(chunks))
        for written, c in zip(body_writes, chunks, strict=True):
            self.assertIs(written, c)

    def test_a_huge_field_is_not_held(self) -> None:
        # A 1 MiB folded field value (BDAT/BINARYMIME has no line limit) streams through.
        sink, inner = make_sink()
        m = sink.open(envelope())
        m.write(RECEIVED + b"X-Big: ")
        piece = b"y" * 65536
        for _ in range(16):
            m.write(piece)
            self.assertTrue(inner.messages[0].data.endswith(piece))
        m.write(b"\r\n\r\n")
        m.commit()
        self.assertEqual(
            len(inner.messages[0].data), len(RECEIVED) + 7 + 16 * 65536 + 2 + len(ADDED) + 2
        )

    def test_a_huge_bcc_is_dropped_without_being_held(self) -> None:
        sink, inner = make_sink()
        m = sink.open(envelope())
        m.write(RECEIVED + b"Bcc: ")
        for _ in range(16):
            m.write(b"z" * 65536)
        m.write(b"\r\n \r\n\r\n")
        m.commit()
        self.assertEqual(inner.messages[0].data, RECEIVED + ADDED + b"\r\n")

    def test_every_split_gives_the_same_output(self) -> None:
        message = (
            b"From: a@example.org\r\n"
            b"bcc : x@example.net,\r\n"
            b"\ty@example.net\r\n"
            b"Subject: s\r\n"
            b"\r\n"
            b"Bcc: body\r\n"
        )
        expected = (
            RECEIVED + b"From: a@example.org\r\nSubject: s\r\n" + ADDED + b"\r\nBcc: body\r\n"
        )
        n = len(message)
        for cuts in [(i,) for i in range(1, n)] + list(combinations(range(1, n, 3), 2)):
            bounds = [0, *cuts, n]
            chunks = [message[a:b] for a, b in pairwise(bounds)]
            self.assertEqual(submit(chunks), expected, cuts)

    def test_every_split_without_a_body(self) -> None:
        for message, expected in [
            (b"Subject: x\r\nBcc: y", b"Subject: x\r\n" + ADDED),
            (b"Subject: x\r\nbody", b"Subject: x\r\n" + ADDED + b"\r\nbody"),
            (b"Subject: x\r\n\r", b"Subject: x\r\n" + ADDED + b"\r\n\r"),
        ]:
            for i in range(len(message) + 1):
                self.assertEqual(submit([message[:i], message[i:]]), RECEIVED + expected)


class DelegationTests(SynchronousTestCase):
    def test_commit_returns_the_inner_result(self) -> None:
        sink, inner = make_sink()
        m = sink.open(envelope())
        m.write(RECEIVED)
        self.assertEqual(self.successResultOf(m.commit()), "QID")
        self.assertEqual(inner.messages[0].state, "committed")

    def test_abort_before_the_header_ends(self) -> None:
        sink, inner = make_sink()
        m = sink.open(envelope())
        m.write(RECEIVED + b"Subject: x\r\nTo")
        m.abort()
        m.abort()
        self.assertEqual(inner.messages[0].state, "aborted")
        self.assertEqual(inner.messages[0].data, RECEIVED + b"Subject: x\r\n")

    def test_abort_in_the_body(self) -> None:
        sink, inner = make_sink()
        m = sink.open(envelope())
        m.write(RECEIVED + b"\r\nbody")
        m.abort()
        self.assertEqual(inner.messages[0].state, "aborted")

    def test_write_errors_propagate(self) -> None:
        sink, _ = make_sink(MemorySink(fail_writes=True))
        m = sink.open(envelope())
        self.assertRaises(DeliveryError, m.write, RECEIVED)

    def test_write_error_at_commit_fails_and_aborts(self) -> None:
        sink, inner = make_sink()
        m = sink.open(envelope())
        m.write(RECEIVED + b"Subject: x\r\n")
        inner.messages[0].fail_writes = True
        self.failureResultOf(m.commit(), DeliveryError)
        self.assertEqual(inner.messages[0].state, "aborted")

    def test_inner_commit_failure_is_passed_on(self) -> None:
        sink, inner = make_sink()
        m = sink.open(envelope())
        m.write(RECEIVED + b"\r\n")
        inner.messages[0].commit = lambda: fail(DeliveryError("nope", permanent=True))
        f = self.failureResultOf(m.commit(), DeliveryError)
        self.assertTrue(f.value.permanent)

    def test_logs_what_it_changed(self) -> None:
        events: list[dict] = []
        sink, _ = make_sink()
        sink.log = Logger(namespace="test", observer=events.append)
        m = sink.open(envelope())
        m.write(RECEIVED + b"Bcc: x\r\n\r\n")
        [event] = events
        self.assertEqual(event["added"], ["Date", "Message-ID"])
        self.assertEqual(event["removed"], 1)
        self.assertEqual(event["queue_id"], "QID")


def lines_of(data: bytes) -> list[bytes]:
    """Lines as submission sees them: LF ends a line (CR alone does not)."""
    return re.findall(rb"[^\n]*\n|[^\n]+", data)


def reference(message: bytes) -> bytes:
    """What submission should make of ``message`` (no trace field): a whole-message model."""
    lines = lines_of(message)
    out: list[bytes] = []
    keep = True
    has = set()
    end = len(lines)  # index of the first line after the header section
    separator = b""
    for i, line in enumerate(lines):
        if line in (b"\r\n", b"\n"):
            end = i
            break
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        m = re.match(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:", line)
        if m is None:
            end, separator = i, b"\r\n"
            break
        name = m.group(1).lower()
        keep = name not in (b"bcc", b"resent-bcc")
        has.add(name)
        if keep:
            out.append(line)
    if out and not out[-1].endswith(b"\n"):
        out[-1] += b"\r\n"
    if b"date" not in has:
        out.append(DATE)
    if b"message-id" not in has:
        out.append(MSGID)
    return b"".join(out) + separator + b"".join(lines[end:])


def is_header_line(line: bytes) -> bool:
    return line[:1] in (b" ", b"\t") or re.match(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:", line) is not None


def header_names(message: bytes) -> list[bytes]:
    """Lower-case field names of the header section (up to the first empty line)."""
    names = []
    for line in lines_of(message):
        if line in (b"\r\n", b"\n"):
            break
        m = re.match(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:", line)
        if m is not None:
            names.append(m.group(1).lower())
    return names


names = st.sampled_from(
    [
        b"Bcc",
        b"BCC ",
        b"bcc\t",
        b"Resent-Bcc",
        b"Message-ID",
        b"message-id ",
        b"Date",
        b"DATE",
        b"Subject",
        b"To",
        b"X-Bcc",
        b"Resent-Date",
    ]
)
values = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
fields = st.builds(
    lambda name, value, folds: (
        name + b":" + value + b"\r\n" + b"".join(b" " + f + b"\r\n" for f in folds)
    ),
    names,
    values,
    st.lists(values, max_size=2),
)
messages = st.builds(
    lambda fs, sep, body: b"".join(fs) + sep + body,
    st.lists(fields, max_size=8),
    st.sampled_from([b"\r\n", b""]),
    st.binary(max_size=200),
)


@st.composite
def chunked(draw, message_parts):
    message = draw(message_parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(message)), max_size=6)))
    bounds = [0, *cuts, len(message)]
    return message, [message[a:b] for a, b in pairwise(bounds)]


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(chunked(messages))
    def test_matches_the_whole_message_model(self, case) -> None:
        message, chunks = case
        self.assertEqual(submit(chunks), RECEIVED + reference(message))

    @settings(max_examples=300, deadline=None)
    @given(chunked(messages))
    def test_invariants(self, case) -> None:
        message, chunks = case
        out = submit(chunks)
        self.assertEqual(out, submit([message]))  # any split, the same output
        names = header_names(out)
        self.assertNotIn(b"bcc", names)
        self.assertNotIn(b"resent-bcc", names)
        before = header_names(RECEIVED + message)
        for name in (b"date", b"message-id"):
            self.assertEqual(names.count(name), max(1, before.count(name)))
        # From the first line that is no field or continuation on, bytes are unchanged.
        lines = lines_of(message)
        k = next((k for k, line in enumerate(lines) if not is_header_line(line)), len(lines))
        self.assertTrue(out.endswith(b"".join(lines[k:])))
