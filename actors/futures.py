"""A pykka future that calls back when completed, for edges that must not block a thread per
request (the KV server answers each client when its command's future completes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pykka

from actors.errors import RaftError


class CompletionFuture(pykka.ThreadingFuture[Any]):
    """Calls `on_done(value, error)` exactly once, on the thread that completes the future
    (for Raft commands, the FSMCaller's or the Node's): keep it short and non-blocking."""

    def __init__(self, on_done: Callable[[Any, BaseException | None], None]) -> None:
        super().__init__()
        self._on_done = on_done

    def set(self, value: Any = None) -> None:
        super().set(value)
        self._on_done(value, None)

    def set_exception(self, exc_info: Any = None) -> None:
        super().set_exception(exc_info)
        error = exc_info[1] if isinstance(exc_info, tuple) else exc_info
        self._on_done(None, error if isinstance(error, BaseException) else RaftError(str(error)))
