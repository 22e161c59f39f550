"""RaftNode: the embedding API. Starts one peer's five actors and wires them together.

    node = RaftNode.start(options, MyStateMachine(), log_storage, meta_storage, transport)
    future = node.apply(b"command")      # a pykka Future of the state machine's result
    result = future.get(timeout=5)       # or compose it with other futures in your Pykka app
    node.stop()

Every method may be called from any thread. `apply` only tells; `status`, `is_leader` and
`leader_id` ask the Node actor (blocking briefly), so call them from the edges of an
application, never from inside another actor's handler.

Futures fail with the errors of actors.errors: NotLeaderError (not applied; see leader_hint),
LeadershipLostError (outcome unknown), NodeFailedError / NodeStoppedError.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

import pykka

from actors.clock import Clock, RealClock
from actors.errors import NodeStoppedError
from actors.futures import fail, fail_all
from actors.messages import Apply, GetStatus
from actors.options import NodeOptions
from actors.state_machine import StateMachine
from actors.status import NodeStatus
from actors.wait import wait_until
from actors.wiring import (
    ClientHandler,
    PeerActors,
    Router,
    assemble_peer,
    spawn_thread,
    stop_thread,
)
from storage.base import LogStorage, MetaStorage
from transport.base import Transport

log = logging.getLogger(__name__)


class RaftNode:
    def __init__(
        self,
        options: NodeOptions,
        actors: PeerActors,
        transport: Transport,
        own_clock: RealClock | None,
    ) -> None:
        self.options = options
        self._actors = actors
        self._node: pykka.ActorRef[Any] = actors.node  # type: ignore[assignment]
        self._transport = transport
        self._router = Router(options.peer_id, actors)
        self._own_clock = own_clock
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
        actors = assemble_peer(
            options,
            state_machine,
            log_storage,
            meta_storage,
            transport,
            clock or own_clock,  # type: ignore[arg-type]
            rng or random.Random(),
            spawn_thread,
            stop_thread,
        )
        self = cls(options, actors, transport, own_clock)
        try:
            transport.start(self._router.deliver)
        except BaseException:
            self.stop()  # e.g. the port is taken: leave no actor or thread behind
            raise
        return self

    def set_client_handler(self, handler: ClientHandler | None) -> None:
        """Where ClientRequest/StatusRequest from the network go (the KV service sets this)."""
        self._router.client_handler = handler

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
            self._node.tell(Apply(tuple(commands), tuple(futures)))
        except pykka.ActorDeadError:
            fail_all(futures, NodeStoppedError(f"node {self.options.peer_id} is stopped"))
        return list(futures)

    def status(self, timeout: float = 5.0) -> NodeStatus:
        """Role, term, leader, commit/applied/last index, pid, per-follower replication."""
        future: pykka.Future[NodeStatus] = pykka.ThreadingFuture()
        self.status_async(future)
        return future.get(timeout=timeout)

    def status_async(self, reply: pykka.Future[Any]) -> None:
        """Complete `reply` with `status()` (a NodeStatus), without blocking the caller."""
        try:
            self._node.tell(GetStatus(reply))
        except pykka.ActorDeadError:
            fail(reply, NodeStoppedError(f"node {self.options.peer_id} is stopped"))

    def wait_for_leader(self, timeout: float = 10.0) -> str:
        """Block until this node knows a leader (itself or another); return its id. Raises
        TimeoutError if none is known within `timeout` (e.g. no quorum is reachable)."""

        def known_leader() -> str | None:
            return self.status(timeout=max(0.1, timeout)).leader

        # A leader is known at the earliest after one election timeout: polling is cheap here.
        return wait_until(known_leader, f"a leader known to {self.options.peer_id}", timeout)

    @property
    def is_leader(self) -> bool:
        return self.status().is_leader

    @property
    def leader_id(self) -> str | None:
        return self.status().leader

    def stop(self, timeout: float = 10.0) -> None:
        """Stop receiving, then every actor (the LogManager flushes and closes storage).
        Commands still pending fail with NodeStoppedError or LeadershipLostError. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._transport.stop()
        for ref in self._actors.in_stop_order():
            assert isinstance(ref, pykka.ActorRef)
            ref.stop(block=True, timeout=timeout)
        for peer in list(self._actors.replicators.routes):
            self._actors.replicators.stop(peer)
        if self._own_clock is not None:
            self._own_clock.stop()
