"""Plain facts about one SMTP connection, handed to policy hooks (aiosmtpd's shape).

Policy code reads these; only the protocol writes them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Session:
    client_address: str  # IP address as text ("" for non-IP transports)
    client_port: int = 0
    client_name: str = ""  # reverse DNS name if known
    helo: str | None = None  # argument of the last HELO/EHLO; None before it
    esmtp: bool = False  # EHLO (True) or HELO (False)
    tls: str | None = None  # "TLS" once TLS is active; version and cipher from the first message
    authenticated_as: str | None = None  # canonical address, set by a successful AUTH
