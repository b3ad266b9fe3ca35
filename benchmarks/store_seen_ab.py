#!/usr/bin/env python3
"""imap_load.py's ``store_seen`` step (``STORE 1:* +FLAGS (\\Seen)`` on its 10,000-message
mailbox, 3,000 renamed) against a real server, A/B between source trees: the server process's
CPU over the command (every thread's ``/proc/<pid>/task/*/schedstat``, in ns), split into
user and system time from ``/proc/<pid>/stat`` (clock ticks), and the wall clock, per tree
median of all its runs.

Each tree's server is imap_load.py's (``--serve``, the dev stack) with ``<tree>`` on
PYTHONPATH, trees alternating per round. A server serves ``--runs`` mailboxes (users
bench0@localhost...), each a fresh copy of the source made of hard links (a rename changes
only directory entries; no 48 MB copy per run); each gets SELECT, FETCH 1:* (FLAGS UID
RFC822.SIZE) and the measured STORE, as in imap_load.py. The data directories are kept until
the end of the series (a no-journal ext4 makes files slowly right after deleting many).

    .venv/bin/python benchmarks/store_seen_ab.py /var/tmp/base . --rounds 3 --runs 4 \\
        --port 32150 --workdir /var/tmp/x-storeab
"""

from __future__ import annotations

import argparse
import imaplib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import imap_load  # noqa: E402


def link_maildir(source: Path, target: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (target / sub).mkdir(parents=True)
        for name in os.listdir(source / sub):
            os.link(source / sub / name, target / sub / name)


def cpu_ns(pid: int) -> int:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass  # (a thread gone meanwhile)
    return total


def user_sys(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def one_server(tree: str, data: Path, port: int, runs: int) -> list[dict[str, float]]:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    command = [sys.executable, str(HERE / "imap_load.py"), "--serve", str(data),
               "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = []
    try:
        imap_load.wait_for_port(port, proc, "mailhub")
        for i in range(runs):
            client = imaplib.IMAP4("127.0.0.1", port, timeout=300)
            client.login(f"bench{i}@localhost", "any")
            typ, got = client.select("INBOX")
            if int(got[0]) != 10_000:
                raise SystemExit(f"{got!r} messages")
            client.fetch("1:*", "(FLAGS UID RFC822.SIZE)")
            time.sleep(0.2)  # (the worker's writes after SELECT done)
            c0, (u0, s0), t0 = cpu_ns(proc.pid), user_sys(proc.pid), time.perf_counter()
            typ, got = client.store("1:*", "+FLAGS", "(\\Seen)")
            wall = time.perf_counter() - t0
            c1, (u1, s1) = cpu_ns(proc.pid), user_sys(proc.pid)
            if typ != "OK" or sum(1 for d in got if d) != 3_000:
                raise SystemExit(f"STORE: {typ} {len(got)}")
            tick = os.sysconf("SC_CLK_TCK")
            row = {"wall": wall, "cpu": (c1 - c0) / 1e9}
            out.append(row | {"user": (u1 - u0) / tick, "sys": (s1 - s0) / tick})
            client.logout()
    finally:
        proc.terminate()
        proc.wait(60)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs="*", default=[str(HERE.parent)])
    p.add_argument("--runs", type=int, default=4, help="mailboxes (STOREs) per server")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--port", type=int, default=2150)
    p.add_argument("--workdir", default="/tmp/mailhub-bench-storeab")
    args = p.parse_args()
    work = Path(args.workdir)
    source = work / "source"
    imap_load.generate(source, 10_000)
    results: dict[str, list[dict[str, float]]] = {t: [] for t in args.trees}
    made: list[Path] = []
    try:
        for r in range(args.rounds):
            for n, tree in enumerate(args.trees):
                data = work / f"data-{os.getpid()}-{r}-{n}"
                for i in range(args.runs):
                    link_maildir(source, data / "mail" / "localhost" / f"bench{i}")
                made.append(data)
                os.sync()
                rows = one_server(tree, data, args.port, args.runs)
                results[tree].extend(rows)
                runs = "  ".join(f"{x['wall'] * 1000:.0f}/{x['cpu'] * 1000:.0f}" for x in rows)
                print(f"load {os.getloadavg()[0]:.2f} {tree}: {runs}  (wall/CPU ms)", flush=True)
    finally:
        for data in made:
            shutil.rmtree(data, ignore_errors=True)
    for tree, rows in results.items():
        med = {k: sorted(row[k] for row in rows)[len(rows) // 2] for k in rows[0]}
        figures = ", ".join(f"{k} {v * 1000:.1f}" for k, v in med.items())
        print(f"{tree}: median of {len(rows)} STOREs, ms: {figures}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
