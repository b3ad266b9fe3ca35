"""One login, guarded: reserve an attempt, wait the per-user delay, check, record, wait.

SMTP AUTH, IMAP LOGIN/AUTHENTICATE, POP3 USER/PASS/AUTH and the web's Basic login all check a
password through ``guarded_login``, so the throttle's rules (``mailhub.throttle``) hold the same
everywhere and in the right order:

1. ``throttle.begin`` reserves the attempt *before* the check (parallel guesses cannot all get
   through while the first ones are hashing), or the login waits for the attempts in flight
   from its address, or it is refused: ``REFUSED``, nothing is hashed.
2. The per-user delay, if the user name has collected failures from anywhere.
3. The portal checks the password. A full hash queue (``mailhub.auth.HashQueueFull``), the
   suspect share of the checks taken (``Attempt.may_check``) or a checker that cannot answer is
   ``UNAVAILABLE``: a temporary error, nothing counted.
4. A failure is counted, then answered after the throttle's delay (``FAILED``, with
   ``disconnect`` once the address reached its limit); a success forgives this user's own
   failures from this address (``OK``).

Cancelling the returned Deferred (the connection went away) stops a wait; a check already
running still finishes and is recorded (a success's avatar is logged out at once), so dropping
the connection never un-counts a guess.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import Portal
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from mailhub.auth import HashQueueFull, IMailUser, PasswordCredentials
from mailhub.throttle import Attempt, AuthThrottle

log = Logger()


class Outcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"  # wrong credentials (answered after the throttle's delay)
    REFUSED = "refused"  # too many failures from this address: refuse and disconnect
    UNAVAILABLE = "unavailable"  # cannot check now (busy): a temporary error


@dataclass(frozen=True)
class LoginResult:
    outcome: Outcome
    # OK: what ``Portal.login`` gave, (interface, avatar, logout)
    login: tuple[type[Interface], Any, Callable[[], None]] | None = None
    # FAILED: the address has now reached its limit; answer the failure, then disconnect.
    disconnect: bool = False

    @property
    def avatar(self) -> Any:
        return self.login[1] if self.login is not None else None


REFUSED = LoginResult(Outcome.REFUSED)
UNAVAILABLE = LoginResult(Outcome.UNAVAILABLE)


class _GuardedLogin:
    def __init__(
        self,
        portal: Portal,
        throttle: AuthThrottle | None,
        clock: IReactorTime,
        address: str,
        credentials: PasswordCredentials,
        refuse: bool,
        interface: type[Interface],
    ) -> None:
        self.portal, self.throttle, self.clock = portal, throttle, clock
        self.address, self.credentials, self.refuse = address, credentials, refuse
        self.interface = interface
        self.attempt: Attempt | None = None
        self.result: Deferred[LoginResult] = Deferred(self._cancel)
        self.timer: IDelayedCall | None = None
        self.waiting: Deferred[None] | None = None
        self.cancelled = False

    def start(self, _: object = None) -> None:
        self.waiting = None
        if self.throttle is not None:
            self.attempt = self.throttle.begin(self.address, self.credentials.username)
            if self.attempt is None:
                if self.throttle.refused(self.address):
                    self.result.callback(REFUSED)
                    return
                # The attempts in flight could use up what this address has left: wait for one.
                self.waiting = self.throttle.released(self.address)
                self.waiting.addCallbacks(self.start, lambda f: f.trap(CancelledError))
                return
        if self.refuse:
            self._failed()  # counted like a wrong password (no check needed)
            return
        delay = self.attempt.delay if self.attempt is not None else 0.0
        if delay > 0:
            self.timer = self.clock.callLater(delay, self._check, self.credentials)
        else:
            self._check(self.credentials)

    def _check(self, credentials: PasswordCredentials) -> None:
        self.timer = None
        if self.attempt is not None and not self.attempt.may_check():
            self.attempt.abandoned()  # the suspect share of the checks is taken: busy
            self.result.callback(UNAVAILABLE)
            return
        d = self.portal.login(credentials, None, self.interface)
        d.addCallbacks(self._succeeded, self._refused)

    def _succeeded(self, login: tuple) -> None:
        if self.attempt is not None:
            self.attempt.succeeded()
        if self.cancelled:
            login[2]()  # nobody is listening any more
            return
        self.result.callback(LoginResult(Outcome.OK, login))

    def _refused(self, failure: Failure) -> None:
        if not failure.check(UnauthorizedLogin, UnhandledCredentials):
            if self.attempt is not None:
                self.attempt.abandoned()
            if not failure.check(HashQueueFull):
                log.failure("a login could not be checked", failure)
            if not self.cancelled:
                self.result.callback(UNAVAILABLE)
            return
        self._failed()

    def _failed(self) -> None:
        """Count the failure, then answer it after the throttle's delay."""
        if self.attempt is None or self.throttle is None:
            if not self.cancelled:
                self.result.callback(LoginResult(Outcome.FAILED))
            return
        delay = self.attempt.failed()
        if self.cancelled:
            return
        disconnect = self.throttle.refused(self.address)
        self.timer = self.clock.callLater(
            delay, self.result.callback, LoginResult(Outcome.FAILED, disconnect=disconnect)
        )

    def _cancel(self, _: Deferred) -> None:
        self.cancelled = True
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.cancel()  # waiting for room: nothing reserved
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
            if self.attempt is not None:
                self.attempt.abandoned()  # waiting for the per-user delay: nothing checked
        # Otherwise a check is running: its result is still recorded when it comes.


def guarded_login(
    portal: Portal,
    throttle: AuthThrottle | None,
    clock: IReactorTime,
    address: str,
    username: bytes,
    password: bytes,
    *,
    interface: type[Interface] = IMailUser,
    refuse: bool = False,
) -> Deferred[LoginResult]:
    """Check ``username``/``password`` from client ``address`` under the throttle's rules (see
    the module docstring). ``refuse``: the protocol already knows the login must fail (an
    authorization identity that is not the user, RFC 4616 2): counted and answered like a wrong
    password, without a check. The Deferred never fails (cancelling it aside)."""
    guard = _GuardedLogin(
        portal, throttle, clock, address, PasswordCredentials(username, password), refuse,
        interface,
    )  # fmt: skip
    guard.start()
    return guard.result
