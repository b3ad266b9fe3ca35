"""An ESMTP client: one connection, one or more transactions, a result per recipient.

Not Twisted's ``ESMTPSender``: it cannot report per-recipient results and aborts when an
opportunistic STARTTLS fails (see ``docs``/twisted-mail-notes). This one is written as
coroutines over a small reply reader, so the dialogue reads top to bottom:

    open:     220 greeting -> EHLO (HELO if EHLO gets 5xx) -> [STARTTLS -> EHLO] -> [AUTH]
    deliver:  MAIL, RCPT..., DATA (one write with PIPELINING) -> body (dot-stuffed, streamed)
              (RSET first on a session that waited idle, RFC 5321 4.1.1.5; pipelined too)
    quit:     QUIT

The courier keeps open sessions for the next message to the same host (mailhub.relay.pool):
one TLS handshake for many messages.

What it decides itself, before sending anything (RFC references beside each rule):
- SIZE: a message larger than the peer's declared limit is not offered: permanent 5.3.4.
- 8BITMIME: an 8-bit body to a peer without 8BITMIME is a permanent 5.6.3 failure. RFC 6152 3
  allows converting it to 7 bit instead; we do not rewrite messages (that would break DKIM
  signatures), and a retry would meet the same peer, so temporary would only delay the bounce.
- BINARYMIME needs BINARYMIME and CHUNKING (RFC 3030); sent as one ``BDAT n LAST``; else 5.6.3.
- SMTPUTF8: a non-ASCII address needs the peer's SMTPUTF8 (RFC 6531 3.2): else permanent 5.6.7,
  for the sender (every recipient) or only for the non-ASCII recipients. A message whose only
  UTF-8 is in its headers goes to such a peer unchanged (as Postfix does).

Replies: 2xx accepted, 4xx temporary, 5xx permanent, per recipient (RCPT) and for all accepted
recipients (DATA). A timeout or a lost connection is temporary for every recipient without a
final answer yet. Timeouts per stage follow RFC 5321 4.5.3.2 and run on an injected clock.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhub.interfaces import AttemptResult, Outcome
from mailhub.net import IStreamTransport
from mailhub.relay.tlsclient import (
    OpportunisticTLS,
    TLSPolicy,
    TLSSessionCache,
    describe,
    verifying_creator,
)

MAX_REPLY_LINE = 4096  # longer than RFC 5321 4.5.3.1.5's 512; a peer sending more is broken
MAX_REPLY_LINES = 200

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s|$)")


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for each reply. Defaults: RFC 5321 4.5.3.2."""

    greeting: float = 300  # 4.5.3.2.1 initial 220
    command: float = 300  # EHLO, STARTTLS, AUTH, RSET: not in the RFC; as MAIL
    mail: float = 300  # 4.5.3.2.2
    rcpt: float = 300  # 4.5.3.2.3
    data_init: float = 120  # 4.5.3.2.4 (354)
    data_block: float = 180  # 4.5.3.2.5: each chunk of the body must leave within this
    data_final: float = 600  # 4.5.3.2.6 (reply to the final ".")
    quit: float = 30  # 221 after QUIT; we have our answers, so not long


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines).strip()

    @property
    def status(self) -> str:
        """The enhanced status code (RFC 3463) if the reply has one of its class, else x.0.0."""
        m = _ENHANCED.match(self.lines[0] if self.lines else "")
        if m and m.group(1) == str(self.code)[0]:
            return f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
        return f"{str(self.code)[0]}.0.0"

    @property
    def diagnostic(self) -> str:
        """RFC 3464 2.3.6 Diagnostic-Code value, e.g. "smtp; 550 5.1.1 <b@x>: user unknown"."""
        return f"smtp; {self.code} {self.text}".rstrip()

    @property
    def outcome(self) -> Outcome:
        if 200 <= self.code < 300:
            return Outcome.DELIVERED
        return Outcome.PERMANENT if 500 <= self.code < 600 else Outcome.TEMPORARY


@dataclass(frozen=True)
class Message:
    """What one session delivers: the queue item's fields the dialogue needs."""

    mail_from: str  # "" is the null reverse-path
    recipients: tuple[str, ...]
    open_body: Callable[[], BinaryIO]  # CRLF line ends, not dot-stuffed
    size: int
    body_type: str = "7BIT"
    smtputf8: bool = False


@dataclass(frozen=True)
class SessionOptions:
    helo_name: str
    tls: TLSPolicy = TLSPolicy.OPPORTUNISTIC
    tls_hostname: str = ""  # the name the certificate must match (the MX host name)
    ca_certificates: list[Any] | None = None  # None: the platform's trust store
    plaintext: bool = False  # the fallback attempt after a failed handshake: no STARTTLS
    implicit_tls: bool = False  # the transport is TLS from the start (smarthost on 465)
    auth: tuple[str, str] | None = None  # (user, password): AUTH after TLS, never without
    tls_sessions: TLSSessionCache | None = None  # opportunistic TLS: resume sessions from here
    timeouts: Timeouts = field(default_factory=Timeouts)


@dataclass
class SessionResult:
    """``results`` has a final answer for every recipient once the peer answered MAIL (or we
    decided without asking, e.g. SIZE). Before that, ``results`` is None and the courier tries
    the next address; ``tls_failed`` says the failure was the TLS handshake (so an opportunistic
    attempt may be repeated in plain text). ``untouched``: the session failed before the peer
    answered MAIL (lost, or RSET refused): nothing of the message was sent, so it is safe to
    repeat on a new connection. ``transaction``: 1 for the first on its connection, 2 for the
    next... ``reply``: the peer's final reply to the message (for the log)."""

    results: list[AttemptResult] | None
    status: str = "4.4.1"
    diagnostic: str = ""
    tls: str = "none"
    tls_failed: bool = False
    untouched: bool = False
    transaction: int = 0
    reply: str = ""


class _Lost(Exception):
    """The connection ended (or timed out) while we waited at ``stage``."""

    def __init__(self, stage: str, why: str, timed_out: bool = False) -> None:
        super().__init__(f"{why} (at {stage})")
        self.stage, self.why, self.timed_out = stage, why, timed_out


class _Stop(Exception):
    def __init__(self, result: SessionResult) -> None:
        super().__init__(result.diagnostic)
        self.result = result


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


class DotStuffer:
    """Transforms a CRLF body into SMTP DATA form chunk by chunk (RFC 5321 4.5.2: a line that
    starts with "." gets another one), however the chunks split the lines."""

    def __init__(self) -> None:
        self.at_line_start = True
        self.tail = b""  # the last two bytes seen, to know whether the body ended with CRLF

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:
            return chunk
        out = chunk.replace(b"\n.", b"\n..")
        if self.at_line_start and chunk[:1] == b".":
            out = b"." + out
        self.at_line_start = chunk.endswith(b"\n")
        self.tail = (self.tail + chunk)[-2:]
        return out

    def end(self) -> bytes:
        """The end-of-data indicator, with a CRLF first if the body lacked a final one."""
        if self.tail in (b"", b"\r\n"):  # an empty body, or one ending with CRLF
            return b".\r\n"
        return b"\r\n.\r\n"


@implementer(IHandshakeListener)
class SMTPClientProtocol(Protocol):
    """One connection to one peer, carrying one or more transactions.

    ``ready`` fires once the session is open (greeting, EHLO, STARTTLS, AUTH): with None when
    transactions may begin, or with a SessionResult saying why not (then only after the
    connection has closed). Then ``deliver`` runs one transaction at a time (``reset``: RSET
    first, for a session that waited idle); ``quit`` ends the session.
    Nothing here fails: problems become SessionResults.
    """

    transport: IStreamTransport  # set by connectionMade, before anything below runs

    def __init__(
        self,
        options: SessionOptions,
        *,
        remote: str,
        clock: IReactorTime,
        log: Logger | None = None,
    ) -> None:
        self.options = options
        self.remote = remote  # "mx.example.org [192.0.2.1]"
        self.clock = clock
        self.log = log if log is not None else Logger(namespace="mailhub.relay")
        self.t = options.timeouts
        self.ready: Deferred[SessionResult | None] = Deferred()
        self.sent: list[bytes] = []  # each command write (AUTH hidden), for logs and tests
        self.extensions: dict[str, str] = {}
        self.tls = "none"
        self.transactions = 0  # begun on this connection
        self.connected_at = clock.seconds()
        self.idle = False  # waiting in a pool: any data from the peer now ends the session
        self._buffer = b""
        self._partial: list[str] = []
        self._replies: deque[Reply] = deque()
        self._waiter: Deferred[Reply] | None = None
        self._lost: str | None = None
        self._closing = False  # we closed (loseConnection)
        self._quit_sent = False
        self._goodbye = False  # the peer said 421 or spoke while idle: no more transactions
        self._tls_creator: Any = None
        self._block_timer: Any = None
        self._closed = False
        self._close_waiters: list[Deferred[None]] = []
        self._sender: FileSender | None = None

    # --- connection events --------------------------------------------------------------

    def connectionMade(self) -> None:
        # SMTP is request/response with small writes (".\r\n", QUIT after the body): with
        # Nagle's algorithm each waits for the peer's delayed ACK, ~40 ms a message (measured).
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            set_nodelay(True)
        d = Deferred.fromCoroutine(self._open())
        d.addErrback(self._internal_error)
        d.addCallback(self._opened)

    def handshakeCompleted(self) -> None:
        pass  # the reply to the EHLO sent after STARTTLS tells us the same, in order

    def dataReceived(self, data: bytes) -> None:
        if self.idle:
            # Nothing is pending while idle: this is most likely "421 idle timeout" before the
            # peer closes (RFC 5321 4.5.3.2.7). The session cannot be trusted for more.
            self._goodbye = True
            self._lost = f"the peer spoke while idle: {data[:80]!r}"
            self._close()
            return
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    self._broken("reply line too long")
                return
            line, self._buffer = self._buffer[:end].rstrip(b"\r"), self._buffer[end + 1 :]
            if not self._line(line):
                return

    def _line(self, raw: bytes) -> bool:
        text = raw.decode("utf-8", "replace")
        code, sep = text[:3], text[3:4]
        if not (code.isdigit() and code[0] in "12345" and sep in ("", " ", "-")):
            self._broken(f"malformed reply {text[:80]!r}")
            return False
        self._partial.append(text[4:])
        if sep == "-":  # RFC 5321 4.2.1: a multiline reply continues
            if len(self._partial) > MAX_REPLY_LINES:
                self._broken("reply with too many lines")
                return False
            return True
        reply = Reply(int(code), tuple(self._partial))
        self._partial = []
        if reply.code == 421:  # RFC 5321 3.8: the peer is closing the transmission channel
            self._goodbye = True
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.callback(reply)
        else:
            self._replies.append(reply)
        return True

    def _broken(self, why: str) -> None:
        self._lost = f"protocol error: {why}"
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closed = True
        if self._lost is None:
            self._lost = _describe_loss(reason)
        self._stop_block_timer()
        if self._sender is not None:  # the transport should have stopped it; make sure
            self._sender.stopProducing()
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.errback(_Lost("", self._lost))
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(None)

    # --- state --------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Open, in step with the peer (no reply outstanding) and not told to go away."""
        gone = self._closed or self._closing or self._quit_sent or self._goodbye
        return not gone and self._lost is None and not self._replies

    def when_closed(self) -> Deferred[None]:
        if self._closed:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._close_waiters.append(d)
        return d

    # --- reading and writing ------------------------------------------------------------

    async def _read(self, stage: str, timeout: float) -> Reply:
        if self._replies:
            return self._replies.popleft()
        if self._lost is not None:
            raise _Lost(stage, self._lost)

        def cancel(d: Deferred[Reply]) -> None:
            if self._waiter is d:
                self._waiter = None

        waiter: Deferred[Reply] = Deferred(cancel)
        self._waiter = waiter
        waiter.addTimeout(timeout, self.clock)
        try:
            return await waiter
        except defer.TimeoutError:
            why = f"no reply to {stage} within {timeout:g} seconds"
            self._lost = why
            self.transport.abortConnection()
            raise _Lost(stage, why, timed_out=True) from None
        except _Lost as e:
            raise _Lost(stage, e.why) from None

    def _send(self, *commands: str, shown: str | None = None) -> None:
        """Write commands in one segment (several = a pipelined group, RFC 2920 3.1)."""
        data = "".join(f"{c}\r\n" for c in commands).encode("utf-8")
        self.sent.append(shown.encode() if shown is not None else data)
        self.transport.write(data)

    async def _command(self, command: str, stage: str, timeout: float, **kw: Any) -> Reply:
        self._send(command, **kw)
        return await self._read(stage, timeout)

    # --- opening the session ------------------------------------------------------------

    async def _open(self) -> SessionResult | None:
        try:
            await self._session()
        except _Stop as stop:
            return stop.result
        except _Lost as e:
            return self._no_answer(
                "4.4.2", f"connection to {self.remote} failed at {e.stage}: {e.why}"
            )
        return None

    def _opened(self, failed: SessionResult | None) -> None:
        if failed is None:
            self.ready.callback(None)
            return
        failed.tls = self.tls
        self._close()
        self.when_closed().addCallback(lambda _: self.ready.callback(failed))

    def _no_answer(self, status: str, text: str, *, tls_failed: bool = False) -> SessionResult:
        return SessionResult(None, status, f"X-mailhub; {text}", self.tls, tls_failed)

    def _refused(self, reply: Reply, stage: str) -> _Stop:
        """A reply that ends this session before the transaction: try another host."""
        return _Stop(SessionResult(None, reply.status, reply.diagnostic, self.tls))

    async def _session(self) -> None:
        greeting = await self._read("greeting", self.t.greeting)
        if greeting.code != 220:  # RFC 5321 3.1: 554 (or 421) instead of a greeting
            await self._quit()
            raise self._refused(greeting, "greeting")
        if self.options.implicit_tls:
            self.tls = describe(self.transport.getHandle()) + " verified"
        await self._hello()
        opts = self.options
        if not opts.implicit_tls and opts.tls is not TLSPolicy.NONE and not opts.plaintext:
            if "STARTTLS" in self.extensions:
                await self._starttls()
            elif opts.tls is TLSPolicy.VERIFY:
                await self._quit()
                # RFC 3463 4.7.4 (RFC 5248): security features not supported
                raise _Stop(self._no_answer("4.7.4", f"{self.remote} does not offer STARTTLS"))
        if opts.auth is not None:
            await self._authenticate()

    async def _hello(self) -> None:
        reply = await self._command(f"EHLO {self.options.helo_name}", "EHLO", self.t.command)
        if reply.code == 250:
            self.extensions = _extensions(reply)
            return
        if 500 <= reply.code < 600:  # RFC 5321 3.2: an old server; fall back to HELO
            reply = await self._command(f"HELO {self.options.helo_name}", "HELO", self.t.command)
            if reply.code == 250:
                self.extensions = {}
                return
        await self._quit()
        raise self._refused(reply, "EHLO")

    async def _starttls(self) -> None:
        opts = self.options
        reply = await self._command("STARTTLS", "STARTTLS", self.t.command)
        if reply.code != 220:
            if opts.tls is TLSPolicy.VERIFY:
                await self._quit()
                raise self._refused(reply, "STARTTLS")
            self.log.info(
                "STARTTLS refused by {remote} ({reply}); continuing without TLS",
                remote=self.remote,
                reply=reply.diagnostic,
            )
            return
        cache, peer = opts.tls_sessions, self._peer_key()
        if opts.tls is TLSPolicy.VERIFY:
            self._tls_creator = verifying_creator(opts.tls_hostname, opts.ca_certificates)
        else:
            resume = cache.get(peer) if cache is not None else None
            self._tls_creator = OpportunisticTLS(opts.tls_hostname, opts.ca_certificates, resume)
        self.transport.startTLS(self._tls_creator)  # RFC 3207 4.2: forget what EHLO said
        self.extensions = {}
        try:
            await self._hello()  # the first bytes after the handshake
        except _Lost as e:
            if cache is not None:
                cache.forget(peer)  # in case the offered session was the trouble
            raise _Stop(
                self._no_answer("4.7.5", f"TLS with {self.remote} failed: {e.why}", tls_failed=True)
            ) from None
        handle = cast(SSL.Connection, self.transport.getHandle())  # TLS is on now
        if isinstance(self._tls_creator, OpportunisticTLS):
            problem = self._tls_creator.verification(handle)
            self.tls = describe(handle) + (
                " verified" if problem is None else f" unverified ({problem})"
            )
            if self._tls_creator.resumed:
                self.tls += " resumed"
            if cache is not None:
                # After the EHLO reply: a TLS 1.3 server's tickets came before it.
                cache.put(peer, handle.get_session(), problem)
        else:
            self.tls = describe(handle) + " verified"

    def _peer_key(self) -> tuple[str, str, int]:
        """Whose TLS sessions may be resumed here: the name we check and the address."""
        peer = self.transport.getPeer()
        return (self.options.tls_hostname, getattr(peer, "host", ""), getattr(peer, "port", 0))

    async def _authenticate(self) -> None:
        """RFC 4954: PLAIN (RFC 4616) if offered, else LOGIN. Only over TLS."""
        assert self.options.auth is not None  # called only with credentials configured
        user, password = self.options.auth
        if self.tls == "none" and self.options.tls is not TLSPolicy.NONE:
            # Only a smarthost configured with tls = "none" gets a password in plain text.
            await self._quit()
            raise _Stop(
                self._no_answer("4.7.4", f"no TLS with {self.remote}: not sending a password")
            )
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms:
            response = _b64(f"\0{user}\0{password}")
            reply = await self._command(
                f"AUTH PLAIN {response}", "AUTH", self.t.command, shown="AUTH PLAIN ***\r\n"
            )
        elif "LOGIN" in mechanisms:
            reply = await self._command("AUTH LOGIN", "AUTH", self.t.command)
            for secret in (user, password):
                if reply.code != 334:
                    break
                reply = await self._command(_b64(secret), "AUTH", self.t.command, shown="***\r\n")
        else:
            await self._quit()
            raise _Stop(self._no_answer("4.7.4", f"{self.remote} offers no AUTH PLAIN or LOGIN"))
        if reply.code != 235:
            # Wrong credentials are the operator's to fix: temporary, so no mail bounces.
            await self._quit()
            raise self._refused(reply, "AUTH")

    # --- transactions -------------------------------------------------------------------

    async def deliver(self, message: Message, *, reset: bool = False) -> SessionResult:
        """One transaction (MAIL, RCPT..., DATA) on the open session. The session stays open
        for the next one (``usable`` says whether it can take one). ``reset``: begin with RSET
        (RFC 5321 4.1.1.5), for a session that waited idle: its reply shows the peer is still
        there and in step; with PIPELINING it travels in the same group as MAIL (RFC 2920 3.1
        allows RSET anywhere in a group), so checking costs no round trip."""
        self.idle = False
        self.transactions += 1
        try:
            result = await self._transaction(message, reset)
        except Exception:
            self.log.failure("relay transaction with {remote} failed", remote=self.remote)
            self._lost = "internal error"
            self.transport.abortConnection()
            result = self._no_answer("4.3.0", f"internal error talking to {self.remote}")
        result.tls = self.tls
        result.transaction = self.transactions
        return result

    async def quit(self) -> None:
        """End the session (QUIT, RFC 5321 4.1.1.10) and wait until the connection closed."""
        self.idle = False
        await self._quit()
        self._close()
        await self.when_closed()

    async def _transaction(self, msg: Message, reset: bool) -> SessionResult:
        ext = self.extensions
        results: dict[str, AttemptResult] = {}

        def final(rcpt: str, outcome: Outcome, status: str, diagnostic: str) -> None:
            if outcome is Outcome.DELIVERED:
                diagnostic = ""  # AttemptResult: "" when delivered (the reply is logged)
            results[rcpt] = AttemptResult(rcpt, outcome, diagnostic, status, self.remote)

        def everyone(outcome: Outcome, status: str, diagnostic: str) -> SessionResult:
            for rcpt in msg.recipients:
                if rcpt not in results:
                    final(rcpt, outcome, status, diagnostic)
            return SessionResult([results[r] for r in msg.recipients], tls=self.tls)

        def refuse_all(status: str, text: str) -> SessionResult:
            return everyone(Outcome.PERMANENT, status, f"X-mailhub; {text}")

        params: list[str] = []
        if "SIZE" in ext:  # RFC 1870 4: the peer's fixed maximum, 0 = none
            limit = _int(ext["SIZE"])
            if limit and msg.size > limit:
                return refuse_all(
                    "5.3.4",
                    f"message size {msg.size} exceeds the limit of {limit} of {self.remote}",
                )
            params.append(f"SIZE={msg.size}")
        bdat = False
        body_type = msg.body_type.upper()
        if body_type == "8BITMIME":  # RFC 6152 3
            if "8BITMIME" not in ext:
                return refuse_all("5.6.3", f"{self.remote} does not accept 8-bit messages")
            params.append("BODY=8BITMIME")
        elif body_type == "BINARYMIME":  # RFC 3030 3
            if "BINARYMIME" not in ext or "CHUNKING" not in ext:
                return refuse_all(
                    "5.6.3", f"{self.remote} does not accept binary messages (BINARYMIME)"
                )
            params.append("BODY=BINARYMIME")
            bdat = True
        utf8_addresses = not msg.mail_from.isascii() or not all(r.isascii() for r in msg.recipients)
        if "SMTPUTF8" in ext and (msg.smtputf8 or utf8_addresses):
            params.append("SMTPUTF8")  # RFC 6531 3.4
        elif not msg.mail_from.isascii():  # RFC 6531 3.2
            return refuse_all(
                "5.6.7", f"{self.remote} does not support SMTPUTF8 (non-ASCII sender address)"
            )
        candidates = []
        for rcpt in msg.recipients:
            if not rcpt.isascii() and "SMTPUTF8" not in ext:
                final(
                    rcpt,
                    Outcome.PERMANENT,
                    "5.6.7",
                    f"X-mailhub; {self.remote} does not support SMTPUTF8 (non-ASCII address)",
                )
            else:
                candidates.append(rcpt)
        if not candidates:
            return everyone(Outcome.PERMANENT, "5.6.7", "")

        mail = " ".join([f"MAIL FROM:<{msg.mail_from}>", *params])
        rcpts = [f"RCPT TO:<{r}>" for r in candidates]
        accepted: list[str] = []
        mail_reply: Reply | None = None
        try:
            if "PIPELINING" in ext:  # RFC 2920 3.1: MAIL, RCPTs and DATA as one group
                self._send(*(["RSET"] if reset else []), mail, *rcpts, *([] if bdat else ["DATA"]))
                reset_reply = await self._read("RSET", self.t.command) if reset else None
                mail_reply = await self._read("MAIL", self.t.mail)
                rcpt_replies = [await self._read("RCPT", self.t.rcpt) for _ in candidates]
                data_reply = None if bdat else await self._read("DATA", self.t.data_init)
                if reset_reply is not None and reset_reply.code != 250:
                    # Out of step with the peer: the transaction must not complete. In DATA
                    # mode only closing without the final "." ends it (RFC 5321 4.1.1.4).
                    if data_reply is not None and data_reply.code == 354:
                        self._lost = "RSET refused"
                        self.transport.abortConnection()
                    return self._reset_refused(reset_reply)
            else:
                if reset:
                    reset_reply = await self._command("RSET", "RSET", self.t.command)
                    if reset_reply.code != 250:
                        return self._reset_refused(reset_reply)
                mail_reply = await self._command(mail, "MAIL", self.t.mail)
                rcpt_replies = []
                if mail_reply.code == 250:
                    for command in rcpts:
                        rcpt_replies.append(await self._command(command, "RCPT", self.t.rcpt))
                data_reply = None
            if mail_reply.code != 250:
                return everyone(mail_reply.outcome, mail_reply.status, mail_reply.diagnostic)
            for rcpt, reply in zip(candidates, rcpt_replies, strict=True):
                if reply.outcome is Outcome.DELIVERED:
                    accepted.append(rcpt)
                else:
                    final(rcpt, reply.outcome, reply.status, reply.diagnostic)
            if not accepted:
                if data_reply is not None and data_reply.code == 354:
                    # A server that says 354 with no recipient (RFC 2920 3.1 says it must
                    # not): an empty message ends it; nobody receives it.
                    self._send(".")
                    await self._read("DATA", self.t.data_final)
                return everyone(Outcome.TEMPORARY, "4.0.0", "")
            if bdat:
                reply = await self._send_bdat(msg)
            else:
                if data_reply is None:
                    data_reply = await self._command("DATA", "DATA", self.t.data_init)
                if data_reply.code != 354:
                    return everyone(data_reply.outcome, data_reply.status, data_reply.diagnostic)
                reply = await self._send_body(msg)
        except _Lost as e:
            # RFC 5321 6.1: without the final reply the message may or may not have arrived;
            # retrying may duplicate it, which is better than losing it.
            diagnostic = f"X-mailhub; connection to {self.remote} lost at {e.stage}: {e.why}"
            result = everyone(Outcome.TEMPORARY, "4.4.2", diagnostic)
            # Not one reply to this transaction: nothing of it can have been delivered.
            result.untouched = mail_reply is None
            return result
        result = everyone(reply.outcome, reply.status, reply.diagnostic)
        result.reply = reply.diagnostic  # the courier logs it (e.g. "queued as ...")
        return result

    def _reset_refused(self, reply: Reply) -> SessionResult:
        self._goodbye = True  # never used again; the courier closes it
        result = SessionResult(None, _temporary_status(reply), f"RSET refused: {reply.diagnostic}")
        result.untouched = True
        return result

    async def _stream(self, msg: Message, transform: Callable[[bytes], bytes]) -> None:
        """Send the body from its file, in chunks, honouring the transport's flow control."""
        try:
            body = msg.open_body()
        except OSError as e:
            self._lost = f"cannot read the queued message: {e}"
            self.transport.abortConnection()
            raise _Lost("DATA", self._lost) from None

        def chunk(data: bytes) -> bytes:
            self._restart_block_timer()
            return transform(data)

        self._sender = FileSender()
        try:
            self._restart_block_timer()
            await self._sender.beginFileTransfer(body, self.transport, chunk)
        except Exception:
            raise _Lost("DATA", self._lost or "connection lost while sending the message") from None
        finally:
            self._sender = None
            self._stop_block_timer()
            body.close()

    async def _send_body(self, msg: Message) -> Reply:
        stuffer = DotStuffer()
        await self._stream(msg, stuffer)
        self.transport.write(stuffer.end())
        return await self._read("end of data", self.t.data_final)

    async def _send_bdat(self, msg: Message) -> Reply:
        size = msg.size
        try:
            with msg.open_body() as f:
                f.seek(0, 2)
                size = f.tell()
        except OSError:
            pass  # _stream reports it
        self._send(f"BDAT {size} LAST")  # RFC 3030 2: one chunk, the whole message
        await self._stream(msg, lambda data: data)
        return await self._read("BDAT", self.t.data_final)

    def _restart_block_timer(self) -> None:
        if self._block_timer is not None and self._block_timer.active():
            self._block_timer.reset(self.t.data_block)
        else:
            self._block_timer = self.clock.callLater(self.t.data_block, self._block_timeout)

    def _stop_block_timer(self) -> None:
        if self._block_timer is not None and self._block_timer.active():
            self._block_timer.cancel()
        self._block_timer = None

    def _block_timeout(self) -> None:
        self._block_timer = None
        self._lost = f"the peer took no data for {self.t.data_block:g} seconds"
        self.transport.abortConnection()

    async def _quit(self) -> None:
        """Send QUIT and wait for 221 (or the close) before closing (RFC 5321 4.1.1.10)."""
        if self._lost is not None or self._closing or self._quit_sent:
            return
        self._quit_sent = True
        try:
            self._send("QUIT")
            for _ in range(3):  # a late reply to something else first, at most
                if (await self._read("QUIT", self.t.quit)).code == 221:
                    break
        except _Lost:
            pass

    def abort(self, why: str) -> None:
        """Drop the connection now (no QUIT)."""
        if not self._closed:
            if self._lost is None:
                self._lost = why
            self.transport.abortConnection()

    def _close(self) -> None:
        if not (self._closed or self._closing):
            self._closing = True
            self.transport.loseConnection()

    # --- the end ------------------------------------------------------------------------

    def _internal_error(self, failure: Failure) -> SessionResult:
        self.log.failure("relay session with {remote} failed", failure, remote=self.remote)
        self._lost = "internal error"
        self.transport.abortConnection()
        return self._no_answer("4.3.0", f"internal error talking to {self.remote}")


def _temporary_status(reply: Reply) -> str:
    status = reply.status
    return status if status.startswith("4.") else "4" + status[1:]


def _extensions(reply: Reply) -> dict[str, str]:
    """EHLO keywords (RFC 5321 4.1.1.1): upper-case keyword -> its parameters."""
    found: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            found[keyword.upper()] = params.strip()
    return found


def _int(text: str) -> int:
    try:
        return int(text.split()[0]) if text.strip() else 0
    except ValueError:
        return 0


def _describe_loss(reason: Failure | None) -> str:
    if reason is None:
        return "connection closed"
    error = reason.value
    text = str(error) or type(error).__name__
    if reason.check(defer.CancelledError):
        return "cancelled"
    return f"{type(error).__name__}: {text}" if "Connection" not in type(error).__name__ else text
