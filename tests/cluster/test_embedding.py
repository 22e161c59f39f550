"""The embedding API as an application uses it: reads that fail alone, asyncio, the events, and
nothing that blocks where it must not (issue: embedding as a first-class use)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from actors.configuration import Configuration
from actors.errors import DeadlockError, NodeStoppedError, RaftTimeoutError, ReadError
from actors.futures import RaftFuture
from actors.options import NodeOptions, RaftOptions
from actors.raft_node import RaftNode
from actors.state_machine import Command, StateMachine
from storage.memory import MemoryLogStorage, MemoryMetaStorage
from transport.memory import MemoryNetwork

from .conftest import WAIT, MakeCluster

ME = "127.0.0.1:7001"


class Counter(StateMachine):
    """README's state machine: no on_read."""

    def __init__(self) -> None:
        self.value = 0

    def on_apply(self, commands: Sequence[Command]) -> list[Any]:
        results = []
        for command in commands:
            self.value += int(command.data)
            results.append(self.value)
        return results


class ReadableCounter(Counter):
    def on_read(self, query: bytes) -> Any:
        if query == b"value":
            return self.value
        raise KeyError(query)


def start_one(state_machine: StateMachine) -> RaftNode:
    """A one-peer cluster: it elects itself."""
    return RaftNode.start(
        NodeOptions(ME, Configuration.of([ME]), RaftOptions(election_timeout=0.2)),
        state_machine,
        MemoryLogStorage(),
        MemoryMetaStorage(),
        MemoryNetwork().endpoint(ME),
        rng=random.Random(1),
    )


def serving(state_machine: StateMachine) -> Iterator[RaftNode]:
    node = start_one(state_machine)
    try:
        assert node.wait_for_leader(timeout=WAIT) == ME
        yield node
    finally:
        node.stop()


@pytest.fixture
def counter() -> Iterator[RaftNode]:
    yield from serving(Counter())


@pytest.fixture
def readable() -> Iterator[RaftNode]:
    yield from serving(ReadableCounter())


def test_reading_a_state_machine_without_on_read_fails_that_read_and_nothing_else(
    counter: RaftNode,
) -> None:
    assert counter.apply(b"2").get(timeout=WAIT) == 2
    for consistency in ("linearizable", "lease", "serializable"):
        with pytest.raises(ReadError, match="Counter does not implement on_read"):
            counter.read(b"value", consistency).get(timeout=WAIT)
    assert counter.apply(b"3").get(timeout=WAIT) == 5  # still serving
    assert counter.status().error is None


def test_an_on_read_that_raises_fails_its_read_and_the_peer_serves_on(readable: RaftNode) -> None:
    assert readable.apply(b"4").get(timeout=WAIT) == 4
    with pytest.raises(ReadError, match="KeyError") as info:
        readable.read(b"nonsense").get(timeout=WAIT)
    assert isinstance(info.value.cause, KeyError)
    assert readable.read(b"value").get(timeout=WAIT) == 4
    assert readable.apply(b"1").get(timeout=WAIT) == 5
    assert readable.status().error is None


def test_apply_and_read_are_awaitable(readable: RaftNode) -> None:
    async def main() -> tuple[list[int], int, int]:
        results = await asyncio.gather(*(readable.apply_async(b"1") for _ in range(50)))
        value = await readable.read_async(b"value")
        awaited = await readable.apply(b"10")  # a RaftFuture is awaitable itself
        return sorted(results), value, awaited

    results, value, awaited = asyncio.run(asyncio.wait_for(main(), WAIT))
    assert results == list(range(1, 51)) and value == 50 and awaited == 60


def test_awaiting_a_future_leaves_the_event_loop_running() -> None:
    """The coroutine that settles the future needs several turns of the loop while another
    awaits it: a blocking await (pykka's own) would only end by the watchdog's deadline."""
    future: RaftFuture[str] = RaftFuture()
    watchdog = threading.Timer(WAIT, future.set, ["watchdog"])
    watchdog.start()

    async def settle_later() -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        future.set("coroutine")

    async def main() -> str:
        settler = asyncio.create_task(settle_later())
        value = await future
        await settler
        return value

    try:
        assert asyncio.run(main()) == "coroutine"
    finally:
        watchdog.cancel()


def test_awaiting_a_failed_command_raises_its_error_in_the_coroutine(readable: RaftNode) -> None:
    async def read_nonsense() -> Any:
        return await readable.read_async(b"nonsense")

    with pytest.raises(ReadError):
        asyncio.run(asyncio.wait_for(read_nonsense(), WAIT))


def test_a_done_callback_is_called_once_with_the_settled_future(readable: RaftNode) -> None:
    called: list[tuple[int, str]] = []
    done = threading.Event()

    def on_done(future: RaftFuture[Any]) -> None:
        called.append((future.result(), threading.current_thread().name))
        done.set()

    readable.apply(b"7").add_done_callback(on_done)
    assert done.wait(WAIT)
    settled = readable.apply(b"1")
    assert settled.get(timeout=WAIT) == 8
    settled.add_done_callback(on_done)  # already settled: at once, on this thread
    assert called[0][0] == 7 and called[1] == (8, threading.current_thread().name)
    assert called[0][1] != threading.current_thread().name  # the actor's thread


def test_stop_on_the_nodes_dispatcher_thread_is_refused_rather_than_a_deadlock(
    readable: RaftNode,
) -> None:
    refused: list[BaseException] = []
    done = threading.Event()

    def stop_here(future: RaftFuture[Any]) -> None:  # the Node settles status: its thread
        try:
            readable.stop()
        except DeadlockError as error:
            refused.append(error)
        done.set()

    status: RaftFuture[Any] = RaftFuture()
    status.add_done_callback(stop_here)
    readable.status_async(status)
    assert done.wait(WAIT)
    assert len(refused) == 1 and "dispatcher thread" in str(refused[0])
    assert readable.apply(b"2").get(timeout=WAIT) == 2  # nothing was stopped


class ThreadRecordingCounter(ReadableCounter):
    """Notes the thread of every apply and read."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int | None] = set()

    def on_apply(self, commands: Sequence[Command]) -> list[Any]:
        self.threads.add(threading.get_ident())
        return super().on_apply(commands)

    def on_read(self, query: bytes) -> Any:
        self.threads.add(threading.get_ident())
        return super().on_read(query)


class InMemoryCounter(ThreadRecordingCounter):
    blocking = False  # computes in memory only


@pytest.mark.parametrize("machine", [ThreadRecordingCounter, InMemoryCounter])
def test_only_a_state_machine_that_never_blocks_runs_on_the_nodes_dispatcher(
    machine: type[ThreadRecordingCounter],
) -> None:
    state_machine = machine()
    node = start_one(state_machine)
    try:
        assert node.wait_for_leader(timeout=WAIT) == ME
        assert node.apply(b"5").get(timeout=WAIT) == 5
        assert node.read(b"value").get(timeout=WAIT) == 5
        dispatcher = node._threads.dispatcher.thread.ident
        assert len(state_machine.threads) == 1
        assert (state_machine.threads == {dispatcher}) is (not machine.blocking)
    finally:
        node.stop()


def test_a_timeout_is_one_type_for_every_wait(readable: RaftNode) -> None:
    never: RaftFuture[int] = RaftFuture()
    with pytest.raises(RaftTimeoutError) as info:
        never.get(timeout=0.01)
    assert isinstance(info.value, TimeoutError)
    with pytest.raises(TimeoutError):  # and the pykka.Timeout of old code still catches it
        never.get(timeout=0.01)


def test_leadership_is_read_without_asking_the_node(readable: RaftNode) -> None:
    assert readable.is_leader and readable.leader_id == ME
    assert readable.leadership.term == readable.status().term
    # Published, not asked: these answer while the Node's thread is busy elsewhere.
    started = time.monotonic()
    for _ in range(10_000):
        assert readable.is_leader
    assert time.monotonic() - started < WAIT


def test_apply_and_read_after_stop_fail_their_futures() -> None:
    node = start_one(ReadableCounter())
    node.wait_for_leader(timeout=WAIT)
    node.stop()
    for future in (node.apply(b"1"), node.read(b"value"), node.read(b"value", "serializable")):
        with pytest.raises(NodeStoppedError):
            future.get(timeout=WAIT)
    assert node.leadership.role == "shutdown" and not node.is_leader


def test_followers_hear_whom_they_follow_and_a_stopped_leader_hears_it_stopped(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    term = cluster.sm(leader).leader_term
    followers = [p for p in cluster.ids if p != leader]
    cluster.wait_until(
        lambda: all(cluster.sm(p).following[-1:] == [f"follow {leader} {term}"] for p in followers),
        "both followers following the leader",
    )
    cluster.apply(b"x")
    cluster.wait_applied(1)
    # Each peer saw the leader's first entry (a configuration) and nothing else yet.
    for peer in cluster.ids:
        assert [voters for _, voters in cluster.sm(peer).confs][-1] == sorted(cluster.ids)
    leader_sm = cluster.sm(leader)
    cluster.crash(leader)
    assert leader_sm.events[-3:] == [f"start {term}", f"stop {term}", "shutdown"]
    new_leader = cluster.wait_for_leader()
    new_term = cluster.sm(new_leader).leader_term
    [other] = [p for p in followers if p != new_leader]
    cluster.wait_until(
        lambda: cluster.sm(other).following[-1:] == [f"follow {new_leader} {new_term}"],
        "the other follower following the new leader",
    )
    # Pairs: every follow ended before the next began, and the new leader stopped following.
    for peer in followers:
        log = cluster.sm(peer).following
        assert log[0] == f"follow {leader} {term}" and log[1] == f"unfollow {leader} {term}"
    assert cluster.sm(new_leader).following[-1].startswith("unfollow ")
