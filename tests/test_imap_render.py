"""Serialising IMAP data items (mailhub.imap.render): RFC 3501 section 9 formal syntax."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone

from twisted.trial.unittest import SynchronousTestCase

from mailhub.imap import render


class Strings(SynchronousTestCase):
    def test_quoted_escapes_backslash_and_quote(self) -> None:
        self.assertEqual(render.quoted(b'a"b\\c'), b'"a\\"b\\\\c"')

    def test_string_is_quoted_when_it_can_be(self) -> None:
        self.assertEqual(render.string(b"hello world"), b'"hello world"')
        self.assertEqual(render.string(b""), b'""')
        self.assertEqual(render.string(b"tab\there"), b'"tab\there"')  # TEXT-CHAR allows HT

    def test_string_is_a_literal_for_line_ends_nul_and_8bit(self) -> None:
        self.assertEqual(render.string(b"a\r\nb"), b"{4}\r\na\r\nb")
        self.assertEqual(render.string(b"a\nb"), b"{3}\r\na\nb")
        # RFC 3501 9 CHAR8 excludes NUL: it shows as U+FFFD (as in Dovecot), in a literal
        self.assertEqual(render.string(b"a\0b"), b"{5}\r\na\xef\xbf\xbdb")
        self.assertEqual(render.string(b"a\0b", utf8=True), b"{5}\r\na\xef\xbf\xbdb")
        self.assertEqual(render.string("Grüße".encode()), b"{7}\r\nGr\xc3\xbc\xc3\x9fe")

    def test_message_octets_show_nul_as_0x80(self) -> None:
        # RFC 3501 9 / RFC 3516: NUL only in a literal8; the octet count stays
        self.assertEqual(render.message_octets(b"a\0b\0"), b"a\x80b\x80")
        same = b"no nul here"
        self.assertIs(render.message_octets(same), same)

    def test_utf8_may_be_quoted_when_allowed(self) -> None:
        # RFC 6855: after ENABLE UTF8=ACCEPT, UTF-8 goes in quoted strings; invalid UTF-8 never
        self.assertEqual(render.string("Grüße".encode(), utf8=True), '"Grüße"'.encode())
        self.assertEqual(render.string(b"\xff", utf8=True), b"{1}\r\n\xff")

    def test_long_strings_are_literals(self) -> None:
        text = b"x" * (render.MAX_QUOTED + 1)
        self.assertEqual(render.string(text), b"{1001}\r\n" + text)
        self.assertEqual(render.string(text[:-1]), b'"' + text[:-1] + b'"')

    def test_nstring(self) -> None:
        self.assertEqual(render.nstring(None), b"NIL")
        self.assertEqual(render.nstring(b"NIL"), b'"NIL"')

    def test_astring_is_an_atom_when_it_can_be(self) -> None:
        self.assertEqual(render.astring(b"Sent"), b"Sent")
        self.assertEqual(render.astring(b"a]b"), b"a]b")  # ASTRING-CHAR includes "]"
        self.assertEqual(render.astring(b"two words"), b'"two words"')
        self.assertEqual(render.astring(b"a(b"), b'"a(b"')
        self.assertEqual(render.astring(b"50%"), b'"50%"')
        self.assertEqual(render.astring(b"a*"), b'"a*"')
        self.assertEqual(render.astring(b"{3}"), b'"{3}"')
        self.assertEqual(render.astring(b""), b'""')
        self.assertEqual(render.astring(b"nil"), b'"nil"')

    def test_is_atom(self) -> None:
        self.assertTrue(render.is_atom(b"\\Seen"[1:]))
        self.assertFalse(render.is_atom(b"a]"))
        self.assertFalse(render.is_atom(b""))


class Lists(SynchronousTestCase):
    def test_paren(self) -> None:
        self.assertEqual(render.paren([b"a", b"b"]), b"(a b)")
        self.assertEqual(render.paren([]), b"()")

    def test_flag_list(self) -> None:
        self.assertEqual(
            render.flag_list(["\\Seen", "\\Answered", "$Forwarded"]),
            b"(\\Seen \\Answered $Forwarded)",
        )
        self.assertEqual(render.flag_list([]), b"()")


class MailboxNames(SynchronousTestCase):
    def test_inbox_in_any_case_is_inbox(self) -> None:
        self.assertEqual(render.mailbox_name("INBOX"), b"INBOX")
        self.assertEqual(render.mailbox_name("inbox"), b"INBOX")

    def test_modified_utf7(self) -> None:
        # RFC 3501 5.1.3 example
        self.assertEqual(
            render.mailbox_name("~peter/mail/台北/日本語"),
            b"~peter/mail/&U,BTFw-/&ZeVnLIqe-",
        )
        self.assertEqual(render.mailbox_name("A&B"), b"A&-B")

    def test_names_needing_quotes(self) -> None:
        self.assertEqual(render.mailbox_name("My Folder"), b'"My Folder"')
        self.assertEqual(render.mailbox_name('a"b'), b'"a\\"b"')
        self.assertEqual(render.mailbox_name("Archive.2024"), b"Archive.2024")


class Dates(SynchronousTestCase):
    def test_rfc3501_example(self) -> None:
        pdt = timezone(timedelta(hours=-7))
        self.assertEqual(render.internaldate(837596665, pdt), b'"17-Jul-1996 02:44:25 -0700"')

    def test_one_digit_day_is_space_padded(self) -> None:
        # date-day-fixed = (SP DIGIT) / 2DIGIT
        self.assertEqual(render.internaldate(0, UTC), b'" 1-Jan-1970 00:00:00 +0000"')

    def test_positive_and_half_hour_zones(self) -> None:
        ist = timezone(timedelta(hours=5, minutes=30))
        self.assertEqual(render.format_date_time(0, ist), b" 1-Jan-1970 05:30:00 +0530")
        nfld = timezone(-timedelta(hours=3, minutes=30))
        self.assertEqual(render.format_date_time(0, nfld), b"31-Dec-1969 20:30:00 -0330")

    def test_local_zone_by_default(self) -> None:
        text = render.format_date_time(1_700_000_000)
        self.assertRegex(text.decode(), r"^[ 0-9]\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d [+-]\d{4}$")
