"""SORT and THREAD (RFC 5256, RFC 5957 DISPLAYFROM/DISPLAYTO): base subjects, sent dates, sort
order, the REFERENCES and ORDEREDSUBJECT algorithms, the commands in dialogs, and the same
answers as Dovecot."""

from __future__ import annotations

import gc
import io
import re
import shutil
import tempfile
import time
import types
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailhub.imap import sort as sort_module
from mailhub.imap import thread as thread_module
from mailhub.imap.parser import Atom
from mailhub.imap.sort import (
    SortError,
    SortMessage,
    base_subject,
    key_column,
    message_ids,
    parse_date_time,
    parse_program,
    sort_messages,
    sort_order,
    thread_keys,
)
from mailhub.imap.thread import render, thread_orderedsubject, thread_references
from mailhub.message import mime
from tests import headerbytes
from tests.support.dovecot import _ask_dovecot
from tests.support.imap import IMAPTestCase
from tests.support.mime import PYTHON_EMAIL_DATA
from tests.support.tools import dovecot_imap, requires

NOW = 1_800_000_000  # in 2027, after every Date of these tests


def mail(
    subject: str | None,
    mid: str | None = None,
    refs: list[str] | None = None,
    *,
    irt: str | None = None,
    day: int | None = 1,
    frm: str = "bob@example.net",
    to: str = "alice@example.org",
    extra: str = "",
) -> bytes:
    """A message of March 2024 (``day``; None: no Date field)."""
    h = f"From: {frm}\r\nTo: {to}\r\n"
    if subject is not None:
        h += f"Subject: {subject}\r\n"
    if day is not None:
        h += f"Date: {day:d} Mar 2024 10:00:00 +0000\r\n"
    if mid:
        h += f"Message-ID: <{mid}>\r\n"
    if refs:
        h += "References: " + " ".join(f"<{r}>" for r in refs) + "\r\n"
    if irt:
        h += f"In-Reply-To: {irt}\r\n"
    return (h + extra + "\r\nbody\r\n").encode()


def messages(datas: list[bytes], internaldate: int = NOW) -> list[SortMessage]:
    """SortMessages numbered 1, 2, ... (sequence number and UID) over parsed headers."""
    out = []
    for n, data in enumerate(datas, 1):
        h = mime.MessageHeader.from_bytes(mime.parse_header(io.BytesIO(data)).to_bytes())
        out.append(SortMessage(n, n, internaldate, len(data), h))
    return out


def program(text: str) -> list:
    return parse_program([Atom(w) for w in text.split()])


def sorted_seqs(datas: list[bytes], criteria: str) -> list[int]:
    return [m.seq for m in sort_messages(messages(datas), program(criteria))]


# Crafted for THREAD REFERENCES: every rule of RFC 5256 4 REFERENCES shows in one answer.
CRAFTED = [
    mail("Meeting", "a@x", day=1),  # 1
    mail("Re: Meeting", "b@x", ["a@x"], day=2),  # 2: reply to 1
    mail("Re: Meeting", "c@x", ["a@x", "b@x"], day=3),  # 3: reply to 2
    mail("Lunch", "d@x", ["gone@x"], day=4),  # 4: its parent is not in the mailbox
    mail("Re: Lunch", "e@x", ["gone@x"], day=5),  # 5: a sibling of 4 under the dummy
    # 6: no References; In-Reply-To's first msg-id (a comment holds another)
    mail("Re: Meeting", "f@x", irt="<c@x> (message from Bob <zz@y> of today)", day=6),
    mail("Other", "a@x", day=7),  # 7: a duplicate Message-ID: a thread of its own
    mail("Loop", "h@x", ["i@x"], day=8),  # 8 and 9 reference each other
    mail("Re: Loop", "i@x", ["h@x"], day=9),
    mail("Re: Lunch", "j@x", day=10),  # 10: only its subject joins it to 4 and 5
    mail("Fwd: Meeting", "k@x", day=11),  # 11: a forward joins the thread of 1 by subject
    mail("Status", "l@x", day=12),  # 12, 13: same subject, neither a reply: a dummy parent
    mail("Status", "m@x", day=13),
    mail(None, None, day=14),  # 14: no subject, no Message-ID
    mail("Re: Re: Lost", "n@x", ["p@x", "q@x"], day=15),  # 15: two missing ancestors
    mail("Lost", "o@x", day=16),  # 16: the original, later: 15 goes under it
    mail("Deep", "r@x", ["s@x", "t@x", "u@x"], day=17),  # 17, 18: cousins under dummies
    mail("Re: Deep", "v@x", ["s@x", "w@x"], day=18),
    mail("Later", "late@x", day=None),  # 19: no Date: its internal date (NOW) counts
]
CRAFTED_REFERENCES = b"(1 (2 3 6)(11))((4)(5)(10))(7)(9 8)((12)(13))(14)(16 15)((17)(18))(19)"
CRAFTED_ORDEREDSUBJECT = b"(1 (2)(3)(6)(11))(4 (5)(10))(7)(8 9)(12 13)(14)(15 16)(17 18)(19)"


class BaseSubject(SynchronousTestCase):
    """RFC 5256 2.1, step by step."""

    def check(self, subject: str, base: str, reply: bool) -> None:
        self.assertEqual(base_subject(subject), (base, reply), subject)

    def test_white_space_runs_become_one_space(self) -> None:  # (1)
        self.check("a \t b\r\n  c", "a b c", False)

    def test_trailers(self) -> None:  # (2)
        self.check("report   ", "report", False)
        self.check("report (fwd)", "report", True)
        self.check("report (FWD) (fwd)  ", "report", True)
        self.check("report(fwd)x", "report(fwd)x", False)  # only at the end

    def test_leaders(self) -> None:  # (3)
        self.check("Re: report", "report", True)
        self.check("RE:report", "report", True)
        self.check("Fw: report", "report", True)
        self.check("FWD : report", "report", True)
        self.check("re [2]: report", "report", True)
        self.check("[list] Re: report", "report", True)
        self.check("[a] [b] fwd: report", "report", True)
        self.check("Reply: report", "Reply: report", False)  # "re" then "ply": no subj-refwd

    def test_blob_prefix_unless_nothing_left(self) -> None:  # (4)
        self.check("[list] report", "report", False)
        self.check("[list]", "[list]", False)
        self.check("[a][b]", "[b]", False)

    def test_repeated_until_nothing_matches(self) -> None:  # (5)
        self.check("Re: [list] Re: Fwd: [x] report", "report", True)
        self.check("re:re:re: report", "report", True)

    def test_forward_wrapper(self) -> None:  # (6), then (2) again
        self.check("[Fwd: report]", "report", True)
        self.check("[fwd: Re: report (fwd)]", "report", True)
        self.check("[fwd: report] x", "x", False)  # no wrapper: a subj-blob (4)

    def test_empty(self) -> None:
        self.check("", "", False)
        self.check("Re:", "", True)

    def test_encoded_words_decoded_and_compared_case_insensitively(self) -> None:
        [m] = messages([mail("=?utf-8?q?Re=3A_Caf=C3=A9?= menu")])
        self.assertEqual(m.subject, ("CAFE\u0301 MENU", True))


_SUBJECT_PIECES = st.sampled_from(
    ["Re:", "re", "Fwd:", "fw:", "[list]", "[fwd:", "]", "(fwd)", "Report", "report", "x", "X",
     " ", "  ", "\t", "\u00e9", "=?utf-8?q?a?=", ":", "(", ")"]
)  # fmt: skip


class SubjectFastPath(SynchronousTestCase):
    """The base subject of a plain ASCII subject is found without the steps of RFC 5256 2.1:
    the same answer as the steps (raw UTF-8, encoded words, leaders, trailers, blobs, white
    space, empty and 10 KB values)."""

    def check(self, value: bytes) -> None:
        h = mime.MessageHeader.from_bytes(
            mime.parse_header(io.BytesIO(b"Subject: " + value + b"\r\n\r\nbody")).to_bytes()
        )
        raw = h.envelope_field(1)
        expected = sort_module._subject_key_full(raw) if raw else ("", False)
        self.assertEqual(sort_module._subject_key(h), expected, value)

    @settings(max_examples=300, deadline=None)
    @given(headerbytes.text_value())
    def test_any_subject(self, value: bytes) -> None:
        self.check(value)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(_SUBJECT_PIECES, max_size=6))
    def test_near_prefixes_and_suffixes(self, pieces: list[str]) -> None:
        self.check(" ".join(pieces).strip(" \t").encode("utf-8"))

    def test_plain(self) -> None:
        self.check(b"Quarterly figures")
        self.check(b"x")


class SentDate(SynchronousTestCase):
    """RFC 5256 2.2: the Date field in UTC, else the internal date."""

    def test_zones_applied(self) -> None:
        self.assertEqual(parse_date_time(b"Mon, 7 Feb 1994 21:52:25 -0800"), 760686745)
        self.assertEqual(parse_date_time(b"8 Feb 1994 05:52:25 +0000"), 760686745)
        self.assertEqual(parse_date_time(b"Tue, 08 Feb 94 05:52:25 GMT"), 760686745)
        self.assertEqual(parse_date_time(b"Mon, 7 Feb 1994 21:52:25 PST"), 760686745)

    def test_unreadable(self) -> None:
        for bad in (b"", b"yesterday", b"31 Feb 2020 10:00:00 +0000", b"1 Jan 2001 00:01+0000"):
            self.assertIsNone(parse_date_time(bad), bad)

    def test_internal_date_without_a_date(self) -> None:
        dated, undated = messages([mail("a", day=2), mail("b", day=None)], internaldate=7)
        self.assertEqual(dated.sent, parse_date_time(b"2 Mar 2024 10:00:00 +0000"))
        self.assertEqual(undated.sent, 7)


# Each part of a Date value: the usual form first, then what is near it
_DATE_CHOICES = (
    ["Mon,", "mon,", "Xyzzy,", ",", "Mon", "", "M0n,", "Mon ,"],
    ["7", "07", "31", "29", "0", "123", "a", "\u0661"],
    ["Feb", "feb", "FEB", "Fe", "February", "Feb.", "F3b", "Nov", "Jux"],
    ["1994", "2000", "2100", "94", "0994", "12345", "19x4"],
    ["21:52:25", "00:00:00", "24:00:00", "23:59:60", "23:60:00", "23:59:61", "1:02:03",
     "21:5a:25", "21.52.25", "21:52.25", "21:52", "+1:52:25", "21:52:25+0000"],
    ["-0800", "+0000", "+0530", "+2400", "+0001", "-9959", "GMT", "+000", "", "+0000x"],
    ["", " (UTC)", " x", "(UTC)", "  "],
    [" ", "  ", "\t", " \x0b"],
)  # fmt: skip
_DATE_PARTS = st.tuples(*(st.sampled_from(choices) for choices in _DATE_CHOICES))


def _date_value(parts: tuple[str, ...] | list[str]) -> bytes:
    *fields, extra, blank = parts
    return (blank.join(f for f in fields if f) + extra).encode("utf-8")


class DateFastPath(SynchronousTestCase):
    """parse_date_time's split-at-blanks path gives the regular expression's answer."""

    def check(self, value: bytes) -> None:
        expected = sort_module._parse_date_time(value) if value else None
        # twice: the first call leaves the date in the cache the fast path reads
        self.assertEqual(parse_date_time(value), expected, value)
        self.assertEqual(parse_date_time(value), expected, value)

    def test_one_part_off_the_usual_form(self) -> None:
        for i, choices in enumerate(_DATE_CHOICES):
            for choice in choices:
                parts = [c[0] for c in _DATE_CHOICES]
                parts[i] = choice
                self.check(_date_value(parts))

    @settings(max_examples=400, deadline=None)
    @given(_DATE_PARTS)
    def test_near_the_usual_form(self, parts: tuple[str, ...]) -> None:
        self.check(_date_value(parts))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=60))
    def test_any_octets(self, value: bytes) -> None:
        self.check(value)

    def test_fast_path_taken(self) -> None:
        value = b"Tue, 8 Feb 1994 05:52:25 +0000"
        parse_date_time(value)
        calls: list[bytes] = []
        self.patch(sort_module, "_parse_date_time", calls.append)
        self.assertEqual(parse_date_time(value), 760686745)
        self.assertEqual(calls, [])


class MessageIds(SynchronousTestCase):
    def test_ids_without_garbage(self) -> None:
        self.assertEqual(message_ids(b"<a@x> (see <c@y>)\r\n <b@x> junk <nope>"), [b"a@x", b"b@x"])

    def test_message_id_as_the_msg_id_syntax_finds_it(self) -> None:
        # The usual "<a@b>" is taken without the regular expression: odd ones still go to it.
        for value, want in [
            ("<a@b.example>", b"a@b.example"),
            ("<a.b@c@d>", b"a.b@c@d"),  # the domain side may hold "@"
            ("< a@b >", b"a@b"),
            ("<a @b>", None),
            ("<@b>", None),
            ("<a@>", None),
            ("<a(c)@b>", None),  # a comment is removed: "<a @b>"
            ("<a@b(c)>", b"a@b"),
            ("<a<b@c>", b"b@c"),
            ("<a@b>>", b"a@b"),
            ("<a@b> <c@d>", b"a@b"),
            ("a@b", None),
        ]:
            with self.subTest(value):
                (m,) = messages([mail("x", extra=f"Message-ID: {value}\r\n")])
                self.assertEqual(m.message_id, want)
                self.assertEqual(m.message_id, (message_ids(value.encode()) or [None])[0])

    def test_references_or_first_in_reply_to(self) -> None:
        m1, m2, m3 = messages(
            [
                mail("x", "1@x", ["r1@x", "r2@x"], irt="<i@x>"),
                mail("x", "2@x", irt="<i@x> <j@x>"),
                mail("x", "3@x", extra="References: <r1@x>\r\n\t<r2@x>\r\n"),
            ]
        )
        self.assertEqual(m1.references, (b"r1@x", b"r2@x"))
        self.assertEqual(m2.references, (b"i@x",))
        self.assertEqual(m3.references, (b"r1@x", b"r2@x"))  # a folded field


_HEADER_LINES = st.sampled_from(
    [b"References: <a@x> <b@x>", b"references:<c@x>", b"REFERENCES : (c) <d@x>",
     b"In-Reply-To: <e@x> <f@x>", b"in-reply-to:<g@x>", b"In-Reply-To: garbage",
     b"References: garbage", b"X-References: <h@x>", b"Subject: references in-reply-to",
     b" references: <i@x>", b"\tin-reply-to: <j@x>", b"References-Foo: <k@x>",
     b"From: a@x", b"Message-ID: <l@x>", b"References:", b"In-Reply-To:"]
)  # fmt: skip


class ReferencesFastPath(SynchronousTestCase):
    """SortMessage.references looks at the values only when a References or In-Reply-To
    field may be there: the answer is the full look's (a field first, folded lines, names
    in values, other fields of similar names, CRLF or LF, a header cut where it is kept)."""

    def check(self, header: bytes) -> None:
        h = mime.MessageHeader.from_bytes(
            mime.parse_header(io.BytesIO(header + b"body\r\n")).to_bytes()
        )
        self.assertEqual(sort_module._references(h), sort_module._references_full(h), header)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(_HEADER_LINES, max_size=6), st.sampled_from([b"\r\n", b"\n"]))
    def test_same_as_the_full_look(self, lines: list[bytes], eol: bytes) -> None:
        self.check(b"".join(line + eol for line in lines) + eol)

    def test_beyond_the_kept_block(self) -> None:
        filler = b"X-Filler: " + b"y" * 1000 + b"\r\n"
        count = mime.MAX_KEPT_HEADER // len(filler) + 2
        header = filler * count + b"In-Reply-To: <late@x>\r\n\r\n"
        h = mime.MessageHeader.from_bytes(
            mime.parse_header(io.BytesIO(header + b"body\r\n")).to_bytes()
        )
        self.assertEqual(sort_module._references(h), (b"late@x",))


class SortOrder(SynchronousTestCase):
    DATAS = [
        mail("Re: banana", frm="Zed <zed@example.net>", to="b@x", day=3),
        mail("apple", frm="amy@example.net", to="Carol <c@x>", day=1),
        mail("[fwd: Banana]", frm="Bob <BOB@example.net>", to="a@x", day=3),
        mail("cherry", frm="=?utf-8?q?=C3=81da?= <ada@example.net>", to="", day=2),
    ]

    def test_each_criterion(self) -> None:
        d = self.DATAS
        self.assertEqual(sorted_seqs(d, "ARRIVAL"), [1, 2, 3, 4])  # all equal: mailbox order
        self.assertEqual(sorted_seqs(d, "DATE"), [2, 4, 1, 3])
        self.assertEqual(sorted_seqs(d, "SUBJECT"), [2, 1, 3, 4])
        self.assertEqual(sorted_seqs(d, "FROM"), [4, 2, 3, 1])  # local parts, any case
        self.assertEqual(sorted_seqs(d, "TO"), [4, 3, 1, 2])  # missing is empty, first
        # decomposed "A" + U+0301 sorts after "AMY@..." and before "BOB", as in Dovecot
        self.assertEqual(sorted_seqs(d, "DISPLAYFROM"), [2, 4, 3, 1])
        self.assertEqual(sorted_seqs(d, "DISPLAYTO"), [4, 3, 1, 2])
        self.assertEqual([len(x) for x in d], [100, 97, 103, 110])
        self.assertEqual(sorted_seqs(d, "SIZE"), [2, 1, 3, 4])

    def test_reverse_and_ties_in_mailbox_order(self) -> None:
        d = self.DATAS
        # REVERSE applies to its criterion only; equal messages stay in mailbox order
        self.assertEqual(sorted_seqs(d, "REVERSE DATE"), [1, 3, 4, 2])
        self.assertEqual(sorted_seqs(d, "SUBJECT REVERSE FROM"), [2, 1, 3, 4])
        self.assertEqual(sorted_seqs(d, "REVERSE SUBJECT DATE"), [4, 1, 3, 2])

    def test_bad_criteria(self) -> None:
        for bad in ([], [Atom("REVERSE")], [Atom("DATE"), Atom("WHEN")], [b"DATE"]):
            self.assertRaises(SortError, parse_program, bad)
        self.assertRaises(SortError, parse_program, Atom("DATE"))


class ThreadReferences(SynchronousTestCase):
    """RFC 5256 4 REFERENCES on CRAFTED (each message's comment says what it tests)."""

    def test_crafted(self) -> None:
        roots = thread_references(messages(CRAFTED))
        self.assertEqual(render(roots, lambda m: m.seq), CRAFTED_REFERENCES)

    def test_uids(self) -> None:
        ms = messages(CRAFTED[:3])
        for m in ms:
            m.uid = m.seq * 10
        self.assertEqual(render(thread_references(ms), lambda m: m.uid), b"(10 20 30)")

    def test_only_the_messages_given(self) -> None:
        # without 2 the chain 1 <- 2 <- 3 keeps 3 under 1 (its References name both)
        ms = [m for m in messages(CRAFTED[:3]) if m.seq != 2]
        self.assertEqual(render(thread_references(ms), lambda m: m.seq), b"(1 3)")

    def test_truncated_references_replace_a_guessed_parent(self) -> None:
        # 2 names only 1; 3 says 2's parent is 9: the last References wins (step 1 B)
        datas = [
            mail("t", "1@x", day=1),
            mail("t", "3@x", ["9@x", "2@x"], day=3),
            mail("t", "2@x", ["1@x"], day=2),
        ]
        self.assertEqual(render(thread_references(messages(datas)), lambda m: m.seq), b"(1 3 2)")

    def test_a_long_chain_is_not_recursion(self) -> None:
        n = 3000
        datas = [mail("x", f"{i}@x", [f"{j}@x" for j in range(max(0, i - 20), i)], day=1)
                 for i in range(n)]  # fmt: skip
        out = render(thread_references(messages(datas)), lambda m: m.seq)
        self.assertEqual(out, b"(" + b" ".join(b"%d" % i for i in range(1, n + 1)) + b")")

    def test_nothing(self) -> None:
        self.assertEqual(render(thread_references([]), lambda m: m.seq), b"")


_SUBJECTS = st.sampled_from(
    [None, "", " ", "a", "A", "Re: a", "RE: a", "Fwd: a", "a (fwd)", "[fwd: a]", "[x] a", "b",
     "Re: b", "Re: Re: b", "=?UTF-8?Q?Re=3A_=C3=A9?=", "\u00e9", "Re: \u00c9"]
)  # fmt: skip
_UNREFERENCED = st.lists(
    st.tuples(
        _SUBJECTS,
        st.sampled_from([None, "1@x", "2@x", "3@x", "4@x"]),  # duplicates too
        st.sampled_from([None, 1, 2, 3]),  # equal dates: the sequence number decides
    ),
    max_size=14,
)


class ThreadWithoutReferences(SynchronousTestCase):
    """THREAD REFERENCES over messages none of which has references takes a shorter path
    (no Node for a message alone): its answer is the full algorithm's."""

    @settings(max_examples=300, deadline=None)
    @given(_UNREFERENCED)
    def test_same_as_the_full_algorithm(self, specs: list) -> None:
        ms = messages([mail(subject, mid, day=day) for subject, mid, day in specs])
        number = lambda m: m.seq  # noqa: E731
        full = thread_module._thread_references(ms)
        expected = render(full, number)
        thread_module.release(full)
        self.assertEqual(render(thread_references(ms), number), expected)

    def test_messages_alone_need_no_node(self) -> None:
        ms = messages([mail("x", "1@x", day=2), mail("y", "1@x", day=1), mail("Re: x", day=3)])
        roots = thread_references(ms)
        self.assertEqual(render(roots, lambda m: m.seq), b"(2)(1 3)")
        self.assertIs(roots[0], ms[1])  # a message alone is its own root


class ThreadOrderedSubject(SynchronousTestCase):
    def test_crafted(self) -> None:
        roots = thread_orderedsubject(messages(CRAFTED))
        self.assertEqual(render(roots, lambda m: m.seq), CRAFTED_ORDEREDSUBJECT)


class KeysKeptUntracked(SynchronousTestCase):
    """The keys SORT and THREAD keep on a header are plain values: its memo dict stays
    untracked by the garbage collector (a full collection walks every tracked object of the
    process; 10,000 kept lists or dicts made THREAD of the benchmark pay for one)."""

    def test_memo_untracked(self) -> None:
        ms = messages(
            [
                mail("Re: Status", "1@x", ["0@x", "00@x"], extra="Cc: c@x\r\n"),
                mail("=?utf-8?q?caf=C3=A9?=", None, irt="<1@x>", day=None),
            ]
        )
        thread_keys([m.header for m in ms], references=True)  # as THREAD REFERENCES does
        for criteria in ("DATE", "SUBJECT", "FROM", "DISPLAYTO", "ARRIVAL", "SIZE", "CC"):
            sort_messages(ms, program(criteria))
        render(thread_references(ms), lambda m: m.seq)
        render(thread_orderedsubject(ms), lambda m: m.seq)
        for m in ms:
            # sent date, subject and reply, Message-ID, references, FROM, DISPLAYTO, CC
            self.assertEqual(len(m.header.memo), 8, m.header.memo)
            self.assertFalse(gc.is_tracked(m.header.memo), m.header.memo)


class ColumnsMakeNoObjectPerMessage(SynchronousTestCase):
    """SORT reads each criterion as a column of plain values (sort.key_column) and sorts
    positions: nothing per message that the garbage collector tracks, so a SORT of a big
    mailbox sets off no collection and adds nothing to the next full one (10,000
    SortMessages per command did)."""

    def test_no_tracked_object_per_message(self) -> None:
        datas = [
            mail(f"Re: item {n % 7}", f"{n}@x", extra="Cc: Carol <c@x>\r\n", day=1 + n % 28)
            for n in range(600)
        ]
        ms = messages(datas)
        uids = [m.uid for m in ms]
        headers = [m.header for m in ms]
        infos = {m.uid: m for m in ms}
        for h in headers:
            h.envelope_field(1)  # (the header's own list of found fields, as SEARCH left it)
        criteria = sorted(sort_module._CRITERIA)
        for first in (True, False):  # keys computed, then read from the memo
            gc.collect()
            gc.disable()
            try:
                before = gc.get_count()[0]
                columns = [(key_column(c, uids, headers, infos), False) for c in criteria]
                order = sort_order(columns, len(uids))
                made = gc.get_count()[0] - before
            finally:
                gc.enable()
            # the columns, and the date parser's cache of 28 days: not one per message
            self.assertLess(made, 100, (first, made))
            self.assertEqual(sorted(order), list(range(600)))
            for values, _ in columns:
                self.assertFalse(any(map(gc.is_tracked, values)), values[:3])


# -- the commands --------------------------------------------------------------------------------


class SortDialogs(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        for data in SortOrder.DATAS:
            self.deliver(data)

    def test_capabilities(self) -> None:
        caps = self.login().command("CAPABILITY")[0].split()
        for cap in ("SORT", "SORT=DISPLAY", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES"):
            self.assertIn(cap, caps)

    def test_sort(self) -> None:
        client = self.login()
        client.run("""
            C: a1 SORT (DATE) UTF-8 ALL
            S: * SORT 2 4 1 3
            S: a1 OK SORT completed
            C: a2 SORT (REVERSE DATE SUBJECT) US-ASCII ALL
            S: * SORT 1 3 4 2
            S: a2 OK SORT completed
            C: a3 SORT (SUBJECT) UTF-8 NOT SUBJECT apple
            S: * SORT 1 3 4
            S: a3 OK SORT completed
            C: a4 SORT (FROM) UTF-8 SUBJECT nothing-like-this
            S: * SORT
            S: a4 OK SORT completed
        """)

    def test_uid_sort(self) -> None:
        client = self.login()
        client.run("""
            C: a1 STORE 1 +FLAGS (\\Deleted)
            S: * 1 FETCH (FLAGS (\\Deleted \\Recent))
            S: a1 OK STORE completed
            C: a2 EXPUNGE
            S: * 1 EXPUNGE
            S: a2 OK EXPUNGE completed
            C: a3 UID SORT (DATE) UTF-8 ALL
            S: * SORT 2 4 3
            S: a3 OK SORT completed
            C: a4 SORT (DATE) UTF-8 ALL
            S: * SORT 1 3 2
            S: a4 OK SORT completed
        """)

    def test_charset_and_bad_arguments(self) -> None:
        client = self.login()
        client.run("""
            C: a1 SORT (DATE) ISO-8859-1 ALL
            S: a1 NO [BADCHARSET (US-ASCII UTF-8)] unsupported charset 'ISO-8859-1'
            C: a2 SORT (WHEN) UTF-8 ALL
            S: a2 BAD unknown sort criterion 'WHEN'
            C: a3 SORT DATE UTF-8 ALL
            S: a3 BAD SORT needs a parenthesised list of sort criteria
            C: a4 SORT (DATE) UTF-8
            S: a4 BAD SORT needs sort criteria, a charset and search keys
            C: a5 SORT (DATE) UTF-8 NOSUCHKEY
            S: a5 BAD unknown search key 'NOSUCHKEY'
            C: a6 THREAD SIDEWAYS UTF-8 ALL
            S: a6 BAD unknown threading algorithm SIDEWAYS
            C: a7 UID THREAD REFERENCES KOI8-R ALL
            S: a7 NO [BADCHARSET (US-ASCII UTF-8)] unsupported charset 'KOI8-R'
        """)

    def test_not_before_select(self) -> None:
        client = self.login(select=None)
        client.run("""
            C: a1 SORT (DATE) UTF-8 ALL
            S: a1 BAD SORT not allowed now (auth)
        """)

    def test_modseq(self) -> None:
        client = self.login()
        client.run("""
            C: a1 SORT (SUBJECT) UTF-8 MODSEQ 1
            S: * OK [HIGHESTMODSEQ ...
            S: * SORT 2 1 3 4 (MODSEQ ...
            S: a1 OK SORT completed
        """)

    def test_no_expunge_reported_after_sort(self) -> None:
        # RFC 3501 7.4.1: sequence numbers were answered, so an expunge waits (UID SORT may)
        client = self.login()
        other = self.login()
        other.command("STORE 4 +FLAGS (\\Deleted)")
        other.command("EXPUNGE")
        # Not told yet, the client still counts message 4, and its data is still served
        # (RFC 2180 4.1.1): SORT may find it.
        client.run("""
            C: a1 SORT (ARRIVAL) UTF-8 ALL
            S: * SORT 1 2 3 4
            S: a1 OK SORT completed
            C: a2 UID SORT (ARRIVAL) UTF-8 ALL
            S: * 4 EXPUNGE
            S: * SORT 1 2 3
            S: a2 OK SORT completed
        """)

    def test_a_message_gone_meanwhile_is_left_out(self) -> None:
        # Its header cannot be read (expunged by another process between the look and the
        # read, here simulated): left out, as SEARCH leaves it out; the others keep their
        # sequence numbers.
        real = mime.read_header

        def gone_for_apple(path: str) -> mime.MessageHeader:
            h = real(path)
            if b"apple" in h.header:
                raise FileNotFoundError(path)
            return h

        self.patch(mime, "read_header", gone_for_apple)
        client = self.login()
        client.run("""
            C: a1 SORT (DATE) UTF-8 ALL
            S: * SORT 4 1 3
            S: a1 OK SORT completed
            C: a2 UID SORT (REVERSE DATE) UTF-8 ALL
            S: * SORT 1 3 4
            S: a2 OK SORT completed
        """)


class ThreadDialogs(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        for data in CRAFTED:
            self.deliver(data)

    def test_references(self) -> None:
        client = self.login()
        client.run(f"""
            C: a1 THREAD REFERENCES UTF-8 ALL
            S: * THREAD {CRAFTED_REFERENCES.decode()}
            S: a1 OK THREAD completed
            C: a2 THREAD ORDEREDSUBJECT UTF-8 ALL
            S: * THREAD {CRAFTED_ORDEREDSUBJECT.decode()}
            S: a2 OK THREAD completed
            C: a3 THREAD REFERENCES UTF-8 SUBJECT meeting
            S: * THREAD (1 (2 3 6)(11))
            S: a3 OK THREAD completed
            C: a4 THREAD REFERENCES UTF-8 SUBJECT nothing-like-this
            S: * THREAD
            S: a4 OK THREAD completed
        """)

    def test_uid_thread(self) -> None:
        client = self.login()
        client.command("STORE 1 +FLAGS (\\Deleted)")
        client.command("EXPUNGE")
        # without 1, 2 and 11 share the subject and 2 is the older: 11 goes under it
        client.run("""
            C: a1 UID THREAD REFERENCES UTF-8 UID 1:6
            S: * THREAD (2 3 6)((4)(5))
            S: a1 OK THREAD completed
            C: a2 THREAD REFERENCES UTF-8 1:5
            S: * THREAD (1 2 5)((3)(4))
            S: a2 OK THREAD completed
        """)


class ThreadPausesNoAwait(IMAPTestCase):
    """THREAD pauses the cyclic collector only for its one synchronous step (SortMessages,
    threading, rendering, release()), never across an await: the switch is the process's, so
    every other session would run without it while THREAD waits for its next slice. The slices
    before it make no object per message (thread_keys: plain values in the memos)."""

    def setUp(self) -> None:
        super().setUp()
        from mailhub.imap import search_command, sort_command

        # a turn given back after every message: THREAD suspended as often as it can be
        self.patch(search_command, "SLICE_SECONDS", 0)
        self.patch(sort_command, "_PIECE", 1)
        self.suspended: list[bool] = []  # gc.isenabled() at each suspension of THREAD
        self.made: list[bool] = []  # gc.isenabled() as each SortMessage is made
        self.message_ids: list[bool] = []  # whether its Message-ID was memoised by then
        real, suspended, made = sort_command.thread_command, self.suspended, self.made

        @types.coroutine
        def watched(coro: Any) -> Any:
            # drive THREAD's coroutine, noting the collector's switch whenever it suspends
            send: Any = None
            error: BaseException | None = None
            while True:
                try:
                    waiting = coro.throw(error) if error is not None else coro.send(send)
                except StopIteration as e:
                    return e.value
                suspended.append(gc.isenabled())
                error = None
                try:
                    send = yield waiting
                except BaseException as e:  # (passed on to THREAD)
                    send, error = None, e

        async def thread_command(*args: Any, **kwargs: Any) -> Any:
            return await watched(real(*args, **kwargs))

        def noting(*args: Any) -> SortMessage:
            made.append(gc.isenabled())
            # REFERENCES with references reads every Message-ID: found in the slices before
            self.message_ids.append(sort_module._MESSAGE_ID_KEY in args[4].memo)
            return SortMessage(*args)

        self.patch(sort_command, "thread_command", thread_command)
        self.patch(
            sort_command, "UID_COMMANDS", {**sort_command.UID_COMMANDS, "THREAD": thread_command}
        )
        self.patch(sort_command, "SortMessage", noting)

    def thread(self, client: Any, command: str) -> bytes:
        client.send(f"a1 {command}\r\n")
        for _ in range(10_000):
            self.clock.advance(0)
        lines = client.lines()
        self.assertEqual(lines[-1], "a1 OK THREAD completed")
        return lines[0].encode()

    def test_collector_on_whenever_suspended(self) -> None:
        for data in CRAFTED:
            self.deliver(data)
        client = self.login()
        for command, expected in [
            ("THREAD REFERENCES UTF-8 ALL", CRAFTED_REFERENCES),
            ("UID THREAD ORDEREDSUBJECT UTF-8 ALL", CRAFTED_ORDEREDSUBJECT),
        ]:
            del self.suspended[:], self.made[:], self.message_ids[:]
            self.assertEqual(self.thread(client, command), b"* THREAD " + expected)
            # suspended at every slice of the search and of the keys, on each time
            self.assertGreaterEqual(len(self.suspended), 2 * len(CRAFTED))
            self.assertNotIn(False, self.suspended)
            # a SortMessage per message, each in the paused synchronous step
            self.assertEqual(self.made, [False] * len(CRAFTED))
            self.assertEqual(self.message_ids, [True] * len(CRAFTED))
        self.assertTrue(gc.isenabled())


class SortFromTheCache(IMAPTestCase):
    """The keys come from the cached header entry: a second SORT or THREAD reads no file."""

    def test_second_sort_reads_nothing(self) -> None:
        for data in CRAFTED:
            self.deliver(data)
        reads: list[str] = []
        real = mime.read_header

        def counting(path: str) -> mime.MessageHeader:
            reads.append(path)
            return real(path)

        self.patch(mime, "read_header", counting)
        client = self.login()
        client.command("SORT (DATE SUBJECT FROM) UTF-8 ALL")
        self.assertEqual(len(reads), len(CRAFTED))
        client.command("SORT (REVERSE CC DISPLAYTO) UTF-8 ALL")
        client.command("THREAD REFERENCES UTF-8 ALL")
        client.command("UID THREAD ORDEREDSUBJECT UTF-8 ALL")
        self.assertEqual(len(reads), len(CRAFTED))


# -- the same answers as Dovecot -------------------------------------------------------------------


@requires(dovecot_imap())
class AgreesWithDovecot(SynchronousTestCase):
    """SORT by every criterion and THREAD by both algorithms over Python's email test corpus
    and CRAFTED give Dovecot's answers. The internal dates are the same second (Dovecot's is
    the file's mtime, set to it; ours is given): messages without a readable Date sort by it."""

    PROGRAMS = (
        "DATE", "SIZE", "SUBJECT", "FROM", "TO", "CC", "DISPLAYFROM", "DISPLAYTO",
        "REVERSE DATE", "REVERSE SUBJECT", "SUBJECT DATE", "REVERSE FROM SIZE",
    )  # fmt: skip

    def test_same_order(self) -> None:
        datas = list(CRAFTED)
        if PYTHON_EMAIL_DATA.is_dir():
            for path in sorted(PYTHON_EMAIL_DATA.glob("msg_*.txt")):
                datas.append(path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        base = Path(tempfile.mkdtemp(prefix="mh-dv-"))
        self.addCleanup(shutil.rmtree, base, True)
        base.chmod(0o755)
        commands = [f"SORT ({p}) UTF-8 ALL" for p in self.PROGRAMS]
        commands += ["THREAD REFERENCES UTF-8 ALL", "THREAD ORDEREDSUBJECT UTF-8 ALL"]
        now = int(time.time())
        out = _ask_dovecot(base, datas, commands, internaldate=now)
        sorts = re.findall(rb"\* SORT([ 0-9]*)\r\n", out)
        threads = re.findall(rb"\* THREAD ?(.*)\r\n", out)
        self.assertEqual((len(sorts), len(threads)), (len(self.PROGRAMS), 2), out[-300:])
        mine = messages(datas, internaldate=now)
        for criteria, theirs in zip(self.PROGRAMS, sorts, strict=True):
            got = b"".join(b" %d" % m.seq for m in sort_messages(mine, program(criteria)))
            self.assertEqual(got, theirs, criteria)
        for algorithm, theirs in zip(
            (thread_references, thread_orderedsubject), threads, strict=True
        ):
            self.assertEqual(render(algorithm(mine), lambda m: m.seq), theirs, algorithm)

    def test_threads_without_references(self) -> None:
        # THREAD REFERENCES's path for messages without references (no Node for a message
        # alone): subjects shared or not, replies and forwards, equal and missing dates
        subjects = ["Status", "Re: Status", "Fwd: Status", "status (fwd)", "[fwd: Status]",
                    "Lunch", "Re: Lunch", "Other", "", "=?UTF-8?Q?Re=3A_=C3=A9t=C3=A9?=",
                    "\u00e9t\u00e9", "[list] Status"]  # fmt: skip
        datas = [
            mail(subjects[(i * 7) % len(subjects)], f"{i % 9}@x", day=(i * 5) % 4 or None)
            for i in range(40)
        ]
        base = Path(tempfile.mkdtemp(prefix="mh-dv-"))
        self.addCleanup(shutil.rmtree, base, True)
        base.chmod(0o755)
        now = int(time.time())
        out = _ask_dovecot(base, datas, ["THREAD REFERENCES UTF-8 ALL"], internaldate=now)
        [theirs] = re.findall(rb"\* THREAD ?(.*)\r\n", out)
        mine = messages(datas, internaldate=now)
        self.assertEqual(render(thread_references(mine), lambda m: m.seq), theirs)
