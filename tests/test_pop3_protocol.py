"""POP3 dialogs (RFC 1939, RFC 2449, RFC 2595, RFC 5034) against a real Maildir store, driven
through StringTransport with an injected clock. Dialogs read like the RFC examples: ``C:`` lines
are sent, and what follows up to the next ``C:`` is exactly what the server must answer."""

from __future__ import annotations

from base64 import b64encode

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailhub.auth import make_portal
from mailhub.config import Limits
from mailhub.pop3 import maildrop, sender
from mailhub.pop3.maildrop import unique_id, unique_ids
from mailhub.store import dotlock, uidlist
from mailhub.store.dotlock import DotLock
from mailhub.tls import HANDSHAKE_GRACE
from tests.support.pop3 import (
    MSG1,
    MSG2,
    PASSWORD,
    USER,
    ImplicitTLSTransport,
    POP3Case,
)


class Greeting(POP3Case):
    def test_greeting(self) -> None:
        self.assertEqual(self.transport.value(), b"+OK mx.example.com POP3 server ready\r\n")


class Authorization(POP3Case):
    def test_user_pass(self) -> None:
        self.dialog(
            f"""
            C: USER alice@example.com
            S: +OK Send your password
            C: PASS secret
            S: +OK Logged in, 2 messages ({len(MSG1) + len(MSG2)} octets)
            """
        )

    def test_password_with_spaces_is_the_rest_of_the_line(self) -> None:
        self.checker.addUser(b"bob@example.com", b"two words ")
        self.store.mailbox("bob@example.com", create=True)
        self.dialog(
            """
            C: USER bob@example.com
            S: +OK Send your password
            C: PASS two words<SP>
            S: +OK Logged in, 0 messages (0 octets)
            """
        )

    def test_wrong_password_answered_after_the_throttle_delay(self) -> None:
        self.dialog(
            """
            C: USER alice@example.com
            S: +OK Send your password
            C: PASS wrong
            """
        )
        self.clock.advance(0.99)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(0.01)
        self.assertEqual(self.transport.value(), b"-ERR [AUTH] Authentication failed\r\n")
        # The session survives and may try again.
        self.login()

    def test_too_many_failures_disconnect(self) -> None:
        for delay in (1, 2):
            self.send(b"USER alice@example.com\r\nPASS wrong\r\n")
            self.clock.advance(delay)
        self.send(b"USER alice@example.com\r\nPASS wrong\r\n")
        self.clock.advance(4)
        self.assertTrue(
            self.transport.value().endswith(
                b"-ERR [SYS/TEMP] Too many failed logins, try again later\r\n"
            )
        )
        self.assertTrue(self.transport.disconnecting)
        # A new connection from there is cut off before any password is checked.
        proto, transport = self.connect()
        transport.clear()
        self.send(b"USER alice@example.com\r\nPASS secret\r\n", proto)
        self.assertIn(b"[SYS/TEMP] Too many failed logins", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_pass_without_user(self) -> None:
        self.dialog(
            """
            C: PASS secret
            S: -ERR Send USER first
            """
        )

    def test_transaction_commands_refused_before_login(self) -> None:
        self.dialog(
            """
            C: STAT
            S: -ERR STAT is not allowed before login
            C: RETR 1
            S: -ERR RETR is not allowed before login
            """
        )

    def test_auth_plain_with_initial_response(self) -> None:
        token = b64encode(b"\0alice@example.com\0secret").decode()
        self.dialog(
            f"""
            C: AUTH PLAIN {token}
            S: +OK Logged in, 2 messages ({len(MSG1) + len(MSG2)} octets)
            """
        )

    def test_auth_plain_after_empty_challenge(self) -> None:
        token = b64encode(b"alice@example.com\0alice@example.com\0secret").decode()
        self.dialog(
            f"""
            C: AUTH PLAIN
            S: +<SP>
            C: {token}
            S: +OK Logged in, 2 messages ({len(MSG1) + len(MSG2)} octets)
            """
        )

    def test_auth_login(self) -> None:
        self.dialog(
            f"""
            C: AUTH LOGIN
            S: + {b64encode(b"Username:").decode()}
            C: {b64encode(USER).decode()}
            S: + {b64encode(b"Password:").decode()}
            C: {b64encode(PASSWORD).decode()}
            S: +OK Logged in, 2 messages ({len(MSG1) + len(MSG2)} octets)
            """
        )

    def test_auth_cancel_and_bad_input(self) -> None:
        self.dialog(
            """
            C: AUTH PLAIN
            S: +<SP>
            C: *
            S: -ERR Authentication cancelled
            C: AUTH PLAIN !!!
            S: -ERR Authentication response is not valid base64
            C: AUTH CRAM-MD5
            S: -ERR Unknown authentication mechanism 'CRAM-MD5'
            C: AUTH
            S: +OK Supported mechanisms follow
            S: PLAIN
            S: LOGIN
            S: .
            """
        )

    def test_auth_as_somebody_else_fails(self) -> None:
        token = b64encode(b"bob@example.com\0alice@example.com\0secret").decode()
        self.send(f"AUTH PLAIN {token}\r\n".encode())
        self.clock.advance(1)
        self.assertEqual(self.transport.value(), b"-ERR [AUTH] Authentication failed\r\n")

    def test_apop_not_supported(self) -> None:
        self.dialog(
            """
            C: APOP alice@example.com c4c9334bac560ecc979e58001b3e22fb
            S: -ERR APOP is not supported
            """
        )

    def test_quit_before_login(self) -> None:
        self.dialog(
            """
            C: QUIT
            S: +OK Bye
            """
        )
        self.assertTrue(self.transport.disconnecting)


class PlaintextRefused(POP3Case):
    """A production listener: no login before STLS (RFC 2595 4, RFC 3206 [AUTH])."""

    plaintext_allowed = False
    tls_context = object()

    def test_capa_offers_no_login_before_stls(self) -> None:
        self.dialog(
            """
            C: CAPA
            S: +OK Capability list follows
            S: TOP
            S: UIDL
            S: RESP-CODES
            S: AUTH-RESP-CODE
            S: PIPELINING
            S: STLS
            S: IMPLEMENTATION mailhub
            S: .
            C: USER alice@example.com
            S: -ERR [AUTH] Plaintext authentication is not allowed without TLS; use STLS
            C: AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHNlY3JldA==
            S: -ERR [AUTH] Plaintext authentication is not allowed without TLS; use STLS
            """
        )

    def test_a_handshake_never_finished_after_stls_is_cut_off(self) -> None:
        """The autologout timer bounds the handshake (no handshake bytes reach the session);
        Twisted's TLS layer would hold the goodbye, and the connection, until a handshake that
        never comes, so the connection is aborted HANDSHAKE_GRACE later."""
        self.assertEqual(self.send(b"STLS\r\n"), b"+OK Begin TLS negotiation\r\n")
        self.clock.advance(self.limits.pop3_idle_timeout)
        self.assertTrue(self.transport.disconnecting)
        self.clock.advance(HANDSHAKE_GRACE - 0.5)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(0.5)
        self.assertTrue(self.transport.disconnected)  # StringTransport: aborted

    def test_stls_then_login(self) -> None:
        # Commands pipelined after STLS in plain text are dropped (CVE-2011-0411).
        out = self.send(b"STLS\r\nUSER alice@example.com\r\n")
        self.assertEqual(out, b"+OK Begin TLS negotiation\r\n")
        self.assertIs(self.transport.tls_started_with, self.tls_context)
        self.dialog(
            """
            C: CAPA
            S: +OK Capability list follows
            S: TOP
            S: UIDL
            S: RESP-CODES
            S: AUTH-RESP-CODE
            S: PIPELINING
            S: USER
            S: SASL PLAIN LOGIN
            S: IMPLEMENTATION mailhub
            S: .
            C: STLS
            S: -ERR TLS is already active
            C: PASS secret
            S: -ERR Send USER first
            """
        )
        self.login()

    def test_implicit_tls_allows_login_and_offers_no_stls(self) -> None:
        factory = self.make_factory(tls_context_factory=None)
        addr = IPv4Address("TCP", "192.0.2.7", 40001)
        proto, _ = self.connect(ImplicitTLSTransport(peerAddress=addr), factory)
        caps = self.send(b"CAPA\r\n", proto)
        self.assertIn(b"\r\nUSER\r\n", caps)
        self.assertNotIn(b"STLS", caps)
        self.login(proto)

    def test_stls_not_after_login(self) -> None:
        self.send(b"STLS\r\n")
        self.login()
        self.dialog(
            """
            C: STLS
            S: -ERR STLS is not allowed after login
            """
        )


class Transaction(POP3Case):
    def setUp(self) -> None:
        super().setUp()
        self.login()
        self.total = len(MSG1) + len(MSG2)

    def test_capa_after_login(self) -> None:
        self.dialog(
            """
            C: CAPA
            S: +OK Capability list follows
            S: TOP
            S: UIDL
            S: RESP-CODES
            S: AUTH-RESP-CODE
            S: PIPELINING
            S: IMPLEMENTATION mailhub
            S: .
            """
        )

    def test_stat_list(self) -> None:
        self.dialog(
            f"""
            C: STAT
            S: +OK 2 {self.total}
            C: LIST
            S: +OK 2 messages ({self.total} octets)
            S: 1 {len(MSG1)}
            S: 2 {len(MSG2)}
            S: .
            C: LIST 2
            S: +OK 2 {len(MSG2)}
            C: LIST 3
            S: -ERR No message 3 (the maildrop has 2)
            C: LIST 0
            S: -ERR No message 0 (the maildrop has 2)
            C: LIST x
            S: -ERR Invalid message number 'x'
            C: LIST 1 2
            S: -ERR Usage: LIST [message]
            """
        )

    def test_uidl_is_the_maildir_base_name_and_stable(self) -> None:
        keys = [m.key for m in self.folder.sync().messages]
        self.dialog(
            f"""
            C: UIDL
            S: +OK Unique-ID listing follows
            S: 1 {keys[0]}
            S: 2 {keys[1]}
            S: .
            C: UIDL 2
            S: +OK 2 {keys[1]}
            """
        )
        # The same ids in the next session, after a message was retrieved (renamed to cur/).
        self.send(b"RETR 1\r\nQUIT\r\n")
        proto, _ = self.connect()
        self.login(proto)
        self.assertEqual(
            self.send(b"UIDL\r\n", proto),
            f"+OK Unique-ID listing follows\r\n1 {keys[0]}\r\n2 {keys[1]}\r\n.\r\n".encode(),
        )

    def test_listings_follow_dele_and_rset(self) -> None:
        # One line a piece, so the listings are built and sent in several pieces; each is kept
        # for the session once built, and DELE and RSET must change what is answered.
        self.patch(maildrop, "LISTING_PIECE", 1)
        keys = [m.key for m in self.folder.sync().messages]
        both = f"""
            C: LIST
            S: +OK 2 messages ({self.total} octets)
            S: 1 {len(MSG1)}
            S: 2 {len(MSG2)}
            S: .
            C: UIDL
            S: +OK Unique-ID listing follows
            S: 1 {keys[0]}
            S: 2 {keys[1]}
            S: .
            """
        self.dialog(both)
        self.dialog(both)
        self.dialog(
            f"""
            C: DELE 1
            S: +OK Message 1 deleted
            C: UIDL
            S: +OK Unique-ID listing follows
            S: 2 {keys[1]}
            S: .
            C: LIST
            S: +OK 1 messages ({len(MSG2)} octets)
            S: 2 {len(MSG2)}
            S: .
            C: DELE 2
            S: +OK Message 2 deleted
            C: UIDL
            S: +OK Unique-ID listing follows
            S: .
            C: LIST
            S: +OK 0 messages (0 octets)
            S: .
            C: RSET
            S: +OK Maildrop has 2 messages ({self.total} octets)
            """
        )
        self.dialog(both)

    def test_retr_dot_stuffs(self) -> None:
        out = self.send(b"RETR 2\r\n")
        self.assertEqual(
            out,
            f"+OK {len(MSG2)} octets\r\n".encode() + MSG2.replace(b"\r\n.", b"\r\n..") + b".\r\n",
        )

    def test_retr_marks_seen_when_the_session_ends(self) -> None:
        self.send(b"RETR 2\r\nTOP 1 0\r\n")
        # Written in one batch at the end of the session, not per RETR.
        self.assertEqual(self.folder.sync().by_uid[self.uids[1]].flags, frozenset())
        self.send(b"QUIT\r\n")
        flags = {m.uid: m.flags for m in self.folder.sync().messages}
        self.assertEqual(flags[self.uids[1]], frozenset("S"))
        self.assertEqual(flags[self.uids[0]], frozenset())  # TOP does not mark it

    def test_retr_marks_seen_also_when_the_connection_drops(self) -> None:
        self.send(b"RETR 1\r\nRETR 2\r\nDELE 2\r\n")
        self.proto.connectionLost(None)
        flags = {m.uid: m.flags for m in self.folder.sync().messages}
        # The client has message 1: seen. Message 2 stays (no QUIT) and keeps its flags:
        # it was marked for deletion, so the retrieval is not recorded either.
        self.assertEqual(flags, {self.uids[0]: frozenset("S"), self.uids[1]: frozenset()})

    def test_top(self) -> None:
        self.dialog(
            """
            C: TOP 2 0
            S: +OK Top of message 2 follows
            S: Subject: two
            S: From: bob@example.net
            S:
            S: .
            C: TOP 2 2
            S: +OK Top of message 2 follows
            S: Subject: two
            S: From: bob@example.net
            S:
            S: line 1
            S: ..starts with a dot
            S: .
            C: TOP 2
            S: -ERR Usage: TOP message lines
            C: TOP 2 -1
            S: -ERR Invalid number of lines '-1'
            """
        )

    def test_dele_rset(self) -> None:
        self.dialog(
            f"""
            C: DELE 1
            S: +OK Message 1 deleted
            C: DELE 1
            S: -ERR Message 1 is deleted
            C: RETR 1
            S: -ERR Message 1 is deleted
            C: STAT
            S: +OK 1 {len(MSG2)}
            C: LIST
            S: +OK 1 messages ({len(MSG2)} octets)
            S: 2 {len(MSG2)}
            S: .
            C: RSET
            S: +OK Maildrop has 2 messages ({self.total} octets)
            C: NOOP
            S: +OK
            C: STAT
            S: +OK 2 {self.total}
            """
        )
        self.assertEqual(len(self.files()), 2)

    def test_quit_removes_deleted_messages(self) -> None:
        keep = self.folder.sync().by_uid[self.uids[1]].key
        self.dialog(
            """
            C: DELE 1
            S: +OK Message 1 deleted
            C: QUIT
            S: +OK Logging out, 1 messages deleted
            """
        )
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual([f.partition(":")[0] for f in self.files()], [keep])

    def test_dropped_connection_after_dele_deletes_nothing(self) -> None:
        self.send(b"DELE 1\r\nDELE 2\r\n")
        self.proto.connectionLost(None)
        self.assertEqual(len(self.files()), 2)
        # The lock went with the connection: a new session sees both messages.
        proto, _ = self.connect()
        self.login(proto)
        self.assertEqual(self.send(b"STAT\r\n", proto), f"+OK 2 {self.total}\r\n".encode())

    def test_idle_timeout_logs_out_without_update(self) -> None:
        self.send(b"DELE 1\r\n")
        self.clock.advance(self.limits.pop3_idle_timeout - 1)
        self.assertFalse(self.transport.disconnecting)
        self.transport.clear()
        self.clock.advance(1)
        self.assertEqual(self.transport.value(), b"-ERR Disconnected for inactivity\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.proto.connectionLost(None)
        self.assertEqual(len(self.files()), 2)

    def test_snapshot_ignores_new_mail_and_survives_expunge_by_others(self) -> None:
        self.folder.append(b"Subject: three\r\n\r\nlate\r\n")
        self.folder.expunge([self.uids[0]])  # as an IMAP session would
        self.dialog(
            f"""
            C: STAT
            S: +OK 2 {self.total}
            C: RETR 1
            S: -ERR Message 1 was removed by another session
            C: DELE 1
            S: +OK Message 1 deleted
            C: QUIT
            S: +OK Logging out, 0 messages deleted
            """
        )
        self.assertEqual(len(self.files()), 2)  # message 2 and the new one

    def test_pipelined_commands_answered_in_order(self) -> None:
        out = self.send(b"STAT\r\nLIST 1\r\nBOGUS\r\nDELE 2\r\nSTAT\r\nUIDL 9\r\nNOOP\r\n")
        self.assertEqual(
            out,
            f"+OK 2 {self.total}\r\n+OK 1 {len(MSG1)}\r\n-ERR Unknown command 'BOGUS'\r\n"
            f"+OK Message 2 deleted\r\n+OK 1 {len(MSG1)}\r\n"
            "-ERR No message 9 (the maildrop has 2)\r\n+OK\r\n".encode(),
        )

    def test_bad_input_keeps_the_session(self) -> None:
        out = self.send(b"X" * 300 + b"\r\n")
        self.assertEqual(out, b"-ERR Command line too long (at most 255 octets with CRLF)\r\n")
        # An endless line is dropped as it comes and answered at its end.
        self.assertEqual(self.send(b"Y" * 100_000), b"")
        self.assertEqual(self.proto._buf, b"")
        self.assertIn(b"too long", self.send(b"\r\n"))
        self.assertEqual(self.send(b"\xff\xfe\r\n"), b"-ERR Unknown command '??'\r\n")
        self.assertEqual(self.send(b"LIST \xff\r\n"), b"-ERR Command is not UTF-8\r\n")
        self.assertEqual(self.send(b"user x\r\n"), b"-ERR USER is not allowed after login\r\n")
        self.assertEqual(self.send(b"stat\r\n"), f"+OK 2 {self.total}\r\n".encode())
        self.assertFalse(self.transport.disconnecting)

    def test_too_many_errors_end_the_session(self) -> None:
        self.limits = Limits(max_errors=3)
        factory = self.make_factory()
        proto, transport = self.connect(factory=factory)
        out = self.send(b"A\r\nB\r\nC\r\nD\r\n", proto)
        self.assertEqual(out.count(b"-ERR"), 4)
        self.assertTrue(out.endswith(b"-ERR Too many bad commands, closing\r\n"))
        self.assertTrue(transport.disconnecting)


class InUse(POP3Case):
    def test_second_session_gets_in_use_until_the_first_ends(self) -> None:
        self.login()
        other, transport = self.connect()
        self.send(b"USER alice@example.com\r\n", other)
        self.assertEqual(
            self.send(b"PASS secret\r\n", other),
            b"-ERR [IN-USE] Mailbox is in use by another POP3 session\r\n",
        )
        self.assertFalse(transport.disconnecting)  # it may try again later
        self.assertEqual(self.throttle.failures("192.0.2.7"), 0)  # not a failed login
        self.send(b"QUIT\r\n")
        self.proto.connectionLost(None)
        self.login(other)


class Streaming(POP3Case):
    """A message bigger than WHOLE_MESSAGE_LIMIT is sent block by block, only as fast as the
    transport asks for it (a pull producer)."""

    def test_big_message_streams_with_flow_control(self) -> None:
        line = b".dot-started line " + b"z" * 60 + b"\r\n"
        body = line * (3 * sender.WHOLE_MESSAGE_LIMIT // len(line))
        uid = self.folder.append(b"Subject: big\r\n\r\n" + body)
        self.login()
        self.transport.clear()
        self.proto.dataReceived(b"RETR 3\r\nSTAT\r\n")
        producer = self.transport.producer
        self.assertIsNotNone(producer)
        self.assertFalse(self.transport.streaming)  # pull: one block per request
        size = len(b"Subject: big\r\n\r\n" + body)
        # Nothing but the status line until the transport asks (a real one asks at once).
        self.assertEqual(self.transport.value(), f"+OK {size} octets\r\n".encode())
        self.assertNotIn(b"+OK 3 ", self.transport.value())  # STAT waits its turn
        calls = 0
        while self.transport.producer is not None:
            before = len(self.transport.value())
            producer.resumeProducing()
            # At most two blocks (plus the stuffed dots) per request.
            self.assertLessEqual(len(self.transport.value()) - before, 2.1 * sender.BLOCK)
            calls += 1
        self.assertGreater(calls, 2)
        out = self.transport.value()
        head = f"+OK {size} octets\r\n".encode()
        expected = head + b"Subject: big\r\n\r\n" + body.replace(b"\r\n.", b"\r\n..")
        expected = expected.replace(b"\r\n\r\n.", b"\r\n\r\n..", 1) + b".\r\n"
        self.assertEqual(out[: len(expected)], expected)
        self.assertEqual(out[len(expected) :], f"+OK 3 {len(MSG1) + len(MSG2) + size}\r\n".encode())
        self.send(b"QUIT\r\n")
        self.assertEqual(self.folder.sync().by_uid[uid].flags, frozenset("S"))

    def test_connection_lost_while_streaming_closes_the_file(self) -> None:
        uid = self.folder.append(
            b"Subject: big\r\n\r\n"
            + b"a" * 80
            + b"\r\n" * 10
            + b"b\r\n" * sender.WHOLE_MESSAGE_LIMIT
        )
        self.login()
        self.send(b"RETR 3\r\n")
        producer = self.transport.producer
        producer.stopProducing()
        self.proto.connectionLost(None)
        self.assertIsNone(producer._file)
        self.assertEqual(self.folder.sync().by_uid[uid].flags, frozenset())  # not retrieved

    def test_client_that_stops_reading_is_cut_off(self) -> None:
        self.folder.append(b"Subject: big\r\n\r\n" + b"c\r\n" * sender.WHOLE_MESSAGE_LIMIT)
        self.login()
        self.send(b"RETR 3\r\n")
        producer = self.transport.producer
        timeout = self.limits.pop3_idle_timeout
        # Progress restarts the timer: a slow reader is not idle.
        self.clock.advance(timeout - 1)
        producer.resumeProducing()
        self.clock.advance(timeout - 1)
        self.assertFalse(self.transport.disconnecting)
        # No request for more within the timeout: the connection is aborted (nothing written
        # into the middle of the message), and nothing is deleted.
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnected)
        self.assertNotIn(b"-ERR", self.transport.value())

    def test_bare_lf_message_is_sent_with_crlf(self) -> None:
        self.folder.append(b"Subject: unix\n\n.hello\nworld")
        self.login()
        out = self.send(b"RETR 3\r\n")
        self.assertTrue(out.endswith(b"Subject: unix\r\n\r\n..hello\r\nworld\r\n.\r\n"), out)


class _Collect(Protocol):
    """Sends ``script`` at once (RFC 2449 PIPELINING) and collects the answers until closed."""

    def __init__(self, script: bytes, done: Deferred[bytes]) -> None:
        self.script = script
        self.done = done
        self.received: list[bytes] = []

    def connectionMade(self) -> None:
        self.transport.write(self.script)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(b"".join(self.received))


class OverTCP(POP3Case, TestCase):
    """A real TCP connection on 127.0.0.1: replies sent at once with one send() (small RETRs,
    listings in pieces) and those queued by Twisted (the streamed big message) must still
    arrive whole and in order."""

    async def test_pipelined_session_arrives_in_order(self) -> None:
        self.patch(maildrop, "LISTING_PIECE", 1)
        big = b"Subject: big\r\n\r\n" + (b".dot\r\n" + b"y" * 78 + b"\r\n") * 4000
        self.assertGreater(len(big), sender.WHOLE_MESSAGE_LIMIT)
        self.folder.append(big)
        keys = [m.key for m in self.folder.sync().messages]
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        done: Deferred[bytes] = Deferred()
        script = b"USER alice@example.com\r\nPASS secret\r\nUIDL\r\nRETR 1\r\nRETR 3\r\n"
        script += b"RETR 2\r\nLIST\r\nQUIT\r\n"
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await connectProtocol(endpoint, _Collect(script, done))
        out = await done
        sizes = [len(MSG1), len(MSG2), len(big)]
        stuffed = big.replace(b"\r\n.", b"\r\n..")
        expected = b"".join(
            [
                b"+OK mx.example.com POP3 server ready\r\n",
                b"+OK Send your password\r\n",
                b"+OK Logged in, 3 messages (%d octets)\r\n" % sum(sizes),
                b"+OK Unique-ID listing follows\r\n",
                *(f"{n} {k}\r\n".encode() for n, k in enumerate(keys, 1)),
                b".\r\n",
                b"+OK %d octets\r\n" % len(MSG1) + MSG1 + b".\r\n",
                b"+OK %d octets\r\n" % len(big) + stuffed + b".\r\n",
                b"+OK %d octets\r\n" % len(MSG2) + MSG2.replace(b"\r\n.", b"\r\n..") + b".\r\n",
                b"+OK 3 messages (%d octets)\r\n" % sum(sizes),
                *(b"%d %d\r\n" % (n, size) for n, size in enumerate(sizes, 1)),
                b".\r\n",
                b"+OK Logging out, 0 messages deleted\r\n",
            ]
        )
        self.assertEqual(out, expected)


class Pipelining(POP3Case):
    def test_commands_wait_for_a_slow_login(self) -> None:
        pending: Deferred[bytes] = Deferred()

        class SlowChecker:
            credentialInterfaces = self.checker.credentialInterfaces

            def requestAvatarId(self, credentials: object) -> Deferred[bytes]:
                return pending

        factory = self.make_factory(portal=make_portal(SlowChecker()))
        proto, transport = self.connect(factory=factory)
        out = self.send(b"USER alice@example.com\r\nPASS secret\r\nSTAT\r\nQUIT\r\n", proto)
        self.assertEqual(out, b"+OK Send your password\r\n")
        pending.callback(USER)
        self.assertEqual(
            transport.value(),
            b"+OK Send your password\r\n"
            + f"+OK Logged in, 2 messages ({len(MSG1) + len(MSG2)} octets)\r\n".encode()
            + f"+OK 2 {len(MSG1) + len(MSG2)}\r\n".encode()
            + b"+OK Logging out, 0 messages deleted\r\n",
        )


class Limits_(POP3Case):
    def test_connection_limit_per_ip(self) -> None:
        self.limits = Limits(max_connections_per_ip=1)
        factory = self.make_factory()
        self.connect(factory=factory)
        _, transport = self.connect(factory=factory)
        self.assertEqual(
            transport.value(), b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
        )
        self.assertTrue(transport.disconnecting)


class UniqueIds(SynchronousTestCase):
    def test_short_printable_key_is_used_as_is(self) -> None:
        key = "1732412345.M123456P789Q1.mx.example.com,S=1234"
        self.assertEqual(unique_id(key), key)

    def test_long_or_odd_keys_become_a_stable_digest(self) -> None:
        long_key = "1732412345.M123456P789Q1." + "h" * 80 + ",S=1"
        uid = unique_id(long_key)
        self.assertEqual(uid, unique_id(long_key))
        self.assertLessEqual(len(uid), 70)
        self.assertTrue(all(0x21 <= ord(c) <= 0x7E for c in uid))
        self.assertNotEqual(unique_id(long_key + "2"), uid)
        self.assertNotEqual(unique_id("a b"), "a b")

    def test_unique_ids_of_a_whole_maildrop(self) -> None:
        good = [f"17324123{i}.M1P1Q{i}.mx.example.com,S=12" for i in range(3)]
        self.assertEqual(unique_ids(good), good)
        # One key that does not qualify among good ones: only that one becomes a digest.
        for odd in ("x" * 71, "a b", "caf\u00e9", "tab\there", ""):
            keys = [*good, odd]
            self.assertEqual(unique_ids(keys), [*good, unique_id(odd)], odd)


class BusyFolderLock(POP3Case):
    """The INBOX's UID lock held by a live holder: PASS waits on the clock (the reactor serves
    others meanwhile) and answers -ERR [SYS/TEMP] after lock_timeout (RFC 3206 4)."""

    def setUp(self) -> None:
        super().setUp()
        self.patch(dotlock, "on_reactor_thread", lambda: True)
        # A delivery (no lock) whose UID needs the lock, held by another live process.
        root = self.store.root / "example.com" / "alice"
        (root / "new" / f"1765000000.M1P1Q1.mx,S={len(MSG1)}").write_bytes(MSG1)
        self.holder = DotLock(root / uidlist.LOCKNAME, in_reactor=lambda: True)
        self.holder.acquire()
        self.addCleanup(self.holder.release)

    def test_login_waits_for_the_holder(self) -> None:
        self.send(b"USER alice@example.com\r\n")
        self.assertEqual(self.send(b"PASS secret\r\n"), b"")
        other, _ = self.connect()
        self.assertTrue(self.send(b"NOOP\r\n", other).startswith(b"-ERR"))  # served meanwhile
        self.clock.advance(1)
        self.assertEqual(self.transport.value(), b"")
        self.holder.release()
        self.clock.advance(0.1)
        self.assertTrue(self.transport.value().startswith(b"+OK Logged in, 3 messages"))

    def test_login_gives_up_with_sys_temp(self) -> None:
        self.send(b"USER alice@example.com\r\n")
        self.send(b"PASS secret\r\n")
        for _ in range(110):
            self.clock.advance(0.1)
        self.assertEqual(
            self.transport.value(),
            b"-ERR [SYS/TEMP] Cannot open the mailbox now, try again later\r\n",
        )

    def test_quit_deletes_while_the_lock_is_busy(self) -> None:
        self.holder.release()
        self.login()
        self.assertTrue(self.send(b"DELE 1\r\n").startswith(b"+OK"))
        self.holder.acquire()  # taken again by the other process before our QUIT
        self.assertEqual(self.send(b"QUIT\r\n"), b"+OK Logging out, 1 messages deleted\r\n")
        self.assertEqual(len(self.files()), 2)
        # The UID list follows at the next sync that gets the lock.
        self.holder.release()
        self.assertEqual([m.uid for m in self.folder.sync().messages], [*self.uids[1:], 3])
