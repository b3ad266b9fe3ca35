"""A model-based IMAP concurrency checker: many sessions on one mailbox, each checking what the
server tells it against its own model.

``run_stress(host, port, StressConfig(...))`` opens ``sessions`` connections (plain asyncio
sockets, standard library only: it drives mailhub and Dovecot alike) to one account with two
mailboxes, INBOX and ``Stress``. For ``duration`` seconds every session picks random commands
(a ``random.Random`` per session, from ``seed``): APPEND (with flags and keywords), STORE
(+FLAGS, -FLAGS, FLAGS, .SILENT; system flags and keywords, new ones too), EXPUNGE and UID
EXPUNGE, COPY and MOVE (to the other mailbox, UID forms too), FETCH (flags, a header, whole
bodies, without .PEEK now and then), SEARCH, IDLE, NOOP, and now and then a SELECT of the other
mailbox. A third of the sessions ENABLE QRESYNC (RFC 7162) and so hear VANISHED and MODSEQ.
The same seed gives every session the same choices; the interleaving is the machine's.

Each session keeps a model of its selected mailbox from the untagged responses alone: the
messages in sequence order with UID, flags, \\Recent and MODSEQ; the FLAGS and PERMANENTFLAGS it
was given; UIDVALIDITY and UIDNEXT. Like a real client, it asks for the UID and flags of every
message an EXISTS announced before its next command. Every response is checked against the
model; what breaks a rule is a ``Violation`` naming the rule (``RULES``: the RFC section), the
session, the command and the response that showed it. A shared ``World`` holds the ground
truth: every message the checker put in (an ``X-Stress-Id`` header; APPENDUID and COPYUID,
RFC 4315, give each copy's UID), which ones somebody asked to delete or move, which expunges
were announced, and which sessions saw which message as \\Recent.

At the end every session stops, says NOOP, and its model must equal what a fresh EXAMINE of
the mailbox shows (messages and flags); every message present must be one the checker made (in
the mailbox it was put or copied to, with its own content), present once, and every message
missing must have been deleted (\\Deleted and EXPUNGE) or moved by somebody.

Legitimately racy, so not checked or allowed (RFC 2180 discusses these multi-access cases):

- another session's STORE may change flags between ours and its answer: a STORE's result is
  checked against any FETCH it returned (one of them must show the change), not the last;
- NO [EXPUNGEISSUED] to COPY, MOVE and STORE when messages were expunged by another session
  (RFC 2180 4.2.1 and 4.4.1, RFC 5530) -- but NOT to FETCH of messages this session has not yet
  been told are expunged: their sequence numbers are still valid for it (RFC 3501 7.4.1,
  RFC 2180 4.1.1 keeps them readable); a NO there fails a client that did nothing wrong
  (rule ``fetch-expungeissued``);
- SEARCH results may differ from the model's flags (the server may know newer ones): only
  checked to name messages the session knows;
- a FETCH may leave out a message expunged by another session (RFC 2180 4.1.3); flags of
  messages expunged meanwhile are never compared.

Used by tests/test_imap_stress.py (bounded run on an in-process mailhub) and
benchmarks/imap_stress.py (longer runs, mailhub and Dovecot, commands per second).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MAILBOXES = ("INBOX", "Stress")
SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
KEYWORDS = tuple(f"stress_k{i}" for i in range(12))  # each is new once in each mailbox
COMMAND_TIMEOUT = 60.0  # seconds for one command's answer: a hang is reported, not waited out

# Every rule the checker applies: name -> the RFC text it stands for.
RULES: dict[str, str] = {
    "exists-decrease": "RFC 3501 7.3.1/7.4.1: EXISTS never lowers the count (only EXPUNGE does)",
    "expunge-range": "RFC 3501 7.4.1: EXPUNGE n names a message the session knows (n <= EXISTS)",
    "expunge-during-command": "RFC 3501 7.4.1: no EXPUNGE during FETCH, STORE, SEARCH (non-UID)",
    "fetch-range": "RFC 3501 7.4.2: FETCH n names a message the session knows (1 <= n <= EXISTS)",
    "recent-count": "RFC 3501 7.3.2: RECENT n is at most EXISTS",
    "uid-ascending": "RFC 3501 2.3.1.1: UIDs strictly ascend with sequence numbers",
    "uid-changed": "RFC 3501 2.3.1.1: a message's UID never changes",
    "uid-new-higher": "RFC 3501 2.3.1.1: a new message's UID is above every UID before it and "
    "UIDNEXT is above every UID given out",
    "uidvalidity": "RFC 3501 2.3.1.1: the mailbox's UIDVALIDITY stays the same",
    "flags-announced": "RFC 3501 7.2.6: a keyword in FETCH FLAGS was first announced in FLAGS",
    "recent-unique": "RFC 3501 2.3.2: a message is \\Recent in at most one session",
    "recent-missing": "RFC 3501 2.3.2: a new message is \\Recent in the first session told of it",
    "recent-stable": "RFC 3501 2.3.2: \\Recent does not change while the mailbox is selected",
    "modseq-monotonic": "RFC 7162 3.1.1: a message's MODSEQ never decreases",
    "fetch-expungeissued": "RFC 3501 7.4.1 / RFC 2180 4.1.1: FETCH of messages not yet "
    "announced as expunged to this session answers, not NO [EXPUNGEISSUED]",
    "no-for-valid": "RFC 3501 6: a valid command on existing messages is not answered NO",
    "bad-for-valid": "RFC 3501 7.1.3: a valid command is not answered BAD",
    "bye": "RFC 3501 7.1.5: no BYE before LOGOUT",
    "timeout": "the server answered a command within the timeout",
    "syntax": "RFC 3501 9: a response the formal syntax allows",
    "store-result": "RFC 3501 6.4.6: STORE (not .SILENT) tells the new flags in an untagged FETCH",
    "search-result": "RFC 3501 7.2.5: SEARCH names only messages the session was told of",
    "appenduid": "RFC 4315 3: APPEND answers APPENDUID with the new UID",
    "copyuid": "RFC 4315 3 / RFC 6851 4.3: COPY and MOVE answer COPYUID for the messages asked",
    "move-expunges": "RFC 6851 3.3: MOVE expunges the moved messages (EXPUNGE or VANISHED)",
    "content": "RFC 3501 6.4.5: FETCH returns the message as it was appended",
    "model-converges": "RFC 3501 5.2, 7.4.1: after NOOP each session's messages and flags are "
    "the mailbox's",
    "lost": "RFC 3501 6.4.3: a message nobody deleted or moved is still there",
    "expunged-undeleted": "RFC 3501 6.4.3: only messages with \\Deleted (or moved, RFC 6851) go",
    "resurrected": "RFC 3501 7.4.1: a message announced as expunged does not come back",
    "unexpected-message": "RFC 3501 6.4.7: no message appears that no successful APPEND, COPY "
    "or MOVE made (a failed COPY leaves the destination as it was)",
}


# --- reading responses ------------------------------------------------------------------------

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


# --- the ground truth -------------------------------------------------------------------------

Key = tuple[str, int]  # (mailbox, UID)


@dataclass
class Violation:
    rule: str
    session: str
    command: str
    response: str
    detail: str

    def __str__(self) -> str:
        out = f"[{self.rule}] session {self.session}: {self.detail}"
        if self.command:
            out += f"\n    command:  {self.command}"
        if self.response:
            out += f"\n    response: {self.response}"
        return out


@dataclass
class World:
    """What is true across sessions: the messages the checker made and what became of them."""

    created: dict[Key, str] = field(default_factory=dict)  # -> X-Stress-Id
    content: dict[str, bytes] = field(default_factory=dict)  # X-Stress-Id -> message
    deletable: set[Key] = field(default_factory=set)  # somebody stored \Deleted on it
    moved: set[Key] = field(default_factory=set)  # somebody asked to MOVE it
    expunged: dict[Key, str] = field(default_factory=dict)  # announced gone (to whom)
    recent: dict[Key, dict[str, bool]] = field(default_factory=lambda: defaultdict(dict))
    uidvalidity: dict[str, int] = field(default_factory=dict)
    copies: dict[Key, Key] = field(default_factory=dict)  # COPYUID: copy -> its source
    # STOREs per message: [session, sent, answered (None while in flight)]
    stores: dict[Key, list[list[Any]]] = field(default_factory=lambda: defaultdict(list))
    violations: list[Violation] = field(default_factory=list)
    commands: int = 0
    command_counts: Counter[str] = field(default_factory=Counter)
    appended: int = 0
    trace: list[str] | None = None  # every line sent and received, when asked for

    def log(self, session: str, direction: str, data: bytes | str) -> None:
        if self.trace is not None:
            text = data if isinstance(data, str) else data.decode("utf-8", "replace")
            self.trace.append(f"{time.monotonic():.3f} {session} {direction} {text.rstrip()}")

    def made_as(self, key: Key) -> str | None:
        """The X-Stress-Id of a message (of the original, for a copy), if known yet."""
        for _ in range(len(self.copies) + 1):
            made = self.created.get(key)
            if made is not None or key not in self.copies:
                return made
            key = self.copies[key]
        return None

    def violation(self, rule: str, session: str, command: str, response: str, detail: str) -> None:
        assert rule in RULES, rule
        self.violations.append(Violation(rule, session, command, response, detail))
        self.log(session, "!!", f"[{rule}] {detail}")


# --- one session's model ----------------------------------------------------------------------


@dataclass
class Message:
    uid: int | None = None
    flags: frozenset[str] | None = None  # without \Recent
    recent: bool | None = None
    modseq: int | None = None
    floor: int = 0  # every UID known when it was announced: its UID must be higher
    stress_id: str | None = None


@dataclass
class Selection:
    mailbox: str
    readonly: bool = False
    uidvalidity: int | None = None
    uidnext: int | None = None
    flags: set[str] = field(default_factory=set)  # FLAGS
    permanent: set[str] | None = None  # PERMANENTFLAGS
    messages: list[Message] = field(default_factory=list)
    recent_count: int = 0
    highest_seen: int = 0  # highest UID this selection has known
    reported_keywords: set[str] = field(default_factory=set)

    def known(self) -> dict[int, Message]:
        return {m.uid: m for m in self.messages if m.uid is not None}

    def seq_of(self, uid: int) -> int | None:
        for i, m in enumerate(self.messages):
            if m.uid == uid:
                return i + 1
        return None

    def uid_plausible(self, uid: int) -> bool:
        """A UID of a message the session knows, or of one it was told exists (EXISTS) but
        not yet of its UID, where that UID fits in the order."""
        low = 0
        unknown = False
        for m in self.messages:
            if m.uid is None:
                unknown = True
                continue
            if m.uid == uid:
                return True
            if m.uid > uid:
                return unknown and low < uid
            low, unknown = m.uid, False
        return unknown and low < uid


@dataclass
class Running:
    """The command in flight and what its responses told."""

    tag: str
    line: str  # for reports
    name: str  # FETCH, UID FETCH, STORE, ...
    fetched: dict[int, list[frozenset[str]]] = field(default_factory=dict)  # id(msg) -> flags
    search: list[int] | None = None
    copyuid: bytes | None = None


_HEADER_ID = re.compile(rb"X-Stress-Id:\s*(\S+)", re.I)


class Session:
    """One connection, its model of the selected mailbox and its random commands."""

    def __init__(
        self, name: str, world: World, rng: random.Random, *, qresync: bool, verifier: bool = False
    ) -> None:
        self.name = name
        self.world = world
        self.rng = rng
        self.want_qresync = qresync
        self.qresync = False
        self.condstore = False
        self.verifier = verifier  # the final EXAMINE: not a session of the \Recent rules
        self.conn: Connection | None = None
        self.sel: Selection | None = None
        self.running: Running | None = None
        self.appends = 0
        self.logged_out = False
        self.highest_by_mailbox: dict[str, int] = defaultdict(int)
        self.dead = False
        self.tolerate_no = False  # setup: CREATE of a mailbox that may exist

    # -- reporting ---------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """The session and its mailbox, for the trace."""
        return f"{self.name}@{self.sel.mailbox}" if self.sel else self.name

    def violation(self, rule: str, response: Response | str | None, detail: str) -> None:
        command = self.running.line if self.running else ""
        if isinstance(response, Response):
            shown = response.short()
        else:
            shown = response or ""
        self.world.violation(rule, self.name, command, shown, detail)

    # -- commands ----------------------------------------------------------------------------

    async def connect(self, host: str, port: int, user: str, password: str) -> None:
        self.conn = await Connection.open(host, port)
        greeting = await self.conn.next()
        status = parse_status(greeting.raw[2:])
        if status is None or status.status != "OK":
            raise ConnectionGone(f"greeting: {greeting.short()}")
        await self.command(f"LOGIN {quote(user)} {quote(password)}")
        await self.command("CAPABILITY")
        if self.want_qresync and "QRESYNC" in self.conn.capabilities:
            await self.command("ENABLE QRESYNC")
            self.qresync = self.condstore = True

    async def command(self, line: str, literal: bytes | None = None) -> Status:
        """Send one command, feed every response to the model, return the tagged status.
        A NO or BAD is a violation unless the caller's rules allow it (``allowed_no``)."""
        return await self._command(line, literal)

    async def _command(
        self, line: str, literal: bytes | None = None, *, idle: float | None = None
    ) -> Status:
        assert self.conn is not None
        conn = self.conn
        tag = conn.next_tag()
        words = line.split(" ", 2)
        name = words[0].upper()
        if name == "UID":
            name = "UID " + words[1].upper()
        self.running = Running(tag, _shorten(line), name)
        self.world.log(self.where, "C:", f"{tag} {line}")
        if literal is not None:
            conn.send(f"{tag} {line} {{{len(literal)}}}\r\n".encode())
            await self._until_continuation(tag)
            conn.send(literal + b"\r\n")
        else:
            conn.send(f"{tag} {line}\r\n".encode())
        if idle is not None:
            await self._until_continuation(tag)
            deadline = time.monotonic() + idle
            while (left := deadline - time.monotonic()) > 0:
                try:
                    response = await conn.next(timeout=left)
                except TimeoutError:
                    break
                self.handle(response)
            conn.send(b"DONE\r\n")
        while True:
            try:
                response = await conn.next()
            except TimeoutError:
                self.violation("timeout", None, f"no answer in {COMMAND_TIMEOUT} s")
                self.dead = True
                raise ConnectionGone("timeout") from None
            except ConnectionGone:
                if not self.logged_out:
                    self.violation("bye", None, "connection closed")
                self.dead = True
                raise
            if response.kind == tag:
                self.world.log(self.where, "S:", response.short(400))
                status = parse_status(response.raw[len(tag) + 1 :])
                if status is None:
                    self.violation("syntax", response, "tagged response without OK/NO/BAD")
                    status = Status("BAD", None, b"", "")
                self._tagged(status, response)
                self.world.commands += 1
                self.world.command_counts[name] += 1
                return status
            self.handle(response)

    async def _until_continuation(self, tag: str) -> None:
        assert self.conn is not None
        while True:
            response = await self.conn.next()
            if response.kind == "+":
                return
            if response.kind == tag:
                raise ConnectionGone(f"refused: {response.short()}")
            self.handle(response)

    def _tagged(self, status: Status, response: Response) -> None:
        running = self.running
        assert running is not None
        if status.code == "CAPABILITY":
            assert self.conn is not None
            self.conn.capabilities = set(status.code_args.decode().upper().split())
        if status.code == "COPYUID":
            running.copyuid = status.code_args
        if status.code in ("UIDNEXT", "UIDVALIDITY", "PERMANENTFLAGS", "HIGHESTMODSEQ"):
            self._status_code(status, response)
        if status.status == "BAD":
            self.violation("bad-for-valid", response, "BAD for a valid command")
        elif status.status == "NO":
            if running.name in ("FETCH", "UID FETCH") and status.code == "EXPUNGEISSUED":
                self.violation(
                    "fetch-expungeissued",
                    response,
                    "FETCH of messages this session was not told are expunged",
                )
            elif self.tolerate_no:
                pass
            elif not (status.code == "EXPUNGEISSUED" and running.name in _MAY_EXPUNGEISSUE):
                self.violation("no-for-valid", response, "NO for a valid command")

    # -- the model: untagged responses --------------------------------------------------------

    def handle(self, response: Response) -> None:
        self.world.log(self.where, "S:", response.short(400))
        if response.kind == "+":
            return
        if response.kind != "*":
            self.violation("syntax", response, "a response with a tag not in flight")
            return
        rest = response.raw[2:]
        try:
            self._untagged(rest, response)
        except (ParseFailure, ValueError, IndexError) as e:
            self.violation("syntax", response, f"cannot parse: {e}")

    def _untagged(self, rest: bytes, response: Response) -> None:
        head, _, tail = rest.partition(b" ")
        if head.isdigit():
            number = int(head)
            what, _, data = tail.partition(b" ")
            what = what.rstrip(b"\r\n").upper()
            if what == b"EXISTS":
                self._exists(number, response)
            elif what == b"RECENT":
                self._recent(number, response)
            elif what == b"EXPUNGE":
                self._expunge(number, response)
            elif what == b"FETCH":
                items, _ = parse_list(data)
                if not items or not isinstance(items[0], list):
                    raise ParseFailure("FETCH without a list")
                self._fetch(number, items[0], response)
            return
        word = head.rstrip(b"\r\n").upper()
        status = parse_status(rest)
        if status is not None:
            if status.status == "BYE":
                if not self.logged_out:
                    self.violation("bye", response, "BYE before LOGOUT")
                return
            if status.status in ("NO", "BAD") and self.running is not None:
                return  # a warning (RFC 3501 7.1.2): nothing to model
            self._status_code(status, response)
            return
        if word == b"FLAGS":
            items, _ = parse_list(tail)
            if self.sel is not None and items and isinstance(items[0], list):
                self.sel.flags = {f.decode() for f in items[0]}
        elif word == b"CAPABILITY":
            assert self.conn is not None
            self.conn.capabilities = set(tail.decode().upper().split())
        elif word == b"SEARCH":
            numbers = [int(x) for x in tail.split() if x.isdigit()]
            if self.running is not None:
                self.running.search = numbers
                self._search(numbers, response)
        elif word == b"VANISHED":
            self._vanished(tail, response)

    def _status_code(self, status: Status, response: Response) -> None:
        sel = self.sel
        code, args = status.code, status.code_args
        if code is None:
            return
        if code == "COPYUID" and self.running is not None:
            self.running.copyuid = args  # MOVE: untagged before the EXPUNGEs (RFC 6851 4.3)
        if sel is None:
            return
        if code == "PERMANENTFLAGS":
            items, _ = parse_list(args)
            if items and isinstance(items[0], list):
                sel.permanent = {f.decode() for f in items[0]}
        elif code == "UIDVALIDITY":
            value = int(args.split()[0])
            sel.uidvalidity = value
            known = self.world.uidvalidity.setdefault(sel.mailbox, value)
            if known != value:
                self.violation("uidvalidity", response, f"{sel.mailbox} was {known}, now {value}")
        elif code == "UIDNEXT":
            value = int(args.split()[0])
            sel.uidnext = value
            highest = self.highest_by_mailbox[sel.mailbox]
            if value <= highest:
                self.violation(
                    "uid-new-higher",
                    response,
                    f"UIDNEXT {value} but UID {highest} was given out already",
                )

    def _exists(self, number: int, response: Response) -> None:
        sel = self.sel
        if sel is None:
            return
        count = len(sel.messages)
        if number < count:
            self.violation("exists-decrease", response, f"EXISTS {number} after {count} messages")
            return
        floor = 0  # messages there at SELECT: any UID below UIDNEXT
        if self.running is None or self.running.name not in ("SELECT", "EXAMINE"):
            floor = max((sel.uidnext or 1) - 1, self.highest_by_mailbox[sel.mailbox])
        for _ in range(number - count):
            sel.messages.append(Message(floor=floor))

    def _recent(self, number: int, response: Response) -> None:
        if self.sel is None:
            return
        self.sel.recent_count = number
        if number > len(self.sel.messages):
            self.violation(
                "recent-count", response, f"RECENT {number} > EXISTS {len(self.sel.messages)}"
            )

    def _expunge(self, number: int, response: Response) -> None:
        sel = self.sel
        if sel is None:
            return
        running = self.running
        if running is not None and running.name in ("FETCH", "STORE", "SEARCH"):
            self.violation("expunge-during-command", response, f"EXPUNGE during {running.name}")
        if not 1 <= number <= len(sel.messages):
            self.violation(
                "expunge-range", response, f"EXPUNGE {number} with {len(sel.messages)} messages"
            )
            return
        self._gone(sel.messages.pop(number - 1), sel)

    def _gone(self, m: Message, sel: Selection) -> None:
        if m.uid is not None:
            self.world.expunged.setdefault((sel.mailbox, m.uid), self.name)

    def _vanished(self, tail: bytes, response: Response) -> None:
        sel = self.sel
        if sel is None:
            return
        words = tail.split()
        if words and words[0].upper() == b"(EARLIER)":
            return  # about messages this session may never have known (RFC 7162 3.2.10)
        running = self.running
        if running is not None and running.name in ("FETCH", "STORE", "SEARCH"):
            self.violation("expunge-during-command", response, f"VANISHED during {running.name}")
        for uid in expand_uid_set(words[0]):
            for i, m in enumerate(sel.messages):
                if m.uid == uid:
                    self._gone(sel.messages.pop(i), sel)
                    break
            else:
                # A message told by EXISTS whose UID the session has not asked yet: the
                # unknown one in the gap where this UID fits (they are all alike).
                gap: int | None = None  # first unknown message after the last UID below
                for i, m in enumerate(sel.messages):
                    if m.uid is None:
                        if gap is None:
                            gap = i
                    elif m.uid > uid:
                        break
                    else:
                        gap = None
                if gap is not None:
                    sel.messages.pop(gap)
                    self.world.expunged.setdefault((sel.mailbox, uid), self.name)

    def _fetch(self, number: int, items: list[Any], response: Response) -> None:
        sel = self.sel
        if sel is None:
            return
        if not 1 <= number <= len(sel.messages):
            self.violation(
                "fetch-range", response, f"FETCH {number} with {len(sel.messages)} messages"
            )
            return
        m = sel.messages[number - 1]
        data: dict[str, Any] = {}
        for key, value in zip(items[0::2], items[1::2], strict=False):
            if isinstance(key, bytes):
                data[key.decode("ascii", "replace").upper()] = value
        if "UID" in data:
            uid = int(data["UID"])
            self._uid(number, m, uid, response)
        if "MODSEQ" in data and isinstance(data["MODSEQ"], list):
            modseq = int(data["MODSEQ"][0])
            if m.modseq is not None and modseq < m.modseq:
                self.violation(
                    "modseq-monotonic", response, f"UID {m.uid}: MODSEQ {modseq} after {m.modseq}"
                )
            m.modseq = modseq
        if "FLAGS" in data and isinstance(data["FLAGS"], list):
            flags = [f.decode() for f in data["FLAGS"]]
            self._flags(m, flags, response)
        for key, value in data.items():
            if key.startswith("BODY[") or key.startswith("RFC822"):
                self._body(m, key, value, data, response)

    def _uid(self, number: int, m: Message, uid: int, response: Response) -> None:
        sel = self.sel
        assert sel is not None
        if m.uid is not None:
            if m.uid != uid:
                self.violation("uid-changed", response, f"message {number}: UID {m.uid} -> {uid}")
            return
        before = [x.uid for x in sel.messages[: number - 1] if x.uid is not None]
        after = [x.uid for x in sel.messages[number:] if x.uid is not None]
        if (before and before[-1] >= uid) or (after and after[0] <= uid):
            self.violation(
                "uid-ascending",
                response,
                f"UID {uid} at {number} between {before[-1:]} and {after[:1]}",
            )
        if uid <= m.floor:
            self.violation(
                "uid-new-higher",
                response,
                f"new message {number} has UID {uid}, not above {m.floor}",
            )
        m.uid = uid
        sel.highest_seen = max(sel.highest_seen, uid)
        mailbox_high = self.highest_by_mailbox[sel.mailbox]
        self.highest_by_mailbox[sel.mailbox] = max(mailbox_high, uid)
        if m.recent is not None and not self.verifier:
            self._record_recent(sel, m)

    def _flags(self, m: Message, flags: list[str], response: Response) -> None:
        sel = self.sel
        assert sel is not None
        recent = "\\Recent" in flags
        plain = frozenset(f for f in flags if f != "\\Recent")
        for f in plain:
            if f.startswith("\\"):
                continue
            if f not in sel.flags and f not in sel.reported_keywords:
                sel.reported_keywords.add(f)  # once per keyword and selection
                self.violation(
                    "flags-announced",
                    response,
                    f"keyword {f} in FETCH but FLAGS said {sorted(sel.flags)}",
                )
        if m.recent is not None and m.recent != recent:
            self.violation(
                "recent-stable", response, f"UID {m.uid}: \\Recent {m.recent} -> {recent}"
            )
        m.recent = recent
        m.flags = plain
        if self.running is not None:
            self.running.fetched.setdefault(id(m), []).append(plain)
        if m.uid is not None and not self.verifier:
            self._record_recent(sel, m)

    def _record_recent(self, sel: Selection, m: Message) -> None:
        assert m.uid is not None and m.recent is not None
        verdicts = self.world.recent[(sel.mailbox, m.uid)]
        verdicts[self.name] = verdicts.get(self.name, False) or m.recent

    def _body(self, m: Message, key: str, value: Any, data: dict[str, Any], resp: Response) -> None:
        sel = self.sel
        assert sel is not None
        if m.uid is None or not isinstance(value, bytes):
            return
        expected_id = self.world.made_as((sel.mailbox, m.uid))
        if key.startswith("BODY[HEADER"):
            found = _HEADER_ID.search(value)
            got = found.group(1).decode() if found else None
            m.stress_id = got
            if expected_id is not None and got != expected_id:
                self.violation(
                    "content", resp, f"UID {m.uid}: X-Stress-Id {got}, made {expected_id}"
                )
        elif key in ("BODY[]", "RFC822"):
            if expected_id is None:
                return
            expected = self.world.content[expected_id]
            if value != expected:
                found = _HEADER_ID.search(value)
                self.violation(
                    "content",
                    resp,
                    f"UID {m.uid}: {len(value)} octets "
                    f"({found.group(1).decode() if found else 'no id'}), "
                    f"made {len(expected)} ({expected_id})",
                )
            size = data.get("RFC822.SIZE")
            if size is not None and int(size) != len(value):
                self.violation(
                    "content",
                    resp,
                    f"UID {m.uid}: RFC822.SIZE {int(size)}, BODY[] has {len(value)} octets",
                )

    def _search(self, numbers: list[int], response: Response) -> None:
        sel = self.sel
        running = self.running
        if sel is None or running is None:
            return
        if running.name == "UID SEARCH":
            wrong = [u for u in numbers if not sel.uid_plausible(u)]
            if wrong:
                self.violation("search-result", response, f"UIDs {wrong[:5]} not told of")
        else:
            wrong = [n for n in numbers if not 1 <= n <= len(sel.messages)]
            if wrong:
                self.violation(
                    "search-result",
                    response,
                    f"numbers {wrong[:5]} with {len(sel.messages)} messages",
                )

    # -- selecting ---------------------------------------------------------------------------

    async def select(self, mailbox: str, *, readonly: bool = False) -> None:
        self.sel = Selection(mailbox, readonly=readonly)
        verb = "EXAMINE" if readonly else "SELECT"
        status = await self.command(f"{verb} {mailbox}")
        if status.status != "OK":
            raise ConnectionGone(f"{verb} {mailbox}: {status}")
        await self.resolve()

    async def resolve(self) -> None:
        """FETCH the UID and flags of every message announced but not yet known."""
        sel = self.sel
        if sel is None:
            return
        for _ in range(3):
            unknown = [
                i + 1 for i, m in enumerate(sel.messages) if m.uid is None or m.flags is None
            ]
            if not unknown:
                return
            await self.command(f"FETCH {compress(unknown)} (UID FLAGS)")

    # -- the random commands -----------------------------------------------------------------

    def other(self) -> str:
        assert self.sel is not None
        return MAILBOXES[1] if self.sel.mailbox == MAILBOXES[0] else MAILBOXES[0]

    def pick(self, most: int = 5, *, where: Any = None) -> list[tuple[int, Message]]:
        """Some known messages, (sequence number, message), ascending."""
        assert self.sel is not None
        known = [
            (i + 1, m)
            for i, m in enumerate(self.sel.messages)
            if m.uid is not None and m.flags is not None and (where is None or where(m))
        ]
        if not known:
            return []
        if self.rng.random() < 0.3 and len(known) > 1:
            start = self.rng.randrange(len(known))
            return known[start : start + self.rng.randint(1, most)]
        return sorted(
            self.rng.sample(known, min(len(known), self.rng.randint(1, most))), key=lambda p: p[0]
        )

    def flag_choice(self) -> list[str]:
        sel = self.sel
        assert sel is not None
        rng = self.rng
        out = []
        if rng.random() < 0.6:
            out.append(rng.choice(("\\Seen", "\\Flagged", "\\Answered", "\\Draft", "\\Seen")))
        if rng.random() < 0.5:
            kw = rng.choice(KEYWORDS[: rng.randint(1, len(KEYWORDS))])
            permanent = sel.permanent
            if permanent is None or "\\*" in permanent or kw in permanent:
                out.append(kw)
        return out or ["\\Seen"]

    async def step(self) -> None:
        """One random command (then whatever a client does after it)."""
        sel = self.sel
        assert sel is not None
        rng = self.rng
        count = len(sel.messages)
        weights = {
            self.op_append: 18 if count < 60 else 6,
            self.op_store: 16,
            self.op_delete: 6 if count < 30 else 16,
            self.op_expunge: 5 if count < 30 else 10,
            self.op_copy: 5,
            self.op_move: 5,
            self.op_fetch: 18,
            self.op_search: 8,
            self.op_idle: 3,
            self.op_noop: 5,
            self.op_switch: 1,
        }
        op = rng.choices(list(weights), weights=list(weights.values()))[0]
        await op()
        await self.resolve()

    def _uid_form(self) -> bool:
        return self.rng.random() < 0.5

    def _set(self, picked: list[tuple[int, Message]], uid: bool) -> str:
        return (
            compress(m.uid for _, m in picked if m.uid is not None)
            if uid
            else compress(s for s, _ in picked)
        )

    async def op_append(self) -> None:
        rng = self.rng
        mailbox = self.sel.mailbox if rng.random() < 0.6 else self.other()  # type: ignore[union-attr]
        self.appends += 1
        stress_id = f"{self.name}-{self.appends}"
        body = make_message(stress_id, rng)
        self.world.content[stress_id] = body
        flags = [f for f in self.flag_choice() if rng.random() < 0.5]
        status = await self.command(f"APPEND {mailbox} ({' '.join(flags)})", body)
        if status.status != "OK":
            return
        self.world.appended += 1
        if status.code != "APPENDUID":
            self.violation(
                "appenduid",
                f"{status.status} [{status.code}] {status.text}",
                "APPEND OK without APPENDUID",
            )
            return
        _validity, uid = status.code_args.split()[:2]
        self.world.created[(mailbox, int(uid))] = stress_id

    async def op_store(self, flags: list[str] | None = None, mode: str | None = None) -> None:
        rng = self.rng
        picked = self.pick()
        if not picked:
            return
        uid = self._uid_form()
        flags = flags or self.flag_choice()
        if mode is None:
            mode = rng.choice(("+", "+", "-", ""))
        silent = rng.random() < 0.2
        sel = self.sel
        assert sel is not None
        wanted = frozenset(flags)
        if "\\Deleted" in wanted and mode != "-":
            for _, m in picked:
                self.world.deletable.add((sel.mailbox, m.uid))  # type: ignore[arg-type]
        item = f"{mode}FLAGS{'.SILENT' if silent else ''}"
        flag_list = " ".join(sorted(wanted))
        line = f"{'UID ' if uid else ''}STORE {self._set(picked, uid)} {item} ({flag_list})"
        if silent:
            for _, m in picked:  # the client derives the result itself (RFC 3501 6.4.6)
                m.flags = _apply(mode, m.flags or frozenset(), wanted)
        windows = []
        for _, m in picked:
            window = [self.name, time.monotonic(), None]
            self.world.stores[(sel.mailbox, m.uid)].append(window)  # type: ignore[index]
            windows.append(window)
        status = await self.command(line)
        for window in windows:
            window[2] = time.monotonic()
        if silent or status.status != "OK":
            return
        await self._check_store(picked, mode, wanted, line, windows[0])

    def _raced(self, m: Message, mine: list[Any]) -> bool:
        """Another session's STORE on this message overlapped ours: the server may answer
        with flags after both (a multi-process server does), so ours may not show."""
        assert self.sel is not None
        for other in self.world.stores.get((self.sel.mailbox, m.uid), []):  # type: ignore[arg-type]
            if (
                other[0] != self.name
                and other[1] <= mine[2]
                and (other[2] is None or other[2] >= mine[1])
            ):
                return True
        return False

    async def _check_store(
        self,
        picked: list[tuple[int, Message]],
        mode: str,
        wanted: frozenset[str],
        line: str,
        window: list[Any],
    ) -> None:
        sel = self.sel
        running = self.running
        assert sel is not None and running is not None
        fetched = running.fetched
        unmet = []
        for _, m in picked:
            seen = fetched.get(id(m), [])
            if any(_satisfies(mode, f, wanted) for f in seen):
                continue
            if m.flags is not None and _satisfies(mode, m.flags, wanted) and not seen:
                continue  # nothing changed: the client has the flags already
            if self._raced(m, window):
                continue
            unmet.append(m)
        if not unmet:
            return
        # Unless another session expunged them (then NOOP announces it), they were changed.
        await self.command("NOOP")
        present = {id(m) for m in sel.messages}
        for m in unmet:
            if id(m) in present:
                self.violation(
                    "store-result",
                    None,
                    f"after `{line}`: UID {m.uid} has {sorted(m.flags or ())}, no "
                    "untagged FETCH showed the change, and NOOP did not expunge it",
                )

    async def op_delete(self) -> None:
        await self.op_store(["\\Deleted"], "+")

    async def op_expunge(self) -> None:
        sel = self.sel
        assert sel is not None
        if self.rng.random() < 0.5:
            await self.command("EXPUNGE")
            return
        picked = self.pick(8, where=lambda m: "\\Deleted" in (m.flags or ()))
        if picked:
            await self.command(f"UID EXPUNGE {self._set(picked, True)}")

    async def op_copy(self, verb: str = "COPY") -> None:
        sel = self.sel
        assert sel is not None
        picked = self.pick()
        if not picked:
            return
        uid = self._uid_form()
        target = self.other() if verb == "MOVE" or self.rng.random() < 0.85 else sel.mailbox
        asked = {m.uid for _, m in picked}
        if verb == "MOVE":
            for u in asked:
                self.world.moved.add((sel.mailbox, u))  # type: ignore[arg-type]
        source_box = sel.mailbox
        line = f"{'UID ' if uid else ''}{verb} {self._set(picked, uid)} {target}"
        status = await self.command(line)
        running = self.running
        assert running is not None
        if status.status != "OK":
            return
        present = {id(x) for x in sel.messages}
        still = [m.uid for _, m in picked if id(m) in present]
        if verb == "MOVE" and still:
            self.violation(
                "move-expunges",
                f"{status.status} {status.text}",
                f"MOVE OK but UIDs {still} still in the mailbox",
            )
        if running.copyuid is None:
            # Nothing copied is fine when every message asked was expunged meanwhile; a COPY
            # of messages still there copied something. (A MOVE's EXPUNGEs cannot tell moved
            # from expunged by others: a copy without COPYUID shows as unexpected at the end.)
            if verb == "COPY" and still:
                self.violation(
                    "copyuid", f"{status.status} {status.text}", f"{verb} OK without COPYUID"
                )
            return
        words = running.copyuid.split()
        sources, dests = expand_uid_set(words[1]), expand_uid_set(words[2])
        if len(sources) != len(dests) or not set(sources) <= asked:
            self.violation(
                "copyuid",
                f"[COPYUID {running.copyuid.decode()}]",
                f"COPYUID does not match the UIDs asked {sorted(asked)}",
            )
        for s, d in zip(sources, dests, strict=False):
            # Resolved at the end: the source may be another session's APPEND whose answer
            # this process has not read yet.
            self.world.copies[(target, d)] = (source_box, s)

    async def op_move(self) -> None:
        await self.op_copy("MOVE")

    async def op_fetch(self) -> None:
        rng = self.rng
        sel = self.sel
        assert sel is not None
        kind = rng.random()
        if kind < 0.1 and sel.messages:
            await self.command("FETCH 1:* (UID FLAGS)")
            return
        picked = self.pick(6)
        if not picked:
            return
        uid = self._uid_form()
        if kind < 0.45:
            items = "(UID FLAGS)"
        elif kind < 0.75:
            items = "(UID FLAGS BODY.PEEK[HEADER.FIELDS (X-Stress-Id)])"
        elif kind < 0.93:
            items = "(UID RFC822.SIZE BODY.PEEK[])"
        else:
            items = "(UID BODY[])"  # sets \Seen (RFC 3501 6.4.5)
        await self.command(f"{'UID ' if uid else ''}FETCH {self._set(picked, uid)} {items}")

    async def op_search(self) -> None:
        rng = self.rng
        keys = rng.choice(
            (
                "ALL",
                "UNSEEN",
                "FLAGGED",
                "DELETED",
                f"KEYWORD {rng.choice(KEYWORDS)}",
                f"UNKEYWORD {rng.choice(KEYWORDS)}",
                "NOT SEEN FLAGGED",
                f"HEADER X-Stress-Id {self.name}",
            )
        )
        await self.command(f"{'UID ' if self._uid_form() else ''}SEARCH {keys}")

    async def op_idle(self) -> None:
        assert self.conn is not None
        if "IDLE" not in self.conn.capabilities:
            return
        await self._command("IDLE", idle=self.rng.uniform(0.2, 1.5))

    async def op_noop(self) -> None:
        await self.command("NOOP")

    async def op_switch(self) -> None:
        await self.select(self.other())

    async def logout(self) -> None:
        if self.conn is None or self.dead:
            return
        self.logged_out = True
        try:
            await self.command("LOGOUT")
        except ConnectionGone:
            pass
        await self.conn.close()


_MAY_EXPUNGEISSUE = ("COPY", "UID COPY", "MOVE", "UID MOVE", "STORE", "UID STORE")


def _apply(mode: str, old: frozenset[str], flags: frozenset[str]) -> frozenset[str]:
    if mode == "+":
        return old | flags
    if mode == "-":
        return old - flags
    return flags


def _satisfies(mode: str, now: frozenset[str], flags: frozenset[str]) -> bool:
    if mode == "+":
        return flags <= now
    if mode == "-":
        return not (flags & now)
    return now == flags


def _shorten(line: str, limit: int = 160) -> str:
    return line if len(line) <= limit else line[:limit] + "..."


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray"
).split()


def make_message(stress_id: str, rng: random.Random) -> bytes:
    """A message carrying its id in X-Stress-Id, Message-ID and the body; 0.3-4 KB."""
    lines = []
    for _ in range(rng.randint(3, 60)):
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12))))
    body = "\r\n".join(lines)
    return (
        f"From: Stress <stress@example.com>\r\nTo: Stress <stress@example.com>\r\n"
        f"Subject: stress {stress_id}\r\nDate: Sun, 06 Dec 2026 21:00:00 +0000\r\n"
        f"Message-ID: <{stress_id}@stress.invalid>\r\nX-Stress-Id: {stress_id}\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"{stress_id}\r\n{body}\r\n"
    ).encode()


# --- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StressConfig:
    user: str
    password: str
    sessions: int = 10
    duration: float = 15.0
    seed: int = 1
    qresync_share: float = 1 / 3  # sessions that ENABLE QRESYNC
    trace: bool = False  # keep every line sent and received (Report.world.trace)


@dataclass
class Report:
    target: str
    config: StressConfig
    elapsed: float
    world: World
    final_counts: dict[str, int]
    errors: list[str]  # sessions that broke off (and why)

    @property
    def commands_per_second(self) -> float:
        return self.world.commands / self.elapsed if self.elapsed else 0.0

    def by_rule(self) -> dict[str, int]:
        return dict(Counter(v.rule for v in self.world.violations))

    def summary(self, examples: int = 2) -> str:
        c = self.config
        w = self.world
        lines = [
            f"{self.target}: seed {c.seed}, {c.sessions} sessions, {self.elapsed:.1f} s, "
            f"{w.commands} commands ({self.commands_per_second:.0f}/s), {w.appended} appended, "
            f"final {self.final_counts}, {len(w.violations)} violations",
        ]
        for error in self.errors:
            lines.append(f"  session error: {error}")
        shown: Counter[str] = Counter()
        for rule, n in sorted(self.by_rule().items()):
            lines.append(f"  {rule}: {n}  -- {RULES[rule]}")
            for v in w.violations:
                if v.rule == rule and shown[rule] < examples:
                    shown[rule] += 1
                    lines.append("    " + str(v).replace("\n", "\n    "))
        return "\n".join(lines)


async def run(host: str, port: int, config: StressConfig, target: str = "") -> Report:
    world = World(trace=[] if config.trace else None)
    master = random.Random(config.seed)
    sessions = [
        Session(
            f"s{i}",
            world,
            random.Random(f"{config.seed}-{i}"),
            qresync=master.random() < config.qresync_share,
        )
        for i in range(config.sessions)
    ]
    errors: list[str] = []
    setup = Session("setup", world, random.Random(config.seed), qresync=False)
    await setup.connect(host, port, config.user, config.password)
    setup.tolerate_no = True
    await setup.command(f"CREATE {MAILBOXES[1]}")  # NO if it exists already
    await setup.logout()
    for i, s in enumerate(sessions):
        await s.connect(host, port, config.user, config.password)
        await s.select(MAILBOXES[i % 2])
    start = time.monotonic()
    deadline = start + config.duration
    barrier = asyncio.Barrier(len(sessions))

    async def drive(s: Session) -> None:
        try:
            while time.monotonic() < deadline and not s.dead:
                await s.step()
        except (ConnectionGone, OSError) as e:
            errors.append(f"{s.name}: {e}")
            s.dead = True
        await barrier.wait()  # nobody changes anything after this
        if s.dead:
            return
        try:
            await s.command("NOOP")
            await s.resolve()
        except (ConnectionGone, OSError) as e:
            errors.append(f"{s.name} (final NOOP): {e}")
            s.dead = True

    await asyncio.gather(*(drive(s) for s in sessions))
    elapsed = time.monotonic() - start
    final = await _verify(host, port, config, world, sessions)
    for s in sessions:
        await s.logout()
    _check_recent(world, final)
    return Report(target, config, elapsed, world, {k: len(v) for k, v in final.items()}, errors)


async def _verify(
    host: str, port: int, config: StressConfig, world: World, sessions: list[Session]
) -> dict[str, dict[int, Message]]:
    """A fresh session EXAMINEs each mailbox; the sessions' models and the ground truth must
    agree with what it sees."""
    final: dict[str, dict[int, Message]] = {}
    _resolve_copies(world)
    verifier = Session("verify", world, random.Random(0), qresync=False, verifier=True)
    await verifier.connect(host, port, config.user, config.password)
    for mailbox in MAILBOXES:
        await verifier.select(mailbox, readonly=True)
        if verifier.sel and verifier.sel.messages:
            await verifier.command("FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (X-Stress-Id)])")
        assert verifier.sel is not None
        final[mailbox] = verifier.sel.known()
    await verifier.logout()
    for s in sessions:
        if s.dead or s.sel is None:
            continue
        truth = final[s.sel.mailbox]
        mine = s.sel.known()
        if [m.uid for m in s.sel.messages] != sorted(truth):
            missing = sorted(set(truth) - set(mine))[:8]
            extra = sorted(set(mine) - set(truth))[:8]
            world.violation(
                "model-converges",
                s.name,
                "NOOP",
                "",
                f"{s.sel.mailbox}: {len(s.sel.messages)} messages, the mailbox has "
                f"{len(truth)}; not told of {missing}, still holds {extra}",
            )
        for uid, m in mine.items():
            other = truth.get(uid)
            if other is not None and m.flags != other.flags:
                world.violation(
                    "model-converges",
                    s.name,
                    "NOOP",
                    "",
                    f"{s.sel.mailbox} UID {uid}: flags {sorted(m.flags or ())}, "
                    f"the mailbox has {sorted(other.flags or ())}",
                )
    for mailbox, present in final.items():
        for uid, m in present.items():
            key = (mailbox, uid)
            made = world.created.get(key)
            if made is None:
                world.violation(
                    "unexpected-message",
                    "verify",
                    "",
                    "",
                    f"{mailbox} UID {uid} ({m.stress_id}) was made by no successful "
                    "APPEND, COPY or MOVE",
                )
            elif m.stress_id != made:
                world.violation(
                    "content",
                    "verify",
                    "",
                    "",
                    f"{mailbox} UID {uid} is {m.stress_id}, made as {made}",
                )
            if key in world.expunged:
                world.violation(
                    "resurrected",
                    "verify",
                    "",
                    "",
                    f"{mailbox} UID {uid} announced as expunged to {world.expunged[key]}",
                )
    for key, made in world.created.items():
        mailbox, uid = key
        may_go = key in world.deletable or key in world.moved
        if uid not in final[mailbox] and not may_go:
            world.violation(
                "lost",
                "verify",
                "",
                "",
                f"{mailbox} UID {uid} ({made}) is gone; nobody deleted or moved it",
            )
        elif key in world.expunged and not may_go:
            world.violation(
                "expunged-undeleted",
                "verify",
                "",
                "",
                f"{mailbox} UID {uid} ({made}) was expunged (told to "
                f"{world.expunged[key]}) without \\Deleted or MOVE",
            )
    return final


def _resolve_copies(world: World) -> None:
    """Give every copy its original's id (copies of copies too); a copy of a message that
    had \\Deleted may have it too."""
    for copy in world.copies:
        made = world.made_as(copy)
        if made is not None:
            world.created.setdefault(copy, made)
    for _ in range(len(world.copies)):
        more = {c for c, source in world.copies.items() if source in world.deletable}
        if more <= world.deletable:
            break
        world.deletable |= more


def _check_recent(world: World, final: dict[str, dict[int, Message]]) -> None:
    """\\Recent across sessions: at most one session had it; and for a message still there at
    the end that some session was told of (every one of them asked its flags), exactly one."""
    for (mailbox, uid), verdicts in world.recent.items():
        holders = sorted(name for name, recent in verdicts.items() if recent)
        if len(holders) > 1:
            world.violation(
                "recent-unique",
                ",".join(holders),
                "",
                "",
                f"{mailbox} UID {uid} is \\Recent in sessions {holders}",
            )
        elif not holders and uid in final.get(mailbox, {}) and (mailbox, uid) in world.created:
            world.violation(
                "recent-missing",
                ",".join(sorted(verdicts)),
                "",
                "",
                f"{mailbox} UID {uid} ({world.created[(mailbox, uid)]}) is \\Recent in "
                f"none of the sessions told of it: {sorted(verdicts)}",
            )


def run_stress(host: str, port: int, config: StressConfig, target: str = "") -> Report:
    """``run`` in a new event loop (for a thread, or a script)."""
    return asyncio.run(run(host, port, config, target))
