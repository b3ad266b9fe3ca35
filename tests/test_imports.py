"""The import rules in .importlinter hold (basics at the bottom, no cycles between packages):
the same check .ci/run runs, so a regression fails the suite as well as CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parent.parent
# import-linter's command line, run as CI runs it (no cache directory left in the checkout).
LINT_IMPORTS = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS, "--no-cache", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


class ImportContracts(SynchronousTestCase):
    def test_contracts_kept(self) -> None:
        result = lint_imports()
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("0 broken", result.stdout)

    def test_a_broken_contract_fails(self) -> None:
        # The check is not vacuous: a rule the code breaks (spooled writes through safeio) is
        # reported, naming the import.
        config = Path(self.mktemp())
        config.write_text(
            "[importlinter]\nroot_package = mailhub\n\n"
            "[importlinter:contract:demo]\nname = demo\ntype = forbidden\n"
            "source_modules =\n    mailhub.spooled\nforbidden_modules =\n    mailhub.safeio\n"
        )
        result = lint_imports(str(config.resolve()))
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("mailhub.spooled -> mailhub.safeio", result.stdout)

    def test_ci_runs_the_check(self) -> None:
        self.assertIn(LINT_IMPORTS, (REPO / ".ci" / "run").read_text())
