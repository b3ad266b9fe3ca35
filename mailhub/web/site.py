"""The twisted.web Site: the page (static files), the API, login, and the headers every answer
carries. One ``Root`` resource routes by path after the (possibly asynchronous) login check."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from mailhub.checks.inbound import our_authserv_id
from mailhub.net import IStreamTransport
from mailhub.web.access import Access, HostCheck, LoginBusy, LoginRefused, LoginRequired, Viewer
from mailhub.web.api import Api, ApiError, error_body, unexpected
from mailhub.web.feed import MailFeed
from mailhub.web.sandboxes import SandboxApi
from mailhub.web.spam import spam_scores
from mailhub.web.tags import Tagger
from mailhub.web.webhooks import AgentPoster, Webhooks

log = Logger()

STATIC = {
    "": ("index.html", "text/html; charset=utf-8"),
    "index.html": ("index.html", "text/html; charset=utf-8"),
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "app.css": ("app.css", "text/css; charset=utf-8"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),
}
# The page runs only its own script; messages are shown in sandboxed frames from /api/v1.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
UNSAFE = (b"POST", b"PUT", b"PATCH", b"DELETE")
# Reason phrases Twisted's table lacks (it would send "Unknown Status").
REASONS = {421: b"Misdirected Request"}


def _static(name: str) -> bytes:
    return resources.files("mailhub.web").joinpath("static", name).read_bytes()


class Root(Resource):
    isLeaf = True

    def __init__(self, api: Api, access: Access, hosts: HostCheck | None = None) -> None:
        super().__init__()
        self.api, self.access = api, access
        self.hosts = hosts if hosts is not None else HostCheck(())
        self.files = {name: (_static(f), kind) for name, (f, kind) in STATIC.items()}

    def render(self, request: IRequest) -> Any:
        return self._render(cast(Request, request))  # what Site makes (IRequest lacks some)

    def _render(self, request: Request) -> Any:
        request.setHeader("X-Content-Type-Options", "nosniff")
        request.setHeader("Referrer-Policy", "no-referrer")
        request.setHeader("Cache-Control", "no-store")
        assert request.postpath is not None  # set by Site's resource traversal
        path = [p.decode("utf-8", "replace") for p in request.postpath]
        if path and path[-1] == "" and len(path) > 1:
            path = path[:-1]
        is_api = path[:2] == ["api", "v1"] or path[:1] in (["livez"], ["readyz"])
        refused = self._host_refusal(request)
        if refused is not None:
            self._error(request, refused)
            return NOT_DONE_YET
        d = Deferred.fromCoroutine(self._serve(request, path, is_api))
        d.addErrback(lambda f: self._error(request, unexpected(f)))
        return NOT_DONE_YET

    async def _serve(self, request: Request, path: list[str], is_api: bool) -> None:
        if path in (["livez"], ["readyz"]):
            path = ["api", "v1", path[0]]
        if path[2:3] in (["health"], ["livez"]) and len(path) == 3:
            viewer = None  # liveness needs no login: container health checks have none
        else:
            viewer = await self._viewer(request)
            if viewer is None:
                return
        if request.method in UNSAFE and not self._same_origin(request):
            self._error(request, ApiError(403, "cross-site request refused"))
            return
        if not is_api:
            self._page(request, path)
            return
        try:
            result = await self.api.handle(request, viewer or Viewer(None, False), path[2:])
        except ApiError as e:
            self._error(request, e)
            return
        if result is not None and not request.finished:
            self._json(request, result)

    async def _viewer(self, request: Request) -> Viewer | None:
        try:
            return await self.access.viewer(request)
        except LoginRequired:
            request.setHeader("WWW-Authenticate", 'Basic realm="mailhub", charset="UTF-8"')
            self._error(request, ApiError(401, "log in with your mail address and password"))
        except LoginBusy as e:
            request.setHeader("Retry-After", "5")
            self._error(request, ApiError(503, str(e)))
        except LoginRefused as e:
            self._error(request, ApiError(403, str(e)))
        return None

    def _host_refusal(self, request: Request) -> ApiError | None:
        """Before anything else: one Host header (RFC 9112 3.2), naming us (HostCheck)."""
        hosts = request.requestHeaders.getRawHeaders(b"host") or []
        if len(hosts) > 1 or (not hosts and request.clientproto != b"HTTP/1.0"):
            return ApiError(400, "a request needs exactly one Host header (RFC 9112 3.2)")
        if hosts and not self.hosts.allows(request):
            shown = hosts[0].decode("latin-1")[:100]
            return ApiError(
                421,
                f"this server does not answer to Host {shown!r} (DNS rebinding protection): "
                "use localhost or its address, or add the name to [web] allowed_hosts "
                "(dev stack: --allowed-host)",
            )
        return None

    def _same_origin(self, request: Request) -> bool:
        """CSRF: a browser names the page that sent a request in Origin; ours must match. The
        Host it is compared with has passed HostCheck, so a rebound name cannot match itself."""
        origin = request.getHeader("origin")
        if origin is None:
            return True  # not a browser's cross-site request (curl, tests, old browsers' GETs)
        host = request.getHeader("host")
        if host is None or not self.hosts.allows(request):
            return False
        scheme = "https" if request.isSecure() else "http"
        return origin == f"{scheme}://{host}"

    def _page(self, request: Request, path: list[str]) -> None:
        name = "/".join(path)
        found = self.files.get(name)
        if found is None:
            self._error(request, ApiError(404, "no such page"))
            return
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader("Allow", "GET, HEAD")
            self._error(request, ApiError(405, "the page is read-only"))
            return
        data, kind = found
        request.setHeader("Content-Type", kind)
        request.setHeader("Content-Security-Policy", PAGE_CSP)
        request.setHeader("X-Frame-Options", "DENY")
        request.setHeader("Content-Length", str(len(data)))
        if request.method != b"HEAD":
            request.write(data)
        request.finish()

    def _json(self, request: Request, body: Any, status: int | None = None) -> None:
        if getattr(request, "_disconnected", False):
            return  # a long poll whose client went away
        data = json.dumps(body).encode()
        if status is not None:
            request.setResponseCode(status)
        request.setHeader("Content-Type", "application/json; charset=utf-8")
        request.setHeader("Content-Length", str(len(data)))
        if request.method != b"HEAD":
            request.write(data)
        request.finish()

    def _error(self, request: Request, error: ApiError) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        if error.status == 499:
            return
        request.setResponseCode(error.status, REASONS.get(error.status))
        data = error_body(error.status, error.message, **error.extra)
        request.setHeader("Content-Type", "application/json; charset=utf-8")
        request.setHeader("Content-Length", str(len(data)))
        if request.method != b"HEAD":
            request.write(data)
        request.finish()


class _Discard:
    def write(self, data: bytes) -> None:
        pass

    def seek(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass


class WebRequest(Request):
    """Request bodies beyond ``max_body`` are refused with 413 as soon as they are announced
    (Content-Length) or pass the limit (chunked), and not stored: the API takes small JSON."""

    max_body = 1024 * 1024
    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if not self._refused and self._received > self.max_body:
            self._refuse()
        if not self._refused:
            super().handleContentChunk(data)

    def _refuse(self) -> None:
        self._refused = True
        self.content = _Discard()
        body = error_body(413, f"request body larger than {self.max_body} bytes")
        head = (
            "HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        transport = self.channel.transport
        assert transport is not None  # a request being received has its connection
        transport.write(head.encode() + body)
        transport.loseConnection()

    def process(self) -> None:
        if not self._refused:
            super().process()


class WebChannel(HTTPChannel):
    """HTTPChannel whose over-long request line or header section gets the API's JSON error
    with the status RFC 9110 gives it - 414 URI Too Long (15.5.15) for the request line, 431
    Request Header Fields Too Large (RFC 6585 5) for the headers - instead of a bare 400.

    Limits: ``max_request_line`` octets of request line, ``max_header_bytes`` octets of header
    lines (each line's length without CRLF, summed), ``maxHeaders`` header fields. Twisted's
    own total limit (``totalHeadersSize``) is set above their sum, so these answer first."""

    transport: IStreamTransport  # set by connectionMade, before anything below runs
    max_request_line = 16 * 1024
    max_header_bytes = 16 * 1024
    maxHeaders = 500
    totalHeadersSize = max_request_line + max_header_bytes + 1
    # LineReceiver's per-line limit: a line longer than this never reaches lineReceived (it
    # may not even have its CRLF yet) but lineLengthExceeded.
    MAX_LENGTH = max(max_request_line, max_header_bytes)
    _header_bytes = 0
    _refused = False

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._receivedHeaderSize == 0 and line:  # a request's first line
            self._header_bytes = 0
            if len(line) > self.max_request_line:
                self._refuse(414, f"request line longer than {self.max_request_line} octets")
                return
        elif line:
            self._header_bytes += len(line)
            if self._header_bytes > self.max_header_bytes:
                self._refuse(431, f"request headers longer than {self.max_header_bytes} octets")
                return
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self._refuse(431, f"more than {self.maxHeaders} request header fields")
            return False
        return bool(super().headerReceived(line))

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._receivedHeaderSize == 0:
            self._refuse(414, f"request line longer than {self.max_request_line} octets")
        else:
            self._refuse(431, f"a request header line longer than {self.MAX_LENGTH} octets")

    def _refuse(self, status: int, message: str) -> None:
        # The request was not read to its end: answer, then close (RFC 9112 9.6).
        self._refused = True
        self.setRawMode()  # whatever else comes is ignored (rawDataReceived below)
        body = error_body(status, message)
        reason = {414: "URI Too Long", 431: "Request Header Fields Too Large"}[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.loseConnection()

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)


class WebSite(Site):
    """Starts the mail feed with the first listening port and stops it with the last."""

    requestFactory = WebRequest
    # ignore: Twisted types it as its private _GenericHTTPChannelProtocol wrapper's maker
    protocol = WebChannel  # type: ignore[assignment]

    def __init__(self, root: Root, feed: MailFeed) -> None:
        super().__init__(root)
        self.feed, self.api = feed, root.api
        self.noisy = False

    def startFactory(self) -> None:
        super().startFactory()
        if not self.feed.running:
            self.feed.startService()
        if self.api.webhooks is not None:
            self.api.webhooks.start()  # after the feed's first look: mail already there is not new

    def stopFactory(self) -> None:
        self.api.close_streams()
        if self.api.webhooks is not None:
            self.api.webhooks.stop()
        if self.feed.running:
            self.feed.stopService()
        super().stopFactory()


def make_site(shared: Any, clock: IReactorTime | None = None) -> WebSite:
    """The web listener's factory from ``mailhub.service.Shared``."""
    if clock is None:
        from twisted.internet import reactor

        clock = cast(IReactorTime, reactor)  # the installed reactor
    config = shared.config
    feed = MailFeed(
        shared.store,
        clock,
        poll_interval=config.web.poll_interval,
        changes=getattr(shared, "changes", None),  # the process's, else the feed makes its own
    )

    def ready() -> str | None:
        if not config.mail_dir.is_dir():
            return f"the mail directory {config.mail_dir} is missing"
        return None

    api = Api(
        feed,
        clock,
        hostname=config.hostname,
        max_wait=config.web.max_wait,
        faults=getattr(shared, "faults", None),
        ready=ready,
        authserv_id=our_authserv_id(config),  # whose Authentication-Results the page believes
        spam=spam_scores(config, clock),
    )
    sandboxes = getattr(shared, "sandboxes", None)
    if sandboxes is not None:
        api.sandboxes = SandboxApi(api, sandboxes, getattr(shared, "listening", None))
    api.lab.configure(link_check_private=config.web.link_check_private)
    api.retention = getattr(shared, "retention", None)  # the dev stack's pruning counts
    # Issue 15: [[web.tag]] rules (a bad match is a ConfigError here) and [[web.webhook]]s.
    api.tagger = Tagger.from_config(config)
    if config.web.webhooks:
        api.webhooks = Webhooks(
            feed, clock, config.web.webhooks, api.summary_json, AgentPoster(clock)
        )
    access = Access(
        login=config.web.login,
        admins=config.web.admins,
        portal=shared.portal,
        throttle=shared.throttle,
        clock=clock,
    )
    if config.web.login and shared.users is None:
        log.warn("[web] login is on but there is no [files] users: nobody can log in to the page")
    hosts = HostCheck((config.hostname, *config.web.allowed_hosts))
    return WebSite(Root(api, access, hosts), feed)
