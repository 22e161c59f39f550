"""Storage interfaces. Each has a durable implementation and an in-memory twin (tests only).

Threading: LogStorage and MetaStorage implementations are not thread-safe; the LogManager
actor is their only owner. SnapshotStore implementations are thread-safe: the FSMCaller, the
snapshot thread, the LogManager and the Replicators share one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from storage.entry import LogEntry
from storage.errors import LogIndexError

if TYPE_CHECKING:  # annotations only: importing the interfaces loads no implementation
    from storage.snapshot_storage import SnapshotMeta, SnapshotReader, SnapshotWriter


class LogStorage(Protocol):
    """An append-only, contiguous log of entries.

    Invariant: entries are exactly first_log_index()..last_log_index(), no gaps. An empty log
    has last_log_index() == first_log_index() - 1 (first_log_index() is 1 for a new log).
    """

    def first_log_index(self) -> int: ...

    def last_log_index(self) -> int: ...

    def get_entry(self, index: int) -> LogEntry | None:
        """The entry at `index`, or None outside [first, last]."""
        ...

    def get_term(self, index: int) -> int:
        """The term of the entry at `index`; 0 outside [first, last]."""
        ...

    def get_entries(self, first: int, last: int, max_bytes: int = 0) -> list[LogEntry]:
        """Entries first..last inclusive, clipped to what is stored; if max_bytes > 0, stop
        before the payloads exceed it (but always return at least one entry if any exists)."""
        ...

    def append_entries(self, entries: Sequence[LogEntry]) -> None:
        """Append a batch; entries[0].index must be last_log_index() + 1 and indexes contiguous.
        When sync is on, the whole batch is durable (one fsync) when this returns."""
        ...

    def truncate_suffix(self, last_index_kept: int) -> None:
        """Drop every entry after `last_index_kept` (a follower's conflict resolution)."""
        ...

    def truncate_prefix(self, first_index_kept: int) -> None:
        """Drop every entry before `first_index_kept` (after a snapshot)."""
        ...

    def reset(self, next_log_index: int) -> None:
        """Drop everything; the next append starts at `next_log_index` (installing a snapshot)."""
        ...

    def close(self) -> None: ...


class MetaStorage(Protocol):
    """Durable (current_term, voted_for, cluster_id). A write is atomic: after a crash, old or
    new. The cluster id is "" until set, then never changes (actors/identity.py)."""

    @property
    def term(self) -> int: ...

    @property
    def voted_for(self) -> str | None: ...

    @property
    def cluster_id(self) -> str: ...

    def set_term_and_vote(self, term: int, voted_for: str | None) -> None:
        """Durably record both; returns only once they survive a crash."""
        ...

    def set_cluster_id(self, cluster_id: str) -> None:
        """Durably record the cluster this peer belongs to. ValueError if it is empty, too
        long, or another id is already recorded."""
        ...

    def close(self) -> None: ...


class SnapshotStore(Protocol):
    """Durable Raft snapshots: the newest `keep` committed ones, and writers in progress.

    Implementations: `snapshot_storage.SnapshotStorage` (a directory per snapshot) and
    `memory.MemorySnapshotStorage` (tests only). Both return the same writer and reader
    classes (`snapshot_storage.SnapshotWriter`, `SnapshotReader`). Every method is
    thread-safe; a writer or a reader is used by one thread at a time (any thread).

    Invariant: latest() only moves forward; the snapshot committed at an index is never
    replaced.
    """

    def latest(self) -> SnapshotMeta | None:
        """The newest committed snapshot's meta (size and checksum filled in), or None."""
        ...

    def create_writer(
        self,
        meta: SnapshotMeta,
        *,
        expected_size: int | None = None,
        expected_checksum: int | None = None,
    ) -> SnapshotWriter:
        """A writer for `meta` (its size and checksum 0; ValueError otherwise). Several may be
        open at once. A sender's announced size and checksum, if given, are checked: by
        `write` (never past the size) and by `commit`."""
        ...

    def commit(self, writer: SnapshotWriter) -> SnapshotMeta:
        """Make the writer's snapshot durable and the latest; returns its complete meta.
        Raises StaleSnapshotError if it is no newer than latest() (the same index included),
        CorruptSnapshotError if the expected size or checksum does not match, StorageError
        on an I/O failure; on any of them the writer is discarded and nothing else changes.
        Snapshots beyond the newest `keep` are then retired."""
        ...

    def abort(self, writer: SnapshotWriter) -> None:
        """Discard an open writer and its data. Idempotent; a no-op once committed."""
        ...

    def open(self, last_index: int | None = None) -> SnapshotReader:
        """A reader of the snapshot at `last_index` (None: the latest). Raises
        SnapshotNotFoundError if none is held. A reader keeps working after its snapshot is
        retired, and after close()."""
        ...

    def close(self) -> None:
        """Abort every open writer; later calls raise StorageError. Idempotent."""
        ...


def check_contiguous(entries: Sequence[LogEntry], expected: int, log_range: str) -> None:
    """Raise LogIndexError unless `entries` are indexes expected, expected+1, ... (the
    contiguity every LogStorage keeps; `log_range` describes the log for the message)."""
    for entry in entries:
        if entry.index != expected:
            raise LogIndexError(
                f"append of index {entry.index}, expected {expected} (log is {log_range})"
            )
        expected += 1
