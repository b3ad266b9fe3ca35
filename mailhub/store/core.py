"""What the parts of one folder share: where it is, its settings, and what this process last
saw of it - the directory scans, where each message's file is (``Files``), the UID list, the
state built from them, the expunged files kept for readers (``Kept``), the cache file.
``FolderCore`` owns that memory and the few steps every part needs (the folder's dotlock,
marking our own changes, the cache's upkeep); the parts (scan, uidindex, sync, reading, flags,
recent, expunge, placement, derived) read and change it; ``maildir.Folder`` is their façade.
"""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain, count
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mailhub.safeio import fsync_dir
from mailhub.store import names, uidlist
from mailhub.store.cache import FolderCache
from mailhub.store.dotlock import DotLock, on_reactor_thread
from mailhub.store.errors import FolderNotFound, LockTimeout
from mailhub.store.folderstate import FolderState, MessageInfo, StoreSettings
from mailhub.store.uidlist import UidList

if TYPE_CHECKING:
    from mailhub.store.uidwriter import Flush, Job

log = Logger()


class Files:
    """Where each message's file is: base name -> (subdir, file name), as a dict of pairs
    would say, kept as the two directories' own dicts (base -> file name): a first scan of a
    big folder then copies the listings instead of making a pair per message. A base is in
    one of them only (cur/ wins: a message moving new/ -> cur/ can show in both listings)."""

    __slots__ = ("cur", "new")

    def __init__(self, new: dict[str, str] | None = None, cur: dict[str, str] | None = None):
        self.new: dict[str, str] = {} if new is None else new
        self.cur: dict[str, str] = {} if cur is None else cur

    @classmethod
    def of_listings(cls, new: dict[str, str], cur: dict[str, str]) -> Files:
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
class DirScan:
    """Cached scan of new/ or cur/: base name -> file name."""

    stamp: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) at the time of the scan
    trusted: bool = False  # mtime was older than the dirty window, so the stamp can be trusted
    files: dict[str, str] = field(default_factory=dict)
    # The os.listdir() that ``files`` was made from, while ``files`` is exactly that (None
    # once our own renames edited ``files`` in place): an equal listing means equal files.
    listing: list[str] | None = None
    # The inotify generation of the directory taken just before that listing (dirwatch.py):
    # while it is unchanged, nothing changed the directory since (None: no witness).
    generation: int | None = None


class Reader(Protocol):
    """A session reading a folder that is told of expunges only when its protocol allows (IMAP,
    RFC 3501 7.4.1): until then it may still read the messages it knows (RFC 2180 4.1)."""

    def knows(self, uid: int) -> bool:
        """The session still counts message ``uid`` as present (it was not told it is gone)."""


@dataclass
class Kept:
    """An expunged message's file, linked into tmp/ for the readers not told yet."""

    base: str
    name: str  # in tmp/
    readers: weakref.WeakSet[Reader]


_ticks = count(1)


EXPUNGED_KEPT = 1024  # FolderCore.expunged's size


def tick() -> int:
    """A number above every one given before: orders an event (an IMAP command's start)
    against looks at the disk (``FolderCore.looked``). One thread, the reactor's."""
    return next(_ticks)


class FolderLock:
    """``FolderCore.lock()``: the dotlock as a context manager. On the reactor thread, with
    the store's worker (``StoreSettings.offload``) and a caller within
    ``Folder.deferring()``, the list changed under it (``UidIndex.save``) and the
    directories to fsync (``fsync_later``) go to the worker with the lock when the block
    ends: the worker fsyncs them and writes the list durably (uidwriter.Flush). The reactor
    never waits for the disk; until the write is done every look at the folder meets
    ``uidwriter.Flushing`` (a ``LockBusy``), so nothing of it is told before it is on disk -
    but a session's look may be answered from ``core.durable`` (the state of the list on
    disk) instead, unless the session was told more than that (``FolderCore.on_disk``).

    Group commit: while a write is in flight the lock stays ours, and a deferring change
    made meanwhile joins the next write (``core.next``), started when the one in flight
    ends; the lock is released when no write follows. Nobody else can change the list
    while we hold it, so the list in memory is the one to write. Changes stop joining once
    a look is waiting (``Flush.looks_waiting``) or a worker's job waits for the lock, so
    they wait for at most two writes. While such a job waits, a deferring hold that may be
    run again (``yields``: STORE, a look, a COPY's) does not take the free lock but waits for
    the job's end: the job polls for the lock, and a stream of holds handing it on from one
    to the next would keep it from the job (past its lock timeout). Changes stop joining
    too when a waiter of another process announced itself (``DotLock.waiter``)."""

    __slots__ = ("before", "core", "dot", "joined", "yields")

    def __init__(
        self,
        core: FolderCore,
        dot: DotLock,
        before: FolderState | None = None,
        yields: bool = False,
    ) -> None:
        self.core = core
        self.dot = dot
        self.joined = False
        self.before = before
        self.yields = yields

    def __enter__(self) -> DotLock:
        core = self.core
        deferring = (
            core.defer_writes is not None
            and core.settings.offload.run is not None
            and on_reactor_thread()
        )
        flush = core.flush
        if flush is not None:
            if (
                not deferring
                or core.looks_waiting()
                or core.job is not None
                or flush.lock.waiter()  # another process's (dotlock: fairness)
            ):
                raise core.last_flush().busy(look=False)
            # (Before this change: the state may be exactly what the write in flight is.)
            core.note_written_state(flush)
            self.joined = True
            self.dot = flush.lock
        else:
            job = core.job
            if self.yields and deferring and job is not None:
                raise job.busy(core.dir)
            self.dot.acquire()
            # No write of ours in flight: the list in memory is the one on disk (unless
            # another process changed it since: then the state is older, still told by it).
            core.set_durable(self.before or core.exact_state(), start=True)
        core.deferring = deferring
        core.unsaved, core.later_dirs = None, []
        return self.dot

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        core = self.core
        unsaved, dirs = core.unsaved, core.later_dirs
        core.deferring, core.unsaved, core.later_dirs = False, None, []
        from mailhub.store import uidwriter  # (uidwriter imports this module)

        if self.joined:
            # (With an exception too: what changed in memory matches the disk's files.)
            if unsaved is not None or dirs:
                flush = uidwriter.join_next(core, unsaved is not None, dirs)
                if core.defer_writes is not None:
                    core.defer_writes.append(flush.wait())
            elif exc_type is None and core.defer_writes is not None:
                # Nothing changed, but what it found (flags another command set) is the
                # list in memory: told once the writes in flight are on disk.
                core.defer_writes.append(core.last_flush().read_through())
            return
        if exc_type is None and (unsaved is not None or dirs):
            # The command waits for the write; the lock is released after it.
            flush = uidwriter.start_flush(core, self.dot, unsaved, dirs)
            if core.defer_writes is not None:
                core.defer_writes.append(flush.wait())
            return
        try:
            if unsaved is not None:
                # Failed after changing the list in memory: read it again from the file.
                core.list_stamp = None
                core.changed_by_us()
            for d in dirs:
                fsync_dir(d)
        finally:
            self.dot.release()


class FolderCore:
    """One folder's identity and this process's memory of it (one per directory: sessions
    share it through the ``Folder`` that ``MailStore`` hands out; one thread only)."""

    def __init__(self, path: Path, name: str, settings: StoreSettings) -> None:
        self.name = name
        self.path = path
        self.dir = str(path)
        # Made once: a pathlib join costs more than the stat() it is for (every sync).
        self._list_path = path / uidlist.FILENAME
        self._list_file = f"{self.dir}/{uidlist.FILENAME}"
        self._lock_path = path / uidlist.LOCKNAME  # (every change: a lock)
        # The user's Maildir root: INBOX itself, the parent of a Maildir++ folder.
        self.root = path if name == names.INBOX else path.parent
        self.settings = settings
        self.scans = {"new": DirScan(), "cur": DirScan()}
        # The UID list as last read or written, and its file's stamp then.
        self.list: UidList | None = None
        self.list_stamp: tuple[int, int, int] | None = None
        self.state: FolderState | None = None
        self.entries = Files()  # where each message's file was last seen
        self.uid_base: dict[int, str] = {}
        # The UIDVALIDITY of the numbering ``uid_base`` is by (0: none yet): a caller's UIDs
        # of another one name other messages (``Syncer.numbered``, ``Folder.uidvalidity``).
        self.uidvalidity = 0
        self.infos: dict[str, MessageInfo] = {}  # file name -> info, reused across syncs
        self.pending_keywords: dict[str, frozenset[str]] = {}  # base -> keywords, for adding
        self.cache: FolderCache | None = None
        # Sessions that may read messages they were not told are expunged, and the files of
        # expunged messages kept for them (uid -> link in tmp/): RFC 2180 4.1.
        self.readers: weakref.WeakSet[Reader] = weakref.WeakSet()
        self.kept: dict[int, Kept] = {}
        # Our own change since the state was built (it may not show in the listing: keywords
        # only, or a rename that ``entries`` already knows): the next sync() must rebuild.
        self.stale = False
        # Reactor-side looks that leave the UID list to a worker (uidwriter.py): the job in
        # flight, whether the state lacks messages waiting for it, and who hears it ended.
        self.job: Job | None = None
        self.partial = False
        self.written_listeners: list[Callable[[], None]] = []
        # (list, new/ listing, cur/ listing): a worker wrote ``list`` from exactly these
        # listings (uidwriter.py), so they agree without comparing 10,000 names again.
        self.agreed: tuple[UidList, list[str], list[str]] | None = None
        # The tick (``tick()``) at which the last sync() that built or confirmed the state
        # began: that sync saw every change completed before it.
        self.looked = 0
        # Writes of the UID list made under the lock on the reactor thread go to a worker
        # with the lock (uidwriter.Flush): set by ``Folder.deferring()`` (IMAP commands,
        # which wait for the write before they answer), with the list of the writes'
        # Deferreds it started. While one is in flight, ``flush`` is it; under the lock,
        # ``deferring`` says ``UidIndex.save`` only serialises (into ``unsaved``) and
        # ``fsync_later`` collects directories for the worker to fsync first.
        self.defer_writes: list[Deferred[None]] | None = None
        self.flush: Flush | None = None
        self.next: Flush | None = None  # changes made while ``flush`` runs: written after
        self.deferring = False
        self.unsaved: tuple[UidList, list[str] | None] | None = None  # (list, record lines)
        self.later_dirs: list[str] = []
        # How many of those writes failed (uidwriter._flushed): a look whose own write
        # failed at once must not answer from the state it built (Syncer.sync).
        self.write_failures = 0
        # Directories whose new entries must be durable before the list names them (COPY's
        # links, placement.Placer), each with the tick of its last link: fsync'd under the
        # lock before the list changes (by the worker when the write is deferred), and
        # forgotten once a write that fsync'd them after that link has ended well
        # (``links_durable``): whoever made the links may have gone away meanwhile.
        self.fsync_first: dict[str, int] = {}
        # While ``flush`` runs: the state of the list on disk (the last one written, exactly:
        # ``exact_state``), for looks that need not wait for the write (``on_disk``); None
        # when this process cannot vouch for one (they wait).
        self.durable: FolderState | None = None
        # Messages this process expunged (uid -> base), their files gone, that ``durable``
        # may still hold: not told from it to a session that has no copy kept (its own
        # EXPUNGE or MOVE, one it did not know: ``on_disk``).
        self.unlinked: dict[int, str] = {}
        # The UIDs of the last messages this process expunged (base -> uid, oldest first):
        # an APPEND or COPY that placed one still names its UID (RFC 4315 APPENDUID,
        # COPYUID) when another session expunged or moved it before the command could.
        self.expunged: dict[str, int] = {}

    def not_found(self) -> FolderNotFound:
        return FolderNotFound(f"folder {self.name!r} no longer exists")

    def stat_dir(self, sub: str) -> os.stat_result:
        try:
            return os.stat(f"{self.dir}/{sub}")
        except FileNotFoundError:
            raise self.not_found() from None

    def open_dir(self, sub: str) -> int:
        try:
            return os.open(f"{self.dir}/{sub}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise self.not_found() from None

    def list_path(self) -> Path:
        return self._list_path

    def list_file_header(self) -> bytes | None:
        """The UID list file's first line now (``uidlist.read_header``)."""
        return uidlist.read_header(self._list_file)

    def list_file_stamp(self) -> tuple[int, int, int] | None:
        """(inode, mtime_ns, size) of the UID list file now; None if it is missing. Equal
        stamps may hide a change (coarse mtimes, a reused inode): ``UidIndex.reload``."""
        try:
            st = os.stat(self._list_file)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def lock(self, before: FolderState | None = None, *, yields: bool = False) -> FolderLock:
        """The folder's dotlock: held to change the UID list (and to compact the cache).
        A context manager; on the reactor thread of a store with a worker, a UID-list write
        made under it is handed to the worker with the lock (``FolderLock``). ``before``:
        the ``exact_state`` taken before a change that began ahead of the lock (an
        expunge's unlinks), if no write of ours was in flight then. ``yields``: deferring,
        LockBusy while a worker's job of ours waits for the lock (the caller runs again:
        ``FolderLock``)."""
        return FolderLock(self, self.dotlock(self._lock_path), before, yields)

    def last_flush(self) -> Flush:
        """The write a look must wait for: the next one if changes wait for it."""
        last = self.next or self.flush
        assert last is not None
        return last

    def exact_state(self) -> FolderState | None:
        """The state if it is exactly the list in memory: built from it or following our
        own changes at its mod-sequence (every change of the list takes a new one, RFC 7162
        3.1.1: equal values, equal lists; ``stale`` need not be clear: it asks for a new
        listing of the directories, whose messages without a UID no state has), nothing
        left to a worker. Without a write of ours in flight, the list must be the file's
        (not after a failed write)."""
        state, lst = self.state, self.list
        if (
            state is None
            or lst is None
            or (self.list_stamp is None and self.flush is None)
            or self.partial
            or state.highestmodseq != lst.highestmodseq
            or state.uidnext != lst.uidnext
            or state.uidvalidity != lst.uidvalidity
        ):
            return None
        return state

    def note_written_state(self, flush: Flush) -> None:
        """Keep the state as ``flush``'s if it is exactly the list that write is writing
        (nothing changed since it began): ``durable`` once it is on disk."""
        if flush.after is None and flush.version is not None and self.next is None:
            state = self.exact_state()
            if state is not None and state.highestmodseq == flush.version:
                flush.after = state

    def set_durable(self, state: FolderState | None, *, start: bool = False) -> None:
        """``durable`` is ``state`` (``start``: a chain of writes begins; the list in
        memory is the one on disk)."""
        self.durable = state
        unlinked = self.unlinked
        if not unlinked:
            return
        if state is not None:
            by_uid = state.by_uid
            self.unlinked = {u: b for u, b in unlinked.items() if u in by_uid}
        elif start and self.list is not None:
            records = self.list.records
            self.unlinked = {u: b for u, b in unlinked.items() if b in records}

    def on_disk(self, reader: Reader, modseq: int, uidnext: int) -> FolderState | None:
        """While our write is in flight: the state on disk, if no older than what the
        session ``reader`` was told or answered (``modseq``, ``uidnext``: it may know
        changes of the write in flight - a STORE that found its flags set already - and
        must never be told less); else None (the session's look waits for the write)."""
        flush = self.flush
        if flush is None:
            return None
        self.note_written_state(flush)
        state = self.durable
        if state is None or state.highestmodseq < modseq or state.uidnext < uidnext:
            return None
        if self.unlinked:
            by_uid = state.by_uid
            kept = self.kept
            for uid in self.unlinked:
                if uid in by_uid:
                    copy = kept.get(uid)
                    if copy is None or reader not in copy.readers:
                        # Its own expunge, or one it would be told of as new: it is gone.
                        return None
        entries = self.entries
        for m in reversed(state.messages):
            if m.uid < uidnext:
                break
            if m.key not in entries:
                # New to the session but gone (another process): no copy kept for it.
                return None
        return state

    def looks_waiting(self) -> bool:
        return any(f is not None and f.looks_waiting for f in (self.flush, self.next))

    def fsync_later(self, directory: str) -> None:
        """Make ``directory``'s entries durable: now, or under the lock while writes are
        deferred, by the worker before it writes the list (answers wait for both)."""
        if self.deferring:
            if directory not in self.later_dirs:
                self.later_dirs.append(directory)
        else:
            fsync_dir(directory)
            self.fsync_first.pop(directory, None)  # (no link can come between: one thread)

    def links_marked(self, dirs: list[str]) -> dict[str, int]:
        """The marks (``fsync_first``) of those of ``dirs`` that have links to make durable,
        as of now: for ``links_durable`` once a write fsyncing ``dirs`` from now on ends."""
        marks = self.fsync_first
        return {d: marks[d] for d in dirs if d in marks}

    def links_durable(self, marked: dict[str, int]) -> None:
        """A write that fsync'd the ``marked`` directories (``links_marked`` taken before it
        started) ended well: their links made before it are durable. A link made since
        keeps its directory marked."""
        marks = self.fsync_first
        for d, mark in marked.items():
            if marks.get(d) == mark:
                del marks[d]

    def dotlock(self, path: Path) -> DotLock:
        s = self.settings
        return DotLock(
            path,
            timeout=s.lock_timeout,
            stale_after=s.lock_stale_after,
            hostname=s.hostname,
            now=s.now,
        )

    def changed_by_us(self) -> None:
        """Our own rename/unlink changed a directory: make the next sync() look again."""
        self.stale = True
        self.agreed = None
        for scan in self.scans.values():
            scan.trusted = False
            scan.listing = None  # the caller edits scan.files to follow its renames
            scan.generation = None

    def announce_index_change(self) -> None:
        """The index changed but no directory did (keywords only): touch cur/ so every
        process's two-stat sync() rescans and re-reads the list."""
        try:
            os.utime(f"{self.dir}/cur")
        except FileNotFoundError:
            raise self.not_found() from None
        self.changed_by_us()

    # -- the derived-data cache's file (derived.py reads and writes it) ---------------------

    def cache_file(self) -> FolderCache:
        cache = self.cache
        if cache is None:
            cache = self.cache = FolderCache(self.path, self.settings.hostname)
        return cache

    def collect_cache(self, gone: set[str]) -> None:
        """Drop the cache records of the messages ``gone`` (expunged)."""
        cache = self.cache
        if cache is None or not gone:
            return
        cache.forget(gone)
        if cache.needs_compaction():
            self.compact_cache(cache)

    def compact_cache(self, cache: FolderCache) -> None:
        try:
            with self.lock():
                cache.compact(set(self.entries))
        except (LockTimeout, OSError) as e:
            log.warn("cache of {folder} not compacted: {e}", folder=self.dir, e=str(e))


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for a rebuild or a UID-list write: a first scan
    of a big folder makes tens of thousands of objects (records, infos, dicts) and no
    reference cycles, and each few hundred of them would otherwise set off a collection pass
    (dozens per cold SELECT of 10,000 messages, now and then a full one of the whole
    process). One pass over the new objects runs after, at the next allocation. The switch
    is the process's: a worker thread and the reactor may both use this (whichever finds it
    off leaves it alone), and it is on again when neither is inside. Never around an await
    (THREAD pauses its synchronous step only): every other session would run without it."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
