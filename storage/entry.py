"""The log entry: the one type the disk (storage) and the wire (transport) share.

It imports nothing of the project, so both may import it (docs/DESIGN.md, "Layers")."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from itertools import repeat


class EntryType(IntEnum):
    """What a log entry carries. Values are part of the on-disk and wire formats."""

    NO_OP = 0  # written by a new leader so that earlier-term entries commit through it (Fig. 8)
    DATA = 1  # a user command, opaque bytes to Raft
    CONFIGURATION = 2  # an encoded cluster configuration


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One log record. Invariant: index >= 1, term >= 1."""

    index: int
    term: int
    type: EntryType
    data: bytes = b""

    def __str__(self) -> str:
        return f"{self.index}@{self.term}:{self.type.name}({len(self.data)}B)"


# The slot descriptors of LogEntry: calling them is what its frozen __init__ does per field.
_new_object = object.__new__
_set_index = LogEntry.__dict__["index"].__set__
_set_term = LogEntry.__dict__["term"].__set__
_set_type = LogEntry.__dict__["type"].__set__
_set_data = LogEntry.__dict__["data"].__set__
# Building LogEntry without its __init__ is only right while these are all it has.
if [f.name for f in dataclasses.fields(LogEntry)] != ["index", "term", "type", "data"] or hasattr(
    LogEntry, "__post_init__"
):  # pragma: no cover - guards a change of LogEntry
    raise TypeError("LogEntry changed: update build_entries")


def build_entries(
    first_index: int,
    count: int,
    terms: Iterable[int],
    types: Iterable[EntryType],
    datas: Iterable[bytes],
) -> list[LogEntry]:
    """`count` LogEntry with indexes first_index.., taking term, type and data from the
    iterables: what LogEntry(...) builds, without its per-object Python frame (the frozen
    __init__ costs about as much as the rest of a leader's append). The caller has checked
    the invariant (index >= 1, term >= 1, type an EntryType, data bytes)."""
    entries = list(map(_new_object, repeat(LogEntry, count)))
    # any() consumes each map: the setters return None, so it never stops early.
    any(map(_set_index, entries, range(first_index, first_index + count)))
    any(map(_set_term, entries, terms))
    any(map(_set_type, entries, types))
    any(map(_set_data, entries, datas))
    return entries


def data_entries(
    first_index: int, term: int, commands: Iterable[bytes], count: int
) -> list[LogEntry]:
    """DATA entries of `term` for `count` commands, from first_index on."""
    return build_entries(
        first_index, count, repeat(term, count), repeat(EntryType.DATA, count), commands
    )


def clip_to_bytes(entries: list[LogEntry], max_bytes: int) -> list[LogEntry]:
    """The longest prefix whose payloads fit in `max_bytes` (all of it when max_bytes <= 0),
    but never less than one entry: a single oversized entry must still be able to travel."""
    if max_bytes <= 0:
        return entries
    used = 0
    for n, entry in enumerate(entries):
        used += len(entry.data)
        if used > max_bytes and n > 0:
            return entries[:n]
    return entries
