"""Exceptions of the store. Protocol code maps them to replies (NO, -ERR, 4xx/5xx)."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class InvalidName(StoreError, ValueError):
    """A mailbox address or folder name that could escape the data directory or is malformed.

    Names come from the network (RCPT TO, IMAP CREATE, LOGIN), so they are checked before they
    ever become a path.
    """


class MailboxNotFound(StoreError, LookupError):
    """No mailbox exists for this address (and the caller did not ask to create one)."""


class FolderNotFound(StoreError, LookupError):
    """No folder of that name in the mailbox (IMAP answers ``NO [TRYCREATE]`` for APPEND/COPY)."""


class FolderExists(StoreError):
    """CREATE or RENAME onto a folder name that is already taken."""


class FolderError(StoreError):
    """A folder operation that the Maildir++ layout does not allow (e.g. deleting INBOX)."""


class MessageGone(StoreError, LookupError):
    """The message was removed (by another session or process) since the last ``sync()``."""


class UidValidityChanged(StoreError):
    """The folder's messages were numbered anew (a lost or corrupt UID list: a new
    UIDVALIDITY) after the caller got the UIDs it asks for: they name other messages now, or
    none (RFC 3501 2.3.1.1), so nothing is read or changed by them. IMAP says BYE."""


class LockTimeout(StoreError):
    """A dotlock could not be taken within the bounded wait: answer with a temporary error
    (SMTP 451 4.3.0, IMAP ``NO [UNAVAILABLE]`` of RFC 5530, POP3 ``-ERR [SYS/TEMP]``)."""


class LockBusy(LockTimeout):
    """A live holder has the dotlock and the caller runs on the reactor thread, which never
    waits: try again from a reactor timer (``mailhub.store.lockwait``)."""

    def __init__(self, message: str, path: object = None, *, want: object = None) -> None:
        super().__init__(message)
        self.path = path
        # A dotlock's waiting marker (``dotlock.announce``): a caller that waits long writes it.
        self.want = want


class CorruptUidList(StoreError):
    """The UID list file cannot be parsed; it is rebuilt with a new UIDVALIDITY."""
