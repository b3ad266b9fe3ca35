"""The [sendmail] and [dev] (retention) config sections: read, checked, and production keeps
no [dev] section."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailhub.config import ConfigError, DevConfig, SendmailConfig, load

BASE = '[server]\nhostname = "mx.example.test"\n[domains]\nlocal = ["example.test"]\n'


class Sections(SynchronousTestCase):
    def load_text(self, text: str) -> object:
        path = Path(self.mktemp())
        path.write_text(BASE + text)
        return load(path, data_dir=self.mktemp())

    def test_defaults(self) -> None:
        config = self.load_text("")
        self.assertEqual(config.sendmail, SendmailConfig())  # type: ignore[attr-defined]
        self.assertEqual(config.retention, DevConfig(5000, None))  # type: ignore[attr-defined]

    def test_sendmail_server_and_login(self) -> None:
        secret = Path(self.mktemp()).absolute()
        secret.write_text("pw\n")
        config = self.load_text(
            f'[sendmail]\nserver = "127.0.0.1:587"\nuser = "app@example.test"\n'
            f'password_file = "{secret}"\n'
        )
        self.assertEqual(
            config.sendmail,  # type: ignore[attr-defined]
            SendmailConfig(("127.0.0.1", 587), "app@example.test", secret),
        )

    def test_dev_retention_keys(self) -> None:
        path = Path(self.mktemp())
        path.write_text('[server]\ndev = true\n[dev]\nmax_messages = 10\nmax_age = "2d"\n')
        config = load(path, data_dir=self.mktemp())
        self.assertEqual(config.retention, DevConfig(10, 2 * 86400.0))

    def test_mistakes(self) -> None:
        for text, key in (
            ('[sendmail]\nserver = "no port:x"\n', "[sendmail] server"),
            ('[sendmail]\nuser = "a@b"\n', "[sendmail]"),
            ('[sendmail]\nsmtp = "x"\n', "[sendmail] smtp"),
            ("[dev]\nmax_messages = 5\n", "[dev]"),  # production never prunes
        ):
            with self.subTest(text=text):
                e = self.assertRaises(ConfigError, self.load_text, text)
                self.assertIn(key, str(e))
        path = Path(self.mktemp())
        path.write_text('[server]\ndev = true\n[dev]\nmax_age = "soon"\n')
        e = self.assertRaises(ConfigError, load, path)
        self.assertIn("[dev] max_age", str(e))
