"""The search syntax (mailhub.web.search)."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.trial.unittest import SynchronousTestCase

from mailhub.web.search import QueryError, Term, matches, parse, parse_date


@dataclass
class Message:
    sender: str = "shop <orders@shop.example>"
    to: str = "alice <alice@example.com> alice@example.com"
    cc: str = ""
    subject: str = "your order 42 has shipped"
    mailbox: str = "alice@example.com"
    folder: str = "INBOX"
    received: float = parse_date("2026-03-10T12:00:00")
    has_attachment: bool = False
    seen: bool = False
    flagged: bool = False
    text: str = "tracking number zx9  on its way"
    reads: int = 0
    tags: frozenset[str] = frozenset()

    def body(self) -> str:  # as the feed keeps it: lower case, one space between words
        self.reads += 1
        return " ".join(self.text.lower().split())


def find(query: str, message: Message | None = None) -> bool:
    return matches(parse(query), message or Message())


class Parse(SynchronousTestCase):
    def test_terms_keys_quotes_and_negation(self) -> None:
        self.assertEqual(
            parse('from:Shop subject:"Order 42" -is:read invoice'),
            (
                Term("from", "shop"),
                Term("subject", "order 42"),
                Term("is", "read", negated=True),
                Term("", "invoice"),
            ),
        )

    def test_unknown_key_is_free_text(self) -> None:
        self.assertEqual(parse("http://x"), (Term("", "http://x"),))

    def test_mistakes_are_query_errors(self) -> None:
        for query in ('subject:"open', "from:", "has:pictures", "is:bold", "before:yesterday"):
            with self.assertRaises(QueryError, msg=query):
                parse(query)
        with self.assertRaises(QueryError):
            parse("x" * 3000)

    def test_dates(self) -> None:
        self.assertEqual(parse_date("1970-01-02"), 86400.0)
        self.assertEqual(parse_date("1970-01-01T01:00+01:00"), 0.0)
        self.assertEqual(parse_date("1234.5"), 1234.5)


class Match(SynchronousTestCase):
    def test_tag_is_exact(self) -> None:
        tagged = Message(tags=frozenset({"billing", "invoice"}))
        self.assertTrue(find("tag:billing", tagged))
        self.assertTrue(find("tag:BILLING -tag:urgent", tagged))
        self.assertFalse(find("tag:bill", tagged))  # not a substring match
        self.assertFalse(find("tag:billing"))

    def test_fields(self) -> None:
        self.assertTrue(find("from:orders@shop"))
        self.assertFalse(find("from:alice"))
        self.assertTrue(find("to:alice@example.com"))
        self.assertTrue(find("subject:shipped"))
        self.assertTrue(find("mailbox:alice@example.com"))
        self.assertFalse(find("mailbox:bob@example.com"))
        self.assertTrue(find("folder:inbox"))
        self.assertTrue(find("is:unread"))
        self.assertFalse(find("is:read"))
        self.assertFalse(find("has:attachment"))
        self.assertTrue(find("has:attachment", Message(has_attachment=True)))
        self.assertTrue(find("is:flagged", Message(flagged=True)))

    def test_dates_compare_with_arrival(self) -> None:
        self.assertTrue(find("after:2026-03-10 before:2026-03-11"))
        self.assertFalse(find("before:2026-03-10"))
        self.assertFalse(find("after:2026-03-10T12:00:01"))

    def test_terms_are_anded_and_negation_inverts(self) -> None:
        self.assertTrue(find("from:shop subject:order"))
        self.assertFalse(find("from:shop subject:invoice"))
        self.assertFalse(find("-from:shop"))
        self.assertTrue(find("-subject:invoice"))

    def test_body_is_read_only_when_headers_do_not_match(self) -> None:
        m = Message()
        self.assertTrue(find("shipped", m))
        self.assertEqual(m.reads, 0)
        self.assertTrue(find("zx9", m))
        self.assertEqual(m.reads, 1)
        self.assertFalse(find("nowhere", m))
        self.assertTrue(find('"ZX9   On"', m))  # a quoted phrase: spacing as in the kept text
