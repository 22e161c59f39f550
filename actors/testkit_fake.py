"""FakeRaftNode: RaftNode's public surface without consensus, for testing an application's own
code (its actors, its request handlers) against a node that answers at once.

    node = FakeRaftNode(MyStateMachine())          # leads term 1 at once
    assert node.apply(b"+5").get(timeout=1) == 5   # applied on this thread, before apply returns
    node.become_follower("b")                      # term 2, b leads: applies and reads refused
    assert node.apply(b"+1").error().leader_hint == "b"

What it keeps of a real node: every call returns an actors.futures.RaftFuture (or settles the
`reply` given) and fails it with the errors of actors.errors, with the same `outcome_unknown`;
the state machine's callbacks run one at a time, in the real order (a leader term begins with
a configuration entry, on_configuration_committed, then on_leader_start; each start is paired
with its stop), inside `running_callback`, so a callback that blocks on this node's futures
gets DeadlockError as it would. What it drops: there is no log replication, no election and no
timer. Commands are applied as soon as they are proposed (`auto_commit`), on the proposing
thread, or held until `commit()`; the test moves leadership with `become_leader`,
`become_follower`, `fail` and `stop`.

Thread-safety: every method may be called from any thread; state machine calls are serialised
under one lock (the FSMCaller's thread, as it were). Futures are settled after that lock is
released, on the calling thread, so a done-callback may call the node again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import pykka

from actors.clock import Clock
from actors.configuration import Configuration
from actors.dispatcher import Dispatcher
from actors.errors import (
    LeadershipLostError,
    NodeFailedError,
    NodeStoppedError,
    NotLeaderError,
    RaftError,
    ReadError,
)
from actors.futures import RaftFuture, complete, fail, running_callback
from actors.membership import ChangeRequest, Op
from actors.metrics import RaftMetrics
from actors.options import NodeOptions
from actors.raft_node import RaftNode
from actors.read_only import CONSISTENCIES, LINEARIZABLE, SERIALIZABLE
from actors.state_machine import Command, StateMachine
from actors.status import Leadership, NodeStatus
from actors.transfer import pick_target
from actors.wait import wait_until
from actors.wiring import ClientHandler
from storage.base import LogStorage, MetaStorage, SnapshotStore
from storage.memory import MemorySnapshotStorage
from storage.snapshot_storage import SnapshotMeta
from transport.base import Transport
from transport.rpc import RpcMessage

log = logging.getLogger(__name__)

R = TypeVar("R")
V = TypeVar("V")

_Settle = Callable[[], None]


class FakeRaftNode(RaftNode[R, V]):
    """A RaftNode stand-in (see the module docstring). `applied` lists every command applied,
    `held` those proposed but not committed yet (`auto_commit=False`), `snapshots` what
    `snapshot()` saved, `client_handler` what `set_client_handler` was given.

    A subclass of RaftNode only so that it type-checks wherever a RaftNode is expected: it
    overrides every public method and property (tests/unit/test_testkit.py checks that none
    is inherited) and never runs RaftNode's own code."""

    def __init__(
        self,
        state_machine: StateMachine[R, V],
        peer_id: str = "a",
        peers: Iterable[str] | None = None,
        *,
        leading: bool = True,
        leader_id: str | None = None,
        term: int = 1,
        auto_commit: bool = True,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        """The node `peer_id` of a cluster of `peers` (default: itself alone), in `term`:
        leading it (the default), or following `leader_id` (None: no leader known)."""
        voters = list(peers) if peers is not None else [peer_id]
        self.options = NodeOptions(peer_id, Configuration.of(voters))
        self.state_machine = state_machine
        self.auto_commit = auto_commit
        self.on_error = on_error
        self.applied: list[Command] = []
        self.held: list[tuple[Command, pykka.Future[Any]]] = []
        self.snapshots = MemorySnapshotStorage()
        self.client_handler: ClientHandler | None = None
        self.client_drained: Callable[[], None] | None = None
        self._metrics = RaftMetrics()
        self._mutex = threading.RLock()
        self._changed = threading.Condition(self._mutex)  # notified on leadership changes
        self._outbox: list[_Settle] = []  # settlements, run once the lock is released
        self._depth = 0  # nesting of _serialised on the thread holding the lock
        self._draining = False  # applying: a proposal from a callback waits for the loop
        self._commit_budget = 0  # held commands the running apply loop may still apply
        self._refusal: RaftError | None = None
        self._conf = self.options.initial_conf
        self._last_index = 0  # the log's last index: applied, then held
        self._applied_index = 0
        self._applied_term = 0
        self._role = "follower"
        self._term = 0
        self._leader: str | None = None
        self._leadership = Leadership("follower", 0, None)  # the three, replaced at once
        self._error: str | None = None
        self._stopped = False
        self._given_transport: Transport | None = None  # what `start` was given: stopped and
        self._storages: list[Any] = []  # closed by `stop`, as a RaftNode owns them
        with self._serialised():
            if leading:
                self._become_leader(term)
            else:
                self._become_follower(leader_id, term)

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
    ) -> FakeRaftNode[R, V]:
        """As RaftNode.start, for code that starts its node itself: the fake leads term 1 at
        once, ignores the storages (closing them at `stop`, as they are owned) and hands the
        client messages the transport receives to `set_client_handler`'s handler."""
        node = cls(
            state_machine,
            options.peer_id,
            sorted(options.initial_conf.peers),
            on_error=on_error,
        )
        if metrics is not None:
            node._metrics = metrics
        node._given_transport = transport
        node._storages = [log_storage, meta_storage, snapshot_storage]
        transport.start(node._from_transport, None, node._drained)
        return node

    # -- what the test drives ------------------------------------------------------------------

    def become_leader(self, term: int | None = None) -> None:
        """Lead `term` (default: the next one): its configuration entry is applied, then the
        state machine's on_leader_start(term)."""
        with self._serialised():
            self._check_running()
            self._become_leader(self._term + 1 if term is None else term)

    def become_follower(self, leader_id: str | None = None, term: int | None = None) -> None:
        """Follow `leader_id` (None: no leader known) in `term` (default: the next one). A
        leader stepping down fails what it held with LeadershipLostError (outcome unknown)."""
        with self._serialised():
            self._check_running()
            self._become_follower(leader_id, self._term + 1 if term is None else term)

    def refuse_proposals(self, error: RaftError | None) -> None:
        """Fail every proposal with `error` (e.g. OverloadedError()) until called with None."""
        with self._mutex:
            self._refusal = error

    def commit(self, count: int | None = None) -> int:
        """Apply the first `count` held commands (all if None); returns how many."""
        with self._serialised():
            count = len(self.held) if count is None else min(count, len(self.held))
            self._apply_held(count)
            return count

    def fail(self, reason: str) -> None:
        """Enter ERROR, as a peer whose actor or state machine failed: held futures fail with
        NodeFailedError (outcome unknown), the state machine's on_error runs, then the
        `on_error` hook; nothing is served any more."""
        with self._serialised():
            if self._error is None and not self._stopped:
                self._enter_error(reason, NodeFailedError(reason))

    def deliver(self, message: RpcMessage) -> None:
        """Hand `message` to the client handler, then say the burst is drained: what the
        transport of a real node does with a client's request."""
        self._from_transport(message)
        self._drained()

    def _from_transport(self, message: RpcMessage) -> None:
        if self.client_handler is not None:
            self.client_handler(message)

    def _drained(self) -> None:
        if self.client_drained is not None:
            self.client_drained()

    # -- RaftNode's API ------------------------------------------------------------------------

    @property
    def metrics(self) -> RaftMetrics:
        """A RaftMetrics of its own, where an application may register its families."""
        return self._metrics

    def set_client_handler(
        self, handler: ClientHandler | None, drained: Callable[[], None] | None = None
    ) -> None:
        """Where `deliver` (and a transport given to `start`) hands client messages."""
        self.client_drained = drained
        self.client_handler = handler

    def apply(self, command: bytes) -> RaftFuture[R]:
        future: RaftFuture[R] = RaftFuture()
        self.apply_batch([command], [future])
        return future

    async def apply_async(self, command: bytes) -> R:
        return await self.apply(command)

    def apply_batch(
        self, commands: Sequence[bytes], futures: Sequence[pykka.Future[Any]] | None = None
    ) -> list[pykka.Future[Any]]:
        """Propose `commands`: refused at once (NotLeaderError with the leader's id, the
        refusal set, NodeStoppedError, NodeFailedError), else appended and, with
        `auto_commit`, applied before this returns."""
        if futures is None:
            futures = RaftFuture.batch(len(commands))
        elif len(futures) != len(commands):
            raise ValueError("one future per command")
        if not commands:
            return []
        if not set(map(type, commands)) <= {bytes}:
            raise TypeError("a command is bytes")
        with self._serialised():
            refusal = self._refusal_of_proposals()
            if refusal is not None:
                for future in futures:
                    self._settle(future, error=refusal)
            else:
                for data, future in zip(commands, futures, strict=True):
                    self._last_index += 1
                    self.held.append((Command(self._last_index, self._term, data), future))
                if self.auto_commit:
                    self._apply_held(len(self.held))
        return list(futures)

    def read(
        self,
        query: bytes,
        consistency: str = LINEARIZABLE,
        reply: RaftFuture[Any] | None = None,
        *,
        on_follower: bool = True,
    ) -> RaftFuture[V]:
        """`on_read(query)` of the applied state, at once. A linearizable or lease read needs a
        leader: this one, or (with `on_follower`) a known one; else NotLeaderError."""
        if consistency not in CONSISTENCIES:
            raise ValueError(f"consistency must be one of {', '.join(CONSISTENCIES)}")
        future: RaftFuture[V] = reply if reply is not None else RaftFuture()
        with self._serialised():
            error = self._refusal_of_reads(consistency, on_follower)
            if error is not None:
                self._settle(future, error=error)
                return future
            try:
                with running_callback("on_read"):
                    value = self.state_machine.on_read(query)
            except Exception as exc:
                message = f"on_read raised {type(exc).__name__}: {exc}"
                self._settle(future, error=ReadError(message, exc))
            else:
                self._settle(future, value)
        return future

    async def read_async(
        self, query: bytes, consistency: str = LINEARIZABLE, *, on_follower: bool = True
    ) -> V:
        return await self.read(query, consistency, RaftFuture(), on_follower=on_follower)

    def snapshot(self, reply: pykka.Future[Any] | None = None) -> pykka.Future[Any]:
        """Save the applied state into `snapshots` now; the future completes with its
        SnapshotMeta (the newest one, or None, when nothing was applied since)."""
        future: pykka.Future[Any] = reply if reply is not None else RaftFuture()
        with self._serialised():
            error = self._refusal_of_service()
            if error is None and not self.state_machine.supports_snapshots():
                error = RaftError("snapshots are off: the state machine cannot snapshot")
            if error is not None:
                self._settle(future, error=error)
                return future
            latest = self.snapshots.latest()
            if self._applied_index == 0 or (latest and latest.last_index == self._applied_index):
                self._settle(future, latest)
                return future
            meta = SnapshotMeta(self._applied_index, self._applied_term, self._conf.encode())
            writer = self.snapshots.create_writer(meta)
            try:
                with running_callback("on_snapshot_save"):
                    finish = self.state_machine.on_snapshot_save(writer)
                if finish is not None:
                    finish()
                self._settle(future, self.snapshots.commit(writer))
            except Exception as exc:
                self.snapshots.abort(writer)
                self._settle(future, error=RaftError(f"snapshot failed: {exc!r}"))
        return future

    def transfer_leadership(
        self, to: str | None = None, reply: pykka.Future[Any] | None = None
    ) -> pykka.Future[Any]:
        """Hand leadership to voter `to` (None: the smallest other voter) at once: this node
        follows it in the next term; the future completes with its id."""
        future: pykka.Future[Any] = reply if reply is not None else RaftFuture()
        with self._serialised():
            error = self._refusal_of_leader_work()
            if error is None:
                try:
                    target = pick_target(self.options.peer_id, self._conf, to, {})
                except RaftError as refused:
                    error = refused
                else:
                    self._become_follower(target, self._term + 1)
                    self._settle(future, target)
            if error is not None:
                self._settle(future, error=error)
        return future

    def add_peer(self, peer: str, reply: pykka.Future[Any] | None = None) -> pykka.Future[Any]:
        return self._change(Op.ADD_PEER, [peer], reply)

    def remove_peer(self, peer: str, reply: pykka.Future[Any] | None = None) -> pykka.Future[Any]:
        return self._change(Op.REMOVE_PEER, [peer], reply)

    def change_peers(
        self, peers: Iterable[str], reply: pykka.Future[Any] | None = None
    ) -> pykka.Future[Any]:
        return self._change(Op.CHANGE_PEERS, peers, reply)

    def add_learners(
        self, peers: Iterable[str], reply: pykka.Future[Any] | None = None
    ) -> pykka.Future[Any]:
        return self._change(Op.ADD_LEARNERS, peers, reply)

    def remove_learners(
        self, peers: Iterable[str], reply: pykka.Future[Any] | None = None
    ) -> pykka.Future[Any]:
        return self._change(Op.REMOVE_LEARNERS, peers, reply)

    def promote_learner(
        self, peer: str, reply: pykka.Future[Any] | None = None
    ) -> pykka.Future[Any]:
        return self._change(Op.PROMOTE_LEARNER, [peer], reply)

    def status(self, timeout: float = 5.0) -> NodeStatus:
        with self._mutex:
            leading = self._role == "leader"
            return NodeStatus(
                id=self.options.peer_id,
                role=self._role,
                term=self._term,
                leader=self._leader,
                voted_for=self.options.peer_id if leading else None,
                commit_index=self._applied_index,
                applied_index=self._applied_index,
                last_log_index=self._last_index,
                pid=os.getpid(),
                conf=sorted(self._conf.peers),
                learners=sorted(self._conf.learners),
                error=self._error,
            )

    def status_async(self, reply: pykka.Future[Any]) -> None:
        complete(reply, self.status())

    def wait_for_leader(self, timeout: float = 10.0) -> str:
        """The leader's id; RaftTimeoutError if none is known within `timeout` (another
        thread may `become_leader` or `become_follower` meanwhile)."""
        return wait_until(
            lambda: self._leader,
            f"a leader known to {self.options.peer_id}",
            timeout,
            condition=self._changed,
        )

    @property
    def leadership(self) -> Leadership:
        return self._leadership

    @property
    def is_leader(self) -> bool:
        return self._leadership.role == "leader"

    @property
    def leader_id(self) -> str | None:
        return self._leadership.leader

    def stop(self, timeout: float = 10.0) -> None:
        """Held futures fail with NodeStoppedError (outcome unknown); the state machine gets
        its stop events and on_shutdown. Idempotent."""
        with self._serialised():
            if self._stopped:
                return
            self._fail_held(NodeStoppedError("node stopped", outcome_unknown=True))
            self._end_term_events()
            self._stopped = True
            self._set_role("shutdown", self._term, None)
            self._event("on_shutdown")
        if self._given_transport is not None:
            self._given_transport.stop()
        for storage in self._storages:
            if storage is not None:
                storage.close()

    # -- the machinery (every _method below runs under the lock) -------------------------------

    @contextlib.contextmanager
    def _serialised(self) -> Iterator[None]:
        """Hold the lock; once the outermost holder releases it, settle the futures."""
        settle: list[_Settle] = []
        with self._mutex:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:  # a nested holder (a callback proposing) leaves them
                    settle, self._outbox = self._outbox, []
        for action in settle:
            action()

    def _settle(self, future: pykka.Future[Any], value: Any = None, *, error: Any = None) -> None:
        if error is not None:
            self._outbox.append(lambda: fail(future, error))
        else:
            self._outbox.append(lambda: complete(future, value))

    def _refusal_of_service(self) -> RaftError | None:
        if self._stopped:
            return NodeStoppedError(f"node {self.options.peer_id} is stopped")
        if self._error is not None:
            return NodeFailedError(f"the peer entered ERROR: {self._error}")
        return None

    def _refusal_of_leader_work(self) -> RaftError | None:
        refusal = self._refusal_of_service()
        if refusal is None and self._role != "leader":
            return NotLeaderError(self._leader)
        return refusal

    def _refusal_of_proposals(self) -> RaftError | None:
        return self._refusal_of_leader_work() or self._refusal

    def _refusal_of_reads(self, consistency: str, on_follower: bool) -> RaftError | None:
        if not self.state_machine.supports_reads():
            return ReadError(f"{type(self.state_machine).__name__} does not implement on_read")
        refusal = self._refusal_of_service()
        if refusal is not None or consistency == SERIALIZABLE or self._role == "leader":
            return refusal
        if not on_follower or self._leader is None:
            return NotLeaderError(self._leader)
        return None

    def _check_running(self) -> None:
        if self._stopped or self._error is not None:
            raise RuntimeError(f"{self.options.peer_id} is {self._role}: it cannot change role")

    def _apply_held(self, count: int) -> None:
        """Apply the first `count` held commands, one on_apply per batch proposed meanwhile.
        A proposal from inside a callback joins `held`, and this loop applies it next."""
        self._commit_budget += count
        if self._draining:
            return
        self._draining = True
        try:
            while self._commit_budget > 0 and self.held and self._error is None:
                batch = self.held[: self._commit_budget]
                del self.held[: len(batch)]
                self._commit_budget -= len(batch)
                self._apply_batch(batch)
        finally:
            self._commit_budget = 0
            self._draining = False

    def _apply_batch(self, batch: list[tuple[Command, pykka.Future[Any]]]) -> None:
        commands = [command for command, _ in batch]
        try:
            with running_callback("on_apply"):
                results = list(self.state_machine.on_apply(commands))
            if len(results) != len(commands):
                raise RaftError(f"on_apply returned {len(results)} results for {len(commands)}")
        except Exception as exc:
            reason = f"{type(exc).__name__} in on_apply: {exc}"
            for _, future in batch:
                self._settle(future, error=NodeFailedError(reason, outcome_unknown=True))
            self._enter_error(reason, exc)
            return
        self.applied.extend(commands)
        self._applied_index, self._applied_term = commands[-1].index, commands[-1].term
        for (_, future), result in zip(batch, results, strict=True):
            self._settle(future, result)

    def _append_configuration(self, conf: Configuration) -> None:
        """A configuration entry, appended, committed and applied at once. Committing it
        commits every entry before it: the held commands are applied first."""
        self._apply_held(len(self.held))
        self._last_index += 1
        self._conf = conf
        self._applied_index, self._applied_term = self._last_index, self._term
        self._event("on_configuration_committed", conf, self._last_index)

    def _change(
        self, op: Op, peers: Iterable[str], reply: pykka.Future[Any] | None
    ) -> pykka.Future[Any]:
        """A membership change, committed at once; a leader it removes hands over."""
        future: pykka.Future[Any] = reply if reply is not None else RaftFuture()
        with self._serialised():
            try:
                request = ChangeRequest.of(op, [peers] if isinstance(peers, str) else peers)
                refusal = self._refusal_of_leader_work()
                if refusal is not None:
                    raise refusal
                new = request.target(self._conf)
            except (RaftError, ValueError) as error:
                self._settle(future, error=error)
                return future
            if new != self._conf:
                self._append_configuration(new)
                if self.options.peer_id not in new.peers:
                    self._become_follower(min(new.peers), self._term + 1)
            self._settle(future, new)
        return future

    def _become_leader(self, term: int) -> None:
        self._end_term_events()
        self._set_role("leader", term, self.options.peer_id)
        self._append_configuration(self._conf)  # every leader term begins so
        self._event("on_leader_start", term)

    def _become_follower(self, leader_id: str | None, term: int) -> None:
        self._end_term_events()
        self._set_role("follower", term, leader_id)
        if leader_id is not None:
            self._event("on_start_following", leader_id, term)

    def _end_term_events(self) -> None:
        """Close the pair the state machine saw opened: leader start, or start following."""
        if self._role == "leader":
            self._fail_held(LeadershipLostError(f"{self.options.peer_id} stopped leading"))
            self._event("on_leader_stop", self._term)
        elif self._role == "follower" and self._leader is not None:
            self._event("on_stop_following", self._leader, self._term)

    def _fail_held(self, error: RaftError) -> None:
        held, self.held = self.held, []
        for _, future in held:
            self._settle(future, error=error)

    def _enter_error(self, reason: str, error: BaseException) -> None:
        self._fail_held(NodeFailedError(f"the peer entered ERROR: {reason}", outcome_unknown=True))
        self._end_term_events()
        self._error = reason
        self._set_role("error", self._term, None)
        self._event("on_error", error)
        if self.on_error is not None:
            self.on_error(reason)

    def _set_role(self, role: str, term: int, leader: str | None) -> None:
        self._role, self._term, self._leader = role, term, leader
        self._leadership = Leadership(role, term, leader)
        self._changed.notify_all()

    def _event(self, name: str, *args: Any) -> None:
        """A notification to the state machine: one that raises is logged, nothing more."""
        try:
            with running_callback(name):
                getattr(self.state_machine, name)(*args)
        except Exception:
            log.exception("%s: the state machine's %s raised", self.options.peer_id, name)
