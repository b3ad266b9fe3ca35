"""Sequence sets, command framing (literals, limits) and argument grammar."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailhub.imap import arguments as A
from mailhub.imap.parser import (
    Atom,
    Command,
    CommandFramer,
    Continue,
    ParseError,
    Refused,
    SpooledLiteral,
    items_of,
    parse_command,
)
from mailhub.imap.sequence import SequenceSet, compress
from mailhub.store.errors import InvalidName


class SequenceSetTests(SynchronousTestCase):
    def test_ranges_are_sorted_merged_and_star_resolved(self) -> None:
        self.assertEqual(SequenceSet.parse("1:*,4").ranges(10), [(1, 10)])
        self.assertEqual(SequenceSet.parse("9,4:2,3:5").ranges(20), [(2, 5), (9, 9)])
        # RFC 3501 9: "*:4" is "4:*"; with the largest number 2 it is 2:4.
        self.assertEqual(SequenceSet.parse("*:4").ranges(2), [(2, 4)])
        self.assertEqual(SequenceSet.parse("1:*").ranges(0), [])

    def test_contains(self) -> None:
        s = SequenceSet.parse("2,5:7,10:*")
        self.assertEqual([n for n in range(1, 13) if s.contains(n, 12)], [2, 5, 6, 7, 10, 11, 12])

    def test_bad_syntax(self) -> None:
        for text in ("", "0", "1:", "a", "1,,2", ":3", "1:0", "4294967296", "01"):
            with self.assertRaises(ValueError, msg=text):
                SequenceSet.parse(text)

    def test_compress(self) -> None:
        self.assertEqual(compress([1, 2, 3, 5, 7, 8]), "1:3,5,7:8")
        self.assertEqual(compress([]), "")


class ItemTests(SynchronousTestCase):
    def test_atoms_strings_lists(self) -> None:
        self.assertEqual(
            items_of(b'a1 LOGIN "al\\"ice" NIL (x (y "z"))'),
            [Atom("a1"), Atom("LOGIN"), b'al"ice', Atom("NIL"), [Atom("x"), [Atom("y"), b"z"]]],
        )

    def test_fetch_attribute_with_brackets_is_one_atom(self) -> None:
        items = items_of(b"a FETCH 1 (BODY.PEEK[HEADER.FIELDS (From To)]<0.100> UID)")
        self.assertEqual(items[3], [Atom("BODY.PEEK[HEADER.FIELDS (From To)]<0.100>"), Atom("UID")])

    def test_brackets_outside_fetch_sections_are_atom_characters(self) -> None:
        # RFC 3501 9: "[" is an ATOM-CHAR, "]" an ASTRING-CHAR and a list-char; only a fetch
        # section (BODY[...], BINARY[...]) spans spaces up to its "]".
        name = "!#$&'+,-.0123456789:;<=>?@^_`|[}"
        self.assertEqual(items_of(f"a SELECT {name}".encode())[2:], [Atom(name)])
        self.assertEqual(items_of(f'a LIST "" {name}%*'.encode())[3], Atom(name + "%*"))
        self.assertEqual(items_of(b"a SELECT x]y z[")[2:], [Atom("x]y"), Atom("z[")])
        self.assertEqual(items_of(b"a SELECT a[b c]")[2:], [Atom("a[b"), Atom("c]")])
        self.assertEqual(items_of(b"a FETCH 1 body[]")[3], Atom("body[]"))
        self.assertEqual(items_of(b"a FETCH 1 BINARY.PEEK[1 2]")[3], Atom("BINARY.PEEK[1 2]"))
        with self.assertRaises(ParseError):
            items_of(b"a FETCH 1 (BODY[HEADER.FIELDS (From)")

    def test_errors(self) -> None:
        for bad in (
            b'a X "unterminated',
            b"a X (open",
            b"a X close)",
            b'a X "bad\\q"',
            b'a X "a""b"',
            b"a SELECT {abc}",  # "{" is an atom-special: neither an atom nor a literal
            b"a SELECT {-1}",
            b"a SELECT x{3}y",
        ):
            with self.assertRaises(ParseError, msg=bad):
                items_of(bad)

    def test_command_name_and_tag(self) -> None:
        self.assertEqual(parse_command(Command([b"A1 noop"])), ("A1", "NOOP", []))
        with self.assertRaises(ParseError):
            parse_command(Command([b"* NOOP"]))


class FramerTests(SynchronousTestCase):
    def framer(self, **kw: int) -> CommandFramer:
        options = {"max_line": 200, "max_append": 1000, "spool_threshold": 100}
        options.update(kw)
        return CommandFramer(**options)

    def events(self, framer: CommandFramer) -> list:
        out = []
        while (event := framer.next_event()) is not None:
            out.append(event)
        return out

    def test_synchronising_literal_asks_for_continuation(self) -> None:
        f = self.framer()
        f.feed(b"a LOGIN {5}\r\n")
        self.assertEqual(self.events(f), [Continue()])
        f.feed(b'alice "pw"\r\n')
        [command] = self.events(f)
        self.assertEqual(parse_command(command), ("a", "LOGIN", [b"alice", b"pw"]))

    def test_non_synchronising_literal_needs_no_continuation(self) -> None:
        f = self.framer()
        f.feed(b"a LOGIN {5+}\r\nalice {2+}\r\npw\r\nb NOOP\r\n")
        first, second = self.events(f)
        self.assertEqual(parse_command(first)[2], [b"alice", b"pw"])
        self.assertEqual(parse_command(second), ("b", "NOOP", []))

    def test_literal_split_over_many_segments(self) -> None:
        f = self.framer()
        f.feed(b"a APPEND INBOX {10+}\r\n01234")
        self.assertEqual(self.events(f), [])
        f.feed(b"56789")
        self.assertEqual(self.events(f), [])
        f.feed(b"\r\n")
        [command] = self.events(f)
        self.assertEqual(parse_command(command)[2], [Atom("INBOX"), b"0123456789"])

    def test_large_append_literal_is_spooled_to_a_file(self) -> None:
        f = self.framer()
        body = b"x" * 500
        f.feed(b"a APPEND INBOX {500+}\r\n" + body + b"\r\n")
        [command] = self.events(f)
        literal = parse_command(command)[2][1]
        self.assertIsInstance(literal, SpooledLiteral)
        self.assertEqual((literal.size, literal.file.read()), (500, body))
        self.assertTrue(hasattr(literal.file, "fileno"), "a real temporary file")
        command.discard()

    def test_synchronising_literal_over_the_limit_is_refused_at_once(self) -> None:
        f = self.framer()
        f.feed(b"a APPEND INBOX {1001}\r\nb NOOP\r\n")
        refused, noop = self.events(f)
        self.assertEqual(refused, Refused("a", "TOOBIG", "APPEND"))
        self.assertEqual(parse_command(noop), ("b", "NOOP", []))

    def test_non_synchronising_literal_over_the_limit_is_read_and_thrown_away(self) -> None:
        f = self.framer()
        f.feed(b"a APPEND INBOX {1001+}\r\n")
        self.assertEqual(self.events(f), [])
        f.feed(b"y" * 600)
        self.assertEqual(self.events(f), [])
        self.assertEqual(f.buffered, 0, "discarded as it arrives, not buffered")
        f.feed(b"y" * 401 + b"\r\nb NOOP\r\n")
        refused, noop = self.events(f)
        self.assertEqual(refused, Refused("a", "TOOBIG", "APPEND"))
        self.assertEqual(parse_command(noop)[1], "NOOP")

    def test_non_synchronising_literal_too_large_to_skip_ends_the_framing(self) -> None:
        # RFC 7888 4: past twice the APPEND limit the data is not read to skip it; the refusal
        # is fatal and nothing after the announcement is taken as a command.
        f = self.framer()
        f.feed(b"a APPEND INBOX {99999999999+}\r\nb NOOP\r\n")
        self.assertEqual(self.events(f), [Refused("a", "TOOBIG", "APPEND", fatal=True)])
        f.feed(b"c NOOP\r\n")
        self.assertEqual((self.events(f), f.buffered), ([], 0))

    def test_non_synchronising_literal_limit_of_other_commands(self) -> None:
        f = CommandFramer(max_line=100, max_append=1000, max_discard=3000)
        f.feed(b"a LOGIN {2000+}\r\n" + b"x" * 2000 + b" y\r\nb NOOP\r\n")
        refused, noop = self.events(f)
        self.assertEqual(refused, Refused("a", "LINE", "LOGIN"))
        self.assertEqual(parse_command(noop)[1], "NOOP")
        f.feed(b"c LOGIN {3001+}\r\n")
        self.assertEqual(self.events(f), [Refused("c", "TOOBIG", "LOGIN", fatal=True)])

    def test_a_later_literal_too_large_to_skip_is_fatal_too(self) -> None:
        f = CommandFramer(max_line=100, max_append=1000, max_discard=3000)
        f.feed(b"a LOGIN {200+}\r\n" + b"x" * 200 + b" {5000+}\r\n")
        self.assertEqual(self.events(f), [Refused("a", "LINE", "LOGIN", fatal=True)])

    def test_long_line_is_refused_and_skipped(self) -> None:
        f = self.framer()
        f.feed(b"a NOOP " + b"x" * 300)
        [refused] = self.events(f)
        self.assertEqual(refused, Refused("a", "LINE", "NOOP"))
        f.feed(b"x" * 300 + b"\r\nb NOOP\r\n")
        [noop] = self.events(f)
        self.assertEqual(parse_command(noop)[0], "b")

    def test_non_append_literals_count_against_the_line_limit(self) -> None:
        f = self.framer()
        f.feed(b"a LOGIN {500}\r\n")
        self.assertEqual(self.events(f), [Refused("a", "LINE", "LOGIN")])

    def test_reset_forgets_buffered_input(self) -> None:
        f = self.framer()
        f.feed(b"a NOOP\r\nb NOOP\r\n")
        f.reset()
        self.assertEqual(self.events(f), [])


class GrammarTests(SynchronousTestCase):
    def fetch(self, text: bytes, uid: bool = False) -> A.FetchRequest:
        return A.fetch_request(items_of(text), uid=uid)

    def test_macros(self) -> None:
        full = self.fetch(b"FULL")
        self.assertTrue(full.flags and full.internaldate and full.size and full.envelope)
        self.assertTrue(full.body)
        fast = self.fetch(b"FAST")
        self.assertFalse(fast.envelope)
        with self.assertRaises(ParseError):
            self.fetch(b"(ALL UID)")

    def test_body_sections(self) -> None:
        r = self.fetch(b"(BODY.PEEK[1.2.HEADER.FIELDS.NOT (X-A x-b)]<10.20> BODY[TEXT])")
        peek, _ = r.sections
        self.assertEqual(
            (peek.part, peek.text, peek.fields, peek.partial, peek.peek),
            ((1, 2), "HEADER.FIELDS.NOT", ("X-A", "x-b"), (10, 20), True),
        )
        self.assertEqual(peek.response_name(), b"BODY[1.2.HEADER.FIELDS.NOT (X-A x-b)]<10>")
        self.assertTrue(r.sets_seen)
        self.assertFalse(self.fetch(b"BODY.PEEK[]").sets_seen)
        self.assertTrue(self.fetch(b"RFC822").sets_seen)
        self.assertFalse(self.fetch(b"RFC822.HEADER").sets_seen)

    def test_bad_sections(self) -> None:
        for bad in (b"BODY[MIME]", b"BODY[HEADER.FIELDS]", b"BODY[0]", b"BODY[1.]", b"BODY[X]",
                    b"BODY[]<1.0>", b"FOO", b"BODY[TEXT (A)]"):  # fmt: skip
            with self.assertRaises(ParseError, msg=bad):
                self.fetch(bad)

    def test_changedsince_implies_modseq(self) -> None:
        r = self.fetch(b"(FLAGS) (CHANGEDSINCE 12345)")
        self.assertEqual((r.changedsince, r.modseq), (12345, True))

    def test_store(self) -> None:
        r = A.store_request(items_of(b"(UNCHANGEDSINCE 7) -FLAGS.SILENT (\\seen $Junk)"))
        self.assertEqual(r, A.StoreRequest("remove", True, ("\\Seen", "$Junk"), 7))
        self.assertEqual(A.store_request(items_of(b"FLAGS \\Draft")).flags, ("\\Draft",))
        for bad in (b"+FLAGS (\\Recent)", b"XFLAGS (a)", b"+FLAGS"):
            with self.assertRaises(ParseError, msg=bad):
                A.store_request(items_of(bad))

    def test_append(self) -> None:
        r = A.append_request([*items_of(b'Sent (\\Seen) "17-Jul-1996 02:44:25 -0700"'), b"message"])
        self.assertEqual((r.mailbox, r.flags, r.message), ("Sent", ["\\Seen"], b"message"))
        self.assertEqual(r.internaldate, 837596665.0)
        r = A.append_request([Atom("INBOX"), b"m"])  # neither flags nor date
        self.assertEqual((r.flags, r.internaldate), ([], None))

    def test_mailbox_names_are_modified_utf7(self) -> None:
        self.assertEqual(A.mailbox(Atom("Entw&APw-rfe")), "Entwürfe")
        self.assertEqual(A.mailbox(b"inbox"), "INBOX")
        # valid syntax, impossible name: the command answers NO [CANNOT], not BAD
        with self.assertRaises(InvalidName):
            A.mailbox(Atom("bad&ZeVnLIqe"))
        with self.assertRaises(InvalidName):
            A.mailbox(b"caf\xe9")  # a literal may carry any octets; this is not UTF-8

    def test_list_patterns(self) -> None:
        star = A.list_pattern_matcher("", "*")
        percent = A.list_pattern_matcher("", "%")
        self.assertTrue(star.match("A.B") and percent.match("A"))
        self.assertIsNone(percent.match("A.B"))
        self.assertTrue(A.list_pattern_matcher("A.", "%").match("A.B"))
