"""``mailhub export`` / ``mailhub import`` (mailhub.transfer): round trips with flags through
.eml and mbox, Python's mailbox module reading our mbox, odd input, a 50 MB message, both
commands beside a running server, and ``mailhub.testing``'s preload."""

from __future__ import annotations

import hashlib
import mailbox
import subprocess
import sys
from pathlib import Path

from twisted.internet import threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailhub.store import MailStore
from mailhub.testing import MailhubTestServer
from mailhub.transfer import TransferError, export, import_path
from tests.support.twistd import environment

FROM_BODY = (
    b"Subject: quoting\r\nTo: bob@x.test\r\n\r\nFrom the start of a line\r\n"
    b">From one level quoted\r\n\r\nFrom after a blank line\r\n\r\n\r\ntwo blank lines\r\n"
)


def fill(store: MailStore) -> None:
    alice = store.mailbox("alice@x.test", create=True)
    inbox = alice.folder()
    inbox.append(b"Subject: seen\r\nTo: alice@x.test\r\n\r\nhello\r\n", ["S"], 1_700_000_000)
    inbox.append(b"Subject: flagged\r\n\r\nx\r\n", ["F", "R", "S"], 1_700_000_100)
    uid = inbox.append(b"Subject: new\r\n\r\ny\r\n", [], 1_700_000_200)
    inbox.store_flags([uid], "add", keywords=["$Forwarded", "Junk"])
    alice.create_folder("Archive.2024")
    alice.folder("Archive.2024").append(
        b"Subject: old\r\n\r\nz\r\n", ["S", "T", "D"], 1_600_000_000
    )
    store.mailbox("bob@x.test", create=True).folder().append(FROM_BODY, ["P"], 1_700_000_300)


def snapshot(store: MailStore) -> set[tuple[object, ...]]:
    out = set()
    for address in store.mailboxes():
        box = store.mailbox(address)
        for name in box.list_folders():
            f = box.folder(name)
            for m in f.sync().messages:
                raw = f.read_message(m.uid)
                out.add((address, name, raw, m.flags, m.keywords, m.internaldate))
    return out


class RoundTrip(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = MailStore(Path(self.mktemp()) / "mail", hostname="a.test")
        fill(self.store)
        self.before = snapshot(self.store)

    def fresh(self) -> MailStore:
        return MailStore(Path(self.mktemp()) / "mail", hostname="b.test")

    def test_the_fixture_has_flags_and_keywords(self) -> None:
        self.assertEqual(len(self.before), 5)
        self.assertIn(frozenset({"$Forwarded", "Junk"}), {row[4] for row in self.before})

    def round_trip(self, fmt: str) -> None:
        dest = Path(self.mktemp())
        counts = export(self.store, dest, fmt=fmt)
        self.assertEqual(counts.messages, 5)
        other = self.fresh()
        self.assertEqual(import_path(other, dest).messages, 5)
        self.assertEqual(snapshot(other), self.before)

    def test_eml(self) -> None:
        self.round_trip("eml")

    def test_mbox(self) -> None:
        self.round_trip("mbox")

    def test_one_folder_into_another_mailbox(self) -> None:
        dest = Path(self.mktemp())
        export(self.store, dest, mailbox="alice@x.test", folder="INBOX", fmt="mbox")
        other = self.fresh()
        import_path(other, dest, mailbox="carol@x.test", folder="Imported")
        got = {(r[2], r[3], r[4]) for r in snapshot(other)}
        want = {(r[2], r[3], r[4]) for r in self.before if r[:2] == ("alice@x.test", "INBOX")}
        self.assertEqual(got, want)

    def test_python_mailbox_reads_our_mbox(self) -> None:
        path = Path(self.mktemp())
        export(self.store, path, mailbox="alice@x.test", folder="INBOX", fmt="mbox")
        box = mailbox.mbox(str(path), create=False)
        messages = sorted(box, key=lambda m: str(m["Subject"]))
        self.assertEqual([str(m["Subject"]) for m in messages], ["flagged", "new", "seen"])
        # Python's mbox flags are mutt's Status/X-Status letters.
        self.assertEqual(
            [set(m.get_flags()) for m in messages], [{"R", "O", "F", "A"}, {"O"}, {"R", "O"}]
        )
        self.assertEqual(messages[1]["X-Mailhub-Flags"], "- $Forwarded Junk")
        self.assertEqual(messages[2].get_from().split()[0], "MAILER-DAEMON")

    def test_from_lines_in_bodies_are_quoted_mboxrd(self) -> None:
        path = Path(self.mktemp())
        export(self.store, path, mailbox="bob@x.test", folder="INBOX", fmt="mbox")
        text = path.read_bytes()
        self.assertIn(b"\n>From the start of a line\n", text)
        self.assertIn(b"\n>>From one level quoted\n", text)
        self.assertIn(b"\n\n>From after a blank line\n", text)
        self.assertEqual(text.count(b"\nFrom ") + text.startswith(b"From "), 1)
        box = mailbox.mbox(str(path), create=False)
        self.assertEqual(len(box), 1)


class OddInput(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = MailStore(Path(self.mktemp()) / "mail", hostname="a.test")
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def test_an_empty_mbox_imports_nothing(self) -> None:
        (self.dir / "empty.mbox").write_bytes(b"")
        self.assertEqual(
            import_path(self.store, self.dir / "empty.mbox", mailbox="a@x.test").messages, 0
        )

    def test_binary_junk_is_not_an_mbox(self) -> None:
        (self.dir / "junk").write_bytes(bytes(range(256)) * 10)
        e = self.assertRaises(
            TransferError, import_path, self.store, self.dir / "junk", mailbox="a@x.test"
        )
        self.assertIn("not an mbox", str(e))
        self.assertEqual(self.store.mailboxes(), [])

    def test_odd_eml_files(self) -> None:
        (self.dir / "empty.eml").write_bytes(b"")
        (self.dir / "nobody.eml").write_bytes(b"Subject: no To\n\nx\n")
        (self.dir / "junk.eml").write_bytes(b"To: j@x.test\n\n" + bytes(range(1, 256)))
        (self.dir / "lf.eml").write_bytes(b"To: A <l@x.test>, m@x.test\nSubject: lf\n\nbody\n")
        counts = import_path(self.store, self.dir)
        self.assertEqual(counts.messages, 3)
        self.assertEqual(
            sorted(s.split(":")[0].rsplit("/", 1)[1] for s in counts.skipped),
            ["empty.eml", "nobody.eml"],
        )
        self.assertEqual(sorted(self.store.mailboxes()), ["j@x.test", "l@x.test", "m@x.test"])
        f = self.store.mailbox("l@x.test").folder()
        self.assertEqual(
            f.read_message(f.sync().messages[0].uid),
            b"To: A <l@x.test>, m@x.test\r\nSubject: lf\r\n\r\nbody\r\n",
        )

    def test_mbox_without_a_mailbox(self) -> None:
        (self.dir / "m.mbox").write_bytes(b"From x Mon Jan  1 00:00:00 2024\nSubject: s\n\nb\n")
        self.assertRaises(TransferError, import_path, self.store, self.dir / "m.mbox")

    def test_a_50_mb_message(self) -> None:
        line = b"0123456789" * 9 + b"\r\n"
        body = line * (50 * 1024 * 1024 // len(line))
        raw = b"Subject: big\r\n\r\n" + body
        f = self.store.mailbox("big@x.test", create=True).folder()
        f.append(raw, ["S"])
        digest = hashlib.sha256(raw).hexdigest()
        for fmt in ("eml", "mbox"):
            dest = Path(self.mktemp())
            export(self.store, dest, fmt=fmt)
            other = MailStore(Path(self.mktemp()) / "mail", hostname="b.test")
            import_path(other, dest)
            g = other.mailbox("big@x.test").folder()
            [m] = g.sync().messages
            self.assertEqual(
                (hashlib.sha256(g.read_message(m.uid)).hexdigest(), m.flags),
                (digest, frozenset("S")),
                fmt,
            )


def mailhub_command(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", "from mailhub.cli import main; main()", *args]
    return subprocess.run(argv, env=environment(), capture_output=True, text=True, timeout=120)


class BesideARunningServer(TestCase):
    timeout = 120

    async def test_import_and_export_while_the_server_runs(self) -> None:
        hub = await MailhubTestServer.started(self, services=["smtp"])
        data = str(hub.config.data_dir)
        src = Path(self.mktemp())
        src.mkdir()
        (src / "a.eml").write_bytes(b"To: fixture@x.test\nSubject: imported live\n\nx\n")
        done = await threads.deferToThread(mailhub_command, "import", "--data", data, str(src))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("imported 1 message(s)", done.stdout)
        m = await hub.wait_for_message(to="fixture@x.test", timeout=30)  # the server saw it
        self.assertEqual(m.subject, "imported live")
        await hub.send("live@x.test", subject="sent")
        dest = Path(self.mktemp())
        done = await threads.deferToThread(
            mailhub_command, "export", "--data", data, str(dest), "--format", "mbox"
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        subjects = sorted(
            str(m["Subject"]) for p in dest.glob("*/*.mbox") for m in mailbox.mbox(str(p))
        )
        self.assertEqual(subjects, ["imported live", "sent"])

    async def test_bad_input_is_a_clean_error(self) -> None:
        junk = Path(self.mktemp())
        junk.write_bytes(b"\x00\x01 junk")
        done = await threads.deferToThread(
            mailhub_command, "import", "--data", self.mktemp(), "-m", "a@x.test", str(junk)
        )
        self.assertEqual(done.returncode, 1)
        self.assertIn("not an mbox file", done.stderr)
        self.assertNotIn("Traceback", done.stderr)


class Preload(TestCase):
    async def test_testing_preloads_eml_fixtures(self) -> None:
        fixtures = Path(self.mktemp())
        fixtures.mkdir()
        (fixtures / "welcome.eml").write_bytes(b"To: new@x.test\nSubject: Welcome\n\nhi\n")
        hub = await MailhubTestServer.started(self, services=["smtp"], preload=fixtures)
        [m] = hub.messages("new@x.test")
        self.assertEqual(m.subject, "Welcome")
