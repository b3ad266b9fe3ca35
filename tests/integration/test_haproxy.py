"""Two ``twistd mailhub`` front ends over one data directory behind a real HAProxy (issue 16.5).

HAProxy (Debian's ``haproxy``, started here with a generated config on free 127.0.0.1 ports)
passes TCP through and puts a PROXY header first: ``send-proxy-v2`` to front end A,
``send-proxy`` (v1) to B. Front ends listen with ``haproxy:tcp:...``. Clients connect from
127.0.0.2 and 127.0.0.3, so the address a front end reports is the client's as HAProxy saw it,
never HAProxy's own 127.0.0.1.

Waits are on events: HAProxy started with ``-D`` returns once its ports are bound; twistd's
start-up lines; IMAP IDLE's own ``EXISTS``; log lines read as they are written.
"""

from __future__ import annotations

import imaplib
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import argon2
from twisted.trial.unittest import SynchronousTestCase

from mailhub.store import MailStore
from mailhub.users import UserDB
from tests.support.tls import CertificateAuthority, client_context
from tests.support.tools import requires, tool
from tests.support.twistd import START_TIMEOUT, TWISTD, ProcessOutput, environment

FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
HOST = "mail.example.test"
PROXIED = "haproxy:tcp:0:interface=127.0.0.1"
TIMEOUT = 30
ALICE, BOB = "alice@example.test", "bob@example.test"
PASSWORD = "alice-secret"


CONFIG = f"""
[server]
hostname = "{HOST}"
data_dir = "{{data}}"

[domains]
local = ["example.test"]
catch_all = ["example.test"]

[checks]
enabled = false

[files]
users = "{{users}}"

[tls]
certificate = "{{cert}}"
key = "{{key}}"

[limits]
auth_max_failures = 3

[listeners]
smtp = ["{PROXIED}"]
imaps = ["{PROXIED}"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class FrontEnd:
    def __init__(self, proc: subprocess.Popen[bytes], log: ProcessOutput, smtp: int, imaps: int):
        self.proc, self.log, self.smtp, self.imaps = proc, log, smtp, imaps


@requires(tool("haproxy"))
class BehindHAProxy(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = Path(self.mktemp()).absolute()
        self.tmp.mkdir()
        ca = CertificateAuthority()
        self.context = client_context(ca.write_root(self.tmp))
        cert, key = ca.issue([HOST]).write(self.tmp, "mail")
        users = UserDB(self.tmp / "users", hasher=FAST)
        users.add(ALICE, PASSWORD)
        users.add(BOB, "bob-secret")
        # One Maildir tree, as several hosts mount it over NFS at <data_dir>/mail; the rest of
        # each data directory (the outgoing queue, locked by its process) is each host's own.
        self.mail = self.tmp / "mail"
        self.mail.mkdir()
        self.a = self.front_end("a", cert, key)
        self.b = self.front_end("b", cert, key)
        self.ports = {name: free_port() for name in ("smtp", "smtp_a", "imaps_a", "imaps_b")}
        self.haproxy()

    def front_end(self, name: str, cert: Path, key: Path) -> FrontEnd:
        cwd = self.tmp / name
        (cwd / "data").mkdir(parents=True)
        (cwd / "data" / "mail").symlink_to(self.mail)
        config = cwd / "mailhub.toml"
        config.write_text(
            CONFIG.format(data=cwd / "data", users=self.tmp / "users", cert=cert, key=key)
        )
        argv = [*TWISTD, "-n", "--pidfile=", "--logfile=-", "mailhub", "--config", str(config)]
        proc = subprocess.Popen(
            argv, cwd=cwd, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert proc.stdout is not None
        log = ProcessOutput(proc.stdout, cwd / "twistd.log")
        self.addCleanup(log.close)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        ports = []
        for kind in ("smtp", "imaps"):
            found = log.wait_for(rf"{kind} listening on 127\.0\.0\.1:(\d+)")
            if found is None:
                self.fail(f"front end {name} did not start:\n{log.read_text()}")
            ports.append(int(found.group(1)))
        if log.wait_for(r"mailhub started") is None:
            self.fail(f"front end {name} did not start:\n{log.read_text()}")
        return FrontEnd(proc, log, *ports)

    def haproxy(self) -> None:
        p, a, b = self.ports, self.a, self.b
        config = self.tmp / "haproxy.cfg"
        pidfile = self.tmp / "haproxy.pid"
        config.write_text(
            f"""
global
    maxconn 200

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    # A front end that refuses the connection (killed) is retried on the other.
    retries 3
    option redispatch

frontend smtp
    bind 127.0.0.1:{p["smtp"]}
    default_backend smtp
backend smtp
    balance roundrobin
    server a 127.0.0.1:{a.smtp} send-proxy-v2
    server b 127.0.0.1:{b.smtp} send-proxy

frontend smtp_a
    bind 127.0.0.1:{p["smtp_a"]}
    default_backend smtp_a
backend smtp_a
    server a 127.0.0.1:{a.smtp} send-proxy-v2

frontend imaps_a
    bind 127.0.0.1:{p["imaps_a"]}
    default_backend imaps_a
backend imaps_a
    server a 127.0.0.1:{a.imaps} send-proxy

frontend imaps_b
    bind 127.0.0.1:{p["imaps_b"]}
    default_backend imaps_b
backend imaps_b
    server b 127.0.0.1:{b.imaps} send-proxy-v2
"""
        )
        # -D: daemon; the command returns once the listening sockets are bound.
        done = subprocess.run(
            ["haproxy", "-D", "-f", str(config), "-p", str(pidfile)],
            capture_output=True,
            timeout=START_TIMEOUT,
        )
        self.assertEqual(done.returncode, 0, done.stderr.decode())
        pid = int(pidfile.read_text().split()[0])
        self.addCleanup(lambda: _kill(pid))

    # -- clients -------------------------------------------------------------------------------

    def smtp(self, frontend: str, source: str) -> smtplib.SMTP:
        return smtplib.SMTP(
            "127.0.0.1",
            self.ports[frontend],
            local_hostname="client.example",
            timeout=TIMEOUT,
            source_address=(source, 0),
        )

    def imaps(self, frontend: str, source: str) -> imaplib.IMAP4_SSL:
        context, port = self.context, self.ports[frontend]

        class Client(imaplib.IMAP4_SSL):
            def _create_socket(self, timeout: float | None = None) -> ssl.SSLSocket:
                sock = socket.create_connection(
                    ("127.0.0.1", port), TIMEOUT, source_address=(source, 0)
                )
                return context.wrap_socket(sock, server_hostname=HOST)

        return Client(HOST, port, ssl_context=context, timeout=TIMEOUT)

    def login(self, frontend: str, source: str, user: str, password: str) -> str:
        try:
            client = self.imaps(frontend, source)
        except (imaplib.IMAP4.error, OSError):
            return "refused"
        try:
            client.login(user, password)
        except imaplib.IMAP4.abort:
            return "refused"
        except imaplib.IMAP4.error:
            return "failed"
        finally:
            client.shutdown()
        return "ok"

    def inbox(self, user: str) -> list[bytes]:
        store = MailStore(self.mail, hostname=HOST)
        folder = store.mailbox(user).folder()
        return [folder.read_message(m.uid) for m in folder.sync().messages]

    # -- tests ---------------------------------------------------------------------------------

    def test_received_and_logs_name_the_client_as_haproxy_saw_it(self) -> None:
        for frontend in ("smtp_a", "smtp", "smtp"):  # A, then A and B in turn
            with self.smtp(frontend, "127.0.0.2") as client:
                client.sendmail("app@example.net", [ALICE], b"Subject: hello\r\n\r\nx\r\n")
        messages = self.inbox(ALICE)
        self.assertEqual(len(messages), 3)
        for message in messages:
            received = message.split(b"\r\n\r\n", 1)[0]
            self.assertIn(b"from client.example (unknown [127.0.0.2])", received)
        # v2 to A, v1 to B: both front ends logged the client, neither HAProxy's address
        for end in (self.a, self.b):
            accepted = end.log.wait_for(r"accepted queue_id=\w+ client=(\S+)")
            self.assertIsNotNone(accepted, end.log.read_text())
            assert accepted is not None
            self.assertEqual(accepted.group(1), "127.0.0.2")

    def test_login_throttle_counts_each_real_client(self) -> None:
        for _ in range(3):
            self.assertEqual(self.login("imaps_a", "127.0.0.2", BOB, "wrong"), "failed")
        # 127.0.0.2 has used its failures; 127.0.0.3, behind the same proxy, has not
        self.assertEqual(self.login("imaps_a", "127.0.0.2", ALICE, PASSWORD), "refused")
        self.assertEqual(self.login("imaps_a", "127.0.0.3", ALICE, PASSWORD), "ok")
        found = self.a.log.wait_for(r"IMAP \S+ failed from (\S+)")
        assert found is not None
        self.assertEqual(found.group(1), "127.0.0.2")

    def test_mail_through_a_is_pushed_to_idle_on_b(self) -> None:
        client = self.imaps("imaps_b", "127.0.0.2")
        client.login(ALICE, PASSWORD)
        client.select("INBOX")
        sock = client.socket()
        sock.sendall(b"i1 IDLE\r\n")
        self.assertTrue(client.readline().startswith(b"+"))
        with self.smtp("smtp_a", "127.0.0.3") as smtp:
            smtp.sendmail("app@example.net", [ALICE], b"Subject: via A\r\n\r\nx\r\n")
        # B learns of A's delivery through the store's change feed (inotify here; on NFS the
        # timed scan, [web] poll_interval): IDLE's untagged EXISTS is the event
        line = client.readline()
        self.assertRegex(line, rb"^\* 1 EXISTS")
        sock.sendall(b"DONE\r\n")
        while not (line := client.readline()).startswith(b"i1 "):
            self.assertTrue(line.startswith(b"* "), line)  # untagged updates (RECENT, FETCH)
        self.assertTrue(line.startswith(b"i1 OK"), line)
        client.logout()

    def test_a_front_end_killed_mid_load_loses_no_acknowledged_message(self) -> None:
        acknowledged: list[str] = []
        failed: list[str] = []
        halfway = threading.Event()

        def load() -> None:
            for i in range(60):
                subject = f"load {i}"
                try:
                    with self.smtp("smtp", "127.0.0.2") as client:
                        client.sendmail(
                            "app@example.net", [BOB], f"Subject: {subject}\r\n\r\nx\r\n".encode()
                        )
                except (smtplib.SMTPException, OSError):
                    failed.append(subject)
                else:
                    acknowledged.append(subject)
                if i == 20:
                    halfway.set()

        sender = threading.Thread(target=load)
        sender.start()
        self.assertTrue(halfway.wait(TIMEOUT * 2))
        self.a.proc.send_signal(signal.SIGKILL)
        self.a.proc.wait(TIMEOUT)
        sender.join(TIMEOUT * 4)
        self.assertFalse(sender.is_alive())
        stored = set()
        for message in self.inbox(BOB):
            head = message.split(b"\r\n\r\n", 1)[0]
            stored.add(head.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode())
        self.assertEqual(set(acknowledged) - stored, set())
        # both front ends took mail before the kill, and B went on alone after it
        for end in (self.a, self.b):
            self.assertIsNotNone(end.log.wait_for(r"accepted queue_id="), end.log.read_text())
        self.assertGreater(len(acknowledged), 40)
        self.assertIn("load 59", acknowledged)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
