"""actors.testkit: each helper does what docs/TESTING.md says, and every python block of
docs/TESTING.md runs as written (each on its own)."""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from actors.client_server import ClientServer
from actors.configuration import Configuration
from actors.errors import (
    DeadlockError,
    LeadershipLostError,
    MembershipChangeError,
    NodeFailedError,
    NodeStoppedError,
    NotLeaderError,
    OverloadedError,
    RaftError,
    RaftTimeoutError,
    ReadError,
    UnknownPeerError,
)
from actors.futures import RaftFuture
from actors.membership import ChangeRequest, Op
from actors.messages import (
    ChangeMembership,
    Commit,
    Committed,
    FollowerInstall,
    Grant,
    InstallLog,
    PersistTermVote,
    RegisterPending,
    RequestVotes,
    ResetPending,
    SaveSnapshot,
    TakeSnapshot,
)
from actors.options import NodeOptions
from actors.raft_node import RaftNode
from actors.role import Role
from actors.sessions import SessionStateMachine
from actors.state_machine import Command, StateMachine
from actors.testing import RecordingStateMachine, RecordingTransport
from actors.testkit import (
    FakeRaftNode,
    InMemoryCluster,
    PreVoteAbandoned,
    RecordingReplicators,
    build_ballot_box,
    build_fsm_caller,
    build_log_manager,
    build_node,
    build_replicator,
    build_snapshot_executor,
    data_entries,
    elect,
)
from storage.entry import EntryType, LogEntry
from storage.memory import MemoryLogStorage, MemoryMetaStorage
from storage.snapshot_storage import SnapshotMeta
from transport.memory import MemoryNetwork
from transport.results import decode_result
from transport.rpc import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    ClientRequest,
    ClientResponse,
    ClientStatus,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    RequestVoteRequest,
)

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "TESTING.md"
WAIT = 15.0


# -- docs/TESTING.md runs as written ---------------------------------------------------------


def guide_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)


def test_the_guide_has_an_example_for_each_helper() -> None:
    text = "\n".join(guide_blocks())
    for name in ("FakeRaftNode", "InMemoryCluster", "build_node", "elect(", "PreVoteAbandoned"):
        assert name in text, name
    assert len(guide_blocks()) >= 8


@pytest.mark.parametrize("number", range(len(guide_blocks())))
def test_a_python_block_of_the_guide_runs_as_written(number: int) -> None:
    block = guide_blocks()[number]
    exec(compile(block, f"{GUIDE.name}, python block {number + 1}", "exec"), {"__name__": "guide"})


# -- ActorHarness.advance(until=...) ---------------------------------------------------------


def test_advance_until_stops_at_the_first_deadline_after_which_it_holds() -> None:
    kit = build_node(initial_election_advance=False)  # first timer in [1, 2) s
    harness = kit.harness
    assert harness.advance(10.0, until=lambda: kit.pre_vote_running) is True
    stopped_at = kit.clock.now()
    assert 1.0 <= stopped_at < 2.0  # at the election timer, not the end of the window
    assert kit.log_manager.take() == [RequestVotes(1, ("b", "c"), pre_vote=True)]
    assert harness.advance(0.5, until=lambda: False) is False
    assert kit.clock.now() == pytest.approx(stopped_at + 0.5)
    assert harness.advance(5.0, until=lambda: True) is True  # checked before any timer
    assert kit.clock.now() == pytest.approx(stopped_at + 0.5)


# -- the Node's kit and elections ------------------------------------------------------------


def test_elect_runs_pre_vote_then_vote_and_starts_replicators_after_the_log() -> None:
    kit = build_node("a", ["a", "b", "c"], term=1, entries=data_entries(1, 1))
    term = elect(kit)
    assert term == 2 and kit.node.role is Role.LEADER and kit.node.term == 2
    # Replicators start at the term's first entry, after the log's last (2).
    assert kit.replicators.started == [("b", 2, 3), ("c", 2, 3)]
    assert sorted(kit.replicators.mailboxes) == ["b", "c"]
    # What the election told is forgotten.
    assert kit.log_manager.told == [] and kit.transport.sent == [] and kit.transcript.entries == []
    assert kit.leader_watch.current.role == "leader"


def test_elect_tells_the_log_manager_a_pre_vote_then_a_vote_in_order() -> None:
    kit = build_node()
    kit.harness.advance(kit.full_election_timeout, until=lambda: kit.pre_vote_running)
    pre = kit.log_manager.of_type(RequestVotes)
    assert pre == [RequestVotes(1, ("b", "c"), pre_vote=True)]
    kit.log_manager.clear()
    kit.transcript.clear()
    # elect picks up the pre-vote already running instead of waiting for another.
    now = kit.clock.now()
    elect(kit)
    assert kit.clock.now() == now
    assert kit.node.term == 1


def test_elect_needs_a_quorum_of_the_voters_given() -> None:
    five = ["a", "b", "c", "d", "e"]
    assert elect(build_node("a", five), voters=["c", "e"]) == 1  # a, c, e: a majority
    with pytest.raises(AssertionError, match="did not win its pre-vote"):
        elect(build_node("a", five), voters=["b"])


def test_elect_alone_and_elect_refused() -> None:
    alone = build_node("a", ["a"])
    assert elect(alone) == 1 and alone.node.role is Role.LEADER
    assert alone.replicators.started == []
    with pytest.raises(AssertionError, match="cannot be elected"):
        elect(alone)
    joining = build_node("d", ["a", "b", "c"], join=True)
    with pytest.raises(AssertionError, match="did not campaign"):
        elect(joining)


def test_elect_with_commit_lets_a_membership_change_proceed() -> None:
    def add_d(kit: Any) -> list[str]:
        kit.send(ChangeMembership(ChangeRequest.of(Op.ADD_PEER, ["d"]), RaftFuture()))
        return [peer for peer, _, _ in kit.replicators.started]

    waiting = build_node()
    elect(waiting)
    assert add_d(waiting) == ["b", "c"]  # waits for the term's first entry to commit
    committed = build_node()
    elect(committed, commit=True)
    assert add_d(committed) == ["b", "c", "d"]  # d catches up first


def test_advance_raises_when_a_pre_vote_starts_and_expires_unanswered() -> None:
    kit = build_node(initial_election_advance=False)
    with pytest.raises(PreVoteAbandoned, match="advance"):
        kit.advance(3 * kit.full_election_timeout)
    quiet = build_node(initial_election_advance=False)
    quiet.advance(3 * quiet.full_election_timeout, expire_pre_votes=True)
    assert quiet.log_manager.of_type(RequestVotes)[0] == RequestVotes(1, ("b", "c"), True)
    # A window that only starts the pre-vote is fine, and so is one in which it expires
    # having started before it (the test had its chance to answer).
    step = build_node(initial_election_advance=False)
    step.advance(step.full_election_timeout)
    assert step.pre_vote_running
    step.advance(step.full_election_timeout)
    assert not step.pre_vote_running and step.node.role is Role.FOLLOWER


def test_recording_replicators_record_starts_and_stops_in_order() -> None:
    factory = RecordingReplicators()
    b = factory.start("b", 3, 7)
    factory.start("c", 3, 7)
    factory.stop("b")
    assert factory.started == [("b", 3, 7), ("c", 3, 7)] and factory.stopped == ["b"]
    assert list(factory.mailboxes) == ["c"]
    b.tell("x")
    assert b.told == ["x"]


def test_a_leader_steps_down_and_stops_its_replicators_on_a_higher_term() -> None:
    kit = build_node()
    elect(kit)
    kit.send(AppendEntriesRequest(5, "b", 0, 0, (), 0, 1))
    assert kit.node.role is Role.FOLLOWER and kit.node.leader_id == "b"
    assert kit.replicators.stopped == ["b", "c"]
    assert PersistTermVote(5, None) in kit.log_manager.told


# -- the other builders ----------------------------------------------------------------------


def test_data_entries_number_from_first() -> None:
    assert data_entries(1, 2, first=4) == [
        LogEntry(4, 1, EntryType.DATA, b"c4"),
        LogEntry(5, 2, EntryType.DATA, b"c5"),
    ]


def test_builders_take_raft_options_or_their_fields_not_both() -> None:
    kit = build_replicator(max_inflight=2)
    assert kit.replicator.raft_options.max_inflight == 2
    with pytest.raises(TypeError, match="not both"):
        build_replicator(options=kit.replicator.raft_options, max_inflight=3)


def test_ballot_box_kit_records_both_collaborators_in_one_order() -> None:
    kit = build_ballot_box()
    kit.send(ResetPending(term=1, pending_index=1, conf=Configuration.of(["a", "b", "c"])))
    kit.send(Grant("b", 1, 1), Grant("a", 1, 1))
    assert kit.transcript.names() == ["fsm_caller", "log_manager"]
    assert kit.fsm_caller.take() == [Commit(1)] and kit.log_manager.take() == [Committed(1)]
    assert kit.node.told == []


def test_replicator_kit_probes_then_heartbeats_on_its_manual_clock() -> None:
    kit = build_replicator("b", "a", 2, entries=data_entries(1, 2), committed=1)
    [(_, probe)] = kit.transport.take()
    assert (probe.term, probe.prev_log_index, probe.prev_log_term) == (2, 2, 2)
    assert probe.committed_index == 1
    kit.send(AppendEntriesResponse(2, True, 2, "b", probe.seq, 2))
    assert kit.ballot_box.take() == [Grant("b", 2, 2)]
    assert kit.transport.take() == []
    kit.advance(kit.replicator.raft_options.heartbeat_interval)
    [(to, heartbeat)] = kit.transport.take()
    assert to == "b" and heartbeat.entries == () and heartbeat.seq > probe.seq


def test_log_manager_kit_persists_its_vote_before_any_request_vote_leaves() -> None:
    kit = build_log_manager("a", ["a", "b", "c"], entries=data_entries(1, 1), term=1)
    assert (kit.meta.term, kit.meta.voted_for) == (1, None)
    kit.send(RequestVotes(2, ("b", "c"), pre_vote=False))
    assert (kit.meta.term, kit.meta.voted_for) == (2, "a")
    sent = kit.transport.take()
    assert [to for to, _ in sent] == ["b", "c"]
    assert all(isinstance(m, RequestVoteRequest) for _, m in sent)
    assert sent[0][1].last_log_index == 2 and sent[0][1].last_log_term == 1


def test_fsm_caller_kit_applies_and_snapshots_into_its_memory_store() -> None:
    kit = build_fsm_caller(entries=data_entries(1, 1, 2), snapshots=True)
    sm = kit.state_machine
    assert isinstance(sm, RecordingStateMachine)
    futures = tuple(RaftFuture() for _ in range(3))
    kit.send(RegisterPending(1, futures), Commit(3))
    assert sm.batches == [[1, 2, 3]] and [f.get(timeout=0) for f in futures] == [1, 2, 3]
    kit.send(TakeSnapshot())
    assert kit.snapshot_executor is not None
    [save] = kit.snapshot_executor.take(SaveSnapshot)
    assert save.writer.meta.last_index == 3 and save.writer.meta.last_term == 2


def test_snapshot_executor_kit_installs_a_one_chunk_snapshot() -> None:
    conf = Configuration.of(["a", "b", "c"]).encode()
    data = b"state"
    request = InstallSnapshotRequest(
        term=3, leader_id="a", last_included_index=5, last_included_term=2, conf=conf,
        size=len(data), checksum=zlib.crc32(data), offset=0, data=data, done=True, seq=1,
    )  # fmt: skip
    kit = build_snapshot_executor("b")
    kit.send(FollowerInstall(request, 3))
    [install] = kit.log_manager.take(InstallLog)
    assert install.meta == SnapshotMeta(5, 2, conf, len(data), zlib.crc32(data))
    assert kit.snapshots.latest() == install.meta
    assert not any(isinstance(m, InstallSnapshotResponse) for _, m in kit.transport.sent)


# -- FakeRaftNode ----------------------------------------------------------------------------


def public_surface(cls: type) -> dict[str, Any]:
    """Each public name of `cls`: "property", or (coroutine?, parameters, return annotation)."""
    surface: dict[str, Any] = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        if isinstance(inspect.getattr_static(cls, name), property):
            surface[name] = "property"
            continue
        fn = getattr(cls, name)
        signature = inspect.signature(fn)
        surface[name] = (
            inspect.iscoroutinefunction(fn),
            [(p.name, p.kind, p.default, p.annotation) for p in signature.parameters.values()],
            str(signature.return_annotation).replace("FakeRaftNode", "RaftNode"),
        )
    return surface


def test_fake_raft_node_has_raft_nodes_public_surface_and_inherits_none_of_it() -> None:
    real, fake = public_surface(RaftNode), public_surface(FakeRaftNode)
    assert {name: fake.get(name) for name in real} == real
    inherited = [name for name in real if name not in vars(FakeRaftNode)]
    assert inherited == []  # a new RaftNode method must be faked, not run on missing state
    for name in ("apply", "apply_async", "read", "status", "wait_for_leader", "leadership"):
        assert name in real


@pytest.fixture
def sm() -> RecordingStateMachine:
    return RecordingStateMachine()


@pytest.fixture
def fake(sm: RecordingStateMachine) -> Iterator[FakeRaftNode[Any, Any]]:
    node: FakeRaftNode[Any, Any] = FakeRaftNode(sm, "a", ["a", "b", "c"])
    try:
        yield node
    finally:
        node.stop()


def test_fake_applies_in_order_on_the_callers_thread(
    fake: FakeRaftNode[Any, Any], sm: RecordingStateMachine
) -> None:
    assert sm.confs == [(1, ["a", "b", "c"])] and sm.events == ["start 1"]
    assert fake.apply(b"x").get(timeout=0) == 2
    futures = fake.apply_batch([b"y", b"z"])
    assert [f.get(timeout=0) for f in futures] == [3, 4]
    assert sm.batches == [[2], [3, 4]]  # one on_apply per batch
    assert [(c.index, c.term, c.data) for c in fake.applied] == [
        (2, 1, b"x"),
        (3, 1, b"y"),
        (4, 1, b"z"),
    ]
    status = fake.status()
    assert (status.role, status.term, status.leader, status.applied_index) == ("leader", 1, "a", 4)
    assert fake.apply_batch([]) == []
    with pytest.raises(ValueError, match="one future per command"):
        fake.apply_batch([b"x"], [])
    with pytest.raises(TypeError, match="bytes"):
        fake.apply("text")  # type: ignore[arg-type]


def test_fake_refuses_as_a_follower_with_the_leaders_hint(
    fake: FakeRaftNode[Any, Any], sm: RecordingStateMachine
) -> None:
    fake.become_follower("b")
    assert (fake.is_leader, fake.leader_id, fake.leadership.term) == (False, "b", 2)
    error = fake.apply(b"x").error()
    assert isinstance(error, NotLeaderError) and error.leader_hint == "b"
    assert not error.outcome_unknown
    # Served through the leader it knows; (query, the last command applied: none).
    assert fake.read(b"q").get(timeout=0) == (b"q", 0)
    assert isinstance(fake.read(b"q", on_follower=False).error(), NotLeaderError)
    fake.become_follower(None)
    assert fake.apply(b"x").error().leader_hint is None  # type: ignore[union-attr]
    assert isinstance(fake.read(b"q").error(), NotLeaderError)
    assert fake.read(b"q", "serializable").get(timeout=0) == (b"q", 0)
    assert sm.events == ["start 1", "stop 1"]
    assert sm.following == ["follow b 2", "unfollow b 2"]
    assert sm.applied == []


def test_fake_reads_fail_alone(fake: FakeRaftNode[Any, Any]) -> None:
    with pytest.raises(ValueError, match="consistency"):
        fake.read(b"q", "eventual")
    error = fake.read(b"boom").error()
    assert isinstance(error, ReadError) and isinstance(error.cause, RuntimeError)
    assert fake.apply(b"x").get(timeout=0) == 2  # still serving

    class WriteOnly(StateMachine):
        def on_apply(self, commands: Sequence[Command]) -> list[Any]:
            return [None for _ in commands]

    write_only: FakeRaftNode[Any, Any] = FakeRaftNode(WriteOnly())
    try:
        assert isinstance(write_only.read(b"q").error(), ReadError)
    finally:
        write_only.stop()


def test_fake_holds_commands_until_commit_and_fails_them_with_the_leadership(
    sm: RecordingStateMachine,
) -> None:
    node: FakeRaftNode[Any, Any] = FakeRaftNode(sm, auto_commit=False)
    try:
        first, second, third = (node.apply(b"%d" % n) for n in range(3))
        assert node.status().last_log_index == 4 and node.status().applied_index == 1
        assert node.commit(1) == 1
        assert first.get(timeout=0) == 2 and not second.done()
        node.become_follower("b")
        for lost in (second, third):
            error = lost.error()
            assert isinstance(error, LeadershipLostError) and error.outcome_unknown
        assert node.held == [] and sm.applied_indexes == [2]
    finally:
        node.stop()


def test_fake_stop_fails_what_it_held_and_refuses_the_rest(sm: RecordingStateMachine) -> None:
    node: FakeRaftNode[Any, Any] = FakeRaftNode(sm, auto_commit=False)
    held = node.apply(b"x")
    node.stop()
    node.stop()  # idempotent
    error = held.error()
    assert isinstance(error, NodeStoppedError) and error.outcome_unknown
    after = node.apply(b"y").error()
    assert isinstance(after, NodeStoppedError) and not after.outcome_unknown
    assert sm.events == ["start 1", "stop 1", "shutdown"]
    assert node.leadership.role == "shutdown"


def test_fake_refuses_proposals_on_demand(fake: FakeRaftNode[Any, Any]) -> None:
    fake.refuse_proposals(OverloadedError("busy"))
    assert isinstance(fake.apply(b"x").error(), OverloadedError)
    fake.refuse_proposals(None)
    assert fake.apply(b"x").get(timeout=0) == 2


def test_a_raising_state_machine_puts_the_fake_in_error() -> None:
    reasons: list[str] = []
    sm = RecordingStateMachine(fail_at=3)
    node: FakeRaftNode[Any, Any] = FakeRaftNode(sm, on_error=reasons.append)
    try:
        assert node.apply(b"ok").get(timeout=0) == 2
        doomed = node.apply(b"doomed").error()
        assert isinstance(doomed, NodeFailedError) and doomed.outcome_unknown
        assert node.status().role == "error" and "boom at 3" in (node.status().error or "")
        assert len(reasons) == 1 and "boom at 3" in reasons[0]
        assert [type(e) for e in sm.errors] == [RuntimeError]
        assert sm.events == ["start 1", "stop 1"]
        later = node.apply(b"later").error()
        assert isinstance(later, NodeFailedError) and not later.outcome_unknown
    finally:
        node.stop()


def test_a_callback_waiting_on_the_fakes_future_gets_deadlock_error() -> None:
    class Impatient(RecordingStateMachine):
        node: FakeRaftNode[Any, Any]

        def on_apply(self, commands: Sequence[Command]) -> list[Any]:
            if commands[0].data == b"outer":
                self.node.apply(b"inner").get(timeout=1)  # applied after this batch, never in it
            return super().on_apply(commands)

    sm = Impatient()
    node: FakeRaftNode[Any, Any] = FakeRaftNode(sm)
    sm.node = node
    try:
        error = node.apply(b"outer").error()
        assert isinstance(error, NodeFailedError) and "DeadlockError" in str(error)
        assert isinstance(sm.errors[0], DeadlockError)
    finally:
        node.stop()


def test_a_done_callback_may_propose_again(
    fake: FakeRaftNode[Any, Any], sm: RecordingStateMachine
) -> None:
    chained: list[Any] = []
    first = fake.apply(b"first")
    first.add_done_callback(lambda _: chained.append(fake.apply(b"second")))
    assert [f.get(timeout=0) for f in chained] == [3]
    assert sm.batches == [[2], [3]]


def test_proposals_from_inside_on_apply_follow_in_later_batches() -> None:
    class Chain(RecordingStateMachine):
        node: FakeRaftNode[Any, Any]
        inner: list[RaftFuture[Any]]

        def on_apply(self, commands: Sequence[Command]) -> list[Any]:
            for command in commands:
                if command.data in (b"1", b"2"):  # propose the next, as a callback may
                    self.inner.append(self.node.apply(b"%d" % (int(command.data) + 1)))
            return super().on_apply(commands)

    sm = Chain()
    sm.inner = []
    node: FakeRaftNode[Any, Any] = FakeRaftNode(sm)
    sm.node = node
    try:
        outer = node.apply(b"1")
        assert sm.batches == [[2], [3], [4]]  # each after the batch that proposed it
        assert [f.get(timeout=0) for f in [outer, *sm.inner]] == [2, 3, 4]
    finally:
        node.stop()


def test_fake_transfer_and_membership_changes(
    fake: FakeRaftNode[Any, Any], sm: RecordingStateMachine
) -> None:
    assert fake.add_peer("d").get(timeout=0) == Configuration.of(["a", "b", "c", "d"])
    assert sm.confs[-1] == (2, ["a", "b", "c", "d"])
    assert isinstance(fake.add_learners(["b"]).error(), MembershipChangeError)
    assert fake.add_learners(["e"]).get(timeout=0).learners == {"e"}
    assert isinstance(fake.transfer_leadership("z").error(), UnknownPeerError)
    assert fake.transfer_leadership().get(timeout=0) == "b"  # the smallest other voter
    assert fake.leadership.role == "follower" and fake.leader_id == "b"
    assert isinstance(fake.remove_peer("d").error(), NotLeaderError)
    fake.become_leader(7)
    assert fake.remove_peer("a").get(timeout=0).peers == {"b", "c", "d"}
    assert fake.leader_id == "b" and fake.leadership.term == 8  # removed: it handed over
    assert sm.events == ["start 1", "stop 1", "start 7", "stop 7"]


def test_fake_snapshots_the_applied_state(sm: RecordingStateMachine) -> None:
    node: FakeRaftNode[Any, Any] = FakeRaftNode(sm)
    try:
        node.apply(b"x")
        meta = node.snapshot().get(timeout=0)
        assert (meta.last_index, meta.last_term) == (2, 1) and meta.size > 0
        assert node.snapshot().get(timeout=0) == meta  # nothing applied since
        with node.snapshots.open() as reader:
            fresh = RecordingStateMachine()
            fresh.on_snapshot_load(reader)
        assert fresh.applied == sm.applied
        sm.fail_snapshot_save = True
        node.apply(b"y")
        assert isinstance(node.snapshot().error(), RaftError)
    finally:
        node.stop()


def test_fake_wait_for_leader_wakes_on_a_change_from_another_thread() -> None:
    node: FakeRaftNode[Any, Any] = FakeRaftNode(RecordingStateMachine(), leading=False)
    try:
        with pytest.raises(RaftTimeoutError):
            node.wait_for_leader(timeout=0.05)
        found: list[str] = []
        waiter = threading.Thread(target=lambda: found.append(node.wait_for_leader(WAIT)))
        waiter.start()
        node.become_follower("b")
        waiter.join(WAIT)
        assert found == ["b"]
    finally:
        node.stop()


def test_fake_apply_async_awaits_on_the_loop(fake: FakeRaftNode[Any, Any]) -> None:
    async def main() -> list[Any]:
        return [await fake.apply_async(b"x"), await fake.read_async(b"q")]

    assert asyncio.run(main()) == [2, (b"q", 2)]


def test_fake_start_owns_its_storage_and_transport() -> None:
    network = MemoryNetwork()
    transport = network.endpoint("a")
    log, meta = MemoryLogStorage(), MemoryMetaStorage()
    options = NodeOptions("a", Configuration.of(["a", "b"]))
    node = FakeRaftNode.start(options, RecordingStateMachine(), log, meta, transport)
    try:
        assert node.is_leader and node.status().conf == ["a", "b"] and transport.running
    finally:
        node.stop()
    assert not transport.running and log._closed and meta._closed


class Counter(SessionStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def on_command(self, command: bytes, index: int) -> Any:
        self.total += int(command)
        return self.total


def test_a_client_server_runs_over_the_fake() -> None:
    """An application's request handler (here ClientServer) tested against the fake."""
    counter = Counter()
    node: FakeRaftNode[Any, Any] = FakeRaftNode(counter, "a", ["a", "b", "c"])
    transport = RecordingTransport("a")
    try:
        ClientServer(node, transport)
        node.deliver(ClientRequest("c1", 1, 1, b"5"))
        node.deliver(ClientRequest("c1", 2, 1, b"5"))  # a retry: answered from the session
        answers = [m for _, m in transport.take()]
        assert all(isinstance(m, ClientResponse) for m in answers)
        assert [(m.status, decode_result(m.result)) for m in answers] == [
            (ClientStatus.OK, 5),
            (ClientStatus.OK, 5),
        ]
        assert counter.total == 5
        node.become_follower("b")
        node.deliver(ClientRequest("c1", 3, 2, b"1"))
        [(_, refused)] = transport.take()
        assert (refused.status, refused.leader_hint) == (ClientStatus.NOT_LEADER, "b")
    finally:
        node.stop()


# -- InMemoryCluster -------------------------------------------------------------------------


def test_a_cluster_stops_every_node_when_its_block_raises() -> None:
    with pytest.raises(RuntimeError, match="the test failed"), InMemoryCluster(3) as cluster:
        nodes = [cluster.node(peer) for peer in cluster.ids]
        cluster.wait_for_leader()
        raise RuntimeError("the test failed")
    assert cluster.running() == []
    for node in nodes:
        assert node.leadership.role == "shutdown"
        assert isinstance(node.apply(b"x").error(), NodeStoppedError)


class Total(StateMachine):
    def __init__(self) -> None:
        self.total = 0

    def on_apply(self, commands: Sequence[Command]) -> list[int]:
        results = []
        for command in commands:
            self.total += int(command.data)
            results.append(self.total)
        return results

    def on_read(self, query: bytes) -> int:
        return self.total


def test_a_cluster_of_the_applications_state_machine_survives_a_partitioned_leader() -> None:
    with InMemoryCluster(3, Total) as cluster:
        old = cluster.wait_for_leader()
        assert cluster.apply(b"2") == 2
        cluster.partition([old])
        others = [peer for peer in cluster.ids if peer != old]
        new = cluster.wait_for_leader(among=others)
        assert new != old
        assert cluster.node(new).apply(b"3").get(timeout=WAIT) == 5
        cluster.heal()
        cluster.wait_until(
            lambda: [cluster.sm(peer).total for peer in cluster.ids] == [5, 5, 5], "all at 5"
        )
        with pytest.raises(TypeError, match="not a RecordingStateMachine"):
            cluster.applied(old)
        cluster.crash(old)
        assert cluster.running() == others
        cluster.restart(old)
        fresh = cluster.sm(old)
        cluster.wait_until(lambda: fresh.total == 5, "the restarted peer replayed its log")
