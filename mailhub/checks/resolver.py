"""The DNS layer of the mail checks: ``CheckResolver`` over twisted.names, a TTL cache, a budget.

Stack them per use::

    resolver = make_resolver(config, reactor)   # CachingResolver(TwistedResolver(...)), shared
    per_message = budgeted(resolver, budget)     # spends the message's DNSBudget on each call

``TwistedResolver`` asks the configured servers itself, with twisted.names' message codec, over
UDP (a fresh, connected socket per question: a random source port against spoofed answers,
RFC 5452 9.2, and a refused port fails at once); it falls back to TCP when the answer is
truncated (RFC 1035 4.2.2, RFC 7766 5: SPF and DKIM records over 512 octets are common),
follows CNAME chains, and reports every failure that is not an answer (timeout, SERVFAIL,
REFUSED, no server) as ``DNSTempError``.

``CachingResolver`` keeps answers for their TTL and negative answers for the SOA minimum
(RFC 2308 5), asks once on the wire for identical lookups in flight, and forgets the least
recently used entries beyond ``max_entries``. Temporary errors are never cached.

A name that cannot be in the DNS (empty, an empty label, a label over 63 octets, over 253 in
all, control characters, no IDNA form) is answered NXDOMAIN without a query: no such domain can
exist, and that is what each check does with a malformed name anyway (RFC 7208 4.3: "none";
RFC 6376 6.1.2: no key, PERMFAIL), so callers need no other exception than ``DNSTempError``.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import idna
from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IReactorTime, IReadDescriptor
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.names import dns
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhub.checks.dns import CheckResolver, DNSBudget, DNSTempError, Lookup
from mailhub.config import Config

log = Logger()

# RFC 1035 2.3.4: a name is at most 255 octets on the wire, 253 characters as text; a label at
# most 63 octets.
MAX_NAME = 253
MAX_LABEL = 63
# CNAME hops followed for one lookup (BIND stops at 16, Unbound at 11 restarts; mail records
# rarely chain more than twice).
MAX_CNAME_HOPS = 8
# RFC 2308 5 suggests one to three hours as the ceiling for negative answers; a DKIM key or
# DMARC record published after a failed lookup is then seen within the hour. Positive answers:
# at most a day (RFC 8767 4 suggests 7 days as the upper bound; a day is kinder to key rotation).
MAX_TTL = 86400.0
MAX_NEGATIVE_TTL = 3600.0
# RFC 2308 5: without an SOA in the answer, a negative answer is cached for a short while.
DEFAULT_NEGATIVE_TTL = 300.0
# Questions on the wire at once, each a socket of its own: beyond, they wait (within their
# timeout) so that a burst of distinct lookups cannot take every file descriptor (a service's
# soft limit is often 1024, shared with the SMTP, IMAP and POP3 connections).
MAX_IN_FLIGHT = 100
# Each server gets this many tries (timeouts only: a server that answered SERVFAIL is not asked
# again for the same question).
ROUNDS = 2

RECORD_TYPES: dict[str, int] = {
    "A": dns.A,
    "AAAA": dns.AAAA,
    "MX": dns.MX,
    "TXT": dns.TXT,
    "PTR": dns.PTR,
}


class InvalidName(ValueError):
    """A name that cannot be in the DNS; the typed lookups answer it NXDOMAIN."""


@functools.lru_cache(maxsize=4096)  # a pure function of the name; errors are not cached
def query_name(name: str) -> str:
    """``name`` as the lower-case A-label form asked on the wire, without the trailing dot, or
    ``InvalidName`` saying what is wrong."""
    text = name[:-1] if name.endswith(".") else name
    if len(text) > 4 * MAX_NAME:  # before any IDNA work on a megabyte of text
        raise InvalidName(f"{name[:40]!r}... is over {MAX_NAME} octets")
    if not text.isascii():
        try:
            # UTS #46 maps first (full-width dots, case), as the SMTP address parser does.
            text = idna.uts46_remap(text, std3_rules=False, transitional=False)
        except (idna.IDNAError, UnicodeError) as e:
            raise InvalidName(f"{name!r} has no IDNA form ({e})") from None
        text = text[:-1] if text.endswith(".") else text
    if not text:
        raise InvalidName("empty name")
    labels = []
    for label in text.split("."):
        if not label:
            raise InvalidName(f"{name!r} has an empty label")
        if not label.isascii():
            try:
                label = idna.alabel(label).decode("ascii")
            except (idna.IDNAError, UnicodeError) as e:
                raise InvalidName(f"{name!r} has no IDNA form ({e})") from None
        if len(label) > MAX_LABEL:
            raise InvalidName(f"{name!r} has a label over {MAX_LABEL} octets")
        # RFC 2181 11: a label may hold any octet; SPF macros (RFC 7208 7.3: %_ and %-) make
        # spaces and percent signs, and the name must be asked as it is. Control characters
        # come from no address or macro: refused rather than put on the wire.
        if any(c < " " or c == "\x7f" for c in label):
            raise InvalidName(f"{name!r} holds control characters")
        labels.append(label.lower())
    result = ".".join(labels)
    if len(result) > MAX_NAME:
        raise InvalidName(f"{name[:40]!r}... is over {MAX_NAME} octets")
    return result


def reverse_name(address: str) -> str:
    """The PTR name of an IP address (an IPv4-mapped IPv6 address as its IPv4 form), or of a
    name already under in-addr.arpa / ip6.arpa."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        name = query_name(address)
        if name.endswith((".in-addr.arpa", ".ip6.arpa")):
            return name
        raise InvalidName(f"{address!r} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.reverse_pointer


@dataclass(frozen=True)
class Answer:
    """A lookup's result and how long it may be kept (seconds; 0: not at all)."""

    lookup: Lookup[Any]
    ttl: float


class RecordResolver(Protocol):
    """Answers with their TTL, for one normalised name and a type of ``RECORD_TYPES``."""

    async def resolve(self, name: str, rdtype: str) -> Answer: ...


class TypedLookups(ABC):
    """``CheckResolver``'s five methods over ``resolve(name, type)``: names normalised first."""

    @abstractmethod
    async def resolve(self, name: str, rdtype: str) -> Answer: ...

    async def _lookup(self, name: str, rdtype: str) -> Lookup[Any]:
        try:
            qname = reverse_name(name) if rdtype == "PTR" else query_name(name)
        except InvalidName as e:
            log.debug("not asked: {why}", why=str(e))
            return Lookup(nxdomain=True)
        return (await self.resolve(qname, rdtype)).lookup

    async def txt(self, name: str) -> Lookup[bytes]:
        return cast(Lookup[bytes], await self._lookup(name, "TXT"))

    async def a(self, name: str) -> Lookup[str]:
        return cast(Lookup[str], await self._lookup(name, "A"))

    async def aaaa(self, name: str) -> Lookup[str]:
        return cast(Lookup[str], await self._lookup(name, "AAAA"))

    async def mx(self, name: str) -> Lookup[tuple[int, str]]:
        return cast(Lookup[tuple[int, str]], await self._lookup(name, "MX"))

    async def ptr(self, address: str) -> Lookup[str]:
        return cast(Lookup[str], await self._lookup(address, "PTR"))


# --- the wire ----------------------------------------------------------------------------------


@implementer(IReadDescriptor)
class _UDPExchange:
    """One question over a connected UDP socket of its own, read by the reactor.

    A fresh socket per question gives it a random source port (RFC 5452 9.2: with the random
    ID, 32 bits for a spoofer to guess) and, being connected, takes datagrams only from the
    server and hears its ICMP "port unreachable" at once. (twisted.names' own protocol logs two
    lines for every socket it opens and closes, and waits for the timeout on a refused port.)
    """

    def __init__(self, server: tuple[str, int], message_id: int) -> None:
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.socket.setblocking(False)
            self.socket.connect(server)  # UDP: no packet, just the peer
        except OSError:
            self.socket.close()
            raise
        self.id = message_id
        self.done: defer.Deferred[Any] = defer.Deferred()

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return "DNS"

    def doRead(self) -> None:
        while not self.done.called:
            try:
                data = self.socket.recv(65535)
            except BlockingIOError:
                return
            except OSError as e:
                self.done.errback(e)  # ConnectionRefusedError: nothing listens there
                return
            message = dns.Message()
            try:
                message.fromStr(data)
            except Exception:  # whatever the network sends must not escape
                continue  # garbage: wait on for the real answer (or the timeout)
            if message.id == self.id and message.answer:
                self.done.callback(message)

    def connectionLost(self, reason: Failure) -> None:
        # The epoll reactor hands a socket error (ICMP "port unreachable") here, not to doRead.
        if not self.done.called:
            code = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self.done.errback(OSError(code, os.strerror(code)) if code else reason)

    def time_out(self) -> None:
        if not self.done.called:
            self.done.errback(dns.DNSQueryTimeoutError(self.id))


_CLOSED = Failure(error.ConnectionDone())


class _TCPQuery(dns.DNSProtocol):
    """One question over TCP; a connection closed before the answer fails it at once."""

    def connectionLost(self, reason: Failure = _CLOSED) -> None:
        live, self.liveMessages = self.liveMessages, {}
        for d, timer in live.values():
            if timer.active():
                timer.cancel()
            if not d.called:
                d.errback(error.ConnectionLost("closed before the answer"))
        super().connectionLost(reason)


class _Controller:
    """What twisted.names' protocols tell their controller; we only log strays."""

    def messageReceived(self, message: Any, protocol: Any, address: Any = None) -> None:
        log.debug("unexpected DNS message {id} from {address}", id=message.id, address=address)

    def connectionMade(self, protocol: Any) -> None:
        pass

    def connectionLost(self, protocol: Any) -> None:
        pass


def _server_text(server: tuple[str, int]) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _answers_question(message: Any, query: dns.Query) -> bool:
    """RFC 5452 9.1: an answer must repeat the question (name, type, class)."""
    if len(message.queries) != 1:
        return False
    q = message.queries[0]
    return bool(
        q.type == query.type and q.cls == query.cls and q.name.name.lower() == query.name.name
    )


def _name(value: Any) -> str | None:
    """A name in an answer as text without the trailing dot; None if it is not ASCII."""
    raw: bytes = value.name
    try:
        return raw.decode("ascii").rstrip(".").lower()
    except UnicodeDecodeError:
        return None


def _record(rr: Any) -> Any:
    """The typed form of one answer record (see ``CheckResolver``), or None if unusable."""
    payload = rr.payload
    if rr.type == dns.TXT:
        # RFC 7208 3.3 / RFC 6376 3.6.2.2: the character-strings are joined without separator.
        return b"".join(payload.data)
    if rr.type == dns.A:
        return payload.dottedQuad()
    if rr.type == dns.AAAA:
        return str(ipaddress.IPv6Address(payload.address))
    if rr.type == dns.MX:
        exchange = _name(payload.name)
        # RFC 7505: the root as exchange is a "null MX"; it reads "." here.
        return None if exchange is None else (payload.preference, exchange or ".")
    if rr.type == dns.PTR:
        return _name(payload.name)
    return None


def _negative_ttl(message: Any) -> float:
    """RFC 2308 5: the SOA record's TTL, at most its MINIMUM field; a default without one."""
    for rr in message.authority:
        if rr.type == dns.SOA:
            return float(min(rr.ttl, rr.payload.minimum))
    return DEFAULT_NEGATIVE_TTL


class TwistedResolver(TypedLookups):
    """``CheckResolver`` over twisted.names' protocols, asking ``nameservers`` ((IP address,
    port) pairs, tried in order; None: the system's, from /etc/resolv.conf).

    ``timeout``: seconds one question may take in all (each server is tried ``ROUNDS`` times,
    each try getting its share); a CNAME chain asks one question per hop it must follow.
    ``reactor``: IReactorFDSet, IReactorTCP and IReactorTime (``clock``, if given, times the
    questions instead: tests). At most ``max_in_flight`` questions are on the wire at once; the
    others wait their turn within their timeout.
    """

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] | None,
        timeout: float = 5.0,
        reactor: Any = None,
        *,
        max_cname_hops: int = MAX_CNAME_HOPS,
        max_in_flight: int = MAX_IN_FLIGHT,
        clock: IReactorTime | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        servers = system_nameservers() if nameservers is None else list(nameservers)
        self.nameservers = [(_normal_ip(host), port) for host, port in servers]
        self.timeout = timeout
        self.max_cname_hops = max_cname_hops
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._controller = _Controller()
        self.max_in_flight = max_in_flight
        self.slots = defer.DeferredSemaphore(max_in_flight)  # the questions on the wire

    async def resolve(self, name: str, rdtype: str) -> Answer:
        """Follow CNAMEs from ``name`` to the records of ``rdtype``; the TTL is the least of
        every record used (the chain's CNAMEs and the final RRset)."""
        qtype = RECORD_TYPES[rdtype]
        seen = {name}
        ttl = MAX_TTL
        current = name
        while True:
            asked = current
            message = await self.ask(asked, qtype)
            records: list[Any] = []
            # Follow the chain as far as this answer carries it (a recursive server sends the
            # whole chain; an authoritative one may stop at a CNAME pointing out of its zone).
            while True:
                here = [
                    rr
                    for rr in message.answers
                    if rr.cls == dns.IN and rr.name.name.lower() == current.encode()
                ]
                typed = [rr for rr in here if rr.type == qtype]
                if typed:
                    records = typed
                    break
                cname = next((rr for rr in here if rr.type == dns.CNAME), None)
                if cname is None:
                    break
                target = _name(cname.payload.name)
                if target is None or not target:
                    raise DNSTempError(f"{current} is an alias of an unusable name")
                ttl = min(ttl, cname.ttl)
                if target in seen:
                    raise DNSTempError(f"CNAME loop: {current} -> {target} (from {name})")
                if len(seen) > self.max_cname_hops:
                    raise DNSTempError(f"more than {self.max_cname_hops} CNAMEs from {name}")
                seen.add(target)
                current = target
            if records:
                ttl = min([ttl, *(rr.ttl for rr in records)])
                values = tuple(v for v in (_record(rr) for rr in records) if v is not None)
                return Answer(Lookup(values), float(ttl))
            if current == asked or message.rCode == dns.ENAME:
                # NXDOMAIN or no data (RFC 2308) for the name we asked or, NXDOMAIN after a
                # chain, for the chain's end (RFC 6604 3: the aliases exist).
                negative = min(ttl, _negative_ttl(message))
                return Answer(Lookup(nxdomain=message.rCode == dns.ENAME), negative)
            # The chain left this answer: ask for its end (RFC 1034 3.6.2).

    async def ask(self, name: str, qtype: int) -> Any:
        """One question to the servers; the ``dns.Message`` answering it with NOERROR or
        NXDOMAIN, or ``DNSTempError``."""
        query = dns.Query(name.encode("ascii"), qtype, dns.IN)
        what = f"{name} {dns.QUERY_TYPES.get(qtype, qtype)}"
        if not self.nameservers:
            raise DNSTempError(f"no DNS server to ask for {what}")
        clock = self._clock
        deadline = clock.seconds() + self.timeout
        try:
            await self.slots.acquire().addTimeout(self.timeout, clock)
        except defer.TimeoutError:
            raise DNSTempError(
                f"{what}: no room to ask ({self.max_in_flight} questions waiting for answers)"
            ) from None
        try:
            return await self._ask_servers(query, what, deadline)
        finally:
            self.slots.release()

    async def _ask_servers(self, query: dns.Query, what: str, deadline: float) -> Any:
        clock = self._clock
        tries = [server for _ in range(ROUNDS) for server in self.nameservers]
        share = self.timeout / len(tries)
        answered: set[tuple[str, int]] = set()
        problems: list[str] = []
        for server in tries:
            remaining = deadline - clock.seconds()
            if remaining <= 0:
                break
            if server in answered:
                continue
            where = _server_text(server)
            try:
                message = await self._udp(server, query, min(share, remaining))
                if message.trunc:
                    # RFC 7766 5: retry the truncated answer over TCP, within what is left.
                    message = await self._tcp(server, query, max(deadline - clock.seconds(), 0.1))
            except (dns.DNSQueryTimeoutError, defer.TimeoutError):
                problems.append(f"no answer from {where}")
                continue
            except (
                error.ConnectError,
                error.ConnectionLost,
                error.CannotListenError,
                OSError,
            ) as e:
                problems.append(f"{where}: {e.__class__.__name__}")
                answered.add(server)
                continue
            if not _answers_question(message, query):
                problems.append(f"{where} answered another question")
                continue
            if message.rCode in (dns.OK, dns.ENAME):
                return message
            answered.add(server)  # SERVFAIL, REFUSED, ...: this server will say it again
            code = {dns.ESERVER: "SERVFAIL", dns.EREFUSED: "REFUSED"}.get(
                message.rCode, f"rcode {message.rCode}"
            )
            problems.append(f"{where} answered {code}")
        unique = list(dict.fromkeys(problems))
        raise DNSTempError(f"{what}: " + ("; ".join(unique) or "no time left to ask"))

    async def _udp(self, server: tuple[str, int], query: dns.Query, timeout: float) -> Any:
        message = dns.Message(id=dns.randomSource(), recDes=1)
        message.queries = [query]
        exchange = _UDPExchange(server, message.id)
        self._reactor.addReader(exchange)
        timer = self._clock.callLater(timeout, exchange.time_out)
        try:
            exchange.socket.send(message.toStr())
            return await exchange.done
        finally:
            if timer.active():
                timer.cancel()
            self._reactor.removeReader(exchange)
            exchange.socket.close()

    async def _tcp(self, server: tuple[str, int], query: dns.Query, timeout: float) -> Any:
        host, port = server
        kind = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        endpoint = kind(self._reactor, host, port, timeout=timeout)
        factory = Factory.forProtocol(lambda: _TCPQuery(self._controller, reactor=self._clock))
        factory.noisy = False  # no "Starting factory" line per question
        connecting = endpoint.connect(factory)
        protocol = cast(_TCPQuery, await connecting.addTimeout(timeout, self._clock))
        try:
            return await protocol.query([query], timeout)
        finally:
            if protocol.transport is not None:
                protocol.transport.loseConnection()


def _normal_ip(host: str) -> str:
    """One text per address (servers are compared and told apart by it)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        if "%" in host:  # a link-local address with its zone ("fe80::1%eth0")
            return host
        raise ValueError(f"DNS server {host!r} must be an IP address") from None


def system_nameservers(path: str | Path = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The ``nameserver`` lines of resolv.conf(5); none (or no file) means 127.0.0.1, as the C
    library does."""
    servers: list[tuple[str, int]] = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                servers.append((_normal_ip(fields[1]), 53))
            except ValueError:
                log.warn("{path}: ignored nameserver {value!r}", path=str(path), value=fields[1])
    return servers or [("127.0.0.1", 53)]


# --- the cache ---------------------------------------------------------------------------------


@dataclass
class _Entry:
    lookup: Lookup[Any]
    expires: float


class CachingResolver(TypedLookups):
    """Answers of ``inner`` kept for their TTL (at most ``MAX_TTL``; negative ones at most
    ``MAX_NEGATIVE_TTL``), identical lookups in flight asked once, at most ``max_entries``
    kept (the least recently used goes first). ``clock``: IReactorTime."""

    def __init__(self, inner: RecordResolver, clock: IReactorTime, max_entries: int = 10000):
        self.inner = inner
        self.clock = clock
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._waiting: dict[tuple[str, str], list[defer.Deferred[Answer]]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lifetime(self, name: str, rdtype: str) -> float:
        """Seconds the answer to ``name``/``rdtype`` (as the typed lookups ask it: a name, or
        an address for PTR) stays in the cache; 0 when it is not there."""
        try:
            qname = reverse_name(name) if rdtype == "PTR" else query_name(name)
        except InvalidName:
            return 0.0
        entry = self._entries.get((qname, rdtype))
        return 0.0 if entry is None else max(0.0, entry.expires - self.clock.seconds())

    def cached_txt(self, name: str) -> Lookup[bytes] | None:
        """What ``txt(name)`` would give from the cache, without a coroutine (counted as a
        hit, as there); None when it would ask the servers."""
        try:
            qname = query_name(name)
        except InvalidName as e:
            log.debug("not asked: {why}", why=str(e))
            return Lookup(nxdomain=True)
        key = (qname, "TXT")
        entry = self._entries.get(key)
        if entry is None or entry.expires <= self.clock.seconds():
            return None  # (an expired entry is dropped by the lookup that asks again)
        self._entries.move_to_end(key)
        self.hits += 1
        return cast(Lookup[bytes], entry.lookup)

    async def resolve(self, name: str, rdtype: str) -> Answer:
        key = (name, rdtype)
        now = self.clock.seconds()
        entry = self._entries.get(key)
        if entry is not None:
            if entry.expires > now:
                self._entries.move_to_end(key)
                self.hits += 1
                return Answer(entry.lookup, entry.expires - now)
            del self._entries[key]
        self.misses += 1
        return await self._shared(key)

    def _shared(self, key: tuple[str, str]) -> defer.Deferred[Answer]:
        """A Deferred of the answer to ``key``, asking ``inner`` only if nobody else is. The
        question runs on its own: a caller giving up (cancelling) does not stop it for the
        others, and its answer still fills the cache."""
        mine: defer.Deferred[Answer] = defer.Deferred()
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(mine)
            return mine
        self._waiting[key] = [mine]
        defer.Deferred.fromCoroutine(self._fetch(key))
        return mine

    async def _fetch(self, key: tuple[str, str]) -> None:
        result: Answer | Failure
        try:
            result = await self.inner.resolve(*key)
        except Exception:
            result = Failure()  # temporary errors are handed on, never kept
        else:
            self._store(key, result)
        for d in self._waiting.pop(key):
            if not d.called:  # a caller that cancelled has its answer already
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(result)

    def _store(self, key: tuple[str, str], answer: Answer) -> None:
        ceiling = MAX_TTL if answer.lookup.records else MAX_NEGATIVE_TTL
        ttl = min(answer.ttl, ceiling)
        if ttl <= 0 or self.max_entries <= 0:
            return  # RFC 1035 3.2.1: a zero TTL is for this transaction only
        self._entries[key] = _Entry(answer.lookup, self.clock.seconds() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


# --- the budget --------------------------------------------------------------------------------


class BudgetedResolver:
    """``inner`` spending ``budget`` on every lookup, cached or not (the cap is on the work the
    message asks for); ``DNSBudgetExceeded`` beyond it."""

    def __init__(self, inner: CheckResolver, budget: DNSBudget) -> None:
        self.inner = inner
        self.budget = budget

    async def txt(self, name: str) -> Lookup[bytes]:
        self.budget.spend()
        return await self.inner.txt(name)

    async def a(self, name: str) -> Lookup[str]:
        self.budget.spend()
        return await self.inner.a(name)

    async def aaaa(self, name: str) -> Lookup[str]:
        self.budget.spend()
        return await self.inner.aaaa(name)

    async def mx(self, name: str) -> Lookup[tuple[int, str]]:
        self.budget.spend()
        return await self.inner.mx(name)

    async def ptr(self, address: str) -> Lookup[str]:
        self.budget.spend()
        return await self.inner.ptr(address)


def budgeted(resolver: CheckResolver, budget: DNSBudget | None) -> CheckResolver:
    """``resolver`` spending ``budget`` (unchanged when None, or when it already spends this
    budget, so a check handed a budgeted resolver and the budget does not count twice)."""
    if budget is None:
        return resolver
    if isinstance(resolver, BudgetedResolver) and resolver.budget is budget:
        return resolver
    return BudgetedResolver(resolver, budget)


# --- from the configuration --------------------------------------------------------------------


def make_resolver(config: Config, reactor: Any) -> CachingResolver:
    """The one resolver of a server: ``[checks] nameservers`` (else ``[relay] nameservers``,
    else the system's), ``dns_timeout``, ``dns_cache_size``; ``config`` is a ``Config``."""
    checks = config.checks
    servers = list(checks.nameservers or config.relay.nameservers) or None
    inner = TwistedResolver(servers, checks.dns_timeout, reactor)
    return CachingResolver(inner, reactor, max_entries=checks.dns_cache_size)
