"""``mailhub dns DOMAIN`` prints every record a domain needs; published as printed (into the
local DNS server, tests/support/localdns.py), ``mailhub check-config --dns`` finds them right;
records missing or wrong are named."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from tests.support.localdns import LocalDNS
from tests.test_cli_dkim import run_cli

SENDING_IP = "192.0.2.10"

CONFIG = """\
[server]
hostname = "mx.example.com"
data_dir = "{data}"

[domains]
local = ["example.com"]
"""

_LINE = re.compile(r"^(\S+)\. IN (MX|TXT|A|AAAA|PTR) (.*)$")


def zone_from(printed: str) -> dict[str, dict[str, list[Any]]]:
    """The zone-file lines `mailhub dns` printed, as the local DNS server's zone."""
    zone: dict[str, dict[str, list[Any]]] = {}
    for line in printed.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        name, kind, value = m.groups()
        if kind == "TXT":
            entry: Any = re.findall(r'"([^"]*)"', value)  # the character-strings as printed
        elif kind == "MX":
            preference, exchange = value.split()
            entry = (int(preference), exchange.rstrip("."))
        else:
            entry = value.rstrip(".")
        zone.setdefault(name, {}).setdefault(kind, []).append(entry)
    return zone


class DNSRecords(TestCase):
    def setUp(self) -> None:
        self.data = Path(self.mktemp()).absolute()
        self.data.mkdir()
        self.config = self.data / "mailhub.toml"
        self.config.write_text(CONFIG.format(data=self.data))
        self.argv = ("--config", str(self.config))

    def keygen(self) -> None:
        code, _, err = run_cli(self, "dkim", "keygen", "example.com", *self.argv)
        self.assertEqual((code, err), (0, ""))

    def printed(self, *more: str) -> str:
        code, out, err = run_cli(self, "dns", "example.com", *more, *self.argv)
        self.assertEqual((code, err), (0, ""))
        return out

    def serve(self, zone: dict[str, Any]) -> tuple[LocalDNS, int]:
        dns = LocalDNS(zone)
        port = dns.start()
        self.addCleanup(dns.stop)
        return dns, port

    async def check(self, port: int, *more: str) -> tuple[int, str]:
        def run() -> tuple[int, str, str]:
            return run_cli(
                self,
                "check-config",
                "--dns",
                "--nameserver",
                f"127.0.0.1:{port}",
                *more,
                *self.argv,
            )

        code, out, _ = await threads.deferToThread(run)  # it blocks on DNS: not on the reactor
        return code, out

    def test_every_record_is_printed(self) -> None:
        self.keygen()
        run_cli(self, "dkim", "keygen", "example.com", "-a", "rsa", "-s", "old", *self.argv)
        run_cli(self, "dkim", "retire", "example.com", "old", *self.argv)
        out = self.printed("--ip", SENDING_IP, "--ip", "2001:DB8::10")
        zone = zone_from(out)
        self.assertEqual(zone["example.com"]["MX"], [(10, "mx.example.com")])
        self.assertEqual(zone["mx.example.com"]["A"], [SENDING_IP])
        self.assertEqual(zone["mx.example.com"]["AAAA"], ["2001:db8::10"])
        self.assertEqual(
            zone["example.com"]["TXT"], [["v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 -all"]]
        )
        self.assertEqual(zone["mx.example.com"]["TXT"], [["v=spf1 a -all"]])
        self.assertEqual(
            zone["_dmarc.example.com"]["TXT"],
            [["v=DMARC1; p=none; rua=mailto:postmaster@example.com"]],
        )
        self.assertIn("go to p=quarantine, then to p=reject", out)
        # Every key, the retired one too (its record stays until it is removed).
        selectors = sorted(n.split(".")[0] for n in zone if "._domainkey." in n)
        self.assertEqual(len(selectors), 3)
        self.assertIn("old", selectors)
        self.assertIn("retired", out)
        self.assertEqual(zone["10.2.0.192.in-addr.arpa"]["PTR"], ["mx.example.com"])
        # Without addresses: SPF by the MX, and notes for what needs the address.
        plain = self.printed()
        self.assertEqual(zone_from(plain)["example.com"]["TXT"], [["v=spf1 mx -all"]])
        self.assertIn("; note: PTR: the reverse DNS of each address", plain)

    def test_a_dev_hostname_is_refused(self) -> None:
        code, _, err = run_cli(self, "dns", "example.com", "--data", str(self.data))
        self.assertEqual(code, 1)
        self.assertIn("[server] hostname is 'localhost'", err)

    async def test_published_as_printed_everything_checks(self) -> None:
        self.keygen()
        zone = zone_from(self.printed("--ip", SENDING_IP))
        dns, port = self.serve(zone)
        code, out = await self.check(port, "--ip", SENDING_IP)
        self.assertEqual(code, 0, out)
        for line in (
            "mx         example.com: ok: example.com MX 10 mx.example.com",
            f"spf        example.com: ok: {SENDING_IP} for example.com: pass",
            f"spf (helo) example.com: ok: {SENDING_IP} for mx.example.com: pass",
            "dmarc      example.com: ok: _dmarc.example.com: p=none applies to example.com",
            "dmarc      example.com: advice: p=none only asks for reports",
            f"ptr        example.com: ok: {SENDING_IP} is mx.example.com, and mx.example.com is",
        ):
            self.assertIn(line, out)
        self.assertEqual(out.count(": ok: published"), 2, out)  # both DKIM keys
        # SPF was evaluated against the records: the zone's SPF TXT was asked.
        self.assertIn(("example.com", "TXT"), dns.authority.queries)

    async def test_sending_addresses_default_to_the_hostname(self) -> None:
        zone = zone_from(self.printed())  # v=spf1 mx -all; no A record printed
        zone["mx.example.com"]["A"] = ["127.0.0.1"]
        zone["1.0.0.127.in-addr.arpa"] = {"PTR": ["mx.example.com"]}
        _, port = self.serve(zone)
        code, out = await self.check(port)
        self.assertIn("a/aaaa     example.com: ok: mx.example.com is 127.0.0.1", out)
        self.assertIn("spf        example.com: ok: 127.0.0.1 for example.com: pass", out)
        self.assertIn("ptr        example.com: ok: 127.0.0.1 is mx.example.com", out)
        self.assertIn("dkim       no keys", out)
        self.assertEqual(code, 0, out)

    async def test_wrong_and_missing_records_are_named(self) -> None:
        zone = {
            "example.com": {
                "MX": [(10, "mx.elsewhere.example")],
                "TXT": ["v=spf1 ip4:198.51.100.1 -all"],
            },
            "mx.elsewhere.example": {"A": ["198.51.100.1"]},
            "mx.example.com": {"A": [SENDING_IP]},
            "10.2.0.192.in-addr.arpa": {"PTR": ["host-10.provider.example"]},
        }
        _, port = self.serve(zone)
        code, out = await self.check(port, "--ip", SENDING_IP)
        self.assertEqual(code, 1)
        self.assertIn(
            "mx         example.com: problem: example.com MX 10 mx.elsewhere.example: none of "
            "them is mx.example.com",
            out,
        )
        self.assertIn(f"spf        example.com: problem: {SENDING_IP} for example.com: fail", out)
        self.assertIn("spf (helo) example.com: advice:", out)  # no SPF for the HELO name
        self.assertIn("dmarc      example.com: problem: no DMARC record at _dmarc.example.com", out)
        self.assertIn('publish _dmarc.example.com. IN TXT "v=DMARC1; p=none;', out)
        self.assertIn(
            f"ptr        example.com: problem: {SENDING_IP}: host-10.provider.example, not "
            "mx.example.com",
            out,
        )

    async def test_null_mx_and_a_silent_server(self) -> None:
        dns, port = self.serve({"example.com": {"MX": [(0, ".")]}, "mx.example.com": {}})
        dns.authority.silent.add("_dmarc.example.com")
        code, out = await self.check(port, "--ip", SENDING_IP)
        self.assertEqual(code, 1)
        self.assertIn("null MX (RFC 7505)", out)
        self.assertIn("dmarc      example.com: temperror:", out)
