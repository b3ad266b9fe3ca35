"""Dovecot over our files: doveadm on our store (interop), its imap binary (comparisons)."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.tools import DOVECOT_IMAP

CONFIG = """\
log_path = /dev/stderr
base_dir = {base}/run
state_dir = {base}/state
mail_location = maildir:{base}/mail/%d/%n:LAYOUT=maildir++
first_valid_uid = 1
first_valid_gid = 1
mail_uid = mail
mail_gid = mail
"""


def doveadm_for(test: SynchronousTestCase, base: Path) -> Callable[..., str]:
    """Set ``base`` up for Dovecot (config, run/state/home dirs, the whole tree owned by ``mail``:
    Dovecot refuses root) and return ``doveadm(*args)`` acting as alice@example.com, which
    fails ``test`` on a non-zero exit and returns standard output."""
    for sub in ("run", "state", "home"):
        (base / sub).mkdir()
    config = base / "dovecot.conf"
    config.write_text(CONFIG.format(base=base))
    mail = pwd.getpwnam("mail")
    for path in [base, *base.rglob("*")]:
        os.chown(path, mail.pw_uid, mail.pw_gid)

    def doveadm(*args: str) -> str:
        env = dict(os.environ, USER="alice@example.com", HOME=str(base / "home"))
        done = subprocess.run(
            ["doveadm", "-c", str(config), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        test.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout

    return doveadm


def _ask_dovecot(
    base: Path, messages: list[bytes], commands: list[str], *, internaldate: int | None = None
) -> bytes:
    """Dovecot's imap answers to ``commands`` over ``messages`` (EXAMINE INBOX first).
    ``internaldate``: every file's mtime, which is Dovecot's INTERNALDATE (and SORT DATE's
    fallback for a message without a readable Date, RFC 5256 2.2); without it the files keep
    the moment they were written, which can cross a second between two of them."""
    mail = pwd.getpwnam("mail")
    maildir = base / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for i, data in enumerate(messages):
        # names sort in message order: Dovecot gives new files UIDs in file name order
        path = maildir / "cur" / f"{1000000 + i}.m{i}.test:2,"
        path.write_bytes(data)
        if internaldate is not None:
            os.utime(path, (internaldate, internaldate))
    (base / "run").mkdir()
    config = base / "dovecot.conf"
    config.write_text(
        f"base_dir = {base}/run\nstate_dir = {base}/run\nlog_path = /dev/stderr\n"
        f"mail_location = maildir:{maildir}\nmail_uid = mail\nmail_gid = mail\n"
        "first_valid_uid = 1\nfirst_valid_gid = 1\nssl = no\n"
    )
    for path in [base, *base.rglob("*")]:
        os.chown(path, mail.pw_uid, mail.pw_gid)
    script = b"a EXAMINE INBOX\r\n" + b"".join(
        b"c%d %s\r\n" % (i, c.encode()) for i, c in enumerate(commands)
    )
    done = subprocess.run(
        [DOVECOT_IMAP, "-c", str(config)],
        input=script + b"z LOGOUT\r\n",
        env={"USER": "mail", "HOME": str(base), "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        timeout=120,
    )
    return done.stdout
