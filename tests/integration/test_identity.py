"""A cluster's identity (actors/identity.py) through real peer processes: a voter cut off while
the membership moved past it rejoins by itself, and a peer holding another cluster's data on a
reused address is never mixed into the cluster there."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.service.local_peer import LocalPeer
from actors.service.peer import PeerConfig
from tests.integration.conftest import ELECTION_TIMEOUT_MS, WAIT, ServiceCluster, wait_until
from tests.integration.test_membership import _admin, _agreed, _join, _statuses
from transport.client import KVClient

pytestmark = pytest.mark.integration


def test_a_voter_cut_off_while_membership_moved_on_rejoins_by_itself(tmp_path: Path) -> None:
    cluster = ServiceCluster(3, tmp_path / "data")
    try:
        cluster.start()
        a, b, c = cluster.ids
        with cluster.client() as client:
            client.put("before", "1")
        [cluster_id] = {s["cluster_id"] for s in cluster.statuses()}
        assert cluster_id
        cluster.peers[c].pause()  # SIGSTOP: cut off, its log names only A, B and C
        d, e = _join(cluster, [a, b]), _join(cluster, [a, b])
        with _admin([a, b]) as admin:
            admin.add_peer(d)
            admin.add_peer(e)
            admin.remove_peer(a)
            admin.remove_peer(b)
        for gone in (a, b):
            cluster.peers[gone].kill()  # every peer C's log names but itself is gone
        _agreed([d, e], {c, d, e})
        with KVClient([d, e], timeout=WAIT, attempt_timeout=0.5) as client:
            client.put("while-away", "2")
        assert {s["cluster_id"] for s in _statuses([d, e])} == {cluster_id}  # adopted
        cluster.peers[c].resume()
        # C's log has never named its leader (D or E): only the cluster id vouches for it.
        _agreed([c, d, e], {c, d, e})
        [seen] = _statuses([c])
        assert seen["leader"] in (d, e) and not seen.get("rejected")
        with KVClient([c], timeout=WAIT, attempt_timeout=0.5) as client:
            assert client.get("while-away", consistency="serializable") == "2"
    finally:
        cluster.shutdown()


def test_a_peer_of_another_cluster_on_a_reused_address_is_never_mixed_in(tmp_path: Path) -> None:
    old = ServiceCluster(3, tmp_path / "old")
    try:
        old.start()
        with old.client() as client:
            client.put("k", "old")
        statuses = old.statuses()
        [old_id] = {s["cluster_id"] for s in statuses}
        [old_last] = {s["last_log_index"] for s in statuses if s["id"] == old.ids[2]}
    finally:
        old.shutdown()
    # A new cluster on the same three addresses: two fresh peers, and (a misconfiguration) the
    # third address served from the old cluster's data directory.
    p1, p2, p3 = old.ids
    new_dir = tmp_path / "new"
    peers = {
        p: LocalPeer(
            PeerConfig(p, tuple(old.ids), new_dir, ELECTION_TIMEOUT_MS, cluster_token="new"),
            log_path=new_dir / "logs" / f"{p.rsplit(':', 1)[1]}.log",
        )
        for p in (p1, p2)
    }
    peers[p3] = LocalPeer(old.peers[p3].config, log_path=tmp_path / "old-p3-again.log")
    try:
        for peer in peers.values():
            peer.start_and_wait()
        with KVClient([p1, p2], timeout=WAIT, attempt_timeout=0.5) as client:
            client.put("k", "new")
            client.put("more", "x")
            new_id = {s["cluster_id"] for s in client.status() if s["id"] in (p1, p2)}
            assert len(new_id) == 1 and old_id not in new_id

        def refused_both_ways() -> dict[str, int] | None:
            statuses = {s["id"]: s for s in _statuses(list(peers))}
            old_peer = statuses[p3].get("rejected", {})
            new_side = [statuses[p].get("rejected", {}) for p in (p1, p2)]
            heard = old_peer.get("append_entries_from_other_cluster", 0)
            voted = sum(r.get("vote_request_from_other_cluster", 0) for r in new_side)
            return {"heard": heard, "voted": voted} if heard and voted else None

        wait_until(refused_both_ways, "both clusters to refuse each other", WAIT)
        [p3_status] = _statuses([p3])
        assert p3_status["cluster_id"] == old_id and p3_status["leader"] is None
        # Its log is the old cluster's, untouched: no entry of the new one reached it.
        assert (p3_status["conf"], p3_status["last_log_index"]) == (sorted(old.ids), old_last)
    finally:
        for peer in peers.values():
            peer.kill()
