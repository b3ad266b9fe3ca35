"""The change feed: which messages exist, in which order they arrived, and what changed.

Every message the feed notices gets this server's next *arrival sequence number*. A cursor is
``<epoch>-<seq>``: the epoch names this run of the server (sequence numbers restart with it),
``seq`` the last number handed out when the cursor was made. "Messages after cursor c" are
exactly those noticed after c was made, so a client that passes the cursor of its previous answer
never misses a message and never sees one twice.

The feed holds every message's entry in memory, in arrival order, overall and per mailbox, with
unread counts kept as changes come: a page of the list is a slice, never a pass over the store.
Summaries (from, to, subject, snippet) are parsed once per message, on first use, and kept in the
folder's ``mailhub-cache`` so that a restart or another process does not parse them again.

Noticing: ``scan()`` syncs every folder of every mailbox (``Folder.sync()`` costs two stat()
calls for an unchanged folder) and turns the differences into changes. ``catch_up()`` does the
same for only the folders inotify reported changed: every directory of the tree is watched
before it is read, and a delivery's link() queues its event before the syscall returns, so
reading the inotify descriptor at once (not waiting for the reactor) finds every change made
before the call. It runs
* at the start of every list and wait request (so a message whose SMTP 250 came before the
  request is always found: the race-free part); without inotify (or once a watch failed) that
  is a whole ``scan()``,
* soon after inotify reports a change (deliveries by this process or any other on this host),
* and a whole ``scan()`` every ``poll_interval`` seconds (other hosts on a shared file system).
"""

from __future__ import annotations

import os
import re
import secrets
import select
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from mailhub.store import Folder, FolderState, MailStore, MessageGone, StoreError
from mailhub.store.names import INBOX, SEEN, folder_dirname, folder_from_dirname
from mailhub.web import parse, scan
from mailhub.web.ids import MessageRef
from mailhub.web.search import QueryError

log = Logger()

# Debounce for inotify bursts: one scan for the many events of one delivery.
NOTICE_DELAY = 0.02
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
    uid: int
    size: int
    received: int  # arrival time (the Maildir name's time), seconds since the epoch
    flags: frozenset[str]
    summary: parse.Summary | None = None  # parsed on first use; message files never change
    search: Any = None  # what the API's search matches against, made from the summary once
    text: str | None = None  # the body text free-text search looks in, read on first use

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
class _Watched:
    folder: Folder  # held: the store keeps Folder objects only while somebody uses them
    state: FolderState | None = None
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
    ) -> None:
        self.store = store
        self.clock = clock
        self.poll_interval = poll_interval
        self.epoch = secrets.token_hex(4)
        self.seq = 0
        self.entries: dict[str, Entry] = {}  # id -> entry, in arrival order
        self.scans = 0  # whole scans (every mailbox); catch-ups of changed folders not counted
        self._all = _Listing()
        self._boxes: dict[str, _Listing] = {}
        self._watched: dict[tuple[str, str], _Watched] = {}
        self._folders_of: dict[str, set[str]] = {}  # address -> names of its watched folders
        self._listeners: list[Callable[[list[Change]], None]] = []
        self._poll = LoopingCall(self._scan_logged)
        self._poll.clock = clock
        self._use_inotify = use_inotify
        self._notifier: Any = None
        self._readable: Any = None  # select.poll() on the notifier's descriptor
        self._watching: set[str] = set()
        self._soon: Any = None
        # What inotify said changed since the last look (see catch_up). Until a whole scan has
        # run with every directory watched, nothing can be trusted: _dirty_all.
        self._dirty_all = True
        self._dirty_domains: set[str] = set()
        self._dirty_boxes: set[str] = set()
        self._dirty_folders: set[tuple[str, str]] = set()

    # --- service ---------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._start_notifier()
        self._poll.start(self.poll_interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._poll.running:
            self._poll.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        notifier, self._notifier = self._notifier, None
        self._readable = None
        self._dirty_all = True
        if notifier is not None:
            notifier.loseConnection()

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
        for (address, name), watched in self._watched.items():
            yield address, name, len(watched.ids), watched.unread

    def after(self, seq: int) -> list[Entry]:
        """Entries noticed after ``seq``, oldest first."""
        entries = self._all.entries
        return entries[bisect_left(entries, seq + 1, key=_seq_of) :]

    def folder(self, ref: MessageRef) -> Folder:
        watched = self._watched.get((ref.mailbox, ref.folder))
        if watched is not None:
            return watched.folder
        return self.store.mailbox(ref.mailbox).folder(ref.folder)

    def raw(self, entry: Entry) -> bytes:
        return self.folder(entry.ref).read_message(entry.uid)

    def summary(self, entry: Entry) -> parse.Summary:
        """The entry's summary: from memory, else the folder's cache, else scanned (and cached
        for every later run and process). MessageGone if the message was expunged."""
        if entry.summary is None:
            entry.summary = self.folder(entry.ref).cached(
                entry.uid, SUMMARY_CACHE, *_SUMMARY_CODEC, **_SUMMARY_PATH
            )
        return entry.summary

    def search_text(self, entry: Entry) -> str:
        """The entry's body text for free-text search (lower case), kept like a summary."""
        if entry.text is None:
            folder = self.folder(entry.ref)
            entry.text = folder.cached(
                entry.uid, SEARCH_TEXT_CACHE, *_SEARCH_TEXT_CODEC, **_SEARCH_TEXT_PATH
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
                cache = self.folder(group[0].ref).cache_pass(name, *codec, **path)
            except (StoreError, OSError):
                continue
            with cache:
                for entry in group:
                    try:
                        setattr(entry, attr, cache.get(entry.uid))
                    except (MessageGone, StoreError, FileNotFoundError):
                        continue

    # --- noticing --------------------------------------------------------------------------

    def notice_soon(self) -> None:
        if self._soon is None or not self._soon.active():
            self._soon = self.clock.callLater(NOTICE_DELAY, self._catch_up_logged)

    def _catch_up_logged(self) -> None:
        try:
            self.catch_up()
        except Exception:
            log.failure("catching up with the mailboxes for the web feed failed")

    def _scan_logged(self) -> None:
        try:
            self.scan()
        except Exception:  # the poll must go on whatever one scan met
            log.failure("scanning mailboxes for the web feed failed")

    def catch_up(self) -> list[Change]:
        """Bring the feed up to date with every change made before this call; returns (and
        publishes) the changes. Costs a poll() on the inotify descriptor when nothing changed;
        without trustworthy inotify, a whole ``scan()``."""
        self._read_events()
        if self._notifier is None or self._dirty_all:
            return self.scan()
        if not (self._dirty_domains or self._dirty_boxes or self._dirty_folders):
            return []
        domains, self._dirty_domains = self._dirty_domains, set()
        boxes, self._dirty_boxes = self._dirty_boxes, set()
        folders, self._dirty_folders = self._dirty_folders, set()
        for domain in domains:
            path = self.store.root / domain
            self._watch_dir(path, self._domain_event(domain))
            try:
                with os.scandir(path) as found:
                    boxes.update(f"{d.name}@{domain}" for d in found if _visible_dir(d))
            except OSError:
                pass
        changes: list[Change] = []
        fresh: list[tuple[tuple[int, str], MessageRef, Any]] = []
        for address in boxes:
            for key in self._look_at_mailbox(address, changes, fresh):
                folders.discard(key)
        for key in folders:
            watched = self._watched.get(key)
            if watched is not None:
                self._sync(key, watched, changes, fresh)
        return self._finish(changes, fresh)

    def scan(self) -> list[Change]:
        """Bring the feed up to date with the disk by looking at every folder of every
        mailbox; returns (and publishes) the changes."""
        self.scans += 1
        # Whatever inotify reports from here on is newer than this scan's look.
        self._read_events()
        self._dirty_all = False
        self._dirty_domains.clear()
        self._dirty_boxes.clear()
        self._dirty_folders.clear()
        changes: list[Change] = []
        fresh: list[tuple[tuple[int, str], MessageRef, Any]] = []
        present: set[tuple[str, str]] = set()
        for address in self._mailboxes():
            present.update(self._look_at_mailbox(address, changes, fresh))
        for key in [k for k in self._watched if k not in present]:
            self._drop(key, changes)
        return self._finish(changes, fresh)

    def _look_at_mailbox(
        self, address: str, changes: list[Change], fresh: list[Any]
    ) -> list[tuple[str, str]]:
        """Sync every folder of one mailbox; the keys of the folders it has."""
        keys = []
        local, _, domain = address.rpartition("@")
        self._watch_dir(self.store.root / domain / local, self._mailbox_event(address, INBOX))
        try:
            mailbox = self.store.mailbox(address)
            names = mailbox.list_folders()
        except (StoreError, OSError):
            names = []
        for name in names:
            key = (address, name)
            watched = self._watched.get(key)
            try:
                if watched is None:
                    watched = _Watched(mailbox.folder(name))
                    self._watched[key] = watched
                    self._folders_of.setdefault(address, set()).add(name)
            except (StoreError, OSError):
                continue
            if self._sync(key, watched, changes, fresh):
                keys.append(key)
        for name in self._folders_of.get(address, set()) - set(names):
            self._drop((address, name), changes)
        return keys

    def _sync(
        self, key: tuple[str, str], watched: _Watched, changes: list[Change], fresh: list[Any]
    ) -> bool:
        """One folder: its differences since the last sync into ``changes``/``fresh``; False
        if it is gone."""
        address, name = key
        self._watch_folder(address, name)  # before reading it: nothing falls between
        try:
            state = watched.folder.sync()
        except (StoreError, OSError):
            self._drop(key, changes)
            return False
        if state is watched.state:
            return True
        seen = set()
        for m in state.messages:
            seen.add(m.key)
            entry = watched.ids.get(m.key)
            if entry is None:
                ref = MessageRef(address, name, m.key)
                fresh.append((arrival_order(m.internaldate, m.key), ref, (watched, m)))
            elif entry.flags != m.flags or entry.uid != m.uid:
                self._set_flags(entry, m.flags)
                entry.uid = m.uid
                changes.append(Change("flags", entry))
        for base in [b for b in watched.ids if b not in seen]:
            changes.append(Change("deleted", self._forget(watched, base)))
        watched.state = state
        return True

    def _finish(self, changes: list[Change], fresh: list[Any]) -> list[Change]:
        fresh.sort(key=lambda f: f[0])
        for _, ref, (watched, m) in fresh:
            if m.key in watched.ids:
                continue  # the same folder looked at twice in one pass
            self.seq += 1
            entry = Entry(self.seq, ref, m.uid, m.size, m.internaldate, m.flags)
            watched.ids[m.key] = entry
            watched.unread += SEEN not in entry.flags
            self.entries[entry.id] = entry
            self._all.add(entry)
            self._boxes.setdefault(ref.mailbox, _Listing()).add(entry)
            changes.append(Change("new", entry))
        if changes:
            self._publish(changes)
        return changes

    def _set_flags(self, entry: Entry, flags: frozenset[str]) -> None:
        delta = (SEEN not in flags) - (SEEN not in entry.flags)
        if delta:
            self._all.unread += delta
            self._boxes[entry.ref.mailbox].unread += delta
            self._watched[(entry.ref.mailbox, entry.ref.folder)].unread += delta
        entry.flags = flags

    def _drop(self, key: tuple[str, str], changes: list[Change]) -> None:
        watched = self._watched.pop(key, None)
        names = self._folders_of.get(key[0])
        if names is not None:
            names.discard(key[1])
            if not names:
                del self._folders_of[key[0]]
        if watched is not None:
            for base in list(watched.ids):
                changes.append(Change("deleted", self._forget(watched, base)))

    def _forget(self, watched: _Watched, base: str) -> Entry:
        entry = watched.ids.pop(base)
        watched.unread -= SEEN not in entry.flags
        self.entries.pop(entry.id, None)
        self._all.remove(entry)
        box = self._boxes.get(entry.ref.mailbox)
        if box is not None:
            box.remove(entry)
            if not box.entries:
                del self._boxes[entry.ref.mailbox]
        return entry

    def _mailboxes(self) -> list[str]:
        if self._notifier is not None:
            self._watch_tree()
        return self.store.mailboxes()

    def _watch_tree(self) -> None:
        """Watch the root, every domain and every mailbox directory, maildir or not yet: a
        first delivery creates the mailbox, then its new/, then the message, faster than one
        scan per step could follow."""
        root = self.store.root
        self._watch_dir(root, self._root_event)
        try:
            domains = [d for d in os.scandir(root) if _visible_dir(d)]
            for domain in domains:
                self._watch_dir(Path(domain.path), self._domain_event(domain.name))
                with os.scandir(domain.path) as boxes:
                    for box in boxes:
                        if _visible_dir(box):
                            address = f"{box.name}@{domain.name}"
                            self._watch_dir(Path(box.path), self._mailbox_event(address, INBOX))
        except OSError:
            pass  # vanished while we looked: the next scan sees the new shape

    # --- inotify ---------------------------------------------------------------------------

    def _start_notifier(self) -> None:
        if not self._use_inotify or not self.running:
            return
        try:
            from twisted.internet import inotify
        except ImportError:  # not Linux: polling alone
            self._use_inotify = False
            return
        feed = self

        class Notifier(inotify.INotify):  # type: ignore[misc,name-defined]
            def connectionLost(self, reason: Any = None) -> None:
                super().connectionLost(reason)
                feed._notifier_lost(self)

        try:
            self._notifier = Notifier(reactor=self.clock)
            self._notifier.startReading()
            self._readable = select.poll()
            self._readable.register(self._notifier.fileno(), select.POLLIN)
        except Exception as e:
            log.info("no inotify ({why}): polling every {n} s", why=e, n=self.poll_interval)
            self._notifier = self._readable = None
            self._use_inotify = False
            return
        self._watching = set()
        self._dirty_all = True

    def _notifier_lost(self, notifier: Any) -> None:
        # Twisted's INotify closes itself when any watched directory is removed (a deleted
        # folder): start a new one and watch everything again on the next scan.
        if notifier is not self._notifier:
            return
        self._notifier = self._readable = None
        self._dirty_all = True
        self._start_notifier()
        for watched in self._watched.values():
            watched.state = None
        self.notice_soon()

    def _read_events(self) -> None:
        """Handle the events the kernel has queued now, without waiting for the reactor to
        read them: they include every change made before this call."""
        while self._readable is not None and self._notifier is not None:
            if not self._readable.poll(0):
                return
            self._notifier.doRead()

    def _overflow(self, mask: int) -> bool:
        from twisted.internet import inotify

        if mask & inotify.IN_Q_OVERFLOW:
            self._dirty_all = True  # events were lost
            return True
        return False

    def _root_event(self, _watch: Any, path: FilePath[Any], mask: int) -> None:
        if not self._overflow(mask):
            self._dirty_domains.add(_name(path))
        self.notice_soon()

    def _domain_event(self, domain: str) -> Callable[..., None]:
        def changed(_watch: Any, path: FilePath[Any], mask: int) -> None:
            if not self._overflow(mask):
                self._dirty_boxes.add(f"{_name(path)}@{domain}")
            self.notice_soon()

        return changed

    def _mailbox_event(self, address: str, folder: str) -> Callable[..., None]:
        """Events in a folder's directory (the mailbox's own for INBOX): its new/ or cur/
        appearing, or (INBOX) a folder directory coming or going. The store's own files
        (UID list, cache, locks) are no change."""

        def changed(_watch: Any, path: FilePath[Any], mask: int) -> None:
            if self._overflow(mask):
                pass
            elif (name := _name(path)) in ("new", "cur"):
                self._dirty_folders.add((address, folder))
                self._dirty_boxes.add(address)  # a folder that just became a maildir
            elif folder == INBOX and folder_from_dirname(name) is not None:
                self._dirty_boxes.add(address)
            else:
                return
            self.notice_soon()

        return changed

    def _folder_event(self, key: tuple[str, str]) -> Callable[..., None]:
        def changed(_watch: Any, path: FilePath[Any], mask: int) -> None:
            if not self._overflow(mask):
                self._dirty_folders.add(key)
            self.notice_soon()

        return changed

    def _watch_dir(self, path: Path, callback: Callable[..., None]) -> None:
        if self._notifier is None or str(path) in self._watching:
            return
        from twisted.internet import inotify

        mask = (
            inotify.IN_CREATE
            | inotify.IN_MOVED_TO
            | inotify.IN_MOVED_FROM
            | inotify.IN_DELETE
            | inotify.IN_Q_OVERFLOW
        )
        try:
            self._notifier.watch(FilePath(str(path)), mask, callbacks=[callback])
        except Exception:
            # Gone already (the next look sees that), or out of watches: from now on only a
            # whole scan can be trusted.
            if path.is_dir():
                log.warn("cannot watch {path}: every request scans the store", path=str(path))
                self._use_inotify = False
                notifier, self._notifier, self._readable = self._notifier, None, None
                self._dirty_all = True
                notifier.loseConnection()
            return
        self._watching.add(str(path))

    def _watch_folder(self, address: str, name: str) -> None:
        # The store's documented layout (mailhub/store/store.py); only ever watched, not used.
        if self._notifier is None:
            return
        local, _, domain = address.rpartition("@")
        path = self.store.root / domain / local
        key = (address, name)
        if name != INBOX:
            path = path / folder_dirname(name)
            self._watch_dir(path, self._mailbox_event(address, name))
        self._watch_dir(path / "new", self._folder_event(key))
        self._watch_dir(path / "cur", self._folder_event(key))


def _name(path: FilePath[Any]) -> str:
    return os.fsdecode(path.basename())


def _visible_dir(entry: os.DirEntry[str]) -> bool:
    return not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False)
