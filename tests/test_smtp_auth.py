"""SMTP AUTH (RFC 4954) in the receiver: mechanisms, TLS rules, throttling, submission role.

Every rule has a dialog; the attack cases are here too: AUTH before TLS, STARTTLS injection with
AUTH pipelined in plain text, brute force, malformed AUTH, open relay and spoofed senders.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from mailhub.auth import DevChecker, make_portal
from mailhub.config import SMTPConfig
from mailhub.smtp.policy import RecipientPolicy, Role
from tests.support.smtp import LOCAL, Dialog, Harness
from tests.support.smtp_auth import (
    DOMAINS,
    PASSWORD,
    USER,
    AuthHarness,
    b64,
    ehlo_keywords,
    inline,
    plain,
    starttls,
)


class Advertising(SynchronousTestCase):
    def test_not_before_tls_then_after_starttls(self) -> None:
        h = AuthHarness(self)
        d = h.connect()
        d.reply()  # banner
        before = ehlo_keywords(d)
        self.assertIn("STARTTLS", before)
        self.assertFalse([k for k in before if k.startswith("AUTH")])  # RFC 4954 4
        d.send(b"STARTTLS\r\n")
        d.replies()
        after = ehlo_keywords(d)
        self.assertIn("AUTH PLAIN LOGIN", after)
        self.assertNotIn("STARTTLS", after)

    def test_implicit_tls_offers_auth_and_no_starttls(self) -> None:
        # RFC 8314 3.3: no STARTTLS on an implicit-TLS port.
        h = AuthHarness(self, role=Role.SUBMISSION)
        d = h.connect(implicit=True)
        d.reply()
        keywords = ehlo_keywords(d)
        self.assertIn("AUTH PLAIN LOGIN", keywords)
        self.assertNotIn("STARTTLS", keywords)
        d.run(
            f"""
            C: STARTTLS
            S: 503 5.5.1 Error: TLS already active
            C: AUTH PLAIN {plain()}
            S: 235 2.7.0 Authentication successful
        """
        )

    def test_no_portal_no_auth(self) -> None:
        h = AuthHarness(self, portal=None)
        d = h.connect()
        starttls(d)
        self.assertFalse([k for k in ehlo_keywords(d) if k.startswith("AUTH")])
        d.run("""
            C: AUTH PLAIN
            S: 502 5.5.1 Error: command not implemented
            C: HELP
            S: 214-2.0.0 mx.example.org commands:
            S: 214-2.0.0 HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY EXPN HELP
            S: 214 2.0.0 See RFC 5321, RFC 3030 and RFC 6531
        """)


class Mechanisms(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = AuthHarness(self)
        self.d = self.h.connect()
        starttls(self.d)

    def authenticated(self) -> str | None:
        return self.d.protocol.session.authenticated_as

    def test_plain_initial_response(self) -> None:
        self.d.run(f"""
            C: AUTH PLAIN {plain("Alice@Example.ORG")}
            S: 235 2.7.0 Authentication successful
        """)
        self.assertEqual(self.authenticated(), USER)

    def test_plain_with_challenge(self) -> None:
        self.d.run(f"""
            C: AUTH plain
            S: 334 ...
            C: {plain()}
            S: 235 2.7.0 Authentication successful
        """)
        self.assertEqual(self.authenticated(), USER)

    def test_plain_authzid_same_user(self) -> None:
        self.d.run(f"""
            C: AUTH PLAIN {plain(authzid=USER.upper())}
            S: 235 2.7.0 Authentication successful
        """)

    def test_plain_authzid_other_user_is_refused(self) -> None:
        # RFC 4616 2: nobody may act as somebody else here, even with a right password.
        self.d.run(f"AUTH PLAIN {plain(authzid='bob@' + LOCAL)}".join(("C: ", "\n")))
        self.assertEqual(self.d.replies(), [])  # the throttle's delay
        self.h.clock.advance(1)
        self.assertEqual(self.d.replies(), ["535 5.7.8 Error: authentication failed"])
        self.assertIsNone(self.authenticated())

    def test_login(self) -> None:
        self.d.run(f"""
            C: AUTH LOGIN
            S: 334 VXNlcm5hbWU6
            C: {b64(USER)}
            S: 334 UGFzc3dvcmQ6
            C: {b64(PASSWORD)}
            S: 235 2.7.0 Authentication successful
        """)
        self.assertEqual(self.authenticated(), USER)

    def test_login_with_initial_user_name(self) -> None:
        self.d.run(f"""
            C: AUTH LOGIN {b64(USER)}
            S: 334 UGFzc3dvcmQ6
            C: {b64(PASSWORD)}
            S: 235 2.7.0 Authentication successful
        """)

    def test_wrong_password_after_delay(self) -> None:
        self.d.send(f"AUTH PLAIN {plain(password='wrong')}\r\n".encode())
        self.assertEqual(self.d.replies(), [])
        self.h.clock.advance(0.999)
        self.assertEqual(self.d.replies(), [])
        self.h.clock.advance(0.001)
        self.d.run(
            f"""
            S: 535 5.7.8 Error: authentication failed
            C: AUTH PLAIN {plain()}
            S: 235 2.7.0 Authentication successful
        """
        )
        self.assertEqual(self.h.throttle.failures("192.0.2.7"), 0)  # success forgets

    def test_unknown_user_fails_alike(self) -> None:
        self.d.send(f"AUTH PLAIN {plain(user='nobody@' + LOCAL)}\r\n".encode())
        self.h.clock.advance(1)
        self.assertEqual(self.d.replies(), ["535 5.7.8 Error: authentication failed"])

    def test_pipelined_commands_wait_for_the_auth_result(self) -> None:
        # RFC 2920: replies in order, also when the AUTH answer is delayed.
        self.d.send(f"AUTH PLAIN {plain(password='x')}\r\nNOOP\r\n".encode())
        self.assertEqual(self.d.replies(), [])
        self.h.clock.advance(1)
        self.assertEqual(
            self.d.replies(), ["535 5.7.8 Error: authentication failed", "250 2.0.0 Ok"]
        )

    def test_state_rules(self) -> None:
        self.d.run(f"""
            C: MAIL FROM:<{USER}>
            S: 250 2.1.0 Ok
            C: AUTH PLAIN {plain()}
            S: 503 5.5.1 Error: AUTH not allowed during a mail transaction
            C: RSET
            S: 250 2.0.0 Ok
            C: AUTH PLAIN {plain()}
            S: 235 2.7.0 Authentication successful
            C: AUTH PLAIN {plain()}
            S: 503 5.5.1 Error: already authenticated
            C: AUTH LOGIN
            S: 503 5.5.1 Error: already authenticated
        """)

    def test_auth_needs_ehlo(self) -> None:
        d = self.h.connect(implicit=True)
        d.run(f"""
            S: 220 mx.example.org mailhub ESMTP
            C: AUTH PLAIN {plain()}
            S: 503 5.5.1 Error: send HELO/EHLO first
        """)


class MalformedAuth(SynchronousTestCase):
    """Never a dropped connection or a traceback (twisted#7753 crashed on a bare AUTH)."""

    def setUp(self) -> None:
        self.h = AuthHarness(self)
        self.d = self.h.connect()
        starttls(self.d)

    def tearDown(self) -> None:
        self.assertFalse(self.d.closed)
        self.assertEqual(self.h.harness.failures(), [])
        self.d.run("""
            C: NOOP
            S: 250 2.0.0 Ok
        """)

    def test_bare_auth(self) -> None:
        self.d.run("""
            C: AUTH
            S: 501 5.5.4 Syntax: AUTH mechanism [initial-response]
            C: AUTH PLAIN a b
            S: 501 5.5.4 Syntax: AUTH mechanism [initial-response]
        """)
        self.d.send(b"AUTH \r\nAUTH  PLAIN\r\n")  # the trailing space is stripped
        self.assertEqual(
            self.d.replies(), ["501 5.5.4 Syntax: AUTH mechanism [initial-response]"] * 2
        )

    def test_unknown_mechanism(self) -> None:
        self.d.run("""
            C: AUTH CRAM-MD5
            S: 504 5.5.4 Error: unrecognized authentication mechanism
            C: AUTH X\x00Y
            S: 504 5.5.4 Error: unrecognized authentication mechanism
        """)

    def test_bad_base64(self) -> None:
        self.d.run("""
            C: AUTH PLAIN !!!notbase64
            S: 501 5.5.2 Error: cannot decode the response (base64)
            C: AUTH PLAIN YWJj=ZGVm
            S: 501 5.5.2 Error: cannot decode the response (base64)
            C: AUTH LOGIN
            S: 334 VXNlcm5hbWU6
            C: ¿qué?
            S: 501 5.5.2 Error: cannot decode the response (base64)
        """)

    def test_malformed_messages(self) -> None:
        not_utf8 = b64(b"\0\xff\xfe@example.org\0pw")
        self.d.run(f"""
            C: AUTH PLAIN =
            S: 501 5.5.2 Error: malformed authentication response
            C: AUTH PLAIN {b64("no nul bytes")}
            S: 501 5.5.2 Error: malformed authentication response
            C: AUTH PLAIN {b64(chr(0) + USER + chr(0))}
            S: 501 5.5.2 Error: malformed authentication response
            C: AUTH PLAIN {not_utf8}
            S: 501 5.5.2 Error: malformed authentication response
            C: AUTH LOGIN =
            S: 501 5.5.2 Error: malformed authentication response
        """)

    def test_client_cancels(self) -> None:
        self.d.run(
            f"""
            C: AUTH PLAIN
            S: 334 ...
            C: *
            S: 501 5.7.0 Authentication cancelled
            C: AUTH LOGIN
            S: 334 VXNlcm5hbWU6
            C: {b64(USER)}
            S: 334 UGFzc3dvcmQ6
            C: *
            S: 501 5.7.0 Authentication cancelled
            C: AUTH PLAIN *
            S: 501 5.7.0 Authentication cancelled
        """
        )

    def test_huge_response(self) -> None:
        self.d.send(b"AUTH PLAIN\r\n")
        self.assertEqual(self.d.replies(), ["334 "])
        self.d.send(b"A" * 5000 + b"\r\n")
        self.d.send(b"A" * 100_000)
        self.d.send(b"\r\n")
        self.assertEqual(
            self.d.replies(),
            [
                "500 5.5.6 Error: authentication exchange line is too long",
                "500 5.5.2 Error: line too long (RFC 5321 4.5.3.1.6)",
            ],
        )

    def test_bare_lf_in_response(self) -> None:
        self.d.send(b"AUTH LOGIN\r\n")
        self.d.send(b"YQ==\n")
        self.assertEqual(
            self.d.replies(),
            ["334 VXNlcm5hbWU6", "501 5.5.2 Error: malformed authentication response"],
        )


class TLSRules(SynchronousTestCase):
    def test_auth_before_starttls(self) -> None:
        # RFC 4954 6; the password is not even read.
        h = AuthHarness(self)
        d = h.connect()
        d.greet()
        d.run(f"""
            C: AUTH PLAIN {plain()}
            S: 538 5.7.11 Encryption required for requested authentication mechanism
            C: AUTH LOGIN
            S: 538 5.7.11 Encryption required for requested authentication mechanism
        """)
        self.assertIsNone(d.protocol.session.authenticated_as)

    def test_starttls_injection_with_auth_pipelined_in_plain_text(self) -> None:
        # CVE-2011-0411 class: what follows STARTTLS in the same packet is dropped.
        h = AuthHarness(self, smtp_config=SMTPConfig(auth_without_tls_on_loopback=True))
        d = h.connect(peer="127.0.0.1")
        d.greet()
        d.send(f"STARTTLS\r\nAUTH PLAIN {plain()}\r\nMAIL FROM:<{USER}>\r\n".encode())
        self.assertEqual(d.replies(), ["220 2.0.0 Ready to start TLS"])
        self.assertIsNone(d.protocol.session.authenticated_as)
        d.run("""
            C: MAIL FROM:<x@example.net>
            S: 503 5.5.1 Error: send HELO/EHLO first
        """)

    def test_starttls_forgets_authentication(self) -> None:
        # RFC 3207 4.2: after STARTTLS nothing learned before counts, AUTH included.
        h = AuthHarness(self, smtp_config=SMTPConfig(auth_without_tls_on_loopback=True))
        d = h.connect(peer="127.0.0.1")
        d.greet()
        d.run(f"""
            C: AUTH PLAIN {plain()}
            S: 235 2.7.0 Authentication successful
            C: STARTTLS
            S: 220 2.0.0 Ready to start TLS
        """)
        self.assertIsNone(d.protocol.session.authenticated_as)

    def test_loopback_without_tls_only_when_configured(self) -> None:
        dev = AuthHarness(self, smtp_config=SMTPConfig(auth_without_tls_on_loopback=True))
        for peer in ("127.0.0.1", "127.0.0.53"):
            d = dev.connect(peer=peer)
            d.reply()
            self.assertIn("AUTH PLAIN LOGIN", ehlo_keywords(d))
            d.run(f"C: AUTH PLAIN {plain()}\nS: 235 2.7.0 Authentication successful")
        remote = dev.connect(peer="192.0.2.7")
        remote.greet()
        remote.run(f"C: AUTH PLAIN {plain()}\nS: 538 5.7.11 ...")
        production = AuthHarness(self)
        d = production.connect(peer="127.0.0.1")
        d.greet()
        d.run(f"C: AUTH PLAIN {plain()}\nS: 538 5.7.11 ...")


class BruteForce(SynchronousTestCase):
    def test_growing_delays_then_421_and_refusal(self) -> None:
        h = AuthHarness(self, max_failures=5)
        d = h.connect()
        starttls(d)
        # The 4th guess for alice also waits the per-user delay (1 s) before it is checked.
        for user_delay, delay in ((0, 1), (0, 2), (0, 4), (1, 8)):
            d.send(f"AUTH PLAIN {plain(password='guess')}\r\n".encode())
            h.clock.advance(user_delay)
            h.clock.advance(delay - 0.5)
            self.assertEqual(d.replies(), [], delay)
            h.clock.advance(0.5)
            self.assertEqual(d.replies(), ["535 5.7.8 Error: authentication failed"], delay)
        d.send(f"AUTH PLAIN {plain(password='guess')}\r\n".encode())
        h.clock.advance(2)  # the per-user delay
        h.clock.advance(15)  # the address's (capped) one
        self.assertEqual(d.replies(), ["421 4.7.0 Error: too many authentication failures"])
        self.assertTrue(d.closed)
        # Another connection from the same address: refused before any password is read,
        # even with the right one.
        again = h.connect()
        starttls(again)
        again.run(f"C: AUTH PLAIN {plain()}\nS: 421 4.7.0 Error: too many authentication failures")
        self.assertTrue(again.closed)
        # Another address is not refused; alice's password is checked after the per-user delay
        # (her 5 failures from anywhere: 4 s), a delay and not a lockout.
        other = h.connect(peer="198.51.100.1")
        starttls(other)
        other.send(f"AUTH PLAIN {plain()}\r\n".encode())
        h.clock.advance(3.5)
        self.assertEqual(other.replies(), [])
        h.clock.advance(0.5)
        self.assertEqual(other.replies(), ["235 2.7.0 Authentication successful"])

    def test_disconnect_during_delay_cancels_the_timer(self) -> None:
        h = AuthHarness(self)
        d = h.connect()
        starttls(d)
        d.send(f"AUTH PLAIN {plain(password='guess')}\r\n".encode())
        # Only the throttle's delay: the idle timer stops while a reply is pending.
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)
        d.protocol.connectionLost(None)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.throttle.failures("192.0.2.7"), 1)
        self.assertEqual(h.harness.failures(), [])


class NoPasswordsInLogs(SynchronousTestCase):
    def test_events_never_hold_the_password(self) -> None:
        h = AuthHarness(self)
        d = h.connect()
        starttls(d)
        d.send(f"AUTH PLAIN {plain(password='Secret-One')}\r\n".encode())
        h.clock.advance(1)
        d.run(f"""
            S: 535 5.7.8 Error: authentication failed
            C: AUTH LOGIN
            S: 334 VXNlcm5hbWU6
            C: {b64(USER)}
            S: 334 UGFzc3dvcmQ6
            C: {b64(PASSWORD)}
            S: 235 2.7.0 Authentication successful
        """)
        self.assertTrue(h.harness.events)
        for event in h.harness.events:
            text = formatEvent(event) + repr(event)
            self.assertNotIn("Secret-One", text)
            self.assertNotIn(PASSWORD, text)
            self.assertNotIn(b64(PASSWORD), text)
        self.assertIn(f"authenticated {USER}", [formatEvent(e) for e in h.harness.events][-1])


class SubmissionRole(SynchronousTestCase):
    def harness(self, **kw: Any) -> AuthHarness:
        aliases = {USER: [f"sales@{LOCAL}", f"info@{LOCAL}"]}
        kw.setdefault("aliases_of", lambda user: aliases.get(user, []))
        return AuthHarness(self, role=Role.SUBMISSION, **kw)

    def logged_in(self, h: AuthHarness) -> Dialog:
        d = h.connect()
        starttls(d)
        d.run(f"C: AUTH PLAIN {plain()}\nS: 235 2.7.0 Authentication successful")
        return d

    def test_mail_before_auth(self) -> None:
        d = self.harness().connect()
        starttls(d)
        d.run(f"""
            C: MAIL FROM:<{USER}>
            S: 530 5.7.0 Error: authentication required
            C: RCPT TO:<bob@{LOCAL}>
            S: 503 5.5.1 Error: need MAIL command
        """)

    def test_send_as_own_address_tag_and_aliases(self) -> None:
        d = self.logged_in(self.harness())
        for sender in (USER, f"Alice+news@{LOCAL.upper()}", f"sales@{LOCAL}", f"info@{LOCAL}"):
            d.run(f"""
                C: MAIL FROM:<{sender}>
                S: 250 2.1.0 Ok
                C: RSET
                S: 250 2.0.0 Ok
            """)

    def test_spoofed_sender(self) -> None:
        d = self.logged_in(self.harness())
        for sender in (f"<bob@{LOCAL}>", "<ceo@bank.example>", "<>", "<alice@[192.0.2.1]>"):
            d.run(f"""
                C: MAIL FROM:{sender}
                S: 553 5.7.1 Error: sender address not owned by the authenticated user
            """)

    def test_restrict_sender_off(self) -> None:
        d = self.logged_in(self.harness(smtp_config=SMTPConfig(restrict_sender=False)))
        d.run("""
            C: MAIL FROM:<anyone@bank.example>
            S: 250 2.1.0 Ok
        """)

    def test_remote_recipients_wait_for_the_relay_queue(self) -> None:
        h = self.harness()
        d = self.logged_in(h)
        d.run(f"""
            C: MAIL FROM:<{USER}>
            S: 250 2.1.0 Ok
            C: RCPT TO:<friend@elsewhere.example>
            S: 451 4.4.3 Error: cannot relay to other domains: relay queue not available...
            C: RCPT TO:<bob@{LOCAL}>
            S: 250 2.1.5 Ok
            C: DATA
            S: 354 End data with <CR><LF>.<CR><LF>
        """)
        d.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n")
        self.assertTrue(d.reply().startswith("250 2.0.0 Ok: queued as "))
        [message] = h.harness.sink.delivered
        self.assertEqual(message.envelope.authenticated_as, USER)
        self.assertEqual(message.envelope.protocol, "ESMTPSA")
        self.assertEqual([r.mailbox for r in message.envelope.recipients], [f"bob@{LOCAL}"])


class MTARole(SynchronousTestCase):
    def test_open_relay_attempt(self) -> None:
        h = AuthHarness(self)
        d = h.connect()
        d.greet()
        d.run(f"""
            C: MAIL FROM:<spammer@example.net>
            S: 250 2.1.0 Ok
            C: RCPT TO:<victim@elsewhere.example>
            S: 554 5.7.1 Error: relay access denied
            C: RCPT TO:<victim@[192.0.2.99]>
            S: 554 5.7.1 Error: relay access denied
            C: RCPT TO:<bob@{LOCAL}>
            S: 250 2.1.5 Ok
        """)

    def test_authenticated_on_port_25_still_no_relay_without_queue(self) -> None:
        h = AuthHarness(self)
        d = h.connect()
        starttls(d)
        d.run(f"""
            C: AUTH PLAIN {plain()}
            S: 235 2.7.0 Authentication successful
            C: MAIL FROM:<anyone@example.net>
            S: 250 2.1.0 Ok
            C: RCPT TO:<friend@elsewhere.example>
            S: 451 4.4.3 ...
        """)


class DevStack(SynchronousTestCase):
    def test_any_login_on_loopback_in_plain_text(self) -> None:
        created: list[str] = []
        portal = make_portal(
            DevChecker(default_domain="localhost", on_first_login=created.append, run=inline)
        )
        h = AuthHarness(
            self,
            role=Role.SUBMISSION,
            portal=portal,
            smtp_config=SMTPConfig(auth_without_tls_on_loopback=True, restrict_sender=False),
        )
        d = h.connect(peer="127.0.0.1", tls=False)
        d.greet()
        d.run(f"""
            C: AUTH PLAIN {plain("developer", "whatever")}
            S: 235 2.7.0 Authentication successful
            C: MAIL FROM:<app@myapp.example>
            S: 250 2.1.0 Ok
        """)
        self.assertEqual(created, ["developer@localhost"])


class AliasExpansion(SynchronousTestCase):
    def test_one_rcpt_many_mailboxes_counted_once(self) -> None:
        from dataclasses import replace

        from mailhub.config import Limits

        policy = RecipientPolicy(
            DOMAINS,
            lambda m: False,
            aliases={f"team@{LOCAL}": [f"a@{LOCAL}", f"b@{LOCAL}"]}.get,
        )
        h = Harness(policy=policy, limits=replace(Limits(), max_recipients=1))
        d = h.connect()
        d.greet()
        d.run(f"""
            C: MAIL FROM:<x@example.net>
            S: 250 2.1.0 Ok
            C: RCPT TO:<team@{LOCAL}>
            S: 250 2.1.5 Ok
            C: RCPT TO:<team@{LOCAL}>
            S: 452 4.5.3 Error: too many recipients
            C: DATA
            S: 354 ...
        """)
        d.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        self.assertTrue(d.reply().startswith("250 "))
        [message] = h.sink.delivered
        self.assertEqual(message.envelope.mailboxes, [f"a@{LOCAL}", f"b@{LOCAL}"])
