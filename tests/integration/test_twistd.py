"""``twistd mailhub`` as an operator runs it: real process, real config file, real socket."""

from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.twistd import MAILHUB, TWISTD, environment, start_twistd, write_config


class StartupErrors(SynchronousTestCase):
    """A bad start is one clear message and a non-zero exit, never a traceback."""

    def run_twistd(self, *args: str) -> subprocess.CompletedProcess[str]:
        tmp = Path(self.mktemp()).absolute()
        tmp.mkdir()
        return subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "--logfile=-", "mailhub", *args],
            cwd=tmp,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def assertCleanFailure(self, result: subprocess.CompletedProcess[str], *needles: str) -> None:
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0, output)
        self.assertNotIn("Traceback", output)
        for needle in needles:
            self.assertIn(needle, output)

    def test_unknown_key(self) -> None:
        tmp = Path(self.mktemp()).absolute()
        tmp.mkdir()
        config = write_config(tmp, "tcp:0:interface=127.0.0.1", "[limits]\nmax_size = 5\n")
        result = self.run_twistd("--config", str(config))
        self.assertCleanFailure(result, str(config), "[limits] max_size", "unknown key", "fix:")

    def test_missing_config_file(self) -> None:
        result = self.run_twistd("--config", "/nonexistent/mailhub.toml")
        self.assertCleanFailure(result, "/nonexistent/mailhub.toml", "not found")

    def test_port_in_use(self) -> None:
        tmp = Path(self.mktemp()).absolute()
        tmp.mkdir()
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        config = write_config(tmp, f"tcp:{port}:interface=127.0.0.1")
        result = self.run_twistd("--config", str(config))
        self.assertCleanFailure(
            result, "[listeners] smtp", f"tcp:{port}:interface=127.0.0.1", "in use", "fix:"
        )


class RunningServer(SynchronousTestCase):
    def test_start_receive_and_stop(self) -> None:
        """Start with a config on port 0, deliver a message with smtplib, stop with SIGTERM."""
        tmp = Path(self.mktemp()).absolute()
        tmp.mkdir()
        config = write_config(tmp, "tcp:0:interface=127.0.0.1")
        proc, port, log = start_twistd(self, tmp, config)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            banner = client.ehlo()
            self.assertEqual(banner[0], 250)
            client.sendmail("a@example.net", ["b+x@example.test"], b"Subject: hi\r\n\r\nbody\r\n")

        proc.send_signal(signal.SIGTERM)
        # twistd shuts down cleanly, then re-raises the signal so its exit says why it stopped.
        self.assertIn(proc.wait(timeout=30), (0, -signal.SIGTERM))
        new = tmp / "data" / "mail" / "example.test" / "b" / "new"
        [delivered] = list(new.iterdir())
        self.assertIn(b"Subject: hi", delivered.read_bytes())
        output = log.read_text()
        self.assertNotIn("Traceback", output)
        self.assertIn("Main loop terminated", output)


class AdminCommand(SynchronousTestCase):
    def test_check_config_good_and_bad(self) -> None:
        tmp = Path(self.mktemp()).absolute()
        tmp.mkdir()
        good = write_config(tmp, "tcp:25")
        result = subprocess.run(
            [*MAILHUB, "check-config", "--config", str(good)],
            env=environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("example.test", result.stdout)

        bad = tmp / "bad.toml"
        bad.write_text('[domains]\nlocal = ["bad domain"]\n')
        result = subprocess.run(
            [*MAILHUB, "check-config", "--config", str(bad)],
            env=environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("[domains] local", result.stderr)
        self.assertNotIn("Traceback", result.stderr)
