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


class MultiProcessTests(SynchronousTestCase):
    def setUp(self) -> None:
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
