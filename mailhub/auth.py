"""One ``twisted.cred`` portal for SMTP AUTH, IMAP and POP3.

- ``UserDBChecker`` checks ``IUsernamePassword`` against the users file (``mailhub.users``). The
  hash is slow on purpose (argon2: 64 MiB, tens of milliseconds), so it runs off the reactor
  thread, by default in a small dedicated pool (``HashingPool``) that also caps how much memory
  and CPU a burst of logins can take. The avatar ID is the canonical address.
- ``DevChecker`` is the dev stack's: any username and password is accepted, and the user is
  created (its mailbox) on first login. Nothing is written but the mailbox: no password hashes.
  The name must be an address by SMTP's rules (``dev_login_address``): it becomes a directory.
- ``MailRealm`` turns an avatar ID into a ``MailUser`` (``IMailUser``); the IMAP and POP3
  services register factories for their own avatar interfaces (``IAccount``, ``IMailbox``) over
  the same user.
- ``PasswordCredentials`` is an ``IUsernamePassword`` whose password is never in its repr, for
  protocol code that decodes AUTH PLAIN/LOGIN itself.

Passwords never reach a log line, a repr or an exception message.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from twisted.application.service import Service
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import Attribute, Interface, implementer

from mailhub.addresses import AddressError, parse_path, quote_local_part
from mailhub.store.names import new_localpart_problem
from mailhub.users import UserDB, canonical_user

log = Logger()
R = TypeVar("R")


class Runner(Protocol):
    """Runs a blocking call somewhere other than the reactor thread; a Deferred of its result."""

    def __call__(self, f: Callable[..., R], /, *args: Any) -> Deferred[R]: ...


def reactor_threads(f: Callable[..., R], /, *args: Any) -> Deferred[R]:
    """The reactor's shared thread pool (``deferToThread``)."""
    return deferToThread(f, *args)


class HashQueueFull(Exception):
    """The hashing pool has ``max_pending`` checks queued or running: refused before hashing
    (the protocols answer a temporary error: SMTP 454 4.7.0, IMAP NO [UNAVAILABLE], POP3 -ERR
    [SYS/TEMP])."""


class HashingPool(Service):
    """A small thread pool for password hashing, as a service (started and stopped with the
    server). ``threads`` bounds concurrent hashes: each argon2 verify takes 64 MiB and a core,
    so the default matches a small machine. ``max_pending`` bounds the checks queued or running:
    beyond it ``run`` fails at once with ``HashQueueFull``, so a flood of guesses cannot make a
    real login wait behind a long queue (it waits behind at most ``max_pending`` hashes)."""

    def __init__(
        self, reactor: IReactorFromThreads | None = None, threads: int = 2, max_pending: int = 16
    ) -> None:
        if threads < 1 or max_pending < 1:
            raise ValueError("threads and max_pending must be >= 1")
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = cast(IReactorFromThreads, default_reactor)  # the installed reactor
        self._reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name="mailhub-password-hash")
        self.max_pending = max_pending
        self.pending = 0  # checks queued or running
        self.refused = 0  # checks refused with HashQueueFull (for tests and metrics)

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        if not self.running:
            return  # stopping twice (a parent stopped again) must not stop the pool twice
        super().stopService()
        self.pool.stop()

    def run(self, f: Callable[..., R], /, *args: Any) -> Deferred[R]:
        if self.pending >= self.max_pending:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warn(
                    "password hashing queue full ({pending}): refusing logins for now "
                    "({refused} so far)",
                    pending=self.pending,
                    refused=self.refused,
                )
            return fail(HashQueueFull())
        self.pending += 1
        d = deferToThreadPool(self._reactor, self.pool, f, *args)

        def done(result: object) -> object:
            self.pending -= 1
            return result

        return d.addBoth(done)


def _text(value: str | bytes) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value


def _loggable(username: str | bytes) -> str:
    """A username fit for a log line: bounded, control characters escaped (it came from the
    network and may even be a password typed in the wrong field, so only its start is kept)."""
    text = _text(username) or repr(username)
    return repr(text[:64] + ("..." if len(text) > 64 else ""))


# --- credentials -------------------------------------------------------------------------------


@implementer(IUsernamePassword)
@dataclass(frozen=True)
class PasswordCredentials:
    """A username and password from AUTH PLAIN/LOGIN, IMAP LOGIN or POP3 USER/PASS.

    ``password`` is left out of the repr (and so of tracebacks and log events that show it)."""

    username: bytes
    password: bytes = field(repr=False)

    def checkPassword(self, password: bytes) -> bool:
        return hmac.compare_digest(self.password, password)


# --- dev login names ---------------------------------------------------------------------------


def dev_login_address(name: str, default_domain: str = "localhost") -> str:
    """A dev stack login name -> the canonical address whose mailbox it gets, or ValueError.

    Parsed as an SMTP path (RFC 5321 4.1.2 with RFC 6531 UTF-8, A-labels checked as RCPT TO
    checks them), then held to what may name a mailbox directory: an unquoted local part of
    at most 64 octets without ``*``, ``%`` or ``+`` (a tag), a domain name (no address
    literal), and no control, format or space characters anywhere."""
    if "@" not in name:
        name = f"{name}@{default_domain}"
    try:
        mailbox, rest = parse_path(f"<{name}>")
    except AddressError as e:
        raise ValueError(str(e)) from None
    if rest or mailbox.written != name:
        raise ValueError("not a plain address (no source route)")
    if mailbox.is_literal:
        raise ValueError("the domain must be a name, not an address literal")
    local = mailbox.local
    if quote_local_part(local) != local:
        raise ValueError("a quoted local part cannot name a mailbox")
    problem = new_localpart_problem(local.lower())  # the rule RCPT TO's catch-all follows
    if problem is not None:
        raise ValueError(problem)
    return canonical_user(f"{local}@{mailbox.domain}")


# --- checkers ----------------------------------------------------------------------------------


@implementer(ICredentialsChecker)
class UserDBChecker:
    """``IUsernamePassword`` against the users file; the avatar ID is the canonical address."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: UserDB, run: Runner = reactor_threads) -> None:
        self._users = users
        self._run = run

    # ignore: avatar ids are str addresses here; Twisted's hints say bytes (cred predates str)
    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[str]:  # type: ignore[override]
        username = credentials.username

        def checked(address: str | None) -> str:
            if address is None:
                log.info("authentication failed for {username}", username=_loggable(username))
                raise UnauthorizedLogin("authentication failed")
            return address

        d = self._run(self._users.authenticate, username, credentials.password)
        return d.addCallback(checked)


@implementer(ICredentialsChecker)
class DevChecker:
    """Development stack: every username/password pair logs in (the password is ignored and
    kept nowhere). A username without ``@`` gets ``@<default_domain>``. The first login of an
    address calls ``on_first_login(address)`` (in ``run``: it creates a Maildir), once per
    process."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        *,
        default_domain: str = "localhost",
        on_first_login: Callable[[str], object] | None = None,
        run: Runner = reactor_threads,
    ) -> None:
        self._default_domain = default_domain
        self._on_first_login = on_first_login
        self._run = run
        self.known: set[str] = set()

    # ignore: avatar ids are str addresses here; Twisted's hints say bytes (cred predates str)
    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[str]:  # type: ignore[override]
        name = _text(credentials.username)
        try:
            if name is None:
                raise ValueError("not UTF-8")
            address = dev_login_address(name, self._default_domain)
        except ValueError:
            log.info("dev login refused for {username}", username=_loggable(credentials.username))
            return fail(UnauthorizedLogin("not a usable address"))
        if address in self.known or self._on_first_login is None:
            self.known.add(address)
            return succeed(address)

        def created(_: object) -> str:
            self.known.add(address)
            log.info("dev stack: created user {address} on first login", address=address)
            return address

        return self._run(self._on_first_login, address).addCallback(created)


# --- realm -------------------------------------------------------------------------------------


class IMailUser(Interface):
    """A logged-in mail user; IMAP and POP3 adapt it to their own avatars."""

    address = Attribute("canonical address (str): local part lower case, IDNA A-label domain")


@implementer(IMailUser)
@dataclass(frozen=True)
class MailUser:
    address: str


AvatarFactory = Callable[[MailUser], Any]


@implementer(IRealm)
class MailRealm:
    """Avatar ID (canonical address) -> avatar for the first interface the protocol asks for
    that we serve: ``IMailUser`` always, others through ``factories`` (e.g. the IMAP service
    registers ``{IAccount: lambda user: Account(store, user.address)}``). An avatar with a
    ``logout()`` method gets it called on logout."""

    def __init__(self, factories: Mapping[type[Interface], AvatarFactory] | None = None) -> None:
        self.factories: dict[type[Interface], AvatarFactory] = {IMailUser: lambda user: user}
        self.factories.update(factories or {})

    def requestAvatar(  # type: ignore[override]  # avatar ids are str (see requestAvatarId)
        self, avatarId: str | bytes, mind: object, *interfaces: type[Interface]
    ) -> tuple[type[Interface], Any, Callable[[], None]]:
        address = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        user = MailUser(address)
        for interface in interfaces:
            factory = self.factories.get(interface)
            if factory is not None:
                avatar = factory(user)
                return interface, avatar, getattr(avatar, "logout", lambda: None)
        raise NotImplementedError(f"no avatar for {', '.join(map(str, interfaces))}")


def make_portal(checker: ICredentialsChecker, realm: MailRealm | None = None) -> Portal:
    """The one portal the SMTP submission, IMAP and POP3 services share."""
    return Portal(realm or MailRealm(), [checker])
