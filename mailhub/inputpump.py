"""In-order command input for the line protocols (SMTP, POP3): the mechanism, once.

A client may pipeline, sending many commands without waiting for the replies (RFC 2920 for
SMTP, RFC 2449 6.6 for POP3), yet the replies must come in command order, and a command may
answer later (a policy lookup, a login being checked, a message being committed or streamed).
``InputPump`` does this:

- received bytes go to one buffer, ``_buf``, unprocessed from ``_pos`` on;
- ``_run`` hands the buffer to the protocol's ``_step`` one unit at a time (a command line, a
  piece of message data) until ``_step`` needs more input; ``_take_line`` cuts command lines,
  and never buffers more of a line than its limit;
- a command that answers later hands its Deferred to ``_await``: until it fires nothing more is
  processed, input is only buffered, and past ``max_pending_input`` octets the transport is
  paused; reading resumes and processing goes on with the answer;
- a call back into ``_run`` while it runs (a Deferred that has already fired, a handler that
  feeds input) only lets the running loop go on, so the stack never grows with the pipeline.

``FlowControlledInputPump`` also stops processing while the transport's write buffer is full
(it is the transport's push producer while commands are answered): a client that pipelines
commands with big answers (POP3 RETR) without reading them cannot make the server hold them.

What a unit is, how a reply is written, and how a session closes stay with the protocol. IMAP
does not use this: its framer owns its buffer (literals, spooled APPENDs) and a running command
may read lines itself (IDLE, AUTHENTICATE), so its loop asks other questions.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, ClassVar, Final

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure


class _TooLong(enum.Enum):
    # An enum member so that ``line is TOO_LONG`` narrows ``bytes | _TooLong`` for the type checker.
    TOO_LONG = "TOO_LONG"

    def __repr__(self) -> str:
        return "TOO_LONG"


# What ``_take_line`` returns for a line over its limit (the line itself is dropped).
TOO_LONG: Final = _TooLong.TOO_LONG


class InputPump:
    """Mixin for a ``Protocol`` with ``TimeoutMixin``: in-order processing of buffered input.
    It comes before ``Protocol`` in the bases (its ``dataReceived`` is the one used).

    The protocol calls ``_take_line`` to cut a command line, ``_await`` for a command that
    answers later, and ``_discard_input`` to drop what is buffered (STARTTLS). It provides:

    - ``_step() -> bool``: handle one unit of ``_buf[_pos:]`` if a whole one is there (moving
      ``_pos`` past it); False when more input is needed.
    - ``_late_reply(reply)``: write what a Deferred given to ``_await`` fired with (None: the
      command answered itself), and restart the idle timer.
    - ``_unexpected_failure(failure) -> reply``: that Deferred failed; log, return the reply.
    - ``_reply_failed(failure)``: writing the late reply failed; log and close.
    - ``_input_broken()``: ``_step`` raised (called inside the ``except``); log and close.

    and sets ``_closing`` when no more input is to be processed.
    """

    max_pending_input: ClassVar[int]  # octets buffered behind a pending reply before pausing

    transport: Any
    resetTimeout: Any  # TimeoutMixin's

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0  # start of unprocessed input in _buf
        self._running = False  # inside _run: re-entry only lets the loop go on
        self._waiting = False  # a reply is pending on a Deferred
        self._write_paused = False  # the transport's write buffer is full (flow control)
        self._paused = False  # we paused the transport (backpressure on input)
        self._closing = False  # no more input is processed
        self._skip_line = False  # dropping the rest of an over-long line as it comes

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.resetTimeout()
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            self._buf = data
        elif pos:
            self._buf = buf[pos:] + data
        else:
            self._buf = buf + data
        self._pos = 0
        if self._waiting or self._write_paused:
            if not self._paused and len(self._buf) > self.max_pending_input:
                self._paused = True
                self.transport.pauseProducing()
            return
        self._run()

    def _run(self) -> None:
        if self._running:
            return
        self._running = True
        try:
            while (
                not self._waiting and not self._write_paused and not self._closing and self._step()
            ):
                pass
        except Exception:
            self._input_broken()
        finally:
            self._running = False
        if self._closing:
            self._discard_input()

    def _take_line(self, limit: int) -> bytes | _TooLong | None:
        """The next line without its LF (a CR before it is the protocol's to judge); None if
        no whole line is buffered yet; ``TOO_LONG`` for a line of more than ``limit`` octets
        with its line ending, which is dropped as it comes and reported once it ends."""
        buf, pos = self._buf, self._pos
        j = buf.find(b"\n", pos)
        if self._skip_line:
            if j < 0:
                self._discard_input()
                return None
            self._pos = j + 1
            self._skip_line = False
            return TOO_LONG
        if j < 0:
            if len(buf) - pos >= limit:
                # Never buffer an endless line: drop it as it comes, answer at its end.
                self._skip_line = True
                self._discard_input()
            return None
        self._pos = j + 1
        if j + 1 - pos > limit:
            return TOO_LONG
        return buf[pos:j]

    def _discard_input(self) -> None:
        """Forget everything buffered (an endless line, a closing session, a TLS switch)."""
        self._buf, self._pos = b"", 0

    def _await(self, answer: Deferred) -> None:
        """The command being processed answers when ``answer`` fires: nothing more until then."""
        self._waiting = True
        answer.addErrback(self._unexpected_failure)
        answer.addCallback(self._answered)
        answer.addErrback(self._reply_failed)

    def _answered(self, reply: object) -> None:
        self._waiting = False
        if self._closing:
            return
        self._late_reply(reply)
        if self._closing or self._write_paused:
            return
        self._resume_reading()
        self._run()

    def _resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()

    # The protocol's part (see the class docstring).

    def _step(self) -> bool:
        raise NotImplementedError

    def _late_reply(self, reply: Any) -> None:
        raise NotImplementedError

    def _unexpected_failure(self, failure: Failure) -> object:
        raise NotImplementedError

    def _reply_failed(self, failure: Failure) -> None:
        raise NotImplementedError

    def _input_broken(self) -> None:
        raise NotImplementedError


@implementer(IPushProducer)
class FlowControlledInputPump(InputPump):
    """An ``InputPump`` that is also the transport's push producer while it answers commands,
    so a full write buffer stops command processing until the client has read its replies.

    A command that streams its answer through a producer of its own unregisters this one first
    (``_unregister_producer``): a transport has one producer at a time.
    """

    def __init__(self) -> None:
        super().__init__()
        self._producing = False  # registered as the transport's producer

    def _run(self) -> None:
        if self._running:
            return
        if not self._waiting and not self._closing:
            self._register_producer()  # so a full write buffer pauses us (pauseProducing)
        super()._run()
        if not self._closing and not self._waiting and not self._write_paused:
            self._unregister_producer()  # all input answered

    def _register_producer(self) -> None:
        if not self._producing:
            self._producing = True
            self.transport.registerProducer(self, True)

    def _unregister_producer(self) -> None:
        if self._producing:
            self._producing = False
            self._write_paused = False
            self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self._write_paused = True

    def resumeProducing(self) -> None:
        if not self._write_paused:
            return
        self._write_paused = False
        if self._closing or self._waiting:
            return
        self._resume_reading()
        self._run()

    def stopProducing(self) -> None:
        self._write_paused = False
