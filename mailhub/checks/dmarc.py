"""DMARC (RFC 7489): the From domain, its policy record, alignment, and the policy to apply.

``header_from_domain`` finds the one RFC5322.From domain (6.6.1); ``organizational_domain``
reads the Public Suffix List through ``publicsuffixlist`` (3.2); ``evaluate_dmarc`` discovers
the record (``_dmarc.<from>``, then ``_dmarc.<organizational domain>``, 6.6.3), checks whether
SPF and DKIM passed *and* are aligned with From (3.1), and says which policy applies (p or sp,
after pct sampling, 6.6.4), with the reason in words a developer understands.

What this module decides (where the RFC leaves a choice), so the page can explain it:
- a message with no From, or a From with no domain, is outside DMARC: ``none`` (6.6.1 "those
  that do not [have exactly one] are outside the scope");
- several From fields, or one with several addresses: ``permerror`` (6.6.1 says such messages
  "are typically rejected"; the policy decides what a permerror means);
- a DMARC fail where an aligned DKIM signature or SPF could not be checked because of a DNS
  timeout: ``temperror`` (the message may pass later, so it is not refused for good).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from publicsuffixlist import PublicSuffixList
from twisted.internet.interfaces import IReactorTime

from mailhub.addresses import AddressError, normalise_domain
from mailhub.checks.answercache import AnswerBoundResults, AnswerLifetimes
from mailhub.checks.dkimverify import SignatureResult, TagListError, parse_tags
from mailhub.checks.dns import CheckResolver, DNSBudget, DNSBudgetExceeded, DNSTempError, Lookup
from mailhub.checks.opensslverify import no_bare_cr, only_crlf
from mailhub.checks.resolver import budgeted
from mailhub.checks.results import MethodResult
from mailhub.message.headers import MISSING_DOMAIN, parse_address_list, split_fields

POLICIES = ("none", "quarantine", "reject")
WEAKER = {"reject": "quarantine", "quarantine": "none", "none": "none"}  # 6.6.4 pct sampling


class HeaderFromError(ValueError):
    """The message has no single From address to evaluate (RFC 7489 6.6.1)."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result  # "none" or "permerror"
        self.reason = reason


class SPFOutcome(Protocol):
    """What DMARC needs of an SPF result (``mailhub.checks.spf.SPFResult`` has it): the result
    keyword and the domain it was for (MAIL FROM's, or HELO's for a null sender: RFC 7489 3.1.2)."""

    @property
    def result(self) -> str: ...

    @property
    def domain(self) -> str: ...


@dataclass(frozen=True)
class DMARCRecord:
    """A policy record (RFC 7489 6.3), with the defaults filled in."""

    domain: str  # where it was found, without the _dmarc label
    p: str
    sp: str
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"
    p_from_rua: bool = False  # p was missing or invalid; p=none because rua= is there (6.6.3)


@dataclass(frozen=True)
class DMARCResult:
    result: str  # none, pass, fail, temperror, permerror
    policy: str  # the policy to apply: none, quarantine or reject (after sp and pct)
    from_domain: str
    org_domain: str
    spf_aligned: bool
    dkim_aligned: bool
    reason: str
    requested: str = "none"  # the record's policy for this domain (p or sp) before pct
    record_domain: str = ""  # where the record was found ("" when none)
    sampled_out: bool = False  # pct chose not to apply the requested policy

    def method_result(self) -> MethodResult:
        return self._method_result

    @functools.cached_property  # a result kept by DMARCCache serves many messages
    def _method_result(self) -> MethodResult:
        props: list[tuple[str, str]] = []
        if self.from_domain:
            props.append(("header.from", self.from_domain))
        if self.record_domain:
            # The published policy for this domain (p, or sp for a subdomain), as receivers
            # usually show it; what was applied after pct is in ``policy`` and the reason.
            props.append(("policy.dmarc", self.requested))
        return MethodResult("dmarc", self.result, self.reason, tuple(props))


@functools.cache
def _psl() -> PublicSuffixList:
    # Loaded once (about 40 ms): the list shipped with the package, updated with it.
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2: the public suffix plus one label (``mail.example.co.uk`` ->
    ``example.co.uk``). A public suffix itself is its own organizational domain; an unknown
    TLD counts as a public suffix (the list's implicit ``*`` rule)."""
    return _organizational(domain.lower().rstrip("."))


@functools.lru_cache(maxsize=4096)
def _organizational(domain: str) -> str:
    # Cached: every message asks it two or three times for the same few domains.
    return _psl().privatesuffix(domain) or domain


def preload() -> None:
    """Load the Public Suffix List now (at server start), not in the first message's check."""
    _psl()


def header_from_domain(message: bytes, lowered: bytes | None = None) -> str | None:
    """The RFC5322.From domain (A-labels, lower case), or None when the message has no From
    or its From has no domain (then DMARC does not apply). Raises ``HeaderFromError``
    (permerror) for several From fields or several addresses (RFC 7489 6.6.1). ``lowered``:
    the message up to the CRLF before its first CRLF CRLF in lower case, if the caller has it
    (``inbound.judge_at_once`` does)."""
    crlf = message.find(b"\r\n\r\n")
    values = None
    if crlf > 0 and not message.startswith(b"\r\n"):  # (an empty first line: no header)
        head = message[: crlf + 2]
        values = _from_fields(head, lowered if lowered and len(lowered) == len(head) else None)
    if values is None:
        values = [
            v
            for name, v in split_fields(message[: _header_end(message)])
            if name.lower() == b"from"
        ]
    if not values:
        return None
    if len(values) > 1:
        raise HeaderFromError(
            "permerror", f"the message has {len(values)} From fields (RFC 7489 6.6.1)"
        )
    if len(values[0]) <= 1024:
        return _from_value_domain(values[0])  # the same sender's From again: cached
    return _from_domain(values[0])


# After a line start: "from" (in lower case here), then [ \t]* and the colon, as
# ``split_fields`` reads a field name (``[^:\s]+``, then ``[ \t]*:``).
_FROM_NAME = re.compile(rb"from[ \t]*:")


def _from_fields(head: bytes, low: bytes | None = None) -> list[bytes] | None:
    """The values of the From fields of ``head`` (the header section up to the CRLF before the
    first CRLF CRLF), as ``split_fields`` gives them, without splitting every field: only
    when every line of ``head`` ends in CRLF (then it has no empty line and no LF LF, so it
    is the whole header section ``_header_end`` finds); None otherwise (bare CR or LF).
    ``low``: ``head.lower()``, if the caller has it."""
    if not (only_crlf(head) and no_bare_cr(head)):  # (LF, CR and CRLF counts equal)
        return None
    if low is None:
        low = head.lower()
    # Where a line starts with "from": at 0, or after a LF (each ends a CRLF here).
    lines = [0] if low.startswith(b"from") else []
    i = low.find(b"\nfrom")
    while i >= 0:
        lines.append(i + 1)
        i = low.find(b"\nfrom", i + 1)
    values = []
    for line in lines:
        m = _FROM_NAME.match(low, line)
        if m is None:
            continue
        start = m.end()
        # The field goes on over continuation lines (RFC 5322 2.2.3: a line starting
        # with WSP).
        j = head.find(b"\r\n", start)
        while j >= 0 and head[j + 2 : j + 3] in (b" ", b"\t"):
            j = head.find(b"\r\n", j + 2)
        values.append(head[start : len(head) if j < 0 else j + 2])
    return values


def _from_domain(value: bytes) -> str | None:
    """The domain of a From field's value (see ``header_from_domain``)."""
    # Group markers carry no domain (None); a mailbox always has one (maybe MISSING_DOMAIN).
    mailboxes = [a for a in parse_address_list(value) if a[3] is not None]
    if len(mailboxes) > 1:
        raise HeaderFromError(
            "permerror", f"From holds {len(mailboxes)} addresses (RFC 7489 6.6.1)"
        )
    if not mailboxes or mailboxes[0][3] in (None, MISSING_DOMAIN):
        return None
    raw = mailboxes[0][3] or b""
    try:
        return normalise_domain(raw.decode("utf-8").strip().rstrip("."))
    except (AddressError, UnicodeDecodeError):
        raise HeaderFromError(
            "permerror", f"the From domain {raw.decode('utf-8', 'replace')!r} is not valid"
        ) from None


# A pure function of the value; HeaderFromError is raised again each time (never cached).
_from_value_domain = functools.lru_cache(maxsize=1024)(_from_domain)


async def check_message(
    resolver: CheckResolver,
    message: bytes,
    spf: SPFOutcome | None,
    dkim: Sequence[SignatureResult],
    *,
    budget: DNSBudget | None = None,
    rng: Callable[[], float] = random.random,
) -> DMARCResult:
    """``header_from_domain`` and ``evaluate_dmarc`` together: the DMARC result of a message."""
    try:
        from_domain = header_from_domain(message)
    except HeaderFromError as e:
        return DMARCResult(e.result, "none", "", "", False, False, e.reason)
    if from_domain is None:
        return DMARCResult(
            "none", "none", "", "", False, False, "no From domain: DMARC does not apply"
        )
    return await evaluate_dmarc(resolver, from_domain, spf, dkim, budget=budget, rng=rng)


async def evaluate_dmarc(
    resolver: CheckResolver,
    from_domain: str,
    spf: SPFOutcome | None,
    dkim: Sequence[SignatureResult],
    *,
    budget: DNSBudget | None = None,
    rng: Callable[[], float] = random.random,
    cache: DMARCCache | None = None,
) -> DMARCResult:
    """RFC 7489 6.6: the DMARC result for ``from_domain`` given what SPF and DKIM found.
    ``rng`` gives a float in [0, 1) for pct sampling (injectable for tests). ``cache``: the
    record discovered for the domain is kept as long as the DNS answers it was made of."""
    from_domain = from_domain.lower().rstrip(".")
    org = organizational_domain(from_domain)
    try:
        record, why_none = await discover_record(
            resolver, from_domain, org, budget=budget, cache=cache
        )
    except DNSTempError as e:
        return DMARCResult(
            "temperror",
            "none",
            from_domain,
            org,
            False,
            False,
            f"the DMARC record of {from_domain} could not be fetched ({e})",
        )
    except DNSBudgetExceeded as e:
        return DMARCResult(
            "none", "none", from_domain, org, False, False, f"DMARC not checked: {e}"
        )
    return _evaluate(from_domain, org, record, why_none, spf, dkim, rng)


def evaluate_cached(
    cache: DMARCCache,
    from_domain: str,
    spf: SPFOutcome | None,
    dkim: Sequence[SignatureResult],
    *,
    rng: Callable[[], float] = random.random,
) -> DMARCResult | None:
    """``evaluate_dmarc``'s result when the domain's record discovery is in ``cache``, without
    a coroutine; None when it is not (ask ``evaluate_dmarc``)."""
    from_domain = from_domain.lower().rstrip(".")
    found = cache.get(from_domain)
    if found is None:
        return None
    record, why_none = found
    # A result is a function of the discovery, SPF's result and domain, and what ``_evaluate``
    # reads of each signature's result (its result and domain, and the reason of a
    # temperror): without pct sampling it is kept with the discovery it was made of, by those.
    # (The signatures are verified for every message; only DMARC's reading of them repeats.)
    memo = spf is not None and (record is None or record.pct >= 100)
    if memo:
        assert spf is not None
        given = (from_domain, spf.result, spf.domain, _dkim_summary(dkim))
        kept = cache.results.get(given)
        if kept is not None and kept[0] is found:
            return kept[1]
    result = _evaluate(
        from_domain, organizational_domain(from_domain), record, why_none, spf, dkim, rng
    )
    if memo:
        cache.keep_result(given, found, result)
    return result


def _dkim_summary(dkim: Sequence[SignatureResult]) -> tuple[tuple[str, str, str], ...]:
    """All that ``_evaluate`` reads of the DKIM results."""
    return tuple((s.result, s.domain, s.reason if s.result == "temperror" else "") for s in dkim)


def _evaluate(
    from_domain: str,
    org: str,
    record: DMARCRecord | None,
    why_none: str,
    spf: SPFOutcome | None,
    dkim: Sequence[SignatureResult],
    rng: Callable[[], float],
) -> DMARCResult:
    """RFC 7489 6.6.2 on the discovered record (or its absence, ``why_none``)."""
    if record is None:
        return DMARCResult("none", "none", from_domain, org, False, False, why_none)

    spf_pass = spf is not None and spf.result == "pass"
    spf_domain = spf.domain.lower().rstrip(".") if spf is not None else ""
    spf_aligned = spf_pass and _aligned(spf_domain, from_domain, record.aspf)
    passing = [s for s in dkim if s.result == "pass"]
    dkim_aligned_sig = next(
        (s for s in passing if _aligned(s.domain, from_domain, record.adkim)), None
    )
    dkim_aligned = dkim_aligned_sig is not None

    # sp applies to a subdomain whose policy came from its organizational domain (6.3 sp).
    subdomain = record.domain != from_domain
    requested = record.sp if subdomain else record.p
    which = "sp" if subdomain else "p"
    found_at = f"_dmarc.{record.domain}"

    if spf_aligned or dkim_aligned:
        how = []
        if dkim_aligned_sig is not None:
            how.append(f"DKIM passed for {dkim_aligned_sig.domain}")
        if spf_aligned:
            how.append(f"SPF passed for {spf_domain}")
        return DMARCResult(
            "pass",
            "none",
            from_domain,
            org,
            spf_aligned,
            dkim_aligned,
            f"{' and '.join(how)}, aligned with From {from_domain}, so DMARC passes",
            requested=requested,
            record_domain=record.domain,
        )

    reasons = _fail_reasons(from_domain, record, spf, spf_domain, passing)
    temporary = _temporary(from_domain, record, spf, spf_domain, dkim)
    if temporary:
        return DMARCResult(
            "temperror",
            "none",
            from_domain,
            org,
            False,
            False,
            f"{temporary}; DMARC may pass when it can be checked",
            requested=requested,
            record_domain=record.domain,
        )
    policy = requested
    sampled_out = False
    if record.pct < 100 and rng() * 100 >= record.pct:
        # 6.6.4: a message not chosen by pct gets the next weaker policy.
        policy, sampled_out = WEAKER[requested], True
    verdict = f"so DMARC fails; {found_at} asks {which}={requested}"
    if record.p_from_rua:
        verdict += " (no valid p=, but rua= is there: p=none, RFC 7489 6.6.3)"
    if sampled_out:
        verdict += f", pct={record.pct} did not pick this message: {policy} applies"
    elif record.pct < 100:
        verdict += f", pct={record.pct} picked this message"
    return DMARCResult(
        "fail",
        policy,
        from_domain,
        org,
        False,
        False,
        f"{'; '.join(reasons)}, {verdict}",
        requested=requested,
        record_domain=record.domain,
        sampled_out=sampled_out,
    )


async def discover_record(
    resolver: CheckResolver,
    from_domain: str,
    org: str,
    *,
    budget: DNSBudget | None = None,
    cache: DMARCCache | None = None,
) -> tuple[DMARCRecord | None, str]:
    """RFC 7489 6.6.3: the record at ``_dmarc.<from>``, else at ``_dmarc.<org>``; or None and
    why. A DNS failure raises ``DNSTempError``. ``cache``: what was found before for
    ``from_domain``, while the answers it was made of are kept (no lookup, no budget spent)."""
    if cache is not None:
        found = cache.get(from_domain)
        if found is not None:
            return found
    resolver = budgeted(resolver, budget)  # each lookup spends the message's budget
    asked = [f"_dmarc.{from_domain}"]
    record, why = await _record_at(resolver, from_domain)
    if record is None and why is None and org != from_domain:
        asked.append(f"_dmarc.{org}")
        record, why = await _record_at(resolver, org)
    if record is not None:
        found = record, ""
    elif why:
        found = None, why
    else:
        where = f"_dmarc.{from_domain}" + (f" or _dmarc.{org}" if org != from_domain else "")
        found = None, f"no DMARC record at {where}: the domain publishes no policy"
    if cache is not None:
        cache.put(from_domain, found, asked)
    return found


class DMARCCache(AnswerBoundResults[str, tuple[DMARCRecord | None, str]]):
    """What ``discover_record`` found for a From domain (the record, or why there is none),
    kept until the first of the TXT answers it was made of leaves ``answers`` (the server's
    ``CachingResolver``, whose TTLs they are): the same answers give the same discovery
    (RFC 7489 6.6.3 reads nothing else). A lookup that failed raises, so nothing is kept of
    it; nor of an answer the resolver does not keep (TTL 0). At most ``max_entries`` (the
    oldest goes first). ``clock``: IReactorTime."""

    def __init__(
        self, answers: AnswerLifetimes, clock: IReactorTime, max_entries: int = 10000
    ) -> None:
        super().__init__(answers, clock, max_entries)
        # evaluate_cached's results by (from domain, SPF result, SPF domain, DKIM summary),
        # with the discovery they were made of (valid while it is the one kept).
        self.results: dict[tuple[object, ...], tuple[object, DMARCResult]] = {}

    def get(self, from_domain: str) -> tuple[DMARCRecord | None, str] | None:
        entry = self._kept.entry(from_domain)
        return None if entry is None else entry[0]

    def keep_result(self, given: tuple[object, ...], found: object, result: DMARCResult) -> None:
        self.results[given] = (found, result)
        if len(self.results) > self.max_entries:
            del self.results[next(iter(self.results))]  # the oldest

    def put(
        self, from_domain: str, found: tuple[DMARCRecord | None, str], asked: Sequence[str]
    ) -> None:
        self._kept.put(from_domain, found, [(name, "TXT") for name in asked])


async def _record_at(resolver: CheckResolver, domain: str) -> tuple[DMARCRecord | None, str | None]:
    """The record at ``_dmarc.<domain>``; (None, None) when there is none to use (go on to the
    organizational domain); (None, why) when discovery ends here without a policy."""
    name = f"_dmarc.{domain}"
    answer: Lookup[bytes] = await resolver.txt(name)
    # 6.6.3 step 2: records that do not start with v=DMARC1 are discarded.
    candidates = [r for r in answer.records if _is_dmarc(r)]
    if not candidates:
        return None, None
    if len(candidates) > 1:
        return None, (f"{len(candidates)} DMARC records at {name}: none applies (RFC 7489 6.6.3)")
    record = parse_record(domain, candidates[0])
    if record is None:
        return None, f"the DMARC record at {name} has no valid p= and no rua=: none applies"
    return record, None


def _is_dmarc(raw: bytes) -> bool:
    first = raw.lstrip().split(b";", 1)[0]
    name, eq, value = first.partition(b"=")
    return eq == b"=" and name.strip() == b"v" and value.strip() == b"DMARC1"


@functools.lru_cache(maxsize=1024)  # keyed by the record text; DMARCRecord is immutable
def parse_record(domain: str, raw: bytes) -> DMARCRecord | None:
    """RFC 7489 6.3 and 6.6.3: a record starting ``v=DMARC1``; unknown tags ignored, invalid
    optional values replaced by their defaults. None when there is no valid p= and no rua=
    (a record without p= but with rua= counts as p=none)."""
    try:
        tags = {k.lower(): v for k, v in parse_tags(raw).items()}
    except TagListError:
        # Syntax errors "SHOULD be discarded in favor of default values" (6.3): parse leniently.
        tags = {}
        for spec in raw.split(b";"):
            name, eq, value = spec.partition(b"=")
            if eq and name.strip().lower().decode("ascii", "replace") not in tags:
                tags[name.strip().lower().decode("ascii", "replace")] = value.strip()
    p = _policy(tags.get("p"))
    sp = _policy(tags.get("sp"))
    p_from_rua = False
    if p is None or ("sp" in tags and sp is None):
        if not _has_rua(tags.get("rua")):
            return None
        p, sp, p_from_rua = "none", None, True
    pct = _pct(tags.get("pct"))
    return DMARCRecord(
        domain,
        p,
        sp or p,
        pct,
        _mode(tags.get("adkim")),
        _mode(tags.get("aspf")),
        p_from_rua,
    )


def _policy(value: bytes | None) -> str | None:
    if value is None:
        return None
    text = value.strip().lower().decode("ascii", "replace")
    return text if text in POLICIES else None


def _has_rua(value: bytes | None) -> bool:
    # 6.6.3: "at least one syntactically valid reporting URI": a URI with a scheme.
    if not value:
        return False
    return any(b":" in uri.strip() for uri in value.split(b","))


def _pct(value: bytes | None) -> int:
    if value is None or not value.strip().isdigit():
        return 100
    number = int(value.strip())
    return number if 0 <= number <= 100 else 100


def _mode(value: bytes | None) -> str:
    return "s" if value is not None and value.strip().lower() == b"s" else "r"


def _aligned(domain: str, from_domain: str, mode: str) -> bool:
    """RFC 7489 3.1: strict is the same domain; relaxed the same organizational domain."""
    domain = domain.lower().rstrip(".")
    if not domain:
        return False
    if mode == "s":
        return domain == from_domain
    return organizational_domain(domain) == organizational_domain(from_domain)


def _fail_reasons(
    from_domain: str,
    record: DMARCRecord,
    spf: SPFOutcome | None,
    spf_domain: str,
    passing: Sequence[SignatureResult],
) -> list[str]:
    """Why neither identifier passed aligned, in words."""
    reasons: list[str] = []
    strict_dkim = " (adkim=s: strict)" if record.adkim == "s" else ""
    strict_spf = " (aspf=s: strict)" if record.aspf == "s" else ""
    if passing:
        others = ", ".join(sorted({s.domain for s in passing}))
        reasons.append(f"DKIM passed but is not aligned with From: {from_domain} != {others}")
        reasons[-1] += strict_dkim
    else:
        reasons.append("no DKIM signature passed")
    if spf is None:
        reasons.append("SPF was not checked")
    elif spf.result == "pass":
        reasons.append(
            f"SPF passed but is not aligned with From: {from_domain} != {spf_domain}{strict_spf}"
        )
    else:
        reasons.append(f"SPF is {spf.result} for {spf_domain or 'the sender'}")
    return reasons


def _temporary(
    from_domain: str,
    record: DMARCRecord,
    spf: SPFOutcome | None,
    spf_domain: str,
    dkim: Sequence[SignatureResult],
) -> str:
    """An aligned identifier that could not be checked now (a DNS timeout): say which."""
    for sig in dkim:
        if sig.result == "temperror" and _aligned(sig.domain, from_domain, record.adkim):
            return f"DKIM for {sig.domain} could not be checked now ({sig.reason})"
    if (
        spf is not None
        and spf.result == "temperror"
        and _aligned(spf_domain, from_domain, record.aspf)
    ):
        return f"SPF for {spf_domain} could not be checked now (temperror)"
    return ""


def _header_end(message: bytes) -> int:
    crlf = message.find(b"\r\n\r\n")
    # A bare LF LF matters only before the first CRLF CRLF: not searched for in the body.
    lf = message.find(b"\n\n", 0, len(message) if crlf < 0 else crlf + 1)
    ends = [i + 2 for i in (crlf, lf) if i >= 0]
    return min(ends) if ends else len(message)
