#!/usr/bin/env python3
"""The web API and page under a big catch-all: list, page deep, search, wait, live events.

N messages (realistic headers; 20 % multipart with an attachment; 1 % with "quarterly" in the
subject, 1 % with "zebra" in the body) are written straight into the dev stack's Maildir,
spread over M mailboxes (``user{i % M}@example.com``). mailhub then starts as its own process
(this script with ``--serve``: the dev stack with only the SMTP and web listeners), and an HTTP
client on 127.0.0.1 (http.client, one persistent connection) times:

* ``start_to_page``: process start until the first page (GET /api/v1/messages?limit=50) has
  been answered: imports, the feed's first scan, the first page (``first_page_cold``) on it;
* ``first_page``: the same request again (median of 5: warm);
* ``deep_page``: ``start=N-100&limit=50`` (median of 3);
* ``search_cold`` / ``search_warm``: ``q=subject:quarterly`` the first time / again (median of
  3); the first search of a run needs every message's summary;
* ``text_cold`` / ``text_warm``: ``q=zebra`` (free text: subject, addresses and body text) the
  first time / again (median of 3);
* ``wait_wake``: an open ``/api/v1/wait?to=...&since=<cursor>`` long poll, then an SMTP delivery
  (smtplib): time from the 250 to the wait's answer (median of 3);
* ``sse_new``: an open ``/api/v1/events`` stream (what the page uses), then an SMTP delivery:
  time from the 250 to its ``event: new`` (median of 3);
* ``rss_mb``: the server's resident memory at the end.

    python3 benchmarks/web_load.py --messages 1000 10000 50000

Prints one row per size; --json for JSON lines. The data directory is reused per size
(``--workdir``, messages regenerated only when the count differs; ``--fresh`` always): a run
then starts with the folders' ``mailhub-cache`` and UID lists of the previous run, unless
``--cold-cache`` removes them first.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

DOMAIN = "example.com"
BASE_TIME = 1_790_000_000


def make_message(i: int, rng: random.Random) -> bytes:
    subject = f"Order {i} shipped" if i % 100 else f"Your quarterly report {i}"
    head = (
        f"Return-Path: <shop{i % 37}@example.net>\r\n"
        f"Received: from app.example.net (app.example.net [192.0.2.{i % 250}])\r\n"
        f"\tby localhost (mailhub) with ESMTP id bench{i}; Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        f"From: =?utf-8?q?Sh=C3=B6p_{i % 37}?= <shop{i % 37}@example.net>\r\n"
        f"To: User {i} <user{i}@{DOMAIN}>\r\n"
        f"Subject: {subject}\r\nMessage-ID: <bench.{i}@example.net>\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
    )
    line = "The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnop\r\n"
    text = line * rng.randint(3, 40)
    if i % 100 == 50:  # 1 %: a word only the body has, for free-text search
        text += "Mind the zebra crossing.\r\n"
    if i % 5:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text).encode()
    blob = rng.randbytes(rng.randint(2000, 12000)).hex()
    attachment = "\r\n".join(blob[k : k + 76] for k in range(0, len(blob), 76))
    return (
        head + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text + "\r\n"
        "--b\r\nContent-Type: application/octet-stream\r\n"
        'Content-Disposition: attachment; filename="data.bin"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n" + attachment + "\r\n--b--\r\n"
    ).encode()


def fill(mail_dir: Path, count: int, mailboxes: int) -> None:
    if mail_dir.exists():
        shutil.rmtree(mail_dir)
    rng = random.Random(7)
    for box in range(min(mailboxes, count)):
        for sub in ("tmp", "new", "cur"):
            (mail_dir / DOMAIN / f"user{box}" / sub).mkdir(parents=True)
    for i in range(count):
        data = make_message(i, rng)
        new = mail_dir / DOMAIN / f"user{i % mailboxes}" / "new"
        (new / f"{BASE_TIME + i}.M{i}P4242Q{i}.bench,S={len(data)}").write_bytes(data)
    marker(mail_dir, count, mailboxes).touch()


def marker(mail_dir: Path, count: int, mailboxes: int) -> Path:
    """Says which messages the directory holds (v2: with the free-text body word)."""
    return mail_dir / f".count-v2-{count}-{mailboxes}"


def serve(data_dir: str, smtp_port: int, web_port: int) -> None:
    """The dev stack with only SMTP and web listeners on 127.0.0.1."""
    from benchserve import dev_stack, start
    from twisted.internet import reactor

    start(dev_stack(data_dir, smtp=smtp_port, web=web_port))
    reactor.run()  # type: ignore[attr-defined]


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def get(self, path: str) -> tuple[float, dict[str, object]]:
        t0 = time.perf_counter()
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - t0
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status} {body[:200]!r}")
        return elapsed, json.loads(body)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mailhub exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"mailhub did not listen on {port} within {timeout}s")


def send(smtp_port: int, to: str, subject: str) -> float:
    msg = EmailMessage()
    msg["From"] = "bench@example.net"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("wake up\n")
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
        client.sendmail("bench@example.net", [to], msg.as_bytes(policy=SMTP))
        return time.perf_counter()  # the 250 after the data has arrived


def wait_wake(web_port: int, smtp_port: int, n: int) -> float:
    client = Client(web_port)
    _, info = client.get("/api/v1/info")
    answered: list[float] = []

    def long_poll() -> None:
        waiter = Client(web_port)
        waiter.get(f"/api/v1/wait?to=waiter{n}@{DOMAIN}&since={info['cursor']}&timeout=60")
        answered.append(time.perf_counter())

    thread = threading.Thread(target=long_poll)
    thread.start()
    time.sleep(0.3)  # the long poll is registered
    acked = send(smtp_port, f"waiter{n}@{DOMAIN}", f"wake {n}")
    thread.join(60)
    return answered[0] - acked


def sse_new(web_port: int, smtp_port: int, n: int) -> float:
    sock = socket.create_connection(("127.0.0.1", web_port), timeout=60)
    sock.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"event: hello" not in data:
        data += sock.recv(65536)
    time.sleep(0.1)
    acked = send(smtp_port, f"live{n}@{DOMAIN}", f"live {n}")
    while f"live {n}".encode() not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("event stream closed")
        data += chunk
    arrived = time.perf_counter()
    sock.close()
    return arrived - acked


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(args: argparse.Namespace, count: int) -> dict[str, float]:
    data = Path(args.workdir) / f"n{count}"
    mail = data / "mail"
    if args.fresh or not marker(mail, count, args.mailboxes).exists():
        fill(mail, count, args.mailboxes)
    for extra in [*mail.glob(f"{DOMAIN}/waiter*"), *mail.glob(f"{DOMAIN}/live*")]:
        shutil.rmtree(extra)  # the previous run's wait and live-event deliveries
    if args.cold_cache:
        for path in mail.glob(f"{DOMAIN}/*/mailhub-*"):
            path.unlink()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            *(sys.executable, __file__, "--serve", str(data)),
            *("--smtp-port", str(args.smtp_port), "--web-port", str(args.web_port)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(args.web_port, proc, 300)
        client = Client(args.web_port)
        cold, page = client.get("/api/v1/messages?limit=50")
        start_to_page = time.perf_counter() - t0
        if page["total"] != count:
            raise SystemExit(f"listed {page['total']} messages, expected {count}")
        first = [client.get("/api/v1/messages?limit=50")[0] for _ in range(5)]
        # never a negative start: with fewer than 100 messages the deep page is the first one
        deep_start = max(count - 100, 0)
        deep = [client.get(f"/api/v1/messages?start={deep_start}&limit=50")[0] for _ in range(3)]
        search_cold, found = client.get("/api/v1/messages?q=subject:quarterly&limit=50")
        if found["total"] != (count + 99) // 100:
            raise SystemExit(f"search found {found['total']}")
        search = [client.get("/api/v1/messages?q=subject:quarterly&limit=50")[0] for _ in range(3)]
        text_cold, found = client.get("/api/v1/messages?q=zebra&limit=50")
        if found["total"] != (count + 49) // 100:
            raise SystemExit(f"free-text search found {found['total']}")
        text = [client.get("/api/v1/messages?q=zebra&limit=50")[0] for _ in range(3)]
        wake = [wait_wake(args.web_port, args.smtp_port, n) for n in range(3)]
        live = [sse_new(args.web_port, args.smtp_port, n) for n in range(3)]
        memory = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    return {
        "messages": count,
        "start_to_page": start_to_page,
        "first_page_cold": cold,
        "first_page": statistics.median(first),
        "deep_page": statistics.median(deep),
        "search_cold": search_cold,
        "search_warm": statistics.median(search),
        "text_cold": text_cold,
        "text_warm": statistics.median(text),
        "wait_wake": statistics.median(wake),
        "sse_new": statistics.median(live),
        "rss_mb": memory,
    }


COLUMNS = (
    ("messages", "{:>8}"),
    ("start_to_page", "{:>13.3f}"),
    ("first_page_cold", "{:>15.3f}"),
    ("first_page", "{:>10.4f}"),
    ("deep_page", "{:>9.4f}"),
    ("search_cold", "{:>11.3f}"),
    ("search_warm", "{:>11.4f}"),
    ("text_cold", "{:>9.3f}"),
    ("text_warm", "{:>9.4f}"),
    ("wait_wake", "{:>9.4f}"),
    ("sse_new", "{:>8.4f}"),
    ("rss_mb", "{:>7.0f}"),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, nargs="+", default=[1000, 10_000, 50_000])
    p.add_argument("--mailboxes", type=int, default=100)
    p.add_argument("--workdir", default="/var/tmp/mailhub-bench-web")
    p.add_argument("--fresh", action="store_true", help="regenerate the messages")
    p.add_argument("--cold-cache", action="store_true", help="remove UID lists and caches first")
    p.add_argument("--smtp-port", type=int, default=2125)
    p.add_argument("--web-port", type=int, default=8125)
    p.add_argument("--json", action="store_true")
    p.add_argument("--serve", metavar="DATA_DIR", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.smtp_port, args.web_port)
        return
    if not args.json:
        print(f"seconds; {args.mailboxes} mailboxes; http.client and smtplib on 127.0.0.1")
        print(
            " ".join(f"{name:>{len(fmt.format(0)) if 'f' in fmt else 8}}" for name, fmt in COLUMNS)
        )
    for count in args.messages:
        result = run(args, count)
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(" ".join(fmt.format(result[name]) for name, fmt in COLUMNS), flush=True)


if __name__ == "__main__":
    main()
