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

At the end every session stops, says NOOP, SEARCH must find exactly what its model holds, and
its model must equal what a fresh EXAMINE of the mailbox shows (messages and flags); every
message present must be one the checker made (in the mailbox it was put or copied to, with its
own content), present once, and every message missing must have been deleted (\\Deleted and
EXPUNGE) or moved by somebody. Across sessions, a message is \\Recent in at most one, and in
exactly one when it is still there and some session was told of it (RFC 3501 2.3.2). A session
asks the flags of every message it was told of before it leaves a mailbox (it may be the one
that had \\Recent); one a FETCH announced just then, still unasked, is not judged.

Legitimately racy, so not checked or allowed (RFC 2180 discusses these multi-access cases):

- another session's STORE may change flags between ours and its answer: a STORE's result is
  checked against any FETCH it returned (one of them must show the change), not the last, and
  not at all when another session's STORE on the same message overlapped it in time (a
  multi-process server may then answer with the flags after both). With .SILENT the session
  derives the flags itself when it sends the STORE, and any FETCH after that overrides them;
- a message told by EXISTS may be expunged before the session asks its UID: nothing about it
  can be checked, and the \\Recent rule only looks at messages still there at the end;
- NO [EXPUNGEISSUED] to COPY, MOVE and STORE when messages were expunged by another session
  (RFC 2180 4.2.1 and 4.4.1, RFC 5530) -- but NOT to FETCH of messages this session has not yet
  been told are expunged: their sequence numbers are still valid for it (RFC 3501 7.4.1,
  RFC 2180 4.1.1 keeps them readable); a NO there fails a client that did nothing wrong
  (rule ``fetch-expungeissued``);
- while sessions run, SEARCH results may differ from the model's flags (the server may know
  newer ones): only checked to name messages the session knows;
- a FETCH may leave out a message expunged by another session (RFC 2180 4.1.3); flags of
  messages expunged meanwhile are never compared.

Used by tests/test_imap_stress.py (bounded run on an in-process mailhub) and
benchmarks/imap_stress.py (longer runs, mailhub and Dovecot, commands per second).
"""

from mailhub.imapstress.client import KEYWORDS, MAILBOXES, StressSession
from mailhub.imapstress.model import Message, Running, Selection, Session
from mailhub.imapstress.run import Report, StressConfig, run, run_stress
from mailhub.imapstress.truth import RULES, Violation, World
from mailhub.imapstress.wire import Connection, Response, Status, parse_list, parse_status

__all__ = [
    "KEYWORDS",
    "MAILBOXES",
    "RULES",
    "Connection",
    "Message",
    "Report",
    "Response",
    "Running",
    "Selection",
    "Session",
    "Status",
    "StressConfig",
    "StressSession",
    "Violation",
    "World",
    "parse_list",
    "parse_status",
    "run",
    "run_stress",
]
