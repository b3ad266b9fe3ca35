"""Authentication failure throttling per client address: growing delays, then disconnect.

Protocol-neutral: it sees client addresses as strings and nothing else, so SMTP AUTH (587/465),
and later IMAP LOGIN/AUTHENTICATE and POP3 USER/PASS/AUTH, can share one ``AuthThrottle`` (one per
process, so a brute-forcer cannot move between services to reset its count).

How a login handler uses it:

1. Before checking credentials: ``if throttle.should_disconnect(addr)``, answer ``421 4.7.0`` and
   close without checking the password. This is what bounds the guess rate: without it, parallel
   connections each waiting out their delay would still guess ``max_connections_per_ip`` times
   per ``max_delay``.
2. On a failed login: ``d = throttle.delay_reply(addr)`` records the failure and fires after the
   delay with True (answer ``421 4.7.0`` and close) or False (answer ``535 5.7.8``). Cancel ``d``
   in ``connectionLost``. (``failure(addr)`` returns the delay for a caller that waits itself.)
3. On success: ``throttle.success(addr)``.

Addresses are counted by key: an IPv4 address as itself (also when it arrives IPv4-mapped,
``::ffff:192.0.2.1``, from a dual-stack listener), an IPv6 address by its /64 (``ipv6_prefix``).
A /64 is what one IPv6 site or host gets (RFC 6177, RFC 7421), and a host may pick any address
inside it at will (RFC 8981 temporary addresses), so counting single IPv6 addresses would let one
client reset its count at every attempt. The cost is the IPv4-NAT one: clients sharing a /64 share
a budget. Anything that is not an IP address (a UNIX socket) is counted by its string.

Failures expire ``window`` seconds after the last one. The table is pruned lazily as it is used and
capped at ``max_entries``: beyond it the entry whose last failure is oldest is evicted, so memory
stays bounded whatever a spread-out attacker does.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger


def address_key(address: str, ipv6_prefix: int = 64) -> str:
    """The key ``address`` is counted under (see the module docstring)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return address
    if ip.version == 6:
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        net = ipaddress.IPv6Network((ip, ipv6_prefix), strict=False)
        return str(net)
    return str(ip)


class _Entry:
    __slots__ = ("failures", "last")

    def __init__(self, now: float) -> None:
        self.failures = 0
        self.last = now


class AuthThrottle:
    """Counts authentication failures per client address (see the module docstring).

    The n-th failure within ``window`` is answered after ``base_delay * 2 ** (n - 1)`` seconds,
    at most ``max_delay``; from the ``max_failures``-th on, the client is disconnected and refused
    until ``window`` seconds pass without a failure (or a login from that address succeeds).
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        max_failures: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 15.0,
        window: float = 900.0,
        max_entries: int = 100_000,
        ipv6_prefix: int = 64,
        log: Logger | None = None,
    ) -> None:
        if max_failures < 1 or max_entries < 1 or window <= 0:
            raise ValueError("max_failures and max_entries must be >= 1, window > 0")
        if base_delay < 0 or max_delay < 0:
            raise ValueError("delays must not be negative")
        if not 0 <= ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be between 0 and 128")
        self._clock = clock
        self.max_failures = max_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.window = window
        self.max_entries = max_entries
        self.ipv6_prefix = ipv6_prefix
        self.log = log if log is not None else Logger(namespace="mailhub.throttle")
        # Oldest last failure first: every failure moves its entry to the end.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._full = False  # log a full table once, not at every eviction

    def __len__(self) -> int:
        self._prune(self._clock.seconds())
        return len(self._entries)

    def key(self, address: str) -> str:
        return address_key(address, self.ipv6_prefix)

    def failures(self, address: str) -> int:
        """Failures counted for ``address`` (its key) within the window."""
        entry = self._live(self.key(address))
        return entry.failures if entry is not None else 0

    def failure(self, address: str) -> float:
        """Record a failed login from ``address``; returns the seconds to wait before replying."""
        now = self._clock.seconds()
        self._prune(now)
        key = self.key(address)
        entry = self._entries.pop(key, None)
        if entry is None:
            entry = _Entry(now)
        entry.failures += 1
        entry.last = now
        self._entries[key] = entry
        if len(self._entries) > self.max_entries:
            evicted, _ = self._entries.popitem(last=False)
            if not self._full:
                self._full = True
                self.log.warn(
                    "Authentication throttle table full ({size} addresses): forgetting the "
                    "oldest, starting with {key}",
                    size=self.max_entries,
                    key=evicted,
                )
        elif len(self._entries) < self.max_entries // 2:
            self._full = False
        if entry.failures == self.max_failures:
            self.log.info(
                "{failures} authentication failures from {key}: refusing it for {window}s",
                failures=entry.failures,
                key=key,
                window=self.window,
            )
        return self._delay(entry.failures)

    def should_disconnect(self, address: str) -> bool:
        """True once ``address`` has ``max_failures`` failures within the window."""
        return self.failures(address) >= self.max_failures

    def success(self, address: str) -> None:
        """A login from ``address`` succeeded: forget its failures."""
        self._entries.pop(self.key(address), None)

    def delay_reply(self, address: str) -> Deferred[bool]:
        """Record a failure; fires after its delay with ``should_disconnect`` as of now.

        True: answer ``421 4.7.0`` and close; False: answer ``535 5.7.8``. Cancelling the Deferred
        (the connection went away) cancels the timer.
        """
        delay = self.failure(address)
        disconnect = self.should_disconnect(address)
        return deferLater(self._clock, delay, lambda: disconnect)

    def _delay(self, failures: int) -> float:
        # Capping the exponent first keeps 2 ** n small whatever the count.
        exponent = min(failures - 1, 64)
        return min(self.base_delay * 2.0**exponent, self.max_delay)

    def _live(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and self._clock.seconds() - entry.last >= self.window:
            del self._entries[key]
            return None
        return entry

    def _prune(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if now - entry.last < self.window:
                break
            del entries[key]
