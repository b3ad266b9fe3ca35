"""Hypothesis strategies for header field bytes as mail really carries them (issue 12): raw
UTF-8 (RFC 6532), 8-bit Latin-1 and arbitrary octets, good and broken RFC 2047 encoded words,
lone surrogates (as CESU-style octets and as the invalid octets a surrogate escape stands
for), NUL, comments, groups and 10 KB folded values. A value never holds a bare CR or LF: it
travels over SMTP, where those are not allowed (RFC 5321 2.3.8); folding is CRLF + blank."""

from __future__ import annotations

import base64

from hypothesis import strategies as st

_NO_LINE_ENDS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n")


def _no_line_ends(raw: bytes) -> bytes:
    return raw.replace(b"\r", b"").replace(b"\n", b"")


utf8 = st.text(_NO_LINE_ENDS, max_size=20).map(str.encode)
latin1 = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
    max_size=20,
).map(lambda s: s.encode("latin-1"))
octets = st.binary(max_size=20).map(_no_line_ends)
# A lone surrogate as UTF-8 would spell it (ED A0 80: not UTF-8, RFC 3629 3) and the invalid
# octets that Python's surrogateescape turns into lone surrogates.
surrogates = st.one_of(
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=4).map(
        lambda s: s.encode("utf-8", "surrogatepass")
    ),
    st.text(st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), min_size=1, max_size=4).map(
        lambda s: s.encode("utf-8", "surrogateescape")
    ),
)
nul = st.sampled_from([b"\0", b"a\0b", b"\0\0"])
# Comments nest (RFC 5322 3.2.2): deeper than a recursive parser goes.
deep_comment = st.integers(1, 2500).map(lambda n: b"(" * n + b"x" + b")" * n)

_CHARSETS = ["utf-8", "UTF-8", "iso-8859-1", "windows-1252", "iso-8859-15", "koi8-r", "utf-16"]


@st.composite
def good_word(draw: st.DrawFn) -> bytes:
    """An RFC 2047 encoded word whose text is in its charset."""
    charset = draw(st.sampled_from(_CHARSETS))
    text = draw(st.text(_NO_LINE_ENDS, min_size=1, max_size=12))
    try:
        raw = text.encode(charset)
    except UnicodeEncodeError:
        charset, raw = "utf-8", text.encode()
    if draw(st.booleans()):
        return b"=?%s?B?%s?=" % (charset.encode(), base64.b64encode(raw))
    return b"=?%s?Q?%s?=" % (charset.encode(), _q(raw))


def _q(raw: bytes) -> bytes:
    """RFC 2047 4.2 "Q": what may stand in a phrase as is, "_" for a space, =XX for the rest."""
    plain = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!*+-/"
    return b"".join(b"_" if c == 0x20 else bytes([c]) if c in plain else b"=%02X" % c for c in raw)


broken_word = st.one_of(
    st.sampled_from(
        [
            b"=?utf-8?q?Gr=FC=DFe?=",  # Latin-1 octets declared UTF-8
            b"=?utf-8?b?/w==?=",
            b"=?utf-8?q?=ED=A0=80?=",  # a UTF-8 encoded surrogate
            b"=?utf-7?q?+2AA-?=",  # UTF-7 decodes to a lone surrogate
            b"=?utf-16?b?2AA=?=",
            b"=?x-unknown?q?J=FCrgen?=",
            b"=?utf-8?b?!!!not base64?=",
            b"=?utf-8?q?unterminated",
            b"=?utf-8??x?=",
            b"=??q?x?=",
            b"=?utf-8*de?q?mit_Sprache?=",
        ]
    ),
    st.builds(
        lambda cs, raw: b"=?%s?Q?%s?=" % (cs, _q(raw)),
        st.sampled_from([b"utf-8", b"us-ascii", b"iso-2022-jp", b"shift_jis", b"bogus"]),
        st.binary(min_size=1, max_size=10),
    ),
)

piece = st.one_of(
    st.sampled_from([b"plain", b"J\xc3\xbcrgen", b"\xe5\x8f\x91\xe4\xbb\xb6\xe4\xba\xba", b""]),
    utf8,
    latin1,
    octets,
    surrogates,
    nul,
    deep_comment,
    good_word(),
    broken_word,
)


@st.composite
def text_value(draw: st.DrawFn) -> bytes:
    """An unstructured value (Subject): a few pieces, maybe in a comment, maybe 10 KB (long
    ones folded)."""
    parts = draw(st.lists(piece, min_size=1, max_size=4))
    seps = draw(st.lists(st.sampled_from([b" ", b"", b"\t", b" (", b") "]), min_size=len(parts)))
    value = b"".join(s + p for s, p in zip(seps, parts, strict=False)).strip(b" \t")
    if draw(st.booleans()) and draw(st.booleans()):  # now and then a 10 KB one
        value = (value + b" ") * (10_240 // (len(value) + 1) + 1)
    return _folded(value) if len(value) > 900 else value


def _folded(value: bytes) -> bytes:
    """Fold a long value (RFC 5322 2.2.3) so that no line passes 998 octets."""
    lines = [value[i : i + 76] for i in range(0, len(value), 76)]
    return b"\r\n ".join(lines)


@st.composite
def address_value(draw: st.DrawFn, address: bytes) -> bytes:
    """An address field naming ``address``, with a display name made of arbitrary bytes: as a
    name-addr, quoted, with a comment, or in a group."""
    name = draw(text_value())
    shape = draw(st.sampled_from(["name", "quoted", "comment", "group", "bare"]))
    if shape == "name":
        return name + b" <" + address + b">"
    if shape == "quoted":
        return b'"' + name.replace(b"\\", b"").replace(b'"', b"") + b'" <' + address + b">"
    if shape == "comment":
        return address + b" (" + name.replace(b"(", b"").replace(b")", b"") + b")"
    if shape == "group":
        return b"Team " + name[:40] + b": " + address + b", other@example.org;"
    return address


@st.composite
def authentication_results(draw: st.DrawFn) -> bytes:
    """An ``Authentication-Results:`` value (RFC 8601 2.2) with arbitrary bytes where its
    words, reasons and values go, and now and then what the grammar does not allow."""
    authserv_id = draw(st.sampled_from([b"mx.example.net", b"localhost", b'"q x"', b""]))
    resinfos = []
    for _ in range(draw(st.integers(0, 4))):
        method = draw(st.sampled_from([b"spf", b"dkim", b"dmarc", b"arc", b"auth", b"", b"x/1"]))
        words = [method + b"=" + draw(st.one_of(st.sampled_from([b"pass", b"fail"]), piece))]
        for _ in range(draw(st.integers(0, 3))):
            key = draw(st.sampled_from([b"reason", b"header.d", b"smtp.mailfrom", b"header.from"]))
            value = draw(text_value())
            words.append(key + b"=" + (b'"' + value + b'"' if draw(st.booleans()) else value))
        # One word a line: no line may pass 998 octets (RFC 5322 2.1.1). A long value comes
        # folded already; a long piece (a deep comment) is folded here.
        resinfos.append(
            b"\r\n\t".join(_folded(w) if len(w) > 900 and b"\r\n" not in w else w for w in words)
        )
    return b";\r\n\t".join([authserv_id, *resinfos]) if resinfos else authserv_id + b"; none"


@st.composite
def header_block(draw: st.DrawFn, sender: bytes, to: bytes, token: bytes) -> bytes:
    """A message header block (ending in CRLF CRLF) whose From names ``sender``, whose To
    names ``to`` and whose Subject ends with the ASCII word ``token`` (to search for it)."""
    fields = [
        b"From: " + draw(address_value(sender)),
        b"To: " + draw(address_value(to)),
        b"Subject: " + draw(text_value()) + b" " + token,
    ]
    if draw(st.booleans()):
        fields.append(b"Cc: " + draw(address_value(b"cc@example.org")))
    if draw(st.booleans()):
        fields.append(b"Message-ID: <" + _no_line_ends(draw(octets)).replace(b">", b"") + b"@x>")
    if draw(st.booleans()):
        fields.append(b"X-Extra: " + draw(text_value()))
    if draw(st.booleans()):
        fields.append(b"Authentication-Results: " + draw(authentication_results()))
    if draw(st.booleans()):
        fields.append(
            b'Content-Type: text/plain; charset=utf-8; name="'
            + draw(text_value()).replace(b'"', b"")[:200]
            + b'"'
        )
    return b"\r\n".join(draw(st.permutations(fields))) + b"\r\n\r\n"
