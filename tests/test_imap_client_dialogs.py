"""What real mail clients send, replayed as dialogs: the command sequences (spelling and case
as the clients write them) of Thunderbird 115 and mutt 2.2 opening a mailbox, reading a
message, flagging, moving and deleting. Taken from their IMAP protocol logs."""

from __future__ import annotations

import base64

from tests.support.imap import IMAPTestCase, message

HEADER_FIELDS_TB = (
    "From To Cc Bcc Subject Date Message-ID Priority X-Priority References Newsgroups "
    "In-Reply-To Content-Type Reply-To"
)
HEADER_FIELDS_MUTT = (
    "DATE FROM SENDER SUBJECT TO CC MESSAGE-ID REFERENCES CONTENT-TYPE CONTENT-DESCRIPTION "
    "IN-REPLY-TO REPLY-TO LINES LIST-POST LIST-SUBSCRIBE LIST-UNSUBSCRIBE X-LABEL X-ORIGINAL-TO"
)


class Thunderbird(IMAPTestCase):
    def test_open_read_flag_move(self) -> None:
        self.deliver(message("one"))
        self.deliver(message("two", "Second body.\r\n"))
        client = self.connect()
        plain = base64.b64encode(b"\0alice@example.org\0secret").decode()
        one = message("one")
        two = message("two", "Second body.\r\n")
        trash = self.folder("Trash").sync().uidvalidity
        client.run(f"""
            C: 1 capability
            S: * CAPABILITY ...
            S: 1 OK CAPABILITY completed
            C: 2 authenticate PLAIN
            S: +
            C: {plain}
            S: 2 OK [CAPABILITY ...
            C: 3 ID ("name" "Thunderbird" "version" "115.3.1")
            S: * ID ("name" "mailhub" "vendor" "mailhub")
            S: 3 OK ID completed
            C: 4 namespace
            S: * NAMESPACE (("" ".")) NIL NIL
            S: 4 OK NAMESPACE completed
            C: 5 lsub "" "*"
            S: * LSUB ...
            S: ...
            S: 5 OK LSUB completed
            C: 6 list "" "*"
            S: * LIST (\\HasNoChildren) "." INBOX
            S: ...
            S: * LIST (\\HasNoChildren \\Trash) "." Trash
            S: 6 OK LIST completed
            C: 7 select "INBOX" (CONDSTORE)
            S: ...
            S: * 2 EXISTS
            S: * 2 RECENT
            S: ...
            S: 7 OK [READ-WRITE] SELECT completed
            C: 8 UID fetch 1:* (FLAGS)
            S: * 1 FETCH (UID 1 FLAGS (\\Recent) MODSEQ (...
            S: * 2 FETCH (UID 2 FLAGS (\\Recent) MODSEQ (...
            S: 8 OK FETCH completed
            C: 9 UID fetch 1:2 (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS ({HEADER_FIELDS_TB})])
            S: * 1 FETCH (UID 1 FLAGS (\\Recent) MODSEQ (2) RFC822.SIZE {len(one)} BODY[HEADER.FIELDS ({HEADER_FIELDS_TB})] {{131}}
            S: From: bob@example.net
            S: To: alice@example.org
            S: Subject: one
            S: Date: Mon, 7 Feb 1994 21:52:25 -0800
            S: Message-ID: <one@example.net>
            S:
            S: )
            S: * 2 FETCH (UID 2 FLAGS (\\Recent) MODSEQ (3) RFC822.SIZE {len(two)} ...
            S: ...
            S: 9 OK FETCH completed
            C: 10 UID fetch 2 (UID RFC822.SIZE BODY.PEEK[])
            S: * 2 FETCH (UID 2 RFC822.SIZE {len(two)} BODY[] {{{len(two)}}}
            S: ...
            S: Second body.
            S: )
            S: 10 OK FETCH completed
            C: 11 uid store 2 +Flags (\\Seen)
            S: * 2 FETCH (UID 2 FLAGS (\\Seen \\Recent) MODSEQ (...
            S: 11 OK STORE completed
            C: 12 UID MOVE 1 "Trash"
            S: * OK [COPYUID {trash} 1 1] Moved
            S: * 1 EXPUNGE
            S: 12 OK MOVE completed
            C: 13 IDLE
            S: + idling
            C: DONE
            S: 13 OK IDLE terminated
            C: 14 logout
            S: * BYE Logging out
            S: 14 OK LOGOUT completed
        """)  # noqa: E501
        [left] = self.folder().sync().messages
        self.assertEqual(left.flags, {"S"})
        [moved] = self.folder("Trash").sync().messages
        self.assertIn(b"Subject: one", self.folder("Trash").read_message(moved.uid))


class Mutt(IMAPTestCase):
    def test_open_read_delete_close(self) -> None:
        for n in range(3):
            self.deliver(message(f"m{n}"))
        client = self.connect()
        plain = base64.b64encode(b"\0alice@example.org\0secret").decode()
        m1 = message("m1")
        client.run(f"""
            C: a0000 CAPABILITY
            S: * CAPABILITY ...
            S: a0000 OK CAPABILITY completed
            C: a0001 AUTHENTICATE PLAIN {plain}
            S: a0001 OK [CAPABILITY ...
            C: a0002 LIST "" ""
            S: * LIST (\\Noselect) "." ""
            S: a0002 OK LIST completed
            C: a0003 SELECT "INBOX"
            S: ...
            S: * 3 EXISTS
            S: ...
            S: a0003 OK [READ-WRITE] SELECT completed
            C: a0004 UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS ({HEADER_FIELDS_MUTT})])
            S: * 1 FETCH (UID 1 FLAGS (\\Recent) INTERNALDATE "...
            S: ...
            S: * 3 FETCH (UID 3 FLAGS (\\Recent) INTERNALDATE "...
            S: ...
            S: a0004 OK FETCH completed
            C: a0005 UID FETCH 2 BODY.PEEK[]
            S: * 2 FETCH (UID 2 BODY[] {{{len(m1)}}}
            S: ...
            S: Hi there.
            S: )
            S: a0005 OK FETCH completed
            C: a0006 UID STORE 2 +FLAGS.SILENT (\\Seen)
            S: a0006 OK STORE completed
            C: a0007 UID STORE 1,3 +FLAGS.SILENT (\\Deleted)
            S: a0007 OK STORE completed
            C: a0008 EXPUNGE
            S: * 3 EXPUNGE
            S: * 1 EXPUNGE
            S: a0008 OK EXPUNGE completed
            C: a0009 CLOSE
            S: a0009 OK CLOSE completed
            C: a0010 LOGOUT
            S: * BYE Logging out
            S: a0010 OK LOGOUT completed
        """)  # noqa: E501
        [left] = self.folder().sync().messages
        self.assertEqual(left.flags, {"S"})
        self.assertIn(b"Subject: m1", self.folder().read_message(left.uid))
