"""mailhub.testing's sandboxes (issue 15): a per-test inbox on a shared server, for trial, for
pytest and for every pytest-xdist worker."""

from __future__ import annotations

import importlib.util
import os
import smtplib
import sys
import textwrap
from pathlib import Path

from twisted.internet import threads, utils
from twisted.trial.unittest import TestCase

from mailhub.testing import MailhubTestServer, MessageTimeout, SandboxAPIError, SandboxClient
from tests.support.tools import skip_or_fail

REPO = Path(__file__).resolve().parents[1]


class TrialSandboxes(TestCase):
    async def test_two_sandboxes_on_one_server(self) -> None:
        hub = await MailhubTestServer.started(self)
        a, b = await hub.create_sandbox("a"), await hub.create_sandbox("b")
        await hub.send("same@example.com", subject="to a", login=a.login)
        await hub.send("same@example.com", subject="to b", login=b.login)
        got = await hub.wait_for_message(to="same@example.com", sandbox=b)
        self.assertEqual((got.subject, got.mailbox), ("to b", b.username))
        got = await hub.wait_for_message(sandbox=a)
        self.assertEqual(got.subject, "to a")
        with self.assertRaises(MessageTimeout):
            await hub.wait_for_message(sandbox=a, timeout=0.2)  # only "to a" was ever there

    async def test_the_blocking_client_over_http(self) -> None:
        """SandboxClient from a thread, as a pytest test or an xdist worker uses it."""
        hub = await MailhubTestServer.started(self)

        context = hub.client_context()

        def use() -> tuple[str, list[str], int]:
            with SandboxClient.create(hub.api_url, name="blocking") as box:
                other = SandboxClient.create(hub.api_url)
                other.send("x@example.com", subject="other's")
                box.send(["a@example.com", "b@example.com"], subject="first")
                box.add_fault({"stage": "rcpt", "action": "reply", "code": 550})
                try:
                    box.send("c@example.com", subject="refused")
                except smtplib.SMTPRecipientsRefused:
                    pass
                else:
                    raise AssertionError("the sandbox's fault rule did not fire")
                other.send("x@example.com", subject="other's second")  # not refused
                box.clear_faults()
                box.send("e@example.com", subject="over TLS", kind="smtps", context=context)
                bcc = (
                    b"From: app@example.com\r\nTo: d@example.com\r\nSubject: second\r\n"
                    b"\r\nhello\r\n"
                )
                box.send(["d@example.com", "hidden@example.org"], message=bcc)
                first = box.wait_for_message(to="b@example.com")
                second = box.wait_for_message(to="hidden@example.org")  # the envelope's Bcc
                assert box.wait_for_message(subject="TLS").subject == "over TLS"
                subjects = [m["subject"] for m in box.messages()]
                try:
                    box.wait_for_message(timeout=0.2)
                except MessageTimeout:
                    pass
                else:
                    raise AssertionError("a wait returned a message twice")
                box_id = box.id
            try:
                SandboxClient(hub.api_url, box.info, box.password).messages()
            except SandboxAPIError as e:
                gone = e.status
            else:
                gone = 200
            self.assertEqual(box_id, box.id)
            return f"{first.subject}/{second.subject}", subjects, gone

        order, subjects, gone = await threads.deferToThread(use)
        self.assertEqual(order, "first/second")
        self.assertEqual(subjects, ["second", "over TLS", "first"])
        self.assertEqual(gone, 404)  # deleted when the with block ended


class PytestXdist(TestCase):
    """The pytest plugin under pytest-xdist: every worker's tests use one server, each test its
    own sandbox, in parallel."""

    async def test_workers_share_one_server_and_keep_their_own_mail(self) -> None:
        if importlib.util.find_spec("xdist") is None:
            skip_or_fail("pytest-xdist is not installed (pip install -e '.[test]')")
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        seen = directory / "seen"
        seen.mkdir()
        (directory / "test_app.py").write_text(
            textwrap.dedent(
                f"""
                import os, smtplib
                import pytest

                SEEN = {str(seen)!r}

                def note(url, name):
                    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
                    with open(os.path.join(SEEN, f"{{worker}}-{{name}}"), "w") as f:
                        f.write(url)

                @pytest.mark.parametrize("n", range(8))
                def test_own_inbox(mailhub_sandbox, mailhub_url, n):
                    note(mailhub_url, f"inbox{{n}}")
                    box = mailhub_sandbox
                    box.send([f"user{{n}}@example.com", "everyone@example.com"],
                             subject=f"hello {{n}}")
                    assert box.wait_for_message(to="everyone@example.com").subject == f"hello {{n}}"
                    assert [m["subject"] for m in box.messages()] == [f"hello {{n}}"]

                @pytest.mark.parametrize("n", range(4))
                def test_own_faults(mailhub_sandbox, n):
                    if n % 2:
                        mailhub_sandbox.add_fault({{"stage": "rcpt", "action": "reply",
                                                   "code": 550}})
                        with pytest.raises(smtplib.SMTPRecipientsRefused):
                            mailhub_sandbox.send("x@example.com")
                    else:
                        mailhub_sandbox.send("x@example.com", subject="through")
                        assert mailhub_sandbox.wait_for_message().subject == "through"

                def test_worker_sandbox(mailhub_worker_sandbox, mailhub_url):
                    note(mailhub_url, "worker")
                    mailhub_worker_sandbox.send("w@example.com", subject="worker")
                    assert mailhub_worker_sandbox.wait_for_message().subject == "worker"
                """
            )
        )
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("MAILHUB_URL", None)
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable,
            ("-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "mailhub.pytest_plugin",
             "-n", "2", str(directory)),
            env=env,
            path=str(directory),
        )  # fmt: skip
        self.assertEqual(code, 0, (out + err).decode())
        self.assertIn(b"13 passed", out)
        notes = {p.name: p.read_text() for p in seen.iterdir()}
        workers = {name.split("-")[0] for name in notes}
        self.assertEqual(workers, {"gw0", "gw1"})  # both workers ran tests ...
        self.assertEqual(len(set(notes.values())), 1)  # ... against one server
