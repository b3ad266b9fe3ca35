"""The JSON API over real HTTP on 127.0.0.1, with mail delivered by real SMTP (smtplib) into a
whole in-process mailhub (``mailhub.testing``)."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path
from typing import Any

import treq
from twisted.internet import defer, reactor, task, threads
from twisted.internet.protocol import Protocol

from mailhub.checks.signing import sign
from mailhub.config import ChecksConfig, DKIMConfig, WebConfig
from mailhub.store import MailStore, uidlist
from mailhub.store.dotlock import DotLock
from mailhub.testing import MailhubTestServer
from mailhub.users import UserDB
from mailhub.web import parse, scan
from tests.support.dkim import make_keys, records
from tests.support.localdns import LocalDNS
from tests.support.web import WebTestCase, rich_message


class Messages(WebTestCase):
    async def test_list_newest_first_with_paging(self) -> None:
        await self.start()
        for n in range(3):
            await self.send(subject=f"number {n}")
        page = await self.get("/api/v1/messages?limit=2")
        self.assertEqual(page["total"], 3)
        self.assertEqual([m["subject"] for m in page["messages"]], ["number 2", "number 1"])
        rest = await self.get("/api/v1/messages?limit=2&start=2")
        self.assertEqual([m["subject"] for m in rest["messages"]], ["number 0"])
        first = page["messages"][0]
        self.assertEqual(first["from"], {"name": "", "address": "sender@example.com"})
        self.assertEqual(first["mailbox"], "alice@example.com")
        self.assertFalse(first["seen"])
        self.assertEqual(page["unread"], 3)

    async def test_search_and_mailbox_filter(self) -> None:
        await self.start()
        await self.hub.send("alice@example.com", message=rich_message())
        await self.send("bob@example.com", subject="Weekly report", body="numbers inside\n")
        await self.send("bob@example.com", subject="Lunch?", sender="carol@example.org")

        async def subjects(query: str) -> list[str]:
            page = await self.get("/api/v1/messages?" + query)
            return sorted(m["subject"] for m in page["messages"])

        self.assertEqual(await subjects("mailbox=bob@example.com"), ["Lunch?", "Weekly report"])
        self.assertEqual(await subjects("q=has:attachment"), ["Invoice 42"])
        self.assertEqual(await subjects("q=from:carol"), ["Lunch?"])
        self.assertEqual(await subjects("q=" + "subject:%22weekly report%22"), ["Weekly report"])
        self.assertEqual(await subjects("q=numbers"), ["Weekly report"])  # free text: the body
        self.assertEqual(await subjects("q=to:alice -has:attachment"), [])
        self.assertEqual(
            await subjects("q=is:unread after:2000-01-01"),
            sorted(["Invoice 42", "Lunch?", "Weekly report"]),
        )
        self.assertEqual(await subjects("q=before:2000-01-01"), [])
        bad = await self.call("GET", "/api/v1/messages?q=before:someday")
        self.assertEqual(bad.code, 400)
        self.assertIn("not a date", bad.json["error"])
        # Later free-text searches read no message: each body's text was kept by the first.
        self.patch(scan, "search_text_scanned", lambda fp: self.fail("a body read again"))
        self.patch(parse, "load", lambda raw: self.fail("a message parsed again"))
        self.assertEqual(await subjects("q=INSIDE"), ["Weekly report"])
        self.assertEqual(await subjects("q=%22numbers%20%20inside%22"), ["Weekly report"])

    async def test_one_message_parsed_and_sanitised(self) -> None:
        await self.start()
        await self.hub.send("alice@example.com", message=rich_message())
        message_id = await self.only_id()
        m = await self.get(f"/api/v1/messages/{message_id}")
        self.assertEqual(m["subject"], "Invoice 42")
        self.assertEqual(m["text"].replace("\r\n", "\n"), "Your invoice is attached.\n")
        self.assertIn("<b>invoice</b>", m["html"])
        self.assertNotIn("script", m["html"])
        self.assertNotIn("onclick", m["html"])
        self.assertEqual(m["remote_content"], 1)
        self.assertIn(["Subject", "Invoice 42"], m["headers"])
        [attachment] = m["attachments"]
        self.assertEqual(
            (attachment["filename"], attachment["content_type"], attachment["size"]),
            ("inv.pdf", "application/pdf", 13),
        )
        part = await self.call("GET", attachment["url"])
        self.assertEqual(part.code, 200)
        self.assertEqual(part.body, b"%PDF-1.4 fake")
        self.assertIn('filename="inv.pdf"', part.header("Content-Disposition"))
        raw = await self.call("GET", f"/api/v1/messages/{message_id}/raw")
        self.assertTrue(raw.body.startswith(b"Return-Path: <sender@example.com>\r\nReceived: "))
        self.assertIn(b"Subject: Invoice 42", raw.body)

    async def test_html_view_carries_a_strict_policy(self) -> None:
        await self.start()
        await self.hub.send("alice@example.com", message=rich_message())
        message_id = await self.only_id()
        page = await self.call("GET", f"/api/v1/messages/{message_id}/html")
        csp = page.header("Content-Security-Policy")
        self.assertIn("default-src 'none'", csp)
        self.assertIn("img-src data:;", csp)  # remote images blocked
        self.assertIn("sandbox", csp)
        self.assertNotIn(b"<script", page.body)
        shown = await self.call("GET", f"/api/v1/messages/{message_id}/html?remote=1")
        self.assertIn("img-src data: http: https:", shown.header("Content-Security-Policy"))

    async def test_envelope_and_tls_auth_facts(self) -> None:
        self.services = ("smtp", "submission", "web")
        await self.start()
        await self.send(subject="plain")
        await self.hub.send(
            "alice@example.com",
            subject="secure",
            port="submission",
            starttls=True,
            login=("app@example.com", "any"),
            sender="app@example.com",
        )
        page = await self.get("/api/v1/messages")
        by_subject = {m["subject"]: m["id"] for m in page["messages"]}
        plain = (await self.get(f"/api/v1/messages/{by_subject['plain']}"))["envelope"]
        self.assertEqual(plain["mail_from"], "sender@example.com")
        self.assertEqual(plain["recipient"], "alice@example.com")
        self.assertEqual(plain["client_address"], "127.0.0.1")
        self.assertEqual(
            (plain["protocol"], plain["tls"], plain["authenticated"]), ("ESMTP", False, False)
        )
        secure = (await self.get(f"/api/v1/messages/{by_subject['secure']}"))["envelope"]
        self.assertEqual(secure["protocol"], "ESMTPSA")
        self.assertTrue(secure["tls"])
        self.assertTrue(secure["authenticated"])
        self.assertIn("TLS", secure["tls_cipher"])

    async def test_mark_seen_is_the_maildir_flag_imap_sees(self) -> None:
        hub = await self.start()
        await self.send()
        message_id = await self.only_id()
        m = await self.call("PATCH", f"/api/v1/messages/{message_id}", json={"seen": True})
        self.assertEqual(m.code, 200, m.body)
        self.assertTrue(m.json["seen"])
        # Another reader of the same tree (a new store object, as an IMAP process would be).
        other = MailStore(hub.config.mail_dir, hostname="localhost")
        [info] = other.mailbox("alice@example.com").folder().sync().messages
        self.assertIn("S", info.flags)
        again = await self.get("/api/v1/messages?q=is:unread")
        self.assertEqual(again["total"], 0)
        await self.call("PATCH", f"/api/v1/messages/{message_id}", json={"seen": False})
        [info] = other.mailbox("alice@example.com").folder().sync().messages
        self.assertNotIn("S", info.flags)
        bad = await self.call("PATCH", f"/api/v1/messages/{message_id}", json={"seen": "yes"})
        self.assertEqual(bad.code, 400)

    async def test_mark_seen_waits_for_a_busy_folder_lock(self) -> None:
        hub = await self.start()
        await self.send()
        message_id = await self.only_id()
        # Another live process holds the folder's UID lock (this one's pid: alive).
        lock = hub.config.mail_dir / "example.com" / "alice" / uidlist.LOCKNAME
        holder = DotLock(lock, in_reactor=lambda: False)
        holder.acquire()
        self.addCleanup(holder.release)
        patch = defer.ensureDeferred(
            self.call("PATCH", f"/api/v1/messages/{message_id}", json={"seen": True})
        )
        # The server answers other requests meanwhile (the reactor does not wait)...
        self.assertEqual((await self.get("/api/v1/messages"))["total"], 1)
        self.assertFalse(patch.called)  # ...while the PATCH waits for the holder
        holder.release()
        m = await patch
        self.assertEqual(m.code, 200, m.body)
        self.assertTrue(m.json["seen"])

    async def test_delete_one_then_all_of_a_mailbox_then_everything(self) -> None:
        hub = await self.start()
        for to in (
            "alice@example.com",
            "alice@example.com",
            "bob@example.com",
            "carol@example.com",
        ):
            await self.send(to)
        first = (await self.get("/api/v1/messages?mailbox=alice@example.com"))["messages"][0]
        gone = await self.call("DELETE", f"/api/v1/messages/{first['id']}")
        self.assertEqual(gone.json["deleted"], [first["id"]])
        self.assertEqual((await self.call("GET", f"/api/v1/messages/{first['id']}")).code, 404)
        self.assertEqual(len(hub.messages("alice@example.com")), 1)
        box = await self.call("DELETE", "/api/v1/messages?mailbox=bob@example.com")
        self.assertEqual(len(box.json["deleted"]), 1)
        self.assertEqual(hub.messages("bob@example.com"), [])
        self.assertEqual(len(hub.messages("alice@example.com")), 1)
        everything = await self.call("DELETE", "/api/v1/messages")
        self.assertEqual(len(everything.json["deleted"]), 2)
        self.assertEqual(hub.messages(), [])
        self.assertEqual((await self.get("/api/v1/messages"))["total"], 0)


class Errors(WebTestCase):
    async def test_errors_are_json_with_fitting_statuses(self) -> None:
        await self.start()
        await self.send()
        message_id = await self.only_id()
        cases = [
            ("GET", "/api/v1/messages/not-an-id", {}, 404),
            ("GET", "/api/v1/nothing-here", {}, 404),
            ("PUT", "/api/v1/messages", {}, 405),
            ("GET", "/api/v1/messages?limit=0", {}, 400),
            ("GET", "/api/v1/messages?q=%22unbalanced", {}, 400),
            ("GET", "/api/v1/wait?timeout=forever", {}, 400),
            ("GET", "/api/v1/wait?since=zzz-1", {}, 400),
            ("GET", f"/api/v1/messages/{message_id}/parts/99", {}, 404),
            (
                "PATCH",
                f"/api/v1/messages/{message_id}",
                {"data": b"{", "headers": {"Content-Type": "application/json"}},
                400,
            ),
            (
                "PATCH",
                f"/api/v1/messages/{message_id}",
                {
                    "data": b"seen=1",
                    "headers": {"Content-Type": "application/x-www-form-urlencoded"},
                },
                415,
            ),
            ("POST", f"/api/v1/messages/{message_id}/release", {"json": {"port": 25}}, 400),
        ]
        for method, path, kwargs, status in cases:
            response = await self.call(method, path, **kwargs)
            self.assertEqual(response.code, status, (method, path, response.body))
            self.assertEqual(response.header("Content-Type"), "application/json; charset=utf-8")
            self.assertEqual(response.json["status"], status)
            self.assertTrue(response.json["error"])
        self.assertEqual(
            (await self.call("PUT", "/api/v1/messages")).header("Allow"), "DELETE, GET, HEAD"
        )

    async def test_large_body_refused_with_413(self) -> None:
        await self.start()
        response = await self.call(
            "POST",
            "/api/v1/faults",
            data=b"x" * (2 * 1024 * 1024),
            headers={"Content-Type": "application/json"},
        )
        self.assertEqual(response.code, 413)
        self.assertEqual(response.json["status"], 413)

    async def test_cross_site_requests_refused(self) -> None:
        await self.start()
        await self.send()
        message_id = await self.only_id()
        evil = await self.call(
            "DELETE", f"/api/v1/messages/{message_id}", headers={"Origin": "http://evil.example"}
        )
        self.assertEqual(evil.code, 403)
        same = await self.call(
            "DELETE", f"/api/v1/messages/{message_id}", headers={"Origin": self.base}
        )
        self.assertEqual(same.code, 200)

    async def test_health_readiness_and_openapi(self) -> None:
        await self.start()
        self.assertEqual((await self.get("/api/v1/health"))["status"], "ok")
        self.assertEqual((await self.get("/readyz"))["status"], "ready")
        spec = await self.get("/api/v1/openapi.json")
        self.assertEqual(spec["openapi"], "3.1.0")
        for path in ("/api/v1/messages", "/api/v1/wait", "/api/v1/messages/{id}/release"):
            self.assertIn(path, spec["paths"])
        page = await self.call("GET", "/")
        self.assertEqual(page.code, 200)
        self.assertIn(b"<title>mailhub</title>", page.body)
        self.assertIn("script-src 'self'", page.header("Content-Security-Policy"))


class Waiting(WebTestCase):
    """GET /api/v1/wait: never misses a message, never returns one twice."""

    async def test_message_that_arrived_before_the_wait_is_returned_at_once(self) -> None:
        await self.start(web=WebConfig(login=False, poll_interval=3600))
        self.without_inotify()  # no poll, no inotify: only the wait's own scan can see mail
        cursor = (await self.get("/api/v1/messages"))["cursor"]
        await self.send("bob@example.com", subject="Welcome")  # 250: on disk
        # timeout=0: no long poll at all.
        found = await self.get(f"/api/v1/wait?to=bob@example.com&since={cursor}&timeout=0")
        self.assertEqual([m["subject"] for m in found["messages"]], ["Welcome"])
        self.assertNotEqual(found["cursor"], cursor)
        # The next wait from the new cursor does not see it again.
        again = await self.call(
            "GET", f"/api/v1/wait?to=bob@example.com&since={found['cursor']}&timeout=0"
        )
        self.assertEqual(again.code, 408)
        self.assertEqual(again.json["cursor"], found["cursor"])

    async def test_message_delivered_during_the_wait_wakes_it(self) -> None:
        await self.start(web=WebConfig(login=False, poll_interval=3600))
        cursor = (await self.get("/api/v1/info"))["cursor"]
        waiting = defer.ensureDeferred(
            self.get(f"/api/v1/wait?to=bob@example.com&subject=Welcome&since={cursor}&timeout=60")
        )
        while not self.site.api.streams:  # the wait is registered and long-polling
            await task.deferLater(reactor, 0.01)
        await self.send("carol@example.com", subject="Welcome")  # another recipient: no match
        await self.send("bob@example.com", subject="Unrelated")  # another subject: no match
        self.assertFalse(waiting.called)
        await self.send("bob@example.com", subject="Welcome")
        found = await waiting
        self.assertEqual(
            [(m["mailbox"], m["subject"]) for m in found["messages"]],
            [("bob@example.com", "Welcome")],
        )

    async def test_timeout_answers_408_with_the_cursor(self) -> None:
        await self.start()
        cursor = (await self.get("/api/v1/messages"))["cursor"]
        response = await self.call("GET", "/api/v1/wait?to=nobody@example.com&timeout=0.2")
        self.assertEqual(response.code, 408)
        self.assertEqual(response.json["cursor"], cursor)
        self.assertEqual(response.header("X-Mailhub-Cursor"), cursor)
        self.assertFalse(self.site.api.streams)  # the waiter is gone

    async def test_shutdown_answers_open_waits(self) -> None:
        await self.start()
        waiting = defer.ensureDeferred(self.call("GET", "/api/v1/wait?to=x@example.com&timeout=60"))
        while not self.site.api.streams:
            await task.deferLater(reactor, 0.01)
        api = self.site.api
        await self.hub.stop()
        response = await waiting
        self.assertEqual(response.code, 408)
        self.assertEqual(api.streams, {})

    async def test_without_since_every_matching_message_counts(self) -> None:
        await self.start()
        await self.send("dave@example.com", subject="one")
        await self.send("dave@example.com", subject="two")
        found = await self.get("/api/v1/wait?to=dave@example.com&timeout=0")
        self.assertEqual([m["subject"] for m in found["messages"]], ["one", "two"])  # oldest first


class LiveEvents(WebTestCase):
    async def test_event_stream_reports_new_and_deleted_mail(self) -> None:
        await self.start()
        response = await treq.get(self.base + "/api/v1/events", pool=self.pool, unbuffered=True)
        self.assertEqual(
            response.headers.getRawHeaders("Content-Type"), ["text/event-stream; charset=utf-8"]
        )
        stream = _Collector()
        response.deliverBody(stream)
        await stream.until(b"event: hello")
        await self.send("erin@example.com", subject="Live!")
        await stream.until(b"event: new")
        event = stream.event("new")
        self.assertEqual(event["subject"], "Live!")
        await self.call("DELETE", f"/api/v1/messages/{event['id']}")
        await stream.until(b"event: deleted")
        self.assertEqual(stream.event("deleted")["id"], event["id"])
        stream.transport.stopProducing()

    async def test_a_message_that_cannot_be_summarised_is_reported(self) -> None:
        # issue 12: a failure other than "message gone" reaches the client as a ``failed``
        # event naming the message (the stream goes on), live and on a Last-Event-ID replay
        await self.start()
        feed = self.site.api.feed
        summary = feed.summary
        broken: list[str] = []

        def failing(entry: Any) -> Any:
            found = summary(entry)
            if found.subject == "Broken":
                broken.append(entry.id)
                raise RuntimeError("injected")
            return found

        self.patch(feed, "summary", failing)
        before = feed.cursor
        response = await treq.get(self.base + "/api/v1/events", pool=self.pool, unbuffered=True)
        stream = _Collector()
        response.deliverBody(stream)
        await stream.until(b"event: hello")
        await self.send("erin@example.com", subject="Broken")
        await self.send("erin@example.com", subject="Fine")
        await stream.until(b'"subject": "Fine"')  # events come in order: "failed" is in
        stream.transport.stopProducing()
        self.assertIn(b"event: failed", stream.data)
        failed = stream.event("failed")
        self.assertEqual((failed["id"], failed["event"], failed["status"]), (broken[0], "new", 500))
        # a reconnect from before both: the same answer, in order
        response = await treq.get(
            self.base + "/api/v1/events",
            headers={"Last-Event-ID": before},
            pool=self.pool,
            unbuffered=True,
        )
        replay = _Collector()
        response.deliverBody(replay)
        await replay.until(b'"subject": "Fine"')
        self.assertLess(replay.data.index(b"event: failed"), replay.data.index(b"event: new"))
        self.assertEqual(replay.event("failed")["id"], broken[0])
        replay.transport.stopProducing()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


class _Collector(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.waiting: list[tuple[bytes, defer.Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for needle, d in list(self.waiting):
            if needle in self.data:
                self.waiting.remove((needle, d))
                d.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        pass

    def until(self, needle: bytes) -> defer.Deferred[None]:
        if needle in self.data:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self.waiting.append((needle, d))
        return d

    def event(self, kind: str) -> Any:
        for block in self.data.split(b"\n\n"):
            lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
            if lines.get(b"event") == kind.encode():
                found = json.loads(lines[b"data"])
        return found


class Release(WebTestCase):
    async def test_release_relays_to_the_named_server(self) -> None:
        await self.start()
        target = await MailhubTestServer.started(self, services=("smtp",))
        await self.hub.send("alice@example.com", message=rich_message())
        message_id = await self.only_id()
        response = await self.call(
            "POST",
            f"/api/v1/messages/{message_id}/release",
            json={"host": "localhost", "port": target.smtp_port, "to": ["zed@example.org"]},
        )
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(
            [(r["recipient"], r["outcome"]) for r in response.json["results"]],
            [("zed@example.org", "delivered")],
        )
        [copy] = target.messages("zed@example.org")
        self.assertEqual(copy.subject, "Invoice 42")
        # One Return-Path (the target's own), with the original sender; our trace header stays.
        # One Return-Path (the target's, with our envelope sender); our trace header travels on.
        self.assertEqual(copy.message.get_all("Return-Path"), ["<sender@example.com>"])
        self.assertEqual(len(copy.message.get_all("Received")), 2)

    async def test_release_to_a_server_that_refuses_is_502(self) -> None:
        await self.start()
        target = await MailhubTestServer.started(
            self,
            services=("smtp",),
            faults=[{"stage": "rcpt", "action": "reply", "code": 550, "enhanced": "5.1.1"}],
        )
        await self.send()
        message_id = await self.only_id()
        response = await self.call(
            "POST",
            f"/api/v1/messages/{message_id}/release",
            json={"host": "127.0.0.1", "port": target.smtp_port},
        )
        self.assertEqual(response.code, 502)
        [result] = response.json["results"]
        self.assertEqual((result["outcome"], result["status"]), ("permanent", "5.1.1"))
        self.assertEqual(target.messages(), [])


class Faults(WebTestCase):
    async def test_rules_added_at_run_time_take_effect(self) -> None:
        await self.start()
        added = await self.call(
            "POST",
            "/api/v1/faults",
            json={"stage": "rcpt", "action": "reply", "code": 550, "recipient": "fail-550@*"},
        )
        self.assertEqual(added.code, 201, added.body)
        rule_id = added.json["id"]
        self.assertEqual([r["id"] for r in (await self.get("/api/v1/faults"))["rules"]], [rule_id])
        refused = await self.hub.send(["fail-550@example.com", "ok@example.com"])
        self.assertEqual(list(refused), ["fail-550@example.com"])
        bad = await self.call("POST", "/api/v1/faults", json={"stage": "nowhere"})
        self.assertEqual(bad.code, 400)
        self.assertEqual((await self.call("DELETE", f"/api/v1/faults/{rule_id}")).code, 200)
        self.assertEqual((await self.call("DELETE", f"/api/v1/faults/{rule_id}")).code, 404)
        self.assertEqual((await self.get("/api/v1/faults"))["rules"], [])


class Login(WebTestCase):
    async def start_with_users(self) -> MailhubTestServer:
        users = Path(self.mktemp())
        db = UserDB(users)
        db.add("admin@example.com", "admin-secret")
        db.add("alice@example.com", "alice-secret")
        hub = await self.start(
            users_file=users, web=WebConfig(login=True, admins=("admin@example.com",))
        )
        return hub

    def auth(self, user: str, password: str) -> dict[str, Any]:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"headers": {"Authorization": f"Basic {token}"}}

    async def test_basic_login_and_what_each_user_sees(self) -> None:
        await self.start_with_users()
        await self.send("alice@example.com", subject="for alice")
        await self.send("bob@example.com", subject="for bob")
        anonymous = await self.call("GET", "/api/v1/messages")
        self.assertEqual(anonymous.code, 401)
        self.assertIn("Basic", anonymous.header("WWW-Authenticate"))
        self.assertEqual((await self.call("GET", "/")).code, 401)
        self.assertEqual((await self.call("GET", "/api/v1/health")).code, 200)
        wrong = await self.call("GET", "/api/v1/messages", **self.auth("alice@example.com", "x"))
        self.assertEqual(wrong.code, 401)
        admin = await self.call(
            "GET", "/api/v1/messages", **self.auth("admin@example.com", "admin-secret")
        )
        self.assertEqual(admin.json["total"], 2)
        alice = await self.call(
            "GET", "/api/v1/messages", **self.auth("alice@example.com", "alice-secret")
        )
        self.assertEqual([m["subject"] for m in alice.json["messages"]], ["for alice"])
        bobs = (
            admin.json["messages"][0]
            if admin.json["messages"][0]["subject"] == "for bob"
            else admin.json["messages"][1]
        )
        hidden = await self.call(
            "GET",
            f"/api/v1/messages/{bobs['id']}",
            **self.auth("alice@example.com", "alice-secret"),
        )
        self.assertEqual(hidden.code, 404)
        faults = await self.call(
            "GET", "/api/v1/faults", **self.auth("alice@example.com", "alice-secret")
        )
        self.assertEqual(faults.code, 403)


class RequestLimits(WebTestCase):
    """Over-long request lines and header sections get the API's JSON error with the status
    that names the problem (RFC 9110 15.5.15: 414; RFC 6585 5: 431), then the connection closes."""

    def exchange(self, request: bytes) -> defer.Deferred[bytes]:
        port = self.hub.ports["web"]

        def talk() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                try:
                    s.sendall(request)
                except OSError:
                    pass  # the server may close before it has read everything
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
                return answer

        return threads.deferToThread(talk)

    def assertRefused(self, answer: bytes, status: int, words: str) -> None:
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 %d " % status), head)
        self.assertIn(b"Content-Type: application/json; charset=utf-8", head)
        self.assertIn(b"Connection: close", head)
        error = json.loads(body)
        self.assertEqual(error["status"], status)
        self.assertIn(words, error["error"])

    async def test_request_line_over_the_limit_is_414(self) -> None:
        await self.start()
        target = b"/api/v1/messages?q=" + b"x" * (17 * 1024)
        answer = await self.exchange(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertRefused(answer, 414, "request line longer than 16384 octets")
        # No CRLF yet (the line is still coming): the same answer, at once.
        answer = await self.exchange(b"GET /" + b"y" * (20 * 1024))
        self.assertRefused(answer, 414, "request line")

    async def test_header_section_over_the_limit_is_431(self) -> None:
        await self.start()
        one_big = (
            b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\nX-Big: "
            + b"z" * 17000
            + b"\r\n\r\n"
        )
        self.assertRefused(await self.exchange(one_big), 431, "header")
        many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(200))  # ~21 KB
        answer = await self.exchange(
            b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n" + many + b"\r\n"
        )
        self.assertRefused(answer, 431, "request headers longer than 16384 octets")
        fields = b"".join(b"X-%d: 1\r\n" % i for i in range(501))
        answer = await self.exchange(
            b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n" + fields + b"\r\n"
        )
        self.assertRefused(answer, 431, "more than 500 request header fields")

    async def test_requests_within_the_limits_are_served(self) -> None:
        await self.start()
        target = b"/api/v1/health?pad=" + b"p" * 15000
        headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(100))  # ~11 KB
        answer = await self.exchange(
            b"GET "
            + target
            + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            + headers
            + b"\r\n"
        )
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertEqual(json.loads(body)["status"], "ok")


def _with_results(*fields: bytes, subject: bytes = b"Auth") -> bytes:
    """A message carrying the ``Authentication-Results:`` fields given (top first)."""
    head = b"".join(b"Authentication-Results: " + f + b"\r\n" for f in fields)
    return (
        head + b"From: App <app@example.com>\r\nTo: alice@example.com\r\n"
        b"Subject: " + subject + b"\r\n\r\nHello\r\n"
    )


class Authentication(WebTestCase):
    """A message's authentication results in the single-message answer. The messages are put
    in the store directly (as IMAP APPEND does): the SMTP listeners' own checks write (and
    replace) the field with our authserv-id, and here the field is the input."""

    def store(self, raw: bytes, to: str = "alice@example.com") -> None:
        assert self.hub.service is not None
        self.hub.service.store.mailbox(to, create=True).folder("INBOX").append(raw)

    async def detail(self, raw: bytes) -> dict[str, Any]:
        self.store(raw)
        message_id = await self.only_id()
        message = await self.get(f"/api/v1/messages/{message_id}")
        await self.call("DELETE", f"/api/v1/messages/{message_id}")
        return message  # type: ignore[no-any-return]

    async def test_our_results_explained_and_the_others_named(self) -> None:
        await self.start()
        ours = self.hub.config.hostname.encode()
        raw = _with_results(
            b"mx.elsewhere.example; spf=pass smtp.mailfrom=app@example.com",
            ours + b";\r\n\tspf=pass smtp.mailfrom=bounce@mailer.example.net;\r\n"
            b"\tdkim=pass header.d=mailer.example.net header.s=s1 header.a=ed25519-sha256"
            b" header.b=AbCd/+12;\r\n"
            b"\tdmarc=fail header.from=example.com policy.dmarc=quarantine;\r\n\tarc=none",
        )
        self.store(raw)
        message_id = await self.only_id()
        page = await self.get("/api/v1/messages")
        self.assertNotIn("authentication", page["messages"][0])  # lists stay light
        # The badge reads the top-most field only (where the checks put theirs): not ours here.
        self.assertIsNone(page["messages"][0]["auth"])
        auth = (await self.get(f"/api/v1/messages/{message_id}"))["authentication"]
        self.assertTrue(auth["checked"])
        self.assertEqual(auth["authserv_id"], self.hub.config.hostname)
        self.assertEqual(auth["other_servers"], ["mx.elsewhere.example"])
        self.assertEqual(auth["spf"]["domain"], "mailer.example.net")
        self.assertEqual(
            [(d["domain"], d["selector"], d["algorithm"], d["result"]) for d in auth["dkim"]],
            [("mailer.example.net", "s1", "ed25519-sha256", "pass")],
        )
        self.assertTrue(
            auth["dmarc"]["why"].startswith(
                "DKIM passed but is not aligned with From: example.com ≠ mailer.example.net"
            ),
            auth["dmarc"]["why"],
        )
        self.assertEqual(auth["dmarc"]["policy"], "quarantine")
        self.assertEqual(auth["arc"]["result"], "none")
        self.assertIs(auth["bulk_sender"], False)
        # The answer has the shape the description promises.
        spec = await self.get("/api/v1/openapi.json")
        schema = spec["components"]["schemas"]["Authentication"]["properties"]
        self.assertEqual(set(auth), set(schema))
        for key in ("spf", "dmarc", "arc"):
            self.assertEqual(set(auth[key]), set(schema[key]["oneOf"][0]["properties"]), key)
        self.assertEqual(set(auth["dkim"][0]), set(schema["dkim"]["items"]["properties"]))
        message = spec["components"]["schemas"]["Message"]["allOf"][1]["properties"]
        self.assertIn("authentication", message)

    async def test_the_list_badge(self) -> None:
        await self.start()
        ours = self.hub.config.hostname.encode()
        self.store(_with_results(
            ours.upper() + b"; spf=softfail; dkim=fail; dkim=pass; dmarc=pass; arc=none",
            b"mx.elsewhere.example; spf=pass",
            subject=b"ours on top",
        ))  # fmt: skip
        self.store(_with_results(b"mx.elsewhere.example; spf=pass", subject=b"not ours"))
        self.store(_with_results(ours + b"; arc=pass", subject=b"no spf dkim dmarc"))
        page = await self.get("/api/v1/messages")
        badges = {m["subject"]: m["auth"] for m in page["messages"]}
        self.assertEqual(
            badges,
            {
                "ours on top": {"spf": "softfail", "dkim": "pass", "dmarc": "pass"},
                "not ours": None,
                "no spf dkim dmarc": {"spf": "", "dkim": "", "dmarc": ""},
            },
        )
        spec = await self.get("/api/v1/openapi.json")
        summary = spec["components"]["schemas"]["Summary"]["properties"]
        self.assertEqual(set(summary["auth"]["properties"]), {"spf", "dkim", "dmarc"})
        self.assertEqual(set(page["messages"][0]), set(summary))  # described, all of it

    async def test_a_message_without_our_field_is_not_checked(self) -> None:
        await self.start()
        auth = (await self.detail(_with_results()))["authentication"]
        self.assertFalse(auth["checked"])
        self.assertTrue(auth["summary"].startswith("Not checked:"), auth)
        self.assertIsNone(auth["spf"])
        forged = await self.detail(_with_results(b"mx.google.com; spf=pass; dmarc=pass"))
        self.assertFalse(forged["authentication"]["checked"])
        self.assertEqual(forged["authentication"]["other_servers"], ["mx.google.com"])

    async def test_odd_fields_are_answered_not_a_500(self) -> None:
        await self.start()
        ours = self.hub.config.hostname.encode()
        odd = [
            ours + b'; dmarc=fail reason="From: b\xc3\xbccher.example \xe2\x89\xa0 x"'
            b" header.from=b\xc3\xbccher.example",  # raw UTF-8 (RFC 6532)
            ours + b"; spf=pass smtp.mailfrom=a\xff\xfe@b.example",  # not UTF-8
            ours + b'; dkim=pass (unclosed "comment; spf=',
            ours + b"; " + b"(" * 3000 + b"deep" + b")" * 3000 + b" spf=pass",
            ours + b"\r\n\t; dkim=pass header.d=example.com" * 2000,  # ~80 KB, folded
            b"\x00; spf=\x00pass",
            b"",
        ]
        for value in odd:
            auth = (await self.detail(_with_results(value)))["authentication"]
            self.assertIn("summary", auth)
        umlaut = (await self.detail(_with_results(odd[0])))["authentication"]
        self.assertEqual(umlaut["dmarc"]["from_domain"], "bücher.example")
        self.assertEqual(umlaut["dmarc"]["why"], "From: bücher.example ≠ x")
        bad = (await self.detail(_with_results(odd[1])))["authentication"]
        self.assertEqual(bad["spf"]["mailfrom"], "a\ufffd\ufffd@b.example")
        huge = (await self.detail(_with_results(odd[4])))["authentication"]
        self.assertEqual(len(huge["dkim"]), 20)
        several = await self.detail(
            _with_results(b"a.example; spf=fail", ours + b"; spf=pass", b"b.example; none")
        )
        self.assertEqual(several["authentication"]["spf"]["result"], "pass")
        self.assertEqual(several["authentication"]["other_servers"], ["a.example", "b.example"])


class AuthenticationChecked(WebTestCase):
    """The dev stack's own checks (SPF, DKIM, DMARC over the local DNS server) write the field
    the page explains: a message sent by SMTP, signed by a mailer's domain that is not the From
    domain, shows DMARC failing for the reason the issue names."""

    timeout = 60

    async def test_real_checks_explained(self) -> None:
        keys = make_keys(Path(self.mktemp()).absolute(), "mailer.test")
        dns = LocalDNS(
            {
                "mailer.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
                "_dmarc.example.test": {"TXT": ["v=DMARC1; p=reject"]},
                **{name: {"TXT": [value]} for name, value in records(keys).items()},
            }
        )
        dns.start()
        self.addCleanup(dns.stop)
        # SPF judges where production mail leaves from, not the test's 127.0.0.1.
        checks = ChecksConfig(
            nameservers=(dns.address,), authserv_id="checks.dev.test", dev_sending_ip="192.0.2.10"
        )
        await self.start(checks=checks)
        message = (
            b"From: App <app@example.test>\r\nTo: alice@example.com\r\n"
            b"Subject: Signed by the mailer\r\nMessage-ID: <1@mailer.test>\r\n\r\nHello\r\n"
        )
        signed = sign(message, [k.key for k in keys]) + message
        await self.send(sender="bounce@mailer.test", message=signed)
        message_id = await self.only_id()
        auth = (await self.get(f"/api/v1/messages/{message_id}"))["authentication"]
        self.assertTrue(auth["checked"], auth)
        self.assertEqual(auth["authserv_id"], "checks.dev.test")  # [checks] authserv_id
        self.assertEqual(
            (auth["spf"]["result"], auth["spf"]["domain"]), ("pass", "mailer.test"), auth
        )
        self.assertEqual(
            sorted((d["result"], d["domain"], d["selector"]) for d in auth["dkim"]),
            [("pass", "mailer.test", "e1"), ("pass", "mailer.test", "r1")],
        )
        self.assertEqual(
            sorted(d["algorithm"] for d in auth["dkim"]), ["ed25519-sha256", "rsa-sha256"]
        )
        dmarc = auth["dmarc"]
        self.assertEqual(
            (dmarc["result"], dmarc["policy"], dmarc["from_domain"]),
            ("fail", "reject", "example.test"),
        )
        self.assertEqual((dmarc["dkim_alignment"], dmarc["spf_alignment"]), ("no", "no"))
        self.assertIn("DKIM passed but is not aligned with From: example.test", dmarc["why"])
        self.assertIs(auth["bulk_sender"], False)

    async def test_mail_the_dev_stack_signs_shows_what_a_receiver_sees(self) -> None:
        # The app's domain has keys in [dkim] key_dir: the dev stack signs what the app submits
        # (authenticated), then judges it as a receiver would (SigningSink, CheckingSink).
        self.services = ("submission", "web")
        key_dir = Path(self.mktemp()).absolute()
        keys = make_keys(key_dir, "app.test")
        dns = LocalDNS(
            {
                "app.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
                "_dmarc.app.test": {"TXT": ["v=DMARC1; p=quarantine"]},
                **{name: {"TXT": [value]} for name, value in records(keys).items()},
            }
        )
        dns.start()
        self.addCleanup(dns.stop)
        await self.start(
            checks=ChecksConfig(nameservers=(dns.address,)), dkim=DKIMConfig(key_dir=key_dir)
        )
        await self.hub.send(
            "alice@example.com",
            subject="Welcome",
            sender="app@app.test",
            port="submission",
            starttls=True,
            login=("app@app.test", "any"),
        )
        message_id = await self.only_id()
        auth = (await self.get(f"/api/v1/messages/{message_id}"))["authentication"]
        self.assertEqual(auth["authserv_id"], self.hub.config.hostname)
        self.assertEqual(auth["spf"]["result"], "none", auth)  # authenticated: not judged
        self.assertIn("authenticated submission", auth["spf"]["why"])
        self.assertEqual(sorted(d["selector"] for d in auth["dkim"] if d["result"] == "pass"),
                         ["e1", "r1"], auth)  # fmt: skip
        self.assertEqual(
            (auth["dmarc"]["result"], auth["dmarc"]["dkim_alignment"]), ("pass", "strict")
        )
        self.assertIsNone(auth["bulk_sender"])  # SPF is for the relaying server to pass
        self.assertTrue(
            auth["summary"].startswith("DKIM passes and DMARC passes for From: app.test."),
            auth["summary"],
        )
