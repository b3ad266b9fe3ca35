"""The durable outgoing queue: spool on disk, retry schedule, couriers, DSNs.

- ``Queue`` (queue.py): the twistd service that resumes the spool and runs deliveries.
- ``QueueSink`` (sink.py): enqueue as an ``IMessageSink`` (``Queue.sink``).
- ``Spool`` (spool.py) and ``QueueRecord`` (record.py): the files and their JSON.
- ``RetrySchedule`` (schedule.py): backoff with jitter, lifetime, delay notice.
- ``build_dsn`` (dsn.py): RFC 3464 bounces and delay notices.
- ``admin``: list/show/retry/delete for the ``mailhub queue`` command.
"""

from mailhub.queue.queue import Queue, QueueItem, Router
from mailhub.queue.record import QueueRecord, RecipientState
from mailhub.queue.schedule import RetrySchedule
from mailhub.queue.sink import QueueSink
from mailhub.queue.spool import InlineIO, QueueLocked, Spool, ThreadedIO

__all__ = [
    "InlineIO",
    "Queue",
    "QueueItem",
    "QueueLocked",
    "QueueRecord",
    "QueueSink",
    "RecipientState",
    "RetrySchedule",
    "Router",
    "Spool",
    "ThreadedIO",
]
