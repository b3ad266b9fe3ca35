"""``mailhub dkim keygen|show|retire|list`` and ``mailhub check-config --dns``, run in-process
as an operator would run them; the printed record is what verifies the signatures."""

from __future__ import annotations

import io
import os
import re
import stat
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from twisted.internet import task, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailhub.checks.keys import KeyStore
from mailhub.checks.signing import sign
from mailhub.cli import main
from tests.support.dkim import verify_each
from tests.support.localdns import LocalDNS

MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\n\r\nbody\r\n"


def run_cli(case: SynchronousTestCase, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        exit_ = case.assertRaises(SystemExit, main, list(argv))
    return exit_.code, out.getvalue(), err.getvalue()


def printed_records(out: str) -> dict[str, str]:
    """record name -> the one-string TXT value, from keygen/show output."""
    names = re.findall(r"^(\S+\._domainkey\.\S+)  \(", out, re.M)
    values = re.findall(r"^    (v=DKIM1; .*)$", out, re.M)
    return dict(zip(names, values, strict=True))


def zone_strings(out: str, name: str) -> list[str]:
    line = next(x for x in out.splitlines() if x.strip().startswith(f"{name}. IN TXT"))
    return re.findall(r'"([^"]*)"', line)


class DKIMCommands(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = Path(self.mktemp()).absolute()
        self.month = time.strftime("%Y%m", time.gmtime())

    def test_keygen_writes_private_files_and_prints_records_that_verify(self) -> None:
        code, out, err = run_cli(self, "dkim", "keygen", "Example.COM", "--data", str(self.data))
        self.assertEqual((code, err), (0, ""))
        folder = self.data / "dkim" / "example.com"
        names = sorted(os.listdir(folder))
        self.assertEqual(names, [f"{self.month}e.key", f"{self.month}r.key"])
        for name in names:
            self.assertEqual(stat.S_IMODE(os.stat(folder / name).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(folder).st_mode), 0o700)
        published = printed_records(out)
        rsa_name = f"{self.month}r._domainkey.example.com"
        ed_name = f"{self.month}e._domainkey.example.com"
        self.assertEqual(set(published), {rsa_name, ed_name})
        self.assertTrue(published[rsa_name].startswith("v=DKIM1; k=rsa; p="))
        self.assertTrue(published[ed_name].startswith("v=DKIM1; k=ed25519; p="))
        # The zone-file form: strings of at most 255 octets that join into the same value.
        strings = zone_strings(out, rsa_name)
        self.assertGreater(len(strings), 1)
        self.assertTrue(all(len(s) <= 255 for s in strings))
        self.assertEqual("".join(strings), published[rsa_name])
        # What the server signs with verifies against what was printed.
        keys = KeyStore(self.data / "dkim", task.Clock()).keys_for("example.com")
        signed = sign(MESSAGE, keys) + MESSAGE
        self.assertEqual(
            verify_each(signed, published), [(f"{self.month}e", True), (f"{self.month}r", True)]
        )
        # show prints the same records again.
        code, shown, _ = run_cli(self, "dkim", "show", "example.com", "--data", str(self.data))
        self.assertEqual((code, printed_records(shown)), (0, published))

    def test_one_algorithm_own_selector_and_refusals(self) -> None:
        data = ("--data", str(self.data))
        code, out, _ = run_cli(
            self, "dkim", "keygen", "example.com", "-a", "rsa", "-s", "s1", "-b", "1024", *data
        )
        self.assertEqual(code, 0)
        self.assertIn("s1._domainkey.example.com  (rsa-sha256, 1024 bits, signing)", out)
        code, _, err = run_cli(
            self, "dkim", "keygen", "example.com", "-a", "rsa", "-s", "s1", *data
        )
        self.assertEqual(code, 1)
        self.assertIn("never replaced", err)
        for bits in ("512", "8192"):
            code, _, err = run_cli(
                self, "dkim", "keygen", "example.com", "-a", "rsa", "-s", "s2", "-b", bits, *data
            )
            self.assertEqual(code, 1)
            self.assertIn("1024 to 4096 bits", err)
        code, _, err = run_cli(self, "dkim", "keygen", "example.com", "-s", "s3", *data)
        self.assertEqual(code, 1)
        self.assertIn("--algorithm", err)
        code, _, err = run_cli(
            self, "dkim", "keygen", "example.com", "-a", "rsa", "-s", "../x", *data
        )
        self.assertEqual(code, 1)
        self.assertEqual(sorted(os.listdir(self.data / "dkim" / "example.com")), ["s1.key"])

    def test_retire_list_and_show(self) -> None:
        data = ("--data", str(self.data))
        self.assertEqual(run_cli(self, "dkim", "list", *data)[1], "no DKIM keys\n")
        run_cli(self, "dkim", "keygen", "example.com", *data)
        code, out, _ = run_cli(self, "dkim", "retire", "example.com", f"{self.month}r", *data)
        self.assertEqual(code, 0)
        self.assertIn("retired", out)
        code, out, _ = run_cli(self, "dkim", "list", *data)
        self.assertEqual(
            out,
            f"example.com\t{self.month}e\ted25519-sha256\t256\tsigning\n"
            f"example.com\t{self.month}r\trsa-sha256\t2048\tretired\n",
        )
        keys = KeyStore(self.data / "dkim", task.Clock()).keys_for("example.com")
        self.assertEqual([k.selector for k in keys], [f"{self.month}e"])
        code, out, _ = run_cli(self, "dkim", "show", "example.com", *data)
        self.assertIn("rsa-sha256, 2048 bits, retired", out)
        code, _, err = run_cli(self, "dkim", "retire", "example.com", "nope", *data)
        self.assertEqual(code, 1)
        self.assertIn("no key 'nope'", err)
        code, out, _ = run_cli(self, "dkim", "show", "example.org", *data)
        self.assertEqual(code, 1)
        self.assertIn("mailhub dkim keygen example.org", out)


class CheckConfigDNS(TestCase):
    """``check-config --dns`` against the local DNS server: one key published right, one with
    another key's p=, one not published."""

    async def test_reports_missing_and_mismatched_records(self) -> None:
        data = Path(self.mktemp()).absolute()
        argv = ("--data", str(data))
        for selector, algorithm in (("good", "rsa"), ("wrong", "ed25519"), ("absent", "rsa")):
            run_cli(self, "dkim", "keygen", "example.com", "-a", algorithm, "-s", selector, *argv)
        _, out, _ = run_cli(self, "dkim", "show", "example.com", *argv)
        published = printed_records(out)
        _, other, _ = run_cli(
            self, "dkim", "keygen", "example.org", "-a", "ed25519", "-s", "x", *argv
        )
        zone = {
            "good._domainkey.example.com": {"TXT": [published["good._domainkey.example.com"]]},
            "wrong._domainkey.example.com": {
                "TXT": [printed_records(other)["x._domainkey.example.org"]]
            },
            "x._domainkey.example.org": {
                "TXT": [printed_records(other)["x._domainkey.example.org"]]
            },
        }
        dns = LocalDNS(zone)
        port = dns.start()
        self.addCleanup(dns.stop)

        def check() -> tuple[int, str, str]:
            return run_cli(
                self, "check-config", "--dns", "--nameserver", f"127.0.0.1:{port}", *argv
            )

        # The command blocks on DNS: in a thread, so the reactor keeps serving the zone.
        code, out, _ = await threads.deferToThread(check)
        self.assertEqual(code, 1)
        self.assertIn("good._domainkey.example.com: ok: published", out)
        self.assertIn("wrong._domainkey.example.com: mismatch: p= is another key", out)
        self.assertIn("absent._domainkey.example.com: missing: no TXT record", out)
        self.assertIn("x._domainkey.example.org: ok", out)
        # Retired keys' records may go (rotation): reported, not failed.
        run_cli(self, "dkim", "retire", "example.com", "absent", *argv)
        run_cli(self, "dkim", "retire", "example.com", "wrong", *argv)
        code, out, _ = await threads.deferToThread(check)
        self.assertEqual(code, 0)
        self.assertIn("absent._domainkey.example.com (retired): missing", out)
