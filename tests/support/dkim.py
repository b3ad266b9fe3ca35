"""DKIM test helpers: keys made as ``mailhub dkim keygen`` makes them, and dkimpy verifying
signatures against the records mailhub prints (a dict instead of DNS)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import dkim
from twisted.internet import defer

from mailhub.checks.keys import ED25519_SHA256, RSA_SHA256, KeyFile, generate, write_key
from mailhub.message.headers import split_fields


def make_keys(
    key_dir: Path, domain: str, algorithms: Iterable[str] = (RSA_SHA256, ED25519_SHA256)
) -> list[KeyFile]:
    """One key per algorithm for ``domain``, selectors "r1" (RSA) and "e1" (Ed25519)."""
    return [
        write_key(key_dir, domain, "e1" if a == ED25519_SHA256 else "r1", generate(a))
        for a in algorithms
    ]


def records(keys: Iterable[KeyFile]) -> dict[str, str]:
    """record name -> TXT value, as published."""
    return {k.record_name: k.record for k in keys}


def dnsfunc(published: dict[str, str]) -> Callable[..., bytes | None]:
    """dkimpy's DNS hook over ``published`` (dkimpy asks with a trailing dot, in bytes)."""

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        value = published.get(name.decode("ascii").rstrip("."))
        return value.encode("ascii") if value is not None else None

    return lookup


def signature_fields(message: bytes) -> list[dict[bytes, bytes]]:
    """The tags of every DKIM-Signature field of ``message``, top first."""
    out = []
    for name, value in split_fields(message):
        if name.lower() != b"dkim-signature":
            continue
        flat = re.sub(rb"\s+", b"", value)
        out.append(dict(p.split(b"=", 1) for p in flat.split(b";") if b"=" in p))
    return out


def verify_each(message: bytes, published: dict[str, str]) -> list[tuple[str, bool]]:
    """(selector, verified) for every DKIM-Signature of ``message``, top first, by dkimpy."""
    out = []
    for i, tags in enumerate(signature_fields(message)):
        try:
            ok = dkim.DKIM(message).verify(idx=i, dnsfunc=dnsfunc(published))
        except dkim.DKIMException:  # dkimpy raises for a body hash mismatch
            ok = False
        out.append((tags[b"s"].decode(), bool(ok)))
    return out


def inline(f: Callable[..., object], *args: object) -> defer.Deferred[object]:
    """A ``run`` that works at once (tests): as deferToThread, without the thread."""
    return defer.maybeDeferred(f, *args)


def opendkim_verify(opendkim: str, message: bytes, published: dict[str, str], work: Path) -> str:
    """What Debian's OpenDKIM says of ``message`` in its test mode (``-t``), with the records
    in a ``TestPublicKeys`` file instead of DNS: the Authentication-Results value it would add."""
    work.mkdir(parents=True, exist_ok=True)
    keys = work / "keys"
    keys.write_text("".join(f"{name} {value}\n" for name, value in published.items()))
    conf = work / "opendkim.conf"
    conf.write_text(
        f"Mode v\nTestPublicKeys {keys}\nAlwaysAddARHeader yes\nSyslog no\nMinimumKeyBits 1024\n"
    )
    path = work / "message.eml"
    path.write_bytes(message)
    done = subprocess.run(
        [opendkim, "-x", str(conf), "-vvv", "-t", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(
        r"hname='Authentication-Results' hvalue='(.*?)'", done.stderr + done.stdout, re.S
    )
    if found is None:
        raise AssertionError(f"opendkim said nothing usable: {done.stdout}{done.stderr}")
    return found.group(1)
