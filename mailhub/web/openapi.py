"""The OpenAPI 3.1 description of /api/v1, served at /api/v1/openapi.json."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailhub import __version__

_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_ERROR = {"$ref": "#/components/responses/Error"}
_SEARCH = [
    {
        "name": "q",
        "in": "query",
        "schema": {"type": "string"},
        "description": "Search: from: to: cc: subject: has:attachment is:unread is:read "
        "is:flagged before:DATE after:DATE mailbox: folder: tag:, free text; -term negates.",
    },
    {"name": "mailbox", "in": "query", "schema": {"type": "string"}},
    {"name": "folder", "in": "query", "schema": {"type": "string"}},
    {"name": "tag", "in": "query", "schema": {"type": "string"}, "description": "as tag:"},
]

# Issue 15: tags (mailhub.web.tags) and webhooks (mailhub.web.webhooks).
_TAG_FIELDS: dict[str, Any] = {
    "tags": {"type": "array", "items": {"type": "string"}, "description": "sorted, lower case"},
    "tag_sources": {
        "type": "object",
        "description": "tag -> where it comes from: manual (an IMAP keyword), address "
        "(user+tag@), rule ([[web.tag]]); only manual tags can be removed",
        "additionalProperties": {
            "type": "array",
            "items": {"type": "string", "enum": ["manual", "address", "rule"]},
        },
    },
}
_TAGS_PATCH = {
    "type": "object",
    "properties": {
        "seen": {"type": "boolean"},
        "flagged": {"type": "boolean"},
        "tags": {
            "type": "object",
            "properties": {
                "add": {"type": "array", "items": {"type": "string"}, "maxItems": 50},
                "remove": {"type": "array", "items": {"type": "string"}, "maxItems": 50},
            },
        },
    },
}
_WEBHOOK_SCHEMAS: dict[str, Any] = {
    "Webhook": {
        "type": "object",
        "description": "One [[web.webhook]]: its counters and last 50 attempts, newest first",
        "properties": {
            "url": {"type": "string", "description": "a password in it shown as ***"},
            "signed": {"type": "boolean"},
            "filters": {"type": "object", "additionalProperties": {"type": "string"}},
            "queued": {"type": "integer"},
            "in_flight": {"type": ["string", "null"], "description": "a message id"},
            "delivered": {"type": "integer"},
            "failed_attempts": {"type": "integer"},
            "gave_up": {"type": "integer", "description": "max_attempts or max_age reached"},
            "dropped": {"type": "integer", "description": "the queue was full"},
            "attempts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "time": {"type": "string", "format": "date-time"},
                        "message": {"type": "string"},
                        "delivery": {"type": "string"},
                        "attempt": {"type": "integer"},
                        "status": {"type": ["integer", "null"]},
                        "latency_ms": {"type": ["number", "null"]},
                        "error": {"type": ["string", "null"]},
                        "outcome": {
                            "type": "string",
                            "enum": ["delivered", "retrying", "gave up", "dropped", "stopped"],
                        },
                    },
                },
            },
        },
    },
}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [schema, {"type": "null"}]}


_STRING_OR_NULL = {"type": ["string", "null"]}
_BOOL_OR_NULL = {"type": ["boolean", "null"]}
_RESULT = {"type": "string", "description": "The RFC 8601 2.7 result keyword, lower case"}
_WHY = {"type": "string", "description": "Why, in words: the checks' reason, else ours"}
_ALIGNMENT = {
    "type": ["string", "null"],
    "enum": ["strict", "relaxed", "no", None],
    "description": "strict: the same domain as From; relaxed: the same organizational "
    "domain only (aligned unless the record asks for strict); no; null: nothing to compare",
}

# The message's Authentication-Results (RFC 8601) from our own checks, explained
# (mailhub.checks.explain).
_AUTHENTICATION_SCHEMAS: dict[str, Any] = {
    "Authentication": {
        "type": "object",
        "description": "The top-most Authentication-Results field with the dev stack's own "
        "authserv-id, explained. checked=false (and only summary, authserv_id, other_servers "
        'set): the message has none ("Not checked: ..."). Fields other servers wrote are '
        "named in other_servers but not believed (anyone can write one).",
        "required": ["checked", "summary"],
        "properties": {
            "checked": {"type": "boolean"},
            "authserv_id": _STRING_OR_NULL,
            "summary": {"type": "string"},
            "bulk_sender": {
                **_BOOL_OR_NULL,
                "description": "true: SPF and DKIM pass and DMARC passes, as Gmail and Yahoo "
                "ask of bulk senders; false: they would not take it as such; null: cannot be "
                "said from these results. Their other rules (PTR, TLS, unsubscribe, spam "
                "rate) are not checked.",
            },
            "spf": _nullable(
                {
                    "type": "object",
                    "properties": {
                        "result": _RESULT,
                        "domain": _STRING_OR_NULL,
                        "identity": {
                            "type": ["string", "null"],
                            "enum": ["mailfrom", "helo", None],
                        },
                        "mailfrom": _STRING_OR_NULL,
                        "helo": _STRING_OR_NULL,
                        "why": _WHY,
                    },
                }
            ),
            "dkim": {
                "type": "array",
                "description": "One per signature (at most 20)",
                "items": {
                    "type": "object",
                    "properties": {
                        "result": _RESULT,
                        "domain": _STRING_OR_NULL,
                        "selector": _STRING_OR_NULL,
                        "algorithm": _STRING_OR_NULL,
                        "signature": {**_STRING_OR_NULL, "description": "The start of b="},
                        "why": _WHY,
                    },
                },
            },
            "dmarc": _nullable(
                {
                    "type": "object",
                    "properties": {
                        "result": _RESULT,
                        "policy": {
                            **_STRING_OR_NULL,
                            "description": "policy.dmarc: the policy applied after sp= and "
                            "pct= (none, quarantine, reject); none when DMARC passes",
                        },
                        "from_domain": _STRING_OR_NULL,
                        "spf_alignment": _ALIGNMENT,
                        "dkim_alignment": _ALIGNMENT,
                        "spf_aligned": _BOOL_OR_NULL,
                        "dkim_aligned": _BOOL_OR_NULL,
                        "why": _WHY,
                    },
                }
            ),
            "arc": _nullable(
                {
                    "type": "object",
                    "properties": {
                        "result": _RESULT,
                        "instances": {"type": ["integer", "null"]},
                        "why": _WHY,
                    },
                }
            ),
            "other_methods": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "method": {"type": "string"},
                        "result": _RESULT,
                        "why": {"type": "string"},
                        "properties": {"type": "object"},
                    },
                },
            },
            "other_servers": {"type": "array", "items": {"type": "string"}},
        },
    }
}


# rspamd's score for a message (mailhub.web.spam, issue 15).
_SPAM_SCHEMAS: dict[str, Any] = {
    "SpamScore": {
        "type": "object",
        "description": "rspamd's verdict, asked when this is requested (never at delivery) and "
        "kept in memory: cached=true is the kept answer, ?refresh=1 asks again. "
        "configured=false: no [checks] rspamd (why says how to set it); scanned=false: the "
        "message was not sent (why). rspamd refusing, failing or answering nonsense is a 502, "
        "slower than [checks] rspamd_timeout a 504: {error, status, configured, rspamd}.",
        "required": ["configured"],
        "properties": {
            "configured": {"type": "boolean"},
            "scanned": {"type": "boolean"},
            "why": {"type": "string"},
            "rspamd": {"type": "string", "description": "The rspamd asked (its URL)"},
            "score": {"type": "number"},
            "required_score": {
                "type": "number",
                "description": "The score at which rspamd takes its strongest action",
            },
            "action": {
                "type": "string",
                "description": "no action, greylist, add header, rewrite subject, soft reject, "
                "reject",
            },
            "is_spam": {
                "type": "boolean",
                "description": "The action is reject, add header or rewrite subject",
            },
            "skipped": {
                "type": "boolean",
                "description": "rspamd stopped early: a pre-filter decided (GTUBE, settings)",
            },
            "symbols": {
                "type": "array",
                "description": "The rules that fired, heaviest first",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "score": {"type": "number"},
                        "description": {"type": "string"},
                        "options": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
            "messages": {"type": "object", "description": "rspamd's messages (smtp_message)"},
            "time": {"type": ["number", "null"], "description": "Seconds rspamd took"},
            "asked": {
                "type": "object",
                "description": "The SMTP facts rspamd was told, from the copy's trace fields",
                "properties": {
                    "ip": _STRING_OR_NULL,
                    "helo": _STRING_OR_NULL,
                    "from": _STRING_OR_NULL,
                    "rcpt": {"type": "array", "items": {"type": "string"}},
                    "queue_id": _STRING_OR_NULL,
                    "user": _STRING_OR_NULL,
                },
            },
            "scanned_at": {"type": "string", "format": "date-time"},
            "cached": {"type": "boolean"},
        },
    }
}


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or {"type": "object"}}},
    }


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    params: Sequence[Any] = (),
    body: bool = False,
    errors: tuple[str, ...] = ("400", "404"),
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": ok}}
    if params:
        op["parameters"] = list(params)
    if body:
        op["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
    for code in errors:
        op["responses"][code] = _ERROR
    return op


# --- the lab: checks, links and codes of one message (issue 15; mailhub.web.lab) ---------------

_CHECK_ITEM = {
    "type": "object",
    "properties": {
        "id": {
            "type": "string",
            "enum": [
                "spf_or_dkim", "dmarc", "one_click_unsubscribe", "text_part", "html_size",
                "from", "date", "message_id",
            ],
        },
        "title": {"type": "string"},
        "status": {"type": "string", "enum": ["pass", "fail", "warn", "unknown"]},
        "detail": {"type": "string"},
    },
}  # fmt: skip
_LAB_SCHEMAS: dict[str, Any] = {
    "Compatibility": {
        "type": ["object", "null"],
        "description": "Which HTML/CSS features the HTML part uses (a real parse, bounded by "
        "limits; truncated=true: only part was read) and which mail clients lack them, from "
        "caniemail.com's data (MIT; data.source, data.updated). score: over every (feature, "
        "client) pair with a known result, supported 1, partial 1/2, unsupported 0, the mean "
        "in percent; each client's score the same over its own pairs. null: no HTML part.",
        "properties": {
            "score": {"type": ["number", "null"]},
            "features": {
                "type": "array",
                "description": "Most unsupported first",
                "items": {
                    "type": "object",
                    "properties": {
                        "slug": {"type": "string"},
                        "title": {"type": "string"},
                        "category": {"type": "string"},
                        "url": {"type": "string"},
                        "count": {"type": "integer"},
                        "supported": {"type": "integer"},
                        "partial": {"type": "array", "items": {"type": "string"}},
                        "unsupported": {"type": "array", "items": {"type": "string"}},
                        "unknown": {"type": "integer"},
                        "notes": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
            "clients": {
                "type": "array",
                "description": "Gmail, Outlook, Apple Mail, Yahoo first; feature slugs each",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "score": {"type": ["number", "null"]},
                        "unsupported": {"type": "array", "items": {"type": "string"}},
                        "partial": {"type": "array", "items": {"type": "string"}},
                        "unknown": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
            "truncated": {"type": "boolean"},
            "limits": {"type": "object"},
            "html_size": {"type": "integer"},
            "data": {"type": "object"},
        },
    },
    "Checklist": {
        "type": "object",
        "description": "The Gmail/Yahoo 2024 bulk-sender rules on this message: SPF or DKIM "
        "pass and DMARC pass (from our own Authentication-Results; unknown without one), "
        "one-click unsubscribe (RFC 8058: an https List-Unsubscribe, List-Unsubscribe-Post: "
        "List-Unsubscribe=One-Click, both signed when there is a DKIM signature), a text part, "
        "HTML under ~102 KB (Gmail clips), valid From, Date, Message-ID (RFC 5322 3.6).",
        "properties": {
            "passed": {"type": "boolean"},
            "failed": {"type": "array", "items": {"type": "string"}},
            "items": {"type": "array", "items": _CHECK_ITEM},
            "source": {"type": "string", "description": "Where the rules come from"},
        },
    },
    "Links": {
        "type": "object",
        "description": "Every link and image URL of the text and HTML parts, in order, with "
        "anchor text (an image link: its alt text). At most `limit` listed; `total` counts all.",
        "properties": {
            "id": {"type": "string", "description": "The message's (not in /checks)"},
            "total": {"type": "integer"},
            "listed": {"type": "integer"},
            "truncated": {"type": "boolean"},
            "limit": {"type": "integer"},
            "html_truncated": {
                "type": "boolean",
                "description": "Only the first MiB of the HTML part was read",
            },
            "links": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "url": {"type": "string"},
                        "text": {"type": "string"},
                        "kind": {"type": "string", "enum": ["link", "image"]},
                        "part": {"type": "string", "enum": ["html", "text"]},
                        "check": {
                            "type": ["object", "null"],
                            "description": "With check: result ok|broken|error|refused, "
                            "status, reason, final_url, redirects; null: not checked "
                            "(over the cap, or not http)",
                        },
                    },
                },
            },
            "check": {
                "type": ["object", "null"],
                "description": "How the check went: checked, skipped, limit (URLs), timeout "
                "(seconds per request), deadline (seconds for all), private_allowed ([web] "
                "link_check_private); null: not asked",
            },
        },
    },
    "Codes": {
        "type": "object",
        "description": "One-time codes (4-8 digits, or 4-12 capitals and digits) near a word "
        "such as code, verification, OTP, PIN, passcode, Bestätigungscode; not years, dates, "
        "prices, phone or order numbers, nor anything in a URL. Best first: subject, text, "
        "HTML.",
        "properties": {
            "id": {"type": "string"},
            "code": {"type": ["string", "null"], "description": "The best one"},
            "limit": {"type": "integer", "description": "At most this many listed"},
            "codes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string"},
                        "written": {"type": "string"},
                        "kind": {"type": "string", "enum": ["numeric", "alphanumeric"]},
                        "source": {"type": "string", "enum": ["subject", "text", "html"]},
                        "keyword": {"type": "string"},
                        "context": {"type": "string"},
                    },
                },
            },
        },
    },
    "Checks": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "compatibility": {"$ref": "#/components/schemas/Compatibility"},
            "checklist": {"$ref": "#/components/schemas/Checklist"},
            "links": {"$ref": "#/components/schemas/Links"},
            "codes": {"$ref": "#/components/schemas/Codes"},
            "links_check_url": {"type": "string"},
            "html_url": {"type": "string"},
        },
    },
}
_LINK_CHECK_NOTE = (
    "Checking is off unless asked; each unique http(s) URL once, at most 50, 8 at a time, "
    "8 s each, redirects followed by hand (5 at most), no new request after 30 s. Loopback, "
    "private, link-local and other non-public targets (and localhost names) are refused "
    "unless [web] link_check_private = true; a name is resolved once and the connection "
    "goes to the address checked (no DNS rebinding). 503: too many checks running."
)
_LAB_PATHS: dict[str, Any] = {
    "/api/v1/messages/{id}/checks": {
        "get": _op(
            "Checks on one message: HTML compatibility (caniemail), the bulk-sender checklist, "
            "links (unchecked) and one-time codes",
            _json("The checks", {"$ref": "#/components/schemas/Checks"}),
            params=[_ID],
        )
    },
    "/api/v1/messages/{id}/links": {
        "get": _op(
            "Links and image URLs with anchor text; check=1 checks them. " + _LINK_CHECK_NOTE,
            _json("The links", {"$ref": "#/components/schemas/Links"}),
            params=[_ID, {"name": "check", "in": "query", "schema": {"type": "string"}}],
            errors=("400", "404", "503"),
        )
    },
    "/api/v1/messages/{id}/links/check": {
        "post": _op(
            "Check the links (as GET .../links?check=1). " + _LINK_CHECK_NOTE,
            _json("The links, checked", {"$ref": "#/components/schemas/Links"}),
            params=[_ID],
            errors=("404", "503"),
        )
    },
    "/api/v1/messages/{id}/codes": {
        "get": _op(
            "One-time codes in the message, best first",
            _json("The codes", {"$ref": "#/components/schemas/Codes"}),
            params=[_ID],
        )
    },
}


def openapi() -> dict[str, Any]:
    summary_list = {"$ref": "#/components/schemas/MessageList"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mailhub",
            "version": __version__,
            "description": "Caught mail: list, read, search, wait for, delete, release. "
            "Errors are JSON {error, status}. List and wait answers carry a cursor: pass it "
            "as since= to /wait to get exactly the messages that arrived after it.",
        },
        "components": {
            "responses": {"Error": _json("An error", {"$ref": "#/components/schemas/Error"})},
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "status"],
                    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
                },
                "Address": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "address": {"type": "string"}},
                },
                "Summary": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "seq": {"type": "integer"},
                        "mailbox": {"type": "string"},
                        "folder": {"type": "string"},
                        "size": {"type": "integer"},
                        "received": {"type": "string", "format": "date-time"},
                        "date": {"type": ["string", "null"], "format": "date-time"},
                        "seen": {"type": "boolean"},
                        "flagged": {"type": "boolean"},
                        "from": {"$ref": "#/components/schemas/Address"},
                        "to": {"type": "array", "items": {"$ref": "#/components/schemas/Address"}},
                        "cc": {"type": "array", "items": {"$ref": "#/components/schemas/Address"}},
                        "subject": {"type": "string"},
                        "message_id": {"type": "string"},
                        "attachments": {"type": "integer"},
                        "has_attachments": {"type": "boolean"},
                        "snippet": {"type": "string"},
                        "auth": {
                            "type": ["object", "null"],
                            "description": "The list's badge: the results of the top-most "
                            "Authentication-Results field when it is ours ('' for a method it "
                            "lacks; dkim: pass if any signature passed); null otherwise. The "
                            "single message's `authentication` explains them.",
                            "properties": {
                                "spf": {"type": "string"},
                                "dkim": {"type": "string"},
                                "dmarc": {"type": "string"},
                            },
                        },
                        **_TAG_FIELDS,
                    },
                },
                "Message": {
                    "description": "One message: the summary's fields and headers, text, html, "
                    "attachments, envelope, defects and authentication. Only this answer "
                    "carries `authentication` (lists, waits and events: the `auth` badge).",
                    "allOf": [
                        {"$ref": "#/components/schemas/Summary"},
                        {
                            "type": "object",
                            "properties": {
                                "authentication": {"$ref": "#/components/schemas/Authentication"}
                            },
                        },
                    ],
                },
                **_AUTHENTICATION_SCHEMAS,
                **_SANDBOX_SCHEMAS,
                **_LAB_SCHEMAS,
                **_SPAM_SCHEMAS,
                **_WEBHOOK_SCHEMAS,
                "MessageList": {
                    "type": "object",
                    "properties": {
                        "total": {"type": "integer"},
                        "unread": {"type": "integer"},
                        "start": {"type": "integer"},
                        "count": {"type": "integer"},
                        "cursor": {"type": "string"},
                        "messages": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Summary"},
                        },
                    },
                },
            },
        },
        "paths": {
            "/api/v1/health": {"get": _op("Liveness", _json("Alive"), errors=())},
            "/api/v1/ready": {"get": _op("Readiness", _json("Ready"), errors=("503",))},
            "/api/v1/info": {
                "get": _op("Server, user, cursor, retention (pruned)", _json("Info"), errors=())
            },
            "/api/v1/mailboxes": {"get": _op("Mailboxes with counts", _json("Mailboxes"))},
            "/api/v1/messages": {
                "get": _op(
                    "Messages, newest first",
                    _json("A page", summary_list),
                    params=[
                        *_SEARCH,
                        {"name": "start", "in": "query", "schema": {"type": "integer"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                    ],
                ),
                "delete": _op(
                    "Delete messages: body {ids: [...]}, or all that match q/mailbox (all)",
                    _json("Deleted ids"),
                    params=_SEARCH,
                    body=True,
                ),
            },
            "/api/v1/messages/{id}": {
                "get": _op(
                    "One message: headers, text, sanitised html, attachments, envelope, "
                    "authentication results",
                    _json("The message", {"$ref": "#/components/schemas/Message"}),
                    params=[_ID],
                ),
                "patch": {
                    **_op(
                        "Mark seen/unseen, flagged, add/remove manual tags: {seen: bool, "
                        "flagged: bool, tags: {add: [...], remove: [...]}}; removing a tag "
                        "that only a rule or the address gives: 409",
                        _json("The summary"),
                        params=[_ID],
                        errors=("400", "404", "409"),
                    ),
                    "requestBody": {"content": {"application/json": {"schema": _TAGS_PATCH}}},
                },
                "delete": _op("Delete", _json("Deleted"), params=[_ID]),
            },
            "/api/v1/messages/{id}/raw": {
                "get": _op(
                    "Raw source (download=1: as message/rfc822 attachment)",
                    {"description": "Source", "content": {"text/plain": {}}},
                    params=[_ID],
                )
            },
            "/api/v1/messages/{id}/html": {
                "get": _op(
                    "Sanitised HTML document (remote=1 allows remote images)",
                    {"description": "HTML", "content": {"text/html": {}}},
                    params=[_ID],
                )
            },
            "/api/v1/messages/{id}/parts/{part}": {
                "get": _op(
                    "Download a part (attachment)",
                    {"description": "Bytes", "content": {"application/octet-stream": {}}},
                    params=[
                        _ID,
                        {
                            "name": "part",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                )
            },
            "/api/v1/messages/{id}/release": {
                "post": _op(
                    "Relay to {host, port, to?: [...], from?}",
                    _json("Per-recipient results"),
                    params=[_ID],
                    body=True,
                    errors=("400", "403", "404", "502"),
                )
            },
            **_LAB_PATHS,
            "/api/v1/messages/{id}/spam": {
                "get": _op(
                    "rspamd's spam score: score, action, symbols (asked now or kept; "
                    "refresh=1 asks again)",
                    _json("The score", {"$ref": "#/components/schemas/SpamScore"}),
                    params=[
                        _ID,
                        {"name": "refresh", "in": "query", "schema": {"type": "string"}},
                    ],
                    errors=("404", "502", "504"),
                )
            },
            "/api/v1/wait": {
                "get": _op(
                    "Wait for the next matching message after the cursor `since` (long poll). "
                    "Returns at once if one arrived after it; 408 with the cursor on timeout.",
                    _json("The matching messages and the new cursor", summary_list),
                    params=[
                        *_SEARCH,
                        {"name": "to", "in": "query", "schema": {"type": "string"}},
                        {"name": "from", "in": "query", "schema": {"type": "string"}},
                        {"name": "subject", "in": "query", "schema": {"type": "string"}},
                        {"name": "since", "in": "query", "schema": {"type": "string"}},
                        {"name": "timeout", "in": "query", "schema": {"type": "number"}},
                    ],
                    errors=("400", "408"),
                )
            },
            "/api/v1/events": {
                "get": _op(
                    "Server-Sent Events: new, flags, deleted",
                    {"description": "Event stream", "content": {"text/event-stream": {}}},
                    errors=(),
                )
            },
            "/api/v1/webhooks": {
                "get": _op(
                    "Webhooks and their delivery log (admins)",
                    _json(
                        "The hooks",
                        {
                            "type": "object",
                            "properties": {
                                "webhooks": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Webhook"},
                                }
                            },
                        },
                    ),
                    errors=("403",),
                )
            },
            "/api/v1/faults": {
                "get": _op("Fault rules", _json("Rules"), errors=("403", "404")),
                "post": _op(
                    "Add a fault rule", _json("The rule"), body=True, errors=("400", "403", "404")
                ),
                "delete": _op("Remove all fault rules", _json("Removed"), errors=("403", "404")),
            },
            "/api/v1/faults/{id}": {
                "get": _op("One rule", _json("The rule"), params=[_ID], errors=("403", "404")),
                "delete": _op(
                    "Remove one rule", _json("Removed"), params=[_ID], errors=("403", "404")
                ),
            },
            **_sandbox_paths(summary_list),
        },
        "security": [{"basic": []}, {}],
    }


# --- sandboxes: an isolated inbox per test (mailhub.web.sandboxes, issue 15) ---------------------

_SANDBOX_SCHEMAS: dict[str, Any] = {
    "Sandbox": {
        "type": "object",
        "description": "An isolated inbox: mail sent with SMTP AUTH as username (any "
        "recipients) is kept here only; IMAP and POP3 logins with it see only this mail. "
        "password: only in the answer to POST (only its hash is kept).",
        "required": ["id", "username", "mailbox", "messages"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "created": {"type": "string", "format": "date-time"},
            "expires": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "When it is deleted (POST with ttl: seconds); null: never",
            },
            "username": {"type": "string", "description": "<id>@sandbox.invalid"},
            "password": {"type": "string"},
            "mailbox": {"type": "string"},
            "messages": {"type": "integer"},
            "unread": {"type": "integer"},
            "listeners": {
                "type": "object",
                "description": "Listener kind (smtp, submission, imap, pop3, ...) -> where",
                "additionalProperties": {
                    "type": "object",
                    "properties": {"host": {"type": "string"}, "port": {"type": "integer"}},
                },
            },
            "urls": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
}


def _sandbox_paths(summary_list: dict[str, Any]) -> dict[str, Any]:
    box = _json("The sandbox", {"$ref": "#/components/schemas/Sandbox"})
    create = _op(
        "Make a sandbox: body {name?, ttl? (seconds until it is deleted)}. 201 with its "
        "credentials (the password only here); 409 when [sandboxes] max exist",
        box,
        body=True,
        errors=("400", "403", "409", "415"),
    )
    create["responses"]["201"] = create["responses"].pop("200")
    sandbox_id = {**_ID, "name": "sandbox"}
    scoped = [sandbox_id]
    return {
        "/api/v1/sandboxes": {
            "get": _op("Every sandbox (admins)", _json("Sandboxes"), errors=("403",)),
            "post": create,
        },
        "/api/v1/sandboxes/{sandbox}": {
            "get": _op("One sandbox (no password)", box, params=scoped),
            "delete": _op(
                "Remove the sandbox, its mail and its fault rules",
                _json("{deleted: id, messages: n}"),
                params=scoped,
            ),
        },
        "/api/v1/sandboxes/{sandbox}/messages": {
            "get": _op(
                "As /api/v1/messages, on this sandbox's mail only",
                _json("A page", summary_list),
                params=[*scoped, *_SEARCH],
            ),
            "delete": _op(
                "As DELETE /api/v1/messages, on this sandbox's mail only",
                _json("Deleted ids"),
                params=[*scoped, *_SEARCH],
                body=True,
            ),
        },
        "/api/v1/sandboxes/{sandbox}/messages/{id}": {
            "get": _op(
                "As /api/v1/messages/{id} (also .../raw, .../html, .../parts/{part}, PATCH, "
                "DELETE), for a message of this sandbox",
                _json("The message", {"$ref": "#/components/schemas/Message"}),
                params=[*scoped, _ID],
            ),
        },
        "/api/v1/sandboxes/{sandbox}/wait": {
            "get": _op(
                "As /api/v1/wait (to, from, subject, since, timeout), on this sandbox's mail",
                _json("The matching messages and the new cursor", summary_list),
                params=[*scoped, *_SEARCH],
                errors=("400", "404", "408"),
            ),
        },
        "/api/v1/sandboxes/{sandbox}/events": {
            "get": _op(
                "As /api/v1/events, on this sandbox's mail",
                {"description": "Event stream", "content": {"text/event-stream": {}}},
                params=scoped,
            ),
        },
        "/api/v1/sandboxes/{sandbox}/faults": {
            "get": _op("This sandbox's fault rules", _json("Rules"), params=scoped),
            "post": _op(
                "A fault rule for this sandbox's SMTP sessions only (login = its username; "
                "stages mail, rcpt, data)",
                _json("The rule"),
                params=scoped,
                body=True,
            ),
            "delete": _op("Remove its fault rules", _json("How many"), params=scoped),
        },
        "/api/v1/sandboxes/{sandbox}/faults/{id}": {
            "get": _op("One of its rules", _json("The rule"), params=[*scoped, _ID]),
            "delete": _op("Remove one of its rules", _json("Removed"), params=[*scoped, _ID]),
        },
    }
