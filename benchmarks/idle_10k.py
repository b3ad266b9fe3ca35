#!/usr/bin/env python3
"""10,000 IMAP sessions in IDLE over TLS on one mailhub process: memory, push latency, and how
fast other sessions are answered meanwhile (issue 16, target 3).

mailhub runs as its own process (this script with ``--serve``: the dev stack with an SMTP and
an IMAPS listener on 127.0.0.1, its self-signed certificate, any password logs in,
``[limits] max_connections`` raised for the run). Both the server and the clients get
RLIMIT_NOFILE raised to the hard limit (10,000 sessions need 10,000 descriptors on each side;
the usual soft limit is 1,024).

``--procs`` client processes (asyncio + ssl) open ``--sessions`` IMAPS sessions between them:
each does LOGIN, SELECT INBOX and IDLE. ``--shared`` of them watch one shared mailbox, the
others are spread evenly over ``--boxes`` mailboxes. Then the script delivers ``--messages``
messages by SMTP (over ``--smtp`` connections, ``--rate`` per second in all), each to a random
mailbox (the shared one gets ``--shared-share`` of them), and notes when the 250 after DATA
came. Every session notes when it read each ``* n EXISTS``. The push latency of one message to
one watching session is the time from its 250 to the first EXISTS line of that session saying
n or more (all processes read CLOCK_MONOTONIC). Meanwhile a probe session (its own mailbox of 50
messages) sends ``NOOP`` and ``FETCH 1:* (FLAGS UID)`` in turns, one every 20 ms, and notes how
long each took to be answered.

The server's RSS (``/proc/PID/status``) is read before the sessions open, once they all idle,
and after the deliveries.

    python3 benchmarks/idle_10k.py                       # 10,000 sessions
    python3 benchmarks/idle_10k.py --sessions 1000 --messages 200

Prints the figures and ``uptime``; --results appends a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

# the same port helpers as the 1,000-session benchmark beside this file
from idle_latency import free_ports, wait_for_port

DOMAIN = "localhost"  # the dev stack's default domain is its host name
SHARED = "shared"
PROBE = "probe"
PREPARED = 200  # up to this many --boxes get a first message each before the sessions open


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)  # one clock for every process


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def box_name(i: int) -> str:
    return f"box{i}"


# --- the server ----------------------------------------------------------------------------


def serve(
    data_dir: str,
    smtp_port: int,
    imaps_port: int,
    max_connections: int,
    profile: str,
    store_wide: bool,
) -> None:
    raise_nofile()
    from benchserve import dev_stack, start
    from twisted.internet import reactor

    # The dev stack's retention listens to the whole store, as the web page's feed does;
    # without it (production without the web listener) only the IDLE sessions listen.
    limits = {
        "max_connections": max_connections,
        "max_connections_per_ip": max_connections,  # every client comes from 127.0.0.1
    }
    config = dev_stack(
        data_dir, smtp=smtp_port, imaps=imaps_port, keep_all=not store_wide, limits=limits
    )
    start(config)
    print(type(reactor).__name__, file=sys.stderr, flush=True)
    report_long_collections()
    if not profile:
        reactor.run()  # type: ignore[attr-defined]
        return
    import cProfile

    profiler = cProfile.Profile()
    # Only the timed part: the client sends SIGUSR1 before the deliveries and SIGUSR2 after.
    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(profiler.enable))
    signal.signal(signal.SIGUSR2, lambda *_: reactor.callFromThread(profiler.disable))
    reactor.run()  # type: ignore[attr-defined]
    profiler.disable()
    profiler.dump_stats(profile)


def report_long_collections(over: float = 0.010) -> None:
    """Print each pass of the garbage collector longer than ``over`` seconds (its generation,
    its length, what it collected), as it ends: a full pass over the heap of 10,000 sessions
    stops the reactor for as long, and shows in the push latencies' tail."""
    import gc

    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took = time.perf_counter() - started[0]
        if took > over:
            print(
                f"gc: generation {info['generation']} pass {took * 1000:.0f} ms, "
                f"{info['collected']} collected, at {time.strftime('%H:%M:%S')}",
                file=sys.stderr,
                flush=True,
            )

    gc.callbacks.append(callback)


def make_mailboxes(data_dir: Path, boxes: int) -> None:
    """Mailboxes that exist before the server starts, as a real server's users do: one made by
    the store (INBOX and the five special folders), copied (a first LOGIN would make each one
    with a dozen fsyncs)."""
    from mailhub.store import MailStore

    store = MailStore(data_dir / "mail", hostname=DOMAIN)
    store.mailbox(f"template@{DOMAIN}", create=True).ensure_special_folders()
    template = data_dir / "mail" / DOMAIN / "template"
    for i in range(boxes):
        shutil.copytree(template, template.parent / box_name(i))
    shutil.rmtree(template)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit("no VmRSS")


def inotify_watches(pid: int) -> int:
    """The process's inotify watches (fs.inotify.max_user_watches counts them per user)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == "anon_inode:inotify":
                info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
                count += info.count("inotify wd:")
        except OSError:
            pass
    return count


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- IMAP sessions -------------------------------------------------------------------------


def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the dev stack's self-signed certificate
    return ctx


class Session:
    """One IMAPS connection; in IDLE, ``heard`` collects (n, when) of each ``* n EXISTS``."""

    def __init__(self, box: str) -> None:
        self.box = box
        self.heard: list[tuple[int, float]] = []
        self.tag = 0

    async def open(self, port: int, ctx: ssl.SSLContext, source: str) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, local_addr=(source, 0), limit=1 << 20
        )
        await self.reader.readline()  # greeting

    async def command(self, line: str) -> list[bytes]:
        self.tag += 1
        tag = b"t%d" % self.tag
        self.writer.write(tag + b" " + line.encode() + b"\r\n")
        got = []
        while True:
            lines = await self.reader.readline()
            if not lines:
                raise ConnectionError("the server closed an IMAP connection")
            if lines.startswith(tag + b" "):
                if not lines.startswith(tag + b" OK"):
                    raise ConnectionError(f"IMAP {line!r}: {lines!r}")
                return got
            got.append(lines)

    async def login_select(self) -> None:
        await self.command(f"LOGIN {self.box}@{DOMAIN} any")
        await self.command("SELECT INBOX")

    async def idle(self) -> None:
        self.writer.write(b"i IDLE\r\n")
        while not (await self.reader.readline()).startswith(b"+"):
            pass
        self.task = asyncio.ensure_future(self.listen())

    async def listen(self) -> None:
        while line := await self.reader.readline():
            if line.endswith(b" EXISTS\r\n"):
                self.heard.append((int(line.split()[1]), now()))


async def open_sessions(
    port: int, boxes: list[str], sources: list[str], parallel: int
) -> tuple[list[Session], int]:
    ctx = client_context()
    gate = asyncio.Semaphore(parallel)
    sessions = [Session(b) for b in boxes]
    failed = 0

    async def one(i: int, s: Session) -> None:
        nonlocal failed
        async with gate:
            for attempt in range(5):
                try:
                    await s.open(port, ctx, sources[i % len(sources)])
                    await s.login_select()
                    await s.idle()
                    return
                except (OSError, ConnectionError, asyncio.IncompleteReadError):
                    await asyncio.sleep(0.2 * (attempt + 1))
            failed += 1

    await asyncio.gather(*(one(i, s) for i, s in enumerate(sessions)))
    return sessions, failed


def client_process(conn: Connection, port: int, boxes: list[str], sources: list[str]) -> None:
    """One client process: open the sessions, say "ready", idle until told "stop", send what
    every session heard."""
    raise_nofile()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        started = now()
        sessions, failed = await open_sessions(port, boxes, sources, parallel=64)
        conn.send(("ready", len(sessions) - failed, failed, now() - started))
        stop = asyncio.Event()
        loop.add_reader(conn.fileno(), stop.set)
        await stop.wait()
        loop.remove_reader(conn.fileno())
        conn.recv()
        alive = sum(1 for s in sessions if hasattr(s, "task") and not s.task.done())
        conn.send(("heard", alive, [(s.box, s.heard) for s in sessions]))
        for s in sessions:
            if hasattr(s, "writer"):
                s.writer.transport.abort()

    asyncio.run(run())


# --- deliveries and the probe ----------------------------------------------------------------


class SMTPClient:
    async def open(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        await self.reply()
        self.writer.write(b"EHLO bench\r\n")
        await self.reply()

    async def reply(self) -> bytes:
        while True:
            line = await self.reader.readline()
            if line[3:4] != b"-":
                if line[:1] not in (b"2", b"3"):
                    raise SystemExit(f"SMTP: {line!r}")
                return line

    async def send(self, box: str, subject: str) -> float:
        """One message; when its 250 (after DATA) was read."""
        w = self.writer
        w.write(f"MAIL FROM:<bench@example.net>\r\nRCPT TO:<{box}@{DOMAIN}>\r\nDATA\r\n".encode())
        for _ in range(3):
            await self.reply()
        w.write(f"Subject: {subject}\r\n\r\nhello\r\n.\r\n".encode())
        await self.reply()
        return now()


async def probe(port: int, stop: asyncio.Event, latencies: dict[str, list[float]]) -> None:
    s = Session(PROBE)
    await s.open(port, client_context(), "127.0.0.1")
    await s.login_select()
    while not stop.is_set():
        for verb in ("NOOP", "FETCH 1:* (FLAGS UID)"):
            start = now()
            await s.command(verb)
            latencies[verb.split()[0]].append(now() - start)
            await asyncio.sleep(0.02)
    await s.command("LOGOUT")


async def deliver(args: argparse.Namespace, smtp_port: int, boxes: int) -> dict[str, list[float]]:
    """The timed part: deliveries at --rate/s and the probe; {box: [250 times in order]}."""
    clients = [SMTPClient() for _ in range(args.smtp)]
    for c in clients:
        await c.open(smtp_port)
    acked: dict[str, list[float]] = {}
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    rng = random.Random(16)

    async def sender(c: SMTPClient) -> None:
        while (box := await queue.get()) is not None:
            at = await c.send(box, "push")
            acked.setdefault(box, []).append(at)

    workers = [asyncio.ensure_future(sender(c)) for c in clients]
    interval = 1 / args.rate
    start = now()
    for i in range(args.messages):
        box = SHARED if rng.random() < args.shared_share else box_name(rng.randrange(boxes))
        queue.put_nowait(box)
        delay = start + (i + 1) * interval - now()
        if delay > 0:
            await asyncio.sleep(delay)
    for _ in clients:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return acked


async def prepare(smtp_port: int, boxes: int) -> None:
    c = SMTPClient()
    await c.open(smtp_port)
    for i in range(50):
        await c.send(PROBE, f"probe {i}")
    # Every mailbox holds one message before SELECT (with many mailboxes, LOGIN makes them).
    for box in [SHARED] + [box_name(i) for i in range(boxes if boxes <= PREPARED else 0)]:
        await c.send(box, "first")
    c.writer.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, default=10_000)
    p.add_argument("--boxes", type=int, default=100, help="mailboxes the non-shared sessions use")
    p.add_argument("--shared", type=int, default=1000, help="sessions on the one shared mailbox")
    p.add_argument("--procs", type=int, default=4, help="client processes")
    p.add_argument("--messages", type=int, default=300)
    p.add_argument("--rate", type=float, default=20.0, help="deliveries per second")
    p.add_argument("--shared-share", type=float, default=0.1)
    p.add_argument("--smtp", type=int, default=4, help="SMTP connections delivering")
    p.add_argument("--sources", type=int, default=4, help="loopback addresses 127.0.0.1..n")
    p.add_argument("--settle", type=float, default=3.0, help="seconds idle before measuring")
    p.add_argument("--pythonpath", help="run the server from this checkout")
    p.add_argument("--results", help="append a JSON line here")
    p.add_argument("--profile", default="", help="cProfile the server's timed part into FILE")
    p.add_argument(
        "--store-wide",
        action="store_true",
        help="a store-wide listener too (the dev stack's retention, as the web feed would be)",
    )
    p.add_argument("--serve", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        data, smtp, imaps, most, profile, store_wide = args.serve
        serve(data, int(smtp), int(imaps), int(most), profile, store_wide == "1")
        return
    if not 0 <= args.shared <= args.sessions:
        # more shared sessions than sessions would open more connections than the server's
        # raised limit admits, and the probe would be turned away
        p.error(f"--shared ({args.shared}) must be between 0 and --sessions ({args.sessions})")
    nofile = raise_nofile()
    if nofile < args.sessions // args.procs + 100:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {nofile} is too low: raise it (ulimit -Hn)")
    data = Path(tempfile.mkdtemp(prefix="idle-10k-"))
    smtp_port, imaps_port = free_ports(2)
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    profile = os.path.abspath(args.profile) if args.profile else ""
    command = [sys.executable, __file__, "--serve", str(data), str(smtp_port), str(imaps_port),
               str(args.sessions + 100), profile, "1" if args.store_wide else "0"]  # fmt: skip
    if args.boxes > PREPARED:
        make_mailboxes(data, args.boxes)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    result: dict[str, object] = {"sessions": args.sessions, "boxes": args.boxes,
                                 "shared": args.shared, "messages": args.messages,
                                 "rate": args.rate, "store_wide": args.store_wide}  # fmt: skip
    try:
        wait_for_port(imaps_port, proc)
        wait_for_port(smtp_port, proc)
        asyncio.run(prepare(smtp_port, args.boxes))
        time.sleep(1)
        result["rss_start_mib"] = round(rss_kib(proc.pid) / 1024, 1)
        others = args.sessions - args.shared
        boxes = [SHARED] * args.shared + [box_name(i % args.boxes) for i in range(others)]
        sources = [f"127.0.0.{i + 1}" for i in range(args.sources)]
        pipes, procs = [], []
        for k in range(args.procs):
            mine, theirs = multiprocessing.Pipe()
            child = multiprocessing.Process(
                target=client_process, args=(theirs, imaps_port, boxes[k :: args.procs], sources)
            )
            child.start()
            pipes.append(mine)
            procs.append(child)
        cpu_before_open = cpu_seconds(proc.pid)
        opened = failed = 0
        open_time = 0.0
        for pipe in pipes:
            _, ok, bad, took = pipe.recv()
            opened += ok
            failed += bad
            open_time = max(open_time, took)
        result["opened"] = opened
        result["failed"] = failed
        result["open_s"] = round(open_time, 1)
        result["server_cpu_open_ms_per_session"] = round(
            (cpu_seconds(proc.pid) - cpu_before_open) * 1000 / max(opened, 1), 3
        )
        print(f"{opened} sessions idle ({failed} failed) after {open_time:.1f} s", flush=True)
        time.sleep(args.settle)
        result["rss_idle_mib"] = round(rss_kib(proc.pid) / 1024, 1)
        time.sleep(args.settle)  # flat while idle?
        result["rss_idle_later_mib"] = round(rss_kib(proc.pid) / 1024, 1)
        result["inotify_watches"] = inotify_watches(proc.pid)
        result["rss_per_session_kib"] = round(
            (rss_kib(proc.pid) - result["rss_start_mib"] * 1024) / max(opened, 1),
            1,  # type: ignore[operator]
        )

        async def timed() -> tuple[dict[str, list[float]], dict[str, list[float]]]:
            stop = asyncio.Event()
            probed: dict[str, list[float]] = {"NOOP": [], "FETCH": []}
            prober = asyncio.ensure_future(probe(imaps_port, stop, probed))
            acked = await deliver(args, smtp_port, args.boxes)
            await asyncio.sleep(2)  # the last pushes
            stop.set()
            await prober
            return acked, probed

        cpu_before = cpu_seconds(proc.pid)
        if args.profile:
            proc.send_signal(signal.SIGUSR1)
        acked, probed = asyncio.run(timed())
        if args.profile:
            proc.send_signal(signal.SIGUSR2)
        result["server_cpu_s_deliveries"] = round(cpu_seconds(proc.pid) - cpu_before, 2)
        result["rss_after_mib"] = round(rss_kib(proc.pid) / 1024, 1)
        alive = 0
        heard: list[tuple[str, list[tuple[int, float]]]] = []
        for pipe in pipes:
            pipe.send("stop")
        for pipe in pipes:
            _, n, got = pipe.recv()
            alive += n
            heard.extend(got)
        for child in procs:
            child.join(60)
        result["alive_after"] = alive
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(data, ignore_errors=True)
    # Push latency: message k (1-based) to a box makes EXISTS k+1 (k with no first message).
    latencies: list[float] = []
    missed = 0
    for box, events in heard:
        times = acked.get(box, [])
        first = 1 if box == SHARED or args.boxes <= PREPARED else 0
        for k, at in enumerate(times, 1):
            n = k + first
            when = next((t for count, t in events if count >= n), None)
            if when is None:
                missed += 1
            else:
                latencies.append(max(0.0, when - at))
    result["push"] = summary(latencies)
    result["push_missed"] = missed
    result["probe_noop"] = summary(probed["NOOP"])
    result["probe_fetch"] = summary(probed["FETCH"])
    result["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result["server"] = args.pythonpath or "this checkout"
    print(json.dumps(result, indent=1))
    if args.results:
        with open(args.results, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
