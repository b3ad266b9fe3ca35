"""POP3 over real sockets and real TLS: poplib with STLS (110-style) and implicit TLS
(995-style) verifying the test CA, against a production-style config (users file, no login before
TLS); fetchmail, getmail and curl downloading into local files; a connection dropped after DELE;
the IN-USE lock between two live sessions."""

from __future__ import annotations

import os
import poplib
import socket
from pathlib import Path

import argon2
from twisted.internet import utils

from mailhub.config import Config, DomainsConfig, ListenersConfig, TLSConfig
from mailhub.users import UserDB
from tests.support.connections import ConnectionWatch
from tests.support.service import LOOPBACK_ANY_PORT, ServiceTestCase
from tests.support.tls import CertificateAuthority, client_context
from tests.support.tools import requires, tool

FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
USER = "alice@example.test"
PASSWORD = "s3cret-for-alice"
HOST = "127.0.0.1"  # the certificate names it (IP SAN), so clients verify what they dial

MESSAGES = [
    b"From: bob@example.net\r\nTo: alice@example.test\r\nSubject: first\r\n\r\nHello.\r\n",
    b"From: bob@example.net\r\nTo: alice@example.test\r\nSubject: second\r\n\r\n"
    b".a line with a leading dot\r\nand more\r\n",
]


class POP3Service(ServiceTestCase):
    """dev=False, a users file, a certificate from the test CA for 127.0.0.1."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir()
        ca = CertificateAuthority()
        self.ca_file = ca.write_root(self.dir)
        cert, key = ca.issue(["localhost", HOST], ip_addresses=[HOST]).write(self.dir, "mail")
        users = self.dir / "users"
        UserDB(users, hasher=FAST).add(USER, PASSWORD)
        config = Config(
            source="<production-style test config>",
            hostname="mail.example.test",
            data_dir=self.dir / "data",
            dev=False,
            domains=DomainsConfig(local=("example.test",)),
            listeners=ListenersConfig(pop3=(LOOPBACK_ANY_PORT,), pop3s=(LOOPBACK_ANY_PORT,)),
            tls=TLSConfig(certificate=cert, key=key),
            users_file=users,
        )
        service = self.start_config(config)
        self.connections = ConnectionWatch(service.listening_ports("pop3s"))
        self.pop3_port = service.listening_ports("pop3")[0].getHost().port
        self.pop3s_port = service.listening_ports("pop3s")[0].getHost().port
        self.context = client_context(self.ca_file)
        self.folder = service.store.mailbox(USER, create=True).folder()
        for m in MESSAGES:
            self.folder.append(m)

    def on_disk(self) -> int:
        return self.folder.sync().count


class Poplib(POP3Service):
    async def test_stls_then_login_retrieve_delete(self) -> None:
        def session() -> tuple[dict, dict, bytes, list[bytes], list[bytes], str]:
            client = poplib.POP3(HOST, self.pop3_port, timeout=10)
            try:
                before = client.capa()
                try:
                    client.user(USER)
                    refused = b""
                except poplib.error_proto as e:
                    refused = e.args[0]
                client.stls(context=self.context)  # verifies the chain and 127.0.0.1
                after = client.capa()
                client.user(USER)
                client.pass_(PASSWORD)
                uidl = client.uidl()[1]
                _, lines, _ = client.retr(2)
                client.dele(1)
                version = client.sock.version()
                client.quit()
                return before, after, refused, uidl, lines, version
            finally:
                client.close()

        keys = [m.key for m in self.folder.sync().messages]
        before, after, refused, uidl, lines, version = await self.in_thread(session)
        self.assertIn("STLS", before)
        self.assertNotIn("USER", before)  # RFC 2595: no plaintext login offered before TLS
        self.assertNotIn("SASL", before)
        self.assertTrue(refused.startswith(b"-ERR [AUTH]"), refused)
        self.assertNotIn("STLS", after)
        self.assertEqual(after["SASL"], ["PLAIN", "LOGIN"])
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(uidl, [f"{i + 1} {k}".encode() for i, k in enumerate(keys)])
        # poplib undoes the dot-stuffing: the client gets the stored lines back.
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", MESSAGES[1])
        state = self.folder.sync()
        self.assertEqual(state.count, 1)  # QUIT removed message 1
        self.assertEqual(state.messages[0].flags, frozenset("S"))  # RETR marked it seen

    async def test_implicit_tls_with_auth_plain(self) -> None:
        def session() -> tuple[dict, tuple[int, int], bytes]:
            client = poplib.POP3_SSL(HOST, self.pop3s_port, timeout=10, context=self.context)
            try:
                capa = client.capa()
                # RFC 5034 AUTH PLAIN with an initial response, by hand (poplib has no AUTH).
                from base64 import b64encode

                token = b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
                reply = client._shortcmd(f"AUTH PLAIN {token}")
                stat = client.stat()
                client.quit()
                return capa, stat, reply
            finally:
                client.close()

        capa, stat, reply = await self.in_thread(session)
        self.assertNotIn("STLS", capa)
        self.assertIn("USER", capa)
        self.assertTrue(reply.startswith(b"+OK"), reply)
        self.assertEqual(stat, (2, sum(len(m) for m in MESSAGES)))

    async def test_wrong_password_is_refused_with_auth_code(self) -> None:
        def session() -> bytes:
            client = poplib.POP3_SSL(HOST, self.pop3s_port, timeout=10, context=self.context)
            try:
                client.user(USER)
                try:
                    client.pass_("wrong")
                except poplib.error_proto as e:
                    return e.args[0]
                return b"accepted?"
            finally:
                client.close()

        self.assertEqual(await self.in_thread(session), b"-ERR [AUTH] Authentication failed")

    async def test_dropped_connection_after_dele_loses_nothing(self) -> None:
        def session() -> None:
            client = poplib.POP3_SSL(HOST, self.pop3s_port, timeout=10, context=self.context)
            client.user(USER)
            client.pass_(PASSWORD)
            client.dele(1)
            client.dele(2)
            # Gone without QUIT (a crash, a network cut): RST instead of FIN.
            client.sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            client.sock.close()

        await self.in_thread(session)
        # The lock goes with the connection: once the server has seen the reset, it is free.
        await self.connections.idle()

        def again() -> tuple[int, int]:
            client = poplib.POP3_SSL(HOST, self.pop3s_port, timeout=10, context=self.context)
            try:
                client.user(USER)
                client.pass_(PASSWORD)
                return client.stat()
            finally:
                client.close()

        self.assertEqual(await self.in_thread(again), (2, sum(len(m) for m in MESSAGES)))
        self.assertEqual(self.on_disk(), 2)

    async def test_second_session_is_in_use(self) -> None:
        def sessions() -> tuple[bytes, bytes]:
            first = poplib.POP3_SSL(HOST, self.pop3s_port, timeout=10, context=self.context)
            second = poplib.POP3_SSL(HOST, self.pop3s_port, timeout=10, context=self.context)
            try:
                first.user(USER)
                first.pass_(PASSWORD)
                second.user(USER)
                try:
                    second.pass_(PASSWORD)
                    busy = b"not refused"
                except poplib.error_proto as e:
                    busy = e.args[0]
                first.quit()
                second.user(USER)
                after = second.pass_(PASSWORD)
                second.quit()
                return busy, after
            finally:
                first.close()
                second.close()

        busy, after = await self.in_thread(sessions)
        self.assertTrue(busy.startswith(b"-ERR [IN-USE]"), busy)
        self.assertTrue(after.startswith(b"+OK"), after)


@requires(tool("fetchmail"))
class Fetchmail(POP3Service):
    async def test_fetchmail_stls_downloads_and_deletes(self) -> None:
        out_file = self.dir / "fetched.bsmtp"
        rc = self.dir / "fetchmailrc"
        rc.write_text(
            f"set no syslog\n"
            f"poll {HOST} service {self.pop3_port} protocol pop3 auth password\n"
            f"  user '{USER}' password '{PASSWORD}' sslproto 'TLS1.2+' sslcertck\n"
            f"  sslcertfile '{self.ca_file}'\n"
        )
        rc.chmod(0o600)
        env = dict(os.environ, HOME=str(self.dir), FETCHMAILHOME=str(self.dir))
        out, err, code = await utils.getProcessOutputAndValue(
            "fetchmail",
            ("-f", str(rc), "--nodetach", "--bsmtp", str(out_file), "-v"),
            env=env,
            path=str(self.dir),
        )
        self.assertEqual(code, 0, (out + err).decode(errors="replace"))
        fetched = out_file.read_bytes()
        self.assertIn(b"Subject: first", fetched)
        self.assertIn(b"Subject: second", fetched)
        self.assertIn(b"STLS", out + err)
        self.assertEqual(self.on_disk(), 0)  # fetchmail deletes what it fetched (no "keep")


@requires(tool("getmail"))
class Getmail(POP3Service):
    def getmail_env(self) -> dict[str, str]:
        # getmail is the system python's script: our interpreter's PYTHONPATH (trial -j sets it
        # to this sys.path) would load another build's extension modules into it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        return dict(env, HOME=str(self.dir))

    async def test_getmail_pop3s_into_maildir(self) -> None:
        maildir = self.dir / "local-maildir"
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True)
        rc = self.dir / "getmailrc"
        rc.write_text(
            "[retriever]\n"
            "type = SimplePOP3SSLRetriever\n"
            f"server = {HOST}\n"
            f"port = {self.pop3s_port}\n"
            f"username = {USER}\n"
            f"password = {PASSWORD}\n"
            f"ca_certs = {self.ca_file}\n"
            "[destination]\n"
            # getmail's Maildir/mbox destinations refuse to run as root (as CI does); an
            # external MDA may, when told so. Each message becomes a file in new/.
            "type = MDA_external\n"
            "path = /bin/sh\n"
            f"arguments = ('-c', 'cat > {maildir}/new/msg.$$$$')\n"
            "allow_root_commands = true\n"
            "[options]\n"
            "read_all = false\n"
            "delete = false\n"
        )
        out, err, code = await utils.getProcessOutputAndValue(
            "getmail",
            ("--getmaildir", str(self.dir), "--rcfile", str(rc)),
            env=self.getmail_env(),
        )
        self.assertEqual(code, 0, (out + err).decode(errors="replace"))
        fetched = sorted(p.read_bytes() for p in (maildir / "new").iterdir())
        self.assertEqual(len(fetched), 2)
        content = b"".join(fetched)
        self.assertIn(b"Subject: first", content)
        self.assertIn(b"Subject: second", content)
        self.assertIn(b"\n.a line with a leading dot\n", content)  # un-stuffed
        self.assertEqual(self.on_disk(), 2)  # delete = false
        # getmail remembers UIDLs: a second run fetches nothing new.
        out, err, code = await utils.getProcessOutputAndValue(
            "getmail",
            ("--getmaildir", str(self.dir), "--rcfile", str(rc)),
            env=self.getmail_env(),
        )
        self.assertEqual(code, 0, (out + err).decode(errors="replace"))
        self.assertEqual(len(list((maildir / "new").iterdir())), 2)


@requires(tool("curl"))
class Curl(POP3Service):
    async def test_curl_stls_retr_into_file(self) -> None:
        target = self.dir / "message2.eml"
        out, err, code = await utils.getProcessOutputAndValue(
            "curl",
            (
                "--silent",
                "--show-error",
                "--ssl-reqd",  # STLS, and fail without it
                "--cacert",
                str(self.ca_file),
                "--user",
                f"{USER}:{PASSWORD}",
                "--output",
                str(target),
                f"pop3://{HOST}:{self.pop3_port}/2",
            ),
        )
        self.assertEqual(code, 0, (out + err).decode(errors="replace"))
        self.assertEqual(target.read_bytes(), MESSAGES[1])

    async def test_curl_pop3s_list(self) -> None:
        out, err, code = await utils.getProcessOutputAndValue(
            "curl",
            (
                "--silent",
                "--show-error",
                "--cacert",
                str(self.ca_file),
                "--user",
                f"{USER}:{PASSWORD}",
                f"pop3s://{HOST}:{self.pop3s_port}/",
            ),
        )
        self.assertEqual(code, 0, (out + err).decode(errors="replace"))
        self.assertEqual(
            out, b"".join(f"{i + 1} {len(m)}\r\n".encode() for i, m in enumerate(MESSAGES))
        )
