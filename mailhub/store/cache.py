"""A folder's persistent cache of derived data about its messages (``mailhub-cache``).

Messages are immutable, so whatever is computed from a message's bytes (its MIME structure,
say) is valid for as long as the message exists, keyed by its Maildir base name. The cache
saves re-parsing a message in every session and after every restart.

File format: a header line, then records appended one after the other::

    mailhub-cache 1\\n
    +<crc32 hex8> <length> <name> <base>\\n<length bytes of data>

The CRC-32 covers everything after ``+<crc> ``. Records are only ever appended, each with one
``write()`` on an ``O_APPEND`` descriptor, without a lock: on local file systems such appends
never interleave. Where they might (NFS), or after a crash mid-write, the CRC exposes the damage;
a reader stops at the first bad record and the file is compacted. A record that is incomplete
at the end of the file is a write in progress: the reader waits for it. A later record for the
same key wins (a reader that cannot decode an old record computes and appends a new one).

Compaction - dropping records of expunged messages, superseded and damaged ones - rewrites the
file under the folder's lock and renames it into place; writers still holding the old file lose
their appends, which is harmless for a cache. Readers notice the new inode and re-read.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from mailhub.store.safeio import atomic_write

log = Logger()

FILENAME = "mailhub-cache"
HEADER = b"mailhub-cache 1\n"
_MAX_HEADER = 1024  # a record's header line is at most this long (a base name is <= 255)
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
COMPACT_MIN_DEAD = 64 * 1024  # rewrite once dead bytes pass this and the live bytes

MISSING: Any = object()


def check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"cache entry name must match {_NAME.pattern!r}, not {name!r}")


def record(base: str, name: str, data: bytes) -> bytes:
    rest = b"%d %s %s\n" % (len(data), name.encode("ascii"), os.fsencode(base))
    crc = zlib.crc32(data, zlib.crc32(rest))
    return b"+%08x %s%s" % (crc, rest, data)


def parse_records(
    data: bytes | memoryview, start: int
) -> tuple[list[tuple[str, str, bytes, int]], int, bool]:
    """Records from ``data[start:]``: ([(base, name, data, record size)], end, damaged).

    ``end`` is where parsing stopped: the end of the last whole record. ``damaged`` is True if
    it stopped at a bad record rather than at the end or at an incomplete record.
    """
    buf = bytes(data)
    out: list[tuple[str, str, bytes, int]] = []
    pos, n = start, len(buf)
    while pos < n:
        nl = buf.find(b"\n", pos, pos + _MAX_HEADER)
        if nl < 0:
            return out, pos, n - pos >= _MAX_HEADER
        try:
            crc_s, len_s, name_b, base_b = buf[pos:nl].split(b" ", 3)
            if crc_s[:1] != b"+" or len(crc_s) != 9:
                raise ValueError("no record start")
            crc, length = int(crc_s[1:], 16), int(len_s)
            if length < 0:
                raise ValueError("negative length")
        except ValueError:
            return out, pos, True
        end = nl + 1 + length
        if end > n:
            return out, pos, False  # a write still in progress (or torn: the CRC will tell)
        body = buf[nl + 1 : end]
        if zlib.crc32(body, zlib.crc32(buf[pos + 10 : nl + 1])) != crc:
            return out, pos, True
        out.append((os.fsdecode(base_b), name_b.decode("ascii"), body, end - pos))
        pos = end
    return out, pos, False


class FolderCache:
    """One folder's cache, shared by the sessions of a process through its ``Folder``.

    Values are kept decoded in memory once used; records read from the file stay as bytes
    until first asked for. Not thread-safe (like ``Folder``).
    """

    def __init__(self, directory: Path, hostname: str) -> None:
        self._path = directory / FILENAME
        self._hostname = hostname
        self._decoded: dict[tuple[str, str], object] = {}
        self._raw: dict[tuple[str, str], bytes] = {}
        self._sizes: dict[tuple[str, str], int] = {}  # key -> size of its latest record in file
        self._live = 0  # sum of _sizes, kept as it changes (checked after every miss)
        self._ino: int | None = None  # the file generation read so far
        self._offset = 0  # bytes of it parsed
        self._dead = 0  # bytes in the file no longer needed (superseded, expunged, damaged)
        self._damaged = False
        self._append_fd: int | None = None
        self._append_ino: int | None = None

    def close(self) -> None:
        if self._append_fd is not None:
            os.close(self._append_fd)
            self._append_fd = None

    def __del__(self) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------

    def get(self, base: str, name: str, decode: Callable[[bytes], object]) -> object:
        """The decoded value, or MISSING. An undecodable record counts as missing."""
        key = (base, name)
        value = self._decoded.get(key, MISSING)
        if value is not MISSING:
            return value
        raw = self._raw.pop(key, None)
        if raw is None:
            self._read_new_records()
            raw = self._raw.pop(key, None)
            if raw is None:
                return MISSING
        try:
            value = decode(raw)
        except Exception as e:  # a format from another version, or a bug: recompute
            log.info(
                "cache entry {name} of {base} not usable ({e}); recomputing",
                name=name,
                base=base,
                e=repr(e),
            )
            return MISSING
        self._decoded[key] = value
        return value

    def _read_new_records(self) -> None:
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._forget_file()
            return
        try:
            st = os.fstat(fd)
            if st.st_ino != self._ino:
                self._forget_file()
                self._ino = st.st_ino
            if st.st_size <= self._offset:
                return
            data = os.pread(fd, st.st_size - self._offset, self._offset)
        finally:
            os.close(fd)
        start = 0
        if self._offset == 0:
            if not data.startswith(HEADER):
                if len(data) >= len(HEADER) or not HEADER.startswith(data):
                    self._damaged = True
                return
            start = len(HEADER)
        records, end, damaged = parse_records(data, start)
        self._offset += end
        self._damaged = self._damaged or damaged
        for base, name, body, size in records:
            key = (base, name)
            old = self._sizes.get(key)
            if old is not None:
                self._dead += old
                self._live -= old
            self._sizes[key] = size
            self._live += size
            if key not in self._decoded:
                self._raw[key] = body

    def _forget_file(self) -> None:
        """The file was replaced or removed: what we decoded stays valid, the offsets not."""
        self._ino = None
        self._offset = 0
        self._raw.clear()
        self._sizes.clear()
        self._live = 0
        self._dead = 0
        self._damaged = False

    # -- writing -----------------------------------------------------------------------------

    def put(self, base: str, name: str, data: bytes, value: object) -> None:
        """Remember ``value`` and append its encoding ``data`` for other processes/restarts.
        A failure to write is logged, never raised: the value is still correct."""
        key = (base, name)
        self._decoded[key] = value
        self._raw.pop(key, None)
        rec = record(base, name, data)
        try:
            fd = self._appender()
            written = os.write(fd, rec)
            end = os.fstat(fd).st_size
        except OSError as e:
            log.warn("cannot append to {path}: {e}", path=str(self._path), e=str(e))
            return
        if (
            written == len(rec)
            and self._offset > 0
            and self._ino == self._append_ino
            and end - written == self._offset
        ):
            # Nothing else was appended since we last read the file: our record is the next
            # one, so account for it here instead of re-reading it on the next miss.
            self._offset = end
            old = self._sizes.get(key)
            if old is not None:
                self._dead += old
                self._live -= old
            self._sizes[key] = written
            self._live += written

    def _appender(self) -> int:
        try:
            ino = os.stat(self._path).st_ino
        except FileNotFoundError:
            self._create()
            ino = os.stat(self._path).st_ino
        if self._append_fd is None or ino != self._append_ino:
            self.close()
            self._append_fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            self._append_ino = os.fstat(self._append_fd).st_ino
        return self._append_fd

    def _create(self) -> None:
        """A new file with its header, atomically (link fails if another process won)."""
        tmp = self._path.with_name(f"{FILENAME}.{os.getpid()}.{id(self)}.new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, HEADER)
        finally:
            os.close(fd)
        try:
            os.link(tmp, self._path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)

    # -- garbage collection ------------------------------------------------------------------

    def forget(self, bases: Iterable[str]) -> None:
        """Drop the entries of expunged messages from memory (and count them as dead)."""
        gone = set(bases)
        if not gone:
            return
        self._read_new_records()  # know every record in the file, ours included, by size
        for store in (self._decoded, self._raw):
            for key in [k for k in store if k[0] in gone]:
                del store[key]
        for key in [k for k in self._sizes if k[0] in gone]:
            size = self._sizes.pop(key)
            self._dead += size
            self._live -= size

    def live_bases(self) -> set[str]:
        return {k[0] for k in self._sizes} | {k[0] for k in self._decoded}

    def needs_compaction(self) -> bool:
        return self._damaged or self._dead > max(COMPACT_MIN_DEAD, self._live)

    def compact(self, live: set[str]) -> None:
        """Rewrite the file keeping the latest intact record of each live message. The caller
        holds the folder lock (so no two processes compact at once)."""
        try:
            with open(self._path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self._forget_file()
            return
        latest: dict[tuple[str, str], bytes] = {}
        if data.startswith(HEADER):
            records, _, _ = parse_records(data, len(HEADER))
            for base, name, body, _size in records:
                if base in live:
                    latest[(base, name)] = body
        out = [HEADER, *(record(b, n, body) for (b, n), body in latest.items())]
        atomic_write(self._path, b"".join(out), self._hostname)
        self.close()
        self._forget_file()
        log.info("compacted {path}: {kept} entries kept", path=str(self._path), kept=len(latest))
