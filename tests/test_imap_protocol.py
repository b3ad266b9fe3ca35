"""IMAP dialogs per command and extension, over a real Maildir store (RFC 3501 and extensions)."""

from __future__ import annotations

import base64
import os

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.defer import Deferred

from mailhub.auth import make_portal
from mailhub.imap.protocol import IMAPServerProtocol
from mailhub.message import mime
from mailhub.store import Folder, dotlock, uidlist
from mailhub.store.dotlock import DotLock
from mailhub.tls import HANDSHAKE_GRACE
from tests.support.imap import USER, IMAPTestCase, message

CAPS = (
    "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS MOVE UNSELECT CHILDREN "
    "SPECIAL-USE CONDSTORE QRESYNC SORT SORT=DISPLAY THREAD=ORDEREDSUBJECT THREAD=REFERENCES "
    "APPENDLIMIT=36700160"
)


class Greeting(IMAPTestCase):
    def test_before_tls_without_plaintext_login(self) -> None:
        self.plaintext_allowed = False
        client = self.connect()
        self.assertEqual(
            client.greeting,
            f"* OK [CAPABILITY {CAPS} STARTTLS LOGINDISABLED] mail.example.org IMAP4rev1 "
            "mailhub ready\r\n".encode(),
        )
        client.run("""
            C: a1 LOGIN alice secret
            S: a1 NO [PRIVACYREQUIRED] Use STARTTLS first
            C: a2 AUTHENTICATE PLAIN
            S: a2 NO [PRIVACYREQUIRED] Use STARTTLS first
        """)

    def test_starttls_then_login_is_offered_and_plaintext_after_it_is_ignored(self) -> None:
        self.plaintext_allowed = False
        client = self.connect()
        # RFC 3501 6.2.1: what was pipelined behind STARTTLS in plaintext must not run.
        client.run(f"""
            C: a1 STARTTLS
            C: a2 LOGIN alice secret
            S: a1 OK Begin TLS negotiation now
            C: a3 CAPABILITY
            S: * CAPABILITY {CAPS} AUTH=PLAIN AUTH=LOGIN
            S: a3 OK CAPABILITY completed
            C: a4 STARTTLS
            S: a4 BAD TLS is already active
        """)
        self.assertIs(client.transport.tls_context, self.factory.tls_context_factory)

    def test_a_handshake_never_finished_after_starttls_is_cut_off(self) -> None:
        """The autologout timer bounds the handshake (no handshake bytes reach the session);
        Twisted's TLS layer would hold the BYE, and the connection, until a handshake that never
        comes, so the connection is aborted HANDSHAKE_GRACE later."""
        self.with_limits(imap_idle_timeout=60.0)
        client = self.connect()
        client.send("a1 STARTTLS\r\n")
        self.assertEqual(client.lines(), ["a1 OK Begin TLS negotiation now"])
        self.clock.advance(60)
        self.assertTrue(client.closed)
        self.clock.advance(HANDSHAKE_GRACE - 0.5)
        self.assertFalse(client.transport.disconnected)
        self.clock.advance(0.5)
        self.assertTrue(client.transport.disconnected)  # StringTransport: aborted

    def test_implicit_tls_offers_login_and_no_starttls(self) -> None:
        self.plaintext_allowed = False
        client = self.connect(tls=True)
        self.assertIn(b"AUTH=PLAIN", client.greeting)
        self.assertNotIn(b"STARTTLS", client.greeting)

    def test_connection_limit_per_ip(self) -> None:
        self.with_limits(max_connections_per_ip=2)
        first, second = self.connect(), self.connect()
        third = self.connect()
        self.assertEqual(third.greeting, b"* BYE Too many connections, try again later\r\n")
        self.assertTrue(third.closed)
        self.assertFalse(first.closed or second.closed)
        first.protocol.connectionLost(None)
        self.assertIn(b"* OK", self.connect().greeting)

    def test_autologout_after_idle_timeout(self) -> None:
        self.with_limits(imap_idle_timeout=60.0)
        client = self.connect()
        self.clock.advance(59)
        client.send("a1 NOOP\r\n")
        self.assertEqual(client.lines(), ["a1 OK NOOP completed"])
        self.clock.advance(59)
        self.assertFalse(client.closed)
        self.clock.advance(1)
        self.assertEqual(client.lines(), ["* BYE Autologout; idle for too long"])
        self.assertTrue(client.closed)


class BadInput(IMAPTestCase):
    def test_unknown_wrong_state_and_syntax(self) -> None:
        client = self.connect()
        client.run("""
            C: a1 FROBNICATE
            S: a1 BAD Unknown command FROBNICATE
            C: a2 SELECT INBOX
            S: a2 BAD SELECT not allowed now (not authenticated)
            C: a3 LOGIN "unterminated
            S: a3 BAD unterminated quoted string
            C: a4 LOGIN onlyone
            S: a4 BAD wrong number of arguments
            C: * NOOP
            S: * BAD missing or invalid tag
            C: a5 NOOP
            S: a5 OK NOOP completed
        """)

    def test_line_too_long_is_bad_and_the_connection_survives(self) -> None:
        self.with_limits(imap_max_line_length=1000)
        client = self.connect()
        client.send("a1 NOOP " + "x" * 3000 + "\r\na2 NOOP\r\n")
        self.assertEqual(client.lines(), ["a1 BAD Command line too long", "a2 OK NOOP completed"])
        self.assertFalse(client.closed)


class Login(IMAPTestCase):
    def use_password_checker(self) -> None:
        checker = InMemoryUsernamePasswordDatabaseDontUse(**{USER: b"secret"})
        self.factory = self.make_factory(portal=make_portal(checker))

    def test_login_creates_the_special_folders(self) -> None:
        client = self.connect()
        client.run(f"""
            C: a1 LOGIN alice "any password"
            S: a1 OK [CAPABILITY {CAPS}] Logged in
            C: a2 LIST "" *
            S: * LIST (\\HasNoChildren) "." INBOX
            S: * LIST (\\HasNoChildren \\Archive) "." Archive
            S: * LIST (\\HasNoChildren \\Drafts) "." Drafts
            S: * LIST (\\HasNoChildren \\Junk) "." Junk
            S: * LIST (\\HasNoChildren \\Sent) "." Sent
            S: * LIST (\\HasNoChildren \\Trash) "." Trash
            S: a2 OK LIST completed
        """)

    def test_failed_logins_are_delayed_then_disconnected(self) -> None:
        self.use_password_checker()
        client = self.connect()
        client.send(f"a1 LOGIN {USER} wrong\r\na2 NOOP\r\n")
        self.assertEqual(client.lines(), [], "the answer waits for the throttle's delay")
        self.clock.advance(1)
        self.assertEqual(
            client.lines(),
            ["a1 NO [AUTHENTICATIONFAILED] Authentication failed", "a2 OK NOOP completed"],
        )
        client.send(f"a3 LOGIN {USER} wrong\r\n")
        self.clock.advance(2)
        self.assertEqual(client.lines(), ["a3 NO [AUTHENTICATIONFAILED] Authentication failed"])
        client.send(f"a4 LOGIN {USER} wrong\r\n")
        self.clock.advance(4)
        self.assertEqual(
            client.lines(),
            [
                "a4 NO [AUTHENTICATIONFAILED] Authentication failed",
                "* BYE Too many authentication failures",
            ],
        )
        self.assertTrue(client.closed)
        # Another connection from the same address is refused before any password is checked.
        again = self.connect()
        again.send(f"b1 LOGIN {USER} secret\r\n")
        self.assertEqual(again.lines(), ["* BYE Too many authentication failures"])

    def test_disconnect_while_a_failed_login_waits(self) -> None:
        # The throttle's delay is cancelled with the command: no timer left, nothing written.
        self.use_password_checker()
        client = self.connect()
        client.send(f"a1 LOGIN {USER} wrong\r\n")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the delay (no autologout now)
        client.protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(client.lines(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_right_password_after_a_failure(self) -> None:
        self.use_password_checker()
        client = self.connect()
        client.send(f"a1 LOGIN {USER} wrong\r\n")
        self.clock.advance(1)
        client.run(f"""
            S: a1 NO [AUTHENTICATIONFAILED] Authentication failed
            C: a2 LOGIN {USER} secret
            S: a2 OK [CAPABILITY {CAPS}] Logged in
        """)
        self.assertEqual(self.throttle.failures("192.0.2.7"), 0)

    def test_authenticate_plain_with_initial_response(self) -> None:
        self.use_password_checker()
        ir = base64.b64encode(f"\0{USER}\0secret".encode()).decode()
        self.connect().run(f"""
            C: a1 AUTHENTICATE PLAIN {ir}
            S: a1 OK [CAPABILITY {CAPS}] Logged in
        """)

    def test_authenticate_plain_with_continuation_and_cancel(self) -> None:
        self.use_password_checker()
        response = base64.b64encode(f"\0{USER}\0secret".encode()).decode()
        self.connect().run(f"""
            C: a1 AUTHENTICATE PLAIN
            S: +
            C: *
            S: a1 BAD AUTHENTICATE cancelled
            C: a2 AUTHENTICATE PLAIN
            S: +
            C: {response}
            S: a2 OK [CAPABILITY {CAPS}] Logged in
        """)

    def test_authenticate_unknown_mechanism_and_bad_base64(self) -> None:
        self.connect().run("""
            C: a1 AUTHENTICATE CRAM-MD5
            S: a1 NO [CANNOT] Unsupported mechanism CRAM-MD5
            C: a2 AUTHENTICATE PLAIN !!!
            S: a2 BAD Invalid base64 in initial response
        """)

    def test_commands_are_answered_in_order_while_login_waits(self) -> None:
        # twisted#9282: pipelined commands behind an asynchronous one must wait for it.
        held: list[Deferred] = []
        real = self.checker.requestAvatarId

        def slow(credentials):
            d: Deferred = Deferred()
            held.append(d)
            return d.addCallback(lambda _: real(credentials))

        self.checker.requestAvatarId = slow  # type: ignore[method-assign]
        self.deliver()
        client = self.connect()
        client.send("a1 LOGIN alice pw\r\na2 SELECT INBOX\r\na3 FETCH 1 (FLAGS)\r\n")
        self.assertEqual(client.lines(), [])
        held[0].callback(None)
        lines = client.lines()
        self.assertEqual(
            [line.split()[0] for line in lines if not line.startswith("*")], ["a1", "a2", "a3"]
        )
        self.assertEqual(lines[-2:], ["* 1 FETCH (FLAGS (\\Recent))", "a3 OK FETCH completed"])


class Mailboxes(IMAPTestCase):
    def test_create_list_rename_delete_with_modified_utf7(self) -> None:
        client = self.login(select=None)
        client.run("""
            C: a1 CREATE Projekte.Entw&APw-rfe
            S: a1 OK CREATE completed
            C: a2 LIST "" Projekte*
            S: * LIST (\\HasChildren) "." Projekte
            S: * LIST (\\HasNoChildren) "." Projekte.Entw&APw-rfe
            S: a2 OK LIST completed
            C: a3 LIST "Projekte." %
            S: * LIST (\\HasNoChildren) "." Projekte.Entw&APw-rfe
            S: a3 OK LIST completed
            C: a4 RENAME Projekte Work
            S: a4 OK RENAME completed
            C: a5 LIST "" W*
            S: * LIST (\\HasChildren) "." Work
            S: * LIST (\\HasNoChildren) "." Work.Entw&APw-rfe
            S: a5 OK LIST completed
            C: a6 DELETE Work.Entw&APw-rfe
            S: a6 OK DELETE completed
            C: a7 DELETE Work.Entw&APw-rfe
            S: a7 NO [NONEXISTENT] Mailbox does not exist
            C: a8 CREATE Work
            S: a8 NO [ALREADYEXISTS] Mailbox already exists
            C: a9 DELETE INBOX
            S: a9 NO [CANNOT] INBOX cannot be deleted
            C: b1 LIST "" ""
            S: * LIST (\\Noselect) "." ""
            S: b1 OK LIST completed
        """)
        self.assertEqual(self.store.mailbox(USER).list_folders()[-1], "Work")

    def test_names_escaping_the_directory_are_refused(self) -> None:
        client = self.login(select=None)
        for n, name in enumerate(('"../../bob"', '"a/b"', "..", '"x..y"')):
            client.send(f"c{n} CREATE {name}\r\n")
            [line] = client.lines()
            self.assertTrue(line.startswith(f"c{n} NO "), line)
        self.assertFalse((self.store.root / "example.org" / "bob").exists())

    def test_wildcards_are_refused_in_new_names(self) -> None:
        # % and * are LIST wildcards (RFC 3501 6.3.8): Dovecot refuses them in new names too.
        client = self.login(select=None)
        client.run("""
            C: a1 CREATE "50%"
            S: a1 NO [CANNOT] Mailbox names cannot contain the LIST wildcards % and *
            C: a2 CREATE Star.*
            S: a2 NO [CANNOT] Mailbox names cannot contain the LIST wildcards % and *
            C: a3 RENAME Drafts Dr%fts
            S: a3 NO [CANNOT] Mailbox names cannot contain the LIST wildcards % and *
            C: a4 RENAME INBOX Old*
            S: a4 NO [CANNOT] Mailbox names cannot contain the LIST wildcards % and *
        """)
        self.assertEqual(
            self.store.mailbox(USER).list_folders(),
            ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"],
        )

    def test_non_canonical_modified_utf7_is_refused(self) -> None:
        # RFC 3501 5.1.3: printable ASCII is never base64-encoded ("&AGE-" would be "a"), no
        # null shift between two runs, every "&" run ends with "-", no stray base64 bits.
        client = self.login(select=None)
        for n, name in enumerate(("&AGE-", "Caf&AOk-&AOk-", "Caf&AOk", "&AOl-", "x&AGEA6Q-")):
            client.send(f"c{n} CREATE {name}\r\n")
            # valid astring syntax naming no possible mailbox: NO, not BAD (as Dovecot)
            why = "not in canonical" if name != "Caf&AOk" else "not valid"
            self.assertEqual(
                client.lines(), [f"c{n} NO [CANNOT] Invalid mailbox name: {why} modified UTF-7"]
            )
        client.run("""
            C: d1 SELECT &AEkATgBCAE8AWA-
            S: d1 NO [CANNOT] Invalid mailbox name: not in canonical modified UTF-7
            C: d2 CREATE Caf&AOkA6Q-
            S: d2 OK CREATE completed
            C: d3 LIST "" Caf*
            S: * LIST (\\HasNoChildren) "." Caf&AOkA6Q-
            S: d3 OK LIST completed
        """)

    def test_rename_inbox_moves_its_messages(self) -> None:
        # RFC 3501 6.3.5: all messages move to the new mailbox, INBOX stays and is empty.
        self.deliver(message("one"))
        self.folder().append(message("two"), flags=["S", "F"])
        client = self.login()
        client.run("""
            C: a1 RENAME INBOX Old.2024
            S: * 2 EXPUNGE
            S: * 1 EXPUNGE
            S: a1 OK RENAME completed
            C: a2 STATUS Old.2024 (MESSAGES)
            S: * STATUS Old.2024 (MESSAGES 2)
            S: a2 OK STATUS completed
            C: a3 STATUS INBOX (MESSAGES)
            S: * STATUS INBOX (MESSAGES 0)
            S: a3 OK STATUS completed
            C: a4 RENAME INBOX Old.2024
            S: a4 NO [ALREADYEXISTS] Target mailbox exists
            C: a5 RENAME INBOX Empty
            S: a5 OK RENAME completed
            C: a6 LIST "" *
            S: * LIST (\\HasNoChildren) "." INBOX
            S: * LIST (\\HasNoChildren \\Archive) "." Archive
            S: * LIST (\\HasNoChildren \\Drafts) "." Drafts
            S: * LIST (\\HasNoChildren) "." Empty
            S: * LIST (\\HasNoChildren \\Junk) "." Junk
            S: * LIST (\\HasChildren) "." Old
            S: * LIST (\\HasNoChildren) "." Old.2024
            S: * LIST (\\HasNoChildren \\Sent) "." Sent
            S: * LIST (\\HasNoChildren \\Trash) "." Trash
            S: a6 OK LIST completed
        """)
        moved = self.folder("Old.2024")
        infos = moved.sync().messages
        self.assertEqual([m.flags for m in infos], [set(), {"S", "F"}])
        self.assertIn(b"Subject: two", moved.read_message(infos[1].uid))
        self.assertEqual(self.folder().sync().count, 0)

    def test_subscriptions(self) -> None:
        client = self.login(select=None)
        # The special-use folders come subscribed (as Dovecot's autosubscribe does).
        client.run("""
            C: a1 CREATE Lists.Twisted
            S: a1 OK CREATE completed
            C: a2 SUBSCRIBE Lists.Twisted
            S: a2 OK SUBSCRIBE completed
            C: a3 UNSUBSCRIBE Trash
            S: a3 OK UNSUBSCRIBE completed
            C: a4 UNSUBSCRIBE Junk
            S: a4 OK UNSUBSCRIBE completed
            C: a5 LSUB "" *
            S: * LSUB (\\HasNoChildren) "." Archive
            S: * LSUB (\\HasNoChildren) "." Drafts
            S: * LSUB (\\HasNoChildren) "." Lists.Twisted
            S: * LSUB (\\HasNoChildren) "." Sent
            S: a5 OK LSUB completed
            C: a6 LSUB "" L%
            S: * LSUB (\\Noselect) "." Lists
            S: a6 OK LSUB completed
        """)

    def test_status_namespace_id(self) -> None:
        self.deliver()
        seen = self.folder().append(message("seen"), flags=["S"])
        self.folder().take(seen)  # (as a session that was told of it did: not recent)
        client = self.login(select=None)
        validity = self.folder().sync().uidvalidity
        client.run(f"""
            C: a1 STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN APPENDLIMIT)
            S: * STATUS INBOX (MESSAGES 2 RECENT 1 UIDNEXT 3 UIDVALIDITY {validity} UNSEEN 1 APPENDLIMIT 36700160)
            S: a1 OK STATUS completed
            C: a2 STATUS Nope (MESSAGES)
            S: a2 NO [NONEXISTENT] Mailbox does not exist
            C: a3 NAMESPACE
            S: * NAMESPACE (("" ".")) NIL NIL
            S: a3 OK NAMESPACE completed
            C: a4 ID ("name" "test")
            S: * ID ("name" "mailhub" "vendor" "mailhub")
            S: a4 OK ID completed
        """)  # noqa: E501


# RFC 3501 9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials /
# resp-specials; ASTRING-CHAR = ATOM-CHAR / resp-specials ("]" allowed); list-char =
# ATOM-CHAR / list-wildcards / resp-specials.
NOT_ASTRING_CHAR = frozenset('(){%*"\\')
NOT_LIST_CHAR = frozenset('(){"\\')
# every command that takes a mailbox name, and how it must answer a name that does not exist
NAME_COMMANDS = ("SELECT {}", "EXAMINE {}", "STATUS {} (MESSAGES)", "DELETE {}")


class MailboxNameSyntax(IMAPTestCase):
    """Every printable ASCII character in a mailbox name, sent as an atom (where the grammar
    allows it), a quoted string and a literal: a name that does not exist gets NO, LIST and
    LSUB answer OK, CREATE works or says NO with a reason; BAD only for what RFC 3501 9 does
    not allow unquoted; the connection always survives."""

    def answer(self, client, command: str) -> list[str]:
        client.send(f"n {command}\r\n")
        lines = client.lines()
        self.assertFalse(client.closed, command)
        self.assertTrue(lines and lines[-1].startswith("n "), (command, lines))
        return lines

    def forms(self, name: str, *, specials: frozenset[str]) -> list[tuple[str, bool]]:
        """(the name as sent, whether that form is valid syntax)."""
        quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        literal = f"{{{len(name)}+}}\r\n{name}"
        return [(name, not specials & set(name)), (quoted, True), (literal, True)]

    def test_every_printable_character(self) -> None:
        client = self.login(select=None)
        wrong: list[tuple[str, list[str]]] = []
        for code in range(0x21, 0x7F):
            name = f"x{chr(code)}y"
            for sent, valid in self.forms(name, specials=NOT_ASTRING_CHAR):
                for command in NAME_COMMANDS:
                    lines = self.answer(client, command.format(sent))
                    status = lines[-1].split()[1]
                    if status != "NO" and (valid or status != "BAD"):
                        wrong.append((command.format(sent), lines))
            for sent, valid in self.forms(name + "%", specials=NOT_LIST_CHAR):
                for verb in ("LIST", "LSUB"):
                    lines = self.answer(client, f'{verb} "" {sent}')
                    status = lines[-1].split()[1]
                    if status != "OK" and (valid or status != "BAD"):
                        wrong.append((f'{verb} "" {sent}', lines))
            for sent, valid in self.forms(name, specials=NOT_ASTRING_CHAR):
                lines = self.answer(client, f"CREATE {sent}")
                status = lines[-1].split()[1]
                if status == "NO" and len(lines[-1].split()) > 3:
                    continue  # refused, with a reason (wildcards, invalid modified UTF-7, ...)
                if status != "OK" and (valid or status != "BAD"):
                    wrong.append((f"CREATE {sent}", lines))
                if status != "OK":
                    continue
                # made: it can be selected, is listed under its name, and can be deleted
                for command in ("SELECT {}", 'LIST "" {}', "DELETE {}"):
                    lines = self.answer(client, command.format(sent))
                    if lines[-1].split()[1] != "OK" or (
                        command.startswith("LIST") and len(lines) != 2
                    ):
                        wrong.append((command.format(sent), lines))
        self.assertEqual(wrong, [])

    def test_the_names_of_the_conformance_run(self) -> None:
        # issue 12: "BAD missing ]" for SELECT, and LIST with this pattern
        client = self.login(select=None)
        name = "!#$&'+,-.0123456789:;<=>?@^_`|[}"
        client.run(f"""
            C: a1 SELECT {name}
            S: a1 NO [CANNOT] Invalid mailbox name: not valid modified UTF-7
            C: a2 LIST "" {name}%*
            S: a2 OK LIST completed
            C: a3 LSUB "" {name}%*
            S: a3 OK LSUB completed
            C: a4 EXAMINE ~foo
            S: a4 NO [NONEXISTENT] Mailbox does not exist
            C: a5 LIST "" ~foo%*
            S: a5 OK LIST completed
        """)
        valid = name.replace("&", "&-")  # the same characters in valid modified UTF-7
        client.run(f"""
            C: b1 SELECT {valid}
            S: b1 NO [NONEXISTENT] Mailbox does not exist
            C: b2 CREATE {valid}
            S: b2 OK CREATE completed
            C: b3 LIST "" !*
            S: * LIST (\\HasChildren) "." !#$&-'+,-
            S: * LIST (\\HasNoChildren) "." {valid}
            S: b3 OK LIST completed
            C: b4 SELECT {valid}
            S: ...
            S: b4 OK [READ-WRITE] SELECT completed
        """)


class Select(IMAPTestCase):
    def test_select_reports_state_and_takes_recent(self) -> None:
        self.deliver()
        seen = self.folder().append(message("seen"), flags=["S"])
        self.folder().take(seen)  # (as a session that was told of it did: not recent)
        client = self.connect()
        client.command("LOGIN alice pw")
        validity = self.folder().sync().uidvalidity
        client.run(f"""
            C: a1 SELECT INBOX
            S: * FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft)
            S: * OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft \\*)] Flags permitted
            S: * 2 EXISTS
            S: * 1 RECENT
            S: * OK [UNSEEN 1] First unseen
            S: * OK [UIDVALIDITY {validity}] UIDs valid
            S: * OK [UIDNEXT 3] Predicted next UID
            S: * OK [HIGHESTMODSEQ ...
            S: a1 OK [READ-WRITE] SELECT completed
        """)  # noqa: E501
        # \Recent went to this session only (RFC 3501 2.3.2).
        other = self.login(select=None)
        other.run("""
            C: b1 EXAMINE INBOX
            S: ...
            S: * 0 RECENT
            S: ...
            S: b1 OK [READ-ONLY] EXAMINE completed
            C: b2 STORE 1 +FLAGS (\\Seen)
            S: b2 NO [READ-ONLY] Mailbox is read-only
        """)

    def test_failed_select_deselects(self) -> None:
        client = self.login()
        client.run("""
            C: a1 SELECT Nope
            S: * OK [CLOSED] Previous mailbox closed
            S: a1 NO [NONEXISTENT] Mailbox does not exist
            C: a2 FETCH 1 FLAGS
            S: a2 BAD FETCH not allowed now (auth)
        """)

    def test_close_expunges_silently_and_unselect_does_not(self) -> None:
        for _ in range(3):
            self.deliver()
        client = self.login()
        client.run("""
            C: a1 STORE 1:2 +FLAGS.SILENT (\\Deleted)
            S: a1 OK STORE completed
            C: a2 UNSELECT
            S: a2 OK UNSELECT completed
        """)
        self.assertEqual(self.folder().sync().count, 3)
        client.command("SELECT INBOX")
        client.run("""
            C: a3 CLOSE
            S: a3 OK CLOSE completed
        """)
        self.assertEqual([m.uid for m in self.folder().sync().messages], [3])


class Fetch(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.deliver(message("one", "Line one.\r\nLine two.\r\n"))
        self.deliver(message("two"))
        self.client = self.login()

    def test_flags_uid_size_and_seq_beyond_the_end(self) -> None:
        size1 = self.folder().sync().messages[0].size
        self.client.run(f"""
            C: a1 FETCH 1:* (UID RFC822.SIZE FLAGS)
            S: * 1 FETCH (UID 1 FLAGS (\\Recent) RFC822.SIZE {size1})
            S: * 2 FETCH (UID 2 FLAGS (\\Recent) RFC822.SIZE ...
            S: a1 OK FETCH completed
            C: a2 FETCH 3 FLAGS
            S: a2 BAD no message 3 (mailbox has 2)
            C: a3 UID FETCH 3:* FLAGS
            S: * 2 FETCH (UID 2 FLAGS (\\Recent))
            S: a3 OK FETCH completed
            C: a4 UID FETCH 5 FLAGS
            S: a4 OK FETCH completed
        """)

    def test_body_sets_seen_and_peek_does_not(self) -> None:
        self.client.run("""
            C: a1 FETCH 1 (BODY.PEEK[TEXT])
            S: * 1 FETCH (BODY[TEXT] {22}
            S: Line one.
            S: Line two.
            S: )
            S: a1 OK FETCH completed
            C: a2 FETCH 1 (BODY[TEXT]<5.8>)
            S: * 1 FETCH (FLAGS (\\Seen \\Recent) BODY[TEXT]<5> {8}
            S: one.
            S: Li)
            S: a2 OK FETCH completed
            C: a3 FETCH 1 BODY[HEADER.FIELDS (subject)]
            S: * 1 FETCH (BODY[HEADER.FIELDS (subject)] {16}
            S: Subject: one
            S:
            S: )
            S: a3 OK FETCH completed
        """)
        self.assertIn("S", self.folder().sync().messages[0].flags)
        self.assertNotIn("S", self.folder().sync().messages[1].flags)

    def test_rfc822_items(self) -> None:
        data = message("two")
        header = data[: data.index(b"\r\n\r\n") + 4]
        self.client.send("a1 FETCH 2 (RFC822.HEADER)\r\n")
        self.assertEqual(
            self.client.take(),
            b"* 2 FETCH (RFC822.HEADER {%d}\r\n%s)\r\na1 OK FETCH completed\r\n"
            % (len(header), header),
        )
        self.client.send("a2 UID FETCH 2 RFC822\r\n")
        self.assertEqual(
            self.client.take(),
            b"* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent) RFC822 {%d}\r\n%s)\r\n"
            b"a2 OK FETCH completed\r\n" % (len(data), data),
        )

    def test_whole_message_items_partials_and_several_in_one_response(self) -> None:
        # BODY[] and RFC822 are served straight from the file (no structure needed); mixed
        # with a part section or ENVELOPE they go through the parsed structure. Same answers.
        data = message("two")
        size = len(data)
        self.client.send(
            "a1 FETCH 2 (BODY.PEEK[]<0.4> BODY.PEEK[]<4.99999> BODY.PEEK[]<9999.5>)\r\n"
        )
        self.assertEqual(
            self.client.take(),
            b"* 2 FETCH (BODY[]<0> {4}\r\nFrom BODY[]<4> {%d}\r\n%s BODY[]<9999> {0}\r\n)\r\n"
            b"a1 OK FETCH completed\r\n" % (size - 4, data[4:]),
        )
        self.client.send("a2 FETCH 1:2 (UID BODY.PEEK[] BODY.PEEK[1])\r\n")
        first = message("one", "Line one.\r\nLine two.\r\n")
        self.assertEqual(
            self.client.take(),
            b"* 1 FETCH (UID 1 BODY[] {%d}\r\n%s BODY[1] {22}\r\nLine one.\r\nLine two.\r\n)\r\n"
            b"* 2 FETCH (UID 2 BODY[] {%d}\r\n%s BODY[1] {11}\r\nHi there.\r\n)\r\n"
            b"a2 OK FETCH completed\r\n" % (len(first), first, size, data),
        )
        self.assertEqual([m.flags for m in self.folder().sync().messages], [set(), set()])

    def test_large_messages_stream_with_the_same_answer(self) -> None:
        # Messages up to FETCH_WHOLE_MAX are read in one piece, larger ones are streamed in
        # chunks: the octets on the wire are the same either way.
        from mailhub.imap import fetch_command

        command = "a1 UID FETCH 1:* (BODY.PEEK[] RFC822.SIZE BODY.PEEK[]<3.10>)\r\n"
        self.client.send(command)
        whole = self.client.take()
        self.patch(fetch_command, "FETCH_WHOLE_MAX", 10)
        self.patch(fetch_command, "FETCH_CHUNK", 7)
        self.client.send(command)
        self.assertEqual(self.client.take(), whole)
        data = message("two")
        self.assertIn(
            b"* 2 FETCH (UID 2 RFC822.SIZE %d BODY[] {%d}\r\n%s BODY[]<3> {10}\r\n%s)\r\n"
            % (len(data), len(data), data, data[3:13]),
            whole,
        )

    def test_envelope_and_bodystructure(self) -> None:
        self.client.run("""
            C: a1 FETCH 2 (ENVELOPE BODYSTRUCTURE)
            S: * 2 FETCH (ENVELOPE ("Mon, 7 Feb 1994 21:52:25 -0800" "two" ((NIL NIL "bob" "example.net")) ((NIL NIL "bob" "example.net")) ((NIL NIL "bob" "example.net")) ((NIL NIL "alice" "example.org")) NIL NIL NIL "<two@example.net>") BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 11 1 NIL NIL NIL NIL))
            S: a1 OK FETCH completed
        """)  # noqa: E501

    def test_bad_attributes(self) -> None:
        self.client.run("""
            C: a1 FETCH 1 (FLAGS BOGUS)
            S: a1 BAD unknown fetch attribute BOGUS
            C: a2 FETCH 1 BODY[MIME]
            S: a2 BAD MIME needs a part number
            C: a3 FETCH x FLAGS
            S: a3 BAD bad sequence number 'x'
        """)

    def test_fetch_streams_with_flow_control(self) -> None:
        big = message("big", "x" * 70 + "\r\n") * 1  # the message itself is small
        for _ in range(3):
            self.deliver(big)
        client = self.client
        client.command("NOOP")
        client.protocol.pauseProducing()  # the transport's buffer is full
        client.send("a1 FETCH 1:* BODY.PEEK[]\r\n")
        first = client.take()
        self.assertEqual(first.count(b" FETCH "), 1, "stops after the first write")
        self.assertIs(client.transport.producer, client.protocol)
        client.send("a2 NOOP\r\n")
        self.assertEqual(client.take(), b"", "the next command waits behind the FETCH")
        while client.transport.producer is not None:
            client.protocol.pauseProducing()
            client.protocol.resumeProducing()
            first += client.take()
        rest = client.lines()
        self.assertEqual(first.count(b" FETCH ("), 5)
        self.assertIn(b"a1 OK FETCH completed\r\na2 OK NOOP completed\r\n", first + b"\r\n".join(
            line.encode() for line in rest) + b"\r\n")  # fmt: skip


class HeaderFetch(IMAPTestCase):
    """FETCH BODY[HEADER], BODY[HEADER.FIELDS (...)], HEADER.FIELDS.NOT and RFC822.HEADER (what
    message lists ask for) are answered from the cached header block, byte for byte what the
    file gives; a header longer than the cache keeps is read from the file."""

    ODD = (
        b"Subject: a\r\n folded\r\n\tsubject\r\nX-Long: 1\r\n 2\r\nFrom: x@y\r\n\r\nbody\r\n",
        b"Subject: bare\nX-Long: lf\n  folded\nFrom: x@y\n\nbody\n",
        b"Subject: mixed\r\nFrom: x@y\r\n\nbody\r\n",
        b"Subject: only a header\r\nFrom: x@y\r\n",
        b"Subject: no line end at all",
        b"\r\nSubject: in the body (the header is empty)\r\n",
        b"Subject : spaced\r\nnot a field\r\nX-Long:\r\nx-long: again\r\n\r\nbody\r\n",
        b"Subject: cr\r\r\nX-Long: a\rb\r\n\r\nbody",
        b"Subject: over 8 KiB\r\n" + b"X-Filler: %070d\r\n" * 150 % tuple(range(150))
        + b"\r\nbody\r\n",
        b"Subject: one line over 64 KiB\r\nX-Long: " + b"y" * 70_000 + b"\r\n\r\nbody\r\n",
        b"Subject: over 256 KiB\r\n" + b"X-Filler: %070d\r\n" * 3300 % tuple(range(3300))
        + b"\r\nbody\r\n",
    )  # fmt: skip
    ITEMS = (
        "BODY.PEEK[HEADER] RFC822.HEADER BODY.PEEK[HEADER.FIELDS (SUBJECT X-LONG)] "
        "BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT)] BODY.PEEK[HEADER]<2.50> "
        "BODY.PEEK[HEADER.FIELDS (X-LONG FROM)]<0.9> BODY.PEEK[HEADER.FIELDS (SUBJECT)]<900000.5>"
    )

    def setUp(self) -> None:
        super().setUp()
        for data in self.ODD:
            self.deliver(data)
        self.client = self.login()
        self.parsed: list[object] = []
        full = mime.parse_structure

        def counting(fp: object) -> mime.MessageStructure:
            self.parsed.append(fp)
            return full(fp)  # type: ignore[arg-type]

        self.patch(mime, "parse_structure", counting)

    def fetch(self, seq: int, items: str) -> bytes:
        self.client.send(f"f{seq} FETCH {seq} ({items})\r\n")
        got = self.client.take()
        done = b"f%d OK FETCH completed\r\n" % seq
        self.assertTrue(got.endswith(done), got[-200:])
        return got[: -len(done)]

    def test_same_octets_as_the_file_based_answer(self) -> None:
        # With BODYSTRUCTURE in the same FETCH the sections come from the parsed structure and
        # the file (as before the header path existed): the answers differ only by that item.
        for seq, data in enumerate(self.ODD, 1):
            fast = self.fetch(seq, self.ITEMS)
            structure = self.fetch(seq, "BODYSTRUCTURE")
            prefix = b"* %d FETCH (" % seq
            self.assertTrue(structure.startswith(prefix + b"BODYSTRUCTURE "))
            described = structure[len(prefix) : -len(b")\r\n")]
            slow = self.fetch(seq, "BODYSTRUCTURE " + self.ITEMS)
            self.assertEqual(slow, prefix + described + b" " + fast[len(prefix) :], data[:40])
        self.assertIn(b"BODY[HEADER.FIELDS (SUBJECT)]<900000> {0}\r\n", fast)

    def test_no_mime_parse_unless_the_header_is_longer_than_kept(self) -> None:
        self.client.send(f"a1 FETCH 1:* (UID FLAGS {self.ITEMS})\r\n")
        got = self.client.take()
        self.assertEqual(got.count(b" FETCH (UID "), len(self.ODD))
        self.assertTrue(got.endswith(b"a1 OK FETCH completed\r\n"))
        self.assertEqual(len(self.parsed), 1, "only the header over MAX_KEPT_HEADER is parsed")
        big = self.ODD[-1]
        body = big[: big.index(b"\r\n\r\n") + 4]
        self.assertGreater(len(body), mime.MAX_KEPT_HEADER)
        self.assertIn(b"RFC822.HEADER {%d}\r\n%s" % (len(body), body), got)
        # ENVELOPE with the header sections: from the same header block, still no parse
        self.client.send("a2 FETCH 1 (ENVELOPE RFC822.HEADER)\r\n")
        self.assertIn(b'* 1 FETCH (ENVELOPE (NIL "a folded subject" ', self.client.take())
        self.assertEqual(len(self.parsed), 1)

    def test_header_sets_seen_unless_peek(self) -> None:
        self.client.run("""
            C: a1 FETCH 1 (FLAGS BODY[HEADER.FIELDS (FROM)])
            S: * 1 FETCH (FLAGS (\\Seen \\Recent) BODY[HEADER.FIELDS (FROM)] {13}
            S: From: x@y
            S:
            S: )
            S: a1 OK FETCH completed
        """)
        # A field keeps its bare LF; the blank line ending the subset is CRLF (as from the file)
        self.assertEqual(
            self.fetch(2, "BODY.PEEK[HEADER.FIELDS (FROM)]"),
            b"* 2 FETCH (BODY[HEADER.FIELDS (FROM)] {12}\r\nFrom: x@y\n\r\n)\r\n",
        )
        # RFC822.HEADER (mutt) sets no \Seen either (RFC 3501 6.4.5); bare LFs stay as they are
        self.assertEqual(
            self.fetch(2, "FLAGS RFC822.HEADER"),
            b"* 2 FETCH (FLAGS (\\Recent) RFC822.HEADER {45}\r\n"
            b"Subject: bare\nX-Long: lf\n  folded\nFrom: x@y\n\n)\r\n",
        )
        self.assertEqual(len(self.parsed), 0)


class Store(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        for n in range(3):
            self.deliver(message(f"m{n}"))
        self.client = self.login()

    def test_add_remove_replace_and_silent(self) -> None:
        self.client.run("""
            C: a1 STORE 1:2 +FLAGS (\\Flagged $Work)
            S: * FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Work)
            S: * OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Work \\*)]...
            S: * 1 FETCH (FLAGS (\\Flagged $Work \\Recent))
            S: * 2 FETCH (FLAGS (\\Flagged $Work \\Recent))
            S: a1 OK STORE completed
            C: a2 STORE 1 -FLAGS ($Work)
            S: * 1 FETCH (FLAGS (\\Flagged \\Recent))
            S: a2 OK STORE completed
            C: a3 UID STORE 3 FLAGS (\\Seen \\Answered)
            S: * 3 FETCH (UID 3 FLAGS (\\Seen \\Answered \\Recent))
            S: a3 OK STORE completed
            C: a4 STORE 2 FLAGS.SILENT (\\Draft)
            S: a4 OK STORE completed
            C: a5 FETCH 1:3 FLAGS
            S: * 1 FETCH (FLAGS (\\Flagged \\Recent))
            S: * 2 FETCH (FLAGS (\\Draft \\Recent))
            S: * 3 FETCH (FLAGS (\\Seen \\Answered \\Recent))
            S: a5 OK FETCH completed
            C: a6 STORE 1 +FLAGS (\\Recent)
            S: a6 BAD unknown system flag \\Recent
        """)
        infos = self.folder().sync().messages
        self.assertEqual([m.flags for m in infos], [{"F"}, {"D"}, {"S", "R"}])
        self.assertEqual(infos[1].keywords, frozenset())

    def test_only_messages_whose_flags_changed_are_answered(self) -> None:
        # RFC 3501 6.4.6 ("normally" the new value), as Dovecot and Cyrus do: message 2 already
        # has \Seen and needs no FETCH; neither do 1 and 3 when \Seen is added again.
        self.client.run("""
            C: a1 STORE 2 +FLAGS.SILENT (\\Seen)
            S: a1 OK STORE completed
            C: a2 STORE 1:3 +FLAGS (\\Seen)
            S: * 1 FETCH (FLAGS (\\Seen \\Recent))
            S: * 3 FETCH (FLAGS (\\Seen \\Recent))
            S: a2 OK STORE completed
            C: a3 UID STORE 1:3 +FLAGS (\\Seen)
            S: a3 OK STORE completed
            C: a4 STORE 1:3 FLAGS (\\Seen)
            S: a4 OK STORE completed
            C: a5 STORE 1:3 -FLAGS (\\Flagged)
            S: a5 OK STORE completed
        """)

    def test_changes_by_another_session_are_told_even_when_silent(self) -> None:
        # RFC 3501 6.4.6 note: whatever .SILENT says, a flag change from elsewhere is reported;
        # a change the client can work out from its own STORE is not.
        other = self.login()
        other.command("STORE 2 +FLAGS.SILENT (\\Flagged)")
        other.command("STORE 3 +FLAGS.SILENT (\\Seen)")
        self.client.run("""
            C: a1 STORE 1:3 +FLAGS.SILENT (\\Seen)
            S: * 2 FETCH (FLAGS (\\Seen \\Flagged \\Recent))
            S: a1 OK STORE completed
            C: a2 STORE 1:3 +FLAGS (\\Seen)
            S: a2 OK STORE completed
        """)
        other.command("STORE 1 +FLAGS.SILENT (\\Answered)")
        self.client.run("""
            C: a3 STORE 1:2 +FLAGS (\\Seen)
            S: * 1 FETCH (FLAGS (\\Seen \\Answered \\Recent))
            S: a3 OK STORE completed
        """)

    def test_expunge_and_uid_expunge(self) -> None:
        self.client.run("""
            C: a1 STORE 1:3 +FLAGS.SILENT (\\Deleted)
            S: a1 OK STORE completed
            C: a2 UID EXPUNGE 2
            S: * 2 EXPUNGE
            S: a2 OK EXPUNGE completed
            C: a3 STORE 1 -FLAGS.SILENT (\\Deleted)
            S: a3 OK STORE completed
            C: a4 EXPUNGE
            S: * 2 EXPUNGE
            S: a4 OK EXPUNGE completed
            C: a5 UID FETCH 1:* UID
            S: * 1 FETCH (UID 1)
            S: a5 OK FETCH completed
        """)


class CondStore(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        for n in range(3):
            self.deliver(message(f"m{n}"))
        self.client = self.login(select=None)

    def test_enable_then_modseq_everywhere(self) -> None:
        client = self.client
        client.run("""
            C: a1 ENABLE CONDSTORE X-UNKNOWN
            S: * ENABLED CONDSTORE
            S: a1 OK ENABLE completed
        """)
        client.command("SELECT INBOX")
        client.send("a2 STORE 2 +FLAGS (\\Seen)\r\n")
        [fetch, done] = client.lines()
        modseq = int(fetch.split("MODSEQ (")[1].removesuffix("))"))
        self.assertEqual(fetch, f"* 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ ({modseq}))")
        self.assertEqual(done, "a2 OK STORE completed")
        client.run(f"""
            C: a3 FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq - 1})
            S: * 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ ({modseq}))
            S: a3 OK FETCH completed
            C: a4 STORE 2 (UNCHANGEDSINCE {modseq - 1}) +FLAGS (\\Flagged)
            S: a4 OK [MODIFIED 2] Conditional STORE failed
            C: a5 UID STORE 1:2 (UNCHANGEDSINCE {modseq}) +FLAGS.SILENT (\\Answered)
            S: * 1 FETCH (UID 1 MODSEQ (...
            S: * 2 FETCH (UID 2 MODSEQ (...
            S: a5 OK STORE completed
        """)

    def test_unchanged_messages_answered_only_for_unchangedsince(self) -> None:
        self.client.command("ENABLE CONDSTORE")
        self.client.command("SELECT INBOX")
        self.client.command("STORE 1 +FLAGS.SILENT (\\Seen)")
        modseq = self.folder().sync().messages[0].modseq
        # Nothing changes for message 1, so a plain STORE tells nothing about it; a conditional
        # one that passes reports every message with its MODSEQ (RFC 7162 3.2).
        self.client.run(f"""
            C: a1 STORE 1:2 +FLAGS (\\Seen)
            S: * 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (...
            S: a1 OK STORE completed
            C: a2 STORE 1 (UNCHANGEDSINCE {modseq}) +FLAGS.SILENT (\\Seen)
            S: * 1 FETCH (MODSEQ ({modseq}))
            S: a2 OK STORE completed
        """)

    def test_fetch_modseq_enables_condstore_with_highestmodseq(self) -> None:
        self.client.command("SELECT INBOX")
        self.client.run("""
            C: a1 FETCH 1 (MODSEQ)
            S: * OK [HIGHESTMODSEQ ...
            S: * 1 FETCH (MODSEQ (...
            S: a1 OK FETCH completed
        """)


class QResync(IMAPTestCase):
    """RFC 7162 3.2: a client that knew the mailbox at some mod-sequence catches up at SELECT."""

    def setUp(self) -> None:
        super().setUp()
        for n in range(5):
            self.deliver(message(f"m{n}"))
        self.client = self.login(select=None)
        self.other = self.login()

    def change_meanwhile(self) -> int:
        """Another session expunges UIDs 2 and 4 and flags UID 3; the modseq before that."""
        before = self.folder().sync().highestmodseq
        self.other.command("UID STORE 2,4 +FLAGS.SILENT (\\Deleted)")
        self.other.command("EXPUNGE")
        self.other.command("UID STORE 3 +FLAGS.SILENT (\\Flagged)")
        return before

    def test_select_with_qresync_reports_vanished_and_changed(self) -> None:
        validity = self.folder().sync().uidvalidity
        self.client.run("""
            C: a1 ENABLE QRESYNC
            S: * ENABLED QRESYNC
            S: a1 OK ENABLE completed
            C: a2 SELECT INBOX
            S: ...
            S: a2 OK [READ-WRITE] SELECT completed
        """)
        modseq = self.change_meanwhile()
        changed = self.folder().sync().messages[1].modseq
        self.client.run(f"""
            C: a3 SELECT INBOX (QRESYNC ({validity} {modseq}))
            S: * OK [CLOSED] Previous mailbox closed
            S: ...
            S: * 3 EXISTS
            S: ...
            S: * VANISHED (EARLIER) 2,4
            S: * 2 FETCH (UID 3 FLAGS (\\Flagged) MODSEQ ({changed}))
            S: a3 OK [READ-WRITE] SELECT completed
            C: a4 EXAMINE INBOX (QRESYNC ({validity} {modseq} 1:3))
            S: * OK [CLOSED] Previous mailbox closed
            S: ...
            S: * VANISHED (EARLIER) 2
            S: * 2 FETCH (UID 3 FLAGS (\\Flagged) MODSEQ ({changed}))
            S: a4 OK [READ-ONLY] EXAMINE completed
            C: a5 SELECT INBOX (QRESYNC ({validity + 1} {modseq}))
            S: * OK [CLOSED] Previous mailbox closed
            S: ...
            S: * OK [HIGHESTMODSEQ ...
            S: a5 OK [READ-WRITE] SELECT completed
        """)

    def test_expunges_are_vanished_and_uid_fetch_vanished(self) -> None:
        self.client.command("ENABLE QRESYNC")
        self.client.command("SELECT INBOX")
        modseq = self.change_meanwhile()
        changed = self.folder().sync().messages[1].modseq
        self.client.run(f"""
            C: a1 NOOP
            S: * VANISHED 2,4
            S: * 2 FETCH (UID 3 FLAGS (\\Flagged) MODSEQ ({changed}))
            S: a1 OK NOOP completed
            C: a2 UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)
            S: * VANISHED (EARLIER) 2,4
            S: * 2 FETCH (UID 3 FLAGS (\\Flagged) MODSEQ ({changed}))
            S: a2 OK FETCH completed
            C: a3 UID FETCH 1:* (FLAGS) (VANISHED)
            S: a3 BAD VANISHED needs UID FETCH and CHANGEDSINCE
            C: a4 UID STORE 5 +FLAGS.SILENT (\\Deleted)
            S: * 3 FETCH (UID 5 MODSEQ (...
            S: a4 OK STORE completed
            C: a5 EXPUNGE
            S: * VANISHED 5
            S: a5 OK EXPUNGE completed
        """)

    def test_qresync_needs_enable(self) -> None:
        self.client.run("""
            C: a1 SELECT INBOX (QRESYNC (1 1))
            S: a1 BAD QRESYNC parameter needs ENABLE QRESYNC first
            C: a2 SELECT INBOX (CONDSTORE)
            S: ...
            S: a2 OK [READ-WRITE] SELECT completed
            C: a3 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)
            S: a3 BAD VANISHED needs QRESYNC (ENABLE QRESYNC first)
        """)


class AppendCopyMove(IMAPTestCase):
    def test_append_with_flags_and_date_then_appenduid(self) -> None:
        client = self.login(select=None)
        data = message("appended")
        validity = self.folder("Drafts").sync().uidvalidity
        client.run(f"""
            C: a1 APPEND Drafts (\\Draft $Todo) " 7-Feb-1994 21:52:25 -0800" {{{len(data)}}}
            S: + Ready for literal data
        """)
        client.send(data + b"\r\n")
        self.assertEqual(client.lines(), [f"a1 OK [APPENDUID {validity} 1] APPEND completed"])
        [info] = self.folder("Drafts").sync().messages
        self.assertEqual((info.flags, info.keywords), ({"D"}, {"$Todo"}))
        self.assertEqual(info.internaldate, 760686745)
        self.assertEqual(self.folder("Drafts").read_message(1), data)

    def test_append_literal_plus_without_flags_and_trycreate(self) -> None:
        client = self.login(select=None)
        client.send(b"a1 APPEND INBOX {5+}\r\nhello\r\na2 APPEND Nope {5+}\r\nhello\r\n")
        lines = client.lines()
        self.assertTrue(lines[0].startswith("a1 OK [APPENDUID "), lines)
        self.assertEqual(lines[1], "a2 NO [TRYCREATE] Mailbox does not exist")
        self.assertEqual(self.folder().read_message(1), b"hello")

    def test_append_too_big(self) -> None:
        self.with_limits(max_message_size=1000)
        client = self.login(select=None)
        client.run("""
            C: a1 APPEND INBOX {1001}
            S: a1 NO [TOOBIG] Message larger than 1000 octets
        """)
        client.send(b"a2 APPEND INBOX {2000+}\r\n" + b"x" * 2000 + b"\r\na3 NOOP\r\n")
        self.assertEqual(
            client.lines(),
            ["a2 NO [TOOBIG] Message larger than 1000 octets", "a3 OK NOOP completed"],
        )
        self.assertIn(b"APPENDLIMIT=1000", client.greeting)
        self.assertEqual(self.folder().sync().count, 0)

    def test_absurd_non_synchronising_literal_is_refused_with_bye(self) -> None:
        # RFC 7888 4: the client is already sending the 99,999,999,999 octets; reading them
        # only to throw them away would look like a hang, so the session ends (RFC 7888 5:
        # NO [TOOBIG] for APPEND, BAD [TOOBIG] for other commands).
        client = self.login(select=None)
        client.send(b"a1 APPEND INBOX {99999999999+}\r\nFrom: x\r\n\r\na2 NOOP\r\n")
        self.assertEqual(
            client.lines(),
            [
                "a1 NO [TOOBIG] Message larger than 36700160 octets",
                "* BYE Literal too large to skip; closing the connection",
            ],
        )
        self.assertTrue(client.closed)
        other = self.login(select=None)
        other.send(b"b1 LOGIN {99999999999+}\r\n")
        self.assertEqual(
            other.lines(),
            [
                "b1 BAD [TOOBIG] Literal too large",
                "* BYE Literal too large to skip; closing the connection",
            ],
        )
        self.assertTrue(other.closed)
        self.assertEqual(self.folder().sync().count, 0)

    def test_append_to_selected_mailbox_reports_exists(self) -> None:
        client = self.login()
        client.send(b"a1 APPEND INBOX {5+}\r\nhello\r\n")
        lines = client.lines()
        self.assertEqual(lines[:2], ["* 1 EXISTS", "* 1 RECENT"])

    def test_copy_and_move_with_copyuid(self) -> None:
        for n in range(3):
            self.deliver(message(f"m{n}"))
        client = self.login()
        trash = self.folder("Trash").sync().uidvalidity
        archive = self.folder("Archive").sync().uidvalidity
        client.run(f"""
            C: a1 COPY 2:3 Trash
            S: a1 OK [COPYUID {trash} 2:3 1:2] COPY completed
            C: a2 UID MOVE 1,3 Archive
            S: * OK [COPYUID {archive} 1,3 1:2] Moved
            S: * 3 EXPUNGE
            S: * 1 EXPUNGE
            S: a2 OK MOVE completed
            C: a3 COPY 1 Nope
            S: a3 NO [TRYCREATE] Mailbox does not exist
            C: a4 FETCH 1 (UID)
            S: * 1 FETCH (UID 2)
            S: a4 OK FETCH completed
        """)
        self.assertEqual(self.folder("Trash").sync().count, 2)
        self.assertEqual(self.folder("Archive").sync().count, 2)


class Idle(IMAPTestCase):
    def test_new_mail_during_idle_and_only_done_ends_it(self) -> None:
        client = self.login()
        client.run("""
            C: a1 IDLE
            S: + idling
        """)
        self.deliver()
        self.clock.advance(1.0)
        client.run("""
            S: * 1 EXISTS
            S: * 1 RECENT
            C: DONE
            S: a1 OK IDLE terminated
            C: a2 IDLE
            S: + idling
            C: a3 NOOP
            S: a2 BAD Expected DONE
        """)

    def test_idle_in_authenticated_state_just_waits(self) -> None:
        client = self.login(select=None)
        client.run("""
            C: a1 IDLE
            S: + idling
            C: done
            S: a1 OK IDLE terminated
        """)


class Search(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        for n in range(3):
            self.deliver(message(f"m{n}", f"body number {n}\r\n"))
        self.client = self.login()

    def test_search_and_uid_search(self) -> None:
        self.client.run("""
            C: a1 STORE 2 +FLAGS.SILENT (\\Seen)
            S: a1 OK STORE completed
            C: a2 SEARCH UNSEEN
            S: * SEARCH 1 3
            S: a2 OK SEARCH completed
            C: a3 UID SEARCH SUBJECT m2
            S: * SEARCH 3
            S: a3 OK SEARCH completed
            C: a4 SEARCH CHARSET UTF-8 BODY "number 1"
            S: * SEARCH 2
            S: a4 OK SEARCH completed
            C: a5 SEARCH CHARSET KOI8-R ALL
            S: a5 NO [BADCHARSET (US-ASCII UTF-8)] ...
            C: a6 SEARCH FROBNICATE
            S: a6 BAD ...
        """)

    def test_header_keys_and_envelope_need_no_mime_parse(self) -> None:
        # SUBJECT/FROM/HEADER/SENT* and ENVELOPE come from the header block alone (the
        # "headers" cache entry); BODYSTRUCTURE and BODY parse the MIME structure
        parsed: list[object] = []
        full = mime.parse_structure

        def counting(fp: object) -> mime.MessageStructure:
            parsed.append(fp)
            return full(fp)  # type: ignore[arg-type]

        self.patch(mime, "parse_structure", counting)
        self.client.run("""
            C: a1 UID SEARCH OR SUBJECT m1 HEADER Message-ID <m2@
            S: * SEARCH 2 3
            S: a1 OK SEARCH completed
            C: a2 SEARCH SENTBEFORE 1-Jan-1990
            S: * SEARCH
            S: a2 OK SEARCH completed
            C: a3 FETCH 1 (ENVELOPE)
            S: * 1 FETCH (ENVELOPE ...
            S: a3 OK FETCH completed
        """)
        self.assertEqual(parsed, [])
        self.client.run("""
            C: a4 SEARCH BODY "number 0"
            S: * SEARCH 1
            S: a4 OK SEARCH completed
        """)
        self.assertEqual(len(parsed), 3)

    def test_search_modseq_enables_condstore(self) -> None:
        self.client.command("STORE 3 +FLAGS (\\Flagged)")
        modseq = self.folder().sync().messages[2].modseq
        self.client.run(f"""
            C: a1 SEARCH MODSEQ {modseq}
            S: * OK [HIGHESTMODSEQ ...
            S: * SEARCH 3 (MODSEQ {modseq})
            S: a1 OK SEARCH completed
        """)


class BusyLock(IMAPTestCase):
    """A folder lock held by a live holder: the command waits on the clock, the reactor does
    not (mailhub.store.lockwait); past lock_timeout it is a temporary NO (RFC 5530)."""

    def setUp(self) -> None:
        super().setUp()
        self.patch(dotlock, "on_reactor_thread", lambda: True)
        self.deliver()  # UID 1 assigned
        # As SMTP delivery does it (no lock): a file in new/ whose UID needs the lock.
        new = self.store.root / "example.org" / "alice" / "new"
        data = message()
        (new / f"1765000000.M1P1Q1.mail.example.org,S={len(data)}").write_bytes(data)
        # Another live process on this machine holds the folder lock.
        self.holder = DotLock(self.store.root / "example.org" / "alice" / uidlist.LOCKNAME,
                              in_reactor=lambda: True)  # fmt: skip
        self.holder.acquire()
        self.addCleanup(self.holder.release)
        self.client = self.login(select=None)

    def test_select_waits_for_the_holder(self) -> None:
        self.client.send("a1 SELECT INBOX\r\n")
        self.assertEqual(self.client.take(), b"")
        other = self.login(select=None)  # the reactor serves other sessions meanwhile
        other.command("NOOP")
        self.clock.advance(1)
        self.assertEqual(self.client.take(), b"")
        self.holder.release()
        self.clock.advance(0.1)
        lines = self.client.lines()
        self.assertIn("* 2 EXISTS", lines)
        self.assertTrue(lines[-1].startswith("a1 OK [READ-WRITE]"), lines)

    def test_select_gives_up_with_a_temporary_no(self) -> None:
        self.client.send("a1 SELECT INBOX\r\n")
        for _ in range(110):
            self.clock.advance(0.1)
        self.assertEqual(
            self.client.lines(), ["a1 NO [UNAVAILABLE] Mailbox is busy, try again later"]
        )
        self.client.command("NOOP")  # the session goes on

    def test_copy_after_the_wait_does_not_meet_the_lock_again(self) -> None:
        # Seen in the stress benchmark: COPY waited for the busy lock (_settle_for_copy), then
        # link_copies() looked again, new mail needed the lock, the store's worker had it
        # again, and COPY (never run again) answered NO [UNAVAILABLE].
        self.holder.release()
        self.client.command("SELECT INBOX")
        self.client.command("CREATE Kept")
        kept = self.store.root / "example.org" / "alice" / ".Kept"
        new = self.store.root / "example.org" / "alice" / "new"
        settle = IMAPServerProtocol.settle

        async def settle_then_busy(session: IMAPServerProtocol, *folders: Folder) -> None:
            await settle(session, *folders)
            data = message()
            (new / f"1765000001.M1P1Q2.mail.example.org,S={len(data)}").write_bytes(data)
            self.holder.acquire()

        self.patch(IMAPServerProtocol, "settle", settle_then_busy)
        self.client.send("a1 COPY 1:2 Kept\r\n")
        lines = self.client.lines()
        self.assertTrue(lines[-1].startswith("a1 OK [COPYUID "), lines)
        self.assertEqual(len(os.listdir(kept / "new") + os.listdir(kept / "cur")), 2)

    def test_uid_copy_waits_for_the_holder(self) -> None:
        # Seen in the stress benchmark: the UID prefix's look met the lock busy and UID COPY,
        # never run again, answered NO [UNAVAILABLE] at once.
        self.holder.release()
        self.client.command("SELECT INBOX")
        self.client.command("CREATE Kept")
        kept = self.store.root / "example.org" / "alice" / ".Kept"
        new = self.store.root / "example.org" / "alice" / "new"
        data = message()
        (new / f"1765000001.M1P1Q2.mail.example.org,S={len(data)}").write_bytes(data)
        self.holder.acquire()
        self.client.send("a1 UID COPY 1 Kept\r\n")
        self.clock.advance(0.5)
        self.assertEqual(self.client.take(), b"")
        self.holder.release()
        self.clock.advance(0.1)
        lines = self.client.lines()
        self.assertIn("* 3 EXISTS", lines)
        self.assertTrue(lines[-1].startswith("a1 OK [COPYUID "), lines)
        self.assertEqual(len(os.listdir(kept / "new") + os.listdir(kept / "cur")), 1)

    def test_append_answers_appenduid_when_the_lock_turns_busy_after_the_uid(self) -> None:
        # Seen with two workers (tests.integration.test_crash_uids): the look for APPENDUID's
        # UIDVALIDITY after the UID was named met the lock busy (another process's delivery
        # being given its UID) and APPEND answered OK without APPENDUID (RFC 4315 3).
        self.holder.release()
        new = self.store.root / "example.org" / "alice" / "new"
        adopt = Folder.adopt

        def adopt_then_busy(folder: Folder, placement: object) -> int:
            uid = adopt(folder, placement)  # type: ignore[arg-type]
            data = message()
            (new / f"1765000002.M1P1Q3.mail.example.org,S={len(data)}").write_bytes(data)
            self.holder.acquire()
            return uid

        self.patch(Folder, "adopt", adopt_then_busy)
        self.client.send(b"a1 APPEND INBOX {5+}\r\nhello\r\n")
        self.clock.advance(0.5)
        self.assertEqual(self.client.take(), b"")
        self.holder.release()
        self.clock.advance(0.1)
        self.assertRegex(self.client.lines()[-1], r"^a1 OK \[APPENDUID \d+ 3\] ")

    def test_append_of_a_message_expunged_at_once_is_ok(self) -> None:
        # Seen with two workers (tests.integration.test_crash_uids): another process gave the
        # appended message its UID and another session expunged it before APPEND could read
        # it: the message was stored, so OK (without APPENDUID), not NO [SERVERBUG].
        self.holder.release()
        new = self.store.root / "example.org" / "alice" / "new"
        adopt = Folder.adopt

        def expunged_first(folder: Folder, placement: object) -> int:
            (new / placement.base).unlink()  # type: ignore[attr-defined]
            return adopt(folder, placement)  # type: ignore[arg-type]

        self.patch(Folder, "adopt", expunged_first)
        self.client.send(b"a1 APPEND INBOX {5+}\r\nhello\r\n")
        self.clock.advance(0.1)
        self.assertEqual(self.client.lines(), ["a1 OK APPEND completed"])
        self.client.command("NOOP")  # the session goes on

    def test_login_waits_for_the_subscriptions_lock(self) -> None:
        root = self.store.root / "example.org" / "alice"
        sent = root / ".Sent"
        for sub in ("cur", "new", "tmp"):
            (sent / sub).rmdir()
        (sent / "maildirfolder").unlink()
        sent.rmdir()
        holder = DotLock(root / "subscriptions.lock", in_reactor=lambda: True)
        holder.acquire()
        self.addCleanup(holder.release)
        client = self.connect()
        client.send("a1 LOGIN alice secret\r\n")
        self.assertEqual(client.take(), b"")
        self.assertFalse(sent.exists())  # nothing done before the lock
        holder.release()
        self.clock.advance(0.1)
        self.assertTrue(client.lines()[-1].startswith("a1 OK"))
        self.assertIn("Sent", self.store.mailbox(USER).subscriptions())
