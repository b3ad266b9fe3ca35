"""The run: sessions started, driven until the deadline, stopped together; then the final
checks (models against a fresh EXAMINE, the ground truth, \\Recent across sessions)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from mailhub.imapstress.client import MAILBOXES, StressSession
from mailhub.imapstress.model import Message, Session
from mailhub.imapstress.truth import RULES, World
from mailhub.imapstress.wire import ConnectionGone


@dataclass(frozen=True)
class StressConfig:
    user: str
    password: str
    sessions: int = 10
    duration: float = 15.0
    seed: int = 1
    qresync_share: float = 1 / 3  # sessions that ENABLE QRESYNC
    trace: bool = False  # keep every line sent and received (Report.world.trace)
    # Seconds a session stays in IDLE (uniform between the two). The client's own waiting:
    # with the default, about a fifth of a fast server's session time goes to it.
    idle: tuple[float, float] = (0.2, 1.5)


@dataclass
class Report:
    target: str
    config: StressConfig
    elapsed: float
    world: World
    final_counts: dict[str, int]
    errors: list[str]  # sessions that broke off (and why)
    client_cpu: float = 0.0  # CPU seconds of this client process over the timed part
    server_cpu: float | None = None  # the server's, when a probe was given

    def cpu_per_command(self) -> tuple[float, float | None]:
        """(client, server) CPU milliseconds per command over the timed part."""
        n = self.world.commands or 1
        server = None if self.server_cpu is None else 1000 * self.server_cpu / n
        return 1000 * self.client_cpu / n, server

    @property
    def commands_per_second(self) -> float:
        return self.world.commands / self.elapsed if self.elapsed else 0.0

    def by_rule(self) -> dict[str, int]:
        return dict(Counter(v.rule for v in self.world.violations))

    def timings(self) -> str:
        """Per command name: how many, and the mean time from sending it to its tagged answer
        (IDLE: its whole stay); and how much of the sessions' time went to waiting for them."""
        w = self.world
        waited = sum(w.command_seconds.values())
        total = self.elapsed * self.config.sessions
        lines = [f"  {self.target}: the sessions spent {waited:.0f} s of {total:.0f} waiting"]
        for name, n in w.command_counts.most_common():
            spent = w.command_seconds[name]
            lines.append(f"  {name:12} {n:7} x {1000 * spent / n:7.1f} ms = {spent:6.1f} s")
        return "\n".join(lines)

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


async def run(
    host: str,
    port: int,
    config: StressConfig,
    target: str = "",
    server_cpu: Callable[[], float] | None = None,
) -> Report:
    """``server_cpu``, if given, reads the server's CPU seconds so far (the benchmark reads
    /proc); it is read at the start and end of the timed part, as this process's own."""
    world = World(trace=[] if config.trace else None)
    master = random.Random(config.seed)
    sessions = [
        StressSession(
            f"s{i}",
            world,
            random.Random(f"{config.seed}-{i}"),
            qresync=master.random() < config.qresync_share,
            idle=config.idle,
        )
        for i in range(config.sessions)
    ]
    errors: list[str] = []
    setup = Session("setup", world)
    await setup.connect(host, port, config.user, config.password)
    setup.tolerate_no = True
    await setup.command(f"CREATE {MAILBOXES[1]}")  # NO if it exists already
    await setup.logout()
    for i, s in enumerate(sessions):
        await s.connect(host, port, config.user, config.password)
        await s.select(MAILBOXES[i % 2])
    start = time.monotonic()
    cpu_start = time.process_time()
    server_start = server_cpu() if server_cpu else 0.0
    deadline = start + config.duration
    barrier = asyncio.Barrier(len(sessions))

    async def drive(s: StressSession) -> None:
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
            await s.final_search()
        except (ConnectionGone, OSError) as e:
            errors.append(f"{s.name} (final NOOP): {e}")
            s.dead = True

    await asyncio.gather(*(drive(s) for s in sessions))
    elapsed = time.monotonic() - start
    client = time.process_time() - cpu_start
    server = server_cpu() - server_start if server_cpu else None
    final = await _verify(host, port, config, world, sessions)
    for s in sessions:
        await s.logout()
    _check_recent(world, final)
    counts = {k: len(v) for k, v in final.items()}
    return Report(target, config, elapsed, world, counts, errors, client, server)


async def _verify(
    host: str, port: int, config: StressConfig, world: World, sessions: list[StressSession]
) -> dict[str, dict[int, Message]]:
    """A fresh session EXAMINEs each mailbox; the sessions' models and the ground truth must
    agree with what it sees."""
    final: dict[str, dict[int, Message]] = {}
    _resolve_copies(world)
    verifier = Session("verify", world, verifier=True)
    await verifier.connect(host, port, config.user, config.password)
    for mailbox in MAILBOXES:
        await verifier.select(mailbox, readonly=True)
        if verifier.sel and verifier.sel.messages:
            await verifier.command("FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (X-Stress-Id)])")
        assert verifier.sel is not None
        final[mailbox] = verifier.sel.known()
    await verifier.logout()
    judge(world, final, [s for s in sessions if not s.dead])
    return final


def judge(world: World, final: dict[str, dict[int, Message]], sessions: list[Session]) -> None:
    """The end checks: each session's model against the mailbox as ``final`` shows it (UID ->
    message, X-Stress-Id read), and what is there against what the checker made."""
    for s in sessions:
        if s.sel is None:
            continue
        truth = final.get(s.sel.mailbox, {})
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
        if key in world.deletable or key in world.moved or uid in final.get(mailbox, {}):
            continue  # (still there but announced as expunged: "resurrected" above)
        if key in world.expunged:
            world.violation(
                "expunged-undeleted",
                "verify",
                "",
                "",
                f"{mailbox} UID {uid} ({made}) was expunged (told to "
                f"{world.expunged[key]}) without \\Deleted or MOVE",
            )
        else:
            world.violation(
                "lost",
                "verify",
                "",
                "",
                f"{mailbox} UID {uid} ({made}) is gone; nobody deleted or moved it",
            )


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
    the end that some session was told of, exactly one - unless a session told of it left the
    mailbox without asking its flags (``World.recent_unseen``)."""
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
        elif (
            not holders
            and uid in final.get(mailbox, {})
            and (mailbox, uid) in world.created
            and not world.recent_unseen(mailbox, uid)
        ):
            world.violation(
                "recent-missing",
                ",".join(sorted(verdicts)),
                "",
                "",
                f"{mailbox} UID {uid} ({world.created[(mailbox, uid)]}) is \\Recent in "
                f"none of the sessions told of it: {sorted(verdicts)}",
            )


def run_stress(
    host: str,
    port: int,
    config: StressConfig,
    target: str = "",
    server_cpu: Callable[[], float] | None = None,
) -> Report:
    """``run`` in a new event loop (for a thread, or a script)."""
    return asyncio.run(run(host, port, config, target, server_cpu))
