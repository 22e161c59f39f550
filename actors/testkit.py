"""The test kit: helpers for an application's own tests, and the project's. docs/TESTING.md
walks through them with examples (each one run by tests/unit/test_testkit.py).

- An application's code against a node that answers at once: `FakeRaftNode` (testkit_fake).
- A whole cluster in one process: `InMemoryCluster` (testkit_cluster), a context manager.
- One actor on the test's thread, every collaborator recorded: `build_node` and `elect`
  (testkit_node); `build_replicator`, `build_ballot_box`, `build_log_manager`,
  `build_fsm_caller`, `build_snapshot_executor` (testkit_actors).
- The parts they are made of: RecordingMailbox, Transcript, RecordingTransport,
  RecordingStateMachine, ActorHarness (actors.testing); ManualClock (actors.clock).

None of it is used by the library itself; it imports only the library (and its memory twins
of storage and transport).
"""

from __future__ import annotations

from actors.clock import ManualClock
from actors.testing import (
    ActorHarness,
    RecordingMailbox,
    RecordingStateMachine,
    RecordingTransport,
    Transcript,
    counts,
    is_pending,
)
from actors.testkit_actors import (
    ActorKit,
    BallotBoxKit,
    FSMCallerKit,
    LogManagerKit,
    ReplicatorKit,
    SnapshotExecutorKit,
    build_ballot_box,
    build_fsm_caller,
    build_log_manager,
    build_replicator,
    build_snapshot_executor,
    data_entries,
)
from actors.testkit_cluster import ClusterPeer, InMemoryCluster
from actors.testkit_fake import FakeRaftNode
from actors.testkit_node import (
    NodeKit,
    PreVoteAbandoned,
    RecordingReplicators,
    build_node,
    elect,
)

__all__ = [
    "ActorHarness",
    "ActorKit",
    "BallotBoxKit",
    "ClusterPeer",
    "FSMCallerKit",
    "FakeRaftNode",
    "InMemoryCluster",
    "LogManagerKit",
    "ManualClock",
    "NodeKit",
    "PreVoteAbandoned",
    "RecordingMailbox",
    "RecordingReplicators",
    "RecordingStateMachine",
    "RecordingTransport",
    "ReplicatorKit",
    "SnapshotExecutorKit",
    "Transcript",
    "build_ballot_box",
    "build_fsm_caller",
    "build_log_manager",
    "build_node",
    "build_replicator",
    "build_snapshot_executor",
    "counts",
    "data_entries",
    "elect",
    "is_pending",
]
