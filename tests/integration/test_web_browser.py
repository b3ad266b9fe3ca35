"""The page in a real headless browser (Debian's chromium + chromedriver, driven by Selenium):
a message sent by SMTP shows up live, opens, its attachment downloads, delete works; a
message's authentication results show in words, odd fields without a script error."""

from __future__ import annotations

import shutil
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from mailhub.testing import MailhubTestServer
from tests.support.tools import requires

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the [test] extra installs it
    webdriver = None  # type: ignore[assignment]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _skip() -> str | None:
    if webdriver is None:
        return "selenium is not installed (pip install -e '.[test]')"
    if CHROMIUM is None or CHROMEDRIVER is None:
        return (
            "chromium and chromedriver are not installed (apt-get install chromium "
            "chromium-driver); .ci/run installs them"
        )
    return None


def message_with_attachment() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Shop <shop@example.net>"
    msg["To"] = "buyer@example.com"
    msg["Subject"] = "Your receipt"
    msg.set_content("Thanks for shopping.\n")
    msg.add_alternative(
        "<h1>Thanks</h1><p>See the <b>receipt</b>.</p>"
        '<img src="http://tracker.invalid/pixel.gif" alt="tracker">'
        "<script>document.body.innerHTML = 'pwned'</script>",
        subtype="html",
    )
    msg.add_attachment(
        b"receipt line 1\nreceipt line 2\n",
        maintype="text",
        subtype="plain",
        filename="receipt.txt",
    )
    return msg


class _Browser(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.downloads = Path(self.mktemp()).absolute()
        self.downloads.mkdir(parents=True)

    def browser(self) -> Any:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
        ):
            options.add_argument(arg)
        options.add_experimental_option(
            "prefs",
            {
                "download.default_directory": str(self.downloads),
                "download.prompt_for_download": False,
            },
        )
        options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})  # script errors
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        self.addCleanup(driver.quit)
        return driver


@requires(_skip())
class Page(_Browser):
    async def test_live_open_download_delete(self) -> None:
        hub = await MailhubTestServer.started(self, services=("smtp", "web"))
        url = f"http://127.0.0.1:{hub.ports['web']}/"
        driver = await threads.deferToThread(self.browser)

        def open_page() -> None:
            driver.get(url)
            wait = WebDriverWait(driver, 15)
            wait.until(ec.text_to_be_present_in_element((By.ID, "list-status"), "No messages"))
            wait.until(lambda d: "on" in d.find_element(By.ID, "live").get_attribute("class"))

        await threads.deferToThread(open_page)
        await hub.send("buyer@example.com", message=message_with_attachment())

        def see_it_live_and_open_it() -> None:
            # Every look at the list is a condition an explicit wait re-checks from a fresh
            # find: a live update between finding a row and using it cannot fail the test.
            wait = WebDriverWait(driver, 15, ignored_exceptions=(StaleElementReferenceException,))

            def first_row_classes(d: Any) -> str:
                return d.find_element(By.CSS_SELECTOR, "#messages .msg").get_attribute("class")

            def row_listed(d: Any) -> bool:
                row = d.find_element(By.CSS_SELECTOR, "#messages .msg")
                return "Your receipt" in row.text

            wait.until(row_listed)
            self.assertIn("unread", first_row_classes(driver))
            self.assertIn("has-attachment", first_row_classes(driver))
            row = driver.find_element(By.CSS_SELECTOR, "#messages .msg")
            row_id = row.get_attribute("data-id")

            def clicked(d: Any) -> bool:
                d.find_element(By.CSS_SELECTOR, "#messages .msg").click()
                return True

            wait.until(clicked)  # selects and opens; then back to the list and in again by key
            wait.until(ec.text_to_be_present_in_element((By.ID, "subject"), "Your receipt"))
            driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
            wait.until(lambda d: d.find_element(By.ID, "detail").get_attribute("hidden"))
            # Back in the list, the opened row has the focus again: Enter opens it.
            wait.until(lambda d: d.switch_to.active_element.get_attribute("data-id") == row_id)
            driver.switch_to.active_element.send_keys(Keys.ENTER)
            wait.until(ec.text_to_be_present_in_element((By.ID, "subject"), "Your receipt"))
            self.assertFalse(driver.find_element(By.ID, "remote-banner").get_attribute("hidden"))
            frame = driver.find_element(By.ID, "html")
            self.assertEqual(
                frame.get_attribute("sandbox"), "allow-popups allow-popups-to-escape-sandbox"
            )
            driver.switch_to.frame(frame)
            body = wait.until(ec.presence_of_element_located((By.TAG_NAME, "h1")))
            self.assertEqual(body.text, "Thanks")
            self.assertNotIn("pwned", driver.find_element(By.TAG_NAME, "body").text)
            driver.switch_to.default_content()
            # Opening marked it read: the Maildir S flag IMAP and POP3 see.
            wait.until(lambda d: "unread" not in first_row_classes(d))
            # The live updates that followed (flags) kept the row, the same element.
            self.assertEqual(
                driver.find_element(By.CSS_SELECTOR, "#messages .msg").get_attribute("data-id"),
                row_id,
            )
            row.get_attribute("class")  # raises StaleElementReferenceException if redrawn

        await threads.deferToThread(see_it_live_and_open_it)

        def download_attachment() -> bytes:
            link = driver.find_element(By.CSS_SELECTOR, "a.attachment")
            self.assertIn("receipt.txt", link.text)
            link.click()
            target = self.downloads / "receipt.txt"  # Chrome renames it there when complete
            WebDriverWait(driver, 15).until(lambda d: target.exists())
            return target.read_bytes()

        self.assertEqual(
            await threads.deferToThread(download_attachment),
            b"receipt line 1\nreceipt line 2\n",
        )
        self.assertEqual(hub.messages("buyer@example.com")[0].subject, "Your receipt")

        def delete_it() -> None:
            driver.find_element(By.ID, "delete").click()
            WebDriverWait(driver, 15).until(
                lambda d: not d.find_elements(By.CSS_SELECTOR, "#messages .msg")
            )

        await threads.deferToThread(delete_it)
        self.assertEqual(hub.messages("buyer@example.com"), [])


def _authenticated(subject: str, *fields: bytes) -> bytes:
    head = b"".join(b"Authentication-Results: " + f + b"\r\n" for f in fields)
    return (
        head + b"From: App <app@example.com>\r\nTo: buyer@example.com\r\n"
        b"Subject: " + subject.encode() + b"\r\n\r\nHello\r\n"
    )


@requires(_skip())
class AuthenticationPanel(_Browser):
    """Messages put in the store directly (as IMAP APPEND does): the SMTP listeners' own
    checks would write the field with our authserv-id themselves."""

    async def test_results_in_words_and_odd_fields(self) -> None:
        hub = await MailhubTestServer.started(self, services=("smtp", "web"))
        ours = hub.config.hostname.encode()
        messages = {
            "Unaligned": _authenticated(
                "Unaligned",
                b"mx.elsewhere.example; dmarc=pass",
                ours + b"; spf=softfail smtp.mailfrom=b@mailer.example.net;"
                b" dkim=pass header.d=mailer.example.net header.s=s1 header.a=rsa-sha256"
                b" header.b=XyZ12345; dmarc=fail header.from=example.com policy.dmarc=reject",
            ),
            "All good": _authenticated(
                "All good",
                ours + b"; spf=pass smtp.mailfrom=b@example.com; dkim=pass header.d=example.com"
                b" header.s=s1; dmarc=pass header.from=example.com policy.dmarc=none;"
                b' arc=pass reason="chain of 2 sets"',
            ),
            "Never checked": _authenticated("Never checked"),
            "Odd bytes": _authenticated(
                "Odd bytes",
                ours + b'; dmarc=fail reason="b\xc3\xbccher \xe2\x89\xa0 <script>x</script>"'
                b" header.from=\xff\xfe; dkim=pass (unclosed",
                b"\x00broken (((",
            ),
            "Huge": _authenticated("Huge", ours + b"; dkim=pass header.d=example.com" * 3000),
        }
        assert hub.service is not None
        inbox = hub.service.store.mailbox("buyer@example.com", create=True).folder("INBOX")
        for raw in messages.values():
            inbox.append(raw)
        driver = await threads.deferToThread(self.browser)
        url = f"http://127.0.0.1:{hub.ports['web']}/"

        def panel(subject: str) -> dict[str, Any]:
            """Opens the message, then its Authentication tab: what the panel shows."""
            wait = WebDriverWait(driver, 15, ignored_exceptions=(StaleElementReferenceException,))

            def opened(d: Any) -> bool:
                rows = d.find_elements(By.CSS_SELECTOR, "#messages .msg")
                row = next((r for r in rows if subject in r.text), None)
                if row is None:
                    return False
                row.click()
                return True

            wait.until(opened)
            wait.until(ec.text_to_be_present_in_element((By.ID, "subject"), subject))
            driver.find_element(By.CSS_SELECTOR, '.tabs button[data-tab="auth"]').click()
            wait.until(lambda d: d.find_element(By.ID, "auth").is_displayed())
            summary = driver.find_element(By.ID, "auth-summary")
            blocks = driver.find_elements(By.CSS_SELECTOR, "#auth .auth-block")
            return {
                "summary": summary.text,
                "verdict": summary.get_attribute("class"),
                "blocks": [
                    (
                        b.get_attribute("data-method"),
                        b.find_element(By.CSS_SELECTOR, ".result").get_attribute("class"),
                        b.text,
                    )
                    for b in blocks
                ],
                "meta": driver.find_element(By.ID, "meta").text,
                "text": driver.find_element(By.ID, "auth").text,
            }

        def look() -> dict[str, dict[str, Any]]:
            driver.get(url)
            WebDriverWait(driver, 15).until(
                ec.text_to_be_present_in_element((By.ID, "list-status"), "5 messages")
            )
            badges = {}
            for row in driver.find_elements(By.CSS_SELECTOR, "#messages .msg"):
                found = row.find_elements(By.CSS_SELECTOR, ".auth-badge")
                subject = row.find_element(By.CSS_SELECTOR, ".subj").text
                badges[subject] = (
                    (found[0].text, found[0].get_attribute("class")) if found else None
                )
            return {"badges": badges} | {subject: panel(subject) for subject in messages}

        seen = await threads.deferToThread(look)
        # The list's badge: the top-most field's DMARC result when that field is ours.
        self.assertEqual(seen["badges"]["All good"][0], "DMARC pass")
        self.assertIn("r-pass", seen["badges"]["All good"][1])
        self.assertEqual(seen["badges"]["Odd bytes"][0], "DMARC fail")
        self.assertIsNone(seen["badges"]["Unaligned"])  # another server's field is on top
        self.assertIsNone(seen["badges"]["Never checked"])
        unaligned = seen["Unaligned"]
        self.assertIn("bad", unaligned["verdict"])
        self.assertIn("Authentication\nSPF softfail · DKIM pass · DMARC fail", unaligned["meta"])
        by_method = {m: (cls, text) for m, cls, text in unaligned["blocks"]}
        self.assertIn("r-pass", by_method["dkim"][0])
        self.assertIn(
            "d=mailer.example.net · s=s1 · a=rsa-sha256 · b=XyZ12345…", by_method["dkim"][1]
        )
        self.assertIn("r-fail", by_method["dmarc"][0])
        self.assertIn(
            "DKIM passed but is not aligned with From: example.com ≠ mailer.example.net, so "
            "DMARC fails",
            by_method["dmarc"][1],
        )
        self.assertIn("DKIM not aligned", by_method["dmarc"][1])
        self.assertIn("not believed", unaligned["text"])
        self.assertIn("mx.elsewhere.example", unaligned["text"])
        good = seen["All good"]
        self.assertIn("good", good["verdict"])
        self.assertIn("Meets Gmail's and Yahoo's", good["summary"])
        self.assertIn("chain of 2", good["text"])
        never = seen["Never checked"]
        self.assertTrue(never["summary"].startswith("Not checked:"), never)
        self.assertEqual(never["blocks"], [])
        odd = seen["Odd bytes"]
        self.assertIn("bücher ≠ <script>x</script>", odd["text"])  # text, never markup
        self.assertEqual(len(seen["Huge"]["blocks"]), 2 + 20)  # SPF, DMARC: missing; 20 DKIM
        self.assertEqual(driver.find_element(By.ID, "list-status").get_attribute("class"), "status")
        errors = await threads.deferToThread(driver.get_log, "browser")
        self.assertEqual(errors, [])
