"""The aliases file: addresses that stand for other addresses. aliases(5) syntax, full addresses.

::

    # comments: lines whose first non-blank character is '#'
    sales@example.com:   alice@example.com, bob@example.com
    team@example.com:    alice@example.com,
        carol@partner.example
    # alice keeps a copy of her mail; archive gets one too
    alice@example.com:   alice@example.com, archive@example.com
    # per-domain catch-all
    @example.org:        postmaster@example.com

- As in aliases(5), a line that starts with white space continues the previous entry; blank and
  comment lines are ignored (also between continuation lines). ``#`` only starts a comment at
  the beginning of a line (``#`` is legal inside a local part).
- Unlike aliases(5), keys and targets are **full addresses**: one file serves many domains, so a
  bare ``alice`` would be ambiguous. Bare names, ``|command``, ``/file`` and ``:include:``
  targets are refused with the file and line.
- ``@domain: target...`` is that domain's catch-all: it takes mail for any address in the domain
  that is neither an alias nor a user (``is_user``), so real mailboxes keep their own mail.
- Plus-addressing (RFC 5233 subaddresses): ``user+tag@dom`` is looked up as written first, then
  as ``user@dom``.
- Targets are expanded recursively (depth at most ``max_depth``, at most ``max_targets``
  addresses looked at). An alias listing itself among its targets delivers to that address too
  (``alice: alice, archive``); any other cycle is an ``AliasLoop``. Targets in other domains are
  returned as they are: whoever delivers them (the relay) decides what to do with them.
- Everything is folded the way the SMTP policy folds recipients: lower case, IDNA A-labels.

The file is re-read on change like the users file (``mailhub.users.WatchedFile``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mailhub.config import normalise_domain
from mailhub.users import FileFormatError, WatchedFile, canonical_address


class AliasesFileError(FileFormatError):
    """The aliases file cannot be used as it is."""


class AliasError(Exception):
    """An alias cannot be expanded (a configuration mistake; SMTP answers 550 5.4.6)."""


class AliasLoop(AliasError):
    pass


@dataclass(frozen=True)
class AliasTable:
    """One parsed version of the file."""

    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # address -> targets
    catch_all: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # domain -> targets
    lines: Mapping[str, int] = field(default_factory=dict)  # key -> line number


_UNSUPPORTED_TARGET = {
    "|": "delivery to a command",
    "/": "delivery to a file",
    ":": ":include: lists",
}


def _key(source: str, number: int, text: str) -> str:
    """``alias@domain`` -> canonical address, ``@domain`` -> ``@domain`` (catch-all)."""
    if text.startswith("@"):
        try:
            return "@" + normalise_domain(text[1:])
        except ValueError as e:
            raise AliasesFileError(source, number, str(e)) from None
    if "@" not in text:
        raise AliasesFileError(
            source, number, f"{text!r}: write the full address (alias@example.com)"
        )
    try:
        return canonical_address(text)
    except ValueError as e:
        raise AliasesFileError(source, number, str(e)) from None


def _target(source: str, number: int, text: str) -> str:
    for prefix, what in _UNSUPPORTED_TARGET.items():
        if text.startswith(prefix):
            raise AliasesFileError(source, number, f"{text!r}: {what} is not supported")
    if text.startswith("@") or "@" not in text:
        raise AliasesFileError(
            source, number, f"{text!r}: a target is a full address (user@example.com)"
        )
    try:
        return canonical_address(text)
    except ValueError as e:
        raise AliasesFileError(source, number, str(e)) from None


def parse_aliases(text: str, source: str = "<aliases>") -> AliasTable:
    """Parse a whole aliases file; AliasesFileError names the first bad line."""
    # Join continuation lines into logical entries, remembering where each starts.
    entries: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            if not entries:
                raise AliasesFileError(source, number, "continuation line with no alias before it")
            start, previous = entries[-1]
            entries[-1] = (start, f"{previous} {line.strip()}")
        else:
            entries.append((number, line.strip()))

    aliases: dict[str, tuple[str, ...]] = {}
    catch_all: dict[str, tuple[str, ...]] = {}
    lines: dict[str, int] = {}
    for number, entry in entries:
        name, colon, rest = entry.partition(":")
        if not colon:
            raise AliasesFileError(source, number, "expected 'alias@domain: target, target'")
        key = _key(source, number, name.strip())
        targets = [t.strip() for t in rest.split(",")]
        canonical = tuple(dict.fromkeys(_target(source, number, t) for t in targets if t))
        if not canonical:
            raise AliasesFileError(source, number, f"{key} has no targets")
        if key in lines:
            raise AliasesFileError(source, number, f"{key} is already on line {lines[key]}")
        lines[key] = number
        if key.startswith("@"):
            catch_all[key[1:]] = canonical
        else:
            aliases[key] = canonical
    return AliasTable(aliases, catch_all, lines)


class AliasMap:
    """Resolve addresses through the aliases file (re-read on change).

    ``is_user(address)`` says whether a canonical address is a real mailbox/user; a domain's
    catch-all only takes addresses for which it is False. Pass the same check the recipient
    policy uses. Without it, the catch-all takes every address that is not an explicit alias
    (Postfix's virtual(5) behaviour).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        is_user: Callable[[str], bool] = lambda address: False,
        max_depth: int = 10,
        max_targets: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self._is_user = is_user
        self.max_depth = max_depth
        self.max_targets = max_targets
        self._file: WatchedFile[AliasTable] = WatchedFile(
            self.path, parse_aliases, AliasTable(), what="aliases", clock=clock, interval=interval
        )
        self._owners: tuple[AliasTable, dict[str, list[str]]] | None = None

    def __repr__(self) -> str:
        table = self._file.current()
        return f"<AliasMap {str(self.path)!r}: {len(table.aliases) + len(table.catch_all)} entries>"

    def reload(self) -> None:
        self._file.refresh(force=True)

    def __call__(self, address: str) -> list[str] | None:
        return self.resolve(address)

    def resolve(self, address: str) -> list[str] | None:
        """The final addresses mail for ``address`` goes to, or None if it is not an alias.

        Raises AliasLoop (or AliasError past the limits) when the file is wrong.
        """
        table = self._file.current()
        try:
            start = canonical_address(address)
        except ValueError:
            return None
        targets = self._lookup(table, start)
        if targets is None:
            return None
        found: dict[str, None] = {}
        self._expand(table, targets, (start,), found, [0])
        return list(found)

    def _lookup(self, table: AliasTable, address: str) -> tuple[str, ...] | None:
        if address in table.aliases:
            return table.aliases[address]
        local, _, domain = address.rpartition("@")
        user, plus, _tag = local.partition("+")
        if plus and user:
            address = f"{user}@{domain}"
            if address in table.aliases:
                return table.aliases[address]
        if domain in table.catch_all and not self._is_user(address):
            return table.catch_all[domain]
        return None

    def _expand(
        self,
        table: AliasTable,
        targets: tuple[str, ...],
        path: tuple[str, ...],
        found: dict[str, None],
        looked_at: list[int],
    ) -> None:
        if len(path) > self.max_depth:
            raise AliasError(f"aliases of {path[0]} nest deeper than {self.max_depth} levels")
        for target in targets:
            looked_at[0] += 1
            if looked_at[0] > self.max_targets:
                raise AliasError(f"{path[0]} expands to more than {self.max_targets} addresses")
            if target == path[-1]:
                found.setdefault(target)  # "alice: alice, archive": alice keeps a copy
                continue
            if target in path:
                raise AliasLoop("alias loop: " + " -> ".join((*path, target)))
            further = self._lookup(table, target)
            if further is None:
                found.setdefault(target)
            else:
                self._expand(table, further, (*path, target), found, looked_at)

    def aliases_of(self, address: str) -> list[str]:
        """The explicit aliases whose expansion includes ``address`` (for "send as" checks).

        Catch-alls are not included: a catch-all owner does not own every address of a domain.
        """
        table = self._file.current()
        if self._owners is None or self._owners[0] is not table:
            owners: dict[str, list[str]] = {}
            for key in table.aliases:
                try:
                    for target in self.resolve(key) or ():
                        owners.setdefault(target, []).append(key)
                except AliasError:
                    continue
            self._owners = (table, owners)
        try:
            return sorted(self._owners[1].get(canonical_address(address), []))
        except ValueError:
            return []
