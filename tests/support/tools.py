"""What a test needs from the machine: a real client, a Dovecot binary, root.

Outside CI a missing need skips the test, with the Debian package that brings it. Under
``CI=true`` the same test fails instead (issue 12.1): a package that ``.ci/run`` forgot to
install, or that ``--no-install-recommends`` left half-working, must not hide behind a skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.python.failure import Failure
from twisted.trial import itrial, unittest

IN_CI = os.environ.get("CI", "").lower() == "true"

# Command name -> the Debian package that installs it (for the skip reason's apt line).
PACKAGE_OF = {
    "certutil": "libnss3-tools",
    "doveadm": "dovecot-core",
    "getmail": "getmail6",
    "haproxy": "haproxy",
    "mbsync": "isync",
    "offlineimap": "offlineimap3",
    "opendkim": "opendkim",
    "rspamd": "rspamd",
}

DOVECOT_IMAP = "/usr/lib/dovecot/imap"

T = TypeVar("T", bound=type)


def tool(name: str) -> str | None:
    """Why ``name`` cannot run here (not on PATH), or None when it can."""
    if shutil.which(name) is None:
        package = PACKAGE_OF.get(name, name)
        return f"{name} is not installed (apt-get install {package}); .ci/run installs it"
    return None


def swaks_tls() -> str | None:
    """swaks needs Net::SSLeay and IO::Socket::SSL for TLS, which Debian's swaks only
    recommends: without them it says ``TLS not available`` and the test fails obscurely."""
    missing = tool("swaks")
    if missing:
        return missing
    probe = subprocess.run(
        ["perl", "-MNet::SSLeay", "-MIO::Socket::SSL", "-e", "1"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return (
            "swaks cannot do TLS without Net::SSLeay and IO::Socket::SSL (apt-get install "
            "libnet-ssleay-perl libio-socket-ssl-perl); .ci/run installs them"
        )
    return None


def root_and_mail_user() -> str | None:
    """Dovecot refuses to run as root and drops to the ``mail`` user: the tests hand it files."""
    if os.geteuid() != 0:
        return "needs root: the files are handed to the 'mail' user, as Dovecot won't read as root"
    try:
        pwd.getpwnam("mail")
    except KeyError:
        return "no 'mail' system user"
    return None


def doveadm() -> str | None:
    return tool("doveadm") or root_and_mail_user()


def dovecot_imap() -> str | None:
    """Dovecot's imap binary, driven over stdin/stdout (``-c config``) in comparison tests."""
    if not os.path.exists(DOVECOT_IMAP):
        return "dovecot-imapd is not installed (apt-get install dovecot-imapd); .ci/run installs it"
    return root_and_mail_user()


def requires(*reasons: str | None) -> Callable[[T], T]:
    """Class decorator: skip the test case's tests for the first of ``reasons`` that is not
    None, or, under ``CI=true``, fail each of them with that reason."""
    missing = next((r for r in reasons if r), None)

    def decorate(cls: T) -> T:
        if missing is None:
            return cls
        if not IN_CI:
            cls.skip = missing  # type: ignore[attr-defined]
            return cls
        cls.run = _failing_run(f"CI=true and a test need is missing: {missing}")  # type: ignore[attr-defined]
        return cls

    return decorate


def skip_or_fail(reason: str) -> None:
    """Inside a test: skip with ``reason``, or fail with it under ``CI=true``."""
    if IN_CI:
        raise unittest.FailTest(f"CI=true and a test need is missing: {reason}")
    raise unittest.SkipTest(reason)


def _failing_run(message: str) -> Callable[[unittest.SynchronousTestCase, Any], None]:
    # Replaces the whole run (fixtures included): a subclass's setUp would need the tool too.
    def run(self: unittest.SynchronousTestCase, result: Any) -> None:
        reporter = itrial.IReporter(result)
        reporter.startTest(self)
        try:
            raise unittest.FailTest(message)
        except unittest.FailTest:
            reporter.addFailure(self, Failure())
        reporter.stopTest(self)

    return run
