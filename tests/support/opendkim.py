"""Debian's OpenDKIM (package ``opendkim``) as an independent DKIM implementation in tests.

No milter client is needed: ``opendkim -t FILE`` runs the filter's test mode on one message.

- Signing: ``-b s`` with ``-d domain -k keyfile -s selector -S algorithm -c canon``; the
  DKIM-Signature it would add is printed on stdout after a line ``opendkim: FILE:``, folded
  with LF only.
- Verifying: ``-b v -vvv`` with ``TestPublicKeys FILE`` in the configuration (one line per key:
  ``selector._domainkey.domain`` then the TXT record), so no DNS is asked; the verdict is the
  ``Authentication-Results`` value printed after ``### INSHEADER:`` (``dkim=pass`` ...).
- ``RequireSafeKeys no`` is needed when a path runs through a world-writable directory (/tmp,
  where CI's clone may live): otherwise opendkim exits 78, "/tmp can be read or written by
  other users".

``opendkim-testmsg`` (opendkim-tools) can sign too but always with rsa-sha1 (libopendkim's
default) and verifies only against real DNS, so it is not used.
"""

from __future__ import annotations

import os
import re
import subprocess

from tests.support.tools import tool

OPENDKIM = "opendkim"


def missing() -> str | None:
    return tool(OPENDKIM)


def _write(path: str, data: bytes, mode: int = 0o600) -> str:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def sign(
    workdir: str,
    message: bytes,
    *,
    domain: str,
    selector: str,
    key_pem: bytes,
    algorithm: str = "rsa-sha256",
    canonicalization: str = "relaxed/relaxed",
) -> bytes:
    """``message`` with OpenDKIM's DKIM-Signature on top (CRLF line ends)."""
    os.makedirs(workdir, mode=0o700, exist_ok=True)
    conf = _write(os.path.join(workdir, "sign.conf"), b"RequireSafeKeys no\nSyslog no\n")
    key = _write(os.path.join(workdir, f"{selector}.private"), key_pem)
    msg = _write(os.path.join(workdir, "in.eml"), message)
    done = subprocess.run(
        [
            *(OPENDKIM, "-x", conf, "-b", "s", "-d", domain, "-s", selector, "-k", key),
            *("-S", algorithm, "-c", canonicalization, "-t", msg),
        ],
        capture_output=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0 or b"DKIM-Signature:" not in done.stdout:
        raise RuntimeError(f"opendkim did not sign: {done.returncode} {done.stderr!r}")
    header = done.stdout[done.stdout.index(b"DKIM-Signature:") :]
    header = header.rstrip(b"\n").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return header + b"\r\n" + message


def verify(workdir: str, message: bytes, keys: dict[str, bytes]) -> str:
    """OpenDKIM's Authentication-Results value for ``message``, keys from ``keys``
    (``selector._domainkey.domain`` -> TXT record) instead of DNS."""
    os.makedirs(workdir, mode=0o700, exist_ok=True)
    table = b"".join(name.encode() + b" " + record + b"\n" for name, record in keys.items())
    public = _write(os.path.join(workdir, "testkeys"), table)
    conf = _write(
        os.path.join(workdir, "verify.conf"),
        b"RequireSafeKeys no\nSyslog no\nTestPublicKeys " + public.encode() + b"\n",
    )
    msg = _write(os.path.join(workdir, "check.eml"), message)
    done = subprocess.run(
        [OPENDKIM, "-x", conf, "-b", "v", "-vvv", "-t", msg],
        capture_output=True,
        check=False,
        timeout=60,
    )
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    m = re.search(r"hname='Authentication-Results' hvalue='([^']*)'", output)
    if m is None:
        raise RuntimeError(f"opendkim gave no Authentication-Results: {output[-2000:]}")
    return m.group(1)
