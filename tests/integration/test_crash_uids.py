"""UIDs survive kill -9: two worker processes, SMTP deliveries, IMAP APPENDs and sessions
looking at one mailbox (FETCH, STORE, EXPUNGE) while the store's worker threads write its UID
list; kill -9 every process mid-load, start again and compare.

What a client was told must hold after the restart (RFC 3501 2.3.1.1): every message with a
250 or an APPENDUID is there unless expunged (and an expunged one is not back); a UID a client
saw (FETCH, APPENDUID) still names the same message under the same UIDVALIDITY; no message has
two UIDs and no UID two messages.
"""

from __future__ import annotations

import imaplib
import os
import re
import signal
import smtplib
import threading
from dataclasses import dataclass, field
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support.twistd import ProcessOutput, start_twistd, write_production_config

HOST = "127.0.0.1"
USER, PASSWORD = "alice@example.test", "secret-alice"
WAIT = 30.0  # a safety net: every wait ends on its event
SENDERS, APPENDERS, WATCHERS = 3, 2, 3
ENOUGH = 120  # acknowledged messages before the kill
MID = re.compile(rb"Message-ID: <([a-z]+-\d+)@", re.I)


def message(kind: str, n: int | str) -> bytes:
    return (
        f"From: load@example.net\r\nTo: {USER}\r\nMessage-ID: <{kind}-{n}@example.net>\r\n"
        f"Subject: {kind} {n}\r\n\r\n" + "body line\r\n" * 40
    ).encode()


@dataclass
class Seen:
    """What the clients were told before the kill."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: set[str] = field(default_factory=set)  # 250 or APPEND OK
    uids: dict[int, str] = field(default_factory=dict)  # UID -> Message-ID as told
    mids: dict[str, int] = field(default_factory=dict)  # Message-ID -> UID as told
    expunged: set[str] = field(default_factory=set)  # EXPUNGE answered OK for these
    doomed: set[str] = field(default_factory=set)  # EXPUNGE sent for these (maybe done)
    clashes: list[str] = field(default_factory=list)  # wrong answers before the kill
    validities: set[int] = field(default_factory=set)
    enough: threading.Event = field(default_factory=threading.Event)

    def ack(self, mid: str) -> None:
        with self.lock:
            self.acked.add(mid)
            if len(self.acked) >= ENOUGH:
                self.enough.set()

    def told(self, uid: int, mid: str) -> None:
        with self.lock:
            if self.uids.setdefault(uid, mid) != mid:
                self.clashes.append(f"UID {uid}: {self.uids[uid]} and {mid}")
            if self.mids.setdefault(mid, uid) != uid:
                self.clashes.append(f"{mid}: UID {self.mids[mid]} and {uid}")


def fetch_mids(client: imaplib.IMAP4, first: int) -> dict[int, str]:
    """UID -> Message-ID of every message from UID ``first`` on."""
    typ, data = client.uid("FETCH", f"{first}:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK", data
    out: dict[int, str] = {}
    for item in data:
        if isinstance(item, tuple):
            uid = re.search(rb"UID (\d+)", item[0])
            mid = MID.search(item[1])
            if uid and mid:
                out[int(uid.group(1))] = mid.group(1).decode()
    return out


def validity(client: imaplib.IMAP4) -> int:
    typ, data = client.response("UIDVALIDITY")
    assert typ == "UIDVALIDITY" and data[0] is not None, (typ, data)
    return int(data[0])


class KillDuringUidWrites(SynchronousTestCase):
    def setUp(self) -> None:
        if not hasattr(os, "pidfd_open"):
            raise SkipTest("uses pidfd_open (Linux)")
        tmp = self.tmp = Path(self.mktemp()).absolute()
        tmp.mkdir(parents=True)
        self.config = write_production_config(tmp, HOST, USER, PASSWORD)

    def start(self, *args: str) -> tuple[int, int, list[int], ProcessOutput]:
        run = self.tmp / f"run{len(list(self.tmp.glob('run*')))}"  # each its own twistd.log
        run.mkdir()
        proc, smtp_port, log = start_twistd(self, run, self.config, *args)
        imap = log.wait_for(r"imap listening on 127\.0\.0\.1:(\d+)")
        assert imap is not None, log.read_text()
        pids = [proc.pid]
        if args:
            ready = log.wait_for_all(r"worker (\d) ready \(pid (\d+)\)", 2)
            self.assertEqual(len(ready), 2, log.read_text())
            pids += [int(m.group(2)) for m in ready]
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        self.proc = proc
        return smtp_port, int(imap.group(1)), pids, log

    def test_told_uids_and_acknowledged_messages_survive_kill_9(self) -> None:
        smtp_port, imap_port, pids, log = self.start("--workers", "2")
        seen = Seen()
        stop = threading.Event()

        def sender(k: int) -> None:
            n = k
            try:
                with smtplib.SMTP(HOST, smtp_port, timeout=WAIT) as c:
                    while not stop.is_set():
                        c.sendmail("load@example.net", [USER], message("smtp", n))
                        seen.ack(f"smtp-{n}")
                        n += SENDERS
            except (OSError, smtplib.SMTPException):
                return

        def appender(k: int) -> None:
            n = k
            try:
                c = imaplib.IMAP4(HOST, imap_port, timeout=WAIT)
                c.login(USER, PASSWORD)
                while not stop.is_set():
                    mid = f"append-{n}"
                    n += APPENDERS
                    typ, data = c.append("INBOX", None, None, message(*mid.split("-")))
                    if typ != "OK":
                        with seen.lock:
                            seen.clashes.append(f"APPEND {mid}: {typ} {data}")
                        continue
                    seen.ack(mid)
                    m = re.search(rb"APPENDUID (\d+) (\d+)", data[0] or b"")
                    if m is None:  # RFC 4315 3: the OK names the UID
                        with seen.lock:
                            seen.clashes.append(f"APPEND {mid}: OK without APPENDUID {data}")
                        continue
                    with seen.lock:
                        seen.validities.add(int(m.group(1)))
                    seen.told(int(m.group(2)), mid)
            except (OSError, imaplib.IMAP4.abort, EOFError):
                return

        def watcher(k: int) -> None:
            try:
                c = imaplib.IMAP4(HOST, imap_port, timeout=WAIT)
                c.login(USER, PASSWORD)
                c.select("INBOX")
                with seen.lock:
                    seen.validities.add(validity(c))
                last = 1
                while not stop.is_set():
                    got = fetch_mids(c, last)
                    for uid, mid in got.items():
                        seen.told(uid, mid)
                    if got:
                        last = max(got) + 1
                        # flag writes: the UID list changes under the other writers too
                        if k == 0:
                            c.uid("STORE", str(max(got)), "+FLAGS", "(\\Seen)")
                        # expunges (in whichever worker this session is): every fifth
                        # SMTP message
                        # (not APPENDed ones: one expunged before its APPEND's answer has
                        # no APPENDUID to tell)
                        doomed = {
                            u: m
                            for u, m in got.items()
                            if m.startswith("smtp-") and int(m.split("-")[1]) % 5 == 0
                        }
                        if k == 1 and doomed:
                            uids = ",".join(map(str, doomed))
                            with seen.lock:
                                seen.doomed.update(doomed.values())
                            c.uid("STORE", uids, "+FLAGS.SILENT", "(\\Deleted)")
                            typ, _ = c.uid("EXPUNGE", uids)
                            if typ == "OK":
                                with seen.lock:
                                    seen.expunged.update(doomed.values())
                    c.noop()
            except (OSError, imaplib.IMAP4.abort, EOFError):
                return

        threads = [threading.Thread(target=sender, args=(k,)) for k in range(SENDERS)]
        threads += [threading.Thread(target=appender, args=(k,)) for k in range(APPENDERS)]
        threads += [threading.Thread(target=watcher, args=(k,)) for k in range(WATCHERS)]
        for t in threads:
            t.start()
        self.assertTrue(seen.enough.wait(120), log.read_text())
        for pid in reversed(pids):  # the workers first: the supervisor would stop them
            os.kill(pid, signal.SIGKILL)
        self.proc.wait(WAIT)
        stop.set()
        for t in threads:
            t.join(WAIT)
        with seen.lock:
            acked, told, expunged = set(seen.acked), dict(seen.uids), set(seen.expunged)
            doomed = set(seen.doomed)
            clashes, validities = list(seen.clashes), set(seen.validities)

        _, imap_port, _, _ = self.start()
        c = imaplib.IMAP4(HOST, imap_port, timeout=WAIT)
        c.login(USER, PASSWORD)
        c.select("INBOX")
        after = fetch_mids(c, 1)
        validities.add(validity(c))
        c.logout()

        self.assertEqual(clashes, [], "before the kill")
        self.assertEqual(len(validities), 1, validities)
        self.assertEqual(acked - doomed - set(after.values()), set(), "acknowledged, gone")
        self.assertEqual(expunged & set(after.values()), set(), "expunged, back again")
        changed = {
            u: (m, after.get(u))
            for u, m in told.items()
            if after.get(u) != m and not (m in doomed and u not in after)
        }
        self.assertEqual(changed, {}, "a UID told before the kill names another message")
        counts: dict[str, int] = {}
        for mid in after.values():
            counts[mid] = counts.get(mid, 0) + 1
        self.assertEqual({m: n for m, n in counts.items() if n > 1}, {}, "two UIDs, one message")
