"""The store's side of the queue's courier seam: deliver a queued message into local Maildirs.

Used for mail that reaches the queue with local recipients (bounces to our own users, and mail
whose local delivery failed temporarily at receipt). The recipient is resolved through the same
recipient policy as at receipt (plus-addressing, aliases, unknown users), so a queued message
ends where an SMTP-delivered one would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailhub.envelope import Envelope, Recipient
from mailhub.interfaces import AttemptResult, DeliveryError, ICourier, IMessageSink, Outcome

log = Logger()

# Copy the queued body into the store in pieces this big (the sink flushes to disk as it goes).
CHUNK = 256 * 1024

# resolve(address) -> the mailboxes to deliver to, or (status, text) when it is refused.
Resolver = Callable[[str], Sequence[str] | tuple[str, str]]


@implementer(ICourier)
class LocalCourier:
    def __init__(self, sink: IMessageSink, resolve: Resolver) -> None:
        self._sink, self._resolve = sink, resolve

    def deliver(self, item: Any) -> defer.Deferred[list[AttemptResult]]:
        return defer.ensureDeferred(self._deliver(item))

    async def _deliver(self, item: Any) -> list[AttemptResult]:
        results: list[AttemptResult] = []
        recipients: list[Recipient] = []
        for address in item.recipients:
            try:
                target = self._resolve(address)
            except Exception as e:  # never fail the Deferred: unsure means temporary
                log.failure("resolving local recipient {address}", address=address)
                results.append(_result(address, Outcome.TEMPORARY, "4.3.0", str(e)))
                continue
            if isinstance(target, tuple):
                status, text = target
                outcome = Outcome.PERMANENT if status.startswith("5") else Outcome.TEMPORARY
                results.append(_result(address, outcome, status, text))
            else:
                recipients.extend(Recipient(address, mailbox) for mailbox in target)
        if not recipients:
            return results
        attempted = list(dict.fromkeys(r.address for r in recipients))
        envelope = Envelope(
            queue_id=item.queue_id,
            mail_from=item.mail_from,
            recipients=recipients,
            body_type=item.body_type,
            smtputf8=item.smtputf8,
        )
        try:
            message = self._sink.open(envelope)
            try:
                with item.open_body() as body:
                    while chunk := body.read(CHUNK):
                        message.write(chunk)
                        if (wait := message.ready()) is not None:
                            await wait
            except BaseException:
                message.abort()
                raise
            await message.commit()
        except DeliveryError as e:
            outcome = Outcome.PERMANENT if e.permanent else Outcome.TEMPORARY
            status = "5.3.0" if e.permanent else "4.3.0"
            return results + [_result(a, outcome, status, str(e)) for a in attempted]
        except Exception as e:
            log.failure("local delivery of {queue_id}", queue_id=item.queue_id)
            return results + [_result(a, Outcome.TEMPORARY, "4.3.0", str(e)) for a in attempted]
        return results + [AttemptResult(a, Outcome.DELIVERED, "", "2.0.0") for a in attempted]


def _result(address: str, outcome: Outcome, status: str, text: str) -> AttemptResult:
    return AttemptResult(address, outcome, f"x-mailhub; {text}", status)
