"""Start-up (and hourly) clean-up of what a killed mailhub leaves in a Maildir folder.

``kill -9`` (or a crash, or a power cut) in the middle of a locked update can leave:

* the folder's dotlocks (``mailhub-uidlist.lock``, ``subscriptions.lock``,
  ``mailhub-uidvalidity.lock``): broken when their
  holder is dead by the rules of ``mailhub.store.dotlock`` (a dead pid of this machine at once,
  another machine's lock by its age);
* the files of a dotlock attempt that died between its steps (``<lock>.<host>.<pid>...``,
  ``<lock>...stale``);
* half-written replacements of ``mailhub-uidlist``/``subscriptions``/``mailhub-uidvalidity``
  (``<name>.<unique>.tmp``, from ``safeio.atomic_write``; one of 347 KB stayed through many
  restarts) and of ``mailhub-cache`` (``mailhub-cache.<pid>.<id>.new``);
* a folder deletion's renamed directory (``mailhub-deleting.<unique>``) that rmtree() did not
  finish.

Temporary files are removed only when older than ``temp_age`` (a live writer finishes in well
under a second; another node on a shared tree may be writing right now) and only while the
folder's lock is not held by a live holder (they are written under it).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from twisted.logger import Logger

from mailhub.store import cache, dotlock, subscriptions, uidlist, uidvalidity

log = Logger()

TEMP_AGE = 600.0  # seconds: a temporary file this old has no writer left
LOCK_NAMES = (uidlist.LOCKNAME, subscriptions.LOCKNAME, uidvalidity.LOCKNAME)
_TMP_PREFIXES = (uidlist.FILENAME + ".", subscriptions.FILENAME + ".", uidvalidity.FILENAME + ".")
_DELETING = "mailhub-deleting."


def _is_temp(name: str) -> bool:
    if name.endswith(".tmp") and name.startswith(_TMP_PREFIXES):
        return not name.endswith(".lock")
    if name.startswith(cache.FILENAME + ".") and name.endswith(".new"):
        return True
    # The unique file of a dotlock attempt, or a lock renamed aside by a breaker.
    return any(name.startswith(lock + ".") for lock in LOCK_NAMES)


def clean_folder(
    path: Path,
    *,
    now: Callable[[], float] = time.time,
    stale_after: float = dotlock.STALE_AFTER,
    temp_age: float = TEMP_AGE,
    machine: dotlock.Machine | None = None,
    alive: Callable[[int, str], bool] = dotlock.pid_alive,
) -> int:
    """Remove stale locks and old temporary leftovers in one folder directory (see above);
    returns how many were removed."""
    machine = machine or dotlock.this_machine()
    removed = 0
    locked = False
    for name in LOCK_NAMES:
        lock = path / name
        seen = dotlock.DotLock._identity(lock)
        if seen is None:
            continue
        verdict = dotlock.judge(seen[1], seen[0], now(), stale_after, machine, alive)
        aside = lock.with_name(f"{name}.cleanup.{os.getpid()}.{time.monotonic_ns()}")
        if verdict.stale and dotlock.break_lock(lock, seen, verdict.why, aside):
            removed += 1
        elif name == uidlist.LOCKNAME:
            locked = True
    if locked:
        return removed  # a live holder may be writing the temporary files right now
    limit = now() - temp_age
    try:
        it = os.scandir(path)
    except FileNotFoundError:
        return removed
    with it:
        for de in it:
            try:
                if _is_temp(de.name) and de.is_file(follow_symlinks=False):
                    if de.stat(follow_symlinks=False).st_mtime < limit:
                        os.unlink(de.path)
                        removed += 1
                elif de.name.startswith(_DELETING) and de.is_dir(follow_symlinks=False):
                    if de.stat(follow_symlinks=False).st_mtime < limit:
                        shutil.rmtree(de.path, ignore_errors=True)
                        removed += 1
                else:
                    continue
                log.info("removed leftover {path}", path=de.path)
            except FileNotFoundError:
                continue
    return removed
