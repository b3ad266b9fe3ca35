"""SEARCH (RFC 3501 6.4.4, MODSEQ of RFC 7162 3.1.5): the glue between the criteria of
search.py and the selected mailbox, with one cache pass per entry the keys need."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mailhub.imap import arguments as A
from mailhub.imap import message_cache, mime
from mailhub.imap.dispatch import SELECTED, CommandTable, Done
from mailhub.imap.parser import Atom, Item, ParseError
from mailhub.imap.search import BadCharset, SearchError, compile_criteria
from mailhub.imap.session_commands import enable_condstore
from mailhub.imap.view import View
from mailhub.store import MessageGone

if TYPE_CHECKING:
    from mailhub.imap.protocol import IMAPServerProtocol

COMMANDS = CommandTable()


@COMMANDS.command("SEARCH", (SELECTED,))
async def search(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    return search_messages(session, items, uid=False)


def search_messages(session: IMAPServerProtocol, items: list[Item], *, uid: bool) -> Done:
    view = session.selected_view()
    charset = None
    if len(items) >= 2 and isinstance(items[0], Atom) and items[0].upper() == "CHARSET":
        charset = A.astring(items[1], "charset").decode("ascii", "replace")
        items = items[2:]
    try:
        criteria = compile_criteria(items, charset)
    except BadCharset as e:
        return Done("NO", str(e) or "Unsupported charset", "BADCHARSET (US-ASCII UTF-8)")
    except SearchError as e:
        raise ParseError(str(e)) from None
    if criteria.uses_modseq:
        enable_condstore(session)
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
        box = _SearchMailbox(
            view,
            headers.get if headers else lambda u: message_cache.headers(folder, u),
            structure.get if structure else lambda u: message_cache.structure(folder, u),
        )
        uids = view.uids
        if criteria.needs_headers or criteria.needs_structure:
            # expunged by others, not yet announced: nothing left to read
            uids = [u for u in uids if not view.gone(u)]
        found = criteria.search(box, uids)
    finally:
        for p in (headers, structure):
            if p is not None:
                p.close()
    highest = max((view.infos[u].modseq for u in found), default=0)
    if not uid:
        found = [box.seq(u) for u in found]
    line = b"* SEARCH" + b"".join(b" %d" % n for n in found)
    if criteria.uses_modseq and found:
        line += b" (MODSEQ %d)" % highest
    session.write(line + b"\r\n")
    return Done("OK", "SEARCH completed")


class _SearchMailbox:
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
