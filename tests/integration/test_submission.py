"""Submission over real sockets (RFC 6409, RFC 8314): 587-style STARTTLS+AUTH and 465-style
implicit TLS, with smtplib and swaks, against a production-style config (users file, certificate
from the test CA that clients really verify) and against the dev stack."""

from __future__ import annotations

import dataclasses
import re
import smtplib
import socket
import ssl
from base64 import b64encode
from pathlib import Path
from typing import Any

import argon2
from twisted.internet import utils

from mailhub.config import Config, DomainsConfig, ListenersConfig, TLSConfig, dev_config, load
from mailhub.service import MailhubService, build
from mailhub.users import UserDB
from tests.support.service import LOOPBACK_ANY_PORT, ServiceTestCase
from tests.support.tls import CertificateAuthority, client_context
from tests.support.tools import requires, swaks_tls

FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
HOST = "mail.example.test"
USER = "alice@example.test"
PASSWORD = "s3cret-for-alice"
LISTENERS = ListenersConfig(
    smtp=(LOOPBACK_ANY_PORT,), submission=(LOOPBACK_ANY_PORT,), smtps=(LOOPBACK_ANY_PORT,)
)


class PinnedSMTP(smtplib.SMTP):
    """Connects to 127.0.0.1 whatever the host name, which stays what TLS verifies (like a DNS
    entry pointing at this machine)."""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout)


class PinnedSMTPSSL(smtplib.SMTP_SSL):
    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout)
        return self.context.wrap_socket(sock, server_hostname=self._host)


def message(sender: str = USER, to: str = USER, bcc: str | None = None) -> bytes:
    lines = [f"From: {sender}", f"To: {to}", "Subject: submitted"]
    if bcc:
        lines.append(f"Bcc: {bcc}")
    return ("\r\n".join(lines) + "\r\n\r\nHello from a mail client.\r\n").encode()


class SubmissionCase(ServiceTestCase):
    def launch(self, config: Config) -> MailhubService:
        service = self.start_config(config)
        self.smtp_port = service.listening_ports("smtp")[0].getHost().port
        self.submission_port = service.listening_ports("submission")[0].getHost().port
        self.smtps_port = service.listening_ports("smtps")[0].getHost().port
        return service


class ProductionSetup(SubmissionCase):
    """dev=False, one local domain, a users file made with ``UserDB.add``, a CA-issued cert."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir()
        ca = CertificateAuthority()
        self.ca_file = ca.write_root(self.dir)
        cert, key = ca.issue([HOST]).write(self.dir, "mail")
        users = self.dir / "users"
        UserDB(users, hasher=FAST).add(USER, PASSWORD)
        self.config = Config(
            source="<production-style test config>",
            hostname=HOST,
            data_dir=self.dir / "data",
            dev=False,
            domains=DomainsConfig(local=("example.test",)),
            listeners=LISTENERS,
            tls=TLSConfig(certificate=cert, key=key),
            users_file=users,
        )
        self.launch(self.config)
        self.context = client_context(self.ca_file)  # trusts only the test CA, checks names


class ProductionSubmission(ProductionSetup):
    async def test_starttls_login_send(self) -> None:
        def send() -> tuple[list[str], list[str], str]:
            with PinnedSMTP(HOST, self.submission_port, timeout=10) as client:
                client.ehlo("client.example.net")
                before = sorted(client.esmtp_features)
                client.starttls(context=self.context)
                client.ehlo("client.example.net")
                after = sorted(client.esmtp_features)
                client.login(USER, PASSWORD)
                client.sendmail(USER, [USER], message(bcc="hidden@example.test"))
                return before, after, client.esmtp_features["auth"]

        before, after, mechanisms = await self.in_thread(send)
        self.assertIn("starttls", before)
        self.assertNotIn("auth", before)  # RFC 4954 4: not before TLS
        self.assertNotIn("starttls", after)
        self.assertEqual(mechanisms.split(), ["PLAIN", "LOGIN"])
        [msg] = self.delivered(USER)
        self.assertIn("with ESMTPSA", msg["Received"])
        self.assertIsNone(msg["Bcc"])  # RFC 6409 8 fixes: the submission sink is in place
        self.assertTrue(msg["Message-ID"].endswith(f"@{HOST}>"))
        self.assertIsNotNone(msg["Date"])

    async def test_smtps_login_send(self) -> None:
        def send() -> list[str]:
            with PinnedSMTPSSL(HOST, self.smtps_port, timeout=10, context=self.context) as client:
                client.ehlo("client.example.net")
                features = sorted(client.esmtp_features)
                client.login(USER, PASSWORD)
                client.sendmail(USER, [USER], message())
                return features

        features = await self.in_thread(send)
        self.assertIn("auth", features)
        self.assertNotIn("starttls", features)  # RFC 8314 3.3
        [msg] = self.delivered(USER)
        self.assertIn("with ESMTPSA", msg["Received"])

    async def test_limits_hold_inside_tls(self) -> None:
        """The foundation's limits, answered the same after STARTTLS and on implicit TLS."""
        self.service.stopService()
        small = dataclasses.replace(self.config.limits, max_message_size=20_000, max_recipients=2)
        self.launch(dataclasses.replace(self.config, limits=small, data_dir=self.dir / "small"))

        def probe(client: smtplib.SMTP) -> dict[str, Any]:
            client.login(USER, PASSWORD)
            out: dict[str, Any] = {"size": client.esmtp_features["size"]}
            out["long line"] = client.docmd("NOOP", "x" * 2000)
            out["alive"] = client.docmd("NOOP")
            client.docmd("MAIL", f"FROM:<{USER}>")
            out["rcpts"] = [
                client.docmd("RCPT", f"TO:<alice+{i}@example.test>")[0] for i in range(3)
            ]
            client.docmd("RSET")
            try:
                client.sendmail(USER, [USER], message() + b"x" * 30_000 + b"\r\n")
            except (smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as e:
                # smtplib declares SIZE= at MAIL, so the 552 comes there (RFC 1870 6.1).
                out["big"] = (e.smtp_code, e.smtp_error[:5])
            return out

        def over_starttls() -> dict[str, Any]:
            with PinnedSMTP(HOST, self.submission_port, timeout=10) as client:
                client.starttls(context=self.context)
                client.ehlo("client.example.net")
                return probe(client)

        def over_smtps() -> dict[str, Any]:
            with PinnedSMTPSSL(HOST, self.smtps_port, timeout=10, context=self.context) as client:
                client.ehlo("client.example.net")
                return probe(client)

        for results in (await self.in_thread(over_starttls), await self.in_thread(over_smtps)):
            self.assertEqual(results["size"], "20000")
            self.assertEqual(results["long line"][0], 500)
            self.assertTrue(results["long line"][1].startswith(b"5.5.2"))
            self.assertEqual(results["alive"][0], 250)  # the session survives
            self.assertEqual(results["rcpts"], [250, 250, 452])
            self.assertEqual(results["big"], (552, b"5.3.4"))

    async def test_certificate_is_really_verified(self) -> None:
        def connect() -> None:
            with PinnedSMTPSSL("other.example.test", self.smtps_port, context=self.context):
                pass

        with self.assertRaises(ssl.SSLCertVerificationError):
            await self.in_thread(connect)

    async def test_wrong_password_is_535_after_a_delay(self) -> None:
        def login() -> None:
            with PinnedSMTPSSL(HOST, self.smtps_port, timeout=10, context=self.context) as client:
                client.login(USER, "not the password")

        with self.assertRaises(smtplib.SMTPAuthenticationError) as caught:
            await self.in_thread(login)
        self.assertEqual(caught.exception.smtp_code, 535)
        self.assertIn(b"5.7.8", caught.exception.smtp_error)

    async def test_rules_over_the_wire(self) -> None:
        plain = b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()

        def talk() -> dict[str, Any]:
            out: dict[str, Any] = {}
            with PinnedSMTP(HOST, self.submission_port, timeout=10) as client:
                client.ehlo("client.example.net")
                out["auth before tls"] = client.docmd("AUTH", f"PLAIN {plain}")
                client.starttls(context=self.context)
                client.ehlo("client.example.net")
                out["mail before auth"] = client.docmd("MAIL", f"FROM:<{USER}>")
                client.login(USER, PASSWORD)
                out["spoofed"] = client.docmd("MAIL", "FROM:<ceo@example.test>")
                out["own"] = client.docmd("MAIL", f"FROM:<{USER}>")
                out["remote"] = client.docmd("RCPT", "TO:<friend@elsewhere.example>")
            with PinnedSMTP(HOST, self.smtp_port, timeout=10) as client:
                client.ehlo("client.example.net")
                client.docmd("MAIL", "FROM:<spammer@example.net>")
                out["open relay"] = client.docmd("RCPT", "TO:<victim@elsewhere.example>")
            return out

        out = await self.in_thread(talk)
        self.assertEqual(out["auth before tls"][0], 538)
        self.assertEqual(out["mail before auth"][0], 530)
        self.assertEqual(out["spoofed"][0], 553)
        self.assertEqual(out["own"][0], 250)
        # An authenticated user may send to other domains: the outgoing queue takes it.
        self.assertEqual(out["remote"][0], 250)
        self.assertEqual(out["open relay"][0], 554)

    def test_no_certificate_is_a_clean_start_up_error(self) -> None:
        config = dataclasses.replace(self.config, tls=TLSConfig(), data_dir=self.dir / "other")
        err = self.assertRaises(SystemExit, build, config)
        self.assertIn("[listeners] submission", str(err.code))
        self.assertIn("fix: set [tls] certificate", str(err.code))
        self.assertIn("submission = []", str(err.code))
        smtps_only = dataclasses.replace(config, listeners=ListenersConfig(smtps=("tcp:0",)))
        err = self.assertRaises(SystemExit, build, smtps_only)
        self.assertIn("[listeners] smtps", str(err.code))


class HeaderFromOverTheWire(ProductionSetup):
    """restrict_sender covers the header From too (issue 12 5f): smtplib over STARTTLS+AUTH."""

    def setUp(self) -> None:
        super().setUp()
        self.service.stopService()
        smtp = dataclasses.replace(self.config.smtp, received_auth_header=True)
        self.launch(dataclasses.replace(self.config, smtp=smtp, data_dir=self.dir / "from"))

    def session(self, work: Any) -> Any:
        def run() -> Any:
            with PinnedSMTP(HOST, self.submission_port, timeout=10) as client:
                client.starttls(context=self.context)
                client.ehlo("client.example.net")
                client.login(USER, PASSWORD)
                return work(client)

        return self.in_thread(run)

    async def test_forged_from_553_own_from_250(self) -> None:
        def work(client: smtplib.SMTP) -> list[Any]:
            out: list[Any] = []
            for from_ in (
                "The CEO <ceo@example.test>",
                f"{USER}, ceo@example.test",
                f'"{USER}" <ceo@example.test>',  # the display name is no address
                f"Alice <{USER}>",
                f"{USER} (Alice at work)",
                f'"Example, Alice" <{USER}>',
                f"=?utf-8?q?Al=C3=AFce?= <{USER}>",
                f"Alïce Ünïcode <{USER}>",
            ):
                text = f"From: {from_}\r\nTo: {USER}\r\nSubject: s\r\n\r\nbody\r\n"
                try:
                    client.sendmail(USER, [USER], text.encode())
                    out.append(250)
                except smtplib.SMTPDataError as e:
                    out.append((e.smtp_code, e.smtp_error.decode()))
            return out

        results = await self.session(work)
        refusal = "5.7.1 Error: From header address <ceo@example.test> not owned by the "
        refusal += "authenticated user"
        self.assertEqual(results[:3], [(553, refusal)] * 3)
        self.assertEqual(results[3:], [250] * 5)
        delivered = self.delivered(USER)
        self.assertEqual(len(delivered), 5)  # nothing of the refused ones
        self.assertEqual([m["From"].addresses[0].addr_spec for m in delivered], [USER] * 5)
        self.assertIn(f"(Authenticated sender: {USER})", delivered[0]["Received"])

    async def test_bdat(self) -> None:
        def work(client: smtplib.SMTP) -> list[tuple[int, bytes]]:
            out = []
            for from_ in ("ceo@example.test", f"Alice <{USER}>"):
                body = f"From: {from_}\r\nSubject: s\r\n\r\nbody\r\n".encode()
                client.mail(USER)
                client.rcpt(USER)
                client.send(b"BDAT %d LAST\r\n" % len(body) + body)
                out.append(client.getreply())
            return out

        forged, own = await self.session(work)
        self.assertEqual(forged[0], 553)
        self.assertIn(b"<ceo@example.test>", forged[1])
        self.assertEqual(own[0], 250)
        self.assertEqual(len(self.delivered(USER)), 1)


@requires(swaks_tls())
class SwaksSubmission(ProductionSetup):
    async def swaks(self, *args: str) -> str:
        out, err, code = await utils.getProcessOutputAndValue(
            "swaks",
            (
                "--timeout", "10", "--from", USER, "--to", USER,
                "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD,
                "--tls-verify", "--tls-ca-path", str(self.ca_file), *args,
            ),
        )  # fmt: skip
        output = (out + err).decode()
        self.assertEqual(code, 0, output)
        return output

    async def test_swaks_starttls_auth(self) -> None:
        output = await self.swaks("--server", f"127.0.0.1:{self.submission_port}", "--tls")
        self.assertIn("235 2.7.0", output)
        self.assertEqual(len(self.delivered(USER)), 1)

    async def test_swaks_implicit_tls(self) -> None:
        output = await self.swaks("--server", f"127.0.0.1:{self.smtps_port}", "--tlsc")
        self.assertIn("235 2.7.0", output)
        self.assertEqual(len(self.delivered(USER)), 1)


class DevStackSubmission(SubmissionCase):
    def setUp(self) -> None:
        config = dataclasses.replace(
            dev_config(Path(self.mktemp()).absolute()), listeners=LISTENERS
        )
        self.launch(config)

    async def test_any_login_works_and_creates_the_mailbox(self) -> None:
        mailbox = self.service.config.mail_dir / "example.com" / "dev"

        def send() -> bool:
            # Plain text from 127.0.0.1: allowed on the dev stack only.
            with smtplib.SMTP("127.0.0.1", self.submission_port, timeout=10) as client:
                client.ehlo()
                client.login("dev@example.com", "anything at all")
                created = mailbox.is_dir()
                client.sendmail(
                    "app@myapp.example",
                    ["dev@example.com"],
                    message("app@myapp.example", "dev@example.com"),
                )
                return created

        self.assertTrue(await self.in_thread(send))
        self.assertEqual(len(self.delivered("dev@example.com")), 1)

    async def test_mta_port_takes_a_login_too(self) -> None:
        # An app configured with credentials must not fail on the dev stack's port 1025.
        def send() -> None:
            with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=10) as client:
                client.login("someone", "pw")
                client.sendmail(
                    "a@example.net", ["b@example.net"], message("a@example.net", "b@example.net")
                )

        await self.in_thread(send)
        self.assertEqual(len(self.delivered("b@example.net")), 1)

    async def test_smtps_with_the_dev_certificate(self) -> None:
        [info] = self.service.tls.certificates
        context = ssl.create_default_context(cafile=str(info.path))

        # "localhost" may resolve to ::1 first, where nothing listens: pinned to 127.0.0.1.
        def pinned() -> None:
            with PinnedSMTPSSL("localhost", self.smtps_port, timeout=10, context=context) as c:
                c.login("x@example.org", "y")

        await self.in_thread(pinned)
        self.assertTrue((self.service.config.mail_dir / "example.org" / "x").is_dir())


class DevConfigFile(SubmissionCase):
    """A config file that says ``dev = true`` (and where to listen) runs the README's Python
    examples unchanged but for the ports: no [smtp] or [domains] section needed (issue 12, 3)."""

    def setUp(self) -> None:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        path = directory / "dev.toml"
        path.write_text(
            f'[server]\ndev = true\ndata_dir = "{directory / "data"}"\n'
            f'[listeners]\nsmtp = ["{LOOPBACK_ANY_PORT}"]\nsubmission = ["{LOOPBACK_ANY_PORT}"]\n'
            f'smtps = ["{LOOPBACK_ANY_PORT}"]\n'
            "imap = []\nimaps = []\npop3 = []\npop3s = []\nweb = []\n"
        )
        self.launch(load(path))

    def readme_example(self, marker: str) -> str:
        readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
        blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
        [block] = [b for b in blocks if marker in b]
        return block

    async def test_readme_smtp_examples(self) -> None:
        send = self.readme_example("msg = EmailMessage()").replace("1025", str(self.smtp_port))
        login = self.readme_example('smtplib.SMTP("127.0.0.1", 1587)').replace(
            "1587", str(self.submission_port)
        )
        namespace: dict[str, Any] = {}
        await self.in_thread(exec, send + login, namespace)
        # The first example to port 25's counterpart, the second through submission with AUTH.
        self.assertEqual(len(self.delivered("alice@example.com")), 2)
        self.assertTrue((self.service.config.mail_dir / "example.com" / "me").is_dir())


class BrokenFiles(SubmissionCase):
    def test_broken_users_or_aliases_file_is_a_clean_start_up_error(self) -> None:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        users = directory / "users"
        users.write_text("not a users line\n")
        config = dataclasses.replace(dev_config(directory / "data"), users_file=users)
        err = self.assertRaises(SystemExit, build, config)
        self.assertIn("[files] users", str(err.code))
        aliases = directory / "aliases"
        aliases.write_text("bare-name: x@example.org\n")
        config = dataclasses.replace(dev_config(directory / "data"), aliases_file=aliases)
        err = self.assertRaises(SystemExit, build, config)
        self.assertIn("[files] aliases", str(err.code))
