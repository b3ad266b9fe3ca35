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

Prints one line per mode and the ratio; --json for JSON lines.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def serve(data_dir: str, smtp_port: int, dns_port: int, checks: bool) -> None:
    """The server process: the DNS server and mailhub in one reactor."""
    sys.path.insert(0, str(REPO))
    from twisted.internet import reactor
    from twisted.names import dns, server

    from mailhub.config import ChecksConfig, Config, DomainsConfig, ListenersConfig
    from mailhub.service import build
    from tests.support.localdns import DictResolver

    spf = ["v=spf1 ip4:127.0.0.1 -all"]
    zone = {
        "bench.invalid": {"TXT": spf},
        "loadgen.bench.invalid": {"TXT": spf},
        "_dmarc.bench.invalid": {"TXT": ["v=DMARC1; p=none"]},
    }
    factory = server.DNSServerFactory(authorities=[DictResolver(zone)])
    reactor.listenUDP(dns_port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")  # type: ignore[attr-defined]
    config = Config(
        source="<inbound checks benchmark>",
        hostname="mx.example.com",
        data_dir=Path(data_dir),
        dev=False,
        domains=DomainsConfig(local=("example.com",), catch_all=("example.com",)),
        listeners=ListenersConfig(smtp=(f"tcp:{smtp_port}:interface=127.0.0.1",)),
        checks=ChecksConfig(enabled=checks, nameservers=(("127.0.0.1", dns_port),)),
    )
    service = build(config)
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()  # type: ignore[attr-defined]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def run(mode: str, args: argparse.Namespace) -> dict:
    smtp, dns_port = free_ports(2)
    with tempfile.TemporaryDirectory() as data:
        command = [sys.executable, __file__, "--serve", data, str(smtp), str(dns_port), mode]
        proc = subprocess.Popen(command)
        try:
            wait_for_port(smtp, proc)
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
                ],
                check=True,
                capture_output=True,
                text=True,
            )
        finally:
            proc.terminate()
            proc.wait(30)
    result: dict = json.loads(out.stdout)
    result["checks"] = mode
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "on")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", "-n", type=int, default=2000)
    ap.add_argument("--size", "-s", type=int, default=4096)
    ap.add_argument("--connections", "-c", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rates = {}
    for mode in ("off", "on"):
        result = run(mode, args)
        rates[mode] = result["acked_msgs_per_s"]
        if args.json:
            print(json.dumps(result))
        else:
            print(f"checks {mode:3}: {result['acked_msgs_per_s']} msg/s acknowledged")
    ratio = rates["on"] / rates["off"] if rates["off"] else 0.0
    print(json.dumps({"on_over_off": round(ratio, 2)}) if args.json else f"on/off: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
