"""Outgoing DKIM (issue 14): keys on disk, signatures that verify (dkimpy and OpenDKIM), the
signing sink, signed bounces."""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any
from unittest.mock import patch

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, task
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface.verify import verifyObject

from mailhub.checks.keys import (
    ED25519_SHA256,
    RSA_SHA256,
    KeyFileError,
    KeyStore,
    generate,
    read_key,
    retire,
    write_key,
    zone_line,
)
from mailhub.checks.published import MISMATCH, MISSING, OK, compare
from mailhub.checks.signing import Signer, SigningSink, author_domain, sign, signed_fields
from mailhub.config import Config, ConfigError, DKIMConfig, dev_config, load
from mailhub.envelope import Envelope, Recipient
from mailhub.interfaces import DeliveryError, IMessageSink
from tests.support.dkim import (
    inline,
    make_keys,
    opendkim_verify,
    records,
    signature_fields,
    verify_each,
)
from tests.support.submission import MemorySink
from tests.support.tools import requires, tool
from tests.test_queue import QueueTestBase

MESSAGE = (
    b"Received: from client (unknown [192.0.2.7]) by mx.example.com\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: signed\r\n"
    b"Date: Sun, 06 Dec 2026 23:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: test\r\n"
    b"\r\n"
    b"Hello  \r\nthere.\r\n\r\n"
)


class KeyFiles(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()

    def test_write_key_modes_and_refuses_to_replace(self) -> None:
        info = write_key(self.dir, "Example.COM", "Sel1", generate(RSA_SHA256))
        self.assertEqual(info.path, self.dir / "example.com" / "sel1.key")
        self.assertEqual(stat.S_IMODE(os.stat(info.path).st_mode), 0o600)
        for folder in (self.dir, self.dir / "example.com"):
            self.assertEqual(stat.S_IMODE(os.stat(folder).st_mode), 0o700)
        self.assertEqual(os.listdir(self.dir / "example.com"), ["sel1.key"])  # no temp left
        with self.assertRaises(KeyFileError):
            write_key(self.dir, "example.com", "sel1", generate(ED25519_SHA256))

    def test_root_makes_keys_for_the_data_directorys_owner(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("needs root: chown")
        data = Path(self.mktemp()).absolute()
        data.mkdir()
        os.chown(data, 65534, 65534)  # the user the server runs as owns its data directory
        info = write_key(data / "dkim", "example.com", "s", generate(ED25519_SHA256))
        retire(data / "dkim", "example.com", "s")
        for path in (data / "dkim", info.path.parent, info.path, info.path.with_suffix(".retired")):
            self.assertEqual((os.stat(path).st_uid, os.stat(path).st_gid), (65534, 65534), path)

    def test_bad_selectors_domains_and_sizes(self) -> None:
        pem = generate(ED25519_SHA256)
        for selector in ("../x", "a/b", "", ".a", "a_b", "-a"):
            with self.assertRaises(KeyFileError, msg=selector):
                write_key(self.dir, "example.com", selector, pem)
        with self.assertRaises(KeyFileError):
            write_key(self.dir, "../etc", "s", pem)
        for bits in (512, 1023, 4097, 8192):
            with self.assertRaises(KeyFileError, msg=str(bits)):
                generate(RSA_SHA256, bits)

    def test_records_rsa_and_ed25519(self) -> None:
        rsa_key = write_key(self.dir, "example.com", "r", generate(RSA_SHA256))
        ed_key = write_key(self.dir, "example.com", "e", generate(ED25519_SHA256))
        self.assertEqual(rsa_key.record_name, "r._domainkey.example.com")
        self.assertEqual((rsa_key.key.algorithm, rsa_key.bits), (RSA_SHA256, 2048))
        self.assertTrue(rsa_key.record.startswith("v=DKIM1; k=rsa; p=MIIB"))
        # p= is the SubjectPublicKeyInfo of the key in the file.
        private = serialization.load_pem_private_key(rsa_key.path.read_bytes(), None)
        spki = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.assertEqual(rsa_key.record.split("p=")[1], base64.b64encode(spki).decode())
        # RFC 8463 4.2: k=ed25519, p= the raw 32-octet public key; dkimpy signs with the seed.
        self.assertTrue(ed_key.record.startswith("v=DKIM1; k=ed25519; p="))
        self.assertEqual(len(base64.b64decode(ed_key.record.split("p=")[1])), 32)
        self.assertEqual(len(base64.b64decode(ed_key.key.private_key)), 32)

    def test_zone_line_splits_at_255(self) -> None:
        value = "v=DKIM1; k=rsa; p=" + "A" * 392
        line = zone_line("s._domainkey.example.com", value)
        self.assertTrue(line.startswith("s._domainkey.example.com. IN TXT ( "), line)
        strings = re.findall(r'"([^"]*)"', line)
        self.assertEqual([len(s) for s in strings], [255, 155])
        self.assertEqual("".join(strings), value)
        short = zone_line("e._domainkey.example.com", "v=DKIM1; k=ed25519; p=x")
        self.assertEqual(short, 'e._domainkey.example.com. IN TXT "v=DKIM1; k=ed25519; p=x"')

    def test_keystore_reloads_on_change_and_skips_retired(self) -> None:
        clock = task.Clock()
        store = KeyStore(self.dir, clock, check_interval=2.0)
        self.assertEqual(store.keys_for("example.com"), [])
        self.assertFalse(store.has_keys())
        write_key(self.dir, "example.com", "r1", generate(RSA_SHA256))
        self.assertEqual(store.keys_for("example.com"), [])  # within check_interval: cached
        clock.advance(2)
        self.assertEqual([k.selector for k in store.keys_for("example.com")], ["r1"])
        write_key(self.dir, "example.com", "e1", generate(ED25519_SHA256))
        retire(self.dir, "example.com", "r1")
        clock.advance(2)
        self.assertEqual([k.selector for k in store.keys_for("Example.com.")], ["e1"])
        self.assertEqual(
            [(f.key.selector, f.retired) for f in store.key_files("example.com")],
            [("e1", False), ("r1", True)],
        )
        # A parent domain's keys sign for its subdomains (DMARC relaxed alignment).
        self.assertEqual(
            [k.domain for k in store.keys_for_author("mail.example.com")], ["example.com"]
        )
        self.assertEqual(store.keys_for_author("example.org"), [])
        self.assertEqual(store.keys_for_author("com"), [])

    def test_unreadable_key_is_skipped_not_fatal(self) -> None:
        write_key(self.dir, "example.com", "good", generate(ED25519_SHA256))
        (self.dir / "example.com" / "bad.key").write_bytes(b"not a key")
        store = KeyStore(self.dir, task.Clock())
        self.assertEqual([k.selector for k in store.keys_for("example.com")], ["good"])
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        with self.assertRaises(KeyFileError):
            read_key(self.dir / "example.com" / "bad.key")


class Signatures(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.keys = make_keys(self.dir, "example.com")
        self.published = records(self.keys)

    def signed(self, message: bytes = MESSAGE, which: list[Any] | None = None) -> bytes:
        chosen = [k.key for k in (which if which is not None else self.keys)]
        return sign(message, chosen) + message

    def test_rsa_ed25519_and_dual_verify(self) -> None:
        rsa_key, ed_key = self.keys
        self.assertEqual(verify_each(self.signed(which=[rsa_key]), self.published), [("r1", True)])
        self.assertEqual(verify_each(self.signed(which=[ed_key]), self.published), [("e1", True)])
        both = self.signed()
        self.assertEqual(verify_each(both, self.published), [("r1", True), ("e1", True)])
        tags = signature_fields(both)
        self.assertEqual([t[b"a"] for t in tags], [b"rsa-sha256", b"ed25519-sha256"])

    def test_tags_relaxed_from_oversigned_no_length(self) -> None:
        for tags in signature_fields(self.signed()):
            self.assertEqual(tags[b"c"], b"relaxed/relaxed")
            self.assertEqual(tags[b"d"], b"example.com")
            self.assertNotIn(b"l", tags)  # RFC 6376 8.2: never a body length
            self.assertIn(b"t", tags)
            h = tags[b"h"].lower().split(b":")
            self.assertEqual(h.count(b"from"), 2)  # one From, signed twice
            for name in (b"to", b"subject", b"date", b"message-id", b"mime-version"):
                self.assertIn(name, h)
            self.assertNotIn(b"received", h)
            self.assertNotIn(b"x-mailer", h)

    def test_an_added_from_or_changed_body_fails(self) -> None:
        signed = self.signed()
        forged = b"From: mallory@example.net\r\n" + signed
        self.assertEqual(verify_each(forged, self.published), [("r1", False), ("e1", False)])
        changed = signed.replace(b"there.", b"THERE.")
        self.assertEqual(verify_each(changed, self.published), [("r1", False), ("e1", False)])
        # relaxed/relaxed: refolding and trailing spaces do not matter.
        refolded = signed.replace(b"Subject: signed", b"Subject:   signed\r\n  ").replace(
            b"Hello  \r\n", b"Hello\r\n"
        )
        self.assertEqual(verify_each(refolded, self.published), [("r1", True), ("e1", True)])

    def test_signed_fields_lists(self) -> None:
        headers = [(b"From", b""), (b"Received", b""), (b"To", b""), (b"Resent-From", b"")]
        headers += [(b"List-Unsubscribe-Post", b""), (b"Bcc", b"")]
        self.assertEqual(
            signed_fields(headers),
            [b"from", b"to", b"resent-from", b"list-unsubscribe-post", b"from"],
        )

    def test_author_domain(self) -> None:
        self.assertEqual(author_domain(b"From: A <a@Example.COM>\r\n"), "example.com")
        self.assertEqual(author_domain(b"From: a@b\xc3\xa9.example\r\n"), "xn--b-bga.example")
        self.assertIsNone(author_domain(b"To: a@example.com\r\n"))
        self.assertIsNone(author_domain(b"From: a@example.com\r\nFrom: b@example.com\r\n"))
        self.assertIsNone(author_domain(b"From: a@example.com, b@example.org\r\n"))
        self.assertIsNone(author_domain(b"From: undisclosed:;\r\n"))
        self.assertIsNone(author_domain(b"From: " + b"a" * 5000 + b"@example.com\r\n"))


@requires(tool("opendkim"))
class OpenDKIMVerifies(SynchronousTestCase):
    """Debian's OpenDKIM (2.11), an independent implementation, verifies mailhub's signatures,
    RSA and Ed25519 (RFC 8463) alike, and fails a changed message."""

    def test_opendkim_verifies_rsa_and_ed25519(self) -> None:
        opendkim = shutil.which("opendkim")
        assert opendkim is not None
        work = Path(self.mktemp())
        keys = make_keys(work / "keys", "example.com")
        published = records(keys)
        signed = sign(MESSAGE, [k.key for k in keys]) + MESSAGE
        said = opendkim_verify(opendkim, signed, published, work / "good")
        self.assertIn("dkim=pass (2048-bit key) header.d=example.com", said)
        self.assertIn("header.a=rsa-sha256 header.s=r1", said)
        self.assertRegex(said, r"dkim=pass [^;]*header.a=ed25519-sha256 header.s=e1")
        changed = signed.replace(b"there.", b"THERE.")
        said = opendkim_verify(opendkim, changed, published, work / "changed")
        self.assertNotIn("dkim=pass", said)
        self.assertIn("dkim=fail", said)


def envelope(authenticated: str | None = "alice@example.com") -> Envelope:
    return Envelope(
        queue_id="Q1",
        mail_from="alice@example.com",
        recipients=[Recipient("bob@example.org", "bob@example.org")],
        authenticated_as=authenticated,
    )


class Sink(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.keys = make_keys(self.dir / "dkim", "example.com")
        self.published = records(self.keys)
        self.clock = task.Clock()
        self.store = KeyStore(self.dir / "dkim", self.clock)
        self.inner = MemorySink()
        self.ran: list[object] = []

    def worker(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        self.ran.append(f)
        return inline(f, *args)

    def sink(self, **kwargs: Any) -> SigningSink:
        kwargs.setdefault("run", self.worker)
        # A spooled message is copied on one chunk per turn of this clock.
        turns = task.Cooperator(
            terminationPredicateFactory=lambda: lambda: True,  # one step per turn
            scheduler=lambda f: self.clock.callLater(0.001, f),  # a turn: advance(0.001)
        )
        kwargs.setdefault("cooperate", turns.cooperate)
        return SigningSink(self.inner, self.store, spool_dir=self.dir, **kwargs)

    def send(self, sink: SigningSink, message: bytes, env: Envelope | None = None) -> bytes:
        incoming = sink.open(env or envelope())
        for i in range(0, len(message), 1000):
            incoming.write(message[i : i + 1000])
        done = incoming.commit()
        fired: list[object] = []
        done.addBoth(lambda result: fired.append(result) or result)
        self.turns = 0
        while not fired and self.turns < 1000:
            self.clock.advance(0.001)
            self.turns += 1
        self.assertEqual(self.successResultOf(done), "Q1")
        [stored] = self.inner.messages
        self.assertEqual(stored.state, "committed")
        return stored.data

    def test_interface_and_signed_in_worker(self) -> None:
        sink = self.sink()
        verifyObject(IMessageSink, sink)
        out = self.send(sink, MESSAGE)
        self.assertTrue(out.endswith(MESSAGE))
        self.assertTrue(out.startswith(b"DKIM-Signature: "))
        self.assertEqual(verify_each(out, self.published), [("e1", True), ("r1", True)])
        self.assertEqual(len(self.ran), 1)  # dkimpy ran through ``run`` (a thread in service)

    def test_spooled_message_is_signed_and_copied_exactly(self) -> None:
        body = b"".join(b"line %d of a long message\r\n" % i for i in range(40000))
        message = MESSAGE + body
        sink = self.sink(memory_limit=64 * 1024)
        out = self.send(sink, message)
        self.assertEqual(out[-len(message) :], message)
        self.assertEqual(verify_each(out, self.published), [("e1", True), ("r1", True)])
        self.assertGreater(self.turns, 2)  # ~1.2 MB in 256 KiB chunks, one per turn

    def test_too_big_goes_unsigned(self) -> None:
        message = MESSAGE + b"x" * 5000 + b"\r\n"
        out = self.send(self.sink(max_size=4096, memory_limit=1024), message)
        self.assertEqual(out, message)
        self.assertEqual(self.ran, [])

    def test_unauthenticated_no_key_no_from_pass_through(self) -> None:
        sink = self.sink()
        self.assertEqual(self.send(sink, MESSAGE, envelope(authenticated=None)), MESSAGE)
        self.inner.messages.clear()
        other = MESSAGE.replace(b"alice@example.com", b"alice@example.net")
        self.assertEqual(self.send(sink, other), other)
        self.inner.messages.clear()
        no_from = MESSAGE.replace(b"From:", b"X-From:")
        self.assertEqual(self.send(sink, no_from), no_from)
        self.assertEqual(self.ran, [])

    def test_retired_key_stops_signing(self) -> None:
        retire(self.dir / "dkim", "example.com", "r1")
        self.clock.advance(10)
        out = self.send(self.sink(), MESSAGE)
        self.assertEqual([t[b"s"] for t in signature_fields(out)], [b"e1"])

    def test_signing_failure_sends_unsigned_and_logs(self) -> None:
        def broken(f: Any, *args: Any) -> defer.Deferred[Any]:
            return defer.fail(RuntimeError("dkimpy exploded"))

        out = self.send(self.sink(run=broken), MESSAGE)
        self.assertEqual(out, MESSAGE)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_message_dkimpy_cannot_read_goes_unsigned_without_a_traceback(self) -> None:
        odd = b" continued\r\n" + MESSAGE  # a continuation line before any field
        self.assertEqual(self.send(self.sink(), odd), odd)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_abort_and_refused_write_leave_nothing(self) -> None:
        sink = self.sink(memory_limit=10)
        incoming = sink.open(envelope())
        incoming.write(MESSAGE)
        incoming.abort()
        self.assertEqual(self.inner.messages[0].state, "aborted")
        self.inner = MemorySink(fail_writes=True)
        incoming = self.sink().open(envelope())
        incoming.write(MESSAGE)
        self.failureResultOf(incoming.commit(), DeliveryError)
        self.assertEqual(self.inner.messages[0].state, "aborted")


class Published(SynchronousTestCase):
    def test_compare(self) -> None:
        rsa_key, ed_key = make_keys(Path(self.mktemp()), "example.com")
        record = rsa_key.record.encode()
        self.assertEqual(compare(rsa_key, (record,)).status, OK)
        # FWS inside p= (a record split oddly) is removed (RFC 6376 3.6.1).
        spaced = record[:60] + b" \t " + record[60:]
        self.assertEqual(compare(rsa_key, (spaced,)).status, OK)
        self.assertEqual(compare(rsa_key, ()).status, MISSING)
        self.assertEqual(compare(rsa_key, (ed_key.record.encode(),)).status, MISMATCH)
        self.assertEqual(compare(ed_key, (ed_key.record.encode(),)).status, OK)
        self.assertEqual(compare(rsa_key, (b"v=DKIM1; k=rsa; p=",)).status, MISMATCH)
        self.assertEqual(compare(rsa_key, (b"v=spf1 -all",)).status, MISMATCH)
        self.assertEqual(compare(rsa_key, (record, record)).status, MISMATCH)


class SignedBounces(QueueTestBase):
    """Bounces are signed through the queue's ``sign_notice`` (as service.py wires it: the
    hostname's domain, or a parent's, signs MAILER-DAEMON@hostname's notices)."""

    def test_bounce_is_signed(self) -> None:
        keys = make_keys(Path(self.mktemp()).absolute(), "src.test")
        signer = Signer(KeyStore(keys[0].path.parent.parent, self.clock), run=inline)
        self.make_queue(sign_notice=lambda m: signer.sign_bytes(m, "mx.src.test"))
        self.remote.set("bad@x.test", "permanent")
        self.enqueue("bad@x.test")
        self.clock.advance(0)  # the attempt fails: the bounce is signed and queued
        self.clock.advance(0)  # the bounce goes to the local courier
        [body] = [
            b for c, b in zip(self.local.calls, self.local.bodies, strict=True) if not c.mail_from
        ]
        self.assertTrue(body.startswith(b"DKIM-Signature: "))
        self.assertEqual(verify_each(body, records(keys)), [("e1", True), ("r1", True)])
        [bounce] = self.bounces()
        self.assertEqual(bounce.get_content_type(), "multipart/report")


class Settings(SynchronousTestCase):
    """[dkim] in the config file, and the bounce signer service.py builds from it."""

    def load(self, text: str) -> Config:
        path = Path(self.mktemp())
        path.write_text(
            f'[domains]\nlocal = ["example.com"]\n[server]\ndata_dir = "/srv/m"\n{text}'
        )
        return load(path)

    def test_defaults_and_values(self) -> None:
        config = self.load("")
        self.assertEqual(config.dkim_key_dir, Path("/srv/m/dkim"))
        self.assertEqual(config.dkim.max_sign_size, 25 * 1024 * 1024)
        self.assertIsNone(config.dkim.bounce_domain)
        config = self.load(
            '[dkim]\nkey_dir = "/etc/mailhub/dkim"\nmax_sign_size = "10M"\n'
            'bounce_domain = "Example.COM"\n'
        )
        self.assertEqual(config.dkim_key_dir, Path("/etc/mailhub/dkim"))
        self.assertEqual(config.dkim.max_sign_size, 10 * 1024 * 1024)
        self.assertEqual(config.dkim.bounce_domain, "example.com")
        for bad in ('bounce_domain = "a..b"', "max_sign_size = 0", "keydir = 1"):
            with self.assertRaises(ConfigError, msg=bad) as caught:
                self.load(f"[dkim]\n{bad}\n")
            self.assertIn("[dkim]", str(caught.exception))

    def test_notice_signer_uses_bounce_domain_or_the_hostnames(self) -> None:
        from mailhub.service import _notice_signer

        key_dir = Path(self.mktemp()).absolute()
        make_keys(key_dir, "example.com", [ED25519_SHA256])
        make_keys(key_dir, "example.net", [RSA_SHA256])
        config = dev_config(Path(self.mktemp()), hostname="mail.example.com")
        config = dataclasses.replace(config, dkim=DKIMConfig(key_dir=key_dir))
        dsn = b"From: MAILER-DAEMON@mail.example.com\r\nSubject: x\r\n\r\nbody\r\n"

        def domains(config: Config) -> list[bytes]:
            store = KeyStore(key_dir, task.Clock())
            fields = self.successResultOf(_notice_signer(config, store, run=inline)(dsn))
            return [t[b"d"] for t in signature_fields(fields + dsn)]

        self.assertEqual(domains(config), [b"example.com"])
        bounce = dataclasses.replace(
            config, dkim=DKIMConfig(key_dir=key_dir, bounce_domain="example.net")
        )
        self.assertEqual(domains(bounce), [b"example.net"])


# RFC 8463 Appendix A (A.2 keys, A.3 signed message), by J. Levine, (c) IETF Trust, code
# components under the Simplified BSD License: an outside vector for the Ed25519 key format.
RFC8463_SEED = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="
RFC8463_RECORD = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
RFC8463_MESSAGE = (
    b"From: Joe SixPack <joe@football.example.com>\r\n"
    b"To: Suzie Q <suzie@shopping.example.net>\r\n"
    b"Subject: Is dinner ready?\r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    b"Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
    b"\r\n"
    b"Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n\r\n"
)
RFC8463_BH = b"2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8="
RFC8463_B = (
    b"/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11BusFa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw=="
)


class RFC8463Vector(SynchronousTestCase):
    """The RFC's Ed25519 key, kept as a mailhub key file, gives the RFC's record and, Ed25519
    being deterministic, the RFC's signature byte for byte."""

    def setUp(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        seed = base64.b64decode(RFC8463_SEED)
        pem = ed25519.Ed25519PrivateKey.from_private_bytes(seed).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.info = write_key(Path(self.mktemp()), "football.example.com", "brisbane", pem)

    def test_record_and_signature_are_the_rfcs(self) -> None:
        import dkim

        self.assertEqual(self.info.record, RFC8463_RECORD)
        key = self.info.key
        h = [b"from", b"to", b"subject", b"date", b"message-id", b"from", b"subject", b"date"]
        with patch("dkim.time.time", return_value=1528637909):  # the RFC's t=
            field = dkim.DKIM(RFC8463_MESSAGE).sign(
                key.selector.encode(),
                key.domain.encode(),
                key.private_key,
                signature_algorithm=b"ed25519-sha256",
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=h,
            )
        [tags] = signature_fields(field + RFC8463_MESSAGE)
        self.assertEqual((tags[b"bh"], tags[b"b"]), (RFC8463_BH, RFC8463_B))

    def test_mailhubs_own_signature_verifies_with_the_rfcs_record(self) -> None:
        signed = sign(RFC8463_MESSAGE, [self.info.key]) + RFC8463_MESSAGE
        published = {"brisbane._domainkey.football.example.com": RFC8463_RECORD}
        self.assertEqual(verify_each(signed, published), [("brisbane", True)])
