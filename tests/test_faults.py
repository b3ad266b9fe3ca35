"""Fault rules (mailhub.faults): validation, determinism, counting, config, and the SMTP dialog
at each stage, without sockets (the wire is tests/test_faults_wire.py)."""

from __future__ import annotations

import io
import random
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailhub.cli import main
from mailhub.config import ConfigError, load
from mailhub.faults.rules import (
    Action,
    FaultError,
    FaultRules,
    Rule,
    Stage,
    compile_pattern,
    rules_from_config,
)
from mailhub.faults.smtp import FaultySMTPServerFactory, FaultySMTPServerProtocol
from mailhub.service import build
from mailhub.smtp.protocol import SMTPServerProtocol
from tests.support.smtp import LOCAL, Harness

MAIL_OK = "250 2.1.0 Ok"
RCPT_OK = "250 2.1.5 Ok"


def rule(**kw) -> Rule:
    return Rule.from_dict(kw)


class RuleValidation(SynchronousTestCase):
    def error(self, **kw) -> FaultError:
        return self.assertRaises(FaultError, Rule.from_dict, kw)

    def test_each_mistake_names_its_key(self) -> None:
        cases = [
            ({"stage": "rcpt", "action": "reply", "code": 250}, "code"),
            ({"stage": "rcpt", "action": "reply"}, "code"),
            ({"stage": "rcpt", "action": "reply", "code": 550, "enhanced": "4.1.1"}, "enhanced"),
            ({"stage": "rcpt", "action": "reply", "code": 550, "enhanced": "5.x"}, "enhanced"),
            ({"stage": "ehlo", "action": "reply", "code": 550, "enhanced": "5.0.0"}, "enhanced"),
            ({"stage": "mail", "action": "delay"}, "seconds"),
            ({"stage": "mail", "action": "throttle", "seconds": -1}, "seconds"),
            ({"stage": "mail", "action": "disconnect", "recipient": "a@*"}, "recipient"),
            ({"stage": "connect", "action": "disconnect", "sender": "a@*"}, "sender"),
            ({"stage": "rcpt", "action": "disconnect", "recipient": "re:(unclosed"}, "recipient"),
            ({"stage": "mail", "action": "no_starttls"}, "stage"),
            ({"stage": "starttls", "action": "bad_certificate"}, "certificate"),
            (
                {"stage": "starttls", "action": "bad_certificate", "certificate": "old"},
                "certificate",
            ),
            ({"stage": "data", "action": "disconnect", "probability": 0}, "probability"),
            ({"stage": "data", "action": "disconnect", "probability": 1.5}, "probability"),
            ({"stage": "data", "action": "disconnect", "count": 0}, "count"),
            ({"stage": "data", "action": "disconnect", "seed": "x"}, "seed"),
            ({"stage": "helo", "action": "disconnect"}, "stage"),
            ({"stage": "data", "action": "explode"}, "action"),
            ({"stage": "data"}, "action"),
            ({"stage": "data", "action": "disconnect", "colour": "red"}, "colour"),
        ]
        for data, key in cases:
            with self.subTest(data=data):
                self.assertEqual(self.error(**data).key, key)

    def test_reply_defaults_and_dict_round_trip(self) -> None:
        r = rule(stage="rcpt", action="reply", code=452, recipient="full-*@*", count=3)
        self.assertEqual(str(r.reply), "452 4.0.0 Error: fault injected by mailhub")
        again = Rule.from_dict(r.to_dict())
        self.assertEqual(again.reply, r.reply)
        self.assertEqual(again.recipient, "full-*@*")
        greeting = rule(stage="connect", action="reply", code=554, text="No SMTP service here")
        self.assertEqual(str(greeting.reply), "554 No SMTP service here")  # RFC 2034: no code

    def test_patterns_glob_and_regex_ignore_case(self) -> None:
        glob = compile_pattern("fail-550@*")
        self.assertTrue(glob("FAIL-550@Example.com"))
        self.assertFalse(glob("nofail-550@example.com"))
        regex = compile_pattern(r"re:^fail-\d{3}@")
        self.assertTrue(regex("fail-421@x.test"))
        self.assertFalse(regex("fail-4211@x.test"))


class Deciding(SynchronousTestCase):
    def test_count_counts_down_then_the_rule_is_spent(self) -> None:
        rules = FaultRules()
        rule_id = rules.add({"stage": "data", "action": "reply", "code": 451, "count": 2})
        self.assertEqual(rules.get(rule_id)["remaining"], 2)
        self.assertIsNotNone(rules.decide(Stage.DATA))
        self.assertEqual(rules.get(rule_id)["remaining"], 1)
        self.assertIsNotNone(rules.decide(Stage.DATA))
        self.assertIsNone(rules.decide(Stage.DATA))
        described = rules.get(rule_id)
        self.assertEqual((described["remaining"], described["fired"]), (0, 2))
        self.assertTrue(described["spent"])
        self.assertEqual(rules.stages, frozenset())  # the hot path is free again

    def test_same_seed_same_sequence(self) -> None:
        def run(seed: int) -> list[bool]:
            rules = FaultRules(
                [rule(stage="data", action="disconnect", probability=0.3, seed=seed)]
            )
            return [rules.decide(Stage.DATA) is not None for _ in range(200)]

        first = run(7)
        self.assertEqual(run(7), first)
        self.assertNotEqual(run(8), first)
        # It is exactly random.Random(seed): an app's test can predict it.
        rng = random.Random(7)
        self.assertEqual(first, [rng.random() < 0.3 for _ in range(200)])
        self.assertTrue(20 < sum(first) < 100)

    def test_draws_happen_only_when_the_patterns_match(self) -> None:
        rules = FaultRules(
            [rule(stage="rcpt", action="disconnect", recipient="x@*", probability=0.5, seed=1)]
        )
        got = []
        for i in range(40):
            rules.decide(Stage.RCPT, recipients=["other@example.com"])  # no draw
            if i % 2:
                got.append(rules.decide(Stage.RCPT, recipients=["x@example.com"]) is not None)
        rng = random.Random(1)
        self.assertEqual(got, [rng.random() < 0.5 for _ in range(20)])
        self.assertEqual(rules.list()[0]["matched"], 20)

    def test_first_added_wins_and_actions_filter(self) -> None:
        rules = FaultRules()
        first = rules.add({"stage": "starttls", "action": "no_starttls"})
        rules.add({"stage": "starttls", "action": "reply", "code": 454, "enhanced": "4.7.0"})
        chosen = rules.decide(Stage.STARTTLS)  # command actions only
        self.assertIs(chosen.action, Action.REPLY)
        hide = rules.decide(Stage.STARTTLS, actions=frozenset({Action.NO_STARTTLS}))
        self.assertIs(hide.action, Action.NO_STARTTLS)
        self.assertTrue(rules.remove(first))
        self.assertFalse(rules.remove(first))
        self.assertEqual([r["action"] for r in rules.list()], ["reply"])
        self.assertEqual(rules.clear(), 1)
        self.assertEqual(rules.list(), [])


class Config(SynchronousTestCase):
    def write(self, text: str) -> Path:
        path = Path(self.mktemp())
        path.write_text('[domains]\nlocal = ["example.com"]\n' + text)
        return path

    def test_rules_load_in_order(self) -> None:
        config = load(
            self.write(
                """
[[faults.rule]]
stage = "rcpt"
action = "reply"
code = 550
enhanced = "5.1.1"
recipient = "fail-550@*"

[[faults.rule]]
stage = "data"
action = "delay"
seconds = 2.5
probability = 0.25
seed = 42
count = 3
"""
            )
        )
        first, second = rules_from_config(config)
        self.assertEqual(str(first.reply), "550 5.1.1 Error: fault injected by mailhub")
        self.assertEqual((second.stage, second.seconds, second.seed), (Stage.DATA, 2.5, 42))

    BAD = '[[faults.rule]]\nstage = "rcpt"\naction = "reply"\ncode = 250\n'

    def test_a_bad_rule_names_file_rule_and_key(self) -> None:
        path = self.write(self.BAD)
        err = self.assertRaises(ConfigError, rules_from_config, load(path))
        self.assertIn(f"{path}: [[faults.rule]] number 1: code: ", str(err))
        self.assertIn("fix: code = 550", str(err))

    def test_check_config_refuses_a_bad_rule(self) -> None:
        path = self.write(self.BAD)
        err = io.StringIO()
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            exit_ = self.assertRaises(SystemExit, main, ["check-config", "--config", str(path)])
        self.assertEqual(exit_.code, 1)
        self.assertIn(f"{path}: [[faults.rule]] number 1: code: ", err.getvalue())

    def test_start_up_refuses_a_bad_rule(self) -> None:
        path = self.write(self.BAD + f'[server]\ndata_dir = "{self.mktemp()}"\n')
        exit_ = self.assertRaises(SystemExit, build, load(path))
        self.assertIn(f"configuration error in {path}: [[faults.rule]] number 1: ", str(exit_))

    def test_faults_must_be_tables(self) -> None:
        err = self.assertRaises(ConfigError, load, self.write('[faults]\nrule = "x"\n'))
        self.assertIn("[faults] rule: must be an array of tables", str(err))
        err = self.assertRaises(ConfigError, load, self.write("[faults]\nrules = []\n"))
        self.assertIn("did you mean 'rule'", str(err))


class Dialogs(SynchronousTestCase):
    """Each stage and action, as the client sees it (RFC 5321 replies)."""

    def setUp(self) -> None:
        self.h = Harness(factory_class=FaultySMTPServerFactory)
        self.faults = self.h.factory.faults

    def add(self, **kw) -> str:
        return self.faults.add(kw)

    def test_no_rules_no_change(self) -> None:
        d = self.h.connect()
        d.greet()
        d.transaction("<a@example.net>", f"<user@{LOCAL}>")
        d.run("C: DATA\nS: 354 ...\nC: Hi\nC: .\nS: 250 2.0.0 Ok: queued as ...")
        self.assertEqual(len(self.h.sink.delivered), 1)

    def test_sessions_without_rules_are_plain(self) -> None:
        # While no rule can fire, sessions are built without the fault wrappers (cheaper);
        # with one in force they consult the rules from the start.
        self.assertIs(type(self.h.connect().protocol), SMTPServerProtocol)
        rule_id = self.add(stage="rcpt", action="reply", code=550, recipient="x@*")
        self.assertIs(type(self.h.connect().protocol), FaultySMTPServerProtocol)
        self.faults.remove(rule_id)
        self.assertIs(type(self.h.connect().protocol), SMTPServerProtocol)

    def test_a_rule_added_mid_session_applies_at_its_next_stage(self) -> None:
        # A session that began with no rule (a plain one) is given the rules when one is added:
        # an app that keeps its SMTP connection open meets a fault added by its test.
        d = self.h.connect()
        d.greet()
        d.transaction()  # MAIL and RCPT accepted, no rule yet
        self.add(stage="rcpt", action="reply", code=550, enhanced="5.1.1", recipient="fail@*")
        self.add(stage="data", action="throttle", seconds=2)
        self.assertIsInstance(d.protocol, FaultySMTPServerProtocol)
        d.run(f"""
            C: RCPT TO:<fail@{LOCAL}>
            S: 550 5.1.1 Error: fault injected by mailhub
            C: DATA
            S: 354 End data with <CR><LF>.<CR><LF>
            C: Hi
            C: .
        """)
        self.assertEqual(d.replies(), [])  # the throttle fired at the end of the data
        self.h.clock.advance(2)
        self.assertTrue(d.reply().startswith("250 2.0.0 Ok: queued as "))
        self.assertEqual(len(self.h.sink.delivered), 1)

    def test_connect_554_then_only_quit(self) -> None:
        # RFC 5321 3.1: after 554 the server waits for QUIT and answers 503 meanwhile.
        self.add(stage="connect", action="reply", code=554, text="No SMTP service here")
        d = self.h.connect()
        d.run("""
            S: 554 No SMTP service here
            C: EHLO client.example.net
            S: 503 5.5.1 Error: bad sequence of commands
            C: QUIT
            S: 221 2.0.0 Bye
        """)
        self.assertTrue(d.closed)

    def test_connect_421_closes(self) -> None:
        self.add(stage="connect", action="reply", code=421, text="mx.example.org busy")
        d = self.h.connect()
        d.run("S: 421 mx.example.org busy")
        self.assertTrue(d.closed)

    def test_connect_disconnect_sends_nothing(self) -> None:
        self.add(stage="connect", action="disconnect")
        d = self.h.connect()
        self.assertEqual(d.replies(), [])
        self.assertTrue(d.closed)
        d.protocol.connectionLost(None)
        self.assertEqual(self.h.factory.connections, 0)

    def test_ehlo_reply(self) -> None:
        self.add(stage="ehlo", action="reply", code=550, text="go away")
        d = self.h.connect()
        d.run("""
            S: 220 mx.example.org mailhub ESMTP
            C: EHLO client.example.net
            S: 550 go away
            C: HELO client.example.net
            S: 550 go away
            C: MAIL FROM:<a@example.net>
            S: 503 5.5.1 Error: send HELO/EHLO first
        """)

    def test_mail_by_sender_pattern(self) -> None:
        self.add(stage="mail", action="reply", code=451, enhanced="4.3.0", sender="flaky-*@*")
        d = self.h.connect()
        d.greet()
        d.run(f"""
            C: MAIL FROM:<flaky-app@example.net>
            S: 451 4.3.0 Error: fault injected by mailhub
            C: MAIL FROM:<steady@example.net>
            S: {MAIL_OK}
        """)

    def test_rcpt_by_recipient_regex_others_delivered(self) -> None:
        self.add(
            stage="rcpt", action="reply", code=550, enhanced="5.1.1", recipient=r"re:^fail-\d+@"
        )
        d = self.h.connect()
        d.greet()
        d.run(f"""
            C: MAIL FROM:<a@example.net>
            S: {MAIL_OK}
            C: RCPT TO:<fail-550@{LOCAL}>
            S: 550 5.1.1 Error: fault injected by mailhub
            C: RCPT TO:<user@{LOCAL}>
            S: {RCPT_OK}
            C: DATA
            S: 354 End data with <CR><LF>.<CR><LF>
            C: Hi
            C: .
            S: 250 2.0.0 Ok: queued as ...
        """)
        [message] = self.h.sink.delivered
        self.assertEqual([r.address for r in message.envelope.recipients], [f"user@{LOCAL}"])

    def test_data_reply_stores_nothing(self) -> None:
        self.add(stage="data", action="reply", code=552, enhanced="5.3.4", text="too big today")
        d = self.h.connect()
        d.greet()
        d.transaction()
        d.run("C: DATA\nS: 354 ...\nC: Hi\nC: .\nS: 552 5.3.4 too big today")
        self.assertEqual(self.h.sink.delivered, [])
        self.assertEqual(self.h.sink.opened[0].state, "aborted")
        [event] = self.h.message_events()
        self.assertEqual((event["outcome"], event["code"]), ("rejected", 552))

    def test_bdat_last_counts_as_data_end(self) -> None:
        self.add(stage="data", action="reply", code=451, recipient=f"*@{LOCAL}")
        d = self.h.connect()
        d.greet()
        d.transaction()
        d.send(b"BDAT 4 LAST\r\nHi\r\n")
        self.assertEqual(d.replies(), ["451 4.0.0 Error: fault injected by mailhub"])
        self.assertEqual(self.h.sink.delivered, [])

    def test_delay_waits_on_the_clock(self) -> None:
        self.add(stage="mail", action="delay", seconds=30)
        d = self.h.connect()
        d.greet()
        d.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@example.org>\r\n")
        self.h.clock.advance(29.9)
        self.assertEqual(d.replies(), [])  # pipelined RCPT waits its turn
        self.h.clock.advance(0.1)
        self.assertEqual(d.replies(), [MAIL_OK, RCPT_OK])

    def test_delay_at_data_then_client_gone_stores_nothing(self) -> None:
        self.add(stage="data", action="delay", seconds=60)
        d = self.h.connect()
        d.greet()
        d.transaction()
        d.run("C: DATA\nS: 354 ...\nC: Hi\nC: .")
        self.assertEqual(d.replies(), [])
        d.protocol.connectionLost(None)
        self.h.clock.advance(60)
        self.assertEqual(self.h.sink.delivered, [])
        self.assertEqual(self.h.sink.opened[0].state, "aborted")
        self.assertEqual(self.h.failures(), [])
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_client_gone_during_a_delay_ends_the_session(self) -> None:
        # The cancelled wait must not let the session answer what was pipelined behind it.
        self.add(stage="data", action="delay", seconds=60)
        d = self.h.connect()
        d.greet()
        d.transaction()
        d.run("C: DATA\nS: 354 ...")
        d.send(b"Hi\r\n.\r\nNOOP\r\n")
        d.protocol.connectionLost(None)
        self.assertEqual(d.replies(), [])
        self.assertEqual(self.h.sink.opened[0].state, "aborted")

    def test_delay_at_data_then_delivered(self) -> None:
        self.add(stage="data", action="delay", seconds=5)
        d = self.h.connect()
        d.greet()
        d.transaction()
        d.run("C: DATA\nS: 354 ...\nC: Hi\nC: .")
        self.h.clock.advance(5)
        d.run("S: 250 2.0.0 Ok: queued as ...")
        self.assertEqual(len(self.h.sink.delivered), 1)

    def test_throttle_slows_every_later_reply(self) -> None:
        self.add(stage="ehlo", action="throttle", seconds=2)
        d = self.h.connect()
        d.replies()
        for command, expected in (
            (b"EHLO c\r\n", "250-mx.example.org"),
            (b"NOOP\r\n", "250 2.0.0 Ok"),
        ):
            d.send(command)
            self.h.clock.advance(1.9)
            self.assertEqual(d.replies(), [])
            self.h.clock.advance(0.1)
            self.assertEqual(d.replies()[0], expected)

    def test_disconnect_at_rcpt_is_clean(self) -> None:
        self.add(stage="rcpt", action="disconnect", recipient="drop@*")
        d = self.h.connect()
        d.greet()
        d.send(b"MAIL FROM:<a@example.net>\r\n")
        d.replies()
        d.send(b"RCPT TO:<drop@example.org>\r\nNOOP\r\n")
        self.assertEqual(d.replies(), [])
        self.assertTrue(d.closed)
        d.protocol.connectionLost(None)
        self.assertEqual(self.h.factory.connections, 0)
        self.assertEqual(self.h.failures(), [])

    def test_disconnect_at_data_aborts_the_message(self) -> None:
        self.add(stage="data", action="disconnect", count=1)
        d = self.h.connect()
        d.greet()
        d.transaction()
        d.run("C: DATA\nS: 354 ...\nC: Hi\nC: .")
        self.assertTrue(d.closed)
        self.assertEqual(self.h.sink.opened[0].state, "aborted")
        [event] = self.h.message_events()
        self.assertEqual(event["outcome"], "aborted")
        # count = 1: the next session is normal.
        d2 = self.h.connect()
        d2.greet()
        d2.transaction()
        d2.run("C: DATA\nS: 354 ...\nC: Hi\nC: .\nS: 250 2.0.0 Ok: queued as ...")


class StartTLSDialogs(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(tls_context_factory=object(), factory_class=FaultySMTPServerFactory)

    def test_no_starttls_offer_and_502(self) -> None:
        self.h.factory.faults.add({"stage": "starttls", "action": "no_starttls", "count": 1})
        d = self.h.connect(tls=True)
        d.replies()
        d.send(b"EHLO c\r\n")
        self.assertNotIn("250-STARTTLS", d.replies())
        d.run("C: STARTTLS\nS: 502 5.5.1 Error: command not implemented")
        self.assertIsNone(d.transport.tls_started_with)
        d2 = self.h.connect(tls=True)  # used up: offered again
        d2.replies()
        d2.send(b"EHLO c\r\n")
        self.assertIn("250-STARTTLS", d2.replies())

    def test_starttls_reply(self) -> None:
        self.h.factory.faults.add(
            {"stage": "starttls", "action": "reply", "code": 454, "enhanced": "4.7.0"}
        )
        d = self.h.connect(tls=True)
        d.greet()
        d.run("C: STARTTLS\nS: 454 4.7.0 Error: fault injected by mailhub")
        self.assertIsNone(d.transport.tls_started_with)

    def test_starttls_delay_then_tls(self) -> None:
        self.h.factory.faults.add({"stage": "starttls", "action": "delay", "seconds": 3})
        d = self.h.connect(tls=True)
        d.greet()
        d.send(b"STARTTLS\r\n")
        self.assertEqual(d.replies(), [])
        self.h.clock.advance(3)
        self.assertEqual(d.replies(), ["220 2.0.0 Ready to start TLS"])
        self.assertIsNotNone(d.transport.tls_started_with)
