"""Serialising IMAP data items for responses (RFC 3501 section 9 formal syntax): bytes in, bytes
out, no protocol state."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, tzinfo

from mailhub.store.names import INBOX, encode_mutf7

# RFC 3501 9: quoted strings may carry at most this much; longer values go as literals. (The
# grammar has no limit; clients' line buffers do, and Dovecot switches at a similar size.)
MAX_QUOTED = 1000

# atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0x00, 0x20)) | {0x7F}
# ASTRING-CHAR = ATOM-CHAR / resp-specials: "]" is allowed in an astring atom
_ASTRING_SPECIALS = _ATOM_SPECIALS - {ord("]")}

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# U+FFFD REPLACEMENT CHARACTER in UTF-8: what a NUL in a string becomes (see ``string``)
REPLACEMENT = "\ufffd".encode()


def message_octets(chunk: bytes) -> bytes:
    """Message octets for a non-BINARY FETCH literal (BODY[...], RFC822...). RFC 3501 9: a
    literal is CHAR8 (%x01-ff) and NUL can only go in an RFC 3516 literal8, so a NUL is sent
    as 0x80, as Dovecot sends it; the count of octets stays what it was."""
    if b"\0" in chunk:  # memchr: the common message pays nothing more
        return chunk.replace(b"\0", b"\x80")
    return chunk


def quoted(s: bytes) -> bytes:
    """``"..."`` with ``\\`` and ``"`` escaped; the caller knows s has no CR, LF or NUL."""
    return b'"' + s.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def literal(s: bytes) -> bytes:
    """A synchronising literal as the server sends it: ``{n}\\r\\n`` and the octets."""
    return b"{%d}\r\n" % len(s) + s


def _quotable(s: bytes, utf8: bool) -> bool:
    if len(s) > MAX_QUOTED or b"\r" in s or b"\n" in s or b"\0" in s:
        return False
    if s.isascii():
        return True
    if not utf8:  # RFC 3501: TEXT-CHAR is 7-bit; 8-bit only in literals (or RFC 6855 UTF8=ACCEPT)
        return False
    try:
        s.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def string(s: bytes, *, utf8: bool = False) -> bytes:
    """RFC 3501 ``string``: quoted when that is possible, else a literal."""
    if _quotable(s, utf8):
        if b"\\" in s or b'"' in s:
            s = s.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + s + b'"'
    if b"\0" in s:
        # RFC 3501 9: CHAR8 = %x01-ff, no NUL in a literal (only RFC 3516 literal8 carries
        # one). A NUL in a header shows as U+FFFD, as Dovecot shows it.
        s = s.replace(b"\0", REPLACEMENT)
    return b"{%d}\r\n" % len(s) + s


def nstring(s: bytes | None, *, utf8: bool = False) -> bytes:
    """RFC 3501 ``nstring``: NIL for None."""
    return b"NIL" if s is None else string(s, utf8=utf8)


def is_atom(s: bytes) -> bool:
    """True if s is a non-empty RFC 3501 ``atom``."""
    return bool(s) and s.isascii() and not any(c in _ATOM_SPECIALS for c in s)


def astring(s: bytes, *, utf8: bool = False) -> bytes:
    """RFC 3501 ``astring``: as a bare atom when it is one, else a string. "NIL" is quoted so
    that no client can take it for nil."""
    if s and s.isascii() and s.upper() != b"NIL" and not any(c in _ASTRING_SPECIALS for c in s):
        return s
    return string(s, utf8=utf8)


def mailbox_name(name: str) -> bytes:
    """A mailbox name on the wire: modified UTF-7 (RFC 3501 5.1.3) as an astring; INBOX (any
    case, RFC 3501 5.1) as ``INBOX``."""
    if name.upper() == INBOX:
        return b"INBOX"
    return astring(encode_mutf7(name).encode("ascii"))


def paren(items: Iterable[bytes]) -> bytes:
    """A parenthesised list: ``(a b c)``."""
    return b"(" + b" ".join(items) + b")"


def flag_list(flags: Iterable[str]) -> bytes:
    """``(\\Seen $Forwarded)``: flags are atoms (or ``\\`` + atom), sent as they are."""
    return paren(f.encode("ascii") for f in flags)


def format_date_time(ts: float, tz: tzinfo | None = None) -> bytes:
    """RFC 3501 ``date-time`` without the quotes: ``17-Jul-1996 02:44:25 -0700``; the day is
    date-day-fixed (a space before a one-digit day). tz None means the server's local zone."""
    if tz is None:
        dt = datetime.fromtimestamp(ts).astimezone()
    else:
        dt = datetime.fromtimestamp(ts, tz)
    offset = dt.utcoffset()
    minutes = int(offset.total_seconds()) // 60 if offset is not None else 0
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    text = (
        f"{dt.day:2d}-{_MONTHS[dt.month - 1]}-{dt.year:04d} "
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}"
    )
    return text.encode("ascii")


def internaldate(ts: float, tz: tzinfo | None = None) -> bytes:
    """INTERNALDATE value (RFC 3501 7.4.2): ``"17-Jul-1996 02:44:25 -0700"``."""
    return b'"' + format_date_time(ts, tz) + b'"'


__all__ = [
    "MAX_QUOTED",
    "astring",
    "flag_list",
    "format_date_time",
    "internaldate",
    "is_atom",
    "literal",
    "mailbox_name",
    "message_octets",
    "nstring",
    "paren",
    "quoted",
    "string",
]
