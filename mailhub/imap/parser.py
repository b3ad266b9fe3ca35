"""IMAP command input: cutting the byte stream into commands, and parsing a command's arguments.

Two layers, both free of I/O:

- ``CommandFramer`` cuts the stream into commands: line fragments and the literals between them
  (RFC 3501 4.3 ``{n}``, RFC 7888 ``{n+}``). It says when a synchronising literal wants its
  ``+`` continuation, enforces the line and literal limits without buffering what it refuses,
  and spools large literals (APPEND) to a file as they arrive (the target folder's tmp/).
- ``parse_items`` turns a framed command into generic items: ``Atom`` (unquoted, case as sent),
  ``bytes`` (quoted string or literal), ``list`` (parenthesised, nested) and ``SpooledLiteral``
  (a literal kept in a file). Per-command grammar (FETCH attributes, STORE, ...) lives in
  ``arguments.py`` on top of these items.

A FETCH section atom (``BODY[``, ``BODY.PEEK[``, ``BINARY[``...) runs to the matching ``]``
including spaces and parentheses, so ``BODY.PEEK[HEADER.FIELDS (From To)]<0.100>`` stays one
atom. Anywhere else ``[`` and ``]`` are ordinary characters: ``[`` is an ATOM-CHAR and ``]`` an
ASTRING-CHAR and list-char (RFC 3501 9), so ``SELECT a[b`` and ``LIST "" x]%`` name mailboxes.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import BinaryIO, Literal


class Atom(str):
    """An unquoted atom as sent by the client, e.g. ``Atom("SUBJECT")`` or ``Atom("NIL")``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


class ParseError(ValueError):
    """The command's syntax is wrong: answered with a tagged BAD."""


@dataclass
class SpooledLiteral:
    """A literal too large to keep in memory: its octets are in ``file`` (positioned at 0)."""

    file: BinaryIO
    size: int

    def close(self) -> None:
        self.file.close()


Item = Atom | bytes | list | SpooledLiteral

# --- framing -------------------------------------------------------------------------------

# A line ending in a literal announcement: {n}, {n+} (RFC 7888), ~{n} (RFC 3516 literal8).
_LITERAL_AT_END = re.compile(rb"~?\{([0-9]{1,20})(\+?)\}\Z")
_TAG = re.compile(rb"[\x21\x23\x24\x26\x27\x2c-\x5a\x5e-\x7a\x7c\x7e]{1,100}")


@dataclass
class Command:
    """One framed command: ``fragments[i]`` is followed by ``literals[i]``."""

    fragments: list[bytes]
    literals: list[bytes | SpooledLiteral] = field(default_factory=list)

    @property
    def tag(self) -> str:
        return tag_of(self.fragments[0])

    def discard(self) -> None:
        """Close spooled literals (the command was refused or is done)."""
        for lit in self.literals:
            if isinstance(lit, SpooledLiteral):
                lit.close()


@dataclass
class Continue:
    """A synchronising literal was announced and may be sent: answer ``+``."""


@dataclass
class Refused:
    """The command (tag ``tag``) is refused before it was complete; ``code`` is "TOOBIG" for a
    literal over the limit, "LINE" for an over-long line. ``fatal``: a non-synchronising literal
    too large to skip is on its way, so nothing after it can be read as commands: the session
    must end (RFC 7888 4)."""

    tag: str
    code: str
    what: str  # the command name (upper case), "" if unknown
    fatal: bool = False


Event = Command | Continue | Refused


def tag_of(line: bytes) -> str:
    """The tag at the start of a line, or ``*`` when there is no usable one."""
    m = _TAG.match(line)
    if m is None or (m.end() < len(line) and line[m.end()] != 0x20):
        return "*"
    return m.group().decode("ascii")


def _command_name(line: bytes) -> str:
    parts = line.split(b" ", 3)
    if len(parts) < 2:
        return ""
    name = parts[1].upper()
    if name == b"UID" and len(parts) > 2:
        name = parts[2].upper()
    return name.decode("ascii", "replace")


_LINE, _LITERAL, _SKIP_LINE, _DISCARD, _CLOSED = range(5)


class CommandFramer:
    """Cuts the client's input into ``Command`` events (see the module docstring).

    ``max_line``: bytes of one line (without literals); a longer line is refused ("LINE") and
    skipped to its end. Literals of APPEND may be up to ``max_append`` octets (RFC 7889
    APPENDLIMIT) and go to a temporary file above ``spool_threshold``; other commands' literals
    count against ``max_line`` (they are names, passwords and search strings, kept in memory).
    A synchronising literal over the limit is refused at once (the client sends nothing more
    of that command). A non-synchronising one is already on its way (RFC 7888 4: the server
    either reads and discards it, or says BYE and closes): up to ``max_discard`` octets (twice
    the APPEND limit unless given) it is read and thrown away as it arrives, so a client that
    overshoots a little keeps its session; a larger one is refused with ``fatal`` set and the
    framer reads nothing more (skipping ``{99999999999+}`` would look like a hang).

    ``spool_to(command_so_far)`` picks the file a large APPEND literal is written into as it
    arrives: the protocol gives a file in the target folder's tmp/, so delivery is a link and
    the message is written once (as SMTP's). ``command_so_far`` is the command up to the literal
    (its announcement cut off). None (or no ``spool_to``): an anonymous temporary file.
    """

    def __init__(
        self,
        *,
        max_line: int,
        max_append: int,
        spool_threshold: int = 256 * 1024,
        max_discard: int | None = None,
        spool_to: Callable[[Command], BinaryIO | None] | None = None,
    ) -> None:
        self.max_line = max_line
        self.max_append = max_append
        self.max_discard = 2 * max(max_append, max_line) if max_discard is None else max_discard
        self.spool_threshold = spool_threshold
        self.spool_to = spool_to
        self._buf = bytearray()
        self._scan = 0  # where to look for the next LF
        self._mode = _LINE
        self._fragments: list[bytes] = []
        self._literals: list[bytes | SpooledLiteral] = []
        self._size = 0  # bytes of the command so far (for non-APPEND commands)
        self._remaining = 0  # literal octets still to come
        self._lit_buf: bytearray | None = None
        self._lit_file: BinaryIO | None = None
        self._lit_size = 0
        self._doomed: Refused | None = None  # the command is being read only to skip it

    # -- input ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def reset(self) -> None:
        """Forget everything buffered (after STARTTLS: RFC 3501 6.2.1, CVE-2011-0411)."""
        self._close_partial()
        self._buf = bytearray()
        self._scan = 0
        self._mode = _LINE
        self._fragments, self._literals, self._size, self._doomed = [], [], 0, None

    def close(self) -> None:
        self._close_partial()

    def _close_partial(self) -> None:
        for lit in self._literals:
            if isinstance(lit, SpooledLiteral):
                lit.close()
        if self._lit_file is not None:
            self._lit_file.close()
            self._lit_file = None
        self._lit_buf = None

    # -- raw lines (IDLE's DONE, AUTHENTICATE responses) -----------------------------------

    def next_line(self) -> bytes | Refused | None:
        """The next whole line without its line end, outside of command framing."""
        if self._mode == _CLOSED:
            self._buf.clear()
            return None
        if self._mode == _SKIP_LINE:
            if not self._skip_to_eol():
                return None
        i = self._buf.find(b"\n", self._scan)
        if i < 0:
            self._scan = len(self._buf)
            if len(self._buf) > self.max_line:
                self._buf.clear()
                self._scan = 0
                self._mode = _SKIP_LINE
                return Refused("*", "LINE", "")
            return None
        line = bytes(self._buf[:i]).removesuffix(b"\r")
        del self._buf[: i + 1]
        self._scan = 0
        return line

    # -- commands ------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        """The next event, or None when more input is needed."""
        while True:
            mode = self._mode
            if mode == _CLOSED:
                self._buf.clear()
                return None
            if mode == _SKIP_LINE:
                if not self._skip_to_eol():
                    return None
                continue
            if mode in (_LITERAL, _DISCARD):
                if not self._take_literal():
                    return None
                continue
            event = self._take_line()
            if event is not False:
                return event

    def _skip_to_eol(self) -> bool:
        i = self._buf.find(b"\n")
        if i < 0:
            self._buf.clear()
            return False
        del self._buf[: i + 1]
        self._scan = 0
        self._mode = _LINE
        return True

    def _take_line(self) -> Event | Literal[False] | None:
        """One line fragment; False when it was consumed without an event to report."""
        buf = self._buf
        i = buf.find(b"\n", self._scan)
        if i < 0:
            self._scan = len(buf)
            if len(buf) > self.max_line:
                refused = self._refuse_line(bytes(buf[:200]))
                buf.clear()
                self._scan = 0
                self._mode = _SKIP_LINE
                return refused
            return None
        if i > self.max_line:
            refused = self._refuse_line(bytes(buf[:200]))
            del buf[: i + 1]
            self._scan = 0
            return refused
        line = bytes(buf[:i]).removesuffix(b"\r")
        del buf[: i + 1]
        self._scan = 0
        first = self._fragments[0] if self._fragments else line
        self._fragments.append(line)
        is_append = _command_name(first) == "APPEND"
        self._size += len(line)
        if not is_append and self._size > self.max_line:
            return self._finish(self._refusal(first, "LINE"))
        m = _LITERAL_AT_END.search(line)
        if m is None:
            return self._finish(self._doomed)
        size, nonsync = int(m.group(1)), bool(m.group(2))
        limit = self.max_append if is_append else self.max_line - self._size
        if nonsync and size > self.max_discard and (size > limit or self._doomed is not None):
            # Too much to read just to skip it (RFC 7888 4): the session ends.
            refused = self._doomed or self._refusal(first, "TOOBIG")
            self._mode = _CLOSED
            self._buf.clear()
            return self._finish(replace(refused, fatal=True))
        if size > limit:
            refused = self._refusal(first, "TOOBIG" if is_append else "LINE")
            if not nonsync or self._doomed is not None:
                # The client waits for "+" and gets the refusal instead; nothing more comes.
                return self._finish(self._doomed or refused)
            self._doomed = refused
            self._mode, self._remaining = _DISCARD, size
            return False
        if not is_append:
            self._size += size
        if self._doomed is not None:
            if not nonsync:
                return self._finish(self._doomed)
            self._mode, self._remaining = _DISCARD, size
            return False
        self._mode, self._remaining, self._lit_size = _LITERAL, size, size
        if size > self.spool_threshold:
            spool = None
            if self.spool_to is not None and is_append:
                so_far = [*self._fragments[:-1], line[: m.start()]]
                spool = self.spool_to(Command(so_far, list(self._literals)))
            if spool is None:
                spool = tempfile.TemporaryFile(prefix="mailhub-imap-literal-")
            self._lit_file = spool
        else:
            self._lit_buf = bytearray()
        return False if nonsync else Continue()

    def _take_literal(self) -> bool:
        buf = self._buf
        n = min(self._remaining, len(buf))
        if n:
            if self._mode == _LITERAL:
                chunk = memoryview(buf)[:n]
                if self._lit_file is not None:
                    self._lit_file.write(chunk)
                else:
                    assert self._lit_buf is not None
                    self._lit_buf += chunk
                chunk.release()
            del buf[:n]
            self._remaining -= n
        if self._remaining:
            return False
        if self._mode == _LITERAL:
            if self._lit_file is not None:
                self._lit_file.seek(0)
                self._literals.append(SpooledLiteral(self._lit_file, self._lit_size))
                self._lit_file = None
            else:
                assert self._lit_buf is not None
                self._literals.append(bytes(self._lit_buf))
                self._lit_buf = None
        else:
            self._literals.append(b"")  # placeholder: the command is refused anyway
        self._mode = _LINE
        self._scan = 0
        return True

    def _refusal(self, first: bytes, code: str) -> Refused:
        return Refused(tag_of(first), code, _command_name(first))

    def _refuse_line(self, start: bytes) -> Refused:
        first = self._fragments[0] if self._fragments else start
        refused = self._doomed or self._refusal(first, "LINE")
        self._close_partial()
        self._fragments, self._literals, self._size, self._doomed = [], [], 0, None
        return refused

    def _finish(self, refused: Refused | None) -> Event:
        fragments, literals = self._fragments, self._literals
        self._fragments, self._literals, self._size, self._doomed = [], [], 0, None
        if refused is not None:
            for lit in literals:
                if isinstance(lit, SpooledLiteral):
                    lit.close()
            return refused
        return Command(fragments, literals)


# --- items ---------------------------------------------------------------------------------

_SPACE = 0x20
# Parenthesised lists nest this deep at most: real commands need a few levels (SEARCH, FETCH
# BODY[HEADER.FIELDS (...)]); far deeper input would exhaust the parser's (and the command
# handlers') stack, so it is refused with BAD.
MAX_NESTING = 100
_ATOM_END = frozenset(b' ()"') | frozenset(range(0x00, 0x20)) | {0x7F}
# The fetch attributes whose "[section]" may hold spaces and parentheses (RFC 3501 6.4.5,
# RFC 3516 BINARY): only after these does "[" open a bracketed part of the atom.
_SECTION_ATOMS = frozenset({b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"})


class _Reader:
    def __init__(self, command: Command) -> None:
        self.fragments = command.fragments
        self.literals = command.literals
        self.index = 0
        self.text = command.fragments[0]
        self.pos = 0

    def items(self, depth: int = 0) -> list[Item]:
        out: list[Item] = []
        while True:
            text = self.text
            while self.pos < len(text) and text[self.pos] == _SPACE:
                self.pos += 1
            if self.pos >= len(text):
                if self.index < len(self.fragments) - 1:
                    raise ParseError("literal announcement without a literal")
                if depth:
                    raise ParseError("missing )")
                return out
            c = text[self.pos]
            if c == 0x28:  # (
                if depth >= MAX_NESTING:
                    raise ParseError(f"lists nested deeper than {MAX_NESTING} levels")
                self.pos += 1
                out.append(self.items(depth + 1))
            elif c == 0x29:  # )
                if not depth:
                    raise ParseError("unexpected )")
                self.pos += 1
                return out
            elif c == 0x22:  # "
                out.append(self.quoted())
            elif (c == 0x7B or (c == 0x7E and text[self.pos + 1 : self.pos + 2] == b"{")) and (
                self.index < len(self.fragments) - 1 and _LITERAL_AT_END.match(text, self.pos)
            ):
                out.append(self.literals[self.index])
                self.index += 1
                self.text, self.pos = self.fragments[self.index], 0
            else:
                out.append(self.atom())
            # Items are separated by a space or a parenthesis.
            if self.pos < len(self.text) and self.text[self.pos] not in (_SPACE, 0x29, 0x28):
                raise ParseError("missing space between arguments")

    def quoted(self) -> bytes:
        text, i = self.text, self.pos + 1
        out = bytearray()
        while i < len(text):
            c = text[i]
            if c == 0x22:
                self.pos = i + 1
                return bytes(out)
            if c == 0x5C:  # backslash: only \\ and \" (RFC 3501 9 quoted-specials)
                if i + 1 < len(text) and text[i + 1] in (0x22, 0x5C):
                    out.append(text[i + 1])
                    i += 2
                    continue
                raise ParseError("bad escape in quoted string")
            if c in (0x0D, 0x0A, 0x00):
                raise ParseError("CR, LF or NUL in quoted string")
            out.append(c)
            i += 1
        raise ParseError("unterminated quoted string")

    def atom(self) -> Atom:
        text, i, depth = self.text, self.pos, 0
        start = i
        while i < len(text):
            c = text[i]
            if c == 0x5B and (depth or text[start:i].upper() in _SECTION_ATOMS):  # [
                depth += 1
            elif c == 0x5D and depth:  # ]
                depth -= 1
            elif depth:
                if c < 0x20 or c == 0x7F:
                    raise ParseError("control character in argument")
            elif c in _ATOM_END:
                break
            elif c == 0x7B:  # "{" is an atom-special (RFC 3501 9): only a literal starts so
                raise ParseError("'{' outside a literal announcement {n}")
            i += 1
        if depth:
            raise ParseError("missing ]")
        if i == start:
            raise ParseError("bad character in argument")
        self.pos = i
        return Atom(text[start:i].decode("utf-8", "surrogateescape"))


def parse_command(command: Command) -> tuple[str, str, list[Item]]:
    """``(tag, COMMAND-NAME, items)``; ParseError for bad syntax (the tag is ``command.tag``)."""
    reader = _Reader(command)
    first = command.fragments[0]
    tag = tag_of(first)
    if tag == "*" or first[len(tag) : len(tag) + 1] != b" ":
        raise ParseError("missing or invalid tag")
    reader.pos = len(tag) + 1
    items = reader.items()
    if not items or not isinstance(items[0], Atom):
        raise ParseError("missing command name")
    return tag, items[0].upper(), items[1:]


def parse_items(command: Command) -> list[Item]:
    """Every item of a command's text (no tag handling): for tests and raw parsing."""
    return _Reader(command).items()


def items_of(text: bytes) -> list[Item]:
    """Items of a single line without literals (for tests and for ``SEARCH`` in tests)."""
    return parse_items(Command([text]))
