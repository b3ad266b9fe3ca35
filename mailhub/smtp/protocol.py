"""The ESMTP receiver: parser and state machine on a plain ``Protocol``.

Input is processed strictly one command at a time from a buffer (RFC 2920 4: replies in command
order; ``mailhub.inputpump``). A handler returns a ``Reply``, a Deferred firing with one (policy
lookups, the sink's commit), or None when it answered itself. While a Deferred is outstanding
nothing more is parsed; input is only buffered, and past a bound the transport is paused.

Message data is never handled line by line in Python: each received chunk is scanned with bytes
methods for the end-of-data marker, dot-unstuffed with one ``replace``, checked for bare CR/LF by
counting, and written to the sink whole (up to its last complete line).

SMTP AUTH (RFC 4954) keeps that model: the client's responses to ``334`` challenges are lines
read by the same command loop, routed to the exchange in progress instead of the dispatcher, and
checking the credentials is one more pending Deferred. Mechanism parsing is ``mailhub.sasl``;
whether a session may authenticate at all is the policy's ``check_auth``.

Fault injection (``mailhub.faults``) hooks in at each stage: connect, EHLO/HELO, MAIL, RCPT, the
end of the data, STARTTLS. Each hook first tests ``stage in faults.stages``, a lookup in an empty
frozenset while no rule is active, so normal sessions pay nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from mailhub import sasl
from mailhub.connlimit import Slot
from mailhub.envelope import Envelope, Recipient
from mailhub.faults import Action, Rule, Stage
from mailhub.inputpump import TOO_LONG, InputPump
from mailhub.interfaces import DeliveryError, IIncomingMessage
from mailhub.login import LoginResult, Outcome, guarded_login
from mailhub.received import protocol_keyword, received_header
from mailhub.smtp import replies as R
from mailhub.smtp.address import (
    AddressError,
    Mailbox,
    ParameterError,
    UsageError,
    parse_mail_from,
    parse_rcpt_to,
)
from mailhub.smtp.policy import Decision
from mailhub.smtp.replies import Reply
from mailhub.smtp.session import Session

if TYPE_CHECKING:
    from mailhub.smtp.factory import SMTPServerFactory

_COMMAND, _DATA, _BDAT = 0, 1, 2
_DOT = 0x2E
_CR = 0x0D

# Input buffered while a reply is pending before the transport is paused. Pipelined commands
# are small; this bounds what a client can make us hold (RFC 2920 leaves it to the server).
MAX_PENDING_INPUT = 256 * 1024

_BODY_TYPES = ("7BIT", "8BITMIME", "BINARYMIME")  # RFC 6152, RFC 3030

HandlerResult = Reply | Deferred | None

_NO_STARTTLS = frozenset({Action.NO_STARTTLS})


class _Transaction:
    """One mail transaction: MAIL, its recipients, and the message being received."""

    __slots__ = (
        "body_type",
        "declared_size",
        "envelope",
        "failed",
        "message",
        "rcpt_count",
        "recipients",
        "sender",
        "size",
        "smtputf8",
        "used_bdat",
    )

    def __init__(self, sender: Mailbox | None) -> None:
        self.sender = sender
        self.recipients: list[Recipient] = []
        self.rcpt_count = 0  # accepted RCPT commands (an alias may add several recipients)
        self.body_type = "7BIT"
        self.smtputf8 = False
        self.declared_size: int | None = None
        self.envelope: Envelope | None = None
        self.message: IIncomingMessage | None = None
        self.failed: Reply | None = None  # the reply owed at the end of the data
        self.size = 0  # message octets received (dot-unstuffed, RFC 1870 3)
        self.used_bdat = False

    @property
    def binary(self) -> bool:
        return self.body_type == "BINARYMIME"


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


class SMTPServerProtocol(InputPump, Protocol, TimeoutMixin):
    """One SMTP session (RFC 5321) with PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
    ENHANCEDSTATUSCODES, CHUNKING and BINARYMIME; STARTTLS when the factory has a context.

    Extension points: ``commands`` maps verbs to handler methods (``smtp_<VERB>(arg)``), and
    ``ehlo_keywords`` builds the EHLO list; AUTH plugs into both and sets
    ``session.authenticated_as``. ``_restart_session`` is what STARTTLS uses to forget all.
    """

    factory: SMTPServerFactory
    max_pending_input = MAX_PENDING_INPUT

    commands: ClassVar[dict[bytes, str]] = {
        verb.encode(): f"smtp_{verb}"
        for verb in (
            "HELO",
            "EHLO",
            "MAIL",
            "RCPT",
            "DATA",
            "BDAT",
            "RSET",
            "NOOP",
            "QUIT",
            "VRFY",
            "EXPN",
            "HELP",
            "STARTTLS",
            "AUTH",
        )
    }
    # RFC 5321 3.1: after a 554 (or other refusal) greeting the server waits for QUIT and
    # answers every other command 503; a connect-stage fault swaps this table in.
    refused_commands: ClassVar[dict[bytes, str]] = {
        verb: "smtp_QUIT" if verb == b"QUIT" else "_refused_session" for verb in commands
    }
    # RFC 5321 4.2.4: known to SMTP but not provided here -> 502.
    not_implemented: ClassVar[frozenset[bytes]] = frozenset(
        {b"TURN", b"ETRN", b"ATRN", b"SEND", b"SOML", b"SAML"}
    )
    # Another protocol talking to us (cross-protocol attacks via browsers): end it at once.
    forbidden: ClassVar[frozenset[bytes]] = frozenset(
        {b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT"}
    )

    def __init__(self) -> None:
        super().__init__()
        self._mode = _COMMAND
        self._closed = False
        self._slot: Slot | None = None  # the factory counted this connection
        self._errors = 0
        self._txn: _Transaction | None = None
        self._tls_active = False
        # DATA: is the next unprocessed byte at the start of a line (after a real CRLF)?
        self._bol = True
        # BDAT: octets left in the chunk, whether it is LAST, an error to answer it with,
        # and the incomplete last line held back for the line checks.
        self._bdat_remaining = 0
        self._bdat_size = 0
        self._bdat_last = False
        self._bdat_error: Reply | None = None
        self._tail = b""
        self.session = Session("")
        # AUTH: the SASL exchange waiting for the client's next response line, the throttle's
        # pending delay (cancelled if the client goes), the realm's logout for the session user.
        self._auth: sasl.Mechanism | None = None
        self._auth_delay: Deferred | None = None
        self._logout: object = None
        # Fault injection: pending fault delays (cancelled if the client goes), the extra wait
        # before every reply of a throttled session, and whether STARTTLS was hidden.
        self._fault_delays: list[Deferred] | None = None
        self._slow = 0.0
        self._starttls_hidden = False

    # --- connection -------------------------------------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        self._log = f.log
        self._limits = f.limits
        self._max_line = f.limits.max_line_length
        self._max_size = f.limits.max_message_size
        self._normalise = f.smtp_config.bare_line_endings != "reject"
        self.callLater = f.clock.callLater  # TimeoutMixin uses the injected clock
        peer = self.transport.getPeer()
        self.session = Session(str(getattr(peer, "host", "")), int(getattr(peer, "port", 0) or 0))
        self._slot = f.connection_opened(self.session.client_address, self)
        if self._slot is None:
            self._log.info(
                "refused connection from {client}: {reply}",
                client=self.session.client_address,
                reply=str(R.TOO_MANY_CONNECTIONS),
            )
            self._shutdown(R.TOO_MANY_CONNECTIONS)
            return
        # An implicit-TLS listener (smtps) hands us a transport that is already TLS.
        self._tls_active = ISSLTransport.providedBy(self.transport)
        if self._tls_active:
            self.session.tls = "TLS"  # refined (version, cipher) once a message is received
        self.setTimeout(self._idle_timeout())
        self._faults = f.faults
        if Stage.CONNECT in self._faults.stages:
            rule = self._fault(Stage.CONNECT)
            if rule is not None:
                self._connect_fault(rule, f.greeting)
                return
        self.transport.write(f.greeting.wire)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closed = self._closing = True
        self.setTimeout(None)
        delay, self._auth_delay = self._auth_delay, None
        if delay is not None:
            delay.cancel()
        delays, self._fault_delays = self._fault_delays, None
        for d in delays or ():
            d.cancel()
        self._end_login()
        txn = self._txn
        if txn is not None and txn.message is not None:
            self._log_message(txn, None, outcome="aborted")
        self._reset_transaction()
        slot, self._slot = self._slot, None
        if slot is not None:
            self.factory.connection_closed(slot)

    def _idle_timeout(self) -> float:
        """The idle timeout now: [limits] idle_timeout, or the stress one (mailhub.connlimit)."""
        return self.factory.connection_count.idle_timeout(self._slot, self._limits.idle_timeout)

    def under_stress(self) -> None:
        """The listener is under stress and this session has not logged in: cut its timer."""
        short = self._idle_timeout()
        if not self._closing and self.timeOut is not None and self.timeOut > short:
            self.setTimeout(short)

    def evict(self) -> None:
        """The listener needs this session's place (it is the oldest not logged in)."""
        self._log.info("closing {client} to make room", client=self.session.client_address)
        self._shutdown(R.TOO_MANY_CONNECTIONS)

    def timeoutConnection(self) -> None:
        # RFC 5321 4.5.3.2.7: the server may close an idle session, saying 421 first.
        self._log.info("idle timeout for {client}", client=self.session.client_address)
        self._shutdown(R.TIMEOUT)

    def _shutdown(self, reply: Reply) -> None:
        if self._closing:
            return
        self.transport.write(reply.wire)
        self._closing = True
        self.setTimeout(None)
        txn = self._txn
        if txn is not None and txn.message is not None:
            self._log_message(txn, reply, outcome="aborted")
        self._reset_transaction()
        self.transport.loseConnection()

    # --- input (the loop is InputPump's; _step is below) -------------------------------------

    def _input_broken(self) -> None:
        # A bug in the framing code: the byte stream can no longer be trusted.
        self._log.failure(
            "SMTP session state broken for {client}", client=self.session.client_address
        )
        self._shutdown(Reply(421, "4.3.0", "Error: internal server error"))

    # --- replies ----------------------------------------------------------------------------

    def _respond(self, result: HandlerResult) -> None:
        if result is None:
            return
        if self._slow:
            result = self._delayed(self._slow, lambda r=result: r)  # a throttle fault
        if isinstance(result, Deferred):
            # The client is not idle while we work; the timer restarts with the reply.
            self.setTimeout(None)
            self._await(result)
        else:
            self._reply(result)

    def _unexpected_failure(self, failure: Failure) -> Reply:
        self._log.failure(
            "Unexpected error answering {client}", failure, client=self.session.client_address
        )
        return R.INTERNAL_ERROR

    def _reply_failed(self, failure: Failure) -> None:
        self._log.failure("Error sending an SMTP reply", failure)
        self._shutdown(Reply(421, "4.3.0", "Error: internal server error"))

    def _late_reply(self, reply: Reply | None) -> None:
        if reply is not None:  # None: the handler answered itself (a delayed STARTTLS)
            self._reply(reply)
        if not self._closing:
            self.setTimeout(self._idle_timeout())

    def _reply(self, reply: Reply) -> None:
        if reply.code == 421:
            # RFC 5321 4.2.2: 421 means the server is closing the channel; so it does.
            self._shutdown(reply)
            return
        self.transport.write(reply.wire)
        if reply.code >= 500:
            self._errors += 1
            if self._errors >= self._limits.max_errors:
                self._log.info("too many errors from {client}", client=self.session.client_address)
                self._shutdown(R.TOO_MANY_ERRORS)

    # --- commands ---------------------------------------------------------------------------

    def _step(self) -> bool:
        """One command line or, in DATA or BDAT mode, a piece of the message (for InputPump)."""
        mode = self._mode
        if mode == _DATA:
            return self._step_data()
        if mode == _BDAT:
            return self._step_bdat()
        line = self._take_line(self._max_line)
        if line is None:
            return False
        if line is TOO_LONG:
            self._bad_line(R.LINE_TOO_LONG)
        elif not line.endswith(b"\r"):
            self._bad_line(R.BARE_LF_COMMAND)
        else:
            line = line[:-1]
            if b"\r" in line:
                self._bad_line(R.BARE_LF_COMMAND)
            elif self._auth is not None:
                self._auth_response(line)
            else:
                self._dispatch(line)
        return True

    def _bad_line(self, reply: Reply) -> None:
        """A line that cannot be used. Inside an AUTH exchange it ends the exchange."""
        if self._auth is not None:
            self._auth = None
            # RFC 4954 4: an over-long response line is 500 5.5.6.
            reply = R.AUTH_LINE_TOO_LONG if reply is R.LINE_TOO_LONG else R.AUTH_MALFORMED
        self._respond(reply)

    def _dispatch(self, line: bytes) -> None:
        verb, _, rest = line.partition(b" ")
        verb = verb.upper()
        name = self.commands.get(verb)
        if name is None:
            if verb in self.not_implemented:
                self._respond(R.NOT_IMPLEMENTED)
            elif verb in self.forbidden:
                self._shutdown(R.FORBIDDEN_COMMAND)
            else:
                self._respond(R.UNRECOGNISED)
            return
        try:
            arg = rest.decode("utf-8").rstrip(" ")
        except UnicodeDecodeError:
            self._respond(R.BAD_ENCODING)
            return
        try:
            result = getattr(self, name)(arg)
        except Exception:
            self._log.failure(
                "Unexpected error in {verb} from {client}",
                verb=verb.decode("ascii", "replace"),
                client=self.session.client_address,
            )
            result = R.INTERNAL_ERROR
        self._respond(result)

    def ehlo_keywords(self) -> list[str]:
        """EHLO service extensions (RFC 5321 4.1.1.1), in the order advertised."""
        keywords = [
            "PIPELINING",  # RFC 2920
            f"SIZE {self._max_size}",  # RFC 1870
            "8BITMIME",  # RFC 6152
            "SMTPUTF8",  # RFC 6531
            "ENHANCEDSTATUSCODES",  # RFC 2034
            "CHUNKING",  # RFC 3030
            "BINARYMIME",  # RFC 3030
        ]
        if self._starttls_available():
            keywords.append("STARTTLS")  # RFC 3207
        if self._auth_available():
            keywords.append("AUTH " + " ".join(sasl.MECHANISMS))  # RFC 4954 3
        keywords.append("HELP")
        return keywords

    def _starttls_available(self) -> bool:
        return (
            self.factory.tls_context_factory is not None
            and not self._tls_active
            and not self._starttls_hidden
        )

    def _auth_available(self) -> bool:
        """AUTH is advertised only where it may be used (RFC 4954 4: not before TLS)."""
        return (
            self.factory.portal is not None
            and self.factory.policy.check_auth(self.session).accepted
        )

    def smtp_EHLO(self, arg: str) -> HandlerResult:
        # RFC 2034: no enhanced codes in replies to HELO/EHLO.
        if not arg:
            return R.syntax("EHLO hostname", None)
        stages = self._faults.stages
        if stages:
            if Stage.STARTTLS in stages and self._starttls_available():
                self._starttls_hidden = (
                    self._fault(Stage.STARTTLS, actions=_NO_STARTTLS) is not None
                )
            if Stage.EHLO in stages:
                rule = self._fault(Stage.EHLO)
                if rule is not None:
                    return self._apply_fault(rule, lambda: self._ehlo(arg))
        return self._ehlo(arg)

    def _ehlo(self, arg: str) -> Reply:
        self._reset_transaction()  # RFC 5321 4.1.4: EHLO implies RSET
        self.session.helo = arg.split(" ", 1)[0]
        self.session.esmtp = True
        return Reply(250, None, (self.factory.hostname, *self.ehlo_keywords()))

    def smtp_HELO(self, arg: str) -> HandlerResult:
        if not arg:
            return R.syntax("HELO hostname", None)
        if Stage.EHLO in self._faults.stages:
            rule = self._fault(Stage.EHLO)
            if rule is not None:
                return self._apply_fault(rule, lambda: self._helo(arg))
        return self._helo(arg)

    def _helo(self, arg: str) -> Reply:
        self._reset_transaction()
        self.session.helo = arg.split(" ", 1)[0]
        self.session.esmtp = False
        return Reply(250, None, self.factory.hostname)

    def smtp_MAIL(self, arg: str) -> HandlerResult:
        if self.session.helo is None:
            return R.NEED_HELO  # RFC 5321 4.1.4
        if self._txn is not None:
            return R.NESTED_MAIL
        try:
            sender, params = parse_mail_from(arg)
        except UsageError:
            return R.syntax("MAIL FROM:<address>")
        except AddressError as e:
            return Reply(501, "5.1.7", f"Error: bad sender address syntax: {e}")
        except ParameterError as e:
            return _parameter_error(e)
        txn = _Transaction(sender)
        for key, value in params.items():
            if key == "SIZE":  # RFC 1870
                if value is None or not value.isascii() or not value.isdigit():
                    return R.BAD_PARAMETER
                if len(value) > 18:  # int() refuses thousands of digits; this is too big anyway
                    return R.SIZE_EXCEEDED
                txn.declared_size = int(value)
                if txn.declared_size > self._max_size:
                    return R.SIZE_EXCEEDED
            elif key == "BODY":  # RFC 6152, RFC 3030
                body = (value or "").upper()
                if body not in _BODY_TYPES:
                    return R.BAD_PARAMETER
                txn.body_type = body
            elif key == "SMTPUTF8" and value is None:  # RFC 6531 3.4
                txn.smtputf8 = True
            else:
                return Reply(555, "5.5.4", f"Error: unsupported parameter {key}")
        if sender is not None and sender.needs_smtputf8 and not txn.smtputf8:
            return R.NEED_SMTPUTF8
        if Stage.MAIL in self._faults.stages:
            written = sender.written if sender is not None else ""
            rule = self._fault(Stage.MAIL, sender=written)
            if rule is not None:
                return self._apply_fault(rule, lambda: self._check_sender(sender, txn))
        return self._check_sender(sender, txn)

    def _check_sender(self, sender: Mailbox | None, txn: _Transaction) -> HandlerResult:
        return _then(
            self.factory.policy.check_sender(self.session, sender), self._mail_decided, txn
        )

    def _mail_decided(self, decision: Decision, txn: _Transaction) -> Reply:
        if decision.accepted and not self._closing:
            self._txn = txn
        return decision.reply

    def smtp_RCPT(self, arg: str) -> HandlerResult:
        txn = self._txn
        if txn is None:
            return R.NEED_MAIL
        if txn.used_bdat:
            return R.BAD_SEQUENCE  # recipients are fixed once data started
        try:
            rcpt, params = parse_rcpt_to(arg)
        except UsageError:
            return R.syntax("RCPT TO:<address>")
        except AddressError as e:
            return Reply(501, "5.1.3", f"Error: bad recipient address syntax: {e}")
        except ParameterError as e:
            return _parameter_error(e)
        if params:
            # DSN's NOTIFY/ORCPT are not offered, so any parameter is unknown.
            return Reply(555, "5.5.4", f"Error: unsupported parameter {next(iter(params))}")
        if rcpt.needs_smtputf8 and not txn.smtputf8:
            return R.NEED_SMTPUTF8
        if txn.rcpt_count >= self._limits.max_recipients:
            return R.TOO_MANY_RECIPIENTS  # RFC 5321 4.5.3.1.10; the client retries the rest
        if Stage.RCPT in self._faults.stages:
            written = txn.sender.written if txn.sender is not None else ""
            rule = self._fault(Stage.RCPT, sender=written, recipients=(rcpt.written,))
            if rule is not None:
                return self._apply_fault(rule, lambda: self._check_recipient(rcpt, txn))
        return self._check_recipient(rcpt, txn)

    def _check_recipient(self, rcpt: Mailbox, txn: _Transaction) -> HandlerResult:
        return _then(
            self.factory.policy.check_recipient(self.session, rcpt), self._rcpt_decided, txn, rcpt
        )

    def _rcpt_decided(self, decision: Decision, txn: _Transaction, rcpt: Mailbox) -> Reply:
        if decision.accepted:
            txn.rcpt_count += 1
            for mailbox in decision.mailboxes or (str(rcpt),):
                txn.recipients.append(Recipient(rcpt.written, mailbox))
        else:
            self._log.info(
                "recipient rejected: client={client} from=<{mail_from}> to=<{rcpt}> "
                "reply={code} {enhanced}",
                event="rcpt_rejected",
                client=self.session.client_address,
                mail_from=txn.sender.written if txn.sender else "",
                rcpt=rcpt.written,
                code=decision.reply.code,
                enhanced=decision.reply.enhanced,
            )
        return decision.reply

    def smtp_DATA(self, arg: str) -> Reply:
        if arg:
            return R.syntax("DATA")
        txn = self._txn
        if txn is None:
            return R.NEED_MAIL if self.session.helo is not None else R.NEED_HELO
        if txn.used_bdat:
            return R.DATA_AFTER_BDAT  # RFC 3030 3
        if txn.binary:
            return R.BINARYMIME_NEEDS_BDAT  # RFC 3030 3
        if not txn.recipients:
            return R.NO_VALID_RECIPIENTS  # RFC 5321 3.3
        error = self._open_message(txn)
        if error is not None:
            self._txn = None
            return error
        self._mode = _DATA
        self._bol = True  # the DATA command's CRLF precedes the first line
        return R.START_DATA

    def smtp_BDAT(self, arg: str) -> HandlerResult:
        size_text, _, last = arg.partition(" ")
        if (
            not (size_text.isascii() and size_text.isdigit())
            or len(size_text) > 18  # more than an exabyte: nonsense, and int() has limits
            or last.upper() not in ("", "LAST")
        ):
            # We cannot tell how many octets follow, so everything after would be misread.
            return self._shutdown(Reply(421, "4.5.0", "Error: BDAT syntax error, closing"))
        size = int(size_text)
        self._bdat_size = self._bdat_remaining = size
        self._bdat_last = bool(last)
        self._bdat_error = None
        # From here on the chunk is read even if refused (RFC 3030 2), so the stream stays in
        # step: its octets must never be taken for commands.
        txn = self._txn
        if txn is None:
            self._bdat_error = R.NEED_MAIL if self.session.helo is not None else R.NEED_HELO
        elif txn.used_bdat and txn.failed is not None:
            self._bdat_error = R.BDAT_TRANSACTION_FAILED
        elif not txn.recipients:
            self._bdat_error = R.NO_VALID_RECIPIENTS
        elif not txn.used_bdat:
            error = self._open_message(txn)
            if error is not None:
                self._txn = None
                self._bdat_error = error
            else:
                txn.used_bdat = True
                self._tail = b""
        if (
            self._bdat_error is None
            and txn is not None
            and txn.size + len(self._tail) + size > self._max_size
        ):
            self._fail(txn, R.SIZE_EXCEEDED)  # known now; the octets are still read
        if size == 0:
            return self._end_of_chunk()
        self._mode = _BDAT
        return None

    def smtp_RSET(self, arg: str) -> Reply:
        if arg:
            return R.syntax("RSET")
        self._reset_transaction()
        return R.OK

    def smtp_NOOP(self, arg: str) -> Reply:
        return R.OK  # RFC 5321 4.1.1.9: any argument is ignored

    def smtp_QUIT(self, arg: str) -> None:
        if arg:
            self._respond(R.syntax("QUIT"))
            return
        self.transport.write(R.BYE.wire)
        self._closing = True
        self.setTimeout(None)
        self._reset_transaction()
        self.transport.loseConnection()

    def smtp_VRFY(self, arg: str) -> Reply:
        if not arg:
            return R.syntax("VRFY address")
        return R.CANNOT_VRFY  # RFC 5321 3.5.3 / 7.3: verifying leaks who exists

    def smtp_EXPN(self, arg: str) -> Reply:
        if not self.factory.smtp_config.expn:
            return R.EXPN_DISABLED  # RFC 5321 7.3
        if not arg:
            return R.syntax("EXPN list")
        return R.NOT_A_LIST  # no mailing lists yet

    def smtp_HELP(self, arg: str) -> Reply:
        verbs = " ".join(
            v.decode()
            for v in self.commands
            if (v != b"STARTTLS" or self._starttls_available())
            and (v != b"AUTH" or self.factory.portal is not None)
        )
        return Reply(
            214,
            "2.0.0",
            (f"{self.factory.hostname} commands:", verbs, "See RFC 5321, RFC 3030 and RFC 6531"),
        )

    def smtp_STARTTLS(self, arg: str) -> HandlerResult:
        if self._tls_active:
            return R.TLS_ACTIVE
        if self.factory.tls_context_factory is None or self._starttls_hidden:
            return R.NOT_IMPLEMENTED
        if arg:
            return R.syntax("STARTTLS")
        if self.session.helo is None:
            return R.NEED_HELO
        if Stage.STARTTLS in self._faults.stages:
            rule = self._fault(Stage.STARTTLS)
            if rule is not None:
                return self._apply_fault(rule, self._start_tls)
        return self._start_tls()

    def _start_tls(self) -> None:
        self.transport.write(R.START_TLS.wire)
        # RFC 3207 4.2 and CVE-2011-0411: anything the client sent after STARTTLS in plain text
        # is dropped, and everything learned before the handshake is forgotten.
        self._discard_input()
        self._restart_session()
        self.transport.startTLS(self.factory.tls_context_factory)
        self._tls_active = True
        self.session.tls = "TLS"
        return None

    def _restart_session(self) -> None:
        """Forget all session state (after STARTTLS): greeting, transaction, authentication."""
        self._reset_transaction()
        old = self.session
        self.session = Session(old.client_address, old.client_port, old.client_name)
        self._skip_line = False
        self._auth = None
        self._end_login()

    # --- AUTH (RFC 4954) ----------------------------------------------------------------------

    def smtp_AUTH(self, arg: str) -> HandlerResult:
        f = self.factory
        if f.portal is None:
            return R.NOT_IMPLEMENTED
        if self.session.helo is None:
            return R.NEED_HELO  # RFC 4954 4: AUTH follows EHLO
        if self.session.authenticated_as is not None:
            return R.ALREADY_AUTHENTICATED  # RFC 4954 4: at most one successful AUTH
        if self._txn is not None:
            return R.AUTH_IN_TRANSACTION  # RFC 4954 4: not during a mail transaction
        name, _, initial = arg.partition(" ")
        if not name or " " in initial:
            return R.AUTH_USAGE
        mechanism = sasl.mechanism(name)
        if mechanism is None:
            return R.AUTH_UNKNOWN_MECHANISM
        allowed = f.policy.check_auth(self.session)
        if not allowed.accepted:
            return allowed.reply  # 538 5.7.11 before TLS (RFC 4954 6)
        if f.throttle is not None and f.throttle.refused(self.session.client_address):
            # RFC 4954 6 leaves it to the server; we stop guessing before any password is read.
            return R.AUTH_TOO_MANY_FAILURES
        self._auth = mechanism
        if initial:
            # RFC 4954 4: the initial response, "=" for an empty one.
            return self._auth_response(initial.encode("ascii", "replace"), answer=False)
        return self._auth_step(None)

    def _auth_response(self, line: bytes, *, answer: bool = True) -> HandlerResult:
        """One client response (a line of the command loop, or the initial response)."""
        if line == b"*":
            self._auth = None  # RFC 4954 4: the client cancels
            return self._answer(R.AUTH_CANCELLED, answer)
        try:
            data = sasl.decode_response(line)
        except sasl.SASLError:
            self._auth = None
            return self._answer(R.AUTH_BAD_BASE64, answer)
        return self._answer(self._auth_step(data), answer)

    def _answer(self, result: HandlerResult, answer: bool) -> HandlerResult:
        if answer:
            self._respond(result)
            return None
        return result

    def _auth_step(self, data: bytes | None) -> HandlerResult:
        mechanism = self._auth
        assert mechanism is not None
        try:
            result = mechanism.step(data)
        except sasl.SASLError:
            self._auth = None
            return R.AUTH_MALFORMED
        if isinstance(result, bytes):
            # RFC 4954 4: "334 " and the base64 challenge; RFC 3463 has no class-3 codes.
            return Reply(334, None, sasl.encode_challenge(result))
        self._auth = None
        return self._authenticate(result, mechanism.name)

    def _authenticate(self, credentials: sasl.SASLCredentials, mechanism: str) -> HandlerResult:
        f = self.factory
        client = self.session.client_address
        # RFC 4616 2: we let nobody act as another user; a failed login like any other.
        refuse = not credentials.acts_as_itself()
        if refuse:
            self._log.info(
                "AUTH {mechanism} from {client}: authorization identity refused",
                mechanism=mechanism,
                client=client,
            )
        # Cancelled in connectionLost; a check already running is still counted (mailhub.login).
        d = self._auth_delay = guarded_login(
            f.portal, f.throttle, f.clock, client, credentials.authcid, credentials.password,
            refuse=refuse,
        )  # fmt: skip
        return d.addCallbacks(self._auth_result, self._auth_cancelled, callbackArgs=(mechanism,))

    def _auth_result(self, result: LoginResult, mechanism: str) -> Reply:
        self._auth_delay = None
        client = self.session.client_address
        if result.outcome is Outcome.REFUSED:
            return R.AUTH_TOO_MANY_FAILURES
        if result.outcome is Outcome.UNAVAILABLE:
            return R.AUTH_TEMPORARY  # RFC 4954 6: 454 4.7.0 (busy: nothing was checked)
        if result.outcome is Outcome.FAILED:
            self._log.info(
                "AUTH {mechanism} failed from {client}",
                event="auth_failed",
                mechanism=mechanism,
                client=client,
            )
            return R.AUTH_TOO_MANY_FAILURES if result.disconnect else R.AUTH_FAILED
        assert result.login is not None
        _interface, user, logout = result.login
        if self._closing:
            logout()
            return R.AUTH_OK  # nobody is listening
        self.session.authenticated_as = user.address
        self._logout = logout
        if self._slot is not None:
            self.factory.connection_count.logged_in(self._slot)
        self._log.info(
            "authenticated {user} from {client} with {mechanism}",
            event="auth",
            user=user.address,
            client=client,
            mechanism=mechanism,
        )
        return R.AUTH_OK

    def _auth_cancelled(self, failure: Failure) -> Reply:
        failure.trap(CancelledError)  # the client went away while we waited
        self._auth_delay = None
        return R.AUTH_FAILED

    def _end_login(self) -> None:
        logout, self._logout = self._logout, None
        if callable(logout):
            logout()

    # --- transaction and message ------------------------------------------------------------

    def _reset_transaction(self) -> None:
        txn, self._txn = self._txn, None
        if txn is not None and txn.message is not None:
            message, txn.message = txn.message, None
            message.abort()
        self._tail = b""

    def _describe_tls(self) -> str:
        try:
            conn = self.transport.getHandle()
            version = conn.get_protocol_version_name()
            cipher = conn.get_cipher_name()
        except Exception:
            return "TLS"
        if version and cipher:
            return f"{version} with cipher {cipher}"
        return "TLS"

    def _open_message(self, txn: _Transaction) -> Reply | None:
        f = self.factory
        session = self.session
        if self._tls_active:
            session.tls = self._describe_tls()
        authenticated = session.authenticated_as is not None
        envelope = Envelope(
            queue_id=f.new_queue_id(),
            mail_from=txn.sender.written if txn.sender is not None else "",
            recipients=list(txn.recipients),
            helo=session.helo or "",
            client_address=session.client_address,
            client_port=session.client_port,
            client_name=session.client_name,
            server_name=f.hostname,
            protocol=protocol_keyword(
                esmtp=session.esmtp,
                tls=self._tls_active,
                authenticated=authenticated,
                smtputf8=txn.smtputf8,
            ),
            body_type=txn.body_type,
            smtputf8=txn.smtputf8,
            declared_size=txn.declared_size,
            tls=session.tls if self._tls_active else None,
            authenticated_as=session.authenticated_as,
            received_at=f.clock.seconds(),
        )
        txn.envelope = envelope
        try:
            message = f.sink.open(envelope)
        except DeliveryError as e:
            reply = R.delivery_error(e)
            self._log_message(txn, reply, reason=str(e))
            return reply
        txn.message = message
        try:
            auth_header = f.smtp_config.received_auth_header
            message.write(received_header(envelope, authenticated_sender=auth_header))
        except DeliveryError as e:
            self._reset_transaction()
            reply = R.delivery_error(e)
            self._log_message(txn, reply, reason=str(e))
            return reply
        return None

    def _fail(self, txn: _Transaction, reply: Reply) -> None:
        """Reject the message in progress; the rest of its data is read and dropped."""
        if txn.failed is None:
            txn.failed = reply
        if txn.message is not None:
            message, txn.message = txn.message, None
            message.abort()

    def _content(self, region: bytes) -> None:
        """Check and store message content; ``region`` ends at a line end (or the message end)."""
        txn = self._txn
        if txn is None or txn.failed is not None:
            return
        if not txn.binary:
            # Bare CR or LF (RFC 5321 2.3.8): the SMTP smuggling class. Counting is cheap and
            # exact because a region never ends between the CR and LF of a pair.
            crlf = region.count(b"\r\n")
            if crlf != region.count(b"\n") or crlf != region.count(b"\r"):
                if not self._normalise:
                    self._fail(txn, R.BARE_LINE_ENDING)
                    return
                region = (
                    region.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
                )
            if len(region) > self._max_line and has_long_line(region, self._max_line):
                self._fail(txn, R.DATA_LINE_TOO_LONG)
                return
        txn.size += len(region)
        if txn.size > self._max_size:
            self._fail(txn, R.SIZE_EXCEEDED)
            return
        try:
            txn.message.write(region)
        except DeliveryError as e:
            self._fail(txn, R.delivery_error(e))
        except Exception:
            self._log.failure("Unexpected error writing message data")
            self._fail(txn, R.INTERNAL_ERROR)

    # --- DATA (RFC 5321 4.1.1.4) -------------------------------------------------------------

    def _step_data(self) -> bool:
        buf, pos = self._buf, self._pos
        n = len(buf)
        if pos >= n:
            return False
        # Only <CRLF>.<CRLF> ends the data; bare CR or LF never does (RFC 5321 4.1.1.4).
        if self._bol and buf.startswith(b".\r\n", pos):
            end, after = pos, pos + 3
        else:
            i = buf.find(b"\r\n.\r\n", pos)
            if i < 0:
                self._data_partial(buf, pos, n)
                return False
            end, after = i + 2, i + 5
        if end > pos:
            self._data_region(buf[pos:end], self._bol)
        self._pos = after
        self._mode = _COMMAND
        txn, self._txn = self._txn, None  # the transaction ends here, whatever the outcome
        self._respond(self._finish_message(txn))
        return True

    def _data_partial(self, buf: bytes, pos: int, n: int) -> None:
        """No end marker yet: pass on the complete lines, keep the incomplete last one."""
        j = buf.rfind(b"\n", pos)
        if j >= 0:
            cut = j + 1
            bol = self._bol
            # A LF directly after the previous region's LF is bare: not a line start.
            self._bol = j > pos and buf[j - 1] == _CR
            self._pos = cut
            self._data_region(buf if (pos == 0 and cut == n) else buf[pos:cut], bol)
            pos = cut
        if n - pos >= self._max_line:
            # The unfinished line is already too long: keep only what could begin the end
            # marker (it holds no LF, so at most a trailing CR matters).
            txn = self._txn
            if txn is not None:
                self._fail(txn, R.DATA_LINE_TOO_LONG)
            self._pos = n - 4
            self._bol = False

    def _data_region(self, region: bytes, bol: bool) -> None:
        txn = self._txn
        if txn is None or txn.failed is not None:
            return
        # Dot-unstuffing (RFC 5321 4.5.2): one leading "." goes from every line.
        if bol and region[0] == _DOT:
            region = region[1:]
        self._content(region.replace(b"\r\n.", b"\r\n"))

    def _finish_message(self, txn: _Transaction) -> HandlerResult:
        if txn.failed is None and Stage.DATA in self._faults.stages:
            rule = self._fault(
                Stage.DATA,
                sender=txn.sender.written if txn.sender is not None else "",
                recipients=[r.address for r in txn.recipients],
            )
            if rule is not None:
                return self._data_fault(rule, txn)
        if txn.failed is not None:
            self._log_message(txn, txn.failed)
            return txn.failed
        return self._commit(txn)

    def _commit(self, txn: _Transaction) -> Reply | Deferred:
        message, txn.message = txn.message, None
        try:
            d = message.commit()
        except Exception:
            d = fail()
        if not isinstance(d, Deferred):
            d = succeed(d)
        return d.addCallbacks(
            self._committed, self._commit_failed, callbackArgs=(txn,), errbackArgs=(txn,)
        )

    def _committed(self, _result: object, txn: _Transaction) -> Reply:
        reply = R.queued(txn.envelope.queue_id)
        self._log_message(txn, reply)
        return reply

    def _commit_failed(self, failure: Failure, txn: _Transaction) -> Reply:
        if failure.check(DeliveryError):
            reply = R.delivery_error(failure.value)
            self._log_message(txn, reply, reason=str(failure.value))
        else:
            self._log.failure("Unexpected error committing a message", failure)
            reply = R.INTERNAL_ERROR
            self._log_message(txn, reply, reason=failure.getErrorMessage())
        return reply

    # --- BDAT (RFC 3030) ---------------------------------------------------------------------

    def _step_bdat(self) -> bool:
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail <= 0:
            return False
        take = min(avail, self._bdat_remaining)
        chunk = buf if (pos == 0 and take == len(buf)) else buf[pos : pos + take]
        self._pos = pos + take
        self._bdat_remaining -= take
        if self._bdat_error is None:
            self._bdat_content(chunk)
        if self._bdat_remaining:
            return False
        self._mode = _COMMAND
        self._respond(self._end_of_chunk())
        return True

    def _bdat_content(self, chunk: bytes) -> None:
        txn = self._txn
        if txn is None or txn.failed is not None:
            return
        if txn.binary:
            # BINARYMIME: octets are the sender's business, only the size is ours.
            txn.size += len(chunk)
            if txn.size > self._max_size:
                self._fail(txn, R.SIZE_EXCEEDED)
                return
            try:
                txn.message.write(chunk)
            except DeliveryError as e:
                self._fail(txn, R.delivery_error(e))
            return
        # 7BIT/8BITMIME content gets the same line rules as DATA (no dot-stuffing, though):
        # pass on complete lines, hold back the last partial one (a CRLF may span chunks).
        data = self._tail + chunk if self._tail else chunk
        j = data.rfind(b"\n")
        if j >= 0:
            self._tail = data[j + 1 :]
            self._content(data if j + 1 == len(data) else data[: j + 1])
        else:
            self._tail = data
        if len(self._tail) >= self._max_line:
            self._tail = b""
            self._fail(txn, R.DATA_LINE_TOO_LONG)

    def _end_of_chunk(self) -> HandlerResult:
        self._mode = _COMMAND
        error = self._bdat_error
        if error is not None:
            if self._bdat_last and self._txn is not None and self._txn.failed is not None:
                self._reset_transaction()  # the failed transaction ends with its LAST chunk
            return error
        txn = self._txn
        if not self._bdat_last:
            if txn.failed is not None:
                # RFC 3030 2: the client must stop; later chunks are read and refused.
                self._log_message(txn, txn.failed)
                return txn.failed
            return Reply(250, "2.0.0", f"Ok: {self._bdat_size} octets received")
        if self._tail:
            tail, self._tail = self._tail, b""
            self._content(tail)
        self._txn = None
        return self._finish_message(txn)

    # --- fault injection (mailhub.faults) ---------------------------------------------------

    def _fault(
        self,
        stage: Stage,
        *,
        sender: str | None = None,
        recipients: tuple[str, ...] | list[str] = (),
        actions: frozenset[Action] | None = None,
    ) -> Rule | None:
        if actions is None:
            return self._faults.decide(
                stage, sender=sender, recipients=recipients, client=self.session.client_address
            )
        return self._faults.decide(
            stage,
            sender=sender,
            recipients=recipients,
            actions=actions,
            client=self.session.client_address,
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
        self._slow = rule.seconds  # THROTTLE: from this reply on (_respond adds the wait)
        return proceed()

    def _connect_fault(self, rule: Rule, greeting: Reply) -> None:
        if rule.action is Action.DISCONNECT:
            self._drop()
        elif rule.action is Action.REPLY:
            reply = rule.reply
            assert reply is not None
            if reply.code != 421:
                # RFC 5321 3.1: a refused session waits for QUIT; other commands get 503.
                self.commands = self.refused_commands  # type: ignore[misc]
            self._respond(reply)
        else:
            self._respond(self._apply_fault(rule, lambda: greeting))

    def _refused_session(self, arg: str) -> Reply:
        return R.BAD_SEQUENCE

    def _data_fault(self, rule: Rule, txn: _Transaction) -> HandlerResult:
        """A rule firing at the end of the data: the message is refused, dropped or late."""
        action = rule.action
        if action is Action.REPLY:
            assert rule.reply is not None
            self._fail(txn, rule.reply)  # not stored
            self._log_message(txn, rule.reply, reason="fault injected")
            return rule.reply
        if action is Action.DISCONNECT:
            self._log_message(txn, None, outcome="aborted", reason="fault injected: disconnect")
            self._fail(txn, R.INTERNAL_ERROR)  # aborts the message; no reply is sent
            self._drop()
            return None
        if action is Action.DELAY:

            def gone() -> None:
                self._log_message(txn, None, outcome="aborted")
                self._fail(txn, R.INTERNAL_ERROR)

            return self._delayed(rule.seconds, lambda: self._finish_after_fault(txn), gone)
        self._slow = rule.seconds  # THROTTLE
        return self._finish_after_fault(txn)

    def _finish_after_fault(self, txn: _Transaction) -> Reply | Deferred:
        if txn.failed is not None:
            self._log_message(txn, txn.failed)
            return txn.failed
        return self._commit(txn)

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
        self.transport.loseConnection()

    # --- logging ----------------------------------------------------------------------------

    def _log_message(
        self,
        txn: _Transaction,
        reply: Reply | None,
        *,
        outcome: str | None = None,
        reason: str = "",
    ) -> None:
        """The one log line per message: accepted, rejected or aborted."""
        if outcome is None:
            outcome = "accepted" if reply is not None and reply.code < 400 else "rejected"
        envelope = txn.envelope
        queue_id = envelope.queue_id if envelope is not None else None
        client = self.session.client_address
        mail_from = txn.sender.written if txn.sender is not None else ""
        recipients = [r.address for r in txn.recipients]
        code = reply.code if reply is not None else None
        enhanced = reply.enhanced if reply is not None else None
        reason = reason or (reply.lines[-1] if reply is not None else "connection lost")
        # The line is rendered here with an f-string: observers (twistd's file log) then format
        # one field instead of ten with string.Formatter, which cost ~25 us per message.
        self._log.info(
            "{log_text}",
            log_text=f"{outcome} queue_id={queue_id} client={client} from=<{mail_from}> "
            f"to={recipients} size={txn.size} reply={code} {enhanced} {reason}",
            event="message",
            outcome=outcome,
            queue_id=queue_id,
            client=client,
            mail_from=mail_from,
            recipients=recipients,
            size=txn.size,
            code=code,
            enhanced=enhanced,
            reason=reason,
        )


def _parameter_error(e: ParameterError) -> Reply:
    if e.duplicate:
        return R.DUPLICATE_PARAMETER
    return Reply(501, "5.5.4", f"Error: {e}")


def _then(result, callback, *args) -> Reply | Deferred:
    """Apply ``callback`` now for a plain result, or when a Deferred result fires."""
    if isinstance(result, Deferred):
        return result.addCallback(callback, *args)
    return callback(result, *args)
