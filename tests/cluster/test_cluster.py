"""Whole clusters in one process, over the in-memory transport and storage (real threads).

Each test names the Raft property it checks. Commands carry unique payloads so that a lost,
duplicated or reordered command shows in the applied sequences.
"""

from __future__ import annotations

import pytest

from actors.errors import LeadershipLostError, NotLeaderError

from .conftest import WAIT, Cluster, MakeCluster


def assert_same_prefix(cluster: Cluster, peers: list[str]) -> list[tuple[int, bytes]]:
    """State Machine Safety: no two peers apply different commands at one index."""
    logs = {p: cluster.applied(p) for p in peers}
    longest = max(logs.values(), key=len)
    for peer, applied in logs.items():
        assert applied == longest[: len(applied)], f"{peer} diverged"
    indexes = [index for index, _ in longest]
    assert indexes == sorted(set(indexes)), "applied out of order or twice"
    return longest


@pytest.mark.parametrize("size", [3, 5])
def test_leader_elected_and_commands_applied_identically_everywhere(
    make_cluster: MakeCluster, size: int
) -> None:
    cluster = make_cluster(size)
    leader = cluster.wait_for_leader()
    node = cluster.node(leader)
    futures = [node.apply(f"cmd-{n}".encode()) for n in range(200)]
    indexes = [f.get(timeout=WAIT) for f in futures]
    assert indexes == sorted(indexes) and len(set(indexes)) == 200
    cluster.wait_applied(200)
    applied = assert_same_prefix(cluster, cluster.ids)
    assert [data for _, data in applied] == [f"cmd-{n}".encode() for n in range(200)]
    status = node.status()
    assert status.is_leader and status.commit_index >= indexes[-1]


def test_follower_refuses_commands_with_a_leader_hint(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    cluster.apply(b"first")  # followers learn the leader from its AppendEntries
    follower = next(p for p in cluster.ids if p != leader)
    cluster.wait_until(lambda: cluster.node(follower).leader_id == leader, "leader known")
    with pytest.raises(NotLeaderError) as info:
        cluster.node(follower).apply(b"x").get(timeout=WAIT)
    assert info.value.leader_hint == leader


def test_leader_crash_elects_new_leader_without_losing_committed(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    old = cluster.wait_for_leader()
    acked = [cluster.apply(f"before-{n}".encode()) for n in range(20)]
    cluster.crash(old)
    new = cluster.wait_for_leader()
    assert new != old
    acked += [cluster.apply(f"after-{n}".encode()) for n in range(20)]
    cluster.restart(old)
    cluster.wait_applied(40, cluster.ids)
    applied = assert_same_prefix(cluster, cluster.ids)
    applied_indexes = {index for index, _ in applied}
    assert set(acked) <= applied_indexes  # Leader Completeness: nothing acknowledged is lost


def test_partitioned_minority_leader_cannot_commit_and_steps_down(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(3)
    old = cluster.wait_for_leader()
    cluster.apply(b"committed")
    cluster.isolate(old)
    stranded = cluster.node(old).apply(b"stranded")
    majority = [p for p in cluster.ids if p != old]
    new = cluster.wait_for_leader(among=majority)
    # Check-quorum: the old leader gives up within its lease, so its command fails with an
    # unknown outcome (it might have committed) instead of hanging.
    with pytest.raises(LeadershipLostError):
        stranded.get(timeout=WAIT)
    cluster.wait_until(lambda: cluster.sm(old).leader_term is None, "old leader stepped down")
    assert not cluster.node(old).status().is_leader
    cluster.apply(b"after-partition")
    cluster.heal()
    cluster.wait_applied(2, cluster.ids)
    applied = assert_same_prefix(cluster, cluster.ids)
    assert b"stranded" not in [data for _, data in applied]  # it never reached a majority
    assert cluster.node(new).status().term > 0


def test_divergent_follower_log_is_repaired(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(5)
    old = cluster.wait_for_leader()
    cluster.apply(b"base")
    cluster.isolate(old)
    # Appended to the isolated leader's log only: a suffix that must be overwritten.
    stray = [cluster.node(old).apply(f"stray-{n}".encode()) for n in range(10)]
    majority = [p for p in cluster.ids if p != old]
    cluster.wait_for_leader(among=majority)
    acked = [cluster.apply(f"new-{n}".encode()) for n in range(10)]
    for future in stray:
        with pytest.raises(LeadershipLostError):
            future.get(timeout=WAIT)
    cluster.heal()
    cluster.wait_applied(11, cluster.ids)
    applied = assert_same_prefix(cluster, cluster.ids)
    payloads = [data for _, data in applied]
    assert not any(p.startswith(b"stray") for p in payloads)
    assert {index for index, _ in applied} >= set(acked)


def test_restarted_follower_catches_up_from_its_durable_log(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    cluster.apply(b"one")
    follower = next(p for p in cluster.ids if p != leader)
    cluster.wait_applied(1, [follower])
    cluster.crash(follower)
    for n in range(30):
        cluster.apply(f"while-down-{n}".encode())
    cluster.restart(follower)
    cluster.wait_applied(31, cluster.ids)
    assert_same_prefix(cluster, cluster.ids)
