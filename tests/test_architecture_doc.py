"""docs/ARCHITECTURE.md stays true: every module and package it names exists."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "ARCHITECTURE.md"


class ArchitectureDoc(SynchronousTestCase):
    def test_every_named_module_exists(self) -> None:
        text = DOC.read_text()
        names = set(re.findall(r"`([a-z_*/]+(?:\.py|/))`", text))
        self.assertGreater(len(names), 40)  # the rooms are named, not just described
        modules = {
            p.relative_to(REPO / "mailhub").as_posix() for p in (REPO / "mailhub").rglob("*.py")
        }
        packages = {
            p.relative_to(REPO / "mailhub").as_posix() + "/"
            for p in (REPO / "mailhub").iterdir()
            if p.is_dir()
        }
        missing = []
        for name in sorted(names):
            if name.startswith(("tests/", "docs/")) or name in ("new/", "cur/", "tmp/"):
                continue  # test support is checked by its imports; Maildir's own directories
            if "*" in name:
                pattern = re.compile(name.replace("*", "[a-z_]*") + r"\Z")
                if not any(pattern.search(m) for m in modules):
                    missing.append(name)
            elif name.endswith("/"):
                if name not in packages:
                    missing.append(name)
            elif not any(m == name or m.endswith("/" + name) for m in modules):
                missing.append(name)
        self.assertEqual(missing, [])
