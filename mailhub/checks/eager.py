"""Run a coroutine at once, and make a Deferred only if it has to wait.

The inbound checks answer most messages from caches (DNS answers, SPF results): their
coroutines then finish without ever waiting. ``Deferred.fromCoroutine`` costs a Deferred, a
cancellation status and a callback chain each time (a few microseconds, several per message);
``start`` runs the coroutine up to its first real wait and gives its value directly when there
is none, and only otherwise hands the rest of it to a Deferred.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

from twisted.internet import defer

T = TypeVar("T")


class Pending:
    """What ``start`` gives for a coroutine that waits: ``deferred`` fires with its result."""

    __slots__ = ("deferred",)

    def __init__(self, deferred: defer.Deferred[Any]) -> None:
        self.deferred = deferred


def start(coro: Coroutine[Any, Any, T]) -> T | Pending:
    """Run ``coro`` until it finishes or waits: its value (an exception it raises before
    waiting propagates), or ``Pending`` with a Deferred of the rest (as ``fromCoroutine``
    would give). A result that is itself a ``Pending`` cannot be told apart: do not use this
    for coroutines that return one."""
    try:
        waited = coro.send(None)
    except StopIteration as done:
        return done.value
    return Pending(defer.Deferred.fromCoroutine(_rest(coro, waited)))


def _rest(coro: Coroutine[Any, Any, T], waited: Any) -> Generator[Any, Any, T]:
    """The rest of a started coroutine, for ``fromCoroutine`` (which drives a generator as it
    does a coroutine): what it waits on is yielded, and what comes back is sent (or thrown)
    into it. (``await coro`` cannot do this: a suspended coroutine is "being awaited".)"""
    while True:
        try:
            sent = yield waited
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as e:
            try:
                waited = coro.throw(e)
            except StopIteration as done:
                return done.value
        else:
            try:
                waited = coro.send(sent)
            except StopIteration as done:
                return done.value


def as_deferred(value: T | Pending) -> defer.Deferred[T]:
    """``start``'s answer as a Deferred (fired already for a value)."""
    if isinstance(value, Pending):
        return value.deferred
    return defer.succeed(value)
