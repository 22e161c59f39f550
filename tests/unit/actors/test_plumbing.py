"""The actor plumbing: typed dispatch, mailbox slots, clocks, and the test harness itself."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import pykka
import pytest

from actors.base import RaftActor, handles
from actors.clock import ManualClock, RealClock
from actors.errors import NodeFailedError
from actors.futures import CompletionFuture, complete, fail
from actors.mailbox import MailboxSlot
from actors.messages import FatalError
from actors.testing import ActorHarness, RecordingMailbox


@dataclass(frozen=True)
class Ping:
    n: int


@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class Other:
    pass


class Echo(RaftActor):
    """Replies to Ping by telling `out`; a Tick schedules another Tick in 1 s."""

    def __init__(self, out: RecordingMailbox | MailboxSlot, clock: ManualClock | None = None):
        super().__init__()
        self.out = out
        self.clock = clock
        self.ticks = 0

    @handles(Ping)
    def on_ping(self, msg: Ping) -> int:
        self.out.tell(Ping(msg.n + 1))
        return msg.n * 10

    @handles(Tick)
    def on_tick(self, msg: Tick) -> None:
        self.ticks += 1
        assert self.clock is not None
        self.clock.call_later(1.0, lambda: self.self_mailbox.tell(Tick()))


class LoudEcho(Echo):
    @handles(Ping)
    def on_ping(self, msg: Ping) -> int:
        return -1


def test_dispatch_calls_the_handler_for_the_exact_type() -> None:
    out = RecordingMailbox()
    harness = ActorHarness(Echo(out))
    assert harness.send(Ping(4)) == 40
    assert out.take() == [Ping(5)]


def test_subclass_handler_overrides_parent() -> None:
    out = RecordingMailbox()
    assert ActorHarness(LoudEcho(out)).send(Ping(4)) == -1
    assert out.told == []


def test_unknown_message_is_logged_once_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    harness = ActorHarness(Echo(RecordingMailbox()))
    with caplog.at_level(logging.WARNING):
        assert harness.send(Other()) is None
        assert harness.send(Other()) is None
    assert sum("no handler" in r.message for r in caplog.records) == 1


def test_threaded_actor_dispatches_through_pykka() -> None:
    out = RecordingMailbox()
    ref = Echo.start(out)
    try:
        assert ref.ask(Ping(2), timeout=5) == 20
        assert out.told == [Ping(3)]
        ref.tell(Other())  # must not kill the actor
        assert ref.ask(Ping(3), timeout=5) == 30
    finally:
        ref.stop()


def test_mailbox_slot_refuses_use_before_bind_and_drops_to_dead_actor() -> None:
    slot = MailboxSlot("echo")
    with pytest.raises(RuntimeError, match="before it was bound"):
        slot.tell(Ping(1))
    ref = Echo.start(RecordingMailbox())
    slot.bind(ref)
    ref.stop()
    slot.tell(Ping(1))  # dropped, not raised
    with pytest.raises(pykka.ActorDeadError):
        ref.tell(Ping(1))


def test_a_completion_reported_to_a_stopped_actor_is_dropped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Node stopped just after an election is told its term's first entry applied by a
    callback on another thread: the report is moot, not an error to log."""
    actor = Echo(RecordingMailbox())
    ref = Echo.start(RecordingMailbox())
    actor.self_mailbox = ref
    applied: CompletionFuture = CompletionFuture(lambda _, error: actor.tell_self(Ping(1)))
    ref.stop()
    with caplog.at_level(logging.DEBUG, logger="actors"):
        complete(applied, None)
    assert applied.done()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_manual_clock_fires_in_deadline_order_and_honours_cancel() -> None:
    clock = ManualClock()
    fired: list[str] = []
    clock.call_later(2.0, lambda: fired.append("b"))
    clock.call_later(1.0, lambda: fired.append("a"))
    clock.call_later(1.0, lambda: fired.append("a2"))  # same deadline: scheduling order
    clock.call_later(1.5, lambda: fired.append("x")).cancel()
    assert clock.advance(0.5) == 0
    assert clock.advance(1.6) == 3
    assert fired == ["a", "a2", "b"]
    assert clock.now() == pytest.approx(2.1)
    assert clock.pending() == 0


def test_harness_runs_timer_chains_inside_one_advance() -> None:
    clock = ManualClock()
    harness = ActorHarness(Echo(RecordingMailbox(), clock), clock)
    actor = harness.actor
    assert isinstance(actor, Echo)
    harness.send(Tick())
    harness.advance(3.5)  # re-armed at 1, 2, 3: each fires inside the window
    assert actor.ticks == 4
    assert clock.now() == pytest.approx(3.5)


def test_real_clock_runs_all_timers_on_one_thread_in_order() -> None:
    clock = RealClock()
    try:
        seen: list[tuple[int, str]] = []
        done = threading.Event()

        def record(i: int) -> None:
            seen.append((i, threading.current_thread().name))
            if len(seen) == 3:
                done.set()

        clock.call_later(0.03, lambda: record(3))
        clock.call_later(0.01, lambda: record(1))
        clock.call_later(0.02, lambda: record(2))
        clock.call_later(0.015, lambda: record(99)).cancel()
        assert done.wait(timeout=5)
        assert [i for i, _ in seen] == [1, 2, 3]
        assert {name for _, name in seen} == {"raft-timers"}
    finally:
        clock.stop()


def test_real_clock_at_a_rate_scales_now_and_timer_delays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: real[0])
    fast, slow = RealClock(rate=1.1), RealClock(rate=0.9)
    start_fast, start_slow = fast.now(), slow.now()
    real[0] += 10.0
    assert fast.now() - start_fast == pytest.approx(11.0)
    assert slow.now() - start_slow == pytest.approx(9.0)
    # A timer's deadline is kept in real seconds: 1 clock second is 1/rate real ones.
    timer = fast.call_later(1.1, lambda: None)
    assert timer.deadline == pytest.approx(real[0] + 1.0)  # type: ignore[attr-defined]
    fast.stop()
    slow.stop()
    with pytest.raises(ValueError, match="positive"):
        RealClock(rate=0.0)


def test_real_clock_fast_rate_fires_timers_early_in_real_time() -> None:
    clock = RealClock(rate=4.0)
    try:
        fired = threading.Event()
        real_start, clock_start = time.monotonic(), clock.now()
        clock.call_later(0.4, fired.set)
        assert fired.wait(timeout=5)
        assert clock.now() - clock_start >= 0.4  # the clock saw its whole delay pass...
        assert time.monotonic() - real_start >= 0.1  # ...in a quarter of the real time
    finally:
        clock.stop()


# -- supervision: no silently dead actor -------------------------------------------------------


@dataclass(frozen=True)
class Explode:
    pass


class Fragile(Echo):
    """Raises on Explode; records what enter_error was told."""

    def __init__(self, out: RecordingMailbox, supervisor: RecordingMailbox) -> None:
        super().__init__(out)
        self.supervisor = supervisor
        self.errors: list[str] = []

    @handles(Explode)
    def on_explode(self, msg: Explode) -> None:
        raise RuntimeError("a bug")

    def enter_error(self, reason: str) -> None:
        self.errors.append(reason)


def test_an_exception_in_a_handler_reports_fatal_and_the_actor_keeps_draining() -> None:
    out, supervisor = RecordingMailbox("out"), RecordingMailbox("node")
    actor = Fragile(out, supervisor)
    harness = ActorHarness(actor)
    assert harness.send(Explode()) is None
    [fatal] = supervisor.take(FatalError)
    assert fatal.component == "Fragile"
    assert "RuntimeError in Fragile (Explode): a bug" in fatal.reason
    assert actor.crashed and actor.errors == [fatal.reason]
    assert harness.send(Ping(1)) == 10  # still answering: it is in its error mode, not dead


def test_a_threaded_actor_that_raises_stays_alive_and_tells_its_supervisor() -> None:
    """Under pykka an exception escaping a told message used to stop the actor; its mailbox
    then swallowed everything while the rest of the peer carried on as if healthy."""
    out, supervisor = RecordingMailbox("out"), RecordingMailbox("node")
    ref = Fragile.start(out, supervisor)
    ref.tell(Explode())
    assert ref.ask(Ping(2), timeout=5) == 20  # handled after the crash: the actor is alive
    assert ref.is_alive()
    assert [type(m) for m in supervisor.told] == [FatalError]
    ref.stop()


class BadStart(Echo):
    def startup(self) -> None:
        raise OSError("cannot start")


def test_an_exception_in_startup_is_reported_too() -> None:
    supervisor = RecordingMailbox("node")
    actor = BadStart(RecordingMailbox("out"))
    actor.supervisor = supervisor
    ActorHarness(actor)
    [fatal] = supervisor.take(FatalError)
    assert "OSError in BadStart (startup): cannot start" in fatal.reason


def test_a_raising_completion_callback_settles_the_future_and_goes_no_further(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Reproduced: an exception from a future's callback escaped into the actor completing it."""

    def callback(value: object, error: BaseException | None) -> None:
        raise ValueError("callback bug")

    future = CompletionFuture(callback)
    with caplog.at_level(logging.ERROR, logger="actors.futures"):
        complete(future, 5)  # does not raise into the caller (an actor's handler)
    assert future.get(timeout=1) == 5
    assert any("completion callback raised" in r.getMessage() for r in caplog.records)
    complete(future, 6)  # already settled: the first outcome stays
    fail(future, RuntimeError("late"))
    assert future.get(timeout=1) == 5


@dataclass(frozen=True)
class ExplodeWithFutures:
    futures: tuple[pykka.Future[object], ...]
    reply: pykka.Future[object] | None = None


class FragileCarrier(Fragile):
    @handles(ExplodeWithFutures)
    def on_explode_with_futures(self, msg: ExplodeWithFutures) -> None:
        raise RuntimeError("a bug holding futures")


def test_the_message_that_crashed_an_actor_has_its_futures_failed_not_left_pending() -> None:
    """A crash must not leave the futures it carried pending for ever (a KV client waiting on
    one would never be answered): they fail, outcome unknown, as the command may have been
    appended before the crash."""
    actor = FragileCarrier(RecordingMailbox("out"), RecordingMailbox("node"))
    harness = ActorHarness(actor)
    carried = (pykka.ThreadingFuture[object](), pykka.ThreadingFuture[object]())
    reply = pykka.ThreadingFuture[object]()
    harness.send(ExplodeWithFutures(carried, reply))
    for future in (*carried, reply):
        with pytest.raises(NodeFailedError) as info:
            future.get(timeout=1)
        assert info.value.outcome_unknown is True
