"""README's embedding example runs as written (on one free port, in a temporary directory)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import LAUNCHER, Supervisor, free_ports

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_embedding_example_applies_a_command(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    example = next(b for b in blocks if "RaftNode.start" in b)
    (port,) = free_ports(1)
    me = f"127.0.0.1:{port}"
    # A single-peer cluster elects itself, so the example's leader branch runs.
    example = re.sub(r"peers = \[.*?\]", f'peers = ["{me}"]', example)
    example = example.replace("tcp://127.0.0.1:7001", f"tcp://{me}")
    assert me in example
    result = subprocess.run(
        [sys.executable, "-c", example],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5"


def test_secured_cluster_example_runs_as_written(tmp_path: Path) -> None:
    """README's CurveZMQ block, line by line, on free ports: keygen, the cluster with --keys,
    keyed client and admin commands, and a client without keys being refused."""
    block = next(
        b
        for b in re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
        if "keygen" in b
    )
    lines = [line.split("#")[0].split() for line in block.strip().splitlines()]
    peers = ",".join(f"127.0.0.1:{port}" for port in free_ports(3))
    keygen, cluster, *uses = lines
    assert keygen[:3] == ["python", "launcher.py", "keygen"]
    assert cluster[:3] == ["python", "launcher.py", "--keys"]
    made = run_launcher(tmp_path, [*keygen[2:3], "--peers", peers, *keygen[3:]])
    assert made.returncode == 0, made.stderr
    supervisor = Supervisor(peers.split(","), tmp_path / "data", *cluster[2:], cwd=tmp_path)
    try:
        supervisor.expect("leader: ")
        outcomes = []
        for use in uses:
            assert use[:2] == ["python", "launcher.py"]
            done = run_launcher(tmp_path, [*use[2:3], "--peers", peers, *use[3:]])
            outcomes.append((done.returncode, done.stdout.strip()))
    finally:
        supervisor.kill()
    (put, get, members, refused) = outcomes
    assert put == (0, "OK") and get == (0, "v")
    assert members[0] == 0 and sorted(json.loads(members[1])["voters"]) == sorted(peers.split(","))
    assert refused == (3, "")


def run_launcher(cwd: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, LAUNCHER, *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
