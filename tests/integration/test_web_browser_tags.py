"""Tags on the page in a real headless browser (as tests/integration/test_web_browser.py):
plus-address and rule tags shown in the list, a tag added and removed in the message view (an
IMAP keyword in the store), a click on a tag lists its messages."""

from __future__ import annotations

from typing import Any

from twisted.internet import threads

from mailhub.config import TagRuleConfig, WebConfig
from mailhub.testing import MailhubTestServer
from tests.integration.test_web_browser import _Browser, _skip
from tests.support.tools import requires

try:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the [test] extra installs it
    pass


@requires(_skip())
class PageTags(_Browser):
    async def test_tags_shown_added_removed_and_filtered(self) -> None:
        rules = (TagRuleConfig(match="subject:invoice", tag="billing"),)
        hub = await MailhubTestServer.started(
            self, services=("smtp", "web"), web=WebConfig(login=False, tags=rules)
        )
        await hub.send("buyer+invoice@example.com", subject="Invoice 9")
        await hub.send("buyer@example.com", subject="Hello there")
        driver = await threads.deferToThread(self.browser)
        url = f"http://127.0.0.1:{hub.ports['web']}/"

        def row_tags(d: Any, subject: str) -> list[str] | None:
            for row in d.find_elements(By.CSS_SELECTOR, "#messages .msg"):
                if subject in row.text:
                    chips = row.find_elements(By.CSS_SELECTOR, ".tag")
                    return [c.get_attribute("data-tag") for c in chips]
            return None

        def in_the_list() -> None:
            driver.get(url)
            wait = WebDriverWait(driver, 15, ignored_exceptions=(StaleElementReferenceException,))
            wait.until(lambda d: row_tags(d, "Invoice 9") == ["billing", "invoice"])
            self.assertEqual(row_tags(driver, "Hello there"), [])
            chip = driver.find_element(By.CSS_SELECTOR, '#messages .tag[data-tag="invoice"]')
            self.assertIn("address", chip.get_attribute("title"))

        await threads.deferToThread(in_the_list)

        def add_a_tag() -> None:
            wait = WebDriverWait(driver, 15, ignored_exceptions=(StaleElementReferenceException,))
            for row in driver.find_elements(By.CSS_SELECTOR, "#messages .msg"):
                if "Hello there" in row.text:
                    row.click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "subject"), "Hello there"))
            box = driver.find_element(By.ID, "tag-input")
            box.send_keys("Follow-Up", Keys.ENTER)
            wait.until(
                lambda d: d.find_elements(By.CSS_SELECTOR, '#tags .tag[data-tag="follow-up"]')
            )
            wait.until(lambda d: row_tags(d, "Hello there") == ["follow-up"])  # the list too

        await threads.deferToThread(add_a_tag)
        folder = hub.service.store.mailbox("buyer@example.com").folder()  # type: ignore[union-attr]
        [info] = [i for i in folder.sync().messages if i.keywords]
        self.assertEqual(info.keywords, {"follow-up"})  # an IMAP keyword in the Maildir

        def remove_it_then_filter() -> None:
            wait = WebDriverWait(driver, 15, ignored_exceptions=(StaleElementReferenceException,))
            driver.find_element(
                By.CSS_SELECTOR, '#tags .tag[data-tag="follow-up"] .tag-remove'
            ).click()
            wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#tags .tag"))
            wait.until(lambda d: row_tags(d, "Hello there") == [])
            # A click on a tag in the list (the message stays open beside it) lists its mail.
            chip = driver.find_element(
                By.CSS_SELECTOR, '#messages .tag[data-tag="billing"] .tag-name'
            )
            chip.click()
            wait.until(lambda d: d.find_element(By.ID, "q").get_attribute("value") == "tag:billing")
            wait.until(lambda d: row_tags(d, "Hello there") is None)
            self.assertEqual(row_tags(driver, "Invoice 9"), ["billing", "invoice"])
            # Rule and address tags have no remove button, in the list or the message view.
            self.assertFalse(driver.find_elements(By.CSS_SELECTOR, ".tag-remove"))
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            self.assertEqual(errors, [])

        await threads.deferToThread(remove_it_then_filter)
        self.assertEqual([i.keywords for i in folder.sync().messages], [frozenset()] * 2)
