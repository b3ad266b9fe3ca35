"""Submission fixes for what mail clients forget (RFC 6409 8), as an ``IMessageSink`` decorator.

``SubmissionSink(inner, hostname=..., clock=...)`` wraps the sink of a submission listener (587,
465) and, on the message's header section only:

- adds ``Date:`` (RFC 6409 8.2) and ``Message-ID: <unique@hostname>`` (RFC 6409 8.3) when the
  message has none, at the end of the header section, so the trace fields stay on top (RFC 5322
  3.6: field order carries no meaning apart from trace blocks);
- removes every ``Bcc:`` and ``Resent-Bcc:`` field with its continuation lines: the blind copies
  must not be shown to the other recipients (RFC 5322 3.6.3, 3.6.6).

The body is never held: it goes to the inner message in the chunks it arrives in. Nor is the
header section buffered: a field's fate (keep or drop) is known from its name, at the start of its
first line, and its continuation lines follow that fate, so header lines go on as they arrive too.
The only bytes held are the start of a line whose kind is not known yet (at most one line, RFC 5322
2.1.1's 998 octets plus CRLF). All of it works on bytes: SMTPUTF8 header values pass unchanged.

Every line is classified the same way, including the ``Received:`` trace field the receiver writes
first (it is just a header field here). A line is:

- a continuation line if it starts with SP or HTAB (folding, RFC 5322 2.2.3);
- a header field if it starts with a field name and a colon, with optional WSP before the colon
  (RFC 5322 3.6.8, and 4.5's obsolete ``Subject :``); names compare case-insensitively;
- the empty line (CRLF) that ends the header section;
- anything else (no colon, 8-bit text, a too-long "name") ends the header section and starts the
  body, as it does for MUAs that read it. Here the added fields and an empty line go in front of it,
  so a client that sent no header at all gets a well-formed message with an empty header section
  apart from ours (RFC 5322 3.5 allows the empty header section; the body stays byte-identical).

A message that ends inside its header section (no body) gets the added fields at ``commit``, after a
CRLF if its last line was unterminated. A field that exists but is empty (``Date:``) counts as
present: submission adds missing fields, it never rewrites a client's.

With ``may_send_as`` (``[smtp] restrict_sender``), the header's originator fields (RFC 5322 3.6.2)
get the rule MAIL FROM gets (``SubmissionPolicy.may_send_as``, one rule for both): every address
of every ``From:`` and ``Sender:`` field must be one the authenticated user may send as, or the
message is refused with 553 5.7.1 naming the address (``MessageRejected`` from ``commit``: the
receiver answers it at the end of DATA or after the LAST BDAT chunk, and nothing is stored).
These fields are the only header bytes held (up to ``MAX_ORIGINATOR_OCTETS``); they are parsed at
``commit``, in a worker thread (the stdlib address parser takes tens of milliseconds on odd
kilobytes). A field that is not clean address syntax (RFC 5322 3.4; obsolete forms and UTF-8 local
parts, RFC 6532, are fine) is refused too: a parser that guesses could read a different address
than the recipient's mail program shows. Display names are not judged (nor are they by any common
MSA). A message without any ``From:`` gets ``From: <MAIL FROM address>`` (RFC 6409 8.1: the MSA may
fix it; that address passed the same rule). ``Resent-*`` fields are not checked.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from email import errors as email_errors
from email.headerregistry import AddressHeader, HeaderRegistry
from email.utils import format_datetime
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhub.addresses import AddressError, Mailbox, parse_path
from mailhub.envelope import Envelope
from mailhub.interfaces import IIncomingMessage, IMessageSink, MessageRejected
from mailhub.message.header_text import from_bytes

# RFC 5322 3.6.8: field-name = 1*ftext, printable US-ASCII except ":"; 4.5.3 (obs-optional)
# allows WSP between the name and the colon.
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
# What may still become a field once more bytes arrive.
_FIELD_PREFIX = re.compile(rb"[\x21-\x39\x3b-\x7e]*[ \t]*")
# RFC 5322 3.2.3 dot-atom-text and 3.6.4 no-fold-literal, for the parts of a Message-ID.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM_TEXT = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_NO_FOLD_LITERAL = re.compile(r"\[[\x21-\x5a\x5e-\x7e]*\]")

# RFC 5322 2.1.1: a line is at most 998 octets plus CRLF. A "field name" not ended by a colon
# within that is no field name.
MAX_UNDECIDED = 1000

# RFC 5322 3.6.3 and 3.6.6: the blind recipients are no business of the other recipients.
REMOVED_FIELDS = frozenset({b"bcc", b"resent-bcc"})

# RFC 5322 3.6.2: the fields that say who sent the message, checked under restrict_sender.
ORIGINATOR_FIELDS = {b"from": "From", b"sender": "Sender"}
# Held to be checked: dozens of authors (a field is one line of <= 998 octets unless folded);
# beyond it the message is refused rather than the bytes kept. It also bounds the parser, whose
# cost grows faster than the field (4 KiB of the worst input: about half a second of a worker).
MAX_ORIGINATOR_OCTETS = 4 * 1024
# Defects of forms RFC 5322 4 and RFC 6532 allow; anything else is not clean syntax.
_TOLERATED_DEFECTS = (email_errors.ObsoleteHeaderDefect, email_errors.NonASCIILocalPartDefect)
_REGISTRY = HeaderRegistry()
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")

_CONTINUATION, _FIELD_LINE, _EMPTY, _NOT_HEADER = range(4)
_WSP = frozenset(b" \t")


def default_id_source(envelope: Envelope) -> str:
    """The id-left of a new Message-ID: the queue id (log correlation) and 64 random bits."""
    queue_id = re.sub(r"[^A-Za-z0-9]", "", envelope.queue_id)
    token = secrets.token_hex(8)
    return f"{queue_id}.{token}" if queue_id else token


def _header_text(value: bytes) -> str:
    """A raw field value as text: unfolded (RFC 5322 2.2.3), its octets by the one rule for
    header octets (``mailhub.message.header_text``: UTF-8, RFC 6532, else U+FFFD). Encoded
    words are left to the address parser (they may only appear in display names, RFC 2047 5)."""
    return from_bytes(value.replace(b"\r", b"").replace(b"\n", b""))


def originator_mailboxes(value: bytes) -> list[Mailbox]:
    """The mailboxes of a From/Sender field value (groups flattened, RFC 5322 3.4), each parsed
    as MAIL FROM's path is; ValueError (with a reason) when the value is not clean address-list
    syntax or names no mailbox."""
    try:
        header = _REGISTRY("From", _header_text(value))
        assert isinstance(header, AddressHeader)  # the registry's class for From
        defects = [d for d in header.defects if not isinstance(d, _TOLERATED_DEFECTS)]
        addresses = header.addresses
    except Exception as e:  # the stdlib parser reports defects, but this is client input
        raise ValueError("not address syntax") from e
    if defects:
        # The reason goes into the reply: printable and short (RFC 5321 4.5.3.1.5).
        reason = _UNPRINTABLE.sub("?", str(defects[0]))[:80].rstrip(".")
        raise ValueError(reason or "not address syntax")
    mailboxes = []
    for address in addresses:
        try:
            mailbox, _ = parse_path(f"<{address.addr_spec}>")
        except AddressError as e:
            raise ValueError(f"{address.addr_spec}: {e}") from None
        mailboxes.append(mailbox)
    if not mailboxes:
        raise ValueError("no address")
    return mailboxes


def _parse_originators(
    fields: list[tuple[bytes, bytes]],
) -> list[tuple[bytes, list[Mailbox] | str]]:
    """Each (name, whole field) as (name, its mailboxes or why they cannot be read). Pure: runs
    in a worker thread."""
    out: list[tuple[bytes, list[Mailbox] | str]] = []
    for name, field in fields:
        try:
            out.append((name, originator_mailboxes(field[field.index(b":") + 1 :])))
        except ValueError as e:
            out.append((name, str(e)))
    return out


def _classify(head: bytes) -> tuple[int, bytes] | None:
    """The kind of the line starting with ``head`` (and its lower-case field name), or None.

    None means "not known yet": ``head`` could still become a field name and colon.
    """
    if head[:1] in (b" ", b"\t"):
        return _CONTINUATION, b""
    if head.startswith((b"\r\n", b"\n")):
        return _EMPTY, b""
    m = _FIELD.match(head)
    if m is not None:
        return _FIELD_LINE, m.group(1).lower()
    undecided = head == b"\r" or _FIELD_PREFIX.fullmatch(head) is not None
    if undecided and len(head) <= MAX_UNDECIDED:
        return None
    return _NOT_HEADER, b""


@implementer(IMessageSink)
class SubmissionSink:
    """Wraps ``inner`` so each message gets the RFC 6409 8 fixes (see the module docstring).

    ``hostname`` is the Message-ID's right-hand side (a dot-atom such as ``mail.example.org``);
    ``clock`` dates messages that lack a ``Date:``; ``id_source(envelope)`` makes the Message-ID's
    left-hand side (a dot-atom, unique: the default is queue id plus 64 random bits).
    ``may_send_as(user, mailbox)``, when given, is the restrict_sender rule the header's From and
    Sender addresses must pass for the authenticated user (``SubmissionPolicy.may_send_as``);
    ``run(f, *args)`` parses them in a worker thread (a Deferred; tests run it inline).
    """

    def __init__(
        self,
        inner: IMessageSink,
        *,
        hostname: str,
        clock: IReactorTime,
        id_source: Callable[[Envelope], str] = default_id_source,
        may_send_as: Callable[[str, Mailbox], bool] | None = None,
        run: Callable[..., Deferred[Any]] = deferToThread,
        log: Logger | None = None,
    ) -> None:
        if not (_DOT_ATOM_TEXT.fullmatch(hostname) or _NO_FOLD_LITERAL.fullmatch(hostname)):
            raise ValueError(f"hostname {hostname!r} cannot be the right side of a Message-ID")
        self._inner = inner
        self.hostname = hostname
        self._clock = clock
        self._id_source = id_source
        self.may_send_as = may_send_as
        self.run = run
        self.log = log if log is not None else Logger(namespace="mailhub.smtp.submission")

    def open(self, envelope: Envelope) -> IIncomingMessage:
        return _SubmissionMessage(self._inner.open(envelope), envelope, self)

    def message_id(self, envelope: Envelope) -> bytes:
        """A new ``<id-left@hostname>`` (RFC 5322 3.6.4)."""
        left = self._id_source(envelope)
        if not _DOT_ATOM_TEXT.fullmatch(left):
            raise ValueError(f"id_source gave {left!r}, not a dot-atom")
        return f"<{left}@{self.hostname}>".encode("ascii")

    def date(self) -> bytes:
        """Now, as an RFC 5322 3.3 date-time in UTC."""
        when = datetime.fromtimestamp(self._clock.seconds(), UTC)
        return format_datetime(when).encode("ascii")


@implementer(IIncomingMessage)
class _SubmissionMessage:
    """One message through ``SubmissionSink``: fixes the header section, passes the body on."""

    def __init__(self, inner: IIncomingMessage, envelope: Envelope, sink: SubmissionSink) -> None:
        self._inner = inner
        self.envelope = envelope
        self._sink = sink
        self._in_header = True
        self._pending = b""  # the start of a line whose kind is not known yet
        self._in_line = False  # inside a line whose kind is known; it follows self._keep
        self._keep = True  # the current field's fate: pass on (True) or drop (a Bcc field)
        self._has_message_id = False
        self._has_date = False
        self._removed = 0
        # Originator fields to check once the header section ends: (name, raw field pieces).
        self._check = sink.may_send_as is not None and envelope.authenticated_as is not None
        self._originators: list[tuple[bytes, list[bytes]]] = []
        self._capture: list[bytes] | None = None  # the pieces of the field being read
        self._held = 0  # octets in self._originators

    def write(self, data: bytes) -> None:
        if not self._in_header:
            self._inner.write(data)  # the body: straight through, no copy
            return
        out = self._header(data)
        if out:
            self._inner.write(out)

    def ready(self) -> Deferred[None] | None:
        return self._inner.ready()

    def commit(self) -> Deferred:
        if self._in_header:
            try:
                out = self._header(b"", final=True)
                if out:
                    self._inner.write(out)
            except Exception:
                # The receiver drops its reference once it has called commit: clean up here.
                f = fail()
                self._inner.abort()
                return f
        if not self._originators:
            return self._inner.commit()
        # Parsing is CPU work that grows faster than the field (tens of milliseconds for odd
        # kilobytes): a worker does it. Deciding (the alias lookups) stays on this thread.
        fields = [(name, b"".join(pieces)) for name, pieces in self._originators]
        self._originators = []
        if self._held > MAX_ORIGINATOR_OCTETS:
            d = fail(MessageRejected(553, "5.7.1", "Error: From/Sender header too long to check"))
        else:
            d = self._sink.run(_parse_originators, fields)
            d.addCallback(self._check_originators)
        d.addErrback(self._refused)
        d.addCallback(lambda _: self._inner.commit())
        return d

    def _refused(self, f: Failure) -> Failure:
        self._inner.abort()  # nothing of a refused message is stored
        return f

    def abort(self) -> None:
        self._pending = b""
        self._inner.abort()

    def _header(self, data: bytes, final: bool = False) -> bytes:
        """Filter header-section bytes; returns what goes on (header lines, then maybe body)."""
        out: list[bytes] = []
        pos, n = 0, len(data)
        while pos < n:
            if self._in_line:
                # The rest of a line whose fate is known.
                j = data.find(b"\n", pos)
                end = n if j < 0 else j + 1
                if self._keep:
                    out.append(data[pos:end])
                if self._capture is not None:
                    self._hold(data[pos:end])
                self._in_line = j < 0
                pos = end
                continue
            # A line start: classify it from what is held plus enough new bytes to decide.
            held = self._pending
            look = data[pos : pos + MAX_UNDECIDED + 2]
            kind = _classify(held + look if held else look)
            if kind is None:
                # ``look`` holds no LF (or the line would be decided): keep it, wait for more.
                self._pending = held + look
                pos += len(look)
                continue
            self._pending = b""
            what, name = kind
            if what != _CONTINUATION:
                self._capture = None  # a continuation line belongs to the field before it
            if what == _FIELD_LINE:
                if self._check and name in ORIGINATOR_FIELDS:
                    self._capture = []
                    self._originators.append((name, self._capture))
                    self._hold(held)
                self._keep = name not in REMOVED_FIELDS
                if not self._keep:
                    self._removed += 1
                elif name == b"message-id":
                    self._has_message_id = True
                elif name == b"date":
                    self._has_date = True
            elif what != _CONTINUATION:  # the end of the header section
                self._end_header(out, blank_line=what == _NOT_HEADER)
                out.append(held)
                out.append(data[pos:] if pos else data)
                return b"".join(out)
            # A continuation line keeps the fate of its field (one at the very top is kept).
            if self._keep:
                out.append(held)
            if self._capture is not None and what == _CONTINUATION:
                self._hold(held)
            self._in_line = True
        if final:
            if self._pending:
                # An unterminated last line that never became a field: it is the body.
                self._end_header(out, blank_line=True)
                out.append(self._pending)
                self._pending = b""
            else:
                if self._in_line and self._keep:
                    out.append(b"\r\n")  # terminate a last field that lacked its CRLF
                self._end_header(out, blank_line=False)
        return b"".join(out)

    def _hold(self, piece: bytes) -> None:
        assert self._capture is not None
        self._held += len(piece)
        if self._held <= MAX_ORIGINATOR_OCTETS:  # beyond it the message is refused anyway
            self._capture.append(piece)

    def _check_originators(self, parsed: list[tuple[bytes, list[Mailbox] | str]]) -> None:
        """Raise MessageRejected unless every From/Sender address passes ``may_send_as``."""
        may_send_as = self._sink.may_send_as
        user = self.envelope.authenticated_as
        assert may_send_as is not None and user is not None
        for name, mailboxes in parsed:
            label = ORIGINATOR_FIELDS[name]
            if isinstance(mailboxes, str):
                text = f"Error: cannot check the {label} header: {mailboxes} (RFC 5322 3.6.2)"
                raise MessageRejected(553, "5.7.1", text)
            for mailbox in mailboxes:
                if not may_send_as(user, mailbox):
                    raise MessageRejected(
                        553,
                        "5.7.1",
                        f"Error: {label} header address <{mailbox.written}> "
                        "not owned by the authenticated user",
                    )

    def _end_header(self, out: list[bytes], *, blank_line: bool) -> None:
        self._in_header = False
        added: list[str] = []
        sender = self.envelope.mail_from
        if self._check and sender and all(n != b"from" for n, _ in self._originators):
            # RFC 6409 8.1: the MSA may fix the header; MAIL FROM passed the same rule.
            out.append(b"From: " + sender.encode("utf-8") + b"\r\n")
            added.append("From")
        if not self._has_date:
            out.append(b"Date: " + self._sink.date() + b"\r\n")
            added.append("Date")
        if not self._has_message_id:
            out.append(b"Message-ID: " + self._sink.message_id(self.envelope) + b"\r\n")
            added.append("Message-ID")
        if blank_line:
            out.append(b"\r\n")  # RFC 5322 2.1: an empty line separates header and body
        if added or self._removed:
            self._sink.log.debug(
                "{queue_id}: submission added {added}, removed {removed} Bcc field(s)",
                queue_id=self.envelope.queue_id,
                added=added,
                removed=self._removed,
            )
