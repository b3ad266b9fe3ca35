"""THREAD (RFC 5256 4): ORDEREDSUBJECT and REFERENCES over SortMessages, and the response.

Every walk over the trees is iterative: a References chain of 10,000 messages is a tree
10,000 deep, beyond Python's recursion limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from operator import attrgetter

from mailhub.imap.sort import SortMessage

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")


class Node:
    """A message of a thread, or a dummy (``message`` None) standing for a message that is
    referenced but not there."""

    __slots__ = ("children", "date", "message", "parent", "subject")

    def __init__(self, message: SortMessage | None = None) -> None:
        self.parent: Node | None = None
        # most messages have no replies: they share the empty tuple (a list per node would be
        # 10,000 more objects for the garbage collector to walk), _adopt makes the list
        self.children: list[Node] | tuple[()] = ()
        self.message: SortMessage | None = None
        if message is not None:
            self.fill(message)

    def fill(self, message: SortMessage) -> None:
        """The node is this message's (read its keys once: they are compared many times)."""
        self.message = message
        # (sent date, sequence number) in one int (sequence numbers are below 2**32, RFC 3501
        # 4.1): compared the same, and an int is no object for the garbage collector to track
        self.date = (message.sent << 32) + message.seq
        self.subject = message.subject

    def __repr__(self) -> str:
        return f"<Node {self.message.seq if self.message else 'dummy'}>"


# A thread of the answer: a tree of Nodes, or a message alone (no Node made for it)
Root = Node | SortMessage


def _adopt(parent: Node, child: Node) -> None:
    """Append ``child`` to ``parent``'s children (setting no parent link)."""
    if parent.children:
        parent.children.append(child)
    else:
        parent.children = [child]


def release(roots: Sequence[Root]) -> None:
    """Break the parent links of the trees (each one a reference cycle), so that they are
    freed when the command is done, not by a later garbage collection that walks them all."""
    todo = [r for r in roots if type(r) is Node]
    while todo:
        node = todo.pop()
        node.parent = None
        if node.children:
            todo.extend(node.children)


def _date_key(node: Node) -> int:
    """RFC 5256 2.2 sent date, ties broken by sequence number; a dummy sorts as its first
    child (whose children are sorted first)."""
    while node.message is None:
        node = node.children[0]  # type: ignore[misc]  # a dummy has children: a list
    return node.date


_DATE = attrgetter("date")
_SEQ = attrgetter("seq")


def _sort_by_date(nodes: list[Node], dummies: bool) -> None:
    """``nodes.sort(key=_date_key)``; without dummies among them (``dummies`` False) the
    key is each node's date, read in C."""
    nodes.sort(key=_date_key if dummies else _DATE)


def _subject(node: Node) -> tuple[str, bool]:
    """(base subject, reply or forward) of a thread: of its message, or for a dummy of its
    first child (RFC 5256 4 REFERENCES (5)(B)(i)); a dummy is never a reply."""
    if node.message is not None:
        return node.subject
    return _subject(node.children[0])[0], False  # type: ignore[misc]  # as in _date_key


# -- ORDEREDSUBJECT ------------------------------------------------------------------------------


def thread_orderedsubject(messages: list[SortMessage]) -> list[Node]:
    """RFC 5256 4 ORDEREDSUBJECT: messages grouped by base subject; in each group the first by
    sent date is the parent of all the others; groups in the order of their first message."""
    ordered = sorted(messages, key=lambda m: (m.base_subject, m.sent, m.seq))
    roots: list[Node] = []
    current: Node | None = None
    subject: str | None = None
    for m in ordered:
        node = Node(m)
        if current is not None and m.base_subject == subject:
            node.parent = current
            _adopt(current, node)
        else:
            current, subject = node, m.base_subject
            roots.append(node)
    roots.sort(key=_date_key)
    return roots


# -- REFERENCES ----------------------------------------------------------------------------------


def _is_ancestor(a: Node, b: Node | None) -> bool:
    """``a`` is ``b`` or one of its ancestors."""
    while b is not None:
        if b is a:
            return True
        b = b.parent
    return False


def _unlink(child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)  # type: ignore[union-attr]  # a parent has a list
        child.parent = None


def _link(parent: Node, child: Node) -> None:
    """Make ``child`` a child of ``parent`` unless that would make a loop."""
    if _is_ancestor(child, parent):
        return
    _unlink(child)
    child.parent = parent
    _adopt(parent, child)


def thread_references(messages: list[SortMessage]) -> list[Root]:
    """RFC 5256 4 REFERENCES, steps (1) to (6)."""
    for m in messages:
        if m.references:
            return list(_thread_references(messages))
    return _without_references(messages)


def _without_references(messages: list[SortMessage]) -> list[Root]:
    """thread_references of messages none of which has references (a mailbox without
    replies, or clients that send none): step (1) links nothing, whatever the Message-IDs
    (a duplicate only gets an ID of its own), so every message is a root of its own and (3)
    prunes nothing; (5) joins roots of the same base subject only, so Nodes are made for the
    messages sharing their base subject with another and threaded as the full algorithm
    does (4, 5, 6); every other message is a thread alone, placed by its date (4)."""
    subjects = [m.base_subject for m in messages]  # (the memo's, computed by the command)
    seen: set[str] = set()
    twice: set[str] = set()  # base subjects of more than one message
    for subject in subjects:
        if subject in seen:
            twice.add(subject)
        else:
            seen.add(subject)
    twice.discard("")  # (5) leaves messages without a subject alone
    roots: list[Root]
    if not twice:
        roots = list(messages)
    else:
        roots = []
        shared: list[Node] = []
        for m, subject in zip(messages, subjects, strict=True):
            if subject in twice:
                shared.append(Node(m))
            else:
                roots.append(m)
        _sort_by_date(shared, False)  # (4)
        grouped = _group_by_subject(shared)  # (5)
        for n in _descendants_first(grouped):  # (6)
            if len(n.children) > 1:
                n.children.sort(key=_date_key)
            if n.message is None:
                n.date = _date_key(n)
        roots.extend(grouped)
    # (4) and the last sort of (6): every root by its (sent date, sequence number), as
    # Node.date has it, read from a list of ints in C (no tuple per root: 10,000 objects
    # made here could set off a full garbage collection of the whole process)
    dates = [r.date if type(r) is Node else (r.sent << 32) + r.seq for r in roots]  # type: ignore[union-attr]  # a SortMessage
    return [roots[i] for i in sorted(range(len(roots)), key=dates.__getitem__)]


def _thread_references(messages: list[SortMessage]) -> list[Node]:
    """RFC 5256 4 REFERENCES, steps (1) to (6), for any messages."""
    by_id: dict[bytes, Node] = {}
    nodes: list[Node] = []  # every node, in the order made

    def node_of(message_id: bytes) -> Node:
        node = by_id.get(message_id)
        if node is None:
            node = by_id[message_id] = Node()  # a dummy until its message shows up
            nodes.append(node)
        return node

    # (1) link the messages by Message-ID and References / In-Reply-To, in mailbox order (the
    # first of several messages with one Message-ID keeps it)
    for m in sorted(messages, key=_SEQ):
        mid = m.message_id
        node = by_id.get(mid) if mid is not None else None
        if node is None and mid is not None:
            node = by_id[mid] = Node()
            nodes.append(node)
        elif node is None or node.message is not None:
            # (A) no Message-ID, or an earlier message has it: a unique ID of its own
            node = Node()
            nodes.append(node)
        # else the dummy made for an earlier reference
        node.fill(m)
        ids = m.references
        if not ids:  # (B) no reference, no parent (the usual message: done at once)
            if node.parent is not None:
                _unlink(node)
            continue
        refs = [node_of(r) for r in ids]
        # (A) link the references in order, keeping links made before, making no loops
        for parent, child in pairwise(refs):
            if child.parent is None:
                _link(parent, child)
        # (B) the last reference is the message's parent: a parent from another message's
        # (maybe truncated) References is replaced
        _unlink(node)
        _link(refs[-1], node)

    # (2) the root set: the nodes without a parent
    roots = [n for n in nodes if n.parent is None]
    # (3) prune dummies (there are none without references)
    if len(nodes) > len(messages):
        roots = _prune(roots)
    # (4) sort the root set by sent date (a dummy by its first child, sorted first)
    dummies = len(nodes) > len(messages)
    if dummies:
        for n in roots:
            if n.message is None and len(n.children) > 1:
                n.children.sort(key=_date_key)
    _sort_by_date(roots, dummies)
    # (5) gather threads with the same base subject
    roots = _group_by_subject(roots)
    # (6) sort every set of siblings by sent date, the deepest first
    for n in _descendants_first(roots):
        if len(n.children) > 1:
            n.children.sort(key=_date_key)
        if n.message is None:
            n.date = _date_key(n)  # its children are sorted: the roots sort by date in C
    roots.sort(key=_DATE)
    return roots


def _descendants_first(roots: list[Node]) -> list[Node]:
    """Every node, each after all of its descendants (a breadth-first list, reversed)."""
    out = list(roots)
    i = 0
    while i < len(out):
        out.extend(out[i].children)
        i += 1
    out.reverse()
    return out


def _prune(roots: list[Node]) -> list[Node]:
    """RFC 5256 4 REFERENCES (3): a dummy without children goes; a dummy with children gives
    way to them, except at the top with more than one child (they would all become
    threads of their own)."""
    for node in _descendants_first(roots):  # a dummy's children are pruned before it
        if node.children and any(c.message is None for c in node.children):
            kept: list[Node] = []
            for c in node.children:
                if c.message is None:
                    for g in c.children:
                        g.parent = node
                    kept.extend(c.children)
                else:
                    kept.append(c)
            node.children = kept
    top: list[Node] = []
    for node in roots:
        if node.message is None and len(node.children) <= 1:
            for c in node.children:
                c.parent = None
            top.extend(node.children)
        else:
            top.append(node)
    return top


def _group_by_subject(roots: list[Node]) -> list[Node]:
    """RFC 5256 4 REFERENCES (5)."""
    table: dict[str, Node] = {}
    subjects = [n.subject if n.message is not None else _subject(n) for n in roots]
    # (B) one thread per base subject: a dummy before a message, a message before a reply
    for node, (subject, reply) in zip(roots, subjects, strict=True):
        if not subject:
            continue
        old = table.get(subject)
        if old is None:
            table[subject] = node
        elif old.message is not None and (node.message is None or (_subject(old)[1] and not reply)):
            table[subject] = node
    # (C) merge the others into it; a thread merged into another gets a parent (the roots have
    # none), so that the root set is what has no parent
    order = list(roots)
    for node, (subject, reply) in zip(roots, subjects, strict=True):
        if not subject or node.parent is not None:
            continue  # no subject, or already merged into another thread
        other = table[subject]
        if other is node:
            continue
        if node.message is None and other.message is None:
            # both dummies: their children become siblings (and this dummy goes)
            for c in node.children:
                c.parent = other
            other.children.extend(node.children)  # type: ignore[union-attr]  # a parent has a list
            node.parent = other
        elif other.message is None or (reply and not _subject(other)[1]):
            # into the dummy, or a reply under the message it answers
            node.parent = other
            _adopt(other, node)
        else:
            dummy = Node()
            for c in (other, node):
                c.parent = dummy
                _adopt(dummy, c)
            table[subject] = dummy
            order.append(dummy)
    return [n for n in order if n.parent is None]


# -- the response (RFC 5256 5: thread-list) ------------------------------------------------------


def render(roots: Sequence[Root], number: Callable[[SortMessage], int]) -> bytes:
    """``(3 6 (4 23)(44 7 96))``...: a chain of single children is a list of numbers, children
    of a branching point each in parentheses; a dummy is left out but keeps its children
    together. A message alone (a root that is no Node) is ``(n)``."""
    out: list[bytes] = []
    for root in roots:
        if type(root) is Node:
            _render_tree(root, number, out)
        else:
            out.append(b"(%d)" % number(root))  # type: ignore[arg-type]  # a SortMessage
    return b"".join(out)


def _render_tree(root: Node, number: Callable[[SortMessage], int], out: list[bytes]) -> None:
    """One thread of render, appended to ``out``."""
    # a stack of what is still to write: nodes to open and closing parentheses
    todo: list[Node | bytes] = [b")", root, b"("]
    while todo:
        item = todo.pop()
        if isinstance(item, bytes):
            out.append(item)
            continue
        node = item
        first = True
        while True:
            if node.message is not None:
                if not first:
                    out.append(b" ")
                out.append(b"%d" % number(node.message))
                first = False
            if len(node.children) == 1 and node.message is not None:
                node = node.children[0]
                continue
            break
        if node.children:
            if not first:
                out.append(b" ")
            for c in reversed(node.children):
                todo.extend((b")", c, b"("))
