"""The aliases file: aliases(5) syntax with full addresses, catch-alls, expansion, reload."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailhub.aliases import AliasError, AliasesFileError, AliasLoop, AliasMap, parse_aliases

EXAMPLE = """\
# team aliases
sales@example.com:   alice@example.com, Bob@Example.COM
team@example.com:    sales@example.com,

    # a comment inside a continued entry
    carol@partner.example,
    alice@example.com
Alice@example.com:   alice@example.com, archive@example.com
info+press@example.com: press@example.com
info@example.com:    dave@example.com
@catch.example:      postmaster@example.com
kontakt@bücher.example: jörg@bücher.example
"""


class Parsing(SynchronousTestCase):
    def test_example(self) -> None:
        table = parse_aliases(EXAMPLE, "aliases")
        self.assertEqual(
            table.aliases["team@example.com"],
            ("sales@example.com", "carol@partner.example", "alice@example.com"),
        )
        self.assertEqual(
            table.aliases["sales@example.com"], ("alice@example.com", "bob@example.com")
        )
        self.assertEqual(table.catch_all, {"catch.example": ("postmaster@example.com",)})
        self.assertEqual(
            table.aliases["kontakt@xn--bcher-kva.example"], ("jörg@xn--bcher-kva.example",)
        )
        self.assertEqual(table.lines["team@example.com"], 3)

    def assertLineError(self, text: str, line: int, words: str) -> None:
        e = self.assertRaises(AliasesFileError, parse_aliases, text, "/etc/mailhub/aliases")
        self.assertEqual((e.source, e.line), ("/etc/mailhub/aliases", line))
        self.assertIn(f"/etc/mailhub/aliases, line {line}: ", str(e))
        self.assertIn(words, str(e))

    def test_errors_name_file_and_line(self) -> None:
        self.assertLineError("  leading@example.com\n", 1, "continuation line")
        self.assertLineError("# c\nno colon here\n", 2, "expected 'alias@domain")
        self.assertLineError("postmaster: root@example.com\n", 1, "write the full address")
        self.assertLineError("a@example.com: root\n", 1, "a target is a full address")
        self.assertLineError("a@example.com: @example.org\n", 1, "a target is a full address")
        self.assertLineError('a@example.com: "|/usr/bin/x"\n', 1, "a target is a full address")
        self.assertLineError("a@example.com: |/usr/bin/procmail\n", 1, "command")
        self.assertLineError("a@example.com: /var/mail/a\n", 1, "file")
        self.assertLineError("a@example.com: :include:/etc/list\n", 1, ":include:")
        self.assertLineError("a@example.com:   ,  \n", 1, "has no targets")
        self.assertLineError("@bad_domain!: a@example.com\n", 1, "not a valid domain")
        self.assertLineError("a@x.com: b@x.com\n\nA@X.com: c@x.com\n", 3, "already on line 1")
        self.assertLineError("a@x.com: b@x.com,\n  ../etc@x.com\n", 1, "localpart may not")


class Resolving(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.path.write_text(EXAMPLE)
        self.users = {"alice@example.com", "bob@example.com", "postmaster@example.com"}
        self.users.add("real@catch.example")
        self.map = AliasMap(self.path, is_user=self.users.__contains__)

    def test_not_an_alias(self) -> None:
        self.assertIsNone(self.map.resolve("bob@example.com"))
        self.assertIsNone(self.map.resolve("nobody@example.com"))
        self.assertIsNone(self.map.resolve("not an address"))

    def test_simple_and_folded(self) -> None:
        self.assertEqual(
            self.map.resolve("SALES@Example.com"),
            ["alice@example.com", "archive@example.com", "bob@example.com"],
        )
        self.assertEqual(self.map("kontakt@BÜCHER.example"), ["jörg@xn--bcher-kva.example"])

    def test_recursive_expansion_deduplicates_and_keeps_remote_targets(self) -> None:
        self.assertEqual(
            self.map.resolve("team@example.com"),
            [
                "alice@example.com",
                "archive@example.com",
                "bob@example.com",
                "carol@partner.example",
            ],
        )

    def test_alias_to_itself_keeps_a_copy(self) -> None:
        self.assertEqual(
            self.map.resolve("alice@example.com"), ["alice@example.com", "archive@example.com"]
        )

    def test_plus_addressing(self) -> None:
        self.assertEqual(self.map.resolve("info+press@example.com"), ["press@example.com"])
        self.assertEqual(self.map.resolve("info+other@example.com"), ["dave@example.com"])
        self.assertEqual(
            self.map.resolve("sales+q3@example.com"),
            ["alice@example.com", "archive@example.com", "bob@example.com"],
        )
        self.assertIsNone(self.map.resolve("bob+tag@example.com"))

    def test_catch_all_leaves_users_alone(self) -> None:
        self.assertEqual(self.map.resolve("anything@catch.example"), ["postmaster@example.com"])
        self.assertEqual(self.map.resolve("x+y@Catch.Example"), ["postmaster@example.com"])
        self.assertIsNone(self.map.resolve("real@catch.example"))
        self.assertIsNone(self.map.resolve("real+tag@catch.example"))

    def test_catch_all_without_is_user_takes_everything_not_aliased(self) -> None:
        plain = AliasMap(self.path)
        self.assertEqual(plain.resolve("real@catch.example"), ["postmaster@example.com"])

    def test_catch_all_pointing_into_its_own_domain(self) -> None:
        self.path.write_text("@d.example: admin@d.example\n")
        self.map.reload()
        self.assertEqual(self.map.resolve("x@d.example"), ["admin@d.example"])

    def test_loops_are_errors(self) -> None:
        self.path.write_text("a@x.com: b@x.com\nb@x.com: c@x.com, d@x.com\nc@x.com: a@x.com\n")
        self.map.reload()
        e = self.assertRaises(AliasLoop, self.map.resolve, "a@x.com")
        self.assertEqual(str(e), "alias loop: a@x.com -> b@x.com -> c@x.com -> a@x.com")
        self.assertRaises(AliasLoop, self.map.resolve, "c@x.com")

    def test_depth_limit(self) -> None:
        chain = "".join(f"a{n}@x.com: a{n + 1}@x.com\n" for n in range(12))
        self.path.write_text(chain)
        self.map.reload()
        e = self.assertRaises(AliasError, self.map.resolve, "a0@x.com")
        self.assertIn("deeper than 10 levels", str(e))
        self.assertEqual(self.map.resolve("a3@x.com"), ["a12@x.com"])  # 9 levels is fine

    def test_expansion_limit(self) -> None:
        # Four levels of four addresses each pointing at all four of the next: 4 + 16 + 64 +
        # 256 look-ups, shallow but wide; max_targets stops an accidental explosion.
        def level(n: int) -> str:
            return ", ".join(f"n{n}.{i}@x.com" for i in range(4))

        text = "".join(f"n{n}.{i}@x.com: {level(n + 1)}\n" for n in range(4) for i in range(4))
        self.path.write_text(text)
        small = AliasMap(self.path, max_targets=50)
        e = self.assertRaises(AliasError, small.resolve, "n0.0@x.com")
        self.assertIn("more than 50 addresses", str(e))
        self.assertEqual(small.resolve("n3.0@x.com"), [f"n4.{i}@x.com" for i in range(4)])
        self.assertEqual(len(AliasMap(self.path).resolve("n0.0@x.com") or []), 4)

    def test_aliases_of(self) -> None:
        self.assertEqual(
            self.map.aliases_of("Bob@example.com"), ["sales@example.com", "team@example.com"]
        )
        self.assertEqual(
            self.map.aliases_of("alice@example.com"),
            ["alice@example.com", "sales@example.com", "team@example.com"],
        )
        self.assertEqual(self.map.aliases_of("nobody@example.com"), [])
        self.assertEqual(self.map.aliases_of("junk"), [])

    def test_repr(self) -> None:
        self.assertEqual(repr(self.map), f"<AliasMap {str(self.path)!r}: 7 entries>")


class Reloading(SynchronousTestCase):
    def test_change_is_picked_up_and_a_broken_edit_ignored(self) -> None:
        path = Path(self.mktemp())
        path.write_text("a@x.com: b@x.com\n")
        now = [0.0]
        aliases = AliasMap(path, clock=lambda: now[0], interval=1.0)
        mtime = path.stat().st_mtime_ns

        def rewrite(text: str) -> None:
            nonlocal mtime
            path.write_text(text)
            mtime += 1_000_000_000
            os.utime(path, ns=(mtime, mtime))

        rewrite("a@x.com: c@x.com\n")
        self.assertEqual(aliases.resolve("a@x.com"), ["b@x.com"])  # within the interval
        now[0] += 1.5
        self.assertEqual(aliases.resolve("a@x.com"), ["c@x.com"])
        rewrite("a@x.com: c@x.com\nbroken\n")
        now[0] += 1.5
        self.assertEqual(aliases.resolve("a@x.com"), ["c@x.com"])
        rewrite("a@x.com: d@x.com\n")
        now[0] += 1.5
        self.assertEqual(aliases.resolve("a@x.com"), ["d@x.com"])

    def test_start_up_with_a_broken_file_fails_loudly(self) -> None:
        path = Path(self.mktemp())
        path.write_text("a@x.com b@x.com\n")
        e = self.assertRaises(AliasesFileError, AliasMap, path)
        self.assertEqual(e.line, 1)
