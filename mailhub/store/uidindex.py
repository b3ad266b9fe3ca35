"""A folder's UID index: the ``mailhub-uidlist`` file (uidlist.py) as this process last read
it, brought in line with the directory scans under the folder's dotlock - UIDs for arrivals
in arrival order, a new UIDVALIDITY for a lost list (RFC 3501 2.3.1.1), a new mod-sequence
for every change found: expunges, flags renamed by other programs (RFC 7162 3.1).

Mod-sequences: every change made under the folder lock takes one new value
``highestmodseq + 1`` for all the messages it touches.

Has another process changed the list since we read it? Its file's stamp (inode, mtime_ns,
size) says so cheaply, but not exactly: the list is replaced by rename, so inodes alternate
and are reused, and with coarse file times (a jiffy, ~4 ms, on many kernels) two writes by
another process (a worker, another host, a CLI tool) within one tick, of the same size, look
unchanged. Writing our copy back then loses its UIDs (one UID for two messages), flags and
keywords. So an equal stamp is confirmed by the file's first line (one small pread: ~5 us of
CPU; taking the dotlock costs ~130 us) whenever the list is looked at: under the lock before
we may write, by a look that found the directories changed, and by one that listed them
again and found the same files (scan.Scanner.refresh: a keyword stored by another process
changes the list only, and its touch of cur/ - FolderCore.announce_index_change - may leave
cur/'s coarse mtime as it was). Every write that changes the list changes that line: new
UIDs move uidnext, any other change (flags, keywords, expunges, records dropped for files
found gone) takes a mod-sequence (RFC 7162 3.1), a lost list gets a new UIDVALIDITY - all
but the adoption of a version 1 list's flags, and that list's first line says version 1
(``uidlist.header_line``). Not chosen: keeping each list's old file open so its inode is
not reused (as Dovecot does), a descriptor per loaded folder (idle_10k loads 10,000).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from itertools import repeat

from twisted.logger import Logger

from mailhub.store import names, uidlist
from mailhub.store import uidvalidity as uidvalidity_counter
from mailhub.store.core import Files, FolderCore
from mailhub.store.errors import CorruptUidList
from mailhub.store.folderstate import NO_KEYWORDS, flags_column
from mailhub.store.scan import Scanner
from mailhub.store.uidlist import UidList

log = Logger()


def differences(lst: UidList, entries: Files) -> tuple[set[str], bool, bool]:
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


class UidIndex:
    """Reads, merges and writes one folder's UID list (``FolderCore.list``)."""

    def __init__(self, core: FolderCore, scanner: Scanner) -> None:
        self.core = core
        self.scanner = scanner

    def reload(self) -> UidList | None:
        """The on-disk list, re-read only if the file changed (its stamp, then its first
        line: the module's docstring). None if missing or corrupt."""
        core = self.core
        if (core.flush is not None or core.unsaved is not None) and core.list is not None:
            # Our writes in flight (or to start when this lock block ends) hold the lock:
            # nobody else changed it, and the list in memory has changes the file may not
            # have yet (core.FolderLock) - its first line differs, but it is ours to keep.
            return core.list
        stamp = core.list_file_stamp()
        if (
            stamp is not None
            and stamp == core.list_stamp
            and core.list is not None
            and core.list_file_header() == uidlist.header_line(core.list)
        ):
            return core.list
        try:
            lst = uidlist.load(core.list_path())
        except CorruptUidList as e:
            log.warn(
                "UID list of {folder} is corrupt ({why}); rebuilding", folder=core.dir, why=str(e)
            )
            return None
        if lst is None:
            # Lost. Keep our copy: its UIDVALIDITY makes sure the new one differs.
            return None
        core.list, core.list_stamp = lst, stamp
        # Another process changed the list (keywords, say): whatever state we hold predates it,
        # even if the directories look the same.
        core.stale = True
        return lst

    def save(self, lst: UidList, records: list[str] | None = None) -> None:
        core = self.core
        if core.deferring:
            # Under a FolderLock on the reactor: the worker writes it when the lock block
            # ends (uidwriter.Flush); its stamp is taken then.
            core.unsaved = (lst, records)
            lst.version = 2  # (as it will be written)
            core.list = lst
            return
        uidlist.save(core.list_path(), lst, core.settings.hostname, records)
        lst.version = 2  # (as written: its header is the file's)
        core.list, core.list_stamp = lst, core.list_file_stamp()

    def _renew(self) -> UidList:
        """A new, empty list for a folder whose list is lost (or never was)."""
        core = self.core
        old = core.list.uidvalidity if core.list is not None else 0
        # RFC 3501 2.3.1.1: above every value this user's folders ever had (a folder of
        # this name deleted or renamed a moment ago), not merely the clock's.
        s = core.settings
        # INBOX's list lives in the root beside the counter: the list's write (update_locked
        # saves it before any client can see the value) fsyncs the root, so the counter's
        # own directory fsync would be a second one of the same directory.
        uidvalidity = uidvalidity_counter.reserve(
            core.root, floor=old, now=s.now, lock=core.dotlock, hostname=s.hostname,
            root_synced_later=core.list_path().parent == core.root,
        )  # fmt: skip
        log.info("new UIDVALIDITY {v} for {folder}", v=uidvalidity, folder=core.dir)
        return UidList(uidvalidity)

    def update_locked(
        self, entries: Files, known_before: dict[str, uidlist.UidRecord]
    ) -> tuple[UidList, Files, set[str]]:
        """Under the lock: the list on disk now, brought in line with the directories."""
        lst = self.reload()
        dirty = False
        if lst is None:
            lst = self._renew()
            dirty = True
        vanished: set[str] = set()
        differ = False
        if lst.records:  # (a first scan has nothing to compare)
            vanished, _, differ = differences(lst, entries)
        if differ or vanished:
            # Our scan may predate the list we just read (another holder renamed and recorded
            # the new flags meanwhile): compare with a scan taken under the lock.
            entries = self.scanner.rescan()
            vanished, _, differ = differences(lst, entries)
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
            # (Not ``dirty |= _adopt_flags(...)``: that reads ``dirty`` before the call, and
            # a rename found takes its mod-sequence through next_modseq(), which sets it.)
            adopted = _adopt_flags(lst, entries, next_modseq)
            dirty = dirty or adopted
        records = lst.records
        unknown = [b for b in entries if b not in records] if records else list(entries)
        lines = None  # the record lines, if the assignment rendered them all
        if unknown:
            lines = self._assign_uids(lst, unknown, entries, known_before, next_modseq)
        if dirty:
            self.save(lst, lines)
        self.core.list = lst
        return lst, entries, set(vanished)

    def _assign_uids(
        self,
        lst: UidList,
        unknown: list[str],
        entries: Files,
        known_before: dict[str, uidlist.UidRecord],
        next_modseq: Callable[[], int],
    ) -> list[str] | None:
        """Give the ``unknown`` bases UIDs in arrival order (RFC 3501 2.3.1.1: ascending); drop
        from ``entries`` those that vanished before we could stat them. When the list had no
        records (a folder's first scan), returns its record lines rendered from the columns
        (``uidlist.render_records``) for the write that follows."""
        if not unknown:
            return None
        pending = self.core.pending_keywords
        if lst.uidnext > 1:
            # The listing may predate the lock (a worker's is the reactor's, taken earlier):
            # another process may have given a file of it a UID and expunged it meanwhile,
            # so it is gone from the list again and looks new here. Not a second UID for a
            # file that is gone (expunge unlinks before it takes the lock to drop the record,
            # so under the lock a stat() tells). A list that never had a UID needs none.
            unknown = self._present(unknown, entries)
            if not unknown:
                return None
        arrival = None
        if known_before.keys().isdisjoint(unknown):
            arrival = names.arrival_order(unknown)
        if arrival is not None:
            # Every name says its time and size (Dovecot-style names): no stat(), and the
            # columns go to the list as they are (a first scan of a big folder has thousands).
            bases, secs, sizes = arrival
            flags = flags_column(entries.file_names(bases))
            first, modseq = lst.uidnext, next_modseq()
            whole = not lst.records and not pending  # the list will be these records only
            lst.assign_columns(
                bases,
                sizes,
                secs,
                flags,
                [pending.pop(b, NO_KEYWORDS) for b in bases] if pending else repeat(NO_KEYWORDS),
                modseq,
            )
            if whole:
                # (the state is built from these columns too: sync.Syncer._build_fresh_state)
                lst.columns = uidlist.FirstColumns(first, bases, sizes, secs, flags, modseq)
                return uidlist.render_records(range(first, lst.uidnext), sizes, secs, modseq,
                                              flags, bases)  # fmt: skip
            return None
        keyed = self._stat_unnamed(unknown, entries, known_before)
        if not keyed:
            return None
        bases = [base for _, _, base, _ in keyed]
        lst.assign_columns(
            bases,
            [size for _, _, _, size in keyed],
            [sec for sec, _, _, _ in keyed],
            flags_column(entries.file_names(bases)),
            [pending.pop(b, NO_KEYWORDS) for b in bases] if pending else repeat(NO_KEYWORDS),
            next_modseq(),
        )
        return None

    def _present(self, unknown: list[str], entries: Files) -> list[str]:
        """Those of ``unknown`` whose file is still there; the others dropped from ``entries``
        (a file renamed by another program meanwhile is found by the next listing)."""
        directory = self.core.dir
        present = []
        for base in unknown:
            sub, fn = entries[base]
            try:
                os.stat(f"{directory}/{sub}/{fn}")
            except FileNotFoundError:
                del entries[base]
                continue
            present.append(base)
        return present

    def _stat_unnamed(
        self, unknown: list[str], entries: Files, known_before: dict[str, uidlist.UidRecord]
    ) -> list[tuple[int, int, str, int]]:
        """(time, microseconds, base, size) of each of ``unknown`` in arrival order, from its
        name or else a stat(); those found gone meanwhile are dropped from ``entries``."""
        directory = self.core.dir
        secs, usecs, sizes = names.arrival_fields(unknown)
        keyed: list[tuple[int, int, str, int]] = []
        for base, sec, usec, size in zip(unknown, secs, usecs, sizes, strict=True):
            if size is None or sec is None or base in known_before:
                # Stat once; its result is kept in the list. A base we knew that another
                # process dropped must be checked: it may have been expunged meanwhile.
                sub, fn = entries[base]
                try:
                    st = os.stat(f"{directory}/{sub}/{fn}")
                except FileNotFoundError:
                    del entries[base]
                    continue
                if size is None:
                    size = st.st_size
                if sec is None:
                    sec, usec = int(st.st_mtime), 0
            keyed.append((sec, usec, base, size))
        keyed.sort()  # by the name's time (its arrival), the name breaking ties
        return keyed


def _adopt_flags(lst: UidList, entries: Files, next_modseq: Callable[[], int]) -> bool:
    """Record the flags the file names say; a change gets ``next_modseq()``. Whether a
    record changed without taking a mod-sequence (flags adopted from a version 1 list).
    A changed record is a new object (a worker's list shares the others with the reactor's,
    which must not see a mod-sequence before it is written: uidwriter.py)."""
    dirty = False
    flags_of = names.flags_of
    records = lst.records
    for base, fn in entries.files():
        rec = records.get(base)
        if rec is None:
            continue
        flags = flags_of(fn.partition(names.INFO_SEPARATOR)[2])
        if rec.flags is None:  # read from a version 1 list: adopt, no change
            records[base] = replace(rec, flags=flags)
            dirty = True
        elif rec.flags != flags:  # renamed by another program (or crash mid-store)
            records[base] = replace(rec, flags=flags, modseq=next_modseq())
    return dirty
