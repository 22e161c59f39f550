"""Snapshots in real peer processes: compaction on disk, a restart from snapshots, and a follower
that lost its data directory rejoining through InstallSnapshot."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from typing import Any

import pytest

from actors.service.offline import read_peer_disk

from .conftest import WAIT, ServiceCluster, wait_until

pytestmark = pytest.mark.integration
MakeService = Callable[..., ServiceCluster]

# Small, so that a test of a few hundred writes snapshots many times and compacts for real.
SNAPSHOTS = {"snapshot_threshold": 40, "snapshot_log_margin": 10, "snapshot_interval_s": 0.0}


def by_id(cluster: ServiceCluster) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in cluster.statuses()}


def test_a_restart_after_many_snapshots_serves_every_acknowledged_write(
    service: MakeService,
) -> None:
    cluster = service(3, **SNAPSHOTS)
    client = cluster.client()
    acked = {}
    for n in range(300):
        client.put(f"k{n % 120}", f"v{n}")  # overwrites too: the snapshot holds the last value
        acked[f"k{n % 120}"] = f"v{n}"
    statuses = by_id(cluster)
    assert all(s["snapshot_index"] >= 200 for s in statuses.values()), statuses
    assert all(1 < s["first_log_index"] <= s["snapshot_index"] + 1 for s in statuses.values())
    for peer in cluster.peers.values():
        peer.kill()  # kill -9: nothing but what is on disk survives
    cluster.start()
    client = cluster.client()
    assert {key: client.get(key) for key in acked} == acked
    restarted = by_id(cluster)
    assert all(s["first_log_index"] > 1 for s in restarted.values()), restarted


def test_a_follower_whose_data_is_deleted_rejoins_through_install_snapshot(
    service: MakeService,
) -> None:
    cluster = service(3, **SNAPSHOTS)
    client = cluster.client()
    for n in range(150):
        client.put(f"k{n}", f"v{n}")
    leader = cluster.leader()
    follower = next(p for p in cluster.ids if p != leader)
    peer = cluster.peers[follower]
    peer.kill()
    shutil.rmtree(peer.config.peer_dir)
    for n in range(150, 300):
        client.put(f"k{n}", f"v{n}")
    # The leader has compacted what the wiped follower would need from the log.
    assert by_id(cluster)[leader]["first_log_index"] > 1
    peer.start_and_wait()

    def caught_up() -> bool:
        statuses = by_id(cluster)
        mine, theirs = statuses.get(follower), statuses.get(leader)
        return bool(mine and theirs) and mine["applied_index"] >= theirs["commit_index"]

    wait_until(caught_up, "the wiped follower to catch up", WAIT)
    # The leader's log no longer held entry 1, so the empty follower can only have got here by
    # installing the leader's snapshot.
    rejoined = by_id(cluster)[follower]
    assert rejoined["snapshot_index"] > 0 and rejoined["first_log_index"] > 1, rejoined
    client.put("after", "rejoin")  # the cluster keeps serving, with it
    for each in cluster.peers.values():
        each.stop()
    # Each peer's state as a restart rebuilds it from its own disk: its snapshot, then its log.
    leader_disk = read_peer_disk(cluster.peers[leader].config.peer_dir)
    follower_disk = read_peer_disk(peer.config.peer_dir)
    expected = {f"k{n}": f"v{n}" for n in range(300)} | {"after": "rejoin"}
    assert leader_disk.state.data == expected
    assert follower_disk.state.data == expected
    assert follower_disk.snapshot_index > 0 and leader_disk.snapshot_index > 0


def test_admin_snapshot_by_hand_on_the_leader_and_on_a_follower(service: MakeService) -> None:
    cluster = service(3, snapshot_threshold=0, snapshot_interval_s=0.0)  # never by itself
    client = cluster.client()
    for n in range(30):
        client.put(f"k{n}", "v")
    leader = cluster.leader()
    assert all(s["snapshot_index"] == 0 for s in by_id(cluster).values())
    result = cluster.admin_cli("snapshot")
    assert result.returncode == 0, result.stderr
    taken = json.loads(result.stdout)
    assert taken["peer"] == leader and taken["index"] >= 30 and taken["bytes"] > 0
    assert by_id(cluster)[leader]["snapshot_index"] == taken["index"]
    follower = next(p for p in cluster.ids if p != leader)
    on_follower = json.loads(cluster.admin_cli("snapshot", follower).stdout)
    assert on_follower["peer"] == follower and on_follower["index"] >= 30
    # Nothing applied since: the same snapshot again, not a new one.
    again = json.loads(cluster.admin_cli("snapshot", follower).stdout)
    assert again == on_follower
    members = json.loads(cluster.admin_cli("members").stdout)
    assert members == {"leader": leader, "voters": sorted(cluster.ids), "learners": []}


def test_admin_snapshot_of_a_peer_that_is_down_times_out(service: MakeService) -> None:
    cluster = service(3)
    down = cluster.ids[0]
    cluster.peers[down].kill()
    result = cluster.admin_cli("--timeout", "1", "snapshot", down)
    assert result.returncode == 3 and "did not answer" in result.stderr
