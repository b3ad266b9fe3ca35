"""One session's view of its selected folder: sequence numbers, flags as last told, \\Recent.

Every session keeps its own snapshot (UIDs in sequence order and the ``MessageInfo`` it last
reported) and reconciles it with ``Folder.sync()`` (two stat() calls when nothing changed).
What changed since is turned into untagged responses (RFC 3501 7.3.1, 7.4.1, 7.4.2):

- messages that others expunged -> ``* n EXPUNGE`` (highest first, so no number shifts under
  another), but only when the command allows it (RFC 3501 7.4.1: not during FETCH, STORE or
  SEARCH; their UID forms are fine). Until then they stay in the view as "ghosts", keeping
  every sequence number right, and their data can still be fetched (RFC 2180 4.1.1: the
  view is a reader of its folder, ``Folder.add_reader``, so the store keeps their files);
- new messages -> ``* n EXISTS`` and ``* n RECENT``;
- flag changes by others -> ``* n FETCH (FLAGS (...) UID u)``, with ``MODSEQ`` once CONDSTORE
  is enabled (RFC 7162 3.2);
- a keyword the session was never told of (set by another session, or by this session's
  STORE) -> ``* FLAGS`` and ``* OK [PERMANENTFLAGS]`` again, before the first FETCH that
  carries it (RFC 3501 7.2.6: a client may reject or ignore flags it was not announced).

\\Recent (RFC 3501 2.3.2) belongs to exactly one session: the one whose SELECT
(``sync_taking_recent``) or later ``take_recent`` moved the message out of new/. EXAMINE takes
nothing; it shows as recent what is still in new/.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from operator import attrgetter

from mailhub.imap import render
from mailhub.imap.sequence import SequenceSet, compress
from mailhub.store import Folder, FolderState, MessageInfo, UidValidityChanged

# IMAP system flags <-> Maildir info letters (maildir.html); \Recent is session state.
FLAG_TO_LETTER = {"\\Seen": "S", "\\Answered": "R", "\\Flagged": "F", "\\Deleted": "T",
                  "\\Draft": "D"}  # fmt: skip
LETTER_TO_FLAG = {v: k for k, v in FLAG_TO_LETTER.items()}
_LETTER_ORDER = "SRFTD"
PERMANENT_FLAGS = tuple(FLAG_TO_LETTER)
_FLAG_LISTS_KEPT = 4096  # distinct rendered flag lists a view keeps

# The commands after which a session looks at the disk in full (``Folder.sync``): NOOP and
# CHECK are how a client asks for news (RFC 3501 6.1.2, 6.4.1), SELECT/EXAMINE, STATUS and
# IDLE (its own looks) likewise. Every other command's look may be a fast one
# (``fast_look``): RFC 3501 5.2 and 7 let the server choose when it reports changes, and the
# store lists a young directory again only if its inotify witness saw it change (this
# host's changes by any process; without a witness - no inotify, a file system shared by
# several hosts - a fast look is a full one). Dovecot does the same (its FAST sync).
FULL_LOOK = frozenset(("NOOP", "CHECK", "SELECT", "EXAMINE", "STATUS", "IDLE"))


def fast_look(command: str) -> bool:
    """May the look after ``command`` (its name, upper case; "UID" for UID commands) be fast?"""
    return command not in FULL_LOOK


def imap_flags(info: MessageInfo, recent: bool = False) -> list[str]:
    flags = [LETTER_TO_FLAG[c] for c in _LETTER_ORDER if c in info.flags]
    flags.extend(sorted(info.keywords))
    if recent:
        flags.append("\\Recent")
    return flags


def split_flags(flags: Iterable[str]) -> tuple[set[str], set[str]]:
    """IMAP flag names -> (Maildir letters, keywords)."""
    letters, keywords = set(), set()
    for f in flags:
        letter = FLAG_TO_LETTER.get(f)
        if letter is not None:
            letters.add(letter)
        else:
            keywords.add(f)
    return letters, keywords


# UidValidityChanged (the store's, imported from here too): the folder's UIDVALIDITY changed
# under the session, which cannot continue (RFC 3501 2.3.1.1).


class BadSequence(ValueError):
    """A message sequence number beyond the mailbox (RFC 9051 6.4.4: tagged BAD)."""


_uid_of = attrgetter("uid")
_keywords_of = attrgetter("keywords")


def _same(a: MessageInfo, b: MessageInfo) -> bool:
    return a is b or (a.flags == b.flags and a.keywords == b.keywords and a.modseq == b.modseq)


class View:
    """The selected folder as this session sees it (see the module docstring)."""

    def __init__(self, folder: Folder, *, readonly: bool, assign: bool = True) -> None:
        self._folder = folder
        self.readonly = readonly
        self.condstore = False  # set by the session when CONDSTORE is enabled
        self.qresync = False  # RFC 7162 3.2.10: expunges are then told as VANISHED
        self.recent: set[int] = set()
        self._flag_lists: dict[tuple[frozenset[str], frozenset[str], bool], bytes] = {}
        self._flag_sets: dict[tuple[frozenset[str], frozenset[str], bool], frozenset[str]] = {}
        # assign=False: UIDs for new mail left to the store's worker (Folder.sync). A fast
        # look: SELECT's full one is Folder.settled()'s, just before (mailbox_commands).
        if readonly:
            state = folder.sync(assign=assign, fast=True)
            self.recent.update(m.uid for m in state.messages if m.recent)
        else:
            state, taken = folder.sync_taking_recent(assign=assign, fast=True)
            self.recent.update(taken)
        self.uidvalidity = state.uidvalidity
        self.uids: list[int] = list(map(_uid_of, state.messages))  # ascending (FolderState)
        self.infos: dict[int, MessageInfo] = dict(zip(self.uids, state.messages, strict=True))
        self._state: FolderState = state
        self.uidnext = state.uidnext
        self.highestmodseq = state.highestmodseq
        # the keywords told in FLAGS: SELECT's list, grown as new ones appear (never shrunk)
        self.announced: set[str] = set(self.keywords_in_use())
        # Messages this session's own commands found gone (STORE, FETCH), not yet told: no
        # look may answer from a state that still has them (``_on_disk``).
        self.found_gone: set[int] = set()
        # Only now (a look above may meet a busy lock and leave this view half made; the
        # expunges of others ask a reader what it knows): one reactor turn since the look.
        folder.add_reader(self)

    def knows(self, uid: int) -> bool:
        """``Reader``: the client still counts ``uid`` as present (told of no EXPUNGE)."""
        return uid in self.infos

    def close(self) -> None:
        """The session leaves the folder: the store need not keep expunged messages for it."""
        self._folder.forget(self)

    @property
    def folder(self) -> Folder:
        """The folder, to read or change the session's messages by UID (every command's way
        to them). UidValidityChanged once the store numbers them by another UIDVALIDITY (a
        lost UID list numbered anew by any session's look, even one whose new list is still
        being written): the session's UIDs and sequence numbers would name other messages
        (RFC 3501 2.3.1.1), so it ends with BYE (protocol.py), having read or changed none."""
        folder = self._folder
        if folder.uidvalidity != self.uidvalidity:
            raise UidValidityChanged(folder.name)
        return folder

    def _after_take(self, state: FolderState) -> FolderState:
        """The folder's state after our ``take_recent`` if it is ``state`` with those renames
        applied (the folder follows its own renames), else ``state`` itself.

        Not a second ``sync()``: it would read both directories again (our renames make their
        mtimes untrustworthy) only to find the same files. A delivery that lands meanwhile is
        not lost: the next ``sync()`` reads the directories and reports it (EXISTS), because
        the view keeps a state holding exactly the messages in ``self.uids``."""
        after = self.folder.current_state()
        if (
            after is not None
            and after.uidvalidity == state.uidvalidity
            and after.uidnext == state.uidnext
            and after.count == state.count
        ):
            return after
        return state

    # -- numbers --------------------------------------------------------------------------

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        i = bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def select(self, sequence: SequenceSet, *, uid: bool) -> list[tuple[int, int]]:
        """``(seq, uid)`` pairs of a sequence set or UID set, in ascending order
        (UidValidityChanged as for ``folder``: the command must not go on)."""
        if self._folder.uidvalidity != self.uidvalidity:
            raise UidValidityChanged(self._folder.name)
        uids = self.uids
        out: list[tuple[int, int]] = []
        if uid:
            largest = uids[-1] if uids else 0
            for low, high in sequence.ranges(largest):
                i = bisect_left(uids, low)
                j = bisect_right(uids, high)
                out.extend(zip(range(i + 1, j + 1), uids[i:j], strict=True))
            return out
        count = len(uids)
        for low, high in sequence.ranges(count):
            if high > count:
                raise BadSequence(f"no message {high} (mailbox has {count})")
            out.extend(zip(range(low, high + 1), uids[low - 1 : high], strict=True))
        return out

    def vanished(self, sequence: SequenceSet) -> str:
        """The UIDs of ``sequence`` (clamped to those ever given out) not in the view, as a
        uid-set: RFC 7162 3.2.5.1 and 3.2.6 VANISHED (EARLIER). Without a log of expunges
        this may name UIDs expunged before the client's mod-sequence too, which the RFC
        allows (the client ignores UIDs it does not know)."""
        uids = self.uids
        top = self.uidnext - 1
        parts: list[str] = []
        for low, high in sequence.ranges(top):
            high = min(high, top)
            at = low
            i = bisect_left(uids, low)
            while at <= high:
                present = uids[i] if i < len(uids) else None
                if present is None or present > high:
                    parts.append(str(at) if at == high else f"{at}:{high}")
                    break
                if present > at:
                    parts.append(str(at) if at == present - 1 else f"{at}:{present - 1}")
                at = present + 1
                i += 1
        return ",".join(parts)

    def info(self, uid: int) -> MessageInfo:
        return self.infos[uid]

    def gone(self, uid: int) -> bool:
        """Expunged by someone else, not yet announced to this session."""
        return uid not in self._state.by_uid

    def present(self, uids: list[int]) -> list[int]:
        """``uids`` without the ``gone`` ones (one look-up each, no call)."""
        here = self._state.by_uid
        return [u for u in uids if u in here]

    def keywords_in_use(self) -> frozenset[str]:
        """Every keyword some message has (SELECT's FLAGS, RFC 3501 7.2.6)."""
        return frozenset().union(*map(_keywords_of, self.infos.values()))

    def flags_of(self, uid: int) -> list[str]:
        return imap_flags(self.infos[uid], uid in self.recent)

    def flag_set(self, uid: int) -> frozenset[str]:
        """``flags_of`` as a frozenset (for SEARCH), shared between messages with equal flags."""
        info = self.infos[uid]
        key = (info.flags, info.keywords, uid in self.recent)
        found = self._flag_sets.get(key)
        if found is None:
            if len(self._flag_sets) >= _FLAG_LISTS_KEPT:
                self._flag_sets.clear()
            found = self._flag_sets[key] = frozenset(imap_flags(info, key[2]))
        return found

    def flag_list(self, uid: int) -> bytes:
        """``flags_of`` rendered; a mailbox has few distinct flag sets, each rendered once."""
        info = self.infos[uid]
        key = (info.flags, info.keywords, uid in self.recent)
        rendered = self._flag_lists.get(key)
        if rendered is None:
            if len(self._flag_lists) >= _FLAG_LISTS_KEPT:
                self._flag_lists.clear()
            rendered = self._flag_lists[key] = render.flag_list(imap_flags(info, key[2]))
        return rendered

    # -- FLAGS (RFC 3501 7.2.6) -------------------------------------------------------------

    def flags_responses(self) -> list[bytes]:
        """``* FLAGS`` and ``* OK [PERMANENTFLAGS ...]`` for the keywords announced so far."""
        flags = [*PERMANENT_FLAGS, *sorted(self.announced)]
        if self.readonly:
            permanent = b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n"
        else:  # \\*: new keywords may be created (RFC 3501 7.1)
            allowed = render.flag_list([*flags, "\\*"])
            permanent = b"* OK [PERMANENTFLAGS " + allowed + b"] Flags permitted\r\n"
        return [b"* FLAGS " + render.flag_list(flags) + b"\r\n", permanent]

    def announce(self, infos: Iterable[MessageInfo]) -> list[bytes]:
        """The FLAGS responses again if ``infos`` carry keywords never announced to this
        session, else nothing: to be written before any FETCH that shows them."""
        announced = self.announced
        fresh: set[str] = set()
        for info in infos:
            keywords = info.keywords
            if keywords and not keywords <= announced:
                fresh.update(keywords - announced)
        if not fresh:
            return []
        announced.update(fresh)
        return self.flags_responses()

    # -- updates --------------------------------------------------------------------------

    def update(self, infos: dict[int, MessageInfo]) -> list[bytes]:
        """Take the session's own flag changes (STORE, FETCH setting \\Seen) into the
        snapshot; the FLAGS responses to write first if they brought new keywords."""
        taken = []
        for uid, info in infos.items():
            if uid in self.infos:
                self.infos[uid] = info
                taken.append(info)
                if info.modseq > self.highestmodseq:
                    self.highestmodseq = info.modseq
        return self.announce(taken)

    def fetch_line(self, seq: int, uid: int, *, with_uid: bool = True) -> bytes:
        parts = [b"FLAGS " + self.flag_list(uid)]
        if with_uid:
            parts.insert(0, b"UID %d" % uid)
        if self.condstore:
            parts.append(b"MODSEQ (%d)" % self.infos[uid].modseq)
        return b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts))

    def _on_disk(self) -> FolderState | None:
        """``Folder.on_disk`` for this session, unless it holds a message this session
        already saw gone (a ghost: its expunge found before the list on disk has it)."""
        state = self.folder.on_disk(self, self.highestmodseq, self.uidnext)
        if state is None:
            return None
        here = state.by_uid
        if self.found_gone:
            self.found_gone.intersection_update(self.infos)
            if not self.found_gone.isdisjoint(here):
                return None
        if state is self._state:
            return state
        seen = self._state.by_uid
        for uid in self.uids:
            if uid not in seen and uid in here:
                return None
        return state

    def sync(
        self,
        *,
        allow_expunge: bool,
        just_looked: bool = False,
        assign: bool = True,
        since: int | None = None,
        fast: bool = False,
    ) -> list[bytes]:
        """Reconcile with the folder; the untagged responses that tell the client.

        ``just_looked``: the store's change feed has just looked at the folder (its listener is
        running), so the folder's state as this process last saw it is up to date and the disk
        need not be looked at again: 1,000 sessions watching one folder then cost one scan of
        it per change, not 1,000 (each a listing of new/ and cur/ while their mtimes are too
        young to trust). A change made after the feed's look wakes the session again.
        ``assign=False``: new mail's UIDs are left to the store's worker (``Folder.sync``).
        ``since``: the tick (``mailhub.store.core.tick``) the command being answered started
        at; a look at the folder begun after it (by the command itself, another session or
        the feed) is as good as a new one: with ten sessions on one folder that saves most
        listings of new/ and cur/ (young mtimes are never trusted). ``fast``: the look may
        trust the store's inotify witness for young directories (``fast_look``)."""
        if just_looked:
            state = self.folder.current_state()
        elif since is not None:
            state = self.folder.looked_since(since)
        else:
            state = None
        if state is None:
            # Another session's change is being written: what is on disk, not a wait (the
            # change is told once written; never a state older than this session was told).
            state = self._on_disk()
        if state is None:
            state = self.folder.sync(assign=assign, fast=fast)
        if state.uidvalidity != self.uidvalidity:
            raise UidValidityChanged(self._folder.name)
        previous, self._state = self._state, state
        out: list[bytes] = []
        if state is previous and not (allow_expunge and len(self.uids) != state.count):
            return out
        by_uid = state.by_uid
        if allow_expunge:
            gone = [i for i, uid in enumerate(self.uids) if uid not in by_uid]
            if gone:
                if self.qresync:
                    vanished = compress([self.uids[i] for i in gone])
                    out.append(b"* VANISHED %s\r\n" % vanished.encode())
                for i in reversed(gone):
                    if not self.qresync:
                        out.append(b"* %d EXPUNGE\r\n" % (i + 1))
                    uid = self.uids[i]
                    del self.infos[uid]
                    self.recent.discard(uid)
                keep = set(gone)
                told = [self.uids[i] for i in gone]
                self.uids = [u for i, u in enumerate(self.uids) if i not in keep]
                self.folder.forget(self, told)
        last = self.uids[-1] if self.uids else 0
        new: list[MessageInfo] = []
        changed: list[int] = []
        infos = self.infos
        for m in state.messages:
            old = infos.get(m.uid)
            if old is None:
                if m.uid > last:
                    new.append(m)
                continue
            if old is not m and not _same(old, m):  # (the same object: no call)
                infos[m.uid] = m
                if old.flags != m.flags or old.keywords != m.keywords or self.condstore:
                    changed.append(m.uid)
        # new keywords are told before the FETCH (or the EXISTS whose FETCH) carries them
        out.extend(self.announce([*(infos[u] for u in changed), *new]))
        for uid in changed:
            seq = self.seq_of(uid)
            if seq is not None:
                out.append(self.fetch_line(seq, uid))
        if new:
            new.sort(key=lambda m: m.uid)
            for m in new:
                self.uids.append(m.uid)
                infos[m.uid] = m
            fresh = [m.uid for m in new if m.recent]
            if fresh:
                if self.readonly:
                    self.recent.update(fresh)
                else:
                    self.recent.update(self.folder.take_recent(fresh))
                    self._state = self._after_take(state)
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            out.append(b"* %d RECENT\r\n" % len(self.recent))
        self.uidnext = max(self.uidnext, state.uidnext)
        self.highestmodseq = max(self.highestmodseq, state.highestmodseq)
        return out
