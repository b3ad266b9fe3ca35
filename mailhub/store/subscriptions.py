"""The mailbox's subscription list (IMAP SUBSCRIBE/LSUB), in Dovecot's ``subscriptions`` file.

Same file, same format as Dovecot's Maildir++ layout, so either server sees the other's
subscriptions. Version 2 (what Dovecot 2.3 writes)::

    V<TAB>2<LF>
    <LF>
    <name><LF> ...

with each name's hierarchy components (on disk: modified UTF-7, as the folder directories)
separated by TAB, and \\001, TAB, CR, LF inside a component escaped as \\001 followed by
``1``, ``t``, ``r``, ``n``. Version 1 (older Dovecot, Courier) is one name a line with the
hierarchy delimiter ``.``; it is read, and rewritten as version 2 on the next change.

Writers hold the dotlock ``subscriptions.lock`` (the name Dovecot's dotlock uses) and replace
the file atomically.
"""

from __future__ import annotations

from pathlib import Path

from mailhub.safeio import atomic_write
from mailhub.store import names

FILENAME = "subscriptions"
LOCKNAME = FILENAME + ".lock"
V2_HEADER = b"V\t2\n\n"

_ESCAPES = {"\x01": "\x011", "\t": "\x01t", "\r": "\x01r", "\n": "\x01n"}
_UNESCAPES = {"1": "\x01", "t": "\t", "r": "\r", "n": "\n"}


def _escape(component: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in component)


def _unescape(component: str) -> str:
    out: list[str] = []
    it = iter(component)
    for c in it:
        out.append(_UNESCAPES.get(next(it, ""), "") if c == "\x01" else c)
    return "".join(out)


def _decode_component(raw: str) -> str:
    try:
        return names.decode_mutf7(raw)
    except ValueError:
        return raw  # not modified UTF-7: keep it as written


def parse(data: bytes) -> list[str]:
    text = data.decode("utf-8", "replace")
    if data.startswith(V2_HEADER):
        lines = text[len(V2_HEADER) :].split("\n")
        parts = ([_unescape(c) for c in line.split("\t")] for line in lines if line)
    else:
        parts = (line.split(names.FOLDER_DELIMITER) for line in text.split("\n") if line)
    found: list[str] = []
    for components in parts:
        name = names.FOLDER_DELIMITER.join(_decode_component(c) for c in components)
        if name.upper() == names.INBOX:
            name = names.INBOX
        if name not in found:
            found.append(name)
    return found


def serialise(subscribed: list[str]) -> bytes:
    lines = [
        "\t".join(_escape(names.encode_mutf7(c)) for c in name.split(names.FOLDER_DELIMITER))
        for name in subscribed
    ]
    return V2_HEADER + "".join(line + "\n" for line in lines).encode("ascii")


def load(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return parse(data)


def save(path: Path, subscribed: list[str], hostname: str) -> None:
    atomic_write(path, serialise(subscribed), hostname)
