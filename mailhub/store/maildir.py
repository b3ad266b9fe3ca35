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
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, TypeVar

from twisted.logger import Logger

from mailhub.store import names, uidlist
from mailhub.store.dotlock import DotLock
from mailhub.store.errors import CorruptUidList, FolderNotFound, MessageGone
from mailhub.store.safeio import fsync_dir, unlink_quietly, write_new_file
from mailhub.store.uidlist import UidList

log = Logger()
T = TypeVar("T")

SUBDIRS = ("tmp", "new", "cur")
FOLDER_MARKER = "maildirfolder"  # Maildir++: marks a folder dir (used by Courier, Dovecot)
STALE_TMP_AGE = 36 * 3600  # maildir.html: tmp/ files untouched for 36 hours may be removed
_RETRIES = 5


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """What a reader knows about one message without opening it."""

    uid: int
    key: str  # the Maildir base name: unique in the folder, stable (POP3 UIDL can use it)
    flags: frozenset[str]  # single letters, e.g. {"S", "F"}; see names.py
    size: int  # octets as stored (CRLF line ends, so this is IMAP's RFC822.SIZE)
    internaldate: int  # seconds since the epoch
    recent: bool  # still in new/: no reader has taken it yet


@dataclass(frozen=True)
class FolderState:
    """A consistent snapshot returned by ``Folder.sync()``; messages in ascending UID order."""

    uidvalidity: int
    uidnext: int
    messages: tuple[MessageInfo, ...]

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
class StoreSettings:
    """Knobs shared by every folder of a store (tests inject a clock and short timeouts)."""

    hostname: str
    now: Callable[[], float] = time.time
    lock_timeout: float = 10.0
    lock_stale_after: float = 60.0
    dirty_window: float = 1.0


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


def is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def clean_stale_tmp(
    maildir: Path, now: Callable[[], float] = time.time, max_age: float = STALE_TMP_AGE
) -> int:
    """Remove files in ``maildir/tmp`` older than ``max_age`` (maildir.html: 36 hours).

    "Older" means atime, mtime and ctime are all older: a delivery in progress keeps writing
    (mtime), so it is never removed. Returns the number of files removed.
    """
    removed = 0
    limit = now() - max_age
    try:
        it = os.scandir(maildir / "tmp")
    except FileNotFoundError:
        return 0
    with it:
        for de in it:
            try:
                if not de.is_file(follow_symlinks=False):
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
    """

    def __init__(self, path: Path, name: str, settings: StoreSettings) -> None:
        self.name = name
        self._path = path
        self._dir = str(path)
        self._settings = settings
        self._scans = {"new": _DirScan(), "cur": _DirScan()}
        self._list: UidList | None = None
        self._list_stamp: tuple[int, int, int] | None = None
        self._state: FolderState | None = None
        self._entries: dict[str, tuple[str, str]] = {}  # base -> (subdir, file name)
        self._uid_base: dict[int, str] = {}
        self._infos: dict[str, MessageInfo] = {}  # file name -> info, reused across syncs

    def __repr__(self) -> str:
        return f"<Folder {self.name!r}>"

    # -- scanning and UIDs ---------------------------------------------------------------

    def sync(self) -> FolderState:
        """Bring the view up to date with the disk and return it.

        Assigns UIDs (in arrival order) to messages not seen before, forgets vanished ones,
        and persists the UID list. Costs two stat() calls when nothing changed.
        """
        changed = False
        for sub in ("new", "cur"):  # new/ first: a message moving new->cur is then seen in cur/
            changed |= self._refresh_dir(sub, force=False)
        if not changed and self._state is not None:
            return self._state
        self._reconcile()
        assert self._state is not None
        return self._state

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
        files: dict[str, str] = {}
        is_message = names.is_message_filename
        with os.scandir(f"{self._dir}/{sub}") as it:
            for de in it:
                fn = de.name
                if is_message(fn):
                    files[fn.partition(names.INFO_SEPARATOR)[0]] = fn
        scan.files = files
        scan.stamp = stamp
        scan.trusted = st.st_mtime < self._settings.now() - self._settings.dirty_window
        return True

    def _scan_all(self) -> dict[str, tuple[str, str]]:
        entries = {base: ("new", fn) for base, fn in self._scans["new"].files.items()}
        entries.update((base, ("cur", fn)) for base, fn in self._scans["cur"].files.items())
        return entries

    def _list_path(self) -> Path:
        return self._path / uidlist.FILENAME

    def _lock(self) -> DotLock:
        s = self._settings
        return DotLock(
            self._path / uidlist.LOCKNAME,
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
        return lst

    def _reconcile(self) -> None:
        """Merge the scan with the UID list; take the lock only if UIDs must change."""
        known_before = self._list.records if self._list is not None else {}
        entries = self._scan_all()
        lst = self._reload_list()
        vanished: set[str] = set()
        if lst is not None:
            vanished = {b for b in known_before if b not in entries}
            if vanished:
                # A file renamed during readdir() may be missed (POSIX leaves it unspecified);
                # look again before declaring anything gone, so UIDs stay stable.
                for sub in ("new", "cur"):
                    self._refresh_dir(sub, force=True)
                entries = self._scan_all()
                vanished = {b for b in vanished if b not in entries}
            needs_lock = bool(vanished) or any(b not in lst.records for b in entries)
        else:
            needs_lock = True
        if needs_lock:
            with self._lock():
                lst = self._update_list_locked(entries, vanished, known_before)
        assert lst is not None
        self._build_state(lst, entries)

    def _update_list_locked(
        self,
        entries: dict[str, tuple[str, str]],
        vanished: set[str],
        known_before: dict[str, uidlist.UidRecord],
    ) -> UidList:
        lst = self._reload_list()
        dirty = False
        if lst is None:
            old = self._list.uidvalidity if self._list is not None else 0
            uidvalidity = max(int(self._settings.now()), old + 1) & uidlist.MAX_UID or 1
            lst = UidList(uidvalidity)
            dirty = True
            log.info("new UIDVALIDITY {v} for {folder}", v=uidvalidity, folder=self._dir)
        for base in vanished:
            if lst.records.pop(base, None) is not None:
                dirty = True
        unknown = [b for b in entries if b not in lst.records]
        fresh: list[tuple[tuple[int, int, str], str, int, int]] = []
        for base in unknown:
            sub, fn = entries[base]
            path = f"{self._dir}/{sub}/{fn}"
            size = names.size_from_base(base)
            ts = names.time_from_base(base)
            if size is None or ts is None or base in known_before:
                # Stat once; its result is kept in the list. A base we knew that another
                # process dropped must be checked: it may have been expunged meanwhile.
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    del entries[base]
                    continue
                if size is None:
                    size = st.st_size
                if ts is None:
                    ts = (int(st.st_mtime), 0)
            fresh.append(((ts[0], ts[1], base), base, size, ts[0]))
        fresh.sort()  # RFC 3501: UIDs ascend in arrival order; the name's time is arrival
        for _, base, size, date in fresh:
            lst.assign(base, size, date)
            dirty = True
        if dirty:
            uidlist.save(self._list_path(), lst, self._settings.hostname)
            self._list_stamp = self._file_stamp()
        self._list = lst
        return lst

    def _build_state(self, lst: UidList, entries: dict[str, tuple[str, str]]) -> None:
        records = lst.records
        flags_of = names.flags_of
        # Reuse the MessageInfo of every file whose name did not change: a rescan of a big
        # folder after one flag change then costs dictionary lookups, not 10,000 objects.
        previous = self._infos
        infos: dict[str, MessageInfo] = {}
        for base, (sub, fn) in entries.items():
            rec = records.get(base)
            if rec is None:  # appeared after the lock was released; next sync assigns it
                continue
            m = previous.get(fn)
            if m is None or m.uid != rec.uid or m.recent != (sub == "new"):
                info = fn.partition(names.INFO_SEPARATOR)[2]
                m = MessageInfo(
                    rec.uid, base, flags_of(info), rec.size, rec.internaldate, sub == "new"
                )
            infos[fn] = m
        msgs = sorted(infos.values(), key=lambda m: m.uid)
        self._infos = infos
        self._entries = entries
        self._uid_base = {m.uid: m.key for m in msgs}
        self._state = FolderState(lst.uidvalidity, lst.uidnext, tuple(msgs))

    def _changed_by_us(self) -> None:
        """Our own rename/unlink changed a directory: make the next sync() look again."""
        for scan in self._scans.values():
            scan.trusted = False

    # -- locating files ------------------------------------------------------------------

    def _state_or_sync(self) -> FolderState:
        return self._state if self._state is not None else self.sync()

    def _where(self, uid: int) -> tuple[str, str, str]:
        """uid -> (base, subdir, file name) as last seen; MessageGone if unknown."""
        self._state_or_sync()
        base = self._uid_base.get(uid)
        if base is None:
            raise MessageGone(f"no message with UID {uid} in {self.name!r}")
        where = self._entries.get(base)
        if where is None:
            raise MessageGone(f"message UID {uid} was removed from {self.name!r}")
        return base, where[0], where[1]

    def _relocate(self, base: str) -> tuple[str, str]:
        """Find where another reader moved ``base`` (flag rename, new->cur); MessageGone if
        it was removed."""
        for sub in ("new", "cur"):
            self._refresh_dir(sub, force=True)
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
        with self.open_message(uid) as f:
            return f.read()

    # -- flags and new -> cur -------------------------------------------------------------

    def _rename_flags(
        self, uid: int, compute: Callable[[frozenset[str]], frozenset[str]]
    ) -> frozenset[str]:
        def op(base: str, sub: str, fn: str) -> frozenset[str]:
            _, _, info = fn.partition(names.INFO_SEPARATOR)
            old = names.flags_of(info or None)
            new = names.check_flags(compute(old))
            target = names.format_filename(base, new)
            if sub != "cur" or target != fn:
                # rename(2) is atomic: readers see the old or the new name, never neither.
                os.rename(f"{self._dir}/{sub}/{fn}", f"{self._dir}/cur/{target}")
                self._entries[base] = ("cur", target)
                self._changed_by_us()  # the next sync() rescans and shows the new flags
            return new

        return self._with_file(uid, op)

    def set_flags(self, uid: int, flags: Iterable[str]) -> frozenset[str]:
        """Replace the message's flags (letters, see names.py); moves it to cur/."""
        wanted = names.check_flags(flags)
        return self._rename_flags(uid, lambda old: wanted)

    def add_flags(self, uid: int, flags: Iterable[str]) -> frozenset[str]:
        extra = names.check_flags(flags)
        return self._rename_flags(uid, lambda old: old | extra)

    def remove_flags(self, uid: int, flags: Iterable[str]) -> frozenset[str]:
        gone = names.check_flags(flags)
        return self._rename_flags(uid, lambda old: old - gone)

    def take(self, uid: int) -> None:
        """Move a message from new/ to cur/ (with an empty ``:2,`` info), as a reader does when
        it has seen it (maildir.html). No-op if already in cur/."""
        self._rename_flags(uid, lambda old: old)

    # -- removing -------------------------------------------------------------------------

    def expunge(self, uids: Iterable[int]) -> list[int]:
        """Delete the messages; returns the UIDs that were present (and are now gone)."""
        removed: list[tuple[int, str]] = []
        touched: set[str] = set()
        for uid in uids:

            def op(base: str, sub: str, fn: str) -> str:
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
        with self._lock():
            lst = self._reload_list()
            if lst is not None:
                for _, base in removed:
                    lst.records.pop(base, None)
                uidlist.save(self._list_path(), lst, self._settings.hostname)
                self._list_stamp = self._file_stamp()
        for _, base in removed:
            self._entries.pop(base, None)
        self._state = None
        return [uid for uid, _ in removed]

    def delete(self, uid: int) -> None:
        """Delete one message; MessageGone if it was already removed."""
        if not self.expunge([uid]):
            raise MessageGone(f"no message with UID {uid} in {self.name!r}")

    # -- adding ---------------------------------------------------------------------------

    def _uid_of(self, base: str) -> int:
        state = self.sync()
        for m in reversed(state.messages):
            if m.key == base:
                return m.uid
        raise MessageGone(f"message {base!r} vanished right after it was added")

    def _target(self, base: str, flags: frozenset[str]) -> str:
        # Without flags the message is new (IMAP \Recent); with flags it has been "seen".
        if flags:
            return f"{self._dir}/cur/{names.format_filename(base, flags)}"
        return f"{self._dir}/new/{base}"

    def append(
        self, data: bytes, flags: Iterable[str] = (), internaldate: float | None = None
    ) -> int:
        """Add a message durably (IMAP APPEND) and return its UID.

        The internal date is carried in the file name's time field (and the mtime, for
        Dovecot), so whichever process assigns the UID records the right date.
        """
        flagset = names.check_flags(flags)
        when = self._settings.now() if internaldate is None else internaldate
        base = names.with_size(names.unique_name(self._settings.hostname, lambda: when), len(data))
        tmp = f"{self._dir}/tmp/{base}"
        target = self._target(base, flagset)
        try:
            write_new_file(tmp, data)
            os.utime(tmp, (when, when))
            os.link(tmp, target)  # link, not rename: never overwrite (maildir.html)
        finally:
            unlink_quietly(tmp)
        fsync_dir(os.path.dirname(target))
        self._changed_by_us()
        return self._uid_of(base)

    def copy_to(self, uid: int, other: Folder) -> int:
        """Copy a message to ``other`` keeping flags and internal date (RFC 3501 6.4.7);
        returns the new UID. Uses a hard link (messages are immutable), falling back to a
        byte copy across file systems."""
        info = self._state_or_sync().by_uid.get(uid)
        if info is None:
            raise MessageGone(f"no message with UID {uid} in {self.name!r}")
        base = names.with_size(
            names.unique_name(other._settings.hostname, lambda: info.internaldate), info.size
        )

        def op(b: str, sub: str, fn: str) -> tuple[str, frozenset[str]]:
            # Flags as on disk now (another session may have changed them since our sync).
            flags = names.flags_of(fn.partition(names.INFO_SEPARATOR)[2] or None)
            target = other._target(base, flags)
            os.link(f"{self._dir}/{sub}/{fn}", target)
            return target, flags

        try:
            target, _ = self._with_file(uid, op)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            return other.append(self.read_message(uid), info.flags, info.internaldate)
        fsync_dir(os.path.dirname(target))
        other._changed_by_us()
        return other._uid_of(base)

    def clean_stale_tmp(self, max_age: float = STALE_TMP_AGE) -> int:
        return clean_stale_tmp(self._path, self._settings.now, max_age)
