"""The users file: who may log in, with which password hash. Dovecot passwd-file style.

One user per line, ``address:{SCHEME}hash`` (Dovecot's passwd-file layout, so operators can move
files between the two)::

    # comments and blank lines are kept when mailhub rewrites the file
    alice@example.com:{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHQ$aGFzaGhhc2g...
    bob@example.com:{BLF-CRYPT}$2y$05$...:::reserved:fields
    shared@example.com:

- Further ``:``-separated fields (Dovecot's uid:gid:gecos:home:shell:extra) are reserved: kept
  as written, not used.
- ``{ARGON2ID}`` (and ``{ARGON2I}``) hashes are verified with argon2-cffi; new and changed
  passwords are always written as ``{ARGON2ID}`` with Dovecot's parameters (m=64 MiB, t=3, p=1),
  which is RFC 9106's second recommended option with one lane, so Dovecot can read them too.
- ``{BLF-CRYPT}`` (bcrypt, as Dovecot and Postfix set-ups often have) is verified when the
  ``bcrypt`` package is installed; it is never written.
- An empty password field is an account that receives mail but cannot log in.
- Other hash schemes (``{SHA512-CRYPT}``, ``{SSHA}``...) load as locked accounts with a warning:
  set a new password with ``mailhub user passwd``. Plaintext schemes (``{PLAIN}``, no scheme)
  are an error: this file never holds a password in the clear.
- Addresses are canonical: lower-case local part, IDNA A-label domain.

The file is re-read when it changes (checked at most once per ``interval`` on use), so edits by
hand or by ``mailhub user`` take effect without a restart. A broken edit keeps the last good
contents and logs the file and line. Rewrites are atomic (temp file, fsync, rename), keep the
file's mode and owner, comments and unknown lines, and are serialised by a link()-based dotlock
(``<file>.lock``, NFS-safe like the Maildir UID lists).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Generic, TypeVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError
from twisted.logger import Logger

from mailhub.config import normalise_domain
from mailhub.safeio import atomic_write
from mailhub.store.dotlock import DotLock
from mailhub.store.errors import InvalidName
from mailhub.store.names import split_address

log = Logger()

T = TypeVar("T")

# Dovecot's ARGON2ID defaults (doveadm pw -s ARGON2ID): 64 MiB, 3 passes, one lane. One lane
# keeps one login on one core, and libsodium-based verifiers (Dovecot) accept the result.
DEFAULT_HASHER = argon2.PasswordHasher(time_cost=3, memory_cost=65536, parallelism=1)

# Longer "passwords" are refused without hashing: no client sends them, and they only cost us.
MAX_PASSWORD_BYTES = 4096

# Schemes that store the password itself (Dovecot's names): refused outright.
PLAINTEXT_SCHEMES = frozenset({"PLAIN", "CLEAR", "CLEARTEXT", "PLAIN-TRUNC"})
ARGON2_SCHEMES = {"ARGON2ID": "argon2id", "ARGON2I": "argon2i"}
BCRYPT_SCHEME = "BLF-CRYPT"
WRITE_SCHEME = "ARGON2ID"


# --- addresses ---------------------------------------------------------------------------------


def canonical_address(address: str) -> str:
    """``Local@Domain`` -> ``local@domain`` (IDNA A-label), or ValueError saying why not.

    The same folding the SMTP policy applies to recipients, so a login name, an alias and a
    mailbox agree. Characters that would break the file format (``:``, ``,``, white space) or
    make an unsafe Maildir directory name are refused.
    """
    text = address.strip()
    local, at, domain = text.rpartition("@")
    if not at or not local:
        raise ValueError(f"{address!r} is not an address like alice@example.com")
    if any(c in local for c in ":,") or any(c.isspace() for c in text):
        raise ValueError(f"{address!r}: ':', ',' and spaces are not allowed in an address here")
    canonical = f"{local.lower()}@{normalise_domain(domain)}"
    try:
        split_address(canonical)  # the store's rule for what can become a Maildir path
    except InvalidName as e:
        raise ValueError(f"{address!r}: {e}") from None
    return canonical


def canonical_user(address: str) -> str:
    """A canonical address that can be a user: no ``+`` (RFC 5233 subaddress separator: mail to
    ``a+b@x`` is delivered to ``a@x``, so a user ``a+b`` would never receive any)."""
    canonical = canonical_address(address)
    if "+" in canonical.rpartition("@")[0]:
        raise ValueError(f"{address!r}: '+' starts a tag (user+tag@domain), not part of a user")
    return canonical


# --- errors ------------------------------------------------------------------------------------


class FileFormatError(ValueError):
    """A line of a users or aliases file that cannot be used; says which file and line."""

    def __init__(self, source: str, line: int | None, problem: str) -> None:
        self.source, self.line, self.problem = source, line, problem
        where = f"{source}, line {line}" if line else source
        super().__init__(f"{where}: {problem}")


class UsersFileError(FileFormatError):
    """The users file cannot be used as it is."""


class UsersError(Exception):
    """An edit that cannot be done (the message is for the operator)."""


class UserExists(UsersError):
    pass


class UnknownUser(UsersError, LookupError):
    pass


# --- the file ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserEntry:
    """One user line. ``hash`` never shows in a repr."""

    address: str
    scheme: str  # upper case, "" when the password field is empty
    hash: str = field(repr=False)
    line: int = 0
    locked: str | None = None  # why this account cannot log in, or None

    @property
    def can_log_in(self) -> bool:
        return self.locked is None


@dataclass(frozen=True)
class UsersSnapshot:
    """The parsed contents of one version of the file."""

    users: Mapping[str, UserEntry]
    warnings: tuple[str, ...] = ()


def _bcrypt() -> ModuleType | None:  # optional dependency, only to verify migrated hashes
    try:
        import bcrypt
    except ImportError:
        return None
    return bcrypt


def _parse_line(source: str, number: int, line: str) -> tuple[UserEntry, str | None] | None:
    """One line -> (entry, warning) or None for comments and blank lines."""
    text = line.rstrip("\r\n")
    if not text.strip() or text.lstrip().startswith("#"):
        return None
    name, colon, rest = text.partition(":")
    if not colon:
        raise UsersFileError(source, number, "expected address:{SCHEME}hash")
    try:
        address = canonical_user(name)
    except ValueError as e:
        raise UsersFileError(source, number, str(e)) from None
    password = rest.partition(":")[0].strip()
    # Never quote the password field in a message: it may be a password typed in by mistake.
    if not password:
        return UserEntry(address, "", "", number, "no password (receives mail only)"), None
    if not password.startswith("{") or "}" not in password:
        raise UsersFileError(
            source,
            number,
            "the password field must be {SCHEME}hash; plaintext passwords are not accepted "
            f"(delete the line, then run: mailhub user add {address})",
        )
    scheme, _, hashed = password[1:].partition("}")
    scheme = scheme.upper()
    if scheme in PLAINTEXT_SCHEMES:
        raise UsersFileError(
            source,
            number,
            f"{{{scheme}}} stores the password in the clear, which mailhub refuses "
            f"(delete the line, then run: mailhub user add {address})",
        )
    if scheme in ARGON2_SCHEMES:
        try:
            params = argon2.extract_parameters(hashed)
        except (InvalidHashError, ValueError):
            raise UsersFileError(source, number, f"not a valid {{{scheme}}} hash") from None
        if params.type.name.lower() != ARGON2_SCHEMES[scheme].removeprefix("argon2").lower():
            raise UsersFileError(source, number, f"{{{scheme}}} with a different argon2 hash")
        return UserEntry(address, scheme, hashed, number), None
    if scheme == BCRYPT_SCHEME:
        if not (hashed[:4] in ("$2a$", "$2b$", "$2y$") and len(hashed) == 60):
            raise UsersFileError(source, number, f"not a valid {{{scheme}}} (bcrypt) hash")
        if _bcrypt() is None:
            why = "{BLF-CRYPT} needs the bcrypt package (pip install bcrypt)"
        else:
            return UserEntry(address, scheme, hashed, number), None
    else:
        why = f"{{{scheme}}} is not a supported hash scheme (new password: mailhub user passwd)"
    return UserEntry(address, scheme, hashed, number, why), f"{source}, line {number}: {why}"


def parse_users(text: str, source: str = "<users>") -> UsersSnapshot:
    """Parse a whole users file; UsersFileError names the first bad line."""
    users: dict[str, UserEntry] = {}
    warnings: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        parsed = _parse_line(source, number, line)
        if parsed is None:
            continue
        entry, warning = parsed
        if entry.address in users:
            first = users[entry.address].line
            raise UsersFileError(source, number, f"{entry.address} is already on line {first}")
        users[entry.address] = entry
        if warning:
            warnings.append(warning)
    return UsersSnapshot(users, tuple(warnings))


# --- watching a file for changes ---------------------------------------------------------------

StatKey = tuple[int, int, int, int]


class WatchedFile(Generic[T]):
    """A parsed file that is re-read when it changes, checked at most once per ``interval``.

    Change means a different (device, inode, mtime_ns, size): a rename onto the path (editors,
    ``mailhub user``) changes the inode; an in-place edit the mtime or size. The check is one
    ``stat`` per ``interval`` on the hot path. A file that fails to parse on a re-read keeps the
    last good contents (logged once per version of the file); at start-up it raises.
    """

    def __init__(
        self,
        path: Path | str,
        parse: Callable[[str, str], T],
        empty: T,
        *,
        what: str,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self._parse = parse
        self._empty = empty
        self._what = what
        self._clock = clock
        self._interval = interval
        self._lock = threading.Lock()
        self._key: StatKey | None = None
        self._checked_at = clock()
        self._value = self._load_strict()

    def _read(self) -> tuple[StatKey, T] | None:
        """(stat key, parsed value), or None if there is no file. Raises FileFormatError/OSError."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return None
        with f:
            # fstat of the open file: the key and the bytes are of the same version.
            st = os.fstat(f.fileno())
            data = f.read()
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise FileFormatError(str(self.path), line, "not UTF-8 text") from None
        return key, self._parse(text, str(self.path))

    def _load_strict(self) -> T:
        found = self._read()
        if found is None:
            log.warn(
                "{what} file {path} does not exist: none loaded", what=self._what, path=self.path
            )
            return self._empty
        self._key, value = found
        return value

    def current(self) -> T:
        """The contents, re-read first if the file changed (checked at most once per interval)."""
        self.refresh()
        return self._value

    def refresh(self, force: bool = False) -> None:
        if not force and self._clock() - self._checked_at < self._interval:
            return
        with self._lock:
            now = self._clock()
            if not force and now - self._checked_at < self._interval:
                return  # another thread just checked
            self._checked_at = now
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                if self._key is not None:
                    log.error(
                        "{what} file {path} disappeared: keeping the last version",
                        what=self._what,
                        path=self.path,
                    )
                    self._key = None
                return
            except OSError as e:
                log.error("cannot stat {path}: {error}", path=self.path, error=e.strerror)
                return
            if (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size) == self._key:
                return
            try:
                found = self._read()
            except (FileFormatError, OSError) as e:
                # Keep serving the last good version; do not re-log until the file changes.
                self._key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
                log.error(
                    "{what} file not reloaded, keeping the last good version: {error}",
                    what=self._what,
                    error=str(e),
                )
                return
            if found is None:
                return
            self._key, self._value = found
            log.info("reloaded {what} file {path}", what=self._what, path=self.path)


# --- the user database -------------------------------------------------------------------------


class UserDB:
    """The users file, loaded, watched and (for the CLI and rehashing) edited.

    ``authenticate``/``check_password`` run a deliberately slow hash: call them off the reactor
    thread (``mailhub.auth`` does). They are thread-safe.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        hasher: argon2.PasswordHasher = DEFAULT_HASHER,
        rehash: bool = False,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self._hasher = hasher
        self._rehash = rehash
        self._dummy: str | None = None
        self._file: WatchedFile[UsersSnapshot] = WatchedFile(
            self.path, parse_users, UsersSnapshot({}), what="users", clock=clock, interval=interval
        )
        for warning in self._file.current().warnings:
            log.warn("{warning}", warning=warning)

    def __repr__(self) -> str:
        return f"<UserDB {str(self.path)!r}: {len(self._file.current().users)} users>"

    # reading

    def entries(self) -> list[UserEntry]:
        return sorted(self._file.current().users.values(), key=lambda e: e.address)

    def addresses(self) -> list[str]:
        return sorted(self._file.current().users)

    def exists(self, address: str) -> bool:
        """Is ``address`` a user (whether or not it can log in)? Unparseable -> False."""
        try:
            return canonical_user(address) in self._file.current().users
        except ValueError:
            return False

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and self.exists(address)

    def reload(self) -> None:
        """Re-read now if the file changed (normally done on use, at most once per interval)."""
        self._file.refresh(force=True)

    @property
    def warnings(self) -> tuple[str, ...]:
        return self._file.current().warnings

    # verifying

    def check_password(self, address: str | bytes, password: str | bytes) -> bool:
        """True if ``password`` is right for ``address``. Slow on purpose; see ``authenticate``."""
        return self.authenticate(address, password) is not None

    def authenticate(self, username: str | bytes, password: str | bytes) -> str | None:
        """The canonical address if ``password`` is right for ``username``, else None.

        Unknown users, locked accounts and unparseable names still pay for one hash against a
        dummy of the current parameters, so response time does not tell which names exist. The
        comparisons inside argon2 and bcrypt are constant-time.
        """
        secret = password.encode("utf-8") if isinstance(password, str) else bytes(password)
        if len(secret) > MAX_PASSWORD_BYTES:
            return None
        entry: UserEntry | None = None
        try:
            name = username.decode("utf-8") if isinstance(username, bytes) else username
            entry = self._file.current().users.get(canonical_user(name))
        except (UnicodeDecodeError, ValueError):
            pass
        if entry is None or not entry.can_log_in:
            self._burn(secret)
            return None
        if not self._verify(entry, secret):
            return None
        if self._rehash and self._outdated(entry):
            try:
                self.set_password(entry.address, secret, _only_if_hash=entry.hash)
                log.info("rehashed the password of {address}", address=entry.address)
            except Exception as e:
                # The login succeeds anyway; a read-only file only means no upgrade.
                log.warn(
                    "could not rehash the password of {address}: {error}",
                    address=entry.address,
                    error=type(e).__name__,
                )
        return entry.address

    def _verify(self, entry: UserEntry, secret: bytes) -> bool:
        if entry.scheme in ARGON2_SCHEMES:
            try:
                return self._hasher.verify(entry.hash, secret)
            except (VerificationError, InvalidHashError):
                return False
        if entry.scheme == BCRYPT_SCHEME:
            bcrypt = _bcrypt()
            if bcrypt is None:
                return False
            # crypt_blowfish (Dovecot, PHP) uses the first 72 bytes; the bcrypt package refuses
            # longer input instead of truncating, so truncate as the hash's creator did.
            try:
                return bool(bcrypt.checkpw(secret[:72], entry.hash.encode("ascii")))
            except ValueError:
                return False
        return False

    def _burn(self, secret: bytes) -> None:
        if self._dummy is None:
            self._dummy = self._hasher.hash(secrets.token_bytes(16))
        try:
            self._hasher.verify(self._dummy, secret)
        except (VerificationError, InvalidHashError):
            pass

    def _outdated(self, entry: UserEntry) -> bool:
        if entry.scheme != WRITE_SCHEME:
            return True  # e.g. BLF-CRYPT after a migration: upgrade on the next good login
        return self._hasher.check_needs_rehash(entry.hash)

    def hash_password(self, password: str | bytes) -> str:
        """``{ARGON2ID}$argon2id$v=19$m=...`` for a new password, as Dovecot writes it."""
        secret = password.encode("utf-8") if isinstance(password, str) else bytes(password)
        if not secret:
            raise UsersError("empty password")
        if len(secret) > MAX_PASSWORD_BYTES:
            raise UsersError(f"password longer than {MAX_PASSWORD_BYTES} bytes")
        return f"{{{WRITE_SCHEME}}}{self._hasher.hash(secret)}"

    # editing (the CLI; rehashing)

    def add(self, address: str, password: str | bytes) -> str:
        """Add a user; returns the canonical address. UserExists if already there."""
        canonical = self._user(address)
        line = f"{canonical}:{self.hash_password(password)}\n"

        def change(lines: list[str], where: dict[str, int]) -> None:
            if canonical in where:
                raise UserExists(f"{canonical} is already a user")
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines.append(line)

        self._edit(change)
        return canonical

    def set_password(
        self, address: str, password: str | bytes, *, _only_if_hash: str | None = None
    ) -> str:
        """Change a user's password, keeping the line's reserved fields; UnknownUser if none."""
        canonical = self._user(address)
        hashed = self.hash_password(password)

        def change(lines: list[str], where: dict[str, int]) -> None:
            if canonical not in where:
                raise UnknownUser(f"no user {canonical}")
            i = where[canonical]
            name, _, rest = lines[i].rstrip("\r\n").partition(":")
            old, sep, reserved = rest.partition(":")
            if _only_if_hash is not None and not old.strip().endswith("}" + _only_if_hash):
                raise UsersError("password changed meanwhile")  # do not undo an admin's change
            lines[i] = f"{name}:{hashed}{sep}{reserved}\n"

        self._edit(change)
        return canonical

    def delete(self, address: str) -> str:
        """Remove a user's line (the mailbox stays); UnknownUser if there is none."""
        canonical = self._user(address)

        def change(lines: list[str], where: dict[str, int]) -> None:
            if canonical not in where:
                raise UnknownUser(f"no user {canonical}")
            del lines[where[canonical]]

        self._edit(change)
        return canonical

    @staticmethod
    def _user(address: str) -> str:
        try:
            return canonical_user(address)
        except ValueError as e:
            raise UsersError(str(e)) from None

    def _edit(self, change: Callable[[list[str], dict[str, int]], None]) -> None:
        """Read the file fresh under the lock, apply ``change`` to its lines, replace it."""
        with DotLock(self.path.with_name(self.path.name + ".lock")):
            try:
                with open(self.path, "rb") as f:
                    st: os.stat_result | None = os.fstat(f.fileno())
                    text = f.read().decode("utf-8")
            except FileNotFoundError:
                st, text = None, ""
            except UnicodeDecodeError:
                raise UsersFileError(str(self.path), None, "not UTF-8 text") from None
            parse_users(text, str(self.path))  # refuse to rewrite a file we do not understand
            lines = text.splitlines(keepends=True)
            change(lines, dict(_user_lines(lines)))
            replace_file(self.path, "".join(lines).encode("utf-8"), like=st)
        self._file.refresh(force=True)


def _user_lines(lines: list[str]) -> Iterator[tuple[str, int]]:
    for i, line in enumerate(lines):
        text = line.strip()
        if text and not text.startswith("#"):
            try:
                yield canonical_user(text.partition(":")[0]), i
            except ValueError:
                continue


def replace_file(path: Path, data: bytes, like: os.stat_result | None = None) -> None:
    """Atomically replace ``path`` with ``data``: readers see the old or the new file, never a
    mix, and the new one is durable when this returns. Mode and owner are taken from ``like``
    (the file being replaced); a new file is 0600."""
    atomic_write(path, data, like=like)
