"""A message's list summary and search text without a full ``email`` parse.

The page's list needs a few header fields, the first words of the text body and which parts are
attachments. ``parse.summarise`` gets them from a full parse (~1.3 ms a message, every part
decoded); here (~0.1 ms):

* a small file is read whole in one read; the header is split as the ``email`` feed parser
  splits it (plain blocks directly, others by that parser itself), and only the fields shown
  are turned into values, by the same ``email.policy.default`` header classes (memoised per
  distinct value; the plainest values are recognised directly, checked against those classes
  in tests/test_web_parse.py);
* a single-part message's one part is its header's content fields over the rest of the file; a
  multipart one is scanned by ``mailhub.message.mime.parse_structure`` (offsets and content
  fields, nothing decoded);
* the text body is decoded from a bounded prefix only.

The result is ``parse.summarise``'s but for attachment sizes (not counted: a list does not show
them). A message whose MIME tree the two parsers might see differently (``_usual``) or whose
header the feed parser finds defective takes the full parse (``Odd``).
"""

from __future__ import annotations

import email.policy
import email.utils
import io
import os
import quopri
import re
from base64 import b64decode
from binascii import Error as Base64Error
from collections.abc import Callable, Iterator
from email.parser import BytesHeaderParser
from email.policy import compat32
from functools import lru_cache
from typing import BinaryIO, TypeVar
from urllib.parse import unquote_to_bytes

from mailhub.message import headers as mh
from mailhub.message import mime
from mailhub.message.header_text import from_bytes, from_escaped
from mailhub.message.headers import decode_words
from mailhub.web import parse

# A message file this small is read whole, at once (most are).
SMALL_FILE = 64 * 1024
# The first read of a message: its header, and all of it if it is small.
HEAD_READ = 16 * 1024
_HEADER_END = re.compile(rb"\n\r?\n")
# The first read of a body part for a snippet; doubled while the text read so far is too short.
SNIPPET_READ = 4096
# Search text: at most this many characters of a message's body text are searched.
SEARCH_TEXT = 64 * 1024
# Parts beyond this many: the full parse (a MIME bomb is slow either way, but bounded there).
MAX_PARTS = 200

# Splits the header exactly as a full parse does (the same feed parser; compat32 only keeps the
# raw values, which are the values ``policy.default`` gets before it parses a field).
_HEADER_PARSER = BytesHeaderParser(policy=compat32)
_LINESEP = re.compile(r"\n|\r")  # email.policy's linesep_splitter: how a value is unfolded
_PLAIN_TEXT = re.compile(r"[ -~]*")  # printable ASCII: no encoded words once "=?" is ruled out
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
_ADDR_SPEC = rf"{_DOT_ATOM}@{_DOT_ATOM}"
_MESSAGE_ID = re.compile(rf"<{_ADDR_SPEC}>")
# One plain mailbox (RFC 5322 3.4): addr-spec, <addr-spec>, atoms <addr-spec>, "quoted" <...>
_MAILBOX = re.compile(
    rf" *(?:(?P<bare>{_ADDR_SPEC})"
    rf'|(?:(?P<name>{_ATOM}(?: {_ATOM})*) |"(?P<quoted>[ !#-\[\]-~]*)" ?)?'
    rf"<(?P<angle>{_ADDR_SPEC})>)"
    r" *"
)


T = TypeVar("T")


class Odd(Exception):
    """The message has something the scan does not model: the caller takes the full parse."""


# -- header fields ----------------------------------------------------------------------------


def _unfolded(raw: str) -> str:
    return "".join(_LINESEP.split(raw))


@lru_cache(maxsize=8192)
def _field_text(name: str, value: str) -> str:
    """``parse._header``: the field as the default policy shows it, on one line."""
    try:
        return parse._one_line(str(parse.POLICY.header_factory(name, value)))
    except Exception:
        return ""  # the caller shows the raw value instead (as parse._header does)


@lru_cache(maxsize=8192)
def _field_addresses(name: str, value: str) -> tuple[parse.Address, ...] | None:
    """``parse._addresses`` for one unfolded value; None when the policy cannot parse it."""
    try:
        header = parse.POLICY.header_factory(name, value)
        return tuple(parse._address(a.display_name, a.addr_spec) for a in header.addresses)
    except Exception:
        return None


def plain_addresses(value: str) -> tuple[parse.Address, ...] | None:
    """The addresses of a list of plain mailboxes, as the default policy gives them, or None
    for anything else (groups, comments, encoded words, quoting, odd spacing)."""
    if "=?" in value:
        return None
    out = []
    for item in value.split(","):
        m = _MAILBOX.fullmatch(item)
        if m is None:
            return None
        if m["bare"]:
            out.append(parse.Address("", m["bare"]))
        else:
            out.append(parse.Address(m["name"] or m["quoted"] or "", m["angle"]))
    return tuple(out)


class _Header:
    """The top-level header fields, looked up as ``email.message.Message.get`` does: the first
    field of that name counts."""

    def __init__(self, block: bytes) -> None:
        self.block = block
        fields = _split_plainly(block)
        if fields is None:
            msg = _HEADER_PARSER.parsebytes(block)
            if msg.defects:  # e.g. a line that is no field: the full parse starts the body there
                raise Odd("header defects")
            fields = {}
            for name, raw in msg.raw_items():
                fields.setdefault(name.lower(), raw)
        self.fields = fields

    def raw(self, name: str) -> bytes | None:
        """A field's value as bytes (for the content fields ``mailhub.message.headers`` parses)."""
        value = self.fields.get(name)
        return None if value is None else value.encode("ascii", "surrogateescape")

    def text(self, name: str, *, message_id: bool = False) -> str:
        raw = self.fields.get(name.lower())
        if raw is None:
            return ""
        value = _unfolded(raw)
        if "=?" not in value and _PLAIN_TEXT.fullmatch(value):
            if not message_id or _MESSAGE_ID.fullmatch(value):
                return parse._one_line(value)
        return _field_text(name, value) or parse._one_line(raw)

    def addresses(self, name: str) -> tuple[parse.Address, ...]:
        raw = self.fields.get(name.lower())
        if raw is None:
            return ()
        value = _unfolded(raw)
        found = plain_addresses(value)
        if found is None:
            found = _field_addresses(name, value)
        if found is None:
            text = parse._one_line(raw)
            return (parse.Address("", text),) if text else ()
        return found

    def date(self) -> float | None:
        raw = self.fields.get("date")
        if not raw:
            return None
        try:
            return email.utils.parsedate_to_datetime(parse._one_line(raw)).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None


# A header block the feed parser splits without a second thought: every line a field (a name
# of printable ASCII but ":", then ":"; email's headerRE) or a continuation (leading blank),
# CRLF or LF line ends, no lone CR (the feed parser ends lines there too), the first a field.
_PLAIN_BLOCK = re.compile(
    rb"(?:[\x21-\x39\x3b-\x7e]+:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*\r?\n)*(?:\r?\n)?"
)


_LINE = re.compile(r"[^\n]*\n?")  # str.splitlines would also split at \v, \f, \x1c ...


def _split_plainly(block: bytes) -> dict[str, str] | None:
    """The first raw value of each field as the feed parser and ``header_source_parse`` give
    it (a str with the line ends of folding kept, the blanks after the colon stripped), or None
    for a block that needs the feed parser itself."""
    if not _PLAIN_BLOCK.fullmatch(block) or block.startswith(b"From "):
        return None
    text = block.decode("ascii", "surrogateescape")
    fields: dict[str, str] = {}
    name: str | None = None
    value: list[str] = []
    for found in _LINE.finditer(text):
        line = found[0]
        if not line:
            break
        if line[0] in " \t":
            value.append(line)
            continue
        if name is not None and name not in fields:
            fields[name] = "".join(value).rstrip("\r\n")
        if line in ("\r\n", "\n"):
            name = None
            break
        field, _, rest = line.partition(":")
        name, value = field.lower(), [rest.lstrip(" \t")]
    if name is not None and name not in fields:
        fields[name] = "".join(value).rstrip("\r\n")
    return fields


# -- MIME structure ---------------------------------------------------------------------------


def _ctype(p: mime.Part) -> tuple[str, str]:
    return from_bytes(p.type).lower(), from_bytes(p.subtype).lower()


def _param(params: tuple[tuple[bytes, bytes], ...], name: bytes) -> bytes | None:
    for k, v in params:
        if k.lower() == name:
            return v
    return None


def _disposition(p: mime.Part) -> str:
    return from_bytes(p.disposition[0]).lower() if p.disposition else ""


def _usual(root: mime.Part) -> None:
    """Raise Odd where the two parsers may see a different tree: a multipart without a
    boundary or without parts (``email`` keeps it as one text payload), message/* other than
    rfc822 (``email`` parses all of them as messages, delivery-status as header blocks), a
    multipart/related that names its start part, a top level that is a message, many parts."""
    if root.type.lower() == b"message":
        raise Odd("message/* at the top")
    count = 0
    for p in root.walk():
        count += 1
        if count > MAX_PARTS:
            raise Odd("many parts")
        maintype, subtype = _ctype(p)
        if maintype == "multipart":
            if not _param(p.params, b"boundary"):
                raise Odd("multipart without boundary")
            first = p.children[0]
            if len(p.children) == 1 and first.header_start == first.end == p.body_start:
                raise Odd("multipart without parts")  # parse_structure's stand-in part
            if subtype == "related" and _param(p.params, b"start") is not None:
                raise Odd("multipart/related with start")
        elif maintype == "message" and subtype != "rfc822":
            raise Odd("message/* other than rfc822")


def _find_body(p: mime.Part, preferred: str) -> Iterator[mime.Part]:
    """``EmailMessage._find_body`` on the structure: text/``preferred`` parts that are no
    attachment, not looking into alternatives of multipart/related but its first part."""
    if _disposition(p) == "attachment":
        return
    maintype, subtype = _ctype(p)
    if maintype == "text":
        if subtype == preferred:
            yield p
        return
    if maintype != "multipart":
        return
    if subtype != "related":
        for child in p.children:
            yield from _find_body(child, preferred)
        return
    if p.children:
        yield from _find_body(p.children[0], preferred)


def _body(root: mime.Part, preferred: str) -> mime.Part | None:
    return next(_find_body(root, preferred), None)


def _filename(p: mime.Part) -> str:
    """Best effort (a list summary does not show it): the disposition's filename or the
    type's name, RFC 2231 or RFC 2047 encoded."""
    for params, name in (
        (p.disposition[1] if p.disposition else (), b"filename"),
        (p.params, b"name"),
    ):
        extended = _param(params, name + b"*")
        if extended is not None:
            charset, _, text = email.utils.decode_rfc2231(extended.decode("ascii", "replace"))
            return _percent_decoded(text, charset)
        plain = _param(params, name)
        if plain is not None:
            return decode_words(plain)
    return ""


def _percent_decoded(text: str, charset: str | None) -> str:
    raw = unquote_to_bytes(text)
    try:
        return raw.decode(charset or "us-ascii", "replace")
    except LookupError:
        return raw.decode("utf-8", "replace")


def _attachments(
    root: mime.Part, text: mime.Part | None, html: mime.Part | None
) -> tuple[parse.Attachment, ...]:
    """``parse.attachments``: every leaf that is not the text or HTML body (sizes not counted)."""
    found = []
    for index, p in enumerate(root.walk()):
        if p.children or p is text or p is html:
            continue
        maintype, subtype = _ctype(p)
        if index == 0 and maintype == "text":
            continue
        disposition = _disposition(p)
        cid = from_bytes(p.id).strip() if p.id else ""
        cid = parse._one_line(cid).strip("<> ")
        found.append(
            parse.Attachment(
                part=str(index),
                filename=_filename(p),
                content_type=f"{maintype}/{subtype}",
                size=None,
                content_id=cid,
                inline=disposition == "inline" or (bool(cid) and disposition != "attachment"),
            )
        )
    return tuple(found)


# -- body text --------------------------------------------------------------------------------


def _read(fp: BinaryIO, start: int, length: int) -> bytes:
    fp.seek(start)
    return fp.read(length)


def _decoded_prefix(p: mime.Part, data: bytes, whole: bool) -> str:
    """Text of the body bytes ``data`` (all of the part if ``whole``, else a prefix of it) as
    ``parse.content_text`` gives the whole part; a prefix gives a prefix of that text (its
    last few characters, perhaps a cut character, dropped)."""
    encoding = (p.encoding or b"").decode("ascii", "replace").strip().lower()
    if encoding in ("base64", "quoted-printable") and not whole:
        end = data.rfind(b"\n")  # both decode line by line: cut at a line end
        data = data[: end + 1] if end >= 0 else b""
    if encoding == "quoted-printable":
        data = quopri.decodestring(data)
    elif encoding == "base64":
        joined = b"".join(data.splitlines())
        if not whole:
            joined = joined[: len(joined) // 4 * 4]
        try:
            data = b64decode(joined + b"=" * (-len(joined) % 4), validate=True)
        except (Base64Error, ValueError):
            raise Odd("base64 with junk") from None  # email's decoding forgives it its own way
    elif encoding in ("x-uuencode", "uuencode", "uue", "x-uue"):
        raise Odd("uuencoded text")
    charset = _param(p.params, b"charset")
    name = charset.decode("ascii", "replace") if charset else "ascii"
    try:
        text = from_escaped(data.decode(name, "replace"))  # as parse.content_text
    except (LookupError, UnicodeError, ValueError):
        text = data.decode("utf-8", "replace")
    return text if whole else text[:-8]


_TAG = re.compile(r"<[^>]*>")


def _visible(text: str, html: bool, whole: bool) -> str:
    """parse's tag stripping of an HTML body; of a prefix: only up to its first tag that may
    close after the prefix (so that the result is a prefix of the whole part's)."""
    if not html:
        return text
    if not whole:
        cut = text.find("<", text.rfind(">") + 1)
        if cut >= 0:
            text = text[:cut]
    return _TAG.sub(" ", text)


def _text_prefix(fp: BinaryIO, p: mime.Part, html: bool, enough: int) -> str:
    """At least ``enough`` characters of the part's (whitespace-collapsed) text where it has
    that many, reading as little of it as that takes; a prefix of the whole part's text."""
    read = SNIPPET_READ
    while True:
        whole = read >= p.size
        data = _read(fp, p.body_start, min(read, p.size))
        words = " ".join(_visible(_decoded_prefix(p, data, whole), html, whole).split())
        if whole or len(words) >= enough:
            return words
        read *= 4


def _scan(fp: BinaryIO) -> tuple[_Header, mime.Part]:
    """The top-level header and the MIME tree of the message in ``fp`` (at its start). A
    message that is one part (most are) is not scanned to its end: its tree is the header's
    content fields over the rest of the file. Raises Odd (see ``_usual``)."""
    head = fp.read(HEAD_READ)
    # as mime: the first empty line ends the header (the file's first line, or after an LF)
    blank = re.match(rb"\r?\n", head) or _HEADER_END.search(head)
    header = None
    if blank is not None:
        end = blank.end()
        header = _Header(head[:end])
        ctype = header.raw("content-type")
        parsed = mh.parse_content_type(ctype) if ctype is not None else None
        if parsed is None or parsed[0].lower() not in (b"multipart", b"message"):
            return header, _leaf(header, parsed, end, fp.seek(0, os.SEEK_END))
    fp.seek(0)
    structure = mime.parse_structure(fp)
    if len(structure.header) >= mime.MAX_KEPT_HEADER:
        raise Odd("long header")
    _usual(structure.root)
    if header is None or header.block != structure.header:
        header = _Header(structure.header)
    return header, structure.root


def _leaf(
    header: _Header,
    ctype: tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None,
    body_start: int,
    size: int,
) -> mime.Part:
    """The one part of a single-part message, with the content fields ``parse_structure``
    would give it (parsed by the same ``mailhub.message.headers`` functions, the first field
    counting)."""
    p = mime.Part()  # text/plain unless the header says otherwise (RFC 2045 5.2)
    if ctype is not None:
        p.type, p.subtype, params = ctype
        p.params = tuple(params)
    cte = header.raw("content-transfer-encoding")
    p.encoding = mh.unfold(cte).split(b";")[0].strip() or None if cte else None
    cid = header.raw("content-id")
    p.id = mh.unfold(cid) or None if cid else None
    disposition = header.raw("content-disposition")
    parsed = mh.parse_disposition(disposition) if disposition else None
    if parsed is not None:
        p.disposition = (parsed[0], tuple(parsed[1]))
    p.body_start, p.end = body_start, max(body_start, size)
    return p


def summarise_scanned(fp: BinaryIO) -> parse.Summary:
    """``parse.summarise`` of the message in ``fp`` (at its start), reading what it needs:
    raises Odd for a message the caller should parse in full."""
    header, root = _scan(fp)
    text, html = _body(root, "plain"), _body(root, "html")
    snippet = ""
    if text is not None:
        snippet = _text_prefix(fp, text, False, parse.SNIPPET_LENGTH)
    if not snippet and html is not None:
        snippet = _text_prefix(fp, html, True, parse.SNIPPET_LENGTH)
    senders = header.addresses("From")
    return parse.Summary(
        sender=senders[0] if senders else None,
        to=header.addresses("To"),
        cc=header.addresses("Cc"),
        subject=header.text("Subject"),
        date=header.date(),
        message_id=header.text("Message-ID", message_id=True),
        attachments=_attachments(root, text, html),
        snippet=snippet[: parse.SNIPPET_LENGTH],
        auth=parse.auth_brief(header.fields.get("authentication-results")),
    )


def search_text_scanned(fp: BinaryIO) -> str:
    """``search_text`` by a scan: raises Odd for a message the caller should parse in full."""
    _header, root = _scan(fp)
    text, html = _body(root, "plain"), _body(root, "html")
    if text is not None:  # as parse.body_text: the plain part, else the HTML without tags
        return _text_prefix(fp, text, False, SEARCH_TEXT)
    if html is not None:
        return _text_prefix(fp, html, True, SEARCH_TEXT)
    return ""


def search_text_file(fp: BinaryIO) -> str:
    """What free-text search looks for words in: ``parse.body_text`` with runs of whitespace
    made one space, cut at SEARCH_TEXT characters, in lower case. Kept per message, so a
    search reads no message bodies once every message has been searched once."""
    try:
        words = search_text_scanned(fp)
    except Odd:
        fp.seek(0)
        words = " ".join(parse.body_text(parse.load(fp.read())).split())
    return words[:SEARCH_TEXT].lower()


def summarise_file(fp: BinaryIO) -> parse.Summary:
    """The summary of the message in ``fp``: scanned, or parsed in full when it is odd."""
    try:
        return summarise_scanned(fp)
    except Odd:
        fp.seek(0)
        return parse.summarise(parse.load(fp.read()))


def _at_path(path: str, compute: Callable[[BinaryIO], T]) -> T:
    """``compute`` over the file at ``path``: a small message is read whole in one read and
    worked on in memory (no buffered file object, no further system calls)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, SMALL_FILE)
        if len(data) < SMALL_FILE:
            return compute(io.BytesIO(data))
        os.lseek(fd, 0, os.SEEK_SET)
        with open(fd, "rb", closefd=False) as fp:
            return compute(fp)
    finally:
        os.close(fd)


def summarise_path(path: str) -> parse.Summary:
    """``summarise_file`` of the message file at ``path`` (a cache pass's ``compute_path``)."""
    return _at_path(path, summarise_file)


def search_text_path(path: str) -> str:
    """``search_text_file`` of the message file at ``path``."""
    return _at_path(path, search_text_file)
