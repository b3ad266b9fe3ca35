"""Nothing lost: kill -9 the server while many messages are in flight.

Every message the client saw "250" for must be in the Maildir, complete, exactly once; every
file in new/ must be a whole message (the client may not have seen its 250: a duplicate on
resend is allowed, a loss or a torn file is not).
"""

from __future__ import annotations

import signal
import smtplib
import threading
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.twistd import start_twistd, write_config

CONNECTIONS = 6
BODY = ("0123456789abcdef" * 4 + "\r\n") * 200  # ~13 KiB, several TCP segments


def message(n: int) -> bytes:
    return (
        f"From: load@example.net\r\nTo: crash@example.test\r\n"
        f"Message-ID: <crash-{n}@example.net>\r\nSubject: crash {n}\r\n\r\n{BODY}"
    ).encode()


class KillDuringDelivery(SynchronousTestCase):
    def test_every_acknowledged_message_survives_kill_9(self) -> None:
        tmp = Path(self.mktemp()).absolute()
        tmp.mkdir()
        proc, port, log = start_twistd(self, tmp, write_config(tmp, "tcp:0:interface=127.0.0.1"))

        acked: set[int] = set()
        lock = threading.Lock()
        enough = threading.Event()

        def sender(first: int) -> None:
            n = first
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                    while True:
                        client.sendmail("load@example.net", ["crash@example.test"], message(n))
                        with lock:
                            acked.add(n)
                            if len(acked) >= 60:
                                enough.set()
                        n += CONNECTIONS
            except (OSError, smtplib.SMTPException):
                return  # the server died under us: expected

        threads = [threading.Thread(target=sender, args=(i,)) for i in range(CONNECTIONS)]
        for t in threads:
            t.start()
        self.assertTrue(enough.wait(60), log.read_text())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for t in threads:
            t.join(30)

        inbox = tmp / "data" / "mail" / "example.test" / "crash"
        stored: dict[int, int] = {}
        for path in (inbox / "new").iterdir():
            data = path.read_bytes()
            # Whole: the Maildir name's S= size matches and the body is all there.
            self.assertIn(f",S={len(data)}", path.name)
            self.assertTrue(data.endswith(BODY.encode()), path.name)
            number = int(data.split(b"Message-ID: <crash-", 1)[1].split(b"@", 1)[0])
            stored[number] = stored.get(number, 0) + 1

        with lock:
            missing = acked - set(stored)
        self.assertEqual(missing, set(), "acknowledged with 250 but not in the Maildir")
        self.assertTrue(all(count == 1 for count in stored.values()), stored)
        self.assertGreaterEqual(len(stored), 60)
