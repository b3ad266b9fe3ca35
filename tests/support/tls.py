"""A throw-away certificate authority for tests, and a blocking TLS client that really verifies.

``CertificateAuthority`` is a root with one intermediate, as public CAs are: server certificates
are signed by the intermediate and their files hold leaf + intermediate, so a client that trusts
only the root verifies the server only when the server sends its chain.
"""

from __future__ import annotations

import datetime
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _ca_certificate(
    subject: x509.Name, key: Any, issuer: x509.Name, signer: Any, path_length: int | None
) -> x509.Certificate:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 365 * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(signer, hashes.SHA256())
    )


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]  # leaf first, then intermediates (not the root)

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``stem-cert.pem`` (full chain) and ``stem-key.pem``; return their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{stem}-cert.pem", directory / f"{stem}-key.pem"
        cert_path.write_bytes(cert_pem(*self.chain))
        key_path.write_bytes(key_pem(self.key))
        return cert_path, key_path


class CertificateAuthority:
    """A root CA and an intermediate that issues server certificates."""

    def __init__(self, name: str = "mailhub test") -> None:
        self.root_key = _key()
        root_name = _name(f"{name} root CA")
        self.root = _ca_certificate(root_name, self.root_key, root_name, self.root_key, 1)
        self.intermediate_key = _key()
        self.intermediate = _ca_certificate(
            _name(f"{name} intermediate CA"),
            self.intermediate_key,
            root_name,
            self.root_key,
            0,
        )

    def root_pem(self) -> bytes:
        return cert_pem(self.root)

    def write_root(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "test-ca.pem"
        path.write_bytes(self.root_pem())
        return path

    def issue(
        self,
        dns_names: Sequence[str],
        *,
        ip_addresses: Sequence[str] = (),
        common_name: str | None = None,
        san: bool = True,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> Issued:
        """A server certificate (serverAuth) for the names, signed by the intermediate."""
        key = _key()
        now = _now()
        cn = common_name or (dns_names[0] if dns_names else "server")
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _DAY)
            .not_valid_after(not_after or now + 90 * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        if san:
            general: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
            general += [x509.IPAddress(ip_address(a)) for a in ip_addresses]
            builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
        certificate = builder.sign(self.intermediate_key, hashes.SHA256())
        return Issued(certificate, key, (certificate, self.intermediate))


# --- a blocking client (run it in a thread: the reactor must keep serving) ---------------------


@dataclass
class ClientResult:
    version: str | None
    cipher: str | None
    peer: dict[str, Any]  # ssl's getpeercert() of the verified peer
    greeting: bytes

    @property
    def dns_names(self) -> list[str]:
        return [v for k, v in self.peer.get("subjectAltName", ()) if k == "DNS"]


def client_context(
    ca_file: Path,
    *,
    check_hostname: bool = True,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
    weak: bool = False,
) -> ssl.SSLContext:
    """A verifying client context that trusts only ``ca_file``. ``weak`` lets it offer old
    protocol versions (the system OpenSSL would not even send a TLS 1.1 ClientHello otherwise)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca_file))
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if weak:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def tls_connect(
    port: int, ctx: ssl.SSLContext, server_hostname: str | None, *, starttls: bool = False
) -> tuple[ssl.SSLSocket, ClientResult]:
    """Connect to 127.0.0.1:port, handshake (after a STARTTLS exchange if asked) and read the
    greeting line the test server sends. ``server_hostname`` is sent as SNI and verified (when
    the context checks host names); None sends no SNI."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        if starttls:
            f = raw.makefile("rb")
            f.readline()  # plain greeting
            raw.sendall(b"STARTTLS\r\n")
            if not f.readline().startswith(b"GO"):
                raise AssertionError("server did not accept STARTTLS")
            f.close()
        sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise
    greeting = _readline(sock)
    return sock, ClientResult(sock.version(), sock.cipher()[0], sock.getpeercert(), greeting)


def _readline(sock: ssl.SSLSocket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        line += chunk
    return line


def echo(sock: ssl.SSLSocket, data: bytes) -> bytes:
    sock.sendall(data + b"\r\n")
    return _readline(sock).rstrip(b"\r\n")


def tls_session(
    port: int, ctx: ssl.SSLContext, server_hostname: str | None, *, starttls: bool = False
) -> ClientResult:
    """Connect, handshake, read the greeting, check one echo round trip, close."""
    sock, result = tls_connect(port, ctx, server_hostname, starttls=starttls)
    try:
        if echo(sock, b"ping") != b"ping":
            raise AssertionError("no echo over TLS")
    finally:
        sock.close()
    return result
