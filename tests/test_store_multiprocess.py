"""Several real OS processes on one Maildir: deliveries and readers at the same time.

The store is lock-free for delivery and locks only to assign UIDs, so these tests check the
properties that must survive concurrency: every message present exactly once, and no UID ever
given to two messages or changed for one, across processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailhub.store import dotlock
from mailhub.store.store import MailStore

REPO = str(Path(__file__).resolve().parent.parent)
ADDRESS = "shared@example.com"

# argv: root, tag, count, concurrency. Delivers through the real sink and group committer.
DELIVERER = """
import sys
from pathlib import Path
from twisted.internet import defer, task
from mailhub.envelope import Envelope, Recipient
from mailhub.store.delivery import GroupCommitter, MaildirSink
from mailhub.store.store import MailStore

root, tag, count, conc = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

async def main(reactor):
    committer = GroupCommitter(reactor, threads=8)
    committer.startService()
    sink = MaildirSink(MailStore(root, "node-" + tag), committer)
    todo = list(range(count))

    async def worker():
        while todo:
            i = todo.pop()
            env = Envelope(queue_id=f"{tag}-{i}", mail_from="a@b.example",
                           recipients=[Recipient("shared@example.com", "shared@example.com")])
            msg = sink.open(env)
            msg.write(b"X-Marker: %s-%d\\r\\n\\r\\n" % (tag.encode(), i) + b"x" * 2000)
            await msg.commit()

    await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(conc)])
    await committer.stopService()

task.react(lambda r: defer.ensureDeferred(main(r)))
"""

# argv: root, stop file, output file, flag ("flag" renames every message it sees once).
SYNCER = """
import json, sys, time
from pathlib import Path
from mailhub.store.errors import MessageGone
from mailhub.store.store import MailStore

root, stop, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
folder = MailStore(root, "reader").mailbox("shared@example.com").folder()
seen, validity, flagged = {}, set(), set()
while True:
    last = stop.exists()
    state = folder.sync()
    validity.add(state.uidvalidity)
    for m in state.messages:
        seen.setdefault(m.key, set()).add(m.uid)
        if mode == "flag" and m.uid not in flagged:
            flagged.add(m.uid)
            try:
                folder.set_flags(m.uid, {"S"})
            except MessageGone:
                pass
    if last:
        break
    time.sleep(0.002)
out.write_text(json.dumps({"seen": {k: sorted(v) for k, v in seen.items()},
                           "uidvalidity": sorted(validity)}))
"""


class MultiProcessCase(SynchronousTestCase):
    """Spawning real processes on one shared mailbox, and checking what they saw."""

    def setUp(self) -> None:
        # This process is one more plain (reactor-less) process on the tree: its store calls
        # wait for the lock, even where trial runs the test on its reactor thread (-j2).
        self.patch(dotlock, "on_reactor_thread", lambda: False)
        self.root = Path(self.mktemp())
        self.store = MailStore(self.root, "test")
        self.folder = self.store.mailbox(ADDRESS, create=True).folder()
        self.stop = self.root / "stop"
        self.env = dict(os.environ, PYTHONPATH=REPO)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.addCleanup(self.kill_all)

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def spawn(self, script: str, *args: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, "-c", script, *args], env=self.env)
        self.procs.append(p)
        return p

    def deliverer(self, tag: str, count: int) -> subprocess.Popen[bytes]:
        return self.spawn(DELIVERER, str(self.root), tag, str(count), "10")

    def syncer(self, name: str, mode: str = "plain") -> tuple[subprocess.Popen[bytes], Path]:
        out = self.root / f"{name}.json"
        return self.spawn(SYNCER, str(self.root), str(self.stop), str(out), mode), out

    def wait(self, p: subprocess.Popen[bytes]) -> None:
        self.assertEqual(p.wait(timeout=120), 0)

    def final_uids(self) -> dict[str, int]:
        """UIDs as a fresh process sees them afterwards."""
        state = MailStore(self.root, "after").mailbox(ADDRESS).folder().sync()
        uids = [m.uid for m in state.messages]
        self.assertEqual(len(uids), len(set(uids)))
        return {m.key: m.uid for m in state.messages}

    def check_observations(self, out: Path, final: dict[str, int]) -> None:
        data = json.loads(out.read_text())
        self.assertEqual(len(data["uidvalidity"]), 1, "UIDVALIDITY changed under load")
        by_uid: dict[int, str] = {}
        for key, uids in data["seen"].items():
            self.assertEqual(len(uids), 1, f"{key} was seen with several UIDs {uids}")
            self.assertEqual(final[key], uids[0], f"{key} changed UID")
            self.assertNotIn(uids[0], by_uid, f"UID {uids[0]} given to two messages")
            by_uid[uids[0]] = key

    def markers(self) -> list[bytes]:
        out = []
        for m in self.folder.sync().messages:
            first = self.folder.read_message(m.uid).split(b"\r\n")[1]
            out.append(first)
        return out


class MultiProcessTests(MultiProcessCase):
    def test_two_deliverers_and_a_reader(self) -> None:
        reader, out = self.syncer("reader")
        writers = [self.deliverer("a", 150), self.deliverer("b", 150)]
        for p in writers:
            self.wait(p)
        self.stop.touch()
        self.wait(reader)
        final = self.final_uids()
        self.assertEqual(len(final), 300)
        markers = self.markers()
        expected = {b"X-Marker: %s-%d" % (t, i) for t in (b"a", b"b") for i in range(150)}
        self.assertEqual(sorted(markers), sorted(expected))  # each exactly once
        self.assertEqual(sorted(final.values()), list(range(1, 301)))
        self.check_observations(out, final)
        new_dir = self.root / "example.com" / "shared"
        self.assertEqual(os.listdir(new_dir / "tmp"), [])

    def test_concurrent_syncs_never_share_a_uid(self) -> None:
        readers = [self.syncer("r1", "flag"), self.syncer("r2", "plain")]
        writer = self.deliverer("c", 300)
        # Also drop messages from this process while the others run.
        for i in range(50):
            self.folder.append(b"X-Marker: local-%d\r\n\r\n" % i)
            time.sleep(0.001)
        self.wait(writer)
        self.stop.touch()
        for p, _ in readers:
            self.wait(p)
        final = self.final_uids()
        self.assertEqual(len(final), 350)
        for _, out in readers:
            self.check_observations(out, final)
        # The flagging reader's renames kept every message's UID (keyed by base name).
        flagged = [m for m in self.folder.sync().messages if "S" in m.flags]
        self.assertGreater(len(flagged), 0)


# argv: root, stop file, output file, keyword. Adds its keyword to every message, round after
# round, then once more after the stop file appears; records each STORE's mod-sequence.
STORER = """
import json, sys, time
from pathlib import Path
from mailhub.store.store import MailStore

root, stop, out, keyword = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
folder = MailStore(root, "storer-" + keyword).mailbox("shared@example.com").folder()
modseqs = []
while True:
    last = stop.exists()
    uids = [m.uid for m in folder.sync().messages]
    outcome = folder.store_flags(uids, "add", keywords=[keyword])
    values = {outcome.infos[u].modseq for u in outcome.changed}
    assert len(values) <= 1, values  # one STORE, one mod-sequence
    modseqs.extend(values)
    if last:
        break
    time.sleep(0.005)
out.write_text(json.dumps(modseqs))
"""

# argv: root, stop file. Marks every message \\Flagged through the old one-message API (as
# POP3 does with \\Seen) and renames like mutt would: flag letter "P" straight on disk.
FLAGGER = """
import os, sys, time
from pathlib import Path
from mailhub.store.errors import MessageGone
from mailhub.store.store import MailStore

root, stop = Path(sys.argv[1]), Path(sys.argv[2])
folder = MailStore(root, "flagger").mailbox("shared@example.com").folder()
cur = root / "example.com" / "shared" / "cur"
while True:
    last = stop.exists()
    for m in folder.sync().messages:
        if "F" not in m.flags:
            try:
                folder.add_flags(m.uid, "F")
            except MessageGone:
                pass
    for fn in os.listdir(cur):
        base, _, info = fn.partition(":")
        if info.startswith("2,") and "P" not in info:
            try:  # a foreign program: no lock, no index, just the rename
                os.rename(cur / fn, cur / (base + ":2," + "".join(sorted(info[2:] + "P"))))
            except FileNotFoundError:
                pass
    if last:
        break
    time.sleep(0.005)
"""

# argv: root, names... Computes a cache entry "copy" (the whole file) for every message.
CACHER = """
import sys
from pathlib import Path
from mailhub.store import cache
from mailhub.store.errors import MessageGone
from mailhub.store.store import MailStore

root, order = Path(sys.argv[1]), sys.argv[2]
cache.COMPACT_MIN_DEAD = int(sys.argv[3])
folder = MailStore(root, "cacher-" + order).mailbox("shared@example.com").folder()
for _ in range(3):
    msgs = list(folder.sync().messages)
    if order == "down":
        msgs.reverse()
    for m in msgs:
        try:
            got = folder.cached(m.uid, "copy", lambda f: f.read(), bytes, bytes)
            assert got == folder.read_message(m.uid), m.uid
        except MessageGone:
            pass
"""


class ModseqMultiProcessTests(MultiProcessCase):
    def test_no_flag_or_keyword_change_is_lost(self) -> None:
        for i in range(60):
            self.folder.append(b"X-Marker: early-%d\r\n\r\n" % i)
        storers = []
        for kw in ("alpha", "beta", "gamma"):
            out = self.root / f"{kw}.json"
            storers.append((self.spawn(STORER, str(self.root), str(self.stop), str(out), kw), out))
        flagger = self.spawn(FLAGGER, str(self.root), str(self.stop))
        writer = self.deliverer("d", 120)
        self.wait(writer)
        time.sleep(0.3)
        self.stop.touch()
        self.wait(flagger)
        for p, _ in storers:
            self.wait(p)
        # The flagger's last round ran after all delivery, so every message carries F and P;
        # each storer's last round ran after that, so every message has every keyword.
        state = MailStore(self.root, "after").mailbox(ADDRESS).folder().sync()
        self.assertEqual(len(state.messages), 180)
        for m in state.messages:
            self.assertEqual(m.keywords, frozenset({"alpha", "beta", "gamma"}), m.key)
            self.assertLessEqual({"F", "P"}, m.flags, m.key)
            self.assertLessEqual(m.modseq, state.highestmodseq)
        # RFC 7162 3.2: STOREs from different connections never share a mod-sequence.
        used = [v for _, out in storers for v in json.loads(out.read_text())]
        self.assertEqual(len(used), len(set(used)))
        self.assertLessEqual(max(used), state.highestmodseq)

    def test_mod_sequences_only_grow_as_seen_by_a_reader(self) -> None:
        reader_out = self.root / "reader.json"
        reader = self.spawn(
            """
import json, sys, time
from pathlib import Path
from mailhub.store.store import MailStore
root, stop, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
folder = MailStore(root, "reader").mailbox("shared@example.com").folder()
highest, last_seen, bad = 0, {}, []
while True:
    last = stop.exists()
    state = folder.sync()
    if state.highestmodseq < highest:
        bad.append(("highest went down", highest, state.highestmodseq))
    highest = state.highestmodseq
    for m in state.messages:
        if m.modseq < last_seen.get(m.uid, 0) or m.modseq > highest:
            bad.append((m.uid, last_seen.get(m.uid), m.modseq, highest))
        last_seen[m.uid] = m.modseq
    if last:
        break
    time.sleep(0.002)
out.write_text(json.dumps(bad))
""",
            str(self.root),
            str(self.stop),
            str(reader_out),
        )
        out = self.root / "s.json"
        storer = self.spawn(STORER, str(self.root), str(self.stop), str(out), "kw")
        writer = self.deliverer("e", 100)
        self.wait(writer)
        self.stop.touch()
        self.wait(storer)
        self.wait(reader)
        self.assertEqual(json.loads(reader_out.read_text()), [])


class CacheMultiProcessTests(MultiProcessCase):
    def fill(self, n: int) -> None:
        for i in range(n):
            self.folder.append(b"X-Marker: c-%d\r\n\r\n" % i + b"y" * (i * 37))

    def test_entries_are_shared_between_processes(self) -> None:
        self.fill(80)
        cachers = [self.spawn(CACHER, str(self.root), o, "65536") for o in ("up", "down")]
        for p in cachers:
            self.wait(p)
        fresh = MailStore(self.root, "after").mailbox(ADDRESS).folder()

        def no_compute(f: object) -> bytes:
            raise AssertionError("should have come from the cache file")

        for m in fresh.sync().messages:
            got = fresh.cached(m.uid, "copy", no_compute, bytes, bytes)
            self.assertEqual(got, fresh.read_message(m.uid))

    def test_expunges_and_compaction_during_use_never_give_wrong_data(self) -> None:
        self.fill(120)
        # The cachers check every value they get against the file itself (assert in CACHER).
        cachers = [self.spawn(CACHER, str(self.root), o, "0") for o in ("up", "down")]
        uids = [m.uid for m in self.folder.sync().messages]
        for chunk in range(0, 100, 10):
            self.folder.expunge(uids[chunk : chunk + 10])
            time.sleep(0.01)
        for p in cachers:
            self.wait(p)
        fresh = MailStore(self.root, "after").mailbox(ADDRESS).folder()
        for m in fresh.sync().messages:
            got = fresh.cached(m.uid, "copy", lambda f: f.read(), bytes, bytes)
            self.assertEqual(got, fresh.read_message(m.uid))


# argv: root, tag, rounds, output file. Creates a folder of its own and the shared "Same",
# deletes and creates them again, round after round, with the clock stopped (every process in
# the same second); records the UIDVALIDITY of each of its own folders (another process may
# have made the "Same" it looks at).
RECREATOR = """
import json, sys
from pathlib import Path
from mailhub.store.errors import FolderExists, FolderNotFound
from mailhub.store.store import MailStore

root, tag, rounds, out = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
box = MailStore(root, "node-" + tag, now=lambda: 1700000000.0).mailbox("shared@example.com")
given = []
for i in range(rounds):
    for name in ("Own" + tag, "Same"):
        try:
            box.delete_folder(name)
        except FolderNotFound:  # (deleted by another meanwhile)
            pass
        try:
            box.create_folder(name)
            validity = box.folder(name).sync().uidvalidity
            if name != "Same":
                given.append(validity)
        except (FolderExists, FolderNotFound):
            pass  # another process made (or deleted) "Same" in between
out.write_text(json.dumps(given))
"""


class UidValidityTests(MultiProcessCase):
    def test_processes_recreating_folders_never_share_a_uidvalidity(self) -> None:
        # RFC 3501 2.3.1.1: each new folder gets a UIDVALIDITY above every one handed out
        # before for this user, by any process; the clock cannot help (stopped here).
        outs = [self.root / f"re{i}.json" for i in range(3)]
        procs = [self.spawn(RECREATOR, str(self.root), str(i), "20", str(out))
                 for i, out in enumerate(outs)]  # fmt: skip
        for p in procs:
            self.wait(p)
        given = [json.loads(out.read_text()) for out in outs]
        everything = [v for values in given for v in values]
        self.assertEqual(len(everything), 60)
        self.assertEqual(len(everything), len(set(everything)), "a UIDVALIDITY given twice")
        for values in given:  # each process saw them grow
            self.assertEqual(values, sorted(values))
