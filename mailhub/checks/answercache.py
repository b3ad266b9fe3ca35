"""Results kept as long as the DNS answers they were made of.

An SPF result (RFC 7208 4.6) or a DMARC record discovery (RFC 7489 6.6.3) reads nothing but DNS
answers, so the same answers give the same result: it may be given again until the first of
those answers leaves the resolver's cache (``CachingResolver.lifetime``, their TTLs). Nothing is
kept of an answer the resolver does not keep (TTL 0)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Generic, Protocol, TypeVar

from twisted.internet.interfaces import IReactorTime

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class AnswerLifetimes(Protocol):
    """How long a resolver keeps an answer (``CachingResolver.lifetime``)."""

    def lifetime(self, name: str, rdtype: str) -> float: ...


class AnswerBoundCache(Generic[K, V]):
    """Values by key, each until the first of its answers expires in ``answers``; at most
    ``max_entries`` (the least recently kept goes first; 0 keeps nothing)."""

    def __init__(
        self, answers: AnswerLifetimes, clock: IReactorTime, max_entries: int = 10000
    ) -> None:
        self.answers = answers
        self.clock = clock
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, key: K) -> tuple[V, float] | None:
        """The value kept for ``key`` and when it expires (``clock.seconds()``), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self.clock.seconds():
            del self._entries[key]
            return None
        return entry

    def put(self, key: K, value: V, asked: Iterable[tuple[str, str]]) -> None:
        """Keep ``value``, made of the answers to ``asked`` ((name, type) pairs), as long as
        all of them are kept; nothing when there were none or one is not kept."""
        if self.max_entries <= 0:
            return
        ttl = min((self.answers.lifetime(name, rdtype) for name, rdtype in asked), default=0.0)
        if ttl <= 0:
            return
        self._entries[key] = (value, self.clock.seconds() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class AnswerBoundResults(Generic[K, V]):
    """The base of the SPF and DMARC caches: their main results in an ``AnswerBoundCache``,
    whose cap (``max_entries``) what a subclass keeps beside it follows too."""

    def __init__(
        self, answers: AnswerLifetimes, clock: IReactorTime, max_entries: int = 10000
    ) -> None:
        self._kept: AnswerBoundCache[K, V] = AnswerBoundCache(answers, clock, max_entries)

    @property
    def max_entries(self) -> int:
        return self._kept.max_entries

    @max_entries.setter
    def max_entries(self, value: int) -> None:
        self._kept.max_entries = value

    def __len__(self) -> int:
        return len(self._kept)
