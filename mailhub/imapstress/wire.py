"""The wire side of the checker: IMAP values and responses parsed (literals included), and a
small asyncio client that sends tagged commands one at a time and hands every response on in
the order it came."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

COMMAND_TIMEOUT = 60.0  # seconds for one command's answer: a hang is reported, not waited out

_LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}\r\n$")
_LITERAL_AT = re.compile(rb"\{(\d+)\+?\}\r\n")


class Literal(bytes):
    """A string that came as a literal (only to tell it from an atom when reporting)."""


class ParseFailure(ValueError):
    pass


def parse_list(data: bytes, pos: int = 0) -> tuple[list[Any], int]:
    """Parse IMAP values from ``data[pos:]`` up to the ``)`` that closes the current list (or
    the end): atoms and numbers as bytes, quoted strings and literals as bytes, NIL as None,
    lists as lists. An atom keeps a ``[...]`` section whole (``BODY[HEADER.FIELDS (A B)]``)."""
    out: list[Any] = []
    n = len(data)
    while pos < n:
        c = data[pos]
        if c in b" \r\n":
            pos += 1
        elif c == 0x28:  # (
            inner, pos = parse_list(data, pos + 1)
            out.append(inner)
        elif c == 0x29:  # )
            return out, pos + 1
        elif c == 0x22:  # "
            pos += 1
            buf = bytearray()
            while True:
                if pos >= n:
                    raise ParseFailure("unterminated quoted string")
                ch = data[pos]
                if ch == 0x5C:  # backslash
                    buf.append(data[pos + 1])
                    pos += 2
                elif ch == 0x22:
                    pos += 1
                    break
                else:
                    buf.append(ch)
                    pos += 1
            out.append(bytes(buf))
        elif c == 0x7B:  # {
            m = _LITERAL_AT.match(data, pos)
            if m is None:
                raise ParseFailure("bad literal")
            size = int(m.group(1))
            start = m.end()
            out.append(Literal(data[start : start + size]))
            pos = start + size
        else:
            start = pos
            while pos < n and data[pos] not in b" ()\r\n":
                if data[pos] == 0x5B:  # [ ... ] belongs to the atom (BODY[...])
                    end = data.find(b"]", pos)
                    if end < 0:
                        raise ParseFailure("unterminated [")
                    pos = end + 1
                else:
                    pos += 1
            atom = data[start:pos]
            out.append(None if atom.upper() == b"NIL" else atom)
    return out, pos


@dataclass
class Response:
    """One server response, literals included. ``kind`` is ``+``, ``*`` or the tag."""

    kind: str
    raw: bytes

    def short(self, limit: int = 240) -> str:
        """The response for a report: literals shown as {n}, cut at ``limit``."""
        text = _LITERAL_AT.sub(lambda m: b"{%s}" % m.group(1), self.raw)
        shown = text.decode("utf-8", "replace").rstrip("\r\n")
        # a literal's data stays out of reports
        shown = re.sub(r"\{(\d+)\}.*?(?=\)|$)", r"{\1}...", shown, flags=re.S)
        return shown if len(shown) <= limit else shown[:limit] + "..."


@dataclass
class Status:
    """OK/NO/BAD/BYE/PREAUTH with its response code (``code`` upper case, ``code_args`` the
    rest of what was in brackets) and text."""

    status: str
    code: str | None
    code_args: bytes
    text: str


_STATUS = re.compile(rb"(OK|NO|BAD|BYE|PREAUTH)(?: (.*))?$", re.I | re.S)


def parse_status(rest: bytes) -> Status | None:
    m = _STATUS.match(rest.rstrip(b"\r\n"))
    if m is None:
        return None
    text = m.group(2) or b""
    code, args = None, b""
    if text.startswith(b"["):
        end = text.find(b"]")
        if end > 0:
            inside = text[1:end]
            name, _, args = inside.partition(b" ")
            code = name.decode("ascii", "replace").upper()
            text = text[end + 1 :].lstrip()
    return Status(m.group(1).decode().upper(), code, args, text.decode("utf-8", "replace"))


def expand_uid_set(text: bytes | str) -> list[int]:
    """``1:3,7`` -> [1, 2, 3, 7] (ranges ascending, parts in the order given)."""
    if isinstance(text, bytes):
        text = text.decode()
    out: list[int] = []
    for part in text.split(","):
        if ":" in part:
            a, b = (int(x) for x in part.split(":"))
            out.extend(range(min(a, b), max(a, b) + 1))
        elif part:
            out.append(int(part))
    return out


def compress(numbers: Iterable[int]) -> str:
    """[1, 2, 3, 7] -> ``1:3,7``."""
    nums = sorted(set(numbers))
    parts: list[str] = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts.append(str(nums[i]) if i == j else f"{nums[i]}:{nums[j]}")
        i = j + 1
    return ",".join(parts)


class ConnectionGone(Exception):
    pass


class Connection:
    """A small IMAP client: tagged commands one at a time, every response handed to
    ``on_response`` in the order it came (a reader task parses the stream, literals too)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.queue: asyncio.Queue[Response | None] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._read())
        self.tags = 0
        self.capabilities: set[str] = set()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 24)
        return cls(reader, writer)

    async def _read(self) -> None:
        try:
            while True:
                line = await self.reader.readuntil(b"\r\n")
                parts = [line]
                while (m := _LITERAL_AT_END.search(line)) is not None:
                    parts.append(await self.reader.readexactly(int(m.group(1))))
                    line = await self.reader.readuntil(b"\r\n")
                    parts.append(line)
                raw = b"".join(parts)
                kind = raw.split(b" ", 1)[0].decode("ascii", "replace").rstrip("\r\n")
                await self.queue.put(Response(kind, raw))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            await self.queue.put(None)

    async def next(self, timeout: float = COMMAND_TIMEOUT) -> Response:
        item = await asyncio.wait_for(self.queue.get(), timeout)
        if item is None:
            self.queue.put_nowait(None)  # stays closed for later calls
            raise ConnectionGone("connection closed by the server")
        return item

    def next_tag(self) -> str:
        self.tags += 1
        return f"a{self.tags:05d}"

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
        self.task.cancel()


def _shorten(line: str, limit: int = 160) -> str:
    return line if len(line) <= limit else line[:limit] + "..."


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
