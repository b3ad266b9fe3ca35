"""Mailboxes: ``<root>/<domain>/<localpart>/`` Maildir++ trees, and their folders.

Layout (readable by mutt and Dovecot as they are)::

    <root>/example.com/alice/            INBOX: tmp/ new/ cur/ + mailhub-uidlist
    <root>/example.com/alice/.Sent/      folder "Sent" (+ empty maildirfolder file)
    <root>/example.com/alice/.A.B/       folder "A.B": child B of A (Maildir++ nesting)

Folder names use ``.`` as the hierarchy delimiter in this API and on disk (see names.py).
Renaming INBOX is refused (RFC 3501 6.3.5 asks for a move of all messages instead; a gap, noted
in FolderError). Deleting a folder leaves its children in place (RFC 3501 6.3.4).
"""

from __future__ import annotations

import os
import shutil
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from twisted.logger import Logger

from mailhub.safeio import fsync_dir, makedirs_durable
from mailhub.store import names, subscriptions
from mailhub.store.dotlock import DotLock
from mailhub.store.errors import (
    FolderError,
    FolderExists,
    FolderNotFound,
    InvalidName,
    MailboxNotFound,
)
from mailhub.store.maildir import (
    STALE_TMP_AGE,
    Folder,
    StoreSettings,
    clean_stale_tmp,
    create_maildir,
    is_maildir,
)

log = Logger()

# Folders kept in memory after their last user is gone (each holds its message list).
KEEP_FOLDERS = 32


class MailStore:
    """The root of all mailboxes (``config.mail_dir``).

    Addresses are canonical ``localpart@domain`` (lower-cased by the caller). Every method that
    takes an address or folder name may raise ``InvalidName``.
    """

    def __init__(
        self,
        root: Path,
        hostname: str,
        *,
        now: Callable[[], float] = time.time,
        lock_timeout: float = 10.0,
        lock_stale_after: float = 60.0,
        dirty_window: float = 1.0,
        keep_folders: int = KEEP_FOLDERS,
    ) -> None:
        self.root = Path(root)
        self.hostname = hostname
        self.settings = StoreSettings(hostname, now, lock_timeout, lock_stale_after, dirty_window)
        # One Folder object per directory while anybody uses it, so sessions share its cache.
        self._folders: weakref.WeakValueDictionary[str, Folder] = weakref.WeakValueDictionary()
        # ... and the most recently used ones kept alive between sessions: a POP3 login or IMAP
        # SELECT then costs two stat() calls instead of re-reading the UID list (10,000
        # messages: ~60 ms -> ~1 ms).
        self._recent: OrderedDict[str, Folder] = OrderedDict()
        self._keep_folders = keep_folders
        # Mailboxes known to exist: delivery must not stat() them for every message.
        self._delivery_dirs: dict[str, tuple[str, str]] = {}

    def _path(self, address: str) -> Path:
        localpart, domain = names.split_address(address)
        return self.root / domain / localpart

    def has_mailbox(self, address: str) -> bool:
        return is_maildir(self._path(address))

    def login_mailbox(self, address: str) -> Mailbox:
        """The mailbox of a user logging in to IMAP, made with every special-use folder if
        anything is missing (directories and their fsyncs, the subscriptions lock: blocking,
        so a worker thread's job; ``Mailbox.missing_special_folders`` tells if it is needed)."""
        box = self.mailbox(address, create=True)
        box.ensure_special_folders()
        return box

    def mailbox(self, address: str, create: bool = False) -> Mailbox:
        """The mailbox of ``address``; MailboxNotFound unless it exists or ``create``."""
        path = self._path(address)
        if not is_maildir(path):
            if not create:
                raise MailboxNotFound(f"no mailbox for {address}")
            self._create(path)
        return Mailbox(self, address, path)

    def _create(self, path: Path, *, special: bool = True) -> None:
        """A new mailbox: INBOX and the special-use folders (RFC 6154) every user gets. Safe
        when two deliveries create the same mailbox at once. Delivery creates INBOX only (it
        must stay light); IMAP adds the rest at login (``ensure_special_folders``)."""
        makedirs_durable(path.parent)
        create_maildir(path, folder=False)
        if special:
            Mailbox(self, "", path).ensure_special_folders()

    def mailboxes(self) -> list[str]:
        """Every mailbox address in the store, sorted."""
        found: list[str] = []
        try:
            domains = sorted(os.scandir(self.root), key=lambda d: d.name)
        except FileNotFoundError:
            return []
        for dom in domains:
            if dom.name.startswith(".") or not dom.is_dir(follow_symlinks=False):
                continue
            with os.scandir(dom.path) as it:
                for box in it:
                    if box.name.startswith(".") or not box.is_dir(follow_symlinks=False):
                        continue
                    if is_maildir(Path(box.path)):
                        found.append(f"{box.name}@{dom.name}")
        return sorted(found)

    def clean_stale_tmp(self, max_age: float = STALE_TMP_AGE, *, leftovers: bool = False) -> int:
        """Remove stale files from every tmp/ of every mailbox and folder (maildir.html: 36 h) and
        the links to expunged messages that a dead process of this host kept (a crash);
        with ``leftovers`` also stale dotlocks and the temporary files of killed processes
        (``mailhub.store.leftovers``), in the same walk.

        Walks the whole tree: call it at start and then every few hours, in a thread for big
        trees (see ``mailhub.store.delivery.StaleTmpCleaner``).
        """
        removed = 0
        for path in self._folder_paths():
            if leftovers:
                removed += self._clean_leftovers(path)
            removed += clean_stale_tmp(path, self.settings.now, max_age, self.hostname)
        return removed

    def clean_leftovers(self) -> int:
        """Break stale dotlocks and remove the temporary files a killed process left, in every
        mailbox and folder (``mailhub.store.leftovers``). Walks the whole tree: in a thread."""
        return sum(map(self._clean_leftovers, self._folder_paths()))

    def _clean_leftovers(self, path: Path) -> int:
        from mailhub.store import leftovers

        s = self.settings
        return leftovers.clean_folder(path, now=s.now, stale_after=s.lock_stale_after)

    def _folder_paths(self) -> Iterator[Path]:
        """The directory of every mailbox's INBOX and folders."""
        for address in self.mailboxes():
            path = self._path(address)
            yield path
            with os.scandir(path) as it:
                for de in it:
                    if names.folder_from_dirname(de.name) is not None and de.is_dir(
                        follow_symlinks=False
                    ):
                        yield Path(de.path)

    def clean_tmp(self) -> int:
        """Alias of ``clean_stale_tmp()`` with the default 36 hours (used by service.py)."""
        return self.clean_stale_tmp()

    # -- for mailhub.store.delivery only ----------------------------------------------------

    def delivery_dirs(self, address: str, folder: str | None = None) -> tuple[str, str]:
        """(tmp dir, new dir) of the INBOX of ``address`` (or of its ``folder``: Junk for a
        message the checks quarantined), creating the mailbox (and the folder) on first
        delivery: the caller's policy already accepted the recipient. Cached: no syscalls for a
        mailbox seen before. Store-internal: protocol code never sees paths."""
        key = address if folder is None else f"{address}\0{folder}"
        dirs = self._delivery_dirs.get(key)
        if dirs is None:
            path = self._path(address)
            if folder is None:
                if not is_maildir(path):
                    self._create(path, special=False)
            else:
                name, fpath = Mailbox(self, address, path)._folder_path(folder)
                if not is_maildir(fpath):
                    self._create_for_delivery(address, path, name, fpath)
                path = fpath
            dirs = (f"{path}/tmp", f"{path}/new")
            self._delivery_dirs[key] = dirs
        return dirs

    def _create_for_delivery(self, address: str, path: Path, name: str, fpath: Path) -> None:
        """A folder a delivery needs (its mailbox too): a special-use one is made with its
        siblings and subscribed, as at a first login; any other is just made."""
        if not is_maildir(path):
            self._create(path, special=name in names.SPECIAL_USE)
        elif name in names.SPECIAL_USE:
            try:
                Mailbox(self, address, path).ensure_special_folders()
            except Exception as e:  # the subscriptions lock is busy or stale: make it alone
                log.info(
                    "{address}: {name} made unsubscribed ({e})", address=address, name=name, e=e
                )
        if not is_maildir(fpath):
            create_maildir(fpath, folder=True)

    def known_delivery_dirs(
        self, address: str, folder: str | None = None
    ) -> tuple[str, str] | None:
        """``delivery_dirs(address, folder)`` if known to exist, else None (no syscall)."""
        return self._delivery_dirs.get(address if folder is None else f"{address}\0{folder}")

    def delivery_paths(self, address: str, folder: str | None = None) -> tuple[str, str]:
        """(tmp dir, new dir) of the INBOX (or ``folder``) of ``address`` without touching the
        disk; may raise InvalidName. ``delivery_dirs`` creates them (it is safe to call from a
        worker thread: creation tolerates a concurrent creator)."""
        path = self._path(address)
        if folder is not None:
            path = Mailbox(self, address, path)._folder_path(folder)[1]
        return (f"{path}/tmp", f"{path}/new")

    def forget_delivery_dirs(self, address: str, folder: str | None = None) -> None:
        """The mailbox vanished under a delivery: the next delivery re-checks and recreates."""
        self._delivery_dirs.pop(address, None)
        if folder is not None:
            self._delivery_dirs.pop(f"{address}\0{folder}", None)

    def _folder(self, path: Path, name: str) -> Folder:
        key = str(path)
        folder = self._folders.get(key)
        if folder is None:
            folder = Folder(path, name, self.settings)
            self._folders[key] = folder
        self._recent[key] = folder
        self._recent.move_to_end(key)
        while len(self._recent) > self._keep_folders:
            self._recent.popitem(last=False)
        return folder

    def _forget_folders(self, prefix: str) -> None:
        for key in [k for k in self._folders if k == prefix or k.startswith(prefix + ".")]:
            self._folders.pop(key, None)
            self._recent.pop(key, None)


class Mailbox:
    """One user's mailbox: INBOX plus Maildir++ folders. Names, never paths."""

    def __init__(self, store: MailStore, address: str, path: Path) -> None:
        self.address = address
        self._store = store
        self._path = path

    def __repr__(self) -> str:
        return f"<Mailbox {self.address}>"

    def _folder_path(self, name: str) -> tuple[str, Path]:
        name = names.normalise_folder(name)
        if name == names.INBOX:
            return name, self._path
        return name, self._path / names.folder_dirname(name)

    def folder(self, name: str = names.INBOX) -> Folder:
        """The folder ``name`` (``INBOX`` case-insensitive); FolderNotFound if missing."""
        name, path = self._folder_path(name)
        if not is_maildir(path):
            raise FolderNotFound(f"no folder {name!r} in {self.address}")
        return self._store._folder(path, name)

    def has_folder(self, name: str) -> bool:
        try:
            _, path = self._folder_path(name)
        except InvalidName:
            return False
        return is_maildir(path)

    def list_folders(self) -> list[str]:
        """``INBOX`` then every folder, sorted. A parent missing on disk (``.A.B`` without
        ``.A``) is not listed; IMAP LIST shows such a parent as ``\\Noselect``."""
        found: list[str] = []
        with os.scandir(self._path) as it:
            for de in it:
                name = names.folder_from_dirname(de.name)
                if name is not None and de.is_dir(follow_symlinks=False):
                    if is_maildir(Path(de.path)):
                        found.append(name)
        return [names.INBOX, *sorted(found)]

    def create_folder(self, name: str) -> Folder:
        """Create a folder (``.Name`` with ``maildirfolder``); FolderExists if it exists.

        Parents are not created, as in Dovecot's Maildir++ layout.
        """
        name, path = self._folder_path(name)
        if name == names.INBOX or is_maildir(path):
            raise FolderExists(f"folder {name!r} already exists")
        for attempt in range(3):
            try:
                create_maildir(path, folder=True)
                break
            except FileNotFoundError:
                # Another session or process deleted it while we made it: their DELETE came
                # first, so make it again.
                if attempt == 2:
                    raise FolderError(f"folder {name!r} was deleted while created") from None
        log.info("created folder {name} in {address}", name=name, address=self.address)
        return self._store._folder(path, name)

    def rename_folder(self, old: str, new: str) -> None:
        """Rename a folder and all its children (``A`` -> ``B`` also moves ``A.x`` to ``B.x``).

        UIDs and UIDVALIDITY move with the folder (the list lives inside it). Each directory
        rename is atomic; the set of them is not (a crash may leave some children behind).
        """
        old, old_path = self._folder_path(old)
        new, new_path = self._folder_path(new)
        if names.INBOX in (old, new):
            raise FolderError("renaming INBOX (or onto INBOX) is not supported")
        if not is_maildir(old_path):
            raise FolderNotFound(f"no folder {old!r} in {self.address}")
        if new == old or new.startswith(old + names.FOLDER_DELIMITER):
            raise FolderError(f"cannot rename {old!r} into itself")
        moves: list[tuple[Path, Path]] = [(old_path, new_path)]
        prefix = old + names.FOLDER_DELIMITER
        for child in self.list_folders():
            if child.startswith(prefix):
                _, src = self._folder_path(child)
                _, dst = self._folder_path(new + child[len(old) :])
                moves.append((src, dst))
        for _, dst in moves:
            if dst.exists():
                raise FolderExists(f"folder {names.folder_from_dirname(dst.name)!r} exists")

        def rename(subs: list[str]) -> list[str]:
            # Under the subscriptions lock: a busy lock (LockBusy on the reactor) is met
            # before anything is renamed, so IMAP can simply run RENAME again.
            for i, (src, dst) in enumerate(moves):
                try:
                    os.rename(src, dst)
                except FileNotFoundError:
                    if i:
                        raise
                    # Another session or process renamed or deleted it since the check.
                    raise FolderNotFound(f"no folder {old!r} in {self.address}") from None
            fsync_dir(self._path)
            self._store._forget_folders(str(old_path))
            # RFC 3501 6.3.5 lets subscriptions stay behind; following the folder is what
            # users expect (Dovecot does the same). Subscriptions of DELETE'd folders stay
            # (6.3.4).
            return _dedup(
                new + s[len(old) :] if s == old or s.startswith(prefix) else s for s in subs
            )

        self._change_subscriptions(rename)

    def delete_folder(self, name: str) -> None:
        """Delete a folder and its messages; INBOX cannot be deleted (RFC 3501 6.3.4).

        The directory is first renamed out of sight (atomic), then removed, so readers never
        see a half-deleted folder.
        """
        name, path = self._folder_path(name)
        if name == names.INBOX:
            raise FolderError("INBOX cannot be deleted")
        if not is_maildir(path):
            raise FolderNotFound(f"no folder {name!r} in {self.address}")
        # Not starting with "." so no Maildir++ reader takes it for a folder.
        doomed = self._path / f"mailhub-deleting.{names.unique_name(self._store.hostname)}"
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            # Another session or process deleted (or renamed) it since the check above.
            raise FolderNotFound(f"no folder {name!r} in {self.address}") from None
        fsync_dir(self._path)
        self._store._forget_folders(str(path))
        shutil.rmtree(doomed, ignore_errors=True)

    # -- special-use folders (RFC 6154) -------------------------------------------------------

    def special_use(self, name: str) -> str | None:
        """The RFC 6154 attribute of folder ``name`` (``\\Sent``...), or None."""
        return names.SPECIAL_USE.get(name)

    def missing_special_folders(self) -> list[str]:
        """The special-use folders this mailbox lacks (two stat() calls each)."""
        return [n for n in names.SPECIAL_USE if not is_maildir(self._folder_path(n)[1])]

    def ensure_special_folders(self) -> list[str]:
        """Create the special-use folders that are missing (and subscribe them, as Dovecot's
        ``auto = subscribe`` does); returns the names created. Safe against a concurrent
        creator."""
        missing = self.missing_special_folders()
        if not missing:
            return []
        created: list[str] = []

        def create(subs: list[str]) -> list[str]:
            # Under the subscriptions lock: a busy lock (LockBusy on the reactor) is met before
            # any folder is made, so the caller can simply try again.
            for name in missing:
                _, path = self._folder_path(name)
                if not is_maildir(path):
                    create_maildir(path, folder=True)
                    created.append(name)
            return subs + [n for n in created if n not in subs]

        self._change_subscriptions(create)
        if created:
            log.info("created {names} in {address}", names=created, address=self.address)
        return created

    # -- subscriptions (RFC 3501 6.3.6), in Dovecot's ``subscriptions`` file ------------------

    def subscriptions(self) -> list[str]:
        """Subscribed names in the order subscribed; they need not exist (RFC 3501 6.3.6)."""
        return subscriptions.load(self._path / subscriptions.FILENAME)

    def subscribe(self, name: str) -> bool:
        """Subscribe ``name`` (checked, INBOX normalised); False if it already was."""
        name = names.normalise_folder(name)
        return self._change_subscriptions(lambda subs: subs if name in subs else [*subs, name])

    def unsubscribe(self, name: str) -> bool:
        """Unsubscribe ``name``; False if it was not subscribed."""
        name = names.normalise_folder(name)
        return self._change_subscriptions(lambda subs: [s for s in subs if s != name])

    def _change_subscriptions(self, change: Callable[[list[str]], list[str]]) -> bool:
        path = self._path / subscriptions.FILENAME
        s = self._store.settings
        lock = DotLock(
            self._path / subscriptions.LOCKNAME,  # the lock name Dovecot's dotlock uses
            timeout=s.lock_timeout,
            stale_after=s.lock_stale_after,
            hostname=s.hostname,
            now=s.now,
        )
        with lock:
            before = subscriptions.load(path)
            after = change(list(before))
            if after == before:
                return False
            subscriptions.save(path, after, s.hostname)
        return True


def _dedup(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
