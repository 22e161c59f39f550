"""Reads without the log, through real peer processes: each consistency through the client and
the CLI, serializable reads on a follower, and a leader cut off from its followers refusing
linearizable reads."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.integration.conftest import LAUNCHER, WAIT, ServiceCluster, wait_until
from transport.client import ClientTimeout, KVClient

pytestmark = pytest.mark.integration

MakeService = Callable[..., ServiceCluster]
CONSISTENCIES = ("linearizable", "lease", "serializable")


@pytest.mark.parametrize("consistency", CONSISTENCIES)
def test_each_consistency_reads_the_acknowledged_value(
    service: MakeService, consistency: str
) -> None:
    cluster = service(3)
    client = cluster.client()
    for n in range(20):
        client.put("k", f"v{n}")
        # Asked of the leader (the client's peer after the put), every level sees the write.
        assert client.get("k", consistency) == f"v{n}"
    assert client.get("absent", consistency) is None
    leader = cluster.leader()
    applied = {s["id"]: s["applied_index"] for s in cluster.statuses()}
    # Reads are not in the log: 20 puts (and the term's first entry) are all it holds.
    assert cluster.statuses()[cluster.ids.index(leader)]["last_log_index"] <= 21 + 1
    assert max(applied.values()) <= 22


def test_the_cli_reads_with_each_consistency(service: MakeService) -> None:
    cluster = service(3)
    cluster.client().put("greeting", "hello")
    for consistency in CONSISTENCIES:
        done = subprocess.run(
            [
                sys.executable,
                LAUNCHER,
                "client",
                *cluster.contact_flags(),
                "get",
                "greeting",
                "--consistency",
                consistency,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (done.returncode, done.stdout.strip()) == (0, "hello"), done.stderr
    # --read-from any, given only a follower: it answers itself, with the leader's read index.
    follower = next(p for p in cluster.ids if p != cluster.leader())
    keys = cluster.contact_flags()[2:]
    command = [sys.executable, LAUNCHER, "client", "--peers", follower, *keys]
    done = subprocess.run(
        [*command, "get", "greeting", "--read-from", "any"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "hello"), done.stderr
    wrong = subprocess.run(
        [sys.executable, LAUNCHER, "client", "get", "k", "--consistency", "eventual"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr


def test_a_follower_serves_serializable_reads_from_its_own_state(service: MakeService) -> None:
    cluster = service(3)
    cluster.client().put("k", "v")
    follower = next(p for p in cluster.ids if p != cluster.leader())
    with KVClient([follower], timeout=5.0, attempt_timeout=0.5, keys=cluster.keys) as local:
        # It may lag a moment behind the leader (serializable), never invent a value.
        assert wait_until(lambda: local.get("k", "serializable") == "v", "the follower", WAIT)
        with pytest.raises(ValueError, match="consistency must be one of"):
            local.get("k", "eventual")


def test_a_leader_without_its_followers_refuses_linearizable_reads(service: MakeService) -> None:
    """With both followers stopped (SIGSTOP), the leader cannot confirm its leadership: a
    linearizable read gets no answer rather than a possibly stale one."""
    cluster = service(3)
    cluster.client().put("k", "v")
    leader = cluster.leader()
    followers = [p for p in cluster.ids if p != leader]
    for peer in followers:
        cluster.peers[peer].pause()
    try:
        with KVClient([leader], timeout=1.5, attempt_timeout=0.5, keys=cluster.keys) as alone:
            with pytest.raises(ClientTimeout):
                alone.get("k")
            assert alone.get("k", "serializable") == "v"  # its own state: allowed, maybe stale
    finally:
        for peer in followers:
            cluster.peers[peer].resume()
    assert cluster.client().get("k") == "v"


def test_linearizable_reads_on_followers_see_every_acknowledged_write(
    service: MakeService,
) -> None:
    """A follower asks the leader for a read index and answers once it has applied it: right
    after a write is acknowledged, a follower's linearizable read returns it (a serializable
    one could still miss it), and read_from="any" spreads reads over every peer."""
    cluster = service(3)
    writer = cluster.client()
    writer.put("k", "v0")
    leader = cluster.leader()
    follower = next(p for p in cluster.ids if p != leader)
    on_follower = KVClient([follower], timeout=5.0, attempt_timeout=0.5, keys=cluster.keys,
                           read_from="any")  # fmt: skip
    spread = KVClient(cluster.ids, timeout=5.0, attempt_timeout=0.5, keys=cluster.keys,
                      read_from="any")  # fmt: skip
    with on_follower, spread:
        for n in range(30):
            writer.put("k", f"v{n}")
            assert on_follower.get("k") == f"v{n}"
            assert spread.get("k") == f"v{n}"
            assert spread.get("k", "lease") == f"v{n}"
    # read_from="leader" (the default): a follower sends the reader to the leader instead,
    # which the client then knows (it learns peers from redirects).
    leader_only = KVClient([follower], timeout=5.0, attempt_timeout=0.3, keys=cluster.keys)
    with leader_only:
        assert leader_only.get("k") == "v29"
        assert leader in leader_only.peers
    with pytest.raises(ValueError, match="read_from"):
        KVClient(cluster.ids, read_from="nearest")
