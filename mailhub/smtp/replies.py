"""SMTP replies: a basic code, an enhanced status code and text.

RFC 5321 4.2 gives the reply format; RFC 3463 and RFC 5248 the enhanced status codes; RFC 2034
says where they appear: on every reply line except the greeting and the replies to HELO/EHLO.
Intermediate replies (354, 334) carry none either: RFC 3463 has no class 3.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailhub.interfaces import DeliveryError, MessageRejected


@dataclass(frozen=True)
class Reply:
    """One (possibly multi-line) reply. ``text`` lines are joined with continuation markers."""

    code: int
    enhanced: str | None  # "2.1.0"; None where RFC 2034 forbids one
    text: str | tuple[str, ...]
    # Rendered once: replies are mostly module constants sent on every message.
    wire: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "wire", self._render())

    @property
    def lines(self) -> tuple[str, ...]:
        return (self.text,) if isinstance(self.text, str) else self.text

    def _render(self) -> bytes:
        lines = self.lines or ("",)
        prefix = f"{self.enhanced} " if self.enhanced else ""
        out = []
        last = len(lines) - 1
        for i, line in enumerate(lines):
            # RFC 5321 4.2.1: "250-" on every line but the last, "250 " on the last; RFC 2034
            # wants the enhanced code repeated on each line.
            sep = " " if i == last else "-"
            out.append(f"{self.code}{sep}{prefix}{line}\r\n")
        return "".join(out).encode("utf-8")

    def __str__(self) -> str:
        return self.wire.decode("utf-8").rstrip("\r\n")


# Replies every session uses. Texts follow common practice (Postfix) so humans recognise them.
OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
BYE = Reply(221, "2.0.0", "Bye")
# RFC 5321 3.5.3: 252 when we will not verify but will accept.
CANNOT_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
START_TLS = Reply(220, "2.0.0", "Ready to start TLS")

# RFC 5321 4.2.4 / 4.5.3.1.10: 500 unrecognised, 502 recognised but not implemented.
UNRECOGNISED = Reply(500, "5.5.1", "Error: command not recognized")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Error: command not implemented")
LINE_TOO_LONG = Reply(500, "5.5.2", "Error: line too long (RFC 5321 4.5.3.1.6)")
BARE_LF_COMMAND = Reply(500, "5.5.2", "Error: bare CR or LF in command (RFC 5321 2.3.8)")
BAD_ENCODING = Reply(500, "5.5.2", "Error: command is not valid UTF-8")
BAD_SEQUENCE = Reply(503, "5.5.1", "Error: bad sequence of commands")
NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
# RFC 5321 3.3: DATA after every RCPT was rejected may get 554 "no valid recipients".
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "Error: no valid recipients")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "Error: DATA cannot follow BDAT (RFC 3030 3)")
BINARYMIME_NEEDS_BDAT = Reply(503, "5.5.1", "Error: BODY=BINARYMIME requires BDAT (RFC 3030 3)")
BDAT_TRANSACTION_FAILED = Reply(503, "5.5.1", "Error: previous BDAT failed, send RSET (RFC 3030 2)")
DUPLICATE_PARAMETER = Reply(501, "5.5.4", "Error: duplicate parameter")
BAD_PARAMETER = Reply(501, "5.5.4", "Error: bad parameter value")
# RFC 1870 6: a SIZE beyond our fixed limit, or data that exceeds it.
SIZE_EXCEEDED = Reply(552, "5.3.4", "Error: message size exceeds fixed maximum message size")
# RFC 5321 4.5.3.1.10.
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
BARE_LINE_ENDING = Reply(
    550,
    "5.5.2",
    "Error: bare CR or LF in message data is not allowed (RFC 5321 2.3.8)",
)
DATA_LINE_TOO_LONG = Reply(500, "5.5.2", "Error: message line too long (RFC 5321 4.5.3.1.6)")
# RFC 6531 3.4 / RFC 5248: a non-ASCII address without SMTPUTF8.
NEED_SMTPUTF8 = Reply(553, "5.6.7", "Error: non-ASCII address requires SMTPUTF8 (RFC 6531)")
INTERNAL_ERROR = Reply(451, "4.3.0", "Error: internal server error, try again later")
DELIVERY_TEMPORARY = Reply(451, "4.3.0", "Error: queue file write error, try again later")
DELIVERY_PERMANENT = Reply(554, "5.3.0", "Error: message could not be stored")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Error: too many errors")
TIMEOUT = Reply(421, "4.4.2", "Error: timeout exceeded")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Error: too many connections, try again later")
TLS_ACTIVE = Reply(503, "5.5.1", "Error: TLS already active")
EXPN_DISABLED = Reply(502, "5.5.1", "Error: EXPN is disabled")
NOT_A_LIST = Reply(550, "5.1.1", "Error: not a mailing list")
FORBIDDEN_COMMAND = Reply(421, "4.7.0", "Error: this is an SMTP server, goodbye")

# SMTP AUTH (RFC 4954 6; enhanced codes from RFC 5248).
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Error: authentication failed")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Error: cannot decode the response (base64)")
AUTH_MALFORMED = Reply(501, "5.5.2", "Error: malformed authentication response")
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Error: authentication exchange line is too long")
AUTH_USAGE = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Error: unrecognized authentication mechanism")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Error: already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "Error: AUTH not allowed during a mail transaction")
AUTH_TEMPORARY = Reply(454, "4.7.0", "Error: temporary authentication failure, try again later")
AUTH_TOO_MANY_FAILURES = Reply(421, "4.7.0", "Error: too many authentication failures")


def syntax(usage: str, enhanced: str | None = "5.5.4") -> Reply:
    """501 with a usage hint (RFC 5321 4.2.2: syntax error in parameters or arguments)."""
    return Reply(501, enhanced, f"Syntax: {usage}")


def queued(queue_id: str) -> Reply:
    return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")


def delivery_error(e: DeliveryError) -> Reply:
    """The reply for a sink's error: a content rejection carries its own reply, anything else is
    the generic storage error (5xx only when the sink says it is permanent)."""
    if isinstance(e, MessageRejected):
        return Reply(e.code, e.enhanced, e.text)
    return DELIVERY_PERMANENT if e.permanent else DELIVERY_TEMPORARY
