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


def _split_outside_backticks(text: str, separator: str) -> list[str]:
    parts, current, quoted = [], "", False
    i = 0
    while i < len(text):
        if text[i] == "`":
            quoted = not quoted
        if not quoted and text.startswith(separator, i):
            parts.append(current)
            current, i = "", i + len(separator)
            continue
        current += text[i]
        i += 1
    return [*parts, current]


class ReadmeDevDefaults(SynchronousTestCase):
    """The configuration reference's "production / dev" defaults are config.MODE_DEFAULTS, the
    one table config loading and the twistd options use (issue 12, 3)."""

    # Dev behaviour of the service rather than a config default: without [tls] the dev stack
    # makes itself a certificate at start (mailhub.service._server_tls).
    BEHAVIOUR = frozenset({"[tls] certificate", "[tls] key"})

    def section(self, title: str) -> str:
        text = (REPO / "README.md").read_text()
        return text.split(title, 1)[1].split("\n#", 1)[0]

    def rows(self, title: str) -> list[list[str]]:
        out = []
        for line in self.section(title).splitlines():
            if line.startswith("|") and not line.startswith("|--"):
                out.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
        return out[1:]  # without the header

    def readme_defaults(self) -> dict[str, tuple[str, str]]:
        """README key -> (production text, dev text), for every default that differs."""
        from mailhub.config import DEV_PORTS

        found = {}
        for key_cell, default_cell, _ in self.rows("### Configuration reference"):
            names = re.findall(r"`([^`]*)`", key_cell)
            section = names[0].split("]")[0] + "]"
            if "…" in key_cell:  # "[listeners] smtp … web": every listener kind
                names = [f"{section} {name}" for name in DEV_PORTS]
            keys = [n if n.startswith("[") else f"{section} {n}" for n in names]
            parts = _split_outside_backticks(default_cell, ", ")
            if len(parts) != len(keys):
                parts = [default_cell] * len(keys)
            for key, part in zip(keys, parts, strict=True):
                if " / " in part:
                    production, dev = part.split(" / ", 1)
                    found[key] = (production.strip(), dev.strip())
        return found

    @staticmethod
    def written(key: str, value: object) -> str:
        """How the README writes a default."""
        from mailhub.config import DEV_INTERFACE, dev_listener

        if isinstance(value, bool):
            return f"`{str(value).lower()}`"
        if value is None and key == "[server] hostname":
            return "the host's FQDN"
        if value == ():
            return "`[]`"
        if key.startswith("[listeners] ") and value == dev_listener(key.split()[1]):
            return f"the port table's dev ports on {DEV_INTERFACE}"
        return f"`{value}`"

    def test_defaults_match_the_table(self) -> None:
        from mailhub.config import MODE_DEFAULTS

        readme = self.readme_defaults()
        self.assertEqual(set(readme) - self.BEHAVIOUR, set(MODE_DEFAULTS))
        for key, default in MODE_DEFAULTS.items():
            expected = (self.written(key, default.production), self.written(key, default.dev))
            self.assertEqual(readme[key], expected, key)

    def test_port_table_is_the_dev_port_plan(self) -> None:
        from mailhub.config import DEV_PORTS

        ports = [int(dev) for _, dev, _, _ in self.rows("## Ports")]
        self.assertEqual(ports, list(DEV_PORTS.values()))
