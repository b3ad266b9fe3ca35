"""Delivery status notifications: bounces and delay notices (RFC 3464, RFC 6522).

The message is ``multipart/report; report-type=delivery-status`` (RFC 6522) with three parts:

1. ``text/plain``: what happened, for a human;
2. ``message/delivery-status`` (RFC 3464 2.2-2.3): one per-message block (Reporting-MTA,
   Original-Envelope-Id, Arrival-Date) and one block per recipient (Final-Recipient, Action,
   Status, Remote-MTA, Diagnostic-Code, Last-Attempt-Date, Will-Retry-Until);
3. ``text/rfc822-headers``: the original message's header (RFC 6522 section 4 allows the
   headers alone; the body may be large or private).

It is sent with the null reverse-path ``<>`` (RFC 5321 4.5.5, RFC 3464 2) so that it can never
cause another bounce, from MAILER-DAEMON, marked ``Auto-Submitted: auto-replied`` (RFC 3834).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email import policy as email_policy
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.utils import formatdate, make_msgid

from mailhub.queue.record import QueueRecord, RecipientState

MAX_HEADER_BYTES = 64 * 1024  # of the original header included in the report
_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_DIAG_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*;")

# RFC 3463 X.4.7: delivery time expired.
EXPIRED_STATUS = "5.4.7"


def original_headers(body: bytes) -> bytes:
    """The header section of a message (up to the first empty line), CRLF line ends."""
    end = body.find(b"\r\n\r\n")
    head = body if end < 0 else body[: end + 2]
    if len(head) > MAX_HEADER_BYTES:
        cut = head.rfind(b"\r\n", 0, MAX_HEADER_BYTES)
        head = head[: cut + 2] if cut > 0 else head[:MAX_HEADER_BYTES]
    return head


def _address_type(address: str) -> str:
    # RFC 6533 3: "utf-8" address type for internationalized addresses.
    return "rfc822" if address.isascii() else "utf-8"


def _status(r: RecipientState, delayed: bool) -> str:
    code = r.status_code
    if delayed:
        return code if _STATUS.match(code) and code.startswith("4") else "4.0.0"
    if _STATUS.match(code) and code.startswith("5"):
        return code
    # A recipient that only ever failed temporarily ran out of time (expiry).
    return EXPIRED_STATUS if not code.startswith("5") else "5.0.0"


def _diagnostic(diag: str) -> str:
    diag = " ".join(diag.split())  # one line: it goes into a header field
    if not diag:
        return ""
    return diag if _DIAG_TYPE.match(diag) else f"smtp; {diag}"


def _block(fields: Sequence[tuple[str, str]]) -> Message:
    block = Message()
    for name, value in fields:
        if value:
            block[name] = value
    return block


def build_dsn(
    record: QueueRecord,
    recipients: Sequence[RecipientState],
    headers: bytes,
    hostname: str,
    now: float,
    *,
    delayed: bool = False,
    expires: float | None = None,
) -> bytes:
    """The DSN for ``recipients`` of ``record`` (failed ones, or with ``delayed`` those still
    being tried until ``expires``), as bytes with CRLF line ends, ready to enqueue."""
    utf8 = record.smtputf8 or not record.mail_from.isascii()
    pol = email_policy.SMTPUTF8 if utf8 else email_policy.SMTP
    mailer_daemon = f"MAILER-DAEMON@{hostname}"

    report = MIMEMultipart("report", report_type="delivery-status", policy=pol)
    report["From"] = f"Mail Delivery System <{mailer_daemon}>"
    report["To"] = record.mail_from
    if delayed:
        report["Subject"] = "Delayed Mail (still being retried)"
    else:
        report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = formatdate(now, usegmt=True)
    report["Message-ID"] = make_msgid("dsn", domain=hostname)
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834 5

    # 1. For a human.
    lines = [f"This is the mail system at {hostname}.", ""]
    if delayed:
        lines += [
            "Your message could not be delivered yet to the recipients below.",
            "It is still being retried; you do not need to send it again.",
        ]
        if expires is not None:
            lines.append(f"The mail system gives up on {formatdate(expires, usegmt=True)}.")
    else:
        lines += [
            "I'm sorry to have to inform you that your message could not be delivered",
            "to one or more recipients. The details are below.",
        ]
    lines.append("")
    for r in recipients:
        reason = r.diagnostic or ("delivery time expired" if not delayed else "not yet delivered")
        lines.append(f"<{r.address}>: {reason}")
    human = Message(policy=pol)
    human["Content-Type"] = "text/plain; charset=utf-8"
    human["Content-Description"] = "Notification"
    text = "\r\n".join(lines) + "\r\n"
    if text.isascii():
        human.set_payload(text)
    else:
        human["Content-Transfer-Encoding"] = "8bit"
        human.set_payload(text.encode("utf-8"), "utf-8")
    report.attach(human)

    # 2. Machine-readable status (RFC 3464 2.2 per-message, 2.3 per-recipient fields).
    status = Message(policy=pol)
    status["Content-Type"] = "message/delivery-status"
    status["Content-Description"] = "Delivery report"
    status.attach(
        _block(
            [
                ("Reporting-MTA", f"dns; {hostname}"),
                ("Original-Envelope-Id", record.envelope_id or ""),
                ("Arrival-Date", formatdate(record.created, usegmt=True)),
            ]
        )
    )
    for r in recipients:
        fields = []
        if r.original and r.original.lower() != r.address.lower():
            fields.append(("Original-Recipient", f"{_address_type(r.original)}; {r.original}"))
        fields += [
            ("Final-Recipient", f"{_address_type(r.address)}; {r.address}"),
            ("Action", "delayed" if delayed else "failed"),
            ("Status", _status(r, delayed)),
            ("Remote-MTA", f"dns; {r.remote_mta.split()[0]}" if r.remote_mta.strip() else ""),
            ("Diagnostic-Code", _diagnostic(r.diagnostic)),
            (
                "Last-Attempt-Date",
                formatdate(r.last_attempt, usegmt=True) if r.last_attempt is not None else "",
            ),
        ]
        if delayed and expires is not None:
            fields.append(("Will-Retry-Until", formatdate(expires, usegmt=True)))
        status.attach(_block(fields))
    report.attach(status)

    # 3. The original header (RFC 6522 text/rfc822-headers).
    head = Message(policy=pol)
    head["Content-Type"] = "text/rfc822-headers"
    head["Content-Description"] = "Undelivered Message Headers"
    if headers.isascii():
        head.set_payload(headers.decode("ascii"))
    else:
        head["Content-Transfer-Encoding"] = "8bit"
        head.set_payload(headers.decode("utf-8", "surrogateescape"))
    report.attach(head)

    return report.as_bytes(policy=pol)  # a BytesGenerator, mangle_from_=False, no unixfrom
