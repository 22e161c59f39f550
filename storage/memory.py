"""In-memory twins of the storages. Tests only: nothing here survives the process.

They behave exactly like the durable ones (the same contract tests run against both) and also
model durability, so that a simulator can crash a peer and restart it with what a real disk
would still hold:

- `MemoryLogStorage(sync=True)`: an append is durable when it returns; with sync=False it is
  durable only after `sync()`. Truncations and reset are durable at once (as on disk).
  `crash()` returns a new storage holding only the durable state.
- `MemoryMetaStorage`: every write is durable at once; `crash()` returns a copy.

Not thread-safe, like the durable storages.
"""

from __future__ import annotations

from collections.abc import Sequence

from storage.base import check_contiguous
from storage.entry import LogEntry, clip_to_bytes
from storage.errors import LogIndexError, StorageError


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

    def __init__(self, term: int = 0, voted_for: str | None = None) -> None:
        self._term = term
        self._voted_for = voted_for
        self._closed = False

    @property
    def term(self) -> int:
        return self._term

    @property
    def voted_for(self) -> str | None:
        return self._voted_for

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
        return MemoryMetaStorage(self._term, self._voted_for)

    def __repr__(self) -> str:
        return f"MemoryMetaStorage(term={self._term}, vote={self._voted_for!r})"
