"""The random commands of a stress session, and what a client checks after them."""

from __future__ import annotations

import random
import time
from typing import Any

from mailhub.imapstress.model import Message, Session
from mailhub.imapstress.truth import World
from mailhub.imapstress.wire import compress, expand_uid_set

MAILBOXES = ("INBOX", "Stress")
KEYWORDS = tuple(f"stress_k{i}" for i in range(12))  # each is new once in each mailbox


def _uid(m: Message) -> int:
    assert m.uid is not None  # pick() gives only messages whose UID is known
    return m.uid


class StressSession(Session):
    """A session that picks random commands (``step``) from its own seeded generator."""

    def __init__(
        self,
        name: str,
        world: World,
        rng: random.Random,
        *,
        qresync: bool,
        idle: tuple[float, float] = (0.2, 1.5),
    ) -> None:
        super().__init__(name, world, qresync=qresync)
        self.rng = rng
        self.appends = 0
        self.idle = idle  # seconds in IDLE: a uniform pick between the two

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
        assert self.sel is not None  # step() runs with a mailbox selected
        mailbox = self.sel.mailbox if rng.random() < 0.6 else self.other()
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
                self.world.deletable.add((sel.mailbox, _uid(m)))
        item = f"{mode}FLAGS{'.SILENT' if silent else ''}"
        flag_list = " ".join(sorted(wanted))
        line = f"{'UID ' if uid else ''}STORE {self._set(picked, uid)} {item} ({flag_list})"
        if silent:
            for _, m in picked:  # the client derives the result itself (RFC 3501 6.4.6)
                m.flags = _apply(mode, m.flags or frozenset(), wanted)
        windows = []
        for _, m in picked:
            window = [self.name, time.monotonic(), None]
            self.world.stores[(sel.mailbox, _uid(m))].append(window)
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
        for other in self.world.stores.get((self.sel.mailbox, _uid(m)), []):
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
        asked = {m.uid for _, m in picked if m.uid is not None}  # all: pick() gives known ones
        if verb == "MOVE":
            for u in asked:
                self.world.moved.add((sel.mailbox, u))
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
        await self._command("IDLE", idle=self.rng.uniform(*self.idle))

    async def op_noop(self) -> None:
        await self.command("NOOP")

    async def final_search(self) -> None:
        """With every session stopped, SEARCH finds exactly what the model holds."""
        sel = self.sel
        assert sel is not None
        keyword = self.rng.choice(KEYWORDS)
        numbered = list(enumerate(sel.messages, 1))
        checks: list[tuple[str, list[int | None]]] = [
            ("UID SEARCH ALL", [m.uid for _, m in numbered]),
            ("SEARCH DELETED", [n for n, m in numbered if "\\Deleted" in (m.flags or ())]),
            (
                f"UID SEARCH KEYWORD {keyword}",
                [m.uid for _, m in numbered if keyword in (m.flags or ())],
            ),
        ]
        for line, want in checks:
            await self.command(line)
            assert self.running is not None
            got = sorted(self.running.search or [])
            if got != sorted(x for x in want if x is not None):
                self.violation("search-result", None,
                               f"with every session stopped, {line} found {got[:12]}; "
                               f"the session's model: {want[:12]}")  # fmt: skip

    async def op_switch(self) -> None:
        await self.select(self.other())


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
