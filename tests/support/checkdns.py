"""An in-memory ``CheckResolver`` for unit tests of the mail checks (no sockets, no network).

    dns = MemoryResolver({"sel._domainkey.example.com": [b"v=DKIM1; p=..."]})
    dns.tempfail.add("_dmarc.example.org")      # DNSTempError, as a timeout or SERVFAIL would
    dns.empty.add("example.net")                # NOERROR without records

A name not in the table is NXDOMAIN. ``queries`` records every (type, name) asked, in order.
"""

from __future__ import annotations

from mailhub.checks.dns import DNSTempError, Lookup


class MemoryResolver:
    def __init__(self, txt: dict[str, list[bytes]] | None = None) -> None:
        self.txt_records = {k.lower(): list(v) for k, v in (txt or {}).items()}
        self.tempfail: set[str] = set()
        self.empty: set[str] = set()
        self.queries: list[tuple[str, str]] = []

    def add_txt(self, name: str, *records: bytes) -> None:
        self.txt_records.setdefault(name.lower(), []).extend(records)

    def _answer(self, kind: str, name: str) -> None:
        self.queries.append((kind, name))
        if name.lower() in self.tempfail:
            raise DNSTempError(f"timeout asking {kind} {name}")

    async def txt(self, name: str) -> Lookup[bytes]:
        self._answer("TXT", name)
        key = name.lower()
        if key in self.empty:
            return Lookup()
        if key not in self.txt_records:
            return Lookup(nxdomain=True)
        return Lookup(tuple(self.txt_records[key]))

    async def a(self, name: str) -> Lookup[str]:
        self._answer("A", name)
        return Lookup(nxdomain=True)

    async def aaaa(self, name: str) -> Lookup[str]:
        self._answer("AAAA", name)
        return Lookup(nxdomain=True)

    async def mx(self, name: str) -> Lookup[tuple[int, str]]:
        self._answer("MX", name)
        return Lookup(nxdomain=True)

    async def ptr(self, address: str) -> Lookup[str]:
        self._answer("PTR", address)
        return Lookup(nxdomain=True)
