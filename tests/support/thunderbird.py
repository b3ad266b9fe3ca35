"""Run a real, unmodified Thunderbird headless and drive it through Marionette.

- ``Thunderbird``: a throw-away profile (``user.js`` prefs for one IMAP account, STARTTLS or
  implicit TLS, optionally sending through an SMTP submission server with a copy in Sent; an
  NSS certificate database trusting only the test CA, or nothing) and the
  ``thunderbird --headless --marionette`` process in its own process group, killed whatever
  happens.
- ``Marionette``: the few lines of Marionette's wire protocol the tests need (length-prefixed
  JSON over TCP: ``[0, id, command, params]`` answered by ``[1, id, error, result]``) to run
  chrome-privileged JavaScript, the same calls Thunderbird's own menus make.
- ``RecordingFactory``/``record``: wraps a listener's factory and keeps each connection's
  dialogue in clear text (above the STARTTLS layer, inside an implicit-TLS one) and how it
  ended, to find every tagged NO or BAD the server gave.
- ``offline_messages``: the messages of a folder's offline store (Thunderbird's mbox file).
- ``ThunderbirdCase``: a ServiceTestCase with a test CA's certificate, recorded listeners, a
  Thunderbird killed at the end, Maildir and offline-store readers and deadline-bound waits.
"""

from __future__ import annotations

import email
import email.policy
import inspect
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from twisted.internet import reactor, task
from twisted.internet.protocol import Factory
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

from mailhub.config import ListenersConfig, TLSConfig
from tests.support.service import ServiceTestCase
from tests.support.tls import CertificateAuthority
from tests.support.tools import requires, tool

STARTUP_TIMEOUT = 60  # seconds until Marionette listens; Thunderbird needs about three
SCRIPT_TIMEOUT = 30  # seconds one chrome script may run (Marionette's own default)

# Prefs that keep a new profile from reaching out or stopping at a first-run page.
QUIET_PREFS: dict[str, Any] = {
    "marionette.port": 0,  # any free port, written to <profile>/MarionetteActivePort
    "mail.shell.checkDefaultClient": False,
    "mailnews.start_page.enabled": False,
    "mail.provider.enabled": False,
    "mail.biff.play_sound": False,
    "mail.biff.show_alert": False,
    "app.update.enabled": False,
    "app.update.auto": False,
    "extensions.update.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
}


# nsMsgSocketType: how Thunderbird secures a connection (mail.server.*.socketType,
# mail.smtpserver.*.try_ssl).
PLAIN, STARTTLS, IMPLICIT_TLS = 0, 2, 3


@dataclass(frozen=True)
class ImapAccount:
    """One IMAP account as Thunderbird's account manager stores it in prefs; with
    ``smtp_port`` its identity sends through that SMTP (submission) server, STARTTLS and
    normal password, and keeps a copy in the account's Sent folder."""

    user: str
    host: str
    port: int
    socket_type: int = STARTTLS
    smtp_port: int | None = None

    @property
    def server_uri(self) -> str:
        """The account's root folder URI, as Thunderbird writes it."""
        return f"imap://{quote(self.user, safe='')}@{self.host}"

    def prefs(self, profile: Path) -> dict[str, Any]:
        prefs = {
            "mail.accountmanager.accounts": "account1,account2",
            "mail.accountmanager.defaultaccount": "account1",
            "mail.accountmanager.localfoldersserver": "server2",
            "mail.account.account1.identities": "id1",
            "mail.account.account1.server": "server1",
            "mail.account.account2.server": "server2",
            "mail.identity.id1.fullName": "Thunderbird test",
            "mail.identity.id1.useremail": self.user,
            "mail.identity.id1.valid": True,
            "mail.server.server1.type": "imap",
            "mail.server.server1.name": "mailhub",
            "mail.server.server1.hostname": self.host,
            "mail.server.server1.port": self.port,
            "mail.server.server1.userName": self.user,
            "mail.server.server1.socketType": self.socket_type,
            "mail.server.server1.authMethod": 3,  # normal password
            "mail.server.server1.directory": str(profile / "ImapMail" / self.host),
            "mail.server.server1.check_new_mail": True,
            "mail.server.server1.offline_download": True,  # keep messages for offline use
            "mail.server.server1.use_idle": True,
            # There is no password in the profile yet: the test stores one through Marionette
            # and then asks for mail, so nothing logs in (and prompts) before that.
            "mail.server.server1.login_at_startup": False,
            "mail.server.server2.type": "none",
            "mail.server.server2.name": "Local Folders",
            "mail.server.server2.hostname": "Local Folders",
            "mail.server.server2.userName": "nobody",
            "mail.server.server2.directory": str(profile / "Mail" / "Local Folders"),
        }
        if self.smtp_port is not None:
            prefs |= {
                "mail.smtpservers": "smtp1",
                "mail.smtp.defaultserver": "smtp1",
                "mail.smtpserver.smtp1.type": "smtp",
                "mail.smtpserver.smtp1.hostname": self.host,
                "mail.smtpserver.smtp1.port": self.smtp_port,
                "mail.smtpserver.smtp1.try_ssl": STARTTLS,
                "mail.smtpserver.smtp1.authMethod": 3,  # normal password: AUTH PLAIN or LOGIN
                "mail.smtpserver.smtp1.username": self.user,
                "mail.identity.id1.smtpServer": "smtp1",
                # "Place a copy in: Sent folder on this account", as the account wizard sets it.
                "mail.identity.id1.fcc": True,
                "mail.identity.id1.fcc_folder": f"{self.server_uri}/Sent",
                "mail.identity.id1.fcc_folder_picker_mode": "0",
            }
        return prefs


def user_js(prefs: dict[str, Any]) -> str:
    return "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())


class Thunderbird:
    """A headless Thunderbird on its own profile; ``start`` blocks (call it in a thread)."""

    def __init__(self, directory: Path, account: ImapAccount, ca_file: Path | None) -> None:
        """``ca_file`` None: the profile trusts no certificate authority at all."""
        self.directory = directory
        self.profile = directory / "profile"
        self.home = directory / "home"
        self.log_path = directory / "thunderbird.log"
        self.account = account
        self.ca_file = ca_file
        self.proc: subprocess.Popen[bytes] | None = None

    def make_profile(self) -> None:
        self.profile.mkdir(parents=True)
        self.home.mkdir(parents=True)
        nssdb = f"sql:{self.profile}"
        # The profile's own NSS database trusts the test CA for TLS servers ("C,,") and
        # nothing else is added: Thunderbird verifies mailhub's chain as it would a real one.
        subprocess.run(["certutil", "-N", "-d", nssdb, "--empty-password"], check=True)
        if self.ca_file is not None:
            trust = ["-n", "mailhub test CA", "-t", "C,,", "-i", str(self.ca_file)]
            subprocess.run(["certutil", "-A", "-d", nssdb, *trust], check=True)
        self.set_prefs()

    def set_prefs(self, **changes: Any) -> None:
        """(Re)write ``user.js``, read at every start; ``changes`` override account prefs
        (``login_at_startup=True`` sets mail.server.server1.login_at_startup)."""
        prefs = {**QUIET_PREFS, **self.account.prefs(self.profile)}
        prefs.update({f"mail.server.server1.{k}": v for k, v in changes.items()})
        (self.profile / "user.js").write_text(user_js(prefs))

    def start(self) -> Marionette:
        """Start on a new profile, or again on the same one after ``quit``."""
        if not self.profile.exists():
            self.make_profile()
        (self.profile / "MarionetteActivePort").unlink(missing_ok=True)
        env = {
            "HOME": str(self.home),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.home),
            "XDG_CACHE_HOME": str(self.home / "cache"),
            "XDG_CONFIG_HOME": str(self.home / "config"),
            "MOZ_HEADLESS": "1",
            "MOZ_CRASHREPORTER_DISABLE": "1",
        }
        argv = ["thunderbird", "--headless", "-no-remote", "--profile", str(self.profile)]
        # Marionette, with the chrome (system) access its scripts need to reach MailServices.
        argv += ["--marionette", "-remote-allow-system-access"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.home,
                start_new_session=True,  # one process group: kill() reaches every child
            )
        port_file = self.profile / "MarionetteActivePort"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"thunderbird exited with {self.proc.returncode}" + self.tail()
                )
            if port_file.exists() and port_file.read_text().strip():
                return Marionette(int(port_file.read_text()))
            time.sleep(0.1)
        raise AssertionError(f"Marionette did not listen within {STARTUP_TIMEOUT} s" + self.tail())

    def quit(self, marionette: Marionette) -> None:
        """Quit as the File menu does: Thunderbird closes its databases and exits by itself."""
        assert self.proc is not None
        marionette.call("Marionette:Quit", {"flags": ["eAttemptQuit"]})
        marionette.close()
        status = self.proc.wait(timeout=STARTUP_TIMEOUT)
        if status != 0:
            raise AssertionError(f"thunderbird quit with status {status}{self.tail()}")

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def tail(self, lines: int = 40) -> str:
        """The end of Thunderbird's output, without GTK's complaints about having no display."""
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        useful = [line for line in text if line.strip() and "gtk" not in line.lower()]
        return "\nthunderbird's output:\n" + "\n".join(useful[-lines:])


class MarionetteError(Exception):
    pass


class Marionette:
    """A blocking Marionette client session in Thunderbird's chrome (privileged) context."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=SCRIPT_TIMEOUT + 10)
        self.buffer = b""
        self.last_id = 0
        hello = self._receive()
        if hello.get("marionetteProtocol") != 3:
            raise MarionetteError(f"unexpected Marionette greeting {hello!r}")
        self.call("WebDriver:NewSession", {"capabilities": {}})
        self.call("Marionette:SetContext", {"value": "chrome"})

    def _receive(self) -> Any:
        while b":" not in self.buffer:
            self._fill()
        size, _, rest = self.buffer.partition(b":")
        self.buffer = rest
        while len(self.buffer) < int(size):
            self._fill()
        packet, self.buffer = self.buffer[: int(size)], self.buffer[int(size) :]
        return json.loads(packet)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise MarionetteError("Marionette closed the connection")
        self.buffer += chunk

    def call(self, command: str, params: dict[str, Any]) -> Any:
        self.last_id += 1
        packet = json.dumps([0, self.last_id, command, params]).encode()
        self.sock.sendall(b"%d:%s" % (len(packet), packet))
        while True:
            kind, msg_id, error, result = self._receive()
            if kind == 1 and msg_id == self.last_id:
                if error:
                    raise MarionetteError(f"{command}: {error.get('message')}")
                return result

    def run(self, script: str, *args: Any) -> Any:
        """Run ``script`` as a chrome function body (``arguments`` holds ``args``); what it
        returns, awaited if it is a promise."""
        result = self.call("WebDriver:ExecuteScript", {"script": script, "args": list(args)})
        return result["value"]

    def close(self) -> None:
        self.sock.close()


# --- the server side's record of the dialogue ---------------------------------------------


@dataclass
class Dialogue:
    """What one connection carried, in order, as (sender, bytes): "C" client, "S" server;
    once it is over, why (``lost``: "connection done" for a clean close, else the error)."""

    parts: list[tuple[str, bytes]] = field(default_factory=list)
    lost: str | None = None

    def lines(self, sender: str) -> list[bytes]:
        data = b"".join(d for who, d in self.parts if who == sender)
        return data.split(b"\r\n")

    def transcript(self) -> str:
        out = []
        for who, data in self.parts:
            for line in data.split(b"\r\n"):
                if line:
                    out.append(f"{who}: {line[:200].decode('utf-8', 'replace')}")
        return "\n".join(out)


class _Recorder(ProtocolWrapper):
    def makeConnection(self, transport: Any) -> None:
        self.dialogue = Dialogue()
        self.factory.dialogues.append(self.dialogue)  # type: ignore[attr-defined]
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.dialogue.parts.append(("C", data))
        super().dataReceived(data)

    def write(self, data: bytes) -> None:
        self.dialogue.parts.append(("S", data))
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def connectionLost(self, reason: Any) -> None:
        self.dialogue.lost = reason.getErrorMessage()
        super().connectionLost(reason)


class RecordingFactory(WrappingFactory):
    """Wraps a server factory; every connection's dialogue lands in ``dialogues``. STARTTLS
    puts the TLS layer under this wrapper, so what it records is clear text."""

    protocol = _Recorder

    def __init__(self, wrapped: Factory) -> None:
        super().__init__(wrapped)
        self.dialogues: list[Dialogue] = []


def record(port: Any) -> RecordingFactory:
    """Record every dialogue on a listening port, which builds each connection's protocol
    through its ``factory``. An implicit-TLS listener's factory wraps the protocol's: the
    recorder goes between the two, so it too sees clear text."""
    factory = port.factory
    if isinstance(factory, TLSMemoryBIOFactory):
        recorder = RecordingFactory(factory.wrappedFactory)
        factory.wrappedFactory = recorder
    else:
        recorder = RecordingFactory(factory)
        port.factory = recorder
    return recorder


TAGGED_REFUSAL = re.compile(rb"^([A-Za-z0-9.]+) (NO|BAD)\b")


def refusals(dialogues: list[Dialogue]) -> list[bytes]:
    """Every tagged NO or BAD the server sent, with the command it answered."""
    found = []
    for dialogue in dialogues:
        commands = {}
        for line in dialogue.lines("C"):
            tag, _, rest = line.partition(b" ")
            if rest:
                commands[tag] = line
        for line in dialogue.lines("S"):
            match = TAGGED_REFUSAL.match(line)
            if match:
                found.append(commands.get(match.group(1), b"?") + b"  ->  " + line)
    return found


# --- Thunderbird's offline store ----------------------------------------------------------

# Thunderbird's default (mbox) store: each message follows a "From - <date>" line and its own
# X-Mozilla-* status headers, then the bytes exactly as the server sent them.
_SEPARATOR = re.compile(rb"(?:^|(?<=\n))From - [^\r\n]*\r?\n")
_MOZILLA_HEADER = re.compile(rb"\AX-Mozilla-(?:Status|Status2|Keys):[^\n]*\n")


def offline_messages(mbox: Path) -> list[bytes]:
    """The messages in an offline mbox store, each as the server sent it (give or take the
    line ending Thunderbird adds after it)."""
    if not mbox.is_file():
        return []
    data = mbox.read_bytes()
    messages = []
    for chunk in _SEPARATOR.split(data)[1:]:
        while match := _MOZILLA_HEADER.match(chunk):
            chunk = chunk[match.end() :]
        messages.append(chunk)
    return messages


# --- the test case ---------------------------------------------------------------------------

SYNC_TIMEOUT = 60  # seconds for Thunderbird to act; it needs one to five

# Chrome JavaScript, run by Marionette inside Thunderbird. MailServices is Thunderbird's own
# service registry; each snippet ends in the call its menu command makes.
PRELUDE = """
const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
const server = MailServices.accounts.defaultAccount.incomingServer;
const inbox = server.rootFolder.getFolderWithFlags(Ci.nsMsgFolderFlags.Inbox);
const msgWindow = Services.wm.getMostRecentWindow("mail:3pane").msgWindow;
async function savePassword(origin, user, password) {
  // What "Use Password Manager to remember this password" stores.
  const login = Cc["@mozilla.org/login-manager/loginInfo;1"].createInstance(Ci.nsILoginInfo);
  login.init(origin, null, origin, user, password, "", "");
  await Services.logins.addLoginAsync(login);
}
"""

GET_MESSAGES = (
    PRELUDE
    + """
const [origin, user, password] = arguments;
return (async () => {
  await savePassword(origin, user, password);
  server.getNewMessages(inbox, msgWindow, null);  // the "Get Messages" button
  return inbox.URI;
})();
"""
)


@requires(tool("thunderbird"), tool("certutil"))
class ThunderbirdCase(ServiceTestCase):
    """A mailhub service with a certificate from a fresh test CA (for ``localhost``), every
    dialogue on the chosen listeners recorded, and a Thunderbird to point at it."""

    def start_server(
        self, listeners: ListenersConfig, recorded: tuple[str, ...], **changes: Any
    ) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir(parents=True)
        ca = CertificateAuthority()
        cert, key = ca.issue(["localhost"], ip_addresses=["127.0.0.1"]).write(self.dir, "server")
        self.ca_file = ca.write_root(self.dir)
        self.start(listeners=listeners, tls=TLSConfig(certificate=cert, key=key), **changes)
        self.recorders = {name: record(self.service.listening_ports(name)[0]) for name in recorded}

    def make_thunderbird(self, account: ImapAccount, *, trust_ca: bool = True) -> Thunderbird:
        """A Thunderbird (not started) on a new profile; killed, whatever happens, at the end."""
        self.thunderbird = Thunderbird(
            self.dir / "thunderbird", account, self.ca_file if trust_ca else None
        )
        self.addCleanup(self.thunderbird.kill)
        # Kept beside the profile for whoever looks into a failure (or a passing run).
        self.addCleanup(lambda: (self.dir / "dialogues.txt").write_text(self.evidence()))
        return self.thunderbird

    async def start_thunderbird(self) -> Marionette:
        marionette = await self.in_thread(self.thunderbird.start)
        self.addCleanup(marionette.close)
        return marionette

    def dialogues(self, listener: str) -> list[Dialogue]:
        return self.recorders[listener].dialogues

    def maildir(self, user: str, folder: str = "INBOX") -> dict[str, tuple[str, bytes]]:
        """Subject -> (the flags in the file name, message bytes) of every message in
        ``folder``, read straight from the server's Maildir as other Maildir tools would."""
        local, domain = user.split("@")
        path = self.service.config.mail_dir / domain / local
        if folder != "INBOX":
            path = path / f".{folder}"
        out = {}
        for sub in ("new", "cur"):
            if not (path / sub).is_dir():
                continue
            for message in (path / sub).iterdir():
                try:
                    raw = message.read_bytes()
                except FileNotFoundError:  # renamed (a flag changed) since the listing
                    continue
                msg = email.message_from_bytes(raw, policy=email.policy.default)
                out[str(msg["Subject"])] = (message.name.partition(":2,")[2], raw)
        return out

    def offline(self, folder: str = "INBOX") -> dict[str, bytes]:
        """Subject -> message bytes of one folder's offline store in Thunderbird's profile."""
        out = {}
        mbox = self.thunderbird.profile / "ImapMail" / self.thunderbird.account.host / folder
        for raw in offline_messages(mbox):
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            out[str(msg["Subject"])] = raw
        return out

    def evidence(self) -> str:
        out = []
        for name, recorder in self.recorders.items():
            for dialogue in recorder.dialogues:
                out.append(f"\n-- {name} connection (ended: {dialogue.lost}) --")
                out.append(dialogue.transcript())
        return "\n".join(out) + self.thunderbird.tail()

    async def until(
        self, what: str, check: Callable[[], Any], timeout: float = SYNC_TIMEOUT
    ) -> Any:
        """Poll ``check`` on the reactor thread (so the server keeps serving) until it returns
        something true; fail with the dialogues and Thunderbird's output at the deadline."""
        deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
        while reactor.seconds() < deadline:  # type: ignore[attr-defined]
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            await task.deferLater(reactor, 0.1, lambda: None)  # type: ignore[arg-type]
        self.fail(f"Thunderbird did not get there within {timeout} s: {what}{self.evidence()}")

    async def run_js(self, marionette: Marionette, script: str, *args: Any) -> Any:
        return await self.in_thread(marionette.run, script, *args)
