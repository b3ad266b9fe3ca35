"""The client side of TLS for outgoing mail: policies and connection creators.

Three policies per destination (``TLSPolicy``):

- ``opportunistic`` (default; RFC 3207 with RFC 7435's "opportunistic security"): STARTTLS when
  the peer offers it. The certificate is checked but a failed check does not stop delivery (a
  passive eavesdropper still sees nothing); the result is logged as "TLSv1.3 verified" or
  "TLSv1.3 unverified (...)". A failed handshake (or a peer that breaks the connection during
  it) makes the courier reconnect in plain text for that attempt: Twisted's own client aborts
  instead (twisted#10334).
- ``verify``: TLS is required and the certificate must verify for the host name (service-identity
  via ``optionsForClientTLS``); anything else is a temporary failure.
- ``none``: never STARTTLS.

TLS 1.2 is the minimum (RFC 8996, RFC 9325 3.1.1).

Opportunistic connections resume the last TLS session with the same host (``TLSSessionCache``;
RFC 8446 2.2 tickets, or TLS 1.2 session ids): no certificate exchange and verification, one
signature less for the peer. A resumed handshake checks no certificate, so the verification
result of the full handshake that made the session is kept with it and reported again.
"""

from __future__ import annotations

import enum
import ipaddress
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.pyopenssl import verify_hostname, verify_ip_address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from zope.interface import implementer


class TLSPolicy(enum.Enum):
    NONE = "none"
    OPPORTUNISTIC = "opportunistic"
    VERIFY = "verify"


# X509_V_ERR_* codes worth naming in a log line; others are given by number.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    10: "certificate has expired",
    9: "certificate is not yet valid",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
}


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def load_ca_pem(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM bundle (the ``ca_file`` to trust instead of the platform's)."""
    return x509.load_pem_x509_certificates(pem)


# One client context per trust setting, made once: building one per connection re-read the
# platform CA bundle every time (~30 % of the reactor's time while relaying, measured).
_CONTEXTS: dict[tuple[bytes, ...] | None, SSL.Context] = {}
# Each connection's record, for the shared verify callback (Twisted owns the app data slot).
_RECORDS: weakref.WeakKeyDictionary[SSL.Connection, OpportunisticTLS] = weakref.WeakKeyDictionary()


def _record_verify_error(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
    """VERIFY_PEER makes OpenSSL check the chain; failures are recorded on the connection's
    OpportunisticTLS and the handshake goes on (RFC 7435: encrypted beats plain text). Called
    for every certificate of a full handshake, never for a resumed one."""
    record = _RECORDS.get(conn)
    if record is not None:
        record.chain_checked = True
        if not ok:
            why = _VERIFY_ERRORS.get(errno, f"verify error {errno}")
            record.chain_errors.append(f"{why} (depth {depth})")
    return True


@dataclass(frozen=True)
class Resumable:
    """A TLS session to resume, and what the full handshake that made it found: None when
    the certificate verified for the host name, else why not."""

    session: SSL.Session
    problem: str | None


class TLSSessionCache:
    """The last resumable session per peer (host name, address, port), at most ``size``
    peers (least recently used dropped first)."""

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self._sessions: OrderedDict[Hashable, Resumable] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, key: Hashable) -> Resumable | None:
        found = self._sessions.get(key)
        if found is not None:
            self._sessions.move_to_end(key)
        return found

    def put(self, key: Hashable, session: SSL.Session | None, problem: str | None) -> None:
        if session is None:
            return
        self._sessions[key] = Resumable(session, problem)
        self._sessions.move_to_end(key)
        while len(self._sessions) > self.size:
            self._sessions.popitem(last=False)

    def forget(self, key: Hashable) -> None:
        self._sessions.pop(key, None)


def _shared_context(ca_certificates: list[x509.Certificate] | None) -> SSL.Context:
    key = None
    if ca_certificates is not None:
        key = tuple(c.fingerprint(hashes.SHA256()) for c in ca_certificates)
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
        if ca_certificates is None:
            ctx.set_default_verify_paths()
        else:
            store = ctx.get_cert_store()
            assert store is not None
            for cert in ca_certificates:
                store.add_cert(crypto.X509.from_cryptography(cert))
        ctx.set_verify(SSL.VERIFY_PEER, _record_verify_error)
        _CONTEXTS[key] = ctx
    return ctx


@implementer(IOpenSSLClientConnectionCreator)
class OpportunisticTLS:
    """Encrypts whatever the certificate; remembers whether it verified for ``hostname``.

    One instance per connection: it keeps that connection's verification result. ``resume``:
    a session of an earlier connection to the same peer, offered in the handshake.
    """

    def __init__(
        self,
        hostname: str,
        ca_certificates: list[x509.Certificate] | None,
        resume: Resumable | None = None,
    ) -> None:
        self.hostname = hostname
        self.ca_certificates = ca_certificates
        self.resume = resume
        self.chain_errors: list[str] = []
        self.chain_checked = False  # a certificate was verified: a full handshake

    @property
    def resumed(self) -> bool:
        """After the handshake: the offered session was accepted (no certificate was sent)."""
        return self.resume is not None and not self.chain_checked

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(_shared_context(self.ca_certificates), None)
        _RECORDS[conn] = self  # where the shared context's verify callback records failures
        conn.set_app_data(tlsProtocol)
        if self.resume is not None:
            conn.set_session(self.resume.session)
        if not _is_ip(self.hostname):
            conn.set_tlsext_host_name(self.hostname.encode("idna"))  # SNI (RFC 6066 3)
        conn.set_connect_state()
        return conn

    def verification(self, conn: SSL.Connection) -> str | None:
        """None when the peer's certificate verified for the host name, else why not."""
        if self.resumed:
            assert self.resume is not None
            return self.resume.problem  # the certificate was checked when it was made
        if self.chain_errors:
            return self.chain_errors[0]
        try:
            if _is_ip(self.hostname):
                verify_ip_address(conn, self.hostname)
            else:
                verify_hostname(conn, self.hostname)
        except VerificationError:
            return f"certificate does not match {self.hostname}"
        except Exception as e:  # no certificate at all, odd encodings ...
            return f"cannot check the certificate: {e}"
        return None


def verifying_creator(
    hostname: str, ca_certificates: list[x509.Certificate] | None
) -> IOpenSSLClientConnectionCreator:
    """A creator whose handshake fails unless the certificate verifies for ``hostname``."""
    trust = None
    if ca_certificates is not None:
        trust = trustRootFromCertificates(
            [Certificate(crypto.X509.from_cryptography(c)) for c in ca_certificates]
        )
    return optionsForClientTLS(
        hostname,
        trustRoot=trust,
        extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
    )


def describe(conn: Any) -> str:
    """e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384" for an SSL.Connection, "TLS" if unknown."""
    try:
        version = conn.get_protocol_version_name()
        cipher = conn.get_cipher_name()
    except Exception:
        return "TLS"
    return f"{version} {cipher}" if version and cipher else "TLS"
