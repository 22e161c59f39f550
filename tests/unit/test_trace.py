"""actors.trace: off by default; on, one apply through a cluster leaves its marks in pipeline
order, and a dump reads back as written."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import trace
from actors.testkit import InMemoryCluster

PIPELINE = trace.PUT_STAGES[1:-1]  # from the Node to the FSMCaller


@pytest.fixture
def tracing(tmp_path: Path) -> Iterator[str]:
    assert not trace.ON, "tracing must be off unless asked for"
    prefix = str(tmp_path / "marks")
    trace.enable(prefix)
    try:
        yield prefix
    finally:
        trace.ON = False
        trace._prefix = None  # the atexit dump finds nothing to write
        trace._marks.clear()


def test_one_apply_leaves_every_stage_mark_in_pipeline_order(tracing: str) -> None:
    with InMemoryCluster(3) as cluster:
        cluster.wait_for_leader()
        trace._marks.clear()
        cluster.apply(b"x")
    marks = trace.marks()  # the cluster has stopped: nothing marks any more
    times: dict[str, list[int]] = {}
    for stage, ns in marks:
        times.setdefault(stage, []).append(ns)
    previous = 0
    for stage in PIPELINE:  # each stage has a mark after the previous stage's
        found = times.get(stage, [])
        i = bisect.bisect_left(found, previous)
        assert i < len(found), f"no {stage} after the previous stage"
        previous = found[i]
    path = trace.dump()
    assert path is not None and path.startswith(tracing)
    assert trace.read(path) == marks and trace.marks() == []


def test_a_dump_while_off_writes_nothing() -> None:
    assert not trace.ON and trace.dump() is None
