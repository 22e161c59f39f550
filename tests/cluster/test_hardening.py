"""Whole clusters under the faults of the hardening review: a raising actor, a hostile sender,
degenerate and oversized proposals, shutdown with proposals in flight. Each leaves the cluster
serving (or the one bad peer in ERROR, saying why) with nothing acknowledged lost."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

from actors.errors import CommandTooLargeError, RaftError
from actors.messages import LogAppended
from actors.replicator import Replicator
from actors.testing import is_pending
from storage.entry import EntryType, LogEntry
from transport.rpc import AppendEntriesRequest, RequestVoteRequest, RequestVoteResponse

from .conftest import WAIT, MakeCluster
from .test_cluster import assert_same_prefix


def test_an_empty_batch_is_a_no_op_and_the_leader_keeps_serving(make_cluster: MakeCluster) -> None:
    """Reproduced: apply_batch([]) on the leader killed its LogManager; every later write hung
    while status still said `leader`."""
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    assert cluster.node(leader).apply_batch([]) == []
    assert cluster.node(leader).apply(b"after").get(timeout=WAIT) > 0
    assert cluster.node(leader).status().is_leader


def test_a_raising_actor_puts_its_peer_in_error_and_the_rest_serve_on(
    make_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No silently dead actor: the leader's Replicator raises once; the whole peer enters ERROR
    at once (stops heartbeating, so the others elect a new leader), says why, and nothing that
    was acknowledged is lost."""
    cluster = make_cluster(3)
    old = cluster.wait_for_leader()
    acked = [cluster.apply(f"before-{n}".encode()) for n in range(10)]
    original = Replicator._handlers[LogAppended]
    armed = threading.Event()
    armed.set()

    def explode_once(replicator: Replicator, msg: LogAppended) -> None:
        if armed.is_set():
            armed.clear()
            raise RuntimeError("replicator bug")
        original(replicator, msg)

    monkeypatch.setitem(Replicator._handlers, LogAppended, explode_once)
    doomed = cluster.node(old).apply(b"doomed")
    cluster.wait_until(lambda: bool(cluster.peers[old].errors), "the leader to enter ERROR")
    assert "replicator bug" in cluster.peers[old].errors[0]
    status = cluster.node(old).status()
    assert status.role == "error" and "Replicator" in (status.error or "")
    try:
        doomed.get(timeout=WAIT)  # the other Replicator may have got it committed first
    except RaftError as error:
        assert error.outcome_unknown  # appended before the failure: it may still commit
    others = [p for p in cluster.ids if p != old]
    new = cluster.wait_for_leader(among=others)
    assert new != old
    acked.append(cluster.apply(b"after"))
    cluster.wait_applied(11, others)
    applied = {index for index, _ in assert_same_prefix(cluster, others)}
    assert set(acked) <= applied
    assert cluster.node(old).status().role == "error"  # it stays there until restarted


def test_a_hostile_sender_is_neither_followed_nor_believed(make_cluster: MakeCluster) -> None:
    """Reproduced: AppendEntries(term=7, leader_id="evil:9") from a stranger made a peer follow
    it, adopt its term, commit and apply an injected entry."""
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    cluster.apply(b"honest")
    terms = {p: cluster.node(p).status().term for p in cluster.ids}
    evil = cluster.network.endpoint("evil:9")
    evil.start(lambda message: None)
    injected = (LogEntry(1, 7, EntryType.DATA, b"injected"),)
    for peer in cluster.ids:
        evil.send(peer, AppendEntriesRequest(7, "evil:9", 0, 0, injected, 1, 1))
        evil.send(peer, RequestVoteRequest(99, "evil:9", 10**6, 98, False))
        evil.send(peer, RequestVoteResponse(99, True, False, "evil:9", 99))
    cluster.apply(b"still honest")
    for peer in cluster.ids:
        status = cluster.node(peer).status()
        assert status.term == terms[peer] and status.leader == leader
        assert status.rejected["append_entries_from_non_member"] == 1
        assert status.rejected["vote_request_from_non_member"] == 1
        assert b"injected" not in [data for _, data in cluster.applied(peer)]


def test_an_oversized_command_is_refused_at_apply_and_replication_goes_on(
    make_cluster: MakeCluster,
) -> None:
    """A command larger than one message can carry used to be retried for ever, so that
    nothing after it ever committed. It is refused at once, definitely."""
    cluster = make_cluster(3, max_command_bytes=64 * 1024)
    leader = cluster.wait_for_leader()
    with pytest.raises(CommandTooLargeError) as info:
        cluster.node(leader).apply(b"x" * (64 * 1024 + 1)).get(timeout=WAIT)
    assert info.value.outcome_unknown is False
    index = cluster.apply(b"small")
    cluster.wait_applied(1)
    assert all(cluster.applied(p)[-1] == (index, b"small") for p in cluster.ids)


def test_stop_settles_every_future_even_with_proposals_in_flight(
    make_cluster: MakeCluster,
) -> None:
    """Shutdown completes every future it leaves behind, the queued Apply messages included;
    none is left pending for ever. The FSMCaller stops before storage closes."""
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    node = cluster.node(leader)
    futures: list[pykka.Future[Any]] = []
    stop_proposing = threading.Event()

    def propose() -> None:
        # Well below max_pending_entries, so that none is refused as overload.
        while not stop_proposing.is_set() and len(futures) < 8000:
            futures.extend(node.apply_batch([b"p"] * 16))

    proposer = threading.Thread(target=propose)
    proposer.start()

    def applying_with_more_in_flight() -> bool:
        # Some proposals applied (the stop must not lose those) and many more still in flight.
        return len(futures) > 2000 and not is_pending(futures[0])

    cluster.wait_until(applying_with_more_in_flight, "proposals applied and more in flight")
    cluster.crash(leader)  # RaftNode.stop, concurrently with the proposer
    stop_proposing.set()
    proposer.join(WAIT)
    outcomes: list[str] = []
    for future in futures:
        try:
            future.get(timeout=WAIT)  # a pending future would time out here
            outcomes.append("applied")
        except RaftError as error:
            outcomes.append(type(error).__name__)
    assert "applied" in outcomes
    assert set(outcomes) <= {"applied", "NodeStoppedError", "LeadershipLostError", "NotLeaderError"}
    assert cluster.peers[leader].errors == []  # a clean stop, not a crash
