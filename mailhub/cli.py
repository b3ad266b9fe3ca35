"""The ``mailhub`` admin command: check a config, look at and create mailboxes.

Works beside a running server: it only touches the Maildir tree the way a delivering or reading
process does (new mailboxes are created with the same durable steps as on first delivery).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mailhub import __version__
from mailhub.config import Config, ConfigError, dev_config, load
from mailhub.store.errors import StoreError

if TYPE_CHECKING:
    from mailhub.store.store import MailStore
    from mailhub.users import UserDB


def _config(args: argparse.Namespace) -> Config:
    if args.config:
        return load(args.config, data_dir=args.data)
    return dev_config(args.data)


def _store(config: Config) -> MailStore:  # imported late so check-config stays light
    from mailhub.store.store import MailStore

    return MailStore(config.mail_dir, hostname=config.hostname)


def _canonical(address: str) -> str:
    from mailhub.config import normalise_domain

    local, sep, domain = address.strip().rpartition("@")
    if not sep or not local:
        raise SystemExit(f"mailhub: {address!r} is not an address like alice@example.com")
    try:
        return f"{local.lower()}@{normalise_domain(domain)}"
    except ValueError as e:
        raise SystemExit(f"mailhub: {e}") from None


def check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    from mailhub.faults.rules import rules_from_config

    rules_from_config(config)  # a bad [[faults.rule]] is a ConfigError, as at start-up
    print(f"{config.source}: ok")
    print(f"  hostname   {config.hostname}")
    print(f"  mail in    {config.mail_dir}")
    domains = "any (catch-all)" if config.domains.accept_any else ", ".join(config.domains.local)
    print(f"  domains    {domains}")
    if config.domains.catch_all:
        print(f"  catch-all  {', '.join(config.domains.catch_all)}")
    for name in config.listeners.__dataclass_fields__:
        endpoints = getattr(config.listeners, name)
        if endpoints:
            print(f"  {name:<10} {', '.join(endpoints)}")
    if config.tls.pairs:
        from mailhub.tls import ServerTLS, TLSFileError, as_config_error

        try:
            tls = ServerTLS(config.tls.pairs)
        except TLSFileError as e:
            raise as_config_error(e, config.source) from None
        for info in tls.certificates:
            names = ", ".join(info.dns_names)
            print(f"  tls        {info.path}: {names} until {info.not_after:%Y-%m-%d}")
    return 0


def mailbox_list(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    addresses = store.mailboxes()
    if not addresses:
        print("no mailboxes")
    for address in addresses:
        inbox = store.mailbox(address).folder("INBOX")
        print(f"{address}\t{inbox.count()} messages\t{inbox.total_size()} bytes")
    return 0


def mailbox_add(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    address = _canonical(args.address)
    existed = store.has_mailbox(address)
    store.mailbox(address, create=True)
    print(f"{address}: {'exists already' if existed else 'created'}")
    return 0


def mailbox_show(args: argparse.Namespace) -> int:
    from mailhub.store.errors import MailboxNotFound

    store = _store(_config(args))
    address = _canonical(args.address)
    try:
        mailbox = store.mailbox(address)
    except MailboxNotFound:
        print(f"mailhub: no mailbox {address}", file=sys.stderr)
        return 1
    for name in mailbox.list_folders():
        folder = mailbox.folder(name)
        print(f"{name}\t{folder.count()} messages\t{folder.total_size()} bytes")
    return 0


def _users_db(args: argparse.Namespace) -> UserDB:  # imported late (argon2) like _store
    from mailhub.users import UserDB

    path = args.users or _config(args).users_file
    if path is None:
        raise SystemExit(
            'mailhub: no users file: give --users FILE, or set users = "/etc/mailhub/users" '
            "under [files] in the config"
        )
    return UserDB(path)


def _read_password() -> str:
    """Without echo from a terminal (asked twice), else the first line of stdin (scripts:
    ``printf '%s\\n' "$pw" | mailhub user add ...``). Never from argv: ps would show it."""
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != password:
            raise SystemExit("mailhub: the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise SystemExit("mailhub: empty password")
    return password


def _user_edit(args: argparse.Namespace, done: str) -> int:
    from mailhub.users import FileFormatError, UsersError

    try:
        db = _users_db(args)
        if args.action == "del":
            address = db.delete(args.address)
        else:
            password = _read_password()
            edit = db.add if args.action == "add" else db.set_password
            address = edit(args.address, password)
    except (UsersError, FileFormatError) as e:
        print(f"mailhub: {e}", file=sys.stderr)
        return 1
    print(f"{address}: {done} in {db.path}")
    return 0


def user_add(args: argparse.Namespace) -> int:
    return _user_edit(args, "added")


def user_passwd(args: argparse.Namespace) -> int:
    return _user_edit(args, "password changed")


def user_del(args: argparse.Namespace) -> int:
    return _user_edit(args, "deleted (the mailbox is kept)")


def user_list(args: argparse.Namespace) -> int:
    from mailhub.users import FileFormatError

    try:
        db = _users_db(args)
    except FileFormatError as e:
        print(f"mailhub: {e}", file=sys.stderr)
        return 1
    entries = db.entries()
    if not entries:
        print("no users")
    for entry in entries:
        print(f"{entry.address}\t{entry.scheme or '-'}\t{entry.locked or 'ok'}")
    return 0


def cert(args: argparse.Namespace) -> int:
    """Show the TLS certificate(s) in use: the configured ones, or the dev stack's (made now if it
    does not exist yet, as the first start would). --new replaces the dev certificate."""
    from mailhub.tls import (
        TLSFileError,
        as_config_error,
        describe_certificate,
        ensure_dev_certificate,
        new_dev_certificate,
    )

    config = _config(args)
    pairs = config.tls.pairs
    if args.new:
        if pairs:
            print(
                f"mailhub: {config.source} names its own certificate ([tls] certificate); "
                "--new only makes the dev stack's self-signed one",
                file=sys.stderr,
            )
            return 1
        dev = new_dev_certificate(config.data_dir)
        print("made a new dev certificate; a running mailhub uses it after `kill -HUP <pid>`")
        pairs = ((dev.certificate_path, dev.key_path),)
    elif not pairs:
        if not config.dev:
            print(f"{config.source}: no [tls] certificate: TLS is off")
            return 0
        dev = ensure_dev_certificate(config.data_dir)
        pairs = ((dev.certificate_path, dev.key_path),)
    try:
        for n, (certificate, key) in enumerate(pairs):
            if n:
                print()
            for line in describe_certificate(certificate).describe():
                print(line)
            print(f"key          {key}")
    except TLSFileError as e:
        raise as_config_error(e, config.source) from None
    return 0


def _queue_dir(args: argparse.Namespace) -> Path:
    return _config(args).data_dir / "queue"


def queue_list(args: argparse.Namespace) -> int:
    import time

    from mailhub.queue import admin

    messages = admin.list_messages(_queue_dir(args))
    if not messages:
        print("queue is empty")
    now = time.time()
    for m in messages:
        print(f"{m.id}\t{admin.age(now - m.created)}\t{m.size} bytes\t<{m.sender}>")
        for r in m.recipients:
            state = r.status
            if r.status == "pending" and r.next_attempt is not None:
                wait = r.next_attempt - now
                state += f", next {'now' if wait <= 0 else 'in ' + admin.age(wait)}"
            diag = f"\t{r.diagnostic}" if r.diagnostic else ""
            print(f"\t<{r.address}>\t{state}, {r.attempts} attempt(s){diag}")
    return 0


def queue_show(args: argparse.Namespace) -> int:
    import time

    from mailhub.queue import admin

    try:
        info = admin.show(_queue_dir(args), args.id)
    except admin.NoSuchMessage:
        print(f"mailhub: no queued message {args.id}", file=sys.stderr)
        return 1
    for line in admin.describe(info, time.time()):
        print(line)
    return 0


def queue_change(args: argparse.Namespace) -> int:
    from mailhub.queue import admin

    try:
        print(admin.request(_queue_dir(args), args.action, args.id))
    except admin.NoSuchMessage:
        print(f"mailhub: no queued message {args.id}", file=sys.stderr)
        return 1
    return 0


def version(args: argparse.Namespace) -> int:
    print(f"mailhub {__version__}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mailhub", description="mailhub administration")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", help="TOML config file (default: dev stack defaults)")
    common.add_argument("--data", "-d", help="data directory (overrides the config's data_dir)")
    sub = top.add_subparsers(dest="command", required=True)

    sub.add_parser("check-config", parents=[common], help="validate a config file").set_defaults(
        run=check_config
    )
    sub.add_parser("version", help="print the version").set_defaults(run=version)
    cert_p = sub.add_parser(
        "cert", parents=[common], help="show the TLS certificate (path, SHA-256, names, expiry)"
    )
    cert_p.add_argument(
        "--new", action="store_true", help="replace the dev stack's self-signed certificate"
    )
    cert_p.set_defaults(run=cert)

    mailbox = sub.add_parser("mailbox", help="list, create and show mailboxes")
    mailbox_sub = mailbox.add_subparsers(dest="action", required=True)
    mailbox_sub.add_parser("list", parents=[common], help="mailboxes with counts").set_defaults(
        run=mailbox_list
    )
    add = mailbox_sub.add_parser("add", parents=[common], help="create a mailbox")
    add.add_argument("address")
    add.set_defaults(run=mailbox_add)
    show = mailbox_sub.add_parser("show", parents=[common], help="folders of a mailbox")
    show.add_argument("address")
    show.set_defaults(run=mailbox_show)

    users_opt = argparse.ArgumentParser(add_help=False)
    users_opt.add_argument("--users", "-u", help="users file (default: [files] users)")
    user = sub.add_parser("user", help="add, change, delete and list users (passwords)")
    user_sub = user.add_subparsers(dest="action", required=True)
    for action, run, text in (
        ("add", user_add, "add a user; the password is read without echo, or from stdin"),
        ("passwd", user_passwd, "change a user's password (read like for add)"),
        ("del", user_del, "delete a user (the mailbox stays)"),
    ):
        command = user_sub.add_parser(action, parents=[common, users_opt], help=text)
        command.add_argument("address")
        command.set_defaults(run=run)
    user_sub.add_parser(
        "list", parents=[common, users_opt], help="users and hash schemes"
    ).set_defaults(run=user_list)
    queue = sub.add_parser("queue", help="list, show, retry and delete queued outgoing mail")
    queue_sub = queue.add_subparsers(dest="action", required=True)
    queue_sub.add_parser(
        "list", parents=[common], help="queued messages with their recipients' state"
    ).set_defaults(run=queue_list)
    q_show = queue_sub.add_parser("show", parents=[common], help="one queued message")
    q_show.add_argument("id")
    q_show.set_defaults(run=queue_show)
    q_retry = queue_sub.add_parser(
        "retry", parents=[common], help="try a message (or, without ID, all) now"
    )
    q_retry.add_argument("id", nargs="?")
    q_retry.set_defaults(run=queue_change)
    q_delete = queue_sub.add_parser(
        "delete", parents=[common], help="remove a message without delivering or bouncing it"
    )
    q_delete.add_argument("id")
    q_delete.set_defaults(run=queue_change)
    return top


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        status = args.run(args)
    except ConfigError as e:
        print(f"mailhub: configuration error in {e}", file=sys.stderr)
        status = 1
    except OSError as e:
        print(f"mailhub: {e}", file=sys.stderr)
        status = 1
    except StoreError as e:
        print(f"mailhub: {e}", file=sys.stderr)
        status = 1
    sys.exit(status)


if __name__ == "__main__":
    main()
