"""Tags on caught mail (issue 15): from plus-addressing, set by hand, and from rules.

Where each kind lives:

* **manual** tags are IMAP keywords of the message in its Maildir (the store's index, as any
  keyword an IMAP client sets): they survive restarts, other processes see them, and IMAP
  clients show them (Thunderbird as tags). A keyword an IMAP client sets is a tag too, unless it
  is a system-like one: ``$``-prefixed (``$Forwarded``, ``$MDNSent``, Thunderbird's
  ``$label1``) or spam-filter state (``Junk``, ``NonJunk``).
* **address** tags (RFC 5233 subaddress: mail to ``user+invoice@`` in mailbox ``user@`` is
  tagged ``invoice``) and **rule** tags (``[[web.tag]] match = "subject:invoice"``, the API's
  search syntax) are *computed* each time they are asked for, never stored: a rule changed in
  the config applies to all mail at once, delivery writes nothing more, and a derived tag cannot
  go stale. So IMAP clients do not see them, and they cannot be removed by hand (the API says
  why). The subaddress is read from the To and Cc fields and from our own ``Received:`` field's
  ``for <...>`` (written for single-recipient mail: a Bcc to ``user+tag@`` is found too).

A tag is 1-64 characters of ``a-z 0-9 . _ -``, starting with a letter or digit, compared in
lower case; it is an IMAP atom as it stands (RFC 3501 9, flag-keyword).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from functools import partial
from typing import BinaryIO, Literal

from twisted.internet.interfaces import IReactorTime

from mailhub.config import Config
from mailhub.errors import ConfigError
from mailhub.message.header_text import from_escaped
from mailhub.received import parse_received
from mailhub.store import Folder, LockTimeout, MessageGone
from mailhub.store.lockwait import retry_busy
from mailhub.web import search
from mailhub.web.feed import Entry, MailFeed

TAG = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# Keywords that are a client's or filter's state, not a tag a person gave.
NOT_TAGS = frozenset(("junk", "nonjunk", "notjunk"))
MAX_CHANGE = 50  # tags added or removed by one PATCH
# The envelope recipient from our Received field, kept per message in the folder's cache.
RECIPIENT_CACHE = "web-rcpt-1"
HEAD_READ = 64 * 1024

MANUAL, ADDRESS, RULE = "manual", "address", "rule"


class TagError(ValueError):
    """A tag or a change the API refuses (400, or 409 for a derived tag)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def normalise(text: object) -> str:
    """A tag as it is kept and compared; TagError if it is not one."""
    if not isinstance(text, str):
        raise TagError("a tag is a string")
    tag = text.strip().lower()
    if not TAG.fullmatch(tag):
        raise TagError(
            f"{text!r} is not a tag: 1-64 characters of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return tag


def keyword_tags(keywords: Iterable[str]) -> frozenset[str]:
    """The tags among a message's IMAP keywords."""
    out = set()
    for k in keywords:
        low = k.lower()
        if not k.startswith("$") and low not in NOT_TAGS and TAG.fullmatch(low):
            out.add(low)
    return frozenset(out)


def plus_tags(mailbox: str, addresses: Iterable[str]) -> frozenset[str]:
    """Subaddress tags: ``user+tag@domain`` among ``addresses`` for mailbox ``user@domain``."""
    user, _, domain = mailbox.lower().rpartition("@")
    prefix = user + "+"
    out = set()
    for address in addresses:
        local, at, their_domain = address.strip().lower().rpartition("@")
        if at and their_domain == domain and local.startswith(prefix):
            tag = local[len(prefix) :]
            if TAG.fullmatch(tag):
                out.add(tag)
    return frozenset(out)


# -- the envelope recipient, from our own trace field ----------------------------------------

_HEADER_PARSER = BytesHeaderParser(policy=compat32)


def recipient_of(fp: BinaryIO) -> str:
    """The ``for <...>`` of the topmost Received field if we wrote it (parse.trace's rule:
    a field another MTA wrote says nothing), else ""."""
    head = fp.read(HEAD_READ)
    end = head.find(b"\n\r\n")
    end = head.find(b"\n\n") if end < 0 else end
    msg = _HEADER_PARSER.parsebytes(head[: end + 1] if end >= 0 else head)
    for name, value in msg.raw_items():
        if name.lower() == "received":
            facts = parse_received(from_escaped(str(value)))
            return facts.recipient if facts is not None else ""
    return ""


def _recipient_path(path: str) -> str:
    with open(path, "rb") as fp:
        return recipient_of(fp)


def _encode(text: str) -> bytes:
    return text.encode("utf-8")


def _decode(data: bytes) -> str:
    return data.decode("utf-8")


_CODEC = (recipient_of, _encode, _decode)
_PATH = {"compute_path": _recipient_path}


def fill_recipients(feed: MailFeed, entries: Iterable[Entry]) -> None:
    """The entries' recipients at once: one cache pass per folder (as summaries are filled)."""
    feed._fill(entries, "recipient", RECIPIENT_CACHE, _CODEC, _PATH)


def recipient(feed: MailFeed, entry: Entry) -> str:
    if entry.recipient is None:
        entry.recipient = feed.act_one(
            entry,
            lambda folder, uid: folder.cached(
                uid, RECIPIENT_CACHE, *_CODEC, compute_path=_recipient_path
            ),
        )
    return entry.recipient


# -- rules ------------------------------------------------------------------------------------


def address_tags(feed: MailFeed, entry: Entry) -> frozenset[str]:
    """The message's subaddress tags: from To, Cc and our Received's ``for``."""
    summary = feed.summary(entry)
    addresses = [a.address for a in (*summary.to, *summary.cc)]
    return plus_tags(entry.ref.mailbox, [recipient(feed, entry), *addresses])


@dataclass(frozen=True)
class Rule:
    terms: tuple[search.Term, ...]
    tag: str
    match: str


class Tagger:
    """The tag rules of one server; computes a message's tags and where each comes from."""

    def __init__(self, rules: Sequence[Rule] = ()) -> None:
        self.rules = tuple(rules)
        self._busy: set[str] = set()  # entries whose rules are being matched (see sources)

    @classmethod
    def from_config(cls, config: Config) -> Tagger:
        rules = []
        for n, rule in enumerate(config.web.tags, 1):
            try:
                terms = search.parse(rule.match)
                tag = normalise(rule.tag)
            except (search.QueryError, TagError) as e:
                raise ConfigError(
                    config.source, f"[[web.tag]] #{n}", str(e), 'match = "subject:invoice"'
                ) from None
            rules.append(Rule(terms, tag, rule.match))
        return cls(rules)

    def sources(
        self, feed: MailFeed, entry: Entry, candidate: search.Candidate
    ) -> dict[str, list[str]]:
        """tag -> where it comes from (manual, address, rule), sorted by tag. ``candidate``
        is the entry as search sees it. A rule with ``tag:`` in it sees the manual and
        address tags, not other rules' (no order among rules, no loops): while an entry's
        rules are matched, its ``tags`` are those two kinds only."""
        out: dict[str, list[str]] = {}
        for tag in sorted(keyword_tags(entry.keywords)):
            out.setdefault(tag, []).append(MANUAL)
        for tag in sorted(address_tags(feed, entry)):
            out.setdefault(tag, []).append(ADDRESS)
        if not self.rules or entry.id in self._busy:
            return dict(sorted(out.items()))
        self._busy.add(entry.id)
        try:
            for rule in self.rules:
                if RULE not in out.get(rule.tag, ()) and search.matches(rule.terms, candidate):
                    out.setdefault(rule.tag, []).append(RULE)
        finally:
            self._busy.discard(entry.id)
        return dict(sorted(out.items()))

    def tags(self, feed: MailFeed, entry: Entry, candidate: search.Candidate) -> frozenset[str]:
        return frozenset(self.sources(feed, entry, candidate))


# -- manual tags: the message's keywords --------------------------------------------------------


def _tag_list(body: dict[str, object], key: str) -> list[str]:
    value = body.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > MAX_CHANGE:
        raise TagError(f"tags.{key} must be a list of at most {MAX_CHANGE} tags")
    return [normalise(v) for v in value]


def parse_change(value: object) -> tuple[list[str], list[str]]:
    """``{"add": [...], "remove": [...]}`` of a PATCH -> (add, remove), checked."""
    if not isinstance(value, dict) or not value or set(value) - {"add", "remove"}:
        raise TagError('send {"tags": {"add": ["billing"], "remove": ["old"]}}')
    return _tag_list(value, "add"), _tag_list(value, "remove")


def _store_keywords(
    mode: Literal["add", "remove"], keywords: Iterable[str], folder: Folder, uid: int
) -> object:
    return folder.store_flags([uid], mode, keywords=keywords)


async def change(
    feed: MailFeed,
    clock: IReactorTime,
    entry: Entry,
    add: Iterable[str],
    remove: Iterable[str],
    derived: dict[str, list[str]],
) -> None:
    """Add and remove manual tags (IMAP keywords) of one message. Removing a tag keeps any
    keyword of that name in other case too (IMAP keywords compare case-insensitively in
    practice: RFC 9051 2.3.2). Removing a derived tag that was not also manual: TagError 409."""
    add, remove = set(add), set(remove)
    manual = keyword_tags(entry.keywords)
    for tag in sorted(remove):
        if tag not in manual and tag in derived:
            how = " and ".join(derived[tag])
            raise TagError(
                f"tag {tag!r} comes from the message's {how} ([[web.tag]] rules and "
                "user+tag@ addresses are computed, not stored): it cannot be removed here",
                409,
            )
    drop = {k for k in entry.keywords if k.lower() in remove}
    timeout = feed.store.settings.lock_timeout
    try:
        # The UID found at each try (feed.act_one): the folder may be numbered anew meanwhile.
        if drop:
            store = partial(_store_keywords, "remove", drop)
            await retry_busy(clock, timeout, partial(feed.act_one, entry, store))
        if add - manual:
            store = partial(_store_keywords, "add", sorted(add - manual))
            await retry_busy(clock, timeout, partial(feed.act_one, entry, store))
    except MessageGone:
        raise TagError("the message was deleted", 404) from None
    except LockTimeout:
        raise TagError("the mailbox is busy, try again", 503) from None
