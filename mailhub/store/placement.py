"""Adding messages to a folder: APPEND (written into tmp/ and linked into new/, durably), a
message spooled straight into tmp/ as it arrives, and COPY/MOVE by hard links. Whatever
arrives lands in new/, so \\Recent for the first session told of it (RFC 3501 2.3.2).

``spool`` and ``Placement.place`` only touch the file system (``place`` may run in a worker
thread); ``prepare_spooled``, ``adopt`` and ``abandon`` touch the folder's state (the thread
that owns the folder).
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Callable, Iterable
from typing import BinaryIO

from mailhub.store import names
from mailhub.store.core import FolderCore, tick
from mailhub.store.errors import LockBusy, MessageGone
from mailhub.store.flags import FlagStore
from mailhub.store.folderstate import FolderState, intern_keywords
from mailhub.store.reading import MessageFiles
from mailhub.store.spool import Placement, SpoolFile
from mailhub.store.sync import Syncer
from mailhub.store.uidwriter import Flush


def _stopped_at(t: float) -> Callable[[], float]:
    """A clock that always says ``t``: a copy's name carries its original's internal date."""
    return lambda: t


class Placer:
    """Messages added to one folder (``core.pending_keywords``: keywords of those added but
    not yet given a UID)."""

    def __init__(
        self, core: FolderCore, syncer: Syncer, files: MessageFiles, flags: FlagStore
    ) -> None:
        self.core = core
        self.syncer = syncer
        self.files = files
        self.flags = flags
        # Directories holding copies linked here (link_copies) whose entries are not yet
        # durable, each with the tick of its last link (FolderCore.fsync_first: the lock
        # hold that gives them UIDs fsyncs them first, in the worker's write of the list,
        # and a write that did forgets them), and a write fsyncing only them while in
        # flight (sync_links) with the links of the COPY that waits for it (its failure is
        # that COPY's alone): adopt_copies has them durable before it names their UIDs.
        self.unsynced = core.fsync_first
        self.syncing: Flush | None = None
        self.syncing_for: object = None

    def uids_of(self, bases: Iterable[str], *, joined: bool = False) -> dict[str, int]:
        """UIDs of messages we just added; gives them the keywords still pending (another
        process may have assigned their UIDs before our sync could). ``joined``: the caller
        waits for the list writes started meanwhile before it tells them (Syncer.sync)."""
        pending = self.core.pending_keywords
        wanted = list(bases)
        state = self.syncer.sync(joined=joined)
        if not all(_has(state, base) for base in wanted):
            # A file renamed while readdir() ran (another session taking new/ to cur/, a flag
            # change) may be missed by that listing (POSIX leaves it unspecified): look again
            # before calling a message we just placed gone (seen once under load in CI).
            self.core.changed_by_us()
            state = self.syncer.sync()
        by_key = {m.key: m for m in state.messages[-len(wanted) - 64 :]}
        found: dict[str, int] = {}
        late: dict[frozenset[str], list[int]] = {}
        for base in wanted:
            m = by_key.get(base) or next((x for x in state.messages if x.key == base), None)
            if m is None:
                uid = self.core.expunged.get(base)
                if uid is not None:  # given its UID, then expunged (or moved) by another
                    found[base] = uid
                    continue
                pending.pop(base, None)
                raise MessageGone(f"message {base!r} vanished right after it was added")
            found[base] = m.uid
            kw = pending.get(base)
            if kw:
                late.setdefault(kw, []).append(m.uid)
        for kw, uids in late.items():
            self.flags.store(uids, lambda f, k, kw=kw: (f, k | kw))  # type: ignore[misc]
        # Only now: a busy lock above (LockBusy) leaves them pending for the next try.
        for base in wanted:
            pending.pop(base, None)
        return found

    def target(self, base: str, flags: frozenset[str]) -> str:
        # Into new/ whatever its flags: a message that arrives by APPEND, COPY or MOVE is new
        # to this folder, so \Recent for the first session told of it (RFC 3501 2.3.2), as
        # a delivered one is; that session's take moves it to cur/, keeping the flags.
        if flags:
            return f"{self.core.dir}/new/{names.format_filename(base, flags)}"
        return f"{self.core.dir}/new/{base}"

    def append(
        self, data: bytes, flags: Iterable[str] = (), internaldate: float | None = None
    ) -> int:
        return self.append_from(io.BytesIO(data), flags=flags, internaldate=internaldate)

    def append_from(
        self,
        src: BinaryIO,
        *,
        flags: Iterable[str] = (),
        keywords: Iterable[str] = (),
        internaldate: float | None = None,
    ) -> int:
        """``Folder.append_from``."""
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

    def spool(self) -> SpoolFile:
        """A new, empty file in this folder's tmp/ (removed again when closed undelivered)."""
        settings = self.core.settings
        unique = names.unique_name(settings.hostname, settings.now)
        return SpoolFile(f"{self.core.dir}/tmp/{unique}")

    def spooled_here(self, spool: SpoolFile) -> bool:
        """Is ``spool`` in this folder's tmp/ (so delivery is a link)?"""
        return os.path.dirname(spool.path) == f"{self.core.dir}/tmp"

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
        settings = self.core.settings
        when = settings.now() if internaldate is None else internaldate
        base = names.with_size(names.unique_name(settings.hostname, lambda: when), size)
        if kwset:
            # Noted before the link: whoever finds the file first gives it its keywords.
            self.core.pending_keywords[base] = intern_keywords(kwset)
        spool.handed_over = True  # from now on only the placement closes it
        return Placement(spool, base, self.target(base, flagset), when)

    def adopt(self, placement: Placement) -> int:
        """The UID of a placed message. Within ``Folder.deferring`` the caller waits for the
        writes it started before it tells the UID (APPEND: ``_durable``): the write giving
        it is not waited for by a second look (``joined``)."""
        self.core.changed_by_us()
        return self.uids_of([placement.base], joined=True)[placement.base]

    def abandon(self, placement: Placement) -> None:
        """Forget a message whose placing failed (its tmp file is removed)."""
        self.core.pending_keywords.pop(placement.base, None)
        placement.spool.discard()

    def copy_many(self, uids: Iterable[int], other: Placer) -> list[tuple[int, int]]:
        """``Folder.copy_many``: to ``other`` (the target folder's placer)."""
        return other.adopt_copies(self.link_copies(uids, other))

    def link_copies(
        self, uids: Iterable[int], other: Placer, since: int | None = None
    ) -> list[tuple[int, str]]:
        """``Folder.link_copies``: [(source uid, new base, or ``#uid`` if already known)]."""
        state = self.syncer.looked_since(since) if since is not None else None
        # flags and keywords as of now, for the copies. A new look assigns nothing
        # (assign=False): COPY is not run again, so it must not meet the lock or start a
        # write of the list (uidwriter.Flushing); what it copies has UIDs already.
        if state is None:  # (``uids`` are of the numbering before it)
            state = self.syncer.resync(self.core.uidvalidity, assign=False)
        by_uid = state.by_uid
        hostname = other.core.settings.hostname
        pending = other.core.pending_keywords
        links: list[tuple[int, str]] = []  # (source uid, new base)
        dirs: set[str] = set()
        for k, uid in enumerate(sorted(set(uids))):
            info = by_uid.get(uid)
            if info is None:
                continue
            # The k-th copy's name says the k-th microsecond of its original's second (the
            # internal date stays that second): copies of messages from one second are then
            # ordered by time, not by the name's counter, which sorts "Q10" before "Q9", so
            # their UIDs ascend in the order of the originals (RFC 4315 COPYUID).
            # (+ 0.5: a float near 1.7e9 is exact to 0.24 us only, so aim at the middle.)
            date = info.internaldate + (min(k, 999_998) + 0.5) / 1_000_000
            base = names.with_size(names.unique_name(hostname, _stopped_at(date)), info.size)
            if info.keywords:
                pending[base] = info.keywords

            def op(b: str, sub: str, fn: str, base: str = base) -> str:
                # Flags as on disk now (another session may have changed them since our sync).
                target = other.target(base, names.flags_of(fn.partition(":")[2]))
                os.link(f"{self.core.dir}/{sub}/{fn}", target)
                return target

            try:
                target = self.files.with_file(uid, op)
            except MessageGone:
                pending.pop(base, None)
                continue
            except OSError as e:
                pending.pop(base, None)
                if e.errno != errno.EXDEV:
                    raise
                with self.files.open_message(uid) as f:
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
        if dirs:
            # Not fsync'd here (the reactor thread: it would stall every session): the
            # target's adopt_copies has its directory fsync'd before it names their UIDs.
            mark = tick()
            other.unsynced.update(dict.fromkeys(dirs, mark))
            other.core.changed_by_us()
        return links

    def adopt_copies(self, links: list[tuple[int, str]]) -> list[tuple[int, int]]:
        """``Folder.adopt_copies``: [(source uid, new uid)] of ``link_copies``' links to this
        folder; LockBusy before anything is lost, so it may be run again."""
        self.sync_links(links, start=False)  # (a write of ours in flight, or done, with them)
        try:
            # A lock hold giving them UIDs fsyncs their directory first (Syncer.fsync_first)
            new_uids = self.uids_of([b for _, b in links if not b.startswith("#")], joined=True)
        except LockBusy:
            # That hold's write (uidwriter.Flush) is in flight: they are durable when done.
            core = self.core
            if core.flush is not None and self.unsynced.keys() <= set(core.last_flush().dirs):
                self.syncing, self.syncing_for = core.last_flush(), links
            raise
        flush = self.core.flush
        if flush is None or any(flush.marked.get(d) != m for d, m in self.unsynced.items()):
            # Named without such a hold (another process gave them UIDs): fsync'd on their own.
            self.sync_links(links)
        # (else our look's hold named them - no write was in flight when it began, so this
        # one was started within the caller's ``deferring`` and is waited for before it
        # tells them - and that write fsyncs every link made here so far before the list:
        # Syncer.fsync_first, uidwriter.Flush.marked)
        return [(u, int(b[1:]) if b.startswith("#") else new_uids[b]) for u, b in links]

    def sync_links(self, links: object, *, start: bool = True) -> None:
        """The directories of the copies linked here made durable before any of them gets
        its UID from us (a crash must not leave a told UID without its file). Under the
        folder's lock, so nobody gives them UIDs meanwhile: on the reactor thread of a
        store with a worker (``Folder.deferring``) the worker fsyncs them holding the lock
        (uidwriter.Flush) and this raises ``Flushing`` until it is done (the caller runs
        again); elsewhere they are fsync'd at once. A failed fsync fails the command whose
        ``links`` waited for it (not another COPY's, whose own try fsyncs them); the
        directories stay to be fsync'd by the next try."""
        core = self.core
        syncing = self.syncing
        if syncing is not None:
            if not syncing.done:
                raise syncing.busy(look=False)
            mine = self.syncing_for is links
            self.syncing = self.syncing_for = None
            if syncing.failure is not None and mine:
                syncing.failure.raiseException()
            # (its directories were forgotten when it ended: FolderCore.links_durable)
        if not self.unsynced or not start:
            return
        dirs = sorted(self.unsynced)
        with core.lock(yields=True):
            for d in dirs:
                core.fsync_later(d)  # (fsync'd at once, and forgotten, unless deferring)
        if core.flush is not None:
            syncing = self.syncing = core.last_flush()
            self.syncing_for = links
            raise syncing.busy(look=False)
        # (else the worker's write ended at once - forgotten if it went well, else they stay;
        # the caller waits for it, failing as it failed)


def _has(state: FolderState, base: str) -> bool:
    """Whether ``state`` knows the message ``base`` (the newest first: just placed)."""
    return any(m.key == base for m in reversed(state.messages))
