"""The search syntax of the page and the API (Mailpit's, where it has one).

    from:alice  to:bob@example.com  subject:"weekly report"  has:attachment  is:unread
    before:2026-01-31  after:2026-01-01T12:00  mailbox:bob@example.com  invoice  -draft
    tag:billing

Terms are ANDed; ``-term`` negates one. Values compare case-insensitively as substrings; dates
are ISO 8601 (a day means its midnight, UTC unless an offset is given) against the time the
message arrived; ``tag:`` is exact (mailhub.web.tags). Free text looks in the subject, the
addresses and the body text (its first 64 K characters: mailhub.web.scan.SEARCH_TEXT).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

KEYS = (
    *("from", "to", "cc", "subject", "has", "is", "before", "after", "mailbox", "folder"),
    "tag",
)
MAX_QUERY = 2000


class QueryError(ValueError):
    """A query the server cannot understand: the API answers 400 with this text."""


@dataclass(frozen=True)
class Term:
    key: str  # one of KEYS, or "" for free text
    value: str
    negated: bool = False


class Candidate(Protocol):
    """What a term is matched against (lower case text). Implementations compute the parsed
    fields lazily: mailbox, flags and dates need no parsing, ``body()`` reads the message."""

    # Read-only properties: an implementation may compute them (a plain attribute does too).
    @property
    def sender(self) -> str: ...

    @property
    def to(self) -> str: ...  # To and the envelope recipient (the mailbox)

    @property
    def cc(self) -> str: ...

    @property
    def subject(self) -> str: ...

    @property
    def mailbox(self) -> str: ...

    @property
    def folder(self) -> str: ...

    @property
    def received(self) -> float: ...

    @property
    def has_attachment(self) -> bool: ...

    @property
    def seen(self) -> bool: ...

    @property
    def flagged(self) -> bool: ...

    def body(self) -> str: ...  # the body text, lower case, whitespace runs made one space

    @property
    def tags(self) -> frozenset[str]: ...  # lower case (mailhub.web.tags)


def parse(query: str) -> tuple[Term, ...]:
    if len(query) > MAX_QUERY:
        raise QueryError(f"search query longer than {MAX_QUERY} characters")
    try:
        words = shlex.split(query)
    except ValueError as e:
        raise QueryError(f"search query: {e}") from None
    terms = []
    for word in words:
        negated = word.startswith("-") and len(word) > 1
        word = word[1:] if negated else word
        key, colon, value = word.partition(":")
        key = key.lower()
        if not colon or key not in KEYS:
            # free text: spacing as the body text is kept (one space between words)
            terms.append(Term("", " ".join(word.lower().split()), negated))
            continue
        if not value:
            raise QueryError(f"search term {key}: needs a value")
        value = value.lower()
        if key == "has" and value not in ("attachment", "attachments"):
            raise QueryError(f"has:{value}: only has:attachment is known")
        if key == "is" and value not in ("unread", "read", "seen", "unseen", "flagged"):
            raise QueryError(f"is:{value}: use is:unread, is:read or is:flagged")
        if key in ("before", "after"):
            value = str(parse_date(value))
        terms.append(Term(key, value, negated))
    return tuple(terms)


def parse_date(text: str) -> float:
    """ISO 8601 date or date-time (naive means UTC), or seconds since the epoch."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.upper() if "t" in text else text)
    except ValueError:
        raise QueryError(
            f"{text!r} is not a date: use 2026-01-31, 2026-01-31T12:00 or 2026-01-31T12:00+01:00"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _holds(term: Term, c: Candidate) -> bool:
    key, value = term.key, term.value
    if key == "":
        return (
            value in c.subject
            or value in c.sender
            or value in c.to
            or value in c.cc
            or value in c.body()
        )
    if key == "from":
        return value in c.sender
    if key == "to":
        return value in c.to or value in c.cc
    if key == "cc":
        return value in c.cc
    if key == "subject":
        return value in c.subject
    if key == "mailbox":
        return value == c.mailbox or ("@" not in value and value in c.mailbox)
    if key == "folder":
        return value == c.folder.lower()
    if key == "has":
        return c.has_attachment
    if key == "is":
        if value == "flagged":
            return c.flagged
        return c.seen if value in ("read", "seen") else not c.seen
    if key == "tag":
        return value in c.tags
    if key == "before":
        return c.received < float(value)
    if key == "after":
        return c.received >= float(value)
    raise AssertionError(key)


def matches(terms: tuple[Term, ...], candidate: Candidate) -> bool:
    return all(_holds(t, candidate) != t.negated for t in terms)
