"""A small authoritative DNS server on 127.0.0.1 for tests, built on twisted.names.

It answers from a dict, so a test writes its zone in a few lines::

    dns = LocalDNS({"b.test": {"MX": [(10, "mx.b.test")]}, "mx.b.test": {"A": ["127.0.0.1"]}})
    port = dns.start()            # UDP and TCP on 127.0.0.1, port chosen by the OS
    resolver = dns.resolver()     # a dnspython Resolver pointed at it

Record types: A, AAAA (addresses), MX ((preference, exchange); "." is the root, a null MX),
CNAME and PTR (names), TXT and SOA. A TXT value that is a ``str`` (or ``bytes``) is one record of
one string (cut into 255-octet character-strings when longer, as a zone file must); a list or
tuple of strings is one record made of exactly those character-strings ("v=spf1 " "-all"), to
test TXT split in odd places. An ``"SOA"`` entry is ``[(mname, rname, minimum)]``. ``"TTL"``
(an int) sets the TTL of that name's records (default: ``ttl``).

A name not in the dict gets NXDOMAIN; a name in it without the asked type gets an empty NOERROR
answer (dnspython's NoAnswer). With ``negative_ttl`` set, both negative answers carry an SOA
record in the authority section with that TTL and MINIMUM (RFC 2308 3). A name with a CNAME
answers every other type with the CNAME and, while ``follow_cnames`` is on, the chain in the
zone after it (as an authoritative server does for names in its zones; a loop stops the chain;
a chain ending at a name not in the dict is NXDOMAIN, RFC 6604 3).

Names in ``servfail`` get SERVFAIL, in ``refused`` REFUSED; names in ``silent`` are never
answered (so the client times out); names in ``wrong_question`` are answered with another
question in the answer (as a spoofer's guess would be). UDP answers over 512 octets are
truncated (TC, no records: RFC 1035 4.2.1), so the client must ask again over TCP. ``queries``
records every (name, type) asked, ``tcp_queries`` those asked over TCP.
"""

from __future__ import annotations

import socket
from typing import Any

import dns.resolver
from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.names import common, server
from twisted.names import dns as tdns
from twisted.names.error import DomainError

_TYPES = {
    "A": tdns.A,
    "AAAA": tdns.AAAA,
    "MX": tdns.MX,
    "CNAME": tdns.CNAME,
    "TXT": tdns.TXT,
    "PTR": tdns.PTR,
    "SOA": tdns.SOA,
}
UDP_LIMIT = 512  # RFC 1035 2.3.4 / 4.2.1: without EDNS0, a UDP message is at most 512 octets


class _ServerFailure(Exception):
    """Anything but DomainError makes DNSServerFactory answer SERVFAIL."""


class _Refused(Exception):
    """Answered REFUSED."""


class _NXDomain(DomainError):
    """NXDOMAIN, with the authority section to send (the SOA for negative caching)."""

    def __init__(
        self, name: str, authority: list[tdns.RRHeader], answers: tuple[tdns.RRHeader, ...] = ()
    ) -> None:
        super().__init__(name)
        self.authority = authority
        self.answers = list(answers)  # a CNAME chain to a name that does not exist (RFC 6604 3)


def _character_strings(value: Any) -> list[bytes]:
    """One TXT record's character-strings (RFC 1035 3.3.14): each at most 255 octets."""
    if isinstance(value, list | tuple):
        parts = [p.encode() if isinstance(p, str) else bytes(p) for p in value]
        assert all(len(p) <= 255 for p in parts), "a character-string holds at most 255 octets"
        return parts
    data = value.encode() if isinstance(value, str) else bytes(value)
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]


class DictResolver(common.ResolverBase):
    def __init__(
        self,
        zone: dict[str, dict[str, Any]],
        ttl: int = 60,
        negative_ttl: int | None = None,
    ) -> None:
        common.ResolverBase.__init__(self)
        self.zone = {k.lower().rstrip("."): v for k, v in zone.items()}
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.follow_cnames = True
        self.servfail: set[str] = set()
        self.refused: set[str] = set()
        self.silent: set[str] = set()
        self.wrong_question: set[str] = set()
        self.queries: list[tuple[str, str]] = []

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred:
        text = name.decode("ascii").lower().rstrip(".")
        type_name = tdns.QUERY_TYPES.get(type, str(type))
        self.queries.append((text, type_name))
        if text in self.silent:
            return defer.Deferred()  # never answered: the client times out
        if text in self.servfail:
            return defer.fail(_ServerFailure(text))
        if text in self.refused:
            return defer.fail(_Refused(text))
        if text not in self.zone:
            return defer.fail(_NXDomain(text, self._negative(text)))
        answers = self._answers(text, type_name, type)
        end = str(answers[-1].payload.name) if answers and answers[-1].type == tdns.CNAME else ""
        if self.follow_cnames and end and end not in self.zone:
            return defer.fail(_NXDomain(text, self._negative(end), tuple(answers)))
        return defer.succeed((answers, [] if answers else self._negative(text), []))

    def _answers(self, text: str, type_name: str, type: int) -> list[tdns.RRHeader]:
        entry = self.zone[text]
        if type_name == "CNAME" or "CNAME" not in entry:
            return [self._record(text, type, v) for v in entry.get(type_name, [])]
        # A name with a CNAME has no other data (RFC 1034 3.6.2): answer with the alias and, if
        # following, the chain after it as far as the zone goes.
        answers = []
        current, seen = text, {text}
        while True:
            target = self.zone[current]["CNAME"]
            target = (target[0] if isinstance(target, list | tuple) else target).lower()
            answers.append(self._record(current, tdns.CNAME, target))
            if not self.follow_cnames or target in seen or target not in self.zone:
                return answers  # one step, a loop, or out of the zone: the client asks on
            seen.add(target)
            entry = self.zone[target]
            if "CNAME" not in entry:
                return answers + [self._record(target, type, v) for v in entry.get(type_name, [])]
            current = target

    def _negative(self, text: str) -> list[tdns.RRHeader]:
        if self.negative_ttl is None:
            return []
        apex = text.rsplit(".", 1)[-1]
        soa = tdns.Record_SOA(
            mname=b"ns." + apex.encode(),
            rname=b"hostmaster." + apex.encode(),
            minimum=self.negative_ttl,
            ttl=self.negative_ttl,
        )
        return [tdns.RRHeader(apex.encode(), tdns.SOA, tdns.IN, self.negative_ttl, soa, auth=True)]

    def _record(self, text: str, type: int, value: Any) -> tdns.RRHeader:
        ttl = self.zone.get(text, {}).get("TTL", self.ttl)
        payload: Any
        if type == tdns.MX:
            preference, exchange = value
            target = b"" if exchange == "." else exchange.encode()  # "." is the root (null MX)
            payload = tdns.Record_MX(preference, target, ttl=ttl)
        elif type == tdns.A:
            payload = tdns.Record_A(value, ttl=ttl)
        elif type == tdns.AAAA:
            payload = tdns.Record_AAAA(value, ttl=ttl)
        elif type == tdns.TXT:
            payload = tdns.Record_TXT(*_character_strings(value), ttl=ttl)
        elif type == tdns.PTR:
            payload = tdns.Record_PTR(value.encode(), ttl=ttl)
        elif type == tdns.SOA:
            mname, rname, minimum = value
            payload = tdns.Record_SOA(mname.encode(), rname.encode(), minimum=minimum, ttl=ttl)
        else:
            payload = tdns.Record_CNAME(value.encode(), ttl=ttl)
        return tdns.RRHeader(text.encode(), type, tdns.IN, ttl, payload, auth=True)


class _Factory(server.DNSServerFactory):
    def __init__(self, authority: DictResolver) -> None:
        super().__init__(authorities=[authority])
        self.authority = authority
        self.tcp_queries: list[tuple[str, str]] = []

    def handleQuery(self, message: Any, protocol: Any, address: Any) -> Any:
        if isinstance(protocol, tdns.DNSProtocol):
            q = message.queries[0]
            name = q.name.name.decode("ascii").lower().rstrip(".")
            self.tcp_queries.append((name, tdns.QUERY_TYPES.get(q.type, str(q.type))))
        return super().handleQuery(message, protocol, address)

    def sendReply(self, protocol: Any, message: Any, address: Any) -> None:
        name = message.queries[0].name.name.decode("ascii").lower() if message.queries else ""
        if name in self.authority.wrong_question:
            # A spoofed-looking answer: right ID and port, another question (RFC 5452 9.1).
            message.queries = [tdns.Query(b"elsewhere." + name.encode(), message.queries[0].type)]
        if address is not None and len(message.toStr()) > UDP_LIMIT:
            # RFC 1035 4.2.1 / RFC 2181 9: too big for UDP: TC set, the client asks over TCP.
            message.trunc = 1
            message.answers, message.authority, message.additional = [], [], []
        super().sendReply(protocol, message, address)

    def gotResolverError(self, failure: Any, protocol: Any, message: Any, address: Any) -> None:
        # Wanted by the test: SERVFAIL, REFUSED, NXDOMAIN with an SOA, without an error log.
        codes = {_ServerFailure: tdns.ESERVER, _Refused: tdns.EREFUSED, _NXDomain: tdns.ENAME}
        for kind, code in codes.items():
            if failure.check(kind):
                response = self._responseFromMessage(
                    message=message,
                    rCode=code,
                    answers=getattr(failure.value, "answers", []),
                    authority=getattr(failure.value, "authority", []),
                )
                self.sendReply(protocol, response, address)
                return
        super().gotResolverError(failure, protocol, message, address)


class LocalDNS:
    """The dict resolver served over UDP and TCP on 127.0.0.1 (one port number for both)."""

    def __init__(
        self,
        zone: dict[str, dict[str, Any]],
        *,
        ttl: int = 60,
        negative_ttl: int | None = None,
    ) -> None:
        self.authority = DictResolver(zone, ttl=ttl, negative_ttl=negative_ttl)
        self.factory = _Factory(self.authority)
        self.port: IListeningPort | None = None
        self.tcp_port: IListeningPort | None = None

    @property
    def queries(self) -> list[tuple[str, str]]:
        return self.authority.queries

    @property
    def tcp_queries(self) -> list[tuple[str, str]]:
        return self.factory.tcp_queries

    @property
    def address(self) -> tuple[str, int]:
        """("127.0.0.1", port) of the running server."""
        assert self.port is not None, "start() first"
        return ("127.0.0.1", self.port.getHost().port)

    def start(self) -> int:
        for _ in range(20):
            # A number free for both UDP and TCP, found with plain sockets closed at once: a
            # Twisted port given up here would close a reactor turn later and log its closing
            # into the test that started this server (tests assert on what is logged).
            number = _free_udp_and_tcp_number()
            if not number:
                continue
            protocol = tdns.DNSDatagramProtocol(self.factory)
            try:
                udp = reactor.listenUDP(number, protocol, interface="127.0.0.1")  # type: ignore[attr-defined]
            except CannotListenError:
                continue
            try:
                self.tcp_port = reactor.listenTCP(number, self.factory, interface="127.0.0.1")  # type: ignore[attr-defined]
            except CannotListenError:  # taken in between by another process: rare
                udp.stopListening()
                continue
            self.port = udp
            return number
        raise RuntimeError("no port number free for both UDP and TCP")

    def stop(self) -> Any:
        stopping = []
        for attribute in ("port", "tcp_port"):
            port = getattr(self, attribute)
            setattr(self, attribute, None)
            if port is not None:
                stopping.append(defer.maybeDeferred(port.stopListening))
        for connection in list(self.factory.connections):
            connection.transport.loseConnection()
        return defer.gatherResults(stopping) if stopping else None

    def resolver(self, lifetime: float = 2.0) -> dns.resolver.Resolver:
        """A dnspython resolver that asks only this server."""
        assert self.port is not None, "start() first"
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = self.port.getHost().port
        r.timeout = r.lifetime = lifetime
        r.cache = None
        return r


def _free_udp_and_tcp_number() -> int:
    """A port number the OS gave for UDP on 127.0.0.1 that TCP can bind too, or 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        number = int(udp.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind(("127.0.0.1", number))
            except OSError:
                return 0
    return number
