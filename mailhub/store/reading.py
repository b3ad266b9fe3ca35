"""Finding and reading a message's file by UID: where the last scan saw it, looked for again
when another reader renamed it meanwhile (ENOENT: rescan and retry), or the link kept in tmp/
for a reader not yet told of its expunge (RFC 2180 4.1)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO, TypeVar

from mailhub.store.core import FolderCore
from mailhub.store.errors import MessageGone
from mailhub.store.scan import Scanner
from mailhub.store.sync import Syncer

T = TypeVar("T")

RETRIES = 5  # renames by others in a row before a message counts as gone
_CHUNK = 64 * 1024
_TRUSTED_SIZE = 1024 * 1024  # a size given by the caller is used for one read() up to this


class MessageFiles:
    """The files of one folder's messages, by UID."""

    def __init__(self, core: FolderCore, syncer: Syncer, scanner: Scanner) -> None:
        self.core = core
        self.syncer = syncer
        self.scanner = scanner

    def where(self, uid: int) -> tuple[str, str, str]:
        """uid -> (base, subdir, file name) as last seen; MessageGone if unknown."""
        core = self.core
        self.syncer.state_or_sync()
        base = core.uid_base.get(uid)
        where = None if base is None else core.entries.get(base)
        if base is None or where is None:
            kept = core.kept.get(uid)
            if kept is not None:  # expunged, but a session not told yet may read it
                return kept.base, "tmp", kept.name
            raise MessageGone(f"no message with UID {uid} in {core.name!r}")
        return base, where[0], where[1]

    def with_file(self, uid: int, op: Callable[[str, str, str], T]) -> T:
        """Run ``op(base, sub, filename)``; on ENOENT rescan and retry (another reader renamed
        the file), MessageGone if it is really gone."""
        base, sub, fn = self.where(uid)
        for _ in range(RETRIES):
            try:
                return op(base, sub, fn)
            except FileNotFoundError:
                sub, fn = self.scanner.relocate(base)
        raise MessageGone(f"message UID {uid} keeps moving; giving up")

    def open_message(self, uid: int) -> BinaryIO:
        """Open the message for reading (binary). The open file stays valid even if the
        message is renamed or expunged afterwards."""
        directory = self.core.dir

        def op(base: str, sub: str, fn: str) -> BinaryIO:
            return open(f"{directory}/{sub}/{fn}", "rb")

        return self.with_file(uid, op)

    def read_message(self, uid: int, size: int | None = None) -> bytes:
        """The whole message. One open, read and close for the usual file (no Python file
        object: FETCH BODY[] of a big folder, POP3 RETR of a maildrop, read thousands);
        ``size``, what the index says the file holds, spares the fstat() too."""
        path = self._path(uid)
        if path is not None:
            try:
                return _read_file(path, size)
            except FileNotFoundError:
                pass  # renamed by another reader meanwhile: look again, as with_file does
        directory = self.core.dir
        return self.with_file(
            uid, lambda base, sub, fn: _read_file(f"{directory}/{sub}/{fn}", size)
        )

    def _path(self, uid: int) -> str | None:
        """The file of ``uid`` where the last scan saw it (``where`` without the rare cases:
        None for a message not known there or kept in tmp/)."""
        core = self.core
        self.syncer.state_or_sync()
        base = core.uid_base.get(uid)
        if base is None:
            return None
        entries = core.entries
        fn = entries.cur.get(base)
        if fn is not None:
            return f"{core.dir}/cur/{fn}"
        fn = entries.new.get(base)
        return None if fn is None else f"{core.dir}/new/{fn}"


def _read_file(path: str, size: int | None) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _read_to_end(fd, size)
    finally:
        os.close(fd)


def _read_to_end(fd: int, size: int | None = None) -> bytes:
    """Everything from ``fd`` (a regular file) to its end. One read() asking for one byte more
    than the file holds (``size`` if given, else what fstat() says): getting no more than that
    means the end was reached. Anything else (a file that grew or shrank, a size that was wrong,
    a short read) is read on until read() returns nothing."""
    if size is None or size > _TRUSTED_SIZE:  # (a name's S= may lie: no huge buffer on its word)
        size = os.fstat(fd).st_size
    want = size + 1
    data = os.read(fd, want)
    if len(data) == want - 1:
        return data
    chunks = [data]
    while data:
        data = os.read(fd, _CHUNK)
        chunks.append(data)
    return b"".join(chunks)
