"""Listeners behind a load balancer that speaks the PROXY protocol (HAProxy's, v1 and v2).

A listener written ``haproxy:tcp:25:interface=10.0.0.5`` (Twisted's own endpoint syntax) reads
the PROXY header HAProxy puts before the client's first byte (``send-proxy`` /
``send-proxy-v2``), and every part of mailhub that asks who the client is (``getPeer``: the SMTP
session, the ``Received:`` field, SPF, the logs, the login throttle, the per-address connection
limit, the loopback rules, the web's access checks) sees the client's address, not the proxy's.

Twisted's wrapper (twisted.protocols.haproxy) parses the header, but connects the protocol it
wraps at once, before the header has arrived: mailhub's protocols read ``getPeer()`` in
``connectionMade`` (the banner, the connection count), so they would all see the proxy's own
address. ``ProxiedProtocol`` connects the inner protocol only once the header is read, and

- gives the header ``HEADER_TIMEOUT`` seconds, then closes the connection;
- closes a connection whose first bytes are no PROXY header: such a listener must be reachable
  only from the proxy (anyone who can reach it can claim any address);
- takes a header without a client address (v2 ``LOCAL``: the proxy's own health checks; v1
  ``UNKNOWN``; a Unix socket) as an *unknown* client (``""``, ``[unknown]`` in ``Received:``),
  never as the proxy's own address: the proxy connects from 127.0.0.1 and must not lend its
  loopback privileges (plain-text logins, the web page) to whoever it forwards.

The PROXY header comes before any TLS, so the implicit-TLS listeners (smtps, imaps, pop3s) are
written ``haproxy:tcp:...``: mailhub's TLS starts after the header. ``haproxy:ssl:`` would put
the header inside TLS, which no proxy sends; the config refuses it (``inner_description``).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

PREFIX = "haproxy"
# HAProxy sends the header with the connection; a peer silent this long is not a proxy.
HEADER_TIMEOUT = 10.0
# v2: 16 fixed bytes, then at most 65535 (addresses and TLVs); v1: at most 107 bytes.
_V2_SIGNATURE = V2Parser.PREFIX
_V1_SIGNATURE = V1Parser.PROXYSTR
_V1_UNKNOWN = b"PROXY UNKNOWN"


def inner_description(description: str) -> str | None:
    """The endpoint inside ``haproxy:...``; None when ``description`` is not one. Raises
    ValueError for an inner endpoint the PROXY header cannot precede (``ssl:``, a second
    ``haproxy:``)."""
    kind, _, rest = description.partition(":")
    if kind.strip().lower() != PREFIX:
        return None
    inner_kind = rest.partition(":")[0].strip().lower()
    if inner_kind in ("ssl", PREFIX):
        raise ValueError(
            f"the PROXY header comes before TLS, so {PREFIX}:{inner_kind}: cannot work: write "
            f"{PREFIX}:tcp:... (smtps, imaps and pop3s do their TLS after the header)"
        )
    return rest


def _known(address: IAddress | None) -> IAddress:
    """The client address from a header: IPv4/IPv6 in canonical text (v2 sends raw bytes that
    Twisted renders uncompressed), else an unknown client ("")."""
    if isinstance(address, IPv4Address | IPv6Address):
        try:
            ip = ipaddress.ip_address(address.host)
        except ValueError:
            pass
        else:
            kind = IPv6Address if ip.version == 6 else IPv4Address
            return kind("TCP", ip.compressed, address.port)
    return IPv4Address("TCP", "", 0)


class ProxiedProtocol(ProtocolWrapper):
    """Reads the PROXY header, then connects the wrapped protocol (see the module doc)."""

    factory: ProxiedFactory
    transport: Any  # the TCP connection (ITCPTransport: abortConnection, getHost)

    def __init__(self, factory: ProxiedFactory, wrappedProtocol: IProtocol) -> None:
        super().__init__(factory, wrappedProtocol)
        self._buffer = b""  # until the version is known
        self._head = b""  # what the parser was given
        self._parser: V1Parser | V2Parser | None = None
        self._source: IAddress | None = None
        self._destination: IAddress | None = None
        self._connected = False  # the wrapped protocol is connected (the header was read)
        self._deadline: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        # ProtocolWrapper.makeConnection, less connecting the wrapped protocol (see dataReceived)
        directlyProvides(self, providedBy(transport))
        self.connected = 1
        self.transport = transport
        self.factory.registerProtocol(self)
        self._deadline = self.factory.clock.callLater(HEADER_TIMEOUT, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        self._refuse()

    def _refuse(self) -> None:
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._connected:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._parser is None:
            self._buffer += data
            head = self._buffer
            if head.startswith(_V2_SIGNATURE[: len(head)]) and len(head) < 13:
                return  # v2's signature is 12 bytes and the version byte follows
            if head.startswith(_V1_SIGNATURE[: len(head)]) and len(head) < len(_V1_SIGNATURE):
                return
            if head.startswith(_V2_SIGNATURE) and head[12] & 0xF0 == 0x20:
                self._parser = V2Parser()
            elif head.startswith(_V1_SIGNATURE):
                self._parser = V1Parser()
            else:
                self._refuse()  # no PROXY header: not from the proxy
                return
            data, self._buffer = head, b""
        self._head += data  # for "PROXY UNKNOWN" below
        try:
            info, remaining = self._parser.feed(data)
        except (InvalidProxyHeader, ValueError):  # every parse error is an InvalidProxyHeader
            line, crlf, rest = self._head.partition(b"\r\n")
            if not (crlf and line.startswith(_V1_UNKNOWN)):
                self._refuse()
                return
            # Twisted refuses a bare "PROXY UNKNOWN\r\n"; the spec (2.1) has the receiver
            # ignore whatever follows UNKNOWN
            info, remaining = None, rest
            self._source, self._destination = _known(None), None
        else:
            if info is None:
                return
            self._source, self._destination = _known(info.source), info.destination
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self._connected = True
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]  # provides it
        if remaining and self._connected:
            self.wrappedProtocol.dataReceived(remaining)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        if self._connected:
            super().connectionLost(reason)
            return
        # The wrapped protocol never saw this connection: nothing to tell it.
        self.connected = 0
        self.factory.unregisterProtocol(self)

    def getPeer(self) -> IAddress:
        if self._source is not None:
            return self._source
        return IPv4Address("TCP", "", 0)  # before the header: not the proxy's own address

    def getHost(self) -> IAddress:
        if self._destination is not None:
            return self._destination
        host: IAddress = self.transport.getHost()
        return host


class ProxiedFactory(WrappingFactory[ProxiedProtocol]):
    protocol = ProxiedProtocol
    noisy = False  # the listener logs its own start-up line (mailhub.service)

    def __init__(self, wrappedFactory: IProtocolFactory, clock: IReactorTime) -> None:
        super().__init__(wrappedFactory)
        self.clock = clock

    def logPrefix(self) -> str:
        inner = getattr(self.wrappedFactory, "logPrefix", None)
        name = inner() if callable(inner) else type(self.wrappedFactory).__name__
        return f"{name} (PROXY)"


@implementer(IStreamServerEndpoint)
class ProxiedEndpoint:
    """``inner``'s connections, each read through ``ProxiedProtocol``."""

    def __init__(self, inner: IStreamServerEndpoint, clock: IReactorTime) -> None:
        self.inner, self.clock = inner, clock

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self.inner.listen(ProxiedFactory(protocolFactory, self.clock))
