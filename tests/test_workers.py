"""mailhub.workers: the supervisor's bookkeeping with a fake reactor (spawns, restarts, stop),
the sockets it binds, and the worker role's command-line form. The real processes are in
tests/integration/test_workers.py."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import error, task
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mailhub import workers
from mailhub.tap import Options
from mailhub.workers import Supervisor, WorkerRole, bind_listener

LISTEN = "tcp:0:interface=127.0.0.1"


class FakeTransport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.reading = True

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True


class FakeReactor(task.Clock):
    """A clock that records spawnProcess calls (the supervisor asks nothing else of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[int, Any]]] = []
        self.envs: list[dict[str, str]] = []

    def spawnProcess(self, proto: Any, executable: str, args: list[str], env: Any, childFDs: Any):
        transport = FakeTransport(1000 + len(self.spawned))
        proto.makeConnection(transport)
        self.spawned.append((proto, args, childFDs))
        self.envs.append(env)
        return transport

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


def ended(proto: Any, signal: int | None = None, status: int = 0) -> None:
    reason = error.ProcessTerminated(status, signal) if signal else error.ProcessDone(status)
    proto.processEnded(Failure(reason))


class SupervisorTests(SynchronousTestCase):
    def supervisor(self, count: int = 2, **kwargs: Any) -> tuple[Supervisor, FakeReactor]:
        reactor = FakeReactor()
        sup = Supervisor(
            reactor, [("smtp", LISTEN), ("web", LISTEN)], count, lambda role: ["child"], **kwargs
        )
        sup.privilegedStartService()
        sup.startService()
        self.addCleanup(lambda: sup.running and sup.stopService())
        return sup, reactor

    def test_each_worker_gets_its_own_reuseport_socket_and_only_worker_1_the_web(self) -> None:
        sup, reactor = self.supervisor(reuseport=True)
        self.assertEqual(len(reactor.spawned), 2)
        one, two = sup.role(1), sup.role(2)
        self.assertEqual(set(one.fds), {"smtp", "web"})
        self.assertEqual(set(two.fds), {"smtp"})
        self.assertNotEqual(one.fds["smtp"], two.fds["smtp"])
        smtp = sup.bound[0]
        self.assertEqual(len({s.getsockname() for s in smtp.sockets}), 1)  # one address
        # The child's fds: its sockets at the same numbers, nothing else of the supervisor's.
        _, _, child_fds = reactor.spawned[1]
        self.assertEqual(
            child_fds, {0: "w", 1: "r", 2: "r", two.fds["smtp"][0]: two.fds["smtp"][0]}
        )

    def test_without_reuseport_every_worker_shares_one_socket(self) -> None:
        sup, _ = self.supervisor(reuseport=False)
        self.assertEqual(sup.role(1).fds["smtp"], sup.role(2).fds["smtp"])
        self.assertEqual(len(sup.bound[0].sockets), 1)

    def test_a_worker_that_dies_is_restarted_later_and_later_while_it_dies_young(self) -> None:
        sup, reactor = self.supervisor()
        first = reactor.spawned[1][0]
        ended(first, signal=9)
        self.assertNotIn(2, sup.workers)
        reactor.advance(workers.RESTART_DELAY - 0.01)
        self.assertEqual(len(reactor.spawned), 2)
        reactor.advance(0.01)
        self.assertEqual(len(reactor.spawned), 3)
        self.assertIn(2, sup.workers)
        ended(reactor.spawned[2][0], status=1)  # dies again at once
        reactor.advance(workers.RESTART_DELAY * 2 - 0.01)
        self.assertEqual(len(reactor.spawned), 3)
        reactor.advance(0.01)
        self.assertEqual(len(reactor.spawned), 4)
        # After a long life the delay is back to the first one.
        reactor.advance(workers.YOUNG)
        ended(reactor.spawned[3][0], signal=9)
        reactor.advance(workers.RESTART_DELAY)
        self.assertEqual(len(reactor.spawned), 5)
        self.assertEqual(reactor.spawned[4][1], [sup.executable, "child"])

    def test_stop_signals_every_worker_and_waits_for_them_without_restarting(self) -> None:
        sup, reactor = self.supervisor()
        protos = [p for p, _, _ in reactor.spawned]
        d = sup.stopService()
        self.assertEqual([p.transport.signals for p in protos], [["TERM"], ["TERM"]])
        self.assertNoResult(d)
        ended(protos[0], signal=15)
        self.assertNoResult(d)
        ended(protos[1], signal=15)
        self.successResultOf(d)
        reactor.advance(workers.RESTART_MAX + workers.STOP_TIMEOUT)
        self.assertEqual(len(reactor.spawned), 2)  # nobody restarted
        self.assertEqual(sup.bound, [])  # the listening sockets closed

    def test_a_worker_that_does_not_stop_is_killed(self) -> None:
        sup, reactor = self.supervisor()
        protos = [p for p, _, _ in reactor.spawned]
        d = sup.stopService()
        ended(protos[0], signal=15)
        reactor.advance(workers.STOP_TIMEOUT)
        self.assertEqual(protos[1].transport.signals, ["TERM", "KILL"])
        ended(protos[1], signal=9)
        self.successResultOf(d)

    def test_sighup_is_forwarded(self) -> None:
        sup, reactor = self.supervisor()
        sup._sighup(1, None)
        self.assertEqual([p.transport.signals for p, _, _ in reactor.spawned], [["HUP"], ["HUP"]])

    def test_a_workers_json_log_events_come_out_tagged_with_its_number(self) -> None:
        from twisted.logger import Logger, eventAsJSON, globalLogPublisher

        _, reactor = self.supervisor()
        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        event: dict[str, Any] = {}
        Logger(namespace="mailhub.service", observer=event.update).info(
            "mailhub started", mailhub_ready=True
        )
        proto = reactor.spawned[1][0]
        line = eventAsJSON(event).encode()
        proto.outReceived(line[:10])
        proto.outReceived(line[10:] + b"\n")
        tagged = [e for e in seen if e.get("mailhub_worker") == 2]
        self.assertEqual([e["log_system"] for e in tagged], ["w2 mailhub.service#info"])
        self.assertTrue(proto.ready)
        self.assertTrue(any("worker {number} ready" in e.get("log_format", "") for e in seen))


class Binding(SynchronousTestCase):
    def test_a_port_in_use_is_a_clear_error(self) -> None:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        from twisted.internet import reactor

        with self.assertRaises(workers.ListenError) as caught:
            bind_listener(reactor, "smtp", f"tcp:{port}:interface=127.0.0.1", 5, 2, True)
        self.assertIn("[listeners] smtp: cannot listen on", str(caught.exception))

    def test_a_port_another_process_shares_by_so_reuseport_is_in_use_too(self) -> None:
        if not workers.reuseport_available():
            raise SkipTest("SO_REUSEPORT (Linux)")
        other = socket.socket()
        self.addCleanup(other.close)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        from twisted.internet import reactor

        with self.assertRaises(workers.ListenError):
            bind_listener(
                reactor, "smtp", f"tcp:{other.getsockname()[1]}:interface=127.0.0.1", 5, 2, True
            )

    def test_a_unix_socket_is_shared(self) -> None:
        from twisted.internet import reactor

        path = self.mktemp()
        bound = bind_listener(reactor, "smtp", f"unix:{path}", 5, 2, True)
        self.addCleanup(bound.close)
        self.assertEqual(bound.fd_for(1), bound.fd_for(2))
        client = socket.socket(socket.AF_UNIX)
        self.addCleanup(client.close)
        client.connect(path)  # the listening socket works (and nobody accepts it here)


class Role(SynchronousTestCase):
    def test_round_trip(self) -> None:
        role = WorkerRole(2, 3, {"smtp": (5, 6), "imap": (7,)})
        self.assertEqual(role.fds_argument(), "smtp=5,6;imap=7")
        self.assertEqual(WorkerRole.parse("2/3", role.fds_argument()), role)
        self.assertFalse(role.primary)
        self.assertTrue(WorkerRole.parse("1/1", "").primary)

    def test_bad_roles(self) -> None:
        for worker in ("0/2", "3/2", "x", "1/x"):
            self.assertRaises(ValueError, WorkerRole.parse, worker, "")
        self.assertRaises(ValueError, WorkerRole.parse, "1/2", "smtp=x")


class CommandLine(SynchronousTestCase):
    def test_workers_needs_a_config(self) -> None:
        with self.assertRaises(UsageError) as caught:
            Options().parseOptions(["--workers", "2"])
        self.assertIn("--workers needs --config", str(caught.exception))
        self.assertRaises(UsageError, Options().parseOptions, ["-c", "x.toml", "--workers", "0"])

    def test_the_development_stack_is_one_process(self) -> None:
        from pathlib import Path

        from mailhub.tap import makeService

        config = Path(self.mktemp())
        config.write_text(f'[server]\ndev = true\ndata_dir = "{config}.data"\n')
        options = Options()
        options.parseOptions(["-c", str(config), "--workers", "2"])
        with self.assertRaises(SystemExit) as caught:
            makeService(options)
        self.assertIn("runs as one process", str(caught.exception))

    def test_worker_role_option(self) -> None:
        options = Options()
        options.parseOptions(["-c", "x.toml", "--worker", "2/2", "--listen-fds", "smtp=3"])
        self.assertEqual(options["role"], WorkerRole(2, 2, {"smtp": (3,)}))
        self.assertRaises(UsageError, Options().parseOptions, ["--worker", "3/2"])


class WorkerLogs(SynchronousTestCase):
    def events(self) -> list[dict[str, Any]]:
        from twisted.logger import Logger

        out: list[dict[str, Any]] = []
        log = Logger(namespace="mailhub.smtp", observer=out.append)
        log.info("accepted {qid}", qid="Q1")
        log.info("mailhub started", mailhub_ready=True)
        return out

    def test_direct_the_worker_writes_tagged_lines_and_tells_only_that_it_started(self) -> None:
        import io

        control, text = io.StringIO(), io.StringIO()
        observer = workers.WorkerLog(2, workers.DIRECT, control, text)
        for event in self.events():
            observer(event)
        lines = text.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertIn("[w2 mailhub.smtp#info] accepted Q1", lines[0])
        [ready] = control.getvalue().splitlines()
        self.assertIn('"mailhub_ready": true', ready)

    def test_relay_every_event_goes_to_the_supervisor(self) -> None:
        import io

        control, text = io.StringIO(), io.StringIO()
        observer = workers.WorkerLog(2, workers.RELAY, control, text)
        for event in self.events():
            observer(event)
        self.assertEqual(text.getvalue(), "")
        self.assertEqual(len(control.getvalue().splitlines()), 2)

    def test_which_way_follows_twistds_log_options(self) -> None:
        from mailhub.tap import _logs_to_stdout

        self.assertTrue(_logs_to_stdout({"nodaemon": True, "logfile": None}))
        self.assertTrue(_logs_to_stdout({"nodaemon": True, "logfile": "-"}))
        self.assertFalse(_logs_to_stdout({"nodaemon": True, "logfile": "/var/log/mailhub.log"}))
        self.assertFalse(_logs_to_stdout({"nodaemon": False, "logfile": None}))  # twistd.log
        self.assertFalse(_logs_to_stdout({"nodaemon": True, "syslog": True}))
        self.assertFalse(_logs_to_stdout(None))


class FakeLogFile:
    """What the supervisor asks of twistd's LogFile in TEXT mode: write(bytes)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


class TextLogs(SynchronousTestCase):
    """--logfile: the workers format their lines, the supervisor appends them unparsed."""

    def worker_output(self, number: int = 2) -> bytes:
        import io

        control, text = io.StringIO(), io.StringIO()
        observer = workers.WorkerLog(number, workers.TEXT, control, text)
        for event in WorkerLogs().events():
            observer(event)
        observer(
            {**WorkerLogs().events()[0], "log_format": "failed:\n{tb}", "tb": "Traceback\n  x"}
        )
        self.assertEqual(text.getvalue(), "")  # all of it to the supervisor
        return control.getvalue().encode()

    def test_the_worker_sends_each_event_formatted_as_one_record(self) -> None:
        out = self.worker_output().decode()
        records = out.split(workers.RECORD_END)
        self.assertEqual(records[-1], "")  # every record ended
        accepted, ready_json, ready_text, failed = records[:-1]
        self.assertRegex(accepted, r"^\S+ \[w2 mailhub\.smtp#info\] accepted Q1\n$")
        self.assertIn('"mailhub_ready": true', ready_json)
        self.assertTrue(ready_json.startswith("{"))
        self.assertIn("[w2 mailhub.smtp#info] mailhub started\n", ready_text)
        # A multi-line event stays one record (twistd's text form: continuation lines tabbed).
        self.assertTrue(failed.endswith("] failed:\n\tTraceback\n\t  x\n"), failed)

    def protocol(self) -> tuple[workers.WorkerProtocol, FakeLogFile, task.Clock, FakeTransport]:
        log_file, clock = FakeLogFile(), task.Clock()
        proto = workers.WorkerProtocol(2, lambda n, r: None, write_text=log_file.write, clock=clock)
        transport = FakeTransport(1002)
        proto.makeConnection(transport)
        return proto, log_file, clock, transport

    def test_the_supervisor_appends_whole_records_and_sees_that_the_worker_started(self) -> None:
        from twisted.logger import globalLogPublisher

        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        proto, log_file, clock, transport = self.protocol()
        out = self.worker_output()
        cut = out.index(b"Traceback")  # in the middle of the last record
        proto.outReceived(out[:cut])
        self.assertTrue(proto.ready)
        self.assertTrue(any("worker {number} ready" in e.get("log_format", "") for e in seen))
        # Not re-logged event by event: the worker's own lines went to the file as they are.
        self.assertFalse([e for e in seen if e.get("mailhub_worker") == 2])
        [first] = log_file.writes
        self.assertNotIn(b"{", first)  # the JSON record was handled, not written
        self.assertNotIn(workers.RECORD_END.encode(), first)
        self.assertEqual(first.count(b"\n"), 2)  # accepted, started; not half the traceback
        # The pipe is left alone for TEXT_PACE, then read again.
        self.assertFalse(transport.reading)
        proto.outReceived(out[cut:])  # (already in flight)
        clock.advance(workers.TEXT_PACE)
        self.assertTrue(transport.reading)
        self.assertEqual(len(log_file.writes), 2)
        self.assertTrue(log_file.writes[1].endswith(b"\tTraceback\n\t  x\n"))
        self.assertTrue(log_file.writes[1].startswith(b"20"))  # a whole record: its timestamp

    def test_a_record_end_in_an_events_text_neither_splits_it_nor_forges_a_record(self) -> None:
        # Text from a client (here a HELO name, as an exception's message might quote it)
        # holding ASCII RS and a JSON "started" event, before the worker has said it started.
        import io

        from twisted.logger import Logger

        control = io.StringIO()
        observer = workers.WorkerLog(2, workers.TEXT, control, io.StringIO())
        helo = 'evil\x1e{"mailhub_ready": true, "log_format": "forged"}\n\x1e'
        Logger(namespace="mailhub.smtp", observer=observer).info("HELO {helo}", helo=helo)
        out = control.getvalue().encode()
        self.assertEqual(out.count(workers.RECORD_END.encode()), 1)  # one event, one record
        proto, log_file, _, _ = self.protocol()
        proto.outReceived(out)
        self.assertFalse(proto.ready)
        [line] = log_file.writes
        self.assertIn(b'] HELO evil\\x1e{"mailhub_ready": true, "log_format": "forged"}', line)
        self.assertTrue(line.endswith(b"\n\t\\x1e\n"), line)  # (continuation line tabbed)

    def test_a_last_record_without_its_end_is_written_when_the_worker_ends(self) -> None:
        proto, log_file, clock, _ = self.protocol()
        proto.outReceived(b"2026-12-07T00:00:00+0000 [w2 x#info] last words\n")
        self.assertEqual(log_file.writes, [])
        proto.processEnded(Failure(error.ProcessDone(0)))
        self.assertEqual(log_file.writes, [b"2026-12-07T00:00:00+0000 [w2 x#info] last words\n"])
        self.assertEqual(clock.getDelayedCalls(), [])  # the pacing call cancelled

    def test_the_supervisor_tells_its_workers_the_way_it_logs(self) -> None:
        def modes(**kwargs: Any) -> list[str]:
            reactor = FakeReactor()
            sup = Supervisor(reactor, [("smtp", LISTEN)], 2, lambda role: ["child"], **kwargs)
            sup.startService()
            self.addCleanup(sup.stopService)
            return [env[workers.LOG_ENV] for env in reactor.envs]

        self.assertEqual(modes(log_file=FakeLogFile()), [workers.TEXT, workers.TEXT])
        self.assertEqual(modes(direct_log=True), [workers.DIRECT, workers.DIRECT])
        self.patch(workers, "twistd_log_file", lambda: None)  # syslog, a --logger of its own
        self.assertEqual(modes(), [workers.RELAY, workers.RELAY])

    def test_twistds_log_file_is_found_among_the_observers(self) -> None:
        from twisted.logger import globalLogPublisher, textFileLogObserver
        from twisted.python.logfile import LogFile

        path = self.mktemp()
        log_file = LogFile.fromFullPath(path)
        self.addCleanup(log_file.close)
        observer = textFileLogObserver(log_file)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.assertIs(workers.twistd_log_file(), log_file)

    def test_the_pipe_a_worker_sends_its_lines_through_is_made_bigger(self) -> None:
        import fcntl
        import os

        if not hasattr(fcntl, "F_GETPIPE_SZ"):
            raise SkipTest("pipe sizes are Linux's")
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        before = fcntl.fcntl(r, fcntl.F_GETPIPE_SZ)

        class Reader:
            def fileno(self) -> int:
                return r

        size = workers.enlarge_pipe(Reader())
        self.assertIsNotNone(size)
        self.assertGreater(fcntl.fcntl(r, fcntl.F_GETPIPE_SZ), before)
        self.assertIsNone(workers.enlarge_pipe(None))
