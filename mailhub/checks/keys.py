"""DKIM signing keys (RFC 6376 3.6, RFC 8463): which keys sign for which domain.

``SigningKey`` is one selector's private key. Keys live as files made by ``mailhub dkim
keygen`` under ``[dkim] key_dir`` (default ``<data_dir>/dkim``)::

    <key_dir>/<domain>/<selector>.key       PKCS#8 PEM, mode 0600 (folders 0700)
    <key_dir>/<domain>/<selector>.retired   present: the selector no longer signs

The algorithm is the PEM's key type (RSA or Ed25519); nothing else is recorded. A retired
selector keeps its file so ``mailhub dkim show`` still prints its record: rotation is a new
selector, published, then the old one retired, and its DNS record removed some days later
(RFC 6376 3.6.1 says nothing of it; M3AAWG's DKIM key rotation practice does).

``KeyStore`` reads the files at start and again when a domain's folder changes (its mtime: a new
key, a retirement, a removal), checked at most every ``check_interval`` seconds; the files are a
few hundred bytes, so reading them on the reactor thread costs microseconds.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mailhub.config import normalise_domain
from mailhub.safeio import write_all

RSA_SHA256 = "rsa-sha256"
ED25519_SHA256 = "ed25519-sha256"

# RSA sizes keygen makes: RFC 8301 3.2 says signers MUST use at least 1024 bits and SHOULD use
# 2048; verifiers need not take more than 4096 (RFC 6376 3.3.3), so a bigger key may not verify.
MIN_RSA_BITS, MAX_RSA_BITS, DEFAULT_RSA_BITS = 1024, 4096, 2048

KEY_SUFFIX, RETIRED_SUFFIX = ".key", ".retired"
# RFC 6376 3.1: selector = sub-domain *( "." sub-domain ), sub-domain per RFC 5321.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_SELECTOR = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# A TXT character-string holds at most 255 octets (RFC 1035 3.3.14; RFC 6376 3.6.2.2).
TXT_STRING_MAX = 255

log = Logger()


class KeyFileError(Exception):
    """A key file cannot be made or read: the text says which and why."""


@dataclass(frozen=True)
class SigningKey:
    """One selector's private key for one domain: signs DKIM-Signature and ARC headers."""

    domain: str  # the d= domain (A-labels, lower case)
    selector: str  # the s= selector
    algorithm: str  # RSA_SHA256 or ED25519_SHA256
    private_key: bytes  # PEM (PKCS#8) for RSA; for Ed25519 as dkimpy takes it (base64 seed)


@dataclass(frozen=True)
class KeyFile:
    """A key as kept on disk: the signing key, whether it is retired, and its public half."""

    key: SigningKey
    retired: bool
    path: Path
    public_key: bytes  # what p= carries, undecoded: SubjectPublicKeyInfo DER or 32 raw octets
    bits: int  # RSA modulus size; 256 for Ed25519

    @property
    def record_name(self) -> str:
        return record_name(self.key.domain, self.key.selector)

    @property
    def record(self) -> str:
        return dns_record(self.key.algorithm, self.public_key)


def record_name(domain: str, selector: str) -> str:
    """RFC 6376 3.6.2.1: the key's TXT record lives at <selector>._domainkey.<domain>."""
    return f"{selector}._domainkey.{domain}"


def dns_record(algorithm: str, public_key: bytes) -> str:
    """The key record (RFC 6376 3.6.1): k=rsa with the SubjectPublicKeyInfo in p=, or k=ed25519
    with the 32-octet public key itself (RFC 8463 3, 4)."""
    k = "ed25519" if algorithm == ED25519_SHA256 else "rsa"
    return f"v=DKIM1; k={k}; p={base64.b64encode(public_key).decode('ascii')}"


def zone_line(name: str, value: str) -> str:
    """A zone-file line for the record, the value cut into quoted strings of at most 255
    octets: a 2048-bit key's record is longer than one string may be (RFC 6376 3.6.2.2:
    verifiers join the strings without anything between them)."""
    pieces = [value[i : i + TXT_STRING_MAX] for i in range(0, len(value), TXT_STRING_MAX)] or [""]
    strings = " ".join(f'"{p}"' for p in pieces)
    if len(pieces) > 1:
        strings = f"( {strings} )"
    return f"{name}. IN TXT {strings}"


def check_selector(selector: str) -> str:
    """The selector in lower case, or KeyFileError when it is not DNS label syntax (it becomes a
    file name too: no slash, no dot at either end)."""
    text = selector.strip().lower()
    if len(text) > 200 or not _SELECTOR.fullmatch(text):
        raise KeyFileError(
            f"selector {selector!r}: letters, digits and hyphens (labels joined by dots) only"
        )
    return text


def check_domain(domain: str) -> str:
    try:
        return normalise_domain(domain)
    except ValueError as e:
        raise KeyFileError(str(e)) from None


# --- making keys ------------------------------------------------------------------------------


def generate(algorithm: str, bits: int = DEFAULT_RSA_BITS) -> bytes:
    """A new private key as PKCS#8 PEM."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == RSA_SHA256:
        if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
            raise KeyFileError(
                f"{bits}-bit RSA: use {MIN_RSA_BITS} to {MAX_RSA_BITS} bits "
                f"(RFC 8301 3.2: at least 1024; receivers need not verify beyond 4096)"
            )
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif algorithm == ED25519_SHA256:
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise KeyFileError(f"unknown algorithm {algorithm!r}")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _owner(key_dir: Path) -> tuple[int, int] | None:
    """Who should own new key files: when root runs ``mailhub dkim keygen``, the owner of the
    nearest existing folder on the way to ``key_dir`` (the data directory, owned by the user the
    server runs as), so that the server can read its keys; None: leave them to whoever runs it."""
    if os.geteuid() != 0:
        return None
    probe = key_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    st = os.stat(probe)
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


def _private_dir(path: Path, owner: tuple[int, int] | None) -> None:
    """Make ``path`` (and parents) a folder only its owner may enter; an existing one is left
    as the operator made it."""
    if path.is_dir():
        return
    _private_dir(path.parent, owner)
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)  # whatever the umask
    if owner is not None:
        os.chown(path, *owner)


def write_key(key_dir: Path, domain: str, selector: str, pem: bytes) -> KeyFile:
    """Write a new key file (0600, via a temporary name, fsync'd). Refuses to replace one: a
    published selector's key changes only by a new selector (rotation)."""
    domain, selector = check_domain(domain), check_selector(selector)
    folder = key_dir / domain
    owner = _owner(key_dir)
    _private_dir(folder, owner)
    path = folder / (selector + KEY_SUFFIX)
    if path.exists():
        raise KeyFileError(
            f"{path} exists: a selector's key is never replaced (receivers may still check "
            "mail signed with it); rotate by making a key with a new --selector"
        )
    tmp = folder / f".{selector}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        write_all(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if a parallel keygen made the same selector first
    except FileExistsError:
        raise KeyFileError(f"{path} exists") from None
    finally:
        os.unlink(tmp)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return read_key(path)


def retire(key_dir: Path, domain: str, selector: str) -> KeyFile:
    """Mark a selector retired: it stops signing (``KeyStore`` notices within seconds) and its
    file stays so that its record can still be shown until it is removed from DNS."""
    domain, selector = check_domain(domain), check_selector(selector)
    path = key_dir / domain / (selector + KEY_SUFFIX)
    if not path.exists():
        raise KeyFileError(f"no key {selector!r} for {domain} (looked for {path})")
    marker = path.with_suffix(RETIRED_SUFFIX)
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        owner = _owner(key_dir)
        if owner is not None:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)
    return read_key(path)


# --- reading keys -----------------------------------------------------------------------------


def read_key(path: Path, *, validate: bool = True) -> KeyFile:
    """One key file (``<key_dir>/<domain>/<selector>.key``) as a ``KeyFile``.

    ``validate`` checks an RSA key's numbers (OpenSSL's RSA_check_key): 75 ms for a 2048-bit
    key, half a second for 4096 bits, so the server (reading on the reactor thread) skips it for
    the files keygen made and checked; the admin commands check."""
    domain, selector = path.parent.name, path.name.removesuffix(KEY_SUFFIX)
    try:
        pem = path.read_bytes()
        private = serialization.load_pem_private_key(
            pem, password=None, unsafe_skip_rsa_key_validation=not validate
        )
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({e})") from None
    if isinstance(private, rsa.RSAPrivateKey):
        algorithm, bits = RSA_SHA256, private.key_size
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        signing = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        algorithm, bits = ED25519_SHA256, 256
        public = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        # dkimpy takes the 32-octet seed (RFC 8032 5.1.5's private key), base64-encoded.
        seed = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        signing = base64.b64encode(seed)
    else:
        raise KeyFileError(f"{path}: an {type(private).__name__}, not an RSA or Ed25519 key")
    return KeyFile(
        key=SigningKey(domain, selector, algorithm, signing),
        retired=path.with_suffix(RETIRED_SUFFIX).exists(),
        path=path,
        public_key=public,
        bits=bits,
    )


def read_domain(folder: Path, *, validate: bool = True) -> list[KeyFile]:
    """Every key of one domain's folder, sorted by selector; unreadable ones are logged and
    skipped (one broken file must not stop the others signing)."""
    out = []
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(KEY_SUFFIX))
    except FileNotFoundError:
        return []
    for name in names:
        try:
            out.append(read_key(folder / name, validate=validate))
        except (KeyFileError, OSError) as e:
            log.error("dkim: key {path} skipped: {error}", path=str(folder / name), error=e)
    return out


def domains(key_dir: Path) -> list[str]:
    """The domains that have a key folder, sorted."""
    try:
        return sorted(n for n in os.listdir(key_dir) if (key_dir / n).is_dir())
    except FileNotFoundError:
        return []


def all_keys(key_dir: Path) -> Iterator[KeyFile]:
    for domain in domains(key_dir):
        yield from read_domain(key_dir / domain)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


class KeyStore:
    """The signing keys under ``key_dir``: ``keys_for(domain)`` gives the active ones.

    A domain's folder is read on first use and again when its mtime changes (keygen and retire
    add files there), looked at no more than every ``check_interval`` seconds of ``clock``.
    """

    def __init__(self, key_dir: Path, clock: IReactorTime, check_interval: float = 2.0) -> None:
        self.key_dir = key_dir
        self._clock = clock
        self.check_interval = check_interval
        self._cache: dict[str, tuple[tuple[int, int] | None, list[KeyFile]]] = {}
        self._checked: dict[str, float] = {}
        self._any: tuple[float, bool] | None = None

    def key_files(self, domain: str) -> list[KeyFile]:
        """Every key of ``domain``, retired ones too."""
        domain = domain.lower().rstrip(".")
        if not domain or "/" in domain or domain.startswith("."):
            return []
        now = self._clock.seconds()
        cached = self._cache.get(domain)
        if cached is not None and now - self._checked.get(domain, -1e18) < self.check_interval:
            return cached[1]
        self._checked[domain] = now
        folder = self.key_dir / domain
        stamp = _stamp(folder)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        files = read_domain(folder, validate=False) if stamp is not None else []
        if cached is not None or files:
            log.info(
                "dkim: {domain}: signing with {selectors}",
                domain=domain,
                selectors=", ".join(f.key.selector for f in files if not f.retired) or "nothing",
            )
        self._cache[domain] = (stamp, files)
        return files

    def keys_for(self, domain: str) -> list[SigningKey]:
        """The active (not retired) keys of exactly ``domain``."""
        return [f.key for f in self.key_files(domain) if not f.retired]

    def keys_for_author(self, domain: str) -> list[SigningKey]:
        """The keys that sign for an author domain: its own, else those of the nearest parent
        domain that has some. Under DMARC's relaxed alignment (RFC 7489 3.1.1, the default) a
        d= of example.com is aligned with From: ...@mail.example.com."""
        labels = domain.lower().rstrip(".").split(".")
        # The domain itself, then its parents, never a lone top-level label.
        for i in range(max(1, len(labels) - 1)):
            keys = self.keys_for(".".join(labels[i:]))
            if keys:
                return keys
        return []

    def has_keys(self) -> bool:
        """Whether any domain has a key folder (signing is a no-op otherwise); looked at no more
        than every ``check_interval`` seconds."""
        now = self._clock.seconds()
        if self._any is None or now - self._any[0] >= self.check_interval:
            self._any = (now, bool(domains(self.key_dir)))
        return self._any[1]
