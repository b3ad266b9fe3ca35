#!/usr/bin/env python3
"""SMTP load generator: N messages of S bytes over C persistent, pipelined connections.

    python3 benchmarks/smtp_load.py --host 127.0.0.1 --port 1025 \\
        --messages 5000 --size 4096 --connections 20 --rcpt-domain example.com \\
        [--maildir-root DIR] [--procs P] [--conn-per-message] [--json]

Each connection says EHLO once, then sends its messages one after another on the same session:
MAIL+RCPT+DATA in one write when the server advertises PIPELINING (RFC 2920), then the message
body once 354 has come back. Message i goes to ``user{i % 100}@DOMAIN``.

The clock starts when every connection (in every process) has had its EHLO answered and stops at
the last 250 for an end of data ("acked").

``--conn-per-message`` is how other MTAs deliver (and Postfix's ``smtp-source`` without
``-d``): C sessions at a time, each a new TCP connection for one message -- connect, greeting,
EHLO, MAIL+RCPT+DATA, the message, QUIT, and the server closes -- then the next connection.
The clock starts before the first connect; a message's latency runs from its connect() to the
250 after its data. With ``--maildir-root`` the run also polls that tree
until it holds N more files in ``new/``/``cur/`` directories than it did before the run
("in Maildir"), and fails when it does not within ``--maildir-timeout``.

Lean on purpose (one epoll loop over raw non-blocking sockets per process, message bytes built
once, sent with sendmsg so nothing is copied) because it shares two cores with the server. It
reports its own CPU time per message; ``benchmarks/null_smtp_server.py`` measures its ceiling.
Standard library only. Exit status: 0 when every message was acked (and found in the Maildir when
asked), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field

MAILBOXES = 100
LINE = 78  # body line length without CRLF


# --------------------------------------------------------------------------- message bytes


def build_body(size: int) -> tuple[bytes, int]:
    """Return (template, header_len): the message bytes of exactly ``size`` octets plus the
    terminating ``.\\r\\n``; the per-message Message-ID header (``header_len`` octets) goes
    in front of the template at send time. No line starts with '.', so no dot-stuffing."""
    header_len = len(message_id_header(0, 0))
    fixed = (
        b"From: Load Generator <load@bench.invalid>\r\n"
        b"To: undisclosed-recipients:;\r\n"
        b"Subject: mailhub benchmark message\r\n"
        b"Date: Mon, 23 Nov 2026 00:00:00 +0000\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n"
        b"\r\n"
    )
    room = size - header_len - len(fixed)
    if room < 2:
        raise SystemExit(f"--size {size} is too small (minimum {header_len + len(fixed) + 2})")
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 "
    lines = []
    n = 0
    k = 0
    while room - n > 0:
        want = min(LINE, room - n - 2)  # text octets in this line
        if room - n - 2 - want == 1:  # never leave a 1-octet remainder (no room for CRLF)
            want -= 1
        text = bytes(alphabet[(k * 7 + j) % len(alphabet)] for j in range(max(want, 0)))
        text = text.replace(b" ", b"x", 1) if text[:1] == b" " else text
        lines.append(text + b"\r\n")
        n += len(text) + 2
        k += 1
    body = fixed + b"".join(lines)
    assert header_len + len(body) == size, (header_len, len(body), size)
    return body + b".\r\n", header_len


def load_template(path: str) -> bytes:
    """A message from a file (CRLF lines, no line starting with '.', e.g. DKIM-signed with
    Message-ID outside h=) sent instead of the generated one, after the Message-ID line."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.endswith(b"\r\n") or data.startswith(b".") or b"\r\n." in data:
        raise SystemExit(f"{path}: must end with CRLF and have no line starting with '.'")
    return data + b".\r\n"


def message_id_header(i: int, run: int) -> bytes:
    return b"Message-ID: <%010d.%08x@bench.invalid>\r\n" % (i, run & 0xFFFFFFFF)


# --------------------------------------------------------------------------- one process


@dataclass
class Conn:
    sock: socket.socket
    cid: int
    buf: bytes = b""
    lines: list[bytes] = field(default_factory=list)  # continuation lines of a reply
    out: list[memoryview] = field(default_factory=list)
    writing: bool = False
    state: str = "greeting"  # greeting, ehlo, group, data, rset, quit, done
    pipelining: bool = False
    expect: list[bytes] = field(default_factory=list)  # codes still due for the current group
    pending: list[bytes] = field(default_factory=list)  # lock-step: commands not yet sent
    ok: bool = True  # current message still good
    msg: int = -1
    t_sent: float = 0.0
    closed: bool = False


class Worker:
    """Drives this process's share of the connections and messages."""

    def __init__(self, args: argparse.Namespace, indices: list[int], nconns: int, run: int):
        self.a = args
        self.indices = indices
        self.next = 0
        self.nconns = nconns
        self.run = run
        self.body = load_template(args.template) if args.template else build_body(args.size)[0]
        self.body_view = memoryview(self.body)
        self.domain = args.rcpt_domain.encode("ascii")
        self.mail_from = b"MAIL FROM:<load@bench.invalid>"
        if args.size_param:
            self.mail_from += b" SIZE=%d" % args.size
        self.sel = selectors.DefaultSelector()
        self.conns: list[Conn] = []
        self.latencies: list[float] = []
        self.acked = 0
        self.failed = 0
        self.errors: list[str] = []
        self.ready = 0
        self.banner = ""
        self.t_last_ack = 0.0
        self.sending = False
        # --conn-per-message: a new connection per message; nlive counts open connections.
        self.per_message = bool(getattr(args, "conn_per_message", False))
        self.nlive = 0
        self.sessions = 0
        self.pipelining_seen = False

    # ---- output
    def send(self, c: Conn, *chunks: bytes | memoryview) -> None:
        c.out.extend(memoryview(x) if isinstance(x, bytes) else x for x in chunks)
        self.flush(c)

    def flush(self, c: Conn) -> None:
        out = c.out
        while out:
            try:
                n = c.sock.sendmsg(out[:64])
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self.fail_conn(c, f"send: {e}")
                return
            while n and out:
                head = out[0]
                if n >= len(head):
                    n -= len(head)
                    out.pop(0)
                else:
                    out[0] = head[n:]
                    n = 0
            if out:
                if not c.writing:
                    self.sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
                    c.writing = True
                return
        if c.writing:
            self.sel.modify(c.sock, selectors.EVENT_READ, c)
            c.writing = False

    # ---- protocol
    def next_message(self, c: Conn) -> None:
        if not self.sending:
            return
        if self.next >= len(self.indices):
            c.state = "quit"
            self.send(c, b"QUIT\r\n")
            return
        i = self.indices[self.next]
        self.next += 1
        c.t_sent = time.monotonic()
        self.send_message(c, i)

    def send_message(self, c: Conn, i: int) -> None:
        c.msg = i
        c.ok = True
        rcpt = b"RCPT TO:<user%d@%s>" % (i % MAILBOXES, self.domain)
        c.state = "group"
        c.expect = [b"250", b"250", b"354"]
        if c.pipelining:  # RFC 2920: MAIL, RCPT and DATA in one write
            self.send(c, b"%s\r\n%s\r\nDATA\r\n" % (self.mail_from, rcpt))
        else:  # lock-step: one command, one reply
            c.pending = [rcpt + b"\r\n", b"DATA\r\n"]
            self.send(c, self.mail_from + b"\r\n")

    def on_reply(self, c: Conn, code: bytes, text: list[bytes]) -> None:
        st = c.state
        if st == "group":
            want = c.expect.pop(0)
            if code != want:
                c.ok = False
                self.note(c, code, text)
            if c.expect:
                if c.pipelining:
                    return
                if c.ok:  # lock-step: next command of the transaction
                    self.send(c, c.pending.pop(0))
                    return
                c.expect = []  # lock-step: this message has failed, skip the rest
            if code == b"354":  # (even after a failed RCPT: the body must follow a 354)
                c.state = "data"
                self.send(c, message_id_header(c.msg, self.run), self.body_view)
            else:
                self.failed += 1
                c.state = "rset"
                self.send(c, b"RSET\r\n")
        elif st == "data":
            now = time.monotonic()
            if code == b"250" and c.ok:
                self.acked += 1
                self.latencies.append(now - c.t_sent)
                self.t_last_ack = now
            else:
                self.failed += 1
                self.note(c, code, text)
            if self.per_message:
                c.state = "quit"
                self.send(c, b"QUIT\r\n")
                return
            self.next_message(c)
        elif st == "rset":
            self.next_message(c)
        elif st == "greeting":
            if code != b"220":
                self.fail_conn(c, f"greeting {self.fmt(code, text)}")
                return
            if not self.banner:
                self.banner = b" ".join(text).decode("ascii", "replace")[:60]
            c.state = "ehlo"
            self.send(c, b"EHLO loadgen.bench.invalid\r\n")
        elif st == "ehlo":
            if code != b"250":
                self.fail_conn(c, f"EHLO {self.fmt(code, text)}")
                return
            words = {t.split(b" ", 1)[0].upper() for t in text[1:]}
            c.pipelining = b"PIPELINING" in words and not self.a.no_pipelining
            self.pipelining_seen = self.pipelining_seen or c.pipelining
            c.state = "idle"
            self.ready += 1
            if self.per_message:
                self.send_message(c, c.msg)
        elif st == "quit":
            if self.per_message:  # the server closes after 221 (RFC 5321 4.1.1.10)
                c.state = "closing"
                return
            c.state = "done"
            self.close(c)

    def note(self, c: Conn, code: bytes, text: list[bytes]) -> None:
        if len(self.errors) < 10:
            self.errors.append(f"conn {c.cid} msg {c.msg}: {self.fmt(code, text)}")

    @staticmethod
    def fmt(code: bytes, text: list[bytes]) -> str:
        return (code + b" " + b" / ".join(text)).decode("ascii", "replace")[:200]

    def on_readable(self, c: Conn) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.fail_conn(c, f"recv: {e}")
            return
        if not data:
            if c.state not in ("quit", "closing", "done"):
                self.fail_conn(c, f"server closed the connection in state {c.state}")
            else:
                self.close(c)
            return
        buf = c.buf + data if c.buf else data
        start = 0
        while True:
            end = buf.find(b"\r\n", start)
            if end < 0:
                break
            line = buf[start:end]
            start = end + 2
            c.lines.append(line[4:])
            if line[3:4] == b"-":
                continue
            text, c.lines = c.lines, []
            self.on_reply(c, line[:3], text)
            if c.state == "done":
                return
        c.buf = buf[start:]

    def fail_conn(self, c: Conn, why: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(f"conn {c.cid}: {why}")
        if c.state in ("group", "data") or (
            self.per_message and c.state in ("greeting", "ehlo", "idle")
        ):
            self.failed += 1
        c.state = "done"
        self.close(c)

    def close(self, c: Conn) -> None:
        c.state = "done"
        if c.closed:
            return
        c.closed = True
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        self.nlive -= 1
        if self.per_message and self.sending:
            self.new_session(c.cid)

    def live(self) -> int:
        return self.nlive

    def open_conn(self, cid: int) -> Conn:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        try:
            s.connect((self.a.host, self.a.port))
        except BlockingIOError:
            pass
        c = Conn(s, cid)
        self.nlive += 1
        self.sel.register(s, selectors.EVENT_READ, c)
        return c

    def new_session(self, cid: int) -> None:
        """--conn-per-message: the next message on a new connection (none left: nothing)."""
        if self.next >= len(self.indices):
            return
        i = self.indices[self.next]
        self.next += 1
        self.sessions += 1
        t = time.monotonic()
        try:
            c = self.open_conn(cid)
        except OSError as e:
            self.failed += 1
            if len(self.errors) < 50:
                self.errors.append(f"conn {cid}: connect: {e}")
            return
        c.msg = i
        c.t_sent = t

    def loop_until(self, cond, deadline: float) -> bool:
        select = self.sel.select
        while not cond():
            if time.monotonic() > deadline:
                return False
            for key, ev in select(0.5):
                c = key.data
                if ev & selectors.EVENT_WRITE and c.state != "done":
                    self.flush(c)
                if ev & selectors.EVENT_READ and c.state != "done":
                    self.on_readable(c)
        return True

    # ---- phases
    def connect(self) -> None:
        if self.per_message:  # connections are made as part of the timed run
            return
        for cid in range(self.nconns):
            self.conns.append(self.open_conn(cid))
        deadline = time.monotonic() + 30
        ok = self.loop_until(
            lambda: self.ready + (self.nconns - self.live()) >= self.nconns, deadline
        )
        if not ok or self.ready < self.nconns:
            raise ConnectError(
                f"{self.ready}/{self.nconns} connections ready; " + "; ".join(self.errors[:3])
            )

    def blast(self, deadline: float) -> None:
        self.sending = True
        if self.per_message:
            for cid in range(self.nconns):
                self.new_session(cid)
            self.loop_until(lambda: self.nlive == 0, deadline)
            self.sending = False
            for key in list(self.sel.get_map().values()):
                c = key.data
                self.errors.append(f"conn {c.cid}: timed out in state {c.state}")
                self.close(c)
            return
        for c in self.conns:
            if c.state == "idle":
                self.next_message(c)
        self.loop_until(lambda: self.live() == 0, deadline)
        for c in self.conns:
            if c.state != "done":
                self.errors.append(f"conn {c.cid}: timed out in state {c.state}")
                self.close(c)


class ConnectError(Exception):
    pass


def run_worker(args, indices, nconns, run, barrier, results) -> dict:
    """Connect, wait for every process, send, and return this process's figures."""
    w = Worker(args, indices, nconns, run)
    try:
        w.connect()
    except ConnectError as e:
        if barrier is not None:
            barrier.abort()
        res = {"error": str(e)}
        if results is not None:
            results.put(res)
        return res
    if barrier is not None:
        try:
            barrier.wait(60)
        except Exception:  # another process failed to connect
            res = {"error": "another process failed to connect"}
            results.put(res)
            return res
    cpu0 = os.times()
    t0 = time.monotonic()
    w.blast(t0 + args.timeout)
    cpu1 = os.times()
    res = {
        "t_start": t0,
        "t_last_ack": w.t_last_ack,
        "acked": w.acked,
        "failed": w.failed,
        "unsent": len(indices) - w.next,
        "latencies": w.latencies,
        "cpu": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        "errors": w.errors,
        "banner": w.banner,
        "pipelining": any(c.pipelining for c in w.conns) or w.pipelining_seen,
        "sessions": w.sessions if w.per_message else nconns,
    }
    if results is not None:
        results.put(res)
    return res


# --------------------------------------------------------------------------- Maildir


def count_maildir(root: str) -> int:
    """Files in every ``new/`` and ``cur/`` directory below root (Maildir and Maildir++)."""
    total = 0
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            continue
        with it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    if e.name in ("new", "cur"):
                        with os.scandir(e.path) as inner:
                            total += sum(1 for _ in inner)
                    elif e.name != "tmp":
                        stack.append(e.path)
    return total


# --------------------------------------------------------------------------- main


def percentile(sorted_xs: list[float], p: float) -> float:
    if not sorted_xs:
        return float("nan")
    k = min(len(sorted_xs) - 1, max(0, round(p / 100 * (len(sorted_xs) - 1))))
    return sorted_xs[k]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1025)
    ap.add_argument("--messages", "-n", type=int, default=2000, help="total messages (N)")
    ap.add_argument("--size", "-s", type=int, default=4096, help="message size in octets (S)")
    ap.add_argument("--connections", "-c", type=int, default=20, help="concurrent sessions (C)")
    ap.add_argument("--rcpt-domain", default="example.com")
    ap.add_argument("--procs", "-p", type=int, default=1, help="spread connections over P procs")
    ap.add_argument("--maildir-root", help="count new files below DIR; wait until +N")
    ap.add_argument("--maildir-timeout", type=float, default=120.0)
    ap.add_argument("--timeout", type=float, default=600.0, help="give up sending after T s")
    ap.add_argument("--no-pipelining", action="store_true", help="lock-step even if advertised")
    ap.add_argument("--size-param", action="store_true", help="send MAIL FROM ... SIZE=S")
    ap.add_argument("--template", help="send this message file (after a Message-ID line)")
    ap.add_argument(
        "--conn-per-message",
        action="store_true",
        help="a new connection (greeting, EHLO, ..., QUIT) for every message",
    )
    ap.add_argument("--label", default="", help="free text carried into the output")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    a = ap.parse_args(argv)
    if a.messages < 1 or a.connections < 1 or a.procs < 1:
        ap.error("--messages, --connections and --procs must be at least 1")
    a.procs = min(a.procs, a.connections)
    if a.template:
        a.size = len(load_template(a.template)) - 3 + len(message_id_header(0, 0))
    else:
        build_body(a.size)  # validate early
    run = int(time.time() * 1000)

    base = count_maildir(a.maildir_root) if a.maildir_root else 0
    # Process p gets messages p, p+P, ... and its share of the connections.
    shares = [list(range(p, a.messages, a.procs)) for p in range(a.procs)]
    nconns = [
        a.connections // a.procs + (1 if p < a.connections % a.procs else 0) for p in range(a.procs)
    ]
    if a.procs == 1:
        results = [run_worker(a, shares[0], nconns[0], run, None, None)]
    else:
        ctx = multiprocessing.get_context("fork")
        barrier = ctx.Barrier(a.procs)
        q = ctx.Queue()
        procs = [
            ctx.Process(target=run_worker, args=(a, shares[p], nconns[p], run, barrier, q))
            for p in range(a.procs)
        ]
        for pr in procs:
            pr.start()
        results = [q.get() for _ in procs]
        for pr in procs:
            pr.join()

    errors = [r["error"] for r in results if "error" in r]
    if errors:
        print("smtp_load: " + "; ".join(errors), file=sys.stderr)
        return 1

    t_start = min(r["t_start"] for r in results)
    acked = sum(r["acked"] for r in results)
    t_acked = max(r["t_last_ack"] for r in results) if acked else time.monotonic()
    lat = sorted(x for r in results for x in r["latencies"])
    cpu = sum(r["cpu"] for r in results)
    el = max(t_acked - t_start, 1e-9)
    out = {
        "label": a.label,
        "target": f"{a.host}:{a.port}",
        "banner": results[0]["banner"],
        "pipelining": results[0]["pipelining"],
        "messages": a.messages,
        "size": a.size,
        "connections": a.connections,
        "procs": a.procs,
        "conn_per_message": a.conn_per_message,
        "sessions": sum(r["sessions"] for r in results),
        "acked": acked,
        "failed": sum(r["failed"] for r in results),
        "unsent": sum(r["unsent"] for r in results),
        "acked_seconds": round(el, 4),
        "acked_msgs_per_s": round(acked / el, 1),
        "acked_MB_per_s": round(acked * a.size / el / 1e6, 3),
        "latency_ms": {
            p: round(percentile(lat, q) * 1000, 2)
            for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
        },
        "generator_cpu_s": round(cpu, 3),
        "generator_cpu_us_per_msg": round(cpu / max(acked, 1) * 1e6, 1),
        "errors": [e for r in results for e in r["errors"]][:10],
    }
    ok = acked == a.messages
    if a.maildir_root:
        want = base + a.messages
        deadline = time.monotonic() + a.maildir_timeout
        n = count_maildir(a.maildir_root)
        while n < want and time.monotonic() < deadline:
            time.sleep(0.005 if n > want - a.connections else 0.02)
            n = count_maildir(a.maildir_root)
        t_md = time.monotonic()
        got = n - base
        md_el = max(t_md - t_start, 1e-9)
        out["maildir"] = {
            "root": a.maildir_root,
            "new_files": got,
            "expected": a.messages,
            "ok": got == a.messages,
            "seconds": round(md_el, 4),
            "msgs_per_s": round(got / md_el, 1),
            "MB_per_s": round(got * a.size / md_el / 1e6, 3),
        }
        ok = ok and got == a.messages

    if a.json:
        print(json.dumps(out))
    else:
        print_table(out)
    return 0 if ok else 1


def print_table(o: dict) -> None:
    lat = o["latency_ms"]
    rows = [
        (
            "target",
            f'{o["target"]}  "{o["banner"]}"  pipelining={o["pipelining"]}'
            + (f"  [{o['label']}]" if o["label"] else ""),
        ),
        (
            "load",
            f"{o['messages']} x {o['size']} B over {o['connections']} conns, {o['procs']} proc(s)"
            + (
                f", a new connection per message ({o['sessions']})" if o["conn_per_message"] else ""
            ),
        ),
        (
            "acked (250)",
            f"{o['acked']} in {o['acked_seconds']:.3f} s  "
            f"{o['acked_msgs_per_s']:9.1f} msg/s  {o['acked_MB_per_s']:8.2f} MB/s",
        ),
        ("latency ms", f"p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}"),
    ]
    md = o.get("maildir")
    if md:
        rows.append(
            (
                "in Maildir",
                f"{md['new_files']}/{md['expected']} in {md['seconds']:.3f} s  "
                f"{md['msgs_per_s']:9.1f} msg/s  {md['MB_per_s']:8.2f} MB/s"
                + ("" if md["ok"] else "  INCOMPLETE"),
            )
        )
    rows.append(
        (
            "generator CPU",
            f"{o['generator_cpu_s']:.2f} s ({o['generator_cpu_us_per_msg']:.0f} us/msg)",
        )
    )
    rows.append(("failed", f"{o['failed']}  unsent {o['unsent']}"))
    for e in o["errors"]:
        rows.append(("error", e))
    for k, v in rows:
        print(f"{k:<14} {v}")


if __name__ == "__main__":
    sys.exit(main())
