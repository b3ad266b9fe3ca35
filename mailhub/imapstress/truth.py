"""The rules the checker applies and the ground truth shared by the sessions: the messages
the checker made and what became of them."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

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
    "search-result": "RFC 3501 6.4.4/7.2.5: SEARCH names only messages the session was told "
    "of; with every session stopped, exactly those its model says match",
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
    # UID ranges (both bounds excluded, None: no upper bound) of messages a session was told
    # of but left the mailbox without asking their flags: their \Recent went unseen.
    recent_unasked: dict[str, list[tuple[int, int | None]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    uidvalidity: dict[str, int] = field(default_factory=dict)
    copies: dict[Key, Key] = field(default_factory=dict)  # COPYUID: copy -> its source
    # STOREs per message: [session, sent, answered (None while in flight)]
    stores: dict[Key, list[list[Any]]] = field(default_factory=lambda: defaultdict(list))
    violations: list[Violation] = field(default_factory=list)
    commands: int = 0
    command_counts: Counter[str] = field(default_factory=Counter)
    # wall time from sending to the tagged answer, per command name
    command_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
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

    def recent_unseen(self, mailbox: str, uid: int) -> bool:
        """A session left ``mailbox`` without asking the flags of a message that may be
        ``uid``: whether it had \\Recent is unknown."""
        return any(
            low < uid and (high is None or uid < high)
            for low, high in self.recent_unasked.get(mailbox, ())
        )

    def violation(self, rule: str, session: str, command: str, response: str, detail: str) -> None:
        assert rule in RULES, rule
        self.violations.append(Violation(rule, session, command, response, detail))
        self.log(session, "!!", f"[{rule}] {detail}")
