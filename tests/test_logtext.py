"""twistd's log lines through mailhub.logtext: the same text as Twisted's formatter, and the
service hands twistd that observer."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from twisted.application.service import Application
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogLevel,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mailhub import tap
from mailhub.logtext import ClassicLogText, faster

# A zone with daylight saving time (POSIX rule: no tz database needed), and its 2026 switch.
ZONE = "EST5EDT,M3.2.0,M11.1.0"
DST_STARTS = 1772953200.0  # 2026-03-08 07:00:00 UTC: 02:00 EST becomes 03:00 EDT


class Unprintable:
    def __str__(self) -> str:
        raise ValueError("no")


def twisted_text(event: dict[str, Any]) -> str | None:
    return formatEventAsClassicLogText(event, formatTime=lambda t: formatTime(t, timeFormatRFC3339))


def events(when: float) -> list[dict[str, Any]]:
    """Events of every shape twistd's file sees, at ``when``."""
    base = {"log_time": when, "log_namespace": "mailhub.smtp", "log_level": LogLevel.info}
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        failure = Failure()
    return [
        {**base, "log_format": "{log_text}", "log_text": "accepted queue_id=Q1 client=127.0.0.1"},
        {**base, "log_format": "no fields here"},
        {**base, "log_format": "two\nlines"},
        {**base, "log_format": "{log_text}", "log_text": "first\nsecond"},
        {**base, "log_format": "{n} items for {who!r}", "n": 3, "who": "x"},
        {**base, "log_format": "{{braces}} escaped"},
        {**base, "log_format": "{missing}"},
        {**base, "log_format": "{log_text}", "log_text": 42},
        {**base, "log_format": "{log_text}"},
        {**base, "log_format": ""},
        {**base, "log_format": None},
        {**base},
        {**base, "log_format": "it broke", "log_failure": failure},
        {**base, "log_format": "plain", "log_system": "w1 mailhub.smtp#info"},
        {**base, "log_format": "plain", "log_system": Unprintable()},
        {**base, "log_format": "plain", "log_system": "a\nb"},
        {"log_time": when, "log_format": "no namespace, no level"},
        {"log_format": "no time"},
        {
            **base,
            "log_format": "flattened {x}",
            "log_flattened": {"x!:": "1", "x": 1},
        },
    ]


class SameText(SynchronousTestCase):
    def setUp(self) -> None:
        old = os.environ.get("TZ")

        def restore() -> None:
            if old is None:
                os.environ.pop("TZ", None)
            else:
                os.environ["TZ"] = old
            time.tzset()

        self.addCleanup(restore)

    def in_zone(self, zone: str) -> None:
        os.environ["TZ"] = zone
        time.tzset()

    def test_every_kind_of_event_reads_as_twisteds(self) -> None:
        for zone in ("UTC0", ZONE):
            self.in_zone(zone)
            fmt = ClassicLogText()
            for when in (1796605557.0, 1796605557.25, 1796605557.9999, 1796605558.5):
                for event in events(when):
                    self.assertEqual(fmt(event), twisted_text(event), (zone, when, event))

    def test_the_time_text_follows_seconds_zones_and_rounding(self) -> None:
        # The kept time text is used within its second only: across a DST switch, at the
        # rounding edge (datetime keeps microseconds, so .9999996 is the next second), back
        # in time, and before 1970.
        self.in_zone(ZONE)
        fmt = ClassicLogText()
        times = [
            DST_STARTS - 2.5,
            DST_STARTS - 1.0000001,
            DST_STARTS - 0.5,
            DST_STARTS - 0.0000004,  # rounds up to the switch itself
            DST_STARTS - 0.3,  # back in the earlier second after the edge
            DST_STARTS,
            DST_STARTS + 0.7,
            DST_STARTS + 0.9999996,
            DST_STARTS + 1.2,
            DST_STARTS - 3600.0,
            0.5,
            -0.5,
            -1.5,
        ]
        seen = set()
        for when in times:
            event = {"log_time": when, "log_format": "x", "log_namespace": "n"}
            line = fmt(event)
            self.assertEqual(line, twisted_text(event), when)
            assert line is not None
            seen.add(line.split(" ")[0])
        self.assertIn("2026-03-08T01:59:59-0500", seen)
        self.assertIn("2026-03-08T03:00:00-0400", seen)  # the switch, reached by rounding
        self.assertIn("2026-03-08T03:00:01-0400", seen)

    def test_faster_swaps_only_a_file_observers_formatter(self) -> None:
        written: list[str] = []

        class Out:
            def write(self, text: str) -> None:
                written.append(text)

            def flush(self) -> None:
                pass

        observer = FileLogObserver(Out(), twisted_text)
        self.assertIs(faster(observer), observer)
        self.assertIsInstance(observer.formatEvent, ClassicLogText)
        event = events(1796605557.5)[0]
        observer(event)
        self.assertEqual(written, [twisted_text(event)])
        other = written.append
        self.assertIs(faster(other), other)


class TwistdGetsIt(SynchronousTestCase):
    def options(self, *argv: str, twistd: dict[str, Any] | None) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(argv))
        if twistd is not None:
            options.parent = twistd  # what twistd's ServerOptions gives its subcommand
        return options

    def test_the_service_hands_twistd_the_observer(self) -> None:
        # twistd logs through its Application's ILogObserver when it has one (AppLogger.start),
        # and puts the plugin's service under the Application before it starts logging.
        logfile = Path(self.mktemp()).absolute()
        twistd = {"logfile": str(logfile), "nodaemon": True, "syslog": False, "logger": None}
        self.patch(tap, "freeze_startup_heap", lambda: None)
        data = Path(self.mktemp()).absolute()
        service = tap.makeService(self.options("--data", str(data), twistd=twistd))
        application = Application("mailhub")
        service.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertIsInstance(observer, FileLogObserver)
        self.assertIsInstance(observer.formatEvent, ClassicLogText)
        event = events(1796605557.5)[0]
        observer(event)
        observer._outFile.close()  # twistd's LogFile, opened where --logfile says
        self.assertEqual(logfile.read_text(), twisted_text(event))

    def test_twistds_own_choices_stay(self) -> None:
        # syslog, --logger (the workers'), or no twistd at all (tests): twistd decides.
        self.patch(tap, "freeze_startup_heap", lambda: None)
        for twistd in (
            None,
            {"logfile": None, "nodaemon": True, "syslog": True, "logger": None, "prefix": "m"},
            {"logfile": None, "nodaemon": True, "syslog": False, "logger": "x.y"},
        ):
            data = Path(self.mktemp()).absolute()
            service = tap.makeService(self.options("--data", str(data), twistd=twistd))
            self.assertIsNone(service.twistd_log_observer)
            application = Application("mailhub")
            service.setServiceParent(application)
            self.assertIsNone(application.getComponent(ILogObserver))
