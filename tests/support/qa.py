"""A real service and a raw socket client for the QA tests that send what no polite client would."""

from __future__ import annotations

import socket
import time
from typing import Any

from twisted.internet import defer

from mailhub.config import ListenersConfig
from tests.support.connections import ConnectionWatch
from tests.support.service import LOOPBACK_ANY_PORT, ServiceTestCase

TIMEOUT = 10.0


class RawClient:
    """A blocking line client: sends bytes as given, reads whole lines back."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float, waiting_for: str) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"hang: no {waiting_for} within {TIMEOUT} s; got {self.buf!r}")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            raise AssertionError(f"connection dropped before {waiting_for}; got {self.buf!r}")
        self.buf += data

    def line(self) -> bytes:
        """The next line, with its CRLF."""
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in self.buf:
            self._fill(deadline, "a line")
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def until(self, prefix: bytes) -> list[bytes]:
        """Lines up to and including the first one starting with ``prefix``."""
        lines = []
        while True:
            lines.append(self.line())
            if lines[-1].startswith(prefix):
                return lines

    def tagged(self, command: bytes) -> bytes:
        """Send an IMAP command (CRLF added); the tagged reply line (untagged ones skipped)."""
        self.send(command + b"\r\n")
        tag = command.split(b" ", 1)[0]
        return self.until(tag + b" ")[-1]

    def closed_by_server(self) -> bool:
        """True when the server closes the connection within a few seconds."""
        self.sock.settimeout(3)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


class QATestCase(ServiceTestCase):
    """The dev stack with IMAP, POP3 and the web API on loopback ports; raw clients to them."""

    def setUp(self) -> None:
        listeners = ListenersConfig(
            smtp=(LOOPBACK_ANY_PORT,),
            imap=(LOOPBACK_ANY_PORT,),
            pop3=(LOOPBACK_ANY_PORT,),
            web=(LOOPBACK_ANY_PORT,),
        )
        service = self.start(listeners=listeners)
        kinds = ("smtp", "imap", "pop3", "web")
        self.connections = ConnectionWatch(p for k in kinds for p in service.listening_ports(k))
        # Cleanups run last-in first-out: clients close, then this waits for the server side.
        self.addCleanup(self.server_connections_closed)

    def server_connections_closed(self) -> defer.Deferred[None]:
        """Fires when the server has seen every client go away."""
        return self.connections.idle()

    def raw(self, listener: str) -> RawClient:
        client = RawClient(self.port(listener))
        self.addCleanup(client.close)
        return client

    def imap(self, select: bytes | None = b"INBOX") -> RawClient:
        """A logged-in IMAP client (any login works in the dev stack), INBOX selected."""
        client = self.raw("imap")
        assert client.line().startswith(b"* OK"), "no greeting"
        assert client.tagged(b"L LOGIN qa@example.com pw").startswith(b"L OK")
        if select is not None:
            assert client.tagged(b"S SELECT " + select).startswith(b"S OK")
        return client

    def run_client(self, f: Any) -> defer.Deferred[Any]:
        return self.in_thread(f)

    def deliver(self, to: str = "qa@example.com", count: int = 1) -> defer.Deferred[None]:
        def send() -> None:
            with self.smtp() as smtp:
                for i in range(count):
                    smtp.sendmail(
                        "a@example.net", [to], f"Subject: qa {i}\r\n\r\nbody {i}\r\n".encode()
                    )

        return self.in_thread(send)
