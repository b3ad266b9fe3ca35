"""One Maildir folder: scanning, UIDs, flags, new/ -> cur/, expunge, append, copy.

A ``Folder`` is a Maildir directory (``tmp/ new/ cur/``) - the mailbox root for INBOX, a
``.Name`` directory for other folders (Maildir++). Its public methods speak UIDs and flag
letters, never paths, so IMAP/POP3/web code cannot be tricked into touching other files.

Concurrency model (several sessions, processes and nodes on one tree):

* Delivery never locks: it only creates files in new/ (maildir.html).
* Flag changes, new/ -> cur/ moves and expunges are single rename()/unlink() calls, also
  lock-free; a reader that finds its file renamed under it rescans and retries.
* Only UID assignment takes the folder's dotlock (``mailhub-uidlist.lock``), for the moment it
  takes to merge the on-disk UID list with what it scanned and write the list back.
* ``sync()`` is cheap when nothing changed: two stat() calls comparing new/ and cur/ with the
  values of the last scan. Directory mtimes have coarse granularity (a kernel tick, seconds on
  some NFS servers), so a scan taken while a directory's mtime is younger than
  ``dirty_window`` is not trusted and the next sync() scans again (Dovecot does the same).
"""

from __future__ import annotations

import errno
import gc
import io
import itertools
import os
import re
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property, partial
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple, Protocol, TypeVar

from twisted.logger import Logger

from mailhub.safeio import fsync_dir, unlink_quietly, write_all
from mailhub.store import dotlock, names, uidlist
from mailhub.store import uidvalidity as uidvalidity_counter
from mailhub.store.cache import MISSING, CachePass, FolderCache
from mailhub.store.cache import check_name as check_cache_name
from mailhub.store.dotlock import DotLock
from mailhub.store.errors import (
    CorruptUidList,
    FolderNotFound,
    LockBusy,
    LockTimeout,
    MessageGone,
)
from mailhub.store.uidlist import UidList

log = Logger()
T = TypeVar("T")

SUBDIRS = ("tmp", "new", "cur")
FOLDER_MARKER = "maildirfolder"  # Maildir++: marks a folder dir (used by Courier, Dovecot)
STALE_TMP_AGE = 36 * 3600  # maildir.html: tmp/ files untouched for 36 hours may be removed
_RETRIES = 5
# tmp/<KEPT_PREFIX><pid>.<n>.<host>: a link to an expunged message, kept while a session that
# was not told of the expunge may still read it (Folder.add_reader).
KEPT_PREFIX = "mailhub-kept."
_KEPT_NAME = re.compile(re.escape(KEPT_PREFIX) + r"(\d+)\.\d+\.(.+)\Z")
_kept_counter = itertools.count(1)


class Reader(Protocol):
    """A session reading a folder that is told of expunges only when its protocol allows (IMAP,
    RFC 3501 7.4.1): until then it may still read the messages it knows (RFC 2180 4.1)."""

    def knows(self, uid: int) -> bool:
        """The session still counts message ``uid`` as present (it was not told it is gone)."""


@dataclass
class _Kept:
    """An expunged message's file, linked into tmp/ for the readers not told yet."""

    base: str
    name: str  # in tmp/
    readers: weakref.WeakSet[Reader]


class MessageInfo(NamedTuple):
    """What a reader knows about one message without opening it.

    Immutable plain data. A named tuple rather than a frozen dataclass because a first scan
    of a big folder makes one per message, and a tuple is made in C (``_new_infos``) at
    a third of the cost; readers only use the fields."""

    uid: int
    key: str  # the Maildir base name: unique in the folder, stable (POP3 UIDL can use it)
    flags: frozenset[str]  # single letters, e.g. {"S", "F"}; see names.py
    size: int  # octets as stored (CRLF line ends, so this is IMAP's RFC822.SIZE)
    internaldate: int  # seconds since the epoch
    recent: bool  # still in new/: no reader has taken it yet
    keywords: frozenset[str] = frozenset()  # IMAP keywords ("$Forwarded", "Junk"), from the index
    modseq: int = 1  # RFC 7162 mod-sequence of its last flag/keyword change


def _new_infos(*columns: Iterable[Any]) -> list[MessageInfo]:
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


@dataclass(frozen=True)
class StoreSettings:
    """Knobs shared by every folder of a store (tests inject a clock and short timeouts)."""

    hostname: str
    now: Callable[[], float] = time.time
    lock_timeout: float = 10.0
    lock_stale_after: float = 60.0
    dirty_window: float = 1.0


class _Files:
    """Where each message's file is: base name -> (subdir, file name), as a dict of pairs
    would say, kept as the two directories' own dicts (base -> file name): a first scan of a
    big folder then copies the listings instead of making a pair per message. A base is in
    one of them only (cur/ wins: a message moving new/ -> cur/ can show in both listings)."""

    __slots__ = ("cur", "new")

    def __init__(self, new: dict[str, str] | None = None, cur: dict[str, str] | None = None):
        self.new: dict[str, str] = {} if new is None else new
        self.cur: dict[str, str] = {} if cur is None else cur

    @classmethod
    def of_listings(cls, new: dict[str, str], cur: dict[str, str]) -> _Files:
        files = cls(dict(new), dict(cur))
        for base in files.new.keys() & files.cur.keys():
            del files.new[base]
        return files

    def get(self, base: str) -> tuple[str, str] | None:
        fn = self.cur.get(base)
        if fn is not None:
            return "cur", fn
        fn = self.new.get(base)
        return None if fn is None else ("new", fn)

    def get_file(self, base: str) -> str | None:
        fn = self.cur.get(base)
        return self.new.get(base) if fn is None else fn

    def file_names(self, bases: list[str]) -> list[str]:
        """The file names of ``bases`` (all present)."""
        if not self.new:
            return list(map(self.cur.__getitem__, bases))
        # (cur/ wins; in C loops: a first scan has a thousand in new/ among ten thousand)
        return list(map(self.cur.get, bases, map(self.new.get, bases)))  # type: ignore[arg-type]

    def files(self) -> Iterator[tuple[str, str]]:
        """(base, file name) of every message."""
        return chain(self.new.items(), self.cur.items())

    def __getitem__(self, base: str) -> tuple[str, str]:
        where = self.get(base)
        if where is None:
            raise KeyError(base)
        return where

    def __setitem__(self, base: str, where: tuple[str, str]) -> None:
        sub, fn = where
        if sub == "cur":
            self.new.pop(base, None)
            self.cur[base] = fn
        else:
            self.cur.pop(base, None)
            self.new[base] = fn

    def __delitem__(self, base: str) -> None:
        if self.pop(base) is None:
            raise KeyError(base)

    def pop(self, base: str, default: None = None) -> tuple[str, str] | None:
        where = self.get(base)
        self.new.pop(base, None)
        self.cur.pop(base, None)
        return where

    def __contains__(self, base: object) -> bool:
        return base in self.cur or base in self.new

    def __iter__(self) -> Iterator[str]:
        return chain(self.new, self.cur)

    def __len__(self) -> int:
        return len(self.new) + len(self.cur)


@dataclass
class _DirScan:
    """Cached scan of new/ or cur/: base name -> file name."""

    stamp: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) at the time of the scan
    trusted: bool = False  # mtime was older than the dirty window, so the stamp can be trusted
    files: dict[str, str] = field(default_factory=dict)


def create_maildir(path: Path, *, folder: bool) -> None:
    """Create a Maildir (``tmp new cur``), plus ``maildirfolder`` for a Maildir++ folder, and
    fsync so the directories survive a crash before the first message lands in them."""
    os.makedirs(path, 0o700, exist_ok=True)
    for sub in SUBDIRS:
        try:
            os.mkdir(path / sub, 0o700)
        except FileExistsError:
            pass
    if folder:
        fd = os.open(path / FOLDER_MARKER, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    fsync_dir(path)
    fsync_dir(path.parent)


def _orphan(name: str, host: str) -> bool:
    """A kept link (``KEPT_PREFIX``) made on this host by a process that is gone."""
    m = _KEPT_NAME.match(name)
    if m is None or m.group(2) != host:
        return False
    pid = int(m.group(1))
    return pid != os.getpid() and not dotlock.pid_alive(pid, "")


def is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def clean_stale_tmp(
    maildir: Path,
    now: Callable[[], float] = time.time,
    max_age: float = STALE_TMP_AGE,
    hostname: str | None = None,
) -> int:
    """Remove files in ``maildir/tmp`` older than ``max_age`` (maildir.html: 36 hours).

    "Older" means atime, mtime and ctime are all older: a delivery in progress keeps writing
    (mtime), so it is never removed. With ``hostname``, also the links to expunged messages
    that a process of this host kept (``Folder.expunge``) and that died without removing them
    (a crash). Returns the number of files removed.
    """
    removed = 0
    limit = now() - max_age
    host = None if hostname is None else names.escape_host(hostname)
    try:
        it = os.scandir(maildir / "tmp")
    except FileNotFoundError:
        return 0
    with it:
        for de in it:
            try:
                if not de.is_file(follow_symlinks=False):
                    continue
                if host is not None and de.name.startswith(KEPT_PREFIX) and _orphan(de.name, host):
                    os.unlink(de.path)
                    removed += 1
                    continue
                st = de.stat(follow_symlinks=False)
                if max(st.st_atime, st.st_mtime, st.st_ctime) < limit:
                    os.unlink(de.path)
                    removed += 1
            except FileNotFoundError:
                continue
    if removed:
        log.info("removed {n} stale tmp files in {dir}", n=removed, dir=str(maildir))
    return removed


class Folder:
    """One Maildir folder. Obtain it from ``Mailbox.folder()``; do not construct directly.

    All methods are blocking file-system calls that are quick (one or a few syscalls) except
    a ``sync()`` that has to rescan; protocol code may call them on the reactor thread. Not
    thread-safe: sessions share one Folder per directory (``MailStore`` hands out the same
    object), so use it from one thread only.

    Mod-sequences (RFC 7162): every change made under the folder lock - flags or keywords set,
    new messages given UIDs, messages found gone, a rename by another program noticed - takes
    one new value ``highestmodseq + 1`` for all the messages it touches. A change that only
    touches the index (keywords) also touches ``cur/``'s mtime, so other processes' two-stat
    ``sync()`` notices it.
    """

    def __init__(self, path: Path, name: str, settings: StoreSettings) -> None:
        self.name = name
        self._path = path
        self._dir = str(path)
        # The user's Maildir root: INBOX itself, the parent of a Maildir++ folder.
        self._root = path if name == names.INBOX else path.parent
        self._settings = settings
        self._scans = {"new": _DirScan(), "cur": _DirScan()}
        self._list: UidList | None = None
        self._list_stamp: tuple[int, int, int] | None = None
        self._state: FolderState | None = None
        self._entries = _Files()  # where each message's file was last seen
        self._uid_base: dict[int, str] = {}
        self._infos: dict[str, MessageInfo] = {}  # file name -> info, reused across syncs
        self._pending_keywords: dict[str, frozenset[str]] = {}  # base -> keywords, for adding
        self._cache: FolderCache | None = None
        # Sessions that may read messages they were not told are expunged, and the files of
        # expunged messages kept for them (uid -> link in tmp/): RFC 2180 4.1.
        self._readers: weakref.WeakSet[Reader] = weakref.WeakSet()
        self._kept: dict[int, _Kept] = {}
        # Our own change since the state was built (it may not show in the listing: keywords
        # only, or a rename that _entries already knows): the next sync() must rebuild.
        self._stale = False

    def __repr__(self) -> str:
        return f"<Folder {self.name!r}>"

    # -- scanning and UIDs ---------------------------------------------------------------

    def sync(self) -> FolderState:
        """Bring the view up to date with the disk and return it.

        Assigns UIDs (in arrival order) to messages not seen before, forgets vanished ones,
        gives flag changes made by other programs a new mod-sequence, and persists the UID
        list. Costs two stat() calls when nothing changed.
        """
        return self._sync(None)

    def sync_taking_recent(self) -> tuple[FolderState, list[int]]:
        """``sync()``, then move every message still in new/ to cur/ (as ``take_recent``
        does): SELECT. Returns the state after the moves and the UIDs this call moved (in
        ascending order): RFC 3501 2.3.2, \\Recent goes to exactly one session.

        When the sync has to rebuild the state (a first SELECT), the moves happen between
        writing the UID list and building the state, so the state is built once, already
        holding the moved messages in cur/."""
        taken: list[int] = []
        state = self._sync(taken)
        if taken or not any(map(_is_recent, state.messages)):
            # (What is still in new/ after the moves was taken by someone else meanwhile.)
            return state, taken
        taken = self.take_recent(m.uid for m in state.messages if m.recent)
        after = self.current_state()
        if (
            after is not None
            and after.uidvalidity == state.uidvalidity
            and after.uidnext == state.uidnext
            and after.count == state.count
        ):
            state = after
        return state, taken

    def _sync(self, taken: list[int] | None) -> FolderState:
        """``sync()``; with a list ``taken``, a rebuild also moves what is in new/ to cur/
        first and puts the UIDs it moved in ``taken``."""
        changed = False
        for sub in ("new", "cur"):  # new/ first: a message moving new->cur is then seen in cur/
            changed |= self._refresh_dir(sub, force=False)
        if not changed and self._state is not None:
            return self._state
        # The scans now hold the new listing: until a state is built from it (_build_state
        # clears this), it must not count as "seen" should _reconcile fail (lock timeout).
        self._stale = True
        with _collector_paused():
            self._reconcile(taken)
        assert self._state is not None
        return self._state

    def current_state(self) -> FolderState | None:
        """The state the last ``sync()`` returned with this process's own changes since
        (``take_recent``) applied, without looking at the disk; None if those changes left it
        unknown. Changes by others since that sync are not in it: the next ``sync()`` reads
        the directories again (our renames made their mtimes untrustworthy) and finds them."""
        return None if self._stale else self._state

    def _stat_dir(self, sub: str) -> os.stat_result:
        try:
            return os.stat(f"{self._dir}/{sub}")
        except FileNotFoundError:
            raise FolderNotFound(f"folder {self.name!r} no longer exists") from None

    def _refresh_dir(self, sub: str, *, force: bool) -> bool:
        scan = self._scans[sub]
        st = self._stat_dir(sub)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if not force and scan.trusted and scan.stamp == stamp:
            return False
        try:
            listing = os.listdir(f"{self._dir}/{sub}")
        except FileNotFoundError:
            raise FolderNotFound(f"folder {self.name!r} no longer exists") from None
        files = names.files_by_base(listing)
        same = files == scan.files
        scan.files = files
        scan.stamp = stamp
        scan.trusted = st.st_mtime < self._settings.now() - self._settings.dirty_window
        if not force and same and not self._stale and self._file_stamp() == self._list_stamp:
            # Looked again (a recent mtime cannot be trusted) and found the same files, and
            # the UID list did not change either: the state still holds. Saves rebuilding it
            # on every command for a second after any change.
            return False
        return True

    def _rescan(self) -> _Files:
        for sub in ("new", "cur"):
            self._refresh_dir(sub, force=True)
        return self._scan_all()

    def _scan_all(self) -> _Files:
        return _Files.of_listings(self._scans["new"].files, self._scans["cur"].files)

    def _list_path(self) -> Path:
        return self._path / uidlist.FILENAME

    def _lock(self) -> DotLock:
        return self._dotlock(self._path / uidlist.LOCKNAME)

    def _dotlock(self, path: Path) -> DotLock:
        s = self._settings
        return DotLock(
            path,
            timeout=s.lock_timeout,
            stale_after=s.lock_stale_after,
            hostname=s.hostname,
            now=s.now,
        )

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._list_path())
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload_list(self) -> UidList | None:
        """The on-disk list, re-read only if the file changed. None if missing or corrupt."""
        stamp = self._file_stamp()
        if stamp is not None and stamp == self._list_stamp and self._list is not None:
            return self._list
        try:
            lst = uidlist.load(self._list_path())
        except CorruptUidList as e:
            log.warn(
                "UID list of {folder} is corrupt ({why}); rebuilding", folder=self._dir, why=str(e)
            )
            return None
        if lst is None:
            # Lost. Keep our copy: its UIDVALIDITY makes sure the new one differs.
            return None
        self._list, self._list_stamp = lst, stamp
        # Another process changed the list (keywords, say): whatever state we hold predates it,
        # even if the directories look the same.
        self._stale = True
        return lst

    def _save_list(self, lst: UidList, records: list[str] | None = None) -> None:
        uidlist.save(self._list_path(), lst, self._settings.hostname, records)
        self._list, self._list_stamp = lst, self._file_stamp()

    @staticmethod
    def _differences(lst: UidList, entries: _Files) -> tuple[set[str], bool, bool]:
        """(bases listed but not on disk, any file without a UID, any file whose flags differ
        from the list's or are not yet in it)."""
        records = lst.records
        vanished = {b for b in records if b not in entries}
        unknown = False
        flags_differ = False
        flags_of = names.flags_of
        sep = names.INFO_SEPARATOR
        for base, fn in entries.files():
            rec = records.get(base)
            if rec is None:
                unknown = True
            elif rec.flags is None or rec.flags != flags_of(fn.partition(sep)[2]):
                flags_differ = True
        return vanished, unknown, flags_differ

    def _reconcile(self, taken: list[int] | None = None) -> None:
        """Merge the scan with the UID list; take the lock only if the list must change.
        With ``taken``: move new/ to cur/ before building the state (``_take_new``)."""
        known_before = self._list.records if self._list is not None else {}
        entries = self._scan_all()
        lst = self._reload_list()
        needs_lock = True
        if lst is not None:
            vanished, unknown, differ = self._differences(lst, entries)
            if vanished:
                # A file renamed during readdir() may be missed (POSIX leaves it unspecified);
                # look again before declaring anything gone, so UIDs stay stable.
                entries = self._rescan()
                vanished, unknown, differ = self._differences(lst, entries)
            needs_lock = bool(vanished) or unknown or differ
        gone: set[str] = set()
        if needs_lock:
            with self._lock():
                lst, entries, gone = self._update_list_locked(entries, known_before)
        assert lst is not None
        if taken is not None and entries.new:
            taken.extend(self._take_new(lst, entries))
        self._build_state(lst, entries)
        if gone:
            self._collect_cache(gone)

    def _open_dir(self, sub: str) -> int:
        try:
            return os.open(f"{self._dir}/{sub}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FolderNotFound(f"folder {self.name!r} no longer exists") from None

    def _take_new(self, lst: UidList, entries: _Files) -> list[int]:
        """Move every message of ``entries.new`` that has a UID to cur/ (``take_recent``'s
        renames, before any state is built); ``entries`` and the scans follow. Returns the
        UIDs moved, ascending. A file gone meanwhile was taken by another reader (or
        expunged): it stays in ``entries.new`` as it was, and the next sync() finds where it
        went, because our renames make the directories' mtimes untrusted."""
        records = lst.records
        moves = [(base, fn) for base, fn in entries.new.items() if base in records]
        if not moves:
            return []
        suffix = names.INFO_SEPARATOR + names.FLAGS_PREFIX
        rename = os.rename
        moved: list[tuple[str, str]] = []
        # Names relative to the two directories (the kernel walks no path a thousand times).
        src = self._open_dir("new")
        try:
            dst = self._open_dir("cur")
            try:
                for base, fn in moves:
                    if fn == base:  # the usual file in new/: no info yet
                        target = base + suffix
                    else:  # keep whatever flags it already has
                        info = fn.partition(names.INFO_SEPARATOR)[2]
                        target = names.format_filename(base, names.flags_of(info))
                    try:
                        rename(fn, target, src_dir_fd=src, dst_dir_fd=dst)
                    except FileNotFoundError:
                        continue
                    moved.append((base, target))
            finally:
                os.close(dst)
        finally:
            os.close(src)
            if moved:
                self._changed_by_us()  # the next sync() reads the directories again
                new_files, cur_files = self._scans["new"].files, self._scans["cur"].files
                new, cur = entries.new, entries.cur
                for base, target in moved:
                    del new[base]
                    cur[base] = target
                    new_files.pop(base, None)
                    cur_files[base] = target
        return sorted(records[base].uid for base, _ in moved)

    def _update_list_locked(
        self, entries: _Files, known_before: dict[str, uidlist.UidRecord]
    ) -> tuple[UidList, _Files, set[str]]:
        """Under the lock: the list on disk now, brought in line with the directories."""
        lst = self._reload_list()
        dirty = False
        if lst is None:
            old = self._list.uidvalidity if self._list is not None else 0
            # RFC 3501 2.3.1.1: above every value this user's folders ever had (a folder of
            # this name deleted or renamed a moment ago), not merely the clock's.
            s = self._settings
            uidvalidity = uidvalidity_counter.reserve(
                self._root, floor=old, now=s.now, lock=self._dotlock, hostname=s.hostname
            )
            lst = UidList(uidvalidity)
            dirty = True
            log.info("new UIDVALIDITY {v} for {folder}", v=uidvalidity, folder=self._dir)
        vanished: set[str] = set()
        differ = False
        if lst.records:  # (a first scan has nothing to compare)
            vanished, _, differ = self._differences(lst, entries)
        if differ or vanished:
            # Our scan may predate the list we just read (another holder renamed and recorded
            # the new flags meanwhile): compare with a scan taken under the lock.
            entries = self._rescan()
            vanished, _, differ = self._differences(lst, entries)
        modseq = 0

        def next_modseq() -> int:
            nonlocal modseq, dirty
            if not modseq:
                modseq = lst.next_modseq()
                dirty = True
            return modseq

        for base in vanished:
            del lst.records[base]
            next_modseq()  # RFC 7162 3.1.1: an expunge is a change too
        if differ:
            flags_of = names.flags_of
            for base, fn in entries.files():
                rec = lst.records.get(base)
                if rec is None:
                    continue
                flags = flags_of(fn.partition(names.INFO_SEPARATOR)[2])
                if rec.flags is None:  # read from a version 1 list: adopt, no change
                    rec.flags = flags
                    dirty = True
                elif rec.flags != flags:  # renamed by another program (or crash mid-store)
                    rec.flags = flags
                    rec.modseq = next_modseq()
        records = lst.records
        unknown = [b for b in entries if b not in records] if records else list(entries)
        lines = None  # the record lines, if the assignment rendered them all
        if unknown:
            lines = self._assign_uids(lst, unknown, entries, known_before, next_modseq)
        if dirty:
            self._save_list(lst, lines)
        self._list = lst
        return lst, entries, set(vanished)

    def _assign_uids(
        self,
        lst: UidList,
        unknown: list[str],
        entries: _Files,
        known_before: dict[str, uidlist.UidRecord],
        next_modseq: Callable[[], int],
    ) -> list[str] | None:
        """Give the ``unknown`` bases UIDs in arrival order (RFC 3501 2.3.1.1: ascending); drop
        from ``entries`` those that vanished before we could stat them. When the list had no
        records (a folder's first scan), returns its record lines rendered from the columns
        (``uidlist.render_records``) for the write that follows."""
        if not unknown:
            return None
        pending = self._pending_keywords
        arrival = None
        if known_before.keys().isdisjoint(unknown):
            arrival = names.arrival_order(unknown)
        if arrival is not None:
            # Every name says its time and size (Dovecot-style names): no stat(), and the
            # columns go to the list as they are (a first scan of a big folder has thousands).
            bases, secs, sizes = arrival
            flags = _flags_column(entries.file_names(bases))
            first, modseq = lst.uidnext, next_modseq()
            whole = not lst.records and not pending  # the list will be these records only
            lst.assign_columns(
                bases,
                sizes,
                secs,
                flags,
                [pending.pop(b, _NO_KEYWORDS) for b in bases] if pending else repeat(_NO_KEYWORDS),
                modseq,
            )
            if whole:
                return uidlist.render_records(range(first, lst.uidnext), sizes, secs, modseq,
                                              flags, bases)  # fmt: skip
            return None
        secs, usecs, sizes = names.arrival_fields(unknown)
        keyed: list[tuple[int, int, str, int]] = []
        for base, sec, usec, size in zip(unknown, secs, usecs, sizes, strict=True):
            if size is None or sec is None or base in known_before:
                # Stat once; its result is kept in the list. A base we knew that another
                # process dropped must be checked: it may have been expunged meanwhile.
                sub, fn = entries[base]
                try:
                    st = os.stat(f"{self._dir}/{sub}/{fn}")
                except FileNotFoundError:
                    del entries[base]
                    continue
                if size is None:
                    size = st.st_size
                if sec is None:
                    sec, usec = int(st.st_mtime), 0
            keyed.append((sec, usec, base, size))
        keyed.sort()  # by the name's time (its arrival), the name breaking ties
        if not keyed:
            return None
        bases = [base for _, _, base, _ in keyed]
        lst.assign_columns(
            bases,
            [size for _, _, _, size in keyed],
            [sec for sec, _, _, _ in keyed],
            _flags_column(entries.file_names(bases)),
            [pending.pop(b, _NO_KEYWORDS) for b in bases] if pending else repeat(_NO_KEYWORDS),
            next_modseq(),
        )
        return None

    def _build_state(self, lst: UidList, entries: _Files) -> None:
        if not self._infos:
            self._build_fresh_state(lst, entries)
            return
        flags_of = names.flags_of
        sep = names.INFO_SEPARATOR
        # Reuse the MessageInfo of every file whose name and record did not change: a rescan
        # of a big folder after one flag change then costs lookups, not 10,000 objects.
        previous = self._infos
        infos: dict[str, MessageInfo] = {}
        msgs: list[MessageInfo] = []
        last_uid = 0
        in_order = True
        # The records are kept in UID order (uidlist.parse, UidList.assign): walking them
        # gives the messages sorted. A record without a file vanished since the list was
        # written; a file without a record appeared after the lock was released (the next
        # sync assigns it).
        make = MessageInfo
        cur_file, new_file = entries.cur.get, entries.new.get
        for base, rec in lst.records.items():
            fn = cur_file(base)
            recent = fn is None
            if recent:
                fn = new_file(base)
                if fn is None:
                    continue
            m = previous.get(fn) if previous else None
            if (
                m is None
                or m.uid != rec.uid
                or m.recent != recent
                or m.modseq != rec.modseq
                or m.keywords is not rec.keywords
            ):
                m = make(
                    rec.uid,
                    base,
                    flags_of(fn.partition(sep)[2]),
                    rec.size,
                    rec.internaldate,
                    recent,
                    rec.keywords,
                    rec.modseq,
                )
            infos[fn] = m
            msgs.append(m)
            if m.uid <= last_uid:
                in_order = False
            last_uid = m.uid
        if not in_order:
            msgs.sort(key=_by_uid)
        self._infos = infos
        self._entries = entries
        self._uid_base = {m.uid: m.key for m in msgs}
        self._stale = False
        self._state = FolderState(lst.uidvalidity, lst.uidnext, tuple(msgs), lst.highestmodseq)

    def _build_fresh_state(self, lst: UidList, entries: _Files) -> None:
        """``_build_state`` with no MessageInfo to reuse (the first sync of the folder): the
        same result, built column by column in C loops rather than message by message."""
        records = lst.records
        bases = list(records)
        recs = list(records.values())
        fns = list(map(entries.cur.get, bases))
        recent = [False] * len(fns)
        if None in fns:  # in new/, or vanished since the list was written
            new_file = entries.new.get
            fns = [new_file(b) if fn is None else fn for b, fn in zip(bases, fns, strict=True)]
            recent = list(map(entries.new.__contains__, bases))
            if None in fns:  # the vanished: the next sync drops them from the list
                keep = [i for i, fn in enumerate(fns) if fn is not None]
                bases = [bases[i] for i in keep]
                recs = [recs[i] for i in keep]
                fns = [fns[i] for i in keep]
                recent = [recent[i] for i in keep]
        # The flags as the file names say them: the records say the same (_reconcile and
        # _update_list_locked make them agree before a state is built), unless unknown.
        flags = list(map(_flags_of_record, recs))
        if None in flags:
            flags = _flags_column(fns)  # type: ignore[arg-type]
        uids = list(map(_by_uid, recs))
        msgs = _new_infos(
            uids,
            bases,
            flags,
            map(_size_of, recs),
            map(_date_of, recs),
            recent,
            map(_keywords_of, recs),
            map(_modseq_of, recs),
        )
        infos = dict(zip(fns, msgs, strict=True))
        uid_base = dict(zip(uids, bases, strict=True))
        # The records are kept in UID order (uidlist.parse, UidList.assign_columns).
        if not all(map(int.__lt__, uids, uids[1:])):
            msgs.sort(key=_by_uid)
        self._infos = infos
        self._entries = entries
        self._uid_base = uid_base
        self._stale = False
        self._state = FolderState(lst.uidvalidity, lst.uidnext, tuple(msgs), lst.highestmodseq)

    def _changed_by_us(self) -> None:
        """Our own rename/unlink changed a directory: make the next sync() look again."""
        self._stale = True
        for scan in self._scans.values():
            scan.trusted = False

    def _announce_index_change(self) -> None:
        """The index changed but no directory did (keywords only): touch cur/ so every
        process's two-stat sync() rescans and re-reads the list."""
        try:
            os.utime(f"{self._dir}/cur")
        except FileNotFoundError:
            raise FolderNotFound(f"folder {self.name!r} no longer exists") from None
        self._changed_by_us()

    # -- locating files ------------------------------------------------------------------

    def _state_or_sync(self) -> FolderState:
        return self._state if self._state is not None else self.sync()

    def _where(self, uid: int) -> tuple[str, str, str]:
        """uid -> (base, subdir, file name) as last seen; MessageGone if unknown."""
        self._state_or_sync()
        base = self._uid_base.get(uid)
        where = None if base is None else self._entries.get(base)
        if base is None or where is None:
            kept = self._kept.get(uid)
            if kept is not None:  # expunged, but a session not told yet may read it
                return kept.base, "tmp", kept.name
            raise MessageGone(f"no message with UID {uid} in {self.name!r}")
        return base, where[0], where[1]

    def _relocate(self, base: str) -> tuple[str, str]:
        """Find where another reader moved ``base`` (flag rename, new->cur); MessageGone if
        it was removed."""
        for sub in ("new", "cur"):
            self._refresh_dir(sub, force=True)
        # The scans are now newer than the state: the next sync() must rebuild it.
        self._changed_by_us()
        for sub in ("cur", "new"):
            fn = self._scans[sub].files.get(base)
            if fn is not None:
                self._entries[base] = (sub, fn)
                return sub, fn
        self._entries.pop(base, None)
        raise MessageGone(f"message {base!r} was removed from {self.name!r}")

    def _with_file(self, uid: int, op: Callable[[str, str, str], T]) -> T:
        """Run ``op(base, sub, filename)``; on ENOENT rescan and retry (another reader renamed
        the file), MessageGone if it is really gone."""
        base, sub, fn = self._where(uid)
        for _ in range(_RETRIES):
            try:
                return op(base, sub, fn)
            except FileNotFoundError:
                sub, fn = self._relocate(base)
        raise MessageGone(f"message UID {uid} keeps moving; giving up")

    # -- reading ------------------------------------------------------------------------

    def count(self) -> int:
        return self.sync().count

    def total_size(self) -> int:
        return self.sync().total_size

    def open_message(self, uid: int) -> BinaryIO:
        """Open the message for reading (binary). The open file stays valid even if the
        message is renamed or expunged afterwards."""

        def op(base: str, sub: str, fn: str) -> BinaryIO:
            return open(f"{self._dir}/{sub}/{fn}", "rb")

        return self._with_file(uid, op)

    def read_message(self, uid: int) -> bytes:
        """The whole message. One open, fstat and read for the usual file (no Python file
        object: FETCH BODY[] of a big folder reads thousands)."""

        def op(base: str, sub: str, fn: str) -> bytes:
            fd = os.open(f"{self._dir}/{sub}/{fn}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                return _read_to_end(fd)
            finally:
                os.close(fd)

        return self._with_file(uid, op)

    # -- flags, keywords and new -> cur -----------------------------------------------------

    def store_flags(
        self,
        uids: Iterable[int],
        mode: Literal["set", "add", "remove"],
        flags: Iterable[str] = (),
        keywords: Iterable[str] = (),
        unchanged_since: int | None = None,
    ) -> StoreOutcome:
        """Change flags (Maildir letters) and keywords of many messages at once (IMAP STORE).

        One lock, one index write and one rename per message whose letters change. With
        ``unchanged_since`` (RFC 7162 3.2 UNCHANGEDSINCE), a message whose mod-sequence is
        greater is left alone and reported in ``modified``.
        """
        flagset = names.check_flags(flags)
        kwset = names.check_keywords(keywords)
        # ``unchanged(flags, keywords)``: true when ``compute`` would change nothing (STORE
        # +FLAGS (\\Seen) 1:* of a mostly read folder: one test for most messages).
        if mode == "set":

            def compute(
                f: frozenset[str], k: frozenset[str]
            ) -> tuple[frozenset[str], frozenset[str]]:
                return flagset, kwset

            def unchanged(f: frozenset[str], k: frozenset[str]) -> bool:
                return f == flagset and k == kwset
        elif mode == "add":

            def compute(
                f: frozenset[str], k: frozenset[str]
            ) -> tuple[frozenset[str], frozenset[str]]:
                return f | flagset, k | kwset

            def unchanged(f: frozenset[str], k: frozenset[str]) -> bool:
                return flagset <= f and kwset <= k
        elif mode == "remove":

            def compute(
                f: frozenset[str], k: frozenset[str]
            ) -> tuple[frozenset[str], frozenset[str]]:
                return f - flagset, k - kwset

            def unchanged(f: frozenset[str], k: frozenset[str]) -> bool:
                return f.isdisjoint(flagset) and k.isdisjoint(kwset)
        else:
            raise ValueError(f"mode must be 'set', 'add' or 'remove', not {mode!r}")
        return self._store(uids, compute, unchanged_since, unchanged)

    def _store(
        self,
        uids: Iterable[int],
        compute: Callable[[frozenset[str], frozenset[str]], tuple[frozenset[str], frozenset[str]]],
        unchanged_since: int | None = None,
        unchanged: Callable[[frozenset[str], frozenset[str]], bool] | None = None,
    ) -> StoreOutcome:
        wanted = sorted(set(uids))
        self.sync()
        with self._lock():
            lst = self._reload_list()
            if lst is None:  # lost or corrupt: rebuild it (new UIDVALIDITY) like sync() would
                lst, entries, _ = self._update_list_locked(self._rescan(), {})
                self._build_state(lst, entries)
            # The state matches the scans and the list: it can follow our own changes.
            current = not self._stale and self._state is not None
            outcome, renamed, dirty = self._store_locked(
                lst, wanted, compute, unchanged_since, unchanged
            )
            if dirty:
                self._save_list(lst)
        # (A rename by another reader found on the way rescanned: the state is behind.)
        current = current and not self._stale
        if renamed:
            fsync_dir(f"{self._dir}/cur")  # the new names survive a crash before we answer
            self._changed_by_us()
        elif dirty:
            self._announce_index_change()
        if dirty and current:
            self._follow_store(lst, outcome, renamed)
        return outcome

    def _follow_store(
        self, lst: UidList, outcome: StoreOutcome, renamed: list[tuple[str, str, str]]
    ) -> None:
        """Our STORE's changes applied to the state and the scans, so that the next sync()
        finds the listing it expects and keeps the state. It still reads the directories (our
        renames made their mtimes untrusted), so a change by another process in the same
        second shows as a different listing (or a different UID list) and a rebuild."""
        scans_new, scans_cur = self._scans["new"].files, self._scans["cur"].files
        for base, sub, target in renamed:
            if sub == "new":
                scans_new.pop(base, None)
            scans_cur[base] = target
        state = self._state
        assert state is not None
        infos = outcome.infos
        msgs = state.messages
        # Every message's info, the requested ones as they are now (the same objects the
        # caller got, so a view comparing by identity sees no change).
        patched = tuple(map(infos.get, map(_by_uid, msgs), msgs))
        self._state = FolderState(state.uidvalidity, state.uidnext, patched, lst.highestmodseq)
        self._stale = False

    def _store_locked(
        self,
        lst: UidList,
        wanted: list[int],
        compute: Callable[[frozenset[str], frozenset[str]], tuple[frozenset[str], frozenset[str]]],
        unchanged_since: int | None,
        unchanged: Callable[[frozenset[str], frozenset[str]], bool] | None = None,
    ) -> tuple[StoreOutcome, list[tuple[str, str, str]], bool]:
        """The changes, under the lock: (outcome, (base, old subdir, new file name in cur/)
        of each rename, whether the list changed)."""
        infos: dict[int, MessageInfo] = {}
        changed: list[int] = []
        modified: list[int] = []
        gone: list[int] = []
        renamed: list[tuple[str, str, str]] = []
        modseq = 0
        dirty = False
        records = lst.records
        flags_of = names.flags_of
        sep = names.INFO_SEPARATOR
        directory = self._dir
        uid_base = self._uid_base
        cur_file = self._entries.cur.get
        known = self._infos
        for uid in wanted:
            base = uid_base.get(uid)
            rec = records.get(base)  # type: ignore[arg-type]
            # Nothing to do for this one (the usual case of +FLAGS on a mostly flagged folder):
            # in cur/, the list agrees with its name, compute() would change nothing and the
            # info we hold is up to date.
            fn = cur_file(base)  # type: ignore[arg-type]
            if (
                unchanged is not None
                and fn is not None
                and rec is not None
                and rec.uid == uid
                and rec.flags == flags_of(fn.partition(sep)[2])
                and unchanged(rec.flags, rec.keywords)
                and (unchanged_since is None or rec.modseq <= unchanged_since)
            ):
                info = known.get(fn)
                if (
                    info is not None
                    and info.uid == uid
                    and info.modseq == rec.modseq
                    and info.keywords is rec.keywords
                ):
                    infos[uid] = info
                    continue
            where = self._entries.get(base) if base is not None else None
            if base is None or rec is None or rec.uid != uid or where is None:
                gone.append(uid)
                continue
            sub, fn = where
            for _ in range(_RETRIES):
                disk = flags_of(fn.partition(sep)[2])
                if rec.flags != disk:
                    # Renamed by another program since the list was written: that change
                    # gets its mod-sequence now (a None from a version 1 list: adopted).
                    if rec.flags is not None:
                        if not modseq:
                            modseq = lst.next_modseq()
                        rec.modseq = modseq
                    rec.flags = disk
                    dirty = True
                if unchanged_since is not None and rec.modseq > unchanged_since:
                    modified.append(uid)
                    break
                new_flags, new_keywords = compute(disk, rec.keywords)
                if new_flags == disk and new_keywords == rec.keywords:
                    break
                if new_flags != disk:
                    target = names.format_filename(base, new_flags)
                    try:
                        os.rename(f"{directory}/{sub}/{fn}", f"{directory}/cur/{target}")
                    except FileNotFoundError:
                        try:
                            sub, fn = self._relocate(base)
                        except MessageGone:
                            sub = ""
                            break
                        continue
                    known.pop(fn, None)  # (the next rebuild would drop it too)
                    renamed.append((base, sub, target))
                    sub, fn = "cur", target
                    self._entries[base] = (sub, fn)
                if not modseq:
                    modseq = lst.next_modseq()
                rec.flags = new_flags
                rec.keywords = _intern_keywords(new_keywords)
                rec.modseq = modseq
                dirty = True
                changed.append(uid)
                break
            else:
                sub = ""  # kept moving: report it gone rather than loop forever
            if not sub:
                gone.append(uid)
                continue
            info = known.get(fn)
            if (
                info is None
                or info.uid != uid
                or info.modseq != rec.modseq
                or info.keywords is not rec.keywords
                or info.recent != (sub == "new")
            ):  # changed (or not known yet): STORE 1:* mostly touches few of them
                info = MessageInfo(
                    uid,
                    base,
                    flags_of(fn.partition(sep)[2]),
                    rec.size,
                    rec.internaldate,
                    sub == "new",
                    rec.keywords,
                    rec.modseq,
                )
                known[fn] = info  # the next sync's rebuild reuses it
            infos[uid] = info
        outcome = StoreOutcome(infos, frozenset(changed), tuple(modified), tuple(gone))
        return outcome, renamed, dirty

    def _store_one(
        self,
        uid: int,
        compute: Callable[[frozenset[str]], frozenset[str]],
    ) -> frozenset[str]:
        outcome = self._store([uid], lambda f, k: (compute(f), k))
        info = outcome.infos.get(uid)
        if info is None:
            raise MessageGone(f"no message with UID {uid} in {self.name!r}")
        return info.flags

    def set_flags(self, uid: int, flags: Iterable[str]) -> frozenset[str]:
        """Replace the message's flag letters (see names.py), keeping its keywords; moves it
        to cur/. Gets a new mod-sequence if anything changed."""
        wanted = names.check_flags(flags)
        return self._store_one(uid, lambda old: wanted)

    def add_flags(self, uid: int, flags: Iterable[str]) -> frozenset[str]:
        extra = names.check_flags(flags)
        return self._store_one(uid, lambda old: old | extra)

    def remove_flags(self, uid: int, flags: Iterable[str]) -> frozenset[str]:
        gone = names.check_flags(flags)
        return self._store_one(uid, lambda old: old - gone)

    def take(self, uid: int) -> None:
        """Move a message from new/ to cur/ (with an empty ``:2,`` info), as a reader does when
        it has seen it (maildir.html). No-op if already in cur/. Flags do not change, so this
        is not a mod-sequence change."""

        def op(base: str, sub: str, fn: str) -> None:
            if sub == "cur":
                return
            target = names.format_filename(base, names.flags_of(fn.partition(":")[2]))
            os.rename(f"{self._dir}/{sub}/{fn}", f"{self._dir}/cur/{target}")
            self._entries[base] = ("cur", target)
            self._changed_by_us()

        self._with_file(uid, op)

    def take_recent(self, uids: Iterable[int]) -> list[int]:
        """Move these messages from new/ to cur/; return the UIDs *this call* moved.

        RFC 3501 2.3.2: \\Recent goes to exactly one session. rename(2) of a name in new/
        succeeds for one caller only (any process); the others get ENOENT and skip it.
        """
        moved: list[int] = []
        renamed: list[tuple[str, str]] = []
        self._state_or_sync()
        current = not self._stale  # the state matches _entries: it can follow our renames
        src = f"{self._dir}/new/"
        dst = f"{self._dir}/cur/"
        uid_base = self._uid_base
        entries = self._entries
        flags_of = names.flags_of
        format_filename = names.format_filename
        rename = os.rename
        for uid in sorted(set(uids)):
            base = uid_base.get(uid)
            where = entries.get(base) if base is not None else None
            if where is None or where[0] != "new":
                continue
            fn = where[1]
            if fn == base:  # the usual file in new/: no info yet
                target = base + names.INFO_SEPARATOR + names.FLAGS_PREFIX
            else:  # keep whatever flags it already has
                target = format_filename(base, flags_of(fn.partition(":")[2]))
            try:
                rename(src + fn, dst + target)
            except FileNotFoundError:
                continue  # another session or program took it (or it was expunged)
            entries[base] = ("cur", target)
            moved.append(uid)
            renamed.append((fn, target))
        if renamed:
            self._changed_by_us()  # the next sync() reads the directories again
            new_files = self._scans["new"].files
            cur_files = self._scans["cur"].files
            for fn, target in renamed:
                base = fn.partition(":")[0]
                new_files.pop(base, None)
                cur_files[base] = target
            state = self._taken(self._state, moved, renamed) if current else None
            if state is not None:
                # The state follows without a rescan or a rebuild, and the next sync() finds
                # the listing it expects (SELECT of a big folder with many new messages would
                # otherwise rebuild everything twice).
                self._state = state
                self._stale = False
        return moved

    def _taken(
        self, state: FolderState | None, moved: list[int], renamed: list[tuple[str, str]]
    ) -> FolderState | None:
        """``state`` after the messages ``moved`` (ascending UIDs) went from new/ to cur/
        under the names ``renamed`` ((old, new) file names, in the same order); None if the
        state does not hold them as expected (the next sync() rebuilds it then)."""
        if state is None:
            return None
        msgs = list(state.messages)
        uids = list(map(_by_uid, msgs))
        infos = self._infos
        lo = 0
        for uid, (old, new) in zip(moved, renamed, strict=True):
            i = bisect_left(uids, uid, lo)
            if i == len(msgs) or uids[i] != uid or not msgs[i].recent:
                return None
            m = msgs[i]
            m = MessageInfo(uid, m.key, m.flags, m.size, m.internaldate, False, m.keywords,
                            m.modseq)  # fmt: skip
            msgs[i] = m
            infos.pop(old, None)
            infos[new] = m
            lo = i + 1
        return FolderState(state.uidvalidity, state.uidnext, tuple(msgs), state.highestmodseq)

    # -- removing -------------------------------------------------------------------------

    def expunge(self, uids: Iterable[int], *, by: Reader | None = None) -> list[int]:
        """Delete the messages; returns the UIDs that were present (and are now gone).

        A message that a reader (``add_reader``) other than ``by`` (the session expunging,
        which tells its client at once) still knows is first linked into tmp/, so that reader
        can go on reading it until it is told (``forget``)."""
        removed: list[tuple[int, str]] = []
        touched: set[str] = set()
        readers = [r for r in self._readers if r is not by] if self._readers else []
        for uid in uids:
            holders = [r for r in readers if r.knows(uid)] if readers else []

            def op(
                base: str, sub: str, fn: str, uid: int = uid, holders: list[Reader] = holders
            ) -> str:
                if sub == "tmp":  # (already expunged: a link kept for a reader)
                    raise FileNotFoundError(fn)
                if holders:
                    self._keep(uid, base, f"{self._dir}/{sub}/{fn}", holders)
                os.unlink(f"{self._dir}/{sub}/{fn}")
                touched.add(sub)
                return base

            try:
                base = self._with_file(uid, op)
            except MessageGone:
                continue
            removed.append((uid, base))
        if not removed:
            return []
        for sub in touched:  # make the removal survive a crash before we answer the client
            fsync_dir(f"{self._dir}/{sub}")
        self._changed_by_us()
        try:
            with self._lock():
                lst = self._reload_list()
                if lst is not None:
                    for _, base in removed:
                        lst.records.pop(base, None)
                    lst.next_modseq()  # RFC 7162 3.1.1: HIGHESTMODSEQ grows on expunge
                    self._save_list(lst)
        except LockBusy:
            # The files are gone (durably): the next sync() that gets the lock drops them from
            # the list as vanished. The reactor does not wait for the lock here.
            log.info("UID list of {folder} updated later: lock busy", folder=self._dir)
        for _, base in removed:
            self._entries.pop(base, None)
        self._state = None
        self._collect_cache({base for _, base in removed})
        return [uid for uid, _ in removed]

    # -- expunged messages kept for readers not told yet (RFC 2180 4.1.1, 4.1.2) ------------

    def add_reader(self, reader: Reader) -> None:
        """``reader`` (an IMAP session that selected this folder) may read messages that others
        expunge until it calls ``forget`` for them: ``expunge`` keeps their files."""
        self._readers.add(reader)

    def forget(self, reader: Reader, uids: Iterable[int] | None = None) -> None:
        """``reader`` was told these messages are gone (None: it leaves the folder); the files
        kept for them are removed once no reader needs them any more."""
        if reader in self._readers and uids is None:
            self._readers.discard(reader)
        if not self._kept:
            return
        for uid in list(self._kept) if uids is None else uids:
            kept = self._kept.get(uid)
            if kept is None:
                continue
            kept.readers.discard(reader)
            if not kept.readers:
                del self._kept[uid]
                unlink_quietly(f"{self._dir}/tmp/{kept.name}")

    def _keep(self, uid: int, base: str, path: str, readers: list[Reader]) -> None:
        """Link the file of ``uid`` (about to be unlinked) into tmp/ for ``readers``. No fsync:
        after a crash nobody needs it (``clean_stale_tmp`` removes it)."""
        host = names.escape_host(self._settings.hostname)
        name = f"{KEPT_PREFIX}{os.getpid()}.{next(_kept_counter)}.{host}"
        old = self._kept.pop(uid, None)
        if old is not None:  # (a retry after the file moved between our link and unlink)
            unlink_quietly(f"{self._dir}/tmp/{old.name}")
        try:
            os.link(path, f"{self._dir}/tmp/{name}")
        except FileNotFoundError:
            raise  # (moved meanwhile: _with_file looks for it again)
        except OSError as e:  # a full disk, say: the reader gets NO [EXPUNGEISSUED], as before
            log.warn("could not keep {path} for a reader: {e}", path=path, e=str(e))
            return
        self._kept[uid] = _Kept(base, name, weakref.WeakSet(readers))

    def delete(self, uid: int) -> None:
        """Delete one message; MessageGone if it was already removed."""
        if not self.expunge([uid]):
            raise MessageGone(f"no message with UID {uid} in {self.name!r}")

    # -- adding ---------------------------------------------------------------------------

    def _uids_of(self, bases: Iterable[str]) -> dict[str, int]:
        """UIDs of messages we just added; gives them the keywords still pending (another
        process may have assigned their UIDs before our sync could)."""
        wanted = list(bases)
        state = self.sync()
        by_key = {m.key: m for m in state.messages[-len(wanted) - 64 :]}
        found: dict[str, int] = {}
        late: dict[frozenset[str], list[int]] = {}
        for base in wanted:
            m = by_key.get(base) or next((x for x in state.messages if x.key == base), None)
            if m is None:
                self._pending_keywords.pop(base, None)
                raise MessageGone(f"message {base!r} vanished right after it was added")
            found[base] = m.uid
            kw = self._pending_keywords.pop(base, None)
            if kw:
                late.setdefault(kw, []).append(m.uid)
        for kw, uids in late.items():
            self._store(uids, lambda f, k, kw=kw: (f, k | kw))  # type: ignore[misc]
        return found

    def _target(self, base: str, flags: frozenset[str]) -> str:
        # Into new/ whatever its flags: a message that arrives by APPEND, COPY or MOVE is new
        # to this folder, so \Recent for the first session told of it (RFC 3501 2.3.2), as
        # a delivered one is; that session's take moves it to cur/, keeping the flags.
        if flags:
            return f"{self._dir}/new/{names.format_filename(base, flags)}"
        return f"{self._dir}/new/{base}"

    def append(
        self, data: bytes, flags: Iterable[str] = (), internaldate: float | None = None
    ) -> int:
        """Add a message durably (IMAP APPEND) and return its UID."""
        return self.append_from(io.BytesIO(data), flags=flags, internaldate=internaldate)

    def append_from(
        self,
        src: BinaryIO,
        *,
        flags: Iterable[str] = (),
        keywords: Iterable[str] = (),
        internaldate: float | None = None,
    ) -> int:
        """Copy ``src`` (read to its end, in chunks) into the folder durably; return the UID.

        The internal date is carried in the file name's time field (and the mtime, for
        Dovecot), so whichever process assigns the UID records the right date. The file and
        its directory are fsync'd before this returns. The same steps as a message spooled
        straight into tmp/ (``spool``, ``prepare_spooled``, ``Placement.place``, ``adopt``).
        """
        names.check_flags(flags)
        names.check_keywords(keywords)
        with self.spool() as spool:
            size = spool.copy_from(src)
            placement = self.prepare_spooled(
                spool, size, flags=flags, keywords=keywords, internaldate=internaldate
            )
            try:
                placement.place()
            except BaseException:
                self.abandon(placement)
                raise
        return self.adopt(placement)

    # A message received straight into tmp/ (IMAP APPEND's literal, written as it arrives) and
    # delivered by a link (maildir.html), so it is written once. ``spool`` and ``Placement.place``
    # only touch the file system (``place`` may run in a worker thread); ``prepare_spooled``,
    # ``adopt`` and ``abandon`` touch the folder's state (the thread that owns the folder).

    def spool(self) -> SpoolFile:
        """A new, empty file in this folder's tmp/ (removed again when closed undelivered)."""
        unique = names.unique_name(self._settings.hostname, self._settings.now)
        return SpoolFile(f"{self._dir}/tmp/{unique}")

    def spooled_here(self, spool: SpoolFile) -> bool:
        """Is ``spool`` in this folder's tmp/ (so delivery is a link)?"""
        return os.path.dirname(spool.path) == f"{self._dir}/tmp"

    def prepare_spooled(
        self,
        spool: SpoolFile,
        size: int,
        *,
        flags: Iterable[str] = (),
        keywords: Iterable[str] = (),
        internaldate: float | None = None,
    ) -> Placement:
        """Name the message (its ``size`` octets are in ``spool``) and note its keywords."""
        flagset = names.check_flags(flags)
        kwset = names.check_keywords(keywords)
        when = self._settings.now() if internaldate is None else internaldate
        base = names.with_size(names.unique_name(self._settings.hostname, lambda: when), size)
        if kwset:
            # Noted before the link: whoever finds the file first gives it its keywords.
            self._pending_keywords[base] = _intern_keywords(kwset)
        spool.handed_over = True  # from now on only the placement closes it
        return Placement(spool, base, self._target(base, flagset), when)

    def adopt(self, placement: Placement) -> int:
        """The UID of a placed message."""
        self._changed_by_us()
        return self._uids_of([placement.base])[placement.base]

    def abandon(self, placement: Placement) -> None:
        """Forget a message whose placing failed (its tmp file is removed)."""
        self._pending_keywords.pop(placement.base, None)
        placement.spool.discard()

    def copy_to(self, uid: int, other: Folder) -> int:
        """Copy a message to ``other`` keeping flags, keywords and internal date (RFC 3501
        6.4.7); returns the new UID."""
        pairs = self.copy_many([uid], other)
        if not pairs:
            raise MessageGone(f"no message with UID {uid} in {self.name!r}")
        return pairs[0][1]

    def copy_many(self, uids: Iterable[int], other: Folder) -> list[tuple[int, int]]:
        """Copy messages to ``other`` (COPY/MOVE); [(source UID, new UID)] in source-UID order.

        Hard links (messages are immutable), falling back to a byte copy across file systems.
        Keeps flags (as on disk now), keywords and internal date; skips vanished messages.
        """
        by_uid = self.sync().by_uid  # flags and keywords as of now, for the copies
        hostname = other._settings.hostname
        links: list[tuple[int, str]] = []  # (source uid, new base)
        dirs: set[str] = set()
        for uid in sorted(set(uids)):
            info = by_uid.get(uid)
            if info is None:
                continue
            date = float(info.internaldate)
            base = names.with_size(names.unique_name(hostname, lambda d=date: d), info.size)
            if info.keywords:
                other._pending_keywords[base] = info.keywords

            def op(b: str, sub: str, fn: str, base: str = base) -> str:
                # Flags as on disk now (another session may have changed them since our sync).
                target = other._target(base, names.flags_of(fn.partition(":")[2]))
                os.link(f"{self._dir}/{sub}/{fn}", target)
                return target

            try:
                target = self._with_file(uid, op)
            except MessageGone:
                other._pending_keywords.pop(base, None)
                continue
            except OSError as e:
                other._pending_keywords.pop(base, None)
                if e.errno != errno.EXDEV:
                    raise
                with self.open_message(uid) as f:
                    new = other.append_from(
                        f,
                        flags=info.flags,
                        keywords=info.keywords,
                        internaldate=info.internaldate,
                    )
                links.append((uid, f"#{new}"))
                continue
            dirs.add(os.path.dirname(target))
            links.append((uid, base))
        for d in dirs:
            fsync_dir(d)
        if dirs:
            other._changed_by_us()
        new_uids = other._uids_of([b for _, b in links if not b.startswith("#")])
        return [(u, int(b[1:]) if b.startswith("#") else new_uids[b]) for u, b in links]

    def clean_stale_tmp(self, max_age: float = STALE_TMP_AGE) -> int:
        return clean_stale_tmp(self._path, self._settings.now, max_age)

    # -- derived-data cache -----------------------------------------------------------------

    def cached(
        self,
        uid: int,
        name: str,
        compute: Callable[[BinaryIO], T],
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
        *,
        compute_path: Callable[[str], T] | None = None,
    ) -> T:
        """Derived data about a message (``name`` says which, e.g. ``"structure"``), computed
        once by ``compute(open file)`` and kept in the folder's cache file (shared with other
        processes, surviving restarts) and decoded in memory. MessageGone if expunged.
        ``compute_path``: as for ``cache_pass``."""
        check_cache_name(name)
        base, _, _ = self._where(uid)
        cache = self._folder_cache()
        value = cache.get(base, name, decode)
        if value is not MISSING:
            return value  # type: ignore[no-any-return]
        if compute_path is not None:
            value = self._with_file(uid, lambda b, sub, fn: compute_path(f"{self._dir}/{sub}/{fn}"))
        else:
            with self.open_message(uid) as f:
                value = compute(f)
        if uid in self._kept:  # expunged (kept for a reader): no record for it
            return value
        if cache.needs_compaction():  # first, so that the new record lands in a clean file
            self._compact_cache(cache)
        cache.put(base, name, encode(value), value)
        return value  # type: ignore[no-any-return]

    def cache_pass(
        self,
        name: str,
        compute: Callable[[BinaryIO], T],
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
        *,
        compute_path: Callable[[str], T] | None = None,
    ) -> CachePass[T]:
        """``cached`` for one command over many messages (SEARCH): the cache file is checked
        for other processes' appends and compactions once, now; then ``get(uid)`` serves from
        memory, and what it computes is appended in one write when the pass ends (use it as a
        context manager). ``compute_path``, if given, computes from the file's path instead
        of an open file (to open it its own cheaper way; its FileNotFoundError means that the
        message was moved, as for an open)."""
        check_cache_name(name)
        self._state_or_sync()
        cache = self._folder_cache()
        cache.want(name)  # before reading: its new records are then kept as they are read
        cache.refresh()
        if cache.needs_compaction():
            self._compact_cache(cache)

        def from_path(base: str, sub: str, fn: str) -> T:
            assert compute_path is not None
            return compute_path(f"{self._dir}/{sub}/{fn}")

        def miss(uid: int) -> T:
            base, _, _ = self._where(uid)
            value = cache.lookup(base, name, decode)
            if value is MISSING:
                if compute_path is not None:
                    value = self._with_file(uid, from_path)
                else:
                    with self.open_message(uid) as f:
                        value = compute(f)
                if uid not in self._kept:  # (expunged, kept for a reader: no record)
                    cache.put(base, name, encode(value), value, defer=True)
            return value  # type: ignore[no-any-return]

        return CachePass(cache, name, self._live_base, miss)

    def _live_base(self, uid: int) -> str | None:
        """The base name of ``uid`` if the message is (as far as we know) still here."""
        base = self._uid_base.get(uid)
        return base if base is not None and base in self._entries else None

    def _folder_cache(self) -> FolderCache:
        cache = self._cache
        if cache is None:
            cache = self._cache = FolderCache(self._path, self._settings.hostname)
        return cache

    def _collect_cache(self, gone: set[str]) -> None:
        cache = self._cache
        if cache is None or not gone:
            return
        cache.forget(gone)
        if cache.needs_compaction():
            self._compact_cache(cache)

    def _compact_cache(self, cache: FolderCache) -> None:
        try:
            with self._lock():
                cache.compact(set(self._entries))
        except (LockTimeout, OSError) as e:
            log.warn("cache of {folder} not compacted: {e}", folder=self._dir, e=str(e))


def _read_to_end(fd: int) -> bytes:
    """Everything from ``fd`` (a regular file) to its end. One read() asking for one byte more
    than fstat() says is there: getting no more than that means the end was reached. Anything
    else (a file that grew or shrank, a short read) is read on until read() returns nothing."""
    want = os.fstat(fd).st_size + 1
    data = os.read(fd, want)
    if len(data) == want - 1:
        return data
    chunks = [data]
    while data:
        data = os.read(fd, _CHUNK)
        chunks.append(data)
    return b"".join(chunks)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for a rebuild: a first scan of a big folder makes
    tens of thousands of objects (records, infos, dicts) and no reference cycles, and each
    few hundred of them would otherwise set off a collection pass (dozens per cold SELECT of
    10,000 messages, now and then a full one of the whole process). One pass over the new
    objects runs after, at the next allocation."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


_CHUNK = 64 * 1024


def _private(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC, 0o600)


class SpoolFile(io.FileIO):
    """A message being written into a folder's tmp/ (``Folder.spool``). Closing it removes it.
    Once it has a placement (``Folder.prepare_spooled``) only the placement closes it: a close
    from the protocol (a lost connection) is then ignored, as a worker may be using the file."""

    def __init__(self, path: str) -> None:
        # "x": O_EXCL, a temporary name must really be new (maildir.html).
        super().__init__(path, "x+b", opener=_private)
        self.path = path
        self.handed_over = False

    def write(self, data: Any) -> int:  # type: ignore[override]
        # FileIO.write may be short; a spooled message is written whole or fails.
        write_all(self.fileno(), data)
        return len(data)

    def copy_from(self, src: BinaryIO) -> int:
        """Write ``src`` (from where it is to its end) after what is here; octets copied."""
        size = 0
        buf = bytearray(_CHUNK)
        with memoryview(buf) as view:
            while True:
                n = src.readinto(view) if hasattr(src, "readinto") else None
                if n is None:  # a file object without readinto()
                    chunk = src.read(_CHUNK)
                    n = len(chunk)
                    view[:n] = chunk
                if not n:
                    return size
                write_all(self.fileno(), view[:n])
                size += n

    def close(self) -> None:
        if self.handed_over or self.closed:
            return
        self.discard()

    def discard(self) -> None:
        """Close and remove the tmp name, whoever owns the file."""
        # Placed or not, the tmp name goes: a placed message lives under its link in new/ or cur/.
        try:
            super().close()
        finally:
            unlink_quietly(self.path)


@dataclass
class Placement:
    """A spooled message with its final name: ``place`` makes it durable and visible."""

    spool: SpoolFile
    base: str
    target: str  # new/<base> or cur/<base>:2,<flags>
    when: float  # the internal date

    def place(self, source: BinaryIO | None = None) -> None:
        """Copy ``source`` (if given) into the file, fsync it, date it, link it into new/ or
        cur/, drop the tmp name, fsync the directory. Only file system calls: safe in a worker
        thread. The file is closed (and its tmp name gone) whatever happens."""
        spool = self.spool
        try:
            if source is not None:
                with source:
                    spool.copy_from(source)
            os.fsync(spool.fileno())
            os.utime(spool.path, (self.when, self.when))
            os.link(spool.path, self.target)  # link, not rename: never overwrite (maildir.html)
        finally:
            spool.discard()
        fsync_dir(os.path.dirname(self.target))


_NO_KEYWORDS: frozenset[str] = frozenset()
_keyword_sets: dict[frozenset[str], frozenset[str]] = {}


def _intern_keywords(kws: frozenset[str]) -> frozenset[str]:
    """One object per distinct keyword set, so state rebuilds compare by identity."""
    if not kws:
        return _NO_KEYWORDS
    found = _keyword_sets.get(kws)
    if found is None:
        if len(_keyword_sets) > 4096:
            _keyword_sets.clear()
        found = _keyword_sets[kws] = kws
    return found


_by_uid = attrgetter("uid")
_is_recent = attrgetter("recent")


_flags_of_record = attrgetter("flags")
_size_of = attrgetter("size")
_date_of = attrgetter("internaldate")
_keywords_of = attrgetter("keywords")
_modseq_of = attrgetter("modseq")


def _flags_column(file_names: Iterable[str]) -> list[frozenset[str]]:
    """``names.flags_of`` of each file name's info part; each distinct info parsed once."""
    infos = list(map(_info_part, map(str.partition, file_names, repeat(names.INFO_SEPARATOR))))
    table = {info: names.flags_of(info) for info in set(infos)}
    return list(map(table.__getitem__, infos))


_info_part = itemgetter(2)  # of str.partition(":")
