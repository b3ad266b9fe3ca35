"""The page's Spam tab in headless Chromium (as test_web_browser.py drives it): a GTUBE message
shows rspamd's score, action and symbols; asked again on demand; a stopped rspamd is said in
words; without [checks] rspamd the tab says how to set it up."""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.internet import threads

from mailhub.config import ChecksConfig
from mailhub.testing import MailhubTestServer
from tests.integration.test_spam_rspamd import GTUBE, message
from tests.integration.test_web_browser import _Browser, _skip
from tests.support.localdns import LocalDNS
from tests.support.rspamd import Rspamd, missing
from tests.support.tools import requires

try:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - _skip() says so
    pass


def _open_spam_tab(driver: Any, url: str, subject: str) -> WebDriverWait:
    driver.get(url)
    wait = WebDriverWait(driver, 30, ignored_exceptions=(StaleElementReferenceException,))

    def open_row(d: Any) -> bool:
        for row in d.find_elements(By.CSS_SELECTOR, "#messages .msg"):
            if subject in row.text:
                row.click()
                return True
        return False

    wait.until(open_row)
    wait.until(ec.text_to_be_present_in_element((By.ID, "subject"), subject))
    driver.find_element(By.CSS_SELECTOR, '.tabs button[data-tab="spam"]').click()
    wait.until(lambda d: d.find_element(By.ID, "spam").is_displayed())
    return wait


@requires(_skip(), missing())
class SpamTab(_Browser):
    timeout = 180

    async def test_score_action_symbols_and_errors(self) -> None:
        dns = LocalDNS({})
        dns.start()
        self.addCleanup(dns.stop)
        rspamd = await Rspamd.started(self, dns.address)
        checks = dataclasses.replace(ChecksConfig(), enabled=False, rspamd=rspamd.url)
        hub = await MailhubTestServer.started(self, services=("smtp", "web"), checks=checks)
        url = f"http://127.0.0.1:{hub.ports['web']}/"
        await hub.send("buyer@example.com", message=message("Test", f"Hi.\n\n{GTUBE}\n"))
        driver = await threads.deferToThread(self.browser)

        def look() -> None:
            wait = _open_spam_tab(driver, url, "Test")
            wait.until(ec.presence_of_element_located((By.ID, "spam-symbols")))
            summary = driver.find_element(By.ID, "spam-summary")
            self.assertIn("reject", summary.text)
            self.assertRegex(summary.text, r"Score \d+\.\d\d / \d+\.\d\d")
            self.assertIn("bad", summary.get_attribute("class"))
            names = [
                td.text for td in driver.find_elements(By.CSS_SELECTOR, "#spam-symbols td.symbol")
            ]
            self.assertIn("GTUBE", names)
            self.assertIn(f"rspamd at {rspamd.url}", driver.find_element(By.ID, "spam").text)
            self.assertIn(
                "rspamd says (smtp_message): Gtube pattern", driver.find_element(By.ID, "spam").text
            )
            self.assertIn("just asked", driver.find_element(By.ID, "spam").text)
            old = driver.find_element(By.ID, "spam-symbols")
            driver.find_element(By.ID, "spam-rescan").click()  # asked again, not the cache
            wait.until(ec.staleness_of(old))
            wait.until(ec.presence_of_element_located((By.ID, "spam-symbols")))
            self.assertIn("just asked", driver.find_element(By.ID, "spam").text)

        await threads.deferToThread(look)
        await rspamd.stop()
        await hub.send("buyer@example.com", message=message("Second", "Hello again.\n"))

        def rspamd_gone() -> None:
            wait = _open_spam_tab(driver, url, "Second")
            wait.until(
                ec.text_to_be_present_in_element((By.ID, "spam-summary"), "refused the connection")
            )
            self.assertIn(
                "error", driver.find_element(By.ID, "spam-summary").get_attribute("class")
            )
            # no script error on the way (the 502 itself is logged by the browser: expected)
            errors = [e for e in driver.get_log("browser") if "502" not in e["message"]]
            self.assertEqual(errors, [])

        await threads.deferToThread(rspamd_gone)


@requires(_skip())
class SpamTabNotConfigured(_Browser):
    async def test_says_how_to_configure(self) -> None:
        hub = await MailhubTestServer.started(self, services=("smtp", "web"))
        url = f"http://127.0.0.1:{hub.ports['web']}/"
        await hub.send("buyer@example.com", subject="Plain")
        driver = await threads.deferToThread(self.browser)

        def look() -> None:
            wait = _open_spam_tab(driver, url, "Plain")
            wait.until(ec.text_to_be_present_in_element((By.ID, "spam-summary"), "[checks] rspamd"))

        await threads.deferToThread(look)
