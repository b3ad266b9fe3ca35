#!/usr/bin/env python3
"""Does the server's memory stay flat while it takes a 100 MiB message, and while many idle
connections are open? (issue 16: "RSS flat (+-10 MiB) while taking a 100 MiB message by SMTP,
APPEND and while 1,000 idle connections are open").

mailhub runs as its own process (this script with ``--serve``: the dev stack with SMTP, IMAP and
IMAPS listeners on 127.0.0.1, its self-signed certificate, any password logs in, the inbound
checks and the dev stack's retention off, ``[limits] max_message_size`` raised to hold the
message, the connection limits raised for the idle connections). Then, one after the other:

- ``smtp``: one message of ``--size`` MiB by SMTP (EHLO, MAIL, RCPT, DATA), sent in 256 KiB
  writes;
- ``append``: IMAP APPEND of the same message as a synchronising literal ``{n}`` (RFC 3501),
  plain TCP;
- ``append-tls``: the same over IMAPS;
- ``append-literal+``: the same as a non-synchronising literal ``{n+}`` (RFC 7888 LITERAL+):
  no continuation, the octets follow the command line at once;
- ``idle-smtp``, ``idle-imap``, ``idle-imaps``: ``--idle`` connections opened and left idle
  (the SMTP ones after the greeting and EHLO, the IMAP ones after the greeting, the IMAPS ones
  after the TLS handshake and the greeting), held for ``--hold`` seconds.

For each step the server's RSS (VmRSS of /proc/PID/status) is read before it, every 10 ms while
it runs (the peak is kept), and after it (once the answer came, or the idle connections were
closed, and ``--settle`` seconds later). "Flat" is a peak within 10 MiB of the RSS before.

    python3 benchmarks/memory_flat.py                 # 100 MiB, 1,000 idle connections
    python3 benchmarks/memory_flat.py --size 20 --idle 200 --steps smtp,append

Prints one row per step and ``uptime``; --json for JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# the process helpers of the IDLE benchmarks beside this file
from idle_10k import raise_nofile
from idle_latency import free_ports, wait_for_port

MiB = 1024 * 1024
DOMAIN = "localhost"  # the dev stack's default domain is its host name
USER = f"mem@{DOMAIN}"
STEPS = (
    "smtp", "append", "append-tls", "append-literal+", "idle-smtp", "idle-imap", "idle-imaps"
)  # fmt: skip


# --- the server ----------------------------------------------------------------------------


def serve(data_dir: str, smtp: int, imap: int, imaps: int, max_size: int, conns: int) -> None:
    raise_nofile()
    from benchserve import dev_stack, start
    from twisted.internet import reactor

    limits = {
        "max_message_size": max_size,
        "max_connections": conns,
        "max_connections_per_ip": conns,  # every client comes from 127.0.0.1
    }
    start(dev_stack(data_dir, smtp=smtp, imap=imap, imaps=imaps, keep_all=True, limits=limits))
    reactor.run()  # type: ignore[attr-defined]


# --- memory --------------------------------------------------------------------------------


def rss(pid: int) -> int:
    """VmRSS of ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no VmRSS")


class Sampler:
    """Reads the server's RSS every ``interval`` seconds in a thread; ``peak`` is the highest."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss(self.pid))


# --- the message ---------------------------------------------------------------------------


def message_chunks(size: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    """A ``size``-octet message (CRLF lines, none starting with "."), in pieces: the client
    never holds it whole either."""
    head = f"From: <bench@example.net>\r\nTo: <{USER}>\r\nSubject: big\r\n\r\n".encode()
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab\r\n"
    block = line * (chunk // len(line))
    yield head
    left = size - len(head)
    while left > 0:
        piece = block[: min(left, len(block))]
        if len(piece) == left and not piece.endswith(b"\r\n"):
            piece = piece[:-2] + b"\r\n"  # the message ends with a line end
        yield piece
        left -= len(piece)


class Lines:
    """Reads CRLF lines from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise SystemExit(f"connection closed; had {self.buf!r}")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"


# --- the steps -----------------------------------------------------------------------------


def smtp_reply(lines: Lines) -> bytes:
    while True:
        line = lines.line()
        if line[3:4] != b"-":
            if line[:1] not in (b"2", b"3"):
                raise SystemExit(f"SMTP: {line!r}")
            return line


def smtp_big(port: int, size: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    lines = Lines(sock)
    smtp_reply(lines)
    for cmd in ("EHLO bench", "MAIL FROM:<bench@example.net>", f"RCPT TO:<{USER}>", "DATA"):
        sock.sendall(cmd.encode() + b"\r\n")
        smtp_reply(lines)
    for piece in message_chunks(size):
        sock.sendall(piece)
    sock.sendall(b".\r\n")
    smtp_reply(lines)
    sock.sendall(b"QUIT\r\n")
    sock.close()


def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the dev stack's self-signed certificate
    return ctx


def imap_tagged(lines: Lines, tag: bytes) -> bytes:
    while True:
        line = lines.line()
        if line.startswith(tag + b" "):
            if not line.startswith(tag + b" OK"):
                raise SystemExit(f"IMAP: {line!r}")
            return line


def imap_append(port: int, size: int, *, tls: bool, nonsync: bool) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    if tls:
        sock = client_context().wrap_socket(sock)
    lines = Lines(sock)
    lines.line()  # greeting
    sock.sendall(f"a LOGIN {USER} any\r\n".encode())
    imap_tagged(lines, b"a")
    plus = "+" if nonsync else ""
    sock.sendall(f"b APPEND INBOX {{{size}{plus}}}\r\n".encode())
    if not nonsync:
        cont = lines.line()
        if not cont.startswith(b"+"):
            raise SystemExit(f"IMAP APPEND: {cont!r}")
    for piece in message_chunks(size):
        sock.sendall(piece)
    sock.sendall(b"\r\n")
    imap_tagged(lines, b"b")
    sock.sendall(b"c LOGOUT\r\n")
    sock.close()


def idle_connections(
    port: int,
    count: int,
    hold: float,
    greet: Callable[[socket.socket], None],
    ctx: ssl.SSLContext | None = None,
) -> None:
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port))
            if ctx is not None:
                s = ctx.wrap_socket(s)
            greet(s)
            socks.append(s)
        time.sleep(hold)
    finally:
        for s in socks:
            s.close()


def smtp_greet(s: socket.socket) -> None:
    lines = Lines(s)
    smtp_reply(lines)
    s.sendall(b"EHLO idle\r\n")
    smtp_reply(lines)


def imap_greet(s: socket.socket) -> None:
    Lines(s).line()


def stored(data: Path, size: int) -> int:
    """Messages of at least ``size`` octets in the user's Maildir (SMTP adds its headers)."""
    maildir = data / "mail" / DOMAIN / USER.split("@")[0]
    return sum(
        1 for sub in ("new", "cur") if (maildir / sub).is_dir()
        for f in (maildir / sub).iterdir() if f.stat().st_size >= size
    )  # fmt: skip


def run_step(
    name: str, pid: int, ports: dict[str, int], data: Path, args: argparse.Namespace
) -> dict[str, object]:
    size = args.size * MiB
    actions: dict[str, Callable[[], None]] = {
        "smtp": lambda: smtp_big(ports["smtp"], size),
        "append": lambda: imap_append(ports["imap"], size, tls=False, nonsync=False),
        "append-tls": lambda: imap_append(ports["imaps"], size, tls=True, nonsync=False),
        "append-literal+": lambda: imap_append(ports["imap"], size, tls=False, nonsync=True),
        "idle-smtp": lambda: idle_connections(ports["smtp"], args.idle, args.hold, smtp_greet),
        "idle-imap": lambda: idle_connections(ports["imap"], args.idle, args.hold, imap_greet),
        "idle-imaps": lambda: idle_connections(
            ports["imaps"], args.idle, args.hold, imap_greet, client_context()
        ),
    }
    big = stored(data, size)
    before = rss(pid)
    t0 = time.perf_counter()
    with Sampler(pid) as sampler:
        actions[name]()
    seconds = time.perf_counter() - t0
    done = rss(pid)
    if not name.startswith("idle") and stored(data, size) != big + 1:
        raise SystemExit(f"{name}: the message is not in the mailbox")
    time.sleep(args.settle)
    after = rss(pid)
    return {
        "step": name,
        "seconds": seconds,
        "before_mib": before / MiB,
        "peak_mib": sampler.peak / MiB,
        "done_mib": done / MiB,
        "after_mib": after / MiB,
        "peak_growth_mib": (sampler.peak - before) / MiB,
        "flat": sampler.peak - before <= 10 * MiB,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=100, help="MiB of the big message")
    p.add_argument("--idle", type=int, default=1000, help="idle connections per idle step")
    p.add_argument("--hold", type=float, default=2.0, help="seconds the idle ones stay open")
    p.add_argument("--settle", type=float, default=1.0, help="seconds before the after figure")
    p.add_argument(
        "--steps", default=",".join(STEPS), help="comma-separated, from: " + " ".join(STEPS)
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--serve", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        data, smtp, imap, imaps, size, conns = args.serve
        serve(data, int(smtp), int(imap), int(imaps), int(size), int(conns))
        return
    steps = [s for s in args.steps.split(",") if s]
    for s in steps:
        if s not in STEPS:
            raise SystemExit(f"unknown step {s!r} (from: {' '.join(STEPS)})")
    raise_nofile()
    data = Path(tempfile.mkdtemp(prefix="mailhub-bench-memory-"))
    smtp, imap, imaps = free_ports(3)
    ports = {"smtp": smtp, "imap": imap, "imaps": imaps}
    serve_args = [str(data), str(smtp), str(imap), str(imaps)]
    serve_args += [str((args.size + 10) * MiB), str(args.idle + 100)]
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", *serve_args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = []
    try:
        for port in ports.values():
            wait_for_port(port, proc)
        # A first small message by each path, so what the first use loads (modules, the
        # mailbox, TLS) is in the RSS before the first step, not counted as its growth.
        imap_append(imaps, 1000, tls=True, nonsync=False)
        smtp_big(smtp, 1000)
        time.sleep(args.settle)
        if not args.json:
            print(f"{args.size} MiB message, {args.idle} idle connections; RSS of the server, MiB")
            print(
                f"{'step':16} {'seconds':>8} {'before':>8} {'peak':>8} {'done':>8} {'after':>8}"
                f" {'growth':>8}  flat (<= 10 MiB)"
            )
        for name in steps:
            r = run_step(name, proc.pid, ports, data, args)
            results.append(r)
            if not args.json:
                print(
                    f"{name:16} {r['seconds']:>8.1f} {r['before_mib']:>8.1f} {r['peak_mib']:>8.1f}"
                    f" {r['done_mib']:>8.1f} {r['after_mib']:>8.1f} {r['peak_growth_mib']:>+8.1f}"
                    f"  {'yes' if r['flat'] else 'NO'}"
                )
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data, ignore_errors=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.json:
        print(json.dumps({"results": results, "load": load}))
    else:
        print(f"load average: {load}")


if __name__ == "__main__":
    main()
