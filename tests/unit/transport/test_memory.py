"""transport.memory: delivery, every fault, determinism by seed."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any

import pytest

from storage.entry import EntryType, LogEntry
from transport.base import Transport
from transport.errors import EncodeError
from transport.memory import MemoryNetwork, MemoryTransport
from transport.rpc import (
    AppendEntriesRequest,
    ClientRequest,
    RequestVoteRequest,
    RpcMessage,
    StatusResponse,
)


class FakeClock:
    """Timers fire only in advance(), on the caller's thread, in deadline order."""

    class Handle:
        def __init__(self) -> None:
            self.cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, FakeClock.Handle, Callable[[], None]]] = []
        self._seq = itertools.count()

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeClock.Handle:
        handle = FakeClock.Handle()
        heapq.heappush(self._timers, (self.now + delay, next(self._seq), handle, callback))
        return handle

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self._timers and self._timers[0][0] <= end:
            deadline, _, handle, callback = heapq.heappop(self._timers)
            self.now = deadline
            if not handle.cancelled:
                callback()
        self.now = end


def vote(sender: str, term: int = 1) -> RequestVoteRequest:
    return RequestVoteRequest(term, sender, 0, 0, False)


class Peers:
    """Started endpoints whose inbound messages are recorded."""

    def __init__(self, network: MemoryNetwork, *ids: str) -> None:
        self.network = network
        self.inbox: dict[str, list[RpcMessage]] = {}
        self.endpoints: dict[str, MemoryTransport] = {}
        for peer_id in ids:
            self.add(peer_id)

    def add(self, peer_id: str) -> MemoryTransport:
        endpoint = self.network.endpoint(peer_id)
        inbox: list[RpcMessage] = []
        self.inbox[peer_id] = inbox
        endpoint.start(inbox.append)
        self.endpoints[peer_id] = endpoint
        return endpoint

    def send(self, src: str, dst: str, term: int = 1) -> None:
        self.endpoints[src].send(dst, vote(src, term))

    def terms(self, peer_id: str) -> list[int]:
        return [m.term for m in self.inbox[peer_id]]  # type: ignore[union-attr]


def test_endpoint_is_a_transport() -> None:
    endpoint: Transport = MemoryNetwork().endpoint("a")
    assert endpoint.local_id == "a"


def test_synchronous_delivery_through_the_codec() -> None:
    peers = Peers(MemoryNetwork(), "a", "b")
    message = AppendEntriesRequest(1, "a", 0, 0, (LogEntry(1, 1, EntryType.DATA, b"x"),), 0, 1)
    peers.endpoints["a"].send("b", message)
    assert peers.inbox["b"] == [message]
    assert peers.inbox["b"][0] is not message  # it went through encode + decode
    assert peers.inbox["a"] == []
    stats = peers.network.stats
    assert (stats.sent, stats.delivered, stats.dropped, stats.in_flight) == (1, 1, 0, 0)


def test_each_delivery_is_a_burst_of_one_followed_by_on_drained() -> None:
    network = MemoryNetwork()
    events: list[Any] = []
    receiver = network.endpoint("b")
    receiver.start(lambda m: events.append(m.term), on_drained=lambda: events.append("drained"))
    sender = network.endpoint("a")
    sender.start(lambda m: None)
    for term in (1, 2):
        sender.send("b", vote("a", term))
    assert events == [1, "drained", 2, "drained"]


def test_without_encoding_the_same_object_is_delivered() -> None:
    peers = Peers(MemoryNetwork(encode=False), "a", "b")
    message = vote("a")
    peers.endpoints["a"].send("b", message)
    assert peers.inbox["b"][0] is message


def test_unserialisable_messages_are_loud() -> None:
    peers = Peers(MemoryNetwork(), "a", "b")
    with pytest.raises(EncodeError):
        peers.endpoints["a"].send("b", ClientRequest("a", 1, 1, "not bytes"))  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match="receiver would reject"):
        peers.endpoints["a"].send("b", RequestVoteRequest(1, "a", 0, 0, 1))  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        peers.endpoints["a"].send("b", StatusResponse(1, "a", {"k": object()}))
    assert peers.inbox["b"] == []


def test_spoofed_sender_is_loud() -> None:
    peers = Peers(MemoryNetwork(), "a", "b")
    with pytest.raises(ValueError, match="spoofed"):
        peers.endpoints["a"].send("b", vote("c"))


def test_unknown_unstarted_and_stopped_destinations_drop() -> None:
    network = MemoryNetwork()
    peers = Peers(network, "a", "b")
    unstarted = network.endpoint("c")
    peers.send("a", "nobody")
    peers.send("a", "c")
    peers.endpoints["b"].stop()
    peers.endpoints["b"].stop()  # idempotent
    peers.send("a", "b")
    assert peers.inbox["b"] == []
    assert not unstarted.running
    assert network.stats.dropped == 3


def test_a_stopped_endpoint_cannot_send_and_can_be_replaced() -> None:
    network = MemoryNetwork()
    peers = Peers(network, "a", "b")
    with pytest.raises(ValueError, match="not stopped"):
        network.endpoint("b")
    peers.endpoints["b"].stop()
    peers.endpoints["b"].send("a", vote("b"))
    assert peers.inbox["a"] == []
    with pytest.raises(RuntimeError):
        peers.endpoints["b"].start(lambda m: None)
    peers.add("b")  # restarted peer
    peers.send("a", "b", 7)
    assert peers.terms("b") == [7]


def test_start_twice_is_an_error() -> None:
    endpoint = MemoryNetwork().endpoint("a")
    endpoint.start(lambda m: None)
    with pytest.raises(RuntimeError):
        endpoint.start(lambda m: None)


def test_partition_is_both_ways_and_heals() -> None:
    peers = Peers(MemoryNetwork(), "a", "b", "c")
    peers.network.partition(["a"], ["b", "c"])
    for src, dst in itertools.permutations("abc", 2):
        peers.send(src, dst)
    assert peers.inbox == {"a": [], "b": [vote("c")], "c": [vote("b")]}
    peers.network.heal()
    peers.send("a", "b", 2)
    peers.send("b", "a", 2)
    assert peers.terms("b") == [1, 2]
    assert peers.terms("a") == [2]


def test_cut_is_one_way() -> None:
    peers = Peers(MemoryNetwork(), "a", "b")
    peers.network.cut("a", "b")
    peers.send("a", "b")
    peers.send("b", "a")
    assert peers.inbox["b"] == []
    assert peers.terms("a") == [1]
    peers.network.heal()
    peers.send("a", "b")
    assert peers.terms("b") == [1]


def test_isolate() -> None:
    peers = Peers(MemoryNetwork(), "a", "b", "c")
    peers.network.isolate("a")
    for src, dst in itertools.permutations("abc", 2):
        peers.send(src, dst)
    assert peers.inbox["a"] == []
    assert [m.sender for m in peers.inbox["b"]] == ["c"]
    assert [m.sender for m in peers.inbox["c"]] == ["b"]
    peers.network.heal()
    peers.send("b", "a")
    assert len(peers.inbox["a"]) == 1


def run_lossy(seed: int, drop: float, duplicate: float) -> tuple[list[int], Any]:
    network = MemoryNetwork(rng=random.Random(seed))
    network.drop_probability = drop
    network.duplicate_probability = duplicate
    peers = Peers(network, "a", "b")
    for term in range(1, 201):
        peers.send("a", "b", term)
    return peers.terms("b"), network.stats


def test_drop_probability_is_deterministic_by_seed() -> None:
    received, stats = run_lossy(1, 0.3, 0.0)
    assert 100 < len(received) < 180
    assert received == sorted(received)
    assert (stats.sent, stats.delivered, stats.dropped) == (200, len(received), 200 - len(received))
    assert run_lossy(1, 0.3, 0.0)[0] == received
    assert run_lossy(2, 0.3, 0.0)[0] != received


def test_drop_all_and_none() -> None:
    assert run_lossy(1, 1.0, 0.0)[0] == []
    assert run_lossy(1, 0.0, 0.0)[0] == list(range(1, 201))


def test_duplicates() -> None:
    received, stats = run_lossy(3, 0.0, 1.0)
    assert received == [t for t in range(1, 201) for _ in (0, 1)]
    assert (stats.sent, stats.duplicated, stats.delivered) == (400, 200, 400)
    some, stats = run_lossy(3, 0.0, 0.2)
    assert 200 < len(some) < 280
    assert stats.duplicated == len(some) - 200
    assert run_lossy(3, 0.0, 0.2)[0] == some


def test_probabilities_are_validated() -> None:
    network = MemoryNetwork()
    with pytest.raises(ValueError):
        network.drop_probability = 1.5
    with pytest.raises(ValueError):
        network.duplicate_probability = -0.1
    with pytest.raises(ValueError, match="clock"):
        network.set_delay(0.1)
    with pytest.raises(ValueError):
        MemoryNetwork(clock=FakeClock()).set_delay(0.2, 0.1)


def test_fixed_delay_keeps_order() -> None:
    clock = FakeClock()
    network = MemoryNetwork(clock=clock)
    network.set_delay(0.05)
    assert network.delay == (0.05, 0.05)
    peers = Peers(network, "a", "b")
    for term in range(1, 6):
        peers.send("a", "b", term)
    assert peers.inbox["b"] == []
    assert network.stats.in_flight == 5
    clock.advance(0.049)
    assert peers.inbox["b"] == []
    clock.advance(0.001)
    assert peers.terms("b") == [1, 2, 3, 4, 5]
    assert network.stats.in_flight == 0
    network.set_delay(0)
    peers.send("a", "b", 9)
    assert peers.terms("b")[-1] == 9


def run_jittered(seed: int) -> list[int]:
    clock = FakeClock()
    network = MemoryNetwork(rng=random.Random(seed), clock=clock)
    network.set_delay(0.01, 0.1)
    peers = Peers(network, "a", "b")
    for term in range(1, 51):
        peers.send("a", "b", term)
    clock.advance(0.0099)
    assert peers.inbox["b"] == []
    clock.advance(0.1)
    assert sorted(peers.terms("b")) == list(range(1, 51))
    return peers.terms("b")


def test_jitter_reorders_deterministically() -> None:
    order = run_jittered(5)
    assert order != sorted(order)
    assert run_jittered(5) == order
    assert run_jittered(6) != order


def test_delayed_message_to_an_endpoint_stopped_meanwhile_is_dropped() -> None:
    clock = FakeClock()
    network = MemoryNetwork(clock=clock)
    network.set_delay(1.0)
    peers = Peers(network, "a", "b")
    peers.send("a", "b")
    peers.endpoints["b"].stop()
    clock.advance(2)
    assert peers.inbox["b"] == []
    stats = network.stats
    assert (stats.sent, stats.delivered, stats.dropped, stats.in_flight) == (1, 0, 1, 0)


def test_deliver_may_send_again() -> None:
    network = MemoryNetwork()
    a = network.endpoint("a")
    b = network.endpoint("b")
    seen: list[RpcMessage] = []
    a.start(seen.append)
    b.start(lambda m: b.send("a", vote("b", m.term + 1)))  # type: ignore[union-attr]
    a.send("b", vote("a", 1))
    assert seen == [vote("b", 2)]
