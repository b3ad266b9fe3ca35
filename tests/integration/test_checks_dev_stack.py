"""The dev stack judges what an app sends and shows it: a message submitted with AUTH is signed
(the dev stack's own DKIM key), judged as a receiver would see it, and the web API explains the
results under [checks] authserv_id (a local DNS server answers; nothing asks the world)."""

from __future__ import annotations

from pathlib import Path

from mailhub.config import ChecksConfig
from tests.support.dkim import make_keys, records
from tests.support.localdns import LocalDNS
from tests.support.web import WebTestCase


class DevStackShowsTheResults(WebTestCase):
    services = ("smtp", "submission", "web")

    async def test_submitted_mail_signed_judged_and_explained(self) -> None:
        dns = LocalDNS({"_dmarc.app.test": {"TXT": ["v=DMARC1; p=reject"]}})
        dns.start()
        self.addCleanup(dns.stop)
        assert dns.port is not None
        data = Path(self.mktemp()).absolute()
        for name, value in records(make_keys(data / "dkim", "app.test")).items():
            dns.authority.zone[name] = {"TXT": [value]}
        checks = ChecksConfig(
            nameservers=(("127.0.0.1", dns.port.getHost().port),), authserv_id="dev.mailhub.test"
        )
        await self.start(checks=checks, data_dir=data)
        sent = await self.hub.send(
            "someone@example.com",
            sender="app@app.test",
            subject="signed by the dev stack",
            port="submission",
            login=("app@app.test", "any"),
        )
        self.assertEqual(sent, {})
        message_id = await self.only_id()
        detail = await self.get(f"/api/v1/messages/{message_id}")
        auth = detail["authentication"]
        self.assertTrue(auth["checked"], auth)
        self.assertEqual(auth["authserv_id"], "dev.mailhub.test")
        self.assertEqual([s["result"] for s in auth["dkim"]], ["pass", "pass"])
        self.assertEqual(auth["dmarc"]["result"], "pass")
