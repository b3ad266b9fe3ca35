"""Simultaneous connections per listener, in total and per client address.

Every listener's factory (SMTP, IMAP, POP3) counts its connections with one ``ConnectionCounter``
and refuses beyond ``[limits] max_connections`` / ``max_connections_per_ip``; each protocol answers
the refusal in its own words (SMTP 421 4.7.0, IMAP ``* BYE``, POP3 ``-ERR [SYS/TEMP]``).
"""

from __future__ import annotations


class ConnectionCounter:
    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.total = 0
        self.by_address: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``; False (and not counted) beyond a limit."""
        per_address = self.by_address.get(address, 0)
        if self.total >= self.max_total or per_address >= self.max_per_address:
            return False
        self.total += 1
        self.by_address[address] = per_address + 1
        return True

    def release(self, address: str) -> None:
        """An admitted connection from ``address`` has closed."""
        self.total -= 1
        left = self.by_address.get(address, 1) - 1
        if left > 0:
            self.by_address[address] = left
        else:
            self.by_address.pop(address, None)
