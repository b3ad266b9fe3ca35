"""The shared twisted.cred portal: checkers (users file, dev stack), realm, credentials."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import argon2
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import Interface
from zope.interface.verify import verifyObject

import mailhub.auth
from mailhub.auth import (
    DevChecker,
    HashingPool,
    IMailUser,
    MailRealm,
    MailUser,
    PasswordCredentials,
    UserDBChecker,
    dev_login_address,
    make_portal,
    reactor_threads,
)
from mailhub.users import UserDB

FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def inline(f: Any, /, *args: Any) -> Deferred[Any]:
    """A Runner that runs the call at once, for synchronous tests."""
    return maybeDeferred(f, *args)


def users_db(case: SynchronousTestCase) -> UserDB:
    db = UserDB(Path(case.mktemp()), hasher=FAST)
    db.add("alice@example.com", "alice-password")
    return db


class Interfaces(SynchronousTestCase):
    def test_verify_object(self) -> None:
        verifyObject(ICredentialsChecker, UserDBChecker(users_db(self)))
        verifyObject(ICredentialsChecker, DevChecker())
        verifyObject(IRealm, MailRealm())
        verifyObject(IMailUser, MailUser("a@example.com"))
        verifyObject(IUsernamePassword, PasswordCredentials(b"a@example.com", b"pw"))


class UsersFileLogin(SynchronousTestCase):
    def setUp(self) -> None:
        self.portal = make_portal(UserDBChecker(users_db(self), run=inline))

    def login(self, username: bytes, password: bytes) -> Deferred[Any]:
        return self.portal.login(UsernamePassword(username, password), None, IMailUser)

    def test_success_gives_the_canonical_address(self) -> None:
        interface, avatar, logout = self.successResultOf(
            self.login(b"Alice@EXAMPLE.com", b"alice-password")
        )
        self.assertIs(interface, IMailUser)
        self.assertEqual(avatar, MailUser("alice@example.com"))
        logout()

    def test_wrong_password_and_unknown_user_fail_alike(self) -> None:
        for username, password in [
            (b"alice@example.com", b"wrong"),
            (b"bob@example.com", b"alice-password"),
            (b"\xff\xfe", b"alice-password"),
            (b"", b""),
        ]:
            failure = self.failureResultOf(self.login(username, password), UnauthorizedLogin)
            self.assertEqual(str(failure.value), "authentication failed")

    def test_our_credentials_class(self) -> None:
        d = self.portal.login(
            PasswordCredentials(b"alice@example.com", b"alice-password"), None, IMailUser
        )
        self.assertEqual(self.successResultOf(d)[1].address, "alice@example.com")


class NoPasswordsShown(SynchronousTestCase):
    def test_credentials_reprs(self) -> None:
        ours = PasswordCredentials(b"alice@example.com", b"s3cret-pw")
        self.assertEqual(repr(ours), "PasswordCredentials(username=b'alice@example.com')")
        self.assertNotIn("s3cret-pw", repr(UsernamePassword(b"alice@example.com", b"s3cret-pw")))
        self.assertTrue(ours.checkPassword(b"s3cret-pw"))
        self.assertFalse(ours.checkPassword(b"s3cret-pX"))

    def test_failed_login_log_and_failure(self) -> None:
        events: list[dict] = []
        self.patch(mailhub.auth, "log", Logger(observer=events.append))
        portal = make_portal(UserDBChecker(users_db(self), run=inline))
        d = portal.login(UsernamePassword(b"alice@example.com", b"s3cret-pw"), None, IMailUser)
        failure = self.failureResultOf(d, UnauthorizedLogin)
        text = "\n".join(f"{formatEvent(e)} {e!r}" for e in events)
        self.assertIn("authentication failed for 'alice@example.com'", text)
        for shown in (text, failure.getTraceback(), repr(failure.value)):
            self.assertNotIn("s3cret-pw", shown)


class OffTheReactorThread(TestCase):
    """The hash runs in a worker thread; the reactor thread only sees the Deferred fire."""

    def setUp(self) -> None:
        self.db = users_db(self)
        self.threads: list[int] = []
        authenticate = self.db.authenticate

        def recording(username: Any, password: Any) -> str | None:
            self.threads.append(threading.get_ident())
            return authenticate(username, password)

        self.patch(self.db, "authenticate", recording)

    def check(self, checker: UserDBChecker) -> Deferred[None]:
        portal = make_portal(checker)
        main = threading.get_ident()
        d = portal.login(UsernamePassword(b"alice@example.com", b"alice-password"), None, IMailUser)

        def done(result: tuple[Any, MailUser, Any]) -> None:
            self.assertEqual(result[1].address, "alice@example.com")
            self.assertEqual(len(self.threads), 1)
            self.assertNotEqual(self.threads[0], main)
            self.assertEqual(threading.get_ident(), main)  # the result comes back to the reactor

        return d.addCallback(done)

    def test_dedicated_pool(self) -> None:
        pool = HashingPool(threads=1)
        pool.startService()
        self.addCleanup(pool.stopService)
        return self.check(UserDBChecker(self.db, run=pool.run))

    def test_reactor_pool(self) -> None:
        return self.check(UserDBChecker(self.db, run=reactor_threads))


class DevStack(SynchronousTestCase):
    def setUp(self) -> None:
        self.created: list[str] = []
        self.checker = DevChecker(on_first_login=self.created.append, run=inline)
        self.portal = make_portal(self.checker)

    def login(self, username: bytes, password: bytes = b"anything") -> Deferred[Any]:
        return self.portal.login(UsernamePassword(username, password), None, IMailUser)

    def test_any_password_logs_in_and_creates_the_user_once(self) -> None:
        self.assertEqual(
            self.successResultOf(self.login(b"Dev@App.test"))[1].address, "dev@app.test"
        )
        self.successResultOf(self.login(b"dev@app.test", b"something else"))
        self.successResultOf(self.login(b"dev@app.test", b""))
        self.assertEqual(self.created, ["dev@app.test"])
        self.assertEqual(self.checker.known, {"dev@app.test"})

    def test_bare_username_gets_the_default_domain(self) -> None:
        self.assertEqual(self.successResultOf(self.login(b"tester"))[1].address, "tester@localhost")

    def test_unusable_names_are_refused(self) -> None:
        for name in (b"../etc", b"a+b@x.test", b"\xff", b"a b@x.test", b""):
            self.failureResultOf(self.login(name), UnauthorizedLogin)
        self.assertEqual(self.created, [])

    def test_names_are_addresses_by_smtp_rules(self) -> None:
        """Issue 12, 5h: each of these became a mailbox directory."""
        for name in (
            "\u202egnp.exe@x.test",  # bidi override
            "a\u200bb@x.test",  # zero-width space (a format character)
            "*@x.test",
            "a%b@x.test",
            "%",
            "x@x@x.test",
            '"x@x"@x.test',
            "a@xn--zz.test",  # an A-label that decodes to nothing valid
            "a@[192.0.2.1]",
            "a" * 65 + "@x.test",
            "a@x.test.",
            "a..b@x.test",
        ):
            self.failureResultOf(self.login(name.encode()), UnauthorizedLogin)
            self.assertRaises(ValueError, dev_login_address, name)
        self.assertEqual(self.created, [])
        self.assertEqual(dev_login_address("Bücher@Bücher.example"), "bücher@xn--bcher-kva.example")
        self.assertEqual(dev_login_address("o'neil.x", "dev.test"), "o'neil.x@dev.test")

    def test_writes_nothing_without_a_callback(self) -> None:
        checker = DevChecker()
        self.assertEqual(
            self.successResultOf(checker.requestAvatarId(UsernamePassword(b"u@x.test", b"p"))),
            "u@x.test",
        )


class IOtherAvatar(Interface):
    pass


class Realm(SynchronousTestCase):
    def test_factories_for_protocol_avatars(self) -> None:
        logged_out: list[str] = []

        class Account:
            def __init__(self, user: MailUser) -> None:
                self.user = user

            def logout(self) -> None:
                logged_out.append(self.user.address)

        realm = MailRealm({IOtherAvatar: Account})
        interface, avatar, logout = realm.requestAvatar(b"a@example.com", None, IOtherAvatar)
        self.assertIs(interface, IOtherAvatar)
        self.assertEqual(avatar.user, MailUser("a@example.com"))
        logout()
        self.assertEqual(logged_out, ["a@example.com"])

    def test_unknown_interface(self) -> None:
        self.assertRaises(NotImplementedError, MailRealm().requestAvatar, "a@x", None, IOtherAvatar)
