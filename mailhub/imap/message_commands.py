"""Commands that change messages: STORE (with CONDSTORE's UNCHANGEDSINCE, RFC 7162), COPY and
MOVE (RFC 6851) with UIDPLUS's COPYUID (RFC 4315), EXPUNGE and UID EXPUNGE, APPEND (APPENDUID,
TRYCREATE); and UID, which runs FETCH, SEARCH, STORE, COPY, MOVE or EXPUNGE by UID."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from twisted.internet.defer import CancelledError, Deferred

from mailhub.imap import arguments as A
from mailhub.imap import fetch_command, search_command, sort_command
from mailhub.imap.dispatch import AUTHED, SELECTED, CommandTable, Done, utf8
from mailhub.imap.parser import Item, ParseError, SpooledLiteral
from mailhub.imap.sequence import compress
from mailhub.imap.session_commands import enable_condstore
from mailhub.imap.view import split_flags
from mailhub.safeio import fsync_dir
from mailhub.store import FolderNotFound, StoreError
from mailhub.store.core import collector_paused, tick
from mailhub.store.errors import LockBusy, MessageGone
from mailhub.store.maildir import Folder, SpoolFile, unwaited

if TYPE_CHECKING:
    from mailhub.imap.protocol import IMAPServerProtocol

COMMANDS = CommandTable()
T = TypeVar("T")
Written = list[Deferred[None]]  # the Deferreds of a command's list writes (Folder.deferring)


@COMMANDS.command("APPEND", AUTHED)
async def append(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    request = A.append_request(items)
    message = request.message
    size = message.size if isinstance(message, SpooledLiteral) else len(message)
    if size == 0:
        return Done("NO", "Cannot save an empty message")
    try:
        folder = session.box().folder(request.mailbox)
    except FolderNotFound:
        # RFC 3501 6.3.11: TRYCREATE tells the client CREATE would help.
        return Done("NO", "Mailbox does not exist", "TRYCREATE")
    await session.settle(folder)  # wait for a busy lock before storing, not after
    letters, keywords = split_flags(request.flags)
    source: BinaryIO | None = None
    if not isinstance(message, SpooledLiteral):
        spool, source = folder.spool(), io.BytesIO(message)  # a small literal, from memory
    elif isinstance(message.file, SpoolFile) and folder.spooled_here(message.file):
        spool = message.file  # already in this folder's tmp/: delivery is a link
    else:
        # Spooled elsewhere (the folder was not known when it arrived): copied once, by the
        # worker, from its own descriptor (the command closes the literal's when it ends).
        spool, source = folder.spool(), os.fdopen(os.dup(message.file.fileno()), "rb", 0)
    placement = folder.prepare_spooled(
        spool, size, flags=letters, keywords=keywords, internaldate=request.internaldate
    )
    try:
        # fsync and link (and the copy of a literal spooled elsewhere) off the reactor thread.
        await session.factory.run(placement.place, source)
    except CancelledError:
        raise  # the connection is gone; the worker finishes the delivery on its own
    except BaseException:
        folder.abandon(placement)
        raise
    try:
        # adopt() only names the placed file's UID under the folder lock: safe to run again.
        uid, written = await session.unlocked(lambda: _deferring(folder, folder.adopt, placement))
        await _durable(written)
        # Its UIDVALIDITY from a look that may meet the lock busy too (another process or
        # the store's worker giving newer mail its UID): waited for on the clock as well,
        # not OK without APPENDUID (RFC 4315 3). No lock needed: the list holds the UID.
        validity = (await session.unlocked(lambda: folder.sync(assign=False))).uidvalidity
    except LockBusy:
        # Stored durably, only its UID is not known (the folder lock stayed busy past
        # lock_timeout): OK without APPENDUID rather than NO and a duplicate on the retry.
        return Done("OK", "APPEND completed")
    except MessageGone:
        # Stored, given its UID by another process and expunged by another session before
        # we could read that UID: the APPEND itself succeeded (a NO would invite a retry,
        # bringing back a message somebody deleted).
        return Done("OK", "APPEND completed")
    return Done("OK", "APPEND completed", f"APPENDUID {validity} {uid}")


@COMMANDS.command("EXPUNGE", (SELECTED,))
async def expunge(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    A.expect_count(items, 0)
    return await _expunge(session, None)


def _deferring(folder: Folder, f: Callable[..., T], *args: Any) -> tuple[T, Written]:
    """``f(*args)`` with the folder's list writes left to the store's worker
    (``Folder.deferring``), and the writes it started: the command waits for them
    (``_durable``) before it tells anything of its change. A failed write fails the
    command (NO [SERVERBUG]); other sessions' looks wait for it (``Flushing``)."""
    return folder.deferred(f, *args)


async def _durable(written: Written) -> None:
    try:
        for d in written:
            await d
    finally:
        unwaited(written)  # (those after a failure: logged by the store, nobody waits)


async def _expunge(session: IMAPServerProtocol, uids: set[int] | None) -> Done:
    view = session.selected_view()
    if view.readonly:
        return Done("NO", "Mailbox is read-only", "READ-ONLY")
    session.write_all(view.sync(allow_expunge=True))  # the freshest flags decide
    deleted = [
        uid for uid in view.uids
        if "T" in view.infos[uid].flags and (uids is None or uid in uids)
    ]  # fmt: skip
    if deleted:
        _, written = _deferring(view.folder, lambda: view.folder.expunge(deleted, by=view))
        await _durable(written)
    return Done("OK", "EXPUNGE completed")


@COMMANDS.command("UID", (SELECTED,))
async def uid_prefixed(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    if not items:
        raise ParseError("UID needs a command")
    sub = A.atom(items[0], "command").upper()
    rest = items[1:]
    # UID commands may report expunges (RFC 3501 7.4.1): doing it first keeps messages
    # expunged by others out of the answer. Not for STORE: it would tell other sessions'
    # flag changes as they were before the STORE, which .SILENT does not correct (RFC 3501
    # 6.4.6: flags "determinate without a race"); STORE skips expunged messages itself, and
    # the sync after the command reports the expunges.
    if sub != "STORE":
        # On reactor timers while the lock is busy (the store's worker, another process):
        # UID COPY and MOVE are not run again, so a LockBusy here would be their answer.
        view = session.selected_view()
        # (a look that changes the list leaves its write to the worker and meets Flushing:
        # tried again once it is on disk.) A fast look (view.fast_look): only NOOP-like
        # commands must list young directories.
        lines = await session.unlocked(
            lambda: view.folder.deferred_look(lambda: view.sync(allow_expunge=True, fast=True))
        )
        session.write_all(lines)
    if sub == "FETCH":
        return await fetch_command.fetch_messages(session, rest, uid=True)
    if sub == "SEARCH":
        return await search_command.search_messages(session, rest, uid=True)
    if sub in sort_command.UID_COMMANDS:  # SORT, THREAD (RFC 5256)
        return await sort_command.UID_COMMANDS[sub](session, rest, uid=True)
    if sub == "STORE":
        return await _store(session, rest, uid=True)
    if sub in ("COPY", "MOVE"):
        settled = await _settle_for_copy(session, rest)
        return await _copy(session, rest, uid=True, move=sub == "MOVE", since=settled)
    if sub == "EXPUNGE":
        A.expect_count(rest, 1)
        pairs = session.selected_view().select(A.sequence_set(rest[0]), uid=True)
        return await _expunge(session, {u for _, u in pairs})
    raise ParseError(f"unknown UID command {sub[:20]}")


@COMMANDS.command("STORE", (SELECTED,))
async def store(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    return await _store(session, items, uid=False)


@COMMANDS.command("COPY", (SELECTED,))
async def copy(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    settled = await _settle_for_copy(session, items)
    return await _copy(session, items, uid=False, move=False, since=settled)


@COMMANDS.command("MOVE", (SELECTED,))
async def move(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    settled = await _settle_for_copy(session, items)
    return await _copy(session, items, uid=False, move=True, since=settled)


async def _settle_for_copy(session: IMAPServerProtocol, items: list[Item]) -> int:
    """Wait for busy locks of both folders before copying: a busy lock met after the links
    were made cannot be waited for by running the command again (it would copy twice).
    Returns the tick before these looks: ``link_copies`` uses the source's look instead of
    making another, which could meet the lock busy again (the store's worker, another
    process) with nobody to wait for it."""
    settled = tick()
    try:
        target = session.box().folder(A.mailbox(items[1]))
    except (ParseError, IndexError, StoreError):
        return settled  # _copy answers that
    source = session.selected_view().folder
    while True:
        await session.settle(source, target)
        # Neither may be mid-write (uidwriter.Flush) when the copies are linked: a look
        # meeting it then would answer the command NO. One reactor turn from here on.
        pending = [d for d in (source.flushed(), target.flushed()) if d is not None]
        if not pending:
            return settled
        for d in pending:
            try:
                await d
            except Exception:
                pass  # (the command that made that change answers it; we look again)


async def _store(session: IMAPServerProtocol, items: list[Item], *, uid: bool) -> Done:
    if len(items) < 2:
        raise ParseError("STORE needs a sequence set, an item and flags")
    view = session.selected_view()
    sequence = A.sequence_set(items[0])
    request = A.store_request(items[1:])
    if view.readonly:
        return Done("NO", "Mailbox is read-only", "READ-ONLY")
    conditional = request.unchanged_since is not None
    if conditional:
        enable_condstore(session)
    letters, keywords = split_flags(request.flags)
    # (Collector paused for this synchronous step, never across the await: STORE 1:* makes
    # 10,000 pairs and a dict of them, no cycles, a dozen passes otherwise.)
    with collector_paused():
        pairs = view.select(sequence, uid=uid)
        live = view.present([u for _, u in pairs])
        infos = view.infos
        told = {u: infos[u] for u in live}  # what the client knows, before the change
        outcome, written = _deferring(
            view.folder,
            lambda: view.folder.store_flags(
                live, request.mode, letters, keywords, unchanged_since=request.unchanged_since
            ),
        )
    await _durable(written)  # (the worker writes the list: nothing told before)
    if outcome.gone:
        view.found_gone.update(outcome.gone)  # (told as expunged, never as still there)
    # The store hands back the very info the client was told for a message it left as it
    # was (most of STORE 1:* +FLAGS (\Seen) on a mostly read mailbox): only the others
    # change the view, and only they can need an answer - unless .SILENT or UNCHANGEDSINCE,
    # which answer by other rules below.
    after = outcome.infos
    moved = {u: info for u, info in after.items() if info is not told[u]}
    # new keywords (ours or another session's) are announced before a FETCH shows them
    session.write_all(view.update(moved))
    answerable = after if request.silent or conditional else moved
    refused = set(outcome.modified)
    expect = _expected_flags(request.mode, frozenset(letters), frozenset(keywords))
    condstore = session.condstore
    out = session.batched()
    for seq, u in pairs:
        info = answerable.get(u)
        if info is None or u in refused:
            continue
        old = told[u]
        # RFC 3501 6.4.6 says STORE "normally" returns the updated flags in an untagged
        # FETCH; like Dovecot and Cyrus we answer only for messages whose flags differ from
        # what the client was last told (STORE 1:* +FLAGS (\Seen) on a mostly read
        # mailbox answers the few it changed). Unchanged messages need no answer: their
        # flags are what the client already has, and what it asked for.
        if request.silent:
            # .SILENT: the client derives the result itself, unless another session
            # changed the flags meanwhile (RFC 3501 6.4.6 note: report that change).
            show_flags = (info.flags, info.keywords) != expect(old.flags, old.keywords)
        else:
            show_flags = info.flags != old.flags or info.keywords != old.keywords
        # RFC 7162 3.2: with CONDSTORE a message the STORE changed is reported, even when
        # .SILENT, with its new MODSEQ; with UNCHANGEDSINCE every message that passed is
        # (the client learns which mod-sequence its change holds).
        show_modseq = condstore and (info.modseq != old.modseq or conditional)
        if not (show_flags or show_modseq):
            continue
        parts = [b"UID %d" % u] if uid else []
        if show_flags:
            parts.append(b"FLAGS " + view.flag_list(u))
        if condstore:
            parts.append(b"MODSEQ (%d)" % info.modseq)
        out.write(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts)))
    out.flush()
    if refused:
        numbers = sorted(refused) if uid else sorted(view.seq_of(u) or 0 for u in refused)
        return Done("OK", "Conditional STORE failed", f"MODIFIED {compress(numbers)}")
    return Done("OK", "STORE completed")


async def _copy(
    session: IMAPServerProtocol, items: list[Item], *, uid: bool, move: bool, since: int
) -> Done:
    A.expect_count(items, 2)
    view = session.selected_view()
    sequence = A.sequence_set(items[0])
    name = A.mailbox(items[1])
    verb = "MOVE" if move else "COPY"
    if move and view.readonly:
        return Done("NO", "Mailbox is read-only", "READ-ONLY")
    pairs = view.select(sequence, uid=uid)
    try:
        target = session.box().folder(name)
    except FolderNotFound:
        return Done("NO", "Mailbox does not exist", "TRYCREATE")
    uids = [u for _, u in pairs]
    # From the look _settle_for_copy made (see there).
    links = view.folder.link_copies(uids, target, since) if uids else []
    # The copies are in the target now: COPY/MOVE is not run again (it would copy twice),
    # so a busy target lock (another process) is waited for here, on reactor timers.
    copied: list[tuple[int, int]] | None = []
    validity = 0
    try:
        if links:
            copied, written, validity = await session.unlocked(lambda: _adopt(target, links))
            await _durable(written)
    except LockBusy:
        if len(links) < len(uids) and not uid and not move:
            raise  # EXPUNGEISSUED below needs the copies' UIDs to take them back
        # Stored durably, only their UIDs are unknown (the lock stayed busy past
        # lock_timeout): answer without COPYUID (RFC 4315 allows it), as APPEND does -
        # once the links are durable (adopt_copies fsyncs them first: it did not get to).
        dirs = target.unsynced_links()
        marked = target.links_marked(dirs)
        await session.factory.run(_fsync_dirs, dirs)
        target.links_durable(marked)
        copied = None
    code = None
    if copied:
        source = compress([s for s, _ in copied])
        dest = compress([d for _, d in copied])
        code = f"COPYUID {validity} {source} {dest}"
    if move:
        if code:
            # RFC 6851 4.3: COPYUID goes in an untagged OK before the EXPUNGEs.
            session.write(utf8(f"* OK [{code}] Moved\r\n"))
        moved = [s for s, _ in links]
        if moved:
            _, written = _deferring(view.folder, lambda: view.folder.expunge(moved, by=view))
            await _durable(written)
        return Done("OK", "MOVE completed")
    if copied is not None and len(copied) < len(uids) and not uid:
        # RFC 3501 6.4.7: a COPY that fails leaves the destination as it was.
        if copied:
            target.expunge([d for _, d in copied])
        return Done("NO", "Some messages were expunged meanwhile", "EXPUNGEISSUED")
    return Done("OK", f"{verb} completed", code)


def _adopt(
    target: Folder, links: list[tuple[int, str]]
) -> tuple[list[tuple[int, int]], Written, int]:
    """The copies' UIDs, the writes that made them durable, and the target's UIDVALIDITY;
    LockBusy: run again."""
    copied, written = _deferring(target, target.adopt_copies, links)
    try:
        # Named by our own write (in flight, waited for before the answer): its list's
        # UIDVALIDITY, without a look that would meet that write (Flushing) and run again.
        validity = target.listed_uidvalidity() if written else None
        if validity is None:
            validity = target.sync().uidvalidity
        return copied, written, validity
    except BaseException:
        # Run again: a write of these that failed is written again by the next try (the
        # list is read anew); nobody waits for these Deferreds.
        unwaited(written)
        raise


def _fsync_dirs(dirs: list[str]) -> None:
    """Worker thread: the directories' entries made durable."""
    for d in dirs:
        fsync_dir(d)


def _expected_flags(
    mode: str, letters: frozenset[str], keywords: frozenset[str]
) -> Callable[[frozenset[str], frozenset[str]], tuple[frozenset[str], frozenset[str]]]:
    """What a client expects a STORE to leave, from the flags it knew (``.SILENT``)."""
    if mode == "set":
        return lambda f, k: (letters, keywords)
    if mode == "add":
        return lambda f, k: (f | letters, k | keywords)
    return lambda f, k: (f - letters, k - keywords)
