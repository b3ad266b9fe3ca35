"""A test need missing from the machine skips the test, except under CI=true, where it fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.trial import reporter
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import tools

SUMMARY = Path(__file__).resolve().parent.parent / ".ci" / "summary.py"


def _run_case(in_ci: bool, reason: str | None) -> reporter.TestResult:
    """Decorate a fresh test case with ``requires(reason)`` as CI or not, and run it."""
    ran: list[str] = []

    class Needy(SynchronousTestCase):
        def setUp(self) -> None:
            ran.append("setUp")

        def test_it(self) -> None:
            ran.append("test")

    class NeedyAsync(TestCase):
        def test_it(self) -> None:
            ran.append("async test")

    original = tools.IN_CI
    tools.IN_CI = in_ci
    try:
        cases = [tools.requires(None, reason)(Needy), tools.requires(reason)(NeedyAsync)]
    finally:
        tools.IN_CI = original
    result = reporter.TestResult()
    for case in cases:
        case("test_it").run(result)
    result.ran = ran  # type: ignore[attr-defined]
    return result


class Requires(SynchronousTestCase):
    def test_nothing_missing_runs_the_tests(self) -> None:
        for in_ci in (False, True):
            result = _run_case(in_ci, None)
            self.assertEqual((len(result.skips), len(result.failures)), (0, 0))
            self.assertEqual(result.ran, ["setUp", "test", "async test"])  # type: ignore[attr-defined]

    def test_missing_need_skips_with_its_reason_outside_ci(self) -> None:
        result = _run_case(False, "frob is not installed")
        self.assertEqual([reason for _, reason in result.skips], ["frob is not installed"] * 2)
        self.assertEqual((result.failures, result.ran), ([], []))  # type: ignore[attr-defined]

    def test_missing_need_fails_under_ci_without_running_fixtures(self) -> None:
        result = _run_case(True, "frob is not installed")
        self.assertEqual((result.skips, result.ran), ([], []))  # type: ignore[attr-defined]
        self.assertEqual(len(result.failures), 2)
        for _, failure in result.failures:
            self.assertIn("CI=true", str(failure.value))
            self.assertIn("frob is not installed", str(failure.value))

    def test_skip_or_fail(self) -> None:
        original = tools.IN_CI
        self.addCleanup(setattr, tools, "IN_CI", original)
        tools.IN_CI = False
        self.assertRaises(tools.unittest.SkipTest, tools.skip_or_fail, "no inotify")
        tools.IN_CI = True
        self.assertRaises(tools.unittest.FailTest, tools.skip_or_fail, "no inotify")

    def test_tool_names_the_package(self) -> None:
        self.assertIsNone(tools.tool("sh"))
        reason = tools.tool("mbsync-not-here-xyz")
        self.assertIn("apt-get install mbsync-not-here-xyz", reason or "")
        original = dict(tools.PACKAGE_OF)
        self.addCleanup(tools.PACKAGE_OF.update, original)
        tools.PACKAGE_OF["frob-xyz"] = "frobnicator"
        self.assertIn("apt-get install frobnicator", tools.tool("frob-xyz") or "")


class Summary(SynchronousTestCase):
    """.ci/summary.py turns trial's last line into the plain closing line, and fails CI on skips."""

    def summarise(self, line: str, ci: str) -> tuple[int, str]:
        log = Path(self.mktemp())
        log.write_text(f"...\n{line}\n")
        env = {**os.environ, "CI": ci}
        done = subprocess.run(
            [sys.executable, str(SUMMARY), str(log)], capture_output=True, text=True, env=env
        )
        return done.returncode, done.stdout.strip()

    def test_counts(self) -> None:
        line = "FAILED (skips=2, failures=1, errors=1, successes=80)"
        self.assertEqual(
            self.summarise(line, "false"), (0, "tests: 80 passed, 2 failed, 2 skipped")
        )

    def test_a_skip_fails_under_ci(self) -> None:
        code, out = self.summarise("PASSED (skips=1, successes=80)", "true")
        self.assertEqual((code, out), (1, "tests: 80 passed, 0 failed, 1 skipped"))
        self.assertEqual(self.summarise("PASSED (successes=80)", "true")[0], 0)
