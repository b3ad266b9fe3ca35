"""SASL mechanisms PLAIN (RFC 4616) and LOGIN, and the base64 framing of SMTP AUTH (RFC 4954),
IMAP AUTHENTICATE (RFC 3501 6.2.2) and POP3 AUTH (RFC 5034).

Protocol-neutral and free of I/O: a mechanism is a small state machine that takes the client's
decoded responses and returns either the next challenge (bytes, to be base64-encoded by the
protocol) or the finished ``SASLCredentials``. Malformed input raises ``SASLError``; checking the
credentials is the portal's job, deciding what happens next the protocol's. IMAP AUTHENTICATE and
POP3 AUTH can drive the same classes.

The password is never in a repr or an exception message.
"""

from __future__ import annotations

import binascii
from base64 import b64decode, b64encode
from dataclasses import dataclass, field
from typing import ClassVar

# RFC 4616 2: authzid, authcid and passwd are each at most 255 octets of UTF-8.
MAX_FIELD = 255


class SASLError(Exception):
    """The client's response cannot be used (bad base64, malformed mechanism message)."""


@dataclass(frozen=True)
class SASLCredentials:
    """What a mechanism extracted; ``authzid`` is b"" when the client named no other identity."""

    authcid: bytes
    password: bytes = field(repr=False)
    authzid: bytes = b""

    def acts_as_itself(self) -> bool:
        """RFC 4616 2: an authzid, when given, must be the authcid itself (we let nobody act for
        another user). Compared case-insensitively, as addresses are folded everywhere else."""
        if not self.authzid:
            return True
        return self.authzid.strip().lower() == self.authcid.strip().lower()


def decode_response(text: bytes) -> bytes:
    """A client response line: ``=`` is the empty response (RFC 4954 4), else strict base64."""
    if text == b"=":
        return b""
    if not text:
        # RFC 4954 4: an empty line is not an empty response (that is "="); nobody sends it on
        # purpose, but some clients do for LOGIN's empty password. Take it as empty.
        return b""
    try:
        return b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SASLError("cannot base64-decode the response") from None


def encode_challenge(challenge: bytes) -> str:
    """The text after ``334 ``: base64, or nothing for an empty challenge (RFC 4954 4)."""
    return b64encode(challenge).decode("ascii") if challenge else ""


class Mechanism:
    """One exchange. ``step(None)`` starts it without an initial response; ``step(data)`` feeds
    the (decoded) initial response or a response to the last challenge."""

    name: ClassVar[str]

    def step(self, response: bytes | None) -> bytes | SASLCredentials:
        raise NotImplementedError


def _field(value: bytes, what: str, *, empty_ok: bool = False) -> bytes:
    if not value and not empty_ok:
        raise SASLError(f"empty {what}")
    if len(value) > MAX_FIELD:
        raise SASLError(f"{what} too long")
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError(f"{what} is not UTF-8") from None
    return value


class Plain(Mechanism):
    """RFC 4616: one message ``[authzid] NUL authcid NUL passwd``; an empty challenge first when
    the client sent no initial response."""

    name = "PLAIN"

    def __init__(self) -> None:
        self._challenged = False

    def step(self, response: bytes | None) -> bytes | SASLCredentials:
        if response is None:
            if self._challenged:
                raise SASLError("no response")
            self._challenged = True
            return b""
        parts = response.split(b"\x00")
        if len(parts) != 3:
            raise SASLError("PLAIN message must be authzid NUL authcid NUL password")
        authzid, authcid, password = parts
        return SASLCredentials(
            authcid=_field(authcid, "authentication identity"),
            password=_field(password, "password"),
            authzid=_field(authzid, "authorization identity", empty_ok=True),
        )


class Login(Mechanism):
    """The LOGIN mechanism (draft-murchison-sasl-login): "Username:" then "Password:". An initial
    response, when sent, is the user name."""

    name = "LOGIN"
    USERNAME = b"Username:"
    PASSWORD = b"Password:"

    def __init__(self) -> None:
        self._username: bytes | None = None
        self._started = False

    def step(self, response: bytes | None) -> bytes | SASLCredentials:
        if response is None:
            if self._started:
                raise SASLError("no response")
            self._started = True
            return self.USERNAME
        self._started = True
        if self._username is None:
            self._username = _field(response, "user name")
            return self.PASSWORD
        return SASLCredentials(self._username, _field(response, "password"))


MECHANISMS: dict[str, type[Mechanism]] = {"PLAIN": Plain, "LOGIN": Login}


def mechanism(name: str) -> Mechanism | None:
    """A fresh exchange for ``name`` (case-insensitive, RFC 4422 3.1), or None if unknown."""
    cls = MECHANISMS.get(name.upper())
    return cls() if cls is not None else None
