"""The SPF project's RFC 7208 test suite against ``mailhub.checks.spf``.

``tests/data/spf/rfc7208-tests.yml`` (the openspf.org suite, release 2014.04 with the 2019.08
additions, BSD licence: see the README beside it) holds scenarios, each with its own DNS zone and
tests: helo, client address, MAIL FROM, and the result expected (or a list of acceptable ones)
and, for some, the ``exp=`` explanation ("DEFAULT": none). Every test becomes one test method
here, run through ``check_smtp`` against an in-memory resolver built from the scenario's zone.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import yaml
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks.spf import SPFVerdict, check_smtp
from tests.support.checkdns import MemoryResolver

SUITE = Path(__file__).parent / "data" / "spf" / "rfc7208-tests.yml"

# The suite's explanations are compared exactly, except these (and why).
EXPLANATION_CASE_INSENSITIVE = {
    # The suite expects %{ir} of CAFE:BABE::1 in upper-case nibbles (pyspf keeps the case of the
    # address as the test wrote it); RFC 7208 7.4's own example expands IPv6 in lower case, and
    # DNS names are case-insensitive: we follow the RFC.
    "v-macro-ip6",
}

_TIMEOUT = object()


ASKED = ("TXT", "A", "AAAA", "MX", "PTR")  # the types the SPF check asks


def suite_resolver(zonedata: dict[str, list[Any]]) -> MemoryResolver:
    """The in-memory resolver for a scenario's ``zonedata``, read as the suite's own driver
    (pyspf's testspf.py) reads it: records in order; ``TIMEOUT`` alone makes a question time out
    unless a record of the type asked came before it; ``SPF`` records stand in for TXT where a
    name has no TXT entry at all (``TXT: NONE`` is "no TXT records"); a CNAME is followed."""
    dns = MemoryResolver()
    for name, raw in zonedata.items():
        entries = _entries(raw or [])
        key = name.lower().rstrip(".")
        records: dict[str, list[Any]] = {}
        cnames, timeouts = set(), set()
        for rtype in ASKED:
            answer = _answer(entries, rtype)
            if answer is _TIMEOUT:
                timeouts.add((key, rtype))
            elif isinstance(answer, str):
                cnames.add(answer)
            else:
                records[rtype] = answer
        if cnames:
            # the store follows a CNAME for every type: the suite's CNAMEs stand alone
            assert len(cnames) == 1 and not records and not timeouts, name
            records = {"CNAME": [cnames.pop()]}
        dns.zone[key] = records
        dns.tempfail |= timeouts
    return dns


def _entries(raw: list[Any]) -> list[Any]:
    out: list[Any] = []
    has_txt = any(isinstance(e, dict) and "TXT" in e for e in raw)
    spf_as_txt = []
    for entry in raw:
        if entry == "TIMEOUT":
            out.append(_TIMEOUT)
            continue
        ((rtype, value),) = entry.items()
        if rtype in ("TXT", "SPF"):
            value = [value] if isinstance(value, str) else list(value)
            if value == ["NONE"]:
                continue
            if rtype == "SPF":
                if not has_txt:
                    spf_as_txt.append(("TXT", value))
                continue  # RFC 7208 3.1: the SPF RR type is not asked any more
        out.append((rtype, value))
    return out + spf_as_txt


def _answer(entries: list[Any], rtype: str) -> Any:
    """What asking ``rtype`` gives, as the driver reads the entries in order: the records,
    ``_TIMEOUT``, or the CNAME's target (a str)."""
    found: list[Any] = []
    for entry in entries:
        if entry is _TIMEOUT:
            return found or _TIMEOUT
        etype, value = entry
        if etype == "CNAME":
            return str(value)
        if etype == rtype:
            if value == "TIMEOUT":
                return _TIMEOUT
            found.append(_value(rtype, value))
    return found


def _value(rtype: str, value: Any) -> Any:
    if rtype == "TXT":
        return b"".join(s.encode("utf-8") for s in value)  # strings joined (RFC 7208 3.3)
    if rtype in ("A", "AAAA"):
        return str(ipaddress.ip_address(value))
    if rtype == "MX":
        preference, host = value
        return (int(preference), str(host).rstrip("."))
    return str(value).rstrip(".")


def load_suite() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(section description, zonedata, test) for every test, in the file's order."""
    tests = []
    with SUITE.open("rb") as f:
        for scenario in yaml.safe_load_all(f):
            for name, test in scenario["tests"].items():
                tests.append((scenario["description"], scenario["zonedata"], {"id": name, **test}))
    return tests


def run(zonedata: dict[str, list[Any]], test: dict[str, Any]) -> SPFVerdict:
    resolver = suite_resolver(zonedata)
    checking = Deferred.fromCoroutine(
        check_smtp(resolver, test["host"], test["mailfrom"], test["helo"])
    )
    results: list[SPFVerdict] = []
    checking.addCallback(results.append)
    assert results, "the in-memory resolver answers at once: the check must be done"
    return results[0]


class RFC7208SuiteTests(SynchronousTestCase):
    """One method per suite test, named test_<scenario>_<id>."""

    def test_suite_loaded(self) -> None:
        """The file is there and whole: 16 scenarios, 203 tests (release 2014.04 + 2019.08)."""
        tests = load_suite()
        self.assertEqual(len(tests), 203)
        self.assertEqual(len({section for section, _, _ in tests}), 16)


def _make(section: str, zonedata: dict[str, list[Any]], test: dict[str, Any]) -> Any:
    def method(self: SynchronousTestCase) -> None:
        verdict = run(zonedata, test)
        got = verdict.mailfrom
        wanted = test["result"] if isinstance(test["result"], list) else [test["result"]]
        self.assertIn(got.result, wanted, f"{test['id']} ({test['spec']}): {got}")
        if "explanation" in test:
            exp = got.authority_explanation or "DEFAULT"
            expected = test["explanation"]
            if test["id"] in EXPLANATION_CASE_INSENSITIVE:
                exp, expected = exp.lower(), expected.lower()
            self.assertEqual(exp, expected, f"{test['id']}: {got}")

    method.__doc__ = f"{section}: {test['id']} (RFC 7208 {test['spec']})"
    return method


for _section, _zone, _test in load_suite():
    _slug = re.sub(r"[^a-z0-9]+", "_", f"{_section}_{_test['id']}".lower()).strip("_")
    setattr(RFC7208SuiteTests, f"test_{_slug}", _make(_section, _zone, _test))
