"""The dev stack judges what an app sends and shows it: a message submitted with AUTH is signed
(the dev stack's own DKIM key), judged as a receiver would see it, and the web API explains the
results under [checks] authserv_id (a local DNS server answers; nothing asks the world).

Where the dev stack's view differs from a receiver's, the results say so without lying: a key
whose record is not published (or another key is) gives the DKIM result DNS gives, and the
reason adds what a receiver will find once the record ``mailhub dkim show`` prints is published;
SPF judges ``[checks] dev_sending_ip`` (where production mail leaves from) instead of the app's
127.0.0.1, and without it says that SPF means nothing for mail from 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailhub.checks.keys import ED25519_SHA256
from mailhub.config import ChecksConfig
from tests.support.dkim import make_keys, records
from tests.support.localdns import LocalDNS
from tests.support.web import WebTestCase

AUTHSERV = "dev.mailhub.test"


class DevStackShowsTheResults(WebTestCase):
    services = ("smtp", "submission", "web")

    def zone(self, zone: dict[str, dict[str, Any]]) -> LocalDNS:
        dns = LocalDNS(zone)
        dns.start()
        self.addCleanup(dns.stop)
        return dns

    async def start_with(self, dns: LocalDNS, data: Path, **checks: Any) -> None:
        assert dns.port is not None
        config = ChecksConfig(
            nameservers=(("127.0.0.1", dns.port.getHost().port),), authserv_id=AUTHSERV, **checks
        )
        await self.start(checks=config, data_dir=data)

    async def submit(self, **kw: Any) -> dict[str, Any]:
        """alice's app submits one message (AUTH on 1587's stand-in); its explained results."""
        sent = await self.hub.send(
            "someone@example.com",
            sender="app@app.test",
            subject="signed by the dev stack",
            port="submission",
            login=("app@app.test", "any"),
            **kw,
        )
        self.assertEqual(sent, {})
        return await self.authentication()

    async def authentication(self) -> dict[str, Any]:
        message_id = await self.only_id()
        detail = await self.get(f"/api/v1/messages/{message_id}")
        auth: dict[str, Any] = detail["authentication"]
        self.assertTrue(auth["checked"], auth)
        self.assertEqual(auth["authserv_id"], AUTHSERV)
        return auth

    def header(self) -> str:
        [delivered] = self.hub.messages()
        value = " ".join(str(delivered.message["Authentication-Results"]).split())
        self.assertTrue(value.startswith(AUTHSERV), value)
        return value

    async def test_submitted_mail_signed_judged_and_explained(self) -> None:
        dns = self.zone({"_dmarc.app.test": {"TXT": ["v=DMARC1; p=reject"]}})
        data = Path(self.mktemp()).absolute()
        for name, value in records(make_keys(data / "dkim", "app.test")).items():
            dns.authority.zone[name] = {"TXT": [value]}
        await self.start_with(dns, data)
        auth = await self.submit()
        self.assertEqual([s["result"] for s in auth["dkim"]], ["pass", "pass"])
        self.assertEqual(auth["dmarc"]["result"], "pass")
        for signature in auth["dkim"]:
            self.assertNotIn("as a receiver would see it", signature["why"])

    async def test_unpublished_keys_would_pass_once_published(self) -> None:
        # The dev keys are not in DNS (as usual): the header says what DNS gave (permerror),
        # the reason what a receiver will see once `mailhub dkim show` is published.
        dns = self.zone({"_dmarc.app.test": {"TXT": ["v=DMARC1; p=reject"]}})
        data = Path(self.mktemp()).absolute()
        keys = make_keys(data / "dkim", "app.test")
        await self.start_with(dns, data)
        auth = await self.submit()
        self.assertEqual([s["result"] for s in auth["dkim"]], ["permerror", "permerror"])
        by_selector = {s["selector"]: s["why"] for s in auth["dkim"]}
        for key in keys:
            why = by_selector[key.key.selector]
            self.assertIn("key record not found", why)
            self.assertIn(
                "would pass once the record `mailhub dkim show app.test` prints is published at "
                f"{key.record_name} (nothing is published there yet)",
                why,
            )
        # DMARC: fails now (p=reject: the dev note says a receiver would refuse it), and says it
        # would pass with the records published.
        self.assertEqual(auth["dmarc"]["result"], "fail")
        self.assertIn("would refuse it (550 5.7.1)", auth["dmarc"]["why"])
        self.assertIn("once the DKIM records above are published: dmarc=pass", auth["dmarc"]["why"])
        header = self.header()
        self.assertEqual(header.count("dkim=permerror"), 2, header)
        self.assertIn("dmarc=fail", header)
        self.assertNotIn("dkim=pass", header)

    async def test_a_published_record_of_another_key_is_named(self) -> None:
        dns = self.zone({})
        data = Path(self.mktemp()).absolute()
        [key] = make_keys(data / "dkim", "app.test", algorithms=(ED25519_SHA256,))
        [other] = make_keys(
            Path(self.mktemp()).absolute(), "app.test", algorithms=(ED25519_SHA256,)
        )
        self.assertEqual(key.record_name, other.record_name)
        dns.authority.zone[key.record_name] = {"TXT": [other.record]}
        await self.start_with(dns, data)
        auth = await self.submit()
        [signature] = auth["dkim"]
        self.assertEqual(signature["result"], "fail")  # what a receiver sees today
        self.assertIn(
            f"would pass once the record `mailhub dkim show app.test` prints is published at "
            f"{key.record_name} (what is published there does not match: p= is another key than "
            "this selector's key file)",
            signature["why"],
        )
        # No DMARC record: nothing would change there, so nothing is added.
        self.assertNotIn("as a receiver would see it", auth["dmarc"]["why"])

    async def test_spf_from_127_0_0_1_is_not_meaningful_without_dev_sending_ip(self) -> None:
        # An app on 127.0.0.1 hands mail to the dev stack's SMTP port without AUTH. The domain
        # says -all: judged on 127.0.0.1 that would be a fail of no meaning.
        dns = self.zone({"app.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]}})
        await self.start_with(dns, Path(self.mktemp()).absolute())
        self.assertEqual(await self.hub.send("someone@example.com", sender="app@app.test"), {})
        auth = await self.authentication()
        self.assertEqual(auth["spf"]["result"], "none")
        self.assertEqual(
            auth["spf"]["why"],
            "SPF not meaningful for mail from 127.0.0.1; set [checks] dev_sending_ip (the "
            "address production mail leaves from)",
        )
        self.assertNotIn(("app.test", "TXT"), dns.authority.queries)  # nothing was asked
        self.assertIn("spf=none", self.header())

    async def test_spf_judges_dev_sending_ip(self) -> None:
        dns = self.zone({"app.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]}})
        await self.start_with(dns, Path(self.mktemp()).absolute(), dev_sending_ip="192.0.2.10")
        self.assertEqual(await self.hub.send("someone@example.com", sender="app@app.test"), {})
        auth = await self.authentication()
        self.assertEqual(auth["spf"]["result"], "pass")
        self.assertIn(
            "judged for 192.0.2.10 ([checks] dev_sending_ip, where production mail leaves "
            "from), not for the client 127.0.0.1",
            auth["spf"]["why"],
        )

    async def test_submission_is_judged_for_dev_sending_ip(self) -> None:
        # Production mail leaves from an address the record does not name: a receiver would
        # refuse it (-all); the dev stack records it and says so.
        dns = self.zone({"app.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]}})
        await self.start_with(dns, Path(self.mktemp()).absolute(), dev_sending_ip="192.0.2.99")
        auth = await self.submit()
        self.assertEqual(auth["spf"]["result"], "fail")
        self.assertIn("192.0.2.99", auth["spf"]["why"])
        self.assertIn("would refuse it (550 5.7.23)", auth["spf"]["why"])
        self.assertEqual(len(self.hub.messages()), 1)  # recorded, never refused

    async def test_submission_without_dev_sending_ip_says_how_to_see_spf(self) -> None:
        dns = self.zone({})
        await self.start_with(dns, Path(self.mktemp()).absolute())
        auth = await self.submit()
        self.assertEqual(auth["spf"]["result"], "none")
        self.assertIn("authenticated submission", auth["spf"]["why"])
        self.assertIn("set [checks] dev_sending_ip", auth["spf"]["why"])
