"""``mailhub sendmail``: the command line, the message it builds, and (in a real subprocess
against a running server) each flag, the exit codes, and the pickup directory when the server
is down."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from pathlib import Path

from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailhub import sendmail
from mailhub.config import dev_config
from mailhub.pickup import pickup_dir
from mailhub.sendmail import Exit, Options, Sender, parse_args, read_message
from mailhub.testing import MailhubTestServer
from tests.support.twistd import environment

MESSAGE = b"Subject: hello\nTo: bob@example.test\n\nline one\n.\nafter the dot\n"


class CommandLine(SynchronousTestCase):
    def test_flags(self) -> None:
        o = parse_args(["-t", "-i", "-f", "app@example.test", "-F", "The App", "x@example.test"])
        self.assertEqual(
            (o.from_headers, o.ignore_dots, o.sender, o.fullname, o.recipients),
            (True, True, "app@example.test", "The App", ["x@example.test"]),
        )

    def test_attached_arguments(self) -> None:
        o = parse_args(["-fapp@example.test", "-FThe App", "-oi", "-bm", "x@example.test"])
        self.assertEqual((o.sender, o.fullname, o.ignore_dots, o.mode), (
            "app@example.test", "The App", True, "m"))  # fmt: skip

    def test_clustered_flags(self) -> None:
        # "sendmail -ti" is common in scripts (getopt clusters flags without arguments).
        o = parse_args(["-ti"])
        self.assertEqual((o.from_headers, o.ignore_dots), (True, True))

    def test_ignored_flags(self) -> None:
        o = parse_args(["-oem", "-odi", "-U", "-v", "-N", "never", "-B8BITMIME", "-oQ/x", "a"])
        self.assertEqual((o.recipients, o.ignore_dots, o.mode), (["a"], False, "m"))

    def test_bs_and_double_dash(self) -> None:
        self.assertEqual(parse_args(["-bs"]).mode, "s")
        self.assertEqual(parse_args(["--", "-a@example.test"]).recipients, ["-a@example.test"])

    def test_usage_errors(self) -> None:
        for argv in (["-Z"], ["-f"], ["-bp"], ["-bd"], ["-tZ"]):
            with self.subTest(argv=argv):
                e = self.assertRaises(Exit, parse_args, argv)
                self.assertEqual(e.code, sendmail.EX_USAGE)


class Message(SynchronousTestCase):
    def sender(self, **options: object) -> Sender:
        return Sender(Options(**options), dev_config("/nonexistent", hostname="host.test"))  # type: ignore[arg-type]

    def test_lone_dot_ends_input_without_i(self) -> None:
        self.assertEqual(read_message(io.BytesIO(MESSAGE), False), MESSAGE.split(b".\n")[0])
        self.assertEqual(read_message(io.BytesIO(MESSAGE), True), MESSAGE)

    def test_t_reads_to_cc_bcc_and_removes_bcc(self) -> None:
        raw = (
            b"To: A <a@example.test>, b@example.test\nCc: c@example.test\n"
            b"Bcc: hidden@example.test,\n\tother@example.test\nSubject: s\n\nbody\n"
        )
        _, rcpts, message = self.sender(from_headers=True, recipients=["d"]).prepare(raw)
        self.assertEqual(rcpts, [
            "d@host.test", "a@example.test", "b@example.test", "c@example.test",
            "hidden@example.test", "other@example.test"])  # fmt: skip
        self.assertNotIn(b"Bcc", message)
        self.assertNotIn(b"other@", message)
        self.assertIn(b"To: A <a@example.test>, b@example.test\r\n", message)
        self.assertTrue(message.endswith(b"\r\n\r\nbody\r\n"))

    def test_adds_from_date_message_id_when_missing(self) -> None:
        sender, _, message = self.sender(
            sender="app@example.test", fullname="The App", recipients=["x@example.test"]
        ).prepare(b"Subject: s\n\nbody\n")
        self.assertEqual(sender, "app@example.test")
        self.assertIn(b"From: The App <app@example.test>\r\n", message)
        self.assertIn(b"\r\nDate: ", message)
        self.assertIn(b"\r\nMessage-ID: <", message)
        kept = self.sender(recipients=["x@e.test"]).prepare(b"From: me@e.test\n\nb\n")[2]
        self.assertEqual(kept.count(b"From:"), 1)

    def test_unqualified_names_get_the_hostname(self) -> None:
        sender, rcpts, _ = self.sender(recipients=["root"]).prepare(b"\nbody\n")
        self.assertEqual(rcpts, ["root@host.test"])
        self.assertTrue(sender.endswith("@host.test"))

    def test_null_sender(self) -> None:
        self.assertEqual(self.sender(sender="<>", recipients=["a"]).prepare(b"x\n")[0], "")

    def test_a_body_without_header(self) -> None:
        message = self.sender(recipients=["a"]).prepare(b"just text\n")[2]
        self.assertTrue(message.endswith(b"\r\n\r\njust text\r\n"))

    def test_bad_input(self) -> None:
        cases = [
            ({"recipients": ["a"]}, b"Subject: \x00\n\nx", sendmail.EX_DATAERR),
            ({"recipients": ["a@b@c"]}, b"x", sendmail.EX_DATAERR),
            ({"recipients": ["a b@c"]}, b"x", sendmail.EX_DATAERR),
            ({"from_headers": True}, b"Subject: no recipients\n\nx", sendmail.EX_USAGE),
            ({}, b"x", sendmail.EX_USAGE),
        ]
        for options, raw, code in cases:
            with self.subTest(options=options, raw=raw):
                e = self.assertRaises(Exit, self.sender(**options).prepare, raw)
                self.assertEqual(e.code, code)


# --- the real command against a real server ---------------------------------------------------


def closed_port() -> int:
    """A port nothing listens on (bound by us, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def write_config(directory: Path, data_dir: Path, extra: str = "") -> Path:
    path = directory / "sendmail.toml"
    path.write_text(
        f'[server]\ndev = true\nhostname = "host.test"\ndata_dir = "{data_dir}"\n'
        f"[listeners]\nsmtp = []\n{extra}"
    )
    return path


class Run:
    def __init__(self, code: int, out: bytes, err: bytes) -> None:
        self.code, self.out, self.err = code, out, err


def run(config: Path | None, args: list[str], stdin: bytes) -> defer.Deferred[Run]:
    """The command in a subprocess (off the reactor thread, which serves the server)."""

    def call() -> Run:
        env = environment()
        env.pop(sendmail.CONFIG_ENV, None)
        argv = [sys.executable, "-m", "mailhub.sendmail"]
        if config is not None:
            argv += ["-C", str(config)]
        p = subprocess.run(argv + args, input=stdin, capture_output=True, env=env, timeout=60)
        return Run(p.returncode, p.stdout, p.stderr)

    return threads.deferToThread(call)


def pickup_files(data_dir: Path) -> list[str]:
    root = pickup_dir(data_dir)
    return [f"{d}/{n}" for d in ("new", "cur") if (root / d).is_dir() for n in os.listdir(root / d)]


class AgainstServer(TestCase):
    timeout = 120

    async def hub(self, **kwargs: object) -> tuple[MailhubTestServer, Path]:
        hub = await MailhubTestServer.started(self, services=["smtp"], **kwargs)
        return hub, write_config(hub.directory, hub.config.data_dir)

    async def test_bm_with_recipients_on_the_command_line(self) -> None:
        hub, config = await self.hub()
        # -bm and the flags apps add that mean nothing here (-oem, -odi, -U) are accepted.
        flags = ["-bm", "-oem", "-odi", "-U", "-f", "app@example.test", "-F", "The App"]
        r = await run(config, [*flags, "bob@example.test"],
                      b"Subject: one\n\nhello\n")  # fmt: skip
        self.assertEqual((r.code, r.err), (0, b""))
        m = await hub.wait_for_message(to="bob@example.test", timeout=30)
        self.assertEqual(m.subject, "one")
        self.assertEqual(m.message["Return-Path"], "<app@example.test>")
        self.assertEqual(m.message["From"], "The App <app@example.test>")
        self.assertEqual(pickup_files(hub.config.data_dir), [])  # it went over SMTP

    async def test_t_with_bcc(self) -> None:
        hub, config = await self.hub()
        raw = b"To: to@example.test\nBcc: hidden@example.test\nSubject: bcc\n\nx\n"
        r = await run(config, ["-t", "-i"], raw)
        self.assertEqual(r.code, 0, r.err)
        hidden = await hub.wait_for_message(to="hidden@example.test", timeout=30)
        seen = await hub.wait_for_message(to="to@example.test", timeout=30)
        for m in (hidden, seen):
            self.assertNotIn(b"hidden@", m.raw.split(b"\r\n\r\n", 1)[0])
            self.assertIsNone(m.message["Bcc"])

    async def test_lone_dot(self) -> None:
        hub, config = await self.hub()
        r = await run(config, ["cut@example.test"], MESSAGE)
        self.assertEqual(r.code, 0, r.err)
        cut = await hub.wait_for_message(to="cut@example.test", timeout=30)
        self.assertEqual(cut.text.splitlines(), ["line one"])
        r = await run(config, ["-oi", "whole@example.test"], MESSAGE)
        self.assertEqual(r.code, 0, r.err)
        whole = await hub.wait_for_message(to="whole@example.test", timeout=30)
        self.assertEqual(whole.text.splitlines(), ["line one", ".", "after the dot"])

    async def test_mailhub_sendmail_wiring(self) -> None:
        hub, config = await self.hub()

        def call() -> int:
            argv = [sys.executable, "-c", "from mailhub.cli import main; main()", "sendmail",
                    "-C", str(config), "-t"]  # fmt: skip
            env = environment()
            raw = b"To: via-cli@example.test\nSubject: cli\n\nx\n"
            return subprocess.run(argv, input=raw, env=env, timeout=60).returncode

        self.assertEqual(await threads.deferToThread(call), 0)
        m = await hub.wait_for_message(to="via-cli@example.test", timeout=30)
        self.assertEqual(m.subject, "cli")

    async def test_refusals_give_sysexits_codes(self) -> None:
        hub, config = await self.hub(faults=[
            {"stage": "rcpt", "action": "reply", "code": 550, "enhanced": "5.1.1",
             "recipient": "nobody@*"},
            {"stage": "rcpt", "action": "reply", "code": 451, "recipient": "later@*"},
            {"stage": "rcpt", "action": "reply", "code": 554, "enhanced": "5.7.1",
             "recipient": "denied@*"},
            {"stage": "data", "action": "reply", "code": 552, "enhanced": "5.3.4",
             "recipient": "big@*"},
        ])  # fmt: skip
        for who, code in (
            ("nobody", sendmail.EX_NOUSER),
            ("later", sendmail.EX_TEMPFAIL),
            ("denied", sendmail.EX_NOPERM),
            ("big", sendmail.EX_DATAERR),
        ):
            r = await run(config, [f"{who}@example.test"], b"Subject: x\n\nx\n")
            self.assertEqual(r.code, code, (who, r.err))
            self.assertIn(b"sendmail: ", r.err)
        self.assertEqual(pickup_files(hub.config.data_dir), [])  # refusals are not queued

    async def test_garbage_input(self) -> None:
        hub, config = await self.hub()
        cases = [
            (["-Z"], b"x", sendmail.EX_USAGE),
            (["-t"], b"\xff\xfe binary junk \x01\x02\n\n\x00\x00", sendmail.EX_DATAERR),
            (["-t"], b"\xff\xfe binary junk \x01\x02\n", sendmail.EX_USAGE),
            (["a@@b"], b"x", sendmail.EX_DATAERR),
        ]
        for args, stdin, code in cases:
            r = await run(config, args, stdin)
            self.assertEqual(r.code, code, (args, r.err))
        bad = hub.directory / "bad.toml"
        bad.write_text("[server\n")
        r = await run(bad, ["a"], b"x")
        self.assertEqual(r.code, sendmail.EX_CONFIG, r.err)
        self.assertEqual(hub.messages(), [])

    async def test_bs_relayed_to_the_server(self) -> None:
        hub, config = await self.hub()
        session = (
            b"EHLO app\r\nMAIL FROM:<app@example.test>\r\nRCPT TO:<bs@example.test>\r\n"
            b"DATA\r\nSubject: bs\r\n\r\nhi\r\n.\r\nQUIT\r\n"
        )
        r = await run(config, ["-bs"], session)
        self.assertEqual(r.code, 0, r.err)
        self.assertIn(b"\r\n221", r.out)
        m = await hub.wait_for_message(to="bs@example.test", timeout=30)
        self.assertEqual(m.subject, "bs")
        self.assertEqual(pickup_files(hub.config.data_dir), [])


class ServerDown(TestCase):
    timeout = 120

    def down_config(self, hub: MailhubTestServer) -> Path:
        # The address a killed server left behind: nothing answers there any more.
        extra = f'[sendmail]\nserver = "127.0.0.1:{closed_port()}"\n'
        return write_config(hub.directory, hub.config.data_dir, extra)

    async def test_pickup_then_delivered_once_at_start(self) -> None:
        hub = MailhubTestServer(Path(self.mktemp()), services=["smtp"])
        config = self.down_config(hub)
        r = await run(config, ["-t"], b"To: later@example.test\nSubject: waited\n\nx\n")
        self.assertEqual((r.code, r.err), (0, b""))
        self.assertEqual(len(pickup_files(hub.config.data_dir)), 1)
        hub.start()
        self.addCleanup(hub.stop)
        m = await hub.wait_for_message(to="later@example.test", timeout=30)
        self.assertEqual(m.subject, "waited")
        self.assertIn(b"(mailhub sendmail, from userid ", m.raw)
        assert hub.service is not None and hub.service.pickup is not None
        await hub.service.pickup.collect()  # another look finds nothing to hand over again
        self.assertEqual(pickup_files(hub.config.data_dir), [])
        self.assertEqual(len(hub.messages("later@example.test")), 1)
        self.assertEqual(hub.service.pickup.collected, 1)

    async def test_pickup_while_the_server_runs(self) -> None:
        # The server runs but sendmail cannot reach it (a stale address): the running server
        # collects the dropped file (inotify, or the timer).
        hub = await MailhubTestServer.started(self, services=["smtp"])
        r = await run(self.down_config(hub), ["running@example.test"], b"Subject: r\n\nx\n")
        self.assertEqual(r.code, 0, r.err)
        m = await hub.wait_for_message(to="running@example.test", timeout=30)
        self.assertEqual(m.subject, "r")

    async def test_bs_minimal_session_into_pickup(self) -> None:
        hub = MailhubTestServer(Path(self.mktemp()), services=["smtp"])
        session = (
            b"HELO app\r\nMAIL FROM:<app@example.test>\r\nRCPT TO:<bsdown@example.test>\r\n"
            b"DATA\r\nSubject: bs down\r\n\r\n..stuffed\r\n.\r\nQUIT\r\n"
        )
        r = await run(self.down_config(hub), ["-bs"], session)
        self.assertEqual(r.code, 0, r.err)
        self.assertTrue(r.out.startswith(b"220 "), r.out)
        self.assertIn(b"250 2.0.0 Ok: left in the pickup directory", r.out)
        self.assertEqual(len(pickup_files(hub.config.data_dir)), 1)
        hub.start()
        self.addCleanup(hub.stop)
        m = await hub.wait_for_message(to="bsdown@example.test", timeout=30)
        self.assertEqual(m.subject, "bs down")
        self.assertEqual(m.text.splitlines(), [".stuffed"])

    async def test_unwritable_pickup_directory(self) -> None:
        if os.getuid() == 0:
            # root writes anywhere: make the data directory a file instead.
            hub = MailhubTestServer(Path(self.mktemp()), services=["smtp"])
            hub.config.data_dir.parent.mkdir(parents=True, exist_ok=True)
            hub.config.data_dir.write_text("not a directory")
        else:
            hub = MailhubTestServer(Path(self.mktemp()), services=["smtp"])
            hub.config.data_dir.mkdir(parents=True)
            hub.config.data_dir.chmod(0o500)
            self.addCleanup(hub.config.data_dir.chmod, 0o700)
        r = await run(self.down_config(hub), ["a@example.test"], b"x\n")
        self.assertEqual(r.code, sendmail.EX_CANTCREAT, r.err)
