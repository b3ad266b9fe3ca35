"""The IMAP listener's factory: limits, store, portal, throttle, TLS, clock, connection counts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from mailhub.config import Limits
from mailhub.connlimit import CountedSession, Slot, counter_for
from mailhub.imap.protocol import IMAPServerProtocol
from mailhub.store import MailStore
from mailhub.store.changes import StoreChanges
from mailhub.throttle import AuthThrottle


class IMAPServerFactory(ServerFactory[IMAPServerProtocol]):
    """Builds ``IMAPServerProtocol`` sessions sharing one configuration.

    ``tls_context_factory`` turns on STARTTLS (None on an implicit-TLS listener, whose
    transport is already TLS). ``plaintext_login_allowed(client_host)`` says whether LOGIN and
    AUTHENTICATE may be used before TLS (otherwise LOGINDISABLED is advertised, RFC 3501 6.2.3).
    ``run(f, *args)`` runs disk-heavy work (APPEND's fsync and link) off the reactor thread and
    returns a Deferred (tests pass one that runs inline). ``changes``: the store's change feed
    (mailhub.store.changes), which wakes IDLE sessions up; without it IDLE polls.
    """

    protocol = IMAPServerProtocol

    def __init__(
        self,
        *,
        hostname: str,
        limits: Limits,
        store: MailStore,
        portal: Portal,
        clock: IReactorTime,
        tls_context_factory: IOpenSSLServerConnectionCreator | None = None,
        plaintext_login_allowed: Callable[[str], bool] = lambda host: False,
        throttle: AuthThrottle | None = None,
        log: Logger | None = None,
        run: Callable[..., Deferred[Any]] = deferToThread,
        changes: StoreChanges | None = None,
    ) -> None:
        self.hostname = hostname
        self.limits = limits
        self.store = store
        self.portal = portal
        self.clock = clock
        self.tls_context_factory = tls_context_factory
        self.plaintext_login_allowed = plaintext_login_allowed
        self.throttle = throttle
        self.run = run
        # The store's change feed: IDLE sleeps until it tells of a change (else it polls).
        self.changes = changes
        self.log = log if log is not None else Logger(namespace="mailhub.imap")
        self.connection_count = counter_for(limits, evict=True)

    def connection_opened(self, client_address: str, session: CountedSession) -> Slot | None:
        """Count a new connection; None (not counted) when a limit says refuse it."""
        return self.connection_count.admit(client_address, session)

    def connection_closed(self, slot: Slot) -> None:
        self.connection_count.release(slot)
