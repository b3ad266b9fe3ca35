"""The parse of a message as every protocol uses it: the MIME part tree with byte offsets and
content fields (``Part``, ``MessageStructure``) and the top-level header alone
(``MessageHeader``), each with the raw ENVELOPE fields (RFC 3501 7.4.2 order). This is what the
store's cache keeps (``to_bytes``/``from_bytes``: plain tuples, marshalled); ``mailhub.message
.mime`` makes them from a file, ``mailhub.imap.bodystructure`` renders them for FETCH.

Part model (as Dovecot's): every part has a header [header_start, body_start) and a body
[body_start, end). A multipart's children are its parts; a message/rfc822 part has one child,
the encapsulated message, whose header starts at the part's body. The top-level part is the
message itself.
"""

from __future__ import annotations

import marshal
from collections.abc import Iterator

from mailhub.message import headers as mh

_VERSION = 1  # bump when the encoded layout of MessageStructure changes
HEADER_VERSION = "header-2"  # the same for MessageHeader

# RFC 3501 7.4.2 ENVELOPE order
ENVELOPE_FIELDS = (
    b"date",
    b"subject",
    b"from",
    b"sender",
    b"reply-to",
    b"to",
    b"cc",
    b"bcc",
    b"in-reply-to",
    b"message-id",
)
ADDRESS_FIELDS = frozenset(range(2, 8))  # from .. bcc


# -- the structure ---------------------------------------------------------------------------


class Part:
    """One MIME part. Field values are raw bytes (unfolded) or None; type/subtype as sent."""

    __slots__ = (
        "body_start",
        "children",
        "description",
        "disposition",
        "encoding",
        "end",
        "envelope",
        "header_start",
        "id",
        "language",
        "lines",
        "location",
        "md5",
        "params",
        "subtype",
        "type",
    )

    def __init__(self) -> None:
        self.header_start = 0
        self.body_start = 0
        self.end = 0
        self.lines = 0
        self.type = b"text"
        self.subtype = b"plain"
        self.params: tuple[tuple[bytes, bytes], ...] = ()
        self.id: bytes | None = None
        self.description: bytes | None = None
        self.encoding: bytes | None = None
        self.md5: bytes | None = None
        self.disposition: tuple[bytes, tuple[tuple[bytes, bytes], ...]] | None = None
        self.language: tuple[bytes, ...] | None = None
        self.location: bytes | None = None
        self.children: list[Part] = []
        # for message roots (top level and encapsulated messages): the ENVELOPE fields
        self.envelope: tuple[bytes | None, ...] | None = None

    @property
    def is_multipart(self) -> bool:
        return self.type.lower() == b"multipart"

    @property
    def is_message(self) -> bool:
        """message/rfc822 with an encapsulated message parsed (RFC 2046 5.2.1)."""
        return bool(self.children) and not self.is_multipart

    @property
    def size(self) -> int:
        return self.end - self.body_start

    @property
    def header_size(self) -> int:
        return self.body_start - self.header_start

    def _to_tuple(self) -> tuple:
        return (
            self.header_start,
            self.body_start,
            self.end,
            self.lines,
            self.type,
            self.subtype,
            self.params,
            self.id,
            self.description,
            self.encoding,
            self.md5,
            self.disposition,
            self.language,
            self.location,
            tuple(c._to_tuple() for c in self.children),
            self.envelope,
        )

    @classmethod
    def _from_tuple(cls, t: tuple) -> Part:
        p = cls.__new__(cls)
        (
            p.header_start,
            p.body_start,
            p.end,
            p.lines,
            p.type,
            p.subtype,
            p.params,
            p.id,
            p.description,
            p.encoding,
            p.md5,
            p.disposition,
            p.language,
            p.location,
            children,
            p.envelope,
        ) = t
        p.children = [cls._from_tuple(c) for c in children]
        return p

    def walk(self) -> Iterator[Part]:
        yield self
        for c in self.children:
            yield from c.walk()


class MessageStructure:
    """What one parse of a message file yields: the part tree and the top-level header block.
    ``to_bytes``/``from_bytes`` are a marshal of plain tuples; the part tree is rebuilt lazily
    on first use, so decoding many cached structures for SEARCH on headers stays cheap."""

    __slots__ = ("_data", "_root", "memo")

    def __init__(self, data: tuple) -> None:
        # (version, header block, envelope, file size, marshalled part tree): the tree stays
        # one bytes object until a FETCH needs it, so decoding is one small marshal.loads
        self._data = data
        self._root: Part | None = None
        self.memo: dict = {}  # derived values (e.g. decoded header text for SEARCH)

    @classmethod
    def _build(cls, header: bytes, root: Part, size: int) -> MessageStructure:
        tree = marshal.dumps(root._to_tuple())
        s = cls((_VERSION, header, root.envelope, size, tree))
        s._root = root
        return s

    def to_bytes(self) -> bytes:
        return marshal.dumps(self._data)

    @classmethod
    def from_bytes(cls, data: bytes) -> MessageStructure:
        t = marshal.loads(data)
        if type(t) is not tuple or not t or t[0] != _VERSION:
            raise ValueError("not a MessageStructure of this version")
        return cls(t)

    @property
    def header(self) -> bytes:
        """The top-level header block including the blank line (cut at MAX_KEPT_HEADER)."""
        return self._data[1]

    @property
    def envelope_fields(self) -> tuple[bytes | None, ...]:
        """Raw (unfolded) values of the ENVELOPE fields of the message, in ENVELOPE order."""
        return self._data[2]

    @property
    def size(self) -> int:
        """Octets of the message file (RFC822.SIZE as stored)."""
        return self._data[3]

    @property
    def root(self) -> Part:
        """The top-level part (the message itself)."""
        if self._root is None:
            self._root = Part._from_tuple(marshal.loads(self._data[4]))
        return self._root

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MessageStructure) and self._data == other._data

    def __hash__(self) -> int:
        return hash(self._data[4])

    def __repr__(self) -> str:
        return f"<MessageStructure {self.size} octets, {sum(1 for _ in self.root.walk())} parts>"


class MessageHeader:
    """The top-level header of a message alone, read without its body: what SEARCH on header
    keys (SUBJECT, FROM, HEADER, SENT*, ...) and ENVELOPE need. The same header block and
    ENVELOPE fields as the MessageStructure of the message, much cheaper to get: the file is
    read only to the end of its header. For the usual small header the ENVELOPE fields are
    found in the block on demand, one at a time (a SUBJECT search looks for Subject only)."""

    __slots__ = ("_data", "_fields", "_low", "memo")

    def __init__(self, data: tuple) -> None:
        # (version tag, header block, header octets in the file, envelope fields or None when
        # they are to be found in the header block)
        self._data = data
        self._fields: list[bytes | object | None] | None = None
        self._low: bytes | None = None  # the block in lower case, to find fields in
        self.memo: dict = {}

    def to_bytes(self) -> bytes:
        return marshal.dumps(self._data)

    @classmethod
    def from_bytes(cls, data: bytes) -> MessageHeader:
        t = marshal.loads(data)
        if type(t) is not tuple or len(t) != 4 or t[0] != HEADER_VERSION:
            raise ValueError("not a MessageHeader of this version")
        return cls(t)

    @property
    def header(self) -> bytes:
        """The top-level header block including the blank line (cut at MAX_KEPT_HEADER)."""
        return self._data[1]

    @property
    def header_size(self) -> int:
        """Octets of the header in the file, blank line included (not cut)."""
        return self._data[2]

    def envelope_field(self, index: int) -> bytes | None:
        """The raw (unfolded) value of ENVELOPE field ``index`` (ENVELOPE_FIELDS order)."""
        if self._data[3] is not None:
            return self._data[3][index]
        if self._fields is None:
            self._fields = [_UNKNOWN] * len(ENVELOPE_FIELDS)
        value = self._fields[index]
        if value is _UNKNOWN:
            if self._low is None:
                self._low = self._data[1].lower()
            value = self._fields[index] = _find_field(self._data[1], self._low, index)
        return value  # type: ignore[return-value]

    @property
    def envelope_fields(self) -> tuple[bytes | None, ...]:
        """Raw (unfolded) values of the ENVELOPE fields of the message, in ENVELOPE order."""
        if self._data[3] is not None:
            return self._data[3]
        return tuple(self.envelope_field(i) for i in range(len(ENVELOPE_FIELDS)))

    def lower_header(self) -> bytes:
        """``header.lower()``, kept (field look-ups share it)."""
        low = self._low
        if low is None:
            low = self._low = self._data[1].lower()
        return low

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MessageHeader) and self._data == other._data

    def __hash__(self) -> int:
        return hash(self._data)

    def __repr__(self) -> str:
        return f"<MessageHeader {self.header_size} octets>"


_UNKNOWN = object()


_LINE_FIELDS = tuple(b"\n" + name for name in ENVELOPE_FIELDS)
_WSP = (b" ", b"\t")


def _find_field(block: bytes, low: bytes, index: int) -> bytes | None:
    """ENVELOPE field ``index`` of a header block shorter than mime's MAX_LINE, MAX_FIELD and
    MAX_KEPT_HEADER (kept as read by ``mime.parse_header``; ``low`` is it in lower case): every
    line of it is one readline piece and no cut applies, so this finds what
    ``mime._read_header`` would: the name at a line start, case-insensitively, then optional
    blanks and a colon; the value runs to the end of the line and its continuation lines
    (RFC 5322 2.2.3 folding)."""
    name = ENVELOPE_FIELDS[index]
    line_name = _LINE_FIELDS[index]
    if index not in ADDRESS_FIELDS:
        # The last field counts: when the name's last appearance at a line start is such a
        # field (colon right after the name) of one line, that is the value, found with one
        # rfind (a line with the name can only start a field: a continuation starts with
        # white space). Anything else takes the walk below.
        last = low.rfind(line_name)
        if last >= 0:
            colon = last + len(line_name)
            if block[colon : colon + 1] == b":":
                nl = block.find(b"\n", colon)
                if nl >= 0 and block[nl + 1 : nl + 2] not in _WSP:
                    return block[colon + 1 : nl].lstrip(b" \t").rstrip(b"\r")
    value = None
    at = 0 if low.startswith(name) else _after(low.find(line_name))
    while at >= 0:
        colon = at + len(name)
        while block[colon : colon + 1] in _WSP:
            colon += 1
        if block[colon : colon + 1] == b":":
            nl = block.find(b"\n", colon)
            while nl >= 0 and block[nl + 1 : nl + 2] in _WSP:
                nl = block.find(b"\n", nl + 1)
            val = mh.unfold(block[colon + 1 :] if nl < 0 else block[colon + 1 : nl + 1])
            # as _read_header: repeated address fields add up, other fields: the last one counts
            value = value + b", " + val if value and index in ADDRESS_FIELDS else val
            if nl < 0:
                break
            at = nl
        at = _after(low.find(line_name, at))
    return value


def _after(newline: int) -> int:
    """Where the line after the LF at ``newline`` starts; -1 for no LF (-1) found."""
    return newline + 1 if newline >= 0 else -1
