"""The neutral MIME structure parser (mailhub.message.mime): the part tree and its offsets,
the cache encoding, bounded reads. What IMAP renders of it is tested in test_imap_mime."""

from __future__ import annotations

import base64
import io
import marshal
import os
import tempfile
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailhub.message import mime
from mailhub.message.mime import MessageStructure
from tests.support.mime import CountingReader, _lines, corpus, crlf


class Cache(SynchronousTestCase):
    def test_foreign_bytes_are_refused(self) -> None:
        self.assertRaises(ValueError, MessageStructure.from_bytes, marshal.dumps((99, b"")))
        self.assertRaises(ValueError, MessageStructure.from_bytes, marshal.dumps([1]))

    def test_real_file_is_read_in_pieces(self) -> None:
        # a file with a 3 MB attachment: the parse reads it, the structure stays small
        with tempfile.NamedTemporaryFile(suffix=".eml") as f:
            f.write(crlf(b"Subject: big\nContent-Type: multipart/mixed; boundary=B\n\n--B\n"))
            f.write(crlf(b"Content-Transfer-Encoding: base64\n\n"))
            line = base64.b64encode(os.urandom(57)) + b"\r\n"
            f.write(line * 40_000 + b"--B--\r\n")
            f.flush()
            with open(f.name, "rb") as fp:
                s = mime.parse_structure(fp)
                self.assertLess(len(s.to_bytes()), 1000)
                self.assertEqual(s.root.children[0].size, len(line) * 40_000 - 2)
                self.assertEqual(s.root.children[0].lines, 40_000 - 1)
                self.assertEqual(s.size, os.fstat(fp.fileno()).st_size)


class BoundedMemory(SynchronousTestCase):
    def test_parse_reads_in_bounded_pieces(self) -> None:
        # one 3 MB line in a part and 3 MB without any line end at top level
        for data in (
            crlf(b"Content-Type: multipart/mixed; boundary=B\n\n--B\n\n")
            + b"q" * 3_000_000
            + b"\r\n--B--\r\n",
            b"Subject: x\r\n\r\n" + b"q" * 3_000_000,
        ):
            fp = CountingReader(data)
            s = mime.parse_structure(fp)
            self.assertEqual(s.size, len(data))
            self.assertLessEqual(fp.largest, mime.MAX_LINE)


# -- the chunked boundary scan ---------------------------------------------------------------


def _skip_body_by_lines(r: mime._Reader, stack: list[bytes]):  # type: ignore[no-untyped-def]
    """The reference: what _skip_body must find, reading line by line (its first version)."""
    while line := r.readline():
        if line[:2] == b"--" and r.fresh:
            h = mime._boundary_hit(line, stack)
            if h is not None:
                return h[0], h[1], r.pos - len(line), r.nl - (r.last_eol > 0), r.prev_eol
    return None


def _flat(s: MessageStructure) -> tuple:
    return (s.header, s.envelope_fields, s.size, s.root._to_tuple())


_long_lines = st.sampled_from(
    [
        b"x" * 9 + b"\r\n",
        b"y" * 8 + b"\r",
        b"\n--a\r\n",
        b"--a" + b"z" * 12 + b"\r\n",
        b"--b--\n",
        b"-",
        b"-\n-",
        b"--",
    ]
)
_scan_messages = st.lists(_lines | _long_lines, max_size=50).map(b"".join)


class ChunkedBoundaryScan(SynchronousTestCase):
    """_skip_body reads big pieces and finds boundaries with bytes.find: the structures are
    the same as reading line by line, also with tiny MAX_LINE (pieces of long lines, reads
    that cut a boundary line or a CRLF in two)."""

    def assertSameAsLineByLine(self, data: bytes, max_line: int) -> None:
        with patch.object(mime, "MAX_LINE", max_line):
            fast = _flat(mime.parse_structure(io.BytesIO(data)))
            with patch.object(mime, "_skip_body", _skip_body_by_lines):
                slow = _flat(mime.parse_structure(io.BytesIO(data)))
        self.assertEqual(fast, slow, (max_line, data))

    @settings(max_examples=300, deadline=None)
    @given(_scan_messages, st.sampled_from([3, 4, 5, 7, 11, 64, 65536]))
    def test_same_as_line_by_line(self, data: bytes, max_line: int) -> None:
        self.assertSameAsLineByLine(data, max_line)

    def test_real_messages(self) -> None:
        for data in corpus():
            for max_line in (5, 13, 80, 65536):
                self.assertSameAsLineByLine(data, max_line)

    def test_boundaries_at_every_read_offset(self) -> None:
        head = b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n\r\n"
        for n in range(0, 40):
            for tail in (b"\r\n--B\r\n\r\nx\r\n--B--\r\n", b"\n--B--", b"\r\n--Bx\r\n"):
                self.assertSameAsLineByLine(head + b"a" * n + tail, 8)
