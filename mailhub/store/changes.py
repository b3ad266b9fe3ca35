"""The store's change feed: what changed in which folder, told to whoever listens.

Listeners subscribe to one folder (an IMAP IDLE session: its selected mailbox) or to the whole
store (the web feed). A change is a new message, a message's flags, an expunged message, or a
folder created or deleted (a rename is both). Changes come in batches: one per look at the disk.

Noticing: ``scan()`` syncs every folder of every mailbox (``Folder.sync()`` costs two stat()
calls for an unchanged folder) and turns the differences into changes. ``catch_up()`` does the
same for only the folders inotify reported changed: every directory of the tree is watched
before it is read, and a delivery's link() queues its event before the syscall returns, so
reading the inotify descriptor at once (not waiting for the reactor) finds every change made
before the call. It runs
* when a caller needs to be up to date (the web API, before it answers a list or wait);
  without inotify (or once a watch failed) that is a whole ``scan()``,
* soon after inotify reports a change: deliveries by this process or any other on this host
  (the SMTP receiver, POP3, IMAP, another mailhub worker),
* on the next reactor turn after ``touched()`` (this process delivered into a folder an IMAP
  session listens to: no need to wait for inotify's debounce),
* and a whole ``scan()`` every ``scan_interval`` seconds: file systems without inotify (NFS)
  and other hosts on a shared file system (while inotify is trusted and only IDLE sessions
  listen, each tick looks at a share of their folders: every one within ``trusted_rounds``).
Nothing is looked at while nobody listens; while only folder listeners do (IMAP sessions, no web
feed), only their mailboxes are looked at and watched.

While it runs with inotify on a file system of this host alone, the feed also gives the store
its inotify witness (``dirwatch.DirWatch``, ``StoreSettings.witness``): most IMAP commands then
need not list a folder changed within the last second again when nothing changed it since
(``Folder.sync(fast=True)``). On a file system several hosts share (NFS), no witness.

Listeners see facts about the disk, not a protocol's view: an IMAP session is only woken up by
them and reports what its own View's sync finds (RFC 3501's EXISTS/EXPUNGE rules stay there).
"""

from __future__ import annotations

import os
import select
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from mailhub.store.dirwatch import DirWatch, local_file_system
from mailhub.store.errors import LockBusy, StoreError
from mailhub.store.maildir import Folder, FolderState, MessageInfo
from mailhub.store.names import INBOX, folder_dirname, folder_from_dirname
from mailhub.store.store import MailStore
from mailhub.store.uidwriter import UidsPending

log = Logger()

# Debounce for inotify bursts: one look for the many events of one delivery.
NOTICE_DELAY = 0.02
# Folder listeners told per reactor turn (each an IMAP session's look and write, ~50-150 us):
# the first this many at once, the rest on later turns, so other connections get a turn between.
FANOUT_BATCH = 200
# Folders looked at per reactor turn by the timed scan of IDLE sessions' folders (each two
# stat() calls, ~10-20 us): 9,000 in one turn held the reactor for ~150 ms every second.
SCAN_BATCH = 500
# A folder whose lock was busy is looked at again after this long (a live holder keeps it for
# milliseconds; a dead one on another node for up to a minute: not 50 looks a second).
BUSY_DELAY = 0.1

# inotify's queue-overflow event: wd -1, mask IN_Q_OVERFLOW (<sys/inotify.h>)
_OVERFLOW = struct.pack("=iI", -1, 0x00004000)
# One event's header: wd, mask, cookie, length of the NUL-padded name that follows.
_EVENT = struct.Struct("=iIII")

NEW = "new"
FLAGS = "flags"  # flags, keywords or UID of a message changed
EXPUNGED = "expunged"
FOLDER_CREATED = "folder-created"
FOLDER_DELETED = "folder-deleted"
MESSAGE_CHANGES = frozenset((NEW, FLAGS, EXPUNGED))  # the folder itself is still there

FolderKey = tuple[str, str]  # (mailbox address, folder name)
Listener = Callable[[list["StoreChange"]], None]


@dataclass(frozen=True, slots=True)
class StoreChange:
    kind: str  # NEW, FLAGS, EXPUNGED, FOLDER_CREATED, FOLDER_DELETED
    mailbox: str
    folder: str
    message: MessageInfo | None = None  # the message as it is now (EXPUNGED: as it was)
    # The UIDVALIDITY of ``message.uid`` (0: unknown): a lost UID list is numbered anew, and
    # a UID names the same message only with it (RFC 3501 2.3.1.1).
    uidvalidity: int = 0


@dataclass(eq=False)
class _Watched:
    folder: Folder  # held: the store keeps Folder objects only while somebody uses them
    state: FolderState | None = None
    known: dict[str, MessageInfo] = field(default_factory=dict)  # Maildir base name -> info
    unlisten: Callable[[], None] | None = None  # stops hearing of the folder's UID writes


@dataclass(eq=False, slots=True)
class _Subscription:
    listener: Listener
    key: FolderKey | None  # None: every folder of every mailbox


class StoreChanges(Service):
    """One per process (see mailhub.service); also made by a web feed that was given none."""

    def __init__(
        self,
        store: MailStore,
        clock: IReactorTime,
        scan_interval: float = 1.0,
        use_inotify: bool = True,
        trusted_rounds: int = 10,
        witness: bool | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.scan_interval = scan_interval
        # While inotify is trusted, the timed scan of IDLE folders looks at each one every
        # this many ticks (other hosts' deliveries on a shared file system: 10 s by default)
        self.trusted_rounds = trusted_rounds
        self._scan_cursor = 0
        self.scans = 0  # whole scans (every mailbox); catch-ups of changed folders not counted
        self._watched: dict[FolderKey, _Watched] = {}
        self._folders_of: dict[str, set[str]] = {}  # address -> names of its watched folders
        # Listeners (dicts as ordered sets: O(1) unsubscribe among thousands)
        self._everything: dict[_Subscription, None] = {}  # of every folder (the web feed)
        self._by_key: dict[FolderKey, dict[_Subscription, None]] = {}  # of one folder (IDLE)
        self._fanout: list[tuple[list[_Subscription], list[StoreChange]]] = []  # still to tell
        self._fanout_call: Any = None
        self._assign = False  # does the look in progress assign UIDs itself (catch_up)?
        # A timed scan of folder listeners' folders spread over reactor turns: (the keys,
        # how far it got, the mailboxes looked at whole)
        self._spread: tuple[list[FolderKey], int, set[str]] | None = None
        self._scan_timer = LoopingCall(self._scan_logged)
        self._scan_timer.clock = clock
        self._use_inotify = use_inotify
        # Give the store an inotify witness (None: when inotify is used and the store's file
        # system is this host's alone, dirwatch.local_file_system)
        self._want_witness = witness
        self._witness: DirWatch | None = None
        self._notifier: Any = None
        self._readable: Any = None  # select.poll() on the notifier's descriptor
        self._watching: set[str] = set()
        self._watching_folders: set[FolderKey] = set()  # with every directory in _watching
        self._soon: Any = None
        self._touched: set[FolderKey] = set()  # folders touched() since the last look at them
        self._touched_look = float("-inf")  # when the last look at touched folders was
        # What inotify said changed since the last look (see catch_up). Until a whole scan has
        # run with every directory watched, nothing can be trusted: _dirty_all.
        self._dirty_all = True
        self._partial = False  # the last scan looked only at the subscribed mailboxes
        self._dirty_domains: set[str] = set()
        self._dirty_boxes: set[str] = set()
        self._dirty_folders: set[FolderKey] = set()

    # --- service ---------------------------------------------------------------------------

    def startService(self) -> None:
        if self.running:  # started early by a listener (the web site) and again by its parent
            return
        super().startService()
        self._start_notifier()
        self._start_witness()
        self._scan_timer.start(self.scan_interval, now=True)

    def stopService(self) -> None:
        if not self.running:
            return
        super().stopService()
        if self._scan_timer.running:
            self._scan_timer.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        if self._fanout_call is not None and self._fanout_call.active():
            self._fanout_call.cancel()
        self._fanout_call = None
        self._fanout.clear()
        self._spread = None
        notifier, self._notifier = self._notifier, None
        self._readable = None
        self._dirty_all = True
        if notifier is not None:
            notifier.loseConnection()
        witness, self._witness = self._witness, None
        if witness is not None:
            if self.store.settings.witness.dirs is witness:
                self.store.settings.witness.dirs = None
            witness.close()

    def _start_witness(self) -> None:
        slot = self.store.settings.witness
        if slot.dirs is not None:  # another feed on the same store has given one
            return
        want = self._want_witness
        if want is None:
            want = self._use_inotify and local_file_system(str(self.store.root))
        if not want:
            return
        self._witness = slot.dirs = DirWatch.open()

    # --- listeners -------------------------------------------------------------------------

    def subscribe(
        self, listener: Listener, mailbox: str | None = None, folder: str = INBOX
    ) -> Callable[[], None]:
        """Call ``listener`` with the changes of one folder (or, without ``mailbox``, of every
        folder) as they are noticed; returns the unsubscribe function."""
        sub = _Subscription(listener, None if mailbox is None else (mailbox, folder))
        # Indexed by folder: 10,000 IDLE sessions cost a publish only their own folder's.
        group = self._everything if sub.key is None else self._by_key.setdefault(sub.key, {})
        group[sub] = None
        if sub.key is None and self._partial:
            self._dirty_all = True  # from now on the whole store is looked at and watched
        if self.running and self._dirty_all:
            # Nobody listened: nothing is watched yet. Look soon, not at the next timed scan.
            self.notice_soon(0)
        elif self.running and sub.key is not None and sub.key not in self._watched:
            # A folder not looked at (nobody idled there): look at it and watch it now.
            self._dirty_boxes.add(sub.key[0])
            self.notice_soon(0)
        return lambda: self._unsubscribe(sub)

    def _unsubscribe(self, sub: _Subscription) -> None:
        if sub.key is None:
            self._everything.pop(sub, None)
            return
        group = self._by_key.get(sub.key)
        if group is not None:
            group.pop(sub, None)
            if not group:
                del self._by_key[sub.key]

    @property
    def listening(self) -> bool:
        """Does anybody listen?"""
        return bool(self._everything or self._by_key)

    def listener_count(self) -> int:
        return len(self._everything) + sum(map(len, self._by_key.values()))

    def current(self) -> list[StoreChange]:
        """What is known now, as changes from an empty store: FOLDER_CREATED and NEW."""
        out = []
        for (address, name), watched in self._watched.items():
            out.append(StoreChange(FOLDER_CREATED, address, name))
            v = watched.state.uidvalidity if watched.state is not None else 0
            out.extend(StoreChange(NEW, address, name, m, v) for m in watched.known.values())
        return out

    def folder(self, address: str, name: str) -> Folder:
        watched = self._watched.get((address, name))
        if watched is not None:
            return watched.folder
        return self.store.mailbox(address).folder(name)

    def touched(self, address: str, name: str = INBOX) -> None:
        """This process changed a folder (a delivery: INBOX). Folder listeners (IDLE sessions)
        hear of it on the next reactor turn, without waiting for inotify or a timed scan; at
        most one such look per NOTICE_DELAY (a flood of deliveries: looks, not one each).
        Store-wide listeners (the web feed) are served by inotify and the timed scan."""
        key = (address, name)
        if not self.running or key not in self._by_key:
            return
        if not self._touched:
            now = self.clock.seconds()
            delay = max(0.0, self._touched_look + NOTICE_DELAY - now)
            self.clock.callLater(delay, self._look_at_touched)
        self._touched.add(key)

    def _look_at_touched(self) -> None:
        keys, self._touched = self._touched, set()
        self._touched_look = self.clock.seconds()
        changes: list[StoreChange] = []
        try:
            for key in keys:
                watched = self._watched.get(key)
                if watched is not None:
                    self._sync(key, watched, changes)
                else:  # a folder not known yet (perhaps a first delivery made the mailbox)
                    self._look_at_mailbox(key[0], changes)
        except Exception:
            log.failure("looking at a changed folder failed")
        self._finish(changes)

    def _interest(self) -> set[str] | None:
        """The mailboxes somebody listens to; None: the whole store."""
        if self._everything:
            return None
        return {address for address, _ in self._by_key}

    def _publish(self, changes: list[StoreChange]) -> None:
        """Tell the store-wide listeners every change, each folder's listeners its own: the
        first FANOUT_BATCH of them now, the rest FANOUT_BATCH per reactor turn (a delivery to
        a folder 1,000 sessions watch must not keep every other connection waiting)."""
        for sub in list(self._everything):
            self._tell(sub, changes)
        by_folder: dict[FolderKey, list[StoreChange]] = {}
        for c in changes:
            by_folder.setdefault((c.mailbox, c.folder), []).append(c)
        for key, mine in by_folder.items():
            group = self._by_key.get(key)
            if group:
                self._fanout.append((list(group), mine))
        self._fan_out()

    def _fan_out(self) -> None:
        self._fanout_call = None
        budget = FANOUT_BATCH
        while self._fanout and budget > 0:
            subs, mine = self._fanout[0]
            now, later = subs[:budget], subs[budget:]
            if later:
                self._fanout[0] = (later, mine)
            else:
                self._fanout.pop(0)
            budget -= len(now)
            for sub in now:
                if sub.key is not None and sub in self._by_key.get(sub.key, ()):
                    self._tell(sub, mine)  # (not if it unsubscribed meanwhile)
        if self._fanout and self._fanout_call is None:
            self._fanout_call = self.clock.callLater(0, self._fan_out)

    def _tell(self, sub: _Subscription, changes: list[StoreChange]) -> None:
        try:
            sub.listener(changes)
        except Exception:
            log.failure("store change listener failed")

    # --- noticing --------------------------------------------------------------------------

    def notice_soon(self, delay: float = NOTICE_DELAY) -> None:
        if self._soon is None or not self._soon.active():
            self._soon = self.clock.callLater(delay, self._catch_up_logged)

    def _catch_up_logged(self) -> None:
        try:
            self.catch_up(assign=False)
        except Exception:
            log.failure("catching up with the mailboxes failed")

    def _scan_logged(self) -> None:
        if not self.listening:
            self._dirty_all = True  # nobody listens: no look; the next one starts afresh
            return
        try:
            if self._interest() is not None:
                self._scan_spread()
            else:
                self.scan()
        except Exception:  # the timer must go on whatever one scan met
            log.failure("scanning the mailboxes for changes failed")

    def _scan_spread(self) -> None:
        """The timed ``scan()`` of folder listeners (IMAP IDLE), SCAN_BATCH folders a reactor
        turn: 10,000 sessions idle in 9,000 folders, two stat() calls each, would otherwise
        hold the reactor for one long turn every second. A tick that finds the last pass
        still going skips."""
        if self._spread is not None:
            return
        self.scans += 1
        trusted = self._notifier is not None and not self._dirty_all
        self._read_events()
        self._dirty_all = False
        self._partial = True
        keys = list(self._by_key)
        if trusted and self.trusted_rounds > 1 and keys:
            # inotify tells this host's changes: the timed look is for other hosts' (a shared
            # file system), so each tick takes the next share of the folders and every one
            # is looked at within trusted_rounds ticks (9,000 folders each second were 3/4
            # of the reactor's time in the 10,000-session benchmark).
            share = max(SCAN_BATCH, -(-len(keys) // self.trusted_rounds))
            at = self._scan_cursor % len(keys)
            keys = (keys[at:] + keys[:at])[:share]
            self._scan_cursor = at + share
        self._spread = (keys, 0, set())
        self._scan_more()

    def _scan_more(self) -> None:
        spread, self._spread = self._spread, None
        if spread is None or not self.running or not self._by_key:
            return
        keys, at, looked = spread
        changes: list[StoreChange] = []
        try:
            self._scan_keys(keys[at : at + SCAN_BATCH], looked, changes)
        finally:
            self._finish(changes)
            if at + SCAN_BATCH < len(keys):
                self._spread = (keys, at + SCAN_BATCH, looked)
                self.clock.callLater(0, self._scan_more)

    def catch_up(self, *, assign: bool = True) -> list[StoreChange]:
        """Bring the feed up to date with every change made before this call; returns (and
        publishes) the changes. Costs a poll() on the inotify descriptor when nothing changed;
        without trustworthy inotify, a whole ``scan()``.

        A caller that must see every message delivered before it (the web API) gets their
        UIDs assigned here, as ``Folder.sync()`` does; so do all looks while a store-wide
        listener (the web feed) listens. Otherwise the feed's own looks (``assign=False``:
        inotify, touched(), the timed scan) leave that to the store's worker and tell the new
        messages once it has written them (``_written``)."""
        before, self._assign = self._assign, assign
        try:
            return self._catch_up()
        finally:
            self._assign = before

    def _catch_up(self) -> list[StoreChange]:
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
        changes: list[StoreChange] = []
        for address in boxes:
            for key in self._look_at_mailbox(address, changes):
                folders.discard(key)
        for key in folders:
            watched = self._watched.get(key)
            # Watched still, but its last listener here left (an IDLE session ended): another
            # worker's deliveries there cost this process no look.
            if watched is not None and (self._everything or key in self._by_key):
                self._sync(key, watched, changes)
        return self._finish(changes)

    def scan(self) -> list[StoreChange]:
        """Bring the feed up to date with the disk by looking at every folder of every
        mailbox (only of the mailboxes listened to, when nobody listens to the whole store);
        returns (and publishes) the changes."""
        self.scans += 1
        interest = self._interest()
        if interest is not None:
            return self._scan_folders()
        # Whatever inotify reports from here on is newer than this scan's look.
        self._read_events()
        self._dirty_all = False
        self._dirty_domains.clear()
        self._dirty_boxes.clear()
        self._dirty_folders.clear()
        self._partial = False
        changes: list[StoreChange] = []
        present: set[FolderKey] = set()
        for address in self._mailboxes():
            present.update(self._look_at_mailbox(address, changes))
        for key in [k for k in self._watched if k not in present]:
            self._drop(key, changes)
        return self._finish(changes)

    def _scan_folders(self) -> list[StoreChange]:
        """``scan()`` for IMAP sessions alone: a server without the web feed does not look
        at (or watch) the mailboxes of users who are not idling, nor at the folders nobody
        idles in (every user has six; 10,000 sessions would make it 60,000 looks a second)."""
        self._read_events()
        self._dirty_all = False
        self._partial = True
        changes: list[StoreChange] = []
        self._scan_keys(sorted(self._by_key), set(), changes)
        return self._finish(changes)

    def _scan_keys(
        self, keys: list[FolderKey], looked: set[str], changes: list[StoreChange]
    ) -> None:
        """``_scan_folders``' look at some of the folders listened to (``looked``: mailboxes
        looked at whole already)."""
        for key in keys:
            if key not in self._by_key:
                continue  # (a spread pass: nobody listens there any more)
            address = key[0]
            watched = self._watched.get(key)
            if watched is not None:
                self._dirty_folders.discard(key)
                self._sync(key, watched, changes)
            elif address not in looked:  # not known yet (or gone): the whole mailbox
                looked.add(address)
                self._dirty_boxes.discard(address)
                self._dirty_folders = {k for k in self._dirty_folders if k[0] != address}
                self._look_at_mailbox(address, changes)

    def _finish(self, changes: list[StoreChange]) -> list[StoreChange]:
        if changes:
            self._publish(changes)
        return changes

    def _look_at_mailbox(self, address: str, changes: list[StoreChange]) -> list[FolderKey]:
        """Sync every folder of one mailbox; the keys of the folders it has."""
        keys = []
        local, _, domain = address.rpartition("@")
        self._watch_dir(self.store.root / domain / local, self._mailbox_event(address, INBOX))
        try:
            mailbox = self.store.mailbox(address)
            names = mailbox.list_folders()
        except (StoreError, OSError):
            names = []
        if not self._everything:
            # Only IDLE sessions listen: the folders they idle in, not the other five every
            # user has (each folder three inotify watches and a Folder kept in memory).
            names = [name for name in names if (address, name) in self._by_key]
        for name in names:
            key = (address, name)
            watched = self._watched.get(key)
            try:
                if watched is None:
                    watched = self._watch(key, mailbox.folder(name))
                    self._folders_of.setdefault(address, set()).add(name)
                    changes.append(StoreChange(FOLDER_CREATED, address, name))
            except (StoreError, OSError):
                continue
            if self._sync(key, watched, changes):
                keys.append(key)
        for name in self._folders_of.get(address, set()) - set(names):
            self._drop((address, name), changes)
        return keys

    def _watch(self, key: FolderKey, folder: Folder) -> _Watched:
        watched = self._watched[key] = _Watched(folder)
        watched.unlisten = folder.on_written(lambda: self._written(key))
        return watched

    def _written(self, key: FolderKey) -> None:
        """A worker wrote the folder's UID list (uidwriter.py): the messages it gave UIDs
        are told on the next reactor turn."""
        if not self.running or key not in self._watched:
            return
        if not self._touched:
            self.clock.callLater(0, self._look_at_touched)
        self._touched.add(key)

    def _sync(self, key: FolderKey, watched: _Watched, changes: list[StoreChange]) -> bool:
        """One folder: its differences since the last sync into ``changes``; False if it is
        gone. New messages are told once a worker has given them their UIDs (``_written``):
        the reactor never writes the UID list (nor waits for its lock) here."""
        address, name = key
        self._watch_folder(address, name)  # before reading it: nothing falls between
        try:
            # Store-wide listeners (the web feed: its API promises every message whose 250
            # came before a request) get UIDs assigned in the look, as ever; IDLE sessions
            # alone leave it to the worker.
            state = watched.folder.sync(assign=self._assign or bool(self._everything))
        except UidsPending:
            return True  # a first list is being written: _written looks again
        except LockBusy:
            # Another session or process has the folder's lock for a moment: look again soon
            # (the reactor never waits for a lock) and keep what we know meanwhile.
            self._dirty_folders.add(key)
            self.notice_soon(BUSY_DELAY)
            return True
        except (StoreError, OSError):
            self._drop(key, changes)
            return False
        if state is watched.state:
            return True
        known, seen = watched.known, set()
        for m in state.messages:
            seen.add(m.key)
            old = known.get(m.key)
            if old is None:
                changes.append(StoreChange(NEW, address, name, m, state.uidvalidity))
            elif old.flags != m.flags or old.uid != m.uid or old.keywords != m.keywords:
                changes.append(StoreChange(FLAGS, address, name, m, state.uidvalidity))
            known[m.key] = m
        for base in [b for b in known if b not in seen]:
            changes.append(StoreChange(EXPUNGED, address, name, known.pop(base)))
        watched.state = state
        return True

    def _drop(self, key: FolderKey, changes: list[StoreChange]) -> None:
        watched = self._watched.pop(key, None)
        if watched is not None and watched.unlisten is not None:
            watched.unlisten()
        names = self._folders_of.get(key[0])
        if names is not None:
            names.discard(key[1])
            if not names:
                del self._folders_of[key[0]]
        if watched is not None:
            address, name = key
            changes.extend(StoreChange(EXPUNGED, address, name, m) for m in watched.known.values())
            changes.append(StoreChange(FOLDER_DELETED, address, name))

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
        except ImportError:  # not Linux: timed scans alone
            self._use_inotify = False
            return
        changes = self

        class Notifier(inotify.INotify):
            def connectionLost(self, reason: Any = None) -> None:
                super().connectionLost(reason)
                changes._notifier_lost(self)

            def _doRead(self, in_: bytes) -> None:
                # Twisted drops the queue's overflow event (its watch descriptor is -1, no
                # watch's): events were lost, so only a whole scan can be trusted now. (A
                # read holds whole events; the pattern cannot occur inside one: no watch
                # has descriptor -1, and a name is NUL-padded before the next header.)
                if _OVERFLOW in in_:
                    changes._overflow(inotify.IN_Q_OVERFLOW)
                    changes.notice_soon()
                # Twisted's own loop makes a FilePath per event (abspath, normpath: most of
                # an event's cost, ~4 events per IMAP change) and copies the rest of the
                # buffer after each; ours hands the callbacks the name. Otherwise the same:
                # no autoAdd watch here, IN_DELETE_SELF drops the watch and closes.
                buf = self._buffer + in_ if self._buffer else in_
                points = self._watchpoints
                end, at = len(buf), 0
                while end - at >= 16:
                    wd, mask, _cookie, size = _EVENT.unpack_from(buf, at)
                    name = buf[at + 16 : at + 16 + size].rstrip(b"\0") if size else b""
                    at += 16 + size
                    iwp = points.get(wd)
                    if iwp is None:
                        continue  # (the overflow event's -1, a watch removed meanwhile)
                    if not name:
                        name = iwp.path.basename()  # an event of the watched directory itself
                    for callback in iwp.callbacks:
                        callback(iwp, name, mask)
                    if mask & inotify.IN_DELETE_SELF:
                        self._rmWatch(wd)
                        self.loseConnection()
                self._buffer = buf[at:]

        try:
            self._notifier = Notifier(reactor=self.clock)
            self._notifier.startReading()
            self._readable = select.poll()
            self._readable.register(self._notifier.fileno(), select.POLLIN)
        except Exception as e:
            log.info("no inotify ({why}): scanning every {n} s", why=e, n=self.scan_interval)
            self._notifier = self._readable = None
            self._use_inotify = False
            return
        self._watching = set()
        self._watching_folders = set()
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

    def _root_event(self, _watch: Any, name: bytes, mask: int) -> None:
        if not self._overflow(mask):
            self._dirty_domains.add(os.fsdecode(name))
        self.notice_soon()

    def _domain_event(self, domain: str) -> Callable[..., None]:
        def changed(_watch: Any, name: bytes, mask: int) -> None:
            if not self._overflow(mask):
                self._dirty_boxes.add(f"{os.fsdecode(name)}@{domain}")
            self.notice_soon()

        return changed

    def _mailbox_event(self, address: str, folder: str) -> Callable[..., None]:
        """Events in a folder's directory (the mailbox's own for INBOX): its new/ or cur/
        appearing, or (INBOX) a folder directory coming or going. The store's own files
        (UID list, cache, locks) are no change."""

        def changed(_watch: Any, raw: bytes, mask: int) -> None:
            if self._overflow(mask):
                pass
            elif (name := os.fsdecode(raw)) in ("new", "cur"):
                self._dirty_folders.add((address, folder))
                self._dirty_boxes.add(address)  # a folder that just became a maildir
            elif folder == INBOX and folder_from_dirname(name) is not None:
                self._dirty_boxes.add(address)
            else:
                return
            self.notice_soon()

        return changed

    def _folder_event(self, key: FolderKey) -> Callable[..., None]:
        def changed(_watch: Any, _name: bytes, mask: int) -> None:
            if not self._overflow(mask):
                self._dirty_folders.add(key)
            self.notice_soon()

        return changed

    def _watch_dir(self, path: Path, callback: Callable[..., None], extra: int = 0) -> bool:
        """Watch ``path``; whether it is watched (now or before)."""
        if self._notifier is None:
            return False
        if str(path) in self._watching:
            return True
        from twisted.internet import inotify

        mask = (
            inotify.IN_CREATE
            | inotify.IN_MOVED_TO
            | inotify.IN_MOVED_FROM
            | inotify.IN_DELETE
            | inotify.IN_Q_OVERFLOW
            | extra
        )
        try:
            self._notifier.watch(FilePath(str(path)), mask, callbacks=[callback])
        except Exception:
            # Gone already (the next look sees that), or out of watches: from now on only a
            # whole scan can be trusted.
            if path.is_dir():
                log.warn("cannot watch {path}: every look scans the store", path=str(path))
                self._use_inotify = False
                notifier, self._notifier, self._readable = self._notifier, None, None
                self._dirty_all = True
                notifier.loseConnection()
            return False
        self._watching.add(str(path))
        return True

    def _watch_folder(self, address: str, name: str) -> None:
        # The store's documented layout (mailhub/store/store.py); only ever watched, not used.
        if self._notifier is None:
            return
        key = (address, name)
        if key in self._watching_folders:
            return  # (each look at a folder asks: the paths below cost more than the look)
        local, _, domain = address.rpartition("@")
        path = self.store.root / domain / local
        ok = True
        if name != INBOX:
            path = path / folder_dirname(name)
            ok = self._watch_dir(path, self._mailbox_event(address, name))
        ok &= self._watch_dir(path / "new", self._folder_event(key))
        # IN_ATTRIB: a keyword-only STORE renames nothing but touches cur/'s mtime
        # (mailhub.store.flags); without it only the timed scan would see keyword changes.
        from twisted.internet.inotify import IN_ATTRIB

        ok &= self._watch_dir(path / "cur", self._folder_event(key), IN_ATTRIB)
        if ok:
            self._watching_folders.add(key)


def _visible_dir(entry: os.DirEntry[str]) -> bool:
    return not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False)
