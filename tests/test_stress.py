"""Issue 12 5c with an injected clock, per protocol: under stress (80 % of max_connections)
sessions that have not logged in get the short idle timeout (new ones and those already open);
on listeners with logins a newcomer evicts the oldest of them instead of being refused; logged-in
sessions keep their timeouts and places. And the temporary answer when the hashing queue is
full (5b): SMTP 454 4.7.0, IMAP NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP]."""

from __future__ import annotations

from base64 import b64encode
from dataclasses import replace
from pathlib import Path

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mailhub.auth import DevChecker, HashQueueFull, make_portal
from mailhub.config import Config, ConfigError, Limits, load
from mailhub.connlimit import counter_for
from mailhub.smtp.policy import Role
from tests.support.imap import IMAPTestCase
from tests.support.pop3 import POP3Case
from tests.support.smtp import Dialog, Harness

TOO_MANY = "421 4.7.0 Error: too many connections, try again later"
STRESSED = Limits(max_connections=5, stress_threshold=0.8, stress_idle_timeout=10.0)


@implementer(ICredentialsChecker)
class BusyChecker:
    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred:
        return fail(HashQueueFull())


class IMAPStress(IMAPTestCase):
    limits = STRESSED

    def test_pre_login_sessions_get_the_short_timeout_under_stress(self) -> None:
        self.factory = self.make_factory()
        user = self.login(select=None)
        idle = [self.connect(f"192.0.2.{i}") for i in range(2)]
        self.clock.advance(600)  # 3 of 5: no stress, the autologout is 30 minutes
        self.assertFalse(any(c.closed for c in idle))
        newcomer = self.connect("192.0.2.9")  # the 4th: stress begins
        self.clock.advance(9.5)
        self.assertFalse(any(c.closed for c in [*idle, newcomer]))
        self.clock.advance(0.5)
        self.assertTrue(all(c.closed for c in [*idle, newcomer]))
        self.assertIn("* BYE Autologout; idle for too long", idle[0].lines())
        self.assertFalse(user.closed)  # logged in: its own 30 minutes

    def test_a_newcomer_evicts_the_oldest_pre_login_session(self) -> None:
        self.factory = self.make_factory()
        idle = [self.connect(f"192.0.2.{i}") for i in range(4)]  # the pre-login share is full
        newcomer = self.connect("198.51.100.1")
        self.assertTrue(idle[0].closed)
        self.assertEqual(
            idle[0].lines(),
            ["* BYE [UNAVAILABLE] Too many connections, closing the oldest not logged in"],
        )
        self.assertFalse(any(c.closed for c in idle[1:]))
        newcomer.command(f"LOGIN {'bob@example.org'} secret")  # gets in
        self.assertEqual(self.factory.connection_count.preauth, 3)
        # The kept share: logged-in sessions may use it, and are never evicted.
        user = self.login(select=None)
        self.assertEqual(self.factory.connection_count.total, 5)
        self.connect("198.51.100.3")  # all 5 places taken: the oldest not logged in goes
        self.assertTrue(idle[1].closed)
        self.assertFalse(newcomer.closed or user.closed)
        self.assertEqual(self.factory.connection_count.evictions, 2)

    def test_hash_queue_full(self) -> None:
        self.factory = self.make_factory(portal=make_portal(BusyChecker()))
        client = self.connect()
        client.run("""
            C: a LOGIN alice secret
            S: a NO [UNAVAILABLE] Cannot check credentials now, try again later
        """)
        self.assertEqual(self.throttle.failures("192.0.2.7"), 0)


class POP3Stress(POP3Case):
    def test_pre_login_sessions_get_the_short_timeout_under_stress(self) -> None:
        self.limits = replace(STRESSED, max_errors=50)
        self.factory = self.make_factory()
        self.proto, self.transport = self.connect()
        self.login()  # logged in
        idle = [self.connect()[0] for _ in range(2)]
        self.clock.advance(300)
        self.assertFalse(any(p.transport.disconnecting for p in idle))
        self.connect()  # the 4th: stress
        self.clock.advance(10)
        self.assertTrue(all(p.transport.disconnecting for p in idle))
        self.assertIn(b"-ERR Disconnected for inactivity", idle[0].transport.value())
        self.assertFalse(self.transport.disconnecting)

    def test_a_newcomer_evicts_the_oldest_pre_login_session(self) -> None:
        self.limits = replace(STRESSED, max_errors=50)
        self.factory = self.make_factory()
        idle = [self.connect()[0] for _ in range(4)]
        self.connect()
        self.assertTrue(idle[0].transport.disconnecting)
        self.assertTrue(idle[0].transport.value().endswith(
            b"-ERR [SYS/TEMP] Too many connections, closing the oldest session not logged in\r\n"
        ))  # fmt: skip
        self.assertFalse(any(p.transport.disconnecting for p in idle[1:]))

    def test_hash_queue_full(self) -> None:
        self.factory = self.make_factory(portal=make_portal(BusyChecker()))
        self.proto, self.transport = self.connect()
        self.dialog("""
            C: USER alice@example.com
            S: +OK Send your password
            C: PASS secret
            S: -ERR [SYS/TEMP] Cannot check credentials now, try again later
        """)
        self.assertEqual(self.throttle.failures("192.0.2.7"), 0)


def plain(user: str, password: str = "pw") -> str:
    return b64encode(f"\0{user}\0{password}".encode()).decode()


class SMTPStress(SynchronousTestCase):
    def harness(self, role: Role = Role.SUBMISSION, checker: object = None) -> Harness:
        if checker is None:
            checker = DevChecker(run=maybeDeferred)
        return Harness(limits=STRESSED, role=role, portal=make_portal(checker))

    def connect(self, h: Harness, peer: str) -> Dialog:
        d = h.connect(peer=peer, implicit=True)
        d.greet()
        d.run("C: EHLO client.example.net\nS: 250-mx.example.org...", complete=False)
        d.replies()
        return d

    def test_pre_login_sessions_get_the_short_timeout_under_stress(self) -> None:
        h = self.harness()
        user = self.connect(h, "198.51.100.1")
        user.run(f"C: AUTH PLAIN {plain('bob')}\nS: 235 2.7.0 Authentication successful")
        idle = [self.connect(h, f"192.0.2.{i}") for i in range(2)]
        h.clock.advance(200)
        self.assertFalse(any(d.closed for d in idle))
        self.connect(h, "192.0.2.9")  # the 4th: stress
        h.clock.advance(10)
        self.assertTrue(all(d.closed for d in idle))
        self.assertEqual(idle[0].replies(), ["421 4.4.2 Error: timeout exceeded"])
        self.assertFalse(user.closed)

    def test_submission_evicts_the_oldest_pre_login_session(self) -> None:
        h = self.harness()
        idle = [self.connect(h, f"192.0.2.{i}") for i in range(4)]
        self.connect(h, "198.51.100.1")
        self.assertTrue(idle[0].closed)
        self.assertEqual(
            idle[0].replies(), ["421 4.7.0 Error: too many connections, try again later"]
        )
        self.assertFalse(any(d.closed for d in idle[1:]))

    def test_port_25_never_evicts(self) -> None:
        """Nobody logs in there, and a session may be a message half received."""
        h = self.harness(role=Role.MTA)
        idle = [self.connect(h, f"192.0.2.{i}") for i in range(5)]
        refused = h.connect(peer="198.51.100.1", implicit=True)
        self.assertEqual(
            refused.replies(), ["421 4.7.0 Error: too many connections, try again later"]
        )
        self.assertFalse(any(d.closed for d in idle))
        h.clock.advance(10)  # but under stress their idle timeout is the short one
        self.assertTrue(all(d.closed for d in idle))

    def test_hash_queue_full(self) -> None:
        h = self.harness(checker=BusyChecker())
        d = self.connect(h, "192.0.2.1")
        d.run(f"C: AUTH PLAIN {plain('bob')}\nS: 454 4.7.0 Error: temporary authentication ...")


class ConfigKeys(SynchronousTestCase):
    def load_text(self, text: str) -> Config:
        path = Path(self.mktemp())
        path.write_text('[domains]\nlocal = ["a.example"]\n[limits]\n' + text)
        return load(path)

    def test_keys(self) -> None:
        limits = self.load_text(
            "auth_user_delay_after = 0\nauth_user_max_delay = 60\nauth_hash_queue = 4\n"
            "auth_hash_threads = 3\n"
            "stress_threshold = 0.5\nstress_idle_timeout = 5\n"
        ).limits
        self.assertEqual(
            (limits.auth_user_delay_after, limits.auth_user_max_delay, limits.auth_hash_queue),
            (0, 60.0, 4),
        )
        self.assertEqual((limits.stress_threshold, limits.stress_idle_timeout), (0.5, 5.0))
        self.assertEqual(limits.auth_hash_threads, 3)
        self.assertEqual(counter_for(limits, evict=True).stress_at, 250)

    def test_mistakes(self) -> None:
        for text, words in (
            ("stress_threshold = 1.5", "must be a share above 0 and at most 1, not 1.5"),
            ("stress_threshold = 0", "must be a share above 0"),
            ("auth_hash_queue = 0", "must be at least 1"),
            ("stress_idle_timeout = 0", "must be at least 1"),
            ("auth_user_max_delay = -1", "must be at least 0"),
        ):
            err = self.assertRaises(ConfigError, self.load_text, text + "\n")
            self.assertIn(words, str(err))
