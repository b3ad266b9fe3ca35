"""Deterministic fault injection for the SMTP receiver.

A ``Rule`` says *where* (a ``Stage`` of the SMTP session), *for whom* (sender and recipient
patterns), *how often* (a seeded probability, and at most ``count`` times) and *what happens*
(an ``Action``: a chosen reply, a delay, slow replies for the rest of the session, a dropped
connection, no STARTTLS offer, or a bad TLS certificate). ``FaultRules`` holds the rules of one
running server; the SMTP protocol consults it at each stage, the ``[[faults.rule]]`` tables of the
config fill it at start-up, and the web API changes it at run time (``add``/``remove``/``clear``/
``list``; rules travel as plain dicts there: ``Rule.from_dict`` / ``Rule.to_dict``).

Deterministic means: the rules are tried in the order they were added, the first that fires wins,
and a rule's random draws come from its own ``random.Random(seed)``, drawn only when stage and
patterns match. The same rules and the same traffic give the same faults, every run.

Nothing here costs anything while no rule is active: the protocol checks ``FaultRules.stages``
(an empty frozenset then) before doing any work.

For the web API (mailhub.web): the running server's rules are ``MailhubService.faults``.
``add(dict)`` returns the new rule's id or raises ``FaultError`` (answer 400 with ``str(e)``;
``e.key`` names the bad field); ``remove(id)`` is False for an unknown id (404); ``get(id)``,
``list()`` (JSON-ready dicts with ``id``, the settings, ``remaining``, ``fired``, ``matched``,
``spent``) and ``clear()`` complete it. Call them on the reactor thread.

Example rules (TOML, as in ``[[faults.rule]]``; the same keys in JSON)::

    stage = "rcpt", action = "reply", code = 550, enhanced = "5.1.1", recipient = "fail-550@*"
    stage = "data", action = "reply", code = 451, probability = 0.3, seed = 7
    stage = "mail", action = "delay", seconds = 30, count = 2
    stage = "connect", action = "disconnect", count = 1
    stage = "starttls", action = "no_starttls"
    stage = "starttls", action = "bad_certificate", certificate = "expired"
"""

from __future__ import annotations

import datetime
import fnmatch
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLContextFactory, IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from mailhub.smtp.replies import Reply

_log = Logger(namespace="mailhub.faults")


class Stage(StrEnum):
    """Where in the SMTP session (RFC 5321 3) a rule is consulted."""

    CONNECT = "connect"  # before the 220 greeting
    EHLO = "ehlo"  # EHLO or HELO
    MAIL = "mail"  # MAIL FROM, after its syntax is checked
    RCPT = "rcpt"  # each RCPT TO, after its syntax is checked
    DATA = "data"  # the end of the message: "." after DATA, or BDAT ... LAST
    STARTTLS = "starttls"  # the STARTTLS command, the offer in EHLO, and every TLS handshake


class Action(StrEnum):
    """What a firing rule does."""

    REPLY = "reply"  # answer code + enhanced code + text instead of the normal reply
    DELAY = "delay"  # answer normally, ``seconds`` later (on the server's clock)
    THROTTLE = "throttle"  # this and every later reply of the session comes ``seconds`` late
    DISCONNECT = "disconnect"  # close the connection without a reply (a message is not stored)
    NO_STARTTLS = "no_starttls"  # EHLO does not offer STARTTLS; the command gets 502
    BAD_CERTIFICATE = "bad_certificate"  # the TLS handshake presents a bad certificate


class BadCertificate(StrEnum):
    """The ways a served certificate can be bad; each is bad in exactly one way when the rules
    have a ``CertificateIssuer`` the client trusts (``mailhub.testing`` sets one)."""

    EXPIRED = "expired"  # right names and issuer, validity ended yesterday
    SELF_SIGNED = "self-signed"  # right names and dates, signed by nobody the client trusts
    WRONG_NAME = "wrong-name"  # right issuer and dates, issued for wrong-name.invalid


# Actions the protocol applies itself, at a command; the other two are about TLS.
COMMAND_ACTIONS = frozenset({Action.REPLY, Action.DELAY, Action.THROTTLE, Action.DISCONNECT})
# Which stages know the sender, and the recipients, so a pattern on them can match.
_SENDER_STAGES = frozenset({Stage.MAIL, Stage.RCPT, Stage.DATA})
_RECIPIENT_STAGES = frozenset({Stage.RCPT, Stage.DATA})
# RFC 2034: the greeting and the replies to EHLO/HELO carry no enhanced status code.
_NO_ENHANCED = frozenset({Stage.CONNECT, Stage.EHLO})
_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")  # RFC 3463 2
WRONG_NAME = "wrong-name.invalid"  # RFC 2606: can never be a real host


class FaultError(ValueError):
    """A rule that cannot work; ``key`` names the field, ``fix`` says what would.

    The config turns it into a ConfigError naming the file; the web API into a 400 answer."""

    def __init__(self, key: str, problem: str, fix: str = "") -> None:
        self.key, self.problem, self.fix = key, problem, fix
        text = f"{key}: {problem}"
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)


def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """A case-insensitive address matcher: a shell glob (``fail-550@*``), or a regular expression
    after ``re:`` (``re:^fail-(\\d+)@``, searched). Raises FaultError for a bad expression."""
    if pattern.startswith("re:"):
        try:
            search = re.compile(pattern[3:], re.IGNORECASE).search
        except re.error as e:
            raise FaultError("pattern", f"bad regular expression {pattern!r}: {e}") from None
        return lambda address: search(address) is not None
    match = re.compile(fnmatch.translate(pattern), re.IGNORECASE | re.DOTALL).match
    return lambda address: match(address) is not None


@dataclass(frozen=True)
class Rule:
    """One fault. Plain, comparable data: the config keeps these; ``FaultRules`` keeps the state
    (remaining count, random generator) of each added copy.

    ``sender`` and ``recipient`` are patterns (see ``compile_pattern``) matched against addresses
    as the client wrote them, without angle brackets (the null sender is ""). A ``recipient``
    pattern at DATA matches when any recipient of the message matches. ``count`` (None: no limit)
    is how many times the rule fires; at RCPT each recipient is one firing, at the other stages
    one message or connection. Raises FaultError when the fields do not fit together.
    """

    stage: Stage
    action: Action
    code: int | None = None  # REPLY: 400-599
    enhanced: str | None = None  # REPLY: "5.7.1"; default "<class>.0.0" where one is allowed
    text: str = "Error: fault injected by mailhub"  # REPLY
    seconds: float = 0.0  # DELAY, THROTTLE
    certificate: BadCertificate | None = None  # BAD_CERTIFICATE
    sender: str | None = None
    recipient: str | None = None
    probability: float = 1.0  # chance to fire once stage and patterns match
    seed: int = 0  # for the probability draws: same seed, same sequence
    count: int | None = None
    name: str = ""  # a label for lists and logs
    _sender_match: Callable[[str], bool] | None = field(
        init=False, repr=False, compare=False, default=None
    )
    _recipient_match: Callable[[str], bool] | None = field(
        init=False, repr=False, compare=False, default=None
    )
    _reply: Reply | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        stage, action = (
            self._enum(Stage, "stage", self.stage),
            self._enum(Action, "action", self.action),
        )
        object.__setattr__(self, "stage", stage)
        object.__setattr__(self, "action", action)
        if action in (Action.NO_STARTTLS, Action.BAD_CERTIFICATE) and stage is not Stage.STARTTLS:
            raise FaultError(
                "stage", f"{action} works at stage starttls only", 'stage = "starttls"'
            )
        if action is Action.REPLY:
            self._check_reply(stage)
        elif self.code is not None or self.enhanced is not None:
            raise FaultError("code", f"only the reply action takes a code, not {action}")
        if action in (Action.DELAY, Action.THROTTLE):
            if isinstance(self.seconds, bool) or not isinstance(self.seconds, int | float):
                raise FaultError("seconds", "must be a number", "seconds = 5")
            if not 0 < self.seconds <= 86400:
                raise FaultError(
                    "seconds", f"must be more than 0 (at most a day), not {self.seconds}"
                )
        if action is Action.BAD_CERTIFICATE:
            if self.certificate is None:
                raise FaultError(
                    "certificate",
                    "the bad_certificate action needs to know which kind",
                    'certificate = "expired", "self-signed" or "wrong-name"',
                )
            object.__setattr__(
                self, "certificate", self._enum(BadCertificate, "certificate", self.certificate)
            )
        elif self.certificate is not None:
            raise FaultError(
                "certificate", f"only the bad_certificate action takes it, not {action}"
            )
        for key, stages in (("sender", _SENDER_STAGES), ("recipient", _RECIPIENT_STAGES)):
            pattern = getattr(self, key)
            if pattern is None:
                continue
            if not isinstance(pattern, str):
                raise FaultError(key, "must be a string pattern", f'{key} = "fail-550@*"')
            if stage not in stages:
                raise FaultError(
                    key,
                    f"the {key} is not known yet at stage {stage}",
                    "use it at stage " + ", ".join(s.value for s in Stage if s in stages),
                )
            try:
                matcher = compile_pattern(pattern)
            except FaultError as e:
                raise FaultError(key, e.problem) from None
            object.__setattr__(self, f"_{key}_match", matcher)
        p = self.probability
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1:
            raise FaultError("probability", f"must be a number above 0 and at most 1, not {p!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise FaultError("seed", f"must be a whole number, not {self.seed!r}", "seed = 42")
        if self.count is not None and (
            isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1
        ):
            raise FaultError("count", f"must be a whole number of at least 1, not {self.count!r}")
        if not isinstance(self.name, str):
            raise FaultError("name", "must be a string")

    @staticmethod
    def _enum(kind: type[StrEnum], key: str, value: Any) -> Any:
        try:
            return kind(value)
        except ValueError:
            choices = ", ".join(repr(v.value) for v in kind)  # type: ignore[attr-defined]
            raise FaultError(key, f"{value!r} is not one of {choices}") from None

    def _check_reply(self, stage: Stage) -> None:
        code = self.code
        if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
            raise FaultError(
                "code",
                f"a reply fault needs an error code from 400 to 599, not {code!r}",
                "code = 550",
            )
        enhanced = self.enhanced
        if stage in _NO_ENHANCED:
            if enhanced is not None:
                raise FaultError(
                    "enhanced",
                    f"replies at stage {stage} carry no enhanced status code (RFC 2034)",
                    "leave enhanced out",
                )
        else:
            if enhanced is None:
                enhanced = f"{code // 100}.0.0"
            if not isinstance(enhanced, str) or not _ENHANCED.fullmatch(enhanced):
                raise FaultError(
                    "enhanced", f"{enhanced!r} is not an enhanced status code", '"5.7.1"'
                )
            if enhanced[0] != str(code)[0]:
                raise FaultError(
                    "enhanced",
                    f"{enhanced} does not fit code {code} (RFC 3463: the same class)",
                    f'enhanced = "{str(code)[0]}{enhanced[1:]}"',
                )
        if (
            not isinstance(self.text, str)
            or not self.text
            or "\r" in self.text
            or "\n" in self.text
        ):
            raise FaultError("text", "must be one line of text", 'text = "mailbox unavailable"')
        object.__setattr__(self, "_reply", Reply(code, enhanced, self.text))

    @property
    def reply(self) -> Reply | None:
        """The reply a REPLY rule sends; None for the other actions."""
        return self._reply

    def matches(self, sender: str | None, recipients: Sequence[str]) -> bool:
        """Do the patterns match? (Stage and action are checked by ``FaultRules``.)"""
        if self._sender_match is not None and (sender is None or not self._sender_match(sender)):
            return False
        if self._recipient_match is not None:
            return any(self._recipient_match(r) for r in recipients)
        return True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        """A rule from a TOML table or JSON object; unknown keys are errors (FaultError)."""
        if not isinstance(data, Mapping):
            raise FaultError("rule", "must be a table of settings", '{stage = "rcpt", ...}')
        known = [f.name for f in fields(cls) if f.init]
        for key in data:
            if key not in known:
                raise FaultError(key, "unknown setting", "known: " + ", ".join(known))
        for key in ("stage", "action"):
            if key not in data:
                raise FaultError(key, "missing", f"set {key} (one of {_choices(key)})")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """The settings that differ from the defaults, JSON- and TOML-ready."""
        out: dict[str, Any] = {"stage": self.stage.value, "action": self.action.value}
        for f in fields(self):
            if not f.init or f.name in out:
                continue
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = value.value if isinstance(value, StrEnum) else value
        if self.action is Action.REPLY and self._reply is not None:
            out["enhanced"] = self._reply.enhanced
            out["text"] = self.text
        return out


def _choices(key: str) -> str:
    kind = Stage if key == "stage" else Action
    return ", ".join(v.value for v in kind)


@dataclass
class _Active:
    """A rule added to a ``FaultRules``, with the state that changes as it fires."""

    id: str
    rule: Rule
    random: random.Random
    remaining: int | None
    fired: int = 0
    matched: int = 0  # times stage and patterns matched (fired or not)


# --- bad certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateIssuer:
    """A CA certificate and key the clients under test trust: bad certificates are signed by it,
    so each one is bad for exactly its one reason. ``chain`` is sent after the leaf."""

    certificate: x509.Certificate
    key: PrivateKeyTypes
    chain: tuple[x509.Certificate, ...] = ()


def make_bad_certificate(
    kind: BadCertificate,
    names: Sequence[str],
    issuer: CertificateIssuer | None = None,
    now: datetime.datetime | None = None,
) -> tuple[tuple[x509.Certificate, ...], ec.EllipticCurvePrivateKey]:
    """A (chain, key) bad in the way ``kind`` says, for ``names`` (DNS names or IP addresses).

    Without an issuer every kind is self-signed (the dev stack's own certificate is too, so a
    client that pinned it still refuses each)."""
    now = now or datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    key = ec.generate_private_key(ec.SECP256R1())
    if kind is BadCertificate.WRONG_NAME:
        names = (WRONG_NAME,)
    not_before, not_after = now - day, now + 30 * day
    if kind is BadCertificate.EXPIRED:
        not_before, not_after = now - 60 * day, now - day
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "localhost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"mailhub fault: {kind.value}"),
        ]
    )
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    signer_cert = (
        issuer if (issuer is not None and kind is not BadCertificate.SELF_SIGNED) else None
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_cert.certificate.subject if signer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(general), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    signing_key: Any = signer_cert.key if signer_cert else key
    certificate = builder.sign(signing_key, hashes.SHA256())
    chain = (certificate, *(signer_cert.chain if signer_cert else ()))
    return chain, key


def _context_for(chain: Sequence[x509.Certificate], key: PrivateKeyTypes) -> SSL.Context:
    """A server context with mailhub's usual TLS settings (tls.server_context) for a chain."""
    from mailhub.tls import CertificatePair, _info, server_context

    where = Path(f"<fault certificate {chain[0].subject.rfc4514_string()}>")
    return server_context(CertificatePair(where, where, tuple(chain), key, _info(where, chain)))


# --- the rules of one server --------------------------------------------------------------------


class FaultRules:
    """The fault rules of a running server: the SMTP listeners consult it, the config and the
    web API change it. Rules are tried in the order added; the first that fires wins.

    ``stages`` is the set of stages with a rule that can still fire: the protocol does nothing
    else while it is empty. ``certificate_names`` and ``certificate_issuer`` shape the bad
    certificates (the service sets the names from its own certificate)."""

    def __init__(self, rules: Iterable[Rule] = (), *, log: Logger | None = None) -> None:
        self._rules: list[_Active] = []
        self._next_id = 1
        self.stages: frozenset[Stage] = frozenset()
        self.log = log if log is not None else _log
        self.certificate_names: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
        self.certificate_issuer: CertificateIssuer | None = None
        self._contexts: dict[BadCertificate, SSL.Context] = {}
        for rule in rules:
            self.add(rule)

    def add(self, rule: Rule | Mapping[str, Any]) -> str:
        """Add a rule (or its dict form; FaultError if it is bad) after the others; its id."""
        if not isinstance(rule, Rule):
            rule = Rule.from_dict(rule)
        rule_id = str(self._next_id)
        self._next_id += 1
        self._rules.append(_Active(rule_id, rule, random.Random(rule.seed), rule.count))
        self._update()
        return rule_id

    def remove(self, rule_id: str) -> bool:
        """Remove one rule by id; False if there is none with that id."""
        before = len(self._rules)
        self._rules = [a for a in self._rules if a.id != str(rule_id)]
        self._update()
        return len(self._rules) != before

    def clear(self) -> int:
        """Remove every rule; how many there were."""
        count = len(self._rules)
        self._rules = []
        self._update()
        return count

    def list(self) -> list[dict[str, Any]]:
        """Every rule as a dict: its settings plus ``id``, ``remaining`` (None: no limit),
        ``fired`` and ``matched`` counters, and ``spent`` once its count is used up."""
        return [self._describe(a) for a in self._rules]

    def get(self, rule_id: str) -> dict[str, Any] | None:
        """One rule as ``list`` shows it, or None."""
        for active in self._rules:
            if active.id == str(rule_id):
                return self._describe(active)
        return None

    @staticmethod
    def _describe(active: _Active) -> dict[str, Any]:
        return {
            "id": active.id,
            **active.rule.to_dict(),
            "remaining": active.remaining,
            "fired": active.fired,
            "matched": active.matched,
            "spent": active.remaining == 0,
        }

    def _update(self) -> None:
        self.stages = frozenset(a.rule.stage for a in self._rules if a.remaining != 0)

    def decide(
        self,
        stage: Stage,
        *,
        sender: str | None = None,
        recipients: Sequence[str] = (),
        actions: frozenset[Action] = COMMAND_ACTIONS,
        client: str = "",
    ) -> Rule | None:
        """The rule that fires now at ``stage``, among those with one of ``actions``, or None.
        A firing is counted (and may use the rule up); a match draws from the rule's random
        generator when its probability is below 1."""
        if stage not in self.stages:
            return None
        for active in self._rules:
            rule = active.rule
            if (
                rule.stage is not stage
                or rule.action not in actions
                or active.remaining == 0
                or not rule.matches(sender, recipients)
            ):
                continue
            active.matched += 1
            if rule.probability < 1 and active.random.random() >= rule.probability:
                continue
            active.fired += 1
            if active.remaining is not None:
                active.remaining -= 1
                if active.remaining == 0:
                    self._update()
            self.log.info(
                "fault rule {id} fired at {stage} for {client}: {action}",
                event="fault",
                id=active.id,
                stage=stage.value,
                action=rule.action.value,
                client=client,
                rule=rule.name,
            )
            return rule
        return None

    def bad_context(self, kind: BadCertificate) -> SSL.Context:
        """The server context presenting a bad certificate of ``kind`` (made once, then kept;
        setting ``certificate_issuer`` or ``certificate_names`` after that does not change it)."""
        context = self._contexts.get(kind)
        if context is None:
            chain, key = make_bad_certificate(kind, self.certificate_names, self.certificate_issuer)
            context = self._contexts[kind] = _context_for(chain, key)
        return context

    def forget_certificates(self) -> None:
        """Make the bad certificates anew on next use (after changing names or issuer)."""
        self._contexts.clear()


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class FaultyServerTLS:
    """Wraps the real TLS connection creator (``tls.ServerTLS``) for the SMTP listeners: each
    handshake, STARTTLS or implicit, asks the rules whether to present a bad certificate."""

    def __init__(self, real: Any, rules: FaultRules) -> None:
        self.real, self.rules = real, rules

    def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:
        if Stage.STARTTLS in self.rules.stages:
            rule = self.rules.decide(Stage.STARTTLS, actions=frozenset({Action.BAD_CERTIFICATE}))
            if rule is not None and rule.certificate is not None:
                return SSL.Connection(self.rules.bad_context(rule.certificate), None)
        return self.real.serverConnectionForTLS(protocol)

    def getContext(self) -> SSL.Context:
        return self.real.getContext()

    def __getattr__(self, name: str) -> Any:
        # certificates, certificate_for, reload...: whatever else the real one offers.
        return getattr(self.real, name)
