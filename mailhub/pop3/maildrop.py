"""One POP3 session's view of a mailbox: the snapshot taken at login, and the UPDATE state.

RFC 1939 4: message numbers are fixed for the session, so the maildrop is a snapshot of the
INBOX taken when the lock is acquired; mail delivered later, or flags changed by IMAP, do not
renumber it. Deletion marks live here, in memory, and reach the disk only in ``commit()`` (the
UPDATE state after QUIT, RFC 1939 6): a dropped connection deletes nothing.

No protocol text here: the protocol turns these answers into ``+OK``/``-ERR`` lines.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from twisted.logger import Logger

from mailhub.pop3.lock import LOCK_FILENAME, SessionLock
from mailhub.store import Folder, MailStore, MessageGone, MessageInfo, StoreError
from mailhub.store.names import SEEN

log = Logger(namespace="mailhub.pop3")

# RFC 1939 7 (UIDL): a unique-id is 1 to 70 characters in the range 0x21 to 0x7E.
MAX_UID_LENGTH = 70
# Lines per piece of a LIST or UIDL listing (``Maildrop.listing``): ~45 KB of UIDL lines.
LISTING_PIECE = 1000


class NoSuchMessage(Exception):
    """The message number is not usable; the text says why (for the ``-ERR`` line)."""


def _valid_uid(key: str) -> bool:
    return len(key) <= MAX_UID_LENGTH and key.isascii() and key.isprintable() and " " not in key


def unique_ids(keys: list[str]) -> list[str]:
    """``unique_id`` of each key. Checked all at once first (C-speed string tests on the joined
    keys): Maildir base names nearly always qualify as they are."""
    joined = "".join(keys)
    if (
        joined.isascii()
        and joined.isprintable()
        and " " not in joined
        and max(map(len, keys), default=0) <= MAX_UID_LENGTH
    ):
        return keys
    return [unique_id(k) for k in keys]


def unique_id(key: str) -> str:
    """The UIDL of a message: its Maildir base name, which is unique in the folder and never
    changes or comes back. A base name that breaks RFC 1939's rules (longer than 70 characters,
    e.g. from a long host name, or with characters outside 0x21-0x7E) is replaced by a digest
    of itself: as stable, and collision-free in practice."""
    if _valid_uid(key):
        return key
    return "h" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:40]


@dataclass(frozen=True, slots=True)
class Entry:
    number: int  # 1-based message number (RFC 1939 4)
    info: MessageInfo


@dataclass(frozen=True)
class UpdateResult:
    deleted: int  # messages removed from disk
    missing: int  # marked ones another session had already removed (not an error)
    failed: bool  # some could not be removed: the client must hear -ERR (RFC 1939 6)


class Maildrop:
    """A snapshot of one folder with deletion marks. Use ``open_maildrop``."""

    def __init__(self, address: str, folder: Folder, lock: SessionLock) -> None:
        self.address = address
        self._folder = folder
        self._lock = lock
        state = folder.sync()
        self._messages: tuple[MessageInfo, ...] = state.messages
        # The UIDVALIDITY of their UIDs; once the folder is numbered anew (a lost UID list),
        # base name -> UID in the new numbering (``_uids``).
        self._uidvalidity = state.uidvalidity
        self._renumbered: dict[str, int] | None = None
        self._deleted: set[int] = set()  # 0-based indexes
        self._unique_ids: list[str] | None = None
        # LIST and UIDL answers built this session, for the current deletion marks.
        self._listings: dict[str, bytes] = {}
        self._seen: set[int] = set()  # retrieved: flagged \Seen when the session ends
        self._count = len(self._messages)
        self._size = sum(m.size for m in self._messages)
        self.retrieved = 0  # for the session's log line

    # -- reading the snapshot ----------------------------------------------------------------

    def stat(self) -> tuple[int, int]:
        """(messages, octets) not marked as deleted (RFC 1939 5 STAT)."""
        return self._count, self._size

    def get(self, number_text: str) -> Entry:
        """The message ``number_text`` names, or NoSuchMessage saying why."""
        if not (number_text.isascii() and number_text.isdigit()) or len(number_text) > 9:
            raise NoSuchMessage(f"invalid message number {number_text[:20]!r}")
        number = int(number_text)
        if not 1 <= number <= len(self._messages):
            raise NoSuchMessage(f"no message {number} (the maildrop has {len(self._messages)})")
        if number - 1 in self._deleted:
            raise NoSuchMessage(f"message {number} is deleted")
        return Entry(number, self._messages[number - 1])

    def entries(self) -> Iterator[tuple[int, MessageInfo]]:
        """(number, info) of every message not marked as deleted, in order."""
        deleted = self._deleted
        if not deleted:
            return enumerate(self._messages, 1)
        return ((i + 1, m) for i, m in enumerate(self._messages) if i not in deleted)

    def unique_ids(self) -> list[str]:
        """The UIDL of every message in the snapshot (computed once per session)."""
        if self._unique_ids is None:
            self._unique_ids = unique_ids([m.key for m in self._messages])
        return self._unique_ids

    def listing(self, kind: str) -> Iterator[bytes]:
        """The lines of the multi-line ``LIST`` (number and size) or ``UIDL`` (number and
        unique-id) answer for the messages not marked deleted (RFC 1939 5, 7), CRLF-ended, in
        pieces of ``LISTING_PIECE`` lines: the first can go out while the rest is built. Built
        once per session (kept until the deletion marks change)."""
        kept = self._listings.get(kind)
        if kept is not None:
            if kept:
                yield kept
            return
        if kind == "UIDL":
            ids = self.unique_ids()
        else:
            ids = [str(m.size) for m in self._messages]
        numbers = [n for n, _ in self.entries()] if self._deleted else None
        total = len(ids) if numbers is None else len(numbers)
        pieces = []
        for start in range(0, total, LISTING_PIECE):
            span: Iterable[int]
            if numbers is None:
                span = range(start + 1, min(start + LISTING_PIECE, total) + 1)
            else:
                span = numbers[start : start + LISTING_PIECE]
            piece = "".join([f"{n} {ids[n - 1]}\r\n" for n in span]).encode("ascii")
            pieces.append(piece)
            yield piece
        self._listings[kind] = b"".join(pieces)

    # -- marks -------------------------------------------------------------------------------

    def delete(self, entry: Entry) -> None:
        self._listings.clear()
        self._deleted.add(entry.number - 1)
        self._count -= 1
        self._size -= entry.info.size

    def reset(self) -> None:
        """RSET: unmark every message (RFC 1939 5)."""
        self._listings.clear()
        self._deleted.clear()
        self._count = len(self._messages)
        self._size = sum(m.size for m in self._messages)

    # -- messages on disk --------------------------------------------------------------------

    def _uids(self, infos: Iterable[MessageInfo]) -> list[int]:
        """The UIDs of these messages in the folder now, those gone left out: the snapshot's,
        unless the folder was numbered anew since (a lost UID list: a new UIDVALIDITY, whose
        UIDs name other messages) - then each is found again by its file's base name, which
        the session names it by (UIDL) and which never changes."""
        folder = self._folder
        if folder.uidvalidity != self._uidvalidity:
            state = folder.sync()
            self._uidvalidity = state.uidvalidity
            self._renumbered = {m.key: m.uid for m in state.messages}
        now = self._renumbered
        if now is None:
            return [m.uid for m in infos]
        return [now[m.key] for m in infos if m.key in now]

    def _uid(self, entry: Entry) -> int:
        found = self._uids([entry.info])
        if not found:
            raise MessageGone(f"message {entry.number} is no longer in the folder")
        return found[0]

    def open(self, entry: Entry) -> BinaryIO:
        """The message file, for reading; MessageGone if another session expunged it."""
        return self._folder.open_message(self._uid(entry))

    def read(self, entry: Entry) -> bytes:
        """The whole message file (one open, read and close; the index's size spares an
        fstat): for messages the index says are small; MessageGone if another session
        expunged it."""
        return self._folder.read_message(self._uid(entry), entry.info.size)

    def mark_seen(self, entry: Entry) -> None:
        """RETR sets \\Seen for IMAP users, as Dovecot does (the Maildir S flag). Collected and
        written in one batch when the session ends (QUIT or a dropped connection): one index
        write for the session instead of one per message."""
        self.retrieved += 1
        if SEEN not in entry.info.flags:
            self._seen.add(entry.number - 1)

    def flush_seen(self) -> None:
        """Set \\Seen on the retrieved messages (those marked deleted are left alone)."""
        pending = sorted(self._seen - self._deleted)
        self._seen.clear()
        if not pending:
            return
        try:
            uids = self._uids(self._messages[i] for i in pending)
            self._folder.store_flags(uids, "add", {SEEN})
        except (OSError, StoreError) as e:
            # The client has its copies; a flag we could not set is not worth an error.
            log.warn(
                "could not mark {n} retrieved messages of {address} seen: {error}",
                n=len(pending),
                address=self.address,
                error=str(e),
            )

    def commit(self) -> UpdateResult:
        """The UPDATE state (RFC 1939 6): remove the marked messages, durably."""
        self.flush_seen()
        marked = len(self._deleted)
        if not marked:
            return UpdateResult(0, 0, False)
        try:
            removed = self._folder.expunge(
                self._uids(self._messages[i] for i in sorted(self._deleted))
            )
        except (OSError, StoreError) as e:
            log.error("UPDATE failed for {address}: {error}", address=self.address, error=str(e))
            return UpdateResult(0, 0, True)
        return UpdateResult(len(removed), marked - len(removed), False)

    def close(self) -> None:
        """End the session (after ``commit`` or without it): flags, then the lock."""
        try:
            self.flush_seen()
        finally:
            self._lock.release()


def open_maildrop(store: MailStore, address: str) -> Maildrop:
    """Lock the INBOX of ``address`` for this session and snapshot it. The mailbox is created
    when missing (a user with no mail yet sees an empty maildrop). Raises MailboxBusy, or a
    StoreError/OSError when the mailbox cannot be read."""
    mailbox = store.mailbox(address, create=True)
    # The lock file sits in the mailbox directory (the store keeps paths to itself; this is the
    # one file the POP3 layer owns there).
    lock = SessionLock(mailbox._path / LOCK_FILENAME)
    lock.acquire()
    try:
        return Maildrop(address, mailbox.folder(), lock)
    except BaseException:
        lock.release()
        raise
