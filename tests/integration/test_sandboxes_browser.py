"""Sandboxes on the page, in a real headless browser: listed by name in their own group, and
choosing one lists its mail only."""

from __future__ import annotations

from typing import Any

from twisted.internet import threads

from mailhub.testing import MailhubTestServer
from tests.integration.test_web_browser import _Browser, _skip
from tests.support.tools import requires

try:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the [test] extra installs it
    pass


@requires(_skip())
class SandboxPage(_Browser):
    async def test_sandboxes_by_name_and_their_mail_alone(self) -> None:
        hub = await MailhubTestServer.started(self, services=("smtp", "web"))
        signup, other = await hub.create_sandbox("signup tests"), await hub.create_sandbox()
        await hub.send("new@example.com", subject="Welcome", login=signup.login)
        await hub.send("new@example.com", subject="Other test's", login=other.login)
        await hub.send("new@example.com", subject="Not in a sandbox")
        url = f"http://127.0.0.1:{hub.ports['web']}/"
        driver = await threads.deferToThread(self.browser)

        def use_the_page() -> tuple[list[str], str, list[str], list[Any]]:
            driver.get(url)
            wait = WebDriverWait(driver, 15, ignored_exceptions=(StaleElementReferenceException,))
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "nav a.sandbox"))
            labels = [
                a.text.split("\n")[0]
                for a in driver.find_elements(By.CSS_SELECTOR, "nav a.sandbox")
            ]
            heading = driver.find_element(By.CSS_SELECTOR, "nav .nav-heading").text

            def chosen(d: Any) -> bool:
                for a in d.find_elements(By.CSS_SELECTOR, "nav a.sandbox"):
                    if a.text.startswith("signup tests"):
                        a.click()
                        return True
                return False

            wait.until(chosen)
            wait.until(
                lambda d: (
                    [r.text for r in d.find_elements(By.CSS_SELECTOR, "#messages .msg")]
                    and all(
                        "Welcome" in r.text
                        for r in d.find_elements(By.CSS_SELECTOR, "#messages .msg")
                    )
                )
            )
            rows = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#messages .msg")]
            return labels, heading, rows, driver.get_log("browser")

        labels, heading, rows, errors = await threads.deferToThread(use_the_page)
        late = await hub.create_sandbox("made later")
        await hub.send("new@example.com", subject="Late", login=late.login)

        def named_live() -> list[str]:
            # The page learns a new sandbox's name when its mailbox first shows (live update).
            wait = WebDriverWait(driver, 15, ignored_exceptions=(StaleElementReferenceException,))
            wait.until(
                lambda d: any(
                    a.text.startswith("made later")
                    for a in d.find_elements(By.CSS_SELECTOR, "nav a.sandbox")
                )
            )
            return driver.get_log("browser")

        self.assertEqual(await threads.deferToThread(named_live), [])
        self.assertEqual(sorted(labels), sorted(["signup tests", other.id]))
        self.assertEqual(heading.lower(), "sandboxes")
        self.assertEqual(len(rows), 1)
        self.assertIn("Welcome", rows[0])
        self.assertEqual(errors, [])
