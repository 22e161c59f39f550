"""ClientServer: the service side of transport.raft_client.RaftClient, for any state machine.

It is a RaftNode's client handler: it turns ClientRequests (writes) into Raft commands with the
client's session, ClientQuerys (reads) into `RaftNode.read`, and answers StatusRequests and
AdminRequests (snapshot, leadership transfer, membership changes: what AdminClient sends).

    node = RaftNode.start(options, MyStateMachine(), log, meta, ZmqTransport(...))
    ClientServer(node, transport)  # serves RaftClient / AdminClient on the node's port

What the bytes of a command or query mean is the state machine's business; how a write becomes a
log entry is the `codec`'s (a CommandCodec). The default codec logs each write in the session
envelope of actors/sessions.py, which a SessionStateMachine decodes and de-duplicates, so that a
retried write is applied once. The KV service is one user: actors/service/kv_server.py gives it
a codec of its own (its log format, its operation names in the metrics).

Runs on the transport's I/O thread, so it never blocks: a request is validated, proposed, and
answered from the future's completion callback (on the thread that settles the future: the
FSMCaller's, the Node's, the LogManager's, or this one when the node has stopped). Writes are
batched: the writes of one burst of inbound messages (everything one wake-up of the transport
received) go to the Node as one `apply_batch` when the transport reports the burst drained
(`drained`), so 64 requests that arrive together cost one Node message, not 64. Reads never go
through the log.

Answers keep "definitely not applied" apart from "may have been applied" all the way to the
client (`_answer`): only a command that never reached the log gets a definite refusal. A state
machine refuses a command definitely by returning (not raising) an exception instance, e.g.
actors.sessions.RefusedCommand: the client gets a CommandError with its message.

Every answer is counted in the node's metrics, `client_requests{op, status}`: op is the codec's
label of the request (`invalid` for one it refused), status or admin; status is the
ClientStatus answered (ok, not_leader, error, unknown, overloaded).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import msgpack

from actors import trace
from actors.errors import (
    NodeFailedError,
    NodeStoppedError,
    NotLeaderError,
    OverloadedError,
    RaftError,
)
from actors.futures import CompletionFuture, fail_all
from actors.metrics import CounterCell
from actors.raft_node import RaftNode
from actors.read_only import CONSISTENCIES
from actors.sessions import MAX_CLIENT_ID_CHARS, STALE, encode_session_command
from transport.base import Transport
from transport.peers import parse_peer
from transport.results import encode_result
from transport.rpc import (
    ADMIN_ADD_LEARNER,
    ADMIN_ADD_PEER,
    ADMIN_PROMOTE,
    ADMIN_REMOVE_PEER,
    ADMIN_SNAPSHOT,
    ADMIN_TRANSFER_LEADER,
    MEMBERSHIP_OPS,
    AdminRequest,
    ClientQuery,
    ClientRequest,
    ClientResponse,
    ClientStatus,
    RpcMessage,
    StatusRequest,
    StatusResponse,
)

log = logging.getLogger(__name__)


class CommandCodec:
    """What ClientServer needs to know of a state machine's commands. This class is the
    default: opaque bytes, each write logged in the session envelope of actors.sessions (for a
    SessionStateMachine), results msgpack-encoded. Override to validate commands before they
    reach the log, to name them in the metrics, or to keep a log format of one's own."""

    def write_entry(self, client_id: str, seq: int, command: bytes) -> tuple[str, bytes]:
        """(metrics label, log entry) of write number `seq` (>= 1) of `client_id`. Raise
        ValueError to refuse it definitely: nothing is logged, the client gets the message."""
        if seq < 1 or not 0 < len(client_id) <= MAX_CLIENT_ID_CHARS:
            raise ValueError("a write needs a client id of 1 to 128 characters and a seq >= 1")
        return "command", encode_session_command(client_id, seq, command)

    def query_label(self, query: bytes) -> str:
        """The metrics label of a read; raise ValueError to refuse it definitely."""
        return "query"

    def encode_result(self, result: Any) -> bytes:
        """The bytes of a result for the client (RaftClient decodes them with msgpack)."""
        return encode_result(result)


def snapshot_json(peer_id: str, meta: Any) -> dict[str, Any]:
    """What `admin snapshot` prints of a SnapshotMeta."""
    return {
        "peer": peer_id,
        "index": meta.last_index,
        "term": meta.last_term,
        "bytes": meta.size,
    }


STATUS_NAMES = {
    ClientStatus.OK: "ok",
    ClientStatus.NOT_LEADER: "not_leader",
    ClientStatus.ERROR: "error",
    ClientStatus.UNKNOWN: "unknown",
    ClientStatus.OVERLOADED: "overloaded",
}
INVALID_OP = "invalid"  # the op label of a command that does not decode

AdminReply = Callable[..., None]
"""Answers one AdminRequest: reply(status, result map=None, message="", hint="")."""


class ClientServer:
    """See the module docstring. `on_client_message` runs on the transport's I/O thread; the
    completion callbacks on whichever actor thread settles a command's future."""

    def __init__(
        self, node: RaftNode, transport: Transport, codec: CommandCodec | None = None
    ) -> None:
        """Serve `node`'s clients on `transport` (the node's own: clients and peers share its
        port). `codec`: how writes become log entries (CommandCodec, the default, for a
        SessionStateMachine)."""
        self.node = node
        self.transport = transport
        self.codec = codec or CommandCodec()
        self.peer_id = transport.local_id
        self._lock = threading.Lock()  # guards _inflight (the I/O thread vs. completions)
        # Writes proposed here and not yet answered, by (client id, seq). A retry of one (the
        # client timed out and asked again) waits for the same entry instead of proposing a
        # copy: retries must not pile entries into the log faster than it drains. Its keys are
        # bounded by the node's max_pending_entries, since every proposal's future completes.
        self._inflight: dict[tuple[str, int], list[ClientRequest]] = {}
        self._requests = node.metrics.counter(
            "client_requests", "Client requests answered, by operation and status", ["op", "status"]
        )
        # Answers are settled on several threads; this lock makes their counting one writer
        # (actors/metrics.py). Cells are made on first use: (op, status) pairs are few.
        self._count_lock = threading.Lock()
        self._counts: dict[tuple[str, str], CounterCell] = {}
        # Writes of the current burst, proposed together by `drained`. The lock: the memory
        # transport of the tests delivers on its senders' threads.
        self._batch_lock = threading.Lock()
        self._commands: list[bytes] = []
        self._futures: list[CompletionFuture] = []
        node.set_client_handler(self.on_client_message, self.drained)

    def on_client_message(self, message: RpcMessage) -> None:
        if trace.ON:
            trace.mark("leader.receive")
        if isinstance(message, ClientRequest):
            self._on_write(message)
        elif isinstance(message, ClientQuery):
            self._on_query(message)
        elif isinstance(message, StatusRequest):
            self._on_status(message)
        elif isinstance(message, AdminRequest):
            self._on_admin(message)

    def _on_write(self, req: ClientRequest) -> None:
        try:
            op, entry = self.codec.write_entry(req.client_id, req.seq, req.command)
        except ValueError as exc:
            self._reply(req, INVALID_OP, ClientStatus.ERROR, message=f"bad command: {exc}")
            return
        key = (req.client_id, req.seq)
        with self._lock:
            waiting = self._inflight.get(key)
            if waiting is not None:
                waiting.append(req)  # answered with the entry already proposed
                return
            self._inflight[key] = [req]

        def done(result: Any, error: BaseException | None) -> None:
            with self._lock:
                waiters = self._inflight.pop(key, [req])
            status, fields = self._answer(result, error)
            for waiter in waiters:
                self._reply(waiter, op, status, **fields)

        with self._batch_lock:
            self._commands.append(entry)
            self._futures.append(CompletionFuture(done))

    def _on_query(self, req: ClientQuery) -> None:
        try:
            op = self.codec.query_label(req.query)
            if req.consistency not in CONSISTENCIES:
                raise ValueError(f"a read's consistency is one of {', '.join(CONSISTENCIES)}")
        except ValueError as exc:
            self._reply(req, INVALID_OP, ClientStatus.ERROR, message=f"bad query: {exc}")
            return

        def done(result: Any, error: BaseException | None) -> None:
            status, fields = self._answer(result, error)
            self._reply(req, op, status, **fields)

        try:  # never through the log (actors/read_only.py)
            self.node.read(
                req.query, req.consistency, CompletionFuture(done), on_follower=req.anywhere
            )
        except Exception as exc:  # never leave a reader unanswered (this is the I/O thread)
            done(None, exc)

    def drained(self) -> None:
        """The transport delivered a burst: propose its writes as one batch (in arrival
        order, which is the order their entries take in the log)."""
        with self._batch_lock:
            if not self._commands:
                return
            commands, self._commands = self._commands, []
            futures, self._futures = self._futures, []
        try:
            self.node.apply_batch(commands, futures)
        except Exception as exc:  # never leave a waiter behind
            fail_all(futures, exc)

    def _answer(self, result: Any, error: BaseException | None) -> tuple[int, dict[str, Any]]:
        """The client's answer for a command's outcome: definite ones (OK, ERROR, NOT_LEADER,
        OVERLOADED) only when nothing else can happen to it; UNKNOWN whenever it may still be
        applied (it reached the log: `outcome_unknown`)."""
        if error is None:
            if isinstance(result, BaseException):  # refused by the state machine, alike everywhere
                return ClientStatus.ERROR, {"message": str(result) or type(result).__name__}
            if result is STALE:
                return ClientStatus.ERROR, {"message": "stale request (seq too old)"}
            try:
                return ClientStatus.OK, {"result": self.codec.encode_result(result)}
            except Exception as exc:  # the state machine's result cannot travel: a bug of its
                log.error("%s: cannot encode a result: %r", self.peer_id, exc)
                return ClientStatus.ERROR, {"message": f"the result cannot be encoded: {exc}"}
        if isinstance(error, RaftError) and error.outcome_unknown:
            return ClientStatus.UNKNOWN, {"message": str(error)}
        if isinstance(error, NotLeaderError):
            return ClientStatus.NOT_LEADER, {"leader_hint": error.leader_hint or ""}
        if isinstance(error, OverloadedError):
            return ClientStatus.OVERLOADED, {"message": str(error)}
        if isinstance(error, NodeStoppedError | NodeFailedError):
            # Never appended: nothing happened here; another peer may serve it.
            return ClientStatus.NOT_LEADER, {"message": str(error)}
        if isinstance(error, RaftError):
            return ClientStatus.ERROR, {"message": f"{type(error).__name__}: {error}"}
        log.error("%s: command failed unexpectedly", self.peer_id, exc_info=error)
        return ClientStatus.UNKNOWN, {"message": f"{type(error).__name__}: {error}"}

    def _count(self, op: str, status: int) -> None:
        key = (op, STATUS_NAMES.get(status, str(status)))
        with self._count_lock:
            cell = self._counts.get(key)
            if cell is None:
                cell = self._counts[key] = self._requests.cell(*key)
            cell.inc()

    def _reply(
        self,
        req: ClientRequest | ClientQuery,
        op: str,
        status: int,
        *,
        result: bytes = b"",
        leader_hint: str = "",
        message: str = "",
    ) -> None:
        self._count(op, status)
        self.transport.send(
            req.client_id,
            ClientResponse(req.request_id, status, result, leader_hint, message, self.peer_id),
        )
        if trace.ON:
            trace.mark("leader.reply")

    def _on_admin(self, req: AdminRequest) -> None:
        """Operator requests (they never go through the client write path): a snapshot of
        this peer, or, to the leader, a leadership transfer or a membership change. Each is
        answered when its future settles (`_admin_future`)."""

        def reply(
            status: int, result: dict[str, Any] | None = None, message: str = "", hint: str = ""
        ) -> None:
            self._count("admin", status)
            body = msgpack.packb(result) if result is not None else b""
            response = ClientResponse(req.request_id, status, body, hint, message, self.peer_id)
            self.transport.send(req.client_id, response)

        if req.op == ADMIN_SNAPSHOT:
            self.node.snapshot(self._admin_future(reply, self._snapshot_result))
        elif req.op == ADMIN_TRANSFER_LEADER:
            future = self._admin_future(reply, lambda to: {"from": self.peer_id, "to": to})
            self.node.transfer_leadership(req.target or None, future)
        elif req.op in MEMBERSHIP_OPS:
            self._change_membership(req.op, req.target, reply)
        else:
            reply(ClientStatus.ERROR, message=f"unknown admin operation {req.op[:40]!r}")

    def _change_membership(self, op: str, target: str, reply: AdminReply) -> None:
        """add-peer, add-learner, promote or remove-peer `target` (a HOST:PORT peer id)."""
        try:
            parse_peer(target)
        except ValueError as error:
            reply(ClientStatus.ERROR, message=f"{op}: {str(error)[:200]}")
            return
        node = self.node
        start: dict[str, Callable[[str, CompletionFuture], Any]] = {
            ADMIN_ADD_PEER: node.add_peer,
            ADMIN_ADD_LEARNER: lambda peer, future: node.add_learners([peer], future),
            ADMIN_PROMOTE: node.promote_learner,
            ADMIN_REMOVE_PEER: node.remove_peer,
        }
        start[op](target, self._admin_future(reply, self._members_result))

    def _admin_future(
        self, reply: AdminReply, result: Callable[[Any], dict[str, Any] | str]
    ) -> CompletionFuture:
        """A future whose outcome answers an admin request: `result(value)` is the answer's
        map (a str: a definite refusal, its message). NotLeaderError -> NOT_LEADER (with the
        hint), an error whose outcome is unknown -> UNKNOWN, any other -> ERROR, named."""

        def done(value: Any, error: BaseException | None) -> None:
            if isinstance(error, NotLeaderError):
                reply(ClientStatus.NOT_LEADER, message=str(error), hint=error.leader_hint or "")
            elif isinstance(error, RaftError) and error.outcome_unknown:
                reply(ClientStatus.UNKNOWN, message=f"{type(error).__name__}: {error}")
            elif error is not None:
                reply(ClientStatus.ERROR, message=f"{type(error).__name__}: {error}")
            else:
                answer = result(value)
                if isinstance(answer, str):
                    reply(ClientStatus.ERROR, message=answer)
                else:
                    reply(ClientStatus.OK, answer)

        return CompletionFuture(done)

    def _snapshot_result(self, meta: Any) -> dict[str, Any] | str:
        if meta is None:
            return "nothing applied yet: no snapshot to take"
        return snapshot_json(self.peer_id, meta)

    def _members_result(self, conf: Any) -> dict[str, Any]:
        """What a membership change answers: this leader and the configuration it made."""
        members = conf.as_dict()
        return {
            "leader": self.peer_id,
            "voters": list(members["voters"]),
            "learners": list(members.get("learners", [])),
        }

    def _on_status(self, req: StatusRequest) -> None:
        def done(status: Any, error: BaseException | None) -> None:
            self._count("status", ClientStatus.OK if error is None else ClientStatus.ERROR)
            body = status.to_json() if error is None else {"id": self.peer_id, "error": str(error)}
            self.transport.send(req.client_id, StatusResponse(req.request_id, self.peer_id, body))

        self.node.status_async(CompletionFuture(done))
