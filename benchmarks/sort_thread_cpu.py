#!/usr/bin/env python3
"""CPU of SORT (DATE) and THREAD REFERENCES in one process, on imap_load.py's 10,000-message
mailbox, part by part: SORT's key column (the first SORT of a session, headers already cached,
keys reset before each repetition) and its order; THREAD's SortMessages, keys, threading and
rendering. ``time.process_time`` with the garbage collector off (whether a full collection
falls into a step depends on the whole process: imap_load.py shows that). Search and network
are left out.

    .venv/bin/python benchmarks/sort_thread_cpu.py [--code DIR] [--reps 3]

``--code DIR`` times another checkout's mailhub (``git archive REV | tar -x -C DIR``): run it
and this checkout in turns for an A/B.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from itertools import pairwise
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--code", default=str(HERE.parent), help="checkout whose mailhub to time")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workdir", default="/tmp/mailhub-bench-sort-thread")
    args = p.parse_args()
    import twisted.internet  # noqa: F401  (before the checkout: its "twisted" holds plugins)

    sys.path.insert(0, str(Path(args.code).resolve()))
    sys.path.insert(1, str(HERE))
    import imap_load

    from mailhub.imap import message_cache
    from mailhub.imap import sort as sort_module
    from mailhub.imap.parser import Atom
    from mailhub.imap.sort import SortMessage
    from mailhub.imap.thread import release, render, thread_references
    from mailhub.store import MailStore

    work = Path(args.workdir)
    imap_load.generate(work / "source", 10_000)
    copy = work / "mail"
    if not copy.exists():
        imap_load.copy_maildir(work / "source", copy / "box", None)
    store = MailStore(copy, "bench")
    folder = store._folder(copy / "box", "INBOX")
    infos = {m.uid: m for m in folder.sync().messages}
    headers = message_cache.headers_pass(folder)
    pairs = [(u, headers.get(u)) for u in infos]
    headers.close()
    uids = [u for u, _h in pairs]
    hs = [h for _u, h in pairs]

    def messages() -> list[SortMessage]:
        return [
            SortMessage(u, n, infos[u].internaldate, infos[u].size, h)
            for n, (u, h) in enumerate(pairs, 1)
        ]

    print(f"{args.code}: ms of CPU, 10,000 messages (the first repetition also finds fields)")
    gc.disable()
    for _ in range(args.reps):
        for _u, h in pairs:
            h.memo.clear()
        t = [time.process_time(), time.process_time()]
        if hasattr(sort_module, "key_column"):  # SORT by columns
            dates = sort_module.key_column("DATE", uids, hs, infos)
            t.append(time.process_time())
            sort_module.sort_order([(dates, False)], len(dates))
        else:  # by SortMessages (before h/sortselect): making them is in "dates"
            ms = messages()
            for m in ms:
                _ = m.sent
            t.append(time.process_time())
            sort_module.sort_messages(ms, sort_module.parse_program([Atom("DATE")]))
        t.append(time.process_time())
        if hasattr(sort_module, "thread_keys"):  # keys first, into the memos (as the command)
            sort_module.thread_keys(hs, references=True)
            k = time.process_time()
            ms = messages()
            m_end = time.process_time()
            t += [t[-1] + m_end - k, m_end]  # (messages, keys) as the columns below
        else:
            ms = messages()
            t.append(time.process_time())
            for m in ms:
                m.compute_thread_keys()
            t.append(time.process_time())
        roots = thread_references(ms)
        t.append(time.process_time())
        render(roots, lambda m: m.seq)
        t.append(time.process_time())
        release(roots)
        d = [(b - a) * 1000 for a, b in pairwise(t)]
        print(
            f"  SORT: dates {d[1]:.1f}, sort {d[2]:.1f} | THREAD: messages"
            f" {d[3]:.1f}, keys {d[4]:.1f}, threading {d[5]:.1f}, rendering {d[6]:.1f}"
        )
    gc.enable()


if __name__ == "__main__":
    main()
