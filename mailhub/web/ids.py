"""Message ids: ``base64url(mailbox "\\n" folder "\\n" maildir-base)`` without padding.

Stable for as long as the message exists (the Maildir base name never changes; flags live after
the ``:``), the same in every process and after a restart, and safe in a URL path segment.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

MAX_ID_LENGTH = 1024  # longer than any real mailbox + folder + base name; anything more is junk


@dataclass(frozen=True, slots=True)
class MessageRef:
    mailbox: str  # canonical address
    folder: str  # "INBOX", "Sent", "A.B"
    key: str  # Maildir base name

    @property
    def id(self) -> str:
        raw = f"{self.mailbox}\n{self.folder}\n{self.key}".encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def parse_id(text: str) -> MessageRef | None:
    """The reference an id names, or None for anything that is not one of ours."""
    if not text or len(text) > MAX_ID_LENGTH or not text.isascii():
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    parts = raw.split("\n")
    if len(parts) != 3 or not all(parts):
        return None
    ref = MessageRef(*parts)
    return ref if ref.id == text else None  # one spelling per message
