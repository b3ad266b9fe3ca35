"""Header field syntax: unfolding, field splitting, MIME parameters (RFC 2045, RFC 2231
continuations), address lists (RFC 5322 3.4, groups; as IMAP's ENVELOPE and SEARCH see them),
RFC 2047 encoded words. Used by IMAP, the web page and the API.

Everything is bytes in and tolerant: garbage yields a best effort, never an exception."""

from __future__ import annotations

import base64
import binascii
import re
from itertools import pairwise

from mailhub.message.header_text import from_bytes, in_charset

# -- unfolding ------------------------------------------------------------------------------


def unfold(value: bytes) -> bytes:
    """RFC 5322 2.2.3: unfolding removes the CRLF (or bare LF) before continuation whitespace;
    the whitespace after the colon goes too, the rest stays (as Dovecot shows it)."""
    if b"\n" in value:
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    return value.lstrip(b" \t").rstrip(b"\r")


_FIELD = re.compile(rb"([^:\s]+)[ \t]*:")


def split_fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """The fields of a header block as (name, raw value with folding) pairs, in order; lines
    that are neither fields nor continuations are skipped (as Dovecot does)."""
    fields: list[tuple[bytes, bytes]] = []
    name: bytes | None = None
    value: list[bytes] = []
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if name is not None:
                value.append(line)
            continue
        if name is not None:
            fields.append((name, b"".join(value)))
            name = None
        if line in (b"\r\n", b"\n"):
            break
        m = _FIELD.match(line)
        if m:
            name = m.group(1)
            value = [line[m.end() :]]
    if name is not None:
        fields.append((name, b"".join(value)))
    return fields


# -- MIME parameters ------------------------------------------------------------------------

_TSPECIALS = b'()<>@,;:\\"/[]?='


def _skip_cfws(s: bytes, i: int) -> int:
    n = len(s)
    while i < n:
        c = s[i]
        if c in b" \t\r\n":
            i += 1
        elif c == 0x28:  # "(" comment, nested
            i = _skip_comment(s, i)
        else:
            break
    return i


def _token(s: bytes, i: int) -> tuple[bytes, int]:
    j = i
    n = len(s)
    while j < n and s[j] > 0x20 and s[j] not in _TSPECIALS and s[j] != 0x7F:
        j += 1
    return s[i:j], j


def _quoted_string(s: bytes, i: int) -> tuple[bytes, int]:
    """s[i] is the opening quote; returns the unescaped content (unterminated: to the end)."""
    out = bytearray()
    i += 1
    n = len(s)
    while i < n:
        c = s[i]
        if c == 0x22:
            return bytes(out), i + 1
        if c == 0x5C and i + 1 < n:
            i += 1
            c = s[i]
        if c not in (0x0D, 0x0A):
            out.append(c)
        i += 1
    return bytes(out), i


def parse_content_type(value: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None:
    """``type/subtype; params`` -> (type, subtype, params) with case as sent; None if the value
    is not a valid media type (the caller then uses the default, RFC 2045 5.2)."""
    s = unfold(value)
    i = _skip_cfws(s, 0)
    mtype, i = _token(s, i)
    i = _skip_cfws(s, i)
    if not mtype or i >= len(s) or s[i] != 0x2F:
        return None
    i = _skip_cfws(s, i + 1)
    subtype, i = _token(s, i)
    if not subtype:
        return None
    return mtype, subtype, parse_params(s, i)


def parse_disposition(value: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    """``attachment; filename=x`` -> (type, params); None when there is no type token."""
    s = unfold(value)
    i = _skip_cfws(s, 0)
    dtype, i = _token(s, i)
    if not dtype:
        return None
    return dtype, parse_params(s, i)


def parse_params(s: bytes, i: int) -> list[tuple[bytes, bytes]]:
    """``; name=value`` pairs from position i; RFC 2231 continuations joined (see below)."""
    raw: list[tuple[bytes, bytes]] = []
    n = len(s)
    while i < n:
        i = _skip_cfws(s, i)
        if i >= n:
            break
        if s[i] != 0x3B:  # ";" -- junk between parameters: skip to the next ";"
            j = s.find(b";", i)
            if j < 0:
                break
            i = j
        i = _skip_cfws(s, i + 1)
        name, i = _token(s, i)
        i = _skip_cfws(s, i)
        if not name or i >= n or s[i] != 0x3D:
            continue
        i = _skip_cfws(s, i + 1)
        if i < n and s[i] == 0x22:
            val, i = _quoted_string(s, i)
        else:
            val, i = _token(s, i)
        raw.append((name, val))
    return _join_rfc2231(raw)


_SEGMENT = re.compile(rb"^(.+?)\*(\d+)(\*?)$")


def _join_rfc2231(params: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """RFC 2231 3: ``name*0=a; name*1=b`` -> ``name=ab``; when a segment is extended
    (``name*0*=utf-8''%C3``) the result is one extended parameter ``name*`` with the segments
    joined still encoded, which clients decode as a single RFC 2231 value."""
    if not any(b"*" in name for name, _ in params):
        return params
    # as Dovecot: the plain parameters first, then the RFC 2231 ones in order of appearance
    plain: list[tuple[bytes, bytes]] = []
    starred: list[bytes | tuple[bytes, bytes]] = []  # a parameter, or the base of segments
    groups: dict[bytes, list[tuple[int, bool, bytes]]] = {}
    for name, val in params:
        m = _SEGMENT.match(name)
        if m is None:
            (starred if name.endswith(b"*") else plain).append((name, val))
            continue
        base = m.group(1).lower()
        if base not in groups:
            groups[base] = []
            starred.append(m.group(1))
        groups[base].append((int(m.group(2)), bool(m.group(3)), val))
    out = plain
    for item in starred:
        if isinstance(item, tuple):
            out.append(item)
            continue
        segments = sorted(groups[item.lower()], key=lambda seg: seg[0])
        extended = any(ext for _, ext, _ in segments)
        if not extended:
            out.append((item, b"".join(v for _, _, v in segments)))
            continue
        parts = []
        for idx, (_, ext, val) in enumerate(segments):
            if idx == 0 and not ext:
                val = b"''" + val  # the first segment carries charset'language'
            parts.append(val if ext else _percent_encode(val))
        out.append((item + b"*", b"".join(parts)))
    return out


def _percent_encode(val: bytes) -> bytes:
    return b"".join(
        bytes([c]) if c > 0x20 and c < 0x7F and c not in b"%'*" else b"%%%02X" % c for c in val
    )


# -- addresses (RFC 5322 3.4) for ENVELOPE ---------------------------------------------------

# An address as ENVELOPE renders it: (name, adl, mailbox, host), each bytes or None.
Address = tuple[bytes | None, bytes | None, bytes | None, bytes | None]

MISSING_MAILBOX = b"MISSING_MAILBOX"  # Dovecot's placeholders, which clients already know
MISSING_DOMAIN = b"MISSING_DOMAIN"


_TOKEN = re.compile(
    rb'[ \t\r\n]+|"((?:[^"\\]|\\.)*)"?|(\[[^\]]*\]?)|([<>@,;:.])|(\()'
    rb'|([^ \t\r\n()<>@,;:."\[\]\\]+)|.',
    re.DOTALL,
)
_ESCAPED = re.compile(rb"\\(.)", re.DOTALL)


def _skip_comment(s: bytes, i: int) -> int:
    """s[i] is "(": the index after its matching ")" (nested, quoted-pair aware) or the end."""
    depth = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == 0x5C:
            i += 2
            continue
        if c == 0x28:
            depth += 1
        elif c == 0x29:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


class _Tokens:
    """A small RFC 5322 lexer: specials, quoted strings (unescaped), domain literals, atoms;
    whitespace and (nested) comments are skipped; a stray character is dropped."""

    def __init__(self, s: bytes) -> None:
        items: list[tuple[str, bytes]] = []
        self.items = items
        i, n = 0, len(s)
        match = _TOKEN.match
        while i < n:
            m = match(s, i)
            assert m is not None  # the last alternative matches any octet
            kind = m.lastindex
            if kind == 1:
                val = m.group(1)
                if b"\\" in val:
                    val = _ESCAPED.sub(rb"\1", val)
                items.append(("q", val.replace(b"\r", b"").replace(b"\n", b"")))
            elif kind == 2:
                items.append(("a", m.group(2)))
            elif kind == 3:
                items.append((m.group(3).decode("ascii"), m.group(3)))
            elif kind == 4:
                end = _skip_comment(s, i)
                inner = s[i + 1 : end - 1 if s[end - 1 : end] == b")" else end]
                items.append(("c", inner))
                i = end
                continue
            elif kind == 5:
                items.append(("a", m.group(5)))
            i = m.end()


def _cut_at_nul(value: bytes) -> bytes:
    """An address list ends at a NUL outside a comment, as Dovecot's parser ends it (a NUL in
    a comment stays, shown as U+FFFD on the wire): ``a@b, c\0d@e`` is ``a@b, c``."""
    depth = 0
    escaped = False
    for i, c in enumerate(value):
        if escaped:
            escaped = False
        elif c == 0x5C:  # backslash: quoted-pair
            escaped = True
        elif c == 0x28:  # (
            depth += 1
        elif c == 0x29 and depth:  # )
            depth -= 1
        elif c == 0 and not depth:
            return value[:i]
    return value


def parse_address_list(value: bytes | None) -> list[Address]:
    """An address list for ENVELOPE: groups become (NIL NIL name NIL) ... (NIL NIL NIL NIL)
    (RFC 3501 7.4.2); a missing local part or domain gets Dovecot's MISSING_* placeholder."""
    if value is None:
        return []
    value = unfold(value)
    if b"\0" in value:
        value = _cut_at_nul(value)
    fast = _simple_addresses(value)
    if fast is not None:
        return fast
    toks = _Tokens(value).items
    out: list[Address] = []
    i = 0
    n = len(toks)
    in_group = False
    while i < n:
        # collect one mailbox / group start up to "," ";" or ":" at top level
        phrase: list[tuple[str, bytes]] = []
        j = i
        while j < n and toks[j][0] not in (",", ";", ":", "<"):
            j += 1
        if j < n and toks[j][0] == ":" and not in_group and not _has_at(toks, i, j):
            out.append((None, None, _phrase(toks[i:j]) or b"", None))
            in_group = True
            i = j + 1
            continue
        if j < n and toks[j][0] == "<":
            phrase = [t for t in toks[i:j]]
            k = j + 1
            while k < n and toks[k][0] != ">":
                k += 1
            addr = _addr_spec(toks[j + 1 : k])
            name = _phrase(phrase)
            # skip to the end of this mailbox
            k += 1
            while k < n and toks[k][0] not in (",", ";"):
                k += 1
            out.append((name, *addr))
            i = k
        else:
            if j > i and any(k != "c" for k, _ in toks[i:j]):
                spec = toks[i:j]
                if _display_name_only(spec):
                    # "Undisclosed recipients": a name without an address (as Dovecot reads it)
                    out.append((_phrase(spec), None, MISSING_MAILBOX, MISSING_DOMAIN))
                    i = j
                else:
                    # a bare addr-spec: a comment after it is the name (as Dovecot, Cyrus show it)
                    first = next(x for x, (k, _) in enumerate(spec) if k != "c")
                    comments = [v for k, v in spec[first:] if k == "c"]
                    name = b" ".join(comments[-1].split()) or None if comments else None
                    out.append((name, *_addr_spec(spec)))
            i = j
        if i < n:
            kind = toks[i][0]
            if kind == ";" and in_group:
                out.append((None, None, None, None))
                in_group = False
            i += 1
    if in_group:
        out.append((None, None, None, None))
    return out


_SIMPLE_MAILBOX = re.compile(
    rb"[ \t]*(?:([A-Za-z0-9!#$%&'*+/=?^_`{|}~ \t-]*?)[ \t]*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+)"
    rb"@([A-Za-z0-9.-]+)>|([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+)@([A-Za-z0-9.-]+))[ \t]*"
)


def _simple_addresses(value: bytes) -> list[Address] | None:
    """The common case -- ``a@b`` and ``Name Words <a@b>`` separated by commas, no quotes,
    comments, groups or routes -- without the tokenizer; None for anything else."""
    out: list[Address] = []
    for item in value.split(b","):
        m = _SIMPLE_MAILBOX.fullmatch(item)
        if m is None:
            if item.strip(b" \t"):
                return None
            continue  # empty list elements are allowed (RFC 5322 4.4)
        if m.group(2) is not None:
            out.append((b" ".join(m.group(1).split()) or None, None, m.group(2), m.group(3)))
        else:
            out.append((None, None, m.group(4), m.group(5)))
    return out


def _display_name_only(toks: list[tuple[str, bytes]]) -> bool:
    """No "@" and no route, and a phrase rather than one (dot-)atom: a quoted string or two
    words in a row. ``Undisclosed recipients`` is a name; ``postmaster`` a local part."""
    words = [k for k, _ in toks if k != "c"]
    if any(k in ("@", ":") for k in words):
        return False
    return "q" in words or any(a == b == "a" for a, b in pairwise(words))


def _has_at(toks: list[tuple[str, bytes]], i: int, j: int) -> bool:
    return any(k == "@" for k, _ in toks[i:j])


def _phrase(toks: list[tuple[str, bytes]]) -> bytes | None:
    words = [v for k, v in toks if k in ("a", "q", ".")]
    if not words:
        return None
    out = bytearray()
    for idx, (kind, v) in enumerate((k, v) for k, v in toks if k in ("a", "q", ".")):
        if idx and kind != ".":
            out += b" "
        out += v
    return bytes(out)


def _addr_spec(
    toks: list[tuple[str, bytes]],
) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(adl, mailbox, host) from the tokens of ``[@route:]local@domain``."""
    adl = None
    colon = next((i for i, (k, _) in enumerate(toks) if k == ":"), None)
    if colon is not None and toks and toks[0][0] == "@":
        adl = b"".join(v for _, v in toks[:colon])
        toks = toks[colon + 1 :]
    at = next((i for i, (k, _) in enumerate(toks) if k == "@"), None)
    local_toks = toks if at is None else toks[:at]
    local = b"".join(v for k, v in local_toks if k in ("a", "q", "."))
    domain = None if at is None else b"".join(v for k, v in toks[at + 1 :] if k in ("a", "."))
    return adl, local or MISSING_MAILBOX, domain or MISSING_DOMAIN


# -- addresses as SEARCH FROM/TO/CC/BCC match them ------------------------------------------

# RFC 5322 3.2.3 atext (8-bit octets count as atext: RFC 6532 3.2); dot-atom-text with dots
_ATOM_TEXT = re.compile(rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\xff-]+")
_DOT_ATOM_TEXT = re.compile(rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\xff.-]+")


def _maybe_quoted(word: bytes, dots: bool) -> bytes:
    """``word`` as RFC 5322 writes it: as it is when it is atext (with ``dots``: dot-atom
    text), else a quoted string."""
    if (_DOT_ATOM_TEXT if dots else _ATOM_TEXT).fullmatch(word):
        return word
    return b'"' + word.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


_ATOM = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_SPEC = rb"[.A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+"
# one mailbox, plain ASCII: "Display Name <a@b>" (words one space apart) or "a@b"
_ONE_PLAIN_MAILBOX = re.compile(
    rb"[ \t]*(?:(%s(?: %s)*)[ \t]*<(%s)>|(%s))[ \t]*" % (_ATOM, _ATOM, _PLAIN_SPEC, _PLAIN_SPEC)
)


def _text(value: bytes) -> str:
    """decode_words, skipping it for the usual plain ASCII."""
    if value.isascii() and b"=?" not in value:
        return value.decode("ascii")
    return decode_words(value)


def address_search_text(value: bytes | None) -> str | None:
    """An address field as SEARCH FROM/TO/CC/BCC see it (RFC 3501 6.4.4: the "envelope
    structure's" field): the addresses as ENVELOPE parses them (RFC 5322 3.4 with the obsolete
    syntax of 4.4: CFWS inside an addr-spec, routes, groups, a comment after a bare address as
    its name, a display name alone) written again one way: ``"Display Name" <local@domain>``,
    ``<@route:local@domain>``, ``group: <a@x>, <b@y>;``, ``group:;``, quoting names and local
    parts that need it, encoded words decoded (RFC 2047), raw UTF-8 as it is (RFC 6532).
    This is how Dovecot writes them for its search (message_address_write), so the same
    searches find the same messages; e.g. ``<user (c)@ (c) domain.org>`` is found by
    ``user@domain.org``."""
    if value is None:
        return None
    m = _ONE_PLAIN_MAILBOX.fullmatch(value) if b"=?" not in value else None
    if m is not None:  # the usual single "a@b" or "Name <a@b>", without the parser
        name, spec = m.group(1), (m.group(2) or m.group(3)).decode("ascii")
        if name is None:
            return "<" + spec + ">"
        shown = name.decode("ascii")
        return ('"' + shown + '"' if b" " in name else shown) + " <" + spec + ">"
    items: list[str] = []
    members: list[str] | None = None  # inside a group
    group = ""
    for name, adl, local, host in parse_address_list(value):
        if host is None:  # a group's start (its name in the mailbox slot) or its end
            if members is None:
                group = _phrase_text(local or b"") if local else '""'
                members = []
            else:
                items.append(group + (": " + ", ".join(members) if members else ":") + ";")
                members = None
            continue
        spec = _maybe_quoted(local or b"", dots=True) + b"@" + host
        if adl:
            spec = adl + b":" + spec
        text = "<" + _text(spec) + ">"
        if name:
            text = _phrase_text(name) + " " + text
        (items if members is None else members).append(text)
    return ", ".join(items)


def _phrase_text(phrase: bytes) -> str:
    """A display or group name as text: quoted unless it is one atom, encoded words decoded
    (never quoted: RFC 2047 5 keeps them out of quoted strings)."""
    if b"=?" in phrase:
        return decode_words(phrase)
    return _text(_maybe_quoted(phrase, dots=False))


# -- RFC 2047 encoded words (for SEARCH; ENVELOPE leaves them as they are) --------------------

_ENCODED_WORD = re.compile(rb"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(rb"(\?=)[ \t\r\n]+(=\?)")


def decode_words(value: bytes) -> str:
    """A header value as text: encoded words decoded (whitespace between adjacent words
    dropped, RFC 2047 6.2), raw octets and what a word's charset cannot decode by the one
    header rule (``mailhub.message.header_text``: UTF-8, U+FFFD where it is not)."""
    value = unfold(value)
    if b"=?" not in value:
        return from_bytes(value)
    value = _BETWEEN_WORDS.sub(rb"\1\2", value)
    out: list[str] = []
    pos = 0
    for m in _ENCODED_WORD.finditer(value):
        out.append(from_bytes(value[pos : m.start()]))
        charset, enc, text = m.group(1).decode("ascii", "replace"), m.group(2), m.group(3)
        try:
            if enc in b"bB":
                raw = base64.b64decode(text + b"=" * (-len(text) % 4))
            else:
                raw = binascii.a2b_qp(text.replace(b"_", b" "))
            out.append(in_charset(raw, charset))
        except (binascii.Error, ValueError):
            out.append(from_bytes(m.group(0)))
        pos = m.end()
    out.append(from_bytes(value[pos:]))
    return "".join(out)
