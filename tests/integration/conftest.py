"""Real peer processes (`launcher.py run --self`) on ports chosen at run time.

Every process a test starts is killed in teardown, even when the test fails. Waits are on a
condition with a deadline (a peer's "serving" line, a status predicate), never a bare sleep.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from transport.client import KVClient
from transport.peers import free_ports

LAUNCHER = str(Path(__file__).resolve().parents[2] / "launcher.py")
ELECTION_TIMEOUT_MS = 300
START_TIMEOUT = 30.0


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll `predicate` until it returns something truthy, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        pause.wait(0.05)  # pacing between polls of another process's state
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Peer:
    def __init__(self, peer_id: str, peers: list[str], data_dir: Path) -> None:
        self.id = peer_id
        self.peers = peers
        self.data_dir = data_dir
        self.process: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self._pump_thread: threading.Thread | None = None

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.lines = queue.Queue()
        self.process = subprocess.Popen(
            [
                sys.executable,
                LAUNCHER,
                "run",
                "--self",
                self.id,
                "--peers",
                ",".join(self.peers),
                "--data-dir",
                str(self.data_dir),
                "--election-timeout-ms",
                str(ELECTION_TIMEOUT_MS),
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._pump_thread = threading.Thread(
            target=self._pump, args=(self.process, self.lines), daemon=True
        )
        self._pump_thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{self.id} did not start in {START_TIMEOUT}s") from None
            if "serving" in line:
                return
            if line == "":  # the process ended
                raise AssertionError(f"{self.id} exited during start-up")

    @staticmethod
    def _pump(process: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
        assert process.stdout is not None
        with process.stdout:  # closed here, at EOF: the process has ended
            for line in process.stdout:
                lines.put(line)
        lines.put("")

    def _reap(self) -> None:
        if self._pump_thread is not None:
            self._pump_thread.join(timeout=10)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """kill -9: no chance to flush or say goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._reap()

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=15)
        self._reap()
        return code


class ServiceCluster:
    def __init__(self, size: int, data_dir: Path) -> None:
        self.ids = [f"127.0.0.1:{port}" for port in free_ports(size)]
        self.peers = {p: Peer(p, self.ids, data_dir) for p in self.ids}
        self.clients: list[KVClient] = []

    def start(self) -> None:
        for peer in self.peers.values():
            peer.start()

    def client(self, timeout: float = 10.0) -> KVClient:
        client = KVClient(self.ids, timeout=timeout, attempt_timeout=0.5)
        self.clients.append(client)
        return client

    def statuses(self) -> list[dict[str, Any]]:
        with KVClient(self.ids, timeout=1.0, attempt_timeout=0.5) as client:
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

        leader: str = wait_until(agreed, "an agreed leader")
        return leader

    def shutdown(self) -> None:
        for client in self.clients:
            client.close()
        for peer in self.peers.values():
            peer.kill()  # SIGKILL ends even a SIGSTOPped process


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Callable[[int], ServiceCluster]]:
    clusters: list[ServiceCluster] = []

    def make(size: int = 3) -> ServiceCluster:
        cluster = ServiceCluster(size, tmp_path / f"data{len(clusters)}")
        clusters.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in clusters:
        cluster.shutdown()
