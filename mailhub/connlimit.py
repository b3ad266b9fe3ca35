"""Simultaneous connections per listener, in total and per client address, and stress.

Every listener's factory (SMTP, IMAP, POP3) counts its connections with one ``ConnectionCounter``
and refuses beyond ``[limits] max_connections`` / ``max_connections_per_ip``; each protocol answers
the refusal in its own words (SMTP 421 4.7.0, IMAP ``* BYE``, POP3 ``-ERR [SYS/TEMP]``).

A TCP connection cannot be known to be going to log in before it does, so idle connections that
never will (500 of them, holding the IMAP autologout's 30 minutes each) could lock everyone out.
The counter does what Postfix's stress mode and Dovecot's login processes do:

- **Stress.** From ``stress_at`` connections (``[limits] stress_threshold`` of the maximum, 80 %)
  the listener is under stress until the count falls below ``stress_at`` less a tenth of the
  maximum (so it does not flap at the line). Under stress a session that has not logged in gets
  ``stress_idle_timeout`` (10 s) instead of its protocol's idle timeout: new sessions at once,
  and the ones already open when stress begins have their timers cut (``under_stress``).
  Logging in gives a session its protocol's own timeout back.
- **A share kept for logged-in sessions** (listeners with logins, ``evict``: submission, IMAP,
  POP3; not port 25, where nobody logs in and an evicted session could be a message half
  received). Sessions that have not logged in may fill ``stress_at`` places; the rest of the
  maximum is reachable only by sessions that logged in. When a new connection finds the
  not-logged-in share or the whole maximum full, the *oldest* session that has not logged in is
  closed (``evict``: the protocol's "too many connections" words) to make room, as Dovecot's
  login process does; only when every session has logged in is the new one refused. The oldest
  goes because a client busy logging in is seconds old, while a connection parked to hold a
  place is the oldest. The per-address limit is never met by eviction: beyond it a new
  connection is refused, whoever else is connected.

The TLS handshake (implicit-TLS ports, and after STARTTLS or STLS) runs under the same idle or
stress timeout, and a connection closed before its handshake is done is cut off
``HANDSHAKE_GRACE`` seconds later (``mailhub.tls.HandshakeDeadline``): Twisted's TLS layer would
otherwise hold a timed-out or evicted one open, waiting to deliver the goodbye.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mailhub.config import Limits


class CountedSession(Protocol):
    def evict(self) -> None:
        """Close now, saying why (the listener needs the place)."""

    def under_stress(self) -> None:
        """Stress began: cut the idle timer down to the stress timeout."""


@dataclass(eq=False)
class Slot:
    """One counted connection."""

    address: str
    session: CountedSession | None = None
    authenticated: bool = False
    released: bool = field(default=False, repr=False)


class ConnectionCounter:
    def __init__(
        self,
        max_total: int,
        max_per_address: int,
        *,
        stress_threshold: float = 0.8,
        stress_idle_timeout: float = 10.0,
        evict: bool = False,
    ) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.stress_at = max(1, math.ceil(max_total * stress_threshold))
        # Stress ends below this (hysteresis: a tenth of the maximum, at least one place).
        self.relax_below = max(1, self.stress_at - max(1, max_total // 10))
        self.stress_idle_timeout = stress_idle_timeout
        self.evict = evict
        self.total = 0
        self.by_address: dict[str, int] = {}
        self.stressed = False
        self.evictions = 0  # sessions closed to make room (for tests and metrics)
        self._preauth: OrderedDict[Slot, None] = OrderedDict()  # not logged in, oldest first

    @property
    def preauth(self) -> int:
        """Sessions counted that have not logged in."""
        return len(self._preauth)

    def admit(self, address: str, session: CountedSession | None = None) -> Slot | None:
        """Count a new connection from ``address``; None (and not counted) when refused. May
        evict the oldest session that has not logged in to make room (see the module doc)."""
        per_address = self.by_address.get(address, 0)
        if per_address >= self.max_per_address:
            return None
        victim = None
        if self.total >= self.max_total or (self.evict and self.preauth >= self.stress_at):
            if not self.evict or not self._preauth:
                return None
            victim = next(iter(self._preauth))
            self.release(victim)
            self.evictions += 1
        slot = Slot(address, session)
        self.total += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1
        self._preauth[slot] = None
        self._update_stress()
        if victim is not None and victim.session is not None:
            victim.session.evict()
        return slot

    def release(self, slot: Slot) -> None:
        """A counted connection has closed (or was evicted); a second call does nothing."""
        if slot.released:
            return
        slot.released = True
        self._preauth.pop(slot, None)
        self.total -= 1
        left = self.by_address.get(slot.address, 1) - 1
        if left > 0:
            self.by_address[slot.address] = left
        else:
            self.by_address.pop(slot.address, None)
        self._update_stress()

    def logged_in(self, slot: Slot) -> None:
        """The session logged in: it may use the kept share and is never evicted."""
        if not slot.released:
            slot.authenticated = True
            self._preauth.pop(slot, None)

    def idle_timeout(self, slot: Slot | None, normal: float) -> float:
        """The idle timeout for the session of ``slot`` now: ``normal``, or the stress timeout
        for a session not logged in while the listener is under stress."""
        if slot is not None and not slot.authenticated and self.stressed:
            return min(normal, self.stress_idle_timeout)
        return normal

    def _update_stress(self) -> None:
        if self.stressed:
            if self.total < self.relax_below:
                self.stressed = False
            return
        if self.total >= self.stress_at:
            self.stressed = True
            for slot in list(self._preauth):
                if slot.session is not None:
                    slot.session.under_stress()


def counter_for(limits: Limits, *, evict: bool) -> ConnectionCounter:
    """A listener's counter from ``[limits]``."""
    return ConnectionCounter(
        limits.max_connections,
        limits.max_connections_per_ip,
        stress_threshold=limits.stress_threshold,
        stress_idle_timeout=limits.stress_idle_timeout,
        evict=evict,
    )
