"""The DNS records a domain needs so that its mail from mailhub is delivered, and whether DNS has
them (``mailhub dns DOMAIN`` prints them, ``mailhub check-config --dns`` checks them).

For a domain whose mail mailhub receives and sends (``[server] hostname`` is the MX host and the
name it says in EHLO):

- **MX** (RFC 5321 5.1): the domain's mail comes to ``hostname``, which needs A/AAAA records;
- **SPF** (RFC 7208): ``v=spf1 mx -all`` (the MX hosts' addresses may send, nothing else), or the
  sending addresses named (``ip4:``/``ip6:``); and one for the HELO name, which is the identity
  SPF checks for bounces (the null sender, RFC 7208 2.4);
- **DKIM** (RFC 6376 3.6.2): each key's record at ``<selector>._domainkey.<domain>``, the retired
  keys' too until they are removed (rotation: ``mailhub.checks.keys``);
- **DMARC** (RFC 7489 6.1): ``_dmarc.<domain>``, ``p=none`` to start, with reports to postmaster;
- **PTR**: the reverse DNS of each sending address names ``hostname``, and ``hostname``
  resolves back to it (forward-confirmed; the large mailbox providers refuse mail without it).
  The owner of the address sets it (the hosting provider), not the domain's zone.

``check_domain`` looks each one up through a ``CheckResolver`` and says, per record, ``ok``,
``problem`` (mail will fail somewhere), ``advice`` (works, could be better) or ``temperror``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from mailhub.checks.dns import CheckResolver, DNSTempError
from mailhub.checks.keys import KeyFile, zone_line

OK, PROBLEM, ADVICE, TEMPORARY = "ok", "problem", "advice", "temperror"

DMARC_START = "v=DMARC1; p=none; rua=mailto:postmaster@{domain}"
DMARC_NEXT = (
    "p=none only asks for reports (sent to rua=). When they show that all your mail passes "
    "(SPF or DKIM aligned with From), go to p=quarantine, then to p=reject (RFC 7489 6.3); "
    "pct= moves a share of the mail at a time"
)


@dataclass(frozen=True)
class Record:
    """One record to publish: ``name`` (no trailing dot), ``type``, ``value`` (a TXT value
    unquoted), and why, in words."""

    name: str
    type: str
    value: str
    why: str

    def zone_line(self) -> str:
        if self.type == "TXT":
            return zone_line(self.name, self.value)
        return f"{self.name}. IN {self.type} {self.value}"


def spf_record(sending_ips: Sequence[str]) -> str:
    """``v=spf1 mx -all``, or the sending addresses themselves (RFC 7208 5.6)."""
    if not sending_ips:
        return "v=spf1 mx -all"
    terms = [
        f"ip{ipaddress.ip_address(ip).version}:{ipaddress.ip_address(ip)}" for ip in sending_ips
    ]
    return "v=spf1 " + " ".join(terms) + " -all"


def records_for(
    domain: str,
    *,
    hostname: str,
    sending_ips: Sequence[str] = (),
    keys: Sequence[KeyFile] = (),
    smarthost: str = "",
) -> tuple[list[Record], list[str]]:
    """The records ``domain`` needs, and notes (what cannot be a record of its zone)."""
    notes: list[str] = []
    records = [
        Record(domain, "MX", f"10 {hostname}.", f"mail for {domain} comes to {hostname}"),
    ]
    ips = [str(ipaddress.ip_address(ip)) for ip in sending_ips]
    for ip in ips:
        kind = "A" if ipaddress.ip_address(ip).version == 4 else "AAAA"
        records.append(Record(hostname, kind, ip, f"{hostname}, the MX host and HELO name"))
    if not ips:
        notes.append(
            f"{hostname} needs A (and AAAA) records of this server: the MX points at it, and "
            "`v=spf1 mx` lets its addresses send. Give --ip ADDRESS to print them."
        )
    spf = spf_record(ips)
    spf_why = "SPF (RFC 7208): only these addresses may send mail from " + domain
    if smarthost:
        spf_why = f"SPF (RFC 7208): mail leaves through the smarthost {smarthost}"
        notes.append(
            f"Mail leaves through the smarthost {smarthost}: put its provider's SPF term (their "
            f'documentation names it, e.g. "include:_spf.provider.example") before -all.'
        )
    records.append(Record(domain, "TXT", spf, spf_why))
    if hostname != domain:
        records.append(
            Record(
                hostname,
                "TXT",
                "v=spf1 a -all",
                "SPF for the HELO name: bounces (MAIL FROM <>) are checked against it (RFC 7208 "
                "2.4)",
            )
        )
    for key in keys:
        state = (
            "retired: no longer signs; remove the record a week or so after retiring it"
            if key.retired
            else "signs now"
        )
        why = f"DKIM (RFC 6376): {key.key.algorithm}, {key.bits} bits, {state}"
        records.append(Record(key.record_name, "TXT", key.record, why))
    if not keys:
        notes.append(
            f"No DKIM keys for {domain}: make them with `mailhub dkim keygen {domain}`; their "
            "records then appear here."
        )
    records.append(
        Record(
            f"_dmarc.{domain}",
            "TXT",
            DMARC_START.format(domain=domain),
            "DMARC (RFC 7489): start with p=none. " + DMARC_NEXT,
        )
    )
    for ip in ips:
        reverse = ipaddress.ip_address(ip).reverse_pointer
        records.append(
            Record(
                reverse,
                "PTR",
                f"{hostname}.",
                f"reverse DNS of {ip}: set by whoever owns the address (the hosting provider's "
                f"panel), not in {domain}'s zone; {hostname} must resolve back to {ip}",
            )
        )
    if not ips:
        notes.append(
            f"PTR: the reverse DNS of each address mail leaves from must be {hostname}, and "
            f"{hostname} must resolve back to that address (the hosting provider sets PTR "
            "records)."
        )
    return records, notes


# --- checking what DNS has ------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """What DNS says of one record: ``what`` (MX, SPF, DMARC, PTR ...), ``status`` and why."""

    what: str
    status: str
    detail: str


def _name(value: str) -> str:
    return value.lower().rstrip(".")


async def our_addresses(resolver: CheckResolver, hostname: str) -> tuple[list[str], Finding]:
    """The addresses of ``hostname`` (A and AAAA), and a finding on them."""
    found: list[str] = []
    try:
        for lookup in (resolver.a, resolver.aaaa):
            found.extend((await lookup(hostname)).records)
    except DNSTempError as e:
        return [], Finding("A/AAAA", TEMPORARY, f"{hostname}: {e}")
    if not found:
        return [], Finding(
            "A/AAAA", PROBLEM, f"{hostname} has no A or AAAA record: nobody can reach it"
        )
    return found, Finding("A/AAAA", OK, f"{hostname} is {', '.join(found)}")


async def check_mx(
    resolver: CheckResolver, domain: str, hostname: str, ours: Sequence[str]
) -> Finding:
    """The domain's MX names ``hostname``, or a host with one of our addresses."""
    try:
        answer = await resolver.mx(domain)
    except DNSTempError as e:
        return Finding("MX", TEMPORARY, f"{domain}: {e}")
    if answer.nxdomain:
        return Finding("MX", PROBLEM, f"{domain} does not exist in DNS (NXDOMAIN)")
    if not answer.records:
        return Finding(
            "MX", PROBLEM, f"{domain} has no MX record: publish {domain}. IN MX 10 {hostname}."
        )
    exchanges = sorted(answer.records)
    if len(exchanges) == 1 and _name(exchanges[0][1]) in ("", "."):
        return Finding("MX", PROBLEM, f"{domain} has a null MX (RFC 7505): it takes no mail")
    shown = ", ".join(f"{p} {_name(x)}" for p, x in exchanges)
    if any(_name(x) == _name(hostname) for _, x in exchanges):
        return Finding("MX", OK, f"{domain} MX {shown}")
    wanted = {str(ipaddress.ip_address(a)) for a in ours}
    for _, exchange in exchanges:
        try:
            addresses = [*(await resolver.a(_name(exchange))).records]
            addresses += (await resolver.aaaa(_name(exchange))).records
        except DNSTempError:
            continue
        if wanted & {str(ipaddress.ip_address(a)) for a in addresses}:
            return Finding("MX", OK, f"{domain} MX {shown} ({_name(exchange)} is this server)")
    return Finding("MX", PROBLEM, f"{domain} MX {shown}: none of them is {hostname}")


async def check_spf(
    resolver: CheckResolver, domain: str, ours: Sequence[str], *, what: str = "SPF"
) -> list[Finding]:
    """Each of our addresses may send for ``domain`` (RFC 7208 check_host: ``pass``)."""
    from mailhub.checks.spf import check_host

    out = []
    for ip in ours:
        result = await check_host(resolver, ip, domain, f"postmaster@{domain}")
        status = OK if result.result == "pass" else PROBLEM
        if result.result == "temperror":
            status = TEMPORARY
        out.append(
            Finding(what, status, f"{ip} for {domain}: {result.result}: {result.explanation}")
        )
    return out


async def check_dmarc(resolver: CheckResolver, domain: str) -> list[Finding]:
    """A DMARC record applies to ``domain`` and parses; advice while it is p=none."""
    from mailhub.checks.dmarc import discover_record, organizational_domain

    try:
        record, why = await discover_record(resolver, domain, organizational_domain(domain))
    except DNSTempError as e:
        return [Finding("DMARC", TEMPORARY, f"_dmarc.{domain}: {e}")]
    if record is None:
        fix = f'publish _dmarc.{domain}. IN TXT "{DMARC_START.format(domain=domain)}"'
        return [Finding("DMARC", PROBLEM, f"{why}; {fix}")]
    policy = record.p if record.domain == domain else record.sp
    where = f"_dmarc.{record.domain}"
    found = [Finding("DMARC", OK, f"{where}: p={policy} applies to {domain}")]
    if policy == "none":
        found.append(Finding("DMARC", ADVICE, DMARC_NEXT))
    return found


async def check_ptr(resolver: CheckResolver, hostname: str, ours: Sequence[str]) -> list[Finding]:
    """Each address's reverse DNS is ``hostname`` and ``hostname`` resolves back to it."""
    out = []
    for ip in ours:
        try:
            names = [_name(n) for n in (await resolver.ptr(ip)).records]
            if _name(hostname) not in names:
                shown = ", ".join(names) or "no PTR record"
                out.append(
                    Finding("PTR", PROBLEM, f"{ip}: {shown}, not {hostname} (ask its provider)")
                )
                continue
            version = ipaddress.ip_address(ip).version
            forward = await (resolver.a if version == 4 else resolver.aaaa)(hostname)
        except DNSTempError as e:
            out.append(Finding("PTR", TEMPORARY, f"{ip}: {e}"))
            continue
        back = {str(ipaddress.ip_address(a)) for a in forward.records}
        if str(ipaddress.ip_address(ip)) in back:
            out.append(Finding("PTR", OK, f"{ip} is {hostname}, and {hostname} is {ip}"))
        else:
            out.append(Finding("PTR", PROBLEM, f"{ip} is {hostname}, but {hostname} is not {ip}"))
    return out


async def check_domain(
    resolver: CheckResolver,
    domain: str,
    *,
    hostname: str,
    sending_ips: Sequence[str] = (),
    smarthost: str = "",
) -> list[Finding]:
    """MX, SPF (for the domain and the HELO name), DMARC and PTR of ``domain`` (DKIM keys are
    ``mailhub.checks.published``'s). ``sending_ips``: the addresses mail leaves from; none: the
    addresses of ``hostname``."""
    found: list[Finding] = []
    addresses, about = await our_addresses(resolver, hostname)
    if not sending_ips or about.status != OK:
        found.append(about)
    ours = list(sending_ips) or addresses
    found.append(await check_mx(resolver, domain, hostname, ours))
    if smarthost:
        found.append(
            Finding(
                "SPF",
                ADVICE,
                f"not checked: mail leaves through the smarthost {smarthost}; {domain}'s SPF "
                "record must name its provider's servers",
            )
        )
    else:
        found += await check_spf(resolver, domain, ours)
        helo = await check_spf(resolver, hostname, ours, what="SPF (HELO)")
        # Bounces are judged by the HELO name's SPF (RFC 7208 2.4): advice, not an error.
        found += [f if f.status != PROBLEM else Finding(f.what, ADVICE, f.detail) for f in helo]
    found += await check_dmarc(resolver, domain)
    if not smarthost:
        found += await check_ptr(resolver, hostname, ours)
    return found
