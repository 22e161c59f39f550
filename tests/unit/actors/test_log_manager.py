"""LogManager, alone: persistence before promises, vote log checks, conflict resolution,
group commit, and the commit-index guard."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pykka
import pytest

from actors.clock import ManualClock
from actors.configuration import Configuration
from actors.log_manager import LogManager
from actors.log_view import LogView
from actors.messages import (
    AdoptClusterId,
    BecomeLeader,
    CheckVote,
    ClearPending,
    Commit,
    Committed,
    ConfigurationChanged,
    EnterError,
    FatalError,
    FollowerAppend,
    Grant,
    LeaderLogReady,
    LeaderStart,
    PersistLeaderEntries,
    PersistTermVote,
    RegisterPending,
    RequestVotes,
    ResetPending,
    StepDown,
    VoteGranted,
)
from actors.metrics import RaftMetrics
from actors.options import RaftOptions
from actors.testing import ActorHarness, RecordingMailbox, RecordingTransport, Transcript
from storage.entry import EntryType, LogEntry
from storage.errors import StorageError
from storage.memory import MemoryLogStorage, MemoryMetaStorage
from storage.snapshot_storage import SnapshotMeta
from transport.rpc import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    RequestVoteRequest,
    RequestVoteResponse,
)

ME, B, C = "a:1", "b:2", "c:3"
CONF = Configuration.of((ME, B, C))


def data(index: int, term: int, payload: bytes = b"x") -> LogEntry:
    return LogEntry(index, term, EntryType.DATA, payload)


class RecordingLog(MemoryLogStorage):
    """Records each append (one per group commit); each takes `fsync_seconds` of `clock`."""

    def __init__(self, transcript: Transcript) -> None:
        super().__init__()
        self.transcript = transcript
        self.appends = 0
        self.clock = ManualClock()
        self.fsync_seconds = 0.0

    def append_entries(self, entries: Sequence[LogEntry]) -> None:
        super().append_entries(entries)
        self.clock.advance(self.fsync_seconds)
        self.appends += 1
        self.transcript.entries.append(("fsync", [e.index for e in entries]))


class RecordingMeta(MemoryMetaStorage):
    def __init__(self, transcript: Transcript) -> None:
        super().__init__()
        self.transcript = transcript

    def set_term_and_vote(self, term: int, voted_for: str | None) -> None:
        super().set_term_and_vote(term, voted_for)
        self.transcript.entries.append(("persist", (term, voted_for)))


class Fixture:
    def __init__(
        self, entries: Sequence[LogEntry] = (), raft_options: RaftOptions | None = None
    ) -> None:
        self.transcript = Transcript()
        self.storage = RecordingLog(self.transcript)
        if entries:
            MemoryLogStorage.append_entries(self.storage, entries)
        self.meta = RecordingMeta(self.transcript)
        self.log_view = LogView(self.storage, bootstrap_conf=CONF)
        self.transport = RecordingTransport(ME, self.transcript)
        self.node = RecordingMailbox("node", self.transcript)
        self.ballot = RecordingMailbox("ballot_box", self.transcript)
        self.fsm = RecordingMailbox("fsm_caller", self.transcript)
        self.metrics = RaftMetrics(clock=self.storage.clock.now)
        self.lm = LogManager(
            ME,
            self.log_view,
            self.meta,
            self.transport,
            self.node,
            self.ballot,
            self.fsm,
            raft_options or RaftOptions(),
            metrics=self.metrics,
        )
        self.harness = ActorHarness(self.lm)

    def send(self, message: Any) -> Any:
        return self.harness.send(message)

    def log(self) -> list[tuple[int, int]]:
        return [(e.index, e.term) for e in self.log_view.entries(1, self.log_view.last_index)]


def append_req(
    term: int, prev: int, prev_term: int, entries: Sequence[LogEntry], commit: int = 0, seq: int = 1
) -> AppendEntriesRequest:
    return AppendEntriesRequest(term, B, prev, prev_term, tuple(entries), commit, seq)


# -- elections --------------------------------------------------------------------------------


def test_vote_for_self_is_durable_before_any_request_vote_leaves() -> None:
    f = Fixture([data(1, 1), data(2, 2)])
    f.send(RequestVotes(3, (B, C), pre_vote=False))
    assert f.transcript.names() == ["persist", "send:b:2", "send:c:3"]
    request = RequestVoteRequest(3, ME, 2, 2, pre_vote=False)
    assert f.transport.take() == [(B, request), (C, request)]
    assert (f.meta.term, f.meta.voted_for) == (3, ME)


def test_an_adopted_cluster_id_is_durable_before_the_entries_queued_after_it() -> None:
    f = Fixture()
    f.send(AdoptClusterId("c1"))
    f.send(FollowerAppend(append_req(1, 0, 0, [data(1, 1)]), 1))
    assert (f.meta.crash().cluster_id, f.log_view.cluster_id) == ("c1", "c1")
    assert f.log() == [(1, 1)]
    f.send(AdoptClusterId("c2"))  # never changes once set
    f.send(RequestVotes(3, (B,), pre_vote=True))
    [(_, request)] = f.transport.take(RequestVoteRequest)
    assert (f.meta.cluster_id, request.cluster_id) == ("c1", "c1")
    assert f.node.take(FatalError) == []


def test_pre_vote_round_persists_nothing() -> None:
    f = Fixture()
    f.send(RequestVotes(1, (B,), pre_vote=True))
    assert f.transcript.names() == ["send:b:2"]
    assert (f.meta.term, f.meta.voted_for) == (0, None)


@pytest.mark.parametrize(
    ("last_index", "last_term", "granted"),
    [
        (5, 2, True),  # same last term, longer log
        (3, 2, True),  # identical
        (2, 2, False),  # same last term, shorter log
        (1, 3, True),  # higher last term wins whatever the length (§5.4.1)
        (9, 1, False),  # lower last term loses whatever the length
    ],
)
def test_vote_granted_only_to_an_up_to_date_log(
    last_index: int, last_term: int, granted: bool
) -> None:
    f = Fixture([data(1, 1), data(2, 2), data(3, 2)])
    req = RequestVoteRequest(4, B, last_index, last_term, pre_vote=False)
    f.send(CheckVote(req, 4))
    assert f.transport.take() == [(B, RequestVoteResponse(4, granted, False, ME, 4))]
    assert f.node.take() == ([VoteGranted(4, B)] if granted else [])
    assert f.meta.voted_for == (B if granted else None)


def test_vote_is_durable_before_it_is_sent() -> None:
    f = Fixture()
    f.send(CheckVote(RequestVoteRequest(1, B, 0, 0, pre_vote=False), 1))
    names = f.transcript.names()
    assert names[0] == "persist" and sorted(names[1:]) == ["node", "send:b:2"]


def test_second_candidate_in_the_same_term_is_refused() -> None:
    f = Fixture()
    f.send(CheckVote(RequestVoteRequest(1, B, 0, 0, pre_vote=False), 1))
    f.transport.take()
    f.send(CheckVote(RequestVoteRequest(1, C, 0, 0, pre_vote=False), 1))
    assert f.transport.take() == [(C, RequestVoteResponse(1, False, False, ME, 1))]
    assert f.meta.voted_for == B


def test_pre_vote_check_answers_on_the_log_alone() -> None:
    f = Fixture([data(1, 1)])
    f.send(CheckVote(RequestVoteRequest(2, B, 1, 1, pre_vote=True), 0))
    assert f.transport.take() == [(B, RequestVoteResponse(0, True, True, ME, 2))]
    assert f.meta.voted_for is None and f.node.told == []


def test_persist_term_never_goes_back_nor_erases_a_vote() -> None:
    f = Fixture()
    f.send(PersistTermVote(3, B))
    f.send(PersistTermVote(3, None))
    f.send(PersistTermVote(2, None))
    assert (f.meta.term, f.meta.voted_for) == (3, B)


# -- follower appends ---------------------------------------------------------------------------


def test_follower_ack_is_sent_only_after_the_entries_are_durable() -> None:
    f = Fixture()
    f.send(FollowerAppend(append_req(1, 0, 0, [data(1, 1), data(2, 1)], commit=1), 1))
    assert f.transcript.names() == ["fsync", "send:b:2", "fsm_caller"]
    assert f.transport.take() == [(B, AppendEntriesResponse(1, True, 2, ME, 1, 1))]
    assert f.fsm.take() == [Commit(1)]
    assert f.storage.durable_last_index() == 2


def test_group_commit_writes_queued_appends_with_one_fsync() -> None:
    f = Fixture()
    # Three appends reach the mailbox before the LogManager gets to its Flush.
    f.lm.receive(FollowerAppend(append_req(1, 0, 0, [data(1, 1)], seq=1), 1))
    f.lm.receive(FollowerAppend(append_req(1, 1, 1, [data(2, 1)], seq=2), 1))
    f.lm.receive(FollowerAppend(append_req(1, 2, 1, [data(3, 1)], seq=3), 1))
    assert f.transport.sent == []
    f.harness.run()
    assert f.storage.appends == 1
    assert [resp.seq for _, resp in f.transport.take()] == [1, 2, 3]


def test_each_follower_append_is_counted_answered_once_its_ack_left_or_it_was_dropped() -> None:
    """The quiet-log rule of actors/quiet_heartbeat.py: answered counts an append only after
    its ack was sent (or when none will be)."""
    f = Fixture()
    appends = f.log_view.appends
    f.lm.receive(FollowerAppend(append_req(1, 0, 0, [data(1, 1)]), 1))
    assert appends.answered == 0  # held until the Flush
    f.harness.run()
    assert appends.answered == 1 and len(f.transport.take()) == 1
    f.meta.set_term_and_vote(3, None)
    f.send(FollowerAppend(append_req(2, 1, 1, [data(2, 2)]), 2))  # stale: dropped, no answer
    assert appends.answered == 2 and f.transport.take() == []
    f.send(EnterError("Node: bug"))
    assert appends.closed


def test_mismatch_answers_with_our_last_index_and_the_conflicting_term() -> None:
    """Raft dissertation §5.3: a refusal says where to resume. Our log ends before prev: the
    conflict index is our end (term 0). Our entry at prev has another term: that term, and the
    first index we hold of it, so the leader skips all of it in one round trip."""
    f = Fixture([data(1, 1), data(2, 1)])
    f.send(FollowerAppend(append_req(2, 5, 2, [data(6, 2)]), 2))
    assert f.transport.take() == [(B, AppendEntriesResponse(2, False, 2, ME, 1, 2, 0, 3))]
    f.send(FollowerAppend(append_req(2, 2, 2, [data(3, 2)]), 2))  # right index, wrong term
    assert f.transport.take() == [(B, AppendEntriesResponse(2, False, 2, ME, 1, 2, 1, 1))]
    assert f.log() == [(1, 1), (2, 1)]


def test_the_conflict_hint_names_the_first_index_of_a_long_conflicting_term() -> None:
    f = Fixture([data(1, 1), *(data(i, 2) for i in range(2, 102)), data(102, 3)])
    f.send(FollowerAppend(append_req(4, 80, 4, [data(81, 4)]), 4))
    [(_, refusal)] = f.transport.take()
    assert (refusal.success, refusal.conflict_term, refusal.conflict_index) == (False, 2, 2)


def test_conflicting_suffix_is_replaced() -> None:
    f = Fixture([data(1, 1), data(2, 1), data(3, 1)])
    f.send(FollowerAppend(append_req(2, 1, 1, [data(2, 1), data(3, 2), data(4, 2)]), 2))
    assert f.log() == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert f.transport.take()[0][1].success


def test_duplicate_append_changes_nothing() -> None:
    f = Fixture([data(1, 1), data(2, 1), data(3, 1)])
    f.send(FollowerAppend(append_req(1, 0, 0, [data(1, 1), data(2, 1)]), 1))
    assert f.log() == [(1, 1), (2, 1), (3, 1)]  # a retransmission never truncates


def test_commit_index_advances_only_up_to_what_the_request_proved() -> None:
    f = Fixture([data(1, 1), data(2, 1), data(3, 7)])  # 3 is from a stale term
    f.send(FollowerAppend(append_req(2, 2, 1, [], commit=9), 2))  # heartbeat matching up to 2
    assert f.fsm.take() == [Commit(2)]


def test_truncating_at_or_below_the_commit_index_is_fatal_not_silent() -> None:
    f = Fixture([data(1, 1), data(2, 1), data(3, 1)])
    f.send(Committed(3))
    f.send(FollowerAppend(append_req(2, 1, 1, [data(2, 2)]), 2))
    assert f.log() == [(1, 1), (2, 1), (3, 1)]
    (fatal,) = f.node.take()
    assert isinstance(fatal, FatalError) and "commit index 3" in fatal.reason
    assert f.transport.sent == []
    f.send(FollowerAppend(append_req(2, 3, 1, [data(4, 2)]), 2))
    assert f.log() == [(1, 1), (2, 1), (3, 1)]  # failed: promises nothing more


# -- leader -------------------------------------------------------------------------------------


def test_become_leader_resets_ballots_and_appends_the_configuration_in_its_term() -> None:
    f = Fixture([data(1, 1), data(2, 1)])
    applied = pykka.ThreadingFuture()
    f.send(BecomeLeader(3, applied))
    assert f.ballot.take() == [ResetPending(3, 3, CONF), Grant(ME, 3, 3)]
    assert f.fsm.take() == [LeaderStart(3, 3), RegisterPending(3, (applied,))]
    assert f.node.take() == [LeaderLogReady(3, 3)]
    assert f.log_view.entry(3) == LogEntry(3, 3, EntryType.CONFIGURATION, CONF.encode())


def test_leader_entries_appended_by_the_node_are_granted_after_one_fsync() -> None:
    """The leader's Node appends to the tail (actors/leader_log.py); the LogManager writes what
    it is handed in one group commit and only then grants the leader's own vote."""
    f = Fixture()
    f.send(BecomeLeader(1))
    f.transcript.clear()
    batches = [[data(2, 1, b"p"), data(3, 1, b"q")], [data(4, 1, b"r")]]
    for batch in batches:
        f.log_view.append_unstable(batch)
        f.lm.receive(PersistLeaderEntries(1, batch))  # both queued before the Flush
    f.harness.run()
    assert f.transcript.entries == [("fsync", [2, 3, 4]), ("ballot_box", Grant(ME, 4, 1))]
    assert f.log_view.stable_index == 4


def test_leader_entries_of_a_term_not_led_here_are_a_fatal_invariant() -> None:
    f = Fixture()
    f.send(BecomeLeader(1))
    f.send(StepDown(1))
    f.transcript.clear()
    f.log_view.append_unstable([data(2, 1)])
    f.send(PersistLeaderEntries(1, [data(2, 1)]))
    [fatal] = f.node.take(FatalError)
    assert "InvariantViolationError" in fatal.reason
    assert ("fsync", [2]) not in f.transcript.entries


# -- hardening: supervision ---------------------------------------


def test_enter_error_writes_acks_and_votes_nothing_more_and_tells_the_fsm_caller() -> None:
    f = Fixture([data(1, 1)])
    f.send(BecomeLeader(2))
    f.ballot.clear(), f.fsm.clear(), f.transport.take()
    f.send(EnterError("FSMCaller: boom"))
    assert f.ballot.take() == [ClearPending(2)]
    assert f.fsm.take() == [EnterError("FSMCaller: boom")]
    f.send(FollowerAppend(append_req(3, 2, 2, [data(3, 3)]), 3))
    f.send(CheckVote(RequestVoteRequest(4, B, 9, 9, pre_vote=False), 4))
    f.send(RequestVotes(5, (B, C), pre_vote=False))
    assert f.transport.take() == [] and f.log() == [(1, 1), (2, 2)]
    assert (f.meta.term, f.meta.voted_for) == (0, None)


def test_a_storage_failure_enters_error_through_the_supervisor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    f = Fixture()

    def broken(entries: Sequence[LogEntry]) -> None:
        raise StorageError("disk on fire")

    monkeypatch.setattr(f.storage, "append_entries", broken)
    f.send(FollowerAppend(append_req(1, 0, 0, [data(1, 1)]), 1))
    [fatal] = f.node.take(FatalError)
    assert fatal.component == "LogManager" and "disk on fire" in fatal.reason
    assert f.fsm.take() == [EnterError("StorageError: disk on fire")]
    assert f.transport.take() == []  # the entry was never acknowledged


def test_a_failed_log_manager_neither_becomes_leader_nor_writes_leader_entries() -> None:
    f = Fixture([data(1, 1)])
    f.send(EnterError("Node: bug"))
    f.transcript.clear()
    f.send(BecomeLeader(2))
    assert f.transcript.entries == [] and f.log() == [(1, 1)]
    f.send(PersistLeaderEntries(2, [data(2, 2)]))  # told before the Node heard of the ERROR
    assert f.transcript.entries == [] and f.storage.last_log_index() == 1


# -- metrics ----------------------------------------------------------------------------------


def test_each_group_commit_observes_the_time_of_its_append_and_fsync() -> None:
    f = Fixture()
    f.storage.fsync_seconds = 0.003
    f.send(FollowerAppend(append_req(1, 0, 0, [data(1, 1)]), 1))
    f.storage.fsync_seconds = 0.2
    f.send(FollowerAppend(append_req(1, 1, 1, [data(2, 1), data(3, 1)]), 1))
    sample = f.metrics.fsync_seconds.sample()
    assert sample.count == 2 == f.storage.appends and sample.sum == pytest.approx(0.203)
    bounds = f.metrics.fsync_seconds.bounds
    assert sample.buckets[bounds.index(0.0025)] == 0
    assert sample.buckets[bounds.index(0.005)] == 1
    assert sample.buckets[bounds.index(0.25)] == 2
    f.send(FollowerAppend(append_req(1, 3, 1, []), 1))  # a heartbeat: nothing to write
    assert f.metrics.fsync_seconds.sample().count == 2


# -- configurations -------------------------------------------------------------------------


def conf_entry(index: int, term: int, conf: Configuration) -> LogEntry:
    return LogEntry(index, term, EntryType.CONFIGURATION, conf.encode())


def test_a_follower_adopts_appended_configurations_and_drops_truncated_ones() -> None:
    f = Fixture()
    grown = Configuration.of((ME, B, C, "d:4"))
    f.send(FollowerAppend(append_req(1, 0, 0, [data(1, 1), conf_entry(2, 1, grown)]), 1))
    assert f.log_view.conf == grown
    assert f.node.take() == [ConfigurationChanged()]
    # A new leader of term 2 never had entry 2: it goes, and its configuration with it.
    f.send(FollowerAppend(append_req(2, 1, 1, [data(2, 2)]), 2))
    assert f.log_view.conf == CONF
    assert f.node.take() == [ConfigurationChanged()]
    f.send(FollowerAppend(append_req(2, 2, 2, [data(3, 2)]), 2))
    assert f.node.take() == []  # no configuration changed: nothing told


def test_a_configuration_that_does_not_decode_is_never_appended() -> None:
    f = Fixture()
    bad = LogEntry(2, 1, EntryType.CONFIGURATION, b"\xc1garbage")
    f.send(FollowerAppend(append_req(1, 0, 0, [data(1, 1), bad]), 1))
    assert f.log() == [] and f.log_view.last_index == 0
    assert f.transport.take() == []  # and nothing acknowledged


def test_a_restarted_log_uses_its_own_newest_configuration() -> None:
    grown = Configuration.of((ME, B, C, "d:4"))
    storage = MemoryLogStorage()
    storage.append_entries([data(1, 1), conf_entry(2, 1, grown), data(3, 1)])
    view = LogView(storage, bootstrap_conf=CONF)
    assert (view.conf, view.conf_state.index, view.conf_state.previous) == (grown, 2, CONF)


def test_the_snapshots_configuration_rules_until_a_later_entry_and_installs_replace_it() -> None:
    snapped = Configuration.of((ME, B, "d:4"))
    storage = MemoryLogStorage(first_log_index=11)
    storage.append_entries([data(11, 2), data(12, 2)])
    view = LogView(storage, snapshot=SnapshotMeta(10, 2, snapped.encode()), bootstrap_conf=CONF)
    assert (view.conf, view.conf_state.index) == (snapped, 10)  # not the bootstrap one
    later = Configuration.of((ME, B, "d:4", "e:5"))
    view.append_unstable([conf_entry(13, 2, later)])
    view.persist([view.entry(13)])  # type: ignore[list-item]
    # Compaction through 12 keeps the later entry in force; its predecessor is the snapshot's.
    view.compact(SnapshotMeta(12, 2, snapped.encode()), 11)
    assert (view.conf, view.conf_state.previous) == (later, snapped)
    # A leader's snapshot past the log's end replaces all of it, configuration too.
    other = Configuration.of(("x:1", "y:2", "z:3"))
    view.install(SnapshotMeta(40, 5, other.encode()))
    assert (view.conf, view.conf_state.index) == (other, 40)


def test_an_append_handed_over_on_a_stale_view_of_the_term_is_dropped_for_the_node() -> None:
    """The Router hands an AppendEntries of term 1 straight over, but the Node has meanwhile
    moved to term 2 (persisted first): appending it would let a deposed leader count this
    peer. Nothing is appended or answered; the Node refuses it (LeaderContact)."""
    f = Fixture()
    f.send(PersistTermVote(2, None))
    f.transcript.clear()
    f.send(FollowerAppend(append_req(1, 0, 0, [data(1, 1)]), 1))
    assert f.log_view.last_index == 0 and f.transport.take() == [] and f.node.take() == []
    assert f.transcript.names() == []
    f.send(FollowerAppend(append_req(2, 0, 0, [data(1, 2)]), 2))  # the current term: appended
    assert f.log_view.last_index == 1 and len(f.transport.take()) == 1
