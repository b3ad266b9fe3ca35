"""A real ``twistd mailhub`` process for the tests that need one (start-up, kill -9, memory).

The process's output is read by a thread as it comes: a test waits for a log line (the port a
listener bound) on that event, not by re-reading a file on a timer.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
MAILHUB = [sys.executable, "-c", "from mailhub.cli import main; main()"]
# How long start-up may take before the test fails (a safety net: the waits end on the line).
START_TIMEOUT = 30.0


def environment() -> dict[str, str]:
    env = dict(os.environ)
    # The plugin is found through twisted/plugins/ on sys.path, installed or not.
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def write_config(directory: Path, smtp: str, extra: str = "") -> Path:
    path = directory / "mailhub.toml"
    path.write_text(
        f"""
[server]
hostname = "mx.example.test"
data_dir = "{directory / "data"}"

[domains]
local = ["example.test"]
catch_all = ["example.test"]

# Tests never ask the DNS of the world.
[checks]
enabled = false

[listeners]
smtp = ["{smtp}"]
{extra}
"""
    )
    return path


class ProcessOutput:
    """A process's output, copied line by line into ``path`` by a thread; ``wait_for`` wakes
    when a line matches (or the output ends)."""

    def __init__(self, stream: IO[bytes], path: Path) -> None:
        self.path = path
        self._lines: list[str] = []
        self._ended = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._copy, args=(stream,), daemon=True)
        self._thread.start()

    def _copy(self, stream: IO[bytes]) -> None:
        with self.path.open("w") as copy:
            for raw in stream:
                line = raw.decode("utf-8", "replace")
                copy.write(line)
                copy.flush()
                with self._changed:
                    self._lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def read_text(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str] | None:
        """The first match of ``pattern`` in a line; None if the output ended or ``timeout``
        passed without one."""
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            for line in self._lines:
                m = regex.search(line)
                if m:
                    return m
            return None

        with self._changed:
            self._changed.wait_for(lambda: found() is not None or self._ended, timeout)
            return found()

    def wait_for_all(
        self, pattern: str, count: int, timeout: float = START_TIMEOUT
    ) -> list[re.Match[str]]:
        """The matches of ``pattern`` once there are ``count`` (fewer: the output ended or
        ``timeout`` passed)."""
        regex = re.compile(pattern)

        def found() -> list[re.Match[str]]:
            return [m for m in map(regex.search, self._lines) if m]

        with self._changed:
            self._changed.wait_for(lambda: len(found()) >= count or self._ended, timeout)
            return found()

    def close(self, timeout: float = START_TIMEOUT) -> None:
        self._thread.join(timeout)


def write_production_config(directory: Path, host: str, user: str, password: str) -> Path:
    """A production config in ``directory`` (users file with ``user``, TLS certificate, SMTP and
    IMAP on ``host``, ports chosen by the system, checks off): for tests that run several
    workers of one server (tests.integration.test_workers, test_crash_uids)."""
    from mailhub.users import UserDB
    from tests.support.smtp_auth import FAST
    from tests.support.tls import CertificateAuthority

    ca = CertificateAuthority()
    cert, key = ca.issue(["localhost", host], ip_addresses=[host]).write(directory, "mail")
    UserDB(directory / "users", hasher=FAST).add(user, password)
    config = directory / "mailhub.toml"
    config.write_text(f"""
[server]
hostname = "mx.example.test"
data_dir = "{directory / "data"}"

[domains]
local = ["example.test"]

[files]
users = "{directory / "users"}"

[tls]
certificate = "{cert}"
key = "{key}"

[smtp]
auth_without_tls_on_loopback = true  # IMAP LOGIN on loopback without STARTTLS

[checks]
enabled = false  # tests never ask the DNS of the world

[listeners]
smtp = ["tcp:0:interface={host}"]
imap = ["tcp:0:interface={host}"]
""")
    return config


def start_twistd(
    test: Any, directory: Path, config: Path, *args: str
) -> tuple[subprocess.Popen[bytes], int, ProcessOutput]:
    """Run ``twistd -n mailhub --config [args]`` and wait for its SMTP port (from the start-up
    log)."""
    proc = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "--logfile=-", "mailhub", "--config", str(config), *args],
        cwd=directory,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output = ProcessOutput(proc.stdout, directory / "twistd.log")
    test.addCleanup(output.close)
    test.addCleanup(lambda: proc.poll() is None and proc.kill())
    found = output.wait_for(r"smtp listening on 127\.0\.0\.1:(\d+)")
    if found is None:
        test.fail(f"twistd did not start:\n{output.read_text()}")
    return proc, int(found.group(1)), output
