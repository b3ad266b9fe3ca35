"""What the checks found, and the ``Authentication-Results:`` header that carries it (RFC 8601).

A ``MethodResult`` is one resinfo (RFC 8601 2.2): a method (``spf``, ``dkim``, ``dmarc``,
``arc``), its result keyword, a reason in plain words, and ``ptype.property=value`` pairs
(``smtp.mailfrom``, ``header.d``, ...; RFC 8601 2.3, 2.7). ``AuthenticationResults`` is the header
of one server (its authserv-id) with every resinfo, written by ``header_value``.

The web page and the API read these back from the stored message (``parse``), so the header is
the one record of what was found: a message judged once is shown the same way forever.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from mailhub.message.header_text import from_bytes, from_escaped

T = TypeVar("T")


class _once(Generic[T]):
    """``functools.cached_property`` without its lock (Python 3.11 takes one at each object's
    first use: ~0.7 us, and the checks make a new result and header object per message). A
    value computed twice by two threads at once is the same value: no lock is needed."""

    def __init__(self, fn: Callable[[Any], T]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _once[T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...
    def __get__(self, obj: object, owner: type | None = None) -> T | _once[T]:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)  # then found there, not here
        return value


# RFC 8601 2.7: the result keywords per method.
SPF_RESULTS = frozenset(
    {"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror", "policy"}
)
DKIM_RESULTS = frozenset({"none", "pass", "fail", "policy", "neutral", "temperror", "permerror"})
DMARC_RESULTS = frozenset({"none", "pass", "fail", "temperror", "permerror"})
ARC_RESULTS = frozenset({"none", "pass", "fail"})

# RFC 2045 5.1 token: any printable US-ASCII but SPACE and tspecials.
_TOKEN = re.compile(rb"^[!#$%&\'*+\-.0-9A-Z^_`a-z{|}~]+$")
# RFC 8601 2.2: pvalue may also be [local-part] "@" domain-name without quotes.
_ADDRESS = re.compile(rb"^[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z.]*@[0-9A-Za-z][0-9A-Za-z.\-]*$")
# Characters of a reason kept in the header (it stays readable): a check's words, and in the
# dev stack its notes on what a receiver would see (inbound.as_receiver) after them.
_REASON_MAX = 600


@dataclass(frozen=True)
class MethodResult:
    """One method's result (RFC 8601 2.2 ``resinfo``)."""

    method: str
    result: str
    reason: str = ""
    properties: tuple[tuple[str, str], ...] = ()  # ("smtp.mailfrom", "a@b.example"), ...

    def property(self, name: str) -> str | None:
        for key, value in self.properties:
            if key == name:
                return value
        return None

    @_once
    def written(self) -> bytes:
        """The resinfo as ``header_value`` writes it (without the ``;`` before it). Written
        once per object: the checks keep the results most messages repeat (dkim=none,
        arc=none, a sender's spf=, a domain's dmarc=) and give the same objects again."""
        words = [f"{self.method}={self.result}".encode()]
        if self.reason:
            words.append(_reason_word(self.reason))
        for key, value in self.properties:
            words.append(_property_word(key, value))
        return b" ".join(words)


@dataclass(frozen=True)
class AuthenticationResults:
    """One ``Authentication-Results:`` header: our authserv-id and what each check found."""

    authserv_id: str
    results: tuple[MethodResult, ...] = ()

    def header_value(self) -> bytes:
        """The field value, folded one resinfo per line (no field name, no final CRLF)."""
        raw_id = _authserv_id(self.authserv_id)
        if not self.results:
            return raw_id + b"; none"  # RFC 8601 2.2 no-result
        parts = [raw_id]
        for r in self.results:
            parts.append(r.written)
        return b";\r\n\t".join(parts)

    def header(self) -> bytes:
        """The whole field with its CRLF, ready to put on top of a message."""
        return self._field

    @_once
    def _field(self) -> bytes:
        # Written once per object: the checks give a sender's next message the same one.
        return b"Authentication-Results: " + self.header_value() + b"\r\n"


@functools.lru_cache(maxsize=64)  # the server's own id: the same every message
def _authserv_id(value: str) -> bytes:
    # authserv-id is a value (RFC 8601 2.2): a token, else quoted (as ``parse`` reads it)
    authserv_id = _clean(value)
    raw_id = authserv_id.encode()
    return raw_id if _TOKEN.match(raw_id) else _quoted(authserv_id)


# Pure functions of their text, kept for the words every message repeats (a signer's d=, s=
# and a=, the reason of a pass): a new result object per message costs no new writing of them.
@functools.lru_cache(maxsize=4096)
def _reason_word(reason: str) -> bytes:
    return b"reason=" + _quoted(_clean(reason)[:_REASON_MAX])


@functools.lru_cache(maxsize=4096)
def _property_word(key: str, value: str) -> bytes:
    return key.encode() + b"=" + _pvalue(_clean(value))


def _clean(text: str) -> str:
    """No CR, LF or NUL can reach a header from a value taken out of a message."""
    return text.replace("\r", " ").replace("\n", " ").replace("\0", " ")


def _quoted(text: str) -> bytes:
    raw = text.encode("utf-8", "replace")  # RFC 8601 2.2 allows UTF-8 (RFC 6532) in values
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _pvalue(text: str) -> bytes:
    raw = text.encode("utf-8", "replace")
    if raw and (_TOKEN.match(raw) or _ADDRESS.match(raw)):
        return raw
    return _quoted(text)


# --- reading a header back (RFC 8601 2.2) ------------------------------------------------------
#
# authres-payload = [CFWS] authserv-id [CFWS authres-version] (no-result / 1*resinfo) [CFWS]
# resinfo   = [CFWS] ";" methodspec [CFWS reasonspec] [CFWS 1*propspec]
# methodspec = [CFWS] method [CFWS] "=" [CFWS] result      method = Keyword [[CFWS] "/" version]
# reasonspec = "reason" [CFWS] "=" [CFWS] value            value = token / quoted-string
# propspec  = ptype [CFWS] "." [CFWS] property [CFWS] "=" pvalue
# pvalue    = [CFWS] (value / [[local-part] "@"] domain-name) [CFWS]
#
# The reader is forgiving: the header comes from anyone (a message may carry fields other
# servers wrote, or forged ones), so whatever cannot be read is skipped up to the next ";" and
# nothing raises. Method, result, ptype and property are case-insensitive (RFC 8601 2.2:
# Keywords) and come back in lower case; values keep their case (header.b is base64).

_SPACE = re.compile(r"[ \t\r\n\x0b\x0c]+")  # bytes.isspace(): ASCII white space
# A word: a run up to a space, a comment, a quoted string or one of the stop characters.
_KEY_WORD = re.compile(r'[^ \t\r\n()";=]+')
_VALUE_WORD = re.compile(r'[^ \t\r\n()";]+')  # "=" may stand in a pvalue (SRS local-parts)
_DIGITS = re.compile(r"[0-9]+")
_COMMENT_TEXT = re.compile(r"[^()\\]+")
_QUOTED_TEXT = re.compile(r'[^"\\\r\n]+')
_CFWS_START = " \t\r\n\x0b\x0c("
# The plain forms of a methodspec and of a reasonspec or propspec, in the same character
# classes as the general reading (a single-word key; a quoted value without quoted-pairs or
# folding, not a quoted local-part): a fast path, the general reading does the rest.
_WS = r"[ \t\r\n\x0b\x0c]*"
_KEY = r'([^ \t\r\n()";=]+)'
_PLAIN_METHOD = re.compile(rf'{_WS}{_KEY}{_WS}={_WS}([^ \t\r\n()";=]+)')
_PLAIN_PROPERTY = re.compile(rf'{_WS}{_KEY}{_WS}={_WS}(?:"([^"\\\r\n]*)"(?!@)|([^ \t\r\n()";]+))')
_AUTHSERV_ID = re.compile(r'[^ \t\r\n\x0b\x0c;()"]+')  # a token: up to ASCII space or specials


def parse(value: bytes | str) -> AuthenticationResults:
    """An ``Authentication-Results:`` field value (without the field name) read back: what
    could be read of it. Never raises. Octets are read as UTF-8 (RFC 8601 2.2 allows it by
    RFC 6532), ill-formed ones as U+FFFD; text from the ``email`` package (surrogate escapes)
    the same way."""
    text = from_bytes(value) if isinstance(value, bytes) else from_escaped(value)
    return _Reader(text).payload()


def authserv_id_of(value: bytes | str) -> str:
    """The authserv-id of an ``Authentication-Results`` field value, lower case ("" if none),
    read as ``parse`` reads it but nothing after it: the receiving sink removes the fields a
    message brings that claim our id (RFC 8601 5), and the page believes the one that has it;
    one reader, so a field the sink kept as not ours cannot read as ours."""
    text = from_bytes(value) if isinstance(value, bytes) else from_escaped(value)
    reader = _Reader(text)
    reader.cfws()
    return reader.authserv_id().lower()


class _Reader:
    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0
        self.comments: list[str] = []

    def at(self, chars: str) -> bool:
        return self.i < len(self.s) and self.s[self.i] in chars

    def cfws(self) -> None:
        """Skips spaces, folding and comments (kept in ``comments``: they may say why)."""
        s = self.s
        if self.i < len(s) and s[self.i] not in _CFWS_START:
            return
        while self.i < len(s):
            m = _SPACE.match(s, self.i)
            if m:
                self.i = m.end()
            elif s[self.i] == "(":
                self.comments.append(self.comment())
            else:
                return

    def comment(self) -> str:
        """A comment from its "(": nested, with quoted-pairs (RFC 5322 3.2.2); one left open
        runs to the end. No recursion: any depth is read."""
        s, depth, out = self.s, 0, []
        while self.i < len(s):
            c = s[self.i]
            if c not in "()\\":  # the plain text up to the next special, at once
                run = _COMMENT_TEXT.match(s, self.i)
                assert run is not None
                out.append(run[0])
                self.i = run.end()
                continue
            self.i += 1
            if c == "\\" and self.i < len(s):
                out.append(s[self.i])
                self.i += 1
                continue
            if c == "(":
                depth += 1
                if depth == 1:
                    continue
            elif c == ")":
                depth -= 1
                if depth == 0:
                    break
            out.append(c)
        return " ".join("".join(out).split())

    def quoted(self, unfold: bool = True) -> str:
        """A quoted string from its '"' (RFC 5322 3.2.4): quoted-pairs undone, folding removed
        (``unfold``); one left open runs to the end."""
        s, out = self.s, []
        self.i += 1
        while self.i < len(s):
            c = s[self.i]
            if c not in '"\\\r\n':
                run = _QUOTED_TEXT.match(s, self.i)
                assert run is not None
                out.append(run[0])
                self.i = run.end()
                continue
            self.i += 1
            if c == '"':
                break
            if c == "\\":
                if self.i == len(s):
                    break  # a quoted-pair cut off by the end quotes nothing
                c = s[self.i]
                self.i += 1
            elif c in "\r\n" and unfold:
                continue  # folding inside the string: CRLF goes, the blank stays (RFC 5322 3.2.2)
            out.append(c)
        return "".join(out)

    def word(self, pattern: re.Pattern[str]) -> str:
        m = pattern.match(self.s, self.i)
        if m is None:
            return ""
        self.i = m.end()
        return m[0]

    def value(self) -> str:
        """A value or pvalue: a quoted string (with "@domain" after it: a quoted local-part),
        or a word."""
        if self.at('"'):
            text = self.quoted()
            if self.at("@"):
                text += self.word(_VALUE_WORD)
            return text
        return self.word(_VALUE_WORD)

    def key(self) -> str:
        """The words before an "=" (a method, "reason" or ptype.property), CFWS around a "."
        or "/" dropped ("header . d", "dkim / 1"); a stray word before it is dropped ("junk
        header.d"); stops at "=", ";", a quoted string or the end."""
        parts: list[str] = []
        while True:
            self.cfws()
            part = self.word(_KEY_WORD)
            if not part:
                return "".join(parts)
            if parts and not (parts[-1].endswith((".", "/")) or part.startswith((".", "/"))):
                parts = []
            parts.append(part)

    def skip_to_semicolon(self) -> None:
        while self.i < len(self.s) and not self.at(";"):
            if self.at('"'):
                self.quoted()
            elif self.at("("):
                self.comment()
            else:
                self.i += 1

    def payload(self) -> AuthenticationResults:
        self.cfws()
        authserv_id = self.authserv_id()
        self.cfws()
        version = _DIGITS.match(self.s, self.i)  # authres-version: read and dropped (only 1)
        if version is not None:
            self.i = version.end()
        results: list[MethodResult] = []
        while True:
            self.skip_to_semicolon()  # anything unreadable before the next resinfo
            if self.i >= len(self.s):
                break
            self.i += 1  # ";"
            result = self.resinfo()
            if result is not None:
                results.append(result)
        return AuthenticationResults(authserv_id, tuple(results))

    def authserv_id(self) -> str:
        """RFC 8601 2.2: a token or a quoted-string (its folding kept, as the sink sees it)."""
        return self.quoted(unfold=False) if self.at('"') else self.word(_AUTHSERV_ID)

    def resinfo(self) -> MethodResult | None:
        """One resinfo after its ";"; None for "none" (no-result) or one without a method."""
        self.comments = []
        plain = _PLAIN_METHOD.match(self.s, self.i)  # most fields: no comment, no oddity
        if plain is not None:
            self.i = plain.end()
            method, result = plain[1].lower(), plain[2].lower()
        else:
            method = self.key().lower()
            self.cfws()
            if not method or not self.at("="):
                return None
            self.i += 1
            self.cfws()
            result = self.word(_KEY_WORD).lower()
        method = method.split("/", 1)[0]  # method-version: dropped (only 1 is defined)
        reason: str | None = None
        properties: list[tuple[str, str]] = []
        while True:
            plain = _PLAIN_PROPERTY.match(self.s, self.i)
            if plain is not None:  # what the slow way below would read, read at once
                self.i = plain.end()
                key, value = plain[1].lower(), plain[2] if plain[2] is not None else plain[3]
            else:
                key = self.key().lower()
                self.cfws()
                if not key or not self.at("="):
                    break  # ";", the end, or something unreadable (skipped by the caller)
                self.i += 1
                self.cfws()
                value = self.value()
            if key == "reason":
                reason = value if reason is None else reason
            elif "." in key:
                properties.append((key, value))
        if reason is None and self.comments:
            # No reason= but a comment (as many servers write one, "(google.com: domain of
            # ... designates ... as permitted sender)"): the best "why" there is.
            reason = "; ".join(self.comments)
        return MethodResult(method, result, reason or "", tuple(properties))


def ours(
    headers: Iterable[tuple[str, bytes | str]], authserv_id: str | None
) -> AuthenticationResults | None:
    """The top-most ``Authentication-Results:`` field written by ``authserv_id`` (compared
    without case: it is a host name, RFC 8601 2.5), read; any top-most one when
    ``authserv_id`` is None; None if there is none. ``headers`` are a message's fields in
    order, top first (as ``email.message.Message.raw_items()`` gives them).

    Only a field with our own authserv-id can be trusted (RFC 8601 5: others may be forged;
    ours are removed at delivery before our own is added on top)."""
    for results in all_results(headers):
        if authserv_id is None or results.authserv_id.lower() == authserv_id.lower():
            return results
    return None


def all_results(headers: Iterable[tuple[str, bytes | str]]) -> list[AuthenticationResults]:
    """Every ``Authentication-Results:`` field of a message, read, top first."""
    return [parse(value) for name, value in headers if name.strip().lower() == _FIELD]


_FIELD = "authentication-results"
