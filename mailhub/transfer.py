"""``mailhub export`` and ``mailhub import``: mail to and from ``.eml`` files or mbox, with flags.

For moving a catch between machines and for loading test fixtures (``mailhub.testing``'s
``preload``). Both work beside a running server: they use the store the way a delivering or
reading process does (imports get UIDs and are fsync'd through ``Folder.append_from``).

Layouts:

* ``.eml``: ``DEST/<mailbox>/<folder>/<nnnnnn>.eml``, each with a ``.json`` sidecar holding
  the Maildir flags, IMAP keywords and the internal date. An import takes plain ``.eml`` files
  without sidecars too (fixtures): into ``--mailbox``/``--folder``, or else into the mailboxes
  of their ``To:`` and ``Cc:`` addresses.
* mbox (mboxrd: body lines matching ``>*From `` get one more ``>``; an import takes one away):
  one file for one folder, or ``DEST/<mailbox>/<folder>.mbox`` for more. Flags go into
  ``Status:`` (R read, O old) and ``X-Status:`` (A answered, F flagged, D deleted, T draft) as
  mutt reads them, and all of them with the keywords into ``X-Mailhub-Flags:``; the import
  takes those fields out again and sets the flags (``X-Mailhub-Flags`` first, else mutt's).
  The ``From `` line carries the envelope sender (``Return-Path:``) and the internal date.

Folder names are percent-encoded in file names (``Archive.2024`` stays, ``a/b`` -> ``a%2Fb``).
Messages stream through in pieces: a 50 MB message is never held whole in memory.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email.utils import getaddresses, mktime_tz, parsedate_tz
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, unquote

from mailhub.safeio import fsync_dir, makedirs_durable
from mailhub.store import Folder, FolderExists, MailStore
from mailhub.store.names import (
    DRAFT,
    FLAGGED,
    FOLDER_DELIMITER,
    INBOX,
    REPLIED,
    SEEN,
    TRASHED,
    check_flags,
    check_keywords,
)

FLAGS_FIELD = b"X-Mailhub-Flags"
# Status: and X-Status: letters as mutt writes and reads them (mutt's mbox.c).
_X_STATUS = {REPLIED: "A", FLAGGED: "F", TRASHED: "D", DRAFT: "T"}
_FROM_LINE = re.compile(rb"^>*From ")
CHUNK = 1024 * 1024


class TransferError(Exception):
    """Input that cannot be imported (named, with why)."""


@dataclass
class Counts:
    messages: int = 0
    folders: set[tuple[str, str]] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)  # what was not imported, and why


# --- naming ----------------------------------------------------------------------------------


def folder_file_name(name: str) -> str:
    return quote(name, safe=" ._-+@,=")


def folder_from_file_name(name: str) -> str:
    return unquote(name)


def _folders(
    store: MailStore, mailbox: str | None, folder: str | None
) -> Iterator[tuple[str, str]]:
    addresses = [mailbox] if mailbox is not None else store.mailboxes()
    for address in addresses:
        box = store.mailbox(address)
        for name in [folder] if folder is not None else box.list_folders():
            yield address, name


# --- export ----------------------------------------------------------------------------------


def _flag_text(flags: Iterable[str], keywords: Iterable[str]) -> str:
    """``X-Mailhub-Flags``: the Maildir flag letters ("-" for none), then the keywords."""
    return " ".join(["".join(sorted(flags)) or "-", *sorted(keywords)])


def export(
    store: MailStore,
    dest: Path,
    *,
    mailbox: str | None = None,
    folder: str | None = None,
    fmt: str = "eml",
) -> Counts:
    """Write the chosen mail under ``dest``. mbox of one folder (``mailbox`` and ``folder``
    given): ``dest`` is the file; otherwise a directory tree."""
    counts = Counts()
    single = fmt == "mbox" and mailbox is not None and folder is not None
    for address, name in _folders(store, mailbox, folder):
        f = store.mailbox(address).folder(name)
        state = f.sync()
        counts.folders.add((address, name))
        if fmt == "mbox":
            target = dest if single else dest / address / (folder_file_name(name) + ".mbox")
            makedirs_durable(target.parent)
            with target.open("wb") as out:
                for info in state.messages:
                    with f.open_message(info.uid) as src:
                        write_mbox_message(out, src, info.flags, info.keywords, info.internaldate)
                    counts.messages += 1
                out.flush()
                os.fsync(out.fileno())
        else:
            directory = dest / address / folder_file_name(name)
            makedirs_durable(directory)
            for n, info in enumerate(state.messages, 1):
                stem = directory / f"{n:06d}"
                with f.open_message(info.uid) as src, open(f"{stem}.eml", "wb") as out:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                side = {
                    "flags": "".join(sorted(info.flags)),
                    "keywords": sorted(info.keywords),
                    "internaldate": info.internaldate,
                }
                Path(f"{stem}.json").write_text(json.dumps(side) + "\n")
                counts.messages += 1
            fsync_dir(directory)
    return counts


def _envelope_sender(head: bytes) -> str:
    m = re.search(rb"^Return-Path:[ \t]*<([^>\r\n]*)>", head, re.IGNORECASE | re.MULTILINE)
    sender = m.group(1).decode("utf-8", "replace") if m else ""
    return re.sub(r"\s", "", sender) or "MAILER-DAEMON"


def write_mbox_message(
    out: BinaryIO, src: BinaryIO, flags: Iterable[str], keywords: Iterable[str], date: float
) -> None:
    """One message in mboxrd form: From_ line, header (+ our flag fields), quoted body, blank
    line. Line endings become LF (mbox is a Unix format)."""
    flags = frozenset(flags)
    lines = _lines(src)
    head: list[bytes] = []
    skipping = False
    for line in lines:
        if line in (b"\n", b"\r\n"):
            break
        if line[:1] not in (b" ", b"\t"):  # a new field (else a folded continuation)
            # Ours are written below: an old copy would contradict them.
            skipping = bool(re.match(rb"(?i)(status|x-status|x-mailhub-flags):", line))
        if not skipping:
            head.append(line.rstrip(b"\r\n") + b"\n")
    asctime = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(date))
    out.write(f"From {_envelope_sender(b''.join(head))} {asctime}\n".encode())
    for line in head:
        out.write(b">" + line if _FROM_LINE.match(line) else line)
    status = ("R" if SEEN in flags else "") + "O"
    x_status = "".join(v for k, v in _X_STATUS.items() if k in flags)
    out.write(f"Status: {status}\n".encode())
    if x_status:
        out.write(f"X-Status: {x_status}\n".encode())
    text = _flag_text(flags, keywords)
    out.write(FLAGS_FIELD + b": " + text.encode("utf-8") + b"\n\n")
    last = b"\n"
    for line in lines:
        line = line[:-2] + b"\n" if line.endswith(b"\r\n") else line
        if last.endswith(b"\n") and _FROM_LINE.match(line):  # at a line's start
            line = b">" + line  # mboxrd (RFC 4155 and qmail's mbox(5))
        out.write(line)
        last = line
    if not last.endswith(b"\n"):
        out.write(b"\n")
    out.write(b"\n")


def _lines(src: BinaryIO) -> Iterator[bytes]:
    """Lines of a binary file (readline: a 50 MB line is read in one piece only if it is one)."""
    while line := src.readline(CHUNK):
        yield line


# --- import ----------------------------------------------------------------------------------


def _folder(store: MailStore, address: str, name: str) -> Folder:
    box = store.mailbox(address, create=True)
    if name != INBOX and not box.has_folder(name):
        parts = name.split(FOLDER_DELIMITER)
        for i in range(1, len(parts) + 1):  # parents first (Maildir++ does not make them)
            try:
                box.create_folder(FOLDER_DELIMITER.join(parts[:i]))
            except FolderExists:
                pass
    return box.folder(name)


def _flags(text: str) -> tuple[frozenset[str], frozenset[str]]:
    words = text.split() or ["-"]
    try:
        return check_flags(words[0].strip("-")), check_keywords(words[1:])
    except Exception as e:
        raise TransferError(f"bad flags {text!r}: {e}") from None


def import_path(
    store: MailStore, src: Path, *, mailbox: str | None = None, folder: str | None = None
) -> Counts:
    """Import a file (mbox, or one .eml) or a directory (an export tree, or a folder of .eml
    and .mbox files) into the store."""
    counts = Counts()
    if src.is_dir():
        subdirs = [p for p in sorted(src.iterdir()) if p.is_dir()]
        if mailbox is None and subdirs and all("@" in p.name for p in subdirs):
            for box_dir in subdirs:  # an export tree: <mailbox>/<folder>...
                for entry in sorted(box_dir.iterdir()):
                    name = folder_from_file_name(entry.name.removesuffix(".mbox"))
                    if entry.is_dir():
                        _import_eml_dir(store, entry, box_dir.name, name, counts)
                    elif entry.name.endswith(".mbox"):
                        _import_mbox(store, entry, box_dir.name, name, counts)
            return counts
        _import_eml_dir(store, src, mailbox, folder or INBOX, counts)
        for entry in sorted(src.glob("*.mbox")):
            _import_mbox(store, entry, _need(mailbox, entry), folder or INBOX, counts)
        return counts
    if not src.exists():
        raise TransferError(f"{src}: no such file or directory")
    if src.suffix == ".eml":
        _import_eml(store, src, mailbox, folder or INBOX, counts)
    else:
        _import_mbox(store, src, _need(mailbox, src), folder or INBOX, counts)
    return counts


def _need(mailbox: str | None, path: Path) -> str:
    if mailbox is None:
        raise TransferError(f"{path}: an mbox file goes into one mailbox: give --mailbox")
    return mailbox


def _import_eml_dir(
    store: MailStore, directory: Path, mailbox: str | None, name: str, counts: Counts
) -> None:
    for path in sorted(directory.glob("*.eml")):
        _import_eml(store, path, mailbox, name, counts)


def _import_eml(
    store: MailStore, path: Path, mailbox: str | None, name: str, counts: Counts
) -> None:
    flags: frozenset[str] = frozenset()
    keywords: frozenset[str] = frozenset()
    date: float | None = None
    side = path.with_suffix(".json")
    if side.exists():
        try:
            doc = json.loads(side.read_text())
            flags = check_flags(doc.get("flags", ""))
            keywords = check_keywords(doc.get("keywords", []))
            date = doc.get("internaldate")
        except Exception as e:
            raise TransferError(f"{side}: not a mailhub sidecar: {e}") from None
    if path.stat().st_size == 0:
        counts.skipped.append(f"{path}: empty")
        return
    targets = [mailbox] if mailbox is not None else _recipients(path)
    if not targets:
        counts.skipped.append(f"{path}: no --mailbox and no To/Cc address")
        return
    for address in targets:
        with path.open("rb") as src:
            _folder(store, address, name).append_from(
                _CRLFReader(src),  # type: ignore[arg-type]  # read() is all append_from uses
                flags=flags,
                keywords=keywords,
                internaldate=date,
            )
        counts.messages += 1
        counts.folders.add((address, name))


def _recipients(path: Path) -> list[str]:
    with path.open("rb") as f:
        head = []
        for line in _lines(f):
            if line in (b"\n", b"\r\n"):
                break
            head.append(line)
    text = b"".join(head).decode("utf-8", "replace")
    values = re.findall(r"(?im)^(?:to|cc):((?:.*)(?:\r?\n[ \t].*)*)", text)
    return list(dict.fromkeys(a.lower() for _n, a in getaddresses(values) if "@" in a))


class _CRLFReader:
    """A binary file read with every line ending as CRLF (the store keeps CRLF, IMAP's).
    ``read(n)`` gives at most ``n`` octets, as a file does (the store copies into a buffer)."""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self._out = b""
        self._cr = False  # the last piece ended in CR: its LF may start the next one
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._out) < n):
            data = self._src.read(CHUNK)
            if not data:
                self._eof = True
                if self._cr:
                    self._out += b"\r\n"  # a lone CR at the very end
                break
            if self._cr:
                data = b"\r" + data
            self._cr = data.endswith(b"\r")
            if self._cr:
                data = data[:-1]
            self._out += data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if n < 0:
            out, self._out = self._out, b""
        else:
            out, self._out = self._out[:n], self._out[n:]
        return out


def _import_mbox(store: MailStore, path: Path, mailbox: str, name: str, counts: Counts) -> None:
    with path.open("rb") as f:
        first = f.readline(CHUNK)
        while first in (b"\n", b"\r\n"):
            first = f.readline(CHUNK)
        if not first:
            return  # an empty mbox: nothing to import
        if not first.startswith(b"From "):
            raise TransferError(f"{path}: not an mbox file (it does not start with a From line)")
        target = _folder(store, mailbox, name)
        from_line = first
        while from_line:
            from_line = _one_mbox_message(target, f, from_line)
            counts.messages += 1
        counts.folders.add((mailbox, name))


def _one_mbox_message(target: Folder, f: BinaryIO, from_line: bytes) -> bytes:
    """Read one message after its From line into a temporary file and append it; returns the
    next From line (b"" at the end)."""
    date = _from_line_date(from_line)
    flags: frozenset[str] = frozenset()
    keywords: frozenset[str] = frozenset()
    status = x_status = ""
    ours: str | None = None
    next_from = b""
    with tempfile.TemporaryFile() as tmp:
        in_head, blank = True, False
        blanks = 0  # blank lines held back: the last one before a From line is mbox's own
        for line in _lines(f):
            if blank and line.startswith(b"From "):
                next_from = line
                break
            bare = line.rstrip(b"\r\n")
            if in_head:
                if not bare:
                    in_head = False
                    tmp.write(b"\r\n")
                    blank = True
                    continue
                field_ = bare.split(b":", 1)[0].lower()
                if field_ == b"status":
                    status = bare.split(b":", 1)[1].decode("ascii", "replace").strip()
                    continue
                if field_ == b"x-status":
                    x_status = bare.split(b":", 1)[1].decode("ascii", "replace").strip()
                    continue
                if field_ == FLAGS_FIELD.lower():
                    ours = bare.split(b":", 1)[1].decode("utf-8", "replace")
                    continue
                tmp.write(bare + b"\r\n")
                continue
            blank = not bare
            if blank:
                blanks += 1
                continue
            tmp.write(b"\r\n" * blanks)  # blank lines not followed by From: the body's
            blanks = 0
            if re.match(rb">+From ", bare):
                bare = bare[1:]  # mboxrd: one level of quoting off
            tmp.write(bare + b"\r\n")
        if in_head:
            tmp.write(b"\r\n")
        tmp.write(b"\r\n" * max(0, blanks - 1))
        if ours is not None:
            flags, keywords = _flags(ours)
        else:
            letters = {SEEN} if "R" in status else set()
            letters |= {k for k, v in _X_STATUS.items() if v in x_status}
            flags = frozenset(letters)
        tmp.seek(0)
        target.append_from(tmp, flags=flags, keywords=keywords, internaldate=date)
    return next_from


def _from_line_date(line: bytes) -> float | None:
    """The asctime date of a From_ line (``From sender Mon Dec  7 00:00:00 2026``)."""
    words = line.decode("utf-8", "replace").split()
    if len(words) < 7:
        return None
    try:
        return float(calendar.timegm(time.strptime(" ".join(words[-5:]), "%a %b %d %H:%M:%S %Y")))
    except (ValueError, OverflowError):
        parsed = parsedate_tz(" ".join(words[2:]))
        return float(mktime_tz(parsed)) if parsed else None
