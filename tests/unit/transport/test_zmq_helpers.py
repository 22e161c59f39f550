"""The ZeroMQ transport's socket-free helpers: rate-limited bad-frame logging, the waker."""

from __future__ import annotations

import logging
import select

import pytest

from transport.zmq_transport import _BadFrameLog, _Waker

LOGGER = "transport.zmq_transport"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_first_bad_frame_per_source_then_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    bad_log = _BadFrameLog("me", interval=60, burst=100, clock=clock)
    with caplog.at_level(logging.WARNING, LOGGER):
        for _ in range(1000):
            bad_log.report(b"flooder", "junk")
        bad_log.report(b"other", "junk")
        assert len(lines(caplog)) == 2
        clock.now += 59
        bad_log.report(b"flooder", "junk")
        assert len(lines(caplog)) == 2
        clock.now += 1
        bad_log.report(b"flooder", "junk")
    messages = lines(caplog)
    assert len(messages) == 3
    assert "b'flooder'" in messages[0] and "junk" in messages[0]
    assert "1000 more since last logged" in messages[2]


def test_global_budget_against_many_sources(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    bad_log = _BadFrameLog("me", interval=10, burst=5, max_sources=50, clock=clock)
    with caplog.at_level(logging.WARNING, LOGGER):
        for number in range(1000):
            bad_log.report(f"source-{number}".encode(), "junk")
        assert len(lines(caplog)) == 6  # 5 sources, then one "not logging more" notice
        assert "many sources" in lines(caplog)[-1]
        clock.now += 10
        bad_log.report(b"late", "junk")
    assert len(lines(caplog)) == 7
    assert len(bad_log._sources) <= 50


def test_long_source_ids_are_truncated(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, LOGGER):
        _BadFrameLog("me").report(b"x" * 10_000, "junk")
    assert len(lines(caplog)[0]) < 200


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_waker_writes_once_per_pending_wakeup() -> None:
    waker = _Waker()
    try:
        assert not readable(waker.fileno())
        waker.wake()
        waker.wake()  # already pending: no second write
        assert readable(waker.fileno())
        waker.clear()
        assert not readable(waker.fileno())
        waker.clear()  # nothing pending: harmless
        waker.wake()
        assert readable(waker.fileno())
    finally:
        waker.close()
    waker.close()  # idempotent
    waker._pending = False
    waker.wake()  # after close: a no-op, never a write to a reused fd number
