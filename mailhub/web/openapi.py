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
                        **_TAG_FIELDS,
                    },
                },
                "Message": {
                    "description": "One message: the summary's fields and headers, text, html, "
                    "attachments, envelope, defects and authentication. Only this answer "
                    "carries `authentication` (lists, waits and events stay light).",
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
            "/api/v1/info": {"get": _op("Server, user and cursor", _json("Info"), errors=())},
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
        },
        "security": [{"basic": []}, {}],
    }
