"""The seams between protocol code and the code that keeps messages.

The SMTP receiver knows its destination only through ``IMessageSink``: behind it, local copies
go to the Maildir store (``mailhub.store.delivery.MaildirSink``) and remote ones to the durable
queue (``mailhub.queue.sink``), split by ``mailhub.routing.SplitSink``. A delivery is
open -> write* -> commit | abort (maddy's shape): the body streams to disk as it arrives, and
``commit`` fires only when every copy is durable.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from mailhub.envelope import Envelope


class DeliveryError(Exception):
    """A delivery could not be made durable. ``permanent`` False means try again later (4xx)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class MessageRejected(DeliveryError):
    """The content broke a policy (a forged From, say): the message is refused with this reply
    (``code``, RFC 3463 ``enhanced``, ``text``) instead of the generic storage error's."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(text, permanent=code >= 500)
        self.code = code
        self.enhanced = enhanced
        self.text = text


class IIncomingMessage(Interface):
    """One message being received. Written in order, then committed or aborted exactly once."""

    envelope = Attribute("The mailhub.envelope.Envelope this message travels with.")

    def write(data: bytes) -> None:
        """Append message bytes (CRLF line endings, dot-unstuffed). May raise DeliveryError."""

    def ready() -> Deferred[None] | None:
        """Flow control: None while more may be written now; else a Deferred that fires when
        the writer may go on (what was written is on its way to disk). A writer of a big
        message waits for it between writes, so memory stays bounded whatever the disk's
        speed (the SMTP receiver stops reading the client meanwhile)."""

    def commit() -> Deferred[str]:
        """Make the message durable for every recipient.

        Returns a Deferred that fires (with the queue id) once every copy is fsync'd and
        visible, or fails with DeliveryError. Nothing is visible to readers before that.
        """

    def abort() -> None:
        """Drop the message: nothing of it stays visible or on disk. Safe to call twice."""


class IMessageSink(Interface):
    """Where the SMTP receiver sends accepted messages."""

    def open(envelope: Envelope) -> IIncomingMessage:
        """Start receiving a message for ``envelope`` (recipients already accepted).

        May raise DeliveryError (for example when the disk is full), which the receiver answers
        with a 4xx reply.
        """


# --- the queue's view of deliverers (chasquid's "courier" seam) --------------------------------


class Outcome(enum.Enum):
    """What one delivery attempt did for one recipient. Anything not said permanent is temporary
    (maddy's rule): a deliverer that is unsure must not make the queue give up."""

    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class AttemptResult:
    """One recipient's result from one attempt, with what the other side said (for DSNs/logs)."""

    recipient: str
    outcome: Outcome
    # Diagnostic, e.g. "smtp; 550 5.1.1 user unknown" (RFC 3464 2.3.6) or "" when delivered.
    diagnostic: str = ""
    status: str = ""  # enhanced status code (RFC 3463), e.g. "5.1.1"; "2.0.0" when delivered
    remote_mta: str = ""  # the host that answered, e.g. "mx.example.org [192.0.2.1]"


class ICourier(Interface):
    """Delivers one queued message to some of its recipients (the queue groups recipients by
    courier and destination domain)."""

    def deliver(item: Any) -> Deferred[list[AttemptResult]]:
        """Attempt delivery of ``item`` (a mailhub.queue item: ``queue_id``, ``mail_from``,
        ``recipients`` (the ones to attempt now), ``open_body()`` -> binary file, ``size``,
        ``body_type``, ``smtputf8``, ``envelope_id``).

        Returns a Deferred firing with a list of AttemptResult, one per recipient attempted.
        Must not fail: unexpected errors become TEMPORARY results.
        """
