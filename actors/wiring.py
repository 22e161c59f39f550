"""How one peer's actors are built, wired and reached: the single recipe shared by RaftNode
(each actor a pykka thread) and the simulator (each actor driven by a seeded scheduler).

`spawn(actor_class, *args, **kwargs)` constructs and starts an actor and returns its mailbox;
`stop(mailbox)` stops one. Those two are all that differ between the ways of running.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from actors import quiet_heartbeat, trace
from actors.ballot_box import BallotBox
from actors.clock import Clock
from actors.configuration import Configuration
from actors.dispatcher import Dispatcher, start_on
from actors.fsm_caller import FSMCaller
from actors.identity import bootstrap_identity
from actors.log_manager import LogManager
from actors.log_view import LogView
from actors.mailbox import Mailbox, MailboxSlot
from actors.messages import FollowerAppend, LeaderContact
from actors.metrics import RaftMetrics
from actors.node import Node
from actors.options import NodeOptions
from actors.replicator import Replicator
from actors.snapshot_executor import SnapshotExecutor
from actors.state_machine import StateMachine
from actors.status import LeaderWatch
from storage.base import LogStorage, MetaStorage, SnapshotStore
from transport.base import Transport
from transport.rpc import (
    AdminRequest,
    AppendEntriesRequest,
    AppendEntriesResponse,
    ClientQuery,
    ClientRequest,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVoteRequest,
    RequestVoteResponse,
    RpcMessage,
    StatusRequest,
    TimeoutNowRequest,
)

log = logging.getLogger(__name__)

Spawn = Callable[..., Mailbox]
StopActor = Callable[[Mailbox], None]
ClientHandler = Callable[[RpcMessage], None]

_TO_NODE = (
    AppendEntriesRequest,
    InstallSnapshotRequest,
    RequestVoteRequest,
    RequestVoteResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNowRequest,
)
_TO_REPLICATOR = (AppendEntriesResponse, InstallSnapshotResponse)
_FROM_CLIENTS = (ClientRequest, ClientQuery, StatusRequest, AdminRequest)


class Replicators:
    """The Node's ReplicatorFactory, which also knows where each follower's responses go.

    `start`/`stop` run on the Node's thread; `route` on the transport's thread. `routes` is
    only changed and read by single dict operations (atomic in CPython)."""

    def __init__(self, build: Callable[[str, int, int], Mailbox], stop: StopActor) -> None:
        self._build = build
        self._stop = stop
        self.routes: dict[str, Mailbox] = {}

    def start(self, peer_id: str, term: int, next_index: int) -> Mailbox:
        mailbox = self._build(peer_id, term, next_index)
        self.routes[peer_id] = mailbox
        return MailboxSlot(f"replicator {peer_id}", mailbox)  # drops, not raises, once stopped

    def stop(self, peer_id: str) -> None:
        mailbox = self.routes.pop(peer_id, None)
        if mailbox is not None:
            self._stop(mailbox)

    def route(self, peer_id: str) -> Mailbox | None:
        return self.routes.get(peer_id)


@dataclass(frozen=True)
class PeerActors:
    node: Mailbox
    log_manager: Mailbox
    ballot_box: Mailbox
    fsm_caller: Mailbox
    log_view: LogView
    meta: MetaStorage
    replicators: Replicators
    snapshot_executor: Mailbox | None = None  # None: snapshots are off
    snapshots: SnapshotStore | None = None
    metrics: RaftMetrics = field(default_factory=RaftMetrics)  # what the actors count
    leader_watch: LeaderWatch = field(default_factory=LeaderWatch)  # the Node publishes here

    def in_stop_order(self) -> list[Mailbox]:
        """The Node first (no new work; it stops the Replicators), then the LogManager (it
        handles the proposals the Node passed on and flushes), the BallotBox, the FSMCaller
        (it fails every future still pending) and last the SnapshotExecutor (the FSMCaller may
        hand it a snapshot to finish). Then `close_storage`."""
        order = [self.node, self.log_manager, self.ballot_box, self.fsm_caller]
        return order + ([self.snapshot_executor] if self.snapshot_executor is not None else [])

    def close_storage(self) -> None:
        """Once every actor has stopped: no one reads or writes the storages any more."""
        closables: list[Any] = [self.log_view, self.meta]
        if self.snapshots is not None:
            closables.append(self.snapshots)
        for closable in closables:
            try:
                closable.close()
            except Exception:
                log.exception("closing %r", closable)


def assemble_peer(
    options: NodeOptions,
    state_machine: StateMachine,
    log_storage: LogStorage,
    meta_storage: MetaStorage,
    transport: Transport,
    clock: Clock,
    rng: random.Random,
    spawn: Spawn,
    stop: StopActor,
    on_error: Callable[[str], None] | None = None,
    snapshot_storage: SnapshotStore | None = None,
    metrics: RaftMetrics | None = None,
) -> PeerActors:
    """Start one peer's actors. Mutual references go through slots, bound before the Node (the
    only actor that starts work on its own, from a timer) is started. `on_error(reason)` is
    called once, on the Node's thread, when the peer enters ERROR. With a `snapshot_storage`
    (and a state machine that supports snapshots) the peer snapshots and compacts its log.
    Every actor counts into `metrics` (a new RaftMetrics if None)."""
    raft = options.raft
    peer_id = options.peer_id
    metrics = metrics or RaftMetrics()
    leader_watch = LeaderWatch()
    snapshots = snapshot_storage if state_machine.supports_snapshots() else None
    if snapshot_storage is not None and snapshots is None:
        log.warning("%s: the state machine cannot snapshot; snapshots are off", peer_id)
    # A joining peer has no configuration until its leader's log gives it one.
    bootstrap = Configuration.of(()) if options.join else options.initial_conf
    log_view = LogView(
        log_storage,
        raft.log_tail_entries,
        snapshots.latest() if snapshots is not None else None,
        bootstrap,
    )
    fresh = meta_storage.term == 0 and log_view.last_index == 0
    log_view.cluster_id = bootstrap_identity(
        meta_storage,
        not options.join,
        fresh,
        options.initial_conf.all_peers(),
        options.cluster_token,
        peer_id,
    )
    node, log_manager, ballot_box, fsm = (MailboxSlot(n) for n in ("node", "lm", "bb", "fsm"))
    executor = MailboxSlot("snapshot") if snapshots is not None else None

    def build_replicator(peer: str, term: int, next_index: int) -> Mailbox:
        return spawn(
            Replicator,
            peer,
            peer_id,
            term,
            next_index,
            log_view,
            transport,
            ballot_box,
            node,
            clock,
            raft,
            snapshots,
            metrics=metrics,
        )

    fsm_ref = spawn(
        FSMCaller,
        state_machine,
        log_view,
        node,
        raft,
        bootstrap,
        snapshots,
        executor,
        metrics=metrics,
    )
    fsm.bind(fsm_ref)
    bb_ref = spawn(BallotBox, fsm, log_manager, node)
    ballot_box.bind(bb_ref)
    lm_ref = spawn(
        LogManager,
        peer_id,
        log_view,
        meta_storage,
        transport,
        node,
        ballot_box,
        fsm,
        raft,
        metrics=metrics,
    )
    log_manager.bind(lm_ref)
    executor_ref = None
    if snapshots is not None and executor is not None:
        executor_ref = spawn(
            SnapshotExecutor,
            peer_id,
            snapshots,
            log_view,
            transport,
            node,
            log_manager,
            fsm,
            clock,
            raft,
            metrics=metrics,
        )
        executor.bind(executor_ref)
    replicators = Replicators(build_replicator, stop)
    node_ref = spawn(
        Node,
        options,
        term=meta_storage.term,
        voted_for=meta_storage.voted_for,
        log_view=log_view,
        log_manager=log_manager,
        ballot_box=ballot_box,
        fsm_caller=fsm,
        transport=transport,
        replicators=replicators,
        clock=clock,
        rng=rng,
        on_error=on_error,
        snapshot_executor=executor,
        metrics=metrics,
        leader_watch=leader_watch,
    )
    node.bind(node_ref)
    return PeerActors(
        node_ref,
        lm_ref,
        bb_ref,
        fsm_ref,
        log_view,
        meta_storage,
        replicators,
        executor_ref,
        snapshots,
        metrics,
        leader_watch,
    )


class Router:
    """Delivers inbound RPCs to the peer's actors (runs on the transport's thread).

    An AppendEntries goes to the Node, which checks term and leader and passes it on to the
    LogManager, unless the Node's published Leadership (one atomic read) already follows its
    sender in its term and the cluster ids match: then it goes to the LogManager directly and
    the Node is told after (LeaderContact). A view that is stale by then is caught on both
    sides (FollowerAppend, LeaderContact)."""

    def __init__(self, peer_id: str, actors: PeerActors, transport: Transport) -> None:
        """`transport`: where heartbeats answered here go (actors/quiet_heartbeat.py)."""
        self.peer_id = peer_id
        self.actors = actors
        self.transport = transport
        self.client_handler: ClientHandler | None = None
        self.client_drained: Callable[[], None] | None = None

    def drained(self) -> None:
        """The transport delivered a burst: the client handler may hand on what it batched."""
        if self.client_drained is not None:
            self.client_drained()

    def _following(self, req: AppendEntriesRequest) -> bool:
        now = self.actors.leader_watch.current
        return (
            now.role == "follower"
            and now.term == req.term
            and now.leader == req.leader_id
            and bool(req.cluster_id)
            and req.cluster_id == self.actors.log_view.cluster_id
        )

    def deliver(self, message: RpcMessage) -> None:
        try:
            if trace.ON and isinstance(message, AppendEntriesRequest):
                trace.mark("follower.receive")
            if isinstance(message, AppendEntriesRequest) and self._following(message):
                # The steady state: our leader, in the term the Node follows it. A heartbeat
                # on a quiet log is answered here; else the LogManager appends at once (one
                # hop, not two). The Node hears of it after.
                actors, view = self.actors, self.actors.log_view
                if not quiet_heartbeat.answer(message, self.peer_id, view, self.transport):
                    view.appends.hand()
                    actors.log_manager.tell(FollowerAppend(message, message.term))
                actors.node.tell(LeaderContact(message))
            elif isinstance(message, _TO_REPLICATOR):
                mailbox = self.actors.replicators.route(message.sender)
                if mailbox is not None:
                    mailbox.tell(message)
            elif isinstance(message, _TO_NODE):
                self.actors.node.tell(message)
            elif isinstance(message, _FROM_CLIENTS) and self.client_handler is not None:
                self.client_handler(message)
            else:
                log.debug("%s: no route for %s", self.peer_id, type(message).__name__)
        except pykka.ActorDeadError:
            pass  # shutting down, or a replicator that just stopped: the message is moot


# The actors that never block (no disk write, no user code): they share the peer's dispatcher,
# so the Node's, the Replicators' and the BallotBox's tells among themselves are queue appends.
# The LogManager (fsync), the FSMCaller (the user's state machine, unless it declares that it
# never blocks: StateMachine.blocking) and the SnapshotExecutor (snapshot files) keep a thread
# each.
ON_DISPATCHER: tuple[type[pykka.Actor], ...] = (Node, Replicator, BallotBox)


class ThreadedActors:
    """Production `spawn` and `stop`: the ON_DISPATCHER actors on `dispatcher` (one thread,
    actors.dispatcher), every other actor on a pykka thread of its own.

    `stop` is asynchronous (a Replicator may be mid-message when its term ends), so the actors
    it stopped are remembered until they have finished, and `join` waits for them: the peer's
    owner must, before it closes the storage they read. Used from the Node's thread, then (once
    the Node has stopped) from the owner's. `join` also ends the dispatcher when it is the
    peer's own (`own_dispatcher`), not one shared with other peers."""

    def __init__(
        self, dispatcher: Dispatcher | None = None, name: str = "peer", fsm_blocks: bool = True
    ) -> None:
        self._stopping: list[pykka.ActorRef[Any]] = []
        self.own_dispatcher = dispatcher is None
        self.dispatcher = Dispatcher(f"raft-{name}") if dispatcher is None else dispatcher
        # The state machine's `blocking`: False puts the FSMCaller on the dispatcher too.
        self.fsm_blocks = fsm_blocks

    def spawn(self, actor_class: type[pykka.ThreadingActor], *args: Any, **kwargs: Any) -> Mailbox:
        if issubclass(actor_class, ON_DISPATCHER) or (
            not self.fsm_blocks and issubclass(actor_class, FSMCaller)
        ):
            return start_on(self.dispatcher, actor_class, *args, **kwargs)
        ref: Mailbox = actor_class.start(*args, **kwargs)
        return ref

    def stop(self, mailbox: Mailbox) -> None:
        assert isinstance(mailbox, pykka.ActorRef)
        mailbox.stop(block=False)
        self._stopping = [ref for ref in self._stopping if ref.is_alive()]
        self._stopping.append(mailbox)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for ref in self._stopping:
            ref.actor_stopped.wait(max(0.0, deadline - time.monotonic()))
        self._stopping.clear()
        if self.own_dispatcher:
            self.dispatcher.stop(max(0.0, deadline - time.monotonic()))
