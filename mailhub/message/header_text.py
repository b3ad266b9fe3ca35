"""Header field octets -> text: the one rule for every reader (issue 12).

Mail headers are octets. RFC 5322 allows only US-ASCII, but mail carries more: raw UTF-8 is
legal since RFC 6532 (3.2: ``VCHAR`` extended by ``UTF8-non-ascii``, sent with SMTPUTF8,
RFC 6531), and old or broken software sends raw 8-bit octets in a charset nothing declares.
The rule:

* octets that form well-formed UTF-8 (RFC 3629) are read as UTF-8 (RFC 6532);
* every ill-formed stretch becomes U+FFFD, one per maximal subpart (the Unicode Standard's
  recommended practice, 3.9; Python's decoder follows it).

Why not guess Latin-1 or windows-1252 for the rest: it would name a charset nothing declared
(RFC 6532 allows raw UTF-8 only; RFC 2047 is how other charsets are declared), and it would
disagree with the readers mailhub shares mail with: the ``email`` package shows such octets
as U+FFFD (its header classes re-read surrogate escapes as UTF-8 with replacement), and so
does Dovecot. Keeping to the same reading means IMAP SEARCH, SORT, the web list and its search
all see the same text for the same octets.

The result always encodes as UTF-8 and JSON: UTF-8 decoding rejects encoded surrogates
(RFC 3629 3), so ED A0 80 is U+FFFD, and no surrogate escape ever leaks. ASCII octets decode
to themselves and end every multi-octet sequence, so the rule works octet run by octet run:
``from_escaped(raw.decode("ascii", "surrogateescape")) == from_bytes(raw)``. That is how text
from the ``email`` package (which parses octets as ASCII with surrogate escapes) is brought
under the same rule.

RFC 2047 encoded words declare their charset: ``in_charset`` decodes in it, and reads what
that charset cannot decode (everything, for an unknown charset) by the rule, as the ``email``
package does.

Where a protocol must return the octets as they are (IMAP ENVELOPE and BODY[HEADER],
RFC 3501 / RFC 6855; POP3 RETR), it does: this module is only for showing and matching.
"""

from __future__ import annotations

import re


def from_bytes(raw: bytes) -> str:
    """Header octets as text: UTF-8, each ill-formed stretch U+FFFD."""
    if raw.isascii():
        return raw.decode("ascii")
    return raw.decode("utf-8", "replace")


_ESCAPED = re.compile("[\udc80-\udcff]+")  # surrogateescape's stand-ins for octets >= 0x80
_SURROGATE = re.compile("[\ud800-\udfff]")


def _unescape_run(m: re.Match[str]) -> str:
    return from_bytes(bytes(ord(c) - 0xDC00 for c in m[0]))


def from_escaped(text: str) -> str:
    """Text decoded with surrogate escapes (by the ``email`` package, say) as ``from_bytes``
    reads its octets; a surrogate that stands for no octet (UTF-7 can decode to one) becomes
    U+FFFD."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub("\ufffd", _ESCAPED.sub(_unescape_run, text))


def in_charset(raw: bytes, charset: str | None) -> str:
    """Octets in a declared MIME charset (an RFC 2047 encoded word's) as text: what that
    charset cannot decode, and everything if it is unknown, read by the rule."""
    if charset:
        for errors in ("surrogateescape", "replace"):
            try:
                return from_escaped(raw.decode(charset, errors))
            except LookupError:  # unknown, or no text encoding ("base64")
                break
            except (UnicodeError, ValueError):
                continue  # surrogateescape stands for no octet below 0x80 (UTF-16, say)
    return from_bytes(raw)
