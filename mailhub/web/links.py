"""Every link and image URL of a message, with its anchor text, and checking them on request.

Extraction: the HTML part through the stdlib's ``html.parser`` (``<a href>``, ``<area href>``,
``<img src>``, ``srcset``, ``background=``, CSS ``url()``), the text part by a URL pattern.
At most MAX_LINKS are listed; the answer gives the total and says when it cut the list.

Checking (only when the developer asks): http and https URLs, each unique one once, at most
MAX_CHECK of them, CONCURRENCY at a time, each with a timeout. A target on loopback, a private,
link-local, shared or otherwise not globally routed address (and ``localhost`` names, RFC 6761
6.3) is refused unless ``[web] link_check_private`` allows it. The name is resolved first, every
address it gives must be allowed, and the connection goes to the very address that was checked
(the Host header and TLS name stay the URL's): a DNS answer that changes between the check and
the connect (rebinding) cannot steer the request to loopback. Redirects are followed by hand,
each hop checked again, at most MAX_REDIRECTS.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

from hyperlink import URL
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.defer import TimeoutError as NoAnswer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import (
    IHostResolution,
    IReactorTime,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from mailhub import __version__

MAX_LINKS = 1000  # links listed per message; more are counted, not listed
MAX_HTML = 1024 * 1024  # characters of HTML parsed (as mailhub.web.compat)
MAX_TEXT = 200  # characters of anchor text kept
MAX_CHECK = 50  # unique URLs checked per request
CONCURRENCY = 8
TIMEOUT = 8.0  # seconds per request (each redirect hop is a request)
MAX_REDIRECTS = 5
DEADLINE = 30.0  # seconds for a whole check_all: no new request starts after it
MAX_URL = 2048  # longer URLs are listed but not checked

T = TypeVar("T")

_TEXT_URL = re.compile(r"""\b(?:https?://|www\.)[^\s<>"'`{}|\\^\[\]]+""", re.I)
_CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)""", re.I)
_TRAILING = ".,;:!?)]}'\""


@dataclass(frozen=True)
class Link:
    url: str
    text: str  # anchor text (alt text of an image in the anchor), "" for images and text URLs
    kind: str  # "link" or "image"
    part: str  # "html" or "text"


@dataclass
class Links:
    links: list[Link] = field(default_factory=list)
    total: int = 0
    html_truncated: bool = False  # only the first MAX_HTML characters were read

    def add(self, link: Link) -> None:
        self.total += 1
        if len(self.links) < MAX_LINKS:
            self.links.append(link)

    def json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "listed": len(self.links),
            "truncated": self.total > len(self.links),
            "limit": MAX_LINKS,
            "html_truncated": self.html_truncated,
            "links": [{**asdict(link), "check": None} for link in self.links],
            "check": None,  # filled in when the links are checked (mailhub.web.lab)
        }


class _Anchors(HTMLParser):
    def __init__(self, found: Links) -> None:
        super().__init__(convert_charrefs=True)
        self.found = found
        self.open: tuple[str, list[str]] | None = None  # href, text pieces of the open <a>
        self.in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: (v or "").strip() for k, v in attrs}
        if tag == "a":
            self._close()
            if values.get("href"):
                self.open = (values["href"], [])
        elif tag == "area" and values.get("href"):
            self.found.add(Link(values["href"], values.get("alt", "")[:MAX_TEXT], "link", "html"))
        if tag in ("img", "source", "input"):
            if values.get("src"):
                self.found.add(
                    Link(values["src"], values.get("alt", "")[:MAX_TEXT], "image", "html")
                )
            for candidate in values.get("srcset", "").split(","):
                url = candidate.strip().split(" ")[0]
                if url:
                    self.found.add(Link(url, "", "image", "html"))
            if tag == "img" and self.open is not None and values.get("alt"):
                self.open[1].append(values["alt"])
        if values.get("background"):
            self.found.add(Link(values["background"], "", "image", "html"))
        for url in _CSS_URL.findall(values.get("style", "")):
            self.found.add(Link(url, "", "image", "html"))

        if tag == "style":
            self.in_style = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._close()
        elif tag == "style":
            self.in_style = False

    def handle_data(self, data: str) -> None:
        if self.in_style:  # a <style> block: its url()s are images (backgrounds)
            for url in _CSS_URL.findall(data):
                self.found.add(Link(url, "", "image", "html"))
            return
        if self.open is not None and sum(map(len, self.open[1])) < MAX_TEXT:
            self.open[1].append(data)

    def _close(self) -> None:
        if self.open is not None:
            href, pieces = self.open
            self.open = None
            text = " ".join(" ".join(pieces).split())[:MAX_TEXT]
            self.found.add(Link(href, text, "link", "html"))

    def close(self) -> None:
        super().close()
        self._close()


def extract(text: str, html: str) -> Links:
    """The links of a message's text part and HTML part, in order."""
    found = Links()
    if html:
        parser = _Anchors(found)
        found.html_truncated = len(html) > MAX_HTML
        try:
            parser.feed(html[:MAX_HTML])
            parser.close()
        except Exception:  # html.parser is lenient; keep what was found before it gave up
            pass
    for match in _TEXT_URL.finditer(text):
        url = match.group().rstrip(_TRAILING)
        if url.lower().startswith("www."):
            url = "http://" + url
        found.add(Link(url, "", "link", "text"))
    return found


# --- checking -----------------------------------------------------------------------------------


@dataclass
class Checked:
    url: str
    result: str  # ok | broken | error | refused | skipped
    status: int | None = None
    reason: str = ""
    final_url: str | None = None
    redirects: list[dict[str, Any]] = field(default_factory=list)


class Refused(Exception):
    """The target is one this checker does not go to."""


def allowed_address(address: str) -> bool:
    """A globally routed unicast address (no loopback, private, link-local, CGNAT, ...)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    return ip.is_global and not ip.is_multicast


Resolve = Callable[[str, int], "Deferred[list[str]]"]


def system_resolver(reactor: Any) -> Resolve:
    """Names to addresses through the reactor's resolver (getaddrinfo in its thread pool)."""

    def resolve(host: str, port: int) -> Deferred[list[str]]:
        done: Deferred[list[str]] = Deferred()
        found: list[str] = []

        @implementer(IResolutionReceiver)
        class Receiver:
            def resolutionBegan(self, resolution: IHostResolution) -> None:
                pass

            def addressResolved(self, address: Any) -> None:
                found.append(address.host)

            def resolutionComplete(self) -> None:
                done.callback(found)

        reactor.nameResolver.resolveHostName(Receiver(), host, portNumber=port)
        return done

    return resolve


@implementer(IAgentEndpointFactory)
class _Pinned:
    """Connects to the one address that was checked, whatever the URL's host resolves to now."""

    def __init__(self, reactor: Any, address: str, timeout: float) -> None:
        self.reactor, self.address, self.timeout = reactor, address, timeout
        self.tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        kind = TCP6ClientEndpoint if ":" in self.address else TCP4ClientEndpoint
        endpoint: IStreamClientEndpoint = kind(
            self.reactor, self.address, uri.port, timeout=self.timeout
        )
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self.tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


class _Drop(Protocol):
    """Takes a response body by stopping it: a check needs the status only."""

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        stop = getattr(self.transport, "stopProducing", None)
        if stop is not None:
            stop()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.done.called:
            self.done.callback(None)


class LinkChecker:
    def __init__(
        self,
        reactor: Any,
        *,
        clock: IReactorTime | None = None,
        allow_private: bool = False,
        resolve: Resolve | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.allow_private = allow_private
        self.resolve = resolve if resolve is not None else system_resolver(reactor)
        self.timeout = timeout
        self.deadline = float("inf")  # check_all sets one

    async def check_all(self, urls: list[str]) -> dict[str, Any]:
        """Each unique http(s) URL checked once, at most MAX_CHECK; the rest named skipped."""
        unique = list(dict.fromkeys(urls))
        web = [u for u in unique if u.lower().startswith(("http://", "https://"))]
        chosen = web[:MAX_CHECK]
        semaphore = DeferredSemaphore(CONCURRENCY)
        self.deadline = self.clock.seconds() + DEADLINE
        results = await gatherResults(
            [Deferred.fromCoroutine(self._limited(semaphore, url)) for url in chosen]
        )
        picked = set(chosen)
        skipped = [u for u in unique if u not in picked]
        return {
            "checked": [asdict(r) for r in results],
            "skipped": len(skipped),
            "limit": MAX_CHECK,
            "timeout": self.timeout,
            "deadline": DEADLINE,
            "private_allowed": self.allow_private,
        }

    async def _limited(self, semaphore: DeferredSemaphore, url: str) -> Checked:
        await semaphore.acquire()
        try:
            return await self.check(url)
        finally:
            semaphore.release()

    async def check(self, url: str) -> Checked:
        result = Checked(url, "error")
        current = url
        try:
            for _hop in range(MAX_REDIRECTS + 1):
                if self.clock.seconds() >= self.deadline:
                    result.reason = f"not checked: the check's {DEADLINE:g} s were up"
                    return result
                status, location = await self._request(current)
                result.status, result.final_url = status, current
                if status in (301, 302, 303, 307, 308) and location:
                    target = urljoin(current, location)
                    result.redirects.append({"status": status, "location": target})
                    current = target
                    continue
                result.result = "ok" if 200 <= status < 400 else "broken"
                result.reason = f"HTTP {status}"
                return result
            result.reason = f"more than {MAX_REDIRECTS} redirects"
        except Refused as e:
            result.result, result.reason = "refused", str(e)
        except Exception as e:  # every failure is an answer about that link, never a 500
            result.result, result.reason = "error", _words(e)
        return result

    async def _in_time(self, d: Deferred[T]) -> T:
        """``d``'s result, or NoAnswer when it takes longer than the timeout (by self.clock)."""
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            d.cancel()

        timer = self.clock.callLater(self.timeout, expire)
        try:
            return await d
        except Exception:
            if expired:  # an Agent's cancel shows as ResponseNeverReceived([CancelledError])
                raise NoAnswer() from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def _address(self, host: str, port: int) -> str:
        name = host.strip("[]").rstrip(".").lower()
        try:
            ipaddress.ip_address(name.split("%", 1)[0])
            addresses = [name]
        except ValueError:
            if not self.allow_private and (name == "localhost" or name.endswith(".localhost")):
                raise Refused(f"{host} is this machine (RFC 6761 6.3)") from None
            addresses = await self._in_time(self.resolve(name, port))
            if not addresses:
                raise Refused(f"{host} has no address") from None
        if not self.allow_private:
            bad = [a for a in addresses if not allowed_address(a)]
            if bad:
                raise Refused(
                    f"{host} resolves to {bad[0]}, not a public address (set [web] "
                    "link_check_private = true to check such targets)"
                )
        return addresses[0]

    async def _request(self, url: str) -> tuple[int, str | None]:
        if len(url) > MAX_URL:
            raise Refused(f"URL longer than {MAX_URL} characters")
        try:  # an IRI (bücher.example, /straße) as the URI it stands for (RFC 3987 3.1)
            url = URL.from_text(url).to_uri().to_text()
        except Exception:
            raise Refused(f"not a URL: {url[:100]}") from None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Refused(f"not an http(s) URL: {url[:100]}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = await self._address(parts.hostname, port)
        agent = Agent.usingEndpointFactory(
            self.reactor, _Pinned(self.reactor, address, self.timeout)
        )
        headers = Headers({b"User-Agent": [f"mailhub-link-check/{__version__}".encode()]})
        target = url.split("#", 1)[0].encode("ascii", "replace")
        status, location = 0, None
        for method in (b"HEAD", b"GET"):
            response = await self._in_time(agent.request(method, target, headers))
            drop = _Drop()
            response.deliverBody(drop)
            status = response.code
            values = response.headers.getRawHeaders(b"location") or []
            location = values[0].decode("latin-1") if values else None
            if status not in (405, 501):  # some servers refuse HEAD: ask again with GET
                break
        return status, location


def _words(e: Exception) -> str:
    if isinstance(e, ResponseFailed):
        reasons = [f.getErrorMessage() for f in e.reasons]
        return f"the connection failed: {'; '.join(reasons)[:300]}"
    if isinstance(e, (ConnectTimeout, NoAnswer)):
        return "no answer in time"
    return f"{type(e).__name__}: {str(e)[:300]}"
