"""What the parts of one folder share: where it is, its settings, and what this process last
saw of it - the directory scans, the UID list, the state built from them, the expunged files
kept for readers. ``FolderCore`` owns that memory and the few steps every part needs (the
folder's dotlock, marking our own changes); the parts (scan, uidindex, sync, reading, flags,
recent, expunge, placement, derived) read and change it; ``maildir.Folder`` is their façade.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from mailhub.store import names, uidlist
from mailhub.store.dotlock import DotLock
from mailhub.store.errors import FolderNotFound
from mailhub.store.folderstate import FolderState, MessageInfo, StoreSettings
from mailhub.store.scan import DirScan, Files
from mailhub.store.uidlist import UidList

if TYPE_CHECKING:
    from mailhub.store.cache import FolderCache
    from mailhub.store.expunge import Kept, Reader


class FolderCore:
    """One folder's identity and this process's memory of it (one per directory: sessions
    share it through the ``Folder`` that ``MailStore`` hands out; one thread only)."""

    def __init__(self, path: Path, name: str, settings: StoreSettings) -> None:
        self.name = name
        self.path = path
        self.dir = str(path)
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
        return self.path / uidlist.FILENAME

    def list_file_stamp(self) -> tuple[int, int, int] | None:
        """(inode, mtime_ns, size) of the UID list file now; None if it is missing."""
        try:
            st = os.stat(self.list_path())
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def lock(self) -> DotLock:
        """The folder's dotlock: held to change the UID list (and to compact the cache)."""
        return self.dotlock(self.path / uidlist.LOCKNAME)

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
        for scan in self.scans.values():
            scan.trusted = False

    def announce_index_change(self) -> None:
        """The index changed but no directory did (keywords only): touch cur/ so every
        process's two-stat sync() rescans and re-reads the list."""
        try:
            os.utime(f"{self.dir}/cur")
        except FileNotFoundError:
            raise self.not_found() from None
        self.changed_by_us()
