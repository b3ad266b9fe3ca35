"""Config -> the running server: a MultiService of listeners, the store and its housekeeping."""

from __future__ import annotations

import dataclasses
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IProtocolFactory,
    IReactorCore,
    IReactorThreads,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from mailhub.aliases import AliasMap
from mailhub.auth import DevChecker, HashingPool, MailRealm, UserDBChecker, make_portal
from mailhub.checks.arc import arc_seal
from mailhub.checks.cryptothread import CryptoThread
from mailhub.checks.dkimverify import Offload
from mailhub.checks.inbound import judge_with, our_authserv_id, policy_from_config
from mailhub.checks.keys import KeyStore
from mailhub.checks.resolver import make_resolver
from mailhub.checks.signing import Signer, SigningSink
from mailhub.checks.sink import CheckingSink, arc_key
from mailhub.config import Config
from mailhub.errors import ConfigError
from mailhub.faults.certificates import FaultyServerTLS
from mailhub.faults.rules import FaultRules, rules_from_config
from mailhub.faults.smtp import FaultySMTPServerFactory
from mailhub.fdlimit import raise_nofile_limit
from mailhub.imap.factory import IMAPServerFactory
from mailhub.interfaces import IMessageSink
from mailhub.net import is_loopback
from mailhub.pickup import PickupCollector
from mailhub.pop3.factory import POP3ServerFactory
from mailhub.proxyproto import ProxiedEndpoint, inner_description
from mailhub.queue import Queue, RetrySchedule
from mailhub.relay.courier import courier_from_config
from mailhub.retention import STATE_FILE, Retention
from mailhub.routing import LOCAL, REMOTE, Router, SplitSink, local_domains, policy_resolver
from mailhub.sandboxes import (
    SANDBOX_DOMAIN,
    SandboxChecker,
    Sandboxes,
    SandboxFileError,
    SandboxSink,
    SandboxSweeper,
)
from mailhub.smtp.factory import SMTPServerFactory
from mailhub.smtp.policy import RecipientPolicy, Role, SubmissionPolicy
from mailhub.smtp.submission import SubmissionSink
from mailhub.store.changes import StoreChanges
from mailhub.store.courier import LocalCourier
from mailhub.store.delivery import GroupCommitter, MaildirSink, StaleTmpCleaner
from mailhub.store.store import MailStore
from mailhub.throttle import AuthThrottle
from mailhub.tls import (
    ServerTLS,
    SighupReloadService,
    TLSFileError,
    as_config_error,
    ensure_dev_certificate,
    tls_server_factory,
)
from mailhub.users import FileFormatError, UserDB
from mailhub.web.site import make_site
from mailhub.workers import WorkerRole, watch_parent

log = Logger()

# How often stale tmp/ files are looked for (the Maildir spec says delete after 36 hours).
TMP_CLEAN_INTERVAL = 3600.0


# Endpoint types whose parser takes ``backlog=`` (Twisted's tcp, tcp6, ssl and unix).
_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix"})


def with_backlog(description: str, backlog: int) -> str:
    """The endpoint string with ``backlog=`` added, unless it names one or takes none."""
    inner = inner_description(description)
    if inner is not None:  # haproxy:tcp:...: the backlog is the inner endpoint's
        return f"{description.partition(':')[0]}:{with_backlog(inner, backlog)}"
    kind = description.split(":", 1)[0].strip().lower()
    if kind not in _BACKLOG_TYPES or re.search(r"(?<!\\):backlog=", description):
        return description
    return f"{description}:backlog={backlog}"


def listener_endpoint(config: Config, description: str) -> IStreamServerEndpoint:
    """The endpoint of one ``[listeners]`` string; ``haproxy:...`` reads a PROXY header first
    (mailhub.proxyproto: the wrapped protocol sees the client's address, not the proxy's)."""
    description = with_backlog(description, config.limits.listen_backlog)
    inner = inner_description(description)
    if inner is None:
        return serverFromString(_reactor(), description)
    return ProxiedEndpoint(serverFromString(_reactor(), inner), _reactor())


class ListenerService(StreamServerEndpointService):
    """One endpoint from the config; remembers which config key it came from for error messages."""

    # Fail start-up at once when the port cannot be bound, instead of logging and running on.
    _raiseSynchronously = True

    def __init__(
        self,
        config: Config,
        key: str,
        description: str,
        factory: IProtocolFactory,
        endpoint: IStreamServerEndpoint | None = None,
    ) -> None:
        if endpoint is None:
            endpoint = listener_endpoint(config, description)
        elif inner_description(description) is not None:
            # A worker's socket from its supervisor (mailhub.workers) for a PROXY listener: the
            # supervisor bound the inner endpoint; the header is still read here first.
            endpoint = ProxiedEndpoint(endpoint, _reactor())
        super().__init__(endpoint, factory)
        self.config_source, self.key, self.description = config.source, key, description
        self.setName(f"{key}:{description}")
        # Told the bound address (the pickup collector records the SMTP one for sendmail).
        self.on_bound: Callable[[str, int], None] | None = None

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
            assert self._waitingForPort is not None  # set by privilegedStartService
            self._waitingForPort.addCallback(self._bound)
        except CannotListenError as e:
            reason = e.socketError.strerror if hasattr(e.socketError, "strerror") else e.socketError
            raise SystemExit(
                f"mailhub: {self.config_source}: [listeners] {self.key}: cannot listen on "
                f"{self.description!r}: {reason}\n"
                "  fix: stop whatever uses that port, or choose another one in the config "
                "(--config) for this listener"
            ) from None

    def _bound(self, port: Any) -> Any:
        # The one start-up line of a listener: kind, bound address, and the config's endpoint.
        host = port.getHost()
        log.info(
            "{key} listening on {host}:{port} ({description})",
            key=self.key,
            host=host.host,
            port=host.port,
            description=self.description,
        )
        if self.on_bound is not None:
            self.on_bound(host.host, host.port)
        return port


def _quiet(factory: Any) -> None:
    """No "Starting factory <... at 0x...>" lines (wrapped factories too, as TLS wraps them):
    each listener logs its own line when bound (ListenerService._bound)."""
    while factory is not None:
        factory.noisy = False
        factory = getattr(factory, "wrappedFactory", None)


class MailhubService(MultiService):
    """The whole server. Holds the shared parts (store, queue, portal, TLS) for tests and admin."""

    def __init__(self, config: Config, store: MailStore, sink: MaildirSink) -> None:
        super().__init__()
        self.config, self.store, self.sink = config, store, sink
        self.tls: ServerTLS | None = None  # set by build(); reload() re-reads certificates
        self.queue: Queue | None = None  # the outgoing queue, set by build()
        self.portal: Portal | None = None  # the shared twisted.cred portal
        self.throttle: AuthThrottle | None = None
        self.hashing: HashingPool | None = None  # the password hashing pool (bounded queue)
        self.users: UserDB | None = None
        self.aliases: AliasMap | None = None
        self.changes: StoreChanges | None = None  # the store's change feed, set by build()
        self.sandboxes: Sandboxes | None = None  # isolated inboxes for tests ([sandboxes])
        self.pickup: PickupCollector | None = None  # what `mailhub sendmail` left, set by build()
        self.retention: Retention | None = None  # the dev stack's pruning, set by build()
        # The SMTP receiver's fault rules: from [[faults.rule]], changed at run time (web API).
        try:
            self.faults = FaultRules(rules_from_config(config))
        except ConfigError as e:
            raise SystemExit(f"mailhub: configuration error in {e}") from None
        # What twistd is to log through (mailhub.tap sets it): see setServiceParent.
        self.twistd_log_observer: ILogObserver | None = None

    def setServiceParent(self, parent: Any) -> None:
        """Put under twistd's Application, this also hands it ``twistd_log_observer``: twistd
        logs through an Application's ILogObserver component when it has one, and looks for
        it after the plugin made this service, before it starts logging."""
        super().setServiceParent(parent)
        observer = self.twistd_log_observer
        if (
            observer is not None
            and isinstance(parent, Componentized)
            and parent.getComponent(ILogObserver) is None
        ):
            parent.setComponent(ILogObserver, observer)

    def startService(self) -> None:
        super().startService()
        log.info(
            "mailhub started ({mode}): mail in {mail_dir}; listening: {listeners}",
            mode="development stack" if self.config.dev else self.config.source,
            mail_dir=str(self.config.mail_dir),
            listeners=", ".join(s.description for s in self if isinstance(s, ListenerService)),
            mailhub_ready=True,  # a supervisor (mailhub.workers) waits for this event
        )

    def listening_ports(self, key: str) -> list[Any]:
        """The bound ports of one listener kind (tests use this to find port-0 addresses)."""
        ports = []
        for s in self:
            if isinstance(s, ListenerService) and s.key == key and s._waitingForPort:
                ports.append(s._waitingForPort.result)
        return ports

    def bound(self, key: str) -> list[tuple[str, int]]:
        """The (host, port) pairs one listener kind is bound to, once bound."""
        out = []
        for port in self.listening_ports(key):
            host = port.getHost()
            out.append((host.host, host.port))
        return out


class _IReactor(IReactorCore, IReactorTime, IReactorThreads):
    """What the service asks of the global reactor (for the type checker; any real one has it)."""


def _reactor() -> _IReactor:
    from twisted.internet import reactor

    return reactor  # type: ignore[return-value]  # the module attribute is typed as a module


@dataclass(frozen=True)
class Shared:
    """What every listener's factory is built from: one of each per process."""

    config: Config
    store: MailStore
    sink: IMessageSink  # local copies to the Maildir, remote ones to the queue (SplitSink)
    tls: ServerTLS | None
    portal: Portal
    throttle: AuthThrottle
    users: UserDB | None
    aliases: AliasMap | None
    is_local_domain: Callable[[str], bool]
    faults: FaultRules = field(default_factory=FaultRules)  # the SMTP listeners consult these
    changes: StoreChanges | None = None  # the store's change feed: IMAP IDLE, the web feed
    # ``sink`` behind the inbound checks (mailhub.checks): the MTA listener's, and in the dev
    # stack every SMTP listener's; None when [checks] enabled is off.
    checked: IMessageSink | None = None
    keystore: KeyStore | None = None  # DKIM signing keys ([dkim] key_dir)
    sandboxes: Sandboxes | None = None  # isolated inboxes for tests ([sandboxes] enabled)
    # Listener kind -> the (host, port) pairs it is bound to (a new sandbox's answer names them)
    listening: Callable[[str], list[tuple[str, int]]] | None = None
    retention: Retention | None = None  # the dev stack's pruning (the web page tells of it)

    def signing(self, inner: IMessageSink) -> IMessageSink:
        """``inner`` behind DKIM signing of authenticated users' mail (a no-op without keys)."""
        if self.keystore is None:
            return inner
        return SigningSink(
            inner,
            self.keystore,
            max_size=self.config.dkim.max_sign_size,
            spool_dir=self.config.data_dir,  # unnamed temporary files (O_TMPFILE)
        )

    def smtp_tls(self) -> FaultyServerTLS | None:
        """The SMTP listeners' TLS: the real certificates, unless a fault rule says otherwise."""
        return FaultyServerTLS(self.tls, self.faults) if self.tls is not None else None

    def policy_options(self) -> dict[str, Any]:
        """What every recipient policy shares (MTA, submission, the queue's local courier)."""
        return {
            "aliases": self.aliases,
            "auth_without_tls_on_loopback": self.config.smtp.auth_without_tls_on_loopback,
            "relay_available": True,  # the outgoing queue takes mail for other domains
            "local_domain": self.is_local_domain,
            "sandboxes": self.sandboxes,
        }

    def plaintext_login_allowed(self, client_host: str) -> bool:
        """May this client log in (IMAP, POP3) before TLS? In the dev stack yes; otherwise only
        from loopback when [smtp] auth_without_tls_on_loopback says so (the SMTP AUTH rule)."""
        if self.config.dev:
            return True
        return self.config.smtp.auth_without_tls_on_loopback and is_loopback(client_host)

    def mailbox_exists(self, address: str) -> bool:
        """A recipient in a non-catch-all local domain exists if it is a user or has a mailbox."""
        if self.users is not None and self.users.exists(address):
            return True
        return self.store.has_mailbox(address)


def _smtp_factory(shared: Shared, role: Role, *, starttls: bool = True) -> SMTPServerFactory:
    config = shared.config
    policy_options = shared.policy_options()
    # Port 25 mail is judged (SPF, DKIM, DMARC, ARC); in the dev stack all mail is, so a
    # developer sees what a receiver would make of what their app sends (never refused there).
    inner = shared.sink
    if shared.checked is not None and (role is Role.MTA or config.dev):
        inner = shared.checked
    if role is Role.SUBMISSION:
        submission = SubmissionPolicy(
            config.domains,
            shared.mailbox_exists,
            restrict_sender=config.smtp.restrict_sender,
            aliases_of=shared.aliases.aliases_of if shared.aliases is not None else None,
            **policy_options,
        )
        policy: RecipientPolicy = submission
        # RFC 6409 8: Message-ID, Date, no Bcc. Never on port 25: relayed mail is not ours to fix.
        # With restrict_sender the header From/Sender must pass MAIL FROM's rule too. DKIM
        # signs after these fixes: the fields it signs are final.
        sink: Any = SubmissionSink(
            shared.signing(inner),
            hostname=config.hostname,
            clock=_reactor(),
            may_send_as=submission.may_send_as if config.smtp.restrict_sender else None,
        )
    else:
        policy = RecipientPolicy(config.domains, shared.mailbox_exists, **policy_options)
        sink = shared.signing(inner)  # signs only what a logged-in user sends
    return FaultySMTPServerFactory(
        hostname=config.hostname,
        limits=config.limits,
        smtp_config=config.smtp,
        policy=policy,
        sink=sink,
        clock=_reactor(),
        tls_context_factory=shared.smtp_tls() if starttls else None,  # None: no STARTTLS
        role=role,
        portal=shared.portal,
        throttle=shared.throttle,
        faults=shared.faults,
    )


def _mta(shared: Shared) -> IProtocolFactory:
    return _smtp_factory(shared, Role.MTA)


def _submission(shared: Shared) -> IProtocolFactory:
    return _smtp_factory(shared, Role.SUBMISSION)


def _smtps(shared: Shared) -> IProtocolFactory:
    # RFC 8314 3: TLS from the first byte; the protocol sees ISSLTransport and offers no STARTTLS.
    tls = shared.smtp_tls()
    assert tls is not None  # _check_tls_for_listeners
    return tls_server_factory(tls, _smtp_factory(shared, Role.SUBMISSION, starttls=False))


def _mail_access_factory(
    kind: type[IMAPServerFactory] | type[POP3ServerFactory], shared: Shared, *, upgrade: bool
) -> IMAPServerFactory | POP3ServerFactory:
    """IMAP and POP3 listeners are built alike: the same store, logins and throttle; ``upgrade``
    offers STARTTLS/STLS (False on the implicit-TLS ports, where TLS is already on)."""
    config = shared.config
    return kind(
        hostname=config.hostname,
        limits=config.limits,
        store=shared.store,
        portal=shared.portal,
        clock=_reactor(),
        tls_context_factory=shared.tls if upgrade else None,
        throttle=shared.throttle,
        plaintext_login_allowed=shared.plaintext_login_allowed,
    )


def _pop3(shared: Shared) -> IProtocolFactory:
    return _mail_access_factory(POP3ServerFactory, shared, upgrade=True)


def _pop3s(shared: Shared) -> IProtocolFactory:
    # RFC 8314 3: TLS from the first byte; the protocol sees ISSLTransport and offers no STLS.
    assert shared.tls is not None  # _check_tls_for_listeners
    return tls_server_factory(
        shared.tls, _mail_access_factory(POP3ServerFactory, shared, upgrade=False)
    )


def _imap_factory(shared: Shared, *, upgrade: bool) -> IMAPServerFactory:
    factory = _mail_access_factory(IMAPServerFactory, shared, upgrade=upgrade)
    assert isinstance(factory, IMAPServerFactory)
    factory.changes = shared.changes  # IDLE wakes up on the store's changes
    return factory


def _imap(shared: Shared) -> IProtocolFactory:
    return _imap_factory(shared, upgrade=True)


def _imaps(shared: Shared) -> IProtocolFactory:
    # RFC 8314 3: TLS from the first byte (993); the protocol sees ISSLTransport, no STARTTLS.
    assert shared.tls is not None  # _check_tls_for_listeners
    return tls_server_factory(shared.tls, _imap_factory(shared, upgrade=False))


def _web(shared: Shared) -> IProtocolFactory:
    # The page and JSON API: a twisted.web Site over the same store and portal.
    return make_site(shared)


# Every listener kind of config.ListenersConfig, and how to build its protocol factory.
FACTORIES: dict[str, Callable[[Shared], IProtocolFactory]] = {
    "smtp": _mta,
    "submission": _submission,
    "smtps": _smtps,
    "pop3": _pop3,
    "pop3s": _pop3s,
    "imap": _imap,
    "imaps": _imaps,
    "web": _web,
}
# Listener kinds that carry passwords: they do not start without a certificate.
NEEDS_TLS = ("submission", "smtps", "pop3", "pop3s", "imap", "imaps")


def _server_tls(config: Config) -> ServerTLS | None:
    """The configured certificates, or in the dev stack a self-signed one for localhost that is
    made on first start and reused after. None: no TLS (production without [tls])."""
    pairs = config.tls.pairs
    try:
        if not pairs and config.dev:
            dev = ensure_dev_certificate(config.data_dir)
            log.info(
                "dev TLS certificate {path} ({state}), SHA-256 fingerprint {fingerprint}",
                path=str(dev.certificate_path),
                state="new" if dev.created else "reused",
                fingerprint=dev.fingerprint,
            )
            pairs = ((dev.certificate_path, dev.key_path),)
        return ServerTLS(pairs) if pairs else None
    except TLSFileError as e:
        message = f"mailhub: configuration error in {as_config_error(e, config.source)}"
        raise SystemExit(message) from None


def _check_tls_for_listeners(config: Config, tls: ServerTLS | None) -> None:
    if tls is not None:
        return
    for key in NEEDS_TLS:
        if getattr(config.listeners, key):
            raise SystemExit(
                f"mailhub: configuration error in {config.source}: [listeners] {key}: "
                "needs a TLS certificate (passwords are sent there), but [tls] has none\n"
                '  fix: set [tls] certificate = "/path/fullchain.pem" and key = '
                f'"/path/privkey.pem", or turn the listener off with {key} = []'
            )


def _load(config: Config, key: str, make: Callable[[], Any]) -> Any:
    """Read the users or aliases file at start-up; a broken one stops it with a clean message."""
    try:
        return make()
    except (FileFormatError, OSError) as e:
        raise SystemExit(
            f"mailhub: configuration error in {config.source}: {key}: {e}\n"
            "  fix: correct that line (the running server keeps its last good copy on later edits)"
        ) from None


def _portal(config: Config, store: MailStore, pool: HashingPool) -> tuple[Portal, UserDB | None]:
    """The one portal (SMTP AUTH, IMAP, POP3, the web login): the users file, or in the dev stack
    without one, any login (the user's mailbox is made on first login)."""
    users = None
    users_file = config.users_file
    if users_file is not None:
        users = _load(config, "[files] users", lambda: UserDB(users_file))
    if users is not None:
        return make_portal(UserDBChecker(users, run=pool.run)), users
    if config.dev:

        def create(address: str) -> None:
            store.mailbox(address, create=True)

        checker = DevChecker(default_domain=config.hostname, on_first_login=create, run=pool.run)
        log.info("dev stack: any user name and password logs in")
        return make_portal(checker), None
    if config.listeners.submission or config.listeners.smtps:
        log.warn(
            "{source}: no [files] users: nobody can log in to submission "
            "(create one with `mailhub user add`)",
            source=config.source,
        )
    # No checker: every login is refused (535), as for a users file with nobody in it.
    return Portal(MailRealm(), []), None


def _checking(
    config: Config,
    inner: IMessageSink,
    is_local: Callable[[str], bool],
    keystore: KeyStore,
    offload: Offload | None = None,
) -> CheckingSink:
    """The inbound checks in front of ``inner`` (mailhub.checks.sink), with the server's one
    resolver (a TTL cache shared by all sessions). Copies forwarded through an alias to another
    domain are ARC-sealed with the alias domain's RSA DKIM key (RFC 8617 has only rsa-sha256).
    ``offload``: where the DKIM cryptography of mail judged from the caches runs
    (``CryptoThread.run``)."""
    checks = config.checks
    authserv_id = our_authserv_id(config)
    reactor = _reactor()
    judge = judge_with(
        make_resolver(config, reactor),
        authserv_id=authserv_id,
        policy=policy_from_config(config),
        clock=reactor,
        # The dev stack says what a receiver would see of what it signs with its own keys.
        own_keys=keystore.key_files if config.dev else None,
        offload=offload,
    )
    return CheckingSink(
        inner,
        judge=judge,
        authserv_id=authserv_id,
        is_local_domain=is_local,
        arc_key=lambda domain: arc_key(keystore, domain),
        seal=arc_seal,
        max_check_size=checks.max_message_size,
        spool_dir=str(config.data_dir),
        log_accepted=checks.log_accepted,
    )


def _notice_signer(
    config: Config, keystore: KeyStore, run: Callable[..., Deferred[Any]] = deferToThread
) -> Callable[[bytes], Deferred[bytes]]:
    """Bounces and delay notices (From: MAILER-DAEMON@hostname) are signed by [dkim]
    bounce_domain's keys, else by the hostname's or its nearest parent domain's."""
    signer = Signer(keystore, max_size=config.dkim.max_sign_size, run=run)
    domain = config.dkim.bounce_domain or config.hostname

    def sign(message: bytes) -> Deferred[bytes]:
        return signer.sign_bytes(message, domain, what="delivery status notification")

    return sign


def _sandboxes(
    config: Config, store: MailStore, portal: Portal, faults: FaultRules
) -> Sandboxes | None:
    """The sandboxes (mailhub.sandboxes) when [sandboxes] enabled: read from the data dir, their
    logins in front of the portal's checker, their fault rules removed with them."""
    if not config.sandboxes.enabled:
        return None
    sandboxes = Sandboxes(config.data_dir, store, limit=config.sandboxes.max)
    try:
        sandboxes.load()
    except SandboxFileError as e:
        raise SystemExit(f"mailhub: {e}") from None
    inner = portal.checkers.get(IUsernamePassword)
    portal.registerChecker(SandboxChecker(sandboxes, inner))
    sandboxes.on_delete.append(lambda box: faults.remove_login(box.address))
    return sandboxes


def _with_sandboxes(is_local: Callable[[str], bool]) -> Callable[[str], bool]:
    """Sandbox mail stays here even when a smarthost takes every other domain."""
    return lambda domain: domain.lower() == SANDBOX_DOMAIN or is_local(domain)


class ParentWatch(Service):
    """A worker stops when its supervisor is gone (mailhub.workers.watch_parent)."""

    def startService(self) -> None:
        super().startService()
        reactor = _reactor()
        watch_parent(lambda: reactor.stop() if reactor.running else None)
        # The supervisor forwards SIGHUP to every worker: without TLS to reload (whose service
        # starts after this one and takes the signal) it must not end the worker.
        if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)


def build(config: Config, worker: WorkerRole | None = None) -> MailhubService:
    """The server; ``worker``: one of several processes (mailhub.workers), which serves the
    sockets its supervisor bound and runs the singletons only if it is the primary."""
    primary = worker is None or worker.primary
    config.mail_dir.mkdir(parents=True, exist_ok=True)
    raise_nofile_limit(config)  # a descriptor per connection: 10,000 IDLE sessions need 10,000
    store = MailStore(config.mail_dir, hostname=config.hostname)
    # Added before the listeners so it stops after them, waiting for commits in flight.
    committer = GroupCommitter()
    # UID-list writes of the reactor's looks (change feed, IDLE, SELECT) run in its workers.
    store.settings.offload.run = committer.run
    store.settings.offload.holding = committer.run_holding  # commands' writes under their lock
    sink = MaildirSink(store, committer)
    top = MailhubService(config, store, sink)
    committer.setServiceParent(top)
    # What changed in the store, for IMAP IDLE and the web feed; deliveries by this process are
    # told at once, others' are noticed through inotify or the timed scan.
    changes = StoreChanges(
        store,
        _reactor(),
        scan_interval=config.web.poll_interval,
    )
    changes.setServiceParent(top)
    top.changes = changes
    sink.delivered = changes.touched
    if worker is not None:
        ParentWatch().setServiceParent(top)
    retention = None
    if primary and config.dev and (config.retention.max_messages or config.retention.max_age):
        # The oldest caught mail goes first; production never prunes.
        retention = top.retention = Retention(
            store,
            changes,
            _reactor(),
            max_messages=config.retention.max_messages,
            max_age=config.retention.max_age,
            state_file=config.data_dir / STATE_FILE,
        )
        retention.setServiceParent(top)
    if primary:  # the whole tree is walked: once for all workers
        StaleTmpCleaner(store, interval=TMP_CLEAN_INTERVAL).setServiceParent(top)
    tls = top.tls = _server_tls(config)
    _check_tls_for_listeners(config, tls)
    if tls is not None:
        # `kill -HUP` (systemd: ExecReload=/bin/kill -HUP $MAINPID) re-reads the certificates.
        SighupReloadService(tls.reload).setServiceParent(top)
    # Password hashes run here, off the reactor; started before and stopped after the listeners.
    limits = config.limits
    pool = HashingPool(
        _reactor(),
        threads=limits.auth_hash_threads,
        max_pending=limits.auth_hash_queue,
    )
    pool.setServiceParent(top)
    portal, users = _portal(config, store, pool)
    aliases = None
    aliases_file = config.aliases_file
    if aliases_file is not None:
        aliases = _load(
            config,
            "[files] aliases",
            lambda: AliasMap(
                aliases_file,
                is_user=lambda a: (users is not None and users.exists(a)) or store.has_mailbox(a),
            ),
        )
    throttle = AuthThrottle(
        _reactor(),
        max_failures=config.limits.auth_max_failures,
        max_delay=config.limits.auth_max_delay,
        user_free_failures=config.limits.auth_user_delay_after,
        user_max_delay=config.limits.auth_user_max_delay,
        # Guesses may fill only half the hashing queue: real logins always find room.
        max_suspect_checks=max(1, config.limits.auth_hash_queue // 2),
    )
    is_local = local_domains(config)
    sandboxes = top.sandboxes = _sandboxes(config, store, portal, top.faults)
    if sandboxes is not None:  # never with workers (tap refuses it): sandboxes are one process's
        is_local = _with_sandboxes(is_local)
        SandboxSweeper(sandboxes, _reactor()).setServiceParent(top)  # ttl: expired ones go
    # DKIM keys: read now, and again when `mailhub dkim keygen/retire` changes them.
    keystore = KeyStore(config.dkim_key_dir, _reactor())
    shared = Shared(
        config, store, sink, tls, portal, throttle, users, aliases, is_local, faults=top.faults,
        changes=changes, keystore=keystore, sandboxes=sandboxes, listening=top.bound,
        retention=retention,
    )  # fmt: skip
    if tls is not None:
        # Bad certificates (fault rules) carry the names of the real one, so each is bad only
        # in the way the rule says.
        info = tls.certificates[0]
        top.faults.certificate_names = info.dns_names + info.ip_addresses
    top.portal, top.throttle, top.users, top.aliases = portal, throttle, users, aliases
    top.hashing = pool

    # The outgoing queue, started before the listeners (they hand it mail) and stopped after.
    local_policy = RecipientPolicy(config.domains, shared.mailbox_exists, **shared.policy_options())
    queue = top.queue = Queue(
        config.data_dir / "queue",
        route=Router(is_local),
        couriers={
            LOCAL: LocalCourier(sink, policy_resolver(local_policy)),
            REMOTE: courier_from_config(config.relay, config.hostname),
        },
        hostname=config.hostname,
        schedule=RetrySchedule(
            delays=config.queue.retry_schedule,
            lifetime=config.queue.max_lifetime,
            delay_notice=config.queue.delay_notice,
        ),
        per_destination=config.queue.max_per_destination,
        sign_notice=_notice_signer(config, keystore),
        runner=primary,  # the other workers only enqueue (mailhub.queue.queue)
    )
    queue.setServiceParent(top)
    # Mail `mailhub sendmail` left while the server was down: into the queue, after it started.
    pickup = None
    if primary:
        pickup = top.pickup = PickupCollector(
            config.data_dir, queue.sink, _reactor(), config.hostname
        )
        pickup.setServiceParent(top)
    shared = dataclasses.replace(shared, sink=SplitSink(sink, queue.sink, is_local))
    if sandboxes is not None:  # a sandbox's mail keeps its envelope recipients (X-Original-To)
        shared = dataclasses.replace(shared, sink=SandboxSink(shared.sink, sandboxes))
    if config.checks.enabled:
        crypto = CryptoThread(_reactor())
        crypto.setServiceParent(top)  # before the listeners: started before, stopped after
        checked = _checking(config, shared.sink, is_local, keystore, crypto.run)
        shared = dataclasses.replace(shared, checked=checked)

    for key, builder in FACTORIES.items():
        descriptions = getattr(config.listeners, key)
        if not descriptions:
            continue
        endpoints: list[IStreamServerEndpoint | None] = [None] * len(descriptions)
        if worker is not None:
            endpoints = list(worker.endpoints(_reactor(), key))
            if not endpoints:
                continue  # served by another worker (the web listener: by the primary)
        factory = builder(shared)
        _quiet(factory)
        for description, endpoint in zip(descriptions, endpoints, strict=True):
            listener = ListenerService(config, key, description, factory, endpoint)
            # `mailhub sendmail` talks plain SMTP: not to a listener that wants a PROXY header
            if key == "smtp" and pickup is not None and inner_description(description) is None:
                listener.on_bound = pickup.listener_bound
            listener.setServiceParent(top)
    return top
