"""Who may use the web page and API: which Host names it answers to (``HostCheck``, against DNS
rebinding), and HTTP Basic login (RFC 7617) against the shared portal.

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
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from mailhub.login import LoginResult, Outcome, guarded_login
from mailhub.net import is_loopback
from mailhub.throttle import AuthThrottle

REMEMBER = 300.0


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


def host_name(header: str) -> str | None:
    """The host of a Host header (RFC 9110 7.2: uri-host [":" port]), lower case, without the
    port, brackets or a trailing dot; None when it is not of that form."""
    text = header.strip().lower()
    if text.startswith("["):  # IP-literal (RFC 3986 3.2.2)
        name, bracket, port = text[1:].partition("]")
        if not bracket:
            return None
    else:
        name, colon, port = text.rpartition(":")
        if not colon:
            name, port = text, ""
        elif ":" in name:
            return None  # an IPv6 address must be in brackets
    port = port.removeprefix(":")
    if not name or (port and not port.isdigit()):
        return None
    return name.rstrip(".") or None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return address


class HostCheck:
    """DNS rebinding defence: a page on ``evil.test`` that re-resolves its name to 127.0.0.1
    reaches this server with ``Host: evil.test``, and the browser counts it as evil.test's own
    origin, so neither the same-origin policy nor an Origin check stops it. Only a Host we know
    is answered (as Mailpit, Jupyter and Vite do): loopback names (``localhost``,
    ``*.localhost``, which browsers resolve to loopback themselves, RFC 6761 6.3), loopback
    addresses, the address the request arrived on (the --interface address, or the one a
    wildcard listener was reached at: an IP literal cannot be rebound), the configured host
    name and ``[web] allowed_hosts``."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names: frozenset[str] = frozenset()
        self.addresses: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address] = frozenset()
        for name in names:
            address = _ip(name.strip("[]"))
            if address is not None:
                self.addresses |= {address}
            else:
                self.names |= {name.lower().rstrip(".")}

    def allows(self, request: IRequest) -> bool:
        header = request.getHeader("host")
        name = host_name(header) if header is not None else None
        if name is None:
            return False
        if name == "localhost" or name.endswith(".localhost") or name in self.names:
            return True
        address = _ip(name)
        if address is None:
            return False
        local = _ip(getattr(request.getHost(), "host", "") or "")
        return address.is_loopback or address == local or address in self.addresses


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
