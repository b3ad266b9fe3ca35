#!/usr/bin/env python3
"""The first SELECT of imap_load.py's 10,000-message mailbox, in process, A/B between source
trees: the reactor thread's CPU (``time.thread_time``), the store worker's UID-list write
(its CPU and wall) and the whole wall clock, median of ``--runs`` per tree, trees alternating.

Each tree runs in its own child process with ``<tree>`` first on the path (benchmarks/treeab.py:
a checkout, or ``git archive <commit> | tar -x -C <dir>``); the store's worker is a Twisted
thread, as the server's GroupCommitter is. Trees before h/uidlist (no worker) do it all on the
reactor. Trees with the store's inotify witness (h/fastsync) get one, as the server's change
feed gives it.

    .venv/bin/python benchmarks/select_cold_ab.py /var/tmp/base . --rounds 2
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def child(workdir: Path, runs: int) -> None:
    """In the tree under test: ``runs`` cold SELECTs; one JSON line of per-run figures."""
    from twisted.internet import defer, reactor, threads

    sys.path.insert(0, str(HERE))
    import imap_load

    from mailhub.imap.view import View
    from mailhub.store import MailStore

    source = workdir / "source"
    imap_load.generate(source, 10_000)
    out: list[dict[str, float]] = []

    async def once() -> None:
        root = workdir / f"select-cold-{os.getpid()}"
        imap_load.copy_maildir(source, root / "localhost" / "bench", None)
        store = MailStore(root, hostname="bench")
        seg: dict[str, float] = {}
        worker = hasattr(store.settings, "offload")
        if worker:
            from mailhub.store import uidwriter

            real = uidwriter.write_list

            def timed(*args: Any) -> Any:
                t, c = time.perf_counter(), time.thread_time()
                try:
                    return real(*args)
                finally:
                    seg["worker_wall"] = time.perf_counter() - t
                    seg["worker_cpu"] = time.thread_time() - c

            def run(f: Any, *args: Any) -> Any:
                return threads.deferToThread(timed if f is real else f, *args)

            store.settings.offload.run = run
        witness = getattr(store.settings, "witness", None)
        if witness is not None:
            # As the server's change feed gives it (mailhub.store.changes, a local disk).
            from mailhub.store.dirwatch import DirWatch

            witness.dirs = DirWatch.open()
        folder = store.mailbox("bench@localhost").folder("INBOX")
        c0, t0 = time.thread_time(), time.perf_counter()
        if worker:
            await folder.settled()  # as mailbox_commands._select
            view = View(folder, readonly=False, assign=False)
        else:
            view = View(folder, readonly=False)
        seg["wall"] = time.perf_counter() - t0
        seg["reactor_cpu"] = time.thread_time() - c0
        if len(view.uids) != 10_000:
            raise SystemExit(f"{len(view.uids)} messages")
        out.append(seg)
        if witness is not None and witness.dirs is not None:
            witness.dirs.close()
        shutil.rmtree(root)

    async def main() -> None:
        for _ in range(runs):
            await once()

    def go() -> None:
        d = defer.ensureDeferred(main())
        d.addErrback(lambda f: f.printTraceback())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    print(json.dumps(out))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    import treeab

    treeab.main(__file__, __doc__.split("\n\n")[0], "cold SELECTs", child)
