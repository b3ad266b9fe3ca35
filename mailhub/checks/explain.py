"""What the checks found, in words a developer understands (the dev stack's page and API).

Built only from an ``Authentication-Results:`` field (``results.parse``), with the properties
the checks write (RFC 8601 2.7; RFC 7489 11.2; RFC 8617 10):

- spf: ``smtp.mailfrom``, ``smtp.helo``;
- dkim: ``header.d``, ``header.s``, ``header.a``, ``header.b``;
- dmarc: ``header.from``, ``policy.dmarc``;
- arc: a reason naming the chain ("chain of 2 sets: ...");

and a ``reason`` in words on each result, which is the "why" shown when there is one. Where a
property is missing, less is said; nothing here raises on what a header holds.

DMARC's alignment (RFC 7489 3.1) is worked out again here from those domains, to show it: an
identifier is aligned in strict mode when its domain is the From domain, in relaxed mode when
both have the same organizational domain (``dmarc.organizational_domain``, RFC 7489 3.2).
Which mode the domain's record asks for is not in the header, so both are named.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from mailhub.checks.dmarc import organizational_domain
from mailhub.checks.results import AuthenticationResults, MethodResult, all_results, parse

MAX_SIGNATURES = 20  # DKIM results listed (a field from elsewhere may hold any number)
MAX_OTHER = 20  # results of other methods listed (auth, iprev, ...)
MAX_WORDS = 2000  # characters of a reason shown
MAX_FIELD = 64 * 1024  # characters of one field read (~1 ms a KiB; a field past it is cut)
MAX_FIELDS = 50  # Authentication-Results fields of one message read, top first


@dataclass(frozen=True)
class SPF:
    result: str
    domain: str | None  # the domain whose record was checked
    identity: str | None  # "mailfrom" or "helo" (RFC 7208 2.3, 2.4): which one was checked
    mailfrom: str | None
    helo: str | None
    why: str


@dataclass(frozen=True)
class DKIM:
    result: str
    domain: str | None  # d=
    selector: str | None  # s=
    algorithm: str | None  # a=
    signature: str | None  # the start of b=: tells two signatures of one domain apart
    why: str


@dataclass(frozen=True)
class DMARC:
    result: str
    # policy.dmarc (RFC 7489 11.2): the policy applied, after sp= and pct= (none, quarantine,
    # reject); the checks write none when DMARC passes (there is nothing to apply).
    policy: str | None
    from_domain: str | None
    # "strict": the same domain as From (aligned in either mode); "relaxed": the same
    # organizational domain only (aligned unless the record asks for strict); "no"; None:
    # nothing to compare.
    spf_alignment: str | None
    dkim_alignment: str | None
    spf_aligned: bool | None  # SPF passed for an aligned domain (relaxed mode)
    dkim_aligned: bool | None  # some DKIM signature passed for an aligned domain
    why: str


@dataclass(frozen=True)
class ARC:
    result: str
    instances: int | None  # sets in the chain (RFC 8617 4.2.1), when the reason names them
    why: str


@dataclass(frozen=True)
class Other:
    method: str
    result: str
    why: str
    properties: dict[str, str]


@dataclass(frozen=True)
class Explanation:
    """One field's results explained; ``checked`` False: there was no field to explain."""

    checked: bool
    authserv_id: str | None
    summary: str
    # True: SPF and DKIM pass and DMARC passes, what Gmail and Yahoo ask of bulk senders since
    # 2024; False: they would not take it as such; None: cannot be said from these results.
    bulk_sender: bool | None = None
    spf: SPF | None = None
    dkim: tuple[DKIM, ...] = ()
    dmarc: DMARC | None = None
    arc: ARC | None = None
    other_methods: tuple[Other, ...] = ()
    other_servers: tuple[str, ...] = field(default=())  # authserv-ids of fields not ours

    def json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("dkim", "other_methods", "other_servers"):
            out[key] = list(out[key])  # as JSON will have them
        return out


def explain(
    results: AuthenticationResults | None,
    *,
    authserv_id: str | None = None,
    others: tuple[str, ...] = (),
) -> Explanation:
    """``results`` (our field, or None when the message has none) in words. ``others``: the
    authserv-ids of the fields other servers wrote, named but not believed (RFC 8601 5)."""
    if results is None:
        return _not_checked(authserv_id, others)
    spf_results = [r for r in results.results if r.method == "spf"]
    # One SPF result, the MAIL FROM one if there are several (it is the one DMARC uses).
    spf_result = next((r for r in spf_results if r.property("smtp.mailfrom")), None)
    spf_result = spf_result or (spf_results[0] if spf_results else None)
    spf = _spf(spf_result) if spf_result else None
    dkim = tuple(_dkim(r) for r in results.results if r.method == "dkim")[:MAX_SIGNATURES]
    dmarc_result = _first(results, "dmarc")
    dmarc = _dmarc(dmarc_result, spf, dkim) if dmarc_result else None
    arc_result = _first(results, "arc")
    other = tuple(
        Other(r.method, r.result, _words(r.reason), dict(r.properties))
        for r in results.results
        if r.method not in ("spf", "dkim", "dmarc", "arc")
    )[:MAX_OTHER]
    # RFC 8601 2.7.4: the sender logged in (authenticated submission). SPF judges the server
    # that hands mail to a receiver, so here it says nothing of what a receiver will find.
    submitted = any(r.method == "auth" and r.result == "pass" for r in results.results)
    summary, bulk = _verdict(spf, dkim, dmarc, submitted=submitted)
    return Explanation(
        checked=True,
        authserv_id=results.authserv_id,
        summary=summary,
        bulk_sender=bulk,
        spf=spf,
        dkim=dkim,
        dmarc=dmarc,
        arc=_arc(arc_result) if arc_result else None,
        other_methods=other,
        other_servers=others,
    )


def explain_message(
    headers: Iterable[tuple[str, bytes | str]], authserv_id: str | None
) -> Explanation:
    """A message's results explained: its top-most field from ``authserv_id`` (``results.ours``;
    any top-most one when None), the other servers' fields only named. ``headers``: the
    message's fields in order, top first. What is read is bounded (the page's answer must not
    hold the reactor for a message made to be slow): the first MAX_FIELDS fields, the first
    MAX_FIELD characters of each."""
    wanted = (
        (name, (value if isinstance(value, bytes | str) else str(value))[:MAX_FIELD])
        for name, value in headers
        if name.strip().lower() == "authentication-results"
    )
    fields = all_results(itertools.islice(wanted, MAX_FIELDS))
    mine = next(
        (f for f in fields if authserv_id is None or f.authserv_id.lower() == authserv_id.lower()),
        None,
    )
    own = (authserv_id or (mine.authserv_id if mine else "")).lower()
    others = tuple(dict.fromkeys(f.authserv_id for f in fields if f.authserv_id.lower() != own))
    return explain(mine, authserv_id=authserv_id, others=others)


def brief(value: bytes | str) -> tuple[str, str, str, str]:
    """A message list's badge: (authserv-id, SPF, DKIM, DMARC result) of one field; "" for a
    method it lacks; DKIM's is "pass" if any signature passed, else the first one's."""
    read = parse(value[:MAX_FIELD])

    def first(method: str) -> str:
        return next((r.result for r in read.results if r.method == method), "")

    dkim = [r.result for r in read.results if r.method == "dkim"]
    return (
        read.authserv_id,
        first("spf"),
        "pass" if "pass" in dkim else (dkim[0] if dkim else ""),
        first("dmarc"),
    )


def _not_checked(authserv_id: str | None, others: tuple[str, ...]) -> Explanation:
    by = f" from {authserv_id}" if authserv_id else ""
    summary = (
        f"Not checked: the message has no Authentication-Results field{by} (the checks were "
        "off when it arrived, or it came in before they ran)."
    )
    if others:
        summary += (
            f" It carries {len(others)} written by other servers ({', '.join(others[:5])}); "
            "they are not shown: anyone can write one."
        )
    return Explanation(False, authserv_id, summary, other_servers=others)


def _first(results: AuthenticationResults, method: str) -> MethodResult | None:
    return next((r for r in results.results if r.method == method), None)


def _words(text: str) -> str:
    return text[:MAX_WORDS]


def _domain(value: str | None) -> str | None:
    """The domain of an address or a domain (``smtp.mailfrom`` may hold either, RFC 8601
    2.7.2; ``header.i`` may be "@domain"); None for nothing."""
    if not value:
        return None
    domain = value.rpartition("@")[2].strip().strip("<>").rstrip(".").lower()
    return domain or None


# --- SPF (RFC 7208 2.6) ---------------------------------------------------------------------

_SPF_WORDS = {
    "pass": "{domain} allows the sending host to send its mail (SPF pass).",
    "fail": "{domain}'s SPF record says the sending host may not send its mail (-all).",
    "softfail": "{domain}'s SPF record says the sending host is probably not allowed (~all).",
    "neutral": "{domain}'s SPF record says nothing about the sending host (?all).",
    "none": "{domain} publishes no SPF record.",
    "temperror": "{domain}'s SPF record could not be checked now (a DNS error): receivers try "
    "again later.",
    "permerror": "{domain}'s SPF record is broken (bad syntax, or more than 10 DNS lookups).",
    "policy": "SPF was not believed, by local policy.",
}


def _spf(r: MethodResult) -> SPF:
    mailfrom, helo = r.property("smtp.mailfrom"), r.property("smtp.helo")
    domain = _domain(mailfrom)
    identity: str | None = "mailfrom"
    if domain is None:  # the null reverse-path: the HELO identity is checked (RFC 7208 2.4)
        domain, identity = _domain(helo), "helo"
    if domain is None:
        identity = None
    why = _words(r.reason) or _SPF_WORDS.get(r.result, "SPF says {result}.").format(
        domain=domain or "The sending domain", result=r.result
    )
    return SPF(r.result, domain, identity, mailfrom, helo, why)


# --- DKIM (RFC 6376 6.1; RFC 8601 2.7.1) ----------------------------------------------------

_DKIM_WORDS = {
    "pass": "The signature by {domain} verifies: the signed header fields and the body are as "
    "signed.",
    "fail": "The signature by {domain} does not verify: the message was changed after it was "
    "signed, or the key published at {key} is not the one it was signed with.",
    "neutral": "The signature by {domain} could not be judged.",
    "policy": "The signature by {domain} verifies but is not accepted, by local policy.",
    "temperror": "The key of {domain} could not be fetched now ({key}: a DNS error); receivers "
    "try again later.",
    "permerror": "The signature by {domain} cannot be verified: it is malformed, or its key at "
    "{key} is missing or unusable.",
}


def _dkim(r: MethodResult) -> DKIM:
    domain = r.property("header.d") or _domain(r.property("header.i"))
    selector = r.property("header.s")
    if r.result == "none" and not domain:
        why = "The message has no DKIM signature."
    else:
        key = f"{selector}._domainkey.{domain}" if selector and domain else "its selector"
        why = _DKIM_WORDS.get(r.result, "DKIM says {result}.").format(
            domain=domain or "an unnamed domain", key=key, result=r.result
        )
    return DKIM(
        r.result,
        domain,
        selector,
        r.property("header.a"),
        r.property("header.b"),
        _words(r.reason) or why,
    )


# --- DMARC (RFC 7489 3.1, 6.6) --------------------------------------------------------------


def alignment(identifier: str | None, from_domain: str | None) -> str | None:
    """``"strict"`` (the same domain), ``"relaxed"`` (the same organizational domain),
    ``"no"``, or None when either domain is unknown."""
    if not identifier or not from_domain:
        return None
    a, b = identifier.lower().rstrip("."), from_domain.lower().rstrip(".")
    if a == b:
        return "strict"
    if organizational_domain(a) == organizational_domain(b):
        return "relaxed"
    return "no"


def _dmarc(r: MethodResult, spf: SPF | None, dkim: tuple[DKIM, ...]) -> DMARC:
    from_domain = _domain(r.property("header.from"))
    policy = r.property("policy.dmarc")
    policy = policy.lower() if policy else None
    # DMARC counts SPF only for the MAIL FROM domain, or HELO for the null reverse-path
    # (RFC 7489 3.1.2 with RFC 7208 2.4): the domain SPF checked either way.
    spf_alignment = alignment(spf.domain, from_domain) if spf else None
    spf_aligned = None
    if spf is not None and spf_alignment is not None:
        spf_aligned = spf.result == "pass" and spf_alignment != "no"
    passed = [d for d in dkim if d.result == "pass"]
    dkim_alignments = [alignment(d.domain, from_domain) for d in passed]
    dkim_alignment = next(
        (a for a in ("strict", "relaxed", "no") if a in dkim_alignments),
        alignment(dkim[0].domain, from_domain) if dkim else None,
    )
    dkim_aligned = None
    if from_domain is not None and dkim:
        dkim_aligned = any(a in ("strict", "relaxed") for a in dkim_alignments)
    why = _words(r.reason) or _dmarc_words(r.result, from_domain, policy, spf, passed)
    return DMARC(
        r.result,
        policy,
        from_domain,
        spf_alignment,
        dkim_alignment,
        spf_aligned,
        dkim_aligned,
        why,
    )


_POLICY_WORDS = {
    "reject": "asks receivers to reject it",
    "quarantine": "asks receivers to treat it as spam",
    "none": "asks receivers only to report it",
}


def _dmarc_words(
    result: str, from_domain: str | None, policy: str | None, spf: SPF | None, passed: list[DKIM]
) -> str:
    author = from_domain or "the From domain"
    if result == "pass":
        aligned = ("strict", "relaxed")
        how = [f"DKIM ({d.domain})" for d in passed if alignment(d.domain, from_domain) in aligned]
        if spf and spf.result == "pass" and alignment(spf.domain, from_domain) in aligned:
            how.insert(0, f"SPF ({spf.domain})")
        through = " and ".join(how) or "SPF or DKIM"
        return f"DMARC passes: {through} passed for a domain aligned with From: {author}."
    if result == "fail":
        reasons = []
        for d in passed:
            if alignment(d.domain, from_domain) == "no":
                reasons.append(f"DKIM passed but is not aligned with From: {author} ≠ {d.domain}")
            elif alignment(d.domain, from_domain) == "relaxed":
                reasons.append(
                    f"DKIM passed for {d.domain}, aligned with From: {author} only in relaxed "
                    "mode (the record asks for strict alignment: adkim=s)"
                )
        if spf is not None and spf.result == "pass" and spf.domain:
            kind = alignment(spf.domain, from_domain)
            if kind == "no":
                reasons.append(f"SPF passed but is not aligned with From: {author} ≠ {spf.domain}")
            elif kind == "relaxed":
                reasons.append(
                    f"SPF passed for {spf.domain}, aligned with From: {author} only in relaxed "
                    "mode (the record asks for strict alignment: aspf=s)"
                )
        if not reasons and (passed or (spf is not None and spf.result == "pass")):
            reasons.append("the field does not name the domain SPF or DKIM passed for")
        elif not reasons:
            reasons.append("neither SPF nor DKIM passed")
        text = "; ".join(reasons) + ", so DMARC fails."
        clause = _POLICY_WORDS.get(policy or "")
        if clause:
            text += f" {author}'s DMARC policy ({policy}) {clause}."
        return text[0].upper() + text[1:]
    if result == "none":
        return f"{author} publishes no DMARC record, so DMARC does not apply."
    if result == "temperror":
        return f"The DMARC record of {author} could not be fetched now (a DNS error)."
    if result == "permerror":
        return (
            f"The DMARC record of {author} is broken, or the message has more or fewer than one "
            "From address."
        )
    return f"DMARC says {result}."


# --- ARC (RFC 8617 5.2) ---------------------------------------------------------------------

_CHAIN = re.compile(r"\bchain of (\d{1,3}) (?:set|instance)", re.IGNORECASE)
_ARC_WORDS = {
    "none": "No ARC set: no forwarder sealed the message (ARC matters for forwarded mail).",
    "pass": "The ARC chain verifies: the results its forwarders recorded can be trusted as far "
    "as the forwarders are.",
    "fail": "The ARC chain is broken: a seal does not verify, or the message was changed after "
    "the last one.",
}


def _arc(r: MethodResult) -> ARC:
    m = _CHAIN.search(r.reason)
    why = _words(r.reason) or _ARC_WORDS.get(r.result, f"ARC says {r.result}.")
    return ARC(r.result, int(m[1]) if m else None, why)


# --- the verdict ----------------------------------------------------------------------------


def _verdict(
    spf: SPF | None, dkim: tuple[DKIM, ...], dmarc: DMARC | None, *, submitted: bool = False
) -> tuple[str, bool | None]:
    """One sentence, and whether the results meet what Gmail and Yahoo ask of bulk senders
    (since February 2024: SPF and DKIM, and DMARC passing for the From domain)."""
    spf_pass = spf is not None and spf.result == "pass"
    dkim_pass = any(d.result == "pass" for d in dkim)
    if dmarc is None:
        if spf is None and not dkim:
            return "No SPF, DKIM or DMARC result in the field.", None
        return (
            "DMARC was not evaluated, so it cannot be said whether Gmail or Yahoo would take "
            "this from a bulk sender.",
            None,
        )
    author = dmarc.from_domain or "the From domain"
    if dmarc.result == "pass":
        if spf_pass and dkim_pass:
            return (
                "Meets Gmail's and Yahoo's authentication rules for bulk senders: SPF and DKIM "
                f"pass, and DMARC passes for From: {author}.",
                True,
            )
        if dkim_pass and submitted:
            return (
                f"DKIM passes and DMARC passes for From: {author}. SPF is judged by the "
                "receiver, for the server that relays this mail to it: that server must be in "
                "the SPF record of the MAIL FROM domain.",
                None,
            )
        if spf_pass or dkim_pass:
            missing = "DKIM" if spf_pass else "SPF"
            return (
                f"DMARC passes for From: {author}, but {missing} does not: Gmail and Yahoo want "
                "both SPF and DKIM from bulk senders.",
                False,
            )
        return f"DMARC passes for From: {author}.", None
    if dmarc.result == "fail":
        policy = f" ({dmarc.policy})" if dmarc.policy else ""
        return (
            f"DMARC fails for From: {author}: receivers apply its policy{policy}; Gmail and "
            "Yahoo would not take it from a bulk sender.",
            False,
        )
    if dmarc.from_domain is None:
        # No From domain named: not judged (the checks record a message too big to check so)
        # or no From to judge; nothing to say of a receiver's verdict.
        return f"DMARC was not evaluated: {dmarc.why}", None
    if dmarc.result in ("none", "permerror"):
        return (
            f"DMARC does not apply to From: {author} ({dmarc.why}); Gmail and Yahoo require a "
            "DMARC record from bulk senders (p=none is enough).",
            False,
        )
    return f"DMARC could not be evaluated ({dmarc.result}): {dmarc.why}", None
