"""The SnapshotStore contract, written once and run against both implementations.

`h.reopen()` models a restart (close + open for the disk storage, `crash()` for the memory
one); `h.flip(index, offset)` damages one byte of a committed snapshot's data the way a bad
disk would. The memory twin's own durability model is tested at the end.
"""

from __future__ import annotations

import random
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storage.base import SnapshotStore
from storage.errors import (
    CorruptLogError,
    CorruptSnapshotError,
    SnapshotNotFoundError,
    StaleSnapshotError,
    StorageError,
)
from storage.memory import MemorySnapshotStorage
from storage.snapshot_storage import (
    DATA_NAME,
    TMP_PREFIX,
    SnapshotMeta,
    SnapshotReader,
    SnapshotStorage,
    SnapshotWriter,
)

MiB = 1024 * 1024
AnyStore = SnapshotStorage | MemorySnapshotStorage


def payload(index: int, size: int = 1000) -> bytes:
    """Deterministic bytes, different for every index (a snapshot served for another shows)."""
    return random.Random(index).randbytes(size)


def meta(index: int, term: int = 1, conf: bytes = b"a,b,c") -> SnapshotMeta:
    return SnapshotMeta(index, term, conf)


def write(
    store: SnapshotStore, index: int, data: bytes, *, chunk: int = 4096, **expected: int
) -> SnapshotWriter:
    writer = store.create_writer(meta(index), **expected)
    for at in range(0, len(data), chunk):
        assert writer.write(data[at : at + chunk]) == len(data[at : at + chunk])
    return writer


def save(store: SnapshotStore, index: int, data: bytes | None = None) -> SnapshotMeta:
    return store.commit(write(store, index, payload(index) if data is None else data))


def read_all(store: SnapshotStore, index: int | None = None, chunk: int = 7777) -> bytes:
    with store.open(index) as reader:
        parts = []
        while part := reader.read(chunk):
            parts.append(part)
        return b"".join(parts)


def last_index(store: SnapshotStore) -> int | None:
    latest = store.latest()
    return None if latest is None else latest.last_index


def held(store: AnyStore) -> list[int]:
    return [m.last_index for m in store.snapshots()]


class SnapshotHarness:
    """A storage under test, and what a restarted process or a bad disk would do to it."""

    def __init__(self, kind: str, path: Path, keep: int) -> None:
        self.kind = kind
        self.path = path
        self.keep = keep
        self.store: AnyStore = self._make()

    def _make(self) -> AnyStore:
        if self.kind == "memory":
            return MemorySnapshotStorage(keep=self.keep)
        return SnapshotStorage(self.path, keep=self.keep, sync=self.kind == "disk")

    def reopen(self) -> None:
        if isinstance(self.store, MemorySnapshotStorage):
            self.store = self.store.crash()
        else:
            self.store.close()
            self.store = self._make()

    def flip(self, index: int, offset: int) -> None:
        if isinstance(self.store, MemorySnapshotStorage):
            self.store.corrupt(index, offset)
            return
        with open(self.path / f"{index:020d}" / DATA_NAME, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))

    def leftovers(self) -> list[str]:
        """Temporary data on disk (none may remain once a writer is committed or discarded)."""
        if self.kind == "memory":
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name.startswith(TMP_PREFIX))


@pytest.fixture(params=["memory", "disk", "disk-nosync"])
def make(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., SnapshotHarness]]:
    made: list[SnapshotHarness] = []

    def factory(keep: int = 2) -> SnapshotHarness:
        harness = SnapshotHarness(request.param, tmp_path / f"snap{len(made)}", keep)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        harness.store.close()


@pytest.fixture
def h(make: Callable[..., SnapshotHarness]) -> SnapshotHarness:
    return make()


# ---- roundtrip ----------------------------------------------------------------------------


def test_fresh_storage_holds_nothing(h: SnapshotHarness) -> None:
    for _ in range(2):
        assert h.store.latest() is None
        with pytest.raises(SnapshotNotFoundError):
            h.store.open()
        with pytest.raises(SnapshotNotFoundError):
            h.store.open(1)
        h.reopen()


def test_write_commit_open_read_roundtrip(h: SnapshotHarness) -> None:
    data = payload(7, 2 * MiB + 12345)  # crosses the writer's and the validator's buffers
    writer = h.store.create_writer(SnapshotMeta(7, 3, b"conf\x00bytes"))
    assert (writer.meta, writer.bytes_written) == (SnapshotMeta(7, 3, b"conf\x00bytes"), 0)
    view = memoryview(data)
    writer.write(view[:1000])  # every buffer type
    writer.write(bytearray(view[1000:5000]))
    writer.write(bytes(view[5000 : MiB + 3]))
    writer.flush()
    writer.write(view[MiB + 3 :])
    assert writer.bytes_written == len(data)

    committed = h.store.commit(writer)

    assert committed == SnapshotMeta(7, 3, b"conf\x00bytes", len(data), zlib.crc32(data))
    for _ in range(2):  # and again after a restart
        assert h.store.latest() == committed
        with h.store.open() as reader:
            assert reader.meta == committed
            assert reader.read() == data
            assert reader.read() == b""
        assert read_all(h.store, 7, chunk=65536) == data
        h.reopen()
    assert h.leftovers() == []


def test_empty_snapshot(h: SnapshotHarness) -> None:
    committed = save(h.store, 4, b"")
    assert (committed.size, committed.checksum) == (0, 0)
    h.reopen()
    with h.store.open() as reader:
        assert reader.read() == b""
        assert reader.read(10) == b""
        assert reader.read_at(0, 10) == b""


def test_latest_is_the_newest_and_older_ones_open_by_index(h: SnapshotHarness) -> None:
    save(h.store, 10)
    save(h.store, 20)
    assert last_index(h.store) == 20
    assert read_all(h.store) == payload(20)
    assert read_all(h.store, 10) == payload(10)
    assert read_all(h.store, 20) == payload(20)
    with pytest.raises(SnapshotNotFoundError):
        h.store.open(15)


# ---- retirement ---------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_only_the_newest_keep_snapshots_are_kept(
    make: Callable[..., SnapshotHarness], keep: int
) -> None:
    h = make(keep)
    for index in range(1, 6):
        save(h.store, index)
    expected = list(range(6 - keep, 6))
    for _ in range(2):
        assert held(h.store) == expected
        for index in range(1, 6 - keep):
            with pytest.raises(SnapshotNotFoundError):
                h.store.open(index)
        for index in expected:
            assert read_all(h.store, index) == payload(index)
        h.reopen()
    if h.kind != "memory":
        assert sorted(p.name for p in h.path.iterdir()) == [f"{i:020d}" for i in expected]


def test_a_reader_survives_the_retirement_of_its_snapshot(
    make: Callable[..., SnapshotHarness],
) -> None:
    h = make(keep=1)
    data = payload(1, 300_000)
    save(h.store, 1, data)
    with h.store.open(1) as reader:
        first = reader.read(1000)
        save(h.store, 2)  # retires 1
        with pytest.raises(SnapshotNotFoundError):
            h.store.open(1)
        assert reader.read_at(5000, 10) == data[5000:5010]
        h.store.close()  # and the storage's close does not take it away either
        assert first + reader.read() == data  # verified at the end: no error
    assert h.leftovers() == []


# ---- expected size and checksum -----------------------------------------------------------


def test_commit_checks_the_expected_size_and_checksum(h: SnapshotHarness) -> None:
    data = payload(5)
    writer = write(h.store, 5, data, expected_size=len(data), expected_checksum=zlib.crc32(data))
    assert h.store.commit(writer).checksum == zlib.crc32(data)


@pytest.mark.parametrize(
    "expected",
    [
        {"expected_checksum": zlib.crc32(payload(5)) ^ 1},
        {"expected_size": len(payload(5)) + 1},
        {"expected_size": len(payload(5)) + 1, "expected_checksum": zlib.crc32(payload(5))},
    ],
    ids=["checksum", "size", "size-with-right-checksum"],
)
def test_a_mismatch_with_the_expected_values_discards_the_snapshot(
    h: SnapshotHarness, expected: dict[str, int]
) -> None:
    before = save(h.store, 3)
    writer = write(h.store, 5, payload(5), **expected)

    with pytest.raises(CorruptSnapshotError) as raised:
        h.store.commit(writer)

    assert isinstance(raised.value, CorruptLogError)  # one except at startup covers it
    assert h.store.latest() == before
    with pytest.raises(SnapshotNotFoundError):
        h.store.open(5)
    assert h.leftovers() == []
    with pytest.raises(StorageError):
        h.store.commit(writer)  # discarded: not committable any more
    h.store.abort(writer)  # a no-op
    h.reopen()
    assert held(h.store) == [3]


def test_a_write_past_the_expected_size_is_refused(h: SnapshotHarness) -> None:
    writer = h.store.create_writer(meta(5), expected_size=10)
    writer.write(b"x" * 6)
    with pytest.raises(CorruptSnapshotError):
        writer.write(b"y" * 5)
    assert writer.bytes_written == 6
    writer.write(b"z" * 4)  # up to the size is fine
    assert h.store.commit(writer).size == 10
    assert read_all(h.store) == b"x" * 6 + b"z" * 4


# ---- staleness ----------------------------------------------------------------------------


@pytest.mark.parametrize("older", [5, 10], ids=["older-index", "same-index"])
def test_committing_an_older_snapshot_after_a_newer_one_is_stale(
    h: SnapshotHarness, older: int
) -> None:
    slow_local_save = write(h.store, older, payload(1))  # e.g. a save still in progress...
    installed = h.store.commit(write(h.store, 10, payload(10)))  # ...overtaken by an install

    with pytest.raises(StaleSnapshotError):
        h.store.commit(slow_local_save)

    assert h.store.latest() == installed
    assert read_all(h.store) == payload(10)  # the one committed at an index is never replaced
    if older != 10:
        with pytest.raises(SnapshotNotFoundError):
            h.store.open(older)
    assert h.leftovers() == []
    h.reopen()
    assert h.store.latest() == installed


def test_concurrent_commits_leave_the_newest_latest(h: SnapshotHarness) -> None:
    indexes = [3, 9, 1, 7, 5, 8]
    writers = [write(h.store, i, payload(i)) for i in indexes]
    start = threading.Barrier(len(writers))
    outcomes: dict[int, str] = {}

    def commit(writer: SnapshotWriter) -> None:
        start.wait(timeout=10)
        try:
            h.store.commit(writer)
            outcomes[writer.meta.last_index] = "committed"
        except StaleSnapshotError:
            outcomes[writer.meta.last_index] = "stale"

    threads = [threading.Thread(target=commit, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(outcomes) == len(indexes)
    assert outcomes[9] == "committed"
    assert last_index(h.store) == 9
    assert held(h.store) == sorted(held(h.store)) and held(h.store)[-1] == 9
    for index in held(h.store):
        assert outcomes[index] == "committed"
        assert read_all(h.store, index) == payload(index)
    assert h.leftovers() == []


# ---- abort, several writers, threads ------------------------------------------------------


def test_abort_discards_and_is_idempotent(h: SnapshotHarness) -> None:
    before = save(h.store, 1)
    writer = write(h.store, 2, payload(2))
    h.store.abort(writer)
    h.store.abort(writer)
    assert h.store.latest() == before
    assert h.leftovers() == []
    with pytest.raises(StorageError):
        writer.write(b"more")
    with pytest.raises(StorageError):
        h.store.commit(writer)
    committed = save(h.store, 2)  # the index is free
    h.store.abort(write(h.store, 3, b""))
    assert h.store.latest() == committed


def test_abort_after_commit_is_a_no_op(h: SnapshotHarness) -> None:
    writer = write(h.store, 2, payload(2))
    committed = h.store.commit(writer)
    h.store.abort(writer)
    assert h.store.latest() == committed
    assert read_all(h.store) == payload(2)


def test_two_writers_at_once(h: SnapshotHarness) -> None:
    local = h.store.create_writer(meta(5))
    download = h.store.create_writer(meta(7, term=2))
    for at in range(0, 1000, 100):  # interleaved writes
        local.write(payload(5)[at : at + 100])
        download.write(payload(7)[at : at + 100])
    h.store.commit(local)
    h.store.commit(download)
    assert held(h.store) == [5, 7]
    assert read_all(h.store, 5) == payload(5)
    assert read_all(h.store, 7) == payload(7)
    assert h.leftovers() == []


def test_a_writer_moves_between_threads(h: SnapshotHarness) -> None:
    writer = h.store.create_writer(meta(3))  # created here, on an "actor thread"...
    result: list[SnapshotMeta | BaseException] = []

    def snapshot_thread() -> None:  # ...written and committed on another
        try:
            writer.write(payload(3))
            result.append(h.store.commit(writer))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=snapshot_thread)
    thread.start()
    thread.join(timeout=30)
    assert result == [h.store.latest()]
    assert read_all(h.store) == payload(3)


def test_a_writer_belongs_to_its_storage(make: Callable[..., SnapshotHarness]) -> None:
    first, second = make(), make()
    writer = write(first.store, 1, b"x")
    with pytest.raises(ValueError):
        second.store.commit(writer)
    with pytest.raises(ValueError):
        second.store.abort(writer)
    first.store.commit(writer)
    assert second.store.latest() is None


# ---- damage -------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_read_raises_at_the_end_when_a_data_byte_was_flipped(
    h: SnapshotHarness, where: str
) -> None:
    data = payload(4, 100_000)
    save(h.store, 4, data)
    offset = {"first": 0, "middle": 54_321, "last": len(data) - 1}[where]
    h.flip(4, offset)

    with h.store.open(4) as reader:
        got = b""
        with pytest.raises(CorruptSnapshotError):
            while chunk := reader.read(10_000):
                got += chunk
        assert len(got) == 90_000  # every chunk but the one that reached the end
        with pytest.raises(CorruptSnapshotError):
            reader.read()  # and from then on
        # read_at checks nothing: it serves what is stored (the receiver checks the checksum)
        assert reader.read_at(offset, 1) == bytes([data[offset] ^ 0xFF])

    with h.store.open(4) as reader, pytest.raises(CorruptSnapshotError):
        reader.read()  # all at once


# ---- reading ------------------------------------------------------------------------------


def test_read_at_reads_anywhere_without_moving_read(h: SnapshotHarness) -> None:
    data = payload(2, 5000)
    save(h.store, 2, data)
    with h.store.open() as reader:
        assert reader.read(100) == data[:100]
        assert reader.read_at(0, 10) == data[:10]
        assert reader.read_at(4990, 100) == data[4990:]  # clipped at the end
        assert reader.read_at(5000, 10) == b""
        assert reader.read_at(9999, 10) == b""
        assert reader.read_at(123, 0) == b""
        with pytest.raises(ValueError):
            reader.read_at(-1, 10)
        with pytest.raises(ValueError):
            reader.read_at(0, -1)
        assert reader.read(0) == b""
        assert reader.read() == data[100:]  # still verified at the end: no error


def test_a_closed_reader_refuses_reads(h: SnapshotHarness) -> None:
    save(h.store, 2)
    reader: SnapshotReader = h.store.open()
    reader.close()
    reader.close()
    with pytest.raises(StorageError):
        reader.read()
    with pytest.raises(StorageError):
        reader.read_at(0, 1)


# ---- closing and arguments ----------------------------------------------------------------


def test_close_aborts_open_writers_and_refuses_later_calls(h: SnapshotHarness) -> None:
    save(h.store, 1)
    writer = write(h.store, 2, payload(2))
    h.store.close()
    h.store.close()
    assert h.leftovers() == []
    with pytest.raises(StorageError):
        writer.write(b"x")
    with pytest.raises(StorageError):
        h.store.commit(writer)
    with pytest.raises(StorageError):
        h.store.create_writer(meta(3))
    with pytest.raises(StorageError):
        h.store.open()
    h.reopen()
    assert held(h.store) == [1]


def test_bad_arguments_are_refused(h: SnapshotHarness) -> None:
    with pytest.raises(ValueError):
        h.store.create_writer(SnapshotMeta(1, 1, b"", size=10))  # commit computes these
    with pytest.raises(ValueError):
        h.store.create_writer(meta(1), expected_size=-1)
    with pytest.raises(ValueError):
        h.store.create_writer(meta(1), expected_checksum=2**32)
    assert h.leftovers() == []


def test_keep_must_be_positive(h: SnapshotHarness) -> None:
    with pytest.raises(ValueError):
        MemorySnapshotStorage(keep=0) if h.kind == "memory" else SnapshotStorage(h.path, keep=0)


def test_both_implementations_are_snapshot_stores(h: SnapshotHarness) -> None:
    store: SnapshotStore = h.store  # checked by mypy; at run time, that the API is there
    for name in ("latest", "create_writer", "commit", "abort", "open", "close"):
        assert callable(getattr(store, name))


# ---- the memory twin's durability model ---------------------------------------------------


def test_memory_crash_keeps_only_committed_snapshots() -> None:
    store = MemorySnapshotStorage(keep=2)
    save(store, 1)
    committed = save(store, 2)
    in_progress = write(store, 3, payload(3))

    survivor = store.crash()

    assert survivor.latest() == committed
    assert held(survivor) == [1, 2]
    assert read_all(survivor, 1) == payload(1)
    with pytest.raises(ValueError):
        survivor.commit(in_progress)  # the writer died with the process
    save(survivor, 3)
    save(survivor, 4)
    assert held(survivor) == [3, 4]  # the same keep
    assert held(store) == [1, 2]  # the crashed one is left as it was
    store.close()
    survivor.close()


def test_memory_corrupt_is_checked() -> None:
    store = MemorySnapshotStorage()
    save(store, 1, b"abc")
    with pytest.raises(SnapshotNotFoundError):
        store.corrupt(2)
    with pytest.raises(ValueError):
        store.corrupt(1, 3)


@pytest.mark.parametrize(
    "fields",
    [(0, 1, b""), (1, 0, b""), (True, 1, b""), (1, 1, "conf"), (1, 1, b"", -1), (1, 1, b"", 0, -1)],
)
def test_snapshot_meta_checks_its_invariant(fields: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        SnapshotMeta(*fields)  # type: ignore[arg-type]
