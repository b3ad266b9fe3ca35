"""Message data: DATA (RFC 5321 4.1.1.4) and BDAT chunks (RFC 3030) read into the sink, and the
message opened in the sink (envelope, Received header) and committed there.

Message data is never handled line by line in Python: each received chunk is scanned with bytes
methods for the end-of-data marker, dot-unstuffed with one ``replace``, checked for bare CR/LF by
counting, and written to the sink whole (up to its last complete line).

The protocol owns the input buffer (``mailhub.inputpump``); in DATA or BDAT mode it hands the
unprocessed part to a reader here (``read(buf, pos)``), which says how far it consumed and whether
the data (or chunk) is complete. What is wrong with a message (a long line, a bare line ending,
too big, a sink error) fails its ``Transaction``; the data is still read to its end, and the
protocol answers with the failure then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailhub.envelope import Envelope
from mailhub.interfaces import DeliveryError
from mailhub.received import protocol_keyword, received_header
from mailhub.smtp import replies as R
from mailhub.smtp.replies import Reply
from mailhub.smtp.session import Session
from mailhub.smtp.transaction import Transaction, log_message

if TYPE_CHECKING:
    from mailhub.smtp.factory import SMTPServerFactory

_DOT = 0x2E
_CR = 0x0D


def has_long_line(data: bytes, limit: int) -> bool:
    """True if a line of ``data`` is longer than ``limit`` octets including its line ending.

    Steps a window of ``limit`` octets at a time to the last LF inside it, so the Python loop
    runs once per window, not once per line.
    """
    pos = 0
    end = len(data)
    while end - pos > limit:
        j = data.rfind(b"\n", pos, pos + limit)
        if j < 0:
            return True
        pos = j + 1
    return False


class ContentWriter:
    """Checks message content against the limits and writes it to the transaction's message."""

    __slots__ = ("log", "max_line", "max_size", "normalise")

    def __init__(self, max_line: int, max_size: int, normalise: bool, log: Logger) -> None:
        self.max_line = max_line  # RFC 5321 4.5.3.1.6, with its CRLF
        self.max_size = max_size  # RFC 1870
        self.normalise = normalise  # bare CR/LF: rewrite to CRLF (else refuse the message)
        self.log = log

    def write(self, txn: Transaction | None, region: bytes) -> None:
        """Check and store ``region``, which ends at a line end (or the message end)."""
        if txn is None or txn.failed is not None:
            return
        if not txn.binary:
            # Bare CR or LF (RFC 5321 2.3.8): the SMTP smuggling class. Counting is cheap and
            # exact because a region never ends between the CR and LF of a pair.
            crlf = region.count(b"\r\n")
            if crlf != region.count(b"\n") or crlf != region.count(b"\r"):
                if not self.normalise:
                    txn.fail(R.BARE_LINE_ENDING)
                    return
                region = (
                    region.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
                )
            if len(region) > self.max_line and has_long_line(region, self.max_line):
                txn.fail(R.DATA_LINE_TOO_LONG)
                return
        txn.size += len(region)
        if txn.size > self.max_size:
            txn.fail(R.SIZE_EXCEEDED)
            return
        try:
            txn.message.write(region)  # type: ignore[union-attr]  # open while not failed
        except DeliveryError as e:
            txn.fail(R.delivery_error(e))
        except Exception:
            self.log.failure("Unexpected error writing message data")
            txn.fail(R.INTERNAL_ERROR)


class DataReader:
    """The data after DATA's 354, up to the ``<CRLF>.<CRLF>`` that ends it (dot-stuffed)."""

    __slots__ = ("bol", "txn", "writer")

    def __init__(self, writer: ContentWriter) -> None:
        self.writer = writer
        self.txn: Transaction | None = None
        # Is the next unprocessed byte at the start of a line (after a real CRLF)?
        self.bol = True

    def start(self, txn: Transaction) -> None:
        self.txn = txn
        self.bol = True  # the DATA command's CRLF precedes the first line

    def read(self, buf: bytes, pos: int) -> tuple[int, bool]:
        """Take what can be taken of ``buf[pos:]`` (not empty): the position after it, and
        whether the end of the data was reached (the reader is done with its transaction)."""
        # Only <CRLF>.<CRLF> ends the data; bare CR or LF never does (RFC 5321 4.1.1.4).
        if self.bol and buf.startswith(b".\r\n", pos):
            end, after = pos, pos + 3
            dot = -1
        else:
            # One pass finds the first "<CRLF>.": the end marker starts at one, and a region
            # before the first needs no unstuffing (most mail has no line starting with ".").
            dot = buf.find(b"\r\n.", pos)
            i = -1 if dot < 0 else buf.find(b"\r\n.\r\n", dot)
            if i < 0:
                return self._partial(buf, pos, len(buf), dot), False
            end, after = i + 2, i + 5
        if end > pos:
            self._region(buf[pos:end], self.bol, 0 <= dot and dot + 3 <= end)
        self.txn = None
        return after, True

    def _partial(self, buf: bytes, pos: int, n: int, dot: int) -> int:
        """No end marker yet: pass on the complete lines, keep the incomplete last one
        (``dot``: where the first "<CRLF>." from ``pos`` is, -1 if none)."""
        j = buf.rfind(b"\n", pos)
        if j >= 0:
            cut = j + 1
            bol = self.bol
            # A LF directly after the previous region's LF is bare: not a line start.
            self.bol = j > pos and buf[j - 1] == _CR
            region = buf if (pos == 0 and cut == n) else buf[pos:cut]
            self._region(region, bol, 0 <= dot and dot + 3 <= cut)
            pos = cut
        if n - pos >= self.writer.max_line:
            # The unfinished line is already too long: keep only what could begin the end
            # marker (it holds no LF, so at most a trailing CR matters).
            if self.txn is not None:
                self.txn.fail(R.DATA_LINE_TOO_LONG)
            self.bol = False
            return n - 4
        return pos

    def _region(self, region: bytes, bol: bool, stuffed: bool) -> None:
        """``stuffed``: a "<CRLF>." is inside ``region`` (else only its start can be one)."""
        txn = self.txn
        if txn is None or txn.failed is not None:
            return
        # Dot-unstuffing (RFC 5321 4.5.2): one leading "." goes from every line.
        if bol and region[0] == _DOT:
            region = region[1:]
        self.writer.write(txn, region.replace(b"\r\n.", b"\r\n") if stuffed else region)


class ChunkReader:
    """BDAT chunks (RFC 3030 2): exactly ``size`` octets each, read even when refused, so their
    octets are never taken for commands. 7BIT/8BITMIME content gets DATA's line rules (without
    dot-stuffing); the incomplete last line of a chunk is held back (a CRLF may span chunks)."""

    __slots__ = ("error", "last", "remaining", "size", "tail", "txn", "writer")

    def __init__(self, writer: ContentWriter) -> None:
        self.writer = writer
        self.txn: Transaction | None = None
        self.size = 0
        self.remaining = 0  # octets of the chunk still to come
        self.last = False
        self.error: Reply | None = None  # the chunk is refused with this
        self.tail = b""

    def start(
        self, size: int, last: bool, txn: Transaction | None, error: Reply | None, first: bool
    ) -> None:
        """A BDAT command: ``first`` of its transaction, or refused with ``error``."""
        self.size = self.remaining = size
        self.last = last
        self.error = error
        self.txn = txn
        if first:
            self.tail = b""
        if error is None and txn is not None:
            if txn.size + len(self.tail) + size > self.writer.max_size:
                txn.fail(R.SIZE_EXCEEDED)  # known now; the octets are still read

    def read(self, buf: bytes, pos: int) -> tuple[int, bool]:
        """Take the chunk's part of ``buf[pos:]`` (not empty): the position after it, and
        whether the chunk is complete."""
        take = min(len(buf) - pos, self.remaining)
        chunk = buf if (pos == 0 and take == len(buf)) else buf[pos : pos + take]
        self.remaining -= take
        if self.error is None:
            self._content(chunk)
        return pos + take, not self.remaining

    def _content(self, chunk: bytes) -> None:
        txn = self.txn
        if txn is None or txn.failed is not None:
            return
        if txn.binary:
            # BINARYMIME: octets are the sender's business, only the size is ours.
            txn.size += len(chunk)
            if txn.size > self.writer.max_size:
                txn.fail(R.SIZE_EXCEEDED)
                return
            try:
                txn.message.write(chunk)  # type: ignore[union-attr]  # open while not failed
            except DeliveryError as e:
                txn.fail(R.delivery_error(e))
            return
        data = self.tail + chunk if self.tail else chunk
        j = data.rfind(b"\n")
        if j >= 0:
            self.tail = data[j + 1 :]
            self.writer.write(txn, data if j + 1 == len(data) else data[: j + 1])
        else:
            self.tail = data
        if len(self.tail) >= self.writer.max_line:
            self.tail = b""
            txn.fail(R.DATA_LINE_TOO_LONG)

    def flush(self) -> None:
        """The LAST chunk is in: its held-back last line is content too."""
        if self.tail:
            tail, self.tail = self.tail, b""
            self.writer.write(self.txn, tail)

    def reset(self) -> None:
        """The transaction is over (RSET, EHLO, abort, end of the message)."""
        self.txn = None
        self.tail = b""


# --- the message in the sink: opened at DATA or the first BDAT, committed at the end ------------


def open_message(
    factory: SMTPServerFactory, session: Session, txn: Transaction, tls: bool, log: Logger
) -> Reply | None:
    """Open ``txn``'s message in the factory's sink, starting with our Received header (RFC 5321
    4.4); the reply to give (and the message logged) if that failed."""
    f = factory
    authenticated = session.authenticated_as is not None
    envelope = Envelope(
        queue_id=f.new_queue_id(),
        mail_from=txn.sender_written,
        recipients=list(txn.recipients),
        helo=session.helo or "",
        client_address=session.client_address,
        client_port=session.client_port,
        client_name=session.client_name,
        server_name=f.hostname,
        protocol=protocol_keyword(
            esmtp=session.esmtp,
            tls=tls,
            authenticated=authenticated,
            smtputf8=txn.smtputf8,
        ),
        body_type=txn.body_type,
        smtputf8=txn.smtputf8,
        declared_size=txn.declared_size,
        tls=session.tls if tls else None,
        authenticated_as=session.authenticated_as,
        received_at=f.clock.seconds(),
    )
    txn.envelope = envelope
    try:
        message = f.sink.open(envelope)
    except DeliveryError as e:
        reply = R.delivery_error(e)
        log_message(log, session.client_address, txn, reply, reason=str(e))
        return reply
    txn.message = message
    try:
        auth_header = f.smtp_config.received_auth_header
        message.write(received_header(envelope, authenticated_sender=auth_header))
    except DeliveryError as e:
        txn.abort()
        reply = R.delivery_error(e)
        log_message(log, session.client_address, txn, reply, reason=str(e))
        return reply
    return None


def commit_message(txn: Transaction, log: Logger, client: str) -> Reply | Deferred:
    """Commit the whole message to the sink: a Deferred firing with the reply (250 once the sink
    holds it durably; the sink's refusal otherwise), the message logged."""
    message, txn.message = txn.message, None
    try:
        d = message.commit()  # type: ignore[union-attr]  # open until the end of the data
    except Exception:
        d = fail()
    if not isinstance(d, Deferred):
        d = succeed(d)

    def committed(_result: object) -> Reply:
        reply = R.queued(txn.envelope.queue_id)  # type: ignore[union-attr]  # set at opening
        log_message(log, client, txn, reply)
        return reply

    def commit_failed(failure: Failure) -> Reply:
        e = failure.value
        if isinstance(e, DeliveryError):
            reply = R.delivery_error(e)
            log_message(log, client, txn, reply, reason=str(e))
        else:
            log.failure("Unexpected error committing a message", failure)
            reply = R.INTERNAL_ERROR
            log_message(log, client, txn, reply, reason=failure.getErrorMessage())
        return reply

    return d.addCallbacks(committed, commit_failed)
