"""Idle SMTP sessions kept for the next message to the same destination.

Without this every relayed message paid a new TCP connection, EHLO and a full TLS handshake
(measured: the relay ran at half the inbound rate with STARTTLS). A session that finished a
transaction in step with its peer waits here, per key (address, port, TLS and AUTH settings),
for at most ``idle_timeout`` seconds; the next delivery to that key takes it, checks it with
RSET (RFC 5321 4.1.1.5) and sends the next transaction. A session is closed with QUIT when it
has waited long enough, carried ``max_messages`` transactions, has been open ``max_age``
seconds, or the pool already holds ``max_idle`` for its key.

The pool never opens connections: a session is only created when a delivery finds none idle,
so the sessions to a destination never outnumber its simultaneous deliveries (the queue's
``max_per_destination``). Timers run on an injected clock.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from mailhub.relay.client import SMTPClientProtocol


class ConnectionPool:
    def __init__(
        self,
        clock: IReactorTime,
        *,
        idle_timeout: float = 5.0,
        max_idle: int = 16,
        max_messages: int = 100,
        max_age: float = 300.0,
        close_grace: float = 5.0,
    ) -> None:
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.max_messages = max_messages
        self.max_age = max_age
        self.close_grace = close_grace
        # Most recently used last: take() reuses the freshest, so a surplus ages out.
        self._idle: dict[Hashable, list[tuple[SMTPClientProtocol, IDelayedCall]]] = {}
        self._watched: weakref.WeakSet[SMTPClientProtocol] = weakref.WeakSet()
        self._quitting: dict[Deferred[None], SMTPClientProtocol] = {}
        self._closed = False

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._idle.values())

    def take(self, key: Hashable) -> SMTPClientProtocol | None:
        """An idle session for ``key`` (now no longer idle), or None."""
        entries = self._idle.get(key)
        while entries:
            conn, timer = entries.pop()
            if timer.active():
                timer.cancel()
            if not entries:
                del self._idle[key]
            conn.idle = False
            if conn.usable:
                return conn
            self._retire(conn)
        return None

    def put(self, key: Hashable, conn: SMTPClientProtocol) -> None:
        """A session that finished a transaction: keep it for the next or close it."""
        entries = self._idle.get(key, [])
        if (
            self._closed
            or not conn.usable
            or conn.transactions >= self.max_messages
            or self.clock.seconds() - conn.connected_at >= self.max_age
            or len(entries) >= self.max_idle
        ):
            self._retire(conn)
            return
        conn.idle = True
        timer = self.clock.callLater(self.idle_timeout, self._expire, key, conn)
        entries.append((conn, timer))
        self._idle[key] = entries
        if conn not in self._watched:
            self._watched.add(conn)
            conn.when_closed().addCallback(lambda _: self._forget(key, conn))

    def discard(self, conn: SMTPClientProtocol) -> None:
        """A session taken from the pool that will not be used again: QUIT if still open."""
        self._retire(conn)

    def close(self) -> Deferred[None]:
        """QUIT every idle session (and any returned later); fires when all are closed. A
        peer that does not answer within ``close_grace`` seconds is cut off: a server shutting
        down does not wait the 30 s QUIT timeout for it."""
        self._closed = True
        for key in list(self._idle):
            for conn, timer in self._idle.pop(key):
                if timer.active():
                    timer.cancel()
                self._retire(conn)
        if not self._quitting:
            return defer.succeed(None)
        late = self.clock.callLater(self.close_grace, self._abort_quitting)
        done = defer.DeferredList(list(self._quitting))

        def finished(_: object) -> None:
            if late.active():
                late.cancel()

        return done.addCallback(finished)

    # --- inside ---------------------------------------------------------------------------

    def _expire(self, key: Hashable, conn: SMTPClientProtocol) -> None:
        entries = self._idle.get(key, [])
        for i, (c, _) in enumerate(entries):
            if c is conn:
                del entries[i]
                break
        if not entries:
            self._idle.pop(key, None)
        self._retire(conn)

    def _forget(self, key: Hashable, conn: SMTPClientProtocol) -> None:
        """The peer closed an idle session (its own idle timeout, a restart ...)."""
        entries = self._idle.get(key)
        if not entries:
            return
        for i, (c, timer) in enumerate(entries):
            if c is conn:
                if timer.active():
                    timer.cancel()
                del entries[i]
                break
        if not entries:
            del self._idle[key]

    def _retire(self, conn: SMTPClientProtocol) -> None:
        conn.idle = False
        d: Deferred[None] = Deferred.fromCoroutine(conn.quit())
        if d.called:
            return
        self._quitting[d] = conn
        d.addBoth(lambda _: self._quitting.pop(d, None))

    def _abort_quitting(self) -> None:
        for conn in list(self._quitting.values()):
            conn.abort("no reply to QUIT while shutting down")
