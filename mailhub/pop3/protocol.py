"""The POP3 server session (RFC 1939) with CAPA (RFC 2449), STLS (RFC 2595), AUTH (RFC 5034)
and the response codes of RFC 2449 8 and RFC 3206.

Input is handled strictly one command at a time from a buffer (RFC 2449 6.6 PIPELINING: the
client may send many commands at once; replies come in order; ``mailhub.inputpump``). A handler
returns the reply bytes, None when it answered itself, or a Deferred (a login being checked, a
big message being streamed) while which nothing more is parsed: input is only buffered, and past
a bound the transport is paused. The same holds while the transport's write buffer is full (the
session is its push producer): a client that pipelines RETRs without reading the answers cannot
make the server hold their replies in memory.

States (RFC 1939 3): AUTHORIZATION until a login succeeds and the maildrop is locked, then
TRANSACTION. UPDATE happens inside QUIT: only there are messages removed (``Maildrop.commit``);
a connection that ends any other way removes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from mailhub import sasl
from mailhub.connlimit import Slot
from mailhub.inputpump import TOO_LONG, FlowControlledInputPump
from mailhub.login import LoginResult, Outcome, guarded_login
from mailhub.net import IStreamTransport, write_now
from mailhub.pop3.lock import MailboxBusy
from mailhub.pop3.maildrop import Entry, Maildrop, NoSuchMessage, unique_id
from mailhub.pop3.sender import (
    TERMINATOR,
    WHOLE_MESSAGE_LIMIT,
    MessageProducer,
    TopReader,
    whole_message,
)
from mailhub.store import MessageGone
from mailhub.store.errors import LockTimeout
from mailhub.store.lockwait import retry_busy
from mailhub.tls import HandshakeDeadline

if TYPE_CHECKING:
    from mailhub.pop3.factory import POP3ServerFactory

# RFC 2449 4: "command lines ... MUST NOT exceed 255 octets, including the terminating CRLF".
MAX_COMMAND_LINE = 255
# RFC 5034 4 lets SASL responses be longer than command lines; PLAIN with three 255-octet
# fields is about 1 KiB of base64. Anything longer is refused as too long.
MAX_SASL_LINE = 4096
# Pipelined input buffered while a reply is pending, before the transport is paused.
MAX_PENDING_INPUT = 64 * 1024

_AUTHORIZATION, _TRANSACTION = "AUTHORIZATION", "TRANSACTION"

Result = bytes | Deferred | None


def ok(text: str = "") -> bytes:
    return b"+OK " + text.encode("utf-8") + b"\r\n" if text else b"+OK\r\n"


def err(text: str) -> bytes:
    return b"-ERR " + text.encode("utf-8") + b"\r\n"


def _printable(data: bytes, limit: int = 20) -> str:
    """A piece of client input fit to quote in a reply: short, no control characters."""
    text = data[:limit].decode("ascii", "replace")
    return "".join(ch if ch.isascii() and ch.isprintable() else "?" for ch in text)


# Fixed replies.
TOO_MANY_CONNECTIONS = err("[SYS/TEMP] Too many connections, try again later")
TIMEOUT = err("Disconnected for inactivity")
EVICTED = err("[SYS/TEMP] Too many connections, closing the oldest session not logged in")
TOO_MANY_ERRORS = err("Too many bad commands, closing")
LINE_TOO_LONG = err(f"Command line too long (at most {MAX_COMMAND_LINE} octets with CRLF)")
NOT_UTF8 = err("Command is not UTF-8")
INTERNAL_ERROR = err("[SYS/TEMP] Internal server error")
# RFC 3206 4: [AUTH] says the credentials (or their use here) are the problem.
PLAINTEXT_REFUSED = err("[AUTH] Plaintext authentication is not allowed without TLS; use STLS")
AUTH_FAILED = err("[AUTH] Authentication failed")
# RFC 3206 4: [SYS/TEMP] means try again later; the throttle refuses this client for a while.
TOO_MANY_FAILURES = err("[SYS/TEMP] Too many failed logins, try again later")
AUTH_UNAVAILABLE = err("[SYS/TEMP] Cannot check credentials now, try again later")
# RFC 2449 8.1.2: the maildrop is locked by another session.
IN_USE = err("[IN-USE] Mailbox is in use by another POP3 session")
MAILBOX_UNAVAILABLE = err("[SYS/TEMP] Cannot open the mailbox now, try again later")
AUTH_CANCELLED = err("Authentication cancelled")
AUTH_BAD_BASE64 = err("Authentication response is not valid base64")
AUTH_MALFORMED = err("Authentication response is malformed")
AUTH_LINE_TOO_LONG = err(f"Authentication response too long (at most {MAX_SASL_LINE} octets)")


class POP3ServerProtocol(FlowControlledInputPump, Protocol, TimeoutMixin, HandshakeDeadline):
    """One POP3 session. ``commands`` maps each state's verbs to ``pop3_<VERB>(arg)``."""

    factory: POP3ServerFactory
    transport: IStreamTransport  # set by connectionMade, before anything below runs
    max_pending_input = MAX_PENDING_INPUT

    commands: ClassVar[dict[str, dict[bytes, str]]] = {
        _AUTHORIZATION: {
            v.encode(): f"pop3_{v}" for v in ("USER", "PASS", "AUTH", "STLS", "CAPA", "QUIT")
        },
        _TRANSACTION: {
            v.encode(): f"pop3_{v}"
            for v in (
                "STAT",
                "LIST",
                "RETR",
                "DELE",
                "NOOP",
                "RSET",
                "QUIT",
                "TOP",
                "UIDL",
                "CAPA",
            )
        },
    }
    # Known to POP3 but not offered: a clear answer instead of "unknown command".
    not_supported: ClassVar[frozenset[bytes]] = frozenset({b"APOP", b"UTF8", b"LANG"})

    def __init__(self) -> None:
        super().__init__()
        self._slot: Slot | None = None  # the factory counted this connection
        self._errors = 0
        self._state = _AUTHORIZATION
        self._tls_active = False
        self._user: bytes | None = None  # from USER, waiting for PASS
        self._sasl: sasl.Mechanism | None = None  # an AUTH exchange waiting for a response
        self._auth_delay: Deferred | None = None  # the throttle's delay before -ERR
        self._maildrop: Maildrop | None = None
        self._logout: object = None
        self._streaming = False  # a RETR/TOP producer is sending: idle means no progress
        self.client_address = ""

    # --- connection -------------------------------------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        self._log = f.log
        # TimeoutMixin uses the injected clock (ignore: mypy sees TimeoutMixin.callLater as a
        # method with an untyped signature, so replacing it per instance is flagged).
        self.callLater = f.clock.callLater  # type: ignore[method-assign,assignment]
        peer = self.transport.getPeer()
        self.client_address = str(getattr(peer, "host", ""))
        if ISSLTransport.providedBy(self.transport):
            self.tls_handshake_started()  # implicit TLS: even a refusal waits for it
        self._slot = f.connection_opened(self.client_address, self)
        if self._slot is None:
            self._log.info("refused connection from {client}", client=self.client_address)
            self._shutdown(TOO_MANY_CONNECTIONS)
            return
        # An implicit-TLS listener (pop3s) hands us a transport that is already TLS.
        self._tls_active = ISSLTransport.providedBy(self.transport)
        self.setTimeout(self._idle_timeout())
        self.transport.write(ok(f"{f.hostname} POP3 server ready"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closing = True
        self.setTimeout(None)
        self.stop_handshake_deadline()
        delay, self._auth_delay = self._auth_delay, None
        if delay is not None:
            delay.cancel()
        # No UPDATE: RFC 1939 6 removes messages only after QUIT.
        self._end_session()
        slot, self._slot = self._slot, None
        if slot is not None:
            self.factory.connection_closed(slot)

    def _idle_timeout(self) -> float:
        """RFC 1939 3's autologout timer, or the stress timeout (mailhub.connlimit)."""
        f = self.factory
        return f.connection_count.idle_timeout(self._slot, f.limits.pop3_idle_timeout)

    def under_stress(self) -> None:
        """The listener is under stress and this session has not logged in: cut its timer."""
        short = self._idle_timeout()
        if not self._closing and self.timeOut is not None and self.timeOut > short:
            self.setTimeout(short)

    def evict(self) -> None:
        """The listener needs this session's place (it is the oldest not logged in)."""
        self._log.info("closing {client} to make room", client=self.client_address)
        self._shutdown(EVICTED)

    def timeoutConnection(self) -> None:
        # RFC 1939 3: the autologout timer closes the session without entering UPDATE.
        self._log.info("idle timeout for {client}", client=self.client_address)
        if self._streaming:
            # The client stopped reading a message: nothing more can reach it, and waiting for
            # our buffers to drain would hold the lock and the connection slot forever.
            self._closing = True
            self.transport.abortConnection()
            return
        self._shutdown(TIMEOUT)

    def _shutdown(self, reply: bytes) -> None:
        if self._closing:
            return
        self.transport.write(reply)
        self._closing = True
        self.setTimeout(None)
        self._unregister_producer()
        self.close_transport(self.factory.clock)

    def _end_session(self) -> None:
        """Release the maildrop lock and the login (without UPDATE)."""
        maildrop, self._maildrop = self._maildrop, None
        if maildrop is not None:
            maildrop.close()
        logout, self._logout = self._logout, None
        if callable(logout):
            logout()

    # --- input (the loop and the output flow control are FlowControlledInputPump's) ----------

    def _input_broken(self) -> None:
        self._log.failure("POP3 session state broken for {client}", client=self.client_address)
        self._shutdown(INTERNAL_ERROR)

    def _step(self) -> bool:
        """Handle one line if a whole one is buffered; False when more input is needed."""
        line = self._take_line(MAX_SASL_LINE if self._sasl is not None else MAX_COMMAND_LINE)
        if line is None:
            return False
        if line is TOO_LONG:
            self._too_long()
            return True
        # RFC 1939 3 says CRLF; a bare LF is taken too (it is unambiguous, and some clients
        # send it).
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._sasl is not None:
            self._respond(self._auth_response(line))
        else:
            self._dispatch(line)
        return True

    def _too_long(self) -> None:
        if self._sasl is not None:
            self._sasl = None
            self._respond(AUTH_LINE_TOO_LONG)
        else:
            self._bad(LINE_TOO_LONG)

    def _dispatch(self, line: bytes) -> None:
        verb, _, rest = line.partition(b" ")
        verb = verb.upper()
        name = self.commands[self._state].get(verb)
        if name is None:
            if verb in self.not_supported:
                self._bad(err(f"{verb.decode()} is not supported"))
            elif any(verb in table for table in self.commands.values()):
                when = "before login" if self._state == _AUTHORIZATION else "after login"
                self._bad(err(f"{verb.decode()} is not allowed {when}"))
            else:
                self._bad(err(f"Unknown command {_printable(verb)!r}"))
            return
        try:
            arg = rest.decode("utf-8")
        except UnicodeDecodeError:
            self._bad(NOT_UTF8)
            return
        try:
            result = getattr(self, name)(arg)
        except Exception:
            self._log.failure(
                "Unexpected error in {verb} from {client}",
                verb=verb.decode("ascii", "replace"),
                client=self.client_address,
            )
            result = INTERNAL_ERROR
        self._respond(result)

    # --- replies ----------------------------------------------------------------------------

    def _bad(self, reply: bytes) -> None:
        """A command error: answered, counted, and the session ends after too many."""
        self.transport.write(reply)
        self._errors += 1
        if self._errors >= self.factory.limits.max_errors:
            self._log.info("too many errors from {client}", client=self.client_address)
            self._shutdown(TOO_MANY_ERRORS)

    def _respond(self, result: Result) -> None:
        if result is None:
            return
        if isinstance(result, Deferred):
            if not self._streaming:
                self.setTimeout(None)  # we are working, the client is not idle
            self._await(result)
        else:
            write_now(self.transport, result)  # one send(), no turn of the reactor

    def _unexpected_failure(self, failure: Failure) -> bytes:
        self._log.failure(
            "Unexpected error answering {client}", failure, client=self.client_address
        )
        return INTERNAL_ERROR

    def _reply_failed(self, failure: Failure) -> None:
        self._log.failure("Error sending a POP3 reply", failure)
        self._shutdown(INTERNAL_ERROR)

    def _late_reply(self, reply: bytes | None) -> None:
        self._streaming = False
        if reply is not None:
            write_now(self.transport, reply)
        self.setTimeout(self._idle_timeout())

    # --- AUTHORIZATION state ----------------------------------------------------------------

    def capabilities(self) -> list[str]:
        """RFC 2449 6: what this session offers now (it changes with STLS and login)."""
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self._state == _AUTHORIZATION:
            if self._login_allowed():
                caps.append("USER")  # RFC 2449 6.3
                caps.append("SASL " + " ".join(sasl.MECHANISMS))  # RFC 5034 5
            if self._stls_available():
                caps.append("STLS")  # RFC 2595 4
        caps.append("IMPLEMENTATION mailhub")
        return caps

    def _login_allowed(self) -> bool:
        return self._tls_active or self.factory.plaintext_login_allowed(self.client_address)

    def _stls_available(self) -> bool:
        return self.factory.tls_context_factory is not None and not self._tls_active

    def pop3_CAPA(self, arg: str) -> bytes:
        lines = "".join(f"{c}\r\n" for c in self.capabilities())
        return ok("Capability list follows") + lines.encode() + b".\r\n"

    def pop3_STLS(self, arg: str) -> Result:
        if self._tls_active:
            self._error("TLS is already active")
            return None
        if self.factory.tls_context_factory is None:
            self._error("STLS is not available on this listener")
            return None
        if arg:
            self._error("Usage: STLS")
            return None
        self.transport.write(ok("Begin TLS negotiation"))
        # RFC 2595 4 and CVE-2011-0411: whatever the client sent after STLS in plain text is
        # dropped, and a half-done USER is forgotten.
        self._discard_input()
        self._user = None
        self.transport.startTLS(self.factory.tls_context_factory)
        # The idle timer keeps running: the handshake must finish within it (HandshakeDeadline).
        self.tls_handshake_started()
        self._tls_active = True
        return None

    def pop3_USER(self, arg: str) -> Result:
        if not self._login_allowed():
            return PLAINTEXT_REFUSED
        if not arg or " " in arg.strip():
            self._user = None
            self._error("Usage: USER name")
            return None
        self._user = arg.strip().encode("utf-8")
        return ok("Send your password")

    def pop3_PASS(self, arg: str) -> Result:
        user, self._user = self._user, None
        if user is None:
            self._error("Send USER first")
            return None
        if not self._login_allowed():
            return PLAINTEXT_REFUSED
        if not arg:
            self._error("Usage: PASS password")
            return None
        # RFC 1939 7: the password is the rest of the line, spaces included.
        return self._login(user, arg.encode("utf-8"), "USER")

    def pop3_AUTH(self, arg: str) -> Result:
        self._user = None
        if not arg:
            # RFC 1734's form, still used by clients to probe: the mechanisms, one a line.
            names = "".join(f"{m}\r\n" for m in sasl.MECHANISMS)
            return ok("Supported mechanisms follow") + names.encode() + b".\r\n"
        if not self._login_allowed():
            return PLAINTEXT_REFUSED
        name, _, initial = arg.partition(" ")
        if " " in initial:
            self._error("Usage: AUTH mechanism [initial-response]")
            return None
        mechanism = sasl.mechanism(name)
        if mechanism is None:
            self._error(f"Unknown authentication mechanism {name[:20]!r}")
            return None
        if self._refuse_throttled():
            return None
        self._sasl = mechanism
        if initial:
            # RFC 5034 4: the initial response, "=" for an empty one.
            return self._auth_response(initial.encode("ascii", "replace"))
        return self._auth_step(None)

    def _auth_response(self, line: bytes) -> Result:
        if line == b"*":
            self._sasl = None  # RFC 5034 4: the client cancels
            return AUTH_CANCELLED
        try:
            data = sasl.decode_response(line)
        except sasl.SASLError:
            self._sasl = None
            return AUTH_BAD_BASE64
        return self._auth_step(data)

    def _auth_step(self, data: bytes | None) -> Result:
        mechanism = self._sasl
        assert mechanism is not None
        try:
            result = mechanism.step(data)
        except sasl.SASLError:
            self._sasl = None
            return AUTH_MALFORMED
        if isinstance(result, bytes):
            # RFC 5034 4: a continuation is "+ " and the base64 challenge.
            return b"+ " + sasl.encode_challenge(result).encode("ascii") + b"\r\n"
        self._sasl = None
        refuse = not result.acts_as_itself()
        if refuse:
            # RFC 4616 2: nobody may act as another user; a failed login like any other.
            self._log.info(
                "AUTH from {client}: authorization identity refused", client=self.client_address
            )
        return self._login(result.authcid, result.password, f"AUTH {mechanism.name}",
                           refuse=refuse)  # fmt: skip

    # --- login ------------------------------------------------------------------------------

    def _refuse_throttled(self) -> bool:
        """Too many failures from this address: refuse before any password is read."""
        throttle = self.factory.throttle
        if throttle is not None and throttle.refused(self.client_address):
            self._shutdown(TOO_MANY_FAILURES)
            return True
        return False

    def _login(self, username: bytes, password: bytes, how: str, *, refuse: bool = False) -> Result:
        f = self.factory
        # Cancelled in connectionLost; a check already running is still counted (mailhub.login).
        d = self._auth_delay = guarded_login(
            f.portal, f.throttle, f.clock, self.client_address, username, password, refuse=refuse
        )
        return d.addCallbacks(self._login_result, self._login_cancelled, callbackArgs=(how,))

    def _login_cancelled(self, failure: Failure) -> None:
        failure.trap(CancelledError)  # the client went away while we waited
        self._auth_delay = None

    def _login_result(self, result: LoginResult, how: str) -> Result:
        self._auth_delay = None
        if result.outcome is Outcome.REFUSED:
            self._shutdown(TOO_MANY_FAILURES)
            return None
        if result.outcome is Outcome.UNAVAILABLE:
            return AUTH_UNAVAILABLE  # RFC 3206 4: [SYS/TEMP] (busy: nothing was checked)
        if result.outcome is Outcome.FAILED:
            self._log.info(
                "POP3 {how} failed from {client}",
                event="auth_failed",
                how=how,
                client=self.client_address,
            )
            if result.disconnect:
                self._shutdown(TOO_MANY_FAILURES)
                return None
            return AUTH_FAILED
        assert result.login is not None
        _interface, user, logout = result.login
        if self._closing:
            logout()
            return None
        if self._slot is not None:
            self.factory.connection_count.logged_in(self._slot)
        return Deferred.fromCoroutine(self._open_maildrop(user, logout, how))

    async def _open_maildrop(self, user: Any, logout: Callable[[], None], how: str) -> Result:
        f = self.factory
        try:
            # A folder lock held by another session or process is waited for on reactor
            # timers, never on the reactor (mailhub.store.lockwait).
            maildrop = await retry_busy(
                f.clock, f.store.settings.lock_timeout, lambda: f.open_maildrop(user.address)
            )
        except MailboxBusy:
            logout()
            self._log.info(
                "POP3 login of {user} from {client}: mailbox in use",
                user=user.address,
                client=self.client_address,
            )
            return IN_USE
        except LockTimeout as e:
            logout()
            self._log.warn("cannot open the maildrop of {user}: {error}", user=user.address,
                           error=str(e))  # fmt: skip
            return MAILBOX_UNAVAILABLE
        except Exception:
            logout()
            self._log.failure("cannot open the maildrop of {user}", user=user.address)
            return MAILBOX_UNAVAILABLE
        if self._closing:  # the client left while we waited
            maildrop.close()
            logout()
            return None
        self._maildrop, self._logout = maildrop, logout
        self._state = _TRANSACTION
        count, size = maildrop.stat()
        self._log.info(
            "POP3 login {user} from {client} ({how}): {count} messages",
            event="login",
            user=user.address,
            client=self.client_address,
            how=how,
            count=count,
        )
        return ok(f"Logged in, {count} messages ({size} octets)")

    # --- TRANSACTION state ------------------------------------------------------------------

    def _error(self, text: str) -> None:
        self._bad(err(text))

    @property
    def _drop(self) -> Maildrop:
        """The maildrop; the commands that use it run only in the TRANSACTION state."""
        assert self._maildrop is not None
        return self._maildrop

    def _entry(self, arg: str) -> Entry | None:
        """The message one argument names; None after answering -ERR."""
        assert self._maildrop is not None
        try:
            return self._maildrop.get(arg)
        except NoSuchMessage as e:
            self._error(str(e).capitalize())
            return None

    def _args(self, arg: str, usage: str, least: int, most: int) -> list[str] | None:
        args = arg.split()
        if not least <= len(args) <= most:
            self._error(f"Usage: {usage}")
            return None
        return args

    def pop3_STAT(self, arg: str) -> Result:
        if arg:
            self._error("Usage: STAT")
            return None
        count, size = self._drop.stat()
        return ok(f"{count} {size}")

    def pop3_LIST(self, arg: str) -> Result:
        args = self._args(arg, "LIST [message]", 0, 1)
        if args is None:
            return None
        if args:
            entry = self._entry(args[0])
            return None if entry is None else ok(f"{entry.number} {entry.info.size}")
        count, size = self._drop.stat()
        self._send_listing(ok(f"{count} messages ({size} octets)"), self._drop.listing("LIST"))
        return None

    def pop3_UIDL(self, arg: str) -> Result:
        args = self._args(arg, "UIDL [message]", 0, 1)
        if args is None:
            return None
        if args:
            entry = self._entry(args[0])
            return None if entry is None else ok(f"{entry.number} {unique_id(entry.info.key)}")
        self._send_listing(ok("Unique-ID listing follows"), self._drop.listing("UIDL"))
        return None

    def _send_listing(self, head: bytes, pieces: Iterator[bytes]) -> None:
        """A multi-line LIST or UIDL answer, each piece sent as soon as it is built: the client
        reads (and parses) the first lines while the server builds the rest."""
        for piece in pieces:
            write_now(self.transport, head + piece if head else piece)
            head = b""
        write_now(self.transport, head + TERMINATOR)

    def pop3_DELE(self, arg: str) -> Result:
        args = self._args(arg, "DELE message", 1, 1)
        if args is None:
            return None
        entry = self._entry(args[0])
        if entry is None:
            return None
        self._drop.delete(entry)  # only marked: removed in UPDATE (RFC 1939 6)
        return ok(f"Message {entry.number} deleted")

    def pop3_RSET(self, arg: str) -> Result:
        if arg:
            self._error("Usage: RSET")
            return None
        self._drop.reset()
        count, size = self._drop.stat()
        return ok(f"Maildrop has {count} messages ({size} octets)")

    def pop3_NOOP(self, arg: str) -> Result:
        if arg:
            self._error("Usage: NOOP")
            return None
        return ok()

    def pop3_RETR(self, arg: str) -> Result:
        args = self._args(arg, "RETR message", 1, 1)
        if args is None:
            return None
        entry = self._entry(args[0])
        if entry is None:
            return None
        return self._send(entry, None)

    def pop3_TOP(self, arg: str) -> Result:
        args = self._args(arg, "TOP message lines", 2, 2)
        if args is None:
            return None
        lines_text = args[1]
        if not (lines_text.isascii() and lines_text.isdigit()) or len(lines_text) > 9:
            self._error(f"Invalid number of lines {lines_text[:20]!r}")
            return None
        entry = self._entry(args[0])
        if entry is None:
            return None
        return self._send(entry, int(lines_text))

    def _send(self, entry: Entry, body_lines: int | None) -> Result:
        """RETR (``body_lines`` None) or TOP: the message from disk, dot-stuffed."""
        maildrop = self._drop
        if body_lines is None and entry.info.size <= WHOLE_MESSAGE_LIMIT:
            # The usual message, whole: one read() and one send() (RETR of a 10,000-message
            # maildrop does this 10,000 times; the file object and reactor turn cost more).
            try:
                data = maildrop.read(entry)
            except MessageGone:
                self._error(f"Message {entry.number} was removed by another session")
                return None
            write_now(self.transport, whole_message(data, b"+OK %d octets\r\n" % entry.info.size))
            maildrop.mark_seen(entry)
            return None
        try:
            f = maildrop.open(entry)
        except MessageGone:
            self._error(f"Message {entry.number} was removed by another session")
            return None
        source = f if body_lines is None else TopReader(f, body_lines)
        try:
            first = source.read(WHOLE_MESSAGE_LIMIT + 1)
        except BaseException:
            f.close()
            raise
        if body_lines is None:
            head = ok(f"{entry.info.size} octets")
        else:
            head = ok(f"Top of message {entry.number} follows")
        if len(first) <= WHOLE_MESSAGE_LIMIT:
            f.close()
            write_now(self.transport, whole_message(first, head))
            if body_lines is None:
                maildrop.mark_seen(entry)
            return None
        write_now(self.transport, head)
        # The idle timer keeps running while we send, restarted by every block the client
        # takes: a client that stops reading is cut off after pop3_idle_timeout.
        self._streaming = True
        self._unregister_producer()  # one producer at a time: the message's own, until it is sent
        d = MessageProducer(source, self.transport, first, progress=self.resetTimeout).start()
        if body_lines is None:
            d.addCallback(lambda _: maildrop.mark_seen(entry))
        return d

    def pop3_QUIT(self, arg: str) -> Result:
        maildrop = self._maildrop
        if maildrop is None:
            self._shutdown(ok("Bye"))
            return None
        # RFC 1939 6: the UPDATE state. -ERR if a marked message could not be removed.
        result = maildrop.commit()
        self._log.info(
            "POP3 logout {user} from {client}: {retrieved} retrieved, {deleted} deleted",
            event="logout",
            user=maildrop.address,
            client=self.client_address,
            retrieved=maildrop.retrieved,
            deleted=result.deleted,
        )
        self._end_session()
        if result.failed:
            reply = err("[SYS/TEMP] Some deleted messages could not be removed")
        else:
            reply = ok(f"Logging out, {result.deleted} messages deleted")
        self._shutdown(reply)
        return None
