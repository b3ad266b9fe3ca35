"""Recipient and sender policy: plain objects in, a decision out. No command parsing here.

The protocol calls ``check_sender`` at MAIL and ``check_recipient`` at RCPT; either may return a
``Decision`` or a Deferred firing with one (the protocol keeps pipelined replies in order).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from zope.interface import Interface, implementer

from mailhub.config import DomainsConfig
from mailhub.smtp import replies
from mailhub.smtp.address import Mailbox
from mailhub.smtp.replies import Reply
from mailhub.smtp.session import Session


@dataclass(frozen=True)
class Decision:
    """Accept (with the canonical mailbox the store delivers to) or reject with a reply."""

    reply: Reply
    mailbox: str | None = None

    @property
    def accepted(self) -> bool:
        return self.reply.code < 400

    @classmethod
    def accept(cls, mailbox: str | None, reply: Reply = replies.RECIPIENT_OK) -> Decision:
        return cls(reply, mailbox)

    @classmethod
    def reject(cls, code: int, enhanced: str, text: str) -> Decision:
        return cls(Reply(code, enhanced, text))


SENDER_ACCEPTED = Decision(replies.SENDER_OK)
RELAY_DENIED = Decision.reject(554, "5.7.1", "Error: relay access denied")
USER_UNKNOWN = Decision.reject(550, "5.1.1", "Error: mailbox unavailable: user unknown")
UNSAFE_LOCAL_PART = Decision.reject(553, "5.1.3", "Error: local part not allowed here")


class ISMTPPolicy(Interface):
    """What the receiver asks about envelope addresses."""

    def check_sender(session: Session, sender: Mailbox | None) -> Decision | Deferred[Decision]:
        """Decide about MAIL FROM (``None`` is the null path ``<>``)."""

    def check_recipient(session: Session, recipient: Mailbox) -> Decision | Deferred[Decision]:
        """Decide about RCPT TO; an accepting decision names the canonical mailbox."""


def unsafe_local_part(local: str) -> bool:
    """True if a local part must not become a Maildir directory name.

    "/" and ".." could escape the mail tree, a leading "." makes a hidden (or "." / "..")
    directory, and NUL and control characters break file systems and logs.
    """
    if not local or local.startswith(".") or ".." in local or "/" in local:
        return True
    return any(ord(c) < 0x20 or ord(c) == 0x7F or unicodedata.category(c) == "Cc" for c in local)


@implementer(ISMTPPolicy)
class RecipientPolicy:
    """The MTA policy: accept mail for our domains, refuse to relay for strangers.

    - ``<Postmaster>`` and ``postmaster@<local domain>`` are always accepted (RFC 5321 4.5.1),
      delivered to ``postmaster@<domain>`` (the store creates that mailbox on first delivery);
      bare ``<Postmaster>`` goes to ``postmaster@<postmaster_domain>``.
    - Local parts are case-folded and plus-addressing is resolved: ``User+tag@Dom`` delivers to
      ``user@dom``. Local parts that would be unsafe as directory names get 553 5.1.3.
    - Catch-all domains (or ``accept_any`` in the dev stack) accept any local part; otherwise
      ``aliases`` (if given) may map the mailbox to another, then ``mailbox_exists`` must agree,
      or 550 5.1.1.
    - Other domains: relaying only for authenticated clients (554 5.7.1 otherwise); the
      decision's mailbox is then the remote address itself.

    ``mailbox_exists`` and ``aliases`` are the seam for the users and aliases files.
    """

    def __init__(
        self,
        domains: DomainsConfig,
        mailbox_exists: Callable[[str], bool],
        *,
        aliases: Callable[[str], str | None] | None = None,
        postmaster_domain: str | None = None,
    ) -> None:
        self._local = frozenset(domains.local)
        self._catch_all = frozenset(domains.catch_all)
        self._accept_any = domains.accept_any
        self._mailbox_exists = mailbox_exists
        self._aliases = aliases
        if postmaster_domain is None:
            postmaster_domain = domains.local[0] if domains.local else "localhost"
        self._postmaster = f"postmaster@{postmaster_domain}"

    def is_local_domain(self, domain: str) -> bool:
        return self._accept_any or domain in self._local or domain in self._catch_all

    def check_sender(self, session: Session, sender: Mailbox | None) -> Decision:
        # An MTA takes mail from anyone; SPF and friends would go here.
        return SENDER_ACCEPTED

    def check_recipient(self, session: Session, recipient: Mailbox) -> Decision:
        domain = recipient.domain
        if not domain:
            return Decision.accept(self._postmaster)
        if recipient.is_literal or not self.is_local_domain(domain):
            if session.authenticated_as is not None:
                return Decision.accept(str(recipient))
            return RELAY_DENIED
        local = recipient.local
        if unsafe_local_part(local):
            return UNSAFE_LOCAL_PART
        local = local.lower()
        if local == "postmaster":
            return Decision.accept(f"postmaster@{domain}")
        user, plus, _tag = local.partition("+")
        if plus and user:
            local = user
        # The store splits the mailbox at its last "@", so a quoted "@" in the local part is safe.
        mailbox = f"{local}@{domain}"
        if self._accept_any or domain in self._catch_all:
            return Decision.accept(mailbox)
        if self._aliases is not None:
            target = self._aliases(mailbox)
            if target is not None:
                return Decision.accept(target)
        if self._mailbox_exists(mailbox):
            return Decision.accept(mailbox)
        return USER_UNKNOWN
