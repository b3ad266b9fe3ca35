"""QA: the POP3 server against a hostile or clumsy client, over real sockets.

Bad numbers, floods, garbage AUTH, over-long lines and STLS misuse get ``-ERR`` and the session
goes on; a client that pipelines without reading cannot make the server buffer without bound.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor, task

from mailhub.pop3.protocol import POP3ServerProtocol
from tests.support.qa import QATestCase, RawClient


class POP3QATestCase(QATestCase):
    def pop3(self, user: bytes = b"qa@example.com") -> RawClient:
        c = self.raw("pop3")
        assert c.line().startswith(b"+OK"), "no greeting"
        c.send(b"USER " + user + b"\r\nPASS pw\r\n")
        assert c.line() == b"+OK Send your password\r\n"
        assert c.line().startswith(b"+OK Logged in"), "login failed"
        return c

    def reply(self, c: RawClient, line: bytes) -> bytes:
        c.send(line + b"\r\n")
        return c.line()


class BadInput(POP3QATestCase):
    async def test_bad_message_numbers_get_err_and_the_session_goes_on(self) -> None:
        def dialog() -> None:
            c = self.pop3()
            for line, reply in [
                (b"RETR 0", b"-ERR No message 0 (the maildrop has 2)\r\n"),
                (b"RETR 3", b"-ERR No message 3 (the maildrop has 2)\r\n"),
                (b"LIST -1", b"-ERR Invalid message number '-1'\r\n"),
                (b"LIST 99999999999999999999999", b"-ERR Invalid message number "),
                (b"RETR 1e3", b"-ERR Invalid message number '1e3'\r\n"),
                (b"TOP 1 -1", b"-ERR Invalid number of lines '-1'\r\n"),
                (b"TOP 1 99999999999999999999", b"-ERR Invalid number of lines "),
                (b"UIDL 0", b"-ERR No message 0 (the maildrop has 2)\r\n"),
                (b"LIST 1\xff", b"-ERR Command is not UTF-8\r\n"),
                (b"X" * 5000, b"-ERR Command line too long (at most 255 octets with CRLF)\r\n"),
            ]:
                self.assertTrue(self.reply(c, line).startswith(reply), line)
            self.assertEqual(self.reply(c, b"STAT")[:6], b"+OK 2 ")

        await self.deliver(count=2)
        await self.in_thread(dialog)

    async def test_auth_garbage_and_stls_misuse(self) -> None:
        def dialog() -> None:
            c = self.raw("pop3")
            c.line()
            for line, reply in [
                (b"AUTH BOGUS", b"-ERR Unknown authentication mechanism 'BOGUS'\r\n"),
                (b"AUTH PLAIN ====", b"-ERR Authentication response is not valid base64\r\n"),
                (b"AUTH PLAIN " + b"A" * 300, b"-ERR Command line too long"),
                (b"STLS x", b"-ERR "),
            ]:
                self.assertTrue(self.reply(c, line).startswith(reply), line)
            self.assertEqual(self.reply(c, b"AUTH PLAIN"), b"+ \r\n")
            self.assertEqual(
                self.reply(c, b"A" * 10000),
                b"-ERR Authentication response too long (at most 4096 octets)\r\n",
            )
            self.assertEqual(self.reply(c, b"CAPA")[:3], b"+OK")

        await self.in_thread(dialog)


class Flooding(POP3QATestCase):
    def server_output_buffered(self) -> int:
        """Octets the server's POP3 connections hold, written but not yet sent."""
        total = 0
        for selectable in reactor.getReaders() + reactor.getWriters():
            if isinstance(getattr(selectable, "protocol", None), POP3ServerProtocol):
                total += len(selectable.dataBuffer) + selectable._tempDataLen
                total += sum(len(chunk) for chunk in selectable._tempDataBuffer)
        return total

    async def test_pipelined_retrs_never_read_do_not_pile_up(self) -> None:
        # 200 RETRs of a 200 KB message in one segment, and the client reads nothing: the
        # session must stop answering while its write buffer is full (it used to queue 40 MB).
        body = ("x" * 70 + "\r\n") * 2800

        def send_big() -> None:
            with self.smtp() as smtp:
                smtp.sendmail("a@example.net", ["qa@example.com"], f"Subject: big\r\n\r\n{body}")

        await self.in_thread(send_big)
        client: list[RawClient] = []

        def flood() -> None:
            c = self.pop3()
            client.append(c)
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            c.send(b"RETR 1\r\n" * 200 + b"QUIT\r\n")

        await self.in_thread(flood)
        await task.deferLater(reactor, 1.0, lambda: None)
        self.assertLess(self.server_output_buffered(), 2 * 1024 * 1024)

        def drain() -> int:
            c = client[0]
            c.sock.settimeout(20)
            data = c.buf
            while chunk := c.sock.recv(1 << 20):
                data += chunk
            return data.count(b"+OK 20")

        # Nothing lost: every RETR is answered once the client reads.
        self.assertEqual(await self.in_thread(drain), 200)
