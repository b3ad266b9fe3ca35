"""mailhub/ type-checks under mypy with the project's settings ([tool.mypy] in pyproject.toml):
the same check .ci/run runs, so a regression fails the suite as well as CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "pyproject.toml"


def mypy(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    # From the checkout's top, as CI runs it (the config names its files relative to it). The
    # cache (.mypy_cache, git-ignored) makes a second run take about a second instead of ten.
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(CONFIG),
            "--cache-dir",
            str(cache),
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


class TypeCheck(SynchronousTestCase):
    def test_mailhub_type_checks(self) -> None:
        result = mypy(cache=REPO / ".mypy_cache")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("Success: no issues found", result.stdout)

    def test_mistakes_are_reported(self) -> None:
        # The settings are not vacuous: a wrong return type, an unannotated function, an
        # ignore nothing needs and an ignore without its error code all fail the check.
        tmp = Path(self.mktemp()).absolute()
        tmp.mkdir()
        bad = tmp / "bad.py"
        bad.write_text(
            "def wrong() -> int:\n"
            '    return "one"\n'
            "\n"
            "\n"
            "def untyped(x):\n"
            "    return x\n"
            "\n"
            "\n"
            "fine: int = 1  # type: ignore[assignment]\n"
            'blanket: int = ""  # type: ignore\n'
        )
        result = mypy(str(bad), cache=tmp / "cache")
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        for code in ("return-value", "no-untyped-def", "unused-ignore", "ignore-without-code"):
            self.assertIn(f"[{code}]", result.stdout)

    def test_ci_runs_the_check(self) -> None:
        self.assertIn(".venv/bin/python -m mypy\n", (REPO / ".ci" / "run").read_text())
