"""Config -> the running server: a MultiService of listeners, the store and its housekeeping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorCore
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from mailhub.config import Config
from mailhub.smtp.factory import SMTPServerFactory
from mailhub.smtp.policy import RecipientPolicy
from mailhub.store.delivery import GroupCommitter, MaildirSink, StaleTmpCleaner
from mailhub.store.store import MailStore
from mailhub.tls import (
    ServerTLS,
    SighupReloadService,
    TLSFileError,
    as_config_error,
    ensure_dev_certificate,
)

log = Logger()

# How often stale tmp/ files are looked for (the Maildir spec says delete after 36 hours).
TMP_CLEAN_INTERVAL = 3600.0


class ListenerService(StreamServerEndpointService):
    """One endpoint from the config; remembers which config key it came from for error messages."""

    # Fail start-up at once when the port cannot be bound, instead of logging and running on.
    _raiseSynchronously = True

    def __init__(self, config: Config, key: str, description: str, factory: Factory) -> None:
        super().__init__(serverFromString(_reactor(), description), factory)
        self.config_source, self.key, self.description = config.source, key, description
        self.setName(f"{key}:{description}")

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
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
        host = port.getHost()
        log.info("{key} listening on {host}:{port}", key=self.key, host=host.host, port=host.port)
        return port


class MailhubService(MultiService):
    """The whole server. Holds the shared parts so tests and later services can reach them."""

    def __init__(self, config: Config, store: MailStore, sink: MaildirSink) -> None:
        super().__init__()
        self.config, self.store, self.sink = config, store, sink
        self.tls: ServerTLS | None = None  # set by build(); reload() re-reads certificates

    def startService(self) -> None:
        super().startService()
        log.info(
            "mailhub started ({mode}): mail in {mail_dir}; listening: {listeners}",
            mode="development stack" if self.config.dev else self.config.source,
            mail_dir=str(self.config.mail_dir),
            listeners=", ".join(s.description for s in self if isinstance(s, ListenerService)),
        )

    def listening_ports(self, key: str) -> list[Any]:
        """The bound ports of one listener kind (tests use this to find port-0 addresses)."""
        ports = []
        for s in self:
            if isinstance(s, ListenerService) and s.key == key and s._waitingForPort:
                ports.append(s._waitingForPort.result)
        return ports


def _reactor() -> IReactorCore:
    from twisted.internet import reactor

    return reactor  # type: ignore[return-value]


def _smtp_factory(
    config: Config, store: MailStore, sink: MaildirSink, tls: ServerTLS | None
) -> Factory:
    policy = RecipientPolicy(config.domains, mailbox_exists=store.has_mailbox)
    return SMTPServerFactory(
        hostname=config.hostname,
        limits=config.limits,
        smtp_config=config.smtp,
        policy=policy,
        sink=sink,
        clock=_reactor(),
        tls_context_factory=tls,  # None: STARTTLS not offered
    )


# Listener kinds this version serves, and how to build each one's protocol factory. The port plan
# in config.DEV_PORTS names the others; they arrive with their own issues.
FACTORIES: dict[str, Callable[[Config, MailStore, MaildirSink, ServerTLS | None], Factory]] = {
    "smtp": _smtp_factory,
}


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


def build(config: Config) -> MailhubService:
    config.mail_dir.mkdir(parents=True, exist_ok=True)
    store = MailStore(config.mail_dir, hostname=config.hostname)
    # Added before the listeners so it stops after them, waiting for commits in flight.
    committer = GroupCommitter()
    sink = MaildirSink(store, committer)
    top = MailhubService(config, store, sink)
    committer.setServiceParent(top)
    StaleTmpCleaner(store, interval=TMP_CLEAN_INTERVAL).setServiceParent(top)
    tls = top.tls = _server_tls(config)
    if tls is not None:
        # `kill -HUP` (systemd: ExecReload=/bin/kill -HUP $MAINPID) re-reads the certificates.
        SighupReloadService(tls.reload).setServiceParent(top)

    for key, builder in FACTORIES.items():
        descriptions = getattr(config.listeners, key)
        if not descriptions:
            continue
        factory = builder(config, store, sink, tls)
        for description in descriptions:
            ListenerService(config, key, description, factory).setServiceParent(top)
    waiting = [k for k in config.listeners.__dataclass_fields__ if k not in FACTORIES]
    if any(getattr(config.listeners, k) for k in waiting):
        log.info("not served by this version yet: {kinds}", kinds=", ".join(waiting))
    return top
