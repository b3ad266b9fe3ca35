#!/usr/bin/env python3
"""The IMAP concurrency checker (``mailhub.imapstress``) as a benchmark: mailhub and Dovecot,
the same client, the same seed, in the same run.

N sessions (default 10) on one account, for D seconds each (default 60): random APPEND,
STORE, EXPUNGE, COPY, MOVE, FETCH, SEARCH, IDLE on INBOX and ``Stress``; every session checks
the untagged responses against its model; at the end the models and the mailboxes must agree.
Prints, per target, the commands per second (every tagged command of every session, over the
timed part) and the rule violations found (with a first example of each).

mailhub runs as its own process (``imap_load.py --serve``: the dev stack with only an IMAP
listener, any password logs in), with a fresh data directory; Dovecot is a throwaway
``dovecot -F -c <conf>`` (``imap_load.DOVECOT_CONF``: its own base_dir, a passwd-file,
maildir) with an empty mailbox, started the same way ``imap_load.py`` starts it (needs root and
dovecot-imapd; ``--no-dovecot`` to skip it).

    python3 benchmarks/imap_stress.py --duration 60 --sessions 10 --seed 7

``--trace FILE`` writes every line sent and received (with each session's mailbox and the
violations, marked ``!!``) to FILE.mailhub and FILE.dovecot, to follow a finding back to the
commands that led to it. A seed fixes every session's random choices; which messages they pick
also depends on what the others did first, so a rerun finds the same kinds of violations, not
the same lines.

Exit status 1 when mailhub broke a rule (Dovecot's findings are printed, not judged).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imap_load

from mailhub.imapstress import Report, StressConfig, run_stress

_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of process ``root`` and every descendant, living or reaped
    (a living process's cutime/cstime hold its waited-for children's), from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        pid = int(entry)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(x) for x in fields[11:15]) / _TICK  # utime stime cutime cstime
    total = 0.0
    for pid, cpu in times.items():
        p = pid
        while p > 1 and p != root:
            p = parents.get(p, 0)
        if p == root:
            total += cpu
    return total


class ServerProbe:
    """The server's CPU seconds for ``run_stress`` (all its processes), and on the side those
    of its main thread (mailhub's reactor) at the same moments."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.main: list[float] = []

    def __call__(self) -> float:
        try:
            stat = Path(f"/proc/{self.pid}/task/{self.pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            self.main.append((int(fields[11]) + int(fields[12])) / _TICK)
        except OSError:
            pass
        return tree_cpu(self.pid)

    def main_cpu(self) -> float | None:
        return self.main[-1] - self.main[0] if len(self.main) >= 2 else None


def stress_mailhub(args: argparse.Namespace, config: StressConfig) -> Report:
    data = Path(args.workdir) / "mailhub"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    command = [sys.executable, imap_load.__file__, "--serve", str(data), "--port",
               str(args.mailhub_port)]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        imap_load.wait_for_port(args.mailhub_port, proc, "mailhub")
        probe = ServerProbe(proc.pid)
        report = run_stress("127.0.0.1", args.mailhub_port, config, "mailhub", probe)
        main = probe.main_cpu()
        if main is not None:
            share = 100 * main / report.elapsed
            print(f"mailhub's reactor thread: {main:.1f} s CPU in {report.elapsed:.1f} s "
                  f"({share:.0f}%), all threads {report.server_cpu:.1f} s")  # fmt: skip
        return report
    finally:
        proc.terminate()
        proc.wait(60)


def stress_dovecot(args: argparse.Namespace, config: StressConfig) -> Report:
    base, owner = imap_load.dovecot_base(args.dovecot_dir, config.user, config.password)
    conf = base / "dovecot.conf"
    conf.write_text(
        imap_load.DOVECOT_CONF.format(base=base, uid=owner[0], gid=owner[1], port=args.dovecot_port)
        # the default is 10 connections per user and address: the sessions and the verifier
        + "protocol imap {\n  mail_max_userip_connections = 1000\n}\n"
    )
    proc = subprocess.Popen(["dovecot", "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        imap_load.wait_for_port(args.dovecot_port, proc, "dovecot")
        return run_stress("127.0.0.1", args.dovecot_port, config, "dovecot",
                          lambda: tree_cpu(proc.pid))  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of random commands")
    p.add_argument("--seed", type=int, default=None, help="default: a new one, printed")
    p.add_argument("--workdir", default="/tmp/mailhub-bench-stress")
    p.add_argument("--mailhub-port", type=int, default=2153)
    p.add_argument("--dovecot-port", type=int, default=2154)
    p.add_argument("--dovecot-dir", default="/tmp/mh-bench-dovecot-stress")
    p.add_argument("--idle", default="0.2:1.5", metavar="LOW:HIGH",
                   help="seconds a session stays in IDLE (uniform pick)")  # fmt: skip
    p.add_argument("--no-dovecot", action="store_true")
    p.add_argument("--no-mailhub", action="store_true")
    p.add_argument("--examples", type=int, default=2, help="examples printed per rule")
    p.add_argument("--results", default=None, help="append JSON lines here")
    p.add_argument("--trace", default=None, help="write every line to TRACE.<target>")
    args = p.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(3))
    targets = [] if args.no_mailhub else [("mailhub", stress_mailhub, "stress@example.com", "any")]
    if not args.no_dovecot:
        skip = imap_load.dovecot_available()
        if skip:
            print(f"Dovecot skipped: {skip}")
        else:
            targets.append(("dovecot", stress_dovecot, imap_load.DOVECOT_USER,
                            imap_load.DOVECOT_PASSWORD))  # fmt: skip
    low, _, high = args.idle.partition(":")
    idle = (float(low), float(high or low))
    load = os.getloadavg()
    print(f"seed {seed}, {args.sessions} sessions x {args.duration:.0f} s, IDLE {args.idle} s, "
          f"{os.cpu_count()} CPUs, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)  # fmt: skip
    failed = False
    table = []
    for name, fn, user, password in targets:
        config = StressConfig(user=user, password=password, sessions=args.sessions,
                              duration=args.duration, seed=seed,
                              trace=args.trace is not None, idle=idle)  # fmt: skip
        report = fn(args, config)
        print(report.summary(args.examples), flush=True)
        print(report.timings(), flush=True)
        table.append((name, report))
        if args.trace and report.world.trace is not None:
            Path(f"{args.trace}.{name}").write_text("\n".join(report.world.trace) + "\n")
        if name == "mailhub" and (report.world.violations or report.errors):
            failed = True
        if args.results:
            with open(args.results, "a") as f:
                row = {"target": name, "seed": seed, "sessions": args.sessions,
                       "seconds": round(report.elapsed, 1), "commands": report.world.commands,
                       "commands_per_s": round(report.commands_per_second, 1),
                       "violations": report.by_rule(), "loadavg": os.getloadavg()[0],
                       "client_cpu_s": round(report.client_cpu, 2),
                       "server_cpu_s": round(report.server_cpu or 0, 2)}  # fmt: skip
                f.write(json.dumps(row) + "\n")
    print(
        f"{'target':8} {'commands':>9} {'per s':>7} {'client ms/cmd':>13} "
        f"{'server ms/cmd':>13} {'client %':>8} {'server %':>8} {'violations':>10}  by rule"
    )
    for name, r in table:
        client, server = r.cpu_per_command()
        server_share = 100 * (r.server_cpu or 0) / r.elapsed
        print(f"{name:8} {r.world.commands:>9} {r.commands_per_second:>7.0f} {client:>13.2f} "
              f"{server or 0:>13.2f} {100 * r.client_cpu / r.elapsed:>8.0f} {server_share:>8.0f} "
              f"{len(r.world.violations):>10}  {r.by_rule()}")  # fmt: skip
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
