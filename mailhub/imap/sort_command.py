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
from typing import TYPE_CHECKING

from mailhub.imap import arguments as A
from mailhub.imap import message_cache, search_command
from mailhub.imap.dispatch import SELECTED, CommandTable, Done
from mailhub.imap.parser import Item, ParseError
from mailhub.imap.sort import SortError, SortMessage, parse_program, sort_messages
from mailhub.imap.thread import (
    ALGORITHMS,
    release,
    render,
    thread_orderedsubject,
    thread_references,
)

if TYPE_CHECKING:
    from mailhub.imap.protocol import IMAPServerProtocol

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

    getters = [key.getter for key in program]

    def touch(m: SortMessage) -> None:
        for get in getters:
            get(m)

    # the keys computed and memoised now, in slices
    found = await _find(session, items[1], items[2:], getters[0] if len(getters) == 1 else touch)
    if isinstance(found, Done):
        return found
    messages, modseq = found
    ordered = sort_messages(messages, program)
    # (the numbers read in C: no Python call per message)
    line = b"* SORT" + b"".join([b" %d" % n for n in map(_UID if uid else _SEQ, ordered)])
    if modseq is not None:
        line += b" (MODSEQ %d)" % modseq  # RFC 7162 3.1.5
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

    def touch(m: SortMessage) -> None:
        _ = (m.sent, m.base_subject)

    # the keys computed and memoised now, in slices
    found = await _find(
        session, items[1], items[2:], SortMessage.compute_thread_keys if references else touch
    )
    if isinstance(found, Done):
        return found
    messages, _ = found
    roots = thread_references(messages) if references else thread_orderedsubject(messages)
    number: Callable[[SortMessage], int] = _UID if uid else _SEQ
    text = render(roots, number)
    release(roots)
    session.write(b"* THREAD" + (b" " if roots else b"") + text + b"\r\n")
    return Done("OK", "THREAD completed")


UID_COMMANDS = {"SORT": sort_command, "THREAD": thread_command}
_UID, _SEQ = attrgetter("uid"), attrgetter("seq")


async def _find(
    session: IMAPServerProtocol,
    charset_item: Item,
    keys: list[Item],
    touch: Callable[[SortMessage], None],
) -> tuple[list[SortMessage], int | None] | Done:
    """The messages matching the search keys, in mailbox order, with their cached headers and
    the keys ``touch`` asks for computed; and the highest mod-sequence among them when the
    search used MODSEQ (RFC 7162 3.1.5). A Done for an unsupported charset."""
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

        header_of, infos = box.headers, view.infos
        seqs = {u: n for n, u in enumerate(view.uids, 1)}

        def message(u: int) -> SortMessage | None:
            h = header_of(u)
            if h is None:  # gone meanwhile: left out, as SEARCH leaves it out
                return None
            info = infos[u]
            m = SortMessage(u, seqs[u], info.internaldate, info.size, h)
            touch(m)
            return m

        messages = await _in_slices(session, found, message)
    finally:
        for p in (headers, structure):
            if p is not None:
                p.close()
    modseq = None
    if criteria.uses_modseq and messages:
        modseq = max(view.infos[m.uid].modseq for m in messages)
    return messages, modseq


async def _in_slices(
    session: IMAPServerProtocol, uids: list[int], make: Callable[[int], SortMessage | None]
) -> list[SortMessage]:
    """``make`` of each UID (Nones left out), giving the reactor a turn after every
    search_command.SLICE_SECONDS of work, as SEARCH does."""
    clock = session.factory.clock
    out: list[SortMessage] = []
    slice_start = clock.seconds()
    for i, u in enumerate(uids, 1):
        m = make(u)
        if m is not None:
            out.append(m)
        if i % 64 == 0 and clock.seconds() - slice_start >= search_command.SLICE_SECONDS:
            await search_command.let_others_run(session)
            slice_start = clock.seconds()
    return out
