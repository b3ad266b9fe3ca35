"""The results in a developer's words: the sentences, the alignment worked out from the
domains, the bulk-sender verdict only when it can be said, and nothing raising on any header."""

from __future__ import annotations

import json
from email.header import Header

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailhub.checks.explain import alignment, explain, explain_message
from mailhub.checks.results import parse
from tests import headerbytes


def explained(value: str) -> dict:  # type: ignore[type-arg]
    out = explain(parse(value.encode())).json()
    json.dumps(out)  # the API sends it as is
    return out


class Alignment(SynchronousTestCase):
    def test_strict_relaxed_and_not(self) -> None:
        self.assertEqual(alignment("example.com", "Example.COM."), "strict")
        self.assertEqual(alignment("mail.example.com", "example.com"), "relaxed")
        self.assertEqual(alignment("a.example.co.uk", "b.example.co.uk"), "relaxed")
        self.assertEqual(alignment("a.co.uk", "b.co.uk"), "no")  # co.uk is a public suffix
        self.assertEqual(alignment("mailer.example.net", "example.com"), "no")
        self.assertIsNone(alignment(None, "example.com"))
        self.assertIsNone(alignment("example.com", ""))


class Sentences(SynchronousTestCase):
    def test_dkim_passed_but_not_aligned_so_dmarc_fails(self) -> None:
        # The sentence of issue 14, built from the properties when the checks gave no reason.
        got = explained(
            "hub.example; spf=softfail smtp.mailfrom=app@example.com;"
            " dkim=pass header.d=mailer.example.net header.s=s1 header.a=rsa-sha256"
            " header.b=Abc/d+12; dmarc=fail header.from=example.com policy.dmarc=reject"
        )
        dmarc = got["dmarc"]
        self.assertEqual(
            dmarc["why"],
            "DKIM passed but is not aligned with From: example.com ≠ mailer.example.net, so "
            "DMARC fails. example.com's DMARC policy (reject) asks receivers to reject it.",
        )
        self.assertEqual((dmarc["dkim_alignment"], dmarc["dkim_aligned"]), ("no", False))
        self.assertEqual((dmarc["spf_alignment"], dmarc["spf_aligned"]), ("strict", False))
        self.assertEqual(dmarc["policy"], "reject")
        self.assertEqual(
            got["dkim"][0],
            {
                "result": "pass",
                "domain": "mailer.example.net",
                "selector": "s1",
                "algorithm": "rsa-sha256",
                "signature": "Abc/d+12",
                "why": "The signature by mailer.example.net verifies: the signed header fields "
                "and the body are as signed.",
            },
        )
        self.assertIn("~all", got["spf"]["why"])
        self.assertIs(got["bulk_sender"], False)
        self.assertTrue(got["summary"].startswith("DMARC fails for From: example.com"))

    def test_everything_passes_and_aligns(self) -> None:
        got = explained(
            'hub.example; spf=pass reason="192.0.2.1 is in ip4:192.0.2.0/24"'
            " smtp.mailfrom=bounce@example.com smtp.helo=mta.example.com;"
            " dkim=pass header.d=mail.example.com header.s=ed header.a=ed25519-sha256;"
            " dkim=fail header.d=old.example header.s=x;"
            " dmarc=pass header.from=example.com policy.dmarc=quarantine"
        )
        self.assertIs(got["bulk_sender"], True)
        self.assertIn("Meets Gmail's and Yahoo's", got["summary"])
        self.assertEqual(got["spf"]["why"], "192.0.2.1 is in ip4:192.0.2.0/24")  # its reason
        self.assertEqual(got["spf"]["identity"], "mailfrom")
        self.assertEqual(got["spf"]["domain"], "example.com")
        dmarc = got["dmarc"]
        self.assertEqual(dmarc["spf_alignment"], "strict")
        self.assertEqual(dmarc["dkim_alignment"], "relaxed")  # the best of the passing ones
        self.assertTrue(dmarc["spf_aligned"] and dmarc["dkim_aligned"])
        self.assertEqual(
            dmarc["why"],
            "DMARC passes: SPF (example.com) and DKIM (mail.example.com) passed for a domain "
            "aligned with From: example.com.",
        )
        self.assertIn("old.example", got["dkim"][1]["why"])
        self.assertIn("x._domainkey.old.example", got["dkim"][1]["why"])

    def test_the_checks_reason_is_the_why(self) -> None:
        got = explained(
            'hub.example; dmarc=fail reason="DKIM passed but is not aligned with From:'
            ' example.com != mailer.example.net, so DMARC fails" header.from=example.com'
        )
        self.assertEqual(
            got["dmarc"]["why"],
            "DKIM passed but is not aligned with From: example.com != mailer.example.net, so "
            "DMARC fails",
        )

    def test_dmarc_passes_through_one_of_them_only(self) -> None:
        got = explained(
            "hub.example; spf=fail smtp.mailfrom=x@bounces.esp.example;"
            " dkim=pass header.d=example.com; dmarc=pass header.from=example.com"
        )
        self.assertIs(got["bulk_sender"], False)
        self.assertIn("but SPF does not", got["summary"])
        self.assertEqual(got["dmarc"]["spf_aligned"], False)

    def test_authenticated_submission_leaves_spf_to_the_receiver(self) -> None:
        got = explained(
            "hub.example; auth=pass smtp.auth=app@example.org;"
            ' spf=none reason="not checked: authenticated submission"'
            " smtp.mailfrom=app@example.org;"
            " dkim=pass header.d=example.org; dmarc=pass header.from=example.org"
        )
        self.assertIsNone(got["bulk_sender"])  # SPF will be judged for the relaying server
        self.assertIn("SPF is judged by the receiver", got["summary"])
        # without auth=pass, SPF none is a missing SPF record: not a bulk sender's mail
        self.assertIs(explained(
            "hub.example; spf=none smtp.mailfrom=app@example.org;"
            " dkim=pass header.d=example.org; dmarc=pass header.from=example.org"
        )["bulk_sender"], False)  # fmt: skip

    def test_no_dmarc_record(self) -> None:
        got = explained(
            "hub.example; spf=pass smtp.mailfrom=a@example.org; dkim=pass header.d=example.org;"
            " dmarc=none header.from=example.org"
        )
        self.assertIs(got["bulk_sender"], False)
        self.assertTrue(
            got["summary"].startswith("DMARC does not apply to From: example.org (example.org "
                                      "publishes no DMARC record"), got["summary"])  # fmt: skip
        self.assertIn("publishes no DMARC record", got["dmarc"]["why"])

    def test_a_message_the_checks_did_not_judge(self) -> None:
        # As checks.inbound.unchecked records a message too big to check.
        why = "not checked: larger than 10485760 octets"
        got = explained(f'hub.example; spf=none reason="{why}"; dkim=none reason="{why}";'
                        f' dmarc=none reason="{why}"')  # fmt: skip
        self.assertIsNone(got["bulk_sender"])
        self.assertEqual(got["summary"], f"DMARC was not evaluated: {why}")
        self.assertEqual(got["dkim"][0]["why"], why)

    def test_null_reverse_path_checks_helo(self) -> None:
        got = explained('hub.example; spf=pass smtp.mailfrom="" smtp.helo=mta.example.org')
        self.assertEqual(
            (got["spf"]["identity"], got["spf"]["domain"]), ("helo", "mta.example.org")
        )
        self.assertIsNone(got["bulk_sender"])  # no DMARC result: nothing to say

    def test_arc_chain(self) -> None:
        got = explained(
            'hub.example; arc=pass reason="chain of 2 sets: i=1 lists.example.org, i=2 fwd.example"'
        )
        self.assertEqual(got["arc"]["instances"], 2)
        self.assertIn("lists.example.org", got["arc"]["why"])
        self.assertIsNone(explained("hub.example; arc=fail")["arc"]["instances"])
        self.assertIn("broken", explained("hub.example; arc=fail")["arc"]["why"])

    def test_missing_properties_say_less(self) -> None:
        got = explained("hub.example; spf=pass; dkim=pass; dkim=none; dmarc=fail; arc=pass")
        self.assertIsNone(got["spf"]["domain"])
        self.assertIsNone(got["spf"]["identity"])
        self.assertIsNone(got["dkim"][0]["domain"])
        self.assertEqual(got["dkim"][1]["why"], "The message has no DKIM signature.")
        self.assertIsNone(got["dmarc"]["from_domain"])
        self.assertIsNone(got["dmarc"]["dkim_aligned"])
        self.assertEqual(
            got["dmarc"]["why"],
            "The field does not name the domain SPF or DKIM passed for, so DMARC fails.",
        )
        self.assertIs(got["bulk_sender"], False)

    def test_other_methods_are_listed(self) -> None:
        got = explained("hub.example; auth=pass (cram-md5) smtp.auth=u@example.net; iprev=pass")
        self.assertEqual(
            got["other_methods"][0],
            {
                "method": "auth",
                "result": "pass",
                "why": "cram-md5",
                "properties": {"smtp.auth": "u@example.net"},
            },
        )
        self.assertEqual(got["summary"], "No SPF, DKIM or DMARC result in the field.")

    def test_not_checked(self) -> None:
        got = explain(None, authserv_id="hub.example", others=("mx.google.com",)).json()
        self.assertFalse(got["checked"])
        self.assertTrue(got["summary"].startswith("Not checked: "))
        self.assertIn("hub.example", got["summary"])
        self.assertIn("mx.google.com", got["summary"])
        self.assertEqual(got["other_servers"], ["mx.google.com"])
        self.assertIsNone(got["spf"])
        self.assertEqual(got["dkim"], [])

    def test_a_message_s_own_field_and_the_others_named(self) -> None:
        headers = [
            ("Authentication-Results", "mx.google.com; spf=pass smtp.mailfrom=a@forged.example"),
            ("Authentication-Results", b"Hub.Example; dkim=pass header.d=example.com"),
            ("Authentication-Results", "relay.example; none"),
            ("Authentication-Results", "mx.google.com; spf=fail"),
        ]
        got = explain_message(headers, "hub.example")
        self.assertEqual(got.authserv_id, "Hub.Example")
        self.assertIsNone(got.spf)  # the other servers' results are not believed
        self.assertEqual(got.dkim[0].domain, "example.com")
        self.assertEqual(got.other_servers, ("mx.google.com", "relay.example"))
        anyone = explain_message(headers, None)  # no id: the top-most field
        self.assertEqual(
            (anyone.authserv_id, anyone.spf and anyone.spf.result), ("mx.google.com", "pass")
        )
        self.assertEqual(anyone.other_servers, ("Hub.Example", "relay.example"))
        nothing = explain_message(headers, "other.example")
        self.assertFalse(nothing.checked)
        self.assertEqual(len(nothing.other_servers), 3)

    def test_what_is_read_of_a_message_is_bounded(self) -> None:
        # A field past 64 KiB is cut (a 25 MB one would hold the reactor for seconds) ...
        long = 'hub.example; spf=pass reason="' + "x" * 70_000 + '"; dmarc=fail'
        got = explain_message([("Authentication-Results", long)], "hub.example")
        self.assertEqual(got.spf and got.spf.result, "pass")
        self.assertIsNone(got.dmarc)
        # ... and only the top 50 fields are read.
        many = [("Authentication-Results", f"s{i}.example; none") for i in range(60)]
        self.assertEqual(len(explain_message(many, None).other_servers), 49)

    def test_a_header_object_as_compat32_gives_it(self) -> None:
        value = Header("hub.example; spf=pass smtp.mailfrom=a@example.org")
        got = explain_message([("Authentication-Results", value)], "hub.example")  # type: ignore[list-item]
        self.assertEqual(got.spf and got.spf.domain, "example.org")

    def test_many_signatures_are_capped(self) -> None:
        got = explained("h" + "; dkim=pass header.d=example.com" * 500)
        self.assertEqual(len(got["dkim"]), 20)


_methods = st.sampled_from(["spf", "dkim", "dmarc", "arc", "auth", "iprev", "SPF", ""])
_results = st.sampled_from(
    ["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy", "x", ""]
)
_keys = st.sampled_from(
    [
        "smtp.mailfrom",
        "smtp.helo",
        "header.d",
        "header.s",
        "header.a",
        "header.b",
        "header.i",
        "header.from",
        "policy.dmarc",
        "reason",
    ]
)
_values = st.one_of(
    st.sampled_from(["example.com", "a@b.example", "@", "", "co.uk", ".", "x@", "reject"]),
    st.text(max_size=12),
)


@st.composite
def _fields(draw: st.DrawFn) -> bytes:
    parts = [draw(st.sampled_from(["hub.example", '"q"', ""]))]
    for _ in range(draw(st.integers(0, 6))):
        words = [f"{draw(_methods)}={draw(_results)}"]
        for _ in range(draw(st.integers(0, 4))):
            value = draw(_values)
            words.append(f"{draw(_keys)}={json.dumps(value) if draw(st.booleans()) else value}")
        parts.append(" ".join(words))
    return "; ".join(parts).encode("utf-8", "surrogatepass")


class NeverRaises(SynchronousTestCase):
    @settings(max_examples=500, deadline=None)
    @given(_fields())
    def test_plausible_fields(self, raw: bytes) -> None:
        out = explain(parse(raw)).json()
        json.dumps(out)
        self.assertTrue(out["summary"])

    @settings(max_examples=300, deadline=None)
    @given(headerbytes.authentication_results())
    def test_header_bytes_as_mail_carries_them(self, raw: bytes) -> None:
        for authserv_id in ("mx.example.net", None):
            headers = [("Authentication-Results", raw.decode("ascii", "surrogateescape"))]
            out = explain_message(headers, authserv_id).json()
            text = json.dumps(out, ensure_ascii=False)
            text.encode("utf-8")  # no lone surrogate: the API could not send it

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_any_bytes(self, raw: bytes) -> None:
        json.dumps(explain(parse(raw)).json())
