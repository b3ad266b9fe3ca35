"""The deliverability lab's pieces (issue 15): HTML compatibility from caniemail's data, links
and their checking, one-time codes, the bulk-sender checklist. The link checker talks to a
twisted.web server on 127.0.0.1 (port 0); no test reaches the network."""

from __future__ import annotations

import json
from email.message import EmailMessage
from importlib import resources
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server

from mailhub.checks.explain import explain_message
from mailhub.testing import CodeNotFound, Delivered
from mailhub.web import checklist, codes, compat, links, parse
from mailhub.web.lab import analyse

NEWSLETTER = """<!doctype html>
<html><head><meta name="color-scheme" content="light dark">
<style>
  /* dark mode */
  @media (prefers-color-scheme: dark) { .card { background-color: #111 !important } }
  .row > .col:hover { display: flex; gap: 8px; border-top-left-radius: 4px }
  @font-face { font-family: Brand; src: url(https://cdn.example/brand.woff2) }
  :root { --brand: rgb(10, 20, 30) }
</style></head>
<body><div class="card" style="position: absolute; top: 0; width: calc(100% - 2rem)">
<svg width="10" height="10"></svg>
<a href="https://shop.example/sale?utm=1">Big <b>sale</b></a>
<a href="https://shop.example/unsub"><img src="https://cdn.example/x.webp" alt="Unsubscribe"></a>
<img src="https://cdn.example/hero.png" srcset="https://cdn.example/hero@2x.png 2x" alt="Hero">
</div></body></html>
"""


class Compatibility(SynchronousTestCase):
    def test_features_found_by_a_real_parse(self) -> None:
        found = compat.detect(NEWSLETTER).counts
        for slug in (
            "html-doctype",
            "html-meta-color-scheme",
            "html-svg",
            "html-srcset",
            "image-webp",
            "image-png",
            "css-comments",
            "css-at-media",
            "css-at-media-prefers-color-scheme",
            "css-important",
            "css-selector-child",
            "css-pseudo-class-hover",
            "css-display-flex",
            "css-gap",
            "css-border-radius",
            "css-at-font-face",
            "css-variables",
            "css-rgb",
            "css-position",
            "css-left-right-top-bottom",
            "css-unit-calc",
            "css-unit-rem",
            "css-unit-percent",
        ):
            self.assertIn(slug, found)
        # Not there: no grid, no <video>, and :hover is not read as a pseudo-element.
        for slug in ("css-display-grid", "html-video", "css-nesting"):
            self.assertNotIn(slug, found)
        # Text that looks like CSS is not CSS: no feature from a paragraph's words.
        words = compat.detect("<p>display: grid; @media print</p>").counts
        self.assertNotIn("css-display-grid", words)
        self.assertNotIn("css-at-media", words)

    def test_report_per_client_from_caniemails_data(self) -> None:
        report = compat.report(NEWSLETTER)
        data = compat.data()
        self.assertEqual(data.clients["outlook.windows"], "Outlook Windows")
        by_id = {c["id"]: c for c in report["clients"]}
        # caniemail: Outlook on Windows (Word engine) does not do flexbox or SVG.
        self.assertEqual(data.features["css-display-flex"].support["outlook.windows"], "n")
        self.assertIn("css-display-flex", by_id["outlook.windows"]["unsupported"])
        self.assertIn("html-svg", by_id["outlook.windows"]["unsupported"])
        # Apple Mail on macOS supports display:flex; it is not held against it.
        self.assertNotIn("css-display-flex", by_id["apple-mail.macos"]["unsupported"])
        # The big four first, Gmail leading.
        families = [c["id"].split(".")[0] for c in report["clients"]]
        self.assertEqual(families[0], "gmail")
        self.assertLess(families.index("yahoo"), families.index("aol"))
        flex = next(f for f in report["features"] if f["slug"] == "css-display-flex")
        self.assertIn("Outlook Windows", flex["unsupported"])
        self.assertTrue(flex["url"].startswith("https://www.caniemail.com/"))
        self.assertGreater(report["score"], 0)
        self.assertLess(report["score"], 100)
        self.assertLess(by_id["outlook.windows"]["score"], by_id["apple-mail.macos"]["score"])
        self.assertFalse(report["truncated"])
        self.assertIn("MIT", report["data"]["licence"])

    def test_plain_html_scores_higher_than_modern_css(self) -> None:
        plain = compat.report('<table width="100%"><tr><td align="center">Hi</td></tr></table>')
        self.assertGreater(plain["score"], compat.report(NEWSLETTER)["score"])

    def test_licence_and_attribution_beside_the_data(self) -> None:
        folder = resources.files("mailhub.web").joinpath("data")
        licence = folder.joinpath("caniemail.LICENSE").read_text("utf-8")
        self.assertIn("MIT License", licence)
        self.assertIn("HTeuMeuLeu", licence)  # caniemail.com's own notice
        self.assertIn("Andrew Powell", licence)  # the npm package's
        raw = json.loads(folder.joinpath("caniemail.json").read_text("utf-8"))
        self.assertIn("caniemail", raw["source"])
        # Trimmed to what the scan can find: every feature kept is one it knows.
        self.assertLessEqual(set(raw["features"]), compat.known_slugs())
        for feature in raw["features"].values():
            self.assertEqual(len(feature["support"]), len(raw["clients"]))

    def test_broken_and_huge_input_is_bounded(self) -> None:
        for html in (
            "<div <p style='color: red; { } ;;; :::'><style>@media {{{ .a { b: c",
            "<style>" + "}" * 5000 + "{" * 5000 + "</style>",
            "<![CDATA[ <svg",
            "\x00<a href='\x00'>",
        ):
            report = compat.report(html)
            self.assertIsInstance(report["features"], list)
        huge_css = "<style>" + ".a{color:red;padding:1px}" * 30_000 + "</style><div>x</div>"
        report = compat.report(huge_css)
        self.assertTrue(report["truncated"])  # past MAX_CSS: said
        self.assertIn("css-padding", {f["slug"] for f in report["features"]})
        cut = compat.report("<style>.a{padding:1px}" * 200_000)  # past MAX_HTML, in a <style>
        self.assertTrue(cut["truncated"])
        self.assertIn("css-padding", {f["slug"] for f in cut["features"]})
        many_tags = "<span>" * (compat.MAX_TAGS + 10)
        self.assertTrue(compat.report(many_tags)["truncated"])


class Extraction(SynchronousTestCase):
    def test_links_with_anchor_text_from_both_parts(self) -> None:
        text = "Confirm at https://app.example/confirm?t=1. Or www.example.org/help, thanks\n"
        found = links.extract(text, NEWSLETTER)
        got = [(link.url, link.text, link.kind, link.part) for link in found.links]
        self.assertIn(("https://shop.example/sale?utm=1", "Big sale", "link", "html"), got)
        # An image-only link takes the image's alt text.
        self.assertIn(("https://shop.example/unsub", "Unsubscribe", "link", "html"), got)
        self.assertIn(("https://cdn.example/hero.png", "Hero", "image", "html"), got)
        self.assertIn(("https://cdn.example/hero@2x.png", "", "image", "html"), got)
        self.assertIn(("https://cdn.example/brand.woff2", "", "image", "html"), got)  # CSS url()
        self.assertIn(("https://app.example/confirm?t=1", "", "link", "text"), got)
        self.assertIn(("http://www.example.org/help", "", "link", "text"), got)
        self.assertEqual(found.total, len(found.links))

    def test_ten_thousand_links_are_counted_and_capped(self) -> None:
        html = "".join(f'<a href="https://e.example/{n}">n{n}</a>' for n in range(10_000))
        found = links.extract("", html).json()
        self.assertEqual(found["total"], 10_000)
        self.assertEqual(found["listed"], links.MAX_LINKS)
        self.assertTrue(found["truncated"])
        self.assertEqual(found["links"][-1]["text"], f"n{links.MAX_LINKS - 1}")

    def test_unclosed_anchor_and_garbage(self) -> None:
        found = links.extract("", '<a href="https://x.example/">never closed <b>bold')
        self.assertEqual(
            [(x.url, x.text) for x in found.links], [("https://x.example/", "never closed bold")]
        )
        self.assertEqual(links.extract("", "<a href=>\x00<img src>").total, 0)


class Codes(SynchronousTestCase):
    def codes(self, text: str, subject: str = "", html: str = "") -> list[str]:
        return [c.code for c in codes.find_codes(subject, text, html)]

    def test_codes_near_their_words(self) -> None:
        self.assertEqual(self.codes("Your verification code is 482913."), ["482913"])
        self.assertEqual(self.codes("Ihr Bestätigungscode lautet: 7391"), ["7391"])
        self.assertEqual(self.codes("123 456 is your one-time passcode"), ["123456"])
        self.assertEqual(self.codes("Use this token to sign in: A7K-29Q"), ["A7K29Q"])
        self.assertEqual(self.codes("", subject="738201 is your Acme login code"), ["738201"])
        self.assertEqual(self.codes("Your PIN: 0042"), ["0042"])
        html = (
            "<html><head><style>.code { color: #123456 }</style></head><body>"
            "<p>Verification code</p><p><b>662211</b></p></body></html>"
        )
        self.assertEqual(self.codes("", html=html), ["662211"])
        found = codes.find_codes("", "Your code is 482913.", "")[0]
        self.assertEqual((found.source, found.kind, found.keyword), ("text", "numeric", "code"))
        self.assertIn("Your code is 482913", found.context)

    def test_not_codes(self) -> None:
        for text in (
            "Your code expires in 2025.",  # a year
            "Your code, valid until 15.01.2026 10:30, follows.",  # date and time
            "Code of conduct: call +1 555 123 4567 or tel. 0800 123456.",  # phone numbers
            "Order #55123 with promo code, total $1299 or 4999 EUR.",  # order number, prices
            "Verify at https://app.example/verify?code=999999 or 654321@example.com",  # in URLs
            "Your invoice 20240115 is attached. Thanks for your order.",  # no code word near
            "The code is: 12.50 per month",  # a price with decimals
            "Postal code 94103, San Francisco",  # the other codes of mail
            "Use promo code SAVE20 at checkout",
            "Error code 5001: try again",
            "Scan the QR code: A1B2C3",
        ):
            self.assertEqual(self.codes(text), [], text)

    def test_testing_helpers(self) -> None:
        msg = EmailMessage()
        msg["Subject"] = "Welcome"
        msg.set_content("Your code is 991823. Or click https://app.example/confirm\n")
        delivered = Delivered("a@example.com", "INBOX", 1, "k", 0, msg.as_bytes())
        self.assertEqual(delivered.code, "991823")
        self.assertEqual([x.url for x in delivered.links()], ["https://app.example/confirm"])
        plain = EmailMessage()
        plain.set_content("Nothing to see\n")
        nothing = Delivered("a@example.com", "INBOX", 2, "k2", 0, plain.as_bytes())
        self.assertRaises(CodeNotFound, lambda: nothing.code)


def _bulk_message(**changes: Any) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "News <news@example.com>"
    msg["To"] = "a@example.org"
    msg["Subject"] = "News"
    msg["Date"] = "Mon, 07 Dec 2026 00:00:00 +0000"
    msg["Message-ID"] = "<n1@example.com>"
    msg["List-Unsubscribe"] = "<https://example.com/u/1>, <mailto:u@example.com>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["DKIM-Signature"] = (
        "v=1; a=rsa-sha256; d=example.com; s=s1; h=from:to:subject:date:message-id:"
        "list-unsubscribe:list-unsubscribe-post; bh=x; b=y"
    )
    msg["Authentication-Results"] = (
        "mx.test; spf=pass smtp.mailfrom=example.com; dkim=pass header.d=example.com "
        "header.s=s1; dmarc=pass header.from=example.com policy.dmarc=none"
    )
    for name, value in changes.items():
        name = name.replace("_", "-")
        del msg[name]
        if value is not None:
            msg[name] = value
    msg.set_content("Hello\n")
    msg.add_alternative("<p>Hello</p>", subtype="html")
    return msg


class Checklist(SynchronousTestCase):
    def check(self, msg: EmailMessage) -> dict[str, str]:
        raw = msg.as_bytes()
        parsed = parse.load(raw)
        d = parse.detail(parsed)
        auth = explain_message(parsed.raw_items(), "mx.test")
        result = checklist.checklist(parsed, auth, d.text, d.html)
        return {i["id"]: i["status"] for i in result["items"]}

    def test_a_good_bulk_message_passes_every_item(self) -> None:
        self.assertEqual(set(self.check(_bulk_message()).values()), {"pass"})

    def test_each_failure_named(self) -> None:
        self.assertEqual(
            self.check(_bulk_message(List_Unsubscribe_Post=None))["one_click_unsubscribe"], "fail"
        )
        self.assertEqual(
            self.check(_bulk_message(List_Unsubscribe="<mailto:u@example.com>"))[
                "one_click_unsubscribe"
            ],
            "fail",
        )
        unsigned = _bulk_message(DKIM_Signature="v=1; d=example.com; h=from:subject; b=y")
        self.assertEqual(self.check(unsigned)["one_click_unsubscribe"], "fail")
        self.assertEqual(
            self.check(_bulk_message(DKIM_Signature=None))["one_click_unsubscribe"], "warn"
        )
        failing = _bulk_message(
            Authentication_Results="mx.test; spf=fail smtp.mailfrom=x.net; dkim=fail "
            "header.d=x.net; dmarc=fail header.from=example.com policy.dmarc=reject"
        )
        got = self.check(failing)
        self.assertEqual((got["spf_or_dkim"], got["dmarc"]), ("fail", "fail"))
        someone_else = _bulk_message(Authentication_Results="other.example; spf=pass")
        self.assertEqual(self.check(someone_else)["dmarc"], "unknown")  # not our field: unknown
        self.assertEqual(self.check(_bulk_message(Date="yesterday"))["date"], "fail")
        self.assertEqual(
            self.check(_bulk_message(Message_ID="n1-no-brackets"))["message_id"], "fail"
        )
        self.assertEqual(self.check(_bulk_message(From=None))["from"], "fail")

    def test_html_only_and_clipped(self) -> None:
        msg = EmailMessage()
        for name, value in _bulk_message().items():
            if not name.lower().startswith(("content-", "mime-")):
                msg[name] = value
        msg.set_content("<p>" + "x" * (checklist.GMAIL_CLIP + 10) + "</p>", subtype="html")
        got = self.check(msg)
        self.assertEqual((got["text_part"], got["html_size"]), ("fail", "fail"))

    def test_analyse_puts_it_together_and_survives_garbage(self) -> None:
        out = analyse(_bulk_message().as_bytes(), "mx.test", frozenset(("checklist", "codes")))
        self.assertTrue(out["checklist"]["passed"])
        self.assertIsNone(out["codes"]["code"])
        junk = b"\xff\xfe garbage\r\n\r\n<html><a href=https://x.example/>x"
        out = analyse(junk, None, frozenset(("compatibility", "checklist", "links", "codes")))
        self.assertEqual(set(out), {"compatibility", "checklist", "links", "codes"})


# --- checking against a local server -----------------------------------------------------------


class _Site(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hosts: list[bytes] = []
        self.methods: list[bytes] = []
        self.slow_arrived: defer.Deferred[None] = defer.Deferred()

    def render(self, request: Any) -> Any:
        self.hosts.append(request.getHeader(b"host") or b"")
        self.methods.append(request.method)
        path = request.path
        if path == b"/ok":
            return b""
        if path == b"/moved":
            request.setResponseCode(302)
            request.setHeader(b"location", b"/ok")
            return b""
        if path == b"/loop":
            request.setResponseCode(301)
            request.setHeader(b"location", b"/loop")
            return b""
        if path == b"/no-head" and request.method == b"HEAD":
            request.setResponseCode(405)
            return b""
        if path == b"/no-head":
            return b"x" * 100_000  # a body the checker must not wait for
        if path == b"/slow":
            if not self.slow_arrived.called:
                self.slow_arrived.callback(None)
            return server.NOT_DONE_YET
        request.setResponseCode(404)
        return b"missing"


class Checking(TestCase):
    def setUp(self) -> None:
        self.site = _Site()
        factory = server.Site(self.site)
        factory.displayTracebacks = False
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    def checker(self, **kwargs: Any) -> links.LinkChecker:
        return links.LinkChecker(reactor, **kwargs)

    async def test_statuses_redirects_and_head_refused(self) -> None:
        checker = self.checker(allow_private=True)
        ok = await checker.check(f"{self.base}/ok")
        self.assertEqual((ok.result, ok.status), ("ok", 200))
        missing = await checker.check(f"{self.base}/gone")
        self.assertEqual((missing.result, missing.status), ("broken", 404))
        moved = await checker.check(f"{self.base}/moved")
        self.assertEqual(
            (moved.result, moved.status, moved.final_url), ("ok", 200, f"{self.base}/ok")
        )
        self.assertEqual(moved.redirects, [{"status": 302, "location": f"{self.base}/ok"}])
        loop = await checker.check(f"{self.base}/loop")
        self.assertEqual(loop.result, "error")
        self.assertIn("redirects", loop.reason)
        self.site.methods.clear()
        no_head = await checker.check(f"{self.base}/no-head")
        self.assertEqual((no_head.result, no_head.status), ("ok", 200))
        self.assertEqual(self.site.methods, [b"HEAD", b"GET"])

    async def test_loopback_and_private_targets_refused_by_default(self) -> None:
        checker = self.checker()
        for url in (
            f"{self.base}/ok",
            f"http://localhost:{self.port.getHost().port}/ok",
            "http://app.localhost/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
        ):
            result = await checker.check(url)
            self.assertEqual(result.result, "refused", url)
        self.assertEqual(self.site.hosts, [])  # nothing reached the server

    async def test_a_name_resolving_to_loopback_is_refused(self) -> None:
        asked: list[str] = []

        def resolve(host: str, port: int) -> defer.Deferred[list[str]]:
            asked.append(host)
            return defer.succeed(["127.0.0.1"])

        result = await self.checker(resolve=resolve).check("http://rebind.example/ok")
        self.assertEqual(result.result, "refused")
        self.assertIn("127.0.0.1", result.reason)
        self.assertEqual(asked, ["rebind.example"])
        mixed = await self.checker(
            resolve=lambda h, p: defer.succeed(["8.8.8.8", "10.0.0.1"])
        ).check("http://mixed.example/")
        self.assertEqual(mixed.result, "refused")  # one bad address is enough

    async def test_the_connection_goes_to_the_address_checked(self) -> None:
        """DNS rebinding: the name is resolved once; the connection goes to that address even
        if the name now resolves elsewhere, and the Host header stays the URL's."""
        answers = [["8.8.8.8"], ["127.0.0.1"]]
        connected: list[str] = []

        def resolve(host: str, port: int) -> defer.Deferred[list[str]]:
            return defer.succeed(answers.pop(0))

        class Refusing:
            def connect(self, factory: Any) -> defer.Deferred[Any]:
                return defer.fail(ConnectionRefusedError())

        def endpoint(pinned: Any, uri: Any) -> Any:
            connected.append(pinned.address)
            return Refusing()

        self.patch(links._Pinned, "endpointForURI", endpoint)
        result = await self.checker(resolve=resolve).check("http://rebind.example/")
        self.assertEqual(connected, ["8.8.8.8"])
        self.assertEqual(answers, [["127.0.0.1"]])  # asked once
        self.assertEqual(result.result, "error")

    async def test_host_header_is_the_urls_with_the_pinned_address(self) -> None:
        port = self.port.getHost().port
        checker = self.checker(
            allow_private=True, resolve=lambda h, p: defer.succeed(["127.0.0.1"])
        )
        result = await checker.check(f"http://app.test:{port}/ok")
        self.assertEqual(result.result, "ok")
        self.assertEqual(self.site.hosts, [f"app.test:{port}".encode()])
        idn = await checker.check(f"http://bücher.test:{port}/ok")  # an IRI: sent as its URI
        self.assertEqual(idn.result, "ok")
        self.assertEqual(self.site.hosts[-1], f"xn--bcher-kva.test:{port}".encode())

    async def test_timeout_on_the_injected_clock(self) -> None:
        clock = task.Clock()
        checker = self.checker(allow_private=True, clock=clock, timeout=5)
        pending = defer.Deferred.fromCoroutine(checker.check(f"{self.base}/slow"))
        await self.site.slow_arrived
        self.assertNoResult(pending)
        clock.advance(5)
        result = await pending
        self.assertEqual(result.result, "error")
        self.assertEqual(result.reason, "no answer in time")

    async def test_a_lookup_that_never_answers_times_out(self) -> None:
        clock = task.Clock()
        lookup: defer.Deferred[list[str]] = defer.Deferred()
        checker = self.checker(clock=clock, timeout=5, resolve=lambda h, p: lookup)
        pending = defer.Deferred.fromCoroutine(checker.check("http://slow-dns.example/"))
        self.assertNoResult(pending)
        clock.advance(5)
        result = self.successResultOf(pending)
        self.assertEqual((result.result, result.reason), ("error", "no answer in time"))

    async def test_check_all_is_capped_and_skips_other_schemes(self) -> None:
        self.patch(links, "MAX_CHECK", 2)
        report = await self.checker(allow_private=True).check_all(
            [
                f"{self.base}/ok",
                f"{self.base}/ok",
                f"{self.base}/gone",
                f"{self.base}/x",
                "mailto:a@b",
            ]
        )
        self.assertEqual([r["status"] for r in report["checked"]], [200, 404])
        self.assertEqual(report["skipped"], 2)  # /x over the cap, mailto: not http
        self.assertEqual(report["limit"], 2)

    def test_allowed_addresses(self) -> None:
        self.assertTrue(links.allowed_address("93.184.216.34"))
        self.assertTrue(links.allowed_address("2606:2800:220:1::1"))
        for address in (
            "127.0.0.1",
            "::1",
            "::ffff:10.0.0.1",
            "192.168.1.1",
            "fe80::1%eth0",
            "224.0.0.1",
            "junk",
        ):
            self.assertFalse(links.allowed_address(address), address)


class Bounds(TestCase):
    # Not a measurement: the quadratic patterns these inputs once met take hours on them
    # (200,000 characters: ~2e10 steps), the linear ones milliseconds; trial's timeout is only
    # what ends a regression instead of a hang.
    timeout = 120

    def test_inputs_that_made_regular_expressions_quadratic(self) -> None:
        """A long run of word characters (adjacent anchors' texts, a long CSS word)."""
        adjacent = "".join(f"<a href='https://e.example/{n}'>n{n}</a>" for n in range(20_000))
        self.assertEqual(codes.find_codes("", "", adjacent), [])
        self.assertEqual(codes._URLS.findall("a" * 200_000 + "@"), [])
        found = compat.detect("<p style='x: " + "a" * 200_000 + "(1)'>x</p>")
        self.assertNotIn("css-unit-calc", found.counts)

    def test_links_of_huge_html_are_bounded_and_say_so(self) -> None:
        html = "<a href='https://e.example/'>x</a>" + "<div>" * (links.MAX_HTML // 5)
        found = links.extract("", html)
        self.assertTrue(found.html_truncated)
        self.assertEqual(found.total, 1)


class Deadline(TestCase):
    async def test_no_request_starts_after_the_deadline(self) -> None:
        clock = task.Clock()
        requests: list[str] = []

        async def slow_redirect(url: str) -> tuple[int, str | None]:
            requests.append(url)
            clock.advance(links.DEADLINE)  # this request takes all the time there is
            return 302, url + "next"

        checker = links.LinkChecker(reactor, clock=clock, allow_private=True)
        self.patch(links, "CONCURRENCY", 1)
        self.patch(checker, "_request", slow_redirect)
        report = await checker.check_all(["http://a.test/", "http://b.test/"])
        self.assertEqual(requests, ["http://a.test/"])  # neither the redirect nor b.test
        for r in report["checked"]:
            self.assertIn("were up", r["reason"])
        self.assertEqual(report["deadline"], links.DEADLINE)
