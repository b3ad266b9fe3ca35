"""RETR/TOP output (RFC 1939 3): dot-stuffing, CRLF, the terminator, and TopReader's cut, for
the whole-message path and the streaming producer alike."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailhub.pop3.sender import BLOCK, MessageProducer, TopReader, whole_message


def streamed(data: bytes, first_len: int = 0) -> bytes:
    f = io.BytesIO(data)
    first = f.read(first_len)
    transport = StringTransport()
    producer = MessageProducer(f, transport, first)
    done = producer.start()
    while transport.producer is not None:
        producer.resumeProducing()
    assert done.called
    return transport.value()


class Stuffing(SynchronousTestCase):
    cases = [
        (b"", b".\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"a\r\n.b\r\n..c\r\n", b"a\r\n..b\r\n...c\r\n.\r\n"),
        (b"no final line end", b"no final line end\r\n.\r\n"),
        (b"bare\nlf\n.x", b"bare\r\nlf\r\n..x\r\n.\r\n"),
    ]

    def test_whole_message(self) -> None:
        for data, wire in self.cases:
            self.assertEqual(whole_message(data), wire, data)

    def test_streamed_equals_whole(self) -> None:
        for data, wire in self.cases:
            self.assertEqual(streamed(data), wire, data)

    def test_dots_and_crlf_split_across_blocks(self) -> None:
        # Line ends and dot-led lines land on every possible block boundary.
        lines = [b"." * (i % 3) + b"x" * (i % 97) for i in range(20000)]
        data = b"\r\n".join(lines) + b"\r\n"
        expected = whole_message(data)
        self.assertEqual(streamed(data), expected)
        self.assertEqual(streamed(data, first_len=BLOCK * 4 + 1), expected)

    def test_endless_line_and_cr_at_block_end(self) -> None:
        data = b"." + b"y" * (BLOCK - 2) + b"\r\n" + b"z" * (3 * BLOCK) + b"\r\n.end"
        self.assertEqual(streamed(data), whole_message(data))


class Top(SynchronousTestCase):
    message = b"A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\r\nl3\r\n"

    def top(self, n: int, size: int = 4096) -> bytes:
        reader = TopReader(io.BytesIO(self.message), n)
        out = []
        while chunk := reader.read(size):
            out.append(chunk)
        return b"".join(out)

    def test_header_and_n_lines(self) -> None:
        self.assertEqual(self.top(0), b"A: 1\r\nB: 2\r\n\r\n")
        self.assertEqual(self.top(2), b"A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\r\n")
        self.assertEqual(self.top(99), self.message)
        self.assertEqual(self.top(2, size=3), b"A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\r\n")

    def test_message_without_body(self) -> None:
        self.message = b"A: 1\r\n"
        self.assertEqual(self.top(5), b"A: 1\r\n")


def reference_wire(data: bytes) -> bytes:
    """RFC 1939 3 spelled out one line at a time: every line end becomes CRLF (a bare LF is
    a line end; a CR not before an LF is data), a line starting with "." gets another one, a
    last line without its end gets one, then "." CRLF."""
    if not data:
        return b".\r\n"
    *ended, last = data.split(b"\n")
    # (a CR ends a line only before its LF: in a last line without one it is data)
    lines = [line[:-1] if line.endswith(b"\r") else line for line in ended]
    if last:
        lines.append(last)
    out = [(b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines]
    return b"".join(out) + b".\r\n"


# Messages as the world writes them: CRLF and bare LF mixed, lone CRs, lines of dots, empty
# lines and empty messages, octets of every value.
_pieces = st.sampled_from(
    [
        b"\r\n",
        b"\n",
        b"\r",
        b".",
        b"..",
        b"\r\n.",
        b"\n.",
        b"\r\n.\r\n",
        b"a",
        b"xyz",
        b"\x00",
        b"\xff\xfe",
        b"Subject: =?utf-8?q?x?=",
        b"caf\xc3\xa9",
        b" \t",
    ]
)
messages = st.one_of(
    st.lists(_pieces, max_size=40).map(b"".join),
    st.binary(max_size=300),
)


class Differential(SynchronousTestCase):
    """whole_message (the RETR/TOP fast path: C-speed scans of the whole message) and the
    streamed producer answer exactly what the line-by-line reference says."""

    @settings(max_examples=500, deadline=None)
    @given(messages, st.sampled_from([b"", b"+OK 12 octets\r\n"]))
    def test_whole_message_equals_reference(self, data: bytes, head: bytes) -> None:
        self.assertEqual(whole_message(data, head), head + reference_wire(data))

    @settings(max_examples=200, deadline=None)
    @given(messages, st.integers(min_value=0, max_value=40))
    def test_streamed_equals_reference(self, data: bytes, first_len: int) -> None:
        self.assertEqual(streamed(data, first_len), reference_wire(data))
