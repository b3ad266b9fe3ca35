"""``twistd -n mailhub --workers 2`` with real clients: one port, two processes, one Maildir.

Which worker serves a connection is the kernel's choice (SO_REUSEPORT spreads them by hash):
the tests find out from /proc which worker process holds the server end of each connection,
and open connections until both workers have one.
"""

from __future__ import annotations

import email.policy
import os
import re
import select
import signal
import smtplib
import socket
import subprocess
import threading
from email.message import EmailMessage
from pathlib import Path

from imapclient import IMAPClient
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support.twistd import ProcessOutput, start_twistd, write_production_config

HOST = "127.0.0.1"
USER, PASSWORD = "alice@example.test", "secret-alice"
WAIT = 30.0  # a safety net: every wait ends on its event


def server_pid(client: object, server_port: int, pids: list[int], tries: int = 5) -> int | None:
    """The pid among ``pids`` holding the server end of ``client``'s TCP connection (Linux);
    None if not found (its worker died, say)."""
    sock = client.sock if hasattr(client, "sock") else client  # smtplib / imaplib
    client_port = sock.getsockname()[1]  # type: ignore[attr-defined]
    want = (f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}")
    for _ in range(tries):
        # A read of /proc/net/tcp may miss a line while other sockets come and go (every
        # test on this machine shares the table): read it again before giving up.
        inode = _socket_inode(want)
        if inode is not None:
            break
    else:
        return None
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue  # (that worker is gone)
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except FileNotFoundError:
                continue  # closed meanwhile (a delivery's file, an older connection)
    return None


def _socket_inode(want: tuple[str, str]) -> str | None:
    """The inode of the TCP socket with (local, remote) addresses ``want``, from one read of
    /proc/net/tcp (the kernel gives it a page at a time, each resuming the walk of its hash
    table by position: a line may be skipped when sockets went between two pages)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == want:
            return fields[9]
    return None


def wait_gone(pid: int, timeout: float = WAIT) -> bool:
    """True once ``pid`` has exited (a pidfd becomes readable then: no polling loop)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def message(n: int, to: str = USER) -> bytes:
    m = EmailMessage(policy=email.policy.SMTP)  # CRLF line ends, as SMTP wants them
    m["From"], m["To"], m["Subject"] = "load@example.net", to, f"workers {n}"
    m["Message-ID"] = f"<workers-{n}@example.net>"
    m.set_content(f"message {n}\n" + "x" * 2000)
    return bytes(m)


class TwoWorkers(SynchronousTestCase):
    def setUp(self) -> None:
        if not os.path.exists("/proc/net/tcp") or not hasattr(os, "pidfd_open"):
            raise SkipTest("reads /proc and uses pidfd_open (Linux)")
        tmp = self.tmp = Path(self.mktemp()).absolute()
        tmp.mkdir(parents=True)
        config = write_production_config(tmp, HOST, USER, PASSWORD)
        self.proc, self.smtp_port, self.log = start_twistd(self, tmp, config, "--workers", "2")
        self.addCleanup(self.stop)
        imap = self.log.wait_for(r"imap listening on 127\.0\.0\.1:(\d+)")
        assert imap is not None, self.log.read_text()
        self.imap_port = int(imap.group(1))
        ready = self.log.wait_for_all(r"worker (\d) ready \(pid (\d+)\)", 2)
        self.assertEqual(len(ready), 2, self.log.read_text())
        self.pids = {int(m.group(1)): int(m.group(2)) for m in ready}
        self.inbox = tmp / "data" / "mail" / "example.test" / "alice"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(WAIT)

    def stored(self) -> dict[int, int]:
        """Message number -> how many copies are in the Maildir (new/ and cur/)."""
        out: dict[int, int] = {}
        for sub in ("new", "cur"):
            folder = self.inbox / sub
            for path in folder.iterdir() if folder.exists() else ():
                number = int(re.search(rb"workers-(\d+)@", path.read_bytes()).group(1))  # type: ignore[union-attr]
                out[number] = out.get(number, 0) + 1
        return out

    def send(self, n: int) -> int | None:
        """One message on its own connection; the pid of the worker that took it."""
        with smtplib.SMTP(HOST, self.smtp_port, timeout=WAIT) as client:
            pid = server_pid(client, self.smtp_port, list(self.pids.values()))
            client.sendmail("load@example.net", [USER], message(n))
        return pid

    def imap_on_each_worker(self) -> dict[int, IMAPClient]:
        """One logged-in IMAP session per worker."""
        sessions: dict[int, IMAPClient] = {}
        for _ in range(32):
            c = IMAPClient(HOST, port=self.imap_port, ssl=False, timeout=WAIT)
            pid = server_pid(c._imap, self.imap_port, list(self.pids.values()))
            if pid is None or pid in sessions:
                c.logout()
                continue
            self.addCleanup(c.shutdown)
            c.login(USER, PASSWORD)
            sessions[pid] = c
            if len(sessions) == 2:
                return sessions
        self.fail(f"32 connections, all to one worker: {sessions}")

    def idle_until(self, client: IMAPClient, pattern: bytes) -> list[object]:
        """IDLE responses until one contains ``pattern`` (EXISTS, FETCH)."""
        seen: list[object] = []
        while True:
            got = client.idle_check(timeout=WAIT)
            self.assertTrue(got, f"nothing in {WAIT} s; saw {seen}")
            seen += got
            if any(pattern in repr(r).encode() for r in got):
                return seen

    def test_smtp_on_the_shared_port_lands_in_the_maildir_through_both_workers(self) -> None:
        served = [self.send(n) for n in range(24)]
        self.assertEqual(self.stored(), dict.fromkeys(range(24), 1))
        self.assertEqual(set(served), set(self.pids.values()), served)  # both took some
        # Their log lines are tagged with their numbers. (A worker writes its own after it
        # has told the supervisor, which logs "ready": they come in either order.)
        for n in (1, 2):
            started = rf"\[w{n} mailhub\.service#info\] mailhub started"
            self.assertIsNotNone(self.log.wait_for(started, WAIT), self.log.read_text())

    def test_idle_in_one_worker_sees_what_the_other_changes(self) -> None:
        (pid_a, a), (pid_b, b) = self.imap_on_each_worker().items()
        self.assertNotEqual(pid_a, pid_b)
        for c in (a, b):
            c.select_folder("INBOX")
        a.idle()
        b.append("INBOX", message(1))  # through the other process
        self.idle_until(a, b"EXISTS")
        a.idle_done()
        b.idle()
        self.send(2)  # SMTP: whichever worker takes it
        [uid_a] = a.search(["SUBJECT", "workers 1"])
        a.add_flags([uid_a], [b"\\Flagged"])
        seen = self.idle_until(b, b"Flagged")
        self.assertTrue(any(b"EXISTS" in repr(r).encode() for r in seen), seen)
        b.idle_done()

    def test_kill_9_of_a_worker_restarts_it_and_loses_no_acknowledged_message(self) -> None:
        acked: set[int] = set()
        lock = threading.Lock()
        enough = threading.Event()
        stop = threading.Event()
        counter = iter(range(1_000_000))

        def sender() -> None:
            while not stop.is_set():
                with lock:
                    n = next(counter)
                try:
                    self.send(n)
                except (OSError, smtplib.SMTPException):
                    continue  # that connection's worker died under it: not acknowledged
                with lock:
                    acked.add(n)
                    if len(acked) >= 40:
                        enough.set()

        threads = [threading.Thread(target=sender) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            self.assertTrue(enough.wait(WAIT), self.log.read_text())
            os.kill(self.pids[2], signal.SIGKILL)
            restarted = self.log.wait_for_all(r"worker 2 ready \(pid (\d+)\)", 2)
            self.assertEqual(len(restarted), 2, self.log.read_text())
            new_pid = int(restarted[1].group(1))
            self.assertNotEqual(new_pid, self.pids[2])
            self.assertRegex(self.log.read_text(), r"worker 2 died \(signal SIGKILL\)")
            self.pids[2] = new_pid
            with lock:
                target = len(acked) + 40
            enough.clear()
            while True:  # 40 more through the set with the new worker
                with lock:
                    if len(acked) >= target:
                        break
                self.assertTrue(self.proc.poll() is None)
                enough.wait(1.0)
                enough.clear()
        finally:
            stop.set()
            for t in threads:
                t.join(WAIT)
        stored = self.stored()
        self.assertEqual(acked - set(stored), set(), "acknowledged with 250 but not stored")
        self.assertTrue(all(count == 1 for count in stored.values()), stored)
        # The new worker 2 serves again.
        served = {self.send(1_000_000 + n) for n in range(24)}
        self.assertIn(new_pid, served)

    def test_sighup_reaches_every_worker_which_reloads_its_certificates(self) -> None:
        self.proc.send_signal(signal.SIGHUP)
        reloaded = self.log.wait_for_all(r"\[w(\d) mailhub\.tls#info\] TLS certificate reloaded", 2)
        self.assertEqual({m.group(1) for m in reloaded}, {"1", "2"}, self.log.read_text())
        for pid in self.pids.values():
            self.assertTrue(alive(pid))
        self.assertNotRegex(self.log.read_text(), r"died")

    def test_sigterm_stops_every_worker(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        # twistd ends by the signal that stopped it (its exit status says so)
        self.assertEqual(self.proc.wait(WAIT), -signal.SIGTERM)
        for pid in self.pids.values():
            self.assertTrue(wait_gone(pid), f"worker {pid} left running")
            self.assertFalse(alive(pid))
        text = self.log.read_text()
        self.assertRegex(text, r"worker 1 stopped")
        self.assertRegex(text, r"worker 2 stopped")
        self.assertNotRegex(text, r"restarting")

    def test_workers_stop_when_the_supervisor_is_killed(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT)
        for pid in self.pids.values():
            self.assertTrue(wait_gone(pid), f"worker {pid} orphaned")


class WithoutTLS(SynchronousTestCase):
    def test_sighup_does_not_end_a_worker_with_nothing_to_reload(self) -> None:
        from tests.support.twistd import write_config

        tmp = Path(self.mktemp()).absolute()
        tmp.mkdir()
        config = write_config(tmp, f"tcp:0:interface={HOST}")
        proc, port, log = start_twistd(self, tmp, config, "--workers", "2")
        self.addCleanup(lambda: proc.poll() is None and proc.send_signal(signal.SIGTERM))
        ready = log.wait_for_all(r"worker (\d) ready \(pid (\d+)\)", 2)
        pids = [int(m.group(2)) for m in ready]
        proc.send_signal(signal.SIGHUP)
        self.assertIsNotNone(log.wait_for(r"SIGHUP forwarded to 2 worker"), log.read_text())
        served = set()
        for n in range(32):  # until both have answered after the signal
            with smtplib.SMTP(HOST, port, timeout=WAIT) as client:
                served.add(server_pid(client, port, pids))
                client.sendmail("a@example.net", ["b@example.test"], message(n, "b@example.test"))
            if served == set(pids):
                break
        self.assertEqual(served, set(pids))
        self.assertNotRegex(log.read_text(), "died")


class Refused(SynchronousTestCase):
    def test_a_port_in_use_stops_start_up_with_a_clear_message(self) -> None:
        import socket

        from tests.support.twistd import TWISTD, environment, write_config

        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind((HOST, 0))
        taken.listen(1)
        tmp = Path(self.mktemp()).absolute()
        tmp.mkdir()
        config = write_config(tmp, f"tcp:{taken.getsockname()[1]}:interface={HOST}")
        args = [*TWISTD, "-n", "--pidfile=", "--logfile=-", "mailhub", "--config", str(config)]
        proc = subprocess.Popen(
            [*args, "--workers", "2"],
            cwd=tmp,
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        output = ProcessOutput(proc.stdout, tmp / "twistd.log")
        self.addCleanup(output.close)
        self.assertNotEqual(proc.wait(WAIT), 0)
        output.close()
        self.assertIn("[listeners] smtp: cannot listen on", output.read_text())
        self.assertNotIn("worker 1 started", output.read_text())


class BehindProxy(SynchronousTestCase):
    """A PROXY listener with workers: the supervisor binds the inner socket, and each worker
    reads the header first, so the client's address (not the proxy's) reaches Received."""

    def test_each_worker_reads_the_proxy_header(self) -> None:
        from tests.support.twistd import write_config

        tmp = Path(self.mktemp()).absolute()
        tmp.mkdir()
        config = write_config(tmp, f"haproxy:tcp:0:interface={HOST}")
        proc, port, log = start_twistd(self, tmp, config, "--workers", "2")
        self.addCleanup(lambda: proc.poll() is None and proc.send_signal(signal.SIGTERM))
        log.wait_for_all(r"worker (\d) ready \(pid (\d+)\)", 2)
        for n in range(4):  # the kernel spreads them over both workers' sockets
            with socket.create_connection((HOST, port), timeout=WAIT) as s:
                s.sendall(f"PROXY TCP4 192.0.2.{n + 1} {HOST} 40000 {port}\r\n".encode())
                reader = s.makefile("rb")
                self.assertTrue(reader.readline().startswith(b"220"))
                for command in (
                    b"EHLO client.example\r\n",
                    b"MAIL FROM:<a@example.net>\r\n",
                    b"RCPT TO:<b@example.test>\r\n",
                    b"DATA\r\n",
                ):
                    s.sendall(command)
                    line = reader.readline()
                    while line[3:4] == b"-":
                        line = reader.readline()
                    self.assertIn(line[:1], (b"2", b"3"), line)
                s.sendall(b"Subject: proxied\r\n\r\nhi\r\n.\r\n")
                self.assertTrue(reader.readline().startswith(b"250"))
                s.sendall(b"QUIT\r\n")
        stored = [p.read_bytes() for p in (tmp / "data").rglob("new/*") if p.is_file()]
        self.assertEqual(len(stored), 4)
        for n in range(4):
            self.assertTrue(any(f"[192.0.2.{n + 1}]".encode() in m for m in stored), n)
        self.assertNotIn(b"[127.0.0.1]", b"".join(stored))


def wait_in_file(path: Path, pattern: str, count: int) -> list[re.Match[str]]:
    """The matches of ``pattern`` in the file once there are ``count`` (fewer after WAIT s);
    woken by inotify each time the file's directory changes, not by a timer."""
    import time

    from twisted.internet.inotify import IN_CREATE, IN_MODIFY
    from twisted.python import _inotify
    from twisted.python.filepath import FilePath

    regex = re.compile(pattern)
    fd = _inotify.init()
    try:
        _inotify.add(fd, FilePath(str(path.parent)), IN_MODIFY | IN_CREATE)  # before reading
        deadline = time.monotonic() + WAIT
        while True:
            found = list(regex.finditer(path.read_text())) if path.exists() else []
            left = deadline - time.monotonic()
            if len(found) >= count or left <= 0:
                return found
            if select.select([fd], [], [], left)[0]:
                os.read(fd, 65536)
    finally:
        os.close(fd)


class LogFile(SynchronousTestCase):
    def test_the_workers_lines_reach_the_supervisors_log_file_whole(self) -> None:
        """twistd --logfile FILE: the supervisor appends its workers' formatted lines."""
        from tests.support.twistd import TWISTD, environment, write_config

        if not hasattr(os, "pidfd_open"):
            raise SkipTest("uses pidfd_open (Linux)")
        tmp = Path(self.mktemp()).absolute()
        tmp.mkdir()
        config = write_config(tmp, f"tcp:0:interface={HOST}")
        path = tmp / "mailhub.log"
        proc = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", f"--logfile={path}", "mailhub", "--config", str(config),
             "--workers", "2"],
            cwd=tmp, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert proc.stdout is not None
        output = ProcessOutput(proc.stdout, tmp / "stdout.log")
        self.addCleanup(output.close)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        ready = wait_in_file(path, r"worker (\d) ready \(pid (\d+)\)", 2)
        self.assertEqual(len(ready), 2, path.read_text())
        pids = [int(m.group(2)) for m in ready]
        listening = wait_in_file(path, r"smtp listening on 127\.0\.0\.1:(\d+)", 1)[0]
        port = int(listening.group(1))
        served = set()
        for n in range(32):  # until both workers have taken a message
            with smtplib.SMTP(HOST, port, timeout=WAIT) as client:
                served.add(server_pid(client, port, pids))
                client.sendmail("a@example.net", ["b@example.test"], message(n, "b@example.test"))
            if served == set(pids):
                break
        self.assertEqual(served, set(pids))
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(WAIT), -signal.SIGTERM)  # (twistd ends by the signal)
        text = path.read_text()
        for number in (1, 2):  # each worker's own lines, tagged, among the supervisor's
            self.assertRegex(text, rf"\n\S+ \[w{number} mailhub\.\S+#info\] ")
        self.assertIn("their log lines appended by this process", text)  # (not relayed)
        self.assertIn("[mailhub.workers#info] worker 2 stopped", text)
        self.assertNotIn("\x1e", text)
        self.assertNotIn('"log_format"', text)  # no JSON record written as it came
        for line in text.splitlines():  # whole lines: each a timestamp or a continuation
            self.assertRegex(line, r"^(\d{4}-\d\d-\d\dT|\t)")
        self.assertEqual(output.read_text(), "")  # nothing went astray on stdout
