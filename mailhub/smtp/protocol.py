"""The ESMTP receiver: parser and state machine on a plain ``Protocol``.

Input is processed strictly one command at a time from a buffer (RFC 2920 4: replies in command
order; ``mailhub.inputpump``). A handler returns a ``Reply``, a Deferred firing with one (policy
lookups, the sink's commit), or None when it answered itself. While a Deferred is outstanding
nothing more is parsed; input is only buffered, and past a bound the transport is paused.

This module keeps the session: connection state, command dispatch and replies. Message data is
read by ``mailhub.smtp.data`` (DATA and BDAT), the AUTH exchange is ``mailhub.smtp.auth``, a mail
transaction and its log line are ``mailhub.smtp.transaction``.

Each stage of a session goes through one method a subclass may wrap: ``greet``, ``ehlo``/``helo``,
``check_sender``, ``check_recipient``, ``start_tls``, ``end_of_data``, and ``respond`` for every
reply (``mailhub.faults.smtp`` applies fault rules this way; this module knows nothing of them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from mailhub import sasl
from mailhub.addresses import (
    AddressError,
    Mailbox,
    ParameterError,
    UsageError,
    parse_mail_from,
    parse_rcpt_to,
)
from mailhub.connlimit import Slot
from mailhub.envelope import Recipient
from mailhub.inputpump import TOO_LONG, InputPump
from mailhub.net import close_now, write_now
from mailhub.smtp import replies as R
from mailhub.smtp.auth import SMTPAuth
from mailhub.smtp.data import (
    ChunkReader,
    ContentWriter,
    DataReader,
    commit_message,
    open_message,
)
from mailhub.smtp.policy import Decision
from mailhub.smtp.replies import Reply
from mailhub.smtp.session import Session
from mailhub.smtp.transaction import Transaction, log_message
from mailhub.tls import HandshakeDeadline

if TYPE_CHECKING:
    from mailhub.smtp.factory import SMTPServerFactory

_COMMAND, _DATA, _BDAT = 0, 1, 2

# Input buffered while a reply is pending before the transport is paused. Pipelined commands
# are small; this bounds what a client can make us hold (RFC 2920 leaves it to the server).
MAX_PENDING_INPUT = 256 * 1024

HandlerResult = Reply | Deferred | None

_VERBS = "HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY EXPN HELP STARTTLS AUTH"


class SMTPServerProtocol(InputPump, Protocol, TimeoutMixin, HandshakeDeadline):
    """One SMTP session (RFC 5321) with PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
    ENHANCEDSTATUSCODES, CHUNKING and BINARYMIME; STARTTLS when the factory has a context.

    Extension points: ``commands`` maps verbs to handler methods (``smtp_<VERB>(arg)``), and
    ``ehlo_keywords`` builds the EHLO list; AUTH plugs into both and sets
    ``session.authenticated_as``. ``_restart_session`` is what STARTTLS uses to forget all.
    The stage methods named in the module docstring are the seams for a subclass.
    """

    factory: SMTPServerFactory
    max_pending_input = MAX_PENDING_INPUT

    commands: ClassVar[dict[bytes, str]] = {
        verb.encode(): f"smtp_{verb}" for verb in _VERBS.split()
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
        self._slot: Slot | None = None  # the factory counted this connection
        self._errors = 0
        self._txn: Transaction | None = None
        self._tls_active = False
        self._held: list[bytes] = []  # replies to pipelined commands, written together
        self.session = Session("")

    # --- connection -------------------------------------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        self._log = f.log
        self._limits = f.limits
        self._max_line = f.limits.max_line_length
        self._max_size = f.limits.max_message_size
        # The readers of message data (DATA, BDAT) and the AUTH exchange of this session.
        writer = ContentWriter(
            self._max_line,
            self._max_size,
            f.smtp_config.bare_line_endings != "reject",
            self._log,
        )
        self._data = DataReader(writer)
        self._chunks = ChunkReader(writer)
        self._auth = SMTPAuth(f, self._log, self._logged_in)
        # TimeoutMixin uses the injected clock (its callLater is a method meant to be replaced).
        self.callLater = f.clock.callLater  # type: ignore[method-assign,assignment]
        peer = self.transport.getPeer()
        self.session = Session(str(getattr(peer, "host", "")), int(getattr(peer, "port", 0) or 0))
        if ISSLTransport.providedBy(self.transport):
            self.tls_handshake_started()  # implicit TLS: even a refusal waits for it
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
        self.greet()

    def greet(self) -> None:
        """The 220 greeting (RFC 5321 3.1)."""
        self._send(self.factory.greeting.wire)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closing = True
        self.setTimeout(None)
        self.stop_handshake_deadline()
        self._auth.connection_lost()
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
        self._send(reply.wire, last=True)
        self._closing = True
        self.setTimeout(None)
        txn = self._txn
        if txn is not None and txn.message is not None:
            self._log_message(txn, reply, outcome="aborted")
        self._reset_transaction()
        self.close_transport(self.factory.clock)

    # --- input (the loop is InputPump's; _step is below) -------------------------------------

    def _send(self, wire: bytes, last: bool = False) -> None:
        """Write a reply: at once (one send(), ``mailhub.net.write_now``) when no other
        command is waiting to be answered; held while more pipelined commands are buffered,
        so that their replies leave together in one segment (RFC 2920 3.1) -- sent one by one,
        the second small segment would wait for the client's delayed ACK (Nagle, ~40 ms).
        Held replies go out with the next reply written, and at the latest when this turn's
        processing of input ends (``_run``), so none waits for more input. ``last``: the
        connection closes after this reply, nothing is held."""
        if not last and self._running and self._buf.find(b"\n", self._pos) >= 0:
            self._held.append(wire)
            return
        if self._held:
            self._held.append(wire)
            wire = b"".join(self._held)
            self._held = []
        write_now(self.transport, wire)

    def _flush(self) -> None:
        """Write the replies held for a pipelined group (see ``_send``)."""
        if self._held:
            wire = b"".join(self._held)
            self._held = []
            write_now(self.transport, wire)

    def _run(self) -> None:
        if self._running:
            return
        try:
            super()._run()
        finally:
            self._flush()  # this turn's input is processed: its replies go now

    def _input_broken(self) -> None:
        # A bug in the framing code: the byte stream can no longer be trusted.
        self._log.failure(
            "SMTP session state broken for {client}", client=self.session.client_address
        )
        self._shutdown(Reply(421, "4.3.0", "Error: internal server error"))

    # --- replies ----------------------------------------------------------------------------

    def respond(self, result: HandlerResult) -> None:
        """Answer with a handler's result: a Reply now, a Deferred's later, None (answered)."""
        if result is None:
            return
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
        self._send(reply.wire)
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
            elif self._auth.mechanism is not None:
                self.respond(self._auth.response(line))
            else:
                self._dispatch(line)
        return True

    def _bad_line(self, reply: Reply) -> None:
        """A line that cannot be used. Inside an AUTH exchange it ends the exchange."""
        if self._auth.mechanism is not None:
            self._auth.abandon()
            # RFC 4954 4: an over-long response line is 500 5.5.6.
            reply = R.AUTH_LINE_TOO_LONG if reply is R.LINE_TOO_LONG else R.AUTH_MALFORMED
        self.respond(reply)

    def _dispatch(self, line: bytes) -> None:
        verb, _, rest = line.partition(b" ")
        verb = verb.upper()
        name = self.commands.get(verb)
        if name is None:
            if verb in self.not_implemented:
                self.respond(R.NOT_IMPLEMENTED)
            elif verb in self.forbidden:
                self._shutdown(R.FORBIDDEN_COMMAND)
            else:
                self.respond(R.UNRECOGNISED)
            return
        try:
            arg = rest.decode("utf-8").rstrip(" ")
        except UnicodeDecodeError:
            self.respond(R.BAD_ENCODING)
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
        self.respond(result)

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
        if self.starttls_available():
            keywords.append("STARTTLS")  # RFC 3207
        if self._auth_available():
            keywords.append("AUTH " + " ".join(sasl.MECHANISMS))  # RFC 4954 3
        keywords.append("HELP")
        return keywords

    def starttls_available(self) -> bool:
        """Is STARTTLS offered (RFC 3207 4: not once TLS is on)?"""
        return self.factory.tls_context_factory is not None and not self._tls_active

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
        return self.ehlo(arg)

    def ehlo(self, arg: str) -> HandlerResult:
        """EHLO with a hostname (RFC 5321 4.1.1.1): the extensions."""
        self._reset_transaction()  # RFC 5321 4.1.4: EHLO implies RSET
        self.session.helo = arg.split(" ", 1)[0]
        self.session.esmtp = True
        return Reply(250, None, (self.factory.hostname, *self.ehlo_keywords()))

    def smtp_HELO(self, arg: str) -> HandlerResult:
        if not arg:
            return R.syntax("HELO hostname", None)
        return self.helo(arg)

    def helo(self, arg: str) -> HandlerResult:
        """HELO with a hostname: plain SMTP."""
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
        txn = Transaction(sender)
        error = txn.take_parameters(params, self._max_size)
        if error is not None:
            return error
        return self.check_sender(sender, txn)

    def check_sender(self, sender: Mailbox | None, txn: Transaction) -> HandlerResult:
        """A well-formed MAIL FROM: the policy decides."""
        return _then(
            self.factory.policy.check_sender(self.session, sender), self._mail_decided, txn
        )

    def _mail_decided(self, decision: Decision, txn: Transaction) -> Reply:
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
        return self.check_recipient(rcpt, txn)

    def check_recipient(self, rcpt: Mailbox, txn: Transaction) -> HandlerResult:
        """A well-formed RCPT TO within the limits: the policy decides."""
        return _then(
            self.factory.policy.check_recipient(self.session, rcpt), self._rcpt_decided, txn, rcpt
        )

    def _rcpt_decided(self, decision: Decision, txn: Transaction, rcpt: Mailbox) -> Reply:
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
            return error
        self._mode = _DATA
        self._data.start(txn)
        return R.START_DATA

    def smtp_BDAT(self, arg: str) -> HandlerResult:
        size_text, _, last = arg.partition(" ")
        if (
            not (size_text.isascii() and size_text.isdigit())
            or len(size_text) > 18  # more than an exabyte: nonsense, and int() has limits
            or last.upper() not in ("", "LAST")
        ):
            # We cannot tell how many octets follow, so everything after would be misread.
            self._shutdown(Reply(421, "4.5.0", "Error: BDAT syntax error, closing"))
            return None
        size = int(size_text)
        # From here on the chunk is read even if refused (RFC 3030 2), so the stream stays in
        # step: its octets must never be taken for commands.
        txn = self._txn
        error: Reply | None = None
        first = False
        if txn is None:
            error = R.NEED_MAIL if self.session.helo is not None else R.NEED_HELO
        elif txn.used_bdat and txn.failed is not None:
            error = R.BDAT_TRANSACTION_FAILED
        elif not txn.recipients:
            error = R.NO_VALID_RECIPIENTS
        elif not txn.used_bdat:
            error = self._open_message(txn)
            if error is None:
                txn.used_bdat = first = True
        self._chunks.start(size, bool(last), self._txn, error, first)
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
            self.respond(R.syntax("QUIT"))
            return
        self._send(R.BYE.wire, last=True)
        self._closing = True
        self.setTimeout(None)
        self._reset_transaction()
        # Last: when the 221 went out whole this closes at once, connectionLost included.
        close_now(self.transport)

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
            if (v != b"STARTTLS" or self.starttls_available())
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
        if not self.starttls_available():
            return R.NOT_IMPLEMENTED
        if arg:
            return R.syntax("STARTTLS")
        if self.session.helo is None:
            return R.NEED_HELO
        return self.start_tls()

    def start_tls(self) -> HandlerResult:
        """STARTTLS accepted (RFC 3207 4): 220, then the handshake."""
        self._flush()  # replies to commands before it, in plain text, first
        self.transport.write(R.START_TLS.wire)
        # RFC 3207 4.2 and CVE-2011-0411: anything the client sent after STARTTLS in plain text
        # is dropped, and everything learned before the handshake is forgotten.
        self._discard_input()
        self._restart_session()
        self.transport.startTLS(self.factory.tls_context_factory)
        # The idle timer keeps running: the handshake must finish within it (HandshakeDeadline).
        self.tls_handshake_started()
        self._tls_active = True
        self.session.tls = "TLS"
        return None

    def _restart_session(self) -> None:
        """Forget all session state (after STARTTLS): greeting, transaction, authentication."""
        self._reset_transaction()
        old = self.session
        self.session = Session(old.client_address, old.client_port, old.client_name)
        self._skip_line = False
        self._auth.reset()

    # --- AUTH (RFC 4954) ----------------------------------------------------------------------

    def smtp_AUTH(self, arg: str) -> HandlerResult:
        if self.factory.portal is None:
            return R.NOT_IMPLEMENTED
        if self.session.helo is None:
            return R.NEED_HELO  # RFC 4954 4: AUTH follows EHLO
        if self.session.authenticated_as is not None:
            return R.ALREADY_AUTHENTICATED  # RFC 4954 4: at most one successful AUTH
        if self._txn is not None:
            return R.AUTH_IN_TRANSACTION  # RFC 4954 4: not during a mail transaction
        return self._auth.start(arg, self.session)

    def _logged_in(self, user: str) -> bool:
        """AUTH succeeded for ``user``; False when nobody is listening any more."""
        if self._closing:
            return False
        self.session.authenticated_as = user
        if self._slot is not None:
            self.factory.connection_count.logged_in(self._slot)
        return True

    # --- transaction and message ------------------------------------------------------------

    def _reset_transaction(self) -> None:
        txn, self._txn = self._txn, None
        if txn is not None:
            txn.abort()
        self._data.txn = None
        self._chunks.reset()

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

    def _open_message(self, txn: Transaction) -> Reply | None:
        """Open the message in the sink (DATA, first BDAT); the reply if that failed."""
        if self._tls_active:
            self.session.tls = self._describe_tls()
        error = open_message(self.factory, self.session, txn, self._tls_active, self._log)
        if error is not None:
            self._reset_transaction()
        return error

    # --- DATA (RFC 5321 4.1.1.4) and BDAT (RFC 3030): mailhub.smtp.data reads them ----------

    def _step_data(self) -> bool:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            return False
        self._pos, ended = self._data.read(buf, pos)
        if not ended:
            self._wait_for_sink()
            return False
        self._mode = _COMMAND
        txn, self._txn = self._txn, None  # the transaction ends here, whatever the outcome
        # DATA mode starts with a transaction; only closing drops it, and that stops the input.
        assert txn is not None
        self.respond(self.end_of_data(txn))
        return True

    def _wait_for_sink(self) -> None:
        """Flow control: while the message's sink is behind with its disk writes, read no more
        (InputPump pauses the transport past max_pending_input), so memory stays bounded."""
        txn = self._txn
        if txn is None or txn.message is None:
            return
        wait = txn.message.ready()
        if wait is not None:
            self.setTimeout(None)  # we are the slow side, not the client
            self._await(wait)

    def end_of_data(self, txn: Transaction) -> HandlerResult:
        """The whole message is in (DATA's end marker, BDAT LAST): the reply owed, or commit."""
        if txn.failed is not None:
            self._log_message(txn, txn.failed)
            return txn.failed
        return commit_message(txn, self._log, self.session.client_address)

    def _step_bdat(self) -> bool:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            return False
        self._pos, complete = self._chunks.read(buf, pos)
        if not complete:
            self._wait_for_sink()
            return False
        self._mode = _COMMAND
        self.respond(self._end_of_chunk())
        if not self._waiting:  # the next chunk (pipelined, RFC 3030 4) waits for the sink too
            self._wait_for_sink()
        return True

    def _end_of_chunk(self) -> HandlerResult:
        self._mode = _COMMAND
        chunks = self._chunks
        error = chunks.error
        if error is not None:
            if chunks.last and self._txn is not None and self._txn.failed is not None:
                self._reset_transaction()  # the failed transaction ends with its LAST chunk
            return error
        txn = self._txn
        # A chunk without an error was started in a transaction (smtp_BDAT), and the transaction
        # ends only at its LAST chunk or on closing, which stops the input.
        assert txn is not None
        if not chunks.last:
            if txn.failed is not None:
                # RFC 3030 2: the client must stop; later chunks are read and refused.
                self._log_message(txn, txn.failed)
                return txn.failed
            return Reply(250, "2.0.0", f"Ok: {chunks.size} octets received")
        chunks.flush()
        self._txn = None
        chunks.reset()
        return self.end_of_data(txn)

    def _log_message(self, txn: Transaction, reply: Reply | None, **how: str) -> None:
        """The one log line per message (``outcome``, ``reason``: see ``log_message``)."""
        log_message(self._log, self.session.client_address, txn, reply, **how)


def _parameter_error(e: ParameterError) -> Reply:
    if e.duplicate:
        return R.DUPLICATE_PARAMETER
    return Reply(501, "5.5.4", f"Error: {e}")


def _then(
    result: Decision | Deferred[Decision], callback: Callable[..., Reply], *args: object
) -> Reply | Deferred:
    """Apply ``callback`` now for a plain result, or when a Deferred result fires."""
    if isinstance(result, Deferred):
        return result.addCallback(callback, *args)
    return callback(result, *args)
