"""The lab's API over real HTTP (issue 15): /checks, /links (checked against a local HTTP server
on 127.0.0.1), /codes, on mail delivered by real SMTP into a whole in-process mailhub."""

from __future__ import annotations

import dataclasses
from email.message import EmailMessage
from typing import Any

from twisted.internet import reactor
from twisted.web import resource, server

from mailhub.web import lab
from tests.support.web import WebTestCase


def signup_mail(link: str, html_links: int = 1) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Acme <hello@acme.example>"
    msg["To"] = "new@example.com"
    msg["Subject"] = "Confirm your address"
    msg["List-Unsubscribe"] = "<https://acme.example/u/1>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(f"Your verification code is 482913.\nOr open {link}\n")
    anchors = "".join(f'<a href="{link}?n={n}">Confirm {n}</a>' for n in range(html_links))
    msg.add_alternative(
        "<html><head><style>.b { display: flex }</style></head><body>"
        f'<p>Your verification code is <b>482913</b>.</p><div class="b">{anchors}</div>'
        "</body></html>",
        subtype="html",
    )
    return msg


class _Target(resource.Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        if request.path == b"/confirm":
            return b"ok"
        request.setResponseCode(404)
        return b"no"


class LabApi(WebTestCase):
    def target(self) -> str:
        port = reactor.listenTCP(0, server.Site(_Target()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    async def start_lab(self, private: bool) -> None:
        from mailhub.config import dev_config

        web = dataclasses.replace(dev_config(self.mktemp()).web, link_check_private=private)
        await self.start(web=web)

    async def test_checks_links_and_codes(self) -> None:
        await self.start_lab(private=False)
        await self.hub.send("new@example.com", message=signup_mail("https://acme.example/confirm"))
        message_id = await self.only_id()
        checks = await self.get(f"/api/v1/messages/{message_id}/checks")
        compat = checks["compatibility"]
        flex = next(f for f in compat["features"] if f["slug"] == "css-display-flex")
        self.assertIn("Outlook Windows", flex["unsupported"])
        self.assertIsInstance(compat["score"], float)
        items = {i["id"]: i["status"] for i in checks["checklist"]["items"]}
        self.assertEqual(items["text_part"], "pass")
        self.assertEqual(items["spf_or_dkim"], "unknown")  # the checks are off in tests
        self.assertEqual(items["one_click_unsubscribe"], "warn")  # fine, but not signed
        self.assertEqual(checks["codes"]["code"], "482913")
        self.assertEqual(checks["links"]["total"], 2)
        links = await self.get(f"/api/v1/messages/{message_id}/links")
        self.assertIsNone(links["check"])  # nothing checked unless asked
        self.assertEqual(
            [(x["url"], x["text"], x["part"]) for x in links["links"]],
            [
                ("https://acme.example/confirm?n=0", "Confirm 0", "html"),
                ("https://acme.example/confirm", "", "text"),
            ],
        )
        codes = await self.get(f"/api/v1/messages/{message_id}/codes")
        self.assertEqual(codes["code"], "482913")
        self.assertIn("verification code is 482913", codes["codes"][0]["context"])
        # The same through mailhub.testing.
        message = await self.hub.wait_for_message(to="new@example.com")
        self.assertEqual(self.hub.code(message), "482913")
        self.assertEqual(self.hub.links(message)[0].text, "Confirm 0")
        # The answers have the shapes openapi.json describes.
        spec = (await self.get("/api/v1/openapi.json"))["components"]["schemas"]
        props = {name: set(spec[name]["properties"]) for name in spec if "properties" in spec[name]}
        self.assertEqual(set(checks), props["Checks"])
        self.assertEqual(set(compat), props["Compatibility"])
        self.assertEqual(set(checks["checklist"]), props["Checklist"])
        self.assertEqual(set(links), props["Links"])
        self.assertEqual(set(checks["links"]), props["Links"] - {"id"})
        self.assertEqual(
            set(links["links"][0]),
            set(spec["Links"]["properties"]["links"]["items"]["properties"]),
        )
        self.assertEqual(set(codes), props["Codes"])
        for path in ("checks", "links", "links/check", "codes"):
            self.assertIn(
                f"/api/v1/messages/{{id}}/{path}", (await self.get("/api/v1/openapi.json"))["paths"]
            )
        # Unknown id, wrong method.
        self.assertEqual((await self.call("GET", "/api/v1/messages/nope/checks")).code, 404)
        wrong = await self.call("GET", f"/api/v1/messages/{message_id}/links/check")
        self.assertEqual(wrong.code, 405)

    async def test_link_check_against_a_local_server(self) -> None:
        await self.start_lab(private=True)
        base = self.target()
        await self.hub.send("new@example.com", message=signup_mail(f"{base}/confirm"))
        message_id = await self.only_id()
        checked = await self.get(f"/api/v1/messages/{message_id}/links?check=1")
        self.assertTrue(checked["check"]["private_allowed"])
        results = {x["url"]: x["check"] for x in checked["links"]}
        self.assertEqual(results[f"{base}/confirm"]["status"], 200)
        self.assertEqual(results[f"{base}/confirm?n=0"]["result"], "ok")
        posted = await self.call(
            "POST",
            f"/api/v1/messages/{message_id}/links/check",
            headers={"Origin": self.base},
        )
        self.assertEqual(posted.code, 200, posted.body)
        self.assertEqual(posted.json["check"]["checked"], 2)

    async def test_loopback_refused_without_the_switch(self) -> None:
        await self.start_lab(private=False)
        base = self.target()
        await self.hub.send("new@example.com", message=signup_mail(f"{base}/confirm"))
        message_id = await self.only_id()
        checked = await self.get(f"/api/v1/messages/{message_id}/links?check=1")
        self.assertFalse(checked["check"]["private_allowed"])
        for link in checked["links"]:
            self.assertEqual(link["check"]["result"], "refused")
            self.assertIn("link_check_private", link["check"]["reason"])

    async def test_ten_thousand_links_answered_bounded_in_a_thread(self) -> None:
        await self.start_lab(private=False)
        await self.hub.send(
            "new@example.com", message=signup_mail("https://acme.example/c", html_links=10_000)
        )
        message_id = await self.only_id()
        threaded: list[int] = []
        real = lab.threads.deferToThread

        def spy(f: Any, *args: Any, **kwargs: Any) -> Any:
            threaded.append(1)
            return real(f, *args, **kwargs)

        self.patch(lab.threads, "deferToThread", spy)
        links = await self.get(f"/api/v1/messages/{message_id}/links")
        self.assertEqual(links["total"], 10_001)
        self.assertEqual(links["listed"], 1000)
        self.assertTrue(links["truncated"])
        checks = await self.get(f"/api/v1/messages/{message_id}/checks")
        self.assertEqual(checks["codes"]["code"], "482913")
        self.assertEqual(threaded, [1, 1])  # the large message was analysed off the reactor

    async def test_text_only_mail_has_no_compatibility_report(self) -> None:
        await self.start_lab(private=False)
        await self.send("new@example.com", subject="plain", body="Your PIN is 5521\n")
        message_id = await self.only_id()
        checks = await self.get(f"/api/v1/messages/{message_id}/checks")
        self.assertIsNone(checks["compatibility"])
        self.assertEqual(checks["codes"]["code"], "5521")
        items = {i["id"]: i["status"] for i in checks["checklist"]["items"]}
        self.assertEqual((items["text_part"], items["html_size"]), ("pass", "pass"))

    async def test_broken_mail_gets_an_answer_not_a_traceback(self) -> None:
        await self.start_lab(private=False)
        raw = (
            b"From: <<<\r\nDate: someday\r\nContent-Type: multipart/alternative; boundary=x\r\n"
            b"\r\n--x\r\nContent-Type: text/html; charset=bogus-8\r\n\r\n"
            b"<div <style>@media {{{ .a{display:grid <a href='https://x.example/'>x\xff\r\n"
        )
        await self.hub.send("new@example.com", message=raw)
        message_id = await self.only_id()
        checks = await self.get(f"/api/v1/messages/{message_id}/checks")
        items = {i["id"]: i["status"] for i in checks["checklist"]["items"]}
        self.assertEqual((items["from"], items["date"], items["message_id"]), ("fail",) * 3)
        self.assertEqual((await self.get(f"/api/v1/messages/{message_id}/codes"))["code"], None)
