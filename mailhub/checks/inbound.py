"""The inbound judgement of one message: SPF, DKIM, ARC, then DMARC, and what to do about it.

``judge`` runs the checks of one received message (RFC 7208 SPF on the envelope, RFC 6376 DKIM
and RFC 8617 ARC on the content concurrently, then RFC 7489 DMARC on their results) within one
``DNSBudget`` and one deadline (``Policy.timeout``): a check still running at the deadline is
cancelled and counts as ``temperror``, so a silent DNS server never hangs an SMTP session. It
returns a ``Verdict``: the ``Authentication-Results`` (RFC 8601) with our authserv-id, and the
action the policy takes:

- DMARC ``fail`` where the domain asks ``p=reject``: ``Policy.dmarc_reject`` (``reject``: 550
  5.7.1 at the end of DATA; ``quarantine``: the Junk folder; ``none``: only recorded);
- DMARC ``fail`` with ``p=quarantine``: ``Policy.dmarc_quarantine`` (``junk`` or ``none``);
- SPF ``fail`` (the domain's ``-all``) with ``Policy.spf_fail = "reject"``: 550 5.7.23 (RFC 7372),
  unless DMARC passed (an aligned DKIM signature vouches for the message: forwarded mail keeps
  its DKIM but loses its SPF, RFC 7489 10.1); ``mark`` only records it;
- a ``temperror`` (DNS timeout, SERVFAIL, the deadline) where the policy could have rejected: 451
  4.7.x, so the sender tries again later (RFC 7208 8.6, RFC 7489 6.6.3). Where the policy would
  not reject anyway (``p=none``, or the operator's ``none``), the message is accepted and the
  temperror recorded.

Recipients' domains may each have their own policy (``Policy.domains``). One message gets one
reply at the end of DATA, so it is refused only when every recipient's policy refuses it; the
recipients whose policy would refuse it while others accept get their copy in Junk.

A message from an authenticated session (SMTP AUTH) is the sender's own mail: SPF is not
evaluated (the client's address is not the sending server's), DKIM, ARC and DMARC are recorded,
and the policy never refuses or junks it (RFC 8601 2.7.4's ``auth=pass`` says why). The dev stack
(``Policy.dev``) judges everything as a receiver would and records it, but never refuses or junks:
``Verdict.would`` tells what a production receiver would have done (it is logged and written in
the reason of the result that decided it).

The dev stack also says what a receiver will see of mail that does not come from where production
mail will, without making the header say what was not found (``as_receiver``):

- SPF judges the sending server's address; an app's 127.0.0.1 (or a private address: a container)
  says nothing of production. ``Policy.dev_sending_ip`` ([checks] dev_sending_ip, the address
  production mail leaves from) is judged instead, for such clients and for authenticated
  submission, and the reason names it; unset, SPF is not evaluated for them and says so.
- A DKIM signature made with one of the dev stack's own keys (``own_keys``) whose record DNS
  does not have (or has another key) is verified again as if the key's record were published;
  the reason says "would pass once the record ... is published at ..." and whether what DNS
  has matches the key; DMARC's reason says whether it would then pass.

The checks themselves are in ``spf``, ``dkimverify``, ``dmarc`` and ``arc``; ``Checkers`` names
them, so a test can give fakes.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, cast

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailhub.checks import eager
from mailhub.checks.answercache import AnswerLifetimes
from mailhub.checks.dns import (
    CheckResolver,
    DNSBudget,
    DNSBudgetExceeded,
    DNSTempError,
    TXTTable,
)
from mailhub.checks.keys import KeyFile
from mailhub.checks.results import AuthenticationResults, MethodResult
from mailhub.config import CheckPolicy, Config
from mailhub.envelope import Envelope
from mailhub.interfaces import MessageRejected

if TYPE_CHECKING:
    from mailhub.checks.dkimverify import Offload

log = Logger()

# Actions (Verdict.action).
ACCEPT = "accept"
JUNK = "junk"
REJECT = "reject"
TEMPFAIL = "tempfail"

# Policy values.
DMARC_REJECT_CHOICES = ("reject", "quarantine", "none")
DMARC_QUARANTINE_CHOICES = ("junk", "none")
SPF_FAIL_CHOICES = ("reject", "mark")

# RFC 7372 3.2: the enhanced codes of SPF's own refusals ("validation failed", "error").
SPF_CODES = ("5.7.23", "4.7.24")

JUNK_FOLDER = "Junk"  # special-use \Junk (RFC 6154), made for every mailbox


# --- the results the checks give, as far as the judgement reads them -------------------------


class _HasMethodResult(Protocol):
    def method_result(self) -> MethodResult: ...


class SPFResultLike(Protocol):
    result: str
    domain: str


class SPFVerdictLike(Protocol):
    @property
    def mailfrom(self) -> Any: ...  # SPFResult (passed on to DMARC as it is)

    def method_result(self) -> MethodResult: ...


class DMARCResultLike(Protocol):
    result: str
    policy: str  # the policy to apply on fail: "reject", "quarantine" or "none" (after pct)
    requested: str  # the record's p= (or sp=) before pct
    record_domain: str  # where the record was found ("" when none was)
    from_domain: str

    def method_result(self) -> MethodResult: ...


def asked_policy(dmarc: DMARCResultLike | None) -> str:
    """The policy the From domain asks for this message ("" when it could not be learnt: the
    record's lookup failed, so it may be p=reject)."""
    if dmarc is None:
        return ""
    if dmarc.result == "temperror":
        return dmarc.requested if dmarc.record_domain else ""
    return dmarc.policy


@dataclass(frozen=True)
class Checkers:
    """The checks ``judge`` runs (the real ones by default, ``Checkers.real()``)."""

    # Each gives a coroutine: check_smtp(resolver, ip, mail_from, helo, *, budget, receiver),
    # verify_dkim(resolver, message, *, budget), verify_arc(resolver, message, *, budget),
    # evaluate_dmarc(resolver, from_domain, spf, dkim, *, budget).
    spf: Callable[..., Coroutine[Any, Any, Any]]
    dkim: Callable[..., Coroutine[Any, Any, Sequence[Any]]]
    arc: Callable[..., Coroutine[Any, Any, Any]]
    dmarc: Callable[..., Coroutine[Any, Any, Any]]
    from_domain: Callable[[bytes], str | None]  # header_from_domain(message)

    @classmethod
    def real(cls) -> Checkers:
        return _real_checkers()


@functools.cache  # once per process: the imports and the object cost ~40 us per message
def _real_checkers() -> Checkers:
    # Imported here: the orchestrator and its tests do not need every check to load.
    from mailhub.checks import arc, dkimverify, dmarc, spf

    return Checkers(
        spf=spf.check_smtp,
        dkim=dkimverify.verify_dkim,
        arc=arc.verify_arc,
        dmarc=dmarc.evaluate_dmarc,
        from_domain=dmarc.header_from_domain,
    )


# --- policy -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainPolicy:
    """What a recipient domain does with mail that fails (``[checks]`` or an override)."""

    dmarc_reject: str = "reject"  # what DMARC p=reject does: reject | quarantine | none
    dmarc_quarantine: str = "junk"  # what DMARC p=quarantine does: junk | none
    spf_fail: str = "reject"  # SPF fail (-all): reject | mark

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("dmarc_reject", self.dmarc_reject, DMARC_REJECT_CHOICES),
            ("dmarc_quarantine", self.dmarc_quarantine, DMARC_QUARANTINE_CHOICES),
            ("spf_fail", self.spf_fail, SPF_FAIL_CHOICES),
        ):
            if value not in choices:
                raise ValueError(f"{name} {value!r} is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class Policy:
    """The inbound policy: defaults, per-recipient-domain overrides, the dev stack's rule."""

    default: DomainPolicy = field(default_factory=DomainPolicy)
    domains: Mapping[str, DomainPolicy] = field(default_factory=dict)
    dev: bool = False  # never refuse or junk; record what a receiver would see
    timeout: float = 20.0  # seconds for all the checks of one message
    max_message_size: int = 10 * 1024 * 1024  # bigger: not checked (recorded as such)
    dns_budget: int = 50  # lookups per message (DNSBudget)
    # Dev stack: the address production mail will leave from; SPF judges it instead of a
    # loopback or private client (and for authenticated submission). "": SPF not evaluated there.
    dev_sending_ip: str = ""

    def for_domain(self, domain: str) -> DomainPolicy:
        return self.domains.get(domain.lower().rstrip("."), self.default)


def our_authserv_id(config: Config) -> str:
    """Our authserv-id (RFC 8601 2.5): ``[checks] authserv_id``, else ``[server] hostname``.
    The web page reads our results back by it."""
    return config.checks.authserv_id or config.hostname


def policy_from_config(config: Config) -> Policy:
    """The policy of ``[checks]`` (and its ``[checks.domain."..."]`` overrides)."""
    checks = config.checks

    def domain(p: CheckPolicy) -> DomainPolicy:
        return DomainPolicy(p.dmarc_reject, p.dmarc_quarantine, p.spf_fail)

    return Policy(
        default=domain(checks.policy),
        domains={name: domain(p) for name, p in checks.domains},
        dev=config.dev,
        timeout=checks.timeout,
        max_message_size=checks.max_message_size,
        dev_sending_ip=checks.dev_sending_ip,
    )


# --- the verdict --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """The reply for a refused message (550 ...) or one to try again (451 ...)."""

    code: int
    enhanced: str
    text: str

    def error(self) -> MessageRejected:
        return MessageRejected(self.code, self.enhanced, self.text)


@dataclass(frozen=True)
class Verdict:
    """What the checks found and what the policy does with the message.

    ``action`` is for the whole message: ``accept`` (``junk`` names the recipients whose copy
    goes to Junk, possibly none), ``junk`` (every copy to Junk), ``reject`` or ``tempfail``
    (``reply`` says how). ``would`` is the action without the dev stack's and authenticated
    sessions' leniency. ``arc`` is ARC's own result (``none``/``pass``/``fail``), for sealing.
    """

    results: AuthenticationResults
    action: str
    reply: Refusal | None = None
    junk: frozenset[str] = frozenset()  # recipient mailboxes whose copy goes to Junk
    would: str = ACCEPT
    reason: str = ""  # why (for the log), "" when accepted without remark
    arc: str = "none"
    checked: bool = True  # False: too big, or checks off (results say so)

    def folder_for(self, mailbox: str) -> str | None:
        """The folder a local recipient's copy goes to: None for INBOX."""
        return JUNK_FOLDER if mailbox in self.junk else None


# --- running the checks -------------------------------------------------------------------------


@dataclass
class _Outcome:
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _within(
    make: Callable[[], Coroutine[Any, Any, Any]], clock: IReactorTime, seconds: float
) -> _Outcome | defer.Deferred[_Outcome]:
    """Run one check with a deadline; its outcome, never a failure: at once when the check
    finished without waiting (answered from the caches: no Deferred, no timer), else a
    Deferred of it. At the deadline the check is left to finish on its own (each lookup has
    the resolver's own timeout, and the budget caps how many it makes) and its late result is
    dropped: cancelling would reach into the checks' lookups, which read a cancellation as a
    broken resolver."""
    try:
        started = eager.start(make())
    except Exception as e:  # a checker that fails before it waits
        return _Outcome(error=e)
    if not isinstance(started, eager.Pending):
        return _Outcome(value=started)
    d = started.deferred
    outcome: defer.Deferred[_Outcome] = defer.Deferred()

    def expire() -> None:
        if not outcome.called:
            outcome.callback(_Outcome(error=defer.TimeoutError()))

    timer = clock.callLater(max(0.0, seconds), expire)

    def finished(result: Any) -> None:
        if timer.active():
            timer.cancel()
        if not outcome.called:
            outcome.callback(_as_outcome(result))
        # else: too late, dropped (a failure too: it was already counted as temperror)

    d.addBoth(finished)
    return outcome


async def _outcome(started: _Outcome | defer.Deferred[_Outcome]) -> _Outcome:
    return started if isinstance(started, _Outcome) else await started


def _as_deferred(started: _Outcome | defer.Deferred[_Outcome]) -> defer.Deferred[_Outcome]:
    return defer.succeed(started) if isinstance(started, _Outcome) else started


def _as_outcome(result: Any) -> _Outcome:
    if isinstance(result, Failure):
        return _Outcome(error=result.value)
    return _Outcome(value=result)


def _failure_words(error: BaseException, timeout: float) -> tuple[str, str]:
    """A check's exception as (result, reason): temporary (DNS, deadline) or not."""
    if isinstance(error, defer.TimeoutError | defer.CancelledError):
        return "temperror", f"not finished within the {timeout:g} s for the checks of a message"
    if isinstance(error, DNSTempError):
        return "temperror", f"DNS lookup failed: {error}"
    if isinstance(error, DNSBudgetExceeded):
        return "permerror", f"too many DNS lookups: {error}"
    return "permerror", f"internal error: {error.__class__.__name__}"


def _log_unexpected(name: str, envelope: Envelope, error: BaseException) -> None:
    if not isinstance(
        error, defer.TimeoutError | defer.CancelledError | DNSTempError | DNSBudgetExceeded
    ):
        log.error(
            "{queue_id}: the {name} check failed: {error!r}",
            queue_id=envelope.queue_id,
            name=name,
            error=error,
        )


def _mailfrom_identity(envelope: Envelope) -> tuple[str, str]:
    """RFC 7208 2.4: the MAIL FROM identity, or postmaster@HELO for the null reverse-path."""
    if envelope.mail_from:
        return "smtp.mailfrom", envelope.mail_from
    return "smtp.mailfrom", f"postmaster@{envelope.helo}" if envelope.helo else ""


def _has_arc(message: bytes) -> bool:
    head = message.split(b"\r\n\r\n", 1)[0].lower()
    return head.startswith(b"arc-seal:") or b"\r\narc-seal:" in head


async def judge(
    resolver: CheckResolver,
    message: bytes,
    envelope: Envelope,
    *,
    authserv_id: str,
    policy: Policy,
    budget: DNSBudget | None = None,
    clock: IReactorTime | None = None,
    checkers: Checkers | None = None,
    own_keys: OwnKeys | None = None,
) -> Verdict:
    """Judge one message (see the module docstring). Never raises for what the message or DNS
    does: every failure of a check is a result in the header. ``own_keys(domain)``: the dev
    stack's own DKIM keys of a domain (``KeyStore.key_files``), to say what a receiver would see
    once their records are published."""
    if clock is None:
        from twisted.internet import reactor

        clock = cast(IReactorTime, reactor)
    if checkers is None:
        checkers = Checkers.real()
    if budget is None:
        budget = DNSBudget(policy.dns_budget)
    if len(message) > policy.max_message_size:
        return unchecked(
            authserv_id,
            f"not checked: {len(message)} octets is more than [checks] max_message_size "
            f"({policy.max_message_size})",
        )
    deadline = clock.seconds() + policy.timeout
    user = envelope.authenticated_as
    authenticated = user is not None
    found: list[MethodResult] = []
    if user is not None:
        # RFC 8601 2.7.4: the client authenticated; its mail is its own.
        found.append(MethodResult("auth", "pass", "", (("smtp.auth", user),)))

    # Phase 1: SPF (the envelope), DKIM and ARC (the content), at once.
    spf_ip, spf_skip, spf_note = _spf_client(envelope, policy, authenticated=authenticated)

    def spf() -> Coroutine[Any, Any, Any]:
        return checkers.spf(
            resolver,
            spf_ip,
            envelope.mail_from,
            envelope.helo,
            budget=budget,
            receiver=envelope.server_name or "unknown",  # RFC 7208 7.3 %{r}
        )

    def dkim() -> Coroutine[Any, Any, Any]:
        return checkers.dkim(resolver, message, budget=budget)

    def arc() -> Coroutine[Any, Any, Any]:
        return checkers.arc(resolver, message, budget=budget)

    started: list[_Outcome | defer.Deferred[_Outcome]] = []
    if not spf_skip:
        started.append(_within(spf, clock, deadline - clock.seconds()))
    started.append(_within(dkim, clock, deadline - clock.seconds()))
    started.append(_within(arc, clock, deadline - clock.seconds()))
    outcomes: list[_Outcome]
    if all(isinstance(o, _Outcome) for o in started):  # all answered at once: no waiting
        outcomes = cast(list[_Outcome], started)
    else:
        outcomes = await defer.gatherResults([_as_deferred(o) for o in started])
    spf_out = None if spf_skip else outcomes.pop(0)
    dkim_out, arc_out = outcomes

    spf_for_dmarc = None
    spf_exp = ""
    if spf_out is None:
        found.append(MethodResult("spf", "none", spf_skip, (_mailfrom_identity(envelope),)))
    elif spf_out.ok:
        spf_result = spf_out.value.method_result()
        if spf_note:
            spf_result = replace(spf_result, reason=_joined(spf_result.reason, spf_note))
        found.append(spf_result)
        spf_for_dmarc = spf_out.value.mailfrom
        spf_exp = getattr(spf_for_dmarc, "authority_explanation", "") or ""
    else:
        assert spf_out.error is not None
        _log_unexpected("SPF", envelope, spf_out.error)
        result, reason = _failure_words(spf_out.error, policy.timeout)
        found.append(MethodResult("spf", result, reason, (_mailfrom_identity(envelope),)))

    signatures: Sequence[Any] = ()
    receiver = _AsReceiver()
    if dkim_out.ok:
        signatures = list(dkim_out.value)
        if signatures and policy.dev and own_keys is not None:
            receiver = await _within_receiver(
                lambda: as_receiver(resolver, message, signatures, own_keys, checkers),
                clock,
                deadline - clock.seconds(),
            )
        if signatures:
            found.extend(
                _with_note(s.method_result(), receiver.notes.get(i, ""))
                for i, s in enumerate(signatures)
            )
        else:
            found.append(_NO_DKIM)
    else:
        assert dkim_out.error is not None
        _log_unexpected("DKIM", envelope, dkim_out.error)
        result, reason = _failure_words(dkim_out.error, policy.timeout)
        found.append(MethodResult("dkim", result, reason))

    arc_result = "none"
    if arc_out.ok:
        arc_method = arc_out.value.method_result()
        arc_result = arc_method.result
        found.append(arc_method)
    else:
        assert arc_out.error is not None
        _log_unexpected("ARC", envelope, arc_out.error)
        _result, reason = _failure_words(arc_out.error, policy.timeout)
        # RFC 8617 has no temperror: a chain that could not be validated is not trusted.
        arc_result = "fail" if _has_arc(message) else "none"
        found.append(MethodResult("arc", arc_result, f"not validated: {reason}"))

    # Phase 2: DMARC, on the From domain and what SPF and DKIM found.
    dmarc_out: _Outcome | None = None
    dmarc_result: Any = None
    try:
        from_domain = checkers.from_domain(message)
        from_error = ""
    except Exception as e:  # several From addresses, no From: permerror (RFC 7489 6.6.1)
        from_domain, from_error = None, str(e) or e.__class__.__name__
    if from_domain:

        def dmarc() -> Coroutine[Any, Any, Any]:
            return checkers.dmarc(resolver, from_domain, spf_for_dmarc, signatures, budget=budget)

        dmarc_started = _within(dmarc, clock, deadline - clock.seconds())
        if isinstance(dmarc_started, _Outcome):
            dmarc_out = dmarc_started
        else:
            dmarc_out = await dmarc_started
        if dmarc_out.ok:
            dmarc_result = dmarc_out.value
            dmarc_method = dmarc_result.method_result()
            if receiver.signatures and dmarc_result.result != "pass":
                # What DMARC would say with the dev stack's DKIM records published.
                would = receiver.signatures

                def dmarc_published() -> Coroutine[Any, Any, Any]:
                    return checkers.dmarc(
                        resolver, from_domain, spf_for_dmarc, would, budget=budget
                    )

                then = await _outcome(_within(dmarc_published, clock, deadline - clock.seconds()))
                if then.ok and then.value.result != dmarc_result.result:
                    note = (
                        "as a receiver would see it once the DKIM records above are published: "
                        f"dmarc={then.value.result}"
                    )
                    if then.value.result != "pass" and then.value.reason:
                        note += f" ({then.value.reason})"
                    dmarc_method = _with_note(dmarc_method, note)
            found.append(dmarc_method)
        else:
            assert dmarc_out.error is not None
            _log_unexpected("DMARC", envelope, dmarc_out.error)
            result, reason = _failure_words(dmarc_out.error, policy.timeout)
            found.append(MethodResult("dmarc", result, reason, (("header.from", from_domain),)))
    else:
        found.append(_dmarc_without_from(from_error))

    return _conclude(
        found,
        dmarc_result,
        from_domain or "",
        spf_exp,
        envelope,
        policy,
        authenticated=authenticated,
        authserv_id=authserv_id,
        arc_result=arc_result,
    )


def _dmarc_without_from(from_error: str) -> MethodResult:
    """DMARC's result when there is no one From domain to judge: permerror for a From field
    that names several or none (RFC 7489 6.6.1), else none."""
    reason = from_error or "the message has no From address to judge"
    return MethodResult("dmarc", "permerror" if from_error else "none", reason)


def _conclude(
    found: list[MethodResult],
    dmarc_result: DMARCResultLike | None,
    from_domain: str,
    spf_exp: str,
    envelope: Envelope,
    policy: Policy,
    *,
    authenticated: bool,
    authserv_id: str,
    arc_result: str,
) -> Verdict:
    """The policy's decision on what was found, and the Verdict with our results."""
    spf, dmarc = _result_of(found, "spf"), _result_of(found, "dmarc")
    if spf not in _ACTED_ON and dmarc not in _ACTED_ON:
        # No policy acts on these (``_domain_action`` accepts for every domain): most mail.
        return Verdict(AuthenticationResults(authserv_id, tuple(found)), ACCEPT, arc=arc_result)
    facts = Facts(
        spf=spf,
        dmarc=dmarc,
        dmarc_policy=asked_policy(dmarc_result),
        from_domain=from_domain,
        client=envelope.client_address,
        mail_from=envelope.mail_from,
        spf_reason=_reason_of(found, "spf"),
        dmarc_reason=_reason_of(found, "dmarc"),
        spf_explanation=spf_exp,
    )
    verdict = decide(facts, envelope, policy, authenticated=authenticated)
    if policy.dev and verdict.would != ACCEPT:
        # The note goes with the result that decided: SPF's own refusals, else DMARC.
        spf_decided = verdict.reply is not None and verdict.reply.enhanced in SPF_CODES
        method = "spf" if spf_decided else "dmarc"
        found = [_noted(r, verdict) if r.method == method else r for r in found]
    # (Not dataclasses.replace: it costs ~10 us per message in introspection.)
    return Verdict(
        results=AuthenticationResults(authserv_id, tuple(found)),
        action=verdict.action,
        reply=verdict.reply,
        junk=verdict.junk,
        would=verdict.would,
        reason=verdict.reason,
        arc=arc_result,
        checked=verdict.checked,
    )


# --- from the caches, at once ---------------------------------------------------------------------


@dataclass(frozen=True)
class CachedChecks:
    """The real checks' answers from their caches, without a coroutine: each gives None when
        its answer is not cached (``judge`` asks then). ``spf(ip, mail_from, helo, receiver)``
        (``spf.cached_smtp``), ``dmarc(from_domain, spf, signatures)`` (``dmarc.evaluate_cached``),
        ``from_domain(message, lowered)`` (``dmarc.header_from_domain``, given the header section
        through its last CRLF in lower case); ``no_arc``: ARC's result for a message without ARC
        fields. ``dkim(message, budget)``: every DKIM signature verified with the key records
        from the cache (``dkimverify.verify_at_once``), None when one is not there, or
        ``eager.Pending`` while its cryptography is done off the reactor (given ``then``, what comes
    after the signatures: its Deferred fires with ``then(results)``); ``dkim`` None: signed
        mail always goes the long way. ``dmarc_known(from_domain)``: whether ``dmarc``
        will answer for that domain (asked before the signatures are verified, so that a domain
        whose DMARC record is not cached costs no verification twice)."""

    spf: Callable[[str, str, str, str], Any]
    dmarc: Callable[[str, Any, Sequence[Any]], Any]
    from_domain: Callable[[bytes, bytes | None], str | None]
    no_arc: MethodResult
    dkim: (
        Callable[[bytes, int, Callable[[Sequence[Any]], Any]], Sequence[Any] | eager.Pending | None]
        | None
    ) = None
    dmarc_known: Callable[[str], bool] = lambda domain: True


_NO_DKIM = MethodResult("dkim", "none", "the message has no DKIM signature")


def judge_at_once(
    message: bytes, envelope: Envelope, *, authserv_id: str, policy: Policy, cached: CachedChecks
) -> Verdict | eager.Pending | None:
    """``judge``'s verdict for a message without ARC fields whose SPF results, DMARC record
    and (if it is signed) DKIM key records are in the caches, without a coroutine or a
    Deferred (most mail from senders seen within the TTLs); None for any other message (ask
    ``judge``). The same results, in the same order, as ``judge`` with the same caches gives:
    every signature is verified here as ``verify_dkim`` verifies it. When ``cached.dkim``
    gives ``eager.Pending`` (the cryptography in ``cryptothread``), so does this: its Deferred
    fires with the verdict, or None (a DMARC record that left the cache meanwhile)."""
    if len(message) > policy.max_message_size:
        return None
    end = message.find(b"\r\n\r\n")
    # At least the header section the DKIM and ARC checks read (theirs ends at the first
    # empty line, CRLF or bare LF): no ARC field name in it means ARC has no work, and no
    # DKIM-Signature (most mail) none for DKIM either.
    # Through the last field's CRLF: the From search below reads the same lowered bytes.
    low = (message if end < 0 else message[: end + 2]).lower()
    if b"arc-" in low:
        return None
    signed = b"dkim-signature" in low
    if signed and cached.dkim is None:
        return None
    user = envelope.authenticated_as
    authenticated = user is not None
    found: list[MethodResult] = []
    if user is not None:
        found.append(MethodResult("auth", "pass", "", (("smtp.auth", user),)))
    spf_ip, spf_skip, spf_note = _spf_client(envelope, policy, authenticated=authenticated)
    spf_for_dmarc = None
    spf_exp = ""
    if spf_skip:
        found.append(MethodResult("spf", "none", spf_skip, (_mailfrom_identity(envelope),)))
    else:
        spf = cached.spf(
            spf_ip, envelope.mail_from, envelope.helo, envelope.server_name or "unknown"
        )
        if spf is None:
            return None
        spf_result = spf.method_result()
        if spf_note:
            spf_result = replace(spf_result, reason=_joined(spf_result.reason, spf_note))
        found.append(spf_result)
        spf_for_dmarc = spf.mailfrom
        spf_exp = getattr(spf_for_dmarc, "authority_explanation", "") or ""
    try:
        from_domain = cached.from_domain(message, low if end >= 0 else None)
        from_error = ""
    except Exception as e:  # several From addresses, no From: permerror (RFC 7489 6.6.1)
        from_domain, from_error = None, str(e) or e.__class__.__name__
    if from_domain and not cached.dmarc_known(from_domain):
        return None

    def rest(signatures: Sequence[Any]) -> Verdict | None:
        if signatures:
            found.extend(s.method_result() for s in signatures)
        else:
            found.append(_NO_DKIM)
        found.append(cached.no_arc)
        dmarc_result = None
        if from_domain:
            dmarc_result = cached.dmarc(from_domain, spf_for_dmarc, signatures)
            if dmarc_result is None:
                return None
            found.append(dmarc_result.method_result())
        else:
            found.append(_dmarc_without_from(from_error))
        return _conclude(
            found,
            dmarc_result,
            from_domain or "",
            spf_exp,
            envelope,
            policy,
            authenticated=authenticated,
            authserv_id=authserv_id,
            arc_result=cached.no_arc.result,
        )

    if not signed:
        return rest(())
    assert cached.dkim is not None
    # judge's budget: SPF and DMARC from their caches spend none of it.
    verified = cached.dkim(message, policy.dns_budget, rest)
    if verified is None:
        return None
    if isinstance(verified, eager.Pending):  # the cryptography is done off the reactor
        return verified  # (its Deferred fires with rest's verdict)
    return rest(verified)


def judge_with(
    resolver: CheckResolver,
    *,
    authserv_id: str,
    policy: Policy,
    clock: IReactorTime,
    checkers: Checkers | None = None,
    own_keys: OwnKeys | None = None,
    offload: Offload | None = None,
) -> Callable[[bytes, Envelope], Verdict | Awaitable[Verdict]]:
    """``judge`` bound to one server's resolver and policy: what ``CheckingSink`` calls. With
    the real checks and a resolver that tells its answers' lifetimes (``CachingResolver``), SPF
    results (``spf.SPFCache``) and DMARC record discoveries (``dmarc.DMARCCache``) are kept as
    long as their answers, and a message that ``judge_at_once`` can judge from them gets its
    Verdict directly; any other gets ``judge``'s coroutine. ``offload``
    (``CryptoThread.run``): where the DKIM cryptography of mail judged from the caches is
    done (a Deferred of the verdict is given then); None: inline."""
    cached: CachedChecks | None = None
    if checkers is None:
        from mailhub.checks import arc, dkimverify, dmarc, spf

        dmarc.preload()  # the Public Suffix List, at start rather than in the first message
        checkers = Checkers.real()
        if hasattr(resolver, "lifetime"):
            answers = cast(AnswerLifetimes, resolver)
            spf_cache = spf.SPFCache(answers, clock)
            dmarc_cache = dmarc.DMARCCache(answers, clock)
            checkers = replace(
                checkers,
                spf=functools.partial(spf.check_smtp, cache=spf_cache),
                dmarc=functools.partial(dmarc.evaluate_dmarc, cache=dmarc_cache),
            )
            # What ARC says of a message without ARC fields (it answers without a lookup).
            no_arc = eager.start(arc.verify_arc(TXTTable({}), b"From: a@a.invalid\r\n\r\n"))
            assert not isinstance(no_arc, eager.Pending)

            def spf_cached(ip: str, mail_from: str, helo: str, receiver: str) -> Any:
                return spf.cached_smtp(spf_cache, ip, mail_from, helo, receiver=receiver)

            def dmarc_cached(domain: str, spf_result: Any, signatures: Sequence[Any]) -> Any:
                return dmarc.evaluate_cached(dmarc_cache, domain, spf_result, signatures)

            def dmarc_known(domain: str) -> bool:
                return dmarc_cache.get(domain.lower().rstrip(".")) is not None

            cached_txt = getattr(resolver, "cached_txt", None)
            dkim_cached = None
            # The dev stack's view of its own keys (``as_receiver``) is judge's alone.
            if cached_txt is not None and not (policy.dev and own_keys is not None):
                txt = cast(dkimverify.CachedTXT, cached_txt)

                def dkim_cached(
                    message: bytes, budget: int, then: Callable[[Sequence[Any]], Any]
                ) -> Sequence[Any] | eager.Pending | None:
                    return dkimverify.verify_at_once(
                        message, txt, budget=budget, offload=offload, then=then
                    )

            cached = CachedChecks(
                spf_cached,
                dmarc_cached,
                dmarc.header_from_domain,
                no_arc.method_result(),
                dkim_cached,
                dmarc_known,
            )

    def bound(message: bytes, envelope: Envelope) -> Verdict | Awaitable[Verdict]:
        if cached is not None:
            try:
                verdict = judge_at_once(
                    message, envelope, authserv_id=authserv_id, policy=policy, cached=cached
                )
            except Exception:  # a bug here: the long way still judges the message
                log.failure(
                    "{queue_id}: judging from the caches failed", queue_id=envelope.queue_id
                )
                verdict = None
            if isinstance(verdict, eager.Pending):
                return verdict.deferred.addCallbacks(
                    later, failed, callbackArgs=(message, envelope), errbackArgs=(message, envelope)
                )
            if verdict is not None:
                return verdict
        return the_long_way(message, envelope)

    def the_long_way(message: bytes, envelope: Envelope) -> Coroutine[Any, Any, Verdict]:
        chosen = checkers if checkers is not None else Checkers.real()
        return judge(
            resolver,
            message,
            envelope,
            authserv_id=authserv_id,
            policy=policy,
            clock=clock,
            checkers=chosen,
            own_keys=own_keys,
        )

    def later(
        verdict: Verdict | None, message: bytes, envelope: Envelope
    ) -> Verdict | defer.Deferred[Verdict]:
        """A verdict from the caches whose DKIM cryptography was done off the reactor, or the
        long way's when the DMARC record left the cache meanwhile."""
        if verdict is None:
            return defer.Deferred.fromCoroutine(the_long_way(message, envelope))
        return verdict

    def failed(failure: Failure, message: bytes, envelope: Envelope) -> defer.Deferred[Verdict]:
        # a bug, as in bound: the long way still judges the message
        log.failure(
            "{queue_id}: judging from the caches failed", failure, queue_id=envelope.queue_id
        )
        return defer.Deferred.fromCoroutine(the_long_way(message, envelope))

    return bound


# --- the dev stack: what a receiver will see ----------------------------------------------------

OwnKeys = Callable[[str], Sequence[KeyFile]]  # domain -> its key files (KeyStore.key_files)

# Addresses no receiver on the Internet sees mail from: loopback, RFC 1918 and RFC 6598
# (containers, home and carrier NAT), link-local, IPv6 unique-local (RFC 4193).
_LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)


def is_local_address(address: str) -> bool:
    """Loopback or a private address (see ``_LOCAL_NETWORKS``); False for anything else."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == n.version and ip in n for n in _LOCAL_NETWORKS)


def _spf_client(envelope: Envelope, policy: Policy, *, authenticated: bool) -> tuple[str, str, str]:
    """(the address SPF judges, why SPF is not evaluated or "", a note for its reason or "").

    In production SPF judges the client, except for authenticated submission (the client is
    not the server that will hand the mail to a receiver). In the dev stack a loopback or
    private client says nothing of production either: ``dev_sending_ip`` is judged instead."""
    client = envelope.client_address
    submission = "not checked: authenticated submission (SPF judges the sending server, not you)"
    if not policy.dev:
        return client, submission if authenticated else "", ""
    local = is_local_address(client)
    if policy.dev_sending_ip and (authenticated or local):
        note = (
            f"judged for {policy.dev_sending_ip} ([checks] dev_sending_ip, where production "
            f"mail leaves from), not for the client {client}"
        )
        return policy.dev_sending_ip, "", note
    setting = "set [checks] dev_sending_ip (the address production mail leaves from)"
    if authenticated:
        return client, f"{submission}; to see what receivers will find, {setting}", ""
    if local:
        return client, f"SPF not meaningful for mail from {client}; {setting}", ""
    return client, "", ""


def _joined(reason: str, note: str) -> str:
    return f"{reason}; {note}" if reason else note


def _with_note(r: MethodResult, note: str) -> MethodResult:
    return replace(r, reason=_joined(r.reason, note)) if note else r


@dataclass(frozen=True)
class _AsReceiver:
    """The dev stack's view: notes for DKIM results (by the signature's index), and the
    signatures as they would be with the own keys' records published (() if nothing changes)."""

    notes: Mapping[int, str] = field(default_factory=dict)
    signatures: Sequence[Any] = ()


async def as_receiver(
    resolver: CheckResolver,
    message: bytes,
    signatures: Sequence[Any],
    own_keys: OwnKeys,
    checkers: Checkers,
) -> _AsReceiver:
    """For each signature that did not pass but was made with one of our own keys: verify it
    again with the key's record as if published, and say whether DNS has that record."""
    from mailhub.checks.published import MISMATCH, MISSING, OK, check_published

    mine: dict[int, KeyFile] = {}
    for i, sig in enumerate(signatures):
        if sig.result == "pass" or not sig.domain or not sig.selector:
            continue
        for key_file in own_keys(sig.domain):
            if key_file.key.selector == sig.selector.lower():
                mine[i] = key_file
    if not mine:
        return _AsReceiver()
    records = {f.record_name: f.record.encode("ascii") for f in mine.values()}
    again = list(await checkers.dkim(TXTTable(records), message))
    if len(again) != len(signatures):  # not the same message: say nothing rather than guess
        return _AsReceiver()
    notes: dict[int, str] = {}
    would = list(signatures)
    for i, key_file in mine.items():
        then = again[i]
        name = key_file.record_name
        if then.result != "pass":
            notes[i] = (
                "as a receiver would see it: fails even with this dev stack's own key "
                f"({then.reason})"
            )
            continue
        would[i] = then
        published = await check_published(resolver, key_file)
        dns = {
            MISSING: "nothing is published there yet",
            MISMATCH: f"what is published there does not match: {published.detail}",
            OK: "what is published there matches",
        }.get(published.status, f"what is there could not be looked up: {published.detail}")
        notes[i] = (
            "as a receiver would see it: would pass once the record "
            f"`mailhub dkim show {key_file.key.domain}` prints is published at {name} ({dns})"
        )
    changed = any(would[i] is not signatures[i] for i in mine)
    return _AsReceiver(notes, would if changed else ())


def _within_receiver(
    make: Callable[[], Coroutine[Any, Any, _AsReceiver]], clock: IReactorTime, seconds: float
) -> defer.Deferred[_AsReceiver]:
    """``as_receiver`` within the deadline; nothing to add when it fails or is late."""

    def value(outcome: _Outcome) -> _AsReceiver:
        if outcome.ok:
            return cast(_AsReceiver, outcome.value)
        if not isinstance(outcome.error, defer.TimeoutError):
            log.failure("the dev stack's receiver view failed", Failure(outcome.error))
        return _AsReceiver()

    return _as_deferred(_within(make, clock, seconds)).addCallback(value)


def unchecked(authserv_id: str, reason: str) -> Verdict:
    """A message not judged (too big, checks off for it): recorded so, and accepted."""
    results = AuthenticationResults(
        authserv_id, tuple(MethodResult(m, "none", reason) for m in ("spf", "dkim", "dmarc"))
    )
    return Verdict(results, ACCEPT, reason=reason, checked=False)


def _result_of(found: list[MethodResult], method: str) -> str:
    for r in found:
        if r.method == method:
            return r.result
    return "none"


def _reason_of(found: list[MethodResult], method: str) -> str:
    for r in found:
        if r.method == method:
            return r.reason
    return ""


def _noted(r: MethodResult, verdict: Verdict) -> MethodResult:
    """The dev stack's note in a result's reason: what a production receiver would do."""
    what = {JUNK: "put it in Junk", REJECT: "refuse it", TEMPFAIL: "ask to try again later"}
    reply = f" ({verdict.reply.code} {verdict.reply.enhanced})" if verdict.reply else ""
    note = f"dev stack: a receiver with mailhub's policy would {what[verdict.would]}{reply}"
    return replace(r, reason=f"{r.reason}; {note}" if r.reason else note)


# --- the policy's decision ----------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """What the decision reads of the results (plain, so it is easy to test)."""

    spf: str = "none"  # the SPF result (MAIL FROM, or HELO for <>)
    dmarc: str = "none"
    dmarc_policy: str = ""  # the policy the domain asks, as applied ("" if unknown)
    from_domain: str = ""
    client: str = ""
    mail_from: str = ""
    spf_reason: str = ""
    dmarc_reason: str = ""
    spf_explanation: str = ""  # the domain's exp= text for a fail (RFC 7208 6.2)


# The SPF and DMARC results ``_domain_action`` may act on; with neither, it accepts.
_ACTED_ON = frozenset({"fail", "temperror"})


def _domain_action(facts: Facts, p: DomainPolicy) -> tuple[str, Refusal | None, str]:
    """(action, reply, reason) for recipients under ``p`` (ACCEPT unless SPF or DMARC is one
    of ``_ACTED_ON``)."""
    dmarc, asked = facts.dmarc, facts.dmarc_policy.lower()
    if dmarc == "fail":
        if asked == "reject" and p.dmarc_reject == "reject":
            text = (
                f"Email from {facts.from_domain} failed DMARC and the domain asks to refuse "
                "it (p=reject, RFC 7489 6.3)"
            )
            return REJECT, Refusal(550, "5.7.1", text), facts.dmarc_reason or text
        if (asked == "reject" and p.dmarc_reject == "quarantine") or (
            asked == "quarantine" and p.dmarc_quarantine == "junk"
        ):
            return JUNK, None, f"DMARC fail, p={asked}: to Junk"
    if facts.spf == "fail" and p.spf_fail == "reject" and dmarc != "pass":
        # RFC 7208 8.4: reject with 550; RFC 7372 3.2: 5.7.23 "SPF validation failed".
        domain = facts.mail_from.rpartition("@")[2] or "the HELO name"
        text = f"SPF: {facts.client} is not allowed to send mail for {domain} (RFC 7208 8.4)"
        exp = _printable(facts.spf_explanation)
        if exp:
            text += f": {domain} says {exp}"  # RFC 7208 6.2: the domain's own words
        return REJECT, Refusal(550, "5.7.23", text), facts.spf_reason or text
    # Temporary failures where the policy could have refused: ask the sender to try again.
    could_reject_dmarc = p.dmarc_reject == "reject" and asked in ("", "reject")
    if dmarc == "temperror" and could_reject_dmarc:
        text = f"DMARC for {facts.from_domain} could not be evaluated now, try again later"
        return TEMPFAIL, Refusal(451, "4.7.1", text), facts.dmarc_reason or text
    if facts.spf == "temperror" and p.spf_fail == "reject" and dmarc != "pass":
        # RFC 7208 8.6 with RFC 7372 3.2's 4.7.24 "SPF validation error".
        text = "SPF could not be evaluated now (DNS), try again later"
        return TEMPFAIL, Refusal(451, "4.7.24", text), facts.spf_reason or text
    return ACCEPT, None, ""


def _printable(text: str, limit: int = 200) -> str:
    """Text safe in an SMTP reply line: printable ASCII, bounded."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text).strip()
    return clean[:limit]


def decide(facts: Facts, envelope: Envelope, policy: Policy, *, authenticated: bool) -> Verdict:
    """The action for the message: each recipient domain's policy, then one reply for all."""
    per_domain: dict[str, tuple[str, Refusal | None, str]] = {}
    per_mailbox: dict[str, str] = {}
    for r in envelope.recipients:
        domain = r.address.rpartition("@")[2].lower()
        if domain not in per_domain:
            per_domain[domain] = _domain_action(facts, policy.for_domain(domain))
        per_mailbox.setdefault(r.mailbox, per_domain[domain][0])
    if not per_domain:  # no recipient (not from the receiver): the default policy
        per_domain[""] = _domain_action(facts, policy.default)
    decisions = list(per_domain.values())
    junk: frozenset[str] = frozenset()
    if all(a in (REJECT, TEMPFAIL) for a, _, _ in decisions):
        # Refused for every recipient: 5xx only if every refusal is permanent.
        pick = REJECT if all(a == REJECT for a, _, _ in decisions) else TEMPFAIL
        would, reply, reason = next(x for x in decisions if x[0] == pick)
    else:
        # Some accept it: those whose policy refuses or junks it get their copy in Junk.
        reply = None
        junk = frozenset(m for m, a in per_mailbox.items() if a != ACCEPT)
        would = JUNK if junk or any(a != ACCEPT for a, _, _ in decisions) else ACCEPT
        reason = next((why for a, _, why in decisions if a != ACCEPT), "")
    empty = AuthenticationResults("")
    if authenticated or policy.dev:
        # Never refused nor junked; ``reply`` stays to say what a receiver would answer.
        return Verdict(empty, ACCEPT, reply=reply, would=would, reason=reason)
    return Verdict(empty, would, reply=reply, junk=junk, would=would, reason=reason)
