"""Real ``mutt`` against mailhub's IMAP server, unmodified, over verified TLS.

mutt is a full-screen program: it runs under a pseudo-terminal with a throw-away muttrc (HOME is a
temporary directory, ``-n`` skips the system muttrc) and is driven by keys ``push``ed on its
command line, so it works through the story and quits on its own:

1. three messages delivered by SMTP are in the INBOX mutt opens;
2. mutt flags "flag me", copies "copy me" to Archive, deletes "delete me" and syncs the mailbox;
3. mutt quits with status 0, and the server (its store, and imaplib as a third client) shows the
   \\Flagged flag, the copy in Archive and the expunge.

mutt trusts only the test CA (``ssl_ca_certificates_file``) and never falls back to clear text
(``ssl_force_tls``). It refuses keys pushed from the command line at its certificate prompt, so an
unverified server leaves it waiting there: the hard timeout kills it and the test fails with its
screen. The story runs once over implicit TLS (imaps) and once over STARTTLS (imap)."""

from __future__ import annotations

import email
import email.policy
import fcntl
import imaplib
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

from mailhub.config import ListenersConfig, TLSConfig
from tests.support.service import LOOPBACK_ANY_PORT, ServiceTestCase, simple_message
from tests.support.tls import CertificateAuthority, client_context
from tests.support.tools import requires, tool

USER = "erin@example.com"
MUTT_TIMEOUT = 60  # seconds; mutt needs about one, a hung one is killed and its screen shown

# The keys mutt runs after opening the INBOX. Searches (subject or sender, mutt's default simple
# search) find each message whatever the order; <kill-line> clears the prompt's default folder.
STORY_KEYS = (
    "<search>flag me<enter><flag-message>"
    "<search>copy me<enter><copy-message><kill-line>=Archive<enter>"
    "<search>delete me<enter><delete-message>"
    "<sync-mailbox>"
    "<quit>"
)


# Terminal control sequences (vt100 / ncurses), dropped so a failure shows mutt's words.
CONTROL = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-B]|\x1b[=>]|[\x0e\x0f]")


def readable(screen: bytes) -> str:
    return CONTROL.sub(b"", screen).replace(b"\r", b"\n").decode("utf-8", "replace")


@requires(tool("mutt"))
class Mutt(ServiceTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.home = self.dir / "home"
        self.home.mkdir(parents=True)
        ca = CertificateAuthority()
        cert, key = ca.issue(["localhost"], ip_addresses=["127.0.0.1"]).write(self.dir, "server")
        self.ca_file = ca.write_root(self.dir)
        # mutt would write a certificate it was told to accept "always" here: it must never exist.
        self.accepted_certificates = self.home / "accepted-certificates"
        listeners = ListenersConfig(
            smtp=(LOOPBACK_ANY_PORT,), imap=(LOOPBACK_ANY_PORT,), imaps=(LOOPBACK_ANY_PORT,)
        )
        self.start(listeners=listeners, tls=TLSConfig(certificate=cert, key=key))

    # -- mutt ---------------------------------------------------------------------------------

    def muttrc(self, folder: str) -> Path:
        path = self.home / "muttrc"
        path.write_text(
            "\n".join(
                [
                    f'set folder="{folder}"',
                    f'set imap_user="{USER}"',
                    'set imap_pass="any"',  # the dev stack accepts any password
                    'set spoolfile="+INBOX"',
                    f'set ssl_ca_certificates_file="{self.ca_file}"',
                    f'set certificate_file="{self.accepted_certificates}"',
                    "set ssl_force_tls=yes",
                    "set ssl_starttls=yes",
                    "unset imap_passive",
                    "unset imap_check_subscribed",
                    "unset header_cache",
                    "set timeout=10",
                    "set mail_check=5",
                    "unset confirmappend",
                    "set quit=yes",
                    "set delete=yes",
                    "set move=no",
                    'set record=""',
                    "set postpone=no",
                    "set sort=mailbox-order",
                    "set sleep_time=0",
                    "unset wait_key",
                    "unset beep",
                    "",
                ]
            )
        )
        return path

    def run_mutt(
        self, folder: str, keys: str, typed: tuple[bytes, bytes] | None = None
    ) -> tuple[int, str]:
        """Run mutt under a pseudo-terminal until it exits (blocking: call through in_thread).

        ``typed`` is (prompt, key): the key is typed on the terminal, as a person would, once
        the prompt is on the screen (pushed keys cannot answer every prompt). Returns mutt's exit
        status and the text it drew. A mutt still running after MUTT_TIMEOUT seconds is killed
        and the test fails with that text."""
        env = {
            "HOME": str(self.home),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TERM": "vt100",
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.home),
        }
        argv = ["mutt", "-n", "-F", str(self.muttrc(folder)), "-e", f'push "{keys}"']
        controller, terminal = os.openpty()
        # A real screen size: mutt on a 0x0 terminal draws nothing useful to report.
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 132, 0, 0))
        try:
            proc = subprocess.Popen(
                argv,
                stdin=terminal,
                stdout=terminal,
                stderr=terminal,
                env=env,
                cwd=self.home,
                start_new_session=True,  # the pty becomes mutt's controlling terminal
            )
        finally:
            os.close(terminal)
        screen = bytearray()
        deadline = time.monotonic() + MUTT_TIMEOUT
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([controller], [], [], 0.2)
                if ready:
                    try:
                        chunk = os.read(controller, 65536)
                    except OSError:  # EIO: mutt is gone and the terminal closed
                        chunk = b""
                    if not chunk:
                        break
                    screen += chunk
                    if typed is not None and typed[0] in CONTROL.sub(b"", screen):
                        os.write(controller, typed[1])
                        typed = None
                elif proc.poll() is not None:
                    break
            else:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise AssertionError(
                    f"mutt did not finish within {MUTT_TIMEOUT} s; its screen:\n{readable(screen)}"
                )
            status = proc.wait(timeout=10)
        finally:
            os.close(controller)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return status, readable(screen)

    # -- the server side ----------------------------------------------------------------------

    def deliver(self, *subjects: str) -> None:
        with self.smtp() as smtp:
            for subject in subjects:
                smtp.send_message(simple_message(to=USER, subject=subject))

    def folder_contents(self, name: str) -> dict[str, set[str]]:
        """Subject -> Maildir flags of every message in folder ``name``, read from the store."""
        folder = self.service.store.mailbox(USER).folder(name)
        out = {}
        for info in folder.sync().messages:
            msg = email.message_from_bytes(
                folder.read_message(info.uid), policy=email.policy.default
            )
            out[str(msg["Subject"])] = set(info.flags)
        return out

    def imaplib_flags(self) -> dict[str, bytes]:
        """Subject -> FLAGS of the INBOX as a third client (imaplib, implicit TLS) sees them."""
        with imaplib.IMAP4_SSL(
            "127.0.0.1",
            self.port("imaps"),
            ssl_context=client_context(self.ca_file),
            timeout=10,
        ) as client:
            client.login(USER, "any")
            client.select("INBOX", readonly=True)
            _, data = client.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            client.logout()
        out = {}
        for item in data:
            if isinstance(item, tuple):
                flags = item[0].split(b"FLAGS (", 1)[1].split(b")", 1)[0]
                subject = item[1].strip().removeprefix(b"Subject: ").decode()
                out[subject] = flags
        return out

    # -- the story ----------------------------------------------------------------------------

    async def story(self, folder: str) -> str:
        await self.in_thread(self.deliver, "flag me", "copy me", "delete me")

        status, screen = await self.in_thread(self.run_mutt, folder, STORY_KEYS)

        self.assertEqual(status, 0, f"mutt exited with {status}; its screen:\n{screen}")
        inbox = self.folder_contents("INBOX")
        self.assertEqual(set(inbox), {"flag me", "copy me"}, screen)  # "delete me" expunged
        self.assertIn("F", inbox["flag me"])
        self.assertNotIn("F", inbox["copy me"])
        self.assertNotIn("T", inbox["copy me"])  # copied, not moved
        self.assertEqual(set(self.folder_contents("Archive")), {"copy me"})
        seen_by_imaplib = await self.in_thread(self.imaplib_flags)
        self.assertEqual(set(seen_by_imaplib), {"flag me", "copy me"})
        self.assertIn(b"\\Flagged", seen_by_imaplib["flag me"])
        self.assertNotIn(b"\\Flagged", seen_by_imaplib["copy me"])
        # Verified, not accepted by hand: mutt stored no certificate.
        self.assertFalse(self.accepted_certificates.exists())
        return screen

    async def test_implicit_tls(self) -> None:
        screen = await self.story(f"imaps://localhost:{self.port('imaps')}/")
        self.assertRegex(screen, r"SSL/TLS connection using TLS1\.[23]")
        self.assertIn("flag me", screen)  # the index mutt drew listed the delivered mail

    async def test_starttls(self) -> None:
        screen = await self.story(f"imap://localhost:{self.port('imap')}/")
        self.assertRegex(screen, r"SSL/TLS connection using TLS1\.[23]")
        self.assertIn("flag me", screen)

    async def test_untrusted_certificate_is_rejected(self) -> None:
        """The stories pass because mutt verified the chain: trusting another CA, it stops at
        its certificate prompt, is answered "(r)eject" and never logs in to change anything."""
        await self.in_thread(self.deliver, "flag me", "copy me", "delete me")
        self.ca_file = CertificateAuthority("someone else").write_root(self.home)
        status, screen = await self.in_thread(
            self.run_mutt,
            f"imaps://localhost:{self.port('imaps')}/",
            "<quit>",  # with no mailbox open, the story's keys would only stack up prompts
            (b"(r)eject", b"r"),
        )
        self.assertIn("(r)eject, accept (o)nce", screen)
        self.assertNotIn("Authenticating", screen)
        self.assertEqual(
            self.folder_contents("INBOX"), {"flag me": set(), "copy me": set(), "delete me": set()}
        )
        self.assertFalse(self.accepted_certificates.exists())
        self.assertEqual(status, 0, screen)  # mutt itself carried on, with no mailbox, and quit
