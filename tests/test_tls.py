"""mailhub.tls over real loopback sockets, with a test CA and Python's verifying ``ssl`` client."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import smtplib
import ssl
import stat
import subprocess
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, ISSLTransport
from twisted.internet.protocol import Factory, ServerFactory
from twisted.logger import Logger, formatEvent
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailhub.config import DomainsConfig, Limits, SMTPConfig
from mailhub.smtp.factory import SMTPServerFactory
from mailhub.smtp.policy import RecipientPolicy
from mailhub.tls import (
    ServerTLS,
    SighupReloadService,
    TLSFileError,
    describe_certificate,
    ensure_dev_certificate,
    fingerprint,
    install_sighup_handler,
    new_dev_certificate,
    read_pair,
    server_context,
    tls_server_factory,
)
from tests.support.smtp import MemorySink
from tests.support.tls import (
    CertificateAuthority,
    cert_pem,
    client_context,
    echo,
    key_pem,
    tls_connect,
    tls_session,
)

# One CA for the module: making keys is cheap (EC P-256) but there is no need to repeat it.
CA = CertificateAuthority()


class LogCapture:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.log = Logger(observer=self.events.append)

    def texts(self, level: str | None = None) -> list[str]:
        return [
            formatEvent(e) for e in self.events if level is None or e["log_level"].name == level
        ]


# --- test servers ------------------------------------------------------------------------------


class _Echo(LineReceiver):
    """Greets with whether it sees TLS, echoes lines; ``STARTTLS`` upgrades (like RFC 3207)."""

    delimiter = b"\r\n"

    def connectionMade(self) -> None:
        self.factory.open.append(self)
        self.sendLine(b"hello tls=%d" % ISSLTransport.providedBy(self.transport))

    def lineReceived(self, line: bytes) -> None:
        if line == b"STARTTLS" and not ISSLTransport.providedBy(self.transport):
            self.sendLine(b"GO")
            self.transport.startTLS(self.factory.server_tls)
            self.sendLine(b"hello tls=%d" % ISSLTransport.providedBy(self.transport))
        else:
            self.sendLine(line)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open.remove(self)
        d = self.factory.lost.pop(self, None)
        if d is not None:
            d.callback(None)


class _EchoFactory(ServerFactory):
    protocol = _Echo

    def __init__(self, server_tls: ServerTLS) -> None:
        self.server_tls = server_tls
        self.open: list[_Echo] = []
        self.lost: dict[_Echo, Deferred | None] = {}

    def all_closed(self) -> Deferred:
        waits = []
        for p in self.open:
            d: Deferred = Deferred()
            self.lost[p] = d
            waits.append(d)
        return DeferredList(waits)


class TLSServerTestCase(TestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir(parents=True)
        self.ca_file = CA.write_root(self.dir)
        self.logs = LogCapture()

    def serve(self, server_tls: Any, *, implicit: bool = True) -> int:
        """Listen on 127.0.0.1:0 with an echo server (implicit TLS, or plain with STARTTLS)."""
        factory = _EchoFactory(server_tls)
        wrapped: Factory = tls_server_factory(server_tls, factory) if implicit else factory
        port = reactor.listenTCP(0, wrapped, interface="127.0.0.1")
        self.addCleanup(factory.all_closed)  # runs after stopListening (cleanups are LIFO)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def pair(self, stem: str, *names: str, **kwargs: Any) -> tuple[Path, Path]:
        return CA.issue(list(names), **kwargs).write(self.dir, stem)

    def client(self, **kwargs: Any) -> ssl.SSLContext:
        return client_context(self.ca_file, **kwargs)

    def in_thread(self, f: Any, *args: Any, **kwargs: Any) -> Deferred:
        return threads.deferToThread(f, *args, **kwargs)


class ProtocolVersionTests(TLSServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.port = self.serve(ServerTLS([self.pair("mail", "mail.example.com")]))

    @inlineCallbacks
    def test_tls13_accepted_and_verified(self):
        result = yield self.in_thread(tls_session, self.port, self.client(), "mail.example.com")
        self.assertEqual(result.version, "TLSv1.3")
        self.assertEqual(result.greeting, b"hello tls=1\r\n")
        self.assertEqual(result.dns_names, ["mail.example.com"])

    @inlineCallbacks
    def test_tls12_accepted_with_forward_secret_aead(self):
        ctx = self.client(maximum=ssl.TLSVersion.TLSv1_2)
        result = yield self.in_thread(tls_session, self.port, ctx, "mail.example.com")
        self.assertEqual(result.version, "TLSv1.2")
        self.assertTrue(result.cipher.startswith("ECDHE-"), result.cipher)
        self.assertRegex(result.cipher, "GCM|CHACHA20")

    @inlineCallbacks
    def test_tls12_cbc_only_client_refused(self):
        ctx = self.client(maximum=ssl.TLSVersion.TLSv1_2)
        ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")
        error = yield self.assertFailure(
            self.in_thread(tls_session, self.port, ctx, "mail.example.com"), ssl.SSLError
        )
        self.assertIn("HANDSHAKE_FAILURE", str(error).upper())

    @inlineCallbacks
    def test_tls11_refused_by_the_server(self):
        ctx = self.client(minimum=ssl.TLSVersion.TLSv1_1, maximum=ssl.TLSVersion.TLSv1_1, weak=True)
        error = yield self.assertFailure(
            self.in_thread(tls_session, self.port, ctx, "mail.example.com"), ssl.SSLError
        )
        # The server's protocol_version alert, not the client failing to offer TLS 1.1 at all
        # (which would say "no protocols available").
        self.assertIn("PROTOCOL_VERSION", str(error).upper())

    @inlineCallbacks
    def test_tls11_client_is_real(self):
        """Control for the test above: the same client does get TLS 1.1 from a server that allows
        it, so the refusal comes from mailhub's settings and not from the system's OpenSSL."""
        pair = read_pair(*self.pair("mail", "mail.example.com"))
        permissive = server_context(pair)
        permissive.set_min_proto_version(SSL.TLS1_VERSION)
        permissive.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        port = self.serve(_FixedContext(permissive))
        ctx = self.client(minimum=ssl.TLSVersion.TLSv1_1, maximum=ssl.TLSVersion.TLSv1_1, weak=True)
        try:
            result = yield self.in_thread(tls_session, port, ctx, "mail.example.com")
        except ssl.SSLError as e:
            raise self.skipTest(f"this OpenSSL cannot do TLS 1.1 at all ({e})") from None
        self.assertEqual(result.version, "TLSv1.1")

    @inlineCallbacks
    def test_starttls_upgrades_a_plain_connection(self):
        port = self.serve(ServerTLS([self.pair("mail", "mail.example.com")]), implicit=False)
        result = yield self.in_thread(
            tls_session, port, self.client(), "mail.example.com", starttls=True
        )
        self.assertEqual(result.greeting, b"hello tls=1\r\n")
        self.assertEqual(result.dns_names, ["mail.example.com"])

    @inlineCallbacks
    def test_wrong_host_name_fails_verification(self):
        error = yield self.assertFailure(
            self.in_thread(tls_session, self.port, self.client(), "other.example.com"),
            ssl.SSLCertVerificationError,
        )
        self.assertIn("other.example.com", str(error))

    def test_provides_the_connection_creator_interface(self) -> None:
        server_tls = ServerTLS([self.pair("x", "x.example.com")])
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, server_tls))


@implementer(IOpenSSLServerConnectionCreator)
class _FixedContext:
    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)


class SNITests(TLSServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server_tls = ServerTLS(
            [
                self.pair("default", "mail.example.com", "smtp.example.com"),
                self.pair("org", "*.example.org", "example.org"),
                self.pair("net", "mx.example.net"),
            ]
        )
        self.port = self.serve(self.server_tls)

    @inlineCallbacks
    def check(self, sni: str, expected: list[str]):
        result = yield self.in_thread(tls_session, self.port, self.client(), sni)
        self.assertEqual(result.dns_names, expected)

    def test_exact_names(self):
        return DeferredList(
            [
                self.check("smtp.example.com", ["mail.example.com", "smtp.example.com"]),
                self.check("MX.Example.NET", ["mx.example.net"]),
                self.check("example.org", ["*.example.org", "example.org"]),
            ],
            fireOnOneErrback=True,
            consumeErrors=True,
        )

    def test_wildcard_matches_one_label(self):
        return self.check("imap.example.org", ["*.example.org", "example.org"])

    @inlineCallbacks
    def test_wildcard_does_not_match_two_labels(self):
        # a.b.example.org is not covered: the default certificate comes, and verification fails.
        self.assertEqual(
            self.server_tls.certificate_for("a.b.example.org").dns_names,
            ("mail.example.com", "smtp.example.com"),
        )
        yield self.assertFailure(
            self.in_thread(tls_session, self.port, self.client(), "a.b.example.org"),
            ssl.SSLCertVerificationError,
        )

    @inlineCallbacks
    def test_no_sni_gets_the_default(self):
        ctx = self.client(check_hostname=False)  # the chain is still verified
        result = yield self.in_thread(tls_session, self.port, ctx, None)
        self.assertEqual(result.dns_names, ["mail.example.com", "smtp.example.com"])

    @inlineCallbacks
    def test_unknown_name_gets_the_default(self):
        ctx = self.client(check_hostname=False)
        result = yield self.in_thread(tls_session, self.port, ctx, "unknown.example")
        self.assertEqual(result.dns_names, ["mail.example.com", "smtp.example.com"])

    def test_common_name_is_the_fallback_without_san(self) -> None:
        server_tls = ServerTLS(
            [
                self.pair("d", "d.example.com"),
                self.pair("cn", common_name="legacy.example.com", san=False),
            ]
        )
        self.assertEqual(
            server_tls.certificate_for("legacy.example.com").dns_names, ("legacy.example.com",)
        )


class ReloadTests(TLSServerTestCase):
    @inlineCallbacks
    def test_reload_swaps_for_new_connections_only(self):
        cert_path, key_path = self.pair("mail", "mail.example.com")
        server_tls = ServerTLS([(cert_path, key_path)], log=self.logs.log)
        port = self.serve(server_tls)
        old = fingerprint(x509.load_pem_x509_certificate(cert_path.read_bytes()))

        sock, before = yield self.in_thread(tls_connect, port, self.client(), "mail.example.com")
        self.addCleanup(sock.close)

        renewed = CA.issue(["mail.example.com"])  # a renewal: same name, new key
        renewed.write(self.dir, "mail")
        self.assertTrue(server_tls.reload())
        self.assertEqual(server_tls.certificates[0].fingerprint, fingerprint(renewed.certificate))
        self.assertNotEqual(server_tls.certificates[0].fingerprint, old)

        after = yield self.in_thread(tls_session, port, self.client(), "mail.example.com")
        # getpeercert() gives no DER, so certificates are told apart by serial number.
        self.assertEqual(int(after.peer["serialNumber"], 16), renewed.certificate.serial_number)
        # The connection made before the reload still works with the old certificate.
        self.assertNotEqual(int(before.peer["serialNumber"], 16), renewed.certificate.serial_number)
        reply = yield self.in_thread(echo, sock, b"still here")
        self.assertEqual(reply, b"still here")
        self.assertTrue(any("reloaded" in t for t in self.logs.texts("info")))

    @inlineCallbacks
    def test_bad_files_on_reload_keep_the_old_certificates(self):
        cert_path, key_path = self.pair("mail", "mail.example.com")
        server_tls = ServerTLS([(cert_path, key_path)], log=self.logs.log)
        port = self.serve(server_tls)
        serial = x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number

        # A renewal caught half-way: new certificate, old key.
        CA.issue(["mail.example.com"]).write(self.dir, "new")
        os.replace(self.dir / "new-cert.pem", cert_path)
        self.assertFalse(server_tls.reload())
        [error] = self.logs.texts("error")
        self.assertIn("still using the previous certificates", error)
        self.assertIn(str(key_path), error)

        result = yield self.in_thread(tls_session, port, self.client(), "mail.example.com")
        self.assertEqual(int(result.peer["serialNumber"], 16), serial)

        key_path.write_bytes(b"garbage")
        self.assertFalse(server_tls.reload())
        cert_path.unlink()
        self.assertFalse(server_tls.reload())
        self.assertEqual(len(self.logs.texts("error")), 3)
        result = yield self.in_thread(tls_session, port, self.client(), "mail.example.com")
        self.assertEqual(int(result.peer["serialNumber"], 16), serial)


class SighupTests(SynchronousTestCase):
    def setUp(self) -> None:
        previous = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        self.scheduled: list[Any] = []
        self.fake_reactor = type(
            "FakeReactor", (), {"callFromThread": lambda _, f, *a: self.scheduled.append(f)}
        )()

    def test_sighup_schedules_reload_in_the_reactor_and_chains(self) -> None:
        earlier: list[int] = []
        signal.signal(signal.SIGHUP, lambda signum, frame: earlier.append(signum))

        def reload() -> None:
            pass

        uninstall = install_sighup_handler(reload, self.fake_reactor)
        signal.raise_signal(signal.SIGHUP)
        self.assertEqual(self.scheduled, [reload])  # not called in the signal handler itself
        self.assertEqual(earlier, [signal.SIGHUP])
        uninstall()
        signal.raise_signal(signal.SIGHUP)
        self.assertEqual(self.scheduled, [reload])
        self.assertEqual(earlier, [signal.SIGHUP, signal.SIGHUP])

    def test_service_installs_and_removes(self) -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        service = SighupReloadService(lambda: None, self.fake_reactor)
        service.startService()
        signal.raise_signal(signal.SIGHUP)
        self.assertEqual(len(self.scheduled), 1)
        service.stopService()
        self.assertIs(signal.getsignal(signal.SIGHUP), signal.SIG_IGN)


class FileErrorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.issued = CA.issue(["mail.example.com"])
        self.cert_path, self.key_path = self.issued.write(self.dir, "mail")

    def error(self, cert_path: Path, key_path: Path) -> TLSFileError:
        return self.assertRaises(TLSFileError, ServerTLS, [(cert_path, key_path)])

    def test_mismatched_key(self) -> None:
        _, other_key = CA.issue(["other.example.com"]).write(self.dir, "other")
        e = self.error(self.cert_path, other_key)
        self.assertEqual((e.path, e.role), (other_key, "key"))
        self.assertEqual(
            str(e),
            f"{other_key}: this private key does not belong to the certificate in "
            f"{self.cert_path}\n"
            "  fix: give the key the certificate was issued for (they are usually renewed "
            "together)",
        )

    def test_missing_files(self) -> None:
        e = self.error(self.dir / "nope.pem", self.key_path)
        self.assertEqual((e.role, e.problem), ("certificate", "certificate file not found"))
        self.assertIn("nope.pem", str(e))
        e = self.error(self.cert_path, self.dir / "nokey.pem")
        self.assertEqual((e.role, e.problem), ("key", "key file not found"))

    def test_der_and_other_non_pem(self) -> None:
        der = self.dir / "mail.der"
        der.write_bytes(self.issued.certificate.public_bytes(serialization.Encoding.DER))
        e = self.error(der, self.key_path)
        self.assertIn("binary DER form", e.problem)
        self.assertIn(f"openssl x509 -inform der -in {der}", e.fix)
        text = self.dir / "text.pem"
        text.write_text("hello\n")
        e = self.error(self.cert_path, text)
        self.assertEqual(e.role, "key")
        self.assertIn("not a PEM file", e.problem)

    def test_swapped_files(self) -> None:
        e = self.error(self.key_path, self.cert_path)
        self.assertEqual(e.role, "certificate")
        self.assertIn("not swapped", e.fix)

    def test_encrypted_key(self) -> None:
        encrypted = self.dir / "enc.pem"
        encrypted.write_bytes(
            self.issued.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
        e = self.error(self.cert_path, encrypted)
        self.assertIn("encrypted", e.problem)

    def test_malformed_pem_key(self) -> None:
        # PEM armour around no key: its own TLSFileError (the except clause once named an
        # exception class cryptography does not have, so this raised AttributeError).
        broken = self.dir / "broken.pem"
        broken.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
        e = self.error(self.cert_path, broken)
        self.assertEqual((e.path, e.role), (broken, "key"))
        self.assertIn("the private key cannot be parsed", e.problem)
        self.assertEqual(e.fix, "give a PEM private key")

    def test_chain_out_of_order(self) -> None:
        self.cert_path.write_bytes(cert_pem(CA.intermediate, self.issued.certificate))
        e = self.error(self.cert_path, self.key_path)
        self.assertEqual(e.role, "certificate")
        self.assertIn("out of order", e.problem)

    def test_combined_file_holds_both(self) -> None:
        combined = self.dir / "combined.pem"
        combined.write_bytes(key_pem(self.issued.key) + cert_pem(*self.issued.chain))
        pair = read_pair(combined, combined)
        self.assertEqual(pair.info.dns_names, ("mail.example.com",))
        self.assertEqual(pair.info.chain_length, 2)

    def test_expired_certificate_is_served_with_a_warning(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        cert_path, key_path = CA.issue(
            ["old.example.com"],
            not_before=now - datetime.timedelta(days=100),
            not_after=now - datetime.timedelta(days=1),
        ).write(self.dir, "old")
        logs = LogCapture()
        server_tls = ServerTLS([(cert_path, key_path)], log=logs.log)
        self.assertTrue(server_tls.certificates[0].expired())
        [warning] = logs.texts("warn")
        self.assertIn("EXPIRED", warning)
        self.assertIn(str(cert_path), warning)

    def test_missing_intermediate_warns(self) -> None:
        self.cert_path.write_bytes(cert_pem(self.issued.certificate))
        logs = LogCapture()
        ServerTLS([(self.cert_path, self.key_path)], log=logs.log)
        [warning] = logs.texts("warn")
        self.assertIn("fullchain.pem", warning)


class DevCertificateTests(TLSServerTestCase):
    def test_generated_once_and_reused(self) -> None:
        first = ensure_dev_certificate(self.dir)
        self.assertTrue(first.created)
        self.assertEqual(first.certificate_path, self.dir / "tls" / "dev-cert.pem")
        self.assertEqual(first.key_path, self.dir / "tls" / "dev-key.pem")
        self.assertRegex(first.fingerprint, "^([0-9A-F]{2}:){31}[0-9A-F]{2}$")
        second = ensure_dev_certificate(self.dir)
        self.assertFalse(second.created)
        self.assertEqual(second.fingerprint, first.fingerprint)
        self.assertEqual(
            describe_certificate(first.certificate_path).fingerprint, first.fingerprint
        )

    def test_file_modes(self) -> None:
        dev = ensure_dev_certificate(self.dir)
        self.assertEqual(stat.S_IMODE(dev.key_path.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(dev.key_path.parent.stat().st_mode), 0o700)
        self.assertEqual(
            sorted(p.name for p in dev.key_path.parent.iterdir()), ["dev-cert.pem", "dev-key.pem"]
        )  # no temp files left

    def test_contents(self) -> None:
        dev = ensure_dev_certificate(self.dir)
        cert = x509.load_pem_x509_certificate(dev.certificate_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual(
            [str(a) for a in san.get_values_for_type(x509.IPAddress)], ["127.0.0.1", "::1"]
        )
        self.assertFalse(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.assertLessEqual(
            cert.not_valid_after_utc - cert.not_valid_before_utc, datetime.timedelta(days=825)
        )
        self.assertEqual(cert.signature_hash_algorithm.name, "sha256")
        self.assertEqual(dev.info.describe()[0], f"certificate  {dev.certificate_path}")

    def test_fingerprint_matches_openssl(self) -> None:
        if shutil.which("openssl") is None:
            raise self.skipTest("openssl command not installed")
        dev = ensure_dev_certificate(self.dir)
        out = subprocess.run(
            [
                "openssl",
                "x509",
                "-noout",
                "-fingerprint",
                "-sha256",
                "-in",
                str(dev.certificate_path),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        self.assertEqual(out.strip().split("=", 1)[1], dev.fingerprint)

    def test_new_replaces_and_damaged_is_replaced(self) -> None:
        first = ensure_dev_certificate(self.dir)
        second = new_dev_certificate(self.dir)
        self.assertNotEqual(first.fingerprint, second.fingerprint)
        self.assertEqual(ensure_dev_certificate(self.dir).fingerprint, second.fingerprint)
        # A crash between the two renames leaves a key that does not match: made anew.
        CA.issue(["localhost"]).write(self.dir / "tmpkeys", "x")
        os.replace(self.dir / "tmpkeys" / "x-key.pem", second.key_path)
        third = ensure_dev_certificate(self.dir)
        self.assertTrue(third.created)
        self.assertNotEqual(third.fingerprint, second.fingerprint)

    def test_regenerated_when_close_to_expiry(self) -> None:
        first = ensure_dev_certificate(self.dir)
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=820)
        second = ensure_dev_certificate(self.dir, clock=lambda: later)
        self.assertTrue(second.created)
        self.assertNotEqual(first.fingerprint, second.fingerprint)

    @inlineCallbacks
    def test_clients_that_trust_it_verify_localhost_and_loopback_addresses(self):
        dev = ensure_dev_certificate(self.dir)
        port = self.serve(ServerTLS([(dev.certificate_path, dev.key_path)]))
        ctx = client_context(dev.certificate_path)
        by_name = yield self.in_thread(tls_session, port, ctx, "localhost")
        by_address = yield self.in_thread(tls_session, port, ctx, "127.0.0.1")  # no SNI
        self.assertEqual(by_name.dns_names, ["localhost"])
        self.assertEqual(by_address.dns_names, ["localhost"])


class SMTPReceiverTests(TLSServerTestCase):
    """The contract with mailhub.smtp: STARTTLS on a plain port, none offered on implicit TLS."""

    def smtp_factory(self, server_tls: ServerTLS) -> SMTPServerFactory:
        return SMTPServerFactory(
            hostname="mail.example.com",
            limits=Limits(),
            smtp_config=SMTPConfig(),
            policy=RecipientPolicy(DomainsConfig(accept_any=True), lambda _: True),
            sink=MemorySink(),
            clock=reactor,
            tls_context_factory=server_tls,
            log=Logger(observer=lambda event: None),
        )

    def listen(self, factory: Any) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def test_smtplib_starttls_verifies(self):
        server_tls = ServerTLS([self.pair("mail", "mail.example.com")])
        port = self.listen(self.smtp_factory(server_tls))
        ctx = self.client()

        def session() -> tuple[bool, bool, str]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp._host = "mail.example.com"  # the name to verify (smtplib uses the host)
                smtp.ehlo()
                offered = smtp.has_extn("starttls")
                smtp.starttls(context=ctx)
                smtp.ehlo()
                version = smtp.sock.version()
                return offered, smtp.has_extn("starttls"), version

        offered, offered_after, version = yield self.in_thread(session)
        self.assertEqual((offered, offered_after, version), (True, False, "TLSv1.3"))

    @inlineCallbacks
    def test_smtps_does_not_offer_starttls(self):
        server_tls = ServerTLS([self.pair("mail", "mail.example.com")])
        port = self.listen(tls_server_factory(server_tls, self.smtp_factory(server_tls)))
        ctx = self.client()

        def session() -> bool:
            with _LoopbackSMTPS("mail.example.com", port, timeout=10, context=ctx) as smtp:
                smtp.ehlo()
                return smtp.has_extn("starttls")

        offered = yield self.in_thread(session)
        self.assertFalse(offered)


class _LoopbackSMTPS(smtplib.SMTP_SSL):
    """Verifies the name it is given but connects to 127.0.0.1 (no DNS in tests)."""

    def _get_socket(self, host: str, port: int, timeout: float) -> Any:
        return super()._get_socket("127.0.0.1", port, timeout)  # wraps with self._host
