"""The one in-memory ``CheckResolver`` for unit tests of the mail checks (no sockets, no network).

    dns = MemoryResolver({
        "example.com": {"TXT": [b"v=spf1 mx -all"], "MX": [(10, "mx.example.com")]},
        "mx.example.com": {"A": ["192.0.2.9"]},
        "9.2.0.192.in-addr.arpa": {"PTR": ["mx.example.com"]},
        "www.example.com": {"CNAME": ["example.com"]},
    })
    dns = MemoryResolver(txt={"sel._domainkey.example.com": [b"v=DKIM1; p=..."]})
    dns.add_txt("_dmarc.example.org", b"v=DMARC1; p=none")
    dns.tempfail.add("slow.example")            # DNSTempError, as a timeout or SERVFAIL would
    dns.tempfail.add(("example.net", "A"))      # only that type of the name
    dns.ttls[("example.com", "TXT")] = 60       # what ``resolve`` gives (default ``ttl``)
    dns.answer("n.example", "TXT", nxdomain=True, ttl=120)   # one answer and its TTL at once
    dns.silent = True                           # no question is ever answered (a dead server)
    dns.hold = True; ...; dns.release()         # answers held back until released

A name not in the zone is NXDOMAIN; a name without the type asked is an empty answer (NOERROR);
a name with a CNAME is followed (at most ``MAX_CNAMES``: a loop is a DNSTempError). Names are
taken in lower case without the trailing dot, and otherwise as asked (the RFC 7208 suite has
names with spaces, which the real resolvers' ``query_name`` refuses); PTR is asked by address and
looked up under its reverse name. ``queries`` records every (type, name)
asked, in order. ``resolve(name, type) -> Answer`` makes it a ``RecordResolver`` too (the inner
resolver of a ``CachingResolver``), with each answer's TTL.
"""

from __future__ import annotations

import ipaddress
from typing import Any, cast

from twisted.internet import defer

from mailhub.checks.dns import DNSTempError, Lookup
from mailhub.checks.resolver import Answer

MAX_CNAMES = 8


def _key(name: str) -> str:
    return name.lower().rstrip(".")


class MemoryResolver:
    def __init__(
        self,
        zone: dict[str, dict[str, list[Any]]] | None = None,
        *,
        txt: dict[str, list[bytes]] | None = None,
        ttl: float = 300.0,
    ) -> None:
        self.zone: dict[str, dict[str, list[Any]]] = {}
        for name, types in (zone or {}).items():
            self.zone[_key(name)] = {rtype: list(values) for rtype, values in types.items()}
        for name, records in (txt or {}).items():
            self.add_txt(name, *records)
        self.tempfail: set[str | tuple[str, str]] = set()
        self.ttl = ttl
        self.ttls: dict[tuple[str, str], float] = {}
        self.queries: list[tuple[str, str]] = []
        self.silent = False
        self.hold = False
        self._held: list[defer.Deferred[None]] = []

    def add(self, name: str, rtype: str, *values: Any) -> None:
        """More records of ``rtype`` for ``name`` (the name exists from now on, even with none)."""
        self.zone.setdefault(_key(name), {}).setdefault(rtype, []).extend(values)

    def add_txt(self, name: str, *records: bytes) -> None:
        self.add(name, "TXT", *records)

    def set_txt(self, name: str, *records: bytes) -> None:
        """The TXT records of ``name`` are these (none: the name exists, without TXT)."""
        self.zone.setdefault(_key(name), {})["TXT"] = list(records)

    def answer(
        self, name: str, rdtype: str, *values: Any, ttl: float | None = None, nxdomain: bool = False
    ) -> None:
        """From now on ``name`` answers ``rdtype`` with ``values`` (or NXDOMAIN: the name goes),
        with ``ttl`` if given, and no temporary error."""
        key = _key(name)
        if nxdomain:
            self.zone.pop(key, None)
        else:
            self.zone.setdefault(key, {})[rdtype] = list(values)
        if ttl is not None:
            self.ttls[(key, rdtype)] = ttl
        self.tempfail.discard((key, rdtype))

    def release(self) -> None:
        """Let the held questions (``hold``) be answered."""
        held, self._held = self._held, []
        for d in held:
            d.callback(None)

    async def txt(self, name: str) -> Lookup[bytes]:
        return cast(Lookup[bytes], (await self.resolve(_key(name), "TXT")).lookup)

    async def a(self, name: str) -> Lookup[str]:
        return cast(Lookup[str], (await self.resolve(_key(name), "A")).lookup)

    async def aaaa(self, name: str) -> Lookup[str]:
        return cast(Lookup[str], (await self.resolve(_key(name), "AAAA")).lookup)

    async def mx(self, name: str) -> Lookup[tuple[int, str]]:
        return cast(Lookup[tuple[int, str]], (await self.resolve(_key(name), "MX")).lookup)

    async def ptr(self, address: str) -> Lookup[str]:
        name = ipaddress.ip_address(address).reverse_pointer
        return cast(Lookup[str], (await self.resolve(name, "PTR")).lookup)

    async def resolve(self, name: str, rdtype: str) -> Answer:
        """``RecordResolver``'s question: ``name`` as asked (normalised by the caller)."""
        self.queries.append((rdtype, name))
        if self.silent:
            await defer.Deferred()  # never fired: the caller's timeout ends the wait
        if self.hold:
            held: defer.Deferred[None] = defer.Deferred()
            self._held.append(held)
            await held
        key = name
        for _ in range(MAX_CNAMES + 1):
            if key in self.tempfail or (key, rdtype) in self.tempfail:
                raise DNSTempError(f"timeout asking {rdtype} {name}")
            if key not in self.zone:
                return Answer(Lookup(nxdomain=True), self.ttls.get((name, rdtype), self.ttl))
            records = self.zone[key]
            if "CNAME" in records and rdtype != "CNAME":
                key = _key(records["CNAME"][0])
                continue
            lookup = Lookup(tuple(records.get(rdtype, ())))
            return Answer(lookup, self.ttls.get((name, rdtype), self.ttl))
        raise DNSTempError(f"CNAME loop asking {rdtype} {name}")
