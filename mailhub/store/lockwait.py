"""Waiting for a busy dotlock without blocking the reactor.

On the reactor thread ``DotLock.acquire()`` never sleeps: it raises ``LockBusy`` when a live
holder (another session's sync, another process) has the lock. The store's operations are
synchronous, so the wait happens around them, at the protocol seam: run the operation again
from a reactor timer (backing off from a few milliseconds, as the blocking wait does) until it
gets through or ``timeout`` passes - then ``LockBusy`` (a ``LockTimeout``) propagates and the
protocol answers with a temporary error. Only operations that change nothing before taking
the lock may be run again (``sync()``, STORE, an EXPUNGE whose files are already gone...).

Polling on timers, a wait is starved by another process that takes the lock again the moment
it lets it go; so one that has waited past ``dotlock.ANNOUNCE_AFTER`` announces itself, as
the blocking wait does (``<lock>.want``, see ``mailhub.store.dotlock``), until ``close()``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from mailhub.store.dotlock import ANNOUNCE_AFTER, announce_on_reactor, withdraw_on_reactor
from mailhub.store.errors import LockBusy

T = TypeVar("T")

MIN_DELAY = 0.002
MAX_DELAY = 0.1


class BusyWait:
    """The back-off of one operation that met a busy lock; ``timeout`` from its first try."""

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self._clock = clock
        self._announce_at = clock.seconds() + ANNOUNCE_AFTER
        self._deadline = clock.seconds() + timeout
        self._delay = MIN_DELAY
        self.tries = 0
        self._marks: dict[Path, bytes] = {}  # waiting markers written: marker -> content

    async def pause(self, busy: LockBusy) -> None:
        """Wait before the next try, or re-raise ``busy`` when the time is up."""
        if self._clock.seconds() >= self._deadline:
            raise busy
        self.tries += 1
        want = busy.want
        if isinstance(want, Path) and self._clock.seconds() >= self._announce_at:
            self._marks[want] = announce_on_reactor(want, self._marks.get(want))
        wait = getattr(busy, "wait", None)
        if wait is not None:
            # This process's own write holds the lock (uidwriter.Flushing): its end, not a
            # timer, says when to try again.
            await wait
            return
        await deferLater(self._clock, min(self._delay, self._deadline - self._clock.seconds()))
        self._delay = min(self._delay * 2, MAX_DELAY)

    def close(self) -> None:
        """The wait is over (got through, or gave up): withdraw its markers."""
        marks, self._marks = self._marks, {}
        for want, record in marks.items():
            withdraw_on_reactor(want, record)


async def retry_busy(clock: IReactorTime, timeout: float, f: Callable[[], T]) -> T:
    """``f()``, run again while it raises LockBusy (see the module docstring)."""
    wait = BusyWait(clock, timeout)
    try:
        while True:
            try:
                return f()
            except LockBusy as busy:
                await wait.pause(busy)
    finally:
        wait.close()
