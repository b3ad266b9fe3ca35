"""ENVELOPE and BODY/BODYSTRUCTURE of a message as IMAP FETCH renders them (RFC 3501 7.4.2),
from the neutral parse of ``mailhub.message.mime``. Rendered strings are memoised on the parse
object (``memo``) for the life of that object only: the store's cache keeps the parse."""

from __future__ import annotations

import re

from mailhub.imap.render import nstring, paren, string
from mailhub.message import headers as mh
from mailhub.message.mime import ENVELOPE_FIELDS, MessageHeader, MessageStructure, Part


def envelope(s: MessageStructure | MessageHeader) -> bytes:
    """The ENVELOPE of the message (memoised on the structure or header)."""
    out = s.memo.get("envelope")
    if out is None:
        out = s.memo["envelope"] = _envelope(s.envelope_fields)
    return out


def _envelope(fields: tuple[bytes | None, ...] | None) -> bytes:
    if fields is None:
        fields = (None,) * len(ENVELOPE_FIELDS)
    date, subject, from_, sender, reply_to, to, cc, bcc, in_reply_to, message_id = fields
    from_list = _addresses(from_)
    # RFC 3501 7.4.2: sender and reply-to default to from when absent
    sender_list = _addresses(sender) if sender else from_list
    reply_list = _addresses(reply_to) if reply_to else from_list
    return paren(
        [
            nstring(date),
            # Dovecot shows the subject with every whitespace run as one space; so do we
            nstring(_WSP_RUN.sub(b" ", subject) if subject else subject),
            from_list,
            sender_list,
            reply_list,
            _addresses(to),
            _addresses(cc),
            _addresses(bcc),
            nstring(in_reply_to),
            nstring(message_id),
        ]
    )


_WSP_RUN = re.compile(rb"[ \t]+")


def _addresses(value: bytes | None) -> bytes:
    addrs = mh.parse_address_list(value)
    if not addrs:
        return b"NIL"
    return b"(" + b"".join(paren(nstring(x) for x in a) for a in addrs) + b")"


def bodystructure(s: MessageStructure, extensible: bool) -> bytes:
    """BODYSTRUCTURE (extensible=True, with extension data) or BODY (without); memoised."""
    key = "bodystructure" if extensible else "body"
    out = s.memo.get(key)
    if out is None:
        out = s.memo[key] = _body(s.root, extensible)
    return out


def _params(params: tuple[tuple[bytes, bytes], ...]) -> bytes:
    if not params:
        return b"NIL"
    return paren(string(x) for kv in params for x in kv)


def _body(p: Part, ext: bool) -> bytes:
    if p.is_multipart:
        out = b"".join(_body(c, ext) for c in p.children) + b" " + string(p.subtype)
        if ext:
            out += b" " + _params(p.params) + b" " + _ext_tail(p)
        return b"(" + out + b")"
    items = [
        # media-message is "MESSAGE" "RFC822"; shown in lower case as Dovecot does
        b'"message" "rfc822"' if p.is_message else string(p.type) + b" " + string(p.subtype),
        _params(p.params),
        nstring(p.id),
        nstring(p.description),
        string(p.encoding or b"7bit"),
        b"%d" % p.size,
    ]
    ltype = p.type.lower()
    if p.is_message:
        child = p.children[0]
        items += [_envelope(child.envelope), _body(child, ext), b"%d" % p.lines]
    elif ltype == b"text":
        items.append(b"%d" % p.lines)
    if ext:
        items += [nstring(p.md5), _ext_tail(p)]
    return paren(items)


def _ext_tail(p: Part) -> bytes:
    """body-fld-dsp SP body-fld-lang SP body-fld-loc"""
    if p.disposition is None:
        dsp = b"NIL"
    else:
        dsp = paren([string(p.disposition[0]), _params(p.disposition[1])])
    if p.language is None:
        lang = b"NIL"
    else:
        lang = paren(string(x) for x in p.language)
    return dsp + b" " + lang + b" " + nstring(p.location)


def header_block(s: MessageStructure) -> bytes:
    """The top-level header including the blank line that ends it (if the message has one)."""
    return s.header
