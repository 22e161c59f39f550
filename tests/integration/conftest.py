"""Real peer processes (`launcher.py run --self`, through LocalPeer) on ports chosen at run time.

Every process a test starts is killed in teardown, even when the test fails. Waits are on a
condition with a deadline (a peer's readiness line, a status predicate), never a bare sleep.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from actors.service.local_peer import LAUNCHER, LocalPeer
from actors.service.peer import PeerConfig
from actors.wait import wait_until
from transport.client import KVClient
from transport.peers import free_ports
from transport.security import generate_keys

__all__ = [
    "ELECTION_TIMEOUT_MS",
    "LAUNCHER",
    "WAIT",
    "OutputProcess",
    "ServiceCluster",
    "Supervisor",
    "free_ports",
    "wait_until",
]

ELECTION_TIMEOUT_MS = 300
WAIT = 20.0  # generous deadline for a condition; a healthy run takes a small fraction of it


class ServiceCluster:
    def __init__(self, size: int, data_dir: Path, **config: Any) -> None:
        """`config`: more PeerConfig fields for every peer (e.g. snapshot_threshold)."""
        self.ids = [f"127.0.0.1:{port}" for port in free_ports(size)]
        configs = [
            PeerConfig(p, tuple(self.ids), data_dir, ELECTION_TIMEOUT_MS, **config)
            for p in self.ids
        ]
        if config.get("keys") is not None:
            generate_keys(config["keys"], self.ids)
        self.peers = {
            c.peer_id: LocalPeer(c, log_path=data_dir / "logs" / f"{c.peer_dir.name}.log")
            for c in configs
        }
        self.clients: list[KVClient] = []
        self.keys = config.get("keys")  # the CurveZMQ key directory, if the cluster has one

    def start(self) -> None:
        for peer in self.peers.values():
            peer.start()
        for peer in self.peers.values():
            peer.wait_ready()

    def client(self, timeout: float = 10.0) -> KVClient:
        client = KVClient(self.ids, timeout=timeout, attempt_timeout=0.5, keys=self.keys)
        self.clients.append(client)
        return client

    def contact_flags(self) -> list[str]:
        """What `launcher.py client` and `admin` need to reach this cluster."""
        keys = ["--keys", str(self.keys)] if self.keys is not None else []
        return ["--peers", ",".join(self.ids), *keys]

    def admin_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`launcher.py admin ARGS` against this cluster: its exit code, stdout and stderr."""
        command = [sys.executable, LAUNCHER, "admin", *self.contact_flags(), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    def statuses(self) -> list[dict[str, Any]]:
        with KVClient(self.ids, timeout=1.0, attempt_timeout=0.5, keys=self.keys) as client:
            return client.status()

    def leader(self, among: list[str] | None = None) -> str:
        """The peer that leads in the highest term, once every peer in `among` agrees."""

        def agreed() -> str | None:
            statuses = [s for s in self.statuses() if s["id"] in (among or self.ids)]
            leaders = {s.get("leader") for s in statuses}
            roles = [s["id"] for s in statuses if s.get("role") == "leader"]
            if len(roles) == 1 and leaders == {roles[0]}:
                return roles[0]
            return None

        leader: str = wait_until(agreed, "an agreed leader", WAIT)
        return leader

    def shutdown(self) -> None:
        for client in self.clients:
            client.close()
        for peer in self.peers.values():
            peer.kill()  # SIGKILL ends even a SIGSTOPped process


class OutputProcess:
    """A process whose output (stdout and stderr, line by line) a test waits on."""

    def __init__(self, argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None):
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self.lines.put(line)

    def expect(self, text: str, timeout: float = 30.0) -> str:
        """The next line (after those an earlier `expect` returned) that contains `text`."""

        def found() -> str | None:
            while True:
                try:
                    line = self.lines.get_nowait()
                except queue.Empty:
                    return None
                self.seen.append(line)
                if text in line:
                    return line

        what = f"{text!r} from {self.process.args} (saw {self.seen})"
        line: str = wait_until(found, what, timeout)
        return line.rstrip("\n")

    def end(self, timeout: float = 10.0) -> None:
        """Wait for the output to end (the process exited and its pipe is drained)."""
        self._pump.join(timeout=timeout)


class Supervisor(OutputProcess):
    """`python launcher.py` (the cluster form) as a process whose output a test waits on."""

    def __init__(
        self, peers: list[str], data_dir: Path, *args: str, cwd: Path | None = None
    ) -> None:
        super().__init__(
            [
                sys.executable,
                LAUNCHER,
                "--peers",
                ",".join(peers),
                "--data-dir",
                str(data_dir),
                "--election-timeout-ms",
                "300",
                "--log-level",
                "WARNING",
                *args,
            ],
            cwd=cwd,
        )

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children()

    def kill(self) -> None:
        if self.process.poll() is None:
            for child in self.children():
                child.kill()
            self.process.kill()
            self.process.wait(timeout=10)
        self._pump.join(timeout=10)


KEYED_MODULES = frozenset({"test_service", "test_snapshots", "test_http", "test_reads"})
"""Test modules whose `service` clusters run twice: plain, and with CurveZMQ keys (each cluster
with a key directory of its own, its clients with the keys), so that the authenticated path
passes the same tests."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if "service" in metafunc.fixturenames and module in KEYED_MODULES:
        metafunc.parametrize("service_security", ["plain", "keys"])


@pytest.fixture
def service_security() -> str:
    return "plain"


@pytest.fixture
def service(tmp_path: Path, service_security: str) -> Iterator[Callable[[int], ServiceCluster]]:
    clusters: list[ServiceCluster] = []

    def make(size: int = 3, **config: Any) -> ServiceCluster:
        if service_security == "keys":
            config.setdefault("keys", tmp_path / f"keys{len(clusters)}")
        cluster = ServiceCluster(size, tmp_path / f"data{len(clusters)}", **config)
        clusters.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in clusters:
        cluster.shutdown()
