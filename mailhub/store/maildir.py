"""One Maildir folder: the ``Folder`` façade over the parts that each do one job.

A ``Folder`` is a Maildir directory (``tmp/ new/ cur/``) - the mailbox root for INBOX, a
``.Name`` directory for other folders (Maildir++). Its public methods speak UIDs and flag
letters, never paths, so IMAP/POP3/web code cannot be tricked into touching other files.

The parts, sharing one ``FolderCore`` (core.py: where the folder is and what this process last
saw of it): ``scan`` (listing new/ and cur/), ``uidindex`` (the UID list, UIDVALIDITY,
mod-sequences), ``sync`` (the in-memory state brought up to date), ``reading`` (a message's
file by UID), ``flags`` (STORE), ``recent`` (new/ -> cur/), ``expunge`` (and the links kept
for readers), ``placement`` (APPEND, spooled messages, COPY), ``derived`` (the cache).

Concurrency model (several sessions, processes and nodes on one tree):

* Delivery never locks: it only creates files in new/ (maildir.html).
* Flag changes, new/ -> cur/ moves and expunges are single rename()/unlink() calls, also
  lock-free; a reader that finds its file renamed under it rescans and retries.
* Only UID assignment takes the folder's dotlock (``mailhub-uidlist.lock``), for the moment it
  takes to merge the on-disk UID list with what it scanned and write the list back. The
  reactor's own looks (``sync(assign=False)``: the change feed, IDLE, SELECT) leave that to a
  worker thread when the store has one (``uidwriter.py``).
* ``sync()`` is cheap when nothing changed: two stat() calls comparing new/ and cur/ with the
  values of the last scan. Directory mtimes have coarse granularity (a kernel tick, seconds on
  some NFS servers), so a scan taken while a directory's mtime is younger than
  ``dirty_window`` is not trusted and the next sync() scans again (Dovecot does the same).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Literal, TypeVar

from twisted.internet.defer import Deferred

from mailhub.store import names
from mailhub.store.cache import CachePass
from mailhub.store.core import FolderCore, Reader
from mailhub.store.derived import DerivedData
from mailhub.store.errors import MessageGone
from mailhub.store.expunge import Expunger
from mailhub.store.flags import FlagStore
from mailhub.store.folderstate import FolderState, MessageInfo, StoreOutcome, StoreSettings
from mailhub.store.placement import Placer
from mailhub.store.reading import MessageFiles
from mailhub.store.recent import Recent
from mailhub.store.scan import FOLDER_MARKER, SUBDIRS, Scanner, create_maildir, is_maildir
from mailhub.store.spool import KEPT_PREFIX, STALE_TMP_AGE, Placement, SpoolFile, clean_stale_tmp
from mailhub.store.sync import Syncer
from mailhub.store.uidindex import UidIndex

__all__ = [
    "FOLDER_MARKER",
    "KEPT_PREFIX",
    "STALE_TMP_AGE",
    "SUBDIRS",
    "Folder",
    "FolderState",
    "MessageInfo",
    "Placement",
    "Reader",
    "SpoolFile",
    "StoreOutcome",
    "StoreSettings",
    "clean_stale_tmp",
    "create_maildir",
    "is_maildir",
]

T = TypeVar("T")


class Folder:
    """One Maildir folder. Obtain it from ``Mailbox.folder()``; do not construct directly.

    All methods are blocking file-system calls that are quick (one or a few syscalls) except
    a ``sync()`` that has to rescan; protocol code may call them on the reactor thread. Not
    thread-safe: sessions share one Folder per directory (``MailStore`` hands out the same
    object), so use it from one thread only.

    Mod-sequences (RFC 7162): every change made under the folder lock - flags or keywords set,
    new messages given UIDs, messages found gone, a rename by another program noticed - takes
    one new value ``highestmodseq + 1`` for all the messages it touches (uidindex.py, flags.py).
    """

    def __init__(self, path: Path, name: str, settings: StoreSettings) -> None:
        self.name = name
        self._path = path
        self._dir = str(path)
        self._settings = settings
        core = self._core = FolderCore(path, name, settings)
        scanner = Scanner(core)
        index = UidIndex(core, scanner)
        self._syncer = syncer = Syncer(core, scanner, index)
        self._files = files = MessageFiles(core, syncer, scanner)
        self._flags = flags = FlagStore(core, syncer, index, scanner)
        self._recent = Recent(core, syncer, files)
        self._expunger = Expunger(core, files, index)
        self._placer = Placer(core, syncer, files, flags)
        self._derived = DerivedData(core, files)

    def __repr__(self) -> str:
        return f"<Folder {self.name!r}>"

    # -- the state ---------------------------------------------------------------------------

    def sync(self, *, assign: bool = True, fast: bool = False) -> FolderState:
        """Bring the view up to date with the disk and return it.

        Assigns UIDs (in arrival order) to messages not seen before, forgets vanished ones,
        gives flag changes made by other programs a new mod-sequence, and persists the UID
        list. Costs two stat() calls when nothing changed.

        ``assign=False`` (the reactor's looks: the change feed, IDLE, SELECT): when the UID
        list must change and the store has a worker (``StoreSettings.offload``), the worker
        does it (mailhub.store.uidwriter) and the state returned holds only the messages
        that have a durable UID already; ``written()`` fires when the worker is done and the
        ``on_written`` listeners are called. ``UidsPending`` (a ``LockBusy``) when there is
        no list yet to build a state from.

        ``fast``: a directory changed within the dirty window is not listed again while the
        store's inotify witness saw no change in it since it was last listed (this host's
        changes, any process's; ``StoreSettings.witness``, set by the change feed on a local
        file system). For most IMAP commands' looks; NOOP, SELECT and IDLE look in full.
        """
        return self._syncer.sync(assign=assign, fast=fast)

    @contextmanager
    def deferring(self) -> Iterator[list[Deferred[None]]]:
        """Within this block (on the reactor thread of a store with a worker), a change made
        under the folder's lock leaves the UID list's write and the directories' fsyncs to
        the worker, which holds the lock until they are done (``core.FolderLock``); until
        then every look at the folder meets ``Flushing`` (a ``LockBusy``). Yields a list
        that gets a Deferred for each write started in the block, firing when it is on disk
        (failing as it failed): the caller waits for them before it tells anything of the
        change (IMAP commands)."""
        core = self._core
        started: list[Deferred[None]] = []
        core.defer_writes = started
        try:
            yield started
        finally:
            core.defer_writes = None

    def deferred(self, f: Callable[..., T], *args: object) -> tuple[T, list[Deferred[None]]]:
        """``f(*args)`` within ``deferring()``, and the Deferreds of the writes it started
        (if ``f`` raises - a look meeting ``Flushing`` for its own write - nobody gets them:
        a failure of theirs is logged by ``uidwriter``, not left unhandled)."""
        with self.deferring() as started:
            try:
                result = f(*args)
            except BaseException:
                unwaited(started)
                raise
        return result, started

    def deferred_look(self, f: Callable[..., T], *args: object) -> T:
        """``f(*args)``, a look (``sync``), within ``deferring()``: the write it starts (when
        the list must change) is waited for by the looks after it (``Flushing``), not by the
        caller, and a failure of it is logged by ``uidwriter``; one that fails at once
        raises ``uidwriter.NotWritten`` (a ``LockBusy``): nothing of that list is told."""
        result, started = self.deferred(f, *args)
        unwaited(started)
        return result

    def flushed(self) -> Deferred[None] | None:
        """A Deferred that fires (never fails) when this process's write of the UID list in
        flight has ended (``deferring``); None when there is none."""
        core = self._core
        return None if core.flush is None else core.last_flush().busy(look=False).wait

    def written(self) -> Deferred[None] | None:
        """A Deferred that fires when the worker's UID-list write in flight has ended (and
        the next look builds the state again); None when none is in flight."""
        return self._syncer.written()

    def on_written(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` (reactor thread) whenever a worker's UID-list write of this
        folder ends; returns the function that stops it."""
        listeners = self._core.written_listeners
        listeners.append(listener)
        return lambda: listeners.remove(listener) if listener in listeners else None

    async def settled(self, rounds: int = 3) -> None:
        """Wait until the store's worker has given every message found now its UID (SELECT:
        its ``sync(assign=False)`` then reports everything, durably, and the reactor never
        writes the list). Gives up after ``rounds`` writes (mail arriving all the while):
        the look after it then lacks only the newest messages. Without a worker: one look.

        The first round's look is a full one (SELECT's, RFC 3501 6.3.1); the rounds after a
        write, and the ``sync(fast=True)`` that should follow, come after it in the same
        command: fast looks (``sync``), which list the directories again only if they changed
        since (when the store's inotify witness can tell)."""
        for n in range(rounds):
            pending = self._syncer.settling(fast=n > 0)
            if pending is None:
                return
            await pending

    def sync_taking_recent(
        self, *, assign: bool = True, fast: bool = False
    ) -> tuple[FolderState, list[int]]:
        """``sync()``, then move every message still in new/ to cur/ (as ``take_recent``
        does): SELECT. Returns the state after the moves and the UIDs this call moved (in
        ascending order): RFC 3501 2.3.2, \\Recent goes to exactly one session.

        When the sync has to rebuild the state (a first SELECT), the moves happen between
        writing the UID list and building the state, so the state is built once, already
        holding the moved messages in cur/."""
        return self._recent.sync_taking_recent(assign=assign, fast=fast)

    def current_state(self) -> FolderState | None:
        """The state the last ``sync()`` returned with this process's own changes since
        (``take_recent``) applied, without looking at the disk; None if those changes left it
        unknown. Changes by others since that sync are not in it: the next ``sync()`` reads
        the directories again (our renames made their mtimes untrustworthy) and finds them."""
        return self._syncer.current_state()

    def on_disk(self, reader: Reader, modseq: int, uidnext: int) -> FolderState | None:
        """While this process's write of the UID list is in flight (``deferring``): the
        state of the list on disk - what a session may be told instead of waiting for the
        write - if this process knows it and it is no older than what the session
        ``reader`` was told (``modseq``: its highest mod-sequence, its own STOREs'
        included; ``uidnext``; no message it expunged itself). None otherwise: the
        session's ``sync()`` meets ``Flushing`` and waits."""
        return self._core.on_disk(reader, modseq, uidnext)

    def looked_since(self, mark: int) -> FolderState | None:
        """``current_state()`` if a ``sync()`` that began after tick ``mark``
        (``mailhub.store.core.tick``) built or confirmed it and nothing is still being added
        to it by a worker; else None. Such a look saw every change completed before ``mark``:
        a command that started at ``mark`` may answer from it (a change by others since is
        concurrent with the command; the next command's look finds it)."""
        return self._syncer.looked_since(mark)

    @property
    def uidvalidity(self) -> int:
        """The UIDVALIDITY of the UIDs this process reads and changes the messages by now
        (``read_message``, ``store_flags``, ``expunge``...): that of its last look's state,
        0 before the first. A lost UID list is numbered anew under a new one; UIDs a caller
        got under another then name other messages (RFC 3501 2.3.1.1). A call whose own
        look numbers anew raises UidValidityChanged."""
        return self._core.uidvalidity

    def count(self) -> int:
        return self.sync().count

    def total_size(self) -> int:
        return self.sync().total_size

    # -- reading -----------------------------------------------------------------------------

    def open_message(self, uid: int) -> BinaryIO:
        """Open the message for reading (binary). The open file stays valid even if the
        message is renamed or expunged afterwards."""
        return self._files.open_message(uid)

    def read_message(self, uid: int, size: int | None = None) -> bytes:
        """The whole message (one open, fstat and read for the usual file; ``size``, the
        index's, spares the fstat)."""
        return self._files.read_message(uid, size)

    # -- flags, keywords and new -> cur --------------------------------------------------------

    def store_flags(
        self,
        uids: Iterable[int],
        mode: Literal["set", "add", "remove"],
        flags: Iterable[str] = (),
        keywords: Iterable[str] = (),
        unchanged_since: int | None = None,
    ) -> StoreOutcome:
        """Change flags (Maildir letters) and keywords of many messages at once (IMAP STORE).

        One lock, one index write and one rename per message whose letters change. With
        ``unchanged_since`` (RFC 7162 3.2 UNCHANGEDSINCE), a message whose mod-sequence is
        greater is left alone and reported in ``modified``.
        """
        return self._flags.store_flags(uids, mode, flags, keywords, unchanged_since)

    def set_flags(self, uid: int, flags: Iterable[str]) -> frozenset[str]:
        """Replace the message's flag letters (see names.py), keeping its keywords; moves it
        to cur/. Gets a new mod-sequence if anything changed."""
        wanted = names.check_flags(flags)
        return self._flags.store_one(uid, lambda old: wanted)

    def add_flags(self, uid: int, flags: Iterable[str]) -> frozenset[str]:
        extra = names.check_flags(flags)
        return self._flags.store_one(uid, lambda old: old | extra)

    def remove_flags(self, uid: int, flags: Iterable[str]) -> frozenset[str]:
        gone = names.check_flags(flags)
        return self._flags.store_one(uid, lambda old: old - gone)

    def take(self, uid: int) -> None:
        """Move a message from new/ to cur/ (with an empty ``:2,`` info), as a reader does when
        it has seen it (maildir.html). No-op if already in cur/. Flags do not change, so this
        is not a mod-sequence change."""
        self._recent.take(uid)

    def take_recent(self, uids: Iterable[int]) -> list[int]:
        """Move these messages from new/ to cur/; return the UIDs *this call* moved.

        RFC 3501 2.3.2: \\Recent goes to exactly one session. rename(2) of a name in new/
        succeeds for one caller only (any process); the others get ENOENT and skip it.
        """
        return self._recent.take_recent(uids)

    # -- removing ----------------------------------------------------------------------------

    def expunge(self, uids: Iterable[int], *, by: Reader | None = None) -> list[int]:
        """Delete the messages; returns the UIDs that were present (and are now gone).

        A message that a reader (``add_reader``) other than ``by`` (the session expunging,
        which tells its client at once) still knows is first linked into tmp/, so that reader
        can go on reading it until it is told (``forget``)."""
        return self._expunger.expunge(uids, by=by)

    def add_reader(self, reader: Reader) -> None:
        """``reader`` (an IMAP session that selected this folder) may read messages that others
        expunge until it calls ``forget`` for them: ``expunge`` keeps their files."""
        self._expunger.add_reader(reader)

    def forget(self, reader: Reader, uids: Iterable[int] | None = None) -> None:
        """``reader`` was told these messages are gone (None: it leaves the folder); the files
        kept for them are removed once no reader needs them any more."""
        self._expunger.forget(reader, uids)

    def delete(self, uid: int) -> None:
        """Delete one message; MessageGone if it was already removed."""
        self._expunger.delete(uid)

    def clean_stale_tmp(self, max_age: float = STALE_TMP_AGE) -> int:
        return clean_stale_tmp(self._path, self._settings.now, max_age)

    # -- adding ------------------------------------------------------------------------------

    def append(
        self, data: bytes, flags: Iterable[str] = (), internaldate: float | None = None
    ) -> int:
        """Add a message durably (IMAP APPEND) and return its UID."""
        return self._placer.append(data, flags, internaldate)

    def append_from(
        self,
        src: BinaryIO,
        *,
        flags: Iterable[str] = (),
        keywords: Iterable[str] = (),
        internaldate: float | None = None,
    ) -> int:
        """Copy ``src`` (read to its end, in chunks) into the folder durably; return the UID.

        The internal date is carried in the file name's time field (and the mtime, for
        Dovecot), so whichever process assigns the UID records the right date. The file and
        its directory are fsync'd before this returns. The same steps as a message spooled
        straight into tmp/ (``spool``, ``prepare_spooled``, ``Placement.place``, ``adopt``).
        """
        return self._placer.append_from(
            src, flags=flags, keywords=keywords, internaldate=internaldate
        )

    # A message received straight into tmp/ (IMAP APPEND's literal, written as it arrives) and
    # delivered by a link (maildir.html), so it is written once. ``spool`` and ``Placement.place``
    # only touch the file system (``place`` may run in a worker thread); ``prepare_spooled``,
    # ``adopt`` and ``abandon`` touch the folder's state (the thread that owns the folder).

    def spool(self) -> SpoolFile:
        """A new, empty file in this folder's tmp/ (removed again when closed undelivered)."""
        return self._placer.spool()

    def spooled_here(self, spool: SpoolFile) -> bool:
        """Is ``spool`` in this folder's tmp/ (so delivery is a link)?"""
        return self._placer.spooled_here(spool)

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
        return self._placer.prepare_spooled(
            spool, size, flags=flags, keywords=keywords, internaldate=internaldate
        )

    def adopt(self, placement: Placement) -> int:
        """The UID of a placed message."""
        return self._placer.adopt(placement)

    def abandon(self, placement: Placement) -> None:
        """Forget a message whose placing failed (its tmp file is removed)."""
        self._placer.abandon(placement)

    def copy_to(self, uid: int, other: Folder) -> int:
        """Copy a message to ``other`` keeping flags, keywords and internal date (RFC 3501
        6.4.7); returns the new UID."""
        pairs = self.copy_many([uid], other)
        if not pairs:
            raise MessageGone(f"no message with UID {uid} in {self.name!r}")
        return pairs[0][1]

    def copy_many(self, uids: Iterable[int], other: Folder) -> list[tuple[int, int]]:
        """Copy messages to ``other`` (COPY/MOVE); [(source UID, new UID)] in source-UID order.

        Hard links (messages are immutable), falling back to a byte copy across file systems.
        Keeps flags (as on disk now), keywords and internal date; skips vanished messages.
        """
        return self._placer.copy_many(uids, other._placer)

    def link_copies(
        self, uids: Iterable[int], other: Folder, since: int | None = None
    ) -> list[tuple[int, str]]:
        """The first half of ``copy_many``: the copies linked into ``other``, their UIDs not
        yet known. ``other.adopt_copies(links)`` makes them durable (its directory fsync'd,
        by the store's worker when deferring) and names them; it needs ``other``'s lock,
        and may be run again after LockBusy (the copies must not be made twice).
        ``since``: a look at this folder begun after that tick (``looked_since``) serves
        instead of a new one, which might meet the lock busy."""
        return self._placer.link_copies(uids, other._placer, since)

    def adopt_copies(self, links: list[tuple[int, str]]) -> list[tuple[int, int]]:
        """The second half of ``copy_many``: [(source UID, new UID)] of ``link_copies``."""
        return self._placer.adopt_copies(links)

    def listed_uidvalidity(self) -> int | None:
        """The UIDVALIDITY of the UID list as this process last read or wrote it (its write
        may be in flight: for a command that waits for that write before it answers, as
        COPY's adopt_copies within ``deferring``); None when it has none."""
        lst = self._core.list
        return None if lst is None else lst.uidvalidity

    def unsynced_links(self) -> list[str]:
        """Directories of copies linked here whose entries may not be durable yet:
        ``adopt_copies`` makes them so (in the store's worker) before it names their UIDs;
        a caller that could not adopt them (LockBusy) fsyncs these itself, off the reactor."""
        placer = self._placer
        dirs = set(placer.unsynced)
        syncing = placer.syncing
        if syncing is not None and (not syncing.done or syncing.failure is not None):
            dirs.update(syncing.dirs)
        return sorted(dirs)

    def links_marked(self, dirs: list[str]) -> dict[str, int]:
        """For ``links_durable``: the marks of ``dirs`` (``unsynced_links``) before a caller
        fsyncs them itself."""
        return self._core.links_marked(dirs)

    def links_durable(self, marked: dict[str, int]) -> None:
        """The caller fsync'd the directories ``marked``: their links made before are
        durable (no later write of the list fsyncs them again for those)."""
        self._core.links_durable(marked)

    # -- derived-data cache ------------------------------------------------------------------

    def cached(
        self,
        uid: int,
        name: str,
        compute: Callable[[BinaryIO], T],
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
        *,
        compute_path: Callable[[str], T] | None = None,
    ) -> T:
        """Derived data about a message (``name`` says which, e.g. ``"structure"``), computed
        once by ``compute(open file)`` and kept in the folder's cache file (shared with other
        processes, surviving restarts) and decoded in memory. MessageGone if expunged.
        ``compute_path``: as for ``cache_pass``."""
        return self._derived.cached(uid, name, compute, encode, decode, compute_path=compute_path)

    def cache_pass(
        self,
        name: str,
        compute: Callable[[BinaryIO], T],
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
        *,
        compute_path: Callable[[str], T] | None = None,
    ) -> CachePass[T]:
        """``cached`` for one command over many messages (SEARCH): the cache file is checked
        for other processes' appends and compactions once, now; then ``get(uid)`` serves from
        memory, and what it computes is appended in one write when the pass ends (use it as a
        context manager). ``compute_path``, if given, computes from the file's path instead
        of an open file (to open it its own cheaper way; its FileNotFoundError means that the
        message was moved, as for an open)."""
        return self._derived.cache_pass(name, compute, encode, decode, compute_path=compute_path)


def unwaited(writes: list[Deferred[None]]) -> None:
    """Writes nobody waits for: their failures are logged where they end
    (``uidwriter._flushed``), not again as errors unhandled in a Deferred."""
    for d in writes:
        d.addErrback(lambda _: None)
