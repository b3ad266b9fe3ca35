"""The SMTP listener's factory: settings, policy, sink, clock, logger and connection limits."""

from __future__ import annotations

from collections.abc import Callable

from twisted.cred.portal import Portal
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from mailhub.config import Limits, SMTPConfig
from mailhub.connlimit import CountedSession, Slot, counter_for
from mailhub.interfaces import IMessageSink
from mailhub.queueid import QueueIdGenerator
from mailhub.smtp.policy import ISMTPPolicy, Role
from mailhub.smtp.protocol import SMTPServerProtocol
from mailhub.smtp.replies import Reply
from mailhub.throttle import AuthThrottle

BARE_LINE_ENDING_POLICIES = ("reject", "normalise", "normalize")


class SMTPServerFactory(ServerFactory[SMTPServerProtocol]):
    """Builds ``SMTPServerProtocol`` sessions sharing one configuration.

    Use with any stream endpoint: ``serverFromString(reactor, "tcp:1025").listen(factory)``.
    ``tls_context_factory`` (an ``IOpenSSLServerConnectionCreator`` or context factory) turns
    on STARTTLS. ``portal`` (the shared ``twisted.cred`` portal) turns on AUTH, whenever the
    policy's ``check_auth`` allows it; ``throttle`` slows down and cuts off password guessing.
    ``role`` says what the listener is for; the policy and sink passed in must fit it (the
    service builds them per role). ``log`` and ``queue_ids`` are injectable for tests.
    (Fault rules: ``mailhub.faults.smtp.FaultySMTPServerFactory``.)
    """

    protocol = SMTPServerProtocol

    def __init__(
        self,
        *,
        hostname: str,
        limits: Limits,
        smtp_config: SMTPConfig,
        policy: ISMTPPolicy,
        sink: IMessageSink,
        clock: IReactorTime,
        tls_context_factory: object | None = None,
        role: Role = Role.MTA,
        portal: Portal | None = None,
        throttle: AuthThrottle | None = None,
        log: Logger | None = None,
        queue_ids: Callable[[], str] | None = None,
    ) -> None:
        if smtp_config.bare_line_endings not in BARE_LINE_ENDING_POLICIES:
            raise ValueError(
                f"bare_line_endings must be 'reject' or 'normalise', "
                f"not {smtp_config.bare_line_endings!r}"
            )
        self.hostname = hostname
        self.limits = limits
        self.smtp_config = smtp_config
        self.policy = policy
        self.sink = sink
        self.clock = clock
        self.tls_context_factory = tls_context_factory
        self.role = role
        self.portal = portal
        self.throttle = throttle
        self.log = log if log is not None else Logger(namespace="mailhub.smtp")
        self.new_queue_id = queue_ids if queue_ids is not None else QueueIdGenerator(clock)
        # RFC 5321 4.2 / RFC 2034: the greeting carries no enhanced status code.
        self.greeting = Reply(220, None, f"{hostname} {smtp_config.banner}")
        # Sessions that have not logged in are evicted for room only where people log in
        # (submission); on port 25 a session is a message on its way (mailhub.connlimit).
        self.connection_count = counter_for(
            limits, evict=role is Role.SUBMISSION and portal is not None
        )

    @property
    def connections(self) -> int:
        return self.connection_count.total

    @property
    def connections_by_ip(self) -> dict[str, int]:
        return self.connection_count.by_address

    def connection_opened(self, client_address: str, session: CountedSession) -> Slot | None:
        """Count a new connection; None (not counted) when a limit says refuse it (421)."""
        return self.connection_count.admit(client_address, session)

    def connection_closed(self, slot: Slot) -> None:
        self.connection_count.release(slot)
