"""The users file: parsing, hashing and verifying, reload on change, atomic edits, no leaks."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import argon2
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

import mailhub.users
from mailhub.users import (
    FileFormatError,
    UnknownUser,
    UserDB,
    UserExists,
    UsersError,
    UsersFileError,
    canonical_address,
    parse_users,
)

# Cheap parameters so the tests do not load the machine; the format is the same.
FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
STRONGER = argon2.PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
PASSWORD = "correct horse battery staple"


def argon2_line(address: str, password: str = PASSWORD, hasher=FAST) -> str:
    return f"{address}:{{ARGON2ID}}{hasher.hash(password)}\n"


class CountingHasher(argon2.PasswordHasher):
    """Counts verify calls: each one is one slow hash in production."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verified = 0

    def verify(self, hash, password):  # type: ignore[no-untyped-def]
        self.verified += 1
        return super().verify(hash, password)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LogCapture:
    def __init__(self, case: SynchronousTestCase, module=mailhub.users) -> None:
        self.events: list[dict] = []
        case.patch(module, "log", Logger(observer=self.events.append))

    def text(self) -> str:
        return "\n".join(f"{formatEvent(e)} {e!r}" for e in self.events)


class Parsing(SynchronousTestCase):
    def test_comments_blank_lines_and_reserved_fields(self) -> None:
        text = (
            "# users\n\n   # indented comment\n"
            + argon2_line("Alice@Example.COM")
            + "bob@example.com:{ARGON2ID}"
            + FAST.hash("x")
            + ":1000:1000::/home/bob::extra=1\n"
        )
        users = parse_users(text, "users").users
        self.assertEqual(sorted(users), ["alice@example.com", "bob@example.com"])
        self.assertEqual(users["alice@example.com"].line, 4)
        self.assertTrue(users["bob@example.com"].can_log_in)

    def test_idna_domain_is_canonical(self) -> None:
        self.assertEqual(canonical_address("Jörg@Bücher.Example"), "jörg@xn--bcher-kva.example")
        users = parse_users(argon2_line("a@BÜCHER.example"), "users").users
        self.assertEqual(list(users), ["a@xn--bcher-kva.example"])

    def assertLineError(self, text: str, line: int, *words: str) -> UsersFileError:
        e = self.assertRaises(UsersFileError, parse_users, text, "/etc/mailhub/users")
        self.assertEqual((e.source, e.line), ("/etc/mailhub/users", line))
        self.assertTrue(str(e).startswith(f"/etc/mailhub/users, line {line}: "), str(e))
        for word in words:
            self.assertIn(word, str(e))
        return e

    def test_errors_name_file_and_line(self) -> None:
        self.assertLineError("# x\nno colon here\n", 2, "address:{SCHEME}hash")
        self.assertLineError("\nnot-an-address:{ARGON2ID}x\n", 2, "not an address")
        self.assertLineError("a@exa mple.com:\n", 1, "spaces")
        self.assertLineError("../x@example.com:\n", 1, "localpart may not")
        self.assertLineError("a+tag@example.com:\n", 1, "'+'")
        self.assertLineError("a@example.com:{ARGON2ID}$argon2id$garbage\n", 1, "not a valid")
        self.assertLineError("a@example.com:{ARGON2ID}" + FAST.hash("x").replace("id", "i", 1), 1)
        self.assertLineError("a@example.com:{BLF-CRYPT}$2y$05$short\n", 1, "bcrypt")

    def test_duplicates_after_folding(self) -> None:
        text = argon2_line("alice@example.com") + "# c\n" + argon2_line("ALICE@example.com")
        self.assertLineError(text, 3, "alice@example.com is already on line 1")

    def test_plaintext_is_refused_without_echoing_it(self) -> None:
        for line in ("a@example.com:hunter2\n", "a@example.com:{PLAIN}hunter2\n"):
            e = self.assertLineError(line, 1, "plaintext" if "{" not in line else "clear")
            self.assertNotIn("hunter2", str(e))
            self.assertNotIn("hunter2", repr(e))

    def test_empty_password_receives_mail_but_cannot_log_in(self) -> None:
        entry = parse_users("shared@example.com:\n").users["shared@example.com"]
        self.assertFalse(entry.can_log_in)

    def test_unsupported_scheme_is_a_locked_account_with_a_warning(self) -> None:
        parsed = parse_users("x@example.com:{SHA512-CRYPT}$6$salt$hash\n", "users")
        self.assertFalse(parsed.users["x@example.com"].can_log_in)
        self.assertEqual(len(parsed.warnings), 1)
        self.assertIn("users, line 1: {SHA512-CRYPT} is not a supported", parsed.warnings[0])

    def test_file_errors(self) -> None:
        path = Path(self.mktemp())
        path.write_bytes(argon2_line("a@example.com").encode() + b"b@example.com:\xff\n")
        e = self.assertRaises(FileFormatError, UserDB, path, hasher=FAST)
        self.assertEqual((e.source, e.line), (str(path), 2))
        path.write_text("oops\n")
        self.assertRaises(UsersFileError, UserDB, path, hasher=FAST)

    def test_missing_file_is_empty(self) -> None:
        db = UserDB(self.mktemp(), hasher=FAST)
        self.assertEqual(db.addresses(), [])
        self.assertFalse(db.check_password("a@example.com", "x"))


class Verifying(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.hasher = CountingHasher()
        self.db = UserDB(self.path, hasher=self.hasher)
        self.db.add("Alice@Example.com", PASSWORD)

    def test_round_trip(self) -> None:
        self.assertIn(
            "alice@example.com:{ARGON2ID}$argon2id$v=19$m=8,t=1,p=1$", self.path.read_text()
        )
        self.assertTrue(self.db.check_password("alice@example.com", PASSWORD))
        self.assertTrue(self.db.check_password(b"ALICE@example.COM", PASSWORD.encode()))
        self.assertEqual(self.db.authenticate("Alice@example.com", PASSWORD), "alice@example.com")

    def test_wrong_password(self) -> None:
        self.assertFalse(self.db.check_password("alice@example.com", PASSWORD + "!"))
        self.assertFalse(self.db.check_password("alice@example.com", ""))

    def test_unknown_and_unusable_names_still_pay_for_a_hash(self) -> None:
        # Same work as a wrong password, so timing does not tell which users exist.
        for name in ("bob@example.com", "no-at-sign", b"\xff@example.com", "a+b@example.com"):
            before = self.hasher.verified
            self.assertFalse(self.db.check_password(name, PASSWORD))
            self.assertEqual(self.hasher.verified, before + 1, name)
        before = self.hasher.verified
        self.assertFalse(self.db.check_password("alice@example.com", "wrong"))
        self.assertEqual(self.hasher.verified, before + 1)

    def test_locked_accounts_pay_for_a_hash_and_fail(self) -> None:
        self.path.write_text("shared@example.com:\nold@example.com:{SSHA}abcd\n")
        self.db.reload()
        for name in ("shared@example.com", "old@example.com"):
            before = self.hasher.verified
            self.assertFalse(self.db.check_password(name, ""))
            self.assertEqual(self.hasher.verified, before + 1)
        self.assertTrue(self.db.exists("shared@example.com"))

    def test_overlong_password(self) -> None:
        self.assertFalse(self.db.check_password("alice@example.com", "x" * 5000))
        self.assertRaises(UsersError, self.db.hash_password, "x" * 5000)
        self.assertRaises(UsersError, self.db.hash_password, "")

    def test_dovecot_argon2id_line(self) -> None:
        # What `doveadm pw -s ARGON2ID` writes (PHC string), with parameters other than ours.
        phc = argon2.PasswordHasher(time_cost=2, memory_cost=16, parallelism=2).hash("s3cret")
        self.path.write_text(f"dove@example.com:{{ARGON2ID}}{phc}\n")
        self.db.reload()
        self.assertTrue(self.db.check_password("dove@example.com", "s3cret"))
        self.assertFalse(self.db.check_password("dove@example.com", "S3cret"))

    def test_blf_crypt(self) -> None:
        try:
            import bcrypt
        except ImportError:
            raise self.skipTest("bcrypt is not installed") from None
        hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
        long_pw = b"p" * 80  # crypt_blowfish uses the first 72 bytes
        long_hash = bcrypt.hashpw(long_pw[:72], bcrypt.gensalt(4)).decode()
        self.path.write_text(
            f"blf@example.com:{{BLF-CRYPT}}{hashed}\nlong@example.com:{{BLF-CRYPT}}{long_hash}\n"
        )
        self.db.reload()
        self.assertTrue(self.db.check_password("blf@example.com", "s3cret"))
        self.assertFalse(self.db.check_password("blf@example.com", "s3cre"))
        self.assertTrue(self.db.check_password("long@example.com", long_pw))

    def test_exists_and_addresses(self) -> None:
        self.assertTrue(self.db.exists("ALICE@example.com"))
        self.assertIn("alice@example.com", self.db)
        self.assertFalse(self.db.exists("bob@example.com"))
        self.assertFalse(self.db.exists("garbage"))
        self.assertEqual(self.db.addresses(), ["alice@example.com"])


class Reloading(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.path.write_text(argon2_line("alice@example.com"))
        self.clock = FakeClock()
        self.db = UserDB(self.path, hasher=FAST, clock=self.clock, interval=1.0)
        self.mtime = self.path.stat().st_mtime_ns

    def rewrite(self, text: str) -> None:
        # Same inode, same size possible: only the forced distinct mtime marks the change.
        with open(self.path, "w") as f:
            f.write(text)
        self.mtime += 1_000_000_000
        os.utime(self.path, ns=(self.mtime, self.mtime))

    def test_change_is_seen_after_the_interval(self) -> None:
        self.rewrite(argon2_line("bobby@example.com"))
        self.clock.now += 0.5
        self.assertEqual(self.db.addresses(), ["alice@example.com"])  # not checked yet
        self.clock.now += 0.6
        self.assertEqual(self.db.addresses(), ["bobby@example.com"])
        self.assertTrue(self.db.check_password("bobby@example.com", PASSWORD))
        self.assertFalse(self.db.check_password("alice@example.com", PASSWORD))

    def test_same_size_in_place_edit_is_seen(self) -> None:
        self.rewrite(argon2_line("alicf@example.com"))
        self.clock.now += 2
        self.assertEqual(self.db.addresses(), ["alicf@example.com"])

    def test_broken_edit_keeps_the_last_good_version(self) -> None:
        logs = LogCapture(self)
        self.rewrite(argon2_line("alice@example.com") + "broken line\n")
        self.clock.now += 2
        self.assertEqual(self.db.addresses(), ["alice@example.com"])
        self.assertTrue(self.db.check_password("alice@example.com", PASSWORD))
        self.assertIn(f"{self.path}, line 2: expected address", logs.text())
        count = len(logs.events)
        self.clock.now += 2
        self.db.addresses()
        self.assertEqual(len(logs.events), count)  # logged once per version of the file
        self.rewrite(argon2_line("carol@example.com"))
        self.clock.now += 2
        self.assertEqual(self.db.addresses(), ["carol@example.com"])

    def test_removed_file_keeps_the_last_version(self) -> None:
        self.path.unlink()
        self.clock.now += 2
        self.assertEqual(self.db.addresses(), ["alice@example.com"])


class Editing(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "users"

    def test_new_file_is_private(self) -> None:
        db = UserDB(self.path, hasher=FAST)
        self.assertEqual(db.add("a@example.com", "pw"), "a@example.com")
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["users"])  # no tmp, no lock

    def test_rewrite_keeps_comments_unknown_fields_and_mode(self) -> None:
        head = "# mailhub users\n\n# alice is the boss\n"
        self.path.write_text(
            head + argon2_line("alice@example.com").rstrip("\n") + ":1000:1000::/home/alice\n"
            "  # trailing comment\n" + argon2_line("bob@example.com")
        )
        os.chmod(self.path, 0o640)
        db = UserDB(self.path, hasher=FAST)
        before = self.path.read_text()
        reader = open(self.path)  # a reader that opened the file before the edits
        self.addCleanup(reader.close)

        db.add("Carol@Example.com", "carol-pw")
        db.set_password("alice@example.com", "new-pw")
        db.delete("bob@example.com")

        text = self.path.read_text()
        lines = text.splitlines()
        self.assertTrue(text.startswith(head))
        self.assertTrue(lines[3].startswith("alice@example.com:{ARGON2ID}$argon2id$"))
        self.assertTrue(lines[3].endswith(":1000:1000::/home/alice"))
        self.assertEqual(lines[4], "  # trailing comment")
        self.assertTrue(lines[5].startswith("carol@example.com:{ARGON2ID}"))
        self.assertEqual(len(lines), 6)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o640)
        # Replaced by rename, not rewritten: the early reader still reads the whole old file.
        self.assertNotEqual(self.path.stat().st_ino, os.fstat(reader.fileno()).st_ino)
        self.assertEqual(reader.read(), before)
        self.assertEqual(db.addresses(), ["alice@example.com", "carol@example.com"])
        self.assertTrue(db.check_password("alice@example.com", "new-pw"))
        self.assertFalse(db.check_password("alice@example.com", PASSWORD))
        self.assertTrue(db.check_password("carol@example.com", "carol-pw"))

    def test_missing_newline_at_end(self) -> None:
        self.path.write_text(argon2_line("a@example.com").rstrip("\n"))
        db = UserDB(self.path, hasher=FAST)
        db.add("b@example.com", "pw")
        self.assertEqual(db.addresses(), ["a@example.com", "b@example.com"])

    def test_edit_errors(self) -> None:
        db = UserDB(self.path, hasher=FAST)
        db.add("a@example.com", "pw")
        self.assertRaises(UserExists, db.add, "A@EXAMPLE.COM", "pw")
        self.assertRaises(UnknownUser, db.set_password, "b@example.com", "pw")
        self.assertRaises(UnknownUser, db.delete, "b@example.com")
        self.assertRaises(UsersError, db.add, "not an address", "pw")
        self.assertRaises(UsersError, db.add, "a+b@example.com", "pw")

    def test_refuses_to_rewrite_a_broken_file(self) -> None:
        self.path.write_text(argon2_line("a@example.com"))
        db = UserDB(self.path, hasher=FAST)
        self.path.write_text(argon2_line("a@example.com") + "junk\n")
        self.assertRaises(UsersFileError, db.add, "b@example.com", "pw")
        self.assertIn("junk", self.path.read_text())

    def test_reader_never_sees_a_partial_file(self) -> None:
        db = UserDB(self.path, hasher=FAST)
        db.add("a@example.com", "pw")
        stop, seen, errors = threading.Event(), set(), []

        def read() -> None:
            while not stop.is_set():
                try:
                    seen.add(len(parse_users(self.path.read_text()).users))
                except Exception as e:  # a torn read would be a parse error or a missing file
                    errors.append(e)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for n in range(15):
                db.add(f"u{n}@example.com", "pw")
        finally:
            stop.set()
            reader.join()
        self.assertEqual(errors, [])
        self.assertTrue(seen <= set(range(1, 17)))


class Rehashing(SynchronousTestCase):
    def test_outdated_argon2_parameters_are_upgraded_on_login(self) -> None:
        path = Path(self.mktemp())
        path.write_text("# keep me\n" + argon2_line("a@example.com", "pw", FAST))
        db = UserDB(path, hasher=STRONGER, rehash=True)
        self.assertTrue(db.check_password("a@example.com", "pw"))
        text = path.read_text()
        self.assertIn("$m=16,t=2,p=1$", text)
        self.assertTrue(text.startswith("# keep me\n"))
        self.assertTrue(db.check_password("a@example.com", "pw"))
        self.assertEqual(path.read_text(), text)  # current now: no more rewrites

    def test_no_rehash_by_default_or_on_failure(self) -> None:
        path = Path(self.mktemp())
        path.write_text(argon2_line("a@example.com", "pw", FAST))
        before = path.read_text()
        UserDB(path, hasher=STRONGER).check_password("a@example.com", "pw")
        UserDB(path, hasher=STRONGER, rehash=True).check_password("a@example.com", "bad")
        self.assertEqual(path.read_text(), before)

    def test_bcrypt_is_upgraded_to_argon2id(self) -> None:
        try:
            import bcrypt
        except ImportError:
            raise self.skipTest("bcrypt is not installed") from None
        path = Path(self.mktemp())
        hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
        path.write_text(f"a@example.com:{{BLF-CRYPT}}{hashed}\n")
        db = UserDB(path, hasher=FAST, rehash=True)
        self.assertTrue(db.check_password("a@example.com", "pw"))
        self.assertIn("a@example.com:{ARGON2ID}$argon2id$", path.read_text())

    def test_failed_rehash_still_logs_in(self) -> None:
        logs = LogCapture(self)
        path = Path(self.mktemp())
        path.write_text(argon2_line("a@example.com", "the-password", FAST))
        db = UserDB(path, hasher=STRONGER, rehash=True)

        def read_only(*args: object, **kwargs: object) -> None:
            raise PermissionError(13, "Permission denied")

        self.patch(mailhub.users, "replace_file", read_only)
        self.assertTrue(db.check_password("a@example.com", "the-password"))
        self.assertIn("could not rehash the password of a@example.com", logs.text())
        self.assertNotIn("the-password", logs.text())


class NoLeaks(SynchronousTestCase):
    def test_reprs_and_logs_never_show_passwords_or_hashes(self) -> None:
        logs = LogCapture(self)
        path = Path(self.mktemp())
        db = UserDB(path, hasher=FAST)
        db.add("a@example.com", "first-secret")
        db.set_password("a@example.com", "second-secret")
        db.check_password("a@example.com", "third-secret")
        db.check_password("nobody@example.com", "fourth-secret")
        hashed = path.read_text().split(":", 1)[1].strip()
        for text in (
            repr(db),
            repr(db.entries()),
            repr(parse_users(path.read_text())),
            logs.text(),
        ):
            for secret in ("first-secret", "second-secret", "third-secret", "fourth-secret"):
                self.assertNotIn(secret, text)
            self.assertNotIn(hashed[12:], text)
        self.assertEqual(repr(db), f"<UserDB {str(path)!r}: 1 users>")
