"""An SMTP harness with a users file (alice), a portal over it and a login throttle."""

from __future__ import annotations

from base64 import b64encode
from pathlib import Path
from typing import Any

import argon2
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase

from mailhub.auth import UserDBChecker, make_portal
from mailhub.config import DomainsConfig, SMTPConfig
from mailhub.smtp.policy import RecipientPolicy, Role, SubmissionPolicy
from mailhub.throttle import AuthThrottle
from mailhub.users import UserDB
from tests.support.smtp import LOCAL, Dialog, Harness

FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


USER = f"alice@{LOCAL}"


PASSWORD = "correct horse battery staple"


DOMAINS = DomainsConfig(local=(LOCAL,))


def inline(f: Any, /, *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


def b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return b64encode(data).decode()


def plain(user: str = USER, password: str = PASSWORD, authzid: str = "") -> str:
    return b64(f"{authzid}\0{user}\0{password}")


class AuthHarness:
    """A users file with alice, a portal over it, a throttle on the harness clock."""

    def __init__(
        self,
        case: SynchronousTestCase,
        *,
        role: Role = Role.MTA,
        smtp_config: SMTPConfig | None = None,
        aliases_of: Any = None,
        portal: Any = "users",
        max_failures: int = 5,
    ) -> None:
        db = UserDB(Path(case.mktemp()), hasher=FAST)
        db.add(USER, PASSWORD)
        self.users = db
        if portal == "users":
            portal = make_portal(UserDBChecker(db, run=inline))
        smtp_config = smtp_config or SMTPConfig()
        mailboxes = {USER, f"bob@{LOCAL}"}
        options = {"auth_without_tls_on_loopback": smtp_config.auth_without_tls_on_loopback}
        if role is Role.SUBMISSION:
            policy: RecipientPolicy = SubmissionPolicy(
                DOMAINS,
                mailboxes.__contains__,
                restrict_sender=smtp_config.restrict_sender,
                aliases_of=aliases_of,
                **options,
            )
        else:
            policy = RecipientPolicy(DOMAINS, mailboxes.__contains__, **options)
        self.harness = Harness(
            smtp_config=smtp_config,
            policy=policy,
            tls_context_factory=object(),
            role=role,
            portal=portal,
            throttle=None,
        )
        self.clock = self.harness.clock
        self.throttle = AuthThrottle(self.clock, max_failures=max_failures)
        self.harness.factory.throttle = self.throttle if portal is not None else None

    def connect(self, **kw: Any) -> Dialog:
        kw.setdefault("tls", True)
        return self.harness.connect(**kw)


def starttls(d: Dialog) -> None:
    """Greet, STARTTLS, greet again: the session is now 'encrypted'."""
    d.greet()
    d.run(
        """
        C: STARTTLS
        S: 220 2.0.0 Ready to start TLS
        C: EHLO client.example.net
        S: 250-mx.example.org...
        """,
        complete=False,
    )
    d.replies()


def ehlo_keywords(d: Dialog) -> list[str]:
    d.send(b"EHLO client.example.net\r\n")
    return [line[4:] for line in d.replies()[1:]]
