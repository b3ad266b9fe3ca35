"""The web's list of messages: which exist, in which order they arrived, and what changed.

Every message the feed is told of gets this server's next *arrival sequence number*. A cursor is
``<epoch>-<seq>``: the epoch names this run of the server (sequence numbers restart with it),
``seq`` the last number handed out when the cursor was made. "Messages after cursor c" are
exactly those noticed after c was made, so a client that passes the cursor of its previous answer
never misses a message and never sees one twice.

The feed holds every message's entry in memory, in arrival order, overall and per mailbox, with
unread counts kept as changes come: a page of the list is a slice, never a pass over the store.
Summaries (from, to, subject, snippet) are parsed once per message, on first use, and kept in the
folder's ``mailhub-cache`` so that a restart or another process does not parse them again.

Noticing is the store's (mailhub.store.changes): the feed subscribes to every folder and turns the
store's changes into entries. ``catch_up()`` runs at the start of every list and wait request, so
a message whose SMTP 250 came before the request is always found (the race-free part).
"""

from __future__ import annotations

import re
import secrets
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mailhub.store import (
    Folder,
    MailStore,
    MessageGone,
    MessageInfo,
    StoreError,
    UidValidityChanged,
)
from mailhub.store.changes import (
    EXPUNGED,
    FOLDER_CREATED,
    FOLDER_DELETED,
    NEW,
    StoreChange,
    StoreChanges,
)
from mailhub.store.names import SEEN
from mailhub.web import parse, scan
from mailhub.web.ids import MessageRef
from mailhub.web.search import QueryError

log = Logger()
T = TypeVar("T")

# The summaries' entry in each folder's mailhub-cache; a new format takes a new name.
SUMMARY_CACHE = "web-summary-2"
SEARCH_TEXT_CACHE = "web-text-1"  # what free-text search looks in (mailhub.web.scan)
_seq_of = attrgetter("seq")
# A Maildir name's time (``<secs>.M<usecs>P...``): orders mail that arrived in one second.
_NAME_TIME = re.compile(r"(\d+)\.M(\d+)P")


def arrival_order(internaldate: int, key: str) -> tuple[int, int, int, str]:
    """The order new messages are numbered in: arrival second, then the name's time as
    numbers (the microseconds are not zero-padded: "M99999" came before "M100000")."""
    found = _NAME_TIME.match(key)
    if found is None:
        return (internaldate, 0, -1, key)
    return (internaldate, int(found[1]), int(found[2]), key)


@dataclass(eq=False, slots=True)
class Entry:
    """One message as the feed knows it."""

    seq: int
    ref: MessageRef
    # Its UID and the UIDVALIDITY that UID is of: a lost UID list is numbered anew, and the
    # old UID names another message then (RFC 3501 2.3.1.1). Use MailFeed.act, never ``uid``
    # alone: it finds the message again by its base name (``ref.key``) in a new numbering.
    uid: int
    size: int
    received: int  # arrival time (the Maildir name's time), seconds since the epoch
    flags: frozenset[str]
    summary: parse.Summary | None = None  # parsed on first use; message files never change
    search: Any = None  # what the API's search matches against, made from the summary once
    text: str | None = None  # the body text free-text search looks in, read on first use
    keywords: frozenset[str] = frozenset()  # IMAP keywords: manual tags (mailhub.web.tags)
    recipient: str | None = None  # our Received's "for" address (plus tags), read on first use
    uidvalidity: int = 0  # (0: unknown - found again by name on first use)

    @property
    def id(self) -> str:
        return self.ref.id

    @property
    def seen(self) -> bool:
        return SEEN in self.flags


@dataclass(frozen=True)
class Change:
    kind: str  # "new", "deleted", "flags"
    entry: Entry


@dataclass(eq=False)
class _Known:
    """One folder of the store: its entries and how many of them are unread."""

    ids: dict[str, Entry] = field(default_factory=dict)  # Maildir base name -> entry
    unread: int = 0


@dataclass(eq=False)
class _Listing:
    """Entries in arrival order (ascending seq) and how many of them are unread."""

    entries: list[Entry] = field(default_factory=list)
    unread: int = 0

    def add(self, entry: Entry) -> None:
        self.entries.append(entry)  # the newest seq: the end
        self.unread += SEEN not in entry.flags

    def remove(self, entry: Entry) -> None:
        i = bisect_left(self.entries, entry.seq, key=_seq_of)
        if i < len(self.entries) and self.entries[i] is entry:
            del self.entries[i]
            self.unread -= SEEN not in entry.flags


# A summary is scanned (mailhub.web.scan), not parsed in full: a first search over many
# messages reads only their headers, structure and the start of their text.
_SUMMARY_CODEC = (scan.summarise_file, parse.Summary.encode, parse.Summary.decode)
_SUMMARY_PATH = {"compute_path": scan.summarise_path}


def _encode_text(text: str) -> bytes:
    return text.encode("utf-8")


def _decode_text(data: bytes) -> str:
    # Strict: a record an older version wrote with surrogates (surrogatepass) does not decode,
    # so the cache computes it again, now by the header rule (mailhub.message.header_text).
    return data.decode("utf-8")


_SEARCH_TEXT_CODEC = (scan.search_text_file, _encode_text, _decode_text)
_SEARCH_TEXT_PATH = {"compute_path": scan.search_text_path}


class MailFeed(Service):
    def __init__(
        self,
        store: MailStore,
        clock: IReactorTime,
        poll_interval: float = 1.0,
        use_inotify: bool = True,
        changes: StoreChanges | None = None,
    ) -> None:
        """``changes``: the process's store change feed; without one, the feed makes its own
        (scanning every ``poll_interval`` seconds) and runs it while it runs itself."""
        self.store = store
        self.clock = clock
        self._own_changes = changes is None
        if changes is None:
            changes = StoreChanges(store, clock, poll_interval, use_inotify)
        self.changes = changes
        self.epoch = secrets.token_hex(4)
        self.seq = 0
        self.entries: dict[str, Entry] = {}  # id -> entry, in arrival order
        self._all = _Listing()
        self._boxes: dict[str, _Listing] = {}
        self._known: dict[tuple[str, str], _Known] = {}  # the store's folders
        self._listeners: list[Callable[[list[Change]], None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._subscribe()

    @property
    def scans(self) -> int:
        """Whole scans of the store (every mailbox); catch-ups of changed folders not counted."""
        return self.changes.scans

    # --- service ---------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._subscribe()
        if self._own_changes:
            self.changes.startService()
        else:
            self.catch_up()  # the shared feed may have run long before this

    def stopService(self) -> None:
        super().stopService()
        if self._own_changes:
            self.changes.stopService()
        elif self._unsubscribe is not None:
            self._unsubscribe()  # the shared feed outlives us: stop listening
            self._unsubscribe = None

    def _subscribe(self) -> None:
        if self._unsubscribe is None:
            self._unsubscribe = self.changes.subscribe(self._told)
            # What the store's feed knew before we listened (a shared one, started earlier).
            self._told(self.changes.current())

    # --- cursors ---------------------------------------------------------------------------

    @property
    def cursor(self) -> str:
        return f"{self.epoch}-{self.seq}"

    def parse_cursor(self, text: str | None) -> int:
        """The sequence number a cursor stands for; absent or "0" is the beginning."""
        if text is None or text in ("", "0"):
            return 0
        epoch, dash, number = text.partition("-")
        if not dash or not number.isdigit() or len(number) > 18:
            raise QueryError(f"{text!r} is not a cursor (use the cursor of an earlier answer)")
        if epoch != self.epoch:
            raise QueryError(
                "the cursor comes from an earlier run of the server; take a new one "
                "(GET /api/v1/messages) or pass since=0"
            )
        return min(int(number), self.seq)

    # --- listeners -------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[list[Change]], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _publish(self, changes: list[Change]) -> None:
        for listener in list(self._listeners):
            try:
                listener(changes)
            except Exception:
                log.failure("web feed listener failed")

    # --- reading ---------------------------------------------------------------------------

    def _listing(self, mailbox: str | None) -> _Listing:
        if mailbox is None:
            return self._all
        return self._boxes.get(mailbox) or _Listing()

    def count(self, mailbox: str | None = None) -> int:
        return len(self._listing(mailbox).entries)

    def unread(self, mailbox: str | None = None) -> int:
        return self._listing(mailbox).unread

    def page(self, start: int, limit: int, mailbox: str | None = None) -> list[Entry]:
        """Entries ``start`` to ``start + limit`` counted from the newest: O(limit)."""
        entries = self._listing(mailbox).entries
        end = len(entries) - start
        return entries[max(end - limit, 0) : max(end, 0)][::-1]

    def newest_first(self, mailbox: str | None = None) -> Iterator[Entry]:
        """Every entry (of one mailbox), newest first; a snapshot, safe across changes."""
        return reversed(list(self._listing(mailbox).entries))

    def folders(self) -> Iterator[tuple[str, str, int, int]]:
        """(mailbox, folder, messages, unread) of every folder the feed knows."""
        for (address, name), known in self._known.items():
            yield address, name, len(known.ids), known.unread

    def after(self, seq: int) -> list[Entry]:
        """Entries noticed after ``seq``, oldest first."""
        entries = self._all.entries
        return entries[bisect_left(entries, seq + 1, key=_seq_of) :]

    def folder(self, ref: MessageRef) -> Folder:
        return self.changes.folder(ref.mailbox, ref.folder)

    def _renumbered(self, folder: Folder, entries: Iterable[Entry]) -> None:
        """Bring the entries' UIDs to the numbering the folder reads and changes messages by
        now: those recorded under another UIDVALIDITY are found again by their base name (which
        never changes), as POP3 does; those not found get UID 0 (gone: no message has it)."""
        stale = [e for e in entries if not e.uidvalidity or e.uidvalidity != folder.uidvalidity]
        if not stale:
            return
        state = folder.sync()
        stale = [e for e in stale if e.uidvalidity != state.uidvalidity]
        if stale:
            now = {m.key: m.uid for m in state.messages}
            for e in stale:
                e.uid, e.uidvalidity = now.get(e.ref.key, 0), state.uidvalidity

    def act(self, entries: list[Entry], call: Callable[[Folder, list[int]], T]) -> T:
        """``call(folder, uids)``: the UIDs of these entries (of one folder) in the numbering
        the folder has now, those gone left out; never a UID of another numbering, which would
        name another message. A call whose own look numbers anew (UidValidityChanged) is made
        again with the UIDs found again. Resolving and calling happen in one reactor turn:
        a caller that waits (a busy lock) calls this again."""
        folder = self.folder(entries[0].ref)
        for attempt in (1, 2):
            self._renumbered(folder, entries)
            try:
                return call(folder, [e.uid for e in entries if e.uid])
            except UidValidityChanged:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def act_one(self, entry: Entry, call: Callable[[Folder, int], T]) -> T:
        """``act`` for one message: MessageGone if it is not in the folder now."""

        def one(folder: Folder, uids: list[int]) -> T:
            if not uids:
                raise MessageGone(f"message {entry.ref.key} is no longer in the folder")
            return call(folder, uids[0])

        return self.act([entry], one)

    def raw(self, entry: Entry) -> bytes:
        return self.act_one(entry, Folder.read_message)

    def summary(self, entry: Entry) -> parse.Summary:
        """The entry's summary: from memory, else the folder's cache, else scanned (and cached
        for every later run and process). MessageGone if the message was expunged."""
        if entry.summary is None:
            entry.summary = self.act_one(
                entry,
                lambda folder, uid: folder.cached(
                    uid, SUMMARY_CACHE, *_SUMMARY_CODEC, compute_path=scan.summarise_path
                ),
            )
        return entry.summary

    def search_text(self, entry: Entry) -> str:
        """The entry's body text for free-text search (lower case), kept like a summary."""
        if entry.text is None:
            entry.text = self.act_one(
                entry,
                lambda folder, uid: folder.cached(
                    uid, SEARCH_TEXT_CACHE, *_SEARCH_TEXT_CODEC, compute_path=scan.search_text_path
                ),
            )
        return entry.text

    def summarise(self, entries: Iterable[Entry]) -> None:
        """Fill in the summaries of many entries at once: one cache pass per folder (the cache
        file is checked once, new records are appended in one write). Entries of expunged
        messages are left without one."""
        self._fill(entries, "summary", SUMMARY_CACHE, _SUMMARY_CODEC, _SUMMARY_PATH)

    def search_texts(self, entries: Iterable[Entry]) -> None:
        """``search_text`` of many entries at once, as ``summarise``."""
        self._fill(entries, "text", SEARCH_TEXT_CACHE, _SEARCH_TEXT_CODEC, _SEARCH_TEXT_PATH)

    def _fill(
        self,
        entries: Iterable[Entry],
        attr: str,
        name: str,
        codec: tuple[Any, ...],
        path: dict[str, Any],
    ) -> None:
        by_folder: dict[tuple[str, str], list[Entry]] = {}
        for entry in entries:
            if getattr(entry, attr) is None:
                by_folder.setdefault((entry.ref.mailbox, entry.ref.folder), []).append(entry)
        for group in by_folder.values():
            try:
                folder = self.folder(group[0].ref)
                self._renumbered(folder, group)
                cache = folder.cache_pass(name, *codec, **path)
            except (StoreError, OSError):
                continue
            with cache:
                for entry in group:
                    # (the pass refuses UIDs once the folder is numbered anew while it runs:
                    # UidValidityChanged, a StoreError; those entries are filled on next use)
                    if not entry.uid or entry.uidvalidity != folder.uidvalidity:
                        continue
                    try:
                        setattr(entry, attr, cache.get(entry.uid))
                    except (MessageGone, StoreError, FileNotFoundError):
                        continue

    # --- noticing: the store's changes turned into entries -------------------------------

    def catch_up(self) -> list[Change]:
        """Bring the feed up to date with every change made before this call; returns (and
        publishes) the changes (see StoreChanges.catch_up)."""
        return self._collect(self.changes.catch_up)

    def scan(self) -> list[Change]:
        """Bring the feed up to date by looking at every folder of every mailbox; returns (and
        publishes) the changes."""
        return self._collect(self.changes.scan)

    def _collect(self, look: Callable[[], object]) -> list[Change]:
        got: list[Change] = []
        self._listeners.insert(0, got.extend)
        try:
            look()
        finally:
            self._listeners.remove(got.extend)
        return got

    def _told(self, told: list[StoreChange]) -> None:
        changes: list[Change] = []
        fresh: list[tuple[tuple[int, int, int, str], StoreChange, MessageInfo]] = []
        for c in told:
            key = (c.mailbox, c.folder)
            m = c.message
            if c.kind == FOLDER_CREATED:
                self._known.setdefault(key, _Known())
            elif c.kind == FOLDER_DELETED:
                self._drop(key, changes)
            elif m is None:
                continue
            elif c.kind == NEW:
                fresh.append((arrival_order(m.internaldate, m.key), c, m))
            elif (known := self._known.get(key)) is None:
                continue
            elif (entry := known.ids.get(m.key)) is None:
                continue
            elif c.kind == EXPUNGED:
                changes.append(Change("deleted", self._forget(known, m.key)))
            else:
                uid, entry.uid, entry.uidvalidity = entry.uid, m.uid, c.uidvalidity
                if entry.flags != m.flags or uid != m.uid or entry.keywords != m.keywords:
                    self._set_flags(entry, m.flags)
                    entry.keywords = m.keywords  # manual tags (mailhub.web.tags)
                    changes.append(Change("flags", entry))
        # Messages noticed together are numbered in the order they arrived.
        fresh.sort(key=lambda f: f[0])
        for _, c, m in fresh:
            self._add(c, m, changes)
        if changes:
            self._publish(changes)

    def _add(self, c: StoreChange, m: MessageInfo, changes: list[Change]) -> None:
        mailbox = c.mailbox
        known = self._known.setdefault((mailbox, c.folder), _Known())
        if m.key in known.ids:
            return  # told twice (what was known when we subscribed, then a look)
        self.seq += 1
        ref = MessageRef(mailbox, c.folder, m.key)
        entry = Entry(self.seq, ref, m.uid, m.size, m.internaldate, m.flags, keywords=m.keywords)
        entry.uidvalidity = c.uidvalidity
        known.ids[m.key] = entry
        known.unread += SEEN not in entry.flags
        self.entries[entry.id] = entry
        self._all.add(entry)
        self._boxes.setdefault(mailbox, _Listing()).add(entry)
        changes.append(Change("new", entry))

    def _set_flags(self, entry: Entry, flags: frozenset[str]) -> None:
        delta = (SEEN not in flags) - (SEEN not in entry.flags)
        if delta:
            self._all.unread += delta
            self._boxes[entry.ref.mailbox].unread += delta
            self._known[(entry.ref.mailbox, entry.ref.folder)].unread += delta
        entry.flags = flags

    def _drop(self, key: tuple[str, str], changes: list[Change]) -> None:
        known = self._known.pop(key, None)
        if known is not None:
            for base in list(known.ids):
                changes.append(Change("deleted", self._forget(known, base)))

    def _forget(self, known: _Known, base: str) -> Entry:
        entry = known.ids.pop(base)
        known.unread -= SEEN not in entry.flags
        self.entries.pop(entry.id, None)
        self._all.remove(entry)
        box = self._boxes.get(entry.ref.mailbox)
        if box is not None:
            box.remove(entry)
            if not box.entries:
                del self._boxes[entry.ref.mailbox]
        return entry
