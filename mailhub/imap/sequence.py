"""RFC 3501 section 9 sequence sets: ``1,3:5,7:*``.

``*`` stands for the largest number in use (the last sequence number or the highest UID), so
it is resolved only when the set is applied to a mailbox. ``$`` (SEARCHRES, RFC 5182) is not
supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# None stands for "*"
_Bound = int | None

_NUMBER = re.compile(r"[1-9][0-9]*|\*")
_MAX = 2**32 - 1  # nz-number is a 32-bit value (RFC 3501 section 9)


def _bound(text: str) -> _Bound:
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"bad sequence number {text!r}")
    if text == "*":
        return None
    value = int(text)
    if value > _MAX:
        raise ValueError(f"sequence number out of range: {text}")
    return value


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A parsed sequence set: a tuple of (low, high) pairs, ``None`` standing for ``*``."""

    items: tuple[tuple[_Bound, _Bound], ...]

    @classmethod
    def parse(cls, text: str) -> SequenceSet:
        if not text:
            raise ValueError("empty sequence set")
        items = []
        for element in text.split(","):
            first, sep, last = element.partition(":")
            low = _bound(first)
            high = _bound(last) if sep else low
            items.append((low, high))
        return cls(tuple(items))

    @classmethod
    def of(cls, numbers: list[int] | tuple[int, ...]) -> SequenceSet:
        """A set containing exactly these numbers (for rendering, e.g. COPYUID)."""
        return cls(tuple((n, n) for n in numbers))

    def ranges(self, largest: int) -> list[tuple[int, int]]:
        """Inclusive ranges, sorted and merged, ``*`` resolved to ``largest``.

        RFC 3501 section 9: ``4:2`` is the same as ``2:4``.  With an empty mailbox
        (``largest == 0``) ``*`` resolves to 0 and such ranges are dropped.
        """
        resolved = []
        for low, high in self.items:
            if largest < 1 and (low is None or high is None):
                continue  # "*" in an empty mailbox names nothing
            a = largest if low is None else low
            b = largest if high is None else high
            if a > b:
                a, b = b, a
            if b < 1:
                continue
            resolved.append((max(a, 1), b))
        resolved.sort()
        merged: list[tuple[int, int]] = []
        for a, b in resolved:
            if merged and a <= merged[-1][1] + 1:
                if b > merged[-1][1]:
                    merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        return merged

    def contains(self, n: int, largest: int) -> bool:
        for low, high in self.items:
            a = largest if low is None else low
            b = largest if high is None else high
            if a > b:
                a, b = b, a
            if a <= n <= b:
                return True
        return False

    def __str__(self) -> str:
        def show(b: _Bound) -> str:
            return "*" if b is None else str(b)

        return ",".join(show(a) if a == b else f"{show(a)}:{show(b)}" for a, b in self.items)


def compress(numbers: list[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"1:3,5"`` in the given order (RFC 4315 uid-set for COPYUID)."""
    parts: list[str] = []
    start = prev = None
    for n in numbers:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = n
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)
