#!/usr/bin/env python3
"""POP3 download speed: mailhub vs Dovecot with Python's poplib, on one N-message mailbox.

Each target gets the same N messages (S octets each, CRLF, a unique Message-ID) written straight
into its Maildir's new/ before the run. Then, with poplib on 127.0.0.1:

1. a warm-up session (login, STAT, QUIT): both servers build their UID list/index here;
2. the timed session: **login+STAT** (connect, USER, PASS, STAT), **UIDL** (the whole listing),
   **RETR** of every message one after another (what fetchmail/getmail do), then QUIT without
   deleting anything.

mailhub runs as its own process (this script with ``--serve``: the dev stack with only a POP3
listener, so client and server do not share a GIL); Dovecot is the throwaway instance from
``benchmarks/setup_dovecot_pop3.sh`` (start it first; leave out ``--dovecot-port`` to skip it).

    bash benchmarks/setup_dovecot_pop3.sh
    python3 benchmarks/pop3_load.py --messages 10000 --size 3000 --dovecot-port 2110
    bash benchmarks/setup_dovecot_pop3.sh stop

Beside the wall clock each row has the server's CPU time for the UIDL and per RETR (the
scheduler's count for the mailhub process, all threads, or for Dovecot's pop3 process of the
session): on a shared machine wall-clock swings with other load, CPU much less. The targets run
alternately (mailhub, Dovecot, mailhub, ...); the ratios are printed per run as well as of the
best figures.

Prints one table row per target and run (best of --runs shown last); --json for JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import poplib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

MAILHUB_USER = "bench@localhost"  # the dev stack's default domain is its host name
DOVECOT_MAILDIR = "/tmp/mailhub-bench-dovecot/mail/example.com/bench"


def make_message(i: int, size: int) -> bytes:
    head = (
        f"From: sender{i % 37}@example.net\r\nTo: bench@example.com\r\n"
        f"Subject: benchmark message {i}\r\nMessage-ID: <bench.{i}@example.net>\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnop\r\n"
    body = (line * (max(size - len(head), 0) // len(line) + 1))[: max(size - len(head) - 2, 0)]
    return head + body + b"\r\n"


def fill_maildir(maildir: Path, count: int, size: int, owner: tuple[int, int] | None) -> None:
    """Replace ``maildir`` with a fresh one holding ``count`` messages in new/ (fsync skipped:
    this is test data, not mail)."""
    if maildir.exists():
        shutil.rmtree(maildir)
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    base_time = 1_790_000_000
    new = maildir / "new"
    for i in range(count):
        data = make_message(i, size)
        name = f"{base_time + i}.M{i % 1_000_000}P4242Q{i}.bench,S={len(data)}"
        (new / name).write_bytes(data)
    if owner is not None:
        for root, _dirs, files in os.walk(maildir):
            os.chown(root, *owner)
            for f in files:
                os.chown(os.path.join(root, f), *owner)


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of ``pids`` (all their threads) so far: the scheduler's count in nanoseconds
    (/proc/PID/task/TID/schedstat), fine enough for one UIDL, where /proc/PID/stat counts in
    10 ms ticks."""
    total = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue  # gone meanwhile
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except OSError:
                continue
    return total / 1e9


def measure(
    host: str,
    port: int,
    user: str,
    password: str,
    count: int,
    server_pids: Callable[[], list[int]],
) -> dict[str, float]:
    """The timed session. Beside the wall-clock figures of UIDL and RETR the server's CPU time
    for them (``server_pids()``: the processes serving this session, asked once it is logged
    in): on a shared machine wall-clock swings with other load, CPU much less."""
    warm = poplib.POP3(host, port, timeout=120)
    warm.user(user)
    warm.pass_(password)
    n, _ = warm.stat()
    warm.quit()
    if n != count:
        raise SystemExit(f"{host}:{port}: mailbox has {n} messages, expected {count}")
    t0 = time.perf_counter()
    client = poplib.POP3(host, port, timeout=120)
    client.user(user)
    client.pass_(password)
    client.stat()
    login_stat = time.perf_counter() - t0
    pids = server_pids()  # (the /proc reads are outside the timed steps)
    c1 = cpu_seconds(pids)
    t1 = time.perf_counter()
    _, listing, _ = client.uidl()
    uidl = time.perf_counter() - t1
    c2 = cpu_seconds(pids)
    t2 = time.perf_counter()
    octets = 0
    for i in range(1, count + 1):
        _, _lines, size = client.retr(i)
        octets += size
    t3 = time.perf_counter()
    c3 = cpu_seconds(pids)
    client.quit()
    if len(listing) != count:
        raise SystemExit(f"{host}:{port}: UIDL listed {len(listing)} messages")
    return {
        "login_stat": login_stat,
        "uidl": uidl,
        "retr_all": t3 - t2,
        "octets": octets,
        "uidl_cpu_ms": (c2 - c1) * 1e3,
        "retr_cpu_us": (c3 - c2) / count * 1e6,
    }


def wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mailhub exited with {proc.returncode}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"mailhub did not listen on {host}:{port} within {timeout}s")


def serve(data_dir: str, port: int) -> None:
    """The dev stack with only a POP3 listener on 127.0.0.1:port (any password logs in)."""
    from benchserve import dev_stack, start
    from twisted.internet import reactor

    # keep_all: the dev stack prunes the store to its newest 5,000 messages (mailhub.retention),
    # which would delete half the benchmark's mailbox while it is being read.
    start(dev_stack(data_dir, pop3=port, keep_all=True))
    reactor.run()


def run_mailhub(args: argparse.Namespace) -> dict[str, float]:
    data = Path(args.mailhub_data)
    local, domain = MAILHUB_USER.split("@")
    fill_maildir(data / "mail" / domain / local, args.messages, args.size, None)
    for stale in (data / "mail" / domain / local).glob("mailhub-*"):
        stale.unlink()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(data), "--mailhub-port", str(args.mailhub_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", args.mailhub_port, proc, 60)
        return measure("127.0.0.1", args.mailhub_port, MAILHUB_USER, "any", args.messages,
                       lambda: [proc.pid])  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(30)


def run_dovecot(args: argparse.Namespace) -> dict[str, float]:
    maildir = Path(args.dovecot_maildir)
    owner = (maildir.parent.parent.stat().st_uid, maildir.parent.parent.stat().st_gid)
    maildir.parent.mkdir(exist_ok=True)
    os.chown(maildir.parent, *owner)
    fill_maildir(maildir, args.messages, args.size, owner)
    home = maildir.parents[2] / "home"
    for index in home.glob("**/*"):
        if index.is_file():
            index.unlink()  # no index left from a previous run: both start cold
    master = int((maildir.parents[2] / "run" / "master.pid").read_text())
    return measure(
        "127.0.0.1",
        args.dovecot_port,
        args.dovecot_user,
        args.dovecot_password,
        args.messages,
        lambda: dovecot_sessions(master),
    )


def dovecot_sessions(master: int) -> list[int]:
    """Dovecot's pop3 session processes (children of its master): after login the session's
    socket is handed to one of these, which does all the work of UIDL and RETR."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == master and comm == "pop3":
            pids.append(int(entry.name))
    if not pids:
        raise SystemExit(f"no pop3 process under the Dovecot master {master}")
    return pids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--size", type=int, default=3000, help="octets per message")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--mailhub-port", type=int, default=2111)
    p.add_argument("--mailhub-data", default="/tmp/mailhub-bench-pop3")
    p.add_argument("--dovecot-port", type=int, default=None)
    p.add_argument("--dovecot-maildir", default=DOVECOT_MAILDIR)
    p.add_argument("--dovecot-user", default="bench@example.com")
    p.add_argument("--dovecot-password", default="bench")
    p.add_argument("--json", action="store_true")
    p.add_argument("--serve", metavar="DATA_DIR", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.mailhub_port)
        return
    targets = [("mailhub", run_mailhub)]
    if args.dovecot_port is not None:
        targets.append(("dovecot", run_dovecot))
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in targets}
    if not args.json:
        print(f"{args.messages} messages of {args.size} octets, poplib on 127.0.0.1")
        print(
            f"{'target':10} {'run':>4} {'login+STAT s':>13} {'UIDL s':>8} {'RETR all s':>11}"
            f" {'UIDL cpu ms':>12} {'RETR cpu us':>12}"
        )
    for run in range(1, args.runs + 1):
        for name, fn in targets:
            r = fn(args)
            results[name].append(r)
            if not args.json:
                print(
                    f"{name:10} {run:>4} {r['login_stat']:>13.3f} {r['uidl']:>8.3f} "
                    f"{r['retr_all']:>11.2f} {r['uidl_cpu_ms']:>12.2f} {r['retr_cpu_us']:>12.1f}"
                )
    keys = ("login_stat", "uidl", "retr_all", "uidl_cpu_ms", "retr_cpu_us")
    best = {name: {k: min(r[k] for r in rs) for k in keys} for name, rs in results.items()}
    if args.json:
        print(json.dumps({"runs": results, "best": best}))
        return
    for name, b in best.items():
        print(
            f"{name:10} {'best':>4} {b['login_stat']:>13.3f} {b['uidl']:>8.3f} "
            f"{b['retr_all']:>11.2f} {b['uidl_cpu_ms']:>12.2f} {b['retr_cpu_us']:>12.1f}"
        )
    if "dovecot" in best:
        m, d = best["mailhub"], best["dovecot"]
        ratios = " ".join(f"{k}={m[k] / d[k]:.2f}x" for k in keys if d[k] > 0)
        print(f"mailhub / dovecot (best of each): {ratios}")
        # Same-run pairs (run i of each, measured back to back): the ratio per run.
        for k in keys:
            pairs = [
                f"{a[k] / b[k]:.2f}"
                for a, b in zip(results["mailhub"], results["dovecot"], strict=True)
                if b[k] > 0
            ]
            print(f"  {k} per run: {' '.join(pairs)}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
