"""docs/EMBEDDING.md runs as written: its peer program as 3 OS processes with its client (and
AdminClient against them, and with keys), its asyncio example, and a program that dies before
`stop()` still exits cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from transport.client import AdminClient
from transport.peers import free_ports
from transport.raft_client import ClientTimeout, RaftClient
from transport.security import generate_keys

from .conftest import OutputProcess

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "EMBEDDING.md"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
pytestmark = pytest.mark.integration


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)


def write_programs(directory: Path) -> None:
    """Every block whose first line is `# NAME.py`, as that file."""
    for block in python_blocks():
        first = block.splitlines()[0]
        if re.fullmatch(r"# \w+\.py", first):
            (directory / first[2:]).write_text(block)


class Peer(OutputProcess):
    """One `counter_peer.py` process."""

    def __init__(self, cwd: Path, me: str, peers: str, *extra: str) -> None:
        argv = [sys.executable, "counter_peer.py", "--self", me, "--peers", peers, *extra]
        super().__init__(argv, cwd=cwd, env=ENV)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.end()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.end()


@pytest.fixture
def programs(tmp_path: Path) -> Path:
    write_programs(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"counter_peer.py", "counter_client.py"}
    return tmp_path


@pytest.fixture
def start_peers(programs: Path) -> Iterator[object]:
    started: list[Peer] = []

    def start(peers: list[str], *extra: str) -> list[Peer]:
        new = [Peer(programs, me, ",".join(peers), *extra) for me in peers]
        started.extend(new)
        for peer in new:
            peer.expect("serving ")
        return new

    yield start
    for peer in started:
        peer.kill()


def test_the_peer_program_runs_as_three_processes_with_its_client(
    programs: Path, start_peers: object
) -> None:
    peers = [f"127.0.0.1:{port}" for port in free_ports(3)]
    processes = start_peers(peers)  # type: ignore[operator]
    client = subprocess.run(
        [sys.executable, "counter_client.py", ",".join(peers)],
        cwd=programs,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert client.returncode == 0, client.stderr
    assert client.stdout.splitlines() == ["5", "3", "3", "3", "refused: not a number: b'five'"]

    # The operators' client works against the embedded peers as against the KV service.
    with AdminClient(peers, timeout=20.0) as admin:
        members = admin.members()
        assert sorted(members["voters"]) == sorted(peers) and members["leader"] in peers
        moved = admin.transfer_leader()
        assert moved["from"] == members["leader"] and moved["to"] != moved["from"]
    # The events the program prints: the leader's on_leader_start, the others'
    # on_start_following, of the same term; then the same for the transfer's new term.
    for leader in (members["leader"], moved["to"]):
        leading = processes[peers.index(leader)].expect("leading in term ")
        term = leading.rsplit(" ", 1)[1]
        for peer, process in zip(peers, processes, strict=True):
            if peer != leader:
                process.expect(f"following {leader} in term {term}")

    assert [peer.terminate() for peer in processes] == [0, 0, 0]  # SIGTERM: a clean stop

    # Restarted from their directories, the peers still hold the total.
    start_peers(peers)  # type: ignore[operator]
    with RaftClient(peers, timeout=20.0) as again:
        assert again.read(b"total") == 3
        assert again.apply(b"4") == 7


def test_the_peer_program_with_keys(programs: Path, start_peers: object) -> None:
    peers = [f"127.0.0.1:{port}" for port in free_ports(3)]
    keys = programs / "keys"
    generate_keys(keys, peers)
    start_peers(peers, "--keys", str(keys))  # type: ignore[operator]
    with RaftClient(peers, timeout=20.0, keys=keys) as client:
        assert client.apply(b"2") == 2
        assert client.read(b"total", consistency="lease") == 2
    stranger = RaftClient(peers, timeout=1.5, sync_interval=None)
    try:
        with pytest.raises(ClientTimeout):
            stranger.apply(b"1")  # no key: refused by every peer
    finally:
        stranger.close()


def test_the_asyncio_example_runs_as_written(tmp_path: Path) -> None:
    [example] = [b for b in python_blocks() if "asyncio.run(main())" in b]
    result = subprocess.run(
        [sys.executable, "-c", example],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["5", "[6, 7, 8]", "8"]


def test_a_program_that_raises_before_stop_still_exits_and_stops_its_node(
    tmp_path: Path,
) -> None:
    """Before: the actors' threads were not daemons, so the process never exited."""
    program = textwrap.dedent(
        """
        from actors.configuration import Configuration
        from actors.options import NodeOptions, RaftOptions
        from actors.raft_node import RaftNode
        from actors.state_machine import StateMachine
        from storage.memory import MemoryLogStorage, MemoryMetaStorage
        from transport.memory import MemoryNetwork

        class Noisy(StateMachine):
            def on_apply(self, commands):
                return [None for _ in commands]

            def on_shutdown(self):
                print("shut down", flush=True)

        node = RaftNode.start(
            NodeOptions("a:1", Configuration.of(["a:1"]), RaftOptions(election_timeout=0.3)),
            Noisy(), MemoryLogStorage(), MemoryMetaStorage(), MemoryNetwork().endpoint("a:1"),
        )
        assert node.wait_for_leader(timeout=10) == "a:1"
        node.apply(b"x").get(timeout=10)
        raise RuntimeError("the application failed before node.stop()")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "the application failed before node.stop()" in result.stderr
    assert result.stdout.splitlines() == ["shut down"]  # stopped cleanly at exit
