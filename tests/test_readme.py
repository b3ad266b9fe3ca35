"""The README's two commands stay true: CI runs the test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parent.parent


class ReadmeCommands(SynchronousTestCase):
    def commands(self) -> list[str]:
        text = (REPO / "README.md").read_text()
        section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
        return re.findall(r"```sh\n(.*?)\n```", section, re.DOTALL)

    def test_two_commands(self) -> None:
        start, test = self.commands()
        self.assertIn("twistd -n mailhub", start)
        self.assertIn("twisted.trial -j2 tests", test)

    def test_ci_runs_the_readme_test_command(self) -> None:
        _, test = self.commands()
        self.assertIn(test, (REPO / ".ci" / "run").read_text())
