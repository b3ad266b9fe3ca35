#!/usr/bin/env python3
"""The cold header pass of imap_load.py's ``search_cold`` (UID SEARCH SUBJECT quarterly over
its 10,000-message mailbox, no cache file), in process, A/B between source trees: the CPU
(``time.process_time``) of the header cache pass and the SUBJECT match, median of ``--runs``
per tree, trees alternating. Each run removes the cache file and opens the store anew (the UID
list stays: what is timed is the pass, not the first SELECT). The start-up heap is frozen, as
the daemon's is (``mailhub.tap.HeapFreeze``).

Each tree runs in its own child process with ``<tree>`` first on the path (a checkout, or
``git archive <commit> | tar -x -C <dir>``; an editable install's finder is set aside).

    .venv/bin/python benchmarks/search_cold_ab.py /var/tmp/base . --rounds 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(workdir: Path, runs: int) -> None:
    sys.path.insert(0, str(HERE))
    import imap_load

    from mailhub.imap import message_cache
    from mailhub.imap.search import _decoded
    from mailhub.message.structure import ENVELOPE_FIELDS
    from mailhub.store import MailStore

    source = workdir / "source"
    imap_load.generate(source, 10_000)
    root = workdir / f"search-cold-{os.getpid()}"
    folder_dir = root / "localhost" / "bench"
    imap_load.copy_maildir(source, folder_dir, None)
    subject = ENVELOPE_FIELDS.index(b"subject")
    needle = imap_load.SEARCH_WORD
    out = []
    for _ in range(runs):
        try:
            os.unlink(folder_dir / "mailhub-cache")
        except FileNotFoundError:
            pass
        folder = MailStore(root, hostname="bench").mailbox("bench@localhost").folder("INBOX")
        uids = [m.uid for m in folder.sync().messages]
        gc.collect()
        gc.freeze()
        c = time.process_time()
        found = 0
        with message_cache.headers_pass(folder) as p:
            for u in uids:
                text = _decoded(p.get(u).envelope_field(subject))
                if text is not None and needle in text:
                    found += 1
        out.append(time.process_time() - c)
        gc.unfreeze()
        if found != 100:
            raise SystemExit(f"{found} hits")
    import shutil

    shutil.rmtree(root)
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs="*", default=[str(HERE.parent)])
    p.add_argument("--runs", type=int, default=5, help="cold passes per tree and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workdir", default="/tmp/mailhub-bench-imap")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(Path(args.workdir), args.runs)
        return
    results: dict[str, list[float]] = {t: [] for t in args.trees}
    for _ in range(args.rounds):
        for tree in args.trees:
            # The tree first on the path, ahead of an editable install's finder.
            boot = (
                "import sys, runpy; sys.meta_path[:] = [f for f in sys.meta_path"
                " if 'editable' not in repr(f).lower()]; sys.path.insert(0, sys.argv.pop(1));"
                " sys.argv.pop(0); runpy.run_path(sys.argv[0], run_name='__main__')"
            )
            command = [sys.executable, "-c", boot, os.path.abspath(tree), __file__, "--child",
                       "--runs", str(args.runs), "--workdir", args.workdir]  # fmt: skip
            line = subprocess.run(command, check=True, capture_output=True, text=True)
            results[tree].extend(json.loads(line.stdout.strip().splitlines()[-1]))
            print(f"load {os.getloadavg()[0]:.2f}  {tree}", flush=True)
    for tree, runs in results.items():
        vals = sorted(runs)
        print(f"{tree}: median {vals[len(vals) // 2] * 1000:.1f} ms CPU of {len(vals)} passes")


if __name__ == "__main__":
    main()
