"""Network helpers that several packages need (the SMTP policy, the web page's access rules)."""

from __future__ import annotations

import ipaddress
from typing import Any, TypeGuard, cast

from twisted.internet import main, tcp
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    ISystemHandle,
    ITLSTransport,
)
from twisted.python.failure import Failure


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


def _idle_tcp(transport: object) -> TypeGuard[tcp.Server]:
    """A plain TCP server connection, open, with nothing queued to write."""
    return (
        type(transport) is tcp.Server
        and bool(transport.connected)
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport.TLS
        and not transport._tempDataLen
        and len(transport.dataBuffer) == transport.offset
    )


def write_now(transport: object, data: bytes) -> None:
    """Write ``data`` to ``transport``, at once when nothing is queued before it.

    Twisted's TCP transport queues every write and asks epoll to report the socket writable:
    an ``epoll_ctl`` to add it, another turn of the reactor, ``send()``, an ``epoll_ctl`` to
    remove it. An SMTP reply is a few dozen octets that the socket buffer takes at once, and a
    connection-per-message client gets five of them (greeting, EHLO, the transaction, end of
    data, QUIT), so that detour is a good share of what a connection costs. Here a plain TCP
    transport with an empty buffer gets one ``send()``; whatever it did not take, and every
    other case (TLS, a wrapped transport, data already queued, a closing connection, an error),
    goes through ``transport.write`` as before, so the order of the octets and the handling of
    errors (the reactor finds them when it writes) stay Twisted's.
    """
    if _idle_tcp(transport):
        try:
            sent = transport.socket.send(data)
        except OSError:  # EAGAIN, EINTR, or an error the reactor will report when it writes
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    cast(Any, transport).write(data)


def close_now(transport: object) -> None:
    """Close ``transport`` after a session's last reply, at once when nothing is left to write.
    The protocol's ``connectionLost`` may run inside this call: make it the session's last act.

    ``loseConnection`` always waits for the socket to be reported writable before it closes:
    an ``epoll_ctl`` to stop reading, one to watch for writing, a turn of the reactor, and one
    more ``epoll_ctl`` at the close -- for every connection-per-message client, after its 221.
    A plain TCP transport whose replies all went out (``write_now``) has nothing to flush, so
    here it is closed as Twisted's ``loseConnection`` closes a transport whose writing side is
    already shut: stop reading, then ``connectionLost`` with ``ConnectionDone`` (shutdown, then
    close: an orderly FIN, never RST). Anything else (TLS, data still queued, a producer, a
    closing connection) uses ``loseConnection``.
    """
    if _idle_tcp(transport) and transport.producer is None:
        transport.stopReading()
        transport.connectionLost(Failure(main.CONNECTION_DONE))
        return
    cast(Any, transport).loseConnection()
