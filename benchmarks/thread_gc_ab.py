#!/usr/bin/env python3
"""``THREAD REFERENCES UTF-8 ALL`` as a session runs it (search, key slices, threading,
rendering) over imap_load.py's 10,000-message mailbox, in process with the garbage collector
on, A/B between source trees: CPU (``time.process_time``), the collections that ran inside
the command (``gc.callbacks``, by generation, and the wall time in them), the wall time
THREAD kept the collector paused, and how many reactor turns the command gave
back with the collector off (each one a stretch in which every other session runs without
it). ``cold`` runs clear the keys memoised in the cached headers first (the first THREAD of a
session), ``warm`` runs do not. The reactor is a ``Clock`` on real time, turned until the
answer is written; the start-up heap is frozen, as the daemon's is. With THREAD_GC_REPLIES=1
in the environment two messages of three are replies (References: the one before), so that
REFERENCES reads every Message-ID.

    .venv/bin/python benchmarks/thread_gc_ab.py /var/tmp/base . --rounds 3 --runs 4
"""

from __future__ import annotations

import gc
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent


def add_replies(folder_dir: Path) -> None:
    """Two messages of three a reply to the one before (References: its Message-ID)."""
    files = sorted(
        (p for sub in ("cur", "new") for p in (folder_dir / sub).iterdir()),
        key=lambda p: int(p.name.split(".")[0]),
    )
    previous = None
    for i, path in enumerate(files):
        data = path.read_bytes()
        mid = re.search(rb"\r\nMessage-ID: (<[^>]+>)\r\n", data)
        if previous is not None and i % 3:
            data = data.replace(
                b"\r\nMessage-ID: ", b"\r\nReferences: " + previous + b"\r\nMessage-ID: ", 1
            )
            name = re.sub(r",S=\d+", f",S={len(data)}", path.name)
            path.unlink()
            (path.parent / name).write_bytes(data)
        previous = mid.group(1) if mid else None


def child(workdir: Path, runs: int) -> None:
    sys.path.insert(0, str(HERE))
    import imap_load
    from twisted.internet.address import IPv4Address
    from twisted.internet.defer import maybeDeferred, succeed
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.logger import Logger

    from mailhub.auth import DevChecker, make_portal
    from mailhub.config import Limits
    from mailhub.imap import message_cache, search_command, sort_command
    from mailhub.imap.factory import IMAPServerFactory
    from mailhub.store import MailStore
    from mailhub.throttle import AuthThrottle

    class RealTimeClock(Clock):
        def seconds(self) -> float:
            return time.monotonic()

    source = workdir / "source"
    imap_load.generate(source, 10_000)
    replies = bool(os.environ.get("THREAD_GC_REPLIES"))
    root = workdir / ("thread-gc-replies" if replies else "thread-gc")
    folder_dir = root / "localhost" / "bench"
    if not folder_dir.exists():
        imap_load.copy_maildir(source, folder_dir, None)
        if replies:
            add_replies(folder_dir)
    clock = RealTimeClock()
    store = MailStore(root, hostname="localhost")
    factory = IMAPServerFactory(
        hostname="localhost",
        limits=Limits(),
        store=store,
        portal=make_portal(DevChecker(run=lambda f, *a: succeed(f(*a)))),
        clock=clock,
        tls_context_factory=None,
        plaintext_login_allowed=lambda host: True,
        throttle=AuthThrottle(clock, max_failures=3, max_delay=4.0),
        log=Logger(namespace="bench.imap"),
        run=lambda f, *a: maybeDeferred(f, *a),
    )
    transport = StringTransport()
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    tags = iter(range(1, 1_000_000))

    def command(text: str) -> bytes:
        tag = b"a%d" % next(tags)
        transport.clear()
        protocol.dataReceived(tag + b" " + text.encode() + b"\r\n")
        while tag + b" OK" not in transport.value():
            clock.advance(0)
            if tag + b" NO" in transport.value() or tag + b" BAD" in transport.value():
                raise SystemExit(transport.value()[-300:])
        return transport.value()

    command("LOGIN bench secret")
    command("SELECT INBOX")
    command("THREAD REFERENCES UTF-8 ALL")  # headers cached
    folder = store.mailbox("bench@localhost").folder("INBOX")
    with message_cache.headers_pass(folder) as p:
        memos = [p.get(u).memo for u in (m.uid for m in folder.sync().messages)]

    collections = [0, 0, 0]
    counting = False
    in_gc = [0.0, 0.0]  # (start of the collection running, seconds in collections)

    def on_gc(phase: str, info: dict) -> None:
        if counting and phase == "start":
            collections[info["generation"]] += 1
            in_gc[0] = time.perf_counter()
        elif counting and phase == "stop":
            in_gc[1] += time.perf_counter() - in_gc[0]

    # wall time of the command with the collector paused by it (across reactor turns or not)
    paused = [0.0]
    real_pause = getattr(sort_command, "collector_paused", None)  # (none: THREAD never paused)

    @contextmanager
    def timed_pause() -> Iterator[None]:
        start = time.perf_counter()
        with real_pause():  # type: ignore[misc]  # (not None: patched only then)
            yield
        paused[0] += time.perf_counter() - start

    if real_pause is not None:
        sort_command.collector_paused = timed_pause  # type: ignore[assignment]

    paused_turns = [0]
    real_turn = search_command.let_others_run

    async def turn(session: object) -> None:
        if counting and not gc.isenabled():
            paused_turns[0] += 1
        await real_turn(session)  # type: ignore[arg-type]

    search_command.let_others_run = turn  # type: ignore[assignment]
    gc.callbacks.append(on_gc)
    gc.collect()
    gc.freeze()
    out = []
    for _ in range(runs):
        for kind in ("cold", "warm"):
            if kind == "cold":
                for memo in memos:
                    memo.clear()
            gc.collect()
            collections[:] = [0, 0, 0]
            paused_turns[0] = 0
            in_gc[1] = paused[0] = 0.0
            counting = True
            c = time.process_time()
            command("THREAD REFERENCES UTF-8 ALL")
            cpu = time.process_time() - c
            counting = False
            out.append(
                {
                    f"{kind} CPU": cpu,
                    # (the A/B prints ms: these counts times 1000)
                    f"{kind} gen0 collections/1000": collections[0] / 1000,
                    f"{kind} gen1+2 collections/1000": (collections[1] + collections[2]) / 1000,
                    f"{kind} turns paused/1000": paused_turns[0] / 1000,
                    f"{kind} in collections": in_gc[1],
                    f"{kind} paused wall": paused[0],
                }
            )
    print(json.dumps(out))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    import treeab

    treeab.main(
        __file__,
        __doc__.splitlines()[0],
        "THREAD runs",
        child,
    )
