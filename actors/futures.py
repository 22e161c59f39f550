"""Settling pykka futures: the one way the actors complete or fail a command's future, and a
future that calls back when settled, for edges that must not block a thread per request.

`complete` and `fail` tolerate a future that is already settled (a caller that timed out and
settled it itself, or a second path reaching the same future during shutdown): the first
outcome wins, and settling again is a no-op rather than an exception inside an actor.
"""

from __future__ import annotations

import contextlib
import logging
import queue
from collections.abc import Callable, Iterable
from typing import Any

import pykka

from actors.errors import RaftError

log = logging.getLogger(__name__)


def complete(future: pykka.Future[Any], value: Any) -> None:
    """Settle `future` with `value`, unless it is settled already."""
    # queue.Full is pykka's "already settled": whoever holds the future settled it first.
    with contextlib.suppress(queue.Full):
        future.set(value)


def fail(future: pykka.Future[Any], error: BaseException) -> None:
    """Settle `future` with `error` (raised by its `get`), unless it is settled already."""
    with contextlib.suppress(queue.Full):
        future.set_exception((type(error), error, error.__traceback__))


def fail_all(futures: Iterable[pykka.Future[Any]], error: BaseException) -> None:
    for future in futures:
        fail(future, error)


class CompletionFuture(pykka.ThreadingFuture[Any]):
    """Calls `on_done(value, error)` exactly once, on the thread that settles the future
    (for Raft commands, the FSMCaller's or the Node's): keep it short and non-blocking.

    The callback is the application's code running on an actor's thread: an exception from it
    is logged and goes no further (as asyncio treats a failing callback), since the future
    itself was settled and the actor that settled it is in a consistent state."""

    def __init__(self, on_done: Callable[[Any, BaseException | None], None]) -> None:
        super().__init__()
        self._on_done = on_done

    def set(self, value: Any = None) -> None:
        super().set(value)
        self._call(value, None)

    def set_exception(self, exc_info: Any = None) -> None:
        super().set_exception(exc_info)
        error = exc_info[1] if isinstance(exc_info, tuple) else exc_info
        self._call(None, error if isinstance(error, BaseException) else RaftError(str(error)))

    def _call(self, value: Any, error: BaseException | None) -> None:
        try:
            self._on_done(value, error)
        except Exception:
            log.exception("a completion callback raised; the future was settled regardless")
