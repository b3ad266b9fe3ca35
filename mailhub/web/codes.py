"""One-time codes in a message: what a sign-up test wants out of a verification mail.

A code is a run of 4-8 digits (also written 123 456 or 1234-5678) or a token of 4-12 capital
letters and digits with at least one of each (A7K-29Q), standing near a word that says "code":
code, verification, OTP, PIN, passcode, token, one-time, Bestätigungscode, código,
vérification, 验证码... (within NEAR_BEFORE characters before it or NEAR_AFTER after, as in
"Your code is 123456" and "123456 is your code"). Not codes: years (1900-2099) unless right
after the word, dates and times (digits joined by . / : -), prices (a currency sign or word
beside them, decimals), phone numbers (a long run of digit groups, or "phone"/"tel" before
it), order and invoice numbers (# or the word before it), anything inside a URL or mail
address, and the other codes of mail (postal, promo, coupon, error, QR, tracking...). The
subject is looked at first, then the text part, then the HTML part's text.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from typing import Any

MAX_SCAN = 256 * 1024  # characters of each source scanned
MAX_CODES = 20
MAX_CANDIDATES = 5000  # digit runs and tokens weighed per source (a page of numbers: the first)
NEAR_BEFORE = 80
NEAR_AFTER = 40
CONTEXT = 40  # characters shown each side

_KEYWORD = re.compile(
    r"code|kode|\bkod\b|c[oó]digo|codice|\botp\b|one[- ]?time|\bpin\b|pass ?code|passwor[dt]|"
    r"mot de passe|contrase[ñn]a|\btoken\b|verif|bestätigung|bestaetigung|sicherheits|"
    r"einmal|vérification|verificaci[oó]n|\b2fa\b|\bmfa\b|验证码|認証|인증|確認コード",
    re.I,
)
_NUMERIC = re.compile(
    r"(?<![\w$€£¥#+/.,-])(?<!\d:)(\d{3}[ -]\d{3}|\d{4}[ -]\d{4}|\d{4,8})(?![\w%€$£¥])(?![.,:/-]\d)"
)
_TOKEN = re.compile(r"(?<![\w-])([A-Z0-9]{2,8}(?:-[A-Z0-9]{2,8})?)(?![\w-])")
# (The lookbehind and bounds keep it linear: one try per run of word characters, not one per
# character of a long run.)
_URLS = re.compile(
    r"\b(?:https?://|www\.)\S+|(?<![\w.+-])[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+", re.I
)
# "code" in these is not a one-time code: the phrase is blanked before keywords are sought.
_OTHER_CODES = re.compile(
    r"\b(?:postal|zip|post|area|country|dialling|dialing|promo|promotional|coupon|discount|"
    r"voucher|gift|referral|source|qr|bar|dress|status|error|response|sort|swift|bic|tax|vat|"
    r"tracking|product)[ -]?codes?\b|\bpostcodes?\b|\bplz\b|\bgutscheincode\b|\brabattcode\b",
    re.I,
)
_CURRENCY = re.compile(r"[$€£¥]|\b(?:usd|eur|gbp|chf|dollars?|euros?|cents?)\b", re.I)
_PHONE_WORD = re.compile(r"\b(?:phone|tel|telefon|call|fax|mobile|whatsapp)\b", re.I)
_ORDER_WORD = re.compile(
    r"\b(?:order|invoice|bestellung|rechnung|ticket|ref|reference|account|acct)\b", re.I
)
_PHONE = re.compile(r"\+?\(?\d[\d ().-]{6,}\d")


@dataclass(frozen=True)
class Code:
    code: str  # as written, separators removed ("123 456" -> "123456")
    written: str  # as written
    kind: str  # "numeric" or "alphanumeric"
    source: str  # "subject", "text" or "html"
    keyword: str  # the word it stood near
    context: str


class _Text(HTMLParser):
    BLOCKS = {"p", "div", "br", "tr", "td", "th", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.skip = 0
        self.size = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script", "head", "title"):
            self.skip += 1
        elif tag in self.BLOCKS:
            self.pieces.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "head", "title") and self.skip:
            self.skip -= 1
        elif tag in self.BLOCKS:
            self.pieces.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip and self.size < MAX_SCAN:
            self.pieces.append(data)
            self.size += len(data)


def html_text(html: str) -> str:
    """The words of an HTML body (no style, script or head), block elements on new lines."""
    parser = _Text()
    try:
        parser.feed(html[: 4 * MAX_SCAN])
        parser.close()
    except Exception:  # html.parser is lenient; keep what it saw
        pass
    return "".join(parser.pieces)


def _blank(match: re.Match[str]) -> str:
    return " " * len(match.group())


def _keyword_near(text: str, start: int, end: int) -> str | None:
    before = text[max(0, start - NEAR_BEFORE) : start]
    found = list(_KEYWORD.finditer(before))
    if found:
        return found[-1].group()
    after = _KEYWORD.search(text[end : end + NEAR_AFTER])
    return after.group() if after else None


def _excluded(text: str, start: int, end: int, digits: str) -> bool:
    before = text[max(0, start - 3) : start]
    after = text[end : end + 4]
    if _CURRENCY.search(before) or _CURRENCY.match(after.strip() or "x"):
        return True
    if len(digits) == 4 and 1900 <= int(digits) <= 2099:
        if not _KEYWORD.search(text[max(0, start - 12) : start]):
            return True  # a year, unless it follows the word itself ("code: 2024")
    wider = text[max(0, start - 25) : start]
    if _PHONE_WORD.search(wider) or _ORDER_WORD.search(wider):
        return True
    for phone in _PHONE.finditer(text[max(0, start - 20) : end + 20]):
        if sum(c.isdigit() for c in phone.group()) >= 9:
            return True
    return False


def _scan(text: str, source: str, found: dict[str, Code]) -> None:
    text = _OTHER_CODES.sub(_blank, _URLS.sub(_blank, text[:MAX_SCAN]))
    candidates = [(m, "numeric") for m in _NUMERIC.finditer(text)]
    candidates += [
        (m, "alphanumeric")
        for m in _TOKEN.finditer(text)
        if re.search(r"\d", m.group()) and re.search(r"[A-Z]", m.group())
    ]
    candidates.sort(key=lambda c: c[0].start())
    for match, kind in candidates[:MAX_CANDIDATES]:
        written = match.group(1)
        code = re.sub(r"[ -]", "", written)
        if not 4 <= len(code) <= (8 if kind == "numeric" else 12) or code in found:
            continue
        start, end = match.span(1)
        keyword = _keyword_near(text, start, end)
        if keyword is None:
            continue
        if kind == "numeric" and _excluded(text, start, end, code):
            continue
        if kind == "alphanumeric" and _excluded(text, start, end, ""):
            continue
        context = " ".join(text[max(0, start - CONTEXT) : end + CONTEXT].split())
        found[code] = Code(code, written, kind, source, keyword, context)
        if len(found) >= MAX_CODES:
            return


def find_codes(subject: str, text: str, html: str) -> list[Code]:
    """The codes of a message, best first (the subject's, then the text part's, the HTML's)."""
    found: dict[str, Code] = {}
    for source, body in (("subject", subject), ("text", text), ("html", html_text(html))):
        if body and len(found) < MAX_CODES:
            _scan(body, source, found)
    return list(found.values())


def codes_json(codes: list[Code]) -> dict[str, Any]:
    return {
        "code": codes[0].code if codes else None,
        "codes": [asdict(c) for c in codes],
        "limit": MAX_CODES,
    }
