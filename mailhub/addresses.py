"""RFC 5321 paths and ESMTP parameters, with RFC 6531 (SMTPUTF8) addresses.

Only parsing and normalisation lives here: whether an address is *acceptable* is policy
(``mailhub.smtp.policy``), and which reply code an error earns is the protocol's business.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna  # IDNA 2008 / UTS 46; installed with twisted[tls]


class AddressError(ValueError):
    """The path is not RFC 5321 (RFC 6531) syntax."""


class UsageError(ValueError):
    """The command argument is not of the form ``FROM:<path>`` / ``TO:<path>``."""


class ParameterError(ValueError):
    """An ESMTP parameter list that is not ``KEY[=VALUE] *(SP KEY[=VALUE])``."""

    def __init__(self, message: str, duplicate: bool = False) -> None:
        super().__init__(message)
        self.duplicate = duplicate


# --- RFC 5321 4.1.2 grammar, extended by RFC 6531 3.3 with UTF8-non-ascii -------------------
_UTF8 = "\u0080-\U0010ffff"
_ATEXT = "A-Za-z0-9!#$%&'*+\\-/=?^_`{|}~" + _UTF8
_ATOM = f"[{_ATEXT}]+"
_DOT_STRING = f"{_ATOM}(?:\\.{_ATOM})*"
# qtextSMTP = %d32-33 / %d35-91 / %d93-126; quoted-pairSMTP = "\" %d32-126
_QUOTED = f'"(?:[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e{_UTF8}]|\\\\[\\x20-\\x7e])*"'
_LETDIG = "A-Za-z0-9" + _UTF8
_SUB_DOMAIN = f"[{_LETDIG}](?:[{_LETDIG}-]*[{_LETDIG}])?"
_DOMAIN = f"{_SUB_DOMAIN}(?:\\.{_SUB_DOMAIN})*"
# address-literal: "[" dcontent "]" with dcontent = %d33-90 / %d94-126; checked further below.
_LITERAL = "\\[[\\x21-\\x5a\\x5e-\\x7e]+\\]"
# A-d-l: a source route, RFC 5321 4.1.2 says accept and ignore it (Appendix C).
_ADL = f"@{_DOMAIN}(?:,@{_DOMAIN})*:"

_PATH = re.compile(
    f"<(?:{_ADL})?(?P<mailbox>(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL}))>"
)
_DOT_STRING_FULL = re.compile(f"{_DOT_STRING}\\Z")
_QUOTED_PAIR = re.compile(r"\\(.)")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
# esmtp-value = 1*(%d33-60 / %d62-126), plus UTF8-non-ascii under RFC 6531 3.3.
_VALUE = re.compile(f"[\\x21-\\x3c\\x3e-\\x7e{_UTF8}]+\\Z")

# RFC 5321 4.5.3.1.3: a path is at most 256 octets including the angle brackets.
MAX_PATH_OCTETS = 256


@dataclass(frozen=True)
class Mailbox:
    """A parsed mailbox.

    ``local`` is the local part's value (quotes and quoted-pairs removed, case kept); ``domain``
    is lower-case with IDNA A-labels, or an address literal as written (``[192.0.2.1]``), or ""
    for the special ``<Postmaster>`` recipient (RFC 5321 4.1.1.3). ``written`` is the mailbox as
    the client wrote it, without the source route.
    """

    local: str
    domain: str
    written: str

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith("[")

    @property
    def needs_smtputf8(self) -> bool:
        return not self.written.isascii()

    def __str__(self) -> str:
        local = quote_local_part(self.local)
        return f"{local}@{self.domain}" if self.domain else local


def quote_local_part(value: str) -> str:
    """The shortest RFC 5321 form of a local part: a Dot-string if possible, else quoted."""
    if _DOT_STRING_FULL.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def normalise_domain(domain: str) -> str:
    """Lower-case, IDNA A-label form of a domain; raises AddressError if it cannot be."""
    if domain.isascii():
        domain = domain.lower()
        if "xn--" in domain:
            # Validate A-labels too: a bogus xn-- label would otherwise become a directory name.
            try:
                idna.decode(domain)
            except idna.IDNAError as e:
                raise AddressError(f"invalid A-label in domain: {e}") from None
    else:
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as e:
            raise AddressError(f"invalid internationalised domain: {e}") from None
    # RFC 1035 2.3.4 (via RFC 5321 4.5.3.1.2): labels of 63 octets, names of 255.
    if len(domain) > 255 or any(len(label) > 63 for label in domain.split(".")):
        raise AddressError("domain name too long")
    return domain


def _check_literal(literal: str) -> str:
    """RFC 5321 4.1.3 address literals: IPv4, or IPv6 with its tag. Returns the canonical form."""
    inner = literal[1:-1]
    try:
        if inner[:5].upper() == "IPV6:":
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        # General-address-literal tags must be registered; none is but IPv6.
        raise AddressError(f"invalid address literal {literal}") from None


def parse_path(text: str) -> tuple[Mailbox, str]:
    """Parse ``<[source-route:]local@domain>`` at the start of text; return it and the rest."""
    m = _PATH.match(text)
    if m is None:
        raise AddressError("invalid address syntax")
    if len(text[: m.end()].encode("utf-8")) > MAX_PATH_OCTETS:
        raise AddressError("path too long (RFC 5321 4.5.3.1.3)")
    local = m.group("local")
    if local.startswith('"'):
        local = _QUOTED_PAIR.sub(r"\1", local[1:-1])
    domain = m.group("domain")
    if domain.startswith("["):
        domain = _check_literal(domain)
    else:
        domain = normalise_domain(domain)
    return Mailbox(local, domain, m.group("mailbox")), text[m.end() :]


def _split_verb_argument(arg: str, keyword: str, usage: str) -> str:
    n = len(keyword)
    if arg[:n].upper() != keyword:
        raise UsageError(usage)
    # RFC 5321 forbids a space after the colon, but many clients send one; it is harmless.
    return arg[n:].lstrip(" ")


def parse_mail_from(arg: str) -> tuple[Mailbox | None, dict[str, str | None]]:
    """``FROM:<path> [params]`` -> (mailbox, or None for the null path ``<>``; parameters)."""
    rest = _split_verb_argument(arg, "FROM:", "MAIL FROM:<address>")
    if rest.startswith("<>"):
        mailbox, rest = None, rest[2:]
    else:
        mailbox, rest = parse_path(rest)
    return mailbox, _parameters_after_path(rest)


def parse_rcpt_to(arg: str) -> tuple[Mailbox, dict[str, str | None]]:
    """``TO:<path> [params]``; ``<Postmaster>`` without a domain is allowed (RFC 5321 4.1.1.3)."""
    rest = _split_verb_argument(arg, "TO:", "RCPT TO:<address>")
    if rest[:12].lower() == "<postmaster>":
        mailbox, rest = Mailbox("postmaster", "", rest[1:11]), rest[12:]
    else:
        mailbox, rest = parse_path(rest)
    return mailbox, _parameters_after_path(rest)


def _parameters_after_path(rest: str) -> dict[str, str | None]:
    if not rest:
        return {}
    if rest[0] != " ":
        raise AddressError("garbage after address")
    return parse_parameters(rest)


def parse_parameters(text: str) -> dict[str, str | None]:
    """RFC 5321 4.1.2 ``esmtp-param *(SP esmtp-param)``; keywords upper-cased, values as sent.

    Values stay encoded (xtext where the extension says so): only the extension knows.
    """
    params: dict[str, str | None] = {}
    for token in text.split(" "):
        if not token:
            continue  # tolerate doubled spaces
        key, eq, value = token.partition("=")
        if not _KEYWORD.match(key):
            raise ParameterError(f"invalid parameter keyword {key!r}")
        if eq and not _VALUE.match(value):
            raise ParameterError(f"invalid value for {key.upper()}")
        key = key.upper()
        if key in params:
            raise ParameterError(f"duplicate parameter {key}", duplicate=True)
        params[key] = value if eq else None
    return params


_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")
_XCHAR = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")


def xtext_decode(value: str) -> str:
    """Decode RFC 3461 4 xtext (``+2B`` for ``+``), as used by AUTH= (RFC 4954) and DSN."""
    if not _XCHAR.match(value):
        raise ParameterError("invalid xtext")
    raw = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), value).encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ParameterError("xtext is not UTF-8") from None


def xtext_encode(value: str) -> str:
    return "".join(
        chr(b) if 0x21 <= b <= 0x7E and b not in (0x2B, 0x3D) else f"+{b:02X}"
        for b in value.encode("utf-8")
    )
