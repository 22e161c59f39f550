"""SnapshotStorage on disk: crash safety at every step of a commit, recovery from each state a
crash (or a bad disk) can leave, I/O failures, locking, and the meta file format.

A crash is simulated by standing in for the module's durable steps (`os.fsync`, `os.rename`,
`os.open`, `fsync_dir`, `pwrite_all`, `_remove_tree`): step N raises `SimulatedCrash` (a
BaseException, so no cleanup runs, as in a dead process) instead of happening; a fresh
SnapshotStorage on the same directory is then what the restarted process finds.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import storage.framed as framed
import storage.snapshot_storage as ss
from storage.errors import CorruptSnapshotError, StorageError
from storage.snapshot_storage import (
    DATA_NAME,
    META_NAME,
    SnapshotMeta,
    SnapshotStorage,
    SnapshotWriter,
    decode_snapshot_meta,
    encode_snapshot_meta,
)
from tests.unit.storage.test_snapshot_contract import payload, read_all, save, write


def name(index: int) -> str:
    return f"{index:020d}"


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def held(store: SnapshotStorage) -> list[int]:
    return [m.last_index for m in store.snapshots()]


class SimulatedCrash(BaseException):
    """The process died here."""


class Steps:
    """Records the durable steps of the module under test, and crashes at step `crash_at`."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.crash_at = crash_at
        self.done: list[tuple[str, str]] = []  # (step, the name of the path it acts on)

    def wrap(self, step: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def stand_in(*args: Any, **kwargs: Any) -> Any:
            if len(self.done) == self.crash_at:
                raise SimulatedCrash(f"before {step} {args}")
            target = args[-1] if step == "rename" else args[0]
            self.done.append((step, Path(target).name if isinstance(target, str | Path) else ""))
            return fn(*args, **kwargs)

        return stand_in

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for step in STEPS:
            stand_in(monkeypatch, step, self.wrap(step, real(step)))


OS_STEPS = ("fsync", "rename", "open")
STEPS = (*OS_STEPS, "fsync_dir", "pwrite_all", "_remove_tree")


def real(step: str) -> Callable[..., Any]:
    fn: Callable[..., Any] = getattr(os, step) if step in OS_STEPS else getattr(ss, step)
    return fn


class _Os:
    """The `os` module, with some functions replaced (inside storage.snapshot_storage only)."""

    def __getattr__(self, attr: str) -> Any:
        return getattr(os, attr)


def stand_in(monkeypatch: pytest.MonkeyPatch, step: str, fn: Callable[..., Any]) -> None:
    """Make the module under test call `fn` for `step`."""
    if step not in OS_STEPS:
        monkeypatch.setattr(ss, step, fn)
        return
    if not isinstance(ss.os, _Os):
        monkeypatch.setattr(ss, "os", _Os())
    monkeypatch.setattr(ss.os, step, fn, raising=False)


def release(writer: SnapshotWriter) -> None:
    """Close the descriptor a crashed process would have lost (else it leaks into the test)."""
    writer._close(only_if_open=False)


# ---- crash points -------------------------------------------------------------------------


def prepared(path: Path) -> tuple[SnapshotStorage, SnapshotWriter]:
    """Snapshots 1 and 2 committed (keep=2), and snapshot 3 written, about to be committed:
    its commit makes 3 the latest and retires 1."""
    store = SnapshotStorage(path, keep=2)
    save(store, 1)
    save(store, 2)
    return store, write(store, 3, payload(3, 50_000))


def test_the_steps_of_a_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order the module docstring promises (what the crash test below walks through)."""
    store, writer = prepared(tmp_path)
    steps = Steps()
    steps.install(monkeypatch)
    store.commit(writer)
    kinds = [step for step, _ in steps.done]
    assert kinds == [
        "fsync",  # data
        "open",  # meta
        "pwrite_all",
        "fsync",
        "fsync_dir",  # the temp directory
        "rename",  # the commit point
        "fsync_dir",  # the parent
        "rename",  # retire 1: to a tmp- name...
        "fsync_dir",
        "_remove_tree",  # ...then delete it
    ]
    assert steps.done[5][1] == name(3)
    assert steps.done[7][1].startswith(f"tmp-retired-{name(1)}")


@pytest.mark.parametrize("crash_at", range(10))
def test_a_crash_at_any_step_of_a_commit_leaves_a_usable_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    store, writer = prepared(tmp_path)
    with monkeypatch.context() as m:
        Steps(crash_at).install(m)
        with pytest.raises(SimulatedCrash):
            store.commit(writer)
    release(writer)

    restarted = SnapshotStorage(tmp_path, keep=2)

    renamed = crash_at > 5  # the commit point is step 5
    expected = [2, 3] if renamed else [1, 2]
    assert held(restarted) == expected
    assert listing(tmp_path) == [name(i) for i in expected]  # no leftovers, nothing set aside
    for index in expected:
        assert read_all(restarted, index) == payload(index, 50_000 if index == 3 else 1000)
    save(restarted, 4)  # and it goes on
    assert held(restarted) == ([3, 4] if renamed else [2, 4])
    restarted.close()


def test_a_crash_while_writing_loses_only_that_snapshot(tmp_path: Path) -> None:
    _, writer = prepared(tmp_path)
    writer.flush()  # some of the data reached the file
    release(writer)  # the process dies

    restarted = SnapshotStorage(tmp_path, keep=2)
    assert held(restarted) == [1, 2]
    assert listing(tmp_path) == [name(1), name(2)]
    restarted.close()


# ---- recovery from states built by hand ---------------------------------------------------


def put_snapshot(
    root: Path,
    dirname: str,
    index: int,
    data: bytes,
    *,
    with_data: bool = True,
    meta: bytes | None = None,
) -> None:
    """A snapshot directory as commit would leave it (or damaged, as the arguments say)."""
    path = root / dirname
    path.mkdir()
    if with_data:
        (path / DATA_NAME).write_bytes(data)
    if meta is None:
        meta = encode_snapshot_meta(SnapshotMeta(index, 1, b"c", len(data), zlib.crc32(data)))
    if meta != b"-":
        (path / META_NAME).write_bytes(meta)


def flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


GOOD_META = encode_snapshot_meta(SnapshotMeta(2, 1, b"c", 1000, zlib.crc32(payload(2))))

# name: (what to add beside a committed snapshot 1, the snapshots then held, and the names
# left besides them)
STATES: dict[str, tuple[Callable[[Path], object], list[int], list[str]]] = {
    "tmp-with-part-of-the-data": (
        lambda p: put_snapshot(p, "tmp-2-x", 2, payload(2)[:300], meta=b"-"),
        [1],
        [],
    ),
    "tmp-with-data-and-meta": (lambda p: put_snapshot(p, "tmp-2-x", 2, payload(2)), [1], []),
    "tmp-being-retired": (
        lambda p: put_snapshot(p, f"tmp-retired-{name(1)}-x", 1, payload(1)),
        [1],
        [],
    ),
    "tmp-file": (lambda p: (p / "tmp-stray").write_bytes(b"x"), [1], []),
    "final-dir-complete": (lambda p: put_snapshot(p, name(2), 2, payload(2)), [1, 2], []),
    "final-dir-without-meta": (
        lambda p: put_snapshot(p, name(2), 2, payload(2), meta=b"-"),
        [1],
        [name(2) + ".corrupt"],
    ),
    "final-dir-without-data": (
        lambda p: put_snapshot(p, name(2), 2, payload(2), with_data=False),
        [1],
        [name(2) + ".corrupt"],
    ),
    "data-truncated": (
        lambda p: put_snapshot(p, name(2), 2, payload(2)[:999], meta=GOOD_META),
        [1],
        [name(2) + ".corrupt"],
    ),
    "data-longer": (
        lambda p: put_snapshot(p, name(2), 2, payload(2) + b"x", meta=GOOD_META),
        [1],
        [name(2) + ".corrupt"],
    ),
    "data-byte-flipped": (
        lambda p: put_snapshot(p, name(2), 2, flip_byte(payload(2), 500), meta=GOOD_META),
        [1],
        [name(2) + ".corrupt"],
    ),
    "meta-crc-broken": (
        lambda p: put_snapshot(p, name(2), 2, payload(2), meta=flip_byte(GOOD_META, 20)),
        [1],
        [name(2) + ".corrupt"],
    ),
    "meta-truncated": (
        lambda p: put_snapshot(p, name(2), 2, payload(2), meta=GOOD_META[:10]),
        [1],
        [name(2) + ".corrupt"],
    ),
    "meta-of-another-index": (  # a copy of snapshot 1 (its data valid) under another name
        lambda p: put_snapshot(p, name(2), 1, payload(1)),
        [1],
        [name(2) + ".corrupt"],
    ),
}


@pytest.mark.parametrize("state", STATES)
def test_open_recovers_from(tmp_path: Path, state: str, caplog: pytest.LogCaptureFixture) -> None:
    store = SnapshotStorage(tmp_path)
    save(store, 1)
    store.close()
    add, expected, others = STATES[state]
    add(tmp_path)

    with caplog.at_level(logging.INFO, logger=ss.__name__):
        restarted = SnapshotStorage(tmp_path)

    assert held(restarted) == expected
    assert listing(tmp_path) == sorted([name(i) for i in expected] + others)
    assert read_all(restarted, 1) == payload(1)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == len(others)  # every snapshot set aside is reported
    restarted.close()


def test_a_damaged_snapshot_is_set_aside_intact_and_never_overwritten(tmp_path: Path) -> None:
    store = SnapshotStorage(tmp_path)
    save(store, 1)
    save(store, 2)
    store.close()
    data_file = tmp_path / name(2) / DATA_NAME
    damaged = flip_byte(data_file.read_bytes(), 7)
    data_file.write_bytes(damaged)

    restarted = SnapshotStorage(tmp_path)
    assert held(restarted) == [1]
    assert (tmp_path / f"{name(2)}.corrupt" / DATA_NAME).read_bytes() == damaged  # evidence
    save(restarted, 2)  # the index is free again; damaged again, and set aside again
    restarted.close()
    data_file.write_bytes(flip_byte(data_file.read_bytes(), 7))

    again = SnapshotStorage(tmp_path)
    assert held(again) == [1]
    assert listing(tmp_path) == [name(1), f"{name(2)}.corrupt", f"{name(2)}.corrupt.1"]
    again.close()


def test_older_snapshots_get_a_meta_check_and_the_newest_a_full_one(tmp_path: Path) -> None:
    store = SnapshotStorage(tmp_path, keep=3)
    for index in (1, 2, 3):
        save(store, index)
    store.close()
    # 1: damaged data (not read at open: older ones get a meta check only); 2: a bad meta.
    data_1 = tmp_path / name(1) / DATA_NAME
    data_1.write_bytes(flip_byte(data_1.read_bytes(), 3))
    meta_2 = tmp_path / name(2) / META_NAME
    meta_2.write_bytes(flip_byte(meta_2.read_bytes(), 30))

    restarted = SnapshotStorage(tmp_path, keep=3)

    assert held(restarted) == [1, 3]
    assert listing(tmp_path) == [name(1), f"{name(2)}.corrupt", name(3)]
    with restarted.open(1) as reader, pytest.raises(CorruptSnapshotError):
        reader.read()  # the damage in 1 shows when it is read
    restarted.close()


def test_when_every_snapshot_is_damaged_there_is_none(tmp_path: Path) -> None:
    store = SnapshotStorage(tmp_path)
    save(store, 1)
    save(store, 2)
    store.close()
    for index in (1, 2):
        (tmp_path / name(index) / META_NAME).write_bytes(b"garbage")
    restarted = SnapshotStorage(tmp_path)
    assert restarted.latest() is None
    assert listing(tmp_path) == [f"{name(1)}.corrupt", f"{name(2)}.corrupt"]
    restarted.close()


def test_open_retires_snapshots_beyond_keep(tmp_path: Path) -> None:
    store = SnapshotStorage(tmp_path, keep=3)
    for index in (1, 2, 3):
        save(store, index)
    store.close()
    restarted = SnapshotStorage(tmp_path, keep=2)
    assert held(restarted) == [2, 3]
    assert listing(tmp_path) == [name(2), name(3)]
    restarted.close()


def test_names_that_are_not_snapshots_are_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "123").mkdir()  # too few digits
    (tmp_path / name(9)).write_bytes(b"a file, not a directory")
    (tmp_path / f"{name(5)}.corrupt").mkdir()
    strangers = listing(tmp_path)

    with caplog.at_level(logging.WARNING, logger=ss.__name__):
        store = SnapshotStorage(tmp_path)
    assert store.latest() is None
    assert len(caplog.records) == len(strangers)
    save(store, 1)
    save(store, 2)
    save(store, 3)
    store.close()
    assert listing(tmp_path) == sorted([*strangers, name(2), name(3)])
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_missing_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "snapshot"
    store = SnapshotStorage(path)
    assert store.path == path and path.is_dir()
    assert store.latest() is None
    save(store, 1)
    store.close()
    assert listing(path) == [name(1)]
    assert listing(path / name(1)) == [DATA_NAME, META_NAME]


def test_a_reader_survives_its_directory_being_deleted(tmp_path: Path) -> None:
    store = SnapshotStorage(tmp_path)
    save(store, 1, payload(1, 10_000))
    with store.open(1) as reader:
        shutil.rmtree(tmp_path / name(1))
        assert reader.read_at(100, 5) == payload(1, 10_000)[100:105]
        assert reader.read() == payload(1, 10_000)
    store.close()


def test_sync_off_does_no_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = Steps()
    steps.install(monkeypatch)
    store = SnapshotStorage(tmp_path / "s", sync=False)
    save(store, 1)
    save(store, 2)
    save(store, 3)
    store.close()
    assert [s for s, _ in steps.done if s in ("fsync", "fsync_dir")] == []
    assert held(SnapshotStorage(tmp_path / "s", sync=False)) == [2, 3]


# ---- I/O failures -------------------------------------------------------------------------


def failing(
    monkeypatch: pytest.MonkeyPatch, step: str, when: Callable[[tuple[Any, ...]], bool]
) -> None:
    """Make `step` of the module raise EIO when `when(args)` holds."""
    fn = real(step)

    def fail(*args: Any, **kwargs: Any) -> Any:
        if when(args):
            raise OSError(errno.EIO, "injected I/O error")
        return fn(*args, **kwargs)

    stand_in(monkeypatch, step, fail)


@pytest.mark.parametrize(
    ("step", "when"),
    [
        ("fsync", lambda args: True),  # the data
        ("pwrite_all", lambda args: True),  # the meta
        ("fsync_dir", lambda args: Path(args[0]).name.startswith("tmp-")),
        ("rename", lambda args: Path(args[1]).name == name(2)),
    ],
    ids=["fsync-data", "write-meta", "fsync-temp-dir", "rename"],
)
def test_an_io_error_before_the_commit_point_changes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    when: Callable[[tuple[Any, ...]], bool],
) -> None:
    store = SnapshotStorage(tmp_path)
    before = save(store, 1)
    writer = write(store, 2, payload(2))
    with monkeypatch.context() as m:
        failing(m, step, when)
        with pytest.raises(StorageError, match="injected") as raised:
            store.commit(writer)
    assert str(tmp_path) in str(raised.value)  # names the path
    assert store.latest() == before
    assert listing(tmp_path) == [name(1)]  # the temp directory is gone
    save(store, 2)  # the storage is still usable
    assert held(store) == [1, 2]
    store.close()


def test_an_fsync_error_after_the_commit_point_fails_the_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStorage(tmp_path)
    save(store, 1)
    writer = write(store, 2, payload(2))
    with monkeypatch.context() as m:
        failing(m, "fsync_dir", lambda args: Path(args[0]) == tmp_path)
        with pytest.raises(StorageError, match="injected"):
            store.commit(writer)
    # What is durable is unknown: no more snapshots until a restart recovers.
    with pytest.raises(StorageError, match="failed earlier"):
        store.create_writer(SnapshotMeta(3, 1, b""))
    with store.open(1) as reader:  # reading still works
        assert reader.read() == payload(1)
    store.close()
    restarted = SnapshotStorage(tmp_path)
    assert held(restarted) == [1, 2]  # the rename did happen
    restarted.close()


def test_an_io_error_creating_a_writer_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStorage(tmp_path)
    with monkeypatch.context() as m:
        failing(m, "open", lambda args: True)
        with pytest.raises(StorageError, match="injected"):
            store.create_writer(SnapshotMeta(1, 1, b""))
    assert listing(tmp_path) == []
    store.close()


def test_an_unreadable_directory_refuses_to_open(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError):
        SnapshotStorage(tmp_path / "file")


# ---- locking ------------------------------------------------------------------------------


def test_commit_syncs_the_data_without_holding_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStorage(tmp_path, keep=3)
    save(store, 1)
    writer = write(store, 2, payload(2))
    in_fsync, go_on = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        in_fsync.set()
        if not go_on.wait(timeout=10):
            raise AssertionError("the test never let the fsync finish")
        real_fsync(fd)

    stand_in(monkeypatch, "fsync", slow_fsync)
    outcome: list[object] = []
    committer = threading.Thread(target=lambda: outcome.append(store.commit(writer)))
    committer.start()
    try:
        assert in_fsync.wait(timeout=10)
        # While the data of 2 is being synced, the storage serves everything else.
        assert [m.last_index for m in store.snapshots()] == [1]
        assert read_all(store, 1) == payload(1)
        store.abort(store.create_writer(SnapshotMeta(5, 1, b"")))
    finally:
        go_on.set()
        committer.join(timeout=10)
    assert [m.last_index for m in outcome if isinstance(m, SnapshotMeta)] == [2]
    store.close()


# ---- the meta file format -----------------------------------------------------------------


def test_meta_roundtrip() -> None:
    meta = SnapshotMeta(2**62, 2**62, bytes(range(256)), 2**40, 2**32 - 1)
    assert decode_snapshot_meta(encode_snapshot_meta(meta), "m") == meta


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:15],  # truncated header
        lambda b: b"X" + b[1:],  # magic
        lambda b: b[:8] + b"\x02\x00" + b[10:],  # version (the CRC covers it)
        lambda b: b[:-1],  # truncated body
        lambda b: flip_byte(b, len(b) - 1),  # body
        lambda b: b[:12] + b"\x00\x00\x00\x00" + b[16:],  # the CRC itself
    ],
    ids=["header", "magic", "version", "truncated-body", "body", "crc"],
)
def test_damaged_meta_is_refused(damage: Callable[[bytes], bytes]) -> None:
    data = encode_snapshot_meta(SnapshotMeta(5, 2, b"conf", 10, 1234))
    with pytest.raises(CorruptSnapshotError):
        decode_snapshot_meta(damage(data), "m")


@pytest.mark.parametrize(
    "body",
    [
        [1, 2, 3],
        {"last_index": 0, "last_term": 1, "conf": b"", "size": 0, "checksum": 0},
        {"last_index": 1, "last_term": 1, "conf": "text", "size": 0, "checksum": 0},
        {"last_index": 1, "last_term": 1, "conf": b"", "size": 0, "checksum": 2**32},
        {"last_index": 1, "last_term": 1, "conf": b""},
    ],
)
def test_meta_with_a_valid_crc_but_bad_fields_is_refused(body: object) -> None:
    import msgpack

    packed = msgpack.packb(body, use_bin_type=True)
    prefix = framed.HEADER.pack(ss.SNAPSHOT_META_MAGIC, framed.FORMAT_VERSION, 0, 0)[:12]
    crc = zlib.crc32(packed, zlib.crc32(prefix)).to_bytes(4, "little")
    with pytest.raises(CorruptSnapshotError):
        decode_snapshot_meta(prefix + crc + packed, "m")
