#!/usr/bin/env python3
"""How soon an IMAP IDLE client hears of new mail: from the SMTP 250 to each ``* n EXISTS``.

mailhub runs as its own process (this script with ``--serve``: the dev stack with SMTP and IMAP
listeners on 127.0.0.1, any password logs in). The script opens ``--sessions`` IMAP connections
over real sockets, each LOGIN, SELECT INBOX and IDLE on one mailbox, then delivers ``--rounds``
messages one after the other by SMTP to that mailbox. For each message it notes when the 250
after DATA arrived and when each session read its ``* n EXISTS``; the latency is the difference
(both read by this one asyncio process, so on one clock). After each round it waits until every
session has heard, and ``--pause`` to twice that (random) more.

``--via file`` delivers by writing the message into the mailbox's Maildir from this process
(tmp/, then link() into new/), as another program on the host would: the server can learn of it
only through inotify (or its timed scan). The latency is then counted from the link().

``--pythonpath DIR`` runs the server from another checkout (an older version, for comparison).

    python3 benchmarks/idle_latency.py --sessions 50 --rounds 40
    python3 benchmarks/idle_latency.py --via file

Prints p50/p99/max in milliseconds and the load average (``uptime``); --results appends a JSON
line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

USER = "idle@localhost"  # the dev stack's default domain is its host name


def serve(data_dir: str, smtp_port: int, imap_port: int) -> None:
    """The dev stack with SMTP and IMAP listeners only, on 127.0.0.1."""
    from benchserve import dev_stack, start
    from twisted.internet import reactor

    start(dev_stack(data_dir, smtp=smtp_port, imap=imap_port))
    reactor.run()  # type: ignore[attr-defined]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now (all held open together, then let go for the server)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


class Session:
    """One IDLE connection; ``heard[n]`` is when it read ``* n EXISTS``."""

    def __init__(self) -> None:
        self.heard: dict[int, float] = {}
        self.changed = asyncio.Event()

    async def start(self, port: int, number: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        await self.reader.readline()  # greeting
        await self.command(f"a LOGIN {USER} any")
        await self.command("b SELECT INBOX")
        self.writer.write(b"c IDLE\r\n")
        while not (await self.reader.readline()).startswith(b"+"):
            pass
        self.task = asyncio.ensure_future(self.listen())

    async def command(self, line: str) -> None:
        tag = line.split()[0].encode()
        self.writer.write(line.encode() + b"\r\n")
        while True:
            got = await self.reader.readline()
            if not got:
                raise SystemExit("the server closed an IMAP connection")
            if got.startswith(tag + b" "):
                if not got.startswith(tag + b" OK"):
                    raise SystemExit(f"IMAP {line!r}: {got!r}")
                return

    async def listen(self) -> None:
        while line := await self.reader.readline():
            now = time.perf_counter()
            parts = line.split()
            if len(parts) == 3 and parts[0] == b"*" and parts[2] == b"EXISTS":
                self.heard[int(parts[1])] = now
                self.changed.set()

    async def wait_for(self, n: int) -> None:
        while max(self.heard, default=0) < n:
            self.changed.clear()
            await self.changed.wait()


async def smtp_deliver(port: int, n: int) -> float:
    """One message by SMTP; when its 250 (after DATA) was read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                if line[:1] not in (b"2", b"3"):
                    raise SystemExit(f"SMTP: {line!r}")
                return line

    await reply()
    for line in ("EHLO bench", "MAIL FROM:<bench@example.net>", f"RCPT TO:<{USER}>", "DATA"):
        writer.write(line.encode() + b"\r\n")
        await reply()
    writer.write(f"Subject: idle {n}\r\n\r\nhello\r\n.\r\n".encode())
    await reply()
    at = time.perf_counter()
    writer.write(b"QUIT\r\n")
    writer.close()
    return at


def file_deliver(maildir: Path, n: int) -> float:
    """One message put into new/ by this process, as another program would; when link()ed."""
    name = f"{int(time.time())}.M{n}P{os.getpid()}Q{n}.bench"
    tmp = maildir / "tmp" / name
    tmp.write_bytes(f"Subject: idle {n}\r\n\r\nhello\r\n".encode())
    os.link(tmp, maildir / "new" / name)
    at = time.perf_counter()
    os.unlink(tmp)
    return at


async def measure(args: argparse.Namespace, smtp: int, imap: int, data: Path) -> list[float]:
    sessions = [Session() for _ in range(args.sessions)]
    for i, s in enumerate(sessions):  # one after the other: the first creates the mailbox
        await s.start(imap, i)
    await asyncio.sleep(args.pause)  # let the server's feed take its first look
    maildir = data / "mail" / "localhost" / "idle"
    latencies: list[float] = []
    for n in range(1, args.rounds + 1):
        if args.via == "smtp":
            at = await smtp_deliver(smtp, n)
        else:
            at = file_deliver(maildir, n)
        await asyncio.wait_for(asyncio.gather(*(s.wait_for(n) for s in sessions)), 30)
        latencies.extend(s.heard[n] - at for s in sessions)
        # A random phase: a server that polls on a timer shows its whole spread.
        await asyncio.sleep(args.pause * random.uniform(1, 2))
    for s in sessions:
        s.writer.close()
    return latencies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--pause", type=float, default=0.3, help="seconds between deliveries")
    p.add_argument("--via", choices=("smtp", "file"), default="smtp")
    p.add_argument("--pythonpath", help="run the server from this checkout")
    p.add_argument("--results", help="append a JSON line here")
    p.add_argument("--serve", nargs=3, metavar=("DATA", "SMTP", "IMAP"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), int(args.serve[2]))
        return
    data = Path(tempfile.mkdtemp(prefix="idle-latency-"))
    smtp, imap = free_ports(2)
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    command = [sys.executable, __file__, "--serve", str(data), str(smtp), str(imap)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(imap, proc)
        wait_for_port(smtp, proc)
        latencies = asyncio.run(measure(args, smtp, imap, data))
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(data, ignore_errors=True)
    ms = [x * 1000 for x in latencies]
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    result = {
        "via": args.via,
        "sessions": args.sessions,
        "rounds": args.rounds,
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
        "uptime": load,
        "server": args.pythonpath or "this checkout",
    }
    print(
        f"IDLE latency via {args.via}, {args.sessions} sessions x {args.rounds} messages: "
        f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms"
    )
    print(f"uptime: {load}")
    if args.results:
        with open(args.results, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
