"""IMAP over real sockets with real clients: Python's imaplib and imapclient, STARTTLS on the
imap listener and implicit TLS on imaps, the server certificate verified against the test CA."""

from __future__ import annotations

import imaplib
import ssl
import time
from contextlib import ExitStack
from pathlib import Path

import imapclient

from mailhub.config import ListenersConfig, TLSConfig
from tests.support.service import LOOPBACK_ANY_PORT, ServiceTestCase, simple_message
from tests.support.tls import CertificateAuthority, client_context

USER = "carol@example.com"


class IMAPService(ServiceTestCase):
    def start_imap(self) -> None:
        directory = Path(self.mktemp()).absolute()
        ca = CertificateAuthority()
        cert, key = ca.issue(["localhost"], ip_addresses=["127.0.0.1"]).write(directory, "server")
        self.ca_file = ca.write_root(directory)
        listeners = ListenersConfig(
            smtp=(LOOPBACK_ANY_PORT,), imap=(LOOPBACK_ANY_PORT,), imaps=(LOOPBACK_ANY_PORT,)
        )
        self.start(listeners=listeners, tls=TLSConfig(certificate=cert, key=key))
        self.imap_port = self.port("imap")
        self.imaps_port = self.port("imaps")

    def context(self) -> ssl.SSLContext:
        return client_context(self.ca_file)


class Imaplib(IMAPService):
    async def test_starttls_login_select_fetch_store_expunge(self) -> None:
        self.start_imap()

        def deliver() -> None:
            with self.smtp() as smtp:
                smtp.send_message(simple_message(to=USER, subject="over smtp"))

        await self.in_thread(deliver)

        def session() -> dict:
            out: dict = {}
            with imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=10) as client:
                out["before"] = client.capabilities
                client.starttls(ssl_context=self.context())  # verifies 127.0.0.1 by the CA
                out["after"] = client.capabilities
                out["tls"] = client.sock.version()
                client.login(USER, "any")
                _, data = client.select("INBOX")
                out["exists"] = data[0]
                _, data = client.fetch("1", "(UID FLAGS RFC822.SIZE BODY.PEEK[])")
                out["fetch"] = data
                client.store("1", "+FLAGS", r"(\Deleted)")
                _, data = client.expunge()
                out["expunged"] = data
                _, data = client.list()
                out["list"] = data
                client.logout()
            return out

        out = await self.in_thread(session)
        self.assertIn("STARTTLS", out["before"])
        self.assertNotIn("STARTTLS", out["after"])
        self.assertIn("AUTH=PLAIN", out["after"])
        self.assertIn(out["tls"], ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(out["exists"], b"1")
        (head, body), _ = out["fetch"]
        self.assertIn(b"UID 1 FLAGS (\\Recent)", head)
        self.assertIn(b"Subject: over smtp", body)
        self.assertIn(b"RFC822.SIZE %d" % len(body), head)
        self.assertEqual(out["expunged"], [b"1"])
        self.assertIn(b'(\\HasNoChildren \\Sent) "." Sent', out["list"])
        self.assertEqual(self.delivered(USER), [])

    async def test_implicit_tls_append_and_wrong_certificate_is_refused(self) -> None:
        self.start_imap()

        def session() -> tuple:
            with imaplib.IMAP4_SSL(
                "127.0.0.1", self.imaps_port, ssl_context=self.context(), timeout=10
            ) as client:
                caps = client.capabilities
                client.login(USER, "any")
                typ, data = client.append("Drafts", r"(\Draft)", None, simple_message(to=USER)
                                          .as_bytes().replace(b"\n", b"\r\n"))  # fmt: skip
                appended = data[0]
                client.logout()
            untrusted = ssl.create_default_context()  # the system CAs do not know the test CA
            try:
                imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, ssl_context=untrusted, timeout=10)
                refused = False
            except ssl.SSLCertVerificationError:
                refused = True
            return caps, typ, appended, refused

        caps, typ, appended, refused = await self.in_thread(session)
        self.assertNotIn("STARTTLS", caps)
        self.assertIn("AUTH=PLAIN", caps)
        self.assertEqual(typ, "OK")
        self.assertRegex(appended, rb"^\[APPENDUID \d+ 1\]")
        self.assertTrue(refused)
        mailbox = self.service.store.mailbox(USER)
        [info] = mailbox.folder("Drafts").sync().messages
        self.assertEqual(info.flags, {"D"})


class IMAPClient(IMAPService):
    async def test_folders_flags_copy_move_and_idle_with_delivery(self) -> None:
        self.start_imap()

        def session() -> dict:
            out: dict = {}
            with imapclient.IMAPClient(
                "127.0.0.1", port=self.imaps_port, ssl=True, ssl_context=self.context(), timeout=10
            ) as client:
                client.login(USER, "pw")
                client.create_folder("Projects.2024")
                out["folders"] = [f[2] for f in client.list_folders()]
                out["special"] = client.find_special_folder(imapclient.imapclient.SENT)
                for n in range(3):
                    client.append("INBOX", f"Subject: n{n}\r\n\r\nbody {n}\r\n".encode())
                info = client.select_folder("INBOX")
                out["select"] = info
                client.add_flags([1, 2], [imapclient.SEEN, b"$Label1"])
                out["flags"] = client.get_flags([1, 2, 3])
                client.copy([1], "Projects.2024")
                out["copy_status"] = client.folder_status("Projects.2024", ["MESSAGES", "UIDNEXT"])
                client.move([2], "Trash")
                out["after_move"] = client.search()
                out["fetch"] = client.fetch([3], ["ENVELOPE", "BODY.PEEK[TEXT]"])
                client.idle()
                with self.smtp() as smtp:
                    smtp.send_message(simple_message(to=USER, subject="during idle"))
                start = time.monotonic()
                out["idle"] = client.idle_check(timeout=5)
                out["idle_seconds"] = time.monotonic() - start
                client.idle_done()
                out["status"] = client.folder_status("Trash", ["MESSAGES", "UIDNEXT"])
                client.logout()
            return out

        out = await self.in_thread(session)
        self.assertIn("Projects.2024", out["folders"])
        self.assertEqual(out["special"], "Sent")
        self.assertEqual(out["select"][b"EXISTS"], 3)
        # Appended without flags: in new/, so \Recent for the session that selected first.
        self.assertEqual(out["flags"][1], (b"\\Seen", b"$Label1", b"\\Recent"))
        self.assertEqual(out["flags"][3], (b"\\Recent",))
        self.assertEqual(out["copy_status"], {b"MESSAGES": 1, b"UIDNEXT": 2})
        self.assertEqual(out["after_move"], [1, 3])
        self.assertEqual(out["fetch"][3][b"ENVELOPE"].subject, b"n2")
        self.assertEqual(out["fetch"][3][b"BODY[TEXT]"], b"body 2\r\n")
        self.assertIn((3, b"EXISTS"), out["idle"])
        self.assertLess(out["idle_seconds"], 3.0)
        self.assertEqual(out["status"], {b"MESSAGES": 1, b"UIDNEXT": 2})


class RecordingIMAP4(imaplib.IMAP4):
    """imaplib, keeping every line the server sent in order (imaplib files untagged responses
    by type, which loses the order this test is about)."""

    lines: list[bytes]

    def __init__(self, host: str, port: int) -> None:
        self.lines = []
        super().__init__(host, port, timeout=10)

    def _get_line(self) -> bytes:
        line = super()._get_line()
        self.lines.append(line)
        return line

    def take(self) -> list[bytes]:
        lines, self.lines = self.lines, []
        return lines


class KeywordsAnnounced(IMAPService):
    """RFC 3501 7.2.6 with real clients in two sessions: a keyword set by one reaches the
    other in FLAGS before any FETCH carries it (on NOOP, FETCH and during IDLE)."""

    skip = None if imapclient is not None else "imapclient is not installed"

    async def test_other_sessions_keywords_come_in_flags_first(self) -> None:
        self.start_imap()

        def sessions() -> dict:
            out: dict = {}
            with ExitStack() as stack:
                one = stack.enter_context(RecordingIMAP4("127.0.0.1", self.imap_port))
                two = stack.enter_context(RecordingIMAP4("127.0.0.1", self.imap_port))
                three = stack.enter_context(
                    imapclient.IMAPClient("127.0.0.1", port=self.imap_port, ssl=False, timeout=10)
                )
                for client in (one, two, three):
                    client.login(USER, "any")
                for n in range(2):
                    one.append("INBOX", None, None, f"Subject: n{n}\r\n\r\nbody\r\n".encode())
                one.select("INBOX")
                two.select("INBOX")
                three.select_folder("INBOX")
                two.take()
                one.store("1", "+FLAGS", "($New)")
                two.noop()
                out["noop"] = two.take()
                one.store("2", "+FLAGS", "($Other)")
                two.fetch("2", "(FLAGS)")
                out["fetch"] = two.take()
                three.idle()
                one.store("1", "+FLAGS", "($Idle)")
                seen: list = []
                deadline = time.monotonic() + 10
                while not any(b"FETCH" in r for r in seen) and time.monotonic() < deadline:
                    seen += three.idle_check(timeout=5)
                three.idle_done()
                out["idle"] = seen
            return out

        out = await self.in_thread(sessions)

        def first(lines: list[bytes], prefix: bytes) -> int:
            found = [i for i, line in enumerate(lines) if line.startswith(prefix)]
            self.assertTrue(found, f"no {prefix!r} in {lines!r}")
            return found[0]

        noop = out["noop"]
        self.assertLess(first(noop, b"* FLAGS ("), first(noop, b"* 1 FETCH"), noop)
        self.assertIn(b"$New)", noop[first(noop, b"* FLAGS (")])
        self.assertIn(b"$New", noop[first(noop, b"* 1 FETCH")])
        self.assertIn(b"* OK [PERMANENTFLAGS (", noop[first(noop, b"* FLAGS (") + 1])
        fetch = out["fetch"]
        flags = first(fetch, b"* FLAGS (")
        self.assertIn(b"$Other", fetch[flags])
        carrying = [i for i, line in enumerate(fetch) if b"$Other" in line and b"FETCH" in line]
        self.assertTrue(carrying and min(carrying) > flags, fetch)
        idle = out["idle"]
        kinds = [r[1] if isinstance(r[0], int) else r[0] for r in idle]
        self.assertLess(kinds.index(b"FLAGS"), kinds.index(b"FETCH"), idle)
        self.assertIn(b"$Idle", idle[kinds.index(b"FLAGS")][1])
