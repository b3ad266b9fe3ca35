"""Outgoing DKIM signatures (RFC 6376, RFC 8463) with dkimpy, and the sink that adds them.

``sign(message, keys)`` gives the ``DKIM-Signature:`` fields to put on top of ``message``, one per
key: with a domain's RSA and Ed25519 keys both, the message is signed twice (RFC 8463 5 expects
signers to keep an RSA signature beside Ed25519 ones while verifiers catch up). Every signature:

- ``c=relaxed/relaxed`` (RFC 6376 3.4.2, 3.4.4): survives the re-folding and trailing-space
  changes relays make;
- ``h=`` the header fields RFC 6376 5.4.1 recommends, those present, plus the MIME ones, with
  ``From`` listed once more than it occurs, so no ``From`` can be added (5.4.2, 8.15);
- never ``l=``: a body limit lets anyone append text under the signature (8.2);
- ``t=`` now. dkimpy takes it from ``time.time()`` itself; it has no clock parameter.

Which domain signs: the author domain, that of the header ``From:`` (RFC 7489 3.1: DMARC wants
d= aligned with it), with its own keys or a parent domain's (relaxed alignment). A message with
no ``From:``, several, or a domain without keys goes unsigned (logged at debug level).

``SigningSink`` is the ``IMessageSink`` decorator for mail that authenticated users submit: it
holds the message (in memory up to ``memory_limit``, then in an unnamed temporary file), signs
it at ``commit`` in a worker thread (dkimpy's fields and canonicalisation with OpenSSL's RSA,
``opensslsign``: about 0.6 ms of CPU per RSA-2048 signature of a 4 KiB message, and the body's
canonicalisation grows with its size, ``benchmarks/dkim_sign.py``), then writes the
signatures and the message to the sink inside. A message larger than ``max_size`` goes
unsigned (logged): dkimpy needs the whole message in memory, about five times its size while
canonicalising.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import dkim
from twisted.internet.defer import Deferred, DeferredSemaphore, succeed
from twisted.internet.task import CooperativeTask, cooperate
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhub.checks.keys import KeyStore, SigningKey
from mailhub.checks.opensslsign import DKIMSigner
from mailhub.config import normalise_domain
from mailhub.envelope import Envelope
from mailhub.interfaces import DeliveryError, IIncomingMessage, IMessageSink
from mailhub.message.headers import parse_address_list, split_fields
from mailhub.safeio import write_all

# RFC 6376 5.4.1's list, the MIME fields whose change alters what is shown (RFC 2045), and
# List-Unsubscribe-Post (RFC 8058 4: it MUST be signed for one-click unsubscribing to count).
SIGNED_FIELDS = frozenset(
    {
        b"from",
        b"sender",
        b"reply-to",
        b"subject",
        b"date",
        b"message-id",
        b"to",
        b"cc",
        b"mime-version",
        b"content-type",
        b"content-transfer-encoding",
        b"content-id",
        b"content-description",
        b"resent-date",
        b"resent-from",
        b"resent-sender",
        b"resent-to",
        b"resent-cc",
        b"resent-message-id",
        b"in-reply-to",
        b"references",
        b"list-id",
        b"list-help",
        b"list-unsubscribe",
        b"list-unsubscribe-post",
        b"list-subscribe",
        b"list-post",
        b"list-owner",
        b"list-archive",
    }
)
# Signed once more than they occur (RFC 6376 5.4.2): adding one breaks the signature.
OVERSIGNED = (b"from",)

# Where the header section is looked for the author: a header longer than this is not signed.
HEAD_LIMIT = 256 * 1024
# Bigger messages are signed one at a time (each needs about five times its size in memory).
BIG_MESSAGE = 1024 * 1024

# dkimpy logs through the stdlib; its debug lines would name the keys' domains for every message.
_DKIMPY_LOG = logging.getLogger("mailhub.checks.dkimpy")


class SigningError(Exception):
    """dkimpy refused to sign (a broken key, a message it cannot parse)."""


def signed_fields(headers: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """The h= list for a message with these (name, value) header fields."""
    names = [name.lower() for name, _ in headers if name.lower() in SIGNED_FIELDS]
    return names + [name for name in OVERSIGNED if name in names]


def sign(message: bytes, keys: Sequence[SigningKey]) -> bytes:
    """The DKIM-Signature fields (CRLF-terminated, folded) to put on top of ``message``, one per
    key, in the order of ``keys``. Raises SigningError."""
    if not keys:
        return b""
    try:
        # dkimpy's signer with OpenSSL's RSA (about 10x faster; byte-identical output)
        signer = DKIMSigner(message, logger=_DKIMPY_LOG, linesep=b"\r\n")
        fields = signed_fields(signer.headers)
        out = []
        for key in keys:
            out.append(
                signer.sign(
                    key.selector.encode("ascii"),
                    key.domain.encode("ascii"),
                    key.private_key,
                    signature_algorithm=key.algorithm.encode("ascii"),
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=fields,
                    length=False,  # never l= (RFC 6376 8.2)
                )
            )
    except dkim.DKIMException as e:
        raise SigningError(str(e)) from e
    except Exception as e:  # dkimpy on odd input (a header starting with a continuation line)
        raise SigningError(f"dkimpy failed: {e!r}") from e
    return b"".join(out)


def header_section(message: bytes) -> bytes | None:
    """The header section at the start of ``message`` (up to its empty line), or None when it
    does not end within the bytes given."""
    if message.startswith((b"\r\n", b"\n")):
        return b""
    end = message.find(b"\n\r\n")
    bare = message.find(b"\n\n")
    ends = [i for i in (end, bare) if i >= 0]
    return message[: min(ends) + 1] if ends else None


def author_domain(head: bytes) -> str | None:
    """The domain of the one address of the one ``From:`` field (RFC 5322 3.6.2), in A-labels;
    None when there is no From, several, a group, or no domain (such mail is not signed)."""
    froms = [value for name, value in split_fields(head) if name.lower() == b"from"]
    if len(froms) != 1 or len(froms[0]) > 4096:
        return None
    mailboxes = [a for a in parse_address_list(froms[0]) if a[2] is not None or a[3] is not None]
    if len(mailboxes) != 1 or not mailboxes[0][3]:
        return None
    host = mailboxes[0][3]
    try:
        return normalise_domain(host.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


class Signer:
    """Signs with the keys of a ``KeyStore``, in worker threads (``run``), one big message at a
    time; a message over ``max_size`` octets is not signed."""

    def __init__(
        self,
        keystore: KeyStore,
        *,
        max_size: int = 25 * 1024 * 1024,
        run: Callable[..., Deferred[Any]] = deferToThread,
        log: Logger | None = None,
    ) -> None:
        self.keystore = keystore
        self.max_size = max_size
        self.run = run
        self.log = log if log is not None else Logger(namespace="mailhub.checks.signing")
        self._big = DeferredSemaphore(1)

    def keys_for_head(self, head: bytes | None, what: str) -> list[SigningKey]:
        """The keys that sign a message with this header section (``what`` names it in logs)."""
        domain = author_domain(head) if head is not None else None
        if domain is None:
            self.log.debug("dkim: {what} not signed: no single From address", what=what)
            return []
        keys = self.keystore.keys_for_author(domain)
        if not keys:
            self.log.debug("dkim: {what} not signed: no key for {domain}", what=what, domain=domain)
        return keys

    def signatures(
        self, keys: Sequence[SigningKey], size: int, read: Callable[[], bytes], what: str
    ) -> Deferred[bytes]:
        """The DKIM-Signature fields for the message ``read()`` gives (called in the worker);
        b"" when it is too big or dkimpy fails (logged: the mail goes out unsigned rather than
        not at all)."""
        if not keys:
            return succeed(b"")
        if size > self.max_size:
            self.log.info(
                "dkim: {what} not signed: {size} octets is over [dkim] max_sign_size ({max})",
                what=what,
                size=size,
                max=self.max_size,
            )
            return succeed(b"")

        def work() -> bytes:
            return sign(read(), keys)

        d: Deferred[bytes]
        if size > BIG_MESSAGE:
            d = self._big.run(self.run, work)
        else:
            d = self.run(work)

        def signed(fields: bytes) -> bytes:
            self.log.debug(
                "dkim: {what} signed by {signers}",
                what=what,
                signers=", ".join(f"{k.selector}._domainkey.{k.domain}" for k in keys),
            )
            return fields

        def failed(f: Failure) -> bytes:
            if f.check(SigningError):  # the message (or a key) is odd: no traceback
                self.log.warn("dkim: {what} not signed: {why}", what=what, why=f.value)
            else:
                self.log.failure("dkim: {what} not signed", f, what=what)
            return b""

        return d.addCallbacks(signed, failed)

    def sign_bytes(
        self, message: bytes, domain: str | None = None, what: str = "message"
    ) -> Deferred[bytes]:
        """The signatures for a whole message in hand: with ``domain``'s keys (or a parent's)
        when given, else the author domain's (a bounce names ``domain``)."""
        if domain is not None:
            keys = self.keystore.keys_for_author(domain)
            if not keys:
                self.log.debug("dkim: {what} not signed: no key for {d}", what=what, d=domain)
        else:
            keys = self.keys_for_head(header_section(message[:HEAD_LIMIT]), what)
        return self.signatures(keys, len(message), lambda: message, what)


@implementer(IMessageSink)
class SigningSink:
    """Wraps ``inner`` so that mail from authenticated users is DKIM-signed (module docstring).

    Unauthenticated sessions, and every session while no key exists, go straight to ``inner``.
    ``spool_dir`` holds messages over ``memory_limit`` octets (unnamed files: O_TMPFILE).
    """

    def __init__(
        self,
        inner: IMessageSink,
        keystore: KeyStore,
        *,
        max_size: int = 25 * 1024 * 1024,
        spool_dir: Path | None = None,
        memory_limit: int = 1024 * 1024,
        run: Callable[..., Deferred[Any]] = deferToThread,
        cooperate: Callable[[Iterator[Deferred[None] | None]], CooperativeTask] = cooperate,
        log: Logger | None = None,
    ) -> None:
        self._inner = inner
        self.signer = Signer(keystore, max_size=max_size, run=run, log=log)
        self.spool_dir = spool_dir
        self.memory_limit = memory_limit
        # Copies a spooled message on to ``inner`` a chunk per turn: 30 MiB read and handed on
        # in one go held the reactor for about 20 ms more than the inner sink's own writes.
        self.cooperate = cooperate

    def open(self, envelope: Envelope) -> IIncomingMessage:
        inner = self._inner.open(envelope)
        if envelope.authenticated_as is None or not self.signer.keystore.has_keys():
            return inner
        return _SigningMessage(inner, envelope, self)

    def spool_file(self) -> IO[bytes]:
        if self.spool_dir is not None:
            self.spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return tempfile.TemporaryFile(dir=self.spool_dir, buffering=0)


# Octets handed to the inner message per write when copying a spooled message.
_CHUNK = 256 * 1024


@implementer(IIncomingMessage)
class _SigningMessage:
    """One message through ``SigningSink``: held until commit, then signed and passed on."""

    def __init__(self, inner: IIncomingMessage, envelope: Envelope, sink: SigningSink) -> None:
        self._inner = inner
        self.envelope = envelope
        self._sink = sink
        self._head = bytearray()  # the first HEAD_LIMIT octets, for the From field
        self._buf = bytearray()  # everything, until it grows past memory_limit
        self._file: IO[bytes] | None = None
        self._size = 0

    def write(self, data: bytes) -> None:
        if len(self._head) < HEAD_LIMIT:
            self._head += data[: HEAD_LIMIT - len(self._head)]
        self._size += len(data)
        if self._file is None:
            self._buf += data
            if len(self._buf) > self._sink.memory_limit:
                self._file = self._sink.spool_file()
                write_all(self._file.fileno(), self._buf)
                self._buf = bytearray()
        else:
            write_all(self._file.fileno(), data)

    def ready(self) -> Deferred[None] | None:
        return None  # held here until commit (a temporary file past memory_limit)

    def _read_all(self) -> bytes:
        """The whole message (in the worker thread when it was spooled)."""
        if self._file is None:
            return bytes(self._buf)
        return os.pread(self._file.fileno(), self._size, 0)

    def commit(self) -> Deferred[str]:
        signer = self._sink.signer
        what = self.envelope.queue_id or "message"
        keys = signer.keys_for_head(header_section(bytes(self._head)), what)
        d = signer.signatures(keys, self._size, self._read_all, what)
        return d.addCallback(self._forward).addErrback(self._failed)

    def _forward(self, signatures: bytes) -> Deferred[str]:
        inner = self._inner
        if signatures:
            inner.write(signatures)
        if self._file is None:
            inner.write(bytes(self._buf))
            self._buf = bytearray()
            return inner.commit()
        copied = self._sink.cooperate(self._copy_spooled()).whenDone()
        return copied.addCallback(lambda _: inner.commit())

    def _copy_spooled(self) -> Iterator[Deferred[None] | None]:
        """The spooled message on to the inner message, one chunk per reactor turn."""
        assert self._file is not None
        fd, offset = self._file.fileno(), 0
        while offset < self._size:
            chunk = os.pread(fd, min(_CHUNK, self._size - offset), offset)
            if not chunk:
                raise DeliveryError("the spooled message is shorter than written")
            self._inner.write(chunk)
            offset += len(chunk)
            yield self._inner.ready()  # a Deferred: the cooperator waits for it
        self._close()

    def _failed(self, f: Failure) -> Failure:
        # A write refused (DeliveryError) or a failed commit: nothing may stay (abort is safe
        # after a commit that failed: the inner message has cleaned up already).
        self._close()
        self._inner.abort()
        return f

    def abort(self) -> None:
        self._close()
        self._buf = bytearray()
        self._inner.abort()

    def _close(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            f.close()
