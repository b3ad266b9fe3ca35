"""Small durable-I/O helpers: the temp -> fsync -> rename -> fsync(dir) dance in one place, and
the unique file names the store, the queue and ``atomic_write`` create."""

from __future__ import annotations

import itertools
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

# Unique names in Dovecot's Maildir format (https://cr.yp.to/proto/maildir.html): the store's
# message files, the queue's spool files and atomic_write's temp files. mailhub.store.names
# re-exports them beside the rest of the Maildir file-name grammar.
_counter = itertools.count(1)


def escape_host(hostname: str) -> str:
    """The spec: replace ``/`` with ``\\057`` and ``:`` with ``\\072`` in the host part. We also
    escape ``,`` (``\\054``) so that ``,S=`` fields parse unambiguously, as Dovecot does."""
    return hostname.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


def unique_name(hostname: str, now: Callable[[], float] = time.time) -> str:
    """A new Dovecot-compatible unique base name without size: ``<secs>.M<usecs>P<pid>Q<n>.<host>``.

    Unique across hosts (host), processes (pid) and calls in one process (Q counter), which is
    what maildir.html asks for without relying on sleeping for a second.
    """
    t = now()
    secs = int(t)
    usecs = int((t - secs) * 1_000_000)
    return f"{secs}.M{usecs}P{os.getpid()}Q{next(_counter)}.{escape_host(hostname)}"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so the names created or renamed in it survive a crash (rename(2) and
    link(2) are only durable once the directory is flushed)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until every byte is out (a write may be short, e.g. on a full pipe or signal)."""
    n = os.write(fd, data)
    if n == len(data):
        return
    view = memoryview(data)
    try:
        view = view[n:]
        while view:
            view = view[os.write(fd, view) :]
    finally:
        view.release()


def write_new_file(path: str | os.PathLike[str], data: bytes | bytearray) -> None:
    """Create ``path`` (it must not exist: O_EXCL), write ``data``, fsync, close (mode 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: str | os.PathLike[str]) -> None:
    """Remove a file that may already be gone (cleanup paths must not raise)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def remove_if_exists(path: str | os.PathLike[str]) -> None:
    """Remove a file; one already gone is fine, any other failure is the caller's to see."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def atomic_write(
    path: Path,
    data: bytes,
    hostname: str = "localhost",
    like: os.stat_result | None = None,
    *,
    sync_dir: bool = True,
) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never a mix, and
    the new one survives a crash once this returns.

    The new file is 0600 from its first byte; with ``like`` (the stat of the file being
    replaced) it takes that file's mode and, where permitted, its owner.
    ``sync_dir=False``: the file's data is durable, its name only once the caller fsyncs
    ``path.parent`` (it must, before anything relies on the new file surviving a crash).
    """
    # No leading dot: in a mailbox root, dot-names are Maildir++ folders.
    tmp = path.with_name(f"{path.name}.{unique_name(hostname)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            if like is not None:
                os.fchmod(fd, stat.S_IMODE(like.st_mode))
                try:
                    os.fchown(fd, like.st_uid, like.st_gid)  # root editing mailhub's file
                except PermissionError:
                    pass
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if sync_dir:
        fsync_dir(path.parent)


def makedirs_durable(path: Path, mode: int = 0o700) -> bool:
    """Create ``path`` and missing parents, fsyncing each parent that gained an entry.

    Returns True if anything was created. Tolerates another process creating the same
    directories concurrently (two deliveries to a brand-new mailbox).
    """
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            if not d.is_dir():
                raise
        fsync_dir(d.parent)
    return bool(missing)
