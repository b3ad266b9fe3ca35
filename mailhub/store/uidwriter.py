"""UID-list writes in a worker thread: the reactor looks, a worker assigns and writes.

Giving new messages their UIDs means taking the folder's dotlock and replacing
``mailhub-uidlist`` durably (a file fsync and a directory fsync: milliseconds each under disk
load). A reactor-side look (``Folder.sync(assign=False)``: the store's change feed, IDLE,
SELECT) never does that itself when the store has a worker (``Offload.run``, set by the
server to its ``GroupCommitter``): it builds the state from the list as it is - every message
in it has a durable UID, the newest ones are simply not in it yet - and starts one job for
the folder, which any other look during it joins (one write for all of them). The job runs on
a private ``FolderCore`` (this thread's memory of the folder is never touched there): it waits
for the dotlock like any thread may, merges the look's listing with the list on disk under it
(uidindex.py: listed again if they disagree; UIDs ascending, never reused, the same for every
process) and writes it. Back on
the reactor the new list is installed, the folder marked for a rebuild, and the folder's
listeners (the change feed) told: only then can a session announce the new messages. A list
made from the look's listing as given (``FolderCore.agreed``) agrees with the scans while
they hold that listing: the rebuild (a first SELECT's) neither parses nor compares it again.

Without a worker (``Offload.run`` None: tools, most tests) a look assigns inline, as
``Folder.sync()`` always does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailhub.safeio import atomic_write, fsync_dir
from mailhub.store import uidlist
from mailhub.store.core import Files, FolderCore, collector_paused
from mailhub.store.dotlock import DotLock
from mailhub.store.errors import LockBusy, LockTimeout, StoreError
from mailhub.store.folderstate import FolderState, StoreSettings
from mailhub.store.scan import Scanner
from mailhub.store.uidindex import UidIndex
from mailhub.store.uidlist import UidList, UidRecord

log = Logger()

Runner = Callable[..., "Deferred[Any]"]  # run(f, *args) in a worker; fires with its result


class NotWritten(LockBusy):
    """A look changed the UID list (new UIDs, flags adopted with a new mod-sequence) and its
    write failed at once (the worker refused it: shutdown): the state it built is of a list
    that is not on disk, and nothing of it may be told (RFC 3501 2.3.1.1: a UID told stays
    that message's; another look or process may give it to another). Tried again like a
    busy lock - the retry reads the list from the file - until the caller gives up."""


class UidsPending(LockBusy):
    """A look without assigning found no UID list to build a state from (a folder's first
    look, a lost list): a worker is writing one; try again when it is done (as for a busy
    lock: every caller that retries LockBusy retries this)."""


@dataclass
class Job:
    """One folder's UID-list write in a worker; the looks that joined it wait for its end."""

    pending: dict[str, frozenset[str]]  # the keywords handed to the worker
    waiters: list[Deferred[None]] = field(default_factory=list)
    done: bool = False  # (a worker that refuses at once ends the job before start returns)
    # The scans' listings (new/, cur/) the look's ``entries`` came from, if it gave them.
    listings: tuple[list[str], list[str]] | None = None
    marked: dict[str, int] = field(default_factory=dict)  # core.links_marked of its dirs

    def wait(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.done:
            d.callback(None)
        else:
            self.waiters.append(d)
        return d

    def busy(self, path: str) -> Flushing:
        """The LockBusy for a hold that yields to this job (``core.FolderLock``): tried
        again when it has ended."""
        return Flushing(f"{path}: UID list being written by a worker", path, self.wait())


@dataclass(frozen=True)
class Written:
    """What a worker wrote (or found written by another process)."""

    lst: UidList
    stamp: tuple[int, int, int] | None  # the file's, as this list was read or written
    gone: set[str]
    pending: dict[str, frozenset[str]]  # the keywords it did not use
    # The list was made from the look's listing as given (not listed again, no file found
    # gone): it now agrees with it, every file with its record and flags.
    as_given: bool = False


def start(
    core: FolderCore, run: Runner, entries: Files | None = None, dirs: list[str] | None = None
) -> Job:
    """The folder's job: the one in flight, or a new one (reactor thread). ``entries``: the
    look's listing of the folder (the worker lists it again only if the list disagrees).
    ``dirs``: directories to fsync under the lock before the list names what is in them
    (COPY's links not yet durable: Syncer.fsync_first)."""
    job = core.job
    if job is not None:
        return job
    job = core.job = Job(dict(core.pending_keywords))
    job.marked = core.links_marked(dirs or [])
    if entries is not None:
        # (``entries`` are the scans as they are now: Scanner.scan_all or rescan)
        new, cur = core.scans["new"].listing, core.scans["cur"].listing
        if new is not None and cur is not None:
            job.listings = (new, cur)
    old = core.list
    known = dict(old.records) if old is not None else {}
    # The worker starts from our list if the file is still the one we read (no parse): its
    # own dict, the records shared - nobody changes one in place without the folder's lock,
    # which the worker holds while it uses them (_adopt_flags makes new ones).
    mine = None
    if old is not None and core.list_stamp is not None:
        mine = UidList(
            old.uidvalidity, old.uidnext, dict(old.records), old.highestmodseq, old.version
        )
    d = _call(run, write_list, core.path, core.name, core.settings,
              old.uidvalidity if old else 0, known, dict(job.pending), mine, core.list_stamp,
              None if entries is None else Files(dict(entries.new), dict(entries.cur)),
              dirs or [])  # fmt: skip
    d.addBoth(_finish, core, job)
    return job


def _call(run: Runner, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """``run(f, *args)``; a runner that raises fails its Deferred instead (refused at once):
    the job or write ends as failed, never left in flight holding the folder or its lock."""
    try:
        return run(f, *args)
    except Exception:
        return fail()


def write_list(
    path: Path,
    name: str,
    settings: StoreSettings,
    validity: int,
    known_before: dict[str, UidRecord],
    pending: dict[str, frozenset[str]],
    mine: UidList | None = None,
    stamp: tuple[int, int, int] | None = None,
    listed: Files | None = None,
    dirs: list[str] | None = None,
) -> Written:
    """Worker thread: under the folder's lock, the list on disk brought in line with the
    directories and written (uidindex.UidIndex.update_locked), on a private FolderCore.
    ``mine``: the reactor's copy of the list as of the file's ``stamp`` (used if the file
    is still that one; else it is read again under the lock)."""
    shadow = FolderCore(path, name, settings)
    if mine is not None:
        shadow.list, shadow.list_stamp = mine, stamp
    elif validity:
        # Only for a lost list's new UIDVALIDITY (above ours); list_stamp None: the list is
        # read from disk under the lock.
        shadow.list = UidList(validity)
    shadow.pending_keywords = pending
    scanner = Scanner(shadow)
    index = UidIndex(shadow, scanner)
    count = None if listed is None else len(listed)
    try:
        with shadow.lock():  # not the reactor: waits while another holder has it
            # (the collector paused once the lock is ours: a first list of 10,000 makes
            # 20,000 records and lines' tuples, two dozen young collections otherwise)
            with collector_paused():
                for d in dirs or ():
                    fsync_dir(d)  # (links made before the lock: durable before they get UIDs)
                # update_locked lists the folder again if the list disagrees with ``listed``
                # (another holder renamed or recorded meanwhile), as for a look on the reactor.
                entries = scanner.rescan() if listed is None else listed
                lst, used, gone = index.update_locked(entries, known_before)
    except FileNotFoundError:
        raise shadow.not_found() from None
    # (_assign_uids drops from ``listed`` a file found gone: not as given then)
    as_given = used is listed and len(used) == count
    return Written(lst, shadow.list_stamp, gone, pending, as_given)


def _finish(result: Written | Failure, core: FolderCore, job: Job) -> None:
    """Reactor thread: install what the worker wrote, wake whoever waits for it."""
    job.done = True
    if core.job is job:
        core.job = None
    core.agreed = None
    agreed = False
    if isinstance(result, Written):
        # (While our own writes hold the lock - core.flush - the list in memory is newer
        # than this one, made before we took the lock: keep it.)
        installed = core.flush is None
        if installed:
            core.list, core.list_stamp = result.lst, result.stamp
        scans = core.scans
        listings = job.listings
        if (
            installed
            and result.as_given
            and listings is not None
            and scans["new"].listing is listings[0]
            and scans["cur"].listing is listings[1]
        ):
            # The scans are still those the list was made from: the next look rebuilds the
            # state without listing or comparing them again (a first SELECT of 10,000).
            core.agreed = (result.lst, *listings)
            agreed = True
        for base in job.pending.keys() - result.pending.keys():
            core.pending_keywords.pop(base, None)  # in the list now, with their UIDs
        core.links_durable(job.marked)
        if result.gone:
            core.collect_cache(result.gone)
    elif result.check(LockTimeout, StoreError, OSError):
        log.warn("UID list of {folder} not written: {why}", folder=core.dir, why=result.value)
    else:
        log.failure("writing the UID list of {folder} failed", result, folder=core.dir)
    # Whatever happened, the next look builds the state again (and starts another job if
    # anything is still without a UID); the listeners look at once only after a write (not
    # in a loop of failures: after one, the next look of its own retries). A state left
    # partial is rebuilt from the scans it was built from (sync: partial, no job): they need
    # not be listed again.
    if isinstance(result, Written) and (core.partial or agreed):
        core.stale = True
    else:
        core.changed_by_us()
    for d in job.waiters:
        d.callback(None)
    if not isinstance(result, Written):
        return
    _tell_listeners(core)


# --- writes made under the lock on the reactor thread (STORE, EXPUNGE, APPEND, COPY...) ---


class Flushing(LockBusy):
    """The folder's UID list, changed by a command of this process, is being written by a
    worker (``Flush``), which holds the folder's lock: nothing of the change may be told
    before it is on disk, so every look and lock meets this ``LockBusy`` until then.
    ``wait`` fires (never fails) when the write has ended: the retry waits for that
    instead of a timer (``mailhub.store.lockwait``)."""

    def __init__(self, message: str, path: object, wait: Deferred[None]) -> None:
        super().__init__(message, path)
        self.wait = wait


@dataclass
class Flush:
    """One write of a folder's list by a worker, under the lock the reactor took for it
    (held until no write follows: core.FolderLock)."""

    path: str
    lock: DotLock
    dirty: bool = False  # the list is to be written (else only ``dirs`` fsync'd)
    records: list[str] | None = None  # its record lines, when the change rendered them
    dirs: list[str] = field(default_factory=list)
    lst: UidList | None = None  # the list written (its stamp is known at the end)
    # The list's mod-sequence as written (None: only ``dirs``), and the state that is
    # exactly that list, if one was seen (``FolderCore.note_written_state``): the state on
    # disk (``FolderCore.durable``) once the write is done.
    version: int | None = None
    after: FolderState | None = None
    waiters: list[Deferred[None]] = field(default_factory=list)
    quiet: list[Deferred[None]] = field(default_factory=list)
    looks_waiting: bool = False
    failure: Failure | None = None
    done: bool = False
    marked: dict[str, int] = field(default_factory=dict)  # core.links_marked of ``dirs``

    def wait(self) -> Deferred[None]:
        """Fires when the write has ended; fails as it failed (the command that made the
        change answers with it)."""
        d: Deferred[None] = Deferred()
        if not self.done:
            self.waiters.append(d)
        elif self.failure is not None:
            d.errback(self.failure)
        else:
            d.callback(None)
        return d

    def read_through(self) -> Deferred[None]:
        """For a command that changed nothing but read the list in memory, which this write
        makes durable (a STORE finding its flags set by another): fires when it is on disk;
        if it failed, ``NotWritten`` - the command runs again (a ``LockBusy``), reading the
        list from the file, and never answers for a change it did not make."""

        def failed(_: Failure) -> None:
            raise NotWritten("the UID list it read was not written", self.path)

        return self.wait().addErrback(failed)

    def busy(self, *, look: bool = True) -> Flushing:
        """The LockBusy to raise for a look (``look``) or a change that cannot join."""
        d: Deferred[None] = Deferred()
        if self.done:
            d.callback(None)
        else:
            self.quiet.append(d)
            self.looks_waiting |= look
        return Flushing(f"{self.path}: UID list being written", self.path, d)


def start_flush(
    core: FolderCore,
    lock: DotLock,
    unsaved: tuple[UidList, list[str] | None] | None,
    dirs: list[str],
) -> Flush:
    """Reactor thread, at the end of a lock hold that deferred its writes (core.FolderLock):
    a worker fsyncs ``dirs`` and writes the list (``unsaved``), holding ``lock``."""
    assert core.flush is None
    flush = core.flush = Flush(core.dir, lock, unsaved is not None, dirs=list(dirs))
    if unsaved is not None:
        flush.records = unsaved[1]
    _run(core, flush)
    return flush


def join_next(core: FolderCore, dirty: bool, dirs: list[str]) -> Flush:
    """A change made while a write is in flight, with our lock: written right after it."""
    assert core.flush is not None
    nxt = core.next
    if nxt is None:
        nxt = core.next = Flush(core.dir, core.flush.lock)
    nxt.dirty |= dirty
    nxt.records = None  # (the whole list is rendered: it holds every change since)
    nxt.dirs.extend(d for d in dirs if d not in nxt.dirs)
    return nxt


def _run(core: FolderCore, flush: Flush) -> None:
    # Our lock is held: its lane, never behind jobs that wait for that lock (write_list).
    run = core.settings.offload.holding or core.settings.offload.run
    assert run is not None
    data = None
    if flush.dirty and core.list is not None:
        flush.lst = core.list
        flush.version = core.list.highestmodseq
        data = uidlist.serialise(core.list, flush.records)
        core.note_written_state(flush)
    flush.marked = core.links_marked(flush.dirs)
    d = _call(run, flush_list, core.list_path(), data, core.settings.hostname, flush.dirs)
    d.addBoth(_flushed, core, flush)


def flush_list(
    path: Path, data: bytes | None, hostname: str, dirs: list[str]
) -> tuple[int, int, int] | None:
    """Worker thread: the directories' entries durable first (an expunge's unlinks before
    the list that forgets them: a crash between leaves the list naming files that are gone,
    which the next look drops), then the list replaced durably (atomic_write). Returns the
    new list file's stamp. (The reactor releases the lock when no write follows.)"""
    for d in dirs:
        fsync_dir(d)
    if data is None:
        return None
    atomic_write(path, data, hostname)
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _flushed(result: tuple[int, int, int] | Failure | None, core: FolderCore, flush: Flush) -> None:
    """Reactor thread: the write ended. The next one starts (changes made meanwhile, same
    lock) or the lock is released; waiters and listeners are told."""
    flush.done = True
    if isinstance(result, Failure):
        flush.failure = result
        core.write_failures += 1
        log.warn("UID list of {folder} not written: {why}", folder=core.dir, why=result.value)
        core.list_stamp = None  # (if no write follows: the file is read again)
        core.changed_by_us()
        core.set_durable(None)
    else:
        core.links_durable(flush.marked)  # (whoever linked them may wait no more: gone)
        if result is not None and core.list is flush.lst:
            core.list_stamp = result
        if flush.version is not None:
            # The list on disk is now this one: its state, if this process knows it.
            core.note_written_state(flush)
            core.set_durable(flush.after)
    nxt, core.next = core.next, None
    if nxt is not None and core.flush is flush:
        core.flush = nxt  # (it writes the list in memory: every change so far)
        try:
            _run(core, nxt)
        except Exception:
            log.failure("writing the UID list of {folder} failed", folder=core.dir)
            core.flush = None
            core.write_failures += 1
            nxt.done, nxt.failure = True, Failure()
            _release(flush.lock, core)
            _tell(nxt, nxt.failure)
    else:
        if core.flush is flush:
            core.flush = None
        _release(flush.lock, core)
    # The commands that made the change first (they answer, then look), then the looks
    # and changes that waited for it (a change may start the next write at once).
    _tell(flush, result)
    if isinstance(result, Failure):
        return
    _tell_listeners(core)


def _release(lock: DotLock, core: FolderCore) -> None:
    try:
        lock.release()
    except OSError as e:
        log.warn("lock of {folder} not released: {e}", folder=core.dir, e=str(e))


def _tell(flush: Flush, result: object) -> None:
    for d in flush.waiters:
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(None)
    for d in flush.quiet:
        d.callback(None)


def _tell_listeners(core: FolderCore) -> None:
    """Reactor thread: a list of ours is on disk; who waits for written lists is told."""
    for listener in list(core.written_listeners):
        try:
            listener()
        except Exception:
            log.failure("UID list listener failed")
