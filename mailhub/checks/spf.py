"""SPF (RFC 7208): may this IP address send mail for this domain?

``check_host`` is the function of RFC 7208 4: it reads the domain's ``v=spf1`` TXT record and
evaluates its mechanisms in order (``include`` and ``redirect`` recursing), with the limits of
4.6.4: 10 terms that query DNS, 2 lookups that find nothing ("void"), 10 address lookups per
``mx`` or ``ptr``. ``check_smtp`` checks what an SMTP server has: the HELO name (RFC 7208 2.3) and
the MAIL FROM address, ``postmaster@<helo>`` for the null sender ``<>`` (2.4).

Every DNS question goes through ``CheckResolver`` (asynchronous, nothing here blocks); a lookup
that times out or fails is ``temperror``. Whatever a record says - bad syntax, loops, macros that
expand to nonsense, 1000 mechanisms - the answer is a result (``permerror`` mostly) with an
``explanation`` in words a developer reads, never an exception.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import quote

import idna
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mailhub.checks import eager
from mailhub.checks.answercache import AnswerBoundResults, AnswerLifetimes
from mailhub.checks.dns import (
    CheckResolver,
    DNSBudget,
    DNSBudgetExceeded,
    DNSTempError,
    Lookup,
)
from mailhub.checks.resolver import budgeted
from mailhub.checks.results import MethodResult

log = Logger()

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")

MAX_DNS_TERMS = 10  # RFC 7208 4.6.4: include, a, mx, ptr, exists and redirect together
MAX_VOID_LOOKUPS = 2  # RFC 7208 4.6.4: lookups answered NXDOMAIN or with no records
MAX_ADDRESS_LOOKUPS = 10  # RFC 7208 4.6.4: per mx (more is permerror) and per ptr (rest ignored)
_MAX_NAME = 253  # RFC 7208 7.3: an expanded name longer than this loses labels on its left
_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


@dataclass(frozen=True)
class SPFResult:
    """The outcome of ``check_host`` (RFC 7208 2.6) for ``domain``.

    ``explanation`` says why in plain words. ``mechanism`` is the term that decided (``-all``,
    ``include:_spf.example.net``), ``authority_explanation`` the text the domain publishes with
    ``exp=`` for a ``fail`` (RFC 7208 6.2; for the SMTP reply), ``lookups`` and
    ``void_lookups`` the counts of RFC 7208 4.6.4 spent.
    """

    result: str
    domain: str
    explanation: str
    lookups: int = 0
    void_lookups: int = 0
    mechanism: str = ""
    authority_explanation: str = ""


@dataclass(frozen=True)
class SPFVerdict:
    """Both SMTP identities checked (RFC 7208 2.3, 2.4): ``mailfrom`` is the one that counts
    (for ``<>`` it is the HELO check of ``postmaster@<helo>``), ``helo`` is the HELO check."""

    mailfrom: SPFResult
    helo: SPFResult
    sender: str  # the address checked: MAIL FROM, or postmaster@<helo> for <>
    helo_name: str

    def method_result(self) -> MethodResult:
        """The ``spf=`` resinfo of ``Authentication-Results:`` (RFC 8601 2.7.2)."""
        return self._method_result

    @functools.cached_property  # a verdict kept by SPFCache serves many messages
    def _method_result(self) -> MethodResult:
        properties: list[tuple[str, str]] = []
        if self.sender:
            properties.append(("smtp.mailfrom", self.sender))
        if self.helo_name:
            properties.append(("smtp.helo", self.helo_name))
        return MethodResult(
            "spf", self.mailfrom.result, self.mailfrom.explanation, tuple(properties)
        )


async def check_smtp(
    resolver: CheckResolver,
    ip: str | IPAddress,
    mail_from: str,
    helo: str,
    *,
    budget: DNSBudget | None = None,
    receiver: str = "unknown",
    now: float | None = None,
    cache: SPFCache | None = None,
) -> SPFVerdict:
    """SPF for an SMTP transaction: the HELO identity and the MAIL FROM identity (RFC 7208 2.3,
    2.4). ``mail_from`` is the reverse-path without brackets ("" for ``<>``)."""
    helo_name = helo.strip()
    helo_sender = f"postmaster@{helo_name}"
    sender = mail_from.strip().strip("<>") or helo_sender

    def check(domain: str, sender: str) -> SPFResult | eager.Pending:
        # Run at once: a result from ``cache`` (or a cached answer) costs no Deferred.
        return eager.start(
            check_host(
                resolver,
                ip,
                domain,
                sender,
                budget=budget,
                helo=helo_name,
                receiver=receiver,
                now=now,
                cache=cache,
            )
        )

    helo_check = check(helo_name, helo_sender)
    if sender == helo_sender:  # <>: the MAIL FROM check is the HELO check (RFC 7208 2.4)
        if isinstance(helo_check, eager.Pending):
            helo_check = await helo_check.deferred
        return SPFVerdict(helo_check, helo_check, sender, helo_name)
    mailfrom_check = check(sender.rpartition("@")[2], sender)  # both at once: half the wait
    if not isinstance(helo_check, eager.Pending) and not isinstance(mailfrom_check, eager.Pending):
        return SPFVerdict(mailfrom_check, helo_check, sender, helo_name)
    mailfrom_d = eager.as_deferred(mailfrom_check)
    try:
        helo_result = await eager.as_deferred(helo_check)
        mailfrom_result = await mailfrom_d
    except defer.CancelledError:
        # The caller's timeout: stop the other check too (its lookups are not wanted).
        mailfrom_d.addErrback(lambda f: f.trap(defer.CancelledError))
        mailfrom_d.cancel()
        raise
    return SPFVerdict(mailfrom_result, helo_result, sender, helo_name)


async def check_host(
    resolver: CheckResolver,
    ip: str | IPAddress,
    domain: str,
    sender: str,
    *,
    budget: DNSBudget | None = None,
    helo: str = "",
    receiver: str = "unknown",
    now: float | None = None,
    cache: SPFCache | None = None,
) -> SPFResult:
    """RFC 7208 4: the SPF result of ``ip`` sending as ``sender`` for ``domain``.

    ``cache`` (an ``SPFCache``): a result made before for the same address, domain, sender
    domain, HELO and receiver is given again while every DNS answer it was made of is still
    within its TTL, when the evaluation used none of the macros that differ per message
    (``%{s}``, ``%{l}``: the local-part; ``%{t}``: the time). Such a result costs no lookups.

    ``helo`` feeds the ``%{h}`` macro, ``receiver`` ``%{r}`` and ``now`` ``%{t}`` (both used
    only in explanations). ``budget`` caps this message's lookups across all checks: running
    out is ``permerror`` (see ``_Evaluation.dns``). To bound the time, wrap the call:
    ``Deferred.fromCoroutine(check_host(...)).addTimeout(20, clock)`` (RFC 7208 4.6.4 asks
    for at least 20 seconds).
    """
    address = _client_address(ip)
    if address is None:
        shown = domain.strip().rstrip(".").lower()
        return SPFResult(
            "none", shown, f"{ip!r} is not an IP address, so there is nothing to check"
        )
    name = _initial_domain(domain)
    if name is None:
        # RFC 7208 4.3: a malformed or single-label domain gives "none" at once.
        shown = domain.strip().rstrip(".").lower()
        why = f"{domain!r} is not a domain name SPF can check (RFC 7208 4.3)"
        return SPFResult("none", shown, why)
    local, sender_domain = _sender_parts(sender)
    key: _CacheKey = (address, name, sender_domain, helo, receiver or "unknown")
    if cache is not None:
        cached = cache.get(key)
        if cached is not None:
            return cached
    macros = _MacroValues(
        sender=f"{local}@{sender_domain}",
        local=local,
        sender_domain=sender_domain,
        ip=address,
        helo=helo,
        receiver=receiver or "unknown",
        now=time.time() if now is None else now,
    )
    # Every lookup spends the message's budget (once, also if the resolver already does).
    evaluation = _Evaluation(budgeted(resolver, budget), macros)
    try:
        outcome = await evaluation.check(name, ())
        if outcome.result == "none":
            result = evaluation.result("none", name, outcome.reason)
            if cache is not None:
                cache.put(key, result, evaluation)
            return result
        exp = await evaluation.authority_explanation(outcome) if outcome.result == "fail" else ""
        text = _describe(outcome, address, name)
    except _Stop as stop:
        return evaluation.result(stop.result, name, stop.reason)
    except defer.CancelledError:
        raise  # the caller's timeout (addTimeout) cancelled us
    except Exception:
        # Never a traceback to the SMTP session: a bug here must not lose the message.
        log.failure("SPF evaluation of {domain} failed", domain=name)
        return evaluation.result("temperror", name, "internal error in the SPF evaluation")
    if exp:
        text += f'; {outcome.domain} explains: "{exp}"'
    result = evaluation.result(outcome.result, name, text, outcome.decided_by(), exp)
    if cache is not None:
        cache.put(key, result, evaluation)
    return result


@functools.lru_cache(maxsize=4096)  # a pure function of the address; a sender sends again
def _sender_parts(sender: str) -> tuple[str, str]:
    """(local-part, domain) of the sender identity as the macros use them (RFC 7208 4.3)."""
    local, at, sender_domain = sender.strip().rpartition("@")
    if not at:
        local, sender_domain = "", sender.strip()
    local = local or "postmaster"  # RFC 7208 4.3: no local-part means "postmaster"
    if not sender_domain.isascii():  # %{o} of an SMTPUTF8 sender: as asked in DNS (RFC 8616)
        sender_domain = _initial_domain(sender_domain) or sender_domain
    return local, sender_domain


def cached_smtp(
    cache: SPFCache, ip: str | IPAddress, mail_from: str, helo: str, *, receiver: str = "unknown"
) -> SPFVerdict | None:
    """``check_smtp``'s verdict when both its results are in ``cache`` (as ``check_smtp``
    with this cache would give it), without a coroutine; None when one is not (ask
    ``check_smtp``). The verdict itself is kept too, by these four values as given, until the
    first of its two results expires: a repeat sender costs one dictionary lookup."""
    given = (ip, mail_from, helo, receiver)
    kept = cache.verdicts.get(given)
    if kept is not None:
        if kept[1] > cache.clock.seconds():
            return kept[0]
        del cache.verdicts[given]
    helo_name = helo.strip()
    helo_sender = f"postmaster@{helo_name}"
    sender = mail_from.strip().strip("<>") or helo_sender
    helo_entry = _cached_host(cache, ip, helo_name, helo_sender, helo_name, receiver)
    if helo_entry is None:
        return None
    mailfrom_entry: tuple[SPFResult, float] | None = helo_entry
    if sender != helo_sender:
        domain = sender.rpartition("@")[2]
        mailfrom_entry = _cached_host(cache, ip, domain, sender, helo_name, receiver)
    if mailfrom_entry is None:
        return None
    verdict = SPFVerdict(mailfrom_entry[0], helo_entry[0], sender, helo_name)
    cache.keep_verdict(given, verdict, min(helo_entry[1], mailfrom_entry[1]))
    return verdict


def _cached_host(
    cache: SPFCache, ip: str | IPAddress, domain: str, sender: str, helo: str, receiver: str
) -> tuple[SPFResult, float] | None:
    """``check_host``'s result from ``cache`` (its key made the same way) and when it
    expires, or None."""
    address = _client_address(ip)
    name = _initial_domain(domain)
    if address is None or name is None:
        return None  # check_host answers these without the cache
    key: _CacheKey = (address, name, _sender_parts(sender)[1], helo, receiver or "unknown")
    return cache.entry(key)


# --- results kept within the TTLs of their answers ---------------------------------------------

# The macros whose values differ between messages with the same cache key (RFC 7208 7.2).
_PER_MESSAGE_MACROS = frozenset("slt")
_CACHED_RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none"})
# (client address, domain, sender domain, HELO, receiver)
_CacheKey = tuple[IPAddress, str, str, str, str]


class SPFCache(AnswerBoundResults[_CacheKey, SPFResult]):
    """``check_host`` results for (client address, domain, sender domain, HELO, receiver), each
    kept until the first of the DNS answers it was made of expires in ``answers`` (the server's
    ``CachingResolver``, whose TTLs they are): the same answers give the same result (RFC 7208
    4.6: the evaluation reads nothing else). Not kept: temperror and permerror, any result made
    while a lookup failed or the message's budget ran out (even where the failure only means
    "no match"), results using ``%{s}``, ``%{l}`` or ``%{t}``, and results made of an answer
    the resolver does not keep (TTL 0). A result given from here spends no lookups of the
    message's ``DNSBudget``. At most ``max_entries``
    (the oldest goes first). ``clock``: IReactorTime."""

    def __init__(
        self, answers: AnswerLifetimes, clock: IReactorTime, max_entries: int = 10000
    ) -> None:
        super().__init__(answers, clock, max_entries)
        self.clock = clock
        self.hits = 0
        # cached_smtp's verdicts by (ip, mail_from, helo, receiver) as given, and until when.
        self.verdicts: dict[tuple[str | IPAddress, str, str, str], tuple[SPFVerdict, float]] = {}

    def get(self, key: _CacheKey) -> SPFResult | None:
        entry = self.entry(key)
        return None if entry is None else entry[0]

    def entry(self, key: _CacheKey) -> tuple[SPFResult, float] | None:
        """The result kept for ``key`` and when it expires (``clock.seconds()``), or None."""
        entry = self._kept.entry(key)
        if entry is not None:
            self.hits += 1
        return entry

    def keep_verdict(
        self, given: tuple[str | IPAddress, str, str, str], verdict: SPFVerdict, expires: float
    ) -> None:
        if self.max_entries <= 0:
            return
        self.verdicts[given] = (verdict, expires)
        if len(self.verdicts) > self.max_entries:
            del self.verdicts[next(iter(self.verdicts))]  # the oldest

    def put(self, key: _CacheKey, result: SPFResult, evaluation: _Evaluation) -> None:
        if result.result not in _CACHED_RESULTS or evaluation.letters & _PER_MESSAGE_MACROS:
            return
        if evaluation.failed:  # e.g. a PTR lookup that failed counts as no match (5.5)
            return
        self._kept.put(key, result, [(name, rdtype) for rdtype, name in evaluation.asked])


# --- parsed records ------------------------------------------------------------------------


class _SyntaxError(Exception):
    """A record (or macro string) does not follow the grammar of RFC 7208 12."""


@dataclass(frozen=True)
class _Expand:
    """One ``%{...}`` macro (RFC 7208 7.1)."""

    letter: str  # lower case
    url_escape: bool  # an upper-case letter (7.3)
    digits: int  # 0: keep all parts
    reverse: bool
    delimiters: str  # "" means "."


@dataclass(frozen=True)
class _MacroString:
    """A parsed macro-string: literal text and macros in order."""

    text: str  # as written
    parts: tuple[str | _Expand, ...]


@dataclass(frozen=True)
class _Directive:
    """A mechanism with its qualifier (RFC 7208 4.6.2, 5)."""

    text: str  # as written, for explanations
    qualifier: str
    mechanism: str  # all include a mx ptr ip4 ip6 exists
    domain: _MacroString | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True)
class _Record:
    directives: tuple[_Directive, ...]
    redirect: _MacroString | None
    exp: _MacroString | None


_MACRO = re.compile(r"%\{([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)\}")
# macro-literal: visible ASCII but "%" (7.1); explanation text also has spaces (6.2)
_LITERAL_RUN = re.compile(r"[!-$&-~]*")
_EXPLANATION_RUN = re.compile(r"[ !-$&-~]*")
_MACRO_LETTERS = "slodipvhcrt"
_EXP_ONLY_LETTERS = "crt"  # RFC 7208 7.2: c, r and t only in explanation text
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9._-]*)=(.*)", re.DOTALL)
_MECHANISM = re.compile(
    r"(all|include|a|mx|ptr|ip4|ip6|exists)((?:[:/].*)?)", re.IGNORECASE | re.DOTALL
)
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IP4 = re.compile(rf"{_QNUM}\.{_QNUM}\.{_QNUM}\.{_QNUM}")
_IP6_CHARS = re.compile(r"[0-9A-Fa-f:.]+")
_CIDR = re.compile(r"0|[1-9][0-9]{0,2}")  # RFC 7208 5.6: no leading zeros
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_NAME_CHARS = re.compile(r"[a-z0-9_.-]+")
_MAX_EXPLANATION = 300  # characters of a domain's exp= text kept
_MAX_EXPANSION = 8192  # characters of an expanded macro-string we build (names need 253)


def _parse_macro_string(text: str, *, explanation: bool = False) -> tuple[_MacroString, str]:
    """Parse a macro-string (RFC 7208 7.1); also return the literal text after its last macro
    ("" when it ends in a macro), which decides whether it is a valid domain-spec."""
    parts: list[str | _Expand] = []
    literal: list[str] = []
    tail_start = 0  # index in ``literal`` since the last macro-expand
    ended_in_macro = False
    run = _EXPLANATION_RUN if explanation else _LITERAL_RUN
    i, n = 0, len(text)
    while i < n:
        literal_run = run.match(text, i)
        assert literal_run is not None  # it matches the empty string
        if literal_run.end() > i:
            literal.append(literal_run.group())
            ended_in_macro = False
            i = literal_run.end()
            continue
        ch = text[i]
        if ch == "%":
            follower = text[i + 1 : i + 2]
            if follower in ("%", "_", "-"):  # "%%" "%_" "%-" are macro-expands too (7.1)
                literal.append({"%": "%", "_": " ", "-": "%20"}[follower])
                tail_start, ended_in_macro = len(literal), True
                i += 2
                continue
            m = _MACRO.match(text, i) if follower == "{" else None
            if m is None:
                shown = text[i : i + 12]
                raise _SyntaxError(
                    f"bad macro {shown!r}: '%' must start %{{...}}, %%, %_ or %- (RFC 7208 7.1)"
                )
            letter = m[1].lower()
            if letter not in _MACRO_LETTERS:
                raise _SyntaxError(f"unknown macro %{{{m[1]}}} (RFC 7208 7.2)")
            if letter in _EXP_ONLY_LETTERS and not explanation:
                raise _SyntaxError(f"%{{{m[1]}}} is allowed only in exp= text (RFC 7208 7.2)")
            digits = m[2].lstrip("0")
            if m[2] and not digits:
                raise _SyntaxError(f"{m[0]}: the number of parts must not be 0 (RFC 7208 7.3)")
            count = int(digits) if 0 < len(digits) <= 6 else (10**6 if digits else 0)
            if literal:
                parts.append("".join(literal))
                literal.clear()
            parts.append(_Expand(letter, m[1].isupper(), count, bool(m[3]), m[4]))
            tail_start, ended_in_macro = 0, True
            i = m.end()
            continue
        raise _SyntaxError(f"character {ch!r} is not allowed in {text[:40]!r} (RFC 7208 7.1)")
    tail = "" if ended_in_macro else "".join(literal[tail_start:])
    if literal:
        parts.append("".join(literal))
    return _MacroString(text, tuple(parts)), tail


def _parse_domain_spec(text: str, term: str) -> _MacroString:
    """A domain-spec must end in a macro or in "." and a top label (RFC 7208 7.1)."""
    if not text:
        raise _SyntaxError(f"{term}: the domain is missing")
    spec, tail = _parse_macro_string(text)
    if tail:
        body = tail[:-1] if tail.endswith(".") else tail
        _, dot, top = body.rpartition(".")
        if not dot or not _toplabel(top):
            if _IP4.fullmatch(text.rstrip(".")):
                raise _SyntaxError(f"{term}: an IP address is not a domain; write ip4:{text}")
            raise _SyntaxError(
                f"{term}: {text!r} is not a domain name (it must end in a top-level label "
                "like .com, RFC 7208 7.1)"
            )
    return spec


def _toplabel(label: str) -> bool:
    """RFC 7208 7.1 toplabel: letters, digits, inner hyphens; not all digits."""
    if not label or not set(label) <= _ALNUM | {"-"}:
        return False
    if label[0] == "-" or label[-1] == "-":
        return False
    return "-" in label or not set(label).isdisjoint(_LETTERS)


def _cidr(text: str, maximum: int, term: str) -> int:
    if not _CIDR.fullmatch(text) or int(text) > maximum:
        raise _SyntaxError(f"{term}: /{text} is not a prefix length 0-{maximum} (RFC 7208 5.6)")
    return int(text)


@functools.lru_cache(
    maxsize=512
)  # the same records come again and again (includes of big providers)
def _parse_record(text: str) -> _Record:
    """Parse a whole record first: a syntax error anywhere is permerror (RFC 7208 4.6)."""
    directives: list[_Directive] = []
    redirect: _MacroString | None = None
    exp: _MacroString | None = None
    for term in text.split(" ")[1:]:  # terms are separated by spaces only (4.6.1)
        if not term:
            continue
        modifier = _MODIFIER.fullmatch(term)
        if modifier:
            name, value = modifier[1].lower(), modifier[2]
            if name in ("redirect", "exp"):
                if (redirect if name == "redirect" else exp) is not None:
                    raise _SyntaxError(f"{name}= appears twice (RFC 7208 6)")
                spec = _parse_domain_spec(value, term)
                if name == "redirect":
                    redirect = spec
                else:
                    exp = spec
            else:
                # Unknown modifiers are ignored (6), but their value must still parse (12);
                # they are never expanded, so every macro letter is accepted.
                _parse_macro_string(value, explanation=True)
            continue
        directives.append(_parse_directive(term))
    return _Record(tuple(directives), redirect, exp)


def _parse_directive(term: str) -> _Directive:
    qualifier, body = ("+", term)
    if term[0] in _QUALIFIERS:
        qualifier, body = term[0], term[1:]
    m = _MECHANISM.fullmatch(body)
    if m is None:
        if _MODIFIER.fullmatch(body):
            raise _SyntaxError(f"{term!r}: a modifier takes no qualifier")
        raise _SyntaxError(f"unknown mechanism {term!r} (RFC 7208 5)")
    name, rest = m[1].lower(), m[2]
    if name == "all":
        if rest:
            raise _SyntaxError(f"{term!r}: all takes no argument")
        return _Directive(term, qualifier, name)
    if name in ("include", "exists"):
        if not rest.startswith(":"):
            raise _SyntaxError(f"{term!r}: {name} needs ':' and a domain")
        return _Directive(term, qualifier, name, _parse_domain_spec(rest[1:], term))
    if name == "ptr":
        if rest and not rest.startswith(":"):
            raise _SyntaxError(f"{term!r}: ptr takes no prefix length")
        target = _parse_domain_spec(rest[1:], term) if rest else None
        return _Directive(term, qualifier, name, target)
    if name in ("ip4", "ip6"):
        return _parse_ip(term, qualifier, name, rest)
    # a and mx: [":" domain-spec] [dual-cidr-length] (5.3, 5.4)
    cidr4, cidr6 = 32, 128
    head, sep, tail = rest.rpartition("//")
    if sep and tail and tail.isascii() and tail.isdigit():
        cidr6, rest = _cidr(tail, 128, term), head
    head, sep, tail = rest.rpartition("/")
    if sep and tail and tail.isascii() and tail.isdigit():
        cidr4, rest = _cidr(tail, 32, term), head
    spec: _MacroString | None = None
    if rest:
        if not rest.startswith(":"):
            raise _SyntaxError(f"{term!r}: expected ':domain' or '/prefix' after {name}")
        spec = _parse_domain_spec(rest[1:], term)
    return _Directive(term, qualifier, name, spec, cidr4=cidr4, cidr6=cidr6)


def _parse_ip(term: str, qualifier: str, name: str, rest: str) -> _Directive:
    if not rest.startswith(":"):
        raise _SyntaxError(f"{term!r}: {name} needs ':' and an address")
    text, slash, length = rest[1:].partition("/")
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    if name == "ip4":
        if not _IP4.fullmatch(text):
            raise _SyntaxError(f"{term!r}: {text!r} is not an IPv4 address (RFC 7208 5.6)")
        prefix = _cidr(length, 32, term) if slash else 32
        network = ipaddress.IPv4Network((text, prefix), strict=False)
    else:
        try:
            if not _IP6_CHARS.fullmatch(text):
                raise ValueError(text)
            address = ipaddress.IPv6Address(text)
        except ValueError:
            raise _SyntaxError(
                f"{term!r}: {text!r} is not an IPv6 address (RFC 7208 5.6)"
            ) from None
        prefix = _cidr(length, 128, term) if slash else 128
        network = ipaddress.IPv6Network((address, prefix), strict=False)
    return _Directive(term, qualifier, name, network=network)


def _is_spf(record: bytes) -> bool:
    """RFC 7208 4.5: the record starts with "v=spf1" ended by a space or the record's end."""
    return record[:6].lower() == b"v=spf1" and record[6:7] in (b"", b" ")


# --- names and addresses -------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)  # addresses are immutable; a client sends many messages
def _client_address(ip: str | IPAddress) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(ip.strip().strip("[]") if isinstance(ip, str) else ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # RFC 7208 5: an IPv4-mapped IPv6 address is IPv4
    return address


@functools.lru_cache(maxsize=4096)  # a pure function of the name
def _initial_domain(domain: str) -> str | None:
    """RFC 7208 4.3: the <domain> as asked in DNS, or None when it is malformed or has one
    label (then check_host is "none"). U-labels become A-labels (RFC 8616)."""
    name = domain.strip()
    name = name[:-1] if name.endswith(".") else name
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            return None
    name = name.lower()
    # Letters, digits, hyphens and underscores (_spf...): an address literal like [192.0.2.1]
    # or anything stranger is no domain; so is a single label or an all-digit top label.
    if not _NAME_CHARS.fullmatch(name) or "." not in name or len(name) > _MAX_NAME:
        return None
    labels = name.split(".")
    if any(not 0 < len(label) <= 63 for label in labels) or labels[-1].isdigit():
        return None
    return name


def _query_name(expanded: str) -> str | None:
    """An expanded domain-spec as a DNS name (RFC 7208 7.3: too long loses labels on its
    left), or None when no query can be made of it (an empty or >63 octet label, non-ASCII):
    RFC 7208 leaves that undefined; we treat it like a name that does not exist."""
    name = expanded[:-1] if expanded.endswith(".") else expanded
    if len(name) > _MAX_NAME:
        # The longest suffix that starts a label and fits (one cut, not a label at a time: a
        # hostile record can expand to megabytes).
        cut = len(name) - _MAX_NAME
        if name[cut - 1] != ".":
            cut = name.find(".", cut) + 1
            if cut == 0:
                return None
        name = name[cut:]
    if not name or not name.isascii():
        return None
    if any(not 0 < len(label) <= 63 for label in name.split(".")):
        return None
    return name


def _same_or_under(name: str, domain: str) -> bool:
    name, domain = name.lower().rstrip("."), domain.lower().rstrip(".")
    return name == domain or name.endswith("." + domain)


def _addresses(records: tuple[str, ...]) -> list[IPAddress]:
    found = []
    for text in records:
        try:
            found.append(ipaddress.ip_address(text))
        except ValueError:
            continue  # a garbled answer matches nothing
    return found


# --- evaluation ----------------------------------------------------------------------------


class _Stop(Exception):
    """check_host ends with ``result`` (temperror or permerror) for ``reason``."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


def _perm(reason: str) -> _Stop:
    return _Stop("permerror", reason)


@dataclass(frozen=True)
class _MacroValues:
    sender: str
    local: str
    sender_domain: str
    ip: IPAddress
    helo: str
    receiver: str
    now: float


@dataclass(frozen=True)
class _Outcome:
    """What one record decided: ``directive`` matched (None: nothing matched, or "none")."""

    result: str
    domain: str  # whose record decided
    directive: _Directive | None = None
    record: _Record | None = None
    redirected: bool = False  # reached through redirect= from the domain asked
    inner: _Outcome | None = None  # the passing check of a matching include
    reason: str = ""  # for "none"

    def decided_by(self) -> str:
        if self.directive is not None:
            return self.directive.text
        return "" if self.record is None else "(default)"


@dataclass(frozen=True)
class _Context:
    domain: str  # the <domain> of this check_host (%{d})
    chain: tuple[str, ...]  # the domains above it: include and redirect
    via: str  # the term that brought us here ("" at the top)

    def where(self) -> str:
        """'example.com's SPF record', or with the path that reached it."""
        if not self.chain:
            return f"{self.domain}'s SPF record"
        return f"{self.domain}'s SPF record ({self.via} from {self.chain[-1]})"


class _Evaluation:
    """One check_host run: its counters and limits are shared by includes and redirects."""

    def __init__(self, resolver: CheckResolver, macros: _MacroValues) -> None:
        self.resolver = resolver
        self.macros = macros
        self.lookups = 0
        self.void_lookups = 0
        self._validated: dict[str, str] = {}
        self.asked: list[tuple[str, str]] = []  # (type, name) of every lookup, for SPFCache
        self.letters: set[str] = set()  # the macro letters expanded
        self.failed = False  # a lookup failed (even one whose failure RFC 7208 tolerates)

    def result(
        self, result: str, domain: str, text: str, mechanism: str = "", exp: str = ""
    ) -> SPFResult:
        assert result in _RESULTS
        return SPFResult(result, domain, text, self.lookups, self.void_lookups, mechanism, exp)

    @property
    def ip(self) -> IPAddress:
        return self.macros.ip

    # DNS, with the budget and the error mapping

    async def dns(
        self, ask: Callable[[str], Awaitable[Lookup[T]]], kind: str, name: str
    ) -> Lookup[T]:
        self.asked.append((kind, name))
        try:
            return await ask(name)
        except DNSTempError as e:
            self.failed = True
            detail = f" ({e})" if str(e) else ""
            raise _Stop("temperror", f"the DNS lookup of {kind} {name} failed{detail}") from None
        except DNSBudgetExceeded as e:
            self.failed = True
            # permerror, not temperror: the same message would make the same lookups again,
            # so a retry cannot succeed and a temperror (451) would defer it until it bounced.
            raise _perm(f"gave up: {e} (at {kind} {name})") from None

    async def address_lookup(self, name: str) -> Lookup[str]:
        """A for an IPv4 client, AAAA for IPv6 (RFC 7208 5.3)."""
        if self.ip.version == 4:
            return await self.dns(self.resolver.a, "A", name)
        return await self.dns(self.resolver.aaaa, "AAAA", name)

    def count_term(self, directive_text: str, ctx: _Context) -> None:
        self.lookups += 1
        if self.lookups > MAX_DNS_TERMS:
            raise _perm(
                f"more than {MAX_DNS_TERMS} DNS lookups (RFC 7208 4.6.4): the 11th is "
                f"{directive_text} in {ctx.domain}'s SPF record"
            )

    def note_void(self, lookup: Lookup[T], what: str) -> None:
        if lookup.void:
            self.void_lookups += 1
            if self.void_lookups > MAX_VOID_LOOKUPS:
                raise _perm(
                    f"more than {MAX_VOID_LOOKUPS} DNS lookups found nothing (void lookup limit, "
                    f"RFC 7208 4.6.4); the last was {what}"
                )

    # check_host

    async def check(self, domain: str, chain: tuple[str, ...], via: str = "") -> _Outcome:
        ctx = _Context(domain, chain, via)
        lookup = await self.dns(self.resolver.txt, "TXT", domain)
        found = [r for r in lookup.records if _is_spf(r)]
        if not found:
            why = "does not exist (NXDOMAIN)" if lookup.nxdomain else "has no SPF record"
            return _Outcome("none", domain, reason=f"{domain} {why}")
        if len(found) > 1:
            raise _perm(f"{domain} has {len(found)} SPF records; RFC 7208 4.5 allows one")
        try:
            text = found[0].decode("ascii")
            record = _parse_record(text)
        except UnicodeDecodeError:
            raise _perm(f"{ctx.where()} has non-ASCII bytes (RFC 7208 3)") from None
        except _SyntaxError as e:
            raise _perm(f"{ctx.where()} has a syntax error: {e}") from None
        for directive in record.directives:
            matched, inner = await self.matches(directive, ctx)
            if matched:
                result = _QUALIFIERS[directive.qualifier]
                return _Outcome(result, domain, directive, record, bool(chain), inner)
        if record.redirect is not None:  # RFC 7208 6.1: only when no mechanism matched
            return await self.redirect(record.redirect, ctx)
        return _Outcome("neutral", domain, None, record, bool(chain))  # RFC 7208 4.7

    async def redirect(self, spec: _MacroString, ctx: _Context) -> _Outcome:
        term = f"redirect={spec.text}"
        self.count_term(term, ctx)
        target = await self.expand_name(spec, ctx.domain)
        if target is None:
            raise _perm(f"{term} in {ctx.where()} names no valid domain")
        self.refuse_loop(target, term, ctx)
        outcome = await self.check(target, (*ctx.chain, ctx.domain), term)
        if outcome.result == "none":  # RFC 7208 6.1: redirect to no record is permerror
            raise _perm(f"{term} in {ctx.where()}: {outcome.reason}")
        return outcome

    def refuse_loop(self, target: str, term: str, ctx: _Context) -> None:
        """The same domain twice on one path would repeat itself for ever: say so at once (the
        10-lookup limit would stop it too, RFC 7208 4.6.4, but less clearly)."""
        path = (*ctx.chain, ctx.domain)
        if target.lower() in (d.lower() for d in path):
            route = " > ".join((*path, target))
            raise _perm(f"{term} loops ({route})")

    async def matches(self, d: _Directive, ctx: _Context) -> tuple[bool, _Outcome | None]:
        if d.mechanism == "all":
            return True, None
        if d.mechanism in ("ip4", "ip6"):
            assert d.network is not None
            return (self.ip.version == d.network.version and self.ip in d.network), None
        self.count_term(d.text, ctx)
        target: str | None = ctx.domain
        if d.domain is not None:
            target = await self.expand_name(d.domain, ctx.domain)
        if d.mechanism == "include":
            return await self.include(d, target, ctx)
        if target is None:
            return False, None  # nothing can be asked of an invalid name: no match
        if d.mechanism == "a":
            lookup = await self.address_lookup(target)
            self.note_void(lookup, d.text)
            return self.in_networks(lookup.records, d), None
        if d.mechanism == "mx":
            return await self.mx(d, target), None
        if d.mechanism == "ptr":
            return await self.ptr(d, target), None
        # exists: an A lookup whatever the client's address family (RFC 7208 5.7)
        lookup = await self.dns(self.resolver.a, "A", target)
        self.note_void(lookup, d.text)
        return bool(lookup.records), None

    async def include(
        self, d: _Directive, target: str | None, ctx: _Context
    ) -> tuple[bool, _Outcome | None]:
        if target is None:
            raise _perm(f"{d.text} in {ctx.where()} names no valid domain")
        self.refuse_loop(target, d.text, ctx)
        outcome = await self.check(target, (*ctx.chain, ctx.domain), d.text)
        if outcome.result == "none":  # RFC 7208 5.2: include of none is permerror
            raise _perm(f"{d.text} in {ctx.where()}: {outcome.reason}")
        # pass matches; fail, softfail and neutral do not (temperror/permerror raised already)
        return outcome.result == "pass", outcome

    def in_networks(self, records: tuple[str, ...], d: _Directive) -> bool:
        prefix = d.cidr4 if self.ip.version == 4 else d.cidr6
        for address in _addresses(records):
            if address.version != self.ip.version:
                continue
            if self.ip in ipaddress.ip_network((address, prefix), strict=False):
                return True
        return False

    async def mx(self, d: _Directive, target: str) -> bool:
        lookup = await self.dns(self.resolver.mx, "MX", target)
        self.note_void(lookup, d.text)
        hosts = [host.rstrip(".") for _, host in lookup.records]
        hosts = [h for h in hosts if h]  # "." is a null MX (RFC 7505): no host
        if len(hosts) > MAX_ADDRESS_LOOKUPS:
            raise _perm(
                f"{d.text}: {target} has {len(hosts)} MX hosts; the mx mechanism may look up "
                f"at most {MAX_ADDRESS_LOOKUPS} (RFC 7208 4.6.4)"
            )
        for host in hosts:
            if self.in_networks((await self.address_lookup(host)).records, d):
                return True
        return False

    async def ptr(self, d: _Directive, target: str) -> bool:
        names = await self.ptr_names(d.text)
        for name in names:
            if _same_or_under(name, target) and await self.validates(name):
                return True
        return False

    async def ptr_names(self, what: str | None) -> list[str]:
        """The first 10 names of the client's PTR records (the rest is ignored, RFC 7208
        4.6.4); a DNS error is no names (5.5)."""
        try:
            lookup = await self.dns(self.resolver.ptr, "PTR", str(self.ip))
        except _Stop as stop:
            if stop.result == "temperror":
                return []
            raise
        if what is not None:
            self.note_void(lookup, what)
        names = [n.rstrip(".") for n in lookup.records[:MAX_ADDRESS_LOOKUPS]]
        return [n for n in names if n]

    async def validates(self, name: str) -> bool:
        """Does ``name`` resolve back to the client (RFC 7208 5.5)? DNS errors skip it."""
        try:
            lookup = await self.address_lookup(name)
        except _Stop as stop:
            if stop.result == "temperror":
                return False
            raise
        return self.ip in _addresses(lookup.records)

    async def validated_name(self, domain: str) -> str:
        """%{p} (RFC 7208 7.3): a validated name of the client, <domain> itself first, then a
        name under it, then any; "unknown" when none validates."""
        if domain not in self._validated:
            names = await self.ptr_names(None)
            exact = [n for n in names if n.lower() == domain.lower()]
            under = [n for n in names if _same_or_under(n, domain) and n not in exact]
            rest = [n for n in names if n not in exact and n not in under]
            self._validated[domain] = "unknown"
            for name in exact + under + rest:
                if await self.validates(name):
                    self._validated[domain] = name
                    break
        return self._validated[domain]

    # macros (RFC 7208 7)

    async def expand(self, spec: _MacroString, domain: str) -> str:
        out: list[str] = []
        size = 0
        for part in spec.parts:
            if isinstance(part, str):
                out.append(part)
                size += len(part)
                continue
            value = await self.macro_value(part.letter, domain)
            delimiters = part.delimiters or "."
            pieces = re.split("[" + re.escape(delimiters) + "]", value)
            if part.reverse:
                pieces.reverse()
            if part.digits:
                pieces = pieces[-part.digits :]
            value = ".".join(pieces)
            if part.url_escape:  # RFC 7208 7.3: all but RFC 3986 "unreserved"
                value = quote(value, safe="")
            out.append(value)
            size += len(value)
            if size > _MAX_EXPANSION:
                raise _SyntaxError(
                    f"{spec.text[:40]!r} expands to more than {_MAX_EXPANSION} characters"
                )
        return "".join(out)

    async def expand_name(self, spec: _MacroString, domain: str) -> str | None:
        """A domain-spec expanded into a name to ask, or None when it gives no usable name."""
        try:
            return _query_name(await self.expand(spec, domain))
        except _SyntaxError:
            return None

    async def macro_value(self, letter: str, domain: str) -> str:
        self.letters.add(letter)
        m, ip = self.macros, self.macros.ip
        if letter == "p":
            return await self.validated_name(domain)
        if letter == "i":  # IPv6: dot-separated nibbles (7.3)
            return str(ip) if ip.version == 4 else ".".join(ip.exploded.replace(":", ""))
        return {
            "s": m.sender,
            "l": m.local,
            "o": m.sender_domain,
            "d": domain,
            "v": "in-addr" if ip.version == 4 else "ip6",
            "h": m.helo,
            "c": str(ip),
            "r": m.receiver,
            "t": str(int(m.now)),
        }[letter]

    async def authority_explanation(self, outcome: _Outcome) -> str:
        """The exp= text of the record that failed (RFC 7208 6.2); "" when there is none or
        anything goes wrong fetching or expanding it. Not counted in the limits (4.6.4)."""
        if outcome.record is None or outcome.record.exp is None:
            return ""
        lookups, voids = self.lookups, self.void_lookups
        try:
            name = await self.expand_name(outcome.record.exp, outcome.domain)
            if name is None:
                return ""
            lookup = await self.dns(self.resolver.txt, "TXT", name)
            if len(lookup.records) != 1:
                return ""
            text = lookup.records[0].decode("ascii")
            spec, _ = _parse_macro_string(text, explanation=True)
            expanded = await self.expand(spec, outcome.domain)
            # It goes into an SMTP reply and a header: printable, and not a page long.
            shown = "".join(ch if ch.isprintable() else " " for ch in expanded)
            return shown[:_MAX_EXPLANATION]
        except (_Stop, _SyntaxError, UnicodeDecodeError):
            return ""
        finally:
            self.lookups, self.void_lookups = lookups, voids


def _describe(outcome: _Outcome, ip: IPAddress, domain: str) -> str:
    """The developer's words for a result that a record decided."""
    record = f"{domain}'s SPF record"
    if outcome.redirected:
        record += f" (through redirect to {outcome.domain})"
    d = outcome.directive
    if d is None:
        return (
            f"no mechanism in {record} matches {ip} and it has no 'all', so the result is "
            "neutral (RFC 7208 4.7)"
        )
    matched = _matched(outcome)
    if outcome.result == "pass":
        return f"{ip} is allowed by {record}: {matched} matches"
    if d.mechanism == "all":
        if outcome.result == "fail":
            return f"{ip} is not allowed by {record}, which ends in {d.text}"
        if outcome.result == "softfail":
            return (
                f"{ip} is not allowed by {record}, which ends in {d.text} (softfail: "
                "suspicious, but the domain asks not to reject)"
            )
        return f"{record} takes no position on {ip} (it ends in {d.text})"
    if outcome.result == "fail":
        return f"{ip} is not allowed by {record}: {matched} matches it"
    if outcome.result == "softfail":
        return f"{ip} is probably not allowed by {record}: {matched} matches it (softfail)"
    return f"{record} takes no position on {ip}: {matched} matches it (neutral)"


def _matched(outcome: _Outcome) -> str:
    assert outcome.directive is not None
    text = outcome.directive.text
    inner = outcome.inner
    if inner is not None and inner.directive is not None:
        text += f" ({_matched(inner)} in {inner.domain})"
    return text
