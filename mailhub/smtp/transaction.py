"""One mail transaction (RFC 5321 3.3): MAIL, its recipients, the message being received, and the
one log line it ends with."""

from __future__ import annotations

from collections.abc import Mapping

from twisted.logger import Logger

from mailhub.addresses import Mailbox
from mailhub.envelope import Envelope, Recipient
from mailhub.interfaces import IIncomingMessage
from mailhub.smtp import replies as R
from mailhub.smtp.replies import Reply

BODY_TYPES = ("7BIT", "8BITMIME", "BINARYMIME")  # RFC 6152, RFC 3030


class Transaction:
    """MAIL, its recipients, and the message being received (written to the sink as it comes)."""

    __slots__ = (
        "body_type",
        "declared_size",
        "envelope",
        "failed",
        "message",
        "rcpt_count",
        "recipients",
        "sender",
        "size",
        "smtputf8",
        "used_bdat",
    )

    def __init__(self, sender: Mailbox | None) -> None:
        self.sender = sender
        self.recipients: list[Recipient] = []
        self.rcpt_count = 0  # accepted RCPT commands (an alias may add several recipients)
        self.body_type = "7BIT"
        self.smtputf8 = False
        self.declared_size: int | None = None
        self.envelope: Envelope | None = None
        self.message: IIncomingMessage | None = None
        self.failed: Reply | None = None  # the reply owed at the end of the data
        self.size = 0  # message octets received (dot-unstuffed, RFC 1870 3)
        self.used_bdat = False

    @property
    def binary(self) -> bool:
        return self.body_type == "BINARYMIME"

    @property
    def sender_written(self) -> str:
        """The sender as the client wrote it; "" for the null sender."""
        return self.sender.written if self.sender is not None else ""

    def take_parameters(self, params: Mapping[str, str | None], max_size: int) -> Reply | None:
        """MAIL FROM's parameters (SIZE, BODY, SMTPUTF8); the error reply for a bad one."""
        for key, value in params.items():
            if key == "SIZE":  # RFC 1870
                if value is None or not value.isascii() or not value.isdigit():
                    return R.BAD_PARAMETER
                if len(value) > 18:  # int() refuses thousands of digits; this is too big anyway
                    return R.SIZE_EXCEEDED
                self.declared_size = int(value)
                if self.declared_size > max_size:
                    return R.SIZE_EXCEEDED
            elif key == "BODY":  # RFC 6152, RFC 3030
                body = (value or "").upper()
                if body not in BODY_TYPES:
                    return R.BAD_PARAMETER
                self.body_type = body
            elif key == "SMTPUTF8" and value is None:  # RFC 6531 3.4
                self.smtputf8 = True
            else:
                return Reply(555, "5.5.4", f"Error: unsupported parameter {key}")
        if self.sender is not None and self.sender.needs_smtputf8 and not self.smtputf8:
            return R.NEED_SMTPUTF8
        return None

    def fail(self, reply: Reply) -> None:
        """Reject the message in progress; the rest of its data is read and dropped."""
        if self.failed is None:
            self.failed = reply
        self.abort()

    def abort(self) -> None:
        """Throw away the message being received, if any (the sink deletes its spool)."""
        if self.message is not None:
            message, self.message = self.message, None
            message.abort()


def log_message(
    log: Logger,
    client: str,
    txn: Transaction,
    reply: Reply | None,
    *,
    outcome: str | None = None,
    reason: str = "",
) -> None:
    """The one log line per message: accepted, rejected or aborted."""
    if outcome is None:
        outcome = "accepted" if reply is not None and reply.code < 400 else "rejected"
    envelope = txn.envelope
    queue_id = envelope.queue_id if envelope is not None else None
    mail_from = txn.sender_written
    recipients = [r.address for r in txn.recipients]
    code = reply.code if reply is not None else None
    enhanced = reply.enhanced if reply is not None else None
    reason = reason or (reply.lines[-1] if reply is not None else "connection lost")
    # The line is rendered here with an f-string: observers (twistd's file log) then format
    # one field instead of ten with string.Formatter, which cost ~25 us per message.
    log.info(
        "{log_text}",
        log_text=f"{outcome} queue_id={queue_id} client={client} from=<{mail_from}> "
        f"to={recipients} size={txn.size} reply={code} {enhanced} {reason}",
        event="message",
        outcome=outcome,
        queue_id=queue_id,
        client=client,
        mail_from=mail_from,
        recipients=recipients,
        size=txn.size,
        code=code,
        enhanced=enhanced,
        reason=reason,
    )
