"""Flags and keywords of a folder's messages (IMAP STORE): one lock, one index write and one
rename per message whose letters change, each change of one call under one new mod-sequence
(RFC 7162 3.1); UNCHANGEDSINCE refusals (RFC 7162 3.2). A change that only touches the index
(keywords) also touches cur/'s mtime, so other processes' two-stat sync() notices it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from functools import partial
from typing import Literal

from mailhub.store import names
from mailhub.store.core import FolderCore, collector_paused
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
Test = Callable[[Flags], bool]
# (flags test, keywords test): both true when Compute would change nothing
Unchanged = tuple[Test, Test]


def _mode(mode: str, flagset: Flags, kwset: Flags) -> tuple[Compute, Unchanged]:
    """``compute`` and ``unchanged`` of a STORE mode. ``unchanged`` saves most of the work on
    STORE +FLAGS (\\Seen) 1:* of a mostly read folder: a look-up or two for most messages."""
    if mode == "set":

        def compute(f: Flags, k: Flags) -> tuple[Flags, Flags]:
            return flagset, kwset

        return compute, (flagset.__eq__, kwset.__eq__)
    if mode == "add":

        def compute(f: Flags, k: Flags) -> tuple[Flags, Flags]:
            return f | flagset, k | kwset

        return compute, (flagset.issubset, kwset.issubset)
    if mode == "remove":

        def compute(f: Flags, k: Flags) -> tuple[Flags, Flags]:
            return f - flagset, k - kwset

        return compute, (flagset.isdisjoint, kwset.isdisjoint)
    raise ValueError(f"mode must be 'set', 'add' or 'remove', not {mode!r}")


_INFO = names.INFO_SEPARATOR + names.FLAGS_PREFIX
_NEVER = 2**63  # above every mod-sequence (RFC 7162 3.1: 63 bits)


def _suffix(flags: Flags) -> str:
    """The end of the file name of a message with exactly these flags, as we write it:
    ``:2,`` and the letters in ASCII order (maildir.html)."""
    return _INFO + "".join(sorted(flags))


# What compute() makes of one (flags, keywords): the new flags (names.flags_of's own set),
# the new keywords (interned), the new file name's end ("" if the flags stay) and whether
# anything changes at all.
_Change = tuple[Flags, Flags, str, bool]


def _change(compute: Compute, flags: Flags, keywords: Flags) -> _Change:
    new_flags, new_keywords = compute(flags, keywords)
    suffix = ""
    if new_flags != flags:
        suffix = _suffix(new_flags)
        new_flags = names.flags_of(suffix[1:])
    else:
        new_flags = flags  # (the record's set stays: lines and views compare by identity)
    same = not suffix and new_keywords == keywords
    return new_flags, intern_keywords(new_keywords), suffix, not same


_new_info = partial(tuple.__new__, MessageInfo)  # (a tuple of its fields: no Python __new__)


# (uid, base, record, file name in cur/, the info held for that file name)
_Row = tuple[int, "str | None", "UidRecord | None", "str | None", "MessageInfo | None"]


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
            # (fast: a directory the store's inotify witness saw unchanged since its last
            # listing is not listed again - 10,000 names in cur/ - as for the looks after
            # IMAP commands; a file moved meanwhile is found again by _change_one)
            self.syncer.resync(numbered, fast=True)
        # (else our write in flight holds the lock, and a deferring STORE joins the next
        # one with what this process knows of the folder: core.FolderLock; a file renamed by
        # another process meanwhile is found again by _change_one)
        # (Collector paused: a STORE on 10,000 makes thousands of objects, no cycles, and
        # would set off a dozen passes: core.collector_paused.)
        with core.lock(yields=True), collector_paused():
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
        """The changes, under the lock. Each message's record, file name and held info are
        looked up in C loops; the messages left as they are (most of STORE 1:* +FLAGS
        (\\Seen) on a mostly read folder) are settled by a few comparisons each, with no
        call; the others are changed in one loop (``_change_all``)."""
        core = self.core
        run = _StoreRun(lst)
        bases = list(map(core.uid_base.get, wanted))
        recs = list(map(lst.records.get, bases))  # type: ignore[arg-type]
        fns = list(map(core.entries.cur.get, bases))  # type: ignore[arg-type]
        held = list(map(core.infos.get, fns))  # type: ignore[arg-type]
        rows = zip(wanted, bases, recs, fns, held, strict=True)
        if unchanged is None:
            self._change_all(run, rows, compute, unchanged_since)
            return run
        infos = run.infos
        rest: list[_Row] = []
        keep = rest.append
        flags_test, keywords_test = unchanged
        # Per distinct flag set (a folder has few): the end of a name that holds exactly
        # them if compute() leaves them, else ""; per keyword set: whether it leaves them.
        suffixes: dict[Flags | None, str] = {}
        same_keywords: dict[Flags, bool] = {}
        limit = _NEVER if unchanged_since is None else unchanged_since
        for uid, base, rec, fn, info in rows:  # (zip reuses its tuple: no object a row)
            # Nothing to do for this one: in cur/ under the very name its record's flags
            # give (so the list agrees with the file), compute() would change nothing, and
            # the info held is up to date. (A name spelled otherwise takes the long way.)
            if (
                info is not None
                and rec is not None
                and info.uid == uid
                and rec.uid == uid
                and info.modseq == rec.modseq
                and info.keywords is rec.keywords
                and rec.modseq <= limit
            ):
                flags, keywords = rec.flags, rec.keywords
                try:
                    suffix, same = suffixes[flags], same_keywords[keywords]
                except KeyError:
                    ok = flags is not None and flags_test(flags)
                    suffix = suffixes[flags] = _suffix(flags) if ok else ""  # type: ignore[arg-type]
                    same = same_keywords[keywords] = bool(keywords_test(keywords))
                if (
                    suffix
                    and same
                    and len(fn) == len(base) + len(suffix)  # type: ignore[arg-type]
                    and fn.endswith(suffix)  # type: ignore[union-attr]
                ):
                    infos[uid] = info
                    continue
            keep((uid, base, rec, fn, info))
        if rest:
            self._change_all(run, rest, compute, unchanged_since)
        return run

    def _change_all(
        self,
        run: _StoreRun,
        rows: Iterable[_Row],
        compute: Compute,
        unchanged_since: int | None,
    ) -> None:
        """Change each message of ``rows`` (uid, base, record, file name in cur/, held
        info). The usual one - its file named as its record's flags say, no UNCHANGEDSINCE -
        here: a look-up of what compute() makes of its (flags, keywords), one rename by
        names relative to the directories (the kernel walks no path 3,000 times), the
        record and a new info; any other, or one whose file moved meanwhile, as ever
        (``_change_one``)."""
        core = self.core
        entries = core.entries
        cur, new = entries.cur, entries.new
        known = core.infos
        infos = run.infos
        gone = run.gone
        changes: dict[tuple[Flags, Flags], _Change] = {}
        suffixes: dict[Flags, str] = {}
        rename = os.rename
        modseq = 0  # (the STORE's one mod-sequence, taken at its first change)
        fds: dict[str, int] = {}
        try:
            for uid, base, rec, fn, _ in rows:
                if base is None or rec is None or rec.uid != uid:
                    gone.append(uid)
                    continue
                sub = "cur"
                if fn is None:
                    fn = new.get(base)
                    if fn is None:
                        gone.append(uid)
                        continue
                    sub = "new"
                flags = rec.flags
                named = False  # the file's name holds exactly its record's flags
                if flags is not None and unchanged_since is None:
                    if sub == "new":
                        named = fn == base and not flags
                    else:
                        suffix = suffixes.get(flags)
                        if suffix is None:
                            suffix = suffixes[flags] = _suffix(flags)
                        named = len(fn) == len(base) + len(suffix) and fn.endswith(suffix)
                if not named:
                    self._change_slowly(run, uid, base, rec, (sub, fn), compute, unchanged_since)
                    continue
                assert flags is not None  # (named)
                key = (flags, rec.keywords)
                change = changes.get(key)
                if change is None:
                    change = changes[key] = _change(compute, *key)
                new_flags, new_keywords, target, changed = change
                if not changed:
                    infos[uid] = self._info_after(uid, base, rec, sub, fn)
                    continue
                if target:
                    target = base + target
                    src = fds.get(sub)
                    if src is None:
                        src = fds[sub] = core.open_dir(sub)
                    dst = fds.get("cur")
                    if dst is None:
                        dst = fds["cur"] = core.open_dir("cur")
                    try:
                        rename(fn, target, src_dir_fd=src, dst_dir_fd=dst)
                    except FileNotFoundError:
                        # Moved by another program since we listed it: found again, as ever.
                        self._change_slowly(
                            run, uid, base, rec, (sub, fn), compute, unchanged_since
                        )
                        continue
                    known.pop(fn, None)  # (the next rebuild would drop it too)
                    run.renamed.append((base, sub, target))
                    if sub == "new":
                        del new[base]
                    cur[base] = target
                rec.flags = new_flags
                rec.keywords = new_keywords
                rec.modseq = modseq or (modseq := run.next_modseq())
                run.dirty = True
                run.changed.append(uid)
                if target:
                    info = known[target] = _new_info(
                        (uid, base, new_flags, rec.size, rec.internaldate, False, new_keywords,
                         rec.modseq)
                    )  # fmt: skip
                    infos[uid] = info
                else:
                    infos[uid] = self._info_after(uid, base, rec, sub, fn)
        finally:
            for fd in fds.values():
                os.close(fd)

    def _change_slowly(
        self,
        run: _StoreRun,
        uid: int,
        base: str,
        rec: UidRecord,
        where: tuple[str, str],
        compute: Compute,
        unchanged_since: int | None,
    ) -> None:
        sub, fn = self._change_one(run, uid, base, rec, where, compute, unchanged_since)
        if sub:
            run.infos[uid] = self._info_after(uid, base, rec, sub, fn)
        else:
            run.gone.append(uid)

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
