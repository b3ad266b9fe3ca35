"""The Maildir store: delivery, folders, flags, UIDs. No protocol knowledge.

Protocol code uses ``MailStore`` -> ``Mailbox`` -> ``Folder`` (names and UIDs, never paths);
the SMTP receiver uses ``MaildirSink`` (``IMessageSink``) with a ``GroupCommitter`` service.
"""

from mailhub.store.errors import (
    CorruptUidList,
    FolderError,
    FolderExists,
    FolderNotFound,
    InvalidName,
    LockTimeout,
    MailboxNotFound,
    MessageGone,
    StoreError,
    UidValidityChanged,
)
from mailhub.store.maildir import Folder, FolderState, MessageInfo, StoreOutcome
from mailhub.store.store import Mailbox, MailStore

__all__ = [
    "CorruptUidList",
    "Folder",
    "FolderError",
    "FolderExists",
    "FolderNotFound",
    "FolderState",
    "InvalidName",
    "LockTimeout",
    "MailStore",
    "Mailbox",
    "MailboxNotFound",
    "MessageGone",
    "MessageInfo",
    "StoreError",
    "StoreOutcome",
    "UidValidityChanged",
]
