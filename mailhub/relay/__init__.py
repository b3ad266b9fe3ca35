"""Outgoing mail: MX resolution (``mx``), the ESMTP client (``client``), client TLS policy
(``tlsclient``) and the queue's remote courier (``courier``)."""

from mailhub.relay.client import Timeouts
from mailhub.relay.courier import RemoteCourier, Smarthost
from mailhub.relay.mx import DNSFailure, MXHost, MXResolver
from mailhub.relay.tlsclient import TLSPolicy

__all__ = [
    "DNSFailure",
    "MXHost",
    "MXResolver",
    "RemoteCourier",
    "Smarthost",
    "TLSPolicy",
    "Timeouts",
]
