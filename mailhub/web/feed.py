"""The change feed: which messages exist, in which order they arrived, and what changed.

Every message the feed notices gets this server's next *arrival sequence number*. A cursor is
``<epoch>-<seq>``: the epoch names this run of the server (sequence numbers restart with it),
``seq`` the last number handed out when the cursor was made. "Messages after cursor c" are
exactly those noticed after c was made, so a client that passes the cursor of its previous answer
never misses a message and never sees one twice.

Noticing: ``scan()`` syncs every folder of every mailbox (``Folder.sync()`` costs two stat()
calls for an unchanged folder) and turns the differences into changes. It runs
* at the start of every list and wait request (so a message whose SMTP 250 came before the
  request is always found: the race-free part),
* soon after inotify reports a change in a watched directory (deliveries by this process or
  any other on this host: at once), and
* every ``poll_interval`` seconds (other hosts on a shared file system, or no inotify).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from mailhub.store import Folder, FolderState, MailStore, StoreError
from mailhub.store.names import INBOX, SEEN, folder_dirname
from mailhub.web import parse
from mailhub.web.ids import MessageRef
from mailhub.web.search import QueryError

log = Logger()

# Debounce for inotify bursts: one scan for the many events of one delivery.
NOTICE_DELAY = 0.02


@dataclass(eq=False)
class Entry:
    """One message as the feed knows it."""

    seq: int
    ref: MessageRef
    uid: int
    size: int
    received: int  # arrival time (the Maildir name's time), seconds since the epoch
    flags: frozenset[str]
    summary: parse.Summary | None = None  # parsed on first use; message files never change

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
        self.scans = 0
        self._watched: dict[tuple[str, str], _Watched] = {}
        self._listeners: list[Callable[[list[Change]], None]] = []
        self._poll = LoopingCall(self._scan_logged)
        self._poll.clock = clock
        self._use_inotify = use_inotify
        self._notifier: Any = None
        self._watching: set[str] = set()
        self._soon: Any = None

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

    def newest_first(self) -> Iterator[Entry]:
        return reversed(list(self.entries.values()))

    def after(self, seq: int) -> list[Entry]:
        """Entries noticed after ``seq``, oldest first."""
        found = []
        for entry in reversed(self.entries.values()):
            if entry.seq <= seq:
                break
            found.append(entry)
        return found[::-1]

    def folder(self, ref: MessageRef) -> Folder:
        watched = self._watched.get((ref.mailbox, ref.folder))
        if watched is not None:
            return watched.folder
        return self.store.mailbox(ref.mailbox).folder(ref.folder)

    def raw(self, entry: Entry) -> bytes:
        return self.folder(entry.ref).read_message(entry.uid)

    def summary(self, entry: Entry) -> parse.Summary:
        if entry.summary is None:
            entry.summary = parse.summarise(parse.load(self.raw(entry)))
        return entry.summary

    # --- noticing --------------------------------------------------------------------------

    def notice_soon(self) -> None:
        if self._soon is None or not self._soon.active():
            self._soon = self.clock.callLater(NOTICE_DELAY, self._scan_logged)

    def _scan_logged(self) -> None:
        try:
            self.scan()
        except Exception:  # the poll must go on whatever one scan met
            log.failure("scanning mailboxes for the web feed failed")

    def scan(self) -> list[Change]:
        """Bring the feed up to date with the disk; returns (and publishes) the changes."""
        self.scans += 1
        changes: list[Change] = []
        fresh: list[tuple[tuple[int, str], MessageRef, Any]] = []
        present: set[tuple[str, str]] = set()
        for address in self._mailboxes():
            try:
                mailbox = self.store.mailbox(address)
                names = mailbox.list_folders()
            except (StoreError, OSError):
                continue
            self._watch_dir(self.store.root / _domain(address))
            for name in names:
                key = (address, name)
                watched = self._watched.get(key)
                try:
                    if watched is None:
                        watched = _Watched(mailbox.folder(name))
                        self._watched[key] = watched
                    state = watched.folder.sync()
                except (StoreError, OSError):
                    continue
                present.add(key)
                if state is watched.state:
                    continue
                self._watch_folder(address, name)
                seen = set()
                for m in state.messages:
                    seen.add(m.key)
                    entry = watched.ids.get(m.key)
                    if entry is None:
                        ref = MessageRef(address, name, m.key)
                        fresh.append(((m.internaldate, m.key), ref, (watched, m)))
                    elif entry.flags != m.flags or entry.uid != m.uid:
                        entry.flags, entry.uid = m.flags, m.uid
                        changes.append(Change("flags", entry))
                for base in [b for b in watched.ids if b not in seen]:
                    changes.append(Change("deleted", self._forget(watched, base)))
                watched.state = state
        for key in [k for k in self._watched if k not in present]:
            watched = self._watched.pop(key)
            for base in list(watched.ids):
                changes.append(Change("deleted", self._forget(watched, base)))
        fresh.sort(key=lambda f: f[0])
        for _, ref, (watched, m) in fresh:
            self.seq += 1
            entry = Entry(self.seq, ref, m.uid, m.size, m.internaldate, m.flags)
            watched.ids[m.key] = entry
            self.entries[entry.id] = entry
            changes.append(Change("new", entry))
        if changes:
            self._publish(changes)
        return changes

    def _forget(self, watched: _Watched, base: str) -> Entry:
        entry = watched.ids.pop(base)
        self.entries.pop(entry.id, None)
        return entry

    def _mailboxes(self) -> list[str]:
        if self._notifier is not None:
            self._watch_tree()
        return self.store.mailboxes()

    def _watch_tree(self) -> None:
        """Watch the root, every domain and every mailbox directory, maildir or not yet: a
        first delivery creates the mailbox, then its new/, then the message, faster than one
        scan per step could follow."""
        self._watch_dir(self.store.root)
        try:
            domains = [d for d in os.scandir(self.store.root) if _visible_dir(d)]
            for domain in domains:
                self._watch_dir(Path(domain.path))
                with os.scandir(domain.path) as boxes:
                    for box in boxes:
                        if _visible_dir(box):
                            self._watch_dir(Path(box.path))
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
        except Exception as e:
            log.info("no inotify ({why}): polling every {n} s", why=e, n=self.poll_interval)
            self._use_inotify = False
            return
        self._watching = set()

    def _notifier_lost(self, notifier: Any) -> None:
        # Twisted's INotify closes itself when any watched directory is removed (a deleted
        # folder): start a new one and watch everything again on the next scan.
        if notifier is not self._notifier:
            return
        self._notifier = None
        self._start_notifier()
        for watched in self._watched.values():
            watched.state = None
        self.notice_soon()

    def _watch_dir(self, path: Path) -> None:
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
            self._notifier.watch(
                FilePath(str(path)), mask, callbacks=[lambda *_: self.notice_soon()]
            )
        except Exception:  # gone already, or out of watches: the poll still sees it
            return
        self._watching.add(str(path))

    def _watch_folder(self, address: str, name: str) -> None:
        # The store's documented layout (mailhub/store/store.py); only ever watched, not used.
        local, _, domain = address.rpartition("@")
        path = self.store.root / domain / local
        if name != INBOX:
            path = path / folder_dirname(name)
        self._watch_dir(path)
        self._watch_dir(path / "new")
        self._watch_dir(path / "cur")


def _visible_dir(entry: os.DirEntry[str]) -> bool:
    return not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False)


def _domain(address: str) -> str:
    return address.rpartition("@")[2]
