"""HostCheck, the web listener's DNS rebinding defence, on its own (issue 12, 5e); the real
HTTP requests are in tests/integration/test_web_hosts.py."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from mailhub.config import ConfigError, load
from mailhub.web.access import HostCheck, host_name


def request(host: str, local: IPv4Address | IPv6Address | None = None) -> DummyRequest:
    r = DummyRequest([b""])
    r.requestHeaders.setRawHeaders(b"host", [host.encode()])
    if local is not None:
        r.getHost = lambda: local  # type: ignore[method-assign]
    return r


class HostNames(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(host_name("LocalHost:8025"), "localhost")
        self.assertEqual(host_name("example.test."), "example.test")
        self.assertEqual(host_name("[::1]:8025"), "::1")
        self.assertEqual(host_name("[::1]"), "::1")
        for bad in ("", ":8025", "::1", "a:b", "[::1", "x:80x", "[::1]x"):
            self.assertIsNone(host_name(bad), bad)


class Check(SynchronousTestCase):
    def test_the_address_a_request_arrived_on(self) -> None:
        # The --interface address (or the one a 0.0.0.0 listener was reached at).
        check = HostCheck(("mail.example.test",))
        here = IPv4Address("TCP", "10.0.0.5", 8025)
        self.assertTrue(check.allows(request("10.0.0.5:8025", here)))
        self.assertFalse(check.allows(request("10.0.0.6:8025", here)))
        self.assertFalse(check.allows(request("evil.test:8025", here)))
        mapped = IPv6Address("TCP", "::ffff:10.0.0.5", 8025)  # a dual-stack listener
        self.assertTrue(check.allows(request("10.0.0.5", mapped)))
        v6 = IPv6Address("TCP", "fd00::5", 8025)
        self.assertTrue(check.allows(request("[fd00::5]:8025", v6)))

    def test_configured_names_and_addresses(self) -> None:
        check = HostCheck(("mail.example.test", "web.internal", "192.0.2.7", "[2001:db8::7]"))
        here = IPv4Address("TCP", "10.0.0.5", 8025)
        for host in ("mail.example.test", "WEB.internal:80", "192.0.2.7:8025", "[2001:db8::7]"):
            self.assertTrue(check.allows(request(host, here)), host)
        for host in ("x.mail.example.test", "internal", "192.0.2.8"):
            self.assertFalse(check.allows(request(host, here)), host)


class AllowedHostsConfig(SynchronousTestCase):
    def load_text(self, text: str):
        path = Path(self.mktemp())
        path.write_text('[domains]\nlocal = ["a.example"]\n' + text)
        return load(path)

    def test_allowed_hosts(self) -> None:
        config = self.load_text(
            '[web]\nallowed_hosts = ["Mail.Internal.", "bücher.example", "::1"]\n'
        )
        self.assertEqual(
            config.web.allowed_hosts, ("mail.internal", "xn--bcher-kva.example", "::1")
        )
        self.assertEqual(self.load_text("").web.allowed_hosts, ())
        err = self.assertRaises(ConfigError, self.load_text, '[web]\nallowed_hosts = ["a b"]\n')
        self.assertIn("[web] allowed_hosts", str(err))
