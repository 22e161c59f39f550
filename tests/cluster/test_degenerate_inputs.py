"""Every public entry point driven with empty and degenerate arguments: each is a no-op or a
clear error, never a dead actor or a hang (the hardening review found apply_batch([]) killing
the leader's LogManager)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pykka
import pytest

from actors.configuration import Configuration
from actors.errors import NodeStoppedError, OptionsError
from actors.options import NodeOptions, RaftOptions
from actors.raft_node import RaftNode
from actors.service.kv_store import KVStateMachine
from actors.testing import RecordingStateMachine
from actors.wait import wait_until
from storage.memory import MemoryLogStorage, MemoryMetaStorage
from transport.client import KVClient, KVError
from transport.memory import MemoryNetwork
from transport.zmq_transport import ZmqTransport

from .conftest import WAIT

ME = "127.0.0.1:7001"


@pytest.fixture
def node() -> Iterator[RaftNode]:
    """A one-peer cluster: it elects itself."""
    raft = RaftOptions(election_timeout=0.2)
    node = RaftNode.start(
        NodeOptions(ME, Configuration.of([ME]), raft),
        RecordingStateMachine(),
        MemoryLogStorage(),
        MemoryMetaStorage(),
        MemoryNetwork().endpoint(ME),
        rng=random.Random(1),
    )
    try:
        assert node.wait_for_leader(timeout=WAIT) == ME
        yield node
    finally:
        node.stop()


def test_raft_node_entry_points_with_degenerate_arguments(node: RaftNode) -> None:
    assert node.apply_batch([]) == []
    assert node.apply_batch([], futures=[]) == []
    assert node.apply(b"").get(timeout=WAIT) > 0  # an empty command is a command
    with pytest.raises(ValueError, match="one future per command"):
        node.apply_batch([b"x"], futures=[])
    with pytest.raises(ValueError, match="one future per command"):
        node.apply_batch([], futures=[pykka.ThreadingFuture()])
    for wrong in (None, "text", bytearray(b"x")):  # refused on the caller's thread
        with pytest.raises(TypeError, match="bytes"):
            node.apply(wrong)  # type: ignore[arg-type]
    assert node.status().role == "leader"  # nothing reached an actor
    assert node.wait_for_leader(timeout=0) == ME
    assert node.is_leader and node.leader_id == ME
    status = node.status()
    assert status.role == "leader" and status.error is None and status.rejected == {}
    node.stop()
    node.stop()  # idempotent
    with pytest.raises(NodeStoppedError) as info:
        node.apply(b"late").get(timeout=WAIT)
    assert info.value.outcome_unknown is False
    assert node.apply_batch([]) == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RaftOptions(election_timeout=0), "election_timeout"),
        (lambda: RaftOptions(max_command_bytes=0), "max_command_bytes"),
        (lambda: RaftOptions(max_command_bytes=1 << 40), "max_command_bytes"),
        (lambda: RaftOptions(max_pending_entries=0), "max_pending_entries"),
        (lambda: RaftOptions(max_pending_bytes=1), "max_pending_bytes"),
        (lambda: NodeOptions("", Configuration.of([ME])), "peer_id"),
        (lambda: NodeOptions(ME, Configuration.of([])), "at least one peer"),
        (lambda: NodeOptions(ME, Configuration.of(["other:1"])), "not in the configuration"),
    ],
)
def test_bad_options_are_refused_at_construction(make: object, message: str) -> None:
    with pytest.raises(OptionsError, match=message):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.put("", "v"),
        lambda c: c.put("k", None),
        lambda c: c.put(1, "v"),
        lambda c: c.put("k" * 5000, "v"),
        lambda c: c.put("k", "v" * (2 * 1024 * 1024)),
        lambda c: c.get(""),
        lambda c: c.delete(""),
        lambda c: c.cas("", None, "v"),
        lambda c: c.cas("k", "v", None),
    ],
)
def test_kv_client_refuses_malformed_operations_before_sending(call: object) -> None:
    # Nobody listens there: a call that reached the network would time out instead.
    with KVClient(["127.0.0.1:1"], timeout=0.2) as client, pytest.raises(ValueError):
        call(client)  # type: ignore[operator]


def test_kv_client_constructor_and_lifecycle() -> None:
    for peers, timeout in (([], 1.0), (["nonsense"], 1.0), (["127.0.0.1:1"], 0.0)):
        with pytest.raises(ValueError):
            KVClient(peers, timeout=timeout)
    client = KVClient(["127.0.0.1:1"], timeout=0.2)
    client.close()
    client.close()
    with pytest.raises(KVError, match="closed"):
        client.get("k")


def test_state_machines_take_an_empty_batch() -> None:
    assert KVStateMachine().on_apply([]) == []
    assert RecordingStateMachine().on_apply([]) == []


def test_a_command_limit_that_does_not_fit_the_transport_is_refused_at_start() -> None:
    """Otherwise an accepted command could never be sent and replication would stall."""
    small = ZmqTransport(ME, "tcp://127.0.0.1:0", [ME], max_frame_size=64 * 1024)
    with pytest.raises(OptionsError, match="does not fit"):
        RaftNode.start(
            NodeOptions(ME, Configuration.of([ME])),
            RecordingStateMachine(),
            MemoryLogStorage(),
            MemoryMetaStorage(),
            small,
        )
    small.stop()


def test_a_transport_that_fails_puts_the_peer_in_error(node: RaftNode) -> None:
    """A peer whose I/O thread died is deaf: it must not go on looking healthy."""
    node._transport_failed("transport I/O thread failed: OSError: boom")
    wait_until(lambda: node.status().role == "error", "ERROR", WAIT)
    assert "I/O thread failed" in (node.status().error or "")
