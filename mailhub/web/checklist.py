"""The bulk-sender checklist Gmail and Yahoo published for 2024, checked on one caught message.

From the message alone: authentication from its own Authentication-Results field (ours,
``mailhub.checks.explain``: SPF or DKIM pass, DMARC pass with alignment), one-click unsubscribe
(RFC 8058: ``List-Unsubscribe`` with an https URI, ``List-Unsubscribe-Post:
List-Unsubscribe=One-Click``, both covered by a DKIM signature when there is one), a text part
beside the HTML, HTML under the size at which Gmail clips it (~102 KB), and valid From, Date
and Message-ID fields (RFC 5322 3.6). Each item: pass, fail, warn or unknown, with words.
"""

from __future__ import annotations

import re
from email.message import EmailMessage
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from mailhub.checks.explain import Explanation

GMAIL_CLIP = 102 * 1024  # Gmail shows "[Message clipped]" past about this much HTML

_MESSAGE_ID = re.compile(r"^\s*<[^<>@\s]+@[^<>@\s]+>\s*$")
_ADDR_SPEC = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _item(key: str, title: str, status: str, detail: str) -> dict[str, Any]:
    return {"id": key, "title": title, "status": status, "detail": detail}


def _raw(msg: EmailMessage, name: str) -> list[str]:
    return [str(v) for k, v in msg.raw_items() if k.lower() == name.lower()]


def _authentication(auth: Explanation) -> list[dict[str, Any]]:
    title_spf = "SPF or DKIM passes"
    title_dmarc = "DMARC passes, aligned with From"
    if not auth.checked:
        why = "no Authentication-Results of ours on the message (were the checks on?)"
        return [
            _item("spf_or_dkim", title_spf, "unknown", why),
            _item("dmarc", title_dmarc, "unknown", why),
        ]
    spf = auth.spf.result if auth.spf else "none"
    dkim = [d for d in auth.dkim if d.result == "pass"]
    if spf == "pass" or dkim:
        passed = ["SPF"] if spf == "pass" else []
        passed += [f"DKIM d={d.domain}" for d in dkim]
        first = _item("spf_or_dkim", title_spf, "pass", f"passed: {', '.join(passed)}")
    else:
        dkim_words = ", ".join(d.result for d in auth.dkim) or "no signature"
        first = _item("spf_or_dkim", title_spf, "fail", f"SPF {spf}; DKIM {dkim_words}")
    dmarc = auth.dmarc
    if dmarc is None:
        second = _item("dmarc", title_dmarc, "fail", "no DMARC result (no record published?)")
    elif dmarc.result == "pass":
        second = _item("dmarc", title_dmarc, "pass", dmarc.why or "DMARC passed")
    else:
        second = _item("dmarc", title_dmarc, "fail", dmarc.why or f"DMARC {dmarc.result}")
    return [first, second]


def _signed_fields(msg: EmailMessage) -> list[set[str]]:
    """The h= lists of the message's DKIM signatures (RFC 6376 3.5), lower case."""
    signed = []
    for value in _raw(msg, "DKIM-Signature"):
        tag = re.search(r"(?:^|;)\s*h\s*=\s*([^;]*)", value)
        if tag:
            signed.append({h.strip().lower() for h in re.split(r"[:\s]+", tag.group(1)) if h})
    return signed


def _unsubscribe(msg: EmailMessage) -> dict[str, Any]:
    title = "One-click unsubscribe (RFC 8058)"
    values = _raw(msg, "List-Unsubscribe")
    if not values:
        return _item("one_click_unsubscribe", title, "fail", "no List-Unsubscribe field")
    uris = re.findall(r"<([^>]*)>", " ".join(values))
    https = [u for u in uris if u.strip().lower().startswith("https://")]
    if not https:
        return _item(
            "one_click_unsubscribe",
            title,
            "fail",
            "List-Unsubscribe has no https URI (RFC 8058 3.1 needs one for the POST)",
        )
    post = [v.strip() for v in _raw(msg, "List-Unsubscribe-Post")]
    if post != ["List-Unsubscribe=One-Click"]:
        said = f"it says {post[0][:80]!r}" if post else "it is missing"
        return _item(
            "one_click_unsubscribe",
            title,
            "fail",
            f"List-Unsubscribe-Post must be exactly List-Unsubscribe=One-Click; {said}",
        )
    signatures = _signed_fields(msg)
    if signatures:
        if not any({"list-unsubscribe", "list-unsubscribe-post"} <= h for h in signatures):
            return _item(
                "one_click_unsubscribe",
                title,
                "fail",
                "no DKIM signature covers both List-Unsubscribe and List-Unsubscribe-Post "
                "(RFC 8058 4: they must be signed)",
            )
        return _item("one_click_unsubscribe", title, "pass", f"POST to {https[0][:200]}")
    return _item(
        "one_click_unsubscribe",
        title,
        "warn",
        f"POST to {https[0][:200]}; the message has no DKIM signature to cover the fields",
    )


def _parts(msg: EmailMessage, text: str, html: str) -> list[dict[str, Any]]:
    items = []
    if html and not text.strip():
        items.append(_item("text_part", "A plain-text part", "fail", "HTML only, no text part"))
    elif text.strip():
        items.append(_item("text_part", "A plain-text part", "pass", f"{len(text)} characters"))
    else:
        items.append(_item("text_part", "A plain-text part", "fail", "no body text at all"))
    size = len(html.encode("utf-8", "surrogatepass"))
    title = "HTML under Gmail's clipping size (~102 KB)"
    if not html:
        items.append(_item("html_size", title, "pass", "no HTML part"))
    elif size >= GMAIL_CLIP:
        items.append(_item("html_size", title, "fail", f"{size} bytes: Gmail clips it"))
    else:
        items.append(_item("html_size", title, "pass", f"{size} bytes"))
    return items


def _fields(msg: EmailMessage) -> list[dict[str, Any]]:
    items = []
    senders = _raw(msg, "From")
    addresses = getaddresses(senders) if senders else []
    if len(senders) != 1:
        items.append(_item("from", "A valid From", "fail", f"{len(senders)} From fields"))
    elif len(addresses) != 1 or not _ADDR_SPEC.match(addresses[0][1]):
        shown = senders[0].strip()[:100]
        items.append(_item("from", "A valid From", "fail", f"not one address: {shown!r}"))
    else:
        items.append(_item("from", "A valid From", "pass", addresses[0][1]))
    dates = _raw(msg, "Date")
    if len(dates) != 1:
        items.append(_item("date", "A valid Date", "fail", f"{len(dates)} Date fields"))
    else:
        try:
            parsedate_to_datetime(dates[0])
            items.append(_item("date", "A valid Date", "pass", dates[0].strip()[:100]))
        except (TypeError, ValueError, IndexError, OverflowError):
            why = f"cannot read {dates[0].strip()[:60]!r} (RFC 5322 3.3)"
            items.append(_item("date", "A valid Date", "fail", why))
    ids = _raw(msg, "Message-ID")
    if len(ids) != 1:
        items.append(
            _item("message_id", "A valid Message-ID", "fail", f"{len(ids)} Message-ID fields")
        )
    elif _MESSAGE_ID.match(ids[0]):
        items.append(_item("message_id", "A valid Message-ID", "pass", ids[0].strip()[:200]))
    else:
        why = f"not <id@domain>: {ids[0].strip()[:100]!r} (RFC 5322 3.6.4)"
        items.append(_item("message_id", "A valid Message-ID", "fail", why))
    return items


def checklist(msg: EmailMessage, auth: Explanation, text: str, html: str) -> dict[str, Any]:
    items = [
        *_authentication(auth),
        _unsubscribe(msg),
        *_parts(msg, text, html),
        *_fields(msg),
    ]
    failed = [i["id"] for i in items if i["status"] == "fail"]
    return {
        "passed": not failed and all(i["status"] == "pass" for i in items),
        "failed": failed,
        "items": items,
        "source": "Gmail and Yahoo sender requirements (2024); RFC 8058; RFC 5322 3.6",
    }
