"""Queue ids: unique, short, ordered by arrival."""

from __future__ import annotations

import re

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailhub.queueid import QueueIdGenerator


class QueueIdTests(SynchronousTestCase):
    def test_unique_short_and_ordered(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000)
        ids = QueueIdGenerator(clock)
        first = [ids() for _ in range(20000)]  # all in the same millisecond
        self.assertEqual(len(set(first)), len(first))
        for qid in first[:100]:
            self.assertTrue(re.fullmatch(r"[A-Z2-7]{16}", qid), qid)
        clock.advance(1)
        self.assertGreater(ids(), first[-1])  # time comes first: ids sort by arrival
