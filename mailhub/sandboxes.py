"""Sandboxes: isolated inboxes for tests (issue 15), one mailbox each in the Maildir store.

A sandbox is a mailbox ``<id>@sandbox.invalid`` (RFC 6761 6.4: ``.invalid`` never resolves, so
the name cannot collide with a real domain) and a password. Mail sent with SMTP AUTH as that
address, to any recipients, is delivered into that one mailbox (``mailhub.smtp.policy``); IMAP
and POP3 logins with the same credentials see only it, and so does the web API under
``/api/v1/sandboxes/<id>/``. Mail for the sandbox domain from anyone else is refused, so only
the credentials put mail there.

The list of sandboxes lives in ``<data_dir>/sandboxes.json`` (temp -> fsync -> rename: the old
file or the new, never a mix), written off the reactor thread. Passwords are random (128 bits)
and only their SHA-256 is kept: a fast hash is enough for a random secret, and a login costs no
argon2 round. The password is shown once, when the sandbox is made.

A sandbox made with a ``ttl`` expires: ``SandboxSweeper`` deletes it within a minute after
(a test run killed before its clean-up leaves nothing behind for long).

Deleting a sandbox forgets it at once (its logins stop working), renames its mailbox directory
to a hidden name (atomic: the store and the web feed see the mailbox gone) and removes the files
in a thread; a crash in between leaves hidden ``.deleted-*`` directories that the next start
removes, as it removes sandbox mailboxes no sandbox owns (mail a delivery in flight during a
deletion wrote after it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, DeferredLock, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from mailhub.auth import Runner, reactor_threads
from mailhub.envelope import Envelope
from mailhub.interfaces import IIncomingMessage, IMessageSink
from mailhub.safeio import atomic_write
from mailhub.store.store import MailStore

log = Logger()

# RFC 6761 6.4: names under .invalid are never resolved; no real recipient can live there.
SANDBOX_DOMAIN = "sandbox.invalid"
FILE_NAME = "sandboxes.json"
FORMAT = 1
MAX_NAME = 200  # characters of a sandbox's label
MAX_TTL = 30 * 86400.0  # the longest life a sandbox may be given, seconds
SWEEP_INTERVAL = 60.0  # seconds between looks for expired sandboxes
_TRASH = ".deleted-"


class SandboxError(Exception):
    """A request about sandboxes that cannot be done; ``status`` is the HTTP answer it fits."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class SandboxFileError(Exception):
    """The sandboxes file cannot be read (the message names it and says why)."""


def _digest(password: str) -> str:
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def is_sandbox_address(address: str | None) -> bool:
    """Whether a (canonical) address is in the sandbox domain."""
    return address is not None and address.rpartition("@")[2].lower() == SANDBOX_DOMAIN


@dataclass(frozen=True)
class Sandbox:
    """One sandbox. ``secret`` (the password's SHA-256) never shows in a repr."""

    id: str
    name: str
    created: float
    secret: str = field(repr=False)
    expires: float | None = None  # when SandboxSweeper deletes it; None: never

    @property
    def address(self) -> str:
        """Its mailbox, and the user name its SMTP, IMAP and POP3 logins use."""
        return f"{self.id}@{SANDBOX_DOMAIN}"

    def check(self, password: str) -> bool:
        return hmac.compare_digest(self.secret, _digest(password))

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "created": self.created,
            "secret": self.secret,
            "expires": self.expires,
        }


def _parse(path: Path, data: bytes) -> dict[str, Sandbox]:
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a format {FORMAT} sandboxes file")
        found = {}
        for item in doc["sandboxes"]:
            expires = item.get("expires")
            box = Sandbox(
                str(item["id"]),
                str(item["name"]),
                float(item["created"]),
                str(item["secret"]),
                float(expires) if expires is not None else None,
            )
            if not _valid_id(box.id):
                raise ValueError(f"bad sandbox id {box.id!r}")
            found[box.id] = box
        return found
    except (ValueError, KeyError, TypeError) as e:
        raise SandboxFileError(
            f"{path}: cannot read the sandboxes ({e}); fix or remove the file"
        ) from None


def _valid_id(text: str) -> bool:
    return 8 <= len(text) <= 32 and all(c in "0123456789abcdef" for c in text)


class Sandboxes:
    """The sandboxes of one server. Call its methods on the reactor thread; the disk work runs
    through ``run`` (a thread by default). ``limit`` is how many may exist at once."""

    def __init__(
        self,
        data_dir: Path,
        store: MailStore,
        *,
        limit: int = 1000,
        clock: Callable[[], float] = time.time,
        run: Runner = reactor_threads,
    ) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self.store, self.limit, self.clock, self.run = store, limit, clock, run
        self._lock = DeferredLock()  # one write of the file at a time, in order
        # Group commit: changes made (counted) and the count the file on disk includes; a
        # change that waited for the lock is often written already by the write before it.
        self._changes = 0
        self._written = 0
        self._boxes: dict[str, Sandbox] = {}
        # Told (sandbox id) when one is deleted: the fault rules scoped to it go too.
        self.on_delete: list[Callable[[Sandbox], object]] = []

    # --- start-up (blocking: before the reactor serves anyone) ------------------------------

    def load(self) -> None:
        """Read the file (none yet: no sandboxes) and remove deletions a crash left half done."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = None
        self._boxes = _parse(self.path, data) if data is not None else {}
        root = self.store.root / SANDBOX_DOMAIN
        try:
            # Half-done deletions, and mailboxes of no sandbox (a delivery that was in flight
            # during a deletion): only a sandbox's own login can put mail here.
            leftovers = [
                e.path
                for e in os.scandir(root)
                if e.name.startswith(_TRASH)
                or (not e.name.startswith(".") and e.name not in self._boxes)
            ]
        except FileNotFoundError:
            leftovers = []
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)

    # --- reading ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Sandbox]:
        return iter(sorted(self._boxes.values(), key=lambda b: (b.created, b.id)))

    def __len__(self) -> int:
        return len(self._boxes)

    def get(self, sandbox_id: str) -> Sandbox | None:
        return self._boxes.get(sandbox_id)

    def of_address(self, address: str | None) -> Sandbox | None:
        """The sandbox whose mailbox (login) ``address`` is, or None."""
        if not is_sandbox_address(address):
            return None
        assert address is not None
        return self._boxes.get(address.rpartition("@")[0].lower())

    def login(self, username: str, password: str) -> str | None:
        """The sandbox address these credentials log in as, or None."""
        box = self.of_address(username)
        if box is None or not box.check(password):
            return None
        return box.address

    # --- changing ---------------------------------------------------------------------------

    async def create(self, name: str = "", ttl: float | None = None) -> tuple[Sandbox, str]:
        """A new sandbox and its password (the only time it is shown); with ``ttl`` it expires
        that many seconds from now. Its mailbox exists (empty) and the file is durable before
        this returns."""
        if not isinstance(name, str) or len(name) > MAX_NAME or not name.isprintable():
            raise SandboxError(400, f"name must be one line of at most {MAX_NAME} characters")
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL
        ):
            raise SandboxError(400, f"ttl must be a number of seconds from 1 to {MAX_TTL:.0f}")
        if len(self._boxes) >= self.limit:
            raise SandboxError(
                409,
                f"there are {len(self._boxes)} sandboxes, the most this server keeps "
                "([sandboxes] max): delete some first",
            )
        sandbox_id = secrets.token_hex(8)
        while sandbox_id in self._boxes:  # 64 bits: practically never
            sandbox_id = secrets.token_hex(8)
        password = secrets.token_urlsafe(16)
        now = self.clock()
        expires = round(now + ttl, 3) if ttl is not None else None
        box = Sandbox(sandbox_id, name, round(now, 3), _digest(password), expires)
        self._boxes[box.id] = box
        try:
            # INBOX only, as a first delivery makes it (IMAP adds the special folders at login)
            await self.run(self.store.delivery_dirs, box.address)
            await self._save()
        except BaseException:
            self._boxes.pop(box.id, None)
            raise
        log.info("sandbox {id} created ({name})", id=box.id, name=name or "no name")
        return box, password

    async def delete(self, sandbox_id: str) -> bool:
        """Forget a sandbox and remove its mail; False if there is none with that id."""
        box = self._boxes.pop(sandbox_id, None)
        if box is None:
            return False
        for told in self.on_delete:
            told(box)
        await self._save()
        await self.run(self._remove_mail, box)
        self.store.forget_delivery_dirs(box.address)
        log.info("sandbox {id} deleted", id=box.id)
        return True

    async def sweep(self) -> list[str]:
        """Delete the sandboxes whose time is up; their ids."""
        now = self.clock()
        gone = [b.id for b in self if b.expires is not None and b.expires <= now]
        for sandbox_id in gone:
            await self.delete(sandbox_id)
        if gone:
            log.info("{n} expired sandboxes deleted", n=len(gone))
        return gone

    def _remove_mail(self, box: Sandbox) -> None:
        path = self.store.root / SANDBOX_DOMAIN / box.id
        trash = path.with_name(f"{_TRASH}{box.id}-{secrets.token_hex(4)}")
        try:
            os.rename(path, trash)  # atomic: the mailbox is gone for every reader at once
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    async def _save(self) -> None:
        """Make the current list durable; changes that come while a write runs share the next
        one (many tests making sandboxes at once pay one fsync pass each round, not each)."""
        self._changes += 1
        mine = self._changes
        await self._lock.acquire()
        try:
            if self._written >= mine:
                return  # the write before ours took our change along
            upto = self._changes
            doc = {"format": FORMAT, "sandboxes": [b.record() for b in self]}
            data = json.dumps(doc, indent=1).encode() + b"\n"
            await self.run(self._write, data)
            self._written = upto
        finally:
            self._lock.release()

    def _write(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, data, self.store.hostname)


class SandboxSweeper(Service):
    """Deletes expired sandboxes every ``interval`` seconds (on ``clock``) while running."""

    def __init__(
        self, sandboxes: Sandboxes, clock: IReactorTime, interval: float = SWEEP_INTERVAL
    ) -> None:
        self.sandboxes, self.interval = sandboxes, interval
        self._loop = LoopingCall(self._sweep)
        self._loop.clock = clock

    def _sweep(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self.sandboxes.sweep())
        d.addErrback(lambda f: log.failure("deleting expired sandboxes failed", f))
        return d.addCallback(lambda _: None)

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=True)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return None


@implementer(IMessageSink)
class SandboxSink:
    """A sandbox's mail keeps its envelope: one ``X-Original-To:`` field per recipient on top
    (as the client wrote it, Bcc included; Postfix's name for the original recipient), since
    every recipient lands in the one sandbox mailbox. Other mail passes untouched."""

    def __init__(self, inner: IMessageSink, sandboxes: Sandboxes) -> None:
        self.inner, self.sandboxes = inner, sandboxes

    def open(self, envelope: Envelope) -> IIncomingMessage:
        message: IIncomingMessage = self.inner.open(envelope)
        if self.sandboxes.of_address(envelope.authenticated_as) is not None:
            # Parsed paths: no CR or LF can be in them (RFC 5321 4.1.2).
            message.write(
                b"".join(
                    b"X-Original-To: " + r.address.encode("utf-8") + b"\r\n"
                    for r in envelope.recipients
                )
            )
        return message


@implementer(ICredentialsChecker)
class SandboxChecker:
    """Sandbox logins in front of the server's own checker: a user name in the sandbox domain
    is the sandboxes' to decide (and only theirs: the dev stack's any-login checker must not
    let anyone read a sandbox); any other name goes to ``fallback`` (None: refused)."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, sandboxes: Sandboxes, fallback: ICredentialsChecker | None) -> None:
        self.sandboxes, self.fallback = sandboxes, fallback

    # ignore: avatar ids are str addresses here; Twisted's hints say bytes (as in mailhub.auth)
    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[str]:  # type: ignore[override]
        username = credentials.username
        try:
            name = username.decode("utf-8") if isinstance(username, bytes) else username
            password = credentials.password
            text = password.decode("utf-8") if isinstance(password, bytes) else password
        except UnicodeDecodeError:
            return fail(UnauthorizedLogin("not UTF-8"))
        if is_sandbox_address(name.strip()):
            address = self.sandboxes.login(name.strip(), text)
            if address is None:
                return fail(UnauthorizedLogin("authentication failed"))
            return succeed(address)
        if self.fallback is None:
            return fail(UnauthorizedLogin("authentication failed"))
        # ignore: mailhub's checkers answer str addresses; Twisted's hints say bytes
        return self.fallback.requestAvatarId(credentials)  # type: ignore[return-value]
