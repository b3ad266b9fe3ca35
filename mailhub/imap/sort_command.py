"""SORT and THREAD (RFC 5256; DISPLAYFROM and DISPLAYTO of RFC 5957), plain and UID: the glue
between sort.py / thread.py and the selected mailbox.

The search keys are SEARCH's (search.compile_criteria, same charsets), searched as SEARCH does
(search_command: one cache pass, in slices that give the reactor a turn). The sort and thread
keys come from the same pass over the cached headers, computed in slices too: a cold SORT of
10,000 messages reads 10,000 header blocks once, later ones only compare.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from mailhub.imap import arguments as A
from mailhub.imap import message_cache, search_command
from mailhub.imap.dispatch import SELECTED, CommandTable, Done
from mailhub.imap.parser import Item, ParseError
from mailhub.imap.sort import (
    SortError,
    SortMessage,
    key_column,
    message_id_keys,
    parse_program,
    sort_order,
    thread_keys,
)
from mailhub.imap.thread import (
    ALGORITHMS,
    release,
    render,
    thread_orderedsubject,
    thread_references,
)
from mailhub.store.core import collector_paused

if TYPE_CHECKING:
    from mailhub.imap.protocol import IMAPServerProtocol
    from mailhub.imap.view import View
    from mailhub.message.mime import MessageHeader

COMMANDS = CommandTable()


@COMMANDS.command("SORT", (SELECTED,))
async def sort(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    return await sort_command(session, items, uid=False)


@COMMANDS.command("THREAD", (SELECTED,))
async def thread(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    return await thread_command(session, items, uid=False)


async def sort_command(session: IMAPServerProtocol, items: list[Item], *, uid: bool) -> Done:
    """``SORT (criteria) charset search-keys`` (RFC 5256 3)."""
    if len(items) < 3:
        raise ParseError("SORT needs sort criteria, a charset and search keys")
    try:
        program = parse_program(items[0])
    except SortError as e:
        raise ParseError(str(e)) from None
    found = await _find(session, items[1], items[2:])
    if isinstance(found, Done):
        return found
    uids, headers = found.uids, found.headers
    # Each criterion's values as a column (ints and strings, computed and memoised now, in
    # slices): no object per message for the garbage collector to count or walk
    columns = []
    for key in program:
        column: list[Any] = []

        def fill(start: int, end: int, name: str = key.name, column: list[Any] = column) -> None:
            column.extend(key_column(name, uids[start:end], headers[start:end], found.infos))

        await _in_slices(session, len(uids), fill)
        columns.append((column, key.reverse))
    order = sort_order(columns, len(uids))
    numbers = uids if uid else found.seqs()
    # (the numbers read in C: no Python call per message)
    line = b"* SORT" + b"".join([b" %d" % n for n in map(numbers.__getitem__, order)])
    if found.modseq is not None:
        line += b" (MODSEQ %d)" % found.modseq  # RFC 7162 3.1.5
    session.write(line + b"\r\n")
    return Done("OK", "SORT completed")


async def thread_command(session: IMAPServerProtocol, items: list[Item], *, uid: bool) -> Done:
    """``THREAD algorithm charset search-keys`` (RFC 5256 4)."""
    if len(items) < 3:
        raise ParseError("THREAD needs an algorithm, a charset and search keys")
    algorithm = A.atom(items[0], "threading algorithm").upper()
    if algorithm not in ALGORITHMS:
        raise ParseError(f"unknown threading algorithm {algorithm[:40]}")
    references = algorithm == "REFERENCES"
    found = await _find(session, items[1], items[2:])
    if isinstance(found, Done):
        return found
    text, any_roots = await _threads(session, found, references, _UID if uid else _SEQ)
    session.write(b"* THREAD" + (b" " if any_roots else b"") + text + b"\r\n")
    return Done("OK", "THREAD completed")


async def _threads(
    session: IMAPServerProtocol,
    found: _Found,
    references: bool,
    number: Callable[[SortMessage], int],
) -> tuple[bytes, bool]:
    """THREAD's answer (RFC 5256 4) over the messages found, and whether there is a thread."""
    uids, headers, infos = found.uids, found.headers, found.infos

    some_references = False

    def keys(start: int, end: int) -> None:
        # the keys computed and memoised now, in slices (plain values: no object per message)
        nonlocal some_references
        if thread_keys(headers[start:end], references=references):
            some_references = True

    await _in_slices(session, len(uids), keys)
    if some_references:  # REFERENCES (1) reads every Message-ID then: in slices too
        await _in_slices(session, len(uids), lambda s, e: message_id_keys(headers[s:e]))
    seqs = found.seqs()
    # One synchronous step from here (no await): the SortMessages and Nodes made for the
    # threading live only inside it, so the collector is paused for it (a collection would
    # only walk them: 16 young and one generation-1 per 10,000 messages) and they are all
    # freed before it is on again (release() breaks the Nodes' cycles). Never across an
    # await: the switch is the process's, every other session would run without it.
    with collector_paused():
        messages = [
            SortMessage(u, seq, infos[u].internaldate, infos[u].size, h)
            for u, seq, h in zip(uids, seqs, headers, strict=True)
        ]
        roots = thread_references(messages) if references else thread_orderedsubject(messages)
        text = render(roots, number)
        release(roots)
        any_roots = bool(roots)
        del messages, roots  # freed while paused: their count starts no collection after
    return text, any_roots


UID_COMMANDS = {"SORT": sort_command, "THREAD": thread_command}
_UID, _SEQ = attrgetter("uid"), attrgetter("seq")


class _Found:
    """What SORT and THREAD work on: the messages matching the search keys, in mailbox order
    (``uids``), their cached headers (``headers``, same positions), the view's ``infos``,
    and the highest mod-sequence among them when the search used MODSEQ (RFC 7162 3.1.5)."""

    __slots__ = ("_view", "headers", "infos", "modseq", "uids")

    def __init__(
        self, view: View, uids: list[int], headers: list[MessageHeader], modseq: int | None
    ) -> None:
        self._view = view
        self.uids = uids
        self.headers = headers
        self.infos = view.infos
        self.modseq = modseq

    def seqs(self) -> list[int]:
        """The sequence number of each of ``uids`` (same positions)."""
        every = self._view.uids
        if len(self.uids) == len(every):  # every message (a subsequence as long: the same)
            return list(range(1, len(every) + 1))
        seq = {u: n for n, u in enumerate(every, 1)}
        return [seq[u] for u in self.uids]


async def _find(session: IMAPServerProtocol, charset_item: Item, keys: list[Item]) -> _Found | Done:
    """The messages matching the search keys with their cached headers (_Found); a Done for
    an unsupported charset."""
    view = session.selected_view()
    charset = A.astring(charset_item, "charset").decode("ascii", "replace")
    criteria = search_command.compile_for(session, keys, charset)
    if isinstance(criteria, Done):
        return criteria
    folder = view.folder
    headers = message_cache.headers_pass(folder)
    structure = None
    try:
        if criteria.needs_structure:
            structure = message_cache.structure_pass(folder)
        box = search_command.SearchMailbox(
            view,
            headers.get,
            structure.get if structure else lambda u: message_cache.structure(folder, u),
        )
        # expunged by others, not yet announced: nothing left to read
        uids = view.present(view.uids)
        found = await search_command.search_in_slices(session, criteria, box, uids)
        header_of = box.headers
        kept: list[int] = []
        cached: list[MessageHeader] = []

        def look(start: int, end: int) -> None:
            part = found[start:end]
            gone = len(box.gone)
            hs = [header_of(u) for u in part]
            if len(box.gone) != gone:  # gone meanwhile: left out, as SEARCH leaves it out
                part = [u for u, h in zip(part, hs, strict=True) if h is not None]
                hs = [h for h in hs if h is not None]
            kept.extend(part)
            cached.extend(hs)  # type: ignore[arg-type]  # Nones left out above

        await _in_slices(session, len(found), look)
    finally:
        for p in (headers, structure):
            if p is not None:
                p.close()
    modseq = None
    if criteria.uses_modseq and kept:
        modseq = max(view.infos[u].modseq for u in kept)
    return _Found(view, kept, cached, modseq)


# messages per piece of _in_slices: a few ms of a cold SORT's key work
_PIECE = 256


async def _in_slices(
    session: IMAPServerProtocol, count: int, work: Callable[[int, int], None]
) -> None:
    """``work(start, end)`` over 0..count in pieces, giving the reactor a turn after every
    search_command.SLICE_SECONDS of work, as SEARCH does."""
    clock = session.factory.clock
    slice_start = clock.seconds()
    for start in range(0, count, _PIECE):
        work(start, min(start + _PIECE, count))
        if start + _PIECE < count and clock.seconds() - slice_start >= search_command.SLICE_SECONDS:
            await search_command.let_others_run(session)
            slice_start = clock.seconds()
