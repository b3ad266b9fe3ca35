"""The IMAP4rev1 server protocol (RFC 3501) with the extensions real clients use.

IDLE (RFC 2177), NAMESPACE (2342), UIDPLUS (4315), MOVE (6851), UNSELECT (3691), LITERAL+
(7888), ENABLE (5161), ID (2971), CHILDREN (3348), SPECIAL-USE (6154), CONDSTORE and QRESYNC
(7162), APPENDLIMIT (7889), SASL-IR (4959).

QRESYNC keeps no log of expunged UIDs: VANISHED (EARLIER) names every UID of the client's set
that is not in the mailbox, including ones expunged before the client's mod-sequence, which
RFC 7162 3.2.5.1 allows (clients ignore UIDs they do not know).

Structure: ``CommandFramer`` (parser.py) cuts the input into commands; each command runs as a
coroutine (``async def do_*``) and the next one is not even parsed before it has answered, so
pipelined commands are answered strictly in order whatever they wait for (unlike
twisted.mail.imap4, twisted#9282). A command that needs a client line while it runs (IDLE's
DONE, AUTHENTICATE's responses) awaits ``_next_line()``. Message data is streamed with flow
control: the protocol is the transport's push producer while a FETCH writes.

Store calls are blocking but short (one folder, a few syscalls; see mailhub.store) and run on
the reactor thread, like SMTP delivery's.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhub import sasl
from mailhub.auth import IMailUser, PasswordCredentials
from mailhub.imap import commands as C
from mailhub.imap import mime, render
from mailhub.imap.parser import (
    Atom,
    Command,
    CommandFramer,
    Continue,
    Item,
    ParseError,
    Refused,
    SpooledLiteral,
    parse_command,
)
from mailhub.imap.sequence import SequenceSet, compress
from mailhub.imap.view import (
    PERMANENT_FLAGS,
    BadSequence,
    UidValidityChanged,
    View,
    split_flags,
)
from mailhub.store import (
    Folder,
    FolderError,
    FolderExists,
    FolderNotFound,
    InvalidName,
    Mailbox,
    MessageGone,
)
from mailhub.store.names import INBOX, normalise_folder

if TYPE_CHECKING:
    from mailhub.imap.factory import IMAPServerFactory

NOT_AUTHENTICATED, AUTHENTICATED, SELECTED, LOGOUT = "not authenticated", "auth", "selected", "out"
ANY = (NOT_AUTHENTICATED, AUTHENTICATED, SELECTED)
AUTHED = (AUTHENTICATED, SELECTED)

# Pause reading when this much input waits behind a running command.
MAX_PENDING_INPUT = 1024 * 1024
# During IDLE, look for changes this often (seconds): new mail shows within about a second.
IDLE_POLL_INTERVAL = 1.0
# FETCH output is written in pieces of about this size; message files are read in chunks.
FETCH_BATCH = 64 * 1024
FETCH_CHUNK = 64 * 1024
# Whole messages up to this size are read in one piece for FETCH BODY[]; larger ones stream.
FETCH_WHOLE_MAX = 1024 * 1024
# Client identification fields we keep (RFC 2971 3.3: at most 30 pairs, values <= 1024 octets).
ID_MAX_PAIRS = 30


@dataclass(frozen=True)
class Done:
    """The tagged completion of a command."""

    status: str  # OK | NO | BAD
    text: str
    code: str | None = None
    sync: bool = True  # report the selected folder's changes before it

    def line(self, tag: str) -> bytes:
        code = f"[{self.code}] " if self.code else ""
        return f"{tag} {self.status} {code}{self.text}\r\n".encode("utf-8", "surrogateescape")


class _Closing(Exception):
    """The command ended the connection (LOGOUT, BYE): nothing more to answer."""


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class _SearchMailbox:
    """The selected mailbox as search.py's ``SearchMailbox`` sees it: what the view knows, and
    the command's cache passes for headers and structures (one dict look-up when cached)."""

    def __init__(
        self,
        view: View,
        headers: Callable[[int], mime.MessageHeader],
        structure: Callable[[int], mime.MessageStructure],
    ) -> None:
        self.view = view
        self.largest_seq = view.exists
        self.largest_uid = view.uids[-1] if view.uids else 0
        self.gone: set[int] = set()
        self.flags = view.flag_set
        self._headers = headers
        self._structure = structure
        self._seqs: dict[int, int] | None = None

    def seq(self, uid: int) -> int:
        if self._seqs is None:
            self._seqs = {u: n for n, u in enumerate(self.view.uids, 1)}
        return self._seqs[uid]

    def recent(self, uid: int) -> bool:
        return uid in self.view.recent

    def internaldate(self, uid: int) -> int:
        return self.view.infos[uid].internaldate

    def size(self, uid: int) -> int:
        return self.view.infos[uid].size

    def modseq(self, uid: int) -> int:
        return self.view.infos[uid].modseq

    def headers(self, uid: int) -> mime.MessageHeader | None:
        try:
            return self._headers(uid)
        except (MessageGone, FileNotFoundError):  # expunged by another process meanwhile
            self.gone.add(uid)
            return None

    def structure(self, uid: int) -> mime.MessageStructure | None:
        try:
            return self._structure(uid)
        except (MessageGone, FileNotFoundError):
            self.gone.add(uid)
            return None

    def open(self, uid: int) -> Any:
        try:
            return self.view.folder.open_message(uid)
        except (MessageGone, FileNotFoundError):
            self.gone.add(uid)
            return None


def _headers(folder: Folder, uid: int) -> mime.MessageHeader:
    """The top-level header (SEARCH header keys, ENVELOPE): cached apart from the structure,
    as it costs only a read of the header block."""
    return folder.cached(uid, "headers", *_headers_codec(), compute_path=mime.read_header)


def _structure(folder: Folder, uid: int) -> mime.MessageStructure:
    """The MIME structure (BODYSTRUCTURE, sections, SEARCH BODY/TEXT): a parse of the file."""
    return folder.cached(uid, "structure", *_structure_codec())


def _headers_codec() -> tuple[Any, Any, Any]:
    """compute, encode, decode of the cache entry "headers" (looked up per use: tests patch)."""
    return (mime.parse_header, mime.MessageHeader.to_bytes, mime.MessageHeader.from_bytes)


def _structure_codec() -> tuple[Any, Any, Any]:
    """compute, encode, decode of the cache entry "structure" (looked up per use, too)"""
    return (
        mime.parse_structure,
        mime.MessageStructure.to_bytes,
        mime.MessageStructure.from_bytes,
    )


@implementer(IPushProducer)
class IMAPServerProtocol(Protocol, TimeoutMixin):
    """One IMAP connection. Built by ``IMAPServerFactory``."""

    factory: IMAPServerFactory

    def __init__(self) -> None:
        self.state = NOT_AUTHENTICATED
        self.client_address = ""
        self.user: str | None = None
        self.mailbox: Mailbox | None = None
        self.view: View | None = None
        self.condstore = False
        self.qresync = False  # RFC 7162 3.2.3: ENABLE QRESYNC
        self._tls_active = False
        self._counted = False
        self._closing = False
        self._busy = False  # a command is running
        self._processing = False  # inside _process (re-entry only flags more work)
        self._read_paused = False
        self._write_paused = False
        self._drained: Deferred[None] | None = None
        self._line_waiter: Deferred[bytes | Refused] | None = None
        self._running: Deferred[None] | None = None
        self._auth_delay: Deferred[bool] | None = None
        self._logout: Callable[[], None] | None = None
        self._idle_timer: Any = None
        self._framer: CommandFramer | None = None

    # --- connection -----------------------------------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        self.log = f.log
        self.callLater = f.clock.callLater  # TimeoutMixin uses the injected clock
        peer = self.transport.getPeer()
        self.client_address = str(getattr(peer, "host", ""))
        self._framer = CommandFramer(
            max_line=f.limits.imap_max_line_length, max_append=f.limits.max_message_size
        )
        if not f.connection_opened(self.client_address):
            self.log.info("refused connection from {client}: too many", client=self.client_address)
            self._bye("Too many connections, try again later")
            return
        self._counted = True
        self._tls_active = ISSLTransport.providedBy(self.transport)
        self.setTimeout(f.limits.imap_idle_timeout)
        caps = " ".join(self.capabilities())
        self._write(_b(f"* OK [CAPABILITY {caps}] {f.hostname} IMAP4rev1 mailhub ready\r\n"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closing = True
        self.setTimeout(None)
        self._stop_idle_poll()
        for d in (self._auth_delay, self._line_waiter, self._drained, self._running):
            if d is not None and not d.called:
                d.cancel()
        self._auth_delay = self._line_waiter = self._drained = None
        if self._framer is not None:
            self._framer.close()
        self._end_login()
        if self._counted:
            self._counted = False
            self.factory.connection_closed(self.client_address)

    def timeoutConnection(self) -> None:
        # RFC 3501 5.4: autologout after at least 30 minutes of inactivity (configurable).
        self.log.info("idle timeout for {client}", client=self.client_address)
        self._bye("Autologout; idle for too long")

    def _bye(self, text: str) -> None:
        if self._closing:
            return
        self._write(_b(f"* BYE {text}\r\n"))
        self._closing = True
        self.setTimeout(None)
        self._stop_idle_poll()
        self.transport.loseConnection()

    def _write(self, data: bytes) -> None:
        self.transport.write(data)

    def _write_all(self, lines: list[bytes]) -> None:
        """Untagged updates (thousands after a big expunge) in one write."""
        if lines:
            self.transport.write(b"".join(lines))

    # --- flow control (IPushProducer, registered while a FETCH streams) ------------------

    def pauseProducing(self) -> None:
        self._write_paused = True

    def resumeProducing(self) -> None:
        self._write_paused = False
        d, self._drained = self._drained, None
        if d is not None:
            d.callback(None)

    def stopProducing(self) -> None:
        self._closing = True
        self.resumeProducing()

    async def _drain(self) -> None:
        """Wait until the transport wants more (after pauseProducing)."""
        while self._write_paused and not self._closing:
            self._drained = Deferred()
            await self._drained

    # --- input ----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.resetTimeout()
        assert self._framer is not None
        self._framer.feed(data)
        if self._busy and self._line_waiter is None:
            if not self._read_paused and self._framer.buffered > MAX_PENDING_INPUT:
                self._read_paused = True
                self.transport.pauseProducing()
            return
        self._process()

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        framer = self._framer
        assert framer is not None
        try:
            while not self._closing:
                if self._line_waiter is not None:
                    line = framer.next_line()
                    if line is None:
                        break
                    waiter, self._line_waiter = self._line_waiter, None
                    waiter.callback(line)
                    continue
                if self._busy:
                    break
                event = framer.next_event()
                if event is None:
                    break
                if isinstance(event, Continue):
                    self._write(b"+ Ready for literal data\r\n")
                elif isinstance(event, Refused):
                    self._refused(event)
                else:
                    self._start(event)
        except Exception:
            self.log.failure("IMAP session state broken for {client}", client=self.client_address)
            self._bye("Internal server error")
        finally:
            self._processing = False

    def _refused(self, event: Refused) -> None:
        if event.code == "TOOBIG" and event.what == "APPEND":
            limit = self.factory.limits.max_message_size
            self._write(_b(f"{event.tag} NO [TOOBIG] Message larger than {limit} octets\r\n"))
        elif event.code == "TOOBIG":
            # RFC 7888 5: TOOBIG in the tagged BAD for a command other than APPEND.
            self._write(_b(f"{event.tag} BAD [TOOBIG] Literal too large\r\n"))
        else:
            self._write(_b(f"{event.tag} BAD Command line too long\r\n"))
        if event.fatal:
            # RFC 7888 4: the non-synchronising literal is too large to read and discard, and
            # nothing after it could be told apart from its data: BYE and close.
            self._bye("Literal too large to skip; closing the connection")

    def _next_line(self) -> Deferred[bytes | Refused]:
        """The client's next line, for a command that is running (IDLE, AUTHENTICATE)."""
        d: Deferred[bytes | Refused] = Deferred()
        self._line_waiter = d
        if not self._processing:
            self.factory.clock.callLater(0, self._process)
        return d

    # --- commands -------------------------------------------------------------------------

    def _start(self, command: Command) -> None:
        try:
            tag, name, items = parse_command(command)
        except ParseError as e:
            command.discard()
            self._write(_b(f"{command.tag} BAD {e}\r\n"))
            return
        handler, states = self._handler(name)
        if handler is None:
            command.discard()
            self._write(_b(f"{tag} BAD Unknown command {name[:40]}\r\n"))
            return
        if self.state not in states:
            command.discard()
            self._write(_b(f"{tag} BAD {name} not allowed now ({self.state})\r\n"))
            return
        d = Deferred.fromCoroutine(self._execute(tag, name, handler, items, command))
        if not d.called:
            self._busy = True
            self._running = d
            self.setTimeout(None)  # the client is not idle while we work
            d.addBoth(self._finished)

    def _finished(self, result: object) -> None:
        self._busy = False
        self._running = None
        if isinstance(result, Failure) and not result.check(CancelledError):
            self.log.failure("IMAP command failed", result)
        if self._closing:
            return
        self.setTimeout(self.factory.limits.imap_idle_timeout)
        if self._read_paused:
            self._read_paused = False
            self.transport.resumeProducing()
        self._process()

    def _handler(self, name: str) -> tuple[Callable[..., Awaitable[Done]] | None, tuple]:
        spec = _COMMANDS.get(name)
        if spec is None:
            return None, ()
        method, states = spec
        return getattr(self, method), states

    async def _execute(
        self,
        tag: str,
        name: str,
        handler: Callable[..., Awaitable[Done]],
        items: list[Item],
        command: Command,
    ) -> None:
        try:
            result = await handler(tag, items)
        except _Closing:
            return
        except ParseError as e:
            result = Done("BAD", str(e) or "Syntax error")
        except BadSequence as e:
            result = Done("BAD", str(e))
        except InvalidName as e:
            result = Done("NO", f"Invalid mailbox name: {e}", "CANNOT")
        except UidValidityChanged:
            self._bye("Mailbox UIDVALIDITY changed; please reselect")
            return
        except FolderNotFound:
            result = self._folder_vanished()
        except CancelledError:
            return
        except Exception:
            self.log.failure("IMAP {command} failed for {client}", command=name,
                             client=self.client_address)  # fmt: skip
            result = Done("NO", "Internal server error", "SERVERBUG")
        finally:
            command.discard()
        if self._closing:
            return
        if result.sync and self.view is not None:
            # RFC 3501 7.4.1: no EXPUNGE while answering FETCH, STORE or SEARCH (UID forms ok).
            uid = name == "UID"
            allow = uid or name not in ("FETCH", "STORE", "SEARCH")
            try:
                self._write_all(self.view.sync(allow_expunge=allow))
            except UidValidityChanged:
                self._bye("Mailbox UIDVALIDITY changed; please reselect")
                return
            except FolderNotFound:
                result = self._folder_vanished()
        self._write(result.line(tag))

    def _folder_vanished(self) -> Done:
        if self.view is not None:
            # The selected folder was deleted or renamed by another session: deselect.
            self.view = None
            self.state = AUTHENTICATED
            return Done("NO", "Mailbox no longer exists", "NONEXISTENT", sync=False)
        return Done("NO", "Mailbox does not exist", "NONEXISTENT")

    # --- capabilities ---------------------------------------------------------------------

    def login_allowed(self) -> bool:
        return self._tls_active or self.factory.plaintext_login_allowed(self.client_address)

    def capabilities(self) -> list[str]:
        caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE",
                "UIDPLUS", "MOVE", "UNSELECT", "CHILDREN", "SPECIAL-USE", "CONDSTORE", "QRESYNC",
                f"APPENDLIMIT={self.factory.limits.max_message_size}"]  # fmt: skip
        if self.state == NOT_AUTHENTICATED:
            if not self._tls_active and self.factory.tls_context_factory is not None:
                caps.append("STARTTLS")
            if self.login_allowed():
                caps.extend(f"AUTH={m}" for m in sasl.MECHANISMS)
            else:
                caps.append("LOGINDISABLED")  # RFC 3501 6.2.3
        return caps

    # --- any state ------------------------------------------------------------------------

    async def do_CAPABILITY(self, tag: str, items: list[Item]) -> Done:
        C.expect_count(items, 0)
        self._write(_b("* CAPABILITY " + " ".join(self.capabilities()) + "\r\n"))
        return Done("OK", "CAPABILITY completed")

    async def do_NOOP(self, tag: str, items: list[Item]) -> Done:
        return Done("OK", "NOOP completed")

    async def do_LOGOUT(self, tag: str, items: list[Item]) -> Done:
        self._write(b"* BYE Logging out\r\n")
        self._write(Done("OK", "LOGOUT completed").line(tag))
        self.state = LOGOUT
        self._closing = True
        self.setTimeout(None)
        self.transport.loseConnection()
        raise _Closing()

    async def do_ID(self, tag: str, items: list[Item]) -> Done:
        # RFC 2971: NIL or a list of field/value pairs; we log the client's and name ourselves.
        C.expect_count(items, 1)
        arg = items[0]
        if isinstance(arg, list):
            if len(arg) % 2 or len(arg) > 2 * ID_MAX_PAIRS:
                raise ParseError("ID takes up to 30 field-value pairs")
            fields = {}
            for key, value in zip(arg[0::2], arg[1::2], strict=True):
                if not isinstance(key, bytes):
                    raise ParseError("ID field names are strings")
                fields[key.decode("utf-8", "replace")[:30]] = (
                    None if value == Atom("NIL") or value == "NIL" else
                    C.astring(value).decode("utf-8", "replace")[:1024]
                )  # fmt: skip
            self.log.info("client {client} ID {fields}", client=self.client_address,
                          fields=fields)  # fmt: skip
        elif not (isinstance(arg, Atom) and arg.upper() == "NIL"):
            raise ParseError("ID takes NIL or a list")
        self._write(b'* ID ("name" "mailhub" "vendor" "mailhub")\r\n')
        return Done("OK", "ID completed")

    async def do_ENABLE(self, tag: str, items: list[Item]) -> Done:
        if not items:
            raise ParseError("ENABLE needs capability names")
        enabled = []
        for item in items:
            name = C.atom(item, "capability").upper()
            if name == "CONDSTORE" and "CONDSTORE" not in enabled:
                self._enable_condstore(announce=False)
                enabled.append("CONDSTORE")
            elif name == "QRESYNC" and "QRESYNC" not in enabled:
                # RFC 7162 3.2.3: QRESYNC implies CONDSTORE (named only if asked for).
                self._enable_condstore(announce=False)
                self.qresync = True
                if self.view is not None:
                    self.view.qresync = True
                enabled.append("QRESYNC")
        self._write(_b("* ENABLED" + "".join(" " + e for e in enabled) + "\r\n"))
        return Done("OK", "ENABLE completed")

    def _enable_condstore(self, *, announce: bool = True) -> None:
        if self.condstore:
            return
        self.condstore = True
        if self.view is not None:
            self.view.condstore = True
            if announce:
                # RFC 7162 3.1: the first CONDSTORE-enabling command tells HIGHESTMODSEQ.
                modseq = self.view.highestmodseq
                self._write(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % modseq)

    # --- not authenticated ----------------------------------------------------------------

    async def do_STARTTLS(self, tag: str, items: list[Item]) -> Done:
        C.expect_count(items, 0)
        ctx = self.factory.tls_context_factory
        if self._tls_active or ctx is None:
            return Done("BAD", "TLS is already active" if self._tls_active else "No TLS here")
        self._write(Done("OK", "Begin TLS negotiation now").line(tag))
        # RFC 3501 6.2.1 / CVE-2011-0411: nothing sent in plaintext after STARTTLS counts.
        assert self._framer is not None
        self._framer.reset()
        self.transport.startTLS(ctx)
        self._tls_active = True
        raise _Closing()  # answered already; the session goes on

    async def do_LOGIN(self, tag: str, items: list[Item]) -> Done:
        C.expect_count(items, 2)
        user, password = C.astring(items[0], "user name"), C.astring(items[1], "password")
        if not self.login_allowed():
            return Done("NO", "Use STARTTLS first", "PRIVACYREQUIRED")
        return await self._login(tag, user, password, "LOGIN")

    async def do_AUTHENTICATE(self, tag: str, items: list[Item]) -> Done:
        C.expect_count(items, 1, 2)
        name = C.atom(items[0], "mechanism")
        if not self.login_allowed():
            return Done("NO", "Use STARTTLS first", "PRIVACYREQUIRED")
        mechanism = sasl.mechanism(name)
        if mechanism is None:
            return Done("NO", f"Unsupported mechanism {name[:40]}", "CANNOT")
        response: bytes | None = None
        if len(items) == 2:  # RFC 4959 SASL-IR: "=" is an empty initial response
            response = self._sasl_decode(C.astring(items[1]))
            if response is None:
                return Done("BAD", "Invalid base64 in initial response")
        while True:
            try:
                result = mechanism.step(response)
            except sasl.SASLError as e:
                return Done("BAD", f"AUTHENTICATE failed: {e}")
            if isinstance(result, sasl.SASLCredentials):
                break
            self._write(_b("+ " + sasl.encode_challenge(result) + "\r\n"))
            line = await self._next_line()
            if isinstance(line, Refused):
                return Done("BAD", "Response too long")
            if line == b"*":
                return Done("BAD", "AUTHENTICATE cancelled")  # RFC 3501 6.2.2
            response = self._sasl_decode(line)
            if response is None:
                return Done("BAD", "Invalid base64 response")
        if not result.acts_as_itself():
            return await self._login_failed(tag, "authorization identity refused")
        return await self._login(tag, result.authcid, result.password, f"AUTHENTICATE {name}")

    @staticmethod
    def _sasl_decode(data: bytes) -> bytes | None:
        if data == b"=":
            return b""
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return None

    async def _login(self, tag: str, user: bytes, password: bytes, how: str) -> Done:
        f = self.factory
        throttle = f.throttle
        if throttle is not None and throttle.should_disconnect(self.client_address):
            self._bye("Too many authentication failures")
            raise _Closing()
        try:
            _iface, avatar, logout = await f.portal.login(
                PasswordCredentials(user, password), None, IMailUser
            )
        except (UnauthorizedLogin, UnhandledCredentials):
            return await self._login_failed(tag, how)
        if self._closing:
            logout()
            raise _Closing()
        if throttle is not None:
            throttle.success(self.client_address)
        self._logout = logout
        self.user = avatar.address
        self.mailbox = f.store.mailbox(avatar.address, create=True)
        self.mailbox.ensure_special_folders()
        self.state = AUTHENTICATED
        self.log.info("IMAP login {user} from {client} ({how})", event="auth", user=self.user,
                      client=self.client_address, how=how)  # fmt: skip
        caps = " ".join(self.capabilities())
        return Done("OK", "Logged in", f"CAPABILITY {caps}")

    async def _login_failed(self, tag: str, how: str) -> Done:
        self.log.info("IMAP {how} failed from {client}", event="auth_failed", how=how,
                      client=self.client_address)  # fmt: skip
        throttle = self.factory.throttle
        if throttle is None:
            return Done("NO", "Authentication failed", "AUTHENTICATIONFAILED")
        d = self._auth_delay = throttle.delay_reply(self.client_address)
        disconnect = await d
        self._auth_delay = None
        if disconnect:
            self._write(Done("NO", "Authentication failed", "AUTHENTICATIONFAILED").line(tag))
            self._bye("Too many authentication failures")
            raise _Closing()
        return Done("NO", "Authentication failed", "AUTHENTICATIONFAILED")

    def _end_login(self) -> None:
        logout, self._logout = self._logout, None
        if logout is not None:
            logout()

    # --- authenticated: mailboxes ---------------------------------------------------------

    def _box(self) -> Mailbox:
        assert self.mailbox is not None
        return self.mailbox

    async def do_SELECT(self, tag: str, items: list[Item]) -> Done:
        return self._select(items, readonly=False)

    async def do_EXAMINE(self, tag: str, items: list[Item]) -> Done:
        return self._select(items, readonly=True)

    def _select(self, items: list[Item], *, readonly: bool) -> Done:
        C.expect_count(items, 1, 2)
        name = C.mailbox(items[0])
        qresync: C.QresyncParams | None = None
        if len(items) == 2:
            condstore, qresync = C.select_params(items[1])
            if qresync is not None and not self.qresync:
                raise ParseError("QRESYNC parameter needs ENABLE QRESYNC first")  # 3.2.5
            if condstore:
                self.condstore = True
        if self.view is not None:
            # RFC 7162 3.2.11: the previous mailbox is closed (tells apart its late responses).
            self._write(b"* OK [CLOSED] Previous mailbox closed\r\n")
        # RFC 3501 6.3.1: a failed SELECT leaves no mailbox selected.
        self.view = None
        self.state = AUTHENTICATED
        try:
            folder = self._box().folder(name)
        except FolderNotFound:
            return Done("NO", "Mailbox does not exist", "NONEXISTENT", sync=False)
        view = View(folder, readonly=readonly)
        view.condstore = self.condstore
        view.qresync = self.qresync
        flags = [*PERMANENT_FLAGS, *sorted(view.keywords_in_use())]
        w = self._write
        w(b"* FLAGS " + render.flag_list(flags) + b"\r\n")
        if readonly:
            w(b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n")
        else:
            w(
                b"* OK [PERMANENTFLAGS "
                + render.flag_list([*flags, "\\*"])
                + b"] Flags permitted\r\n"
            )
        w(b"* %d EXISTS\r\n" % view.exists)
        w(b"* %d RECENT\r\n" % len(view.recent))
        for seq, uid in enumerate(view.uids, 1):
            if "S" not in view.infos[uid].flags:
                w(b"* OK [UNSEEN %d] First unseen\r\n" % seq)
                break
        w(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % view.uidvalidity)
        w(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % view.uidnext)
        w(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % view.highestmodseq)
        if qresync is not None and qresync.uidvalidity == view.uidvalidity:
            self._resync(view, qresync)
        self.view = view
        self.state = SELECTED
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        return Done("OK", f"{'EXAMINE' if readonly else 'SELECT'} completed", mode, sync=False)

    def _resync(self, view: View, known: C.QresyncParams) -> None:
        """RFC 7162 3.2.5.1: what changed since the client's mod-sequence: the expunged UIDs
        (VANISHED (EARLIER)), then the flags of messages changed since."""
        scope = known.known_uids or SequenceSet.parse("1:*")
        vanished = view.vanished(scope)
        if vanished:
            self._write(b"* VANISHED (EARLIER) %s\r\n" % vanished.encode())
        out = _Output(self._write, FETCH_BATCH)
        top = view.uids[-1] if view.uids else 0
        for seq, uid in enumerate(view.uids, 1):
            info = view.infos[uid]
            if info.modseq > known.modseq and scope.contains(uid, top):
                out.write(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n"
                          % (seq, uid, view.flag_list(uid), info.modseq))  # fmt: skip
        out.flush()

    async def do_CREATE(self, tag: str, items: list[Item]) -> Done:
        C.expect_count(items, 1)
        # RFC 3501 6.3.3: a trailing delimiter only says children will follow.
        name = C.mailbox(items[0]).rstrip(".")
        if not name or name.upper() == INBOX:
            return Done("NO", "Cannot create that mailbox", "ALREADYEXISTS")
        refused = _refuse_new_name(name)
        if refused is not None:
            return refused
        box = self._box()
        if box.has_folder(name):
            return Done("NO", "Mailbox already exists", "ALREADYEXISTS")
        try:
            self._create_folder(name)
        except FolderExists:
            return Done("NO", "Mailbox already exists", "ALREADYEXISTS")
        except FolderError as e:
            return Done("NO", str(e), "CANNOT")
        return Done("OK", "CREATE completed")

    def _create_folder(self, name: str) -> Folder:
        """Create ``name`` and its missing superiors (RFC 3501 6.3.3)."""
        box = self._box()
        normalise_folder(name)  # InvalidName before any superior is made: nothing left behind
        parts = name.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if not box.has_folder(parent):
                try:
                    box.create_folder(parent)
                except FolderExists:
                    pass
        return box.create_folder(name)

    async def do_DELETE(self, tag: str, items: list[Item]) -> Done:
        C.expect_count(items, 1)
        name = C.mailbox(items[0])
        if name == INBOX:
            return Done("NO", "INBOX cannot be deleted", "CANNOT")
        if self.view is not None and self.view.folder.name == name:
            self.view = None
            self.state = AUTHENTICATED
        try:
            self._box().delete_folder(name)
        except FolderNotFound:
            return Done("NO", "Mailbox does not exist", "NONEXISTENT")
        except FolderError as e:
            return Done("NO", str(e), "CANNOT")
        return Done("OK", "DELETE completed")

    async def do_RENAME(self, tag: str, items: list[Item]) -> Done:
        C.expect_count(items, 2)
        old, new = C.mailbox(items[0]), C.mailbox(items[1]).rstrip(".")
        box = self._box()
        if box.has_folder(new) or new.upper() == INBOX:
            return Done("NO", "Target mailbox exists", "ALREADYEXISTS")
        refused = _refuse_new_name(new)
        if refused is not None:
            return refused
        if old == INBOX:
            return self._rename_inbox(new)
        try:
            box.rename_folder(old, new)
        except FolderNotFound:
            return Done("NO", "Mailbox does not exist", "NONEXISTENT")
        except FolderExists:
            return Done("NO", "Target mailbox exists", "ALREADYEXISTS")
        except FolderError as e:
            return Done("NO", str(e), "CANNOT")
        return Done("OK", "RENAME completed")

    def _rename_inbox(self, new: str) -> Done:
        """RFC 3501 6.3.5: renaming INBOX moves all its messages to a new mailbox of that name
        and leaves INBOX empty (it stays, as do folders named under it). Copied first (hard
        links, made durable), then expunged from INBOX: a crash between leaves copies, never
        a loss. Mail delivered meanwhile stays in INBOX."""
        try:
            target = self._create_folder(new)
        except FolderExists:
            return Done("NO", "Target mailbox exists", "ALREADYEXISTS")
        except FolderError as e:
            return Done("NO", str(e), "CANNOT")
        inbox = self._box().folder(INBOX)
        uids = [m.uid for m in inbox.sync().messages]
        moved = [source for source, _ in inbox.copy_many(uids, target)] if uids else []
        if moved:
            inbox.expunge(moved)
        return Done("OK", "RENAME completed")

    async def do_SUBSCRIBE(self, tag: str, items: list[Item]) -> Done:
        C.expect_count(items, 1)
        self._box().subscribe(C.mailbox(items[0]))
        return Done("OK", "SUBSCRIBE completed")

    async def do_UNSUBSCRIBE(self, tag: str, items: list[Item]) -> Done:
        C.expect_count(items, 1)
        self._box().unsubscribe(C.mailbox(items[0]))
        return Done("OK", "UNSUBSCRIBE completed")

    async def do_LIST(self, tag: str, items: list[Item]) -> Done:
        return self._list(items, "LIST")

    async def do_LSUB(self, tag: str, items: list[Item]) -> Done:
        return self._list(items, "LSUB")

    def _list(self, items: list[Item], verb: str) -> Done:
        C.expect_count(items, 2)
        reference = C.mailbox(items[0]) if items[0] != b"" else ""
        pattern_raw = C.astring(items[1], "pattern")
        pattern = C.mailbox(pattern_raw) if pattern_raw else ""
        if not pattern:
            # RFC 3501 6.3.8: the delimiter and root name.
            self._write(_b(f'* {verb} (\\Noselect) "." ""\r\n'))
            return Done("OK", f"{verb} completed")
        box = self._box()
        existing = box.list_folders()
        exists = set(existing)
        names = set(existing)
        for name in existing:  # parents missing on disk are shown as \Noselect
            parts = name.split(".")
            names.update(".".join(parts[:i]) for i in range(1, len(parts)))
        subscribed = set(box.subscriptions()) if verb == "LSUB" else set()
        matcher = C.list_pattern_matcher(reference, pattern)
        inbox_matcher = C.list_pattern_matcher(reference.upper(), pattern.upper())
        if verb == "LSUB":
            # RFC 3501 6.3.9: an unsubscribed parent shows (\Noselect) only when the pattern
            # matches it but not its subscribed children ("%" while "*" lists them).
            parents = {n for n in names if any(s.startswith(n + ".") for s in subscribed)}
            names = subscribed | {
                p for p in parents - subscribed
                if not any(s.startswith(p + ".") and matcher.match(s) for s in subscribed)
            }  # fmt: skip
        children = {n.rsplit(".", 1)[0] for n in names if "." in n}
        for name in sorted(names, key=lambda n: (n != INBOX, n)):
            hit = inbox_matcher.match(name) if name == INBOX else matcher.match(name)
            if not hit:
                continue
            attrs: list[str] = []
            if name not in exists:
                attrs.append("\\Noselect")
            if verb == "LSUB" and name not in subscribed:
                attrs = ["\\Noselect"]
            elif name in children:
                attrs.append("\\HasChildren")
            else:
                attrs.append("\\HasNoChildren")
            special = box.special_use(name) if name in exists and verb == "LIST" else None
            if special:
                attrs.append(special)
            line = b'* %s (%s) "." %s\r\n' % (
                _b(verb),
                _b(" ".join(attrs)),
                render.mailbox_name(name),
            )
            self._write(line)
        return Done("OK", f"{verb} completed")

    async def do_NAMESPACE(self, tag: str, items: list[Item]) -> Done:
        self._write(b'* NAMESPACE (("" ".")) NIL NIL\r\n')
        return Done("OK", "NAMESPACE completed")

    async def do_STATUS(self, tag: str, items: list[Item]) -> Done:
        C.expect_count(items, 2)
        name = C.mailbox(items[0])
        wanted = items[1]
        if not isinstance(wanted, list) or not wanted:
            raise ParseError("STATUS needs a list of items")
        names = [C.atom(w, "status item").upper() for w in wanted]
        try:
            folder = self._box().folder(name)
        except FolderNotFound:
            return Done("NO", "Mailbox does not exist", "NONEXISTENT")
        state = folder.sync()
        values = []
        for n in names:
            if n == "MESSAGES":
                v = state.count
            elif n == "RECENT":
                v = sum(1 for m in state.messages if m.recent)
            elif n == "UIDNEXT":
                v = state.uidnext
            elif n == "UIDVALIDITY":
                v = state.uidvalidity
            elif n == "UNSEEN":
                v = sum(1 for m in state.messages if "S" not in m.flags)
            elif n == "HIGHESTMODSEQ":
                self._enable_condstore()
                v = state.highestmodseq
            elif n == "APPENDLIMIT":
                v = self.factory.limits.max_message_size
            elif n == "SIZE":
                v = state.total_size
            else:
                raise ParseError(f"unknown STATUS item {n}")
            values.append(f"{n} {v}")
        self._write(b"* STATUS " + render.mailbox_name(name) + _b(f" ({' '.join(values)})\r\n"))
        return Done("OK", "STATUS completed")

    async def do_APPEND(self, tag: str, items: list[Item]) -> Done:
        request = C.append_request(items)
        message = request.message
        size = message.size if isinstance(message, SpooledLiteral) else len(message)
        if size == 0:
            return Done("NO", "Cannot save an empty message")
        try:
            folder = self._box().folder(request.mailbox)
        except FolderNotFound:
            # RFC 3501 6.3.11: TRYCREATE tells the client CREATE would help.
            return Done("NO", "Mailbox does not exist", "TRYCREATE")
        letters, keywords = split_flags(request.flags)
        src = message.file if isinstance(message, SpooledLiteral) else io.BytesIO(message)
        uid = folder.append_from(src, flags=letters, keywords=keywords,
                                 internaldate=request.internaldate)  # fmt: skip
        validity = folder.sync().uidvalidity
        return Done("OK", "APPEND completed", f"APPENDUID {validity} {uid}")

    # --- selected -------------------------------------------------------------------------

    def _view(self) -> View:
        assert self.view is not None
        return self.view

    async def do_CHECK(self, tag: str, items: list[Item]) -> Done:
        return Done("OK", "CHECK completed")

    async def do_CLOSE(self, tag: str, items: list[Item]) -> Done:
        view = self._view()
        if not view.readonly:
            # RFC 3501 6.4.2: expunge silently, no EXPUNGE responses.
            deleted = [uid for uid in view.uids if "T" in view.infos[uid].flags]
            if deleted:
                view.folder.expunge(deleted)
        self.view = None
        self.state = AUTHENTICATED
        return Done("OK", "CLOSE completed", sync=False)

    async def do_UNSELECT(self, tag: str, items: list[Item]) -> Done:
        self.view = None
        self.state = AUTHENTICATED
        return Done("OK", "UNSELECT completed", sync=False)

    async def do_EXPUNGE(self, tag: str, items: list[Item]) -> Done:
        C.expect_count(items, 0)
        return self._expunge(None)

    def _expunge(self, uids: set[int] | None) -> Done:
        view = self._view()
        if view.readonly:
            return Done("NO", "Mailbox is read-only", "READ-ONLY")
        self._write_all(view.sync(allow_expunge=True))  # the freshest flags decide
        deleted = [
            uid for uid in view.uids
            if "T" in view.infos[uid].flags and (uids is None or uid in uids)
        ]  # fmt: skip
        if deleted:
            view.folder.expunge(deleted)
        return Done("OK", "EXPUNGE completed")

    async def do_UID(self, tag: str, items: list[Item]) -> Done:
        if not items:
            raise ParseError("UID needs a command")
        sub = C.atom(items[0], "command").upper()
        rest = items[1:]
        # UID commands may report expunges (RFC 3501 7.4.1): doing it first keeps messages
        # expunged by others out of the answer.
        self._write_all(self._view().sync(allow_expunge=True))
        if sub == "FETCH":
            return await self._fetch(rest, uid=True)
        if sub == "SEARCH":
            return self._search(rest, uid=True)
        if sub == "STORE":
            return self._store(rest, uid=True)
        if sub in ("COPY", "MOVE"):
            return self._copy(rest, uid=True, move=sub == "MOVE")
        if sub == "EXPUNGE":
            C.expect_count(rest, 1)
            pairs = self._view().select(C.sequence_set(rest[0]), uid=True)
            return self._expunge({u for _, u in pairs})
        raise ParseError(f"unknown UID command {sub[:20]}")

    async def do_FETCH(self, tag: str, items: list[Item]) -> Done:
        return await self._fetch(items, uid=False)

    async def do_STORE(self, tag: str, items: list[Item]) -> Done:
        return self._store(items, uid=False)

    async def do_SEARCH(self, tag: str, items: list[Item]) -> Done:
        return self._search(items, uid=False)

    async def do_COPY(self, tag: str, items: list[Item]) -> Done:
        return self._copy(items, uid=False, move=False)

    async def do_MOVE(self, tag: str, items: list[Item]) -> Done:
        return self._copy(items, uid=False, move=True)

    # FETCH ------------------------------------------------------------------------------------

    async def _fetch(self, items: list[Item], *, uid: bool) -> Done:
        if len(items) < 2:
            raise ParseError("FETCH needs a sequence set and attributes")
        view = self._view()
        sequence = C.sequence_set(items[0])
        request = C.fetch_request(items[1:], uid=uid, qresync=self.qresync)
        if request.modseq:
            self._enable_condstore()
        pairs = view.select(sequence, uid=uid)
        if request.vanished:
            # RFC 7162 3.2.6: expunged UIDs of the set, before the FETCH responses.
            vanished = view.vanished(sequence)
            if vanished:
                self._write(b"* VANISHED (EARLIER) %s\r\n" % vanished.encode())
        if request.changedsince is not None:
            pairs = [(s, u) for s, u in pairs if view.infos[u].modseq > request.changedsince]
        if request.sets_seen and not view.readonly:
            unseen = [u for _, u in pairs if "S" not in view.infos[u].flags and not view.gone(u)]
            if unseen:
                outcome = view.folder.store_flags(unseen, "add", ["S"])
                view.update(outcome.infos)
                request = _with_flags(request)
        if self.condstore and request.flags and not request.modseq:
            # RFC 7162 3.1: once CONDSTORE is enabled, FETCH responses carrying flags carry
            # their MODSEQ too (Thunderbird relies on it after SELECT (CONDSTORE)), as the
            # STORE responses and flag updates already do.
            request = replace(request, modseq=True)
        plan = _FetchPlan.of(request)
        out = _Output(self._write, FETCH_BATCH)
        missing = False
        registered = False
        try:
            if plan.wanted:
                self.transport.registerProducer(self, True)
                registered = True
            for seq, u in pairs:
                if self._closing:
                    raise _Closing()
                if not await self._fetch_one(view, plan, seq, u, out):
                    missing = True
                if self._write_paused:
                    out.flush()
                    await self._drain()
            out.flush()
        finally:
            if registered and not self._closing:
                self.transport.unregisterProducer()
                self._write_paused = False
        if missing:
            # RFC 5530 EXPUNGEISSUED: some messages were expunged by another session.
            return Done("NO", "Some messages were expunged meanwhile", "EXPUNGEISSUED")
        return Done("OK", "FETCH completed")

    async def _fetch_one(
        self, view: View, plan: _FetchPlan, seq: int, uid: int, out: _Output
    ) -> bool:
        request = plan.request
        info = view.infos[uid]
        head: list[bytes] = []
        if request.uid:
            head.append(b"UID %d" % uid)
        if request.flags:
            head.append(b"FLAGS " + view.flag_list(uid))
        if request.modseq:
            head.append(b"MODSEQ (%d)" % info.modseq)
        if request.internaldate:
            head.append(b"INTERNALDATE " + render.internaldate(info.internaldate))
        if request.size:
            head.append(b"RFC822.SIZE %d" % info.size)
        try:
            # The whole message (BODY[], RFC822) needs no parse: the file is the data; ENVELOPE
            # alone needs only the header block.
            structure = _structure(view.folder, uid) if plan.needs_structure else None
            headers = _headers(view.folder, uid) if plan.needs_headers else None
            if not plan.needs_file:
                if headers is not None:
                    head.append(b"ENVELOPE " + mime.envelope(headers))
                out.write(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(head)))
                return True
            if plan.whole_file and info.size <= FETCH_WHOLE_MAX:
                # BODY[], RFC822 of a message of usual size: one read, no section bookkeeping
                # (a FETCH 1:* BODY.PEEK[] does this 10,000 times). The literal's length is
                # what was read, whatever the index says.
                data = view.folder.read_message(uid)
                self._write_whole(data, plan, b"* %d FETCH (" % seq + b" ".join(head), out)
                return True
            fp = view.folder.open_message(uid)
        except (MessageGone, FileNotFoundError):
            if head:
                out.write(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(head)))
            return False
        with fp:
            if headers is not None:
                head.append(b"ENVELOPE " + mime.envelope(headers))
            if structure is not None:
                if request.envelope:
                    head.append(b"ENVELOPE " + mime.envelope(structure))
                if request.body:
                    head.append(b"BODY " + mime.bodystructure(structure, False))
                if request.bodystructure:
                    head.append(b"BODYSTRUCTURE " + mime.bodystructure(structure, True))
            prefix = b"* %d FETCH (" % seq + b" ".join(head)
            sep = b" " if head else b""
            for name, section, partial in plan.wanted:
                if structure is None:  # whole-message sections only
                    data = mime.SectionData([(0, os.fstat(fp.fileno()).st_size)])
                else:
                    data = mime.section_data(structure, section, fp)
                if partial is not None:
                    data = data.slice(partial[0], partial[1])
                out.write(prefix + sep + name + b" {%d}\r\n" % data.size)
                prefix, sep = b"", b" "
                for chunk in data.chunks(fp, FETCH_CHUNK):
                    out.write(chunk)
                    if self._write_paused:
                        out.flush()
                        await self._drain()
                        if self._closing:
                            raise _Closing()
            out.write(prefix + b")\r\n")
        return True

    @staticmethod
    def _write_whole(data: bytes, plan: _FetchPlan, prefix: bytes, out: _Output) -> None:
        sep = b" " if prefix[-1:] != b"(" else b""
        for name, _section, partial in plan.wanted:
            # RFC 3501 6.4.5 <origin.octets>: fewer octets (none) near (past) the end.
            piece = data if partial is None else data[partial[0] : partial[0] + partial[1]]
            out.write(prefix + sep + name + b" {%d}\r\n" % len(piece))
            out.write(piece)
            prefix, sep = b"", b" "
        out.write(b")\r\n")

    # STORE ------------------------------------------------------------------------------------

    def _store(self, items: list[Item], *, uid: bool) -> Done:
        if len(items) < 2:
            raise ParseError("STORE needs a sequence set, an item and flags")
        view = self._view()
        sequence = C.sequence_set(items[0])
        request = C.store_request(items[1:])
        if view.readonly:
            return Done("NO", "Mailbox is read-only", "READ-ONLY")
        conditional = request.unchanged_since is not None
        if conditional:
            self._enable_condstore()
        pairs = view.select(sequence, uid=uid)
        letters, keywords = split_flags(request.flags)
        live = [u for _, u in pairs if not view.gone(u)]
        told = {u: view.infos[u] for u in live}  # what the client knows, before the change
        outcome = view.folder.store_flags(
            live, request.mode, letters, keywords, unchanged_since=request.unchanged_since
        )  # type: ignore[arg-type]
        view.update(outcome.infos)
        refused = set(outcome.modified)
        expect = _expected_flags(request.mode, frozenset(letters), frozenset(keywords))
        condstore = self.condstore
        out = _Output(self._write, FETCH_BATCH)
        for seq, u in pairs:
            info = outcome.infos.get(u)
            if info is None or u in refused:
                continue
            old = told[u]
            # RFC 3501 6.4.6 says STORE "normally" returns the updated flags in an untagged
            # FETCH; like Dovecot and Cyrus we answer only for messages whose flags differ from
            # what the client was last told (STORE 1:* +FLAGS (\Seen) on a mostly read
            # mailbox answers the few it changed). Unchanged messages need no answer: their
            # flags are what the client already has, and what it asked for.
            if request.silent:
                # .SILENT: the client derives the result itself, unless another session
                # changed the flags meanwhile (RFC 3501 6.4.6 note: report that change).
                show_flags = (info.flags, info.keywords) != expect(old.flags, old.keywords)
            else:
                show_flags = info.flags != old.flags or info.keywords != old.keywords
            # RFC 7162 3.2: with CONDSTORE a message the STORE changed is reported, even when
            # .SILENT, with its new MODSEQ; with UNCHANGEDSINCE every message that passed is
            # (the client learns which mod-sequence its change holds).
            show_modseq = condstore and (info.modseq != old.modseq or conditional)
            if not (show_flags or show_modseq):
                continue
            parts = [b"UID %d" % u] if uid else []
            if show_flags:
                parts.append(b"FLAGS " + view.flag_list(u))
            if condstore:
                parts.append(b"MODSEQ (%d)" % info.modseq)
            out.write(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts)))
        out.flush()
        if refused:
            numbers = sorted(refused) if uid else sorted(view.seq_of(u) or 0 for u in refused)
            return Done("OK", "Conditional STORE failed", f"MODIFIED {compress(numbers)}")
        return Done("OK", "STORE completed")

    # SEARCH -----------------------------------------------------------------------------------

    def _search(self, items: list[Item], *, uid: bool) -> Done:
        from mailhub.imap import search

        view = self._view()
        charset = None
        if len(items) >= 2 and isinstance(items[0], Atom) and items[0].upper() == "CHARSET":
            charset = C.astring(items[1], "charset").decode("ascii", "replace")
            items = items[2:]
        try:
            criteria = search.compile_criteria(items, charset)
        except search.BadCharset as e:
            return Done("NO", str(e) or "Unsupported charset", "BADCHARSET (US-ASCII UTF-8)")
        except search.SearchError as e:
            raise ParseError(str(e)) from None
        if criteria.uses_modseq:
            self._enable_condstore()
        folder = view.folder
        # One pass over each cache entry the keys need: the cache file is checked for other
        # processes' work once, here, and what this search computes is appended in one write.
        # For header keys only the header block is read (usually with one read()).
        headers = structure = None
        try:
            if criteria.needs_headers:
                headers = folder.cache_pass(
                    "headers", *_headers_codec(), compute_path=mime.read_header
                )
            if criteria.needs_structure:
                structure = folder.cache_pass("structure", *_structure_codec())
            box = _SearchMailbox(
                view,
                headers.get if headers else lambda u: _headers(folder, u),
                structure.get if structure else lambda u: _structure(folder, u),
            )
            uids = view.uids
            if criteria.needs_headers or criteria.needs_structure:
                # expunged by others, not yet announced: nothing left to read
                uids = [u for u in uids if not view.gone(u)]
            found = criteria.search(box, uids)
        finally:
            for p in (headers, structure):
                if p is not None:
                    p.close()
        highest = max((view.infos[u].modseq for u in found), default=0)
        if not uid:
            found = [box.seq(u) for u in found]
        line = b"* SEARCH" + b"".join(b" %d" % n for n in found)
        if criteria.uses_modseq and found:
            line += b" (MODSEQ %d)" % highest
        self._write(line + b"\r\n")
        return Done("OK", "SEARCH completed")

    # COPY / MOVE ------------------------------------------------------------------------------

    def _copy(self, items: list[Item], *, uid: bool, move: bool) -> Done:
        C.expect_count(items, 2)
        view = self._view()
        sequence = C.sequence_set(items[0])
        name = C.mailbox(items[1])
        verb = "MOVE" if move else "COPY"
        if move and view.readonly:
            return Done("NO", "Mailbox is read-only", "READ-ONLY")
        pairs = view.select(sequence, uid=uid)
        try:
            target = self._box().folder(name)
        except FolderNotFound:
            return Done("NO", "Mailbox does not exist", "TRYCREATE")
        uids = [u for _, u in pairs]
        copied = view.folder.copy_many(uids, target) if uids else []
        code = None
        if copied:
            validity = target.sync().uidvalidity
            source = compress([s for s, _ in copied])
            dest = compress([d for _, d in copied])
            code = f"COPYUID {validity} {source} {dest}"
        if move:
            if code:
                # RFC 6851 4.3: COPYUID goes in an untagged OK before the EXPUNGEs.
                self._write(_b(f"* OK [{code}] Moved\r\n"))
            moved = [s for s, _ in copied]
            if moved:
                view.folder.expunge(moved)
            return Done("OK", "MOVE completed")
        if len(copied) < len(uids) and not uid:
            return Done("NO", "Some messages were expunged meanwhile", "EXPUNGEISSUED")
        return Done("OK", f"{verb} completed", code)

    # IDLE -------------------------------------------------------------------------------------

    async def do_IDLE(self, tag: str, items: list[Item]) -> Done:
        C.expect_count(items, 0)
        self._write(b"+ idling\r\n")
        # The autologout timer keeps running (RFC 2177 3: clients re-IDLE within 29 minutes).
        self.setTimeout(self.factory.limits.imap_idle_timeout)
        self._poll_idle()
        try:
            line = await self._next_line()
        finally:
            self._stop_idle_poll()
        if isinstance(line, Refused) or line.upper() != b"DONE":
            return Done("BAD", "Expected DONE")  # RFC 2177 3: only DONE ends IDLE
        return Done("OK", "IDLE terminated")

    def _poll_idle(self) -> None:
        self._idle_timer = None
        if self._closing:
            return
        if self.view is not None:
            try:
                self._write_all(self.view.sync(allow_expunge=True))
            except UidValidityChanged:
                self._bye("Mailbox UIDVALIDITY changed; please reselect")
                return
            except FolderNotFound:
                self._bye("Selected mailbox no longer exists")
                return
        self._idle_timer = self.factory.clock.callLater(IDLE_POLL_INTERVAL, self._poll_idle)

    def _stop_idle_poll(self) -> None:
        timer, self._idle_timer = self._idle_timer, None
        if timer is not None and timer.active():
            timer.cancel()


def _with_flags(request: C.FetchRequest) -> C.FetchRequest:
    """RFC 3501 6.4.5: when FETCH sets \\Seen, the new FLAGS are reported."""
    if request.flags:
        return request
    return replace(request, flags=True)


def _refuse_new_name(name: str) -> Done | None:
    """Names a client may not give a new mailbox: ``%`` and ``*`` are LIST wildcards (RFC 3501
    6.3.8), so such a mailbox could never be listed on its own (Dovecot refuses them too)."""
    if "%" in name or "*" in name:
        return Done("NO", "Mailbox names cannot contain the LIST wildcards % and *", "CANNOT")
    return None


def _expected_flags(
    mode: str, letters: frozenset[str], keywords: frozenset[str]
) -> Callable[[frozenset[str], frozenset[str]], tuple[frozenset[str], frozenset[str]]]:
    """What a client expects a STORE to leave, from the flags it knew (``.SILENT``)."""
    if mode == "set":
        return lambda f, k: (letters, keywords)
    if mode == "add":
        return lambda f, k: (f | letters, k | keywords)
    return lambda f, k: (f - letters, k - keywords)


@dataclass(frozen=True)
class _FetchPlan:
    """What a FETCH needs per message, worked out once for all of them."""

    request: C.FetchRequest
    wanted: tuple[tuple[bytes, mime.Section, tuple[int, int | None] | None], ...]
    needs_file: bool
    needs_structure: bool
    needs_headers: bool  # ENVELOPE without the structure: from the header block alone
    whole_file: bool  # only whole-message sections (BODY[], RFC822, partial or not)

    @classmethod
    def of(cls, request: C.FetchRequest) -> _FetchPlan:
        wanted = [(_RFC822_NAMES[r], _RFC822_SECTIONS[r], None) for r in request.rfc822]
        wanted += [(s.response_name(), mime.Section(s.part, s.text,
                    tuple(f.upper() for f in s.fields)), s.partial)
                   for s in request.sections]  # fmt: skip
        described = request.body or request.bodystructure
        whole_only = all(section == _WHOLE for _, section, _ in wanted)
        needs_structure = described or not whole_only
        return cls(
            request,
            tuple(wanted),
            needs_file=bool(wanted) or described,
            needs_structure=needs_structure,
            needs_headers=request.envelope and not needs_structure,
            whole_file=bool(wanted) and not needs_structure and not request.envelope,
        )


class _Output:
    """Collects small response pieces into writes of about ``batch`` octets: one FETCH of
    10,000 messages is then a few hundred transport writes, not tens of thousands."""

    __slots__ = ("_batch", "_parts", "_sink", "_size")

    def __init__(self, sink: Callable[[bytes], None], batch: int) -> None:
        self._sink = sink
        self._batch = batch
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self._size >= self._batch:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            self._sink(b"".join(self._parts))
            self._parts.clear()
            self._size = 0


_WHOLE = mime.Section()


_RFC822_NAMES = {"RFC822": b"RFC822", "RFC822.HEADER": b"RFC822.HEADER",
                 "RFC822.TEXT": b"RFC822.TEXT"}  # fmt: skip
_RFC822_SECTIONS = {"RFC822": mime.Section(), "RFC822.HEADER": mime.Section(text="HEADER"),
                    "RFC822.TEXT": mime.Section(text="TEXT")}  # fmt: skip

# command -> (method, states in which it is allowed)
_COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "CAPABILITY": ("do_CAPABILITY", ANY),
    "NOOP": ("do_NOOP", ANY),
    "LOGOUT": ("do_LOGOUT", ANY),
    "ID": ("do_ID", ANY),
    "ENABLE": ("do_ENABLE", AUTHED),
    "STARTTLS": ("do_STARTTLS", (NOT_AUTHENTICATED,)),
    "LOGIN": ("do_LOGIN", (NOT_AUTHENTICATED,)),
    "AUTHENTICATE": ("do_AUTHENTICATE", (NOT_AUTHENTICATED,)),
    "SELECT": ("do_SELECT", AUTHED),
    "EXAMINE": ("do_EXAMINE", AUTHED),
    "CREATE": ("do_CREATE", AUTHED),
    "DELETE": ("do_DELETE", AUTHED),
    "RENAME": ("do_RENAME", AUTHED),
    "SUBSCRIBE": ("do_SUBSCRIBE", AUTHED),
    "UNSUBSCRIBE": ("do_UNSUBSCRIBE", AUTHED),
    "LIST": ("do_LIST", AUTHED),
    "LSUB": ("do_LSUB", AUTHED),
    "NAMESPACE": ("do_NAMESPACE", AUTHED),
    "STATUS": ("do_STATUS", AUTHED),
    "APPEND": ("do_APPEND", AUTHED),
    "IDLE": ("do_IDLE", AUTHED),
    "CHECK": ("do_CHECK", (SELECTED,)),
    "CLOSE": ("do_CLOSE", (SELECTED,)),
    "UNSELECT": ("do_UNSELECT", (SELECTED,)),
    "EXPUNGE": ("do_EXPUNGE", (SELECTED,)),
    "SEARCH": ("do_SEARCH", (SELECTED,)),
    "FETCH": ("do_FETCH", (SELECTED,)),
    "STORE": ("do_STORE", (SELECTED,)),
    "COPY": ("do_COPY", (SELECTED,)),
    "MOVE": ("do_MOVE", (SELECTED,)),
    "UID": ("do_UID", (SELECTED,)),
}
