#!/usr/bin/env python3
"""Relay benchmark: messages/s from mailhub A's queue to a receiving server B on loopback, and
A's memory with many messages queued.

    python3 benchmarks/relay_load.py live  --messages 5000 --size 4096 --connections 20
    python3 benchmarks/relay_load.py drain --messages 5000 --size 4096 --connections 20
    python3 benchmarks/relay_load.py memory --messages 10000 --checkpoints 1000,5000,10000

Every run makes a **new** directory ``/var/tmp/mailhub-relay-bench/<time>-<mode>/`` (never
``rm -rf`` + reuse: see benchmarks/README.md, ext4 ``recently_deleted``) with ``a/`` and ``b/``
data directories, ``a.toml``/``b.toml`` and the two twistd logs. Both are real mailhub
instances started as ``twistd -n --pidfile= mailhub --config X.toml``:

* B: ``mx.b.test``, dev stack (``accept_any``), only an SMTP listener on 127.0.0.1:<free port>;
  mail lands in ``b/mail/b.test/user{i}/new/``. ``--receiver null`` uses
  ``benchmarks/null_smtp_server.py`` instead (A's relay ceiling; nothing is stored).
* A: ``mx.a.test``, dev stack (``accept_any``) with ``[relay] routes = { "b.test" =
  "127.0.0.1:<B port>" }``: b.test is then not local, and a catcher with routes relays its
  routed domains for unauthenticated loopback clients (mailhub.smtp.policy), so
  ``benchmarks/smtp_load.py --rcpt-domain b.test`` against A's SMTP port fills A's queue.
  ``[queue] retry_schedule = ["1h"]`` (a failed first attempt is not retried during the run),
  ``delay_notice = 0``, ``max_per_destination`` from ``--per-destination`` (default: mailhub's
  own, 4); ``[relay] tls`` from ``--relay-tls`` (default opportunistic: B offers STARTTLS, so
  A->B is TLS, as in production).

Modes:

* ``live``: B up, then N messages into A. Reports A's inbound rate (smtp_load's acked figure:
  250 at A = durably in A's queue) and the relay rate N / (time from the generator's start until
  B's Maildir holds N); also when A's queue was empty again.
* ``drain``: B not started; N messages into A (each gets its immediate first attempt, refused,
  next attempt in 1h); wait until A is idle; start B; ``mailhub queue retry --data a`` (all now).
  Reports A's inbound rate without relay competition and the pure queue->relay rate:
  N / (time from B's first to its N-th message), plus the figure from the retry command.
* ``memory``: B not started (route to a closed port). Queue N messages at A in steps
  (``--checkpoints``), wait until A is idle after each, read A's VmRSS (/proc/PID/status).
  Then stop A (SIGTERM), start it again with the N messages in the spool: start-up time (spawn
  -> "N message(s) resumed" logged -> SMTP port accepting) and RSS again.

``live`` and ``drain`` also report the ratio to the inbound rate (``relay_over_inbound``;
``drain_over_inbound`` = [from the retry command, first-to-last]), the 1/5/15-minute load
averages before and after (the machine may be shared), and from A's log how many recipients
went over a new or a reused SMTP session and how many new sessions resumed TLS.

Machine gate: before each run it waits (up to 5 min) until the machine has been >= 90 % idle
for 3 s (``--quiet``), like run_matrix.sh, and reports idle % before and after.
All traffic is to 127.0.0.1. Standard library only (plus mailhub's own twistd/CLI).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TICK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- machine state


def cpu_idle_sample() -> tuple[int, int]:
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return idle, sum(parts)


def idle_pct(seconds: float = 1.0) -> float:
    i0, t0 = cpu_idle_sample()
    time.sleep(seconds)
    i1, t1 = cpu_idle_sample()
    return 100.0 * (i1 - i0) / max(t1 - t0, 1)


def wait_quiet(threshold: float, span: float = 3.0, limit: float = 300.0) -> float:
    """Wait until the machine was >= threshold % idle over ``span`` seconds; return that %."""
    deadline = time.monotonic() + limit
    while True:
        pct = idle_pct(span)
        if pct >= threshold or time.monotonic() > deadline:
            return round(pct, 1)


def proc_cpu(pid: int) -> float:
    """user+system CPU seconds of a process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_process_idle(
    pid: int, below: float = 0.03, span: float = 0.5, times: int = 3, limit: float = 600.0
) -> float:
    """Wait until ``pid`` used less than ``below`` of a core in ``times`` consecutive spans."""
    start = time.monotonic()
    calm = 0
    last = proc_cpu(pid)
    while calm < times and time.monotonic() - start < limit:
        time.sleep(span)
        now = proc_cpu(pid)
        calm = calm + 1 if (now - last) / span < below else 0
        last = now
    return time.monotonic() - start


# --------------------------------------------------------------------------- instances


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, limit: float = 60.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return time.monotonic() - start
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"relay_load: nothing listens on 127.0.0.1:{port} after {limit:.0f}s")


OFF = ("submission", "smtps", "imap", "imaps", "pop3", "pop3s", "web")


def write_config(
    path: Path, *, hostname: str, data: Path, port: int, queue: dict, relay: dict
) -> None:
    lines = [
        "[server]",
        f'hostname = "{hostname}"',
        f'data_dir = "{data}"',
        "dev = true",
        "[domains]",
        "accept_any = true",
        "[listeners]",
        f'smtp = ["tcp:{port}:interface=127.0.0.1"]',
        *(f"{k} = []" for k in OFF),
        "[queue]",
        *(f"{k} = {json.dumps(v)}" for k, v in queue.items()),
        "[relay]",
    ]
    for k, v in relay.items():
        if k == "routes":
            lines.append("routes = { " + ", ".join(f'"{d}" = "{t}"' for d, t in v.items()) + " }")
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")


class Instance:
    """One twistd mailhub (or the null server) as a subprocess."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log: Path,
        port: int,
        env: dict | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.name, self.argv, self.log, self.port, self.env = name, argv, log, port, env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Spawn and wait until the port accepts; returns the seconds that took."""
        t0 = time.monotonic()
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env
        )
        out.close()
        wait_port(self.port)
        return time.monotonic() - t0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def twistd() -> list[str]:
    # twistd of this interpreter (the pyenv shim may pick another one)
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "mailhub",
    ]


def a_env(a: argparse.Namespace) -> dict | None:
    """``--a-pythonpath DIR``: put DIR first on A's sys.path, to measure a candidate change
    (another mailhub checkout, or a sitecustomize.py experiment) against the same B."""
    if not a.a_pythonpath:
        return None
    env = dict(os.environ)
    extra = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
    env["PYTHONPATH"] = os.pathsep.join([str(Path(a.a_pythonpath).resolve()), str(ROOT), *extra])
    return env


class Setup:
    def __init__(self, a: argparse.Namespace, mode: str) -> None:
        base = Path(a.dir or "/var/tmp/mailhub-relay-bench")
        self.dir = base / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{mode}"
        self.dir.mkdir(parents=True)
        self.a_port, self.b_port = free_port(), free_port()
        self.a_data, self.b_data = self.dir / "a", self.dir / "b"
        queue = {"retry_schedule": ["1h"], "delay_notice": 0}
        if a.per_destination:
            queue["max_per_destination"] = a.per_destination
        write_config(
            self.dir / "a.toml",
            hostname="mx.a.test",
            data=self.a_data,
            port=self.a_port,
            queue=queue,
            relay={"routes": {"b.test": f"127.0.0.1:{self.b_port}"}, "tls": a.relay_tls},
        )
        write_config(
            self.dir / "b.toml",
            hostname="mx.b.test",
            data=self.b_data,
            port=self.b_port,
            queue={},
            relay={},
        )
        self.A = Instance(
            "A",
            [*twistd(), "--config", str(self.dir / "a.toml")],
            self.dir / "a.log",
            self.a_port,
            env=a_env(a),
            # "python -c" puts the working directory first on sys.path: with ROOT there,
            # ROOT's mailhub would shadow the one in --a-pythonpath.
            cwd=Path(a.a_pythonpath).resolve() if a.a_pythonpath else ROOT,
        )
        if a.receiver == "null":
            argv = [sys.executable, str(HERE / "null_smtp_server.py"), "--port", str(self.b_port)]
        else:
            argv = [*twistd(), "--config", str(self.dir / "b.toml")]
        self.B = Instance("B", argv, self.dir / "b.log", self.b_port)
        self.receiver = a.receiver

    def b_count(self) -> int:
        root = self.b_data / "mail" / "b.test"
        n = 0
        try:
            boxes = os.listdir(root)
        except FileNotFoundError:
            return 0
        for box in boxes:
            try:
                n += len(os.listdir(root / box / "new"))
            except FileNotFoundError:
                pass
        return n

    def queue_count(self) -> int:
        try:
            return sum(1 for n in os.listdir(self.a_data / "queue") if n.endswith(".json"))
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        self.A.stop()
        self.B.stop()


def load(a: argparse.Namespace, port: int, n: int, first: int = 0) -> dict:
    """benchmarks/smtp_load.py against A (its JSON). ``first`` is only a label."""
    argv = [
        sys.executable,
        str(HERE / "smtp_load.py"),
        "--port",
        str(port),
        "--messages",
        str(n),
        "--size",
        str(a.size),
        "--connections",
        str(a.connections),
        "--rcpt-domain",
        "b.test",
        "--json",
        "--label",
        f"from {first}",
    ]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        raise SystemExit(f"relay_load: smtp_load failed: {r.stderr.strip()} {r.stdout.strip()}")
    return json.loads(r.stdout)


class Poller(threading.Thread):
    """Polls B's Maildir count and A's queue every ``every`` s; records when B got its first
    and its N-th message and when A's queue went (back) to zero after being non-zero."""

    def __init__(self, s: Setup, want: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.s, self.want, self.every = s, want, every
        self.t_first = self.t_all = self.t_queue_empty = None
        self.stop_flag = False
        self.queue_seen = False
        self.max_queue = 0

    def run(self) -> None:
        base = self.s.b_count()
        while not self.stop_flag:
            now = time.monotonic()
            got = self.s.b_count() - base
            if got > 0 and self.t_first is None:
                self.t_first = now
            if got >= self.want and self.t_all is None:
                self.t_all = now
            q = self.s.queue_count()
            self.max_queue = max(self.max_queue, q)
            if q:
                self.queue_seen = True
            elif self.queue_seen and self.s.receiver == "null":
                got = self.want  # nothing to count at a null server: A's queue is empty
                self.t_all = self.t_all or now
                self.t_queue_empty = self.t_queue_empty or now
            elif self.queue_seen and self.t_queue_empty is None and got >= self.want:
                self.t_queue_empty = now
            if self.t_all is not None and self.t_queue_empty is not None:
                return
            time.sleep(self.every)


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared: state it per figure)."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def relay_sessions(log: Path) -> dict:
    """From A's log: relayed recipients on a new or a reused session, and TLS handshakes
    that resumed an earlier session (mailhub.relay.courier's per-recipient line)."""
    counts = {"new": 0, "reused": 0, "resumed_tls": 0}
    with open(log, errors="replace") as f:
        for line in f:
            if "[mailhub.relay#info] relay " not in line or " via " not in line:
                continue
            if "reused session" in line:
                counts["reused"] += 1
            elif "new session" in line:
                counts["new"] += 1
                if " resumed " in line:
                    counts["resumed_tls"] += 1
    return counts


def wait_for(cond, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- modes


def mode_live(a: argparse.Namespace) -> dict:
    s = Setup(a, "live")
    out: dict = {"mode": "live", "dir": str(s.dir)}
    try:
        s.B.start()
        s.A.start()
        out["idle_before"] = wait_quiet(a.quiet)
        out["load_before"] = loadavg()
        poll = Poller(s, a.messages)
        cpu0 = {x.name: proc_cpu(x.pid) for x in (s.A, s.B)}
        poll.start()
        t0 = time.monotonic()
        res = load(a, s.a_port, a.messages)
        ok = wait_for(lambda: poll.t_all is not None and poll.t_queue_empty is not None, a.timeout)
        poll.stop_flag = True
        cpu1 = {x.name: proc_cpu(x.pid) for x in (s.A, s.B)}
        out["idle_after"] = round(idle_pct(1.0), 1)
        out["inbound"] = summary(res)
        out["complete"] = ok
        out["max_queue"] = poll.max_queue
        out["load_after"] = loadavg()
        if poll.t_all is not None:
            el = poll.t_all - t0
            out["relay_seconds"] = round(el, 2)
            out["relay_msgs_per_s"] = round(a.messages / el, 1)
            out["relay_over_inbound"] = round(out["relay_msgs_per_s"] / res["acked_msgs_per_s"], 2)
        out["relay_sessions"] = relay_sessions(s.A.log)
        if poll.t_queue_empty is not None:
            out["queue_empty_seconds"] = round(poll.t_queue_empty - t0, 2)
        out["cpu_us_per_msg"] = {k: round((cpu1[k] - cpu0[k]) / a.messages * 1e6) for k in cpu0}
    finally:
        s.stop()
    return out


def mode_drain(a: argparse.Namespace) -> dict:
    s = Setup(a, "drain")
    out: dict = {"mode": "drain", "dir": str(s.dir)}
    try:
        s.A.start()
        out["idle_before"] = wait_quiet(a.quiet)
        out["load_before"] = loadavg()
        res = load(a, s.a_port, a.messages)
        out["inbound"] = summary(res)
        wait_for(lambda: s.queue_count() >= a.messages, 60)
        out["settle_seconds"] = round(wait_process_idle(s.A.pid), 1)
        out["queued"] = s.queue_count()
        s.B.start()
        out["idle_before_drain"] = wait_quiet(a.quiet)
        poll = Poller(s, a.messages, every=0.05)
        cpu0 = {x.name: proc_cpu(x.pid) for x in (s.A, s.B)}
        poll.start()
        t0 = time.monotonic()
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                "from mailhub.cli import main; main()",
                "queue",
                "retry",
                "--data",
                str(s.a_data),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        t_ack = time.monotonic()
        out["retry_command"] = (r.stdout + r.stderr).strip()
        ok = wait_for(lambda: poll.t_all is not None and poll.t_queue_empty is not None, a.timeout)
        poll.stop_flag = True
        cpu1 = {x.name: proc_cpu(x.pid) for x in (s.A, s.B)}
        out["idle_after"] = round(idle_pct(1.0), 1)
        out["complete"] = ok
        out["retry_command_seconds"] = round(t_ack - t0, 2)
        if poll.t_all is not None and poll.t_first is not None:
            el = poll.t_all - poll.t_first
            out["drain_seconds_first_to_last"] = round(el, 2)
            out["drain_msgs_per_s"] = round((a.messages - 1) / max(el, 1e-9), 1)
            out["drain_msgs_per_s_from_retry"] = round(a.messages / (poll.t_all - t0), 1)
            inbound = res["acked_msgs_per_s"]
            out["drain_over_inbound"] = [
                round(out["drain_msgs_per_s_from_retry"] / inbound, 2),
                round(out["drain_msgs_per_s"] / inbound, 2),
            ]
        out["load_after"] = loadavg()
        out["relay_sessions"] = relay_sessions(s.A.log)
        if poll.t_queue_empty is not None:
            out["queue_empty_seconds"] = round(poll.t_queue_empty - t0, 2)
        out["cpu_us_per_msg"] = {k: round((cpu1[k] - cpu0[k]) / a.messages * 1e6) for k in cpu0}
    finally:
        s.stop()
    return out


def mode_memory(a: argparse.Namespace) -> dict:
    s = Setup(a, "memory")
    out: dict = {"mode": "memory", "dir": str(s.dir), "points": []}
    checkpoints = sorted({int(x) for x in a.checkpoints.split(",")} | {a.messages})
    try:
        out["start_seconds"] = round(s.A.start(), 2)
        wait_process_idle(s.A.pid)
        out["rss_kib_empty"] = rss_kib(s.A.pid)
        sent = 0
        for cp in checkpoints:
            out.setdefault("idle_before", wait_quiet(a.quiet))
            res = load(a, s.a_port, cp - sent, sent)
            sent = cp
            wait_for(lambda n=sent: s.queue_count() >= n, 60)
            wait_process_idle(s.A.pid)
            out["points"].append(
                {
                    "queued": s.queue_count(),
                    "rss_kib": rss_kib(s.A.pid),
                    "inbound_msgs_per_s": res["acked_msgs_per_s"],
                }
            )
            print(json.dumps(out["points"][-1]), file=sys.stderr)
        out["rss_kib_before_restart"] = out["points"][-1]["rss_kib"]
        s.A.stop()
        # Restart with the spool full: time to "resumed" in the log and to a listening port.
        size0 = s.A.log.stat().st_size
        t0 = time.monotonic()
        s.A.start()
        t_port = time.monotonic() - t0
        wait_for(lambda: b"resumed" in s.A.log.read_bytes()[size0:], 60)
        wait_process_idle(s.A.pid)
        text = s.A.log.read_bytes()[size0:].decode(errors="replace")
        resumed = [ln for ln in text.splitlines() if "resumed" in ln]
        out["restart"] = {
            "port_open_seconds": round(t_port, 2),
            "resumed_line": resumed[0].strip() if resumed else None,
            "rss_kib": rss_kib(s.A.pid),
            "queued": s.queue_count(),
        }
        # Compare: a fresh start with an empty spool.
        n = out["points"][-1]["queued"]
        p0 = out["rss_kib_empty"]
        out["bytes_per_queued_msg_running"] = round(
            (out["points"][-1]["rss_kib"] - p0) * 1024 / max(n, 1)
        )
        out["bytes_per_queued_msg_after_restart"] = round(
            (out["restart"]["rss_kib"] - p0) * 1024 / max(n, 1)
        )
    finally:
        s.stop()
    return out


def summary(res: dict) -> dict:
    return {
        k: res[k]
        for k in (
            "acked",
            "failed",
            "acked_seconds",
            "acked_msgs_per_s",
            "acked_MB_per_s",
            "latency_ms",
        )
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("live", "drain", "memory"))
    ap.add_argument("--messages", "-n", type=int, default=5000)
    ap.add_argument("--size", "-s", type=int, default=4096)
    ap.add_argument("--connections", "-c", type=int, default=20)
    ap.add_argument("--checkpoints", default="1000,5000,10000", help="memory mode")
    ap.add_argument(
        "--per-destination",
        type=int,
        default=0,
        help="[queue] max_per_destination for A (0: mailhub's default)",
    )
    ap.add_argument(
        "--relay-tls", default="opportunistic", choices=("opportunistic", "none", "verify")
    )
    ap.add_argument("--receiver", default="mailhub", choices=("mailhub", "null"))
    ap.add_argument("--a-pythonpath", help="experiments: DIR first on A's sys.path")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up waiting for B")
    ap.add_argument("--quiet", type=float, default=90.0, help="idle %% to wait for; 0: no gate")
    ap.add_argument("--dir", help="parent of the run directory (/var/tmp/mailhub-relay-bench)")
    a = ap.parse_args(argv)
    if a.receiver == "null" and a.mode != "live":
        ap.error("--receiver null only in live mode (nothing to count at B: A's queue is)")
    fn = {"live": mode_live, "drain": mode_drain, "memory": mode_memory}[a.mode]
    out = fn(a)
    out.update(
        messages=a.messages,
        size=a.size,
        connections=a.connections,
        per_destination=a.per_destination or "default",
        relay_tls=a.relay_tls,
        receiver=a.receiver,
        a_pythonpath=a.a_pythonpath,
    )
    print(json.dumps(out))
    return 0 if out.get("complete", True) else 1


if __name__ == "__main__":
    sys.exit(main())
