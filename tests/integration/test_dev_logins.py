"""Dev stack logins become mailbox directories, so the name must be an address by SMTP's rules
(issue 12, 5h): over SMTP AUTH, IMAP LOGIN and POP3 USER/PASS, a name with a bidi override,
``*`` or ``%``, an ``@`` in its local part or a bogus ``xn--`` label is refused with each
protocol's authentication failure, and no directory is made."""

from __future__ import annotations

import dataclasses
import poplib
import smtplib
import socket
from base64 import b64encode

from mailhub.config import Limits, ListenersConfig, TLSConfig
from mailhub.service import MailhubService
from tests.support.service import LOOPBACK_ANY_PORT, ServiceTestCase

BAD_NAMES = [
    "\u202egnp.exe@example.com",  # RIGHT-TO-LEFT OVERRIDE: reads as "moc.elpmaxe@exe.png"
    "*@example.com",
    "%",  # a bare name gets @localhost
    "x@x@example.com",
    '"x@x"@example.com',
    "a@xn--zz.example",  # not a valid A-label
    "a@[127.0.0.1]",
]


class DevLogins(ServiceTestCase):
    def setUp(self) -> None:
        listeners = ListenersConfig(
            submission=(LOOPBACK_ANY_PORT,), imap=(LOOPBACK_ANY_PORT,), pop3=(LOOPBACK_ANY_PORT,)
        )
        # Refusals answered at once and never a disconnect: the test makes many on purpose.
        limits = dataclasses.replace(Limits(), auth_max_delay=0.0, auth_max_failures=1000)
        self.service = self.start_listeners(listeners, limits)

    def start_listeners(self, listeners: ListenersConfig, limits: Limits) -> MailhubService:
        # ServiceTestCase.start reads an SMTP port; these tests have no MTA listener.
        return self.start_config(None, listeners=listeners, limits=limits, tls=TLSConfig())

    def mailboxes(self) -> list[str]:
        mail = self.service.config.mail_dir
        return sorted(f"{p.name}@{d.name}" for d in mail.iterdir() for p in d.iterdir())

    # Each returns the server's answer to one login, over its own connection (in a thread).

    def smtp_auth(self, name: str) -> bytes:
        with smtplib.SMTP("127.0.0.1", self.port("submission"), timeout=10) as client:
            client.ehlo()
            token = b64encode(b"\0" + name.encode() + b"\0pw").decode()
            code, text = client.docmd("AUTH", f"PLAIN {token}")
            return b"%d %s" % (code, text)

    def imap_login(self, name: str) -> bytes:
        raw = name.encode()
        with socket.create_connection(("127.0.0.1", self.port("imap")), timeout=10) as s:
            reader = s.makefile("rb")
            reader.readline()  # greeting
            # A literal carries any octets (RFC 3501 4.3; LITERAL+, RFC 7888, saves a round trip).
            s.sendall(b"a1 LOGIN {%d+}\r\n%s pw\r\n" % (len(raw), raw))
            while not (line := reader.readline()).startswith(b"a1 "):
                pass
            return line.rstrip()

    def pop3_login(self, name: str) -> bytes:
        client = poplib.POP3("127.0.0.1", self.port("pop3"), timeout=10)
        try:
            client.user(name)
            client.pass_("pw")
        except poplib.error_proto as e:
            return e.args[0]
        else:
            return b"+OK"
        finally:
            client.close()

    async def test_bad_names_are_refused_by_every_protocol(self) -> None:
        for name in BAD_NAMES:
            answer = await self.in_thread(self.smtp_auth, name)
            self.assertTrue(answer.startswith(b"535 5.7.8"), (name, answer))
            answer = await self.in_thread(self.imap_login, name)
            self.assertTrue(answer.startswith(b"a1 NO [AUTHENTICATIONFAILED]"), (name, answer))
            answer = await self.in_thread(self.pop3_login, name)
            self.assertTrue(answer.startswith(b"-ERR [AUTH]"), (name, answer))
        self.assertEqual(self.mailboxes(), [])

    async def test_addresses_still_log_in(self) -> None:
        answer = await self.in_thread(self.smtp_auth, "Dev@Example.COM")
        self.assertTrue(answer.startswith(b"235 2.7.0"), answer)
        answer = await self.in_thread(self.imap_login, "bücher@bücher.example")
        self.assertTrue(answer.startswith(b"a1 OK"), answer)
        self.assertEqual(await self.in_thread(self.pop3_login, "tester"), b"+OK")
        self.assertEqual(
            self.mailboxes(),
            ["bücher@xn--bcher-kva.example", "dev@example.com", "tester@localhost"],
        )
