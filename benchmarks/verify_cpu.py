"""CPU per message of the inbound judging of signatures: DKIM verification (RSA-2048, Ed25519,
both), DMARC evaluation, ARC chain validation and ARC sealing, on a 4 KiB message with the DNS
answered from memory (as from a warm cache). Prints one line per case; --json for one object.

    .venv/bin/python benchmarks/verify_cpu.py [--size 4096] [--rounds 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import dkim
from benchkeys import make_keys
from twisted.internet import defer

from mailhub.checks.arc import arc_seal, verify_arc
from mailhub.checks.dkimverify import verify_dkim
from mailhub.checks.dmarc import check_message
from mailhub.checks.dns import TXTTable
from mailhub.checks.keys import RSA_SHA256, SigningKey
from mailhub.checks.results import AuthenticationResults, MethodResult


def now(coro: Coroutine[Any, Any, Any]) -> Any:
    out: list[Any] = []
    defer.Deferred.fromCoroutine(coro).addBoth(out.append)
    return out[0]


def cpu_ms(fn: Callable[[bytes], Any], message: bytes, rounds: int) -> float:
    """CPU per call of ``fn`` on ``rounds`` different copies of ``message`` (an unsigned
    Received field on top makes each one new, as each message in a server is: nothing is
    found in a cache keyed by the message)."""
    copies = [b"Received: from r%d.example.net\r\n" % i + message for i in range(rounds + 1)]
    fn(copies[-1])
    start = time.process_time()
    for copy in copies[:rounds]:
        fn(copy)
    return (time.process_time() - start) / rounds * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    keys = make_keys()
    pem, ed_seed = keys.rsa_pem, keys.ed_seed
    dns = TXTTable(
        {
            "rsa._domainkey.example.com": keys.rsa_record.encode(),
            "ed._domainkey.example.com": keys.ed_record.encode(),
            "arc._domainkey.forwarder.example": keys.rsa_record.encode(),
            "_dmarc.example.com": b"v=DMARC1; p=reject",
        }
    )
    head = (
        b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: benchmark\r\n"
        b"Date: Mon, 01 Jan 2024 12:00:00 +0000\r\nMessage-ID: <b1@example.com>\r\n\r\n"
    )
    line = b"x" * 70 + b"\r\n"
    msg = head + line * max(1, (args.size - len(head)) // len(line))
    rsa_signed = dkim.sign(msg, b"rsa", b"example.com", pem) + msg
    ed_signed = (
        dkim.sign(
            msg,
            b"ed",
            b"example.com",
            ed_seed,
            signature_algorithm=b"ed25519-sha256",
        )
        + msg
    )
    dual = (
        dkim.sign(
            rsa_signed,
            b"ed",
            b"example.com",
            ed_seed,
            signature_algorithm=b"ed25519-sha256",
        )
        + rsa_signed
    )
    sigs = now(verify_dkim(dns, dual))
    assert [s.result for s in sigs] == ["pass", "pass"], sigs
    sealer = SigningKey("forwarder.example", "arc", RSA_SHA256, pem)
    ours = AuthenticationResults(
        "mx.forwarder.example", (*(s.method_result() for s in sigs), MethodResult("arc", "none"))
    )
    sealed = arc_seal(dual, sealer, "mx.forwarder.example", ours) + dual
    assert now(verify_arc(dns, sealed)).result == "pass"

    rounds = args.rounds
    figures = {
        "dkim_verify_rsa2048_ms": cpu_ms(lambda m: now(verify_dkim(dns, m)), rsa_signed, rounds),
        "dkim_verify_ed25519_ms": cpu_ms(lambda m: now(verify_dkim(dns, m)), ed_signed, rounds),
        "dkim_verify_dual_ms": cpu_ms(lambda m: now(verify_dkim(dns, m)), dual, rounds),
        "dmarc_ms": cpu_ms(lambda m: now(check_message(dns, m, None, sigs)), dual, rounds),
        "arc_verify_one_set_ms": cpu_ms(lambda m: now(verify_arc(dns, m)), sealed, rounds),
        # DKIM and ARC of one message, as the inbound judgement does (one parse, shared hashes)
        "dkim_dual_and_arc_ms": cpu_ms(
            lambda m: (now(verify_dkim(dns, m)), now(verify_arc(dns, m))), sealed, rounds
        ),
        "arc_seal_rsa2048_ms": cpu_ms(
            lambda m: arc_seal(m, sealer, "mx.forwarder.example", ours), dual, max(1, rounds // 6)
        ),
    }
    if args.json:
        print(json.dumps({"size": len(dual), **figures}))
        return
    print(f"message: {len(dual)} octets (dual-signed), CPU per message:")
    for name, ms in figures.items():
        print(f"  {name:26} {ms:7.2f} ms")


if __name__ == "__main__":
    main()
