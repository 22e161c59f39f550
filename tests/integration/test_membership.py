"""Membership changes through real peer processes, under concurrent writes: grow 3 -> 5 and
shrink back, replace a kill -9'ed peer by a new one on a new port, remove the leader, learners,
restarts with and without --join, and the CLI. After each: every acknowledged write is there,
and every member agrees on the configuration."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actors.service.local_peer import LocalPeer
from actors.service.peer import PeerConfig
from tests.integration.conftest import (
    ELECTION_TIMEOUT_MS,
    WAIT,
    ServiceCluster,
    free_ports,
    wait_until,
)
from tests.integration.test_transfer import Writer
from transport.client import AdminClient, ClientTimeout, CommandError, KVClient
from transport.security import generate_keys

pytestmark = pytest.mark.integration

MakeService = Callable[..., ServiceCluster]


def _join(cluster: ServiceCluster, contacts: list[str]) -> str:
    """Start a brand-new peer on a new port with --join; it is killed with the cluster."""
    [peer_id] = [f"127.0.0.1:{port}" for port in free_ports(1)]
    data_dir = next(iter(cluster.peers.values())).config.data_dir
    if cluster.keys is not None:
        generate_keys(cluster.keys, [peer_id])  # `launcher.py keygen`, into the shared directory
    config = PeerConfig(
        peer_id, tuple(contacts), data_dir, ELECTION_TIMEOUT_MS, keys=cluster.keys, join=True
    )
    peer = LocalPeer(config, log_path=data_dir / "logs" / f"{config.peer_dir.name}.log")
    cluster.peers[peer_id] = peer
    peer.start_and_wait()
    return peer_id


def _admin(peers: list[str], keys: Path | None = None) -> AdminClient:
    return AdminClient(peers, timeout=WAIT, attempt_timeout=0.5, keys=keys)


def _statuses(peers: list[str], keys: Path | None = None) -> list[dict[str, Any]]:
    with KVClient(peers, timeout=1.0, attempt_timeout=0.5, keys=keys) as client:
        return client.status()


def _agreed(
    peers: list[str],
    voters: set[str],
    learners: frozenset[str] = frozenset(),
    keys: Path | None = None,
) -> None:
    """Wait until every peer of `peers` is up and reports exactly this configuration, not
    joint, from the same configuration entry, which it knows is committed."""

    def settled() -> bool:
        statuses = _statuses(peers, keys)
        if len(statuses) != len(peers) or len({s["conf_index"] for s in statuses}) != 1:
            return False
        return all(
            set(s["conf"]) == voters
            and set(s.get("learners", ())) == learners
            and not s.get("old_conf")
            and s["commit_index"] >= s["conf_index"]  # and it is committed there
            for s in statuses
        )

    try:
        wait_until(settled, f"{sorted(peers)} agreeing on voters {sorted(voters)}", WAIT)
    except TimeoutError as timeout:
        shown = ("id", "role", "term", "conf", "learners", "old_conf", "conf_index", "commit_index")
        seen = [{k: s.get(k) for k in shown} for s in _statuses(peers, keys)]
        raise AssertionError(f"{timeout}; they report {seen}") from None


def _leader(peers: list[str]) -> str:
    """The one peer of `peers` that leads, once every one of them names it."""

    def agreed() -> str | None:
        statuses = _statuses(peers)
        leaders = [s["id"] for s in statuses if s.get("role") == "leader"]
        named = {s.get("leader") for s in statuses}
        return leaders[0] if len(statuses) == len(peers) and named == set(leaders[:1]) else None

    found: str = wait_until(agreed, f"a leader agreed by {sorted(peers)}", WAIT)
    return found


def _check_writes(peers: list[str], acked: list[int]) -> None:
    assert len(acked) >= 10, "the writer hardly wrote"
    with KVClient(peers, timeout=WAIT, attempt_timeout=0.5) as reader:
        assert [reader.get(f"k{n}") for n in acked] == [f"v{n}" for n in acked]


def test_grow_three_to_five_and_shrink_back_under_writes(service: MakeService) -> None:
    cluster = service(3)
    first = list(cluster.ids)
    writer = Writer(cluster)  # its client knows only the first three
    writer.start()
    try:
        d, e = _join(cluster, first), _join(cluster, first)
        with _admin(first) as admin:
            assert set(admin.add_peer(d)["voters"]) == {*first, d}
            assert set(admin.add_peer(e)["voters"]) == {*first, d, e}
            _agreed([*first, d, e], {*first, d, e})
            leader = _leader([*first, d, e])
            # Shrink by the first two peers, the leader among them if it is one.
            gone = sorted({leader, first[0]} if leader in first else set(first[:2]))[:2]
            for peer in gone:
                result = admin.remove_peer(peer)
                assert peer not in result["voters"]
        remaining = [p for p in [*first, d, e] if p not in gone]
        _agreed(remaining, set(remaining))
    finally:
        acked = writer.finish()
    _check_writes(remaining, acked)


def test_replace_a_killed_peer_by_a_new_one_on_a_new_port(service: MakeService) -> None:
    cluster = service(3)
    writer = Writer(cluster)
    writer.start()
    try:
        leader = cluster.leader()
        dead = next(p for p in cluster.ids if p != leader)
        cluster.peers[dead].kill()  # kill -9: its disk is as good as gone
        fresh = _join(cluster, cluster.ids)
        with _admin(cluster.ids) as admin:
            admin.add_peer(fresh)
            result = admin.remove_peer(dead)
        voters = {*cluster.ids, fresh} - {dead}
        assert set(result["voters"]) == voters
        _agreed(sorted(voters), voters)
    finally:
        acked = writer.finish()
    _check_writes(sorted(voters), acked)


def test_remove_the_leader_then_restart_an_added_peer_with_and_without_join(
    service: MakeService,
) -> None:
    cluster = service(3)
    writer = Writer(cluster)
    writer.start()
    try:
        d = _join(cluster, cluster.ids)
        with _admin(cluster.ids) as admin:
            admin.add_peer(d)
            leader = cluster.leader()
            result = admin.remove_peer(leader)
        voters = {*cluster.ids, d} - {leader}
        assert set(result["voters"]) == voters
        new_leader = _leader(sorted(voters))
        assert new_leader != leader
        _agreed(sorted(voters), voters)
        # The removed leader is up and stays out of the way: it never campaigns.
        removed = next(s for s in _statuses([leader]))
        assert removed["role"] == "follower"
        # The added peer restarts from its own durable configuration, with --join or without
        # (then --peers must name it, and its --peers list is only hints either way).
        for join in (True, False):
            peer = cluster.peers[d]
            peer.stop()
            config = peer.config
            peers = config.peers if join else (*config.peers, d)
            restarted = LocalPeer(
                PeerConfig(d, peers, config.data_dir, ELECTION_TIMEOUT_MS, join=join),
                log_path=config.data_dir / "logs" / f"{config.peer_dir.name}-{join}.log",
            )
            cluster.peers[d] = restarted
            restarted.start_and_wait()
            _agreed(sorted(voters), voters)
    finally:
        acked = writer.finish()
    _check_writes(sorted(voters), acked)
    [removed_now], [d_now] = _statuses([leader]), _statuses([d])
    assert removed_now["term"] <= d_now["term"]  # it never campaigned since


def test_a_restarted_peer_uses_its_durable_configuration_not_its_flags(
    service: MakeService, tmp_path: Path
) -> None:
    cluster = service(3)
    first = list(cluster.ids)
    d = _join(cluster, first)
    with _admin(first) as admin:
        admin.add_peer(d)
    _agreed([*first, d], {*first, d})
    # Every original peer restarts with --peers naming only the first three.
    for peer_id in first:
        cluster.peers[peer_id].stop()
        cluster.peers[peer_id] = LocalPeer(
            cluster.peers[peer_id].config, log_path=tmp_path / f"again-{peer_id[-5:]}.log"
        )
        cluster.peers[peer_id].start_and_wait()
    _agreed([*first, d], {*first, d})
    # A client that knows only the added peer finds the leader through it.
    with KVClient([d], timeout=WAIT, attempt_timeout=0.5) as client:
        client.put("after", "restart")
        assert client.get("after") == "restart"


def test_learners_and_the_cli(service: MakeService) -> None:
    cluster = service(3)
    d = _join(cluster, cluster.ids)

    admin = cluster.admin_cli
    added = admin("add-learner", d)
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["learners"] == [d]
    _agreed([*cluster.ids, d], set(cluster.ids), frozenset({d}))
    members = json.loads(admin("members").stdout)
    assert (set(members["voters"]), members["learners"]) == (set(cluster.ids), [d])
    # A learner holds the data but never counts: kill it and writes go on.
    with KVClient(cluster.ids, timeout=WAIT, attempt_timeout=0.5) as client:
        client.put("x", "1")
        cluster.peers[d].kill()
        client.put("y", "2")
        cluster.peers[d].start_and_wait()
        promoted = admin("promote", d)
        assert promoted.returncode == 0, promoted.stderr
        assert d in json.loads(promoted.stdout)["voters"]
        _agreed([*cluster.ids, d], {*cluster.ids, d})
        assert client.get("y") == "2"
    unknown = admin("remove-peer", "127.0.0.1:1")
    assert unknown.returncode == 1 and "UnknownPeerError" in unknown.stderr
    bad = admin("add-peer", "not-a-peer")
    assert bad.returncode == 2
    with _admin(cluster.ids) as client, pytest.raises(CommandError, match="UnknownPeerError"):
        client.promote("127.0.0.1:1")


def test_a_peer_that_cannot_catch_up_fails_the_change_and_nothing_changes(
    service: MakeService,
) -> None:
    cluster = service(3)
    [nobody] = [f"127.0.0.1:{port}" for port in free_ports(1)]  # no process listens there
    with _admin(cluster.ids) as admin:
        with pytest.raises(CommandError, match="CatchUpError"):
            admin.add_peer(nobody)
        assert set(admin.members()["voters"]) == set(cluster.ids)
    _agreed(cluster.ids, set(cluster.ids))


def test_with_priorities_the_highest_live_peer_is_elected(tmp_path: Path) -> None:
    """Whoever leads first (a peer that starts early may win before the others are up), each
    election among live peers picks the highest priority of them."""
    cluster = ServiceCluster(3, tmp_path / "data")
    priorities = dict(zip(cluster.ids, (1, 5, 3), strict=True))
    for peer_id, peer in list(cluster.peers.items()):
        config = dataclasses.replace(peer.config, priority=priorities[peer_id])
        cluster.peers[peer_id] = LocalPeer(config, log_path=peer.log_path)
    try:
        cluster.start()
        with KVClient(cluster.ids, timeout=WAIT, attempt_timeout=0.5) as client:
            for round_ in range(2):
                leader = cluster.leader()
                client.put("k", str(round_))
                cluster.peers[leader].kill()
                rest = [p for p in cluster.ids if p != leader]
                elected = _leader(rest)
                assert priorities[elected] == max(priorities[p] for p in rest)
                cluster.peers[leader].start_and_wait()
            assert client.get("k") == "1"
    finally:
        cluster.shutdown()


def test_with_keys_a_new_peer_is_added_once_its_key_is_in_the_directory(
    service: MakeService, tmp_path: Path
) -> None:
    """The running peers read the key directory again for a key they do not hold: no
    restart is needed to add a peer whose key was generated after they started."""
    keys = tmp_path / "keys"
    cluster = service(3, keys=keys)
    d = _join(cluster, cluster.ids)
    with _admin(cluster.ids, keys) as admin:
        assert d in admin.add_peer(d)["voters"]
    _agreed([*cluster.ids, d], {*cluster.ids, d}, keys=keys)
    with KVClient([d], timeout=WAIT, attempt_timeout=0.5, keys=keys) as client:
        client.put("k", "v")
        assert client.get("k") == "v"


def test_a_long_lived_client_follows_a_complete_change_of_membership(
    service: MakeService,
) -> None:
    cluster = service(3)
    first = list(cluster.ids)
    client = cluster.client()  # knows A, B and C only, and is in use throughout
    client.put("before", "1")
    new = [_join(cluster, first) for _ in range(3)]
    with _admin(first) as admin:
        for n, peer in enumerate(new):
            admin.add_peer(peer)
            client.put(f"added{n}", "x")
        for n, peer in enumerate(first):
            admin.remove_peer(peer)
            client.put(f"removed{n}", "x")
    _agreed(new, set(new))
    for peer in first:
        cluster.peers[peer].kill()  # the old peers are gone for good
    client.put("after", "2")
    assert (client.get("before"), client.get("after")) == ("1", "2")
    assert set(new) <= set(client.peers)


@pytest.mark.parametrize("sync", [True, False], ids=["synced", "unsynced"])
def test_an_idle_client_finds_the_cluster_after_a_complete_change_of_membership(
    service: MakeService, sync: bool
) -> None:
    """Idle while every peer it knew was replaced: its background sync kept up (etcd's
    AutoSyncInterval). Without the sync it cannot find the cluster, and says whom it tried."""
    cluster = service(3)
    first = list(cluster.ids)
    cluster.client().put("before", "1")
    interval = 0.2 if sync else None
    idle = KVClient(
        first, timeout=3.0, attempt_timeout=0.5, keys=cluster.keys, sync_interval=interval
    )
    cluster.clients.append(idle)  # closed by the fixture, even on failure
    new = [_join(cluster, first) for _ in range(3)]
    with _admin(first, cluster.keys) as admin:
        for peer in new:
            admin.add_peer(peer)
        for n, peer in enumerate(first):
            admin.remove_peer(peer)
            # One step at a time, so that the idle client's syncs see each configuration.
            voters = {*new, *first[n + 1 :]}
            _agreed(sorted(voters), voters, keys=cluster.keys)
    for peer in first:
        cluster.peers[peer].kill()  # every peer the idle client was given is gone
    if sync:
        wait_until(lambda: set(idle.peers) == set(new), "the idle client to sync", WAIT)
        assert idle.get("before") == "1"
    else:
        with pytest.raises(ClientTimeout) as excinfo:
            idle.get("before")
        assert all(f"{peer}: no answer" in str(excinfo.value) for peer in first)
