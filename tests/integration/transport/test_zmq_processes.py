"""ZmqTransport across OS processes: this test process runs one transport, peer_process.py
subprocesses run the others, over real TCP sockets on ports chosen by the OS."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from actors.wait import wait_until
from storage.entry import EntryType, LogEntry
from tests.integration.transport.conftest import (
    TIMEOUT,
    Inbox,
    PeerProcess,
    recv_with_timeout,
    request_until_answered,
)
from transport.codec import decode, encode
from transport.rpc import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    ClientRequest,
    ClientResponse,
    RequestVoteRequest,
    RequestVoteResponse,
    RpcMessage,
    StatusRequest,
    StatusResponse,
)
from transport.zmq_transport import ZmqTransport

pytestmark = pytest.mark.integration

Spawn = Callable[..., PeerProcess]
Local = Callable[..., ZmqTransport]
RawDealer = Callable[[str, bytes], zmq.Socket[Any]]


def vote_response(term: int) -> Callable[[RpcMessage], bool]:
    return lambda m: isinstance(m, RequestVoteResponse) and m.term == term


def connect(me: ZmqTransport, inbox: Inbox, peer: PeerProcess) -> None:
    """Introduce the two sides and wait until a vote goes both ways."""
    me.add_peer(peer.peer_id, peer.endpoint)
    peer.add_peer(me.local_id, me.bound_endpoint)

    def answered(timeout: float) -> bool:
        return inbox.poll_for(lambda m: isinstance(m, RequestVoteResponse), timeout) is not None

    request_until_answered(
        lambda: me.send(peer.peer_id, RequestVoteRequest(1, me.local_id, 0, 0, True)), answered
    )


def test_rpcs_between_processes(local: Local, spawn: Spawn) -> None:
    inbox = Inbox()
    me = local("me", inbox)
    peer = spawn("peer")
    connect(me, inbox, peer)

    entries = tuple(LogEntry(101 + i, 2, EntryType.DATA, os.urandom(100)) for i in range(64))
    requests = [AppendEntriesRequest(2, "me", 100, 2, entries, 90, seq) for seq in range(50)]
    for request in requests:
        me.send("peer", request)
    seqs: set[int] = set()
    while len(seqs) < len(requests):
        response = inbox.wait_for(lambda m: isinstance(m, AppendEntriesResponse))
        assert isinstance(response, AppendEntriesResponse)
        assert response == AppendEntriesResponse(2, True, 164, "peer", response.seq, 2)
        seqs.add(response.seq)
    assert seqs == set(range(50))
    # The peer reports what it received, in order, on its stdout: wait for the last one.
    peer.wait_received(lambda m: isinstance(m, AppendEntriesRequest) and m.seq == 49)
    received = [m for m in peer.received() if isinstance(m, AppendEntriesRequest)]
    assert sorted(received, key=lambda m: m.seq) == requests

    # And the other way: the peer process sends, this process receives.
    peer.send("me", RequestVoteRequest(9, "peer", 5, 4, False))
    assert inbox.wait_for(lambda m: isinstance(m, RequestVoteRequest)) == RequestVoteRequest(
        9, "peer", 5, 4, False
    )
    stats = me.stats
    assert stats.bad_frames == 0 and stats.delivered >= 51


def test_down_peer_neither_blocks_nor_stalls_others(local: Local, spawn: Spawn) -> None:
    inbox = Inbox()
    me = local("me", inbox)
    gone = spawn("gone")
    gone_endpoint = gone.endpoint
    gone.stop()  # its port is closed now: a peer that is down
    live = spawn("live")
    connect(me, inbox, live)
    me.add_peer("gone", gone_endpoint)
    dropped_before = me.stats.dropped_sends

    start = time.monotonic()
    slowest = 0.0
    for term in range(1, 2001):
        t0 = time.monotonic()
        me.send("gone", RequestVoteRequest(term, "me", 0, 0, False))
        if term % 10 == 0:
            me.send("live", RequestVoteRequest(term, "me", 0, 0, False))
        slowest = max(slowest, time.monotonic() - t0)
    elapsed = time.monotonic() - start
    # Never blocks: a send is an encode and an append (generous bounds for a busy machine).
    assert slowest < 1.0 and elapsed < 5.0

    # The I/O thread handles the queue in order: once the last message to the live peer is
    # answered, every frame for the down peer before it was handled - and dropped.
    me.send("live", RequestVoteRequest(5000, "me", 0, 0, False))
    inbox.wait_for(lambda m: isinstance(m, RequestVoteResponse) and m.term == 5000)
    assert me.stats.dropped_sends - dropped_before == 2000
    # The peer reports what it received in order on its stdout: once 5000 is read, all is.
    live.wait_received(lambda m: isinstance(m, RequestVoteRequest) and m.term == 5000)
    live_terms = {m.term for m in live.received() if isinstance(m, RequestVoteRequest)}
    assert set(range(10, 2001, 10)) <= live_terms, (
        sorted(set(range(10, 2001, 10)) - live_terms),
        me.stats,
        live.stats(),
    )


def big_append(term: int, chunk: bytes) -> AppendEntriesRequest:
    return AppendEntriesRequest(term, "me", 0, 0, (LogEntry(1, 1, EntryType.DATA, chunk),), 0, term)


def test_stalled_peer_does_not_stall_others(local: Local, spawn: Spawn) -> None:
    """A peer that is connected but does not read (SIGSTOP) fills its DEALER up to the HWM;
    from then on frames for it are dropped, and other peers are served all along."""
    inbox = Inbox()
    me = local("me", inbox, send_hwm=4)
    stalled = spawn("stalled")
    live = spawn("live")
    connect(me, inbox, stalled)
    connect(me, inbox, live)
    stalled.suspend()

    chunk = os.urandom(256 * 1024)
    dropped_before = me.stats.dropped_sends
    term = 0

    def send_until_dropped() -> bool:
        nonlocal term
        term += 1
        me.send("stalled", big_append(term, chunk))
        me.send("live", RequestVoteRequest(term, "me", 0, 0, False))
        # Once the vote is answered, the chunk queued before it has been handled too.
        inbox.wait_for(vote_response(term))
        return me.stats.dropped_sends > dropped_before

    wait_until(send_until_dropped, "frames for the stalled peer to be dropped", TIMEOUT)
    # The live peer still gets (and answers) everything after the stalled one backed up.
    stalled_drops = me.stats.dropped_sends
    for extra in range(term + 1, term + 20):
        me.send("stalled", big_append(extra, chunk))
        me.send("live", RequestVoteRequest(extra, "me", 0, 0, False))
        inbox.wait_for(vote_response(extra))
    assert me.stats.dropped_sends == stalled_drops + 19


def test_garbage_leaves_the_router_serving(spawn: Spawn, raw_dealer: RawDealer) -> None:
    server = spawn("server")
    attacker = raw_dealer(server.endpoint, b"attacker")

    bad_frames: list[list[bytes]] = [
        [b""],
        [b"\xc1"],
        [os.urandom(64)],
        [b"\x93\x01\x0b\xc6\x7f\xff\xff\xff"],  # lying length header
        [encode(StatusRequest("attacker", 1)) + b"\x00"],  # trailing garbage
        [b"\x95\x02\x07\x01\xa1a"],  # unknown version
        [b"\x93\x01\x63\x01"],  # unknown tag
        [encode(StatusRequest("attacker", 1))[:-1]],  # truncated
        [encode(StatusRequest("attacker", 1)), b"extra"],  # wrong multipart shape
        [b"a", b"b", b"c"],
        [encode(RequestVoteRequest(99, "victim", 0, 0, False))],  # spoofed sender
        [encode(ClientRequest("someone-else", 1, 1, b"x"))],  # spoofed client id
    ]
    bad_frames += [[os.urandom(n)] for n in range(1, 40)]
    for parts in bad_frames:
        attacker.send_multipart(parts)

    # Frames on one connection arrive in order: once this is answered, all of the above
    # have been handled.
    attacker.send(encode(StatusRequest("attacker", 7)))
    reply = recv_with_timeout(attacker, TIMEOUT)
    assert reply is not None, "the server stopped answering"
    response = decode(reply[0])
    assert isinstance(response, StatusResponse) and response.request_id == 7
    assert response.status["bad_frames"] == len(bad_frames)
    assert response.status["delivered"] == 1
    server.wait_received(lambda m: isinstance(m, StatusRequest))  # its report is in order
    assert server.received() == [StatusRequest("attacker", 7)]

    # One source, many bad frames: logged once (rate-limited), naming the source.
    server.stop()
    log_lines = [
        line for line in server.log_path.read_text().splitlines() if "dropped bad frame" in line
    ]
    assert len(log_lines) == 1 and "attacker" in log_lines[0]


def test_oversized_frame_is_refused(spawn: Spawn, raw_dealer: RawDealer) -> None:
    server = spawn("server", "--max-frame-size", "4096")
    client = raw_dealer(server.endpoint, b"client")
    client.send(encode(ClientRequest("client", 1, 1, b"x" * 10_000)))
    # ZeroMQ (MAXMSGSIZE) drops the connection; the DEALER reconnects and is served again.
    answer: list[RpcMessage] = []

    def answered(timeout: float) -> bool:
        reply = recv_with_timeout(client, timeout)
        if reply is not None:
            answer.append(decode(reply[0]))
        return bool(answer)

    request_until_answered(lambda: client.send(encode(StatusRequest("client", 2))), answered)
    assert isinstance(answer[0], StatusResponse)
    server.wait_received(lambda m: isinstance(m, StatusRequest))  # its report is in order
    assert not any(isinstance(m, ClientRequest) for m in server.received())


def test_client_request_reply_through_the_router(spawn: Spawn, raw_dealer: RawDealer) -> None:
    server = spawn("server")
    clients = {name: raw_dealer(server.endpoint, name.encode()) for name in ("c1", "c2")}
    for number, (name, client) in enumerate(clients.items()):
        client.send(encode(ClientRequest(name, 10 + number, 1, f"put {name}".encode())))
    for number, (name, client) in enumerate(clients.items()):
        reply = recv_with_timeout(client, TIMEOUT)
        assert reply is not None
        assert decode(reply[0]) == ClientResponse(
            10 + number, 0, f"put {name}".encode(), "", "", "server"
        )
    # A reply to a client that is not connected is dropped and counted, nothing else.
    server.send("ghost", ClientResponse(1, 0, b"", "", "", "server"))
    wait_until(lambda: server.stats()["dropped_sends"] >= 1, "the drop to be counted", TIMEOUT)
    clients["c1"].send(encode(StatusRequest("c1", 3)))
    reply = recv_with_timeout(clients["c1"], TIMEOUT)
    assert reply is not None and isinstance(decode(reply[0]), StatusResponse)
