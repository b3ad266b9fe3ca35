#!/usr/bin/env python3
"""Webhook delivery rate and tag search (issue 15), in one process on 127.0.0.1.

* ``hook_rate``: N messages are written into a Maildir, the web feed numbers them, and one
  ``[[web.webhook]]`` (signed) POSTs each to a twisted.web receiver on 127.0.0.1: messages per
  second from the feed's look to the last 2xx read (one request at a time, in order, over a
  kept connection), and with ``--hooks K`` K hooks at once (each in order, in parallel).
* ``tag_cold`` / ``tag_warm``: the API's search ``tag:billing`` over the N messages (20 % sent
  to ``user+billing@``, a ``[[web.tag]]`` rule ``subject:invoice -> billing`` on 10 %): the first
  time (every summary and envelope recipient read and cached) and again.

    python3 benchmarks/webhooks_tags.py --messages 1000 10000 --hooks 1 4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, reactor, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailhub.config import TagRuleConfig, WebConfig, WebhookConfig, dev_config
from mailhub.store import MailStore
from mailhub.web import search
from mailhub.web.access import ANONYMOUS_ADMIN
from mailhub.web.api import Api
from mailhub.web.feed import MailFeed
from mailhub.web.tags import Tagger
from mailhub.web.webhooks import AgentPoster, Webhooks
from tests.support.webhooks import Receiver


def fill(store: MailStore, n: int) -> None:
    """Messages written straight into new/ (as web_load.py does: one APPEND each would sync
    the folder each time, which is not what is measured here)."""
    store.mailbox("user@example.com", create=True).folder().sync()
    new = store.root / "example.com" / "user" / "new"
    for i in range(n):
        to = "user+billing@example.com" if i % 5 == 0 else "user@example.com"
        subject = f"Invoice {i}" if i % 10 == 3 else f"Message {i}"
        data = (
            f"From: shop@example.net\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{i}@example.net>\r\n\r\nHello {i}\r\n".encode()
        )
        (new / f"{1_800_000_000 + i}.M{i}P4242Q{i}.bench,S={len(data)}").write_bytes(data)


async def run(n: int, hooks: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = MailStore(Path(tmp), "localhost")
        feed = MailFeed(store, reactor, use_inotify=False)  # type: ignore[arg-type]
        feed.scan()
        rules = (TagRuleConfig(match="subject:invoice", tag="billing"),)
        config = dev_config(data_dir=tmp)
        config = type(config)(**{**config.__dict__, "web": WebConfig(login=False, tags=rules)})
        api = Api(feed, reactor, hostname="localhost", max_wait=10)  # type: ignore[arg-type]
        api.tagger = Tagger.from_config(config)
        receivers = [Receiver() for _ in range(hooks)]
        configs = [WebhookConfig(url=r.listen(), secret="s", queue_size=n) for r in receivers]
        poster = AgentPoster(reactor)
        webhooks = Webhooks(feed, reactor, configs, api.summary_json, poster)  # type: ignore[arg-type]
        webhooks.start()
        fill(store, n)
        began = time.perf_counter()
        feed.scan()
        await defer.gatherResults([r.requests(n) for r in receivers])
        while any(h.delivered < n for h in webhooks.hooks):
            await task.deferLater(reactor, 0.001, lambda: None)
        rate = n * hooks / (time.perf_counter() - began)
        await webhooks.stop()
        for r in receivers:
            await r.port.stopListening()  # type: ignore[union-attr]
    out: dict[str, float] = {"messages": n, "hooks": hooks, "hook_rate": round(rate, 1)}
    with tempfile.TemporaryDirectory() as tmp:  # a new store: nothing summarised or cached yet
        store = MailStore(Path(tmp), "localhost")
        fill(store, n)
        feed = MailFeed(store, reactor, use_inotify=False)  # type: ignore[arg-type]
        feed.scan()
        api = Api(feed, reactor, hostname="localhost", max_wait=10)  # type: ignore[arg-type]
        api.tagger = Tagger.from_config(config)
        terms = search.parse("tag:billing")
        for name in ("tag_cold", "tag_warm"):
            began = time.perf_counter()
            found = await api._search(list(feed.newest_first()), terms, ANONYMOUS_ADMIN)
            out[name] = round((time.perf_counter() - began) * 1000, 1)
        out["tagged"] = len(found)
    return out


async def main(args: argparse.Namespace) -> None:
    for n in args.messages:
        for hooks in args.hooks:
            row = await run(n, hooks)
            print(json.dumps(row) if args.json else row, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, nargs="+", default=[1000])
    parser.add_argument("--hooks", type=int, nargs="+", default=[1])
    parser.add_argument("--json", action="store_true")
    task.react(lambda _: defer.ensureDeferred(main(parser.parse_args())))
