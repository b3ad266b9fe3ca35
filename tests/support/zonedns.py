"""An in-memory ``CheckResolver`` with every record type the checks ask (TXT, A, AAAA, MX, PTR).

    dns = ZoneResolver({
        "example.com": {"TXT": [b"v=spf1 mx -all"], "MX": [(10, "mx.example.com")]},
        "mx.example.com": {"A": ["192.0.2.9"]},
        "9.2.0.192.in-addr.arpa": {"PTR": ["mx.example.com"]},
    })
    dns.tempfail.add("slow.example")   # DNSTempError, as a timeout or SERVFAIL would be

A name not in the zone is NXDOMAIN; a name without the type asked is an empty answer. PTR is
asked by address (as ``CheckResolver.ptr``) and looked up under its reverse name. ``queries``
records every (type, name) asked, in order.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from mailhub.checks.dns import DNSTempError, Lookup


class ZoneResolver:
    def __init__(self, zone: dict[str, dict[str, list[Any]]] | None = None) -> None:
        self.zone = {k.lower().rstrip("."): v for k, v in (zone or {}).items()}
        self.tempfail: set[str] = set()
        self.queries: list[tuple[str, str]] = []

    def _ask(self, rtype: str, name: str) -> Lookup[Any]:
        key = name.lower().rstrip(".")
        self.queries.append((rtype, key))
        if key in self.tempfail:
            raise DNSTempError(f"timeout asking {rtype} {name}")
        if key not in self.zone:
            return Lookup(nxdomain=True)
        return Lookup(tuple(self.zone[key].get(rtype, ())))

    async def txt(self, name: str) -> Lookup[bytes]:
        return self._ask("TXT", name)

    async def a(self, name: str) -> Lookup[str]:
        return self._ask("A", name)

    async def aaaa(self, name: str) -> Lookup[str]:
        return self._ask("AAAA", name)

    async def mx(self, name: str) -> Lookup[tuple[int, str]]:
        return self._ask("MX", name)

    async def ptr(self, address: str) -> Lookup[str]:
        return self._ask("PTR", ipaddress.ip_address(address).reverse_pointer)
