"""FETCH (RFC 3501 6.4.5): what a FETCH needs per message is planned once (``_FetchPlan``);
each message is then answered from the index (FLAGS, UID, sizes, dates), the cache (ENVELOPE,
BODYSTRUCTURE) and the file (sections), which is streamed with flow control, never read whole
into memory unless small. CHANGEDSINCE and VANISHED are RFC 7162's."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from mailhub.imap import arguments as A
from mailhub.imap import bodystructure, message_cache, render, sections
from mailhub.imap.dispatch import SELECTED, Answered, CommandTable, Done
from mailhub.imap.parser import Item, ParseError
from mailhub.imap.session_commands import enable_condstore
from mailhub.imap.view import View
from mailhub.message import mime
from mailhub.store import MessageGone
from mailhub.store.maildir import unwaited

if TYPE_CHECKING:
    from mailhub.imap.protocol import IMAPServerProtocol, Output

COMMANDS = CommandTable()

# Message files are read in chunks of this size.
FETCH_CHUNK = 64 * 1024
# Whole messages up to this size are read in one piece for FETCH BODY[]; larger ones stream.
FETCH_WHOLE_MAX = 1024 * 1024


@COMMANDS.command("FETCH", (SELECTED,))
async def fetch(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    return await fetch_messages(session, items, uid=False)


async def fetch_messages(session: IMAPServerProtocol, items: list[Item], *, uid: bool) -> Done:
    if len(items) < 2:
        raise ParseError("FETCH needs a sequence set and attributes")
    view = session.selected_view()
    sequence = A.sequence_set(items[0])
    request = A.fetch_request(items[1:], uid=uid, qresync=session.qresync)
    if request.modseq:
        enable_condstore(session)
    pairs = view.select(sequence, uid=uid)
    if request.vanished:
        # RFC 7162 3.2.6: expunged UIDs of the set, before the FETCH responses.
        vanished = view.vanished(sequence)
        if vanished:
            session.write(b"* VANISHED (EARLIER) %s\r\n" % vanished.encode())
    if request.changedsince is not None:
        pairs = [(s, u) for s, u in pairs if view.infos[u].modseq > request.changedsince]
    if request.sets_seen and not view.readonly:
        unseen = [u for _, u in pairs if "S" not in view.infos[u].flags and not view.gone(u)]
        if unseen:
            # (the list written by the store's worker: nothing told before it is on disk)
            outcome, written = view.folder.deferred(view.folder.store_flags, unseen, "add", ["S"])
            try:
                for d in written:
                    await d
            finally:
                unwaited(written)  # (those after a failure: logged by the store)
            session.write_all(view.update(outcome.infos))  # FLAGS if keywords are new
            request = _with_flags(request)
    if session.condstore and request.flags and not request.modseq:
        # RFC 7162 3.1: once CONDSTORE is enabled, FETCH responses carrying flags carry
        # their MODSEQ too (Thunderbird relies on it after SELECT (CONDSTORE)), as the
        # STORE responses and flag updates already do.
        request = replace(request, modseq=True)
    plan = _FetchPlan.of(request)
    out = session.batched()
    missing = False
    registered = False
    try:
        if plan.wanted:
            session.start_streaming()
            registered = True
        for seq, u in pairs:
            if session.closing:
                raise Answered()
            if not await _fetch_one(session, view, plan, seq, u, out):
                missing = True
                view.found_gone.add(u)  # (told as expunged, never as still there)
            await session.pace(out)
        out.flush()
    finally:
        if registered:
            session.stop_streaming()
    if missing:
        # RFC 5530 EXPUNGEISSUED: some messages were expunged by another session.
        return Done("NO", "Some messages were expunged meanwhile", "EXPUNGEISSUED")
    return Done("OK", "FETCH completed")


async def _fetch_one(
    session: IMAPServerProtocol, view: View, plan: _FetchPlan, seq: int, uid: int, out: Output
) -> bool:
    request = plan.request
    info = view.infos[uid]
    head: list[bytes] = []
    if request.uid:
        head.append(b"UID %d" % uid)
    if request.flags:
        head.append(b"FLAGS " + view.flag_list(uid))
    if request.modseq:
        head.append(b"MODSEQ (%d)" % info.modseq)
    if request.internaldate:
        head.append(b"INTERNALDATE " + render.internaldate(info.internaldate))
    if request.size:
        head.append(b"RFC822.SIZE %d" % info.size)
    fp = None
    try:
        # The whole message (BODY[], RFC822) needs no parse: the file is the data; ENVELOPE
        # and the top-level header sections need only the (cached) header block.
        structure = message_cache.structure(view.folder, uid) if plan.needs_structure else None
        headers = message_cache.headers(view.folder, uid) if plan.needs_headers else None
        from_header = _header_sections(plan, headers)
        if plan.header_sections and from_header is None:
            # a header longer than the cache keeps (MAX_KEPT_HEADER): the file has it
            structure, headers = message_cache.structure(view.folder, uid), None
        if not plan.needs_file:
            if headers is not None and request.envelope:
                head.append(b"ENVELOPE " + bodystructure.envelope(headers))
            out.write(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(head)))
            return True
        if plan.whole_file and info.size <= FETCH_WHOLE_MAX:
            # BODY[], RFC822 of a message of usual size: one read, no section bookkeeping
            # (a FETCH 1:* BODY.PEEK[] does this 10,000 times). The literal's length is
            # what was read, whatever the index says.
            whole = view.folder.read_message(uid)
            _write_whole(whole, plan, b"* %d FETCH (" % seq + b" ".join(head), out)
            return True
        if from_header is None:
            fp = view.folder.open_message(uid)
    except (MessageGone, FileNotFoundError):
        if head:
            out.write(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(head)))
        return False
    with fp or nullcontext():
        if headers is not None and request.envelope:
            head.append(b"ENVELOPE " + bodystructure.envelope(headers))
        if structure is not None:
            if request.envelope:
                head.append(b"ENVELOPE " + bodystructure.envelope(structure))
            if request.body:
                head.append(b"BODY " + bodystructure.bodystructure(structure, False))
            if request.bodystructure:
                head.append(b"BODYSTRUCTURE " + bodystructure.bodystructure(structure, True))
        prefix = b"* %d FETCH (" % seq + b" ".join(head)
        sep = b" " if head else b""
        for i, (name, section, partial) in enumerate(plan.wanted):
            if from_header is not None:
                data = from_header[i]
            elif structure is None:  # whole-message sections only
                assert fp is not None
                data = sections.SectionData([(0, os.fstat(fp.fileno()).st_size)])
            else:
                assert fp is not None  # opened above: there is no from_header
                data = sections.section_data(structure, section, fp)
            if partial is not None:
                data = data.slice(partial[0], partial[1])
            out.write(prefix + sep + name + b" {%d}\r\n" % data.size)
            prefix, sep = b"", b" "
            # ignore: fp is None only for from_header's data, which is all in memory
            for chunk in data.chunks(fp, FETCH_CHUNK):  # type: ignore[arg-type]
                out.write(render.message_octets(chunk))
                if session.write_paused:
                    await session.pace(out)
                    if session.closing:
                        raise Answered()
        out.write(prefix + b")\r\n")
    return True


def _header_sections(
    plan: _FetchPlan, headers: mime.MessageHeader | None
) -> list[sections.SectionData] | None:
    """The sections of a FETCH of top-level header sections only, from the cached header
    block (no file read: a message list asks for them for every message); None if the plan
    is another or the block was cut."""
    if not plan.header_sections or headers is None:
        return None
    data = [sections.header_section_data(headers, section) for _, section, _ in plan.wanted]
    return None if None in data else data  # type: ignore[return-value]  # no None in it


def _write_whole(data: bytes, plan: _FetchPlan, prefix: bytes, out: Output) -> None:
    sep = b" " if prefix[-1:] != b"(" else b""
    for name, _section, partial in plan.wanted:
        # RFC 3501 6.4.5 <origin.octets>: fewer octets (none) near (past) the end.
        piece = data if partial is None else data[partial[0] : partial[0] + partial[1]]
        out.write(prefix + sep + name + b" {%d}\r\n" % len(piece))
        out.write(render.message_octets(piece))
        prefix, sep = b"", b" "
    out.write(b")\r\n")


def _with_flags(request: A.FetchRequest) -> A.FetchRequest:
    """RFC 3501 6.4.5: when FETCH sets \\Seen, the new FLAGS are reported."""
    if request.flags:
        return request
    return replace(request, flags=True)


@dataclass(frozen=True)
class _FetchPlan:
    """What a FETCH needs per message, worked out once for all of them."""

    request: A.FetchRequest
    wanted: tuple[tuple[bytes, sections.Section, tuple[int, int] | None], ...]
    needs_file: bool
    needs_structure: bool
    needs_headers: bool  # ENVELOPE or header sections without the structure: the header block
    whole_file: bool  # only whole-message sections (BODY[], RFC822, partial or not)
    header_sections: bool  # only top-level HEADER[.FIELDS[.NOT]] sections (RFC822.HEADER)

    @classmethod
    def of(cls, request: A.FetchRequest) -> _FetchPlan:
        wanted: list[tuple[bytes, sections.Section, tuple[int, int] | None]]
        wanted = [(_RFC822_NAMES[r], _RFC822_SECTIONS[r], None) for r in request.rfc822]
        wanted += [(s.response_name(), sections.Section(s.part, s.text,
                    tuple(f.upper() for f in s.fields)), s.partial)
                   for s in request.sections]  # fmt: skip
        described = request.body or request.bodystructure
        whole_only = all(section == _WHOLE for _, section, _ in wanted)
        header_only = bool(wanted) and all(sections.is_top_header(s) for _, s, _ in wanted)
        needs_structure = described or not (whole_only or header_only)
        return cls(
            request,
            tuple(wanted),
            needs_file=bool(wanted) or described,
            needs_structure=needs_structure,
            needs_headers=(request.envelope or header_only) and not needs_structure,
            whole_file=bool(wanted) and whole_only and not needs_structure and not request.envelope,
            header_sections=header_only and not needs_structure,
        )


_WHOLE = sections.Section()


_RFC822_NAMES = {"RFC822": b"RFC822", "RFC822.HEADER": b"RFC822.HEADER",
                 "RFC822.TEXT": b"RFC822.TEXT"}  # fmt: skip
_RFC822_SECTIONS = {"RFC822": sections.Section(), "RFC822.HEADER": sections.Section(text="HEADER"),
                    "RFC822.TEXT": sections.Section(text="TEXT")}  # fmt: skip
