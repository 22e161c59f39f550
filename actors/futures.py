"""Settling pykka futures: the one way the actors complete or fail a command's future; and
RaftFuture, what the embedding API returns: a pykka future that also calls back when settled,
can be awaited on an asyncio loop without blocking it, and refuses to deadlock.

`complete` and `fail` tolerate a future that is already settled (a caller that timed out and
settled it itself, or a second path reaching the same future during shutdown): the first
outcome wins, and settling again is a no-op rather than an exception inside an actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sys
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, TypeVar

import pykka
from pykka._future import _Unset
from pykka._threading import ThreadingFutureResult

from actors.errors import DeadlockError, RaftTimeoutError

T = TypeVar("T")
_UNSET = _Unset()  # pykka's "no get-hook result yet" (it tests isinstance, so one will do)

log = logging.getLogger(__name__)


def complete(future: pykka.Future[Any], value: Any) -> None:
    """Settle `future` with `value`, unless it is settled already."""
    # queue.Full is pykka's "already settled": whoever holds the future settled it first.
    # (try/except, not contextlib.suppress: this runs once per applied command.)
    try:  # noqa: SIM105
        future.set(value)
    except queue.Full:
        pass


def fail(future: pykka.Future[Any], error: BaseException) -> None:
    """Settle `future` with `error` (raised by its `get`), unless it is settled already."""
    try:  # noqa: SIM105
        future.set_exception((type(error), error, error.__traceback__))
    except queue.Full:
        pass


def fail_all(futures: Iterable[pykka.Future[Any]], error: BaseException) -> None:
    for future in futures:
        fail(future, error)


# Set while a thread runs the user's state machine code for the FSMCaller: waiting there on a
# future of the node could never end (what completes it runs on that thread, afterwards).
_callback_thread = threading.local()


@contextlib.contextmanager
def running_callback(name: str) -> Iterator[None]:
    """Mark this thread as running state machine callback `name` (RaftFuture.get refuses)."""
    outer = getattr(_callback_thread, "name", None)
    _callback_thread.name = name
    try:
        yield
    finally:
        _callback_thread.name = outer


class RaftFuture(pykka.ThreadingFuture[T]):
    """A pykka ThreadingFuture (get, map, join, ... as in any Pykka app) that also:

    - calls back: `add_done_callback(fn)` calls `fn(future)` once it is settled, on the thread
      that settles it (an actor's: keep `fn` short and non-blocking), or at once on the
      caller's thread if it is settled already; `done()`, `error()` and `result()` read it
      without blocking;
    - awaits: `await future` inside a coroutine suspends only that coroutine, and resumes it
      on its own loop (the result is handed over with `call_soon_threadsafe`);
    - refuses to deadlock: `get` from a state machine callback, of a future not yet settled,
      raises DeadlockError at once instead of hanging until its timeout;
    - times out with RaftTimeoutError (a TimeoutError, and a pykka.Timeout as before).

    A callback that raises is logged and goes no further (as asyncio treats a failing
    callback): the future is settled regardless, and so is the actor that settled it.

    One is made per command, so its hot paths are pykka's with less overhead (the same fields
    and the same rules): `RaftFuture.batch(n)` makes n that share one Condition (a waiter
    woken by a sibling's settling checks its own result and waits on), `set` takes the lock
    once and notifies only if someone waits, and `get` of a settled future reads it without
    the lock (`_result` is written once, under the lock, and never changes)."""

    def __init__(self, condition: threading.Condition | None = None) -> None:
        # pykka.ThreadingFuture.__init__ and pykka.Future.__init__ inlined (the same fields;
        # tests/unit/actors/test_futures.py checks they are all there), with the Condition
        # given rather than always new.
        self._get_hook = None
        self._get_hook_result = _UNSET
        self._condition = threading.Condition() if condition is None else condition
        self._result = None
        self._callbacks: list[Callable[[RaftFuture[T]], None]] = []  # guarded by _condition

    @classmethod
    def batch(cls, count: int) -> list[RaftFuture[Any]]:
        """`count` futures sharing one Condition: one batch's commands, say."""
        condition = threading.Condition()
        return [cls(condition) for _ in range(count)]

    def set(self, value: Any = None) -> None:
        self._settle(ThreadingFutureResult(value=value))

    def set_exception(self, exc_info: Any = None) -> None:
        assert exc_info is None or len(exc_info) == 3
        self._settle(ThreadingFutureResult(exc_info=exc_info or sys.exc_info()))

    def _settle(self, result: ThreadingFutureResult) -> None:
        condition = self._condition
        with condition:
            if self._result is not None or self._get_hook is not None:
                raise queue.Full  # pykka's "already settled"
            self._result = result
            callbacks, self._callbacks = self._callbacks, []
            if condition._waiters:  # type: ignore[attr-defined]  # notify_all's own test
                condition.notify_all()
        for fn in callbacks:
            self._run(fn)

    def done(self) -> bool:
        return self._result is not None

    def error(self) -> BaseException | None:
        """The exception it failed with; None if it succeeded (or is not settled yet)."""
        result = self._result
        if result is None or result.exc_info is None:
            return None
        exc_type, exc, _ = result.exc_info
        return exc if exc is not None else (exc_type() if exc_type is not None else None)

    def result(self) -> T:
        """The value of a settled future (its exception raised), without waiting: for
        callbacks. Raises asyncio.InvalidStateError if it is not settled."""
        outcome = self._result
        if outcome is None:
            raise asyncio.InvalidStateError("the future is not settled yet")
        error = self.error()
        if error is not None:
            raise error
        return outcome.value  # type: ignore[return-value]

    def add_done_callback(self, fn: Callable[[RaftFuture[T]], None]) -> None:
        with self._condition:
            if self._result is None:
                self._callbacks.append(fn)
                return
        self._run(fn)

    def _run(self, fn: Callable[[RaftFuture[T]], None]) -> None:
        try:
            fn(self)
        except Exception:
            log.exception("a completion callback raised; the future was settled regardless")

    def get(self, *, timeout: float | None = None) -> T:
        outcome = self._result
        if outcome is not None and outcome.exc_info is None:
            return outcome.value  # type: ignore[return-value]  # settled: no lock needed
        if outcome is None:
            callback = getattr(_callback_thread, "name", None)
            if callback is not None:
                raise DeadlockError(
                    f"waiting on the node's future inside the state machine's {callback}: "
                    "it completes on this thread, only after the callback returns; use "
                    "add_done_callback (or wait from another thread)"
                )
        try:
            value: T = super().get(timeout=timeout)
            return value
        except pykka.Timeout:
            raise RaftTimeoutError(f"not settled within {timeout} s") from None

    def __await__(self) -> Generator[Any, None, T]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()

        def hand_over(future: RaftFuture[T]) -> None:
            # On the settling (an actor's) thread: only schedule; a closed loop is moot.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle_waiter, waiter, future)

        self.add_done_callback(hand_over)
        return (yield from waiter.__await__())

    __iter__ = __await__


def _settle_waiter(waiter: asyncio.Future[T], future: RaftFuture[T]) -> None:
    """On the waiter's loop: pass `future`'s outcome on, unless the waiter was cancelled."""
    if waiter.done():
        return
    error = future.error()
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(future.result())


class CompletionFuture(RaftFuture[Any]):
    """Calls `on_done(value, error)` exactly once, on the thread that settles the future
    (for Raft commands, the FSMCaller's or the Node's): keep it short and non-blocking. The
    actors' own internal continuations use it; applications may too, or add_done_callback."""

    def __init__(self, on_done: Callable[[Any, BaseException | None], None]) -> None:
        super().__init__()
        self._on_done = on_done
        self.add_done_callback(self._call)

    def _call(self, future: RaftFuture[Any]) -> None:
        error = future.error()
        self._on_done(None if error is not None else future.result(), error)
