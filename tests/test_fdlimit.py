"""The file-descriptor limit raised at start to what the listeners may hold (mailhub.fdlimit)."""

from __future__ import annotations

import dataclasses
import resource

from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from mailhub.config import ListenersConfig, dev_config
from mailhub.fdlimit import RESERVE, descriptors_needed, raise_nofile_limit


class Limits:
    """getrlimit/setrlimit over a pretend (soft, hard) pair."""

    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.now = (soft, hard)
        self.refuse = refuse
        self.set: list[tuple[int, int]] = []

    def get(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.now

    def put(self, which: int, value: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        if self.refuse:
            raise ValueError("not allowed")
        self.set.append(value)
        self.now = value


def config(max_connections: int, imaps: int = 1):
    base = dev_config("/nonexistent")
    listeners = ListenersConfig(
        smtp=("tcp:25",), imaps=tuple(f"tcp:{993 + n}" for n in range(imaps))
    )
    limits = dataclasses.replace(base.limits, max_connections=max_connections)
    return dataclasses.replace(base, listeners=listeners, limits=limits)


class RaiseNofile(SynchronousTestCase):
    def test_needed_is_every_listener_full_plus_a_reserve(self) -> None:
        self.assertEqual(descriptors_needed(config(10_000, imaps=2)), 3 * 10_000 + RESERVE)

    def test_the_soft_limit_is_raised_as_far_as_needed(self) -> None:
        fake = Limits(1024, 524_288)
        limit = raise_nofile_limit(config(10_000), fake.get, fake.put)
        self.assertEqual(fake.set, [(20_000 + RESERVE, 524_288)])
        self.assertTrue(limit.enough)

    def test_enough_already_is_left_alone(self) -> None:
        fake = Limits(65_536, 65_536)
        self.assertTrue(raise_nofile_limit(config(500), fake.get, fake.put).enough)
        self.assertEqual(fake.set, [])

    def test_a_hard_limit_too_low_is_raised_to_and_warned_of(self) -> None:
        fake = Limits(1024, 4096)
        with capturedLogs() as events:
            limit = raise_nofile_limit(config(10_000), fake.get, fake.put)
        self.assertEqual((fake.set, limit.enough), ([(4096, 4096)], False))
        [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn("LimitNOFILE=20256", warning["log_format"].format(**warning))

    def test_an_unlimited_hard_limit(self) -> None:
        fake = Limits(1024, resource.RLIM_INFINITY)
        self.assertTrue(raise_nofile_limit(config(10_000), fake.get, fake.put).enough)
        self.assertEqual(fake.set, [(20_000 + RESERVE, resource.RLIM_INFINITY)])

    def test_a_refused_raise_is_warned_of_not_raised(self) -> None:
        fake = Limits(1024, 524_288, refuse=True)
        with capturedLogs() as events:
            limit = raise_nofile_limit(config(10_000), fake.get, fake.put)
        self.assertFalse(limit.enough)
        self.assertEqual(len([e for e in events if e["log_level"] == LogLevel.warn]), 2)

    def test_the_real_limit_of_this_process_can_be_raised(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        limit = raise_nofile_limit(config(100))
        self.assertTrue(limit.enough)
        self.assertGreaterEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 200 + RESERVE)
