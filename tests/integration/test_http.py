"""The operators' HTTP face of real peer processes: /health, /status, /metrics and the page."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import launcher
from actors.service.local_peer import LocalPeer
from actors.service.peer import PeerConfig
from transport.client import KVClient
from transport.security import generate_keys

from .conftest import ELECTION_TIMEOUT_MS, WAIT, free_ports, wait_until

pytestmark = pytest.mark.integration


def get(url: str, authorization: str | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url)
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[list[str], dict[str, str], dict[str, LocalPeer]]]:
    ports = free_ports(6)
    ids = [f"127.0.0.1:{port}" for port in ports[:3]]
    http = {peer: f"127.0.0.1:{port}" for peer, port in zip(ids, ports[3:], strict=True)}
    peers = {
        peer: LocalPeer(
            PeerConfig(peer, tuple(ids), tmp_path, ELECTION_TIMEOUT_MS, http=http[peer]),
            log_path=tmp_path / "logs" / f"{port}.log",
        )
        for peer, port in zip(ids, ports, strict=False)
    }
    try:
        for peer in peers.values():
            peer.start()
        for peer in peers.values():
            peer.wait_ready()
        yield ids, http, peers
    finally:
        for peer in peers.values():
            peer.kill()


def test_health_status_metrics_and_page(
    cluster: tuple[list[str], dict[str, str], dict[str, LocalPeer]],
) -> None:
    ids, http, peers = cluster
    with KVClient(ids, timeout=WAIT) as client:
        for n in range(10):
            client.put(f"k{n}", "v")

    def all_healthy() -> bool:
        return all(get(f"http://{http[p]}/health")[0] == 200 for p in ids)

    wait_until(all_healthy, "every peer healthy", WAIT)

    def agreed() -> dict[str, dict[str, object]] | None:
        # Followers learn the commit index with the leader's next heartbeat: wait for it.
        statuses = {p: json.loads(get(f"http://{http[p]}/status")[2]) for p in ids}
        leaders = {s["leader"] for s in statuses.values()}
        committed = all(s["commit_index"] >= 10 for s in statuses.values())
        return statuses if len(leaders) == 1 and committed else None

    statuses = wait_until(agreed, "the peers' /status to agree", WAIT)
    assert {s["id"] for s in statuses.values()} == set(ids)
    leader = next(p for p, s in statuses.items() if s["role"] == "leader")
    assert all(s["leader"] == leader for s in statuses.values())
    code, content_type, body = get(f"http://{http[leader]}/metrics")
    assert code == 200 and content_type.startswith("text/plain")
    text = body.decode()
    assert 'pykka_raft_role{role="leader"} 1.0' in text
    assert "pykka_raft_commit_index" in text and "pykka_raft_process_resident_memory_bytes" in text
    for follower in (p for p in ids if p != leader):
        assert f'pykka_raft_follower_lag_entries{{peer="{follower}"}}' in text
    code, content_type, page = get(f"http://{http[leader]}/")
    assert code == 200 and content_type.startswith("text/html") and b"/status" in page
    # Alone, a peer knows no leader for long: its health says so.
    survivor = next(p for p in ids if p != leader)
    for peer_id in ids:
        if peer_id != survivor:
            peers[peer_id].kill()

    def unhealthy() -> bool:
        code, _, body = get(f"http://{http[survivor]}/health")
        return code == 503 and json.loads(body)["healthy"] is False

    wait_until(unhealthy, "the lone survivor to report itself unhealthy", WAIT)


def test_the_cluster_form_gives_peer_i_port_n_plus_i() -> None:
    args = launcher.parse_args(
        ["run", "--peers", "10.0.0.1:7001,10.0.0.2:7001,10.0.0.3:7001", "--http-base-port", "9100"]
    )
    peers = ["10.0.0.1:7001", "10.0.0.2:7001", "10.0.0.3:7001"]
    assert [launcher._peer_config(args, p, peers).http for p in peers] == [
        "10.0.0.1:9100",
        "10.0.0.2:9101",
        "10.0.0.3:9102",
    ]


def test_with_keys_status_and_metrics_need_the_token_and_health_stays_open(
    tmp_path: Path,
) -> None:
    port, http_port = free_ports(2)
    peer_id, http = f"127.0.0.1:{port}", f"127.0.0.1:{http_port}"
    keys = tmp_path / "keys"
    generate_keys(keys, [peer_id])
    token = (keys / "http" / "token").read_text().strip()
    assert (keys / "http" / "token").stat().st_mode & 0o077 == 0  # the owner's only
    config = PeerConfig(peer_id, (peer_id,), tmp_path, ELECTION_TIMEOUT_MS, http=http, keys=keys)
    peer = LocalPeer(config, log_path=tmp_path / "peer.log")
    try:
        peer.start_and_wait()
        wait_until(lambda: get(f"http://{http}/health")[0] == 200, "the peer healthy", WAIT)
        for path in ("/status", "/metrics", "/"):
            assert get(f"http://{http}{path}")[0] == 401, path
            assert get(f"http://{http}{path}", "Bearer wrong-token-0123456789")[0] == 401
        code, _, body = get(f"http://{http}/status", f"Bearer {token}")
        assert code == 200 and json.loads(body)["id"] == peer_id
        assert get(f"http://{http}/metrics", f"Bearer {token}")[0] == 200
    finally:
        peer.kill()
