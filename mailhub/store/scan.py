"""Listing a folder's new/ and cur/: the cached directory scans (two stat() calls when nothing
changed) kept in ``FolderCore.scans``, and making and recognising Maildirs.

Directory mtimes have coarse granularity (a kernel tick, seconds on some NFS servers), so a
scan taken while a directory's mtime is younger than ``dirty_window`` is not trusted and the
next look lists it again (Dovecot does the same).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from mailhub.safeio import fsync_dir
from mailhub.store import names, uidlist
from mailhub.store.core import Files, FolderCore
from mailhub.store.errors import MessageGone

SUBDIRS = ("tmp", "new", "cur")
FOLDER_MARKER = "maildirfolder"  # Maildir++: marks a folder dir (used by Courier, Dovecot)


class Scanner:
    """The scans of one folder's new/ and cur/ (kept in ``FolderCore.scans``)."""

    def __init__(self, core: FolderCore) -> None:
        self.core = core

    def refresh(
        self, sub: str, *, force: bool, fast: bool = False, watch: bool | None = None
    ) -> bool:
        """List ``sub`` again unless its stamp is trusted and unchanged; whether the state
        built from the scans must be rebuilt. ``fast`` (most IMAP commands' looks, not
        NOOP's): a directory changed within the dirty window is not listed again either
        while the store's inotify witness (``dirwatch.py``) saw no change in it since the
        last listing; the directory is watched from then on (``watch``: whether to start
        watching it, by default when ``fast``)."""
        core = self.core
        scan = core.scans[sub]
        st = core.stat_dir(sub)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if not force and scan.stamp == stamp:
            if scan.trusted:
                return False
            if fast and scan.generation is not None:
                dirs = core.settings.witness.dirs
                if dirs is not None and dirs.generation(f"{core.dir}/{sub}", watch=False) == (
                    scan.generation
                ):
                    return False  # no event since the listing: it still holds
        path = f"{core.dir}/{sub}"
        dirs = core.settings.witness.dirs
        # Taken (the queue read, the watch made) before listing: a change after it shows
        # as a new generation, even one the listing saw.
        if watch is None:
            watch = fast
        scan.generation = None if dirs is None else dirs.generation(path, watch=watch)
        try:
            listing = os.listdir(path)
        except FileNotFoundError:
            scan.generation = None
            raise core.not_found() from None
        if listing == scan.listing:
            # The same names in the same order (a second look within the dirty window, in
            # every command's syncs): the same files, without parsing 10,000 names again.
            same = True  # (the old listing is kept: its strings are those of files)
        else:
            files = names.files_by_base(listing)
            same = files == scan.files
            scan.files = files
            scan.listing = listing
        scan.stamp = stamp
        settings = core.settings
        scan.trusted = st.st_mtime < settings.now() - settings.dirty_window
        if not force and same and not core.stale and self._list_unchanged():
            # Looked again (a recent mtime cannot be trusted) and found the same files, and
            # the UID list did not change either: the state still holds. Saves rebuilding it
            # on every command for a second after any change.
            return False
        return True

    def _list_unchanged(self) -> bool:
        """The UID list file is still the one the state was built from: its stamp, then its
        first line (an equal stamp may hide another process's write - a reused inode, a
        coarse mtime - and every write that matters moves UIDNEXT or HIGHESTMODSEQ:
        ``uidindex``'s docstring). ~5 us, after a listdir; else a keyword stored by another
        process could go unseen until the next change."""
        core = self.core
        if core.list_file_stamp() != core.list_stamp:
            return False
        lst = core.list
        return lst is None or core.list_file_header() == uidlist.header_line(lst)

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
    # (Strings and os.stat: the same two stat() calls as Path.is_dir, without pathlib's joins,
    # which cost more than the calls - every APPEND and COPY asks this of its target.)
    return _is_dir(f"{path}/cur") and _is_dir(f"{path}/new")


def _is_dir(path: str) -> bool:
    """``Path.is_dir``: False for what it calls missing, other errors raised."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError as e:
        if e.errno in _MISSING:
            return False
        raise
    except ValueError:  # (a NUL in the name)
        return False


_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)  # pathlib's _IGNORED_ERRNOS
