"""ClientServer alone, over a stub node and a recording transport: what each outcome of a command
tells the client, retried writes that join the proposal already in flight, admin requests;
mostly through KVServer (ClientServer with the KV codec), then with the default codec."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pykka
import pytest

from actors.client_server import STATUS_NAMES, ClientServer
from actors.configuration import Configuration
from actors.errors import (
    CatchUpError,
    ChangeInProgressError,
    CommandTooLargeError,
    LeadershipLostError,
    MembershipChangeError,
    NodeFailedError,
    NodeStoppedError,
    NotLeaderError,
    OverloadedError,
    RaftError,
    UnknownPeerError,
)
from actors.futures import complete, fail
from actors.metrics import Counter, Metrics
from actors.service.kv_server import KVServer
from actors.sessions import STALE, RefusedCommand, decode_session_command
from actors.testing import RecordingTransport
from storage.snapshot_storage import SnapshotMeta
from transport.kv_protocol import (
    ADMIN_ADD_LEARNER,
    ADMIN_ADD_PEER,
    ADMIN_PROMOTE,
    ADMIN_REMOVE_PEER,
    ADMIN_SNAPSHOT,
    ADMIN_TRANSFER_LEADER,
    GET,
    LINEARIZABLE,
    PUT,
    SERIALIZABLE,
    KVCommand,
    decode_logged,
    decode_result,
    encode_command,
    encode_result,
)
from transport.results import decode_admin_result
from transport.rpc import (
    AdminRequest,
    ClientQuery,
    ClientRequest,
    ClientResponse,
    ClientStatus,
    StatusRequest,
)

ME = "a:1"


class StubNode:
    """Records proposals; the test settles their futures."""

    def __init__(self) -> None:
        self.proposals: list[tuple[bytes, pykka.Future[Any]]] = []
        self.snapshots: list[pykka.Future[Any]] = []
        self.statuses: list[pykka.Future[Any]] = []
        self.reads: list[tuple[bytes, str, pykka.Future[Any]]] = []
        self.on_follower: list[bool] = []
        self.handler: Any = None
        self.drained: Any = None
        self.batches: list[int] = []  # the size of each apply_batch call
        self.refuse: Exception | None = None  # apply_batch raises it
        self.admin_calls: list[tuple[str, Any, pykka.Future[Any]]] = []
        self.metrics = Metrics()

    def set_client_handler(self, handler: Any, drained: Any = None) -> None:
        self.handler = handler
        self.drained = drained

    def apply_batch(
        self, commands: Sequence[bytes], futures: Sequence[pykka.Future[Any]]
    ) -> list[pykka.Future[Any]]:
        if self.refuse is not None:
            raise self.refuse
        self.proposals.extend(zip(commands, futures, strict=True))
        self.batches.append(len(commands))
        return list(futures)

    def read(
        self, query: bytes, consistency: str, reply: pykka.Future[Any], *, on_follower: bool
    ) -> Any:
        self.reads.append((query, consistency, reply))
        self.on_follower.append(on_follower)
        return reply

    def snapshot(self, reply: pykka.Future[Any]) -> pykka.Future[Any]:
        self.snapshots.append(reply)
        return reply

    def status_async(self, reply: pykka.Future[Any]) -> None:
        self.statuses.append(reply)

    # Leader-side admin operations: each recorded as (method, argument, future).
    def transfer_leadership(self, to: str | None, reply: pykka.Future[Any]) -> pykka.Future[Any]:
        return self._record("transfer_leadership", to, reply)

    def add_peer(self, peer: str, reply: pykka.Future[Any]) -> pykka.Future[Any]:
        return self._record("add_peer", peer, reply)

    def add_learners(self, peers: list[str], reply: pykka.Future[Any]) -> pykka.Future[Any]:
        return self._record("add_learners", list(peers), reply)

    def promote_learner(self, peer: str, reply: pykka.Future[Any]) -> pykka.Future[Any]:
        return self._record("promote_learner", peer, reply)

    def remove_peer(self, peer: str, reply: pykka.Future[Any]) -> pykka.Future[Any]:
        return self._record("remove_peer", peer, reply)

    def _record(self, method: str, argument: Any, reply: pykka.Future[Any]) -> pykka.Future[Any]:
        self.admin_calls.append((method, argument, reply))
        return reply


def answered(node: StubNode) -> dict[tuple[str, ...], int]:
    """The client_requests counts: {(op, status): answers}, leaving out the zeros."""
    [family] = node.metrics.families()
    assert isinstance(family, Counter) and family.name == "client_requests"
    assert family.labels == ("op", "status")
    return {s.labels: s.value for s in family.samples() if s.value}


@pytest.fixture
def server() -> tuple[KVServer, StubNode, RecordingTransport]:
    node, transport = StubNode(), RecordingTransport(ME)
    return KVServer(node, transport), node, transport  # type: ignore[arg-type]


def request(request_id: int, seq: int = 1, op: str = PUT, arg1: str | None = None) -> ClientRequest:
    command = KVCommand(op, "k", "v" if op == PUT else arg1)
    return ClientRequest("client-1", request_id, seq, encode_command(command))


def query(request_id: int, consistency: str = LINEARIZABLE, anywhere: bool = False) -> ClientQuery:
    get = encode_command(KVCommand(GET, "k"))
    return ClientQuery("client-1", request_id, get, consistency, anywhere)


def deliver(kv: KVServer, *messages: Any) -> None:
    """The transport's way: a burst of messages, then `drained`."""
    for message in messages:
        kv.on_client_message(message)
    kv.drained()


def test_the_writes_of_one_burst_are_proposed_together_in_arrival_order(
    server: tuple[KVServer, StubNode, RecordingTransport],
) -> None:
    kv, node, transport = server
    burst = [request(i, seq=i) for i in (1, 2, 3)] + [query(4)]
    for message in burst:
        kv.on_client_message(message)
    assert node.proposals == [] and len(node.reads) == 1  # reads at once, writes at the end
    kv.drained()
    assert node.batches == [3]
    assert [decode_logged(command).seq for command, _ in node.proposals] == [1, 2, 3]
    for _, future in node.proposals:
        complete(future, None)
    assert [m.request_id for _, m in transport.take()] == [1, 2, 3]
    kv.drained()  # an empty burst proposes nothing
    assert node.batches == [3]


def test_a_batch_the_node_refuses_answers_every_write_in_it(
    server: tuple[KVServer, StubNode, RecordingTransport],
) -> None:
    kv, node, transport = server
    node.refuse = NodeStoppedError("stopped")
    deliver(kv, request(1, seq=1), request(2, seq=2))
    answers = [m for _, m in transport.take()]
    assert [(a.request_id, a.status) for a in answers] == [
        (1, ClientStatus.NOT_LEADER),
        (2, ClientStatus.NOT_LEADER),
    ]
    node.refuse = None
    deliver(kv, request(3, seq=1))  # nothing was left in flight: the retry is proposed
    assert node.batches == [1]


def test_a_retry_of_a_write_in_flight_joins_it_instead_of_proposing_a_copy(
    server: tuple[KVServer, StubNode, RecordingTransport],
) -> None:
    """Retries after a client timeout must not pile copies of one write into the log."""
    kv, node, transport = server
    deliver(kv, request(1), request(2))  # a retry in the same burst
    deliver(kv, request(3))  # and one in a later burst: same client, same seq
    assert len(node.proposals) == 1
    complete(node.proposals[0][1], None)
    answers = [message for _, message in transport.take()]
    assert [(a.request_id, a.status) for a in answers] == [(i, ClientStatus.OK) for i in (1, 2, 3)]
    deliver(kv, request(4))  # answered: a later retry is proposed (the session answers)
    assert len(node.proposals) == 2


def test_distinct_writes_are_each_proposed_and_reads_never_are(
    server: tuple[KVServer, StubNode, RecordingTransport],
) -> None:
    kv, node, transport = server
    deliver(kv, query(1))
    deliver(kv, query(2, SERIALIZABLE))
    deliver(kv, request(3, seq=1))
    deliver(kv, request(4, seq=2))
    deliver(kv, query(5, anywhere=True))  # read_from="any"
    assert len(node.proposals) == 2
    consistencies = [consistency for _, consistency, _ in node.reads]
    assert consistencies == [LINEARIZABLE, SERIALIZABLE, LINEARIZABLE]
    assert node.on_follower == [False, False, True]  # only "any" lets a follower serve it
    complete(node.reads[1][2], "v")
    [(_, reply)] = transport.sent
    assert (reply.request_id, reply.status, decode_result(reply.result)) == (
        2,
        ClientStatus.OK,
        "v",
    )


@pytest.mark.parametrize(
    ("error", "status"),
    [
        # Never reached the log: a definite answer.
        (NotLeaderError("b:2"), ClientStatus.NOT_LEADER),
        (OverloadedError("busy"), ClientStatus.OVERLOADED),
        (NodeStoppedError("stopping"), ClientStatus.NOT_LEADER),
        (NodeFailedError("broken"), ClientStatus.NOT_LEADER),
        (CommandTooLargeError("big"), ClientStatus.ERROR),
        # In the log: it may still be applied, so the client must not be told it was not.
        (LeadershipLostError("lost"), ClientStatus.UNKNOWN),
        (NodeStoppedError("stopped", outcome_unknown=True), ClientStatus.UNKNOWN),
        (NodeFailedError("failed", outcome_unknown=True), ClientStatus.UNKNOWN),
        (RuntimeError("unexpected"), ClientStatus.UNKNOWN),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_definite_and_unknown_outcomes_stay_apart_through_to_the_client(
    server: tuple[KVServer, StubNode, RecordingTransport], error: Exception, status: int
) -> None:
    kv, node, transport = server
    deliver(kv, request(1))
    fail(node.proposals[0][1], error)
    [(to, answer)] = transport.take()
    assert to == "client-1" and isinstance(answer, ClientResponse)
    assert answer.status == status
    assert answered(node) == {("put", STATUS_NAMES[status]): 1}


def test_a_successful_write_returns_the_encoded_result(
    server: tuple[KVServer, StubNode, RecordingTransport],
) -> None:
    kv, node, transport = server
    deliver(kv, request(7))
    complete(node.proposals[0][1], "v")
    [(_, answer)] = transport.take()
    assert (answer.request_id, answer.status, answer.result) == (7, 0, encode_result("v"))


# -- admin requests ----------------------------------------------------------------------------


def test_admin_snapshot_answers_with_the_snapshot_taken(
    server: tuple[KVServer, StubNode, RecordingTransport],
) -> None:
    kv, node, transport = server
    deliver(kv, AdminRequest("admin-1", 7, ADMIN_SNAPSHOT))
    assert transport.take() == []  # answered once the snapshot is durable, not before
    (reply,) = node.snapshots
    complete(reply, SnapshotMeta(42, 3, b"conf", size=1000, checksum=5))
    ((to, response),) = transport.take()
    assert to == "admin-1" and response.status == ClientStatus.OK and response.request_id == 7
    assert decode_admin_result(response.result) == {
        "peer": ME,
        "index": 42,
        "term": 3,
        "bytes": 1000,
    }


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        pytest.param(
            RaftError("cannot snapshot: snapshots are off"), "snapshots are off", id="off"
        ),
        pytest.param(None, "nothing applied yet", id="nothing to snapshot"),
    ],
)
def test_admin_snapshot_refusals_are_definite_errors(
    server: tuple[KVServer, StubNode, RecordingTransport],
    outcome: BaseException | None,
    message: str,
) -> None:
    kv, node, transport = server
    deliver(kv, AdminRequest("admin-1", 8, ADMIN_SNAPSHOT))
    if outcome is None:
        complete(node.snapshots[0], None)
    else:
        fail(node.snapshots[0], outcome)
    ((_, response),) = transport.take()
    assert response.status == ClientStatus.ERROR and message in response.message


def test_an_unknown_admin_operation_is_refused_and_does_nothing(
    server: tuple[KVServer, StubNode, RecordingTransport],
) -> None:
    kv, node, transport = server
    deliver(kv, AdminRequest("admin-1", 9, "format-the-disk"))
    ((_, response),) = transport.take()
    assert response.status == ClientStatus.ERROR and "unknown admin operation" in response.message
    assert node.snapshots == [] and node.proposals == []


# -- leadership transfer and membership changes -----------------------------------------------


def only_admin_answer(transport: RecordingTransport) -> ClientResponse:
    ((to, response),) = transport.take()
    assert to == "admin-1" and isinstance(response, ClientResponse)
    return response


@pytest.mark.parametrize(
    ("op", "method", "argument"),
    [
        (ADMIN_ADD_PEER, "add_peer", "d:4"),
        (ADMIN_ADD_LEARNER, "add_learners", ["d:4"]),
        (ADMIN_PROMOTE, "promote_learner", "d:4"),
        (ADMIN_REMOVE_PEER, "remove_peer", "d:4"),
    ],
)
def test_a_membership_change_answers_with_the_configuration_once_committed(
    server: tuple[KVServer, StubNode, RecordingTransport], op: str, method: str, argument: Any
) -> None:
    kv, node, transport = server
    deliver(kv, AdminRequest("admin-1", 11, op, "d:4"))
    [(called, given, future)] = node.admin_calls
    assert (called, given) == (method, argument)
    assert transport.take() == []  # answered once the change is committed, not before
    complete(future, Configuration.of([ME, "b:2", "d:4"], learners=["e:5"]))
    response = only_admin_answer(transport)
    assert (response.request_id, response.status) == (11, ClientStatus.OK)
    assert decode_admin_result(response.result) == {
        "leader": ME,
        "voters": [ME, "b:2", "d:4"],
        "learners": ["e:5"],
    }
    assert answered(node) == {("admin", "ok"): 1}


@pytest.mark.parametrize("target", ["", "d", "d:0", "d:4:5", "d: 4", "x" * 10_000])
def test_a_membership_change_of_a_target_that_is_not_host_port_is_refused_at_once(
    server: tuple[KVServer, StubNode, RecordingTransport], target: str
) -> None:
    kv, node, transport = server
    deliver(kv, AdminRequest("admin-1", 12, ADMIN_ADD_PEER, target))
    response = only_admin_answer(transport)
    assert response.status == ClientStatus.ERROR
    assert response.message.startswith("add-peer: bad peer address")
    assert len(response.message) < 300  # a huge target is not echoed back whole
    assert node.admin_calls == []


@pytest.mark.parametrize(
    ("op", "target"), [(ADMIN_ADD_PEER, "d:4"), (ADMIN_TRANSFER_LEADER, "b:2")]
)
@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (NotLeaderError("c:3"), ClientStatus.NOT_LEADER, "not the leader; leader is c:3"),
        (
            ChangeInProgressError("busy: a change is under way"),
            ClientStatus.ERROR,
            "ChangeInProgressError: busy: a change is under way",
        ),
        (
            UnknownPeerError("d:4 not a member"),
            ClientStatus.ERROR,
            "UnknownPeerError: d:4 not a member",
        ),
        (
            CatchUpError("d:4 did not catch up"),
            ClientStatus.ERROR,
            "CatchUpError: d:4 did not catch up",
        ),
        (
            MembershipChangeError("no voter left"),
            ClientStatus.ERROR,
            "MembershipChangeError: no voter left",
        ),
        # The leader stepped down with the change in its log: it may still take effect.
        (
            LeadershipLostError("stepped down"),
            ClientStatus.UNKNOWN,
            "LeadershipLostError: stepped down",
        ),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_leader_admin_refusals_are_named_and_not_leader_carries_the_hint(
    server: tuple[KVServer, StubNode, RecordingTransport],
    op: str,
    target: str,
    error: Exception,
    status: int,
    message: str,
) -> None:
    """The same answers for a transfer as for a membership change (one code path)."""
    kv, node, transport = server
    deliver(kv, AdminRequest("admin-1", 13, op, target))
    fail(node.admin_calls[0][2], error)
    response = only_admin_answer(transport)
    assert (response.status, response.message) == (status, message)
    assert response.leader_hint == ("c:3" if status == ClientStatus.NOT_LEADER else "")
    assert response.result == b""


def test_a_transfer_answers_who_handed_over_to_whom(
    server: tuple[KVServer, StubNode, RecordingTransport],
) -> None:
    kv, node, transport = server
    deliver(kv, AdminRequest("admin-1", 14, ADMIN_TRANSFER_LEADER, ""))
    [(called, to, future)] = node.admin_calls
    assert (called, to) == ("transfer_leadership", None)  # "": the most up-to-date voter
    complete(future, "b:2")
    response = only_admin_answer(transport)
    assert response.status == ClientStatus.OK
    assert decode_admin_result(response.result) == {"from": ME, "to": "b:2"}


# -- metrics -----------------------------------------------------------------------------------


def test_every_answer_is_counted_by_operation_and_status(
    server: tuple[KVServer, StubNode, RecordingTransport],
) -> None:
    kv, node, _ = server
    for request_id in (1, 2):  # a write and its retry, joined: two answers
        deliver(kv, request(request_id))
    deliver(kv, query(3))
    deliver(kv, ClientRequest("client-1", 4, 5, b"\xc1"))  # does not decode
    deliver(kv, StatusRequest("client-1", 5))
    deliver(kv, AdminRequest("admin-1", 6, "format-the-disk"))
    complete(node.proposals[0][1], None)
    fail(node.reads[0][2], NotLeaderError("b:2"))
    complete(node.statuses[0], SimpleNamespace(to_json=lambda: {"id": ME}))
    assert answered(node) == {
        ("put", "ok"): 2,
        ("get", "not_leader"): 1,
        ("invalid", "error"): 1,
        ("status", "ok"): 1,
        ("admin", "error"): 1,
    }


# -- the default codec: opaque commands for a SessionStateMachine -------------------------------


@pytest.fixture
def generic() -> tuple[ClientServer, StubNode, RecordingTransport]:
    node, transport = StubNode(), RecordingTransport(ME)
    return ClientServer(node, transport), node, transport  # type: ignore[arg-type]


def test_a_write_is_logged_in_the_session_envelope_and_its_result_travels_as_msgpack(
    generic: tuple[ClientServer, StubNode, RecordingTransport],
) -> None:
    server, node, transport = generic
    deliver(server, ClientRequest("client-1", 1, 7, b"\x00opaque"))
    [(entry, future)] = node.proposals
    assert decode_session_command(entry) == ("client-1", 7, b"\x00opaque")
    complete(future, {"total": 5, "raw": b"\x01"})
    [(to, answer)] = transport.take()
    assert to == "client-1" and answer.status == ClientStatus.OK
    assert decode_result(answer.result) == {"total": 5, "raw": b"\x01"}
    assert answered(node) == {("command", "ok"): 1}


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (RefusedCommand("not a number"), "not a number"),
        (STALE, "stale request (seq too old)"),
        (object(), "the result cannot be encoded"),
    ],
    ids=["refused", "stale", "unencodable"],
)
def test_results_that_mean_nothing_was_applied_are_definite_errors(
    generic: tuple[ClientServer, StubNode, RecordingTransport], result: Any, message: str
) -> None:
    server, node, transport = generic
    deliver(server, ClientRequest("client-1", 1, 1, b"x"))
    complete(node.proposals[0][1], result)
    [(_, answer)] = transport.take()
    assert answer.status == ClientStatus.ERROR and answer.message.startswith(message)


def test_a_write_without_a_session_is_refused_before_the_log(
    generic: tuple[ClientServer, StubNode, RecordingTransport],
) -> None:
    server, node, transport = generic
    deliver(server, ClientRequest("client-1", 1, 0, b"x"), ClientRequest("", 2, 1, b"x"))
    assert node.proposals == []
    assert [a.status for _, a in transport.take()] == [ClientStatus.ERROR] * 2
    assert answered(node) == {("invalid", "error"): 2}


def test_a_query_is_read_as_asked_and_a_bad_consistency_is_refused(
    generic: tuple[ClientServer, StubNode, RecordingTransport],
) -> None:
    server, node, transport = generic
    deliver(server, ClientQuery("client-1", 1, b"q", "lease", True))
    deliver(server, ClientQuery("client-1", 2, b"q", "eventually", False))
    assert [(q, c) for q, c, _ in node.reads] == [(b"q", "lease")]
    assert node.on_follower == [True] and node.proposals == []
    [(_, refused)] = transport.take()
    assert refused.request_id == 2 and refused.status == ClientStatus.ERROR
    complete(node.reads[0][2], 3)
    [(_, answer)] = transport.take()
    assert (answer.request_id, decode_result(answer.result)) == (1, 3)
    assert answered(node) == {("query", "ok"): 1, ("invalid", "error"): 1}
