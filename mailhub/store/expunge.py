"""Removing messages (IMAP EXPUNGE, POP3 DELE at QUIT): unlink, fsync the directories, drop
them from the UID list with a new mod-sequence (RFC 7162 3.1.1) - and the links kept in tmp/
for readers that were not told yet and may still read them (RFC 2180 4.1.1, 4.1.2)."""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterable

from twisted.logger import Logger

from mailhub.safeio import fsync_dir, unlink_quietly
from mailhub.store.core import EXPUNGED_KEPT, FolderCore, Kept, Reader
from mailhub.store.errors import LockBusy, MessageGone
from mailhub.store.folderstate import FolderState
from mailhub.store.reading import MessageFiles
from mailhub.store.spool import kept_name
from mailhub.store.uidindex import UidIndex
from mailhub.store.uidlist import UidList

log = Logger()


class Expunger:
    """Expunges of one folder and the files kept for its readers (``core.readers``,
    ``core.kept``)."""

    def __init__(self, core: FolderCore, files: MessageFiles, index: UidIndex) -> None:
        self.core = core
        self.files = files
        self.index = index

    def expunge(self, uids: Iterable[int], *, by: Reader | None = None) -> list[int]:
        """``Folder.expunge``."""
        core = self.core
        uids = list(uids)
        if by is not None and core.kept:
            # Expunged by another session meanwhile, not yet told to ``by``: it asks for
            # that too, so it must be told once that expunge is on disk (its looks meanwhile
            # wait: core.on_disk), not answered from a list that still has them.
            self.forget(by, [u for u in uids if u in core.kept])
        # (what other sessions may still be told while the expunge is being written)
        before = core.exact_state() if core.flush is None else None
        removed, touched = self._unlink(uids, by)
        if not removed:
            return []
        core.changed_by_us()
        dirs = [f"{core.dir}/{sub}" for sub in sorted(touched)]
        after = None
        try:
            with core.lock(before):
                # The removal survives a crash before we answer the client (on the reactor
                # with a worker: fsync'd by it before the list, uidwriter.Flush).
                for d in dirs:
                    core.fsync_later(d)
                dirs = []
                lst = self.index.reload()
                if lst is not None:
                    for _, base in removed:
                        lst.records.pop(base, None)
                    lst.next_modseq()  # RFC 7162 3.1.1: HIGHESTMODSEQ grows on expunge
                    self.index.save(lst)
                    after = _without(before, removed, lst)
        except LockBusy:
            # The files are gone: the next sync() that gets the lock drops them from the
            # list as vanished. The reactor does not wait for the lock here.
            log.info("UID list of {folder} updated later: lock busy", folder=core.dir)
            for d in dirs:
                fsync_dir(d)
        flush = core.flush
        if after is not None and flush is not None and flush.version == after.highestmodseq:
            # The write is of this expunge alone, on the list ``before`` was: once it is
            # on disk, other sessions' looks may be told from the state without them.
            flush.after = after
        expunged = core.expunged
        for uid, base in removed:
            core.entries.pop(base, None)
            core.unlinked[uid] = base
            expunged[base] = uid
        while len(expunged) > EXPUNGED_KEPT:
            del expunged[next(iter(expunged))]
        core.state = None
        core.collect_cache({base for _, base in removed})
        return [uid for uid, _ in removed]

    def _unlink(
        self, uids: Iterable[int], by: Reader | None
    ) -> tuple[list[tuple[int, str]], set[str]]:
        """Unlink the files (kept first for the readers that know them): ([(uid, base)] of
        those removed, the subdirectories touched)."""
        core = self.core
        removed: list[tuple[int, str]] = []
        touched: set[str] = set()
        readers = [r for r in core.readers if r is not by] if core.readers else []
        for uid in uids:
            holders = [r for r in readers if r.knows(uid)] if readers else []

            def op(
                base: str, sub: str, fn: str, uid: int = uid, holders: list[Reader] = holders
            ) -> str:
                if sub == "tmp":  # (already expunged: a link kept for a reader)
                    raise FileNotFoundError(fn)
                if holders:
                    self._keep(uid, base, f"{core.dir}/{sub}/{fn}", holders)
                os.unlink(f"{core.dir}/{sub}/{fn}")
                touched.add(sub)
                return base

            try:
                base = self.files.with_file(uid, op)
            except MessageGone:
                continue
            removed.append((uid, base))
        return removed, touched

    def delete(self, uid: int) -> None:
        """Delete one message; MessageGone if it was already removed."""
        if not self.expunge([uid]):
            raise MessageGone(f"no message with UID {uid} in {self.core.name!r}")

    def add_reader(self, reader: Reader) -> None:
        self.core.readers.add(reader)

    def forget(self, reader: Reader, uids: Iterable[int] | None = None) -> None:
        """``Folder.forget``."""
        core = self.core
        if reader in core.readers and uids is None:
            core.readers.discard(reader)
        if not core.kept:
            return
        for uid in list(core.kept) if uids is None else uids:
            kept = core.kept.get(uid)
            if kept is None:
                continue
            kept.readers.discard(reader)
            if not kept.readers:
                del core.kept[uid]
                unlink_quietly(f"{core.dir}/tmp/{kept.name}")

    def _keep(self, uid: int, base: str, path: str, readers: list[Reader]) -> None:
        """Link the file of ``uid`` (about to be unlinked) into tmp/ for ``readers``. No fsync:
        after a crash nobody needs it (``clean_stale_tmp`` removes it)."""
        core = self.core
        name = kept_name(core.settings.hostname)
        old = core.kept.pop(uid, None)
        if old is not None:  # (a retry after the file moved between our link and unlink)
            unlink_quietly(f"{core.dir}/tmp/{old.name}")
        try:
            os.link(path, f"{core.dir}/tmp/{name}")
        except FileNotFoundError:
            raise  # (moved meanwhile: with_file looks for it again)
        except OSError as e:  # a full disk, say: the reader gets NO [EXPUNGEISSUED], as before
            log.warn("could not keep {path} for a reader: {e}", path=path, e=str(e))
            return
        core.kept[uid] = Kept(base, name, weakref.WeakSet(readers))


def _without(
    before: FolderState | None, removed: list[tuple[int, str]], lst: UidList
) -> FolderState | None:
    """``before`` (exactly the list as it was) without the messages ``removed``: exactly
    ``lst`` if nothing else changed it (its mod-sequence one above); else None."""
    if before is None or lst.highestmodseq != before.highestmodseq + 1:
        return None
    if lst.uidnext != before.uidnext or lst.uidvalidity != before.uidvalidity:
        return None
    gone = {uid for uid, _ in removed}
    messages = tuple(m for m in before.messages if m.uid not in gone)
    if len(messages) != len(lst.records):
        return None  # (the list had more or fewer than the state: not the same list)
    return FolderState(before.uidvalidity, before.uidnext, messages, lst.highestmodseq)
