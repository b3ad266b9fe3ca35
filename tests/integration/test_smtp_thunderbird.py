"""Real Thunderbird, unmodified and headless, sends a message through mailhub's submission
listener and files its copy in Sent by IMAP APPEND.

A production-style server (a users file with real passwords, one local domain, the sender
rules of RFC 6409 on; a certificate from the test CA, which only the Thunderbird profile trusts)
serves SMTP submission and IMAP. Thunderbird's profile (see thunderbird.py) has one IMAP account
whose identity sends through the submission port with STARTTLS and "normal password", and
places a copy in the account's Sent folder. Driven through Marionette, Thunderbird gets its mail
(so it knows the server's folders), then composes a plain-text message and sends it with
nsIMsgCompose.sendMsg, the call behind its Send button (here without a compose window, as its
own messages.send API for extensions does). Then:

1. the recipient, another user of the server, has the message in its Maildir with the subject
   and body Thunderbird was given, under a Received header saying ESMTPSA (RFC 3848:
   authenticated, over TLS) with the TLS version and cipher;
2. the submission dialogue went EHLO, STARTTLS, EHLO, AUTH PLAIN, MAIL, RCPT, DATA and the
   server refused nothing (no 4xx or 5xx reply);
3. the sender's Sent folder holds Thunderbird's copy, stored by ``APPEND "Sent" (\\Seen)``
   (the ``S`` in the Maildir file name), the same message the recipient got after the
   server's trace header, and no IMAP command was answered NO or BAD.
"""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path

import argon2

from mailhub.config import DomainsConfig, ListenersConfig, SMTPConfig
from mailhub.users import UserDB
from tests.support.service import LOOPBACK_ANY_PORT
from tests.support.thunderbird import (
    GET_MESSAGES,
    PRELUDE,
    Dialogue,
    ImapAccount,
    ThunderbirdCase,
    refusals,
)

FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
SENDER, SENDER_PASSWORD = "tess@example.test", "tess-secret-1"
RECIPIENT, RECIPIENT_PASSWORD = "rita@example.test", "rita-secret-2"
SUBJECT = "Sent from Thunderbird"
BODY = "Hello Rita,\n\nthis went through mailhub's submission port.\n\nTess\n"

SENT_FOLDER = (
    PRELUDE
    + """
// The folder Thunderbird knows as Sent (from LIST's \\Sent), once it has listed the folders.
return server.rootFolder.getFolderWithFlags(Ci.nsMsgFolderFlags.SentMail)?.URI ?? null;
"""
)

# A new plain-text message from the default identity, sent now: the compose fields and the
# sendMsg call the compose window's Send button makes (deliver mode Now; the identity's SMTP
# server and Fcc folder come from the profile). Resolves once the message is sent and its copy
# filed.
SEND = (
    PRELUDE
    + """
const [to, subject, body, password] = arguments;
const account = MailServices.accounts.defaultAccount;
const identity = account.defaultIdentity;
return (async () => {
  const smtp = MailServices.outgoingServer.getServerByIdentity(identity);
  await savePassword(`smtp://${smtp.serverURI.host}`, identity.email, password);
  const params = Cc["@mozilla.org/messengercompose/composeparams;1"]
    .createInstance(Ci.nsIMsgComposeParams);
  params.type = Ci.nsIMsgCompType.New;
  params.format = Ci.nsIMsgCompFormat.PlainText;
  params.identity = identity;
  params.composeFields = Cc["@mozilla.org/messengercompose/composefields;1"]
    .createInstance(Ci.nsIMsgCompFields);
  const compose = Cc["@mozilla.org/messengercompose/compose;1"].createInstance(Ci.nsIMsgCompose);
  compose.initialize(params);
  const fields = compose.compFields;
  fields.from = `${identity.fullName} <${identity.email}>`;
  fields.to = to;
  fields.subject = subject;
  fields.body = body;
  fields.deliveryFormat = Ci.nsIMsgCompSendFormat.PlainText;
  fields.forcePlainText = true;
  fields.useMultipartAlternative = false;
  await compose.sendMsg(Ci.nsIMsgCompDeliverMode.Now, identity, account.key, null);
  return fields.messageId;
})();
"""
)

REPLY_CODE = re.compile(rb"^(\d{3})[ -]")
# What the server puts before the message it received (RFC 5321 4.4): the envelope sender and
# one trace header, folded over several lines.
TRACE_FIELDS = re.compile(
    rb"\AReturn-Path: <%s>\r\nReceived: [^\r\n]*\r\n(?:\t[^\r\n]*\r\n)+\Z" % SENDER.encode()
)


def smtp_commands(dialogue: Dialogue) -> list[bytes]:
    """The client's command lines up to and including DATA (the message itself left out)."""
    out = []
    for line in dialogue.lines("C"):
        if line:
            out.append(line)
        if line.upper() == b"DATA":
            break
    return out


def smtp_refusals(dialogue: Dialogue) -> list[bytes]:
    """Every 4xx or 5xx reply line the server sent."""
    return [line for line in dialogue.lines("S") if (m := REPLY_CODE.match(line)) and m[1] >= b"4"]


class ThunderbirdSubmission(ThunderbirdCase):
    def setUp(self) -> None:
        directory = self.mktemp()
        users_file = self.make_users(directory)
        listeners = ListenersConfig(
            smtp=(LOOPBACK_ANY_PORT,),
            submission=(LOOPBACK_ANY_PORT,),
            imap=(LOOPBACK_ANY_PORT,),
        )
        self.start_server(
            listeners,
            recorded=("submission", "imap"),
            dev=False,
            domains=DomainsConfig(local=("example.test",)),
            users_file=users_file,
            smtp=SMTPConfig(),  # restrict_sender on, AUTH only over TLS
        )
        account = ImapAccount(
            SENDER, "localhost", self.port("imap"), smtp_port=self.port("submission")
        )
        self.make_thunderbird(account)

    def make_users(self, directory: str) -> Path:
        path = Path(directory).absolute()
        path.mkdir(parents=True)
        users = UserDB(path / "users", hasher=FAST)
        users.add(SENDER, SENDER_PASSWORD)
        users.add(RECIPIENT, RECIPIENT_PASSWORD)
        return path / "users"

    async def test_send_with_copy_in_sent(self) -> None:
        marionette = await self.start_thunderbird()
        await self.run_js(marionette, GET_MESSAGES, "imap://localhost", SENDER, SENDER_PASSWORD)
        sent_uri = f"{self.thunderbird.account.server_uri}/Sent"

        async def sent_folder_known() -> bool:
            return await self.run_js(marionette, SENT_FOLDER) == sent_uri

        await self.until("Thunderbird knows the Sent folder", sent_folder_known)
        message_id = await self.run_js(
            marionette, SEND, f"Rita <{RECIPIENT}>", SUBJECT, BODY, SENDER_PASSWORD
        )

        # 1. Delivered to the recipient: Thunderbird's subject and body, under the trace header
        # of an authenticated submission over TLS.
        [(flags, delivered)] = self.maildir(RECIPIENT).values()
        msg = email.message_from_bytes(delivered, policy=email.policy.default)
        self.assertEqual(msg["Subject"], SUBJECT)
        self.assertEqual(msg["Message-ID"], message_id)
        self.assertEqual(msg["From"], f"Thunderbird test <{SENDER}>")
        # Thunderbird ends a plain-text body with one more line break.
        self.assertEqual(msg.get_content(), BODY.replace("\n", "\r\n") + "\r\n")
        [received] = msg.get_all("Received")
        self.assertRegex(received, r"by localhost \(mailhub\) with ESMTPSA ")
        self.assertRegex(received, r"\(using TLSv1\.[23] with cipher \S+\)")
        self.assertIn(f"for <{RECIPIENT}>", received)

        # 2. The submission dialogue: TLS first, then the login, then the mail; nothing refused.
        [session] = [d for d in self.dialogues("submission") if smtp_commands(d)]
        said = smtp_commands(session)
        verbs = [line.split(b" ")[0].upper() for line in said]
        self.assertEqual(
            verbs,
            [b"EHLO", b"STARTTLS", b"EHLO", b"AUTH", b"MAIL", b"RCPT", b"DATA"],
            session.transcript(),
        )
        self.assertTrue(said[3].startswith(b"AUTH PLAIN "), session.transcript())
        self.assertTrue(said[4].startswith(f"MAIL FROM:<{SENDER}>".encode()), said[4])
        self.assertTrue(said[5].startswith(f"RCPT TO:<{RECIPIENT}>".encode()), said[5])
        self.assertEqual(smtp_refusals(session), [], session.transcript())

        # 3. The copy in Sent, appended with \Seen: the message the recipient got, before the
        # server added its Received header.
        [(sent_flags, sent_copy)] = await self.until(
            "the copy in Sent", lambda: list(self.maildir(SENDER, "Sent").values())
        )
        self.assertEqual(sent_flags, "S")
        self.assertTrue(delivered.endswith(sent_copy), (delivered, sent_copy))
        trace = delivered[: -len(sent_copy)]
        self.assertRegex(trace, TRACE_FIELDS)
        appends = [
            line
            for d in self.dialogues("imap")
            for line in d.lines("C")
            if b" APPEND " in line.upper()
        ]
        self.assertEqual(len(appends), 1, self.evidence())
        self.assertRegex(appends[0], rb'(?i)^\S+ append "?Sent"? \(\\Seen\) ', self.evidence())
        self.assertEqual(refusals(self.dialogues("imap")), [], self.evidence())
        self.assertEqual(flags, "")  # and the recipient's copy is new, unread
