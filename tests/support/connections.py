"""Wait for a server's connections to end on the event itself (each connectionLost), not by
looking at counters on a timer."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed

# A safety net only: a wait ends when the last connection is lost.
TIMEOUT = 30.0


class ConnectionWatch:
    """Counts the connections that listening ``ports`` accept from now on and tells when none
    is left. Each port's factory builds protocols whose ``connectionLost`` reports here (for
    TLS ports: the TLS wrapper's, which the transport calls)."""

    def __init__(self, ports: Iterable[Any]) -> None:
        self.open = 0
        self._idle: list[Deferred[None]] = []
        for port in ports:
            self._watch(port.factory)

    def _watch(self, factory: Any) -> None:
        build = factory.buildProtocol

        def tracked(addr: Any) -> Any:
            protocol = build(addr)
            if protocol is not None:
                self._opened(protocol)
            return protocol

        factory.buildProtocol = tracked

    def _opened(self, protocol: Any) -> None:
        self.open += 1
        lost = protocol.connectionLost

        def connection_lost(reason: Any = None) -> Any:
            try:
                return lost(reason)
            finally:
                self._closed()

        protocol.connectionLost = connection_lost

    def _closed(self) -> None:
        self.open -= 1
        if self.open == 0:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    def idle(self, timeout: float = TIMEOUT) -> Deferred[None]:
        """Fires once no accepted connection is open (at once if none is)."""
        if self.open == 0:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d.addTimeout(timeout, reactor)  # type: ignore[arg-type]


def closed_by_server(sock: socket.socket) -> bool:
    """Block (in a thread) until the server closes ``sock``: True, or False if the socket's own
    timeout passed first (then nothing closed it). The socket is closed either way."""
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    finally:
        sock.close()
    return True
