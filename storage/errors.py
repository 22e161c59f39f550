"""Storage errors. All derive from StorageError."""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every storage failure."""


class CorruptLogError(StorageError):
    """Stored data failed validation (CRC, index gap, unreadable segment).

    Raised at open instead of silently dropping a record that may have been acknowledged.
    `path` and `offset` name where the damage is.
    """

    def __init__(self, message: str, path: str = "", offset: int = -1) -> None:
        where = f" ({path} at offset {offset})" if path else ""
        super().__init__(f"{message}{where}")
        self.path = path
        self.offset = offset


class LogIndexError(StorageError):
    """An append or truncation that would break the log's contiguity."""


class CorruptMetaError(CorruptLogError):
    """The meta file (current term and vote) failed validation. A CorruptLogError subclass so
    that one `except CorruptLogError` at startup covers every kind of damaged storage."""


class CorruptSnapshotError(CorruptLogError):
    """A snapshot failed validation: its meta CRC, its data's size or checksum, or the size or
    checksum its sender announced. A CorruptLogError subclass so that one `except
    CorruptLogError` at startup covers it too. Raised by a reader's `read` at the end of the
    data, by `commit` when the expected size or checksum does not match, and by a writer's
    `write` past the expected size."""


class SnapshotNotFoundError(StorageError):
    """`open` of a snapshot the storage does not hold (none at all, or a retired one)."""


class StaleSnapshotError(StorageError):
    """`commit` of a snapshot no newer than the latest one (last_index <= latest's): refused,
    its temporary data removed, the latest one unchanged."""
