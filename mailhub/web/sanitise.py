"""HTML bodies made safe to show: an allow-list sanitiser (nh3, the Python binding of the Rust
``ammonia`` crate) plus the page's second and third walls, a sandboxed iframe and a strict CSP.

What it does to a message's HTML:
* scripts, event handlers (``on*``), ``javascript:`` URLs, forms, frames, objects: removed;
* ``<style>`` blocks and ``style`` attributes kept (mail layout lives there); CSS cannot run
  script in current browsers, and what it loads is held back by the CSP;
* ``cid:`` images (RFC 2392) become ``data:`` URLs of the message's own parts, so they show
  without loosening the CSP;
* remote images and CSS ``url()`` stay in the markup but are counted: the CSP sent with the HTML
  (``img-src data:``) blocks them until the user asks (``remote=1`` widens it).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

import nh3

TAGS = (set(nh3.ALLOWED_TAGS) | {"style", "font", "tfoot", "body"}) - {"map", "area"}
ATTRIBUTES: dict[str, set[str]] = {k: set(v) for k, v in nh3.ALLOWED_ATTRIBUTES.items()}
# class and id too: a message's <style> block selects by them (its layout breaks without), and
# in a sandboxed iframe without script they can do nothing else.
ATTRIBUTES["*"] = {
    "style",
    "class",
    "id",
    "align",
    "valign",
    "width",
    "height",
    "bgcolor",
    "dir",
    "lang",
    "title",
}
for _tag, _extra in {
    "table": {"border", "cellpadding", "cellspacing", "background"},
    "td": {"background", "nowrap"},
    "th": {"background", "nowrap"},
    "font": {"color", "face", "size"},
    "img": {"border"},
    "body": {"background", "text", "link"},
}.items():
    ATTRIBUTES.setdefault(_tag, set()).update(_extra)
URL_SCHEMES = {"http", "https", "mailto", "tel", "cid", "data"}
# Removed with their content (the rest of the disallowed tags keep their text).
DROP_WITH_CONTENT = {"script", "title", "noscript", "template", "iframe", "object"}

_REMOTE = re.compile(
    r"""(?:\bsrc|\bbackground)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//""", re.I
)
_IMAGE_DATA = re.compile(r"^data:image/(png|gif|jpeg|webp|bmp);", re.I)


def sanitise(html: str, inline_image: Callable[[str], str | None] = lambda cid: None) -> str:
    """Safe HTML for the iframe. ``inline_image(content_id)`` gives a ``data:`` URL for a
    ``cid:`` reference, or None (the reference is then dropped)."""

    def attribute(tag: str, name: str, value: str) -> str | None:
        lowered = value.strip().lower()
        if name in ("src", "background"):
            if lowered.startswith("cid:"):
                return inline_image(value.strip()[4:].strip("<>"))
            if lowered.startswith("data:"):
                return value if _IMAGE_DATA.match(value.strip()) else None
        elif name == "href" and lowered.startswith(("data:", "cid:")):
            return None  # a link to a data: URL is a phishing page in waiting
        return value

    return nh3.clean(
        html,
        tags=TAGS,
        clean_content_tags=DROP_WITH_CONTENT,
        attributes=ATTRIBUTES,
        attribute_filter=attribute,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        strip_comments=True,
    )


def count_remote(html: str) -> int:
    """How many remote resources (images, backgrounds, CSS ``url()``) the HTML refers to."""
    return len(_REMOTE.findall(html))


def data_url(content_type: str, data: bytes) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def content_security_policy(remote: bool) -> str:
    """The CSP sent with a message's HTML. No script anywhere; images and fonts from the
    message itself only, unless the user asked for remote content."""
    images = "data: http: https:" if remote else "data:"
    styles = "'unsafe-inline' http: https:" if remote else "'unsafe-inline'"
    return (
        f"default-src 'none'; img-src {images}; style-src {styles}; font-src {images}; "
        "form-action 'none'; base-uri 'none'; frame-ancestors 'self'; "
        "sandbox allow-popups allow-popups-to-escape-sandbox"
    )


def document(body: str, remote: bool) -> str:
    """A whole HTML document around sanitised ``body`` (links open outside the frame)."""
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{content_security_policy(remote)}">'
        '<base target="_blank">'
        "<style>body{margin:8px;font-family:sans-serif;overflow-wrap:anywhere}"
        "img{max-width:100%;height:auto}</style></head><body>"
        f"{body}</body></html>"
    )
