"""In-process clusters: N RaftNodes over one MemoryNetwork and memory storage, real threads.

The harness's verbs read like the failure under test: `crash`, `restart`, `isolate`, `heal`,
`wait_for_leader`. Nothing here sleeps: every wait is on the cluster's condition variable, which
the recording state machines notify when they apply something or gain or lose leadership.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from actors.clock import RealClock
from actors.configuration import Configuration
from actors.errors import RaftError
from actors.options import NodeOptions, RaftOptions
from actors.raft_node import RaftNode
from actors.testing import RecordingStateMachine
from actors.wait import wait_until
from storage.memory import MemoryLogStorage, MemoryMetaStorage
from transport.memory import MemoryNetwork

ELECTION_TIMEOUT = 0.3
WAIT = 15.0  # generous deadline for a condition; a healthy run takes a small fraction of it


class Peer:
    def __init__(self, peer_id: str) -> None:
        self.id = peer_id
        self.log = MemoryLogStorage()
        self.meta = MemoryMetaStorage()
        self.sm: RecordingStateMachine | None = None
        self.node: RaftNode | None = None
        self.errors: list[str] = []  # what on_error reported, across restarts


class Cluster:
    def __init__(self, size: int, seed: int = 1, **raft_options: Any) -> None:
        self.ids = [f"127.0.0.{n}:{7000 + n}" for n in range(1, size + 1)]
        self.network = MemoryNetwork(rng=random.Random(seed))
        self.clock = RealClock()
        self.changed = threading.Condition()
        self.rng = random.Random(seed)
        self.options = RaftOptions(election_timeout=ELECTION_TIMEOUT, **raft_options)
        self.peers = {peer_id: Peer(peer_id) for peer_id in self.ids}
        for peer_id in self.ids:
            self.start(peer_id)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, peer_id: str) -> None:
        peer = self.peers[peer_id]
        peer.sm = RecordingStateMachine(self.changed)
        options = NodeOptions(peer_id, Configuration.of(self.ids), self.options)
        peer.node = RaftNode.start(
            options,
            peer.sm,
            peer.log,
            peer.meta,
            self.network.endpoint(peer_id),
            clock=self.clock,
            rng=random.Random(self.rng.random()),
            on_error=lambda reason: self._on_error(peer, reason),
        )

    def _on_error(self, peer: Peer, reason: str) -> None:
        with self.changed:
            peer.errors.append(reason)
            self.changed.notify_all()

    def crash(self, peer_id: str) -> None:
        """Stop the peer; its storage keeps only what was synced, as after a power cut."""
        peer = self.peers[peer_id]
        assert peer.node is not None
        peer.node.stop()
        peer.node = None
        peer.log = peer.log.crash()
        peer.meta = peer.meta.crash()
        with self.changed:
            assert peer.sm is not None
            peer.sm.leader_term = None
            self.changed.notify_all()

    def restart(self, peer_id: str) -> None:
        self.start(peer_id)

    def stop(self) -> None:
        for peer in self.peers.values():
            if peer.node is not None:
                peer.node.stop()
                peer.node = None
        self.clock.stop()

    # -- faults ------------------------------------------------------------------------------

    def isolate(self, peer_id: str) -> None:
        self.network.isolate(peer_id)

    def partition(self, group: Sequence[str]) -> None:
        self.network.partition(group, [p for p in self.ids if p not in group])

    def heal(self) -> None:
        self.network.heal()

    # -- observation -------------------------------------------------------------------------

    def running(self) -> list[str]:
        return [p for p in self.ids if self.peers[p].node is not None]

    def sm(self, peer_id: str) -> RecordingStateMachine:
        sm = self.peers[peer_id].sm
        assert sm is not None
        return sm

    def node(self, peer_id: str) -> RaftNode:
        node = self.peers[peer_id].node
        assert node is not None, f"{peer_id} is not running"
        return node

    def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        wait_until(predicate, what, timeout, condition=self.changed)

    def wait_for_leader(self, among: Sequence[str] | None = None) -> str:
        """A peer whose leadership is established (its first entry applied), among `among`."""
        candidates = list(among or self.running())
        found: list[str] = []

        def one_leader() -> bool:
            leaders = [p for p in candidates if self.sm(p).leader_term is not None]
            if len(leaders) != 1:
                return False
            found[:] = leaders
            return True

        self.wait_until(one_leader, f"one leader among {candidates}")
        return found[0]

    def applied(self, peer_id: str) -> list[tuple[int, bytes]]:
        with self.changed:
            return [(index, data) for index, _, data in self.sm(peer_id).applied]

    def wait_applied(self, count: int, peers: Sequence[str] | None = None) -> None:
        targets = list(peers or self.running())
        self.wait_until(
            lambda: all(len(self.sm(p).applied) >= count for p in targets),
            f"{count} commands applied on {targets}",
        )

    # -- commands ----------------------------------------------------------------------------

    def apply(self, command: bytes, timeout: float = WAIT) -> int:
        """Apply through whoever leads, retrying a definite refusal; returns the entry index."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            leader = self.wait_for_leader()
            try:
                index: int = self.node(leader).apply(command).get(timeout=WAIT)
                return index
            except RaftError as error:  # not leader any more: try the next one
                last_error = error
        raise AssertionError(f"could not apply {command!r}: {last_error}")


MakeCluster = Callable[..., Cluster]  # the make_cluster fixture: make(size, seed, **options)


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., Cluster]]:
    clusters: list[Cluster] = []

    def make(size: int, seed: int = 1, **raft_options: Any) -> Cluster:
        cluster = Cluster(size, seed, **raft_options)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()
