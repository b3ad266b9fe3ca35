"""Recipient policy: plain objects in, a decision out."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailhub.addresses import AddressError, parse_mail_from, parse_rcpt_to
from mailhub.aliases import AliasMap
from mailhub.config import DomainsConfig
from mailhub.smtp.policy import (
    ISMTPPolicy,
    RecipientPolicy,
    SubmissionPolicy,
    unsafe_local_part,
)
from mailhub.smtp.session import Session

DOMAINS = DomainsConfig(local=("example.org", "catchall.example"), catch_all=("catchall.example",))


def decide(policy: RecipientPolicy, address: str, *, authenticated: str | None = None):
    session = Session("192.0.2.1", authenticated_as=authenticated)
    mailbox, _ = parse_rcpt_to(f"TO:<{address}>")
    decision = policy.check_recipient(session, mailbox)
    return (decision.reply.code, decision.reply.enhanced, decision.mailbox)


class RecipientPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.asked: list[str] = []

        def exists(mailbox: str) -> bool:
            self.asked.append(mailbox)
            return mailbox in {"user@example.org", "jörg@example.org"}

        self.policy = RecipientPolicy(DOMAINS, exists)

    def test_provides_interface(self) -> None:
        self.assertTrue(verifyObject(ISMTPPolicy, self.policy))

    def test_known_user_with_case_and_plus(self) -> None:
        self.assertEqual(
            decide(self.policy, "User@Example.ORG"), (250, "2.1.5", "user@example.org")
        )
        self.assertEqual(
            decide(self.policy, "user+news@example.org"), (250, "2.1.5", "user@example.org")
        )
        self.assertEqual(
            decide(self.policy, "Jörg+x@example.org"), (250, "2.1.5", "jörg@example.org")
        )
        self.assertEqual(self.asked, ["user@example.org"] * 2 + ["jörg@example.org"])

    def test_unknown_user(self) -> None:
        self.assertEqual(decide(self.policy, "nobody@example.org"), (550, "5.1.1", None))
        # "+tag" alone is not plus-addressing of an empty user.
        decide(self.policy, "+tag@example.org")
        self.assertEqual(self.asked[-1], "+tag@example.org")

    def test_catch_all(self) -> None:
        self.assertEqual(
            decide(self.policy, "Any.One+x@catchall.example"),
            (250, "2.1.5", "any.one@catchall.example"),
        )
        self.assertEqual(self.asked, [])

    def test_postmaster_always_accepted(self) -> None:
        # RFC 5321 4.5.1, even where no such user exists.
        self.assertEqual(
            decide(self.policy, "PostMaster@example.org"), (250, "2.1.5", "postmaster@example.org")
        )
        self.assertEqual(
            decide(self.policy, "Postmaster"), (250, "2.1.5", "postmaster@example.org")
        )
        other = RecipientPolicy(DOMAINS, lambda m: False, postmaster_domain="mx.example.org")
        self.assertEqual(decide(other, "postmaster"), (250, "2.1.5", "postmaster@mx.example.org"))

    def test_relay(self) -> None:
        self.assertEqual(decide(self.policy, "x@elsewhere.example"), (554, "5.7.1", None))
        self.assertEqual(decide(self.policy, "x@[192.0.2.9]"), (554, "5.7.1", None))
        self.assertEqual(
            decide(self.policy, "X@Elsewhere.Example", authenticated="user@example.org"),
            (451, "4.4.3", None),  # authenticated, but no relay queue in this version
        )

    def test_relay_through_the_queue_when_available(self) -> None:
        policy = RecipientPolicy(DOMAINS, lambda m: False, relay_available=True)
        # Still no open relay.
        self.assertEqual(decide(policy, "x@elsewhere.example"), (554, "5.7.1", None))
        # Authenticated: accepted as written; the remote local part keeps its case.
        self.assertEqual(
            decide(policy, "X.Y@Elsewhere.Example", authenticated="user@example.org"),
            (250, "2.1.5", "X.Y@elsewhere.example"),
        )

    def test_a_catcher_relays_routed_domains_for_loopback_clients_only(self) -> None:
        catcher = RecipientPolicy(
            DomainsConfig(accept_any=True),
            lambda m: False,
            relay_available=True,
            local_domain=lambda d: d != "routed.example",
        )
        mailbox, _ = parse_rcpt_to("TO:<x@routed.example>")
        here = catcher.check_recipient(Session(client_address="127.0.0.1"), mailbox)
        self.assertEqual(here.reply.code, 250)
        there = catcher.check_recipient(Session(client_address="192.0.2.7"), mailbox)
        self.assertEqual((there.reply.code, there.reply.enhanced), (554, "5.7.1"))

    def test_unsafe_local_parts(self) -> None:
        for local in ('"../x"', '".hidden"', '"a/b"', "a/b", '"a..b"', '"a.."'):
            self.assertEqual(
                decide(self.policy, f"{local}@catchall.example"), (553, "5.1.3", None), local
            )
        # Control characters cannot even be quoted in SMTP (quoted-pairSMTP is %d32-126).
        self.assertRaises(AddressError, parse_rcpt_to, 'TO:<"a\\\x01b"@catchall.example>')
        for local in ("", ".", "..", "a\x00", "a\x7f", "x\x85y", "a\nb"):
            self.assertTrue(unsafe_local_part(local), repr(local))
        self.assertFalse(unsafe_local_part("ok.name-1"))

    def test_catch_all_creates_only_mailboxes_a_login_could_name(self) -> None:
        # Issue 12 5h: a catch-all (the dev stack) makes a directory per recipient: the rule
        # of dev logins (mailhub.store.names.new_localpart_problem) holds here too.
        existing = {"x*y@whatever.example"}
        policy = RecipientPolicy(DomainsConfig(accept_any=True), existing.__contains__)
        for local in ("*", "a%b", "\u202eevil", "a\u200bb", '"a b"', "x" * 65):
            self.assertEqual(decide(policy, f"{local}@whatever.example"), (553, "5.1.3", None))
        # A mailbox made before the rule keeps its mail; tags and UTF-8 letters are fine.
        self.assertEqual(decide(policy, "x*y@whatever.example")[0], 250)
        self.assertEqual(decide(policy, "bob+" + "t" * 70 + "@whatever.example")[0], 250)
        self.assertEqual(decide(policy, "jürgen@whatever.example")[0], 250)

    def test_accept_any(self) -> None:
        policy = RecipientPolicy(DomainsConfig(accept_any=True), lambda m: False)
        self.assertEqual(decide(policy, "A@Whatever.Example"), (250, "2.1.5", "a@whatever.example"))
        self.assertEqual(decide(policy, "a@[192.0.2.1]"), (554, "5.7.1", None))

    def test_aliases_seam(self) -> None:
        policy = RecipientPolicy(
            DOMAINS, lambda m: False, aliases={"sales@example.org": ["user@example.org"]}.get
        )
        self.assertEqual(decide(policy, "Sales+q@example.org"), (250, "2.1.5", "user@example.org"))
        self.assertEqual(decide(policy, "other@example.org")[0], 550)

    def test_sender_accepted(self) -> None:
        decision = self.policy.check_sender(Session("192.0.2.1"), None)
        self.assertEqual(decision.reply.code, 250)
        self.assertTrue(decision.accepted)


class AliasesTests(SynchronousTestCase):
    """The alias seam with the real AliasMap: several targets, loops, forwards."""

    def setUp(self) -> None:
        path = Path(self.mktemp())
        path.write_text(
            "team@example.org: user@example.org, other@catchall.example\n"
            "loop1@example.org: loop2@example.org\n"
            "loop2@example.org: loop1@example.org\n"
            "fwd@example.org: someone@elsewhere.example\n"
            "sales@catchall.example: user@example.org\n"
        )
        self.aliases = AliasMap(path)
        self.policy = RecipientPolicy(
            DOMAINS, {"user@example.org"}.__contains__, aliases=self.aliases
        )

    def test_several_targets(self) -> None:
        decision = self.policy.check_recipient(
            Session("192.0.2.1"), parse_rcpt_to("TO:<Team+x@example.org>")[0]
        )
        self.assertEqual(decision.mailboxes, ("user@example.org", "other@catchall.example"))

    def test_loop_is_550_5_4_6(self) -> None:
        self.assertEqual(decide(self.policy, "loop1@example.org"), (550, "5.4.6", None))

    def test_forward_to_another_domain_waits_for_the_relay(self) -> None:
        self.assertEqual(decide(self.policy, "fwd@example.org"), (451, "4.4.3", None))

    def test_alias_wins_over_catch_all(self) -> None:
        self.assertEqual(
            decide(self.policy, "sales@catchall.example"), (250, "2.1.5", "user@example.org")
        )
        self.assertEqual(
            decide(self.policy, "else@catchall.example"), (250, "2.1.5", "else@catchall.example")
        )


class AuthRules(SynchronousTestCase):
    def test_tls_required_unless_loopback_allowed(self) -> None:
        strict = RecipientPolicy(DOMAINS, lambda m: False)
        dev = RecipientPolicy(DOMAINS, lambda m: False, auth_without_tls_on_loopback=True)
        plain_remote = Session("192.0.2.1")
        plain_local = Session("::1")
        tls_remote = Session("192.0.2.1", tls="TLS")
        self.assertEqual(strict.check_auth(plain_remote).reply.code, 538)
        self.assertEqual(strict.check_auth(plain_local).reply.enhanced, "5.7.11")
        self.assertTrue(strict.check_auth(tls_remote).accepted)
        self.assertTrue(dev.check_auth(plain_local).accepted)
        self.assertFalse(dev.check_auth(plain_remote).accepted)


class SubmissionPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.policy = SubmissionPolicy(
            DOMAINS,
            lambda m: False,
            aliases_of={"user@example.org": ["sales@example.org"]}.get,
        )
        verifyObject(ISMTPPolicy, self.policy)

    def sender(self, text: str, user: str | None = "user@example.org"):
        mailbox, _ = parse_mail_from(f"FROM:{text}")
        decision = self.policy.check_sender(Session("192.0.2.1", authenticated_as=user), mailbox)
        return decision.reply.code, decision.reply.enhanced

    def test_auth_first(self) -> None:
        self.assertEqual(self.sender("<user@example.org>", user=None), (530, "5.7.0"))

    def test_own_addresses(self) -> None:
        for text in ("<user@example.org>", "<User+Tag@EXAMPLE.org>", "<sales@example.org>"):
            self.assertEqual(self.sender(text), (250, "2.1.0"), text)
        for text in ("<other@example.org>", "<>", "<user@example.com>", "<+x@example.org>"):
            self.assertEqual(self.sender(text), (553, "5.7.1"), text)

    def test_recipients_as_for_the_mta(self) -> None:
        self.assertEqual(
            decide(self.policy, "x@elsewhere.example", authenticated="user@example.org"),
            (451, "4.4.3", None),
        )
        self.assertEqual(
            decide(self.policy, "a@catchall.example", authenticated="user@example.org"),
            (250, "2.1.5", "a@catchall.example"),
        )
