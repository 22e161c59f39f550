"""README's examples run as written (on free ports, in a temporary directory)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from actors.sessions import encode_session_command
from actors.state_machine import Command

from .conftest import LAUNCHER, Supervisor, free_ports

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_the_embedding_sketch_is_a_working_session_state_machine() -> None:
    """README's short embedding block (the full programs are docs/EMBEDDING.md's, run by
    test_embedding_guide.py): its Counter applies exactly once and answers queries."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    sketch = next(b for b in blocks if "SessionStateMachine" in b)
    scope: dict[str, Any] = {}
    exec(sketch, scope)
    counter = scope["Counter"]()
    writes = ((1, b"5"), (1, b"5"), (2, b"2"))
    entries = [encode_session_command("c", seq, data) for seq, data in writes]
    results = counter.on_apply([Command(i, 1, e) for i, e in enumerate(entries, start=1)])
    assert results == [5, 5, 7]  # the retry of seq 1 is answered, not applied again
    assert counter.on_read(b"total") == 7


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
