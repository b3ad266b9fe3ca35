"""A sandbox on a running mailhub, for a test: its own inbox on a shared server (issue 15).

Blocking (urllib for the web API, smtplib for SMTP): for pytest, each pytest-xdist worker, or
any process that can reach the server's web port. ``mailhub.testing`` makes these for the
servers it runs, and ``mailhub.pytest_plugin`` gives each test one::

    box = SandboxClient.create("http://127.0.0.1:8025", name="test_signup")
    my_app.sign_up("new-user@example.com", smtp=box.smtp_settings())   # any recipients
    assert box.wait_for_message(to="new-user@example.com").subject == "Welcome"
    box.add_fault({"stage": "rcpt", "action": "reply", "code": 450})   # this sandbox only
    box.delete()                                                        # and all its mail

``wait_for_message`` returns the oldest matching message that no earlier wait of this client
returned, at once if it is there already: send-then-wait has no race.
"""

from __future__ import annotations

import email.policy
import json
import smtplib
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any

from mailhub.web import parse

SMTP_POLICY = email.policy.SMTP
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


class SandboxAPIError(Exception):
    """The web API answered an error: ``status`` and the server's ``message``."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.body = status, message, body


class MessageTimeout(AssertionError):
    """No matching message arrived in time (an AssertionError: a test failure, not an error)."""


class ParsedMessage:
    """What a test reads of a message it holds as ``raw`` octets (a sandbox's caught message,
    ``mailhub.testing.Delivered``): parsed by the web API's one rule, and its plain text."""

    raw: bytes

    @property
    def message(self) -> EmailMessage:
        # policy.default, robust as the web API's (header octets as text by one rule)
        return parse.load(self.raw)

    @property
    def text(self) -> str:
        """The plain-text body (the first text/plain part), or ""."""
        part = self.message.get_body(preferencelist=("plain",))
        return part.get_content() if part is not None else ""


def outgoing(
    to: str | Sequence[str],
    subject: str,
    body: str,
    sender: str,
    message: EmailMessage | bytes | None,
) -> tuple[list[str], bytes]:
    """The recipients and the octets of a message to send: ``message`` as given, or a plain
    one from ``sender`` to ``to`` with ``subject`` and ``body``."""
    recipients = [to] if isinstance(to, str) else list(to)
    if message is None:
        message = EmailMessage()
        message["From"] = sender
        message["To"] = ", ".join(recipients)
        message["Subject"] = subject
        message.set_content(body)
    # SMTP wants CRLF line ends (a bare LF is refused: RFC 5321 2.3.8).
    data = message if isinstance(message, bytes) else message.as_bytes(policy=SMTP_POLICY)
    return recipients, data


@dataclass(frozen=True)
class CaughtMessage(ParsedMessage):
    """A message caught in a sandbox: the API's summary and the raw octets."""

    id: str
    summary: Mapping[str, Any] = field(repr=False)
    raw: bytes = field(repr=False)

    @property
    def subject(self) -> str:
        return str(self.summary.get("subject", ""))

    @property
    def recipients(self) -> list[str]:
        """The envelope's recipients (``X-Original-To``: Bcc too) and the To and Cc header
        addresses, lower case."""
        msg = self.message
        fields = msg.get_all("X-Original-To", []) + msg.get_all("To", []) + msg.get_all("Cc", [])
        found = [a.lower() for _n, a in getaddresses(fields) if a]
        return list(dict.fromkeys(found))


class SandboxClient:
    """One sandbox, through the web API at ``api_url`` (``http://host:port``)."""

    def __init__(
        self, api_url: str, info: Mapping[str, Any], password: str, timeout: float = 30.0
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.info, self.password, self.timeout = dict(info), password, timeout
        self.id: str = info["id"]
        self.username: str = info["username"]
        self._returned: set[str] = set()

    def __repr__(self) -> str:
        return f"<SandboxClient {self.id} at {self.api_url}>"

    # --- making and removing ---------------------------------------------------------------

    @classmethod
    def create(
        cls, api_url: str, name: str = "", *, ttl: float | None = None, timeout: float = 30.0
    ) -> SandboxClient:
        """A new sandbox on the server at ``api_url``; with ``ttl`` the server deletes it that
        many seconds later (if a run dies before its clean-up)."""
        body: dict[str, Any] = {"name": name}
        if ttl is not None:
            body["ttl"] = ttl
        info = _call(api_url.rstrip("/"), "POST", "/api/v1/sandboxes", body, timeout)
        return cls(api_url, info, info["password"], timeout)

    def delete(self) -> None:
        """Remove the sandbox, its mail and its fault rules (gone already: fine)."""
        try:
            self._call("DELETE", "")
        except SandboxAPIError as e:
            if e.status != 404:
                raise

    def __enter__(self) -> SandboxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    # --- where to send ---------------------------------------------------------------------

    @property
    def login(self) -> tuple[str, str]:
        """(user name, password) for SMTP AUTH, IMAP and POP3."""
        return self.username, self.password

    def address(self, kind: str = "smtp") -> tuple[str, int]:
        """(host, port) of one listener kind (smtp, submission, imap, pop3, ...)."""
        listener = self.info.get("listeners", {}).get(kind)
        if listener is None:
            raise LookupError(f"the server has no {kind} listener")
        host = listener["host"]
        if host in WILDCARDS:  # bound to every address: reach it where the API is
            host = urllib.parse.urlsplit(self.api_url).hostname or "127.0.0.1"
        return host, int(listener["port"])

    def smtp_settings(self, kind: str = "smtp") -> dict[str, Any]:
        """What an application's SMTP settings need: host, port, username, password."""
        host, port = self.address(kind)
        return {"host": host, "port": port, "username": self.username, "password": self.password}

    def smtp_client(
        self, kind: str = "smtp", context: ssl.SSLContext | None = None
    ) -> smtplib.SMTP:
        """A blocking smtplib client, logged in as the sandbox (``smtps``: TLS from the first
        byte, verified with ``context``; the others in plain text, as the dev stack allows
        AUTH on loopback)."""
        host, port = self.address(kind)
        if kind == "smtps":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                host, port, timeout=self.timeout, context=context
            )
        else:
            client = smtplib.SMTP(host, port, timeout=self.timeout)
        try:
            client.login(self.username, self.password)
        except BaseException:
            client.close()
            raise
        return client

    def send(
        self,
        to: str | Sequence[str],
        subject: str = "Test message",
        body: str = "Sent by mailhub.testing.\n",
        *,
        sender: str = "sender@example.com",
        message: EmailMessage | bytes | None = None,
        kind: str = "smtp",
        context: ssl.SSLContext | None = None,
    ) -> dict[str, tuple[int, bytes]]:
        """Send one message into the sandbox (any recipients); smtplib's answer."""
        recipients, data = outgoing(to, subject, body, sender, message)
        with self.smtp_client(kind, context) as client:
            return client.sendmail(sender, recipients, data)

    # --- what it caught --------------------------------------------------------------------

    def messages(self, query: str = "", limit: int = 1000) -> list[dict[str, Any]]:
        """Summaries of its messages, newest first (``query``: the API's search)."""
        params = urllib.parse.urlencode({"q": query, "limit": limit})
        return list(self._call("GET", f"/messages?{params}")["messages"])

    def message(self, message_id: str) -> CaughtMessage:
        summary = self._call("GET", f"/messages/{urllib.parse.quote(message_id)}")
        raw = self._call("GET", f"/messages/{urllib.parse.quote(message_id)}/raw", raw=True)
        return CaughtMessage(message_id, summary, raw)

    def clear(self) -> int:
        """Delete every message in it; how many."""
        return len(self._call("DELETE", "/messages")["deleted"])

    def wait_for_message(
        self, *, to: str | None = None, subject: str | None = None, timeout: float = 10.0
    ) -> CaughtMessage:
        """The oldest message (``to`` one of its recipients: envelope, To or Cc; ``subject`` a
        substring) no earlier wait returned; waits up to ``timeout`` seconds on the server
        (``/wait``, a long poll)."""
        deadline = time.monotonic() + timeout
        since: str | None = None
        # The subject is searched on the server; the recipients here (the envelope's too).
        params = {"subject": subject} if subject is not None else {}
        while True:
            left = max(0.0, deadline - time.monotonic())
            asked = {**params, "timeout": f"{left:.3f}"}
            if since is not None:
                asked["since"] = since
            query = urllib.parse.urlencode(asked)
            try:
                answer = self._call("GET", f"/wait?{query}", timeout=left + self.timeout)
            except SandboxAPIError as e:
                if e.status == 408:
                    pairs = (("to", to), ("subject", subject))
                    wanted = ", ".join(f"{k}={v!r}" for k, v in pairs if v is not None) or "any"
                    raise MessageTimeout(
                        f"no message ({wanted}) in sandbox {self.id} within {timeout} s"
                    ) from None
                raise
            for summary in answer["messages"]:
                if summary["id"] in self._returned:
                    continue
                try:
                    found = self.message(summary["id"])
                except SandboxAPIError as e:
                    if e.status == 404:
                        continue  # deleted meanwhile
                    raise
                if to is None or to.lower() in found.recipients:
                    self._returned.add(summary["id"])
                    return found
            since = answer["cursor"]  # none of these: wait for newer ones

    # --- its fault rules -------------------------------------------------------------------

    def add_fault(self, rule: Mapping[str, Any]) -> str:
        """A fault rule for this sandbox's SMTP sessions only (stage mail, rcpt or data)."""
        return str(self._call("POST", "/faults", dict(rule))["id"])

    def remove_fault(self, rule_id: str) -> None:
        self._call("DELETE", f"/faults/{urllib.parse.quote(rule_id)}")

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def faults(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/faults")["rules"])

    # --- HTTP ------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bool = False,
        timeout: float | None = None,
    ) -> Any:
        where = f"/api/v1/sandboxes/{urllib.parse.quote(self.id)}{path}"
        return _call(self.api_url, method, where, body, timeout or self.timeout, raw=raw)


def _call(
    base: str, method: str, path: str, body: Any, timeout: float, *, raw: bool = False
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            content = response.read()
    except urllib.error.HTTPError as e:
        content = e.read()
        try:
            answer = json.loads(content)
            message = answer.get("error", "")
        except ValueError:
            answer, message = None, content.decode("utf-8", "replace")
        raise SandboxAPIError(e.code, message, answer) from None
    return content if raw else json.loads(content)
