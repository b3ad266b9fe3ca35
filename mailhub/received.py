"""The ``Received:`` trace header (RFC 5321 4.4, RFC 3848 ``with`` keywords, RFC 5322 dates).

One home for both sides: SMTP renders it at delivery (``received_header``), the web page reads
the session facts back from the stored message (``parse_received``). Keep the two in step: the
round-trip tests in tests/test_received.py render and parse every field.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import lru_cache

from mailhub.addresses import AddressError, normalise_domain
from mailhub.envelope import Envelope

# What may appear as a bare token in the "from" clause without breaking the header grammar.
_UNSAFE = re.compile(r"[^\x21-\x7e]|[()\\;]")
# What may not appear inside a comment (RFC 5322 3.2.2 ctext): the login name is ours, but keep
# the header well-formed whatever it is.
_NOT_CTEXT = re.compile(r"[()\\\x00-\x20\x7f]")


@lru_cache(maxsize=1024)
def address_literal(ip: str) -> str:
    """RFC 5321 4.1.3: ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "[unknown]"
    if addr.version == 6:
        return f"[IPv6:{addr.compressed}]"
    return f"[{addr}]"


@lru_cache(maxsize=1024)
def _helo_token(helo: str) -> str:
    # The HELO argument is client-chosen text; keep it from smuggling header syntax, and keep
    # the header 7-bit even for a U-label HELO (A-label instead).
    if not helo.isascii():
        try:
            helo = normalise_domain(helo)
        except AddressError:
            return "unknown"
    helo = _UNSAFE.sub("", helo)
    return helo or "unknown"


@lru_cache(maxsize=4)
def _rfc5322_date(second: int) -> str:
    # Many messages arrive within one second: format each second once.
    return format_datetime(datetime.fromtimestamp(second, UTC))


def protocol_keyword(*, esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """RFC 3848 (ESMTP, ESMTPS, ESMTPA, ESMTPSA) and RFC 6531 3.7.3 (UTF8SMTP...)."""
    if smtputf8:
        base = "UTF8SMTP"
    elif esmtp:
        base = "ESMTP"
    else:
        return "SMTP"
    return base + ("S" if tls else "") + ("A" if authenticated else "")


def received_header(envelope: Envelope, *, authenticated_sender: bool = False) -> bytes:
    """The trace header for ``envelope``, folded, ending with CRLF.

    ``for`` is written only with a single recipient: with several, naming one would be wrong
    and naming all would leak Bcc recipients to every copy. ``authenticated_sender`` names the
    AUTH login as Postfix's ``smtpd_sasl_authenticated_header`` does (off by default: it tells
    every recipient the user's login name).
    """
    client = address_literal(envelope.client_address)
    rdns = envelope.client_name or "unknown"
    lines = [f"Received: from {_helo_token(envelope.helo)} ({rdns} {client})"]
    if authenticated_sender and envelope.authenticated_as:
        login = _NOT_CTEXT.sub("", envelope.authenticated_as)
        lines.append(f"\t(Authenticated sender: {login})")
    lines.append(
        f"\tby {envelope.server_name} (mailhub) with {envelope.protocol} id {envelope.queue_id}"
    )
    if envelope.tls:
        lines.append(f"\t(using {_UNSAFE.sub(' ', envelope.tls).strip()})")
    date = _rfc5322_date(int(envelope.received_at))
    if len(envelope.recipients) == 1:
        lines.append(f"\tfor <{envelope.recipients[0].address}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


@dataclass(frozen=True)
class ReceivedFacts:
    """What a ``Received:`` header mailhub wrote says about the session that delivered it."""

    helo: str
    client_address: str  # without brackets or the IPv6: tag; "unknown" when it was not known
    client_name: str  # "" when unknown
    server: str
    protocol: str  # RFC 3848 keyword: ESMTPS = TLS, ESMTPA = AUTH, ESMTPSA = both
    queue_id: str
    tls_cipher: str  # "" without TLS
    recipient: str  # written only for single-recipient messages (Bcc privacy)
    date: str
    authenticated_sender: str = ""  # written only with [smtp] received_auth_header

    @property
    def tls(self) -> bool:
        return "S" in self._suffix

    @property
    def authenticated(self) -> bool:
        return "A" in self._suffix

    @property
    def smtputf8(self) -> bool:
        return self.protocol.startswith("UTF8SMTP")

    @property
    def _suffix(self) -> str:
        # RFC 3848 / RFC 6531 3.7.3: the base keyword, then S (TLS) and A (AUTH). Plain
        # "SMTP" (HELO) has no suffix: its own S is not one.
        for base in ("UTF8SMTP", "ESMTP", "SMTP"):
            if self.protocol.startswith(base):
                return self.protocol[len(base) :]
        return ""


# RFC 5322 2.2.3: unfolding removes each CRLF that comes before white space; the white space
# stays. Our lines are folded with a tab, so tokens are separated by "[ \t]+" after unfolding.
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_RECEIVED = re.compile(
    r"[ \t]*from[ \t]+(?P<helo>\S+)[ \t]+\((?P<rdns>\S+)[ \t]+\[(?P<ip>[^\]]*)\]\)"
    r"(?:[ \t]+\(Authenticated sender: (?P<login>[^)]*)\))?"
    r"[ \t]+by[ \t]+(?P<server>\S+)[ \t]+\(mailhub\)[ \t]+with[ \t]+(?P<protocol>\S+)"
    r"[ \t]+id[ \t]+(?P<id>[^\s;]+)"
    r"(?:[ \t]+\(using (?P<tls>[^)]*)\))?"
    # The address is the client's: a quoted local part may hold ">" or ";" (RFC 5321 4.1.2),
    # so it ends at the last ">;" (the date holds neither).
    r"(?:[ \t]+for[ \t]+<(?P<rcpt>.*)>)?;[ \t]*(?P<date>.*?)[ \t\r\n]*\Z",
    re.DOTALL,
)


def parse_received(value: str) -> ReceivedFacts | None:
    """The facts of a ``Received:`` value (folded or not) that ``received_header`` wrote;
    None for one another MTA wrote (say nothing rather than guess)."""
    found = _RECEIVED.match(_FOLD.sub("", value))
    if found is None:
        return None
    g = found.groupdict()
    return ReceivedFacts(
        helo=g["helo"],
        client_address=g["ip"].removeprefix("IPv6:"),
        client_name="" if g["rdns"] == "unknown" else g["rdns"],
        server=g["server"],
        protocol=g["protocol"],
        queue_id=g["id"],
        tls_cipher=g["tls"] or "",
        recipient=g["rcpt"] or "",
        date=g["date"],
        authenticated_sender=g["login"] or "",
    )
