"""RaftNode: the embedding API. Starts one peer's five actors and wires them together.

    node = RaftNode.start(options, MyStateMachine(), log_storage, meta_storage, transport)
    future = node.apply(b"command")      # a pykka Future of the state machine's result
    result = future.get(timeout=5)       # or compose it with other futures in your Pykka app
    node.stop()

Every method may be called from any thread. `apply` only tells; `status`, `is_leader` and
`leader_id` ask the Node actor (blocking briefly), so call them from the edges of an
application, never from inside another actor's handler.

Futures fail with the errors of actors.errors: NotLeaderError (not applied; see leader_hint),
LeadershipLostError (outcome unknown), NodeErrorState / NodeStoppedError.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pykka

from actors.ballot_box import BallotBox
from actors.clock import Clock, RealClock
from actors.errors import NodeStoppedError
from actors.fsm_caller import FSMCaller
from actors.log_manager import LogManager
from actors.log_view import LogView
from actors.mailbox import Mailbox, MailboxSlot
from actors.messages import Apply, GetStatus
from actors.node import Node
from actors.options import NodeOptions
from actors.replicator import Replicator
from actors.state_machine import StateMachine
from storage.base import LogStorage, MetaStorage
from transport.base import Transport
from transport.rpc import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    ClientRequest,
    InstallSnapshotResponse,
    RequestVoteRequest,
    RequestVoteResponse,
    RpcMessage,
    StatusRequest,
    TimeoutNowResponse,
)

log = logging.getLogger(__name__)

_TO_NODE = (AppendEntriesRequest, RequestVoteRequest, RequestVoteResponse)
_TO_REPLICATOR = (AppendEntriesResponse, InstallSnapshotResponse, TimeoutNowResponse)
_FROM_CLIENTS = (ClientRequest, StatusRequest)

ClientHandler = Callable[[RpcMessage], None]


class _Replicators:
    """The Node's ReplicatorFactory: starts Replicator actors and routes their responses.

    `start`/`stop` run on the Node's thread; `route` on the transport's I/O thread. The routes
    dict is only ever replaced or read by single dict operations (atomic in CPython)."""

    def __init__(self, build: Callable[[str, int, int], pykka.ActorRef[Any]]) -> None:
        self._build = build
        self.routes: dict[str, pykka.ActorRef[Any]] = {}

    def start(self, peer_id: str, term: int, next_index: int) -> Mailbox:
        ref = self._build(peer_id, term, next_index)
        self.routes[peer_id] = ref
        return MailboxSlot(f"replicator {peer_id}", ref)  # drops, not raises, once stopped

    def stop(self, peer_id: str) -> None:
        ref = self.routes.pop(peer_id, None)
        if ref is not None:
            ref.stop(block=False)

    def route(self, peer_id: str) -> pykka.ActorRef[Any] | None:
        return self.routes.get(peer_id)


class RaftNode:
    def __init__(
        self,
        options: NodeOptions,
        refs: dict[str, pykka.ActorRef[Any]],
        transport: Transport,
        replicators: _Replicators,
        own_clock: RealClock | None,
    ) -> None:
        self.options = options
        self._refs = refs
        self._transport = transport
        self._replicators = replicators
        self._own_clock = own_clock
        self._client_handler: ClientHandler | None = None
        self._stopped = False

    @classmethod
    def start(
        cls,
        options: NodeOptions,
        state_machine: StateMachine,
        log_storage: LogStorage,
        meta_storage: MetaStorage,
        transport: Transport,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> RaftNode:
        """Start the actors of one peer over the given storage and transport, then begin
        receiving. The storages become owned by the node (closed by `stop`)."""
        own_clock = RealClock() if clock is None else None
        the_clock: Clock = clock if clock is not None else own_clock  # type: ignore[assignment]
        raft = options.raft
        peer_id = options.peer_id
        view = LogView(log_storage, raft.log_tail_entries)
        node, log_manager, ballot_box, fsm = (MailboxSlot(n) for n in ("node", "lm", "bb", "fsm"))

        def build_replicator(peer: str, term: int, next_index: int) -> pykka.ActorRef[Any]:
            return Replicator.start(
                peer, peer_id, term, next_index, view, transport, ballot_box, node, the_clock, raft
            )

        replicators = _Replicators(build_replicator)
        refs: dict[str, pykka.ActorRef[Any]] = {}
        refs["fsm"] = FSMCaller.start(state_machine, view, node, raft)
        refs["bb"] = BallotBox.start(fsm, log_manager)
        refs["lm"] = LogManager.start(peer_id, view, meta_storage, transport, node, ballot_box, fsm)
        fsm.bind(refs["fsm"])
        ballot_box.bind(refs["bb"])
        log_manager.bind(refs["lm"])
        refs["node"] = Node.start(
            options,
            term=meta_storage.term,
            voted_for=meta_storage.voted_for,
            log_view=view,
            log_manager=log_manager,
            transport=transport,
            replicators=replicators,
            clock=the_clock,
            rng=rng or random.Random(),
        )
        node.bind(refs["node"])
        self = cls(options, refs, transport, replicators, own_clock)
        try:
            transport.start(self._deliver)
        except BaseException:
            self.stop()  # e.g. the port is taken: leave no actor or thread behind
            raise
        return self

    # -- inbound routing (runs on the transport's thread) ------------------------------------

    def _deliver(self, message: RpcMessage) -> None:
        try:
            if isinstance(message, _TO_REPLICATOR):
                ref = self._replicators.route(message.sender)
                if ref is not None:
                    ref.tell(message)
            elif isinstance(message, _TO_NODE):
                self._refs["node"].tell(message)
            elif isinstance(message, _FROM_CLIENTS) and self._client_handler is not None:
                self._client_handler(message)
            else:
                log.debug("%s: no route for %s", self.options.peer_id, type(message).__name__)
        except pykka.ActorDeadError:
            pass  # shutting down, or a replicator that just stopped: the message is moot

    def set_client_handler(self, handler: ClientHandler | None) -> None:
        """Where ClientRequest/StatusRequest from the network go (the KV service sets this)."""
        self._client_handler = handler

    # -- the API -----------------------------------------------------------------------------

    def apply(self, command: bytes) -> pykka.Future[Any]:
        """Replicate `command`; the future completes with the state machine's result."""
        return self.apply_batch([command])[0]

    def apply_batch(
        self, commands: Sequence[bytes], futures: Sequence[pykka.Future[Any]] | None = None
    ) -> list[pykka.Future[Any]]:
        """Replicate several commands as one batch (one message, one log append). `futures`,
        if given, are completed instead of new ones (e.g. actors.futures.CompletionFuture)."""
        if futures is None:
            futures = [pykka.ThreadingFuture() for _ in commands]
        elif len(futures) != len(commands):
            raise ValueError("one future per command")
        try:
            self._refs["node"].tell(Apply(tuple(commands), tuple(futures)))
        except pykka.ActorDeadError:
            error = NodeStoppedError(f"node {self.options.peer_id} is stopped")
            for future in futures:
                future.set_exception((type(error), error, None))
        return list(futures)

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """Role, term, leader, commit/applied/last index, pid, per-follower replication."""
        future: pykka.Future[dict[str, Any]] = pykka.ThreadingFuture()
        self.status_async(future)
        return future.get(timeout=timeout)

    def status_async(self, reply: pykka.Future[Any]) -> None:
        """Complete `reply` with `status()`, without blocking the caller."""
        try:
            self._refs["node"].tell(GetStatus(reply))
        except pykka.ActorDeadError:
            error = NodeStoppedError(f"node {self.options.peer_id} is stopped")
            reply.set_exception((type(error), error, None))

    def wait_for_leader(self, timeout: float = 10.0) -> str:
        """Block until this node knows a leader (itself or another); return its id. Raises
        TimeoutError if none is known within `timeout` (e.g. no quorum is reachable)."""
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            leader: str | None = self.status(timeout=max(0.1, deadline - time.monotonic()))[
                "leader"
            ]
            if leader is not None:
                return leader
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no leader known to {self.options.peer_id} after {timeout}s")
            pause.wait(0.02)  # an election takes at least one election timeout anyway

    @property
    def is_leader(self) -> bool:
        return bool(self.status()["role"] == "leader")

    @property
    def leader_id(self) -> str | None:
        leader: str | None = self.status()["leader"]
        return leader

    def stop(self, timeout: float = 10.0) -> None:
        """Stop receiving, then every actor (the LogManager flushes and closes storage).
        Commands still pending fail with NodeStoppedError or LeadershipLostError. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._transport.stop()
        for name in ("node", "lm", "bb", "fsm"):
            ref = self._refs[name]
            with contextlib.suppress(pykka.ActorDeadError):
                ref.stop(block=True, timeout=timeout)
        for peer in list(self._replicators.routes):
            self._replicators.stop(peer)
        if self._own_clock is not None:
            self._own_clock.stop()
