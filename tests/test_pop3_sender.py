"""RETR/TOP output (RFC 1939 3): dot-stuffing, CRLF, the terminator, and TopReader's cut, for
the whole-message path and the streaming producer alike."""

from __future__ import annotations

import io

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
