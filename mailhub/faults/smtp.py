"""The SMTP receiver with fault rules applied: ``FaultySMTPServerProtocol`` wraps each stage
method of ``mailhub.smtp.protocol.SMTPServerProtocol`` (connect, EHLO/HELO, MAIL, RCPT, the end
of the data, STARTTLS, every reply); ``FaultySMTPServerFactory`` builds it and holds the rules.

Each wrapper first tests ``stage in rules.stages``, a lookup in an empty frozenset while no rule
is active, then calls the protocol's own method. The service always builds the factory (rules
may be added at run time, through the web API), but while no rule can fire it builds plain
``SMTPServerProtocol`` sessions, without the wrappers (~10 us less per session, of ~100 us);
when a rule is added they are made ``FaultySMTPServerProtocol`` sessions on the spot, so a rule
applies to every session from its next stage on, as before.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, ClassVar, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IAddress
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from mailhub.addresses import Mailbox
from mailhub.faults.rules import Action, FaultRules, Rule, Stage
from mailhub.smtp import replies as R
from mailhub.smtp.factory import SMTPServerFactory
from mailhub.smtp.protocol import HandlerResult, SMTPServerProtocol
from mailhub.smtp.replies import Reply
from mailhub.smtp.transaction import Transaction

_NO_STARTTLS = frozenset({Action.NO_STARTTLS})
# The wrapped methods call the protocol's own as _Base.method(self, ...): on the hot path (every
# reply, MAIL, RCPT, end of data) that costs ~15 ns against ~140 ns for super().method(...).
_Base = SMTPServerProtocol


class FaultySMTPServerProtocol(SMTPServerProtocol):
    """An SMTP session that consults the factory's ``FaultRules`` at each stage."""

    factory: FaultySMTPServerFactory

    # RFC 5321 3.1: after a 554 (or other refusal) greeting the server waits for QUIT and
    # answers every other command 503; a connect-stage fault swaps this table in.
    refused_commands: ClassVar[dict[bytes, str]] = {
        verb: "smtp_QUIT" if verb == b"QUIT" else "_refused_session"
        for verb in SMTPServerProtocol.commands
    }

    # Pending fault delays (cancelled if the client goes), the extra wait before every reply of
    # a throttled session, and whether STARTTLS was hidden. Class defaults, set per session
    # when they change: a plain session made faulty mid-way (join_faults) starts from these.
    _fault_delays: list[Deferred] | None = None
    _slow = 0.0
    _starttls_hidden = False

    def connectionMade(self) -> None:
        self._faults = self.factory.faults
        super().connectionMade()

    @classmethod
    def join_faults(cls, session: SMTPServerProtocol, faults: FaultRules) -> None:
        """Make a running plain session one that consults ``faults`` from its next stage on.
        (Its class is changed in place: the subclass adds methods and the defaults above, no
        state of its own that the session would lack.)"""
        session.__class__ = cls
        cast(FaultySMTPServerProtocol, session)._faults = faults

    def connectionLost(self, reason: Failure | None = None) -> None:
        # Closing first: a cancelled wait must not let the session read on.
        self._closing = True
        delays, self._fault_delays = self._fault_delays, None
        for d in delays or ():
            d.cancel()
        super().connectionLost(reason)

    # --- the stages -------------------------------------------------------------------------

    def greet(self) -> None:
        if Stage.CONNECT in self._faults.stages:
            rule = self._fault(Stage.CONNECT)
            if rule is not None:
                self._connect_fault(rule)
                return
        _Base.greet(self)

    def respond(self, result: HandlerResult) -> None:
        if result is not None and self._slow:
            reply = result  # the lambda runs later, when ``result`` is the delay's Deferred
            result = self._delayed(self._slow, lambda: reply)  # a throttle fault
        _Base.respond(self, result)

    def ehlo(self, arg: str) -> HandlerResult:
        stages = self._faults.stages
        if stages:
            if Stage.STARTTLS in stages and self.starttls_available():
                self._starttls_hidden = (
                    self._fault(Stage.STARTTLS, actions=_NO_STARTTLS) is not None
                )
            if Stage.EHLO in stages:
                rule = self._fault(Stage.EHLO)
                if rule is not None:
                    return self._apply_fault(rule, lambda: _Base.ehlo(self, arg))
        return _Base.ehlo(self, arg)

    def helo(self, arg: str) -> HandlerResult:
        if Stage.EHLO in self._faults.stages:
            rule = self._fault(Stage.EHLO)
            if rule is not None:
                return self._apply_fault(rule, lambda: _Base.helo(self, arg))
        return _Base.helo(self, arg)

    def check_sender(self, sender: Mailbox | None, txn: Transaction) -> HandlerResult:
        if Stage.MAIL in self._faults.stages:
            rule = self._fault(Stage.MAIL, sender=txn.sender_written)
            if rule is not None:
                return self._apply_fault(rule, lambda: _Base.check_sender(self, sender, txn))
        return _Base.check_sender(self, sender, txn)

    def check_recipient(self, rcpt: Mailbox, txn: Transaction) -> HandlerResult:
        if Stage.RCPT in self._faults.stages:
            rule = self._fault(Stage.RCPT, sender=txn.sender_written, recipients=(rcpt.written,))
            if rule is not None:
                return self._apply_fault(rule, lambda: _Base.check_recipient(self, rcpt, txn))
        return _Base.check_recipient(self, rcpt, txn)

    def starttls_available(self) -> bool:
        return not self._starttls_hidden and _Base.starttls_available(self)

    def start_tls(self) -> HandlerResult:
        if Stage.STARTTLS in self._faults.stages:
            rule = self._fault(Stage.STARTTLS)
            if rule is not None:
                return self._apply_fault(rule, lambda: _Base.start_tls(self))
        return _Base.start_tls(self)

    def end_of_data(self, txn: Transaction) -> HandlerResult:
        if txn.failed is None and Stage.DATA in self._faults.stages:
            rule = self._fault(
                Stage.DATA,
                sender=txn.sender_written,
                recipients=[r.address for r in txn.recipients],
            )
            if rule is not None:
                return self._data_fault(rule, txn)
        return _Base.end_of_data(self, txn)

    # --- what a firing rule does ------------------------------------------------------------

    def _fault(
        self,
        stage: Stage,
        *,
        sender: str | None = None,
        recipients: tuple[str, ...] | list[str] = (),
        actions: frozenset[Action] | None = None,
    ) -> Rule | None:
        login = self.session.authenticated_as  # rules of one login (a sandbox's) match it
        if actions is None:
            return self._faults.decide(
                stage,
                sender=sender,
                recipients=recipients,
                client=self.session.client_address,
                login=login,
            )
        return self._faults.decide(
            stage,
            sender=sender,
            recipients=recipients,
            actions=actions,
            client=self.session.client_address,
            login=login,
        )

    def _apply_fault(self, rule: Rule, proceed: Callable[[], HandlerResult]) -> HandlerResult:
        """What a command does under a firing rule; ``proceed`` is its normal handling."""
        action = rule.action
        if action is Action.REPLY:
            return rule.reply
        if action is Action.DISCONNECT:
            self._drop()
            return None
        if action is Action.DELAY:
            return self._delayed(rule.seconds, proceed)
        self._slow = rule.seconds  # THROTTLE: from this reply on (respond adds the wait)
        return proceed()

    def _connect_fault(self, rule: Rule) -> None:
        if rule.action is Action.DISCONNECT:
            self._drop()
        elif rule.action is Action.REPLY:
            reply = rule.reply
            assert reply is not None
            if reply.code != 421:
                # RFC 5321 3.1: a refused session waits for QUIT; other commands get 503.
                self.commands = self.refused_commands  # type: ignore[misc]
            self.respond(reply)
        else:
            greeting = self.factory.greeting
            self.respond(self._apply_fault(rule, lambda: greeting))

    def _refused_session(self, arg: str) -> Reply:
        return R.BAD_SEQUENCE

    def _data_fault(self, rule: Rule, txn: Transaction) -> HandlerResult:
        """A rule firing at the end of the data: the message is refused, dropped or late."""
        action = rule.action
        if action is Action.REPLY:
            assert rule.reply is not None
            txn.fail(rule.reply)  # not stored
            self._log_message(txn, rule.reply, reason="fault injected")
            return rule.reply
        if action is Action.DISCONNECT:
            self._log_message(txn, None, outcome="aborted", reason="fault injected: disconnect")
            txn.fail(R.INTERNAL_ERROR)  # aborts the message; no reply is sent
            self._drop()
            return None
        if action is Action.DELAY:

            def gone() -> None:
                self._log_message(txn, None, outcome="aborted")
                txn.fail(R.INTERNAL_ERROR)

            return self._delayed(rule.seconds, lambda: _Base.end_of_data(self, txn), gone)
        self._slow = rule.seconds  # THROTTLE
        return _Base.end_of_data(self, txn)

    def _delayed(
        self,
        seconds: float,
        proceed: Callable[[], HandlerResult],
        gone: Callable[[], None] | None = None,
    ) -> Deferred:
        """``proceed()`` after ``seconds`` on the factory's clock; ``gone()`` instead if the
        connection ends first (the wait is cancelled then)."""
        d: Deferred = deferLater(self.factory.clock, seconds, lambda: None)
        if self._fault_delays is None:
            self._fault_delays = []
        self._fault_delays.append(d)

        def waited(_: object) -> HandlerResult:
            if self._fault_delays is not None and d in self._fault_delays:
                self._fault_delays.remove(d)
            if self._closing:
                if gone is not None:
                    gone()
                return None
            return proceed()

        def cancelled(failure: Failure) -> None:
            failure.trap(CancelledError)
            if gone is not None:
                gone()

        return d.addCallbacks(waited, cancelled)

    def _drop(self) -> None:
        """End the connection without a reply, as a failing network would (a fault)."""
        if self._closing:
            return
        self._closing = True
        self.setTimeout(None)
        self._log.info(
            "fault: dropping the connection of {client}", client=self.session.client_address
        )
        txn = self._txn
        if txn is not None and txn.message is not None:
            self._log_message(txn, None, outcome="aborted", reason="fault injected: disconnect")
        self._reset_transaction()
        self._flush()  # what earlier commands were answered still goes out
        self.transport.loseConnection()


class FaultySMTPServerFactory(SMTPServerFactory):
    """An ``SMTPServerFactory`` whose sessions consult ``faults`` (a new, empty ``FaultRules``
    unless given); rules may be added and removed while the server runs."""

    protocol = FaultySMTPServerProtocol

    def __init__(self, *, faults: FaultRules | None = None, **settings: Any) -> None:
        super().__init__(**settings)
        self.faults = faults if faults is not None else FaultRules()
        # Sessions begun while no rule could fire, built without the fault checks; they get
        # them as soon as a rule can fire (_rules_changed).
        self._plain: weakref.WeakSet[SMTPServerProtocol] = weakref.WeakSet()
        self.faults.watch(self._rules_changed)

    def buildProtocol(self, addr: IAddress | None) -> SMTPServerProtocol | None:
        if self.faults.stages or self.protocol is not FaultySMTPServerProtocol:
            return super().buildProtocol(addr)
        session = SMTPServerProtocol()
        session.factory = self
        self._plain.add(session)
        return session

    def _rules_changed(self) -> None:
        if self.faults.stages and self._plain:
            sessions = list(self._plain)
            self._plain.clear()
            for session in sessions:
                FaultySMTPServerProtocol.join_faults(session, self.faults)

    def logPrefix(self) -> str:
        # Twisted's "<prefix> starting on <port>" line: every SMTP listener is built with fault
        # rules (they may be added at run time), which is no news to the operator.
        return SMTPServerFactory.__name__
