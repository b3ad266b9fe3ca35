"""Queue ids: short, unique, roughly time-ordered, safe in file names and logs."""

from __future__ import annotations

import base64
import os

from twisted.internet.interfaces import IReactorTime


class QueueIdGenerator:
    """16 base32 characters: 48 bits of milliseconds, a 16-bit counter, 16 random bits.

    The counter makes ids unique within a process (65536 per millisecond); the random bits keep
    two processes started in the same millisecond apart; time first makes them sort by arrival.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._counter = int.from_bytes(os.urandom(2), "big")
        self._random = b""  # os.urandom() fetched 1 KiB at a time: one syscall per 512 ids
        self._random_pos = 0

    def __call__(self) -> str:
        ms = int(self._clock.seconds() * 1000) & 0xFFFF_FFFF_FFFF
        self._counter = (self._counter + 1) & 0xFFFF
        pos = self._random_pos
        if pos >= len(self._random):
            self._random, pos = os.urandom(1024), 0
        self._random_pos = pos + 2
        raw = (
            (ms << 32) | (self._counter << 16) | int.from_bytes(self._random[pos : pos + 2])
        ).to_bytes(10, "big")
        return base64.b32encode(raw).decode("ascii")
