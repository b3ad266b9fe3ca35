"""``mailhub sendmail`` against a real ``twistd mailhub``: a message over SMTP; then the server
is killed (-9, leaving its recorded address behind), the next message goes into the pickup
directory, and the restarted server delivers it exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailhub.pickup import pickup_dir
from mailhub.store import MailStore
from tests.support.twistd import environment, start_twistd, write_config


def sendmail(config: Path, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    argv = [sys.executable, "-m", "mailhub.sendmail", "-C", str(config), "-t", "-i"]
    return subprocess.run(argv, input=stdin, env=environment(), capture_output=True, timeout=60)


class KilledServer(SynchronousTestCase):
    def test_pickup_across_kill_9_and_restart(self) -> None:
        tmp = Path(self.mktemp()).absolute()
        tmp.mkdir()
        config = write_config(tmp, "tcp:0:interface=127.0.0.1")
        proc, _port, log = start_twistd(self, tmp, config)

        done = sendmail(config, b"To: app@example.test\nSubject: while up\n\nx\n")
        self.assertEqual((done.returncode, done.stderr), (0, b""))
        found = log.wait_for(r"accepted queue_id=(\w+) .*to=\['app@example\.test'\]")
        self.assertIsNotNone(found, log.read_text())

        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        done = sendmail(config, b"To: app@example.test\nSubject: while down\n\ny\n")
        self.assertEqual((done.returncode, done.stderr), (0, b""))
        waiting = list((pickup_dir(tmp / "data") / "new").iterdir())
        self.assertEqual(len(waiting), 1)

        _proc, _port, log = start_twistd(self, tmp, config)
        queued = log.wait_for(r"pickup: \S+ from <[^>]*> for 1 recipient\(s\) queued as (\w+)")
        self.assertIsNotNone(queued, log.read_text())
        assert queued is not None
        removed = log.wait_for(rf"queue: {queued.group(1)} removed \(done\)")
        self.assertIsNotNone(removed, log.read_text())

        store = MailStore(tmp / "data" / "mail", hostname="mx.example.test")
        inbox = store.mailbox("app@example.test").folder()
        subjects = sorted(
            inbox.read_message(m.uid).split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]
            for m in inbox.sync().messages
        )
        self.assertEqual(subjects, [b"while down", b"while up"])
        root = pickup_dir(tmp / "data")
        self.assertEqual([*(root / "new").iterdir(), *(root / "cur").iterdir()], [])
