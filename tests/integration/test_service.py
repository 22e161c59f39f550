"""The KV service as an operator runs it: real peer processes over ZeroMQ, driven through the
public contract (launcher flags, data layout, KVClient)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors.service.local_peer import LocalPeer
from actors.service.peer import PeerConfig
from transport.client import ClientTimeout, KVClient

from .conftest import ELECTION_TIMEOUT_MS, LAUNCHER, WAIT, ServiceCluster, free_ports, wait_until

pytestmark = pytest.mark.integration
MakeService = Callable[[int], ServiceCluster]


def test_cluster_serves_put_get_cas_delete(service: MakeService) -> None:
    cluster = service(3)
    client = cluster.client()
    assert client.get("k") is None
    assert client.put("k", "v1") is None
    assert client.get("k") == "v1"
    assert client.cas("k", "wrong", "x") is False
    assert client.cas("k", "v1", "v2") is True
    assert client.cas("fresh", None, "a") is True  # expected=None: only if absent
    assert client.cas("fresh", None, "b") is False
    assert client.delete("k") is True
    assert client.delete("k") is False
    assert client.get("k") is None
    statuses = client.status()
    assert [s["id"] for s in statuses] == cluster.ids
    assert sorted(s["pid"] for s in statuses) == sorted(p.pid for p in cluster.peers.values())
    assert sum(s["role"] == "leader" for s in statuses) == 1
    for key in ("term", "leader", "commit_index", "applied_index", "last_log_index"):
        assert all(key in s for s in statuses)


def test_leader_kill9_fails_over_and_restarted_peer_catches_up(service: MakeService) -> None:
    cluster = service(3)
    client = cluster.client()
    for n in range(20):
        client.put(f"before-{n}", str(n))
    old = cluster.leader()
    cluster.peers[old].kill()
    killed_at = time.monotonic()
    client.put("after", "x")  # the client finds the new leader itself
    failover = time.monotonic() - killed_at
    # A new leader serves writes within about two election timeouts (timeout plus its random
    # extra, then the election itself); allow scheduling slack on a loaded 2-core machine.
    assert failover < 6 * ELECTION_TIMEOUT_MS / 1000, f"failover took {failover:.2f}s"
    new = cluster.leader(among=[p for p in cluster.ids if p != old])
    assert new != old
    assert [client.get(f"before-{n}") for n in range(20)] == [str(n) for n in range(20)]
    cluster.peers[
        old
    ].start_and_wait()  # `--self`, same data directory: recovers term, vote and log

    def caught_up() -> bool:
        by_id = {s["id"]: s for s in cluster.statuses()}
        target = by_id[new].get("commit_index", -1)
        return by_id[old].get("applied_index", -2) >= target > 20

    wait_until(caught_up, "the restarted peer to catch up", WAIT)


def test_kill9_all_peers_mid_load_loses_no_acknowledged_write(service: MakeService) -> None:
    cluster = service(3)
    acked: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with KVClient(cluster.ids, timeout=2.0, attempt_timeout=0.5, keys=cluster.keys) as writer:
            n = 0
            while not stop.is_set():
                try:
                    writer.put(f"key-{n}", f"value-{n}")
                    acked.append(n)
                except ClientTimeout:
                    pass  # unknown outcome: not counted as acknowledged
                n += 1

    writer = threading.Thread(target=load)
    writer.start()
    try:
        wait_until(lambda: len(acked) >= 50, "50 acknowledged writes", WAIT)
        for peer in cluster.peers.values():
            peer.kill()
    finally:
        stop.set()
        writer.join(timeout=30)
    assert not writer.is_alive()
    cluster.start()
    client = cluster.client(timeout=15.0)
    missing = [n for n in acked if client.get(f"key-{n}") != f"value-{n}"]
    assert missing == [], f"{len(missing)} of {len(acked)} acknowledged writes lost"


def test_sigstopped_leader_steps_down_after_sigcont_and_loses_nothing(service: MakeService) -> None:
    cluster = service(3)
    client = cluster.client()
    client.put("a", "1")
    old = cluster.leader()
    old_term = next(s["term"] for s in cluster.statuses() if s["id"] == old)
    cluster.peers[old].pause()
    try:
        client.put("b", "2")  # served by a new leader while the old one is frozen
        others = [p for p in cluster.ids if p != old]
        new = cluster.leader(among=others)
    finally:
        cluster.peers[old].resume()

    def old_stepped_down() -> bool:
        status = next(s for s in cluster.statuses() if s["id"] == old)
        return status.get("role") == "follower" and status.get("term", 0) > old_term

    wait_until(old_stepped_down, "the old leader to step down", WAIT)
    assert cluster.leader() == new
    assert (client.get("a"), client.get("b")) == ("1", "2")


def test_garbage_on_the_peer_port_leaves_it_serving(service: MakeService) -> None:
    cluster = service(3)
    client = cluster.client()
    client.put("k", "v")
    target = cluster.ids[0]
    host, port = target.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"\x00\xff" * 5000 + b"GET / HTTP/1.1\r\n\r\n")
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    try:
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.ROUTING_ID, b"attacker")
        dealer.connect(f"tcp://{target}")
        for frame in (b"", b"\xc1", b"\x93\x01\x02\x03", b"\x00" * 100_000):
            dealer.send(frame)
        dealer.send_multipart([b"a", b"b", b"c"])
    finally:
        dealer.close()
        context.term()
    only_target = KVClient([target], timeout=5.0, keys=cluster.keys)
    try:
        assert only_target.status()[0]["id"] == target  # it still answers
    finally:
        only_target.close()
    assert client.get("k") == "v"
    client.put("k", "w")
    assert client.get("k") == "w"


def run_launcher(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, LAUNCHER, *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--peers", "127.0.0.1"], "expected HOST:PORT"),
        (["--peers", "127.0.0.1:99999"], "port must be"),
        (["--peers", "a:1,a:1"], "peer listed twice"),
        (["--self", "127.0.0.1:5", "--peers", "127.0.0.1:6,127.0.0.1:7"], "is not among --peers"),
        (["--election-timeout-ms", "0"], "must be a positive"),
        (["client", "--peers", "nonsense", "get", "k"], "expected HOST:PORT"),
        (["client", "cas", "k", "only-one"], "cas takes KEY EXPECTED NEW"),
        (["--snapshot-threshold", "-1"], "--snapshot-threshold must be 0"),
        (["--snapshot-interval-s", "nan"], "--snapshot-interval-s must be 0"),
        (["--snapshot-log-margin", "-5"], "--snapshot-log-margin must be 0"),
        (["--snapshot-throttle-bytes", "-1"], "--snapshot-throttle-bytes must be 0"),
        (["admin", "snapshot", "not-a-peer"], "snapshot: bad peer address"),
        (["admin", "--timeout", "0", "members"], "--timeout must be positive"),
        (["--clock-rate", "3"], "must be between 0.5 and 2"),
        (["--clock-rate", "fast"], "not a number"),
    ],
)
def test_bad_command_line_gets_a_clear_message(args: list[str], message: str) -> None:
    result = run_launcher(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_unknown_client_operation_is_a_usage_error() -> None:
    result = run_launcher("client", "frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_port_in_use_is_reported(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        peer = f"127.0.0.1:{port}"
        single = run_launcher("run", "--self", peer, "--peers", peer, "--data-dir", str(tmp_path))
        cluster = run_launcher("run", "--peers", peer, "--data-dir", str(tmp_path))
    assert single.returncode == 1 and "cannot listen" in single.stderr
    assert cluster.returncode == 1 and "not available" in cluster.stderr


def test_unusable_data_directory_is_reported(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    peer = f"127.0.0.1:{port}"
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data directory should be")
    result = run_launcher("run", "--self", peer, "--peers", peer, "--data-dir", str(blocker))
    assert result.returncode == 1 and "cannot use data directory" in result.stderr


def test_client_against_a_dead_cluster_times_out_with_unknown_outcome() -> None:
    ports = free_ports(2)
    peers = ",".join(f"127.0.0.1:{p}" for p in ports)
    result = run_launcher("client", "--peers", peers, "--timeout", "1", "put", "k", "v")
    assert result.returncode == 3
    assert "may or may not have taken effect" in result.stderr


def test_a_peer_in_error_exits_non_zero_and_restarts_cleanly_from_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Crash-only: a peer whose state machine raises enters ERROR, stops cleanly and exits 1
    (its supervisor restarts it); restarted from the same data directory (the bug fixed), it
    serves every acknowledged write."""
    import launcher
    from actors.service.kv_store import KVStateMachine

    (port,) = free_ports(1)
    peer = f"127.0.0.1:{port}"
    original = KVStateMachine._write

    def poisoned(self: KVStateMachine, command: Any) -> Any:
        if command.key == "poison":
            raise RuntimeError("state machine bug")
        return original(self, command)

    monkeypatch.setattr(KVStateMachine, "_write", poisoned)
    monkeypatch.setattr(launcher, "_on_signals", lambda stop: None)  # the test owns signals
    outcomes: list[str] = []

    def use() -> None:
        with KVClient([peer], timeout=10.0, attempt_timeout=0.5) as client:
            client.put("fine", "1")
            outcomes.append("fine acknowledged")
            try:
                client.put("poison", "x")
                outcomes.append("poison acknowledged")
            except ClientTimeout:
                outcomes.append("poison unknown")  # never a definite failure: it was applied

    user = threading.Thread(target=use)
    user.start()
    args = ["run", "--self", peer, "--peers", peer, "--data-dir", str(tmp_path)]
    code = launcher.main([*args, "--election-timeout-ms", "200"])
    user.join(30)
    assert code == 1
    assert "entered ERROR" in capsys.readouterr().err
    assert outcomes == ["fine acknowledged", "poison unknown"]

    monkeypatch.undo()  # the bug is fixed; the peer restarts from its durable state
    restarted = LocalPeer(
        PeerConfig(peer, (peer,), tmp_path, ELECTION_TIMEOUT_MS), log_path=tmp_path / "peer.log"
    )
    try:
        restarted.start_and_wait()
        with KVClient([peer], timeout=10.0) as client:
            assert (client.get("fine"), client.get("poison")) == ("1", "x")
    finally:
        restarted.kill()
