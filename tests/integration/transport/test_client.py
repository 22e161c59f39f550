"""KVClient against a scripted server (a raw ROUTER on a port the OS chose): how it treats each
kind of answer. The server thread answers from a script; the client's requests are recorded."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import zmq

from transport.client import ClientTimeout, KVClient
from transport.codec import decode, encode
from transport.kv_protocol import encode_result
from transport.peers import free_ports
from transport.rpc import ClientRequest, ClientResponse, ClientStatus

pytestmark = pytest.mark.integration


class ScriptedServer:
    """Answers the n-th ClientRequest with script[n] (the last one repeats)."""

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.requests: list[ClientRequest] = []
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind("tcp://127.0.0.1:0")
        endpoint = self.router.getsockopt(zmq.LAST_ENDPOINT)
        assert isinstance(endpoint, bytes)
        self.peer = endpoint.decode().removeprefix("tcp://")
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            if not self.router.poll(50):
                continue
            identity, frame = self.router.recv_multipart()
            request = decode(frame)
            assert isinstance(request, ClientRequest)
            self.requests.append(request)
            status = self.script[min(len(self.requests), len(self.script)) - 1]
            result = encode_result(None) if status == ClientStatus.OK else b""
            answer = ClientResponse(request.request_id, status, result, "", "busy", self.peer)
            self.router.send_multipart([identity, encode(answer)])

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.router.close(linger=0)
        self.context.term()


@pytest.fixture
def scripted() -> Iterator[list[ScriptedServer]]:
    servers: list[ScriptedServer] = []
    yield servers
    for server in servers:
        server.close()


def test_overloaded_is_retried_with_the_same_sequence_number_after_a_back_off(
    scripted: list[ScriptedServer],
) -> None:
    """OVERLOADED means nothing was done: the client waits and asks again, keeping the seq
    (so the write can never apply twice), and succeeds once the leader has room."""
    server = ScriptedServer([ClientStatus.OVERLOADED] * 3 + [ClientStatus.OK])
    scripted.append(server)
    with KVClient([server.peer], timeout=5.0) as client:
        client.put("k", "v")
    assert len(server.requests) == 4
    assert {r.seq for r in server.requests} == {1}
    assert len({r.request_id for r in server.requests}) == 4


def test_overloaded_for_ever_ends_in_a_timeout_not_a_definite_failure(
    scripted: list[ScriptedServer],
) -> None:
    server = ScriptedServer([ClientStatus.OVERLOADED])
    scripted.append(server)
    with KVClient([server.peer], timeout=0.5) as client, pytest.raises(ClientTimeout) as excinfo:
        client.put("k", "v")
    assert 2 <= len(server.requests) < 100  # backed off, not a hot loop
    assert f"{server.peer}: overloaded" in str(excinfo.value)


def test_when_nothing_answers_the_timeout_names_every_peer_tried() -> None:
    silent = [f"127.0.0.1:{port}" for port in free_ports(2)]  # nothing listens there
    client = KVClient(silent, timeout=0.6, attempt_timeout=0.1)
    with client, pytest.raises(ClientTimeout) as excinfo:
        client.put("k", "v")
    message = str(excinfo.value)
    assert all(f"{peer}: no answer" in message for peer in silent), message
    assert "none of them answered" in message and "may or may not have taken effect" in message


def test_a_closed_client_stops_its_sync_thread() -> None:
    [peer] = [f"127.0.0.1:{port}" for port in free_ports(1)]
    client = KVClient([peer], sync_interval=0.05)
    [sync] = [t for t in threading.enumerate() if t.name == f"{client.client_id}-sync"]
    assert sync.daemon
    client.close()
    sync.join(5.0)
    assert not sync.is_alive()
    with pytest.raises(ValueError, match="sync_interval"):
        KVClient([peer], sync_interval=0)
