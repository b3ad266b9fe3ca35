"""A Maildir store in a temporary directory for store tests, with an injected clock."""

from __future__ import annotations

import os
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailhub.store import names
from mailhub.store.store import MailStore

ADDRESS = "alice@example.com"


SPECIAL = sorted(names.SPECIAL_USE)  # every new mailbox has them (RFC 6154)


class Clock:
    """An injectable wall clock, well after the files' real mtimes so scans are trusted."""

    def __init__(self) -> None:
        self.t = time.time() + 3600

    def __call__(self) -> float:
        return self.t


def drop(maildir_path: Path, base: str, data: bytes = b"Subject: x\r\n\r\nbody\r\n") -> str:
    """Put a message into new/ the way any Maildir deliverer would (tmp/ then link)."""
    tmp = maildir_path / "tmp" / base
    tmp.write_bytes(data)
    os.link(tmp, maildir_path / "new" / base)
    tmp.unlink()
    return base


class StoreTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.clock = Clock()
        self.store = self.new_store()
        self.box = self.store.mailbox(ADDRESS, create=True)
        self.inbox_path = self.root / "example.com" / "alice"

    def new_store(self) -> MailStore:
        return MailStore(self.root, "test.host", now=self.clock, lock_timeout=2)

    def deliver(self, n: int, start: int = 1_700_000_000) -> list[str]:
        return [
            drop(self.inbox_path, names.with_size(f"{start + i}.M0P1Q{i}.h", 22)) for i in range(n)
        ]
