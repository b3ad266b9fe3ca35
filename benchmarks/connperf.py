#!/usr/bin/env python3
"""SMTP with one connection per message: mailhub against Postfix in one run, alternating.

    python3 benchmarks/connperf.py [--cases 4096:20:2000,4096:1:1000,262144:20:500] \\
        [--repeats 2] [--tools smtp-source,smtp_load] [--checks on|off] [--out FILE]

Before the runs it starts (each as its own process, all on 127.0.0.1):

* a small authoritative DNS server (``--serve-dns``, twisted.names from tests/support/localdns)
  answering for the senders' domains: SPF ``v=spf1 ip4:127.0.0.1 -all`` and DMARC ``p=none`` for
  ``bench.invalid`` (smtp_load) and ``source.bench.invalid`` (smtp-source), NXDOMAIN for the rest.
  So the checks ask real DNS over UDP and cache it, and nothing leaves the machine;
* mailhub in **production** mode as an MX for example.com (catch-all), only an SMTP listener,
  ``[checks] enabled`` from ``--checks``, logging to a file, under ``twistd -n`` of ``--python``
  (default: this interpreter) in this checkout, in a new data directory;
* the private Postfix of ``setup_postfix.sh`` must already run (``--postfix-dir``,
  ``--postfix-port``; the script's defaults).

Then for every repeat, case (SIZE:SESSIONS:MESSAGES) and tool, it runs mailhub and Postfix one
after the other, the order swapped each time (A B B A ...). The tools:

* ``smtp-source`` (Postfix's own, one connection per message: no ``-d``): ``-s SESSIONS -m
  MESSAGES -l BODY -f load@source.bench.invalid -t userK@example.com`` (K = run number % 100,
  one mailbox per run), ``-M loadgen.source.bench.invalid``; the body length is SIZE minus
  smtp-source's own headers (about 200 octets).
* ``smtp_load`` (``benchmarks/smtp_load.py --conn-per-message``): the same, pipelined
  MAIL/RCPT/DATA, messages spread over 100 mailboxes.

A run is done when the Maildir tree holds MESSAGES more files (mailhub's 250 already means
that; Postfix's means "in the queue"); msg/s = MESSAGES / (start -> last file seen). Server CPU is
user+system of every thread (mailhub: the twistd process; Postfix: master and all its children,
including those that exited, from /proc/PID/stat), per message; for mailhub also split into the
reactor (main) thread and the others (the store's fsync threads), with the voluntary context
switches of all its threads per message (/proc/PID/task/*/). Each line also has the load
average and the machine's idle % during the run. One JSON object per run goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from smtp_load import count_maildir  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
SOURCE_DOMAIN = "source.bench.invalid"


# --------------------------------------------------------------------------- DNS


def serve_dns(port: int) -> None:
    sys.path.insert(0, str(REPO))
    from twisted.internet import reactor
    from twisted.names import dns, server

    from tests.support.localdns import DictResolver

    spf = ["v=spf1 ip4:127.0.0.1 -all"]
    zone = {}
    for d in ("bench.invalid", SOURCE_DOMAIN):
        zone[d] = {"TXT": spf}
        zone["loadgen." + d] = {"TXT": spf}
        zone["_dmarc." + d] = {"TXT": ["v=DMARC1; p=none"]}
    factory = server.DNSServerFactory(authorities=[DictResolver(zone, ttl=3600)])
    reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- CPU and load


def _stat(pid: int) -> list[str]:
    return _stat_path(f"/proc/{pid}/stat")


def proc_cpu(pid: int) -> float:
    """utime+stime of every thread of pid, seconds."""
    s = _stat(pid)
    return (int(s[11]) + int(s[12])) / TICK


def thread_cpu(pid: int) -> tuple[float, float, int]:
    """(main thread's CPU, the other threads' CPU, voluntary context switches of all threads):
    mailhub's reactor runs in the main thread, the store's fsync work in the others."""
    main = others = 0.0
    switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            s = _stat_path(f"/proc/{pid}/task/{tid}/stat")
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        switches += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile (its CPU stays in the process's total)
        cpu = (int(s[11]) + int(s[12])) / TICK
        if tid == str(pid):
            main += cpu
        else:
            others += cpu
    return main, others, switches


def _stat_path(path: str) -> list[str]:
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()


def tree_cpu(root: int) -> float:
    """root's own CPU, its children that exited (cutime/cstime) and its live children."""
    s = _stat(root)
    total = sum(int(x) for x in s[11:15])
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            c = _stat(int(d))
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(c[1]) == root:
            total += int(c[11]) + int(c[12])
    return total / TICK


def cpu_idle() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return v[3] + v[4], sum(v)


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"connperf: nothing listens on 127.0.0.1:{port}")


# --------------------------------------------------------------------------- targets


class Target:
    name = ""
    port = 0
    maildir = Path()

    def cpu(self) -> float:
        raise NotImplementedError

    def threads(self) -> tuple[float, float, int] | None:
        return None


class Mailhub(Target):
    def __init__(
        self, name: str, checkout: Path, python: str, base: Path, checks: bool, dns_port: int
    ) -> None:
        self.name = name
        self.dir = base
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.maildir = self.dir / "data" / "mail"
        conf = self.dir / "mailhub.toml"
        conf.write_text(
            "\n".join(
                [
                    "[server]",
                    'hostname = "mx.example.com"',
                    f'data_dir = "{self.dir / "data"}"',
                    "[domains]",
                    'local = ["example.com"]',
                    'catch_all = ["example.com"]',
                    "[listeners]",
                    f'smtp = ["tcp:{self.port}:interface=127.0.0.1"]',
                    "[checks]",
                    f"enabled = {'true' if checks else 'false'}",
                    f'nameservers = ["127.0.0.1:{dns_port}"]',
                    "",
                ]
            )
        )
        # twistd of the given interpreter, run in the checkout (its twisted/plugins is found
        # through sys.path[0] = "").
        argv = [python, "-c", "from twisted.scripts.twistd import run; run()", "-n"]
        argv += ["--pidfile=", "--logfile", str(self.dir / "twistd.log")]
        argv += ["mailhub", "--config", str(conf)]
        self.proc = subprocess.Popen(argv, cwd=checkout)
        wait_port(self.port)

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def threads(self) -> tuple[float, float, int] | None:
        return thread_cpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class Postfix(Target):
    name = "postfix"

    def __init__(self, base: Path, port: int) -> None:
        self.base = base
        self.port = port
        self.maildir = base / "mail"
        wait_port(port, 5)

    def master(self) -> int:
        return int((self.base / "queue" / "pid" / "master.pid").read_text().split()[0])

    def cpu(self) -> float:
        return tree_cpu(self.master())


# --------------------------------------------------------------------------- one run


def run_one(t: Target, tool: str, size: int, sessions: int, messages: int, k: int) -> dict:
    base = count_maildir(str(t.maildir))
    if tool == "smtp-source":
        # smtp-source writes From/To/Date/Message-Id/(Subject) headers itself (~190 octets).
        argv = [
            "smtp-source",
            "-s",
            str(sessions),
            "-m",
            str(messages),
            "-l",
            str(max(size - 190, 1)),
            "-f",
            f"load@{SOURCE_DOMAIN}",
            "-t",
            f"user{k % 100}@example.com",
            "-M",
            f"loadgen.{SOURCE_DOMAIN}",
            f"127.0.0.1:{t.port}",
        ]
    else:
        argv = [
            sys.executable,
            str(HERE / "smtp_load.py"),
            "--conn-per-message",
            "--json",
            "--port",
            str(t.port),
            "--messages",
            str(messages),
            "--size",
            str(size),
            "--connections",
            str(sessions),
        ]
    load0 = loadavg()
    idle0 = cpu_idle()
    cpu0 = t.cpu()
    threads0 = t.threads()
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    t_tool = time.monotonic() - t0
    want = base + messages
    deadline = time.monotonic() + 120
    n = count_maildir(str(t.maildir))
    while n < want and time.monotonic() < deadline:
        time.sleep(0.01)
        n = count_maildir(str(t.maildir))
    t1 = time.monotonic()
    time.sleep(0.2)  # let the last deliveries' processes finish their accounting
    cpu1 = t.cpu()
    threads1 = t.threads()
    idle1 = cpu_idle()
    got = n - base
    el = t1 - t0
    out = {
        "target": t.name,
        "tool": tool,
        "size": size,
        "sessions": sessions,
        "messages": messages,
        "in_maildir": got,
        "ok": got == messages and proc.returncode == 0,
        "seconds": round(el, 3),
        "tool_seconds": round(t_tool, 3),
        "msgs_per_s": round(got / el, 1),
        "server_cpu_ms_per_msg": round((cpu1 - cpu0) / max(got, 1) * 1000, 3),
        "idle_pct": round(100 * (idle1[0] - idle0[0]) / max(idle1[1] - idle0[1], 1), 1),
        "load_before": load0,
        "load_after": loadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if threads0 is not None and threads1 is not None:
        per = 1000 / max(got, 1)
        out["reactor_cpu_ms_per_msg"] = round((threads1[0] - threads0[0]) * per, 3)
        out["other_threads_cpu_ms_per_msg"] = round((threads1[1] - threads0[1]) * per, 3)
        out["voluntary_switches_per_msg"] = round((threads1[2] - threads0[2]) / max(got, 1), 1)
    if tool == "smtp_load" and proc.stdout.strip():
        r = json.loads(proc.stdout)
        out["latency_ms"] = r["latency_ms"]
        out["errors"] = r["errors"][:3]
    if proc.returncode != 0:
        out["stderr"] = (proc.stderr or proc.stdout)[-500:]
    return out


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-dns":
        serve_dns(int(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="4096:20:2000,4096:1:1000,262144:20:500")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tools", default="smtp-source,smtp_load")
    ap.add_argument(
        "--targets",
        default="mailhub,postfix",
        help="mailhub, postfix, or NAME=DIR: a mailhub run from the checkout DIR (its mailhub/ "
        "comes first on sys.path), e.g. base=/var/tmp/base,mailhub,postfix",
    )
    ap.add_argument("--checks", choices=("on", "off"), default="on")
    ap.add_argument("--python", default=sys.executable, help="runs mailhub's twistd")
    ap.add_argument("--postfix-dir", default="/var/tmp/mailhub-bench-postfix")
    ap.add_argument("--postfix-port", type=int, default=2525)
    ap.add_argument("--workdir", default="/var/tmp/mailhub-connperf")
    ap.add_argument("--out", help="JSON lines file (default: WORKDIR/results-<time>.jsonl)")
    ap.add_argument("--keep", action="store_true", help="keep mailhub's data directory")
    a = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(a.out) if a.out else work / f"results-{stamp}.jsonl"
    dns_port = free_port()
    dns = subprocess.Popen([sys.executable, __file__, "--serve-dns", str(dns_port)], cwd=REPO)
    targets: list[Target] = []
    mailhubs: list[Mailhub] = []
    try:
        for spec in a.targets.split(","):
            if spec == "postfix":
                targets.append(Postfix(Path(a.postfix_dir), a.postfix_port))
                continue
            name, _, checkout = spec.partition("=")
            where = work / f"{stamp}-{os.getpid()}-{name}"
            m = Mailhub(name, Path(checkout or REPO), a.python, where, a.checks == "on", dns_port)
            mailhubs.append(m)
            targets.append(m)
        cases = [tuple(int(x) for x in c.split(":")) for c in a.cases.split(",")]
        flip = False
        k = 0
        print(
            f"{'target':8} {'tool':11} {'case':>14} {'msg/s':>8} {'cpu ms/msg':>10} "
            f"{'reactor':>7} {'idle%':>5} {'load':>5}  ok"
        )
        with open(out, "a") as f:
            for rep in range(a.repeats):
                for size, sessions, messages in cases:
                    for tool in a.tools.split(","):
                        order = targets[::-1] if flip else targets
                        flip = not flip
                        for t in order:
                            k += 1
                            r = run_one(t, tool, size, sessions, messages, k)
                            r["repeat"] = rep
                            r["checks"] = a.checks
                            f.write(json.dumps(r) + "\n")
                            f.flush()
                            case = f"{size // 1024}K x{sessions} x{messages}"
                            print(
                                f"{t.name:8} {tool:11} {case:>14} {r['msgs_per_s']:8.1f} "
                                f"{r['server_cpu_ms_per_msg']:10.3f} "
                                f"{r.get('reactor_cpu_ms_per_msg', float('nan')):7.3f} "
                                f"{r['idle_pct']:5.0f} "
                                f"{r['load_before']:5.2f}  {r['ok']}"
                                + (f"  {r.get('stderr', '')[:200]!r}" if not r["ok"] else ""),
                                flush=True,
                            )
    finally:
        for m in mailhubs:
            m.stop()
            if not a.keep:
                shutil.rmtree(m.dir, ignore_errors=True)
        dns.terminate()
        dns.wait(10)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
