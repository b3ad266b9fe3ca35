"""Authentication failure throttling: per client address, per (address, user) and per user.

Protocol-neutral: it sees client addresses and user names as strings and nothing else, so SMTP
AUTH, IMAP LOGIN/AUTHENTICATE, POP3 USER/PASS/AUTH and the web's Basic login share one
``AuthThrottle`` (one per process, so a brute-forcer cannot move between services to reset its
count). ``mailhub.login.guarded_login`` is the one way the protocols use it:

1. **Reserve before checking.** ``begin(address, user)`` returns an ``Attempt`` or None. An
   attempt counts against the address *while* its password is being checked: when the failures
   so far plus the attempts in flight reach ``max_failures``, a new login waits (``released``)
   until one of them is resolved, and is refused once the failures alone reach the limit. So
   150 parallel guesses from one address get at most ``max_failures`` checks, while the
   parallel logins of a client that opens several connections (or of an office behind one NAT
   address) with the right password only wait for the ones before them, a hash each.
2. **Per-user delay.** ``Attempt.delay``: once a user name has ``user_free_failures`` failures
   (from any address) within the window, every further check of
   that user's password waits ``user_base_delay * 2 ** k`` seconds (at most ``user_max_delay``)
   first. A delay, never a lockout: the real user still gets in after it, while one guess each
   from many addresses (the "spread" attack) is slowed down instead of hashed at full speed.
3. **A share of the checks for guesses.** An attempt is *suspect* when its user name or its
   address has failures within the window, or its user name already has
   ``user_free_failures`` attempts in flight. Suspect checks may hold at most
   ``max_suspect_checks`` places at once (the service gives half the hashing queue); beyond,
   ``Attempt.may_check`` says no and the login gets a temporary error, nothing hashed. So a
   flood of guesses cannot fill the hashing queue: a real login, clean, still finds room.
4. **Record.** ``Attempt.failed()`` counts the failure for the address, for the (address, user)
   pair and for the user, and returns the delay before the answer (``base_delay * 2 ** (n - 1)``,
   at most ``max_delay``, n counted per address). ``Attempt.succeeded()`` forgives only the
   failures of *that* user *from that* address (they were the user's own typing): a login with
   the attacker's own account does not clear the address's count of guesses for someone else.
   ``Attempt.abandoned()`` (the check could not be made: busy, cancelled before the check)
   releases the reservation without counting anything.

From ``max_failures`` failures of an address within the window on, the address is refused
(``refused``) until ``window`` seconds pass after its last failure.

Addresses are counted by key: an IPv4 address as itself (also when it arrives IPv4-mapped,
``::ffff:192.0.2.1``, from a dual-stack listener), an IPv6 address by its /64 (``ipv6_prefix``).
A /64 is what one IPv6 site or host gets (RFC 6177, RFC 7421), and a host may pick any address
inside it at will (RFC 8981 temporary addresses), so counting single IPv6 addresses would let one
client reset its count at every attempt. The cost is the IPv4-NAT one: clients sharing a /64 share
a budget. Anything that is not an IP address (a UNIX socket) is counted by its string. User names
are counted case-folded (``user_key``).

Failures expire ``window`` seconds after the last one. Each table is pruned lazily as it is used
and capped at ``max_entries``: beyond it the entry whose last failure is oldest is evicted, so
memory stays bounded whatever a spread-out attacker does (attempts in flight are bounded by the
connection limits).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

K = TypeVar("K")

# Longest user name kept as a key (RFC 5321 4.5.3.1: an address is at most 254 octets).
MAX_USER_KEY = 320


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


def user_key(username: str | bytes) -> str:
    """The key a user name is counted under: decoded, trimmed, case-folded and bounded, so
    ``Bob@Example.COM`` and ``bob@example.com`` share one count."""
    if isinstance(username, bytes):
        username = username.decode("utf-8", "replace")
    return username.strip().casefold()[:MAX_USER_KEY]


class _Entry:
    __slots__ = ("failures", "last")

    def __init__(self, now: float) -> None:
        self.failures = 0
        self.last = now


class _Table(Generic[K]):
    """Failure counts by key, oldest last failure first, expiring and capped (see above)."""

    def __init__(self, what: str, window: float, max_entries: int, log: Logger) -> None:
        self.what, self.window, self.max_entries, self.log = what, window, max_entries, log
        self.entries: OrderedDict[K, _Entry] = OrderedDict()
        self._full = False  # log a full table once, not at every eviction

    def count(self, key: K, now: float) -> int:
        entry = self.entries.get(key)
        if entry is None:
            return 0
        if now - entry.last >= self.window:
            del self.entries[key]
            return 0
        return entry.failures

    def add(self, key: K, now: float) -> int:
        """One more failure for ``key``; its count within the window."""
        self.prune(now)
        entry = self.entries.pop(key, None)
        if entry is None:
            entry = _Entry(now)
        entry.failures += 1
        entry.last = now
        self.entries[key] = entry
        if len(self.entries) > self.max_entries:
            evicted, _ = self.entries.popitem(last=False)
            if not self._full:
                self._full = True
                self.log.warn(
                    "Authentication throttle table of {what} full ({size}): forgetting the "
                    "oldest, starting with {key}",
                    what=self.what,
                    size=self.max_entries,
                    key=evicted,
                )
        elif len(self.entries) < self.max_entries // 2:
            self._full = False
        return entry.failures

    def forgive(self, key: K, n: int, now: float) -> None:
        """Take ``n`` failures off ``key``'s count (forgetting it at zero)."""
        entry = self.entries.get(key)
        if entry is None or n <= 0:
            return
        if now - entry.last >= self.window or entry.failures <= n:
            del self.entries[key]
        else:
            entry.failures -= n

    def pop(self, key: K, now: float) -> int:
        count = self.count(key, now)
        self.entries.pop(key, None)
        return count

    def prune(self, now: float) -> None:
        entries = self.entries
        while entries:
            key, entry = next(iter(entries.items()))
            if now - entry.last < self.window:
                break
            del entries[key]


def _doubling(base: float, n: int, cap: float) -> float:
    # Capping the exponent first keeps 2 ** n small whatever the count.
    return min(base * 2.0 ** min(max(n, 0), 64), cap)


class Attempt:
    """One reserved login attempt (``AuthThrottle.begin``). Resolve it exactly once: with
    ``failed``, ``succeeded`` or ``abandoned`` (later calls do nothing)."""

    __slots__ = ("_checking", "_done", "_throttle", "address", "delay", "suspect", "user")

    def __init__(
        self, throttle: AuthThrottle, address: str, user: str, delay: float, suspect: bool
    ) -> None:
        self._throttle = throttle
        self._done = False
        self._checking = False  # holds one of the suspect checks' places
        self.address = address  # the address key
        self.user = user  # the user key
        self.delay = delay  # seconds to wait before checking the password (per-user delay)
        # A guess, likely: its user name or address has failures, or the user name has many
        # attempts in flight. Such checks may take only max_suspect_checks places.
        self.suspect = suspect

    def may_check(self) -> bool:
        """Just before the password is checked: False if this suspect attempt finds the
        suspect share of the checks taken (then answer "busy" and ``abandoned``)."""
        if not self.suspect or self._checking:
            return True
        t = self._throttle
        if t.max_suspect_checks is not None and t.suspect_checks >= t.max_suspect_checks:
            t.busy_refusals += 1
            return False
        t.suspect_checks += 1
        self._checking = True
        return True

    def failed(self) -> float:
        """The password was wrong: count it. Returns the seconds to wait before answering."""
        if self._done:
            return 0.0
        delay = self._throttle._failed(self.address, self.user)
        self._resolve()  # after counting: waiters must see the failure
        return delay

    def succeeded(self) -> None:
        """The login succeeded: forgive this user's failures from this address only."""
        if not self._done:
            self._throttle._succeeded(self.address, self.user)
            self._resolve()

    def abandoned(self) -> None:
        """No password was checked (or its result is unknown): count nothing."""
        if not self._done:
            self._resolve()

    def _resolve(self) -> None:
        self._done = True
        if self._checking:
            self._checking = False
            self._throttle.suspect_checks -= 1
        self._throttle._release(self.address, self.user)


class AuthThrottle:
    """Counts authentication failures (see the module docstring).

    The n-th failure of an address within ``window`` is answered after ``base_delay * 2 ** (n -
    1)`` seconds, at most ``max_delay``; from ``max_failures`` failures on, the address is
    refused until ``window`` seconds pass without a failure, and until then its attempts in
    flight count against that limit (``begin``).
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
        user_free_failures: int = 3,
        user_base_delay: float = 1.0,
        user_max_delay: float = 15.0,
        max_suspect_checks: int | None = None,
        log: Logger | None = None,
    ) -> None:
        if max_failures < 1 or max_entries < 1 or window <= 0:
            raise ValueError("max_failures and max_entries must be >= 1, window > 0")
        if user_free_failures < 0:
            raise ValueError("user_free_failures must not be negative")
        if min(base_delay, max_delay, user_base_delay, user_max_delay) < 0:
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
        self.user_free_failures = user_free_failures
        self.user_base_delay = user_base_delay
        self.user_max_delay = user_max_delay
        self.log = log if log is not None else Logger(namespace="mailhub.throttle")
        self._addresses: _Table[str] = _Table("addresses", window, max_entries, self.log)
        self._pairs: _Table[tuple[str, str]] = _Table("users by address", window, max_entries,
                                                      self.log)  # fmt: skip
        self._users: _Table[str] = _Table("users", window, max_entries, self.log)
        # Attempts reserved and not yet resolved, and logins waiting for one, by address key.
        self._in_flight: dict[str, int] = {}
        self._waiters: dict[str, list[Deferred[None]]] = {}
        self._user_in_flight: dict[str, int] = {}
        self.refusals = 0  # attempts refused by ``begin`` (for tests and metrics)
        # Suspect checks running (Attempt.may_check), their maximum (None: no maximum, the
        # service gives half the hashing queue) and the attempts refused for it.
        self.max_suspect_checks = max_suspect_checks
        self.suspect_checks = 0
        self.busy_refusals = 0

    def __len__(self) -> int:
        """Addresses with failures counted now."""
        self._addresses.prune(self._clock.seconds())
        return len(self._addresses.entries)

    def key(self, address: str) -> str:
        return address_key(address, self.ipv6_prefix)

    # --- reading ------------------------------------------------------------------------------

    def failures(self, address: str) -> int:
        """Failures counted for ``address`` (its key) within the window."""
        return self._addresses.count(self.key(address), self._clock.seconds())

    def user_failures(self, username: str | bytes) -> int:
        """Failures counted for a user name, from all addresses, within the window."""
        return self._users.count(user_key(username), self._clock.seconds())

    def pair_failures(self, address: str, username: str | bytes) -> int:
        return self._pairs.count((self.key(address), user_key(username)), self._clock.seconds())

    def in_flight(self, address: str) -> int:
        """Attempts from ``address`` reserved and not yet resolved."""
        return self._in_flight.get(self.key(address), 0)

    def waiting(self, address: str) -> int:
        """Logins from ``address`` waiting for one of its attempts in flight (``released``)."""
        return len(self._waiters.get(self.key(address), ()))

    def refused(self, address: str) -> bool:
        """True once ``address`` has ``max_failures`` failures within the window: refuse it
        (protocols ask this before they even read a password)."""
        return self.failures(address) >= self.max_failures

    # --- one attempt ----------------------------------------------------------------------------

    def begin(self, address: str, username: str | bytes) -> Attempt | None:
        """Reserve an attempt for ``username`` from ``address``, or None: check nothing now.
        None means either that the address is ``refused``, or that its attempts in flight
        could still use up what it has left; then wait for ``released`` and ask again."""
        key, now = self.key(address), self._clock.seconds()
        failures = self._addresses.count(key, now)
        if failures + self._in_flight.get(key, 0) >= self.max_failures:
            if failures >= self.max_failures:
                self.refusals += 1
            return None
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        user = user_key(username)
        pending = self._user_in_flight.get(user, 0)
        self._user_in_flight[user] = pending + 1
        n = self._users.count(user, now)
        delay = 0.0
        if n >= self.user_free_failures:
            delay = _doubling(self.user_base_delay, n - self.user_free_failures,
                              self.user_max_delay)  # fmt: skip
        suspect = n > 0 or failures > 0 or pending >= max(self.user_free_failures, 1)
        return Attempt(self, key, user, delay, suspect)

    def released(self, address: str) -> Deferred[None]:
        """Fires when an attempt in flight from ``address`` is resolved (cancellable)."""
        key = self.key(address)
        waiters = self._waiters.setdefault(key, [])

        def cancel(d: Deferred[None]) -> None:
            if d in waiters:
                waiters.remove(d)
                if not waiters and self._waiters.get(key) is waiters:
                    del self._waiters[key]

        d: Deferred[None] = Deferred(cancel)
        waiters.append(d)
        return d

    def _release(self, key: str, user: str) -> None:
        for table, k in ((self._in_flight, key), (self._user_in_flight, user)):
            left = table.get(k, 1) - 1
            if left > 0:
                table[k] = left
            else:
                table.pop(k, None)
        # Everyone waiting asks again (those who find no room wait again, or are refused).
        for d in self._waiters.pop(key, ()):
            d.callback(None)

    def _failed(self, key: str, user: str | None) -> float:
        now = self._clock.seconds()
        failures = self._addresses.add(key, now)
        if user is not None:
            self._pairs.add((key, user), now)
            self._users.add(user, now)
        if failures == self.max_failures:
            self.log.info(
                "{failures} authentication failures from {key}: refusing it for {window}s",
                failures=failures,
                key=key,
                window=self.window,
            )
        return _doubling(self.base_delay, failures - 1, self.max_delay)

    def _succeeded(self, key: str, user: str) -> None:
        now = self._clock.seconds()
        own = self._pairs.pop((key, user), now)
        self._addresses.forgive(key, own, now)
        self._users.forgive(user, own, now)

    # --- without a user name --------------------------------------------------------------------

    def failure(self, address: str) -> float:
        """Record a failed login from ``address`` outside an attempt (no user name known); the
        seconds to wait before replying."""
        return self._failed(self.key(address), None)
