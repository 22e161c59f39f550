"""Node and InstallSnapshot: the leader and term checks (the same as AppendEntries', Raft
Fig. 2 and 13), the hand-off to the SnapshotExecutor, refusals, and the snapshot in status."""

from __future__ import annotations

import random
import zlib

import pytest

from actors.clock import ManualClock
from actors.configuration import Configuration
from actors.log_view import LogView
from actors.messages import (
    FatalError,
    FollowerInstall,
    Following,
    GetStatus,
    LeaderLogReady,
    PersistTermVote,
    RequestVotes,
    StepDown,
)
from actors.node import Node, Role
from actors.options import NodeOptions, RaftOptions
from actors.testing import ActorHarness, RecordingMailbox, RecordingTransport
from storage.entry import EntryType, LogEntry
from storage.memory import MemoryLogStorage
from storage.snapshot_storage import SnapshotMeta
from transport.rpc import (
    AppendEntriesRequest,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    RequestVoteRequest,
    RequestVoteResponse,
)

A, B, C = "a:1", "b:2", "c:3"  # this node is A
TIMEOUT = 1.0
FULL_TIMEOUT = 2 * TIMEOUT + 0.01  # timeout plus the largest random extra
CONF = Configuration.of((A, B, C)).encode()


class NoReplicators:
    def start(self, peer_id: str, term: int, next_index: int) -> RecordingMailbox:
        return RecordingMailbox(peer_id)

    def stop(self, peer_id: str) -> None:
        pass


class Fixture:
    def __init__(self, term: int = 0, executor: bool = True, log_view: LogView | None = None):
        self.clock = ManualClock()
        self.lm = RecordingMailbox("log_manager")
        self.bb = RecordingMailbox("ballot_box")
        self.fsm = RecordingMailbox("fsm_caller")
        self.executor = RecordingMailbox("snapshot_executor") if executor else None
        self.transport = RecordingTransport(A)
        options = NodeOptions(
            A,
            Configuration.of((A, B, C)),
            RaftOptions(election_timeout=TIMEOUT, initial_election_advance=False),
        )
        self.node = Node(
            options,
            term=term,
            voted_for=None,
            log_view=log_view or LogView(MemoryLogStorage(), bootstrap_conf=options.initial_conf),
            log_manager=self.lm,
            ballot_box=self.bb,
            fsm_caller=self.fsm,
            transport=self.transport,
            replicators=NoReplicators(),
            clock=self.clock,
            rng=random.Random(7),
            snapshot_executor=self.executor,
        )
        self.harness = ActorHarness(self.node, self.clock)

    def send(self, message: object) -> object:
        return self.harness.send(message)

    def forwarded(self) -> list[FollowerInstall]:
        assert self.executor is not None
        return self.executor.take()

    def rejected(self) -> dict[str, int]:
        status = self.node.on_get_status(GetStatus())
        return status.rejected


def install(term: int, leader: str = B, seq: int = 1, offset: int = 0) -> InstallSnapshotRequest:
    data = b"snapshot"
    return InstallSnapshotRequest(
        term, leader, 10, 2, CONF, len(data), zlib.crc32(data), offset, data, True, seq
    )


@pytest.fixture
def f() -> Fixture:
    return Fixture(term=2)


def test_a_member_leading_this_term_has_its_chunk_passed_to_the_executor(f: Fixture) -> None:
    req = install(2)
    f.send(req)
    assert f.forwarded() == [FollowerInstall(req, 2)]
    assert f.node.leader_id == B and f.node.role is Role.FOLLOWER
    assert f.lm.told == [Following(B, 2)]  # the executor will tell it InstallLog
    assert f.transport.sent == []  # the executor answers


def test_a_chunk_counts_as_leader_contact() -> None:
    # Control: without contact, this node's election timer fires by 1.94 (rng seed 7).
    quiet = Fixture(term=2)
    quiet.harness.advance(1.94)
    assert RequestVotes(3, (B, C), pre_vote=True) in quiet.lm.told

    f = Fixture(term=2)
    f.harness.advance(0.95)
    f.send(install(2))
    f.harness.advance(0.99)  # 1.94: within an election timeout of the chunk
    assert not any(isinstance(m, RequestVotes) for m in f.lm.told)
    # And a pre-vote meanwhile is refused: the leader is live.
    f.send(RequestVoteRequest(3, C, 99, 2, pre_vote=True))
    assert f.transport.take() == [(C, RequestVoteResponse(2, False, True, A, 3))]
    # Once the leader is silent for a whole timeout, the timer fires.
    f.harness.advance(FULL_TIMEOUT)
    assert any(isinstance(m, RequestVotes) for m in f.lm.told)


@pytest.mark.parametrize("leader", ["evil:9", A], ids=["a stranger", "ourselves"])
def test_a_chunk_from_a_non_member_is_refused_and_counted(f: Fixture, leader: str) -> None:
    f.send(install(7, leader=leader))
    assert f.forwarded() == []
    assert f.node.term == 2 and f.node.leader_id is None  # a stranger moves nothing
    assert f.lm.told == [] and f.transport.sent == []
    assert f.rejected() == {"install_snapshot_from_non_member": 1}


def test_a_chunk_of_an_earlier_term_is_refused_with_our_term(f: Fixture) -> None:
    f.send(install(1, seq=9))
    assert f.transport.take() == [(B, InstallSnapshotResponse(2, False, A, 9, 1, 10, 0, False))]
    assert f.forwarded() == [] and f.lm.told == []
    assert f.node.leader_id is None


def test_a_chunk_of_a_higher_term_makes_us_its_follower(f: Fixture) -> None:
    req = install(5)
    f.send(req)
    assert (f.node.role, f.node.term, f.node.leader_id) == (Role.FOLLOWER, 5, B)
    assert f.lm.take() == [PersistTermVote(5, None), Following(B, 5)]  # the term first
    assert f.forwarded() == [FollowerInstall(req, 5)]


def test_a_leader_seeing_a_chunk_of_a_higher_term_steps_down() -> None:
    f = Fixture(term=0)
    f.harness.advance(FULL_TIMEOUT)
    f.send(RequestVoteResponse(0, True, True, B, 1))
    f.send(RequestVoteResponse(1, True, False, B, 1))
    f.send(LeaderLogReady(1, 1))
    assert f.node.role is Role.LEADER
    f.lm.clear()
    req = install(4, leader=C)
    f.send(req)
    assert (f.node.role, f.node.term, f.node.leader_id) == (Role.FOLLOWER, 4, C)
    assert StepDown(1) in f.lm.told
    assert f.forwarded() == [FollowerInstall(req, 4)]


def test_a_second_leader_in_our_term_is_refused(f: Fixture) -> None:
    f.send(AppendEntriesRequest(2, B, 0, 0, (), 0, 1))  # B leads term 2
    f.lm.clear()
    f.send(install(2, leader=C, seq=4))
    # Two leaders in one term: never follow either; move on to a fresh term.
    assert f.forwarded() == []
    assert f.transport.take() == [(C, InstallSnapshotResponse(3, False, A, 4, 2, 10, 0, False))]
    assert f.node.term == 3 and f.node.leader_id is None


def test_without_an_executor_a_chunk_is_refused_and_counted() -> None:
    f = Fixture(term=2, executor=False)
    f.send(install(2, seq=7))
    assert f.rejected() == {"install_snapshot_without_snapshots": 1}
    assert f.lm.told == [Following(B, 2)]  # a leader all the same
    # Answered, so that the leader backs off rather than resend for ever.
    assert f.transport.take() == [(B, InstallSnapshotResponse(2, False, A, 7, 2, 10, 0, False))]


def test_in_error_chunks_go_nowhere(f: Fixture) -> None:
    f.send(FatalError("LogManager", "disk gone"))
    f.lm.clear()
    f.send(install(2))
    f.send(install(5))
    assert f.forwarded() == [] and f.transport.sent == []
    assert f.node.term == 2 and f.lm.told == []


def test_status_shows_the_first_log_index_and_the_snapshot() -> None:
    storage = MemoryLogStorage(first_log_index=11)
    storage.append_entries([LogEntry(i, 3, EntryType.DATA, b"x") for i in range(11, 14)])
    view = LogView(storage, snapshot=SnapshotMeta(10, 2, CONF))
    f = Fixture(term=3, log_view=view)
    status = f.node.on_get_status(GetStatus())
    assert (status.first_log_index, status.snapshot_index, status.snapshot_term) == (11, 10, 2)
    assert (status.last_log_index, status.commit_index, status.applied_index) == (13, 10, 10)
    assert {
        k: status.to_json()[k] for k in ("first_log_index", "snapshot_index", "snapshot_term")
    } == {"first_log_index": 11, "snapshot_index": 10, "snapshot_term": 2}


def test_status_without_a_snapshot(f: Fixture) -> None:
    status = f.node.on_get_status(GetStatus())
    assert (status.first_log_index, status.snapshot_index, status.snapshot_term) == (1, 0, 0)
