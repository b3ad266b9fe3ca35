"""What IMAP keeps per message in the folder's cache (``Folder.cached``): the top-level header
("headers": SEARCH header keys, ENVELOPE, FETCH BODY[HEADER...]) and the MIME structure
("structure": BODYSTRUCTURE, sections, SEARCH BODY/TEXT). The header is cached apart from the
structure, as it costs only a read of the header block."""

from __future__ import annotations

from typing import Any

from mailhub.message import mime
from mailhub.store import Folder
from mailhub.store.cache import CachePass


def headers(folder: Folder, uid: int) -> mime.MessageHeader:
    """The top-level header of message ``uid``: MessageGone or FileNotFoundError if expunged."""
    return folder.cached(uid, "headers", *_headers_codec(), compute_path=mime.read_header)


def structure(folder: Folder, uid: int) -> mime.MessageStructure:
    """The MIME structure of message ``uid``: a parse of the file when not cached yet."""
    return folder.cached(uid, "structure", *_structure_codec())


def headers_pass(folder: Folder) -> CachePass[mime.MessageHeader]:
    """``headers`` for one command over many messages (``Folder.cache_pass``): close it."""
    return folder.cache_pass("headers", *_headers_codec(), compute_path=mime.read_header)


def structure_pass(folder: Folder) -> CachePass[mime.MessageStructure]:
    """``structure`` for one command over many messages: close it."""
    return folder.cache_pass("structure", *_structure_codec())


def _headers_codec() -> tuple[Any, Any, Any]:
    """compute, encode, decode of the cache entry "headers" (looked up per use: tests patch)."""
    return (mime.parse_header, mime.MessageHeader.to_bytes, mime.MessageHeader.from_bytes)


def _structure_codec() -> tuple[Any, Any, Any]:
    """compute, encode, decode of the cache entry "structure" (looked up per use, too)"""
    return (
        mime.parse_structure,
        mime.MessageStructure.to_bytes,
        mime.MessageStructure.from_bytes,
    )
