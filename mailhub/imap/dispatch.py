"""What the connection (protocol.py) and the command handlers share: the session states, the
command table, and how a handler answers.

A handler is ``async def handler(session, tag, items) -> Done``: ``session`` is the
``IMAPServerProtocol`` of the connection, ``items`` the parsed arguments after the command
name. Each handler module keeps a ``CommandTable`` and declares its handlers with
``@COMMANDS.command("NAME", states)``; protocol.py merges the tables and runs one command at a
time, in order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailhub.imap.parser import Item

if TYPE_CHECKING:
    from mailhub.imap.protocol import IMAPServerProtocol

NOT_AUTHENTICATED, AUTHENTICATED, SELECTED, LOGOUT = "not authenticated", "auth", "selected", "out"
ANY = (NOT_AUTHENTICATED, AUTHENTICATED, SELECTED)
AUTHED = (AUTHENTICATED, SELECTED)


@dataclass(frozen=True)
class Done:
    """The tagged completion of a command."""

    status: str  # OK | NO | BAD
    text: str
    code: str | None = None
    sync: bool = True  # report the selected folder's changes before it

    def line(self, tag: str) -> bytes:
        code = f"[{self.code}] " if self.code else ""
        return f"{tag} {self.status} {code}{self.text}\r\n".encode("utf-8", "surrogateescape")


class Answered(Exception):
    """The command answered itself (STARTTLS) or ended the connection (LOGOUT, BYE): nothing
    more to write for it."""


def utf8(text: str) -> bytes:
    """Response text as octets (names the client sent come back as they were)."""
    return text.encode("utf-8", "surrogateescape")


Handler = Callable[["IMAPServerProtocol", str, list[Item]], Awaitable[Done]]


@dataclass(frozen=True)
class CommandSpec:
    handler: Handler
    states: tuple[str, ...]  # the session states in which the command is allowed


class CommandTable:
    """Command name -> handler and the states that allow it."""

    def __init__(self) -> None:
        self._specs: dict[str, CommandSpec] = {}

    def command(self, name: str, states: tuple[str, ...]) -> Callable[[Handler], Handler]:
        """Declare the decorated function the handler of ``name`` in ``states``."""

        def declare(handler: Handler) -> Handler:
            self._add(name, CommandSpec(handler, states))
            return handler

        return declare

    def _add(self, name: str, spec: CommandSpec) -> None:
        if name in self._specs:
            raise ValueError(f"two handlers for {name}")
        self._specs[name] = spec

    def get(self, name: str) -> CommandSpec | None:
        return self._specs.get(name)

    @classmethod
    def merged(cls, *tables: CommandTable) -> CommandTable:
        """One table of all of them (a command declared twice is a programming error)."""
        merged = cls()
        for table in tables:
            for name, spec in table._specs.items():
                merged._add(name, spec)
        return merged
