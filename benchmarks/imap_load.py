#!/usr/bin/env python3
"""IMAP on a big mailbox: mailhub vs Dovecot 2.3 with Python's imaplib, in the same run.

One 10,000-message mailbox (about 48 MB: realistic messages of mixed sizes, a fifth multipart
with a base64 attachment; 70 % seen in cur/, 20 % unseen in cur/, 10 % in new/) is generated
once as a Maildir. Each run copies it fresh to both servers, starts each server cold (its own
process, no index or cache on disk), and times with imaplib on 127.0.0.1, one step after the
other in one session:

- ``select_cold``  first SELECT INBOX of the new process (builds the index: readdir of 10,000
  files, UIDs assigned);
- ``select_warm``  SELECT INBOX again, in a second connection;
- ``fetch_flags``  FETCH 1:* (FLAGS UID RFC822.SIZE);
- ``search_all``   UID SEARCH ALL (every UID: what a client asks to learn the folder's UIDs);
- ``search_cold``  UID SEARCH SUBJECT <word> (first: every message's header is read);
- ``search_warm``  the same again (mailhub: structure cache; Dovecot: its cache file);
- ``fetch_bodies`` UID FETCH 1:* BODY.PEEK[] (all 48 MB);
- ``fetch_headers`` UID FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (...)]), what
  Thunderbird's message list asks for (after SEARCH: mailhub's header cache is warm);
- ``store_seen``   STORE 1:* +FLAGS (\\Seen): renames the unseen 30 %; mailhub, like Dovecot,
  answers an untagged FETCH (FLAGS ...) only for the 3,000 messages whose flags changed;
- ``sort_date``    SORT (DATE) UTF-8 ALL (RFC 5256; the headers were read by the steps before:
  mailhub's header cache and Dovecot's cache file hold them, the sort keys are new);
- ``thread_refs``  THREAD REFERENCES UTF-8 ALL (these messages have no References: the
  threads come from the subject grouping step).

mailhub runs as its own process (this script with ``--serve``: the dev stack, IMAP listener
only, any password logs in). Dovecot is a throwaway ``dovecot -F -c <conf>`` started by this
script with its own base_dir, a passwd-file, IMAP on a loopback port, mail_location=maildir:...,
mail owned by the ``mail`` user (Dovecot refuses to access mail as root); needs root and
dovecot-imapd (``--no-dovecot`` to skip it).

    python3 benchmarks/imap_load.py --runs 3 --results /tmp/imap-bench.jsonl

Prints a table (per run, then the best of each); JSON lines (one per target and run, plus the
load average) are appended to --results.
"""

from __future__ import annotations

import argparse
import base64
import imaplib
import json
import os
import pwd
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

STEPS = ("select_cold", "select_warm", "fetch_flags", "search_all", "search_cold", "search_warm",
         "fetch_headers", "fetch_bodies", "store_seen", "sort_date", "thread_refs")  # fmt: skip
MAILHUB_USER = "bench@localhost"  # the dev stack's default domain is its host name
DOVECOT_USER, DOVECOT_PASSWORD = "bench@example.com", "bench"
SEARCH_WORD = "quarterly"  # in about 1 % of the subjects
# What Thunderbird's message list fetches for every message (from its IMAP log).
LIST_FIELDS = ("BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date Message-ID Priority "
               "X-Priority References Newsgroups In-Reply-To Content-Type Reply-To)]")  # fmt: skip

WORDS = (
    "meeting agenda project update schedule review budget report draft invoice order "
    "shipment delivery customer support ticket release version build server network "
    "password account access request approval deadline notes minutes summary question "
    "answer thanks regards please attached document file photo trip travel hotel flight "
    "lunch dinner weekend holiday family friend team office remote call video link"
).split()
NAMES = ["Alice Martin", "Bob Stone", "Chloé Dubois", "Dmitri Ivanov", "Eve Nakamura",
         "Frank O'Neil", "Grace Hopper", "Hiro Tanaka", "Inès Garcia", "Jon Smith"]  # fmt: skip


def _text(rng: random.Random, size: int) -> bytes:
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 13))).capitalize() + "."
        lines.append(line)
        total += len(line) + 2
    return ("\r\n".join(lines) + "\r\n").encode()


def make_message(i: int, rng: random.Random) -> bytes:
    """One realistic message: trace headers, an encoded name now and then, mixed sizes."""
    sender = rng.choice(NAMES)
    addr = sender.split()[0].lower().replace("é", "e").replace("è", "e") + "@example.net"
    if i % 100 == 7:
        subject = f"{SEARCH_WORD.capitalize()} figures {i}"
    else:
        subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7))).capitalize()
    encoded = base64.b64encode(sender.encode()).decode()
    display = sender if sender.isascii() else f"=?UTF-8?B?{encoded}?="
    day = 1 + i % 28
    head = (
        f"Return-Path: <{addr}>\r\n"
        f"Received: from mx{i % 5}.example.net (mx{i % 5}.example.net [192.0.2.{i % 250}])\r\n"
        f"\tby mail.example.com with ESMTPS id {i:08x}; Mon, {day} Nov 2026 10:{i % 60:02d}:00"
        " +0000\r\n"
        f"From: {display} <{addr}>\r\nTo: Bench <bench@example.com>\r\n"
        f"Subject: {subject}\r\nDate: Mon, {day} Nov 2026 10:{i % 60:02d}:00 +0000\r\n"
        f"Message-ID: <{i}.{rng.getrandbits(32):08x}@example.net>\r\nMIME-Version: 1.0\r\n"
    )
    kind = rng.random()
    if kind < 0.2:  # multipart/mixed: text + a base64 attachment of 5-30 KB
        boundary = f"=_b{i:06d}"
        attachment = base64.encodebytes(rng.randbytes(rng.randint(2_000, 15_000)))
        attachment = attachment.replace(b"\n", b"\r\n")
        body = (
            (
                f"This is a multi-part message in MIME format.\r\n\r\n--{boundary}\r\n"
                "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            ).encode()
            + _text(rng, rng.randint(200, 2_000))
            + (
                f'\r\n--{boundary}\r\nContent-Type: application/pdf; name="doc{i}.pdf"\r\n'
                f'Content-Disposition: attachment; filename="doc{i}.pdf"\r\n'
                "Content-Transfer-Encoding: base64\r\n\r\n"
            ).encode()
            + attachment
            + f"\r\n--{boundary}--\r\n".encode()
        )
        head += f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n'
    else:
        size = int(rng.lognormvariate(7.4, 0.7))  # median ~1.6 KB, long tail
        body = _text(rng, min(size, 60_000))
        head += "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
    return head.encode() + b"\r\n" + body


def generate(source: Path, count: int) -> int:
    """The mailbox as a Maildir at ``source`` (kept between runs); its total size."""
    marker = source / f".complete-{count}"
    if marker.exists():
        return int(marker.read_text())
    if source.exists():
        shutil.rmtree(source)
    for sub in ("tmp", "new", "cur"):
        (source / sub).mkdir(parents=True)
    rng = random.Random(20261124)
    total = 0
    base_time = 1_790_000_000
    for i in range(count):
        data = make_message(i, rng)
        total += len(data)
        name = f"{base_time + i * 60}.M{i}P4242Q{i}.bench,S={len(data)}"
        share = i % 10
        if share == 9:
            (source / "new" / name).write_bytes(data)
        else:
            flags = "S" if share < 7 else ""
            (source / "cur" / f"{name}:2,{flags}").write_bytes(data)
    marker.write_text(str(total))
    return total


def copy_maildir(source: Path, target: Path, owner: tuple[int, int] | None) -> None:
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".complete-*"))
    if owner is not None:
        for parent in (target.parent, target):
            os.chown(parent, *owner)
        for root, dirs, files in os.walk(target):
            for name in dirs + files:
                os.chown(os.path.join(root, name), *owner)
    os.sync()  # both start from clean page cache state... as far as the copy goes


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on 127.0.0.1:{port}")


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of process ``root`` and all its descendants now (a loaded
    shared machine swings wall clock; the server's CPU per step swings less)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total / os.sysconf("SC_CLK_TCK")


def measure(port: int, user: str, password: str, count: int, server: int) -> dict[str, float]:
    """Wall-clock seconds per step, and the server's CPU seconds per step as ``<step>_cpu``
    (``server``: the server's process id, its children counted too)."""
    out: dict[str, float] = {}

    def timed(name: str, f, *args):  # type: ignore[no-untyped-def]
        c0 = tree_cpu(server)
        t0 = time.perf_counter()
        typ, data = f(*args)
        out[name] = time.perf_counter() - t0
        out[name + "_cpu"] = tree_cpu(server) - c0
        if typ != "OK":
            raise SystemExit(f"{name}: {typ} {data!r}")
        return data

    first = imaplib.IMAP4("127.0.0.1", port, timeout=300)
    first.login(user, password)
    data = timed("select_cold", first.select, "INBOX")
    if int(data[0]) != count:
        raise SystemExit(f"127.0.0.1:{port}: {data[0]!r} messages, expected {count}")
    first.logout()
    client = imaplib.IMAP4("127.0.0.1", port, timeout=300)
    client.login(user, password)
    timed("select_warm", client.select, "INBOX")
    data = timed("fetch_flags", client.fetch, "1:*", "(FLAGS UID RFC822.SIZE)")
    if len(data) != count:
        raise SystemExit(f"FETCH FLAGS: {len(data)} responses")
    data = timed("search_all", client.uid, "SEARCH", "ALL")
    if len(data[0].split()) != count:
        raise SystemExit(f"UID SEARCH ALL: {len(data[0].split())} UIDs, expected {count}")
    hits = timed("search_cold", client.uid, "SEARCH", "SUBJECT", SEARCH_WORD)
    again = timed("search_warm", client.uid, "SEARCH", "SUBJECT", SEARCH_WORD)
    if hits != again or len(hits[0].split()) != count // 100:
        raise SystemExit(f"SEARCH found {len(hits[0].split())}, expected {count // 100}")
    data = timed(
        "fetch_headers", client.uid, "FETCH", "1:*", f"(UID FLAGS RFC822.SIZE {LIST_FIELDS})"
    )
    if sum(1 for d in data if isinstance(d, tuple)) != count:
        raise SystemExit(f"FETCH headers: {len(data)} responses")
    data = timed("fetch_bodies", client.uid, "FETCH", "1:*", "BODY.PEEK[]")
    octets = sum(len(d[1]) for d in data if isinstance(d, tuple))
    # Both answer an untagged FETCH only for the messages whose flags changed (3,000 here):
    # RFC 3501 6.4.6 says "normally", and the others' flags are what the client knows.
    data = timed("store_seen", client.store, "1:*", "+FLAGS", "(\\Seen)")
    changed = sum(1 for d in data if d)
    if changed != count * 3 // 10:
        raise SystemExit(f"STORE: {changed} untagged FETCH responses, expected {count * 3 // 10}")
    data = timed("sort_date", client.sort, "(DATE)", "UTF-8", "ALL")
    if len(data[0].split()) != count:
        raise SystemExit(f"SORT: {len(data[0].split())} numbers, expected {count}")
    data = timed("thread_refs", client.thread, "REFERENCES", "UTF-8", "ALL")
    if len(re.findall(rb"\d+", data[0])) != count:
        raise SystemExit("THREAD: not every message in the answer")
    client.logout()
    out["octets"] = octets
    return out


# --- mailhub ----------------------------------------------------------------------------------


def serve(data_dir: str, port: int) -> None:
    """The dev stack with only an IMAP listener on 127.0.0.1:port (any password logs in)."""
    from benchserve import dev_stack, start
    from twisted.internet import reactor

    # keep_all: the dev stack's retention (5,000 messages by default) would prune the mailbox.
    start(dev_stack(data_dir, imap=port, keep_all=True))
    reactor.run()


def run_mailhub(args: argparse.Namespace, source: Path) -> dict[str, float]:
    data = Path(args.workdir) / "mailhub"
    if data.exists():
        shutil.rmtree(data)
    local, domain = MAILHUB_USER.split("@")
    copy_maildir(source, data / "mail" / domain / local, None)
    command = [sys.executable, __file__, "--serve", str(data), "--port", str(args.mailhub_port)]
    if args.profile:
        command = ["py-spy", "record", "-f", "raw", "-o", args.profile, "-r", "100", "--", *command]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(args.mailhub_port, proc, "mailhub")
        return measure(args.mailhub_port, MAILHUB_USER, "any", args.messages, proc.pid)
    finally:
        proc.send_signal(2 if args.profile else 15)  # py-spy writes its profile on SIGINT
        proc.wait(60)


# --- Dovecot ----------------------------------------------------------------------------------

DOVECOT_CONF = """\
# Generated by benchmarks/imap_load.py -- a throwaway benchmark instance.
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
instance_name = mailhub-bench-imap
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/home/%d/%n
}}
first_valid_uid = {uid}
last_valid_uid = {uid}
mail_location = maildir:{base}/mail/%d/%n:LAYOUT=maildir++
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"""


def dovecot_available() -> str | None:
    if shutil.which("dovecot") is None or not Path("/usr/lib/dovecot/imap").exists():
        return "dovecot-imapd is not installed (apt-get install dovecot-imapd)"
    if os.geteuid() != 0:
        return "Dovecot needs root here (mail is handed to the 'mail' user)"
    return None


def dovecot_base(directory: str, user: str, password: str) -> tuple[Path, tuple[int, int]]:
    """A fresh Dovecot base directory with a passwd-file for ``user`` and home/mail dirs owned
    by the ``mail`` user: (base, (uid, gid)). Keep the path short: Dovecot's unix sockets live
    under base_dir (108-byte limit)."""
    base = Path(directory)
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    base.chmod(0o755)
    mail = pwd.getpwnam("mail")
    owner = (mail.pw_uid, mail.pw_gid)
    (base / "passwd").write_text(f"{user}:{{PLAIN}}{password}\n")
    for sub in ("home", "mail"):
        (base / sub).mkdir()
        os.chown(base / sub, *owner)
    return base, owner


def run_dovecot(args: argparse.Namespace, source: Path) -> dict[str, float]:
    base, owner = dovecot_base(args.dovecot_dir, DOVECOT_USER, DOVECOT_PASSWORD)
    local, domain = DOVECOT_USER.split("@")
    copy_maildir(source, base / "mail" / domain / local, owner)
    conf = base / "dovecot.conf"
    conf.write_text(
        DOVECOT_CONF.format(base=base, uid=owner[0], gid=owner[1], port=args.dovecot_port)
    )
    proc = subprocess.Popen(["dovecot", "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(args.dovecot_port, proc, "dovecot")
        return measure(args.dovecot_port, DOVECOT_USER, DOVECOT_PASSWORD, args.messages, proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workdir", default="/tmp/mailhub-bench-imap")
    p.add_argument("--mailhub-port", type=int, default=2143)
    p.add_argument("--dovecot-port", type=int, default=2144)
    p.add_argument("--dovecot-dir", default="/tmp/mh-bench-dovecot-imap")
    p.add_argument("--no-dovecot", action="store_true")
    p.add_argument("--results", default=None, help="append JSON lines here")
    p.add_argument("--profile", default=None, help="py-spy flame graph of mailhub (SVG path)")
    p.add_argument("--serve", metavar="DATA_DIR", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    source = Path(args.workdir) / "source"
    total = generate(source, args.messages)
    targets = [("mailhub", run_mailhub)]
    skip = dovecot_available()
    if not args.no_dovecot:
        if skip:
            print(f"Dovecot skipped: {skip}")
        else:
            targets.append(("dovecot", run_dovecot))
    load = os.getloadavg()
    print(
        f"{args.messages} messages, {total / 1e6:.1f} MB, imaplib on 127.0.0.1, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"{'target':8} {'run':>3} " + " ".join(f"{s:>12}" for s in STEPS))
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in targets}
    for run in range(1, args.runs + 1):
        for name, fn in targets:
            r = fn(args, source)
            results[name].append(r)
            print(f"{name:8} {run:>3} " + " ".join(f"{r[s]:>12.3f}" for s in STEPS), flush=True)
            if args.results:
                with open(args.results, "a") as f:
                    row = {"target": name, "run": run, "messages": args.messages,
                           "megabytes": round(total / 1e6, 1), "loadavg": os.getloadavg()[0],
                           **{s: round(r[s], 4) for s in STEPS},
                           **{f"{s}_cpu": round(r[f"{s}_cpu"], 3) for s in STEPS}}  # fmt: skip
                    f.write(json.dumps(row) + "\n")
    print("best of", args.runs)
    best = {n: {s: min(r[s] for r in rs) for s in STEPS} for n, rs in results.items()}
    for name, b in best.items():
        print(f"{name:8} {'min':>3} " + " ".join(f"{b[s]:>12.3f}" for s in STEPS))
    if "dovecot" in best:
        ratio = {s: best["mailhub"][s] / best["dovecot"][s] for s in STEPS}
        print(f"{'ratio':8} {'':>3} " + " ".join(f"{ratio[s]:>11.1f}x" for s in STEPS))
    # The server's CPU per step (clock ticks: 0.01 s), median of the runs: what decides on a
    # loaded machine, where the wall clock above swings 2-3x.
    print("server CPU seconds per step, median of", args.runs)
    cpu = {n: {s: sorted(r[f"{s}_cpu"] for r in rs)[len(rs) // 2] for s in STEPS}
           for n, rs in results.items()}  # fmt: skip
    for name, c in cpu.items():
        print(f"{name:8} {'cpu':>3} " + " ".join(f"{c[s]:>12.2f}" for s in STEPS))


if __name__ == "__main__":
    main()
