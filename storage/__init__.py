"""Durable storage of a Raft peer: the log, the term/vote meta data, and in-memory twins.

`SegmentLogStorage` and `FileMetaStorage` are the durable implementations of the `LogStorage`
and `MetaStorage` protocols; `MemoryLogStorage` and `MemoryMetaStorage` are for tests only.
"""

from __future__ import annotations

from storage.base import LogStorage, MetaStorage
from storage.entry import EntryType, LogEntry
from storage.errors import CorruptLogError, CorruptMetaError, LogIndexError, StorageError
from storage.log_storage import SegmentLogStorage
from storage.memory import MemoryLogStorage, MemoryMetaStorage
from storage.meta_storage import FileMetaStorage

__all__ = [
    "CorruptLogError",
    "CorruptMetaError",
    "EntryType",
    "FileMetaStorage",
    "LogEntry",
    "LogIndexError",
    "LogStorage",
    "MemoryLogStorage",
    "MemoryMetaStorage",
    "MetaStorage",
    "SegmentLogStorage",
    "StorageError",
]
