"""In-memory twins of the storages, for tests: nothing here survives the process.

An application's tests get them ready-made as `actors.testkit.InMemoryCluster` (docs/TESTING.md).

They behave exactly like the durable ones (the same contract tests run against both) and also
model durability, so that a simulator can crash a peer and restart it with what a real disk
would still hold:

- `MemoryLogStorage(sync=True)`: an append is durable when it returns; with sync=False it is
  durable only after `sync()`. Truncations and reset are durable at once (as on disk).
  `crash()` returns a new storage holding only the durable state.
- `MemoryMetaStorage`: every write is durable at once; `crash()` returns a copy.
- `MemorySnapshotStorage`: a commit is durable when it returns; `crash()` returns a new
  storage holding only the committed snapshots (writers in progress are lost).

The log and meta twins are not thread-safe, like the durable storages; the snapshot twin is
thread-safe, like `SnapshotStorage` (they share their rules: `SnapshotStoreCore`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from storage.base import check_contiguous
from storage.entry import LogEntry, clip_to_bytes
from storage.errors import LogIndexError, SnapshotNotFoundError, StorageError
from storage.meta_storage import validate_new_cluster_id
from storage.snapshot_storage import (
    SnapshotMeta,
    SnapshotReader,
    SnapshotStoreCore,
    SnapshotWriter,
)


class MemoryLogStorage:
    """LogStorage in a list (tests only). See the module docstring for the durability model.

    Invariant: the durable log is always a prefix of the current one: entries
    first..durable_last (appends only extend the log, and truncations are durable at once).
    """

    def __init__(self, sync: bool = True, *, first_log_index: int = 1) -> None:
        if first_log_index < 1:
            raise LogIndexError("indexes start at 1")
        self._sync = sync
        self._first = first_log_index
        self._entries: list[LogEntry] = []  # _entries[i] has index _first + i
        self._durable_last = first_log_index - 1
        self._closed = False

    @property
    def sync_enabled(self) -> bool:
        return self._sync

    # ---- the LogStorage protocol ----------------------------------------------------------

    def first_log_index(self) -> int:
        return self._first

    def last_log_index(self) -> int:
        return self._first + len(self._entries) - 1

    def get_entry(self, index: int) -> LogEntry | None:
        self._check_open()
        if self._first <= index <= self.last_log_index():
            return self._entries[index - self._first]
        return None

    def get_term(self, index: int) -> int:
        if self._first <= index <= self.last_log_index():
            return self._entries[index - self._first].term
        return 0

    def get_entries(self, first: int, last: int, max_bytes: int = 0) -> list[LogEntry]:
        self._check_open()
        lo = max(first, self._first)
        hi = min(last, self.last_log_index())
        out = self._entries[lo - self._first : hi - self._first + 1] if lo <= hi else []
        return clip_to_bytes(out, max_bytes)

    def append_entries(self, entries: Sequence[LogEntry]) -> None:
        self._check_open()
        check_contiguous(
            entries, self.last_log_index() + 1, f"{self._first}..{self.last_log_index()}"
        )
        self._entries.extend(entries)
        if self._sync:
            self._durable_last = self.last_log_index()

    def truncate_suffix(self, last_index_kept: int) -> None:
        self._check_open()
        if last_index_kept >= self.last_log_index():
            return
        if last_index_kept < self._first - 1:
            raise LogIndexError(
                f"truncate_suffix({last_index_kept}) would cut below the first index {self._first}"
            )
        del self._entries[last_index_kept + 1 - self._first :]
        self._durable_last = min(self._durable_last, last_index_kept)

    def truncate_prefix(self, first_index_kept: int) -> None:
        self._check_open()
        if first_index_kept <= self._first:
            return
        if first_index_kept > self.last_log_index():
            self.reset(first_index_kept)
            return
        del self._entries[: first_index_kept - self._first]
        self._first = first_index_kept
        # _durable_last may now be below _first - 1: the durable log is then empty.

    def reset(self, next_log_index: int) -> None:
        self._check_open()
        if next_log_index < 1:
            raise LogIndexError(f"reset({next_log_index}): indexes start at 1")
        self._entries.clear()
        self._first = next_log_index
        self._durable_last = next_log_index - 1

    def close(self) -> None:
        self._closed = True

    # ---- beyond the protocol --------------------------------------------------------------

    def sync(self) -> None:
        """Make every appended entry durable (what an fdatasync does)."""
        self._check_open()
        self._durable_last = self.last_log_index()

    flush = sync  # an alias

    def durable_last_index(self) -> int:
        """The last index that would survive a crash now (at least first - 1)."""
        return max(self._durable_last, self._first - 1)

    def crash(self, keep_unsynced: int = 0) -> MemoryLogStorage:
        """A new storage holding what a restarted process would find: the durable entries,
        plus the first `keep_unsynced` unsynced ones (a real disk may have written some of
        them; a simulator picks this number from its seeded random generator). This storage
        is left as it is; the caller should drop it."""
        if keep_unsynced < 0:
            raise ValueError("keep_unsynced must be >= 0")
        survivor = MemoryLogStorage(self._sync, first_log_index=self._first)
        last = min(self.durable_last_index() + keep_unsynced, self.last_log_index())
        survivor._entries = self._entries[: last + 1 - self._first]
        survivor._durable_last = last
        return survivor

    def __repr__(self) -> str:
        return (
            f"MemoryLogStorage({self._first}..{self.last_log_index()}, "
            f"durable to {self.durable_last_index()})"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("memory log storage is closed")


class MemoryMetaStorage:
    """MetaStorage in two attributes (tests only); every write is durable at once."""

    def __init__(self, term: int = 0, voted_for: str | None = None, cluster_id: str = "") -> None:
        self._term = term
        self._voted_for = voted_for
        self._cluster_id = cluster_id
        self._closed = False

    @property
    def term(self) -> int:
        return self._term

    @property
    def voted_for(self) -> str | None:
        return self._voted_for

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

    def set_cluster_id(self, cluster_id: str) -> None:
        if self._closed:
            raise StorageError("memory meta storage is closed")
        validate_new_cluster_id(self._cluster_id, cluster_id)
        self._cluster_id = cluster_id

    def set_term_and_vote(self, term: int, voted_for: str | None) -> None:
        if self._closed:
            raise StorageError("memory meta storage is closed")
        if type(term) is not int or term < 0:
            raise ValueError(f"term must be a non-negative int, not {term!r}")
        if voted_for is not None and not isinstance(voted_for, str):
            raise ValueError(f"voted_for must be a str or None, not {voted_for!r}")
        self._term, self._voted_for = term, voted_for

    def close(self) -> None:
        self._closed = True

    def crash(self) -> MemoryMetaStorage:
        """A copy: what a restarted process would find (everything, since writes are durable)."""
        return MemoryMetaStorage(self._term, self._voted_for, self._cluster_id)

    def __repr__(self) -> str:
        return f"MemoryMetaStorage(term={self._term}, vote={self._voted_for!r})"


class _MemorySnapshotWriter(SnapshotWriter):
    """Writes into a bytearray; `sealed` holds the bytes once committed."""

    def __init__(
        self,
        meta: SnapshotMeta,
        expected_size: int | None,
        expected_checksum: int | None,
        *,
        owner: object,
    ) -> None:
        where = f"memory snapshot writer {meta.last_index}@{meta.last_term}"
        super().__init__(meta, expected_size, expected_checksum, owner=owner, where=where)
        self._buf = bytearray()
        self.sealed = b""

    def _put(self, view: memoryview) -> None:
        self._buf += view

    def _flush(self) -> None:
        return None

    def _seal(self) -> None:
        self.sealed = bytes(self._buf)
        self._buf = bytearray()

    def _release(self) -> None:
        self._buf = bytearray()


class _MemorySnapshotReader(SnapshotReader):
    """Reads an immutable bytes object: retiring the snapshot cannot take it away."""

    def __init__(self, meta: SnapshotMeta, data: bytes) -> None:
        super().__init__(meta, stored_size=len(data), where=f"memory snapshot {meta.last_index}")
        self._data = data

    def _pread(self, offset: int, n: int) -> bytes:
        return self._data[offset : offset + n]

    def _release(self) -> None:
        self._data = b""


class MemorySnapshotStorage(SnapshotStoreCore[_MemorySnapshotWriter]):
    """SnapshotStore in a dict (tests only), with SnapshotStorage's rules: keep, staleness,
    expected size and checksum, readers that outlive retirement. A commit is durable when it
    returns; `crash()` keeps the committed snapshots only."""

    def __init__(self, keep: int = 2) -> None:
        super().__init__(keep)
        # Invariant: its keys are exactly the last_index of every meta in _committed.
        self._data: dict[int, bytes] = {}

    def crash(self) -> MemorySnapshotStorage:
        """A new storage holding what a restarted process would find: the committed
        snapshots. Writers in progress are lost (the new storage does not know them). This
        storage is left as it is; the caller should drop it."""
        survivor = MemorySnapshotStorage(self._keep)
        with self._lock:
            survivor._committed = list(self._committed)
            survivor._data = dict(self._data)
        return survivor

    def corrupt(self, last_index: int, offset: int = 0) -> None:
        """Flip the bits of one byte of a committed snapshot's data (what a bad disk does;
        fault injection for tests). Readers opened before keep the bytes they had."""
        with self._lock:
            data = self._data.get(last_index)
            if data is None:
                raise SnapshotNotFoundError(f"no snapshot {last_index} to corrupt")
            if not 0 <= offset < len(data):
                raise ValueError(f"offset {offset} outside the data (0..{len(data) - 1})")
            flipped = bytes([data[offset] ^ 0xFF])
            self._data[last_index] = data[:offset] + flipped + data[offset + 1 :]

    def __repr__(self) -> str:
        held = ", ".join(str(m.last_index) for m in self.snapshots())
        return f"MemorySnapshotStorage([{held}])"

    # ---- the hooks of SnapshotStoreCore ---------------------------------------------------

    def _name(self) -> str:
        return "memory snapshot storage"

    def _new_writer(
        self, meta: SnapshotMeta, expected_size: int | None, expected_checksum: int | None
    ) -> _MemorySnapshotWriter:
        return _MemorySnapshotWriter(meta, expected_size, expected_checksum, owner=self)

    def _install(self, writer: _MemorySnapshotWriter, meta: SnapshotMeta) -> None:
        self._data[meta.last_index] = writer.sealed

    def _retire(self, metas: Sequence[SnapshotMeta]) -> list[Path]:
        for meta in metas:
            del self._data[meta.last_index]
        return []

    def _new_reader(self, meta: SnapshotMeta) -> SnapshotReader:
        return _MemorySnapshotReader(meta, self._data[meta.last_index])
