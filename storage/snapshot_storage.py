"""`SnapshotStorage`: durable Raft snapshots, one directory each (SOFAJRaft's
LocalSnapshotStorage), and the writer, reader and rules it shares with its in-memory twin.

Layout of the directory::

    00000000000000012345/          a committed snapshot, named by its last_index (20 digits)
        data                       the state machine's bytes (opaque here)
        meta                       its SnapshotMeta (format below)
    00000000000000012000/          an older one: the newest `keep` are kept
    tmp-00000000000000012399-<t>/  a snapshot being written (<t>: a random token)
    tmp-retired-00000000000000011500-<t>/   a retired snapshot being deleted
    00000000000000011000.corrupt   a snapshot found damaged at open, set aside as evidence
                                   (.corrupt.1, .corrupt.2, ... if the name is taken)

Meta file: a framed record (storage/framed.py) with magic b"PKRFTSNP" and the body::

    {"last_index": int >= 1, "last_term": int >= 1, "conf": bytes,
     "size": int >= 0, "checksum": u32}          (size and zlib.crc32 of data)

A writer (`create_writer`) writes `data` into a temp directory of its own, without the
storage's lock. `commit` makes it the newest snapshot in an order that is crash-safe at every
step, the previous snapshot staying usable until the new one is complete:

1. check the expected size and checksum, if given (a mismatch removes the temp directory and
   raises CorruptSnapshotError: nothing else changes; the running CRC needs no reread), then
   flush and fsync data;
2. write meta and fsync it, fsync the temp directory;
3. rename the temp directory to its final name and fsync the parent: the commit point;
4. retire the snapshots beyond the newest `keep`, oldest first: rename each to a tmp- name,
   fsync the parent, then delete it. A reader already open keeps its descriptor and reads on.

A crash before 3 leaves a tmp- directory, which the next open deletes; a crash after it leaves
the new snapshot, perhaps with more than `keep` snapshots (retired at open) or a tmp-
directory (deleted). A commit no newer than the latest snapshot (last_index <= latest's, the
same index included) raises StaleSnapshotError and is discarded: the snapshot already
committed at an index is never replaced. Staleness is checked before step 1 (so a stale
snapshot costs no fsync) and again under the lock at step 3 (another commit may have won).
With sync=False no fsync is done (tests, benchmarks).

Open deletes every tmp- entry, then validates the newest snapshot fully (meta CRC, data size
and checksum: one read of the data) and the older ones by their meta only. A damaged one is
renamed aside to `<name>.corrupt` (never deleted: it is evidence) and logged at ERROR, and the
next older one is tried. Names that are neither snapshots nor tmp- are left alone (a warning).

Thread-safe (see `SnapshotStoreCore`); a writer and a reader are each used by one thread at a
time, not necessarily the one that created them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import uuid
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum
from io import BufferedWriter, FileIO
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, cast

from storage._fileutil import ensure_dir, fsync_dir, pread_exact, pwrite_all, read_file
from storage.errors import (
    CorruptSnapshotError,
    SnapshotNotFoundError,
    StaleSnapshotError,
    StorageError,
)
from storage.framed import HEADER, decode_framed, encode_framed

log = logging.getLogger(__name__)

DATA_NAME = "data"
META_NAME = "meta"
TMP_PREFIX = "tmp-"
CORRUPT_SUFFIX = ".corrupt"
SNAPSHOT_META_MAGIC = b"PKRFTSNP"
_NAME_RE = re.compile(r"^\d{20}$")
_CORRUPT_RE = re.compile(r"^\d{20}" + re.escape(CORRUPT_SUFFIX) + r"(\.\d+)?$")
_U32 = 1 << 32

MiB = 1024 * 1024


# ---- the meta -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What a snapshot holds: the state machine after applying entries 1..last_index.

    Invariant (checked at construction): last_index >= 1, last_term >= 1, conf is bytes,
    size >= 0, 0 <= checksum < 2**32. size and checksum (zlib.crc32) describe the data; they
    are 0 in a writer's meta until commit fills them in.
    """

    last_index: int
    last_term: int
    conf: bytes  # the cluster configuration at last_index, encoded by the caller
    size: int = 0
    checksum: int = 0

    def __post_init__(self) -> None:
        problem = _meta_problem(
            self.last_index, self.last_term, self.conf, self.size, self.checksum
        )
        if problem:
            raise ValueError(f"bad SnapshotMeta: {problem}")

    def __str__(self) -> str:
        return f"{self.last_index}@{self.last_term} {self.size}B crc={self.checksum:08x}"


def _meta_problem(last_index: Any, last_term: Any, conf: Any, size: Any, checksum: Any) -> str:
    """What is wrong with these fields, or "" (untrusted input: any type may arrive)."""
    if type(last_index) is not int or last_index < 1:
        return f"last_index {last_index!r} is not an int >= 1"
    if type(last_term) is not int or last_term < 1:
        return f"last_term {last_term!r} is not an int >= 1"
    if not isinstance(conf, bytes):
        return f"conf is {type(conf).__name__}, not bytes"
    if type(size) is not int or size < 0:
        return f"size {size!r} is not an int >= 0"
    if type(checksum) is not int or not 0 <= checksum < _U32:
        return f"checksum {checksum!r} is not a u32"
    return ""


def encode_snapshot_meta(meta: SnapshotMeta) -> bytes:
    return encode_framed(
        SNAPSHOT_META_MAGIC,
        {
            "last_index": meta.last_index,
            "last_term": meta.last_term,
            "conf": meta.conf,
            "size": meta.size,
            "checksum": meta.checksum,
        },
    )


def decode_snapshot_meta(data: bytes, path: str) -> SnapshotMeta:
    """The SnapshotMeta in a meta file's content; CorruptSnapshotError if it is not valid."""
    fields = decode_framed(data, SNAPSHOT_META_MAGIC, CorruptSnapshotError, "snapshot meta", path)
    values: list[Any] = [
        fields.get(k) for k in ("last_index", "last_term", "conf", "size", "checksum")
    ]
    problem = _meta_problem(*values)
    if problem:
        raise CorruptSnapshotError(f"meta body: {problem}", path, HEADER.size)
    return SnapshotMeta(*values)


def check_writer_args(
    meta: SnapshotMeta, expected_size: int | None, expected_checksum: int | None
) -> None:
    """ValueError unless these may start a writer (before anything is created for it)."""
    if not isinstance(meta, SnapshotMeta):
        raise ValueError(f"meta must be a SnapshotMeta, not {type(meta).__name__}")
    if meta.size or meta.checksum:
        # They describe data not written yet: commit computes them. An announced size or
        # checksum (a leader's InstallSnapshot) is checked only when passed as expected_*.
        raise ValueError(
            f"a writer's meta has size and checksum 0 (got {meta}); pass a sender's values "
            "as expected_size / expected_checksum"
        )
    if expected_size is not None and (type(expected_size) is not int or expected_size < 0):
        raise ValueError(f"expected_size must be an int >= 0, not {expected_size!r}")
    if expected_checksum is not None and (
        type(expected_checksum) is not int or not 0 <= expected_checksum < _U32
    ):
        raise ValueError(f"expected_checksum must be a u32, not {expected_checksum!r}")


# ---- writer and reader --------------------------------------------------------------------


class _State(Enum):
    OPEN = "open"  # accepts writes
    COMMITTING = "committing"  # its storage is committing it: no writes, no abort
    DONE = "done"  # committed or discarded; its resources are released


class SnapshotWriter(ABC):
    """A binary file that becomes a snapshot: `write` bytes, then the storage's `commit`
    (or `abort`). Returned by `create_writer`; its subclasses say where the bytes go.

    One thread at a time writes (any thread: there is no thread affinity). `meta` is the
    requested one (size and checksum 0); `bytes_written` counts the bytes accepted. A write
    that failed (an I/O error) leaves only `abort`.
    """

    def __init__(
        self,
        meta: SnapshotMeta,
        expected_size: int | None,
        expected_checksum: int | None,
        *,
        owner: object,
        where: str,
    ) -> None:
        self._meta = meta
        self._expected_size = expected_size
        self._expected_checksum = expected_checksum
        self._owner = owner  # the storage that created it: only it may commit or abort it
        self._where = where  # names the writer in errors and logs
        # Held by write/flush and by every state change, so that the storage's close (on
        # another thread) never releases the file from under a write in progress.
        self._lock = threading.Lock()
        self._state = _State.OPEN
        self._failed: BaseException | None = None
        # Invariant: _crc is zlib.crc32 of the _written bytes accepted so far.
        self._written = 0
        self._crc = 0

    @property
    def meta(self) -> SnapshotMeta:
        return self._meta

    @property
    def bytes_written(self) -> int:
        return self._written

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append `data`; returns its length. Past the expected size (if one was given) it
        raises CorruptSnapshotError and writes nothing."""
        view = memoryview(data).cast("B")
        n = view.nbytes
        with self._lock:
            self._check_writable()
            if self._expected_size is not None and self._written + n > self._expected_size:
                raise CorruptSnapshotError(
                    f"snapshot {self._meta.last_index}: {self._written + n} bytes written, "
                    f"{self._expected_size} expected",
                    self._where,
                    self._written,
                )
            try:
                self._put(view)
            except OSError as exc:
                self._failed = exc
                raise StorageError(f"writing {self._where} failed: {exc}") from exc
            self._crc = zlib.crc32(view, self._crc)
            self._written += n
        return n

    def flush(self) -> None:
        """Hand buffered bytes to the OS (durability comes only with commit)."""
        with self._lock:
            self._check_writable()
            try:
                self._flush()
            except OSError as exc:
                self._failed = exc
                raise StorageError(f"flushing {self._where} failed: {exc}") from exc

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._meta.last_index}@{self._meta.last_term}, "
            f"{self._written}B, {self._state.value})"
        )

    # ---- for the storage ------------------------------------------------------------------

    def _begin_commit(self) -> None:
        with self._lock:
            if self._state is not _State.OPEN:
                raise StorageError(f"{self._where}: writer is already {self._state.value}")
            if self._failed is not None:
                raise StorageError(f"{self._where}: a write failed ({self._failed}); abort it")
            self._state = _State.COMMITTING

    def _finish(self) -> SnapshotMeta:
        """Check the bytes against what the sender announced (CorruptSnapshotError), make
        them durable, and return the complete meta (COMMITTING only)."""
        with self._lock:
            assert self._state is _State.COMMITTING
            index = self._meta.last_index
            if self._expected_size is not None and self._written != self._expected_size:
                raise CorruptSnapshotError(
                    f"snapshot {index}: {self._written} bytes written, "
                    f"{self._expected_size} expected",
                    self._where,
                    self._written,
                )
            if self._expected_checksum is not None and self._crc != self._expected_checksum:
                raise CorruptSnapshotError(
                    f"snapshot {index}: checksum {self._crc:08x}, "
                    f"{self._expected_checksum:08x} expected",
                    self._where,
                    0,
                )
            try:
                self._seal()
            except OSError as exc:
                raise StorageError(f"syncing {self._where} failed: {exc}") from exc
            return replace(self._meta, size=self._written, checksum=self._crc)

    def _close(self, *, only_if_open: bool) -> bool:
        """Move to DONE and release the resources; whether this call did it."""
        with self._lock:
            if self._state is _State.DONE or (only_if_open and self._state is not _State.OPEN):
                return False
            self._state = _State.DONE
            try:
                self._release()
            except OSError as exc:  # discarding anyway
                log.warning("%s: releasing failed: %s", self._where, exc)
            return True

    def _check_writable(self) -> None:
        if self._state is not _State.OPEN:
            raise StorageError(f"{self._where}: writer is {self._state.value}")
        if self._failed is not None:
            raise StorageError(f"{self._where}: a write failed ({self._failed}); abort it")

    # ---- where the bytes go (called with the writer's lock held) --------------------------

    @abstractmethod
    def _put(self, view: memoryview) -> None:
        """Append all of `view`."""

    @abstractmethod
    def _flush(self) -> None: ...

    @abstractmethod
    def _seal(self) -> None:
        """Make every byte durable, then release the resources (no more writes follow)."""

    @abstractmethod
    def _release(self) -> None:
        """Release the resources without making anything durable; idempotent."""


class SnapshotReader(ABC):
    """A binary file over a committed snapshot: `read` sequentially, `read_at` anywhere.

    Sequential `read` keeps a running CRC and, on reaching the end of the data, compares it
    with meta.checksum: a mismatch raises CorruptSnapshotError (then and on every later read),
    so that a streaming loader notices damage. `read_at` (sending chunks) checks nothing. The
    reader holds its data from construction on: it keeps working after its snapshot is
    retired. One thread at a time reads; close it (or use it as a context manager).
    """

    def __init__(self, meta: SnapshotMeta, *, stored_size: int, where: str) -> None:
        if stored_size != meta.size:
            raise CorruptSnapshotError(
                f"snapshot {meta.last_index}: data is {stored_size} bytes, meta says {meta.size}",
                where,
                min(stored_size, meta.size),
            )
        self._meta = meta
        self._where = where
        # Invariant: _crc is zlib.crc32 of data[:_pos], everything read() returned so far
        # (read_at does not move _pos).
        self._pos = 0
        self._crc = 0
        self._end_checked = False  # the running CRC was compared, on first reaching the end
        self._corrupt: str | None = None  # why the data is damaged, once found
        self._closed = False

    @property
    def meta(self) -> SnapshotMeta:
        return self._meta

    def read(self, n: int = -1) -> bytes:
        """The next `n` bytes (all the rest when n < 0); b"" at the end."""
        self._check_open()
        if self._corrupt is not None:
            raise CorruptSnapshotError(self._corrupt, self._where, self._meta.size)
        size = self._meta.size
        want = size - self._pos if n < 0 else min(n, size - self._pos)
        data = self._read_raw(self._pos, want) if want > 0 else b""
        if len(data) < want:
            self._corrupt = (
                f"snapshot {self._meta.last_index}: data ends at {self._pos + len(data)}, "
                f"meta says {size} bytes"
            )
            raise CorruptSnapshotError(self._corrupt, self._where, self._pos + len(data))
        self._pos += len(data)
        self._crc = zlib.crc32(data, self._crc)
        if self._pos == size and not self._end_checked:
            self._end_checked = True
            if self._crc != self._meta.checksum:
                self._corrupt = (
                    f"snapshot {self._meta.last_index}: data checksum {self._crc:08x}, "
                    f"meta says {self._meta.checksum:08x}"
                )
                raise CorruptSnapshotError(self._corrupt, self._where, 0)
        return data

    def read_at(self, offset: int, n: int) -> bytes:
        """Up to `n` bytes at `offset` (fewer at the end of the data), unverified."""
        self._check_open()
        if offset < 0 or n < 0:
            raise ValueError(f"read_at({offset}, {n}): offset and n must be >= 0")
        n = min(n, self._meta.size - offset)
        return self._read_raw(offset, n) if n > 0 else b""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._meta}, at {self._pos})"

    def _read_raw(self, offset: int, n: int) -> bytes:
        try:
            return self._pread(offset, n)
        except OSError as exc:
            raise StorageError(f"reading {self._where} failed: {exc}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"{self._where}: reader is closed")

    @abstractmethod
    def _pread(self, offset: int, n: int) -> bytes:
        """`n` bytes at `offset` (n > 0); fewer only at the end of the stored data."""

    @abstractmethod
    def _release(self) -> None: ...


# ---- the rules both storages share --------------------------------------------------------

W = TypeVar("W", bound=SnapshotWriter)


class SnapshotStoreCore(ABC, Generic[W]):
    """What SnapshotStorage and MemorySnapshotStorage share: the list of committed snapshots,
    the freshness rule, retirement beyond `keep`, the writers in progress, and the order of a
    commit. Subclasses say where bytes live. (The interface is `storage.base.SnapshotStore`.)

    Thread-safe: every method takes one lock, which is never held while a writer writes or
    syncs its data (a writer writes into its own place, and commit syncs it before taking the
    lock). Lock order: the storage's lock, then a writer's; never the reverse.
    """

    def __init__(self, keep: int) -> None:
        if type(keep) is not int or keep < 1:
            raise ValueError(f"keep must be an int >= 1, not {keep!r}")
        self._keep = keep
        self._lock = threading.Lock()
        # Invariant: sorted by last_index, distinct, at most `keep`, each one readable
        # (validated at open or committed since). The last one is latest().
        self._committed: list[SnapshotMeta] = []
        self._writers: set[W] = set()  # created here, not yet committed or discarded
        self._closed = False
        # Set when an fsync after the commit point failed: what is durable is unknown, so no
        # more snapshots are written (the process should restart and recover).
        self._failed: BaseException | None = None

    @property
    def keep(self) -> int:
        return self._keep

    def latest(self) -> SnapshotMeta | None:
        """The newest committed snapshot's meta, or None."""
        with self._lock:
            return self._committed[-1] if self._committed else None

    def snapshots(self) -> list[SnapshotMeta]:
        """Every snapshot held, oldest first."""
        with self._lock:
            return list(self._committed)

    def create_writer(
        self,
        meta: SnapshotMeta,
        *,
        expected_size: int | None = None,
        expected_checksum: int | None = None,
    ) -> SnapshotWriter:
        """A writer for the snapshot `meta` (size and checksum 0). If the sender announced a
        size or checksum, pass them: commit (and a write past the size) checks them."""
        check_writer_args(meta, expected_size, expected_checksum)
        with self._lock:
            self._check_usable()
            writer = self._new_writer(meta, expected_size, expected_checksum)
            self._writers.add(writer)
        return writer

    def commit(self, writer: SnapshotWriter) -> SnapshotMeta:
        """Make `writer`'s snapshot the latest one, durably; returns its complete meta.

        StaleSnapshotError if it is no newer than the latest (checked before syncing and again
        at the commit point), CorruptSnapshotError if the expected size or checksum does not
        match, StorageError on an I/O failure. On any of them the writer is discarded and
        nothing else changes.
        """
        own = self._own(writer)
        own._begin_commit()
        try:
            with self._lock:
                self._check_fresh(own.meta)
            meta = own._finish()
            self._persist(own, meta)
            with self._lock:
                self._check_fresh(meta)
                self._install(own, meta)
                own._close(only_if_open=False)
                self._writers.discard(own)
                self._committed.append(meta)
                excess = self._committed[: -self._keep]
                del self._committed[: -self._keep]
                retired = self._retire(excess)
        except Exception:
            self._discard(own)
            raise
        self._finish_retiring(retired)
        return meta

    def abort(self, writer: SnapshotWriter) -> None:
        """Discard an open writer and its data. Idempotent; a no-op once committed."""
        own = self._own(writer)
        if own._close(only_if_open=True):
            self._discard(own)

    def open(self, last_index: int | None = None) -> SnapshotReader:
        """A reader of the snapshot at `last_index` (None: the latest); SnapshotNotFoundError
        if it is not held. The reader outlives the snapshot's retirement."""
        with self._lock:
            if self._closed:
                raise StorageError(f"{self._name()} is closed")
            found = [m for m in self._committed if last_index is None or m.last_index == last_index]
            if not found:
                held = [m.last_index for m in self._committed]
                what = "no snapshot" if last_index is None else f"no snapshot {last_index}"
                raise SnapshotNotFoundError(f"{self._name()}: {what} (holds {held})")
            return self._new_reader(found[-1])

    def close(self) -> None:
        """Abort every open writer; later calls raise StorageError. Readers stay usable until
        closed. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            writers = list(self._writers)
        for writer in writers:  # a writer being committed is discarded by its committer
            self.abort(writer)

    # ---- helpers --------------------------------------------------------------------------

    def _own(self, writer: SnapshotWriter) -> W:
        if not isinstance(writer, SnapshotWriter) or writer._owner is not self:
            raise ValueError(f"{writer!r} was not created by {self._name()}")
        return cast(W, writer)

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError(f"{self._name()} is closed")
        if self._failed is not None:
            raise StorageError(f"{self._name()} failed earlier: {self._failed}")

    def _check_fresh(self, meta: SnapshotMeta) -> None:
        """Called with the lock held. Latest only moves forward: an older (or the same)
        index must not replace it (a slow local save finishing after an install)."""
        self._check_usable()
        latest = self._committed[-1] if self._committed else None
        if latest is not None and meta.last_index <= latest.last_index:
            raise StaleSnapshotError(
                f"snapshot {meta.last_index}@{meta.last_term} is not newer than the latest, "
                f"{latest.last_index}@{latest.last_term}"
            )

    def _discard(self, writer: W) -> None:
        writer._close(only_if_open=False)
        self._remove_temp(writer)
        with self._lock:
            self._writers.discard(writer)

    # ---- where bytes live -----------------------------------------------------------------

    def _name(self) -> str:
        return type(self).__name__

    @abstractmethod
    def _new_writer(
        self, meta: SnapshotMeta, expected_size: int | None, expected_checksum: int | None
    ) -> W:
        """Called with the lock held (creating a writer is quick)."""

    def _persist(self, writer: W, meta: SnapshotMeta) -> None:
        """Make the finished writer complete on its own (without the lock); nothing in memory."""
        return None

    @abstractmethod
    def _install(self, writer: W, meta: SnapshotMeta) -> None:
        """Make it a committed snapshot (the commit point; called with the lock held)."""

    @abstractmethod
    def _retire(self, metas: Sequence[SnapshotMeta]) -> list[Path]:
        """Make these snapshots gone (lock held; must not raise); returns what
        `_finish_retiring` deletes after the lock is released."""

    def _finish_retiring(self, doomed: Sequence[Path]) -> None:
        return None

    def _remove_temp(self, writer: W) -> None:
        """Delete a discarded writer's data (must not raise); nothing in memory."""
        return None

    @abstractmethod
    def _new_reader(self, meta: SnapshotMeta) -> SnapshotReader:
        """A reader of a committed snapshot (lock held, so it is not retired meanwhile)."""


# ---- on disk ------------------------------------------------------------------------------


class _FileSnapshotWriter(SnapshotWriter):
    """Writes `data` in its own temp directory through a 1 MiB buffer."""

    def __init__(
        self,
        meta: SnapshotMeta,
        expected_size: int | None,
        expected_checksum: int | None,
        *,
        owner: object,
        temp: Path,
        fd: int,
        sync: bool,
    ) -> None:
        super().__init__(meta, expected_size, expected_checksum, owner=owner, where=str(temp))
        self.temp = temp
        self._sync = sync
        self._file = BufferedWriter(FileIO(fd, "wb"), buffer_size=MiB)

    def _put(self, view: memoryview) -> None:
        self._file.write(view)

    def _flush(self) -> None:
        self._file.flush()

    def _seal(self) -> None:
        self._file.flush()
        if self._sync:
            os.fsync(self._file.fileno())
        self._file.close()

    def _release(self) -> None:
        self._file.close()


class _FileSnapshotReader(SnapshotReader):
    """Reads `data` through a descriptor of its own, opened at construction."""

    def __init__(self, meta: SnapshotMeta, fd: int, path: Path, stored_size: int) -> None:
        super().__init__(meta, stored_size=stored_size, where=str(path))
        self._fd = fd

    def _pread(self, offset: int, n: int) -> bytes:
        return pread_exact(self._fd, n, offset)

    def _release(self) -> None:
        os.close(self._fd)


class SnapshotStorage(SnapshotStoreCore[_FileSnapshotWriter]):
    """SnapshotStore on disk (see the module docstring for the layout and crash behaviour).

    path: the snapshots' directory, created durably if missing; nothing else should write
        there.
    keep: how many committed snapshots to keep (>= 1), newest first.
    sync: fsync as the module docstring says; False skips every fsync (tests, benchmarks).
    """

    def __init__(self, path: str | Path, keep: int = 2, sync: bool = True) -> None:
        super().__init__(keep)
        self._dir = Path(path)
        self._sync = sync
        self._recover()

    @property
    def path(self) -> Path:
        return self._dir

    def __repr__(self) -> str:
        held = ", ".join(str(m.last_index) for m in self.snapshots())
        return f"SnapshotStorage({str(self._dir)!r}, [{held}])"

    # ---- opening and recovery -------------------------------------------------------------

    def _recover(self) -> None:
        with _os_errors(f"opening snapshot storage {self._dir}"):
            ensure_dir(self._dir)
            with os.scandir(self._dir) as it:
                entries = sorted(it, key=lambda e: e.name)
            leftovers: list[Path] = []
            candidates: list[Path] = []
            for entry in entries:
                path = Path(entry.path)
                if entry.name.startswith(TMP_PREFIX):
                    leftovers.append(path)
                elif _NAME_RE.match(entry.name) and entry.is_dir(follow_symlinks=False):
                    candidates.append(path)
                elif _CORRUPT_RE.match(entry.name):
                    log.warning("%s: a damaged snapshot set aside earlier, kept as evidence", path)
                else:
                    log.warning("%s: not a snapshot; ignored (left in place)", path)
            for path in leftovers:
                log.info("deleting %s, left by an interrupted commit or retirement", path)
                _remove_tree(path)
            if leftovers and self._sync:
                fsync_dir(self._dir)

            valid: list[SnapshotMeta] = []  # newest first
            for path in reversed(candidates):
                try:
                    meta = self._load_meta(path)
                    if not valid:  # the newest usable one: read all of its data once
                        with self._new_reader(meta) as reader:
                            while reader.read(MiB):
                                pass
                except CorruptSnapshotError as exc:
                    self._set_aside(path, exc)
                    continue
                valid.append(meta)
            valid.reverse()
            self._committed = valid[-self._keep :]
            self._finish_retiring(self._retire(valid[: -self._keep]))
        if self._committed:
            log.info("%s: latest snapshot %s", self._dir, self._committed[-1])

    def _load_meta(self, path: Path) -> SnapshotMeta:
        meta_path = path / META_NAME
        data = read_file(meta_path)
        if data is None:
            raise CorruptSnapshotError("snapshot has no meta file", str(meta_path))
        meta = decode_snapshot_meta(data, str(meta_path))
        if meta.last_index != int(path.name):
            raise CorruptSnapshotError(
                f"meta says last_index {meta.last_index}", str(meta_path), HEADER.size
            )
        return meta

    def _set_aside(self, path: Path, exc: CorruptSnapshotError) -> None:
        target = path.with_name(path.name + CORRUPT_SUFFIX)
        n = 0
        while os.path.lexists(target):
            n += 1
            target = path.with_name(f"{path.name}{CORRUPT_SUFFIX}.{n}")
        log.error("snapshot %s is damaged (%s); set aside as %s", path, exc, target.name)
        os.rename(path, target)
        if self._sync:
            fsync_dir(self._dir)

    # ---- the hooks of SnapshotStoreCore ---------------------------------------------------

    def _name(self) -> str:
        return f"snapshot storage {self._dir}"

    def _new_writer(
        self, meta: SnapshotMeta, expected_size: int | None, expected_checksum: int | None
    ) -> _FileSnapshotWriter:
        temp = self._dir / f"{TMP_PREFIX}{meta.last_index:020d}-{uuid.uuid4().hex[:12]}"
        try:
            # No fsync: a temp directory that a crash loses was never committed.
            os.mkdir(temp)
            fd = os.open(temp / DATA_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            _remove_tree(temp)
            raise StorageError(f"creating a snapshot writer in {temp} failed: {exc}") from exc
        try:
            return _FileSnapshotWriter(
                meta,
                expected_size,
                expected_checksum,
                owner=self,
                temp=temp,
                fd=fd,
                sync=self._sync,
            )
        except BaseException:
            os.close(fd)
            _remove_tree(temp)
            raise

    def _persist(self, writer: _FileSnapshotWriter, meta: SnapshotMeta) -> None:
        meta_path = writer.temp / META_NAME
        with _os_errors(f"writing {meta_path}"):
            fd = os.open(meta_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                pwrite_all(fd, encode_snapshot_meta(meta), 0)
                if self._sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if self._sync:
                fsync_dir(writer.temp)

    def _install(self, writer: _FileSnapshotWriter, meta: SnapshotMeta) -> None:
        final = self._dir / _dir_name(meta.last_index)
        if os.path.lexists(final):
            # Not a snapshot held (that one would be stale): something else put it there.
            raise StorageError(f"{final} exists but is not a snapshot held here; not replaced")
        with _os_errors(f"renaming {writer.temp} to {final.name}"):
            os.rename(writer.temp, final)
        if self._sync:
            try:
                fsync_dir(self._dir)
            except OSError as exc:
                self._failed = exc
                raise StorageError(f"fsync of {self._dir} after a commit failed: {exc}") from exc

    def _retire(self, metas: Sequence[SnapshotMeta]) -> list[Path]:
        doomed: list[Path] = []
        for meta in metas:  # oldest first
            path = self._dir / _dir_name(meta.last_index)
            target = self._dir / f"{TMP_PREFIX}retired-{path.name}-{uuid.uuid4().hex[:12]}"
            try:
                os.rename(path, target)
            except OSError as exc:  # it stays on disk; the next open retires it
                log.error("retiring snapshot %s failed: %s", path, exc)
                continue
            doomed.append(target)
        if doomed and self._sync:
            try:
                fsync_dir(self._dir)
            except OSError as exc:  # at worst a retired snapshot reappears, and is retired
                log.error("fsync of %s after retiring snapshots failed: %s", self._dir, exc)
        return doomed

    def _finish_retiring(self, doomed: Sequence[Path]) -> None:
        for path in doomed:
            _remove_tree(path)

    def _remove_temp(self, writer: _FileSnapshotWriter) -> None:
        _remove_tree(writer.temp)

    def _new_reader(self, meta: SnapshotMeta) -> SnapshotReader:
        path = self._dir / _dir_name(meta.last_index) / DATA_NAME
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise CorruptSnapshotError("snapshot has no data file", str(path)) from exc
        except OSError as exc:
            raise StorageError(f"opening {path} failed: {exc}") from exc
        try:
            return _FileSnapshotReader(meta, fd, path, os.fstat(fd).st_size)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError):
                raise StorageError(f"reading {path} failed: {exc}") from exc
            raise


def _dir_name(last_index: int) -> str:
    return f"{last_index:020d}"


def _remove_tree(path: Path) -> None:
    """Delete `path` (a directory tree or a file) if it exists. A failure is logged, not
    raised: what is left has a tmp- name, which the next open deletes."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("deleting %s failed: %s", path, exc)


@contextmanager
def _os_errors(what: str) -> Iterator[None]:
    """Turn an OSError into a StorageError naming `what` (the caller's path)."""
    try:
        yield
    except OSError as exc:
        raise StorageError(f"{what} failed: {exc}") from exc
