"""The page says how many caught messages the dev stack pruned (mailhub.retention), in a real
headless browser."""

from __future__ import annotations

from typing import Any

from twisted.internet import threads

from mailhub.config import DevConfig
from mailhub.testing import MailhubTestServer
from tests.integration.test_web_browser import _Browser, _skip
from tests.support.tools import requires

try:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the [test] extra installs it
    pass


@requires(_skip())
class RetentionNote(_Browser):
    async def test_the_page_shows_the_pruned_count(self) -> None:
        hub = await MailhubTestServer.started(
            self, services=("smtp", "web"), retention=DevConfig(max_messages=1, max_age=7200.0)
        )
        for n in range(3):
            await hub.send("dev@example.com", subject=f"number {n}")
        assert hub.service is not None and hub.service.retention is not None
        await hub.service.retention.wait_pruned(2)
        driver = await threads.deferToThread(self.browser)

        def look() -> str:
            driver.get(f"http://127.0.0.1:{hub.ports['web']}/")

            def note(d: Any) -> str:
                found = d.find_elements(By.ID, "retention")
                return found[0].text if found else ""

            return str(WebDriverWait(driver, 15).until(note))

        text = await threads.deferToThread(look)
        self.assertEqual(text, "Keeps at most 1 messages, none older than 2 h; 2 oldest pruned")
