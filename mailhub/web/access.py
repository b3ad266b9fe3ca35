"""Who may use the web page and API: HTTP Basic login (RFC 7617) against the shared portal.

Credentials travel in every request, so they are accepted only over TLS or from loopback (a
TLS-terminating proxy on this host); elsewhere the answer is 403 and the password is never
checked. Logins go through ``mailhub.login.guarded_login`` like SMTP AUTH and IMAP LOGIN. A login
that succeeded is remembered (a keyed hash of the pair, in memory) for ``REMEMBER`` seconds so
the page's many requests do not each pay for an argon2 hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from mailhub.login import LoginResult, Outcome, guarded_login
from mailhub.smtp.policy import is_loopback
from mailhub.throttle import AuthThrottle

REMEMBER = 300.0
REALM = "mailhub"


@dataclass(frozen=True)
class Viewer:
    """Who is asking: ``address`` None means nobody logged in (login is off)."""

    address: str | None
    admin: bool

    def may_see(self, mailbox: str) -> bool:
        return self.admin or mailbox == self.address


ANONYMOUS_ADMIN = Viewer(None, True)


class LoginRequired(Exception):
    """401 with a WWW-Authenticate challenge."""


class LoginRefused(Exception):
    """403: credentials over plain HTTP from afar, or too many failures."""


class LoginBusy(LoginRefused):
    """503: passwords cannot be checked now (the hashing queue is full)."""


def client_host(request: IRequest) -> str:
    peer = request.getClientAddress()
    return getattr(peer, "host", "") or ""


class Access:
    def __init__(
        self,
        *,
        login: bool,
        admins: tuple[str, ...],
        portal: Portal | None,
        throttle: AuthThrottle | None,
        clock: IReactorTime,
    ) -> None:
        self.login, self.admins = login, frozenset(admins)
        self.portal, self.throttle, self.clock = portal, throttle, clock
        self._key = secrets.token_bytes(32)
        self._remembered: dict[bytes, tuple[str, float]] = {}

    def viewer(self, request: IRequest) -> Deferred[Viewer]:
        """The viewer of ``request``, or a failure with LoginRequired / LoginRefused."""
        if not self.login:
            return succeed(ANONYMOUS_ADMIN)
        header = request.getHeader("authorization") or ""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            raise LoginRequired()
        host = client_host(request)
        if not request.isSecure() and not is_loopback(host):
            raise LoginRefused("log in over HTTPS: passwords are not accepted in plain text")
        if self.throttle is not None and self.throttle.refused(host):
            raise LoginRefused("too many failed logins from your address; try again later")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:
            raise LoginRequired() from None
        username, colon, password = decoded.partition(b":")
        if not colon:
            raise LoginRequired()
        digest = hmac.new(self._key, decoded, hashlib.sha256).digest()
        remembered = self._remembered.get(digest)
        now = self.clock.seconds()
        if remembered is not None and remembered[1] > now:
            return succeed(self._viewer(remembered[0]))
        if self.portal is None:
            raise LoginRequired()
        d = guarded_login(self.portal, self.throttle, self.clock, host, username, password)

        def checked(result: LoginResult) -> Viewer:
            if result.outcome is Outcome.REFUSED:
                raise LoginRefused("too many failed logins from your address; try again later")
            if result.outcome is Outcome.UNAVAILABLE:
                raise LoginBusy("cannot check passwords now; try again later")
            if result.outcome is Outcome.FAILED:
                raise LoginRequired()
            address = result.avatar.address
            if len(self._remembered) > 1000:
                self._remembered.clear()
            self._remembered[digest] = (address, now + REMEMBER)
            return self._viewer(address)

        return d.addCallback(checked)

    def _viewer(self, address: str) -> Viewer:
        return Viewer(address, address in self.admins)
