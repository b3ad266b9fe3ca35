"""BODY[section] of IMAP FETCH (RFC 3501 6.4.5): section syntax, which part a section number
names, and the octets of a section as literal bytes and ranges of the message file, found from
the neutral parse of ``mailhub.message.mime`` (offsets and sizes of every part)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from mailhub.message.mime import MAX_KEPT_HEADER, MessageHeader, MessageStructure, Part

_SECTION_TEXTS = ("", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME")


@dataclass(frozen=True, slots=True)
class Section:
    """BODY[<section>]: part numbers, then what of that part. ``fields`` are upper-cased."""

    part: tuple[int, ...] = ()
    text: str = ""
    fields: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: str, fields: tuple[str, ...] | list[str] = ()) -> Section:
        """From the text between the brackets without the field list, e.g. ``1.2.MIME`` or
        ``HEADER.FIELDS`` (then fields are the names inside the parentheses). ValueError if the
        spec is not RFC 3501 section-spec."""
        part: list[int] = []
        rest = spec
        while rest and rest[0].isdigit():
            num, _, rest = rest.partition(".")
            if not num.isdigit() or num.startswith("0"):
                raise ValueError(f"bad section part number {num!r}")
            part.append(int(num))
            if not rest and spec.endswith("."):
                raise ValueError("section ends with '.'")
        text = rest.upper()
        if text not in _SECTION_TEXTS:
            raise ValueError(f"unknown section text {rest!r}")
        if text == "MIME" and not part:
            raise ValueError("MIME needs a part number (RFC 3501 6.4.5)")
        has_list = text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT")
        if has_list and not fields:
            raise ValueError(f"{text} needs a list of header field names")
        if fields and not has_list:
            raise ValueError(f"{text or 'section'} takes no header field list")
        upper = tuple(f.upper() for f in fields)
        for f in upper:
            if not f or any(c <= " " or c == ":" or c > "~" for c in f):
                raise ValueError(f"bad header field name {f!r}")
        return cls(tuple(part), text, upper)

    def render(self) -> bytes:
        """The section as echoed in the FETCH response, e.g. ``1.HEADER.FIELDS (FROM TO)``."""
        spec = ".".join([*map(str, self.part), *([self.text] if self.text else [])])
        if self.fields:
            spec += " (" + " ".join(self.fields) + ")"
        return spec.encode("ascii")


class SectionData:
    """The octets of a section: literal bytes and/or (offset, length) ranges of the file,
    streamed on demand."""

    __slots__ = ("pieces", "size")

    def __init__(self, pieces: list[bytes | tuple[int, int]]) -> None:
        self.pieces = [x for x in pieces if (len(x) if isinstance(x, bytes) else x[1]) > 0]
        self.size = sum(len(x) if isinstance(x, bytes) else x[1] for x in self.pieces)

    def slice(self, origin: int, count: int | None) -> SectionData:
        """RFC 3501 6.4.5 partial <origin.count>: octets origin .. origin+count-1 (fewer when
        the data is shorter; none when origin is beyond the end)."""
        stop = self.size if count is None else min(self.size, origin + count)
        out: list[bytes | tuple[int, int]] = []
        pos = 0
        for x in self.pieces:
            n = len(x) if isinstance(x, bytes) else x[1]
            lo, hi = max(origin, pos), min(stop, pos + n)
            if lo < hi:
                if isinstance(x, bytes):
                    out.append(x[lo - pos : hi - pos])
                else:
                    out.append((x[0] + lo - pos, hi - lo))
            pos += n
        return SectionData(out)

    def chunks(self, fp: BinaryIO, chunk_size: int = 65536) -> Iterator[bytes]:
        for x in self.pieces:
            if isinstance(x, bytes):
                yield x
                continue
            offset, left = x
            fp.seek(offset)
            while left > 0:
                data = fp.read(min(chunk_size, left))
                if not data:  # the file shrank: never hand out fewer octets than announced
                    raise OSError(f"message file ended at {offset + x[1] - left}")
                left -= len(data)
                yield data

    def read(self, fp: BinaryIO) -> bytes:
        """All of it in memory: for small sections only."""
        return b"".join(self.chunks(fp))

    def __repr__(self) -> str:
        return f"<SectionData {self.size} octets {self.pieces!r}>"


def find_part(s: MessageStructure, numbers: tuple[int, ...]) -> Part | None:
    """The part a section number names (RFC 3501 6.4.5), or None if there is no such part.
    Numbers after a message/rfc822 part count in the encapsulated message, where 1 names the
    body of a non-multipart message. As in Dovecot, a leaf part of a multipart also answers to
    one ``.1`` more (``2.1`` is part 2), and nothing deeper."""
    node = s.root
    in_message = True  # node is a message whose body the next number indexes
    leaf_once = False
    for i, n in enumerate(numbers):
        if i and node.is_message:
            node = node.children[0]
            in_message = True
        if node.is_multipart:
            if n > len(node.children):
                return None
            node = node.children[n - 1]
            leaf_once = True
        elif n == 1 and (in_message or leaf_once):
            leaf_once = False
        else:
            return None
        in_message = False
    return node


def section_data(s: MessageStructure, section: Section, fp: BinaryIO) -> SectionData:
    """The octets of BODY[section] (before any partial): an empty SectionData when the part
    does not exist (RFC 3501 answers "" then, as Dovecot does)."""
    node = find_part(s, section.part)
    if node is None:
        return SectionData([])
    text = section.text
    if text == "":
        if not section.part:
            return SectionData([(0, node.end)])
        return SectionData([(node.body_start, node.size)])
    if text == "MIME":
        return SectionData([(node.header_start, node.header_size)])
    # HEADER, HEADER.FIELDS[.NOT], TEXT: of the message (top) or of a message/rfc822 part
    if section.part:
        if not node.is_message:
            return SectionData([])
        node = node.children[0]
    if text == "TEXT":
        return SectionData([(node.body_start, node.size)])
    if text == "HEADER":
        return SectionData([(node.header_start, node.header_size)])
    if node is s.root and len(s.header) == node.header_size:
        block = s.header
    else:
        fp.seek(node.header_start)
        block = _read_exact(fp, min(node.header_size, 4 * MAX_KEPT_HEADER))
    return SectionData([filter_fields(block, section.fields, text == "HEADER.FIELDS.NOT")])


_HEADER_TEXTS = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT")


def is_top_header(section: Section) -> bool:
    """BODY[HEADER], BODY[HEADER.FIELDS (...)], BODY[HEADER.FIELDS.NOT (...)] (RFC822.HEADER)
    of the message itself: what ``header_section_data`` answers from a MessageHeader."""
    return not section.part and section.text in _HEADER_TEXTS


def header_section_data(h: MessageHeader, section: Section) -> SectionData | None:
    """A top-level header section (``is_top_header``) from the header block alone: the octets
    ``section_data`` gives from the file. None when the block was cut (MAX_KEPT_HEADER): then
    only the file has them. Whole, the block is the file's first ``header_size`` octets, as
    the root part's header is (``header_start`` 0): the same bytes, the same field filter."""
    block = h.header
    if len(block) != h.header_size:
        return None
    if section.text == "HEADER":
        return SectionData([block])
    return SectionData([filter_fields(block, section.fields, section.text == "HEADER.FIELDS.NOT")])


def _read_exact(fp: BinaryIO, n: int) -> bytes:
    out = []
    while n > 0:
        data = fp.read(n)
        if not data:
            break
        out.append(data)
        n -= len(data)
    return b"".join(out)


def filter_fields(block: bytes, names: tuple[str, ...], exclude: bool) -> bytes:
    """HEADER.FIELDS / HEADER.FIELDS.NOT: the fields of a header block whose name is (not) in
    names, case-insensitively, in message order, all occurrences, continuation lines included,
    and the blank line that ends a header (RFC 3501 6.4.5: the subset is itself a header)."""
    wanted = {n.lower().encode("ascii", "replace") for n in names}
    out: list[bytes] = []
    keep = False
    for line in block.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        colon = line.find(b":")
        # a line that is no field (no colon) is a field without value for this, as in Dovecot
        name = (line[:colon] if colon >= 0 else line).rstrip(b" \t\r\n").lower()
        keep = (name in wanted) != exclude
        if keep:
            out.append(line if line.endswith(b"\n") else line + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)
