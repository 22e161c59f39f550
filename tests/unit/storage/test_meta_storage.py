"""MetaStorage: the contract for both implementations, then the file format's failure modes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storage.errors import CorruptLogError, CorruptMetaError, StorageError
from storage.framed import encode_framed
from storage.memory import MemoryMetaStorage
from storage.meta_storage import META_MAGIC, FileMetaStorage, encode_meta

AnyMeta = FileMetaStorage | MemoryMetaStorage


class MetaHarness:
    def __init__(self, make: Callable[[], AnyMeta]) -> None:
        self._make = make
        self.meta = make()

    def reopen(self) -> None:
        if isinstance(self.meta, MemoryMetaStorage):
            self.meta = self.meta.crash()
        else:
            self.meta.close()
            self.meta = self._make()


@pytest.fixture(params=["memory", "file"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetaHarness]:
    if request.param == "memory":
        harness = MetaHarness(MemoryMetaStorage)
    else:
        harness = MetaHarness(lambda: FileMetaStorage(tmp_path / "meta" / "raft_meta"))
    yield harness
    harness.meta.close()


def test_fresh_storage_has_term_zero_and_no_vote(h: MetaHarness) -> None:
    assert (h.meta.term, h.meta.voted_for) == (0, None)
    h.reopen()
    assert (h.meta.term, h.meta.voted_for) == (0, None)


@pytest.mark.parametrize(
    ("term", "vote"), [(1, None), (1, "127.0.0.1:7001"), (2**62, "pëer-ünïcode"), (0, "")]
)
def test_roundtrip_and_reopen(h: MetaHarness, term: int, vote: str | None) -> None:
    h.meta.set_term_and_vote(term, vote)
    assert (h.meta.term, h.meta.voted_for) == (term, vote)
    h.reopen()
    assert (h.meta.term, h.meta.voted_for) == (term, vote)


def test_the_cluster_id_is_set_once_and_kept_across_votes(h: MetaHarness) -> None:
    assert h.meta.cluster_id == ""
    h.meta.set_term_and_vote(2, "a")
    h.meta.set_cluster_id("c1")
    h.meta.set_term_and_vote(3, None)
    h.reopen()
    assert (h.meta.term, h.meta.voted_for, h.meta.cluster_id) == (3, None, "c1")
    with pytest.raises(ValueError, match="belongs to cluster c1"):
        h.meta.set_cluster_id("c2")
    assert h.meta.cluster_id == "c1"


def test_a_meta_file_from_before_cluster_ids_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "raft_meta"
    path.write_bytes(encode_framed(META_MAGIC, {"term": 4, "voted_for": "b"}))
    meta = FileMetaStorage(path)
    assert (meta.term, meta.voted_for, meta.cluster_id) == (4, "b", "")


@pytest.mark.parametrize("bad", [7, None, "x" * 65])
def test_a_bad_cluster_id_in_the_file_is_corruption(tmp_path: Path, bad: object) -> None:
    path = tmp_path / "raft_meta"
    path.write_bytes(encode_framed(META_MAGIC, {"term": 4, "voted_for": "b", "cluster_id": bad}))
    with pytest.raises(CorruptMetaError, match="bad fields"):
        FileMetaStorage(path)


def test_later_writes_replace_earlier_ones(h: MetaHarness) -> None:
    h.meta.set_term_and_vote(3, "a")
    h.meta.set_term_and_vote(4, None)
    h.meta.set_term_and_vote(4, "b")
    h.meta.set_term_and_vote(4, "b")  # unchanged: allowed
    h.reopen()
    assert (h.meta.term, h.meta.voted_for) == (4, "b")


@pytest.mark.parametrize(("term", "vote"), [(-1, None), (1.5, None), (True, None), (1, 7)])
def test_bad_arguments_are_refused(h: MetaHarness, term: object, vote: object) -> None:
    h.meta.set_term_and_vote(2, "x")
    with pytest.raises(ValueError):
        h.meta.set_term_and_vote(term, vote)  # type: ignore[arg-type]
    h.reopen()
    assert (h.meta.term, h.meta.voted_for) == (2, "x")


def test_closed_storage_refuses_writes(h: MetaHarness) -> None:
    h.meta.close()
    with pytest.raises(StorageError):
        h.meta.set_term_and_vote(1, None)


# ---- the file ------------------------------------------------------------------------------


def test_leftover_temp_file_from_a_crashed_write_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "raft_meta"
    meta = FileMetaStorage(path)
    meta.set_term_and_vote(5, "a")
    meta.close()
    # A crash after writing the temp file but before the rename: the new value never happened.
    tmp = tmp_path / "raft_meta.tmp"
    tmp.write_bytes(encode_meta(6, "b")[:9])
    meta = FileMetaStorage(path)
    assert (meta.term, meta.voted_for) == (5, "a")
    assert not tmp.exists()
    meta.set_term_and_vote(7, "c")
    meta.close()
    assert (FileMetaStorage(path).term, FileMetaStorage(path).voted_for) == (7, "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raft_meta"]


def test_every_single_byte_corruption_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "raft_meta"
    meta = FileMetaStorage(path)
    meta.set_term_and_vote(9, "127.0.0.1:7003")
    meta.close()
    good = path.read_bytes()
    for offset in range(len(good)):
        bad = bytearray(good)
        bad[offset] ^= 0x21
        path.write_bytes(bytes(bad))
        with pytest.raises(CorruptMetaError) as err:
            FileMetaStorage(path)
        assert err.value.path == str(path)
        assert str(path) in str(err.value)
        assert isinstance(err.value, CorruptLogError)


@pytest.mark.parametrize("cut", [0, 5, 16, -1])
def test_truncated_file_is_corruption(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "raft_meta"
    meta = FileMetaStorage(path)
    meta.set_term_and_vote(9, "x")
    good = path.read_bytes()
    path.write_bytes(good[:cut])
    with pytest.raises(CorruptMetaError):
        FileMetaStorage(path)


def test_valid_crc_but_wrong_content_is_corruption(tmp_path: Path) -> None:
    import struct
    import zlib

    import msgpack

    path = tmp_path / "raft_meta"
    for body_obj in ([1, 2], {"term": -1, "voted_for": None}, {"term": 1, "voted_for": 3}):
        body = msgpack.packb(body_obj)
        prefix = struct.pack("<8sHH", b"PKRFTMET", 1, 0)
        crc = zlib.crc32(body, zlib.crc32(prefix))
        path.write_bytes(prefix + struct.pack("<I", crc) + body)
        with pytest.raises(CorruptMetaError):
            FileMetaStorage(path)


def test_written_file_is_only_replaced_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the write fails before the rename, the old value is what a restart sees."""
    import os

    path = tmp_path / "raft_meta"
    meta = FileMetaStorage(path)
    meta.set_term_and_vote(3, "a")

    def fail(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(StorageError):
        meta.set_term_and_vote(4, "b")
    monkeypatch.undo()
    assert (meta.term, meta.voted_for) == (3, "a")
    reopened = FileMetaStorage(path)
    assert (reopened.term, reopened.voted_for) == (3, "a")
