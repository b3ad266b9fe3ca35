"""The ``mailhub`` admin command, run in-process as an operator would run it."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest.mock import patch

from twisted.trial.unittest import SynchronousTestCase

from mailhub.cli import main
from mailhub.store.names import SPECIAL_USE
from mailhub.store.store import MailStore


class AdminCommand(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = Path(self.mktemp()).absolute()

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            exit_ = self.assertRaises(SystemExit, main, list(argv))
        return exit_.code, out.getvalue(), err.getvalue()

    def test_mailbox_add_creates_a_maildir_the_store_sees(self) -> None:
        code, out, _ = self.run_cli("mailbox", "add", "Alice@Example.COM", "--data", str(self.data))
        self.assertEqual((code, out), (0, "alice@example.com: created\n"))
        store = MailStore(self.data / "mail", hostname="test")
        self.assertTrue(store.has_mailbox("alice@example.com"))
        for sub in ("tmp", "new", "cur"):
            self.assertTrue((self.data / "mail" / "example.com" / "alice" / sub).is_dir())

        code, out, _ = self.run_cli("mailbox", "add", "alice@example.com", "--data", str(self.data))
        self.assertEqual((code, out), (0, "alice@example.com: exists already\n"))

    def test_mailbox_list_and_show_count_messages(self) -> None:
        store = MailStore(self.data / "mail", hostname="test")
        inbox = store.mailbox("bob@example.com", create=True).folder()
        inbox.append(b"Subject: one\r\n\r\nx\r\n")
        inbox.append(b"Subject: two\r\n\r\nyy\r\n")
        store.mailbox("bob@example.com").create_folder("Lists")

        code, out, _ = self.run_cli("mailbox", "list", "--data", str(self.data))
        self.assertEqual(code, 0)
        self.assertEqual(out, "bob@example.com\t2 messages\t39 bytes\n")

        code, out, _ = self.run_cli("mailbox", "show", "bob@example.com", "--data", str(self.data))
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual(lines[0], "INBOX\t2 messages\t39 bytes")
        # A new mailbox has the RFC 6154 special-use folders; ours comes beside them.
        self.assertEqual(
            sorted(lines[1:]),
            sorted(f"{name}\t0 messages\t0 bytes" for name in SPECIAL_USE.keys() | {"Lists"}),
        )

    def test_show_unknown_mailbox(self) -> None:
        code, _, err = self.run_cli(
            "mailbox", "show", "nobody@example.com", "--data", str(self.data)
        )
        self.assertEqual(code, 1)
        self.assertIn("no mailbox nobody@example.com", err)

    def test_bad_address(self) -> None:
        code, _, _ = self.run_cli("mailbox", "add", "not-an-address", "--data", str(self.data))
        self.assertIn("not an address", str(code))

    def test_unsafe_address_is_refused(self) -> None:
        code, _, err = self.run_cli("mailbox", "add", "../x@example.com", "--data", str(self.data))
        self.assertEqual(code, 1)
        self.assertIn("mailhub:", err)
        self.assertFalse((self.data / "mail" / "x").exists())

    def test_check_config_reports_problem(self) -> None:
        bad = Path(self.mktemp())
        bad.write_text("[limits]\nmax_recipients = 0\n")
        code, _, err = self.run_cli("check-config", "--config", str(bad))
        self.assertEqual(code, 1)
        self.assertIn(f"{bad}: [limits] max_recipients", err)

    def test_user_add_passwd_list_del_with_password_on_stdin(self) -> None:
        from mailhub.users import UserDB

        users = str(Path(self.mktemp()).absolute())
        with patch("sys.stdin", io.StringIO("first-secret\n")):
            code, out, _ = self.run_cli("user", "add", "Carol@Example.com", "--users", users)
        self.assertEqual((code, out), (0, f"carol@example.com: added in {users}\n"))
        self.assertEqual(Path(users).stat().st_mode & 0o777, 0o600)
        self.assertNotIn("first-secret", Path(users).read_text())  # a hash, never the password
        self.assertTrue(UserDB(users).check_password("carol@example.com", "first-secret"))

        with patch("sys.stdin", io.StringIO("second-secret\n")):
            code, _, _ = self.run_cli("user", "passwd", "carol@example.com", "--users", users)
        self.assertEqual(code, 0)
        self.assertFalse(UserDB(users).check_password("carol@example.com", "first-secret"))
        self.assertTrue(UserDB(users).check_password("carol@example.com", "second-secret"))

        code, out, _ = self.run_cli("user", "list", "--users", users)
        self.assertEqual(out, "carol@example.com\tARGON2ID\tok\n")
        with patch("sys.stdin", io.StringIO("x\n")):
            code, _, err = self.run_cli("user", "add", "carol@example.com", "--users", users)
        self.assertEqual(code, 1)
        self.assertIn("carol@example.com", err)

        code, _, _ = self.run_cli("user", "del", "carol@example.com", "--users", users)
        self.assertEqual(code, 0)
        self.assertEqual(self.run_cli("user", "list", "--users", users)[1], "no users\n")

    def test_user_add_without_a_users_file_says_how(self) -> None:
        with patch("sys.stdin", io.StringIO("pw\n")):
            code, _, _ = self.run_cli("user", "add", "a@example.com", "--data", str(self.data))
        self.assertIn("no users file", str(code))

    def test_version(self) -> None:
        from mailhub import __version__

        self.assertEqual(self.run_cli("version"), (0, f"mailhub {__version__}\n", ""))
