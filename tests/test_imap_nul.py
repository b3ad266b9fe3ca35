"""A NUL octet in a stored message never reaches the wire in a FETCH answer: RFC 3501 9
``CHAR8 = %x01-ff`` (only an RFC 3516 literal8 may carry NUL). Strings (ENVELOPE,
BODYSTRUCTURE) show it as U+FFFD and message octets (BODY[...], RFC822) as 0x80, as Dovecot
does; the answers are compared with Dovecot's."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mailhub.imap import render
from tests.support.dovecot import _ask_dovecot
from tests.support.imap import IMAPTestCase
from tests.support.tools import dovecot_imap, requires
from tests.test_imap_mime import _fetch_responses

# NUL in Subject, From, To, a comment, Message-ID, a body part's parameter, description and
# body. (Not in Content-Type's type/subtype: Dovecot then gives up the whole field.)
NUL_MESSAGE = (
    b"From: Al\x00ice <al\x00ice@example.com>\r\n"
    b"To: bob@example.com, c\x00d@example.org\r\n"
    b"Cc: x@example.net (co\x00mm)\r\n"
    b"Subject: hel\x00lo world\r\n"
    b"Message-ID: <a\x00b@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=XX\r\n"
    b"\r\n"
    b"pre\r\n"
    b"--XX\r\n"
    b'Content-Type: text/plain; name="a\x00b"; charset=us-ascii\r\n'
    b"Content-Description: de\x00sc\r\n"
    b"\r\n"
    b"bo\x00dy\r\n"
    b"--XX--\r\n"
)

ITEMS = [
    "ENVELOPE",
    "BODYSTRUCTURE",
    "BODY",
    "BODY[HEADER]",
    "BODY[HEADER.FIELDS (SUBJECT)]",
    "BODY[]",
    "BODY[1]",
    "BODY[TEXT]<0>",
    "RFC822",
]


def _command(item: str) -> str:
    if item.startswith("BODY["):
        item = "BODY.PEEK" + item[4:].replace("<0>", "<0.20>")
    return f"FETCH 1 ({item})"


class NoNulOnTheWire(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.deliver(NUL_MESSAGE)
        self.client = self.login()

    def fetch(self, item: str) -> bytes:
        self.client.send(f"a {_command(item)}\r\n".encode())
        out = self.client.take()
        self.assertIn(b"\r\na OK", out)
        return out

    def test_no_nul_in_any_item(self) -> None:
        for item in ITEMS:
            out = self.fetch(item)
            self.assertNotIn(b"\0", out, item)

    def test_strings_show_replacement_character(self) -> None:
        out = self.fetch("ENVELOPE")
        self.assertIn(b"hel" + render.REPLACEMENT + b"lo world", out)
        # the address list ends at the NUL, as Dovecot's parser ends it
        self.assertIn(b'((NIL NIL "Al" "MISSING_DOMAIN"))', out)
        out = self.fetch("BODYSTRUCTURE")
        self.assertIn(b"a" + render.REPLACEMENT + b"b", out)

    def test_octets_show_0x80_and_keep_the_count(self) -> None:
        for item in ("BODY[]", "RFC822"):
            out = self.fetch(item)
            wire = NUL_MESSAGE.replace(b"\0", b"\x80")
            self.assertIn(b" {%d}\r\n" % len(NUL_MESSAGE) + wire + b")", out, item)


@requires(dovecot_imap())
class AgreesWithDovecotOnNul(IMAPTestCase):
    def test_same_answers(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="mh-dv-nul-"))
        self.addCleanup(shutil.rmtree, base, True)
        base.chmod(0o755)
        commands = [_command(item) for item in ITEMS]
        theirs = _ask_dovecot(base, [NUL_MESSAGE], commands)
        self.deliver(NUL_MESSAGE)
        client = self.login()
        for item in ITEMS:
            client.send(f"a {_command(item)}\r\n".encode())
            mine = client.take()
            # (BODY[TEXT]<0.20> is named BODY[TEXT]<0> in the answer, RFC 3501 7.4.2)
            self.assertEqual(
                _fetch_responses(mine, item)[1], _fetch_responses(theirs, item)[1], item
            )
