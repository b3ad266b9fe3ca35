"""Bad TLS certificates on demand, and the TLS wrapper that presents them when a rule says so.

Each certificate is bad in exactly one way (``BadCertificate``): expired, self-signed, or for
the wrong name. Signed by a ``CertificateIssuer`` the clients under test trust (``mailhub.testing``
sets one), so a client that refuses it refuses it for that one reason.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLContextFactory, IOpenSSLServerConnectionCreator
from zope.interface import implementer

from mailhub.faults.rules import Action, BadCertificate, FaultRules, Stage
from mailhub.tls import (
    CertificatePair,
    SigningKey,
    certificate_info,
    server_context,
    subject_alt_names,
)

WRONG_NAME = "wrong-name.invalid"  # RFC 2606: can never be a real host


@dataclass(frozen=True)
class CertificateIssuer:
    """A CA certificate and key the clients under test trust: bad certificates are signed by it,
    so each one is bad for exactly its one reason. ``chain`` is sent after the leaf."""

    certificate: x509.Certificate
    key: PrivateKeyTypes
    chain: tuple[x509.Certificate, ...] = ()


def make_bad_certificate(
    kind: BadCertificate,
    names: Sequence[str],
    issuer: CertificateIssuer | None = None,
    now: datetime.datetime | None = None,
) -> tuple[tuple[x509.Certificate, ...], ec.EllipticCurvePrivateKey]:
    """A (chain, key) bad in the way ``kind`` says, for ``names`` (DNS names or IP addresses).

    Without an issuer every kind is self-signed (the dev stack's own certificate is too, so a
    client that pinned it still refuses each)."""
    now = now or datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    key = ec.generate_private_key(ec.SECP256R1())
    if kind is BadCertificate.WRONG_NAME:
        names = (WRONG_NAME,)
    not_before, not_after = now - day, now + 30 * day
    if kind is BadCertificate.EXPIRED:
        not_before, not_after = now - 60 * day, now - day
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "localhost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"mailhub fault: {kind.value}"),
        ]
    )
    general = subject_alt_names(names)
    signer_cert = (
        issuer if (issuer is not None and kind is not BadCertificate.SELF_SIGNED) else None
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_cert.certificate.subject if signer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(general), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    signing_key: Any = signer_cert.key if signer_cert else key
    certificate = builder.sign(signing_key, hashes.SHA256())
    chain = (certificate, *(signer_cert.chain if signer_cert else ()))
    return chain, key


def context_for(chain: Sequence[x509.Certificate], key: SigningKey) -> SSL.Context:
    """A server context with mailhub's usual TLS settings (tls.server_context) for a chain."""
    where = Path(f"<fault certificate {chain[0].subject.rfc4514_string()}>")
    info = certificate_info(where, chain)
    return server_context(CertificatePair(where, where, tuple(chain), key, info))


def bad_context(rules: FaultRules, kind: BadCertificate) -> SSL.Context:
    """The server context presenting a bad certificate of ``kind`` for ``rules`` (made once, then
    kept in ``rules.certificate_contexts``; setting ``certificate_issuer`` or
    ``certificate_names`` after that does not change it, ``forget_certificates`` does)."""
    context = rules.certificate_contexts.get(kind)
    if context is None:
        chain, key = make_bad_certificate(kind, rules.certificate_names, rules.certificate_issuer)
        context = rules.certificate_contexts[kind] = context_for(chain, key)
    return context


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class FaultyServerTLS:
    """Wraps the real TLS connection creator (``tls.ServerTLS``) for the SMTP listeners: each
    handshake, STARTTLS or implicit, asks the rules whether to present a bad certificate."""

    def __init__(self, real: Any, rules: FaultRules) -> None:
        self.real, self.rules = real, rules

    def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:
        if Stage.STARTTLS in self.rules.stages:
            rule = self.rules.decide(Stage.STARTTLS, actions=frozenset({Action.BAD_CERTIFICATE}))
            if rule is not None and rule.certificate is not None:
                return SSL.Connection(bad_context(self.rules, rule.certificate), None)
        return self.real.serverConnectionForTLS(protocol)

    def getContext(self) -> SSL.Context:
        return self.real.getContext()

    def __getattr__(self, name: str) -> Any:
        # certificates, certificate_for, reload...: whatever else the real one offers.
        return getattr(self.real, name)
