"""Bringing a folder's in-memory view up to date with the disk: look at new/ and cur/ (two
stat() calls when nothing changed), merge with the UID list (uidindex.py; its lock only when
the list must change), and build the ``FolderState`` - reusing what did not change, or column
by column in C loops on a first scan. A first SELECT moves new/ to cur/ (``take_new``) between
the list write and the build, so the state is built once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from itertools import repeat

from twisted.internet.defer import Deferred

from mailhub.store import names, uidwriter
from mailhub.store.core import Files, FolderCore, collector_paused, tick
from mailhub.store.errors import UidValidityChanged
from mailhub.store.folderstate import (
    NO_KEYWORDS,
    FolderState,
    MessageInfo,
    by_uid,
    date_of,
    flags_column,
    flags_of_record,
    keywords_of,
    modseq_of,
    new_infos,
    size_of,
)
from mailhub.store.scan import Scanner
from mailhub.store.uidindex import UidIndex, differences
from mailhub.store.uidlist import FirstColumns, UidList


class Syncer:
    """``sync()`` of one folder: the scans and the UID list merged into ``core.state``."""

    def __init__(self, core: FolderCore, scanner: Scanner, index: UidIndex) -> None:
        self.core = core
        self.scanner = scanner
        self.index = index
        # Directories whose new entries must be durable before the list names them (COPY's
        # links, placement.Placer): fsync'd under the lock before the list changes (by the
        # worker when the write is deferred, uidwriter.Flush: one write for both).
        self.fsync_first = core.fsync_first

    def sync(
        self,
        taken: list[int] | None = None,
        *,
        assign: bool = True,
        fast: bool = False,
        joined: bool = False,
    ) -> FolderState:
        """``Folder.sync()``; with a list ``taken``, a rebuild also moves what is in new/ to
        cur/ first and puts the UIDs it moved in ``taken``. ``assign=False``: when the UID
        list must change, leave that to a worker (uidwriter.py) if the store has one.
        ``fast``: young directories the inotify witness vouches for are not listed again
        (``Scanner.refresh``). ``joined``: the caller waits for the writes this look starts
        (``Folder.deferred``'s list) before it tells anything of the state, so a write it
        started is no reason to look again (an APPEND's own UID: Placer.adopt)."""
        core = self.core
        if core.flush is not None:
            raise core.last_flush().busy()  # our own change is on its way to disk (uidwriter.Flush)
        if not assign and core.settings.offload.run is None:
            assign = True  # no worker: as ever
        began = tick()
        changed = False
        refresh = self.scanner.refresh
        for sub in ("new", "cur"):  # new/ first: a message moving new->cur is then seen in cur/
            changed |= refresh(sub, force=False, fast=fast)
        # A state lacking messages left to a worker is good enough for a look that assigns
        # nothing while that worker is still at it; otherwise look again.
        if not changed and core.state is not None and not core.stale:
            if not core.partial or (not assign and core.job is not None):
                core.looked = began
                return core.state
        # The list on disk, as our state has it: told while a write this look starts runs.
        before = core.exact_state()
        # The scans now hold the new listing: until a state is built from it (build_state
        # clears this), it must not count as "seen" should reconcile fail (lock timeout).
        core.stale = True
        failures = core.write_failures
        told = core.state, core.uid_base, core.uidvalidity, core.entries, core.infos, core.partial
        with collector_paused():
            self.reconcile(taken, assign, before)
        if core.write_failures != failures:
            # Our write of the list failed at once (uidwriter._flushed: the list is read
            # again from the file): the state was built from a list that is not on disk.
            # Reads by UID (``state_or_sync``) keep to the one before, whose UIDs the
            # sessions know: the new one's may be others (a lost list's new UIDVALIDITY).
            core.state, core.uid_base, core.uidvalidity, core.entries, core.infos, core.partial = (
                told
            )
            core.stale = True
            raise uidwriter.NotWritten("the UID list was not written", core.dir)
        if core.flush is not None and taken is None and not (joined and core.defer_writes):
            # This look changed the list: it is told once the worker has written it. (No
            # write was in flight when it began: this one is its own, and with ``joined``
            # its Deferred is in core.defer_writes, which the caller waits for.)
            raise core.last_flush().busy()
        assert core.state is not None
        core.looked = began
        return core.state

    def written(self) -> Deferred[None] | None:
        """Fires when the worker's UID-list write in flight ends; None if there is none."""
        job = self.core.job
        return None if job is None else job.wait()

    def state_or_sync(self) -> FolderState | None:
        """The state, or a sync() when there is none - unless our own write is in flight
        (an expunge dropped the state) and where each message is is known: reading and
        renaming by UID need only that, and a look would meet ``Flushing``."""
        core = self.core
        state = core.state
        if state is None and (core.flush is None or not core.uid_base):
            return self.resync(core.uidvalidity)  # (the caller's UIDs are of the state before)
        return state

    def resync(self, numbered: int, *, assign: bool = True, fast: bool = False) -> FolderState:
        """``sync()`` for a caller holding UIDs of the numbering ``numbered`` (its
        UIDVALIDITY; 0: none): UidValidityChanged if the look found the list lost and
        numbered the messages anew - even if it then raises (its write in flight: the
        caller would run again, by then in the new numbering) - as those UIDs name other
        messages now (RFC 3501 2.3.1.1)."""
        try:
            return self.sync(assign=assign, fast=fast)
        finally:
            if numbered and self.core.uidvalidity != numbered:
                raise UidValidityChanged(f"{self.core.name!r} was given new UIDs")

    def current_state(self) -> FolderState | None:
        core = self.core
        return None if core.stale or core.flush is not None else core.state

    def looked_since(self, mark: int) -> FolderState | None:
        """The state if a sync() that began after tick ``mark`` built or confirmed it, our
        own changes since are applied (not stale) and no worker is adding to it (not
        partial); else None."""
        core = self.core
        if core.looked > mark and not core.stale and not core.partial and core.flush is None:
            return core.state
        return None

    def reconcile(
        self,
        taken: list[int] | None = None,
        assign: bool = True,
        before: FolderState | None = None,
    ) -> None:
        """Merge the scan with the UID list; take the lock only if the list must change.
        With ``taken``: move new/ to cur/ before building the state (``take_new``).
        ``assign=False``: never the lock; a worker changes the list (``uidwriter.start``)
        and the state holds only what the list has now (UIDs all durable). ``before``:
        the state as it was exactly the list (``FolderCore.lock``)."""
        core = self.core
        known_before = core.list.records if core.list is not None else {}
        lst, entries, needs_lock = self._compare()
        gone: set[str] = set()
        partial = False
        if needs_lock and not assign:
            run = core.settings.offload.run
            assert run is not None
            uidwriter.start(core, run, entries, sorted(self.fsync_first))
            if lst is None:
                raise uidwriter.UidsPending("the UID list is being written", core.dir)
            partial = True
        elif needs_lock:
            try:
                with core.lock(before, yields=True):
                    for d in sorted(self.fsync_first):
                        core.fsync_later(d)  # (forgotten when the write is known done)
                    lst, entries, gone = self.index.update_locked(entries, known_before)
            except FileNotFoundError:
                # The lock file or the list's temporary file had no directory: the folder was
                # deleted (or renamed) by another session or process meanwhile - maybe made
                # again since, but that is another folder (a new UIDVALIDITY).
                raise core.not_found() from None
        assert lst is not None
        if taken is not None and entries.new:
            taken.extend(take_new(core, lst, entries))
        self.build_state(lst, entries)
        core.partial = partial
        if gone:
            core.collect_cache(gone)

    def _compare(self) -> tuple[UidList | None, Files, bool]:
        """The list (None: none), the scans, and whether the list must change for them."""
        core = self.core
        entries = self.scanner.scan_all()
        lst = self.index.reload()
        if lst is None:
            return lst, entries, True
        agreed = core.agreed
        if agreed is not None and agreed[0] is lst:
            scans = core.scans
            if agreed[1] is scans["new"].listing and agreed[2] is scans["cur"].listing:
                return lst, entries, False  # a worker made the list from these very scans
        vanished, unknown, differ = differences(lst, entries)
        if vanished:
            # A file renamed during readdir() may be missed (POSIX leaves it unspecified);
            # look again before declaring anything gone, so UIDs stay stable.
            entries = self.scanner.rescan()
            vanished, unknown, differ = differences(lst, entries)
        return lst, entries, bool(vanished) or unknown or differ

    def settling(self, *, fast: bool = False) -> Deferred[None] | None:
        """For a look about to be made with ``assign=False`` that wants every message: when
        the UID list must change first, the worker's write (started now, or in flight) to
        wait for; None when the list has every message (or the store has no worker: the
        look assigns inline). Builds no state (a first SELECT then builds it once, moving
        new/ to cur/ as it does: ``take_new``). Looks at the directories (``fast``: as
        ``sync(fast=True)`` does) even without a worker: SELECT's full look."""
        core = self.core
        run = core.settings.offload.run
        if core.flush is not None:
            return core.last_flush().busy().wait  # our own change on its way to disk
        if run is not None and core.job is not None:
            return core.job.wait()
        changed = False
        for sub in ("new", "cur"):  # (watched: the looks that follow in a session are fast)
            changed |= self.scanner.refresh(sub, force=False, fast=fast, watch=True)
        if changed:
            core.stale = True  # the scans are newer than the state: the look rebuilds it
        if run is None:
            return None
        if not changed and core.state is not None and not core.partial:
            return None
        _, entries, needs_lock = self._compare()
        if not needs_lock:
            return None
        return uidwriter.start(core, run, entries, sorted(self.fsync_first)).wait()

    def build_state(self, lst: UidList, entries: Files) -> None:
        core = self.core
        if not core.infos:
            self._build_fresh_state(lst, entries)
            return
        flags_of = names.flags_of
        sep = names.INFO_SEPARATOR
        # Reuse the MessageInfo of every file whose name and record did not change: a rescan
        # of a big folder after one flag change then costs lookups, not 10,000 objects.
        previous = core.infos
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
            if fn is None:
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
            msgs.sort(key=by_uid)
        self._set_state(lst, entries, infos, {m.uid: m.key for m in msgs}, msgs)

    def _build_fresh_state(self, lst: UidList, entries: Files) -> None:
        """``build_state`` with no MessageInfo to reuse (the first sync of the folder): the
        same result, built column by column in C loops rather than message by message."""
        cols = lst.first_columns()
        if cols is not None:
            lst.columns = None  # (used once: the records hold the same from now on)
            if self._build_from_columns(lst, entries, cols):
                return
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
        # The flags as the file names say them: the records say the same (reconcile and
        # update_locked make them agree before a state is built), unless unknown.
        flags = list(map(flags_of_record, recs))
        if None in flags:
            flags = flags_column(fns)  # type: ignore[arg-type]
        uids = list(map(by_uid, recs))
        msgs = new_infos(
            uids,
            bases,
            flags,
            map(size_of, recs),
            map(date_of, recs),
            recent,
            map(keywords_of, recs),
            map(modseq_of, recs),
        )
        infos = dict(zip(fns, msgs, strict=True))
        uid_base = dict(zip(uids, bases, strict=True))
        # The records are kept in UID order (uidlist.parse, UidList.assign_columns).
        if not all(map(int.__lt__, uids, uids[1:])):
            msgs.sort(key=by_uid)
        self._set_state(lst, entries, infos, uid_base, msgs)  # type: ignore[arg-type]

    def _build_from_columns(self, lst: UidList, entries: Files, cols: FirstColumns) -> bool:
        """``_build_fresh_state`` of a list just made from ``cols`` (a folder's first list,
        uidlist.FirstColumns): the records' fields are read from the columns they were made
        from, already in UID order. False (nothing done) when a file of it is gone since."""
        bases = cols.bases
        fns = list(map(entries.cur.get, bases))
        n = len(bases)
        recent: Iterable[bool] = repeat(False, n)
        if None in fns:  # in new/, or vanished since the list was written
            new_file = entries.new.get
            fns = [new_file(b) if fn is None else fn for b, fn in zip(bases, fns, strict=True)]
            if None in fns:
                return False  # (the general build drops those)
            recent = map(entries.new.__contains__, bases)
        uids = range(cols.first, cols.first + n)
        msgs = new_infos(
            uids,
            bases,
            cols.flags,
            cols.sizes,
            cols.internaldates,
            recent,
            repeat(NO_KEYWORDS, n),
            repeat(cols.modseq, n),
        )
        infos = dict(zip(fns, msgs, strict=True))
        self._set_state(lst, entries, infos, dict(zip(uids, bases, strict=True)), msgs)  # type: ignore[arg-type]
        return True

    def _set_state(
        self,
        lst: UidList,
        entries: Files,
        infos: dict[str, MessageInfo],
        uid_base: dict[int, str],
        msgs: list[MessageInfo],
    ) -> None:
        core = self.core
        core.infos = infos
        core.entries = entries
        core.uid_base = uid_base
        core.uidvalidity = lst.uidvalidity
        core.stale = False
        core.state = FolderState(lst.uidvalidity, lst.uidnext, tuple(msgs), lst.highestmodseq)


def take_new(core: FolderCore, lst: UidList, entries: Files) -> list[int]:
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
    src = core.open_dir("new")
    try:
        dst = core.open_dir("cur")
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
            core.changed_by_us()  # the next sync() reads the directories again
            new_files, cur_files = core.scans["new"].files, core.scans["cur"].files
            new, cur = entries.new, entries.cur
            for base, target in moved:
                del new[base]
                cur[base] = target
                new_files.pop(base, None)
                cur_files[base] = target
    return sorted(records[base].uid for base, _ in moved)
