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

import gc
import json
import os
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


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    import treeab

    treeab.main(__file__, __doc__.split("\n\n")[0], "cold passes", child)
