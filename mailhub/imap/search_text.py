"""The searchable text of a message for SEARCH BODY/TEXT (RFC 3501 6.4.4): text parts decoded
from their transfer encoding (quoted-printable, base64) and charset, read in pieces (a big
message is never in memory), plus the headers of encapsulated messages; matched as
case-insensitive substrings, as Dovecot does without a full-text index."""

from __future__ import annotations

import binascii
import codecs
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from mailhub.message.header_text import from_bytes
from mailhub.message.headers import decode_words, split_fields
from mailhub.message.mime import MessageStructure, Part

CHUNK = 65536
MAX_HEADER = 256 * 1024  # header octets of an encapsulated message searched (more is garbage)


def _charset(p: Part) -> str:
    for k, v in p.params:
        if k.lower() == b"charset":
            name = v.decode("ascii", "replace").strip().lower()
            try:
                codecs.lookup(name)
            except LookupError:
                return "utf-8"
            # us-ascii is declared on plenty of 8-bit text: read it as UTF-8, its superset
            return "utf-8" if name in ("us-ascii", "ascii", "") else name
    return "utf-8"


def _raw_chunks(fp: BinaryIO, start: int, size: int) -> Iterator[bytes]:
    fp.seek(start)
    while size > 0:
        data = fp.read(min(CHUNK, size))
        if not data:
            return
        size -= len(data)
        yield data


def _decode_qp(chunks: Iterable[bytes]) -> Iterator[bytes]:
    carry = b""
    for data in chunks:
        data = carry + data
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if cut:
            yield binascii.a2b_qp(data[:cut])
    if carry:
        yield binascii.a2b_qp(carry)


_B64_WS = b" \t\r\n"


def _decode_base64(chunks: Iterable[bytes]) -> Iterator[bytes]:
    carry = b""
    for data in chunks:
        data = carry + data.translate(None, _B64_WS)
        cut = len(data) // 4 * 4
        carry = data[cut:]
        try:
            yield binascii.a2b_base64(data[:cut])
        except binascii.Error:
            continue  # garbage: skip this piece rather than fail the whole search
    if carry:
        try:
            yield binascii.a2b_base64(carry + b"=" * (-len(carry) % 4))
        except binascii.Error:
            pass


def part_text(p: Part, fp: BinaryIO) -> Iterator[str]:
    """The decoded text of a leaf part's body, in pieces."""
    chunks: Iterable[bytes] = _raw_chunks(fp, p.body_start, p.size)
    enc = (p.encoding or b"").lower()
    if enc == b"quoted-printable":
        chunks = _decode_qp(chunks)
    elif enc == b"base64":
        chunks = _decode_base64(chunks)
    decoder = codecs.getincrementaldecoder(_charset(p))(errors="replace")
    for data in chunks:
        text = decoder.decode(data)
        if text:
            yield text
    text = decoder.decode(b"", final=True)
    if text:
        yield text


def header_text(block: bytes) -> str:
    """A header block as searchable text: one line per field, encoded words decoded."""
    return "\n".join(
        from_bytes(name) + ": " + decode_words(value) for name, value in split_fields(block)
    )


def _is_text(p: Part) -> bool:
    return p.type.lower() == b"text"


def message_texts(
    s: MessageStructure, fp: BinaryIO, *, with_header: bool
) -> Iterator[Iterator[str]]:
    """The searchable texts of a message, each an iterator of pieces (a match never spans two):
    for BODY the decoded bodies of its text parts; for TEXT also every header -- the message's,
    the MIME headers of its parts and those of encapsulated messages (as Dovecot searches)."""
    if with_header:
        yield iter((header_text(s.header),))
    yield from _texts(s.root, fp, with_header, top=True)


def _texts(p: Part, fp: BinaryIO, headers: bool, top: bool = False) -> Iterator[Iterator[str]]:
    if headers and not top and p.header_size:
        fp.seek(p.header_start)
        yield iter((header_text(fp.read(min(p.header_size, MAX_HEADER))),))
    if p.is_multipart or p.is_message:
        for c in p.children:
            yield from _texts(c, fp, headers)
    elif _is_text(p) and p.size > 0:
        yield part_text(p, fp)


def find_all(texts: Iterable[Iterator[str]], needles: Iterable[str]) -> set[str]:
    """Which needles (already casefolded) occur in the texts, case-insensitively. Stops reading
    as soon as all are found."""
    needles = list(needles)
    todo = {n for n in needles if n}
    found: set[str] = {n for n in needles if not n}
    if not todo:
        return found
    keep = max(len(n) for n in todo) - 1
    for pieces in texts:
        tail = ""
        for piece in pieces:
            window = tail + piece.casefold()
            hits = {n for n in todo if n in window}
            if hits:
                found |= hits
                todo -= hits
                if not todo:
                    return found
            tail = window[-keep:] if keep else ""
    return found
