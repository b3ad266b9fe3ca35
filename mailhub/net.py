"""Network helpers that several packages need (the SMTP policy, the web page's access rules)."""

from __future__ import annotations

import ipaddress

from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    ISystemHandle,
    ITLSTransport,
)


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, and IPv4-mapped loopback (::ffff:127.0.0.1)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%lo)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


class IStreamTransport(ITLSTransport, ISystemHandle, IConsumer, IPushProducer):
    """What mailhub's protocols use of their transport: a TCP connection (ITLSTransport extends
    ITCPTransport), perhaps TLS, that is a consumer (a producer streams a message into it) and a
    producer (paused while its write buffer is full).

    For the type checker only: Twisted types ``Protocol.transport`` as ``ITransport | None``,
    which knows neither TLS nor producers, and it is ``None`` only before ``connectionMade``.
    A protocol class declares ``transport: IStreamTransport`` to say what it relies on.
    """
