"""Commands on mailboxes: SELECT and EXAMINE (with CONDSTORE/QRESYNC parameters, RFC 7162),
CHECK, CLOSE, UNSELECT (RFC 3691), CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB,
NAMESPACE (RFC 2342, one personal namespace) and STATUS.

The hierarchy delimiter is ".", as in the Maildir++ folder names of the store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailhub.imap import arguments as A
from mailhub.imap import render
from mailhub.imap.dispatch import AUTHED, SELECTED, CommandTable, Done, utf8
from mailhub.imap.parser import Item, ParseError
from mailhub.imap.sequence import SequenceSet
from mailhub.imap.session_commands import enable_condstore
from mailhub.imap.view import View
from mailhub.store import Folder, FolderError, FolderExists, FolderNotFound, Mailbox
from mailhub.store.errors import InvalidName, StoreError
from mailhub.store.maildir import unwaited
from mailhub.store.names import INBOX, normalise_folder

if TYPE_CHECKING:
    from mailhub.imap.protocol import IMAPServerProtocol

COMMANDS = CommandTable()


@COMMANDS.command("SELECT", AUTHED)
async def select(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    return await _select(session, items, readonly=False)


@COMMANDS.command("EXAMINE", AUTHED)
async def examine(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    return await _select(session, items, readonly=True)


async def _select(session: IMAPServerProtocol, items: list[Item], *, readonly: bool) -> Done:
    A.expect_count(items, 1, 2)
    name = A.mailbox(items[0])
    qresync: A.QresyncParams | None = None
    if len(items) == 2:
        condstore, qresync = A.select_params(items[1])
        if qresync is not None and not session.qresync:
            raise ParseError("QRESYNC parameter needs ENABLE QRESYNC first")  # 3.2.5
        if condstore:
            session.condstore = True
    if session.view is not None:
        # RFC 7162 3.2.11: the previous mailbox is closed (tells apart its late responses).
        session.write(b"* OK [CLOSED] Previous mailbox closed\r\n")
    # RFC 3501 6.3.1: a failed SELECT leaves no mailbox selected.
    session.deselect()
    try:
        folder = session.box().folder(name)
    except FolderNotFound:
        return Done("NO", "Mailbox does not exist", "NONEXISTENT", sync=False)
    # New mail gets its UIDs from the store's worker first (the reactor never writes the
    # UID list): what SELECT reports is then complete and durable.
    await folder.settled()
    view = View(folder, readonly=readonly, assign=False)
    view.condstore = session.condstore
    view.qresync = session.qresync
    w = session.write
    session.write_all(view.flags_responses())
    w(b"* %d EXISTS\r\n" % view.exists)
    w(b"* %d RECENT\r\n" % len(view.recent))
    for seq, uid in enumerate(view.uids, 1):
        if "S" not in view.infos[uid].flags:
            w(b"* OK [UNSEEN %d] First unseen\r\n" % seq)
            break
    w(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % view.uidvalidity)
    w(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % view.uidnext)
    w(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % view.highestmodseq)
    if qresync is not None and qresync.uidvalidity == view.uidvalidity:
        _resync(session, view, qresync)
    session.select_view(view)
    mode = "READ-ONLY" if readonly else "READ-WRITE"
    return Done("OK", f"{'EXAMINE' if readonly else 'SELECT'} completed", mode, sync=False)


def _resync(session: IMAPServerProtocol, view: View, known: A.QresyncParams) -> None:
    """RFC 7162 3.2.5.1: what changed since the client's mod-sequence: the expunged UIDs
    (VANISHED (EARLIER)), then the flags of messages changed since."""
    scope = known.known_uids or SequenceSet.parse("1:*")
    vanished = view.vanished(scope)
    if vanished:
        session.write(b"* VANISHED (EARLIER) %s\r\n" % vanished.encode())
    out = session.batched()
    top = view.uids[-1] if view.uids else 0
    for seq, uid in enumerate(view.uids, 1):
        info = view.infos[uid]
        if info.modseq > known.modseq and scope.contains(uid, top):
            out.write(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n"
                      % (seq, uid, view.flag_list(uid), info.modseq))  # fmt: skip
    out.flush()


@COMMANDS.command("CREATE", AUTHED)
async def create(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    A.expect_count(items, 1)
    # RFC 3501 6.3.3: a trailing delimiter only says children will follow.
    name = A.mailbox(items[0]).rstrip(".")
    if not name or name.upper() == INBOX:
        return Done("NO", "Cannot create that mailbox", "ALREADYEXISTS")
    refused = _refuse_new_name(name)
    if refused is not None:
        return refused
    box = session.box()
    if box.has_folder(name):
        return Done("NO", "Mailbox already exists", "ALREADYEXISTS")
    try:
        _create_folder(box, name)
    except (FolderExists, FolderError) as e:
        return _refusal(e)
    return Done("OK", "CREATE completed")


def _refusal(e: StoreError, *, exists: str = "Mailbox already exists") -> Done:
    """The tagged NO for a folder operation the store refused, with RFC 5530's code."""
    if isinstance(e, FolderNotFound):
        return Done("NO", "Mailbox does not exist", "NONEXISTENT")
    if isinstance(e, FolderExists):
        return Done("NO", exists, "ALREADYEXISTS")
    return Done("NO", str(e), "CANNOT")


def _create_folder(box: Mailbox, name: str) -> Folder:
    """Create ``name`` and its missing superiors (RFC 3501 6.3.3)."""
    normalise_folder(name)  # InvalidName before any superior is made: nothing left behind
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if not box.has_folder(parent):
            try:
                box.create_folder(parent)
            except FolderExists:
                pass
    return box.create_folder(name)


@COMMANDS.command("DELETE", AUTHED)
async def delete(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    A.expect_count(items, 1)
    name = A.mailbox(items[0])
    if name == INBOX:
        return Done("NO", "INBOX cannot be deleted", "CANNOT")
    if session.view is not None and session.view.folder.name == name:
        session.deselect()
    try:
        session.box().delete_folder(name)
    except (FolderNotFound, FolderError) as e:
        return _refusal(e)
    return Done("OK", "DELETE completed")


@COMMANDS.command("RENAME", AUTHED)
async def rename(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    A.expect_count(items, 2)
    old, new = A.mailbox(items[0]), A.mailbox(items[1]).rstrip(".")
    box = session.box()
    if box.has_folder(new) or new.upper() == INBOX:
        return Done("NO", "Target mailbox exists", "ALREADYEXISTS")
    refused = _refuse_new_name(new)
    if refused is not None:
        return refused
    if old == INBOX:
        return _rename_inbox(session, new)
    try:
        box.rename_folder(old, new)
    except (FolderNotFound, FolderExists, FolderError) as e:
        return _refusal(e, exists="Target mailbox exists")
    return Done("OK", "RENAME completed")


def _rename_inbox(session: IMAPServerProtocol, new: str) -> Done:
    """RFC 3501 6.3.5: renaming INBOX moves all its messages to a new mailbox of that name
    and leaves INBOX empty (it stays, as do folders named under it). Copied first (hard
    links, made durable), then expunged from INBOX: a crash between leaves copies, never
    a loss. Mail delivered meanwhile stays in INBOX."""
    try:
        target = _create_folder(session.box(), new)
    except (FolderExists, FolderError) as e:
        return _refusal(e, exists="Target mailbox exists")
    inbox = session.box().folder(INBOX)
    uids = [m.uid for m in inbox.sync().messages]
    moved = [source for source, _ in inbox.copy_many(uids, target)] if uids else []
    if moved:
        inbox.expunge(moved)
    return Done("OK", "RENAME completed")


@COMMANDS.command("SUBSCRIBE", AUTHED)
async def subscribe(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    A.expect_count(items, 1)
    session.box().subscribe(A.mailbox(items[0]))
    return Done("OK", "SUBSCRIBE completed")


@COMMANDS.command("UNSUBSCRIBE", AUTHED)
async def unsubscribe(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    A.expect_count(items, 1)
    session.box().unsubscribe(A.mailbox(items[0]))
    return Done("OK", "UNSUBSCRIBE completed")


@COMMANDS.command("LIST", AUTHED)
async def list_mailboxes(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    return _list(session, items, "LIST")


@COMMANDS.command("LSUB", AUTHED)
async def list_subscribed(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    return _list(session, items, "LSUB")


def _list(session: IMAPServerProtocol, items: list[Item], verb: str) -> Done:
    A.expect_count(items, 2)
    pattern_raw = A.astring(items[1], "pattern")
    try:
        reference = A.mailbox(items[0]) if items[0] != b"" else ""
        pattern = A.mailbox(pattern_raw) if pattern_raw else ""
    except InvalidName:
        # not modified UTF-7 (or UTF-8): no mailbox has such a name, so nothing matches
        return Done("OK", f"{verb} completed")
    if not pattern:
        # RFC 3501 6.3.8: the delimiter and root name.
        session.write(utf8(f'* {verb} (\\Noselect) "." ""\r\n'))
        return Done("OK", f"{verb} completed")
    box = session.box()
    existing = box.list_folders()
    exists = set(existing)
    names = set(existing)
    for name in existing:  # parents missing on disk are shown as \Noselect
        parts = name.split(".")
        names.update(".".join(parts[:i]) for i in range(1, len(parts)))
    subscribed = set(box.subscriptions()) if verb == "LSUB" else set()
    matcher = A.list_pattern_matcher(reference, pattern)
    inbox_matcher = A.list_pattern_matcher(reference.upper(), pattern.upper())
    if verb == "LSUB":
        # RFC 3501 6.3.9: an unsubscribed parent shows (\Noselect) only when the pattern
        # matches it but not its subscribed children ("%" while "*" lists them).
        parents = {n for n in names if any(s.startswith(n + ".") for s in subscribed)}
        names = subscribed | {
            p for p in parents - subscribed
            if not any(s.startswith(p + ".") and matcher.match(s) for s in subscribed)
        }  # fmt: skip
    children = {n.rsplit(".", 1)[0] for n in names if "." in n}
    for name in sorted(names, key=lambda n: (n != INBOX, n)):
        hit = inbox_matcher.match(name) if name == INBOX else matcher.match(name)
        if not hit:
            continue
        attrs: list[str] = []
        if name not in exists:
            attrs.append("\\Noselect")
        if verb == "LSUB" and name not in subscribed:
            attrs = ["\\Noselect"]
        elif name in children:
            attrs.append("\\HasChildren")
        else:
            attrs.append("\\HasNoChildren")
        special = box.special_use(name) if name in exists and verb == "LIST" else None
        if special:
            attrs.append(special)
        line = b'* %s (%s) "." %s\r\n' % (
            utf8(verb),
            utf8(" ".join(attrs)),
            render.mailbox_name(name),
        )
        session.write(line)
    return Done("OK", f"{verb} completed")


@COMMANDS.command("NAMESPACE", AUTHED)
async def namespace(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    session.write(b'* NAMESPACE (("" ".")) NIL NIL\r\n')
    return Done("OK", "NAMESPACE completed")


@COMMANDS.command("STATUS", AUTHED)
async def status(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    A.expect_count(items, 2)
    name = A.mailbox(items[0])
    wanted = items[1]
    if not isinstance(wanted, list) or not wanted:
        raise ParseError("STATUS needs a list of items")
    names = [A.atom(w, "status item").upper() for w in wanted]
    try:
        folder = session.box().folder(name)
    except FolderNotFound:
        return Done("NO", "Mailbox does not exist", "NONEXISTENT")
    state = folder.sync()
    values = []
    for n in names:
        if n == "MESSAGES":
            v = state.count
        elif n == "RECENT":
            v = sum(1 for m in state.messages if m.recent)
        elif n == "UIDNEXT":
            v = state.uidnext
        elif n == "UIDVALIDITY":
            v = state.uidvalidity
        elif n == "UNSEEN":
            v = sum(1 for m in state.messages if "S" not in m.flags)
        elif n == "HIGHESTMODSEQ":
            enable_condstore(session)
            v = state.highestmodseq
        elif n == "APPENDLIMIT":
            v = session.factory.limits.max_message_size
        elif n == "SIZE":
            v = state.total_size
        else:
            raise ParseError(f"unknown STATUS item {n}")
        values.append(f"{n} {v}")
    session.write(b"* STATUS " + render.mailbox_name(name) + utf8(f" ({' '.join(values)})\r\n"))
    return Done("OK", "STATUS completed")


@COMMANDS.command("CHECK", (SELECTED,))
async def check(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    return Done("OK", "CHECK completed")


@COMMANDS.command("CLOSE", (SELECTED,))
async def close(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    view = session.selected_view()
    if not view.readonly:
        # RFC 3501 6.4.2: expunge silently, no EXPUNGE responses.
        deleted = [uid for uid in view.uids if "T" in view.infos[uid].flags]
        if deleted:
            # (the list written by the store's worker; answered once it is on disk)
            _, written = view.folder.deferred(lambda: view.folder.expunge(deleted, by=view))
            try:
                for d in written:
                    await d
            finally:
                unwaited(written)  # (those after a failure: logged by the store)
    session.deselect()
    return Done("OK", "CLOSE completed", sync=False)


@COMMANDS.command("UNSELECT", (SELECTED,))
async def unselect(session: IMAPServerProtocol, tag: str, items: list[Item]) -> Done:
    session.deselect()
    return Done("OK", "UNSELECT completed", sync=False)


def _refuse_new_name(name: str) -> Done | None:
    """Names a client may not give a new mailbox: ``%`` and ``*`` are LIST wildcards (RFC 3501
    6.3.8), so such a mailbox could never be listed on its own (Dovecot refuses them too)."""
    if "%" in name or "*" in name:
        return Done("NO", "Mailbox names cannot contain the LIST wildcards % and *", "CANNOT")
    return None
