"""SMTP AUTH (RFC 4954) for one session: the SASL exchange, the login, the logout.

The exchange keeps the receiver's command model: the client's responses to ``334`` challenges
are lines read by the protocol's command loop and handed here (``response``) instead of to the
dispatcher, and checking the credentials is one more pending Deferred. Mechanism parsing is
``mailhub.sasl``; whether a session may authenticate at all is the policy's ``check_auth``; the
login itself (throttle, portal, delay) is ``mailhub.login``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailhub import sasl
from mailhub.login import LoginResult, Outcome, guarded_login
from mailhub.smtp import replies as R
from mailhub.smtp.replies import Reply
from mailhub.smtp.session import Session

if TYPE_CHECKING:
    from mailhub.smtp.factory import SMTPServerFactory


class SMTPAuth:
    """The AUTH state of one session. ``logged_in(user)`` is the protocol's: it records a
    successful login, or says False when the session is closing (the login is undone then)."""

    def __init__(
        self, factory: SMTPServerFactory, log: Logger, logged_in: Callable[[str], bool]
    ) -> None:
        self._factory, self._log, self._logged_in = factory, log, logged_in
        self._session = Session("")
        # The SASL exchange waiting for the client's next response line (None: no exchange).
        self.mechanism: sasl.Mechanism | None = None
        self._delay: Deferred | None = None  # the throttle's pending delay
        self._logout: object = None  # the realm's logout for the session user

    def start(self, arg: str, session: Session) -> Reply | Deferred:
        """``AUTH mechanism [initial-response]``, once the protocol has checked the session
        state (EHLO said, not yet authenticated, no mail transaction: RFC 4954 4)."""
        f = self._factory
        name, _, initial = arg.partition(" ")
        if not name or " " in initial:
            return R.AUTH_USAGE
        mechanism = sasl.mechanism(name)
        if mechanism is None:
            return R.AUTH_UNKNOWN_MECHANISM
        allowed = f.policy.check_auth(session)
        if not allowed.accepted:
            return allowed.reply  # 538 5.7.11 before TLS (RFC 4954 6)
        if f.throttle is not None and f.throttle.refused(session.client_address):
            # RFC 4954 6 leaves it to the server; we stop guessing before any password is read.
            return R.AUTH_TOO_MANY_FAILURES
        self._session = session
        self.mechanism = mechanism
        if initial:
            # RFC 4954 4: the initial response, "=" for an empty one.
            return self.response(initial.encode("ascii", "replace"))
        return self._step(None)

    def response(self, line: bytes) -> Reply | Deferred:
        """One client response: a line of the command loop, or the initial response."""
        if line == b"*":
            self.mechanism = None  # RFC 4954 4: the client cancels
            return R.AUTH_CANCELLED
        try:
            data = sasl.decode_response(line)
        except sasl.SASLError:
            self.mechanism = None
            return R.AUTH_BAD_BASE64
        return self._step(data)

    def abandon(self) -> None:
        """The exchange in progress ends (a response line that cannot be used)."""
        self.mechanism = None

    def reset(self) -> None:
        """Forget the exchange and log the user out (STARTTLS: RFC 3207 4.2)."""
        self.mechanism = None
        logout, self._logout = self._logout, None
        if callable(logout):
            logout()

    def connection_lost(self) -> None:
        """Cancel a pending delay (a check already running is still counted: mailhub.login)."""
        delay, self._delay = self._delay, None
        if delay is not None:
            delay.cancel()
        self.reset()

    def _step(self, data: bytes | None) -> Reply | Deferred:
        mechanism = self.mechanism
        assert mechanism is not None
        try:
            result = mechanism.step(data)
        except sasl.SASLError:
            self.mechanism = None
            return R.AUTH_MALFORMED
        if isinstance(result, bytes):
            # RFC 4954 4: "334 " and the base64 challenge; RFC 3463 has no class-3 codes.
            return Reply(334, None, sasl.encode_challenge(result))
        self.mechanism = None
        return self._authenticate(result, mechanism.name)

    def _authenticate(self, credentials: sasl.SASLCredentials, mechanism: str) -> Deferred:
        f = self._factory
        client = self._session.client_address
        # RFC 4616 2: we let nobody act as another user; a failed login like any other.
        refuse = not credentials.acts_as_itself()
        if refuse:
            self._log.info(
                "AUTH {mechanism} from {client}: authorization identity refused",
                mechanism=mechanism,
                client=client,
            )
        portal = f.portal
        assert portal is not None  # smtp_AUTH answers 502 without one: no exchange starts
        d = self._delay = guarded_login(
            portal, f.throttle, f.clock, client, credentials.authcid, credentials.password,
            refuse=refuse,
        )  # fmt: skip
        return d.addCallbacks(self._result, self._cancelled, callbackArgs=(mechanism,))

    def _result(self, result: LoginResult, mechanism: str) -> Reply:
        self._delay = None
        client = self._session.client_address
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
        if not self._logged_in(user.address):
            logout()
            return R.AUTH_OK  # nobody is listening
        self._logout = logout
        self._log.info(
            "authenticated {user} from {client} with {mechanism}",
            event="auth",
            user=user.address,
            client=client,
            mechanism=mechanism,
        )
        return R.AUTH_OK

    def _cancelled(self, failure: Failure) -> Reply:
        failure.trap(CancelledError)  # the client went away while we waited
        self._delay = None
        return R.AUTH_FAILED
