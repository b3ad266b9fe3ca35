"""Who may do what: plain objects in, a decision out. No command parsing here.

The protocol calls ``check_auth`` at AUTH (and to decide whether EHLO advertises it),
``check_sender`` at MAIL and ``check_recipient`` at RCPT; the last two may return a ``Decision`` or
a Deferred firing with one (the protocol keeps pipelined replies in order).

Two roles share the receiver's code (``Role``): the MTA (port 25) takes mail for our domains from
anyone, ``RecipientPolicy``; submission (587, 465; RFC 6409) takes mail from authenticated users
only and lets them send only as themselves, ``SubmissionPolicy``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from twisted.internet.defer import Deferred
from zope.interface import Interface, implementer

from mailhub.addresses import Mailbox
from mailhub.aliases import AliasError
from mailhub.config import DomainsConfig
from mailhub.net import is_loopback
from mailhub.sandboxes import SANDBOX_DOMAIN, Sandboxes
from mailhub.smtp import replies
from mailhub.smtp.replies import Reply
from mailhub.smtp.session import Session
from mailhub.store.names import new_localpart_problem


class Role(Enum):
    """What a listener is for: ``MTA`` (port 25, mail from the world for our domains) or
    ``SUBMISSION`` (587/465, mail from our users to anywhere; RFC 6409)."""

    MTA = "mta"
    SUBMISSION = "submission"


@dataclass(frozen=True)
class Decision:
    """Accept (with the canonical mailboxes the store delivers to) or reject with a reply.

    A recipient normally has one mailbox; an alias may expand to several (``mailboxes``)."""

    reply: Reply
    mailboxes: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.reply.code < 400

    @property
    def mailbox(self) -> str | None:
        return self.mailboxes[0] if self.mailboxes else None

    @classmethod
    def accept(
        cls, mailbox: str | Sequence[str] | None, reply: Reply = replies.RECIPIENT_OK
    ) -> Decision:
        if mailbox is None:
            return cls(reply)
        return cls(reply, (mailbox,) if isinstance(mailbox, str) else tuple(mailbox))

    @classmethod
    def reject(cls, code: int, enhanced: str, text: str) -> Decision:
        return cls(Reply(code, enhanced, text))


SENDER_ACCEPTED = Decision(replies.SENDER_OK)
RELAY_DENIED = Decision.reject(554, "5.7.1", "Error: relay access denied")
USER_UNKNOWN = Decision.reject(550, "5.1.1", "Error: mailbox unavailable: user unknown")
UNSAFE_LOCAL_PART = Decision.reject(553, "5.1.3", "Error: local part not allowed here")
# RFC 3463 5.4.6: the aliases file sends this address round in a circle (or too far).
ALIAS_LOOP = Decision.reject(550, "5.4.6", "Error: alias expansion failed (routing loop)")
# No outgoing queue yet (the relay issue builds it): mail for other domains cannot be delivered,
# so it is not accepted. RFC 3463 4.4.3: routing server failure; the client keeps it and retries.
RELAY_UNAVAILABLE = Decision.reject(
    451, "4.4.3", "Error: cannot relay to other domains: relay queue not available in this version"
)
# RFC 4954 6 / RFC 6409 4.3: submission wants AUTH first.
AUTH_REQUIRED = Decision.reject(530, "5.7.0", "Error: authentication required")
# RFC 6409 4.3 / RFC 3463 5.7.1: an authenticated user sends as one of their own addresses.
SENDER_NOT_OWNED = Decision.reject(
    553, "5.7.1", "Error: sender address not owned by the authenticated user"
)
AUTH_ALLOWED = Decision(Reply(250, "2.0.0", "Ok"))
# RFC 4954 6: AUTH before TLS where the mechanisms need an encrypted channel.
ENCRYPTION_REQUIRED = Decision.reject(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)


class ISMTPPolicy(Interface):
    """What the receiver asks about authentication and envelope addresses."""

    def check_auth(session: Session) -> Decision:
        """May this session authenticate now? (Only whether the channel is good enough: the
        protocol checks command syntax and state, the portal the credentials.)"""

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
    - ``aliases`` (if given) maps an address to its final targets (several mailboxes); a broken
      alias (a loop) is 550 5.4.6. Targets in other domains would need the relay: 451 4.4.3.
    - Catch-all domains (or ``accept_any`` in the dev stack) accept any local part; otherwise
      ``mailbox_exists`` must agree, or 550 5.1.1.
    - Other domains: never for unauthenticated clients (554 5.7.1: no open relay). Authenticated
      clients relay through the outgoing queue when ``relay_available``; without one, 451 4.4.3
      (never accept what cannot be delivered).
    - AUTH only over TLS (RFC 4954 4; 538 5.7.11 otherwise), except, when
      ``auth_without_tls_on_loopback`` (dev stack), for clients on 127.0.0.1/::1.

    ``mailbox_exists`` and ``aliases`` are the seam for the users and aliases files.
    """

    def __init__(
        self,
        domains: DomainsConfig,
        mailbox_exists: Callable[[str], bool],
        *,
        aliases: Callable[[str], Sequence[str] | None] | None = None,
        postmaster_domain: str | None = None,
        auth_without_tls_on_loopback: bool = False,
        relay_available: bool = False,
        local_domain: Callable[[str], bool] | None = None,
        sandboxes: Sandboxes | None = None,
    ) -> None:
        self._local = frozenset(domains.local)
        # Sessions logged in as a sandbox deliver every recipient into it (mailhub.sandboxes).
        self._sandboxes = sandboxes
        # True once an outgoing queue takes mail for other domains (the relay issue).
        self._relay = relay_available
        # Overrides the domains list: the dev stack sends routed domains on (mailhub.routing).
        self._local_domain = local_domain
        self._catch_all = frozenset(domains.catch_all)
        self._accept_any = domains.accept_any
        self._mailbox_exists = mailbox_exists
        self._aliases = aliases
        if postmaster_domain is None:
            postmaster_domain = domains.local[0] if domains.local else "localhost"
        self._postmaster = f"postmaster@{postmaster_domain}"
        self._auth_on_loopback = auth_without_tls_on_loopback

    def check_auth(self, session: Session) -> Decision:
        if session.tls is not None:
            return AUTH_ALLOWED
        if self._auth_on_loopback and is_loopback(session.client_address):
            return AUTH_ALLOWED  # dev stack: an app on this machine should not need TLS
        return ENCRYPTION_REQUIRED

    def is_local_domain(self, domain: str) -> bool:
        if self._local_domain is not None:
            return self._local_domain(domain)
        return self._accept_any or domain in self._local or domain in self._catch_all

    def check_sender(self, session: Session, sender: Mailbox | None) -> Decision:
        # An MTA takes mail from anyone; SPF and friends would go here.
        return SENDER_ACCEPTED

    def check_recipient(self, session: Session, recipient: Mailbox) -> Decision:
        if self._sandboxes is not None:
            box = self._sandboxes.of_address(session.authenticated_as)
            if box is not None:
                return Decision.accept(box.address)  # a test's mail, whoever it is for
            if recipient.domain.lower() == SANDBOX_DOMAIN:
                return USER_UNKNOWN  # only a sandbox's own logins put mail there
        domain = recipient.domain
        if not domain:
            return Decision.accept(self._postmaster)
        if recipient.is_literal or not self.is_local_domain(domain):
            # A mail catcher (accept_any) sends its routed domains on for programs on this
            # machine only; from anywhere else that would be an open relay.
            catcher = self._accept_any and self._relay and is_loopback(session.client_address)
            if session.authenticated_as is None and not catcher:
                return RELAY_DENIED
            if not self._relay:
                return RELAY_UNAVAILABLE
            # A remote local part is the remote domain's business (RFC 5321 2.4: case-sensitive):
            # keep it as written, in its RFC 5321 form.
            return Decision.accept(str(recipient))
        local = recipient.local
        if unsafe_local_part(local):
            return UNSAFE_LOCAL_PART
        local = tagged = local.lower()
        if local == "postmaster":
            return Decision.accept(f"postmaster@{domain}")
        user, plus, _tag = local.partition("+")
        if plus and user:
            local = user
        # The store splits the mailbox at its last "@", so a quoted "@" in the local part is safe.
        mailbox = f"{local}@{domain}"
        if self._aliases is not None:
            try:
                # The tagged form first: an alias may be defined for user+tag itself.
                targets = self._aliases(f"{tagged}@{domain}")
                if targets is None and tagged != local:
                    targets = self._aliases(mailbox)
            except AliasError:
                return ALIAS_LOOP
            if targets is not None:
                return self._alias_targets(targets)
        if self._accept_any or domain in self._catch_all:
            if new_localpart_problem(local) is not None and not self._mailbox_exists(mailbox):
                # A catch-all creates the mailbox: it must be a name we would create (no
                # bidi controls, LIST wildcards, ...), the rule dev logins follow too.
                return UNSAFE_LOCAL_PART
            return Decision.accept(mailbox)
        if self._mailbox_exists(mailbox):
            return Decision.accept(mailbox)
        return USER_UNKNOWN

    def is_sandbox(self, user: str | None) -> bool:
        """Whether ``user`` (an authenticated address) is one of the sandboxes."""
        return self._sandboxes is not None and self._sandboxes.of_address(user) is not None

    def _alias_targets(self, targets: Sequence[str]) -> Decision:
        if not targets:
            return USER_UNKNOWN
        for target in targets:
            if not self._relay and not self.is_local_domain(target.rpartition("@")[2]):
                return RELAY_UNAVAILABLE  # a forward to another domain needs the relay queue
        return Decision.accept(targets)


@implementer(ISMTPPolicy)
class SubmissionPolicy(RecipientPolicy):
    """The submission role (RFC 6409): MAIL only after AUTH (530 5.7.0), and with
    ``restrict_sender`` only from the user's own address, a ``+tag`` form of it, or an alias whose
    expansion includes the user (``aliases_of``; 553 5.7.1 otherwise, also for ``<>``).
    ``may_send_as`` is that rule; the submission sink applies it to the header From too.
    Recipients are decided as for the MTA: local ones delivered, remote ones 451 4.4.3 until the
    relay queue exists."""

    def __init__(
        self,
        domains: DomainsConfig,
        mailbox_exists: Callable[[str], bool],
        *,
        restrict_sender: bool = True,
        aliases_of: Callable[[str], Sequence[str]] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(domains, mailbox_exists, **kwargs)  # type: ignore[arg-type]
        self._restrict = restrict_sender
        self._aliases_of = aliases_of

    def check_sender(self, session: Session, sender: Mailbox | None) -> Decision:
        user = session.authenticated_as
        if user is None:
            return AUTH_REQUIRED
        if not self._restrict or self.is_sandbox(user):
            return SENDER_ACCEPTED
        if sender is None or not self.may_send_as(user, sender):
            return SENDER_NOT_OWNED
        return SENDER_ACCEPTED

    def may_send_as(self, user: str, sender: Mailbox) -> bool:
        """Whether ``user`` (the canonical authenticated address) may use ``sender``: the one rule
        for MAIL FROM and for the header From/Sender (``mailhub.smtp.submission``)."""
        if self.is_sandbox(user):
            return True  # a test sends as whoever the application under test would
        if sender.is_literal:
            return False
        local, plus, _tag = sender.local.lower().partition("+")
        if not plus or not local:
            local = sender.local.lower()
        address = f"{local}@{sender.domain}"
        if address == user:
            return True
        return self._aliases_of is not None and address in self._aliases_of(user)
