"""`python launcher.py` without --self: one process per peer, supervised."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from transport.client import KVClient

from .conftest import LAUNCHER, WAIT, free_ports, wait_until

pytestmark = pytest.mark.integration


class Supervisor:
    def __init__(self, peers: list[str], data_dir: Path) -> None:
        self.process = subprocess.Popen(
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
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
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
        def found() -> str | None:
            while True:
                try:
                    line = self.lines.get_nowait()
                except queue.Empty:
                    return None
                self.seen.append(line)
                if text in line:
                    return line

        line: str = wait_until(found, f"{text!r} from the supervisor (saw {self.seen})", timeout)
        return line

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children()

    def kill(self) -> None:
        if self.process.poll() is None:
            for child in self.children():
                child.kill()
            self.process.kill()
            self.process.wait(timeout=10)
        self._pump.join(timeout=10)


def test_supervisor_restarts_a_crashed_peer_and_stops_all_on_sigterm(tmp_path: Path) -> None:
    peers = [f"127.0.0.1:{p}" for p in free_ports(3)]
    supervisor = Supervisor(peers, tmp_path)
    try:
        supervisor.expect("leader: ")
        with KVClient(peers, timeout=10.0) as client:
            client.put("k", "v")
            victim = supervisor.children()[0]
            victim.kill()
            supervisor.expect(f"(pid {victim.pid}) exited with code -9; restarting in 1s")
            wait_until(
                lambda: (
                    len(supervisor.children()) == 3
                    and victim.pid not in {c.pid for c in supervisor.children()}
                ),
                "the crashed peer to be restarted",
                WAIT,
            )
            wait_until(
                lambda: all(s.get("role") != "unreachable" for s in client.status()),
                "every peer to answer again",
                WAIT,
            )
            assert client.get("k") == "v"
        children = supervisor.children()
        supervisor.process.send_signal(signal.SIGTERM)
        assert supervisor.process.wait(timeout=30) == 0
        supervisor.expect("all peers stopped")
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], "stray peer processes after SIGTERM"
    finally:
        supervisor.kill()
