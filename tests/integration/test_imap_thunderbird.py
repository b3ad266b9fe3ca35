"""Real Thunderbird, unmodified and headless, against mailhub's IMAP server over verified STARTTLS.

Thunderbird runs on a throw-away profile: ``user.js`` defines one IMAP account on the test
server's port (STARTTLS, normal password, messages kept for offline use) and the profile's NSS
database (made with ``certutil``, Debian's libnss3-tools) trusts only the test CA, so Thunderbird
verifies mailhub's certificate chain for ``localhost`` as it would a real server's. It is driven
through Marionette with chrome-privileged JavaScript making the calls its own buttons make:
the password is stored in its login manager, then "Get Messages", "Mark as Read", "Star",
"Delete". The story:

1. three messages delivered by SMTP reach Thunderbird's offline store (ImapMail/localhost/INBOX)
   byte for byte, and Thunderbird knows the special-use folders (Sent, Drafts, Trash, Junk,
   Archive) by their LIST flags and has made its folder files for them;
2. Thunderbird marks one message read, flags another and deletes a third: the server's Maildir
   shows ``S`` and ``F`` in the file names and the third message moved to .Trash;
3. a message delivered by SMTP while Thunderbird sits in IDLE is announced (``* n EXISTS``)
   and lands in the offline store;
4. Thunderbird quits; another client (imaplib) moves a flag and a message arrives; started
   again on the same profile with "check for new messages at startup" (its password now saved),
   Thunderbird downloads the new message and shows the flags as the other client left them;
5. throughout, every Thunderbird connection went through STARTTLS before logging in, and the
   server answered none of its commands with NO or BAD (a recording wrapper around the imap
   listener's factory keeps each dialogue: shown when a check fails, and kept as
   imap-dialogues.txt in the test's temporary directory).

The story runs with Thunderbird's default settings and again with its CONDSTORE support on
(about 9 s each: Thunderbird starts twice). Two short tests (2-3 s) look at the TLS around it:
an account on the imaps listener (implicit TLS) does its first sync, and a profile that does
not trust the test CA refuses the certificate at STARTTLS and never logs in. Sending through
the submission listener is in test_smtp_thunderbird.py.
"""

from __future__ import annotations

import imaplib
from typing import Any

from mailhub.config import ListenersConfig
from tests.support.service import LOOPBACK_ANY_PORT, simple_message
from tests.support.thunderbird import (
    GET_MESSAGES,
    IMPLICIT_TLS,
    PRELUDE,
    Dialogue,
    ImapAccount,
    ThunderbirdCase,
    refusals,
)
from tests.support.tls import client_context

USER = "tess@example.com"
PASSWORD = "any"  # the dev stack takes any password

BODIES = {
    "read me": "Mark this one read.\n",
    "flag me": "Star this one.\n",
    "delete me": "Move this one to the Trash.\n",
}
NO_FLAGS = {subject: "" for subject in BODIES}
AWAY = ("arrives while Thunderbird is away", "Found at the next start.\n")
LATE = ("arrives during IDLE", "Pushed while Thunderbird was idling.\n")

FOLDERS = (
    PRELUDE
    + """
const F = Ci.nsMsgFolderFlags;
const special = {Inbox: F.Inbox, Sent: F.SentMail, Drafts: F.Drafts, Trash: F.Trash,
                 Junk: F.Junk, Archive: F.Archive};
return server.rootFolder.descendants.map(folder => [
  folder.name,
  Object.keys(special).filter(key => folder.getFlag(special[key])),
]);
"""
)

ACT = (
    PRELUDE
    + """
const [action, subject] = arguments;
const hdr = [...inbox.msgDatabase.enumerateMessages()].find(
  h => h.mime2DecodedSubject == subject);
if (!hdr) return `Thunderbird has no message ${subject}`;
if (action == "read") inbox.markMessagesRead([hdr], true);
else if (action == "flag") inbox.markMessagesFlagged([hdr], true);
// The Delete key: with the default IMAP delete model the message moves to the Trash folder.
else if (action == "delete") inbox.deleteMessages([hdr], msgWindow, false, false, null, true);
else return `no action ${action}`;
return "done";
"""
)

READ_FLAGGED = (
    PRELUDE
    + """
return Object.fromEntries([...inbox.msgDatabase.enumerateMessages()].map(
  h => [h.mime2DecodedSubject, [h.isRead, h.isFlagged]]));
"""
)


def thunderbird_sessions(dialogues: list[Dialogue]) -> list[Dialogue]:
    """The recorded sessions that Thunderbird opened (it says who it is with ID)."""
    said = b'ID ("name" "Thunderbird"'
    return [d for d in dialogues if said in b"".join(data for who, data in d.parts if who == "C")]


def commands(dialogue: Dialogue) -> list[bytes]:
    """The command names (after the tag) a session's client sent, in order."""
    return [line.split(b" ")[1].upper() for line in dialogue.lines("C") if b" " in line]


class ThunderbirdIMAP(ThunderbirdCase):
    def setUp(self) -> None:
        listeners = ListenersConfig(
            smtp=(LOOPBACK_ANY_PORT,), imap=(LOOPBACK_ANY_PORT,), imaps=(LOOPBACK_ANY_PORT,)
        )
        self.start_server(listeners, recorded=("imap", "imaps"))

    # -- helpers ------------------------------------------------------------------------------

    def deliver(self, subject: str, body: str) -> None:
        with self.smtp() as smtp:
            smtp.send_message(simple_message(to=USER, subject=subject, body=body))

    def move_flag_elsewhere(self) -> None:
        """Another client (imaplib, STARTTLS) flags "read me" and unflags "flag me"."""
        with imaplib.IMAP4("127.0.0.1", self.port("imap"), timeout=10) as client:
            client.starttls(client_context(self.ca_file))
            client.login(USER, PASSWORD)
            client.select("INBOX")
            for subject, change in (("read me", "+FLAGS"), ("flag me", "-FLAGS")):
                _, [uid] = client.uid("SEARCH", "SUBJECT", f'"{subject}"')
                self.assertEqual(len(uid.split()), 1)
                client.uid("STORE", uid.decode(), change, "(\\Flagged)")
            client.logout()

    def idling(self) -> tuple[int, int] | None:
        """(dialogue, position) of a session whose last command is IDLE, still running."""
        for n, dialogue in enumerate(self.dialogues("imap")):
            said = [line for line in dialogue.lines("C") if line]
            if said and said[-1].upper().endswith(b" IDLE"):
                return n, len(dialogue.parts)
        return None

    # -- the story ----------------------------------------------------------------------------

    async def test_default_settings(self) -> None:
        await self.story()

    async def test_condstore(self) -> None:
        """The same story with Thunderbird's CONDSTORE support (RFC 7162, off by default) on:
        after the restart it resynchronises flags with UID FETCH ... (CHANGEDSINCE n)."""
        await self.story(use_condstore=True)
        sessions = thunderbird_sessions(self.dialogues("imap"))
        said = b"".join(d for s in sessions for w, d in s.parts if w == "C")
        self.assertIn(b"(CHANGEDSINCE ", said, self.evidence())

    async def test_implicit_tls(self) -> None:
        """An account on the imaps listener (TLS from the first byte, RFC 8314 3; Thunderbird's
        "SSL/TLS", socketType 3): the first sync brings every message into the offline store
        byte for byte, with no STARTTLS and nothing refused."""
        for subject, body in BODIES.items():
            await self.in_thread(self.deliver, subject, body)
        delivered = {subject: raw for subject, (_, raw) in self.maildir(USER).items()}
        self.make_thunderbird(ImapAccount(USER, "localhost", self.port("imaps"), IMPLICIT_TLS))
        marionette = await self.start_thunderbird()
        await self.run_js(marionette, GET_MESSAGES, "imap://localhost", USER, PASSWORD)

        await self.until("all three messages offline", lambda: set(self.offline()) >= set(BODIES))
        self.assertEqual(self.offline(), {s: raw + b"\r\n" for s, raw in delivered.items()})
        sessions = thunderbird_sessions(self.dialogues("imaps"))
        self.assertGreaterEqual(len(sessions), 1, self.evidence())
        for dialogue in sessions:
            said = commands(dialogue)
            # It logs in at once, in the TLS session it opened with: no STARTTLS.
            self.assertIn(b"AUTHENTICATE", said, dialogue.transcript())
            self.assertNotIn(b"STARTTLS", said, dialogue.transcript())
        self.assertEqual(refusals(self.dialogues("imaps")), [], self.evidence())
        self.assertEqual(self.dialogues("imap"), [])  # the STARTTLS listener was not used

    async def test_untrusted_certificate(self) -> None:
        """A profile that does not trust the test CA: Thunderbird breaks off the STARTTLS
        handshake (a TLS alert the server sees) and never sends LOGIN or AUTHENTICATE."""
        self.make_thunderbird(ImapAccount(USER, "localhost", self.port("imap")), trust_ca=False)
        marionette = await self.start_thunderbird()
        await self.run_js(marionette, GET_MESSAGES, "imap://localhost", USER, PASSWORD)

        def refused() -> list[Dialogue]:
            return [
                d
                for d in self.dialogues("imap")
                if commands(d)[-1:] == [b"STARTTLS"] and d.lost is not None
            ]

        [first, *_] = await self.until("a refused TLS handshake", refused, timeout=20)
        self.assertIn(b"OK", first.lines("S")[-2], first.transcript())  # STARTTLS accepted
        self.assertIn("alert", first.lost, self.evidence())
        for dialogue in self.dialogues("imap"):
            said = commands(dialogue)
            self.assertNotIn(b"LOGIN", said, dialogue.transcript())
            self.assertNotIn(b"AUTHENTICATE", said, dialogue.transcript())

    async def story(self, **prefs: Any) -> None:
        for subject, body in BODIES.items():
            await self.in_thread(self.deliver, subject, body)
        delivered = {subject: raw for subject, (_, raw) in self.maildir(USER).items()}
        self.assertEqual(set(delivered), set(BODIES))

        self.make_thunderbird(ImapAccount(USER, "localhost", self.port("imap")))
        self.thunderbird.make_profile()
        self.thunderbird.set_prefs(**prefs)
        marionette = await self.start_thunderbird()
        inbox = await self.run_js(marionette, GET_MESSAGES, "imap://localhost", USER, PASSWORD)
        self.assertEqual(inbox, "imap://tess%40example.com@localhost/INBOX")

        # 1. The offline store holds every message exactly as the server has it (and the blank
        # line that ends an mbox entry).
        await self.until("all three messages offline", lambda: set(self.offline()) >= set(BODIES))
        offline = self.offline()
        for subject, raw in delivered.items():
            self.assertEqual(offline[subject], raw + b"\r\n", subject)
            self.assertIn(BODIES[subject].replace("\n", "\r\n").encode(), offline[subject])
        # Downloading for offline use peeked: nothing was marked read on the server.
        self.assertEqual({s: flags for s, (flags, _) in self.maildir(USER).items()}, NO_FLAGS)

        # The special-use folders, known by their LIST attributes (RFC 6154), each with its
        # folder file in the profile.
        async def folders() -> dict[str, list[str]]:
            return dict(await self.run_js(marionette, FOLDERS))

        async def all_six() -> bool:
            return len(await folders()) >= 6

        await self.until("the six folders", all_six)
        found = await folders()
        self.assertEqual(
            found,
            {
                "INBOX": ["Inbox"],
                "Sent": ["Sent"],
                "Drafts": ["Drafts"],
                "Trash": ["Trash"],
                "Junk": ["Junk"],
                "Archive": ["Archive"],
            },
            self.evidence(),
        )
        store = self.thunderbird.profile / "ImapMail" / "localhost"
        folder_files = {p.name for p in store.glob("*.msf")}
        self.assertEqual(folder_files, {f"{name}.msf" for name in found})

        # 2. Read, star and delete in Thunderbird; the server's Maildir file names show each.
        for action, subject in (("read", "read me"), ("flag", "flag me"), ("delete", "delete me")):
            self.assertEqual(await self.run_js(marionette, ACT, action, subject), "done")
        expected_inbox = {"read me": "S", "flag me": "F"}

        def changed() -> bool:
            inbox = {s: flags for s, (flags, _) in self.maildir(USER).items()}
            return inbox == expected_inbox and set(self.maildir(USER, "Trash")) == {"delete me"}

        await self.until("read, flagged and moved to Trash on the server", changed)
        # Moved whole: the Trash copy is the delivered message, not marked deleted.
        self.assertEqual(self.maildir(USER, "Trash")["delete me"], ("", delivered["delete me"]))

        # 3. New mail while Thunderbird idles: announced at once, downloaded for offline use.
        session, position = await self.until("Thunderbird idling in a session", self.idling)
        await self.in_thread(self.deliver, *LATE)
        await self.until("the late message offline", lambda: LATE[0] in self.offline())
        dialogue = self.dialogues("imap")[session]
        during_idle = dialogue.parts[position:]
        said = [who for who, _ in during_idle]
        first_client = said.index("C") if "C" in said else len(said)
        announced = b"".join(data for _, data in during_idle[:first_client])
        self.assertRegex(announced, rb"\* \d+ EXISTS\r\n", self.evidence())
        self.assertEqual(during_idle[first_client][1], b"DONE\r\n", self.evidence())
        late_raw = self.maildir(USER)[LATE[0]][1]
        self.assertEqual(self.offline()[LATE[0]], late_raw + b"\r\n")

        # 4. Quit. While Thunderbird is away another client moves a flag and mail arrives;
        # started again on the same profile (its saved password; "check for new messages at
        # startup" now on), Thunderbird catches up by itself.
        await self.in_thread(self.thunderbird.quit, marionette)
        await self.in_thread(self.move_flag_elsewhere)
        await self.in_thread(self.deliver, *AWAY)
        self.thunderbird.set_prefs(**prefs, login_at_startup=True)
        marionette = await self.start_thunderbird()
        await self.until(
            "the message delivered while away, offline", lambda: AWAY[0] in self.offline()
        )
        self.assertEqual(self.offline()[AWAY[0]], self.maildir(USER)[AWAY[0]][1] + b"\r\n")
        expected = {
            "read me": [True, True],  # [read, flagged]
            "flag me": [False, False],
            LATE[0]: [False, False],
            AWAY[0]: [False, False],
        }

        async def caught_up() -> bool:
            return await self.run_js(marionette, READ_FLAGGED) == expected

        await self.until("the flags moved by another client", caught_up)

        # 5. Every Thunderbird session began with STARTTLS, and none of its commands was
        # answered NO or BAD.
        sessions = thunderbird_sessions(self.dialogues("imap"))
        self.assertGreaterEqual(len(sessions), 2, self.evidence())
        for dialogue in sessions:
            self.assertEqual(commands(dialogue)[:1], [b"STARTTLS"], dialogue.transcript())
        self.assertEqual(refusals(sessions), [], self.evidence())
