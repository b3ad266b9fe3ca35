"""Message data: DATA framing, dot-unstuffing, bare line endings (SMTP smuggling), limits, BDAT."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailhub.config import SMTPConfig
from mailhub.smtp.data import has_long_line
from tests.support.smtp import LOCAL, Dialog, Harness, body_of, limits

SMUGGLING_ENDINGS = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r.\r", b"\n.\r"]
BARE_REPLY = "550 5.5.2 Error: bare CR or LF in message data is not allowed (RFC 5321 2.3.8)"


def ready(h: Harness, **kw) -> Dialog:
    d = h.connect(**kw)
    d.greet()
    d.transaction()
    return d


def smuggle(ending: bytes) -> bytes:
    """A message hiding a second transaction behind a fake end of data."""
    return (
        b"Subject: one\r\n\r\nfirst"
        + ending
        + b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\nsecond\r\n"
    )


class DataTests(SynchronousTestCase):
    def test_dot_unstuffing(self) -> None:
        h = Harness()
        d = ready(h)
        d.send(b"DATA\r\n")
        d.send(b"..first line\r\nplain\r\n..\r\n...\r\n.x\r\nend.\r\n.\r\n")
        self.assertEqual(d.replies()[-1][:24], "250 2.0.0 Ok: queued as ")
        self.assertEqual(
            body_of(h.sink.delivered[0]), b".first line\r\nplain\r\n.\r\n..\r\nx\r\nend.\r\n"
        )

    def test_empty_message(self) -> None:
        h = Harness()
        d = ready(h)
        d.run("""
            C: DATA
            S: 354 End data with <CR><LF>.<CR><LF>
            C: .
            S: 250 2.0.0 Ok: queued as ...
        """)
        self.assertEqual(body_of(h.sink.delivered[0]), b"")

    def test_pipelined_commands_after_data(self) -> None:
        h = Harness()
        d = ready(h)
        d.send(b"DATA\r\n")
        d.send(b"a\r\n.\r\nMAIL FROM:<b@example.net>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n")
        d.send(b"b\r\n.\r\nQUIT\r\n")
        lines = d.replies()
        self.assertEqual(
            [line[:3] for line in lines], ["354", "250", "250", "250", "354", "250", "221"]
        )
        self.assertEqual([body_of(m) for m in h.sink.delivered], [b"a\r\n", b"b\r\n"])

    def test_every_split_point(self) -> None:
        # TCP may cut the stream anywhere: the end marker and stuffed dots across segments.
        stream = b"Subject: s\r\n\r\n..x\r\nline\r\n..\r\n.\r\nNOOP\r\n"
        self.split_everywhere(stream, b"Subject: s\r\n\r\n.x\r\nline\r\n.\r\n")
        # Segments with no "<CRLF>." skip unstuffing; one dot further on must still go.
        stream = b"a.\r\nb\r\n..c.\r\nd\r\n.\r\nNOOP\r\n"
        self.split_everywhere(stream, b"a.\r\nb\r\n.c.\r\nd\r\n")

    def split_everywhere(self, stream: bytes, body: bytes) -> None:
        for i in range(len(stream) + 1):
            for j in range(i, len(stream) + 1):
                h = Harness()
                d = ready(h)
                d.send(b"DATA\r\n")
                d.replies()
                for part in (stream[:i], stream[i:j], stream[j:]):
                    if part:
                        d.send(part)
                self.assertEqual([line[:3] for line in d.replies()], ["250", "250"], (i, j))
                self.assertEqual(body_of(h.sink.delivered[0]), body, (i, j))

    def test_byte_at_a_time(self) -> None:
        h = Harness()
        d = ready(h)
        d.send(b"DATA\r\n")
        for byte in b"a\r\n..b\r\n\r\n.\r\nNOOP\r\n":
            d.send(bytes([byte]))
        self.assertEqual([line[:3] for line in d.replies()], ["354", "250", "250"])
        self.assertEqual(body_of(h.sink.delivered[0]), b"a\r\n.b\r\n\r\n")

    def test_large_message_streams_to_the_sink(self) -> None:
        h = Harness()
        d = ready(h)
        d.send(b"DATA\r\n")
        line = b"x" * 70 + b"\r\n"
        for _ in range(200):
            d.send(line * 100)
            # Never more than an incomplete line is held back.
            self.assertLess(len(d.protocol._buf) - d.protocol._pos, 1000)
        message = h.sink.opened[0]
        self.assertGreater(len(message.chunks), 100)
        d.send(b".\r\n")
        self.assertEqual(body_of(h.sink.delivered[0]), line * 20000)


class SmugglingTests(SynchronousTestCase):
    """RFC 5321 2.3.8 / 4.1.1.4: only <CRLF>.<CRLF> ends data, never a bare CR or LF variant."""

    def test_reject_mode(self) -> None:
        for ending in SMUGGLING_ENDINGS:
            h = Harness()
            d = ready(h)
            d.send(b"DATA\r\n" + smuggle(ending) + b".\r\nNOOP\r\n")
            self.assertEqual(
                d.replies(),
                ["354 End data with <CR><LF>.<CR><LF>", BARE_REPLY, "250 2.0.0 Ok"],
                ending,
            )
            self.assertEqual(h.sink.delivered, [], ending)
            self.assertEqual([m.state for m in h.sink.opened], ["aborted"], ending)

    def test_normalise_mode(self) -> None:
        for ending in SMUGGLING_ENDINGS:
            h = Harness(smtp_config=SMTPConfig(bare_line_endings="normalise"))
            d = ready(h)
            d.send(b"DATA\r\n" + smuggle(ending) + b".\r\n")
            lines = d.replies()
            self.assertEqual(len(lines), 2, (ending, lines))
            self.assertTrue(lines[1].startswith("250 2.0.0 Ok: queued as "), ending)
            [message] = h.sink.delivered
            body = body_of(message)
            self.assertIn(b"MAIL FROM:<evil@example.net>\r\n", body)
            self.assertTrue(body.endswith(b"second\r\n"))
            # Every line ending is now CRLF.
            self.assertEqual(body.count(b"\n"), body.count(b"\r\n"), ending)
            self.assertEqual(body.count(b"\r"), body.count(b"\r\n"), ending)

    def test_smuggling_split_everywhere(self) -> None:
        payload = b"DATA\r\n" + smuggle(b"\n.\n") + b".\r\n"
        for mode in ("reject", "normalise"):
            for i in range(len(payload) + 1):
                h = Harness(smtp_config=SMTPConfig(bare_line_endings=mode))
                d = ready(h)
                d.send(payload[:i])
                d.send(payload[i:])
                lines = d.replies()
                self.assertEqual(len(lines), 2, (mode, i, lines))
                self.assertEqual(len(h.sink.opened), 1)
                self.assertEqual(len(h.sink.delivered), 0 if mode == "reject" else 1)

    def test_bare_cr_and_lf_inside_lines(self) -> None:
        for data in (b"a\rb\r\n", b"a\nb\r\n", b"\n\r\n", b"x\r\r\n"):
            h = Harness()
            d = ready(h)
            d.send(b"DATA\r\n" + data + b".\r\n")
            self.assertEqual(d.replies()[-1], BARE_REPLY, data)

    def test_normalise_converts(self) -> None:
        h = Harness(smtp_config=SMTPConfig(bare_line_endings="normalise"))
        d = ready(h)
        d.send(b"DATA\r\na\nb\rc\r\n\n\r\n.\r\n")
        self.assertEqual(body_of(h.sink.delivered[0]), b"a\r\nb\r\nc\r\n\r\n\r\n")

    def test_crlf_split_across_segments_is_not_bare(self) -> None:
        h = Harness()
        d = ready(h)
        d.send(b"DATA\r\nline one\r")
        d.send(b"\nline two\r")
        d.send(b"\n.\r")
        d.send(b"\n")
        self.assertEqual(d.replies()[-1][:24], "250 2.0.0 Ok: queued as ")
        self.assertEqual(body_of(h.sink.delivered[0]), b"line one\r\nline two\r\n")


class DataLimitTests(SynchronousTestCase):
    def test_size_limit(self) -> None:
        h = Harness(limits=limits(max_message_size=20))
        d = ready(h)
        d.send(b"DATA\r\n" + b"1234567890123456\r\n" + b".\r\n")  # 18 octets: fine
        self.assertEqual(d.replies()[-1][:3], "250")
        d.transaction()
        d.send(b"DATA\r\n..234567890123456789\r\n.\r\n")  # 21 octets after unstuffing
        self.assertEqual(
            d.replies()[-1], "552 5.3.4 Error: message size exceeds fixed maximum message size"
        )
        self.assertEqual(h.sink.opened[1].state, "aborted")

    def test_oversized_data_is_read_to_its_end_without_storing(self) -> None:
        h = Harness(limits=limits(max_message_size=1000))
        d = ready(h)
        d.send(b"DATA\r\n")
        for _ in range(100):
            d.send(b"y" * 98 + b"\r\n")
        message = h.sink.opened[0]
        self.assertEqual(message.state, "aborted")
        self.assertLessEqual(sum(map(len, message.chunks)), 1200)
        d.send(b"QUIT\r\n.\r\nNOOP\r\n")  # the QUIT is data, not a command
        self.assertEqual(
            d.replies()[-2:],
            [
                "552 5.3.4 Error: message size exceeds fixed maximum message size",
                "250 2.0.0 Ok",
            ],
        )
        self.assertFalse(d.closed)
        d.transaction()  # the session goes on
        d.send(b"DATA\r\nsmall\r\n.\r\n")
        self.assertEqual(d.replies()[-1][:3], "250")

    def test_line_length(self) -> None:
        h = Harness(limits=limits(max_line_length=100))
        d = ready(h)
        d.send(b"DATA\r\n" + b"a" * 98 + b"\r\n" + b"b" * 10 + b"\r\n.\r\n")
        self.assertEqual(d.replies()[-1][:3], "250")
        d.transaction()
        d.send(b"DATA\r\n" + b"b" * 10 + b"\r\n" + b"a" * 99 + b"\r\n.\r\n")
        self.assertEqual(
            d.replies()[-1], "500 5.5.2 Error: message line too long (RFC 5321 4.5.3.1.6)"
        )
        self.assertEqual(len(h.sink.delivered), 1)

    def test_endless_data_line_is_discarded_as_it_comes(self) -> None:
        h = Harness(limits=limits(max_line_length=100))
        d = ready(h)
        d.send(b"DATA\r\nstart\r\n")
        for _ in range(1000):
            d.send(b"z" * 1000)
            self.assertLess(len(d.protocol._buf) - d.protocol._pos, 1100)
        d.send(b"\r\n.\r\nNOOP\r\n")
        self.assertEqual(
            d.replies()[-2:],
            ["500 5.5.2 Error: message line too long (RFC 5321 4.5.3.1.6)", "250 2.0.0 Ok"],
        )
        self.assertEqual(h.sink.delivered, [])

    def test_end_marker_right_after_discarded_long_line(self) -> None:
        for tail in (b"\r", b"\r\n", b"\r\n.", b"\r\n.\r"):
            h = Harness(limits=limits(max_line_length=100))
            d = ready(h)
            d.send(b"DATA\r\n" + b"z" * 500 + tail)
            d.send(b"\r\n.\r\n"[len(tail) :] + b"NOOP\r\n")
            self.assertEqual(d.replies()[-1], "250 2.0.0 Ok", tail)

    def test_has_long_line(self) -> None:
        self.assertFalse(has_long_line(b"", 10))
        self.assertFalse(has_long_line(b"12345678\r\n" * 50, 10))
        self.assertTrue(has_long_line(b"12345678\r\n" * 50 + b"123456789\r\n", 10))
        self.assertTrue(has_long_line(b"123456789\r\n" + b"1\r\n" * 50, 10))
        self.assertFalse(has_long_line(b"1\r\n" * 50 + b"12345678\r\n", 10))
        self.assertTrue(has_long_line(b"1\r\n" * 5 + b"x" * 30, 10))


class BdatTests(SynchronousTestCase):
    """RFC 3030 CHUNKING and BINARYMIME."""

    def test_chunks(self) -> None:
        h = Harness()
        d = ready(h)
        d.send(b"BDAT 14\r\nSubject: s\r\n\r\nBDAT 10 LAST\r\n.body\r\nend")
        lines = d.replies()
        qid = h.sink.delivered[0].envelope.queue_id
        self.assertEqual(
            lines, ["250 2.0.0 Ok: 14 octets received", f"250 2.0.0 Ok: queued as {qid}"]
        )
        # No dot-unstuffing in BDAT; content goes through as sent.
        self.assertEqual(body_of(h.sink.delivered[0]), b"Subject: s\r\n\r\n.body\r\nend")

    def test_every_split_point(self) -> None:
        stream = (
            b"BDAT 9\r\nSubj: a\r\nBDAT 6\r\n\r\nx\r\n\rBDAT 0\r\nBDAT 4 LAST\r\n\n.\r\nNOOP\r\n"
        )
        for i in range(len(stream) + 1):
            h = Harness()
            d = ready(h)
            d.send(stream[:i])
            d.send(stream[i:])
            lines = d.replies()
            self.assertEqual([line[:3] for line in lines], ["250"] * 5, (i, lines))
            self.assertEqual(body_of(h.sink.delivered[0]), b"Subj: a\r\n\r\nx\r\n\r\n.\r\n", i)

    def test_bdat_0_last(self) -> None:
        h = Harness()
        d = ready(h)
        d.send(b"BDAT 0 LAST\r\n")
        self.assertEqual(d.replies()[0][:24], "250 2.0.0 Ok: queued as ")
        self.assertEqual(body_of(h.sink.delivered[0]), b"")

    def test_chunk_is_consumed_when_refused(self) -> None:
        h = Harness()
        d = h.connect()
        d.greet()
        # Without MAIL the chunk is refused, but its octets must not run as commands.
        d.send(b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
        self.assertEqual(d.replies(), ["503 5.5.1 Error: need MAIL command", "250 2.0.0 Ok"])
        self.assertFalse(d.closed)
        d.send(b"MAIL FROM:<a@example.net>\r\nBDAT 6\r\nQUIT\r\n")
        self.assertEqual(d.replies()[1], "554 5.5.1 Error: no valid recipients")
        self.assertFalse(d.closed)

    def test_data_after_bdat_and_rcpt_after_bdat(self) -> None:
        h = Harness()
        d = ready(h)
        d.send(b"BDAT 4\r\nab\r\n")
        d.run(f"""
            S: 250 2.0.0 Ok: 4 octets received
            C: DATA
            S: 503 5.5.1 Error: DATA cannot follow BDAT (RFC 3030 3)
            C: RCPT TO:<user@{LOCAL}>
            S: 503 5.5.1 Error: bad sequence of commands
            C: RSET
            S: 250 2.0.0 Ok
        """)
        self.assertEqual(h.sink.opened[0].state, "aborted")

    def test_size_limit_across_chunks(self) -> None:
        h = Harness(limits=limits(max_message_size=10))
        d = ready(h)
        d.send(b"BDAT 6\r\n1234\r\nBDAT 6\r\n1234\r\nBDAT 4 LAST\r\nQUIT")
        d.send(b"NOOP\r\n")
        self.assertEqual(
            d.replies(),
            [
                "250 2.0.0 Ok: 6 octets received",
                "552 5.3.4 Error: message size exceeds fixed maximum message size",
                "503 5.5.1 Error: previous BDAT failed, send RSET (RFC 3030 2)",
                "250 2.0.0 Ok",
            ],
        )
        self.assertEqual(h.sink.opened[0].state, "aborted")
        self.assertEqual(h.sink.delivered, [])
        d.transaction()
        d.send(b"BDAT 4 LAST\r\nok\r\n")
        self.assertEqual(d.replies()[0][:24], "250 2.0.0 Ok: queued as ")

    def test_size_limit_in_last_chunk(self) -> None:
        h = Harness(limits=limits(max_message_size=10))
        d = ready(h)
        d.send(b"BDAT 20 LAST\r\n" + b"x" * 20 + b"NOOP\r\n")
        self.assertEqual(
            d.replies(),
            ["552 5.3.4 Error: message size exceeds fixed maximum message size", "250 2.0.0 Ok"],
        )
        d.transaction()  # the failed transaction ended with its LAST chunk

    def test_bare_lf_in_8bit_content(self) -> None:
        h = Harness()
        d = ready(h)
        d.send(b"BDAT 6\r\nab\r\nc\nBDAT 2 LAST\r\n\r\n")
        # The chunk holding the bare LF is refused; later chunks are read and refused too.
        self.assertEqual(
            d.replies(),
            [BARE_REPLY, "503 5.5.1 Error: previous BDAT failed, send RSET (RFC 3030 2)"],
        )
        self.assertEqual(h.sink.delivered, [])

    def test_crlf_split_across_chunks(self) -> None:
        h = Harness()
        d = ready(h)
        d.send(b"BDAT 3\r\nab\rBDAT 3 LAST\r\n\ncd")
        self.assertEqual(d.replies()[-1][:24], "250 2.0.0 Ok: queued as ")
        self.assertEqual(body_of(h.sink.delivered[0]), b"ab\r\ncd")

    def test_trailing_bare_cr_is_rejected(self) -> None:
        h = Harness()
        d = ready(h)
        d.send(b"BDAT 3 LAST\r\nab\r")
        self.assertEqual(d.replies()[-1], BARE_REPLY)

    def test_line_length_in_bdat(self) -> None:
        h = Harness(limits=limits(max_line_length=100))
        d = ready(h)
        d.send(b"BDAT 150 LAST\r\n" + b"q" * 150)
        self.assertEqual(
            d.replies()[-1], "500 5.5.2 Error: message line too long (RFC 5321 4.5.3.1.6)"
        )

    def test_binarymime(self) -> None:
        h = Harness()
        d = h.connect()
        d.greet()
        d.transaction("<a@example.net> BODY=BINARYMIME")
        d.run("""
            C: DATA
            S: 503 5.5.1 Error: BODY=BINARYMIME requires BDAT (RFC 3030 3)
        """)
        payload = b"\x00\r\n\n\r\xff" * 200
        d.send(b"BDAT %d LAST\r\n" % len(payload) + payload)
        self.assertEqual(d.replies()[-1][:24], "250 2.0.0 Ok: queued as ")
        self.assertEqual(body_of(h.sink.delivered[0]), payload)
        self.assertEqual(h.sink.delivered[0].envelope.body_type, "BINARYMIME")

    def test_bad_bdat_syntax_closes(self) -> None:
        h = Harness()
        d = ready(h)
        for bad in (b"BDAT 1" + b"0" * 800, b"BDAT 5 FIRST", b"BDAT", b"BDAT -1"):
            other = ready(Harness())
            other.send(bad + b"\r\n")
            self.assertEqual(other.replies(), ["421 4.5.0 Error: BDAT syntax error, closing"])
        d.send(b"BDAT lots\r\nMAIL FROM:<x@y.example>\r\n")
        self.assertEqual(d.replies(), ["421 4.5.0 Error: BDAT syntax error, closing"])
        self.assertTrue(d.closed)
        self.assertEqual(h.sink.opened, [])

    def test_slow_commit_after_last(self) -> None:
        h = Harness()
        h.sink.hold_commits = True
        d = ready(h)
        d.send(b"BDAT 4 LAST\r\nab\r\nNOOP\r\n")
        self.assertEqual(d.replies(), [])
        h.sink.release()
        self.assertEqual([line[:3] for line in d.replies()], ["250", "250"])
