"""The log entry: the one type the disk (storage) and the wire (transport) share.

It imports nothing of the project, so both may import it (docs/DESIGN.md, "Layers")."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


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
