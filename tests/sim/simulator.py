"""Deterministic simulation of a Raft cluster: the real actor classes, one thread, virtual time.

Every peer is assembled by the production recipe (actors.wiring.assemble_peer); only `spawn`
differs: an actor is constructed but not started as a thread, and its mailbox is a FIFO queue
that this scheduler drains. Each step the seeded scheduler either fires the earliest due event
(a timer, or a network message arriving) or runs one message of one actor chosen at random among
those with work, and virtual time moves on by a small random processing cost. Messages between
peers go through transport.memory (encoded and decoded by the real codec) with seeded delays;
storage is the memory twin, so a crash keeps only what was fsynced.

The same seed gives the same run, event for event: `trace_hash` digests every step, and the
tests check two runs agree (also across processes with different hash seeds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import heapq
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import pykka

from actors.base import RaftActor
from actors.configuration import Configuration
from actors.fsm_caller import FSMCaller
from actors.futures import CompletionFuture
from actors.log_manager import LogManager
from actors.membership import ChangeRequest
from actors.messages import (
    Apply,
    ChangeMembership,
    Flush,
    ReadAt,
    ReadIndex,
    TakeSnapshot,
    TransferLeadership,
)
from actors.node import Node, Role
from actors.options import NodeOptions, RaftOptions
from actors.snapshot_executor import SnapshotExecutor
from actors.testing import RecordingStateMachine
from actors.wiring import PeerActors, Router, assemble_peer
from storage.memory import MemoryLogStorage, MemoryMetaStorage, MemorySnapshotStorage
from transport.memory import MemoryNetwork, MemoryTransport

from .invariants import ObservedLog, SafetyChecker

# -- virtual time -----------------------------------------------------------------------------


class _Event:
    __slots__ = ("callback", "cancelled", "label")

    def __init__(self, callback: Callable[[], None], label: str) -> None:
        self.callback = callback
        self.label = label
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class SimClock:
    """The Clock protocol on the simulation's virtual time."""

    def __init__(self, sim: Simulation) -> None:
        self._sim = sim

    def now(self) -> float:
        return self._sim.time

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Event:
        return self._sim.schedule(delay, callback, "timer")


# -- actors under the scheduler ---------------------------------------------------------------


class SimActor:
    """One actor object and its mailbox queue. `alive` is False once its peer crashed."""

    def __init__(self, name: str, actor: RaftActor) -> None:
        self.name = name
        self.actor = actor
        self.inbox: deque[Any] = deque()
        self.alive = True


class SimMailbox:
    def __init__(self, sim: Simulation, target: SimActor) -> None:
        self._sim = sim
        self._target = target

    def tell(self, message: Any) -> None:
        if not self._target.alive:
            raise pykka.ActorDeadError(f"{self._target.name} is dead")
        self._sim.enqueue(self._target, message)


@dataclass
class SimPeer:
    id: str
    log: ObservedLog
    meta: MemoryMetaStorage = field(default_factory=MemoryMetaStorage)
    snapshots: MemorySnapshotStorage = field(default_factory=MemorySnapshotStorage)
    incarnation: int = 0
    sm: RecordingStateMachine | None = None
    actors: PeerActors | None = None
    members: list[SimActor] = field(default_factory=list)
    endpoint: MemoryTransport | None = None
    node_actor: Node | None = None
    disk_latency: float = 0.0
    wiped: bool = False  # lost its disk once: it comes back as a new peer would (--join)

    @property
    def alive(self) -> bool:
        return self.actors is not None

    @property
    def node(self) -> Node:
        assert self.node_actor is not None, f"{self.id} is down"
        return self.node_actor


# -- the simulation ---------------------------------------------------------------------------


class Simulation:
    def __init__(
        self,
        seed: int,
        size: int = 3,
        election_timeout: float = 1.0,
        network_delay: float = 0.001,
        record_trace: bool = False,
        spares: int = 2,
    ) -> None:
        """`size` peers bootstrap the cluster; `spares` more exist (down, never started) for
        membership changes to add."""
        self.seed = seed
        self.rng = random.Random(seed)
        self.time = 0.0
        self.steps = 0
        self.delivered: Counter[str] = Counter()  # messages handled, by type: what a run did
        self._events: list[tuple[float, int, _Event]] = []
        self._seq = itertools.count()
        self._runnable: list[SimActor] = []  # actors with queued messages, in enqueue order
        self.clock = SimClock(self)
        self.network = MemoryNetwork(rng=random.Random(self.rng.random()), clock=self.clock)
        self.network.set_delay(network_delay)
        self.ids = [f"10.0.0.{n}:7000" for n in range(1, size + spares + 1)]
        self.initial = self.ids[:size]  # the bootstrap configuration
        # A small command limit keeps the oversized-command fault cheap. Snapshots come often
        # (a seeded threshold) with a small margin and small chunks, so compaction, several
        # chunks per InstallSnapshot and crashes in the middle of either happen in most runs.
        self.options = RaftOptions(
            election_timeout=election_timeout,
            max_command_bytes=MAX_COMMAND_BYTES,
            snapshot_threshold=self.rng.choice((16, 40, 100)),
            snapshot_interval=0.0,
            snapshot_log_margin=self.rng.choice((0, 4, 20)),
            snapshot_chunk_bytes=self.rng.choice((64, 512, 4096)),
            snapshot_max_inflight=self.rng.choice((1, 3)),
        )
        # Priority election in a third of the runs: seeded priorities, at most one peer of
        # priority 0 (never leads), so that every configuration of >= 3 voters can elect.
        self.priorities = dict.fromkeys(self.ids, -1)
        if self.rng.random() < 1 / 3:
            levels = [self.rng.choice((-1, 1, 5, 9)) for _ in self.ids]
            levels[self.rng.randrange(len(levels))] = 0
            self.priorities = dict(zip(self.ids, levels, strict=True))
        self.checker = SafetyChecker()
        self.peers = {
            p: SimPeer(p, ObservedLog(p, MemoryLogStorage(), self.checker)) for p in self.ids
        }
        self._trace = hashlib.blake2b(digest_size=16)
        self.trace: list[str] | None = [] if record_trace else None
        self._commit_checked: dict[tuple[str, int], int] = {}
        for peer_id in self.initial:
            self.start(peer_id)

    # -- scheduling --------------------------------------------------------------------------

    def schedule(self, delay: float, callback: Callable[[], None], label: str) -> _Event:
        event = _Event(callback, label)
        heapq.heappush(self._events, (self.time + max(0.0, delay), next(self._seq), event))
        return event

    def enqueue(self, target: SimActor, message: Any) -> None:
        if not target.inbox:
            self._runnable.append(target)
        target.inbox.append(message)

    def step(self) -> None:
        """Fire the earliest due event, or run one queued message of a random actor."""
        self._runnable = [a for a in self._runnable if a.alive and a.inbox]
        due = self._events and self._events[0][0] <= self.time
        if due or not self._runnable:
            if not self._events:
                raise RuntimeError("simulation has nothing left to do")
            when, _, event = heapq.heappop(self._events)
            self.time = max(self.time, when)
            if not event.cancelled:
                self._record(f"{self.time:.6f} {event.label}")
                event.callback()
        else:
            actor = self._runnable[self.rng.randrange(len(self._runnable))]
            message = actor.inbox.popleft()
            if not actor.inbox:
                self._runnable.remove(actor)
            self._record(f"{self.time:.6f} {actor.name} <- {describe(message)}")
            self.delivered[type(message).__name__] += 1
            actor.actor.receive(message)
            self.time += self.rng.uniform(1e-6, 2e-5)  # processing takes a little time
        self.steps += 1
        for peer in self.peers.values():
            if peer.node_actor is not None and peer.actors is not None and peer.sm is not None:
                self.checker.check_peer_state(
                    peer.id,
                    peer.incarnation,
                    peer.node_actor.role,
                    peer.node_actor.term,
                    peer.actors.log_view,
                    peer.sm.applied,
                    len(peer.sm.loaded),
                )
                if peer.node_actor.role is Role.LEADER:
                    self._check_commit_quorum(peer)

    def _check_commit_quorum(self, peer: SimPeer) -> None:
        """What a leader commits is held by a quorum of its configuration: of both sets while
        joint. An entry before the configuration in force may have committed under the one
        before it (the BallotBox switches when the entry is appended)."""
        assert peer.actors is not None
        view = peer.actors.log_view
        key = (peer.id, peer.incarnation)
        commit = view.committed_index
        if commit <= self._commit_checked.get(key, 0) or commit <= view.snapshot_index:
            return
        self._commit_checked[key] = commit
        term = view.term_at(commit)
        holders = {p for p in self.ids if self._holds(p, commit, term)}
        state = view.conf_state
        confs = [state.conf] if commit >= state.index else [state.conf, state.previous]
        if not any(conf.has_quorum(holders) for conf in confs):
            self.checker.fail(
                f"Commit quorum: {peer.id} committed {commit}@{term} held only by "
                f"{sorted(holders)}, no quorum of {' or '.join(map(str, confs))}"
            )

    def _holds(self, peer_id: str, index: int, term: int) -> bool:
        """Whether `peer_id`'s storage holds entry index@term (or a snapshot covering it)."""
        peer = self.peers[peer_id]
        latest = peer.snapshots.latest()
        covered = latest is not None and latest.last_index >= index
        return covered or peer.log.get_term(index) == term

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        end = self.time + timeout
        while self.time < end:
            if predicate():
                return True
            self.step()
        return predicate()

    def _record(self, line: str) -> None:
        self._trace.update(line.encode())
        if self.trace is not None:
            self.trace.append(line)

    @property
    def trace_hash(self) -> str:
        return self._trace.hexdigest()

    # -- peers -------------------------------------------------------------------------------

    def start(self, peer_id: str) -> None:
        peer = self.peers[peer_id]
        peer.incarnation += 1
        peer.sm = RecordingStateMachine()
        peer.members = []
        endpoint = peer.endpoint = self.network.endpoint(peer_id)

        def spawn(actor_class: type[RaftActor], *args: Any, **kwargs: Any) -> SimMailbox:
            actor = actor_class(*args, **kwargs)
            member = SimActor(f"{peer_id}#{peer.incarnation}/{actor_class.__name__}", actor)
            mailbox = SimMailbox(self, member)
            actor.bind_self(
                _DiskLatency(self, peer, mailbox) if actor_class is LogManager else mailbox
            )
            peer.members.append(member)
            if isinstance(actor, Node):
                peer.node_actor = actor
            actor.on_start()
            return mailbox

        def stop(mailbox: Any) -> None:
            member = mailbox._target
            member.alive = False
            member.actor.on_stop()

        join = peer_id not in self.initial or peer.wiped
        raft = dataclasses.replace(self.options, election_priority=self.priorities[peer_id])
        options = NodeOptions(peer_id, Configuration.of(self.initial), raft, join=join)
        peer.actors = assemble_peer(
            options,
            peer.sm,
            peer.log,
            peer.meta,
            endpoint,
            self.clock,
            random.Random(self.rng.random()),
            spawn,
            stop,
            snapshot_storage=peer.snapshots,
        )
        endpoint.start(Router(peer_id, peer.actors, endpoint).deliver)
        peer.log.is_leader = lambda: (
            peer.node_actor is not None and peer.node_actor.role is Role.LEADER
        )
        self._record(f"{self.time:.6f} start {peer_id}#{peer.incarnation}")

    def crash(self, peer_id: str) -> None:
        """Power cut: every actor dies mid-flight; storage keeps only what was fsynced."""
        peer = self.peers[peer_id]
        if peer.actors is None:
            return
        assert peer.endpoint is not None
        peer.endpoint.stop()
        for member in peer.members:  # replicators included: they are spawned members too
            member.alive = False
        peer.actors = None
        peer.node_actor = None
        peer.members = []
        peer.log = peer.log.crash()
        peer.meta = peer.meta.crash()
        peer.snapshots = peer.snapshots.crash()
        self._record(f"{self.time:.6f} crash {peer_id}")

    def wipe(self, peer_id: str) -> None:
        """The peer's disk is lost while it is down: it comes back with nothing (a new log, no
        term or vote, no snapshot) and must catch up from the leader, by InstallSnapshot once
        the log it needs was compacted."""
        peer = self.peers[peer_id]
        assert peer.actors is None, "wipe a peer that is down"
        peer.log = ObservedLog(peer_id, MemoryLogStorage(), self.checker)
        peer.meta = MemoryMetaStorage()
        peer.snapshots = MemorySnapshotStorage()
        peer.wiped = True
        self._record(f"{self.time:.6f} wipe {peer_id}")

    def alive(self) -> list[str]:
        return [p for p in self.ids if self.peers[p].alive]

    def ever_started(self) -> list[str]:
        return [p for p in self.ids if self.peers[p].incarnation]

    def crash_actor(self, peer_id: str, rng: random.Random) -> str:
        """Make one of the peer's actors (chosen by `rng`) raise in a handler, as a bug would:
        its next message is one whose handler raises. Returns the actor's name."""
        members = [m for m in self.peers[peer_id].members if m.alive]
        member = members[rng.randrange(len(members))]
        actor = member.actor
        actor._handlers = {**type(actor)._handlers, _Crash: _raise}  # this instance only
        self.enqueue(member, _Crash())
        return member.name

    def snapshot_busy(self, peer_id: str) -> bool:
        """Whether the peer is receiving, installing or saving a snapshot right now."""
        for member in self.peers[peer_id].members:
            actor = member.actor
            if isinstance(actor, SnapshotExecutor) and actor.download is not None:
                return True
            if isinstance(actor, FSMCaller) and actor.saving is not None:
                return True
        return False

    def snapshot(self, peer_id: str) -> pykka.Future[Any]:
        """Ask `peer_id` for a snapshot now, as RaftNode.snapshot does."""
        future: pykka.Future[Any] = pykka.ThreadingFuture()
        actors = self.peers[peer_id].actors
        assert actors is not None
        actors.fsm_caller.tell(TakeSnapshot(future))
        return future

    def transfer(self, peer_id: str, target: str | None) -> pykka.Future[Any]:
        """Ask `peer_id` to hand its leadership to `target`, as RaftNode.transfer_leadership
        does."""
        future: pykka.Future[Any] = pykka.ThreadingFuture()
        self.peers[peer_id].node.self_mailbox.tell(TransferLeadership(target, future))
        return future

    def change(self, peer_id: str, request: ChangeRequest) -> pykka.Future[Any]:
        """Ask `peer_id` for a membership change, as RaftNode.add_peer and friends do."""
        future: pykka.Future[Any] = pykka.ThreadingFuture()
        self.peers[peer_id].node.self_mailbox.tell(ChangeMembership(request, future))
        return future

    # -- clients -----------------------------------------------------------------------------

    def read(self, peer_id: str, query: bytes, lease: bool) -> pykka.Future[Any]:
        """A linearizable (or lease) read submitted to `peer_id`, as RaftNode.read does: the
        Node's read index, then the FSMCaller's on_read once that index is applied. The
        future completes with RecordingStateMachine.on_read's (query, applied index)."""
        future: pykka.Future[Any] = pykka.ThreadingFuture()
        actors = self.peers[peer_id].actors
        assert actors is not None
        fsm_caller = actors.fsm_caller

        def at_index(index: int, error: BaseException | None) -> None:
            if error is not None:
                future.set_exception((type(error), error, None))
            else:
                fsm_caller.tell(ReadAt(index, query, future))

        self.peers[peer_id].node.self_mailbox.tell(ReadIndex(CompletionFuture(at_index), lease))
        return future

    def propose(self, peer_id: str, command: bytes) -> pykka.Future[Any]:
        """A client command submitted to `peer_id`'s node, as RaftNode.apply does."""
        future: pykka.Future[Any] = pykka.ThreadingFuture()
        self.peers[peer_id].node.self_mailbox.tell(Apply((command,), (future,)))
        return future


MAX_COMMAND_BYTES = 4096


class _Crash:
    """A message whose handler raises: an actor's bug, injected by `crash_actor`."""


def _raise(actor: RaftActor, message: _Crash) -> None:
    raise RuntimeError(f"injected bug in {type(actor).__name__}")


class _DiskLatency:
    """The LogManager's self-mailbox: a Flush (its group commit, i.e. the fsync) arrives after
    the peer's disk latency, so a slow disk is a peer whose Flushes come late."""

    def __init__(self, sim: Simulation, peer: SimPeer, mailbox: SimMailbox) -> None:
        self._sim, self._peer, self._mailbox = sim, peer, mailbox

    def tell(self, message: Any) -> None:
        if isinstance(message, Flush) and self._peer.disk_latency > 0:
            latency = self._sim.rng.uniform(0, self._peer.disk_latency)
            self._sim.schedule(latency, lambda: _quietly(self._mailbox, message), "disk")
        else:
            self._mailbox.tell(message)


def _quietly(mailbox: SimMailbox, message: Any) -> None:
    with contextlib.suppress(pykka.ActorDeadError):  # the peer crashed meanwhile
        mailbox.tell(message)


def describe(value: Any) -> str:
    """A stable description for the trace: no object addresses, futures or mailboxes."""
    if is_dataclass(value) and not isinstance(value, type):
        inner = ",".join(describe(getattr(value, f.name)) for f in fields(value))
        return f"{type(value).__name__}({inner})"
    if isinstance(value, tuple | list):
        return "[" + ",".join(describe(v) for v in value) + "]"
    if isinstance(value, int | str | bytes | float | bool) or value is None:
        return repr(value)
    if isinstance(value, frozenset | set):
        return "{" + ",".join(sorted(describe(v) for v in value)) + "}"
    return type(value).__name__
