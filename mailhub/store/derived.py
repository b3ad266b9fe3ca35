"""Derived data of a folder's messages by UID: values computed from a message once (its parsed
structure, header lines...) and kept in the folder's cache file (cache.py), shared with other
processes. (Dropping expunged messages' records and compacting: ``FolderCore``.)"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import BinaryIO, TypeVar

from mailhub.store.cache import MISSING, CachePass
from mailhub.store.cache import check_name as check_cache_name
from mailhub.store.core import FolderCore
from mailhub.store.errors import UidValidityChanged
from mailhub.store.reading import MessageFiles

T = TypeVar("T")


class DerivedData:
    """Cached derived data of one folder's messages, by UID."""

    def __init__(self, core: FolderCore, files: MessageFiles) -> None:
        self.core = core
        self.files = files

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
        """``Folder.cached``."""
        check_cache_name(name)
        core = self.core
        base, _, _ = self.files.where(uid)
        cache = core.cache_file()
        value = cache.get(base, name, decode)
        if value is not MISSING:
            return value  # type: ignore[return-value]  # decode made it: a T
        if compute_path is not None:
            value = self.files.with_file(
                uid, lambda b, sub, fn: compute_path(f"{core.dir}/{sub}/{fn}")
            )
        else:
            with self.files.open_message(uid) as f:
                value = compute(f)
        if uid in core.kept:  # expunged (kept for a reader): no record for it
            return value
        if cache.needs_compaction():  # first, so that the new record lands in a clean file
            core.compact_cache(cache)
        cache.put(base, name, encode(value), value)
        return value

    def cache_pass(
        self,
        name: str,
        compute: Callable[[BinaryIO], T],
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
        *,
        compute_path: Callable[[str], T] | None = None,
    ) -> CachePass[T]:
        """``Folder.cache_pass``."""
        check_cache_name(name)
        core = self.core
        files = self.files
        files.syncer.state_or_sync()
        cache = core.cache_file()
        cache.want(name)  # before reading: its new records are then kept as they are read
        cache.refresh()
        if cache.needs_compaction():
            core.compact_cache(cache)

        def from_path(base: str, sub: str, fn: str) -> T:
            assert compute_path is not None
            return compute_path(f"{core.dir}/{sub}/{fn}")

        def miss(uid: int, base: str | None) -> T:
            # ``base``: the pass's own look found the message there (_live_base): its file
            # name is taken from the same listings, without where()'s second look (a cold
            # SEARCH misses on every message); renamed meanwhile: found again below
            entries = core.entries
            if base is not None and (fn := entries.cur.get(base)) is not None:
                found = base, "cur", fn
            elif base is not None and (fn := entries.new.get(base)) is not None:
                found = base, "new", fn
            else:
                found = files.where(uid)
            key, sub, fn = found
            value = cache.lookup(key, name, decode)
            if value is MISSING:
                if compute_path is not None:
                    try:
                        value = compute_path(f"{core.dir}/{sub}/{fn}")
                    except FileNotFoundError:
                        value = files.with_file(uid, from_path)
                else:
                    with files.open_message(uid) as f:
                        value = compute(f)
                if uid not in core.kept:  # (expunged, kept for a reader: no record)
                    cache.put(key, name, encode(value), value, defer=True)
            return value  # type: ignore[return-value]  # decoded or computed: a T

        # (a pass spans reactor turns, SEARCH's slices: its UIDs are of the numbering now)
        return CachePass(cache, name, partial(self._live_base, core.uidvalidity), miss)

    def _live_base(self, numbered: int, uid: int) -> str | None:
        """The base name of ``uid`` if the message is (as far as we know) still here;
        UidValidityChanged if the folder is no longer numbered by ``numbered``."""
        core = self.core
        if core.uidvalidity != numbered:
            raise UidValidityChanged(f"{core.name!r} was given new UIDs")
        base = core.uid_base.get(uid)
        if base is None:
            return None
        entries = core.entries  # (Files.__contains__, without its call: once per message)
        return base if base in entries.cur or base in entries.new else None
