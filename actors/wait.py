"""`wait_until`: the one way this project waits for a condition, always with a deadline.

For the edges only (the embedding API, tools, tests): an actor never waits, it reacts to a
message. Two ways to be woken:
- with `condition`, the caller's code notifies it whenever the watched state changes, and the
  predicate is checked on every notification (no polling, no latency);
- without, the state lives elsewhere (another process, another actor's mailbox) and the
  predicate is polled every `interval` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from actors.errors import RaftTimeoutError

T = TypeVar("T")

POLL_INTERVAL = 0.05


def wait_until(
    predicate: Callable[[], T | None],
    what: str,
    timeout: float,
    *,
    condition: threading.Condition | None = None,
    interval: float = POLL_INTERVAL,
) -> T:
    """Return the first truthy value of `predicate()`; raise RaftTimeoutError (a TimeoutError)
    naming `what` once `timeout` seconds have passed without one. With `condition`, the
    caller must not hold it."""
    deadline = time.monotonic() + timeout
    if condition is not None:
        with condition:
            found: list[T] = []

            def check() -> bool:
                value = predicate()
                if value:
                    found.append(value)
                return bool(value)

            if condition.wait_for(check, timeout=timeout):
                return found[0]
    else:
        pause = threading.Event()  # never set: an interruptible sleep between polls
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            pause.wait(min(interval, remaining))
    raise RaftTimeoutError(f"timed out after {timeout:g}s waiting for {what}")
