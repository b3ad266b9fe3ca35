#!/usr/bin/env python3
"""CPU per message of the whole inbound judgement in one process, without the network: what
the checks add to a server for each message (issue 14), measured deterministically.

Each message goes through ``CheckingSink`` (mailhub.checks.sink) with the judge the server
binds (``judge_with``: SPF, DKIM, DMARC and ARC, answered from the DNS cache after the first
message) into a sink that only keeps the octets, as the SMTP receiver hands it: our
``Received:`` line, then the message. "off" is the same messages into that sink directly. The
figure is ``on - off``: the checks' CPU per message (process_time over ``--messages`` distinct
copies: each has its own Message-ID, outside ``h=``, as ``inbound_checks.py`` sends them).

``--offload sync`` (the default) runs the DKIM cryptography's job once the message's
``commit`` has returned, then fires its Deferred, as ``cryptothread`` would but without a thread
(the hop's Python cost counts, the thread's scheduling does not); ``--offload none`` does it
inline, as without the crypto thread.

    PYTHONPATH=. .venv/bin/python benchmarks/judge_cpu.py [--signed rsa|ed25519|dual|none]
        [--messages 3000] [--rounds 5] [--profile FILE] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from inbound_checks import signed_template  # noqa: E402
from smtp_load import build_body, message_id_header  # noqa: E402

from mailhub.checks.dns import Lookup  # noqa: E402
from mailhub.checks.inbound import Policy, judge_with  # noqa: E402
from mailhub.checks.resolver import Answer, CachingResolver  # noqa: E402
from mailhub.checks.sink import CheckingSink  # noqa: E402
from mailhub.envelope import Envelope, Recipient  # noqa: E402
from mailhub.interfaces import IIncomingMessage, IMessageSink  # noqa: E402
from mailhub.received import received_header  # noqa: E402


class ZoneResolver:
    """TXT records from a dict, answered at once with an hour's TTL."""

    def __init__(self, zone: dict[str, list[str]]) -> None:
        self.zone = {k: tuple(v.encode() for v in vs) for k, vs in zone.items()}

    async def resolve(self, name: str, rdtype: str) -> Answer:
        records = self.zone.get(name) if rdtype == "TXT" else None
        if records is None:
            return Answer(Lookup(nxdomain=rdtype == "TXT" and name not in self.zone), 3600)
        return Answer(Lookup(records), 3600)


@implementer(IIncomingMessage)
class _Kept:
    def __init__(self, envelope: Envelope, sink: NullSink) -> None:
        self.envelope = envelope
        self.sink = sink
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def commit(self) -> defer.Deferred[str]:
        self.sink.kept += 1
        self.sink.last = self.chunks
        return defer.succeed(self.envelope.queue_id)

    def abort(self) -> None:
        self.chunks = []


@implementer(IMessageSink)
class NullSink:
    def __init__(self) -> None:
        self.kept = 0
        self.last: list[bytes] = []

    def open(self, envelope: Envelope) -> IIncomingMessage:
        return _Kept(envelope, self)


JOBS: list[tuple[Any, defer.Deferred[None]]] = []


def make_sink(zone: dict[str, list[str]], offload: str) -> tuple[CheckingSink, NullSink]:
    clock = Clock()
    resolver = CachingResolver(ZoneResolver(zone), clock)

    def sync(job: Any) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        JOBS.append((job, d))  # run by deliver once commit() has returned, as by the thread
        return d

    judge = judge_with(
        resolver,
        authserv_id="mx.example.com",
        policy=Policy(),
        clock=clock,
        offload=sync if offload == "sync" else None,
    )
    inner = NullSink()
    return CheckingSink(inner, judge=judge, authserv_id="mx.example.com"), inner


def envelope(i: int) -> Envelope:
    return Envelope(
        queue_id=f"q{i}",
        mail_from="load@bench.invalid",
        recipients=[Recipient("user@example.com", "user@example.com")],
        helo="loadgen.bench.invalid",
        client_address="127.0.0.1",
        client_port=40000,
        server_name="mx.example.com",
    )


def deliver(sink: Any, envelope: Envelope, received: bytes, message: bytes) -> None:
    incoming = sink.open(envelope)
    incoming.write(received)
    incoming.write(message)
    out: list[Any] = []
    incoming.commit().addBoth(out.append)
    while JOBS:  # the crypto "thread": the job, then its Deferred fired (callFromThread)
        job, d = JOBS.pop()
        job()
        d.callback(None)
    if not out or not isinstance(out[0], str):
        raise SystemExit(f"message not delivered: {out}")


def _keep_keys(path: Path) -> None:
    """``benchkeys.make_keys`` gives the keys kept in ``path`` (made once)."""
    import dataclasses

    import benchkeys

    if not path.exists():
        keys = benchkeys.make_keys()
        path.write_text(
            json.dumps(
                {
                    k: v.decode() if isinstance(v, bytes) else v
                    for k, v in dataclasses.asdict(keys).items()
                }
            )
        )
    data = json.loads(path.read_text())
    keys = benchkeys.BenchKeys(
        rsa_pem=data["rsa_pem"].encode(),
        rsa_record=data["rsa_record"],
        ed_seed=data["ed_seed"].encode(),
        ed_record=data["ed_record"],
    )
    benchkeys.make_keys = lambda: keys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--signed", default="rsa", choices=("rsa", "ed25519", "dual", "none"))
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5, help="off/on pairs; the best of each counts")
    ap.add_argument("--offload", default="sync", choices=("sync", "none"))
    ap.add_argument("--profile", metavar="FILE", help="cProfile one 'on' round into FILE")
    ap.add_argument(
        "--only",
        choices=("on", "off"),
        help="run one mode only (for instruction counts: callgrind runs of N and M messages, "
        "the difference divided by M - N, for each mode)",
    )
    ap.add_argument(
        "--keys",
        metavar="FILE",
        help="the DKIM keys from FILE (made and written there if missing): the same work in "
        "every run, for instruction counts (callgrind; see benchmarks/README.md)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    spf = ["v=spf1 ip4:127.0.0.1 -all"]
    zone: dict[str, list[str]] = {
        "bench.invalid": spf,
        "loadgen.bench.invalid": spf,
        "_dmarc.bench.invalid": ["v=DMARC1; p=none"],
    }
    if args.keys:
        _keep_keys(Path(args.keys))
    if args.signed == "none":
        template = build_body(args.size)[0][: -len(b".\r\n")]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path, records = signed_template(args.size, Path(tmp), args.signed)
            template = path.read_bytes()
        zone.update(records)
    n = args.messages
    envelopes = [envelope(i) for i in range(n)]
    received = [received_header(e) for e in envelopes]
    messages = [message_id_header(i, 7) + template for i in range(n)]

    sink, inner = make_sink(zone, args.offload)
    deliver(sink, envelope(-1), received[0], message_id_header(n, 7) + template)  # fills caches
    header = b"".join(inner.last)
    head = header[: header.find(b"\r\n\r\n")].decode()
    if args.signed != "none" and "dkim=pass" not in head:
        raise SystemExit(f"DKIM did not pass:\n{head}")
    off_sink = NullSink()

    # Setup's objects out of the collector's way (as a server's long-lived ones are mostly);
    # the collections the messages' own garbage causes still count.
    gc.collect()
    gc.freeze()

    def one(target: Any) -> float:
        start = time.process_time()
        for e, r, m in zip(envelopes, received, messages, strict=True):
            deliver(target, e, r, m)
        return (time.process_time() - start) / n * 1e6

    offs, ons = [], []
    for _ in range(args.rounds):
        offs.append(one(off_sink) if args.only != "on" else 0.0)
        ons.append(one(sink) if args.only != "off" else 0.0)
    if args.profile:
        import cProfile

        cProfile.runctx("one(sink)", globals(), {"one": one, "sink": sink}, args.profile)
    off, on = min(offs), min(ons)
    result = {
        "signed": args.signed,
        "size": len(messages[0]),
        "messages": n,
        "off_us": round(off, 1),
        "on_us": round(on, 1),
        "checks_us": round(on - off, 1),
        "on_rounds_us": [round(x, 1) for x in ons],
    }
    if args.json:
        print(json.dumps(result))
        return
    print(head)
    print(
        f"{args.signed}, {result['size']} octets, {n} messages x {args.rounds} rounds: "
        f"off {off:.1f} us, on {on:.1f} us -> checks {on - off:.1f} us of CPU per message "
        f"(on rounds: {', '.join(f'{x:.0f}' for x in ons)})"
    )


if __name__ == "__main__":
    main()
