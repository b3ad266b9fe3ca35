"""A whole mailhub inside a test: free ports, a temporary directory, a test CA, helpers.

Trial (the reactor runs the test; helpers return Deferreds)::

    class SignupMail(TestCase):
        async def test_welcome_mail(self):
            hub = await MailhubTestServer.started(self)   # stopped by the test's cleanup
            await hub.send("new-user@example.com", subject="Welcome")
            message = await hub.wait_for_message(to="new-user@example.com")
            self.assertEqual(message.subject, "Welcome")

pytest (no reactor in the test; the helpers block, the reactor runs in a thread)::

    @pytest.fixture
    def mailhub(tmp_path):
        with mailhub.testing.running(tmp_path) as hub:
            yield hub

    def test_welcome_mail(mailhub):
        my_app.sign_up("new-user@example.com", smtp_port=mailhub.smtp_port)
        assert mailhub.wait_for_message(to="new-user@example.com").subject == "Welcome"

Tests sharing one server each take a sandbox (an inbox of their own: mail sent with its login,
to anyone, lands there only; waits and fault rules are its own): ``create_sandbox()`` here,
``hub.sandbox()`` with ``running()``, ``SandboxClient`` from any process, and the fixtures of
``mailhub.pytest_plugin`` (one server per run, pytest-xdist workers included).

``wait_for_message`` never misses a message that arrived before it was called: it looks at
everything delivered after its cursor (by default: since the server started, minus the messages
earlier waits returned), so send-then-wait has no race. It uses the server's own change feed
(``mailhub.web.feed``, the one behind the web API's ``/wait``): a wait is woken by the delivery
itself (inotify), not by polling the store.

Everything runs with the development stack's behaviour (every address is accepted and kept;
the inbound checks, which ask the DNS, are off unless ``checks=`` turns them on),
on 127.0.0.1 port 0, with a certificate for ``localhost``/``127.0.0.1`` signed by a throw-away
CA (``ca_file``, ``client_context()``) so clients can really verify TLS. ``faults`` are the
server's fault rules (``mailhub.faults``); bad certificates are signed by the same CA, so each
is bad only in the way the rule says.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import smtplib
import ssl
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer, threads

from mailhub.config import Config, FaultsConfig, ListenersConfig, TLSConfig, dev_config
from mailhub.faults.certificates import CertificateIssuer
from mailhub.faults.rules import FaultRules, Rule
from mailhub.message.header_text import from_escaped
from mailhub.sandboxclient import (
    CaughtMessage,
    MessageTimeout,
    ParsedMessage,
    SandboxAPIError,
    SandboxClient,
    outgoing,
)
from mailhub.service import FACTORIES, MailhubService, build
from mailhub.store.errors import StoreError
from mailhub.tls import subject_alt_names
from mailhub.web import codes, links, parse
from mailhub.web.feed import Change, Entry, MailFeed, arrival_order
from mailhub.web.ids import MessageRef

__all__ = [
    "BlockingMailhub",
    "CaughtMessage",
    "Cursor",
    "Delivered",
    "MailhubTestServer",
    "MessageTimeout",
    "SandboxAPIError",
    "SandboxClient",
    "TestCA",
    "running",
]

LOOPBACK_ANY_PORT = "tcp:0:interface=127.0.0.1"
# Seconds between whole scans of the store when inotify cannot report deliveries (not Linux):
# the feed's fallback, not a poll of the waits (they are woken by the feed's changes).
FEED_POLL_INTERVAL = 1.0


# --- a throw-away certificate authority -----------------------------------------------------------


@dataclass(frozen=True)
class TestCA:
    """A root CA and a server certificate it signed for localhost and 127.0.0.1."""

    __test__ = False  # not a pytest test class

    ca_file: Path  # the root, PEM: what a client trusts
    certificate_file: Path  # the server's certificate, PEM
    key_file: Path  # its key
    issuer: CertificateIssuer  # for the bad certificates of fault rules

    @classmethod
    def create(cls, directory: Path, names: Sequence[str] = ("localhost", "127.0.0.1")) -> TestCA:
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        day = datetime.timedelta(days=1)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailhub.testing CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - day)
            .not_valid_after(now + 30 * day)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        general = subject_alt_names(names)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - day)
            .not_valid_after(now + 30 * day)
            .add_extension(x509.SubjectAlternativeName(general), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        ca_file = directory / "test-ca.pem"
        ca_file.write_bytes(ca.public_bytes(pem))
        certificate_file = directory / "server-cert.pem"
        certificate_file.write_bytes(leaf.public_bytes(pem))
        key_file = directory / "server-key.pem"
        key_file.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        return cls(ca_file, certificate_file, key_file, CertificateIssuer(ca, ca_key))

    def client_context(self, *, check_hostname: bool = True) -> ssl.SSLContext:
        """A client context that trusts only this CA and really verifies."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.check_hostname = check_hostname
        return ctx


# --- messages -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivered(ParsedMessage):
    """A message as the store holds it."""

    mailbox: str  # the address it was delivered to
    folder: str
    uid: int
    key: str  # the Maildir base name: unique and stable
    internaldate: int
    raw: bytes

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))

    @property
    def recipients(self) -> list[str]:
        """The mailbox plus the To and Cc header addresses, lower case; in a sandbox also the
        envelope's (``X-Original-To``: Bcc too)."""
        msg = self.message
        fields = msg.get_all("To", []) + msg.get_all("Cc", []) + msg.get_all("X-Original-To", [])
        found = [a for _n, a in getaddresses(fields)]
        return [self.mailbox.lower(), *(from_escaped(a).lower() for a in found if a)]

    # -- links and one-time codes (as /api/v1/messages/{id}/links and /codes find them) ----------

    def links(self, *, kind: str | None = "link") -> list[links.Link]:
        """The links of the text and HTML parts, in order, with anchor text (``kind=None``:
        images too; "image": only images). At most ``links.MAX_LINKS``."""
        d = parse.detail(self.message)
        found = links.extract(d.text, d.html).links
        return [link for link in found if kind is None or link.kind == kind]

    def codes(self) -> list[codes.Code]:
        """The one-time codes in the message, best first (``mailhub.web.codes``)."""
        d = parse.detail(self.message)
        return codes.find_codes(d.summary.subject, d.text, d.html)

    @property
    def code(self) -> str:
        """The message's one-time code ("Your code is 482913" -> "482913"); CodeNotFound when
        it has none."""
        found = self.codes()
        if not found:
            raise CodeNotFound(f"no one-time code in {self.subject!r}: {self.text[:200]!r}")
        return found[0].code


class CodeNotFound(AssertionError):
    """The message holds nothing that reads as a one-time code."""


@dataclass(frozen=True)
class Cursor:
    """A point in the store's history: the server's arrival sequence number then (every
    message gets the next one when the server's feed notices it)."""

    seq: int


def _matches(
    m: Delivered,
    to: str | None,
    subject: str | None,
    match: Callable[[Delivered], bool] | None,
    sandbox: SandboxClient | None = None,
) -> bool:
    if sandbox is not None and m.mailbox != sandbox.username:
        return False
    if to is not None and to.lower() not in m.recipients:
        return False
    if subject is not None and subject not in m.subject:
        return False
    return match is None or match(m)


# --- the server -----------------------------------------------------------------------------------


class MailhubTestServer:
    """One in-process mailhub on free ports. Helpers return Deferreds: call them on the reactor
    thread (trial tests, ``async def`` tests). For blocking helpers use ``running()``.

    ``changes`` replace fields of the dev ``Config`` (``limits=...``, ``smtp=...``), ``tls``
    too (default: the test CA's certificate; ``TLSConfig()`` gives the dev stack's own
    self-signed one); ``faults`` are rules in force from the start (``Rule`` objects or
    dicts); ``services`` names the listeners to start (default: every kind this version
    serves, ``service.FACTORIES``), each on 127.0.0.1 port 0. ``listeners`` instead gives
    the endpoints themselves (a ``ListenersConfig``: several of a kind, ``tcp6:0:...``).
    ``config`` runs a whole ``Config`` of the caller's own instead of the dev stack's
    (production-style: ``dev=False``, a users file, certificates of its own) as it is.
    ``preload`` is a directory of ``.eml`` fixtures (each into the mailboxes of its To/Cc) or
    a ``mailhub export`` tree, imported before the server starts (``messages()`` lists them;
    waits return only what arrives after the start)."""

    def __init__(
        self,
        directory: Path | str,
        *,
        faults: Sequence[Rule | Mapping[str, Any]] = (),
        services: Sequence[str] | None = None,
        listeners: ListenersConfig | None = None,
        config: Config | None = None,
        preload: Path | str | None = None,
        **changes: Any,
    ) -> None:
        self.directory = Path(directory).absolute()
        # .eml fixtures (or a `mailhub export` tree, or mbox) put in the store before start
        self.preload = Path(preload) if preload is not None else None
        self.ca = TestCA.create(self.directory / "tls")
        if config is None:
            config = self._dev_config(faults, services, listeners, changes)
        elif faults or services is not None or listeners is not None or changes:
            raise ValueError("a whole config comes as it is: no other arguments with it")
        self.config: Config = config
        self.service: MailhubService | None = None
        self.ports: dict[str, int] = {}
        self.feed: MailFeed | None = None  # the change feed waits use (the web listener's)
        self._own_feed = False
        self._returned: set[str] = set()  # ids of the messages waits without since returned
        self._start_cursor = Cursor(0)

    def _dev_config(
        self,
        faults: Sequence[Rule | Mapping[str, Any]],
        services: Sequence[str] | None,
        listeners: ListenersConfig | None,
        changes: dict[str, Any],
    ) -> Config:
        if listeners is None:
            kinds = tuple(FACTORIES) if services is None else tuple(services)
            unknown = [k for k in kinds if k not in FACTORIES]
            if unknown:
                raise ValueError(
                    f"no such listeners: {unknown}; this version serves {list(FACTORIES)}"
                )
            listeners = ListenersConfig(**{key: (LOOPBACK_ANY_PORT,) for key in kinds})
        elif services is not None:
            raise ValueError("give services (kinds on port 0) or listeners (endpoints), not both")
        # Checked here (FaultError at once), then kept as the config keeps [[faults.rule]] tables.
        rules = tuple((r if isinstance(r, Rule) else Rule.from_dict(r)).to_dict() for r in faults)
        base = dev_config(self.directory / "data")
        fields: dict[str, Any] = {
            # No test asks the DNS of the world: the inbound checks are off unless the test
            # turns them on (``checks=`` with ``nameservers`` of its own DNS server).
            "checks": dataclasses.replace(base.checks, enabled=False),
            "listeners": listeners,
            "tls": TLSConfig(certificate=self.ca.certificate_file, key=self.ca.key_file),
            "faults": FaultsConfig(rules=rules),
        }
        return dataclasses.replace(base, **(fields | changes))

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Build and start the service (on the reactor thread); the ports are known after."""
        service = build(self.config)
        if self.preload is not None:
            from mailhub.transfer import import_path

            import_path(service.store, self.preload)
        service.faults.certificate_issuer = self.ca.issuer
        service.privilegedStartService()
        service.startService()
        self.service = service
        self.ports = {
            key: service.listening_ports(key)[0].getHost().port
            for key in FACTORIES
            if service.listening_ports(key)
        }
        web = service.listening_ports("web")
        if web:
            factory = web[0].factory
            factory = getattr(factory, "wrappedFactory", factory)  # haproxy: wraps the site
            self.feed = factory.feed
        else:
            from twisted.internet import reactor

            # The server's own change feed (retention listens to it too): one look at the
            # store for both, not two.
            self.feed = MailFeed(
                service.store, reactor, poll_interval=FEED_POLL_INTERVAL, changes=service.changes
            )
            self.feed.startService()
            self._own_feed = True
        self._start_cursor = self.cursor()

    def stop(self) -> defer.Deferred[Any]:
        service, self.service = self.service, None
        if service is None:
            return defer.succeed(None)
        if self._own_feed and self.feed is not None and self.feed.running:
            self.feed.stopService()
        return defer.maybeDeferred(service.stopService)

    @classmethod
    async def started(cls, test: Any, **kwargs: Any) -> MailhubTestServer:
        """A started server in a fresh directory of a trial test, stopped at its cleanup."""
        hub = cls(Path(test.mktemp()), **kwargs)
        hub.start()
        test.addCleanup(hub.stop)
        return hub

    # -- facts ---------------------------------------------------------------------------------

    @property
    def smtp_port(self) -> int:
        return self.ports["smtp"]

    @property
    def submission_port(self) -> int:
        return self.ports["submission"]

    @property
    def smtps_port(self) -> int:
        return self.ports["smtps"]

    @property
    def ca_file(self) -> Path:
        return self.ca.ca_file

    def client_context(self, *, check_hostname: bool = True) -> ssl.SSLContext:
        return self.ca.client_context(check_hostname=check_hostname)

    @property
    def faults(self) -> FaultRules:
        assert self.service is not None, "start the server first"
        return self.service.faults

    @property
    def api_url(self) -> str:
        """The web API's base URL (``http://127.0.0.1:<port>``)."""
        return f"http://127.0.0.1:{self.ports['web']}"

    async def create_sandbox(self, name: str = "") -> SandboxClient:
        """A new sandbox (its own inbox: mail sent with ``box.login``, to anyone, lands there
        only; ``wait_for_message(sandbox=box)`` looks there only). Its blocking helpers use the
        web API: call them from threads, or use this server's helpers."""
        assert self.service is not None, "start the server first"
        sandboxes = self.service.sandboxes
        if sandboxes is None:
            raise RuntimeError("sandboxes are off in this server's config ([sandboxes])")
        box, password = await sandboxes.create(name)
        info = {
            "id": box.id,
            "name": box.name,
            "username": box.address,
            "listeners": {
                kind: {"host": "127.0.0.1", "port": port} for kind, port in self.ports.items()
            },
        }
        return SandboxClient(self.api_url if "web" in self.ports else "", info, password)

    # -- mail ----------------------------------------------------------------------------------

    def smtp_client(self, port: str = "smtp", timeout: float = 10) -> smtplib.SMTP:
        """A blocking smtplib client connected to one listener (use it in a thread)."""
        if port == "smtps":
            return smtplib.SMTP_SSL(
                "localhost", self.ports[port], timeout=timeout, context=self.client_context()
            )
        return smtplib.SMTP("127.0.0.1", self.ports[port], timeout=timeout)

    def send_blocking(
        self,
        to: str | Sequence[str],
        subject: str = "Test message",
        body: str = "Sent by mailhub.testing.\n",
        *,
        sender: str = "sender@example.com",
        message: EmailMessage | bytes | None = None,
        port: str = "smtp",
        starttls: bool = False,
        login: tuple[str, str] | None = None,
    ) -> dict[str, tuple[int, bytes]]:
        """Send one message with smtplib (blocking: not on the reactor thread). Returns the
        refused recipients as smtplib does; raises smtplib's exceptions when it fails."""
        recipients, data = outgoing(to, subject, body, sender, message)
        with self.smtp_client(port) as client:
            if starttls:
                client.starttls(context=self.client_context())
            if login is not None:
                client.login(*login)
            return client.sendmail(sender, recipients, data)

    def send(self, *args: Any, **kwargs: Any) -> defer.Deferred[dict[str, tuple[int, bytes]]]:
        """``send_blocking`` in a thread, so the reactor keeps serving it."""
        return threads.deferToThread(self.send_blocking, *args, **kwargs)

    def _entries(self, mailbox: str | None = None) -> list[tuple[str, str, Any, Any]]:
        """(address, folder name, MessageInfo, Folder) of every message, oldest first."""
        assert self.service is not None, "start the server first"
        store = self.service.store
        found: list[tuple[str, str, Any, Any]] = []
        boxes = [mailbox.lower()] if mailbox is not None else store.mailboxes()
        for address in boxes:
            if not store.has_mailbox(address):
                continue
            box = store.mailbox(address)
            for name in box.list_folders():
                try:
                    folder = box.folder(name)
                    found.extend((address, name, i, folder) for i in folder.sync().messages)
                except StoreError:
                    continue  # deleted while we looked
        found.sort(key=lambda e: arrival_order(e[2].internaldate, e[2].key))
        return found

    @staticmethod
    def _read(entry: tuple[str, str, Any, Any]) -> Delivered | None:
        address, name, info, folder = entry
        try:
            raw = folder.read_message(info.uid)
        except StoreError:
            return None  # expunged meanwhile
        return Delivered(address, name, info.uid, info.key, info.internaldate, raw)

    def messages(self, mailbox: str | None = None) -> list[Delivered]:
        """Every message in the store (or in one mailbox), oldest first, all folders."""
        return [m for m in map(self._read, self._entries(mailbox)) if m is not None]

    @staticmethod
    def links(message: Delivered, *, kind: str | None = "link") -> list[links.Link]:
        """``message.links()``: its links with anchor text (test code reads well either way)."""
        return message.links(kind=kind)

    @staticmethod
    def code(message: Delivered) -> str:
        """``message.code``: its one-time code, or CodeNotFound."""
        return message.code

    def cursor(self) -> Cursor:
        """Now, as a point to wait from: only messages arriving after it count."""
        return Cursor(self._feed().seq)

    def _feed(self) -> MailFeed:
        """The feed, caught up with every delivery made before this call."""
        assert self.feed is not None, "start the server first"
        self.feed.catch_up()
        return self.feed

    def _delivered(self, entry: Entry) -> Delivered | None:
        assert self.feed is not None
        try:
            raw = self.feed.raw(entry)
        except (StoreError, OSError):
            return None  # expunged meanwhile
        ref = entry.ref
        return Delivered(ref.mailbox, ref.folder, entry.uid, ref.key, entry.received, raw)

    def _returning(self, m: Delivered, since: Cursor | None) -> Delivered:
        if since is None:  # the waits' own cursor moves past it
            self._returned.add(MessageRef(m.mailbox, m.folder, m.key).id)
        return m

    def _first_match(
        self,
        entries: Iterable[Entry],
        since: Cursor | None,
        wanted: Callable[[Delivered], bool],
    ) -> Delivered | None:
        after = since.seq if since is not None else self._start_cursor.seq
        for entry in entries:
            if entry.seq <= after or (since is None and entry.id in self._returned):
                continue
            m = self._delivered(entry)
            if m is not None and wanted(m):
                return m
        return None

    def find(
        self,
        *,
        to: str | None = None,
        subject: str | None = None,
        match: Callable[[Delivered], bool] | None = None,
        since: Cursor | None = None,
        sandbox: SandboxClient | None = None,
    ) -> Delivered | None:
        """The oldest matching message after ``since`` (default: the waits' own cursor), in
        ``sandbox`` only when given."""
        feed = self._feed()
        after = since.seq if since is not None else self._start_cursor.seq
        return self._first_match(
            feed.after(after), since, lambda m: _matches(m, to, subject, match, sandbox)
        )

    def wait_for_message(
        self,
        *,
        to: str | None = None,
        subject: str | None = None,
        match: Callable[[Delivered], bool] | None = None,
        since: Cursor | None = None,
        timeout: float = 10.0,
        sandbox: SandboxClient | None = None,
    ) -> defer.Deferred[Delivered]:
        """The oldest message matching ``to`` (an address: the mailbox, To or Cc), ``subject``
        (a substring) and ``match``, delivered after ``since``; at once if one is already
        there. Without ``since``: delivered since the server started and not returned by an
        earlier wait. ``sandbox``: in that sandbox only. Fails with MessageTimeout after
        ``timeout`` seconds.

        Race-free: the feed first numbers everything on disk (a message whose SMTP 250 came
        before the call is found), then the wait listens to the feed's changes from that very
        point - nothing runs in between, on the reactor thread."""
        from twisted.internet import reactor

        def wanted(m: Delivered) -> bool:
            return _matches(m, to, subject, match, sandbox)

        feed = self._feed()
        after = since.seq if since is not None else self._start_cursor.seq
        found = self._first_match(feed.after(after), since, wanted)
        if found is not None:
            return defer.succeed(self._returning(found, since))
        done: defer.Deferred[Delivered] = defer.Deferred()

        def changed(changes: list[Change]) -> None:
            if done.called:
                return
            new = [c.entry for c in changes if c.kind == "new"]
            m = self._first_match(new, since, wanted)
            if m is not None:
                done.callback(self._returning(m, since))

        def give_up() -> None:
            if not done.called:
                wanted_text = ", ".join(
                    f"{k}={v!r}" for k, v in (("to", to), ("subject", subject)) if v is not None
                )
                done.errback(
                    MessageTimeout(
                        f"no message ({wanted_text or 'any'}) within {timeout} s; the store "
                        f"holds {feed.count()}"
                    )
                )

        unsubscribe = feed.subscribe(changed)
        timer = reactor.callLater(timeout, give_up)

        def finished(result: Any) -> Any:
            unsubscribe()
            if timer.active():
                timer.cancel()
            return result

        return done.addBoth(finished)


# --- blocking helpers for tests without a reactor (pytest) --------------------------------------

_reactor_thread: threading.Thread | None = None
_reactor_lock = threading.Lock()


def _reactor_in_thread() -> Any:
    """The global reactor, running in a daemon thread (started on first use, kept for the rest
    of the process: a Twisted reactor cannot be restarted)."""
    global _reactor_thread
    from twisted.internet import reactor

    with _reactor_lock:
        if _reactor_thread is None:
            # Under trial the reactor belongs to the test runner, even between its runs.
            if reactor.running or "twisted.trial.runner" in sys.modules:
                raise RuntimeError(
                    "the reactor already runs here (a trial test?): use MailhubTestServer, "
                    "whose helpers return Deferreds, instead of mailhub.testing.running()"
                )
            _reactor_thread = threading.Thread(
                target=reactor.run,
                kwargs={"installSignalHandlers": False},
                name="mailhub.testing reactor",
                daemon=True,
            )
            _reactor_thread.start()
    return reactor


class BlockingMailhub:
    """``MailhubTestServer`` with blocking helpers; the reactor runs in another thread."""

    def __init__(self, server: MailhubTestServer, reactor: Any) -> None:
        self.server, self._reactor = server, reactor

    def _call(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return threads.blockingCallFromThread(self._reactor, f, *args, **kwargs)

    ports = property(lambda self: self.server.ports)
    smtp_port = property(lambda self: self.server.smtp_port)
    submission_port = property(lambda self: self.server.submission_port)
    smtps_port = property(lambda self: self.server.smtps_port)
    ca_file = property(lambda self: self.server.ca_file)
    directory = property(lambda self: self.server.directory)

    def client_context(self, *, check_hostname: bool = True) -> ssl.SSLContext:
        return self.server.client_context(check_hostname=check_hostname)

    def send(self, *args: Any, **kwargs: Any) -> dict[str, tuple[int, bytes]]:
        return self.server.send_blocking(*args, **kwargs)

    def messages(self, mailbox: str | None = None) -> list[Delivered]:
        return self._call(self.server.messages, mailbox)

    def cursor(self) -> Cursor:
        return self._call(self.server.cursor)

    def wait_for_message(self, **kwargs: Any) -> Delivered:
        return self._call(self.server.wait_for_message, **kwargs)

    links = staticmethod(MailhubTestServer.links)
    code = staticmethod(MailhubTestServer.code)

    def add_fault(self, rule: Rule | Mapping[str, Any]) -> str:
        """Add a fault rule (on the reactor thread); its id."""
        return self._call(lambda: self.server.faults.add(rule))

    def remove_fault(self, rule_id: str) -> bool:
        return self._call(lambda: self.server.faults.remove(rule_id))

    def clear_faults(self) -> int:
        return self._call(lambda: self.server.faults.clear())

    def list_faults(self) -> list[dict[str, Any]]:
        return self._call(lambda: self.server.faults.list())

    @property
    def api_url(self) -> str:
        return self.server.api_url

    def sandbox(self, name: str = "") -> SandboxClient:
        """A new sandbox on this server (through its web API): a test's own inbox, faults and
        waits; ``delete()`` it (or use it as a context manager) when done."""
        return SandboxClient.create(self.api_url, name)


@contextlib.contextmanager
def running(
    directory: Path | str | None = None,
    **kwargs: Any,
) -> Iterator[BlockingMailhub]:
    """A started mailhub with blocking helpers, for tests that do not run a reactor (pytest).
    ``directory`` defaults to a new temporary one, removed afterwards."""
    reactor = _reactor_in_thread()
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="mailhub-"))
        server = MailhubTestServer(directory, **kwargs)
        threads.blockingCallFromThread(reactor, server.start)
        try:
            yield BlockingMailhub(server, reactor)
        finally:
            threads.blockingCallFromThread(reactor, server.stop)
