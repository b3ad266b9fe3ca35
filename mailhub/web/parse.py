"""A stored message -> what the page and the API show: summary, detail, parts, trace facts.

Parsed with the standard library's ``email`` package (policy=default: RFC 2047 words decoded,
structured address headers). Stored messages are never rewritten; a malformed one still gets a
summary (its defects listed), never a traceback.

``email`` reads header octets as ASCII with surrogate escapes; every text that leaves this
module went through ``header_text.from_escaped``: raw UTF-8 (RFC 6532) is shown as such, other
8-bit octets as U+FFFD, and no surrogate reaches JSON or the folder cache (issue 12).
"""

from __future__ import annotations

import email
import email.policy
import json
import re
from dataclasses import asdict, dataclass, field
from email.headerregistry import AddressHeader, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime
from typing import Any

from mailhub.checks.explain import brief
from mailhub.message.header_text import from_escaped
from mailhub.message.headers import decode_words
from mailhub.received import parse_received

SNIPPET_LENGTH = 200


@dataclass(frozen=True)
class Address:
    name: str
    address: str


@dataclass(frozen=True)
class Attachment:
    part: str  # the part's index in walk() order: /messages/{id}/parts/{part}
    filename: str
    content_type: str
    size: int | None  # decoded octets; None in a list summary (mailhub.web.scan: not counted)
    content_id: str
    inline: bool


@dataclass(frozen=True)
class Summary:
    """What a message list shows; computed once per message (files never change)."""

    sender: Address | None
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    subject: str
    date: float | None  # the Date: header, seconds since the epoch
    message_id: str
    attachments: tuple[Attachment, ...]
    snippet: str
    # The top-most Authentication-Results field in brief (checks.explain.brief): authserv-id,
    # SPF, DKIM, DMARC; () without one. The API shows it only when the id is ours.
    auth: tuple[str, ...] = ()

    def json(self) -> dict[str, Any]:
        return {
            "from": asdict(self.sender) if self.sender else None,
            "to": [asdict(a) for a in self.to],
            "cc": [asdict(a) for a in self.cc],
            "subject": self.subject,
            "date": self.date,
            "message_id": self.message_id,
            "attachments": len(self.attachments),
            "snippet": self.snippet,
        }

    # The folder's ``mailhub-cache`` keeps summaries between runs and processes
    # (``Folder.cached``): a flat JSON array, read back without the ``email`` package.
    def encode(self) -> bytes:
        def address(a: Address | None) -> list[str] | None:
            return None if a is None else [a.name, a.address]

        return json.dumps(
            [
                address(self.sender),
                [address(a) for a in self.to],
                [address(a) for a in self.cc],
                self.subject,
                self.date,
                self.message_id,
                [
                    [a.part, a.filename, a.content_type, a.size, a.content_id, a.inline]
                    for a in self.attachments
                ],
                self.snippet,
                list(self.auth),
            ],
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Summary:
        items = json.loads(data)
        if b"\\ud" in data or b"\\uD" in data:  # an older version's record kept escapes
            items = _repaired(items)
        # A record of a version before the checks has no auth: none of ours could be there.
        sender, to, cc, subject, date, message_id, attachments, snippet, *auth = items
        return cls(
            sender=Address(*sender) if sender is not None else None,
            to=tuple(Address(*a) for a in to),
            cc=tuple(Address(*a) for a in cc),
            subject=subject,
            date=date,
            message_id=message_id,
            attachments=tuple(Attachment(*a) for a in attachments),
            snippet=snippet,
            auth=tuple(auth[0]) if auth else (),
        )


def _repaired(value: Any) -> Any:
    """Decoded JSON with every string brought under the header rule."""
    if isinstance(value, str):
        return from_escaped(value)
    if isinstance(value, list):
        return [_repaired(v) for v in value]
    return value


@dataclass(frozen=True)
class Trace:
    """The SMTP envelope and session facts, read back from the ``Return-Path:`` and topmost
    ``Received:`` headers mailhub writes at delivery (mailhub/received.py)."""

    mail_from: str | None = None
    helo: str = ""
    client_address: str = ""
    client_name: str = ""
    server: str = ""
    protocol: str = ""  # RFC 3848 keyword: ESMTPS = TLS, ESMTPA = AUTH, ESMTPSA = both
    queue_id: str = ""
    tls: bool = False
    tls_cipher: str = ""
    authenticated: bool = False
    smtputf8: bool = False
    recipient: str = ""  # written only for single-recipient messages (Bcc privacy)
    received: str = ""  # the date in the header


@dataclass
class Detail:
    summary: Summary
    headers: list[tuple[str, str]]
    text: str
    html: str  # unsanitised: the caller sanitises before showing it
    trace: Trace
    defects: list[str] = field(default_factory=list)


class _Unparsed(UnstructuredHeader, BaseHeader):
    """A field as plain text, whatever its name (as ``HeaderRegistry`` composes its classes)."""


class _Headers(HeaderRegistry):
    """``policy.default``'s header classes, but a value they raise on is parsed again with its
    encoded words decoded by the header rule, else taken as plain text: an RFC 2047 word that
    decodes to a lone surrogate (UTF-7 can) makes ``email.utils._sanitize`` raise, comments
    nested deeper than its parser recurses raise RecursionError, and in a Content-Type either
    would fail the whole parse. Words only ``email`` sees as such (it also takes one folded
    inside) are then left undecoded, marked with U+FFFD."""

    def __call__(self, name: str, value: str) -> BaseHeader:
        try:
            return super().__call__(name, value)
        except UnicodeEncodeError:
            value = decode_words(value.encode("utf-8", "surrogateescape"))
            try:
                return super().__call__(name, value)
            except (UnicodeEncodeError, RecursionError):
                pass
        except RecursionError:
            pass
        return _Unparsed(name, from_escaped(value).replace("=?", "=\ufffd?"))


POLICY = email.policy.default.clone(header_factory=_Headers())


def load(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=POLICY)


def _header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # a header the policy cannot parse: show it as it came
        return _raw_header(msg, name)
    return "" if value is None else _one_line(str(value))


def _raw_header(msg: Message, name: str) -> str:
    for k, v in msg.raw_items() if hasattr(msg, "raw_items") else msg.items():
        if k.lower() == name.lower():
            return _one_line(str(v))
    return ""


def _one_line(text: str) -> str:
    """A field's value on one line, as text by the header rule."""
    return re.sub(r"\s*[\r\n]+\s*", " ", from_escaped(text)).strip()


def _address(display_name: str, addr_spec: str) -> Address:
    return Address(from_escaped(display_name), from_escaped(addr_spec))


def _addresses(msg: EmailMessage, name: str) -> tuple[Address, ...]:
    try:
        header = msg.get(name)
        if header is None:
            return ()
        if isinstance(header, AddressHeader):
            return tuple(_address(a.display_name, a.addr_spec) for a in header.addresses)
    except Exception:  # a field the policy cannot parse
        pass
    # Not read as addresses (taken as plain text by _Headers, or unparsable): shown as it came.
    text = _raw_header(msg, name)
    return (Address("", text),) if text else ()


def _date(msg: Message) -> float | None:
    try:
        text = _raw_header(msg, "Date")
        return parsedate_to_datetime(text).timestamp() if text else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def content_text(part: Message) -> str:
    """A text part's content as str, whatever its declared charset says (one that decodes to
    surrogates, UTF-7 say, gives U+FFFD for them)."""
    try:
        return from_escaped(part.get_content())  # type: ignore[attr-defined]
    except (LookupError, UnicodeError, KeyError, ValueError, AssertionError):
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""


def filename(part: Message) -> str:
    """The part's file name (RFC 2231 or RFC 2047 encoded, or raw octets), "" if none."""
    try:
        return from_escaped(part.get_filename() or "")
    except Exception:
        return ""


def content_type(part: Message) -> str:
    return from_escaped(part.get_content_type())


def part_bytes(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _bodies(msg: EmailMessage) -> tuple[Message | None, Message | None]:
    try:
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
    except Exception:
        return None, None
    return text, html


def attachments(msg: EmailMessage) -> tuple[Attachment, ...]:
    """Every leaf part that is not the message's text or HTML body."""
    text, html = _bodies(msg)
    found = []
    for index, part in enumerate(msg.walk()):
        if part.is_multipart() or part is text or part is html:
            continue
        if index == 0 and part.get_content_maintype() == "text":
            continue  # a single-part text message whose body get_body() skipped (odd charset)
        disposition = (part.get_content_disposition() or "").lower()
        cid = _header(part, "Content-ID").strip("<> ")
        found.append(
            Attachment(
                part=str(index),
                filename=filename(part),
                content_type=content_type(part),
                size=len(part_bytes(part)),
                content_id=cid,
                inline=disposition == "inline" or (bool(cid) and disposition != "attachment"),
            )
        )
    return tuple(found)


def summarise(msg: EmailMessage) -> Summary:
    senders = _addresses(msg, "From")
    text, html = _bodies(msg)
    snippet = content_text(text) if text is not None else ""
    if not snippet and html is not None:
        snippet = re.sub(r"<[^>]*>", " ", content_text(html))
    return Summary(
        sender=senders[0] if senders else None,
        to=_addresses(msg, "To"),
        cc=_addresses(msg, "Cc"),
        subject=_header(msg, "Subject"),
        date=_date(msg),
        message_id=_header(msg, "Message-ID"),
        attachments=attachments(msg),
        snippet=" ".join(snippet.split())[:SNIPPET_LENGTH],
        auth=auth_brief(_raw_value(msg, "Authentication-Results")),
    )


def _raw_value(msg: Message, name: str) -> str | None:
    """The first ``name`` field's value as it came (surrogate escapes, folding kept)."""
    for k, v in msg.raw_items():
        if k.lower() == name.lower():
            return v if isinstance(v, str) else str(v)
    return None


def auth_brief(value: str | None) -> tuple[str, ...]:
    """``Summary.auth`` of the top-most Authentication-Results field's raw value."""
    return () if value is None else brief(value)


def body_text(msg: EmailMessage) -> str:
    """Text to search in: the plain part, else the HTML part without tags."""
    text, html = _bodies(msg)
    if text is not None:
        return content_text(text)
    if html is not None:
        return re.sub(r"<[^>]*>", " ", content_text(html))
    return ""


def trace(msg: Message) -> Trace:
    """Envelope facts from our own trace headers; empty facts when another MTA wrote them."""
    return_path = _raw_header(msg, "Return-Path")
    mail_from = return_path.strip().strip("<>") if return_path else None
    for name, value in msg.raw_items() if hasattr(msg, "raw_items") else msg.items():
        if name.lower() != "received":
            continue
        # The rule for header octets (mailhub.message.header_text): UTF-8 (an SMTPUTF8
        # recipient, RFC 6532 3.2), else U+FFFD.
        facts = parse_received(from_escaped(str(value)))
        if facts is None:
            break  # the topmost Received is not ours: say nothing rather than guess
        return Trace(
            mail_from=mail_from,
            helo=facts.helo,
            client_address=facts.client_address,
            client_name=facts.client_name,
            server=facts.server,
            protocol=facts.protocol,
            queue_id=facts.queue_id,
            tls=facts.tls,
            tls_cipher=facts.tls_cipher,
            authenticated=facts.authenticated,
            smtputf8=facts.smtputf8,
            recipient=facts.recipient,
            received=facts.date,
        )
    return Trace(mail_from=mail_from)


def detail(msg: EmailMessage) -> Detail:
    text_part, html_part = _bodies(msg)
    headers = [(k, _one_line(str(v))) for k, v in msg.raw_items()]
    defects = [type(d).__name__ for part in msg.walk() for d in part.defects]
    return Detail(
        summary=summarise(msg),
        headers=headers,
        text=content_text(text_part) if text_part is not None else "",
        html=content_text(html_part) if html_part is not None else "",
        trace=trace(msg),
        defects=defects,
    )


def find_part(msg: EmailMessage, part: str) -> Message | None:
    """The leaf part numbered ``part`` (walk() order), or None."""
    if not part.isdigit() or len(part) > 6:
        return None
    index = int(part)
    for i, p in enumerate(msg.walk()):
        if i == index:
            return None if p.is_multipart() else p
    return None
