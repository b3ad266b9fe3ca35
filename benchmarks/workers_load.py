#!/usr/bin/env python3
"""One worker against two: ``twistd mailhub --workers N`` for SMTP and IMAP, alternating.

    python3 benchmarks/workers_load.py --runs 3 [--workers 1,2] [--log file] [--results FILE]

Each run starts a fresh server (its own data directory; a production-style config with SMTP and
IMAP on loopback, a users file) per worker count, in the order 1 2 1 2 ..., and measures

- ``smtp``: Postfix's ``smtp-source`` (C, light on the shared cores), one connection per
  message (its default, as MTAs deliver), ``--smtp-sessions`` at once, ``--smtp-messages`` of
  ``--size`` bytes to one local mailbox (not the IMAP phase's); the server says 250 only after
  the fsync, so when smtp-source exits every message is in the Maildir (the script checks);
- ``imap``: ``--imap-procs`` client processes x ``--imap-sessions`` sessions over raw sockets (no
  imaplib parsing: the clients should cost little) on a 1,000-message INBOX, each session
  repeating SELECT INBOX, FETCH 1:100 (FLAGS UID RFC822.SIZE), UID SEARCH SUBJECT, NOOP for
  ``--imap-seconds``; commands per second. A fixed window, not a fixed count: sessions live
  long, the kernel's hash may give one worker 12 of 20, and with a fixed count the other would
  sit idle at the end, which measures the split, not the capacity.

CPU time is read from /proc for every worker and the supervisor, before and after each phase:
the table gives CPU per message (per command) summed over the workers and for each worker, and
of that its reactor thread's (the rest is its fsync threads'); the supervisor's separately: it
appends the workers' log lines to its file with ``--log file`` (twistd ``--logfile``), while
with the default (stdout) the workers write their own. So
what a host with more cores would do can be read off (throughput ~ cores / CPU per message,
while the load generator leaves cores free). ``uptime`` load goes with each run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

USER, PASSWORD = "bench@example.test", "bench-password"
# The SMTP phase's mailbox: not the IMAP phase's, which stays at its 1,000 messages (with the
# SMTP mail there too, IMAP measured each worker's first look at 4,000 new messages).
SINK = "sink@example.test"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, path: str = "") -> float:
    fields = Path(path or f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Server:
    """``twistd -n mailhub --workers N`` in a fresh directory; ports and pids from its log."""

    def __init__(self, workdir: Path, workers: int, messages: int, log: str = "stdout") -> None:
        import argon2

        from mailhub.store.store import MailStore
        from mailhub.users import UserDB

        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        self.dir = workdir
        from tests.support.tls import CertificateAuthority

        cert, key = (
            CertificateAuthority()
            .issue(["localhost"], ip_addresses=["127.0.0.1"])
            .write(workdir, "mail")
        )
        fast = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        users = UserDB(workdir / "users", hasher=fast)
        users.add(USER, PASSWORD)
        users.add(SINK, PASSWORD)
        data = workdir / "data"
        (workdir / "mailhub.toml").write_text(f"""
[server]
hostname = "mx.example.test"
data_dir = "{data}"
[domains]
local = ["example.test"]
[files]
users = "{workdir / "users"}"
[tls]
certificate = "{cert}"
key = "{key}"
[smtp]
auth_without_tls_on_loopback = true
[checks]
enabled = false
[listeners]
smtp = ["tcp:0:interface=127.0.0.1"]
imap = ["tcp:0:interface=127.0.0.1"]
""")
        # The IMAP mailbox: 1,000 messages, 1 % with the searched word.
        (data / "mail").mkdir(parents=True)
        store = MailStore(data / "mail", hostname="mx.example.test")
        inbox = store.mailbox(USER, create=True).folder()
        for i in range(messages):
            subject = "quarterly report" if i % 100 == 0 else f"message {i}"
            inbox.append(
                (
                    f"From: sender{i % 17}@example.net\r\nTo: {USER}\r\nSubject: {subject}\r\n"
                    f"Date: Mon, 23 Nov 2026 00:00:00 +0000\r\nMessage-ID: <{i}@bench>\r\n\r\n"
                    + "body line\r\n"
                    * 40
                ).encode()
            )
        env = dict(os.environ, PYTHONPATH=str(REPO))
        # stdout: the workers write their own lines there; file: the supervisor writes the
        # file (twistd --logfile, which it rotates) and the workers hand it their lines.
        logfile = "-" if log == "stdout" else str(workdir / "twistd.log")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", f"--logfile={logfile}", "mailhub", "--config",
             str(workdir / "mailhub.toml"), "--workers", str(workers)],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.lines: list[str] = []
        self._cond = threading.Condition()
        if log == "stdout":
            threading.Thread(target=self._read, args=("twistd.log", True), daemon=True).start()
        else:
            threading.Thread(target=self._read, args=("stdout.log", False), daemon=True).start()
            threading.Thread(target=self._tail, args=(Path(logfile),), daemon=True).start()
        ready = self.wait(r"worker (\d+) ready \(pid (\d+)\)", workers)
        self.pids = [int(m.group(2)) for m in ready]
        self.smtp_port = int(self.wait(r"smtp listening on 127\.0\.0\.1:(\d+)", 1)[0].group(1))
        self.imap_port = int(self.wait(r"imap listening on 127\.0\.0\.1:(\d+)", 1)[0].group(1))
        self.maildir = data / "mail" / "example.test" / "sink"  # SINK's

    def _read(self, name: str, watch: bool) -> None:
        assert self.proc.stdout is not None
        with open(self.dir / name, "w") as copy:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace")
                copy.write(line)
                if not watch:
                    continue
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()

    def _tail(self, path: Path) -> None:
        """The lines of the supervisor's log file until the server stops (the start-up
        lines are all this needs: a rotation later does not matter)."""
        while not path.exists() and self.proc.poll() is None:
            time.sleep(0.05)
        with open(path, "rb") as f:
            partial = b""
            while self.proc.poll() is None:
                chunk = f.read()
                if not chunk:
                    time.sleep(0.05)
                    continue
                *lines, partial = (partial + chunk).split(b"\n")
                with self._cond:
                    self.lines.extend(line.decode("utf-8", "replace") for line in lines)
                    self._cond.notify_all()

    def wait(self, pattern: str, count: int, timeout: float = 120) -> list[re.Match[str]]:
        regex = re.compile(pattern)
        with self._cond:
            self._cond.wait_for(
                lambda: len([m for m in map(regex.search, self.lines) if m]) >= count, timeout
            )
            found = [m for m in map(regex.search, self.lines) if m]
        if len(found) < count:
            self.stop()
            raise SystemExit(f"server did not log {pattern!r}; see {self.dir / 'twistd.log'}")
        return found

    def cpu(self) -> list[float]:
        """CPU seconds of each worker, then of the supervisor (last)."""
        return [cpu_seconds(p) for p in (*self.pids, self.proc.pid)]

    def main_thread_cpu(self) -> list[float]:
        """CPU seconds of each worker's reactor thread (the rest: its fsync threads)."""
        return [cpu_seconds(p, f"/proc/{p}/task/{p}/stat") for p in self.pids]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def count_files(maildir: Path) -> int:
    return sum(len(os.listdir(maildir / d)) for d in ("new", "cur") if (maildir / d).exists())


def smtp_phase(server: Server, args: argparse.Namespace) -> dict[str, float]:
    before = count_files(server.maildir)
    cpu0, main0 = server.cpu(), server.main_thread_cpu()
    t0 = time.perf_counter()
    subprocess.run(
        ["smtp-source", "-s", str(args.smtp_sessions), "-m", str(args.smtp_messages),
         "-l", str(args.size), "-f", "load@bench.invalid", "-t", SINK,
         f"127.0.0.1:{server.smtp_port}"],
        check=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - t0
    cpu1, main1 = server.cpu(), server.main_thread_cpu()
    got = count_files(server.maildir) - before
    if got != args.smtp_messages:
        raise SystemExit(f"smtp: {got} of {args.smtp_messages} in the Maildir")
    *per_worker, supervisor = [(b - a) for a, b in zip(cpu0, cpu1, strict=True)]
    return {
        "rate": args.smtp_messages / elapsed,
        "cpu_ms_per_msg": sum(per_worker) / args.smtp_messages * 1000,
        "worker_cpu_ms_per_msg": [round(c / args.smtp_messages * 1000, 3) for c in per_worker],
        # of which the reactor thread (the rest: the fsync threads' file work)
        "reactor_cpu_ms_per_msg": [
            round((b - a) / args.smtp_messages * 1000, 3) for a, b in zip(main0, main1, strict=True)
        ],
        "supervisor_cpu_ms_per_msg": round(supervisor / args.smtp_messages * 1000, 3),
        "elapsed": elapsed,
    }


# --- the IMAP clients -------------------------------------------------------------------------


def _session(port: int, deadline: float) -> int:
    """One raw IMAP session, rounds until ``deadline``; the number of commands answered OK."""
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    f.readline()  # greeting
    n = 0

    def command(text: str) -> None:
        nonlocal n
        n += 1
        tag = f"a{n}".encode()
        s.sendall(tag + b" " + text.encode() + b"\r\n")
        while True:
            line = f.readline()
            if not line:
                raise ConnectionError("closed")
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(line)
                return
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                f.read(int(m.group(1)))

    command(f'LOGIN "{USER}" "{PASSWORD}"')
    ok = 0
    while time.monotonic() < deadline:
        command("SELECT INBOX")
        command("FETCH 1:100 (FLAGS UID RFC822.SIZE)")
        command("UID SEARCH SUBJECT quarterly")
        command("NOOP")
        ok += 4
    command("LOGOUT")
    s.close()
    return ok


def _client(port: int, sessions: int, seconds: float, barrier: object, out: object) -> None:
    import concurrent.futures

    barrier.wait()  # type: ignore[attr-defined]
    t0 = os.times()
    deadline = time.monotonic() + seconds
    with concurrent.futures.ThreadPoolExecutor(sessions) as pool:
        done = sum(pool.map(lambda _: _session(port, deadline), range(sessions)))
    t1 = os.times()
    out.put((done, (t1.user - t0.user) + (t1.system - t0.system)))  # type: ignore[attr-defined]


def imap_phase(server: Server, args: argparse.Namespace) -> dict[str, float]:
    barrier = multiprocessing.Barrier(args.imap_procs + 1)
    out: multiprocessing.Queue[tuple[int, float]] = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(
            target=_client,
            args=(server.imap_port, args.imap_sessions, args.imap_seconds, barrier, out),
        )
        for _ in range(args.imap_procs)
    ]
    for p in procs:
        p.start()
    cpu0 = server.cpu()
    barrier.wait()
    t0 = time.perf_counter()
    results = [out.get() for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    cpu1 = server.cpu()
    commands = sum(r[0] for r in results)
    *per_worker, supervisor = [(b - a) for a, b in zip(cpu0, cpu1, strict=True)]
    return {
        "rate": commands / elapsed,
        "cpu_ms_per_cmd": sum(per_worker) / commands * 1000,
        "worker_cpu_ms_per_cmd": [round(c / commands * 1000, 3) for c in per_worker],
        "supervisor_cpu_ms_per_cmd": round(supervisor / commands * 1000, 3),
        "client_cpu_ms_per_cmd": sum(r[1] for r in results) / commands * 1000,
        "elapsed": elapsed,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workers", default="1,2", help="worker counts, alternated in each run")
    p.add_argument("--workdir", default="/tmp/mailhub-bench-workers")
    p.add_argument("--smtp-messages", type=int, default=2000)
    p.add_argument("--smtp-sessions", type=int, default=20)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--imap-messages", type=int, default=1000)
    p.add_argument("--imap-procs", type=int, default=2)
    p.add_argument("--imap-sessions", type=int, default=10)
    p.add_argument("--imap-seconds", type=float, default=8.0)
    p.add_argument(
        "--log",
        choices=("stdout", "file"),
        default="stdout",
        help="twistd --logfile=- (workers write their own lines) or a file (the supervisor's)",
    )
    p.add_argument("--skip", choices=("smtp", "imap"), action="append", default=[])
    p.add_argument("--results", default=None, help="append JSON lines here")
    args = p.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    rows = []
    for run in range(1, args.runs + 1):
        for n in counts:
            server = Server(Path(args.workdir) / f"w{n}", n, args.imap_messages, args.log)
            try:
                row: dict[str, object] = {"run": run, "workers": n, "log": args.log}
                row["load_before"] = loadavg()
                if "smtp" not in args.skip:
                    row["smtp"] = smtp_phase(server, args)
                if "imap" not in args.skip:
                    row["imap"] = imap_phase(server, args)
                row["load_after"] = loadavg()
            finally:
                server.stop()
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.results:
                with open(args.results, "a") as f:
                    f.write(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), **row}) + "\n")
    print_summary(rows, counts)
    return 0


def print_summary(rows: list[dict], counts: list[int]) -> None:
    print(f"\n{'workers':>7} {'SMTP msg/s':>10} {'ms CPU/msg':>10} {'IMAP cmd/s':>10} "
          f"{'ms CPU/cmd':>10}   (median of runs)")  # fmt: skip
    medians: dict[int, dict[str, float]] = {}
    for n in counts:
        mine = [r for r in rows if r["workers"] == n]

        def med(phase: str, key: str, mine: list[dict] = mine) -> float:
            xs = sorted(r[phase][key] for r in mine if phase in r)
            return xs[len(xs) // 2] if xs else float("nan")

        medians[n] = {
            "smtp": med("smtp", "rate"),
            "smtp_cpu": med("smtp", "cpu_ms_per_msg"),
            "imap": med("imap", "rate"),
            "imap_cpu": med("imap", "cpu_ms_per_cmd"),
        }
        m = medians[n]
        print(f"{n:>7} {m['smtp']:>10.0f} {m['smtp_cpu']:>10.2f} {m['imap']:>10.0f} "
              f"{m['imap_cpu']:>10.3f}")  # fmt: skip
    for run in sorted({r["run"] for r in rows}):  # same-run ratios (A B order within a run)
        by_n = {r["workers"]: r for r in rows if r["run"] == run}
        if 1 in by_n:
            for n in counts:
                if n != 1 and n in by_n:
                    parts = [
                        f"{phase.upper()} {by_n[n][phase]['rate'] / by_n[1][phase]['rate']:.2f}x"
                        for phase in ("smtp", "imap")
                        if phase in by_n[1] and phase in by_n[n]
                    ]
                    print(f"run {run}: {n} workers / 1: {', '.join(parts)}")
    if 1 in medians:
        for n in counts:
            if n != 1:
                print(f"{n} workers / 1: SMTP {medians[n]['smtp'] / medians[1]['smtp']:.2f}x, "
                      f"IMAP {medians[n]['imap'] / medians[1]['imap']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
