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

The story runs with Thunderbird's default settings and again with its CONDSTORE support on.
A run takes about 8 s (Thunderbird starts twice).
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor, task

from mailhub.config import ListenersConfig, TLSConfig
from tests.integration.helpers import LOOPBACK_ANY_PORT, ServiceTestCase, needs, simple_message
from tests.integration.thunderbird import (
    Dialogue,
    ImapAccount,
    Marionette,
    RecordingFactory,
    Thunderbird,
    offline_messages,
    refusals,
)
from tests.tlshelpers import CertificateAuthority, client_context

USER = "tess@example.com"
SYNC_TIMEOUT = 60  # seconds for Thunderbird to act; it needs one to five

BODIES = {
    "read me": "Mark this one read.\n",
    "flag me": "Star this one.\n",
    "delete me": "Move this one to the Trash.\n",
}
NO_FLAGS = {subject: "" for subject in BODIES}
AWAY = ("arrives while Thunderbird is away", "Found at the next start.\n")
LATE = ("arrives during IDLE", "Pushed while Thunderbird was idling.\n")

# Chrome JavaScript, run by Marionette inside Thunderbird. MailServices is Thunderbird's own
# service registry; each snippet ends in the call its menu command makes.
PRELUDE = """
const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
const server = MailServices.accounts.defaultAccount.incomingServer;
const inbox = server.rootFolder.getFolderWithFlags(Ci.nsMsgFolderFlags.Inbox);
const msgWindow = Services.wm.getMostRecentWindow("mail:3pane").msgWindow;
"""

GET_MESSAGES = (
    PRELUDE
    + """
const [origin, user, password] = arguments;
const login = Cc["@mozilla.org/login-manager/loginInfo;1"].createInstance(Ci.nsILoginInfo);
login.init(origin, null, origin, user, password, "", "");
return (async () => {
  await Services.logins.addLoginAsync(login);
  server.getNewMessages(inbox, msgWindow, null);  // the "Get Messages" button
  return inbox.URI;
})();
"""
)

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


class ThunderbirdIMAP(ServiceTestCase):
    skip = needs("thunderbird") or needs("certutil")

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir(parents=True)
        ca = CertificateAuthority()
        cert, key = ca.issue(["localhost"], ip_addresses=["127.0.0.1"]).write(self.dir, "server")
        self.ca_file = ca_file = ca.write_root(self.dir)
        listeners = ListenersConfig(smtp=(LOOPBACK_ANY_PORT,), imap=(LOOPBACK_ANY_PORT,))
        self.start(listeners=listeners, tls=TLSConfig(certificate=cert, key=key))
        # Record every IMAP dialogue: the listening port builds each connection's protocol
        # through its ``factory`` attribute, so wrapping it there sees every session.
        port = self.service.listening_ports("imap")[0]
        self.recorder = RecordingFactory(port.factory)
        port.factory = self.recorder
        account = ImapAccount(USER, "localhost", port.getHost().port, starttls=True)
        self.thunderbird = Thunderbird(self.dir / "thunderbird", account, ca_file)
        self.addCleanup(self.thunderbird.kill)
        # Kept beside the profile for whoever looks into a failure (or a passing run).
        self.addCleanup(lambda: (self.dir / "imap-dialogues.txt").write_text(self.evidence()))
        self.inbox_store = self.thunderbird.profile / "ImapMail" / "localhost" / "INBOX"

    # -- helpers ------------------------------------------------------------------------------

    def deliver(self, subject: str, body: str) -> None:
        with self.smtp() as smtp:
            smtp.send_message(simple_message(to=USER, subject=subject, body=body))

    def maildir(self, name: str) -> dict[str, tuple[str, bytes]]:
        """Subject -> (the flags in the file name, message bytes) of every message in folder
        ``name``, read straight from the server's Maildir as other Maildir tools would."""
        local, domain = USER.split("@")
        path = self.service.config.mail_dir / domain / local
        if name != "INBOX":
            path = path / f".{name}"
        out = {}
        for sub in ("new", "cur"):
            for message in (path / sub).iterdir():
                try:
                    raw = message.read_bytes()
                except FileNotFoundError:  # renamed (a flag changed) since the listing
                    continue
                msg = email.message_from_bytes(raw, policy=email.policy.default)
                out[str(msg["Subject"])] = (message.name.partition(":2,")[2], raw)
        return out

    def move_flag_elsewhere(self) -> None:
        """Another client (imaplib, STARTTLS) flags "read me" and unflags "flag me"."""
        with imaplib.IMAP4("127.0.0.1", self.port("imap"), timeout=10) as client:
            client.starttls(client_context(self.ca_file))
            client.login(USER, "any")
            client.select("INBOX")
            for subject, change in (("read me", "+FLAGS"), ("flag me", "-FLAGS")):
                _, [uid] = client.uid("SEARCH", "SUBJECT", f'"{subject}"')
                self.assertEqual(len(uid.split()), 1)
                client.uid("STORE", uid.decode(), change, "(\\Flagged)")
            client.logout()

    def thunderbird_dialogues(self) -> list[Dialogue]:
        """The recorded sessions that Thunderbird opened (it says who it is with ID)."""
        return [
            d
            for d in self.recorder.dialogues
            if b'ID ("name" "Thunderbird"' in b"".join(data for who, data in d.parts if who == "C")
        ]

    def offline(self) -> dict[str, bytes]:
        """Subject -> message bytes of Thunderbird's offline INBOX store."""
        out = {}
        for raw in offline_messages(self.inbox_store):
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            out[str(msg["Subject"])] = raw
        return out

    def evidence(self) -> str:
        dialogues = "\n-- next connection --\n".join(
            d.transcript() for d in self.recorder.dialogues
        )
        return f"\nIMAP dialogues:\n{dialogues}{self.thunderbird.tail()}"

    async def until(self, what: str, check: Callable[[], Any]) -> Any:
        """Poll ``check`` on the reactor thread (so the server keeps serving) until it returns
        something true; fail with the dialogues and Thunderbird's output at the deadline."""
        deadline = reactor.seconds() + SYNC_TIMEOUT  # type: ignore[attr-defined]
        while reactor.seconds() < deadline:  # type: ignore[attr-defined]
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            await task.deferLater(reactor, 0.1, lambda: None)  # type: ignore[arg-type]
        self.fail(f"Thunderbird did not get there within {SYNC_TIMEOUT} s: {what}{self.evidence()}")

    async def run_js(self, marionette: Marionette, script: str, *args: Any) -> Any:
        return await self.in_thread(marionette.run, script, *args)

    def idling(self) -> tuple[int, int] | None:
        """(dialogue, position) of a session whose last command is IDLE, still running."""
        for n, dialogue in enumerate(self.recorder.dialogues):
            commands = [line for line in dialogue.lines("C") if line]
            if commands and commands[-1].upper().endswith(b" IDLE"):
                return n, len(dialogue.parts)
        return None

    # -- the story ----------------------------------------------------------------------------

    async def test_default_settings(self) -> None:
        await self.story()

    async def test_condstore(self) -> None:
        """The same story with Thunderbird's CONDSTORE support (RFC 7162, off by default) on:
        after the restart it resynchronises flags with UID FETCH ... (CHANGEDSINCE n)."""
        await self.story(use_condstore=True)
        commands = b"".join(d for s in self.thunderbird_dialogues() for w, d in s.parts if w == "C")
        self.assertIn(b"(CHANGEDSINCE ", commands, self.evidence())

    async def story(self, **prefs: Any) -> None:
        for subject, body in BODIES.items():
            await self.in_thread(self.deliver, subject, body)
        delivered = {subject: raw for subject, (_, raw) in self.maildir("INBOX").items()}
        self.assertEqual(set(delivered), set(BODIES))

        self.thunderbird.make_profile()
        self.thunderbird.set_prefs(**prefs)
        marionette = await self.in_thread(self.thunderbird.start)
        self.addCleanup(marionette.close)
        inbox = await self.run_js(marionette, GET_MESSAGES, "imap://localhost", USER, "any")
        self.assertEqual(inbox, "imap://tess%40example.com@localhost/INBOX")

        # 1. The offline store holds every message exactly as the server has it (and the blank
        # line that ends an mbox entry).
        await self.until("all three messages offline", lambda: set(self.offline()) >= set(BODIES))
        offline = self.offline()
        for subject, raw in delivered.items():
            self.assertEqual(offline[subject], raw + b"\r\n", subject)
            self.assertIn(BODIES[subject].replace("\n", "\r\n").encode(), offline[subject])
        # Downloading for offline use peeked: nothing was marked read on the server.
        self.assertEqual({s: flags for s, (flags, _) in self.maildir("INBOX").items()}, NO_FLAGS)

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
        folder_files = {p.name for p in self.inbox_store.parent.glob("*.msf")}
        self.assertEqual(folder_files, {f"{name}.msf" for name in found})

        # 2. Read, star and delete in Thunderbird; the server's Maildir file names show each.
        for action, subject in (("read", "read me"), ("flag", "flag me"), ("delete", "delete me")):
            self.assertEqual(await self.run_js(marionette, ACT, action, subject), "done")
        expected_inbox = {"read me": "S", "flag me": "F"}

        def changed() -> bool:
            inbox = {s: flags for s, (flags, _) in self.maildir("INBOX").items()}
            return inbox == expected_inbox and set(self.maildir("Trash")) == {"delete me"}

        await self.until("read, flagged and moved to Trash on the server", changed)
        # Moved whole: the Trash copy is the delivered message, not marked deleted.
        self.assertEqual(self.maildir("Trash")["delete me"], ("", delivered["delete me"]))

        # 3. New mail while Thunderbird idles: announced at once, downloaded for offline use.
        session, position = await self.until("Thunderbird idling in a session", self.idling)
        await self.in_thread(self.deliver, *LATE)
        await self.until("the late message offline", lambda: LATE[0] in self.offline())
        dialogue = self.recorder.dialogues[session]
        during_idle = dialogue.parts[position:]
        said = [who for who, _ in during_idle]
        first_client = said.index("C") if "C" in said else len(said)
        announced = b"".join(data for _, data in during_idle[:first_client])
        self.assertRegex(announced, rb"\* \d+ EXISTS\r\n", self.evidence())
        self.assertEqual(during_idle[first_client][1], b"DONE\r\n", self.evidence())
        late_raw = self.maildir("INBOX")[LATE[0]][1]
        self.assertEqual(self.offline()[LATE[0]], late_raw + b"\r\n")

        # 4. Quit. While Thunderbird is away another client moves a flag and mail arrives;
        # started again on the same profile (its saved password; "check for new messages at
        # startup" now on), Thunderbird catches up by itself.
        await self.in_thread(self.thunderbird.quit, marionette)
        await self.in_thread(self.move_flag_elsewhere)
        await self.in_thread(self.deliver, *AWAY)
        self.thunderbird.set_prefs(**prefs, login_at_startup=True)
        marionette = await self.in_thread(self.thunderbird.start)
        self.addCleanup(marionette.close)
        await self.until(
            "the message delivered while away, offline", lambda: AWAY[0] in self.offline()
        )
        self.assertEqual(self.offline()[AWAY[0]], self.maildir("INBOX")[AWAY[0]][1] + b"\r\n")
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
        sessions = self.thunderbird_dialogues()
        self.assertGreaterEqual(len(sessions), 2, self.evidence())
        for dialogue in sessions:
            commands = [line.split(b" ")[1].upper() for line in dialogue.lines("C") if b" " in line]
            self.assertEqual(commands[:1], [b"STARTTLS"], dialogue.transcript())
        self.assertEqual(refusals(sessions), [], self.evidence())
