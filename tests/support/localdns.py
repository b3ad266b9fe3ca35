"""A small authoritative DNS server on 127.0.0.1 for tests, built on twisted.names.

It answers from a dict, so a test writes its zone in a few lines::

    dns = LocalDNS({"b.test": {"MX": [(10, "mx.b.test")]}, "mx.b.test": {"A": ["127.0.0.1"]}})
    port = dns.start()            # UDP on 127.0.0.1, port chosen by the OS
    resolver = dns.resolver()     # a dnspython Resolver pointed at it

A name not in the dict gets NXDOMAIN; a name in it without the asked type gets an empty NOERROR
answer (dnspython's NoAnswer). Names in ``servfail`` get SERVFAIL; names in ``silent`` are never
answered (so the client times out). ``queries`` records every (name, type) asked.
"""

from __future__ import annotations

from typing import Any

import dns.resolver
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IListeningPort
from twisted.names import common, server
from twisted.names import dns as tdns
from twisted.names.error import DomainError

_TYPES = {"A": tdns.A, "AAAA": tdns.AAAA, "MX": tdns.MX, "CNAME": tdns.CNAME}


class _ServerFailure(Exception):
    """Anything but DomainError makes DNSServerFactory answer SERVFAIL."""


class DictResolver(common.ResolverBase):
    def __init__(self, zone: dict[str, dict[str, list[Any]]], ttl: int = 60) -> None:
        common.ResolverBase.__init__(self)
        self.zone = {k.lower().rstrip("."): v for k, v in zone.items()}
        self.ttl = ttl
        self.servfail: set[str] = set()
        self.silent: set[str] = set()
        self.queries: list[tuple[str, str]] = []

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred:
        text = name.decode("ascii").lower().rstrip(".")
        type_name = tdns.QUERY_TYPES.get(type, str(type))
        self.queries.append((text, type_name))
        if text in self.silent:
            return defer.Deferred()  # never answered: the client times out
        if text in self.servfail:
            return defer.fail(_ServerFailure(text))
        if text not in self.zone:
            return defer.fail(DomainError(text))  # NXDOMAIN
        records = self.zone[text].get(type_name, [])
        answers = [self._record(name, type, value) for value in records]
        return defer.succeed((answers, [], []))

    def _record(self, name: bytes, type: int, value: Any) -> tdns.RRHeader:
        if type == tdns.MX:
            preference, exchange = value
            target = b"" if exchange == "." else exchange.encode()  # "." is the root (null MX)
            payload: Any = tdns.Record_MX(preference, target, ttl=self.ttl)
        elif type == tdns.A:
            payload = tdns.Record_A(value, ttl=self.ttl)
        elif type == tdns.AAAA:
            payload = tdns.Record_AAAA(value, ttl=self.ttl)
        else:
            payload = tdns.Record_CNAME(value.encode(), ttl=self.ttl)
        return tdns.RRHeader(name, type, tdns.IN, self.ttl, payload, auth=True)


class _Factory(server.DNSServerFactory):
    def gotResolverError(self, failure: Any, protocol: Any, message: Any, address: Any) -> None:
        if failure.check(_ServerFailure):  # wanted by the test: SERVFAIL without an error log
            response = self._responseFromMessage(message=message, rCode=tdns.ESERVER)
            self.sendReply(protocol, response, address)
            return
        super().gotResolverError(failure, protocol, message, address)


class LocalDNS:
    """The dict resolver served over UDP on 127.0.0.1."""

    def __init__(self, zone: dict[str, dict[str, list[Any]]]) -> None:
        self.authority = DictResolver(zone)
        self.factory = _Factory(authorities=[self.authority])
        self.port: IListeningPort | None = None

    @property
    def queries(self) -> list[tuple[str, str]]:
        return self.authority.queries

    def start(self) -> int:
        protocol = tdns.DNSDatagramProtocol(self.factory)
        self.port = reactor.listenUDP(0, protocol, interface="127.0.0.1")  # type: ignore[attr-defined]
        return self.port.getHost().port

    def stop(self) -> Any:
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None

    def resolver(self, lifetime: float = 2.0) -> dns.resolver.Resolver:
        """A dnspython resolver that asks only this server."""
        assert self.port is not None, "start() first"
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = self.port.getHost().port
        r.timeout = r.lifetime = lifetime
        r.cache = None
        return r
