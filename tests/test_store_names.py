"""Names from the network must never escape the data directory; Maildir file-name grammar."""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from mailhub.store import names
from mailhub.store.errors import InvalidName

BAD_ADDRESSES = {
    "no at sign": "alice",
    "empty localpart": "@example.com",
    "empty domain": "alice@",
    "dot-dot localpart": "..@example.com",
    "dot-dot domain": "alice@..",
    "slash in localpart": "a/b@example.com",
    "slash traversal": "../../etc@example.com",
    "backslash": "a\\b@example.com",
    "absolute domain": "alice@/etc",
    "NUL": "a\0b@example.com",
    "control char": "a\x01b@example.com",
    "newline": "a\nb@example.com",
    "DEL": "a\x7fb@example.com",
    "leading dot localpart": ".hidden@example.com",
    "leading dot domain": "alice@.example.com",
    "over-long localpart": "a" * 256 + "@example.com",
    "over-long utf-8 localpart": "é" * 128 + "@example.com",  # 256 bytes
    "U-label domain": "alice@bücher.example",
    "lone surrogate": "a\udcffb@example.com",
}

BAD_FOLDERS = {
    "empty": "",
    "empty component": "A..B",
    "leading delimiter": ".Sent",
    "trailing delimiter": "Sent.",
    "slash": "Sent/../../x",
    "backslash": "a\\b",
    "NUL": "a\0b",
    "control": "a\tb",
    "DEL": "a\x7f",
    "child of INBOX": "INBOX.x",
    "over-long": "x" * 255,  # plus the leading "." on disk is 256 bytes
}


class AddressTests(SynchronousTestCase):
    def test_split(self) -> None:
        self.assertEqual(names.split_address("alice@example.com"), ("alice", "example.com"))
        # RFC 6531 localpart, A-label domain, quoted localpart containing "@".
        self.assertEqual(
            names.split_address("jörg@xn--bcher-kva.example"), ("jörg", "xn--bcher-kva.example")
        )
        self.assertEqual(names.split_address('"a@b"@example.com'), ('"a@b"', "example.com"))

    def test_refused(self) -> None:
        for why, address in BAD_ADDRESSES.items():
            with self.subTest(why):
                self.assertRaises(InvalidName, names.split_address, address)

    def test_255_bytes_is_fine(self) -> None:
        self.assertEqual(names.split_address("a" * 255 + "@x.org")[0], "a" * 255)


class FolderNameTests(SynchronousTestCase):
    def test_inbox_case_insensitive(self) -> None:
        self.assertEqual(names.normalise_folder("inbox"), "INBOX")
        self.assertEqual(names.normalise_folder("InBoX"), "INBOX")

    def test_refused(self) -> None:
        for why, name in BAD_FOLDERS.items():
            with self.subTest(why):
                self.assertRaises(InvalidName, names.normalise_folder, name)

    def test_dirnames(self) -> None:
        self.assertEqual(names.folder_dirname("Sent"), ".Sent")
        self.assertEqual(names.folder_dirname("A.B"), ".A.B")
        # Modified UTF-7 on disk, as Dovecot/Courier store it (RFC 3501 5.1.3).
        self.assertEqual(names.folder_dirname("Entwürfe"), ".Entw&APw-rfe")
        self.assertEqual(names.folder_dirname("R&D"), ".R&-D")
        self.assertEqual(names.folder_from_dirname(".Entw&APw-rfe"), "Entwürfe")
        self.assertIsNone(names.folder_from_dirname(".."))
        self.assertIsNone(names.folder_from_dirname("cur"))
        self.assertIsNone(names.folder_from_dirname(".bad&"))

    def test_mutf7_round_trip(self) -> None:
        for text in ["", "plain", "a&b", "日本語", "mixed ü and 😀 & more", "~/,+"]:
            with self.subTest(text):
                encoded = names.encode_mutf7(text)
                self.assertTrue(encoded.isascii())
                self.assertEqual(names.decode_mutf7(encoded), text)


class FileNameTests(SynchronousTestCase):
    def test_unique_name_format(self) -> None:
        a = names.unique_name("mx1.example.com", lambda: 1700000000.123456)
        b = names.unique_name("mx1.example.com", lambda: 1700000000.123456)
        pattern = rf"1700000000\.M12345\dP{os.getpid()}Q\d+\.mx1\.example\.com"
        self.assertRegex(a, pattern)
        self.assertNotEqual(a, b)  # same microsecond, the Q counter still differs

    def test_host_escaped(self) -> None:
        # maildir.html: "/" -> \057 and ":" -> \072; we also escape "," for ",S=" parsing.
        name = names.unique_name("evil/host:1,S=9", lambda: 1.0)
        host = name.split(".", 2)[2]
        self.assertEqual(host, "evil\\057host\\0721\\054S=9")
        self.assertNotIn("/", name)
        self.assertNotIn(":", name)
        self.assertIsNone(names.size_from_base(name))

    def test_size_and_time_from_base(self) -> None:
        base = names.with_size("1700000000.M5P7Q9.host", 4096)
        self.assertEqual(base, "1700000000.M5P7Q9.host,S=4096")
        self.assertEqual(names.size_from_base(base), 4096)
        self.assertEqual(names.time_from_base(base), (1700000000, 5))
        self.assertIsNone(names.time_from_base("garbage"))

    def test_flags(self) -> None:
        self.assertEqual(names.format_filename("b", {"S", "R", "F"}), "b:2,FRS")
        # Dovecot keywords (a-z) sort after the capitals in ASCII order and are kept.
        self.assertEqual(names.format_filename("b", {"a", "S", "c"}), "b:2,Sac")
        base, info = names.split_filename("b:2,FRSa")
        self.assertEqual((base, names.flags_of(info)), ("b", frozenset("FRSa")))
        self.assertEqual(names.flags_of(None), frozenset())
        self.assertEqual(names.flags_of("1,experimental"), frozenset())
        self.assertRaises(InvalidName, names.check_flags, ["Seen"])
        self.assertRaises(InvalidName, names.check_flags, ["1"])

    def test_message_filenames(self) -> None:
        self.assertTrue(names.is_message_filename("1.M2P3Q4.h,S=5:2,S"))
        self.assertFalse(names.is_message_filename(".nfs0001"))
        self.assertFalse(names.is_message_filename("a\nb"))
        self.assertTrue(re.match(r"\d+\.", names.unique_name("h")))


class BulkParseTests(SynchronousTestCase):
    """arrival_fields/message_filenames give what the per-name functions give."""

    def test_arrival_fields_match_per_name_parsing(self) -> None:
        bases = ["1700000000.M5P1Q1.h,S=4096", "17.x,S=,S=9", "garbage", "1.M,S=3", "9.Mx"]
        for group in (bases, bases[:1], [], ["a\nb", "1.M2,S=3"]):
            secs, usecs, sizes = names.arrival_fields(group)
            times = [names.time_from_base(b) for b in group]
            self.assertEqual(secs, [t[0] if t else None for t in times])
            self.assertEqual(usecs, [t[1] if t else 0 for t in times])
            self.assertEqual(sizes, [names.size_from_base(b) for b in group])
        self.assertEqual(names.arrival_fields(bases[:1]), ([1700000000], [5], [4096]))

    def test_arrival_order_sorts_by_time_then_name(self) -> None:
        # Names sharing a second, microseconds of different lengths (not zero-padded).
        bases = ["1700000002.M5P1Q1.h,S=1", "1700000001.M900P1Q2.h,S=2",
                 "1700000001.M80P1Q3.h,S=3", "1700000001.M80P1Q0.h,S=4",
                 "1700000001.P1Q5.h,S=5", "99.M1P1Q6.h,S=6"]  # fmt: skip

        def by_parsing(group: list[str]) -> list[str]:
            return sorted(group, key=lambda b: (*names.time_from_base(b), b))  # type: ignore[misc]

        ordered, secs, sizes = names.arrival_order(bases)  # type: ignore[misc]
        self.assertEqual(ordered, by_parsing(bases))
        self.assertEqual(ordered[:3], [bases[5], bases[4], bases[3]])
        self.assertEqual(secs, [names.time_from_base(b)[0] for b in ordered])  # type: ignore[index]
        self.assertEqual(sizes, [6, 5, 4, 3, 2, 1])
        self.assertEqual(names.arrival_order([]), ([], [], []))
        # One width of seconds (sorted as strings), with and without names sharing a second.
        wide = [f"17000000{i % 7:02d}.M{(i * 37) % 1000}P1Q{i}.h,S={i}" for i in range(40)]
        for group in (wide, wide[::7], list(reversed(wide))):
            ordered, secs, sizes = names.arrival_order(group)  # type: ignore[misc]
            self.assertEqual(ordered, by_parsing(group))
            self.assertEqual(secs, [names.time_from_base(b)[0] for b in ordered])  # type: ignore[index]
            self.assertEqual(sizes, [names.size_from_base(b) for b in ordered])
        # A name without its time or size, or with a line break: the caller must stat.
        for odd in ("garbage,S=1", "1700000001.M1P1Q1.h", "1.M2,S=3\n4.M5,S=6"):
            self.assertIsNone(names.arrival_order([bases[0], odd]))

    def test_message_filenames(self) -> None:
        listing = ["a", ".nfs1", ":2,S", "b\rc", "d:2,S"]
        self.assertEqual(names.message_filenames(listing), ["a", "d:2,S"])
        self.assertEqual(names.message_filenames(["a", "b"]), ["a", "b"])
        self.assertEqual(names.message_filenames([""]), [])
