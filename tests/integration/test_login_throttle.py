"""Issue 12 5b and 5c over real sockets: SMTPS, IMAPS and POP3S with smtplib, imaplib and
poplib against a production-style server (users file, certificate from a test CA).

Password checks are counted where they happen (the portal's checker and the users file's
``authenticate``), and held on a ``threading.Event`` while the attack is under way, so
"simultaneous" is exact, not a matter of timing. No wall-clock assertion anywhere: waits are on
conditions and on the clients' own sockets."""

from __future__ import annotations

import concurrent.futures
import imaplib
import poplib
import smtplib
import socket
import threading
from base64 import b64encode
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import argon2
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import threads

from mailhub.config import Config, DomainsConfig, Limits, ListenersConfig, TLSConfig
from mailhub.service import MailhubService
from mailhub.users import UserDB
from tests.support.connections import ConnectionWatch, closed_by_server
from tests.support.relay import until
from tests.support.service import LOOPBACK_ANY_PORT, ServiceTestCase
from tests.support.tls import CertificateAuthority, client_context

FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
HOST = "mail.example.test"
ALICE, BOB, MALLORY = "alice@example.test", "bob@example.test", "mallory@example.test"
PASSWORDS = {ALICE: "alice-secret", BOB: "bob-secret", MALLORY: "mallory-secret"}
LISTENERS = ListenersConfig(
    smtp=(LOOPBACK_ANY_PORT,),
    smtps=(LOOPBACK_ANY_PORT,),
    imaps=(LOOPBACK_ANY_PORT,),
    pop3s=(LOOPBACK_ANY_PORT,),
)
# Short delays so the tests run fast; the rules are the same at any size.
FAST_LIMITS = Limits(auth_max_failures=5, auth_max_delay=0.01, auth_user_max_delay=0.01)
TIMEOUT = 30


class Checks:
    """Counts password checks (calls into the portal's checker) by user; ``gate`` holds the
    hashing itself (in the hashing pool's threads) until opened."""

    def __init__(self, service: MailhubService) -> None:
        self.by_user: Counter[str] = Counter()
        self.gate = threading.Event()
        self.gate.set()
        checker = service.portal.checkers[IUsernamePassword]  # type: ignore[union-attr]
        request = checker.requestAvatarId

        def counted(credentials: Any) -> Any:
            self.by_user[credentials.username.decode()] += 1
            return request(credentials)

        checker.requestAvatarId = counted
        users = service.users
        assert users is not None
        authenticate = users.authenticate

        def held(username: Any, password: Any) -> Any:
            self.gate.wait(TIMEOUT)  # in a hashing thread, never the reactor's
            return authenticate(username, password)

        users.authenticate = held  # type: ignore[method-assign]

    @property
    def total(self) -> int:
        return sum(self.by_user.values())


class ThrottleCase(ServiceTestCase):
    def launch(self, limits: Limits = FAST_LIMITS) -> MailhubService:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        ca = CertificateAuthority()
        self.context = client_context(ca.write_root(directory))
        cert, key = ca.issue([HOST]).write(directory, "mail")
        users = UserDB(directory / "users", hasher=FAST)
        for user, password in PASSWORDS.items():
            users.add(user, password)
        config = Config(
            source="<login throttle test>",
            hostname=HOST,
            data_dir=directory / "data",
            dev=False,
            domains=DomainsConfig(local=("example.test",)),
            listeners=LISTENERS,
            tls=TLSConfig(certificate=cert, key=key),
            users_file=directory / "users",
            limits=limits,
        )
        service = self.start_config(config)
        self.checks = Checks(service)
        self.imaps_connections = ConnectionWatch(service.listening_ports("imaps"))
        return service

    def counter(self, listener: str) -> Any:
        port = self.service.listening_ports(listener)[0]
        return port.factory.wrappedFactory.connection_count  # implicit TLS wraps the factory

    # --- clients (blocking: run in threads) -----------------------------------------------

    def _socket(self, listener: str, source: str) -> socket.socket:
        sock = socket.create_connection(
            ("127.0.0.1", self.port(listener)), TIMEOUT, source_address=(source, 0)
        )
        return self.context.wrap_socket(sock, server_hostname=HOST)

    def smtps(self, user: str, password: str, source: str = "127.0.0.1") -> str:
        case = self

        class Client(smtplib.SMTP_SSL):
            def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
                return case._socket("smtps", source)

        try:
            with Client(HOST, 0, timeout=TIMEOUT, context=self.context) as client:
                client.ehlo("client.example.net")
                # One AUTH PLAIN (smtplib.login would try LOGIN too after a 535).
                code, _ = client.docmd("AUTH", "PLAIN " + plain(user, password))
        except smtplib.SMTPServerDisconnected:
            return "closed"
        return {235: "ok", 535: "failed", 421: "refused", 454: "busy"}.get(code, str(code))

    def imaps(self, user: str, password: str, source: str = "127.0.0.1") -> str:
        case = self

        class Client(imaplib.IMAP4_SSL):
            def _create_socket(self, timeout: float | None) -> socket.socket:
                return case._socket("imaps", source)

        try:
            client = Client(HOST, 0, ssl_context=self.context, timeout=TIMEOUT)
        except imaplib.IMAP4.error as e:
            return f"greeting: {e}"  # refused at once
        except OSError:
            return "closed"
        try:
            client.login(user, password)
        except imaplib.IMAP4.abort:
            return "refused"  # * BYE: too many failures
        except imaplib.IMAP4.error as e:
            text = str(e)
            return "busy" if "[UNAVAILABLE]" in text else "failed"
        finally:
            client.shutdown()
        return "ok"

    def pop3s(self, user: str, password: str, source: str = "127.0.0.1") -> str:
        case = self

        class Client(poplib.POP3_SSL):
            def _create_socket(self, timeout: float) -> socket.socket:
                return case._socket("pop3s", source)

        try:
            client = Client(HOST, 0, timeout=TIMEOUT, context=self.context)
            try:
                client.user(user)
                client.pass_(password)
            finally:
                client.close()
        except poplib.error_proto as e:
            text = str(e)
            if "[AUTH]" in text:
                return "failed"
            if "Too many failed" in text:
                return "refused"
            return "busy" if "[SYS/TEMP]" in text else text
        except (EOFError, OSError):
            return "closed"
        return "ok"


def plain(user: str, password: str) -> str:
    return b64encode(f"\0{user}\0{password}".encode()).decode()


async def run_all(calls: list[Callable[[], str]], *, while_running: Any = None) -> list[str]:
    """Run blocking client calls all at once in their own threads; ``while_running`` (async) is
    awaited on the reactor meanwhile, then the results are collected."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(calls))
    try:
        futures = [pool.submit(call) for call in calls]
        if while_running is not None:
            await while_running(futures)
        done = await threads.deferToThread(concurrent.futures.wait, futures, TIMEOUT)
        assert not done.not_done, "clients did not finish"
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=False)


class Parallel(ThrottleCase):
    async def test_parallel_guesses_check_at_most_the_limit(self) -> None:
        """Issue 12 5b(1): 150 simultaneous guesses over SMTPS, IMAPS and POP3S from one
        address had 100 passwords checked (limit 5)."""
        self.launch()
        self.checks.gate.clear()  # every check is still running when the others arrive
        calls = [
            lambda c=client, i=i: c(BOB, f"guess-{i}")
            for i in range(50)
            for client in (self.smtps, self.imaps, self.pop3s)
        ]

        throttle = self.service.throttle
        assert throttle is not None

        async def attack(futures: list) -> None:
            # Each guess reached the checker or waits for the attempts in flight.
            await until(
                lambda: self.checks.total + throttle.waiting("127.0.0.1") >= len(futures),
                limit=TIMEOUT,
            )
            self.checks.gate.set()

        results = Counter(await run_all(calls, while_running=attack))
        self.assertEqual(self.checks.by_user[BOB], 5)
        # The 5th failure is answered with the refusal (421, -ERR [SYS/TEMP]) except on IMAP
        # (NO, then BYE), whichever protocol it came in on.
        self.assertIn(results, ({"failed": 4, "refused": 146}, {"failed": 5, "refused": 145}))
        # The address stays refused, even with the right password.
        self.assertEqual(await self.in_thread(self.imaps, BOB, PASSWORDS[BOB]), "refused")
        self.assertLessEqual(self.checks.total, 5)

    async def test_parallel_right_logins_from_one_address_all_get_in(self) -> None:
        """A client opening several connections at once, or an office behind one NAT address:
        counting attempts in flight must not refuse them (they wait for a hash each)."""
        self.launch()
        self.checks.gate.clear()
        throttle = self.service.throttle
        assert throttle is not None
        calls = [
            lambda c=client, u=user: c(u, PASSWORDS[u])
            for client in (self.smtps, self.imaps, self.pop3s)
            for user in (ALICE, BOB, MALLORY, ALICE)
            if not (client == self.pop3s and user == ALICE)  # one POP3 session per mailbox
        ]

        async def release(futures: list) -> None:
            await until(lambda: throttle.in_flight("127.0.0.1") == 5, limit=TIMEOUT)
            self.checks.gate.set()

        results = await run_all(calls, while_running=release)
        self.assertEqual(results, ["ok"] * 10)


class Reset(ThrottleCase):
    async def test_own_account_does_not_reset_the_count(self) -> None:
        """Issue 12 5b(2): one successful login with the attacker's own account cleared the
        count: 11 guesses for bob in 68 s, never refused."""
        self.launch()

        def attack() -> list[tuple[str, str]]:
            rounds = []
            for i in range(11):
                guess = self.imaps(BOB, f"guess-{i}")
                own = self.imaps(MALLORY, PASSWORDS[MALLORY])
                rounds.append((guess, own))
            return rounds

        rounds = await self.in_thread(attack)
        self.assertEqual(self.checks.by_user[BOB], 5)
        self.assertEqual([g for g, _ in rounds], ["failed"] * 5 + ["refused"] * 6)
        # Mallory's own logins succeed while the address has room, then it is refused too.
        self.assertEqual([o for _, o in rounds], ["ok"] * 4 + ["refused"] * 7)

    async def test_the_real_users_success_forgives_their_own_typing(self) -> None:
        self.launch()

        def typing() -> list[str]:
            return [
                self.pop3s(ALICE, "typo-1"),
                self.pop3s(ALICE, "typo-2"),
                self.pop3s(ALICE, PASSWORDS[ALICE]),
                *[self.pop3s(ALICE, f"typo-{i}") for i in range(3, 8)],
            ]

        # Her two typos were forgiven: five more failures before the address is refused.
        self.assertEqual(
            await self.in_thread(typing), ["failed"] * 2 + ["ok"] + ["failed"] * 4 + ["refused"]
        )


class Spread(ThrottleCase):
    async def test_spread_guesses_are_bounded_and_a_real_login_gets_in(self) -> None:
        """Issue 12 5b(3): 120 addresses x 1 guess ran 7.9 checked guesses/s and a real login
        waited 10.2 s behind them in the 2-thread hashing pool. Here 30 addresses (127.0.0.2
        ...) guess bob's password at once while the hashes are held: 3 look like logins, the
        rest like guesses (bob already has 3 attempts in flight) and take at most half the
        8-deep hashing queue; the other guesses are refused before hashing. A real login
        meanwhile finds room in the queue and gets in; bob himself after the flood."""
        self.launch(replace(FAST_LIMITS, auth_hash_queue=8))
        hashing, throttle = self.service.hashing, self.service.throttle
        assert hashing is not None and throttle is not None
        self.checks.gate.clear()
        sources = [f"127.0.0.{i}" for i in range(2, 32)]
        calls = [lambda s=s: self.imaps(BOB, "guess", source=s) for s in sources]
        during = []

        async def flood(futures: list) -> None:
            await until(lambda: hashing.pending + throttle.busy_refusals >= 30, limit=TIMEOUT)
            self.assertEqual(hashing.pending, 3 + 4)  # bounded: the suspect share is 4
            during.append(self.in_thread(self.smtps, ALICE, PASSWORDS[ALICE]))
            await until(lambda: hashing.pending == 8, limit=TIMEOUT)  # alice's check queued
            self.checks.gate.set()

        results = Counter(await run_all(calls, while_running=flood))
        self.assertEqual(results, {"failed": 7, "busy": 23})
        self.assertEqual(self.checks.by_user[BOB], 7)  # 23 refused before hashing
        self.assertEqual(hashing.refused, 0)  # the queue itself never overflowed
        self.assertEqual(await during[0], "ok")  # not refused, not behind the flood
        after = await self.in_thread(self.imaps, BOB, PASSWORDS[BOB])
        self.assertEqual(after, "ok")  # bob too: delayed, never locked out


class IdleConnections(ThrottleCase):
    def idle(self, listener: str) -> socket.socket:
        """A TCP connection that never says anything (not even a TLS hello)."""
        return socket.create_connection(("127.0.0.1", self.port(listener)), TIMEOUT)

    async def test_idle_pre_login_connections_get_the_short_timeout(self) -> None:
        """Issue 12 5c: 500 idle connections locked everyone out, each holding its place for
        the full idle timeout (IMAP 1,800 s)."""
        limits = replace(FAST_LIMITS, max_connections=10, stress_idle_timeout=0.5)
        self.launch(limits)
        sockets = {
            listener: [self.idle(listener) for _ in range(8)]
            for listener in ("imaps", "pop3s", "smtps")
        }

        all_sockets = [s for group in sockets.values() for s in group]
        closed = await run_all([lambda s=s: closed_by_server(s) for s in all_sockets])
        self.assertTrue(all(closed), closed)
        await self.imaps_connections.idle()  # the server has seen them all go
        self.assertEqual(self.counter("imaps").total, 0)
        self.assertEqual(await self.in_thread(self.imaps, ALICE, PASSWORDS[ALICE]), "ok")

    async def test_a_login_gets_in_when_idle_connections_fill_every_place(self) -> None:
        self.launch(replace(FAST_LIMITS, max_connections=10))
        for listener in ("imaps", "pop3s", "smtps"):
            idle = [self.idle(listener) for _ in range(10)]
            self.addCleanup(lambda idle=idle: [s.close() for s in idle])
            await until(lambda listener=listener: self.counter(listener).total == 8, limit=TIMEOUT)
        results = await self.in_thread(
            lambda: [
                self.imaps(ALICE, PASSWORDS[ALICE]),
                self.pop3s(ALICE, PASSWORDS[ALICE]),
                self.smtps(ALICE, PASSWORDS[ALICE]),
            ]
        )
        self.assertEqual(results, ["ok", "ok", "ok"])
        for listener in ("imaps", "pop3s", "smtps"):
            self.assertGreaterEqual(self.counter(listener).evictions, 3, listener)

    async def test_a_refused_client_still_reads_why(self) -> None:
        """Closing before the TLS handshake finished must not throw away the goodbye of a
        client that is about to send its ClientHello (only one that never does is cut off)."""
        self.launch(replace(FAST_LIMITS, max_connections_per_ip=1))

        def refused() -> str:
            with socket.create_connection(("127.0.0.1", self.port("imaps")), TIMEOUT):
                return self.imaps(ALICE, PASSWORDS[ALICE])

        self.assertEqual(
            await self.in_thread(refused),
            "greeting: b'* BYE Too many connections, try again later'",
        )
