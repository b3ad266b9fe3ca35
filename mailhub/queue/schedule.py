"""When to try again: a retry schedule with jitter, and the queue's time limits."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0

# Quick at first (most temporary failures are greylisting or a restart: minutes), then
# backing off to a 4-hour cap, as RFC 5321 4.5.4.1 suggests (at least 30 minutes between
# retries once it is clear the failure persists; give up after 4-5 days).
DEFAULT_DELAYS: tuple[float, ...] = (
    1 * MINUTE,
    5 * MINUTE,
    15 * MINUTE,
    30 * MINUTE,
    1 * HOUR,
    2 * HOUR,
    4 * HOUR,
)


@dataclass(frozen=True)
class RetrySchedule:
    """Delay after the n-th failed attempt: ``delays[n-1]``, the last one repeating (the cap),
    each multiplied by a random factor in [1 - jitter, 1 + jitter] so that messages that failed
    together (a destination was down) do not all come back in the same second.

    ``lifetime``: after this long in the queue the remaining recipients fail ("expired").
    ``delay_notice``: send one "still trying" DSN after this long (0 = never).
    """

    delays: tuple[float, ...] = DEFAULT_DELAYS
    jitter: float = 0.2
    lifetime: float = 5 * DAY
    delay_notice: float = 4 * HOUR
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.delays or any(d <= 0 for d in self.delays):
            raise ValueError("retry delays must be a non-empty list of positive seconds")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.lifetime <= 0:
            raise ValueError("lifetime must be positive")
        if self.delay_notice < 0:
            raise ValueError("delay_notice must be 0 (off) or positive")

    @classmethod
    def exponential(
        cls, base: float = 60.0, factor: float = 2.0, cap: float = 4 * HOUR, **kwargs: Any
    ) -> RetrySchedule:
        """``base``, ``base*factor``, ``base*factor**2``, ... up to ``cap``."""
        if base <= 0 or factor < 1 or cap < base:
            raise ValueError("need base > 0, factor >= 1 and cap >= base")
        delays: list[float] = []
        d = base
        while d < cap and len(delays) < 64:
            delays.append(d)
            d *= factor
        delays.append(cap)
        return cls(delays=tuple(delays), **kwargs)

    @classmethod
    def from_list(cls, delays: Sequence[float], **kwargs: Any) -> RetrySchedule:
        return cls(delays=tuple(float(d) for d in delays), **kwargs)

    def base_delay(self, attempts: int) -> float:
        """The delay without jitter after ``attempts`` (>= 1) failed attempts."""
        return self.delays[min(max(attempts, 1), len(self.delays)) - 1]

    def delay(self, attempts: int) -> float:
        base = self.base_delay(attempts)
        if not self.jitter:
            return base
        return base * self.rng.uniform(1 - self.jitter, 1 + self.jitter)
