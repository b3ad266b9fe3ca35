"""Is a signing key's record published, and is it the key? (``mailhub check-config --dns``)

For each key, the TXT record at ``<selector>._domainkey.<domain>`` is looked up through a
``CheckResolver`` and compared with the key: present, a key record (RFC 6376 3.6.1: ``v=DKIM1``
if any, ``k=`` the key's type), and its ``p=`` the key's public half. A mismatch means every
message signed with that selector fails at receivers (RFC 6376 6.1.3 step 9).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from mailhub.checks.dns import CheckResolver, DNSTempError
from mailhub.checks.keys import ED25519_SHA256, KeyFile

OK, MISSING, MISMATCH, TEMPORARY = "ok", "missing", "mismatch", "temperror"


@dataclass(frozen=True)
class Published:
    """What DNS says of one key: ``status`` (OK, MISSING, MISMATCH, TEMPORARY) and why."""

    key: KeyFile
    status: str
    detail: str


def _tags(record: bytes) -> dict[str, str]:
    """RFC 6376 3.2 tag=value list; whitespace (FWS) inside values removed as for p= (3.6.1)."""
    tags: dict[str, str] = {}
    for part in record.decode("utf-8", "replace").split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip(), "".join(value.split()))
    return tags


def compare(key: KeyFile, records: tuple[bytes, ...]) -> Published:
    """The verdict on the TXT ``records`` found at the key's name."""
    if not records:
        return Published(key, MISSING, f"no TXT record at {key.record_name}")
    if len(records) > 1:
        # RFC 6376 3.6.2.2: a verifier may take any one of them; the result is a lottery.
        return Published(key, MISMATCH, f"{len(records)} TXT records at {key.record_name}")
    tags = _tags(records[0])
    if tags.get("v", "DKIM1") != "DKIM1":
        return Published(key, MISMATCH, f"v={tags['v']}, not DKIM1: not a DKIM key record")
    want = "ed25519" if key.key.algorithm == ED25519_SHA256 else "rsa"
    if tags.get("k", "rsa") != want:
        return Published(key, MISMATCH, f"k={tags.get('k', 'rsa')} but the key is {want}")
    if "p" not in tags:
        return Published(key, MISMATCH, "no p= in the record")
    if not tags["p"]:
        return Published(key, MISMATCH, "p= is empty: the key is revoked (RFC 6376 3.6.1)")
    try:
        published = base64.b64decode(tags["p"], validate=True)
    except (binascii.Error, ValueError):
        return Published(key, MISMATCH, "p= is not base64")
    if published != key.public_key:
        return Published(key, MISMATCH, "p= is another key than this selector's key file")
    return Published(key, OK, "published")


async def check_published(resolver: CheckResolver, key: KeyFile) -> Published:
    """Look up and judge one key's record (a DNS failure is TEMPORARY, not a mismatch)."""
    try:
        answer = await resolver.txt(key.record_name)
    except DNSTempError as e:
        return Published(key, TEMPORARY, f"DNS lookup failed: {e}")
    return compare(key, answer.records)
