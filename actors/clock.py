"""Time and timers, injected so actors run the same under real and manual time.

`RealClock` runs every timer of a process on one thread (not a thread per timer). A timer
callback runs on that thread, so it must be quick and must not touch actor state: it should only
`tell` a message to an actor's mailbox. `ManualClock` fires timers only when a test (or the
simulator) advances it, on the caller's thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

Callback = Callable[[], None]


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def call_later(self, delay: float, callback: Callback) -> TimerHandle:
        """Run `callback` once, `delay` seconds from now, unless cancelled first."""
        ...


class _Timer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callback) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        # A cancelled timer stays in the heap until its deadline and is skipped then.
        self.cancelled = True


class _TimerQueue:
    """Timers ordered by deadline; ties fire in scheduling order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()

    def push(self, timer: _Timer) -> None:
        heapq.heappush(self._heap, (timer.deadline, next(self._seq), timer))

    def next_deadline(self) -> float | None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> _Timer | None:
        deadline = self.next_deadline()
        if deadline is None or deadline > now:
            return None
        return heapq.heappop(self._heap)[2]

    def __len__(self) -> int:
        return sum(1 for _, _, t in self._heap if not t.cancelled)


def _run(timer: _Timer) -> None:
    try:
        timer.callback()
    except Exception:
        log.exception("timer callback %r failed", timer.callback)


class RealClock:
    """Monotonic time, and timers on a single daemon thread started lazily. `stop()` ends it.

    `rate` makes this clock run fast (> 1) or slow (< 1) against the machine's: `now()`
    advances `rate` seconds per real second and a timer of d seconds fires after d / rate real
    ones. Only the chaos runner's clock nemesis sets it (the launcher's hidden --clock-rate),
    to check that the lease tolerates peers whose clocks drift within its margin. Timer
    deadlines are kept in real seconds.
    """

    def __init__(self, rate: float = 1.0) -> None:
        if not 0 < rate < float("inf"):
            raise ValueError(f"clock rate must be positive and finite, not {rate}")
        self.rate = rate
        self._origin = time.monotonic()
        self._queue = _TimerQueue()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def now(self) -> float:
        if self.rate == 1.0:
            return time.monotonic()
        return self._origin + (time.monotonic() - self._origin) * self.rate

    def call_later(self, delay: float, callback: Callback) -> TimerHandle:
        timer = _Timer(time.monotonic() + max(0.0, delay) / self.rate, callback)
        with self._cond:
            if self._stopped:
                return timer  # a stopped clock fires nothing: its process is shutting down
            self._queue.push(timer)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="raft-timers", daemon=True)
                self._thread.start()
            self._cond.notify()
        return timer

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    due = self._queue.pop_due(now)
                    if due is not None:
                        break
                    deadline = self._queue.next_deadline()
                    self._cond.wait(None if deadline is None else deadline - now)
                else:
                    return
            _run(due)  # outside the lock, so a callback may schedule another timer


class ManualClock:
    """Virtual time for tests and the simulator. Tests only: nothing advances it by itself."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._queue = _TimerQueue()

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callback) -> TimerHandle:
        timer = _Timer(self._now + max(0.0, delay), callback)
        self._queue.push(timer)
        return timer

    def advance(self, seconds: float) -> int:
        """Move time forward, firing due timers in deadline order (time stands at each timer's
        deadline while it runs). Returns how many fired."""
        end = self._now + seconds
        fired = 0
        while (timer := self._queue.pop_due(end)) is not None:
            self._now = max(self._now, timer.deadline)
            _run(timer)
            fired += 1
        self._now = end
        return fired

    def next_deadline(self) -> float | None:
        return self._queue.next_deadline()

    def pending(self) -> int:
        return len(self._queue)
