"""QA: the IMAP server against a hostile or clumsy client, over real sockets.

Each test starts the dev stack on loopback ports and talks raw IMAP from a thread. The
standard: bad input gets a tagged BAD/NO, never a traceback in the log (trial fails a test
that logs one), a hang or a dropped connection; nothing is left half-done.

The helpers here (``RawClient``, ``QATestCase``) are shared with test_qa_pop3 and test_qa_web.
"""

from __future__ import annotations

from tests.support.qa import QATestCase


class DeepNesting(QATestCase):
    """Parenthesised lists nested deeper than Python's stack: BAD, not an internal error."""

    async def test_deeply_nested_list_is_bad_and_session_survives(self) -> None:
        def dialog() -> None:
            c = self.imap()
            reply = c.tagged(b"a1 NOOP " + b"(" * 5000 + b")" * 5000)
            self.assertTrue(reply.startswith(b"a1 BAD "), reply)
            self.assertEqual(c.tagged(b"a2 NOOP"), b"a2 OK NOOP completed\r\n")

        await self.run_client(dialog)

    async def test_deeply_nested_fetch_attributes_are_bad(self) -> None:
        def dialog() -> None:
            c = self.imap()
            reply = c.tagged(b"a1 FETCH 1 " + b"(" * 2000 + b"FLAGS" + b")" * 2000)
            self.assertTrue(reply.startswith(b"a1 BAD "), reply)
            self.assertEqual(c.tagged(b"a2 NOOP"), b"a2 OK NOOP completed\r\n")

        await self.deliver()
        await self.run_client(dialog)

    async def test_deep_search_key_chains_are_bad(self) -> None:
        # NOT NOT ... ALL, OR ALL OR ALL ... ALL and (((ALL))) all recurse in the SEARCH parser.
        def dialog() -> None:
            c = self.imap()
            keys = [
                b"NOT " * 2000 + b"ALL",
                b"OR ALL " * 2000 + b"ALL",
                b"(" * 900 + b"ALL" + b")" * 900,
                b"(NOT " * 60 + b"ALL" + b")" * 60,  # 120 levels of keys in 60 of lists
            ]
            for n, key in enumerate(keys):
                tag = b"s%d" % n
                reply = c.tagged(tag + b" SEARCH " + key)
                self.assertTrue(reply.startswith(tag + b" BAD "), reply)
            self.assertEqual(c.tagged(b"a2 NOOP"), b"a2 OK NOOP completed\r\n")

        await self.deliver()
        await self.run_client(dialog)

    async def test_reasonable_nesting_still_works(self) -> None:
        def dialog() -> None:
            c = self.imap()
            c.send(b"a1 SEARCH " + b"(" * 20 + b"NOT NOT ALL" + b")" * 20 + b"\r\n")
            self.assertEqual(c.until(b"a1 "), [b"* SEARCH 1\r\n", b"a1 OK SEARCH completed\r\n"])

        await self.deliver()
        await self.run_client(dialog)


class Create(QATestCase):
    """RFC 3501 6.3.3: CREATE makes superiors, but a refused CREATE must leave nothing behind."""

    async def test_refused_name_creates_no_parents(self) -> None:
        def dialog() -> list[bytes]:
            c = self.imap(select=None)
            refused = [
                c.tagged(b"c1 CREATE q..r"),
                c.tagged(b"c2 CREATE top.sub." + b"x" * 300),
                c.tagged(b"c3 CREATE " + b"y." * 200 + b"z"),
            ]
            c.send(b'c4 LIST "" *\r\n')
            return refused + c.until(b"c4 ")

        lines = await self.run_client(dialog)
        for reply in lines[:3]:
            self.assertTrue(reply.split(b" ")[1] == b"NO", reply)
        listed = b"".join(lines[3:])
        for name in (b'"." q\r\n', b'"." top\r\n', b'"." y\r\n'):
            self.assertNotIn(name, listed)
        mailbox = self.service.config.mail_dir / "example.com" / "qa"
        self.assertEqual(
            sorted(p.name for p in mailbox.glob(".*") if p.name[1:2] in ("q", "t", "y")), []
        )

    async def test_valid_name_still_creates_parents(self) -> None:
        def dialog() -> list[bytes]:
            c = self.imap(select=None)
            self.assertEqual(c.tagged(b"c1 CREATE p1.p2.leaf"), b"c1 OK CREATE completed\r\n")
            c.send(b'c2 LIST "" p1*\r\n')
            return c.until(b"c2 ")

        lines = await self.run_client(dialog)
        self.assertEqual(
            lines,
            [
                b'* LIST (\\HasChildren) "." p1\r\n',
                b'* LIST (\\HasChildren) "." p1.p2\r\n',
                b'* LIST (\\HasNoChildren) "." p1.p2.leaf\r\n',
                b"c2 OK LIST completed\r\n",
            ],
        )


class Literals(QATestCase):
    """Literal announcements that are not literals, or too large."""

    async def test_brace_that_is_not_a_literal_is_bad(self) -> None:
        # "{" is an atom-special (RFC 3501 9): "{abc}" is neither an atom nor a literal.
        def dialog() -> list[bytes]:
            c = self.imap(select=None)
            return [c.tagged(b"a1 SELECT {abc}"), c.tagged(b"a2 SELECT {-1}")]

        for reply in await self.run_client(dialog):
            self.assertEqual(reply.split(b" ")[1], b"BAD", reply)

    async def test_oversized_sync_literals_are_refused_and_session_survives(self) -> None:
        def dialog() -> None:
            c = self.imap(select=None)
            big = b"a1 APPEND INBOX {99999999999}"
            self.assertEqual(
                c.tagged(big), b"a1 NO [TOOBIG] Message larger than 36700160 octets\r\n"
            )
            reply = c.tagged(b"a2 SELECT {99999999999999999999}")
            self.assertTrue(reply.startswith(b"a2 BAD "), reply)
            self.assertEqual(c.tagged(b"a3 NOOP"), b"a3 OK NOOP completed\r\n")

        await self.run_client(dialog)

    async def test_literal_then_disconnect_leaves_nothing(self) -> None:
        def dialog() -> None:
            c = self.imap(select=None)
            c.send(b"a1 APPEND INBOX {1000000}\r\n")
            self.assertEqual(c.line(), b"+ Ready for literal data\r\n")
            c.send(b"x" * 500_000)
            c.close()
            d = self.imap(select=None)
            d.send(b"a2 STATUS INBOX (MESSAGES)\r\n")
            self.assertEqual(
                d.until(b"a2 "),
                [b"* STATUS INBOX (MESSAGES 0)\r\n", b"a2 OK STATUS completed\r\n"],
            )
            d.close()

        await self.run_client(dialog)
        # The literal is spooled in the folder's tmp/: gone once the server has seen c go.
        await self.server_connections_closed()
        tmp = self.service.config.mail_dir / "example.com" / "qa" / "tmp"
        self.assertEqual(list(tmp.iterdir()), [])


class Garbage(QATestCase):
    async def test_garbage_nul_and_8bit_get_bad(self) -> None:
        def dialog() -> None:
            c = self.imap()
            c.send(b"\x00\x01\xff garbage\r\n")
            self.assertEqual(c.line(), b"* BAD missing or invalid tag\r\n")
            self.assertTrue(c.tagged(b"a2 NOOP\x00").startswith(b"a2 BAD "))
            self.assertTrue(c.tagged(b"a3 SELECT (INBOX").startswith(b"a3 BAD "))
            self.assertTrue(c.tagged(b'a4 SELECT "INBOX').startswith(b"a4 BAD "))
            self.assertTrue(c.tagged(b"a5 FETCH 0 FLAGS").startswith(b"a5 BAD "))
            self.assertTrue(c.tagged(b"a6 FETCH 4294967296 FLAGS").startswith(b"a6 BAD "))
            self.assertTrue(c.tagged(b"a7 FETCH 1 BODY[1.0]").startswith(b"a7 BAD "))
            self.assertTrue(c.tagged(b"a8 STORE 1 +FLAGS (\\Bogus)").startswith(b"a8 BAD "))
            self.assertTrue(c.tagged(b"a9 SEARCH SINCE 32-Jan-2020").startswith(b"a9 BAD "))
            self.assertEqual(c.tagged(b"a10 NOOP"), b"a10 OK NOOP completed\r\n")

        await self.deliver()
        await self.run_client(dialog)
