"""The DNS layer of the mail checks (mailhub.checks.resolver) against a real DNS server on
127.0.0.1 (tests/support/localdns.py): record types, negative answers, temporary errors, TXT
joined, TCP after truncation, CNAME chains and loops; the TTL cache on a task.Clock, coalescing
of lookups in flight, the per-message budget, and the configuration."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailhub import config as config_module
from mailhub.checks.dns import DNSBudget, DNSBudgetExceeded, DNSTempError, Lookup
from mailhub.checks.resolver import (
    BudgetedResolver,
    CachingResolver,
    InvalidName,
    TwistedResolver,
    budgeted,
    make_resolver,
    query_name,
    reverse_name,
    system_nameservers,
)
from mailhub.errors import ConfigError
from tests.support.checkdns import MemoryResolver
from tests.support.localdns import LocalDNS

DKIM_KEY = "v=DKIM1; k=rsa; p=" + "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" * 20  # 900 octets

ZONE: dict[str, dict[str, Any]] = {
    "a.test": {
        "A": ["192.0.2.1", "192.0.2.2"],
        "AAAA": ["2001:db8:0:0::1"],
        "MX": [(10, "mx.a.test"), (20, "MX2.a.test.")],
        "TXT": ["v=spf1 -all", "other"],
    },
    "null.test": {"MX": [(0, ".")]},
    "nodata.test": {"A": ["192.0.2.9"]},
    # One record, split into character-strings in odd places (RFC 7208 3.3: joined as is).
    "split.test": {"TXT": [("v=spf1 i", "p4:192.0.2.0/24 ", "", "-al", "l")]},
    "big.test": {"TXT": [DKIM_KEY]},
    ipaddress.ip_address("192.0.2.1").reverse_pointer: {"PTR": ["host.a.test"]},
    ipaddress.ip_address("2001:db8::1").reverse_pointer: {"PTR": ["v6.a.test"]},
    "xn--bcher-kva.test": {"A": ["192.0.2.7"]},
    # CNAME chains: alias1 -> alias2 -> a.test; a loop; one too long; one to nowhere.
    "alias1.test": {"CNAME": ["alias2.test"]},
    "alias2.test": {"CNAME": ["a.test"], "TTL": 30},
    "loop1.test": {"CNAME": ["loop2.test"]},
    "loop2.test": {"CNAME": ["loop1.test"]},
    **{f"hop{i}.test": {"CNAME": [f"hop{i + 1}.test"]} for i in range(12)},
    "hop12.test": {"TXT": ["far"]},
    "dangling.test": {"CNAME": ["missing.test"]},
    "short.test": {"TXT": ["short-lived"], "TTL": 5},
    "long.test": {"TXT": ["long-lived"], "TTL": 10 * 86400},
    "zero.test": {"TXT": ["never kept"], "TTL": 0},
    "broken.test": {},
    "slow.test": {},
    "refusing.test": {},
}


def closed_udp_port() -> int:
    """A port number on 127.0.0.1 where (right now) nothing listens for UDP."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    number: int = s.getsockname()[1]
    s.close()
    return number


class WithDNS(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.dns = LocalDNS(ZONE, negative_ttl=120)
        self.dns.start()
        self.addCleanup(self.dns.stop)
        self.dns.authority.servfail.add("broken.test")
        self.dns.authority.refused.add("refusing.test")
        self.dns.authority.silent.add("slow.test")
        self.resolver = TwistedResolver([self.dns.address], timeout=2.0)

    async def temp_error(self, lookup: Any) -> DNSTempError:
        try:
            result = await lookup
        except DNSTempError as e:
            return e
        self.fail(f"no DNSTempError but {result!r}")


class RecordTypes(WithDNS):
    async def test_a_and_aaaa(self) -> None:
        self.assertEqual(await self.resolver.a("a.test"), Lookup(("192.0.2.1", "192.0.2.2")))
        self.assertEqual(await self.resolver.aaaa("a.test"), Lookup(("2001:db8::1",)))

    async def test_mx_names_lower_case_without_trailing_dot(self) -> None:
        self.assertEqual(
            sorted((await self.resolver.mx("a.test")).records),
            [(10, "mx.a.test"), (20, "mx2.a.test")],
        )

    async def test_null_mx_is_the_root(self) -> None:
        self.assertEqual(await self.resolver.mx("null.test"), Lookup(((0, "."),)))

    async def test_txt_one_bytes_per_record(self) -> None:
        lookup = await self.resolver.txt("a.test")
        self.assertEqual(sorted(lookup.records), [b"other", b"v=spf1 -all"])

    async def test_txt_split_in_odd_places_is_joined(self) -> None:
        # RFC 7208 3.3: the strings are concatenated with no spaces added.
        lookup = await self.resolver.txt("split.test")
        self.assertEqual(lookup, Lookup((b"v=spf1 ip4:192.0.2.0/24 -all",)))

    async def test_big_txt_is_asked_again_over_tcp(self) -> None:
        lookup = await self.resolver.txt("big.test")
        self.assertEqual(lookup, Lookup((DKIM_KEY.encode(),)))
        self.assertEqual(self.dns.tcp_queries, [("big.test", "TXT")])
        self.assertEqual(self.dns.queries, [("big.test", "TXT")] * 2)  # UDP (truncated), TCP

    async def test_nothing_logged(self) -> None:
        # A lookup is no news for the operator: no line per socket opened or closed.
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        await self.resolver.a("a.test")
        await self.resolver.txt("big.test")  # UDP, then TCP
        self.assertEqual([formatEvent(e) for e in events], [])

    async def test_ptr_of_ipv4_ipv6_and_mapped_addresses(self) -> None:
        self.assertEqual(await self.resolver.ptr("192.0.2.1"), Lookup(("host.a.test",)))
        self.assertEqual(await self.resolver.ptr("2001:db8::1"), Lookup(("v6.a.test",)))
        self.assertEqual(await self.resolver.ptr("::ffff:192.0.2.1"), Lookup(("host.a.test",)))
        self.assertEqual(self.dns.queries[0], ("1.2.0.192.in-addr.arpa", "PTR"))

    async def test_nxdomain_and_nodata_differ(self) -> None:
        nx = await self.resolver.txt("nowhere.test")
        nodata = await self.resolver.txt("nodata.test")
        self.assertEqual((nx, nodata), (Lookup(nxdomain=True), Lookup()))
        self.assertTrue(nx.void and nodata.void)

    async def test_names_are_case_insensitive_and_may_end_in_a_dot(self) -> None:
        self.assertEqual(await self.resolver.a("A.Test."), Lookup(("192.0.2.1", "192.0.2.2")))

    async def test_unicode_names_are_asked_as_a_labels(self) -> None:
        self.assertEqual(await self.resolver.a("Bücher.test"), Lookup(("192.0.2.7",)))
        self.assertEqual(self.dns.queries, [("xn--bcher-kva.test", "A")])


class TemporaryErrors(WithDNS):
    async def test_servfail(self) -> None:
        e = await self.temp_error(self.resolver.txt("broken.test"))
        self.assertIn("SERVFAIL", str(e))
        self.assertEqual(self.dns.queries, [("broken.test", "TXT")])  # not asked twice

    async def test_refused(self) -> None:
        e = await self.temp_error(self.resolver.a("refusing.test"))
        self.assertIn("REFUSED", str(e))

    def test_silent_server_times_out(self) -> None:
        # dns_timeout 5 s for one server: two tries of 2.5 s, then a temporary error.
        clock = task.Clock()
        resolver = TwistedResolver([self.dns.address], timeout=5, clock=clock)
        lookup = defer.ensureDeferred(resolver.txt("slow.test"))
        clock.advance(2.4)
        self.assertNoResult(lookup)
        clock.advance(0.1)  # the first try gives up; the second goes out
        clock.advance(2.4)
        self.assertNoResult(lookup)
        clock.advance(0.1)
        failure = self.failureResultOf(lookup, DNSTempError)
        self.assertIn("no answer from 127.0.0.1", str(failure.value))

    async def test_next_server_is_asked_when_one_is_silent(self) -> None:
        quiet = LocalDNS(ZONE)
        quiet.start()
        self.addCleanup(quiet.stop)
        quiet.authority.silent.add("a.test")
        clock = task.Clock()
        resolver = TwistedResolver([quiet.address, self.dns.address], timeout=5, clock=clock)
        lookup = defer.ensureDeferred(resolver.a("a.test"))
        clock.advance(1.25)  # two servers, two rounds: 1.25 s a try
        self.assertEqual(await lookup, Lookup(("192.0.2.1", "192.0.2.2")))
        self.assertEqual((quiet.queries, self.dns.queries), ([("a.test", "A")],) * 2)

    async def test_no_server_listening(self) -> None:
        # A refused port fails the try at once (ICMP), without waiting for the timeout.
        resolver = TwistedResolver([("127.0.0.1", closed_udp_port())], timeout=30)
        e = await self.temp_error(resolver.a("a.test"))
        self.assertIn("ConnectionRefused", str(e))

    async def test_truncated_answer_without_tcp(self) -> None:
        assert self.dns.tcp_port is not None
        await self.dns.tcp_port.stopListening()
        e = await self.temp_error(self.resolver.txt("big.test"))
        self.assertIn("ConnectionRefused", str(e))

    async def test_a_lookup_given_up_leaves_nothing_behind(self) -> None:
        # Cancelled while waiting for the answer (the question is sent before ensureDeferred
        # returns): the socket and its timer go (trial fails a test leaving a dirty reactor).
        lookup = defer.ensureDeferred(self.resolver.txt("slow.test"))
        lookup.cancel()
        with self.assertRaises(defer.CancelledError):
            await lookup

    async def test_questions_beyond_the_limit_wait_their_turn(self) -> None:
        resolver = TwistedResolver([self.dns.address], timeout=2.0, max_in_flight=2)
        self.dns.authority.follow_cnames = False  # each hop its own question
        names = [f"hop{i}.test" for i in range(5, 13)]  # 8 chains, 36 questions in all
        lookups = [defer.ensureDeferred(resolver.txt(name)) for name in names]
        results = await defer.DeferredList(lookups, consumeErrors=True)
        self.assertEqual(results, [(True, Lookup((b"far",)))] * 8)
        self.assertEqual(len(self.dns.queries), 36)

    def test_no_room_to_ask_in_time_is_a_temporary_error(self) -> None:
        clock = task.Clock()
        resolver = TwistedResolver([self.dns.address], timeout=5, max_in_flight=1, clock=clock)
        self.successResultOf(resolver.slots.acquire())  # the one question on the wire
        lookup = defer.ensureDeferred(resolver.a("a.test"))
        clock.advance(4.9)
        self.assertNoResult(lookup)
        clock.advance(0.1)
        self.assertIn("no room to ask", str(self.failureResultOf(lookup, DNSTempError).value))
        resolver.slots.release()

    async def test_answer_to_another_question_is_not_taken(self) -> None:
        self.dns.authority.wrong_question.add("a.test")
        e = await self.temp_error(self.resolver.a("a.test"))
        self.assertIn("answered another question", str(e))

    async def test_no_server_at_all(self) -> None:
        e = await self.temp_error(TwistedResolver([], timeout=1).a("a.test"))
        self.assertIn("no DNS server", str(e))


class CNAMEs(WithDNS):
    async def test_chain_in_one_answer(self) -> None:
        self.assertEqual(await self.resolver.a("alias1.test"), Lookup(("192.0.2.1", "192.0.2.2")))
        self.assertEqual(self.dns.queries, [("alias1.test", "A")])

    async def test_chain_asked_hop_by_hop(self) -> None:
        # An authoritative server may answer only the CNAME: the resolver asks for its target.
        self.dns.authority.follow_cnames = False
        self.assertEqual(
            await self.resolver.txt("alias1.test"), (await self.resolver.txt("a.test"))
        )
        self.assertEqual(
            [name for name, _ in self.dns.queries],
            ["alias1.test", "alias2.test", "a.test", "a.test"],
        )

    async def test_ttl_is_the_least_along_the_chain(self) -> None:
        answer = await self.resolver.resolve("alias1.test", "A")
        self.assertEqual(answer.ttl, 30)  # alias2.test's CNAME; the others have 60

    async def test_loop_is_a_temporary_error(self) -> None:
        for follow in (True, False):
            self.dns.authority.follow_cnames = follow
            e = await self.temp_error(self.resolver.txt("loop1.test"))
            self.assertIn("CNAME loop", str(e))

    async def test_chain_too_long(self) -> None:
        self.assertEqual(await self.resolver.txt("hop5.test"), Lookup((b"far",)))  # 7 hops
        e = await self.temp_error(self.resolver.txt("hop0.test"))  # 12 hops
        self.assertIn("more than 8 CNAMEs", str(e))

    async def test_alias_of_a_missing_name_is_nxdomain(self) -> None:
        # RFC 6604 3: NXDOMAIN with the chain is about the chain's end; no need to ask again.
        self.assertEqual(await self.resolver.txt("dangling.test"), Lookup(nxdomain=True))
        self.assertEqual(self.dns.queries, [("dangling.test", "TXT")])
        self.dns.authority.follow_cnames = False  # only the CNAME: ask for its target
        self.assertEqual(await self.resolver.txt("dangling.test"), Lookup(nxdomain=True))
        self.assertEqual(self.dns.queries[1:], [("dangling.test", "TXT"), ("missing.test", "TXT")])

    async def test_asking_for_the_cname_itself(self) -> None:
        answer = await self.resolver.ask("alias1.test", 5)  # CNAME
        self.assertEqual([rr.type for rr in answer.answers], [5])


class GarbageNames(WithDNS):
    GARBAGE = [
        "",
        ".",
        "a..test",
        ".a.test",
        "x" * 64 + ".test",
        "a." * 127 + "test",
        "nul\x00.test",
        "\u200b.test",  # no IDNA form
        "\ud800.test",  # a lone surrogate
        "ü" * 1_000_000 + ".test",
    ]

    async def test_garbage_is_nxdomain_without_a_query(self) -> None:
        for name in self.GARBAGE:
            with self.subTest(name=name):
                self.assertEqual(await self.resolver.txt(name), Lookup(nxdomain=True))
                self.assertEqual(await self.resolver.a(name), Lookup(nxdomain=True))
        self.assertEqual(await self.resolver.ptr("not-an-address"), Lookup(nxdomain=True))
        self.assertEqual(self.dns.queries, [])

    def test_query_name_says_what_is_wrong(self) -> None:
        for name, words in [
            ("a..test", "empty label"),
            ("x" * 64 + ".test", "over 63"),
            ("a." * 127 + "test", "over 253"),
            ("bad\tname.test", "control characters"),
            ("", "empty name"),
        ]:
            with self.subTest(name=name):
                with self.assertRaises(InvalidName) as caught:
                    query_name(name)
                self.assertIn(words, str(caught.exception))

    async def test_spaces_and_percent_signs_are_asked(self) -> None:
        # RFC 7208 7.3's %_ and %- expand to spaces and "%20": such a name is a name.
        self.dns.authority.zone["macro%percent  space%20url.test"] = {"A": ["192.0.2.9"]}
        self.assertEqual(
            query_name("Macro%percent  SPACE%20url.test."), "macro%percent  space%20url.test"
        )
        self.assertEqual(
            await self.resolver.a("macro%percent  space%20url.test"), Lookup(("192.0.2.9",))
        )

    def test_longest_names_pass(self) -> None:
        name = ".".join(["x" * 63] * 3 + ["y" * 61])  # 253 octets
        self.assertEqual(query_name(name + "."), name)
        self.assertEqual(query_name("_dmarc.Example.COM"), "_dmarc.example.com")
        self.assertEqual(reverse_name("1.2.0.192.in-addr.arpa."), "1.2.0.192.in-addr.arpa")


class Cache(WithDNS):
    def setUp(self) -> None:
        super().setUp()
        self.clock = task.Clock()
        self.cache = CachingResolver(self.resolver, self.clock, max_entries=100)

    async def test_hit_within_ttl_miss_after(self) -> None:
        for _ in range(3):
            self.assertEqual(await self.cache.txt("short.test"), Lookup((b"short-lived",)))
        self.assertEqual(len(self.dns.queries), 1)
        self.clock.advance(4.9)
        await self.cache.txt("short.test")
        self.assertEqual(len(self.dns.queries), 1)
        self.clock.advance(0.2)
        await self.cache.txt("short.test")
        self.assertEqual(len(self.dns.queries), 2)
        self.assertEqual((self.cache.hits, self.cache.misses), (3, 2))

    async def test_each_type_and_name_is_its_own_entry(self) -> None:
        await self.cache.a("a.test")
        await self.cache.aaaa("a.test")
        await self.cache.a("A.TEST.")
        self.assertEqual(self.dns.queries, [("a.test", "A"), ("a.test", "AAAA")])

    async def test_ttl_capped_at_a_day(self) -> None:
        await self.cache.txt("long.test")
        self.clock.advance(86399)
        await self.cache.txt("long.test")
        self.assertEqual(len(self.dns.queries), 1)
        self.clock.advance(2)
        await self.cache.txt("long.test")
        self.assertEqual(len(self.dns.queries), 2)

    async def test_zero_ttl_is_not_kept(self) -> None:
        await self.cache.txt("zero.test")
        await self.cache.txt("zero.test")
        self.assertEqual(len(self.dns.queries), 2)

    async def test_negative_answers_kept_for_the_soa_minimum(self) -> None:
        # RFC 2308 5: NXDOMAIN and NODATA alike, for min(SOA TTL, MINIMUM) = 120 s here.
        for name in ("nowhere.test", "nodata.test"):
            await self.cache.txt(name)
            self.clock.advance(119)
            self.assertTrue((await self.cache.txt(name)).void)
        self.assertEqual(len(self.dns.queries), 2)
        self.clock.advance(2)
        await self.cache.txt("nodata.test")
        self.assertEqual(len(self.dns.queries), 3)

    async def test_negative_answers_without_soa_kept_five_minutes(self) -> None:
        self.dns.authority.negative_ttl = None
        self.assertEqual(await self.cache.txt("nowhere.test"), Lookup(nxdomain=True))
        self.clock.advance(299)
        await self.cache.txt("nowhere.test")
        self.assertEqual(len(self.dns.queries), 1)
        self.clock.advance(2)
        await self.cache.txt("nowhere.test")
        self.assertEqual(len(self.dns.queries), 2)

    async def test_temporary_errors_are_not_kept(self) -> None:
        for _ in range(2):
            await self.temp_error(self.cache.txt("broken.test"))
        self.assertEqual(self.dns.queries, [("broken.test", "TXT")] * 2)
        self.assertEqual(len(self.cache), 0)

    async def test_concurrent_identical_lookups_ask_once(self) -> None:
        lookups = [defer.ensureDeferred(self.cache.txt("big.test")) for _ in range(20)]
        results = await defer.gatherResults(lookups)
        self.assertEqual(set(results), {Lookup((DKIM_KEY.encode(),))})
        self.assertEqual(self.dns.queries, [("big.test", "TXT")] * 2)  # UDP + TCP, once
        self.assertEqual(self.dns.tcp_queries, [("big.test", "TXT")])

    async def test_concurrent_lookups_share_a_temporary_error(self) -> None:
        lookups = [defer.ensureDeferred(self.cache.txt("broken.test")) for _ in range(20)]
        results = await defer.DeferredList(lookups, consumeErrors=True)
        self.assertEqual({f.type for ok, f in results if not ok}, {DNSTempError})
        self.assertEqual(len(results), 20)
        self.assertEqual(self.dns.queries, [("broken.test", "TXT")])


class CacheInMemory(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.records = MemoryResolver(
            {f"{n}.test": {"A": [f"192.0.2.{n}"]} for n in range(1, 5)}, ttl=60
        )
        self.cache = CachingResolver(self.records, self.clock, max_entries=2)

    def a(self, name: str) -> defer.Deferred[Lookup[str]]:
        return defer.ensureDeferred(self.cache.a(name))

    def test_least_recently_used_goes_first(self) -> None:
        for name in ("1.test", "2.test", "1.test", "3.test"):  # 1 used again: 2 goes
            self.successResultOf(self.a(name))
        self.assertEqual(len(self.cache), 2)
        self.successResultOf(self.a("1.test"))
        self.successResultOf(self.a("2.test"))
        self.assertEqual(
            [name for _, name in self.records.queries], ["1.test", "2.test", "3.test", "2.test"]
        )

    def test_a_caller_giving_up_does_not_stop_the_others(self) -> None:
        self.records.hold = True
        first, second = self.a("1.test"), self.a("1.test")
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        self.records.release()
        self.assertEqual(self.successResultOf(second), Lookup(("192.0.2.1",)))
        self.assertEqual(len(self.records.queries), 1)
        self.successResultOf(self.a("1.test"))  # and the answer was kept
        self.assertEqual(len(self.records.queries), 1)

    def test_remaining_ttl_is_handed_on(self) -> None:
        self.successResultOf(defer.ensureDeferred(self.cache.resolve("1.test", "A")))
        self.clock.advance(45)
        answer = self.successResultOf(defer.ensureDeferred(self.cache.resolve("1.test", "A")))
        self.assertEqual(answer.ttl, 15)


class Budget(SynchronousTestCase):
    def setUp(self) -> None:
        records = MemoryResolver(txt={"a.test": [b"x"]}, ttl=60)
        self.cache = CachingResolver(records, task.Clock())

    def test_every_lookup_spends_cached_or_not(self) -> None:
        budget = DNSBudget(limit=3)
        resolver = budgeted(self.cache, budget)
        for _ in range(3):
            self.successResultOf(defer.ensureDeferred(resolver.txt("a.test")))
        self.failureResultOf(defer.ensureDeferred(resolver.txt("a.test")), DNSBudgetExceeded)
        self.assertEqual(budget.used, 4)

    def test_budgeted_wraps_once(self) -> None:
        budget = DNSBudget()
        self.assertIs(budgeted(self.cache, None), self.cache)
        once = budgeted(self.cache, budget)
        self.assertIsInstance(once, BudgetedResolver)
        self.assertIs(budgeted(once, budget), once)
        self.assertIsNot(budgeted(once, DNSBudget()), once)


class Configuration(TestCase):
    timeout = 20

    def load(self, text: str) -> config_module.Config:
        path = Path(self.mktemp())
        path.write_text('[domains]\nlocal = ["a.test"]\n' + text, encoding="utf-8")
        return config_module.load(path, data_dir=self.mktemp())

    def test_defaults(self) -> None:
        checks = self.load("").checks
        self.assertEqual((checks.nameservers, checks.dns_timeout), ((), 5.0))

    def test_keys(self) -> None:
        checks = self.load(
            '[checks]\nnameservers = ["127.0.0.1:5353", "::1"]\ndns_timeout = "2s"\n'
            "dns_cache_size = 50\n"
        ).checks
        self.assertEqual(checks.nameservers, (("127.0.0.1", 5353), ("::1", 53)))
        self.assertEqual((checks.dns_timeout, checks.dns_cache_size), (2.0, 50))

    def test_a_nameserver_must_be_an_address(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.load('[checks]\nnameservers = ["dns.example:53"]\n')
        self.assertIn("[checks] nameservers", str(caught.exception))
        with self.assertRaises(ConfigError):
            self.load("[checks]\ndns_timeout = 0\n")

    async def test_make_resolver_asks_the_configured_server(self) -> None:
        dns = LocalDNS(ZONE)
        port = dns.start()
        self.addCleanup(dns.stop)
        config = self.load(f'[checks]\nnameservers = ["127.0.0.1:{port}"]\n')
        resolver = make_resolver(config, reactor)
        self.assertEqual(await resolver.a("a.test"), Lookup(("192.0.2.1", "192.0.2.2")))
        self.assertEqual(len(resolver), 1)

    async def test_make_resolver_falls_back_to_the_relay_nameservers(self) -> None:
        dns = LocalDNS(ZONE)
        port = dns.start()
        self.addCleanup(dns.stop)
        resolver = make_resolver(
            self.load(f'[relay]\nnameservers = ["127.0.0.1:{port}"]\n'), reactor
        )
        self.assertEqual(await resolver.a("nodata.test"), Lookup(("192.0.2.9",)))

    def test_system_nameservers_from_resolv_conf(self) -> None:
        path = Path(self.mktemp())
        path.write_text(
            "# comment\nsearch example.org\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n"
            "nameserver bogus\noptions timeout:2\n",
            encoding="utf-8",
        )
        self.assertEqual(system_nameservers(path), [("192.0.2.53", 53), ("2001:db8::53", 53)])
        self.assertEqual(system_nameservers(self.mktemp()), [("127.0.0.1", 53)])
