"""inotify as a witness that a directory did not change since it was listed.

A directory's mtime cannot say so while it is younger than the store's ``dirty_window`` (a
change in the same clock tick leaves it as it was), so a folder changed in the last second
is listed again on every look (``scan.py``). On a local file system every change to a
directory, whichever process makes it, queues an inotify event on its watch before the system
call returns. So: watch the directory, read what is queued, remember a number (its
*generation*), list it; as long as a later read of the queue shows no event for that watch,
the listing is still the directory's content (RFC 3501 5.2 and 7 leave it to the server when
it reports changes; Dovecot's FAST sync answers most commands from its index log the same way).

One descriptor per process, read only when asked (no reactor callbacks: a STORE of 3,000
messages queues 6,000 events, each parsed here in a fraction of a microsecond), under a lock (a
store worker's look reads it too: an event one thread read must count before the other asks).
A queue that overflowed (events lost) makes every generation new; a watch the kernel dropped
(the directory was removed) vouches for nothing. At most ``limit`` directories are watched (each
watch counts against the user's ``fs.inotify.max_user_watches``): the oldest watch is given
up for a new one, and a directory that cannot be watched is simply listed as before.

Not for a file system shared by several hosts (NFS, CephFS, SMB, FUSE): inotify sees only
this host's changes there. ``local_file_system`` tells them apart.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import threading
from functools import cache
from itertools import count

from twisted.logger import Logger

log = Logger()

# <sys/inotify.h>
IN_ATTRIB = 0x00000004  # on cur/: a keyword-only change touches its mtime (flags.py)
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
MASK = (
    IN_ATTRIB
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)

# File systems where every change is made by this host's kernel, so inotify sees all of them.
LOCAL_FILE_SYSTEMS = frozenset(
    ("ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "zfs", "f2fs", "jfs",
     "reiserfs", "bcachefs", "overlay", "nilfs2")
)  # fmt: skip


def local_file_system(path: str, mountinfo: str | None = None) -> bool:
    """Is ``path`` on a file system of this host alone (``LOCAL_FILE_SYSTEMS``)? From the
    longest mount point above it in /proc/self/mountinfo; False when that cannot be read."""
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                mountinfo = f.read()
        except OSError:
            return False
    target = os.path.realpath(path)
    best, fstype = "", ""
    for line in mountinfo.splitlines():
        fields, sep, rest = line.partition(" - ")
        parts = fields.split()
        if not sep or len(parts) < 5 or not rest:
            continue
        point = parts[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, rest.split()[0]
    return fstype in LOCAL_FILE_SYSTEMS


class DirWatch:
    """One inotify descriptor vouching for listed directories (see the module docstring)."""

    def __init__(self, fd: int, limit: int = 4096) -> None:
        self._fd = fd
        self.limit = limit
        self._serial = count(1)
        self._wd: dict[str, int] = {}  # path -> watch descriptor (insertion order: oldest first)
        self._paths: dict[int, list[str]] = {}  # wd -> paths (one inode, one wd)
        self._generation: dict[int, int] = {}  # wd -> serial of its last event (or its start)
        self.events = 0  # read so far (for tests and curiosity)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, limit: int = 4096) -> DirWatch | None:
        """A new descriptor; None where inotify is missing or refused (out of instances)."""
        libc = _libc()
        if libc is None:
            return None
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            log.info("no inotify for the store's looks: {e}", e=os.strerror(ctypes.get_errno()))
            return None
        return cls(fd, limit)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._wd.clear()
            self._paths.clear()
            self._generation.clear()

    def generation(self, path: str, *, watch: bool) -> int | None:
        """Read what is queued, then the generation of directory ``path``: equal to one taken
        before a listing of it only while nothing changed there since. ``watch``: start
        watching it if it is not (then call before listing it); else None for a directory not
        watched (or not any more)."""
        with self._lock:
            if self._fd < 0:
                return None
            self._drain()
            wd = self._wd.get(path)
            if wd is None:
                if not watch:
                    return None
                wd = self._add(path)
                if wd is None:
                    return None
            return self._generation.get(wd)

    def _drain(self) -> None:
        """Read every event queued now (non-blocking): each makes its watch's generation new."""
        read, unpack = os.read, _EVENT.unpack_from
        generation = self._generation
        while True:
            try:
                buf = read(self._fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                return
            if not buf:
                return
            serial = next(self._serial)  # one for the whole read: all of it is newer
            at, end = 0, len(buf)
            while at < end:
                wd, mask, _, size = unpack(buf, at)
                at += 16 + size
                self.events += 1
                if mask & IN_Q_OVERFLOW:
                    # Events were lost: no listing can be vouched for any more.
                    for known in generation:
                        generation[known] = serial
                elif mask & IN_IGNORED:
                    self._forget(wd)  # the kernel dropped the watch (directory removed)
                elif wd in generation:
                    generation[wd] = serial

    def _add(self, path: str) -> int | None:
        libc = _libc()
        assert libc is not None
        if len(self._wd) >= self.limit:
            oldest = next(iter(self._wd))
            old = self._wd.pop(oldest)
            paths = self._paths.get(old, [])
            if oldest in paths:
                paths.remove(oldest)
            if not paths:
                self._forget(old)
                libc.inotify_rm_watch(self._fd, old)
        wd = libc.inotify_add_watch(self._fd, os.fsencode(path), MASK)
        if wd < 0:
            return None  # gone, not a directory, or out of watches: listed as before
        self._wd[path] = wd
        paths = self._paths.setdefault(wd, [])
        if path not in paths:
            paths.append(path)
        if wd not in self._generation:
            # Newer than every listing made before the watch existed.
            self._generation[wd] = next(self._serial)
        return wd

    def _forget(self, wd: int) -> None:
        self._generation.pop(wd, None)
        for path in self._paths.pop(wd, []):
            if self._wd.get(path) == wd:
                del self._wd[path]

    def watched(self) -> int:
        return len(self._wd)


@cache
def _libc() -> ctypes.CDLL | None:
    """The C library's inotify calls; None where it has none (not Linux)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc
