"""The in-memory twins' durability model: crash() keeps exactly what a disk would."""

from __future__ import annotations

import pytest

from storage.entry import EntryType, LogEntry
from storage.memory import MemoryLogStorage, MemoryMetaStorage


def entries(first: int, last: int, term: int = 1) -> list[LogEntry]:
    return [LogEntry(i, term, EntryType.DATA, b"%d" % i) for i in range(first, last + 1)]


def contents(log: MemoryLogStorage) -> tuple[int, int, list[LogEntry]]:
    first, last = log.first_log_index(), log.last_log_index()
    return first, last, log.get_entries(first, last)


def test_sync_on_every_append_is_durable() -> None:
    log = MemoryLogStorage(sync=True)
    log.append_entries(entries(1, 5))
    assert contents(log.crash()) == (1, 5, entries(1, 5))
    assert log.durable_last_index() == 5


def test_sync_off_unsynced_entries_are_lost() -> None:
    log = MemoryLogStorage(sync=False)
    log.append_entries(entries(1, 5))
    log.sync()
    log.append_entries(entries(6, 8))
    assert log.durable_last_index() == 5
    assert contents(log) == (1, 8, entries(1, 8))  # readable before the crash
    survivor = log.crash()
    assert contents(survivor) == (1, 5, entries(1, 5))
    assert not survivor.sync_enabled
    survivor.append_entries(entries(6, 6, term=2))  # the restarted log continues from 5
    assert contents(survivor.crash()) == (1, 5, entries(1, 5))
    survivor.flush()
    assert contents(survivor.crash()) == (1, 6, entries(1, 5) + entries(6, 6, term=2))


@pytest.mark.parametrize(("keep", "last"), [(0, 5), (1, 6), (3, 8), (99, 8)])
def test_crash_may_keep_a_prefix_of_the_unsynced_entries(keep: int, last: int) -> None:
    log = MemoryLogStorage(sync=False)
    log.append_entries(entries(1, 5))
    log.sync()
    log.append_entries(entries(6, 8))
    assert contents(log.crash(keep_unsynced=keep)) == (1, last, entries(1, last))


def test_truncations_are_durable_at_once() -> None:
    log = MemoryLogStorage(sync=False)
    log.append_entries(entries(1, 10))
    log.sync()
    log.truncate_suffix(6)
    log.append_entries(entries(7, 9, term=2))  # unsynced
    assert contents(log.crash(keep_unsynced=1)) == (1, 7, entries(1, 6) + entries(7, 7, term=2))
    assert contents(log.crash()) == (1, 6, entries(1, 6))
    log.truncate_prefix(4)
    assert contents(log.crash()) == (4, 6, entries(4, 6))


def test_truncate_prefix_beyond_the_durable_entries() -> None:
    log = MemoryLogStorage(sync=False)
    log.append_entries(entries(1, 3))
    log.sync()
    log.append_entries(entries(4, 10))
    log.truncate_prefix(6)
    assert contents(log) == (6, 10, entries(6, 10))
    assert contents(log.crash()) == (6, 5, [])
    assert contents(log.crash(keep_unsynced=2)) == (6, 7, entries(6, 7))


def test_reset_is_durable_at_once() -> None:
    log = MemoryLogStorage(sync=False)
    log.append_entries(entries(1, 3))
    log.reset(20)
    log.append_entries(entries(20, 21))
    assert contents(log.crash()) == (20, 19, [])
    assert contents(log.crash(keep_unsynced=5)) == (20, 21, entries(20, 21))


def test_crash_copies_are_independent() -> None:
    log = MemoryLogStorage()
    log.append_entries(entries(1, 3))
    copy = log.crash()
    copy.append_entries(entries(4, 4))
    log.truncate_suffix(1)
    assert contents(copy) == (1, 4, entries(1, 4))
    assert contents(log) == (1, 1, entries(1, 1))


def test_crash_rejects_negative_keep() -> None:
    with pytest.raises(ValueError):
        MemoryLogStorage().crash(keep_unsynced=-1)


def test_meta_crash_is_a_copy() -> None:
    meta = MemoryMetaStorage()
    meta.set_term_and_vote(3, "a")
    copy = meta.crash()
    meta.set_term_and_vote(4, None)
    assert (copy.term, copy.voted_for) == (3, "a")
    assert (meta.term, meta.voted_for) == (4, None)
