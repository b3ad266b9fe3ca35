"""The POP3 listener's factory: settings, store, portal, throttle, clock and connection counts."""

from __future__ import annotations

from collections.abc import Callable

from twisted.cred.portal import Portal
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from mailhub.config import Limits
from mailhub.connlimit import CountedSession, Slot, counter_for
from mailhub.pop3.maildrop import Maildrop, open_maildrop
from mailhub.pop3.protocol import POP3ServerProtocol
from mailhub.store import MailStore
from mailhub.throttle import AuthThrottle


class POP3ServerFactory(ServerFactory[POP3ServerProtocol]):
    """Builds ``POP3ServerProtocol`` sessions sharing one configuration.

    ``tls_context_factory`` turns on STLS (RFC 2595); leave it None on an implicit-TLS listener
    (pop3s: the service wraps this factory with ``tls_server_factory``) or where no certificate
    is configured. ``plaintext_login_allowed(client_host)`` says whether USER/PASS/AUTH may be
    used before TLS. ``open_maildrop`` is injectable for tests.
    """

    protocol = POP3ServerProtocol

    def __init__(
        self,
        *,
        hostname: str,
        limits: Limits,
        store: MailStore,
        portal: Portal,
        clock: IReactorTime,
        tls_context_factory: IOpenSSLServerConnectionCreator | None = None,
        throttle: AuthThrottle | None = None,
        plaintext_login_allowed: Callable[[str], bool] = lambda host: False,
        log: Logger | None = None,
        open_maildrop: Callable[[MailStore, str], Maildrop] = open_maildrop,
    ) -> None:
        self.hostname = hostname
        self.limits = limits
        self.store = store
        self.portal = portal
        self.clock = clock
        self.tls_context_factory = tls_context_factory
        self.throttle = throttle
        self.plaintext_login_allowed = plaintext_login_allowed
        self.log = log if log is not None else Logger(namespace="mailhub.pop3")
        self._open_maildrop = open_maildrop
        self.connection_count = counter_for(limits, evict=True)

    def open_maildrop(self, address: str) -> Maildrop:
        return self._open_maildrop(self.store, address)

    def connection_opened(self, client_address: str, session: CountedSession) -> Slot | None:
        """Count a new connection; None (not counted) when a limit says refuse it."""
        return self.connection_count.admit(client_address, session)

    def connection_closed(self, slot: Slot) -> None:
        self.connection_count.release(slot)
