"""What the checks found, and the ``Authentication-Results:`` header that carries it (RFC 8601).

A ``MethodResult`` is one resinfo (RFC 8601 2.2): a method (``spf``, ``dkim``, ``dmarc``,
``arc``), its result keyword, a reason in plain words, and ``ptype.property=value`` pairs
(``smtp.mailfrom``, ``header.d``, ...; RFC 8601 2.3, 2.7). ``AuthenticationResults`` is the header
of one server (its authserv-id) with every resinfo, written by ``header_value``.

The web page and the API read these back from the stored message (``parse``), so the header is
the one record of what was found: a message judged once is shown the same way forever.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 8601 2.7: the result keywords per method.
SPF_RESULTS = frozenset(
    {"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror", "policy"}
)
DKIM_RESULTS = frozenset({"none", "pass", "fail", "policy", "neutral", "temperror", "permerror"})
DMARC_RESULTS = frozenset({"none", "pass", "fail", "temperror", "permerror"})
ARC_RESULTS = frozenset({"none", "pass", "fail"})

# RFC 2045 5.1 token: any printable US-ASCII but SPACE and tspecials.
_TOKEN = re.compile(rb"^[!#$%&\'*+\-.0-9A-Z^_`a-z{|}~]+$")
# RFC 8601 2.2: pvalue may also be [local-part] "@" domain-name without quotes.
_ADDRESS = re.compile(rb"^[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z.]*@[0-9A-Za-z][0-9A-Za-z.\-]*$")
_REASON_MAX = 300  # characters of a reason kept in the header (the header line stays readable)


@dataclass(frozen=True)
class MethodResult:
    """One method's result (RFC 8601 2.2 ``resinfo``)."""

    method: str
    result: str
    reason: str = ""
    properties: tuple[tuple[str, str], ...] = ()  # ("smtp.mailfrom", "a@b.example"), ...

    def property(self, name: str) -> str | None:
        for key, value in self.properties:
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class AuthenticationResults:
    """One ``Authentication-Results:`` header: our authserv-id and what each check found."""

    authserv_id: str
    results: tuple[MethodResult, ...] = ()

    def header_value(self) -> bytes:
        """The field value, folded one resinfo per line (no field name, no final CRLF)."""
        if not self.results:
            return _clean(self.authserv_id).encode() + b"; none"  # RFC 8601 2.2 no-result
        parts = [_clean(self.authserv_id).encode()]
        for r in self.results:
            words = [f"{r.method}={r.result}".encode()]
            if r.reason:
                words.append(b"reason=" + _quoted(_clean(r.reason)[:_REASON_MAX]))
            for key, value in r.properties:
                words.append(key.encode() + b"=" + _pvalue(_clean(value)))
            parts.append(b" ".join(words))
        return b";\r\n\t".join(parts)

    def header(self) -> bytes:
        """The whole field with its CRLF, ready to put on top of a message."""
        return b"Authentication-Results: " + self.header_value() + b"\r\n"


def _clean(text: str) -> str:
    """No CR, LF or NUL can reach a header from a value taken out of a message."""
    return text.replace("\r", " ").replace("\n", " ").replace("\0", " ")


def _quoted(text: str) -> bytes:
    raw = text.encode("utf-8", "replace")  # RFC 8601 2.2 allows UTF-8 (RFC 6532) in values
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _pvalue(text: str) -> bytes:
    raw = text.encode("utf-8", "replace")
    if raw and (_TOKEN.match(raw) or _ADDRESS.match(raw)):
        return raw
    return _quoted(text)
