"""SEARCH (RFC 3501 6.4.4, MODSEQ of RFC 7162 3.1.5): the glue between the criteria of
search.py and the selected mailbox, with one cache pass per entry the keys need.

Store calls run on the reactor thread, and a big SEARCH (BODY over 10,000 messages reads
48 MB; a cold header search reads 10,000 files) would stall every other connection of the
process for as long. So the messages are searched in pieces, and after every SLICE_SECONDS
of work the command gives the reactor back for a turn (``deferLater(clock, 0)`` on the
factory's clock) before going on. The answer is the same: every key is decided per message
(search.py), the session's view does not change while its own command runs, and a message
that another session expunges meanwhile is found gone when read, like one that another
process expunged. A connection lost meanwhile cancels the command: the work stops at the
next turn and the cache passes are closed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from mailhub.imap import arguments as A
from mailhub.imap import message_cache
from mailhub.imap.dispatch import SELECTED, CommandTable, Done
from mailhub.imap.parser import Atom, Item, ParseError
from mailhub.imap.search import BadCharset, Criteria, SearchError, compile_criteria
from mailhub.imap.session_commands import enable_condstore
from mailhub.imap.view import View
from mailhub.message import mime
from mailhub.store import MessageGone

if TYPE_CHECKING:
    from mailhub.imap.protocol import IMAPServerProtocol

COMMANDS = CommandTable()

# Seconds of work between two turns given back to the reactor: other sessions wait at most
# about this long for a big SEARCH, and a search of a warm cache (~25 ms for 10,000
# messages) yields once or twice.
SLICE_SECONDS = 0.015
# Messages searched between two looks at the time: the first piece is small (a message may
# be big), then each grows or shrinks to take about an eighth of a slice.
FIRST_PIECE = 4
MAX_PIECE = 4096


@COMMANDS.command("SEARCH", (SELECTED,))
async def search(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    return await search_messages(session, items, uid=False)


def compile_for(
    session: IMAPServerProtocol, keys: list[Item], charset: str | None
) -> Criteria | Done:
    """The search keys of SEARCH, SORT or THREAD compiled; a NO [BADCHARSET] for a charset we
    cannot search in (RFC 3501 6.4.4), BAD (ParseError) for bad keys. Keys using MODSEQ turn
    CONDSTORE on (RFC 7162 3.1.5)."""
    try:
        criteria = compile_criteria(keys, charset)
    except BadCharset as e:
        return Done("NO", str(e) or "Unsupported charset", "BADCHARSET (US-ASCII UTF-8)")
    except SearchError as e:
        raise ParseError(str(e)) from None
    if criteria.uses_modseq:
        enable_condstore(session)
    return criteria


async def search_messages(session: IMAPServerProtocol, items: list[Item], *, uid: bool) -> Done:
    view = session.selected_view()
    charset = None
    if len(items) >= 2 and isinstance(items[0], Atom) and items[0].upper() == "CHARSET":
        charset = A.astring(items[1], "charset").decode("ascii", "replace")
        items = items[2:]
    criteria = compile_for(session, items, charset)
    if isinstance(criteria, Done):
        return criteria
    folder = view.folder
    # One pass over each cache entry the keys need: the cache file is checked for other
    # processes' work once, here, and what this search computes is appended in one write.
    # For header keys only the header block is read (usually with one read()).
    headers = structure = None
    try:
        if criteria.needs_headers:
            headers = message_cache.headers_pass(folder)
        if criteria.needs_structure:
            structure = message_cache.structure_pass(folder)
        box = SearchMailbox(
            view,
            headers.get if headers else lambda u: message_cache.headers(folder, u),
            structure.get if structure else lambda u: message_cache.structure(folder, u),
        )
        uids = view.uids
        if criteria.needs_headers or criteria.needs_structure:
            # expunged by others, not yet announced: nothing left to read
            uids = view.present(uids)
        found = await search_in_slices(session, criteria, box, uids)
    finally:
        for p in (headers, structure):
            if p is not None:
                p.close()
    highest = 0
    if criteria.uses_modseq:  # (10,000 look-ups otherwise not needed)
        highest = max((view.infos[u].modseq for u in found), default=0)
    if not uid:
        found = [box.seq(u) for u in found]
    # one str.join in C, not a bytes object per number
    line = b"* SEARCH " + " ".join(map(str, found)).encode("ascii") if found else b"* SEARCH"
    if criteria.uses_modseq and found:
        line += b" (MODSEQ %d)" % highest
    session.write(line + b"\r\n")
    return Done("OK", "SEARCH completed")


async def search_in_slices(
    session: IMAPServerProtocol, criteria: Criteria, box: SearchMailbox, uids: list[int]
) -> list[int]:
    """``criteria.search(box, uids)``, a piece of ``uids`` at a time, giving the reactor a
    turn after each SLICE_SECONDS of work. Time is the factory clock's (a task.Clock in tests
    moves only when a test moves it)."""
    clock: IReactorTime = session.factory.clock
    now = clock.seconds
    found: list[int] = []
    pos, piece, total = 0, FIRST_PIECE, len(uids)
    slice_start = now()
    while pos < total:
        started = now()
        part = uids[pos : pos + piece]
        found.extend(criteria.search(box, part))
        pos += len(part)
        ended = now()
        spent = ended - started
        target = SLICE_SECONDS / 8
        if spent <= 0:
            piece = min(MAX_PIECE, piece * 2)
        else:
            piece = max(1, min(MAX_PIECE, piece * 4, int(len(part) * target / spent)))
        if ended - slice_start >= SLICE_SECONDS and pos < total:
            await let_others_run(session)
            slice_start = now()
    return found


async def let_others_run(session: IMAPServerProtocol) -> None:
    """Give the reactor two turns between slices of a long command: in the first it reads
    what other connections sent and runs their commands, in the second it writes their
    answers (a write goes out when the reactor next polls). CancelledError if the session
    ended meanwhile (BYE said; a lost connection cancels the await itself)."""
    clock: IReactorTime = session.factory.clock
    await deferLater(clock, 0, lambda: None)
    await deferLater(clock, 0, lambda: None)
    if session.closing:
        raise CancelledError()


class SearchMailbox:
    """The selected mailbox as search.py's ``SearchMailbox`` sees it: what the view knows, and
    the command's cache passes for headers and structures (one dict look-up when cached)."""

    def __init__(
        self,
        view: View,
        headers: Callable[[int], mime.MessageHeader],
        structure: Callable[[int], mime.MessageStructure],
    ) -> None:
        self.view = view
        self.largest_seq = view.exists
        self.largest_uid = view.uids[-1] if view.uids else 0
        self.gone: set[int] = set()
        self.flags = view.flag_set
        self._headers = headers
        self._structure = structure
        self._seqs: dict[int, int] | None = None

    def seq(self, uid: int) -> int:
        if self._seqs is None:
            self._seqs = {u: n for n, u in enumerate(self.view.uids, 1)}
        return self._seqs[uid]

    def recent(self, uid: int) -> bool:
        return uid in self.view.recent

    def internaldate(self, uid: int) -> int:
        return self.view.infos[uid].internaldate

    def size(self, uid: int) -> int:
        return self.view.infos[uid].size

    def modseq(self, uid: int) -> int:
        return self.view.infos[uid].modseq

    def headers(self, uid: int) -> mime.MessageHeader | None:
        try:
            return self._headers(uid)
        except (MessageGone, FileNotFoundError):  # expunged by another process meanwhile
            self.gone.add(uid)
            return None

    def structure(self, uid: int) -> mime.MessageStructure | None:
        try:
            return self._structure(uid)
        except (MessageGone, FileNotFoundError):
            self.gone.add(uid)
            return None

    def open(self, uid: int) -> Any:
        try:
            return self.view.folder.open_message(uid)
        except (MessageGone, FileNotFoundError):
            self.gone.add(uid)
            return None
