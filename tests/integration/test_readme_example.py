"""README's embedding example runs as written (on one free port, in a temporary directory)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import free_ports

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
