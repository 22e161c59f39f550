"""ZmqTransport hosted on a Dispatcher (host_on): the I/O runs on the dispatcher's thread
between actor turns; one transport per dispatcher; stopping the transport leaves the
dispatcher running its actors. (Everything else a transport does, hosted or not, is in
test_zmq_local.py, whose `local` fixture runs each test both ways.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from actors.dispatcher import Dispatcher
from tests.integration.transport.conftest import TIMEOUT, Inbox, request_until_answered, vote
from transport.base import HostableTransport
from transport.errors import BindError
from transport.rpc import RequestVoteRequest, RequestVoteResponse, RpcMessage
from transport.zmq_transport import ZmqTransport

pytestmark = pytest.mark.integration


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    d = Dispatcher("host")
    try:
        yield d
    finally:
        d.stop(TIMEOUT)


@pytest.fixture
def transports() -> Iterator[list[ZmqTransport]]:
    made: list[ZmqTransport] = []
    try:
        yield made
    finally:
        for transport in made:
            transport.stop()


def on_thread(d: Dispatcher, fn: Any) -> Any:
    """fn() run on the dispatcher's thread; its result."""
    result: list[Any] = []
    done = threading.Event()
    d.call_soon(lambda: (result.append(fn()), done.set()))
    assert done.wait(TIMEOUT)
    return result[0]


def test_deliver_and_send_run_on_the_dispatchers_thread(
    dispatcher: Dispatcher, transports: list[ZmqTransport]
) -> None:
    threads: list[int | None] = []
    hosted = ZmqTransport("hosted", "tcp://127.0.0.1:0")
    assert isinstance(hosted, HostableTransport)
    transports.append(hosted)

    def answer(message: RpcMessage) -> None:
        threads.append(threading.get_ident())
        if isinstance(message, RequestVoteRequest):  # sent from the I/O thread, without a wake
            hosted.send(message.sender, RequestVoteResponse(message.term, True, False, "hosted", 0))

    hosted.host_on(dispatcher)
    hosted.start(answer)
    inbox = Inbox()
    other = ZmqTransport("other", "tcp://127.0.0.1:0")
    transports.append(other)
    other.start(inbox)
    other.add_peer("hosted", hosted.bound_endpoint)
    hosted.add_peer("other", other.bound_endpoint)
    request_until_answered(
        lambda: other.send("hosted", vote("other")),
        lambda timeout: inbox.poll_for(lambda m: True, timeout) is not None,
    )
    assert set(threads) == {dispatcher.thread.ident}
    # A send from the dispatcher's thread outside deliver (an actor's) leaves at the next step.
    on_thread(dispatcher, lambda: hosted.send("other", vote("hosted", 7)))
    got = inbox.wait_for(lambda m: isinstance(m, RequestVoteRequest) and m.term == 7)
    assert got.sender == "hosted"


def test_a_second_transport_on_a_taken_host_gets_a_thread_of_its_own(
    dispatcher: Dispatcher, transports: list[ZmqTransport]
) -> None:
    seen: dict[str, set[int | None]] = {"first": set(), "second": set()}
    ends: list[ZmqTransport] = []
    for name in seen:

        def deliver(message: RpcMessage, name: str = name) -> None:
            seen[name].add(threading.get_ident())

        transport = ZmqTransport(name, "tcp://127.0.0.1:0")
        transports.append(transport)
        transport.host_on(dispatcher)
        transport.start(deliver)
        ends.append(transport)
    sender = ZmqTransport("sender", "tcp://127.0.0.1:0")
    transports.append(sender)
    sender.start(Inbox())
    for end in ends:
        sender.add_peer(end.local_id, end.bound_endpoint)
    for name in seen:
        request_until_answered(
            lambda name=name: sender.send(name, vote("sender")),  # type: ignore[misc]
            lambda timeout, name=name: bool(seen[name]),  # type: ignore[misc]
        )
    assert seen["first"] == {dispatcher.thread.ident}
    assert dispatcher.thread.ident not in seen["second"]


def test_host_on_after_start_is_refused(
    dispatcher: Dispatcher, transports: list[ZmqTransport]
) -> None:
    transport = ZmqTransport("a", "tcp://127.0.0.1:0")
    transports.append(transport)
    transport.start(Inbox())
    with pytest.raises(RuntimeError, match="already running"):
        transport.host_on(dispatcher)


def test_a_hosted_bind_error_is_clear_and_frees_the_host(
    dispatcher: Dispatcher, transports: list[ZmqTransport]
) -> None:
    first = ZmqTransport("a", "tcp://127.0.0.1:0")
    transports.append(first)
    first.start(Inbox())
    second = ZmqTransport("b", first.bound_endpoint)
    second.host_on(dispatcher)
    with pytest.raises(BindError, match="in use"):
        second.start(Inbox())
    assert on_thread(dispatcher, dispatcher.claim_io)  # the slot was given back


def test_stopping_the_transport_detaches_it_and_the_dispatcher_runs_on(
    dispatcher: Dispatcher, transports: list[ZmqTransport]
) -> None:
    transport = ZmqTransport("a", "tcp://127.0.0.1:0")
    transports.append(transport)
    transport.host_on(dispatcher)
    transport.start(Inbox())
    transport.stop()  # from another thread: returns once the host's thread closed the sockets
    assert on_thread(dispatcher, dispatcher.claim_io)
    assert dispatcher.thread.is_alive()
    transport.send("b", vote("a"))  # after stop: dropped and counted
    assert transport.stats.dropped_sends == 1


def test_a_failing_hosted_loop_tells_its_owner_and_spares_the_dispatcher(
    dispatcher: Dispatcher, transports: list[ZmqTransport], monkeypatch: pytest.MonkeyPatch
) -> None:
    from transport import zmq_transport

    def broken(loop: Any, timeout_ms: int) -> None:
        raise RuntimeError("io bug")

    monkeypatch.setattr(zmq_transport._IoLoop, "step", broken)
    reasons: list[str] = []
    failed = threading.Event()

    def on_failure(reason: str) -> None:
        reasons.append(reason)
        failed.set()

    transport = ZmqTransport("a", "tcp://127.0.0.1:0")
    transports.append(transport)
    transport.host_on(dispatcher)
    transport.start(Inbox(), on_failure)
    assert failed.wait(TIMEOUT)
    assert reasons == ["transport I/O thread failed: RuntimeError: io bug"]
    assert on_thread(dispatcher, dispatcher.claim_io)  # detached, the dispatcher lives on
