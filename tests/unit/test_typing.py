"""Typed results: a StateMachine[R, V] makes RaftNode[R, V], whose futures and awaits carry R
(apply) and V (read), checked by running mypy on an application that uses them right and
wrong."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[2]

APP = textwrap.dedent(
    """
    from actors.options import NodeOptions
    from actors.raft_node import RaftNode
    from actors.state_machine import StateMachine
    from storage.memory import MemoryLogStorage, MemoryMetaStorage
    from transport.memory import MemoryNetwork


    class Counter(StateMachine[int, str]):
        def on_apply(self, commands):
            return [len(commands)]

        def on_read(self, query):
            return "total"


    def start(options: NodeOptions) -> None:
        node = RaftNode.start(
            options, Counter(), MemoryLogStorage(), MemoryMetaStorage(),
            MemoryNetwork().endpoint("a:1"),
        )
        reveal_type(node)
        count: int = node.apply(b"1").get(timeout=1)
        text: str = node.read(b"q").get(timeout=1)
        wrong: str = node.apply(b"1").get(timeout=1)  # WRONG: an int is no str


    async def use(node: RaftNode[int, str]) -> None:
        count: int = await node.apply_async(b"1")
        text: str = await node.read_async(b"q")
        also: int = await node.apply(b"1")
        wrong: int = await node.read(b"q")  # WRONG: a str is no int
    """
)


@pytest.mark.timeout(180)
def test_results_are_typed_by_the_state_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    monkeypatch.setenv("MYPYPATH", str(ROOT))
    out, err, _ = api.run(
        [
            "--config-file=",
            "--follow-imports=silent",
            "--ignore-missing-imports",
            f"--cache-dir={tmp_path / 'cache'}",
            str(app),
        ]
    )
    assert not err, err
    lines = {int(m[1]): m[2] for m in re.finditer(r"app\.py:(\d+): (?:error|note): (.*)", out)}
    source = APP.splitlines()
    reveal = next(n for n, line in enumerate(source, 1) if "reveal_type" in line)
    wrong = [n for n, line in enumerate(source, 1) if "# WRONG" in line]
    assert sorted(lines) == [reveal, *wrong], out
    assert lines[reveal] == 'Revealed type is "actors.raft_node.RaftNode[int, str]"'
    assert all("Incompatible types in assignment" in lines[n] for n in wrong), out
