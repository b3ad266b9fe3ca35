"""``CheckingSink``: the inbound checks between the SMTP receiver and where messages go.

An ``IMessageSink`` decorator (as ``mailhub.smtp.submission.SubmissionSink`` is). Per message:

1. ``write``: the message (our ``Received:`` line first) is held: in memory up to ``spool_size``
   octets, beyond it in an unnamed temporary file (nothing is left behind by a crash). The file
   is made, written and closed in ``run`` (the disk never blocks the reactor; as
   ``mailhub.spooled``): one write at a time per message, so it stays in order; what arrives
   meanwhile is held, and once that is ``spool_size`` octets ``ready()`` tells the receiver to
   stop reading until the write is done (memory stays bounded). A failed write is the
   ``DeliveryError`` of the next ``write`` or of ``commit``, which waits for the last write;
2. ``commit``: ``judge`` (``mailhub.checks.inbound.judge``, bound to the resolver and policy)
   decides. A refusal (550 5.7.x, 451 4.7.x) is ``MessageRejected``: the receiver answers it at
   the end of DATA and nothing is stored. Otherwise every ``Authentication-Results:`` field
   carrying our authserv-id is removed (RFC 8601 5: it cannot be ours, so it is forged) and ours
   goes on top, above our ``Received:`` line;
3. the inner sink gets the message and commits it. Local copies that the policy quarantined go
   to each recipient's Junk folder (``Envelope.folder``); copies for recipients whose mailbox is
   in another domain (an alias forwarding elsewhere, received from an unauthenticated client)
   get an ARC set (RFC 8617 5.1) on top of our results, signed with the DKIM key of the alias's
   own domain (``arc_key``); without such a key the copy goes unsealed (logged).

The inner sink is opened at ``commit`` (once per group of recipients that get the same bytes in
the same folder), so a refused message never reaches it. CPU and disk work (ARC signing, the
temporary file) runs in threads (``run``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from typing import IO, Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhub.checks import eager
from mailhub.checks.inbound import ACCEPT, JUNK, REJECT, TEMPFAIL, Verdict, unchecked
from mailhub.checks.keys import RSA_SHA256, KeyStore, SigningKey
from mailhub.checks.results import AuthenticationResults, authserv_id_of
from mailhub.envelope import Envelope, Recipient
from mailhub.interfaces import DeliveryError, IIncomingMessage, IMessageSink

# Held in memory up to this; beyond it the message goes to a temporary file as it arrives.
SPOOL_SIZE = 1024 * 1024
# Of a message too big to be checked, the first octets are read back to find its header
# section (fields beyond it are not looked at: such a message is not judged either).
MAX_HEADER = 1024 * 1024
_CHUNK = 256 * 1024

# A verdict at once (judged from the caches), or one to wait for.
Judge = Callable[[bytes, Envelope], Verdict | Awaitable[Verdict]]
Sealer = Callable[[bytes, SigningKey, str, AuthenticationResults], bytes]


async def _wait(judging: Awaitable[Verdict]) -> Verdict:
    return await judging


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def arc_key(keystore: KeyStore, domain: str) -> SigningKey | None:
    """The key that seals copies forwarded for ``domain``: its first active RSA DKIM key (RFC
    8617 3.7 defines ARC with rsa-sha256 only), None without one."""
    for key in keystore.keys_for(domain):
        if key.algorithm == RSA_SHA256:
            return key
    return None


# --- removing forged Authentication-Results fields (RFC 8601 5) --------------------------------

_AR_NAME = re.compile(rb"authentication-results[ \t]*:", re.IGNORECASE)


def header_end(message: bytes) -> int:
    """Where the header section ends: the index just past its empty line (the whole message if
    it has none, and 0 if it starts with the empty line)."""
    if message.startswith(b"\r\n"):
        return 2
    i = message.find(b"\r\n\r\n")
    return len(message) if i < 0 else i + 4


def remove_results(head: bytes, authserv_id: str) -> tuple[bytes, int]:
    """``head`` (a header section, or its complete lines) without the Authentication-Results
    fields (with their continuation lines) whose authserv-id is ours; and how many went."""
    if b"authentication-results" not in head.lower():
        return head, 0  # no such field at all (most mail): nothing to look at
    ours = authserv_id.lower()
    lines = head.split(b"\r\n")
    kept: list[bytes] = []
    removed = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        j = i + 1
        while j < len(lines) and lines[j][:1] in (b" ", b"\t"):
            j += 1  # continuation lines (RFC 5322 2.2.3) belong to the field
        m = _AR_NAME.match(line)
        if m is not None and authserv_id_of(b"\r\n".join(lines[i:j])[m.end() :]) == ours:
            removed += 1
        else:
            kept.extend(lines[i:j])
        i = j
    return b"\r\n".join(kept), removed


def _write_chunks(f: IO[bytes] | None, spool_dir: str | None, chunks: list[bytes]) -> IO[bytes]:
    """In ``run``: ``chunks`` appended to the message's temporary file, made by the first write
    (unnamed: nothing is left behind by a crash). A file made here whose write fails is closed
    here (the caller never sees it)."""
    if f is not None:
        f.writelines(chunks)
        return f
    f = tempfile.TemporaryFile(dir=spool_dir)
    try:
        f.writelines(chunks)
    except BaseException:
        with contextlib.suppress(OSError):
            f.close()
        raise
    return f


def _close(f: IO[bytes]) -> None:
    with contextlib.suppress(OSError):
        f.close()


# --- the sink -----------------------------------------------------------------------------------


@implementer(IMessageSink)
class CheckingSink:
    """Wraps ``inner``: each message is judged at commit (see the module docstring).

    ``judge(message, envelope)`` gives the ``Verdict``; ``authserv_id`` names our results;
    ``is_local_domain`` says which mailboxes are ours (the others are forwarded copies);
    ``arc_key(domain)`` the key that seals copies forwarded for that domain (None: unsealed),
    ``seal`` makes the ARC set (``mailhub.checks.arc.arc_seal``). ``max_check_size``: bigger
    messages are not judged (recorded so). ``log_accepted``: log (at info, as the others) the
    verdict of messages accepted without remark too, not only of those the policy acted on
    (``[checks] log_accepted``).
    """

    def __init__(
        self,
        inner: IMessageSink,
        *,
        judge: Judge,
        authserv_id: str,
        is_local_domain: Callable[[str], bool] = lambda domain: True,
        arc_key: Callable[[str], SigningKey | None] | None = None,
        seal: Sealer | None = None,
        max_check_size: int = 10 * 1024 * 1024,
        spool_size: int = SPOOL_SIZE,
        spool_dir: str | None = None,
        run: Callable[..., defer.Deferred[Any]] = deferToThread,
        log: Logger | None = None,
        log_accepted: bool = False,
    ) -> None:
        self.inner = inner
        self.judge = judge
        self.authserv_id = authserv_id
        self.is_local_domain = is_local_domain
        self.arc_key = arc_key
        self.seal = seal
        self.max_check_size = max_check_size
        self.spool_size = spool_size
        self.spool_dir = spool_dir
        self.run = run
        self.log = log if log is not None else Logger(namespace="mailhub.checks")
        # Plain accepts are not logged unless asked: their results are in the message's own
        # header and the receiver logs the message; an event per message costs the reactor
        # (twistd formats and writes every event, whatever its level).
        self.log_accepted = log_accepted
        self.verdicts = 0  # messages judged (for tests and the log)

    def open(self, envelope: Envelope) -> IIncomingMessage:
        return _CheckedMessage(self, envelope)


class _Words:
    """``spf=pass dkim=none ...``, made when the log event is formatted (most are debug)."""

    def __init__(self, results: AuthenticationResults) -> None:
        self.results = results

    def __str__(self) -> str:
        return " ".join(f"{r.method}={r.result}" for r in self.results.results)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


@dataclasses.dataclass
class _Copy:
    """The recipients that get the same bytes in the same folder."""

    recipients: list[Recipient]
    folder: str | None = None
    seal_domain: str | None = None  # the alias's domain whose key seals this copy


@implementer(IIncomingMessage)
class _CheckedMessage:
    def __init__(self, sink: CheckingSink, envelope: Envelope) -> None:
        self._sink = sink
        self.envelope = envelope
        # What arrived, as it arrived (joined once at commit: one copy of the message); once
        # spooling, what waits for the running write.
        self._chunks: list[bytes] = []
        self._held = 0  # octets in _chunks while spooling
        self._spooling = False  # past spool_size: the message goes to _file, in ``run``
        self._file: IO[bytes] | None = None  # made by the first write, in ``run``
        self._writing: defer.Deferred[IO[bytes]] | None = None  # the write ``run`` has
        self._waiting: list[defer.Deferred[None]] = []  # ready()'s, fired when it is done
        self._then: list[defer.Deferred[None]] = []  # _written()'s, fired when all are done
        self._error: DeliveryError | None = None  # why a write in ``run`` failed
        self._size = 0
        self._state = "open"  # open -> committing -> done | aborted

    # -- holding the message ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._state != "open":
            raise DeliveryError(f"message is {self._state}, cannot write")
        self._size += len(data)
        # Kept as it is: only bytes (the receiver's chunks are) cannot change under us.
        self._chunks.append(data if type(data) is bytes else bytes(data))
        if self._spooling:
            self._held += len(data)
            if self._writing is None and self._held >= self._batch():
                self._write_held()
        elif self._size > self._sink.spool_size:
            self._spooling = True
            self._write_held()

    def _batch(self) -> int:
        # What a write to the file takes at least (but the last): a thread hop per _CHUNK,
        # not per receiver's chunk.
        return min(_CHUNK, self._sink.spool_size)

    def ready(self) -> defer.Deferred[None] | None:
        """Flow control (``IIncomingMessage.ready``): None while more may be written; else (a
        write to the file runs and what waits for it is ``spool_size`` or more) a Deferred that
        fires once that write is done and the held octets went to the next one."""
        if self._writing is None or self._held < self._sink.spool_size:
            return None
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        return d

    def _write_held(self) -> None:
        """What is held goes to the file in ``run`` (the sink's disk threads, never the
        reactor's): one write at a time per message, so the file gets it in order."""
        chunks, self._chunks, self._held = self._chunks, [], 0
        self._writing = d = self._sink.run(_write_chunks, self._file, self._sink.spool_dir, chunks)
        d.addCallbacks(self._wrote, self._write_failed)

    def _wrote(self, f: IO[bytes]) -> None:
        self._writing = None
        self._file = f
        if self._state in ("aborted", "done"):
            self._release()  # dropped while the file was being written: closed now
        elif self._held >= self._batch() or (self._state == "committing" and self._chunks):
            self._write_held()
        self._wake()

    def _write_failed(self, failure: Failure) -> None:
        self._writing = None
        e = failure.value
        if isinstance(e, OSError):
            self._error = DeliveryError(f"could not hold the message: {e.strerror or e}")
        else:
            self._sink.log.failure(
                "{queue_id}: spooling failed", failure, queue_id=self.envelope.queue_id
            )
            self._error = DeliveryError(f"could not hold the message: {e}")
        if self._state == "open":
            self._state = "aborted"
        self._release()
        self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        if self._writing is None:  # all written (or failed): commit goes on
            waiting += self._then
            self._then = []
        for d in waiting:
            d.callback(None)

    async def _written(self) -> None:
        """Once all held octets are in the file; the failure of a write if one failed."""
        if self._spooling and self._writing is None and self._chunks and self._error is None:
            self._write_held()  # the last octets, fewer than a batch
        if self._writing is not None:
            d: defer.Deferred[None] = defer.Deferred()
            self._then.append(d)
            await d
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Drop the message. After commit() was called it is too late: the commit finishes."""
        if self._state == "open":
            self._state = "aborted"
            self._release()

    def _release(self) -> None:
        self._chunks = []
        self._held = 0
        if self._writing is not None:
            return  # closed by _wrote once that write is done (not under the worker)
        if self._file is not None:
            # Closed in ``run`` too: freeing a big unlinked file's blocks is disk work.
            f, self._file = self._file, None
            self._sink.run(_close, f).addErrback(lambda _: None)

    # -- judging and passing on ------------------------------------------------------------------

    def commit(self) -> defer.Deferred[str]:
        if self._error is not None:
            return defer.fail(self._error)
        if self._state != "open":
            return defer.fail(DeliveryError(f"message is {self._state}, cannot commit"))
        self._state = "committing"
        try:
            d = self._commit()
        except Exception:
            d = defer.fail()
        if self._state == "done":
            return d  # handed on at once (and released)

        def done(result: Any) -> Any:
            self._state = "done"
            self._release()
            return result

        return d.addBoth(done)

    def _commit(self) -> defer.Deferred[str]:
        """The common case without a coroutine or a Deferred of our own: a message held in
        memory, judged from the caches at once, one copy (or several, none sealed) written
        into the inner sink with our header on top; the inner sink's commit is the answer."""
        sink = self._sink
        if self._spooling or self._size > sink.max_check_size:
            return defer.Deferred.fromCoroutine(self._commit_spooled())
        whole = b"".join(self._chunks)
        judged = self._judge(whole, whole)
        if isinstance(judged, eager.Pending):  # it had to wait (DNS, the DKIM cryptography)
            return judged.deferred  # (it fires with _pass_on's result)
        return self._pass_on(judged, whole)

    def _judge(self, whole: bytes, pass_on: bytes | None = None) -> Verdict | eager.Pending:
        """``judge``'s verdict, at once if it needs no waiting. A bug in the checks must not
        lose mail: the message goes in, recorded as not judged. ``pass_on``: the message to
        give ``_pass_on`` when the verdict has to be waited for (the Deferred of the Pending
        then fires with what ``_pass_on`` gives: one callback for both steps)."""
        try:
            judging = self._sink.judge(whole, self.envelope)
            if isinstance(judging, Verdict):
                return judging  # judged from the caches at once
            if isinstance(judging, defer.Deferred):  # from the caches, the DKIM crypto waited
                verdict: Verdict | eager.Pending = eager.Pending(judging)
            else:
                verdict = eager.start(judging if isinstance(judging, Coroutine) else _wait(judging))
        except Exception:
            return self._judge_failed(Failure())
        if isinstance(verdict, eager.Pending):
            if pass_on is None:
                verdict.deferred.addErrback(self._judge_failed)
            else:
                waiting: defer.Deferred[Any] = verdict.deferred
                _: defer.Deferred[str] = waiting.addCallbacks(  # (typed: it is waiting itself)
                    self._pass_on,
                    self._failed_pass_on,
                    callbackArgs=(pass_on,),
                    errbackArgs=(pass_on,),
                )
        return verdict

    def _failed_pass_on(self, failure: Failure, whole: bytes) -> defer.Deferred[str]:
        return self._pass_on(self._judge_failed(failure), whole)

    def _judge_failed(self, failure: Failure) -> Verdict:
        sink = self._sink
        sink.log.failure("{queue_id}: the checks failed", failure, queue_id=self.envelope.queue_id)
        return unchecked(sink.authserv_id, "not checked: internal error")

    def _pass_on(self, verdict: Verdict, whole: bytes) -> defer.Deferred[str]:
        """A judged message held in memory: refused, or into the inner sink."""
        sink, envelope = self._sink, self.envelope
        self._decided(verdict)
        end = header_end(whole)
        head, removed = remove_results(whole[:end], sink.authserv_id)
        if removed:
            self._log_removed(removed)
        ours = verdict.results.header()
        copies = self._copies(verdict)
        for copy in copies:
            if copy.seal_domain is not None:  # sealing runs in a thread: the long way
                first = ours + head
                return defer.Deferred.fromCoroutine(
                    self._deliver(copies, verdict, ours, first, head, whole[end:], end)
                )
        messages: list[IIncomingMessage] = []
        try:
            for copy in copies:
                message = sink.inner.open(self._envelope_for(copy, len(copies)))
                messages.append(message)
                message.write(ours)
                if removed:
                    message.write(head)
                    message.write(whole[end:])
                else:
                    message.write(whole)  # nothing taken out: the held bytes as they are
        except BaseException:
            for message in messages:
                message.abort()
            raise
        self._release()  # the copies hold it now
        self._state = "done"
        if len(messages) == 1:
            d = messages[0].commit()
            if messages[0].envelope is envelope:
                return d  # its commit gives our queue id: nothing to add
            return d.addCallback(lambda _: envelope.queue_id)
        return self._commit_all(messages)

    def _decided(self, verdict: Verdict) -> None:
        """Count and log the verdict; a refusal (nothing stored: the inner sink is never
        opened) is raised as ``MessageRejected``."""
        self._sink.verdicts += 1
        self._log(verdict)
        if verdict.action in (REJECT, TEMPFAIL):
            assert verdict.reply is not None
            raise verdict.reply.error()

    def _log_removed(self, removed: int) -> None:
        if removed:
            sink = self._sink
            sink.log.info(
                "{queue_id}: removed {n} Authentication-Results field(s) claiming to be ours "
                "({authserv_id}; RFC 8601 5)",
                queue_id=self.envelope.queue_id,
                n=removed,
                authserv_id=sink.authserv_id,
            )

    def _envelope_for(self, copy: _Copy, copies: int) -> Envelope:
        if copies == 1 and copy.folder is None:
            return self.envelope
        e = dataclasses.replace(self.envelope, recipients=copy.recipients)
        e.folder = copy.folder
        return e

    def _commit_all(self, messages: list[IIncomingMessage]) -> defer.Deferred[str]:
        queue_id = self.envelope.queue_id

        def first_failure(f: Failure) -> Failure:
            assert isinstance(f.value, defer.FirstError)
            return f.value.subFailure

        d = defer.gatherResults([m.commit() for m in messages], consumeErrors=True)
        return d.addCallbacks(lambda _: queue_id, first_failure)

    async def _read_back(self, limit: int) -> bytes:
        """The first ``limit`` octets held (all, if fewer)."""
        if self._file is None:
            return b"".join(self._chunks)[:limit]
        f = self._file

        def read() -> bytes:
            f.flush()
            f.seek(0)
            return f.read(limit)

        data: bytes = await self._sink.run(read)
        return data

    async def _commit_spooled(self) -> str:
        """A message held in a temporary file (beyond ``spool_size``) or too big to check."""
        sink = self._sink
        await self._written()  # the file has it all (the last write may still run)
        whole: bytes | None = None
        if self._size <= sink.max_check_size:
            whole = await self._read_back(self._size)
            judged = self._judge(whole)
            if isinstance(judged, eager.Pending):
                verdict = await judged.deferred
            else:
                verdict = judged
            head_source = whole
        else:
            verdict = unchecked(
                sink.authserv_id,
                f"not checked: {self._size} octets is more than [checks] max_message_size "
                f"({sink.max_check_size})",
            )
            head_source = await self._read_back(MAX_HEADER)
        self._decided(verdict)
        end = header_end(head_source)
        if whole is None and end == len(head_source):
            # A header section longer than MAX_HEADER: only its complete lines are looked at.
            end = head_source.rfind(b"\r\n") + 2 if b"\r\n" in head_source else 0
        head, removed = remove_results(head_source[:end], sink.authserv_id)
        self._log_removed(removed)
        ours = verdict.results.header()
        rest = whole[end:] if whole is not None else None
        copies = self._copies(verdict)
        return await self._deliver(copies, verdict, ours, ours + head, head, rest, end)

    async def _deliver(
        self,
        copies: list[_Copy],
        verdict: Verdict,
        ours: bytes,
        first: bytes,
        head: bytes,
        rest: bytes | None,
        end: int,
    ) -> str:
        """Every copy (sealed ones too) into the inner sink; ``rest`` None: the message after
        its header section (``end``) is read back from the temporary file."""
        sink = self._sink
        messages: list[IIncomingMessage] = []
        try:
            tops = [await self._top(copy, ours, first, rest, verdict) for copy in copies]
            for copy, top in zip(copies, tops, strict=True):
                message = sink.inner.open(self._envelope_for(copy, len(copies)))
                messages.append(message)
                message.write(top + head)
            if rest is not None:
                for message in messages:
                    message.write(rest)
            else:
                await self._stream_rest(end, messages)
        except BaseException:
            for message in messages:
                message.abort()
            raise
        self._release()  # the copies hold it now
        return await self._commit_all(messages)

    async def _stream_rest(self, offset: int, messages: list[IIncomingMessage]) -> None:
        """The spooled message after its header section, to every copy in chunks."""
        f = self._file
        if f is None:  # held in memory ([checks] max_message_size below spool_size)
            rest = b"".join(self._chunks)[offset:]
            for message in messages:
                message.write(rest)
            return

        def read(at: int) -> bytes:
            f.seek(at)
            return f.read(_CHUNK)

        at = offset
        while True:
            chunk: bytes = await self._sink.run(read, at)
            if not chunk:
                return
            at += len(chunk)
            for message in messages:
                message.write(chunk)
            for message in messages:
                if (wait := message.ready()) is not None:
                    await wait

    def _copies(self, verdict: Verdict) -> list[_Copy]:
        """Recipients grouped by what their copy gets: a folder (local), a seal (forwarded)."""
        sink, envelope = self._sink, self.envelope
        if not verdict.junk and all(r.mailbox == r.address for r in envelope.recipients):
            # Most mail: no copy to Junk, and no recipient reached through an alias (so none
            # to seal: a forwarded copy's mailbox is another address): one copy for all.
            return [_Copy(list(envelope.recipients))]
        groups: dict[tuple[str | None, str | None], _Copy] = {}
        forwarding = envelope.authenticated_as is None
        for r in envelope.recipients:
            folder = seal = None
            if sink.is_local_domain(domain_of(r.mailbox)):
                folder = verdict.folder_for(r.mailbox)
            elif (
                forwarding and sink.seal is not None and sink.is_local_domain(domain_of(r.address))
            ):
                seal = domain_of(r.address)  # through an alias of ours to another domain
            key = (folder, seal)
            if key not in groups:
                groups[key] = _Copy([], folder, seal)
            groups[key].recipients.append(r)
        return list(groups.values()) or [_Copy(list(envelope.recipients))]

    async def _top(
        self, copy: _Copy, ours: bytes, first: bytes, rest: bytes | None, verdict: Verdict
    ) -> bytes:
        """What goes above the header section for ``copy``: our results, and for a forwarded
        copy an ARC set above them (RFC 8617 5.1)."""
        sink = self._sink
        if copy.seal_domain is None:
            return ours
        key = sink.arc_key(copy.seal_domain) if sink.arc_key is not None else None
        why = ""
        if key is None:
            why = f"no DKIM key for {copy.seal_domain} in the key store"
        elif rest is None or not verdict.checked:
            why = "the message was not checked"
        if why:
            sink.log.info(
                "{queue_id}: forwarded to {recipients} without an ARC seal: {why}",
                queue_id=self.envelope.queue_id,
                recipients=[r.mailbox for r in copy.recipients],
                why=why,
            )
            return ours
        assert key is not None and rest is not None and sink.seal is not None
        try:
            arc_set: bytes = await sink.run(
                sink.seal, first + rest, key, sink.authserv_id, verdict.results
            )
        except Exception:
            sink.log.failure(
                "{queue_id}: ARC sealing failed; forwarded unsealed",
                queue_id=self.envelope.queue_id,
            )
            return ours
        if arc_set and not arc_set.endswith(b"\r\n"):
            arc_set += b"\r\n"
        return arc_set + ours

    def _log(self, verdict: Verdict) -> None:
        if verdict.would == ACCEPT and not self._sink.log_accepted:
            return
        words = _Words(verdict.results)  # formatted only if an observer wants the event
        action = verdict.action
        if action == JUNK and verdict.junk:
            action = f"junk for {', '.join(sorted(verdict.junk))}"
        extra = ""
        if verdict.would != verdict.action:
            extra = f" (without leniency: {verdict.would})"
        # Every message's results are in its header; the log tells what the policy did (and,
        # when asked, what every message's results were).
        self._sink.log.info(
            "{queue_id}: {results} -> {action}{extra}{reason}",
            queue_id=self.envelope.queue_id,
            results=words,
            action=action,
            extra=extra,
            reason=f": {verdict.reason}" if verdict.reason else "",
        )
