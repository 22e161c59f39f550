"""The unit of the replicated log."""

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
