"""The remote courier: the queue's ``ICourier`` for recipients in other domains.

For one queue item (all recipients in one destination domain) it finds where to go — the
smarthost, a static route, or the domain's MX hosts — and tries hosts and their addresses in
order until one gives a final answer for every recipient (RFC 5321 5.1). A host that answers the
transaction ends the round, whatever it said: its 4xx recipients are temporary for this round.
Connection-level failures (refused, timeout, 421 greeting, failed TLS with ``verify``) move on to
the next address. Nothing makes ``deliver``'s Deferred fail: surprises become TEMPORARY results.

Sessions are reused (mailhub.relay.pool): after a transaction the connection waits a few seconds
for the next message to the same address; that one starts with RSET. A reused session found
dead (RSET unanswered or refused, or the connection lost before any reply to MAIL) costs no
failure: the message goes on a new connection at once, and only that attempt counts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import dns.resolver
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhub.interfaces import AttemptResult, ICourier, Outcome
from mailhub.relay.client import (
    Message,
    SessionOptions,
    SessionResult,
    SMTPClientProtocol,
    Timeouts,
)
from mailhub.relay.mx import DNSFailure, MXHost, MXResolver
from mailhub.relay.pool import ConnectionPool
from mailhub.relay.tlsclient import TLSPolicy, TLSSessionCache, verifying_creator

SMTP_PORT = 25


class QueueItem(Protocol):
    """What the courier reads of a queue item (``mailhub.queue`` provides it)."""

    queue_id: str
    mail_from: str
    recipients: list[str]
    size: int
    body_type: str
    smtputf8: bool
    envelope_id: str | None

    def open_body(self) -> BinaryIO: ...


@dataclass(frozen=True)
class Smarthost:
    """Send everything through one server with AUTH (RFC 4954) over TLS.

    ``tls``: "starttls" (587, RFC 3207), "implicit" (465, RFC 8314) or "none" (plain text, AUTH
    included: only for a smarthost on the same machine or network). With TLS the certificate is
    always verified for ``host``: we are about to send a password. ``username`` None: no AUTH."""

    host: str
    port: int = 587
    username: str | None = None
    password: str | None = None
    tls: str = "starttls"

    def __repr__(self) -> str:  # never show the password
        return f"Smarthost({self.host!r}, {self.port}, user={self.username!r}, tls={self.tls!r})"


@dataclass(frozen=True)
class _Target:
    host: MXHost
    port: int
    tls: TLSPolicy
    implicit_tls: bool = False
    auth: tuple[str, str] | None = None


@dataclass(frozen=True)
class _SessionKey:
    """Which idle sessions a delivery may reuse: same peer, same TLS and AUTH settings."""

    address: str
    port: int
    tls: TLSPolicy
    tls_hostname: str
    implicit_tls: bool
    plaintext: bool
    auth: tuple[str, str] | None


class _OneProtocol(Factory):
    def __init__(self, protocol: SMTPClientProtocol) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr: Any) -> SMTPClientProtocol:
        return self.protocol_instance


@implementer(ICourier)
class RemoteCourier:
    """Delivers to other domains' mail servers.

    ``resolver``: an ``MXResolver``. ``hostname``: our EHLO name. ``routes``: domain -> (host,
    port), overriding DNS (the host may be a name, resolved with A/AAAA, or an IP address).
    ``smarthost``: send everything there instead. ``tls_policy``: domain -> policy, else
    ``default_tls``. ``ca_certificates``: certificates to trust instead of the platform's (for
    ``verify`` and the verified/unverified log). ``reactor`` makes connections; ``clock`` runs
    the SMTP timeouts and the idle sessions' timers. ``idle_timeout``: seconds an open session
    waits for the next message to the same host (0: one message per connection);
    ``max_messages_per_connection``, ``max_connection_age``: when a session is closed anyway.
    ``close()`` ends the idle sessions (the queue calls it when it stops).
    """

    def __init__(
        self,
        resolver: MXResolver,
        *,
        hostname: str,
        routes: Mapping[str, tuple[str, int]] | None = None,
        smarthost: Smarthost | None = None,
        tls_policy: Mapping[str, TLSPolicy | str] | None = None,
        default_tls: TLSPolicy | str = TLSPolicy.OPPORTUNISTIC,
        ca_certificates: list[Any] | None = None,
        port: int = SMTP_PORT,
        timeouts: Timeouts | None = None,
        connect_timeout: float = 30,
        idle_timeout: float = 5.0,
        max_messages_per_connection: int = 100,
        max_connection_age: float = 300.0,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        log: Logger | None = None,
    ) -> None:
        self.resolver = resolver
        self.hostname = hostname
        self.routes = {k.lower().rstrip("."): v for k, v in (routes or {}).items()}
        self.smarthost = smarthost
        self.tls_policy = {
            k.lower().rstrip("."): TLSPolicy(v) for k, v in (tls_policy or {}).items()
        }
        self.default_tls = TLSPolicy(default_tls)
        self.ca_certificates = ca_certificates
        self.port = port
        self.timeouts = timeouts or Timeouts()
        self.connect_timeout = connect_timeout
        self.reactor = reactor if reactor is not None else global_reactor
        self.clock = clock if clock is not None else self.reactor
        self.log = log if log is not None else Logger(namespace="mailhub.relay")
        # Sessions in a transaction and connections being made (not the pool's: it keeps the
        # idle ones): close() waits for them too, so a stop leaves no socket behind.
        self._busy: set[SMTPClientProtocol] = set()
        self._connecting: set[Deferred[Any]] = set()
        self.tls_sessions = TLSSessionCache()  # resumption for new opportunistic connections
        self.pool = ConnectionPool(
            self.clock,
            idle_timeout=idle_timeout,
            max_messages=max_messages_per_connection if idle_timeout > 0 else 1,
            max_age=max_connection_age,
        )

    def close(self) -> Deferred[None]:
        """QUIT the idle sessions and stop making new ones; fires once every connection is
        closed. A session in a transaction finishes it within the pool's ``close_grace`` (then
        QUITs, as the closed pool takes no session back) or is cut off; the queue repeats an
        attempt whose result it did not see, so nothing is lost."""
        for connecting in list(self._connecting):
            connecting.cancel()
        waits = [self.pool.close(), *(conn.when_closed() for conn in self._busy)]
        if self._busy:
            late = self.clock.callLater(self.pool.close_grace, self._abort_busy)
        else:
            late = None

        def closed(_: object) -> None:
            if late is not None and late.active():
                late.cancel()

        return DeferredList(waits, consumeErrors=True).addCallback(closed)

    def _abort_busy(self) -> None:
        for conn in list(self._busy):
            conn.abort("shutting down")

    # --- ICourier -----------------------------------------------------------------------

    def deliver(self, item: QueueItem) -> Deferred[list[AttemptResult]]:
        d = Deferred.fromCoroutine(self._deliver(item))

        def unexpected(failure: Failure) -> list[AttemptResult]:
            self.log.failure("relay of {queue_id} failed", failure, queue_id=item.queue_id)
            return [
                AttemptResult(r, Outcome.TEMPORARY, "X-mailhub; internal error", "4.3.0")
                for r in item.recipients
            ]

        return d.addErrback(unexpected)

    # --- the round ----------------------------------------------------------------------

    async def _deliver(self, item: QueueItem) -> list[AttemptResult]:
        recipients = tuple(item.recipients)
        if not recipients:
            return []
        domain = recipients[0].rpartition("@")[2].lower().rstrip(".")
        started = time.monotonic()
        try:
            targets = await self._targets(domain)
        except DNSFailure as e:
            outcome = Outcome.PERMANENT if e.permanent else Outcome.TEMPORARY
            self.log.info(
                "relay {queue_id} to {domain}: {outcome} ({why})",
                queue_id=item.queue_id,
                domain=domain,
                outcome=outcome.value,
                why=e.text,
            )
            return [AttemptResult(r, outcome, e.diagnostic, e.status) for r in recipients]

        message = Message(
            mail_from=item.mail_from,
            recipients=recipients,
            open_body=item.open_body,
            size=item.size,
            body_type=item.body_type,
            smtputf8=item.smtputf8,
        )
        last: SessionResult | None = None
        for target in targets:
            for address in target.host.addresses:
                result = await self._attempt(message, target, address, plaintext=False)
                if result.tls_failed and target.tls is TLSPolicy.OPPORTUNISTIC:
                    # The peer may be unreachable with TLS at all (broken or outdated TLS
                    # stack): this attempt goes in plain text (RFC 7435 3).
                    self.log.warn(
                        "relay {queue_id}: TLS with {remote} failed ({why}); retrying without TLS",
                        queue_id=item.queue_id,
                        remote=_remote(target.host, address),
                        why=result.diagnostic,
                    )
                    result = await self._attempt(message, target, address, plaintext=True)
                if result.results is not None:
                    self._log_round(item, domain, target, address, result, started)
                    return result.results
                self.log.info(
                    "relay {queue_id}: {remote} gave no answer: {why}",
                    queue_id=item.queue_id,
                    remote=_remote(target.host, address),
                    why=result.diagnostic,
                )
                last = result
        assert last is not None
        return [
            AttemptResult(r, Outcome.TEMPORARY, last.diagnostic, _temporary(last.status))
            for r in recipients
        ]

    async def _targets(self, domain: str) -> list[_Target]:
        if self.smarthost is not None:
            s = self.smarthost
            auth = (s.username, s.password or "") if s.username is not None else None
            host = await self.resolver.host(s.host)
            policy = TLSPolicy.NONE if s.tls == "none" else TLSPolicy.VERIFY
            return [_Target(host, s.port, policy, s.tls == "implicit", auth)]
        policy = self.tls_policy.get(domain, self.default_tls)
        if domain in self.routes:
            name, port = self.routes[domain]
            return [_Target(await self.resolver.host(name), port, policy)]
        hosts = await self.resolver.mail_hosts(domain)
        return [_Target(h, self.port, policy) for h in hosts]

    async def _attempt(
        self, message: Message, target: _Target, address: str, *, plaintext: bool
    ) -> SessionResult:
        key = _SessionKey(
            address,
            target.port,
            target.tls,
            target.host.name.strip("[]"),
            target.implicit_tls,
            plaintext,
            target.auth,
        )
        conn = self.pool.take(key)
        if conn is not None:
            self._busy.add(conn)
            try:
                result = await self._reuse(conn, message)
            finally:
                self._busy.discard(conn)
            if result is not None:
                self.pool.put(key, conn)
                return result
        opened = await self._connect(target, address, plaintext=plaintext)
        if isinstance(opened, SessionResult):
            return opened
        self._busy.add(opened)
        try:
            result = await opened.deliver(message)
        finally:
            self._busy.discard(opened)
        self.pool.put(key, opened)
        return result

    async def _reuse(self, conn: SMTPClientProtocol, message: Message) -> SessionResult | None:
        """The transaction on an idle session (RSET first), or None if the session turned out
        dead or out of step before the peer answered MAIL: then nothing was sent."""
        result = await conn.deliver(message, reset=True)
        if result.untouched:
            self.log.info(
                "relay: idle session with {remote} unusable ({why}); opening a new one",
                remote=conn.remote,
                why=result.diagnostic,
            )
            self.pool.discard(conn)  # QUIT if it is still open
            return None
        return result

    async def _connect(
        self, target: _Target, address: str, *, plaintext: bool
    ) -> SMTPClientProtocol | SessionResult:
        """A new session, open and ready for transactions, or why there is none."""
        remote = _remote(target.host, address)
        options = SessionOptions(
            helo_name=self.hostname,
            tls=target.tls,
            tls_hostname=target.host.name.strip("[]"),
            ca_certificates=self.ca_certificates,
            plaintext=plaintext,
            implicit_tls=target.implicit_tls,
            auth=target.auth,
            timeouts=self.timeouts,
            tls_sessions=self.tls_sessions,
        )
        protocol = SMTPClientProtocol(options, remote=remote, clock=self.clock, log=self.log)
        endpoint_class = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        endpoint: Any = endpoint_class(
            self.reactor, address, target.port, timeout=self.connect_timeout
        )
        if target.implicit_tls:
            endpoint = wrapClientTLS(
                verifying_creator(options.tls_hostname, self.ca_certificates), endpoint
            )
        connecting = endpoint.connect(_OneProtocol(protocol))
        self._connecting.add(connecting)
        try:
            await connecting
        except Exception as e:
            return SessionResult(
                None, "4.4.1", f"X-mailhub; cannot connect to {remote}:{target.port}: {e}"
            )
        finally:
            self._connecting.discard(connecting)
        # Until its greeting and EHLO are through, the new session is ours to close on a stop.
        self._busy.add(protocol)
        try:
            failed = await protocol.ready
        finally:
            self._busy.discard(protocol)
        return protocol if failed is None else failed

    def _log_round(
        self,
        item: QueueItem,
        domain: str,
        target: _Target,
        address: str,
        result: SessionResult,
        started: float,
    ) -> None:
        assert result.results is not None
        for r in result.results:
            self.log.info(
                "relay {queue_id} to <{recipient}> via {remote} port {port}: {outcome} "
                "{status} tls={tls} {connection} ({diagnostic}) in {seconds:.2f}s",
                queue_id=item.queue_id,
                recipient=r.recipient,
                domain=domain,
                remote=_remote(target.host, address),
                port=target.port,
                outcome=r.outcome.value,
                status=r.status,
                tls=result.tls,
                connection="new session"
                if result.transaction <= 1
                else f"reused session (message {result.transaction})",
                diagnostic=r.diagnostic or result.reply or "delivered",
                seconds=time.monotonic() - started,
            )


def _remote(host: MXHost, address: str) -> str:
    """Remote-MTA as RFC 3464 2.3.5 readers expect: "mx.example.org [192.0.2.1]"."""
    if host.name.strip("[]") == address:
        return f"[{address}]"
    return f"{host.name} [{address}]"


def _temporary(status: str) -> str:
    return status if status.startswith("4.") else "4" + status[1:]


def resolver_from_config(nameservers: Sequence[tuple[str, int]] = ()) -> MXResolver:
    """An MXResolver asking ``nameservers`` ((address, port) pairs; all must share one port, a
    dnspython limit) or, when empty, the system's (/etc/resolv.conf)."""
    if not nameservers:
        return MXResolver(dns.resolver.Resolver())
    ports = {port for _, port in nameservers}
    if len(ports) != 1:
        raise ValueError("all [relay] nameservers must use the same port")
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [address for address, _ in nameservers]
    resolver.port = ports.pop()
    return MXResolver(resolver)


def courier_from_config(
    relay: Any, hostname: str, *, ca_certificates: list[Any] | None = None, reactor: Any = None
) -> RemoteCourier:
    """The courier for a ``mailhub.config.RelayConfig`` (routes, smarthost with its password
    file, TLS policies, nameservers, port)."""
    smarthost = None
    if relay.smarthost is not None:
        s = relay.smarthost
        password = None
        if s.password_file is not None:
            password = Path(s.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        smarthost = Smarthost(s.host, s.port, s.username, password, s.tls)
    return RemoteCourier(
        resolver_from_config(relay.nameservers),
        hostname=hostname,
        routes={domain: (host, port) for domain, host, port in relay.routes},
        smarthost=smarthost,
        tls_policy=dict(relay.tls_policy),
        default_tls=relay.tls,
        ca_certificates=ca_certificates,
        port=relay.port,
        idle_timeout=relay.reuse_idle_time,
        max_messages_per_connection=relay.reuse_max_messages,
        max_connection_age=relay.reuse_max_age,
        reactor=reactor,
    )
