#!/usr/bin/env python3
"""Inbound throughput with the checks (SPF, DKIM, DMARC, ARC) on and off: port 25, 4 KiB
messages, 20 sessions (issue 14: on should be at least 0.8 x off).

For each mode, this script starts (as its own process, ``--serve``) a production mailhub for
example.com with only an SMTP listener on 127.0.0.1 and a small authoritative DNS server
(twisted.names, 127.0.0.1) that answers for the load generator's domain: SPF
``v=spf1 ip4:127.0.0.1 -all`` for bench.invalid and ``loadgen.bench.invalid`` (HELO), DMARC
``p=none``. Then ``benchmarks/smtp_load.py`` sends N messages over C connections and reports
what was acknowledged per second. The messages are unsigned, so this measures the checks'
pipeline with its DNS answers cached (the first message of each kind asks, the rest hit the
cache), not DKIM's cryptography (see the signing/verifying benchmarks for that).

    python3 benchmarks/inbound_checks.py --messages 2000 --size 4096 --connections 20

Prints one line per run and the ratio; --json for JSON lines. ``--order off,on,off,on`` runs
the modes alternately (A B A B: the machine's load drifts); mode ``sink`` is the checking sink
with a judge that does nothing (what holding the message and adding the header cost).
``--signed`` sends a message signed with RSA-2048 and Ed25519 (both keys published by the DNS
server; ``Message-ID`` is outside ``h=``, so each copy verifies); ``--signed rsa`` or
``--signed ed25519`` one signature only (most real mail carries one RSA signature).
``server_cpu_us_per_msg`` is the server process's user+system CPU over the run per message
(steadier than msg/s on a shared machine), ``reactor_cpu_us_per_msg`` its reactor thread's, and
``others_user_us_per_msg`` / ``others_sys_us_per_msg`` the other threads' (the store's fsyncs
are most of their system time, which swings with the disk's other users: compare user time);
``--profile DIR`` writes a cProfile of the server's reactor thread per run. Mode ``inline``:
checks on, with the DKIM cryptography on the reactor (not in ``cryptothread``), for A/B.

Runs are kept apart: before each run (the first too) the script calls ``sync`` and then pauses
``--settle`` seconds (3 by default), so the writeback of one run's 3,000 files does not land in
the next run's fsyncs (without it, every run after the first showed about twice the server CPU
per message, in both modes). Every run's data dir is kept until the script ends (``--workdir``,
a new directory under the system's temporary one by default): on ext4 without a journal, as
on the machine these figures come from, creating files skips the inodes freed in the last
seconds, so a run right after the previous run's files were deleted paid up to 5x the store
threads' system time (1,000 against 200 us per message), and the first run of a series was
fast only because nothing had been deleted yet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# the process helpers of the IDLE benchmark beside this file
from idle_latency import free_ports, wait_for_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def signed_template(
    size: int, directory: Path, kind: str = "dual"
) -> tuple[Path, dict[str, list[str]]]:
    """A message of about ``size`` octets signed (dkimpy) with RSA-2048 (``kind`` "rsa"),
    Ed25519 ("ed25519") or both ("dual": RSA first, Ed25519 on top), and the DNS TXT records
    of the two keys."""
    import dkim

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(REPO))
    from benchkeys import make_keys
    from smtp_load import build_body

    keys = make_keys()
    message = build_body(size - 800)[0][: -len(b".\r\n")]
    signed = b"From To Subject Date MIME-Version Content-Type".split()
    if kind in ("rsa", "dual"):
        rsa_sig = dkim.sign(message, b"rsa", b"bench.invalid", keys.rsa_pem, include_headers=signed)
        message = rsa_sig + message
    if kind in ("ed25519", "dual"):
        ed_sig = dkim.sign(
            message,
            b"ed",
            b"bench.invalid",
            keys.ed_seed,
            include_headers=signed,
            signature_algorithm=b"ed25519-sha256",
        )
        message = ed_sig + message
    path = directory / "signed.eml"
    path.write_bytes(message)
    return path, {
        "rsa._domainkey.bench.invalid": [keys.rsa_record],
        "ed._domainkey.bench.invalid": [keys.ed_record],
    }


def cpu_ticks(pid: int, thread: int | None = None) -> int:
    """User + system CPU of a process (all its threads), or of one of its threads, in ticks."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    with open(path) as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def threads_split(pid: int) -> dict[str, int]:
    """Of all the process's threads but the reactor's (the main one): user and system CPU
    ticks, and voluntary and involuntary context switches, summed."""
    out = {"user": 0, "sys": 0, "vol": 0, "invol": 0}
    for tid in os.listdir(f"/proc/{pid}/task"):
        if int(tid) == pid:
            continue
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = f.read()
        except OSError:
            continue
        out["user"] += int(fields[11])
        out["sys"] += int(fields[12])
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                out["vol"] += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                out["invol"] += int(line.split()[1])
    return out


def switches(pid: int, thread: int) -> int:
    """Voluntary context switches of one thread so far (each a wait: for the GIL, a lock, a
    poll with nothing ready)."""
    with open(f"/proc/{pid}/task/{thread}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def serve(
    data_dir: str,
    smtp_port: int,
    dns_port: int,
    mode: str,
    zone_file: str,
    profile: str,
    dkim_thread: bool = False,
) -> None:
    """The server process: the DNS server and mailhub in one reactor. The reactor thread's CPU
    in each DKIM verification is written to ``dkim_cpu.json`` in ``data_dir`` at the end;
    ``dkim_thread`` sends every message's DKIM cryptography to the thread pool."""
    sys.path.insert(0, str(REPO))
    from twisted.internet import reactor
    from twisted.names import dns, server

    mode, _, store_threads = mode.partition(":")
    if store_threads:  # "on:4": the store's fsync threads (GroupCommitter's, 16) made 4
        from mailhub.store import delivery

        original = delivery.GroupCommitter.__init__

        def init(self: Any, reactor: Any = None, threads: int = 16, holding: int = 2) -> None:
            original(self, reactor, int(store_threads), holding)

        delivery.GroupCommitter.__init__ = init  # type: ignore[method-assign]

    from mailhub.config import ChecksConfig, Config, DomainsConfig, ListenersConfig
    from mailhub.service import build
    from tests.support.localdns import DictResolver

    spf = ["v=spf1 ip4:127.0.0.1 -all"]
    zone = {
        "bench.invalid": {"TXT": spf},
        "loadgen.bench.invalid": {"TXT": spf},
        "_dmarc.bench.invalid": {"TXT": ["v=DMARC1; p=none"]},
    }
    if zone_file:
        with open(zone_file) as f:
            zone.update({name: {"TXT": txt} for name, txt in json.load(f).items()})
    factory = server.DNSServerFactory(authorities=[DictResolver(zone)])
    reactor.listenUDP(dns_port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")  # type: ignore[attr-defined]
    config = Config(
        source="<inbound checks benchmark>",
        hostname="mx.example.com",
        data_dir=Path(data_dir),
        dev=False,
        domains=DomainsConfig(local=("example.com",), catch_all=("example.com",)),
        listeners=ListenersConfig(smtp=(f"tcp:{smtp_port}:interface=127.0.0.1",)),
        checks=ChecksConfig(enabled=mode != "off", nameservers=(("127.0.0.1", dns_port),)),
    )
    if mode == "sink":
        # CheckingSink with a judge that does nothing: the cost of holding the message and
        # adding the header, without the checks themselves.
        import mailhub.service
        from mailhub.checks.inbound import unchecked

        def null_judge(resolver: object, *, authserv_id: str, **_: object) -> object:
            async def judge(message: bytes, envelope: object) -> object:
                return unchecked(authserv_id, "benchmark: not checked")

            return judge

        mailhub.service.judge_with = null_judge  # type: ignore[assignment]
    time_dkim(Path(data_dir) / "dkim_cpu.json", reactor)
    time_gc(Path(data_dir) / "gc.json", reactor)
    time_commits(Path(data_dir) / "commits.json", reactor)
    if mode == "inline":
        # Checks on, with the DKIM cryptography on the reactor (before cryptothread).
        try:
            from mailhub.checks.cryptothread import CryptoThread
        except ImportError:  # a tree from before it: inline anyway
            pass
        else:
            CryptoThread.run = lambda self, job: None  # type: ignore[method-assign,assignment]
    if dkim_thread:
        from mailhub.checks import dkimverify

        dkimverify.INLINE_LIMIT = -1  # every message verified in the reactor's thread pool
    service = build(config)
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    if not profile:
        reactor.run()  # type: ignore[attr-defined]
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.runcall(reactor.run)  # type: ignore[attr-defined]
    profiler.dump_stats(profile)


def time_dkim(path: Path, reactor: Any) -> None:
    """The reactor thread's CPU in each DKIM verification (``verify_dkim``, and
    ``verify_at_once`` for mail judged from the caches; wrapped before the service is built,
    so the judge calls the wrappers), written as JSON to ``path`` when the reactor stops. A
    ``verify_dkim`` call that waits (a DNS question, a thread) counts what the reactor did
    meanwhile too: the median is the figure."""
    from mailhub.checks import dkimverify

    spent: list[float] = []
    verify = dkimverify.verify_dkim
    at_once = getattr(dkimverify, "verify_at_once", None)  # (code before it had none)

    async def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return await verify(*args, **kwargs)
        finally:
            spent.append(time.thread_time() - start)

    def timed_at_once(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return at_once(*args, **kwargs)
        finally:
            spent.append(time.thread_time() - start)

    def write() -> None:
        path.write_text(json.dumps(spent))

    dkimverify.verify_dkim = timed  # type: ignore[assignment]
    if at_once is not None:
        dkimverify.verify_at_once = timed_at_once  # type: ignore[assignment]
    reactor.addSystemEventTrigger("after", "shutdown", write)


def time_commits(path: Path, reactor: Any) -> None:
    """Per message, the wall time from ``commit()`` to its answer of the checking sink (the
    judgement, then the store's commit: with the checks on) and of the store's own commit (the
    file written, fsync'd, linked, its directory fsync'd), as JSON lines of seconds in
    ``path`` when the reactor stops. With 20 sessions the rate is 20 over the time a message
    takes, so what the checks add to it shows here (the judgement's hops, and the store's
    commit slowed by a busier reactor: its threads need the GIL between system calls)."""
    from mailhub.checks import sink
    from mailhub.store import delivery

    spent: dict[str, list[float]] = {"check": [], "store": []}

    def timed(cls: Any, key: str) -> None:
        commit = cls.commit

        def wrapper(self: Any) -> Any:
            start = time.perf_counter()
            d = commit(self)
            kept = spent[key]
            return d.addBoth(lambda r: (kept.append(time.perf_counter() - start), r)[1])

        cls.commit = wrapper

    timed(sink._CheckedMessage, "check")
    timed(delivery.MaildirMessage, "store")
    reactor.addSystemEventTrigger("after", "shutdown", lambda: path.write_text(json.dumps(spent)))


def time_gc(path: Path, reactor: Any) -> None:
    """The CPU of the garbage collector's passes (by generation) while the server runs,
    written as JSON to ``path`` when the reactor stops (what allocating per message costs
    beyond the allocations themselves: a big heap makes the older generations' passes
    dear)."""
    import gc

    started: list[float] = [0.0]
    spent = {"0": [0, 0.0], "1": [0, 0.0], "2": [0, 0.0]}

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
        else:
            kept = spent[str(info["generation"])]
            kept[0] += 1
            kept[1] += time.thread_time() - started[0]

    gc.callbacks.append(callback)
    reactor.addSystemEventTrigger("after", "shutdown", lambda: path.write_text(json.dumps(spent)))


def settle(pause: float) -> None:
    """Let the disk settle between runs: everything written (and the previous run's removed
    data dir) reaches the disk now, then a short fixed pause for the journal and the load
    average's other work (``sync`` waits for writeback, not for ext4's commit thread)."""
    os.sync()
    time.sleep(pause)


def run_smtp_source(args: argparse.Namespace, port: int, data: Path, template: str) -> dict:
    """Postfix's ``smtp-source`` as the load generator (``--tool smtp-source``): ``-s C -m N
    -d`` (C sessions, each reused for its messages like smtp_load's), the message from a file
    (``-F``: the signed template, or smtp_load's unsigned one) with its lines ended by LF, as
    smtp-source appends CRLF to each line itself. A C program spends a fraction of the Python
    generator's ~400 us of CPU per message, which on this two-core machine is taken from the
    server under test in both modes alike. Counted until every message is in the Maildir."""
    sys.path.insert(0, str(HERE))
    from smtp_load import build_body, count_maildir

    message = Path(template).read_bytes() if template else build_body(args.size)[0][:-3]
    source = data / "smtp-source.eml"
    source.write_bytes(message.replace(b"\r\n", b"\n"))
    maildir = str(data / "mail")
    base = count_maildir(maildir)
    start = time.monotonic()
    before = os.times()
    subprocess.run(
        [
            "smtp-source",
            *("-s", str(args.connections), "-m", str(args.messages), "-d"),
            *("-F", str(source), "-f", "load@bench.invalid", "-t", "user0@example.com"),
            *("-M", "loadgen.bench.invalid", f"127.0.0.1:{port}"),
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    acked_at = time.monotonic()
    after = os.times()
    deadline = acked_at + 120
    got = count_maildir(maildir) - base
    while got < args.messages and time.monotonic() < deadline:
        time.sleep(0.005)
        got = count_maildir(maildir) - base
    if got < args.messages:
        raise SystemExit(f"smtp-source: {got} of {args.messages} messages in the Maildir")
    elapsed = time.monotonic() - start
    generator = after.children_user + after.children_system
    generator -= before.children_user + before.children_system
    return {
        "tool": "smtp-source",
        "acked": args.messages,
        "acked_seconds": round(acked_at - start, 4),
        "acked_msgs_per_s": round(args.messages / elapsed, 1),
        "generator_cpu_us_per_msg": round(generator / args.messages * 1e6, 1),
    }


def run(mode: str, args: argparse.Namespace, index: int) -> dict:
    settle(args.settle)
    if args.ports:  # the caller's own range: two ports per run
        smtp, dns_port = args.ports + 2 * index, args.ports + 2 * index + 1
    else:
        smtp, dns_port = free_ports(2)
    # (kept until the script ends: see "Runs are kept apart")
    data = tempfile.mkdtemp(prefix=f"run{index:02d}-{mode}-", dir=args.workdir)
    zone_file = template = ""
    if args.signed:
        path, records = signed_template(args.size, Path(data), args.signed)
        template = str(path)
        zone_file = str(Path(data) / "zone.json")
        Path(zone_file).write_text(json.dumps(records))
    profile = ""
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        profile = str(Path(args.profile) / f"{index:02d}-{mode}.prof")
    command = [sys.executable, __file__, "--serve", data, str(smtp), str(dns_port), mode]
    proc = subprocess.Popen([*command, zone_file, profile, "1" if args.dkim_thread else ""])
    try:
        wait_for_port(smtp, proc)
        before = cpu_ticks(proc.pid)
        reactor_before = cpu_ticks(proc.pid, proc.pid)  # the main thread runs the reactor
        waits_before = switches(proc.pid, proc.pid)
        others_before = threads_split(proc.pid)
        if args.tool == "smtp-source":
            result = run_smtp_source(args, smtp, Path(data), template)
        else:
            out = subprocess.run(
                [
                    sys.executable,
                    str(HERE / "smtp_load.py"),
                    "--port",
                    str(smtp),
                    "--messages",
                    str(args.messages),
                    "--size",
                    str(args.size),
                    "--connections",
                    str(args.connections),
                    "--maildir-root",
                    str(Path(data) / "mail"),
                    "--json",
                    *(["--template", template] if template else []),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            result = json.loads(out.stdout)
        used = cpu_ticks(proc.pid) - before
        reactor_used = cpu_ticks(proc.pid, proc.pid) - reactor_before
        waits = switches(proc.pid, proc.pid) - waits_before
        others_after = threads_split(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    spent = Path(data) / "dkim_cpu.json"
    dkim_cpu = json.loads(spent.read_text()) if spent.exists() else []
    gc_path = Path(data) / "gc.json"
    gc_spent = json.loads(gc_path.read_text()) if gc_path.exists() else {}
    if dkim_cpu:
        dkim_cpu.sort()
        result["dkim_reactor_us_median"] = round(dkim_cpu[len(dkim_cpu) // 2] * 1e6)
    commits_path = Path(data) / "commits.json"
    if commits_path.exists():
        for key, times in json.loads(commits_path.read_text()).items():
            if times:
                times.sort()
                result[f"{key}_commit_ms_p50"] = round(times[len(times) // 2] * 1e3, 2)
    if gc_spent:
        # from the server's start: its first messages and warm-up too (an upper bound)
        acked = max(result["acked"], 1)
        result["gc_us_per_msg"] = round(sum(t for _, t in gc_spent.values()) / acked * 1e6)
        result["gc_passes"] = {g: n for g, (n, _) in gc_spent.items()}
    result["checks"] = mode
    result["signed"] = args.signed
    ticks = os.sysconf("SC_CLK_TCK")
    result["server_cpu_us_per_msg"] = round(used / ticks / max(result["acked"], 1) * 1e6)
    result["reactor_cpu_us_per_msg"] = round(reactor_used / ticks / max(result["acked"], 1) * 1e6)
    result["reactor_waits_per_msg"] = round(waits / max(result["acked"], 1), 2)
    acked = max(result["acked"], 1)
    for key in ("user", "sys"):
        spent = others_after[key] - others_before[key]
        result[f"others_{key}_us_per_msg"] = round(spent / ticks / acked * 1e6)
    for key in ("vol", "invol"):
        result[f"others_{key}_switches_per_msg"] = round(
            (others_after[key] - others_before[key]) / acked, 2
        )
    with open("/proc/loadavg") as f:
        result["loadavg"] = f.read().split()[0]
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        a = sys.argv[2:]
        serve(a[0], int(a[1]), int(a[2]), a[3], a[4], a[5], bool(a[6]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", "-n", type=int, default=2000)
    ap.add_argument("--size", "-s", type=int, default=4096)
    ap.add_argument("--connections", "-c", type=int, default=20)
    ap.add_argument(
        "--signed",
        nargs="?",
        const="dual",
        choices=["rsa", "ed25519", "dual"],
        help="DKIM-signed mail: one RSA-2048 or one Ed25519 signature, or both (dual, the "
        "default of a bare --signed)",
    )
    ap.add_argument(
        "--order",
        default="off,on",
        help="modes in the order run: off, on, inline (checks on, the DKIM cryptography on "
        "the reactor, not in its thread), sink (checks on, judge does nothing); MODE:N with "
        "N store fsync threads instead of 16",
    )
    ap.add_argument("--profile", metavar="DIR", help="cProfile the server's reactor thread")
    ap.add_argument(
        "--dkim-thread",
        action="store_true",
        help="verify DKIM signatures in the reactor's thread pool, not inline (an experiment)",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=3.0,
        metavar="S",
        help="before each run: sync, then pause S seconds (the previous run's writeback and "
        "removed data dir out of the way)",
    )
    ap.add_argument(
        "--workdir",
        help="the runs' data dirs, all kept until the end (default: a new temporary dir, "
        "removed at the end)",
    )
    ap.add_argument(
        "--tool",
        choices=["smtp_load", "smtp-source"],
        default="smtp_load",
        help="the load generator: benchmarks/smtp_load.py (Python) or Postfix's smtp-source",
    )
    ap.add_argument(
        "--ports",
        type=int,
        default=0,
        metavar="BASE",
        help="run i listens on BASE+2i (SMTP) and BASE+2i+1 (DNS); default: free ports",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        return run_all(args)
    with tempfile.TemporaryDirectory(prefix="inbound-checks-") as workdir:
        args.workdir = workdir
        return run_all(args)


def run_all(args: argparse.Namespace) -> int:
    rates: dict[str, list[float]] = {"off": [], "on": [], "inline": [], "sink": []}
    cpu: dict[str, list[int]] = {"off": [], "on": [], "inline": [], "sink": []}
    for index, mode in enumerate(args.order.split(",")):
        result = run(mode, args, index)
        rates.setdefault(mode, []).append(result["acked_msgs_per_s"])
        cpu.setdefault(mode, []).append(result["server_cpu_us_per_msg"])
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"checks {mode:3}: {result['acked_msgs_per_s']:7.1f} msg/s acknowledged, "
                f"server CPU {result['server_cpu_us_per_msg']} us/msg "
                f"(reactor thread {result['reactor_cpu_us_per_msg']}"
                + (
                    f", DKIM on it {result['dkim_reactor_us_median']}"
                    if "dkim_reactor_us_median" in result
                    else ""
                )
                + (f", GC {result['gc_us_per_msg']}" if "gc_us_per_msg" in result else "")
                + "".join(
                    f", {key} commit p50 {result[f'{key}_commit_ms_p50']} ms"
                    for key in ("check", "store")
                    if f"{key}_commit_ms_p50" in result
                )
                + f", waits {result['reactor_waits_per_msg']}/msg"
                + f"; generator {result.get('generator_cpu_us_per_msg', '?')}"
                + f"; other threads user {result['others_user_us_per_msg']} sys "
                f"{result['others_sys_us_per_msg']}, switches "
                f"{result['others_vol_switches_per_msg']}"
                f"+{result['others_invol_switches_per_msg']}/msg" + "), "
                f"load {result['loadavg']}"
            )

    def mean(xs: list[float] | list[int]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    on, off = mean(rates["on"]), mean(rates["off"])
    ratio = on / off if off else 0.0
    cpu_ratio = mean(cpu["off"]) / mean(cpu["on"]) if cpu["on"] else 0.0
    summary = {"on_over_off": round(ratio, 2), "cpu_off_over_on": round(cpu_ratio, 2)}
    if rates["inline"] and off:
        summary["inline_over_off"] = round(mean(rates["inline"]) / off, 2)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"on/off (mean msg/s): {ratio:.2f}; CPU per message off/on: {cpu_ratio:.2f}")
        if "inline_over_off" in summary:
            print(f"inline/off (mean msg/s): {summary['inline_over_off']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
