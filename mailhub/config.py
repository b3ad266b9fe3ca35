"""Configuration: TOML file -> validated, frozen Config.

Two sources, one shape: no --config gives the development stack (``dev_config``); a TOML file
gives a production config whose missing keys take production defaults. Every error names the
file, the key and the fix (``ConfigError``).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import idna

from mailhub.errors import ConfigError

# The port plan: dev ports match Mailpit/MailHog where they overlap.
DEV_PORTS = {
    "smtp": 1025,
    "submission": 1587,
    "smtps": 1465,
    "imap": 1143,
    "imaps": 1993,
    "pop3": 1110,
    "pop3s": 1995,
    "web": 8025,
}
PRODUCTION_PORTS = {
    "smtp": 25,
    "submission": 587,
    "smtps": 465,
    "imap": 143,
    "imaps": 993,
    "pop3": 110,
    "pop3s": 995,
    "web": 8025,
}

# The dev stack's listeners bind this address unless told otherwise (tap's --interface).
DEV_INTERFACE = "127.0.0.1"


def dev_listener(name: str, interface: str = DEV_INTERFACE) -> tuple[str, ...]:
    """The dev stack's endpoint for one listener kind: its DEV_PORTS port on ``interface``."""
    # Endpoint strings escape the colons of an IPv6 address ("::" -> "\\:\\:").
    where = interface.replace(":", "\\:")
    return (f"tcp:{DEV_PORTS[name]}:interface={where}",)


@dataclass(frozen=True)
class ModeDefault:
    """A setting whose default depends on ``[server] dev``."""

    production: Any
    dev: Any

    def __call__(self, dev: bool) -> Any:
        return self.dev if dev else self.production


# THE table of settings whose default differs between production and the dev stack, keyed as
# the README's configuration reference writes them. Config loading (a file with ``dev = true``),
# dev_config() (no --config) and the twistd options all take their defaults from here, and
# tests/test_readme.py checks the README's "production / dev" column against it. Everything else
# defaults the same in both; what dev changes beyond defaults (any login works, a self-signed
# certificate) is behaviour keyed on Config.dev itself.
MODE_DEFAULTS: Mapping[str, ModeDefault] = {
    "[server] hostname": ModeDefault(None, "localhost"),  # None: this host's FQDN
    "[server] data_dir": ModeDefault("/var/lib/mailhub", "./mailhub-data"),
    "[server] dev": ModeDefault(False, True),
    "[domains] accept_any": ModeDefault(False, True),  # a mail catcher: every address is ours
    # Production listens only where the file says; the dev stack on its loopback ports.
    **{f"[listeners] {name}": ModeDefault((), dev_listener(name)) for name in DEV_PORTS},
    # Any login works on the dev stack (DevChecker); an app should not fight it over TLS or
    # sender addresses.
    "[smtp] restrict_sender": ModeDefault(True, False),
    "[smtp] auth_without_tls_on_loopback": ModeDefault(False, True),
    "[web] login": ModeDefault(True, False),  # the dev page listens on loopback only
    "[sandboxes] enabled": ModeDefault(False, True),  # isolated inboxes for tests (issue 15)
}


@dataclass(frozen=True)
class Limits:
    """Protocol limits. Each is answered with its own status code when hit."""

    # RFC 5321 4.5.3.1.7 says at least 64K; 35 MiB is a common production figure.
    max_message_size: int = 35 * 1024 * 1024
    # RFC 5321 4.5.3.1.6: a text line is at most 1000 octets including CRLF. Applies to command
    # lines too (4.5.3.1.4 says 512, but ESMTP parameters lengthen them; 1000 is what peers send).
    max_line_length: int = 1000
    # RFC 5321 4.5.3.1.8: a server must accept at least 100 recipients.
    max_recipients: int = 100
    # RFC 5321 4.5.3.2.7: the server should wait at least 5 minutes for the next command.
    idle_timeout: float = 300.0
    # Bad commands in one session before "421 4.7.0 too many errors" and disconnect.
    max_errors: int = 20
    # Simultaneous connections, in total and from one client address (421 4.7.0 beyond).
    max_connections: int = 500
    max_connections_per_ip: int = 50
    # Failed logins (SMTP AUTH, IMAP, POP3, web) per client address: each is answered after a
    # doubling delay (1 s, 2 s, ... at most auth_max_delay); at auth_max_failures within 15
    # minutes (attempts still being checked count too) the client gets 421 4.7.0 and is refused
    # until they pass. A success forgives only that user's failures from that address.
    auth_max_failures: int = 5
    auth_max_delay: float = 15.0
    # Failed logins of one user name from all addresses: past auth_user_delay_after within 15
    # minutes, each check of its password waits 1, 2, 4 ... seconds first, at most
    # auth_user_max_delay (a delay, not a lockout: the real user still gets in).
    auth_user_delay_after: int = 3
    auth_user_max_delay: float = 15.0
    # Threads hashing passwords (argon2: 64 MiB and a core each), and the checks queued or
    # running in them; beyond, a login gets a temporary error before anything is hashed (SMTP
    # 454 4.7.0, IMAP NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP]). Likely guesses may hold only half
    # of the queue (mailhub.throttle), so a real login finds room during a flood.
    auth_hash_threads: int = 2
    auth_hash_queue: int = 16
    # Stress (Postfix's stress mode, Dovecot's login limits): from this share of
    # max_connections on, sessions that have not logged in get stress_idle_timeout instead of
    # the idle timeouts, and on listeners with logins they may fill only this share: a new
    # connection beyond it closes the oldest such session instead of being refused.
    stress_threshold: float = 0.8
    stress_idle_timeout: float = 10.0
    # RFC 3501 5.4: an IMAP autologout timer must be at least 30 minutes (IDLE clients re-issue
    # IDLE before it runs out; RFC 2177 3).
    imap_idle_timeout: float = 1800.0
    # IMAP command lines, not counting literals (Dovecot's imap_max_line_length is 64 KiB;
    # RFC 7162 4 asks for at least 8192 octets). Longer: BAD and the line is discarded.
    imap_max_line_length: int = 65536
    # RFC 1939 3: a POP3 inactivity autologout timer must be at least 10 minutes.
    pop3_idle_timeout: float = 600.0
    # listen(2) backlog of every listener that does not name its own (endpoint ``backlog=``).
    # Twisted's default of 50 left over half of a burst of 1,000 connections without a greeting
    # for 15 s and more (measured: 409 greeted in 20 s; with 1024 all in 0.2 s). Linux caps it
    # at net.core.somaxconn (4096 since 5.4).
    listen_backlog: int = 1024


@dataclass(frozen=True)
class DomainsConfig:
    """Which recipient domains are ours."""

    local: tuple[str, ...] = ()  # domains we deliver for (lower-case, IDNA A-labels)
    catch_all: tuple[str, ...] = ()  # local domains where any local part gets a mailbox
    accept_any: bool = False  # dev stack: every domain is local and catch-all


@dataclass(frozen=True)
class SMTPConfig:
    """Receiver behaviour that is policy, not limits."""

    # What to do with a bare CR or LF in message data (RFC 5321 2.3.8; the SMTP smuggling
    # class). "reject" answers 550 after the real end of data; "normalise" turns it into CRLF.
    # Either way only <CRLF>.<CRLF> ends a message.
    bare_line_endings: str = "reject"
    expn: bool = False  # EXPN leaks list members: 502 5.5.1 unless enabled
    banner: str = "mailhub ESMTP"
    # Submission (RFC 6409 4.3): an authenticated user may use only their own address, a +tag
    # form of it or an alias of theirs as MAIL FROM (553 5.7.1 otherwise).
    restrict_sender: bool = True
    # AUTH without TLS for clients on 127.0.0.1/::1 (the dev stack's default; never do it where
    # other users share the machine). Elsewhere AUTH needs TLS: 538 5.7.11.
    auth_without_tls_on_loopback: bool = False
    # Name the AUTH login in the Received: header, "(Authenticated sender: alice@example.com)",
    # as Postfix's smtpd_sasl_authenticated_header. Off by default: recipients learn the login.
    received_auth_header: bool = False


@dataclass(frozen=True)
class QueueConfig:
    """The outgoing queue: when to retry, when to give up (seconds)."""

    # Waits after the 1st, 2nd, ... failed attempt; the last repeats. Jittered by the queue.
    retry_schedule: tuple[float, ...] = (60, 300, 900, 1800, 3600, 7200, 14400)
    max_lifetime: float = 5 * 86400  # then the sender gets a bounce (RFC 5321 4.5.4.1: 4-5 days)
    delay_notice: float = 4 * 3600  # a "still trying" DSN after this long; 0: never
    # Simultaneous attempts (connections) to one destination domain; 20 as Postfix's
    # default_destination_concurrency_limit. With reused connections each carries many messages.
    max_per_destination: int = 20


@dataclass(frozen=True)
class Smarthost:
    """Send all outgoing mail through one server (for hosts behind a port-25 block)."""

    host: str
    port: int = 587
    tls: str = "starttls"  # starttls | implicit | none
    username: str | None = None
    password_file: Path | None = None  # the password, in a file of its own (not in the config)


@dataclass(frozen=True)
class RelayConfig:
    """How mail for other domains leaves."""

    routes: tuple[tuple[str, str, int], ...] = ()  # (domain, host, port): overrides DNS
    smarthost: Smarthost | None = None
    tls: str = "opportunistic"  # default policy: opportunistic | verify | none
    tls_policy: tuple[tuple[str, str], ...] = ()  # (domain, policy) exceptions
    nameservers: tuple[tuple[str, int], ...] = ()  # () = the system resolver (/etc/resolv.conf)
    port: int = 25  # the MX port (tests and special setups change it)
    # Connection reuse (Postfix's smtp_connection_cache_time_limit, _reuse_count_limit,
    # _reuse_time_limit): a session waits reuse_idle_time seconds for the next message to the
    # same host (0: never reused), carries at most reuse_max_messages, lives reuse_max_age.
    reuse_idle_time: float = 5.0
    reuse_max_messages: int = 100
    reuse_max_age: float = 300.0

    @property
    def configured(self) -> bool:
        """True when some mail may leave (the dev stack keeps everything otherwise)."""
        return bool(self.routes) or self.smarthost is not None


@dataclass(frozen=True)
class CheckPolicy:
    """What the inbound checks do with mail that fails them (``[checks]``, or per recipient
    domain ``[checks.domain."example.org"]``); mailhub.checks.inbound applies it."""

    # A DMARC fail where the domain publishes p=reject: "reject" (550 5.7.1 at the end of DATA),
    # "quarantine" (the recipient's Junk folder) or "none" (only recorded).
    dmarc_reject: str = "reject"
    # A DMARC fail where the domain publishes p=quarantine: "junk" or "none".
    dmarc_quarantine: str = "junk"
    # An SPF fail (the sender's domain says "-all" for this client): "reject" (550 5.7.23, as
    # Postfix's policyd-spf by default; not when DMARC passes through an aligned DKIM signature,
    # which forwarded mail keeps) or "mark" (only recorded).
    spf_fail: str = "reject"


@dataclass(frozen=True)
class ChecksConfig:
    """Mail authentication checks (issue 14), section ``[checks]``."""

    # --- the DNS the checks ask (mailhub.checks.resolver) ---
    # (address, port) pairs asked in order; () = [relay] nameservers if set, else the system's
    # (/etc/resolv.conf). Recursive resolvers: the checks need answers for any domain.
    nameservers: tuple[tuple[str, int], ...] = ()
    # Seconds one DNS question may take in all (every server tried twice within it) before the
    # check gives a temporary result (temperror; 451 where policy would reject).
    dns_timeout: float = 5.0
    # Answers kept in memory (each for its TTL; the least recently used goes first).
    dns_cache_size: int = 10000

    # --- the inbound judgement (mailhub.checks.inbound) ---
    # SPF, DKIM, DMARC and ARC on port 25 (and, in the dev stack, on every listener: recorded,
    # never refused).
    enabled: bool = True
    # The authserv-id of our Authentication-Results header (RFC 8601 2.5); "": [server] hostname.
    authserv_id: str = ""
    # Seconds for all the checks of one message; past it, what is unfinished is a temperror.
    timeout: float = 20.0
    # Log every message's results at info (as opendkim's "DKIM verification successful"),
    # not only of those the policy acted on (refused, junked, marked): each message's
    # results are always in its Authentication-Results header.
    log_accepted: bool = False
    # Bigger messages are not checked (recorded as such in the header).
    max_message_size: int = 10 * 1024 * 1024
    policy: CheckPolicy = field(default_factory=CheckPolicy)
    # (recipient domain, its policy) overrides.
    domains: tuple[tuple[str, CheckPolicy], ...] = ()
    # Dev stack: the address the production mail will leave from. SPF judges it instead of a
    # loopback or private client (an app on 127.0.0.1 says nothing of production) and for
    # authenticated submission; "": SPF is not evaluated for those (the reason says so).
    dev_sending_ip: str = ""

    # --- the spam score on the page and API (mailhub.checks.rspamd, issue 15) ---
    # rspamd's normal worker, e.g. "http://127.0.0.1:11333"; "": no spam score.
    rspamd: str = ""
    # Seconds for one question to rspamd (connect, send, answer).
    rspamd_timeout: float = 10.0


@dataclass(frozen=True)
class ListenersConfig:
    """Twisted endpoint strings per service; an empty tuple turns the service off."""

    smtp: tuple[str, ...] = ()
    submission: tuple[str, ...] = ()
    smtps: tuple[str, ...] = ()
    imap: tuple[str, ...] = ()
    imaps: tuple[str, ...] = ()
    pop3: tuple[str, ...] = ()
    pop3s: tuple[str, ...] = ()
    web: tuple[str, ...] = ()


@dataclass(frozen=True)
class WebConfig:
    """The web page and JSON API (mailhub.web), served on the ``web`` listener."""

    # HTTP Basic login against the users file (the shared portal). Credentials are accepted only
    # over TLS (an ssl: listener) or from loopback (a TLS-terminating proxy on this host).
    # Production default: on. The dev stack: off (it listens on loopback only).
    login: bool = True
    # With login: these users see every mailbox and may release mail and change fault rules;
    # any other user sees only their own mailbox.
    admins: tuple[str, ...] = ()
    # How often mailboxes are re-scanned for mail from other processes or hosts (seconds);
    # deliveries on this host are also noticed at once through inotify where available.
    poll_interval: float = 1.0
    # The longest /api/v1/wait long poll a client may ask for (seconds).
    max_wait: float = 300.0
    # Host names (or addresses) the page answers to besides loopback names and addresses, the
    # address a request arrived on and [server] hostname: the DNS rebinding defence
    # (mailhub.web.access.HostCheck) answers any other Host with 421.
    allowed_hosts: tuple[str, ...] = ()
    # Link checks (/api/v1/messages/{id}/links?check=1) may go to loopback, private and
    # link-local addresses and localhost names; off: such targets are refused.
    link_check_private: bool = False
    # Issue 15: [[web.webhook]] (mailhub.web.webhooks) and [[web.tag]] rules (mailhub.web.tags).
    webhooks: tuple[WebhookConfig, ...] = ()
    tags: tuple[TagRuleConfig, ...] = ()


@dataclass(frozen=True)
class WebhookConfig:
    """One ``[[web.webhook]]``: every new message that passes the filters is POSTed to ``url``
    as JSON, signed with ``secret`` (HMAC-SHA256), retried with exponential backoff."""

    url: str
    secret: str = ""  # empty: unsigned (no X-Mailhub-Signature)
    # Filters (all given must hold): the mailbox address, the sandbox id, a tag, a folder.
    mailbox: str = ""
    sandbox: str = ""
    tag: str = ""
    folder: str = ""
    timeout: float = 10.0  # seconds one attempt may take (connect, answer)
    max_attempts: int = 10  # attempts per message, the first included
    max_age: float = 3600.0  # seconds after the message came: no attempt after that
    retry_base: float = 1.0  # the first retry's delay; doubled for each further one
    retry_max: float = 300.0  # the longest delay between two attempts
    queue_size: int = 1000  # messages waiting for this hook; beyond: dropped (counted, logged)


@dataclass(frozen=True)
class TagRuleConfig:
    """One ``[[web.tag]]``: messages that match ``match`` (the API's search syntax) get ``tag``."""

    match: str
    tag: str


@dataclass(frozen=True)
class FaultsConfig:
    """Fault rules for the SMTP receiver from ``[[faults.rule]]`` tables: in force from start-up;
    the web API can add and remove rules at run time. The tables are kept as written: the rules
    are ``mailhub.faults``' business (``rules_from_config`` reads them, naming a bad one), and the
    config imports no feature."""

    rules: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class SandboxesConfig:
    """Isolated inboxes for tests (mailhub.sandboxes): made and removed through the web API."""

    enabled: bool = False  # the dev stack: on (MODE_DEFAULTS)
    max: int = 1000  # sandboxes at once; beyond, POST /api/v1/sandboxes answers 409


@dataclass(frozen=True)
class TLSConfig:
    certificate: Path | None = None
    key: Path | None = None
    # More (certificate, key) pairs from [[tls.sni]], picked by the name the client asks for
    # (SNI, RFC 6066 3); certificate/key above stay the default for every other client.
    sni: tuple[tuple[Path, Path], ...] = ()

    @property
    def pairs(self) -> tuple[tuple[Path, Path], ...]:
        """All (certificate, key) pairs, the default first; () when TLS is not configured."""
        if self.certificate is None or self.key is None:
            return ()
        return ((self.certificate, self.key), *self.sni)


@dataclass(frozen=True)
class DKIMConfig:
    """Outgoing DKIM signing (mailhub.checks.signing): keys made by ``mailhub dkim keygen``."""

    key_dir: Path | None = None  # None: <data_dir>/dkim
    # Larger messages go unsigned (logged): dkimpy holds the whole message, and about five times
    # its size while signing. Mail over 25 MB is refused by most large providers anyway.
    max_sign_size: int = 25 * 1024 * 1024
    # The d= domain of bounces and delay notices; None: [server] hostname's (or a parent's).
    bounce_domain: str | None = None


@dataclass(frozen=True)
class SendmailConfig:
    """How ``mailhub sendmail`` reaches the server (mailhub.sendmail)."""

    # host:port; None: the address the running server recorded at start (its SMTP listener),
    # else [listeners] smtp's port.
    server: tuple[str, int] | None = None
    # A login for the submission port (production); none in the dev stack.
    user: str | None = None
    password_file: Path | None = None


@dataclass(frozen=True)
class DevConfig:
    """The dev stack's retention (mailhub.retention): the oldest caught messages go first.
    Production never prunes (these keys are read only with dev = true)."""

    max_messages: int = 5000  # 0: no limit
    max_age: float | None = None  # seconds; None: off


@dataclass(frozen=True)
class Config:
    source: str  # the file it came from, or "<development defaults>"
    hostname: str
    data_dir: Path
    dev: bool
    domains: DomainsConfig = field(default_factory=DomainsConfig)
    listeners: ListenersConfig = field(default_factory=ListenersConfig)
    limits: Limits = field(default_factory=Limits)
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    web: WebConfig = field(default_factory=WebConfig)
    dkim: DKIMConfig = field(default_factory=DKIMConfig)
    sandboxes: SandboxesConfig = field(default_factory=SandboxesConfig)
    sendmail: SendmailConfig = field(default_factory=SendmailConfig)
    retention: DevConfig = field(default_factory=DevConfig)
    users_file: Path | None = None
    aliases_file: Path | None = None

    @property
    def mail_dir(self) -> Path:
        """Root of the Maildir tree: DATA/mail/<domain>/<localpart>/."""
        return self.data_dir / "mail"

    @property
    def dkim_key_dir(self) -> Path:
        """Where the DKIM signing keys live: [dkim] key_dir, else DATA/dkim/."""
        return self.dkim.key_dir if self.dkim.key_dir is not None else self.data_dir / "dkim"


# --- loading -----------------------------------------------------------------------------------

DEV_SOURCE = "<development defaults>"


def dev_config(
    data_dir: Path | str | None = None,
    hostname: str | None = None,
    interface: str = DEV_INTERFACE,
    allowed_hosts: tuple[str, ...] = (),
) -> Config:
    """The zero-config development stack: loopback only (unless ``interface`` says otherwise, as
    in a container), every address accepted, nothing leaves. The same Config as a file holding
    only ``dev = true`` (MODE_DEFAULTS)."""

    def default(key: str) -> Any:
        return MODE_DEFAULTS[key].dev

    return Config(
        source=DEV_SOURCE,
        hostname=hostname or default("[server] hostname"),
        data_dir=Path(data_dir or default("[server] data_dir")).absolute(),
        dev=True,
        domains=DomainsConfig(accept_any=default("[domains] accept_any")),
        listeners=ListenersConfig(**{name: dev_listener(name, interface) for name in DEV_PORTS}),
        limits=Limits(),
        smtp=SMTPConfig(
            restrict_sender=default("[smtp] restrict_sender"),
            auth_without_tls_on_loopback=default("[smtp] auth_without_tls_on_loopback"),
        ),
        web=WebConfig(
            login=default("[web] login"),
            allowed_hosts=tuple(allowed_host(name) for name in allowed_hosts),
        ),
        sandboxes=SandboxesConfig(enabled=default("[sandboxes] enabled")),
    )


_SIZE_SUFFIXES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def _type_name(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


class _Reader:
    """Walks one TOML table, converting and validating keys, remembering which were read."""

    def __init__(self, source: str, section: str, table: Mapping[str, Any]) -> None:
        self.source, self.section, self.table = source, section, table
        self.known: list[str] = []

    def _error(self, key: str, problem: str, fix: str = "") -> ConfigError:
        return ConfigError(self.source, f"[{self.section}] {key}", problem, fix)

    def get(self, key: str, default: Any, convert: Callable[[str, Any], Any]) -> Any:
        self.known.append(key)
        if key not in self.table:
            return default
        return convert(key, self.table[key])

    def string(self, key: str, default: str, choices: tuple[str, ...] = ()) -> str:
        def convert(k: str, v: Any) -> str:
            if not isinstance(v, str):
                raise self._error(k, f"must be a string, not {_type_name(v)}", f'{k} = "..."')
            if choices and v not in choices:
                raise self._error(k, f"{v!r} is not one of {', '.join(choices)}")
            return v

        return self.get(key, default, convert)

    def boolean(self, key: str, default: bool) -> bool:
        def convert(k: str, v: Any) -> bool:
            if not isinstance(v, bool):
                raise self._error(k, f"must be true or false, not {_type_name(v)}", f"{k} = true")
            return v

        return self.get(key, default, convert)

    def number(self, key: str, default: float, minimum: float = 0, integer: bool = True) -> Any:
        def convert(k: str, v: Any) -> Any:
            ok = isinstance(v, int) if integer else isinstance(v, int | float)
            if isinstance(v, bool) or not ok:
                kind = "a whole number" if integer else "a number"
                raise self._error(k, f"must be {kind}, not {_type_name(v)}", f"{k} = {default}")
            if v < minimum:
                raise self._error(k, f"must be at least {minimum}, not {v}")
            return v

        return self.get(key, default, convert)

    def size(self, key: str, default: int) -> int:
        """Bytes, as a whole number or a string with a K/M/G suffix ("35M")."""

        def convert(k: str, v: Any) -> int:
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
            if isinstance(v, str):
                text = v.strip().upper().removesuffix("B").removesuffix("I")
                unit = text[-1:] if text[-1:] in "KMG" else ""
                digits = text[: len(text) - len(unit)].strip()
                if digits.isdigit() and int(digits) > 0:
                    return int(digits) * _SIZE_SUFFIXES[unit]
            raise self._error(k, f'must be a size in bytes such as 10485760 or "10M", not {v!r}')

        return self.get(key, default, convert)

    def path(self, key: str, default: Path | None, base: Path, must_exist: bool) -> Path | None:
        def convert(k: str, v: Any) -> Path:
            if not isinstance(v, str) or not v:
                raise self._error(k, "must be a file path string", f'{k} = "/etc/mailhub/..."')
            p = Path(v).expanduser()
            p = p if p.is_absolute() else base / p
            if must_exist and not p.exists():
                raise self._error(k, f"file {str(p)!r} does not exist", "create it or fix the path")
            return p

        return self.get(key, default, convert)

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        def convert(k: str, v: Any) -> tuple[str, ...]:
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise self._error(k, "must be a list of strings", f'{k} = ["...", "..."]')
            return tuple(v)

        return self.get(key, default, convert)

    def finish(self) -> None:
        """Unknown keys are errors: a typo must not silently become a default."""
        for key in self.table:
            if key not in self.known:
                close = difflib.get_close_matches(key, self.known, n=1)
                fix = (
                    f"did you mean {close[0]!r}?"
                    if close
                    else ("known keys: " + ", ".join(self.known))
                )
                raise self._error(key, "unknown key", fix)


def normalise_domain(domain: str) -> str:
    """Lower-case IDNA A-label form of a domain name, or ValueError saying what is wrong."""
    text = domain.strip().rstrip(".").lower()
    if not text:
        raise ValueError("empty domain name")
    try:
        # IDNA 2008 with UTS #46 mapping, the same conversion the SMTP address parser applies,
        # so a domain in the config matches the one a client writes.
        ascii_form = text if text.isascii() else idna.encode(text, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as e:
        raise ValueError(f"{domain!r} is not a valid domain name ({e})") from None
    labels = ascii_form.split(".")
    # RFC 1035 2.3.1 / RFC 5321 4.1.2: letters, digits, hyphens; no hyphen at either end.
    if len(ascii_form) > 253 or len(labels) < 1:
        raise ValueError(f"{domain!r} is too long for a domain name")
    for label in labels:
        if (
            not label
            or len(label) > 63
            or label[0] == "-"
            or label[-1] == "-"
            or not all(c.isalnum() or c == "-" for c in label)
            or not label.isascii()
        ):
            raise ValueError(f"{domain!r} is not a valid domain name (label {label!r})")
    return ascii_form


def _domains(source: str, table: Mapping[str, Any], dev: bool) -> DomainsConfig:
    r = _Reader(source, "domains", table)
    local = r.strings("local", ())
    catch_all = r.strings("catch_all", ())
    accept_any = r.boolean("accept_any", MODE_DEFAULTS["[domains] accept_any"](dev))
    r.finish()

    def clean(key: str, names: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for name in names:
            try:
                out.append(normalise_domain(name))
            except ValueError as e:
                raise ConfigError(
                    source, f"[domains] {key}", str(e), "use a plain host name like example.com"
                ) from None
        return tuple(dict.fromkeys(out))

    local_t, catch_t = clean("local", local), clean("catch_all", catch_all)
    # A catch-all domain is local by definition; list it once, in either key.
    local_t = local_t + tuple(d for d in catch_t if d not in local_t)
    return DomainsConfig(local=local_t, catch_all=catch_t, accept_any=accept_any)


def _listeners(source: str, table: Mapping[str, Any], reactor: Any, dev: bool) -> ListenersConfig:
    r = _Reader(source, "listeners", table)
    values = {
        name: r.strings(name, MODE_DEFAULTS[f"[listeners] {name}"](dev)) for name in DEV_PORTS
    }
    r.finish()
    # Imported here, not at the top: endpoints (and TLS with it) cost ~150 ms to import, and
    # `mailhub sendmail` reads the configuration for every message it sends.
    from twisted.internet.endpoints import serverFromString

    from mailhub.proxyproto import inner_description

    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    for name, endpoints in values.items():
        for description in endpoints:
            try:
                inner = inner_description(description)  # haproxy:...: the PROXY protocol
                serverFromString(reactor, description if inner is None else inner)
            except (ValueError, TypeError, KeyError) as e:
                raise ConfigError(
                    source,
                    f"[listeners] {name}",
                    f"{description!r} is not a Twisted server endpoint string ({e})",
                    f'for example {name} = ["tcp:{PRODUCTION_PORTS[name]}:interface=0.0.0.0"]',
                ) from None
    return ListenersConfig(**values)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(reader: _Reader, key: str, value: Any) -> float:
    """Seconds, as a number or a string with s/m/h/d ("15m", "5d")."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        unit = _DURATION_UNITS.get(text[-1:])
        number = text[:-1] if unit else text
        try:
            amount = float(number)
        except ValueError:
            amount = -1
        if amount >= 0:
            return amount * (unit or 1)
    raise reader._error(key, f'must be a duration such as 300 or "5m", "4h", "5d"; not {value!r}')


def _fraction(reader: _Reader, key: str, default: float) -> float:
    """A share between 0 (exclusive) and 1 (inclusive)."""
    value = float(reader.number(key, default, integer=False))
    if not 0 < value <= 1:
        raise reader._error(key, f"must be a share above 0 and at most 1, not {value}",
                            f"{key} = {default}")  # fmt: skip
    return value


def _host_port(reader: _Reader, key: str, value: Any, default_port: int) -> tuple[str, int]:
    """ "host", "host:port" or "[v6addr]:port"."""
    if isinstance(value, str) and value.strip():
        text = value.strip()
        host, port = text, default_port
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest.startswith(":") and rest[1:].isdigit():
                port = int(rest[1:])
        elif text.count(":") == 1:
            host, _, p = text.partition(":")
            if p.isdigit():
                port = int(p)
            else:
                host = ""
        if host and 0 < port < 65536:
            return host, port
    raise reader._error(key, f"must be a host or host:port, not {value!r}", f'{key} = "host:25"')


def _relay(source: str, table: Mapping[str, Any], base: Path) -> RelayConfig:
    r = _Reader(source, "relay", table)
    policies = ("opportunistic", "verify", "none")

    def routes(key: str, value: Any) -> tuple[tuple[str, str, int], ...]:
        if not isinstance(value, dict):
            raise r._error(key, "must be a table", f'{key} = {{ "example.org" = "10.0.0.5:25" }}')
        out = []
        for domain, target in value.items():
            try:
                name = normalise_domain(domain)
            except ValueError as e:
                raise r._error(key, str(e)) from None
            out.append((name, *_host_port(r, f"{key}.{domain}", target, 25)))
        return tuple(out)

    def tls_policy(key: str, value: Any) -> tuple[tuple[str, str], ...]:
        if not isinstance(value, dict) or not all(v in policies for v in value.values()):
            raise r._error(
                key,
                f"must map domains to one of {', '.join(policies)}",
                f'{key} = {{ "example.org" = "verify" }}',
            )
        return tuple((normalise_domain(d), p) for d, p in value.items())

    def nameservers(key: str, value: Any) -> tuple[tuple[str, int], ...]:
        if not isinstance(value, list):
            raise r._error(key, "must be a list", f'{key} = ["127.0.0.1:53"]')
        return tuple(_host_port(r, key, v, 53) for v in value)

    relay = RelayConfig(
        routes=r.get("routes", (), routes),
        tls=r.string("tls", "opportunistic", policies),
        tls_policy=r.get("tls_policy", (), tls_policy),
        nameservers=r.get("nameservers", (), nameservers),
        port=r.number("port", 25, minimum=1),
        reuse_idle_time=r.get("reuse_idle_time", 5.0, lambda k, v: _duration(r, k, v)),
        reuse_max_messages=r.number("reuse_max_messages", 100, minimum=1),
        reuse_max_age=r.get("reuse_max_age", 300.0, lambda k, v: _duration(r, k, v)),
    )
    smarthost_at = r.get("smarthost", None, lambda k, v: _host_port(r, k, v, 587))
    tls_mode = r.string("smarthost_tls", "starttls", ("starttls", "implicit", "none"))
    username = r.string("smarthost_username", "") or None
    password_file = r.path("smarthost_password_file", None, base, must_exist=True)
    r.finish()
    if smarthost_at is not None:
        if (username is None) != (password_file is None):
            raise ConfigError(
                source,
                "[relay] smarthost_username",
                "username and password file go together",
                "set both smarthost_username and smarthost_password_file, or neither",
            )
        relay = dataclasses.replace(
            relay,
            smarthost=Smarthost(
                smarthost_at[0], smarthost_at[1], tls_mode, username, password_file
            ),
        )
    return relay


_POLICY_CHOICES = {
    "dmarc_reject": ("reject", "quarantine", "none"),
    "dmarc_quarantine": ("junk", "none"),
    "spf_fail": ("reject", "mark"),
}


def _check_policy(r: _Reader, default: CheckPolicy) -> CheckPolicy:
    return CheckPolicy(
        **{
            key: r.string(key, getattr(default, key), choices)
            for key, choices in _POLICY_CHOICES.items()
        }
    )


def _checks(source: str, table: Mapping[str, Any]) -> ChecksConfig:
    r = _Reader(source, "checks", table)
    d = ChecksConfig()

    def nameservers(key: str, value: Any) -> tuple[tuple[str, int], ...]:
        if not isinstance(value, list):
            raise r._error(key, "must be a list", f'{key} = ["127.0.0.1:53"]')
        servers = tuple(_host_port(r, key, v, 53) for v in value)
        for host, _ in servers:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise r._error(
                    key, f"{host!r} is not an IP address", f'{key} = ["127.0.0.1:53"]'
                ) from None
        return servers

    authserv_id = r.string("authserv_id", d.authserv_id).strip()
    if authserv_id and not all(
        c.isascii() and c.isprintable() and c not in ' ;()"\\' for c in authserv_id
    ):
        raise r._error(
            "authserv_id", f"{authserv_id!r} is not a token (RFC 8601 2.5)", 'e.g. "mx.example.org"'
        )
    timeout = r.get("timeout", d.timeout, lambda k, v: _duration(r, k, v))
    if timeout <= 0:
        raise r._error("timeout", "must be more than 0 seconds", "timeout = 20")
    enabled = r.boolean("enabled", d.enabled)
    max_size = r.size("max_message_size", d.max_message_size)
    policy = _check_policy(r, d.policy)
    dev_sending_ip = r.string("dev_sending_ip", d.dev_sending_ip).strip()
    if dev_sending_ip:
        try:
            dev_sending_ip = str(ipaddress.ip_address(dev_sending_ip))
        except ValueError:
            raise r._error(
                "dev_sending_ip",
                f"{dev_sending_ip!r} is not an IP address",
                'the address production mail leaves from, e.g. dev_sending_ip = "203.0.113.5"',
            ) from None

    def domains(key: str, value: Any) -> tuple[tuple[str, CheckPolicy], ...]:
        fix = '[checks.domain."example.org"] tables with dmarc_reject, dmarc_quarantine, spf_fail'
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise r._error(key, "must be tables, one per recipient domain", fix)
        out = []
        for name, sub in value.items():
            try:
                domain = normalise_domain(name)
            except ValueError as e:
                raise r._error(key, str(e), fix) from None
            dr = _Reader(source, f'checks.domain."{name}"', sub)
            out.append((domain, _check_policy(dr, policy)))
            dr.finish()
        return tuple(out)

    checks = ChecksConfig(
        nameservers=r.get("nameservers", d.nameservers, nameservers),
        dns_timeout=r.get("dns_timeout", d.dns_timeout, lambda k, v: _duration(r, k, v)),
        dns_cache_size=r.number("dns_cache_size", d.dns_cache_size, minimum=0),
        enabled=enabled,
        authserv_id=authserv_id,
        timeout=float(timeout),
        log_accepted=r.boolean("log_accepted", d.log_accepted),
        max_message_size=max_size,
        policy=policy,
        domains=r.get("domain", (), domains),
        dev_sending_ip=dev_sending_ip,
        rspamd=_rspamd_url(r, d.rspamd),
        rspamd_timeout=float(
            r.get("rspamd_timeout", d.rspamd_timeout, lambda k, v: _duration(r, k, v))
        ),
    )
    if checks.rspamd_timeout <= 0:
        raise r._error("rspamd_timeout", "must be more than 0 seconds", "rspamd_timeout = 10")
    if checks.dns_timeout <= 0:
        raise r._error("dns_timeout", "must be more than 0 seconds", "dns_timeout = 5")
    r.finish()
    return checks


def _rspamd_url(r: _Reader, default: str) -> str:
    url = r.string("rspamd", default).strip()
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise r._error(
            "rspamd", f"{url!r} is not an http URL of rspamd", 'rspamd = "http://127.0.0.1:11333"'
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise r._error(
            "rspamd", f"{url!r} has a bad port", 'e.g. "http://127.0.0.1:11333"'
        ) from None
    return url.rstrip("/")


def _queue(source: str, table: Mapping[str, Any]) -> QueueConfig:
    r = _Reader(source, "queue", table)
    d = QueueConfig()

    def schedule(key: str, value: Any) -> tuple[float, ...]:
        if not isinstance(value, list) or not value:
            raise r._error(key, "must be a non-empty list of durations", f'{key} = ["1m", "1h"]')
        return tuple(_duration(r, key, v) for v in value)

    queue = QueueConfig(
        retry_schedule=r.get("retry_schedule", d.retry_schedule, schedule),
        max_lifetime=r.get("max_lifetime", d.max_lifetime, lambda k, v: _duration(r, k, v)),
        delay_notice=r.get("delay_notice", d.delay_notice, lambda k, v: _duration(r, k, v)),
        max_per_destination=r.number("max_per_destination", d.max_per_destination, minimum=1),
    )
    r.finish()
    return queue


def allowed_host(name: str) -> str:
    """A web Host allow-list entry: an IP address, or a domain name in A-label form."""
    text = name.strip()
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return normalise_domain(text)


def _web(source: str, table: Mapping[str, Any], dev: bool) -> WebConfig:
    r = _Reader(source, "web", table)
    d = WebConfig()
    login = r.boolean("login", MODE_DEFAULTS["[web] login"](dev))
    admins = []
    for address in r.strings("admins", ()):
        local, at, domain = address.strip().rpartition("@")
        try:
            if not at or not local:
                raise ValueError(f"{address!r} is not an address")
            admins.append(f"{local.lower()}@{normalise_domain(domain)}")
        except ValueError as e:
            raise ConfigError(
                source, "[web] admins", str(e), 'admins = ["ops@example.com"]'
            ) from None
    allowed_hosts = []
    for name in r.strings("allowed_hosts", ()):
        try:
            allowed_hosts.append(allowed_host(name))
        except ValueError as e:
            raise ConfigError(
                source, "[web] allowed_hosts", str(e), 'allowed_hosts = ["mail.internal"]'
            ) from None
    web = WebConfig(
        login=login,
        admins=tuple(admins),
        poll_interval=float(r.number("poll_interval", d.poll_interval, 0.05, integer=False)),
        max_wait=float(r.number("max_wait", d.max_wait, 1, integer=False)),
        allowed_hosts=tuple(allowed_hosts),
        link_check_private=r.boolean("link_check_private", d.link_check_private),
        webhooks=r.get("webhook", (), partial(_tables, source, _webhook)),
        tags=r.get("tag", (), partial(_tables, source, _tag_rule)),
    )
    r.finish()
    return web


# -- [[web.webhook]] and [[web.tag]] (issue 15) ------------------------------------------------


def _tables(source: str, read: Callable[[_Reader], Any], key: str, value: Any) -> tuple[Any, ...]:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(source, f"[web] {key}", "must be an array of tables", f"[[web.{key}]]")
    out = []
    for table in value:
        r = _Reader(source, f"web.{key}", table)
        out.append(read(r))
        r.finish()
    return tuple(out)


def _webhook(r: _Reader) -> WebhookConfig:
    d = WebhookConfig(url="")
    url = r.string("url", "")
    scheme, sep, rest = url.partition("://")
    if scheme.lower() not in ("http", "https") or not sep or not rest.strip("/"):
        raise r._error("url", f"{url!r} is not an http:// or https:// URL", 'url = "http://..."')
    return WebhookConfig(
        url=url,
        secret=r.string("secret", d.secret),
        mailbox=r.string("mailbox", d.mailbox).strip().lower(),
        sandbox=r.string("sandbox", d.sandbox).strip(),
        tag=r.string("tag", d.tag).strip().lower(),
        folder=r.string("folder", d.folder).strip(),
        timeout=_duration(r, "timeout", r.get("timeout", d.timeout, lambda k, v: v)),
        max_attempts=r.number("max_attempts", d.max_attempts, minimum=1),
        max_age=_duration(r, "max_age", r.get("max_age", d.max_age, lambda k, v: v)),
        retry_base=float(r.number("retry_base", d.retry_base, 0.001, integer=False)),
        retry_max=float(r.number("retry_max", d.retry_max, 0.001, integer=False)),
        queue_size=r.number("queue_size", d.queue_size, minimum=1),
    )


def _tag_rule(r: _Reader) -> TagRuleConfig:
    match = r.string("match", "")
    tag = r.string("tag", "").strip().lower()
    if not match.strip():
        raise r._error("match", "needs a search, as the API takes it", 'match = "subject:invoice"')
    if not tag:
        raise r._error("tag", "needs a tag name", 'tag = "billing"')
    return TagRuleConfig(match=match, tag=tag)


def _faults(source: str, table: Mapping[str, Any]) -> FaultsConfig:
    """[[faults.rule]] tables, in the order written (mailhub.faults.rules reads each)."""
    r = _Reader(source, "faults", table)
    example = '[[faults.rule]] tables, e.g. stage = "rcpt", action = "reply", code = 550'

    def rules(key: str, value: Any) -> tuple[Mapping[str, Any], ...]:
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise r._error(key, "must be an array of tables", example)
        return tuple(value)

    faults = FaultsConfig(rules=r.get("rule", (), rules))
    r.finish()
    return faults


def _sandboxes(source: str, table: Mapping[str, Any], dev: bool) -> SandboxesConfig:
    r = _Reader(source, "sandboxes", table)
    sandboxes = SandboxesConfig(
        enabled=r.boolean("enabled", MODE_DEFAULTS["[sandboxes] enabled"](dev)),
        max=int(r.number("max", SandboxesConfig.max, 1)),
    )
    r.finish()
    return sandboxes


def _dkim(source: str, table: Mapping[str, Any], base: Path) -> DKIMConfig:
    r = _Reader(source, "dkim", table)
    d = DKIMConfig()
    bounce = r.string("bounce_domain", "")
    try:
        bounce_domain = normalise_domain(bounce) if bounce else None
    except ValueError as e:
        raise ConfigError(
            source, "[dkim] bounce_domain", str(e), 'bounce_domain = "example.com"'
        ) from None
    dkim = DKIMConfig(
        key_dir=r.path("key_dir", None, base, must_exist=False),
        max_sign_size=r.size("max_sign_size", d.max_sign_size),
        bounce_domain=bounce_domain,
    )
    r.finish()
    return dkim


def _sendmail(source: str, table: Mapping[str, Any], base: Path) -> SendmailConfig:
    r = _Reader(source, "sendmail", table)
    server = r.get("server", None, lambda k, v: _host_port(r, k, v, 25))
    user = r.string("user", "") or None
    password_file = r.path("password_file", None, base, must_exist=True)
    r.finish()
    if (user is None) != (password_file is None):
        raise ConfigError(source, "[sendmail]", "user and password_file go together",
                          "set both (a login for submission) or neither")  # fmt: skip
    return SendmailConfig(server=server, user=user, password_file=password_file)


def _dev(source: str, table: Mapping[str, Any], dev: bool) -> DevConfig:
    r = _Reader(source, "dev", table)
    d = DevConfig()
    max_messages = r.number("max_messages", d.max_messages)
    max_age = r.get("max_age", None, lambda k, v: _duration(r, k, v) or None)
    r.finish()
    if not dev and table:
        raise ConfigError(source, "[dev]", "retention is for the dev stack only (dev = true)",
                          "remove [dev]: production never prunes mail")  # fmt: skip
    return DevConfig(max_messages=max_messages, max_age=max_age)


def _sni_pairs(source: str, value: Any, base: Path) -> tuple[tuple[Path, Path], ...]:
    """[[tls.sni]] tables, each with certificate and key, into (certificate, key) pairs."""
    fix = '[[tls.sni]] tables, each with certificate = "..." and key = "..."'
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(source, "[tls] sni", "must be an array of tables", fix)
    pairs = []
    for table in value:
        r = _Reader(source, "tls.sni", table)
        certificate = r.path("certificate", None, base, must_exist=True)
        key = r.path("key", None, base, must_exist=True)
        r.finish()
        if certificate is None or key is None:
            raise ConfigError(source, "[[tls.sni]]", "each entry needs certificate and key", fix)
        pairs.append((certificate, key))
    return tuple(pairs)


_SECTIONS = (
    "server",
    "domains",
    "listeners",
    "limits",
    "smtp",
    "queue",
    "relay",
    "checks",
    "tls",
    "files",
    "web",
    "faults",
    "dkim",
    "sandboxes",
    "sendmail",
    "dev",
)


def load(path: Path | str, *, data_dir: Path | str | None = None, reactor: Any = None) -> Config:
    """Read and validate a TOML config file. Raises ConfigError with an operator-facing message."""
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            source, None, "config file not found", "check the --config path"
        ) from None
    except OSError as e:
        raise ConfigError(source, None, f"cannot read config file: {e.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(source, None, "config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, None, f"not valid TOML: {e}", "see https://toml.io") from None

    for section, value in doc.items():
        if section not in _SECTIONS:
            close = difflib.get_close_matches(section, _SECTIONS, n=1)
            fix = f"did you mean [{close[0]}]?" if close else "sections: " + ", ".join(_SECTIONS)
            raise ConfigError(source, f"[{section}]", "unknown section", fix)
        if not isinstance(value, dict):
            raise ConfigError(source, f"[{section}]", "must be a table", f"write it as [{section}]")
    # Relative paths resolve against the working directory, as --data does.
    base = Path.cwd()

    server = _Reader(source, "server", doc.get("server", {}))
    # dev first: it picks the default of every setting in MODE_DEFAULTS.
    dev = server.boolean("dev", MODE_DEFAULTS["[server] dev"].production)

    def default(key: str) -> Any:
        return MODE_DEFAULTS[key](dev)

    fqdn = default("[server] hostname") or socket.getfqdn() or "localhost"
    hostname = server.string("hostname", fqdn)
    data_default = Path(default("[server] data_dir"))
    data = server.path("data_dir", base / data_default, base, must_exist=False)
    assert data is not None  # it has a default
    server.finish()
    try:
        hostname = normalise_domain(hostname)
    except ValueError as e:
        raise ConfigError(source, "[server] hostname", str(e), "use this host's DNS name") from None

    limits_r = _Reader(source, "limits", doc.get("limits", {}))
    d = Limits()
    limits = Limits(
        max_message_size=limits_r.size("max_message_size", d.max_message_size),
        max_line_length=limits_r.number("max_line_length", d.max_line_length, minimum=100),
        max_recipients=limits_r.number("max_recipients", d.max_recipients, minimum=1),
        idle_timeout=float(limits_r.number("idle_timeout", d.idle_timeout, 1, integer=False)),
        max_errors=limits_r.number("max_errors", d.max_errors, minimum=1),
        max_connections=limits_r.number("max_connections", d.max_connections, minimum=1),
        max_connections_per_ip=limits_r.number(
            "max_connections_per_ip", d.max_connections_per_ip, minimum=1
        ),
        auth_max_failures=limits_r.number("auth_max_failures", d.auth_max_failures, minimum=1),
        auth_max_delay=float(
            limits_r.number("auth_max_delay", d.auth_max_delay, minimum=0, integer=False)
        ),
        auth_user_delay_after=limits_r.number("auth_user_delay_after", d.auth_user_delay_after),
        auth_user_max_delay=float(
            limits_r.number("auth_user_max_delay", d.auth_user_max_delay, integer=False)
        ),
        auth_hash_threads=limits_r.number("auth_hash_threads", d.auth_hash_threads, minimum=1),
        auth_hash_queue=limits_r.number("auth_hash_queue", d.auth_hash_queue, minimum=1),
        stress_threshold=_fraction(limits_r, "stress_threshold", d.stress_threshold),
        stress_idle_timeout=float(
            limits_r.number("stress_idle_timeout", d.stress_idle_timeout, 1, integer=False)
        ),
        imap_idle_timeout=float(
            limits_r.number("imap_idle_timeout", d.imap_idle_timeout, 1, integer=False)
        ),
        imap_max_line_length=limits_r.number(
            "imap_max_line_length", d.imap_max_line_length, minimum=1000
        ),
        pop3_idle_timeout=float(
            limits_r.number("pop3_idle_timeout", d.pop3_idle_timeout, 1, integer=False)
        ),
        listen_backlog=limits_r.number("listen_backlog", d.listen_backlog, minimum=1),
    )
    limits_r.finish()

    smtp_r = _Reader(source, "smtp", doc.get("smtp", {}))
    s = SMTPConfig()
    smtp = SMTPConfig(
        bare_line_endings=smtp_r.string(
            "bare_line_endings", s.bare_line_endings, ("reject", "normalise")
        ),
        expn=smtp_r.boolean("expn", s.expn),
        banner=smtp_r.string("banner", s.banner),
        restrict_sender=smtp_r.boolean("restrict_sender", default("[smtp] restrict_sender")),
        auth_without_tls_on_loopback=smtp_r.boolean(
            "auth_without_tls_on_loopback", default("[smtp] auth_without_tls_on_loopback")
        ),
        received_auth_header=smtp_r.boolean("received_auth_header", s.received_auth_header),
    )
    smtp_r.finish()

    tls_r = _Reader(source, "tls", doc.get("tls", {}))
    tls = TLSConfig(
        certificate=tls_r.path("certificate", None, base, must_exist=True),
        key=tls_r.path("key", None, base, must_exist=True),
        sni=tls_r.get("sni", (), lambda k, v: _sni_pairs(source, v, base)),
    )
    tls_r.finish()
    if (tls.certificate is None) != (tls.key is None):
        raise ConfigError(source, "[tls]", "certificate and key go together", "set both or neither")
    if tls.sni and tls.certificate is None:
        raise ConfigError(
            source,
            "[tls]",
            "[[tls.sni]] certificates without a default certificate",
            "set [tls] certificate and key: clients that send no name get that one",
        )

    files = _Reader(source, "files", doc.get("files", {}))
    # The users file may not exist yet: `mailhub user add` creates it (its folder must exist).
    users_file = files.path("users", None, base, must_exist=False)
    if users_file is not None and not users_file.parent.is_dir():
        raise ConfigError(
            source,
            "[files] users",
            f"folder {str(users_file.parent)!r} does not exist",
            "create it, or fix the path",
        )
    aliases_file = files.path("aliases", None, base, must_exist=True)
    files.finish()

    domains = _domains(source, doc.get("domains", {}), dev)
    if not domains.local and not domains.accept_any:
        raise ConfigError(
            source,
            "[domains] local",
            "no local domains: this server would accept no mail",
            'add local = ["example.com"] (or accept_any = true for a catch-everything test server)',
        )
    listeners = _listeners(source, doc.get("listeners", {}), reactor, dev)
    queue = _queue(source, doc.get("queue", {}))
    relay = _relay(source, doc.get("relay", {}), base)
    checks = _checks(source, doc.get("checks", {}))
    web = _web(source, doc.get("web", {}), dev)
    faults = _faults(source, doc.get("faults", {}))
    dkim = _dkim(source, doc.get("dkim", {}), base)
    sandboxes = _sandboxes(source, doc.get("sandboxes", {}), dev)
    sendmail = _sendmail(source, doc.get("sendmail", {}), base)
    retention = _dev(source, doc.get("dev", {}), dev)

    return Config(
        source=source,
        hostname=hostname,
        data_dir=Path(data_dir).absolute() if data_dir is not None else data,
        dev=dev,
        domains=domains,
        listeners=listeners,
        limits=limits,
        smtp=smtp,
        queue=queue,
        relay=relay,
        checks=checks,
        tls=tls,
        web=web,
        faults=faults,
        dkim=dkim,
        sandboxes=sandboxes,
        sendmail=sendmail,
        retention=retention,
        users_file=users_file,
        aliases_file=aliases_file,
    )
