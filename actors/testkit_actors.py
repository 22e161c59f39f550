"""Builders of one actor for a unit test: the actor on the test's thread (ActorHarness), a
ManualClock, memory storage, and every collaborator a RecordingMailbox returned to the test.

    kit = build_ballot_box()
    kit.send(ResetPending(term=2, pending_index=1, conf=Configuration.of(["a", "b", "c"])))
    kit.send(Grant("a", 1, 2), Grant("b", 1, 2))
    assert kit.fsm_caller.take() == [Commit(1)]

Every kit shares one Transcript between its mailboxes and its transport, so a test can assert
the order of what the actor told across collaborators (`kit.transcript.names()`). The Node's
builder, with an election driver, is in actors/testkit_node.py. See docs/TESTING.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from actors.ballot_box import BallotBox
from actors.base import RaftActor
from actors.clock import ManualClock
from actors.configuration import Configuration
from actors.fsm_caller import FSMCaller
from actors.log_manager import LogManager
from actors.log_view import LogView
from actors.metrics import RaftMetrics
from actors.options import RaftOptions
from actors.replicator import Replicator
from actors.snapshot_executor import SnapshotExecutor
from actors.state_machine import StateMachine
from actors.testing import (
    ActorHarness,
    RecordingMailbox,
    RecordingStateMachine,
    RecordingTransport,
    Transcript,
)
from storage.entry import EntryType, LogEntry
from storage.memory import MemoryLogStorage, MemoryMetaStorage, MemorySnapshotStorage

A = TypeVar("A", bound=RaftActor)

PEERS = ("a", "b", "c")  # the default cluster of every builder


def data_entries(*terms: int, first: int = 1) -> list[LogEntry]:
    """DATA entries with the given terms, at indexes `first`, `first` + 1, ...; entry i holds
    b"c<i>" (what RecordingStateMachine records)."""
    return [
        LogEntry(index, term, EntryType.DATA, b"c%d" % index)
        for index, term in enumerate(terms, start=first)
    ]


def raft_options(options: RaftOptions | None, overrides: dict[str, Any]) -> RaftOptions:
    """`options`, or RaftOptions(**overrides): a builder takes one or the other."""
    if options is not None and overrides:
        raise TypeError(f"pass raft_options or RaftOptions fields, not both: {sorted(overrides)}")
    return options if options is not None else RaftOptions(**overrides)


def memory_log(entries: Sequence[LogEntry]) -> MemoryLogStorage:
    storage = MemoryLogStorage()
    if entries:
        storage.append_entries(list(entries))
    return storage


@dataclass(eq=False)
class ActorKit(Generic[A]):
    """One actor in an ActorHarness, with what it was built from. `transcript` records, in
    order, everything told to the kit's mailboxes and sent on its transport. In each kit the
    actor is also reachable by its own name (`kit.replicator`); the attribute named after
    another actor is that actor's recording mailbox (`kit.node`)."""

    actor: A
    clock: ManualClock
    transcript: Transcript
    metrics: RaftMetrics
    harness: ActorHarness = field(init=False)

    def __post_init__(self) -> None:
        self.harness = ActorHarness(self.actor, self.clock)  # runs startup, then its queue

    def send(self, *messages: Any) -> Any:
        """Deliver each message in turn (handling what the actor tells itself after each);
        returns the last handler's result (GetStatus answers so)."""
        result = None
        for message in messages:
            result = self.harness.send(message)
        return result

    def advance(self, seconds: float) -> None:
        """Move the manual clock on, firing the actor's timers (ActorHarness.advance)."""
        self.harness.advance(seconds)

    def stop(self) -> None:
        """Run the actor's shutdown, as its pykka thread would when stopped."""
        self.harness.stop()


class Neighbours:
    """What every kit starts from: one transcript, a manual clock, metrics timed by it."""

    def __init__(self) -> None:
        self.transcript = Transcript()
        self.clock = ManualClock()
        self.metrics = RaftMetrics(clock=self.clock.now)

    def mailbox(self, name: str) -> RecordingMailbox:
        return RecordingMailbox(name, self.transcript)

    def transport(self, local_id: str) -> RecordingTransport:
        return RecordingTransport(local_id, self.transcript)

    def kit(self, actor: RaftActor) -> tuple[Any, ManualClock, Transcript, RaftMetrics]:
        return actor, self.clock, self.transcript, self.metrics


# -- Replicator ------------------------------------------------------------------------------


@dataclass(eq=False)
class ReplicatorKit(ActorKit[Replicator]):
    """A leader's Replicator for one follower: its AppendEntries go to `transport`, its grants
    to `ballot_box`, its contact reports to `node`."""

    log_view: LogView
    transport: RecordingTransport
    ballot_box: RecordingMailbox
    node: RecordingMailbox
    snapshots: MemorySnapshotStorage | None

    @property
    def replicator(self) -> Replicator:
        return self.actor


def build_replicator(
    peer: str = "b",
    leader: str = "a",
    term: int = 1,
    *,
    entries: Sequence[LogEntry] = (),
    next_index: int | None = None,
    committed: int = 0,
    snapshots: MemorySnapshotStorage | None = None,
    options: RaftOptions | None = None,
    **raft: Any,
) -> ReplicatorKit:
    """`leader`'s Replicator for follower `peer` in `term`, over a log holding `entries` of
    which `committed` are committed; it starts at `next_index` (default: after the last entry,
    as a new leader's do) and sends its first probe at once. `raft` are RaftOptions fields."""
    n = Neighbours()
    log_view = LogView(memory_log(entries))
    log_view.set_committed(committed)
    transport, ballot_box, node = n.transport(leader), n.mailbox("ballot_box"), n.mailbox("node")
    start = log_view.last_index + 1 if next_index is None else next_index
    actor = Replicator(
        peer, leader, term, start, log_view, transport, ballot_box, node, n.clock,
        raft_options(options, raft), snapshots, metrics=n.metrics,
    )  # fmt: skip
    return ReplicatorKit(*n.kit(actor), log_view, transport, ballot_box, node, snapshots)


# -- BallotBox -------------------------------------------------------------------------------


@dataclass(eq=False)
class BallotBoxKit(ActorKit[BallotBox]):
    """A BallotBox: its commits go to `fsm_caller` (Commit) and `log_manager` (Committed)."""

    fsm_caller: RecordingMailbox
    log_manager: RecordingMailbox
    node: RecordingMailbox

    @property
    def ballot_box(self) -> BallotBox:
        return self.actor


def build_ballot_box() -> BallotBoxKit:
    n = Neighbours()
    fsm, lm, node = n.mailbox("fsm_caller"), n.mailbox("log_manager"), n.mailbox("node")
    return BallotBoxKit(*n.kit(BallotBox(fsm, lm, node)), fsm, lm, node)


# -- LogManager ------------------------------------------------------------------------------


@dataclass(eq=False)
class LogManagerKit(ActorKit[LogManager]):
    """A LogManager over memory storage (`log_storage`, `meta`), answering the network on
    `transport` and telling `node`, `ballot_box` and `fsm_caller`."""

    log_view: LogView
    log_storage: MemoryLogStorage
    meta: MemoryMetaStorage
    transport: RecordingTransport
    node: RecordingMailbox
    ballot_box: RecordingMailbox
    fsm_caller: RecordingMailbox

    @property
    def log_manager(self) -> LogManager:
        return self.actor


def build_log_manager(
    peer: str = "a",
    peers: Sequence[str] = PEERS,
    *,
    entries: Sequence[LogEntry] = (),
    term: int = 0,
    voted_for: str | None = None,
    options: RaftOptions | None = None,
    **raft: Any,
) -> LogManagerKit:
    """The LogManager of `peer` (of a cluster of `peers`), whose log holds `entries` and whose
    meta storage holds (`term`, `voted_for`)."""
    n = Neighbours()
    log_storage = memory_log(entries)
    meta = MemoryMetaStorage()
    if term or voted_for is not None:
        meta.set_term_and_vote(term, voted_for)
    log_view = LogView(log_storage, bootstrap_conf=Configuration.of(peers))
    transport = n.transport(peer)
    node, ballot_box, fsm = n.mailbox("node"), n.mailbox("ballot_box"), n.mailbox("fsm_caller")
    actor = LogManager(
        peer, log_view, meta, transport, node, ballot_box, fsm, raft_options(options, raft),
        metrics=n.metrics,
    )  # fmt: skip
    return LogManagerKit(
        *n.kit(actor), log_view, log_storage, meta, transport, node, ballot_box, fsm
    )


# -- FSMCaller -------------------------------------------------------------------------------


@dataclass(eq=False)
class FSMCallerKit(ActorKit[FSMCaller]):
    """An FSMCaller applying the log's committed entries to `state_machine` (by default a
    RecordingStateMachine); with snapshots, `snapshot_executor` records SaveSnapshot."""

    state_machine: StateMachine[Any, Any]
    log_view: LogView
    node: RecordingMailbox
    snapshots: MemorySnapshotStorage | None
    snapshot_executor: RecordingMailbox | None

    @property
    def fsm_caller(self) -> FSMCaller:
        return self.actor


def build_fsm_caller(
    state_machine: StateMachine[Any, Any] | None = None,
    *,
    entries: Sequence[LogEntry] = (),
    peers: Sequence[str] = PEERS,
    snapshots: bool = False,
    options: RaftOptions | None = None,
    **raft: Any,
) -> FSMCallerKit:
    """An FSMCaller over a log holding `entries`, none applied yet (tell it Commit(i)), with
    a RecordingStateMachine unless given one. With `snapshots` (and a state machine that can
    snapshot) it saves into a MemorySnapshotStorage and hands the rest to the recording
    `snapshot_executor`."""
    n = Neighbours()
    machine = state_machine if state_machine is not None else RecordingStateMachine()
    conf = Configuration.of(peers)
    log_view = LogView(memory_log(entries), bootstrap_conf=conf)
    node = n.mailbox("node")
    store = MemorySnapshotStorage() if snapshots else None
    executor = n.mailbox("snapshot_executor") if snapshots else None
    actor = FSMCaller(
        machine, log_view, node, raft_options(options, raft), conf, store, executor,
        metrics=n.metrics,
    )  # fmt: skip
    return FSMCallerKit(*n.kit(actor), machine, log_view, node, store, executor)


# -- SnapshotExecutor ------------------------------------------------------------------------


@dataclass(eq=False)
class SnapshotExecutorKit(ActorKit[SnapshotExecutor]):
    """A SnapshotExecutor over `snapshots`: it answers InstallSnapshot on `transport` and tells
    `node`, `log_manager` and `fsm_caller`."""

    snapshots: MemorySnapshotStorage
    log_view: LogView
    transport: RecordingTransport
    node: RecordingMailbox
    log_manager: RecordingMailbox
    fsm_caller: RecordingMailbox

    @property
    def snapshot_executor(self) -> SnapshotExecutor:
        return self.actor


def build_snapshot_executor(
    peer: str = "b",
    *,
    entries: Sequence[LogEntry] = (),
    committed: int = 0,
    snapshots: MemorySnapshotStorage | None = None,
    options: RaftOptions | None = None,
    **raft: Any,
) -> SnapshotExecutorKit:
    """The SnapshotExecutor of `peer`, over `snapshots` (a new MemorySnapshotStorage if None)
    and a log holding `entries`, `committed` of them committed."""
    n = Neighbours()
    store = snapshots if snapshots is not None else MemorySnapshotStorage()
    log_view = LogView(memory_log(entries))
    log_view.set_committed(committed)
    transport = n.transport(peer)
    node, lm, fsm = n.mailbox("node"), n.mailbox("log_manager"), n.mailbox("fsm_caller")
    actor = SnapshotExecutor(
        peer, store, log_view, transport, node, lm, fsm, n.clock, raft_options(options, raft),
        metrics=n.metrics,
    )  # fmt: skip
    return SnapshotExecutorKit(*n.kit(actor), store, log_view, transport, node, lm, fsm)
