"""Session reuse in the relay: one connection (one EHLO, one TLS handshake) for the next message
to the same host, RSET between transactions (RFC 5321 4.1.1.5), idle sessions closed with QUIT.

Real sockets on 127.0.0.1 against mailhub's own receiver or a scripted peer; the idle timers run
on a task.Clock where the test is about them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock

from mailhub.interfaces import Outcome
from mailhub.relay.tlsclient import load_ca_pem
from tests.support.relay import (
    CourierTestCase,
    Item,
    ReceiverPeer,
    ScriptedPeer,
    accept_data,
    default_script,
    until,
)
from tests.support.tls import CertificateAuthority


def verbs(conn: Any) -> list[str]:
    """The commands one connection of a ScriptedPeer received, verb only."""
    return [line.split(b" ", 1)[0].decode() for line in conn.received]


class ReuseTests(CourierTestCase):
    def sessions(self) -> list[str]:
        """The courier's "new session" / "reused session (message n)" per delivered recipient."""
        return [e["connection"] for e in self.logged if "connection" in e and "recipient" in e]

    async def test_second_message_reuses_the_tls_session(self) -> None:
        ca = CertificateAuthority()
        pair = ca.issue(["mx.b.test"]).write(Path(self.mktemp()), "mx")
        peer = ReceiverPeer(self, tls=pair)
        courier = self.courier(peer.port, ca_certificates=load_ca_pem(ca.root_pem()))
        first = await courier.deliver(Item(queue_id="Q1"))
        second = await courier.deliver(Item(queue_id="Q2", body=b"Subject: 2\r\n\r\nTwo.\r\n"))
        self.assertEqual([r.outcome for r in first + second], [Outcome.DELIVERED] * 2)
        self.assertEqual(peer.opened, 1)  # one connection: one EHLO, one STARTTLS
        one, two = peer.messages()
        self.assertEqual((one.envelope.protocol, two.envelope.protocol), ("ESMTPS", "ESMTPS"))
        self.assertEqual(self.sessions(), ["new session", "reused session (message 2)"])
        tls = [e["tls"] for e in self.logged if "tls" in e and "recipient" in e]
        self.assertEqual(len(tls), 2)
        self.assertTrue(all(t.startswith("TLSv1.") and t.endswith(" verified") for t in tls), tls)
        self.assertEqual(len(courier.pool), 1)
        await courier.close()  # QUIT: the receiver sees the session end
        await peer.wait_closed()
        self.assertEqual(len(courier.pool), 0)

    async def test_rset_before_the_next_transaction_and_quit_at_close(self) -> None:
        peer = ScriptedPeer(self, on_data=accept_data)
        courier = self.courier(peer.port)
        for qid in ("Q1", "Q2", "Q3"):
            [result] = await courier.deliver(Item(queue_id=qid))
            self.assertEqual(result.outcome, Outcome.DELIVERED)
        [conn] = peer.connections
        self.assertEqual(
            verbs(conn),
            ["EHLO", "MAIL", "RCPT", "DATA"] + ["RSET", "MAIL", "RCPT", "DATA"] * 2,
        )
        await courier.close()
        await conn.when_closed()
        self.assertEqual(verbs(conn)[-1], "QUIT")

    async def test_per_recipient_results_on_a_reused_session(self) -> None:
        peer = ReceiverPeer(self, mailboxes={"alice@b.test", "carol@b.test"})
        courier = self.courier(peer.port)
        await courier.deliver(Item(queue_id="Q1"))
        item = Item(queue_id="Q2", recipients=["alice@b.test", "bob@b.test", "carol@b.test"])
        results = await courier.deliver(item)
        self.assertEqual(peer.opened, 1)
        by = {r.recipient: r for r in results}
        self.assertEqual(by["alice@b.test"].outcome, Outcome.DELIVERED)
        self.assertEqual(by["carol@b.test"].outcome, Outcome.DELIVERED)
        self.assertEqual(
            (by["bob@b.test"].outcome, by["bob@b.test"].status), (Outcome.PERMANENT, "5.1.1")
        )
        second = peer.messages()[1]
        self.assertEqual(second.envelope.mailboxes, ["alice@b.test", "carol@b.test"])
        # and the session is still good for a third message
        [third] = await courier.deliver(Item(queue_id="Q3", recipients=["carol@b.test"]))
        self.assertEqual(third.outcome, Outcome.DELIVERED)
        self.assertEqual(peer.opened, 1)

    async def test_a_refused_transaction_leaves_the_session_reusable(self) -> None:
        peer = ReceiverPeer(self)
        courier = self.courier(peer.port)
        [nobody] = await courier.deliver(Item(queue_id="Q1", recipients=["nobody@b.test"]))
        self.assertEqual(nobody.outcome, Outcome.PERMANENT)
        [alice] = await courier.deliver(Item(queue_id="Q2"))
        self.assertEqual(alice.outcome, Outcome.DELIVERED)
        self.assertEqual(peer.opened, 1)

    async def test_peer_closed_the_idle_session(self) -> None:
        peer = ScriptedPeer(self, on_data=accept_data)
        courier = self.courier(peer.port)
        await courier.deliver(Item(queue_id="Q1"))
        peer.connections[0].transport.loseConnection()  # e.g. its idle timeout
        await until(lambda: len(courier.pool) == 0)  # the pool forgets it
        [result] = await courier.deliver(Item(queue_id="Q2"))
        self.assertEqual(result.outcome, Outcome.DELIVERED)
        self.assertEqual(len(peer.connections), 2)
        self.assertEqual(verbs(peer.connections[1])[:2], ["EHLO", "MAIL"])

    async def test_421_while_idle_ends_the_session(self) -> None:
        peer = ScriptedPeer(self, on_data=accept_data)
        courier = self.courier(peer.port, clock=Clock())  # the idle timer never fires here
        await courier.deliver(Item(queue_id="Q1"))
        first = peer.connections[0]
        # RFC 5321 4.5.3.2.7: a server may say 421 before it closes an idle session; this one
        # says it and keeps the connection open: the client must not use it again.
        first.transport.write(b"421 4.4.2 fake.test idle timeout\r\n")
        await first.when_closed()
        [result] = await courier.deliver(Item(queue_id="Q2"))
        self.assertEqual(result.outcome, Outcome.DELIVERED)
        self.assertEqual(len(peer.connections), 2)
        self.assertNotIn("RSET", verbs(first))

    async def test_dead_session_found_at_rset_costs_no_failure(self) -> None:
        def script(line: str, conn: Any) -> bytes | None:
            if line == "RSET":  # the peer went away unnoticed: no answer, connection gone
                conn.transport.abortConnection()
                return None
            return default_script(line, conn)

        peer = ScriptedPeer(self, script, on_data=accept_data)
        courier = self.courier(peer.port)
        await courier.deliver(Item(queue_id="Q1"))
        [result] = await courier.deliver(Item(queue_id="Q2"))
        self.assertEqual((result.outcome, result.status), (Outcome.DELIVERED, "2.0.0"))
        self.assertEqual(len(peer.connections), 2)
        self.assertEqual(verbs(peer.connections[1]), ["EHLO", "MAIL", "RCPT", "DATA"])
        self.assertEqual(self.sessions(), ["new session", "new session"])

    async def test_session_lost_before_mail_is_answered_is_retried_fresh(self) -> None:
        def script(line: str, conn: Any) -> bytes | None:
            first = conn is conn.owner.connections[0]
            if first and line.startswith("MAIL") and verbs(conn).count("MAIL") == 2:
                conn.transport.abortConnection()  # RSET was fine, then it died
                return None
            return default_script(line, conn)

        peer = ScriptedPeer(self, script, on_data=accept_data)
        courier = self.courier(peer.port)
        await courier.deliver(Item(queue_id="Q1"))
        [result] = await courier.deliver(Item(queue_id="Q2"))
        self.assertEqual(result.outcome, Outcome.DELIVERED)
        self.assertEqual(len(peer.connections), 2)

    async def test_dead_again_on_the_fresh_connection_is_temporary(self) -> None:
        def script(line: str, conn: Any) -> bytes | None:
            if line == "RSET" or (conn is not conn.owner.connections[0] and line == "DATA"):
                conn.transport.abortConnection()
                return None
            return default_script(line, conn)

        peer = ScriptedPeer(self, script, on_data=accept_data)
        courier = self.courier(peer.port)
        await courier.deliver(Item(queue_id="Q1"))
        [result] = await courier.deliver(Item(queue_id="Q2"))
        # One fresh retry only: its failure is the attempt's result.
        self.assertEqual((result.outcome, result.status), (Outcome.TEMPORARY, "4.4.2"))
        self.assertEqual(len(peer.connections), 2)

    async def test_rset_refused_closes_and_reconnects(self) -> None:
        def script(line: str, conn: Any) -> bytes | None:
            if line == "RSET":
                return b"502 5.5.1 RSET not implemented\r\n"
            return default_script(line, conn)

        peer = ScriptedPeer(self, script, on_data=accept_data)
        courier = self.courier(peer.port)
        await courier.deliver(Item(queue_id="Q1"))
        [result] = await courier.deliver(Item(queue_id="Q2"))
        self.assertEqual(result.outcome, Outcome.DELIVERED)
        first, second = peer.connections
        await first.when_closed()
        # RSET travelled with the next transaction (PIPELINING); refused, that transaction
        # must not complete: the client closed in DATA mode, before any final ".".
        self.assertEqual(verbs(first)[-4:], ["RSET", "MAIL", "RCPT", "DATA"])
        self.assertEqual(first.data.count(b"\r\n.\r\n"), 1)  # the first message only
        self.assertEqual(verbs(second), ["EHLO", "MAIL", "RCPT", "DATA"])

    async def test_rset_refused_without_pipelining(self) -> None:
        def script(line: str, conn: Any) -> bytes | None:
            if line.startswith("EHLO"):
                return b"250 fake.test\r\n"  # no PIPELINING: one command at a time
            if line == "RSET":
                return b"502 5.5.1 RSET not implemented\r\n"
            return default_script(line, conn)

        peer = ScriptedPeer(self, script, on_data=accept_data)
        courier = self.courier(peer.port)
        await courier.deliver(Item(queue_id="Q1"))
        [result] = await courier.deliver(Item(queue_id="Q2"))
        self.assertEqual(result.outcome, Outcome.DELIVERED)
        first, second = peer.connections
        await first.when_closed()
        self.assertEqual(verbs(first)[-2:], ["RSET", "QUIT"])  # closed politely
        self.assertEqual(verbs(second), ["EHLO", "MAIL", "RCPT", "DATA"])

    async def test_sessions_never_outnumber_simultaneous_deliveries(self) -> None:
        peer = ReceiverPeer(self)
        courier = self.courier(peer.port)
        items = [Item(queue_id=f"Q{i}") for i in range(3)]
        await gatherResults([courier.deliver(i) for i in items])
        opened = peer.opened
        self.assertIn(opened, (1, 2, 3))  # at most one per delivery in flight
        for i in range(6):  # then one at a time: those sessions are enough
            [result] = await courier.deliver(Item(queue_id=f"R{i}"))
            self.assertEqual(result.outcome, Outcome.DELIVERED)
        self.assertEqual(peer.opened, opened)
        self.assertEqual(len(peer.messages()), 9)

    async def test_messages_per_connection_limit(self) -> None:
        peer = ScriptedPeer(self, on_data=accept_data)
        courier = self.courier(peer.port, max_messages_per_connection=2)
        for qid in ("Q1", "Q2", "Q3"):
            await courier.deliver(Item(queue_id=qid))
        first, second = peer.connections
        await first.when_closed()
        self.assertEqual(
            verbs(first), ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "QUIT"]
        )
        self.assertEqual(verbs(second), ["EHLO", "MAIL", "RCPT", "DATA"])

    async def test_no_reuse_when_idle_timeout_is_zero(self) -> None:
        peer = ScriptedPeer(self, on_data=accept_data)
        courier = self.courier(peer.port, idle_timeout=0)
        await courier.deliver(Item(queue_id="Q1"))
        await courier.deliver(Item(queue_id="Q2"))
        self.assertEqual(len(peer.connections), 2)
        await peer.when_closed(2)
        self.assertEqual(verbs(peer.connections[0])[-1], "QUIT")


class IdleTimeoutTests(CourierTestCase):
    async def test_idle_session_closed_with_quit_after_the_idle_timeout(self) -> None:
        clock = Clock()
        peer = ScriptedPeer(self, on_data=accept_data)
        courier = self.courier(peer.port, clock=clock, idle_timeout=5)
        await courier.deliver(Item(queue_id="Q1"))
        [first] = peer.connections
        clock.advance(4.9)
        [result] = await courier.deliver(Item(queue_id="Q2"))  # still there: reused
        self.assertEqual(result.outcome, Outcome.DELIVERED)
        self.assertEqual(len(peer.connections), 1)
        clock.advance(4.9)  # the timer restarted when the session went idle again
        self.assertFalse(first.closed)
        self.assertEqual(len(courier.pool), 1)
        clock.advance(0.1)
        self.assertEqual(len(courier.pool), 0)
        await first.when_closed()
        self.assertEqual(verbs(first)[-1], "QUIT")
        [result] = await courier.deliver(Item(queue_id="Q3"))
        self.assertEqual(result.outcome, Outcome.DELIVERED)
        self.assertEqual(len(peer.connections), 2)
        self.assertEqual(verbs(peer.connections[1])[0], "EHLO")

    async def test_close_cuts_off_a_peer_that_ignores_quit(self) -> None:
        def script(line: str, conn: Any) -> bytes | None:
            if line == "QUIT":
                return None  # never answers, never closes
            return default_script(line, conn)

        clock = Clock()
        peer = ScriptedPeer(self, script, on_data=accept_data)
        courier = self.courier(peer.port, clock=clock)
        await courier.deliver(Item(queue_id="Q1"))
        [conn] = peer.connections
        closed = courier.close()
        await conn.when_received("QUIT")
        self.assertNoResult(closed)
        clock.advance(4.9)
        self.assertNoResult(closed)
        clock.advance(0.1)  # the shutdown grace (5 s), not the 30 s QUIT timeout
        await closed
        await conn.when_closed()

    async def test_close_waits_for_a_session_in_a_transaction(self) -> None:
        # The queue stops while a message is being sent: close() fires only once that
        # connection is closed too (no socket left behind a stopped service; the
        # two-instance test's "reactor unclean" came from this), and cuts it off after the
        # grace when the peer keeps it busy.
        held: list[Any] = []

        def hold_data(data: bytes, conn: Any) -> None:
            conn.data += data
            if conn.data.endswith(b"\r\n.\r\n"):
                held.append(conn)  # the reply to the end of data never comes

        clock = Clock()
        peer = ScriptedPeer(self, on_data=hold_data)
        courier = self.courier(peer.port, clock=clock)
        delivering = courier.deliver(Item(queue_id="Q1"))
        await until(lambda: held)
        closed = courier.close()
        self.assertNoResult(closed)
        clock.advance(4.9)
        self.assertNoResult(closed)
        clock.advance(0.1)  # the grace: cut off, the attempt is temporary (repeated later)
        await closed
        await held[0].when_closed()
        [result] = await delivering
        self.assertEqual(result.outcome, Outcome.TEMPORARY)

    async def test_close_ends_a_session_waiting_for_its_greeting(self) -> None:
        clock = Clock()
        peer = ScriptedPeer(self, greeting=b"")  # accepts, never greets
        courier = self.courier(peer.port, clock=clock)
        delivering = courier.deliver(Item(queue_id="Q1"))
        await until(lambda: peer.connections)
        closed = courier.close()
        self.assertNoResult(closed)  # the session waiting for its greeting is ours to close
        clock.advance(5)
        await closed
        await peer.connections[0].when_closed()
        [result] = await delivering
        self.assertEqual(result.outcome, Outcome.TEMPORARY)

    async def test_connection_age_limit(self) -> None:
        clock = Clock()
        peer = ScriptedPeer(self, on_data=accept_data)
        courier = self.courier(peer.port, clock=clock, idle_timeout=60, max_connection_age=100)
        await courier.deliver(Item(queue_id="Q1"))
        clock.advance(50)
        await courier.deliver(Item(queue_id="Q2"))  # 50 s old: reused
        clock.advance(50)
        await courier.deliver(Item(queue_id="Q3"))  # reused, then too old to keep
        self.assertEqual(len(peer.connections), 1)
        self.assertEqual(len(courier.pool), 0)
        await courier.deliver(Item(queue_id="Q4"))
        self.assertEqual(len(peer.connections), 2)


class ResumptionTests(CourierTestCase):
    """A new connection to a host resumes the TLS session of the previous one (no certificate
    exchange); the verification result of the full handshake is reported again."""

    def setUp(self) -> None:
        super().setUp()
        self.ca = CertificateAuthority()
        self.dir = Path(self.mktemp())

    def tls_events(self) -> list[str]:
        return [e["tls"] for e in self.logged if "tls" in e and "recipient" in e]

    async def test_second_connection_resumes_and_stays_verified(self) -> None:
        peer = ReceiverPeer(self, tls=self.ca.issue(["mx.b.test"]).write(self.dir, "mx"))
        courier = self.courier(
            peer.port, ca_certificates=load_ca_pem(self.ca.root_pem()), idle_timeout=0
        )
        for qid in ("Q1", "Q2"):
            [result] = await courier.deliver(Item(queue_id=qid))
            self.assertEqual(result.outcome, Outcome.DELIVERED)
        self.assertEqual(peer.opened, 2)  # no session reuse: two connections
        first, second = self.tls_events()
        self.assertTrue(first.endswith(" verified"), first)  # a full handshake
        self.assertTrue(second.startswith("TLSv1."), second)
        self.assertTrue(second.endswith(" verified resumed"), second)
        self.assertEqual(peer.messages()[1].envelope.protocol, "ESMTPS")

    async def test_resumed_session_keeps_the_verification_problem(self) -> None:
        untrusted = CertificateAuthority("untrusted").issue(["mx.b.test"])
        peer = ReceiverPeer(self, tls=untrusted.write(self.dir, "u"))
        courier = self.courier(
            peer.port, ca_certificates=load_ca_pem(self.ca.root_pem()), idle_timeout=0
        )
        await courier.deliver(Item(queue_id="Q1"))
        await courier.deliver(Item(queue_id="Q2"))
        first, second = self.tls_events()
        self.assertIn(" unverified (", first)
        problem = first[first.index(" unverified (") :]
        self.assertEqual(second, first.split(" unverified")[0] + problem + " resumed")

    async def test_sessions_are_per_host(self) -> None:
        a = ReceiverPeer(self, tls=self.ca.issue(["mx.b.test"]).write(self.dir, "a"))
        b = ReceiverPeer(self, tls=self.ca.issue(["mx.b.test"]).write(self.dir, "b"))
        ca = load_ca_pem(self.ca.root_pem())
        courier = self.courier(a.port, ca_certificates=ca, idle_timeout=0)
        await courier.deliver(Item(queue_id="Q1"))
        courier.port = b.port  # the same name, another server (port): no resumption there
        await courier.deliver(Item(queue_id="Q2"))
        _, second = self.tls_events()
        self.assertNotIn("resumed", second)
        self.assertEqual(len(courier.tls_sessions), 2)
