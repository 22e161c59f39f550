"""Model-based test: random operation sequences on the disk log, checked step by step
against the in-memory log, with restarts (close + reopen) in between."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from storage.entry import EntryType, LogEntry
from storage.log_storage import SegmentLogStorage
from storage.memory import MemoryLogStorage


class DiskMatchesMemory(RuleBasedStateMachine):
    base: Path
    counter = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.path = self.base / f"run{next(self.counter)}"
        self.disk = self._open()
        self.model = MemoryLogStorage()
        self.term = 1

    def _open(self) -> SegmentLogStorage:
        return SegmentLogStorage(
            self.path, segment_size=200, sync=False, cache_max_entries=3, max_open_files=2
        )

    @rule(count=st.integers(1, 12), sizes=st.data(), new_term=st.booleans())
    def append(self, count: int, sizes: st.DataObject, new_term: bool) -> None:
        self.term += new_term
        start = self.model.last_log_index() + 1
        batch = [
            LogEntry(
                i,
                self.term,
                EntryType(i % 3),
                bytes([i % 256]) * sizes.draw(st.integers(0, 60), label="size"),
            )
            for i in range(start, start + count)
        ]
        self.disk.append_entries(batch)
        self.model.append_entries(batch)

    @rule(data=st.data())
    def truncate_suffix(self, data: st.DataObject) -> None:
        first, last = self.model.first_log_index(), self.model.last_log_index()
        kept = data.draw(st.integers(first - 1, last + 2), label="kept")
        self.disk.truncate_suffix(kept)
        self.model.truncate_suffix(kept)

    @rule(data=st.data())
    def truncate_prefix(self, data: st.DataObject) -> None:
        first, last = self.model.first_log_index(), self.model.last_log_index()
        kept = data.draw(st.integers(max(first - 2, 1), last + 3), label="first_kept")
        self.disk.truncate_prefix(kept)
        self.model.truncate_prefix(kept)

    @rule(next_index=st.integers(1, 80))
    def reset(self, next_index: int) -> None:
        self.disk.reset(next_index)
        self.model.reset(next_index)

    @rule()
    def restart(self) -> None:
        self.disk.close()
        self.disk = self._open()

    @rule(data=st.data())
    def read_range(self, data: st.DataObject) -> None:
        first, last = self.model.first_log_index(), self.model.last_log_index()
        lo = data.draw(st.integers(first - 2, last + 2), label="lo")
        hi = data.draw(st.integers(lo - 1, last + 2), label="hi")
        max_bytes = data.draw(st.integers(0, 200), label="max_bytes")
        assert self.disk.get_entries(lo, hi, max_bytes) == self.model.get_entries(lo, hi, max_bytes)

    @invariant()
    def same_log(self) -> None:
        first, last = self.model.first_log_index(), self.model.last_log_index()
        assert (self.disk.first_log_index(), self.disk.last_log_index()) == (first, last)
        for i in range(first - 1, last + 2):
            assert self.disk.get_term(i) == self.model.get_term(i)
            assert self.disk.get_entry(i) == self.model.get_entry(i)

    def teardown(self) -> None:
        self.disk.close()


def test_disk_log_matches_the_memory_model(tmp_path: Path) -> None:
    DiskMatchesMemory.base = tmp_path
    run_state_machine_as_test(
        DiskMatchesMemory,
        settings=settings(
            max_examples=60,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
