"""The plain data a folder hands out - ``MessageInfo``, ``FolderState``, ``StoreOutcome`` - and
the settings every folder of a store shares, with the helpers that build them column by column
in C loops (a first scan of a big folder makes one ``MessageInfo`` per message)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property, partial
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

from mailhub.store import names
from mailhub.store.dirwatch import DirWatch


class MessageInfo(NamedTuple):
    """What a reader knows about one message without opening it.

    Immutable plain data. A named tuple rather than a frozen dataclass because a first scan
    of a big folder makes one per message, and a tuple is made in C (``new_infos``) at
    a third of the cost; readers only use the fields."""

    uid: int
    key: str  # the Maildir base name: unique in the folder, stable (POP3 UIDL can use it)
    flags: frozenset[str]  # single letters, e.g. {"S", "F"}; see names.py
    size: int  # octets as stored (CRLF line ends, so this is IMAP's RFC822.SIZE)
    internaldate: int  # seconds since the epoch
    recent: bool  # still in new/: no reader has taken it yet
    keywords: frozenset[str] = frozenset()  # IMAP keywords ("$Forwarded", "Junk"), from the index
    modseq: int = 1  # RFC 7162 mod-sequence of its last flag/keyword change


def new_infos(*columns: Iterable[Any]) -> list[MessageInfo]:
    """MessageInfo of each row of the columns (in field order), made in one C loop."""
    return list(map(_info_of_row, zip(*columns, strict=True)))


_info_of_row = partial(tuple.__new__, MessageInfo)


@dataclass(frozen=True)
class FolderState:
    """A consistent snapshot returned by ``Folder.sync()``; messages in ascending UID order."""

    uidvalidity: int
    uidnext: int
    messages: tuple[MessageInfo, ...]
    highestmodseq: int = 1  # RFC 7162 3.1.1: grows on every change, expunge and new mail

    @cached_property
    def by_uid(self) -> dict[int, MessageInfo]:
        return {m.uid: m for m in self.messages}

    @property
    def count(self) -> int:
        return len(self.messages)

    @property
    def total_size(self) -> int:
        return sum(m.size for m in self.messages)


@dataclass(frozen=True)
class StoreOutcome:
    """What ``Folder.store_flags`` did (RFC 7162 3.2 for ``modified``)."""

    infos: dict[int, MessageInfo]  # every requested UID still present, its info after the call
    changed: frozenset[int]  # UIDs whose flags/keywords really changed (got a new modseq)
    modified: tuple[int, ...]  # refused by unchanged_since ([MODIFIED ...])
    gone: tuple[int, ...]  # requested but no longer in the folder


class Offload:
    """Where a store's UID-list writes for reactor-side looks run (mailhub.store.uidwriter):
    ``run(f, *args)`` in a worker thread, returning a Deferred; None: inline, on the caller's
    thread (tools, tests). ``holding``: the same for writes made while holding a folder's lock,
    in threads no job waiting for a lock can take (GroupCommitter.run_holding); None: ``run``.
    One per store, set once by the server when its workers start."""

    __slots__ = ("holding", "run")

    def __init__(
        self, run: Callable[..., Any] | None = None, holding: Callable[..., Any] | None = None
    ) -> None:
        self.run = run
        self.holding = holding


class Witness:
    """The store's inotify witness (``dirwatch.DirWatch``): set by the change feed while it
    runs with inotify on a file system of this host alone; None (a shared file system, no
    inotify, no feed): a directory changed within ``dirty_window`` is listed on every look."""

    __slots__ = ("dirs",)

    def __init__(self, dirs: DirWatch | None = None) -> None:
        self.dirs = dirs


@dataclass(frozen=True)
class StoreSettings:
    """Knobs shared by every folder of a store (tests inject a clock and short timeouts)."""

    hostname: str
    now: Callable[[], float] = time.time
    lock_timeout: float = 10.0
    lock_stale_after: float = 60.0
    dirty_window: float = 1.0
    offload: Offload = field(default_factory=Offload, compare=False)
    witness: Witness = field(default_factory=Witness, compare=False)


NO_KEYWORDS: frozenset[str] = frozenset()
_keyword_sets: dict[frozenset[str], frozenset[str]] = {}


def intern_keywords(kws: frozenset[str]) -> frozenset[str]:
    """One object per distinct keyword set, so state rebuilds compare by identity."""
    if not kws:
        return NO_KEYWORDS
    found = _keyword_sets.get(kws)
    if found is None:
        if len(_keyword_sets) > 4096:
            _keyword_sets.clear()
        found = _keyword_sets[kws] = kws
    return found


by_uid = attrgetter("uid")
is_recent = attrgetter("recent")

flags_of_record = attrgetter("flags")
size_of = attrgetter("size")
date_of = attrgetter("internaldate")
keywords_of = attrgetter("keywords")
modseq_of = attrgetter("modseq")


def flags_column(file_names: Iterable[str]) -> list[frozenset[str]]:
    """``names.flags_of`` of each file name's info part; each distinct info parsed once."""
    infos = list(map(_info_part, map(str.partition, file_names, repeat(names.INFO_SEPARATOR))))
    table = {info: names.flags_of(info) for info in set(infos)}
    return list(map(table.__getitem__, infos))


_info_part = itemgetter(2)  # of str.partition(":")
