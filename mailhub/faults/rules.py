"""Deterministic fault injection for the SMTP receiver.

A ``Rule`` says *where* (a ``Stage`` of the SMTP session), *for whom* (sender and recipient
patterns), *how often* (a seeded probability, and at most ``count`` times) and *what happens*
(an ``Action``: a chosen reply, a delay, slow replies for the rest of the session, a dropped
connection, no STARTTLS offer, or a bad TLS certificate). ``FaultRules`` holds the rules of one
running server; the SMTP receiver consults it at each stage (``mailhub.faults.smtp``), the
``[[faults.rule]]`` tables of the config fill it at start-up (``rules_from_config``), and the
web API changes it at run time (``add``/``remove``/``clear``/``list``; rules travel as plain
dicts there: ``Rule.from_dict`` / ``Rule.to_dict``).

Deterministic means: the rules are tried in the order they were added, the first that fires wins,
and a rule's random draws come from its own ``random.Random(seed)``, drawn only when stage and
patterns match. The same rules and the same traffic give the same faults, every run.

Nothing here costs anything while no rule is active: the receiver checks ``FaultRules.stages``
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

import fnmatch
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from mailhub.errors import ConfigError
from mailhub.smtp.replies import Reply

if TYPE_CHECKING:
    from OpenSSL import SSL

    from mailhub.config import Config
    from mailhub.faults.certificates import CertificateIssuer

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
    # Only sessions logged in (SMTP AUTH) as this address: a sandbox's own rules (issue 15),
    # so parallel tests never meet each other's faults. Known from MAIL on.
    login: str | None = None
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
        if self.login is not None:
            if not isinstance(self.login, str) or not self.login:
                raise FaultError("login", "must be an address", 'login = "alice@example.com"')
            if stage not in _SENDER_STAGES:
                raise FaultError(
                    "login",
                    f"the login is not known yet at stage {stage}",
                    "use it at stage mail, rcpt or data",
                )
            object.__setattr__(self, "login", self.login.lower())

    @staticmethod
    def _enum(kind: type[StrEnum], key: str, value: Any) -> Any:
        try:
            return kind(value)
        except ValueError:
            choices = ", ".join(repr(v.value) for v in kind)
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

    def matches(
        self, sender: str | None, recipients: Sequence[str], login: str | None = None
    ) -> bool:
        """Do the patterns (and the login) match? (Stage and action: ``FaultRules``.)"""
        if self.login is not None and self.login != (login or "").lower():
            return False
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


def rules_from_config(config: Config) -> tuple[Rule, ...]:
    """The ``[[faults.rule]]`` tables of ``config`` as rules, in the order written. A table that
    cannot work raises ConfigError naming the file, the rule's number and the key."""
    rules = []
    for n, data in enumerate(config.faults.rules, 1):
        try:
            rules.append(Rule.from_dict(data))
        except FaultError as e:
            fix = e.fix or "see the [faults] example in etc/dev.toml"
            where = f"[[faults.rule]] number {n}: {e.key}"
            raise ConfigError(config.source, where, e.problem, fix) from None
    return tuple(rules)


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
        self._watchers: list[Callable[[], None]] = []
        self.log = log if log is not None else _log
        self.certificate_names: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
        self.certificate_issuer: CertificateIssuer | None = None
        # Bad certificates' server contexts, made on first use (mailhub.faults.certificates).
        self.certificate_contexts: dict[BadCertificate, SSL.Context] = {}
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

    def remove_login(self, login: str) -> int:
        """Remove the rules of one login (a sandbox deleted); how many there were."""
        before = len(self._rules)
        self._rules = [a for a in self._rules if a.rule.login != login.lower()]
        self._update()
        return before - len(self._rules)

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

    def watch(self, changed: Callable[[], None]) -> None:
        """Call ``changed()`` after every change of the rules (``stages`` is then up to date)."""
        self._watchers.append(changed)

    def _update(self) -> None:
        self.stages = frozenset(a.rule.stage for a in self._rules if a.remaining != 0)
        for changed in self._watchers:
            changed()

    def decide(
        self,
        stage: Stage,
        *,
        sender: str | None = None,
        recipients: Sequence[str] = (),
        actions: frozenset[Action] = COMMAND_ACTIONS,
        client: str = "",
        login: str | None = None,
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
                or not rule.matches(sender, recipients, login)
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

    def forget_certificates(self) -> None:
        """Make the bad certificates anew on next use (after changing names or issuer)."""
        self.certificate_contexts.clear()
