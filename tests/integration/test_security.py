"""A cluster run with `--keys` (CurveZMQ), end to end through real peer processes: keys made
by `launcher.py keygen`, clients with and without the right keys, and a client key trying to
act as a peer. Whatever is refused gets nothing done, and the cluster keeps serving."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.integration.conftest import LAUNCHER, WAIT, ServiceCluster, wait_until
from transport.client import AdminClient, ClientTimeout, CommandError, KVClient
from transport.codec import encode
from transport.rpc import AppendEntriesRequest, RequestVoteRequest
from transport.security import CLIENTS, PEERS, ClientSecurity, generate_keys

pytestmark = pytest.mark.integration

MakeService = Callable[..., ServiceCluster]


def launcher(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LAUNCHER), *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def secured(service: MakeService, tmp_path: Path) -> ServiceCluster:
    cluster = service(3, keys=tmp_path / "keys")
    cluster.client().put("k", "v")  # a leader is serving
    return cluster


def test_keygen_makes_a_key_directory_for_the_peers(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    peers = "127.0.0.1:7101,127.0.0.1:7102"
    made = launcher("keygen", str(keys), "--peers", peers, "--clients", "app,web")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["created"] == [
        "peers/127.0.0.1_7101",
        "peers/127.0.0.1_7102",
        "clients/app",
        "clients/web",
        "admins/admin",
        "http/token",
    ]
    secrets = sorted(keys.rglob("*.key_secret"))
    assert len(secrets) == 5
    assert {stat.S_IMODE(p.stat().st_mode) for p in keys.rglob("*")} == {0o600, 0o700}
    again = launcher("keygen", str(keys), "--peers", peers, "--clients", "app,web")
    assert json.loads(again.stdout)["created"] == []  # nothing overwritten


def test_keyed_clients_work_through_the_api_and_the_cli(secured: ServiceCluster) -> None:
    contact = secured.contact_flags()
    put = launcher("client", *contact, "put", "cli", "yes")
    assert (put.returncode, put.stdout.strip()) == (0, "OK"), put.stderr
    get = launcher("client", *contact, "get", "cli")
    assert (get.returncode, get.stdout.strip()) == (0, "yes"), get.stderr
    members = launcher("admin", *contact, "members")
    assert members.returncode == 0, members.stderr
    assert sorted(json.loads(members.stdout)["voters"]) == sorted(secured.ids)
    with AdminClient(secured.ids, timeout=WAIT, keys=secured.keys) as admin:
        assert admin.snapshot()["index"] >= 1


def test_a_client_without_keys_gets_nothing_done(secured: ServiceCluster) -> None:
    with KVClient(secured.ids, timeout=1.5, attempt_timeout=0.5) as plain:
        with pytest.raises(ClientTimeout):
            plain.put("k", "stolen")
        assert all(s["role"] == "unreachable" for s in plain.status())
    cli = launcher("client", "--peers", ",".join(secured.ids), "--timeout", "1", "get", "k")
    assert cli.returncode == 3, cli.stderr
    assert secured.client().get("k") == "v"


def test_a_key_of_another_cluster_gets_nothing_done(
    secured: ServiceCluster, tmp_path: Path
) -> None:
    strangers = tmp_path / "strangers"
    generate_keys(strangers, secured.ids)  # the right names, the wrong keys
    impostor = KVClient(secured.ids, timeout=1.5, attempt_timeout=0.5, keys=strangers)
    with impostor, pytest.raises(ClientTimeout):
        impostor.put("k", "stolen")
    assert secured.client().get("k") == "v"


def test_admin_operations_need_an_admin_key(secured: ServiceCluster, tmp_path: Path) -> None:
    assert secured.keys is not None
    clients_only = tmp_path / "clients-only"
    (clients_only / PEERS).mkdir(parents=True)
    (clients_only / CLIENTS).mkdir()
    for path in (secured.keys / PEERS).glob("*.key"):
        (clients_only / PEERS / path.name).write_bytes(path.read_bytes())
    for path in (secured.keys / CLIENTS).iterdir():
        (clients_only / CLIENTS / path.name).write_bytes(path.read_bytes())
    admin = AdminClient(secured.ids, timeout=WAIT, keys=clients_only)
    with admin, pytest.raises(CommandError, match="admin operations need an admin or peer key"):
        admin.snapshot()


def peer_statuses(cluster: ServiceCluster) -> list[dict[str, Any]]:
    return [s for s in cluster.statuses() if s.get("role") != "unreachable"]


def test_a_client_key_cannot_vote_or_append_as_a_peer(secured: ServiceCluster) -> None:
    """With a client key, forge what a peer would send - a vote request in a huge term, an
    AppendEntries claiming leadership - under a peer's routing id and name: every peer drops
    it, so no term moves and the leader keeps serving."""
    assert secured.keys is not None
    leader = secured.leader()  # first: every peer agrees, so no term moves by itself now
    before = {s["id"]: s["term"] for s in peer_statuses(secured)}
    victim, forged_as = [p for p in secured.ids if p != leader][:2]
    security = ClientSecurity(secured.keys, (CLIENTS,))
    context: zmq.Context[Any] = zmq.Context()
    sockets: list[zmq.Socket[Any]] = []
    try:
        for target in secured.ids:
            socket = context.socket(zmq.DEALER)
            sockets.append(socket)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.ROUTING_ID, forged_as.encode())
            security.configure_client(socket, target)
            socket.connect(f"tcp://{target}")
            socket.send(encode(RequestVoteRequest(10_000, forged_as, 10**9, 10_000, False)))
            socket.send(encode(AppendEntriesRequest(10_000, forged_as, 0, 0, (), 10**9, 1)))
        wait_until(lambda: _dropped(secured) >= 2 * len(secured.ids), "the drops", WAIT)
    finally:
        for socket in sockets:
            socket.close(linger=0)
        context.term()
    after = {s["id"]: s["term"] for s in peer_statuses(secured)}
    assert after == before
    assert secured.leader() == leader
    secured.client().put("after", "forgery")
    assert secured.client().get("after") == "forgery"
    assert victim in after


def _dropped(cluster: ServiceCluster) -> int:
    """Messages the peers dropped as unauthorized (from each peer's `rejected` counters)."""
    statuses = cluster.statuses()
    return sum(
        s.get("transport", {}).get("bad_frames", {}).get("unauthorized", 0) for s in statuses
    )


def test_bad_key_flags_are_usage_errors(tmp_path: Path) -> None:
    missing = launcher("client", "--keys", str(tmp_path / "nowhere"), "get", "k")
    assert missing.returncode == 2
    assert "not a key directory" in missing.stderr and "keygen" in missing.stderr
    keys = tmp_path / "keys"
    generate_keys(keys, ["127.0.0.1:7101"])
    run = launcher("run", "--peers", "127.0.0.1:7101,127.0.0.1:7102", "--keys", str(keys))
    assert run.returncode == 2
    assert "no public key for 127.0.0.1:7102" in run.stderr
