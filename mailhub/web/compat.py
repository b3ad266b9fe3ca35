"""Which HTML and CSS features a message's HTML uses, and which mail clients lack them.

The support tables are caniemail.com's (the ``caniemail`` npm package, MIT licence: see
``data/caniemail.LICENSE``), trimmed by ``tools/refresh_caniemail.py`` to the features this
module detects, each client's latest test result. Detection is a real parse: the stdlib's
``html.parser`` for elements and attributes, and a small CSS scanner (brace and semicolon
structure, then selectors, at-rules, declarations, values) for ``<style>`` blocks and ``style``
attributes. It never raises on what a message holds, and what it reads is bounded (MAX_HTML,
MAX_CSS, MAX_TAGS): past a bound the answer says it looked at part only.

The score is Mailpit's idea in plainer words: over every (feature used, client) pair with a
known result, supported counts 1, partly supported 1/2, unsupported 0; the mean, in percent.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import cache
from html.parser import HTMLParser
from importlib import resources
from typing import Any

MAX_HTML = 1024 * 1024  # characters of HTML parsed; past it, the report says so
MAX_CSS = 512 * 1024  # characters of CSS scanned, all blocks and attributes together
MAX_TAGS = 50_000  # start tags looked at

# Clients listed first, in this order (the ones a sender asks about); the rest alphabetically.
MAJOR = ("gmail", "outlook", "apple-mail", "yahoo")

# --- what the HTML parse finds ----------------------------------------------------------------

_ELEMENT_NAMES = """
    abbr acronym address audio base bdi blockquote body code del dfn dialog div form hr img
    link marquee meter object p picture pre progress rp rt ruby select small span strike strong
    style svg table textarea video wbr
"""
_SEMANTIC = (
    "article aside details figcaption figure footer header main mark nav section summary time"
)
_ATTRIBUTE_NAMES = """
    align background cellpadding cellspacing dir height hidden lang role target valign width
    required popover aria-describedby aria-hidden aria-label aria-labelledby aria-live
"""
ELEMENTS = {
    **{t: f"html-{t}" for t in _ELEMENT_NAMES.split()},
    **{f"h{n}": "html-h1-h6" for n in range(1, 7)},
    **{t: "html-lists" for t in ("ul", "ol", "dl")},
    **{t: "html-image-maps" for t in ("map", "area")},
    **{t: "html-semantics" for t in _SEMANTIC.split()},
}
ATTRIBUTES = {
    **{a: f"html-{a}" for a in _ATTRIBUTE_NAMES.split()},
    "srcset": "html-srcset",
    "sizes": "html-srcset",
    "loading": "html-loading-attribute",
    "inert": "css-inert-attribute",
}
INPUTS = {t: f"html-input-{t}" for t in ("checkbox", "hidden", "radio", "reset", "submit", "text")}
IMAGE_TYPES = {
    "png": "image-png", "jpg": "image-jpg", "jpeg": "image-jpg", "gif": "image-gif",
    "webp": "image-webp", "svg": "image-svg", "svg+xml": "image-svg", "avif": "image-avif",
    "bmp": "image-bmp", "ico": "image-ico", "x-icon": "image-ico", "tif": "image-tiff",
    "tiff": "image-tiff", "heic": "image-heif", "heif": "image-heif", "apng": "image-apng",
    "mp4": "image-mp4",
}  # fmt: skip

# --- what the CSS scan finds ------------------------------------------------------------------

_COMMENT = re.compile(r"/\*.*?(?:\*/|\Z)", re.S)
_STRUCTURE = re.compile(r"[{};]")
_ATTR_SELECTOR = re.compile(r"\[[^\]]*\]")
_PSEUDO = re.compile(r"(::?)([a-zA-Z][\w-]*)")
_TYPE = re.compile(r"(?:^|[\s>+~,(])([a-zA-Z][\w-]*)")
_CHAIN = re.compile(r"[\w\])*](?=[.#\[])")
_DESCENDANT = re.compile(r"[\w\])*]\s+(?=[\w.#\[*:])")
_FUNCTION = re.compile(r"(?<![a-zA-Z-])([a-zA-Z-]{1,40})\(")  # linear on long words
_UNIT = re.compile(
    r"(?<![\w#.-])-?(?:\d+\.?\d*|\.\d+)(px|em|rem|pt|vh|vw|vmin|vmax|ch|ex|cm|mm|in|pc|%)(?![\w%])",
    re.I,
)
_SYSTEM_FONT = re.compile(r"\b(?:system-ui|ui-serif|ui-sans-serif|ui-rounded|ui-monospace)\b")
_INTRINSIC = re.compile(r"\b(?:fit|min|max)-content\b")
_MEDIA_FEATURES = (
    (re.compile(r"prefers-color-scheme"), "css-at-media-prefers-color-scheme"),
    (re.compile(r"prefers-reduced-motion"), "css-at-media-prefers-reduced-motion"),
    (re.compile(r"\borientation\b"), "css-at-media-orientation"),
    (re.compile(r"\b(?:any-)?hover\b"), "css-at-media-hover"),
    (re.compile(r"device-pixel-ratio"), "css-at-media-device-pixel-ratio"),
)
PSEUDO_ELEMENTS = {"after", "before", "first-letter", "first-line", "marker", "placeholder"}
PSEUDO_CLASSES = {
    "active", "checked", "default", "first-child", "first-of-type", "focus", "focus-visible",
    "focus-within", "has", "hover", "lang", "last-child", "last-of-type", "link", "not",
    "nth-child", "nth-last-child", "nth-last-of-type", "nth-of-type", "only-child",
    "only-of-type", "target", "visited",
}  # fmt: skip
FUNCTIONS = {
    "calc": "css-unit-calc", "clamp": "css-function-clamp", "min": "css-function-min",
    "max": "css-function-max", "light-dark": "css-function-light-dark",
    "linear-gradient": "css-linear-gradient", "repeating-linear-gradient": "css-linear-gradient",
    "radial-gradient": "css-radial-gradient", "repeating-radial-gradient": "css-radial-gradient",
    "conic-gradient": "css-conic-gradient", "repeating-conic-gradient": "css-conic-gradient",
    "rgb": "css-rgb", "rgba": "css-rgba", "lch": "css-modern-color",
    "oklch": "css-modern-color", "lab": "css-modern-color", "oklab": "css-modern-color",
    "var": "css-variables",
}  # fmt: skip
# Properties that caniemail files under a feature not named after them.
_PROPERTY_PATTERNS = (
    (re.compile(r"border(-(top|right|bottom|left))?(-(width|style|color))?"), "css-border"),
    (re.compile(r"border-(top|bottom)-(left|right)-radius"), "css-border-radius"),
    (re.compile(r"border-(start|end)-(start|end)-radius"), "css-border-radius-logical"),
    (re.compile(r"border-(inline|block)"), "css-border-inline-block"),
    (re.compile(r"border-(inline|block)-(color|style|width|start|end)"),
     "css-border-inline-block-individual"),
    (re.compile(r"border-(inline|block)-(start|end)-(color|style|width)"),
     "css-border-inline-block-longhand"),
    (re.compile(r"margin-(top|right|bottom|left)"), "css-margin"),
    (re.compile(r"margin-(inline|block)"), "css-margin-inline-block"),
    (re.compile(r"margin-block-(start|end)"), "css-margin-block-start-end"),
    (re.compile(r"margin-inline-(start|end)"), "css-margin-inline-start-end"),
    (re.compile(r"padding-(top|right|bottom|left)"), "css-padding"),
    (re.compile(r"padding-(inline|block)"), "css-padding-inline-block"),
    (re.compile(r"padding-block-(start|end)"), "css-padding-block-start-end"),
    (re.compile(r"padding-inline-(start|end)"), "css-padding-inline-start-end"),
    (re.compile(r"columns|column-(fill|gap|rule|rule-color|rule-style|rule-width|span|width)"),
     "css-column-layout-properties"),
    (re.compile(r"gap|row-gap|column-gap"), "css-gap"),
    (re.compile(r"grid-template(-(areas|columns|rows))?"), "css-grid-template"),
    (re.compile(r"left|right|top|bottom"), "css-left-right-top-bottom"),
    (re.compile(r"inset(-(block|inline)(-(start|end))?)?"), "css-inset"),
    (re.compile(r"block-size|inline-size"), "css-block-inline-size"),
    (re.compile(r"overflow-(x|y|block|inline)"), "css-overflow"),
    (re.compile(r"scroll-snap-[\w-]+"), "css-scroll-snap"),
)  # fmt: skip
_VENDOR = re.compile(r"^-(webkit|moz|ms|o)-")


@dataclass(frozen=True)
class Feature:
    slug: str
    title: str
    url: str
    category: str
    support: dict[str, str]  # client id ("outlook.windows") -> "y" | "a" | "n" | "u", "#n" notes
    notes: dict[str, str]


@dataclass(frozen=True)
class Data:
    source: str
    updated: str
    clients: dict[str, str]  # id -> name ("Outlook Windows")
    features: dict[str, Feature]


@cache
def data() -> Data:
    raw = json.loads(
        resources.files("mailhub.web").joinpath("data", "caniemail.json").read_text("utf-8")
    )
    order = list(raw["clients"])
    features = {
        slug: Feature(
            slug,
            f["title"],
            f["url"],
            f["category"],
            dict(zip(order, f["support"], strict=False)),
            f["notes"],
        )
        for slug, f in raw["features"].items()
    }
    return Data(raw["source"], raw["updated"], raw["clients"], features)


def known_slugs() -> set[str]:
    """Every feature the scan can report (the refresh script keeps these, and only these)."""
    slugs = set(ELEMENTS.values()) | set(ATTRIBUTES.values()) | set(INPUTS.values())
    slugs |= set(IMAGE_TYPES.values()) | set(FUNCTIONS.values())
    slugs |= {slug for _, slug in _MEDIA_FEATURES} | {slug for _, slug in _PROPERTY_PATTERNS}
    slugs |= {f"css-pseudo-element-{p}" for p in PSEUDO_ELEMENTS}
    slugs |= {f"css-pseudo-class-{p}" for p in PSEUDO_CLASSES}
    slugs |= {
        "amp", "html-anchor-links", "html-mailto-links", "html-button-reset",
        "html-button-submit", "html-comments", "html-doctype", "html-meta-color-scheme",
        "image-base64", "css-comments", "css-at-font-face", "css-at-import", "css-at-keyframes",
        "css-at-media", "css-at-supports", "css-nesting", "css-important", "css-variables",
        "css-display", "css-display-flex", "css-display-grid", "css-display-none",
        "css-sytem-ui", "css-intrinsic-size", "css-unit-initial", "css-inline-size",
        "css-selector-adjacent-sibling", "css-selector-attribute", "css-selector-chaining",
        "css-selector-child", "css-selector-class", "css-selector-descendant",
        "css-selector-general-sibling", "css-selector-grouping", "css-selector-id",
        "css-selector-type", "css-selector-universal",
    }  # fmt: skip
    slugs |= {f"css-unit-{u}" for u in ("px em rem pt vh vw vmin vmax ch ex cm mm in pc").split()}
    slugs.add("css-unit-percent")
    return slugs | PROPERTY_SLUGS


# The css-<property> features named after the one property they are about (css-opacity, ...).
PROPERTY_SLUGS: set[str] = {
    f"css-{p}" for p in (
        "accent-color", "align-items", "animation", "aspect-ratio", "backdrop-filter",
        "background", "background-blend-mode", "background-clip", "background-color",
        "background-image", "background-origin", "background-position", "background-repeat",
        "background-size", "border-collapse", "border-image", "border-radius",
        "border-spacing", "box-shadow", "box-sizing", "caption-side", "clear", "clip-path",
        "color-scheme", "column-count", "cursor", "direction", "empty-cells", "filter",
        "flex-direction", "flex-wrap", "float", "font", "font-kerning", "font-size",
        "font-size-adjust", "font-stretch", "font-weight", "height", "hyphenate-character",
        "hyphenate-limit-chars", "hyphens", "justify-content", "letter-spacing",
        "line-height", "list-style", "list-style-image", "list-style-position",
        "list-style-type", "margin", "mask-image", "max-block-size", "max-height",
        "max-inline-size", "max-width", "min-block-size", "min-height", "min-inline-size",
        "min-width", "mix-blend-mode", "object-fit", "object-position", "opacity", "orphans",
        "outline", "outline-offset", "overflow", "overflow-wrap", "padding", "position",
        "resize", "shape-margin", "shape-outside", "tab-size", "table-layout", "text-align",
        "text-align-last", "text-decoration", "text-decoration-color",
        "text-decoration-line", "text-decoration-skip-ink", "text-decoration-style",
        "text-decoration-thickness", "text-emphasis", "text-emphasis-position", "text-indent",
        "text-justify", "text-orientation", "text-overflow", "text-shadow", "text-transform",
        "text-underline-offset", "text-underline-position", "text-wrap", "transform",
        "transition", "user-select", "vertical-align", "visibility", "white-space",
        "white-space-collapse", "widows", "width", "word-break", "word-spacing", "word-wrap",
        "writing-mode", "z-index",
    )
}  # fmt: skip


@cache
def _property_slugs(name: str) -> tuple[str, ...]:
    prop = _VENDOR.sub("", name)
    found = [f"css-{prop}"] if f"css-{prop}" in PROPERTY_SLUGS else []
    found += [slug for pattern, slug in _PROPERTY_PATTERNS if pattern.fullmatch(prop)]
    if prop == "inline-size":
        found.append("css-inline-size")
    if prop.startswith("--"):
        found.append("css-variables")
    return tuple(found)


class _Scan(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: Counter[str] = Counter()
        self.css: list[str] = []
        self.css_size = 0
        self.inline: list[str] = []
        self.tags = 0
        self.truncated = False
        self._in_style = False

    def _add_css(self, text: str, to: list[str]) -> None:
        room = MAX_CSS - self.css_size
        if len(text) > room:
            text, self.truncated = text[:room], True
        if text:
            to.append(text)
            self.css_size += len(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags += 1
        if self.tags > MAX_TAGS:
            self.truncated = True
            return
        found = self.found
        if tag in ELEMENTS:
            found[ELEMENTS[tag]] += 1
        values = {k: (v or "") for k, v in attrs}
        for name in values:
            slug = ATTRIBUTES.get(name)
            if slug:
                found[slug] += 1
        if tag == "html" and ("amp" in values or "\u26a1" in values):
            found["amp"] += 1
        elif tag == "input":
            slug = INPUTS.get(values.get("type", "text").strip().lower())
            if slug:
                found[slug] += 1
        elif tag == "button":
            kind = values.get("type", "submit").strip().lower()
            if kind in ("reset", "submit"):
                found[f"html-button-{kind}"] += 1
        elif tag == "meta" and values.get("name", "").strip().lower() == "color-scheme":
            found["html-meta-color-scheme"] += 1
        elif tag == "style":
            self._in_style = True
        href = values.get("href", "").strip().lower()
        if tag in ("a", "area") and href:
            if href.startswith("#"):
                found["html-anchor-links"] += 1
            elif href.startswith("mailto:"):
                found["html-mailto-links"] += 1
        if tag in ("img", "source") and values.get("src"):
            self._image(values["src"])
        if values.get("style"):
            self._add_css(values["style"], self.inline)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag == "style":
            self._in_style = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self._add_css(data, self.css)

    def handle_comment(self, data: str) -> None:
        self.found["html-comments"] += 1

    def handle_decl(self, decl: str) -> None:
        if decl.strip().lower() == "doctype html":
            self.found["html-doctype"] += 1

    def _image(self, src: str) -> None:
        src = src.strip().lower()
        if src.startswith("data:"):
            self.found["image-base64"] += 1
            kind = src[5:].split(";", 1)[0].split(",", 1)[0].removeprefix("image/")
        else:
            path = src.split("?", 1)[0].split("#", 1)[0]
            kind = path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else ""
        slug = IMAGE_TYPES.get(kind)
        if slug:
            self.found[slug] += 1


def scan_css(text: str, found: Counter[str], *, inline: bool = False) -> None:
    """Count the features of a style sheet (or, ``inline``, a style attribute's declarations)."""
    if "/*" in text:
        found["css-comments"] += 1
        text = _COMMENT.sub(" ", text)
    if inline:
        for declaration in text.split(";"):
            _declaration(declaration, found)
        return
    # (prelude, kind) of the open blocks: kind "rule" (a selector's), "at" (@media,
    # @supports: rules inside), "keyframes", "descriptors" (@font-face).
    stack: list[str] = []
    last = 0
    for match in _STRUCTURE.finditer(text):
        chunk = text[last : match.start()].strip()
        last = match.end()
        char = match.group()
        if char == "{":
            stack.append(_prelude(chunk, stack, found))
        elif chunk.startswith("@"):  # @import ...; @charset ...;
            if chunk[1:7].lower() == "import":
                found["css-at-import"] += 1
        elif chunk and (not stack or stack[-1] in ("rule", "descriptors")):
            _declaration(chunk, found)
        if char == "}":
            if stack:
                stack.pop()
    tail = text[last:].strip()
    if tail and stack and stack[-1] == "rule":
        _declaration(tail, found)  # an unclosed last rule


def _prelude(chunk: str, stack: list[str], found: Counter[str]) -> str:
    parent = stack[-1] if stack else None
    if chunk.startswith("@"):
        name = re.match(r"@([\w-]*)", chunk)
        at = _VENDOR.sub("", name.group(1).lower()) if name else ""
        if at == "media":
            found["css-at-media"] += 1
            lowered = chunk.lower()
            for pattern, slug in _MEDIA_FEATURES:
                if pattern.search(lowered):
                    found[slug] += 1
            return "at"
        if at == "supports":
            found["css-at-supports"] += 1
            return "at"
        if at == "keyframes":
            found["css-at-keyframes"] += 1
            return "keyframes"
        if at == "font-face":
            found["css-at-font-face"] += 1
            return "descriptors"
        return "at"
    if parent == "keyframes":
        return "descriptors"  # from, to, 50%: the declarations inside still count
    if parent == "rule":
        found["css-nesting"] += 1
    _selector(chunk, found)
    return "rule"


def _selector(text: str, found: Counter[str]) -> None:
    if not text:
        return
    if "&" in text:
        found["css-nesting"] += 1
    if "[" in text:
        found["css-selector-attribute"] += 1
        text = _ATTR_SELECTOR.sub("[]", text)
    if "," in text:
        found["css-selector-grouping"] += 1
    for colons, name in _PSEUDO.findall(text):
        name = name.lower()
        if colons == "::" or (name in PSEUDO_ELEMENTS and name not in PSEUDO_CLASSES):
            if name in PSEUDO_ELEMENTS:
                found[f"css-pseudo-element-{name}"] += 1
        elif name in PSEUDO_CLASSES:
            found[f"css-pseudo-class-{name}"] += 1
    bare = _PSEUDO.sub("", text)
    if re.search(r"#[\w-]", bare):
        found["css-selector-id"] += 1
    if re.search(r"\.[a-zA-Z_-]", bare):
        found["css-selector-class"] += 1
    if "*" in bare:
        found["css-selector-universal"] += 1
    if ">" in bare:
        found["css-selector-child"] += 1
    if "+" in bare:
        found["css-selector-adjacent-sibling"] += 1
    if "~" in bare:
        found["css-selector-general-sibling"] += 1
    if _TYPE.search(bare):
        found["css-selector-type"] += 1
    if _CHAIN.search(bare):
        found["css-selector-chaining"] += 1
    if any(_DESCENDANT.search(part.strip()) for part in bare.split(",")):
        found["css-selector-descendant"] += 1


def _declaration(text: str, found: Counter[str]) -> None:
    name, colon, value = text.partition(":")
    name = name.strip().lower()
    if not colon or not name or not re.fullmatch(r"-?-?[a-z][\w-]*", name):
        return
    for slug in _property_slugs(name):
        found[slug] += 1
    value = value.strip()
    lowered = value.lower()
    if "!important" in lowered.replace(" ", ""):
        found["css-important"] += 1
    if name == "display":
        found["css-display"] += 1
        word = lowered.replace("!important", "").strip()
        if word in ("flex", "inline-flex"):
            found["css-display-flex"] += 1
        elif word in ("grid", "inline-grid"):
            found["css-display-grid"] += 1
        elif word == "none":
            found["css-display-none"] += 1
    for function in _FUNCTION.findall(lowered):
        if function in FUNCTIONS:
            found[FUNCTIONS[function]] += 1
    for unit in _UNIT.findall(lowered):
        found["css-unit-percent" if unit == "%" else f"css-unit-{unit}"] += 1
    if _SYSTEM_FONT.search(lowered):
        found["css-sytem-ui"] += 1
    if _INTRINSIC.search(lowered):
        found["css-intrinsic-size"] += 1
    if re.search(r"(?<![\w-])initial(?![\w-])", lowered):
        found["css-unit-initial"] += 1


@dataclass
class Detected:
    counts: Counter[str]
    truncated: bool
    html_size: int


def detect(html: str) -> Detected:
    """The features ``html`` uses, with how often (parsed up to the bounds)."""
    scan = _Scan()
    truncated = len(html) > MAX_HTML
    try:
        scan.feed(html[:MAX_HTML])
        if scan._in_style and scan.rawdata:  # cut (or never closed) inside a <style> block
            scan.handle_data(scan.rawdata)
            scan.rawdata = ""
        scan.close()
    except Exception:  # html.parser is lenient; whatever it raised on, report what was seen
        truncated = True
    for sheet in scan.css:
        scan_css(sheet, scan.found)
    for style in scan.inline:
        scan_css(style, scan.found, inline=True)
    return Detected(scan.found, truncated or scan.truncated, len(html))


def _level(value: str) -> str:
    return value.split()[0] if value else "u"


def _ordered_clients(clients: dict[str, str]) -> list[str]:
    def key(client: str) -> tuple[int, str]:
        family = client.split(".", 1)[0]
        return (MAJOR.index(family) if family in MAJOR else len(MAJOR), client)

    return sorted(clients, key=key)


def report(html: str) -> dict[str, Any]:
    """The HTML compatibility report as JSON: score, features used, per-client lists."""
    d = data()
    detected = detect(html)
    used = [d.features[slug] for slug in detected.counts if slug in d.features]
    clients = _ordered_clients(d.clients)
    points = 0.0
    counted = 0
    per_client: dict[str, dict[str, Any]] = {
        c: {"id": c, "name": d.clients[c], "unsupported": [], "partial": [], "unknown": []}
        for c in clients
    }
    features: list[dict[str, Any]] = []
    for feature in used:
        tally: dict[str, list[str]] = {"y": [], "a": [], "n": [], "u": []}
        notes = []
        for client in clients:
            value = feature.support.get(client, "u")
            level = _level(value)
            level = level if level in tally else "u"
            tally[level].append(client)
            if level != "u":
                counted += 1
                points += {"y": 1.0, "a": 0.5}.get(level, 0.0)
            bucket = {"n": "unsupported", "a": "partial", "u": "unknown"}.get(level)
            if bucket:
                per_client[client][bucket].append(feature.slug)
            for ref in re.findall(r"#(\d+)", value):
                note = feature.notes.get(ref)
                if note and level in ("a", "n"):
                    notes.append(f"{d.clients.get(client, client)}: {note}")
        features.append(
            {
                "slug": feature.slug,
                "title": feature.title,
                "category": feature.category,
                "url": feature.url,
                "count": detected.counts[feature.slug],
                "supported": len(tally["y"]),
                "partial": [d.clients[c] for c in tally["a"]],
                "unsupported": [d.clients[c] for c in tally["n"]],
                "unknown": len(tally["u"]),
                "notes": notes[:20],
            }
        )
    features.sort(key=lambda f: (-len(f["unsupported"]), -len(f["partial"]), f["slug"]))
    for entry in per_client.values():
        known = [f for f in used if _level(f.support.get(entry["id"], "u")) in ("y", "a", "n")]
        got = sum({"y": 1.0, "a": 0.5}.get(_level(f.support[entry["id"]]), 0.0) for f in known)
        entry["score"] = round(100 * got / len(known), 1) if known else None
    return {
        "score": round(100 * points / counted, 1) if counted else None,
        "features": features,
        "clients": list(per_client.values()),
        "truncated": detected.truncated,
        "limits": {"html_chars": MAX_HTML, "css_chars": MAX_CSS, "tags": MAX_TAGS},
        "html_size": detected.html_size,
        "data": {
            "source": d.source,
            "updated": d.updated,
            "licence": "MIT (caniemail.com, HTeuMeuLeu; the caniemail npm package)",
            "url": "https://www.caniemail.com/",
        },
    }
