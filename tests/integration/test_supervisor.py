"""`python launcher.py` without --self: one process per peer, supervised."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest

from transport.client import KVClient

from .conftest import WAIT, Supervisor, free_ports, wait_until

pytestmark = pytest.mark.integration


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
