"""Plain data that travels with a message from the SMTP receiver to whatever stores it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipient:
    """One accepted RCPT.

    ``address`` is what the client wrote (``user+tag@Example.COM``); ``mailbox`` is the canonical
    mailbox address the store delivers to (``user@example.com``), decided by recipient policy.
    """

    address: str
    mailbox: str


@dataclass
class Envelope:
    """The SMTP envelope and the facts of the session that carried it (trace headers, logs)."""

    queue_id: str
    mail_from: str  # "" is the null reverse-path <> (bounces)
    recipients: list[Recipient] = field(default_factory=list)
    helo: str = ""
    client_address: str = ""
    client_port: int = 0
    client_name: str = ""  # reverse DNS name if known, else ""
    server_name: str = ""  # our hostname as announced in the banner
    protocol: str = "ESMTP"  # SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, UTF8SMTP... (RFC 3848)
    body_type: str = "7BIT"  # 7BIT | 8BITMIME | BINARYMIME (RFC 6152, RFC 3030)
    smtputf8: bool = False  # RFC 6531
    declared_size: int | None = None  # SIZE= at MAIL (RFC 1870)
    tls: str | None = None  # e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384", None for plain text
    authenticated_as: str | None = None
    # The folder local copies go to instead of INBOX ("Junk": the checks quarantined it).
    folder: str | None = None
    received_at: float = field(default_factory=time.time)

    @property
    def mailboxes(self) -> list[str]:
        """Distinct target mailboxes in RCPT order: each gets exactly one copy."""
        seen: dict[str, None] = {}
        for r in self.recipients:
            seen.setdefault(r.mailbox, None)
        return list(seen)
