"""A/B between source trees, for the in-process benchmarks (select_cold_ab.py,
search_cold_ab.py): the same script run as a child process once per tree and round, trees
alternating, each child with its tree first on the path (a checkout, or ``git archive <commit>
| tar -x -C <dir>``; an editable install's finder is set aside), its last line of output one
JSON list of per-run figures."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The tree first on the path, ahead of an editable install's finder; then the script as main.
BOOT = (
    "import sys, runpy; sys.meta_path[:] = [f for f in sys.meta_path"
    " if 'editable' not in repr(f).lower()]; sys.path.insert(0, sys.argv.pop(1));"
    " sys.argv.pop(0); runpy.run_path(sys.argv[0], run_name='__main__')"
)


def main(script: str, description: str, what: str, child: Callable[[Path, int], None]) -> None:
    """The command line of an A/B script: ``trees`` (default: this checkout), ``--runs`` per
    tree and round, ``--rounds``, ``--workdir``; ``child(workdir, runs)`` in each tree."""
    here = Path(script).resolve().parent
    p = argparse.ArgumentParser(description=description)
    p.add_argument("trees", nargs="*", default=[str(here.parent)])
    p.add_argument("--runs", type=int, default=5, help=f"{what} per tree and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workdir", default="/tmp/mailhub-bench-imap")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(Path(args.workdir), args.runs)
        return
    results: dict[str, list[Any]] = {t: [] for t in args.trees}
    for _ in range(args.rounds):
        for tree in args.trees:
            command = [sys.executable, "-c", BOOT, os.path.abspath(tree), script, "--child",
                       "--runs", str(args.runs), "--workdir", args.workdir]  # fmt: skip
            line = subprocess.run(command, check=True, capture_output=True, text=True)
            results[tree].extend(json.loads(line.stdout.strip().splitlines()[-1]))
            print(f"load {os.getloadavg()[0]:.2f}  {tree}", flush=True)
    for tree, runs in results.items():
        # Per-run figures: one number, or a dict of named ones (each its own median).
        rows = [r if isinstance(r, dict) else {"CPU": r} for r in runs]
        cols = []
        for k in sorted({k for r in rows for k in r}):
            vals = sorted(r[k] for r in rows if k in r)
            cols.append(f"{k} {vals[len(vals) // 2] * 1000:.1f}")
        print(f"{tree}: median ms of {len(runs)} {what}: " + ", ".join(cols))
