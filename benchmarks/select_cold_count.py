#!/usr/bin/env python3
"""One cold SELECT of imap_load.py's 10,000-message mailbox in a fresh process, for an
instruction count that a loaded machine does not move (callgrind counts user space only):
run it under valgrind once as is and once with ``--setup-only`` (the same copy and store,
no SELECT); the difference is the SELECT's. The store's worker is a Twisted thread, and the
inotify witness is on, as in the server.

    PYTHONHASHSEED=0 PYTHONPATH=<tree> valgrind --tool=callgrind \\
        --callgrind-out-file=/dev/null .venv/bin/python benchmarks/select_cold_count.py \\
        --workdir /var/tmp/x [--setup-only]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/tmp/mailhub-bench-select-count")
    p.add_argument("--setup-only", action="store_true")
    args = p.parse_args()
    sys.path.insert(0, str(HERE))
    import imap_load
    from twisted.internet import defer, reactor, threads

    from mailhub.imap.view import View
    from mailhub.store import MailStore
    from mailhub.store.dirwatch import DirWatch

    workdir = Path(args.workdir)
    source = workdir / "source"
    imap_load.generate(source, 10_000)
    root = workdir / "select-cold"
    if root.exists():
        shutil.rmtree(root)
    # (no os.sync() as imap_load's copy does: it would only add time, not instructions)
    shutil.copytree(source, root / "localhost" / "bench", ignore=shutil.ignore_patterns(".*"))
    store = MailStore(root, hostname="bench")
    store.settings.offload.run = lambda f, *a: threads.deferToThread(f, *a)
    store.settings.witness.dirs = DirWatch.open()
    folder = store.mailbox("bench@localhost").folder("INBOX")
    out: dict[str, Any] = {}

    async def select() -> None:
        if args.setup_only:
            return
        t = time.perf_counter()
        await folder.settled()  # as mailbox_commands._select
        view = View(folder, readonly=False, assign=False)
        out["messages"], out["wall_ms"] = len(view.uids), (time.perf_counter() - t) * 1000

    def go() -> None:
        d = defer.ensureDeferred(select())
        d.addErrback(lambda f: f.printTraceback())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    print(out)


if __name__ == "__main__":
    main()
