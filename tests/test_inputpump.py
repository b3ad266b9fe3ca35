"""mailhub.inputpump: in-order processing of pipelined input, on a small line protocol.

The protocol under test reads one command a line and answers each with a line:
``NOW x`` at once, ``LATER x`` when the test fires its Deferred, ``FIRED x`` with a Deferred that
has already fired, ``FAIL`` with a failed one, ``FULL x`` at once and its write fills the
transport's buffer, ``SWITCH`` drops what is buffered (as STARTTLS
does), ``BOOM`` is a bug in the framing code. Lines are cut by ``_take_line``: at most 32 octets
with the LF, a longer one is answered ``too long``.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mailhub.inputpump import TOO_LONG, FlowControlledInputPump, InputPump


class _Commands:
    """The toy protocol's part: ``_step`` and the hooks ``InputPump`` calls."""

    max_pending_input = 16
    max_line = 32

    def __init__(self) -> None:
        super().__init__()
        self.later: list[Deferred] = []
        self.failures: list[Failure] = []
        self.broken = 0
        self.timed_out = False

    def _step(self) -> bool:
        line = self._take_line(self.max_line)
        if line is None:
            return False
        if line is TOO_LONG:
            self.transport.write(b"too long\n")
            return True
        verb, _, arg = line.partition(b" ")
        if verb == b"NOW":
            self.transport.write(arg + b"\n")
        elif verb == b"LATER":
            d: Deferred = Deferred()
            self.later.append(d)
            self._await(d.addCallback(lambda _: arg + b"\n"))
        elif verb == b"FIRED":
            self._await(succeed(arg + b"\n"))
        elif verb == b"FAIL":
            self._await(fail(ValueError("lookup failed")))
        elif verb == b"FULL":
            self.transport.write(arg + b"\n")
            self.pauseProducing()  # what a transport does when a write fills its buffer
        elif verb == b"SWITCH":
            self.transport.write(b"switched\n")
            self._discard_input()
        elif verb == b"BOOM":
            raise RuntimeError("framing bug")
        return True

    def _late_reply(self, reply: bytes | None) -> None:
        if reply is not None:
            self.transport.write(reply)

    def _unexpected_failure(self, failure: Failure) -> bytes:
        self.failures.append(failure)
        return b"internal error\n"

    def _reply_failed(self, failure: Failure) -> None:
        self.failures.append(failure)
        self._closing = True

    def _input_broken(self) -> None:
        self.broken += 1
        self._closing = True
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closing = True

    def timeoutConnection(self) -> None:
        self.timed_out = True


class LineToy(_Commands, InputPump, Protocol, TimeoutMixin):
    pass


class FlowToy(_Commands, FlowControlledInputPump, Protocol, TimeoutMixin):
    pass


def connect(cls: type = LineToy) -> tuple[_Commands, StringTransport]:
    proto = cls()
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def output(transport: StringTransport) -> bytes:
    data = transport.value()
    transport.clear()
    return data


class OrderTests(SynchronousTestCase):
    def test_nothing_after_a_pending_command_is_processed_until_it_answers(self) -> None:
        proto, transport = connect()
        proto.dataReceived(b"NOW a\nLATER b\nNOW c\nNOW d\n")
        self.assertEqual(output(transport), b"a\n")
        proto.later[0].callback(None)
        self.assertEqual(output(transport), b"b\nc\nd\n")

    def test_input_arriving_while_waiting_comes_after(self) -> None:
        proto, transport = connect()
        proto.dataReceived(b"LATER a\nNO")
        proto.dataReceived(b"W b\nLATER c\n")
        proto.dataReceived(b"NOW d\n")
        self.assertEqual(output(transport), b"")
        proto.later[0].callback(None)
        self.assertEqual(output(transport), b"a\nb\n")
        proto.later[1].callback(None)
        self.assertEqual(output(transport), b"c\nd\n")

    def test_answers_that_have_already_fired_do_not_nest(self) -> None:
        # Each already-fired answer calls back into _run, which only lets the running loop go
        # on: a long pipeline must not become a deep (and overflowing) stack.
        proto, transport = connect()
        proto.dataReceived(b"".join(b"FIRED %d\n" % i for i in range(5000)))
        self.assertEqual(output(transport), b"".join(b"%d\n" % i for i in range(5000)))
        self.assertEqual(proto.broken, 0)

    def test_a_failed_answer_gets_the_protocols_reply_and_the_session_goes_on(self) -> None:
        proto, transport = connect()
        proto.dataReceived(b"FAIL\nNOW next\n")
        self.assertEqual(output(transport), b"internal error\nnext\n")
        self.assertTrue(proto.failures[0].check(ValueError))

    def test_a_bug_in_the_framing_code_ends_processing(self) -> None:
        proto, transport = connect()
        proto.dataReceived(b"NOW a\nBOOM\nNOW never\n")
        self.assertEqual(output(transport), b"a\n")
        self.assertEqual(proto.broken, 1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(proto._buf, b"")  # what followed is dropped, not kept
        proto.dataReceived(b"NOW late\n")
        self.assertEqual(output(transport), b"")

    def test_discarded_input_is_never_processed(self) -> None:
        # As after STARTTLS (RFC 3207 4.2): what was pipelined behind it does not count.
        proto, transport = connect()
        proto.dataReceived(b"SWITCH\nNOW injected\n")
        self.assertEqual(output(transport), b"switched\n")
        proto.dataReceived(b"NOW after\n")
        self.assertEqual(output(transport), b"after\n")


class LineTests(SynchronousTestCase):
    def test_limit_counts_the_line_ending(self) -> None:
        proto, transport = connect()
        proto.dataReceived(b"NOW " + b"x" * 27 + b"\n")  # 32 octets
        proto.dataReceived(b"NOW " + b"y" * 28 + b"\nNOW z\n")  # 33
        self.assertEqual(output(transport), b"x" * 27 + b"\ntoo long\nz\n")

    def test_line_ending_is_cut_and_a_cr_is_left_to_the_protocol(self) -> None:
        proto, transport = connect()
        proto.dataReceived(b"NOW a\r\nNOW b\n")
        self.assertEqual(output(transport), b"a\r\nb\n")

    def test_endless_line_is_dropped_as_it_comes_and_answered_at_its_end(self) -> None:
        proto, transport = connect()
        for _ in range(100):
            proto.dataReceived(b"z" * 20)
            self.assertLess(len(proto._buf) - proto._pos, 32)
        self.assertEqual(output(transport), b"")
        proto.dataReceived(b"zz\nNOW after\n")
        self.assertEqual(output(transport), b"too long\nafter\n")


class BackpressureTests(SynchronousTestCase):
    def test_reading_pauses_past_the_bound_and_resumes_with_the_answer(self) -> None:
        proto, transport = connect()
        proto.dataReceived(b"LATER a\n")
        proto.dataReceived(b"NOW 0123456789a\n")  # 16 octets buffered: the bound, not past it
        self.assertEqual(transport.producerState, "producing")
        proto.dataReceived(b"N")
        self.assertEqual(transport.producerState, "paused")
        proto.dataReceived(b"OW b\n")  # a paused transport may still deliver what it has
        proto.later[0].callback(None)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(output(transport), b"a\n0123456789a\nb\n")

    def test_no_pause_while_commands_are_answered_at_once(self) -> None:
        proto, transport = connect()
        proto.dataReceived(b"NOW x\n" * 100)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(output(transport), b"x\n" * 100)

    def test_idle_timer_restarts_with_input(self) -> None:
        proto, _transport = connect()
        clock = Clock()
        proto.callLater = clock.callLater
        proto.setTimeout(10)
        clock.advance(9)
        proto.dataReceived(b"NOW a\n")
        clock.advance(9)
        self.assertFalse(proto.timed_out)
        clock.advance(1)
        self.assertTrue(proto.timed_out)


class ConnectionLostTests(SynchronousTestCase):
    def test_answer_after_the_connection_is_gone_is_not_written(self) -> None:
        proto, transport = connect()
        proto.dataReceived(b"LATER a\nNOW b\n")
        proto.connectionLost(None)
        proto.later[0].callback(None)
        self.assertEqual(output(transport), b"")
        self.assertEqual(proto.failures, [])
        proto.dataReceived(b"NOW c\n")
        self.assertEqual(output(transport), b"")

    def test_paused_reading_is_not_resumed_for_a_lost_connection(self) -> None:
        proto, transport = connect()
        proto.dataReceived(b"LATER a\n")
        proto.dataReceived(b"NOW x\n" * 5)
        self.assertEqual(transport.producerState, "paused")
        proto.connectionLost(None)
        proto.later[0].callback(None)
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(output(transport), b"")


class FlowControlTests(SynchronousTestCase):
    def test_producer_only_while_answering(self) -> None:
        proto, transport = connect(FlowToy)
        proto.dataReceived(b"NOW a\n")
        self.assertIsNone(transport.producer)
        proto.dataReceived(b"LATER b\nNOW c\n")
        self.assertIs(transport.producer, proto)
        self.assertTrue(transport.streaming)
        proto.later[0].callback(None)
        self.assertIsNone(transport.producer)
        self.assertEqual(output(transport), b"a\nb\nc\n")

    def test_full_write_buffer_stops_processing_until_it_drains(self) -> None:
        proto, transport = connect(FlowToy)
        proto.dataReceived(b"LATER a\nNOW b\nNOW c\n")
        proto.pauseProducing()  # the transport's write buffer is full
        proto.later[0].callback(None)
        self.assertEqual(output(transport), b"a\n")  # the answer owed, nothing more
        proto.dataReceived(b"NOW d\n")
        self.assertEqual(output(transport), b"")
        proto.resumeProducing()
        self.assertEqual(output(transport), b"b\nc\nd\n")
        self.assertIsNone(transport.producer)

    def test_a_write_that_fills_the_buffer_stops_the_pipeline_at_once(self) -> None:
        proto, transport = connect(FlowToy)
        proto.dataReceived(b"NOW a\nFULL b\nNOW c\nNOW d\n")
        self.assertEqual(output(transport), b"a\nb\n")
        self.assertIs(transport.producer, proto)
        proto.resumeProducing()
        self.assertEqual(output(transport), b"c\nd\n")
        self.assertIsNone(transport.producer)

    def test_input_behind_a_full_write_buffer_is_bounded(self) -> None:
        proto, transport = connect(FlowToy)
        proto.dataReceived(b"LATER a\n")
        proto.pauseProducing()
        proto.later[0].callback(None)
        proto.dataReceived(b"NOW x\n" * 3)
        self.assertEqual(transport.producerState, "paused")
        proto.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(output(transport), b"a\n" + b"x\n" * 3)

    def test_resume_while_an_answer_is_pending_waits_for_it(self) -> None:
        proto, transport = connect(FlowToy)
        proto.dataReceived(b"LATER a\nNOW b\n")
        proto.pauseProducing()
        proto.resumeProducing()
        self.assertEqual(output(transport), b"")
        proto.later[0].callback(None)
        self.assertEqual(output(transport), b"a\nb\n")
