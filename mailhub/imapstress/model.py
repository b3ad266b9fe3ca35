"""One session's model of its selected mailbox, kept from the untagged responses alone, and
every check a response can fail (``truth.RULES``)."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from mailhub.imapstress.truth import World
from mailhub.imapstress.wire import (
    COMMAND_TIMEOUT,
    Connection,
    ConnectionGone,
    ParseFailure,
    Response,
    Status,
    _shorten,
    compress,
    expand_uid_set,
    parse_list,
    parse_status,
    quote,
)


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
    """One connection and its model of the selected mailbox."""

    def __init__(
        self, name: str, world: World, *, qresync: bool = False, verifier: bool = False
    ) -> None:
        self.name = name
        self.world = world
        self.want_qresync = qresync
        self.qresync = False
        self.condstore = False
        self.verifier = verifier  # the final EXAMINE: not a session of the \Recent rules
        self.conn: Connection | None = None
        self.sel: Selection | None = None
        self.running: Running | None = None
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
        A NO or BAD is a violation unless the rules allow it (``_MAY_EXPUNGEISSUE``)."""
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
        sent = time.monotonic()
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
                self.world.command_seconds[name] += time.monotonic() - sent
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
        # One response, one set (RFC 7162 3.2.10): each UID names a message of the mailbox as
        # it was before this response, so every UID is placed before any message is removed.
        # (Placed one at a time, a UID after known ones of the same response would find the
        # run of unknown messages where it fits widened past them, onto older messages.)
        messages = sel.messages
        index = {m.uid: i for i, m in enumerate(messages) if m.uid is not None}
        doomed: set[int] = set()
        runs: dict[tuple[int, ...], list[int]] = defaultdict(list)  # unknown run -> its UIDs
        for uid in expand_uid_set(words[0]):
            i = index.get(uid)
            if i is not None:
                doomed.add(i)
            else:
                # A message told by EXISTS whose UID the session has not asked yet.
                run = _unknown_run(messages, uid)
                if run:
                    runs[run].append(uid)
        for run, uids in runs.items():
            # Which of the run went is unknown. Floors never fall along the list (EXISTS
            # appends, each with the highest UID known then), so dropping the last ones keeps
            # the lowest floors: each message left is at or after its entry here, so its true
            # floor is no lower, and no UID is blamed (uid-new-higher) for a wrong guess.
            doomed.update(run[-len(uids) :])
            for uid in uids[: len(run)]:
                self.world.expunged.setdefault((sel.mailbox, uid), self.name)
        for i in sorted(doomed):
            if messages[i].uid is not None:
                self._gone(messages[i], sel)
        messages[:] = [m for i, m in enumerate(messages) if i not in doomed]

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
        if self.sel is not None and not self.verifier:
            # Leaving: the \Recent rule needs the flags of every message this session was
            # told of (it may be the one session that had \Recent). A FETCH can announce yet
            # more messages; whatever is still unasked then is excused (_left_unasked).
            await self.resolve()
            self._left_unasked(self.sel)
        self.sel = Selection(mailbox, readonly=readonly)
        verb = "EXAMINE" if readonly else "SELECT"
        status = await self.command(f"{verb} {mailbox}")
        if status.status != "OK":
            raise ConnectionGone(f"{verb} {mailbox}: {status}")
        await self.resolve()

    def _left_unasked(self, sel: Selection) -> None:
        """Record the UID range of each message of ``sel`` whose flags were never asked: its
        \\Recent (RFC 3501 2.3.2) may have been this session's, so no other session's
        answer can show that none had it (run._check_recent)."""
        low = 0
        for i, m in enumerate(sel.messages):
            if m.uid is not None and m.flags is not None:
                low = m.uid
                continue
            if m.uid is not None:
                self.world.recent_unasked[sel.mailbox].append((m.uid - 1, m.uid + 1))
                low = m.uid
                continue
            later = (x.uid for x in sel.messages[i + 1 :] if x.uid is not None)
            high = next(later, None)
            self.world.recent_unasked[sel.mailbox].append((max(low, m.floor), high))

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


def _unknown_run(messages: list[Message], uid: int) -> tuple[int, ...]:
    """The indexes of the messages without a known UID where ``uid`` fits: after the last
    known UID below it, before the first above (RFC 3501 2.3.1.1: UIDs ascend with sequence
    numbers)."""
    run: list[int] = []
    for i, m in enumerate(messages):
        if m.uid is None:
            run.append(i)
        elif m.uid > uid:
            break
        else:
            run = []
    return tuple(run)
