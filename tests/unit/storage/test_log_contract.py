"""The LogStorage contract, written once and run against every implementation.

`harness.reopen()` models a restart (close + open for the disk log, `crash()` for the memory
one); most tests reopen after each operation and require the identical state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storage.entry import EntryType, LogEntry
from storage.errors import LogIndexError, StorageError
from storage.log_storage import SegmentLogStorage
from storage.memory import MemoryLogStorage

TINY_SEGMENT = 256  # bytes: a few entries per segment, so segments roll often


def entry(index: int, term: int = 1, size: int = 10) -> LogEntry:
    """A deterministic entry whose payload names its index and term (a stale one shows)."""
    data = (f"{index}@{term}:".encode() * size)[:size]
    return LogEntry(index, term, EntryType.DATA, data)


def entries(first: int, last: int, term: int = 1, size: int = 10) -> list[LogEntry]:
    return [entry(i, term, size) for i in range(first, last + 1)]


class LogHarness:
    """A log under test and `reopen()`: what a restarted process would find."""

    def __init__(self, make: Callable[[], SegmentLogStorage | MemoryLogStorage]) -> None:
        self._make = make
        self.log = make()

    def reopen(self) -> None:
        if isinstance(self.log, MemoryLogStorage):
            self.log = self.log.crash()  # sync is on: everything must survive
        else:
            self.log.close()
            self.log = self._make()

    def reopened_state(self) -> tuple[int, int, list[LogEntry]]:
        """Reopen, and return the state (which the caller compares with the state before)."""
        self.reopen()
        return state(self.log)


def state(log: SegmentLogStorage | MemoryLogStorage) -> tuple[int, int, list[LogEntry]]:
    first, last = log.first_log_index(), log.last_log_index()
    return first, last, log.get_entries(first, last)


def make_harness(kind: str, path: Path) -> LogHarness:
    if kind == "memory":
        return LogHarness(MemoryLogStorage)
    if kind == "disk":
        return LogHarness(lambda: SegmentLogStorage(path))
    if kind == "disk-tiny-segments":  # small cache and fd budget: reads mix cache and disk
        return LogHarness(
            lambda: SegmentLogStorage(
                path, segment_size=TINY_SEGMENT, cache_max_entries=5, max_open_files=2
            )
        )
    assert kind == "disk-no-cache"  # every read comes from the segment files
    return LogHarness(
        lambda: SegmentLogStorage(path, segment_size=TINY_SEGMENT, cache_max_entries=0)
    )


@pytest.fixture(params=["memory", "disk", "disk-tiny-segments", "disk-no-cache"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogHarness]:
    harness = make_harness(request.param, tmp_path / "log")
    yield harness
    harness.log.close()


def assert_log(
    log: SegmentLogStorage | MemoryLogStorage, expected: list[LogEntry], first: int
) -> None:
    """The log holds exactly `expected`, starting at `first`, through every read method."""
    last = first + len(expected) - 1
    assert log.first_log_index() == first
    assert log.last_log_index() == last
    assert log.get_entries(first, last) == expected
    assert log.get_entries(0, last + 100) == expected
    for e in expected:
        assert log.get_entry(e.index) == e
        assert log.get_term(e.index) == e.term
    for outside in (first - 1, last + 1, last + 2, 0, -1):
        assert log.get_entry(outside) is None
        assert log.get_term(outside) == 0


# ---- empty log -----------------------------------------------------------------------------


def test_empty_log_invariants(h: LogHarness) -> None:
    for _ in range(2):
        assert h.log.first_log_index() == 1
        assert h.log.last_log_index() == 0
        assert h.log.get_entry(0) is None
        assert h.log.get_entry(1) is None
        assert h.log.get_term(0) == 0
        assert h.log.get_term(1) == 0
        assert h.log.get_entries(1, 10) == []
        assert h.log.get_entries(1, 10, max_bytes=1) == []
        h.reopen()


def test_empty_batch_is_a_no_op(h: LogHarness) -> None:
    h.log.append_entries([])
    assert h.log.last_log_index() == 0
    h.log.append_entries(entries(1, 3))
    h.log.append_entries([])
    assert_log(h.log, entries(1, 3), 1)


# ---- append and read -----------------------------------------------------------------------


def test_append_and_read_back(h: LogHarness) -> None:
    expected = entries(1, 1) + entries(2, 17, term=2) + entries(18, 60, term=5, size=33)
    h.log.append_entries(expected[:1])
    h.log.append_entries(expected[1:17])
    for e in expected[17:]:
        h.log.append_entries([e])
    assert_log(h.log, expected, 1)
    h.reopen()
    assert_log(h.log, expected, 1)
    h.log.append_entries(entries(61, 70, term=6))
    assert_log(h.log, expected + entries(61, 70, term=6), 1)


def test_all_entry_types_and_empty_and_large_payloads(h: LogHarness) -> None:
    batch = [
        LogEntry(1, 1, EntryType.NO_OP),
        LogEntry(2, 1, EntryType.CONFIGURATION, b"peers"),
        LogEntry(3, 1, EntryType.DATA, bytes(range(256)) * 40),  # larger than a segment
        LogEntry(4, 2, EntryType.DATA, b""),
    ]
    h.log.append_entries(batch)
    assert_log(h.log, batch, 1)
    h.reopen()
    assert_log(h.log, batch, 1)
    assert h.log.get_entry(1) == LogEntry(1, 1, EntryType.NO_OP, b"")
    got = h.log.get_entry(2)
    assert got is not None and got.type is EntryType.CONFIGURATION


def test_get_entries_clips_to_the_stored_range(h: LogHarness) -> None:
    h.log.append_entries(entries(1, 20))
    assert h.log.get_entries(5, 9) == entries(5, 9)
    assert h.log.get_entries(15, 99) == entries(15, 20)
    assert h.log.get_entries(-5, 2) == entries(1, 2)
    assert h.log.get_entries(7, 7) == entries(7, 7)
    assert h.log.get_entries(9, 5) == []
    assert h.log.get_entries(21, 30) == []


@pytest.mark.parametrize("first", [1, 4, 9, 20])
def test_get_entries_max_bytes(h: LogHarness, first: int) -> None:
    h.log.append_entries(entries(1, 30, size=10))
    # Budgets below one payload still return one entry; otherwise as many as fit.
    assert h.log.get_entries(first, 30, max_bytes=1) == entries(first, first)
    assert h.log.get_entries(first, 30, max_bytes=10) == entries(first, first)
    assert h.log.get_entries(first, 30, max_bytes=19) == entries(first, first)
    assert h.log.get_entries(first, 30, max_bytes=20) == entries(first, first + 1)
    assert h.log.get_entries(first, 30, max_bytes=75) == entries(first, first + 6)
    assert h.log.get_entries(first, 30, max_bytes=10_000) == entries(first, 30)
    assert h.log.get_entries(first, first + 2, max_bytes=10_000) == entries(first, first + 2)
    assert h.log.get_entries(first, 30, max_bytes=0) == entries(first, 30)


def test_get_entries_max_bytes_with_mixed_sizes(h: LogHarness) -> None:
    batch = [entry(1, size=100), entry(2, size=0), entry(3, size=5), entry(4, size=50)]
    h.log.append_entries(batch)
    assert h.log.get_entries(1, 4, max_bytes=50) == batch[:1]  # first one alone exceeds
    assert h.log.get_entries(2, 4, max_bytes=5) == batch[1:3]  # 0 + 5 fit exactly
    assert h.log.get_entries(2, 4, max_bytes=54) == batch[1:3]
    assert h.log.get_entries(2, 4, max_bytes=55) == batch[1:4]


# ---- contiguity ----------------------------------------------------------------------------


def test_append_must_start_right_after_the_last_entry(h: LogHarness) -> None:
    with pytest.raises(LogIndexError):
        h.log.append_entries(entries(2, 3))
    h.log.append_entries(entries(1, 5))
    for bad_start in (1, 5, 7):
        with pytest.raises(LogIndexError):
            h.log.append_entries(entries(bad_start, bad_start + 2))
    assert_log(h.log, entries(1, 5), 1)


def test_a_batch_with_a_gap_is_refused_whole(h: LogHarness) -> None:
    h.log.append_entries(entries(1, 2))
    for bad in ([entry(3), entry(5)], [entry(3), entry(4), entry(4)], [entry(3), entry(2)]):
        with pytest.raises(LogIndexError):
            h.log.append_entries(bad)
        assert_log(h.log, entries(1, 2), 1)
    h.reopen()
    assert_log(h.log, entries(1, 2), 1)
    h.log.append_entries(entries(3, 4))
    assert_log(h.log, entries(1, 4), 1)


# ---- truncate_suffix -----------------------------------------------------------------------


def test_truncate_suffix_at_every_point(h: LogHarness) -> None:
    """Cut at every index (crossing segment boundaries for the tiny-segment logs), reopen,
    then append a different suffix: the old one must not come back."""
    for kept in range(40, -1, -3):
        h.log.reset(1)
        h.log.append_entries(entries(1, 40))
        h.log.truncate_suffix(kept)
        assert_log(h.log, entries(1, kept), 1)
        h.reopen()
        assert_log(h.log, entries(1, kept), 1)
        h.log.append_entries(entries(kept + 1, kept + 5, term=2))
        expected = entries(1, kept) + entries(kept + 1, kept + 5, term=2)
        assert_log(h.log, expected, 1)
        h.reopen()
        assert_log(h.log, expected, 1)


def test_truncate_suffix_no_op_and_limits(h: LogHarness) -> None:
    h.log.append_entries(entries(1, 10))
    h.log.truncate_suffix(10)
    h.log.truncate_suffix(50)
    assert_log(h.log, entries(1, 10), 1)
    h.log.truncate_prefix(5)
    with pytest.raises(LogIndexError):
        h.log.truncate_suffix(3)  # below first - 1: that would cut into the snapshot
    assert_log(h.log, entries(5, 10), 5)
    h.log.truncate_suffix(4)  # first - 1: empty, first unchanged
    assert_log(h.log, [], 5)
    h.reopen()
    assert_log(h.log, [], 5)
    h.log.append_entries(entries(5, 6, term=3))
    assert_log(h.log, entries(5, 6, term=3), 5)


def test_truncate_suffix_of_an_empty_log(h: LogHarness) -> None:
    h.log.truncate_suffix(0)
    assert_log(h.log, [], 1)
    with pytest.raises(LogIndexError):
        h.log.truncate_suffix(-1)


# ---- truncate_prefix -----------------------------------------------------------------------


def test_truncate_prefix_at_every_point(h: LogHarness) -> None:
    for first in range(1, 42, 3):
        h.log.reset(1)
        h.log.append_entries(entries(1, 40))
        h.log.truncate_prefix(first)
        kept = entries(first, 40)
        assert_log(h.log, kept, first)
        assert h.reopened_state() == (first, 40, kept)
        h.log.append_entries(entries(41, 43, term=2))
        kept += entries(41, 43, term=2)
        assert_log(h.log, kept, first)
        assert h.reopened_state() == (first, 43, kept)


def test_truncate_prefix_no_op_below_first(h: LogHarness) -> None:
    h.log.append_entries(entries(1, 10))
    h.log.truncate_prefix(4)
    h.log.truncate_prefix(4)
    h.log.truncate_prefix(2)
    assert_log(h.log, entries(4, 10), 4)


def test_truncate_prefix_past_the_end_empties_the_log(h: LogHarness) -> None:
    h.log.append_entries(entries(1, 10))
    h.log.truncate_prefix(11)
    assert_log(h.log, [], 11)
    h.log.truncate_prefix(25)
    assert_log(h.log, [], 25)
    assert h.reopened_state() == (25, 24, [])
    with pytest.raises(LogIndexError):
        h.log.append_entries(entries(11, 12))
    h.log.append_entries(entries(25, 27, term=4))
    assert_log(h.log, entries(25, 27, term=4), 25)
    assert h.reopened_state() == (25, 27, entries(25, 27, term=4))


def test_prefix_and_suffix_truncations_interleaved(h: LogHarness) -> None:
    h.log.append_entries(entries(1, 30))
    h.log.truncate_prefix(10)
    h.log.truncate_suffix(20)
    h.log.truncate_prefix(15)
    h.log.append_entries(entries(21, 25, term=2))
    h.log.truncate_suffix(22)
    expected = entries(15, 20) + entries(21, 22, term=2)
    assert_log(h.log, expected, 15)
    assert h.reopened_state() == (15, 22, expected)


# ---- reset ---------------------------------------------------------------------------------


@pytest.mark.parametrize("next_index", [1, 5, 30, 1000])
def test_reset(h: LogHarness, next_index: int) -> None:
    h.log.append_entries(entries(1, 30))
    h.log.truncate_prefix(3)
    h.log.reset(next_index)
    assert_log(h.log, [], next_index)
    assert h.reopened_state() == (next_index, next_index - 1, [])
    for wrong in {1, 31, next_index + 1} - {next_index}:
        with pytest.raises(LogIndexError):
            h.log.append_entries(entries(wrong, wrong))
    h.log.append_entries(entries(next_index, next_index + 9, term=7))
    assert_log(h.log, entries(next_index, next_index + 9, term=7), next_index)
    h.reopen()
    assert_log(h.log, entries(next_index, next_index + 9, term=7), next_index)


def test_reset_below_one_is_refused(h: LogHarness) -> None:
    with pytest.raises(LogIndexError):
        h.log.reset(0)


def test_repeated_resets_survive_reopen(h: LogHarness) -> None:
    for n in (10, 3, 50, 3):
        h.log.append_entries(entries(h.log.last_log_index() + 1, h.log.last_log_index() + 4))
        h.log.reset(n)
        h.reopen()
        assert_log(h.log, [], n)
    h.log.append_entries(entries(3, 5))
    h.reopen()
    assert_log(h.log, entries(3, 5), 3)


# ---- close ---------------------------------------------------------------------------------


def test_a_closed_log_refuses_use(h: LogHarness) -> None:
    h.log.append_entries(entries(1, 3))
    h.log.close()
    h.log.close()  # idempotent
    with pytest.raises(StorageError):
        h.log.append_entries(entries(4, 4))
    with pytest.raises(StorageError):
        h.log.get_entry(2)
    with pytest.raises(StorageError):
        h.log.get_entries(1, 3)
    with pytest.raises(StorageError):
        h.log.truncate_suffix(1)
    with pytest.raises(StorageError):
        h.log.truncate_prefix(2)
    with pytest.raises(StorageError):
        h.log.reset(9)
