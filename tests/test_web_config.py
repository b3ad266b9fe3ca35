"""The [web] config section."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailhub.config import (
    ConfigError,
    TagRuleConfig,
    WebConfig,
    WebhookConfig,
    dev_config,
    load,
)


class WebSection(SynchronousTestCase):
    def load_text(self, text: str):
        path = Path(self.mktemp())
        path.write_text('[domains]\nlocal = ["a.example"]\n' + text)
        return load(path)

    def test_login_is_on_in_production_off_in_the_dev_stack(self) -> None:
        self.assertEqual(self.load_text("").web, WebConfig(login=True))
        self.assertFalse(dev_config().web.login)
        self.assertFalse(self.load_text("[server]\ndev = true\n").web.login)

    def test_set(self) -> None:
        web = self.load_text(
            '[web]\nlogin = false\nadmins = ["Ops@EXAMPLE.com"]\npoll_interval = 0.5\n'
            "max_wait = 60\n"
        ).web
        self.assertEqual(web, WebConfig(False, ("ops@example.com",), 0.5, 60.0))

    def test_mistakes(self) -> None:
        for text, key in (
            ("[web]\nadmins = ['nobody']\n", "[web] admins"),
            ("[web]\npoll_interval = 0\n", "[web] poll_interval"),
            ("[web]\nlogin = 1\n", "[web] login"),
            ("[web]\nlogn = true\n", "[web] logn"),
        ):
            with self.assertRaises(ConfigError, msg=text) as caught:
                self.load_text(text)
            self.assertEqual(caught.exception.key, key)

    def test_link_check_private(self) -> None:
        self.assertFalse(self.load_text("").web.link_check_private)
        self.assertFalse(dev_config().web.link_check_private)
        self.assertTrue(self.load_text("[web]\nlink_check_private = true\n").web.link_check_private)
        with self.assertRaises(ConfigError) as caught:
            self.load_text('[web]\nlink_check_private = "yes"\n')
        self.assertEqual(caught.exception.key, "[web] link_check_private")


class WebhooksAndTags(SynchronousTestCase):
    """[[web.webhook]] and [[web.tag]] (issue 15)."""

    load_text = WebSection.load_text

    def test_read(self) -> None:
        web = self.load_text(
            '[[web.webhook]]\nurl = "https://hooks.example/mail"\nsecret = "s"\n'
            'mailbox = "Bob@Example.com"\ntag = "Billing"\ntimeout = "30s"\nmax_age = "2h"\n'
            "max_attempts = 3\nqueue_size = 10\n"
            '[[web.webhook]]\nurl = "http://127.0.0.1:9000/"\n'
            '[[web.tag]]\nmatch = "subject:invoice"\ntag = "Billing"\n'
        ).web
        first, second = web.webhooks
        self.assertEqual(
            first,
            WebhookConfig(
                url="https://hooks.example/mail",
                secret="s",
                mailbox="bob@example.com",
                tag="billing",
                timeout=30.0,
                max_age=7200.0,
                max_attempts=3,
                queue_size=10,
            ),
        )
        self.assertEqual(second, WebhookConfig(url="http://127.0.0.1:9000/"))
        self.assertEqual(web.tags, (TagRuleConfig(match="subject:invoice", tag="billing"),))

    def test_mistakes(self) -> None:
        for text, key in (
            ('[[web.webhook]]\nurl = "ftp://x/"\n', "[web.webhook] url"),
            ("[[web.webhook]]\nsecret = 's'\n", "[web.webhook] url"),
            ('[[web.webhook]]\nurl = "http://x/"\nqueue_size = 0\n', "[web.webhook] queue_size"),
            ('[[web.webhook]]\nurl = "http://x/"\nretries = 3\n', "[web.webhook] retries"),
            ('[web]\nwebhook = "http://x/"\n', "[web] webhook"),
            ('[[web.tag]]\nmatch = "subject:x"\n', "[web.tag] tag"),
            ('[[web.tag]]\ntag = "x"\n', "[web.tag] match"),
        ):
            with self.assertRaises(ConfigError, msg=text) as caught:
                self.load_text(text)
            self.assertEqual(caught.exception.key, key, text)
