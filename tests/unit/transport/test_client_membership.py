"""KVClient and AdminClient follow the cluster's membership.

First KnownPeers alone (pure): what a redirect and a status teach it. Then the clients against
fake peers: in-process ROUTER sockets on ports the OS chose, each answering from a function the
test sets, on a thread of its own; every one is closed in teardown."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

import transport.raft_client as client_module
from transport.client import AdminClient, ClientTimeout, CommandError, KnownPeers, KVClient
from transport.codec import decode, encode
from transport.kv_protocol import ADMIN_ADD_PEER, encode_result
from transport.rpc import (
    AdminRequest,
    ClientRequest,
    ClientResponse,
    ClientStatus,
    RpcMessage,
    StatusRequest,
    StatusResponse,
)
from transport.security import generate_keys

A, B, C, D, E, F = (f"10.0.0.{n}:7000" for n in range(1, 7))


def status(
    peer: str,
    role: str,
    term: int,
    conf: list[str],
    learners: list[str] | None = None,
    old_conf: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "id": peer,
        "role": role,
        "term": term,
        "leader": peer if role == "leader" else None,
        "conf": conf,
        "learners": learners or [],
        "old_conf": old_conf or [],
    }


# -- KnownPeers ----------------------------------------------------------------------------------


def test_a_redirect_adds_the_peer_it_names_once_and_only_a_host_port() -> None:
    known = KnownPeers([A, B])
    assert known.learn(C) and known.learn(C)
    assert known.peers == [A, B, C]
    assert not known.learn("not-a-peer") and not known.learn("")
    assert known.peers == [A, B, C]


def test_a_peer_that_cannot_be_reached_is_not_added() -> None:
    known = KnownPeers([A], reachable=lambda peer: peer != D)
    assert not known.learn(D)
    known.note_status(status(B, "follower", 1, [A, D, E]))
    assert known.peers == [A, E]


def test_a_leaders_status_adds_new_members_and_drops_the_others() -> None:
    known = KnownPeers([A, B, C])
    dropped = known.note_status(status(A, "leader", 3, [A, C, D], learners=[E]))
    assert dropped == [B]
    assert known.peers == [A, C, D, E]


def test_the_whole_membership_may_change_but_never_to_nobody() -> None:
    known = KnownPeers([A, B, C])
    assert known.note_status(status(D, "leader", 5, [D, E, F])) == [A, B, C]
    assert known.peers == [D, E, F]
    # A leader listing nobody reachable changes nothing.
    unreachable = KnownPeers([A], reachable=lambda peer: peer == A)
    assert unreachable.note_status(status(D, "leader", 5, [D, E])) == []
    assert unreachable.peers == [A]
    assert KnownPeers([A]).note_status(status(A, "leader", 5, [])) == []


def test_a_leader_removing_itself_is_kept_while_it_still_leads() -> None:
    known = KnownPeers([A, B, C])
    assert known.note_status(status(A, "leader", 2, [B, C])) == []
    assert known.peers == [A, B, C]


def test_joint_members_count_as_members() -> None:
    known = KnownPeers([A, B, C])
    assert known.note_status(status(A, "leader", 2, [A, D, E], old_conf=[A, B, C])) == []
    assert known.peers == [A, B, C, D, E]


def test_a_stale_leader_is_ignored() -> None:
    known = KnownPeers([A, B, C])
    known.note_status(status(A, "leader", 4, [A, B, C]))
    assert known.note_status(status(D, "leader", 3, [D])) == []
    assert known.peers == [A, B, C]


def test_a_follower_adds_members_but_drops_nobody() -> None:
    known = KnownPeers([A, B])
    assert known.note_status(status(B, "follower", 1, [C])) == []
    assert known.peers == [A, B, C]


def test_a_removed_peer_comes_back_only_by_a_newer_term_or_a_redirect() -> None:
    """A removed follower may go on reporting the old configuration: its status of the term
    that removed a peer does not bring it back."""
    known = KnownPeers([A, B, C])
    known.note_status(status(A, "leader", 2, [A, B]))
    assert known.peers == [A, B]
    known.note_status(status(C, "follower", 2, [A, B, C]))
    assert known.peers == [A, B]
    known.note_status(status(B, "candidate", 3, [A, B, C]))
    assert known.peers == [A, B, C]
    known.note_status(status(A, "leader", 3, [A, B]))
    assert known.learn(C) and known.peers == [A, B, C]


def test_statuses_without_a_term_or_with_garbage_members_teach_nothing() -> None:
    known = KnownPeers([A])
    known.note_status({"id": B, "role": "unreachable"})
    known.note_status({"id": B, "role": "follower", "term": "2", "conf": [C]})
    known.note_status({"id": B, "role": "follower", "term": 2, "conf": [1, None, "x", [C]]})
    known.note_status({"id": B, "role": "leader", "term": 2, "conf": "10.0.0.3:7000"})
    assert known.peers == [A]


def test_the_next_peer_wraps_around_and_survives_a_drop() -> None:
    known = KnownPeers([A, B])
    assert (known.next_after(A), known.next_after(B)) == (B, A)
    assert known.next_after(C) == A  # not known (any more): start over


def test_no_peer_or_a_malformed_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one peer"):
        KnownPeers([])
    with pytest.raises(ValueError, match="bad peer address"):
        KnownPeers([A, "nope"])


# -- the clients against fake peers --------------------------------------------------------------

Answer = Callable[[RpcMessage], RpcMessage | None]


class FakePeer:
    """A ROUTER answering each message with `answer(message)` (None: no answer)."""

    def __init__(self, context: zmq.Context[Any]) -> None:
        self.router = context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind("tcp://127.0.0.1:0")
        endpoint = self.router.getsockopt(zmq.LAST_ENDPOINT)
        assert isinstance(endpoint, bytes)
        self.id = endpoint.decode().removeprefix("tcp://")
        self.received: list[RpcMessage] = []
        self.answer: Answer = lambda message: None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"fake-{self.id}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            if not self.router.poll(20):
                continue
            identity, frame = self.router.recv_multipart()
            message = decode(frame)
            self.received.append(message)
            reply = self.answer(message)
            if reply is not None:
                self.router.send_multipart([identity, encode(reply)])

    def close(self) -> None:
        if not self._stopping.is_set():
            self._stopping.set()
            self._thread.join(10)
            self.router.close(linger=0)

    def got(self, kind: type) -> list[Any]:
        return [m for m in list(self.received) if isinstance(m, kind)]

    # Answers.

    def serving(
        self, role: str, term: int, conf: list[str], hint: str = "", **members: list[str]
    ) -> Answer:
        """A peer of that role: a leader does everything asked (OK), others redirect."""

        def answer(message: RpcMessage) -> RpcMessage | None:
            if isinstance(message, StatusRequest):
                body = status(self.id, role, term, conf, **members)
                return StatusResponse(message.request_id, self.id, body)
            if role != "leader":
                assert isinstance(message, ClientRequest | AdminRequest)
                return ClientResponse(
                    message.request_id, ClientStatus.NOT_LEADER, leader_hint=hint, peer_id=self.id
                )
            if isinstance(message, AdminRequest):
                result = {"leader": self.id, "voters": [*conf, message.target], "learners": []}
                body = msgpack.packb(result)
                return ClientResponse(message.request_id, ClientStatus.OK, body, peer_id=self.id)
            assert isinstance(message, ClientRequest)
            return ClientResponse(
                message.request_id, ClientStatus.OK, encode_result(None), peer_id=self.id
            )

        return answer


@pytest.fixture
def fakes() -> Iterator[Callable[[int], list[FakePeer]]]:
    context: zmq.Context[Any] = zmq.Context()
    made: list[FakePeer] = []

    def make(count: int) -> list[FakePeer]:
        peers = [FakePeer(context) for _ in range(count)]
        made.extend(peers)
        return peers

    yield make
    for peer in made:
        peer.close()
    context.term()


@pytest.fixture
def clients() -> Iterator[list[KVClient]]:
    made: list[KVClient] = []
    yield made
    for client in made:
        client.close()


def kv_client(clients: list[KVClient], peers: list[FakePeer], cls: type = KVClient) -> Any:
    client = cls(
        [p.id for p in peers], timeout=10.0, attempt_timeout=0.5, context=zmq.Context.instance()
    )
    clients.append(client)
    return client


def test_a_redirect_to_a_peer_not_known_is_followed_and_remembered(
    fakes: Callable[[int], list[FakePeer]], clients: list[KVClient]
) -> None:
    a, d = fakes(2)
    a.answer = a.serving("follower", 1, [a.id, d.id], hint=d.id)
    d.answer = d.serving("leader", 1, [a.id, d.id])
    client = kv_client(clients, [a])
    client.put("k", "v")
    assert client.peers == [a.id, d.id]
    [write] = d.got(ClientRequest)
    assert write.seq == 1
    client.put("k", "w")  # straight to the leader it learnt
    assert len(a.got(ClientRequest)) == 1 and len(d.got(ClientRequest)) == 2


def test_when_no_peer_known_helps_it_asks_them_for_the_members(
    fakes: Callable[[int], list[FakePeer]], clients: list[KVClient]
) -> None:
    """A follower that gives no hint still reports the members in its status."""
    a, d = fakes(2)
    a.answer = a.serving("follower", 2, [a.id, d.id])
    d.answer = d.serving("leader", 2, [a.id, d.id])
    client = kv_client(clients, [a])
    client.put("k", "v")
    assert a.got(StatusRequest), "it asked for the members"
    assert client.peers == [a.id, d.id]
    assert len(d.got(ClientRequest)) == 1


def test_a_long_lived_client_survives_a_complete_change_of_membership(
    fakes: Callable[[int], list[FakePeer]], clients: list[KVClient]
) -> None:
    a, b, c, d, e, f = fakes(6)
    old, new = [a.id, b.id, c.id], [d.id, e.id, f.id]
    a.answer = a.serving("leader", 1, old)
    b.answer = b.serving("follower", 1, old, hint=a.id)
    c.answer = c.serving("follower", 1, old, hint=a.id)
    client = kv_client(clients, [a, b, c])
    client.put("k", "v1")
    assert client.status()[0]["role"] == "leader" and client.peers == old
    # D, E and F replace them: B and C are gone; A, removed, knows no leader any more but
    # still reports the configuration that removed it.
    b.close()
    c.close()
    a.answer = a.serving("follower", 2, new, old_conf=old)
    d.answer = d.serving("leader", 2, new)
    e.answer = e.serving("follower", 2, new, hint=d.id)
    f.answer = f.serving("follower", 2, new, hint=d.id)
    client.put("k", "v2")
    assert len(d.got(ClientRequest)) == 1
    assert set(new) <= set(client.peers)
    # A status round: the leader's answer drops the peers that are no longer members.
    statuses = client.status()
    assert [s["id"] for s in statuses] == [*old, *new]
    roles = ["follower", "unreachable", "unreachable", "leader", "follower", "follower"]
    assert [s["role"] for s in statuses] == roles  # A's answer was not lost to the drop
    assert client.peers == new
    a.close()
    assert client.delete("k") is False  # the fake answers None: nothing existed
    assert len(d.got(ClientRequest)) == 2
    assert set(client._sockets) == set(new)  # the sockets of the dropped peers are closed
    assert client.status()[0]["id"] == d.id


def test_members_reports_the_learners(
    fakes: Callable[[int], list[FakePeer]], clients: list[KVClient]
) -> None:
    a, b = fakes(2)
    a.answer = a.serving("follower", 3, [a.id, b.id], learners=[E])
    b.answer = b.serving("leader", 3, [a.id, b.id], learners=[E])
    admin = kv_client(clients, [a, b], AdminClient)
    assert admin.members() == {"leader": b.id, "voters": [a.id, b.id], "learners": [E]}


def test_a_membership_change_follows_the_leader_to_a_peer_not_known(
    fakes: Callable[[int], list[FakePeer]], clients: list[KVClient]
) -> None:
    """The statuses name B (the highest term's leader), B has just handed over to C."""
    a, b, c = fakes(3)
    a.answer = a.serving("leader", 1, [a.id, b.id])  # stale: B leads in term 2
    b.answer = b.serving("leader", 2, [a.id, b.id])
    b_statuses = b.answer

    def b_handed_over(message: RpcMessage) -> RpcMessage | None:
        if isinstance(message, AdminRequest):
            return ClientResponse(
                message.request_id, ClientStatus.NOT_LEADER, leader_hint=c.id, peer_id=b.id
            )
        return b_statuses(message)

    b.answer = b_handed_over
    c.answer = c.serving("leader", 3, [a.id, b.id, c.id])
    admin = kv_client(clients, [a, b], AdminClient)
    result = admin.add_peer(D)
    assert result == {"leader": c.id, "voters": [a.id, b.id, c.id, D], "learners": []}
    assert a.got(AdminRequest) == []
    [asked] = c.got(AdminRequest)
    assert (asked.op, asked.target) == (ADMIN_ADD_PEER, D)
    assert c.id in admin.peers


@pytest.mark.parametrize(
    ("method", "op"),
    [
        ("add_peer", "add-peer"),
        ("add_learner", "add-learner"),
        ("promote", "promote"),
        ("remove_peer", "remove-peer"),
    ],
)
def test_each_membership_method_sends_its_operation(
    fakes: Callable[[int], list[FakePeer]], clients: list[KVClient], method: str, op: str
) -> None:
    [a] = fakes(1)
    a.answer = a.serving("leader", 1, [a.id])
    admin = kv_client(clients, [a], AdminClient)
    assert getattr(admin, method)(D)["leader"] == a.id
    [asked] = a.got(AdminRequest)
    assert (asked.op, asked.target) == (op, D)


@pytest.mark.parametrize(
    ("status_code", "error", "match"),
    [
        (ClientStatus.ERROR, CommandError, "ChangeInProgressError: busy"),
        (ClientStatus.UNKNOWN, ClientTimeout, "LeadershipLostError.*may or may not"),
    ],
    ids=["refused", "unknown"],
)
def test_a_refusal_is_a_command_error_and_an_unknown_outcome_a_timeout(
    fakes: Callable[[int], list[FakePeer]],
    clients: list[KVClient],
    status_code: int,
    error: type[Exception],
    match: str,
) -> None:
    [a] = fakes(1)
    statuses = a.serving("leader", 1, [a.id])
    message = {
        ClientStatus.ERROR: "ChangeInProgressError: busy",
        ClientStatus.UNKNOWN: "LeadershipLostError: stepped down",
    }[status_code]

    def answer(request: RpcMessage) -> RpcMessage | None:
        if isinstance(request, AdminRequest):
            return ClientResponse(request.request_id, status_code, message=message, peer_id=a.id)
        return statuses(request)

    a.answer = answer
    admin = kv_client(clients, [a], AdminClient)
    with pytest.raises(error, match=match):
        admin.remove_peer(D)


def test_no_answer_is_a_timeout_and_a_bad_peer_a_value_error(
    fakes: Callable[[int], list[FakePeer]], clients: list[KVClient]
) -> None:
    [a] = fakes(1)
    statuses = a.serving("leader", 1, [a.id])
    a.answer = lambda m: statuses(m) if isinstance(m, StatusRequest) else None
    admin = AdminClient([a.id], timeout=0.5, attempt_timeout=0.2)
    clients.append(admin)
    with pytest.raises(ValueError, match="bad peer address"):
        admin.add_learner("nope")
    assert a.received == []  # refused before anything was sent
    with pytest.raises(ClientTimeout):
        admin.promote(D)
    assert len(a.got(AdminRequest)) == 1


def test_with_keys_a_new_peer_is_added_once_its_key_is_in_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clients: list[KVClient]
) -> None:
    generate_keys(tmp_path, [A])
    client = KVClient([A], keys=tmp_path)
    clients.append(client)
    generate_keys(tmp_path, [D])  # distributed after the client started
    assert client._known.learn(D)
    generate_keys(tmp_path, [E])
    assert not client._known.learn(E)  # the directory was read just now: not again so soon
    monkeypatch.setattr(client_module, "_KEYS_REREAD_INTERVAL", 0.0)
    assert client._known.learn(E)
    assert not client._known.learn(F)  # no key at all
    assert client.peers == [A, D, E]
