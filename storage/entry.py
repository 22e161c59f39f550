"""The log entry: the one type the disk (storage) and the wire (transport) share.

It imports nothing of the project, so both may import it (docs/DESIGN.md, "Layers")."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import repeat
from typing import Any


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


def slot_setters(cls: type, *names: str) -> tuple[Callable[[Any, Any], None], ...]:
    """The setters of the slot descriptors of frozen dataclass `cls`, one per field: on an
    `object.__new__(cls)`, calling each is what the frozen __init__ does, without its
    per-object Python frame (for objects built once per command on the hot path). `names`
    must be all its fields in order, and it must have no __post_init__: TypeError otherwise,
    at import, so that a changed class cannot be built half-initialised."""
    fields = [f.name for f in dataclasses.fields(cls)]
    if fields != list(names) or hasattr(cls, "__post_init__"):
        raise TypeError(
            f"{cls.__name__} has fields {fields}, not {list(names)}: update its builder"
        )
    return tuple(cls.__dict__[name].__set__ for name in names)


_new_object = object.__new__
_set_index, _set_term, _set_type, _set_data = slot_setters(
    LogEntry, "index", "term", "type", "data"
)


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


def command_entries(first_index: int, term: int, commands: Sequence[bytes]) -> list[LogEntry]:
    """DATA entries of `term` for `commands`, from first_index on."""
    count = len(commands)
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
