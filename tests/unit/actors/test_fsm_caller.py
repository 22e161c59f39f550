"""FSMCaller: log-order application in batches, futures, leadership callbacks, the ERROR state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pykka
import pytest

from actors.clock import ManualClock
from actors.configuration import Configuration
from actors.errors import (
    DeadlockError,
    LeadershipLostError,
    NodeFailedError,
    NodeStoppedError,
    NotLeaderError,
    ReadError,
)
from actors.fsm_caller import FSMCaller
from actors.futures import RaftFuture
from actors.log_view import LogView
from actors.messages import (
    Commit,
    EnterError,
    FatalError,
    Following,
    GetApplied,
    LeaderStart,
    LeaderStop,
    ReadAt,
    RegisterPending,
)
from actors.metrics import RaftMetrics
from actors.options import RaftOptions
from actors.state_machine import Command
from actors.testing import (
    ActorHarness,
    RecordingMailbox,
    RecordingStateMachine,
    counts,
    is_pending,
)
from storage.entry import EntryType, LogEntry
from storage.errors import CorruptLogError
from storage.memory import MemoryLogStorage

D, N, C = EntryType.DATA, EntryType.NO_OP, EntryType.CONFIGURATION


def make_view(types: Sequence[EntryType], term: int = 1) -> LogView:
    storage = MemoryLogStorage()
    conf = Configuration.of(["a"]).encode()
    storage.append_entries(
        [LogEntry(i, term, t, conf if t == C else b"c%d" % i) for i, t in enumerate(types, 1)]
    )
    return LogView(storage)


class Fsm:
    def __init__(
        self,
        types: Sequence[EntryType],
        sm: RecordingStateMachine | None = None,
        batch: int = 64,
        clock: ManualClock | None = None,
    ) -> None:
        self.sm = sm or RecordingStateMachine()
        self.node = RecordingMailbox("node")
        self.log_view = make_view(types)
        self.clock = clock or ManualClock()  # what the metrics time durations with
        self.metrics = RaftMetrics(clock=self.clock.now)
        self.actor = FSMCaller(
            self.sm,
            self.log_view,
            self.node,
            RaftOptions(max_apply_batch=batch),
            metrics=self.metrics,
        )
        self.harness = ActorHarness(self.actor)

    def send(self, *messages: object) -> None:
        for message in messages:
            self.harness.send(message)


def futures(n: int) -> tuple[pykka.Future[Any], ...]:
    return tuple(pykka.ThreadingFuture() for _ in range(n))


def result(future: pykka.Future[Any]) -> Any:
    return future.get(timeout=0)


def test_applies_in_order_in_batches_and_completes_the_right_futures() -> None:
    fsm = Fsm([N, D, D, D, D, D], batch=2)
    futs = futures(5)
    fsm.send(RegisterPending(2, futs), Commit(6))
    assert fsm.sm.batches == [[2], [3, 4], [5, 6]]  # batch 1 was NO_OP 1 + DATA 2
    assert [result(f) for f in futs] == [2, 3, 4, 5, 6]
    assert fsm.actor.applied_index == 6
    assert fsm.actor.pending == {}


def test_no_op_and_configuration_entries_are_skipped_and_split_runs() -> None:
    fsm = Fsm([D, D, N, D, C, D])
    first, second, third = futures(2), futures(1), futures(1)
    noop_future = futures(1)
    fsm.send(RegisterPending(1, first), RegisterPending(3, noop_future))
    fsm.send(RegisterPending(4, second), RegisterPending(6, third), Commit(6))
    assert fsm.sm.batches == [[1, 2], [4], [6]]
    assert [result(f) for f in first + second + third] == [1, 2, 4, 6]
    assert result(noop_future[0]) is None  # a future on a NO_OP completes with None
    assert fsm.actor.applied_index == 6


def test_commits_back_to_back_coalesce_into_one_pass() -> None:
    fsm = Fsm([D] * 5)
    # Queued in the mailbox together: delivered without running the self-queue in between.
    for index in (2, 4, 3):
        fsm.actor.receive(Commit(index))
    assert fsm.harness.run() == 1  # one ApplyCommitted
    assert fsm.sm.batches == [[1, 2, 3, 4]]


def test_futures_registered_before_commit_wait_for_it() -> None:
    fsm = Fsm([D] * 4)
    futs = futures(4)
    fsm.send(RegisterPending(1, futs), Commit(2))
    assert [result(f) for f in futs[:2]] == [1, 2]
    assert is_pending(futs[2]) and is_pending(futs[3])
    fsm.send(Commit(4))
    assert [result(f) for f in futs[2:]] == [3, 4]


def test_applied_index_is_monotonic_and_each_entry_applied_once() -> None:
    fsm = Fsm([D] * 5)
    fsm.send(Commit(3), Commit(2), Commit(3), Commit(1))
    assert fsm.actor.applied_index == 3
    fsm.send(Commit(5), Commit(4))
    assert fsm.sm.applied_indexes == [1, 2, 3, 4, 5]
    assert fsm.harness.send(GetApplied()) == 5
    assert fsm.log_view.applied_index == 5  # published for status


def test_commit_beyond_the_readable_log_applies_what_is_there_then_retries() -> None:
    fsm = Fsm([D] * 2)
    fsm.send(Commit(3))
    assert fsm.sm.applied_indexes == [1, 2]
    fsm.log_view.append_unstable([LogEntry(3, 1, D, b"c3")])
    fsm.send(Commit(3))
    assert fsm.sm.applied_indexes == [1, 2, 3]


def test_leader_start_waits_for_the_first_entry_of_the_term() -> None:
    fsm = Fsm([D, D, N, D])
    fsm.send(LeaderStart(term=2, first_index=3), Commit(2))
    assert fsm.sm.events == []
    fsm.send(Commit(4))
    assert fsm.sm.events == ["start 2"]


def test_leader_start_is_immediate_when_already_applied() -> None:
    fsm = Fsm([D, D])
    fsm.send(Commit(2), LeaderStart(3, 2))
    assert fsm.sm.events == ["start 3"]


def test_leader_stop_fails_pending_futures_with_leadership_lost() -> None:
    fsm = Fsm([N, D, D, D])
    futs = futures(3)
    fsm.send(LeaderStart(2, 1), RegisterPending(2, futs), Commit(2), LeaderStop(2))
    assert result(futs[0]) == 2
    for future in futs[1:]:
        with pytest.raises(LeadershipLostError):
            result(future)
    assert fsm.sm.events == ["start 2", "stop 2"]
    # The entries may still commit (under the next leader): applied, futures stay failed.
    fsm.send(Commit(4))
    assert fsm.sm.applied_indexes == [2, 3, 4]
    assert fsm.node.told == []


def test_leader_stop_before_start_was_reported_skips_on_leader_stop() -> None:
    fsm = Fsm([D, N])
    futs = futures(1)
    fsm.send(LeaderStart(2, 2), RegisterPending(1, futs), LeaderStop(2))
    assert fsm.sm.events == []
    with pytest.raises(LeadershipLostError):
        result(futs[0])


def test_stale_leader_stop_is_ignored() -> None:
    fsm = Fsm([N, D])
    futs = futures(1)
    fsm.send(LeaderStart(3, 1), RegisterPending(2, futs), LeaderStop(2), Commit(2))
    assert result(futs[0]) == 2


def test_state_machine_error_enters_error_state() -> None:
    fsm = Fsm([D] * 5, RecordingStateMachine(fail_at=3), batch=2)
    futs = futures(5)
    fsm.send(RegisterPending(1, futs), Commit(5))
    assert fsm.sm.applied_indexes == [1, 2]
    assert fsm.actor.applied_index == 2
    assert [result(f) for f in futs[:2]] == [1, 2]
    for future in futs[2:]:
        with pytest.raises(NodeFailedError) as info:
            result(future)
        # In the log already, so they may commit (and apply) on the other replicas: unknown.
        assert info.value.outcome_unknown is True
    assert [str(e) for e in fsm.sm.errors] == ["boom at 3"]
    [fatal] = fsm.node.take(FatalError)
    assert fatal.component == "FSMCaller" and "boom at 3" in fatal.reason
    assert str(fsm.actor).startswith("ERROR applied=2")
    # From now on: nothing applied, new futures fail at once, no second FatalError.
    fsm.sm.fail_at = None
    late = futures(1)
    fsm.send(Commit(5), RegisterPending(6, late), LeaderStart(4, 1))
    assert fsm.sm.applied_indexes == [1, 2]
    assert fsm.sm.events == []
    with pytest.raises(NodeFailedError):
        result(late[0])
    assert fsm.node.told == []


def test_wrong_number_of_results_is_an_error() -> None:
    fsm = Fsm([D] * 3, RecordingStateMachine(short_results=True))
    futs = futures(3)
    fsm.send(RegisterPending(1, futs), Commit(3))
    assert fsm.actor.applied_index == 0
    [fatal] = fsm.node.take(FatalError)
    assert "2 results for 3 commands" in fatal.reason
    with pytest.raises(NodeFailedError):
        result(futs[0])


class RaisingEvents(RecordingStateMachine):
    """Every event raises after it was recorded: a listener's bug."""

    def on_leader_start(self, term: int) -> None:
        super().on_leader_start(term)
        raise ValueError("no")

    def on_leader_stop(self, term: int) -> None:
        super().on_leader_stop(term)
        raise ValueError("no")

    def on_start_following(self, leader_id: str, term: int) -> None:
        super().on_start_following(leader_id, term)
        raise ValueError("no")

    def on_configuration_committed(self, conf: Configuration, index: int) -> None:
        super().on_configuration_committed(conf, index)
        raise ValueError("no")

    def on_shutdown(self) -> None:
        super().on_shutdown()
        raise ValueError("no")


def test_an_event_that_raises_is_counted_and_the_peer_goes_on() -> None:
    fsm = Fsm([N, C, D, D], RaisingEvents())
    futs = futures(2)
    fsm.send(Following("b", 1), LeaderStart(2, 1), RegisterPending(3, futs), Commit(4))
    assert fsm.sm.applied_indexes == [3, 4]  # applying went on past every raising event
    assert [result(f) for f in futs] == [3, 4]
    assert fsm.sm.events == ["start 2"] and fsm.sm.confs == [(2, ["a"])]
    assert fsm.actor.error is None and fsm.node.told == []
    fsm.send(LeaderStop(2))
    fsm.harness.stop()
    assert fsm.sm.events == ["start 2", "stop 2", "shutdown"]
    assert counts(fsm.metrics.callback_errors) == {
        "on_start_following": 1,
        "on_leader_start": 1,
        "on_configuration_committed": 1,
        "on_leader_stop": 1,
        "on_shutdown": 1,
    }


def test_following_events_come_in_pairs_and_end_with_leadership_error_or_stop() -> None:
    fsm = Fsm([N, D])
    fsm.send(Following("b", 2), Following("b", 2), Following("c", 3), Following(None, 4))
    assert fsm.sm.following == ["follow b 2", "unfollow b 2", "follow c 3", "unfollow c 3"]
    fsm.send(Following("b", 5), LeaderStart(6, 1))  # leading ends following, whoever says so
    assert fsm.sm.following[-2:] == ["follow b 5", "unfollow b 5"]
    fsm.send(Commit(2), LeaderStop(6), Following("c", 7))
    fsm.harness.stop()
    assert fsm.sm.events == ["start 6", "stop 6", "shutdown"]
    assert fsm.sm.following[-2:] == ["follow c 7", "unfollow c 7"]  # before on_shutdown


def test_a_stopping_leader_gets_on_leader_stop_before_on_shutdown() -> None:
    fsm = Fsm([N, D])
    pending = futures(1)
    fsm.send(LeaderStart(1, 1), Commit(1), RegisterPending(2, pending))
    fsm.harness.stop()
    assert fsm.sm.events == ["start 1", "stop 1", "shutdown"]
    with pytest.raises(NodeStoppedError):
        result(pending[0])  # failed before on_leader_stop, as its docstring says


def test_entering_error_ends_the_leadership_before_on_error() -> None:
    fsm = Fsm([N, D, D], RecordingStateMachine(fail_at=3))
    fsm.send(Following("b", 1), LeaderStart(2, 1), Commit(3))
    assert fsm.sm.events == ["start 2", "stop 2"]
    assert [str(e) for e in fsm.sm.errors] == ["boom at 3"]
    fsm.send(LeaderStop(2), Following("c", 3))  # after ERROR: no more events
    fsm.harness.stop()
    assert fsm.sm.events == ["start 2", "stop 2", "shutdown"]
    assert fsm.sm.following == ["follow b 1", "unfollow b 1"]


def test_configurations_are_reported_in_log_order_with_the_commands() -> None:
    fsm = Fsm([D, C, D, C])
    order: list[object] = []
    fsm.sm.on_apply = lambda cmds: order.extend(c.index for c in cmds) or [0] * len(cmds)  # type: ignore[method-assign]
    fsm.sm.on_configuration_committed = lambda conf, i: order.append(("conf", i))  # type: ignore[method-assign]
    fsm.send(Commit(4))
    assert order == [1, ("conf", 2), 3, ("conf", 4)]


class Blocking(RecordingStateMachine):
    """Waits on a future of the node inside its callbacks: what a user might try."""

    def __init__(self) -> None:
        super().__init__()
        self.caught: list[str] = []

    def _wait(self) -> None:
        try:
            RaftFuture().get(timeout=30)
        except DeadlockError as error:
            self.caught.append(str(error))

    def on_apply(self, commands: Sequence[Command]) -> list[Any]:
        self._wait()
        return super().on_apply(commands)

    def on_leader_start(self, term: int) -> None:
        self._wait()


def test_waiting_on_a_future_inside_a_callback_fails_at_once_instead_of_hanging() -> None:
    fsm = Fsm([N, D], Blocking())
    fsm.send(LeaderStart(1, 1), Commit(2))
    assert fsm.sm.applied_indexes == [2]
    assert len(fsm.sm.caught) == 2
    assert "on_leader_start" in fsm.sm.caught[0] and "on_apply" in fsm.sm.caught[1]
    settled: RaftFuture[int] = RaftFuture()
    settled.set(7)
    assert settled.get() == 7  # outside a callback (and settled ones anywhere): as before


def test_stop_shuts_the_state_machine_down_and_fails_remaining_futures() -> None:
    fsm = Fsm([D, D])
    futs = futures(2)
    fsm.send(RegisterPending(1, futs), Commit(1))
    fsm.harness.stop()
    assert fsm.sm.events == ["shutdown"]
    assert result(futs[0]) == 1
    with pytest.raises(NodeStoppedError):
        result(futs[1])


def test_threaded_fsm_caller_answers_get_applied() -> None:
    sm = RecordingStateMachine()
    ref = FSMCaller.start(sm, make_view([D, D, D]), RecordingMailbox(), RaftOptions())
    futs = futures(3)
    ref.tell(RegisterPending(1, futs))
    ref.tell(Commit(3))
    assert [f.get(timeout=5) for f in futs] == [1, 2, 3]
    assert ref.ask(GetApplied(), timeout=5) == 3
    ref.stop()
    assert sm.events == ["shutdown"]


def test_enter_error_fails_what_is_pending_as_unknown_and_applies_nothing_more() -> None:
    """The peer entered ERROR for another actor's reason: the FSMCaller stops applying, fails
    every pending future with an unknown outcome, and tells the state machine."""
    fsm = Fsm([D] * 4)
    futs = futures(4)
    fsm.send(RegisterPending(1, futs), Commit(1), EnterError("Replicator: bug"))
    assert result(futs[0]) == 1
    for future in futs[1:]:
        with pytest.raises(NodeFailedError, match="Replicator: bug") as info:
            result(future)
        assert info.value.outcome_unknown is True
    assert [str(e) for e in fsm.sm.errors] == ["Replicator: bug"]
    late = futures(1)
    fsm.send(Commit(4), RegisterPending(5, late))
    assert fsm.sm.applied_indexes == [1]
    with pytest.raises(NodeFailedError) as info:
        result(late[0])
    assert info.value.outcome_unknown is True
    assert fsm.node.told == []  # the Node already knows: it sent EnterError


def test_stop_fails_pending_futures_as_stopped_with_unknown_outcome() -> None:
    fsm = Fsm([D] * 2)
    futs = futures(2)
    fsm.send(RegisterPending(1, futs))
    fsm.harness.stop()
    for future in futs:
        with pytest.raises(NodeStoppedError) as info:
            result(future)
        assert info.value.outcome_unknown is True
    assert fsm.sm.events == ["shutdown"]


def test_a_storage_error_reading_committed_entries_enters_error_not_a_dead_actor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reproduced path: a StorageError/CorruptLogError from a read used to escape and stop the
    FSMCaller silently. Now the peer is told and the pending futures fail, outcome unknown."""
    fsm = Fsm([D] * 3)
    futs = futures(3)

    def unreadable(first: int, last: int, max_bytes: int = 0) -> list[LogEntry]:
        raise CorruptLogError("record 1 failed validation on read", "seg", 40)

    monkeypatch.setattr(fsm.log_view, "entries", unreadable)
    fsm.send(RegisterPending(1, futs), Commit(3))
    [fatal] = fsm.node.take(FatalError)
    assert "CorruptLogError in FSMCaller (ApplyCommitted)" in fatal.reason
    for future in futs:
        with pytest.raises(NodeFailedError) as info:
            result(future)
        assert info.value.outcome_unknown is True


# -- metrics ----------------------------------------------------------------------------------


class SlowStateMachine(RecordingStateMachine):
    """Each on_apply call takes `seconds` of `clock`."""

    def __init__(self, clock: ManualClock, seconds: float) -> None:
        super().__init__()
        self.clock, self.seconds = clock, seconds

    def on_apply(self, commands: Sequence[Command]) -> list[Any]:
        self.clock.advance(self.seconds)
        return super().on_apply(commands)


def test_each_on_apply_batch_is_timed_once() -> None:
    clock = ManualClock()
    f = Fsm([D, D, D, N, D, D, D], SlowStateMachine(clock, 0.02), batch=64, clock=clock)
    f.send(Commit(7))
    assert f.sm.batches == [[1, 2, 3], [5, 6, 7]]
    sample = f.metrics.apply_seconds.sample()
    assert sample.count == 2 and sample.sum == pytest.approx(0.04)
    assert sample.buckets[f.metrics.apply_seconds.bounds.index(0.01)] == 0
    assert sample.buckets[f.metrics.apply_seconds.bounds.index(0.025)] == 2


def test_the_futures_of_appended_commands_are_counted_by_how_they_ended() -> None:
    f = Fsm([D] * 6)
    f.send(LeaderStart(1, 1), RegisterPending(1, futures(4)), Commit(2))
    f.send(LeaderStop(1))  # 3 and 4 may still commit under the next leader
    f.send(RegisterPending(5, futures(1)), EnterError("Node: bug"))
    f.send(RegisterPending(6, futures(2)))  # after the error: failed at once
    assert counts(f.metrics.proposals_completed) == {
        "applied": 2,
        "leadership_lost": 2,
        "failed": 3,
        "stopped": 0,
    }
    stopping = Fsm([D] * 2)
    stopping.send(RegisterPending(1, futures(2)))
    stopping.harness.stop()
    assert stopping.metrics.proposals_completed.value("stopped") == 2


# -- reads ------------------------------------------------------------------------------------


def read_at(fsm: Fsm, index: int, query: bytes = b"q") -> pykka.Future[Any]:
    reply: pykka.Future[Any] = pykka.ThreadingFuture()
    fsm.send(ReadAt(index, query, reply))
    return reply


def test_a_read_waits_until_its_index_is_applied_and_reads_in_index_order() -> None:
    fsm = Fsm([N, D, D, D, D])
    fsm.send(Commit(2))
    later, sooner = read_at(fsm, 4, b"later"), read_at(fsm, 3, b"sooner")
    now = read_at(fsm, 2, b"now")
    assert result(now) == (b"now", 2)
    assert is_pending(sooner) and is_pending(later)
    fsm.send(Commit(5))
    assert (result(sooner), result(later)) == ((b"sooner", 5), (b"later", 5))


def test_a_serializable_read_is_served_at_once() -> None:
    fsm = Fsm([N, D, D])
    assert result(read_at(fsm, 0)) == (b"q", 0)  # nothing applied, nothing waited for


def test_losing_leadership_fails_the_reads_still_waiting() -> None:
    fsm = Fsm([N, D, D])
    fsm.send(LeaderStart(1, 1))
    waiting = read_at(fsm, 3)
    fsm.send(LeaderStop(1))
    with pytest.raises(NotLeaderError):
        result(waiting)


def test_a_raising_on_read_fails_that_read_only() -> None:
    fsm = Fsm([N, D, D])
    fsm.send(Commit(2))
    before, boom, after = read_at(fsm, 1), read_at(fsm, 2, b"boom"), read_at(fsm, 2)
    with pytest.raises(ReadError, match="on_read raised RuntimeError") as info:
        result(boom)
    assert isinstance(info.value.cause, RuntimeError)
    assert result(before) == (b"q", 2) and result(after) == (b"q", 2)  # same batch, served
    assert fsm.actor.error is None and fsm.node.told == []
    fsm.send(Commit(3))
    assert fsm.sm.applied_indexes == [2, 3] and result(read_at(fsm, 0)) == (b"q", 3)
    assert counts(fsm.metrics.callback_errors) == {"on_read": 1}


def test_commands_of_gives_what_command_gives() -> None:
    from actors.state_machine import commands_of
    from storage.entry import command_entries

    entries = command_entries(7, 2, [b"a", b"bb"])
    assert commands_of(entries) == [Command(7, 2, b"a"), Command(8, 2, b"bb")]
    assert commands_of([]) == []
