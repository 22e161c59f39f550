"""build_entries / data_entries: the fast constructors give exactly what LogEntry(...) gives."""

from __future__ import annotations

import dataclasses

import pytest

from storage.entry import EntryType, LogEntry, build_entries, clip_to_bytes, data_entries


def test_data_entries_equal_entries_built_one_by_one() -> None:
    built = data_entries(41, 7, [b"a", b"", b"ccc"], 3)
    assert built == [
        LogEntry(41, 7, EntryType.DATA, b"a"),
        LogEntry(42, 7, EntryType.DATA, b""),
        LogEntry(43, 7, EntryType.DATA, b"ccc"),
    ]
    assert all(type(e) is LogEntry for e in built)
    assert [hash(e) for e in built] == [
        hash(LogEntry(e.index, e.term, e.type, e.data)) for e in built
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        built[0].index = 1  # type: ignore[misc]  # still frozen


def test_build_entries_takes_term_and_type_per_entry() -> None:
    built = build_entries(1, 2, [1, 2], [EntryType.NO_OP, EntryType.CONFIGURATION], [b"", b"c"])
    assert built == [LogEntry(1, 1, EntryType.NO_OP), LogEntry(2, 2, EntryType.CONFIGURATION, b"c")]
    assert data_entries(5, 1, [], 0) == []


def test_clip_to_bytes_keeps_at_least_one_entry() -> None:
    entries = data_entries(1, 1, [b"xx", b"yy", b"zz"], 3)
    assert clip_to_bytes(entries, 4) == entries[:2]
    assert clip_to_bytes(entries, 1) == entries[:1]
    assert clip_to_bytes(entries, 0) == entries
