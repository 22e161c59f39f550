"""The log after snapshots: LogView's known terms, compaction and installs, the start-up
reconciliation, and the LogManager's rules (compaction margin, installs, appends below a
snapshot)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from actors.configuration import Configuration
from actors.log_manager import LogManager
from actors.log_view import LogView, reconcile_with_snapshot
from actors.messages import FollowerAppend, InstallLog, LoadSnapshot, SnapshotSaved
from actors.options import RaftOptions
from actors.testing import ActorHarness, RecordingMailbox, RecordingTransport
from storage.entry import EntryType, LogEntry
from storage.errors import CorruptLogError
from storage.memory import MemoryLogStorage, MemoryMetaStorage
from storage.snapshot_storage import SnapshotMeta
from transport.rpc import AppendEntriesRequest, AppendEntriesResponse

ME, LEADER = "b:2", "a:1"
CONF = Configuration.of((ME, LEADER, "c:3")).encode()


def entries(first: int, terms: Sequence[int]) -> list[LogEntry]:
    return [LogEntry(first + n, t, EntryType.DATA, b"x") for n, t in enumerate(terms)]


def storage_with(first: int, terms: Sequence[int]) -> MemoryLogStorage:
    storage = MemoryLogStorage(first_log_index=first)
    if terms:
        storage.append_entries(entries(first, terms))
    return storage


def snap(index: int, term: int) -> SnapshotMeta:
    return SnapshotMeta(index, term, CONF)


# -- LogView -----------------------------------------------------------------------------------


def test_known_term_distinguishes_compacted_from_known() -> None:
    view = LogView(storage_with(1, [1, 1, 2, 2, 3]))
    view.compact(snap(4, 2), 4)  # keeps 4..5
    assert (view.first_index, view.snapshot_index, view.snapshot_term) == (4, 4, 2)
    assert view.known_term(0) == 0
    assert view.known_term(3) is None  # compacted: no term known
    assert view.known_term(4) == 2
    assert view.known_term(5) == 3
    assert view.known_term(6) is None  # beyond the end
    assert [e.index for e in view.entries(1, 9)] == [4, 5]


def test_compaction_keeps_the_snapshot_term_even_when_its_entry_is_gone() -> None:
    view = LogView(storage_with(1, [1, 1, 2]))
    view.compact(snap(3, 2), 3)
    view.compact(snap(3, 2), 3)  # idempotent
    assert view.term_at(3) == 2 and view.known_term(2) is None


def test_install_without_the_snapshot_entry_discards_the_log() -> None:
    view = LogView(storage_with(1, [1, 1, 1]))
    view.install(snap(10, 4))
    assert (view.first_index, view.last_index, view.last_term) == (11, 10, 4)
    assert view.committed_index == 10 and view.known_term(10) == 4
    assert view.entries(1, 20) == []
    view.append_unstable(entries(11, [5]))
    view.persist(entries(11, [5]))
    assert view.known_term(11) == 5


def test_install_keeps_a_suffix_that_continues_the_snapshot() -> None:
    view = LogView(storage_with(1, [1, 2, 2, 3]))
    view.install(snap(3, 2))
    assert (view.first_index, view.last_index, view.snapshot_index) == (1, 4, 3)
    assert view.known_term(4) == 3 and view.committed_index == 3


def test_install_over_a_conflicting_entry_discards_the_log() -> None:
    view = LogView(storage_with(1, [1, 2, 2, 3]))
    view.install(snap(3, 5))  # our 3 has term 2: a different history from there
    assert (view.first_index, view.last_index, view.last_term) == (4, 3, 5)


@pytest.mark.parametrize(
    ("first", "terms", "snapshot", "expected_range"),
    [
        pytest.param(1, [1, 1, 2], None, (1, 3), id="no snapshot, log from 1"),
        pytest.param(1, [1, 1, 2], (2, 1), (1, 3), id="log holds the snapshot entry"),
        pytest.param(3, [2], (2, 1), (3, 3), id="log starts right after it"),
        pytest.param(3, [], (2, 1), (3, 2), id="empty, right after it"),
        pytest.param(1, [1], (5, 2), (6, 5), id="log ends before it: reset"),
        pytest.param(1, [1, 1, 1, 1, 1, 1], (5, 2), (6, 5), id="term differs there: reset"),
    ],
)
def test_reconcile_with_snapshot(
    first: int,
    terms: list[int],
    snapshot: tuple[int, int] | None,
    expected_range: tuple[int, int],
) -> None:
    storage = storage_with(first, terms)
    reconcile_with_snapshot(storage, snap(*snapshot) if snapshot else None)
    assert (storage.first_log_index(), storage.last_log_index()) == expected_range


@pytest.mark.parametrize(
    ("first", "snapshot"),
    [
        pytest.param(4, None, id="log after 1 and no snapshot"),
        pytest.param(9, (5, 2), id="a hole between snapshot and log"),
    ],
)
def test_reconcile_refuses_a_log_that_lost_entries(
    first: int, snapshot: tuple[int, int] | None
) -> None:
    storage = storage_with(first, [3, 3])
    with pytest.raises(CorruptLogError, match="starts at"):
        reconcile_with_snapshot(storage, snap(*snapshot) if snapshot else None)
    assert (storage.first_log_index(), storage.last_log_index()) == (first, first + 1)


def test_a_view_over_a_snapshot_starts_committed_and_applied_at_it() -> None:
    view = LogView(storage_with(6, [3]), snapshot=snap(5, 2))
    assert (view.first_index, view.last_index, view.committed_index) == (6, 6, 5)
    assert view.applied_index == 5 and view.term_at(5) == 2


# -- LogManager --------------------------------------------------------------------------------


class Lm:
    def __init__(self, storage: MemoryLogStorage, margin: int = 2, **view: int) -> None:
        self.view = LogView(storage, **view)  # type: ignore[arg-type]
        self.transport = RecordingTransport(ME)
        self.fsm = RecordingMailbox("fsm")
        self.actor = LogManager(
            ME, self.view, MemoryMetaStorage(), self.transport, RecordingMailbox("node"),
            RecordingMailbox("bb"), self.fsm, RaftOptions(snapshot_log_margin=margin),
        )  # fmt: skip
        self.harness = ActorHarness(self.actor)

    def append(self, prev: int, prev_term: int, terms: Sequence[int], commit: int = 0) -> None:
        req = AppendEntriesRequest(
            5, LEADER, prev, prev_term, tuple(entries(prev + 1, terms)), commit, 1
        )
        self.harness.send(FollowerAppend(req, 5))

    def answers(self) -> list[AppendEntriesResponse]:
        return [m for _, m in self.transport.take() if isinstance(m, AppendEntriesResponse)]


@pytest.mark.parametrize(
    ("margin", "snapshot_at", "expected_first"),
    [
        pytest.param(0, 6, 7, id="no margin: everything up to the snapshot goes"),
        pytest.param(2, 6, 5, id="a margin of 2 entries stays"),
        pytest.param(100, 6, 1, id="margin beyond the log: nothing goes"),
        pytest.param(0, 10, 10, id="never a non-durable entry: the last stays"),
    ],
)
def test_snapshot_saved_compacts_before_the_margin(
    margin: int, snapshot_at: int, expected_first: int
) -> None:
    lm = Lm(storage_with(1, [1] * 10), margin=margin)
    lm.harness.send(SnapshotSaved(snap(snapshot_at, 1)))
    assert lm.view.first_index == expected_first == lm.view._storage.first_log_index()
    assert lm.view.snapshot_index == snapshot_at


def test_an_older_snapshot_saved_after_a_newer_one_changes_nothing() -> None:
    lm = Lm(storage_with(1, [1] * 10), margin=0)
    lm.harness.send(SnapshotSaved(snap(8, 1)))
    lm.harness.send(SnapshotSaved(snap(4, 1)))
    assert (lm.view.first_index, lm.view.snapshot_index) == (9, 8)


def test_install_log_resets_then_has_the_fsm_load() -> None:
    lm = Lm(storage_with(1, [1, 1]))
    lm.harness.send(InstallLog(snap(50, 3)))
    assert (lm.view.first_index, lm.view.last_index, lm.actor.committed_index) == (51, 50, 50)
    assert lm.fsm.take(LoadSnapshot) == [LoadSnapshot(snap(50, 3))]
    # The next append continues the snapshot.
    lm.append(50, 3, [4])
    assert [(a.success, a.last_log_index) for a in lm.answers()] == [(True, 51)]


def test_install_log_of_a_snapshot_already_committed_keeps_the_log() -> None:
    lm = Lm(storage_with(1, [1] * 6))
    lm.append(6, 1, [], commit=6)
    lm.answers()
    lm.harness.send(InstallLog(snap(4, 1)))
    assert (lm.view.first_index, lm.view.last_index) == (1, 6)
    assert lm.fsm.take(LoadSnapshot) == [LoadSnapshot(snap(4, 1))]  # the FSM decides


def test_an_append_reaching_below_the_snapshot_matches_at_it() -> None:
    lm = Lm(storage_with(11, [3]), snapshot=snap(10, 2))  # type: ignore[arg-type]
    # prev 7 is compacted: entries 8..10 are committed here, only 11 and 12 are looked at.
    lm.append(7, 2, [2, 2, 2, 3, 3], commit=12)
    answers = lm.answers()
    assert [(a.success, a.last_log_index) for a in answers] == [(True, 12)]
    assert lm.view.known_term(12) == 3 and lm.actor.committed_index == 12


def test_a_heartbeat_at_index_0_matches_any_log() -> None:
    lm = Lm(storage_with(11, [3]), snapshot=snap(10, 2))  # type: ignore[arg-type]
    lm.append(0, 0, [], commit=0)
    assert [(a.success, a.last_log_index) for a in lm.answers()] == [(True, 11)]
    assert lm.actor.committed_index == 10  # moved by nothing
