"""Names: network strings -> safe path components, and the Maildir file-name grammar.

Everything that turns a string from the network into a path goes through this module, so the
rules that keep a name inside the data directory live in one place:

* a component is never empty, ``.`` or ``..``, never contains ``/``, ``\\``, NUL or a control
  character (< 0x20, 0x7f, and the C1 range 0x80-0x9f), and is at most 255 bytes on disk
  (NAME_MAX on Linux and most file systems);
* a mailbox localpart or domain never starts with ``.`` (it would hide, and ``..`` escapes);
* domains are IDNA A-labels, hence ASCII.

Folder names (the store's API) use ``.`` as the hierarchy delimiter, as on disk in Maildir++
(``Sent`` -> ``.Sent``, ``Archive.2024`` -> ``.Archive.2024``), and as Dovecot's default
Maildir++ namespace does, so the IMAP layer can hand its names through unchanged (after
decoding IMAP's modified UTF-7). A folder name component therefore cannot contain ``.``. On disk,
non-ASCII folder names are stored in modified UTF-7 (RFC 3501 5.1.3), as Dovecot and Courier do,
so their tools read our tree without conversion.

File names follow https://cr.yp.to/proto/maildir.html with Dovecot's extensions:
``<secs>.M<usecs>P<pid>Q<counter>.<host>,S=<size>:2,<flags>``. The *base* (before ``:``) is the
message's identity; flags live in the info part after ``:2,``.
"""

from __future__ import annotations

import base64
import os
import re
import unicodedata
from collections.abc import Iterable
from itertools import groupby

# The unique base name is the Maildir one; safe file writes use it for their temp files too.
from mailhub.safeio import escape_host as escape_host
from mailhub.safeio import unique_name as unique_name
from mailhub.store.errors import InvalidName

NAME_MAX = 255  # bytes per path component (Linux NAME_MAX; also ext4, xfs, NFS, CephFS)
INBOX = "INBOX"
FOLDER_DELIMITER = "."
INFO_SEPARATOR = ":"  # the spec's separator between unique name and info
FLAGS_PREFIX = "2,"
# RFC 6154 special-use folders every mailbox gets (created with it, and at IMAP login).
SPECIAL_USE: dict[str, str] = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}  # "info starting with 2, ... experimental semantics" (maildir.html)

# Standard Maildir flag letters (maildir.html, "info semantics"). P is "passed" (resent).
DRAFT, FLAGGED, PASSED, REPLIED, SEEN, TRASHED = "D", "F", "P", "R", "S", "T"


def _bad_char(ch: str) -> bool:
    o = ord(ch)
    return o < 0x20 or 0x7F <= o <= 0x9F or ch in "/\\"


def check_component(value: str, what: str, *, allow_leading_dot: bool = False) -> bytes:
    """Check one path component from the network; return its on-disk bytes (UTF-8).

    Raises InvalidName naming ``what`` and the rule broken, never echoing a control character.
    """
    if not value:
        raise InvalidName(f"{what} is empty")
    if value in (".", ".."):
        raise InvalidName(f"{what} may not be {value!r}")
    if not allow_leading_dot and value.startswith("."):
        raise InvalidName(f"{what} may not start with '.'")
    for ch in value:
        if ch == "\0":
            raise InvalidName(f"{what} contains NUL")
        if _bad_char(ch):
            raise InvalidName(f"{what} contains a forbidden character {ch!r}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(f"{what} is not valid Unicode") from None
    if len(raw) > NAME_MAX:
        raise InvalidName(f"{what} is longer than {NAME_MAX} bytes")
    return raw


def split_address(address: str) -> tuple[str, str]:
    """``localpart@domain`` -> (localpart, domain), both checked as path components.

    The address is already canonical (lower-cased by recipient policy). The split is at the last
    ``@`` because a quoted localpart may contain one (RFC 5321 4.1.2). The localpart may be UTF-8
    (RFC 6531); the domain must be an IDNA A-label (ASCII).
    """
    if not isinstance(address, str):
        raise InvalidName("address must be a str")
    localpart, at, domain = address.rpartition("@")
    if not at:
        raise InvalidName("address has no '@'")
    check_component(localpart, "localpart")
    check_component(domain, "domain")
    if not domain.isascii():
        raise InvalidName("domain must be an IDNA A-label (ASCII), e.g. xn--...")
    return localpart, domain


# RFC 8264 9.11-9.14 / RFC 8265 3.3 (PRECIS usernames): controls, format characters (the bidi
# overrides such as U+202E that make a name read backwards), surrogates, private-use and
# unassigned code points, and spaces have no place in a name that becomes a directory.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
# atext in RFC 5321, but IMAP's LIST wildcards (RFC 3501 6.3.8) and the "%-hack" route
# separator: a mailbox directory named with them is a trap for clients and shell globs.
_REFUSED_IN_LOCALPART = "*%"
# RFC 5321 4.5.3.1.1: a local part is at most 64 octets.
MAX_LOCALPART_OCTETS = 64


def new_localpart_problem(localpart: str) -> str | None:
    """Why ``localpart`` may not name a *new* mailbox, or None: the one rule for a recipient
    the store would create a mailbox for (catch-all, the dev stack) and for a dev stack login.
    Stricter than ``check_component`` (which existing mailboxes pass, so none is locked out)."""
    try:
        check_component(localpart, "localpart")
    except InvalidName as e:
        return str(e)
    if ".." in localpart:
        return "localpart may not contain '..'"
    for ch in localpart:
        if unicodedata.category(ch) in _REFUSED_CATEGORIES:
            return f"U+{ord(ch):04X} is not allowed in a mailbox name"
        if ch in _REFUSED_IN_LOCALPART:
            return "'*' and '%' are not allowed in a mailbox name"
    if len(localpart.encode("utf-8")) > MAX_LOCALPART_OCTETS:
        return f"localpart longer than {MAX_LOCALPART_OCTETS} octets"
    return None


# -- folder names ---------------------------------------------------------------------------


def normalise_folder(name: str) -> str:
    """Check a folder name from the API; return it with INBOX's spelling normalised.

    ``INBOX`` is case-insensitive (RFC 3501 5.1). Other names are case-sensitive. Names under
    INBOX (``INBOX.x``) are refused: in Maildir++ INBOX is the mailbox root and cannot have
    children; the other folders are its siblings.
    """
    if not isinstance(name, str):
        raise InvalidName("folder name must be a str")
    if name.upper() == INBOX:
        return INBOX
    parts = name.split(FOLDER_DELIMITER)
    for part in parts:
        check_component(part, "folder name component", allow_leading_dot=True)
    if parts[0].upper() == INBOX:
        raise InvalidName("folders cannot be created under INBOX in Maildir++")
    disk = folder_dirname(name)
    if len(os.fsencode(disk)) > NAME_MAX:
        raise InvalidName(f"folder name is longer than {NAME_MAX} bytes on disk")
    return name


def folder_dirname(name: str) -> str:
    """API folder name (not INBOX) -> Maildir++ directory name: ``A.B`` -> ``.A.B`` (mUTF-7)."""
    return "." + encode_mutf7(name)


def folder_from_dirname(dirname: str) -> str | None:
    """Maildir++ directory name -> API folder name, or None if it is not a folder directory."""
    if not dirname.startswith(".") or dirname in (".", ".."):
        return None
    try:
        name = decode_mutf7(dirname[1:])
    except ValueError:
        return None
    parts = name.split(FOLDER_DELIMITER)
    if any(not p or any(_bad_char(c) or c == "\0" for c in p) for p in parts):
        return None
    return name


def encode_mutf7(text: str) -> str:
    """Modified UTF-7 (RFC 3501 5.1.3): printable ASCII as itself, ``&`` as ``&-``, the rest
    as ``&`` + base64 (``,`` for ``/``, no padding) of UTF-16BE + ``-``."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            b64 = base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")
            out.append("&" + b64 + "-")
            pending.clear()

    for ch in text:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


_MUTF7_RUN = re.compile(r"&([^-]*)-")


def decode_mutf7(text: str) -> str:
    """Inverse of encode_mutf7; raises ValueError on malformed input."""
    if not text.isascii():
        raise ValueError("modified UTF-7 is ASCII")

    def run(m: re.Match[str]) -> str:
        b64 = m.group(1)
        if not b64:
            return "&"
        raw = base64.b64decode(b64.replace(",", "/") + "=" * (-len(b64) % 4), validate=True)
        return raw.decode("utf-16-be")

    try:
        decoded = _MUTF7_RUN.sub(run, text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"bad modified UTF-7: {e}") from None
    if "&" in _MUTF7_RUN.sub("", text):
        raise ValueError("bad modified UTF-7: unterminated '&'")
    return decoded


# -- message file names ---------------------------------------------------------------------


def with_size(base: str, size: int) -> str:
    """Append Dovecot's ``,S=<size>`` so readers know the size without stat()."""
    return f"{base},S={size}"


def split_filename(filename: str) -> tuple[str, str | None]:
    """``base:info`` -> (base, info) ; a file in new/ usually has no info (None)."""
    base, sep, info = filename.partition(INFO_SEPARATOR)
    return base, (info if sep else None)


_NO_FLAGS: frozenset[str] = frozenset()
_flags_cache: dict[str, frozenset[str]] = {}


def flags_of(info: str | None) -> frozenset[str]:
    """The flag letters of an info part, or empty if it is not ``2,`` semantics.

    Memoised: a folder has few distinct flag combinations, and a rescan of a big folder parses
    one per message.
    """
    if not info:
        return _NO_FLAGS
    flags = _flags_cache.get(info)
    if flags is None:
        if info.startswith(FLAGS_PREFIX):
            letters = info[len(FLAGS_PREFIX) :]
            flags = frozenset(c for c in letters if c.isascii() and c.isalpha())
        else:
            flags = _NO_FLAGS
        if len(_flags_cache) > 4096:  # odd names must not grow it without bound
            _flags_cache.clear()
        _flags_cache[info] = flags
    return flags


def check_flags(flags: Iterable[str]) -> frozenset[str]:
    """Flags are single ASCII letters: ``D F P R S T`` and Dovecot keyword letters ``a``-``z``.
    Unknown letters are kept as they are, so mutt/Dovecot flags survive our renames."""
    result = frozenset(flags)
    for f in result:
        if len(f) != 1 or not (f.isascii() and f.isalpha()):
            raise InvalidName(f"flag must be one ASCII letter, not {f!r}")
    return result


MAX_KEYWORD_LENGTH = 100  # octets; RFC 3501 sets none, this keeps index lines bounded
_ATOM_SPECIALS = frozenset('(){ %*"\\]')  # RFC 3501 9: atom-specials (SP and CTL below)


def check_keywords(keywords: Iterable[str]) -> frozenset[str]:
    """IMAP keywords are atoms (RFC 3501 9 flag-keyword): printable ASCII, no atom-specials,
    hence never a space (the index relies on it) and never a ``\\`` system flag."""
    result = frozenset(keywords)
    for k in result:
        if not isinstance(k, str) or not k or len(k) > MAX_KEYWORD_LENGTH:
            raise InvalidName(f"keyword must be 1 to {MAX_KEYWORD_LENGTH} characters")
        for ch in k:
            if not 0x21 <= ord(ch) <= 0x7E or ch in _ATOM_SPECIALS:
                raise InvalidName(f"keyword contains a forbidden character {ch!r}")
    return result


def format_filename(base: str, flags: Iterable[str]) -> str:
    """Base + ``:2,`` + flags in ASCII order (maildir.html: "must be in ASCII order")."""
    return base + INFO_SEPARATOR + FLAGS_PREFIX + "".join(sorted(flags))


_SIZE_FIELD = re.compile(r",S=(\d+)")
_TIME_PREFIX = re.compile(r"(\d+)\.(?:M(\d+))?")


def size_from_base(base: str) -> int | None:
    """Dovecot's ``,S=<size>`` field, if present."""
    m = _SIZE_FIELD.search(base)
    return int(m.group(1)) if m else None


def time_from_base(base: str) -> tuple[int, int] | None:
    """(seconds, microseconds) from a name starting ``<secs>.`` (``.M<usecs>`` optional)."""
    m = _TIME_PREFIX.match(base)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


# Over "\n"-joined base names, at most one match a line: the time prefix as _TIME_PREFIX
# matches it, and the first ``,S=<digits>`` as _SIZE_FIELD.search finds it.
_TIME_LINES = re.compile(r"^(\d+)\.(?:M(\d+))?", re.MULTILINE)
_SIZE_LINES = re.compile(r",S=(\d+)[^\n]*")


def arrival_fields(bases: list[str]) -> tuple[list[int | None], list[int], list[int | None]]:
    """Columns ``(seconds or None, microseconds, size or None)`` of the base names, as
    ``time_from_base`` and ``size_from_base`` give them; one regex pass over the joined names
    when every name has both fields (a first scan of a big folder parses thousands)."""
    joined = "\n".join(bases)
    if bases and joined.count("\n") == len(bases) - 1:  # no name holds a line break
        times = _TIME_LINES.findall(joined)
        sizes = _SIZE_LINES.findall(joined)
        # At most one match a line, so as many matches as names means one on every line.
        if len(times) == len(sizes) == len(bases):
            secs, usecs = zip(*times, strict=True)
            return (
                list(map(int, secs)),
                list(map(int, usecs)) if all(usecs) else [int(u) if u else 0 for u in usecs],
                list(map(int, sizes)),
            )
    secs_col: list[int | None] = []
    usecs_col: list[int] = []
    sizes_col: list[int | None] = []
    for base in bases:
        ts = time_from_base(base)
        secs_col.append(ts[0] if ts else None)
        usecs_col.append(ts[1] if ts else 0)
        sizes_col.append(size_from_base(base))
    return secs_col, usecs_col, sizes_col


_SECS_LINES = re.compile(r"\n(\d+)\.")  # over "\n" + joined names: one match a line at most


def arrival_order(bases: list[str]) -> tuple[list[str], list[int], list[int]] | None:
    """The order in which messages arrived, for assigning UIDs (RFC 3501 2.3.1.1: ascending):
    ``(ordered, seconds, sizes)`` with ``ordered`` the ``bases`` sorted by (seconds,
    microseconds, name) as ``time_from_base`` gives them, and the seconds and
    ``size_from_base`` of each, in that order. None when some name lacks its time or its size
    (the caller must stat those).

    Names whose seconds have one width (every name from 2001 to 2286) sort by seconds as
    strings: a first scan of a big folder sorts the names once, in C, and reads both columns
    from the sorted names with two regex passes. Only names sharing a second are parsed
    further."""
    n = len(bases)
    if not n:
        return [], [], []
    ordered = sorted(bases)
    joined = "\n" + "\n".join(ordered)
    if joined.count("\n") != n:  # a name holds a line break
        return None
    secs_s = _SECS_LINES.findall(joined)
    sizes_s = _SIZE_LINES.findall(joined)
    if len(secs_s) != n or len(sizes_s) != n:
        return None
    secs = list(map(int, secs_s))
    sizes = list(map(int, sizes_s))
    if len(set(map(len, secs_s))) != 1:  # "99." sorts after "1700000000." as a string
        perm = sorted(range(n), key=secs.__getitem__)
        ordered = list(map(ordered.__getitem__, perm))
        secs = list(map(secs.__getitem__, perm))
        sizes = list(map(sizes.__getitem__, perm))
    if len(set(secs)) != n:  # names sharing a second: order those by microseconds, then name

        def finer(i: int) -> tuple[int, str]:
            usec = _TIME_PREFIX.match(ordered[i]).group(2)  # type: ignore[union-attr]  # secs came from it
            return int(usec or 0), ordered[i]

        perm = []
        for _, group in groupby(range(n), key=secs.__getitem__):
            run = list(group)
            if len(run) > 1:
                run.sort(key=finer)
            perm.extend(run)
        ordered = list(map(ordered.__getitem__, perm))
        sizes = list(map(sizes.__getitem__, perm))  # (the seconds are equal within a run)
    return ordered, secs, sizes


def files_by_base(listing: list[str]) -> dict[str, str]:
    """Base name -> file name of each name of a directory listing that ``is_message_filename``
    accepts (one join of the listing for both checks)."""
    joined = "\n".join(listing)
    listing = message_filenames(listing, joined)
    if INFO_SEPARATOR not in joined:  # no info parts (new/, usually): each name is its base
        return dict(zip(listing, listing, strict=True))
    sep = INFO_SEPARATOR
    return {fn.partition(sep)[0]: fn for fn in listing}


def message_filenames(listing: list[str], joined: str | None = None) -> list[str]:
    """The names of a directory listing that ``is_message_filename`` accepts. Checks the joined
    listing first (``joined``: ``"\\n".join(listing)`` if the caller has it), as a scan of a big
    folder would otherwise test every name in Python."""
    if joined is None:
        joined = "\n".join(listing)
    if (
        joined.count("\n") != len(listing) - 1  # a name with a line break
        or "\r" in joined
        or joined[:1] in ("", ".", ":", "\n")  # "": an empty name (or listing)
        or "\n." in joined
        or "\n:" in joined
        or "\n\n" in joined
        or joined.endswith("\n")
    ):
        return [fn for fn in listing if is_message_filename(fn)]
    return listing


def is_message_filename(filename: str) -> bool:
    """Files a scan considers messages: not hidden (``.nfs*`` etc.), not starting with ``:``
    (an empty base name cannot be indexed), no line breaks (they would break the line-oriented
    UID list)."""
    return (
        bool(filename) and filename[0] not in ".:" and "\n" not in filename and "\r" not in filename
    )
