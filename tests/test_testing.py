"""mailhub.testing: the in-process server for other projects' tests (trial and pytest)."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

from twisted.internet import reactor, task, utils
from twisted.trial.unittest import TestCase

from mailhub.testing import MailhubTestServer, MessageTimeout

SMTP_AND_TLS = ("smtp", "submission", "smtps")


class TrialFixture(TestCase):
    async def test_mail_sent_before_the_wait_is_not_missed(self) -> None:
        hub = await MailhubTestServer.started(self, services=SMTP_AND_TLS)
        await hub.send("first@example.com", subject="one")
        await hub.send("second@example.com", subject="two")
        # Both arrived before anybody waited; each wait returns the next one, once.
        self.assertEqual((await hub.wait_for_message()).subject, "one")
        self.assertEqual((await hub.wait_for_message()).subject, "two")
        await self.assertFailure(hub.wait_for_message(timeout=0.2), MessageTimeout)

    async def test_filters_and_cursor(self) -> None:
        hub = await MailhubTestServer.started(self, services=SMTP_AND_TLS)
        await hub.send("old@example.com", subject="before the cursor")
        cursor = hub.cursor()
        await hub.send("a@example.com", subject="Your invoice 17")
        await hub.send("b@example.com", subject="Welcome")
        found = await hub.wait_for_message(to="B@example.com", since=cursor)
        self.assertEqual((found.mailbox, found.subject), ("b@example.com", "Welcome"))
        found = await hub.wait_for_message(subject="invoice", since=cursor)
        self.assertEqual(found.mailbox, "a@example.com")
        self.assertEqual(found.text.replace("\r\n", "\n"), "Sent by mailhub.testing.\n")
        await self.assertFailure(
            hub.wait_for_message(to="old@example.com", since=cursor, timeout=0.2), MessageTimeout
        )
        self.assertEqual([m.subject for m in hub.messages("a@example.com")], ["Your invoice 17"])

    async def test_messages_in_one_second_come_in_arrival_order(self) -> None:
        hub = await MailhubTestServer.started(self, services=SMTP_AND_TLS)
        folder = hub.service.store.mailbox("same@example.com", create=True).folder()
        new = folder._path / "new"
        # Maildir names do not zero-pad the microseconds: M99999 arrived before M100000,
        # although it sorts after it as text.
        for usec, subject in ((99999, "first"), (100000, "second")):
            data = f"Subject: {subject}\r\n\r\nbody\r\n".encode()
            path = new / f"1700000000.M{usec}P7Q1.host,S={len(data)}"
            path.write_bytes(data)
            os.utime(path, (1_700_000_000, 1_700_000_000))
        self.assertEqual([m.subject for m in hub.messages("same@example.com")], ["first", "second"])

    async def test_header_octets_read_by_the_one_rule(self) -> None:
        # issue 12: raw UTF-8 (RFC 6532) in a To address and a subject whose encoded word
        # decodes to a lone surrogate (UTF-7) neither fail a wait nor let it miss the message.
        hub = await MailhubTestServer.started(self, services=SMTP_AND_TLS)
        raw = "To: Jürgen <jürgen@example.com>\r\nSubject: =?utf-7?q?+2AA-?= hi\r\n\r\nx\r\n"
        await hub.send("a@example.com", message=raw.encode())
        found = await hub.wait_for_message(to="JÜRGEN@example.com", subject="hi", timeout=10)
        self.assertEqual(found.subject, "\ufffd hi")

    async def test_waiting_sees_a_message_that_arrives_later(self) -> None:
        hub = await MailhubTestServer.started(self, services=SMTP_AND_TLS)
        waiting = hub.wait_for_message(to="late@example.com")
        self.assertNoResult(waiting)
        await hub.send("late@example.com", subject="late")
        self.assertEqual((await waiting).subject, "late")

    async def test_waiting_does_not_poll_the_store(self) -> None:
        """A wait is woken by the delivery (the server's feed), not by looking at the store
        again and again: while it waits for nothing, the store is not listed."""
        hub = await MailhubTestServer.started(self, services=SMTP_AND_TLS)
        store = hub.service.store  # type: ignore[union-attr]
        listings = []
        real = store.mailboxes

        def counting() -> list[str]:
            listings.append(1)
            return real()

        store.mailboxes = counting  # type: ignore[method-assign]
        self.addCleanup(setattr, store, "mailboxes", real)
        waiting = hub.wait_for_message(to="later@example.com", timeout=30)
        await task.deferLater(reactor, 0.5, lambda: None)
        self.assertNoResult(waiting)
        # The feed's own fallback scan (once a second, for other hosts) may run once here; the
        # old fixture listed the store every 20 ms (25 times).
        self.assertLessEqual(len(listings), 1)
        sent = reactor.seconds()
        await hub.send("later@example.com", subject="woken")
        found = await waiting
        self.assertEqual(found.subject, "woken")
        self.assertLess(reactor.seconds() - sent, 0.5)  # inotify woke it, not the 1 s fallback

    async def test_cursor_counts_mail_delivered_before_it_was_taken(self) -> None:
        # The cursor is taken after the feed has caught up with the disk: mail acked before
        # it is before it, whatever the feed had noticed by itself.
        hub = await MailhubTestServer.started(self, services=SMTP_AND_TLS)
        await hub.send("early@example.com", subject="early")
        cursor = hub.cursor()
        await hub.send("early@example.com", subject="late")
        found = await hub.wait_for_message(to="early@example.com", since=cursor, timeout=1)
        self.assertEqual(found.subject, "late")
        self.assertIsNone(hub.find(subject="late", since=hub.cursor()))

    async def test_tls_with_the_test_ca_and_submission(self) -> None:
        hub = await MailhubTestServer.started(self, services=SMTP_AND_TLS)
        await hub.send("tls@example.com", port="smtps", login=("me@example.com", "any"))
        await hub.send("tls@example.com", port="submission", starttls=True, login=("me", "x"))
        self.assertEqual(len(hub.messages("tls@example.com")), 2)
        self.assertIn("BEGIN CERTIFICATE", hub.ca_file.read_text())

    async def test_every_listener_gets_a_free_port(self) -> None:
        from mailhub.service import FACTORIES

        hub = MailhubTestServer(Path(self.mktemp()), services=SMTP_AND_TLS)
        hub.start()
        self.addCleanup(hub.stop)
        self.assertEqual(set(hub.ports), set(SMTP_AND_TLS))
        self.assertEqual(len(set(hub.ports.values())), 3)
        self.assertNotIn(1025, hub.ports.values())
        self.assertRaises(ValueError, MailhubTestServer, self.mktemp(), services=["gopher"])
        self.assertTrue(set(SMTP_AND_TLS) <= set(FACTORIES))

    async def test_own_endpoints_and_the_dev_certificate(self) -> None:
        # The integration tests' needs: endpoints of their own (two SMTP ports here) and the
        # dev stack's own certificate instead of the test CA's.
        from mailhub.config import ListenersConfig, TLSConfig
        from mailhub.testing import LOOPBACK_ANY_PORT

        two = ListenersConfig(smtp=(LOOPBACK_ANY_PORT, f"{LOOPBACK_ANY_PORT}:backlog=10"))
        hub = MailhubTestServer(Path(self.mktemp()), listeners=two, tls=TLSConfig())
        hub.start()
        self.addCleanup(hub.stop)
        assert hub.service is not None and hub.service.tls is not None
        self.assertEqual(len(hub.service.listening_ports("smtp")), 2)
        self.assertEqual(set(hub.ports), {"smtp"})
        [certificate] = hub.service.tls.certificates
        self.assertNotEqual(certificate.path, hub.ca.certificate_file)
        self.assertRaises(
            ValueError, MailhubTestServer, self.mktemp(), services=["smtp"], listeners=two
        )

    async def test_a_whole_config_runs_as_it_is(self) -> None:
        import dataclasses

        from mailhub.config import ChecksConfig, DomainsConfig, ListenersConfig, dev_config
        from mailhub.testing import LOOPBACK_ANY_PORT

        config = dataclasses.replace(
            dev_config(Path(self.mktemp()).absolute(), hostname="mx.own.test"),
            domains=DomainsConfig(local=("own.test",), catch_all=("own.test",)),
            listeners=ListenersConfig(smtp=(LOOPBACK_ANY_PORT,)),
            checks=ChecksConfig(enabled=False),  # no DNS of the world in a test
        )
        hub = MailhubTestServer(Path(self.mktemp()), config=config)
        hub.start()
        self.addCleanup(hub.stop)
        self.assertIs(hub.config, config)
        await hub.send("x@own.test", subject="own")
        self.assertEqual((await hub.wait_for_message(to="x@own.test")).subject, "own")
        self.assertRaises(ValueError, MailhubTestServer, self.mktemp(), config=config, limits=None)


class PytestFixture(TestCase):
    """The blocking helpers, as a pytest suite uses them (pytest runs in its own process: the
    reactor runs in a thread there)."""

    async def test_pytest_suite_passes(self) -> None:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        (directory / "test_app.py").write_text(
            textwrap.dedent(
                """
                import smtplib
                import pytest
                import mailhub.testing

                @pytest.fixture
                def mailhub_server(tmp_path):
                    with mailhub.testing.running(tmp_path, services=("smtp",)) as hub:
                        yield hub

                def test_send_and_wait(mailhub_server):
                    mailhub_server.send("app@example.com", subject="Hello from pytest")
                    got = mailhub_server.wait_for_message(to="app@example.com")
                    assert got.subject == "Hello from pytest"

                def test_faults(mailhub_server):
                    mailhub_server.add_fault(
                        {"stage": "rcpt", "action": "reply", "code": 550, "recipient": "no@*"}
                    )
                    with pytest.raises(smtplib.SMTPRecipientsRefused):
                        mailhub_server.send("no@example.com")
                    assert mailhub_server.list_faults()[0]["fired"] == 1
                    assert mailhub_server.messages() == []

                def test_temporary_directory():
                    with mailhub.testing.running(services=("smtp",)) as hub:
                        hub.send("x@example.com")
                        assert len(hub.wait_for_message().raw) > 0
                """
            )
        )
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable,
            ("-m", "pytest", "-q", "-p", "no:cacheprovider", str(directory)),
            env=env,
            path=str(directory),
        )
        self.assertEqual(code, 0, (out + err).decode())
        self.assertIn(b"3 passed", out)

    def test_blocking_helpers_refuse_to_run_inside_trial(self) -> None:
        import mailhub.testing

        def attempt() -> None:
            with mailhub.testing.running(self.mktemp()):
                pass

        self.assertRaises(RuntimeError, attempt)
