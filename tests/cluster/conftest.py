"""In-process clusters for these tests: the supported actors.testkit.InMemoryCluster (N
RaftNodes over one MemoryNetwork and memory storage, real threads, RecordingStateMachines), with
this suite's election timeout. Its verbs read like the failure under test: `crash`, `restart`,
`isolate`, `partition`, `heal`, `wait_for_leader`; nothing sleeps (see docs/TESTING.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from actors.testkit_cluster import WAIT, InMemoryCluster

ELECTION_TIMEOUT = 0.3

__all__ = ["ELECTION_TIMEOUT", "WAIT", "Cluster", "MakeCluster"]


class Cluster(InMemoryCluster):
    """`Cluster(size, seed, **raft_options)`, as these tests have always built it."""

    def __init__(self, size: int, seed: int = 1, **raft_options: Any) -> None:
        super().__init__(size, seed=seed, election_timeout=ELECTION_TIMEOUT, **raft_options)


MakeCluster = Callable[..., Cluster]  # the make_cluster fixture: make(size, seed, **options)


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., Cluster]]:
    clusters: list[Cluster] = []

    def make(size: int, seed: int = 1, **raft_options: Any) -> Cluster:
        cluster = Cluster(size, seed, **raft_options)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.stop()
