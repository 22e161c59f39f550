"""KVServer alone, over a stub node and a recording transport: what each outcome of a command
tells the client, and retried writes that join the proposal already in flight."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pykka
import pytest

from actors.errors import (
    CommandTooLargeError,
    LeadershipLostError,
    NodeFailedError,
    NodeStoppedError,
    NotLeaderError,
    OverloadedError,
)
from actors.futures import complete, fail
from actors.service.kv_server import KVServer
from actors.testing import RecordingTransport
from transport.kv_protocol import GET, PUT, KVCommand, encode_command, encode_result
from transport.rpc import ClientRequest, ClientResponse, ClientStatus

ME = "a:1"


class StubNode:
    """Records proposals; the test settles their futures."""

    def __init__(self) -> None:
        self.proposals: list[tuple[bytes, pykka.Future[Any]]] = []
        self.handler: Any = None

    def set_client_handler(self, handler: Any) -> None:
        self.handler = handler

    def apply_batch(
        self, commands: Sequence[bytes], futures: Sequence[pykka.Future[Any]]
    ) -> list[pykka.Future[Any]]:
        self.proposals.extend(zip(commands, futures, strict=True))
        return list(futures)


@pytest.fixture
def server() -> tuple[KVServer, StubNode, RecordingTransport]:
    node, transport = StubNode(), RecordingTransport(ME)
    return KVServer(node, transport), node, transport  # type: ignore[arg-type]


def request(request_id: int, seq: int = 1, op: str = PUT) -> ClientRequest:
    command = KVCommand(op, "k", "v" if op == PUT else None)
    return ClientRequest("client-1", request_id, seq, encode_command(command))


def test_a_retry_of_a_write_in_flight_joins_it_instead_of_proposing_a_copy(
    server: tuple[KVServer, StubNode, RecordingTransport],
) -> None:
    """Retries after a client timeout must not pile copies of one write into the log."""
    kv, node, transport = server
    for request_id in (1, 2, 3):  # the client asked three times: same client, same seq
        kv.on_client_message(request(request_id))
    assert len(node.proposals) == 1
    complete(node.proposals[0][1], None)
    answers = [message for _, message in transport.take()]
    assert [(a.request_id, a.status) for a in answers] == [(i, ClientStatus.OK) for i in (1, 2, 3)]
    kv.on_client_message(request(4))  # answered: a later retry is proposed (the session answers)
    assert len(node.proposals) == 2


def test_reads_and_distinct_writes_are_each_proposed(
    server: tuple[KVServer, StubNode, RecordingTransport],
) -> None:
    kv, node, _ = server
    kv.on_client_message(request(1, seq=0, op=GET))
    kv.on_client_message(request(2, seq=0, op=GET))
    kv.on_client_message(request(3, seq=1))
    kv.on_client_message(request(4, seq=2))
    assert len(node.proposals) == 4


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
    kv.on_client_message(request(1))
    fail(node.proposals[0][1], error)
    [(to, answer)] = transport.take()
    assert to == "client-1" and isinstance(answer, ClientResponse)
    assert answer.status == status


def test_a_successful_write_returns_the_encoded_result(
    server: tuple[KVServer, StubNode, RecordingTransport],
) -> None:
    kv, node, transport = server
    kv.on_client_message(request(7, op=GET, seq=0))
    complete(node.proposals[0][1], "v")
    [(_, answer)] = transport.take()
    assert (answer.request_id, answer.status, answer.result) == (7, 0, encode_result("v"))
