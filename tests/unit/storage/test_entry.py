"""build_entries, command_entries, slot_setters: the fast constructors give exactly what
LogEntry(...) gives, and refuse a class they do not match."""

from __future__ import annotations

import dataclasses

import pytest

from storage.entry import (
    EntryType,
    LogEntry,
    build_entries,
    clip_to_bytes,
    command_entries,
    slot_setters,
)


def test_command_entries_equal_entries_built_one_by_one() -> None:
    built = command_entries(41, 7, [b"a", b"", b"ccc"])
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
    assert command_entries(5, 1, []) == []


def test_clip_to_bytes_keeps_at_least_one_entry() -> None:
    entries = command_entries(1, 1, [b"xx", b"yy", b"zz"])
    assert clip_to_bytes(entries, 4) == entries[:2]
    assert clip_to_bytes(entries, 1) == entries[:1]
    assert clip_to_bytes(entries, 0) == entries


def test_slot_setters_refuse_a_class_whose_fields_are_not_the_ones_named() -> None:
    with pytest.raises(TypeError, match="update its builder"):
        slot_setters(LogEntry, "index", "term", "data")

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    with pytest.raises(TypeError):
        slot_setters(Checked, "a")
