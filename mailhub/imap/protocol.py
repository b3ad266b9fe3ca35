"""The IMAP4rev1 server connection (RFC 3501) with the extensions real clients use.

IDLE (RFC 2177), NAMESPACE (2342), UIDPLUS (4315), MOVE (6851), UNSELECT (3691), LITERAL+
(7888), ENABLE (5161), ID (2971), CHILDREN (3348), SPECIAL-USE (6154), CONDSTORE and QRESYNC
(7162), APPENDLIMIT (7889), SASL-IR (4959).

QRESYNC keeps no log of expunged UIDs: VANISHED (EARLIER) names every UID of the client's set
that is not in the mailbox, including ones expunged before the client's mod-sequence, which
RFC 7162 3.2.5.1 allows (clients ignore UIDs they do not know).

Structure: ``CommandFramer`` (parser.py) cuts the input into commands; each command runs as a
coroutine (a handler of the command table, see dispatch.py; the handlers are in
session_commands, mailbox_commands, fetch_command, search_command and message_commands) and
the next one is not even parsed before it has answered, so pipelined commands are answered
strictly in order whatever they wait for (unlike twisted.mail.imap4, twisted#9282). A command
that needs a client line while it runs (IDLE's DONE, AUTHENTICATE's responses) awaits
``next_line()``. Message data is streamed with flow control: the protocol is the transport's
push producer while a FETCH writes.

This module is the connection: framing, output and flow control, the session states, in-order
dispatch, timeouts, STARTTLS's switch, BYE. Store calls are blocking but short (one folder, a
few syscalls; see mailhub.store) and run on the reactor thread, like SMTP delivery's. They
never wait for a folder lock there: a command that meets a busy one (``LockBusy``) is run again
from a timer, and answered ``NO [UNAVAILABLE]`` (RFC 5530) if the lock stays busy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IPushProducer,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhub import sasl
from mailhub.connlimit import Slot
from mailhub.imap import (
    fetch_command,
    mailbox_commands,
    message_commands,
    search_command,
    session_commands,
    sort_command,
)
from mailhub.imap.arguments import mailbox as mailbox_name
from mailhub.imap.dispatch import (
    AUTHENTICATED,
    NOT_AUTHENTICATED,
    SELECTED,
    Answered,
    CommandTable,
    Done,
    Handler,
    utf8,
)
from mailhub.imap.parser import (
    Command,
    CommandFramer,
    Continue,
    Item,
    ParseError,
    Refused,
    parse_command,
)
from mailhub.imap.view import BadSequence, UidValidityChanged, View, fast_look
from mailhub.net import IStreamTransport
from mailhub.store import Folder, FolderNotFound, InvalidName, Mailbox, StoreError
from mailhub.store.changes import MESSAGE_CHANGES, StoreChange
from mailhub.store.core import tick
from mailhub.store.errors import LockBusy, LockTimeout
from mailhub.store.lockwait import BusyWait, retry_busy
from mailhub.store.maildir import SpoolFile
from mailhub.tls import HandshakeDeadline

if TYPE_CHECKING:
    from mailhub.imap.factory import IMAPServerFactory

# Pause reading when this much input waits behind a running command.
MAX_PENDING_INPUT = 1024 * 1024
T = TypeVar("T")
# Commands not run again when they meet a busy lock: they may have added messages before
# (again would add twice), or logged in (they wait for the lock where they take it).
_NOT_AGAIN = frozenset({"APPEND", "COPY", "MOVE", "LOGIN", "AUTHENTICATE"})
# During IDLE without the store's change feed (a factory built without one), look for changes
# this often (seconds). With the feed, IDLE waits for it (mailhub.store.changes).
IDLE_POLL_INTERVAL = 1.0
# During IDLE, the selected folder's lock was busy: look again after this long (seconds).
IDLE_BUSY_RETRY = 0.1
# Untagged responses (FETCH, also after STORE or QRESYNC) are written in pieces of this size.
OUTPUT_BATCH = 64 * 1024


@implementer(IPushProducer)
class IMAPServerProtocol(Protocol, TimeoutMixin, HandshakeDeadline):
    """One IMAP connection. Built by ``IMAPServerFactory``."""

    factory: IMAPServerFactory
    transport: IStreamTransport  # set by connectionMade, before anything below runs

    def __init__(self) -> None:
        # the session, as the command handlers see and change it
        self.state = NOT_AUTHENTICATED
        self.client_address = ""
        self.user: str | None = None
        self.mailbox: Mailbox | None = None
        self.view: View | None = None  # the selected mailbox
        self.condstore = False
        self.qresync = False  # RFC 7162 3.2.3: ENABLE QRESYNC
        self.avatar_logout: Callable[[], None] | None = None  # set by LOGIN, called at the end
        self.closing = False  # BYE said or the connection lost: answer nothing more
        self.write_paused = False  # the transport's buffer is full (IPushProducer)
        # the connection
        self._tls_active = False
        self._slot: Slot | None = None  # the factory counted this connection
        self._busy = False  # a command is running
        self._processing = False  # inside _process (re-entry only flags more work)
        self._read_paused = False
        self._drained: Deferred[None] | None = None
        self._line_waiter: Deferred[bytes | Refused] | None = None
        self._running: Deferred[None] | None = None
        self._idle_timer: Any = None
        self._idling = False
        self._idle_unsubscribe: Callable[[], None] | None = None
        self._framer: CommandFramer | None = None

    # --- connection -----------------------------------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        self.log = f.log
        # TimeoutMixin uses the injected clock (ignore: mypy sees TimeoutMixin.callLater as a
        # method with an untyped signature, so replacing it per instance is flagged).
        self.callLater = f.clock.callLater  # type: ignore[method-assign,assignment]
        peer = self.transport.getPeer()
        self.client_address = str(getattr(peer, "host", ""))
        self._framer = CommandFramer(
            max_line=f.limits.imap_max_line_length,
            max_append=f.limits.max_message_size,
            spool_to=self._append_spool,
        )
        if ISSLTransport.providedBy(self.transport):
            self.tls_handshake_started()  # implicit TLS: even a refusal waits for it
        self._slot = f.connection_opened(self.client_address, self)
        if self._slot is None:
            self.log.info("refused connection from {client}: too many", client=self.client_address)
            self.bye("Too many connections, try again later")
            return
        self._tls_active = ISSLTransport.providedBy(self.transport)
        self.setTimeout(self.idle_timeout())
        caps = " ".join(self.capabilities())
        self.write(utf8(f"* OK [CAPABILITY {caps}] {f.hostname} IMAP4rev1 mailhub ready\r\n"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closing = True
        self.setTimeout(None)
        self.stop_handshake_deadline()
        self.stop_idle()
        self._leave_view()
        for d in (self._line_waiter, self._drained, self._running):
            if d is not None and not d.called:
                d.cancel()
        self._line_waiter = self._drained = None
        if self._framer is not None:
            self._framer.close()
        avatar_logout, self.avatar_logout = self.avatar_logout, None
        if avatar_logout is not None:
            avatar_logout()
        slot, self._slot = self._slot, None
        if slot is not None:
            self.factory.connection_closed(slot)

    def idle_timeout(self) -> float:
        """RFC 3501 5.4's autologout timer, or the stress timeout (mailhub.connlimit)."""
        f = self.factory
        return f.connection_count.idle_timeout(self._slot, f.limits.imap_idle_timeout)

    def logged_in(self) -> None:
        """LOGIN or AUTHENTICATE succeeded: the session leaves the not-logged-in share."""
        if self._slot is not None:
            self.factory.connection_count.logged_in(self._slot)

    def under_stress(self) -> None:
        """The listener is under stress and this session has not logged in: cut its timer."""
        short = self.idle_timeout()
        if not self.closing and self.timeOut is not None and self.timeOut > short:
            self.setTimeout(short)

    def evict(self) -> None:
        """The listener needs this session's place (it is the oldest not logged in)."""
        self.log.info("closing {client} to make room", client=self.client_address)
        # RFC 5530 3: UNAVAILABLE, the server cannot serve this session now.
        self.bye("[UNAVAILABLE] Too many connections, closing the oldest not logged in")

    def timeoutConnection(self) -> None:
        # RFC 3501 5.4: autologout after at least 30 minutes of inactivity (configurable).
        self.log.info("idle timeout for {client}", client=self.client_address)
        self.bye("Autologout; idle for too long")

    def bye(self, text: str, *, then: bytes = b"") -> None:
        """Say BYE (and ``then``, LOGOUT's tagged OK) and close the connection."""
        if self.closing:
            return
        self.write(utf8(f"* BYE {text}\r\n"))
        if then:
            self.write(then)
        self.closing = True
        self.setTimeout(None)
        self.stop_idle()
        self._leave_view()
        self.close_transport(self.factory.clock)

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    def start_tls(self, ctx: IOpenSSLServerConnectionCreator) -> None:
        """Switch to TLS now (STARTTLS has answered OK)."""
        # RFC 3501 6.2.1 / CVE-2011-0411: nothing sent in plaintext after STARTTLS counts.
        assert self._framer is not None
        self._framer.reset()
        self.transport.startTLS(ctx)
        # The idle timer keeps running: the handshake must finish within it (HandshakeDeadline).
        self.tls_handshake_started()
        self._tls_active = True

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def write_all(self, lines: list[bytes]) -> None:
        """Untagged updates (thousands after a big expunge) in one write."""
        if lines:
            self.transport.write(b"".join(lines))

    # --- flow control (IPushProducer, registered while a FETCH streams) ------------------

    def pauseProducing(self) -> None:
        self.write_paused = True

    def resumeProducing(self) -> None:
        self.write_paused = False
        d, self._drained = self._drained, None
        if d is not None:
            d.callback(None)

    def stopProducing(self) -> None:
        self.closing = True
        self.resumeProducing()

    async def _drain(self) -> None:
        """Wait until the transport wants more (after pauseProducing)."""
        while self.write_paused and not self.closing:
            self._drained = Deferred()
            await self._drained

    def batched(self) -> Output:
        """A writer that joins many small responses into writes of about OUTPUT_BATCH."""
        return Output(self.write, OUTPUT_BATCH)

    def start_streaming(self) -> None:
        """Be the transport's push producer while a long answer is written (FETCH)."""
        self.transport.registerProducer(self, True)

    def stop_streaming(self) -> None:
        if not self.closing:
            self.transport.unregisterProducer()
            self.write_paused = False

    async def pace(self, out: Output) -> None:
        """While the transport's buffer is full: flush ``out`` and wait until it drains."""
        if self.write_paused:
            out.flush()
            await self._drain()

    # --- input ----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
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
            while not self.closing:
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
                    self.write(b"+ Ready for literal data\r\n")
                elif isinstance(event, Refused):
                    self._refused(event)
                else:
                    self._start(event)
        except Exception:
            self.log.failure("IMAP session state broken for {client}", client=self.client_address)
            self.bye("Internal server error")
        finally:
            self._processing = False

    def _refused(self, event: Refused) -> None:
        if event.code == "TOOBIG" and event.what == "APPEND":
            limit = self.factory.limits.max_message_size
            self.write(utf8(f"{event.tag} NO [TOOBIG] Message larger than {limit} octets\r\n"))
        elif event.code == "TOOBIG":
            # RFC 7888 5: TOOBIG in the tagged BAD for a command other than APPEND.
            self.write(utf8(f"{event.tag} BAD [TOOBIG] Literal too large\r\n"))
        else:
            self.write(utf8(f"{event.tag} BAD Command line too long\r\n"))
        if event.fatal:
            # RFC 7888 4: the non-synchronising literal is too large to read and discard, and
            # nothing after it could be told apart from its data: BYE and close.
            self.bye("Literal too large to skip; closing the connection")

    def _append_spool(self, command: Command) -> SpoolFile | None:
        """A file in the target folder's tmp/ for a large APPEND literal, so the message is
        written once and delivered by a link; None (a temporary file) when the folder is not
        known (yet): the command answers for that itself."""
        if self.mailbox is None:
            return None
        try:
            _tag, name, items = parse_command(command)
            if name != "APPEND" or not items:
                return None
            return self.mailbox.folder(mailbox_name(items[0])).spool()
        except (ParseError, StoreError, OSError):
            return None

    def next_line(self) -> Deferred[bytes | Refused]:
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
            self.write(utf8(f"{command.tag} BAD {e}\r\n"))
            return
        spec = COMMANDS.get(name)
        if spec is None:
            command.discard()
            self.write(utf8(f"{tag} BAD Unknown command {name[:40]}\r\n"))
            return
        if self.state not in spec.states:
            command.discard()
            self.write(utf8(f"{tag} BAD {name} not allowed now ({self.state})\r\n"))
            return
        d = Deferred.fromCoroutine(self._execute(tag, name, spec.handler, items, command))
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
        if self.closing:
            return
        self.setTimeout(self.idle_timeout())
        if self._read_paused:
            self._read_paused = False
            self.transport.resumeProducing()
        self._process()

    async def _execute(
        self,
        tag: str,
        name: str,
        handler: Handler,
        items: list[Item],
        command: Command,
    ) -> None:
        started = tick()  # a look at the folder after this one saw all the command must see
        try:
            result = await self._run_handler(name, handler, tag, items)
        except Answered:
            return
        except ParseError as e:
            result = Done("BAD", str(e) or "Syntax error")
        except BadSequence as e:
            result = Done("BAD", str(e))
        except InvalidName as e:
            result = Done("NO", f"Invalid mailbox name: {e}", "CANNOT")
        except UidValidityChanged:
            self.bye("Mailbox UIDVALIDITY changed; please reselect")
            return
        except FolderNotFound:
            result = self._folder_vanished()
        except CancelledError:
            return
        except LockTimeout as e:
            # RFC 5530 3: a temporary failure the client may retry, not a server bug.
            self.log.warn("IMAP {command}: {error}", command=name, error=str(e))
            result = Done("NO", "Mailbox is busy, try again later", "UNAVAILABLE")
        except Exception:
            self.log.failure("IMAP {command} failed for {client}", command=name,
                             client=self.client_address)  # fmt: skip
            result = Done("NO", "Internal server error", "SERVERBUG")
        finally:
            command.discard()
        if self.closing:
            return
        if result.sync and self.view is not None:
            # RFC 3501 7.4.1: no EXPUNGE while answering FETCH, STORE or SEARCH (UID forms ok);
            # SORT and THREAD answer sequence numbers too.
            uid = name == "UID"
            allow = uid or name not in ("FETCH", "STORE", "SEARCH", "SORT", "THREAD")
            view = self.view
            try:
                # The lock may be busy (new mail needs UIDs): wait on timers, as commands do.
                # A look that changes the list leaves its write to the store's worker and
                # meets Flushing (a LockBusy): tried again once that write is on disk.
                fast = fast_look(name)  # NOOP and CHECK look in full (view.FULL_LOOK)
                lines = await self.unlocked(
                    lambda: view.folder.deferred_look(
                        lambda: view.sync(allow_expunge=allow, since=started, fast=fast)
                    )
                )
            except UidValidityChanged:
                self.bye("Mailbox UIDVALIDITY changed; please reselect")
                return
            except FolderNotFound:
                result = self._folder_vanished()
            except LockBusy:
                pass  # the changes are reported after a later command (or during IDLE)
            else:
                if self.closing:
                    return
                self.write_all(lines)
        self.write(result.line(tag))

    async def _run_handler(self, name: str, handler: Handler, tag: str, items: list[Item]) -> Done:
        """The handler's result; run again from a timer while it meets a busy folder lock
        (the reactor never waits for a lock: mailhub.store.lockwait), unless in _NOT_AGAIN."""
        wait: BusyWait | None = None
        try:
            while True:
                try:
                    return await handler(self, tag, items)
                except LockBusy as busy:
                    sub = items[0] if name == "UID" and items else None
                    verb = (sub if isinstance(sub, str) else name).upper()
                    if verb in _NOT_AGAIN or self.closing:
                        raise
                    if wait is None:
                        settings = self.factory.store.settings
                        wait = BusyWait(self.factory.clock, settings.lock_timeout)
                    await wait.pause(busy)
        finally:
            if wait is not None:
                wait.close()  # (its waiting markers: dotlock)

    def _folder_vanished(self) -> Done:
        if self.view is not None:
            # The selected folder was deleted or renamed by another session: deselect.
            self.deselect()
            return Done("NO", "Mailbox no longer exists", "NONEXISTENT", sync=False)
        return Done("NO", "Mailbox does not exist", "NONEXISTENT")

    # --- session state, as the command handlers see it -------------------------------------

    def box(self) -> Mailbox:
        """The logged-in user's mailbox (commands of the authenticated states)."""
        assert self.mailbox is not None
        return self.mailbox

    def selected_view(self) -> View:
        """The selected mailbox (commands of the selected state)."""
        assert self.view is not None
        return self.view

    def select_view(self, view: View) -> None:
        self.view = view
        self.state = SELECTED

    async def unlocked(self, f: Callable[[], T]) -> T:
        """``f()``, run again from reactor timers while it meets a busy folder lock."""
        return await retry_busy(self.factory.clock, self.factory.store.settings.lock_timeout, f)

    async def settle(self, *folders: Folder) -> None:
        """Sync the folders, waiting (on reactor timers) while their locks are busy."""
        for folder in folders:
            # (its write of the list, if it must change, in the store's worker)
            await self.unlocked(lambda folder=folder: folder.deferred_look(folder.sync))  # type: ignore[misc]

    def deselect(self) -> None:
        self._leave_view()
        self.state = AUTHENTICATED

    def _leave_view(self) -> None:
        view, self.view = self.view, None
        if view is not None:
            view.close()

    # --- capabilities ---------------------------------------------------------------------

    def login_allowed(self) -> bool:
        return self._tls_active or self.factory.plaintext_login_allowed(self.client_address)

    def capabilities(self) -> list[str]:
        caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE",
                "UIDPLUS", "MOVE", "UNSELECT", "CHILDREN", "SPECIAL-USE", "CONDSTORE", "QRESYNC",
                "SORT", "SORT=DISPLAY", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES",
                f"APPENDLIMIT={self.factory.limits.max_message_size}"]  # fmt: skip
        if self.state == NOT_AUTHENTICATED:
            if not self._tls_active and self.factory.tls_context_factory is not None:
                caps.append("STARTTLS")
            if self.login_allowed():
                caps.extend(f"AUTH={m}" for m in sasl.MECHANISMS)
            else:
                caps.append("LOGINDISABLED")  # RFC 3501 6.2.3
        return caps

    # --- IDLE (RFC 2177): changes are reported as they happen -------------------------------

    def start_idle(self) -> None:
        """During IDLE: report the selected mailbox's changes now, then whenever the store's
        change feed (mailhub.store.changes) tells of one in it. The feed only wakes the session
        up: what is reported is what the View's sync finds (RFC 3501's rules stay there).
        Without a feed (a factory built without one), look every IDLE_POLL_INTERVAL."""
        self._idling = True
        changes, view = self.factory.changes, self.view
        if changes is not None and view is not None and self.mailbox is not None:
            self._idle_unsubscribe = changes.subscribe(
                self._idle_told, self.mailbox.address, view.folder.name
            )
        self._idle_report()

    def stop_idle(self) -> None:
        self._idling = False
        unsubscribe, self._idle_unsubscribe = self._idle_unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        timer, self._idle_timer = self._idle_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _idle_told(self, changes: list[StoreChange]) -> None:
        if self._idling and (self._idle_timer is None or not self._idle_timer.active()):
            # The feed has just looked at the folder and found these messages changed: its
            # look is the session's too. Not when the folder came or went (the session's own
            # sync finds out what became of its folder).
            self._idle_report(just_looked=all(c.kind in MESSAGE_CHANGES for c in changes))
        # else a look is due anyway (a busy lock's retry): it will see this change too

    def _idle_report(self, just_looked: bool = False) -> None:
        self._idle_timer = None
        if self.closing or not self._idling:
            return
        again = None if self.factory.changes is not None else IDLE_POLL_INTERVAL
        if self.view is not None:
            try:
                # assign=False: new mail's UIDs come from the store's worker, and the feed
                # wakes the session again when they are written (mailhub.store.uidwriter).
                lines = self.view.sync(allow_expunge=True, just_looked=just_looked, assign=False)
                self.write_all(lines)
            except UidValidityChanged:
                self.bye("Mailbox UIDVALIDITY changed; please reselect")
                return
            except FolderNotFound:
                self.bye("Selected mailbox no longer exists")
                return
            except LockBusy:
                if again is None:  # no poll is coming: look again soon (the lock is brief)
                    again = IDLE_BUSY_RETRY
        if again is not None:
            self._idle_timer = self.factory.clock.callLater(again, self._idle_report)


class Output:
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


# Every command: its handler and the states that allow it.
COMMANDS = CommandTable.merged(
    session_commands.COMMANDS,
    mailbox_commands.COMMANDS,
    fetch_command.COMMANDS,
    search_command.COMMANDS,
    message_commands.COMMANDS,
    sort_command.COMMANDS,
)
