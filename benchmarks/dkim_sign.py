"""CPU per message for DKIM signing (issue 14): mailhub.checks.signing.sign with RSA-2048,
Ed25519 and both (dual signing, mailhub's default), for a few message sizes.

    .venv/bin/python benchmarks/dkim_sign.py [--count N]

Keys are made in a temporary folder as ``mailhub dkim keygen`` makes them. The figure is
process CPU time (user + system) per message, one thread: what a worker thread spends (dkimpy's
RSA is pure-Python modular arithmetic; its canonicalisation is regular expressions over the body).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mailhub.checks.keys import ED25519_SHA256, RSA_SHA256, generate, write_key
from mailhub.checks.signing import sign

HEADER = (
    b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: benchmark\r\n"
    b"Date: Sun, 06 Dec 2026 23:00:00 +0000\r\nMessage-ID: <bench@example.com>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
)
LINE = b"The quick brown fox jumps over the lazy dog, again and again and again.  \r\n"


def message(size: int) -> bytes:
    body = LINE * max(1, (size - len(HEADER)) // len(LINE))
    return HEADER + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="messages per 4 KiB case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rsa = write_key(Path(tmp), "example.com", "r", generate(RSA_SHA256)).key
        ed = write_key(Path(tmp), "example.com", "e", generate(ED25519_SHA256)).key
        cases = {"rsa-2048": [rsa], "ed25519": [ed], "dual": [rsa, ed]}
        print(f"{'keys':<10} {'size':>8} {'n':>5} {'CPU ms/msg':>11} {'msg/s (1 core)':>15}")
        for size, count in ((4096, args.count), (100 * 1024, args.count // 4), (10 << 20, 2)):
            data = message(size)
            for name, keys in cases.items():
                start = time.process_time()
                for _ in range(count):
                    sign(data, keys)
                per = (time.process_time() - start) / count
                print(f"{name:<10} {len(data):>8} {count:>5} {per * 1000:>11.2f} {1 / per:>15.0f}")


if __name__ == "__main__":
    main()
