"""Errors several layers raise and report: kept here, below the config and the features, so
raising one never means importing the module that usually catches it (``tls`` raises
``ConfigError`` for a bad certificate file; ``config`` raises it for everything else)."""

from __future__ import annotations


class ConfigError(Exception):
    """A config problem, worded for the operator: where it is, what is wrong, how to fix it."""

    def __init__(self, source: str, key: str | None, problem: str, fix: str = "") -> None:
        # key is shown as written in the file: "[limits] max_size", or "[tls]" for a section.
        self.source, self.key, self.problem, self.fix = source, key, problem, fix
        where = f"{source}: {key}" if key else source
        text = f"{where}: {problem}"
        if fix:
            text += f"\n  fix: {fix}"
        super().__init__(text)
