"""Listing a folder's new/ and cur/: the cached directory scans (two stat() calls when nothing
changed), where each message's file is (``Files``), and making and recognising Maildirs.

Directory mtimes have coarse granularity (a kernel tick, seconds on some NFS servers), so a
scan taken while a directory's mtime is younger than ``dirty_window`` is not trusted and the
next look lists it again (Dovecot does the same).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

from mailhub.store import names
from mailhub.store.errors import MessageGone
from mailhub.store.safeio import fsync_dir

if TYPE_CHECKING:
    from mailhub.store.core import FolderCore

SUBDIRS = ("tmp", "new", "cur")
FOLDER_MARKER = "maildirfolder"  # Maildir++: marks a folder dir (used by Courier, Dovecot)


class Files:
    """Where each message's file is: base name -> (subdir, file name), as a dict of pairs
    would say, kept as the two directories' own dicts (base -> file name): a first scan of a
    big folder then copies the listings instead of making a pair per message. A base is in
    one of them only (cur/ wins: a message moving new/ -> cur/ can show in both listings)."""

    __slots__ = ("cur", "new")

    def __init__(self, new: dict[str, str] | None = None, cur: dict[str, str] | None = None):
        self.new: dict[str, str] = {} if new is None else new
        self.cur: dict[str, str] = {} if cur is None else cur

    @classmethod
    def of_listings(cls, new: dict[str, str], cur: dict[str, str]) -> Files:
        files = cls(dict(new), dict(cur))
        for base in files.new.keys() & files.cur.keys():
            del files.new[base]
        return files

    def get(self, base: str) -> tuple[str, str] | None:
        fn = self.cur.get(base)
        if fn is not None:
            return "cur", fn
        fn = self.new.get(base)
        return None if fn is None else ("new", fn)

    def get_file(self, base: str) -> str | None:
        fn = self.cur.get(base)
        return self.new.get(base) if fn is None else fn

    def file_names(self, bases: list[str]) -> list[str]:
        """The file names of ``bases`` (all present)."""
        if not self.new:
            return list(map(self.cur.__getitem__, bases))
        # (cur/ wins; in C loops: a first scan has a thousand in new/ among ten thousand)
        return list(map(self.cur.get, bases, map(self.new.get, bases)))  # type: ignore[arg-type]

    def files(self) -> Iterator[tuple[str, str]]:
        """(base, file name) of every message."""
        return chain(self.new.items(), self.cur.items())

    def __getitem__(self, base: str) -> tuple[str, str]:
        where = self.get(base)
        if where is None:
            raise KeyError(base)
        return where

    def __setitem__(self, base: str, where: tuple[str, str]) -> None:
        sub, fn = where
        if sub == "cur":
            self.new.pop(base, None)
            self.cur[base] = fn
        else:
            self.cur.pop(base, None)
            self.new[base] = fn

    def __delitem__(self, base: str) -> None:
        if self.pop(base) is None:
            raise KeyError(base)

    def pop(self, base: str, default: None = None) -> tuple[str, str] | None:
        where = self.get(base)
        self.new.pop(base, None)
        self.cur.pop(base, None)
        return where

    def __contains__(self, base: object) -> bool:
        return base in self.cur or base in self.new

    def __iter__(self) -> Iterator[str]:
        return chain(self.new, self.cur)

    def __len__(self) -> int:
        return len(self.new) + len(self.cur)


@dataclass
class DirScan:
    """Cached scan of new/ or cur/: base name -> file name."""

    stamp: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) at the time of the scan
    trusted: bool = False  # mtime was older than the dirty window, so the stamp can be trusted
    files: dict[str, str] = field(default_factory=dict)


class Scanner:
    """The scans of one folder's new/ and cur/ (kept in ``FolderCore.scans``)."""

    def __init__(self, core: FolderCore) -> None:
        self.core = core

    def refresh(self, sub: str, *, force: bool) -> bool:
        """List ``sub`` again unless its stamp is trusted and unchanged; whether the state
        built from the scans must be rebuilt."""
        core = self.core
        scan = core.scans[sub]
        st = core.stat_dir(sub)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if not force and scan.trusted and scan.stamp == stamp:
            return False
        try:
            listing = os.listdir(f"{core.dir}/{sub}")
        except FileNotFoundError:
            raise core.not_found() from None
        files = names.files_by_base(listing)
        same = files == scan.files
        scan.files = files
        scan.stamp = stamp
        settings = core.settings
        scan.trusted = st.st_mtime < settings.now() - settings.dirty_window
        if not force and same and not core.stale and core.list_file_stamp() == core.list_stamp:
            # Looked again (a recent mtime cannot be trusted) and found the same files, and
            # the UID list did not change either: the state still holds. Saves rebuilding it
            # on every command for a second after any change.
            return False
        return True

    def rescan(self) -> Files:
        for sub in ("new", "cur"):
            self.refresh(sub, force=True)
        return self.scan_all()

    def scan_all(self) -> Files:
        scans = self.core.scans
        return Files.of_listings(scans["new"].files, scans["cur"].files)

    def relocate(self, base: str) -> tuple[str, str]:
        """Find where another reader moved ``base`` (flag rename, new->cur); MessageGone if
        it was removed."""
        core = self.core
        for sub in ("new", "cur"):
            self.refresh(sub, force=True)
        # The scans are now newer than the state: the next sync() must rebuild it.
        core.changed_by_us()
        for sub in ("cur", "new"):
            fn = core.scans[sub].files.get(base)
            if fn is not None:
                core.entries[base] = (sub, fn)
                return sub, fn
        core.entries.pop(base, None)
        raise MessageGone(f"message {base!r} was removed from {core.name!r}")


def create_maildir(path: Path, *, folder: bool) -> None:
    """Create a Maildir (``tmp new cur``), plus ``maildirfolder`` for a Maildir++ folder, and
    fsync so the directories survive a crash before the first message lands in them."""
    os.makedirs(path, 0o700, exist_ok=True)
    for sub in SUBDIRS:
        try:
            os.mkdir(path / sub, 0o700)
        except FileExistsError:
            pass
    if folder:
        fd = os.open(path / FOLDER_MARKER, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    fsync_dir(path)
    fsync_dir(path.parent)


def is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()
