"""Leadership transfer through real peer processes, under concurrent writes: to a named voter
and to the most up-to-date one, through AdminClient and the CLI; every acknowledged write is
there afterwards, and bad requests get clear errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest

from tests.integration.conftest import WAIT, ServiceCluster, wait_until
from transport.client import AdminClient, ClientTimeout, CommandError

pytestmark = pytest.mark.integration

MakeService = Callable[..., ServiceCluster]


class Writer(threading.Thread):
    """Puts k<n> = v<n> for n = 0, 1, ... until stopped; `acked` holds the n acknowledged."""

    def __init__(self, cluster: ServiceCluster) -> None:
        super().__init__(daemon=True)
        self.client = cluster.client(timeout=10.0)
        self.stop_event = threading.Event()
        self.acked: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        try:
            while not self.stop_event.is_set():
                try:
                    self.client.put(f"k{n}", f"v{n}")
                    self.acked.append(n)
                except ClientTimeout:
                    pass  # unknown outcome: not counted as acknowledged
                n += 1
        except BaseException as error:
            self.error = error

    def wait_for(self, count: int) -> None:
        """Until `count` writes are acknowledged (a deadline of WAIT)."""
        wait_until(lambda: len(self.acked) >= count or self.error, f"{count} writes", WAIT)

    def finish(self) -> list[int]:
        self.stop_event.set()
        self.join(timeout=30)
        assert not self.is_alive() and self.error is None, self.error
        return self.acked


def _admin(cluster: ServiceCluster) -> AdminClient:
    return AdminClient(cluster.ids, timeout=10.0, attempt_timeout=0.5, keys=cluster.keys)


def test_transfer_to_a_named_voter_and_to_any_under_writes_loses_nothing(
    service: MakeService,
) -> None:
    cluster = service(3)
    writer = Writer(cluster)
    writer.start()
    try:
        writer.wait_for(10)  # writes before, during and after the transfers
        old = cluster.leader()
        target = next(p for p in cluster.ids if p != old)
        with _admin(cluster) as admin:
            assert admin.transfer_leader(target) == {"from": old, "to": target}
            assert cluster.leader() == target
            moved = admin.transfer_leader()
            assert moved["from"] == target and moved["to"] in set(cluster.ids) - {target}
            assert cluster.leader() == moved["to"]
        writer.wait_for(len(writer.acked) + 10)
    finally:
        acked = writer.finish()
    assert len(acked) >= 20
    reader = cluster.client()
    assert [reader.get(f"k{n}") for n in acked] == [f"v{n}" for n in acked]


def test_transfer_refusals_are_clear(service: MakeService) -> None:
    cluster = service(3)
    leader = cluster.leader()
    with _admin(cluster) as admin:
        with pytest.raises(CommandError, match="UnknownPeerError"):
            admin.transfer_leader("127.0.0.1:1")
        assert admin.transfer_leader(leader) == {"from": leader, "to": leader}  # nothing to do
    assert cluster.leader() == leader


def test_the_cli_transfers_leadership_and_reports_bad_arguments(service: MakeService) -> None:
    cluster = service(3)
    old = cluster.leader()
    target = next(p for p in cluster.ids if p != old)

    admin = cluster.admin_cli
    done = admin("transfer-leader", target)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"from": old, "to": target}
    assert cluster.leader() == target
    bad = admin("transfer-leader", "not-a-peer")
    assert bad.returncode == 2 and "transfer-leader: " in bad.stderr
    unknown = admin("transfer-leader", "127.0.0.1:1")
    assert unknown.returncode == 1 and "is not another voter" in unknown.stderr
