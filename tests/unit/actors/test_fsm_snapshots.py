"""FSMCaller and snapshots: when it saves (threshold, TakeSnapshot, one at a time), what a
failed save does (nothing fatal), loading at start and on install (LoadSnapshot), and a
corrupt snapshot (fatal). The SnapshotExecutor is a recording mailbox; `Fsm.finish` plays it."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import msgpack
import pykka
import pytest

from actors.clock import ManualClock
from actors.configuration import Configuration
from actors.errors import LeadershipLostError, NodeFailedError, NodeStoppedError, RaftError
from actors.fsm_caller import FSMCaller
from actors.log_view import LogView
from actors.messages import (
    Commit,
    FatalError,
    LoadSnapshot,
    RegisterPending,
    SaveSnapshot,
    SnapshotDone,
    SnapshotLoaded,
    TakeSnapshot,
)
from actors.metrics import RaftMetrics
from actors.options import RaftOptions
from actors.testing import ActorHarness, RecordingMailbox, RecordingStateMachine
from storage.entry import EntryType, LogEntry
from storage.errors import CorruptSnapshotError, StorageError
from storage.memory import MemoryLogStorage, MemorySnapshotStorage
from storage.snapshot_storage import SnapshotMeta, SnapshotWriter
from tests.unit.actors.test_fsm_caller import futures, is_pending

CONF = Configuration.of(("a:1", "b:2", "c:3"))


def data_entry(index: int, term: int = 1) -> LogEntry:
    return LogEntry(index, term, EntryType.DATA, b"c%d" % index)


def sm_state(indexes: Sequence[int], mark: bytes = b"c") -> bytes:
    """RecordingStateMachine's snapshot format: its `applied` list, msgpacked."""
    return msgpack.packb([(i, 1, mark + b"%d" % i) for i in indexes])


def put_snapshot(snapshots: MemorySnapshotStorage, index: int, data: bytes) -> SnapshotMeta:
    writer = snapshots.create_writer(SnapshotMeta(index, 1, CONF.encode()))
    writer.write(data)
    return snapshots.commit(writer)


class WriterLog(MemorySnapshotStorage):
    """Remembers every writer it created, to check none is left open."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: list[SnapshotWriter] = []

    def create_writer(
        self,
        meta: SnapshotMeta,
        *,
        expected_size: int | None = None,
        expected_checksum: int | None = None,
    ) -> SnapshotWriter:
        writer = super().create_writer(
            meta, expected_size=expected_size, expected_checksum=expected_checksum
        )
        self.writers.append(writer)
        return writer


class Fsm:
    """An FSMCaller with snapshots on: the log holds DATA entries first..last (term 1)."""

    def __init__(
        self,
        last: int = 20,
        threshold: int = 5,
        batch: int = 64,
        sm: RecordingStateMachine | None = None,
        snapshots: MemorySnapshotStorage | None = None,
        first: int = 1,
        log: Sequence[LogEntry] | None = None,
    ) -> None:
        self.sm = sm or RecordingStateMachine()
        self.snapshots = snapshots if snapshots is not None else WriterLog()
        storage = MemoryLogStorage(first_log_index=first)
        storage.append_entries(list(log or [data_entry(i) for i in range(first, last + 1)]))
        self.log_view = LogView(storage, snapshot=self.snapshots.latest())
        self.node = RecordingMailbox("node")
        self.executor = RecordingMailbox("executor")
        self.clock = ManualClock()  # what the metrics time durations with
        self.metrics = RaftMetrics(clock=self.clock.now)
        options = RaftOptions(snapshot_threshold=threshold, max_apply_batch=batch)
        self.actor = FSMCaller(
            self.sm,
            self.log_view,
            self.node,
            options,
            CONF,
            self.snapshots,
            self.executor,
            metrics=self.metrics,
        )
        self.harness = ActorHarness(self.actor)

    def send(self, *messages: object) -> None:
        for message in messages:
            self.harness.send(message)

    def saves(self) -> list[SaveSnapshot]:
        """The SaveSnapshot told to the executor since the last call."""
        return self.executor.take(SaveSnapshot)

    def finish(self, save: SaveSnapshot) -> SnapshotMeta:
        """Play the executor: finish the writing, commit, tell SnapshotDone."""
        if save.finish is not None:
            save.finish()
        meta = self.snapshots.commit(save.writer)
        self.send(SnapshotDone(meta))
        return meta


def error_of(future: pykka.Future[Any]) -> BaseException:
    with pytest.raises(Exception) as caught:
        future.get(timeout=0)
    return caught.value


def indexes(saves: Sequence[SaveSnapshot]) -> list[int]:
    return [s.writer.meta.last_index for s in saves]


# -- when a snapshot is saved ----------------------------------------------------------------


def test_the_threshold_saves_once_then_again_after_another_threshold() -> None:
    fsm = Fsm(threshold=5, batch=2)
    fsm.send(Commit(5))
    assert fsm.sm.batches == [[1, 2], [3, 4], [5]]
    [save] = fsm.saves()
    assert save.writer.meta == SnapshotMeta(5, 1, CONF.encode())  # size and checksum: at commit
    assert save.finish is not None  # the state machine writes off the apply path
    fsm.send(Commit(8))
    assert fsm.saves() == []
    fsm.finish(save)
    assert fsm.saves() == []  # 8 < 5 + 5
    fsm.send(Commit(9))
    assert fsm.saves() == []
    fsm.send(Commit(10))
    assert indexes(fsm.saves()) == [10]


def test_a_save_is_counted_and_timed_from_its_capture_until_it_is_durable() -> None:
    fsm = Fsm(threshold=5)
    fsm.send(Commit(5))
    [save] = fsm.saves()
    fsm.clock.advance(1.5)  # while the executor writes and commits it
    fsm.finish(save)
    assert fsm.metrics.snapshots.value("save", "ok") == 1
    timed = fsm.metrics.snapshot_seconds.sample("save")
    assert (timed.count, timed.sum) == (1, 1.5)


def test_one_save_at_a_time_even_when_the_threshold_passes_again() -> None:
    fsm = Fsm(threshold=5, batch=2)
    fsm.send(Commit(5))
    [save] = fsm.saves()
    fsm.send(Commit(12))  # two thresholds' worth while the first save runs
    assert fsm.saves() == [] and fsm.sm.applied_indexes[-1] == 12
    fsm.finish(save)
    fsm.send(Commit(13))
    [later] = fsm.saves()  # one, not one per threshold passed
    assert later.writer.meta.last_index >= 10


def test_the_state_saved_is_the_state_at_the_snapshot_index() -> None:
    fsm = Fsm(threshold=5)
    fsm.send(Commit(5))
    [save] = fsm.saves()
    fsm.send(Commit(8))  # applying goes on while the executor writes
    meta = fsm.finish(save)
    assert meta.last_index == 5
    with fsm.snapshots.open(5) as reader:
        assert [tuple(e) for e in msgpack.unpackb(reader.read())] == [
            (i, 1, b"c%d" % i) for i in range(1, 6)
        ]
    assert (meta.size, meta.checksum) == (
        len(sm_state(range(1, 6))),
        zlib.crc32(sm_state(range(1, 6))),
    )


def test_the_snapshot_records_the_configuration_in_force_at_its_index() -> None:
    new_conf = Configuration.of(("a:1", "b:2", "d:4"))
    log = [data_entry(1), data_entry(2), LogEntry(3, 1, EntryType.CONFIGURATION, new_conf.encode())]
    log += [data_entry(i) for i in range(4, 8)]
    fsm = Fsm(threshold=5, log=log)
    fsm.send(Commit(7))
    [save] = fsm.saves()
    assert Configuration.decode(save.writer.meta.conf) == new_conf


def test_take_snapshot_while_one_runs_is_served_by_the_next() -> None:
    fsm = Fsm(threshold=5)
    fsm.send(Commit(5))
    [first] = fsm.saves()
    fsm.send(Commit(7))
    reply = pykka.ThreadingFuture[Any]()
    fsm.send(TakeSnapshot(reply))
    assert fsm.saves() == [] and is_pending(reply)
    fsm.finish(first)
    assert is_pending(reply)  # snapshot 5 is older than what it asked for
    [second] = fsm.saves()
    assert second.writer.meta.last_index == 7
    meta = fsm.finish(second)
    assert reply.get(timeout=0) == meta


def test_take_snapshot_with_nothing_applied_since_completes_with_the_latest() -> None:
    fsm = Fsm(threshold=5)
    fsm.send(Commit(5))
    meta = fsm.finish(*fsm.saves())
    reply = pykka.ThreadingFuture[Any]()
    fsm.send(TakeSnapshot(reply))
    assert reply.get(timeout=0) == meta
    fsm.send(TakeSnapshot(if_changed=True))  # the interval timer's: nothing to do
    assert fsm.saves() == []
    fsm.send(Commit(6))
    fsm.send(TakeSnapshot(if_changed=True))
    assert indexes(fsm.saves()) == [6]


def test_take_snapshot_if_changed_with_a_reply_is_always_answered() -> None:
    fsm = Fsm(threshold=5)
    fsm.send(Commit(5))
    meta = fsm.finish(*fsm.saves())
    reply = pykka.ThreadingFuture[Any]()
    fsm.send(TakeSnapshot(reply, if_changed=True))
    assert not is_pending(reply)
    assert reply.get(timeout=0) == meta


def test_snapshot_done_completes_the_replies_with_the_meta() -> None:
    fsm = Fsm(threshold=100)
    fsm.send(Commit(3))
    replies = futures(2)
    fsm.send(TakeSnapshot(replies[0]))
    fsm.send(TakeSnapshot(replies[1]))  # while it runs: served by the next (nothing new: at once)
    [save] = fsm.saves()
    meta = fsm.finish(save)
    assert [r.get(timeout=0) for r in replies] == [meta, meta]
    assert fsm.actor.snapshot_meta == meta
    assert fsm.saves() == []


def test_a_save_that_failed_in_the_executor_fails_its_reply_only() -> None:
    fsm = Fsm(threshold=100)
    fsm.sm.fail_snapshot_save = True  # the part that runs off the apply path raises
    fsm.send(Commit(3))
    reply = pykka.ThreadingFuture[Any]()
    fsm.send(TakeSnapshot(reply))
    [save] = fsm.saves()
    assert save.finish is not None
    with pytest.raises(RuntimeError) as caught:
        save.finish()
    fsm.snapshots.abort(save.writer)
    fsm.send(SnapshotDone(save.writer.meta, caught.value))  # what the executor tells
    assert error_of(reply) is caught.value
    assert fsm.actor.error is None and fsm.node.told == []
    assert fsm.actor.snapshot_meta is None
    assert fsm.metrics.snapshots.value("save", "failed") == 1
    assert fsm.metrics.snapshot_seconds.sample("save").count == 0  # only successes are timed
    # Applying goes on; the next request tries again.
    fsm.sm.fail_snapshot_save = False
    fsm.send(Commit(4), TakeSnapshot())
    assert indexes(fsm.saves()) == [4]


class SaveRaises(RecordingStateMachine):
    """on_snapshot_save itself (the part on the apply path) raises, `times` times."""

    def __init__(self, times: int = 1) -> None:
        super().__init__()
        self.times = times

    def on_snapshot_save(self, writer: Any) -> Any:
        if self.times > 0:
            self.times -= 1
            writer.write(b"partial")
            raise RuntimeError("cannot capture the state")
        return super().on_snapshot_save(writer)


def test_on_snapshot_save_raising_fails_the_reply_not_the_node() -> None:
    fsm = Fsm(threshold=100, sm=SaveRaises())
    fsm.send(Commit(3))
    reply = pykka.ThreadingFuture[Any]()
    fsm.send(TakeSnapshot(reply))
    error = error_of(reply)
    assert isinstance(error, RaftError) and "snapshot at 3 failed" in str(error)
    assert fsm.saves() == []
    assert fsm.actor.error is None and fsm.node.told == [] and fsm.sm.errors == []
    assert fsm.metrics.snapshots.value("save", "failed") == 1
    assert isinstance(fsm.snapshots, WriterLog)
    [writer] = fsm.snapshots.writers
    with pytest.raises(StorageError):  # aborted, not left open
        writer.write(b"")
    fsm.send(Commit(6))
    assert fsm.sm.applied_indexes == [1, 2, 3, 4, 5, 6]


def test_after_a_failed_save_the_threshold_tries_again_a_threshold_later() -> None:
    fsm = Fsm(threshold=5, sm=SaveRaises())
    fsm.send(Commit(5))  # the save at 5 raises
    assert fsm.saves() == []
    fsm.send(Commit(9))
    assert fsm.saves() == []
    fsm.send(Commit(10))
    assert indexes(fsm.saves()) == [10]


def test_take_snapshot_without_snapshots_fails_at_once() -> None:
    sm = RecordingStateMachine()
    storage = MemoryLogStorage()
    actor = FSMCaller(sm, LogView(storage), RecordingMailbox("node"), RaftOptions(), CONF)
    harness = ActorHarness(actor)
    reply = pykka.ThreadingFuture[Any]()
    harness.send(TakeSnapshot(reply))
    assert isinstance(error_of(reply), RaftError)


def test_stop_fails_the_replies_of_a_save_under_way() -> None:
    fsm = Fsm(threshold=100)
    fsm.send(Commit(3))
    running, queued = futures(2)
    fsm.send(TakeSnapshot(running), TakeSnapshot(queued))
    fsm.harness.stop()
    assert isinstance(error_of(running), NodeStoppedError)
    assert isinstance(error_of(queued), NodeStoppedError)


# -- loading ---------------------------------------------------------------------------------


def test_startup_loads_the_newest_snapshot_and_applies_the_log_after_it() -> None:
    snapshots = MemorySnapshotStorage()
    put_snapshot(snapshots, 3, sm_state(range(1, 4)))
    newest = put_snapshot(snapshots, 5, sm_state(range(1, 6)))
    fsm = Fsm(snapshots=snapshots, first=6, last=12, threshold=5)  # the log was compacted
    assert fsm.sm.loaded == [5]
    assert fsm.actor.applied_index == 5 == fsm.log_view.applied_index
    assert fsm.actor.snapshot_meta == newest and fsm.actor.conf == CONF
    assert fsm.sm.batches == []  # nothing applied, only loaded
    assert fsm.metrics.snapshots.value("load", "ok") == 1
    assert fsm.metrics.snapshot_seconds.sample("load").count == 1
    fsm.send(Commit(8))
    assert fsm.sm.batches == [[6, 7, 8]]
    assert fsm.sm.applied_indexes == list(range(1, 9))
    fsm.send(Commit(9))
    assert fsm.saves() == []  # the threshold counts from the snapshot loaded
    fsm.send(Commit(10))
    assert indexes(fsm.saves()) == [10]


def test_startup_applies_what_is_committed_beyond_the_snapshot_at_once() -> None:
    snapshots = MemorySnapshotStorage()
    put_snapshot(snapshots, 5, sm_state(range(1, 6)))
    storage = MemoryLogStorage(first_log_index=6)
    storage.append_entries([data_entry(i) for i in range(6, 9)])
    view = LogView(storage, snapshot=snapshots.latest())
    view.set_committed(8)
    sm = RecordingStateMachine()
    actor = FSMCaller(
        sm, view, RecordingMailbox("node"), RaftOptions(), CONF, snapshots, RecordingMailbox("x")
    )
    ActorHarness(actor)
    assert sm.loaded == [5] and sm.batches == [[6, 7, 8]]


def test_load_snapshot_replaces_the_state_and_fails_futures_it_covers() -> None:
    fsm = Fsm(last=12, threshold=100)
    fsm.send(Commit(3))
    futs = futures(9)  # 4..12
    fsm.send(RegisterPending(4, futs))
    leaders = put_snapshot(fsm.snapshots, 10, sm_state(range(1, 11), mark=b"L"))
    fsm.send(LoadSnapshot(leaders))
    assert fsm.sm.loaded == [10]
    assert fsm.sm.applied == [(i, 1, b"L%d" % i) for i in range(1, 11)]  # replaced, not merged
    assert fsm.actor.applied_index == 10 == fsm.log_view.applied_index
    assert fsm.executor.take() == [SnapshotLoaded(leaders)]
    assert all(isinstance(error_of(f), LeadershipLostError) for f in futs[:7])  # 4..10
    assert is_pending(futs[7]) and is_pending(futs[8])
    fsm.send(Commit(12))  # the log after the snapshot is applied on top of it
    assert [f.get(timeout=0) for f in futs[7:]] == [11, 12]
    assert fsm.sm.applied_indexes == list(range(1, 13))


def test_load_snapshot_at_or_below_applied_loads_nothing_but_answers() -> None:
    fsm = Fsm(threshold=100)
    fsm.send(Commit(8))
    meta = put_snapshot(fsm.snapshots, 5, sm_state(range(1, 6), mark=b"L"))
    fsm.send(LoadSnapshot(meta))
    assert fsm.sm.loaded == []
    assert fsm.sm.applied_indexes == list(range(1, 9))
    assert fsm.actor.applied_index == 8
    assert fsm.executor.take() == [SnapshotLoaded(meta)]
    assert fsm.actor.error is None


def test_a_corrupt_snapshot_at_start_is_fatal() -> None:
    snapshots = MemorySnapshotStorage()
    put_snapshot(snapshots, 5, sm_state(range(1, 6)))
    snapshots.corrupt(5, offset=3)
    fsm = Fsm(snapshots=snapshots, first=6, last=8)
    [fatal] = fsm.node.take(FatalError)
    assert fatal.component == "FSMCaller"
    assert "loading the newest snapshot at start (5)" in fatal.reason
    assert "CorruptSnapshotError" in fatal.reason
    assert fsm.actor.error is not None
    assert [type(e) for e in fsm.sm.errors] == [CorruptSnapshotError]
    assert fsm.metrics.snapshots.value("load", "failed") == 1
    fsm.send(Commit(8))
    assert fsm.sm.batches == [] and fsm.actor.applied_index == 0


def test_a_corrupt_installed_snapshot_is_fatal_and_answered_as_failed() -> None:
    fsm = Fsm(threshold=100)
    fsm.send(Commit(3))
    futs = futures(2)
    fsm.send(RegisterPending(11, futs))
    meta = put_snapshot(fsm.snapshots, 10, sm_state(range(1, 11), mark=b"L"))
    fsm.snapshots.corrupt(10)
    fsm.send(LoadSnapshot(meta))
    assert len(fsm.node.take(FatalError)) == 1
    [loaded] = fsm.executor.take()
    assert isinstance(loaded, SnapshotLoaded) and loaded.meta == meta
    assert loaded.error is not None and "CorruptSnapshotError" in loaded.error
    assert all(isinstance(error_of(f), NodeFailedError) for f in futs)
    assert fsm.actor.applied_index == 3
