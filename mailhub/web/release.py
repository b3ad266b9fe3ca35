"""Release: relay one caught message to an SMTP server the user names (host and port), through
the relay code the outgoing queue uses (``mailhub.relay.courier.RemoteCourier`` with a static
route for the recipients' domains). STARTTLS is used when offered (opportunistic, plain text if
the handshake fails), as for any relayed mail.

The host is resolved with the system resolver (getaddrinfo: /etc/hosts, docker's DNS), not with
the MX resolver, so ``localhost`` and compose service names work.
"""

from __future__ import annotations

import io
import socket
from dataclasses import dataclass, field
from typing import BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from mailhub.interfaces import AttemptResult
from mailhub.relay.client import Timeouts
from mailhub.relay.courier import RemoteCourier, resolver_from_config

# A person is waiting in front of the page: no 5-minute RFC timeouts.
RELEASE_TIMEOUTS = Timeouts(
    greeting=30, command=30, mail=30, rcpt=30, data_init=30, data_block=60, data_final=120, quit=5
)


class ReleaseError(Exception):
    """The request cannot be carried out (unknown host, bad address): 400/502."""


@dataclass
class ReleaseItem:
    """The queue item shape the courier reads (``mailhub.relay.courier.QueueItem``)."""

    queue_id: str
    mail_from: str
    recipients: list[str]
    body: bytes = field(repr=False)
    body_type: str = "8BITMIME"
    smtputf8: bool = False
    envelope_id: str | None = None

    @property
    def size(self) -> int:
        return len(self.body)

    def open_body(self) -> BinaryIO:
        return io.BytesIO(self.body)


def without_return_path(raw: bytes) -> bytes:
    """The stored copy starts with our ``Return-Path:``; the next hop must not get it (RFC 5321
    4.4: only the final delivery adds it)."""
    if raw[:12].lower() == b"return-path:":
        end = raw.find(b"\n")
        return raw[end + 1 :] if end >= 0 else raw
    return raw


def _resolve(host: str) -> str:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ReleaseError(f"cannot resolve {host!r}: {e}") from None
    return str(infos[0][4][0])


async def release(
    raw: bytes,
    *,
    host: str,
    port: int,
    mail_from: str,
    recipients: list[str],
    hostname: str,
    queue_id: str,
    reactor: object = None,
) -> list[AttemptResult]:
    """Deliver ``raw`` to ``host:port`` for ``recipients``; one result per recipient."""
    address = await deferToThread(_resolve, host)
    body = without_return_path(raw)
    eight_bit = any(b > 127 for b in body)
    smtputf8 = not (mail_from.isascii() and all(r.isascii() for r in recipients))
    domains = {r.rpartition("@")[2].lower().rstrip(".") for r in recipients}
    courier = RemoteCourier(
        resolver_from_config(),  # not asked: every domain has a route to an IP address
        hostname=hostname,
        routes={d: (address, port) for d in domains},
        default_tls="opportunistic",
        timeouts=RELEASE_TIMEOUTS,
        connect_timeout=15,
        reactor=reactor,
    )
    item = ReleaseItem(
        queue_id, mail_from, recipients, body, "8BITMIME" if eight_bit else "7BIT", smtputf8
    )
    # ignore: a ReleaseItem has all that deliver reads of a QueueItem (duck-typed)
    d: Deferred[list[AttemptResult]] = courier.deliver(item)  # type: ignore[arg-type]
    try:
        return await d
    finally:
        await courier.close()  # no idle session kept for reuse: releases are one-offs
