"""RETR and TOP output: a message file streamed to the client, dot-stuffed (RFC 1939 3).

Every line that starts with "." gets another "." in front, and the response ends with
CRLF "." CRLF. Messages are stored with CRLF line ends; a bare LF (a file put into the Maildir by
another tool) is sent as CRLF, so the client never sees a line end RFC 1939 does not allow.

A small message is read and written at once (one syscall each: this is what a mailbox of many
ordinary messages costs). A bigger one is sent by a pull producer, one block per call, only when
the transport has room for it: a 100 MB message never sits in memory, and a slow client slows the
reading down instead of filling our buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPullProducer
from zope.interface import implementer

# Messages up to this size are sent in one write; larger ones are streamed in BLOCK pieces.
WHOLE_MESSAGE_LIMIT = 256 * 1024
BLOCK = 64 * 1024
TERMINATOR = b".\r\n"


def _normalise(region: bytes) -> bytes:
    """Bare LF -> CRLF (counting first: the common, clean case costs two scans)."""
    if region.count(b"\n") != region.count(b"\r\n"):
        region = region.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return region


def stuff(region: bytes, at_line_start: bool) -> bytes:
    """Dot-stuff ``region`` (RFC 1939 3); ``at_line_start``: it begins a line."""
    region = region.replace(b"\r\n.", b"\r\n..")
    if at_line_start and region[:1] == b".":
        region = b"." + region
    return region


def whole_message(data: bytes, head: bytes = b"") -> bytes:
    """A complete message, ready to send: ``head`` (the ``+OK`` line), the message
    dot-stuffed with CRLF line ends, and the terminator. For the usual message (CRLF already,
    few lines starting with a dot) three C-speed scans and one copy: a 10,000-message RETR
    session does this 10,000 times."""
    if not data:
        return head + TERMINATOR
    if data.count(b"\n") != data.count(b"\r\n"):
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # bare LF -> CRLF
    data = data.replace(b"\r\n.", b"\r\n..")  # (the same object when there is no such line)
    if data[:1] == b".":
        head += b"."
    # the terminator must start a line
    return b"".join((head, data, TERMINATOR if data[-2:] == b"\r\n" else b"\r\n" + TERMINATOR))


class TopReader:
    """A file-like view of a message that ends after the header, the blank line and
    ``body_lines`` lines of the body (TOP, RFC 1939 7). Reads are bounded, so only what is
    sent passes through memory, whatever the message holds."""

    def __init__(self, f: BinaryIO, body_lines: int) -> None:
        self._file = f
        self._left = body_lines
        self._in_header = True
        self._line_start = True
        self._done = False

    def read(self, size: int) -> bytes:
        out: list[bytes] = []
        n = 0
        while n < size and not self._done:
            line = self._file.readline(size - n)
            if not line:
                self._done = True
                break
            if self._line_start:
                if self._in_header:
                    if line in (b"\r\n", b"\n"):
                        self._in_header = False  # the blank line is sent, then body lines
                elif self._left <= 0:
                    self._done = True
                    break
                else:
                    self._left -= 1
            self._line_start = line.endswith(b"\n")
            out.append(line)
            n += len(line)
        return b"".join(out)

    def close(self) -> None:
        self._file.close()


@implementer(IPullProducer)
class MessageProducer:
    """Streams an open message file (what remains of it after ``first``, the octets the
    caller already read) to ``transport``; ``done`` fires (with None) once the
    terminator is written, or never if the connection goes away first (the file is closed then
    too). Register with ``transport.registerProducer(p, False)`` via ``start()``."""

    def __init__(
        self,
        f: BinaryIO | TopReader,
        transport: IConsumer,
        first: bytes = b"",
        progress: Callable[[], object] = lambda: None,
    ) -> None:
        self._file: BinaryIO | TopReader | None = f
        self._transport = transport
        self._progress = progress  # called whenever the transport asks for more
        # Octets not sent yet: what the caller read already, then the incomplete last line of
        # the previous block.
        self._carry = first
        self._line_start = True  # the next byte sent begins a line
        self.done: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        self._transport.registerProducer(self, False)
        return self.done

    def resumeProducing(self) -> None:
        f = self._file
        if f is None:
            return
        self._progress()
        data = self._carry
        while True:
            if len(data) < BLOCK:
                block = f.read(BLOCK)
                if not block:
                    self._carry = data
                    self._finish()
                    return
                data = data + block if data else block
            # At most two blocks a call, cut after a line end so stuffing sees whole lines.
            cut = data.rfind(b"\n", 0, 2 * BLOCK) + 1
            if cut:
                break
            if len(data) >= BLOCK:
                # An endless line: send it on, keeping the last octet (a CR may pair with the
                # next block's LF).
                cut = min(len(data), 2 * BLOCK) - 1
                break
            # A short read without a line end: read on (the transport calls only for more).
        region, self._carry = data[:cut], data[cut:]
        self._transport.write(stuff(_normalise(region), self._line_start))
        self._line_start = region.endswith(b"\n")

    def _finish(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()
        tail = self._carry
        self._carry = b""
        out = stuff(_normalise(tail), self._line_start) if tail else b""
        if (out and not out.endswith(b"\r\n")) or (not out and not self._line_start):
            out += b"\r\n"
        self._transport.unregisterProducer()
        self._transport.write(out + TERMINATOR)
        self.done.callback(None)

    def stopProducing(self) -> None:
        """The connection is gone: close the file; ``done`` never fires."""
        f, self._file = self._file, None
        if f is not None:
            f.close()
