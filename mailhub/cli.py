"""The ``mailhub`` admin command: check a config, look at and create mailboxes.

Works beside a running server: it only touches the Maildir tree the way a delivering or reading
process does (new mailboxes are created with the same durable steps as on first delivery).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mailhub import __version__
from mailhub.checks.dns import DNSTempError, Lookup
from mailhub.checks.keys import KeyFile, KeyFileError, zone_line
from mailhub.config import Config, ConfigError, dev_config, load
from mailhub.store.errors import StoreError

T = TypeVar("T")

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
    if args.dns:
        return _check_dns(config, args.nameserver, args.ip)
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


# --- DKIM keys (mailhub.checks.keys) ----------------------------------------------------------


def _print_key(info: KeyFile) -> None:
    state = (
        "retired: no longer signs; keep the record a few days, then remove it"
        if (info.retired)
        else "signing"
    )
    print(f"{info.record_name}  ({info.key.algorithm}, {info.bits} bits, {state})")
    print("  zone file line:")
    print(f"    {zone_line(info.record_name, info.record)}")
    print("  TXT value as one string (web DNS editors split it themselves):")
    print(f"    {info.record}")


def dkim_keygen(args: argparse.Namespace) -> int:
    import time

    from mailhub.checks.keys import ED25519_SHA256, RSA_SHA256, generate, write_key

    algorithms = {"rsa": [RSA_SHA256], "ed25519": [ED25519_SHA256]}.get(
        args.algorithm, [RSA_SHA256, ED25519_SHA256]
    )
    if args.selector and len(algorithms) > 1:
        print("mailhub: --selector names one key: give --algorithm rsa or ed25519", file=sys.stderr)
        return 1
    key_dir = _config(args).dkim_key_dir
    month = time.strftime("%Y%m", time.gmtime())
    made = []
    for algorithm in algorithms:
        selector = args.selector or month + ("e" if algorithm == ED25519_SHA256 else "r")
        made.append(write_key(key_dir, args.domain, selector, generate(algorithm, args.bits)))
    print(f"made {len(made)} key(s) in {made[0].path.parent}; publish these TXT records:")
    for info in made:
        print()
        _print_key(info)
    print()
    print("mailhub signs with a new key within seconds: publish its record first, or make it on")
    print("a server that does not send yet. `mailhub check-config --dns` checks what DNS has.")
    return 0


def dkim_show(args: argparse.Namespace) -> int:
    from mailhub.checks.keys import check_domain, read_domain

    domain = check_domain(args.domain)
    found = read_domain(_config(args).dkim_key_dir / domain)
    if not found:
        print(f"mailhub: no DKIM keys for {domain} (make them: mailhub dkim keygen {domain})")
        return 1
    for n, info in enumerate(found):
        if n:
            print()
        _print_key(info)
    return 0


def dkim_retire(args: argparse.Namespace) -> int:
    from mailhub.checks.keys import retire

    info = retire(_config(args).dkim_key_dir, args.domain, args.selector)
    print(f"{info.record_name}: retired; it stops signing within seconds. Keep its TXT record")
    print("until mail signed with it has been delivered and read (a week, say), then remove it.")
    return 0


def dkim_list(args: argparse.Namespace) -> int:
    from mailhub.checks.keys import all_keys

    found = list(all_keys(_config(args).dkim_key_dir))
    if not found:
        print("no DKIM keys")
    for info in found:
        state = "retired" if info.retired else "signing"
        print(f"{info.key.domain}\t{info.key.selector}\t{info.key.algorithm}\t{info.bits}\t{state}")
    return 0


def _smarthost(config: Config) -> str:
    smarthost = config.relay.smarthost
    return f"{smarthost.host}:{smarthost.port}" if smarthost is not None else ""


def dns_records(args: argparse.Namespace) -> int:
    """The records to publish for each domain, as zone-file lines with a comment each."""
    from mailhub.checks.keys import check_domain, read_domain
    from mailhub.checks.records import records_for

    config = _config(args)
    for n, name in enumerate(args.domain):
        domain = check_domain(name)
        records, notes = records_for(
            domain,
            hostname=config.hostname,
            sending_ips=args.ip,
            keys=read_domain(config.dkim_key_dir / domain),
            smarthost=_smarthost(config),
        )
        if n:
            print()
        print(f"; DNS records for {domain} (mailhub {__version__}; [server] hostname")
        print(f"; {config.hostname}). Check them once published: mailhub check-config --dns")
        for record in records:
            print(textwrap.fill(record.why, 99, initial_indent="; ", subsequent_indent=";   "))
            print(record.zone_line())
        for note in notes:
            print(textwrap.fill(note, 99, initial_indent="; note: ", subsequent_indent=";   "))
    if "." not in config.hostname or config.hostname == "localhost":
        print(
            f"mailhub: [server] hostname is {config.hostname!r}: set it to the server's public "
            "name (the MX host) in the config",
            file=sys.stderr,
        )
        return 1
    return 0


def _check_domain_records(config: Config, resolver: Any, sending_ips: Sequence[str]) -> int:
    """MX, SPF, DMARC and PTR of each local domain (online); how many are wrong."""
    from mailhub.checks.records import PROBLEM, TEMPORARY, check_domain

    names = config.domains.local
    if not names:
        print("  dns        no [domains] local: only the DKIM keys are checked")
        return 0
    bad = 0
    for domain in names:
        findings = _finish(
            check_domain(
                resolver,
                domain,
                hostname=config.hostname,
                sending_ips=sending_ips,
                smarthost=_smarthost(config),
            )
        )
        for f in findings:
            bad += f.status in (PROBLEM, TEMPORARY)
            print(f"  {f.what.lower():<10} {domain}: {f.status}: {f.detail}")
    return bad


def _check_dns(config: Config, nameserver: str | None, sending_ips: Sequence[str]) -> int:
    """What DNS has for our domains and keys, against what `mailhub dns` prints (online)."""
    configured = config.checks.nameservers or config.relay.nameservers
    resolver = _BlockingResolver(nameserver, configured, config.checks.dns_timeout)
    bad = _check_domain_records(config, resolver, sending_ips)
    bad += _check_dkim_dns(config, resolver)
    return 1 if bad else 0


def _check_dkim_dns(config: Config, resolver: Any) -> int:
    """Each key's TXT record, looked up and compared with the key; how many are wrong."""
    from mailhub.checks.keys import all_keys
    from mailhub.checks.published import OK, check_published

    found = list(all_keys(config.dkim_key_dir))
    if not found:
        print(f"  dkim       no keys in {config.dkim_key_dir}")
        return 0
    bad = 0
    for info in found:
        verdict = _finish(check_published(resolver, info))
        # A retired key no longer signs: its record may go (README: rotation), so only say so.
        bad += verdict.status != OK and not info.retired
        retired = " (retired)" if info.retired else ""
        print(f"  dkim       {info.record_name}{retired}: {verdict.status}: {verdict.detail}")
    return bad


def _finish(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never waits (its lookups block): no reactor needed."""
    try:
        coroutine.send(None)
    except StopIteration as e:
        result: T = e.value
        return result
    coroutine.close()
    raise RuntimeError("the coroutine waited for something")


class _BlockingResolver:
    """A CheckResolver over dnspython, blocking: fine in the admin command, which has no
    reactor to keep responsive (the server uses mailhub.checks.resolver). It asks what the
    server's checks ask: [checks] nameservers, else [relay] nameservers, else the system's."""

    def __init__(
        self, nameserver: str | None, configured: tuple[tuple[str, int], ...], timeout: float
    ) -> None:
        import dns.resolver

        self._resolver = dns.resolver.Resolver(configure=not (nameserver or configured))
        servers = list(configured)
        if nameserver:
            host, _, port = nameserver.rpartition(":")
            servers = [(host.strip("[]"), int(port))] if host else [(nameserver, 53)]
        if servers:
            self._resolver.nameservers = [host for host, _ in servers]
            self._resolver.port = servers[0][1]
        self._resolver.lifetime = timeout

    def _query(self, name: str, rdtype: str) -> tuple[Any, ...] | None:
        """The answer's records; None for NXDOMAIN; DNSTempError when there is no answer."""
        import dns.exception
        import dns.resolver

        try:
            return tuple(self._resolver.resolve(name, rdtype, search=False))
        except dns.resolver.NXDOMAIN:
            return None
        except dns.resolver.NoAnswer:
            return ()
        except dns.exception.DNSException as e:
            raise DNSTempError(f"{name}: {e}") from None

    def _lookup(self, name: str, rdtype: str, convert: Callable[[Any], T]) -> Lookup[T]:
        records = self._query(name, rdtype)
        if records is None:
            return Lookup(nxdomain=True)
        return Lookup(tuple(convert(r) for r in records))

    async def txt(self, name: str) -> Lookup[bytes]:
        return self._lookup(name, "TXT", lambda r: b"".join(r.strings))

    async def a(self, name: str) -> Lookup[str]:
        return self._lookup(name, "A", lambda r: str(r.address))

    async def aaaa(self, name: str) -> Lookup[str]:
        return self._lookup(name, "AAAA", lambda r: str(r.address))

    async def mx(self, name: str) -> Lookup[tuple[int, str]]:
        return self._lookup(name, "MX", lambda r: (int(r.preference), r.exchange.to_text(True)))

    async def ptr(self, address: str) -> Lookup[str]:
        from dns.reversename import from_address

        name = from_address(address).to_text(True)
        return self._lookup(name, "PTR", lambda r: r.target.to_text(True))


def _ip(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


# --- export and import (mailhub.transfer) -----------------------------------------------------


def export_mail(args: argparse.Namespace) -> int:
    from mailhub import transfer

    store = _store(_config(args))
    mailbox = _canonical(args.mailbox) if args.mailbox else None
    if args.folder and not mailbox:
        print("mailhub: --folder needs --mailbox", file=sys.stderr)
        return 1
    counts = transfer.export(
        store, Path(args.dest), mailbox=mailbox, folder=args.folder, fmt=args.format
    )
    print(
        f"exported {counts.messages} message(s) from {len(counts.folders)} folder(s) to {args.dest}"
    )
    return 0


def import_mail(args: argparse.Namespace) -> int:
    from mailhub import transfer

    store = _store(_config(args))
    mailbox = _canonical(args.mailbox) if args.mailbox else None
    try:
        counts = transfer.import_path(store, Path(args.src), mailbox=mailbox, folder=args.folder)
    except transfer.TransferError as e:
        print(f"mailhub: {e}", file=sys.stderr)
        return 1
    for why in counts.skipped:
        print(f"skipped {why}", file=sys.stderr)
    print(f"imported {counts.messages} message(s) into {len(counts.folders)} folder(s)")
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

    ips = argparse.ArgumentParser(add_help=False)
    ips.add_argument(
        "--ip",
        action="append",
        default=[],
        type=_ip,
        help="an address mail leaves from (repeat for more; default: [server] hostname's)",
    )
    check = sub.add_parser("check-config", parents=[common, ips], help="validate a config file")
    check.add_argument(
        "--dns",
        action="store_true",
        help="look up what `mailhub dns` prints (MX, SPF, DKIM, DMARC, PTR) and check it (online)",
    )
    check.add_argument("--nameserver", help="DNS server HOST[:PORT] for --dns (default: system's)")
    check.set_defaults(run=check_config)
    dns = sub.add_parser(
        "dns",
        parents=[common, ips],
        help="print the DNS records to publish for a domain: MX, SPF, DKIM, DMARC, PTR",
    )
    dns.add_argument("domain", nargs="+")
    dns.set_defaults(run=dns_records)
    sub.add_parser("version", help="print the version").set_defaults(run=version)
    # Only for the help text: main() hands `mailhub sendmail ...` to mailhub.sendmail at once.
    sub.add_parser("sendmail", help="the /usr/sbin/sendmail interface (-t, -i, -f, -F, -bm, -bs)")
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
    exp = sub.add_parser(
        "export", parents=[common], help="write mail (with flags) to .eml files or mbox"
    )
    exp.add_argument("dest", help="a directory (.eml, or mbox of several folders) or mbox file")
    exp.add_argument("--mailbox", "-m", help="only this mailbox (default: every one)")
    exp.add_argument("--folder", "-f", help="only this folder (with --mailbox)")
    exp.add_argument("--format", choices=("eml", "mbox"), default="eml")
    exp.set_defaults(run=export_mail)
    imp = sub.add_parser(
        "import", parents=[common], help="deliver .eml files or mbox (with flags) into the store"
    )
    imp.add_argument("src", help="an export directory, a directory of .eml files, or an mbox")
    imp.add_argument("--mailbox", "-m", help="into this mailbox (default: as exported, or To/Cc)")
    imp.add_argument("--folder", "-f", help="into this folder (default: as exported, or INBOX)")
    imp.set_defaults(run=import_mail)
    dkim = sub.add_parser("dkim", help="DKIM signing keys and their DNS records")
    dkim_sub = dkim.add_subparsers(dest="action", required=True)
    keygen = dkim_sub.add_parser(
        "keygen", parents=[common], help="make a domain's keys (RSA and Ed25519) and print records"
    )
    keygen.add_argument("domain")
    keygen.add_argument("--selector", "-s", help="default: <yyyymm>r (RSA), <yyyymm>e (Ed25519)")
    keygen.add_argument("--algorithm", "-a", choices=("rsa", "ed25519"), help="default: both")
    keygen.add_argument("--bits", "-b", type=int, default=2048, help="RSA size, 1024-4096")
    keygen.set_defaults(run=dkim_keygen)
    d_show = dkim_sub.add_parser("show", parents=[common], help="print a domain's TXT records")
    d_show.add_argument("domain")
    d_show.set_defaults(run=dkim_show)
    d_retire = dkim_sub.add_parser(
        "retire", parents=[common], help="stop signing with a selector (its record stays shown)"
    )
    d_retire.add_argument("domain")
    d_retire.add_argument("selector")
    d_retire.set_defaults(run=dkim_retire)
    dkim_sub.add_parser("list", parents=[common], help="every key and its state").set_defaults(
        run=dkim_list
    )
    return top


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sendmail"]:  # sendmail's own command line (-t, -oi, -fsender...)
        from mailhub import sendmail

        sendmail.main(argv[1:])
    args = parser().parse_args(argv)
    try:
        status = args.run(args)
    except ConfigError as e:
        print(f"mailhub: configuration error in {e}", file=sys.stderr)
        status = 1
    except OSError as e:
        print(f"mailhub: {e}", file=sys.stderr)
        status = 1
    except (StoreError, KeyFileError) as e:
        print(f"mailhub: {e}", file=sys.stderr)
        status = 1
    sys.exit(status)


if __name__ == "__main__":
    main()
