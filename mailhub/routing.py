"""Where each recipient's copy goes: our own Maildir store, or the outgoing queue.

At receipt (``SplitSink``): local recipients are written straight into the Maildir (being in the
mailbox is stronger than being in the queue, and it keeps one fsync pass per message), remote ones
into the durable queue; "250" waits for both. In the queue (``Router``): local recipients (for
example a bounce to one of our users) go to the ``local`` courier, others to ``remote`` grouped by
domain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhub.addresses import AddressError, parse_path
from mailhub.config import Config
from mailhub.envelope import Envelope
from mailhub.interfaces import IIncomingMessage, IMessageSink
from mailhub.smtp.policy import RecipientPolicy
from mailhub.smtp.session import Session

LOCAL = "local"
REMOTE = "remote"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


class Router:
    """The queue's routing: ``route(recipient) -> (courier name, destination)``."""

    def __init__(self, is_local_domain: Callable[[str], bool]) -> None:
        self._is_local = is_local_domain

    def __call__(self, recipient: str) -> tuple[str, str]:
        domain = domain_of(recipient)
        if self._is_local(domain):
            return LOCAL, domain
        return REMOTE, domain


@implementer(IMessageSink)
class SplitSink:
    """One message in, a copy for the local store and/or one for the queue."""

    def __init__(
        self, local: IMessageSink, remote: IMessageSink, is_local_domain: Callable[[str], bool]
    ) -> None:
        self._local, self._remote, self._is_local = local, remote, is_local_domain

    def open(self, envelope: Envelope) -> IIncomingMessage:
        mine = [r for r in envelope.recipients if self._is_local(domain_of(r.mailbox))]
        if len(mine) == len(envelope.recipients):
            return self._local.open(envelope)  # the common case: no wrapper, no extra work
        if not mine:
            return self._remote.open(envelope)
        theirs = [r for r in envelope.recipients if r not in mine]
        local = self._local.open(dataclasses.replace(envelope, recipients=mine))
        try:
            remote = self._remote.open(dataclasses.replace(envelope, recipients=theirs))
        except BaseException:
            local.abort()
            raise
        return _Both(envelope, local, remote)


def _first_failure(f: Failure) -> Failure:
    """gatherResults(consumeErrors=True) fails with FirstError; what failed is inside it."""
    error = f.value
    assert isinstance(error, defer.FirstError)
    return error.subFailure


@implementer(IIncomingMessage)
class _Both:
    def __init__(
        self, envelope: Envelope, local: IIncomingMessage, remote: IIncomingMessage
    ) -> None:
        self.envelope, self._parts = envelope, (local, remote)

    def write(self, data: bytes) -> None:
        try:
            for part in self._parts:
                part.write(data)
        except BaseException:
            self.abort()
            raise

    def ready(self) -> defer.Deferred[None] | None:
        waits = [d for d in (part.ready() for part in self._parts) if d is not None]
        if not waits:
            return None
        return defer.DeferredList(waits).addCallback(lambda _: None)

    def commit(self) -> defer.Deferred[str]:
        # Both durable before "250". If one fails the client is told so and sends again: the
        # copy that did commit may then arrive twice, never not at all.
        d = defer.gatherResults([part.commit() for part in self._parts], consumeErrors=True)
        d.addErrback(_first_failure)  # the first failure, as DeliveryError
        return d.addCallback(lambda _: self.envelope.queue_id)

    def abort(self) -> None:
        for part in self._parts:
            part.abort()


def local_domains(config: Config) -> Callable[[str], bool]:
    """Which domains this server keeps: the listed ones, and with ``accept_any`` (the dev stack)
    every domain, except those the config sends on (a route, or all of them via a smarthost)."""
    listed = frozenset(config.domains.local) | frozenset(config.domains.catch_all)
    routed = frozenset(domain for domain, _host, _port in config.relay.routes)
    keep_the_rest = config.domains.accept_any and config.relay.smarthost is None

    def is_local(domain: str) -> bool:
        domain = domain.lower()
        return domain in listed or (keep_the_rest and domain not in routed)

    return is_local


def policy_resolver(policy: RecipientPolicy) -> Callable[[str], list[str] | tuple[str, str]]:
    """The local courier's view of the recipient policy: an address from the queue resolves to
    the mailboxes SMTP would have delivered it to (plus-addressing, aliases, unknown users)."""
    system = Session(client_address="", authenticated_as="MAILER-DAEMON")

    def resolve(address: str) -> list[str] | tuple[str, str]:
        try:
            mailbox, _rest = parse_path(f"<{address}>")
        except AddressError as e:
            return ("5.1.3", f"bad recipient address syntax: {e}")
        decision = policy.check_recipient(system, mailbox)
        if decision.accepted:
            return list(decision.mailboxes)
        text = decision.reply.text
        return (
            decision.reply.enhanced or "5.0.0",
            text if isinstance(text, str) else " ".join(text),
        )

    return resolve
