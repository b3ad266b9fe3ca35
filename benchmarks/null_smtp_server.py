#!/usr/bin/env python3
"""Null SMTP server: answers every command at once and throws message data away.

    python3 benchmarks/null_smtp_server.py --port 2526 [--workers W] [--verbose]

Advertises PIPELINING; EHLO/HELO/MAIL/RCPT/RSET/NOOP -> 250, DATA -> 354, end of data -> 250,
QUIT -> 221 and close. Replies to a pipelined group go out in one write. It stores nothing, so
``smtp_load.py`` against it measures the protocol ceiling of the generator plus this server on
this machine. ``--workers W`` forks W processes sharing the port (SO_REUSEPORT) so the server
side is not the narrow end. Listens on 127.0.0.1 only. Standard library only; stops on
SIGINT/SIGTERM and prints how many messages it swallowed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys

EHLO_REPLY = (
    b"250-null.bench.invalid\r\n"
    b"250-PIPELINING\r\n"
    b"250-8BITMIME\r\n"
    b"250-SIZE 104857600\r\n"
    b"250 ENHANCEDSTATUSCODES\r\n"
)
END = b"\r\n.\r\n"


class NullSMTP(asyncio.Protocol):
    messages = 0

    def connection_made(self, transport):
        self.t = transport
        self.buf = b""
        self.in_data = False
        self.tail = b""  # last bytes of message data seen, to find END across reads
        transport.write(b"220 null.bench.invalid ESMTP null\r\n")

    def data_received(self, data):
        out = []
        while data:
            if self.in_data:
                scan = self.tail + data
                k = scan.find(END)
                if k < 0:
                    self.tail = scan[-4:]
                    data = b""
                    break
                data = scan[k + len(END) :]
                self.in_data = False
                NullSMTP.messages += 1
                out.append(b"250 2.0.0 Ok: discarded\r\n")
                continue
            buf = self.buf + data if self.buf else data
            data = b""
            start = 0
            while True:
                end = buf.find(b"\r\n", start)
                if end < 0:
                    self.buf = buf[start:]
                    break
                verb = buf[start : start + 4].upper()
                start = end + 2
                if verb == b"DATA":
                    out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    self.in_data = True
                    self.tail = b"\r\n"  # DATA's own CRLF: an immediate ".\r\n" ends it
                    self.buf = b""
                    data = buf[start:]
                    break
                if verb == b"EHLO":
                    out.append(EHLO_REPLY)
                elif verb == b"QUIT":
                    out.append(b"221 2.0.0 Bye\r\n")
                    self.t.write(b"".join(out))
                    self.t.close()
                    return
                else:
                    out.append(b"250 2.0.0 Ok\r\n")
        if out:
            self.t.write(b"".join(out))


async def serve(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(NullSMTP, sock=sock, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def listener(host: str, port: int, reuse_port: bool) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    s.listen(1024)
    s.setblocking(False)
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=2526)
    ap.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    a = ap.parse_args()
    if not a.host.startswith("127.") and a.host != "::1":
        ap.error("listens on loopback only")
    children = []
    for _ in range(a.workers - 1):
        pid = os.fork()
        if pid == 0:
            asyncio.run(serve(listener(a.host, a.port, True)))
            os._exit(0)
        children.append(pid)
    sock = listener(a.host, a.port, a.workers > 1)
    print(
        f"null SMTP server on {a.host}:{a.port} ({a.workers} worker(s), pid {os.getpid()})",
        flush=True,
    )
    try:
        asyncio.run(serve(sock))
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except OSError:
                pass
        print(f"null SMTP server: {NullSMTP.messages} messages discarded (this worker)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
