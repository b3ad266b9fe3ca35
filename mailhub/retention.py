"""Retention for the dev stack: ``[dev] max_messages`` and ``max_age``, the oldest go first.

A catcher that runs for weeks must not fill the disk. This service keeps an index of every
message of the store in arrival order (from the store's change feed, so it costs no scans of
its own), and after deliveries, at start and on a timer (for ``max_age``) it expunges the oldest
beyond the limits from their Maildir folders (through the store: the files go durably, the UID
lists and the IMAP/web readers hear of it as of any expunge).

Work per reactor turn is bounded (``batch`` messages); more waits for the next turn, so a limit
lowered from 100,000 to 10 never blocks the reactor. At the limit (every delivery one over), a
pass waits ``PRUNE_DELAY`` for the deliveries meanwhile: one expunge per folder for them all.
How many were pruned is kept in ``<data_dir>/retention.json`` (across restarts) and shown by
the page and ``/api/v1/info``.
Production never builds this service (mailhub.service): it never prunes.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mailhub.safeio import atomic_write
from mailhub.store import Folder, MailStore, StoreError, UidValidityChanged
from mailhub.store.changes import EXPUNGED, FOLDER_DELETED, NEW, StoreChange, StoreChanges

log = Logger()

# Messages expunged per reactor turn at most. Measured: a pass of 25 takes 16-25 ms (one
# folder, or 25 folders: each an unlink, a directory fsync and a UID list rewrite); 200 took
# 120-670 ms, too long for the reactor to wait.
BATCH = 25
# A few over the limit (a delivery each, at the limit): the pass waits this long, so the
# deliveries meanwhile go in one pass - one expunge (a directory fsync and a UID list write)
# per folder and one count write, not one of each per delivery.
PRUNE_DELAY = 1.0
STATE_FILE = "retention.json"

_Key = tuple[str, str, str]  # (mailbox, folder, Maildir base name)


@dataclass(frozen=True)
class RetentionInfo:
    max_messages: int  # 0: no limit
    max_age: float | None
    messages: int  # what the index holds now
    pruned: int  # since this data directory began pruning
    last_pruned: float | None  # when the last one went (seconds since the epoch)

    def to_json(self) -> dict[str, Any]:
        return {
            "max_messages": self.max_messages or None,
            "max_age": self.max_age,
            "messages": self.messages,
            "pruned": self.pruned,
            "last_pruned": self.last_pruned,
        }


class Retention(Service):
    def __init__(
        self,
        store: MailStore,
        changes: StoreChanges,
        clock: IReactorTime,
        *,
        max_messages: int,
        max_age: float | None,
        state_file: Path,
        batch: int = BATCH,
    ) -> None:
        self.store, self.changes, self.clock = store, changes, clock
        self.max_messages, self.max_age = max_messages, max_age
        self.state_file, self.batch = state_file, batch
        # key -> uid of every message known; the heap holds (internaldate, uid, key) in age
        # order, with entries of messages gone since skipped when they come to the top. Of
        # one second, the UID says which came first in a folder (given in arrival order);
        # the key's text would not ("M100000" sorts before "M99999").
        self._uids: dict[_Key, int] = {}
        # key -> the UIDVALIDITY its UID is of: numbered anew (a lost UID list), the UID names
        # another message (RFC 3501 2.3.1.1) and the pass finds it again by its base name.
        self._validity: dict[_Key, int] = {}
        self._heap: list[tuple[int, int, _Key]] = []
        self._unsubscribe: Any = None
        self._soon: IDelayedCall | None = None
        self._age_timer: IDelayedCall | None = None
        self.pruned, self.last_pruned = self._load()
        self._waiters: list[tuple[int, defer.Deferred[int]]] = []

    # -- state -----------------------------------------------------------------------------

    def _load(self) -> tuple[int, float | None]:
        try:
            doc = json.loads(self.state_file.read_bytes())
            return int(doc["pruned"]), doc.get("last_pruned")
        except (OSError, ValueError, TypeError, KeyError):
            return 0, None

    def _save(self) -> None:
        doc = {"pruned": self.pruned, "last_pruned": self.last_pruned}
        try:
            atomic_write(self.state_file, json.dumps(doc).encode())
        except OSError as e:
            log.warn(
                "retention: cannot save the count in {path}: {e}", path=str(self.state_file), e=e
            )

    def info(self) -> RetentionInfo:
        return RetentionInfo(
            self.max_messages, self.max_age, len(self._uids), self.pruned, self.last_pruned
        )

    def wait_pruned(self, count: int) -> defer.Deferred[int]:
        """Fires (with the count) once ``pruned`` reaches ``count`` (tests, tools)."""
        if self.pruned >= count:
            return defer.succeed(self.pruned)
        d: defer.Deferred[int] = defer.Deferred()
        self._waiters.append((count, d))
        return d

    # -- life ------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._unsubscribe = self.changes.subscribe(self._told)
        self._told(self.changes.current())
        self.soon()  # at start: what grew while we were down

    def stopService(self) -> None:
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for call in (self._soon, self._age_timer):
            if call is not None and call.active():
                call.cancel()
        self._soon = self._age_timer = None

    # -- the index -------------------------------------------------------------------------

    def _told(self, changes: Iterable[StoreChange]) -> None:
        grew = False
        for change in changes:
            if change.kind == NEW and change.message is not None:
                key = (change.mailbox, change.folder, change.message.key)
                if key not in self._uids:
                    self._uids[key] = change.message.uid
                    self._validity[key] = change.uidvalidity
                    heapq.heappush(
                        self._heap, (change.message.internaldate, change.message.uid, key)
                    )
                    grew = True
            elif change.kind == EXPUNGED and change.message is not None:
                self._forget((change.mailbox, change.folder, change.message.key))
            elif change.kind == FOLDER_DELETED:
                for key in [k for k in self._uids if k[:2] == (change.mailbox, change.folder)]:
                    self._forget(key)
        if grew:
            self.soon(self._delay())

    def _forget(self, key: _Key) -> None:
        self._uids.pop(key, None)
        self._validity.pop(key, None)
        # Its heap entry stays until it reaches the top (lazy deletion); keep the heap from
        # growing without bound when many go by other means (the page's delete).
        if len(self._heap) > 2 * len(self._uids) + 1024:
            self._heap = [e for e in self._heap if self._uids.get(e[2]) == e[1]]
            heapq.heapify(self._heap)

    def _oldest(self) -> tuple[int, int, _Key] | None:
        while self._heap:
            top = self._heap[0]
            if self._uids.get(top[2]) == top[1]:
                return top
            heapq.heappop(self._heap)
        return None

    # -- pruning ---------------------------------------------------------------------------

    @property
    def pass_pending(self) -> bool:
        """Is a pass asked for on the next reactor turn?"""
        return self._soon is not None and self._soon.active()

    def soon(self, delay: float = 0.0) -> None:
        """Prune on the next reactor turn, or in ``delay`` seconds (several deliveries
        meanwhile: one pass); a pass asked for sooner moves a later one forward."""
        if not self.running:
            return
        call = self._soon
        if call is None or not call.active():
            self._soon = self.clock.callLater(delay, self.prune)
        elif call.getTime() > self.clock.seconds() + delay:
            call.reset(delay)

    def _delay(self) -> float:
        """When the next pass should run: at once when a whole batch is due (or by age),
        PRUNE_DELAY when only a few messages are over the limit."""
        if self.max_messages and len(self._uids) - self.max_messages < self.batch:
            oldest = self._oldest()
            by_age = (
                self.max_age is not None
                and oldest is not None
                and oldest[0] < self.clock.seconds() - self.max_age
            )
            return 0.0 if by_age else PRUNE_DELAY
        return 0.0

    def _over(self) -> bool:
        oldest = self._oldest()
        if oldest is None:
            return False
        if self.max_messages and len(self._uids) > self.max_messages:
            return True
        return self.max_age is not None and oldest[0] < self.clock.seconds() - self.max_age

    def prune(self) -> int:
        """Expunge up to ``batch`` of the oldest messages beyond the limits; another turn is
        asked for when more remain. Returns how many went."""
        self._soon = None
        victims: dict[tuple[str, str], list[tuple[_Key, int, int]]] = {}
        n = 0
        while n < self.batch and self._over():
            _, uid, key = heapq.heappop(self._heap)
            victims.setdefault(key[:2], []).append((key, uid, self._validity.pop(key, 0)))
            self._uids.pop(key, None)
            n += 1
        gone = 0
        for (mailbox, folder), items in victims.items():
            try:
                removed = self._expunge(self.store.mailbox(mailbox).folder(folder), items)
            except StoreError as e:  # vanished meanwhile, or a lock: the index forgets them
                log.warn("retention: {mailbox}/{folder}: {e}", mailbox=mailbox, folder=folder, e=e)
                continue
            gone += len(removed)
        if gone:
            self.pruned += gone
            self.last_pruned = self.clock.seconds()
            self._save()
            log.info(
                "retention: pruned {n} oldest message(s); {left} kept (max {max}, max_age {age})",
                n=gone,
                left=len(self._uids),
                max=self.max_messages or "off",
                age=self.max_age or "off",
            )
            ready = [d for n, d in self._waiters if self.pruned >= n]
            self._waiters = [(n, d) for n, d in self._waiters if self.pruned < n]
            for d in ready:
                d.callback(self.pruned)
        if self._over():
            self.soon(self._delay())
        self._arm_age_timer()
        return gone

    def _expunge(self, folder: Folder, items: list[tuple[_Key, int, int]]) -> list[int]:
        """Expunge these messages by the UIDs of the folder's numbering now: those recorded
        under another UIDVALIDITY found again by base name; an expunge whose own look numbers
        anew (UidValidityChanged) made again so."""
        for attempt in (1, 2):
            v = folder.uidvalidity or folder.sync().uidvalidity
            if attempt == 1 and all(validity == v for _, _, validity in items):
                uids = [u for _, u, _ in items]
            else:
                now = {m.key: m.uid for m in folder.sync().messages}
                uids = [now[k[2]] for k, _, _ in items if k[2] in now]
            try:
                return folder.expunge(uids)
            except UidValidityChanged:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _arm_age_timer(self) -> None:
        """With max_age: wake when the oldest message comes of age."""
        if self.max_age is None or not self.running:
            return
        if self._age_timer is not None and self._age_timer.active():
            self._age_timer.cancel()
        oldest = self._oldest()
        if oldest is None:
            self._age_timer = None
            return
        due = max(0.0, oldest[0] + self.max_age - self.clock.seconds()) + 1
        self._age_timer = self.clock.callLater(due, self.prune)
