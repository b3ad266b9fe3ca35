"""One thread for the inbound checks' cryptography, off the reactor (DKIM of mail judged from
the caches: ``dkimverify.verify_at_once``).

Why a thread for work of tens of microseconds: a public-key check (OpenSSL's RSA, libsodium's
Ed25519) and a hash of a few KiB release the GIL, and on the reactor each release is a wait to
get it back from the store's fsync threads. Under load (benchmarks/inbound_checks.py, cProfile
of the reactor) an RSA-2048 verification of 30 us of CPU took 166-320 us of the reactor's time,
and a message's DKIM took it several such waits. Here a message's whole DKIM cryptography is one
job: the reactor hands it over (a queue put, which never releases the GIL) and serves other
sessions meanwhile; this thread runs every job queued by then and gives their results back in
one ``callFromThread``.

A job that raises gives its Deferred a failure (the caller turns it into a result, never a
traceback in the session). Jobs queued before ``stopService`` are finished; after it ``run``
gives None and the caller does the work itself.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

T = TypeVar("T")

_STOP = object()


class CryptoThread(Service):
    """``run(job)`` runs ``job()`` in this service's thread (reactor thread only)."""

    name = "checks-crypto"

    def __init__(self, reactor: IReactorFromThreads, thread_name: str = "mailhub-checks-crypto"):
        self._reactor = reactor
        self._thread_name = thread_name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.batches = 0  # results handed back (each one callFromThread), for tests
        self.jobs_done = 0

    def startService(self) -> None:
        super().startService()
        self._thread = threading.Thread(target=self._work, name=self._thread_name, daemon=True)
        self._thread.start()

    def stopService(self) -> None:
        """The jobs queued so far are finished (their results reach the reactor if it still
        runs), then the thread ends."""
        super().stopService()
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(_STOP)
            thread.join()

    def run(self, job: Callable[[], T]) -> defer.Deferred[T] | None:
        """A Deferred of ``job()`` run in the thread, or None when the thread is not running
        (then the caller runs ``job`` itself)."""
        if self._thread is None:
            return None
        d: defer.Deferred[T] = defer.Deferred()
        self._jobs.put((job, d))
        return d

    def _work(self) -> None:
        get, waiting = self._jobs.get, self._jobs.empty
        while True:
            item = get()
            done: list[tuple[defer.Deferred[Any], object]] = []
            stop = False
            while True:
                if item is _STOP:
                    stop = True
                else:
                    job, d = item
                    try:
                        result: object = job()
                    except BaseException:
                        result = Failure()
                    done.append((d, result))
                if stop or waiting():
                    break
                item = get()  # the jobs queued meanwhile: their results go back together
            if done:
                self.jobs_done += len(done)
                self.batches += 1
                self._reactor.callFromThread(_deliver, done)
            if stop:
                return


def _deliver(done: list[tuple[defer.Deferred[Any], object]]) -> None:
    """Reactor thread: each job's Deferred fired with its result (or failure)."""
    for d, result in done:
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)


__all__ = ["CryptoThread"]
