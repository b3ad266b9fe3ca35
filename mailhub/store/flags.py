"""Flags and keywords of a folder's messages (IMAP STORE): one lock, one index write and one
rename per message whose letters change, each change of one call under one new mod-sequence
(RFC 7162 3.1); UNCHANGEDSINCE refusals (RFC 7162 3.2). A change that only touches the index
(keywords) also touches cur/'s mtime, so other processes' two-stat sync() notices it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Literal

from mailhub.store import names
from mailhub.store.core import FolderCore
from mailhub.store.errors import MessageGone, UidValidityChanged
from mailhub.store.folderstate import (
    FolderState,
    MessageInfo,
    StoreOutcome,
    by_uid,
    intern_keywords,
)
from mailhub.store.reading import RETRIES
from mailhub.store.scan import Scanner
from mailhub.store.sync import Syncer
from mailhub.store.uidindex import UidIndex
from mailhub.store.uidlist import UidList, UidRecord

Flags = frozenset[str]
Compute = Callable[[Flags, Flags], tuple[Flags, Flags]]  # (flags, keywords) -> the new ones
Unchanged = Callable[[Flags, Flags], bool]  # true when Compute would change nothing


def _mode(mode: str, flagset: Flags, kwset: Flags) -> tuple[Compute, Unchanged]:
    """``compute`` and ``unchanged`` of a STORE mode. ``unchanged`` saves most of the work on
    STORE +FLAGS (\\Seen) 1:* of a mostly read folder: one test for most messages."""
    if mode == "set":

        def compute(f: Flags, k: Flags) -> tuple[Flags, Flags]:
            return flagset, kwset

        def unchanged(f: Flags, k: Flags) -> bool:
            return f == flagset and k == kwset
    elif mode == "add":

        def compute(f: Flags, k: Flags) -> tuple[Flags, Flags]:
            return f | flagset, k | kwset

        def unchanged(f: Flags, k: Flags) -> bool:
            return flagset <= f and kwset <= k
    elif mode == "remove":

        def compute(f: Flags, k: Flags) -> tuple[Flags, Flags]:
            return f - flagset, k - kwset

        def unchanged(f: Flags, k: Flags) -> bool:
            return f.isdisjoint(flagset) and k.isdisjoint(kwset)
    else:
        raise ValueError(f"mode must be 'set', 'add' or 'remove', not {mode!r}")
    return compute, unchanged


class _StoreRun:
    """One STORE under the lock: its one new mod-sequence (taken at the first change) and
    what it did."""

    def __init__(self, lst: UidList) -> None:
        self.lst = lst
        self.modseq = 0
        self.dirty = False  # the list changed
        self.infos: dict[int, MessageInfo] = {}
        self.changed: list[int] = []
        self.modified: list[int] = []
        self.gone: list[int] = []
        self.renamed: list[tuple[str, str, str]] = []  # (base, old subdir, new name in cur/)

    def next_modseq(self) -> int:
        if not self.modseq:
            self.modseq = self.lst.next_modseq()
        return self.modseq

    def outcome(self) -> StoreOutcome:
        return StoreOutcome(
            self.infos, frozenset(self.changed), tuple(self.modified), tuple(self.gone)
        )


class FlagStore:
    """STORE on one folder's messages."""

    def __init__(self, core: FolderCore, syncer: Syncer, index: UidIndex, scanner: Scanner) -> None:
        self.core = core
        self.syncer = syncer
        self.index = index
        self.scanner = scanner

    def store_flags(
        self,
        uids: Iterable[int],
        mode: Literal["set", "add", "remove"],
        flags: Iterable[str] = (),
        keywords: Iterable[str] = (),
        unchanged_since: int | None = None,
    ) -> StoreOutcome:
        """``Folder.store_flags``."""
        flagset = names.check_flags(flags)
        kwset = names.check_keywords(keywords)
        compute, unchanged = _mode(mode, flagset, kwset)
        return self.store(uids, compute, unchanged_since, unchanged)

    def store(
        self,
        uids: Iterable[int],
        compute: Compute,
        unchanged_since: int | None = None,
        unchanged: Unchanged | None = None,
    ) -> StoreOutcome:
        core = self.core
        wanted = sorted(set(uids))
        numbered = core.uidvalidity  # (the numbering ``uids`` are of)
        if core.flush is None:
            self.syncer.resync(numbered)
        # (else our write in flight holds the lock, and a deferring STORE joins the next
        # one with what this process knows of the folder: core.FolderLock; a file renamed by
        # another process meanwhile is found again by _change_one)
        with core.lock(yields=True):
            lst = self.index.reload()
            if numbered and (lst is None or lst.uidvalidity != numbered):
                # Numbered anew (by another process, or the next look: the list is lost)
                # since the caller got ``uids``: they are other messages' now (as in resync).
                raise UidValidityChanged(f"{core.name!r} was given new UIDs")
            if lst is None:  # lost or corrupt: rebuild it (new UIDVALIDITY) like sync() would
                lst, entries, _ = self.index.update_locked(self.scanner.rescan(), {})
                self.syncer.build_state(lst, entries)
            # The state matches the scans and the list: it can follow our own changes.
            current = not core.stale and core.state is not None
            run = self._store_locked(lst, wanted, compute, unchanged_since, unchanged)
            if run.dirty:
                self.index.save(lst)
            if run.renamed:
                # The new names survive a crash before we answer (on the reactor with a
                # worker: fsync'd by it before it writes the list, uidwriter.Flush).
                core.fsync_later(f"{core.dir}/cur")
        # (A rename by another reader found on the way rescanned: the state is behind.)
        current = current and not core.stale
        outcome = run.outcome()
        if run.renamed:
            core.changed_by_us()
        elif run.dirty:
            core.announce_index_change()
        if run.dirty and current:
            self._follow_store(lst, outcome, run.renamed)
        return outcome

    def _follow_store(
        self, lst: UidList, outcome: StoreOutcome, renamed: list[tuple[str, str, str]]
    ) -> None:
        """Our STORE's changes applied to the state and the scans, so that the next sync()
        finds the listing it expects and keeps the state. It still reads the directories (our
        renames made their mtimes untrusted), so a change by another process in the same
        second shows as a different listing (or a different UID list) and a rebuild."""
        core = self.core
        scans_new, scans_cur = core.scans["new"].files, core.scans["cur"].files
        for base, sub, target in renamed:
            if sub == "new":
                scans_new.pop(base, None)
            scans_cur[base] = target
        state = core.state
        assert state is not None
        infos = outcome.infos
        msgs = state.messages
        # Every message's info, the requested ones as they are now (the same objects the
        # caller got, so a view comparing by identity sees no change).
        patched = tuple(map(infos.get, map(by_uid, msgs), msgs))
        core.state = FolderState(state.uidvalidity, state.uidnext, patched, lst.highestmodseq)
        core.stale = False

    def _store_locked(
        self,
        lst: UidList,
        wanted: list[int],
        compute: Compute,
        unchanged_since: int | None,
        unchanged: Unchanged | None = None,
    ) -> _StoreRun:
        """The changes, under the lock."""
        core = self.core
        run = _StoreRun(lst)
        infos = run.infos
        records = lst.records
        flags_of = names.flags_of
        sep = names.INFO_SEPARATOR
        uid_base = core.uid_base
        entries = core.entries
        cur_file = entries.cur.get
        known = core.infos
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
            where = entries.get(base) if base is not None else None
            if base is None or rec is None or rec.uid != uid or where is None:
                run.gone.append(uid)
                continue
            sub, fn = self._change_one(run, uid, base, rec, where, compute, unchanged_since)
            if not sub:
                run.gone.append(uid)
                continue
            infos[uid] = self._info_after(uid, base, rec, sub, fn)
        return run

    def _change_one(
        self,
        run: _StoreRun,
        uid: int,
        base: str,
        rec: UidRecord,
        where: tuple[str, str],
        compute: Compute,
        unchanged_since: int | None,
    ) -> tuple[str, str]:
        """Change one message (rename and record); where its file is now, subdir "" if it
        is gone."""
        core = self.core
        directory = core.dir
        flags_of = names.flags_of
        sep = names.INFO_SEPARATOR
        sub, fn = where
        for _ in range(RETRIES):
            disk = flags_of(fn.partition(sep)[2])
            if rec.flags != disk:
                # Renamed by another program since the list was written: that change
                # gets its mod-sequence now (a None from a version 1 list: adopted).
                if rec.flags is not None:
                    rec.modseq = run.next_modseq()
                rec.flags = disk
                run.dirty = True
            if unchanged_since is not None and rec.modseq > unchanged_since:
                run.modified.append(uid)
                return sub, fn
            new_flags, new_keywords = compute(disk, rec.keywords)
            if new_flags == disk and new_keywords == rec.keywords:
                return sub, fn
            if new_flags != disk:
                target = names.format_filename(base, new_flags)
                try:
                    os.rename(f"{directory}/{sub}/{fn}", f"{directory}/cur/{target}")
                except FileNotFoundError:
                    try:
                        sub, fn = self.scanner.relocate(base)
                    except MessageGone:
                        return "", fn
                    continue
                core.infos.pop(fn, None)  # (the next rebuild would drop it too)
                run.renamed.append((base, sub, target))
                sub, fn = "cur", target
                core.entries[base] = (sub, fn)
            rec.flags = new_flags
            rec.keywords = intern_keywords(new_keywords)
            rec.modseq = run.next_modseq()
            run.dirty = True
            run.changed.append(uid)
            return sub, fn
        return "", fn  # kept moving: report it gone rather than loop forever

    def _info_after(self, uid: int, base: str, rec: UidRecord, sub: str, fn: str) -> MessageInfo:
        """The info of a message STORE looked at: the one held if still true, else a new one
        (STORE 1:* mostly touches few of them), kept for the next sync's rebuild."""
        known = self.core.infos
        info = known.get(fn)
        if (
            info is None
            or info.uid != uid
            or info.modseq != rec.modseq
            or info.keywords is not rec.keywords
            or info.recent != (sub == "new")
        ):
            info = MessageInfo(
                uid,
                base,
                names.flags_of(fn.partition(names.INFO_SEPARATOR)[2]),
                rec.size,
                rec.internaldate,
                sub == "new",
                rec.keywords,
                rec.modseq,
            )
            known[fn] = info
        return info

    def store_one(self, uid: int, compute: Callable[[Flags], Flags]) -> Flags:
        outcome = self.store([uid], lambda f, k: (compute(f), k))
        info = outcome.infos.get(uid)
        if info is None:
            raise MessageGone(f"no message with UID {uid} in {self.core.name!r}")
        return info.flags
