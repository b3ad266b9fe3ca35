"""\\Recent: moving messages from new/ to cur/ (maildir.html: a reader that has seen a message
moves it). RFC 3501 2.3.2: \\Recent goes to exactly one session - rename(2) of a name in new/
succeeds for one caller only (any process); the others get ENOENT and skip it. Flags do not
change, so none of this is a mod-sequence change. (The moves a first SELECT makes while the
state is rebuilt: ``sync.take_new``.)
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterable

from mailhub.store import names
from mailhub.store.core import FolderCore
from mailhub.store.folderstate import FolderState, MessageInfo, by_uid, is_recent
from mailhub.store.reading import MessageFiles
from mailhub.store.sync import Syncer


class Recent:
    """new/ -> cur/ moves of one folder, and the state following them without a rebuild."""

    def __init__(self, core: FolderCore, syncer: Syncer, files: MessageFiles) -> None:
        self.core = core
        self.syncer = syncer
        self.files = files

    def sync_taking_recent(
        self, *, assign: bool = True, fast: bool = False
    ) -> tuple[FolderState, list[int]]:
        """``Folder.sync_taking_recent``: SELECT."""
        taken: list[int] = []
        state = self.syncer.sync(taken, assign=assign, fast=fast)
        if taken or not any(map(is_recent, state.messages)):
            # (What is still in new/ after the moves was taken by someone else meanwhile.)
            return state, taken
        taken = self.take_recent(m.uid for m in state.messages if m.recent)
        after = self.syncer.current_state()
        if (
            after is not None
            and after.uidvalidity == state.uidvalidity
            and after.uidnext == state.uidnext
            and after.count == state.count
        ):
            state = after
        return state, taken

    def take(self, uid: int) -> None:
        """Move a message from new/ to cur/ (with an empty ``:2,`` info). No-op if already in
        cur/."""
        core = self.core

        def op(base: str, sub: str, fn: str) -> None:
            if sub == "cur":
                return
            target = names.format_filename(base, names.flags_of(fn.partition(":")[2]))
            os.rename(f"{core.dir}/{sub}/{fn}", f"{core.dir}/cur/{target}")
            core.entries[base] = ("cur", target)
            core.changed_by_us()

        self.files.with_file(uid, op)

    def take_recent(self, uids: Iterable[int]) -> list[int]:
        """Move these messages from new/ to cur/; return the UIDs *this call* moved."""
        core = self.core
        moved: list[int] = []
        renamed: list[tuple[str, str]] = []
        self.syncer.state_or_sync()
        current = not core.stale  # the state matches entries: it can follow our renames
        src = f"{core.dir}/new/"
        dst = f"{core.dir}/cur/"
        uid_base = core.uid_base
        entries = core.entries
        flags_of = names.flags_of
        format_filename = names.format_filename
        rename = os.rename
        for uid in sorted(set(uids)):
            base = uid_base.get(uid)
            if base is None:
                continue
            where = entries.get(base)
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
            self._follow(moved, renamed, current)
        return moved

    def _follow(self, moved: list[int], renamed: list[tuple[str, str]], current: bool) -> None:
        """The scans (and, if it was ``current``, the state) after our renames."""
        core = self.core
        core.changed_by_us()  # the next sync() reads the directories again
        new_files = core.scans["new"].files
        cur_files = core.scans["cur"].files
        for fn, target in renamed:
            base = fn.partition(":")[0]
            new_files.pop(base, None)
            cur_files[base] = target
        state = self._taken(core.state, moved, renamed) if current else None
        if state is not None:
            # The state follows without a rescan or a rebuild, and the next sync() finds
            # the listing it expects (SELECT of a big folder with many new messages would
            # otherwise rebuild everything twice).
            core.state = state
            core.stale = False

    def _taken(
        self, state: FolderState | None, moved: list[int], renamed: list[tuple[str, str]]
    ) -> FolderState | None:
        """``state`` after the messages ``moved`` (ascending UIDs) went from new/ to cur/
        under the names ``renamed`` ((old, new) file names, in the same order); None if the
        state does not hold them as expected (the next sync() rebuilds it then)."""
        if state is None:
            return None
        msgs = list(state.messages)
        uids = list(map(by_uid, msgs))
        infos = self.core.infos
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
