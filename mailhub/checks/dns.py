"""The DNS lookups of the mail checks: asynchronous, with timeouts, a TTL cache and a budget.

Every check (SPF, DKIM keys, DMARC records, ARC keys) asks through ``CheckResolver``; nothing here
blocks the reactor. The answer of a lookup is a ``Lookup``: the records, or ``nxdomain``; a
timeout, SERVFAIL or refusal raises ``DNSTempError`` (the checks turn it into ``temperror``,
RFC 7208 2.6.6, RFC 6376 6.1.2, RFC 7489 6.6.3).

TXT records come back one ``bytes`` per record, the record's character-strings joined without
anything between them (RFC 7208 3.3, RFC 6376 3.6.2.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class DNSTempError(Exception):
    """The lookup could not be answered now (timeout, SERVFAIL, no server): try again later."""


class DNSBudgetExceeded(Exception):
    """A message's checks asked more lookups than ``DNSBudget`` allows (work cap per message)."""


@dataclass(frozen=True)
class Lookup(Generic[T]):
    """One answer: ``records`` (possibly empty: NOERROR without data) or ``nxdomain``."""

    records: tuple[T, ...] = ()
    nxdomain: bool = False

    @property
    def void(self) -> bool:
        """RFC 7208 4.6.4: a "void lookup" is NXDOMAIN or an answer without records."""
        return self.nxdomain or not self.records


class CheckResolver(Protocol):
    """The lookups the checks make. Names are ASCII (A-labels), without the trailing dot."""

    async def txt(self, name: str) -> Lookup[bytes]: ...

    async def a(self, name: str) -> Lookup[str]: ...

    async def aaaa(self, name: str) -> Lookup[str]: ...

    async def mx(self, name: str) -> Lookup[tuple[int, str]]: ...

    async def ptr(self, address: str) -> Lookup[str]: ...


@dataclass
class DNSBudget:
    """The lookups one message's checks may make in all (a cap on the work per message), beside
    each check's own limits (SPF's 10 mechanisms and 2 void lookups, RFC 7208 4.6.4)."""

    limit: int = 50
    used: int = field(default=0)

    def spend(self) -> None:
        self.used += 1
        if self.used > self.limit:
            raise DNSBudgetExceeded(f"more than {self.limit} DNS lookups for one message")


class TXTTable:
    """A CheckResolver answering TXT from a table at once ({name: record}, names in lower case
    without the trailing dot); every other question is NXDOMAIN. For answers already in hand:
    the own keys' records as if published, a benchmark's warm cache."""

    def __init__(self, records: Mapping[str, bytes]) -> None:
        self._records = records

    async def txt(self, name: str) -> Lookup[bytes]:
        record = self._records.get(name.lower().rstrip("."))
        return Lookup((record,)) if record is not None else Lookup(nxdomain=True)

    async def a(self, name: str) -> Lookup[str]:
        return Lookup(nxdomain=True)

    async def aaaa(self, name: str) -> Lookup[str]:
        return Lookup(nxdomain=True)

    async def mx(self, name: str) -> Lookup[tuple[int, str]]:
        return Lookup(nxdomain=True)

    async def ptr(self, address: str) -> Lookup[str]:
        return Lookup(nxdomain=True)
