"""Config loading: the shipped examples load, and every mistake names file, key and fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailhub.config import (
    DEV_PORTS,
    DEV_SOURCE,
    MODE_DEFAULTS,
    Config,
    ConfigError,
    Limits,
    dev_config,
    load,
    normalise_domain,
)

ETC = Path(__file__).parent.parent / "etc"


class ShippedConfigs(SynchronousTestCase):
    def test_dev_toml_is_the_builtin_default(self) -> None:
        """etc/dev.toml spells out exactly what no --config gives."""
        loaded = load(ETC / "dev.toml")
        self.assertEqual(dataclasses.replace(loaded, source=DEV_SOURCE), dev_config())

    def test_dev_stack_listens_on_loopback_ports_of_the_port_plan(self) -> None:
        config = dev_config()
        self.assertTrue(config.dev)
        self.assertTrue(config.domains.accept_any)
        for name, port in DEV_PORTS.items():
            self.assertEqual(getattr(config.listeners, name), (f"tcp:{port}:interface=127.0.0.1",))
        self.assertEqual(
            (DEV_PORTS["smtp"], DEV_PORTS["submission"], DEV_PORTS["web"]), (1025, 1587, 8025)
        )

    def test_production_example_loads(self) -> None:
        config = load(ETC / "mailhub.toml")
        self.assertFalse(config.dev)
        self.assertEqual(config.domains.local, ("example.com", "example.org"))
        self.assertFalse(config.domains.accept_any)
        self.assertEqual(config.listeners.smtp, ("tcp:25",))
        self.assertEqual(config.listeners.submission, ("tcp:587",))
        self.assertEqual(config.listeners.imaps, ("tcp:993",))
        self.assertEqual(config.limits.max_message_size, 35 * 1024 * 1024)
        self.assertEqual(config.mail_dir, Path("/var/lib/mailhub/mail"))

    def test_data_option_overrides_data_dir(self) -> None:
        config = load(ETC / "mailhub.toml", data_dir="/srv/mail")
        self.assertEqual(config.data_dir, Path("/srv/mail"))


def setting(config: Config, key: str) -> object:
    """The value of a README-style key ("[smtp] restrict_sender") in a loaded Config."""
    section, name = key[1:].split("] ")
    if section == "server":
        return str(config.data_dir) if name == "data_dir" else getattr(config, name)
    return getattr(getattr(config, section), name)


class DevMode(SynchronousTestCase):
    """``[server] dev = true`` in a file gives every dev default of MODE_DEFAULTS (issue 12, 3)."""

    def load_text(self, text: str) -> Config:
        path = Path(self.mktemp())
        path.write_text(text)
        return load(path)

    def test_dev_true_alone_is_the_dev_stack(self) -> None:
        loaded = self.load_text("[server]\ndev = true\n")
        self.assertEqual(dataclasses.replace(loaded, source=DEV_SOURCE), dev_config())

    def test_each_default_follows_the_table(self) -> None:
        dev = self.load_text("[server]\ndev = true\n")
        production = self.load_text('[domains]\nlocal = ["a.example"]\n')
        for key, default in MODE_DEFAULTS.items():
            expected_dev = default.dev
            if key == "[server] data_dir":
                expected_dev = str(Path(expected_dev).absolute())
            self.assertEqual(setting(dev, key), expected_dev, key)
            if default.production is not None:  # None: computed (the host's FQDN)
                self.assertEqual(setting(production, key), default.production, key)

    def test_dev_defaults_give_way_to_the_file(self) -> None:
        config = self.load_text(
            "[server]\ndev = true\n[smtp]\nrestrict_sender = true\n"
            '[domains]\naccept_any = false\nlocal = ["a.example"]\n[listeners]\nweb = []\n'
        )
        self.assertTrue(config.dev)
        self.assertTrue(config.smtp.restrict_sender)
        self.assertTrue(config.smtp.auth_without_tls_on_loopback)
        self.assertFalse(config.domains.accept_any)
        self.assertEqual(config.listeners.web, ())
        self.assertEqual(config.listeners.smtp, ("tcp:1025:interface=127.0.0.1",))


class Mistakes(SynchronousTestCase):
    """Each mistake is one ConfigError whose text names the file, the key and a fix."""

    def write(self, text: str) -> Path:
        path = Path(self.mktemp())
        path.write_text(text)
        return path

    def error(self, text: str) -> ConfigError:
        path = self.write(text)
        err = self.assertRaises(ConfigError, load, path)
        self.assertIn(str(path), str(err))
        return err

    def test_unknown_key_suggests_the_right_one(self) -> None:
        err = self.error('[domains]\nlocal=["a.example"]\n[limits]\nmax_msg_size = 10\n')
        self.assertIn("[limits] max_msg_size", str(err))
        self.assertIn("unknown key", str(err))
        self.assertIn("did you mean 'max_message_size'", str(err))

    def test_whole_message(self) -> None:
        path = self.write('[domains]\nlocal=["a.example"]\n[limits]\nmax_recipients = "many"\n')
        err = self.assertRaises(ConfigError, load, path)
        self.assertEqual(
            str(err),
            f"{path}: [limits] max_recipients: must be a whole number, not a string\n"
            "  fix: max_recipients = 100",
        )

    def test_unknown_section(self) -> None:
        err = self.error('[domain]\nlocal=["a.example"]\n')
        self.assertIn("[domain]", str(err))
        self.assertIn("did you mean [domains]", str(err))

    def test_wrong_type(self) -> None:
        err = self.error('[domains]\nlocal=["a.example"]\n[limits]\nmax_recipients = "many"\n')
        self.assertIn("[limits] max_recipients", str(err))
        self.assertIn("must be a whole number, not a string", str(err))
        self.assertIn("fix: max_recipients = 100", str(err))

    def test_boolean_is_not_a_number(self) -> None:
        err = self.error('[domains]\nlocal=["a.example"]\n[limits]\nmax_errors = true\n')
        self.assertIn("[limits] max_errors", str(err))

    def test_too_small(self) -> None:
        err = self.error('[domains]\nlocal=["a.example"]\n[limits]\nmax_line_length = 10\n')
        self.assertIn("must be at least 100", str(err))

    def test_bad_size(self) -> None:
        err = self.error('[domains]\nlocal=["a.example"]\n[limits]\nmax_message_size = "lots"\n')
        self.assertIn("[limits] max_message_size", str(err))
        self.assertIn('"10M"', str(err))

    def test_sizes_take_suffixes(self) -> None:
        for text, expected in [("10M", 10 * 2**20), ("512k", 512 * 1024), ("1G", 2**30)]:
            path = self.write(
                f'[domains]\nlocal=["a.example"]\n[limits]\nmax_message_size="{text}"'
            )
            self.assertEqual(load(path).limits.max_message_size, expected)

    def test_missing_config_file(self) -> None:
        err = self.assertRaises(ConfigError, load, "/nonexistent/mailhub.toml")
        self.assertIn("/nonexistent/mailhub.toml", str(err))
        self.assertIn("not found", str(err))

    def test_missing_referenced_file(self) -> None:
        err = self.error('[domains]\nlocal=["a.example"]\n[files]\naliases = "/nonexistent/a"\n')
        self.assertIn("[files] aliases", str(err))
        self.assertIn("does not exist", str(err))

    def test_users_file_may_be_created_later_but_its_folder_must_exist(self) -> None:
        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        path = self.write(f'[domains]\nlocal=["a.example"]\n[files]\nusers = "{folder}/users"\n')
        self.assertEqual(load(path).users_file, folder / "users")
        err = self.error('[domains]\nlocal=["a.example"]\n[files]\nusers = "/nonexistent/users"\n')
        self.assertIn("[files] users", str(err))
        self.assertIn("folder '/nonexistent' does not exist", str(err))

    def test_certificate_without_key(self) -> None:
        cert = self.write("not really a cert")
        err = self.error(f'[domains]\nlocal=["a.example"]\n[tls]\ncertificate = "{cert}"\n')
        self.assertIn("[tls]", str(err))
        self.assertIn("set both or neither", str(err))

    def test_bad_endpoint_string(self) -> None:
        err = self.error('[domains]\nlocal=["a.example"]\n[listeners]\nsmtp = ["tcpp:25"]\n')
        self.assertIn("[listeners] smtp", str(err))
        self.assertIn("'tcpp:25' is not a Twisted server endpoint string", str(err))
        self.assertIn('smtp = ["tcp:25:interface=0.0.0.0"]', str(err))

    def test_bad_domain_syntax(self) -> None:
        for bad in ["exa mple.com", "-bad.example", "a..b", "under_score.example", "x" * 64 + ".c"]:
            err = self.error(f'[domains]\nlocal = ["{bad}"]\n')
            self.assertIn("[domains] local", str(err))
            self.assertIn("not a valid domain name", str(err))

    def test_no_local_domains(self) -> None:
        err = self.error("[server]\nhostname = 'mx.example'\n")
        self.assertIn("[domains] local", str(err))
        self.assertIn("accept no mail", str(err))

    def test_invalid_toml(self) -> None:
        err = self.error("[domains\n")
        self.assertIn("not valid TOML", str(err))

    def test_bad_choice(self) -> None:
        err = self.error('[domains]\nlocal=["a.example"]\n[smtp]\nbare_line_endings = "fix"\n')
        self.assertIn("'fix' is not one of reject, normalise", str(err))


class QueueAndRelay(SynchronousTestCase):
    def load_text(self, text: str):
        path = Path(self.mktemp())
        path.write_text('[domains]\nlocal = ["a.example"]\n' + text)
        return load(path)

    def test_durations(self) -> None:
        queue = self.load_text(
            '[queue]\nretry_schedule = ["30s", "5m", 600, "1.5h"]\nmax_lifetime = "3d"\n'
            "delay_notice = 0\nmax_per_destination = 2\n"
        ).queue
        self.assertEqual(queue.retry_schedule, (30.0, 300.0, 600.0, 5400.0))
        self.assertEqual(queue.max_lifetime, 3 * 86400)
        self.assertEqual(queue.delay_notice, 0)
        self.assertEqual(queue.max_per_destination, 2)
        err = self.assertRaises(ConfigError, self.load_text, '[queue]\nmax_lifetime = "soon"\n')
        self.assertIn("[queue] max_lifetime: must be a duration", str(err))

    def test_routes_smarthost_and_tls_policy(self) -> None:
        secret = Path(self.mktemp())
        secret.write_text("pw\n")
        relay = self.load_text(
            '[relay]\nroutes = { "B.test" = "127.0.0.1:2525", "c.test" = "[::1]:26" }\n'
            'smarthost = "smtp.example.net"\nsmarthost_username = "me"\n'
            f'smarthost_password_file = "{secret}"\ntls = "verify"\n'
            'tls_policy = { "d.test" = "none" }\nnameservers = ["127.0.0.1:5353"]\n'
        ).relay
        self.assertEqual(relay.routes, (("b.test", "127.0.0.1", 2525), ("c.test", "::1", 26)))
        self.assertEqual(relay.smarthost.host, "smtp.example.net")
        self.assertEqual(relay.smarthost.port, 587)
        self.assertEqual(relay.smarthost.username, "me")
        self.assertEqual(relay.tls, "verify")
        self.assertEqual(relay.tls_policy, (("d.test", "none"),))
        self.assertEqual(relay.nameservers, (("127.0.0.1", 5353),))
        self.assertTrue(relay.configured)

    def test_connection_reuse(self) -> None:
        relay = self.load_text(
            '[relay]\nreuse_idle_time = "2s"\nreuse_max_messages = 10\nreuse_max_age = "1m"\n'
        ).relay
        self.assertEqual(
            (relay.reuse_idle_time, relay.reuse_max_messages, relay.reuse_max_age), (2, 10, 60)
        )
        self.assertEqual(self.load_text("[relay]\nreuse_idle_time = 0\n").relay.reuse_idle_time, 0)

    def test_relay_mistakes(self) -> None:
        for text, needle in [
            ("[relay]\nreuse_max_messages = 0\n", "[relay] reuse_max_messages: must be at least 1"),
            ('[relay]\nreuse_idle_time = "never"\n', "[relay] reuse_idle_time: must be a duration"),
            ('[relay]\nroutes = { "b.test" = "host:port" }\n', "[relay] routes.b.test"),
            ('[relay]\ntls = "maybe"\n', "'maybe' is not one of opportunistic, verify, none"),
            ('[relay]\nsmarthost = "x.example"\nsmarthost_username = "me"\n', "go together"),
        ]:
            err = self.assertRaises(ConfigError, self.load_text, text)
            self.assertIn(needle, str(err))


class Domains(SynchronousTestCase):
    def test_normalised_to_lower_case_a_labels(self) -> None:
        self.assertEqual(normalise_domain("Example.COM."), "example.com")
        self.assertEqual(normalise_domain("bücher.example"), "xn--bcher-kva.example")

    def test_catch_all_domains_are_local(self) -> None:
        path = Path(self.mktemp())
        path.write_text('[domains]\nlocal = ["A.example"]\ncatch_all = ["b.example"]\n')
        domains = load(path).domains
        self.assertEqual(domains.local, ("a.example", "b.example"))
        self.assertEqual(domains.catch_all, ("b.example",))

    def test_defaults_when_a_section_is_absent(self) -> None:
        path = Path(self.mktemp())
        path.write_text('[domains]\nlocal = ["a.example"]\n')
        self.assertEqual(load(path).limits, Limits())


class AuthSettings(SynchronousTestCase):
    """[smtp] restrict_sender / auth_without_tls_on_loopback and [limits] auth_* keys."""

    def load_text(self, text: str):
        path = Path(self.mktemp())
        path.write_text('[domains]\nlocal = ["a.example"]\n' + text)
        return load(path)

    def test_production_defaults_are_strict(self) -> None:
        config = self.load_text("")
        self.assertTrue(config.smtp.restrict_sender)
        self.assertFalse(config.smtp.auth_without_tls_on_loopback)
        self.assertEqual((config.limits.auth_max_failures, config.limits.auth_max_delay), (5, 15.0))

    def test_dev_defaults_are_relaxed(self) -> None:
        config = dev_config()
        self.assertFalse(config.smtp.restrict_sender)
        self.assertTrue(config.smtp.auth_without_tls_on_loopback)

    def test_set(self) -> None:
        config = self.load_text(
            "[smtp]\nrestrict_sender = false\nauth_without_tls_on_loopback = true\n"
            "[limits]\nauth_max_failures = 3\nauth_max_delay = 2.5\n"
        )
        self.assertFalse(config.smtp.restrict_sender)
        self.assertTrue(config.smtp.auth_without_tls_on_loopback)
        self.assertEqual((config.limits.auth_max_failures, config.limits.auth_max_delay), (3, 2.5))

    def test_mistakes(self) -> None:
        for text, key in (
            ("[smtp]\nrestrict_sender = 1\n", "[smtp] restrict_sender"),
            ("[limits]\nauth_max_failures = 0\n", "[limits] auth_max_failures"),
            ("[limits]\nauth_max_delay = -1\n", "[limits] auth_max_delay"),
        ):
            err = self.assertRaises(ConfigError, self.load_text, text)
            self.assertIn(key, str(err))


class ListenBacklog(SynchronousTestCase):
    def test_key(self) -> None:
        path = Path(self.mktemp())
        path.write_text('[domains]\nlocal = ["a.example"]\n[limits]\nlisten_backlog = 4096\n')
        self.assertEqual(load(path).limits.listen_backlog, 4096)
        path.write_text('[domains]\nlocal = ["a.example"]\n[limits]\nlisten_backlog = 0\n')
        self.assertIn("[limits] listen_backlog", str(self.assertRaises(ConfigError, load, path)))


class TwoDomainsExample(SynchronousTestCase):
    def test_the_two_instances_can_run_side_by_side(self) -> None:
        """Both say dev = true (any login, the dev certificate) but neither is a mail catcher,
        and they share no port (MODE_DEFAULTS would give both the dev ports)."""
        a, b = (load(ETC / "two-domains" / f"{name}.toml") for name in "ab")
        ports = []
        for config in (a, b):
            self.assertTrue(config.dev)
            self.assertFalse(config.domains.accept_any)
            for name in DEV_PORTS:
                ports += getattr(config.listeners, name)
        self.assertEqual(len(ports), len(set(ports)))
        self.assertEqual(len(ports), 4)


class InboundChecks(SynchronousTestCase):
    """[checks]: the inbound judgement's policy and its per-domain overrides."""

    def load_text(self, text: str):
        path = Path(self.mktemp())
        path.write_text('[domains]\nlocal = ["a.example"]\n' + text)
        return load(path)

    def test_defaults(self) -> None:
        from mailhub.config import CheckPolicy

        checks = self.load_text("").checks
        self.assertTrue(checks.enabled)
        self.assertEqual(checks.authserv_id, "")
        self.assertEqual(checks.timeout, 20.0)
        self.assertEqual(checks.policy, CheckPolicy("reject", "junk", "reject"))
        self.assertEqual(checks.domains, ())
        self.assertFalse(checks.log_accepted)
        self.assertEqual(dev_config().checks, checks)

    def test_log_accepted(self) -> None:
        self.assertTrue(self.load_text("[checks]\nlog_accepted = true\n").checks.log_accepted)
        with self.assertRaises(ConfigError):
            self.load_text('[checks]\nlog_accepted = "sometimes"\n')

    def test_policy_and_overrides(self) -> None:
        from mailhub.checks.inbound import DomainPolicy, policy_from_config

        config = self.load_text(
            '[checks]\nauthserv_id = "mx.example.org"\ntimeout = "5s"\n'
            'max_message_size = "2M"\ndmarc_reject = "quarantine"\nspf_fail = "mark"\n'
            '[checks.domain."Lists.Example"]\ndmarc_reject = "none"\n'
        )
        checks = config.checks
        self.assertEqual((checks.authserv_id, checks.timeout), ("mx.example.org", 5.0))
        self.assertEqual(checks.max_message_size, 2 * 1024 * 1024)
        policy = policy_from_config(config)
        self.assertEqual(policy.default, DomainPolicy("quarantine", "junk", "mark"))
        # An override starts from the section's own policy.
        self.assertEqual(policy.for_domain("lists.example"), DomainPolicy("none", "junk", "mark"))
        self.assertEqual(policy.for_domain("other.example"), policy.default)
        self.assertEqual((policy.timeout, policy.dev), (5.0, False))

    def test_dev_sending_ip(self) -> None:
        from mailhub.checks.inbound import policy_from_config

        config = self.load_text('[server]\ndev = true\n[checks]\ndev_sending_ip = "2001:DB8::5"\n')
        self.assertEqual(config.checks.dev_sending_ip, "2001:db8::5")
        self.assertEqual(policy_from_config(config).dev_sending_ip, "2001:db8::5")

    def test_mistakes(self) -> None:
        for text, needle in [
            ('[checks]\ndmarc_reject = "bounce"\n', "'bounce' is not one of reject, quarantine"),
            ('[checks]\nspf_fail = "junk"\n', "[checks] spf_fail"),
            ('[checks]\nauthserv_id = "two words"\n', "not a token"),
            ("[checks]\ntimeout = 0\n", "[checks] timeout: must be more than 0"),
            ('[checks.domain."x.example"]\nspf_fial = "mark"\n', "did you mean 'spf_fail'"),
            ('[checks.domain."-bad-"]\nspf_fail = "mark"\n', "[checks] domain"),
            ("[checks]\nenable = false\n", "did you mean 'enabled'"),
            ('[checks]\ndev_sending_ip = "mx.example"\n', "[checks] dev_sending_ip: 'mx.ex"),
        ]:
            err = self.assertRaises(ConfigError, self.load_text, text)
            self.assertIn(needle, str(err))

    def test_rspamd(self) -> None:
        """[checks] rspamd (issue 15): an http(s) URL of rspamd's normal worker; off by default."""
        checks = self.load_text("").checks
        self.assertEqual((checks.rspamd, checks.rspamd_timeout), ("", 10.0))
        checks = self.load_text(
            '[checks]\nrspamd = "http://127.0.0.1:11333/"\nrspamd_timeout = "3s"\n'
        ).checks
        self.assertEqual((checks.rspamd, checks.rspamd_timeout), ("http://127.0.0.1:11333", 3.0))
        for text, needle in [
            ('[checks]\nrspamd = "127.0.0.1:11333"\n', "[checks] rspamd: '127.0.0.1:11333' is not"),
            ('[checks]\nrspamd = "ftp://host"\n', "is not an http URL"),
            ('[checks]\nrspamd = "http://host:99999"\n', "has a bad port"),
            ("[checks]\nrspamd = 11333\n", "[checks] rspamd"),
            ("[checks]\nrspamd_timeout = 0\n", "[checks] rspamd_timeout: must be more than 0"),
        ]:
            err = self.assertRaises(ConfigError, self.load_text, text)
            self.assertIn(needle, str(err))
