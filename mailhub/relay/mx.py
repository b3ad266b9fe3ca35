"""Where mail for a domain goes: MX resolution with dnspython, off the reactor thread.

dnspython's resolver blocks, and the reactor is epoll (not asyncio), so every lookup runs in a
thread (``run``, by default the reactor's thread pool). The answer is a list of ``MXHost`` in the
order to try them. Rules (RFC 5321 5.1 unless said otherwise):

- MX records sorted by preference, **random order among equal preference** (5.1: "SHOULD
  randomize"), at most ``max_hosts`` (5) hosts per round;
- every address of every host, A and AAAA (5.1: try all addresses of a host);
- no MX (NOERROR, empty answer) -> **implicit MX**: the domain itself, with its A/AAAA records;
  NXDOMAIN is not "no MX": it is a permanent failure (5.1.2);
- null MX (RFC 7505: one ``MX 0 .``) -> permanent failure 5.1.10;
- timeouts, SERVFAIL, no reachable name server -> temporary (4.4.3);
- an address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``; RFC 5321 4.1.3) is used as is.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

R = TypeVar("R")

MAX_HOSTS = 5  # hosts tried per delivery round (Postfix smtp_mx_address_limit-like)

log = Logger(namespace="mailhub.relay")


class Runner(Protocol):
    """Runs a blocking function somewhere else and returns a Deferred of its result."""

    def __call__(self, f: Callable[..., R], /, *args: Any) -> Deferred[R]: ...


class DNSResolver(Protocol):
    """What we use of ``dns.resolver.Resolver``; tests may inject anything with this method."""

    def resolve(self, qname: Any, rdtype: Any = ..., *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class MXHost:
    """One host to try: its name (for EHLO logs, TLS verification, Remote-MTA) and addresses."""

    name: str
    addresses: tuple[str, ...]
    preference: int | None = None  # None: implicit MX, address literal or static route


class DNSFailure(Exception):
    """A lookup that gave no usable host. ``permanent`` decides bounce (True) or retry."""

    def __init__(self, permanent: bool, status: str, text: str) -> None:
        super().__init__(text)
        self.permanent = permanent
        self.status = status
        self.text = text

    @property
    def diagnostic(self) -> str:
        # RFC 3464 2.3.6: no SMTP reply was involved, so not an "smtp;" diagnostic type; an
        # X- type as Postfix writes "X-Postfix; Host or domain name not found...".
        return f"X-mailhub; {self.text}"


def address_literal(domain: str) -> str | None:
    """The IP address in ``[192.0.2.1]`` / ``[IPv6:2001:db8::1]`` (RFC 5321 4.1.3), else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
        version = 6
    else:
        version = 4
    try:
        ip = ipaddress.ip_address(inner)
    except ValueError:
        return None
    return str(ip) if ip.version == version else None


def _qname(name: str) -> dns.name.Name:
    # Absolute, so the resolver's search list never applies; U-labels become A-labels.
    return dns.name.from_text(name.rstrip(".") + ".", idna_codec=dns.name.IDNA_2008_Practical)


class MXResolver:
    """Resolves a mail domain (or a host name) to the hosts and addresses to connect to.

    ``resolver`` is a ``dns.resolver.Resolver`` (tests: ``nameservers=["127.0.0.1"]`` and the
    port of a local server) or an object with the same ``resolve()``. ``run`` executes the
    blocking lookups (default: the reactor's thread pool). ``rng`` shuffles equal preferences.
    ``prefer_ipv6`` puts a host's AAAA addresses before its A addresses (default: A first).
    """

    def __init__(
        self,
        resolver: DNSResolver | None = None,
        *,
        run: Runner = deferToThread,
        rng: random.Random | None = None,
        max_hosts: int = MAX_HOSTS,
        prefer_ipv6: bool = False,
    ) -> None:
        self.resolver: DNSResolver = resolver if resolver is not None else dns.resolver.Resolver()
        self._run = run
        self._rng = rng if rng is not None else random.Random()
        self.max_hosts = max_hosts
        self.prefer_ipv6 = prefer_ipv6

    # --- the Deferred API (what the courier uses) ------------------------------------------

    def mail_hosts(self, domain: str) -> Deferred[list[MXHost]]:
        """The hosts for mail to ``domain``, in order; fails with DNSFailure."""
        return self._run(self.mail_hosts_blocking, domain)

    def host(self, name: str) -> Deferred[MXHost]:
        """One named host (a static route or smarthost) with its addresses; an IP stays as is."""
        return self._run(self.host_blocking, name)

    # --- blocking implementations (run in a thread) ----------------------------------------

    def mail_hosts_blocking(self, domain: str) -> list[MXHost]:
        literal = address_literal(domain)
        if literal is not None:
            return [MXHost(domain, (literal,))]
        domain = domain.rstrip(".").lower()
        try:
            answer = self.resolver.resolve(_qname(domain), "MX", search=False)
        except dns.resolver.NXDOMAIN:
            raise DNSFailure(
                True, "5.1.2", f"domain {domain} does not exist (DNS: NXDOMAIN)"
            ) from None
        except dns.resolver.NoAnswer:
            # RFC 5321 5.1: no MX records -> the domain itself is the implicit MX.
            return [self._implicit(domain)]
        except Exception as e:  # timeout, SERVFAIL, no name servers, bad name ...
            raise self._temporary(domain, "MX", e) from None

        records = [(int(r.preference), r.exchange) for r in answer]
        if records and all(exchange == dns.name.root for _, exchange in records):
            # RFC 7505 3: a single "MX 0 ." says the domain accepts no mail.
            raise DNSFailure(True, "5.1.10", f"domain {domain} accepts no mail (null MX)")
        # RFC 7505 3: a null MX among other records is a misconfiguration; skip it.
        records = [(p, x) for p, x in records if x != dns.name.root]
        hosts = self._ordered(records)
        found: list[MXHost] = []
        temporary: DNSFailure | None = None
        for preference, exchange in hosts[: self.max_hosts]:
            name = exchange.to_text(omit_final_dot=True).lower()
            try:
                addresses = self._addresses(name)
            except DNSFailure as e:
                log.info(
                    "MX host {host} of {domain} skipped: {why}",
                    host=name,
                    domain=domain,
                    why=e.text,
                )
                temporary = temporary or e
                continue
            if addresses:
                found.append(MXHost(name, addresses, preference))
        if not found:
            # The domain's MX hosts have no address (yet): the domain owner's mistake, which may
            # be fixed; retry rather than bounce (as Postfix does).
            if temporary is not None:
                raise DNSFailure(False, "4.4.3", temporary.text)
            raise DNSFailure(False, "4.4.3", f"no address found for any MX host of {domain}")
        return found

    def host_blocking(self, name: str) -> MXHost:
        literal = address_literal(name)
        if literal is None:
            try:
                literal = str(ipaddress.ip_address(name))
            except ValueError:
                literal = None
        if literal is not None:
            return MXHost(name, (literal,))
        name = name.rstrip(".").lower()
        addresses = self._addresses(name)
        if not addresses:
            raise DNSFailure(False, "4.4.3", f"host {name} has no address records")
        return MXHost(name, addresses)

    # --- helpers ---------------------------------------------------------------------------

    def _ordered(self, records: list[tuple[int, dns.name.Name]]) -> list[tuple[int, Any]]:
        # RFC 5321 5.1: lowest preference first; equal preferences in random order.
        self._rng.shuffle(records)
        return sorted(records, key=lambda r: r[0])  # sorted() is stable: the shuffle stays

    def _implicit(self, domain: str) -> MXHost:
        try:
            addresses = self._addresses(domain, nxdomain_permanent=True)
        except DNSFailure:
            raise
        if not addresses:
            raise DNSFailure(True, "5.1.2", f"domain {domain} has no MX and no address records")
        return MXHost(domain, addresses)

    def _addresses(self, name: str, *, nxdomain_permanent: bool = False) -> tuple[str, ...]:
        """A and AAAA of ``name`` (both are asked; either may be absent)."""
        found: dict[str, list[str]] = {"A": [], "AAAA": []}
        failures: list[Exception] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = self.resolver.resolve(_qname(name), rdtype, search=False)
            except dns.resolver.NXDOMAIN:
                if nxdomain_permanent:
                    raise DNSFailure(
                        True, "5.1.2", f"{name} does not exist (DNS: NXDOMAIN)"
                    ) from None
                raise DNSFailure(
                    False, "4.4.3", f"MX host {name} does not exist (NXDOMAIN)"
                ) from None
            except dns.resolver.NoAnswer:
                continue
            except Exception as e:
                failures.append(e)
                continue
            found[rdtype] = [r.address for r in answer]
        if failures and not (found["A"] or found["AAAA"]):
            raise self._temporary(name, "A/AAAA", failures[0])
        order = ("AAAA", "A") if self.prefer_ipv6 else ("A", "AAAA")
        return tuple(dict.fromkeys(found[order[0]] + found[order[1]]))

    @staticmethod
    def _temporary(name: str, rdtype: str, error: Exception) -> DNSFailure:
        if isinstance(error, dns.exception.Timeout):
            why = "timed out"
        elif isinstance(error, dns.resolver.NoNameservers):
            why = "no name server answered (SERVFAIL)"
        else:
            why = f"failed ({type(error).__name__}: {error})"
        # RFC 3463 4.4.3: directory (DNS) server failure; try again later.
        return DNSFailure(False, "4.4.3", f"DNS lookup of {rdtype} for {name} {why}")
