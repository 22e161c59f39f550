"""A local 3-node PySyncObj cluster, measured the way its own benchmark measures it: commands
applied through the leader's object, in its process, asynchronously with a window of commands
in flight (its best mode). Each node is its own OS process on 127.0.0.1; PySyncObj keeps its
journal in memory (it has no fsync at all), so the comparison flatters it.

    rate = embedded_rate(seconds=5.0, window=1000)   # commands/s, or None if not installed
    rate, leader_us, followers_us = embedded_run(...)  # the same with CPU per command per side

Install it in the benchmark's environment: `pip install -e '.[bench]'` (PyPI `pysyncobj`).
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transport.peers import free_ports  # noqa: E402

VALUE = "v" * 32
KEYS = 1000


def available() -> bool:
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        return False
    return True


# Its defaults send AppendEntries and tick every 100 ms, which caps its rate at whatever one
# period can carry; 5 ms for both is its best on this kind of machine (issue 23's reference).
TUNED_PERIOD = 0.005


def _node(
    me: str,
    partners: list[str],
    seconds: float,
    window: int,
    results: Any,
    load_done: Any,
    finished: Any,
    period: float | None,
) -> None:
    """One node. The one that leads once the cluster is ready runs the load and reports
    (commands, seconds, its CPU seconds), the others (None, None, their CPU seconds from ready
    until the load is done); every node lives on until `finished` is set (the leader needs its
    followers until its last command is in)."""
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class KV(SyncObj):  # type: ignore[misc]
        def __init__(self) -> None:
            periods = (
                {} if period is None else {"appendEntriesPeriod": period, "autoTickPeriod": period}
            )
            conf = SyncObjConf(appendEntriesUseBatch=True, **periods)
            super().__init__(me, partners, conf)
            self.data: dict[str, str] = {}

        @replicated  # type: ignore[misc]
        def set(self, key: str, value: str) -> None:
            self.data[key] = value

    kv = KV()
    deadline = time.monotonic() + 60
    while not (kv._isReady() and kv._getLeader() is not None) and time.monotonic() < deadline:
        time.sleep(0.05)  # a poll of PySyncObj's own state: it offers no event to wait on
    cpu = time.process_time()
    if kv._isLeader():
        slots = threading.BoundedSemaphore(window)
        applied = [0]

        def done(_result: Any, error: Any) -> None:
            if error == 0:  # FAIL_REASON.SUCCESS
                applied[0] += 1
            slots.release()

        started = time.monotonic()
        n = 0
        while time.monotonic() - started < seconds:
            slots.acquire()
            kv.set(f"k{n % KEYS}", VALUE, callback=done)
            n += 1
        for _ in range(window):  # drain: every command in flight completes or fails
            slots.acquire(timeout=10)
        load_done.set()
        results.put((applied[0], time.monotonic() - started, time.process_time() - cpu))
    else:
        load_done.wait(seconds + 90)
        results.put((None, None, time.process_time() - cpu))
    finished.wait(seconds + 120)
    kv.destroy()


def embedded_rate(
    seconds: float = 5.0, window: int = 1000, period: float | None = TUNED_PERIOD
) -> float | None:
    """Commands/s applied at PySyncObj's leader with `window` in flight, its AppendEntries and
    tick `period` in seconds (None: its defaults); None if PySyncObj is not installed or no
    node led."""
    run = embedded_run(seconds, window, period)
    return None if run is None else run[0]


def embedded_run(
    seconds: float = 5.0, window: int = 1000, period: float | None = TUNED_PERIOD
) -> tuple[float, float, float] | None:
    """(commands/s, leader CPU us per command, both followers' CPU us per command), as
    `embedded_rate` measures it."""
    if not available():
        return None
    nodes = [f"127.0.0.1:{port}" for port in free_ports(3)]
    context = multiprocessing.get_context("spawn")
    results, load_done, finished = context.Queue(), context.Event(), context.Event()
    procs = [
        context.Process(
            target=_node,
            args=(
                me,
                [n for n in nodes if n != me],
                seconds,
                window,
                results,
                load_done,
                finished,
                period,
            ),
        )
        for me in nodes
    ]
    for proc in procs:
        proc.start()
    try:
        reports = [results.get(timeout=seconds + 90) for _ in procs]
    finally:
        finished.set()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    measured = [r for r in reports if r[0] is not None]
    if not measured:
        return None
    applied, elapsed, leader_cpu = measured[0]
    followers_cpu = sum(r[2] for r in reports if r[0] is None)
    return applied / elapsed, leader_cpu / applied * 1e6, followers_cpu / applied * 1e6
