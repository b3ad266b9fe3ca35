"""Several real imaplib sessions on one mailbox of a real server: what one session's change
does to what another is told (issue 12, section 4, items a, c and f).

Each step of a session runs in a thread (imaplib blocks) while the reactor serves both, so
the order of the steps is the order of the test's lines.
"""

from __future__ import annotations

import dataclasses
import imaplib
import re
import ssl
from pathlib import Path
from typing import Any

from mailhub.config import ListenersConfig, TLSConfig
from tests.support.service import LOOPBACK_ANY_PORT, ServiceTestCase, simple_message
from tests.support.tls import CertificateAuthority, client_context

USER = "dora@example.com"
FROZEN = 1_700_000_000.0  # every step in the same second: a clock cannot tell them apart


def raw(subject: str) -> bytes:
    return simple_message(to=USER, subject=subject).as_bytes().replace(b"\n", b"\r\n")


class SharedMailbox(ServiceTestCase):
    def setUp(self) -> None:
        directory = Path(self.mktemp()).absolute()
        ca = CertificateAuthority()
        cert, key = ca.issue(["localhost"], ip_addresses=["127.0.0.1"]).write(directory, "server")
        self.context: ssl.SSLContext = client_context(ca.write_root(directory))
        self.start(
            listeners=ListenersConfig(smtp=(LOOPBACK_ANY_PORT,), imaps=(LOOPBACK_ANY_PORT,)),
            tls=TLSConfig(certificate=cert, key=key),
        )
        self.imaps_port = self.port("imaps")

    def freeze_clock(self) -> None:
        """The store's clock stops (before any folder is opened): names created and deleted
        within one second, as a fast client does, but deterministic."""
        store = self.service.store
        store.settings = dataclasses.replace(store.settings, now=lambda: FROZEN)

    async def session(self) -> imaplib.IMAP4_SSL:
        def connect() -> imaplib.IMAP4_SSL:
            client = imaplib.IMAP4_SSL(
                "127.0.0.1", self.imaps_port, ssl_context=self.context, timeout=10
            )
            client.login(USER, "any")
            return client

        client = await self.in_thread(connect)
        self.addCleanup(self.in_thread, self._logout, client)
        return client

    @staticmethod
    def _logout(client: imaplib.IMAP4_SSL) -> None:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass

    async def do(self, client: imaplib.IMAP4_SSL, command: str, *args: Any) -> tuple[str, Any]:
        """One command; its untagged responses (only its own) in ``client.untagged_responses``."""
        client.untagged_responses.clear()
        return await self.in_thread(getattr(client, command), *args)

    async def status(self, client: imaplib.IMAP4_SSL, name: str) -> dict[str, int]:
        typ, data = await self.do(client, "status", name, "(UIDVALIDITY UIDNEXT MESSAGES)")
        self.assertEqual(typ, "OK", data)
        pairs = re.findall(rb"([A-Z]+) (\d+)", data[0].split(b"(", 1)[1])
        return {k.decode(): int(v) for k, v in pairs}

    async def append(self, client: imaplib.IMAP4_SSL, name: str, flags: str | None) -> None:
        typ, data = await self.do(client, "append", name, flags, None, raw(f"to {name}"))
        self.assertEqual(typ, "OK", data)

    # -- a. UIDVALIDITY of a re-created mailbox ---------------------------------------------

    async def test_recreated_mailbox_gets_a_greater_uidvalidity(self) -> None:
        self.freeze_clock()
        one, two = await self.session(), await self.session()
        await self.do(one, "create", "Lists")
        await self.append(one, "Lists", None)
        first = await self.status(one, "Lists")
        self.assertEqual(first["UIDNEXT"], 2)
        await self.do(two, "delete", "Lists")
        await self.do(two, "create", "Lists")
        await self.append(two, "Lists", None)
        again = await self.status(one, "Lists")
        self.assertEqual(again["UIDNEXT"], 2)
        # RFC 3501 2.3.1.1: UID 1 is another message now, so UIDVALIDITY must be greater.
        self.assertGreater(again["UIDVALIDITY"], first["UIDVALIDITY"])

    async def test_rename_then_create_of_the_old_names_gets_new_uidvalidities(self) -> None:
        self.freeze_clock()
        one, two = await self.session(), await self.session()
        await self.do(one, "create", "Work.Old")
        await self.append(one, "Work", None)
        await self.append(one, "Work.Old", None)
        work, old = await self.status(one, "Work"), await self.status(one, "Work.Old")
        self.assertNotEqual(work["UIDVALIDITY"], old["UIDVALIDITY"])
        typ, data = await self.do(two, "rename", "Work", "Attic")
        self.assertEqual(typ, "OK", data)
        # The renamed folders keep their UIDs, so they keep their UIDVALIDITY (6.3.5).
        self.assertEqual((await self.status(two, "Attic"))["UIDVALIDITY"], work["UIDVALIDITY"])
        self.assertEqual((await self.status(two, "Attic.Old"))["UIDVALIDITY"],
                         old["UIDVALIDITY"])  # fmt: skip
        await self.do(two, "create", "Work.Old")
        await self.append(two, "Work", None)
        await self.append(two, "Work.Old", None)
        highest = max(work["UIDVALIDITY"], old["UIDVALIDITY"])
        self.assertGreater((await self.status(one, "Work"))["UIDVALIDITY"], highest)
        self.assertGreater((await self.status(one, "Work.Old"))["UIDVALIDITY"], highest)

    # -- c. \Recent of messages another session COPYs, APPENDs or MOVEs in -------------------

    async def test_copy_append_and_move_are_recent_for_the_selected_session(self) -> None:
        one, two = await self.session(), await self.session()
        await self.do(one, "create", "Shared")
        await self.append(two, "INBOX", r"(\Seen)")
        await self.append(two, "INBOX", r"(\Flagged)")
        typ, data = await self.do(one, "select", "Shared")
        self.assertEqual((typ, data), ("OK", [b"0"]))
        await self.do(two, "select", "INBOX")
        typ, data = await self.do(two, "copy", "1", "Shared")
        self.assertEqual(typ, "OK", data)
        await self.append(two, "Shared", r"(\Answered)")
        typ, data = await self.do(two, "uid", "MOVE", "2", "Shared")
        self.assertEqual(typ, "OK", data)
        typ, _ = await self.do(one, "noop")
        self.assertEqual(typ, "OK")
        self.assertEqual(one.untagged_responses.get("EXISTS"), [b"3"])
        # RFC 3501 2.3.2: new to this mailbox, and this session is the first to be told.
        self.assertEqual(one.untagged_responses.get("RECENT"), [b"3"])
        typ, data = await self.do(one, "fetch", "1:3", "(FLAGS)")
        self.assertEqual(typ, "OK")
        self.assertEqual(data, [b"1 (FLAGS (\\Seen \\Recent))", b"2 (FLAGS (\\Answered \\Recent))",
                                b"3 (FLAGS (\\Flagged \\Recent))"])  # fmt: skip
        # Exactly one session: the one that came second sees them, not as recent.
        three = await self.session()
        typ, data = await self.do(three, "select", "Shared")
        self.assertEqual((typ, data), ("OK", [b"3"]))
        self.assertEqual(three.untagged_responses.get("RECENT"), [b"0"])

    async def test_append_to_the_selected_mailbox_is_recent_for_the_appender(self) -> None:
        one, two = await self.session(), await self.session()
        await self.do(one, "select", "INBOX")
        await self.do(two, "select", "INBOX")
        await self.append(one, "INBOX", r"(\Seen)")
        self.assertEqual(one.untagged_responses.get("RECENT"), [b"1"])
        await self.do(two, "noop")
        self.assertEqual(two.untagged_responses.get("EXISTS"), [b"1"])
        self.assertEqual(two.untagged_responses.get("RECENT"), [b"0"])

    # -- f. FETCH of a message another session expunged, before this one is told ------------

    async def test_fetch_of_a_message_expunged_by_another_session_is_served(self) -> None:
        one, two = await self.session(), await self.session()
        await self.append(one, "INBOX", None)
        await self.append(one, "INBOX", r"(\Flagged)")
        await self.do(one, "select", "INBOX")
        await self.do(two, "select", "INBOX")
        await self.do(two, "store", "1:2", "+FLAGS.SILENT", r"(\Deleted)")
        typ, data = await self.do(two, "expunge")
        self.assertEqual((typ, data), ("OK", [b"2", b"1"]))
        # Session one was not told: RFC 2180 4.1.1/4.1.2, the data is still served.
        typ, data = await self.do(one, "fetch", "1:2", "(BODY.PEEK[] BODYSTRUCTURE)")
        self.assertEqual(typ, "OK", data)
        self.assertEqual([b"Subject: to INBOX" in part[1] for part in data[::2]], [True, True])
        typ, data = await self.do(one, "fetch", "2", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertEqual(typ, "OK", data)
        self.assertIn(b"Subject: to INBOX", data[0][1])
        typ, data = await self.do(one, "noop")
        self.assertEqual(one.untagged_responses.get("EXPUNGE"), [b"2", b"1"])
        self.assertEqual(self.kept_files(), [])  # told: nothing is kept for it any more

    async def test_expunged_data_is_released_when_the_session_ends(self) -> None:
        one, two = await self.session(), await self.session()
        await self.append(one, "INBOX", None)
        await self.do(one, "select", "INBOX")
        await self.do(two, "select", "INBOX")
        await self.do(two, "store", "1", "+FLAGS.SILENT", r"(\Deleted)")
        await self.do(two, "expunge")
        self.assertEqual(len(self.kept_files()), 1)
        await self.in_thread(one.logout)
        await self.do(two, "noop")  # a command round trip: the server saw the logout by now
        self.assertEqual(self.kept_files(), [])

    def kept_files(self) -> list[str]:
        """Files the store keeps outside new/ and cur/ for sessions not told of an expunge."""
        tmp = self.service.config.mail_dir / "example.com" / "dora" / "tmp"
        return sorted(p.name for p in tmp.iterdir())
