"""``mailhub sendmail`` (also ``mailhub-sendmail``): the /usr/sbin/sendmail interface for apps
that send mail by running a command (PHP's mail(), cron, git send-email, mailx).

It reads a message on standard input and submits it over SMTP to the local mailhub: the
address from ``[sendmail] server``, else the one the running server recorded at start
(``<data_dir>/pickup/server.json``: its SMTP listener, port 0 included), else the config's
``[listeners] smtp`` port. With ``[sendmail] user`` and ``password_file`` it logs in first
(STARTTLS when offered), as production's submission needs; the dev stack needs no login.

When no server answers, the message goes durably into the pickup directory (mailhub.pickup)
and the server hands it to its queue when it runs: the app is told 0 (success), as Postfix's
sendmail does. Other failures exit with the sysexits.h code a sendmail caller expects.

Flags as Postfix's sendmail takes them: ``-t`` (recipients from To/Cc/Bcc, Bcc removed),
``-i``/``-oi`` (a lone dot does not end the message), ``-f sender`` (also ``-r``),
``-F fullname``, ``-bm`` (the default), ``-bs`` (an SMTP session on stdin/stdout: relayed to
the server, or a minimal one writing into the pickup directory), ``-C config``; accepted and
ignored: ``-oX...`` options, ``-odi``/``-odb``, ``-U``, ``-v``, ``-B type``, ``-N dsn``,
``-R ret``, ``-V envid``, ``-X log``, ``-L label``, ``-q`` (the queue runs by itself).
"""

from __future__ import annotations

import errno
import getpass
import os
import re
import selectors
import smtplib
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from pathlib import Path
from typing import BinaryIO

from mailhub.config import Config, ConfigError, dev_config, load
from mailhub.pickup import PickupEnvelope, crlf, drop, read_server_address

# sysexits.h
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78

# The config the command reads when -C is not given (then the dev stack's defaults, with
# $MAILHUB_DATA as the data directory).
CONFIG_ENV = "MAILHUB_CONFIG"
DATA_ENV = "MAILHUB_DATA"
DEFAULT_CONFIG = Path("/etc/mailhub/mailhub.toml")
CONNECT_TIMEOUT = 10.0
SMTP_TIMEOUT = 300.0
# -bs: how long the server may stay silent after our input ended before we hang up.
LINGER = 60.0  # RFC 5321 4.5.3.2: the server may take minutes after DATA

# Flags that take an argument (attached, -fsender, or the next word) and are ignored.
_IGNORED_WITH_ARG = set("BNRVXLhO")
# Flags without an argument that are ignored (Postfix ignores them too).
_IGNORED = {"U", "v", "m", "n", "x", "G", "A"}
_SWITCHES = {"t", "i"} | _IGNORED
# Resent-* aside, these name recipients for -t (RFC 5322 3.6.3).
_RECIPIENT_FIELDS = (b"to", b"cc", b"bcc")


class Exit(Exception):
    """Stop with this sysexits code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Options:
    recipients: list[str] = field(default_factory=list)
    sender: str | None = None
    fullname: str | None = None
    from_headers: bool = False  # -t
    ignore_dots: bool = False  # -i, -oi
    mode: str = "m"  # -bm, -bs
    config: str | None = None  # -C
    verbose: bool = False


def parse_args(argv: Sequence[str]) -> Options:
    """sendmail's command line (getopt-like: ``-fsender`` or ``-f sender``; ``--`` ends it)."""
    opts = Options()
    args = list(argv)
    i = 0

    def value(flag: str, rest: str) -> str:
        nonlocal i
        if rest:
            return rest
        i += 1
        if i >= len(args):
            raise Exit(EX_USAGE, f"option -{flag} requires an argument")
        return args[i]

    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        flag, rest = arg[1], arg[2:]
        if len(arg) > 2 and set(arg[1:]) <= _SWITCHES:  # -ti: getopt clusters switches
            opts.from_headers = opts.from_headers or "t" in arg
            opts.ignore_dots = opts.ignore_dots or "i" in arg
            opts.verbose = opts.verbose or "v" in arg
        elif flag in ("f", "r"):
            opts.sender = value(flag, rest)
        elif flag == "F":
            opts.fullname = value(flag, rest)
        elif flag == "C":
            opts.config = value(flag, rest)
        elif flag == "t" and not rest:
            opts.from_headers = True
        elif flag == "i" and not rest:
            opts.ignore_dots = True
        elif flag == "o":
            option = value(flag, rest)
            if option == "i":
                opts.ignore_dots = True
            # -oem, -oee, -om, -o7, -o8, -oQdir, -oXlevel...: nothing to do here.
        elif flag == "b":
            mode = value(flag, rest)
            if mode not in ("m", "s"):
                raise Exit(EX_USAGE, f"-b{mode} is not supported (only -bm and -bs)")
            opts.mode = mode
        elif flag == "d":  # -odi, -odb... arrive as -o; a bare -d is sendmail's debug flag
            pass
        elif flag == "q":
            opts.mode = "q"
        elif flag in _IGNORED_WITH_ARG:
            value(flag, rest)
        elif flag in _IGNORED and not rest:
            opts.verbose = opts.verbose or flag == "v"
        else:
            raise Exit(EX_USAGE, f"unknown option {arg!r}")
        i += 1
    opts.recipients = args[i:]
    return opts


# --- the message -----------------------------------------------------------------------------


def read_message(stream: BinaryIO, ignore_dots: bool) -> bytes:
    """stdin up to its end, or (without -i) up to a line holding only a dot."""
    if ignore_dots:
        return stream.read()
    lines = []
    for line in stream:
        if line.rstrip(b"\r\n") == b".":
            break
        lines.append(line)
    return b"".join(lines)


def split_header(message: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each with its folded lines and CRLF) and the rest (the blank line and
    the body). A message that does not start with a field is all body."""
    fields: list[bytes] = []
    pos = 0
    while pos < len(message):
        end = message.find(b"\n", pos)
        end = len(message) if end < 0 else end + 1
        line = message[pos:end]
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif re.match(rb"[\x21-\x39\x3b-\x7e]+:", line):
            fields.append(line)
        else:
            break  # not a header line: the body starts here (no blank line before it)
        pos = end
    return fields, message[pos:]


def _name(field_: bytes) -> bytes:
    return field_.split(b":", 1)[0].strip().lower()


def _value(field_: bytes) -> str:
    text = field_.split(b":", 1)[1].decode("utf-8", "replace")
    return re.sub(r"\r?\n[ \t]", " ", text).strip()


class Sender:
    """Builds the envelope and the final message from the options and the input."""

    def __init__(self, opts: Options, config: Config) -> None:
        self.opts, self.config = opts, config
        self.login = _login()

    def qualify(self, address: str) -> str:
        """Unqualified names (``root``, from cron) get our hostname, as sendmail's $myorigin."""
        address = address.strip()
        if address.startswith("<") and address.endswith(">"):
            address = address[1:-1]
        if not address:
            return address
        if re.search(r"[\x00-\x20\x7f<>()\[\],;\\\"]", address) or address.count("@") > 1:
            raise Exit(EX_DATAERR, f"bad address syntax: {address!r}")
        local, at, domain = address.rpartition("@")
        if not at:
            return f"{address}@{self.config.hostname}"
        if not local or not domain or domain.startswith(".") or ".." in domain:
            raise Exit(EX_DATAERR, f"bad address syntax: {address!r}")
        return address

    def recipients_of(self, values: Sequence[str]) -> list[str]:
        found = []
        for _name_, address in getaddresses(list(values)):
            if address:
                found.append(self.qualify(address))
            elif _name_.strip():
                raise Exit(EX_DATAERR, f"bad address syntax: {_name_!r}")
        return found

    def sender(self) -> str:
        if self.opts.sender is not None:
            if self.opts.sender in ("", "<>"):
                return ""  # the null sender (bounces)
            return self.qualify(self.opts.sender)
        return f"{self.login}@{self.config.hostname}"

    def prepare(self, raw: bytes) -> tuple[str, list[str], bytes]:
        """(sender, recipients, message with CRLF line endings)."""
        if b"\x00" in raw:
            raise Exit(EX_DATAERR, "the message contains NUL bytes (RFC 5322 forbids them)")
        fields, rest = split_header(crlf(raw))
        sender = self.sender()
        recipients = self.recipients_of(self.opts.recipients)
        if self.opts.from_headers:
            # Postfix adds the command line's recipients to the headers' (sendmail 8 removes
            # them); either way Bcc: goes (RFC 5322 3.6.3: hidden from the other recipients).
            values = [_value(f) for f in fields if _name(f) in _RECIPIENT_FIELDS]
            recipients += self.recipients_of(values)
            fields = [f for f in fields if _name(f) != b"bcc"]
        recipients = list(dict.fromkeys(recipients))
        if not recipients:
            where = "in the message header (-t)" if self.opts.from_headers else "given"
            raise Exit(EX_USAGE, f"no recipient addresses {where}")
        names = {_name(f) for f in fields}
        added = []
        # What Postfix's cleanup adds to locally submitted mail that lacks it (RFC 5322 3.6).
        if b"from" not in names:
            shown = sender or f"MAILER-DAEMON@{self.config.hostname}"
            added.append(f"From: {formataddr((self.opts.fullname or '', shown))}")
        if b"date" not in names:
            added.append(f"Date: {formatdate(localtime=True)}")
        if b"message-id" not in names:
            added.append(f"Message-ID: {make_msgid(domain=self.config.hostname)}")
        head = b"".join(fields) + b"".join(a.encode("utf-8") + b"\r\n" for a in added)
        if not rest.startswith(b"\r\n"):
            rest = b"\r\n" + rest  # the blank line between header and body
        return sender, recipients, head + rest


def _login() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = f"uid{os.getuid()}"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name) or "nobody"


# --- where the server is ---------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str | None = None
    password: str | None = None


def find_server(config: Config) -> Server | None:
    s = config.sendmail
    password = None
    if s.password_file is not None:
        try:
            password = s.password_file.read_text().strip()
        except OSError as e:
            raise Exit(EX_CONFIG, f"[sendmail] password_file: {e}") from None
    if s.server is not None:
        return Server(s.server[0], s.server[1], s.user, password)
    recorded = read_server_address(config.data_dir)
    if recorded is not None:
        return Server(recorded[0], recorded[1], s.user, password)
    for description in config.listeners.smtp:
        m = re.match(r"tcp6?:(?:port=)?(\d+)(.*)$", description)
        if m and int(m.group(1)):
            interface = re.search(r":interface=((?:\\:|[^:])+)", m.group(2))
            host = interface.group(1).replace("\\:", ":") if interface else "127.0.0.1"
            if host in ("0.0.0.0", "::", ""):
                host = "127.0.0.1" if host != "::" else "::1"
            return Server(host, int(m.group(1)), s.user, password)
    return None


class Unreachable(Exception):
    """No server answered: the message goes to the pickup directory."""


def _connect(server: Server) -> smtplib.SMTP:
    try:
        client = smtplib.SMTP(timeout=CONNECT_TIMEOUT)
        code, greeting = client.connect(server.host, server.port)
    except (OSError, smtplib.SMTPConnectError, smtplib.SMTPServerDisconnected) as e:
        raise Unreachable(f"{server.host}:{server.port}: {e}") from None
    if client.sock is not None:
        client.sock.settimeout(SMTP_TIMEOUT)
    if code != 220:
        client.close()
        if 400 <= code < 500:
            raise Unreachable(f"{server.host}:{server.port}: {code} {greeting!r}")
        raise Exit(EX_UNAVAILABLE, f"the server refused the session: {code} {greeting.decode()}")
    return client


def _text(text: bytes | str) -> str:
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def _status(code: int, text: bytes | str) -> int:
    """The sysexits code for an SMTP reply (RFC 3463 enhanced codes where the server gives
    them)."""
    words = _text(text)
    if 400 <= code < 500:
        return EX_TEMPFAIL
    if re.match(r"5\.7\.", words) or code == 530 or code == 535:
        return EX_NOPERM
    if re.match(r"5\.1\.[0-6]", words) or code in (550, 551, 553):
        return EX_NOUSER
    if code == 552 or re.match(r"5\.[36]\.", words):
        return EX_DATAERR
    return EX_UNAVAILABLE


def submit(server: Server, sender: str, recipients: list[str], message: bytes) -> None:
    """Hand the message over; Exit on a refusal, Unreachable when nobody answers."""
    client = _connect(server)
    try:
        client.ehlo_or_helo_if_needed()
        if server.user is not None:
            if client.has_extn("starttls"):
                context = ssl.create_default_context()
                if server.host in ("127.0.0.1", "::1", "localhost"):
                    # The connection never leaves this host: the certificate names the
                    # server's public name, not the loopback address.
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                client.starttls(context=context)
                client.ehlo()
            client.login(server.user, server.password or "")
        options = []
        if client.has_extn("8bitmime") and any(b > 127 for b in message):
            options.append("BODY=8BITMIME")
        if client.has_extn("smtputf8") and not all(a.isascii() for a in [sender, *recipients]):
            options.append("SMTPUTF8")
        refused = client.sendmail(sender, recipients, message, mail_options=options)
        client.quit()
    except smtplib.SMTPRecipientsRefused as e:
        worst = max((_status(c, t) for c, t in e.recipients.values()), default=EX_NOUSER)
        raise Exit(worst, _refusals(e.recipients)) from None
    except smtplib.SMTPSenderRefused as e:
        raise _content_refused(f"sender <{e.sender}>", e) from None
    except smtplib.SMTPDataError as e:
        raise _content_refused("the message", e) from None
    except smtplib.SMTPAuthenticationError as e:
        raise Exit(EX_NOPERM, f"login as {server.user} refused: {e.smtp_code}") from None
    except smtplib.SMTPNotSupportedError as e:
        raise Exit(EX_CONFIG, f"the server at {server.host}:{server.port}: {e}") from None
    except smtplib.SMTPResponseException as e:
        raise Exit(_status(e.smtp_code, e.smtp_error), _reply(e)) from None
    except (smtplib.SMTPException, OSError) as e:
        # Cut off mid-session: whether the server kept it is unknown; the caller may retry.
        raise Exit(EX_TEMPFAIL, f"the session with the server broke: {e}") from None
    if refused:
        raise Exit(max(_status(c, t) for c, t in refused.values()), _refusals(refused))


def _reply(e: smtplib.SMTPResponseException) -> str:
    return f"{e.smtp_code} {_text(e.smtp_error)}"


def _content_refused(what: str, e: smtplib.SMTPResponseException) -> Exit:
    """A refused sender or message is a data error (not a missing user) unless it is a policy
    (5.7.x) or a temporary one."""
    code = _status(e.smtp_code, e.smtp_error)
    return Exit(EX_DATAERR if code == EX_NOUSER else code, f"{what} refused: {_reply(e)}")


def _refusals(refused: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"<{a}>: {c} {_text(t)}" for a, (c, t) in refused.items())


_CANNOT_CREATE = {errno.EACCES, errno.EPERM, errno.ENOENT, errno.EEXIST, errno.ENOTDIR, errno.EROFS}


def to_pickup(config: Config, sender: str, recipients: list[str], message: bytes) -> None:
    envelope = PickupEnvelope(sender, tuple(recipients), os.getuid(), time.time())
    try:
        drop(config.data_dir, envelope, message)
    except OSError as e:
        code = EX_OSERR
        if e.errno in _CANNOT_CREATE:
            code = EX_CANTCREAT
        elif e.errno in (errno.ENOSPC, errno.EDQUOT):
            code = EX_TEMPFAIL
        raise Exit(code, f"cannot write to the pickup directory: {e}") from None


# --- -bs: an SMTP session on stdin/stdout ----------------------------------------------------


def relay_session(server: Server, stdin: int, stdout: int) -> None:
    """Copy bytes both ways between our stdin/stdout and the server until either side ends."""
    try:
        sock = socket.create_connection((server.host, server.port), timeout=CONNECT_TIMEOUT)
    except OSError as e:
        raise Unreachable(str(e)) from None
    sock.settimeout(None)
    with sock, selectors.DefaultSelector() as sel:
        sel.register(stdin, selectors.EVENT_READ, "in")
        sel.register(sock, selectors.EVENT_READ, "sock")
        stdin_open = True
        while True:
            # After the client's end of input, the server still answers what it sent (a
            # script pipes the whole session at once): wait for it to close after QUIT, but
            # not for ever. No half-close: servers drop the session on EOF, replies unsent.
            ready = sel.select(None if stdin_open else LINGER)
            if not ready:
                return
            for key, _ in ready:
                if key.data == "in":
                    data = os.read(stdin, 65536)
                    if not data:
                        stdin_open = False
                        sel.unregister(stdin)
                        continue
                    sock.sendall(data)
                else:
                    data = sock.recv(65536)
                    if not data:
                        return
                    _write(stdout, data)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pickup_session(config: Config, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """A minimal RFC 5321 session for when the server is down: each message goes into the
    pickup directory (the server checks recipients when it collects them)."""
    host = config.hostname

    def reply(text: str) -> None:
        stdout.write(text.encode("utf-8") + b"\r\n")
        stdout.flush()

    reply(f"220 {host} ESMTP mailhub sendmail (the server is down: mail waits in pickup)")
    sender: str | None = None
    recipients: list[str] = []
    for raw in stdin:
        line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        if verb in ("HELO", "EHLO"):
            reply(f"250-{host}\r\n250 8BITMIME" if verb == "EHLO" else f"250 {host}")
        elif verb == "MAIL" and arg.upper().startswith("FROM:"):
            sender = _path(arg[5:])
            recipients = []
            reply("250 2.1.0 Ok")
        elif verb == "RCPT" and arg.upper().startswith("TO:"):
            if sender is None:
                reply("503 5.5.1 MAIL first")
                continue
            recipients.append(_path(arg[3:]))
            reply("250 2.1.5 Ok")
        elif verb == "DATA":
            if sender is None or not recipients:
                reply("503 5.5.1 RCPT first")
                continue
            reply("354 End data with <CR><LF>.<CR><LF>")
            body = []
            for data in stdin:
                if data.rstrip(b"\r\n") == b".":
                    break
                body.append(data[1:] if data.startswith(b".") else data)  # RFC 5321 4.5.2
            try:
                to_pickup(config, sender, recipients, crlf(b"".join(body)))
                reply("250 2.0.0 Ok: left in the pickup directory")
            except Exit as e:
                reply(f"451 4.3.0 {e}")
            sender, recipients = None, []
        elif verb == "RSET":
            sender, recipients = None, []
            reply("250 2.0.0 Ok")
        elif verb == "NOOP":
            reply("250 2.0.0 Ok")
        elif verb == "VRFY":
            reply("252 2.0.0 Cannot VRFY user")
        elif verb == "QUIT":
            reply("221 2.0.0 Bye")
            return
        else:
            reply("502 5.5.2 Command not recognized")


def _path(arg: str) -> str:
    text = arg.strip()
    if text.startswith("<"):
        text = text[1 : text.find(">")] if ">" in text else text[1:]
    else:
        text = text.split(" ", 1)[0]
    return text


# --- the command -----------------------------------------------------------------------------


def load_config(opts: Options) -> Config:
    path = opts.config or os.environ.get(CONFIG_ENV)
    data = os.environ.get(DATA_ENV) or None
    try:
        if path:
            return load(path, data_dir=data)
        if DEFAULT_CONFIG.exists():
            return load(DEFAULT_CONFIG, data_dir=data)
        return dev_config(data)
    except ConfigError as e:
        raise Exit(EX_CONFIG, f"configuration error in {e}") from None


def run(argv: Sequence[str], stdin: BinaryIO, stdout: BinaryIO) -> int:
    opts = parse_args(argv)
    if opts.mode == "q":
        return EX_OK  # the server's queue runs by itself
    config = load_config(opts)
    server = find_server(config)
    if opts.mode == "s":
        try:
            if server is None:
                raise Unreachable("no SMTP listener known")
            stdout.flush()
            relay_session(server, stdin.fileno(), stdout.fileno())
        except Unreachable:
            pickup_session(config, stdin, stdout)
        return EX_OK
    try:
        raw = read_message(stdin, opts.ignore_dots)
    except OSError as e:
        raise Exit(EX_IOERR, f"reading the message: {e}") from None
    sender, recipients, message = Sender(opts, config).prepare(raw)
    try:
        if server is None:
            raise Unreachable("no SMTP listener known")
        submit(server, sender, recipients, message)
    except Unreachable as e:
        to_pickup(config, sender, recipients, message)
        if opts.verbose:
            print(f"sendmail: {e}: left in the pickup directory", file=sys.stderr)
    return EX_OK


def main(argv: Sequence[str] | None = None) -> None:
    try:
        status = run(sys.argv[1:] if argv is None else argv, sys.stdin.buffer, sys.stdout.buffer)
    except Exit as e:
        print(f"sendmail: {e}", file=sys.stderr)
        status = e.code
    except KeyboardInterrupt:
        status = EX_TEMPFAIL
    except Exception as e:  # a bug: say so in the caller's log, with the sysexits code for it
        print(f"sendmail: internal error: {e!r}", file=sys.stderr)
        status = EX_SOFTWARE
    sys.exit(status)


if __name__ == "__main__":
    main()
