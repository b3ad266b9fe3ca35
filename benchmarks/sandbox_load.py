#!/usr/bin/env python3
"""Sandboxes (issue 15): list, search and wait latency with N messages across S sandboxes.

mailhub runs as its own process (web_load.py's ``--serve``: the dev stack with only SMTP and
web listeners, sandboxes on). S sandboxes are made over the API (``create``: POST
/api/v1/sandboxes), the server is stopped, N of web_load.py's messages are written straight into
the sandboxes' Maildirs (N/S each; 1 % with "quarterly" in the subject), and the server starts
again (the sandboxes come back from sandboxes.json). Then one http.client connection times, for
randomly chosen sandboxes:

* ``list``: GET /api/v1/sandboxes/{id}/messages?limit=50;
* ``search_cold``: ``q=subject:quarterly`` the first time in each sandbox (its summaries made);
* ``search``: the same again, random sandboxes;
* ``wait``: an open /api/v1/sandboxes/{id}/wait long poll, then an SMTP delivery with the
  sandbox's AUTH (smtplib): time from the 250 to the wait's answer.

p50 and p99 of each, in milliseconds.

    python3 benchmarks/sandbox_load.py --messages 10000 --sandboxes 100
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import smtplib
import statistics
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from web_load import BASE_TIME, Client, make_message, rss_mb, wait_for_port

SANDBOX_DOMAIN = "sandbox.invalid"


def start(args: argparse.Namespace, data: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            *(sys.executable, str(Path(__file__).parent / "web_load.py"), "--serve", str(data)),
            *("--smtp-port", str(args.smtp_port), "--web-port", str(args.web_port)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(args.web_port, proc, 300)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def post(client: Client, path: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    client.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = client.conn.getresponse()
    answer = json.loads(response.read())
    if response.status != 201:
        raise SystemExit(f"POST {path}: {response.status} {answer}")
    return time.perf_counter() - t0, answer


def fill(mail: Path, boxes: list[dict[str, Any]], count: int) -> None:
    rng = random.Random(7)
    for i in range(count):
        data = make_message(i, rng)
        new = mail / SANDBOX_DOMAIN / boxes[i % len(boxes)]["id"] / "new"
        (new / f"{BASE_TIME + i}.M{i}P4242Q{i}.bench,S={len(data)}").write_bytes(data)


def send_as(port: int, box: dict[str, Any], subject: str) -> float:
    msg = EmailMessage()
    msg["From"] = "bench@example.net"
    msg["To"] = "someone@example.com"
    msg["Subject"] = subject
    msg.set_content("wake up\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login(box["username"], box["password"])
        client.sendmail("bench@example.net", ["someone@example.com"], msg.as_bytes(policy=SMTP))
        return time.perf_counter()


def wait_wake(args: argparse.Namespace, box: dict[str, Any], n: int) -> float:
    base = f"/api/v1/sandboxes/{box['id']}"
    _, page = Client(args.web_port).get(f"{base}/messages?limit=1")
    answered: list[float] = []

    def long_poll() -> None:
        Client(args.web_port).get(f"{base}/wait?since={page['cursor']}&timeout=60")
        answered.append(time.perf_counter())

    thread = threading.Thread(target=long_poll)
    thread.start()
    time.sleep(0.2)  # the long poll is registered
    acked = send_as(args.smtp_port, box, f"wake {n}")
    thread.join(60)
    return answered[0] - acked


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = Path(args.workdir)
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    proc = start(args, data)
    client = Client(args.web_port)
    created, boxes = [], []
    try:
        for i in range(args.sandboxes):
            elapsed, box = post(client, "/api/v1/sandboxes", {"name": f"bench {i}"})
            created.append(elapsed)
            boxes.append(box)
    finally:
        stop(proc)
    fill(data / "mail", boxes, args.messages)
    proc = start(args, data)
    rng = random.Random(3)
    try:
        client = Client(args.web_port)
        _, listed = client.get("/api/v1/sandboxes")
        if len(listed["sandboxes"]) != args.sandboxes:
            raise SystemExit(f"{len(listed['sandboxes'])} sandboxes after the restart")
        lists, cold, warm = [], [], []
        for _ in range(args.samples):
            box = rng.choice(boxes)
            elapsed, page = client.get(f"/api/v1/sandboxes/{box['id']}/messages?limit=50")
            if page["total"] != args.messages // args.sandboxes:
                raise SystemExit(f"sandbox {box['id']} lists {page['total']}")
            lists.append(elapsed)
        for box in boxes:
            cold.append(
                client.get(f"/api/v1/sandboxes/{box['id']}/messages?q=subject:quarterly")[0]
            )
        for _ in range(args.samples):
            box = rng.choice(boxes)
            warm.append(
                client.get(f"/api/v1/sandboxes/{box['id']}/messages?q=subject:quarterly")[0]
            )
        wake = [wait_wake(args, rng.choice(boxes), n) for n in range(args.waits)]
        memory = rss_mb(proc.pid)
    finally:
        stop(proc)
    out: dict[str, Any] = {"messages": args.messages, "sandboxes": args.sandboxes}
    for name, samples in (
        ("create", created), ("list", lists), ("search_cold", cold), ("search", warm),
        ("wait", wake),
    ):  # fmt: skip
        out[f"{name}_p50"], out[f"{name}_p99"] = percentiles(samples)
    out["rss_mb"] = memory
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--sandboxes", type=int, default=100)
    p.add_argument("--samples", type=int, default=300, help="timed lists and searches")
    p.add_argument("--waits", type=int, default=50, help="timed wait wake-ups")
    p.add_argument("--workdir", default="/var/tmp/mailhub-bench-sandboxes")
    p.add_argument("--smtp-port", type=int, default=2126)
    p.add_argument("--web-port", type=int, default=8126)
    args = p.parse_args()
    result = run(args)
    print(json.dumps(result))
    print(
        " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
    )


if __name__ == "__main__":
    main()
