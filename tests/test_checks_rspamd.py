"""mailhub.checks.rspamd and mailhub.web.spam against a fake rspamd over real HTTP on 127.0.0.1:
what is sent (the raw message, the SMTP facts as headers), answers read, and every way an
answer can be bad (HTTP 500, not JSON, too big, cut short, never finished, refused) giving an
RspamdError in words. The real rspamd: tests/integration/test_spam_rspamd.py."""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.test.requesthelper import DummyRequest

from mailhub.checks.rspamd import RspamdClient, RspamdError, ScanFacts, parse_answer
from mailhub.envelope import Envelope, Recipient
from mailhub.received import received_header
from mailhub.web.feed import Entry
from mailhub.web.ids import MessageRef
from mailhub.web.spam import NOT_CONFIGURED, SpamScores, handle, scan_facts

ANSWER = {
    "is_skipped": False,
    "score": 6.5,
    "required_score": 15.0,
    "action": "add header",
    "symbols": {
        "MISSING_MID": {
            "name": "MISSING_MID",
            "score": 2.5,
            "metric_score": 2.5,
            "description": "Message id is missing",
        },
        "R_SPF_ALLOW": {
            "name": "R_SPF_ALLOW",
            "score": -0.2,
            "description": "SPF verification allows sending",
            "options": ["+ip4:192.0.2.1"],
        },
        "SUBJ_ALL_CAPS": {"name": "SUBJ_ALL_CAPS", "score": 4.2, "options": ["23"]},
    },
    "messages": {"smtp_message": "go away"},
    "time_real": 0.25,
}
MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: HELLO\r\n\r\nHi\r\n"


class _Rspamd(Resource):
    """Answers /checkv2 as told; records what it was sent."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.code = 200
        self.body: bytes = json.dumps(ANSWER).encode()
        self.hang = False
        self.cut = False
        self.requests: list[tuple[bytes, dict[bytes, list[bytes]], bytes]] = []
        self.arrived: Deferred[None] = Deferred()
        self.held: list[Any] = []

    def render_POST(self, request: Any) -> Any:
        headers = {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((request.path, headers, request.content.read()))
        if self.hang:
            self.held.append(request)
        if not self.arrived.called:
            self.arrived.callback(None)
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        if self.cut:  # promise more than is sent, then close
            request.setHeader(b"content-length", b"100000")
            request.write(self.body)
            request.channel.transport.loseConnection()
            return NOT_DONE_YET
        return self.body


class _Case(TestCase):
    def serve(self) -> _Rspamd:
        self.fake = _Rspamd()
        site = Site(self.fake)
        site.noisy = False
        port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)

        def end_held() -> None:
            for request in self.fake.held:
                request.channel.transport.abortConnection()

        self.addCleanup(end_held)
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        return self.fake

    def client(self, **kwargs: Any) -> RspamdClient:
        return RspamdClient(self.url, reactor, **kwargs)

    async def failure(self, d: Deferred[Any]) -> RspamdError:
        try:
            await d
        except RspamdError as e:
            return e
        self.fail("no RspamdError")


class Answers(TestCase):
    def test_report(self) -> None:
        report = parse_answer(json.dumps(ANSWER).encode())
        self.assertEqual((report.score, report.required_score), (6.5, 15.0))
        self.assertEqual(report.action, "add header")
        self.assertTrue(report.is_spam)
        # heaviest first either way, then by name
        self.assertEqual(
            [s.name for s in report.symbols], ["SUBJ_ALL_CAPS", "MISSING_MID", "R_SPF_ALLOW"]
        )
        self.assertEqual(report.symbols[1].description, "Message id is missing")
        self.assertEqual(report.symbols[2].options, ("+ip4:192.0.2.1",))
        self.assertEqual(report.symbols[0].description, "")  # none given
        self.assertEqual(report.messages, {"smtp_message": "go away"})
        out = report.json()
        self.assertEqual(out["symbols"][2]["score"], -0.2)
        self.assertEqual(out["time"], 0.25)

    def test_not_spam(self) -> None:
        answer = {**ANSWER, "action": "no action", "score": 1.0}
        self.assertFalse(parse_answer(json.dumps(answer).encode()).is_spam)

    def test_garbage(self) -> None:
        cases = {
            b"<html>oops</html>": "not JSON",
            b"\xff\xfe": "not JSON",
            b"[1, 2]": "not a JSON object",
            b"[" * 100000: "not JSON",
            b'{"score": "high", "required_score": 15}': "no usable score",
            b'{"score": NaN, "required_score": 15}': "no usable score",
            b'{"score": true, "required_score": 15}': "no usable score",
            b'{"score": 1}': "no usable required_score",
            b'{"score": 1, "required_score": 2, "symbols": [1]}': "not an object",
            b'{"error": "message has no headers"}': "refused the message: message has no headers",
        }
        for body, words in cases.items():
            with self.assertRaises(RspamdError, msg=body[:40]) as caught:
                parse_answer(body)
            self.assertIn(words, str(caught.exception))

    def test_odd_but_usable(self) -> None:
        body = {
            "score": 3,
            "required_score": 15,
            "symbols": {"A": "not an object", "B": {"score": 1, "options": "x"}},
            "messages": ["not", "an", "object"],
        }
        report = parse_answer(json.dumps(body).encode())
        self.assertEqual([s.name for s in report.symbols], ["B"])  # named by its key
        self.assertEqual(report.symbols[0].options, ())
        self.assertEqual(report.action, "no action")
        self.assertEqual(report.messages, {})


class Facts(TestCase):
    def test_headers(self) -> None:
        facts = ScanFacts(
            ip="192.0.2.1",
            helo="mail.example.com",
            mail_from="a@example.com",
            recipients=("b@example.org", "c@example.org"),
            queue_id="Q1",
            user="alice",
        )
        self.assertEqual(
            facts.headers(),
            {
                "IP": ["192.0.2.1"],
                "Helo": ["mail.example.com"],
                "From": ["a@example.com"],
                "Rcpt": ["b@example.org", "c@example.org"],
                "Queue-Id": ["Q1"],
                "User": ["alice"],
            },
        )
        self.assertEqual(ScanFacts(mail_from="").headers(), {"From": ["<>"]})  # a bounce
        self.assertEqual(ScanFacts().headers(), {})
        # the client's words cannot add a header line
        self.assertEqual(ScanFacts(helo="x\r\nUser: root").headers(), {"Helo": ["x User: root"]})

    def stored(self, **changes: Any) -> bytes:
        recipients = changes.pop("recipients", ["b@example.org"])
        fields: dict[str, Any] = {
            "mail_from": "a@example.com",
            "recipients": [Recipient(a, a) for a in recipients],
            "helo": "mail.example.com",
            "client_address": "192.0.2.7",
            "queue_id": "4AbC",
            "server_name": "mx.example.org",
        }
        envelope = Envelope(**(fields | changes))
        return (
            f"Return-Path: <{envelope.mail_from}>\r\n".encode()
            + received_header(envelope, authenticated_sender=True)
            + MESSAGE
        )

    def test_from_our_trace_fields(self) -> None:
        facts = scan_facts(self.stored(), "b@example.org")
        self.assertEqual(facts.ip, "192.0.2.7")
        self.assertEqual(facts.helo, "mail.example.com")
        self.assertEqual(facts.mail_from, "a@example.com")
        self.assertEqual(facts.recipients, ("b@example.org",))
        self.assertEqual(facts.queue_id, "4AbC")
        self.assertEqual(facts.user, "")  # not authenticated

    def test_authenticated(self) -> None:
        raw = self.stored(authenticated_as="alice", protocol="ESMTPA")
        self.assertEqual(scan_facts(raw, "b@example.org").user, "alice")

    def test_several_recipients_and_a_bounce(self) -> None:
        raw = self.stored(mail_from="", recipients=["b@example.org", "c@example.org"])
        facts = scan_facts(raw, "c@example.org")
        self.assertEqual(facts.recipients, ("c@example.org",))  # this copy's mailbox
        self.assertEqual(facts.mail_from, "")

    def test_not_ours(self) -> None:
        facts = scan_facts(b"Received: from elsewhere by mx.example\r\n" + MESSAGE, "b@x.org")
        self.assertEqual((facts.ip, facts.helo, facts.mail_from), ("", "", None))
        self.assertEqual(facts.recipients, ("b@x.org",))


class Client(_Case):
    async def test_sends_message_and_facts(self) -> None:
        fake = self.serve()
        facts = ScanFacts(ip="192.0.2.1", mail_from="a@example.com", recipients=("b@x.org",))
        report = await self.client().check(MESSAGE, facts)
        self.assertEqual(report.score, 6.5)
        path, headers, body = fake.requests[0]
        self.assertEqual(path, b"/checkv2")
        self.assertEqual(body, MESSAGE)
        self.assertEqual(headers[b"ip"], [b"192.0.2.1"])
        self.assertEqual(headers[b"from"], [b"a@example.com"])
        self.assertEqual(headers[b"rcpt"], [b"b@x.org"])
        self.assertNotIn(b"user", headers)

    async def test_http_500(self) -> None:
        fake = self.serve()
        fake.code, fake.body = 500, b'{"error": "task timeout"}'
        e = await self.failure(self.client().check(MESSAGE, ScanFacts()))
        self.assertEqual(str(e), "rspamd answered HTTP 500: task timeout")
        fake.body = b"<h1>Internal Server Error</h1>"
        e = await self.failure(self.client().check(MESSAGE, ScanFacts()))
        self.assertIn("HTTP 500: <h1>Internal Server Error", str(e))

    async def test_garbage_json(self) -> None:
        fake = self.serve()
        fake.body = b'{"score": 1, "required_'
        e = await self.failure(self.client().check(MESSAGE, ScanFacts()))
        self.assertIn("not JSON", str(e))

    async def test_answer_too_big(self) -> None:
        fake = self.serve()
        fake.body = b'{"score": 1, "pad": "' + b"x" * 5000 + b'"}'
        e = await self.failure(self.client(max_answer=1000).check(MESSAGE, ScanFacts()))
        self.assertEqual(str(e), "rspamd's answer is larger than 1000 bytes")

    async def test_answer_cut_short(self) -> None:
        fake = self.serve()
        fake.cut = True
        e = await self.failure(self.client().check(MESSAGE, ScanFacts()))
        self.assertIn("rspamd", str(e))
        self.assertFalse(e.timeout)

    async def test_never_answers(self) -> None:
        fake = self.serve()
        fake.hang = True
        clock = Clock()
        asked = self.client(timeout=7, clock=clock).check(MESSAGE, ScanFacts())
        await fake.arrived  # the request is in; rspamd sits on it
        self.assertFalse(asked.called)
        clock.advance(6.9)
        self.assertFalse(asked.called)
        clock.advance(0.2)
        e = await self.failure(asked)
        self.assertTrue(e.timeout)
        self.assertEqual(str(e), f"rspamd at {self.url} did not answer within 7 s")

    async def test_refused(self) -> None:
        with socket.socket() as s:  # a port nobody listens on (bound, never listening)
            s.bind(("127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{s.getsockname()[1]}"
            e = await self.failure(self.client().check(MESSAGE, ScanFacts()))
        self.assertIn("refused the connection (is it running?)", str(e))


def _entry(mailbox: str = "b@example.org", size: int = 100) -> Entry:
    ref = MessageRef(mailbox, "INBOX", "1700000000.M1P1.host")
    return Entry(seq=1, ref=ref, uid=1, size=size, received=1700000000, flags=frozenset())


class Scores(_Case):
    def scores(self, **kwargs: Any) -> SpamScores:
        return SpamScores(self.client(**kwargs), max_message_size=1000, now=lambda: 1700000000)

    async def test_not_configured(self) -> None:
        out = await SpamScores(None, max_message_size=0).get(lambda e: b"", _entry(), False)
        self.assertEqual(out, {"configured": False, "why": NOT_CONFIGURED})

    async def test_asked_once_then_cached(self) -> None:
        fake = self.serve()
        scores = self.scores()
        first = await scores.get(lambda e: MESSAGE, _entry(), False)
        self.assertEqual(first["score"], 6.5)
        self.assertFalse(first["cached"])
        self.assertEqual(first["scanned_at"], "2023-11-14T22:13:20Z")
        self.assertEqual(first["asked"]["rcpt"], ["b@example.org"])
        second = await scores.get(lambda e: MESSAGE, _entry(), False)
        self.assertTrue(second["cached"])
        self.assertEqual(len(fake.requests), 1)
        again = await scores.get(lambda e: MESSAGE, _entry(), True)  # ?refresh=1
        self.assertFalse(again["cached"])
        self.assertEqual(len(fake.requests), 2)

    async def test_two_looks_share_one_question(self) -> None:
        fake = self.serve()
        fake.hang = True
        scores = self.scores()
        one = defer.ensureDeferred(scores.get(lambda e: MESSAGE, _entry(), False))
        await fake.arrived
        two = defer.ensureDeferred(scores.get(lambda e: MESSAGE, _entry(), False))
        one.cancel()  # the first viewer goes away: the question goes on for the second
        self.failureResultOf(one, defer.CancelledError)
        request = fake.held.pop()
        request.write(json.dumps(ANSWER).encode())
        request.finish()
        self.assertEqual((await two)["score"], 6.5)
        self.assertEqual(len(fake.requests), 1)

    async def test_too_big_not_sent(self) -> None:
        fake = self.serve()
        out = await self.scores().get(lambda e: MESSAGE, _entry(size=5000), False)
        self.assertEqual((out["configured"], out["scanned"]), (True, False))
        self.assertIn("larger than [checks] max_message_size", out["why"])
        self.assertEqual(fake.requests, [])

    async def test_errors_are_502_and_504_and_not_cached(self) -> None:
        fake = self.serve()
        fake.code, fake.body = 500, b"boom"
        scores = self.scores()
        request = DummyRequest([b""])
        out = await handle(scores, lambda e: MESSAGE, request, None, _entry())  # type: ignore[arg-type]
        self.assertEqual(request.responseCode, 502)
        self.assertEqual(out["error"], "rspamd answered HTTP 500: boom")
        self.assertEqual((out["status"], out["configured"], out["rspamd"]), (502, True, self.url))
        fake.code, fake.body = 200, json.dumps(ANSWER).encode()
        request = DummyRequest([b""])
        out = await handle(scores, lambda e: MESSAGE, request, None, _entry())  # type: ignore[arg-type]
        self.assertEqual(out["score"], 6.5)  # asked again: the failure was not kept

        fake.hang = True
        fake.arrived = Deferred()
        clock = Clock()
        slow = self.scores(timeout=3, clock=clock)
        request = DummyRequest([b""])
        answer = defer.ensureDeferred(handle(slow, lambda e: MESSAGE, request, None, _entry()))  # type: ignore[arg-type]
        await fake.arrived
        clock.advance(3)
        out = await answer
        self.assertEqual(request.responseCode, 504)
        self.assertIn("did not answer within 3 s", out["error"])
