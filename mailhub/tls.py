"""TLS for every listener: server contexts from PEM files, SNI, reload on SIGHUP, dev certificate.

``ServerTLS`` is what listeners get. It provides Twisted's ``IOpenSSLServerConnectionCreator``
(and the older ``IOpenSSLContextFactory``), so the same object serves STARTTLS
(``transport.startTLS(server_tls)``, RFC 3207) and implicit-TLS listeners (``tls_server_factory``,
RFC 8314). It holds one ``OpenSSL.SSL.Context`` per certificate; the client's SNI name picks one
(RFC 6066 3), anything else gets the first. ``reload()`` re-reads the files and swaps the whole set
for new connections; a connection keeps the set it started with.

Settings follow RFC 9325 (BCP 195, which replaced RFC 7525) and Mozilla's "intermediate" profile:
TLS 1.2 minimum, ECDHE with AES-GCM or ChaCha20-Poly1305 on 1.2, OpenSSL's default 1.3 suites,
no compression, no renegotiation.
"""

from __future__ import annotations

import datetime
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.application.service import Service
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    ISSLTransport,
)
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from zope.interface import implementer

from mailhub.errors import ConfigError
from mailhub.safeio import atomic_write, makedirs_durable

logger = Logger()

# RFC 9325 3.1.1: TLS 1.2 at least (1.0 and 1.1 are deprecated by RFC 8996).
MINIMUM_VERSION = SSL.TLS1_2_VERSION

# TLS 1.2 suites (RFC 9325 4.2, Mozilla intermediate): forward secret (ECDHE) AEAD only; each
# context can use the half that matches its certificate's key type (ECDSA or RSA). TLS 1.3 suites
# are not set by this list; OpenSSL's defaults (AES-GCM, ChaCha20-Poly1305) are all good.
CIPHERS_TLS12 = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)

# Warn (do not refuse) when a certificate runs out within this long: renewal is overdue.
EXPIRY_WARNING = datetime.timedelta(days=14)

# The dev certificate: 825 days is the longest validity Apple platforms accept for a server
# certificate from a user-added root; it is regenerated when fewer than 30 days are left.
DEV_VALIDITY = datetime.timedelta(days=825)
DEV_RENEW_BEFORE = datetime.timedelta(days=30)
DEV_NAMES = ("localhost",)
DEV_ADDRESSES = ("127.0.0.1", "::1")
DEV_CERT_FILE, DEV_KEY_FILE = "dev-cert.pem", "dev-key.pem"


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# --- errors ------------------------------------------------------------------------------------


class TLSFileError(Exception):
    """A certificate or key file that cannot be used, worded for the operator.

    ``role`` is "certificate" or "key" (the config key the file came from), ``path`` the file,
    ``problem`` what is wrong and ``fix`` what to do; ``str()`` gives all of it.
    """

    def __init__(self, path: Path, role: str, problem: str, fix: str) -> None:
        self.path, self.role, self.problem, self.fix = Path(path), role, problem, fix
        super().__init__(f"{path}: {problem}\n  fix: {fix}")


def as_config_error(error: TLSFileError, source: str) -> ConfigError:
    """The same problem as a ConfigError ("source: [tls] key: file: problem / fix")."""
    return ConfigError(source, f"[tls] {error.role}", f"{error.path}: {error.problem}", error.fix)


def _read(path: Path, role: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TLSFileError(
            path, role, f"{role} file not found", f"create it or fix the [tls] {role} path"
        ) from None
    except IsADirectoryError:
        raise TLSFileError(
            path, role, "is a directory, not a PEM file", f"point [tls] {role} at the file"
        ) from None
    except PermissionError:
        raise TLSFileError(
            path,
            role,
            f"no permission to read the {role} file",
            "make it readable by the user mailhub runs as (keys: mode 0600, owned by that user)",
        ) from None
    except OSError as e:
        raise TLSFileError(path, role, f"cannot read it: {e.strerror}", "check the file") from None


def _not_pem(path: Path, role: str, data: bytes) -> TLSFileError:
    if data[:1] == b"\x30":  # an ASN.1 SEQUENCE: DER
        kind = "x509" if role == "certificate" else "pkey"
        return TLSFileError(
            path,
            role,
            f"the {role} is in binary DER form, not PEM",
            f"convert it: openssl {kind} -inform der -in {path} -out {path}.pem",
        )
    return TLSFileError(
        path,
        role,
        "not a PEM file (no '-----BEGIN' line found)",
        f"give the PEM {role} file (text starting with -----BEGIN ...)",
    )


# --- reading certificates ----------------------------------------------------------------------


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, as ``openssl x509 -fingerprint -sha256`` prints it."""
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


@dataclass(frozen=True)
class CertificateInfo:
    """What an operator wants to see about a certificate (``mailhub cert``, start-up log)."""

    path: Path
    subject: str
    issuer: str
    self_signed: bool
    dns_names: tuple[str, ...]  # SAN DNS entries, lower case; the CN if there are none
    ip_addresses: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    fingerprint: str
    chain_length: int  # certificates in the file, the server's own included

    def expired(self, now: datetime.datetime | None = None) -> bool:
        return (now or _utcnow()) >= self.not_after

    def describe(self, now: datetime.datetime | None = None) -> list[str]:
        """Lines for ``mailhub cert``."""
        now = now or _utcnow()
        left = self.not_after - now
        if left.total_seconds() <= 0:
            state = "EXPIRED"
        elif now < self.not_before:
            state = "not valid yet"
        else:
            state = f"{left.days} days left"
        fmt = "%Y-%m-%d %H:%M UTC"
        return [
            f"certificate  {self.path}",
            f"sha256       {self.fingerprint}",
            f"subject      {self.subject}",
            f"names        {', '.join(self.dns_names + self.ip_addresses) or '(none)'}",
            f"issuer       {'self-signed' if self.self_signed else self.issuer}",
            f"valid        {self.not_before.strftime(fmt)} to {self.not_after.strftime(fmt)} "
            f"({state})",
        ]


def _names(certificate: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    dns: list[str] = []
    ips: list[str] = []
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        dns = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
        ips = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    if not dns:
        # RFC 6125 6.4.4: the CN is only a fallback for certificates without SAN DNS names.
        for attr in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            value = attr.value if isinstance(attr.value, str) else attr.value.decode()
            dns.append(value.lower().rstrip("."))
    return tuple(dict.fromkeys(dns)), tuple(ips)


def subject_alt_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """subjectAltName entries for ``names``: an IP address as iPAddress, anything else as
    dNSName (RFC 5280 4.2.1.6; clients match an address literal only against iPAddress)."""
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    return general


def certificate_info(path: Path, chain: Sequence[x509.Certificate]) -> CertificateInfo:
    """What to show about ``chain`` (server certificate first), read from ``path``."""
    leaf = chain[0]
    dns, ips = _names(leaf)
    return CertificateInfo(
        path=Path(path),
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        self_signed=leaf.issuer == leaf.subject,
        dns_names=dns,
        ip_addresses=ips,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        fingerprint=fingerprint(leaf),
        chain_length=len(chain),
    )


def _load_chain(path: Path) -> list[x509.Certificate]:
    data = _read(path, "certificate")
    if b"-----BEGIN" not in data:
        raise _not_pem(path, "certificate", data)
    if b"CERTIFICATE-----" not in data:
        raise TLSFileError(
            path,
            "certificate",
            "holds no certificate (only other PEM blocks, such as a private key)",
            "check that [tls] certificate and [tls] key are not swapped",
        )
    try:
        # Every CERTIFICATE block, in order; other blocks (a key in a combined file) are skipped.
        chain = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSFileError(
            path,
            "certificate",
            f"a certificate in it cannot be parsed ({e})",
            "replace the file with the PEM certificate chain your CA issued",
        ) from None
    return chain


def describe_certificate(path: Path) -> CertificateInfo:
    """Read a PEM certificate (chain) file for display. Raises TLSFileError."""
    return certificate_info(path, _load_chain(path))


def _public(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# The private keys OpenSSL can serve a certificate with (what ``Context.use_privatekey`` takes).
SigningKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)


@dataclass(frozen=True)
class CertificatePair:
    """A certificate chain and its private key, read and checked against each other."""

    certificate_path: Path
    key_path: Path
    chain: tuple[x509.Certificate, ...]
    key: SigningKey
    info: CertificateInfo


def read_pair(certificate_path: Path, key_path: Path) -> CertificatePair:
    """Read a PEM chain (server certificate first) and its PEM private key. Raises TLSFileError
    naming the file and the fix for: missing or unreadable file, not PEM, encrypted key, key that
    belongs to another certificate, chain out of order."""
    certificate_path, key_path = Path(certificate_path), Path(key_path)
    chain = _load_chain(certificate_path)

    data = _read(key_path, "key")
    if b"-----BEGIN" not in data:
        raise _not_pem(key_path, "key", data)
    if b"PRIVATE KEY-----" not in data:
        raise TLSFileError(
            key_path,
            "key",
            "holds no private key",
            "check that [tls] certificate and [tls] key are not swapped",
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise TLSFileError(
            key_path,
            "key",
            "the private key is encrypted with a passphrase",
            f"store it unencrypted and readable only by mailhub: openssl pkey -in {key_path} "
            f"-out {key_path}.new && chmod 600 {key_path}.new",
        ) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise TLSFileError(
            key_path, "key", f"the private key cannot be parsed ({e})", "give a PEM private key"
        ) from None

    mine = _public(key.public_key())
    if _public(chain[0].public_key()) != mine:
        later = [i for i, c in enumerate(chain[1:], 1) if _public(c.public_key()) == mine]
        if later:
            raise TLSFileError(
                certificate_path,
                "certificate",
                f"the chain is out of order: the key's certificate is number {later[0] + 1}",
                "put the server certificate first, then its intermediates (fullchain.pem order)",
            )
        raise TLSFileError(
            key_path,
            "key",
            f"this private key does not belong to the certificate in {certificate_path}",
            "give the key the certificate was issued for (they are usually renewed together)",
        )
    if not isinstance(key, SigningKey):  # a certificate for an X25519 or DH key, say
        raise TLSFileError(key_path, "key", "this kind of key cannot sign", "give an RSA or EC key")
    return CertificatePair(
        certificate_path, key_path, tuple(chain), key, certificate_info(certificate_path, chain)
    )


# --- contexts ----------------------------------------------------------------------------------


def server_context(pair: CertificatePair) -> SSL.Context:
    """An OpenSSL server context for one certificate with mailhub's TLS settings."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(MINIMUM_VERSION)
    ctx.set_options(
        SSL.OP_NO_COMPRESSION  # CRIME (RFC 9325 3.3)
        | SSL.OP_NO_RENEGOTIATION  # no renegotiation at all (RFC 9325 3.5; also a DoS vector)
        | SSL.OP_CIPHER_SERVER_PREFERENCE  # our order of the (all strong) 1.2 suites
        | SSL.OP_SINGLE_ECDH_USE  # fresh ECDHE key per handshake
    )
    # Elliptic-curve groups: OpenSSL >= 1.1.0 always chooses them automatically ("ECDH auto":
    # X25519, P-256, ...); there is nothing to switch on.
    ctx.set_cipher_list(CIPHERS_TLS12.encode())
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)  # idle connections do not hold 2 x 16 KiB buffers
    try:
        ctx.use_certificate(pair.chain[0])
        for extra in pair.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(pair.key)
        ctx.check_privatekey()
    except SSL.Error as e:
        raise TLSFileError(
            pair.certificate_path,
            "certificate",
            f"OpenSSL refuses this certificate or key: {_ssl_reason(e)}",
            "use an EC P-256 key or an RSA key of at least 2048 bits, signed with SHA-256 or "
            "better",
        ) from None
    return ctx


def _ssl_reason(e: SSL.Error) -> str:
    try:
        return ", ".join(str(err[2]) for err in e.args[0]) or str(e)
    except (IndexError, TypeError):
        return str(e)


@dataclass(frozen=True)
class _Entry:
    pair: CertificatePair
    context: SSL.Context


class _ContextSet:
    """One generation of contexts, indexed by name. Never changed once built: reload makes a new
    one, so a handshake in progress always finishes with the set it started with."""

    def __init__(self, entries: Sequence[_Entry]) -> None:
        self.entries = tuple(entries)
        self.default = self.entries[0]
        self.exact: dict[str, _Entry] = {}
        self.wildcard: dict[str, _Entry] = {}  # "*.example.com" stored as "example.com"
        for entry in self.entries:
            for name in entry.pair.info.dns_names:
                if name.startswith("*."):
                    self.wildcard.setdefault(name[2:], entry)  # the first listed wins
                else:
                    self.exact.setdefault(name, entry)
        for entry in self.entries:
            entry.context.set_tlsext_servername_callback(self._on_server_name)

    def lookup(self, server_name: bytes | str | None) -> _Entry:
        if not server_name:
            return self.default
        if isinstance(server_name, bytes):
            server_name = server_name.decode("ascii", "replace")
        name = server_name.lower().rstrip(".")
        if name in self.exact:
            return self.exact[name]
        # RFC 6125 6.4.3: a wildcard stands for exactly one, whole, left-most label.
        label, dot, parent = name.partition(".")
        if dot and label and parent in self.wildcard:
            return self.wildcard[parent]
        return self.default

    def _on_server_name(self, connection: SSL.Connection) -> None:
        # Called by OpenSSL during the ClientHello; an exception here would break the handshake.
        try:
            entry = self.lookup(connection.get_servername())
            if entry is not self.default:
                connection.set_context(entry.context)
        except Exception:
            logger.failure("choosing a TLS certificate by SNI failed; using the default one")


def _build(pairs: Sequence[tuple[Path, Path]]) -> _ContextSet:
    entries = []
    for certificate_path, key_path in pairs:
        pair = read_pair(certificate_path, key_path)
        entries.append(_Entry(pair, server_context(pair)))
    return _ContextSet(entries)


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ServerTLS:
    """The server side of TLS for all listeners: give it to ``transport.startTLS`` (STARTTLS) or
    to ``tls_server_factory`` (implicit TLS).

    ``pairs`` are (certificate chain file, key file); the first is the default certificate, used
    when the client sends no SNI name or one that no certificate lists. Raises TLSFileError when a
    file cannot be used.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path | str, Path | str]],
        *,
        clock: Callable[[], datetime.datetime] = _utcnow,
        log: Logger | None = None,
    ) -> None:
        if not pairs:
            raise ValueError("ServerTLS needs at least one (certificate, key) pair")
        self.pairs = tuple((Path(c), Path(k)) for c, k in pairs)
        self._clock = clock
        self._log = log if log is not None else logger
        self._current = _build(self.pairs)
        self._warn_about_dates()

    @property
    def certificates(self) -> tuple[CertificateInfo, ...]:
        """The certificates in use, the default first."""
        return tuple(e.pair.info for e in self._current.entries)

    def certificate_for(self, server_name: str | None) -> CertificateInfo:
        """The certificate a client asking for ``server_name`` (SNI) gets."""
        return self._current.lookup(server_name).pair.info

    # IOpenSSLServerConnectionCreator: what TLSMemoryBIOFactory (and so startTLS) calls.
    def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:
        return SSL.Connection(self._current.default.context, None)

    # IOpenSSLContextFactory, for APIs that still want a context.
    def getContext(self) -> SSL.Context:
        return self._current.default.context

    def reload(self) -> bool:
        """Re-read every file and use the new certificates for new connections. If any file is
        unusable, log why and keep the old ones (a bad renewal must not take the server down).
        Returns whether the new set is in use."""
        try:
            new = _build(self.pairs)
        except TLSFileError as e:
            self._log.error(
                "TLS reload failed, still using the previous certificates: {error}", error=str(e)
            )
            return False
        except Exception:
            self._log.failure("TLS reload failed, still using the previous certificates")
            return False
        self._current = new
        for info in self.certificates:
            self._log.info(
                "TLS certificate reloaded: {path} for {names}, sha256 {fingerprint}, "
                "valid until {not_after}",
                path=str(info.path),
                names=", ".join(info.dns_names),
                fingerprint=info.fingerprint,
                not_after=info.not_after.isoformat(),
            )
        self._warn_about_dates()
        return True

    def _warn_about_dates(self) -> None:
        now = self._clock()
        for info in self.certificates:
            if info.expired(now):
                # Served anyway: refusing to start would take down plain-text SMTP too, and
                # opportunistic STARTTLS senders (RFC 7435) usually do not verify.
                self._log.warn(
                    "TLS certificate {path} EXPIRED on {not_after}: clients that verify will "
                    "refuse it; renew it and send mailhub SIGHUP",
                    path=str(info.path),
                    not_after=info.not_after.isoformat(),
                )
            elif now < info.not_before:
                self._log.warn(
                    "TLS certificate {path} is not valid before {not_before}: check the clock",
                    path=str(info.path),
                    not_before=info.not_before.isoformat(),
                )
            elif info.not_after - now < EXPIRY_WARNING:
                self._log.warn(
                    "TLS certificate {path} expires on {not_after}: renew it",
                    path=str(info.path),
                    not_after=info.not_after.isoformat(),
                )
            if info.chain_length == 1 and not info.self_signed:
                self._log.warn(
                    "TLS certificate file {path} has no intermediate certificates; if clients "
                    "cannot verify it, use the full chain (Let's Encrypt: fullchain.pem)",
                    path=str(info.path),
                )


# Seconds a connection closed before its TLS handshake finished may still take to finish it.
HANDSHAKE_GRACE = 5.0


@implementer(IHandshakeListener)
class HandshakeDeadline:
    """Mixed into the SMTP, IMAP and POP3 sessions: closing one whose TLS handshake has not
    finished (implicit TLS, or after STARTTLS/STLS) must not wait for that handshake for ever.

    The handshake itself has no timer of its own: it must finish within the session's idle
    timeout (the stress timeout under stress, ``mailhub.connlimit``), which keeps running from
    the connection or the STARTTLS command, since handshake bytes are not application data.
    When that timer (or eviction, or a refusal) closes the session, Twisted's TLS layer keeps
    the goodbye until the handshake is done; a client about to send its ClientHello still gets
    it, one that does not finish within HANDSHAKE_GRACE is cut off, which frees its place.
    Twisted says when the handshake finished (``IHandshakeListener``)."""

    transport: Any
    _tls_handshaking = False
    _tls_cut_off: IDelayedCall | None = None

    def tls_handshake_started(self) -> None:
        """The transport is TLS (implicit) or has just started it (STARTTLS, STLS)."""
        self._tls_handshaking = True

    def handshakeCompleted(self) -> None:
        self._tls_handshaking = False

    def close_transport(self, clock: IReactorTime) -> None:
        """``transport.loseConnection()``, bounded by HANDSHAKE_GRACE during a handshake."""
        self.transport.loseConnection()
        if self._tls_handshaking and self._tls_cut_off is None:
            self._tls_cut_off = clock.callLater(HANDSHAKE_GRACE, self._cut_off)

    def _cut_off(self) -> None:
        self._tls_cut_off = None
        self.transport.abortConnection()

    def stop_handshake_deadline(self) -> None:
        """The connection is gone: no cut-off (call from ``connectionLost``)."""
        timer, self._tls_cut_off = self._tls_cut_off, None
        if timer is not None and timer.active():
            timer.cancel()


@implementer(ISSLTransport)
class _ImplicitTLSTransport(BufferingTLSTransport):
    """Tells the wrapped protocol it is already on TLS (``ISSLTransport``), so it does not offer
    STARTTLS on an implicit-TLS port (RFC 8314 3.3). ``TLSMemoryBIOProtocol`` only copies the
    TCP transport's interfaces, which do not include ISSLTransport."""


class _ImplicitTLSFactory(TLSMemoryBIOFactory):
    protocol = _ImplicitTLSTransport


def tls_server_factory(
    server_tls: IOpenSSLServerConnectionCreator, wrapped: IProtocolFactory
) -> TLSMemoryBIOFactory:
    """Wrap a protocol factory for an implicit-TLS listener (RFC 8314: 465, 993, 995).
    ``server_tls`` is a ServerTLS (or any IOpenSSLServerConnectionCreator)."""
    return _ImplicitTLSFactory(server_tls, False, wrapped)


# --- SIGHUP ------------------------------------------------------------------------------------


def install_sighup_handler(callback: Callable[[], object], reactor: Any) -> Callable[[], None]:
    """Run ``callback`` in the reactor on SIGHUP. Returns a function that restores the previous
    handler. Call it in the main thread once the reactor is set up (e.g. from startService, which
    twistd runs in the main thread).

    The signal handler only schedules the call with ``callFromThread``, as Twisted's own SIGINT
    handler does: a signal can arrive between any two bytecodes of reactor code. A previous
    Python-level handler is still called, so two components can both listen for SIGHUP.
    """
    sighup = getattr(signal, "SIGHUP", None)
    if sighup is None:  # Windows
        return lambda: None

    def on_sighup(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(callback)
        if callable(previous):
            previous(signum, frame)

    try:
        previous = signal.signal(sighup, on_sighup)
    except ValueError:  # not the main thread (e.g. an embedded reactor): no signals for us
        logger.warn("not in the main thread: SIGHUP will not reload TLS certificates")
        return lambda: None

    def uninstall() -> None:
        if signal.getsignal(sighup) is on_sighup:
            signal.signal(sighup, previous)

    return uninstall


class SighupReloadService(Service):
    """Calls ``callback`` (e.g. ``ServerTLS.reload``) on SIGHUP while the service runs."""

    name = "sighup-reload"

    def __init__(self, callback: Callable[[], object], reactor: Any = None) -> None:
        self.callback = callback
        self._reactor = reactor
        self._uninstall: Callable[[], None] | None = None

    def startService(self) -> None:
        super().startService()
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        self._uninstall = install_sighup_handler(self.callback, reactor)

    def stopService(self) -> Any:
        if self._uninstall is not None:
            self._uninstall()
            self._uninstall = None
        return super().stopService()


# --- the dev certificate -----------------------------------------------------------------------


@dataclass(frozen=True)
class DevCertificate:
    certificate_path: Path
    key_path: Path
    fingerprint: str
    created: bool  # made just now (False: an existing one was reused)
    info: CertificateInfo


def dev_certificate_paths(data_dir: Path | str) -> tuple[Path, Path]:
    tls_dir = Path(data_dir) / "tls"
    return tls_dir / DEV_CERT_FILE, tls_dir / DEV_KEY_FILE


def ensure_dev_certificate(
    data_dir: Path | str,
    *,
    names: Sequence[str] = DEV_NAMES,
    clock: Callable[[], datetime.datetime] = _utcnow,
) -> DevCertificate:
    """The dev stack's self-signed certificate in ``DATA/tls/``: reused when it is there, usable
    and covers ``names``; otherwise (first start, damaged, about to expire) made anew."""
    certificate_path, key_path = dev_certificate_paths(data_dir)
    if certificate_path.exists() or key_path.exists():
        try:
            pair = read_pair(certificate_path, key_path)
        except TLSFileError as e:
            logger.warn("dev TLS certificate unusable, making a new one: {error}", error=str(e))
        else:
            wanted = {n.lower() for n in names}
            if pair.info.not_after - clock() < DEV_RENEW_BEFORE:
                logger.info("dev TLS certificate expires soon, making a new one")
            elif not wanted <= set(pair.info.dns_names):
                logger.info(
                    "dev TLS certificate lacks a name in {names}, making a new one",
                    names=sorted(wanted),
                )
            else:
                return DevCertificate(
                    certificate_path, key_path, pair.info.fingerprint, False, pair.info
                )
    return new_dev_certificate(data_dir, names=names, clock=clock)


def new_dev_certificate(
    data_dir: Path | str,
    *,
    names: Sequence[str] = DEV_NAMES,
    clock: Callable[[], datetime.datetime] = _utcnow,
) -> DevCertificate:
    """Make a new self-signed dev certificate (replacing any old one) and return it."""
    certificate_path, key_path = dev_certificate_paths(data_dir)
    makedirs_durable(certificate_path.parent, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    addresses: list[IPv4Address | IPv6Address] = [ip_address(a) for a in DEV_ADDRESSES]
    certificate = _self_signed(
        key, list(dict.fromkeys(n.lower() for n in names)), addresses, clock()
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Each file appears whole or not at all (temp, fsync, rename, fsync dir), the key with mode
    # 0600 from its creation. Key first: a crash between the two renames leaves a pair that does
    # not match, which the next start detects and replaces.
    atomic_write(key_path, key_pem)
    atomic_write(certificate_path, certificate.public_bytes(serialization.Encoding.PEM))
    os.chmod(certificate_path, 0o644)  # public; a developer may want to import it elsewhere
    info = certificate_info(certificate_path, [certificate])
    return DevCertificate(certificate_path, key_path, info.fingerprint, True, info)


def _self_signed(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    names: Sequence[str],
    addresses: Sequence[IPv4Address | IPv6Address],
    now: datetime.datetime,
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailhub development certificate"),
        ]
    )
    general: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    general += [x509.IPAddress(a) for a in addresses]
    public = key.public_key()
    start = now - datetime.timedelta(hours=1)  # tolerate a little clock skew
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + DEV_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(general), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
