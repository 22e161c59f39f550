"""RaftNode: the embedding API. Starts one peer's five actors and wires them together.

    node = RaftNode.start(options, MyStateMachine(), log_storage, meta_storage, transport)
    future = node.apply(b"command")      # a RaftFuture (a pykka future) of the result
    result = future.get(timeout=5)       # or compose it with other futures in your Pykka app
    future.add_done_callback(on_done)    # or be called back, on the thread that settles it
    result = await node.apply(b"cmd")    # or await it in a coroutine: the loop is not blocked
    node.stop()

Every method may be called from any thread. `apply`, `read` and the others only tell and
return a RaftFuture (actors/futures.py); `is_leader`, `leader_id` and `leadership` read what
the Node last published, at once. `status` asks the Node actor (blocking briefly; or
`status_async`), so call it from the edges of an application, not inside an actor's handler.
A state machine callback that waits on one of these futures would wait for itself: `get`
raises DeadlockError there.

Futures fail with the errors of actors.errors; each says by `outcome_unknown` whether the
command may still take effect: NotLeaderError (not applied; see leader_hint), OverloadedError
(not applied; back off and retry), CommandTooLargeError, LeadershipLostError (outcome unknown),
NodeFailedError / NodeStoppedError (either, as they say); ReadError for a read the state
machine could not answer. Waiting too long raises RaftTimeoutError, the one timeout type
(also a TimeoutError and a pykka.Timeout).

Failure: when any actor of the peer cannot go on, the whole peer enters ERROR (it stops leading,
voting and applying; every pending future fails; `status().error` says why) and `on_error` is
called with the reason, once, on the Node's thread: the hook must be quick and must not block
nor call `stop()` (which waits for that thread); set an event and act on it elsewhere. The
peer does not recover by itself: stop it and start a new RaftNode over the same storage
(crash-only), as the KV service's supervisor does.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import random
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import pykka

from actors.clock import Clock, RealClock
from actors.dispatcher import Dispatcher
from actors.errors import DeadlockError, NodeStoppedError, OptionsError, ReadError
from actors.futures import CompletionFuture, RaftFuture, fail, fail_all
from actors.membership import ChangeRequest, Op
from actors.messages import (
    Apply,
    ChangeMembership,
    FatalError,
    GetStatus,
    ReadAt,
    ReadIndex,
    TakeSnapshot,
    TransferLeadership,
)
from actors.metrics import RaftMetrics
from actors.options import FRAME_HEADROOM, NodeOptions
from actors.read_only import CONSISTENCIES, LEASE, LINEARIZABLE, SERIALIZABLE
from actors.state_machine import StateMachine
from actors.status import Leadership, NodeStatus
from actors.wait import wait_until
from actors.wiring import (
    ClientHandler,
    PeerActors,
    Router,
    ThreadedActors,
    assemble_peer,
)
from storage.base import LogStorage, MetaStorage, SnapshotStore
from transport.base import HostableTransport, Transport

log = logging.getLogger(__name__)

# Nodes started and not stopped yet, stopped at interpreter exit (see `_stop_at_exit`). Strong
# references: a node its program dropped without stop() still runs, and still holds storage.
_running: set[RaftNode] = set()
_running_lock = threading.Lock()


@atexit.register
def _stop_at_exit() -> None:
    """A program that returns (or dies of an exception) without `stop()`: stop its nodes now,
    while their daemon threads still run, so that the exit is clean (pending futures failed,
    storage closed) and the process does not hang on them."""
    with _running_lock:
        nodes = list(_running)
    for node in nodes:
        node.stop()


R = TypeVar("R")
V = TypeVar("V")


class RaftNode(Generic[R, V]):
    """One peer (see the module docstring). `RaftNode[R, V]`: its state machine's apply results
    are R and its read results V (StateMachine[R, V])."""

    def __init__(
        self,
        options: NodeOptions,
        actors: PeerActors,
        transport: Transport,
        own_clock: RealClock | None,
        threads: ThreadedActors,
        no_reads: str | None = None,
    ) -> None:
        """`no_reads`: why `read` is refused (the state machine has no on_read), if it is."""
        self.options = options
        self._actors = actors
        self._node: pykka.ActorRef[Any] = actors.node  # type: ignore[assignment]
        self._transport = transport
        self._router = Router(options.peer_id, actors, transport)
        self._own_clock = own_clock
        self._threads = threads
        # Guards _stopped against apply: every Apply told before stop() sets it is ahead of the
        # Node's stop message, so none is dropped unanswered by a stopping actor.
        self._lock = threading.Lock()
        self._stopped = False
        self._no_reads = no_reads

    @classmethod
    def start(
        cls,
        options: NodeOptions,
        state_machine: StateMachine[R, V],
        log_storage: LogStorage,
        meta_storage: MetaStorage,
        transport: Transport,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        on_error: Callable[[str], None] | None = None,
        snapshot_storage: SnapshotStore | None = None,
        metrics: RaftMetrics | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> RaftNode[R, V]:
        """Start the actors of one peer over the given storage and transport, then begin
        receiving. The storages become owned by the node (closed by `stop`). `on_error` is
        called with the reason when the peer enters ERROR (see the module docstring). Raises
        OptionsError when a command of max_command_bytes would not fit the transport's frame.
        With `snapshot_storage` (storage.snapshot_storage.SnapshotStorage) and a state machine
        that implements on_snapshot_save/on_snapshot_load, the node loads its newest snapshot,
        snapshots by the options' policy and compacts its log (see actors.options). The actors
        count into `metrics` (a new actors.metrics.RaftMetrics if None; see `metrics`).
        The Node, its Replicators and its BallotBox run on `dispatcher` (actors.dispatcher; a
        new one of the node's own, stopped with it, if None): nodes in one process may share
        one, as they share the machine's cores anyway."""
        if options.raft.max_command_bytes + FRAME_HEADROOM > transport.max_frame_size:
            raise OptionsError(
                f"max_command_bytes {options.raft.max_command_bytes} does not fit the "
                f"transport's frames of {transport.max_frame_size} bytes"
            )
        own_clock = RealClock() if clock is None else None
        threads = ThreadedActors(dispatcher, options.peer_id, state_machine.blocking)
        actors = assemble_peer(
            options,
            state_machine,
            log_storage,
            meta_storage,
            transport,
            clock or own_clock,  # type: ignore[arg-type]
            rng or random.Random(),
            threads.spawn,
            threads.stop,
            on_error,
            snapshot_storage,
            metrics,
        )
        no_reads = (
            None
            if state_machine.supports_reads()
            else f"{type(state_machine).__name__} does not implement on_read: read it through apply"
        )
        self: RaftNode[R, V] = cls(options, actors, transport, own_clock, threads, no_reads)
        with _running_lock:
            _running.add(self)
        if isinstance(transport, HostableTransport):
            # Its I/O on the dispatcher's thread: inbound RPCs reach the Node's actors, and what
            # they send leaves, without a thread hand-off (docs/DESIGN.md, Threads).
            transport.host_on(threads.dispatcher)
        try:
            transport.start(self._router.deliver, self._transport_failed, self._router.drained)
        except BaseException:
            self.stop()  # e.g. the port is taken: leave no actor or thread behind
            raise
        return self

    def _transport_failed(self, reason: str) -> None:
        """The transport stopped working by itself: a deaf peer must not look healthy."""
        with contextlib.suppress(pykka.ActorDeadError):
            self._node.tell(FatalError("transport", reason))

    @property
    def metrics(self) -> RaftMetrics:
        """The peer's hot-path metrics (actors/metrics.py), read from any thread (e.g. by
        /metrics); the embedding service may register families of its own in it."""
        return self._actors.metrics

    def set_client_handler(
        self, handler: ClientHandler | None, drained: Callable[[], None] | None = None
    ) -> None:
        """Where ClientRequest/StatusRequest from the network go (the KV service sets this);
        `drained()` is called after each burst of them, on the same (the transport's)
        thread, so that a handler may batch what one burst brought."""
        self._router.client_drained = drained
        self._router.client_handler = handler

    # -- the API -----------------------------------------------------------------------------

    def apply(self, command: bytes) -> RaftFuture[R]:
        """Replicate `command`; the future completes with the state machine's result."""
        future: RaftFuture[R] = RaftFuture()
        self.apply_batch([command], [future])
        return future

    async def apply_async(self, command: bytes) -> R:
        """`await node.apply_async(cmd)`: `apply`, awaited on the running loop."""
        return await self.apply(command)

    def apply_batch(
        self, commands: Sequence[bytes], futures: Sequence[pykka.Future[Any]] | None = None
    ) -> list[pykka.Future[Any]]:
        """Replicate several commands as one batch (one message, one log append). `futures`,
        if given, are completed instead of new ones (RaftFutures): any pykka future, e.g.
        an actors.futures.CompletionFuture. An empty batch is a no-op."""
        if futures is None:
            futures = RaftFuture.batch(len(commands))
        elif len(futures) != len(commands):
            raise ValueError("one future per command")
        if not commands:
            return []
        if not set(map(type, commands)) <= {bytes}:  # here, not as a crash in an actor
            raise TypeError("a command is bytes")
        with self._lock:
            if not self._stopped:
                self._node.tell(Apply(tuple(commands), tuple(futures)))
                return list(futures)
        fail_all(futures, NodeStoppedError(f"node {self.options.peer_id} is stopped"))
        return list(futures)

    def read(
        self,
        query: bytes,
        consistency: str = LINEARIZABLE,
        reply: RaftFuture[Any] | None = None,
        *,
        on_follower: bool = True,
    ) -> RaftFuture[V]:
        """Read the state machine without the log (`StateMachine.on_read(query)`); the future
        (`reply`, if given: a RaftFuture, e.g. a CompletionFuture) completes with its result.
        `consistency`:
        - "linearizable" (the default): on the leader, after a heartbeat round confirmed its
          leadership and its read index is applied (ReadIndex, actors/read_only.py);
        - "lease": on the leader, at once while its lease holds (a clock assumption, see
          actors/read_only.py), else as "linearizable";
        - "serializable": this peer's state as it is, leader or not; may be stale.
        A follower serves linearizable and lease reads by asking the leader for a read index
        (then reading its own state once it has applied it), unless `on_follower` is False.
        Fails with NotLeaderError (retry at the hint) when this peer cannot serve it, and with
        ReadError when the state machine's on_read raised (or it has none)."""
        if consistency not in CONSISTENCIES:
            raise ValueError(f"consistency must be one of {', '.join(CONSISTENCIES)}")
        future: RaftFuture[V] = reply if reply is not None else RaftFuture()
        if self._no_reads is not None:
            fail(future, ReadError(self._no_reads))
            return future
        fsm_caller = self._actors.fsm_caller

        def at_index(index: int, error: BaseException | None) -> None:
            # On the Node's thread: only a tell.
            if error is not None:
                fail(future, error)
            else:
                self._tell(fsm_caller, ReadAt(index, query, future), future)

        if consistency == SERIALIZABLE:
            self._tell(fsm_caller, ReadAt(0, query, future), future)
        else:
            request = ReadIndex(CompletionFuture(at_index), consistency == LEASE, on_follower)
            self._tell(self._node, request, future)
        return future

    async def read_async(
        self, query: bytes, consistency: str = LINEARIZABLE, *, on_follower: bool = True
    ) -> V:
        """`await node.read_async(query)`: `read`, awaited on the running loop."""
        return await self.read(query, consistency, RaftFuture(), on_follower=on_follower)

    def _tell(self, mailbox: Any, message: Any, future: pykka.Future[Any]) -> None:
        """Tell an actor a message carrying `future`; a stopped node fails the future."""
        try:
            mailbox.tell(message)
        except pykka.ActorDeadError:
            fail(future, NodeStoppedError(f"node {self.options.peer_id} is stopped"))

    def snapshot(self, reply: pykka.Future[Any] | None = None) -> pykka.Future[Any]:
        """Take a snapshot now (between two applied batches). The future (`reply`, if given,
        e.g. a CompletionFuture) completes with its storage.snapshot_storage.SnapshotMeta once
        it is durable (the log is compacted behind it right after), or with the newest one when
        nothing was applied since (None if there is none). Fails with RaftError when snapshots
        are off or the save failed."""
        future: pykka.Future[Any] = reply if reply is not None else RaftFuture()
        self._tell(self._actors.fsm_caller, TakeSnapshot(future), future)
        return future

    def transfer_leadership(
        self, to: str | None = None, reply: pykka.Future[Any] | None = None
    ) -> pykka.Future[Any]:
        """Hand this leader's leadership to voter `to` (None: the most up-to-date other voter;
        see actors/transfer.py). Meanwhile proposals fail with LeaderTransferringError
        (retryable). The future (`reply`, if given) completes with the target's id once this
        peer stepped down for it; it fails with NotLeaderError, UnknownPeerError (no such
        voter), ChangeInProgressError (a transfer is under way) or TransferLeadershipError
        (no handover within an election timeout: this peer leads on)."""
        future: pykka.Future[Any] = reply if reply is not None else RaftFuture()
        self._tell(self._node, TransferLeadership(to, future), future)
        return future

    # -- membership (actors/membership.py) ---------------------------------------------------
    #
    # Each asks this peer, which must lead, to change the configuration; the future (`reply`,
    # if given) completes with the new actors.configuration.Configuration once it is committed
    # (`.as_dict()`: {"voters", "learners"}), and fails with NotLeaderError (see its hint),
    # ChangeInProgressError (busy: another change or a transfer; retry), UnknownPeerError,
    # MembershipChangeError (not a valid change), CatchUpError (a new voter did not catch up:
    # nothing changed) or LeadershipLostError (outcome unknown: look at the members). A change
    # to what already is completes at once.

    def add_peer(self, peer: str, reply: pykka.Future[Any] | None = None) -> pykka.Future[Any]:
        """Make `peer` a voter (a learner is promoted): it first catches up, then joint
        consensus moves the cluster to the new voters."""
        return self._change(Op.ADD_PEER, [peer], reply)

    def remove_peer(self, peer: str, reply: pykka.Future[Any] | None = None) -> pykka.Future[Any]:
        """Remove voter or learner `peer`. Removing this leader makes it hand leadership to
        the most up-to-date remaining voter once the change is committed."""
        return self._change(Op.REMOVE_PEER, [peer], reply)

    def change_peers(
        self, peers: Iterable[str], reply: pykka.Future[Any] | None = None
    ) -> pykka.Future[Any]:
        """Make `peers` the voters, all at once (joint consensus); learners stay learners
        unless named."""
        return self._change(Op.CHANGE_PEERS, peers, reply)

    def add_learners(
        self, peers: Iterable[str], reply: pykka.Future[Any] | None = None
    ) -> pykka.Future[Any]:
        """Replicate to `peers` as learners: never counted in a quorum, never candidates."""
        return self._change(Op.ADD_LEARNERS, peers, reply)

    def remove_learners(
        self, peers: Iterable[str], reply: pykka.Future[Any] | None = None
    ) -> pykka.Future[Any]:
        return self._change(Op.REMOVE_LEARNERS, peers, reply)

    def promote_learner(
        self, peer: str, reply: pykka.Future[Any] | None = None
    ) -> pykka.Future[Any]:
        """Make learner `peer` a voter (once it has caught up)."""
        return self._change(Op.PROMOTE_LEARNER, [peer], reply)

    def _change(
        self, op: Op, peers: Iterable[str], reply: pykka.Future[Any] | None
    ) -> pykka.Future[Any]:
        future: pykka.Future[Any] = reply if reply is not None else RaftFuture()
        try:
            request = ChangeRequest.of(op, [peers] if isinstance(peers, str) else peers)
        except ValueError as error:
            fail(future, error)
            return future
        self._tell(self._node, ChangeMembership(request, future), future)
        return future

    def status(self, timeout: float = 5.0) -> NodeStatus:
        """Role, term, leader, commit/applied/last index, pid, per-follower replication.
        Raises RaftTimeoutError if the Node does not answer within `timeout`."""
        future: RaftFuture[NodeStatus] = RaftFuture()
        self.status_async(future)
        return future.get(timeout=timeout)

    def status_async(self, reply: pykka.Future[Any]) -> None:
        """Complete `reply` with `status()` (a NodeStatus), without blocking the caller."""
        self._tell(self._node, GetStatus(reply), reply)

    def wait_for_leader(self, timeout: float = 10.0) -> str:
        """Block until this node knows a leader (itself or another); return its id. Raises
        RaftTimeoutError if none is known within `timeout` (e.g. no quorum is reachable)."""
        watch = self._actors.leader_watch
        return wait_until(
            lambda: watch.current.leader,
            f"a leader known to {self.options.peer_id}",
            timeout,
            condition=watch.condition,
        )

    @property
    def leadership(self) -> Leadership:
        """Role, term and leader as the Node last published them (at the end of its latest
        message): read at once, from any thread, a moment old at most."""
        return self._actors.leader_watch.current

    @property
    def is_leader(self) -> bool:
        """Whether this node leads, as last published: does not block."""
        return self.leadership.role == "leader"

    @property
    def leader_id(self) -> str | None:
        """The leader this node knows (itself or another; None: none), without blocking."""
        return self.leadership.leader

    def stop(self, timeout: float = 10.0) -> None:
        """Stop receiving, then every actor in order (PeerActors.in_stop_order), then close the
        storages. Every future still pending completes: NodeStoppedError (outcome unknown once
        appended) or LeadershipLostError. Idempotent. Raises DeadlockError, and stops
        nothing, on the node's dispatcher thread (in a callback of a future the Node settles,
        or a ClientServer handler): it would wait for actors only that thread runs."""
        if threading.current_thread() is self._threads.dispatcher.thread:
            raise DeadlockError(
                f"{self.options.peer_id}: stop() called on the node's own dispatcher thread "
                "would wait for the actors that thread runs; call it from another thread"
            )
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        with _running_lock:
            _running.discard(self)
        self._transport.stop()
        for ref in self._actors.in_stop_order():
            assert isinstance(ref, pykka.ActorRef)
            try:
                ref.stop(block=True, timeout=timeout)
            except pykka.Timeout:  # stuck: log it, and stop the rest all the same
                log.error("%s: %r did not stop within %.0f s", self.options.peer_id, ref, timeout)
        for peer in list(self._actors.replicators.routes):
            self._actors.replicators.stop(peer)
        self._threads.join(timeout)  # the Replicators read the log: wait before it closes
        self._actors.close_storage()
        if self._own_clock is not None:
            self._own_clock.stop()
