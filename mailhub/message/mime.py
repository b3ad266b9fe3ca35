"""Parsing a stored message file into the neutral parse of ``mailhub.message.structure``:
``parse_structure`` for the whole MIME tree, ``parse_header``/``read_header`` for the top-level
header alone. IMAP renders ENVELOPE, BODYSTRUCTURE and BODY[section] from the result, the web
page reads its parts, and the store's cache keeps it.

``parse_structure`` reads a message once, line by line in bounded pieces (a 100 MB message is
never in memory), and yields a small ``MessageStructure``: offsets and content fields of every
part plus the top-level header block. Nothing is ever refused: missing or unterminated boundaries,
bare LF, 8-bit headers, header-only messages all give a structure, as Dovecot's parser does.
The CRLF before a boundary line belongs to the boundary (RFC 2046 5.1.1).
"""

from __future__ import annotations

import io
import os
import re
from typing import BinaryIO

from mailhub.message import headers as mh
from mailhub.message.structure import (
    ADDRESS_FIELDS,
    ENVELOPE_FIELDS,
    HEADER_VERSION,
    MessageHeader,
    MessageStructure,
    Part,
)

# The parse's results are defined in mailhub.message.structure; they are named here too, so
# that one import serves a reader of messages.
__all__ = [
    "ENVELOPE_FIELDS",
    "HEADER_READ",
    "MAX_DEPTH",
    "MAX_FIELD",
    "MAX_HEADER_SCAN",
    "MAX_KEPT_HEADER",
    "MAX_LINE",
    "MAX_PARTS",
    "MessageHeader",
    "MessageStructure",
    "Part",
    "parse_header",
    "parse_structure",
    "read_header",
]

# -- limits (Dovecot's defaults, message_max_nested/total parts) -----------------------------

MAX_DEPTH = 100  # deeper multiparts and message/rfc822 parts are treated as opaque leaves
MAX_PARTS = 10_000  # beyond this many parts further multiparts are leaves too
MAX_LINE = 65_536  # read at most this much per readline(); longer lines come in pieces
MAX_KEPT_HEADER = 256 * 1024  # top-level header octets kept for ENVELOPE / SEARCH / HEADER
MAX_FIELD = 64 * 1024  # a content field longer than this is cut (it is garbage anyway)

HEADER_READ = 8192  # first read of parse_header: most header blocks fit
MAX_HEADER_SCAN = 1024 * 1024  # a header not ended within this is read line by line
# A header block shorter than this has no cut line or field: _find_field can search it.
_FIND_FIELDS_BELOW = min(MAX_LINE, MAX_FIELD, MAX_KEPT_HEADER)

# Fields kept per part: content fields for BODYSTRUCTURE, envelope fields for message parts.
_CONTENT_FIELDS = {
    b"content-type": 0,
    b"content-transfer-encoding": 1,
    b"content-id": 2,
    b"content-description": 3,
    b"content-md5": 4,
    b"content-disposition": 5,
    b"content-language": 6,
    b"content-location": 7,
}
_ENVELOPE_INDEX = {name: i for i, name in enumerate(ENVELOPE_FIELDS)}


# -- parsing ---------------------------------------------------------------------------------


# A boundary line that ended a part: (index in the boundary stack, closing "--b--", offset of
# the line, LFs before it, length of the line end before it -- which belongs to the boundary).
_Hit = tuple[int, bool, int, int, int]


class _Reader:
    """Lines of a file with their offsets and LF counts; long lines come in MAX_LINE pieces and
    only a piece that starts a line (``fresh``) can be a boundary or a header field."""

    __slots__ = (
        "fp",
        "fresh",
        "last_eol",
        "line_start",
        "next_fresh",
        "nl",
        "parts",
        "pos",
        "prev_eol",
    )

    def __init__(self, fp: BinaryIO) -> None:
        self.fp = fp
        self.pos = 0  # offset of the next unread octet
        self.nl = 0  # LFs read so far
        self.fresh = True  # the line last returned started at a line start
        self.next_fresh = True
        self.prev_eol = 0  # line end length (CRLF 2, LF 1, none 0) of the line before the last
        self.last_eol = 0  # the same for the line last returned
        self.line_start = 0  # offset of the line the piece last returned belongs to
        self.parts = 0

    def readline(self) -> bytes:
        line = self.fp.readline(MAX_LINE)
        if self.next_fresh:
            self.line_start = self.pos
        self.fresh = self.next_fresh
        self.prev_eol = self.last_eol
        if line.endswith(b"\n"):
            self.next_fresh = True
            self.nl += 1
            self.last_eol = 2 if line.endswith(b"\r\n") else 1
        else:
            self.next_fresh = False
            self.last_eol = 0
        self.pos += len(line)
        return line


def _boundary_hit(line: bytes, stack: list[bytes]) -> tuple[int, bool] | None:
    """Which active boundary (index in stack, innermost first as Dovecot checks) this line is,
    and whether it is the closing one ("--b--"). Prefix match, like Dovecot: trailing junk after
    the boundary (whitespace, per RFC 2046, or worse) is ignored."""
    for i in range(len(stack) - 1, -1, -1):
        b = stack[i]
        if line.startswith(b, 2):
            return i, line.startswith(b"--", 2 + len(b))
    return None


def parse_structure(fp: BinaryIO) -> MessageStructure:
    """Parse a message file (positioned at its start) into a MessageStructure; never raises
    for bad message syntax (only for I/O errors)."""
    r = _Reader(fp)
    kept: list[bytes] = []
    root, _hit = _parse_part(r, [], b"text", b"plain", 0, kept=kept)
    return MessageStructure._build(b"".join(kept), root, r.pos)


def parse_header(fp: BinaryIO) -> MessageHeader:
    """The top-level header of a message file (positioned at its start), reading only up to
    the blank line that ends it, in large reads; the same header block and ENVELOPE fields as
    ``parse_structure`` gives. Never raises for bad message syntax."""
    block = fp.read(HEADER_READ)
    end = _header_end(block, 0)
    while end < 0:
        if len(block) >= MAX_HEADER_SCAN:
            fp.seek(0)  # an endless header: streamed line by line, as parse_structure does
            return _header_of(fp)
        more = fp.read(MAX_LINE)
        if not more:
            end = len(block)  # no blank line: the whole message is header
            break
        searched = len(block) - 2  # b"\n\r\n" may straddle the pieces
        block += more
        end = _header_end(block, max(0, searched))
    if end < _FIND_FIELDS_BELOW:
        # the usual case: the ENVELOPE fields are found in the block when asked for
        return MessageHeader((HEADER_VERSION, block[:end], end, None))
    return _header_of(io.BytesIO(block[:end]))


def read_header(path: str) -> MessageHeader:
    """``parse_header`` of the file at ``path``, cheaper for the usual header that ends within
    HEADER_READ octets: one open, one read, one close, no file object."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        block = os.read(fd, HEADER_READ)
        end = _header_end(block, 0)
        if 0 <= end < _FIND_FIELDS_BELOW:  # as after parse_header's first read
            return MessageHeader((HEADER_VERSION, block[:end], end, None))
        os.lseek(fd, 0, os.SEEK_SET)
        with open(fd, "rb", closefd=False) as fp:
            return parse_header(fp)
    finally:
        os.close(fd)


def _header_end(block: bytes, start: int) -> int:
    """Offset after the blank line ending the header in block (searching from start), or -1.
    A blank line is an empty line at a line start: the file's start or after an LF."""
    if start == 0:
        if block[:1] == b"\n":
            return 1
        if block[:2] == b"\r\n":
            return 2
    crlf = block.find(b"\n\r\n", start)
    # a bare-LF blank line only counts before the CRLF one (no scan of a CRLF message's body)
    lf = block.find(b"\n\n", start, len(block) if crlf < 0 else crlf + 1)
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


def _header_of(fp: BinaryIO) -> MessageHeader:
    r = _Reader(fp)
    p = Part()
    kept: list[bytes] = []
    _read_header(r, p, [], kept, True)
    return MessageHeader((HEADER_VERSION, b"".join(kept), p.body_start, p.envelope))


def _parse_part(
    r: _Reader,
    stack: list[bytes],
    default_type: bytes,
    default_subtype: bytes,
    depth: int,
    *,
    kept: list[bytes] | None = None,
    message: bool = True,
) -> tuple[Part, _Hit | None]:
    """Parse one part starting at r.pos (its header) and all inside it. Returns the part and the
    boundary line that ended it (a _Hit), or None at EOF. ``kept`` collects the header lines
    (top level); ``message`` says the part is a message (top level or encapsulated) whose
    ENVELOPE fields are collected."""
    p = Part()
    r.parts += 1
    p.header_start = r.pos
    content, hit = _read_header(r, p, stack, kept, message)
    _apply_content(p, content, default_type, default_subtype)
    body_nl = r.nl
    if hit is not None:
        return p, hit

    # -- body
    ltype = p.type.lower()
    boundary = _param(p.params, b"boundary") if ltype == b"multipart" else None
    deep = depth >= MAX_DEPTH or r.parts >= MAX_PARTS
    if boundary is not None and not deep:
        hit = _parse_multipart(r, p, stack, boundary, depth)
    elif ltype == b"message" and p.subtype.lower() == b"rfc822":
        # parsed as a message whatever its (invalid, RFC 2046 5.2.1) encoding, as Dovecot does;
        # too deep: an empty message, so BODYSTRUCTURE keeps its RFC 3501 shape
        if deep:
            child = Part()
            child.envelope = (None,) * len(ENVELOPE_FIELDS)
            child.params = ((b"charset", b"us-ascii"),)
            child.header_start = child.body_start = child.end = p.body_start
            hit = _skip_body(r, stack)
        else:
            child, hit = _parse_part(r, stack, b"text", b"plain", depth + 1)
        p.children = [child]
    else:
        hit = _skip_body(r, stack)
    if hit is not None:
        # the CRLF before the boundary line belongs to the boundary, not to this body
        cut = hit[2] - hit[4]
        if cut < p.body_start:
            # an empty body right after the blank line: that line end belongs to the boundary
            # and the header ends before it (as Dovecot counts)
            p.body_start = max(p.header_start, cut)
        p.end = max(p.body_start, cut)
        end_nl = hit[3] - (1 if hit[4] and p.end == cut else 0)
    else:
        p.end = r.pos
        end_nl = r.nl
    p.lines = max(0, end_nl - body_nl)
    if p.is_multipart and not p.children:
        # RFC 3501 body-type-mpart needs one body at least: an empty text/plain, as Dovecot
        empty = Part()
        empty.header_start = empty.body_start = empty.end = p.body_start
        empty.params = ((b"charset", b"us-ascii"),)
        p.children = [empty]
    return p, hit


def _read_header(
    r: _Reader, p: Part, stack: list[bytes], kept: list[bytes] | None, message: bool
) -> tuple[list[bytes | None], _Hit | None]:
    """The header of part p (at r.pos): its content fields, its ENVELOPE fields (a message)
    and its header lines (into ``kept``, top level); sets p.body_start (and p.end when the
    header is all there is). Returns the content fields and the boundary line that ended the
    header, if one did."""
    content: list[bytes | None] = [None] * len(_CONTENT_FIELDS)
    env: list[bytes | None] | None = [None] * len(ENVELOPE_FIELDS) if message else None
    kept_size = 0

    # -- header: fields until the blank line
    name: bytes | None = None
    value: list[bytes] = []
    value_size = 0
    hit: _Hit | None = None

    def finish_field() -> None:
        if name is None:
            return
        lname = name.lower()
        idx = _CONTENT_FIELDS.get(lname)
        if idx is not None:
            if content[idx] is None:  # the first Content-* field counts (as in Dovecot)
                content[idx] = mh.unfold(b"".join(value))
        elif env is not None:
            idx = _ENVELOPE_INDEX.get(lname)
            if idx is not None:
                # as Dovecot: repeated address fields add up, other fields: the last one counts
                val = mh.unfold(b"".join(value))
                old = env[idx]
                env[idx] = old + b", " + val if old and idx in ADDRESS_FIELDS else val

    while True:
        line = r.readline()
        if not line:
            p.body_start = p.end = r.pos
            break
        fresh = r.fresh
        if fresh and stack and line.startswith(b"--"):
            h = _boundary_hit(line, stack)
            if h is not None:
                start = r.pos - len(line)
                # the header ends before the CRLF that belongs to the boundary; no body. (The
                # enclosing parts keep that CRLF: Dovecot counts so.)
                hit = (h[0], h[1], start, r.nl - (r.last_eol > 0), 0)
                p.body_start = p.end = max(p.header_start, start - r.prev_eol)
                break
        if kept is not None and kept_size < MAX_KEPT_HEADER:
            kept.append(line)
            kept_size += len(line)
        if fresh and (line == b"\r\n" or line == b"\n"):
            p.body_start = r.pos
            break
        if fresh and line[:1] not in (b" ", b"\t"):
            finish_field()
            colon = line.find(b":")
            name = line[:colon].rstrip(b" \t") if colon > 0 else None
            if name is not None and (b" " in name or b"\t" in name):
                name = None
            value = [line[colon + 1 :]] if name is not None else []
            value_size = len(line)
        elif name is not None and value_size < MAX_FIELD:
            value.append(line)
            value_size += len(line)
    finish_field()
    if env is not None:
        p.envelope = tuple(env)
    return content, hit


def _skip_body(r: _Reader, stack: list[bytes]) -> _Hit | None:
    """Read a leaf body to the next boundary line of any open multipart, or to EOF.

    The body is read in MAX_LINE pieces and only line starts followed by "--" are looked at
    (found with bytes.find), with the same answers as reading it with ``_Reader.readline``:
    a line start is the offset after an LF (or the body's start when that is one), and the
    boundary line is taken as readline would return it (at most MAX_LINE octets)."""
    fp = r.fp
    read = fp.read
    if not stack:
        # nothing but EOF can end this body: read in big pieces
        while chunk := read(MAX_LINE):
            r.pos += len(chunk)
            r.nl += chunk.count(b"\n")
        return None
    base = r.pos  # file offset of buf[0]
    nl = r.nl  # LFs before base
    line_start = r.pos if r.next_fresh else r.line_start  # the line buf[0] belongs to
    buf = read(MAX_LINE)
    eof = not buf
    check_zero = r.next_fresh  # buf[0] starts a line: a candidate itself
    scan = 0  # where to look for the next b"\n--" (earlier ones are done)
    while True:
        if check_zero:
            at = 0 if buf[:2] == b"--" else -1
            if at < 0 and len(buf) < 2 and not eof:
                at = 0  # too little read to tell: read more below
        else:
            at = buf.find(b"\n--", scan) + 1 or -1
        if at < 0:
            if check_zero:
                check_zero = False
                continue
            if eof:
                break
            # nothing here: keep the last 3 octets (a b"\n--" may straddle, and the octet
            # before an LF tells CRLF) and read on
            cut = max(0, len(buf) - 3)
            scan = max(scan, len(buf) - 2) - cut
        else:
            end = buf.find(b"\n", at, at + MAX_LINE)
            if end < 0 and len(buf) < at + MAX_LINE and not eof:
                cut = max(0, at - 2)  # the line is not all here: read on, keep its start
                scan = max(0, scan - cut)
            else:
                stop = end + 1 if end >= 0 else min(len(buf), at + MAX_LINE)
                line = buf[at:stop]
                h = _boundary_hit(line, stack) if len(line) >= 2 else None
                if h is None:
                    check_zero = False
                    scan = at
                    continue
                nl_before = nl + buf.count(b"\n", 0, at)
                prev_eol = _eol_of_piece(buf, at, base, line_start) if at else r.last_eol
                r.pos = base + stop
                r.nl = nl_before + (end >= 0)
                r.fresh = True
                r.prev_eol = prev_eol
                r.last_eol = (2 if line.endswith(b"\r\n") else 1) if end >= 0 else 0
                r.next_fresh = end >= 0
                r.line_start = base + at
                fp.seek(r.pos)
                return h[0], h[1], base + at, nl_before, prev_eol
        # drop buf[:cut] (counting its LFs) and read the next piece
        if cut:
            nl += buf.count(b"\n", 0, cut)
            k = buf.rfind(b"\n", 0, cut)
            if k >= 0:
                line_start = base + k + 1
            base += cut
        more = read(MAX_LINE)
        eof = not more
        buf = buf[cut:] + more
    # EOF: what readline would leave (only pos and nl are used after this)
    r.pos = base + len(buf)
    r.nl = nl + buf.count(b"\n")
    if buf.endswith(b"\n"):
        r.fresh, r.prev_eol = True, _eol_of_piece(buf, len(buf), base, line_start)
    elif buf:
        r.fresh, r.prev_eol = False, 0
    else:
        r.fresh, r.prev_eol = r.next_fresh, r.last_eol
    r.next_fresh, r.last_eol = False, 0
    return None


def _eol_of_piece(buf: bytes, end: int, base: int, line_start: int) -> int:
    """The line end length (2 CRLF, 1 LF) readline gives the piece that ends with the LF at
    buf[end - 1]: 1 when the CR before it ended the previous MAX_LINE piece of a long line.
    ``base`` is buf's file offset, ``line_start`` that of the line buf[0] belongs to."""
    k = buf.rfind(b"\n", 0, end - 1)
    start = base + k + 1 if k >= 0 else line_start
    lf = base + end - 1
    piece = start + (lf - start) // MAX_LINE * MAX_LINE
    return 2 if end >= 2 and lf - 1 >= piece and buf[end - 2] == 0x0D else 1


def _parse_multipart(
    r: _Reader, p: Part, stack: list[bytes], boundary: bytes, depth: int
) -> _Hit | None:
    """The body of a multipart: preamble, parts, epilogue. Returns the outer boundary hit that
    ended it, or None at EOF."""
    inner = [*stack, boundary]
    mine = len(stack)
    digest = p.subtype.lower() == b"digest"
    dtype, dsub = (b"message", b"rfc822") if digest else (b"text", b"plain")
    hit = _skip_body(r, inner)  # preamble
    while hit is not None and hit[0] == mine and not hit[1]:
        child, hit = _parse_part(r, inner, dtype, dsub, depth + 1, message=False)
        p.children.append(child)
    if hit is not None and hit[0] == mine:  # closing boundary: the epilogue
        epilogue = r.pos
        hit = _skip_body(r, stack)
        if hit is not None and hit[2] == epilogue:
            # no epilogue: the line end of "--b--" stays in this part (as Dovecot counts)
            hit = (*hit[:4], 0)
    return hit


def _param(params: tuple[tuple[bytes, bytes], ...], name: bytes) -> bytes | None:
    for k, v in params:
        if k.lower() == name:
            return v or None
    return None


def _apply_content(
    p: Part, content: list[bytes | None], default_type: bytes, default_subtype: bytes
) -> None:
    ctype, cte, cid, cdesc, cmd5, cdisp, clang, cloc = content
    parsed = mh.parse_content_type(ctype) if ctype is not None else None
    if parsed is None:
        # RFC 2045 5.2: no (or an invalid) Content-Type means text/plain; charset=us-ascii
        p.type, p.subtype = default_type, default_subtype
        p.params = ((b"charset", b"us-ascii"),) if default_type == b"text" else ()
    else:
        p.type, p.subtype, params = parsed
        if p.type.lower() == b"text" and not any(k.lower() == b"charset" for k, _ in params):
            params.append((b"charset", b"us-ascii"))  # RFC 2045 5.2 default, shown as Dovecot
        p.params = tuple(params)
    p.encoding = cte.split(b";")[0].strip() or None if cte else None
    p.id = cid or None
    p.description = cdesc or None
    p.md5 = cmd5 or None
    p.location = cloc or None
    if cdisp:
        d = mh.parse_disposition(cdisp)
        if d is not None:
            p.disposition = (d[0], tuple(d[1]))
    if clang:
        langs = tuple(t for t in re.split(rb"[\s,]+", _strip_comments(clang)) if t)
        p.language = langs or None


def _strip_comments(value: bytes) -> bytes:
    return re.sub(rb"\([^)]*\)", b" ", value)
