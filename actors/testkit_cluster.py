"""InMemoryCluster: N real RaftNodes in one process, over one MemoryNetwork and memory storage,
on real threads and a real clock: the fixture for testing an application against a whole
cluster without processes or ports.

    with InMemoryCluster(3) as cluster:            # RecordingStateMachines, unless a factory
        leader = cluster.wait_for_leader()
        index = cluster.apply(b"x")                # through whoever leads, retried if refused
        cluster.isolate(leader)                    # faults: isolate, partition, heal, crash
        cluster.wait_for_leader(among=[p for p in cluster.ids if p != leader])

Its verbs read like the failure under test. Nothing sleeps: with RecordingStateMachines (the
default) every wait is on `changed`, which they notify when they apply or gain or lose
leadership; with a state machine of the application's own, waits poll. Leaving the `with`
block (or `stop()`) stops every node and the clock, whatever happened inside it.

A crash keeps only what each peer's storage had synced (as after a power cut); `restart` builds
a new state machine from the factory and replays the log into it, as a restarted process would.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from actors.clock import RealClock
from actors.configuration import Configuration
from actors.errors import RaftError
from actors.options import NodeOptions, RaftOptions
from actors.raft_node import RaftNode
from actors.state_machine import StateMachine
from actors.testing import RecordingStateMachine
from actors.wait import wait_until
from storage.memory import MemoryLogStorage, MemoryMetaStorage, MemorySnapshotStorage
from transport.memory import MemoryNetwork

WAIT = 15.0  # the default deadline of a wait; a healthy run takes a small fraction of it
ELECTION_TIMEOUT = 0.3  # short, so that elections take little of a test's time

StateMachineFactory = Callable[[], StateMachine[Any, Any]]


class ClusterPeer:
    """One peer's durable state (it survives `crash`) and what runs over it."""

    def __init__(self, peer_id: str, snapshots: bool) -> None:
        self.id = peer_id
        self.log = MemoryLogStorage()
        self.meta = MemoryMetaStorage()
        self.snapshots = MemorySnapshotStorage() if snapshots else None
        self.sm: StateMachine[Any, Any] | None = None  # the latest run's state machine
        self.node: RaftNode[Any, Any] | None = None  # None: crashed, or not started
        self.errors: list[str] = []  # what on_error reported, across restarts


class InMemoryCluster:
    """`size` peers named 127.0.0.N:700N (`ids`), each a RaftNode started at once with a state
    machine from `state_machine_factory` (default: a RecordingStateMachine notifying
    `changed`). `raft` are RaftOptions fields; with `snapshots` each peer has a memory
    snapshot storage. `seed` fixes the network's and the nodes' randomness (not the threads'
    interleaving)."""

    def __init__(
        self,
        size: int = 3,
        state_machine_factory: StateMachineFactory | None = None,
        *,
        seed: int = 1,
        election_timeout: float = ELECTION_TIMEOUT,
        snapshots: bool = False,
        **raft: Any,
    ) -> None:
        self.ids = [f"127.0.0.{n}:{7000 + n}" for n in range(1, size + 1)]
        self.network = MemoryNetwork(rng=random.Random(seed))
        self.clock = RealClock()
        self.changed = threading.Condition()
        self.rng = random.Random(seed)
        self.options = RaftOptions(election_timeout=election_timeout, **raft)
        self.factory = state_machine_factory
        self.peers = {peer_id: ClusterPeer(peer_id, snapshots) for peer_id in self.ids}
        try:
            for peer_id in self.ids:
                self.start(peer_id)
        except BaseException:
            self.stop()  # leave no node or thread behind a failed start
            raise

    def __enter__(self) -> InMemoryCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, peer_id: str) -> RaftNode[Any, Any]:
        """Start `peer_id` over its storage, with a new state machine."""
        peer = self.peers[peer_id]
        assert peer.node is None, f"{peer_id} is running"
        factory = self.factory or (lambda: RecordingStateMachine(self.changed))
        peer.sm = factory()
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
            snapshot_storage=peer.snapshots,
        )
        return peer.node

    def _on_error(self, peer: ClusterPeer, reason: str) -> None:
        with self.changed:
            peer.errors.append(reason)
            self.changed.notify_all()

    def crash(self, peer_id: str) -> None:
        """Stop the peer; its storage keeps only what was synced, as after a power cut."""
        peer = self.peers[peer_id]
        node, peer.node = peer.node, None
        assert node is not None, f"{peer_id} is not running"
        node.stop()
        peer.log = peer.log.crash()
        peer.meta = peer.meta.crash()
        if peer.snapshots is not None:
            peer.snapshots = peer.snapshots.crash()
        with self.changed:
            if isinstance(peer.sm, RecordingStateMachine):
                peer.sm.leader_term = None  # a dead peer leads nothing, whatever it last heard
            self.changed.notify_all()

    def restart(self, peer_id: str) -> RaftNode[Any, Any]:
        return self.start(peer_id)

    def stop(self) -> None:
        """Stop every running node, then the clock. Idempotent; a node that fails to stop
        does not keep the others running."""
        errors: list[BaseException] = []
        for peer in self.peers.values():
            node, peer.node = peer.node, None
            if node is not None:
                try:
                    node.stop()
                except Exception as exc:
                    errors.append(exc)
        self.clock.stop()
        if errors:
            raise errors[0]

    # -- faults ----------------------------------------------------------------------------

    def isolate(self, peer_id: str) -> None:
        self.network.isolate(peer_id)

    def partition(self, group: Sequence[str]) -> None:
        """Cut `group` off from the other peers (both ways)."""
        self.network.partition(group, [p for p in self.ids if p not in group])

    def heal(self) -> None:
        self.network.heal()

    # -- observation -----------------------------------------------------------------------

    def running(self) -> list[str]:
        return [p for p in self.ids if self.peers[p].node is not None]

    def sm(self, peer_id: str) -> Any:
        """The state machine of `peer_id`'s latest run (the factory's type)."""
        sm = self.peers[peer_id].sm
        assert sm is not None, f"{peer_id} was never started"
        return sm

    def node(self, peer_id: str) -> RaftNode[Any, Any]:
        node = self.peers[peer_id].node
        assert node is not None, f"{peer_id} is not running"
        return node

    def wait_until(self, predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> None:
        """Wait for `predicate()` to hold (RaftTimeoutError after `timeout`): woken by
        `changed` when every running state machine notifies it, else polled."""
        recording = all(isinstance(self.sm(p), RecordingStateMachine) for p in self.running())
        wait_until(predicate, what, timeout, condition=self.changed if recording else None)

    def wait_for_leader(self, among: Sequence[str] | None = None, timeout: float = WAIT) -> str:
        """The one peer among `among` (default: the running ones) that leads. With
        RecordingStateMachines, one whose leadership is established: its term's first entry
        applied (on_leader_start)."""
        candidates = list(among or self.running())
        found: list[str] = []

        def one_leader() -> bool:
            leaders = [p for p in candidates if self._leads(p)]
            found[:] = leaders
            return len(leaders) == 1

        self.wait_until(one_leader, f"one leader among {candidates}", timeout)
        return found[0]

    def _leads(self, peer_id: str) -> bool:
        peer = self.peers[peer_id]
        if peer.node is None:
            return False
        if isinstance(peer.sm, RecordingStateMachine):
            return peer.sm.leader_term is not None
        return peer.node.is_leader

    @property
    def leader(self) -> RaftNode[Any, Any]:
        """The leader's node (waits for one, as wait_for_leader)."""
        return self.node(self.wait_for_leader())

    def applied(self, peer_id: str) -> list[tuple[int, bytes]]:
        """(index, command) of every command `peer_id` applied (RecordingStateMachine only)."""
        sm = self._recording(peer_id)
        with self.changed:
            return [(index, data) for index, _, data in sm.applied]

    def wait_applied(
        self, count: int, peers: Sequence[str] | None = None, timeout: float = WAIT
    ) -> None:
        """Until each of `peers` (default: the running ones) applied `count` commands
        (RecordingStateMachine only)."""
        targets = list(peers or self.running())
        self.wait_until(
            lambda: all(len(self._recording(p).applied) >= count for p in targets),
            f"{count} commands applied on {targets}",
            timeout,
        )

    def _recording(self, peer_id: str) -> RecordingStateMachine:
        sm = self.sm(peer_id)
        if not isinstance(sm, RecordingStateMachine):
            raise TypeError(f"{peer_id} runs a {type(sm).__name__}, not a RecordingStateMachine")
        return sm

    # -- commands --------------------------------------------------------------------------

    def apply(self, command: bytes, timeout: float = WAIT) -> Any:
        """Apply `command` through whoever leads, retrying where it was refused (NotLeader,
        or leadership lost mid-way: beware, that one may have been applied); returns the
        state machine's result (a RecordingStateMachine's is the entry's index)."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while (remaining := deadline - time.monotonic()) > 0:
            leader = self.wait_for_leader(timeout=remaining)
            try:
                return self.node(leader).apply(command).get(timeout=remaining)
            except RaftError as error:  # not leader any more: try the next one
                last_error = error
        raise AssertionError(f"could not apply {command!r}: {last_error}")
