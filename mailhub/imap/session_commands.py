"""Commands of the session itself: CAPABILITY, NOOP, LOGOUT, ID (RFC 2971), ENABLE (RFC 5161),
STARTTLS, LOGIN, AUTHENTICATE (SASL-IR, RFC 4959) and IDLE (RFC 2177)."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from mailhub import sasl
from mailhub.imap import arguments as A
from mailhub.imap.dispatch import (
    ANY,
    AUTHED,
    AUTHENTICATED,
    LOGOUT,
    NOT_AUTHENTICATED,
    Answered,
    CommandTable,
    Done,
    utf8,
)
from mailhub.imap.parser import Atom, Item, ParseError, Refused
from mailhub.login import Outcome, guarded_login
from mailhub.store import Mailbox
from mailhub.store.errors import LockBusy
from mailhub.store.lockwait import BusyWait

if TYPE_CHECKING:
    from mailhub.imap.protocol import IMAPServerProtocol

COMMANDS = CommandTable()

# Client identification fields we keep (RFC 2971 3.3: at most 30 pairs, values <= 1024 octets).
ID_MAX_PAIRS = 30


def enable_condstore(session: IMAPServerProtocol, *, announce: bool = True) -> None:
    """CONDSTORE is on from now (ENABLE, or a command using MODSEQ: RFC 7162 3.1)."""
    if session.condstore:
        return
    session.condstore = True
    view = session.view
    if view is not None:
        view.condstore = True
        if announce:
            # RFC 7162 3.1: the first CONDSTORE-enabling command tells HIGHESTMODSEQ.
            session.write(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % view.highestmodseq)


# --- any state ------------------------------------------------------------------------------


@COMMANDS.command("CAPABILITY", ANY)
async def capability(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    A.expect_count(items, 0)
    session.write(utf8("* CAPABILITY " + " ".join(session.capabilities()) + "\r\n"))
    return Done("OK", "CAPABILITY completed")


@COMMANDS.command("NOOP", ANY)
async def noop(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    return Done("OK", "NOOP completed")


@COMMANDS.command("LOGOUT", ANY)
async def logout(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    session.state = LOGOUT
    session.bye("Logging out", then=Done("OK", "LOGOUT completed").line(tag))
    raise Answered()


@COMMANDS.command("ID", ANY)
async def identify(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    # RFC 2971: NIL or a list of field/value pairs; we log the client's and name ourselves.
    A.expect_count(items, 1)
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
                A.astring(value).decode("utf-8", "replace")[:1024]
            )  # fmt: skip
        session.log.info("client {client} ID {fields}", client=session.client_address,
                         fields=fields)  # fmt: skip
    elif not (isinstance(arg, Atom) and arg.upper() == "NIL"):
        raise ParseError("ID takes NIL or a list")
    session.write(b'* ID ("name" "mailhub" "vendor" "mailhub")\r\n')
    return Done("OK", "ID completed")


@COMMANDS.command("ENABLE", AUTHED)
async def enable(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    if not items:
        raise ParseError("ENABLE needs capability names")
    enabled = []
    for item in items:
        name = A.atom(item, "capability").upper()
        if name == "CONDSTORE" and "CONDSTORE" not in enabled:
            enable_condstore(session, announce=False)
            enabled.append("CONDSTORE")
        elif name == "QRESYNC" and "QRESYNC" not in enabled:
            # RFC 7162 3.2.3: QRESYNC implies CONDSTORE (named only if asked for).
            enable_condstore(session, announce=False)
            session.qresync = True
            if session.view is not None:
                session.view.qresync = True
            enabled.append("QRESYNC")
    session.write(utf8("* ENABLED" + "".join(" " + e for e in enabled) + "\r\n"))
    return Done("OK", "ENABLE completed")


# --- not authenticated ----------------------------------------------------------------------


@COMMANDS.command("STARTTLS", (NOT_AUTHENTICATED,))
async def starttls(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    A.expect_count(items, 0)
    ctx = session.factory.tls_context_factory
    if session.tls_active or ctx is None:
        return Done("BAD", "TLS is already active" if session.tls_active else "No TLS here")
    session.write(Done("OK", "Begin TLS negotiation now").line(tag))
    session.start_tls(ctx)
    raise Answered()  # answered already; the session goes on


@COMMANDS.command("LOGIN", (NOT_AUTHENTICATED,))
async def login(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    A.expect_count(items, 2)
    user, password = A.astring(items[0], "user name"), A.astring(items[1], "password")
    if not session.login_allowed():
        return Done("NO", "Use STARTTLS first", "PRIVACYREQUIRED")
    return await _login(session, tag, user, password, "LOGIN")


@COMMANDS.command("AUTHENTICATE", (NOT_AUTHENTICATED,))
async def authenticate(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    A.expect_count(items, 1, 2)
    name = A.atom(items[0], "mechanism")
    if not session.login_allowed():
        return Done("NO", "Use STARTTLS first", "PRIVACYREQUIRED")
    mechanism = sasl.mechanism(name)
    if mechanism is None:
        return Done("NO", f"Unsupported mechanism {name[:40]}", "CANNOT")
    response: bytes | None = None
    if len(items) == 2:  # RFC 4959 SASL-IR: "=" is an empty initial response
        response = _sasl_decode(A.astring(items[1]))
        if response is None:
            return Done("BAD", "Invalid base64 in initial response")
    while True:
        try:
            result = mechanism.step(response)
        except sasl.SASLError as e:
            return Done("BAD", f"AUTHENTICATE failed: {e}")
        if isinstance(result, sasl.SASLCredentials):
            break
        session.write(utf8("+ " + sasl.encode_challenge(result) + "\r\n"))
        line = await session.next_line()
        if isinstance(line, Refused):
            return Done("BAD", "Response too long")
        if line == b"*":
            return Done("BAD", "AUTHENTICATE cancelled")  # RFC 3501 6.2.2
        response = _sasl_decode(line)
        if response is None:
            return Done("BAD", "Invalid base64 response")
    # RFC 4616 2: nobody may act as another user; a failed login like any other.
    return await _login(session, tag, result.authcid, result.password, f"AUTHENTICATE {name}",
                        refuse=not result.acts_as_itself())  # fmt: skip


def _sasl_decode(data: bytes) -> bytes | None:
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


async def _login(
    session: IMAPServerProtocol,
    tag: str,
    user: bytes,
    password: bytes,
    how: str,
    *,
    refuse: bool = False,
) -> Done:
    f = session.factory
    # Cancelled with the command if the connection goes away meanwhile (connectionLost); a
    # check already running is still counted (mailhub.login).
    result = await guarded_login(
        f.portal, f.throttle, f.clock, session.client_address, user, password, refuse=refuse
    )
    if result.outcome is Outcome.REFUSED:
        session.bye("Too many authentication failures")
        raise Answered()
    if result.outcome is Outcome.UNAVAILABLE:
        # RFC 5530 3: UNAVAILABLE, temporary (busy: nothing was checked).
        return Done("NO", "Cannot check credentials now, try again later", "UNAVAILABLE")
    if result.outcome is Outcome.FAILED:
        session.log.info("IMAP {how} failed from {client}", event="auth_failed", how=how,
                         client=session.client_address)  # fmt: skip
        failed = Done("NO", "Authentication failed", "AUTHENTICATIONFAILED")
        if result.disconnect:
            session.write(failed.line(tag))
            session.bye("Too many authentication failures")
            raise Answered()
        return failed
    assert result.login is not None
    _iface, avatar, avatar_logout = result.login
    if session.closing:
        avatar_logout()
        raise Answered()
    session.logged_in()
    session.avatar_logout = avatar_logout
    session.user = avatar.address
    box = f.store.mailbox(avatar.address) if f.store.has_mailbox(avatar.address) else None
    if box is None or box.missing_special_folders():
        # A first login makes the mailbox or its folders: directories, a dozen fsyncs and
        # the subscriptions lock, in a worker (never the reactor's wait).
        box = await _made(session, avatar.address)
    session.mailbox = box
    session.state = AUTHENTICATED
    session.log.info("IMAP login {user} from {client} ({how})", event="auth", user=session.user,
                     client=session.client_address, how=how)  # fmt: skip
    caps = " ".join(session.capabilities())
    return Done("OK", "Logged in", f"CAPABILITY {caps}")


async def _made(session: IMAPServerProtocol, address: str) -> Mailbox:
    """``MailStore.login_mailbox`` in the factory's worker; run inline (tests), a busy
    subscriptions lock is waited for on the clock, as ``session.unlocked`` does."""
    f = session.factory
    wait = BusyWait(f.clock, f.store.settings.lock_timeout)
    try:
        while True:
            try:
                box: Mailbox = await f.run(f.store.login_mailbox, address)
                return box
            except LockBusy as busy:
                await wait.pause(busy)
    finally:
        wait.close()  # (its waiting markers: dotlock)


# --- authenticated: IDLE --------------------------------------------------------------------


@COMMANDS.command("IDLE", AUTHED)
async def idle(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    A.expect_count(items, 0)
    session.write(b"+ idling\r\n")
    # The autologout timer keeps running (RFC 2177 3: clients re-IDLE within 29 minutes).
    session.setTimeout(session.factory.limits.imap_idle_timeout)
    session.start_idle()
    try:
        line = await session.next_line()
    finally:
        session.stop_idle()
    if isinstance(line, Refused) or line.upper() != b"DONE":
        return Done("BAD", "Expected DONE")  # RFC 2177 3: only DONE ends IDLE
    return Done("OK", "IDLE terminated")
