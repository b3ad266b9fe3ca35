"""A folder's persistent cache of derived data about its messages (``mailhub-cache``).

Messages are immutable, so whatever is computed from a message's bytes (its MIME structure,
say) is valid for as long as the message exists, keyed by its Maildir base name. The cache
saves re-parsing a message in every session and after every restart.

File format: a header line, then records appended one after the other::

    mailhub-cache 1\\n
    +<crc32 hex8> <length> <name> <base>\\n<length bytes of data>

The CRC-32 covers everything after ``+<crc> ``. Records are only ever appended, whole (one
record, or a pass's batch of them) with one ``write()`` on an ``O_APPEND`` descriptor, without a
lock: on local file systems such appends never interleave. Where they might (NFS), or after a
crash mid-write, the CRC exposes the damage; a reader stops at the first bad record and the file
is compacted. A record that is incomplete
at the end of the file is a write in progress: the reader waits for it. A later record for the
same key wins (a reader that cannot decode an old record computes and appends a new one).

Compaction - dropping records of expunged messages, superseded and damaged ones - rewrites the
file under the folder's lock and renames it into place; writers still holding the old file lose
their appends, which is harmless for a cache (an append that sees its file replaced is made
again to the new one). Readers notice (``st_nlink == 0`` on the file they hold open, or another
inode at the path) and re-read.

Memory: processes share the file but not the entry names they use (IMAP: "headers" and
"structure"; the web API: a search text of up to 64 K per message). A reader keeps the bytes
of records only for names it has asked for; of the others it keeps where the latest record
is (offset and size in the file it holds open). The first time a name is asked for, those
records are read again from that descriptor (the file is append-only and a compaction
replaces it, so the bytes there are the ones whose CRC was checked) and checked again.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

from twisted.logger import Logger

from mailhub.safeio import atomic_write

log = Logger()

FILENAME = "mailhub-cache"
HEADER = b"mailhub-cache 1\n"
_MAX_HEADER = 1024  # a record's header line is at most this long (a base name is <= 255)
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
COMPACT_MIN_DEAD = 64 * 1024  # rewrite once dead bytes pass this and the live bytes
FLUSH_SIZE = 256 * 1024  # deferred records are appended once they add up to this
READ_SIZE = 4 * 1024 * 1024  # the file is read in pieces of about this size (less memory)
_GAP = 64 * 1024  # records of a name first asked for: one read spans gaps up to this
_SIZE_BITS = 40  # a record's place in the file as one int: offset << _SIZE_BITS | size
_SIZE_MASK = (1 << _SIZE_BITS) - 1

MISSING: Any = object()


def check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"cache entry name must match {_NAME.pattern!r}, not {name!r}")


# os.fsencode's encoding, without its call per record (a cold pass writes one per message)
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def record(base: str, name: str, data: bytes) -> bytes:
    rest = b"%d %s %s\n" % (len(data), name.encode("ascii"), base.encode(_FS_ENCODING, _FS_ERRORS))
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
    until first asked for, if their name was asked for before (``want``); of other names
    only their place in the file is kept. One descriptor stays open on the file, for
    reading (``pread``) and appending (``O_APPEND``); a file replaced by a compaction or
    removed shows as ``st_nlink == 0`` on it and is reopened by path. Not thread-safe (like
    ``Folder``).

    Freshness: a lookup that misses re-reads what other processes appended (one ``fstat``
    when nothing was); ``refresh`` also compares the path's inode (a compaction seen through
    NFS's silly rename keeps ``st_nlink``) and is what a command pass calls once before
    serving many lookups from memory (``lookup``). Staleness never gives a wrong value -
    entries are keyed by the immutable message's base name - only a needless recompute.
    """

    def __init__(self, directory: Path, hostname: str) -> None:
        self._path = directory / FILENAME
        self._hostname = hostname
        # name -> base -> value; these dicts are never replaced (a pass holds on to one)
        self._decoded: dict[str, dict[str, object]] = {}
        self._raw: dict[str, dict[str, bytes]] = {}  # name -> base -> record data, undecoded
        self._wanted: set[str] = set()  # names asked for: their records are kept as bytes
        # other names: base -> offset << _SIZE_BITS | size of its latest record in the file
        # generation read so far (self._ino); one int, not a tuple of two: 50,000 add up
        self._at: dict[str, dict[str, int]] = {}
        self._sizes: dict[tuple[str, str], int] = {}  # (base, name) -> size of latest record
        self._live = 0  # sum of _sizes, kept as it changes (checked after every miss)
        self._fd: int | None = None  # the file, O_RDWR|O_APPEND (O_RDONLY if not writable)
        self._ino: int | None = None  # the file generation read so far (the fd's inode)
        self._offset = 0  # bytes of it parsed
        self._dead = 0  # bytes in the file no longer needed (superseded, expunged, damaged)
        self._damaged = False
        self._pending: list[bytes] = []  # deferred appends: their records
        self._pending_keys: list[tuple[str, str]] = []  # and their (base, name), in order
        self._pending_size = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------

    def values(self, name: str) -> dict[str, object]:
        """The decoded values of entry ``name`` by base name: a live dict, kept up to date
        (and never replaced) for as long as this cache lives. Read it, do not change it."""
        found = self._decoded.get(name)
        if found is None:
            found = self._decoded[name] = {}
            self.want(name)
        return found

    def want(self, name: str) -> None:
        """This process uses entry ``name``: keep its records' bytes from now on (reading
        those the file already holds: checked again, a damaged one is left out)."""
        if name in self._wanted:
            return
        self._wanted.add(name)
        raws = self._raw.setdefault(name, {})
        at = self._at.pop(name, None)
        if not at:
            return
        fd = self._fd if self._fd is not None else self._open(create=False)
        if fd is None or self._offset == 0:  # the file is gone, or another one (forgotten)
            return
        places = sorted((p >> _SIZE_BITS, p & _SIZE_MASK, base) for base, p in at.items())
        i = 0
        while i < len(places):
            start = places[i][0]
            j, end = i + 1, start + places[i][1]
            while j < len(places) and places[j][0] - end <= _GAP and end - start < READ_SIZE:
                end = places[j][0] + places[j][1]
                j += 1
            try:
                data = os.pread(fd, end - start, start)
            except OSError as e:
                log.warn("cannot read {path}: {e}", path=str(self._path), e=str(e))
                return
            for offset, size, base in places[i:j]:
                got, _, damaged = parse_records(data[offset - start : offset - start + size], 0)
                if damaged or len(got) != 1 or got[0][:2] != (base, name):
                    self._damaged = True  # changed since it was read: compact, recompute
                    continue
                raws[base] = got[0][2]
            i = j

    def held_bytes(self) -> dict[str, int]:
        """Bytes of undecoded records held in memory, by entry name (for tests, diagnostics)."""
        return {name: sum(map(len, raws.values())) for name, raws in self._raw.items() if raws}

    def get(self, base: str, name: str, decode: Callable[[bytes], object]) -> object:
        """The decoded value, or MISSING. An undecodable record counts as missing. A miss
        first reads what other processes appended since the last look."""
        value = self.lookup(base, name, decode)
        if value is MISSING:
            self._read_new_records(False)
            value = self.lookup(base, name, decode)
        return value

    def lookup(self, base: str, name: str, decode: Callable[[bytes], object]) -> object:
        """The decoded value from what was read so far, or MISSING: no I/O."""
        values = self.values(name)
        value = values.get(base, MISSING)
        if value is not MISSING:
            return value
        raws = self._raw.get(name)
        raw = raws.pop(base, None) if raws else None
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
        values[base] = value
        return value

    def refresh(self) -> None:
        """Catch up with the file: reopen it if it was replaced or removed (checked by path
        too), read the records other processes appended."""
        self._read_new_records(True)

    def _read_new_records(self, by_path: bool) -> None:
        fd = self._fd
        st = None
        if fd is not None:
            st = os.fstat(fd)
            if st.st_nlink == 0 or (by_path and self._path_ino() != st.st_ino):
                self.close()  # compacted (replaced) or removed: the path has the truth
                fd = st = None
        if fd is None or st is None:
            fd = self._open(create=False)
            if fd is None:
                return
            st = os.fstat(fd)
        want = READ_SIZE
        while st.st_size > self._offset:
            # In pieces: the records of names nobody here asked for are only looked at.
            data = os.pread(fd, min(st.st_size - self._offset, want), self._offset)
            start = 0
            if self._offset == 0:
                if not data.startswith(HEADER):
                    if len(data) >= len(HEADER) or not HEADER.startswith(data):
                        self._damaged = True
                    return
                start = len(HEADER)
            records, end, damaged = parse_records(data, start)
            self._keep(records, self._offset + start)
            self._offset += end
            self._damaged = self._damaged or damaged
            if damaged or len(data) < want:
                return  # stopped at damage, or read to the end (maybe a write in progress)
            want = READ_SIZE if end > start else want * 2  # a record longer than the piece

    def _keep(self, records: list[tuple[str, str, bytes, int]], offset: int) -> None:
        """Take in ``records``, read from the file from ``offset`` on."""
        wanted, at = self._wanted, self._at
        for base, name, body, size in records:
            self._account((base, name), size)
            if name in wanted:
                values = self._decoded.get(name)
                if values is None or base not in values:
                    self._raw[name][base] = body
            else:
                places = at.get(name)
                if places is None:
                    places = at[name] = {}
                places[base] = offset << _SIZE_BITS | size
            offset += size

    def _path_ino(self) -> int | None:
        try:
            return os.stat(self._path).st_ino
        except FileNotFoundError:
            return None

    def _open(self, create: bool) -> int | None:
        """Open the file at the path (creating it if asked); None if it does not exist. A
        different file than the one read so far resets the reading position."""
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        for _ in range(3):
            try:
                try:
                    fd = os.open(self._path, flags)
                except PermissionError:  # a read-only folder: read, never write
                    fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
                break
            except FileNotFoundError:
                if not create:
                    self._forget_file()
                    return None
                self._create()
        else:
            return None
        self._fd = fd
        ino = os.fstat(fd).st_ino
        if ino != self._ino:
            self._forget_file()
            self._ino = ino
        return fd

    def _account(self, key: tuple[str, str], size: int) -> None:
        """The latest record of ``key`` in the file is ``size`` bytes long."""
        old = self._sizes.get(key)
        if old is not None:
            self._dead += old
            self._live -= old
        self._sizes[key] = size
        self._live += size

    def _forget_file(self) -> None:
        """The file was replaced or removed: what we decoded stays valid, the offsets not."""
        self._ino = None
        self._offset = 0
        for raws in self._raw.values():
            raws.clear()
        self._at.clear()
        self._sizes.clear()
        self._live = 0
        self._dead = 0
        self._damaged = False

    # -- writing -----------------------------------------------------------------------------

    def put(self, base: str, name: str, data: bytes, value: object, defer: bool = False) -> None:
        """Remember ``value`` and append its encoding ``data`` for other processes/restarts.
        ``defer`` collects the record for one append by ``flush`` (a pass over many messages
        writes once, not once per message). A failure to write is logged, never raised: the
        value is still correct."""
        values = self._decoded.get(name)
        if values is None:
            values = self.values(name)
        values[base] = value
        raws = self._raw[name]
        if raws:
            raws.pop(base, None)
        rec = record(base, name, data)
        self._pending.append(rec)
        self._pending_keys.append((base, name))
        self._pending_size += len(rec)
        if not defer or self._pending_size >= FLUSH_SIZE:
            self.flush()

    def flush(self) -> None:
        """Append the deferred records, in one write."""
        pending, self._pending, self._pending_size = self._pending, [], 0
        keys, self._pending_keys = self._pending_keys, []
        if not pending:
            return
        buf = b"".join(pending)
        try:
            for _ in range(2):
                fd = self._fd if self._fd is not None else self._open(create=True)
                if fd is None:
                    raise FileNotFoundError(errno.ENOENT, "cannot create", str(self._path))
                written = os.write(fd, buf)
                st = os.fstat(fd)
                if st.st_nlink:
                    break
                # compacted or removed under us: the records went to a dead file; again
                self.close()
        except OSError as e:
            log.warn("cannot append to {path}: {e}", path=str(self._path), e=str(e))
            return
        before = st.st_size - written
        if self._offset == 0 and before == len(HEADER) and self._fd is not None:
            self._offset = self._check_header(self._fd)  # a new file: nothing to read in it
        if written == len(buf) and self._offset > 0 and before == self._offset:
            # Nothing else was appended since we last read the file: our records are the
            # next ones, so account for them here instead of re-reading them on the next pass.
            self._offset = st.st_size
            for key, rec in zip(keys, pending, strict=True):
                self._account(key, len(rec))

    def _check_header(self, fd: int) -> int:
        """The offset after the file's header line, 0 if it is not (yet) there."""
        return len(HEADER) if os.pread(fd, len(HEADER), 0) == HEADER else 0

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
        self.flush()
        self._read_new_records(False)  # know every record in the file, ours included, by size
        stores: list[dict[str, Any]] = [
            *self._decoded.values(),
            *self._raw.values(),
            *self._at.values(),
        ]
        for store in stores:
            for base in gone.intersection(store):
                del store[base]
        for key in [k for k in self._sizes if k[0] in gone]:
            size = self._sizes.pop(key)
            self._dead += size
            self._live -= size

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


T = TypeVar("T")


class CachePass(Generic[T]):
    """One command's look at one entry of many messages (``Folder.cache_pass``): ``get(uid)``
    is a dict look-up when the value is known; otherwise ``miss`` decodes or computes it (and
    defers its record). ``close`` (or leaving the ``with`` block) appends the new records."""

    __slots__ = ("_cache", "_find", "_miss", "_values")

    def __init__(
        self,
        cache: FolderCache,
        name: str,
        find: Callable[[int], str | None],
        miss: Callable[[int, str | None], T],
    ) -> None:
        self._cache = cache
        self._values = cache.values(name)
        self._find = find  # uid -> base name, None if not (or no longer) in the folder
        # (uid, its base from find or None) -> value the slow way; raises MessageGone
        self._miss = miss

    def get(self, uid: int) -> T:
        base = self._find(uid)
        if base is not None:
            value = self._values.get(base, MISSING)
            if value is not MISSING:
                return value  # type: ignore[return-value]  # a T: MISSING ruled out
        return self._miss(uid, base)

    def close(self) -> None:
        """The pass is over: append the records of what it computed."""
        self._cache.flush()

    def __enter__(self) -> CachePass[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
