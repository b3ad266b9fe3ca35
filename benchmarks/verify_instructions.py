"""Instructions per DKIM verification (RSA-2048 + Ed25519 on one 4 KiB message) and per DKIM
plus ARC validation, counted by callgrind: unlike CPU time, the count does not move with the
machine's load. Each case verifies ``--rounds`` distinct copies after a warm-up; run it twice
under callgrind (``--rounds 0`` and ``--rounds N``) and divide the difference by N:

    for n in 0 200; do valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \\
        .venv/bin/python benchmarks/verify_instructions.py dual --rounds $n; done
    callgrind_annotate /tmp/cg.0 | grep TOTALS; callgrind_annotate /tmp/cg.200 | grep TOTALS

Cases: ``dual`` (DKIM, RSA-2048 + Ed25519), ``dual_arc`` (the same plus one ARC set, DKIM and
ARC both verified, as the inbound judgement does).
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dkim
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from benchmarks.verify_cpu import Table, now
from mailhub.checks.arc import arc_seal, verify_arc
from mailhub.checks.dkimverify import verify_dkim
from mailhub.checks.keys import RSA_SHA256, SigningKey
from mailhub.checks.results import AuthenticationResults, MethodResult


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=["dual", "dual_arc"])
    ap.add_argument("--rounds", type=int, default=100)
    args = ap.parse_args()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ed = nacl.signing.SigningKey.generate()
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki)
    dns = Table(
        {
            "rsa._domainkey.example.com": record,
            "ed._domainkey.example.com": b"v=DKIM1; k=ed25519; p="
            + base64.b64encode(bytes(ed.verify_key)),
            "arc._domainkey.forwarder.example": record,
        }
    )
    head = (
        b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: benchmark\r\n"
        b"Date: Mon, 01 Jan 2024 12:00:00 +0000\r\nMessage-ID: <b1@example.com>\r\n\r\n"
    )
    msg = head + (b"x" * 70 + b"\r\n") * 56
    signed = dkim.sign(msg, b"rsa", b"example.com", pem) + msg
    seed = base64.b64encode(bytes(ed))
    signed = (
        dkim.sign(signed, b"ed", b"example.com", seed, signature_algorithm=b"ed25519-sha256")
        + signed
    )
    if args.case == "dual_arc":
        ar = AuthenticationResults("mx.forwarder.example", (MethodResult("arc", "none"),))
        sealer = SigningKey("forwarder.example", "arc", RSA_SHA256, pem)
        signed = arc_seal(signed, sealer, "mx.forwarder.example", ar) + signed

    def once(m: bytes) -> None:
        results = now(verify_dkim(dns, m))
        assert [r.result for r in results] == ["pass", "pass"], results
        if args.case == "dual_arc":
            assert now(verify_arc(dns, m)).result == "pass"

    copies = [b"Received: from r%d.example.net\r\n" % i + signed for i in range(args.rounds + 1)]
    once(copies[-1])  # warm: imports, key caches
    for m in copies[: args.rounds]:
        once(m)
    print(f"{args.case}: {args.rounds} rounds")


if __name__ == "__main__":
    main()
