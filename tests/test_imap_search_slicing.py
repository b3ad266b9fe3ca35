"""A big SEARCH shares the reactor: it works in slices of SLICE_SECONDS and lets other
connections be served between them, with the same answer, stopping when its connection goes.

"Slow" messages take reactor time as a slow disk would: each read moves the test's clock on
(without running anything due), so the search sees its slice used up after a few messages.
"""

from __future__ import annotations

import imaplib
import threading
import time

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from mailhub.config import ListenersConfig
from mailhub.imap import search_command, search_text
from mailhub.message import mime
from mailhub.store import cache as cache_file
from tests.support.imap import Client, IMAPTestCase, message
from tests.support.service import LOOPBACK_ANY_PORT, ServiceTestCase

MESSAGES = 40
READ_SECONDS = 0.004  # what reading one message costs here: a slice holds about four


class SlicedSearch(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        for n in range(1, MESSAGES + 1):
            self.deliver(message(f"m{n} report", body=f"body {n} {'odd' if n % 2 else 'even'}\r\n"))
        self.reads: list[str] = []
        real_header, real_texts = mime.read_header, search_text.message_texts

        def slow_header(path: str) -> mime.MessageHeader:
            self.reads.append(path)
            self.clock.rightNow += READ_SECONDS
            return real_header(path)

        def slow_texts(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            self.reads.append("body")
            self.clock.rightNow += READ_SECONDS
            return real_texts(*args, **kwargs)

        self.patch(mime, "read_header", slow_header)
        self.patch(search_text, "message_texts", slow_texts)

    def turns_until_answered(self, client: Client) -> None:
        """Let the reactor run what is due (a task.Clock runs every turn at once; the reads
        move it on) until ``client`` has been answered."""
        for _ in range(10):
            if client.transport.value():
                return
            self.clock.advance(0)
        self.fail("no answer")

    def test_another_session_is_answered_while_a_search_runs(self) -> None:
        first, second = self.login(), self.login()
        first.send("a1 SEARCH SUBJECT report\r\n")
        self.assertEqual(first.take(), b"")  # a slice done, the rest to come
        read_before = len(self.reads)
        self.assertLessEqual(read_before, 2 * search_command.SLICE_SECONDS / READ_SECONDS)
        second.run("""
            C: b1 NOOP
            S: b1 OK NOOP completed
            C: b2 FETCH 1 (FLAGS)
            S: * 1 FETCH (FLAGS ())
            S: b2 OK FETCH completed
        """)
        self.assertEqual(first.take(), b"")  # still searching
        self.assertEqual(len(self.reads), read_before)
        self.turns_until_answered(first)
        self.assertEqual(
            first.lines(),
            ["* SEARCH " + " ".join(str(n) for n in range(1, MESSAGES + 1)),
             "a1 OK SEARCH completed"],
        )  # fmt: skip
        self.assertEqual(len([r for r in self.reads if r != "body"]), MESSAGES)
        second.run("""
            C: b3 NOOP
            S: b3 OK NOOP completed
        """)

    def test_body_search_in_slices_same_answer(self) -> None:
        client = self.login()
        client.send("a1 UID SEARCH BODY odd NOT BODY 7\r\n")
        self.assertEqual(client.take(), b"")
        self.turns_until_answered(client)
        odd = [n for n in range(1, MESSAGES + 1, 2) if "7" not in str(n)]
        self.assertEqual(
            client.lines(), ["* SEARCH " + " ".join(map(str, odd)), "a1 OK SEARCH completed"]
        )
        self.assertEqual(self.reads.count("body"), MESSAGES)  # each message read once

    def test_fast_search_answers_at_once(self) -> None:
        # the slice is never used up: no turn given back, the answer comes with the command
        self.patch(search_command, "SLICE_SECONDS", 10 * MESSAGES * READ_SECONDS)
        client = self.login()
        client.run("""
            C: a1 SEARCH BODY even
            S: * SEARCH 2 4 6 8 10 12 14 16 18 20 22 24 26 28 30 32 34 36 38 40
            S: a1 OK SEARCH completed
        """)

    def test_connection_lost_stops_the_search(self) -> None:
        client = self.login()
        client.send("a1 SEARCH SUBJECT report\r\n")
        read = len(self.reads)
        self.assertTrue(0 < read < MESSAGES)
        client.protocol.connectionLost(Failure(ConnectionDone()))
        for _ in range(50):
            self.clock.advance(0)
        self.assertEqual(len(self.reads), read)  # no more work
        self.assertEqual(client.take(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # the command's cache pass was closed: the headers it read are in the cache file
        data = (self.folder()._path / cache_file.FILENAME).read_bytes()
        records, _, damaged = cache_file.parse_records(data, len(cache_file.HEADER))
        self.assertFalse(damaged)
        self.assertEqual(len([r for r in records if r[1] == "headers"]), read)

    def test_expunge_by_another_session_meanwhile(self) -> None:
        first, second = self.login(), self.login()
        first.send("a1 SEARCH NOT SUBJECT nothing\r\n")
        self.assertEqual(first.take(), b"")
        self.assertLess(len(self.reads), MESSAGES - 1)  # 39 and 40 not looked at yet
        second.run(f"""
            C: b1 STORE {MESSAGES - 1}:{MESSAGES} +FLAGS.SILENT (\\Deleted)
            S: b1 OK STORE completed
            C: b2 EXPUNGE
            S: * {MESSAGES} EXPUNGE
            S: * {MESSAGES - 1} EXPUNGE
            S: b2 OK EXPUNGE completed
        """)
        self.turns_until_answered(first)
        # not told of the expunge yet (RFC 3501 7.4.1: it is told after the answer), this
        # session may still read the messages (RFC 2180 4.1.1), so the search finds them
        first.run(f"""
            S: * SEARCH {" ".join(str(n) for n in range(1, MESSAGES + 1))}
            S: a1 OK SEARCH completed
            C: a2 NOOP
            S: * {MESSAGES} EXPUNGE
            S: * {MESSAGES - 1} EXPUNGE
            S: a2 OK NOOP completed
        """)


class OverRealSockets(ServiceTestCase):
    """The same with the real reactor and imaplib: reading a message blocks the reactor
    thread for 4 ms (a slow disk), a search reads 150 of them."""

    async def test_noop_answered_while_another_connection_searches(self) -> None:
        user = "carol@example.com"
        self.start(listeners=ListenersConfig(smtp=(LOOPBACK_ANY_PORT,), imap=(LOOPBACK_ANY_PORT,)))
        port = self.port("imap")
        folder = self.service.store.mailbox(user, create=True).folder()
        for n in range(1, 151):
            folder.append(message(f"m{n}", body=f"body {'odd' if n % 2 else 'even'}\r\n"))
        searching = threading.Event()
        real = search_text.message_texts

        def slow_texts(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            searching.set()
            time.sleep(0.004)
            return real(*args, **kwargs)

        self.patch(search_text, "message_texts", slow_texts)

        def connect() -> imaplib.IMAP4:
            client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
            client.login(user, "any")
            client.select("INBOX")
            return client

        def search() -> tuple[list[bytes], float]:
            with connect() as client:
                _, data = client.search(None, "BODY", "odd")
                return data, time.monotonic()

        def noop() -> float:
            with connect() as client:
                if not searching.wait(30):
                    raise AssertionError("the search never started")
                client.noop()
                return time.monotonic()

        searcher, pinger = self.in_thread(search), self.in_thread(noop)
        (found, search_done), noop_done = await searcher, await pinger
        self.assertEqual(found, [" ".join(str(n) for n in range(1, 151, 2)).encode()])
        self.assertLess(noop_done, search_done)
