"""The lab in the page, in headless Chromium (issue 15): the Checks tab (compatibility score and
clients, the checklist, links checked against a local server, codes) and the HTML previewed at
phone, tablet and desktop widths (the message's own media query answers to the width)."""

from __future__ import annotations

import dataclasses
from email.message import EmailMessage
from typing import Any

from twisted.internet import reactor, threads
from twisted.web import resource, server

from mailhub.config import dev_config
from mailhub.testing import MailhubTestServer
from tests.integration.test_web_browser import _Browser, _skip
from tests.support.tools import requires

try:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the [test] extra installs it
    pass


class _Target(resource.Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        if request.path == b"/ok":
            return b"ok"
        request.setResponseCode(404)
        return b"missing"


def newsletter(base: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Acme <news@acme.example>"
    msg["To"] = "reader@example.com"
    msg["Subject"] = "Sign-in code"
    msg.set_content(f"Your sign-in code is 734021.\nOpen {base}/ok\n")
    msg.add_alternative(
        "<html><head><style>"
        ".cols { display: flex }"
        # (a type selector: the sanitiser keeps no class or id attributes)
        "@media (max-width: 480px) { h2 { display: none } }"
        "</style></head><body>"
        '<div class="cols"><p>Your sign-in code is <b>734021</b></p>'
        f'<a href="{base}/ok">Open the app</a> <a href="{base}/gone">Old page</a></div>'
        "<h2>Only on wide screens</h2>"
        "</body></html>",
        subtype="html",
    )
    return msg


@requires(_skip())
class LabPage(_Browser):
    async def test_checks_tab_and_previews_at_widths(self) -> None:
        target = reactor.listenTCP(0, server.Site(_Target()), interface="127.0.0.1")
        self.addCleanup(target.stopListening)
        base = f"http://127.0.0.1:{target.getHost().port}"
        web = dataclasses.replace(dev_config(self.mktemp()).web, link_check_private=True)
        hub = await MailhubTestServer.started(self, services=("smtp", "web"), web=web)
        await hub.send("reader@example.com", message=newsletter(base))
        url = f"http://127.0.0.1:{hub.ports['web']}/"
        driver = await threads.deferToThread(self.browser)

        def open_message() -> None:
            driver.get(url)
            wait = WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,))

            def clicked(d: Any) -> bool:
                d.find_element(By.CSS_SELECTOR, "#messages .msg").click()
                return True

            wait.until(clicked)
            wait.until(ec.text_to_be_present_in_element((By.ID, "subject"), "Sign-in code"))

        def previews() -> dict[str, Any]:
            wait = WebDriverWait(driver, 20)
            seen: dict[str, Any] = {}
            wait.until(lambda d: d.find_element(By.ID, "widths").is_displayed())
            for label, width in (("Phone", "375"), ("Tablet", "768"), ("Desktop", "")):
                driver.find_element(
                    By.CSS_SELECTOR, f'#widths button[data-width="{width}"]'
                ).click()
                frame = driver.find_element(By.ID, "html")
                if width:
                    wait.until(
                        lambda d, w=width: (
                            d.find_element(By.ID, "html").get_property("clientWidth") == int(w)
                        )
                    )
                driver.switch_to.frame(frame)
                try:
                    wait.until(lambda d: d.find_elements(By.TAG_NAME, "h2"))
                    seen[label] = (
                        driver.execute_script("return window.innerWidth"),
                        driver.find_element(By.TAG_NAME, "h2").is_displayed(),
                    )
                finally:
                    driver.switch_to.default_content()
                pressed = driver.find_element(
                    By.CSS_SELECTOR, f'#widths button[data-width="{width}"]'
                )
                self.assertEqual(pressed.get_attribute("aria-pressed"), "true")
            return seen

        def checks_tab() -> dict[str, Any]:
            wait = WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,))
            driver.find_element(By.CSS_SELECTOR, '.tabs button[data-tab="checks"]').click()
            wait.until(lambda d: d.find_elements(By.ID, "lab-score"))
            self.assertFalse(driver.find_element(By.ID, "widths").is_displayed())
            outlook = driver.find_element(
                By.CSS_SELECTOR, '#lab-clients tr[data-client="outlook.windows"]'
            )
            checklist = {
                li.get_attribute("data-item"): li.text
                for li in driver.find_elements(By.CSS_SELECTOR, "#lab-checklist li")
            }
            codes = driver.find_element(By.ID, "lab-codes").text
            driver.find_element(By.ID, "check-links").click()
            wait.until(
                lambda d: "Checked" in d.find_element(By.CSS_SELECTOR, "#checks .lab-row").text
            )
            rows = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#lab-links tr")]
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            return {
                "score": driver.find_element(By.ID, "lab-score").text,
                "outlook": outlook.text,
                "checklist": checklist,
                "codes": codes,
                "rows": rows,
                "errors": errors,
            }

        await threads.deferToThread(open_message)
        seen = await threads.deferToThread(previews)
        # The frame's viewport is the width chosen; the message's @media (max-width: 480px)
        # hides the h2 on the phone only.
        self.assertEqual(seen["Phone"], (375, False))
        self.assertEqual(seen["Tablet"], (768, True))
        # Desktop: the frame fills the reading pane (here ~650px of a 1280px window).
        self.assertGreater(seen["Desktop"][0], 480)
        self.assertNotIn(seen["Desktop"][0], (375, 768))
        self.assertTrue(seen["Desktop"][1])
        got = await threads.deferToThread(checks_tab)
        self.assertRegex(got["score"], r"^\d+(\.\d)?%")
        self.assertIn("Outlook Windows", got["outlook"])
        self.assertIn("display:flex", got["outlook"])  # caniemail: no flexbox in Word's engine
        self.assertIn("fail", got["checklist"]["one_click_unsubscribe"])
        self.assertIn("pass", got["checklist"]["text_part"])
        self.assertIn("734021", got["codes"])
        ok = next(r for r in got["rows"] if f"{base}/ok" in r and "link" in r)
        gone = next(r for r in got["rows"] if f"{base}/gone" in r)
        self.assertIn("200", ok)
        self.assertIn("404", gone)
        self.assertEqual(got["errors"], [])
