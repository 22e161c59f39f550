"""ZmqTransport within one process (real sockets on 127.0.0.1, OS-chosen ports): lifecycle,
errors, membership changes, identity handover."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from actors.wait import wait_until
from tests.integration.transport.conftest import (
    TIMEOUT,
    Inbox,
    recv_with_timeout,
    request_until_answered,
    vote,
)
from transport.base import Transport
from transport.codec import decode, encode
from transport.errors import BindError, EncodeError, TransportError
from transport.rpc import (
    ClientRequest,
    ClientResponse,
    RequestVoteRequest,
    RequestVoteResponse,
    RpcMessage,
    StatusRequest,
)
from transport.zmq_transport import ZmqTransport, peer_address

pytestmark = pytest.mark.integration

Local = Callable[..., ZmqTransport]
RawDealer = Callable[[str, bytes], zmq.Socket[Any]]


def answer_votes(transport_ref: list[ZmqTransport]) -> Callable[[RpcMessage], None]:
    """A deliver callback answering every vote request through transport_ref[0]."""

    def deliver(message: RpcMessage) -> None:
        if isinstance(message, RequestVoteRequest):
            me = transport_ref[0]
            me.send(message.sender, RequestVoteResponse(message.term, True, False, me.local_id, 0))

    return deliver


def pair(local: Local) -> tuple[ZmqTransport, Inbox, ZmqTransport]:
    """Transport "a" (collecting into an inbox) and "b" (answering votes), introduced to each
    other and connected both ways."""
    inbox = Inbox()
    a = local("a", inbox)
    b_ref: list[ZmqTransport] = []
    b = local("b", answer_votes(b_ref))
    b_ref.append(b)
    a.add_peer("b", b.bound_endpoint)
    b.add_peer("a", a.bound_endpoint)
    request_until_answered(
        lambda: a.send("b", vote("a")),
        lambda timeout: inbox.poll_for(lambda m: True, timeout) is not None,
    )
    return a, inbox, b


def test_is_a_transport_and_reports_its_port(local: Local) -> None:
    transport: Transport = local("a", Inbox())
    assert isinstance(transport, ZmqTransport)
    assert transport.local_id == "a"
    assert transport.bound_port > 0
    assert transport.bound_endpoint == f"tcp://127.0.0.1:{transport.bound_port}"


def test_bound_port_needs_start() -> None:
    transport = ZmqTransport("a", "tcp://127.0.0.1:0")
    with pytest.raises(TransportError, match="start"):
        _ = transport.bound_port
    transport.stop()


def test_port_in_use_is_a_clear_error(local: Local) -> None:
    first = local("a", Inbox())
    second = ZmqTransport("b", first.bound_endpoint)
    with pytest.raises(BindError, match=f"cannot bind {first.bound_endpoint}.*in use"):
        second.start(Inbox())
    second.stop()  # already stopped by the failed start: idempotent


def test_bad_address_is_a_clear_error() -> None:
    transport = ZmqTransport("a", "tcp://no-such-interface-xyz:1")
    with pytest.raises(BindError, match="no-such-interface-xyz"):
        transport.start(Inbox())


def test_lifecycle_errors(local: Local) -> None:
    transport = ZmqTransport("a", "tcp://127.0.0.1:0")
    transport.start(Inbox())
    with pytest.raises(RuntimeError, match="already running"):
        transport.start(Inbox())
    transport.stop()
    transport.stop()
    with pytest.raises(RuntimeError, match="already stopped"):
        transport.start(Inbox())
    transport.send("b", vote("a"))  # after stop: dropped and counted, no error
    assert transport.stats.dropped_sends == 1
    never_started = ZmqTransport("c", "tcp://127.0.0.1:0")
    never_started.stop()
    with pytest.raises(ValueError):
        ZmqTransport("", "tcp://127.0.0.1:0")


def test_exchange_and_peer_listing(local: Local) -> None:
    a, inbox, b = pair(local)
    assert a.peers == {"b": b.bound_endpoint}
    for term in range(2, 30):
        a.send("b", vote("a", term))
    terms: set[int] = set()
    while len(terms) < 28:
        response = inbox.wait_for(lambda m: True)
        assert isinstance(response, RequestVoteResponse)
        terms.add(response.term)
    assert terms == set(range(2, 30))


def test_peers_as_ids_skip_self() -> None:
    transport = ZmqTransport("h:1", "tcp://127.0.0.1:0", ["h:1", "h:2", "h:3"])
    assert transport.peers == {"h:2": "tcp://h:2", "h:3": "tcp://h:3"}
    transport.add_peer("h:1")
    transport.add_peer("h:4")
    assert peer_address("h:4") == "tcp://h:4"
    assert set(transport.peers) == {"h:2", "h:3", "h:4"}
    transport.remove_peer("h:2")
    transport.remove_peer("nobody")
    assert set(transport.peers) == {"h:3", "h:4"}
    transport.stop()


def test_send_before_start_is_delivered_after(local: Local) -> None:
    inbox = Inbox()
    a = local("a", inbox)
    b = ZmqTransport("b", "tcp://127.0.0.1:0", {"a": a.bound_endpoint})
    sends = 0

    def send(term: int) -> None:
        nonlocal sends
        b.send("a", vote("b", term))
        sends += 1

    try:
        send(7)  # queued; IMMEDIATE may drop it if not yet connected...
        b.start(Inbox())
        # ...so keep sending until one arrives: what matters is that nothing is lost silently
        # in the queue and that start() drains it without a wake-up.
        request_until_answered(
            lambda: send(8), lambda timeout: inbox.poll_for(lambda m: True, timeout) is not None
        )
        # Every frame is accounted for, sent or dropped, once the I/O thread drained the queue
        # (the answer may be to an earlier frame while the last one is still queued).
        wait_until(
            lambda: b.stats.frames_out + b.stats.dropped_sends == sends,
            "every queued frame sent or counted as dropped",
            TIMEOUT,
        )
    finally:
        b.stop()


def test_remove_and_re_add_peer(local: Local) -> None:
    a, inbox, b = pair(local)
    a.remove_peer("b")
    assert a.peers == {}
    # "b" is no peer any more, so the frame goes through a's ROUTER as a reply to a client
    # called "b" - which is b's own DEALER (it still has "a" as a peer): b never delivers it,
    # it counts a bad frame on that DEALER.
    a.send("b", vote("a", 5))
    wait_until(lambda: b.stats.bad_frames, "b to count the frame as bad", TIMEOUT)
    assert b.stats.bad_frames == 1, (a.stats, b.stats)
    assert inbox.poll_for(lambda m: True, 0.05) is None
    a.add_peer("b", b.bound_endpoint)
    request_until_answered(
        lambda: a.send("b", vote("a", 6)),
        lambda timeout: inbox.poll_for(lambda m: m.term == 6, timeout) is not None,  # type: ignore[union-attr]
    )


def test_deliver_errors_do_not_stop_the_thread(
    local: Local, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[RpcMessage] = []
    got_second = threading.Event()

    def deliver(message: RpcMessage) -> None:
        calls.append(message)
        if len(calls) >= 2:
            got_second.set()
        raise RuntimeError("actor is dead")

    inbox = Inbox()
    a = local("a", inbox)
    b = local("b", deliver)
    a.add_peer("b", b.bound_endpoint)
    with caplog.at_level(logging.ERROR, logger="transport.zmq_transport"):
        request_until_answered(lambda: a.send("b", vote("a")), got_second.wait)
    assert b.stats.deliver_errors >= 2
    assert sum("deliver(RequestVoteRequest) failed" in r.message for r in caplog.records) == 1


def test_stop_from_deliver(local: Local) -> None:
    stopped = threading.Event()
    holder: list[ZmqTransport] = []

    def deliver(message: RpcMessage) -> None:
        holder[0].stop()  # on the I/O thread: must not deadlock joining itself
        stopped.set()

    a = local("a", Inbox())
    b = local("b", deliver)
    holder.append(b)
    a.add_peer("b", b.bound_endpoint)
    request_until_answered(lambda: a.send("b", vote("a")), stopped.wait)
    b.stop()  # joins the thread now


def test_oversized_send_is_a_programming_error(local: Local) -> None:
    a = local("a", Inbox(), max_frame_size=1000)
    with pytest.raises(EncodeError, match="max_frame_size"):
        a.send("b", ClientRequest("a", 1, 1, b"x" * 1000))
    with pytest.raises(EncodeError):
        a.send("b", ClientRequest("a", 1, 1, object()))  # type: ignore[arg-type]


def test_full_queue_drops(local: Local) -> None:
    a = ZmqTransport("a", "tcp://127.0.0.1:0", max_queued=3)
    try:
        for _ in range(5):  # not started: nothing drains the queue
            a.send("b", vote("a"))
        assert a.stats.dropped_sends == 2
    finally:
        a.stop()


def test_given_context_is_not_terminated() -> None:
    context: zmq.Context[Any] = zmq.Context()
    try:
        transport = ZmqTransport("a", "tcp://127.0.0.1:0", context=context)
        transport.start(Inbox())
        transport.stop()
        assert not context.closed
        socket = context.socket(zmq.DEALER)  # still usable
        socket.close()
    finally:
        context.term()


def test_client_reply_goes_to_the_connection_with_that_identity(
    local: Local, raw_dealer: RawDealer
) -> None:
    holder: list[ZmqTransport] = []

    def deliver(message: RpcMessage) -> None:
        if isinstance(message, ClientRequest):
            holder[0].send(
                message.client_id,
                ClientResponse(message.request_id, 0, message.command, "", "", "server"),
            )

    server = local("server", deliver)
    holder.append(server)
    first = raw_dealer(server.bound_endpoint, b"client")
    first.send(encode(ClientRequest("client", 1, 1, b"one")))
    reply = recv_with_timeout(first, TIMEOUT)
    assert reply is not None and decode(reply[0]).result == b"one"  # type: ignore[union-attr]

    # A new connection with the same routing id (a restarted client or peer) takes over the
    # identity (ROUTER_HANDOVER): replies now go to it, not to the old connection.
    second = raw_dealer(server.bound_endpoint, b"client")
    second.send(encode(ClientRequest("client", 2, 1, b"two")))
    reply = recv_with_timeout(second, TIMEOUT)
    assert reply is not None and decode(reply[0]).result == b"two"  # type: ignore[union-attr]
    assert recv_with_timeout(first, 0.1) is None
    assert server.stats.bad_frames == 0


def test_frames_on_a_dealer_are_counted_as_bad(local: Local) -> None:
    """Peers never send to our DEALERs; a foreign ROUTER that does is counted and ignored."""
    context: zmq.Context[Any] = zmq.Context()
    router = context.socket(zmq.ROUTER)
    try:
        router.bind("tcp://127.0.0.1:0")
        endpoint = router.getsockopt(zmq.LAST_ENDPOINT).decode()
        a = local("a", Inbox())
        a.add_peer("evil", endpoint)
        request_until_answered(
            lambda: a.send("evil", StatusRequest("a", 1)),
            lambda timeout: bool(router.poll(int(timeout * 1000))),
        )
        identity, _ = router.recv_multipart()
        assert identity == b"a"
        router.send_multipart([identity, b"junk"])
        wait_until(lambda: a.stats.bad_frames, "the frame to be counted as bad", TIMEOUT)
        assert a.stats.bad_frames == 1
    finally:
        router.close(linger=0)
        context.term()


def test_a_failing_io_thread_tells_its_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    from transport import zmq_transport

    def broken(loop: Any) -> None:
        raise RuntimeError("io bug")

    monkeypatch.setattr(zmq_transport._IoLoop, "run", broken)
    failed = threading.Event()
    reasons: list[str] = []

    def on_failure(reason: str) -> None:
        reasons.append(reason)
        failed.set()

    transport = ZmqTransport("a", "tcp://127.0.0.1:0")
    try:
        transport.start(Inbox(), on_failure)
        assert failed.wait(TIMEOUT)
        assert reasons == ["transport I/O thread failed: RuntimeError: io bug"]
    finally:
        transport.stop()


def test_every_burst_of_deliveries_is_followed_by_on_drained(raw_dealer: RawDealer) -> None:
    """The KV server proposes a burst's writes when told it is drained: no delivered message
    may be left without a drained call after it, and a failing on_drained stops nothing."""
    events: list[Any] = []
    raised = [0]
    done = threading.Event()
    count = 200

    def deliver(message: RpcMessage) -> None:
        assert isinstance(message, RequestVoteRequest)
        events.append(message.term)

    def on_drained() -> None:
        events.append("drained")
        if len([e for e in events if e != "drained"]) == count:
            done.set()
        if len(events) % 3 == 0:
            raised[0] += 1
            raise RuntimeError("a drained hook that fails now and then")

    transport = ZmqTransport("a", "tcp://127.0.0.1:0")
    transport.start(deliver, on_drained=on_drained)
    try:
        dealer = raw_dealer(transport.bound_endpoint, b"x")
        for term in range(1, count + 1):
            dealer.send(encode(vote("x", term)))
        assert done.wait(TIMEOUT), f"only {events[-5:]} after {TIMEOUT} s"
        assert [e for e in events if e != "drained"] == list(range(1, count + 1))
        assert events[-1] == "drained"
        assert 1 <= events.count("drained") <= count
        assert transport.stats.deliver_errors == raised[0]
    finally:
        transport.stop()
